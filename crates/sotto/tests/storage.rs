//! Encryption at rest: a home directory holds nothing readable without its passphrase; the
//! passphrase unlocks everything again; a wrong one changes nothing; changing it does not
//! rewrite the data.

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use common::{Server, User, pair};
use serde_json::Value;

/// Every file under `dir` and its bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.insert(p.clone(), std::fs::read(&p).expect("read"));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `sotto --json ARGS` in `user`'s home with the given passphrase environment.
fn run_with(user: &User, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = common::client();
    c.arg("--home").arg(&user.home).arg("--json").args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run sotto")
}

fn code(out: &Output) -> String {
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    v["error"]["code"].as_str().expect("code").to_string()
}

#[test]
fn a_home_holds_no_plaintext_and_no_private_key() {
    let server = Server::start(&["--registration", "open"]);
    let [alice, bob] = ["alice", "bob"].map(|n| User::register(n, &server, ""));
    let secrets = ["the vault code is 4471", "meet at the old mill at dawn"];
    alice.send(&bob.address, secrets[0]);
    bob.sync();
    bob.send(&alice.address, secrets[1]);
    alice.ok(&["group", "create", "project nightingale", "--members", "bob@localhost"]);
    alice.sync();

    // What is inside, decrypted with the key the passphrase unwraps...
    let db = common::open_home_db(&alice.home);
    let identity: Vec<u8> = db
        .query_row("SELECT identity_secret FROM account", [], |r| r.get(0))
        .expect("identity key");
    let bodies: Vec<String> = {
        let mut stmt = db.prepare("SELECT body FROM messages").expect("query");
        let rows = stmt.query_map([], |r| r.get(0)).expect("rows");
        rows.collect::<Result<_, _>>().expect("bodies")
    };
    drop(db);
    assert!(secrets.iter().all(|s| bodies.contains(&s.to_string())), "{bodies:?}");
    let key = common::home_key(&alice.home);
    // ...appears nowhere in the bytes on disk.
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let needles: Vec<Vec<u8>> = vec![
        secrets[0].as_bytes().to_vec(),
        secrets[1].as_bytes().to_vec(),
        b"project nightingale".to_vec(),
        b"bob@localhost".to_vec(),
        identity.clone(),
        hex(&identity).into_bytes(),
        key.to_vec(),
        hex(&key).into_bytes(),
    ];
    for (path, bytes) in files(&alice.home) {
        for n in &needles {
            assert!(!contains(&bytes, n), "{} holds something readable", path.display());
        }
    }
    // The passphrase unlocks everything again.
    assert_eq!(
        common::texts(&alice.ok(&["history", &bob.address])),
        vec![pair(&alice, secrets[0]), pair(&bob, secrets[1])]
    );
}

#[test]
fn a_wrong_passphrase_is_refused_and_changes_nothing() {
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let before = files(&alice.home);
    for args in [&["sync"][..], &["history", "bob@localhost"], &["passphrase", "change"]] {
        let out = run_with(
            &alice,
            &[("SOTTO_PASSPHRASE", "not the passphrase"), ("SOTTO_NEW_PASSPHRASE", "whatever123")],
            args,
        );
        assert_eq!(code(&out), "wrong_passphrase", "{args:?}");
    }
    assert_eq!(files(&alice.home), before, "nothing on disk changed");
    alice.ok(&["whoami"]);
}

#[test]
fn changing_the_passphrase_rewraps_the_key_and_leaves_the_data() {
    let server = Server::start(&["--registration", "open"]);
    let [alice, bob] = ["alice", "bob"].map(|n| User::register(n, &server, ""));
    alice.send(&bob.address, "before the change");
    let db_before = std::fs::read(alice.home.join("sotto.db")).expect("db");
    let keys_before = std::fs::read(alice.home.join("keys.json")).expect("keys");
    let new = "a much longer new passphrase";
    let out = run_with(&alice, &[("SOTTO_NEW_PASSPHRASE", new)], &["passphrase", "change"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(std::fs::read(alice.home.join("sotto.db")).expect("db"), db_before);
    assert_ne!(std::fs::read(alice.home.join("keys.json")).expect("keys"), keys_before);
    // The old passphrase no longer opens the home; the new one does, from every source.
    assert_eq!(code(&alice.run(&["whoami"])), "wrong_passphrase");
    let out = run_with(&alice, &[("SOTTO_PASSPHRASE", new)], &["history", &bob.address]);
    assert!(out.status.success());
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("pass");
    std::fs::write(&file, format!("{new}\n")).expect("write");
    let out = run_with(&alice, &[], &["--passphrase-file", file.to_str().expect("path"), "whoami"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let mut child = common::client()
        .arg("--home")
        .arg(&alice.home)
        .args(["--json", "--passphrase-fd", "0", "whoami"])
        .env_remove("SOTTO_PASSPHRASE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    child.stdin.take().expect("stdin").write_all(format!("{new}\n").as_bytes()).expect("pipe");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn new_homes_need_a_real_passphrase() {
    let server = Server::start(&["--registration", "open"]);
    let carol = User::new("carol");
    let register = ["register", "carol@localhost", "--server", server.url.as_str()];
    let out = run_with(&carol, &[("SOTTO_PASSPHRASE", "short")], &register);
    assert_eq!(code(&out), "invalid_input");
    let out = run_without_passphrase(&carol, &register);
    assert_eq!(code(&out), "invalid_input");
    assert!(String::from_utf8_lossy(&out.stdout).contains("SOTTO_PASSPHRASE"));
    assert!(!carol.home.join("keys.json").exists());
}

/// `sotto --json ARGS` with no passphrase from anywhere (and no terminal to ask on).
fn run_without_passphrase(user: &User, args: &[&str]) -> Output {
    common::client()
        .arg("--home")
        .arg(&user.home)
        .arg("--json")
        .args(args)
        .env_remove("SOTTO_PASSPHRASE")
        .stdin(Stdio::null())
        .output()
        .expect("run sotto")
}

#[cfg(target_os = "linux")]
#[test]
fn the_system_keyring_opens_a_home_without_its_passphrase() {
    let server = Server::start(&["--registration", "open"]);
    let [alice, bob] = ["alice", "bob"].map(|n| User::register(n, &server, ""));
    alice.send(&bob.address, "kept under the keyring");
    let status = alice.ok(&["keyring", "status"]);
    assert_eq!(
        (status["enabled"].as_bool(), status["holds_key"].as_bool()),
        (Some(false), Some(false))
    );
    assert_eq!(code(&run_without_passphrase(&alice, &["whoami"])), "invalid_input");

    // Enabling needs the passphrase, and a wrong one stores nothing.
    let out =
        run_with(&alice, &[("SOTTO_PASSPHRASE", "not the passphrase")], &["keyring", "enable"]);
    assert_eq!(code(&out), "wrong_passphrase");
    assert_eq!(common::keyring_entry(&alice.home), None);
    let status = alice.ok(&["keyring", "enable"]);
    assert_eq!(
        (status["enabled"].as_bool(), status["holds_key"].as_bool()),
        (Some(true), Some(true))
    );
    let entry = common::keyring_entry(&alice.home).expect("entry named in keys.json");
    let key = common::home_key(&alice.home);
    assert_eq!(common::keyring_secret(&entry).as_deref(), Some(key.as_slice()));

    // Now no passphrase is needed, and the home still holds no copy of the key.
    let out = run_without_passphrase(&alice, &["history", &bob.address]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("kept under the keyring"));
    let hex: String = key.iter().map(|x| format!("{x:02x}")).collect();
    for (path, bytes) in files(&alice.home) {
        assert!(!contains(&bytes, &key) && !contains(&bytes, hex.as_bytes()), "{}", path.display());
    }

    // After a reboot the keyring is empty: the passphrase is asked for once and the key
    // goes back.
    common::keyring_forget(&entry);
    let status = run_without_passphrase(&alice, &["keyring", "status"]);
    let status: Value = serde_json::from_slice(&status.stdout).expect("json");
    assert_eq!(
        (status["enabled"].as_bool(), status["holds_key"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(code(&run_without_passphrase(&alice, &["whoami"])), "invalid_input");
    alice.ok(&["whoami"]);
    assert_eq!(common::keyring_secret(&entry).as_deref(), Some(key.as_slice()));
    assert!(run_without_passphrase(&alice, &["whoami"]).status.success());

    // Something else under the entry's name opens nothing and is not mistaken for the key.
    common::keyring_forget(&entry);
    common::keyring_put(&entry, &[9; 32]);
    assert_eq!(code(&run_without_passphrase(&alice, &["whoami"])), "invalid_input");
    alice.ok(&["whoami"]);
    assert_eq!(common::keyring_secret(&entry).as_deref(), Some(key.as_slice()));

    // Disabling deletes the entry; the passphrase is needed again and still works.
    let status = alice.ok(&["keyring", "disable"]);
    assert_eq!(status["enabled"].as_bool(), Some(false));
    assert_eq!(common::keyring_secret(&entry), None);
    assert_eq!(common::keyring_entry(&alice.home), None);
    assert_eq!(code(&run_without_passphrase(&alice, &["whoami"])), "invalid_input");
    alice.ok(&["whoami"]);
    assert_eq!(common::keyring_secret(&entry), None, "a disabled home puts nothing back");
}
