//! The real transport: HTTP through ureq and the live connection through tungstenite, over
//! TCP and rustls. Everything socket-shaped in the client is here.

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use sotto_proto as proto;
use sotto_proto::live::Version;
use tungstenite::client::IntoClientRequest;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Connector as WsConnector, Message as WsMessage, WebSocket};
use ureq::Agent;
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use crate::Error;
use crate::transport::{
    Body, Connector, Failed, LiveLink, Method, Received, Request, Response, Stream, Transport,
};

/// Makes [`HttpTransport`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpConnector;

impl Connector for HttpConnector {
    fn connect(&self, server: &str, ca_cert: Option<&str>) -> Result<Box<dyn Transport>, Error> {
        Ok(Box::new(HttpTransport::new(server, ca_cert)?))
    }
}

/// HTTP(S) to one server.
pub struct HttpTransport {
    base: String,
    agent: Agent,
    /// For requests without a token (sealed submissions above all): a pool of its own, so
    /// that they never travel on a connection that carried this device's token.
    anonymous: Agent,
    ca_certs: Vec<Certificate<'static>>,
}

impl std::fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTransport").field("base", &self.base).finish_non_exhaustive()
    }
}

/// Reads the PEM certificates of an extra trusted CA.
fn read_ca(path: &str) -> Result<Vec<Certificate<'static>>, Error> {
    let pem = std::fs::read(path).map_err(|e| Error::Io(format!("cannot read {path}: {e}")))?;
    let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(Error::Io(format!("no PEM certificate in {path}")));
    }
    Ok(certs)
}

/// Whether a failed request certainly never reached the server (so its outcome is known).
fn surely_not_sent(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::AddrNotAvailable
                | std::io::ErrorKind::NotFound
        ),
        ureq::Error::ConnectionFailed
        | ureq::Error::HostNotFound
        | ureq::Error::BadUri(_)
        | ureq::Error::Tls(_)
        | ureq::Error::Rustls(_) => true,
        _ => false,
    }
}

/// Whether a request failed because its kept-alive connection closed under it before any
/// answer: the server may close an idle connection, or one whose refused request it did not
/// read, just after ureq's check that a pooled connection is still open. A request that
/// means the same when repeated is then sent once more (on another connection: the closed
/// one is not pooled again). The same errors on a fresh connection repeat it too, harmlessly.
fn closed_under(e: &ureq::Error) -> bool {
    matches!(e, ureq::Error::Io(io) if matches!(
        io.kind(),
        std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
    ))
}

/// Runs `send`, and once more if it failed as [`closed_under`] says and `repeatable`. A
/// failure after a repeat never counts as surely not sent: the first may have arrived.
fn once_more_if_closed<T>(
    repeatable: bool,
    send: impl Fn() -> Result<T, ureq::Error>,
) -> Result<T, Failed> {
    match send() {
        Err(e) if repeatable && closed_under(&e) => {
            send().map_err(|e| Failed { not_sent: false, ..failed(e) })
        }
        result => result.map_err(failed),
    }
}

fn failed(e: ureq::Error) -> Failed {
    Failed { not_sent: surely_not_sent(&e), reason: e.to_string() }
}

/// Resolves names as ureq does, but answers a URL's IP address at once: with a timeout set,
/// ureq's resolver starts a thread for every request, even one on a pooled connection.
#[derive(Debug, Default)]
struct LiteralFirst(DefaultResolver);

impl Resolver for LiteralFirst {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let default_port = match uri.scheme_str() {
            Some("https") => Some(443),
            Some("http") => Some(80),
            _ => None,
        };
        let literal = uri
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|h| h.parse::<IpAddr>().ok());
        match (literal, uri.port_u16().or(default_port)) {
            (Some(ip), Some(port)) => {
                let mut out = self.empty();
                out.push(SocketAddr::new(ip, port));
                Ok(out)
            }
            _ => self.0.resolve(uri, config, timeout),
        }
    }
}

fn authorize<B>(req: ureq::RequestBuilder<B>, token: Option<&str>) -> ureq::RequestBuilder<B> {
    match token {
        Some(t) => req.header("Authorization", format!("Bearer {t}")),
        None => req,
    }
}

fn whole(resp: ureq::http::Response<ureq::Body>) -> Result<Response, Failed> {
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    // Answers are small JSON documents; a bigger one is not the server's.
    resp.into_body()
        .into_reader()
        .take(64 << 20)
        .read_to_end(&mut body)
        .map_err(|e| Failed { reason: e.to_string(), not_sent: false })?;
    Ok(Response { status, body })
}

impl HttpTransport {
    /// A transport to `server` (`http://` or `https://`), trusting only `ca_cert` if given.
    pub fn new(server: &str, ca_cert: Option<&str>) -> Result<Self, Error> {
        let base = server.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Invalid(format!(
                "server URL {server:?} must start with http:// or https://"
            )));
        }
        let ca_certs = ca_cert.map(read_ca).transpose()?.unwrap_or_default();
        let mut tls = TlsConfig::builder();
        if !ca_certs.is_empty() {
            // An explicitly given CA replaces the public roots: the server is pinned to it.
            tls = tls.root_certs(RootCerts::new_with_certs(&ca_certs));
        }
        let config = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            // A pooled connection is reused only well within the server's header timeout
            // (15 s by default, which also runs while a kept-alive connection waits): at the
            // pool's default of 15 s the server could close one just as it is reused, and a
            // request on it would fail unanswered.
            .max_idle_age(Duration::from_secs(5))
            .user_agent(concat!("sotto/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls.build())
            .build();
        let agent =
            Agent::with_parts(config.clone(), DefaultConnector::new(), LiteralFirst::default());
        let anonymous = Agent::with_parts(config, DefaultConnector::new(), LiteralFirst::default());
        Ok(HttpTransport { base, agent, anonymous, ca_certs })
    }

    fn tls_connector(&self) -> Result<WsConnector, Error> {
        let mut roots = rustls::RootCertStore::empty();
        if self.ca_certs.is_empty() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        } else {
            for c in &self.ca_certs {
                roots
                    .add(rustls::pki_types::CertificateDer::from(c.der().to_vec()))
                    .map_err(|e| Error::Io(format!("bad CA certificate: {e}")))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Io(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(WsConnector::Rustls(Arc::new(config)))
    }
}

impl Transport for HttpTransport {
    fn base(&self) -> &str {
        &self.base
    }

    fn call(&self, request: &Request<'_>) -> Result<Response, Failed> {
        let url = format!("{}{}", self.base, request.path);
        let agent = if request.token.is_some() { &self.agent } else { &self.anonymous };
        // GET, PUT and DELETE of a JSON body or none mean the same when repeated; a POST, or
        // a piece of an upload (at an offset, answered `wrong_offset` the second time), is
        // never sent twice here.
        let repeatable = request.method != Method::Post && !matches!(request.body, Body::Bytes(_));
        let result = once_more_if_closed(repeatable, || match (request.method, request.body) {
            (Method::Get, _) => authorize(agent.get(&url), request.token).call(),
            (Method::Delete, _) => authorize(agent.delete(&url), request.token).call(),
            (Method::Post, Body::Empty) => authorize(agent.post(&url), request.token).send_empty(),
            (Method::Post, Body::Json(json)) => authorize(agent.post(&url), request.token)
                .header("Content-Type", "application/json")
                .send(json),
            (method, Body::Bytes(bytes)) => {
                let req = match method {
                    Method::Put => agent.put(&url),
                    _ => agent.post(&url),
                };
                // A piece takes what the link allows.
                authorize(req, request.token)
                    .header("Content-Type", "application/octet-stream")
                    .config()
                    .timeout_global(None)
                    .timeout_send_body(Some(Duration::from_secs(120)))
                    .timeout_recv_response(Some(Duration::from_secs(120)))
                    .build()
                    .send(bytes)
            }
            (Method::Put, body) => {
                let bytes = match body {
                    Body::Json(b) => b,
                    _ => &[],
                };
                authorize(agent.put(&url), request.token)
                    .header("Content-Type", "application/json")
                    .send(bytes)
            }
        });
        whole(result?)
    }

    fn get_accepting(
        &self,
        path: &str,
        token: Option<&str>,
        media_type: &str,
    ) -> Result<Response, Failed> {
        let agent = if token.is_some() { &self.agent } else { &self.anonymous };
        let url = format!("{}{path}", self.base);
        let result = once_more_if_closed(true, || {
            authorize(agent.get(&url), token).header("Accept", media_type).call()
        });
        whole(result?)
    }

    fn stream(
        &self,
        path: &str,
        offset: u64,
        token: &str,
        within: Option<Duration>,
    ) -> Result<Stream, Failed> {
        let mut req = authorize(self.agent.get(format!("{}{path}", self.base)), Some(token));
        if offset > 0 {
            req = req.header("Range", format!("bytes={offset}-"));
        }
        let resp = req
            .config()
            .timeout_global(None)
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_recv_body(within)
            .build()
            .call()
            .map_err(failed)?;
        let status = resp.status().as_u16();
        Ok(Stream { status, body: Box::new(resp.into_body().into_reader()) })
    }

    fn put_stream(
        &self,
        path: &str,
        token: Option<&str>,
        body: &mut dyn std::io::Read,
        len: u64,
    ) -> Result<Response, Failed> {
        // Sent as it is read (chunked). It may take two minutes and then as long as 64 KiB/s
        // takes: a server that stops reading is given up on, a slow link is not.
        let allowed = Duration::from_secs(120 + len / (64 << 10));
        // A file made with no token goes on a connection that never carried one, as every
        // tokenless request does.
        let agent = if token.is_some() { &self.agent } else { &self.anonymous };
        let resp = authorize(agent.put(format!("{}{path}", self.base)), token)
            .header("Content-Type", "application/octet-stream")
            .config()
            .timeout_global(None)
            .timeout_send_body(Some(allowed))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            .build()
            .send(ureq::SendBody::from_reader(body));
        whole(resp.map_err(failed)?)
    }

    fn connect_live(&self, token: &str) -> Result<Box<dyn LiveLink>, Error> {
        // A server from before version 2 accepts the upgrade without a subprotocol: speak
        // version 1 to it.
        match self.connect_ws(token, Version::V2)? {
            Some(link) => Ok(link),
            None => self
                .connect_ws(token, Version::V1)?
                .ok_or(Error::Internal("a version 1 upgrade needs no subprotocol")),
        }
    }
}

impl HttpTransport {
    /// Opens the live connection, offering `version` (version 1 needs no offer). `None`: the
    /// server chose no subprotocol although one was offered.
    fn connect_ws(
        &self,
        token: &str,
        version: Version,
    ) -> Result<Option<Box<dyn LiveLink>>, Error> {
        let base = &self.base;
        let url = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}/v1/ws")
        } else {
            format!("ws://{}/v1/ws", base.trim_start_matches("http://"))
        };
        let unreachable = |reason: String| Error::Unreachable { url: base.to_string(), reason };
        let mut request =
            url.as_str().into_client_request().map_err(|e| unreachable(e.to_string()))?;
        let auth = format!("Bearer {token}")
            .parse()
            .map_err(|_| Error::Internal("token is not a valid header value"))?;
        request.headers_mut().insert("Authorization", auth);
        if version == Version::V2 {
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                tungstenite::http::HeaderValue::from_static(proto::live::PROTOCOL_V2),
            );
        }
        let host = request.uri().host().unwrap_or("localhost").trim_matches(['[', ']']).to_string();
        let port =
            request.uri().port_u16().unwrap_or(if url.starts_with("wss") { 443 } else { 80 });
        let stream = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
            .map_err(|e| unreachable(e.to_string()))?
            .find_map(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(10)).ok())
            .ok_or_else(|| unreachable("connection refused".into()))?;
        let _ = stream.set_nodelay(true);
        let connector = if url.starts_with("wss") { Some(self.tls_connector()?) } else { None };
        let socket = match tungstenite::client_tls_with_config(request, stream, None, connector) {
            Ok((socket, _)) => socket,
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::SecWebSocketSubProtocolError(
                    tungstenite::error::SubProtocolError::NoSubProtocol,
                ),
            ))) => return Ok(None),
            Err(e) => {
                return Err(match e {
                    // The server answered the upgrade with a refusal: keep its code (a revoked
                    // device, an expired token) so the caller can act on it.
                    tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp)) => {
                        refusal(resp.status().as_u16(), resp.body().as_deref())
                            .unwrap_or_else(|| unreachable(format!("HTTP {}", resp.status())))
                    }
                    e => unreachable(e.to_string()),
                });
            }
        };
        Ok(Some(Box::new(WsLink { socket, timeout: None, version })))
    }
}

/// The server's error body on a refused upgrade, as the error the HTTP API would give.
fn refusal(status: u16, body: Option<&[u8]>) -> Option<Error> {
    let body: proto::ErrorBody = serde_json::from_slice(body?).ok()?;
    Some(Error::Server {
        status,
        code: crate::error::code_name(body.error.code),
        message: body.error.message,
        epoch: None,
    })
}

/// The live connection over a WebSocket.
struct WsLink {
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    /// The read timeout the socket has now.
    timeout: Option<Duration>,
    /// What the connection speaks.
    version: Version,
}

impl WsLink {
    fn set_timeout(&mut self, timeout: Duration) {
        let timeout = timeout.max(Duration::from_millis(1));
        if self.timeout == Some(timeout) {
            return;
        }
        let tcp = match self.socket.get_ref() {
            MaybeTlsStream::Plain(s) => s,
            MaybeTlsStream::Rustls(s) => &s.sock,
            _ => return,
        };
        let _ = tcp.set_read_timeout(Some(timeout));
        self.timeout = Some(timeout);
    }
}

impl LiveLink for WsLink {
    fn recv(&mut self, timeout: Duration) -> Received {
        self.set_timeout(timeout);
        loop {
            return match self.socket.read() {
                Ok(WsMessage::Text(t)) => Received::Frame(proto::live::Down::from_text(&t)),
                Ok(WsMessage::Binary(b)) => Received::Frame(proto::live::Down::from_binary(&b)),
                Ok(WsMessage::Close(_)) => Received::Closed,
                // Pings are answered by tungstenite on the next read or write.
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    Received::Idle
                }
                Err(_) => Received::Closed,
            };
        }
    }

    fn send(&mut self, frame: &proto::live::Up) -> bool {
        let message = match self.version {
            Version::V2 => WsMessage::Binary(frame.to_binary().into()),
            Version::V1 => WsMessage::Text(frame.to_text().into()),
        };
        self.socket.send(message).is_ok()
    }

    fn close(&mut self) {
        let _ = self.socket.close(None);
        let _ = self.socket.flush();
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    use super::*;

    /// Reads one request's head (these requests carry no body); false at end of stream.
    fn read_head(reader: &mut BufReader<TcpStream>) -> bool {
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return false,
                Ok(_) if line == "\r\n" => return true,
                Ok(_) => {}
            }
        }
    }

    /// A server whose every connection answers its first request and then closes on reading
    /// the second, unanswered, as a server closing a kept-alive connection at that moment
    /// does. Returns its base URL and a count of requests it read.
    fn closing_server() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                if !read_head(&mut reader) {
                    continue;
                }
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut out = stream;
                if out.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").is_err() {
                    continue;
                }
                if read_head(&mut reader) {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                // Dropped unanswered.
            }
        });
        (base, seen)
    }

    fn request(method: Method) -> Request<'static> {
        Request { method, path: "/v1/anything", token: None, body: Body::Empty }
    }

    #[test]
    fn a_repeatable_request_goes_again_when_its_pooled_connection_closes_unanswered() {
        let (base, seen) = closing_server();
        let http = HttpTransport::new(&base, None).expect("transport");
        for _ in 0..3 {
            let answer = http.call(&request(Method::Get)).expect("answered");
            assert_eq!((answer.status, answer.body.as_slice()), (200, &b"{}"[..]));
        }
        // The first on a new connection; each later one first on the pooled connection,
        // which closed, then on a new one.
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 5);
        let page = http.get_accepting("/v1/queue", None, "application/x-test").expect("answered");
        assert_eq!(page.status, 200);
    }

    #[test]
    fn a_post_is_not_sent_twice_when_its_pooled_connection_closes_unanswered() {
        let (base, seen) = closing_server();
        let http = HttpTransport::new(&base, None).expect("transport");
        http.call(&request(Method::Post)).expect("the first is answered");
        let failure = http.call(&request(Method::Post)).expect_err("closed unanswered");
        assert!(!failure.not_sent, "it reached the server: its outcome is unknown");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
