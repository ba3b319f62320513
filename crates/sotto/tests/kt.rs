//! Key transparency against a lying server, with the real server and CLI: the server (or
//! whoever holds its database and keys) substitutes keys, publishes a key behind an
//! account's back, forks its roots or rewrites its history; clients and the auditor notice.

mod common;

use common::{Server, User, pair};
use serde_json::Value;
use sotto_core::account::{DeviceList, IdentityKey, ListedDevice, SignedList};
use sotto_server::kt::{KeyDirectory, KtStorage, RootRow};
use sotto_server::store::{ListRecord, SqliteStore, Store};

fn open_server() -> Server {
    Server::start(&["--registration", "open"])
}

/// Runs `sotto --json kt audit ARGS` for someone without an account.
fn audit(server: &Server, args: &[&str]) -> (bool, Value) {
    let outsider = User::new("auditor");
    let mut all = vec!["kt", "audit", "--server", server.url.as_str()];
    all.extend_from_slice(args);
    let out = outsider.run(&all);
    let v: Value = serde_json::from_slice(&out.stdout).expect("audit JSON");
    (out.status.success(), v)
}

fn message(v: &Value) -> String {
    v["error"]["message"].as_str().unwrap_or_default().to_string()
}

/// What a user's command printed when it failed: (code, message).
fn failure(user: &User, args: &[&str]) -> (String, String) {
    let out = user.run(args);
    assert!(!out.status.success(), "{args:?} should fail");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    (v["error"]["code"].as_str().unwrap_or_default().to_string(), message(&v))
}

/// A device list for `address` under a key the server made up, listing a device of its own.
fn impostor_list(address: &str, version: u64) -> (ListRecord, IdentityKey) {
    let fake = IdentityKey::generate().expect("key");
    let mut list = DeviceList::first(
        address.parse().expect("address"),
        &fake,
        vec![9; 32],
        None,
        ListedDevice { key: vec![8; 32], added_at: 1, name: None },
        1,
    );
    list.version = version;
    let signed = list.sign(&fake);
    let record = ListRecord {
        version,
        identity_key: fake.public(),
        recovery_key: vec![9; 32],
        operator_key: None,
        body: signed.body,
        signature: signed.signature,
    };
    (record, fake)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime")
}

#[test]
fn clients_and_the_auditor_verify_an_honest_directory() {
    let server = open_server();
    let [alice, bob] = ["alice", "bob"].map(|n| User::register(n, &server, ""));
    alice.send(&bob.address, "hello");
    assert_eq!(bob.sync(), vec![pair(&alice, "hello")]);
    let (_, _) = bob.link_device(&server, "laptop");

    let (ok, report) = audit(&server, &[]);
    assert!(ok, "{report}");
    assert!(report["epochs"].as_u64().expect("epochs") >= 4, "{report}");
    // With a home, the roots that device was shown are checked too.
    let v = alice.ok(&["kt", "audit"]);
    assert!(v["compared_roots"].as_u64().expect("compared") > 0, "{v}");
    // A state file carries the roots from one audit to the next.
    let dir = tempfile::tempdir().expect("dir");
    let state = dir.path().join("roots.json");
    let state = state.to_str().expect("path");
    assert!(audit(&server, &["--state", state]).0);
    let (ok, v) = audit(&server, &["--state", state]);
    assert!(ok && v["compared_roots"].as_u64().expect("compared") >= 4, "{v}");
    assert_eq!(v["proven_now"], 0, "nothing new to prove: {v}");
    // Messages publish nothing; a new device does.
    alice.send(&bob.address, "no new epoch for this");
    let (_, _) = alice.link_device(&server, "tablet");
    let (ok, v) = audit(&server, &["--state", state]);
    assert!(ok && v["proven_now"].as_u64().is_some_and(|n| n >= 1), "{v}");
    // The wrong expected key is refused.
    let (ok, v) = audit(&server, &["--kt-key", &"00".repeat(32)]);
    assert!(!ok && v["error"]["code"] == "untrusted", "{v}");
}

#[test]
fn a_substituted_key_the_directory_does_not_hold_is_refused() {
    let server = open_server();
    let [_bob, carol] = ["bob", "carol"].map(|n| User::register(n, &server, ""));
    // The server hands out a device list of its own for bob (carol has never seen bob's).
    let store = SqliteStore::open(&server.data.join("sotto.db")).expect("store");
    let (fake, _) = impostor_list("bob@localhost", 2);
    store.update_devices("bob@localhost", 1, &fake, None, &[], 1).expect("substitute");
    let (code, why) = failure(&carol, &["send", "bob@localhost", "hi bob"]);
    assert_eq!(code, "untrusted");
    assert!(why.contains("key transparency"), "{why}");
}

#[test]
fn a_key_published_behind_the_owners_back_is_noticed_by_the_owner() {
    let mut server = open_server();
    let [alice, bob] = ["alice", "bob"].map(|n| User::register(n, &server, ""));
    alice.send(&bob.address, "hello");
    bob.sync();
    // With the server stopped, its keys publish an impostor for bob in the directory (so that
    // lookups by others would verify), then let the server put bob's real list back on top.
    server.kill();
    let (fake, fake_identity) = impostor_list("bob@localhost", 2);
    let signed = SignedList { body: fake.body.clone(), signature: fake.signature.clone() };
    let value = sotto_core::kt::commitment(&fake_identity.public(), &signed);
    let data = server.data.clone();
    runtime().block_on(async move {
        let kt =
            KeyDirectory::open(&data, sotto_server::Clock::default()).await.expect("directory");
        let label = sotto_core::kt::label(&"bob@localhost".parse().expect("address"));
        kt.publish(label, value).await.expect("publish impostor");
    });
    server.restart(&["--registration", "open"]);
    // The latest value is bob's again, so lookups see nothing wrong; bob's own history
    // check finds the impostor.
    alice.ok(&["verify", &bob.address]);
    let (code, why) = failure(&bob, &["sync"]);
    assert_eq!(code, "untrusted");
    assert!(why.contains("never published"), "{why}");
}

#[test]
fn forked_roots_and_rewritten_history_are_caught() {
    let mut server = open_server();
    let [alice, bob] = ["alice", "bob"].map(|n| User::register(n, &server, ""));
    alice.send(&bob.address, "hello");
    bob.sync();
    let dir = tempfile::tempdir().expect("dir");
    let state = dir.path().join("roots.json");
    let state = state.to_str().expect("path");
    assert!(audit(&server, &["--state", state]).0);

    // 1. A changed old entry: bob's first value in the directory is rewritten in place.
    server.kill();
    let db = rusqlite::Connection::open(server.data.join("kt.db")).expect("kt.db");
    let original: (i64, Vec<u8>) = db
        .query_row(
            "SELECT epoch, data FROM value_states WHERE label = ?1 ORDER BY epoch LIMIT 1",
            [b"bob@localhost".as_slice()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("bob's first value");
    let mut state_json: Value = serde_json::from_slice(&original.1).expect("value state json");
    state_json["value"] = Value::String("00".repeat(64));
    db.execute(
        "UPDATE value_states SET data = ?1 WHERE label = ?2 AND epoch = ?3",
        rusqlite::params![
            serde_json::to_vec(&state_json).expect("json"),
            b"bob@localhost".as_slice(),
            original.0
        ],
    )
    .expect("rewrite");
    server.restart(&["--registration", "open"]);
    let (code, why) = failure(&bob, &["sync"]);
    assert_eq!(code, "untrusted", "{why}");
    assert!(why.contains("key transparency"), "{why}");
    server.kill();
    db.execute(
        "UPDATE value_states SET data = ?1 WHERE label = ?2 AND epoch = ?3",
        rusqlite::params![original.1, b"bob@localhost".as_slice(), original.0],
    )
    .expect("restore");
    server.restart(&["--registration", "open"]);
    bob.sync();

    // 2. A forked root: the latest epoch's root (which alice has seen), re-signed with
    // another hash.
    alice.sync();
    server.kill();
    let kt = KtStorage::open(&server.data.join("kt.db")).expect("kt storage");
    let latest = kt.latest_root().expect("root").expect("some root");
    let key = std::fs::read(server.data.join("kt.key")).expect("kt key");
    let key = IdentityKey::from_secret(&key).expect("key");
    let forged = sotto_core::kt::Root {
        epoch: latest.epoch,
        hash: vec![7; 32],
        previous: latest.previous.clone(),
        time: 0,
    };
    let row = RootRow {
        epoch: forged.epoch,
        hash: forged.hash.clone(),
        previous: forged.previous.clone(),
        time: 0,
        signature: forged.sign(&key),
    };
    kt.put_root(&row, 1).expect("fork");
    server.restart(&["--registration", "open"]);
    let (code, why) = failure(&alice, &["sync"]);
    assert_eq!(code, "untrusted", "{why}");
    assert!(why.contains("two different directory roots"), "{why}");
    let (ok, v) = audit(&server, &[]);
    assert!(!ok && v["error"]["code"] == "untrusted", "{v}");
    assert!(message(&v).contains("append-only"), "{v}");

    // 3. A rewritten history: the whole directory rebuilt and re-signed from scratch. It is
    // consistent in itself, but not with the roots seen before. The VRF key goes too: with the
    // same key and the same publishing order the rebuild could be the honest history again,
    // byte for byte, which is no lie at all.
    server.kill();
    for f in ["kt.db", "kt.db-wal", "kt.db-shm", "kt-vrf.key"] {
        let _ = std::fs::remove_file(server.data.join(f));
    }
    server.restart(&["--registration", "open"]);
    let (ok, v) = audit(&server, &[]);
    assert!(ok, "a rebuilt directory is consistent in itself: {v}");
    let (ok, v) = audit(&server, &["--state", state]);
    assert!(!ok, "{v}");
    assert!(message(&v).contains("differs from the one seen before"), "{v}");
    let (code, why) = failure(&alice, &["kt", "audit"]);
    assert_eq!(code, "untrusted", "{why}");
}
