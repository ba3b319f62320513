//! Attachments, with the real server and CLI: round trips (padded on the server), an
//! interrupted upload resumed, a tampered or truncated blob refused, and a large file in
//! bounded memory.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Server, User};
use serde_json::Value;

/// A file of `size` pseudo-random bytes.
fn make_file(dir: &Path, name: &str, size: usize) -> PathBuf {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).expect("create");
    let mut x: u64 = size as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for b in buf.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let n = left.min(buf.len());
        f.write_all(&buf[..n]).expect("write");
        left -= n;
    }
    path
}

fn same_file(a: &Path, b: &Path) -> bool {
    std::fs::read(a).expect("read a") == std::fs::read(b).expect("read b")
}

/// The id of the newest file message in `user`'s history of `chat`.
fn file_message(user: &User, chat: &str) -> (String, Value) {
    let history = user.ok(&["history", chat]);
    let m = history
        .as_array()
        .expect("messages")
        .iter()
        .rev()
        .find(|m| m["kind"] == "file")
        .cloned()
        .unwrap_or_else(|| panic!("no file message in {history}"));
    (m["id"].as_str().expect("id").to_string(), m)
}

#[test]
fn files_round_trip_in_direct_and_group_chats() {
    let server = Server::start(&["--registration", "open"]);
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|n| User::register(n, &server, ""));
    let dir = tempfile::tempdir().expect("dir");
    let original = make_file(dir.path(), "report.pdf", 300_000);
    let sent = alice.ok(&["send-file", &bob.address, original.to_str().expect("path")]);
    assert_eq!(sent["kind"], "file");
    assert_eq!(sent["file"]["name"], "report.pdf");
    bob.sync();
    let (id, m) = file_message(&bob, &alice.address);
    assert_eq!(m["file"]["size"], 300_000);
    assert_eq!(m["file"]["media_type"], "application/pdf");
    let out = dir.path().join("bob-copy.pdf");
    let got = bob.ok(&["download", &id, "--out", out.to_str().expect("path")]);
    assert_eq!(got["size"], 300_000);
    assert!(same_file(&original, &out));
    // Downloading again over an existing file is refused.
    assert_eq!(bob.err(&["download", &id, "--out", out.to_str().expect("path")]), "invalid_input");
    // A `.part` planted as a link (a shared directory) is not followed.
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, b"keep me").expect("victim");
    let planted = dir.path().join("planted.pdf");
    std::os::unix::fs::symlink(&victim, dir.path().join("planted.pdf.part")).expect("link");
    assert_eq!(
        bob.err(&["download", &id, "--out", planted.to_str().expect("path")]),
        "invalid_input"
    );
    assert_eq!(std::fs::read(&victim).expect("victim"), b"keep me");

    // A group, and an empty file.
    let group =
        alice.ok(&["group", "create", "team", "--members", "bob@localhost,carol@localhost"]);
    let group = group["id"].as_str().expect("id").to_string();
    let empty = make_file(dir.path(), "empty.txt", 0);
    alice.ok(&["send-file", "--group", &group, empty.to_str().expect("path")]);
    for member in [&bob, &carol] {
        member.sync();
        let (id, _) = file_message(member, &group);
        let out = dir.path().join(format!("{}-empty.txt", member.address));
        member.ok(&["download", &id, "--out", out.to_str().expect("path")]);
        assert_eq!(std::fs::read(&out).expect("read").len(), 0);
    }
    // Nothing readable reaches the server: not the name, not the content, not the exact
    // size (the file is padded to its Padmé length, 303 104 bytes, before encryption).
    let blobs = server.data.join("blobs");
    let head = &std::fs::read(&original).expect("read")[..64];
    let mut sizes = Vec::new();
    for entry in std::fs::read_dir(&blobs).expect("blobs").flatten() {
        let bytes = std::fs::read(entry.path()).expect("blob");
        assert!(!bytes.windows(head.len()).any(|w| w == head));
        sizes.push(bytes.len() as u64);
    }
    sizes.sort();
    let padded = sotto_core::attachment::padme(300_000);
    assert_eq!(padded, 303_104);
    assert_eq!(sizes, [16, sotto_core::attachment::encrypted_len(padded)]);
    let db = std::fs::read(server.data.join("sotto.db")).expect("db");
    assert!(!db.windows(10).any(|w| w == b"report.pdf"));
}

#[test]
fn a_tampered_or_truncated_file_is_refused_and_nothing_is_kept() {
    let server = Server::start(&["--registration", "open"]);
    let [alice, bob] = ["alice", "bob"].map(|n| User::register(n, &server, ""));
    let dir = tempfile::tempdir().expect("dir");
    let original = make_file(dir.path(), "photo.jpg", 200_000);
    alice.ok(&["send-file", &bob.address, original.to_str().expect("path")]);
    bob.sync();
    let (id, _) = file_message(&bob, &alice.address);
    let blob = std::fs::read_dir(server.data.join("blobs"))
        .expect("blobs")
        .flatten()
        .next()
        .expect("one blob")
        .path();
    let pristine = std::fs::read(&blob).expect("blob");

    let mut flipped = pristine.clone();
    flipped[100_000] ^= 1;
    std::fs::write(&blob, &flipped).expect("tamper");
    let out = dir.path().join("tampered.jpg");
    assert_eq!(bob.err(&["download", &id, "--out", out.to_str().expect("path")]), "tampered");
    assert!(!out.exists());
    assert!(!dir.path().join("tampered.jpg.part").exists(), "no unverified plaintext is left");

    std::fs::write(&blob, &pristine[..pristine.len() - 1000]).expect("truncate");
    let out = dir.path().join("truncated.jpg");
    assert_eq!(bob.err(&["download", &id, "--out", out.to_str().expect("path")]), "tampered");
    assert!(!out.exists());

    std::fs::write(&blob, &pristine).expect("restore");
    let out = dir.path().join("fine.jpg");
    bob.ok(&["download", &id, "--out", out.to_str().expect("path")]);
    assert!(same_file(&original, &out));
}

/// `sotto --json ARGS` in `user`'s home; returns its peak resident memory (KiB) and output.
fn run_watching_rss(user: &User, args: &[&str]) -> (u64, std::process::Output) {
    let child = common::client()
        .arg("--home")
        .arg(&user.home)
        .arg("--json")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let watcher =
            s.spawn(|| watch_rss(pid, || done.load(std::sync::atomic::Ordering::Relaxed)));
        let out = child.wait_with_output().expect("wait");
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (watcher.join().expect("watch"), out)
    })
}

/// Peak resident memory of a process while it runs (KiB), sampled.
fn watch_rss(pid: u32, until: impl Fn() -> bool) -> u64 {
    let mut peak = 0;
    while !until() {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            for line in status.lines() {
                if let Some(v) = line.strip_prefix("VmRSS:") {
                    let kb: u64 = v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0);
                    peak = peak.max(kb);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    peak
}

#[test]
fn an_interrupted_upload_resumes_and_large_files_stream_in_bounded_memory() {
    let server = Server::start(&["--registration", "open"]);
    let [alice, bob] = ["alice", "bob"].map(|n| User::register(n, &server, ""));
    let dir = tempfile::tempdir().expect("dir");
    let size = 96 << 20;
    let big = make_file(dir.path(), "big.bin", size);
    let received = || -> i64 {
        let db = rusqlite::Connection::open(server.data.join("sotto.db")).expect("db");
        db.query_row("SELECT COALESCE(MAX(received), 0) FROM blobs", [], |r| r.get(0)).unwrap_or(0)
    };

    // Killed once part of the file is on the server...
    let mut child = common::client()
        .arg("--home")
        .arg(&alice.home)
        .args(["--json", "send-file", &bob.address, big.to_str().expect("path")])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(60);
    while received() < (8 << 20) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("kill");
    let _ = child.wait();
    let part = received();
    assert!(part > 0 && (part as usize) < size, "killed mid-upload at {part} of {size}");

    // ...the next run continues from there (watching the client's memory as it does).
    let (peak, out) =
        run_watching_rss(&alice, &["send-file", &bob.address, big.to_str().expect("path")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(peak < 64 * 1024, "the client used {peak} KiB for a {} MiB file", size >> 20);
    let blobs = server.data.join("blobs");
    assert_eq!(std::fs::read_dir(&blobs).expect("blobs").count(), 1, "resumed, not restarted");

    bob.sync();
    let (id, _) = file_message(&bob, &alice.address);
    let out = dir.path().join("copy.bin");
    let (peak, result) =
        run_watching_rss(&bob, &["download", &id, "--out", out.to_str().expect("path")]);
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stdout));
    assert!(peak < 64 * 1024, "the client used {peak} KiB to download");
    assert!(same_file(&big, &out));
}

#[test]
fn blob_endpoints_refuse_hostile_input_and_keep_quotas() {
    let server = Server::start(&["--registration", "open", "--blob-quota", "1K"]);
    let (_, alice, _) = common::api_device(&server, "alice@localhost", None);
    let (_, bob, _) = common::api_device(&server, "bob@localhost", None);
    let req = |method: &str, path: &str, token: Option<&str>, body: &str| {
        let (s, v) = server.http(method, path, token, body);
        (s, v.clone(), common::code(&v).to_string())
    };
    // Sizes out of range, a malformed body, no token.
    for body in [r#"{"size":0}"#, r#"{"size":5000000000}"#, r#"{"size":"ten"}"#, "[]"] {
        let (s, v, code) = req("POST", "/v1/blobs", Some(&alice), body);
        assert_eq!((s, code.as_str()), (400, "bad_request"), "{body}: {v}");
    }
    let (s, _, code) = req("POST", "/v1/blobs", None, r#"{"size":10}"#);
    assert_eq!((s, code.as_str()), (401, "unauthorized"));

    let (s, v, _) = req("POST", "/v1/blobs", Some(&alice), r#"{"size":10}"#);
    assert_eq!(s, 200, "{v}");
    let id: String =
        common::unb64(v["id"].as_str().expect("id")).iter().map(|b| format!("{b:02x}")).collect();
    let blob = format!("/v1/blobs/{id}");
    // Not downloadable before it is complete: the uploader is told so, anyone else is told
    // there is no such file.
    let (s, v, code) = req("GET", &blob, Some(&alice), "");
    assert_eq!((s, code.as_str()), (409, "upload_in_progress"), "{v}");
    let (s, v, code) = req("GET", &blob, Some(&bob), "");
    assert_eq!((s, code.as_str()), (404, "unknown_file"), "{v}");
    // Writes elsewhere than the end, or past the announced size, change nothing.
    let (s, v, code) = req("PUT", &format!("{blob}?offset=5"), Some(&alice), "hello");
    assert_eq!((s, code.as_str()), (409, "wrong_offset"), "{v}");
    let (s, v, code) = req("PUT", &format!("{blob}?offset=0"), Some(&alice), "hello world");
    assert_eq!((s, code.as_str()), (400, "bad_request"), "{v}");
    let (s, v, code) = req("PUT", &format!("{blob}?offset=-1"), Some(&alice), "hello");
    assert_eq!((s, code.as_str()), (400, "bad_request"), "{v}");
    let (s, v, _) = req("GET", &format!("{blob}/status"), Some(&alice), "");
    assert_eq!((s, v["received"].as_u64()), (200, Some(0)), "{v}");
    // Someone else's upload looks like no upload at all.
    for (method, path) in [("GET", format!("{blob}/status")), ("PUT", format!("{blob}?offset=0"))] {
        let (s, v, code) = req(method, &path, Some(&bob), "hello");
        assert_eq!((s, code.as_str()), (404, "unknown_file"), "{method} {path}: {v}");
    }
    // Malformed and unknown ids.
    for path in ["/v1/blobs/zz", "/v1/blobs/00", "/v1/blobs/zz/status"] {
        let (s, v, code) = req("GET", path, Some(&alice), "");
        assert_eq!((s, code.as_str()), (400, "bad_request"), "{path}: {v}");
    }
    let (s, v, code) = req("GET", &format!("/v1/blobs/{}", "00".repeat(16)), Some(&bob), "");
    assert_eq!((s, code.as_str()), (404, "unknown_file"), "{v}");

    // The upload completes in two pieces; anyone holding the id may then fetch it.
    let (s, v, _) = req("PUT", &format!("{blob}?offset=0"), Some(&alice), "hello");
    assert_eq!((s, v["received"].as_u64()), (200, Some(5)), "{v}");
    let (s, v, _) = req("PUT", &format!("{blob}?offset=5"), Some(&alice), "world");
    assert_eq!((s, v["received"].as_u64()), (200, Some(10)), "{v}");
    let (s, v, code) = req("PUT", &format!("{blob}?offset=10"), Some(&alice), "!");
    assert_eq!((s, code.as_str()), (400, "bad_request"), "{v}");
    assert_eq!(raw_get(&server, &blob, &bob, None), (200, b"helloworld".to_vec()));
    assert_eq!(raw_get(&server, &blob, &bob, Some("bytes=5-")), (206, b"world".to_vec()));
    let (s, _) = raw_get(&server, &blob, &bob, Some("bytes=0-3"));
    assert_eq!(s, 400, "only open-ended ranges are served");
    let (s, _) = raw_get(&server, &blob, &bob, Some("bytes=11-"));
    assert_eq!(s, 400, "a range past the end is refused");

    // The quota (1 KiB) counts what an account keeps, finished or not.
    let (s, v, _) = req("POST", "/v1/blobs", Some(&alice), r#"{"size":1000}"#);
    assert_eq!(s, 200, "{v}");
    let (s, v, code) = req("POST", "/v1/blobs", Some(&alice), r#"{"size":100}"#);
    assert_eq!((s, code.as_str()), (507, "quota_exceeded"), "{v}");
    assert!(v["error"]["message"].as_str().unwrap_or("").contains("1010 of 1024"), "{v}");
    // Another account's quota is its own.
    let (s, v, _) = req("POST", "/v1/blobs", Some(&bob), r#"{"size":1000}"#);
    assert_eq!(s, 200, "{v}");

    // Tiny files cannot be started without end: each is a row and a file on disk.
    let (_, carol, _) = common::api_device(&server, "carol@localhost", None);
    let mut started = 0;
    let refusal = loop {
        let (s, v, code) = req("POST", "/v1/blobs", Some(&carol), r#"{"size":1}"#);
        if s != 200 {
            break (s, code, v);
        }
        started += 1;
        assert!(started < 1000, "a device started {started} files without a pause");
    };
    assert_eq!((refusal.0, refusal.1.as_str()), (429, "rate_limited"), "{}", refusal.2);
    assert!((200..=210).contains(&started), "{started} files before the limit");
}

/// A file deleted while its upload streams stops taking bytes at the upload's next durability
/// checkpoint: the upload gets 404 and the disk keeps nothing, so deleting cannot make room
/// in the quota for bytes that keep arriving.
#[test]
fn a_file_deleted_during_its_upload_stops_taking_bytes() {
    use std::io::Read as _;
    let server = Server::start(&["--registration", "open"]);
    let (_, alice, _) = common::api_device(&server, "alice@localhost", None);
    let size = 64u64 << 20;
    let (s, v) = server.http("POST", "/v1/blobs", Some(&alice), &format!(r#"{{"size":{size}}}"#));
    assert_eq!(s, 200, "{v}");
    let id: String =
        common::unb64(v["id"].as_str().expect("id")).iter().map(|b| format!("{b:02x}")).collect();
    let blobs = server.data.join("blobs");

    // A chunked upload, 1 MiB at a time.
    let mut stream = std::net::TcpStream::connect(server.addr()).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    write!(
        stream,
        "PUT /v1/blobs/{id}?offset=0 HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {alice}\r\n\
         Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .expect("head");
    let piece = vec![7u8; 1 << 20];
    let send = |stream: &mut std::net::TcpStream| -> std::io::Result<()> {
        write!(stream, "{:x}\r\n", piece.len())?;
        stream.write_all(&piece)?;
        stream.write_all(b"\r\n")
    };
    for _ in 0..4 {
        send(&mut stream).expect("piece");
    }
    let (s, v) = server.http("DELETE", &format!("/v1/blobs/{id}"), Some(&alice), "");
    assert_eq!(s, 200, "deleted while uploading: {v}");
    // The upload goes on sending; by its next checkpoint (8 MiB) the server has stopped.
    let mut sent = 4;
    while sent < 40 && send(&mut stream).is_ok() {
        sent += 1;
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(answer.contains("unknown_file"), "{answer}");
    assert!(sent < 40, "the server took all {sent} MiB of a deleted file");
    let left: Vec<_> = std::fs::read_dir(&blobs).expect("blobs").collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A GET with an optional `Range` header; returns the status and the raw body.
fn raw_get(server: &Server, path: &str, token: &str, range: Option<&str>) -> (u16, Vec<u8>) {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect(server.addr()).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let range = range.map(|r| format!("Range: {r}\r\n")).unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n{range}\r\n",
        server.addr()
    )
    .expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("headers") + 4;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status");
    (status, raw[split..].to_vec())
}

#[test]
fn files_count_in_chats_and_reach_a_newly_linked_device() {
    let server = Server::start(&["--registration", "open"]);
    let [alice, bob] = ["alice", "bob"].map(|n| User::register(n, &server, ""));
    let dir = tempfile::tempdir().expect("dir");
    let original = make_file(dir.path(), "plan.txt", 5000);
    alice.send(&bob.address, "the plan follows");
    alice.ok(&["send-file", &bob.address, original.to_str().expect("path")]);
    alice.ok(&["send-file", &bob.address, original.to_str().expect("path")]);
    bob.sync();
    // `chats` counts file messages, and dates the chat by the last of them.
    let chats = bob.ok(&["chats"]);
    let chat = &chats[0];
    assert_eq!(chat["messages"], 3, "{chats}");
    let (_, last) = file_message(&bob, &alice.address);
    assert_eq!(chat["last_message_at"], last["sent_at"], "{chats}");

    // bob's new device gets the files in its history, and can download them.
    let (laptop, linked) = bob.link_device(&server, "laptop");
    assert_eq!(linked["history_messages"], 3, "{linked}");
    let (id, m) = file_message(&laptop, &alice.address);
    assert_eq!(m["file"]["name"], "plan.txt");
    let out = dir.path().join("laptop-copy.txt");
    laptop.ok(&["download", &id, "--out", out.to_str().expect("path")]);
    assert!(same_file(&original, &out));
}

/// A raw member of a group: a device registered straight through the API whose MLS state
/// this test holds, with one X-Wing key package on the server.
struct RawMember {
    token: String,
    provider: sotto_core::mls::Provider<openmls_memory_storage::MemoryStorage>,
}

fn raw_member(server: &Server, address: &str) -> RawMember {
    raw_member_of(server, address, &[sotto_core::mls::Suite::PostQuantum])
}

/// [`raw_member`] with one key package of each of `suites` on file.
fn raw_member_of(server: &Server, address: &str, suites: &[sotto_core::mls::Suite]) -> RawMember {
    use sotto_core::mls::{self, Identity, Provider};
    let (id, token, key) = common::api_device(server, address, None);
    let provider = Provider::new(openmls_memory_storage::MemoryStorage::default());
    key.store(&provider).expect("store key");
    let device =
        sotto_core::DeviceRef { address: address.parse().expect("address"), device_id: id };
    let me = Identity { device, key };
    for suite in suites {
        let kp = mls::key_packages(&provider, &me, *suite, 1, false).expect("kp");
        let body = serde_json::json!({ "key_packages": [common::b64(&kp[0])] }).to_string();
        let (s, v) = server.http("POST", "/v1/keypackages", Some(&token), &body);
        assert_eq!(s, 200, "{v}");
    }
    RawMember { token, provider }
}

#[test]
fn a_chat_too_large_for_x_wing_claims_only_classical_key_packages() {
    use sotto_core::mls::Suite;
    let server = Server::start(&["--registration", "open", "--registration-rate", "1000"]);
    let alice = User::register("alice", &server, "");
    // 300 accounts: more devices than a post-quantum chat takes. Each has both kinds of key
    // package on file, as every current device does.
    let members: Vec<(String, RawMember)> = (0..300)
        .map(|i| {
            let address = format!("many{i}@localhost");
            let m = raw_member_of(&server, &address, &[Suite::PostQuantum, Suite::Classical]);
            (address, m)
        })
        .collect();
    let addresses: Vec<&str> = members.iter().map(|(a, _)| a.as_str()).collect();
    alice.ok(&["group", "create", "many", "--members", &addresses.join(",")]);
    // Every member's classical package went into the chat; none lost its X-Wing one.
    for (address, m) in members.iter().step_by(37) {
        let (s, v) = server.http("GET", "/v1/keypackages", Some(&m.token), "");
        assert_eq!(s, 200, "{v}");
        let remaining = |suite: Suite| {
            let stock = v["suites"].as_array().expect("suites");
            let of = stock.iter().find(|x| x["ciphersuite"] == suite.code());
            of.map_or(0, |of| of["remaining"].as_u64().expect("remaining"))
        };
        assert_eq!(
            (remaining(Suite::PostQuantum), remaining(Suite::Classical)),
            (1, 0),
            "{address}: {v}"
        );
    }
}

fn blob_files(server: &Server) -> usize {
    std::fs::read_dir(server.data.join("blobs")).map_or(0, |d| d.count())
}

#[test]
fn large_welcomes_go_by_reference_and_hostile_references_fail_alone() {
    use sotto_core::mls::{self, Incoming};
    use sotto_core::reference::{self, Reference};
    let server = Server::start(&["--registration", "open", "--registration-rate", "1000"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    let carol = User::register("carol", &server, "");
    // Thirty X-Wing members: the welcome that adds them (some 80 KB) is too large to copy
    // into each of their queues.
    let mallory = raw_member(&server, "mallory@localhost");
    let mut members = vec![bob.address.clone(), "mallory@localhost".to_string()];
    for i in 0..29 {
        let address = format!("member{i}@localhost");
        raw_member(&server, &address);
        members.push(address);
    }
    alice.ok(&["group", "create", "big", "--members", &members.join(",")]);
    assert_eq!(blob_files(&server), 1, "the welcome is kept once, as a file");
    alice.send_group("big", "hello all");
    assert_eq!(bob.sync(), vec![common::pair(&alice, "hello all")]);
    assert!(alice.sync().is_empty(), "alice's own commit and message are skipped");

    // mallory reads the welcome as a reference, fetches it, joins, and reads on.
    let (s, v) = server.http("GET", "/v1/queue?after=0", Some(&mallory.token), "");
    assert_eq!(s, 200, "{v}");
    let mut group_id = None;
    for (i, m) in v["messages"].as_array().expect("messages").iter().enumerate() {
        let queued = common::unb64(m["message"].as_str().expect("message"));
        let message = match Reference::decode(&queued).expect("decodes") {
            Some(r) => {
                let path = format!("/v1/blobs/{}", r.blob_hex());
                let (s, sealed) = raw_get(&server, &path, &mallory.token, None);
                assert_eq!(s, 200);
                reference::open(&r, &sealed).expect("opens")
            }
            None => queued,
        };
        match mls::process(&mallory.provider, &message).expect("processes") {
            Incoming::Joined { group_id: g, .. } => {
                assert_eq!(i, 0, "the welcome comes first");
                assert!(m["message"].as_str().expect("b64").len() < 200, "by reference");
                group_id = Some(g);
            }
            _ => assert!(i > 0),
        }
    }
    let group_id = group_id.expect("joined");
    let p = &mallory.provider;
    let submit = |message: &[u8]| {
        let credential = mls::group_credential(p, &group_id).expect("credential");
        let body = serde_json::json!({
            "group_id": common::b64(&group_id), "kind": "application",
            "epoch": mls::epoch(p, &group_id).expect("epoch"),
            "credential": common::b64(credential.as_bytes()),
            "delivery": {"message": common::b64(message)},
        });
        let (s, v) = server.http("POST", "/v1/messages", None, &body.to_string());
        assert_eq!(s, 200, "{v}");
    };
    // A member sends references to no file, to a file that is not what the reference says,
    // and one that is malformed; then alice writes again.
    submit(&reference::seal([0xab; 16], b"nothing here").expect("seal").1.encode());
    let size = reference::sealed_len(1000);
    let (s, v) =
        server.http("POST", "/v1/blobs", Some(&mallory.token), &format!(r#"{{"size":{size}}}"#));
    assert_eq!(s, 200, "{v}");
    let id: [u8; 16] = common::unb64(v["id"].as_str().expect("id")).try_into().expect("16 bytes");
    let (garbage, _) = reference::seal(id, &[1u8; 1000]).expect("seal");
    let (_, lying) = reference::seal(id, &[2u8; 1000]).expect("seal");
    let path = format!("/v1/blobs/{}?offset=0", lying.blob_hex());
    let (s, answer) = raw_put(&server, &path, Some(&mallory.token), &garbage);
    assert_eq!(s, 200, "{answer}");
    submit(&lying.encode());
    submit(&[0xff, b'S', b'R', 1, 0, 0]);
    alice.send_group("big", "after the noise");
    let v = bob.ok(&["sync"]);
    assert_eq!(common::texts(&v["messages"]), vec![common::pair(&alice, "after the noise")]);
    let failures = v["failures"].as_array().expect("failures");
    assert_eq!(failures.len(), 3, "{v}");
    for (failure, what) in
        failures.iter().zip(["no such file", "does not authenticate", "is 99 bytes"])
    {
        let reason = failure["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("by reference") && reason.contains(what), "{failure}");
    }

    // References to more than a client holds at once (three files of 7 MB; 16 MiB per page):
    // the page is taken in parts, and nothing after them is lost. A reference that names a
    // file again is refused without fetching it.
    let big = 7_000_000u64;
    let heavy: Vec<Reference> = (0..3u8)
        .map(|n| {
            let size = reference::sealed_len(big);
            let (s, v) = server.http(
                "POST",
                "/v1/blobs",
                Some(&mallory.token),
                &format!(r#"{{"size":{size}}}"#),
            );
            assert_eq!(s, 200, "{v}");
            let id: [u8; 16] =
                common::unb64(v["id"].as_str().expect("id")).try_into().expect("16 bytes");
            let noise: Vec<u8> = (0..big).map(|i| (i * 31 % 251) as u8 ^ n).collect();
            let (sealed, r) = reference::seal(id, &noise).expect("seal");
            let path = format!("/v1/blobs/{}?offset=0", r.blob_hex());
            let (s, answer) = raw_put(&server, &path, Some(&mallory.token), &sealed);
            assert_eq!(s, 200, "{answer}");
            r
        })
        .collect();
    for r in heavy.iter().chain([&heavy[0]]) {
        submit(&r.encode());
    }
    alice.send_group("big", "after the weight");
    let v = bob.ok(&["sync"]);
    assert_eq!(common::texts(&v["messages"]), vec![common::pair(&alice, "after the weight")]);
    let reasons: Vec<&str> = v["failures"]
        .as_array()
        .expect("failures")
        .iter()
        .map(|f| f["reason"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(reasons.len(), 4, "{v}");
    assert!(reasons[..3].iter().all(|r| r.contains("MLS")), "{v}");
    assert!(reasons[3].contains("an earlier reference named"), "{v}");

    // Files made with no token need a member's credential of the group's current epoch.
    let anonymous = |group: &[u8], credential: &[u8]| {
        let body = serde_json::json!({"size": 100, "group": {
            "group_id": common::b64(group), "credential": common::b64(credential)}});
        server.http("POST", "/v1/blobs", None, &body.to_string())
    };
    let credential = mls::group_credential(p, &group_id).expect("credential");
    let (s, v) = anonymous(&group_id, credential.as_bytes());
    assert_eq!(s, 200, "{v}");
    let (s, v) = anonymous(&group_id, &[7; 32]);
    assert_eq!((s, common::code(&v)), (403, "not_member"), "{v}");
    let (s, v) = anonymous(b"no such group", credential.as_bytes());
    assert_eq!((s, common::code(&v)), (409, "group_unsealed"), "{v}");
    let (s, v) = server.http("POST", "/v1/blobs", None, r#"{"size":100}"#);
    assert_eq!((s, common::code(&v)), (401, "unauthorized"), "{v}");
    // Nobody appends to a file made with a token without that token.
    let (s, v) = raw_put(&server, &format!("/v1/blobs/{}?offset=0", lying.blob_hex()), None, b"x");
    assert_eq!(s, 404, "{v}");

    // A member added later gets the welcome by reference too; a member removed is gone. bob
    // adds carol while alice is behind: the file of alice's next commit is refused as of a
    // past epoch, and alice catches up and commits again.
    bob.ok(&["group", "add", "big", &carol.address]);
    alice.ok(&["group", "remove", "big", "mallory@localhost"]);
    alice.send_group("big", "without mallory");
    assert_eq!(carol.sync(), vec![common::pair(&alice, "without mallory")]);
    assert_eq!(bob.sync(), vec![common::pair(&alice, "without mallory")]);
    // The raw members read nothing more: their queues hold every copy sent since. What was
    // too large to copy (the first welcome, the commits whose paths still reach every leaf)
    // went as files, so no queued copy comes near the size of the welcome.
    let db = rusqlite::Connection::open(server.data.join("sotto.db")).expect("server db");
    let (largest, total): (i64, i64) = db
        .query_row("SELECT max(length(message)), sum(length(message)) FROM queue", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("queue");
    assert!(largest < 16 << 10, "a queued copy of {largest} bytes");
    assert!(total < 1 << 20, "{total} bytes queued");
    assert!(blob_files(&server) >= 3, "the welcome, its commits and mallory's file");
    // Only the group's first welcome (its creator submits with a token too) and mallory's
    // files name an uploader: the files of later commits were made with the group's
    // credential, as their submissions were.
    let owners: Vec<(i64, String)> = pairs(&db, "SELECT device_id, address FROM blobs");
    let named: Vec<&str> =
        owners.iter().filter(|(d, _)| *d != 0).map(|(_, a)| a.as_str()).collect();
    assert_eq!(named.iter().filter(|a| **a == "alice@localhost").count(), 1, "{owners:?}");
    assert!(named.iter().all(|a| *a == "alice@localhost" || *a == "mallory@localhost"));
    assert!(owners.iter().all(|(d, a)| *d != 0 || a.starts_with("group:")), "{owners:?}");
    // A group's file not complete within the hour is not coming (the one made above with no
    // bytes); a complete one outlives the copies that name it.
    let lives: Vec<(bool, i64)> = pairs(
        &db,
        "SELECT received = size, expires_at - created_at FROM blobs WHERE device_id = 0",
    );
    assert!(lives.iter().any(|(done, _)| !done) && lives.iter().any(|(done, _)| *done));
    for (done, life) in &lives {
        assert!(if *done { *life > 86_400 } else { *life == 3_600 }, "{lives:?}");
    }
    // mallory, removed, can no longer make files for the group.
    let (s, v) = anonymous(&group_id, credential.as_bytes());
    assert!(s == 403 || s == 409, "{s} {v}");
}

/// The rows of a query of two columns.
fn pairs<A: rusqlite::types::FromSql, B: rusqlite::types::FromSql>(
    db: &rusqlite::Connection,
    sql: &str,
) -> Vec<(A, B)> {
    db.prepare(sql)
        .expect("query")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// A PUT of `body`, with `token` if given; the status and the answer's text.
fn raw_put(server: &Server, path: &str, token: Option<&str>, body: &[u8]) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(server.addr()).expect("connect");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        stream,
        "PUT {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .expect("head");
    stream.write_all(body).expect("body");
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).expect("answer");
    let status = answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status");
    (status, answer)
}
