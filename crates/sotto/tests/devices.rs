//! Several devices per account, end to end with the real server and CLI: linking, revoking,
//! remote wipe (and the commands a device must refuse), device lists a lying server might
//! hand out, recovery, and managed accounts.

mod common;

use std::path::Path;

use common::{Server, User, b64, login, pair};
use serde_json::{Value, json};
use sotto_core::account::{DeviceList, IdentityKey, SignedList, Signer, WipeCommand};
use sotto_server::store::{ListRecord, SqliteStore, Store};

fn open_server() -> Server {
    Server::start(&["--registration", "open"])
}

fn device_id(v: &Value) -> u64 {
    v["device_id"].as_u64().expect("device id")
}

fn events(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["kind"] == "event" || m["kind"] == "mark")
        .filter_map(|m| m["body"].as_str().map(str::to_owned))
        .collect()
}

/// Every byte of every file under `dir`.
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(all_bytes(&p));
            } else if let Ok(b) = std::fs::read(&p) {
                out.extend(b);
            }
        }
    }
    out
}

/// Every message body a home's (decrypted) database holds.
fn stored_texts(user: &User) -> Vec<String> {
    let db = common::open_home_db(&user.home);
    let mut stmt = db.prepare("SELECT body FROM messages").expect("query");
    let rows = stmt.query_map([], |r| r.get(0)).expect("rows");
    rows.collect::<Result<_, _>>().expect("bodies")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_linked_device_joins_every_chat_and_gets_recent_history() {
    let server = open_server();
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|n| User::register(n, &server, ""));
    alice.send(&bob.address, "hello bob");
    assert_eq!(bob.sync(), vec![pair(&alice, "hello bob")]);
    bob.send(&alice.address, "hi alice");
    let group =
        alice.ok(&["group", "create", "team", "--members", "bob@localhost,carol@localhost"]);
    let group = group["id"].as_str().expect("id").to_string();
    alice.send_group(&group, "welcome team");
    alice.sync();
    carol.sync();

    let (laptop, linked) = alice.link_device(&server, "laptop");
    assert_eq!(linked["history_messages"], 3, "{linked}");
    assert_eq!(
        laptop.history(&bob.address),
        vec![pair(&alice, "hello bob"), pair(&bob, "hi alice")]
    );
    assert_eq!(laptop.history(&group), vec![pair(&alice, "welcome team")]);

    // New messages reach both of alice's devices, in the direct chat and the group.
    bob.send(&bob_chat_target(&alice), "after the link");
    carol.send_group(&group, "group after the link");
    let got = laptop.sync();
    assert!(got.contains(&pair(&bob, "after the link")), "{got:?}");
    assert!(got.contains(&pair(&carol, "group after the link")), "{got:?}");
    let got = alice.sync();
    assert!(got.contains(&pair(&bob, "after the link")), "{got:?}");
    assert!(got.contains(&pair(&carol, "group after the link")), "{got:?}");

    // The new device speaks for alice; her other device reads it too.
    laptop.send(&bob.address, "from the laptop");
    assert!(bob.sync().contains(&pair(&alice, "from the laptop")));
    assert!(alice.sync().contains(&pair(&alice, "from the laptop")));

    // A chat started on one device includes the account's other devices from the start.
    let fresh = laptop.ok(&["group", "create", "from the laptop", "--members", "carol@localhost"]);
    let fresh = fresh["id"].as_str().expect("id").to_string();
    laptop.send_group(&fresh, "new group");
    assert!(alice.sync().contains(&pair(&alice, "new group")));
    assert!(carol.sync().contains(&pair(&alice, "new group")));

    // bob's chat shows that alice's device list changed.
    let history = bob.ok(&["history", &alice.address]);
    assert!(
        events(&history).iter().any(|e| e == "alice@localhost linked a new device"),
        "{history}"
    );

    let devices = laptop.ok(&["devices", "list"]);
    let devices = devices.as_array().expect("devices");
    assert_eq!(devices.len(), 2);
    assert!(devices.iter().all(|d| d["state"] == "active"), "{devices:?}");
    assert!(devices.iter().any(|d| d["name"] == "laptop" && d["this_device"] == true));
    assert!(devices.iter().all(|d| d["last_seen"].as_u64().is_some()));
}

/// The direct chat with `u`, by address.
fn bob_chat_target(u: &User) -> String {
    u.address.clone()
}

#[test]
fn a_revoked_device_can_neither_fetch_nor_send_nor_read_what_follows() {
    let server = open_server();
    let [alice, bob] = ["alice", "bob"].map(|n| User::register(n, &server, ""));
    alice.send(&bob.address, "before");
    bob.sync();
    let (phone, linked) = alice.link_device(&server, "phone");
    let phone_id = device_id(&linked);

    let listener = phone.listen(&["--timeout", "60"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let list = alice.ok(&["devices", "revoke", &phone_id.to_string()]);
    // A live connection is cut at once: `listen` ends with the revocation.
    let started = std::time::Instant::now();
    let out = listener.wait_with_output().expect("listen output");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert!(!out.status.success());
    let last = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").to_string();
    assert!(last.contains("device_revoked"), "{last}");
    let revoked = list.as_array().expect("devices").iter().find(|d| device_id(d) == phone_id);
    assert_eq!(revoked.expect("still listed")["state"], "revoked");
    // It keeps the name it had.
    assert_eq!(revoked.expect("still listed")["name"], "phone", "{list}");

    assert_eq!(phone.err(&["sync"]), "device_revoked");
    assert_eq!(phone.err(&["send", &bob.address, "still here?"]), "device_revoked");
    // Its device key still logs in, but the token opens nothing else.
    let (status, v) = server.http("GET", "/v1/users/alice@localhost/devices", None, "");
    assert_eq!(status, 200, "{v}");

    bob.send(&alice.address, "after the revocation");
    assert!(alice.sync().contains(&pair(&bob, "after the revocation")));
    let history = bob.ok(&["history", &alice.address]);
    assert!(events(&history).iter().any(|e| e == "alice@localhost removed a device"), "{history}");
    assert!(
        !stored_texts(&phone).contains(&"after the revocation".to_string()),
        "the revoked device must not hold what was sent afterwards"
    );
}

#[test]
fn a_wiped_device_erases_itself_and_confirms() {
    let server = open_server();
    let [alice, bob] = ["alice", "bob"].map(|n| User::register(n, &server, ""));
    alice.send(&bob.address, "a secret before the wipe");
    let (stolen, linked) = alice.link_device(&server, "stolen");
    let stolen_id = device_id(&linked);
    // The home holds the message (encrypted: only its key reads it).
    assert!(stored_texts(&stolen).contains(&"a secret before the wipe".to_string()));
    assert!(!contains(&all_bytes(&stolen.home), b"a secret before the wipe"));

    // It keeps its key in the system keyring too: the wipe must take it from there as well.
    #[cfg(target_os = "linux")]
    let entry = {
        stolen.ok(&["keyring", "enable"]);
        let entry = common::keyring_entry(&stolen.home).expect("keyring entry");
        assert!(common::keyring_secret(&entry).is_some());
        entry
    };

    alice.ok(&["devices", "wipe", &stolen_id.to_string()]);
    assert_eq!(stolen.err(&["sync"]), "device_wiped");
    let left = all_bytes(&stolen.home);
    assert!(left.is_empty(), "the wiped home still holds {} bytes", left.len());
    #[cfg(target_os = "linux")]
    assert_eq!(common::keyring_secret(&entry), None, "the wipe left the key in the keyring");
    assert_eq!(stolen.err(&["whoami"]), "not_registered");

    let synced = alice.ok(&["sync"]);
    let notices: Vec<&str> =
        synced["notices"].as_array().expect("notices").iter().filter_map(|n| n.as_str()).collect();
    assert!(
        notices.contains(&format!("device {stolen_id} confirmed that it erased itself").as_str()),
        "{synced}"
    );
    let devices = alice.ok(&["devices", "list"]);
    let wiped = devices.as_array().expect("devices").iter().find(|d| device_id(d) == stolen_id);
    let wiped = wiped.expect("listed");
    assert_eq!(wiped["state"], "wiped");
    assert!(wiped["wiped_at"].as_u64().is_some());
}

#[test]
fn a_listening_device_wiped_while_disconnected_obeys_when_it_reconnects() {
    let mut server = open_server();
    let alice = User::register("alice", &server, "");
    let (stolen, linked) = alice.link_device(&server, "stolen");
    let stolen_id = device_id(&linked);
    let listener = stolen.listen(&["--timeout", "120"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    // The listener is frozen while its connection goes away (the server restarts) and the
    // device is wiped, so the wipe can only reach it through a refused reconnection.
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &listener.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig}");
    };
    signal("-STOP");
    server.kill();
    server.restart(&["--registration", "open"]);
    alice.ok(&["devices", "wipe", &stolen_id.to_string()]);
    signal("-CONT");
    let started = std::time::Instant::now();
    let out = listener.wait_with_output().expect("listen output");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert!(!out.status.success());
    let last = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").to_string();
    assert!(last.contains("device_wiped"), "{last}");
    let left = all_bytes(&stolen.home);
    assert!(left.is_empty(), "the wiped home still holds {} bytes", left.len());
    let devices = alice.ok(&["devices", "list"]);
    let wiped = devices.as_array().expect("devices").iter().find(|d| device_id(d) == stolen_id);
    assert_eq!(wiped.expect("listed")["state"], "wiped", "{devices}");
}

/// Reads the account's identity key from a home's database (what a thief of that device
/// would hold; here it lets the test sign commands a real client would not).
fn identity_of(user: &User) -> IdentityKey {
    let db = common::open_home_db(&user.home);
    let secret: Vec<u8> = db
        .query_row("SELECT identity_secret FROM account", [], |r| r.get(0))
        .expect("identity secret");
    IdentityKey::from_secret(&secret).expect("identity key")
}

fn linked_at(user: &User) -> u64 {
    let db = common::open_home_db(&user.home);
    db.query_row("SELECT linked_at FROM account", [], |r| r.get::<_, i64>(0)).expect("linked")
        as u64
}

fn device_key(user: &User) -> Vec<u8> {
    common::unhex(user.ok(&["whoami"])["device_key"].as_str().expect("key"))
}

#[test]
fn forged_misdirected_and_replayed_wipes_are_ignored() {
    let server = open_server();
    let alice = User::register("alice", &server, "");
    let (phone, linked) = alice.link_device(&server, "phone");
    let phone_id = device_id(&linked);
    let phone_key = device_key(&phone);
    alice.ok(&["devices", "revoke", &phone_id.to_string()]);
    // The server's database, as a malicious operator would edit it.
    let store = SqliteStore::open(&server.data.join("sotto.db")).expect("store");
    let address: sotto_core::Address = alice.address.parse().expect("address");
    let inject = |s: &sotto_core::account::Signed| {
        store.put_wipe(phone_id, &(s.body.clone(), s.signature.clone()), 1).expect("inject");
    };
    let identity = identity_of(&alice);
    let now = sotto_core::unix_now();

    // Forged: the server's own key signs an order for the phone.
    let forger = IdentityKey::generate().expect("key");
    let cmd =
        WipeCommand::new(address.clone(), phone_key.clone(), Signer::Identity, now).expect("cmd");
    inject(&cmd.sign(&forger));
    let out = phone.run(&["sync"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["error"]["code"], "device_revoked", "{v}");
    assert!(v["error"]["message"].as_str().expect("msg").contains("forged"), "{v}");
    // An operator command, when the account accepted no operator key, is forged as well.
    let op = WipeCommand { signer: Signer::Operator, ..cmd.clone() };
    inject(&op.sign(&forger));
    assert_eq!(phone.err(&["sync"]), "device_revoked");

    // Misdirected: a genuine order, for another device.
    let other = WipeCommand::new(address.clone(), vec![7; 32], Signer::Identity, now).expect("cmd");
    inject(&other.sign(&identity));
    let v: Value = serde_json::from_slice(&phone.run(&["sync"]).stdout).expect("json");
    assert!(v["error"]["message"].as_str().expect("msg").contains("another device"), "{v}");

    // Replayed: a genuine order for this device, issued before it was linked.
    let mut old =
        WipeCommand::new(address.clone(), phone_key.clone(), Signer::Identity, now).expect("cmd");
    old.issued_at = linked_at(&phone) - 3600;
    inject(&old.sign(&identity));
    let v: Value = serde_json::from_slice(&phone.run(&["sync"]).stdout).expect("json");
    assert!(v["error"]["message"].as_str().expect("msg").contains("replay"), "{v}");

    // None of them touched the device; the real order does.
    assert_eq!(phone.ok(&["whoami"])["device_id"], phone_id);
    alice.ok(&["devices", "wipe", &phone_id.to_string()]);
    assert_eq!(phone.err(&["sync"]), "device_wiped");
    assert!(all_bytes(&phone.home).is_empty());
}

#[test]
fn old_and_unsigned_device_lists_are_refused() {
    let server = open_server();
    let [alice, bob] = ["alice", "bob"].map(|n| User::register(n, &server, ""));
    let (status, v1) = server.http("GET", "/v1/users/bob@localhost/devices", None, "");
    assert_eq!(status, 200);
    let (_bob_phone, _) = bob.link_device(&server, "phone");
    alice.send(&bob.address, "hello");
    // alice has now seen bob's list version 2. The server tries to hand out version 1 again.
    let store = SqliteStore::open(&server.data.join("sotto.db")).expect("store");
    let stored = store.device_list("bob@localhost").expect("list").expect("bob");
    assert_eq!(stored.version, 2);
    let body = base64_decode(v1["device_list"]["body"].as_str().expect("body"));
    let signature = base64_decode(v1["device_list"]["signature"].as_str().expect("sig"));
    let replace = |body: Vec<u8>, signature: Vec<u8>, expected: u64| {
        let list =
            DeviceList::verify(&SignedList { body: body.clone(), signature: signature.clone() })
                .ok();
        let record = ListRecord {
            version: expected + 1,
            identity_key: list.as_ref().map(|l| l.identity_key.clone()).unwrap_or_default(),
            recovery_key: list.as_ref().map(|l| l.recovery_key.clone()).unwrap_or_default(),
            operator_key: None,
            body,
            signature,
        };
        store.update_devices("bob@localhost", expected, &record, None, &[], 1).expect("tamper");
    };
    replace(body, signature, 2);
    assert_eq!(alice.err(&["group", "create", "g1", "--members", "bob@localhost"]), "untrusted");
    // An unsigned (zeroed signature) copy of the current list.
    replace(stored.body.clone(), vec![0; 64], 3);
    assert_eq!(alice.err(&["group", "create", "g2", "--members", "bob@localhost"]), "untrusted");
    // The genuine list is accepted again.
    replace(stored.body, stored.signature, 4);
    alice.ok(&["group", "create", "g3", "--members", "bob@localhost"]);
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).expect("base64")
}

#[test]
fn recovery_takes_the_account_back_and_contacts_see_the_key_change() {
    let server = open_server();
    let (alice, recovery_key) = User::register_with_recovery("alice", &server);
    let lost = alice.ok(&["whoami"]);
    let bob = User::register("bob", &server, "");
    let carol = User::register("carol", &server, "");
    let first = alice.send(&bob.address, "before losing the phone");
    let old_chat_id = first["chat"].as_str().expect("chat id").to_string();
    alice.ok(&["group", "create", "team", "--members", "bob@localhost,carol@localhost"]);
    bob.sync();
    carol.sync();

    let fresh = User::new("alice");
    let wrong = "AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA";
    let args = |key: &str| {
        vec![
            "recover".to_string(),
            fresh.address.clone(),
            "--server".into(),
            server.url.clone(),
            "--recovery-key".into(),
            key.to_string(),
        ]
    };
    let run = |key: &str| {
        let a = args(key);
        fresh.run(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    for bad in [wrong, "not a key"] {
        let out = run(bad);
        assert!(!out.status.success());
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["error"]["code"], "invalid_input", "{v}");
        assert!(v["error"]["message"].as_str().expect("msg").contains("recovery key"), "{v}");
    }
    assert!(!fresh.home.join("sotto.db").exists() || fresh.err(&["whoami"]) == "not_registered");

    let out = run(&recovery_key.to_lowercase());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let refused = alice.error(&["sync"]);
    assert_eq!(refused["code"], "device_revoked", "{refused}");

    fresh.send(&bob.address, "it's me again");
    let v = bob.ok(&["sync"]);
    assert!(common::texts(&v["messages"]).contains(&pair(&fresh, "it's me again")), "{v}");
    let notices: Vec<&str> =
        v["notices"].as_array().expect("notices").iter().filter_map(|n| n.as_str()).collect();
    assert!(notices.iter().any(|n| n.contains("alice@localhost's identity key changed")), "{v}");
    let history = bob.ok(&["history", &alice.address]);
    assert!(events(&history).iter().any(|e| e.contains("identity key changed")), "{history}");

    // The chats with the lost device are rebuilt with alice's new one, in one commit (so
    // nobody is shown alice leaving): the direct chat by bob's client as soon as it saw the
    // new list, the group by whichever member's client commits first.
    let old_chat = old_chat_id.as_str();
    let history = bob.ok(&["history", old_chat]);
    let removed = format!("removed alice@localhost/{}: no longer in", device_id(&lost));
    let added = format!("added alice@localhost/{}: new in", device_id(&fresh.ok(&["whoami"])));
    assert!(events(&history).iter().any(|e| e.starts_with(&removed)), "{history}");
    assert!(events(&history).iter().any(|e| e.starts_with(&added)), "{history}");
    bob.ok(&["send", "--group", old_chat, "anyone there?"]);
    carol.sync();
    let v = fresh.sync();
    assert!(v.contains(&pair(&bob, "anyone there?")), "{v:?}");
    bob.ok(&["send", "--group", "team", "team still here?"]);
    let v = fresh.sync();
    assert!(v.contains(&pair(&bob, "team still here?")), "{v:?}");
    let team = carol.ok(&["history", "team"]);
    let shown = events(&team);
    assert!(shown.iter().any(|e| e.ends_with("alice@localhost's devices were replaced")), "{team}");
    assert!(!shown.iter().any(|e| e.contains("removed alice")), "{team}");
    // Messages to alice's address reach her new device.
    bob.send(&alice.address, "found you");
    assert!(fresh.sync().contains(&pair(&bob, "found you")));
}

/// Runs `sotto-server --data DATA ARGS`.
fn operator_command(data: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(common::SERVER)
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .expect("run sotto-server")
}

#[test]
fn the_operator_wipes_managed_accounts_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let operator = |args: &[&str]| operator_command(&data, args);
    // The key is made while the server runs, which puts it in service without a restart.
    let server = Server::start_in(&data, "127.0.0.1:0", &["--registration", "open"]);
    let out = operator(&["operator-key"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(key.len(), 64);

    let managed = User::new("worker");
    let v = managed.ok(&["register", &managed.address, "--server", &server.url, "--managed"]);
    assert_eq!(v["operator_key"], key.as_str());
    let own = User::register("owner", &server, "");
    let wipe = |user: &User, id: &str| {
        operator(&["operator", "wipe", &user.address, id, "--server", &server.url])
    };
    let out = wipe(&own, "2");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has not accepted"), "{out:?}");
    own.sync();

    // Without --server, the command finds the server serving the data directory.
    let out = operator(&["operator", "wipe", &managed.address, "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(managed.err(&["sync"]), "device_wiped");
    assert!(all_bytes(&managed.home).is_empty());
}

#[test]
fn device_endpoints_refuse_hostile_input() {
    let server = open_server();
    let (alice, token, _) = common::api_device(&server, "alice@localhost", None);
    let post = |path: &str, body: Value| server.http("POST", path, Some(&token), &body.to_string());
    // A list that is not signed by the account's identity key.
    let other = IdentityKey::generate().expect("key");
    let forged = DeviceList::first(
        "alice@localhost".parse().expect("address"),
        &other,
        vec![1; 32],
        None,
        sotto_core::account::ListedDevice { key: vec![2; 32], added_at: 1, name: None },
        1,
    )
    .sign(&other);
    let list = json!({"body": b64(&forged.body), "signature": b64(&forged.signature)});
    let (s, v) = post("/v1/devices", json!({"device_list": list}));
    assert_eq!((s, common::code(&v)), (400, "invalid_device_list"), "{v}");
    let (s, v) = post("/v1/devices", json!({"device_list": {"body": "", "signature": ""}}));
    assert_eq!((s, common::code(&v)), (400, "invalid_device_list"), "{v}");
    // A wipe command with a garbage signature.
    let (s, v) =
        post("/v1/devices/wipe", json!({"command": {"body": b64(b"{}"), "signature": ""}}));
    assert_eq!((s, common::code(&v)), (401, "bad_signature"), "{v}");
    // Links: bad ids, unknown ids, oversized parts.
    let (s, v) = server.http("GET", "/v1/links/zz", None, "");
    assert_eq!((s, common::code(&v)), (400, "bad_request"), "{v}");
    let (s, v) = server.http("GET", &format!("/v1/links/{}", "00".repeat(16)), None, "");
    assert_eq!((s, common::code(&v)), (404, "unknown_link"), "{v}");
    let big = json!({"link_id": b64(&[1; 16]), "request": b64(&vec![0; 70_000])});
    let (s, v) = server.http("POST", "/v1/links", None, &big.to_string());
    assert_eq!((s, common::code(&v)), (400, "bad_request"), "{v}");
    // Recovery without the recovery key.
    let (s, v) = server.http(
        "POST",
        "/v1/recover",
        None,
        &json!({"address": "alice@localhost", "device": {"device_key": b64(&[3; 32]), "signature": b64(&[0; 64])}, "device_list": list}).to_string(),
    );
    assert_eq!((s, common::code(&v)), (401, "bad_signature"), "{v}");
    // The device still works.
    let key = sotto_core::mls::DeviceKey::generate().expect("key");
    assert!(login(&server, alice, &key).is_err());
    let (s, _) = server.http("GET", "/v1/queue", Some(&token), "");
    assert_eq!(s, 200);
}

#[test]
fn a_link_the_server_tampers_with_is_refused() {
    let server = open_server();
    let alice = User::register("alice", &server, "");
    // A mistyped code finds nothing to approve.
    let unknown = sotto_core::account::LinkSecret::generate().expect("secret").code();
    assert_eq!(alice.err(&["devices", "link", &unknown]), "unknown_link");
    assert_eq!(alice.err(&["devices", "link", "not a code"]), "invalid_input");

    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("new");
    let mut child = common::client()
        .arg("--home")
        .arg(&home)
        .args(["--json", "link", &alice.address, "--server", &server.url, "--timeout", "30"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start sotto link");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).expect("code line");
    let code: Value = serde_json::from_str(&line).expect("json");
    let secret = sotto_core::account::LinkSecret::parse(code["link_code"].as_str().expect("code"))
        .expect("code parses");
    // The server answers in the approving device's place, with keys of its own.
    let store = SqliteStore::open(&server.data.join("sotto.db")).expect("store");
    let forged = secret.seal(sotto_core::account::LinkPart::History, b"{}").expect("seal");
    store.reply_link(&secret.id(), Some(&forged), None).expect("tamper");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).expect("result");
    assert!(!child.wait().expect("exit").success());
    let v: Value = serde_json::from_str(&rest).expect("json");
    assert_eq!(v["error"]["code"], "untrusted", "{v}");
    assert!(!home.join("sotto.db").exists(), "nothing is set up from a forged response");
}

#[test]
fn after_a_revocation_the_remaining_devices_replace_their_keys() {
    let server = open_server();
    let [alice, bob] = ["alice", "bob"].map(|n| User::register(n, &server, ""));
    alice.send(&bob.address, "before");
    let (phone, _) = alice.link_device(&server, "phone");
    let (tablet, linked) = alice.link_device(&server, "tablet");
    phone.sync();
    tablet.sync();
    // Nothing is due yet.
    assert_eq!(phone.ok(&["sync"])["healed"], Value::Null);

    alice.ok(&["devices", "revoke", &device_id(&linked).to_string()]);
    let report = phone.ok(&["sync"]);
    let healed: Vec<&str> = report["healed"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let id = phone
        .ok(&["chats"])
        .as_array()
        .expect("chats")
        .iter()
        .find(|c| c["peer"] == bob.address.as_str())
        .map(|c| c["id"].as_str().unwrap_or_default().to_string())
        .expect("the chat with bob");
    assert_eq!(healed, vec![id.as_str()], "{report}");
    // Once is enough.
    assert_eq!(phone.ok(&["sync"])["healed"], Value::Null);

    // The chat goes on for everyone still in it.
    phone.send(&bob.address, "from the phone");
    assert!(bob.sync().contains(&pair(&alice, "from the phone")));
    bob.send(&alice.address, "to all of alice");
    assert!(phone.sync().contains(&pair(&bob, "to all of alice")));
    assert!(alice.sync().contains(&pair(&bob, "to all of alice")));
    assert!(!stored_texts(&tablet).contains(&"to all of alice".to_string()));
}

#[test]
fn a_wipe_ordered_before_the_account_is_deleted_still_reaches_the_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let operator = |args: &[&str]| operator_command(&data, args);
    let server = Server::start_in(&data, "127.0.0.1:0", &["--registration", "open"]);
    assert!(operator(&["operator-key"]).status.success());
    let [lost, kept] = ["lost", "kept"].map(User::new);
    lost.ok(&["register", &lost.address, "--server", &server.url, "--managed"]);
    kept.ok(&["register", &kept.address, "--server", &server.url, "--managed"]);
    lost.sync();
    kept.sync();
    // The operator wipes the lost laptop, then closes the account before it comes online.
    let out = operator(&["operator", "wipe", &lost.address, "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = operator(&["accounts", "delete", &lost.address, "--yes"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(lost.err(&["sync"]), "device_wiped");
    assert!(all_bytes(&lost.home).is_empty());
    // A suspended account without a wipe keeps its data.
    let out = operator(&["accounts", "suspend", &kept.address]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(kept.err(&["sync"]), "account_suspended");
    assert!(!all_bytes(&kept.home).is_empty());
}
