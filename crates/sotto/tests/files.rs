//! Attachments, with the real server and CLI: round trips, an interrupted upload resumed, a
//! tampered or truncated blob refused, and a large file in bounded memory.

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
    // Nothing readable reaches the server: not the name, not the content.
    let blobs = server.data.join("blobs");
    let head = &std::fs::read(&original).expect("read")[..64];
    for entry in std::fs::read_dir(&blobs).expect("blobs").flatten() {
        let bytes = std::fs::read(entry.path()).expect("blob");
        assert!(!bytes.windows(head.len()).any(|w| w == head));
    }
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
    let code = bob.err(&["download", &id, "--out", out.to_str().expect("path")]);
    assert!(code == "tampered" || code == "unreachable", "{code}");
    assert!(!out.exists());

    std::fs::write(&blob, &pristine).expect("restore");
    let out = dir.path().join("fine.jpg");
    bob.ok(&["download", &id, "--out", out.to_str().expect("path")]);
    assert!(same_file(&original, &out));
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
    let child = common::client()
        .arg("--home")
        .arg(&alice.home)
        .args(["--json", "send-file", &bob.address, big.to_str().expect("path")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (peak, out) = std::thread::scope(|s| {
        let watcher =
            s.spawn(|| watch_rss(pid, || done.load(std::sync::atomic::Ordering::Relaxed)));
        let out = child.wait_with_output().expect("wait");
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (watcher.join().expect("watch"), out)
    });
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(peak < 64 * 1024, "the client used {peak} KiB for a {} MiB file", size >> 20);
    let blobs = server.data.join("blobs");
    assert_eq!(std::fs::read_dir(&blobs).expect("blobs").count(), 1, "resumed, not restarted");

    bob.sync();
    let (id, _) = file_message(&bob, &alice.address);
    let out = dir.path().join("copy.bin");
    let child = common::client()
        .arg("--home")
        .arg(&bob.home)
        .args(["--json", "download", &id, "--out", out.to_str().expect("path")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (peak, result) = std::thread::scope(|s| {
        let watcher =
            s.spawn(|| watch_rss(pid, || done.load(std::sync::atomic::Ordering::Relaxed)));
        let result = child.wait_with_output().expect("wait");
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (watcher.join().expect("watch"), result)
    });
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stdout));
    assert!(peak < 64 * 1024, "the client used {peak} KiB to download");
    assert!(same_file(&big, &out));
}
