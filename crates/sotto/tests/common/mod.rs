//! Test harness: starts the real `sotto-server` binary on a free loopback port and drives
//! real `sotto` processes, each user in a home directory of its own.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use sotto_core::auth;
use sotto_core::mls::DeviceKey;

pub const SERVER: &str = env!("CARGO_BIN_EXE_sotto-server");
pub const CLIENT: &str = env!("CARGO_BIN_EXE_sotto");

/// The passphrase every test home is protected with.
pub const PASSPHRASE: &str = "correct horse battery staple";

/// A `sotto` command with the test passphrase, and the cheap key derivation the debug build
/// allows for tests (hundreds of runs would otherwise each spend Argon2's full cost).
pub fn client() -> Command {
    let mut c = Command::new(CLIENT);
    c.env("SOTTO_PASSPHRASE", PASSPHRASE).env("SOTTO_INSECURE_FAST_KDF", "1");
    c
}

/// A running server; killed when dropped.
#[derive(Debug)]
pub struct Server {
    child: Child,
    pub url: String,
    pub data: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts a server with a fresh data directory and the given extra arguments.
    pub fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let mut s = Server::start_in(&data, "127.0.0.1:0", extra);
        s._dir = Some(dir);
        s
    }

    /// Starts a server on `data` listening on `listen`.
    pub fn start_in(data: &Path, listen: &str, extra: &[&str]) -> Server {
        let (child, url) = spawn(data, listen, extra, None);
        Server { child, url, data: data.to_path_buf(), _dir: None }
    }

    /// Starts a server with a fresh data directory whose log, every line at debug level,
    /// goes to `log`. It listens on 127.0.0.2, so that its own address is not taken for a
    /// client's (clients connect from 127.0.0.1).
    pub fn start_logged(extra: &[&str], log: &Path) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let (child, url) = spawn(&data, "127.0.0.2:0", extra, Some(log));
        Server { child, url, data, _dir: Some(dir) }
    }

    /// Starts the server again on the same data directory and port (stopping it first if it
    /// still runs).
    pub fn restart(&mut self, extra: &[&str]) {
        self.kill();
        let listen = format!("127.0.0.1:{}", self.port());
        (self.child, self.url) = spawn(&self.data, &listen, extra, None);
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port")
    }

    /// Mints an invite with `sotto-server invite create`.
    pub fn invite(&self, extra: &[&str]) -> String {
        let out = Command::new(SERVER)
            .arg("--data")
            .arg(&self.data)
            .args(["invite", "create"])
            .args(extra)
            .output()
            .expect("run invite create");
        assert!(
            out.status.success(),
            "invite create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8").trim().to_string()
    }

    /// Sends SIGTERM and waits up to `within` for the server to exit; returns whether it
    /// exited successfully in time.
    pub fn terminate(&mut self, within: Duration) -> bool {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        assert!(sent.success());
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Stops the server with SIGKILL and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A raw HTTP/1.1 request; returns the status and the parsed JSON body.
    pub fn http(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
        self.http_within(method, path, token, body, Duration::from_secs(20))
            .expect("the server did not answer in time")
    }

    /// The address to connect to.
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// A raw HTTP/1.1 request that may go unanswered for `within`: `None` then, and when
    /// nothing listens.
    pub fn http_within(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
        within: Duration,
    ) -> Option<(u16, Value)> {
        http_at(self.addr(), (method, path), token, body, within)
    }
}

/// A raw HTTP/1.1 request to the server at `addr` that may go unanswered for `within`: `None`
/// then, and when nothing listens there.
pub fn http_at(
    addr: &str,
    (method, path): (&str, &str),
    token: Option<&str>,
    body: &str,
    within: Duration,
) -> Option<(u16, Value)> {
    // A server that is down answers nothing, like one that does not answer in time.
    let Ok(mut stream) = TcpStream::connect(addr) else { return None };
    stream.set_read_timeout(Some(within)).expect("timeout");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut raw = Vec::new();
    if stream.read_to_end(&mut raw).is_err() && raw.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(&raw);
    // A server killed while answering leaves no status line, or half of one.
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok())?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    // Tolerate chunked encoding: take the JSON between the first '{' and the last '}'.
    let json = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) => serde_json::from_str(&body[a..=b]).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    Some((status, json))
}

/// A raw `GET` of `path` at `addr` naming `accept` in `Accept`: the status, the
/// `Content-Type` and the body's bytes (the server answers with a length, not chunks).
pub fn get_bytes(addr: &str, path: &str, token: &str, accept: &str) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Authorization: Bearer {token}\r\nAccept: {accept}\r\n\r\n"
    )
    .expect("request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("answer");
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("headers end");
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status");
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    (status, content_type, raw[end + 4..].to_vec())
}

/// A live connection over plain TCP.
pub type LiveSocket = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

/// Opens `token`'s live connection (`GET /v1/ws`) at `addr`, offering version 2 of the live
/// protocol (binary pages) if `v2`.
pub fn live_socket(
    addr: &str,
    token: &str,
    v2: bool,
) -> tungstenite::Result<(LiveSocket, tungstenite::handshake::client::Response)> {
    use tungstenite::client::IntoClientRequest as _;
    let mut request = format!("ws://{addr}/v1/ws").into_client_request()?;
    let headers = request.headers_mut();
    headers.insert("Authorization", format!("Bearer {token}").parse().expect("a header value"));
    if v2 {
        let offer = sotto_proto::live::PROTOCOL_V2.parse().expect("a header value");
        headers.insert("Sec-WebSocket-Protocol", offer);
    }
    tungstenite::connect(request)
}

/// Makes reads on `socket` give up after `within`.
pub fn read_within(socket: &LiveSocket, within: Duration) {
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = socket.get_ref() {
        s.set_read_timeout(Some(within)).expect("timeout");
    }
}

/// Spawns `sotto-server` and reads the URL it announces.
fn spawn(data: &Path, listen: &str, extra: &[&str], log: Option<&Path>) -> (Child, String) {
    let stderr = match log {
        Some(path) => Stdio::from(std::fs::File::create(path).expect("log file")),
        None => Stdio::inherit(),
    };
    let mut child = Command::new(SERVER)
        .arg("--data")
        .arg(data)
        .args(["--listen", listen])
        .args(extra)
        .env("SOTTO_LOG", if log.is_some() { "debug" } else { "warn" })
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start sotto-server");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read banner");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://") || w.starts_with("https://"))
        .unwrap_or_else(|| panic!("no URL in server banner {line:?}"))
        .to_string();
    (child, url)
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One user's device: a home directory.
#[derive(Debug)]
pub struct User {
    pub address: String,
    pub home: PathBuf,
    _dir: tempfile::TempDir,
}

impl User {
    pub fn new(name: &str) -> User {
        let dir = tempfile::tempdir().expect("tempdir");
        User { address: format!("{name}@localhost"), home: dir.path().join(name), _dir: dir }
    }

    /// Registers on `server` with `invite`.
    pub fn register(name: &str, server: &Server, invite: &str) -> User {
        let u = User::new(name);
        let v = u.ok(&["register", &u.address, "--server", &server.url, "--invite", invite]);
        assert_eq!(v["address"], u.address.as_str());
        u
    }

    /// Registers on an open server; returns the user and the recovery key shown once.
    pub fn register_with_recovery(name: &str, server: &Server) -> (User, String) {
        let u = User::new(name);
        let v = u.ok(&["register", &u.address, "--server", &server.url]);
        let key = v["recovery_key"].as_str().expect("recovery key").to_string();
        (u, key)
    }

    /// Links a new device of this account in a home of its own, approved from this device;
    /// returns it and the approval's JSON (`device_id`, `chats_joined`, `history_messages`).
    pub fn link_device(&self, server: &Server, name: &str) -> (User, Value) {
        self.link_device_with(server, name, &[])
    }

    /// [`User::link_device`], the new device's `sotto link` run with `env` set.
    pub fn link_device_with(
        &self,
        server: &Server,
        name: &str,
        env: &[(&str, &str)],
    ) -> (User, Value) {
        let dir = tempfile::tempdir().expect("tempdir");
        let new = User { address: self.address.clone(), home: dir.path().join(name), _dir: dir };
        let mut child = client()
            .envs(env.iter().copied())
            .arg("--home")
            .arg(&new.home)
            .args(["--json", "link", &self.address, "--server", &server.url, "--name", name])
            .args(["--timeout", "60"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start sotto link");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("read link code");
        let first: Value = serde_json::from_str(&line).expect("code line is JSON");
        let code = first["link_code"].as_str().expect("link code").to_string();
        let approved = self.ok(&["devices", "link", &code]);
        let mut rest = String::new();
        out.read_to_string(&mut rest).expect("read link result");
        assert!(child.wait().expect("link exits").success(), "link failed: {rest}");
        let linked: Value = serde_json::from_str(&rest).expect("link result JSON");
        assert_eq!(linked["device_id"], approved["device_id"]);
        (new, linked)
    }

    /// Runs `sotto --json ARGS` in this home.
    pub fn run(&self, args: &[&str]) -> Output {
        client().arg("--home").arg(&self.home).arg("--json").args(args).output().expect("run sotto")
    }

    /// Runs a command that must succeed; returns its JSON.
    pub fn ok(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "sotto {args:?} failed: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("bad JSON from {args:?}: {e}: {stdout}"))
    }

    /// Runs a command that must fail; returns its error code.
    pub fn err(&self, args: &[&str]) -> String {
        self.error(args)["code"].as_str().expect("code").to_string()
    }

    /// Runs a command that must fail; its error (`code` and `message`), so that a test can
    /// show the message when the code is not the one expected.
    pub fn error(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "sotto {args:?} should have failed: {stdout}");
        let v: Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("bad error JSON from {args:?}: {e}: {stdout}"));
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        v["error"].clone()
    }

    /// Syncs; returns the texts of new text messages as (sender, body).
    pub fn sync(&self) -> Vec<(String, String)> {
        let v = self.ok(&["sync"]);
        assert!(v["failures"].as_array().is_some_and(|f| f.is_empty()), "failures: {v}");
        texts(&v["messages"])
    }

    /// The text messages of a chat, as (sender, body).
    pub fn history(&self, chat: &str) -> Vec<(String, String)> {
        texts(&self.ok(&["history", chat, "--limit", "1000000"]))
    }

    /// Starts `sotto --json listen ARGS` in the background.
    pub fn listen(&self, args: &[&str]) -> Child {
        client()
            .arg("--home")
            .arg(&self.home)
            .args(["--json", "listen"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start sotto listen")
    }

    pub fn send(&self, to: &str, text: &str) -> Value {
        self.ok(&["send", to, text])
    }

    pub fn send_group(&self, chat: &str, text: &str) -> Value {
        self.ok(&["send", "--group", chat, text])
    }
}

/// (sender, body) of the text messages in a JSON array of messages.
pub fn texts(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .expect("array of messages")
        .iter()
        .filter(|m| m["kind"] == "text")
        .map(|m| {
            (m["sender"].as_str().unwrap_or("").into(), m["body"].as_str().unwrap_or("").into())
        })
        .collect()
}

/// Waits for a `listen` process to finish successfully; returns the bodies of the text
/// messages it printed (one JSON object per line).
pub fn listened_texts(listener: Child) -> Vec<String> {
    let out = listener.wait_with_output().expect("listen output");
    assert!(out.status.success(), "listen failed: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("one JSON object per line"))
        .filter(|m| m["kind"] == "text")
        .filter_map(|m| m["body"].as_str().map(str::to_owned))
        .collect()
}

pub fn pair(sender: &User, body: &str) -> (String, String) {
    (sender.address.clone(), body.to_string())
}

/// Makes `members` (and the submitting device) the roster of `group` on the server, as a
/// group's creator does: a commit at epoch 0 whose welcome, the opaque `welcome`, goes to
/// them. The group is then at epoch 1.
pub fn start_group(server: &Server, token: &str, group: &[u8], members: &[u64], welcome: &[u8]) {
    let body = json!({"group_id": b64(group), "kind": "commit", "epoch": 0,
                      "credential": credential(group, 0),
                      "next_credential": credential(group, 1),
                      "delivery": {"message": b64(b"commit")},
                      "welcome": {"recipients": members, "message": b64(welcome)}});
    let (s, v) = server.http("POST", "/v1/messages", Some(token), &body.to_string());
    assert_eq!(s, 200, "{v}");
}

/// A made-up group credential of `group` at `epoch` (base64), for groups made straight
/// through the API with [`start_group`]: real clients derive theirs from MLS.
pub fn credential(group: &[u8], epoch: u64) -> String {
    let mut c = [0xc5u8; 32];
    for (i, b) in group.iter().take(24).enumerate() {
        c[i] = *b;
    }
    c[24..].copy_from_slice(&epoch.to_be_bytes());
    b64(&c)
}

/// A sealed application message into a group made with [`start_group`], at `epoch`.
pub fn app_message(group: &[u8], epoch: u64, message: &[u8]) -> Value {
    json!({"group_id": b64(group), "kind": "application", "epoch": epoch,
           "credential": credential(group, epoch), "delivery": {"message": b64(message)}})
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(text).expect("base64")
}

pub fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no code>")
}

/// Registers a device straight through the API and logs it in; returns (device id, token).
pub fn api_device(
    server: &Server,
    address: &str,
    invite: Option<&str>,
) -> (u64, String, DeviceKey) {
    let key = DeviceKey::generate().expect("key");
    let sig = key
        .sign(&auth::registration_payload(&address.parse().expect("address"), key.public()))
        .expect("sign");
    let (list, _, _) = sotto_core::account::DeviceList::new_account(
        address.parse().expect("address"),
        key.public(),
        sotto_core::unix_now(),
    )
    .expect("list");
    let list = json!({"body": b64(&list.body), "signature": b64(&list.signature)});
    let body = json!({"address": address, "invite": invite, "device_key": b64(key.public()), "signature": b64(&sig), "device_list": list});
    let (status, v) = server.http("POST", "/v1/register", None, &body.to_string());
    assert_eq!(status, 200, "{v}");
    let device = v["device_id"].as_u64().expect("device id");
    let token = login(server, device, &key).expect("login");
    (device, token, key)
}

pub fn challenge(server: &Server, device: u64) -> Vec<u8> {
    let (status, v) =
        server.http("POST", "/v1/auth/challenge", None, &json!({"device_id": device}).to_string());
    assert_eq!(status, 200, "{v}");
    base64::engine::general_purpose::STANDARD
        .decode(v["nonce"].as_str().expect("nonce"))
        .expect("b64")
}

pub fn login(server: &Server, device: u64, key: &DeviceKey) -> Result<String, Value> {
    let nonce = challenge(server, device);
    let sig = key.sign(&auth::challenge_payload("localhost", device, &nonce)).expect("sign");
    let body = json!({"device_id": device, "nonce": b64(&nonce), "signature": b64(&sig)});
    let (status, v) = server.http("POST", "/v1/auth/token", None, &body.to_string());
    if status == 200 { Ok(v["token"].as_str().expect("token").to_string()) } else { Err(v) }
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

/// The database key of a test home, unwrapped from `keys.json` with the test passphrase
/// (independently of the client's code: the format is the contract).
pub fn home_key(home: &Path) -> [u8; 32] {
    let file: Value =
        serde_json::from_slice(&std::fs::read(home.join("keys.json")).expect("keys.json"))
            .expect("key file json");
    let num = |k: &str| file[k].as_u64().expect("kdf parameter") as u32;
    let cost = sotto_core::KdfCost { m_kib: num("m_kib"), t: num("t"), p: num("p") };
    let salt = unhex(file["salt"].as_str().expect("salt"));
    let kek = sotto_core::passphrase_key(PASSPHRASE.as_bytes(), &salt, cost).expect("kdf");
    let wrapped = unhex(file["wrapped"].as_str().expect("wrapped"));
    let key = sotto_core::open(&kek, b"sotto/v1/home-key", &wrapped).expect("unwraps");
    key.as_slice().try_into().expect("32 bytes")
}

/// A test home's database, opened with its key.
pub fn open_home_db(home: &Path) -> rusqlite::Connection {
    let db = rusqlite::Connection::open(home.join("sotto.db")).expect("open db");
    let key: String = home_key(home).iter().map(|b| format!("{b:02x}")).collect();
    db.execute_batch(&format!("PRAGMA key = \"x'{key}'\";")).expect("key");
    db
}

/// The OS keyring entry a home keeps its key under (`sotto keyring enable`), as named in its
/// `keys.json`.
pub fn keyring_entry(home: &Path) -> Option<String> {
    let keys: Value =
        serde_json::from_slice(&std::fs::read(home.join("keys.json")).ok()?).expect("keys.json");
    keys["keyring"]["entry"].as_str().map(str::to_owned)
}

/// What the kernel keyring holds under `entry`, read independently of the client's code.
#[cfg(target_os = "linux")]
pub fn keyring_secret(entry: &str) -> Option<Vec<u8>> {
    let key = keyring_key(entry)?;
    Some(key.read_to_vec().expect("read the key"))
}

#[cfg(target_os = "linux")]
fn keyring_key(entry: &str) -> Option<linux_keyutils::Key> {
    use linux_keyutils::{KeyRing, KeyRingIdentifier};
    let session = KeyRing::from_special_id(KeyRingIdentifier::Session, false).expect("session");
    session.search(&format!("sotto:{entry}")).ok()
}

/// Puts `secret` under `entry` in the kernel keyring (replacing what is there).
#[cfg(target_os = "linux")]
pub fn keyring_put(entry: &str, secret: &[u8]) {
    use linux_keyutils::{KeyRing, KeyRingIdentifier};
    let session = KeyRing::from_special_id(KeyRingIdentifier::Session, false).expect("session");
    session.add_key(&format!("sotto:{entry}"), secret).expect("add key");
}

/// Deletes `entry` from the kernel keyring, as a reboot would.
#[cfg(target_os = "linux")]
pub fn keyring_forget(entry: &str) {
    if let Some(key) = keyring_key(entry) {
        key.invalidate().expect("invalidate");
    }
}
