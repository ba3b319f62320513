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
