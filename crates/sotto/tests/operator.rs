//! Operating a server, with the real `sotto-server` binary: listing accounts and their
//! devices, listing and withdrawing invites, and one serving process per data directory.

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
    let ids: Vec<u64> = shown["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .filter_map(|d| d["device_id"].as_u64())
        .collect();
    assert_eq!(ids.len(), 2, "{shown}");
    assert_eq!(shown["managed"], false);
    let people = admin(&server, &["accounts", "list"]);
    assert!(String::from_utf8_lossy(&people.stdout).contains("alice@localhost  2 device(s)"));
    let missing = admin(&server, &["accounts", "show", "nobody@localhost"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no account nobody@localhost"));

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
