//! The seams between the client's protocol logic and the outside world: how requests reach the
//! server ([`Transport`]), the live connection ([`LiveLink`]) and time ([`Clock`]).
//!
//! Nothing above this module names an HTTP or WebSocket library: the code that decides what
//! to send and what to store speaks in [`Request`]s and frames. [`crate::http`] implements
//! the traits over real sockets (ureq, tungstenite); tests implement them in memory, to drive
//! the client and the engine without sockets and with a clock they control. (Randomness comes
//! from the MLS crypto provider and the operating system; it decides bytes, never behaviour.)

use std::io::Read;
use std::time::Duration;

use sotto_proto as proto;

use crate::Error;

/// An HTTP method the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `DELETE`.
    Delete,
}

/// A request body.
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    /// None.
    Empty,
    /// A JSON document.
    Json(&'a [u8]),
    /// Raw bytes (an upload piece): no overall time limit applies.
    Bytes(&'a [u8]),
}

/// One request to the server, relative to its base URL.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    /// The method.
    pub method: Method,
    /// The path and query, e.g. `/v1/queue?after=3`.
    pub path: &'a str,
    /// The bearer token, if the route needs one.
    pub token: Option<&'a str>,
    /// The body.
    pub body: Body<'a>,
}

impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("token", &self.token.map(|_| "[redacted]"))
            .finish_non_exhaustive()
    }
}

/// The server's answer: a status and the whole body.
#[derive(Debug, Clone)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

/// A byte stream the server answers with (a file download).
pub struct Stream {
    /// The HTTP status. Anything but 2xx: `body` holds the error document.
    pub status: u16,
    /// The body.
    pub body: Box<dyn Read + Send>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("status", &self.status).finish_non_exhaustive()
    }
}

/// A request that got no answer.
#[derive(Debug, Clone)]
pub struct Failed {
    /// Why (for people).
    pub reason: String,
    /// Whether it surely never reached the server (refused connection, unknown host, TLS
    /// failure). Otherwise it may have, and a submission is repeated to learn its fate.
    pub not_sent: bool,
}

/// How requests reach one server.
pub trait Transport: Send {
    /// The server's base URL, as the account records it.
    fn base(&self) -> &str;
    /// Sends a request and reads the whole answer.
    fn call(&self, request: &Request<'_>) -> Result<Response, Failed>;
    /// `GET`s `path`, naming `media_type` in `Accept` as the form the answer should take
    /// (the binary queue page); the server may answer in JSON all the same. This default
    /// names nothing, so JSON comes back.
    fn get_accepting(
        &self,
        path: &str,
        token: Option<&str>,
        media_type: &str,
    ) -> Result<Response, Failed> {
        let _ = media_type;
        self.call(&Request { method: Method::Get, path, token, body: Body::Empty })
    }
    /// `GET`s a byte stream from `offset` on. With `within`, the whole body must arrive in
    /// that time (a read past it fails); without, it may take as long as it keeps coming.
    fn stream(
        &self,
        path: &str,
        offset: u64,
        token: &str,
        within: Option<Duration>,
    ) -> Result<Stream, Failed>;
    /// `PUT`s the `len` bytes `body` reads (an upload; with `token`, if given) and reads the
    /// whole answer, allowing
    /// for a slow link. This default reads the body whole and sends it as [`Body::Bytes`]; a
    /// transport that can stream a request body does so.
    fn put_stream(
        &self,
        path: &str,
        token: Option<&str>,
        body: &mut dyn std::io::Read,
        _len: u64,
    ) -> Result<Response, Failed> {
        let mut bytes = Vec::new();
        body.read_to_end(&mut bytes)
            .map_err(|e| Failed { reason: e.to_string(), not_sent: true })?;
        self.call(&Request { method: Method::Put, path, token, body: Body::Bytes(&bytes) })
    }
    /// Opens the live connection, authenticated with `token`. A refusal by the server is
    /// returned as the error the HTTP API would give.
    fn connect_live(&self, token: &str) -> Result<Box<dyn LiveLink>, Error>;
}

/// What waiting on the live connection gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A frame, in whichever version the connection speaks (`sotto_proto::live`), or why it
    /// could not be read.
    Frame(Result<proto::live::Down, proto::live::FrameError>),
    /// Nothing within the time allowed.
    Idle,
    /// The connection is gone.
    Closed,
}

/// The live connection: frames from the server, acknowledgements to it.
pub trait LiveLink: Send {
    /// Waits up to `timeout` for the next frame.
    fn recv(&mut self, timeout: Duration) -> Received;
    /// Sends a frame; false if the connection is gone.
    fn send(&mut self, frame: &proto::live::Up) -> bool;
    /// Closes the connection.
    fn close(&mut self);
}

/// Time, for everything that waits or stamps.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// Waits `duration`.
    fn sleep(&self, duration: Duration);
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }
}

/// Makes the transport for a server: [`crate::http::HttpConnector`] for real servers.
pub trait Connector {
    /// A transport to `server`, trusting only `ca_cert` (a PEM file) when given.
    fn connect(&self, server: &str, ca_cert: Option<&str>) -> Result<Box<dyn Transport>, Error>;
}
