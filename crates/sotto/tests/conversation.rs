//! Conversations as people use them, with the real server and real `sotto` processes:
//! replies, reactions, edits (out of order too), deletions with their files, receipts,
//! search and paging, renames, nicknames, notes to self, chat flags, export.

mod common;

use common::{Server, User, client, pair};
use serde_json::{Value, json};

/// The message with `body` in `user`'s history of `chat`.
fn find(user: &User, chat: &str, body: &str) -> Value {
    let history = user.ok(&["history", chat, "--limit", "1000"]);
    history
        .as_array()
        .expect("history")
        .iter()
        .rev()
        .find(|m| m["body"] == body)
        .unwrap_or_else(|| panic!("{body:?} not in {history}"))
        .clone()
}

/// The message with id `id` in `user`'s history of `chat`.
fn by_id(user: &User, chat: &str, id: &str) -> Value {
    let history = user.ok(&["history", chat, "--limit", "1000"]);
    history
        .as_array()
        .expect("history")
        .iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {history}"))
        .clone()
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().expect("id").to_string()
}

fn group(alice: &User, name: &str, members: &[&User]) -> String {
    let list: Vec<&str> = members.iter().map(|u| u.address.as_str()).collect();
    let v = alice.ok(&["group", "create", name, "--members", &list.join(",")]);
    let id = id_of(&v);
    for m in members {
        m.sync();
    }
    id
}

#[test]
fn replies_reactions_edits_and_deletes_reach_everyone() {
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    let carol = User::register("carol", &server, "");
    let team = group(&alice, "team", &[&bob, &carol]);

    let hello = id_of(&alice.send_group(&team, "hello team"));
    assert_eq!(bob.sync(), vec![pair(&alice, "hello team")]);
    carol.sync();

    // A reply quotes what it answers, on every side; a short id prefix names the message.
    let reply =
        bob.ok(&["send", "--group", "team", "--reply", &hello[..8], "hi @carol@localhost!"]);
    assert_eq!(reply["reply_to"]["id"], hello.as_str(), "{reply}");
    assert_eq!(reply["mentions"], json!(["carol@localhost"]));
    alice.sync();
    carol.sync();
    for user in [&alice, &carol] {
        let seen = find(user, &team, "hi @carol@localhost!");
        assert_eq!(seen["reply_to"]["id"], hello.as_str(), "{seen}");
        assert_eq!(seen["reply_to"]["sender"], alice.address.as_str());
        assert_eq!(seen["reply_to"]["text"], "hello team");
        assert_eq!(seen["mentions"], json!(["carol@localhost"]));
    }
    // Replying to a message of another chat is refused.
    alice.send(&bob.address, "direct");
    let direct_id = id_of(&find(&alice, &bob.address, "direct"));
    assert_eq!(
        alice.err(&["send", "--group", "team", "--reply", &direct_id, "x"]),
        "invalid_input"
    );

    // Reactions: one per account, the latest replaces the earlier, empty takes it back.
    carol.ok(&["react", &hello, "👍"]);
    bob.ok(&["react", &hello, "🎉"]);
    bob.ok(&["react", &hello, "❤️"]);
    alice.sync();
    let reactions = find(&alice, &team, "hello team")["reactions"].clone();
    assert_eq!(
        reactions,
        json!([{"from": "carol@localhost", "emoji": "👍"}, {"from": "bob@localhost", "emoji": "❤️"}])
    );
    carol.ok(&["react", &hello, "--remove"]);
    alice.sync();
    let reactions = find(&alice, &team, "hello team")["reactions"].clone();
    assert_eq!(reactions, json!([{"from": "bob@localhost", "emoji": "❤️"}]));
    assert_eq!(bob.err(&["react", &hello, "not an emoji"]), "invalid_input");

    // Only the sender edits; everyone sees the new text, marked edited.
    assert_eq!(bob.err(&["edit", &hello, "bob's version"]), "unknown_message");
    let edited = alice.ok(&["edit", &hello[..6], "hello whole team"]);
    assert_eq!(
        (edited["body"].as_str(), edited["edited"].as_bool()),
        (Some("hello whole team"), Some(true))
    );
    bob.sync();
    carol.sync();
    for user in [&alice, &bob, &carol] {
        let m = by_id(user, &team, &hello);
        assert_eq!(
            (m["body"].as_str(), m["edited"].as_bool()),
            (Some("hello whole team"), Some(true))
        );
        // The reply's quote follows the edit.
        let r = find(user, &team, "hi @carol@localhost!");
        assert_eq!(r["reply_to"]["text"], "hello whole team");
    }

    // Only the sender deletes; a tombstone is left everywhere, and reactions go with it.
    assert_eq!(carol.err(&["delete", &hello]), "unknown_message");
    let gone = alice.ok(&["delete", &hello]);
    assert_eq!((gone["deleted"].as_bool(), gone["body"].as_str()), (Some(true), Some("")));
    bob.sync();
    carol.sync();
    for user in [&alice, &bob, &carol] {
        let m = by_id(user, &team, &hello);
        assert_eq!(m["deleted"], true, "{m}");
        assert_eq!(m["body"], "");
        assert!(m.get("reactions").is_none(), "{m}");
        assert!(find(user, &team, "hi @carol@localhost!")["reply_to"].get("text").is_none());
    }
    assert_eq!(alice.err(&["edit", &hello, "back again"]), "invalid_input");
    assert_eq!(bob.err(&["react", &hello, "👍"]), "invalid_input");
    // Nothing of it failed anywhere.
    for user in [&alice, &bob, &carol] {
        let v = user.ok(&["sync"]);
        assert_eq!(v["failures"], json!([]), "{v}");
    }
}

#[test]
fn edits_arriving_out_of_order_end_on_the_latest() {
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    let (laptop, _) = alice.link_device(&server, "laptop");
    alice.send(&bob.address, "first draft");
    bob.sync();
    laptop.sync();
    let id = id_of(&find(&bob, &alice.address, "first draft"));

    // The phone's edit is written down and sealed, and the phone dies before it reaches the
    // server; the laptop edits later, and its edit arrives first.
    let crashed = client()
        .env("SOTTO_FAILPOINT", "before-submit")
        .arg("--home")
        .arg(&alice.home)
        .args(["--json", "edit", &id, "second draft"])
        .output()
        .expect("run");
    assert!(!crashed.status.success(), "the failpoint must end the process");
    std::thread::sleep(std::time::Duration::from_millis(20));
    laptop.ok(&["edit", &id, "final text"]);
    bob.sync();
    assert_eq!(by_id(&bob, &alice.address, &id)["body"], "final text");
    // The phone's older edit arrives now (a sync sends what it recorded), and loses.
    alice.ok(&["sync"]);
    bob.sync();
    laptop.sync();
    for (user, chat) in [(&bob, &alice.address), (&laptop, &bob.address)] {
        let m = by_id(user, chat, &id);
        assert_eq!((m["body"].as_str(), m["edited"].as_bool()), (Some("final text"), Some(true)));
    }
    // The phone itself, which applied its own edit first, ends on the latest too.
    assert_eq!(by_id(&alice, &bob.address, &id)["body"], "final text");
}

#[test]
fn deleting_a_file_message_deletes_the_file_on_the_server() {
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("plan.txt");
    std::fs::write(&path, b"the plan").expect("write");
    let sent = alice.ok(&["send-file", &bob.address, path.to_str().expect("path")]);
    let id = id_of(&sent);
    bob.sync();
    let blobs = server.data.join("blobs");
    let count = || std::fs::read_dir(&blobs).map(|d| d.count()).unwrap_or(0);
    assert_eq!(count(), 1);
    alice.ok(&["delete", &id]);
    assert_eq!(count(), 0, "the blob is deleted from the server");
    bob.sync();
    let m = by_id(&bob, &alice.address, &id);
    assert_eq!(m["deleted"], true);
    assert!(m.get("file").is_none(), "{m}");
    let out = dir.path().join("got");
    assert_eq!(bob.err(&["download", &id, "--out", out.to_str().expect("out")]), "invalid_input");
}

#[test]
fn receipts_move_messages_to_delivered_and_read() {
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    let first = id_of(&alice.send(&bob.address, "one"));
    assert_eq!(by_id(&alice, &bob.address, &first)["status"], "sent");
    // Bob's device received it: his sync sends a delivery receipt.
    bob.sync();
    let v = alice.ok(&["sync"]);
    assert!(v["updated"].as_array().expect("updated").iter().any(|m| m["id"] == first), "{v}");
    let m = by_id(&alice, &bob.address, &first);
    assert_eq!(
        (m["status"].as_str(), m["delivered_to"].clone()),
        (Some("delivered"), json!(["bob@localhost"]))
    );
    assert_eq!(bob.ok(&["chats"])[0]["unread"], 1);
    // Read receipts are off by default: reading tells nobody.
    assert_eq!(bob.ok(&["receipts"]), json!({"delivery": true, "read": false}));
    assert_eq!(bob.ok(&["read", &alice.address])["unread"], 0);
    alice.ok(&["sync"]);
    assert_eq!(by_id(&alice, &bob.address, &first)["status"], "delivered");
    // On, they do.
    bob.ok(&["receipts", "--read", "on"]);
    let second = id_of(&alice.send(&bob.address, "two"));
    bob.sync();
    bob.ok(&["read", &alice.address]);
    alice.ok(&["sync"]);
    let m = by_id(&alice, &bob.address, &second);
    assert_eq!(
        (m["status"].as_str(), m["read_by"].clone()),
        (Some("read"), json!(["bob@localhost"]))
    );
    // With delivery receipts off, nothing comes back.
    bob.ok(&["receipts", "--delivery", "off", "--read", "off"]);
    let third = id_of(&alice.send(&bob.address, "three"));
    bob.sync();
    bob.ok(&["read", &alice.address]);
    alice.ok(&["sync"]);
    assert_eq!(by_id(&alice, &bob.address, &third)["status"], "sent");
    // Receipts are messages like any other: they never show in a chat.
    let history = bob.ok(&["history", &alice.address]);
    assert_eq!(history.as_array().map(Vec::len), Some(3 + 1), "{history}");
}

#[test]
fn a_group_message_is_delivered_once_every_member_has_it() {
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    let carol = User::register("carol", &server, "");
    let team = group(&alice, "team", &[&bob, &carol]);
    let id = id_of(&alice.send_group(&team, "to both"));
    bob.sync();
    alice.ok(&["sync"]);
    let m = by_id(&alice, &team, &id);
    assert_eq!(
        (m["status"].as_str(), m["delivered_to"].clone()),
        (Some("sent"), json!(["bob@localhost"]))
    );
    carol.sync();
    alice.ok(&["sync"]);
    assert_eq!(by_id(&alice, &team, &id)["status"], "delivered");
}

#[test]
fn search_and_paging() {
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    let carol = User::register("carol", &server, "");
    alice.send(&bob.address, "Meeting at the café tomorrow");
    alice.send(&carol.address, "the meeting moved");
    let secret = id_of(&alice.send(&carol.address, "meeting notes, secret"));
    for i in 0..5 {
        alice.send(&bob.address, &format!("filler {i}"));
    }
    // Words match as prefixes, without regard to case or accents, across chats.
    let found = alice.ok(&["search", "meet"]);
    let bodies: Vec<&str> =
        found.as_array().expect("results").iter().filter_map(|m| m["body"].as_str()).collect();
    assert_eq!(
        bodies,
        ["meeting notes, secret", "the meeting moved", "Meeting at the café tomorrow"]
    );
    assert_eq!(alice.ok(&["search", "CAFE"])[0]["body"], "Meeting at the café tomorrow");
    let only = alice.ok(&["search", "meeting", "--chat", &carol.address]);
    assert_eq!(only.as_array().map(Vec::len), Some(2), "{only}");
    assert_eq!(alice.ok(&["search", "meeting moved"]).as_array().map(Vec::len), Some(1));
    // Query syntax in the user's words is just words.
    assert_eq!(alice.ok(&["search", "meeting\" OR NEAR(x"]).as_array().map(Vec::len), Some(0));
    assert_eq!(alice.err(&["search", "  ?! "]), "invalid_input");
    // Edited and deleted messages are found by what they say now.
    alice.ok(&["edit", &secret, "meeting notes, public"]);
    assert_eq!(alice.ok(&["search", "secret"]), json!([]));
    assert_eq!(alice.ok(&["search", "public"])[0]["id"], secret.as_str());
    alice.ok(&["delete", &secret]);
    assert_eq!(alice.ok(&["search", "public"]), json!([]));
    // The receiving side searches too.
    bob.sync();
    assert_eq!(bob.ok(&["search", "café"])[0]["sender"], alice.address.as_str());

    // Paging back through a chat.
    let page = alice.ok(&["history", &bob.address, "-n", "2"]);
    let bodies: Vec<&str> =
        page.as_array().expect("page").iter().filter_map(|m| m["body"].as_str()).collect();
    assert_eq!(bodies, ["filler 3", "filler 4"]);
    let first = page[0]["id"].as_str().expect("id");
    let earlier = alice.ok(&["history", &bob.address, "-n", "3", "--before", first]);
    let bodies: Vec<&str> =
        earlier.as_array().expect("page").iter().filter_map(|m| m["body"].as_str()).collect();
    assert_eq!(bodies, ["filler 0", "filler 1", "filler 2"]);
    assert_eq!(alice.err(&["history", &bob.address, "--before", "nope"]), "unknown_message");
}

#[test]
fn renames_nicknames_notes_and_chat_flags() {
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    let carol = User::register("carol", &server, "");
    let team = group(&alice, "team", &[&bob]);

    // A rename is seen by every member, as an event.
    let renamed = bob.ok(&["group", "rename", &team, "dream team"]);
    assert_eq!(renamed["name"], "dream team");
    alice.sync();
    let chats = alice.ok(&["chats"]);
    assert_eq!(chats[0]["name"], "dream team", "{chats}");
    let events: Vec<String> = alice
        .ok(&["history", &team])
        .as_array()
        .expect("history")
        .iter()
        .filter(|m| m["kind"] == "event")
        .filter_map(|m| m["body"].as_str().map(str::to_owned))
        .collect();
    assert!(
        events.contains(&"bob@localhost renamed the group to dream team".to_string()),
        "{events:?}"
    );
    assert_eq!(alice.err(&["group", "rename", &team, ""]), "invalid_input");

    // A nickname is local: shown for the contact's messages and chat, usable as its name.
    alice.send(&carol.address, "hi");
    carol.sync();
    let named = carol.ok(&["contact", "name", &alice.address, "Al"]);
    assert_eq!(named, json!({"address": "alice@localhost", "nickname": "Al"}));
    let m = find(&carol, "Al", "hi");
    assert_eq!((m["sender_name"].as_str(), m["chat_name"].as_str()), (Some("Al"), Some("Al")));
    assert_eq!(carol.ok(&["chats"])[0]["title"], "Al");
    assert_eq!(
        carol.ok(&["contact", "list"]),
        json!([{"address": "alice@localhost", "nickname": "Al"}])
    );
    carol.ok(&["contact", "name", &alice.address]);
    assert!(find(&carol, &alice.address, "hi").get("sender_name").is_none());

    // Notes to self: sent to one's own address, kept on one's own devices (one is enough).
    let solo = bob.send(&bob.address, "note to me");
    assert_eq!(
        (solo["status"].as_str(), solo["chat_name"].as_str()),
        (Some("sent"), Some("Notes to self"))
    );
    assert_eq!(bob.history("notes"), vec![pair(&bob, "note to me")]);
    let (laptop, _) = alice.link_device(&server, "laptop");
    let note = alice.send(&alice.address, "buy milk");
    assert_eq!(note["chat_name"], "Notes to self");
    laptop.sync();
    assert_eq!(laptop.history("notes"), vec![pair(&alice, "buy milk")]);
    let chats = alice.ok(&["chats"]);
    let notes =
        chats.as_array().expect("chats").iter().find(|c| c["kind"] == "note").expect("notes chat");
    assert_eq!(notes["members"], json!(["alice@localhost"]));
    // Notes stay one's own.
    assert_eq!(alice.err(&["group", "add", "notes", &bob.address]), "invalid_input");
    laptop.send(&alice.address, "and bread");
    alice.sync();
    assert_eq!(alice.history("notes"), vec![pair(&alice, "buy milk"), pair(&alice, "and bread")]);

    // Pinned first; archived hidden until a new message from someone else; muted stays.
    bob.send(&carol.address, "from bob");
    carol.sync();
    carol.ok(&["chat", "pin", &alice.address]);
    let chats = carol.ok(&["chats"]);
    assert_eq!(
        (chats[0]["peer"].as_str(), chats[0]["pinned"].as_bool()),
        (Some("alice@localhost"), Some(true))
    );
    carol.ok(&["chat", "archive", &bob.address]);
    let listed = |all: bool| -> Vec<String> {
        let args: &[&str] = if all { &["chats", "--all"] } else { &["chats"] };
        carol
            .ok(args)
            .as_array()
            .expect("chats")
            .iter()
            .filter_map(|c| c["title"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(listed(false), ["alice@localhost"]);
    assert_eq!(listed(true), ["alice@localhost", "bob@localhost"]);
    bob.send(&carol.address, "you there?");
    carol.sync();
    assert_eq!(listed(false), ["alice@localhost", "bob@localhost"]);
    carol.ok(&["chat", "mute", &bob.address]);
    carol.ok(&["chat", "archive", &bob.address]);
    bob.send(&carol.address, "hello?");
    carol.sync();
    assert_eq!(listed(false), ["alice@localhost"], "a muted chat stays archived");

    // Deleting a chat here deletes its messages here only, until a new one arrives.
    let gone = carol.ok(&["chat", "delete", &alice.address]);
    assert_eq!(gone["deleted"], 1);
    assert_eq!(listed(true), ["bob@localhost"]);
    assert!(carol.history(&alice.address).is_empty());
    assert_eq!(alice.history(&carol.address), vec![pair(&alice, "hi")]);
    alice.send(&carol.address, "still here");
    carol.sync();
    assert_eq!(carol.history(&alice.address), vec![pair(&alice, "still here")]);
}

/// What a history shows of its texts and files, for comparing two devices.
fn shown(user: &User, chat: &str) -> Vec<Value> {
    let history = user.ok(&["history", chat, "--limit", "1000"]);
    history
        .as_array()
        .expect("history")
        .iter()
        .filter(|m| m["kind"] == "text" || m["kind"] == "file")
        .map(|m| {
            json!({
                "id": m["id"], "sender": m["sender"], "kind": m["kind"], "body": m["body"],
                "edited": m["edited"], "deleted": m["deleted"], "reply_to": m["reply_to"]["id"],
                "mentions": m["mentions"], "reactions": m["reactions"], "file": m["file"],
            })
        })
        .collect()
}

#[test]
fn a_linked_device_gets_the_same_history() {
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    let team = group(&alice, "team", &[&bob]);
    let first = id_of(&alice.send_group(&team, "first"));
    bob.sync();
    bob.ok(&["send", "--group", &team, "--reply", &first, "answer @alice@localhost"]);
    bob.ok(&["react", &first, "👍"]);
    let typo = id_of(&alice.send_group(&team, "tpyo"));
    alice.ok(&["edit", &typo, "typo"]);
    let oops = id_of(&alice.send_group(&team, "oops"));
    alice.ok(&["delete", &oops]);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, b"minutes").expect("write");
    alice.ok(&["send-file", "--group", &team, path.to_str().expect("path")]);
    alice.send(&bob.address, "direct one");
    bob.send(&alice.address, "direct two");
    alice.sync();
    bob.sync();

    let (laptop, linked) = alice.link_device(&server, "laptop");
    assert!(linked["history_messages"].as_u64().is_some_and(|n| n >= 7), "{linked}");
    laptop.sync();
    for chat in [team.as_str(), bob.address.as_str()] {
        let old = shown(&alice, chat);
        assert!(!old.is_empty());
        assert_eq!(shown(&laptop, chat), old, "chat {chat}");
    }
    // Nothing of the deleted message came along.
    let db = common::open_home_db(&laptop.home);
    let kept: i64 = db
        .query_row("SELECT COUNT(*) FROM messages WHERE body LIKE '%oops%'", [], |r| r.get(0))
        .expect("query");
    assert_eq!(kept, 0);
}

#[test]
fn one_change_of_an_account_is_told_once() {
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    group(&alice, "one", &[&bob]);
    group(&alice, "two", &[&bob]);
    alice.send(&bob.address, "hi");
    bob.sync();
    let (_laptop, _) = alice.link_device(&server, "laptop");
    let v = bob.ok(&["sync"]);
    let told: Vec<&str> = v["notices"]
        .as_array()
        .expect("notices")
        .iter()
        .filter_map(|n| n.as_str())
        .filter(|n| n.contains("linked a new device"))
        .collect();
    assert_eq!(told, ["alice@localhost linked a new device"], "{v}");
    assert!(
        !v["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .any(|m| m["body"].as_str().is_some_and(|b| b.contains("linked a new device"))),
        "{v}"
    );
    // Each chat keeps a quiet mark.
    for chat in ["one", "two", alice.address.as_str()] {
        let history = bob.ok(&["history", chat]);
        let marks = history
            .as_array()
            .expect("history")
            .iter()
            .filter(|m| m["kind"] == "mark" && m["body"] == "alice@localhost linked a new device")
            .count();
        assert_eq!(marks, 1, "{chat}: {history}");
    }
}

#[test]
fn chat_events_carry_the_servers_time_and_order() {
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    let carol = User::register("carol", &server, "");
    let v = alice.ok(&["group", "create", "later", "--members", &bob.address]);
    let id = id_of(&v);
    alice.send_group(&id, "right after");
    alice.ok(&["group", "add", &id, &carol.address]);
    alice.send_group(&id, "with carol");
    // Bob gets to all of it a second later: the events still read in the server's time.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    bob.sync();
    let history = bob.ok(&["history", &id]);
    let times: Vec<u64> =
        history.as_array().expect("history").iter().filter_map(|m| m["sent_at"].as_u64()).collect();
    assert!(times.len() >= 4, "{history}");
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "times go forward: {history}");
    let bodies: Vec<&str> =
        history.as_array().expect("history").iter().filter_map(|m| m["body"].as_str()).collect();
    assert_eq!(
        bodies,
        [
            "alice@localhost added you",
            "right after",
            "alice@localhost added carol@localhost",
            "with carol"
        ]
    );
}

#[test]
fn export_writes_chats_and_their_files() {
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    let carol = User::register("carol", &server, "");
    let hello = id_of(&alice.send(&bob.address, "hello bob"));
    bob.sync();
    bob.ok(&["send", &alice.address, "--reply", &hello, "hi \u{1b}[2J<script>"]);
    bob.ok(&["react", &hello, "👍"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("report.pdf");
    std::fs::write(&path, b"%PDF-1.7 the report").expect("write");
    bob.ok(&["send-file", &alice.address, path.to_str().expect("path")]);
    let gone = id_of(&bob.send(&alice.address, "regret"));
    bob.ok(&["delete", &gone]);
    alice.send(&carol.address, "to carol");
    alice.sync();

    let out = dir.path().join("export");
    let out_s = out.to_str().expect("out");
    let report = alice.ok(&["export", &bob.address, "--format", "json", "--out", out_s]);
    assert_eq!(
        (report["files"].as_u64(), report["chats"].as_array().map(Vec::len)),
        (Some(1), Some(1)),
        "{report}"
    );
    assert!(report["warning"].as_str().is_some_and(|w| w.contains("not encrypted")));
    let name = report["chats"][0].as_str().expect("name");
    let doc: Value =
        serde_json::from_slice(&std::fs::read(out.join(name)).expect("read export")).expect("json");
    assert_eq!(doc["chat"]["peer"], bob.address.as_str());
    let messages = doc["messages"].as_array().expect("messages");
    let file = messages.iter().find(|m| m["kind"] == "file").expect("file message");
    let saved = out.join(file["saved_as"].as_str().expect("saved_as"));
    assert_eq!(std::fs::read(saved).expect("saved file"), b"%PDF-1.7 the report");
    let reply = messages.iter().find(|m| m["reply_to"]["id"] == hello.as_str()).expect("reply");
    assert_eq!(reply["sender"], bob.address.as_str());
    assert!(
        messages
            .iter()
            .any(|m| m["id"] == gone.as_str() && m["deleted"] == true && m["body"] == "")
    );
    assert_eq!(
        messages.iter().find(|m| m["id"] == hello.as_str()).expect("hello")["reactions"][0]["emoji"],
        "👍"
    );

    // Markdown, every chat: readable, and nothing another user wrote controls a viewer.
    let all = alice.ok(&["export", "--all", "--out", out_s, "--no-files"]);
    assert_eq!(all["chats"].as_array().map(Vec::len), Some(2), "{all}");
    let page = all["chats"]
        .as_array()
        .expect("chats")
        .iter()
        .filter_map(|c| c.as_str())
        .map(|c| std::fs::read_to_string(out.join(c)).expect("page"))
        .find(|p| p.contains("hello bob"))
        .expect("page with bob");
    assert!(page.contains("> alice@localhost: hello bob"), "{page}");
    assert!(page.contains("&lt;script&gt;") && !page.contains('\u{1b}'), "{page}");
    assert!(page.contains("*(deleted)*") && !page.contains("regret"), "{page}");
    // A chat or --all must be named.
    let bare = alice.run(&["export", "--out", out_s]);
    assert!(!bare.status.success());
    assert!(String::from_utf8_lossy(&bare.stderr).contains("<CHAT>"));
}
