//! Attacks by a registered user and on the server's process, each performed against the real
//! server: freezing someone else's group, amplifying a request into many queued copies,
//! reusing a submission id, and a log disk that is full.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{LiveSocket, Server, User, api_device, b64, code, live_socket, pair, read_within};
use serde_json::{Value, json};

fn device_id(user: &User) -> u64 {
    user.ok(&["whoami"])["device_id"].as_u64().expect("device id")
}

fn submit(server: &Server, token: &str, body: &Value) -> (u16, Value) {
    server.http("POST", "/v1/messages", Some(token), &body.to_string())
}

#[test]
fn a_stranger_cannot_freeze_or_write_into_a_group() {
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    let carol = User::register("carol", &server, "");
    let group =
        alice.ok(&["group", "create", "team", "--members", "bob@localhost,carol@localhost"]);
    let gid = common::unhex(group["id"].as_str().expect("group id"));
    alice.send_group("team", "before");
    assert_eq!(bob.sync(), vec![pair(&alice, "before")]);
    assert_eq!(carol.sync(), vec![pair(&alice, "before")]);
    let bob_dev = device_id(&bob);
    // mallory learned the group id (from a removed member, a log, a guess), but not the
    // group's credential, which only its members derive.
    let (_, token, _) = api_device(&server, "mallory@localhost", None);
    let guess = b64(&[7u8; 32]);
    let submit_as = |token: Option<&str>, body: &Value| {
        server.http("POST", "/v1/messages", token, &body.to_string())
    };

    // The junk commit that used to freeze the group: refused whatever epoch it names, with
    // her token or without, and no epoch is disclosed.
    let junk = |epoch: u64| {
        json!({"group_id": b64(&gid), "kind": "commit", "epoch": epoch, "credential": guess,
               "next_credential": guess, "delivery": {"message": b64(b"junk")}})
    };
    for epoch in 0..4 {
        for t in [None, Some(token.as_str())] {
            let (s, v) = submit_as(t, &junk(epoch));
            assert_eq!((s, code(&v)), (403, "not_member"), "{v}");
            assert_eq!(v["error"]["epoch"], Value::Null, "{v}");
        }
    }
    // Nor may she queue application messages or proposals into the group, or welcome
    // herself in with a commit.
    for kind in ["application", "proposal"] {
        let body = json!({"group_id": b64(&gid), "kind": kind, "epoch": 1, "credential": guess,
                          "delivery": {"message": b64(b"spam")}});
        let (s, v) = submit_as(None, &body);
        assert_eq!((s, code(&v)), (403, "not_member"), "{kind}: {v}");
    }
    let body = json!({"group_id": b64(&gid), "kind": "commit", "epoch": 1, "credential": guess,
                      "next_credential": guess, "delivery": {"message": b64(b"c")},
                      "welcome": {"recipients": [bob_dev], "message": b64(b"w")}});
    assert_eq!(code(&submit_as(Some(&token), &body).1), "not_member");
    // A submission without a credential, or that names its own recipients, is malformed.
    let bare = json!({"group_id": b64(&gid), "kind": "application", "epoch": 1,
                      "delivery": {"message": b64(b"x")}});
    assert_eq!(code(&submit_as(None, &bare).1), "bad_request");
    let named = json!({"group_id": b64(&gid), "kind": "application", "epoch": 1,
                       "credential": guess,
                       "delivery": {"recipients": [bob_dev], "message": b64(b"x")}});
    assert_eq!(code(&submit_as(None, &named).1), "bad_request");

    // The group carries on: sends, adds and removals all work.
    alice.send_group("team", "after");
    assert_eq!(bob.sync(), vec![pair(&alice, "after")]);
    // carol is removed while she is offline. What she sends next is made with the credential
    // of an epoch the group has left: the server takes none of it, her client catches up,
    // learns she was removed, and the others never see it.
    alice.ok(&["group", "remove", "team", "carol@localhost"]);
    bob.send_group("team", "without carol");
    assert_eq!(alice.sync(), vec![pair(&bob, "without carol")]);
    let refused = carol.run(&["send", "team", "let me back in"]);
    assert!(!refused.status.success(), "a removed member's message went out");
    assert!(
        carol.history("team").iter().all(|(_, text)| text != "without carol"),
        "carol read a message sent after her removal"
    );
    assert_eq!(alice.sync(), vec![]);
    assert_eq!(bob.sync(), vec![]);
}

/// A sealed submission to a group made through the API: a member that was removed knows
/// only an old credential and cannot submit, and someone who never was a member cannot
/// either, with or without a device token.
#[test]
fn removed_devices_and_strangers_cannot_submit() {
    let server = Server::start(&["--registration", "open"]);
    let (a, a_token, _) = api_device(&server, "ann@localhost", None);
    let (b, b_token, _) = api_device(&server, "ben@localhost", None);
    let (_, m_token, _) = api_device(&server, "mal@localhost", None);
    let g = b"sealed-group";
    common::start_group(&server, &a_token, g, &[b], b"w");
    // Both members' messages go to the whole roster, the sender's device included.
    assert_eq!(submit_as(&server, None, &common::app_message(g, 1, b"hi")).0, 200);
    let queued = |token: &str| {
        let (s, v) = server.http("GET", "/v1/queue", Some(token), "");
        assert_eq!(s, 200, "{v}");
        v["messages"].as_array().map_or(0, Vec::len)
    };
    assert_eq!((queued(&a_token), queued(&b_token)), (2, 2), "commit or welcome, then hi");
    // ann removes ben: the commit brings the next epoch's credential.
    let remove = json!({"group_id": b64(g), "kind": "commit", "epoch": 1,
                        "credential": common::credential(g, 1),
                        "next_credential": common::credential(g, 2),
                        "removed": [b], "delivery": {"message": b64(b"remove ben")}});
    assert_eq!(submit_as(&server, None, &remove).0, 200);
    // ben knows only epoch 1's credential: told to catch up, never taken, with a token or not.
    for token in [None, Some(b_token.as_str())] {
        for epoch in [1, 2] {
            let mut body = common::app_message(g, epoch, b"still here?");
            body["credential"] = json!(common::credential(g, 1));
            let (s, v) = submit_as(&server, token, &body);
            assert_eq!((s, code(&v)), (409, "stale_epoch"), "{v}");
        }
    }
    // Someone who never was a member is refused, even naming ann's device as a roster.
    let guess = json!({"group_id": b64(g), "kind": "application", "epoch": 2,
                       "credential": b64(&[1u8; 32]), "roster": [a],
                       "delivery": {"message": b64(b"spam")}});
    for token in [None, Some(m_token.as_str())] {
        let (s, v) = submit_as(&server, token, &guess);
        assert_eq!((s, code(&v)), (403, "not_member"), "{v}");
    }
    // ann's messages now reach ann alone: ben got the removal, and nothing after it.
    assert_eq!(submit_as(&server, None, &common::app_message(g, 2, b"just me")).0, 200);
    assert_eq!(queued(&b_token), 3, "ben: welcome, hi, his removal");
    assert_eq!(queued(&a_token), 4, "ann: her commit, hi, the removal, just me");
}

fn submit_as(server: &Server, token: Option<&str>, body: &Value) -> (u16, Value) {
    server.http("POST", "/v1/messages", token, &body.to_string())
}

#[test]
fn recipient_lists_cannot_amplify_a_request() {
    // 16 KiB/s, so a device may queue bursts of 1 MiB.
    let server = Server::start(&["--registration", "open", "--submit-rate", "16K"]);
    let bob = User::register("bob", &server, "");
    let bob_dev = device_id(&bob);
    let (_, token, _) = api_device(&server, "mallory@localhost", None);
    // A welcome naming one victim ten thousand times: refused outright.
    let welcome = json!({"group_id": b64(b"flood"), "kind": "commit", "epoch": 0,
                         "credential": common::credential(b"flood", 0),
                         "next_credential": common::credential(b"flood", 1),
                         "delivery": {"message": b64(b"c")},
                         "welcome": {"recipients": vec![bob_dev; 10_000], "message": b64(b"w")}});
    let (s, v) = submit(&server, &token, &welcome);
    assert_eq!((s, code(&v)), (400, "bad_request"), "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains("twice")), "{v}");
    common::start_group(&server, &token, b"flood", &[bob_dev], b"w");
    let app = |size: usize| common::app_message(b"flood", 1, &vec![7u8; size]);
    // A submission that would store more than a burst allows: refused whole.
    let (s, v) = submit(&server, &token, &app(1536 * 1024));
    assert_eq!((s, code(&v)), (413, "too_large"), "{v}");
    // Within the group's burst it is taken, a copy for every device in the roster (mallory's
    // and bob's) counted, then the group must wait.
    let mut accepted = 0;
    let refusal = loop {
        let (s, v) = submit(&server, &token, &app(256 * 1024));
        if s != 200 {
            break (s, v);
        }
        accepted += 1;
        assert!(accepted < 10, "the byte rate never stopped the sender");
    };
    assert_eq!((refusal.0, code(&refusal.1)), (429, "rate_limited"), "{:?}", refusal.1);
    assert!(
        (2..=3).contains(&accepted),
        "{accepted} messages of 256 KiB, two copies each, fitted a 1 MiB burst"
    );
    // The victim still reads everything that was taken (and the group's welcome).
    let report = bob.ok(&["sync"]);
    assert_eq!(report["processed"].as_u64(), Some(accepted + 1), "{report}");
}

#[test]
fn a_submission_id_stands_for_one_submission() {
    let server = Server::start(&["--registration", "open"]);
    let bob = User::register("bob", &server, "");
    let bob_dev = device_id(&bob);
    let (_, token, _) = api_device(&server, "mallory@localhost", None);
    common::start_group(&server, &token, b"ids", &[bob_dev], b"w");
    let app = |text: &[u8]| {
        let mut body = common::app_message(b"ids", 1, text);
        body["submission_id"] = json!(b64(b"same id"));
        body
    };
    let (s, first) = submit(&server, &token, &app(b"first"));
    assert_eq!(s, 200, "{first}");
    let (s, again) = submit(&server, &token, &app(b"first"));
    assert_eq!((s, &again), (200, &first), "a repeat gets the first answer");
    let (s, v) = submit(&server, &token, &app(b"other"));
    assert_eq!((s, code(&v)), (409, "submission_conflict"), "{v}");
    let report = bob.ok(&["sync"]);
    assert_eq!(report["processed"].as_u64(), Some(2), "the welcome and one copy: {report}");
}

#[test]
fn a_full_log_disk_does_not_stop_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    // Standard output and error both go to a device that is always full.
    let start = || {
        Command::new(common::SERVER)
            .arg("--data")
            .arg(&data)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--registration", "open"])
            .env("SOTTO_LOG", "debug")
            .stdout(Stdio::from(std::fs::File::create("/dev/full").expect("/dev/full")))
            .stderr(Stdio::from(std::fs::File::create("/dev/full").expect("/dev/full")))
            .spawn()
            .expect("start the server")
    };
    let wait_up = || {
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the server did not start with its logs on a full disk");
    };
    let mut server = start();
    wait_up();
    let register = |name: &str| {
        let user = User::new(name);
        user.ok(&["register", &user.address, "--server", &url]);
        user
    };
    let alice = register("alice");
    let bob = register("bob");
    alice.send(&bob.address, "logged nowhere");
    assert_eq!(bob.sync(), vec![pair(&alice, "logged nowhere")]);
    assert!(server.try_wait().expect("wait").is_none(), "the server is still running");
    let _ = server.kill();
    let _ = server.wait();
    // It also starts again while the disk is still full.
    let mut server = start();
    wait_up();
    alice.send(&bob.address, "after a restart");
    assert_eq!(bob.sync(), vec![pair(&alice, "after a restart")]);
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn the_server_keeps_its_files_to_itself() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    let file = alice.home.with_file_name("note.txt");
    std::fs::write(&file, "an attachment").expect("file");
    alice.ok(&["send-file", &bob.address, file.to_str().expect("path")]);
    assert!(server.terminate(Duration::from_secs(20)), "clean stop");
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode()
            & 0o777
    };
    assert_eq!(mode(&server.data), 0o700);
    assert_eq!(mode(&server.data.join("blobs")), 0o700);
    let mut checked = 0;
    for dir in [server.data.clone(), server.data.join("blobs")] {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_file() {
                assert_eq!(mode(&path), 0o600, "{} is readable by others", path.display());
                checked += 1;
            }
        }
    }
    // The databases, the signing, VRF and session keys, and one attachment at least.
    assert!(checked >= 6, "only {checked} files");
}

/// Reads until the server closes the connection; true if it did within `within`.
fn closed_within(stream: &mut std::net::TcpStream, within: Duration) -> bool {
    use std::io::Read as _;
    stream.set_read_timeout(Some(within)).expect("timeout");
    let mut buf = [0u8; 4096];
    let started = std::time::Instant::now();
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return started.elapsed() < within,
        }
    }
}

#[test]
fn slow_and_idle_connections_do_not_crowd_out_clients() {
    use std::io::Write as _;
    let server = Server::start(&[
        "--registration",
        "open",
        "--max-connections",
        "40",
        "--max-connections-per-ip",
        "8",
        "--header-timeout",
        "1s",
        "--idle-timeout",
        "2s",
    ]);
    let open = || std::net::TcpStream::connect(server.addr()).expect("connect");
    // Eight slowloris connections: headers that never end.
    let mut slow: Vec<_> = (0..8)
        .map(|_| {
            let mut s = open();
            s.write_all(b"GET /v1/info HTTP/1.1\r\nHost: x\r\n").expect("write");
            s
        })
        .collect();
    // A ninth from the same address is closed at once.
    let mut ninth = open();
    assert!(closed_within(&mut ninth, Duration::from_secs(2)), "the per-address cap held");
    // The slow ones are cut off once their headers are late.
    for s in &mut slow {
        assert!(closed_within(s, Duration::from_secs(4)), "a slow header was never timed out");
    }
    // A body announced large and never sent, and a connection that says nothing: both are
    // closed by the idle timeout.
    let mut partial = open();
    partial
        .write_all(b"POST /v1/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
        .expect("write");
    let mut silent = open();
    assert!(closed_within(&mut partial, Duration::from_secs(5)), "a stalled body held on");
    assert!(closed_within(&mut silent, Duration::from_secs(5)), "a silent socket held on");
    // Everyone else is served.
    let (s, v) = server.http("GET", "/v1/info", None, "");
    assert_eq!(s, 200, "{v}");
    // Without a token, a body is small: a registration of 200 KiB is refused, not buffered.
    let big = format!(r#"{{"address": "{}"}}"#, "a".repeat(200 * 1024));
    let (s, v) = server.http("POST", "/v1/register", None, &big);
    assert_eq!((s, code(&v)), (413, "too_large"), "{v}");
    // Real clients carry on.
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    alice.send(&bob.address, "through");
    assert_eq!(bob.sync(), vec![pair(&alice, "through")]);
}

#[test]
fn a_commit_may_not_remove_a_device_twice() {
    let server = Server::start(&["--registration", "open"]);
    let (_, token, _) = api_device(&server, "mallory@localhost", None);
    let (b, _, _) = api_device(&server, "accomplice@localhost", None);
    common::start_group(&server, &token, b"g", &[b], b"w");
    let commit = |removed: Vec<u64>| {
        json!({"group_id": b64(b"g"), "kind": "commit", "epoch": 1,
               "credential": common::credential(b"g", 1),
               "next_credential": common::credential(b"g", 2),
               "delivery": {"message": b64(b"c")}, "removed": removed})
    };
    let (s, v) = submit(&server, &token, &commit(vec![b, b]));
    assert_eq!((s, code(&v)), (400, "bad_request"), "{v}");
    let (s, v) = submit(&server, &token, &commit(vec![b]));
    assert_eq!(s, 200, "{v}");
}

#[test]
fn a_connection_that_never_speaks_is_closed_like_slow_headers() {
    let server = Server::start(&["--header-timeout", "1s", "--idle-timeout", "60s"]);
    let mut silent = std::net::TcpStream::connect(server.addr()).expect("connect");
    let started = std::time::Instant::now();
    assert!(closed_within(&mut silent, Duration::from_secs(10)), "a silent socket held on");
    assert!(started.elapsed() < Duration::from_secs(5), "closed after {:?}", started.elapsed());
}

#[test]
fn a_trusted_proxy_names_the_client_for_per_address_limits() {
    use std::io::{Read as _, Write as _};
    let lookup = |server: &Server, forwarded: &str| {
        let mut s = std::net::TcpStream::connect(server.addr()).expect("connect");
        write!(
            s,
            "GET /v1/kt/lookup/nobody@localhost HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             X-Forwarded-For: {forwarded}\r\n\r\n"
        )
        .expect("write");
        let mut raw = String::new();
        s.read_to_string(&mut raw).expect("read");
        raw.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok()).expect("status")
    };
    // Behind a trusted proxy, each client has its own allowance (two an hour here)...
    let server = Server::start(&["--registration-rate", "2", "--trusted-proxy", "127.0.0.1"]);
    assert_ne!(lookup(&server, "10.0.0.1"), 429);
    assert_ne!(lookup(&server, "10.0.0.1"), 429);
    assert_eq!(lookup(&server, "10.0.0.1"), 429);
    assert_ne!(lookup(&server, "10.0.0.2"), 429, "another client behind the same proxy");
    // ...and a client cannot pose as another by adding its own header in front.
    assert_eq!(lookup(&server, "10.0.0.2, 10.0.0.1"), 429);
    // Without the setting the header is ignored: everyone is the proxy's address.
    let server = Server::start(&["--registration-rate", "2"]);
    assert_ne!(lookup(&server, "10.0.0.1"), 429);
    assert_ne!(lookup(&server, "10.0.0.2"), 429);
    assert_eq!(lookup(&server, "10.0.0.3"), 429);
}

#[test]
fn live_sockets_that_never_answer_are_closed_and_free_their_place() {
    let server = Server::start(&["--registration", "open", "--idle-timeout", "3s"]);
    let (_, token, _) = api_device(&server, "silent@localhost", None);
    let connect = || live_socket(server.addr(), &token, false);
    // Four sockets (the most a device may hold) that never read, so never answer a ping.
    let silent: Vec<_> = (0..4).map(|_| connect().expect("websocket").0).collect();
    assert!(connect().is_err(), "a fifth is refused while four are held");
    std::thread::sleep(Duration::from_secs(8));
    // The server gave up on them (its pings went unanswered), so their places are free.
    let fresh = connect().expect("a new socket once the silent ones are closed");
    drop((silent, fresh));
}

/// Sockets of the server on `port` in state FIN_WAIT1: closed by the server, their unsent data
/// still held by the kernel.
fn closing_sockets(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            fields.len() > 3 && fields[1].ends_with(&local) && fields[3] == "04"
        })
        .count()
}

#[test]
fn a_reader_given_up_on_is_reset_not_left_to_the_kernel() {
    let server = Server::start(&["--registration", "open", "--idle-timeout", "3s"]);
    let (slow, slow_token, _) = api_device(&server, "stalled@localhost", None);
    let (_, token, _) = api_device(&server, "sender@localhost", None);
    common::start_group(&server, &token, b"flood", &[slow], b"w");
    let body = common::app_message(b"flood", 1, &vec![9u8; 256 * 1024]).to_string();
    for _ in 0..64 {
        assert_eq!(server.http("POST", "/v1/messages", None, &body).0, 200);
    }
    // Connect, never read, keep the socket open: the server's sends stall, it gives up.
    let (socket, _) = live_socket(server.addr(), &slow_token, false).expect("websocket");
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        closing_sockets(server.port()),
        0,
        "a connection the server gave up on still holds its unsent data in the kernel"
    );
    drop(socket);
}

#[test]
fn bodies_announced_without_a_token_cannot_hold_up_members() {
    use std::io::Write as _;
    let server = Server::start(&["--registration", "open", "--max-connections-per-ip", "2000"]);
    let (bob, _, _) = api_device(&server, "bob@localhost", None);
    let (_, token, _) = api_device(&server, "alice@localhost", None);
    common::start_group(&server, &token, b"g", &[bob], b"w");
    // 520 connections without a token each announce most of a link request and send none
    // of it: together more than every budget for bodies in flight.
    let held: Vec<_> = (0..520)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(server.addr()).expect("connect");
            s.write_all(
                b"POST /v1/links HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 131000\r\n\r\n",
            )
            .expect("write");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // Members still log in and send, large messages included, without waiting.
    let started = std::time::Instant::now();
    let (_, other, _) = api_device(&server, "carol@localhost", None);
    let large = common::app_message(b"g", 1, &vec![1u8; 100_000]);
    let answer = server.http_within(
        "POST",
        "/v1/messages",
        None,
        &large.to_string(),
        Duration::from_secs(10),
    );
    assert_eq!(answer.map(|(s, _)| s), Some(200), "a member's large message was held up");
    assert!(!other.is_empty());
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    drop(held);
}

/// Hostile frames on a live connection of version 2 (binary pages): frames that are not what
/// the protocol allows are answered with a `bad_request` error frame and change nothing; an
/// acknowledgement far past what was delivered removes only the sender's own queue; the
/// connection stays usable; and the 64 KiB frame limit closes a connection that sends more.
#[test]
fn malformed_binary_frames_are_refused_and_change_nothing() {
    use sotto_proto::live::{Down, PROTOCOL_V2, Up};
    use tungstenite::Message;

    let server = Server::start(&["--registration", "open"]);
    let (alice, alice_token, _) = api_device(&server, "alice@localhost", None);
    let (bob, bob_token, _) = api_device(&server, "bob@localhost", None);
    let group = b"hostile-frames".to_vec();
    common::start_group(&server, &alice_token, &group, &[alice, bob], b"welcome");
    let connect = |token: &str| {
        let (ws, response) = live_socket(server.addr(), token, true).expect("websocket");
        assert_eq!(response.headers()["sec-websocket-protocol"], PROTOCOL_V2);
        read_within(&ws, Duration::from_secs(10));
        ws
    };
    let next = |ws: &mut LiveSocket| loop {
        match ws.read().expect("a frame") {
            Message::Binary(b) => return Down::from_binary(&b).expect("a well-formed frame"),
            Message::Text(t) => panic!("a version 2 connection sent text: {t}"),
            _ => {}
        }
    };
    for text in [&b"one"[..], b"two"] {
        let (status, v) = submit_as(&server, None, &common::app_message(&group, 1, text));
        assert_eq!(status, 200, "{v}");
    }
    // Bob's queue holds the welcome and both messages.
    let mut ws = connect(&bob_token);
    let Down::Messages(page) = next(&mut ws) else { panic!("no page first") };
    assert_eq!(page.len(), 3, "what was queued comes in one page");
    for bad in
        [vec![], vec![0x09], vec![0x01, 0, 0], vec![0x01; 10], b"{\"type\":\"ack\"}".to_vec()]
    {
        ws.send(Message::Binary(bad.clone().into())).expect("send");
        match next(&mut ws) {
            Down::Error(e) => {
                assert_eq!(code(&serde_json::to_value(&e).expect("json")), "bad_request", "{bad:?}")
            }
            other => panic!("{bad:?} was answered with {other:?}"),
        }
    }
    let (_, queue) = server.http("GET", "/v1/queue", Some(&bob_token), "");
    assert_eq!(queue["messages"].as_array().map(Vec::len), Some(3), "bad frames removed nothing");
    // An acknowledgement far past the end removes bob's queue and nobody else's.
    let ack = Up::Ack(sotto_proto::AckRequest { up_to: u64::MAX }).to_binary();
    ws.send(Message::Binary(ack.into())).expect("send");
    match next(&mut ws) {
        Down::Acked(a) => assert_eq!((a.up_to, a.removed), (u64::MAX, 3)),
        other => panic!("the acknowledgement was answered with {other:?}"),
    }
    let (_, theirs) = server.http("GET", "/v1/queue", Some(&alice_token), "");
    // (Alice holds the commit too, and a welcome: start_group welcomes every member.)
    assert_eq!(theirs["messages"].as_array().map(Vec::len), Some(4), "alice's copies are hers");
    // A frame over the limit ends the connection rather than being buffered.
    let _ = ws.send(Message::Binary(vec![0x01; 70 * 1024].into()));
    let closed = (0..20).any(|_| matches!(ws.read(), Err(_) | Ok(Message::Close(_))));
    assert!(closed, "a 70 KiB frame was taken");
    // The server goes on serving the device.
    let mut again = connect(&bob_token);
    let (status, v) = submit_as(&server, None, &common::app_message(&group, 1, b"after"));
    assert_eq!(status, 200, "{v}");
    let Down::Messages(page) = next(&mut again) else { panic!("no page after reconnecting") };
    assert_eq!(page[0].message.0, b"after");
}
