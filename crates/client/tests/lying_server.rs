//! A lying server: the real server's API in this process, its answers rewritten on the way to
//! real clients. Each attack must be refused or reported with the documented error code.

mod common;

use common::World;
use sotto_client::{Client, Error, RegisterOptions, Target};
use sotto_proto as proto;

fn options() -> RegisterOptions {
    RegisterOptions {
        passphrase: zeroize::Zeroizing::new("correct horse battery staple".into()),
        ..RegisterOptions::default()
    }
}

fn register(world: &World, name: &str) -> Result<Client, Error> {
    let home = world._dir.path().join(name);
    let connector = common::InMemory(world.fake.clone());
    Client::register_via(
        &connector,
        &home,
        "http://in-process",
        &format!("{name}@localhost"),
        &options(),
    )
    .map(|r| r.client)
}

/// Rewrites the directory keys `/v1/info` announces.
fn lie_about_directory(world: &World, lie: fn(&mut proto::ServerInfo)) {
    world.fake.script().rewrite = Some(Box::new(move |path, status, body| {
        if path == "/v1/info" && status == 200 {
            let mut info: proto::ServerInfo = serde_json::from_slice(body).expect("info");
            lie(&mut info);
            *body = serde_json::to_vec(&info).expect("json");
        }
    }));
}

#[test]
fn no_home_is_set_up_on_a_server_without_a_key_directory() {
    let world = World::new();
    // Left out, or announced with keys that cannot be keys.
    let lies: [fn(&mut proto::ServerInfo); 3] = [
        |info| info.kt = None,
        |info| {
            if let Some(kt) = info.kt.as_mut() {
                kt.signing_key.0.truncate(31);
            }
        },
        |info| {
            if let Some(kt) = info.kt.as_mut() {
                kt.vrf_key.0.clear();
            }
        },
    ];
    for (i, lie) in lies.into_iter().enumerate() {
        lie_about_directory(&world, lie);
        let name = format!("alice{i}");
        match register(&world, &name) {
            Err(e @ Error::Untrusted(_)) => {
                assert_eq!(e.code(), "untrusted");
                assert!(e.to_string().contains("publishes no key directory"), "{e}");
            }
            Err(e) => panic!("lie {i}: refused with the wrong error: {e}"),
            Ok(_) => panic!("lie {i}: a home was set up without a directory to check keys"),
        }
        // Nothing was left behind: the same home registers once the server tells the truth.
        world.fake.script().rewrite = None;
        register(&world, &name).expect("register on an honest answer");
    }
}

#[test]
fn a_message_that_reaches_no_one_is_not_sent() {
    let world = World::new();
    let mut alice = register(&world, "alice").expect("alice");
    alice.create_group("alone", &[]).expect("a group of one");
    let err = alice
        .send_text(&Target::Chat("alone".into()), "anyone there?")
        .expect_err("nobody to reach");
    assert_eq!(err.code(), "no_recipients", "{err}");
    let history = alice.history("alone", 10, None).expect("history");
    let texts: Vec<(&str, &str)> = history
        .iter()
        .filter(|m| m.kind == "text")
        .map(|m| (m.body.as_str(), m.status.as_str()))
        .collect();
    assert_eq!(texts, vec![("anyone there?", "failed")]);

    // The server reports every recipient revoked (`dropped`): the message reached no one.
    let mut bob = register(&world, "bob").expect("bob");
    alice.send_text(&Target::Address("bob@localhost".parse().expect("address")), "hi").expect("hi");
    bob.sync().expect("bob syncs");
    claim_revoked(&world, bob.account().device_id);
    let err = alice
        .send_text(&Target::Address("bob@localhost".parse().expect("address")), "still there?")
        .expect_err("every recipient was dropped");
    assert_eq!(err.code(), "no_recipients", "{err}");
}

/// The server answers every submission as if `device` were revoked (nothing queued for it).
fn claim_revoked(world: &World, device: u64) {
    world.fake.script().rewrite = Some(Box::new(move |path, status, body| {
        if path == "/v1/messages" && status == 200 {
            let mut resp: proto::SubmitResponse = serde_json::from_slice(body).expect("answer");
            resp.dropped = vec![device];
            *body = serde_json::to_vec(&resp).expect("json");
        }
    }));
}

/// The server leaves the next message it would hand out out of the page, for good.
fn hide_next_queued(world: &World) {
    let once = std::sync::atomic::AtomicBool::new(true);
    world.fake.script().rewrite = Some(Box::new(move |path, status, body| {
        if path.starts_with("/v1/queue?") && status == 200 {
            let mut page: proto::QueueResponse = serde_json::from_slice(body).expect("page");
            if !page.messages.is_empty() && once.swap(false, std::sync::atomic::Ordering::SeqCst) {
                page.messages.remove(0);
            }
            *body = serde_json::to_vec(&page).expect("json");
        }
    }));
}

/// Bob's chat history, as (kind, body) pairs.
fn shown(bob: &Client) -> Vec<(String, String)> {
    bob.history("alice@localhost", 50, None)
        .expect("history")
        .into_iter()
        .map(|m| (m.kind, m.body))
        .collect()
}

#[test]
fn messages_the_server_holds_back_or_reorders_are_reported() {
    let world = World::new();
    let mut alice = register(&world, "alice").expect("alice");
    let mut bob = register(&world, "bob").expect("bob");
    // What bob submits comes back to his own queue (the server sends a chat's messages to
    // all its devices): his receipts, and the key update he commits after joining. The
    // server here hides the first message of a page, which must be one of alice's.
    bob.receipts(Some(false), None).expect("receipts off");
    let to_bob = Target::Address("bob@localhost".parse().expect("address"));
    alice.send_text(&to_bob, "one").expect("one");
    bob.sync().expect("bob syncs");
    bob.sync().expect("bob takes his own copies");
    let alarms = |bob: &Client| {
        shown(bob)
            .into_iter()
            .filter(|(kind, body)| kind == "event" && body.contains("alice@localhost"))
            .filter(|(_, body)| body.contains("did not arrive") || body.contains("out of order"))
            .map(|(_, body)| body)
            .collect::<Vec<_>>()
    };
    assert!(alarms(&bob).is_empty(), "no alarm for the first messages seen");

    // The server drops the first message of bob's next page, for good.
    alice.send_text(&to_bob, "two").expect("two");
    alice.send_text(&to_bob, "three").expect("three");
    hide_next_queued(&world);
    bob.sync().expect("bob syncs");
    let texts: Vec<String> =
        shown(&bob).into_iter().filter(|(k, _)| k == "text").map(|(_, b)| b).collect();
    assert_eq!(texts, ["one", "three"]);
    assert_eq!(
        alarms(&bob),
        ["1 message from alice@localhost did not arrive: the server held it back or lost it"]
    );

    // The server swaps two messages: the later one shows a gap, the earlier one then arrives
    // out of order; both are shown.
    alice.send_text(&to_bob, "four").expect("four");
    alice.send_text(&to_bob, "five").expect("five");
    let once = std::sync::atomic::AtomicBool::new(true);
    world.fake.script().rewrite = Some(Box::new(move |path, status, body| {
        if path.starts_with("/v1/queue?") && status == 200 {
            let mut page: proto::QueueResponse = serde_json::from_slice(body).expect("page");
            if page.messages.len() >= 2 && once.swap(false, std::sync::atomic::Ordering::SeqCst) {
                let first = page.messages[0].message.clone();
                page.messages[0].message = page.messages[1].message.clone();
                page.messages[1].message = first;
            }
            *body = serde_json::to_vec(&page).expect("json");
        }
    }));
    bob.sync().expect("bob syncs");
    let texts: Vec<String> =
        shown(&bob).into_iter().filter(|(k, _)| k == "text").map(|(_, b)| b).collect();
    assert_eq!(texts, ["one", "three", "five", "four"]);
    let seen = alarms(&bob);
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen[2].contains("arrived out of order"), "{seen:?}");

    // The server claims bob's device was revoked (nothing queued) and hides the copy it did
    // queue: alice's message fails, and its number is not given back (the server may have
    // taken it), so bob's next message from alice shows the gap.
    claim_revoked(&world, bob.account().device_id);
    alice.send_text(&to_bob, "lost").expect_err("reached no one");
    world.fake.script().rewrite = None;
    alice.send_text(&to_bob, "six").expect("six");
    hide_next_queued(&world);
    bob.sync().expect("bob syncs");
    let texts: Vec<String> =
        shown(&bob).into_iter().filter(|(k, _)| k == "text").map(|(_, b)| b).collect();
    assert_eq!(texts.last().map(String::as_str), Some("six"));
    let seen = alarms(&bob);
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(seen[3].starts_with("1 message from alice@localhost did not arrive"), "{seen:?}");
}

fn address(s: &str) -> sotto_core::Address {
    s.parse().expect("address")
}

#[test]
fn a_frozen_or_replayed_directory_view_is_refused() {
    let world = World::new();
    let mut alice = world.client("alice");
    let _bob = world.client("bob");
    // The server keeps its answer about bob from now, to show it again later.
    let kept: std::sync::Arc<std::sync::Mutex<Option<Vec<u8>>>> = Default::default();
    let replay = kept.clone();
    world.fake.script().rewrite = Some(Box::new(move |path, status, body| {
        if path.starts_with("/v1/kt/lookup/bob@") && status == 200 {
            let mut kept = replay.lock().expect("kept");
            match kept.as_ref() {
                None => *kept = Some(body.clone()),
                Some(old) => *body = old.clone(),
            }
        }
    }));
    let bob = Target::Address(address("bob@localhost"));
    alice.send_text(&bob, "hi bob").expect("a fresh view");
    assert!(kept.lock().expect("kept").is_some(), "the answer was kept");

    // Two hours later, carol (new to bob) is shown the answer of then.
    world.clock.advance(2 * 3600 * 1000);
    let mut carol = world.client("carol");
    let err = carol.send_text(&bob, "hi bob").expect_err("a view two hours old");
    assert_eq!(err.code(), "untrusted", "{err}");
    assert!(err.to_string().contains("frozen or replayed"), "{err}");
    assert!(err.to_string().contains("2 h 0 min ago"), "{err}");
    let sent: Vec<String> = carol
        .history("bob@localhost", 10, None)
        .map(|h| h.into_iter().filter(|m| m.kind == "text").map(|m| m.status).collect())
        .unwrap_or_default();
    assert!(sent.iter().all(|s| s != "sent"), "nothing reached bob: {sent:?}");

    // The bound is the user's to set; an honest answer goes through.
    assert_eq!(carol.kt_max_age().expect("max age"), 3600);
    assert_eq!(carol.set_kt_max_age(10).expect_err("too short").code(), "invalid_input");
    carol.set_kt_max_age(1800).expect("set");
    world.fake.script().rewrite = None;
    carol.send_text(&bob, "hi bob").expect("a fresh view");
}

#[test]
fn members_catch_a_server_that_shows_them_different_directories() {
    use sotto_client::transport::Clock;
    use sotto_server::kt::KeyDirectory;

    let world = World::new();
    let mut alice = world.client("alice");
    let mut bob = world.client("bob");
    let to_bob = Target::Address(address("bob@localhost"));
    alice.send_text(&to_bob, "hi bob").expect("hi");
    bob.sync().expect("bob syncs");

    // The server keeps a second directory: a copy of the real one as it is now, under the
    // same keys, to show alice.
    let server = world._dir.path().join("server");
    let fork_dir = world._dir.path().join("fork");
    std::fs::create_dir(&fork_dir).expect("fork dir");
    for f in ["kt.key", "kt-vrf.key"] {
        std::fs::copy(server.join(f), fork_dir.join(f)).expect("copy key");
    }
    rusqlite::Connection::open(server.join("kt.db"))
        .expect("kt.db")
        .execute("VACUUM INTO ?1", [fork_dir.join("kt.db").to_str().expect("path")])
        .expect("copy directory");
    let clock = world.clock.clone();
    let fork = world
        .fake
        .runtime
        .block_on(KeyDirectory::open(
            &fork_dir,
            sotto_server::Clock::from_fn(move || clock.now_ms() / 1000),
        ))
        .expect("second directory");

    // Carol joins. The real directory holds her keys; the second one, an impostor's.
    let carol = address("carol@localhost");
    let _carol = world.client("carol");
    let label = sotto_core::kt::label(&carol);
    world.fake.runtime.block_on(fork.publish(label, vec![7; 64])).expect("impostor");
    // Bob looks carol up in the real directory.
    bob.send_text(&Target::Address(carol.clone()), "hi carol").expect("bob to carol");

    // Alice is shown the second directory.
    let handle = world.fake.runtime.handle().clone();
    world.fake.script().rewrite = Some(Box::new(move |path, status, body| {
        let (history, rest) = if let Some(rest) = path.strip_prefix("/v1/kt/history/") {
            (true, rest)
        } else if let Some(rest) = path.strip_prefix("/v1/kt/lookup/") {
            (false, rest)
        } else {
            return;
        };
        if status != 200 {
            return;
        }
        let label = sotto_core::kt::label(&address(rest));
        let found = handle.block_on(async {
            if history { fork.history(label).await } else { fork.lookup(label).await }
        });
        let (root, proof) = found.expect("second directory").expect("known");
        let answer = proto::KtProof {
            root: proto::SignedRoot {
                epoch: root.epoch,
                hash: proto::Bytes(root.hash),
                previous: proto::Bytes(root.previous),
                time: root.time,
                signature: proto::Bytes(root.signature),
            },
            proof: proto::Bytes(proof),
        };
        *body = serde_json::to_vec(&answer).expect("json");
    }));
    alice.sync().expect("alice sees nothing wrong on her own");
    world.fake.script().rewrite = None;

    // Her next message to bob tells him the root she was shown.
    alice.send_text(&to_bob, "still there?").expect("to bob");
    let report = bob.sync().expect("bob syncs");
    assert!(report.messages.iter().any(|m| m.body == "still there?"), "the message itself arrives");
    let notices: Vec<String> = report.notices.clone();
    assert!(
        notices.iter().any(|n| n.contains("different views") && n.contains("alice@localhost")),
        "{notices:?}"
    );
    // From now on bob takes no new keys from this server.
    let _dave = world.client("dave");
    let err = bob
        .send_text(&Target::Address(address("dave@localhost")), "hi dave")
        .expect_err("no new keys from a server caught lying");
    assert_eq!(err.code(), "untrusted", "{err}");
    assert!(err.to_string().contains("different views"), "{err}");
}

#[test]
fn nothing_more_goes_to_a_dropped_device_until_a_fresh_list_confirms() {
    let world = World::new();
    let mut alice = world.client("alice");
    let mut bob = world.client("bob");
    let mut carol = world.client("carol");
    alice.create_group("team", &["bob@localhost".into(), "carol@localhost".into()]).expect("group");
    let team = Target::Chat("team".into());
    alice.send_text(&team, "one").expect("one");
    bob.sync().expect("bob");
    carol.sync().expect("carol");

    // The server says bob's device was revoked, and hands out a device list for bob that
    // does not verify, so nothing can confirm it.
    let bob_device = bob.account().device_id;
    world.fake.script().rewrite = Some(Box::new(move |path, status, body| {
        if path == "/v1/messages" && status == 200 {
            let mut resp: proto::SubmitResponse = serde_json::from_slice(body).expect("answer");
            resp.dropped = vec![bob_device];
            *body = serde_json::to_vec(&resp).expect("json");
        }
        if path == "/v1/users/bob@localhost/devices" && status == 200 {
            let mut resp: proto::DevicesResponse = serde_json::from_slice(body).expect("list");
            resp.device_list.signature.0[0] ^= 1;
            *body = serde_json::to_vec(&resp).expect("json");
        }
    }));
    alice.send_text(&team, "two").expect("two reaches carol at least");
    let err = alice.send_text(&team, "three").expect_err("held");
    assert_eq!(err.code(), "untrusted", "{err}");
    // The rest of alice's client goes on meanwhile, and says why the chat waits.
    let report = alice.sync().expect("a sync is not stopped by a chat that cannot be checked");
    assert!(report.notices.iter().any(|n| n.contains("could not be checked")), "{report:?}");
    let texts = |c: &Client| -> Vec<String> {
        c.history("team", 50, None)
            .expect("history")
            .into_iter()
            .filter(|m| m.kind == "text")
            .map(|m| m.body)
            .collect()
    };
    carol.sync().expect("carol");
    assert_eq!(texts(&carol), ["one", "two"], "three was not encrypted to anyone");

    // Once the lists verify, bob's device is still listed: it stays, and three goes.
    world.fake.script().rewrite = None;
    let failed = alice
        .history("team", 50, None)
        .expect("history")
        .into_iter()
        .find(|m| m.body == "three")
        .expect("three is kept");
    assert_eq!(failed.status, "failed");
    alice.resend(&failed.id).expect("resend");
    bob.sync().expect("bob");
    carol.sync().expect("carol");
    assert_eq!(texts(&bob), ["one", "two", "three"]);
    assert_eq!(texts(&carol), ["one", "two", "three"]);
}

#[test]
fn a_device_moved_onto_another_branch_of_the_directory_notices() {
    let world = World::new();
    let mut alice = world.client("alice");
    let _bob = world.client("bob");
    alice.send_text(&Target::Address(address("bob@localhost")), "hi bob").expect("hi");
    // Two more accounts: the directory moves on by two epochs.
    let _carol = world.client("carol");
    let _dave = world.client("dave");
    // The server, with its own key, shows alice another root for the epoch in between.
    let key = std::fs::read(world._dir.path().join("server").join("kt.key")).expect("kt key");
    let key = sotto_core::account::IdentityKey::from_secret(&key).expect("key");
    world.fake.script().rewrite = Some(Box::new(move |path, status, body| {
        if path.starts_with("/v1/kt/roots?") && status == 200 {
            let mut page: proto::KtRoots = serde_json::from_slice(body).expect("roots");
            if let Some(first) = page.roots.first_mut() {
                let forged = sotto_core::kt::Root {
                    epoch: first.epoch,
                    hash: vec![7; 32],
                    previous: first.previous.0.clone(),
                    time: 0,
                };
                first.hash = proto::Bytes(forged.hash.clone());
                first.signature = proto::Bytes(forged.sign(&key));
            }
            *body = serde_json::to_vec(&page).expect("json");
        }
    }));
    let err = alice
        .send_text(&Target::Address(address("carol@localhost")), "hi carol")
        .expect_err("a branch that does not lead to the root shown");
    assert_eq!(err.code(), "untrusted", "{err}");
    assert!(err.to_string().contains("does not follow"), "{err}");
}

#[test]
fn messages_that_expired_while_a_timer_was_on_raise_no_alarm_after() {
    let world = World::new();
    let mut alice = register(&world, "alice").expect("alice");
    let mut bob = register(&world, "bob").expect("bob");
    let mut carol = register(&world, "carol").expect("carol");
    alice.create_group("team", &["bob@localhost".into(), "carol@localhost".into()]).expect("group");
    bob.sync().expect("bob");
    carol.sync().expect("carol");
    let team = Target::Chat("team".into());
    carol.send_text(&team, "c0").expect("c0");
    bob.sync().expect("bob");
    alice.set_timer("team", 60).expect("timer on");
    carol.sync().expect("carol");
    bob.sync().expect("bob");
    // A message of carol's is gone before bob fetches it (as an expired one would be); the
    // timer goes off meanwhile.
    carol.send_text(&team, "c1").expect("c1");
    alice.set_timer("team", 0).expect("timer off");
    hide_next_queued(&world);
    bob.sync().expect("bob");
    world.fake.script().rewrite = None;
    carol.sync().expect("carol");
    carol.send_text(&team, "c2").expect("c2");
    bob.sync().expect("bob");
    let history = bob.history("team", 50, None).expect("history");
    let alarms: Vec<&str> = history
        .iter()
        .filter(|m| m.kind == "event" && m.body.contains("did not arrive"))
        .map(|m| m.body.as_str())
        .collect();
    assert!(alarms.is_empty(), "{alarms:?}");
    assert!(history.iter().any(|m| m.body == "c2"));
}

/// The server answers every key package claim as if only classical packages were asked for.
fn hold_back_post_quantum_keys(world: &World) {
    world.fake.script().rewrite_request = Some(Box::new(|path, body| {
        if path == "/v1/keypackages/claim" {
            let mut claim: proto::ClaimRequest = serde_json::from_slice(body).expect("claim");
            claim.ciphersuites = Some(vec![proto::CLASSICAL_SUITE]);
            *body = serde_json::to_vec(&claim).expect("json");
        }
    }));
}

#[test]
fn a_server_that_holds_back_post_quantum_keys_is_caught() {
    let world = World::new();
    let mut alice = register(&world, "alice").expect("alice");
    let _bob = register(&world, "bob").expect("bob");
    let _carol = register(&world, "carol").expect("carol");
    let bob = Target::Address(address("bob@localhost"));

    // A new chat: bob's classical package says, under his signature, that he published
    // post-quantum ones too. alice refuses to fall back.
    hold_back_post_quantum_keys(&world);
    let err = alice.send_text(&bob, "hi").expect_err("a downgraded chat");
    assert_eq!(err.code(), "untrusted", "{err}");
    assert!(err.to_string().contains("held those back"), "{err}");
    let err = alice.create_group("team", &["bob@localhost".into()]).expect_err("downgrade");
    assert_eq!(err.code(), "untrusted", "{err}");

    // One device's package handed out as if it were several devices: refused.
    world.fake.script().rewrite_request = None;
    world.fake.script().rewrite = Some(Box::new(|path, status, body| {
        if path == "/v1/keypackages/claim" && status == 200 {
            let mut answer: proto::ClaimResponse = serde_json::from_slice(body).expect("answer");
            if let Some(first) = answer.key_packages.first().cloned() {
                answer.key_packages.push(first);
            }
            *body = serde_json::to_vec(&answer).expect("json");
        }
    }));
    let err = alice.send_text(&bob, "hi").expect_err("a repeated key package");
    assert_eq!(err.code(), "untrusted", "{err}");
    assert!(err.to_string().contains("twice or unasked"), "{err}");
    world.fake.script().rewrite = None;

    // Honest again: the chats are post-quantum.
    alice.send_text(&bob, "hi").expect("sent");
    let team = alice.create_group("team", &["bob@localhost".into()]).expect("group");
    assert!(team.post_quantum);
    let direct = alice.chats(true).expect("chats");
    assert!(direct.iter().any(|c| c.peer.as_deref() == Some("bob@localhost") && c.post_quantum));

    // Adding to a post-quantum group: a classical package handed out instead is refused.
    hold_back_post_quantum_keys(&world);
    let err = alice.add_members("team", &["carol@localhost".into()]).expect_err("wrong suite");
    assert_eq!(err.code(), "untrusted", "{err}");
    assert!(err.to_string().contains("not asked for"), "{err}");
    world.fake.script().rewrite_request = None;
    let team = alice.add_members("team", &["carol@localhost".into()]).expect("carol added");
    assert!(team.members.contains(&"carol@localhost".to_string()), "{team:?}");
}

/// Joining a group, a member's device list that does not check out is reported alone: the
/// join goes through and the other members' lists are taken.
#[test]
fn a_member_whose_device_list_is_forged_is_reported_alone_on_joining() {
    let world = World::new();
    let mut alice = world.client("alice");
    let mut bob = world.client("bob");
    let _carol = world.client("carol");
    let members = ["bob@localhost".to_string(), "carol@localhost".to_string()];
    alice.create_group("three", &members).expect("group");
    // From now on the server hands out carol's list with its signature broken.
    world.fake.script().rewrite = Some(Box::new(|path, status, body| {
        if path == "/v1/users/carol@localhost/devices" && status == 200 {
            let mut resp: proto::DevicesResponse = serde_json::from_slice(body).expect("list");
            resp.device_list.signature.0[0] ^= 1;
            *body = serde_json::to_vec(&resp).expect("json");
        }
    }));
    let report = bob.sync().expect("bob joins all the same");
    let about = |who: &str| report.notices.iter().filter(|n| n.contains(who)).count();
    assert_eq!(about("carol@localhost"), 1, "{:?}", report.notices);
    assert!(
        report.notices.iter().any(|n| n.contains("carol@localhost") && n.contains("is bad")),
        "{:?}",
        report.notices
    );
    assert_eq!(about("alice@localhost"), 0, "{:?}", report.notices);
    // Alice's list was taken: bob writes to the group and alice reads it.
    let chats = bob.chats(false).expect("chats");
    let group = chats.iter().find(|c| c.name.as_deref() == Some("three")).expect("joined");
    bob.send_text(&Target::Chat(group.id.clone()), "hello").expect("bob writes");
    let read = alice.sync().expect("alice syncs");
    assert!(read.messages.iter().any(|m| m.body == "hello"), "{read:?}");
}
