//! The command line as a new user meets it: what reaches the terminal, which chat a name
//! picks, closed pipes, and the wording of mistakes.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};

use common::{Server, User, client};

/// The JSON a `sotto --json` run printed.
fn json_of(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).expect("one JSON document on stdout")
}

/// Runs `sotto ARGS` in `user`'s home without --json; returns stdout, stderr and success.
fn human(user: &User, args: &[&str]) -> (String, String, bool) {
    let out = client().arg("--home").arg(&user.home).args(args).output().expect("run sotto");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (text(&out.stdout), text(&out.stderr), out.status.success())
}

#[test]
fn nothing_another_user_writes_reaches_the_terminal_raw() {
    let server = Server::start(&["--registration", "open"]);
    let bob = User::register("bob", &server, "");
    let carol = User::register("carol", &server, "");
    let forged = "ok\n[2026-12-03 15:14:00] team <bob@localhost> send me your recovery key";
    bob.send(&carol.address, forged);
    bob.send(&carol.address, "\u{1b}[31mred\u{1b}]0;title\u{7}\rover\u{202e}gnp.exe");
    bob.ok(&["group", "create", "evil\nname\u{1b}[2J", "--members", &carol.address]);
    let (out, _, ok) = human(&carol, &["sync"]);
    assert!(ok);
    assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "raw control characters: {out:?}");
    assert!(!out.contains('\u{202e}'), "a bidirectional override: {out:?}");
    // Every line starts with a timestamp or is indented: no message poses as a line of its own.
    for line in out.lines() {
        assert!(line.starts_with("[20") || line.starts_with("    "), "a forged line: {line:?}");
    }
    assert!(out.contains("\n    [2026-12-03 15:14:00] team <bob@localhost> send me"), "{out}");
    let (chats, _, _) = human(&carol, &["chats"]);
    assert!(!chats.chars().any(|c| c.is_control() && c != '\n'), "{chats:?}");
    assert!(chats.contains("evil\u{fffd}name\u{fffd}[2J (group)"), "{chats}");
}

#[test]
fn exact_names_win_and_ambiguous_ones_are_refused_with_the_candidates() {
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let carol = User::register("carol", &server, "");
    let first = alice.ok(&["group", "create", "first", "--members", &carol.address]);
    let first_id = first["id"].as_str().expect("id").to_string();
    // A group named like the start of another group's id: neither wins, both are named.
    let prefix = &first_id[..6];
    let named = alice.ok(&["group", "create", prefix, "--members", &carol.address]);
    assert_eq!(alice.err(&["send", "--group", prefix, "which one?"]), "ambiguous_chat");
    let named_id = named["id"].as_str().expect("id");
    let sent = alice.ok(&["send", "--group", named_id, "to the group named by the prefix"]);
    assert_eq!(sent["chat"], named["id"], "{sent}");
    // A group named like a contact's address, beside the direct chat with that contact.
    alice.send(&carol.address, "direct");
    alice.ok(&["group", "create", &carol.address, "--members", &carol.address]);
    let out = alice.run(&["history", &carol.address]);
    assert!(!out.status.success());
    let v = json_of(&out);
    assert_eq!(v["error"]["code"], "ambiguous_chat", "{v}");
    let message = v["error"]["message"].as_str().expect("message");
    assert_eq!(message.matches(", ").count() + 1, 2, "both candidates are named: {message}");
    // The full id always picks exactly one.
    let sent = alice.ok(&["send", "--group", &first_id, "by id"]);
    assert_eq!(sent["chat"], first["id"]);
}

#[test]
fn a_closed_pipe_ends_output_quietly() {
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    // More than a pipe holds, so the writer meets the closed end.
    let long = "x".repeat(60 * 1024);
    for _ in 0..3 {
        alice.send(&bob.address, &long);
    }
    let mut child = client()
        .arg("--home")
        .arg(&alice.home)
        .args(["history", &bob.address])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sotto history");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut first).expect("read");
    // The reader is dropped here, as `head -1` exits.
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status.code());
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn mistakes_are_worded_for_people() {
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    // A used home.
    let out = alice.run(&["register", "other@localhost", "--server", &server.url]);
    let v = json_of(&out);
    assert_eq!(v["error"]["code"], "already_registered");
    let message = v["error"]["message"].as_str().expect("message");
    assert!(
        !message.contains("an account an account") && !message.contains("the account an"),
        "{message}"
    );
    // A missing file, a missing passphrase file: a clear `io`, not `internal`.
    assert_eq!(alice.err(&["send-file", "bob@localhost", "/no/such/file"]), "io");
    let out = Command::new(common::CLIENT)
        .arg("--home")
        .arg(&alice.home)
        .args(["--json", "--passphrase-file", "/no/such/passphrase", "whoami"])
        .output()
        .expect("run");
    let v = json_of(&out);
    assert_eq!(v["error"]["code"], "io", "{v}");
    // Text on standard input that is not UTF-8.
    let mut child = client()
        .arg("--home")
        .arg(&alice.home)
        .args(["--json", "send", "alice@localhost", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run");
    child.stdin.take().expect("stdin").write_all(b"\xff\xfe not text").expect("write");
    let out = child.wait_with_output().expect("wait");
    let v = json_of(&out);
    assert_eq!(v["error"]["code"], "invalid_input", "{v}");
    // An unknown device names the command that lists them.
    let out = alice.run(&["devices", "revoke", "999"]);
    let v = json_of(&out);
    assert!(
        v["error"]["message"].as_str().is_some_and(|m| m.contains("`sotto devices list`")),
        "{v}"
    );
    // The server names itself.
    let out = Command::new(common::SERVER).arg("-V").output().expect("run");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("sotto-server "), "{out:?}");
}

/// The events of a chat's history, as their texts.
fn events(user: &User, chat: &str) -> Vec<String> {
    let v = user.ok(&["history", chat, "--limit", "1000"]);
    let list = v.as_array().or_else(|| v["messages"].as_array()).expect("messages");
    list.iter()
        .filter(|m| m["kind"] == "event")
        .filter_map(|m| m["body"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn the_member_who_changes_a_group_sees_it_too() {
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    let _carol = User::register("carol", &server, "");
    alice.ok(&["group", "create", "team", "--members", "bob@localhost,carol@localhost"]);
    alice.ok(&["group", "remove", "team", "carol@localhost"]);
    let seen = events(&alice, "team");
    for expected in [
        "alice@localhost added bob@localhost",
        "alice@localhost added carol@localhost",
        "alice@localhost removed carol@localhost",
    ] {
        assert!(seen.iter().any(|e| e == expected), "{expected:?} missing from {seen:?}");
    }
    // bob leaves; alice's next sync commits it, and she sees that he left.
    bob.sync();
    bob.ok(&["group", "leave", "team"]);
    alice.sync();
    let seen = events(&alice, "team");
    assert!(seen.iter().any(|e| e == "bob@localhost left"), "{seen:?}");
}

#[test]
fn one_message_that_cannot_be_processed_stops_nothing() {
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    let dave = User::register("dave", &server, "");
    alice.ok(&["group", "create", "g5", "--members", &bob.address]);
    alice.ok(&["group", "add", "g5", &dave.address]);
    alice.ok(&["group", "remove", "g5", &dave.address]);
    alice.send(&dave.address, "still reaches dave");
    let report = dave.ok(&["sync"]);
    assert_eq!(
        common::texts(&report["messages"]),
        vec![("alice@localhost".to_string(), "still reaches dave".to_string())],
        "{report}"
    );
    assert!(dave.sync().is_empty(), "nothing is processed twice");
}

#[test]
fn listen_waits_for_a_server_that_is_down_when_it_starts() {
    let mut server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    server.kill();
    let listener = bob.listen(&["--count", "1", "--timeout", "60"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    server.restart(&["--registration", "open"]);
    alice.send(&bob.address, "once the server is back");
    assert_eq!(common::listened_texts(listener), vec!["once the server is back"]);
}

#[test]
fn a_key_package_for_someone_else_is_refused_as_untrusted() {
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    let eve = User::register("eve", &server, "");
    let (bob_dev, eve_dev) = (
        bob.ok(&["whoami"])["device_id"].as_u64().expect("id"),
        eve.ok(&["whoami"])["device_id"].as_u64().expect("id"),
    );
    // The server hands out eve's key packages as bob's.
    let db = rusqlite::Connection::open(server.data.join("sotto.db")).expect("server db");
    db.execute(
        "UPDATE key_packages SET data = (SELECT data FROM key_packages WHERE device_id = ?2 LIMIT 1)
         WHERE device_id = ?1",
        [bob_dev, eve_dev],
    )
    .expect("swap");
    assert_eq!(alice.err(&["send", &bob.address, "for bob only"]), "untrusted");
}
