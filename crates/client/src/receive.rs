//! Receiving: catching up with the queue and processing each message atomically with the
//! position it came from.

use std::collections::BTreeSet;

use rusqlite::{OptionalExtension, Transaction, params};
use sotto_core::content::{Body, ChatKind, Message};
use sotto_core::mls::{self, Incoming};
use sotto_core::{Address, DeviceRef};
use sotto_proto as proto;

use crate::db;
use crate::groups::{commit_events, timer_event};
use crate::*;

impl Client {
    /// Fetches and processes everything queued for this device, commits proposals other
    /// members made (such as a member leaving), tops up key packages, and returns what is new.
    pub fn sync(&mut self) -> Result<SyncReport, Error> {
        let processed = match self.catch_up() {
            Err(e) if e.server_code() == Some("device_revoked") => {
                return Err(self.obey_revocation());
            }
            other => other?,
        };
        self.reconcile_devices()?;
        self.monitor_own_key()?;
        self.check_wipe_confirmations()?;
        // Receipts for what arrived go with the outbox.
        self.queue_receipts(true)?;
        // What waits in the outbox goes now (failed messages wait for `resend`).
        let changed = self.flush_outbox(None, true)?;
        // Chats due for a fresh key of this device get one (what fails is retried later).
        let heal = self.heal(false)?;
        for (chat, reason) in &heal.failed {
            db::add_notice(
                &self.conn,
                &format!("could not update this device's keys in chat {chat}: {reason}"),
            )?;
        }
        let healed = heal.updated;
        let mut report = self.finish_batch(processed, true)?;
        report.updated.extend(self.updated_views(changed)?);
        dedupe_views(&mut report.updated);
        report.healed = healed;
        Ok(report)
    }

    /// After processing: commits pending proposals and tops up key packages — everywhere if
    /// `thorough`, else only where the batch made it necessary — and collects what is new.
    pub(crate) fn finish_batch(
        &mut self,
        processed: u64,
        thorough: bool,
    ) -> Result<SyncReport, Error> {
        let touched = self.touched.take();
        for group_id in &touched.joined_groups {
            self.check_members(group_id)?;
        }
        self.prune_revoked()?;
        let groups = if thorough { self.active_chats()? } else { touched.proposals };
        self.commit_proposals(groups)?;
        if thorough || touched.joined {
            self.replenish_key_packages()?;
        }
        self.purge_expired()?;
        self.queue_receipts(false)?;
        let mut report = self.unreported()?;
        report.processed = processed;
        let mut seen = BTreeSet::new();
        for (group_id, msg_id) in touched.updated {
            if seen.insert((group_id.clone(), msg_id.clone())) {
                report.updated.extend(self.message_views(
                    "WHERE m.group_id = ?1 AND m.msg_id = ?2",
                    params![group_id, msg_id],
                )?);
            }
        }
        Ok(report)
    }

    pub(crate) fn active_chats(&self) -> Result<BTreeSet<Vec<u8>>, Error> {
        let mut stmt = self.conn.prepare("SELECT group_id FROM chats WHERE state = 'active'")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// This device's queue key, made (and kept in the home) the first time.
    pub(crate) fn queue_key(&self) -> Result<&sotto_core::queue::QueueKey, Error> {
        if let Some(key) = self.queue_key.get() {
            return Ok(key);
        }
        let seed: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT seed FROM queue_key WHERE id = 1", [], |r| r.get(0))
            .optional()?;
        let key = match seed {
            Some(seed) => sotto_core::queue::QueueKey::from_seed(&seed)?,
            None => {
                let key = sotto_core::queue::QueueKey::generate()?;
                self.conn.execute(
                    "INSERT INTO queue_key (id, seed, given) VALUES (1, ?1, 0)",
                    [key.seed()],
                )?;
                key
            }
        };
        Ok(self.queue_key.get_or_init(|| key))
    }

    /// Gives the server this device's queue key, once: from then on what waits in the queue
    /// is sealed to it. A server that does not take it (an older one) is asked again later.
    pub(crate) fn give_queue_key(&mut self) -> Result<(), Error> {
        let given: Option<i64> = self
            .conn
            .query_row("SELECT given FROM queue_key WHERE id = 1", [], |r| r.get(0))
            .optional()?;
        if given == Some(1) {
            return Ok(());
        }
        let key = proto::QueueKey { key: proto::Bytes(self.queue_key()?.public().to_vec()) };
        // Logging in fails here as it would for the fetch that follows, which reports it.
        let Ok(token) = self.token() else { return Ok(()) };
        match self.api.put::<_, proto::QueueKey>("/v1/queue/key", &key, &token) {
            Ok(_) => {
                self.conn.execute("UPDATE queue_key SET given = 1 WHERE id = 1", [])?;
                Ok(())
            }
            // Not taken (an older server without the endpoint, a full disk, no connection):
            // copies stay as they come meanwhile, and the server is asked again at the next
            // sync. Reading the queue never waits for it.
            Err(Error::Database(e)) => Err(Error::Database(e)),
            Err(_) => Ok(()),
        }
    }

    /// Processes the whole queue; returns how many messages it processed.
    pub(crate) fn catch_up(&mut self) -> Result<u64, Error> {
        // This device's own commits whose fate is unknown come first: a commit the server
        // took must be merged before the messages that follow it can be read.
        self.resolve_in_doubt()?;
        self.give_queue_key()?;
        let mut processed = 0;
        let processed_up_to = db::last_seq(&self.conn)?;
        if processed_up_to > db::last_acked(&self.conn)? {
            // Messages processed before a crash or a lost connection, never acknowledged.
            self.ack(processed_up_to)?;
        }
        loop {
            let token = self.token()?;
            let after = db::last_seq(&self.conn)?;
            let page = self.api.queue_page(after, SYNC_PAGE, &token)?;
            if let Some((n, up_to)) = self.process_page(&page.messages)? {
                processed += n;
                self.ack(up_to)?;
            }
            if !page.more || page.messages.is_empty() {
                return Ok(processed);
            }
        }
    }

    /// Tells the server to drop what was processed. A server whose storage is full cannot
    /// delete either; the messages are safe here, so that is no failure: the next sync
    /// acknowledges them again.
    pub(crate) fn ack(&mut self, up_to: u64) -> Result<(), Error> {
        let token = self.token()?;
        match self.api.post::<_, proto::AckResponse>(
            "/v1/queue/ack",
            &proto::AckRequest { up_to },
            Some(&token),
        ) {
            Ok(_) => db::set_last_acked(&self.conn, up_to),
            Err(e) if e.server_code() == Some("storage_full") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Processes a page of queued messages, oldest first, in one local transaction with the
    /// new sync position: one write to disk for the page, not one per message. A crash, or the
    /// local database failing, leaves the whole page to be processed again; a message that
    /// fails for its own reasons is recorded and the page goes on. A page whose references
    /// name more than memory should hold at once (see [`Client::ready`]) is taken in parts,
    /// each in a transaction of its own. Returns how many messages the page held and the last
    /// one's seq (what to acknowledge), if any.
    pub(crate) fn process_page(
        &mut self,
        page: &[proto::QueuedMessage],
    ) -> Result<Option<(u64, u64)>, Error> {
        let Some(last) = page.last() else { return Ok(None) };
        let mut rest = page;
        while !rest.is_empty() {
            // Copies are opened, and what references name fetched, before the transaction.
            let (ready, taken) = self.ready(rest)?;
            let tx = begin(&self.conn)?;
            let mut cache = PageCache::default();
            for m in ready {
                self.process_in(&tx, m, &mut cache)?;
            }
            tx.commit()?;
            // At least one message is taken each time: only a reference after others stops.
            rest = &rest[taken.max(1)..];
        }
        Ok(Some((page.len() as u64, last.seq)))
    }

    /// Processes one queued message inside `tx`, the page's transaction. What processing
    /// wrote is undone alone if the message fails for its own reasons (a savepoint), and the
    /// failure is recorded.
    fn process_in(
        &self,
        tx: &Transaction<'_>,
        m: crate::reference::Ready<'_>,
        cache: &mut PageCache,
    ) -> Result<(), Error> {
        let (seq, at) = (m.seq, m.at);
        if seq <= db::last_seq(tx)? {
            return Ok(());
        }
        if let Some(blob) = &m.fetched {
            db::fetched_reference(tx, blob, self.now_ms() as i64)?;
        }
        let data = match &m.copy {
            Ok(data) => &data[..],
            Err(reason) => {
                record_failure(tx, seq, reason)?;
                return db::set_last_seq(tx, seq);
            }
        };
        // The server sends a group's messages to all its devices, the sender's too.
        if db::take_echo(tx, data, self.now_ms() as i64)? {
            return db::set_last_seq(tx, seq);
        }
        // A reference: the message it names was fetched before the transaction.
        let data = match &m.referenced {
            None => data,
            Some(Ok(message)) => &message[..],
            Some(Err(reason)) => {
                record_failure(tx, seq, &format!("a message kept by reference: {reason}"))?;
                return db::set_last_seq(tx, seq);
            }
        };
        tx.execute_batch("SAVEPOINT message")?;
        // The group kept from the message before serves only if nothing wrote MLS state
        // since it was kept.
        if cache.generation != Some(db::mls_generation(tx)?) {
            cache.group.clear();
        }
        let outcome = mls::process_cached(&db::provider(tx), data, &mut cache.group)
            .map_err(Error::from)
            .and_then(|incoming| {
                cache.generation = Some(db::mls_generation(tx)?);
                self.apply(tx, seq, at, incoming)
            });
        if outcome.is_err() {
            // What the group holds in memory may be ahead of what the savepoint keeps.
            cache.group.clear();
        }
        match outcome {
            Ok(()) => tx.execute_batch("RELEASE message")?,
            // The local database failing is not the message's fault: nothing is recorded, and
            // the page is processed again next time.
            Err(e @ Error::Database(_)) => return Err(e),
            // Anything else about this one message is recorded, and the queue goes on.
            Err(e) => {
                // Undo whatever processing wrote, then record the failure alone.
                tx.execute_batch("ROLLBACK TO message; RELEASE message")?;
                if !self.expected_failure(tx, data)? {
                    record_failure(tx, seq, &e.to_string())?;
                }
            }
        }
        db::set_last_seq(tx, seq)
    }
}

/// What a page's messages carry from one to the next: the group the last application
/// message was for, as processing it left the group, and the count of MLS state writes then
/// (see `db::mls_generation`), which tells whether anything has written since.
#[derive(Debug, Default)]
struct PageCache {
    group: mls::GroupCache,
    generation: Option<i64>,
}

impl Client {
    /// Whether a message that failed to process belongs to a chat this device has left, where
    /// failing is expected.
    pub(crate) fn expected_failure(
        &self,
        tx: &Transaction<'_>,
        data: &[u8],
    ) -> Result<bool, Error> {
        let Ok(Some(group_id)) = mls::group_of(data) else { return Ok(false) };
        let state: Option<String> = tx
            .query_row("SELECT state FROM chats WHERE group_id = ?1", [group_id], |r| r.get(0))
            .optional()?;
        Ok(matches!(state.as_deref(), Some("left" | "removed")))
    }

    pub(crate) fn apply(
        &self,
        tx: &Transaction<'_>,
        seq: u64,
        at: Option<u64>,
        incoming: Incoming,
    ) -> Result<(), Error> {
        let now = self.now_ms() as i64;
        // What a message makes happen (someone added, removed, a timer set) happened when the
        // server took it, in the server's order; this device may get to it much later. The
        // server counts seconds: within one, an event is no earlier than what came before it.
        let queued = at.map_or(now, |s| s.saturating_mul(1000).min(i64::MAX as u64) as i64);
        let happened = |group_id: &[u8]| -> rusqlite::Result<i64> {
            let before: Option<i64> = tx
                .prepare_cached(
                    "SELECT sent_at FROM messages WHERE group_id = ?1 ORDER BY id DESC LIMIT 1",
                )?
                .query_row([group_id], |r| r.get(0))
                .optional()?;
            Ok(queued.max(before.unwrap_or(0)).min(now))
        };
        // An event, or (`quiet`) a mark: in the chat's history, but not reported as new.
        let line = |group_id: &[u8], n: usize, sender: &str, body: &str, quiet: bool| {
            tx.execute(
                "INSERT OR IGNORE INTO messages (group_id, msg_id, sender, kind, body, status,
                                                 sent_at, received_at, reported, read_at)
                 VALUES (?1, ?2, ?3, ?7, ?4, 'received', ?5, ?6, ?8, ?9)",
                params![
                    group_id,
                    format!("event-{seq}-{n}"),
                    sender,
                    body,
                    happened(group_id)?,
                    now,
                    if quiet { "mark" } else { "event" },
                    quiet,
                    quiet.then_some(now)
                ],
            )
        };
        let mark = |group_id: &[u8], n: usize, sender: &str, body: &str| {
            line(group_id, n, sender, body, true)
        };
        let event = |group_id: &[u8], n: usize, sender: &str, body: String| {
            line(group_id, n, sender, &body, false)
        };
        match incoming {
            Incoming::Joined { group_id, inviter } => {
                // Joining consumed one of this device's key packages, made earlier (the
                // last-resort one serves several joins): its leaf key in the chat is replaced
                // soon (healing), the packages on the server once per period.
                self.touched.borrow_mut().joined = true;
                self.touched.borrow_mut().joined_groups.insert(group_id.clone());
                let suite = mls::group_suite(&db::provider(tx), &group_id)?;
                tx.execute(
                    "INSERT INTO chats (group_id, kind, state, created_at, leaf_updated_at,
                                        ciphersuite)
                     VALUES (?1, 'group', 'active', ?2, 0, ?3)
                     ON CONFLICT (group_id) DO UPDATE SET state = 'active', leaf_updated_at = 0,
                                                          ciphersuite = ?3",
                    params![group_id, now, suite.code()],
                )?;
                // Back in a chat after a time away: what was sent meanwhile is not missing.
                tx.execute("DELETE FROM counters WHERE group_id = ?1", [&group_id])?;
                let who =
                    inviter.map(|d| d.address.to_string()).unwrap_or_else(|| "someone".into());
                if who == self.account.address {
                    event(&group_id, 0, &who, "this device joined the chat".into())?;
                } else {
                    event(&group_id, 0, &who, format!("{who} added you"))?;
                }
            }
            Incoming::Application { group_id, sender, plaintext } => {
                let decoded = Message::decode(&plaintext);
                if let Ok(Message { root: Some(root), .. }) = &decoded {
                    self.hear_root(tx, &sender.address, root)?;
                }
                if let Ok(Message { id, n: Some(n), .. }) = &decoded
                    && let Some(text) = count_message(tx, &group_id, &sender, id, *n)?
                {
                    event(&group_id, 1, sender.address.as_str(), text)?;
                }
                match decoded {
                    // Ids are the sender's random 128 bits in hex: anything else could collide
                    // with this device's own rows (its events) and hide them.
                    Ok(Message { id, .. }) if !sotto_core::content::is_message_id(&id) => {
                        record_failure(tx, seq, "a message whose id is malformed")?
                    }
                    Ok(Message {
                        id,
                        sent_at,
                        expires_in,
                        body: body @ (Body::Text { .. } | Body::File { .. }),
                        ..
                    }) => {
                        let (kind, text, attachment) = match &body {
                            Body::File { name, .. } => {
                                ("file", name.clone(), serde_json::to_string(&body).ok())
                            }
                            Body::Text { text, .. } => ("text", text.clone(), None),
                            _ => ("text", String::new(), None),
                        };
                        let (reply_to, mentions) = match &body {
                            Body::Text { reply_to, mentions, .. } => {
                                let valid: Vec<&String> = mentions
                                    .iter()
                                    .filter(|m| m.parse::<Address>().is_ok())
                                    .collect();
                                (
                                    reply_to.clone(),
                                    (!valid.is_empty())
                                        .then(|| serde_json::to_string(&valid).unwrap_or_default()),
                                )
                            }
                            _ => (None, None),
                        };
                        let own = sender.address == self.me.device.address;
                        // Sent by another device of this account: it is ours, and sent.
                        let status = if own { "sent" } else { "received" };
                        // A disappearing message lives from when it was sent (or arrived, if
                        // the sender's clock runs ahead).
                        // A sender's clock ahead of this one's (or a made-up time) shows as now.
                        let sent_at = sent_at.min(now as u64);
                        let expires_at = expires_in.map(|s| {
                            (sent_at as i64)
                                .min(now)
                                .saturating_add(s.saturating_mul(1000).min(i64::MAX as u64) as i64)
                        });
                        let inserted = tx.execute(
                            "INSERT OR IGNORE INTO messages (group_id, msg_id, sender, kind, body,
                                                             status, sent_at, received_at,
                                                             expires_at, attachment, reply_to,
                                                             mentions, read_at)
                             VALUES (?1, ?2, ?3, ?9, ?4, ?7, ?5, ?6, ?8, ?10, ?11, ?12, ?13)",
                            params![
                                group_id,
                                id,
                                sender.address.as_str(),
                                text,
                                sent_at as i64,
                                now,
                                status,
                                expires_at,
                                kind,
                                attachment,
                                reply_to,
                                mentions,
                                own.then_some(now)
                            ],
                        )?;
                        if inserted > 0 {
                            self.message_arrived(tx, &group_id, &id, sender.address.as_str())?;
                        }
                    }
                    Ok(Message {
                        id,
                        sent_at,
                        body:
                            body @ (Body::Reaction { .. } | Body::Edit { .. } | Body::Delete { .. }),
                        ..
                    }) => {
                        let address = sender.address.as_str();
                        if let Some(changed) =
                            self.receive_amend(tx, &group_id, address, &id, sent_at, &body)?
                        {
                            self.touched.borrow_mut().updated.push(changed);
                        }
                    }
                    Ok(Message { body: Body::Receipt { receipt, ids }, .. }) => {
                        let address = sender.address.as_str();
                        let changed =
                            self.receive_receipt(tx, &group_id, address, receipt, &ids)?;
                        self.touched.borrow_mut().updated.extend(changed);
                    }
                    Ok(Message { id, sent_at, body: Body::Unsupported, .. }) => {
                        // A kind of message a newer version sent: shown as such, never a failure.
                        tx.execute(
                            "INSERT OR IGNORE INTO messages (group_id, msg_id, sender, kind, body,
                                                             status, sent_at, received_at, read_at)
                             VALUES (?1, ?2, ?3, 'unsupported', '', 'received', ?4, ?5, ?5)",
                            params![
                                group_id,
                                id,
                                sender.address.as_str(),
                                sent_at.min(now as u64) as i64,
                                now
                            ],
                        )?;
                    }
                    Ok(Message { body: Body::Timer { seconds }, .. }) => {
                        tx.execute(
                            "UPDATE chats SET timer_secs = ?1 WHERE group_id = ?2",
                            params![seconds as i64, group_id],
                        )?;
                        forget_counts_after_timer(tx, &group_id, seconds)?;
                        let who = sender.address.to_string();
                        event(&group_id, 0, &who, timer_event(&who, seconds))?;
                    }
                    Ok(Message { body: Body::ChatInfo { kind, name }, .. }) => {
                        // A chat is shown as direct only while it really holds two accounts:
                        // otherwise a third party could listen in on what looks like a 1:1 chat.
                        let peer = match kind {
                            ChatKind::Direct => self.direct_peer(tx, &group_id)?,
                            _ => None,
                        };
                        // Notes only while every member is a device of this account.
                        let notes = kind == ChatKind::Note
                            && mls::members(&db::provider(tx), &group_id)?
                                .iter()
                                .all(|d| d.address == self.me.device.address);
                        let kind = match (peer.is_some(), notes) {
                            (true, _) => ChatKind::Direct,
                            (_, true) => ChatKind::Note,
                            _ => ChatKind::Group,
                        };
                        let before: Option<String> = tx
                            .query_row(
                                "SELECT name FROM chats WHERE group_id = ?1",
                                [&group_id],
                                |r| r.get(0),
                            )
                            .optional()?
                            .flatten();
                        tx.execute(
                            "UPDATE chats SET kind = ?1, name = ?2, peer = ?3 WHERE group_id = ?4",
                            params![kind.as_str(), name, peer, group_id],
                        )?;
                        // A group renamed (not a newcomer told the name it has).
                        if let (ChatKind::Group, Some(old), Some(new)) = (kind, &before, &name)
                            && old != new
                        {
                            let who = sender.address.to_string();
                            event(&group_id, 0, &who, format!("{who} renamed the group to {new}"))?;
                        }
                    }
                    Ok(_) => record_failure(tx, seq, "unsupported message type")?,
                    Err(e) => record_failure(tx, seq, &e.to_string())?,
                }
            }
            Incoming::Commit { group_id, sender, added, removed, left, self_removed } => {
                let who = sender.map(|d| d.address.to_string()).unwrap_or_else(|| "someone".into());
                let present: Vec<DeviceRef> = if self_removed {
                    Vec::new()
                } else {
                    mls::members(&db::provider(tx), &group_id)?
                };
                let present_accounts: BTreeSet<&Address> =
                    present.iter().map(|d| &d.address).collect();
                if present_accounts.len() > 2 {
                    // A direct chat that gains a third account is a group from now on (a new
                    // device of one of the two accounts changes nothing).
                    tx.execute(
                        "UPDATE chats SET kind = 'group', peer = NULL
                         WHERE group_id = ?1 AND kind = 'direct'",
                        [&group_id],
                    )?;
                }
                // Another device of this account was removed: this one's keys are replaced
                // in every chat soon (what the removed device knew must stop opening them).
                if removed.iter().chain(&left).any(|d| {
                    d.address == self.me.device.address && d.device_id != self.me.device.device_id
                }) {
                    tx.execute("UPDATE chats SET leaf_updated_at = 0 WHERE state = 'active'", [])?;
                }
                let changes = mls::Changes { added, removed, left };
                let events =
                    commit_events(&who, &self.account.address, &changes, &present, self_removed);
                let mut n = 0;
                for e in events {
                    if e.account {
                        // Told once per account, however many chats the change reaches.
                        mark(&group_id, n, &e.sender, &e.text)?;
                        db::add_notice_once(tx, &e.text)?;
                    } else {
                        event(&group_id, n, &e.sender, e.text)?;
                    }
                    n += 1;
                }
                if self_removed {
                    event(&group_id, n, &who, format!("{who} removed you"))?;
                    mls::delete_group(&db::provider(tx), &group_id)?;
                    tx.execute(
                        "UPDATE chats SET state = 'removed' WHERE group_id = ?1",
                        [&group_id],
                    )?;
                }
            }
            Incoming::Proposal { group_id, .. } => {
                self.touched.borrow_mut().proposals.insert(group_id);
            }
            _ => record_failure(tx, seq, "unsupported MLS message")?,
        }
        Ok(())
    }

    /// The other account of a chat that holds exactly two accounts, this one included.
    pub(crate) fn direct_peer(
        &self,
        tx: &Transaction<'_>,
        group_id: &[u8],
    ) -> Result<Option<String>, Error> {
        let accounts: BTreeSet<Address> =
            mls::members(&db::provider(tx), group_id)?.into_iter().map(|d| d.address).collect();
        let mut others = accounts.iter().filter(|a| *a != &self.me.device.address);
        Ok(match (others.next(), others.next(), accounts.contains(&self.me.device.address)) {
            (Some(peer), None, true) => Some(peer.to_string()),
            _ => None,
        })
    }

    pub(crate) fn unreported(&self) -> Result<SyncReport, Error> {
        let messages = self.message_views("WHERE m.reported = 0 ORDER BY m.id", [])?;
        self.conn.execute("UPDATE messages SET reported = 1 WHERE reported = 0", [])?;
        let failures = {
            let mut stmt = self
                .conn
                .prepare("SELECT seq, reason FROM failures WHERE reported = 0 ORDER BY seq")?;
            let rows = stmt.query_map([], |r| {
                Ok(Failure { seq: r.get::<_, i64>(0)? as u64, reason: r.get(1)? })
            })?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        self.conn.execute("UPDATE failures SET reported = 1 WHERE reported = 0", [])?;
        let notices = {
            let mut stmt =
                self.conn.prepare("SELECT text FROM notices WHERE reported = 0 ORDER BY id")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<Result<Vec<String>, _>>()?
        };
        self.conn.execute("UPDATE notices SET reported = 1 WHERE reported = 0", [])?;
        Ok(SyncReport {
            messages,
            failures,
            processed: 0,
            notices,
            updated: Vec::new(),
            healed: Vec::new(),
        })
    }
}

/// Keeps one view per message: the latest.
fn dedupe_views(views: &mut Vec<MessageView>) {
    let mut seen = BTreeSet::new();
    let mut kept: Vec<MessageView> =
        views.drain(..).rev().filter(|v| seen.insert((v.chat.clone(), v.id.clone()))).collect();
    kept.reverse();
    *views = kept;
}

pub(crate) fn record_failure(tx: &Transaction<'_>, seq: u64, reason: &str) -> Result<(), Error> {
    tx.execute(
        "INSERT OR REPLACE INTO failures (seq, reason, at, reported) VALUES (?1, ?2, ?3, 0)",
        params![seq as i64, reason, now_ms() as i64],
    )?;
    Ok(())
}

/// Follows each sending device's count of its messages in a chat: a message whose number skips
/// ahead means the ones between never arrived; one numbered below the last seen arrived out of
/// order. Returns the event to show, if any. The first message seen from a device sets where
/// counting starts (this device may have joined after its first messages). In a chat with
/// disappearing messages, the server deletes copies nobody fetched in time, so gaps there are
/// expected and not shown.
/// Messages sent while a chat had a timer may have expired on the server unfetched, which is
/// no one's doing: when the timer goes off, counting starts again from each sender's next
/// message, so those raise no alarm.
pub(crate) fn forget_counts_after_timer(
    conn: &rusqlite::Connection,
    group_id: &[u8],
    seconds: u64,
) -> Result<(), Error> {
    if seconds == 0 {
        conn.execute("DELETE FROM counters WHERE group_id = ?1", [group_id])?;
    }
    Ok(())
}

fn count_message(
    tx: &Transaction<'_>,
    group_id: &[u8],
    sender: &DeviceRef,
    msg_id: &str,
    n: u64,
) -> Result<Option<String>, Error> {
    let seen: bool = tx
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM messages WHERE group_id = ?1 AND msg_id = ?2)",
        )?
        .query_row(params![group_id, msg_id], |r| r.get(0))?;
    if seen {
        return Ok(None);
    }
    let n = i64::try_from(n).unwrap_or(i64::MAX);
    let key = sender.to_string();
    let last: Option<i64> = tx
        .prepare_cached("SELECT last FROM counters WHERE group_id = ?1 AND sender = ?2")?
        .query_row(params![group_id, key], |r| r.get(0))
        .optional()?;
    if last.is_some_and(|last| n <= last) {
        return Ok(Some(format!(
            "a message from {} arrived out of order: it was sent before others shown above it",
            sender.address
        )));
    }
    tx.prepare_cached(
        "INSERT INTO counters (group_id, sender, last) VALUES (?1, ?2, ?3)
         ON CONFLICT (group_id, sender) DO UPDATE SET last = ?3",
    )?
    .execute(params![group_id, key, n])?;
    let timer: i64 = tx
        .prepare_cached("SELECT timer_secs FROM chats WHERE group_id = ?1")?
        .query_row([group_id], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    Ok(match last {
        Some(last) if n > last.saturating_add(1) && timer == 0 => {
            // The sender numbers its own messages: a huge skip is its doing, not a count.
            let (missing, them) = match n - last - 1 {
                1 => ("1 message".to_string(), "it"),
                m if m <= 1000 => (format!("{m} messages"), "them"),
                _ => ("many messages (numbers skipped)".to_string(), "them"),
            };
            Some(format!(
                "{missing} from {} did not arrive: the server held {them} back or lost {them}",
                sender.address
            ))
        }
        _ => None,
    })
}
