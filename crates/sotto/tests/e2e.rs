//! End to end: real `sotto-server`, real `sotto` processes, one home per user.

mod common;

use common::{Server, User, pair, texts};
use serde_json::Value;

#[test]
fn one_to_one_both_ways_and_offline_recipient() {
    let server = Server::start(&[]);
    let invite = server.invite(&["--uses", "3"]);
    let alice = User::register("alice", &server, &invite);
    let bob = User::register("bob", &server, &invite);
    let carol = User::register("carol", &server, &invite);

    let sent = alice.send(&bob.address, "hello bob");
    assert_eq!(sent["status"], "sent");
    assert_eq!(bob.sync(), vec![pair(&alice, "hello bob")]);
    bob.send(&alice.address, "hi alice");
    assert_eq!(alice.sync(), vec![pair(&bob, "hi alice")]);
    assert!(alice.sync().is_empty(), "a second sync brings nothing new");

    // carol is offline while both write to her.
    alice.send(&carol.address, "carol, from alice");
    bob.send(&carol.address, "carol, from bob");
    alice.send(&carol.address, "carol, again from alice");
    assert_eq!(
        carol.sync(),
        vec![
            pair(&alice, "carol, from alice"),
            pair(&bob, "carol, from bob"),
            pair(&alice, "carol, again from alice")
        ]
    );
    carol.send(&bob.address, "thanks bob");
    assert_eq!(bob.sync(), vec![pair(&carol, "thanks bob")]);

    // Both sides keep the same history of their direct chat.
    let expected = vec![pair(&alice, "hello bob"), pair(&bob, "hi alice")];
    assert_eq!(alice.history(&bob.address), expected);
    assert_eq!(bob.history(&alice.address), expected);

    let chats = carol.ok(&["chats"]);
    let peers: Vec<&str> =
        chats.as_array().expect("chats").iter().filter_map(|c| c["peer"].as_str()).collect();
    assert_eq!(peers.len(), 2);
    assert!(peers.contains(&"alice@localhost") && peers.contains(&"bob@localhost"));
}

#[test]
fn messages_survive_a_server_restart() {
    let mut server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    alice.send(&bob.address, "before the crash");
    server.kill();
    assert_eq!(bob.err(&["sync"]), "unreachable");
    server.restart(&["--registration", "open"]);
    alice.send(&bob.address, "after the restart");
    assert_eq!(
        bob.sync(),
        vec![pair(&alice, "before the crash"), pair(&alice, "after the restart")]
    );
}

#[test]
fn group_add_remove_leave() {
    let server = Server::start(&["--registration", "open"]);
    let [alice, bob, carol, dave] =
        ["alice", "bob", "carol", "dave"].map(|n| User::register(n, &server, ""));

    let group =
        alice.ok(&["group", "create", "team", "--members", "bob@localhost,carol@localhost"]);
    let id = group["id"].as_str().expect("id").to_string();
    assert_eq!(
        group["members"],
        serde_json::json!(["alice@localhost", "bob@localhost", "carol@localhost"])
    );
    alice.send_group(&id, "hello team");
    assert_eq!(bob.sync(), vec![pair(&alice, "hello team")]);
    assert_eq!(carol.sync(), vec![pair(&alice, "hello team")]);
    // The group's name travelled inside the encrypted messages.
    bob.send_group("team", "hi from bob");
    assert_eq!(carol.sync(), vec![pair(&bob, "hi from bob")]);
    assert_eq!(alice.sync(), vec![pair(&bob, "hi from bob")]);

    // carol is removed: she cannot read what follows, the others can.
    alice.ok(&["group", "remove", &id, "carol@localhost"]);
    alice.send_group(&id, "without carol");
    assert_eq!(bob.sync(), vec![pair(&alice, "without carol")]);
    assert!(carol.sync().is_empty());
    assert!(!carol.history(&id).iter().any(|(_, b)| b == "without carol"));
    let carol_chat = &carol.ok(&["chats"])[0];
    assert_eq!(carol_chat["state"], "removed");
    assert_eq!(carol.err(&["send", "--group", &id, "let me in"]), "not_a_member");

    // dave is added: he reads new messages, not old ones.
    alice.ok(&["group", "add", &id, "dave@localhost"]);
    bob.send_group(&id, "welcome dave");
    assert_eq!(dave.sync(), vec![pair(&bob, "welcome dave")]);
    assert_eq!(dave.history(&id), vec![pair(&bob, "welcome dave")]);
    assert_eq!(alice.sync(), vec![pair(&bob, "welcome dave")]);
    assert!(carol.sync().is_empty());

    // bob leaves; the next member to sync commits his removal.
    bob.ok(&["group", "leave", &id]);
    dave.sync();
    alice.sync();
    alice.send_group(&id, "bob is gone");
    assert_eq!(dave.sync(), vec![pair(&alice, "bob is gone")]);
    assert!(bob.sync().is_empty());
    let info = alice.ok(&["chats"]);
    let team =
        info.as_array().expect("chats").iter().find(|c| c["id"] == id.as_str()).expect("team");
    assert_eq!(team["members"], serde_json::json!(["alice@localhost", "dave@localhost"]));
    let events: Vec<String> = alice
        .ok(&["history", &id])
        .as_array()
        .expect("history")
        .iter()
        .filter(|m| m["kind"] == "event")
        .map(|m| m["body"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(events.contains(&"bob@localhost left".to_string()), "{events:?}");
}

#[test]
fn stale_commits_are_retried_after_catching_up() {
    let server = Server::start(&["--registration", "open"]);
    let [alice, bob, carol, dave] =
        ["alice", "bob", "carol", "dave"].map(|n| User::register(n, &server, ""));
    let id = alice.ok(&["group", "create", "race", "--members", "bob@localhost"])["id"]
        .as_str()
        .expect("id")
        .to_string();
    bob.sync();
    // alice moves the group on; bob, not yet synced, commits against the old epoch.
    alice.ok(&["group", "add", &id, "carol@localhost"]);
    let group = bob.ok(&["group", "add", &id, "dave@localhost"]);
    assert_eq!(
        group["members"],
        serde_json::json!([
            "alice@localhost",
            "bob@localhost",
            "carol@localhost",
            "dave@localhost"
        ])
    );
    bob.send_group(&id, "all four of us");
    for u in [&alice, &carol, &dave] {
        assert_eq!(u.sync(), vec![pair(&bob, "all four of us")], "{}", u.address);
    }
}

#[test]
fn live_delivery_over_websocket() {
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    alice.send(&bob.address, "queued before listening");
    // Three items: the event of bob's being added, then the two texts.
    let listener = bob.listen(&["--count", "3", "--timeout", "60"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    alice.send(&bob.address, "live");
    assert_eq!(common::listened_texts(listener), vec!["queued before listening", "live"]);
    assert!(bob.sync().is_empty(), "listen acknowledged what it showed");
}

#[test]
fn server_files_hold_no_plaintext() {
    let server = Server::start(&["--registration", "open"]);
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|n| User::register(n, &server, ""));
    let secrets = [
        "the-eagle-lands-at-midnight",
        "direct-reply-7f3a9c",
        "group-secret-b81d2e",
        "secret-group-name-91c",
    ];
    alice.send(&bob.address, secrets[0]);
    bob.sync();
    bob.send(&alice.address, secrets[1]);
    let id = alice.ok(&[
        "group",
        "create",
        secrets[3],
        "--members",
        "bob@localhost,carol@localhost",
    ])["id"]
        .as_str()
        .expect("id")
        .to_string();
    alice.send_group(&id, secrets[2]);
    // Leave some messages queued (carol has not synced) and some acknowledged (bob syncs).
    bob.sync();
    let mut scanned = 0;
    for entry in std::fs::read_dir(&server.data).expect("data dir") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("read");
        scanned += bytes.len();
        for s in secrets {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "{s:?} found in {}",
                path.display()
            );
        }
    }
    assert!(scanned > 10_000, "the database files were found and read ({scanned} bytes)");
    // The clients themselves did store the messages.
    assert!(carol.sync().iter().any(|(_, b)| b == secrets[2]));
}

#[test]
fn tls_with_a_pinned_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(
        path("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("write ext");
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let openssl = |args: Vec<String>| {
        let out = std::process::Command::new("openssl")
            .args(&args)
            .output()
            .expect("openssl must be installed (.ci/run installs it)");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let owned = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // A private CA, and a server certificate it signs.
    let mut ca = owned(&["req", "-x509"]);
    ca.extend(owned(&ec));
    ca.extend(owned(&["-days", "2", "-subj", "/CN=Sotto test CA", "-keyout"]));
    ca.extend([path("ca.key"), "-out".into(), path("ca.pem")]);
    openssl(ca);
    let mut csr = owned(&["req"]);
    csr.extend(owned(&ec));
    csr.extend(owned(&["-subj", "/CN=localhost", "-keyout"]));
    csr.extend([path("key.pem"), "-out".into(), path("leaf.csr")]);
    openssl(csr);
    openssl(vec![
        "x509".into(),
        "-req".into(),
        "-in".into(),
        path("leaf.csr"),
        "-CA".into(),
        path("ca.pem"),
        "-CAkey".into(),
        path("ca.key"),
        "-CAcreateserial".into(),
        "-days".into(),
        "2".into(),
        "-out".into(),
        path("cert.pem"),
        "-extfile".into(),
        path("leaf.ext"),
    ]);
    let (c, k) = (path("cert.pem"), path("key.pem"));
    let server = Server::start(&["--registration", "open", "--tls-cert", &c, "--tls-key", &k]);
    assert!(server.url.starts_with("https://"), "{}", server.url);

    // Without the CA the certificate is not trusted.
    let stranger = User::new("stranger");
    assert_eq!(
        stranger.err(&["register", "stranger@localhost", "--server", &server.url]),
        "unreachable"
    );

    let register = |name: &str| {
        let u = User::new(name);
        u.ok(&["register", &u.address, "--server", &server.url, "--ca-cert", &path("ca.pem")]);
        u
    };
    let alice = register("alice");
    let bob = register("bob");
    alice.send(&bob.address, "over TLS");
    assert_eq!(bob.sync(), vec![pair(&alice, "over TLS")]);

    // Live delivery over wss:// as well.
    let listener = bob.listen(&["--count", "1", "--timeout", "60"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    alice.send(&bob.address, "live over TLS");
    assert_eq!(common::listened_texts(listener), vec!["live over TLS"]);
}

#[test]
fn graceful_shutdown_with_live_listeners() {
    let mut server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    alice.send(&bob.address, "first");
    let listener = bob.listen(&["--count", "3", "--timeout", "60"]);
    std::thread::sleep(std::time::Duration::from_millis(700));
    // SIGTERM: the server closes the WebSocket and exits promptly, with success.
    assert!(server.terminate(std::time::Duration::from_secs(8)), "server did not stop in time");
    // The listener reconnects on its own once the server is back.
    server.restart(&["--registration", "open"]);
    alice.send(&bob.address, "second");
    assert_eq!(common::listened_texts(listener), vec!["first", "second"]);
}

#[test]
fn simultaneous_first_messages_converge_on_one_chat() {
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    // Both start the conversation before hearing from the other: two MLS groups exist.
    alice.send(&bob.address, "hi bob");
    bob.send(&alice.address, "hi alice");
    assert_eq!(alice.sync(), vec![pair(&bob, "hi alice")]);
    assert_eq!(bob.sync(), vec![pair(&alice, "hi bob")]);
    // From now on both send in the same one, and each side shows one conversation.
    let a = alice.send(&bob.address, "again from alice");
    let b = bob.send(&alice.address, "again from bob");
    assert_eq!(a["chat"], b["chat"]);
    alice.sync();
    bob.sync();
    for (me, peer) in [(&alice, &bob), (&bob, &alice)] {
        let chats = me.ok(&["chats"]);
        assert_eq!(chats.as_array().map(Vec::len), Some(1), "{chats}");
        assert_eq!(chats[0]["messages"], 4);
        let mut h = me.history(&peer.address);
        h.sort();
        let mut expected = vec![
            pair(&alice, "hi bob"),
            pair(&bob, "hi alice"),
            pair(&alice, "again from alice"),
            pair(&bob, "again from bob"),
        ];
        expected.sort();
        assert_eq!(h, expected);
    }
}

/// Runs `sotto --json ARGS` in `u`'s home as a device from before post-quantum chats: it
/// publishes classical key packages only and starts classical chats only.
fn as_classical_only(u: &User, args: &[&str]) -> Value {
    let out = common::client()
        .env("SOTTO_SUITES", "classical")
        .arg("--home")
        .arg(&u.home)
        .arg("--json")
        .args(args)
        .output()
        .expect("run sotto");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "sotto {args:?} failed: {stdout}");
    serde_json::from_str(&stdout).expect("JSON")
}

/// The chat `u` lists with `id` or, for a direct chat, with peer `id`.
fn chat(u: &User, id: &str) -> Value {
    let chats = u.ok(&["chats"]);
    chats
        .as_array()
        .expect("chats")
        .iter()
        .find(|c| c["id"] == id || c["peer"] == id)
        .unwrap_or_else(|| panic!("no chat {id} in {chats}"))
        .clone()
}

#[test]
fn post_quantum_and_classical_chats_side_by_side() {
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let carol = User::register("carol", &server, "");
    let bob = User::new("bob");
    as_classical_only(&bob, &["register", &bob.address, "--server", &server.url]);

    // Devices that all publish X-Wing key packages get a post-quantum chat.
    alice.send(&carol.address, "hello carol");
    assert_eq!(carol.sync(), vec![pair(&alice, "hello carol")]);
    assert_eq!(chat(&alice, &carol.address)["post_quantum"], true);
    assert_eq!(chat(&carol, &alice.address)["post_quantum"], true);

    // bob's device has published classical key packages only: chats that include it are
    // classical, and work.
    alice.send(&bob.address, "hello bob");
    let got = as_classical_only(&bob, &["sync"]);
    assert_eq!(texts(&got["messages"]), vec![pair(&alice, "hello bob")]);
    assert_eq!(chat(&alice, &bob.address)["post_quantum"], false);
    let members = "bob@localhost,carol@localhost";
    let mixed = alice.ok(&["group", "create", "mixed", "--members", members]);
    assert_eq!(mixed["post_quantum"], false, "{mixed}");
    let mixed = mixed["id"].as_str().expect("id").to_string();

    // bob's device is upgraded: its next sync publishes X-Wing key packages too, and the next
    // group with him is post-quantum.
    bob.sync();
    let pq = alice.ok(&["group", "create", "quantum", "--members", members]);
    assert_eq!(pq["post_quantum"], true, "{pq}");
    let pq = pq["id"].as_str().expect("id").to_string();

    // Both kinds keep working, in both directions; nothing changes suite on its own.
    alice.send_group(&mixed, "classical group");
    alice.send_group(&pq, "post-quantum group");
    for member in [&bob, &carol] {
        assert_eq!(
            member.sync(),
            vec![pair(&alice, "classical group"), pair(&alice, "post-quantum group")]
        );
        assert_eq!(chat(member, &mixed)["post_quantum"], false);
        assert_eq!(chat(member, &pq)["post_quantum"], true);
    }
    bob.send(&alice.address, "bob, still classical");
    bob.send_group(&pq, "bob, post-quantum");
    assert_eq!(
        alice.sync(),
        vec![pair(&bob, "bob, still classical"), pair(&bob, "bob, post-quantum")]
    );
    assert_eq!(chat(&alice, &bob.address)["post_quantum"], false);
    assert_eq!(carol.sync(), vec![pair(&bob, "bob, post-quantum")]);

    // A device linked later joins each chat in that chat's suite.
    let (laptop, _) = carol.link_device(&server, "laptop");
    laptop.sync();
    assert_eq!(chat(&laptop, &mixed)["post_quantum"], false);
    assert_eq!(chat(&laptop, &pq)["post_quantum"], true);
    alice.send_group(&mixed, "to every device, classical");
    alice.send_group(&pq, "to every device, post-quantum");
    let expected = vec![
        pair(&alice, "to every device, classical"),
        pair(&alice, "to every device, post-quantum"),
    ];
    assert_eq!(laptop.sync(), expected);
    assert_eq!(carol.sync(), expected);
}

#[test]
fn a_device_without_post_quantum_keys_joins_the_classical_chats() {
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let _bob = User::register("bob", &server, "");
    let dave = User::new("dave");
    as_classical_only(&dave, &["register", &dave.address, "--server", &server.url]);
    // Three post-quantum chats and three classical ones (with dave), in no particular order.
    let mut classical = Vec::new();
    for i in 0..3 {
        let pq = alice.ok(&["group", "create", &format!("pq{i}"), "--members", "bob@localhost"]);
        assert_eq!(pq["post_quantum"], true);
        let c = alice.ok(&["group", "create", &format!("c{i}"), "--members", "dave@localhost"]);
        assert_eq!(c["post_quantum"], false);
        classical.push(c["id"].as_str().expect("id").to_string());
    }
    // alice links a device of an older version: classical key packages only. The approval
    // does not wait for the chats it cannot join, and it joins every classical one.
    let started = std::time::Instant::now();
    let (old, linked) = alice.link_device_with(&server, "old", &[("SOTTO_SUITES", "classical")]);
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "{linked}");
    as_classical_only(&old, &["sync"]);
    for id in &classical {
        assert_eq!(chat(&old, id)["post_quantum"], false);
        alice.send_group(id, "to the old device too");
    }
    let got = as_classical_only(&old, &["sync"]);
    assert_eq!(texts(&got["messages"]).len(), 3, "{got}");
}
