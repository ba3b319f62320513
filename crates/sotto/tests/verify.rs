//! Safety numbers and verified contacts, with the real server and CLI.

mod common;

use common::{Server, User, pair};
use serde_json::Value;

fn number(v: &Value) -> String {
    v["safety_number"].as_str().expect("safety number").to_string()
}

#[test]
fn safety_numbers_match_on_both_sides_and_a_verified_key_change_blocks_sending() {
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let (bob, bob_recovery) = User::register_with_recovery("bob", &server);
    alice.send(&bob.address, "hello");
    bob.sync();

    let seen_by_alice = alice.ok(&["verify", &bob.address]);
    let seen_by_bob = bob.ok(&["verify", &alice.address]);
    assert_eq!(number(&seen_by_alice), number(&seen_by_bob));
    assert_eq!(number(&seen_by_alice).split(' ').count(), 12);
    assert_eq!(seen_by_alice["verified"], false);
    assert_eq!(alice.err(&["verify", &alice.address]), "invalid_input");

    // A number that does not match what bob shows is not recorded.
    let other = "00000 ".repeat(12);
    assert_eq!(
        alice.err(&["verify", &bob.address, "--mark-verified", "--expect", other.trim()]),
        "untrusted"
    );
    let qr = seen_by_bob["qr_text"].as_str().expect("qr text");
    let v = alice.ok(&["verify", &bob.address, "--mark-verified", "--expect", qr]);
    assert_eq!(v["verified"], true);
    alice.send(&bob.address, "verified hello");

    // bob loses his device and recovers: his identity key changes.
    let bob_again = User::new("bob");
    let out = recover(&bob_again, &bob.address, &server, &bob_recovery);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    bob_again.send(&alice.address, "new phone, same bob");
    assert!(alice.sync().contains(&pair(&bob_again, "new phone, same bob")));

    assert_eq!(alice.err(&["send", &bob.address, "are you really bob?"]), "identity_changed");
    let v = alice.ok(&["verify", &bob.address]);
    assert_eq!(
        (v["verified"].clone(), v["changed_since_verified"].clone()),
        (false.into(), true.into())
    );
    assert_ne!(number(&v), number(&seen_by_alice), "the number changes with the key");
    assert_eq!(number(&v), number(&bob_again.ok(&["verify", &alice.address])));

    // Verifying again unblocks sending.
    let v = alice.ok(&["verify", &bob.address, "--mark-verified"]);
    assert_eq!(v["verified"], true);
    alice.send(&bob.address, "welcome back");
    assert!(bob_again.sync().contains(&pair(&alice, "welcome back")));
}

#[test]
fn accepting_a_change_unblocks_without_verifying() {
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let (bob, bob_recovery) = User::register_with_recovery("bob", &server);
    alice.send(&bob.address, "hello");
    alice.ok(&["verify", &bob.address, "--mark-verified"]);
    let bob_again = User::new("bob");
    let out = recover(&bob_again, &bob.address, &server, &bob_recovery);
    assert!(out.status.success());
    // alice learns the new key when she starts a new conversation with bob.
    assert_eq!(
        alice.err(&["group", "create", "g", "--members", "bob@localhost"]).as_str(),
        "identity_changed"
    );
    let v = alice.ok(&["verify", &bob.address, "--accept-change"]);
    assert_eq!(
        (v["verified"].clone(), v["changed_since_verified"].clone()),
        (false.into(), false.into())
    );
    alice.ok(&["group", "create", "g", "--members", "bob@localhost"]);
}

/// `sotto recover ADDRESS` in `user`'s (new) home with the recovery key.
fn recover(
    user: &User,
    address: &str,
    server: &Server,
    recovery_key: &str,
) -> std::process::Output {
    user.run(&["recover", address, "--server", &server.url, "--recovery-key", recovery_key])
}
