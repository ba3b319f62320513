//! The durable outbox: everything this device submits is written down before it leaves, and
//! stays written down until the server's answer is known.
//!
//! - **Application messages** are stored (`pending`) with their plaintext. Delivering one
//!   encrypts it and records the exact submission (ciphertext and submission id) in the same
//!   transaction as the ratchet step. Until the server answers, that same submission is
//!   repeated, and the server answers a repeat with its first answer: a crash or a lost answer
//!   can neither lose the message nor queue it twice. If the group moved on (`stale_epoch`,
//!   which the server gives only for a submission it never took), it is encrypted again in
//!   the new epoch. A server that is down or busy is retried with backoff, across restarts; a
//!   lasting refusal marks the message `failed` with the reason, and `resend` tries again.
//! - **Commits** are recorded together with the pending commit they submit. A commit whose
//!   answer was lost is *in doubt*: before anything else is processed, it is submitted again
//!   to learn its fate, and merged (the server took it) or dropped (another commit won), so a
//!   device that crashed mid-commit is never left behind its group.

use rusqlite::{OptionalExtension, params};
use sotto_core::content::{Body, Message};
use sotto_core::mls;
use sotto_proto::{self as proto, Bytes};

use crate::db;
use crate::groups::commit_events;
use crate::*;

/// The longest wait between two attempts at a message.
const MAX_BACKOFF_MS: u64 = 5 * 60_000;

/// An outbox entry.
struct Entry {
    id: i64,
    group_id: Vec<u8>,
    msg_id: Option<String>,
    payload: Vec<u8>,
    request: Option<Vec<u8>>,
    attempts: u32,
    next_at: u64,
    /// Its number among this device's messages in the chat, once given.
    n: Option<i64>,
}

/// What became of one delivery attempt.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The server took it.
    Sent,
    /// Not now (server down or busy): tried again later.
    Later(Error),
    /// Refused for good: `failed`.
    Failed(Error),
}

/// A delivery attempt: the chat, the message (none for chat settings) and its outcome.
pub(crate) type Change = (Vec<u8>, Option<String>, Outcome);

/// Whether waiting may change the server's answer: it is down or busy, or lost our session.
pub(crate) fn transient(e: &Error) -> bool {
    match e {
        Error::Unreachable { .. } => true,
        Error::Server { status, code, .. } => {
            *status >= 500
                || matches!(code.as_str(), "rate_limited" | "storage_full" | "unauthorized")
        }
        _ => false,
    }
}

/// Test builds stop dead here, as a crash would, when `SOTTO_FAILPOINT` names this point
/// (`before-submit`: a message is encrypted and recorded, the server has not seen it;
/// `after-submit`: the server took a message, nothing here knows; `after-commit`: the same
/// for a commit). Release builds have no failpoints.
pub(crate) fn failpoint(name: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("SOTTO_FAILPOINT").is_ok_and(|f| f == name) {
        std::process::abort();
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}

/// The wait before attempt `attempts + 1`: doubling from a second, at most five minutes.
fn backoff_ms(attempts: u32) -> u64 {
    1000u64.saturating_mul(1 << attempts.min(12)).min(MAX_BACKOFF_MS)
}

impl Client {
    /// Writes `body` to the outbox of `group_id`, with its row in the chat when it shows one
    /// (a text or a file; chat settings show none). Returns the message id.
    pub(crate) fn enqueue(&mut self, group_id: &[u8], body: Body) -> Result<String, Error> {
        // What the chat shows: a text, or a file's name (with the reference kept to download
        // it later; the key in it is as safe as everything else in the encrypted home).
        let (kind, text, attachment) = match &body {
            Body::Text { text, .. } => ("text", Some(text.clone()), None),
            Body::File { name, .. } => {
                ("file", Some(name.clone()), serde_json::to_string(&body).ok())
            }
            _ => ("", None, None),
        };
        // Messages (not chat settings) carry the chat's disappearing-message timer.
        let timer: i64 = self
            .conn
            .prepare_cached("SELECT timer_secs FROM chats WHERE group_id = ?1")?
            .query_row([group_id], |r| r.get(0))?;
        // Reactions, edits and deletions disappear with the messages they amend.
        let amends =
            matches!(body, Body::Reaction { .. } | Body::Edit { .. } | Body::Delete { .. });
        let expires_in = ((text.is_some() || amends) && timer > 0).then_some(timer as u64);
        let now = self.now_ms();
        let (reply_to, mentions) = match &body {
            Body::Text { reply_to, mentions, .. } => (
                reply_to.clone(),
                (!mentions.is_empty()).then(|| serde_json::to_string(mentions).unwrap_or_default()),
            ),
            _ => (None, None),
        };
        let msg = Message {
            v: body.version(),
            id: random_hex(16)?,
            sent_at: now,
            expires_in,
            n: None,
            root: None,
            body,
        };
        let mut tx = begin(&self.conn)?;
        if let Some(text) = &text {
            tx.prepare_cached(
                "INSERT INTO messages (group_id, msg_id, sender, kind, body, status, sent_at,
                                       received_at, reported, expires_at, attachment, reply_to,
                                       mentions, read_at)
                 VALUES (?1, ?2, ?3, ?7, ?4, 'pending', ?5, ?5, 1, ?6, ?8, ?9, ?10, ?5)",
            )?
            .execute(params![
                group_id,
                msg.id,
                self.account.address,
                text,
                msg.sent_at as i64,
                expires_in.map(|s| (msg.sent_at + s * 1000) as i64),
                kind,
                attachment,
                reply_to,
                mentions
            ])?;
        }
        // A reaction, edit or deletion shows here as it is written down.
        if matches!(msg.body, Body::Reaction { .. } | Body::Edit { .. } | Body::Delete { .. }) {
            self.amend_own(&tx, group_id, &msg)?;
        }
        tx.prepare_cached(
            "INSERT INTO outbox (group_id, kind, msg_id, payload, created_at)
             VALUES (?1, 'message', ?2, ?3, ?4)",
        )?
        .execute(params![
            group_id,
            text.is_some().then_some(&msg.id),
            msg.encode(),
            now as i64
        ])?;
        // When nothing of this chat waits before it, the message is encrypted in the same
        // transaction (one write to disk instead of two); otherwise, or if that fails, or
        // while devices the server reported revoked wait to be confirmed, the delivery does
        // it in its turn.
        let entry = tx.last_insert_rowid();
        let earlier: i64 = tx
            .prepare_cached("SELECT COUNT(*) FROM outbox WHERE group_id = ?1 AND id < ?2")?
            .query_row(params![group_id, entry], |r| r.get(0))?;
        if earlier == 0 && db::prune_pending(&tx, group_id)? == 0 {
            let sp = tx.savepoint()?;
            if let Ok(Some(_)) = self.seal(&sp, entry, group_id, &msg, None) {
                sp.commit()?;
            }
        }
        tx.commit()?;
        Ok(msg.id)
    }

    /// Delivers the outbox of `group_id` (every chat's, if `None`) in order, as far as the
    /// server lets: a chat whose next message must wait keeps the later ones waiting too, so
    /// they arrive in the order they were written. Only messages due now are tried unless
    /// `all`. Returns the ids of messages whose status changed, with their outcome.
    pub(crate) fn flush_outbox(
        &mut self,
        group_id: Option<&[u8]>,
        all: bool,
    ) -> Result<Vec<Change>, Error> {
        self.resolve_in_doubt()?;
        let entries: Vec<Entry> = {
            let mut stmt = self.conn.prepare(
                "SELECT id, group_id, msg_id, payload, request, attempts, next_at, n FROM outbox
                 WHERE kind = 'message' AND state = 'pending' AND (?1 IS NULL OR group_id = ?1)
                 ORDER BY id",
            )?;
            let rows = stmt.query_map(params![group_id], |r| {
                Ok(Entry {
                    id: r.get(0)?,
                    group_id: r.get(1)?,
                    msg_id: r.get(2)?,
                    payload: r.get(3)?,
                    request: r.get(4)?,
                    attempts: r.get::<_, i64>(5)? as u32,
                    next_at: r.get::<_, i64>(6)?.max(0) as u64,
                    n: r.get(7)?,
                })
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let mut waiting: Vec<Vec<u8>> = Vec::new();
        let mut changed = Vec::new();
        let now = self.now_ms();
        for entry in entries {
            if waiting.contains(&entry.group_id) {
                continue;
            }
            if !all && entry.next_at > now {
                // Not due: it holds back the chat's later messages too.
                waiting.push(entry.group_id);
                continue;
            }
            let (group, msg_id) = (entry.group_id.clone(), entry.msg_id.clone());
            let outcome = self.deliver(entry)?;
            if matches!(outcome, Outcome::Later(_)) {
                waiting.push(group.clone());
            }
            changed.push((group, msg_id, outcome));
        }
        Ok(changed)
    }

    /// Delivers one entry (see the module documentation).
    fn deliver(&mut self, mut entry: Entry) -> Result<Outcome, Error> {
        let (mut caught_up, mut behind) = (false, false);
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            let outcome = match self.attempt(&mut entry) {
                Ok(()) => Outcome::Sent,
                // The full queue may be this device's own: the server queues a copy of every
                // submission for its sender's device too, and a device that only sends never
                // empties it. Catching up does; then it is tried once more.
                Err(e) if e.server_code() == Some("queue_full") && !caught_up => {
                    caught_up = true;
                    match self.catch_up() {
                        Ok(_) => continue,
                        Err(e) if transient(&e) => Outcome::Later(e),
                        Err(e) => return Err(e),
                    }
                }
                // A device far behind its group is refused as a stranger would be (the
                // server tells a member apart only for recent epochs): it catches up once.
                Err(e)
                    if e.is_stale_epoch() || (e.server_code() == Some("not_member") && !behind) =>
                {
                    behind = true;
                    // Never taken: encrypt again once caught up.
                    self.conn
                        .execute("UPDATE outbox SET request = NULL WHERE id = ?1", [entry.id])?;
                    entry.request = None;
                    match self.catch_up().and_then(|_| self.require_active(&entry.group_id)) {
                        Ok(()) => continue,
                        Err(e) if transient(&e) => Outcome::Later(e),
                        Err(e @ Error::NotActive(_)) => Outcome::Failed(e),
                        Err(e) => return Err(e),
                    }
                }
                Err(e @ Error::TooManyRetries) => Outcome::Later(e),
                Err(e) if transient(&e) => {
                    if e.server_code() == Some("unauthorized") {
                        self.api.forget_token();
                    }
                    Outcome::Later(e)
                }
                Err(
                    e @ (Error::Server { .. }
                    | Error::NotActive(_)
                    | Error::UnknownChat(_)
                    | Error::Core(_)
                    | Error::Untrusted(_)
                    | Error::NoRecipients(_)
                    | Error::IdentityChanged(_)),
                ) => Outcome::Failed(e),
                Err(e) => return Err(e),
            };
            self.settle(&entry, &outcome)?;
            return Ok(outcome);
        }
        let outcome = Outcome::Later(Error::TooManyRetries);
        self.settle(&entry, &outcome)?;
        Ok(outcome)
    }

    /// Records an attempt's outcome.
    ///
    /// This write alone is not forced to disk before going on: lost in a crash, it is redone —
    /// the recorded submission is repeated and the server answers with its first answer. (The
    /// write that recorded the submission with its ratchet step was forced: that one must never
    /// be lost.)
    fn settle(&self, entry: &Entry, outcome: &Outcome) -> Result<(), Error> {
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        let result = self.settle_in(entry, outcome);
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        result
    }

    fn settle_in(&self, entry: &Entry, outcome: &Outcome) -> Result<(), Error> {
        let tx = begin(&self.conn)?;
        let status = match outcome {
            Outcome::Sent => {
                tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?.execute([entry.id])?;
                "sent"
            }
            Outcome::Later(e) => {
                let reason = e.to_string();
                let jitter = u64::from(sotto_core::random_bytes(1)?[0]) * 4;
                let next = self.now_ms() + backoff_ms(entry.attempts) + jitter;
                tx.prepare_cached(
                    "UPDATE outbox SET attempts = attempts + 1, next_at = ?2, error = ?3
                     WHERE id = ?1",
                )?
                .execute(params![entry.id, next as i64, reason])?;
                "pending"
            }
            Outcome::Failed(e) => {
                let reason = e.to_string();
                // The message's number goes back to the chat when it was never submitted (a
                // submission might have been taken, whatever the server says) and nothing was
                // numbered after it (nothing later in a chat is encrypted while this waits):
                // recipients then see no gap for a message that never reached them.
                if entry.request.is_none() {
                    tx.prepare_cached(
                        "UPDATE chats SET sent_count = sent_count - 1
                         WHERE group_id = ?1 AND sent_count = (SELECT n FROM outbox WHERE id = ?2)",
                    )?
                    .execute(params![entry.group_id, entry.id])?;
                }
                // A refusal is final for this submission: a resend encrypts (and numbers) anew.
                tx.prepare_cached(
                    "UPDATE outbox SET state = 'failed', request = NULL, n = NULL, error = ?2
                     WHERE id = ?1",
                )?
                .execute(params![entry.id, reason])?;
                "failed"
            }
        };
        if let Some(msg_id) = &entry.msg_id {
            tx.prepare_cached(
                "UPDATE messages SET status = ?1 WHERE group_id = ?2 AND msg_id = ?3",
            )?
            .execute(params![status, entry.group_id, msg_id])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// One submission of an entry: encrypted now (recorded with the ratchet step), or the
    /// recorded one again.
    fn attempt(&mut self, entry: &mut Entry) -> Result<(), Error> {
        self.require_active(&entry.group_id)?;
        let token = self.token()?;
        let request = match &entry.request {
            Some(json) => serde_json::from_slice::<proto::SubmitRequest>(json)
                .map_err(|e| Error::Io(format!("a stored submission is unreadable: {e}")))?,
            None => {
                // Devices the server reported revoked get nothing more until fresh lists
                // confirm which to remove (a lie of the server's then costs a delay, not a
                // message to a device that may be in someone else's hands). First: a
                // contact's changed identity key shows up there.
                self.prune_group(&entry.group_id)?;
                self.require_verified_keys(&entry.group_id)?;
                // One that no longer decodes fails alone; it must not hold up the outbox.
                let msg = Message::decode(&entry.payload).map_err(Error::Core)?;
                let tx = begin(&self.conn)?;
                let sealed = self.seal(&tx, entry.id, &entry.group_id, &msg, entry.n)?;
                let Some((request, json, n)) = sealed else {
                    // Nobody else is in the chat: a setting has no one to tell, but a message
                    // would reach no one, and must not look sent (notes to self of an
                    // account with one device are kept here, which is all they are for).
                    let notes = self.chat_row(&entry.group_id)?.kind == "note";
                    return match entry.msg_id {
                        Some(_) if !notes => Err(Error::NoRecipients(
                            "nobody else is in this chat, so the message would reach no one".into(),
                        )),
                        _ => Ok(()),
                    };
                };
                tx.commit()?;
                entry.request = Some(json);
                entry.n = Some(n);
                request
            }
        };
        failpoint("before-submit");
        let resp = self.submit_sealed(request, &token)?;
        failpoint("after-submit");
        if !resp.dropped.is_empty() {
            db::mark_dropped(&self.conn, &entry.group_id)?;
            // The server queued nothing for revoked devices: if they were all the other
            // accounts' devices, the message reached none of the people it was for.
            let others: Vec<u64> = mls::members(&db::provider(&self.conn), &entry.group_id)?
                .into_iter()
                .filter(|d| d.address != self.me.device.address)
                .map(|d| d.device_id)
                .collect();
            if entry.msg_id.is_some()
                && !others.is_empty()
                && others.iter().all(|d| resp.dropped.contains(d))
            {
                return Err(Error::NoRecipients(
                    "every device this chat holds for the others was revoked, so the message \
                     reached no one; it can be sent again once their new devices are in the \
                     chat (`sotto sync`, then `sotto resend`)"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// Encrypts an outbox message and records the submission it makes, in `tx` — the ratchet
    /// step and the submission commit together. `None` if nobody else is in the chat.
    fn seal(
        &self,
        tx: &rusqlite::Connection,
        entry: i64,
        group_id: &[u8],
        msg: &Message,
        given: Option<i64>,
    ) -> Result<Option<(proto::SubmitRequest, Vec<u8>, i64)>, Error> {
        let p = db::provider(tx);
        // The message's number among this device's messages in the chat: kept by the entry
        // once `given` (encrypting again reuses it), counted with the ratchet step.
        let n = match given {
            Some(n) => n,
            None => tx
                .prepare_cached(
                    "UPDATE chats SET sent_count = sent_count + 1 WHERE group_id = ?1
                     RETURNING sent_count",
                )?
                .query_row([group_id], |r| r.get(0))?,
        };
        // The newest directory root this device was shown goes along once per chat, so that
        // members notice a server showing them different directories.
        let root = self.root_to_tell(tx, group_id, given.is_some())?;
        let msg = Message { n: Some(n.max(0) as u64), root, ..msg.clone() };
        // One load of the group; a message for nobody is not encrypted at all (the savepoint
        // or transaction it runs in is dropped).
        let mls::Sealed { epoch, members, ciphertext, credential } =
            mls::seal(&p, group_id, &self.me, &msg.encode())?;
        if members.iter().all(|d| d == &self.me.device) {
            return Ok(None);
        }
        db::expect_echo(tx, &ciphertext, self.now_ms() as i64)?;
        let request = proto::SubmitRequest {
            submission_id: Some(Bytes(sotto_core::random_bytes(16)?)),
            group_id: Bytes(group_id.to_vec()),
            kind: proto::SubmitKind::Application,
            epoch,
            delivery: proto::Delivery { recipients: Vec::new(), message: Bytes(ciphertext) },
            welcome: None,
            removed: Vec::new(),
            // Copies nobody fetched in time go too (disappearing messages).
            expires_at: msg.expires_in.map(|s| msg.sent_at / 1000 + s),
            credential: Some(Bytes(credential.as_bytes().to_vec())),
            next_credential: None,
            roster: None,
        };
        let json = serde_json::to_vec(&request).map_err(|e| Error::Io(e.to_string()))?;
        tx.prepare_cached("UPDATE outbox SET request = ?2, n = ?3 WHERE id = ?1")?
            .execute(params![entry, json, n])?;
        Ok(Some((request, json, n)))
    }

    /// Tries a failed (or still pending) message of this device again now. `spec` is its id or
    /// an unambiguous prefix of it.
    pub fn resend(&mut self, spec: &str) -> Result<MessageView, Error> {
        let (group_id, msg_id) = self.own_message(spec)?;
        let entry: Option<i64> = self
            .conn
            .query_row(
                "SELECT id FROM outbox WHERE group_id = ?1 AND msg_id = ?2",
                params![group_id, msg_id],
                |r| r.get(0),
            )
            .optional()?;
        match entry {
            Some(id) => {
                self.conn.prepare_cached(
                    "UPDATE outbox SET state = 'pending', next_at = 0, attempts = 0 WHERE id = ?1")?.execute([id],
                )?;
            }
            None => {
                // Written before this device kept an outbox: rebuilt from what the chat shows.
                let (kind, text, status): (String, String, String) = self.conn.prepare_cached(
                    "SELECT kind, body, status FROM messages WHERE group_id = ?1 AND msg_id = ?2")?.query_row(params![group_id, msg_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?;
                if kind != "text" || status == "sent" {
                    return Err(Error::Invalid(format!("message {msg_id} was sent already")));
                }
                let msg = Message {
                    v: Body::text("").version(),
                    id: msg_id.clone(),
                    sent_at: self.now_ms(),
                    expires_in: None,
                    n: None,
                    root: None,
                    body: Body::text(text),
                };
                self.conn
                    .prepare_cached(
                        "INSERT INTO outbox (group_id, kind, msg_id, payload, created_at)
                     VALUES (?1, 'message', ?2, ?3, ?4)",
                    )?
                    .execute(params![group_id, msg_id, msg.encode(), self.now_ms() as i64])?;
            }
        }
        let changed = self.flush_outbox(Some(&group_id), true)?;
        self.message_view(&group_id, &msg_id, changed)
    }

    /// The view of one of this device's messages after a flush: an error if it could not be
    /// sent now, with what becomes of it.
    pub(crate) fn message_view(
        &self,
        group_id: &[u8],
        msg_id: &str,
        changed: Vec<Change>,
    ) -> Result<MessageView, Error> {
        let outcome = changed
            .into_iter()
            .find(|(g, m, _)| g == group_id && m.as_deref() == Some(msg_id))
            .map(|c| c.2);
        let view = self
            .message_views("WHERE m.group_id = ?1 AND m.msg_id = ?2", params![group_id, msg_id])?
            .pop()
            .ok_or(Error::Internal("a sent message without a stored row"))?;
        match outcome {
            Some(Outcome::Later(e)) => Err(Error::Queued { message: view.id, source: e.into() }),
            Some(Outcome::Failed(e)) => Err(Error::NotSent { message: view.id, source: e.into() }),
            Some(Outcome::Sent) => Ok(view),
            // Held behind an earlier message of the chat that must wait.
            None if view.status == "pending" => Err(Error::Queued {
                message: view.id,
                source: Error::Invalid("an earlier message of this chat waits to be sent".into())
                    .into(),
            }),
            None => Ok(view),
        }
    }

    /// When the outbox's next waiting message is due (Unix milliseconds).
    pub(crate) fn outbox_next_at(&self) -> Result<Option<u64>, Error> {
        let next: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT MIN(o.next_at) FROM outbox o
             WHERE o.kind = 'message' AND o.state = 'pending'
               AND NOT EXISTS (SELECT 1 FROM outbox e WHERE e.group_id = o.group_id
                               AND e.kind = 'message' AND e.state = 'pending' AND e.id < o.id)",
            )?
            .query_row([], |r| r.get(0))?;
        Ok(next.map(|n| n.max(0) as u64))
    }

    /// The messages a flush changed, as the chat shows them now.
    pub(crate) fn updated_views(&self, changed: Vec<Change>) -> Result<Vec<MessageView>, Error> {
        let mut views = Vec::new();
        for (group_id, msg_id, _) in changed {
            let Some(msg_id) = msg_id else { continue };
            views.extend(self.message_views(
                "WHERE m.group_id = ?1 AND m.msg_id = ?2",
                params![group_id, msg_id],
            )?);
        }
        Ok(views)
    }

    /// A message this account sent, by id or unambiguous id prefix.
    fn own_message(&self, spec: &str) -> Result<(Vec<u8>, String), Error> {
        let spec = spec.trim().to_ascii_lowercase();
        if spec.len() < 4 {
            return Err(Error::Invalid("give at least 4 characters of the message id".into()));
        }
        let mut stmt = self.conn.prepare(
            "SELECT group_id, msg_id FROM messages
             WHERE sender = ?1 AND kind IN ('text', 'file') AND substr(msg_id, 1, ?3) = ?2",
        )?;
        let rows = stmt.query_map(params![self.account.address, spec, spec.len() as i64], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?))
        })?;
        let found: Vec<(Vec<u8>, String)> = rows.collect::<Result<_, _>>()?;
        match found.len() {
            0 => Err(Error::UnknownMessage(spec)),
            1 => Ok(found.into_iter().next().ok_or(Error::Internal("a message vanished"))?),
            _ => Err(Error::Invalid(format!("{spec} is the start of several message ids"))),
        }
    }

    // ---- commits ----

    /// Records a commit about to be submitted, with the pending commit already stored in the
    /// same transaction (see [`Client::commit_once`]).
    pub(crate) fn record_commit(
        &self,
        tx: &rusqlite::Transaction<'_>,
        request: &proto::SubmitRequest,
    ) -> Result<i64, Error> {
        let json = serde_json::to_vec(request).map_err(|e| Error::Io(e.to_string()))?;
        tx.prepare_cached(
            "INSERT INTO outbox (group_id, kind, request, created_at)
             VALUES (?1, 'commit', ?2, ?3)",
        )?
        .execute(params![request.group_id.0, json, self.now_ms() as i64])?;
        Ok(tx.last_insert_rowid())
    }

    /// The server took this device's commit: merges it, shows what it did, and forgets the
    /// record, in one transaction.
    pub(crate) fn commit_taken(&self, entry: i64, group_id: &[u8]) -> Result<(), Error> {
        let tx = begin(&self.conn)?;
        let p = db::provider(&tx);
        let changes = mls::pending_changes(&p, group_id)?;
        mls::merge_pending_commit(&p, group_id)?;
        // The committer sees what its commit did, as every other member does.
        let me = self.account.address.clone();
        let present = mls::members(&p, group_id)?;
        for e in commit_events(&me, &me, &changes, &present, false) {
            tx.prepare_cached(
                "INSERT INTO messages (group_id, msg_id, sender, kind, body, status,
                                       sent_at, received_at, reported)
                 VALUES (?1, ?2, ?3, ?6, ?4, 'sent', ?5, ?5, 1)",
            )?
            .execute(params![
                group_id,
                format!("event-{}", random_hex(8)?),
                e.sender,
                e.text,
                self.now_ms() as i64,
                if e.account { "mark" } else { "event" }
            ])?;
        }
        tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?.execute([entry])?;
        tx.commit()?;
        Ok(())
    }

    /// The server did not take this device's commit: forgets it.
    pub(crate) fn commit_refused(&self, entry: i64, group_id: &[u8]) -> Result<(), Error> {
        let tx = begin(&self.conn)?;
        // The group may be gone since (this device was removed): nothing to clear then.
        match mls::clear_pending_commit(&db::provider(&tx), group_id) {
            Ok(()) | Err(sotto_core::Error::UnknownGroup(_)) => {}
            Err(e) => return Err(e.into()),
        }
        tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?.execute([entry])?;
        tx.commit()?;
        Ok(())
    }

    /// Settles every commit whose answer was lost, by submitting it again: the server answers
    /// a repeat with its first answer. Runs before anything is processed, so that a commit
    /// the server took is merged before the messages that follow it.
    pub(crate) fn resolve_in_doubt(&mut self) -> Result<(), Error> {
        let doubts: Vec<(i64, Vec<u8>, Vec<u8>)> = {
            let mut stmt = self.conn.prepare(
                "SELECT id, group_id, request FROM outbox WHERE kind = 'commit' ORDER BY id",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        for (entry, group_id, json) in doubts {
            let request: proto::SubmitRequest = serde_json::from_slice(&json)
                .map_err(|e| Error::Io(format!("a stored commit is unreadable: {e}")))?;
            let token = self.token()?;
            match self.submit_sealed(request, &token) {
                Ok(_) => self.commit_taken(entry, &group_id)?,
                Err(e) if transient(&e) => return Err(e),
                // Refused (another commit won the epoch, or the group is closed to us).
                Err(_) => self.commit_refused(entry, &group_id)?,
            }
        }
        Ok(())
    }
}
