//! The real server's API in this process behind an in-memory [`Transport`] whose script
//! injects faults and lies, on a clock the test moves. Shared by the tests that drive clients
//! without sockets.

#![allow(dead_code)]

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body as HttpBody;
use sotto_client::transport::{
    Body, Clock, Connector, Failed, LiveLink, Method, Received, Request, Response, Stream,
    Transport,
};
use sotto_client::{Client, Error, RegisterOptions};
use sotto_proto as proto;

/// Rewrites an answer of the server: the request's path, the status, the body.
pub type Rewrite = Box<dyn FnMut(&str, u16, &mut Vec<u8>) + Send>;

/// Rewrites a JSON request before the server handles it: the path, the body.
pub type RewriteRequest = Box<dyn FnMut(&str, &mut Vec<u8>) + Send>;

/// What the transport does to the next requests.
#[derive(Default)]
pub struct Script {
    /// Every request fails as if the server were down.
    pub down: bool,
    /// Submissions that reach the server but whose answer is lost.
    pub lose_answers: u32,
    /// Queue positions whose message arrives corrupted.
    pub corrupt: Vec<u64>,
    /// The live connection drops at its next read.
    pub drop_live: bool,
    /// Submissions the server took (answered 200).
    pub submitted: u32,
    /// A lying server: every answer passes through this first.
    pub rewrite: Option<Rewrite>,
    /// A lying server: every JSON request is handled as this makes it (path, body).
    pub rewrite_request: Option<RewriteRequest>,
}

/// The real server's API, in process.
pub struct Fake {
    pub server: sotto_server::InProcess,
    pub runtime: tokio::runtime::Runtime,
    script: Mutex<Script>,
}

#[derive(Clone)]
pub struct InMemory(pub Arc<Fake>);

impl Fake {
    /// Starts the server; the key directory vouches for its roots at `clock`'s time.
    pub fn start(dir: &std::path::Path, clock: Arc<TestClock>) -> Arc<Fake> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let config = sotto_server::Config {
            data_dir: dir.to_path_buf(),
            registration: sotto_server::RegistrationMode::Open,
            clock: sotto_server::Clock::from_fn(move || clock.now_ms() / 1000),
            ..sotto_server::Config::default()
        };
        let server = runtime.block_on(sotto_server::InProcess::start(config)).expect("server");
        Arc::new(Fake { server, runtime, script: Mutex::default() })
    }

    pub fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().expect("script")
    }

    pub fn raw(&self, request: &Request<'_>) -> (u16, Vec<u8>) {
        let method = match request.method {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
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
        let rewritten;
        let mut request_as_handled = Request { body: request.body, ..*request };
        if let (Some(rewrite), Body::Json(json)) =
            (fake.script().rewrite_request.as_mut(), request.body)
        {
            let mut json = json.to_vec();
            rewrite(request.path, &mut json);
            rewritten = json;
            request_as_handled.body = Body::Json(&rewritten);
        }
        let (status, mut body) = fake.raw(&request_as_handled);
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
        if let Some(rewrite) = script.rewrite.as_mut() {
            rewrite(request.path, status, &mut body);
        }
        Ok(Response { status, body })
    }

    fn stream(
        &self,
        path: &str,
        _offset: u64,
        token: &str,
        _within: Option<std::time::Duration>,
    ) -> Result<Stream, Failed> {
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

/// The live connection, as the queue polled: what is new becomes a page of up to three
/// messages, as version 2 of the live protocol sends them.
pub struct Polling {
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
        let path = format!("/v1/queue?after={}&limit=3", self.after);
        let request = Request {
            method: Method::Get,
            path: &path,
            token: Some(&self.token),
            body: Body::Empty,
        };
        let Ok(resp) = InMemory(self.fake.clone()).call(&request) else { return Received::Closed };
        let page: proto::QueueResponse = serde_json::from_slice(&resp.body).expect("page");
        match page.messages.last() {
            Some(m) => {
                self.after = m.seq;
                // Through the encoding, as a real connection would carry it.
                let frame = proto::live::Down::Messages(page.messages).to_binary();
                Received::Frame(proto::live::Down::from_binary(&frame))
            }
            None => Received::Idle,
        }
    }

    fn send(&mut self, frame: &proto::live::Up) -> bool {
        let Ok(proto::live::Up::Ack(ack)) = proto::live::Up::from_binary(&frame.to_binary()) else {
            return false;
        };
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
pub struct TestClock(pub AtomicU64);

impl TestClock {
    pub fn advance(&self, ms: u64) {
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

pub struct World {
    pub fake: Arc<Fake>,
    pub clock: Arc<TestClock>,
    pub _dir: tempfile::TempDir,
}

impl World {
    pub fn new() -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(TestClock(AtomicU64::new(1_800_000_000_000)));
        let fake = Fake::start(&dir.path().join("server"), clock.clone());
        World { fake, clock, _dir: dir }
    }

    pub fn client(&self, name: &str) -> Client {
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
