//! Live delivery over the WebSocket: messages are processed as they arrive and acknowledged
//! one by one; the connection is re-established with backoff and jitter when it drops.

use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sotto_proto as proto;
use tungstenite::client::IntoClientRequest;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Connector, Message as WsMessage, WebSocket};

use crate::{Client, Error, MessageView};

type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

/// How often a blocked read wakes up to check whether to stop.
const POLL: Duration = Duration::from_millis(250);

impl Client {
    fn connect_ws(&mut self) -> Result<Socket, Error> {
        let token = self.token()?;
        let base = self.api.base();
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
        let host = request.uri().host().unwrap_or("localhost").trim_matches(['[', ']']).to_string();
        let port =
            request.uri().port_u16().unwrap_or(if url.starts_with("wss") { 443 } else { 80 });
        let stream = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
            .map_err(|e| unreachable(e.to_string()))?
            .find_map(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(10)).ok())
            .ok_or_else(|| unreachable("connection refused".into()))?;
        let _ = stream.set_nodelay(true);
        let connector = if url.starts_with("wss") { Some(self.tls_connector()?) } else { None };
        let (socket, _) = tungstenite::client_tls_with_config(request, stream, None, connector)
            .map_err(|e| match e {
                // The server answered the upgrade with a refusal: keep its code (a revoked
                // device, an expired token) so the caller can act on it.
                tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp)) => {
                    refusal(resp.status().as_u16(), resp.body().as_deref())
                        .unwrap_or_else(|| unreachable(format!("HTTP {}", resp.status())))
                }
                e => unreachable(e.to_string()),
            })?;
        if let MaybeTlsStream::Plain(s) = socket.get_ref() {
            let _ = s.set_read_timeout(Some(POLL));
        } else if let MaybeTlsStream::Rustls(s) = socket.get_ref() {
            let _ = s.sock.set_read_timeout(Some(POLL));
        }
        Ok(socket)
    }

    fn tls_connector(&self) -> Result<Connector, Error> {
        let mut roots = rustls::RootCertStore::empty();
        if self.api.ca_certs().is_empty() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        } else {
            for c in self.api.ca_certs() {
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
        Ok(Connector::Rustls(Arc::new(config)))
    }

    /// Catches up, then receives live until `stop` says so, calling `on_message` for every
    /// new message. Connects, and reconnects when the connection drops, with backoff and
    /// jitter while the server is down or busy; returns an error if the server refuses for
    /// good (a revoked device first looks for a wipe command and obeys it).
    pub fn listen(
        &mut self,
        mut on_message: impl FnMut(&MessageView),
        stop: &dyn Fn() -> bool,
    ) -> Result<(), Error> {
        let mut backoff = Duration::from_millis(250);
        // The first catch-up is retried like every later connection: a server that is down
        // or busy when listening starts is waited for.
        loop {
            match self.sync() {
                Ok(report) => {
                    report.messages.iter().for_each(&mut on_message);
                    break;
                }
                Err(e) if transient(&e) => {
                    if !wait(backoff, stop) {
                        return Ok(());
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                Err(e) => return Err(e),
            }
        }
        backoff = Duration::from_millis(250);
        while !stop() {
            let mut socket = match self.connect_ws() {
                Ok(s) => s,
                Err(e) if e.server_code() == Some("device_revoked") => {
                    return Err(self.obey_revocation());
                }
                Err(e) => {
                    if e.server_code() == Some("unauthorized") {
                        // A token the server no longer knows (it lost its sessions): log in
                        // again on the next attempt.
                        self.api.forget_token();
                    } else if !transient(&e) {
                        // A refusal that waiting will not change ends the loop.
                        return Err(e);
                    }
                    if !wait(backoff, stop) {
                        return Ok(());
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            backoff = Duration::from_millis(250);
            // Anything queued between the catch-up and the connection comes first on the socket.
            match self.receive(&mut socket, &mut on_message, stop) {
                Err(e) if e.server_code() == Some("device_revoked") => {
                    return Err(self.obey_revocation());
                }
                other => other?,
            }
            let _ = socket.close(None);
        }
        Ok(())
    }

    /// Reads frames until the connection drops or `stop`; local failures are returned.
    fn receive(
        &mut self,
        socket: &mut Socket,
        on_message: &mut impl FnMut(&MessageView),
        stop: &dyn Fn() -> bool,
    ) -> Result<(), Error> {
        while !stop() {
            let frame = match socket.read() {
                Ok(WsMessage::Text(t)) => t,
                Ok(WsMessage::Close(_)) => return Ok(()),
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(_) => return Ok(()),
            };
            match serde_json::from_str::<proto::ServerFrame>(&frame) {
                Ok(proto::ServerFrame::Message(m)) => {
                    self.process_one(m.seq, &m.message.0)?;
                    let ack = proto::ClientFrame::Ack(proto::AckRequest { up_to: m.seq });
                    let text = serde_json::to_string(&ack).unwrap_or_default();
                    if socket.send(WsMessage::Text(text.into())).is_err() {
                        return Ok(());
                    }
                    let report = self.finish_batch(1, false)?;
                    report.messages.iter().for_each(&mut *on_message);
                }
                Ok(proto::ServerFrame::Acked(a)) => crate::db::set_last_acked(&self.conn, a.up_to)?,
                Ok(proto::ServerFrame::Error(e)) => {
                    return Err(Error::Server {
                        status: 0,
                        code: crate::error::code_name(e.error.code),
                        message: e.error.message,
                        epoch: None,
                    });
                }
                Err(e) => return Err(Error::Protocol(format!("bad frame: {e}"))),
            }
        }
        Ok(())
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

/// Waits `backoff` and a random jitter of up to a quarter second; false if `stop` said to
/// stop meanwhile.
fn wait(backoff: Duration, stop: &dyn Fn() -> bool) -> bool {
    let jitter =
        Duration::from_millis(u64::from(sotto_core::random_bytes(1).map(|b| b[0]).unwrap_or(0)));
    let until = Instant::now() + backoff + jitter;
    while Instant::now() < until {
        if stop() {
            return false;
        }
        std::thread::sleep(POLL.min(until - Instant::now()));
    }
    !stop()
}

/// Whether retrying later may succeed: the server is down or busy, not refusing.
fn transient(e: &Error) -> bool {
    match e {
        Error::Unreachable { .. } => true,
        Error::Server { status, code, .. } => {
            *status >= 500 || code == "rate_limited" || code == "storage_full"
        }
        _ => false,
    }
}
