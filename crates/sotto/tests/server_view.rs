//! What the server keeps, read as someone holding a copy of its disk would read it: after
//! real conversations (direct chats, a group with members added and removed, a file, a linked
//! device), every table and file of the data directory and every log line is searched for the
//! social graph, for who sent what, for client addresses, and for message sizes that are not
//! one of the padding sizes.

mod common;

use std::path::{Path, PathBuf};

use common::{Server, User, pair};
use rusqlite::Connection;

fn is_bucket(len: usize) -> bool {
    sotto_core::content::padded_len(len) == len
}

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_copy_of_the_servers_disk_shows_no_social_graph() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("server.log");
    let mut server =
        Server::start_logged(&["--registration", "open", "--admin-listen", "127.0.0.2:0"], &log);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    let carol = User::register("carol", &server, "");
    let dave = User::register("dave", &server, "");
    let (laptop, _) = alice.link_device(&server, "laptop");

    // Direct chats, both ways.
    alice.send(&bob.address, "hello bob");
    assert_eq!(bob.sync(), vec![pair(&alice, "hello bob")]);
    bob.send(&alice.address, "hi alice");
    assert_eq!(alice.sync(), vec![pair(&bob, "hi alice")]);
    // A group, with a member added and one removed.
    let team = alice.ok(&["group", "create", "team", "--members", "bob@localhost,carol@localhost"]);
    alice.send_group("team", "to the team");
    assert_eq!(carol.sync(), vec![pair(&alice, "to the team")]);
    alice.ok(&["group", "add", "team", "dave@localhost"]);
    alice.ok(&["group", "remove", "team", "carol@localhost"]);
    bob.sync();
    bob.send_group("team", "after the changes");
    assert_eq!(dave.sync(), vec![pair(&bob, "after the changes")]);
    // A file.
    let file = alice.home.parent().expect("dir").join("notes.txt");
    std::fs::write(&file, vec![b'x'; 100_000]).expect("file");
    alice.ok(&["send-file", &bob.address, file.to_str().expect("path")]);
    // Things left waiting: bob, the laptop and carol do not fetch what came last.
    alice.send(&bob.address, "waiting for bob");
    alice.send_group("team", "waiting for the team");
    let chats = alice.ok(&["chats"]);
    let group_ids: Vec<Vec<u8>> = chats
        .as_array()
        .expect("chats")
        .iter()
        .map(|c| common::unhex(c["id"].as_str().expect("id")))
        .collect();
    assert!(group_ids.len() >= 2, "{chats}");
    assert!(group_ids.contains(&common::unhex(team["id"].as_str().expect("id"))));
    let devices: Vec<u64> = [&alice, &laptop, &bob, &carol, &dave]
        .iter()
        .map(|u| u.ok(&["whoami"])["device_id"].as_u64().expect("device id"))
        .collect();
    // The disk as it is: the server stops the hard way, nothing tidied first.
    server.kill();

    let db = Connection::open_with_flags(
        server.data.join("sotto.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the copy");

    // Queued copies: each sealed to its device, of a padding size, naming no sender and no
    // group, and no two alike.
    let columns: Vec<String> = db
        .prepare("SELECT name FROM pragma_table_info('queue')")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("columns");
    // (`id` is the device's queue number above the copy's place in that queue: per device,
    // like `seq`.)
    assert_eq!(columns, ["id", "device_id", "seq", "created_at", "expires_at", "message"]);
    let queued: Vec<(u64, Vec<u8>, i64)> = db
        .prepare("SELECT device_id, message, created_at FROM queue")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect())
        .expect("queue");
    assert!(queued.len() >= 4, "messages were left waiting: {}", queued.len());
    for (device, message, at) in &queued {
        assert!(sotto_core::queue::is_sealed(message), "a copy for device {device} is not sealed");
        assert!(is_bucket(message.len()), "a copy of {} bytes", message.len());
        for gid in &group_ids {
            assert!(!contains(message, gid), "a queued copy names its group");
        }
        assert_eq!(at % 60, 0, "queue times are kept to the minute: {at}");
    }
    // No two copies share their encrypted bytes; copies for different devices do not even
    // share their key encapsulation (a device's own copies do, for up to an hour: they are
    // in one queue anyway).
    for (i, (da, a, _)) in queued.iter().enumerate() {
        for (db, b, _) in &queued[i + 1..] {
            assert_ne!(a[45..77], b[45..77], "two copies alike");
            if da != db {
                assert!(!contains(b, &a[1..33]), "copies for two devices linked by their key");
            }
        }
    }
    let senders: i64 = db
        .query_row("SELECT COUNT(*) FROM submissions WHERE device_id != 0", [], |r| r.get(0))
        .expect("submissions");
    assert_eq!(senders, 0, "a submission record names its sender");

    // Groups: no membership in the clear, and the sealed rosters do not show device ids.
    let members: i64 =
        db.query_row("SELECT COUNT(*) FROM group_members", [], |r| r.get(0)).expect("members");
    assert_eq!(members, 0);
    let groups: Vec<(Vec<u8>, Option<Vec<u8>>)> = db
        .prepare("SELECT group_id, sealed FROM groups")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .expect("groups");
    assert_eq!(groups.len(), group_ids.len(), "{groups:?}");
    for (gid, sealed) in &groups {
        let sealed =
            sealed.as_ref().unwrap_or_else(|| panic!("group {gid:?} has no sealed roster"));
        for d in &devices {
            assert!(!contains(sealed, &d.to_be_bytes()), "device {d} readable in a roster");
        }
    }

    // No client address (127.0.0.1: the server listens on 127.0.0.2) in any file of the data
    // directory, nor in the log at debug level.
    let mut searched = 0;
    for path in files(&server.data).into_iter().chain([log.clone()]) {
        let bytes = std::fs::read(&path).expect("read");
        // (Clients connect over IPv4 here; a three-byte "::1" would turn up in random bytes.)
        let needle = "127.0.0.1";
        assert!(!contains(&bytes, needle.as_bytes()), "{needle} in {}", path.display());
        searched += 1;
    }
    assert!(searched > 5, "searched {searched} files");
    let log = std::fs::read_to_string(&log).expect("log");
    assert!(log.contains("/v1/auth/token"), "the log has its debug lines");
    for traffic in ["/v1/messages", "/v1/queue", "/v1/ws"] {
        assert!(!log.contains(traffic), "the log describes message traffic: {traffic}");
    }

    // The file is stored at its padded size.
    let blobs = files(&server.data.join("blobs"));
    assert_eq!(blobs.len(), 1, "{blobs:?}");
    let stored = std::fs::metadata(&blobs[0]).expect("blob").len();
    let chunks = stored.div_ceil(sotto_core::attachment::SEALED_CHUNK as u64);
    let padded = stored - chunks * sotto_core::attachment::TAG as u64;
    assert_eq!(sotto_core::attachment::padme(padded), padded, "a blob of {stored} bytes");
    assert!(padded >= 100_000);
}
