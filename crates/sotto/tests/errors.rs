//! Hostile and mistaken input: every error path answers with its documented code, and
//! nothing stored is lost.

mod common;

use base64::Engine as _;
use common::{Server, User, api_device, b64, challenge, code, pair};
use serde_json::{Value, json};
use sotto_core::auth;
use sotto_core::mls::DeviceKey;

#[test]
fn registration_errors() {
    let server = Server::start(&[]);
    let u = User::new("alice");
    let reg = |u: &User, invite: Option<&str>| {
        let mut args = vec!["register", u.address.as_str(), "--server", server.url.as_str()];
        if let Some(i) = invite {
            args.extend(["--invite", i]);
        }
        u.err(&args)
    };
    assert_eq!(reg(&u, None), "invite_required");
    assert_eq!(reg(&u, Some("no-such-code")), "invite_invalid");
    let expired = server.invite(&["--expires", "1s"]);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(reg(&u, Some(&expired)), "invite_expired");
    let once = server.invite(&["--uses", "1"]);
    let alice = User::register("alice", &server, &once);
    assert_eq!(reg(&User::new("bob"), Some(&once)), "invite_used_up");
    let more = server.invite(&["--uses", "5"]);
    assert_eq!(reg(&User::new("alice"), Some(&more)), "address_taken");
    assert_eq!(
        alice.err(&["register", "alice2@localhost", "--server", &server.url, "--invite", &more]),
        "already_registered"
    );
    let other = User::new("x");
    assert_eq!(
        other.err(&["register", "x@example.org", "--server", &server.url, "--invite", &more]),
        "invalid_input"
    );
    assert_eq!(
        other.err(&["register", "not an address", "--server", &server.url, "--invite", &more]),
        "invalid_address"
    );
    assert_eq!(
        other.err(&["register", "x@localhost", "--server", "ftp://nowhere", "--invite", &more]),
        "invalid_input"
    );
    // The invite still has its uses: failed attempts consumed none.
    User::register("bob", &server, &more);
    // Bad invite flags are refused by the operator command.
    let out = std::process::Command::new(common::SERVER)
        .arg("--data")
        .arg(&server.data)
        .args(["invite", "create", "--expires", "soon"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("duration"));
}

#[test]
fn client_errors() {
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    assert_eq!(User::new("nobody").err(&["sync"]), "not_registered");
    assert_eq!(alice.err(&["send", "nobody@localhost", "hello?"]), "unknown_user");
    assert_eq!(alice.err(&["send", "nobody@elsewhere.org", "hello?"]), "wrong_domain");
    // One's own address is notes to self, not an error.
    assert_eq!(alice.ok(&["send", &alice.address, "me"])["chat_name"], "Notes to self");
    assert_eq!(alice.err(&["send", &alice.address, ""]), "invalid_input");
    assert_eq!(alice.err(&["send", &bob.address, ""]), "invalid_input");
    assert_eq!(alice.err(&["send", "--group", "feedbeef", "x"]), "unknown_chat");
    assert_eq!(alice.err(&["history", "nosuchgroup"]), "unknown_chat");
    assert_eq!(alice.err(&["group", "create", "  "]), "invalid_input");
    let id = alice.ok(&["group", "create", "g", "--members", "bob@localhost"])["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(alice.err(&["group", "add", &id, "bob@localhost"]), "invalid_input");
    assert_eq!(alice.err(&["group", "remove", &id, "nobody@localhost"]), "unknown_member");
    // Nothing above disturbed the chat.
    alice.send_group(&id, "still fine");
    assert_eq!(bob.sync(), vec![pair(&alice, "still fine")]);

    // A stopped server is reported as unreachable, and nothing is lost locally: the message
    // waits in the outbox, and the next sync after the server is back delivers it, once.
    let mut server = server;
    server.kill();
    let out = alice.run(&["send", "--group", &id, "into the void"]);
    let error: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(code(&error), "unreachable");
    assert!(error["error"]["message"].as_str().unwrap_or("").contains("kept"), "{error}");
    let history = alice.ok(&["history", &id]);
    let last = history.as_array().and_then(|h| h.last()).expect("message");
    assert_eq!(
        (last["body"].as_str(), last["status"].as_str()),
        (Some("into the void"), Some("pending"))
    );
    assert!(last["error"].as_str().is_some_and(|e| e.contains("cannot reach")), "{last}");
    assert_eq!(bob.err(&["sync"]), "unreachable");
    server.restart(&["--registration", "open"]);
    let report = alice.ok(&["sync"]);
    let void = |report: &Value| -> Vec<String> {
        report["updated"]
            .as_array()
            .expect("updated")
            .iter()
            .filter(|m| m["body"] == "into the void")
            .filter_map(|m| m["status"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(void(&report), ["sent"], "{report}");
    assert_eq!(bob.sync(), vec![pair(&alice, "into the void")]);
    // Sent once: what changes next is only that bob's device received it.
    assert_eq!(void(&alice.ok(&["sync"])), ["delivered"]);
    assert_eq!(bob.sync(), vec![]);
}

#[test]
fn hostile_api_requests() {
    let server = Server::start(&["--registration", "open"]);
    let (mallory, token, key) = api_device(&server, "mallory@localhost", None);

    let (s, v) = server.http("POST", "/v1/register", None, "{not json");
    assert_eq!((s, code(&v)), (400, "bad_request"));
    let (s, v) = server.http("POST", "/v1/register", None, r#"{"address": 5}"#);
    assert_eq!((s, code(&v)), (400, "bad_request"));
    let other = DeviceKey::generate().expect("key");
    let forged = other.sign(b"something else").expect("sign");
    let body = json!({"address": "eve@localhost", "device_key": b64(other.public()), "signature": b64(&forged), "device_list": {"body": "", "signature": ""}});
    let (s, v) = server.http("POST", "/v1/register", None, &body.to_string());
    assert_eq!((s, code(&v)), (401, "bad_signature"));
    let body = json!({"address": "eve@elsewhere.org", "device_key": b64(other.public()), "signature": b64(&forged), "device_list": {"body": "", "signature": ""}});
    let (s, v) = server.http("POST", "/v1/register", None, &body.to_string());
    assert_eq!((s, code(&v)), (400, "wrong_domain"));

    // Log-in: a signature by another key is refused; a signed answer works once only.
    let nonce = challenge(&server, mallory);
    let bad = other.sign(&auth::challenge_payload("localhost", mallory, &nonce)).expect("sign");
    let body = json!({"device_id": mallory, "nonce": b64(&nonce), "signature": b64(&bad)});
    let (s, v) = server.http("POST", "/v1/auth/token", None, &body.to_string());
    assert_eq!((s, code(&v)), (401, "bad_signature"));
    let good = key.sign(&auth::challenge_payload("localhost", mallory, &nonce)).expect("sign");
    let body = json!({"device_id": mallory, "nonce": b64(&nonce), "signature": b64(&good)});
    let (s, v) = server.http("POST", "/v1/auth/token", None, &body.to_string());
    assert_eq!(s, 200, "{v}");
    let (s, v) = server.http("POST", "/v1/auth/token", None, &body.to_string());
    assert_eq!((s, code(&v)), (401, "challenge_invalid"), "a replayed answer");
    let (s, v) = server.http("POST", "/v1/auth/challenge", None, r#"{"device_id": 424242}"#);
    assert_eq!((s, code(&v)), (404, "unknown_device"));

    // No token, a made-up token: refused.
    let (s, v) = server.http("GET", "/v1/queue", None, "");
    assert_eq!((s, code(&v)), (401, "unauthorized"));
    let (s, v) = server.http("GET", "/v1/queue", Some("deadbeef"), "");
    assert_eq!((s, code(&v)), (401, "unauthorized"));
    let (s, v) = server.http("GET", "/v1/queue?after=banana", Some(&token), "");
    assert_eq!((s, code(&v)), (400, "bad_request"));
    let (s, v) = server.http("GET", "/v1/nothing-here", None, "");
    assert_eq!(s, 404, "{v}");

    // Oversized bodies are refused before they are read whole.
    let huge = format!(r#"{{"key_packages": ["{}"]}}"#, "A".repeat(3 * 1024 * 1024));
    let (s, v) = server.http("POST", "/v1/keypackages", Some(&token), &huge);
    assert_eq!((s, code(&v)), (413, "too_large"));

    // Key packages are filed under the ciphersuite they name: what is not an MLS 1.0 key
    // package, or an upload mixing suites, is refused; a claim names 1 to 8 suites.
    let kp = |suite: u16| b64(&[&[0u8, 1][..], &suite.to_be_bytes(), b"rest"].concat());
    for body in [
        json!({"key_packages": [b64(b"junk")]}),
        json!({"key_packages": [kp(0x4d)], "last_resort": b64(b"\x00")}),
        json!({"key_packages": [kp(3)], "last_resort": kp(0x4d)}),
        // Only the suites Sotto speaks: every other code would be a stock of its own.
        json!({"key_packages": [kp(1)]}),
        json!({"last_resort": kp(0xbeef)}),
    ] {
        let (s, v) = server.http("POST", "/v1/keypackages", Some(&token), &body.to_string());
        assert_eq!((s, code(&v)), (400, "bad_request"), "{body}");
    }
    let body = json!({"key_packages": [kp(0x4d), kp(0x4d)], "last_resort": kp(0x4d)});
    let (s, v) = server.http("POST", "/v1/keypackages", Some(&token), &body.to_string());
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["remaining"], 0, "no classical ones: {v}");
    assert_eq!(v["suites"], json!([{"ciphersuite": 0x4d, "remaining": 2, "last_resort": true}]));
    for suites in [json!([]), json!([3, 4, 5, 6, 7, 8, 9, 10, 11])] {
        let body = json!({"address": "mallory@localhost", "ciphersuites": suites});
        let (s, v) = server.http("POST", "/v1/keypackages/claim", Some(&token), &body.to_string());
        assert_eq!((s, code(&v)), (400, "bad_request"), "{body}");
    }
    let claim = |suites: Value| {
        let body = json!({"address": "mallory@localhost", "ciphersuites": suites});
        server.http("POST", "/v1/keypackages/claim", Some(&token), &body.to_string()).1
    };
    assert_eq!(claim(json!([3]))["key_packages"], json!([]), "no classical package on file");
    assert_eq!(claim(json!([3, 0x4d]))["key_packages"][0]["key_package"], kp(0x4d));

    // A submission naming a device that does not exist is refused whole.
    let body = json!({"group_id": b64(b"g"), "kind": "commit", "epoch": 0,
                      "credential": common::credential(b"g", 0),
                      "next_credential": common::credential(b"g", 1),
                      "delivery": {"message": b64(b"c")},
                      "welcome": {"recipients": [mallory, 999_999], "message": b64(b"x")}});
    let (s, v) = server.http("POST", "/v1/messages", Some(&token), &body.to_string());
    assert_eq!((s, code(&v)), (404, "unknown_device"));
    let (_, v) = server.http("GET", "/v1/queue", Some(&token), "");
    assert_eq!(v["messages"], json!([]), "nothing was queued");

    // A device reads only its own queue.
    let bob = User::register("bob", &server, "");
    let alice = User::register("alice", &server, "");
    alice.send(&bob.address, "for bob only");
    let (_, v) = server.http("GET", "/v1/queue", Some(&token), "");
    assert_eq!(v["messages"], json!([]));

    // Garbage where an MLS message should be: bob's client reports it and carries on.
    let bob_device = bob.ok(&["whoami"])["device_id"].as_u64().expect("id");
    common::start_group(&server, &token, b"junk", &[bob_device], b"\x00\x01garbage");
    alice.send(&bob.address, "still readable");
    let report = bob.ok(&["sync"]);
    assert_eq!(
        common::texts(&report["messages"]),
        vec![pair(&alice, "for bob only"), pair(&alice, "still readable")]
    );
    let failures = report["failures"].as_array().expect("failures");
    assert_eq!(failures.len(), 1, "{report}");
    assert!(failures[0]["reason"].as_str().is_some_and(|r| r.contains("malformed")), "{report}");
    assert!(bob.sync().is_empty(), "the failure was acknowledged, not retried forever");
}

#[test]
fn plain_http_is_refused_off_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(common::SERVER)
        .arg("--data")
        .arg(dir.path())
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to serve plain HTTP"));
}

/// Builds a group as mallory (through the core, in memory) with one claimed key package per
/// invitee; returns the group id, the welcome, and `bodies` encrypted as application messages.
fn mallory_invites(
    server: &Server,
    token: &str,
    mallory: u64,
    key: DeviceKey,
    invitees: &[&str],
    bodies: Vec<(String, sotto_core::content::Body)>,
) -> (Vec<u8>, Vec<u8>, Vec<Vec<u8>>) {
    use sotto_core::DeviceRef;
    use sotto_core::mls::{self, Identity, Provider};
    let p = Provider::new(openmls_memory_storage::MemoryStorage::default());
    key.store(&p).expect("store key");
    let device =
        DeviceRef { address: "mallory@localhost".parse().expect("addr"), device_id: mallory };
    let me = Identity { device, key };
    let mut packages = Vec::new();
    for invitee in invitees {
        let body = json!({ "address": invitee }).to_string();
        let (s, v) = server.http("POST", "/v1/keypackages/claim", Some(token), &body);
        assert_eq!(s, 200, "{v}");
        let claimed = &v["key_packages"][0];
        let kp = base64::engine::general_purpose::STANDARD
            .decode(claimed["key_package"].as_str().expect("kp"))
            .expect("b64");
        let address: sotto_core::Address = invitee.parse().expect("addr");
        packages.push(
            mls::validate_key_package(&p, &kp, &address, claimed["device_id"].as_u64())
                .expect("valid"),
        );
    }
    let gid = mls::create_group(&p, &me, mls::Suite::Classical).expect("group");
    let out = mls::add_members(&p, &gid, &me, &packages).expect("add");
    mls::merge_pending_commit(&p, &gid).expect("merge");
    let messages = bodies
        .into_iter()
        .map(|(id, body)| {
            let m = sotto_core::content::Message {
                v: sotto_core::content::VERSION,
                id,
                sent_at: 1,
                expires_in: None,
                n: None,
                root: None,
                body,
            };
            mls::encrypt(&p, &gid, &me, &m.encode()).expect("encrypt")
        })
        .collect();
    (gid, out.welcome.expect("welcome"), messages)
}

fn text(t: &str) -> sotto_core::content::Body {
    sotto_core::content::Body::text(t)
}

/// Bodies with well-formed message ids (128 bits, hex).
fn ided(bodies: Vec<sotto_core::content::Body>) -> Vec<(String, sotto_core::content::Body)> {
    bodies.into_iter().enumerate().map(|(i, b)| (format!("{i:032x}"), b)).collect()
}

/// Submits `message` into a group made with `common::start_group` (sealed: every device in
/// it gets a copy, the sender's too).
fn deliver(server: &Server, group: &[u8], message: &[u8]) {
    let body = common::app_message(group, 1, message);
    let (s, v) = server.http("POST", "/v1/messages", None, &body.to_string());
    assert_eq!(s, 200, "{v}");
}

#[test]
fn a_corrupted_welcome_rolls_back_and_the_genuine_one_still_joins() {
    let server = Server::start(&["--registration", "open"]);
    let bob = User::register("bob", &server, "");
    let bob_device = bob.ok(&["whoami"])["device_id"].as_u64().expect("id");
    let (mallory, token, key) = api_device(&server, "mallory@localhost", None);
    let (gid, welcome, messages) = mallory_invites(
        &server,
        &token,
        mallory,
        key,
        &["bob@localhost"],
        ided(vec![text("hello from mallory")]),
    );
    // Corrupt the encrypted group info at the end: openmls finds bob's key package and deletes
    // its private key before it discovers the damage. Bob's transaction must undo that.
    let mut corrupted = welcome.clone();
    let at = corrupted.len() - 20;
    corrupted[at] ^= 0x40;
    common::start_group(&server, &token, &gid, &[bob_device], &corrupted);
    deliver(&server, &gid, &welcome);
    deliver(&server, &gid, &messages[0]);
    let report = bob.ok(&["sync"]);
    assert_eq!(report["failures"].as_array().map(Vec::len), Some(1), "{report}");
    assert_eq!(
        common::texts(&report["messages"]),
        vec![("mallory@localhost".to_string(), "hello from mallory".to_string())]
    );
}

#[test]
fn exhausted_one_time_key_packages_fall_back_to_last_resort() {
    let server = Server::start(&["--registration", "open"]);
    let bob = User::register("bob", &server, "");
    let (_, token, _) = api_device(&server, "mallory@localhost", None);
    // Drain every one-time key package bob published.
    let (_, stock) = server.http("GET", "/v1/keypackages", Some(&token), "");
    assert_eq!(stock["remaining"], 0, "mallory's own stock is empty: {stock}");
    for suite in [3, 0x4d] {
        for _ in 0..60 {
            let body = json!({"address": "bob@localhost", "ciphersuites": [suite]});
            let (s, v) =
                server.http("POST", "/v1/keypackages/claim", Some(&token), &body.to_string());
            assert_eq!(s, 200);
            assert_eq!(v["key_packages"].as_array().map(Vec::len), Some(1), "{v}");
        }
    }
    // alice still reaches bob, through his last-resort key package.
    let alice = User::register("alice", &server, "");
    alice.send(&bob.address, "through the last resort");
    assert_eq!(bob.sync(), vec![pair(&alice, "through the last resort")]);
    // Bob's sync published fresh one-time key packages.
    let carol = User::register("carol", &server, "");
    carol.send(&bob.address, "fresh ones");
    assert_eq!(bob.sync(), vec![pair(&carol, "fresh ones")]);
}

#[test]
fn a_group_posing_as_a_direct_chat_is_shown_as_a_group() {
    use sotto_core::content::{Body, ChatKind};
    let server = Server::start(&["--registration", "open"]);
    let bob = User::register("bob", &server, "");
    let _eve = User::register("eve", &server, "");
    let bob_device = bob.ok(&["whoami"])["device_id"].as_u64().expect("id");
    let (mallory, token, key) = api_device(&server, "mallory@localhost", None);
    // mallory adds bob and, silently, eve, and labels the group a direct chat.
    let info = Body::ChatInfo { kind: ChatKind::Direct, name: None };
    let (gid, welcome, messages) = mallory_invites(
        &server,
        &token,
        mallory,
        key,
        &["bob@localhost", "eve@localhost"],
        ided(vec![info, text("just between us")]),
    );
    common::start_group(&server, &token, &gid, &[bob_device], &welcome);
    for m in &messages {
        deliver(&server, &gid, m);
    }
    bob.sync();
    let chats = bob.ok(&["chats"]);
    assert_eq!(chats[0]["kind"], "group", "{chats}");
    assert_eq!(chats[0]["peer"], Value::Null);
    assert_eq!(chats[0]["members"], json!(["bob@localhost", "eve@localhost", "mallory@localhost"]));
    // Writing to mallory opens a real direct chat instead of using the crowded one.
    assert_eq!(bob.err(&["history", "mallory@localhost"]), "unknown_chat");
}

#[test]
fn a_message_id_that_could_pass_for_a_local_event_is_refused() {
    let server = Server::start(&["--registration", "open"]);
    let bob = User::register("bob", &server, "");
    let bob_device = bob.ok(&["whoami"])["device_id"].as_u64().expect("id");
    let (mallory, token, key) = api_device(&server, "mallory@localhost", None);
    // Local events are stored as `event-SEQ-N`; a member choosing such ids could take their
    // place and hide them.
    let (gid, welcome, messages) = mallory_invites(
        &server,
        &token,
        mallory,
        key,
        &["bob@localhost"],
        vec![("event-3-0".to_string(), text("\u{200b}")), ("f".repeat(32), text("a proper one"))],
    );
    common::start_group(&server, &token, &gid, &[bob_device], &welcome);
    for m in &messages {
        deliver(&server, &gid, m);
    }
    let report = bob.ok(&["sync"]);
    assert_eq!(
        common::texts(&report["messages"]),
        vec![("mallory@localhost".to_string(), "a proper one".to_string())]
    );
    let failures = report["failures"].as_array().expect("failures");
    assert_eq!(failures.len(), 1, "{report}");
    assert!(failures[0]["reason"].as_str().is_some_and(|r| r.contains("id")), "{report}");
}

#[test]
fn healing_replaces_the_key_packages_waiting_on_the_server() {
    let server = Server::start(&["--registration", "open"]);
    let bob = User::register("bob", &server, "");
    let (_, token, _) = api_device(&server, "mallory@localhost", None);
    let claim = |suite: u16| {
        let body = json!({"address": "bob@localhost", "ciphersuites": [suite]});
        let (s, v) = server.http("POST", "/v1/keypackages/claim", Some(&token), &body.to_string());
        assert_eq!(s, 200, "{v}");
        v["key_packages"][0]["key_package"].as_str().expect("a key package").to_string()
    };
    // 45 of bob's 50 one-time packages of each suite are taken: 5 are left of each.
    let mut before = std::collections::HashSet::new();
    for suite in [3, 0x4d] {
        before.extend((0..45).map(|_| claim(suite)));
    }
    assert_eq!(before.len(), 90);
    bob.ok(&["heal"]);
    // Every package was replaced: 50 fresh one-time ones, then a fresh last resort.
    for suite in [3, 0x4d] {
        let after: Vec<String> = (0..52).map(|_| claim(suite)).collect();
        let distinct: std::collections::HashSet<&String> = after.iter().collect();
        assert_eq!(distinct.len(), 51, "50 one-time and one last resort (suite {suite})");
        assert_eq!(after[50], after[51], "the last resort is handed out again");
        assert!(after.iter().all(|k| !before.contains(k)), "nothing from before the update");
    }
    // The private keys of packages replaced a round ago are kept (a welcome made with one may
    // still be on its way); those of older rounds are forgotten.
    let rounds = |u: &User| -> (i64, i64) {
        common::open_home_db(&u.home)
            .query_row("SELECT COUNT(*), COUNT(DISTINCT round) FROM own_key_packages", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .expect("own key packages")
    };
    assert_eq!(rounds(&bob), (204, 2), "the first round and the one that replaced it");
    bob.ok(&["heal"]);
    bob.ok(&["heal"]);
    assert_eq!(rounds(&bob), (204, 2), "two rounds kept, older ones forgotten");
}
