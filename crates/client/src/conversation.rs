//! What a conversation holds besides its messages: replies, reactions, edits and deletions
//! (amendments), receipts and read state, search and paging, nicknames, chat flags and notes
//! to self.
//!
//! An amendment names its message by id. It is applied in the same transaction as the queue
//! position it came from; one that arrives before its message waits in `amends_waiting` and
//! is applied when the message arrives. Edits carry their sender's clock: the latest wins,
//! whatever order they arrive in. Only a message's sender (any device of that account) may
//! edit or delete it; anyone in the chat may react.

use std::collections::{BTreeSet, HashMap};

use rusqlite::{Connection, OptionalExtension, params};
use sotto_core::Address;
use sotto_core::content::{Body, ChatKind, MAX_EMOJI_LEN, MAX_RECEIPT_IDS, ReceiptKind};
use sotto_core::mls;

use crate::outbox::Outcome;
use crate::*;

/// Amendments kept waiting for their message, per chat and sender (older ones are dropped
/// first).
const MAX_WAITING: i64 = 100;
/// How long an amendment waits for its message (milliseconds).
const WAITING_MS: i64 = 30 * 86_400_000;
/// How long delivery receipts gather before they go, so that a burst of messages is
/// acknowledged in one (milliseconds).
pub(crate) const RECEIPT_DELAY_MS: u64 = 2_000;
/// How much of a replied-to message a reply quotes, in characters.
const QUOTE_CHARS: usize = 120;
/// What a note-to-self chat is called.
pub(crate) const NOTES_TITLE: &str = "Notes to self";
/// Setting: send delivery receipts (default on).
const DELIVERY_RECEIPTS: &str = "delivery_receipts";
/// Setting: send read receipts (default off).
const READ_RECEIPTS: &str = "read_receipts";

/// A stored text or file message an amendment names.
pub(crate) struct Found {
    pub(crate) group_id: Vec<u8>,
    pub(crate) msg_id: String,
    pub(crate) sender: String,
    pub(crate) kind: String,
    pub(crate) body: String,
    pub(crate) deleted: bool,
    pub(crate) attachment: Option<String>,
}

/// Whether this account sends delivery and read receipts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReceiptSettings {
    /// Delivery receipts (on unless turned off).
    pub delivery: bool,
    /// Read receipts (off unless turned on).
    pub read: bool,
}

/// A contact's local name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Contact {
    /// The account.
    pub address: String,
    /// The name this home shows for it; none once cleared.
    pub nickname: Option<String>,
}

/// A chat flag set with [`Client::set_chat_flag`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatFlag {
    /// No notifications.
    Muted,
    /// Listed first.
    Pinned,
    /// Listed only with `all`.
    Archived,
}

impl ChatFlag {
    fn column(self) -> &'static str {
        match self {
            ChatFlag::Muted => "muted",
            ChatFlag::Pinned => "pinned",
            ChatFlag::Archived => "archived",
        }
    }
}

/// The chats that make one conversation with `group_id`: every direct chat with the same
/// account (both sides may have started one at once), every notes chat, or the chat alone.
pub(crate) fn conversation(conn: &Connection, group_id: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
    let row: Option<(String, Option<String>)> = conn
        .prepare_cached("SELECT kind, peer FROM chats WHERE group_id = ?1")?
        .query_row([group_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let mut stmt = match row {
        Some((kind, Some(peer))) if kind == "direct" => {
            let mut stmt = conn
                .prepare_cached("SELECT group_id FROM chats WHERE kind = 'direct' AND peer = ?1")?;
            let rows = stmt.query_map([peer], |r| r.get(0))?;
            return Ok(rows.collect::<Result<_, _>>()?);
        }
        Some((kind, _)) if kind == "note" => {
            conn.prepare_cached("SELECT group_id FROM chats WHERE kind = 'note'")?
        }
        _ => return Ok(vec![group_id.to_vec()]),
    };
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The text or file message `msg_id` in one of `groups`.
pub(crate) fn find_message(
    conn: &Connection,
    groups: &[Vec<u8>],
    msg_id: &str,
) -> Result<Option<Found>, Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT group_id, sender, kind, body, deleted, attachment FROM messages
         WHERE msg_id = ?1 AND kind IN ('text', 'file')",
    )?;
    let rows = stmt.query_map([msg_id], |r| {
        Ok(Found {
            group_id: r.get(0)?,
            msg_id: msg_id.to_string(),
            sender: r.get(1)?,
            kind: r.get(2)?,
            body: r.get(3)?,
            deleted: r.get(4)?,
            attachment: r.get(5)?,
        })
    })?;
    for found in rows {
        let found = found?;
        if groups.contains(&found.group_id) {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// Applies an amendment by `sender` (an account) to `found`; whether it changed anything.
/// Only its sender edits or deletes a message; a later edit or reaction (by the sender's
/// clock, then id) wins over an earlier one.
fn apply_amend(
    conn: &Connection,
    found: &Found,
    sender: &str,
    amend_id: &str,
    sent_at: u64,
    body: &Body,
) -> Result<bool, Error> {
    let at = i64::try_from(sent_at).unwrap_or(i64::MAX);
    let (group_id, target) = (&found.group_id, &found.msg_id);
    if found.deleted {
        return Ok(false);
    }
    let changed = match body {
        Body::Reaction { emoji, .. } => conn
            .prepare_cached(
                "INSERT INTO reactions (group_id, target, reactor, emoji, sent_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (group_id, target, reactor) DO UPDATE
                 SET emoji = excluded.emoji, sent_at = excluded.sent_at
                 WHERE excluded.sent_at >= reactions.sent_at",
            )?
            .execute(params![group_id, target, sender, emoji, at])?,
        Body::Edit { text, .. } if found.sender == sender && found.kind == "text" => conn
            .prepare_cached(
                "UPDATE messages SET body = ?3, edited_at = ?4, edit_id = ?5
                 WHERE group_id = ?1 AND msg_id = ?2 AND deleted = 0
                   AND (edited_at IS NULL OR edited_at < ?4 OR (edited_at = ?4 AND edit_id < ?5))",
            )?
            .execute(params![group_id, target, text, at, amend_id])?,
        Body::Delete { .. } if found.sender == sender => {
            conn.prepare_cached("DELETE FROM reactions WHERE group_id = ?1 AND target = ?2")?
                .execute(params![group_id, target])?;
            conn.prepare_cached(
                "UPDATE messages SET body = '', deleted = 1, attachment = NULL, reply_to = NULL,
                                     mentions = NULL, edited_at = NULL, edit_id = NULL
                 WHERE group_id = ?1 AND msg_id = ?2",
            )?
            .execute(params![group_id, target])?
        }
        _ => 0,
    };
    Ok(changed > 0)
}

/// The start of a message's text, for a quote.
fn excerpt(text: &str) -> String {
    let mut out: String = text.chars().take(QUOTE_CHARS).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// A full-text query matching messages that hold every word of `text` (each as a prefix).
/// The user's text never reaches the query syntax: each word is quoted.
fn fts_query(text: &str) -> Result<String, Error> {
    let words: Vec<String> = text
        .split_whitespace()
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .map(|w| format!("\"{}\"*", w.replace('"', "\"\"")))
        .collect();
    if words.is_empty() {
        return Err(Error::Invalid("give at least one word to search for".into()));
    }
    Ok(words.join(" "))
}

impl Client {
    /// Fills in what a view shows besides its row: the quoted message, reactions, and for
    /// this account's messages, who received and read them.
    pub(crate) fn complete_views(&self, views: &mut [MessageView]) -> Result<(), Error> {
        let mut others: HashMap<String, BTreeSet<String>> = HashMap::new();
        for v in views.iter_mut().filter(|v| matches!(v.kind.as_str(), "text" | "file")) {
            let group_id = hex::decode(&v.chat).unwrap_or_default();
            if let Some(quote) = &mut v.reply_to {
                let groups = conversation(&self.conn, &group_id)?;
                if let Some(found) = find_message(&self.conn, &groups, &quote.id)? {
                    quote.text = (!found.deleted).then(|| excerpt(&found.body));
                    quote.sender = Some(found.sender);
                }
            }
            let mut stmt = self.conn.prepare_cached(
                "SELECT reactor, emoji FROM reactions
                 WHERE group_id = ?1 AND target = ?2 AND emoji != '' ORDER BY sent_at, reactor",
            )?;
            let rows = stmt.query_map(params![group_id, v.id], |r| {
                Ok(ReactionView { from: r.get(0)?, emoji: r.get(1)? })
            })?;
            v.reactions = rows.collect::<Result<_, _>>()?;
            if v.sender != self.account.address || v.status != "sent" {
                continue;
            }
            let mut stmt = self.conn.prepare_cached(
                "SELECT account, read_at IS NOT NULL FROM receipts
                 WHERE group_id = ?1 AND msg_id = ?2 ORDER BY delivered_at, account",
            )?;
            let rows = stmt.query_map(params![group_id, v.id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?))
            })?;
            for row in rows {
                let (account, read) = row?;
                if read {
                    v.read_by.push(account.clone());
                }
                v.delivered_to.push(account);
            }
            if v.delivered_to.is_empty() {
                continue;
            }
            // Delivered once every other account now in the chat has it.
            if !others.contains_key(&v.chat) {
                let members = match mls::members(&db::provider(&self.conn), &group_id) {
                    Ok(m) => m,
                    Err(sotto_core::Error::UnknownGroup(_)) => Vec::new(),
                    Err(e) => return Err(e.into()),
                };
                let set = members
                    .into_iter()
                    .map(|d| d.address.to_string())
                    .filter(|a| a != &self.account.address)
                    .collect();
                others.insert(v.chat.clone(), set);
            }
            let want = &others[&v.chat];
            let covers =
                |list: &[String]| !want.is_empty() && want.iter().all(|a| list.contains(a));
            if covers(&v.read_by) {
                v.status = "read".into();
            } else if covers(&v.delivered_to) {
                v.status = "delivered".into();
            }
        }
        Ok(())
    }

    // ---- receiving ----

    /// A reaction, edit or deletion from `sender` arrived in `group_id`: applied to its
    /// message, or kept until the message arrives. Returns the message it changed.
    pub(crate) fn receive_amend(
        &self,
        conn: &Connection,
        group_id: &[u8],
        sender: &str,
        amend_id: &str,
        sent_at: u64,
        body: &Body,
    ) -> Result<Option<(Vec<u8>, String)>, Error> {
        let target = match body {
            Body::Reaction { target, .. } | Body::Edit { target, .. } | Body::Delete { target } => {
                target
            }
            _ => return Ok(None),
        };
        let groups = conversation(conn, group_id)?;
        if let Some(found) = find_message(conn, &groups, target)? {
            let changed = apply_amend(conn, &found, sender, amend_id, sent_at, body)?;
            return Ok(changed.then_some((found.group_id, found.msg_id)));
        }
        let json = serde_json::to_string(body).map_err(|e| Error::Io(e.to_string()))?;
        conn.prepare_cached(
            "INSERT INTO amends_waiting (group_id, target, sender, msg_id, sent_at, body, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            group_id,
            target,
            sender,
            amend_id,
            i64::try_from(sent_at).unwrap_or(i64::MAX),
            json,
            self.now_ms() as i64
        ])?;
        // A member sending amendments for messages that never come fills nothing up, and
        // pushes out only its own.
        conn.prepare_cached(
            "DELETE FROM amends_waiting WHERE group_id = ?1 AND sender = ?2 AND id <= (
                 SELECT id FROM amends_waiting WHERE group_id = ?1 AND sender = ?2
                 ORDER BY id DESC LIMIT 1 OFFSET ?3)",
        )?
        .execute(params![group_id, sender, MAX_WAITING])?;
        Ok(None)
    }

    /// A text or file message was stored: what waited for it applies now, and the chat
    /// comes back into the list.
    pub(crate) fn message_arrived(
        &self,
        conn: &Connection,
        group_id: &[u8],
        msg_id: &str,
        sender: &str,
    ) -> Result<(), Error> {
        let groups = conversation(conn, group_id)?;
        let waiting: Vec<(i64, Vec<u8>, String, String, i64, String)> = {
            let mut stmt = conn.prepare_cached(
                "SELECT id, group_id, sender, msg_id, sent_at, body FROM amends_waiting
                 WHERE target = ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map([msg_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        for (id, group, amender, amend_id, sent_at, body) in waiting {
            if !groups.contains(&group) {
                continue;
            }
            if let (Ok(body), Some(found)) =
                (serde_json::from_str::<Body>(&body), find_message(conn, &groups, msg_id)?)
            {
                apply_amend(conn, &found, &amender, &amend_id, sent_at.max(0) as u64, &body)?;
            }
            conn.prepare_cached("DELETE FROM amends_waiting WHERE id = ?1")?.execute([id])?;
        }
        if sender != self.account.address {
            for g in &groups {
                conn.prepare_cached(
                    "UPDATE chats SET hidden = 0, archived = archived * muted WHERE group_id = ?1",
                )?
                .execute([g])?;
            }
            if db::setting(conn, DELIVERY_RECEIPTS)?.unwrap_or(1) == 1 {
                conn.prepare_cached(
                    "INSERT OR IGNORE INTO receipts_due (group_id, msg_id, receipt, at)
                     VALUES (?1, ?2, 'delivered', ?3)",
                )?
                .execute(params![group_id, msg_id, self.now_ms() as i64])?;
            }
        }
        Ok(())
    }

    /// A receipt from `sender` (an account) arrived. Another device of this account reading
    /// messages marks them read here too. Returns the messages of this account it changed.
    pub(crate) fn receive_receipt(
        &self,
        conn: &Connection,
        group_id: &[u8],
        sender: &str,
        receipt: ReceiptKind,
        ids: &[String],
    ) -> Result<Vec<(Vec<u8>, String)>, Error> {
        let groups = conversation(conn, group_id)?;
        let now = self.now_ms() as i64;
        let mut changed = Vec::new();
        for id in ids {
            let Some(found) = find_message(conn, &groups, id)? else { continue };
            if sender == self.account.address {
                if receipt == ReceiptKind::Read {
                    conn.prepare_cached(
                        "UPDATE messages SET read_at = ?3
                         WHERE group_id = ?1 AND msg_id = ?2 AND read_at IS NULL",
                    )?
                    .execute(params![found.group_id, id, now])?;
                }
                continue;
            }
            if found.sender != self.account.address {
                continue;
            }
            let read = (receipt == ReceiptKind::Read).then_some(now);
            let n = conn
                .prepare_cached(
                    "INSERT INTO receipts (group_id, msg_id, account, delivered_at, read_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (group_id, msg_id, account) DO UPDATE
                     SET read_at = COALESCE(receipts.read_at, excluded.read_at)
                     WHERE receipts.read_at IS NULL AND excluded.read_at IS NOT NULL",
                )?
                .execute(params![found.group_id, id, sender, now, read])?;
            if n > 0 {
                changed.push((found.group_id, found.msg_id));
            }
        }
        Ok(changed)
    }

    // ---- receipts ----

    /// Sends the receipts that waited long enough (all of them if `force`), one message per
    /// chat and kind of up to [`MAX_RECEIPT_IDS`] ids. They go out with the outbox.
    pub(crate) fn queue_receipts(&mut self, force: bool) -> Result<(), Error> {
        let cutoff = if force {
            i64::MAX
        } else {
            (self.now_ms() - RECEIPT_DELAY_MS.min(self.now_ms())) as i64
        };
        let groups: Vec<Vec<u8>> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT group_id FROM receipts_due GROUP BY group_id HAVING MIN(at) <= ?1",
            )?;
            let rows = stmt.query_map([cutoff], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for group_id in groups {
            let sendable = self.require_active(&group_id).is_ok()
                && self.require_verified_keys(&group_id).is_ok();
            for receipt in [ReceiptKind::Delivered, ReceiptKind::Read] {
                let name = if receipt == ReceiptKind::Read { "read" } else { "delivered" };
                loop {
                    let ids: Vec<String> = {
                        let mut stmt = self.conn.prepare_cached(
                            "SELECT msg_id FROM receipts_due WHERE group_id = ?1 AND receipt = ?2
                             ORDER BY at LIMIT ?3",
                        )?;
                        let rows = stmt
                            .query_map(params![group_id, name, MAX_RECEIPT_IDS as i64], |r| {
                                r.get(0)
                            })?;
                        rows.collect::<Result<_, _>>()?
                    };
                    if ids.is_empty() {
                        break;
                    }
                    let valid: Vec<String> = ids
                        .iter()
                        .filter(|id| sotto_core::content::is_message_id(id))
                        .cloned()
                        .collect();
                    if sendable && !valid.is_empty() {
                        self.enqueue(&group_id, Body::Receipt { receipt, ids: valid })?;
                    }
                    let tx = begin(&self.conn)?;
                    for id in &ids {
                        tx.prepare_cached(
                            "DELETE FROM receipts_due
                             WHERE group_id = ?1 AND msg_id = ?2 AND receipt = ?3",
                        )?
                        .execute(params![group_id, id, name])?;
                    }
                    tx.commit()?;
                }
            }
        }
        Ok(())
    }

    /// When receipts gathering now are due to go (Unix milliseconds).
    pub(crate) fn receipts_next_at(&self) -> Result<Option<u64>, Error> {
        let at: Option<i64> = self
            .conn
            .prepare_cached("SELECT MIN(at) FROM receipts_due")?
            .query_row([], |r| r.get(0))?;
        Ok(at.map(|a| a.max(0) as u64 + RECEIPT_DELAY_MS))
    }

    /// Turns delivery or read receipts on or off (`None` leaves one as it is); returns both.
    pub fn receipts(
        &mut self,
        delivery: Option<bool>,
        read: Option<bool>,
    ) -> Result<ReceiptSettings, Error> {
        if let Some(on) = delivery {
            db::set_setting(&self.conn, DELIVERY_RECEIPTS, u64::from(on))?;
        }
        if let Some(on) = read {
            db::set_setting(&self.conn, READ_RECEIPTS, u64::from(on))?;
        }
        Ok(ReceiptSettings {
            delivery: db::setting(&self.conn, DELIVERY_RECEIPTS)?.unwrap_or(1) == 1,
            read: db::setting(&self.conn, READ_RECEIPTS)?.unwrap_or(0) == 1,
        })
    }

    /// Marks a chat's messages read; with read receipts on, tells their senders.
    pub fn mark_read(&mut self, chat: &str) -> Result<ChatSummary, Error> {
        let group_id = self.resolve(chat)?;
        let groups = conversation(&self.conn, &group_id)?;
        let send = db::setting(&self.conn, READ_RECEIPTS)?.unwrap_or(0) == 1;
        let now = self.now_ms() as i64;
        let tx = begin(&self.conn)?;
        for g in &groups {
            if send {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO receipts_due (group_id, msg_id, receipt, at)
                     SELECT group_id, msg_id, 'read', ?3 FROM messages
                     WHERE group_id = ?1 AND read_at IS NULL AND sender != ?2
                       AND kind IN ('text', 'file') AND deleted = 0",
                )?
                .execute(params![g, self.account.address, now])?;
            }
            tx.prepare_cached(
                "UPDATE messages SET read_at = ?2 WHERE group_id = ?1 AND read_at IS NULL",
            )?
            .execute(params![g, now])?;
        }
        tx.commit()?;
        if send {
            self.queue_receipts(true)?;
            // What cannot go now goes with the outbox later.
            if let Err(e) = self.flush_outbox(None, false)
                && !crate::outbox::transient(&e)
            {
                return Err(e);
            }
        }
        self.chat_summary(&group_id)
    }

    // ---- sending amendments ----

    /// A text or file message by id or unambiguous id prefix, in any chat; only this
    /// account's if `own`.
    pub(crate) fn find_by_prefix(&self, spec: &str, own: bool) -> Result<Found, Error> {
        let spec = spec.trim().to_ascii_lowercase();
        if spec.len() < 4 {
            return Err(Error::Invalid("give at least 4 characters of the message id".into()));
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT group_id, msg_id FROM messages
             WHERE kind IN ('text', 'file') AND substr(msg_id, 1, ?2) = ?1
               AND (?3 IS NULL OR sender = ?3)",
        )?;
        let own = own.then_some(self.account.address.as_str());
        let rows = stmt.query_map(params![spec, spec.len() as i64, own], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?))
        })?;
        let found: Vec<(Vec<u8>, String)> = rows.collect::<Result<_, _>>()?;
        match found.as_slice() {
            [] => Err(Error::UnknownMessage(spec)),
            [(group_id, msg_id)] => {
                find_message(&self.conn, std::slice::from_ref(group_id), msg_id)?
                    .ok_or(Error::Internal("a message vanished"))
            }
            _ => Err(Error::Invalid(format!("{spec} is the start of several message ids"))),
        }
    }

    /// The chat to send in about a message of `group_id`: for a direct conversation, the
    /// one direct chat messages to that account go to.
    fn sending_chat(&self, group_id: &[u8]) -> Result<Vec<u8>, Error> {
        let row = self.chat_row(group_id)?;
        match (row.kind.as_str(), row.peer) {
            ("direct", Some(peer)) => {
                Ok(self.direct_chat(&peer.parse()?)?.unwrap_or_else(|| group_id.to_vec()))
            }
            _ => Ok(group_id.to_vec()),
        }
    }

    /// Sends an amendment of `found` (applied here as it is written to the outbox) and
    /// returns the message as it shows now.
    fn send_amend(&mut self, found: &Found, body: Body) -> Result<MessageView, Error> {
        if found.deleted {
            return Err(Error::Invalid(format!("message {} was deleted", found.msg_id)));
        }
        let group_id = self.sending_chat(&found.group_id)?;
        self.require_active(&group_id)?;
        self.require_verified_keys(&group_id)?;
        self.enqueue(&group_id, body)?;
        let changed = self.flush_outbox(Some(&group_id), true)?;
        let view = self
            .message_views(
                "WHERE m.group_id = ?1 AND m.msg_id = ?2",
                params![found.group_id, found.msg_id],
            )?
            .pop()
            .ok_or(Error::Internal("an amended message without a stored row"))?;
        for (_, _, outcome) in changed {
            match outcome {
                Outcome::Later(e) => {
                    return Err(Error::Queued { message: view.id, source: e.into() });
                }
                Outcome::Failed(e) => {
                    return Err(Error::NotSent { message: view.id, source: e.into() });
                }
                Outcome::Sent => {}
            }
        }
        Ok(view)
    }

    /// Applies this account's own amendment as it is written to the outbox, in `conn`'s
    /// transaction.
    pub(crate) fn amend_own(
        &self,
        conn: &Connection,
        group_id: &[u8],
        msg: &sotto_core::content::Message,
    ) -> Result<(), Error> {
        self.receive_amend(conn, group_id, &self.account.address, &msg.id, msg.sent_at, &msg.body)?;
        Ok(())
    }

    /// Reacts to a message (any member's) with one emoji, replacing this account's earlier
    /// reaction; an empty emoji removes it.
    pub fn react(&mut self, message: &str, emoji: &str) -> Result<MessageView, Error> {
        let emoji = emoji.trim();
        if emoji.len() > MAX_EMOJI_LEN
            || emoji.chars().any(|c| c.is_control() || c.is_whitespace())
            || emoji.chars().count() > 16
        {
            return Err(Error::Invalid("a reaction is one emoji".into()));
        }
        let found = self.find_by_prefix(message, false)?;
        let target = found.msg_id.clone();
        self.send_amend(&found, Body::Reaction { target, emoji: emoji.into() })
    }

    /// Replaces the text of one of this account's messages.
    pub fn edit_message(&mut self, message: &str, text: &str) -> Result<MessageView, Error> {
        check_text(text)?;
        let found = self.find_by_prefix(message, true)?;
        if found.kind != "text" {
            return Err(Error::Invalid("only a text can be edited".into()));
        }
        let target = found.msg_id.clone();
        self.send_amend(&found, Body::Edit { target, text: text.into() })
    }

    /// Deletes one of this account's messages for everyone: every device keeps a tombstone.
    /// A file it carried is deleted from the server too.
    pub fn delete_message(&mut self, message: &str) -> Result<MessageView, Error> {
        let found = self.find_by_prefix(message, true)?;
        let blob = found.attachment.as_deref().and_then(|a| match serde_json::from_str(a) {
            Ok(Body::File { blob, .. }) => Some(blob),
            _ => None,
        });
        let target = found.msg_id.clone();
        let view = self.send_amend(&found, Body::Delete { target });
        // The file goes once the deletion is out (while it waits, the others can still fetch
        // what their chat still shows).
        if let (Some(blob), Ok(_)) = (blob, &view) {
            let deleted = self.token().and_then(|token| {
                self.api.delete::<proto::Deleted>(&format!("/v1/blobs/{blob}"), &token)
            });
            // Files from other devices of this account or already expired are gone or not
            // this device's to delete; the server deletes the rest when they expire.
            if let Err(e) = deleted
                && e.server_code() != Some("not_found")
            {
                db::add_notice(
                    &self.conn,
                    &format!(
                        "the deleted message's file stays on the server until it expires: {e}"
                    ),
                )?;
            }
        }
        view
    }

    /// Resolves a reply's target in the chat it is sent to.
    pub(crate) fn reply_target(&self, group_id: &[u8], spec: &str) -> Result<String, Error> {
        let found = self.find_by_prefix(spec, false)?;
        if !conversation(&self.conn, group_id)?.contains(&found.group_id) {
            return Err(Error::Invalid(format!("message {} is in another chat", found.msg_id)));
        }
        Ok(found.msg_id)
    }

    /// The accounts a text names as `@address` that are members of the chat.
    pub(crate) fn mentions(&self, group_id: &[u8], text: &str) -> Result<Vec<String>, Error> {
        if !text.contains('@') {
            return Ok(Vec::new());
        }
        let members: BTreeSet<String> = mls::members(&db::provider(&self.conn), group_id)?
            .into_iter()
            .map(|d| d.address.to_string())
            .collect();
        let mut out = Vec::new();
        for word in text.split_whitespace() {
            let Some(rest) = word.strip_prefix('@') else { continue };
            let rest = rest.trim_end_matches(|c: char| !c.is_alphanumeric());
            if let Ok(a) = rest.parse::<Address>()
                && members.contains(a.as_str())
                && !out.contains(&a.to_string())
            {
                out.push(a.to_string());
            }
        }
        out.truncate(sotto_core::content::MAX_MENTIONS);
        Ok(out)
    }

    // ---- history, search ----

    /// Messages (texts and file names) holding every word of `text` (as word starts), newest
    /// first; in one chat, or in all.
    pub fn search(
        &self,
        text: &str,
        chat: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MessageView>, Error> {
        let query = fts_query(text)?;
        let limit = limit.clamp(1, 1000) as i64;
        match chat {
            // The index gives the newest matches first and stops at the limit (deleted
            // messages left it with their text).
            None => self.message_views(
                "WHERE m.id IN (SELECT rowid FROM messages_fts WHERE messages_fts MATCH ?1
                                ORDER BY rowid DESC LIMIT ?2)
                 ORDER BY m.id DESC",
                params![query, limit],
            ),
            Some(chat) => {
                let group_id = self.resolve(chat)?;
                let groups = conversation(&self.conn, &group_id)?;
                let mut out = Vec::new();
                // The newest matches first; the first `limit` of this chat end the walk.
                for g in groups {
                    out.extend(self.message_views(
                        "WHERE m.id IN (
                             SELECT f.rowid FROM messages_fts f JOIN messages x ON x.id = f.rowid
                             WHERE messages_fts MATCH ?1 AND x.group_id = ?3
                             ORDER BY f.rowid DESC LIMIT ?2)
                         ORDER BY m.id DESC",
                        params![query, limit, g],
                    )?);
                }
                out.sort_by_key(|m| std::cmp::Reverse(m.row));
                out.truncate(limit as usize);
                Ok(out)
            }
        }
    }

    /// The stored position of a message (or event) of a conversation, for paging.
    pub(crate) fn position(&self, groups: &[Vec<u8>], msg_id: &str) -> Result<i64, Error> {
        let mut stmt =
            self.conn.prepare_cached("SELECT id, group_id FROM messages WHERE msg_id = ?1")?;
        let rows = stmt.query_map([msg_id.trim()], |r| Ok((r.get::<_, i64>(0)?, r.get(1)?)))?;
        for row in rows {
            let (id, group): (i64, Vec<u8>) = row?;
            if groups.contains(&group) {
                return Ok(id);
            }
        }
        Err(Error::UnknownMessage(msg_id.trim().into()))
    }

    // ---- contacts, chat flags ----

    /// Gives a contact a name shown instead of its address here (never sent anywhere);
    /// `None` or empty clears it.
    pub fn set_nickname(&mut self, address: &str, name: Option<&str>) -> Result<Contact, Error> {
        let address: Address = address.parse()?;
        let name = name.map(str::trim).filter(|n| !n.is_empty());
        match name {
            Some(n) if n.len() > 64 || n.chars().any(char::is_control) => {
                return Err(Error::Invalid("a nickname is 1 to 64 bytes of text".into()));
            }
            Some(n) => {
                self.conn.execute(
                    "INSERT INTO contacts (address, nickname) VALUES (?1, ?2)
                     ON CONFLICT (address) DO UPDATE SET nickname = ?2",
                    params![address.as_str(), n],
                )?;
            }
            None => {
                self.conn.execute("DELETE FROM contacts WHERE address = ?1", [address.as_str()])?;
            }
        }
        Ok(Contact { address: address.to_string(), nickname: name.map(str::to_owned) })
    }

    /// Every contact with a nickname.
    pub fn contacts(&self) -> Result<Vec<Contact>, Error> {
        let mut stmt =
            self.conn.prepare("SELECT address, nickname FROM contacts ORDER BY address")?;
        let rows =
            stmt.query_map([], |r| Ok(Contact { address: r.get(0)?, nickname: r.get(1)? }))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Mutes, pins or archives a chat (or undoes it); here only.
    pub fn set_chat_flag(
        &mut self,
        chat: &str,
        flag: ChatFlag,
        on: bool,
    ) -> Result<ChatSummary, Error> {
        let group_id = self.resolve(chat)?;
        let sql = format!("UPDATE chats SET {} = ?2 WHERE group_id = ?1", flag.column());
        for g in conversation(&self.conn, &group_id)? {
            self.conn.execute(&sql, params![g, on])?;
        }
        self.chat_summary(&group_id)
    }

    /// Deletes a chat's messages on this device and hides it until a new message arrives.
    /// Membership is unchanged (`group leave` leaves); messages still waiting to be sent
    /// stay. Returns how many messages were deleted.
    pub fn delete_chat_for_me(&mut self, chat: &str) -> Result<usize, Error> {
        let group_id = self.resolve(chat)?;
        let tx = begin(&self.conn)?;
        let mut deleted = 0;
        let keep = "NOT EXISTS (SELECT 1 FROM outbox o WHERE o.group_id = messages.group_id
                                AND o.msg_id = messages.msg_id)";
        for g in conversation(&tx, &group_id)? {
            let texts: i64 = tx.query_row(
                &format!(
                    "SELECT COUNT(*) FROM messages
                     WHERE group_id = ?1 AND kind IN ('text', 'file') AND {keep}"
                ),
                [&g],
                |r| r.get(0),
            )?;
            deleted += texts as usize;
            tx.execute(&format!("DELETE FROM messages WHERE group_id = ?1 AND {keep}"), [&g])?;
            for table in ["reactions", "receipts", "receipts_due", "amends_waiting"] {
                tx.execute(&format!("DELETE FROM {table} WHERE group_id = ?1"), [&g])?;
            }
            tx.execute("UPDATE chats SET hidden = 1 WHERE group_id = ?1", [&g])?;
        }
        tx.commit()?;
        Ok(deleted)
    }

    /// Renames a group: every member sees the new name.
    pub fn rename_group(&mut self, chat: &str, name: &str) -> Result<ChatSummary, Error> {
        let name = check_group_name(name)?;
        let group_id = self.resolve(chat)?;
        if self.chat_row(&group_id)?.kind != "group" {
            return Err(Error::Invalid("only a group has a name".into()));
        }
        self.require_active(&group_id)?;
        self.require_verified_keys(&group_id)?;
        // The new name shows here at once, also while the change waits to be sent.
        self.conn
            .execute("UPDATE chats SET name = ?2 WHERE group_id = ?1", params![group_id, name])?;
        let me = self.account.address.clone();
        crate::devices::insert_event(
            &self.conn,
            &group_id,
            &me,
            &format!("{me} renamed the group to {name}"),
        )?;
        let info = Body::ChatInfo { kind: ChatKind::Group, name: Some(name) };
        match self.send_body(&group_id, info) {
            Err(e) if !crate::outbox::transient(&e) => return Err(e),
            // Sent, or kept to be sent when the server is back.
            _ => {}
        }
        self.chat_summary(&group_id)
    }

    /// Refuses to change who is in a notes chat: it holds this account's devices only.
    pub(crate) fn require_shared(&self, group_id: &[u8]) -> Result<(), Error> {
        if self.chat_row(group_id)?.kind == "note" {
            return Err(Error::Invalid(
                "notes to self hold only your own devices; create a group to share them".into(),
            ));
        }
        Ok(())
    }

    /// The notes chat (this account's devices only), made on first use.
    pub(crate) fn notes_chat(&mut self) -> Result<Vec<u8>, Error> {
        let existing: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT group_id FROM chats WHERE kind = 'note' AND state = 'active'
                 ORDER BY ciphersuite DESC, group_id LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(id) = existing {
            return Ok(id);
        }
        let (suite, packages) = self.claim_new_chat(&[])?;
        self.start_chat(ChatKind::Note, None, None, suite, &packages)
    }
}

/// Forgets amendments that waited too long for their message (in a chat with disappearing
/// messages, as long as a message lives), and what belonged to messages about to disappear.
pub(crate) fn purge_waiting(conn: &Connection, now: u64) -> Result<(), Error> {
    let now = now as i64;
    conn.prepare_cached(
        "DELETE FROM amends_waiting WHERE at < ?1 - ?2 OR at < ?1 - (
             SELECT timer_secs * 1000 FROM chats c
             WHERE c.group_id = amends_waiting.group_id AND c.timer_secs > 0)",
    )?
    .execute(params![now, WAITING_MS])?;
    for (table, column) in
        [("reactions", "target"), ("receipts", "msg_id"), ("receipts_due", "msg_id")]
    {
        conn.prepare_cached(&format!(
            "DELETE FROM {table} WHERE EXISTS (
                 SELECT 1 FROM messages m WHERE m.group_id = {table}.group_id
                 AND m.msg_id = {table}.{column} AND m.expires_at IS NOT NULL
                 AND m.expires_at <= ?1)"
        ))?
        .execute([now])?;
    }
    Ok(())
}

/// A text's length rules.
pub(crate) fn check_text(text: &str) -> Result<(), Error> {
    if text.is_empty() {
        return Err(Error::Invalid("empty message".into()));
    }
    if text.len() > sotto_core::content::MAX_TEXT_LEN {
        return Err(Error::Invalid(format!(
            "message longer than {} bytes",
            sotto_core::content::MAX_TEXT_LEN
        )));
    }
    Ok(())
}

/// A group name's rules; the name trimmed.
pub(crate) fn check_group_name(name: &str) -> Result<String, Error> {
    let name = name.trim();
    if name.is_empty() || name.len() > 256 {
        return Err(Error::Invalid("a group name is 1 to 256 bytes".into()));
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_words_are_quoted() {
        assert_eq!(fts_query("hello wor").expect("query"), "\"hello\"* \"wor\"*");
        assert_eq!(fts_query("a\"b OR c").expect("query"), "\"a\"\"b\"* \"OR\"* \"c\"*");
        assert!(fts_query("  ... !! ").is_err());
        assert_eq!(excerpt("short"), "short");
        assert_eq!(excerpt(&"é".repeat(200)).chars().count(), QUOTE_CHARS + 1);
    }
}
