//! Disappearing messages, with the real server and CLI.

mod common;

use common::{Server, User, pair};

fn texts_in_db(user: &User) -> Vec<String> {
    let db = common::open_home_db(&user.home);
    let mut stmt = db.prepare("SELECT body FROM messages WHERE kind = 'text'").expect("query");
    let rows = stmt.query_map([], |r| r.get(0)).expect("rows");
    rows.collect::<Result<_, _>>().expect("bodies")
}

#[test]
fn a_timer_set_by_one_member_deletes_messages_everywhere() {
    let server = Server::start(&["--registration", "open", "--sweep-interval", "1s"]);
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|n| User::register(n, &server, ""));
    let group =
        alice.ok(&["group", "create", "team", "--members", "bob@localhost,carol@localhost"]);
    let group = group["id"].as_str().expect("id").to_string();
    bob.sync();
    carol.sync();

    let set = alice.ok(&["chat", "timer", &group, "3s"]);
    assert_eq!(set["timer_secs"], 3);
    alice.send_group(&group, "this will disappear");
    let v = bob.ok(&["sync"]);
    let events: Vec<&str> = v["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["kind"] == "event")
        .filter_map(|m| m["body"].as_str())
        .collect();
    assert!(events.contains(&"alice@localhost set disappearing messages to 3s"), "{v}");
    assert_eq!(common::texts(&v["messages"]), vec![pair(&alice, "this will disappear")]);
    let chats = bob.ok(&["chats"]);
    assert_eq!(chats[0]["timer_secs"], 3, "{chats}");
    let expiring = || -> i64 {
        let db = rusqlite::Connection::open(server.data.join("sotto.db")).expect("server db");
        db.query_row("SELECT COUNT(*) FROM queue WHERE expires_at IS NOT NULL", [], |r| r.get(0))
            .expect("count")
    };
    // alice's own copy (every device of the group gets one) leaves her queue as she syncs.
    alice.sync();
    assert_eq!(expiring(), 1, "carol's copy waits with its expiry");

    // bob turns it off; what is sent now stays.
    bob.ok(&["chat", "timer", &group, "off"]);
    alice.sync();
    alice.send_group(&group, "this stays");
    bob.sync();
    std::thread::sleep(std::time::Duration::from_secs(4));

    for member in [&alice, &bob] {
        assert_eq!(member.history(&group), vec![pair(&alice, "this stays")]);
        assert!(!texts_in_db(member).contains(&"this will disappear".to_string()));
    }
    // carol was offline the whole time: her undelivered copy expired on the server.
    assert_eq!(expiring(), 0, "the server still holds an expired message");
    let got = carol.sync();
    assert_eq!(got, vec![pair(&alice, "this stays")]);
    assert_eq!(carol.history(&group), vec![pair(&alice, "this stays")]);
    assert_eq!(alice.err(&["chat", "timer", &group, "soon"]), "invalid_input");

    // A file sent with a timer goes from the server with its message.
    alice.ok(&["chat", "timer", &group, "2s"]);
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("note.txt");
    std::fs::write(&file, b"burn after reading").expect("write");
    alice.ok(&["send-file", "--group", &group, file.to_str().expect("path")]);
    let blobs = || std::fs::read_dir(server.data.join("blobs")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(blobs(), 1);
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert_eq!(blobs(), 0, "the file outlived its message on the server");
}
