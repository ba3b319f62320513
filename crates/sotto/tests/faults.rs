//! Faults: the server killed with SIGKILL while clients send and while a live connection
//! takes pages of messages, clients killed mid-sync, and members committing to one group at
//! once. Nothing acknowledged may be lost or doubled, and
//! every member must see the same order.
//!
//! Sizes come from the environment so the long versions run by hand:
//! `SOTTO_FAULT_MESSAGES=3000 SOTTO_FAULT_KILLS=40 cargo test --release -p sotto --test faults`.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Server, User, api_device, app_message, b64, http_at, pair, start_group};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Deterministic pseudo-random pauses, so a failure can be replayed.
struct Pauses(u64);
impl Pauses {
    fn next_ms(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + self.0 % (hi - lo)
    }
}

/// Syncs until a sync succeeds and brings nothing new.
fn drain(u: &User) {
    for _ in 0..50 {
        let out = u.run(&["sync"]);
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
            if v["processed"] == 0 {
                return;
            }
        } else {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    panic!("{} never finished syncing", u.address);
}

#[test]
fn server_killed_repeatedly_while_clients_send() {
    let per_sender = env("SOTTO_FAULT_MESSAGES", 700);
    let kills = env("SOTTO_FAULT_KILLS", 12);
    let mut server = Server::start(&["--registration", "open"]);
    let users: Vec<Arc<User>> = ["alice", "bob", "carol", "olga"]
        .iter()
        .map(|n| Arc::new(User::register(n, &server, "")))
        .collect();
    let members = "bob@localhost,carol@localhost,olga@localhost";
    let id = users[0].ok(&["group", "create", "durable", "--members", members])["id"]
        .as_str()
        .expect("id")
        .to_string();
    for u in &users[1..] {
        drain(u);
    }

    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = users[..3]
        .iter()
        .map(|u| {
            let (u, id, acked) = (u.clone(), id.clone(), acked.clone());
            std::thread::spawn(move || {
                for i in 0..per_sender {
                    let body = format!("{}-{i}", u.address);
                    if u.run(&["send", "--group", &id, &body]).status.success() {
                        acked.lock().expect("lock").push((u.address.clone(), body));
                    }
                    if i % 25 == 0 {
                        let _ = u.run(&["sync"]);
                    }
                }
            })
        })
        .collect();
    // olga only reads, under the same storm.
    let reader = {
        let (olga, done) = (users[3].clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let _ = olga.run(&["sync"]);
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };
    let mut pauses = Pauses(0x9e37_79b9_7f4a_7c15);
    for _ in 0..kills {
        std::thread::sleep(Duration::from_millis(pauses.next_ms(150, 900)));
        server.kill();
        std::thread::sleep(Duration::from_millis(pauses.next_ms(0, 300)));
        server.restart(&["--registration", "open"]);
    }
    for s in senders {
        s.join().expect("sender");
    }
    done.store(true, Ordering::Relaxed);
    reader.join().expect("reader");
    for u in &users {
        drain(u);
    }

    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() >= per_sender,
        "many sends should succeed despite the kills ({} of {})",
        acked.len(),
        per_sender * 3
    );
    let histories: Vec<Vec<(String, String)>> = users.iter().map(|u| u.history(&id)).collect();
    for (u, h) in users.iter().zip(&histories) {
        // No duplicates at all.
        let mut counts: HashMap<&(String, String), usize> = HashMap::new();
        for m in h {
            *counts.entry(m).or_default() += 1;
        }
        if let Some((m, n)) = counts.iter().find(|(_, n)| **n > 1) {
            panic!("{} holds {m:?} {n} times", u.address);
        }
        // Every acknowledged message is there.
        for m in &acked {
            assert!(counts.contains_key(m), "{} lacks acknowledged {m:?}", u.address);
        }
    }
    // Everyone saw others' messages in the server's order: each sender's view of the other
    // senders' messages is the same sequence as olga's.
    for (i, u) in users[..3].iter().enumerate() {
        let others = |h: &Vec<(String, String)>| -> Vec<(String, String)> {
            h.iter().filter(|(s, _)| s != &u.address).cloned().collect()
        };
        assert_eq!(others(&histories[i]), others(&histories[3]), "order seen by {}", u.address);
    }
    eprintln!(
        "{} kills; {} of {} sends acknowledged; {} messages in every history",
        kills,
        acked.len(),
        per_sender * 3,
        histories[3].len()
    );
}

/// What a reader of the live connection (version 2) saw.
#[derive(Default)]
struct Received {
    /// Payloads of the messages processed, in order, each once per new seq.
    payloads: Vec<Vec<u8>>,
    /// The largest page that came in one frame.
    largest_page: usize,
    /// Connections made.
    connections: usize,
}

/// Reads `token`'s queue over live connections speaking version 2, reconnecting whenever the
/// server goes away, as a client does: each page is processed (what a seq already processed
/// is skipped) and then acknowledged with one frame. Returns once `want` messages starting
/// with `m-` were processed and their acknowledgement was applied, or at `deadline`.
fn read_pages(
    server_addr: &str,
    token: &str,
    want: usize,
    deadline: std::time::Instant,
) -> Received {
    use sotto_proto::live::{Down, Up};
    use tungstenite::Message;

    let mut seen = Received::default();
    let mut last = 0u64;
    let mut counted = 0usize;
    while std::time::Instant::now() < deadline {
        let Ok((mut ws, _)) = common::live_socket(server_addr, token, true) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        common::read_within(&ws, Duration::from_secs(2));
        seen.connections += 1;
        while std::time::Instant::now() < deadline {
            let bytes = match ws.read() {
                Ok(Message::Binary(b)) => b,
                Ok(Message::Text(t)) => panic!("a version 2 connection sent text: {t}"),
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            match Down::from_binary(&bytes).expect("a well-formed frame") {
                Down::Messages(page) => {
                    seen.largest_page = seen.largest_page.max(page.len());
                    for m in &page {
                        if m.seq <= last {
                            continue; // Delivered again after a crash: processed already.
                        }
                        last = m.seq;
                        if m.message.0.starts_with(b"m-") {
                            counted += 1;
                            seen.payloads.push(m.message.0.clone());
                        }
                    }
                    let ack = Up::Ack(sotto_proto::AckRequest { up_to: last }).to_binary();
                    if ws.send(Message::Binary(ack.into())).is_err() {
                        break;
                    }
                }
                Down::Acked(a) if counted >= want && a.up_to >= last => return seen,
                Down::Acked(_) => {}
                Down::Error(e) => panic!("the server refused: {}", e.error.message),
            }
        }
    }
    seen
}

/// Version 2 of the live connection under SIGKILL: the server is killed again and again
/// while a device receives pages of messages and acknowledges each page with one frame, and
/// a sender keeps submitting. Every accepted message arrives exactly once (a reader skips
/// seqs it processed, as clients do), and the queue ends empty: no acknowledgement removed
/// what was not delivered, and none was lost.
#[test]
fn server_killed_during_batched_deliveries_and_acknowledgements() {
    let total = env("SOTTO_FAULT_MESSAGES", 700) * 2;
    let kills = env("SOTTO_FAULT_KILLS", 12) / 2;
    let mut server = Server::start(&["--registration", "open"]);
    let (sender, sender_token, _) = api_device(&server, "alice@localhost", None);
    let (reader, reader_token, _) = api_device(&server, "bob@localhost", None);
    let group = b"batched-pages".to_vec();
    start_group(&server, &sender_token, &group, &[sender, reader], b"welcome");

    let addr = server.addr().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    let receiving = {
        let (addr, token) = (addr.clone(), reader_token.clone());
        std::thread::spawn(move || read_pages(&addr, &token, total, deadline))
    };
    // Two senders; each submission is retried with its id until the server takes it, as the
    // outbox does, so the server takes every message exactly once.
    let sending: Vec<_> = (0..2)
        .map(|s| {
            let (addr, group) = (addr.clone(), group.clone());
            std::thread::spawn(move || {
                for i in (s..total).step_by(2) {
                    let mut body = app_message(&group, 1, format!("m-{i}").as_bytes());
                    body["submission_id"] = b64(&(i as u128).to_be_bytes()).into();
                    let body = body.to_string();
                    loop {
                        let request = ("POST", "/v1/messages");
                        let answer = http_at(&addr, request, None, &body, Duration::from_secs(5));
                        match answer {
                            Some((200, _)) => {
                                // Paced, so that the kills find messages on their way.
                                std::thread::sleep(Duration::from_millis(3));
                                break;
                            }
                            Some((429 | 503, _)) | None => {
                                std::thread::sleep(Duration::from_millis(20))
                            }
                            Some((status, v)) => panic!("submission {i}: {status} {v}"),
                        }
                    }
                }
            })
        })
        .collect();
    // Kills land while messages flow: they go on until the senders are done, at least
    // `kills` times.
    let mut pauses = Pauses(0x2545_f491_4f6c_dd1d);
    let mut killed = 0;
    while killed < kills || !sending.iter().all(|s| s.is_finished()) {
        std::thread::sleep(Duration::from_millis(pauses.next_ms(200, 700)));
        server.kill();
        killed += 1;
        std::thread::sleep(Duration::from_millis(pauses.next_ms(0, 300)));
        server.restart(&["--registration", "open"]);
    }
    for s in sending {
        s.join().expect("sender");
    }
    let seen = receiving.join().expect("reader");

    let mut counts: HashMap<&[u8], usize> = HashMap::new();
    for p in &seen.payloads {
        *counts.entry(p).or_default() += 1;
    }
    if let Some((p, n)) = counts.iter().find(|(_, n)| **n > 1) {
        panic!("{} processed {n} times", String::from_utf8_lossy(p));
    }
    let missing: Vec<usize> =
        (0..total).filter(|i| !counts.contains_key(format!("m-{i}").as_bytes())).collect();
    assert!(missing.is_empty(), "{} of {total} never arrived: {missing:?}", missing.len());
    assert!(seen.largest_page > 1, "no page held more than one message");
    assert!(seen.connections > killed / 2, "{} connections for {killed} kills", seen.connections);
    let (status, queue) = server.http("GET", "/v1/queue", Some(&reader_token), "");
    assert_eq!(status, 200, "{queue}");
    assert_eq!(queue["messages"], serde_json::json!([]), "acknowledged messages remain queued");
    eprintln!(
        "{killed} kills; {total} messages over {} connections, pages of up to {}",
        seen.connections, seen.largest_page
    );
}

#[test]
fn client_killed_mid_sync_loses_nothing() {
    let count = env("SOTTO_FAULT_BACKLOG", 150);
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    let mut sent = Vec::new();
    for i in 0..count {
        let body = format!("backlog-{i}");
        alice.send(&bob.address, &body);
        sent.push(pair(&alice, &body));
    }
    let mut pauses = Pauses(7);
    let mut kills = 0;
    for _ in 0..100 {
        let mut child = common::client()
            .arg("--home")
            .arg(&bob.home)
            .args(["--json", "sync"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("sync");
        std::thread::sleep(Duration::from_millis(pauses.next_ms(5, 200)));
        match child.try_wait().expect("wait") {
            Some(status) if status.success() => break,
            Some(_) => {}
            None => {
                child.kill().expect("kill");
                child.wait().expect("reap");
                kills += 1;
            }
        }
    }
    drain(&bob);
    assert!(kills > 0, "the sync was never interrupted; make the backlog larger");
    assert_eq!(bob.history(&alice.address), sent, "after {kills} kills");
}

#[test]
fn concurrent_committers_converge() {
    let server = Server::start(&["--registration", "open"]);
    let names = ["alice", "bob", "carol", "dave"];
    let newcomers = ["erin", "frank", "grace", "heidi"];
    let members: Vec<Arc<User>> =
        names.iter().map(|n| Arc::new(User::register(n, &server, ""))).collect();
    let joiners: Vec<User> = newcomers.iter().map(|n| User::register(n, &server, "")).collect();
    let id = members[0].ok(&[
        "group",
        "create",
        "race",
        "--members",
        "bob@localhost,carol@localhost,dave@localhost",
    ])["id"]
        .as_str()
        .expect("id")
        .to_string();
    for m in &members[1..] {
        drain(m);
    }
    // Everyone commits at once: each adds a newcomer, then writes.
    let threads: Vec<_> = members
        .iter()
        .zip(newcomers)
        .map(|(m, newcomer)| {
            let (m, id) = (m.clone(), id.clone());
            std::thread::spawn(move || {
                m.ok(&["group", "add", &id, &format!("{newcomer}@localhost")]);
                m.ok(&["send", "--group", &id, &format!("{} was here", m.address)]);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("committer");
    }
    let everyone: Vec<&User> = members.iter().map(|m| m.as_ref()).chain(joiners.iter()).collect();
    for u in &everyone {
        drain(u);
    }
    let mut expected: Vec<String> =
        names.iter().chain(newcomers.iter()).map(|n| format!("{n}@localhost")).collect();
    expected.sort();
    for u in &everyone {
        let chats = u.ok(&["chats"]);
        let chat =
            chats.as_array().expect("chats").iter().find(|c| c["id"] == id.as_str()).expect("chat");
        assert_eq!(chat["members"], serde_json::json!(expected), "{}'s view", u.address);
    }
    // The group did not fork: a message from anyone reaches everyone.
    members[2].ok(&["send", "--group", &id, "after the race"]);
    for u in &everyone {
        if u.address != members[2].address {
            assert_eq!(u.sync(), vec![pair(&members[2], "after the race")], "{}", u.address);
        }
    }
}
