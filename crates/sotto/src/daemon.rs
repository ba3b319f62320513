//! `sotto daemon`: the client engine of one home, kept running, spoken to in JSON-RPC 2.0 —
//! on a Unix socket inside the home, on standard input and output, and (optionally) over
//! HTTP with Server-Sent Events. `docs/jsonrpc.md` describes the protocol.
//!
//! One thread runs the engine (the only one that touches the home's database); a small
//! tokio runtime serves the front ends and hands each call to that thread.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use serde_json::{Value, json};
use sotto_client::engine::{self, Command, Engine, Event, Input};
use sotto_client::{Client, Error};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::broadcast;

/// The socket's name inside the home.
pub const SOCKET: &str = "daemon.sock";
/// The lock a running daemon holds inside the home.
const LOCK: &str = "daemon.lock";
/// The bearer token HTTP clients must show, inside the home.
pub const HTTP_TOKEN: &str = "daemon.token";
/// Events kept for replay (`GET /events` with `Last-Event-ID`)...
pub const REPLAY: usize = 1000;
/// ...and at most this many bytes of them (other people choose how long messages are).
const REPLAY_BYTES: usize = 16 << 20;
/// The longest JSON-RPC request line.
const MAX_LINE: usize = 1 << 20;

/// JSON-RPC error codes.
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
/// A command failed; `data.code` is the error code `sotto --json` prints.
const COMMAND_FAILED: i64 = -32000;

/// Where the daemon listens besides its socket.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Serve JSON-RPC on standard input and output too (ends when input ends).
    pub stdio: bool,
    /// Serve HTTP here: `POST /rpc` and `GET /events`.
    pub http: Option<SocketAddr>,
}

/// The events every front end hears, with the last [`REPLAY`] kept.
#[derive(Debug)]
struct Hub {
    next_id: AtomicU64,
    recent: Mutex<VecDeque<(u64, Arc<str>)>>,
    recent_bytes: AtomicU64,
    live: broadcast::Sender<(u64, Arc<str>)>,
}

impl Hub {
    fn new() -> Hub {
        // Ids grow across restarts (they start from the clock), so an id from an earlier run
        // replays everything this run has.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        Hub {
            next_id: AtomicU64::new(start),
            recent: Mutex::new(VecDeque::with_capacity(REPLAY)),
            recent_bytes: AtomicU64::new(0),
            live: broadcast::channel(4096).0,
        }
    }

    fn publish(&self, event: Event) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut value = serde_json::to_value(&event).unwrap_or(Value::Null);
        if let Some(o) = value.as_object_mut() {
            o.insert("id".into(), json!(id));
        }
        let text: Arc<str> = value.to_string().into();
        if let Ok(mut recent) = self.recent.lock() {
            let mut bytes = self.recent_bytes.load(Ordering::Relaxed) + text.len() as u64;
            recent.push_back((id, text.clone()));
            while recent.len() > REPLAY || bytes > REPLAY_BYTES as u64 {
                match recent.pop_front() {
                    Some((_, old)) => bytes -= old.len() as u64,
                    None => break,
                }
            }
            self.recent_bytes.store(bytes, Ordering::Relaxed);
        }
        let _ = self.live.send((id, text));
    }

    /// The kept events after `after`.
    fn since(&self, after: u64) -> Vec<(u64, Arc<str>)> {
        self.recent
            .lock()
            .map(|r| r.iter().filter(|(id, _)| *id > after).cloned().collect())
            .unwrap_or_default()
    }
}

/// What the front ends share.
#[derive(Debug, Clone)]
struct Shared {
    engine: mpsc::Sender<Input>,
    hub: Arc<Hub>,
    http_token: Arc<str>,
}

impl Shared {
    /// Runs a command on the engine's thread.
    async fn call(&self, command: Command) -> Result<Value, Error> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let reply: engine::Reply = Box::new(move |result| {
            let _ = reply.send(result);
        });
        self.engine
            .send(Input::Command(command, reply))
            .map_err(|_| Error::Io("the engine stopped".into()))?;
        answer.await.unwrap_or_else(|_| Err(Error::Io("the engine stopped".into())))
    }

    /// Answers one JSON-RPC request (`None` for a notification, which gets no answer).
    async fn answer(&self, request: &str) -> Option<Value> {
        self.answer_parsed(serde_json::from_str(request)).await
    }

    /// [`Shared::answer`] for a request parsed already.
    async fn answer_parsed(&self, request: serde_json::Result<Value>) -> Option<Value> {
        let request: Value = match request {
            Ok(v) => v,
            Err(e) => return Some(rpc_error(Value::Null, PARSE_ERROR, &e.to_string(), None)),
        };
        let id = request.get("id").cloned();
        let reply_id = id.clone().unwrap_or(Value::Null);
        let Some(method) = request.get("method").and_then(Value::as_str) else {
            return Some(rpc_error(reply_id, INVALID_REQUEST, "a request needs a method", None));
        };
        if request.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Some(rpc_error(reply_id, INVALID_REQUEST, "jsonrpc must be \"2.0\"", None));
        }
        if !Command::METHODS.contains(&method) {
            let message = format!("no method {method:?}; docs/jsonrpc.md lists them");
            return id.map(|id| rpc_error(id, METHOD_NOT_FOUND, &message, None));
        }
        let command = match Command::from_rpc(method, request.get("params").cloned()) {
            Ok(c) => c,
            Err(e) => return id.map(|id| rpc_error(id, INVALID_PARAMS, &e.to_string(), None)),
        };
        let result = self.call(command).await;
        let id = id?;
        Some(match result {
            Ok(value) => json!({"jsonrpc": "2.0", "id": id, "result": value}),
            Err(e) => rpc_error(id, COMMAND_FAILED, &e.to_string(), Some(&e.code())),
        })
    }
}

fn rpc_error(id: Value, code: i64, message: &str, sotto_code: Option<&str>) -> Value {
    let mut error = json!({"code": code, "message": message});
    if let Some(c) = sotto_code {
        error["data"] = json!({"code": c});
    }
    json!({"jsonrpc": "2.0", "id": id, "error": error})
}

/// The notification an event travels in.
fn notification(event: &str) -> String {
    format!(r#"{{"jsonrpc":"2.0","method":"event","params":{event}}}"#)
}

/// Holds the home's daemon lock; refuses if another daemon has it.
fn lock(home: &Path) -> Result<File, Error> {
    let path = home.join(LOCK);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .read(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::Io(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(&path).unwrap_or_default();
            return Err(Error::Invalid(format!(
                "a sotto daemon already runs for {} (process {}); commands go through it",
                home.display(),
                pid.trim()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(Error::Io(format!("cannot lock {}: {e}", path.display())));
        }
    }
    let _ = file.set_len(0);
    let _ = (&file).write_all(std::process::id().to_string().as_bytes());
    Ok(file)
}

/// Runs the daemon for the open `client` until interrupted (or, with `--stdio`, until its
/// input ends). `ready` is told where it listens once it does.
pub fn serve(client: Client, options: &Options, ready: &mut dyn FnMut(&str)) -> Result<(), Error> {
    let home = client.home().to_path_buf();
    let _lock = lock(&home)?;
    let socket = home.join(SOCKET);
    // The lock is ours: a socket file left behind is stale.
    let _ = std::fs::remove_file(&socket);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Io(format!("cannot start the runtime: {e}")))?;
    let hub = Arc::new(Hub::new());
    let (feed, inputs) = mpsc::channel();
    let http_token: Arc<str> = http_token(&home, options.http.is_some())?.into();
    let shared = Shared { engine: feed.clone(), hub: hub.clone(), http_token };
    let engine_feed = feed.clone();
    let events = hub.clone();
    // The engine ends the daemon when it stops by itself (the device was revoked or wiped).
    let (ended, engine_ended) = tokio::sync::oneshot::channel::<()>();
    let engine_thread = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            let result =
                engine::run(Engine::new(client), &inputs, &engine_feed, &mut |e| events.publish(e));
            let _ = ended.send(());
            result
        })
        .map_err(|e| Error::Io(format!("cannot start the engine: {e}")))?;
    let result = runtime.block_on(async {
        let listener = tokio::net::UnixListener::bind(&socket)
            .map_err(|e| Error::Io(format!("cannot listen on {}: {e}", socket.display())))?;
        let _ = std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600));
        let mut lines = vec![format!("listening on {}", socket.display())];
        if let Some(addr) = options.http {
            let tcp = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Error::Io(format!("cannot listen on {addr}: {e}")))?;
            let bound = tcp.local_addr().map_err(|e| Error::Io(e.to_string()))?;
            lines.push(format!(
                "HTTP on http://{bound} (token in {})",
                home.join(HTTP_TOKEN).display()
            ));
            tokio::spawn(http::serve(tcp, shared.clone()));
        }
        ready(&lines.join("\n"));
        tokio::spawn(accept(listener, shared.clone()));
        let stdio = async {
            if options.stdio {
                serve_stream(tokio::io::stdin(), tokio::io::stdout(), shared.clone()).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = stdio => {}
            () = interrupted() => {}
            _ = engine_ended => {}
        }
        Ok(())
    });
    let _ = std::fs::remove_file(&socket);
    let _ = feed.send(Input::Stop);
    let engine_result = engine_thread.join().unwrap_or(Ok(()));
    result.and(engine_result)
}

/// The token HTTP clients show: kept in the home (mode 0600), made when first needed.
fn http_token(home: &Path, needed: bool) -> Result<String, Error> {
    let path = home.join(HTTP_TOKEN);
    if let Ok(t) = std::fs::read_to_string(&path)
        && t.trim().len() >= 32
    {
        // Whoever could read it may have it: a token found readable by others is replaced.
        let private = std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o077 == 0);
        if private {
            return Ok(t.trim().to_string());
        }
        let _ = std::fs::remove_file(&path);
    }
    if !needed {
        return Ok(String::new());
    }
    let token = hex::encode(sotto_core::random_bytes(32).map_err(Error::Core)?);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::Io(format!("cannot write {}: {e}", path.display())))?;
    file.write_all(token.as_bytes()).map_err(|e| Error::Io(e.to_string()))?;
    Ok(token)
}

use std::os::unix::fs::OpenOptionsExt as _;

async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

async fn accept(listener: tokio::net::UnixListener, shared: Shared) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let (read, write) = stream.into_split();
                tokio::spawn(serve_stream(read, write, shared.clone()));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Serves JSON-RPC on one stream: one JSON object per line each way. Calls are answered in
/// order; after `subscribe`, event notifications are interleaved.
async fn serve_stream(
    read: impl AsyncRead + Unpin + Send + 'static,
    mut write: impl AsyncWrite + Unpin + Send + 'static,
    shared: Shared,
) {
    // Bounded: a client that stops reading stops being read from, and its subscription falls
    // behind (and is told `lagged`) instead of piling events up in memory.
    let (out, mut outgoing) = tokio::sync::mpsc::channel::<String>(256);
    let writer = tokio::spawn(async move {
        while let Some(mut line) = outgoing.recv().await {
            line.push('\n');
            if write.write_all(line.as_bytes()).await.is_err() || write.flush().await.is_err() {
                return;
            }
        }
    });
    let mut reader = tokio::io::BufReader::new(read);
    let mut subscription: Option<tokio::task::JoinHandle<()>> = None;
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if line.len() > MAX_LINE {
            let error = rpc_error(Value::Null, INVALID_REQUEST, "request longer than 1 MiB", None);
            let _ = out.send(error.to_string()).await;
            break;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        // Parsed once; subscriptions belong to the stream, so they are handled here.
        let parsed: serde_json::Result<Value> = serde_json::from_str(text);
        let request = parsed.as_ref().ok();
        let method = request.and_then(|r| r.get("method")).and_then(Value::as_str);
        let id = request.and_then(|r| r.get("id")).cloned();
        let subscribing = match method {
            Some("subscribe") => Some(true),
            Some("unsubscribe") => Some(false),
            _ => None,
        };
        let after = request.and_then(|r| r.pointer("/params/after")).and_then(Value::as_u64);
        match subscribing {
            Some(true) => {
                if subscription.is_none() {
                    subscription =
                        Some(tokio::spawn(forward(shared.hub.clone(), after, out.clone())));
                }
                if let Some(id) = id {
                    let _ = out
                        .send(
                            json!({"jsonrpc": "2.0", "id": id, "result": {"subscribed": true}})
                                .to_string(),
                        )
                        .await;
                }
            }
            Some(false) => {
                if let Some(s) = subscription.take() {
                    s.abort();
                }
                if let Some(id) = id {
                    let _ = out
                        .send(
                            json!({"jsonrpc": "2.0", "id": id, "result": {"subscribed": false}})
                                .to_string(),
                        )
                        .await;
                }
            }
            None => {
                if let Some(answer) = shared.answer_parsed(parsed).await {
                    let _ = out.send(answer.to_string()).await;
                }
            }
        }
    }
    if let Some(s) = subscription {
        s.abort();
    }
    drop(out);
    let _ = writer.await;
}

/// Sends every event (those kept after `after` first, if given) as notifications.
async fn forward(hub: Arc<Hub>, after: Option<u64>, out: tokio::sync::mpsc::Sender<String>) {
    let mut live = hub.live.subscribe();
    let mut last = 0;
    if let Some(after) = after {
        for (id, event) in hub.since(after) {
            last = id;
            if out.send(notification(&event)).await.is_err() {
                return;
            }
        }
    }
    loop {
        match live.recv().await {
            Ok((id, event)) if id > last => {
                if out.send(notification(&event)).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                let lagged = json!({"event": "lagged", "missed": missed}).to_string();
                if out.send(notification(&lagged)).await.is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

mod http {
    //! `--http`: `POST /rpc` (one JSON-RPC request per call) and `GET /events` (Server-Sent
    //! Events, replaying kept events after `Last-Event-ID`). Every request shows the token
    //! from the home's `daemon.token` as `Authorization: Bearer …`: a loopback port is open to
    //! every program and every web page on the machine.

    use std::convert::Infallible;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use axum::Router;
    use axum::body::{Body, Bytes};
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};
    use futures_util::stream;
    use tokio::sync::broadcast;

    use super::{PARSE_ERROR, Shared, rpc_error};

    /// Connections served at once; more wait in the kernel's queue (they cost the daemon no
    /// descriptor until then).
    const MAX_CONNECTIONS: usize = 64;

    pub(super) async fn serve(listener: tokio::net::TcpListener, shared: Shared) {
        let app = Router::new()
            .route("/rpc", post(rpc))
            .route("/events", get(events))
            .layer(axum::extract::DefaultBodyLimit::max(super::MAX_LINE))
            // The token is checked before anything of the body is read.
            .layer(axum::middleware::from_fn_with_state(shared.clone(), require_token))
            .with_state(shared);
        let listener = Capped {
            inner: listener,
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
        };
        let _ = axum::serve(listener, app).await;
    }

    async fn require_token(
        State(shared): State<Shared>,
        request: axum::extract::Request,
        next: axum::middleware::Next,
    ) -> Response {
        if !authorized(&shared, request.headers()) {
            return refuse();
        }
        next.run(request).await
    }

    /// A listener that serves at most [`MAX_CONNECTIONS`] connections at once.
    struct Capped {
        inner: tokio::net::TcpListener,
        slots: Arc<tokio::sync::Semaphore>,
    }

    /// A connection holding its slot until it closes.
    struct Slotted {
        stream: tokio::net::TcpStream,
        _slot: tokio::sync::OwnedSemaphorePermit,
    }

    impl axum::serve::Listener for Capped {
        type Io = Slotted;
        type Addr = std::net::SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            loop {
                let Ok(slot) = self.slots.clone().acquire_owned().await else {
                    std::future::pending::<()>().await;
                    continue;
                };
                match self.inner.accept().await {
                    Ok((stream, addr)) => return (Slotted { stream, _slot: slot }, addr),
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                }
            }
        }

        fn local_addr(&self) -> std::io::Result<Self::Addr> {
            self.inner.local_addr()
        }
    }

    impl tokio::io::AsyncRead for Slotted {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
        }
    }

    impl tokio::io::AsyncWrite for Slotted {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.get_mut().stream).poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
        }
    }

    fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let expected = shared.http_token.as_bytes();
        // Same length and every byte compared, whatever differs first.
        !expected.is_empty()
            && given.len() == expected.len()
            && given.bytes().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    fn refuse() -> Response {
        (
            StatusCode::UNAUTHORIZED,
            "show the token in the home's daemon.token as `Authorization: Bearer TOKEN`\n",
        )
            .into_response()
    }

    async fn rpc(State(shared): State<Shared>, body: Bytes) -> Response {
        let Ok(text) = std::str::from_utf8(&body) else {
            let e = rpc_error(serde_json::Value::Null, PARSE_ERROR, "not UTF-8", None);
            return ([(header::CONTENT_TYPE, "application/json")], e.to_string()).into_response();
        };
        match shared.answer(text).await {
            Some(answer) => {
                ([(header::CONTENT_TYPE, "application/json")], answer.to_string()).into_response()
            }
            None => StatusCode::NO_CONTENT.into_response(),
        }
    }

    async fn events(State(shared): State<Shared>, headers: HeaderMap) -> Response {
        let after = headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let live = shared.hub.live.subscribe();
        let kept = after.map(|a| shared.hub.since(a)).unwrap_or_default();
        let last = kept.last().map(|(id, _)| *id).unwrap_or(0);
        let first =
            stream::iter(kept.into_iter().map(|(id, e)| Ok::<_, Infallible>(frame(id, &e))));
        let rest = stream::unfold((live, last), |(mut live, last)| async move {
            loop {
                match live.recv().await {
                    Ok((id, e)) if id > last => return Some((Ok(frame(id, &e)), (live, id))),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let lagged = format!(
                            "event: lagged\ndata: {{\"event\":\"lagged\",\"missed\":{n}}}\n\n"
                        );
                        return Some((Ok(Bytes::from(lagged)), (live, last)));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        let body = Body::from_stream(futures_util::StreamExt::chain(first, rest));
        ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], body)
            .into_response()
    }

    fn frame(id: u64, event: &str) -> Bytes {
        Bytes::from(format!("id: {id}\ndata: {event}\n\n"))
    }
}

/// A connection to the daemon of a home, for the CLI.
#[derive(Debug)]
pub struct DaemonClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl DaemonClient {
    /// Connects to the daemon running for `home`, if one does.
    pub fn connect(home: &Path) -> Option<DaemonClient> {
        let path: PathBuf = home.join(SOCKET);
        if !path.exists() {
            return None;
        }
        let stream = UnixStream::connect(&path).ok()?;
        let writer = stream.try_clone().ok()?;
        Some(DaemonClient { reader: BufReader::new(stream), writer, next_id: 1 })
    }

    fn send(&mut self, method: &str, params: Value) -> Result<u64, Error> {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        writeln!(self.writer, "{request}").map_err(|e| Error::Io(format!("the daemon: {e}")))?;
        Ok(id)
    }

    /// The next line from the daemon.
    pub fn read(&mut self) -> Result<Value, Error> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err(Error::Io("the daemon closed the connection".into())),
            Ok(_) => serde_json::from_str(&line)
                .map_err(|e| Error::Io(format!("the daemon answered something else: {e}"))),
            Err(e) => Err(Error::Io(format!("the daemon: {e}"))),
        }
    }

    /// Calls a method; its result, or the command's error with its code.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, Error> {
        let id = self.send(method, params)?;
        loop {
            let answer = self.read()?;
            if answer.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if let Some(result) = answer.get("result") {
                return Ok(result.clone());
            }
            let error = &answer["error"];
            return Err(Error::Remote {
                code: error["data"]["code"].as_str().unwrap_or("internal").to_string(),
                message: error["message"].as_str().unwrap_or("the daemon failed").to_string(),
            });
        }
    }

    /// Subscribes to events; then [`DaemonClient::read`] gives notifications.
    pub fn subscribe(&mut self) -> Result<(), Error> {
        self.call("subscribe", json!({}))?;
        Ok(())
    }

    /// Sets how long [`DaemonClient::read`] waits (`None`: for ever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        let _ = self.reader.get_ref().set_read_timeout(timeout);
    }
}
