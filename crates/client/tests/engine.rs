//! The engine driven without sockets: the real server's API runs in this process behind an
//! in-memory [`Transport`] whose script injects faults (the server down, lost answers, a
//! corrupted message, a dropped live connection), on a clock the test moves.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body as HttpBody;
use sotto_client::engine::{Command, Engine, Event, Wants};
use sotto_client::transport::{
    Body, Clock, Connector, Failed, LiveLink, Method, Received, Request, Response, Stream,
    Transport,
};
use sotto_client::{Client, Error, RegisterOptions};
use sotto_proto as proto;

/// What the transport does to the next requests.
#[derive(Debug, Default)]
struct Script {
    /// Every request fails as if the server were down.
    down: bool,
    /// Submissions that reach the server but whose answer is lost.
    lose_answers: u32,
    /// Queue positions whose message arrives corrupted.
    corrupt: Vec<u64>,
    /// The live connection drops at its next read.
    drop_live: bool,
    /// Submissions the server took (answered 200).
    submitted: u32,
}

/// The real server's API, in process.
struct Fake {
    server: sotto_server::InProcess,
    runtime: tokio::runtime::Runtime,
    script: Mutex<Script>,
}

#[derive(Clone)]
struct InMemory(Arc<Fake>);

impl Fake {
    fn start(dir: &std::path::Path) -> Arc<Fake> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let config = sotto_server::Config {
            data_dir: dir.to_path_buf(),
            registration: sotto_server::RegistrationMode::Open,
            ..sotto_server::Config::default()
        };
        let server = runtime.block_on(sotto_server::InProcess::start(config)).expect("server");
        Arc::new(Fake { server, runtime, script: Mutex::default() })
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().expect("script")
    }

    fn raw(&self, request: &Request<'_>) -> (u16, Vec<u8>) {
        let method = match request.method {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
        };
        let mut builder = axum::http::Request::builder().method(method).uri(request.path);
        if let Some(t) = request.token {
            builder = builder.header("authorization", format!("Bearer {t}"));
        }
        let body = match request.body {
            Body::Empty => HttpBody::empty(),
            Body::Json(j) => {
                builder = builder.header("content-type", "application/json");
                HttpBody::from(j.to_vec())
            }
            Body::Bytes(b) => {
                builder = builder.header("content-type", "application/octet-stream");
                HttpBody::from(b.to_vec())
            }
        };
        let request = builder.body(body).expect("request");
        self.runtime.block_on(async {
            let resp = self.server.call(request).await;
            let status = resp.status().as_u16();
            let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.expect("body");
            (status, body.to_vec())
        })
    }
}

impl Transport for InMemory {
    fn base(&self) -> &str {
        "http://in-process"
    }

    fn call(&self, request: &Request<'_>) -> Result<Response, Failed> {
        let fake = &self.0;
        if fake.script().down {
            return Err(Failed { reason: "connection refused".into(), not_sent: true });
        }
        let (status, mut body) = fake.raw(request);
        let mut script = fake.script();
        if request.path == "/v1/messages" && status == 200 {
            script.submitted += 1;
            if script.lose_answers > 0 {
                script.lose_answers -= 1;
                return Err(Failed { reason: "connection reset".into(), not_sent: false });
            }
        }
        if request.path.starts_with("/v1/queue?") && !script.corrupt.is_empty() {
            let mut page: proto::QueueResponse = serde_json::from_slice(&body).expect("page");
            for m in &mut page.messages {
                if script.corrupt.contains(&m.seq) {
                    m.message.0 = b"not an MLS message".to_vec();
                }
            }
            body = serde_json::to_vec(&page).expect("json");
        }
        Ok(Response { status, body })
    }

    fn stream(&self, path: &str, _offset: u64, token: &str) -> Result<Stream, Failed> {
        let request = Request { method: Method::Get, path, token: Some(token), body: Body::Empty };
        let (status, body) = self.0.raw(&request);
        Ok(Stream { status, body: Box::new(Cursor::new(body)) })
    }

    fn connect_live(&self, token: &str) -> Result<Box<dyn LiveLink>, Error> {
        if self.0.script().down {
            return Err(Error::Unreachable { url: self.base().into(), reason: "down".into() });
        }
        Ok(Box::new(Polling { fake: self.0.clone(), token: token.to_string(), after: 0 }))
    }
}

/// The live connection, as the queue polled: each new message becomes a frame.
struct Polling {
    fake: Arc<Fake>,
    token: String,
    after: u64,
}

impl LiveLink for Polling {
    fn recv(&mut self, _timeout: Duration) -> Received {
        {
            let mut script = self.fake.script();
            if script.drop_live || script.down {
                script.drop_live = false;
                return Received::Closed;
            }
        }
        let path = format!("/v1/queue?after={}&limit=1", self.after);
        let request = Request {
            method: Method::Get,
            path: &path,
            token: Some(&self.token),
            body: Body::Empty,
        };
        let Ok(resp) = InMemory(self.fake.clone()).call(&request) else { return Received::Closed };
        let page: proto::QueueResponse = serde_json::from_slice(&resp.body).expect("page");
        match page.messages.into_iter().next() {
            Some(m) => {
                self.after = m.seq;
                let frame = proto::ServerFrame::Message(m);
                Received::Frame(serde_json::to_string(&frame).expect("frame"))
            }
            None => Received::Idle,
        }
    }

    fn send(&mut self, text: &str) -> bool {
        let Ok(proto::ClientFrame::Ack(ack)) = serde_json::from_str(text) else { return false };
        let body = serde_json::to_vec(&ack).expect("json");
        let request = Request {
            method: Method::Post,
            path: "/v1/queue/ack",
            token: Some(&self.token),
            body: Body::Json(&body),
        };
        InMemory(self.fake.clone()).call(&request).is_ok()
    }

    fn close(&mut self) {}
}

impl Connector for InMemory {
    fn connect(&self, _server: &str, _ca: Option<&str>) -> Result<Box<dyn Transport>, Error> {
        Ok(Box::new(self.clone()))
    }
}

/// A clock that moves only when told to (and when something sleeps on it).
#[derive(Debug, Default)]
struct TestClock(AtomicU64);

impl TestClock {
    fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
    fn sleep(&self, duration: Duration) {
        self.advance(duration.as_millis() as u64);
    }
}

struct World {
    fake: Arc<Fake>,
    clock: Arc<TestClock>,
    _dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = Fake::start(&dir.path().join("server"));
        let clock = Arc::new(TestClock(AtomicU64::new(1_800_000_000_000)));
        World { fake, clock, _dir: dir }
    }

    fn client(&self, name: &str) -> Client {
        let options = RegisterOptions {
            passphrase: zeroize::Zeroizing::new("correct horse battery staple".into()),
            ..RegisterOptions::default()
        };
        let home = self._dir.path().join(name);
        let address = format!("{name}@localhost");
        let connector = InMemory(self.fake.clone());
        let registered =
            Client::register_via(&connector, &home, "http://in-process", &address, &options)
                .expect("register");
        registered.client.with_clock(self.clock.clone())
    }
}

fn texts(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message { message } if message.kind == "text" => Some(message.body.clone()),
            _ => None,
        })
        .collect()
}

/// Reads the live link until it is idle, as the daemon's reader thread would.
fn pump(engine: &mut Engine, link: &mut dyn LiveLink) -> Vec<Event> {
    loop {
        match link.recv(Duration::ZERO) {
            Received::Frame(text) => {
                if let Some(ack) = engine.frame(&text) {
                    assert!(link.send(&ack));
                }
            }
            Received::Idle => break,
            Received::Closed => {
                engine.closed();
                break;
            }
        }
    }
    engine.take_events()
}

fn send(engine: &mut Engine, to: &str, text: &str) -> Result<serde_json::Value, Error> {
    engine.execute(Command::Send { to: Some(to.into()), group: None, text: text.into() })
}

#[test]
fn outbox_retries_with_backoff_and_never_doubles() {
    let w = World::new();
    let alice = w.client("alice");
    let mut bob = Engine::new(w.client("bob"));
    let mut alice = Engine::new(alice);
    let (mut link, _) = bob.tick();
    let mut link = link.take().expect("bob connects");
    assert!(matches!(alice.tick().1, Wants::WaitUntil(_)));
    alice.take_events();

    send(&mut alice, "bob@localhost", "first").expect("sent");
    assert_eq!(texts(&pump(&mut bob, &mut *link)), ["first"]);

    // The server is down: the message is kept, pending, and retried with backoff.
    w.fake.script().down = true;
    let error = send(&mut alice, "bob@localhost", "while down").expect_err("queued");
    assert!(matches!(error, Error::Queued { .. }), "{error}");
    assert_eq!(error.code(), "unreachable");
    let pending = alice.take_events();
    assert!(
        pending
            .iter()
            .any(|e| matches!(e, Event::Delivery { message } if message.status == "pending")),
        "{pending:?}"
    );
    // A second message waits behind the first, in order.
    let error = send(&mut alice, "bob@localhost", "also while down").expect_err("queued");
    assert!(matches!(error, Error::Queued { .. }), "{error}");
    let (_, Wants::WaitUntil(due)) = alice.tick() else { panic!("stopped") };
    assert!(due > w.clock.now_ms(), "the next attempt waits");
    // Not yet due: nothing is tried even once the server is back.
    w.fake.script().down = false;
    let before = w.fake.script().submitted;
    alice.tick();
    assert_eq!(w.fake.script().submitted, before, "retried before its time");
    w.clock.advance(due - w.clock.now_ms());
    alice.tick();
    let delivered = alice.take_events();
    assert!(
        delivered.iter().any(|e| matches!(e, Event::Delivery { message } if message.status == "sent" && message.body == "while down")),
        "{delivered:?}"
    );

    // A lost answer: the same submission is repeated and the server answers it once.
    w.fake.script().lose_answers = 1;
    send(&mut alice, "bob@localhost", "answer lost").expect("sent after a repeat");
    assert_eq!(
        texts(&pump(&mut bob, &mut *link)),
        ["while down", "also while down", "answer lost"]
    );
    assert!(pump(&mut bob, &mut *link).is_empty(), "nothing twice");
}

#[test]
fn a_bad_message_in_a_page_is_recorded_and_the_rest_goes_on() {
    let w = World::new();
    let mut alice = Engine::new(w.client("alice"));
    let mut bob = Engine::new(w.client("bob"));
    alice.tick();
    for text in ["one", "two", "three"] {
        send(&mut alice, "bob@localhost", text).expect("sent");
    }
    // Bob's queue: the welcome, the chat's description, one, two, three. "two" arrives
    // corrupted.
    w.fake.script().corrupt = vec![4];
    let (link, _) = bob.tick();
    assert!(link.is_some(), "bob connects after catching up");
    let events = bob.take_events();
    assert_eq!(texts(&events), ["one", "three"]);
    let failures: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Failure { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(failures, [4]);
    // The queue moved past all of it: a later message arrives normally.
    w.fake.script().corrupt.clear();
    send(&mut alice, "bob@localhost", "four").expect("sent");
    let mut link = link.expect("link");
    assert_eq!(texts(&pump(&mut bob, &mut *link)), ["four"]);
}

#[test]
fn the_live_connection_comes_back_after_drops_and_outages() {
    let w = World::new();
    let mut alice = Engine::new(w.client("alice"));
    let mut bob = Engine::new(w.client("bob"));
    alice.tick();
    let (link, _) = bob.tick();
    let mut link = link.expect("connected");
    assert!(
        bob.take_events()
            .iter()
            .any(|e| matches!(e, Event::Connection { state, .. } if state == "connected"))
    );

    // The connection drops; the engine says so and reconnects after its backoff.
    w.fake.script().drop_live = true;
    pump(&mut bob, &mut *link);
    let (none, Wants::WaitUntil(retry)) = bob.tick() else { panic!("stopped") };
    assert!(none.is_none() && retry > w.clock.now_ms(), "reconnects only after a wait");
    // Meanwhile the server is down too: the attempt fails and the wait grows.
    w.fake.script().down = true;
    w.clock.advance(retry - w.clock.now_ms());
    let (none, Wants::WaitUntil(again)) = bob.tick() else { panic!("stopped") };
    assert!(none.is_none());
    assert!(again - w.clock.now_ms() >= 500, "the wait doubles after a failed attempt");
    let down: Vec<Event> = bob.take_events();
    assert!(
        down.iter()
            .any(|e| matches!(e, Event::Connection { state, .. } if state == "disconnected"))
    );
    // A message sent while bob is away is waiting for him when the server is back.
    w.fake.script().down = false;
    send(&mut alice, "bob@localhost", "while you were away").expect("sent");
    w.clock.advance(again - w.clock.now_ms());
    let (link, _) = bob.tick();
    assert!(link.is_some(), "reconnected");
    assert_eq!(texts(&bob.take_events()), ["while you were away"]);
}
