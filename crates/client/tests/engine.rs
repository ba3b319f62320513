//! The engine driven without sockets: the real server's API runs in this process behind an
//! in-memory [`Transport`] whose script injects faults (the server down, lost answers, a
//! corrupted message, a dropped live connection), on a clock the test moves.

mod common;

use std::time::Duration;

use common::World;
use sotto_client::Error;
use sotto_client::engine::{Command, Engine, Event, Wants};
use sotto_client::transport::{Clock as _, LiveLink, Received};

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
            Received::Frame(frame) => {
                if let Some(ack) = engine.frame(frame) {
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
    engine.execute(Command::Send {
        to: Some(to.into()),
        group: None,
        text: text.into(),
        reply_to: None,
    })
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

#[test]
fn each_device_replaces_its_keys_in_every_chat_within_the_period() {
    let w = World::new();
    let mut alice = Engine::new(w.client("alice"));
    let mut bob = Engine::new(w.client("bob"));
    alice.tick();
    send(&mut alice, "bob@localhost", "before").expect("sent");
    let (link, _) = bob.tick();
    let mut link = link.expect("bob connects");
    assert_eq!(texts(&bob.take_events()), ["before"]);
    let leaf = |e: &Engine| e.client().own_leaf_key("bob@localhost").expect("leaf key");
    let first = leaf(&alice);

    // Within the period, nothing changes; the engine asks to be woken when it ends.
    let (_, Wants::WaitUntil(due)) = alice.tick() else { panic!("stopped") };
    assert_eq!(leaf(&alice), first);
    let period = sotto_client::DEFAULT_HEAL_INTERVAL_SECS * 1000;
    assert!(due > w.clock.now_ms() && due <= w.clock.now_ms() + period, "wakes for the update");

    // Once it is over, the tick commits a fresh leaf; bob follows, and the chat goes on.
    w.clock.advance(due - w.clock.now_ms());
    alice.tick();
    let second = leaf(&alice);
    assert_ne!(second, first, "the leaf key was replaced");
    pump(&mut bob, &mut *link);
    send(&mut alice, "bob@localhost", "after").expect("sent after the update");
    assert_eq!(texts(&pump(&mut bob, &mut *link)), ["after"]);
    // Not again before the next period.
    alice.tick();
    assert_eq!(leaf(&alice), second);

    // `heal` does it at once, and a shorter period is kept.
    let report = alice.execute(Command::Heal { every_secs: Some(3600) }).expect("heal");
    assert_eq!(report["updated"].as_array().map(Vec::len), Some(1), "{report}");
    assert_eq!(report["interval_secs"], 3600);
    assert_ne!(leaf(&alice), second);
    let refused = alice.execute(Command::Heal { every_secs: Some(60) }).expect_err("too often");
    assert_eq!(refused.code(), "invalid_input");
    pump(&mut bob, &mut *link);
    send(&mut alice, "bob@localhost", "still fine").expect("sent");
    assert_eq!(texts(&pump(&mut bob, &mut *link)), ["still fine"]);
}

/// A device registered and logged in straight through the API; its token.
fn api_token(w: &World, address: &str) -> String {
    use sotto_client::transport::{Body, Method, Request};
    use sotto_core::account::DeviceList;
    use sotto_core::auth;
    use sotto_core::mls::DeviceKey;
    use sotto_proto::{self as proto, Bytes};
    let call = |path: &str, token: Option<&str>, json: Vec<u8>| {
        let request = Request { method: Method::Post, path, token, body: Body::Json(&json) };
        let (status, body) = w.fake.raw(&request);
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
        body
    };
    let key = DeviceKey::generate().expect("key");
    let parsed: sotto_core::Address = address.parse().expect("address");
    let (list, _, _) =
        DeviceList::new_account(parsed.clone(), key.public(), 1_800_000_000).expect("list");
    let register = proto::RegisterRequest {
        address: address.into(),
        invite: None,
        device_key: Bytes(key.public().to_vec()),
        signature: Bytes(
            key.sign(&auth::registration_payload(&parsed, key.public())).expect("sign"),
        ),
        device_list: proto::SignedData { body: Bytes(list.body), signature: Bytes(list.signature) },
    };
    let body = call("/v1/register", None, serde_json::to_vec(&register).expect("json"));
    let id = serde_json::from_slice::<proto::RegisterResponse>(&body).expect("answer").device_id;
    let body = serde_json::to_vec(&proto::ChallengeRequest { device_id: id }).expect("json");
    let ch: proto::ChallengeResponse =
        serde_json::from_slice(&call("/v1/auth/challenge", None, body)).expect("challenge");
    let signature = key.sign(&auth::challenge_payload("localhost", id, &ch.nonce.0)).expect("sign");
    let body = serde_json::to_vec(&proto::TokenRequest {
        device_id: id,
        nonce: ch.nonce,
        signature: Bytes(signature),
    })
    .expect("json");
    serde_json::from_slice::<proto::TokenResponse>(&call("/v1/auth/token", None, body))
        .expect("token")
        .token
}

#[test]
fn a_page_of_references_too_heavy_to_hold_is_taken_in_parts_and_loses_nothing() {
    use sotto_client::transport::{Body, Method, Request};
    use sotto_core::reference;
    use sotto_proto as proto;
    use std::sync::{Arc, Mutex};
    let w = World::new();
    let mut alice = Engine::new(w.client("alice"));
    let mut bob = Engine::new(w.client("bob"));
    let (link, _) = bob.tick();
    let mut link = link.expect("bob connects");
    alice.tick();
    send(&mut alice, "bob@localhost", "first").expect("sent");
    assert_eq!(texts(&pump(&mut bob, &mut *link)), ["first"]);

    // Three 10 MB files, and a server that shows bob references to them in place of alice's
    // next three messages: a live page of three references, 30 MB, more than a page may hold.
    let token = api_token(&w, "mallory@localhost");
    let size = 10_000_000u64;
    let wires: Vec<Vec<u8>> = (0..3u8)
        .map(|n| {
            let new =
                proto::NewBlob { size: reference::sealed_len(size), expires_in: None, group: None };
            let new = serde_json::to_vec(&new).expect("json");
            let request = Request {
                method: Method::Post,
                path: "/v1/blobs",
                token: Some(&token),
                body: Body::Json(&new),
            };
            let (status, body) = w.fake.raw(&request);
            assert_eq!(status, 200);
            let blob: proto::BlobStatus = serde_json::from_slice(&body).expect("status");
            let id: [u8; 16] = blob.id.0.try_into().expect("16 bytes");
            let (sealed, r) = reference::seal(id, &vec![n; size as usize]).expect("seal");
            let path = format!("/v1/blobs/{}?offset=0", r.blob_hex());
            let put = Request {
                method: Method::Put,
                path: &path,
                token: Some(&token),
                body: Body::Bytes(&sealed),
            };
            assert_eq!(w.fake.raw(&put).0, 200);
            r.encode()
        })
        .collect();
    let swapped: Arc<Mutex<Vec<u64>>> = Arc::default();
    let seen = swapped.clone();
    w.fake.script().rewrite = Some(Box::new(move |path, status, body| {
        if !path.starts_with("/v1/queue?") || status != 200 {
            return;
        }
        let mut page: proto::QueueResponse = serde_json::from_slice(body).expect("page");
        let mut seen = seen.lock().expect("seen");
        for m in &mut page.messages {
            if seen.len() < 3 && !seen.contains(&m.seq) {
                seen.push(m.seq);
            }
            if let Some(i) = seen.iter().position(|s| *s == m.seq) {
                m.message.0 = wires[i].clone();
            }
        }
        *body = serde_json::to_vec(&page).expect("json");
    }));
    for text in ["second", "third", "fourth", "fifth"] {
        send(&mut alice, "bob@localhost", text).expect("sent");
    }

    // The live page is taken in parts, a reference at a time, in order, on the same
    // connection.
    let events = pump(&mut bob, &mut *link);
    assert_eq!(texts(&events), ["fifth"], "{events:?}");
    let failed: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Failure { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(
        failed,
        *swapped.lock().expect("seen"),
        "each reference failed alone, once: {events:?}"
    );
}
