//! `sotto daemon` end to end: real server, real daemons, JSON-RPC over the Unix socket,
//! standard input/output and HTTP with Server-Sent Events; crashes at the worst moments.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{Server, User, client, pair};
use serde_json::{Value, json};

/// A running `sotto daemon`; killed when dropped.
struct Daemon {
    child: Child,
    /// `http://127.0.0.1:PORT`, with `--http`.
    http: Option<String>,
}

impl Daemon {
    fn start(user: &User, extra: &[&str]) -> Daemon {
        let mut child = client()
            .arg("--home")
            .arg(&user.home)
            .arg("daemon")
            .args(extra)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sotto daemon");
        let mut err = BufReader::new(child.stderr.take().expect("stderr"));
        let mut http = None;
        let mut listening = false;
        let mut line = String::new();
        loop {
            line.clear();
            assert!(err.read_line(&mut line).expect("daemon stderr") > 0, "daemon ended early");
            if let Some(rest) = line.trim().strip_prefix("HTTP on ") {
                http = rest.split_whitespace().next().map(str::to_owned);
            }
            listening |= line.contains("listening on");
            if listening && (http.is_some() || !extra.contains(&"--http")) {
                break;
            }
        }
        // Keep draining standard error so the daemon never blocks on it.
        std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = err.read_to_string(&mut sink);
        });
        Daemon { child, http }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A JSON-RPC connection over the home's socket.
struct Rpc {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next: u64,
    /// Notifications read while waiting for answers.
    events: Vec<Value>,
}

impl Rpc {
    fn connect(user: &User) -> Rpc {
        let stream = UnixStream::connect(user.home.join("daemon.sock")).expect("daemon socket");
        stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
        let writer = stream.try_clone().expect("clone");
        Rpc { reader: BufReader::new(stream), writer, next: 1, events: Vec::new() }
    }

    fn request(&mut self, method: &str, params: Value) -> u64 {
        let id = self.next;
        self.next += 1;
        let line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        writeln!(self.writer, "{line}").expect("write request");
        id
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        assert!(self.reader.read_line(&mut line).expect("read") > 0, "daemon closed");
        serde_json::from_str(&line).expect("one JSON object per line")
    }

    /// The answer to request `id` (notifications on the way are kept).
    fn answer(&mut self, id: u64) -> Value {
        loop {
            let v = self.read();
            if v["id"] == json!(id) {
                return v;
            }
            assert_eq!(v["method"], "event", "{v}");
            self.events.push(v["params"].clone());
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.request(method, params);
        let answer = self.answer(id);
        assert!(answer.get("error").is_none(), "{method} failed: {answer}");
        answer["result"].clone()
    }

    /// Waits for an event matching `want`.
    fn event(&mut self, want: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.events.iter().position(&want) {
            return self.events.remove(i);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let v = self.read();
            if v["method"] == "event" && want(&v["params"]) {
                return v["params"].clone();
            }
            if v["method"] == "event" {
                self.events.push(v["params"].clone());
            }
        }
        panic!("no such event; saw {:?}", self.events);
    }
}

fn is_text(body: &str) -> impl Fn(&Value) -> bool + '_ {
    move |e: &Value| e["event"] == "message" && e["message"]["body"] == body
}

#[test]
fn a_daemon_serves_json_rpc_and_the_cli_goes_through_it() {
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    alice.send(&bob.address, "before the daemon");

    let _daemon = Daemon::start(&bob, &[]);
    let mut rpc = Rpc::connect(&bob);
    assert_eq!(rpc.call("subscribe", json!({"after": 0}))["subscribed"], true);
    // The first catch-up reports what waited.
    rpc.event(is_text("before the daemon"));
    // Live: a message alice sends shows up as a notification.
    alice.send(&bob.address, "live one");
    let event = rpc.event(is_text("live one"));
    assert_eq!(event["message"]["sender"], alice.address.as_str());
    assert!(event["id"].as_u64().is_some(), "{event}");

    // A method for every command, returning what `--json` prints.
    let sent = rpc.call("send", json!({"to": alice.address, "text": "from the daemon"}));
    assert_eq!(
        (sent["body"].as_str(), sent["status"].as_str()),
        (Some("from the daemon"), Some("sent"))
    );
    assert_eq!(alice.sync(), vec![pair(&bob, "from the daemon")]);
    let chats = rpc.call("chats", json!({}));
    assert_eq!(chats[0]["peer"], alice.address.as_str());
    let history = rpc.call("history", json!({"chat": alice.address, "limit": 2}));
    assert_eq!(history.as_array().map(Vec::len), Some(2));

    // Errors carry the CLI's code; protocol errors are JSON-RPC's.
    let id = rpc.request("send", json!({"to": "nobody@localhost", "text": "x"}));
    let answer = rpc.answer(id);
    assert_eq!(answer["error"]["code"], -32000);
    assert_eq!(answer["error"]["data"]["code"], "unknown_user");
    let id = rpc.request("no_such_method", json!({}));
    assert_eq!(rpc.answer(id)["error"]["code"], -32601);
    let id = rpc.request("send", json!({"text": 5}));
    assert_eq!(rpc.answer(id)["error"]["code"], -32602);
    writeln!(rpc.writer, "{{not json").expect("write");
    assert_eq!(rpc.read()["error"]["code"], -32700);

    // The CLI goes through the daemon: no passphrase needed, same answers.
    let out = common::client()
        .env_remove("SOTTO_PASSPHRASE")
        .arg("--home")
        .arg(&bob.home)
        .args(["--json", "send", &alice.address, "cli via daemon"])
        .output()
        .expect("run sotto");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let sent: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(sent["status"], "sent");
    assert_eq!(alice.sync(), vec![pair(&bob, "cli via daemon")]);
    assert_eq!(bob.err(&["send", "nobody@localhost", "x"]), "unknown_user");
    // Commands without parameters, and one that reads a path where the CLI runs.
    assert_eq!(bob.ok(&["whoami"])["address"], bob.address.as_str());
    assert_eq!(bob.ok(&["chats"])[0]["peer"], alice.address.as_str());
    assert!(bob.ok(&["sync"])["messages"].is_array());
    // The daemon told its subscribers about the CLI's send too.
    rpc.event(|e| e["event"] == "delivery" && e["message"]["body"] == "cli via daemon");

    // `listen` through the daemon.
    let listener = bob.listen(&["--count", "1", "--timeout", "30"]);
    std::thread::sleep(Duration::from_millis(500));
    alice.send(&bob.address, "heard by listen");
    assert_eq!(common::listened_texts(listener), vec!["heard by listen".to_string()]);

    // A second daemon on the same home is refused, clearly.
    let out = client()
        .arg("--home")
        .arg(&bob.home)
        .args(["--json", "daemon"])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("already runs"), "{out:?}");
    // The socket is the owner's alone.
    let mode = std::fs::metadata(bob.home.join("daemon.sock")).map(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode() & 0o777
    });
    assert_eq!(mode.ok(), Some(0o600));
}

#[test]
fn stdio_and_http_with_replayed_events() {
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");

    // --stdio: one JSON object per line each way; the daemon ends with its input.
    let mut child = client()
        .arg("--home")
        .arg(&alice.home)
        .args(["daemon", "--stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start");
    let mut input = child.stdin.take().expect("stdin");
    let mut output = BufReader::new(child.stdout.take().expect("stdout"));
    writeln!(input, r#"{{"jsonrpc":"2.0","id":7,"method":"whoami"}}"#).expect("write");
    let mut line = String::new();
    let whoami = loop {
        line.clear();
        output.read_line(&mut line).expect("read");
        let v: Value = serde_json::from_str(&line).expect("json");
        if v["id"] == 7 {
            break v;
        }
    };
    assert_eq!(whoami["result"]["address"], alice.address.as_str());
    drop(input);
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "the daemon did not end with its input");
        std::thread::sleep(Duration::from_millis(50));
    }

    // HTTP: a token is required; POST /rpc answers; GET /events replays after Last-Event-ID.
    let daemon = Daemon::start(&bob, &["--http", "127.0.0.1:0"]);
    let base = daemon.http.clone().expect("http address");
    let token = std::fs::read_to_string(bob.home.join("daemon.token")).expect("token");
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let whoami = r#"{"jsonrpc":"2.0","id":1,"method":"whoami"}"#;
    let refused = agent.post(format!("{base}/rpc")).send(whoami).expect("post");
    assert_eq!(refused.status(), 401);
    let wrong = agent
        .post(format!("{base}/rpc"))
        .header("Authorization", "Bearer 0000")
        .send(whoami)
        .expect("post");
    assert_eq!(wrong.status(), 401);
    let mut ok = agent
        .post(format!("{base}/rpc"))
        .header("Authorization", format!("Bearer {}", token.trim()))
        .send(whoami)
        .expect("post");
    assert_eq!(ok.status(), 200);
    let v: Value = ok.body_mut().read_json().expect("json");
    assert_eq!(v["result"]["address"], bob.address.as_str());

    alice.send(&bob.address, "first");
    alice.send(&bob.address, "second");
    // Read events until both arrived, noting the id of the first.
    let events = |after: Option<&str>, want: usize| -> Vec<(u64, Value)> {
        let mut req = agent
            .get(format!("{base}/events"))
            .header("Authorization", format!("Bearer {}", token.trim()));
        if let Some(a) = after {
            req = req.header("Last-Event-ID", a);
        }
        let resp = req.call().expect("events");
        assert_eq!(resp.status(), 200);
        let mut reader = BufReader::new(resp.into_body().into_reader());
        let mut got = Vec::new();
        let mut id = 0;
        let mut line = String::new();
        while got.len() < want {
            line.clear();
            assert!(reader.read_line(&mut line).expect("sse") > 0, "stream ended");
            if let Some(i) = line.strip_prefix("id: ") {
                id = i.trim().parse().expect("numeric id");
            } else if let Some(d) = line.strip_prefix("data: ") {
                let v: Value = serde_json::from_str(d).expect("event json");
                if v["event"] == "message" && v["message"]["kind"] == "text" {
                    got.push((id, v));
                }
            }
        }
        got
    };
    // From the start of what is kept (an id older than all of them).
    let all = events(Some("0"), 2);
    let bodies: Vec<&str> = all.iter().filter_map(|(_, v)| v["message"]["body"].as_str()).collect();
    assert_eq!(bodies, ["first", "second"]);
    // A client that saw the first resumes after it, and gets the second only.
    let rest = events(Some(&all[0].0.to_string()), 1);
    assert_eq!(rest[0].1["message"]["body"], "second");
}

#[test]
fn a_daemon_killed_mid_send_delivers_every_message_exactly_once() {
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    alice.send(&bob.address, "hello");
    assert_eq!(bob.sync(), vec![pair(&alice, "hello")]);

    let mut daemon = Daemon::start(&alice, &[]);
    let mut rpc = Rpc::connect(&alice);
    // Pipelined sends; the daemon is killed while they are under way.
    let ids: Vec<u64> = (0..40)
        .map(|i| rpc.request("send", json!({"to": bob.address, "text": format!("m{i}")})))
        .collect();
    let first = rpc.answer(ids[0]);
    assert_eq!(first["result"]["status"], "sent");
    std::thread::sleep(Duration::from_millis(30));
    daemon.kill();
    drop(rpc);

    // What the daemon took is in alice's history; after a restart each of those reaches bob
    // exactly once, in order, and nothing else does.
    let _daemon = Daemon::start(&alice, &[]);
    let mut rpc = Rpc::connect(&alice);
    let deadline = Instant::now() + Duration::from_secs(30);
    let taken: Vec<String> = loop {
        let history = rpc.call("history", json!({"chat": bob.address, "limit": 100}));
        let mine: Vec<&Value> = history
            .as_array()
            .expect("history")
            .iter()
            .filter(|m| m["sender"] == alice.address.as_str() && m["kind"] == "text")
            .collect();
        // Sent, or further: "hello" was delivered to bob already.
        if mine.iter().all(|m| matches!(m["status"].as_str(), Some("sent" | "delivered"))) {
            break mine.iter().filter_map(|m| m["body"].as_str().map(str::to_owned)).collect();
        }
        assert!(Instant::now() < deadline, "messages still pending: {history}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(taken.len() >= 2, "the first send was answered: {taken:?}");
    let got: Vec<String> = bob.sync().into_iter().map(|(_, b)| b).collect();
    assert_eq!(got, taken[1..].to_vec(), "each taken message exactly once, in order");
    assert!(bob.sync().is_empty());
}

#[test]
fn a_crash_after_the_server_took_a_message_or_commit_loses_and_doubles_nothing() {
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    let carol = User::register("carol", &server, "");
    let id = alice.ok(&["group", "create", "crew", "--members", "bob@localhost"])["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert!(bob.sync().is_empty());

    // The server takes the message, and alice dies before she learns so.
    let crashed = client()
        .env("SOTTO_FAILPOINT", "after-submit")
        .arg("--home")
        .arg(&alice.home)
        .args(["--json", "send", "--group", &id, "once"])
        .output()
        .expect("run");
    assert!(!crashed.status.success(), "the failpoint must end the process");
    let history = alice.ok(&["history", &id]);
    assert_eq!(
        history.as_array().and_then(|h| h.last()).map(|m| m["status"].clone()),
        Some(json!("pending"))
    );
    // The next sync repeats the very same submission: the server answers with its first
    // answer, and bob has the message once.
    assert_eq!(alice.ok(&["sync"])["updated"][0]["status"], "sent");
    assert_eq!(bob.sync(), vec![pair(&alice, "once")]);

    // The server takes a commit (adding carol), and alice dies before merging it.
    let crashed = client()
        .env("SOTTO_FAILPOINT", "after-commit")
        .arg("--home")
        .arg(&alice.home)
        .args(["--json", "group", "add", &id, "carol@localhost"])
        .output()
        .expect("run");
    assert!(!crashed.status.success(), "the failpoint must end the process");
    // Alice is not left behind: her next command settles the commit first, and everyone,
    // carol included, reads what she sends in the new epoch.
    alice.send_group(&id, "after the crash");
    assert_eq!(bob.sync(), vec![pair(&alice, "after the crash")]);
    assert_eq!(carol.sync(), vec![pair(&alice, "after the crash")]);
    let members = alice.ok(&["chats"])[0]["members"].clone();
    assert_eq!(members, json!(["alice@localhost", "bob@localhost", "carol@localhost"]));
    bob.send_group(&id, "welcome carol");
    assert_eq!(alice.sync(), vec![pair(&bob, "welcome carol")]);
    assert_eq!(carol.sync(), vec![pair(&bob, "welcome carol")]);
}

/// The `### `name`` headings of one `## Section` of docs/jsonrpc.md.
fn documented(section: &str) -> Vec<String> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/jsonrpc.md"))
            .expect("docs/jsonrpc.md");
    let mut inside = false;
    let mut names = Vec::new();
    for line in doc.lines() {
        if let Some(title) = line.strip_prefix("## ") {
            inside = title.trim() == section;
        } else if inside && let Some(h) = line.strip_prefix("### ") {
            names.push(h.trim().trim_matches('`').to_string());
        }
    }
    names.sort();
    names
}

#[test]
fn the_protocol_document_and_the_daemon_agree() {
    use sotto_client::engine::{Command, Event};
    let mut methods: Vec<String> = Command::METHODS.iter().map(|m| m.to_string()).collect();
    // Handled by the connection itself.
    methods.extend(["subscribe".to_string(), "unsubscribe".to_string()]);
    methods.sort();
    assert_eq!(documented("Methods"), methods, "docs/jsonrpc.md's methods");
    let mut events: Vec<String> = Event::KINDS.iter().map(|k| k.to_string()).collect();
    // Sent by the daemon to a subscriber that fell behind.
    events.push("lagged".into());
    events.sort();
    assert_eq!(documented("Events"), events, "docs/jsonrpc.md's events");
}

#[test]
fn conversation_commands_work_through_the_daemon() {
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    let _daemon = Daemon::start(&alice, &[]);
    // Every command below goes through alice's daemon.
    let sent = bob.send(&alice.address, "the quarterly numbers");
    let id = sent["id"].as_str().expect("id").to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let found = loop {
        let found = alice.ok(&["search", "quarterly"]);
        if found.as_array().is_some_and(|f| !f.is_empty()) {
            break found;
        }
        assert!(Instant::now() < deadline, "the daemon never received it");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(found[0]["id"], id.as_str());
    assert_eq!(alice.ok(&["react", &id[..8], "🎉"])["reactions"][0]["emoji"], "🎉");
    let reply = alice.ok(&["send", &bob.address, "--reply", &id, "thanks"]);
    assert_eq!(reply["reply_to"]["text"], "the quarterly numbers");
    assert_eq!(alice.ok(&["read", &bob.address])["unread"], 0);
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("export");
    let report = alice.ok(&["export", &bob.address, "--out", out.to_str().expect("out")]);
    assert_eq!(report["messages"].as_u64().map(|n| n >= 2), Some(true), "{report}");
    let page = std::fs::read_to_string(out.join(report["chats"][0].as_str().expect("file")))
        .expect("page");
    assert!(page.contains("the quarterly numbers") && page.contains("thanks"), "{page}");
    // Bob sees the reaction and the reply.
    let v = bob.ok(&["sync"]);
    assert!(common::texts(&v["messages"]).contains(&pair(&alice, "thanks")), "{v}");
    let history = bob.ok(&["history", &alice.address]);
    let mine = history.as_array().expect("history").iter().find(|m| m["id"] == id.as_str());
    assert_eq!(mine.expect("message")["reactions"][0]["from"], alice.address.as_str());
}
