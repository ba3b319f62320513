//! Conformance tests every [`Store`] backend must pass. Add a backend to `backends!`: an
//! expression giving the store and a guard that must outlive it.

use super::*;

/// A device list record with placeholder keys.
pub(crate) fn list(version: u64) -> ListRecord {
    ListRecord {
        version,
        identity_key: vec![1; 32],
        recovery_key: vec![2; 32],
        operator_key: None,
        body: format!("list {version}").into_bytes(),
        signature: vec![3; 64],
    }
}

static FIRST: std::sync::LazyLock<ListRecord> = std::sync::LazyLock::new(|| list(1));

fn account<'a>(address: &'a str, key: &'a [u8], invite: Option<&'a [u8]>) -> NewAccount<'a> {
    NewAccount { address, device_key: key, invite_hash: invite, list: &FIRST }
}

fn registration_and_invites(store: &dyn Store) {
    store.create_invite(b"inv", 100, 2, None, 0).expect("invite");
    store.create_invite(b"old", 10, 5, None, 0).expect("invite");
    let alice = store.register(&account("alice@x", b"ka", Some(b"inv")), 50).expect("alice");
    assert!(matches!(
        store.register(&account("alice@x", b"kz", Some(b"inv")), 50),
        Err(StoreError::AddressTaken)
    ));
    assert!(matches!(
        store.register(&account("eve@x", b"ka", None), 50),
        Err(StoreError::DeviceKeyTaken)
    ));
    store.register(&account("bob@x", b"kb", Some(b"inv")), 50).expect("bob");
    assert!(matches!(
        store.register(&account("carol@x", b"kc", Some(b"inv")), 50),
        Err(StoreError::InviteUsedUp)
    ));
    assert!(matches!(
        store.register(&account("carol@x", b"kc", Some(b"old")), 50),
        Err(StoreError::InviteExpired)
    ));
    assert!(matches!(
        store.register(&account("carol@x", b"kc", Some(b"nope")), 50),
        Err(StoreError::InviteInvalid)
    ));
    // A refused registration leaves nothing behind.
    assert!(store.devices("carol@x").expect("devices").is_empty());
    let d = store.device(alice).expect("device").expect("exists");
    assert_eq!((d.address.as_str(), d.device_key.as_slice()), ("alice@x", &b"ka"[..]));
    assert_eq!(store.devices("alice@x").expect("devices"), vec![d]);

    // The operator's listings: accounts with their devices; invites not used up (the used-up
    // one is gone), withdrawn by an unambiguous start of their hash.
    let accounts = store.accounts().expect("accounts");
    let names: Vec<&str> = accounts.iter().map(|a| a.address.as_str()).collect();
    assert_eq!(names, ["alice@x", "bob@x"]);
    assert_eq!((accounts[0].devices, accounts[0].revoked, accounts[0].created_at), (1, 0, 50));
    let invites = store.invites().expect("invites");
    assert_eq!(invites.iter().map(|i| i.code_hash.as_slice()).collect::<Vec<_>>(), [&b"old"[..]]);
    assert_eq!((invites[0].uses_left, invites[0].expires_at), (5, 10));
    store.create_invite(b"oak", 100, 1, None, 0).expect("invite");
    assert_eq!(store.revoke_invite(b"o").expect("revoke"), 2, "ambiguous: nothing withdrawn");
    assert_eq!(store.invites().expect("invites").len(), 2);
    assert_eq!(store.revoke_invite(b"oa").expect("revoke"), 1);
    assert_eq!(store.revoke_invite(b"zz").expect("revoke"), 0);
    assert!(matches!(
        store.register(&account("dan@x", b"kd", Some(b"oak")), 50),
        Err(StoreError::InviteInvalid)
    ));
}

fn key_packages(store: &dyn Store) {
    let d = store.register(&account("kp@x", b"k1", None), 1).expect("register");
    let stock = store
        .add_key_packages(d, 3, &[b"a".to_vec(), b"b".to_vec()], Some(b"L"), false)
        .expect("add");
    assert_eq!(stock, vec![KeyPackageStock { ciphersuite: 3, remaining: 2, last_resort: true }]);
    let claim = |s: &dyn Store| s.claim_key_packages("kp@x", None, &[3]).expect("claim");
    assert_eq!(claim(store), vec![(d, b"a".to_vec())]);
    assert_eq!(claim(store), vec![(d, b"b".to_vec())]);
    assert_eq!(claim(store), vec![(d, b"L".to_vec())]);
    assert_eq!(claim(store), vec![(d, b"L".to_vec())], "last resort is kept");
    store.add_key_packages(d, 3, &[], Some(b"M"), false).expect("replace");
    assert_eq!(claim(store), vec![(d, b"M".to_vec())]);
    assert!(store.claim_key_packages("nobody@x", None, &[3]).expect("claim").is_empty());

    // Suites are kept apart: each has its own stock and last-resort package, and a claim
    // takes the first suite in the caller's order that the device has any package of.
    let stock = store.add_key_packages(d, 77, &[b"q".to_vec()], Some(b"Q"), false).expect("add pq");
    assert_eq!(
        stock,
        vec![
            KeyPackageStock { ciphersuite: 3, remaining: 0, last_resort: true },
            KeyPackageStock { ciphersuite: 77, remaining: 1, last_resort: true },
        ]
    );
    let pq_first = |s: &dyn Store| s.claim_key_packages("kp@x", None, &[77, 3]).expect("claim");
    assert_eq!(pq_first(store), vec![(d, b"q".to_vec())]);
    assert_eq!(pq_first(store), vec![(d, b"Q".to_vec())], "its own last resort, not M");
    assert_eq!(claim(store), vec![(d, b"M".to_vec())], "classical only: never a PQ package");
    let e = store.register(&account("kp2@x", b"k2", None), 1).expect("register");
    store.add_key_packages(e, 3, &[b"c".to_vec()], None, false).expect("add");
    assert_eq!(
        store.claim_key_packages("kp2@x", None, &[77, 3]).expect("claim"),
        vec![(e, b"c".to_vec())],
        "a device without PQ packages gives a classical one"
    );
    assert!(store.claim_key_packages("kp2@x", None, &[77]).expect("claim").is_empty());

    // Replacing drops the device's packages of that suite only.
    store.add_key_packages(e, 3, &[b"d".to_vec()], Some(b"E"), false).expect("add");
    store.add_key_packages(e, 77, &[b"p".to_vec()], None, false).expect("add");
    let stock = store.add_key_packages(e, 3, &[b"n".to_vec()], None, true).expect("replace");
    assert_eq!(
        stock,
        vec![
            KeyPackageStock { ciphersuite: 3, remaining: 1, last_resort: false },
            KeyPackageStock { ciphersuite: 77, remaining: 1, last_resort: false },
        ]
    );
    assert_eq!(
        store.claim_key_packages("kp2@x", None, &[3]).expect("claim"),
        vec![(e, b"n".to_vec())]
    );
}

fn queues_and_ordering(store: &dyn Store) {
    let a = store.register(&account("qa@x", b"qa", None), 1).expect("a");
    let b = store.register(&account("qb@x", b"qb", None), 1).expect("b");
    let (only_a, a_and_b, only_b, a_and_ghost) = ([a], [a, b], [b], [a, 999]);
    let commit = |epoch, msg: &'static [u8]| relay(&only_a, msg, Ordering::Advance(epoch));
    assert_eq!(store.submit(&commit(0, b"c0"), 1).expect("first commit").epoch, 1);
    assert!(matches!(
        store.submit(&commit(0, b"x"), 1),
        Err(StoreError::StaleEpoch { current: 1 })
    ));
    assert!(matches!(
        store.submit(&commit(5, b"x"), 1),
        Err(StoreError::StaleEpoch { current: 1 })
    ));
    let proposal = relay(&only_a, b"p", Ordering::AtEpoch(1));
    assert_eq!(store.submit(&proposal, 1).expect("proposal").epoch, 1);
    let app =
        Submission { welcome: Some((&only_b, b"w")), ..relay(&a_and_b, b"m1", Ordering::None) };
    let done = store.submit(&app, 1).expect("app");
    assert_eq!((done.epoch, done.recipients), (1, vec![a, b, b]));
    // An application message from an epoch the group has left is refused.
    let old_app = relay(&only_a, b"x", Ordering::NotBefore(0));
    assert!(matches!(store.submit(&old_app, 1), Err(StoreError::StaleEpoch { current: 1 })));
    let new_app = relay(&[], b"x", Ordering::NotBefore(1));
    assert_eq!(store.submit(&new_app, 1).expect("current epoch").epoch, 1);
    // One unknown recipient refuses the whole submission.
    let bad = relay(&a_and_ghost, b"z", Ordering::None);
    assert!(matches!(store.submit(&bad, 1), Err(StoreError::UnknownDevice(999))));

    let (msgs, more) = store.fetch(a, 0, 2, 0, PAGE_MAX_BYTES).expect("fetch");
    assert!(more);
    let bodies: Vec<&[u8]> = msgs.iter().map(|(_, m, _)| m.as_slice()).collect();
    assert_eq!(bodies, vec![&b"c0"[..], b"p"]);
    let (rest, more) = store.fetch(a, msgs[1].0, 10, 0, PAGE_MAX_BYTES).expect("fetch");
    assert!(!more);
    assert_eq!(rest.iter().map(|(_, m, _)| m.as_slice()).collect::<Vec<_>>(), vec![&b"m1"[..]]);
    assert!(msgs[0].0 < msgs[1].0 && msgs[1].0 < rest[0].0, "seq increases");
    // Each message carries when it was queued.
    assert!(msgs.iter().chain(&rest).all(|(_, _, at)| *at == 1));
    // b sees only its own queue.
    let (bq, _) = store.fetch(b, 0, 10, 0, PAGE_MAX_BYTES).expect("fetch");
    assert_eq!(bq.iter().map(|(_, m, _)| m.as_slice()).collect::<Vec<_>>(), vec![&b"m1"[..], b"w"]);
    // Acknowledging removes exactly what was acknowledged, and only from the own queue.
    assert_eq!(store.ack(a, msgs[1].0).expect("ack"), 2);
    assert_eq!(store.fetch(a, 0, 10, 0, PAGE_MAX_BYTES).expect("fetch").0.len(), 1);
    assert_eq!(store.fetch(b, 0, 10, 0, PAGE_MAX_BYTES).expect("fetch").0.len(), 2);
}

/// Every committed submission's copies reach the sink in commit order, with every device
/// that received one, including those whose copies were too many bytes to hand over.
fn committed_copies_are_published_in_order(store: &dyn Store) {
    let a = store.register(&account("pa@x", b"pa", None), 1).expect("a");
    let b = store.register(&account("pb@x", b"pb", None), 1).expect("b");
    let sunk = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = sunk.clone();
    store.publish_queued_to(Box::new(move |c| sink.lock().expect("sink").push(c)));
    // b's copies are sealed to its queue key: what is handed over is what is stored.
    let key = sotto_core::queue::QueueKey::generate().expect("key");
    store.set_queue_key(b, key.public()).expect("queue key");
    let (both, only_b) = ([a, b], [b]);
    for (n, m) in [&b"one"[..], b"two"].into_iter().enumerate() {
        let done = store.submit(&relay(&both, m, Ordering::None), 1).expect("submit");
        assert!(done.copies.is_empty(), "the copies went to the sink");
        assert_eq!(done.recipients, vec![a, b]);
        assert_eq!(sunk.lock().expect("sink").len(), n + 1, "handed over before the answer");
    }
    // Too large to hand over twice: the second copy is not kept, its device is still named.
    let large = vec![7u8; COPIES_RETURNED_BYTES as usize * 3 / 4];
    store.submit(&relay(&both, &large, Ordering::None), 1).expect("large");
    // A refused submission publishes nothing.
    assert!(store.submit(&relay(&[a, 999], b"x", Ordering::None), 1).is_err());
    store.submit(&relay(&only_b, b"three", Ordering::None), 1).expect("submit");
    let seen = std::mem::take(&mut *sunk.lock().expect("sink"));
    let copies: Vec<_> = seen.iter().flat_map(|c| &c.copies).collect();
    let of = |d: u64| -> Vec<(u64, &[u8])> {
        copies.iter().filter(|c| c.device == d).map(|c| (c.seq, c.message.as_slice())).collect()
    };
    let (of_a, of_b) = (of(a), of(b));
    assert_eq!(of_a.iter().map(|c| c.1).collect::<Vec<_>>(), vec![&b"one"[..], b"two", &large]);
    let opened: Vec<Vec<u8>> = of_b.iter().map(|c| key.open(b, c.1).expect("opens")).collect();
    assert_eq!(opened, [&b"one"[..], b"two", b"three"].map(<[u8]>::to_vec));
    for queue in [&of_a, &of_b] {
        assert!(queue.windows(2).all(|w| w[0].0 < w[1].0), "by increasing seq");
    }
    // Each copy is the one stored, sealed bytes and all.
    let (stored, _) = store.fetch(b, 0, 10, 0, PAGE_MAX_BYTES).expect("fetch");
    assert_eq!(stored.len(), 4);
    let kept: Vec<(u64, &[u8])> =
        [0, 1, 3].iter().map(|&i| (stored[i].0, stored[i].1.as_slice())).collect();
    assert_eq!(of_b, kept);
    assert!(seen.iter().all(|c| c.devices.windows(2).all(|w| w[0] < w[1])), "once each");
    let named: std::collections::BTreeSet<u64> =
        seen.iter().flat_map(|c| c.devices.iter().copied()).collect();
    assert_eq!(named, [a, b].into());
    let large_commit = seen.iter().find(|c| c.copies.iter().any(|m| m.message == large));
    assert_eq!(large_commit.map(|c| c.devices.clone()), Some(vec![a, b]));

    // Handed over together, submissions may share a group commit: its copies still come in
    // the order they were committed.
    let pending: Vec<_> =
        (0..40u8).map(|n| store.submit_queued(&relay(&only_b, &[n], Ordering::None), 1)).collect();
    for p in pending {
        p.blocking_recv().expect("answered").expect("submitted");
    }
    let seen = std::mem::take(&mut *sunk.lock().expect("sink"));
    let copies: Vec<_> = seen.iter().flat_map(|c| &c.copies).collect();
    let order: Vec<u8> =
        copies.iter().map(|c| key.open(b, &c.message).expect("opens")[0]).collect();
    assert_eq!(order, (0..40).collect::<Vec<_>>());
    assert!(copies.windows(2).all(|w| w[0].seq < w[1].seq), "by increasing seq");
}

macro_rules! backends {
    ($($backend:ident => $make:expr;)*) => {$(
        mod $backend {
            use super::*;
            #[test] fn registration_and_invites() { let (s, _g) = $make; super::registration_and_invites(&s) }
            #[test] fn key_packages() { let (s, _g) = $make; super::key_packages(&s) }
            #[test] fn queues_and_ordering() { let (s, _g) = $make; super::queues_and_ordering(&s) }
            #[test] fn submissions_are_idempotent() { let (s, _g) = $make; super::submissions_are_idempotent(&s) }
            #[test] fn queue_limits_and_expiry() { let (s, _g) = $make; super::queue_limits_and_expiry(&s) }
            #[test] fn pages_are_bounded_in_bytes() { let (s, _g) = $make; super::pages_are_bounded_in_bytes(&s) }
            #[test] fn device_lists_and_revocation() { let (s, _g) = $make; super::device_lists_and_revocation(&s) }
            #[test] fn wipes_and_links() { let (s, _g) = $make; super::wipes_and_links(&s) }
            #[test] fn blobs_and_quotas() { let (s, _g) = $make; super::blobs_and_quotas(&s) }
            #[test] fn rosters() { let (s, _g) = $make; super::rosters(&s) }
            #[test] fn committed_copies_are_published_in_order() { let (s, _g) = $make; super::committed_copies_are_published_in_order(&s) }
        }
    )*};
}

backends! {
    sqlite_memory => (SqliteStore::in_memory().expect("store"), None::<tempfile::TempDir>);
    sqlite_file => {
        let dir = tempfile::tempdir().expect("tempdir");
        (SqliteStore::open(&dir.path().join("t.db")).expect("store"), Some(dir))
    };
}

fn submissions_are_idempotent(store: &dyn Store) {
    let b = store.register(&account("ib@x", b"ib", None), 1).expect("b");
    let to_b = [b];
    let commit = |id: &'static [u8], epoch| Submission {
        id: Some(id),
        ..relay(&to_b, b"c", Ordering::Advance(epoch))
    };
    assert_eq!(store.submit(&commit(b"s1", 0), 1).expect("first").epoch, 1);
    // The same submission again (its answer was lost): same answer, nothing queued twice.
    let again = store.submit(&commit(b"s1", 0), 2).expect("retry");
    assert_eq!((again.epoch, again.recipients), (1, vec![]));
    assert_eq!(store.fetch(b, 0, 10, 0, PAGE_MAX_BYTES).expect("fetch").0.len(), 1);
    // The same id with other content is not taken for a repeat, whoever sends it (ids are
    // random and name no sender).
    let changed = Submission { digest: [1; 32], ..commit(b"s1", 0) };
    assert!(matches!(store.submit(&changed, 2), Err(StoreError::SubmissionConflict)));
    // A different submission for the old epoch is stale.
    assert!(matches!(
        store.submit(&commit(b"s2", 0), 3),
        Err(StoreError::StaleEpoch { current: 1 })
    ));
    assert_eq!(store.submit(&commit(b"s3", 1), 4).expect("next").epoch, 2);
    // Records are swept once old; a refused submission left none.
    store.sweep(5, 0, 0).expect("sweep");
    assert!(matches!(
        store.submit(&commit(b"s1", 0), 11),
        Err(StoreError::StaleEpoch { current: 2 })
    ));
}

fn pages_are_bounded_in_bytes(store: &dyn Store) {
    let a = store.register(&account("pa@x", b"pa", None), 1).expect("a");
    let to_a = [a];
    let big = vec![0u8; PAGE_MAX_BYTES / 2 + 1];
    for _ in 0..3 {
        store.submit(&relay(&to_a, &big, Ordering::None), 1).expect("submit");
    }
    let (page, more) = store.fetch(a, 0, 100, 0, PAGE_MAX_BYTES).expect("fetch");
    assert_eq!((page.len(), more), (1, true), "two would exceed the byte budget");
    let (rest, more) = store.fetch(a, page[0].0, 100, 0, PAGE_MAX_BYTES).expect("fetch");
    assert_eq!((rest.len(), more), (1, true));
}

fn queue_limits_and_expiry(store: &dyn Store) {
    store.register(&account("la@x", b"la", None), 1).expect("a");
    let b = store.register(&account("lb@x", b"lb", None), 1).expect("b");
    let to_b = [b];
    let limits = QueueLimits { max_messages: 3, max_bytes: 10 };
    let send = |msg: &'static [u8], now| {
        store.submit(&Submission { limits, ..relay(&to_b, msg, Ordering::None) }, now)
    };
    send(b"1234", 10).expect("1");
    send(b"1234", 10).expect("2");
    assert!(
        matches!(send(b"123", 10), Err(StoreError::QueueFull { device }) if device == b),
        "bytes"
    );
    send(b"12", 20).expect("3");
    assert!(matches!(send(b"", 20), Err(StoreError::QueueFull { .. })), "count");
    // Acknowledging frees room.
    let (first, _) = store.fetch(b, 0, 1, 0, PAGE_MAX_BYTES).expect("fetch");
    assert_eq!(store.ack(b, first[0].0).expect("ack"), 1);
    send(b"1", 30).expect("room again");
    // Expiry: messages older than the cut-off are not handed out and are swept.
    assert_eq!(store.fetch(b, 0, 10, 15, PAGE_MAX_BYTES).expect("fetch").0.len(), 2);
    assert_eq!(store.sweep(0, 15, 0).expect("sweep"), 1);
    // A message's own expiry (disappearing messages) removes it too, and frees its quota.
    let s = Submission { limits, expires_at: Some(100), ..relay(&to_b, b"x", Ordering::None) };
    let before = store.fetch(b, 0, 10, 0, PAGE_MAX_BYTES).expect("fetch").0.len();
    store.submit(&s, 20).expect("expiring");
    assert_eq!(store.fetch(b, 0, 10, 0, PAGE_MAX_BYTES).expect("fetch").0.len(), before + 1);
    assert_eq!(store.sweep(0, 0, 99).expect("sweep"), 0);
    assert_eq!(store.sweep(0, 0, 100).expect("sweep"), 1);
    assert_eq!(store.fetch(b, 0, 10, 0, PAGE_MAX_BYTES).expect("fetch").0.len(), before);
    assert_eq!(store.fetch(b, 0, 10, 0, PAGE_MAX_BYTES).expect("fetch").0.len(), 2);
    // The counters followed: two in, room for one more.
    send(b"1", 40).expect("third");
    assert!(matches!(send(b"1", 40), Err(StoreError::QueueFull { .. })));
}

fn device_lists_and_revocation(store: &dyn Store) {
    let a = store.register(&account("dl@x", b"d1", None), 1).expect("register");
    assert_eq!(store.device_list("dl@x").expect("list"), Some(list(1)));
    assert_eq!(store.device_list("nobody@x").expect("list"), None);
    assert_eq!(store.all_device_lists().expect("lists"), vec![("dl@x".to_string(), list(1))]);
    // A concurrent update (stale expected version) changes nothing.
    assert!(matches!(
        store.update_devices("dl@x", 7, &list(8), Some(b"d2"), &[], 2),
        Err(StoreError::ListConflict)
    ));
    assert_eq!(store.devices("dl@x").expect("devices").len(), 1);
    assert!(matches!(
        store.update_devices("dl@x", 1, &list(2), Some(b"d1"), &[], 2),
        Err(StoreError::DeviceKeyTaken)
    ));
    let b = store.update_devices("dl@x", 1, &list(2), Some(b"d2"), &[], 2).expect("link");
    let b = b.expect("new device id");
    assert_eq!(store.device_list("dl@x").expect("list"), Some(list(2)));
    store.add_key_packages(a, 3, &[b"ka".to_vec()], None, false).expect("kp");
    store.add_key_packages(b, 3, &[b"kb".to_vec()], Some(b"LB"), false).expect("kp");
    assert_eq!(
        store.claim_key_packages("dl@x", Some(&[b]), &[3]).expect("claim"),
        vec![(b, b"kb".to_vec())]
    );
    let to_b = [b];
    store.submit(&relay(&to_b, b"m", Ordering::None), 3).expect("submit");
    // Revoking drops the queue and key packages, keeps the row.
    assert_eq!(store.update_devices("dl@x", 2, &list(3), None, &[b], 4).expect("revoke"), None);
    assert_eq!(store.fetch(b, 0, 10, 0, PAGE_MAX_BYTES).expect("fetch").0.len(), 0);
    assert!(store.key_package_stock(b).expect("stock").is_empty());
    assert_eq!(store.device(b).expect("device").expect("row").revoked_at, Some(4));
    assert_eq!(store.revoked_devices().expect("revoked"), vec![b]);
    assert_eq!(
        store.claim_key_packages("dl@x", None, &[3]).expect("claim"),
        vec![(a, b"ka".to_vec())]
    );
    store.touch_device(a, 9).expect("touch");
    assert_eq!(store.device(a).expect("device").expect("row").last_seen, Some(9));
}

fn wipes_and_links(store: &dyn Store) {
    let a = store.register(&account("wl@x", b"w1", None), 1).expect("register");
    assert_eq!(store.wipe(a).expect("wipe"), None);
    let cmd = (b"cmd".to_vec(), b"sig".to_vec());
    store.put_wipe(a, &cmd, 5).expect("put");
    assert_eq!(store.revoked_devices().expect("revoked"), vec![a]);
    let conf = (b"done".to_vec(), b"sig2".to_vec());
    store.confirm_wipe(a, &conf, 6).expect("confirm");
    assert_eq!(
        store.wipe(a).expect("wipe"),
        Some(WipeRecord { command: cmd, confirmation: Some(conf) })
    );
    store.open_link(b"id1", b"req", 10).expect("open");
    assert!(matches!(store.open_link(b"id1", b"other", 10), Err(StoreError::LinkTaken)));
    store.reply_link(b"id1", Some(b"resp"), None).expect("respond");
    assert!(matches!(store.reply_link(b"id1", Some(b"again"), None), Err(StoreError::LinkTaken)));
    assert!(matches!(store.reply_link(b"nope", Some(b"r"), None), Err(StoreError::UnknownLink)));
    store.reply_link(b"id1", None, Some(b"hist")).expect("history");
    assert_eq!(
        store.link(b"id1").expect("link"),
        Some(LinkRecord {
            request: b"req".to_vec(),
            response: Some(b"resp".to_vec()),
            history: Some(b"hist".to_vec())
        })
    );
    store.open_link(b"id2", b"req", 20).expect("open");
    assert_eq!(store.expire_links(15).expect("expire"), 1);
    assert_eq!(store.link(b"id1").expect("link"), None);
    assert!(store.link(b"id2").expect("link").is_some());
}

fn blobs_and_quotas(store: &dyn Store) {
    let blob = |id: &[u8], address: &str, size| BlobRecord {
        id: id.to_vec(),
        device: 1,
        address: address.into(),
        size,
        received: 0,
        created_at: 10,
        expires_at: 100,
        lifetime: 1000,
    };
    store.create_blob(&blob(b"b1", "q@x", 60), 100, 0).expect("fits");
    assert!(matches!(
        store.create_blob(&blob(b"b2", "q@x", 41), 100, 1000),
        Err(StoreError::BlobQuota { used: 60, quota: 100 })
    ));
    store.create_blob(&blob(b"b2", "other@x", 41), 100, 0).expect("another account's quota");
    // Groups' files keep within their group's quota (bytes announced) and, together, within
    // the pool (bytes received: announcing costs nothing, so it holds no room there); an
    // account's files do not count towards the pool.
    store.create_blob(&blob(b"g1", "group:aa", 60), 100, 100).expect("fits");
    assert!(matches!(
        store.create_blob(&blob(b"g2", "group:aa", 41), 100, 1000),
        Err(StoreError::BlobQuota { used: 60, quota: 100 })
    ));
    store.create_blob(&blob(b"g2", "group:bb", 41), 100, 100).expect("g1 holds nothing yet");
    assert!(store.blob_received(b"g1", 60, 500).expect("received"));
    assert!(matches!(
        store.create_blob(&blob(b"g3", "group:cc", 41), 100, 100),
        Err(StoreError::BlobQuota { used: 60, quota: 100 })
    ));
    store.create_blob(&blob(b"g3", "group:cc", 40), 100, 100).expect("the pool's last bytes");
    for id in [b"g1", b"g2", b"g3"] {
        store.delete_blob(id).expect("delete");
    }
    assert!(store.blob_received(b"b1", 60, 500).expect("received"));
    assert!(!store.blob_received(b"no such blob", 60, 500).expect("received"), "no row, no update");
    let b1 = store.blob(b"b1").expect("blob").expect("exists");
    assert_eq!((b1.received, b1.expires_at), (60, 500));
    assert_eq!(store.blob(b"nope").expect("blob"), None);
    assert_eq!(store.expired_blobs(100).expect("expired"), vec![b"b2".to_vec()]);
    store.delete_blob(b"b2").expect("delete");
    assert_eq!(store.expired_blobs(1000).expect("expired"), vec![b"b1".to_vec()]);
}

fn rosters(store: &dyn Store) {
    let reg = |name: &str| {
        let address = format!("{name}@x");
        store.register(&account(&address, name.as_bytes(), None), 1).expect("register")
    };
    let (a, b, c, m) = (reg("ra"), reg("rb"), reg("rc"), reg("rm"));
    let (c0, c1, c2, c3, wrong) = (cred(10), cred(11), cred(12), cred(13), cred(99));
    let not_member = |r: Result<Submitted, StoreError>| matches!(r, Err(StoreError::NotMember));
    let sorted = |mut v: Vec<u64>| {
        v.sort_unstable();
        v
    };
    let (to_b, to_c) = ([b], [c]);

    // A group new to the server takes its first submission only from an authenticated
    // device, which becomes its roster.
    let anonymous = in_group(&c0, Ordering::Advance(0), b"c0");
    assert!(matches!(store.submit(&anonymous, 1), Err(StoreError::GroupUnsealed)));
    let group = b"roster group".as_slice();
    assert!(matches!(store.check_member(group, &c0), Err(StoreError::GroupUnsealed)));
    let create = Submission {
        to: To::Group(GroupAuth { next: Some(&c1), device: Some(a), ..auth(&c0) }),
        welcome: Some((&to_b, b"welcome")),
        ..in_group(&c0, Ordering::Advance(0), b"c0")
    };
    let done = store.submit(&create, 1).expect("create");
    assert_eq!((done.epoch, sorted(done.recipients)), (1, vec![a, b]), "commit to a, welcome to b");
    // Without the epoch's credential nobody can commit, propose or send, with a token or not,
    // and a stranger is not told the epoch; an earlier epoch's credential is told to catch up.
    assert!(not_member(store.submit(&in_group(&wrong, Ordering::NotBefore(1), b"x"), 1)));
    assert!(not_member(store.submit(&in_group(&wrong, Ordering::NotBefore(0), b"x"), 1)));
    assert!(matches!(
        store.submit(&in_group(&c0, Ordering::NotBefore(0), b"x"), 1),
        Err(StoreError::StaleEpoch { current: 1 })
    ));
    let with_token = Submission {
        to: To::Group(GroupAuth { device: Some(m), ..auth(&wrong) }),
        ..in_group(&wrong, Ordering::AtEpoch(1), b"p")
    };
    assert!(not_member(store.submit(&with_token, 1)));
    let junk = Submission {
        to: To::Group(GroupAuth { next: Some(&wrong), ..auth(&wrong) }),
        ..in_group(&wrong, Ordering::Advance(1), b"junk")
    };
    assert!(not_member(store.submit(&junk, 1)));
    // A member's message goes to the whole roster, its sender's device included.
    let done = store.submit(&in_group(&c1, Ordering::NotBefore(1), b"hi"), 1).expect("b");
    assert_eq!((done.epoch, sorted(done.recipients)), (1, vec![a, b]));
    // A commit that removes b and adds c: b still gets it, c gets the welcome.
    let swap = Submission {
        to: To::Group(GroupAuth { next: Some(&c2), ..auth(&c1) }),
        welcome: Some((&to_c, b"welcome")),
        removed: &to_b,
        ..in_group(&c1, Ordering::Advance(1), b"c1")
    };
    store.check_member(group, &c1).expect("a member of epoch 1");
    assert!(matches!(store.check_member(group, &wrong), Err(StoreError::NotMember)));
    assert!(matches!(store.check_member(b"another", &c1), Err(StoreError::GroupUnsealed)));
    let done = store.submit(&swap, 1).expect("swap");
    assert_eq!((done.epoch, sorted(done.recipients)), (2, vec![a, b, c]));
    // Checking membership follows the epoch as submissions do.
    store.check_member(group, &c2).expect("a member of epoch 2");
    assert!(matches!(store.check_member(group, &c1), Err(StoreError::StaleEpoch { current: 2 })));
    // b knows only the old credential: whatever epoch it claims, it is told to catch up (and
    // then learns it was removed); nothing it sends is taken.
    for epoch in [1, 2] {
        assert!(matches!(
            store.submit(&in_group(&c1, Ordering::NotBefore(epoch), b"x"), 1),
            Err(StoreError::StaleEpoch { current: 2 })
        ));
    }
    let done = store.submit(&in_group(&c2, Ordering::NotBefore(2), b"hey"), 1).expect("c");
    assert_eq!(sorted(done.recipients), vec![a, c]);
    // A revoked device gets nothing and leaves the roster at the next commit.
    store.update_devices("rc@x", 1, &list(2), None, &[c], 2).expect("revoke c");
    let done = store.submit(&in_group(&c2, Ordering::NotBefore(2), b"x"), 1).expect("a");
    assert_eq!((done.recipients, done.dropped), (vec![a], vec![c]));
    let rekey = Submission {
        to: To::Group(GroupAuth { next: Some(&c3), ..auth(&c2) }),
        ..in_group(&c2, Ordering::Advance(2), b"c2")
    };
    assert_eq!(store.submit(&rekey, 1).expect("rekey").dropped, vec![c]);
    let done = store.submit(&in_group(&c3, Ordering::NotBefore(3), b"x"), 1).expect("a");
    assert_eq!((done.recipients, done.dropped), (vec![a], vec![]));
}

/// A test group credential.
pub(crate) fn cred(n: u8) -> GroupCredential {
    GroupCredential::from_bytes(&[n; 32]).expect("credential")
}

fn auth(credential: &GroupCredential) -> GroupAuth<'_> {
    GroupAuth { credential, next: None, device: None, roster: None }
}

/// A submission to the rosters test's group, shown with `credential`.
fn in_group<'a>(
    credential: &'a GroupCredential,
    ordering: Ordering,
    message: &'a [u8],
) -> Submission<'a> {
    Submission {
        to: To::Group(auth(credential)),
        group_id: b"roster group",
        ..relay(&[], message, ordering)
    }
}

/// A plain relay of `message` to `to` in group `g` (no roster).
pub(crate) fn relay<'a>(to: &'a [u64], message: &'a [u8], ordering: Ordering) -> Submission<'a> {
    Submission {
        id: None,
        digest: [0; 32],
        group_id: b"g",
        ordering,
        to: To::Devices(to),
        message,
        welcome: None,
        removed: &[],
        limits: QueueLimits::UNLIMITED,
        expires_at: None,
    }
}
