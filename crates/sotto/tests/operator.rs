//! Operating a server, with the real `sotto-server` binary: listing accounts and their
//! devices, listing and withdrawing invites, one serving process per data directory, the
//! account lifecycle through the admin API and on a stopped server's data directory, the
//! audit log and the metrics.

mod common;

use std::process::{Command, Output};

use common::{SERVER, Server, User};
use serde_json::Value;

fn admin(server: &Server, args: &[&str]) -> Output {
    Command::new(SERVER).arg("--data").arg(&server.data).args(args).output().expect("run")
}

fn admin_json(server: &Server, args: &[&str]) -> Value {
    let out = admin(server, args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn accounts_and_invites_are_listed_and_invites_withdrawn() {
    let server = Server::start(&[]);
    let three = server.invite(&["--uses", "3"]);
    let alice = User::register("alice", &server, &three);
    let _bob = User::register("bob", &server, &three);
    let (_laptop, _) = alice.link_device(&server, "laptop");

    // Accounts, with their devices: what `operator wipe` needs.
    let accounts = admin_json(&server, &["accounts", "list", "--json"]);
    let listed: Vec<(&str, u64)> = accounts
        .as_array()
        .expect("accounts")
        .iter()
        .map(|a| (a["address"].as_str().unwrap_or(""), a["devices"].as_u64().unwrap_or(0)))
        .collect();
    assert_eq!(listed, [("alice@localhost", 2), ("bob@localhost", 1)]);
    let shown = admin_json(&server, &["accounts", "show", "alice@localhost", "--json"]);
    let ids: Vec<u64> = shown["device_list"]
        .as_array()
        .expect("devices")
        .iter()
        .filter_map(|d| d["device_id"].as_u64())
        .collect();
    assert_eq!(ids.len(), 2, "{shown}");
    assert_eq!(shown["managed"], false);
    let people = admin(&server, &["accounts", "list"]);
    assert!(
        String::from_utf8_lossy(&people.stdout).contains("alice@localhost  active; 2 device(s)")
    );
    let missing = admin(&server, &["accounts", "show", "nobody@localhost"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no such account"));

    // Invites: the one with a use left is listed (never its code); withdrawn, it registers
    // nobody.
    let spare = server.invite(&[]);
    let invites = admin_json(&server, &["invite", "list", "--json"]);
    let ids: Vec<String> = invites
        .as_array()
        .expect("invites")
        .iter()
        .filter_map(|i| i["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids.len(), 2, "{invites}");
    let text = String::from_utf8_lossy(&admin(&server, &["invite", "list"]).stdout).to_string();
    assert!(!text.contains(&three) && !text.contains(&spare), "codes are never shown");
    for id in &ids {
        let out = admin(&server, &["invite", "revoke", id]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(admin_json(&server, &["invite", "list", "--json"]), serde_json::json!([]));
    let carol = User::new("carol");
    let refused =
        carol.err(&["register", &carol.address, "--server", &server.url, "--invite", &spare]);
    assert_eq!(refused, "invite_invalid");
    let again = admin(&server, &["invite", "revoke", &ids[0]]);
    assert!(!again.status.success());
}

#[test]
fn a_second_server_on_the_same_data_directory_is_refused() {
    let server = Server::start(&[]);
    let out = Command::new(SERVER)
        .arg("--data")
        .arg(&server.data)
        .args(["--listen", "127.0.0.1:0", "serve"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("another sotto-server (pid {}) serves", server.pid())),
        "{stderr}"
    );
    // Read-only subcommands still work beside the running server.
    assert!(admin(&server, &["accounts", "list"]).status.success());
    // A supervisor's checks: the process, then its store.
    assert_eq!(
        server.http("GET", "/healthz", None, ""),
        (200, serde_json::json!({"status": "ok"}))
    );
    assert_eq!(
        server.http("GET", "/readyz", None, ""),
        (200, serde_json::json!({"status": "ready"}))
    );
}

/// The account's state as `accounts show` gives it.
fn state(server: &Server, address: &str) -> Value {
    admin_json(server, &["accounts", "show", address, "--json"])["state"].clone()
}

#[test]
fn accounts_are_suspended_resumed_expired_renewed_and_deleted() {
    // Barred accounts are read again every second; a term's end has no grace here.
    let mut server = Server::start(&["--sweep-interval", "1s", "--account-grace", "0s"]);
    let invite = server.invite(&["--uses", "3"]);
    let alice = User::register("alice", &server, &invite);
    let bob = User::register("bob", &server, &invite);
    alice.send(&bob.address, "hello");
    assert_eq!(bob.sync(), [(alice.address.clone(), "hello".to_string())]);

    // Suspended: bob is refused, keeps his messages, and gets what was sent meanwhile once
    // resumed. Everything goes through the running server's admin API.
    let suspended = admin_json(&server, &["accounts", "suspend", &bob.address, "--json"]);
    assert_eq!(suspended["state"], "suspended", "{suspended}");
    assert_eq!(bob.err(&["sync"]), "account_suspended");
    assert_eq!(bob.history(&alice.address), [(alice.address.clone(), "hello".to_string())]);
    alice.send(&bob.address, "while you were away");
    admin_json(&server, &["accounts", "resume", &bob.address, "--json"]);
    assert_eq!(bob.sync(), [(alice.address.clone(), "while you were away".to_string())]);

    // A term: once it ends, bob's devices are refused within a second, even with a token
    // issued before; renewing lets them back in at once.
    let termed =
        admin_json(&server, &["accounts", "term", &bob.address, "--valid-for", "2s", "--json"]);
    assert!(termed["valid_until"].as_u64().is_some(), "{termed}");
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert_eq!(state(&server, &bob.address), "expired");
    assert_eq!(bob.err(&["sync"]), "account_expired");
    let renewed =
        admin_json(&server, &["accounts", "renew", &bob.address, "--for", "30d", "--json"]);
    assert_eq!(renewed["state"], "active", "{renewed}");
    bob.sync();

    // An invite can give the accounts it creates a term.
    let termed_invite = server.invite(&["--valid-for", "90d"]);
    let carol = User::register("carol", &server, &termed_invite);
    let until = admin_json(&server, &["accounts", "show", &carol.address, "--json"])["valid_until"]
        .as_u64()
        .expect("a term");
    let now = sotto_core::unix_now();
    assert!((now + 89 * 86_400..=now + 91 * 86_400).contains(&until), "{until}");

    // A group with all three, before bob's account goes.
    let team = alice.ok(&[
        "group",
        "create",
        "team",
        "--members",
        &format!("{},{}", bob.address, carol.address),
    ])["id"]
        .as_str()
        .expect("id")
        .to_string();
    bob.sync();
    carol.sync();

    // Deleting asks for --yes; then bob is refused for good, keeps what he holds, and his
    // address cannot be taken again.
    let unsure = admin(&server, &["accounts", "delete", &bob.address]);
    assert!(!unsure.status.success());
    assert!(String::from_utf8_lossy(&unsure.stderr).contains("--yes"));
    assert_eq!(state(&server, &bob.address), "active");
    let deleted = admin_json(&server, &["accounts", "delete", &bob.address, "--yes", "--json"]);
    assert_eq!(deleted["state"], "deleted", "{deleted}");
    assert_eq!(bob.err(&["sync"]), "account_deleted");
    assert_eq!(bob.history(&alice.address).len(), 2);
    let (status, body) =
        server.http("GET", &format!("/v1/users/{}/devices", bob.address), None, "");
    assert_eq!((status, common::code(&body)), (403, "account_deleted"), "no devices listed");
    let again = User::new("bob");
    let code =
        again.err(&["register", &again.address, "--server", &server.url, "--invite", &invite]);
    assert_eq!(code, "address_taken");
    let resumed = admin(&server, &["accounts", "resume", &bob.address]);
    assert!(!resumed.status.success(), "a deleted account stays deleted");
    // The others go on: the group drops bob's devices (the directory's tombstone confirms the
    // deletion), and says so.
    alice.send_group(&team, "bob has left the company");
    assert_eq!(carol.sync(), [(alice.address.clone(), "bob has left the company".to_string())]);
    let events = alice.ok(&["history", &team]).to_string();
    assert!(events.contains("was deleted on the server"), "{events}");
    carol.send_group(&team, "noted");
    assert_eq!(alice.sync(), [(carol.address.clone(), "noted".to_string())]);

    // A wrong admin token is refused, and nothing changes.
    let wrong = Command::new(SERVER)
        .arg("--data")
        .arg(&server.data)
        .args(["accounts", "suspend", &alice.address])
        .env("SOTTO_ADMIN_TOKEN", "0".repeat(64))
        .output()
        .expect("run");
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("wrong or missing admin token"));
    assert_eq!(state(&server, &alice.address), "active");

    // Stopped, the same commands work on the data directory, and the server starts with
    // the change in force.
    assert!(server.terminate(std::time::Duration::from_secs(20)));
    let offline = admin_json(&server, &["accounts", "suspend", &alice.address, "--json"]);
    assert_eq!(offline["state"], "suspended");
    server.restart(&["--sweep-interval", "1s", "--account-grace", "0s"]);
    assert_eq!(alice.err(&["sync"]), "account_suspended");

    // The audit log has every change, with who made it, and no invite code.
    let log = admin_json(&server, &["audit", "--json"]);
    let lines = log.as_array().expect("lines");
    let actions: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| (l["action"].as_str().unwrap_or(""), l["subject"].as_str().unwrap_or("")))
        .filter(|(a, _)| a.starts_with("account."))
        .collect();
    assert_eq!(
        actions,
        [
            ("account.suspend", bob.address.as_str()),
            ("account.resume", bob.address.as_str()),
            ("account.term", bob.address.as_str()),
            ("account.renew", bob.address.as_str()),
            ("account.delete", bob.address.as_str()),
            ("account.suspend", alice.address.as_str()),
        ]
    );
    assert!(lines.iter().any(|l| l["actor"].as_str().is_some_and(|a| a.ends_with("(admin API)"))));
    assert!(
        lines.iter().any(|l| l["actor"].as_str().is_some_and(|a| a.ends_with("(data directory)")))
    );
    assert!(!log.to_string().contains(&invite));
}

/// Reads the admin API's address and token from the data directory.
fn admin_endpoint(server: &Server) -> (String, String) {
    let url = std::fs::read_to_string(server.data.join("admin.url")).expect("admin.url");
    let token = std::fs::read_to_string(server.data.join("admin.token")).expect("admin.token");
    (url.trim().trim_start_matches("http://").to_string(), token.trim().to_string())
}

/// A GET on the admin listener; the status and body (HTTP/1.0: never chunked).
fn admin_get(addr: &str, path: &str, token: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n")
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

#[test]
fn metrics_are_prometheus_text_behind_the_admin_token() {
    let server = Server::start(&[]);
    let invite = server.invite(&["--uses", "2"]);
    let alice = User::register("alice", &server, &invite);
    let bob = User::register("bob", &server, &invite);
    alice.send(&bob.address, "hi");
    let file = tempfile::NamedTempFile::new().expect("file");
    std::fs::write(file.path(), vec![7u8; 100_000]).expect("write");
    alice.ok(&["send-file", &bob.address, file.path().to_str().expect("path")]);
    let got = bob.sync();
    assert!(!got.is_empty());
    let (addr, token) = admin_endpoint(&server);
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let (status, _) = admin_get(&addr, "/metrics", "wrong");
    assert_eq!(status, 401);
    let (status, text) = admin_get(&addr, "/metrics", &token);
    assert_eq!(status, 200, "{text}");
    assert!(!text.contains(&alice.address) && !text.contains(&bob.address), "no per-user labels");

    // Parsed by the Prometheus project's own parser.
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        key = s.name + json.dumps(s.labels, sort_keys=True)
        out[key] = s.value
print(json.dumps(out))
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with prometheus_client (.ci/run installs python3-prometheus-client)");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("parse");
    assert!(out.status.success(), "the parser refused: {}", String::from_utf8_lossy(&out.stderr));
    let samples: std::collections::HashMap<String, f64> =
        serde_json::from_slice(&out.stdout).expect("json");
    let get = |k: &str| samples.get(k).copied().unwrap_or_else(|| panic!("no {k} in {samples:?}"));
    assert!(get("sotto_submissions_total{}") >= 2.0, "welcome and message");
    assert!(get("sotto_delivered_total{}") >= 1.0);
    assert_eq!(get("sotto_accounts{}"), 2.0);
    assert_eq!(get("sotto_devices{}"), 2.0);
    assert!(get("sotto_store_commit_seconds_count{}") >= 1.0);
    assert!(get("sotto_kt_epoch{}") >= 2.0, "two accounts published");
    assert!(get("sotto_file_received_bytes_total{}") >= 100_000.0, "the file, sealed");
    assert!(get("sotto_file_stored_bytes{}") >= 100_000.0);
    assert!(get(r#"sotto_http_requests_total{"route": "/v1/messages", "status": "200"}"#) >= 1.0);
    // The public listener does not serve it.
    let (status, _) = server.http("GET", "/metrics", None, "");
    assert_eq!(status, 404);
    // The metrics token opens /metrics and nothing else.
    let scraper = std::fs::read_to_string(server.data.join("metrics.token")).expect("token");
    let scraper = scraper.trim();
    assert_eq!(admin_get(&addr, "/metrics", scraper).0, 200);
    let refused = Command::new(SERVER)
        .arg("--data")
        .arg(&server.data)
        .args(["accounts", "list"])
        .env("SOTTO_ADMIN_TOKEN", scraper)
        .output()
        .expect("run");
    assert!(!refused.status.success(), "the metrics token is not an admin token");
}

/// `sotto-server ARGS config check --json` with `env`: its JSON, or its error.
fn config_check(
    data: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<Value, String> {
    let out = Command::new(SERVER)
        .arg("--data")
        .arg(data)
        .args(args)
        .args(["config", "check", "--json"])
        .envs(env.iter().copied())
        .output()
        .expect("run");
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("json"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

#[test]
fn settings_come_from_a_file_the_environment_and_the_command_line() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let file = dir.path().join("sotto.toml");
    let path = file.to_str().expect("path");
    std::fs::write(
        &file,
        "domain = \"file.example\"\nqueue_max_bytes = \"1M\"\nadmin-listen = \"off\"\n\
         trusted-proxy = [\"10.0.0.1\", \"10.0.0.2\"]\ndanger-allow-plain-http = true\n",
    )
    .expect("write");
    let from_file = config_check(&data, &["--config", path], &[]).expect("valid");
    assert_eq!(from_file["domain"], "file.example");
    assert_eq!(from_file["queue_max_bytes"], 1 << 20);
    assert_eq!(from_file["admin_listen"], Value::Null);
    assert_eq!(from_file["trusted_proxies"], serde_json::json!(["10.0.0.1", "10.0.0.2"]));
    // The environment wins over the file, and the command line over both.
    let env = config_check(&data, &["--config", path], &[("SOTTO_DOMAIN", "env.example")]);
    assert_eq!(env.expect("valid")["domain"], "env.example");
    let cli = config_check(
        &data,
        &["--config", path, "--domain", "cli.example"],
        &[("SOTTO_DOMAIN", "env.example")],
    );
    assert_eq!(cli.expect("valid")["domain"], "cli.example");
    // A list given on the command line replaces the file's.
    let proxies = config_check(&data, &["--config", path, "--trusted-proxy", "10.9.9.9"], &[]);
    assert_eq!(proxies.expect("valid")["trusted_proxies"], serde_json::json!(["10.9.9.9"]));

    // Mistakes are named.
    std::fs::write(&file, "listen = \"127.0.0.1:7700\"\nlisen = \"oops\"\n").expect("write");
    let unknown = config_check(&data, &["--config", path], &[]).expect_err("unknown key");
    assert!(unknown.contains("unknown setting \"lisen\""), "{unknown}");
    std::fs::write(&file, "queue_max_messages = 5\nqueue-max-messages = 7\n").expect("write");
    let twice = config_check(&data, &["--config", path], &[]).expect_err("twice");
    assert!(twice.contains("set twice"), "{twice}");
    std::fs::write(&file, "queue-max-bytes = \"lots\"\n").expect("write");
    let bad = config_check(&data, &["--config", path], &[]).expect_err("bad value");
    assert!(bad.contains("queue-max-bytes"), "{bad}");
    std::fs::write(&file, "listen = \"0.0.0.0:7700\"\n").expect("write");
    let plain = config_check(&data, &["--config", path], &[]).expect_err("plain HTTP");
    assert!(plain.contains("refusing to serve plain HTTP"), "{plain}");
    std::fs::write(&file, "listen = [").expect("write");
    let broken = config_check(&data, &["--config", path], &[]).expect_err("not TOML");
    assert!(broken.contains("is not valid TOML"), "{broken}");

    // The documented example is valid as it stands.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/deploy/sotto-server.toml");
    let documented = config_check(&data, &["--config", example], &[]).expect("the example");
    assert_eq!(documented["listen"], "127.0.0.1:7700");
}

#[test]
fn logs_can_be_json_lines() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().expect("dir");
    let mut child = Command::new(SERVER)
        .arg("--data")
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start");
    let mut lines = std::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let first = lines.next().expect("a log line").expect("read");
    let _ = child.kill();
    let _ = child.wait();
    let line: Value = serde_json::from_str(&first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert_eq!(line["level"], "INFO", "{line}");
    assert!(line["fields"]["message"].is_string(), "{line}");
}

fn server_cmd(data: &std::path::Path, args: &[&str]) -> Output {
    Command::new(SERVER).arg("--data").arg(data).args(args).output().expect("run")
}

#[test]
fn a_backup_taken_under_load_is_restored_and_the_clients_continue() {
    let dir = tempfile::tempdir().expect("dir");
    let mut server = Server::start(&["--registration", "open"]);
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|n| User::register(n, &server, ""));
    let id = alice.ok(&["group", "create", "team", "--members", "bob@localhost"])["id"]
        .as_str()
        .expect("id")
        .to_string();
    alice.send(&bob.address, "before");
    assert_eq!(bob.sync().len(), 1);

    // The backup runs while alice writes to the group.
    let writer = {
        let (home, id) = (alice.home.clone(), id.clone());
        std::thread::spawn(move || {
            for i in 0..8 {
                let out = common::client()
                    .arg("--home")
                    .arg(&home)
                    .args(["--json", "send", "--group", &id, &format!("load {i}")])
                    .output()
                    .expect("send");
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
            }
        })
    };
    let backup = dir.path().join("backup");
    let out = server_cmd(&server.data, &["backup", backup.to_str().expect("path"), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    writer.join().expect("writer");
    let taken: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(taken["files"].as_u64().expect("files") >= 4, "{taken}");
    let got = bob.sync();
    assert_eq!(got.len(), 8, "{got:?}");

    // After the backup: carol joins the group (commits the copy will not have: alice's, and
    // carol's first key update), everyone keeps up, then a message bob has not fetched when
    // the disk is lost. (A group change a member had not fetched would be lost too, and that
    // member could not read the group any more: docs/operating.md.)
    alice.ok(&["group", "add", &id, &carol.address]);
    alice.send_group(&id, "welcome carol");
    assert_eq!(carol.sync(), [(alice.address.clone(), "welcome carol".to_string())]);
    bob.sync();
    alice.sync();
    alice.send(&bob.address, "lost with the disk");

    // A restore needs the server stopped, checks the backup, and keeps what it replaces.
    let running = server_cmd(&server.data, &["restore", backup.to_str().expect("path")]);
    assert!(!running.status.success());
    assert!(String::from_utf8_lossy(&running.stderr).contains("needs the server stopped"));
    server.kill();
    let damaged = dir.path().join("damaged");
    std::fs::create_dir(&damaged).expect("dir");
    for entry in std::fs::read_dir(&backup).expect("read") {
        let entry = entry.expect("entry");
        if entry.path().is_file() {
            std::fs::copy(entry.path(), damaged.join(entry.file_name())).expect("copy");
        }
    }
    let mut kt = std::fs::read(damaged.join("kt.db")).expect("kt.db");
    let last = kt.len() - 1;
    kt[last] ^= 1;
    std::fs::write(damaged.join("kt.db"), kt).expect("write");
    let refused =
        server_cmd(&server.data, &["restore", damaged.to_str().expect("path"), "--replace"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("kt.db in the backup is damaged"));
    let over = server_cmd(&server.data, &["restore", backup.to_str().expect("path")]);
    assert!(String::from_utf8_lossy(&over.stderr).contains("--replace"));
    let restored = server_cmd(
        &server.data,
        &["restore", backup.to_str().expect("path"), "--replace", "--json"],
    );
    assert!(restored.status.success(), "{}", String::from_utf8_lossy(&restored.stderr));
    let restored: Value = serde_json::from_slice(&restored.stdout).expect("json");
    assert!(restored["previous"].as_str().is_some_and(|p| p.contains("replaced-")));
    server.restart(&["--registration", "open"]);

    // The clients log in again and go on: nothing processed comes back, new messages flow
    // both ways, and the group changes again though the copy predates carol.
    assert!(bob.sync().is_empty());
    alice.send(&bob.address, "after the restore");
    assert_eq!(bob.sync(), [(alice.address.clone(), "after the restore".to_string())]);
    bob.send_group(&id, "still here");
    assert_eq!(alice.sync(), [(bob.address.clone(), "still here".to_string())]);
    assert_eq!(carol.sync(), [(bob.address.clone(), "still here".to_string())]);
    alice.ok(&["group", "remove", &id, &carol.address]);
    alice.send_group(&id, "without carol");
    assert_eq!(bob.sync(), [(alice.address.clone(), "without carol".to_string())]);
    assert!(carol.sync().is_empty());
    let log = admin_json(&server, &["audit", "--json"]);
    assert!(log.to_string().contains("server.restore"), "{log}");
}

#[test]
fn completions_manual_pages_and_the_systemd_unit_come_with_the_binaries() {
    let dir = tempfile::tempdir().expect("dir");
    for (program, sub) in [(SERVER, "accounts"), (common::CLIENT, "send")] {
        for shell in ["bash", "zsh", "fish"] {
            let out = Command::new(program).args(["completions", shell]).output().expect("run");
            assert!(out.status.success(), "{program} {shell}");
            let script = String::from_utf8_lossy(&out.stdout);
            assert!(script.contains(sub), "{program} {shell} completion lacks {sub}");
        }
        let out = Command::new(program).arg("man").arg(dir.path()).output().expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    for page in ["sotto-server.1", "sotto-server-accounts-suspend.1", "sotto.1", "sotto-send.1"] {
        let text = std::fs::read_to_string(dir.path().join(page)).expect(page);
        assert!(text.contains(".TH"), "{page} is not a manual page");
    }
    let suspend =
        std::fs::read_to_string(dir.path().join("sotto-server-accounts-suspend.1")).expect("page");
    assert!(suspend.contains("account_suspended"), "the page carries the command's help");

    // The unit file is one systemd accepts without a warning (with the binary where it says).
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/deploy/sotto-server.service"
    ))
    .expect("unit")
    .replace("/usr/local/bin/sotto-server", SERVER);
    let path = dir.path().join("sotto-server.service");
    std::fs::write(&path, unit).expect("write");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (.ci/run installs systemd)");
    let said =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze: {said}");
}
