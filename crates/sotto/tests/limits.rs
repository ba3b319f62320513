//! Floods are bounded: queue quotas, message time-to-live, rate limits, the connection cap,
//! and a full disk. Each limit answers with its own error code, and nothing stored is lost.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::{Server, User, api_device, code, pair};
use serde_json::json;

#[test]
fn a_full_queue_refuses_until_its_device_catches_up() {
    let server = Server::start(&["--registration", "open", "--queue-max-messages", "4"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    // The welcome, the chat's description and two texts fill bob's queue.
    alice.send(&bob.address, "one");
    alice.send(&bob.address, "two");
    assert_eq!(alice.err(&["send", &bob.address, "three"]), "queue_full");
    // The message waits in alice's outbox until bob's queue has room.
    let history = alice.ok(&["history", &bob.address]);
    assert_eq!(
        history.as_array().and_then(|h| h.last()).map(|m| m["status"].clone()),
        Some(json!("pending"))
    );
    assert_eq!(bob.sync(), vec![pair(&alice, "one"), pair(&alice, "two")]);
    // The next send delivers the waiting message first: order is kept.
    alice.send(&bob.address, "four");
    assert_eq!(bob.sync(), vec![pair(&alice, "three"), pair(&alice, "four")]);
}

#[test]
fn undelivered_messages_expire() {
    let server =
        Server::start(&["--registration", "open", "--message-ttl", "2s", "--sweep-interval", "1s"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    alice.send(&bob.address, "in time");
    assert_eq!(bob.sync(), vec![pair(&alice, "in time")]);
    alice.send(&bob.address, "too late");
    std::thread::sleep(Duration::from_millis(3200));
    assert!(bob.sync().is_empty(), "an expired message is not delivered");
    // The chat goes on: skipping an expired message does not break decryption.
    alice.send(&bob.address, "fresh");
    assert_eq!(bob.sync(), vec![pair(&alice, "fresh")]);
}

#[test]
fn registrations_and_requests_are_rate_limited() {
    let server = Server::start(&[
        "--registration",
        "open",
        "--registration-rate",
        "3",
        "--device-rate",
        "1",
    ]);
    // Forged registrations: each attempt counts, and the fourth within the hour is refused.
    let forged = json!({"address": "eve@localhost", "device_key": common::b64(&[1; 32]), "signature": common::b64(&[2; 64]), "device_list": {"body": "", "signature": ""}}).to_string();
    for _ in 0..3 {
        let (s, v) = server.http("POST", "/v1/register", None, &forged);
        assert_eq!((s, code(&v)), (401, "bad_signature"));
    }
    let (s, v) = server.http("POST", "/v1/register", None, &forged);
    assert_eq!((s, code(&v)), (429, "rate_limited"), "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains("retry in")));

    // A device making requests faster than its rate gets refused, then recovers.
    let server = Server::start(&["--registration", "open", "--device-rate", "1"]);
    let (_, token, _) = api_device(&server, "busy@localhost", None);
    let statuses: Vec<u16> =
        (0..14).map(|_| server.http("GET", "/v1/keypackages", Some(&token), "").0).collect();
    assert!(statuses.iter().take(9).all(|s| *s == 200), "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(server.http("GET", "/v1/keypackages", Some(&token), "").0, 200);
}

#[test]
fn connections_beyond_the_cap_wait() {
    let server = Server::start(&["--registration", "open", "--max-connections", "2"]);
    let first = TcpStream::connect(server.addr()).expect("connect");
    let _second = TcpStream::connect(server.addr()).expect("connect");
    // Two idle connections hold both places: a third request is not served...
    let answer = server.http_within("GET", "/v1/info", None, "", Duration::from_millis(800));
    assert!(answer.is_none(), "served beyond the cap: {answer:?}");
    // ...until one of them closes.
    drop(first);
    let (status, info) = server
        .http_within("GET", "/v1/info", None, "", Duration::from_secs(10))
        .expect("served once a place is free");
    assert_eq!((status, info["domain"].as_str()), (200, Some("localhost")));
}

/// A size-limited tmpfs, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn a_full_disk_refuses_new_messages_and_keeps_what_it_has() {
    let disk = SmallDisk::new("3m");
    // Ballast the operator can delete later to free space.
    let ballast = disk.dir.path().join("ballast");
    std::fs::write(&ballast, vec![0u8; 1024 * 1024]).expect("ballast");
    let data = disk.dir.path().join("data");
    let mut server = Server::start_in(&data, "127.0.0.1:0", &["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    let carol = User::register("carol", &server, "");
    alice.send(&bob.address, "before the disk filled");
    // Fill the disk with opaque messages to carol's device until the server refuses.
    let (_, token, _) = api_device(&server, "filler@localhost", None);
    let carol_device = carol.ok(&["whoami"])["device_id"].as_u64().expect("id");
    // Large messages first, then ever smaller ones, until not even a small one fits.
    let mut stored = 0u64;
    let mut refusals = Vec::new();
    common::start_group(&server, &token, b"filler", &[carol_device], b"filler");
    for size in [256 * 1024, 32 * 1024, 4 * 1024, 512, 64] {
        let body = common::app_message(b"filler", 1, &vec![7u8; size]).to_string();
        loop {
            let (s, v) = server.http("POST", "/v1/messages", None, &body);
            if s != 200 {
                refusals.push((s, code(&v).to_string()));
                break;
            }
            stored += 1;
            assert!(stored < 5000, "the 3 MiB disk never filled");
        }
    }
    assert!(stored > 0, "some messages fitted first");
    assert!(refusals.iter().all(|(s, c)| *s == 507 && c == "storage_full"), "{refusals:?}");
    // New messages are refused with a clear error...
    assert_eq!(alice.err(&["send", &bob.address, "while full"]), "storage_full");
    // ...while what was stored is still served.
    let report = bob.ok(&["sync"]);
    assert_eq!(common::texts(&report["messages"]), vec![pair(&alice, "before the disk filled")]);
    // Nothing was corrupted: after a restart on the full disk everything stored is still
    // served, and once the operator frees space the server takes messages again.
    server.restart(&["--registration", "open"]);
    let queued = carol.ok(&["sync"]);
    // Everything stored, and the group's opening welcome.
    assert_eq!(queued["processed"].as_u64(), Some(stored + 1), "carol's queue survived intact");
    std::fs::remove_file(&ballast).expect("free space");
    // The message refused while the disk was full waited in alice's outbox, and goes first.
    alice.send(&bob.address, "after space was freed");
    assert_eq!(bob.sync(), vec![pair(&alice, "while full"), pair(&alice, "after space was freed")]);
}

/// The server's resident memory, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn a_reader_that_never_reads_does_not_fill_server_memory() {
    use tungstenite::client::IntoClientRequest;
    let server = Server::start(&["--registration", "open"]);
    let (slow, slow_token, _) = api_device(&server, "slow@localhost", None);
    let (_, token, _) = api_device(&server, "fast@localhost", None);
    // 24 MiB waits in the slow device's queue.
    common::start_group(&server, &token, b"flood", &[slow], b"flood");
    let body = common::app_message(b"flood", 1, &vec![9u8; 256 * 1024]).to_string();
    for _ in 0..96 {
        assert_eq!(server.http("POST", "/v1/messages", None, &body).0, 200);
    }
    let before = rss_kib(server.pid());
    // Connect as often as the server allows, then never read.
    let connect = || {
        let mut request =
            format!("ws://{}/v1/ws", server.addr()).into_client_request().expect("request");
        request
            .headers_mut()
            .insert("Authorization", format!("Bearer {slow_token}").parse().expect("header"));
        tungstenite::connect(request)
    };
    let sockets: Vec<_> = (0..4).map(|_| connect().expect("websocket").0).collect();
    match connect() {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 429, "a fifth live socket"),
        other => panic!("a fifth live socket for one device was not refused: {other:?}"),
    }
    std::thread::sleep(Duration::from_secs(2));
    let during = rss_kib(server.pid());
    assert!(
        during < before + 12 * 1024,
        "server memory grew from {before} KiB to {during} KiB for four stalled readers"
    );
    drop(sockets);
    // The messages are still queued for when the device reads (in pages of bounded size),
    // in JSON or, asked for, in binary pages that hold the same.
    let (mut after, mut queued) = (0, 0);
    loop {
        let path = format!("/v1/queue?limit=500&after={after}");
        let (_, page) = server.http("GET", &path, Some(&slow_token), "");
        let messages = page["messages"].as_array().expect("messages");
        let media = sotto_proto::live::PAGE_MEDIA_TYPE;
        let (status, content_type, bytes) =
            common::get_bytes(server.addr(), &path, &slow_token, media);
        assert_eq!((status, content_type.as_str()), (200, media));
        let binary = sotto_proto::QueueResponse::from_binary(&bytes).expect("a binary page");
        let json: sotto_proto::QueueResponse = serde_json::from_value(page.clone()).expect("page");
        assert_eq!(binary, json, "the binary page holds what the JSON one does");
        queued += messages.len();
        after = messages.last().and_then(|m| m["seq"].as_u64()).unwrap_or(after);
        if page["more"] != true {
            break;
        }
    }
    assert_eq!(queued, 97, "96 messages and the group's opening welcome");
    // Any other Accept gets JSON.
    let (_, content_type, _) =
        common::get_bytes(server.addr(), "/v1/queue", &slow_token, "application/json, */*");
    assert_eq!(content_type, "application/json");
}
