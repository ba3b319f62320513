//! Chats: finding one by name or id, listing them, and their history.

use std::collections::BTreeSet;

use rusqlite::{OptionalExtension, params};
use sotto_core::Address;
use sotto_core::account::DeviceList;
use sotto_core::content::Body;
use sotto_core::mls::{self, Suite};

use crate::conversation::{NOTES_TITLE, conversation};

/// How much of the last message a chat's summary shows, in characters.
const PREVIEW_CHARS: usize = 80;
use crate::db;
use crate::*;

impl Client {
    pub(crate) fn chat_row(&self, group_id: &[u8]) -> Result<ChatRow, Error> {
        self.conn
            .query_row(
                "SELECT kind, name, peer, state FROM chats WHERE group_id = ?1",
                [group_id],
                |r| {
                    Ok(ChatRow {
                        kind: r.get(0)?,
                        name: r.get(1)?,
                        peer: r.get(2)?,
                        state: r.get(3)?,
                    })
                },
            )
            .optional()?
            .ok_or_else(|| Error::UnknownChat(hex::encode(group_id)))
    }

    /// Finds a chat by id, id prefix, group name, or (with `@`) the direct chat with an account.
    pub(crate) fn resolve(&self, spec: &str) -> Result<Vec<u8>, Error> {
        let spec = spec.trim();
        let rows: Vec<(Vec<u8>, Option<String>, Option<String>)> = {
            let mut stmt =
                self.conn.prepare("SELECT group_id, name, peer FROM chats ORDER BY created_at")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let lower = spec.to_ascii_lowercase();
        if let Some((id, ..)) = rows.iter().find(|(id, ..)| hex::encode(id) == lower) {
            return Ok(id.clone());
        }
        // Exact names come first: a group's name, or the address of a direct chat.
        let mut exact: Vec<Vec<u8>> = rows
            .iter()
            .filter(|(_, n, _)| n.as_deref() == Some(spec))
            .map(|r| r.0.clone())
            .collect();
        if let Ok(peer) = spec.parse::<Address>()
            && let Some(direct) = self.direct_chat(&peer)?
            && !exact.contains(&direct)
        {
            exact.push(direct);
        }
        // A contact's nickname names the direct chat with it.
        let named: Vec<String> = {
            let mut stmt =
                self.conn.prepare_cached("SELECT address FROM contacts WHERE nickname = ?1")?;
            let rows = stmt.query_map([spec], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for address in named {
            if let Some(direct) = self.direct_chat(&address.parse()?)?
                && !exact.contains(&direct)
            {
                exact.push(direct);
            }
        }
        if spec.eq_ignore_ascii_case("notes")
            && let Some((id, ..)) = rows.iter().find(|(id, ..)| {
                self.chat_row(id).is_ok_and(|r| r.kind == "note" && r.state == "active")
            })
            && !exact.contains(id)
        {
            exact.push(id.clone());
        }
        let by_prefix: Vec<Vec<u8>> = rows
            .iter()
            .filter(|(id, ..)| lower.len() >= 4 && hex::encode(id).starts_with(&lower))
            .map(|r| r.0.clone())
            .collect();
        // A name that is also the start of another chat's id is ambiguous: someone could name
        // a group after the id of a chat they know, to catch what is meant for it.
        let also_prefix: Vec<Vec<u8>> =
            by_prefix.iter().filter(|id| !exact.contains(id)).cloned().collect();
        if !exact.is_empty() {
            exact.extend(also_prefix);
        }
        for candidates in [exact, by_prefix] {
            match candidates.len() {
                0 => continue,
                1 => return Ok(candidates[0].clone()),
                _ => {
                    let names = candidates
                        .iter()
                        .filter_map(|id| rows.iter().find(|r| &r.0 == id))
                        .map(|(id, name, peer)| {
                            let label = name.clone().or_else(|| peer.clone()).unwrap_or_default();
                            format!("{} {label}", hex::encode(id))
                        })
                        .collect();
                    return Err(Error::AmbiguousChat(spec.into(), names));
                }
            }
        }
        Err(Error::UnknownChat(spec.into()))
    }

    /// The active direct chat with `peer`. If both sides created one at once, both settle
    /// on a post-quantum one if there is one, and among those on the one with the smallest
    /// id (a chat's suite is the same on both sides).
    ///
    /// A chat whose only devices of `peer` are no longer in its signed device list (the peer
    /// recovered the account on a new device) is passed over for one that reaches it.
    pub(crate) fn direct_chat(&self, peer: &Address) -> Result<Option<Vec<u8>>, Error> {
        let candidates: Vec<Vec<u8>> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT group_id FROM chats WHERE kind = 'direct' AND peer = ?1 AND state = 'active'
                 ORDER BY ciphersuite DESC, group_id",
            )?;
            let rows = stmt.query_map([peer.as_str()], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        // Only several chats with the same account need telling apart (the list's signature
        // and the groups' members cost more than the answer is worth otherwise).
        if candidates.len() < 2 {
            return Ok(candidates.into_iter().next());
        }
        let listed =
            db::pinned_list(&self.conn, peer.as_str())?.and_then(|l| DeviceList::verify(&l).ok());
        let Some(listed) = listed else { return Ok(candidates.into_iter().next()) };
        let p = db::provider(&self.conn);
        for id in &candidates {
            let reaches = mls::member_keys(&p, id)?
                .iter()
                .any(|(d, k)| &d.address == peer && listed.lists(k));
            if reaches {
                return Ok(Some(id.clone()));
            }
        }
        Ok(candidates.into_iter().next())
    }

    pub(crate) fn require_active(&self, group_id: &[u8]) -> Result<(), Error> {
        match self.chat_row(group_id)?.state {
            state if state == "active" => Ok(()),
            state => Err(Error::NotActive(state)),
        }
    }

    /// The chats, pinned first, then most recently active first; one entry per direct
    /// correspondent and one for notes. Archived chats only if `all`; chats deleted here
    /// never (until a new message arrives).
    pub fn chats(&self, all: bool) -> Result<Vec<ChatSummary>, Error> {
        let rows: Vec<(Vec<u8>, Option<String>)> = {
            let mut stmt = self.conn.prepare(
                "SELECT c.group_id, CASE WHEN c.kind = 'direct' THEN c.peer
                                         WHEN c.kind = 'note' THEN '' END
                 FROM chats c WHERE c.hidden = 0 AND (?1 OR c.archived = 0)
                 ORDER BY c.pinned DESC,
                          COALESCE((SELECT MAX(m.id) FROM messages m WHERE m.group_id = c.group_id), 0) DESC,
                          c.created_at DESC",
            )?;
            let rows = stmt.query_map([all], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut peers = BTreeSet::new();
        let mut out = Vec::new();
        for (id, peer) in rows {
            let id = match peer {
                Some(p) if !peers.insert(p.clone()) => continue,
                Some(p) if p.is_empty() => id,
                // The chat messages to this account go to, if there is an active one.
                Some(p) => self.direct_chat(&p.parse()?)?.unwrap_or(id),
                None => id,
            };
            out.push(self.chat_summary(&id)?);
        }
        Ok(out)
    }

    /// A chat's suite, as recorded when it was made or joined (reading it from the MLS state
    /// would load the whole group).
    pub(crate) fn chat_suite(&self, group_id: &[u8]) -> Result<Suite, Error> {
        let code: u16 = self
            .conn
            .prepare_cached("SELECT ciphersuite FROM chats WHERE group_id = ?1")?
            .query_row([group_id], |r| r.get(0))?;
        Suite::from_code(code)
            .ok_or_else(|| Error::Protocol(format!("a chat of an unknown suite 0x{code:04x}")))
    }

    pub(crate) fn chat_summary(&self, group_id: &[u8]) -> Result<ChatSummary, Error> {
        let ChatRow { kind, name, peer, state } = self.chat_row(group_id)?;
        let members = if state == "active" {
            let p = db::provider(&self.conn);
            let set: BTreeSet<String> =
                mls::members(&p, group_id)?.into_iter().map(|d| d.address.to_string()).collect();
            set.into_iter().collect()
        } else {
            Vec::new()
        };
        let (mut messages, mut last, mut unread) = (0i64, None::<i64>, 0i64);
        let mut preview: Option<(i64, String)> = None;
        for g in conversation(&self.conn, group_id)? {
            let newest: Option<(i64, String, bool)> = self
                .conn
                .prepare_cached(
                    "SELECT id, body, deleted FROM messages
                     WHERE group_id = ?1 AND kind IN ('text', 'file') ORDER BY id DESC LIMIT 1",
                )?
                .query_row([&g], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            if let Some((row, body, deleted)) = newest
                && preview.as_ref().is_none_or(|(p, _)| row > *p)
            {
                let text = if deleted { "(deleted)".to_string() } else { body };
                preview = Some((row, text.chars().take(PREVIEW_CHARS).collect()));
            }
            let (n, l, u): (i64, Option<i64>, i64) = self
                .conn
                .prepare_cached(
                    "SELECT COUNT(*), MAX(sent_at),
                            COUNT(*) FILTER (WHERE read_at IS NULL AND sender != ?2 AND deleted = 0)
                     FROM messages WHERE group_id = ?1 AND kind IN ('text', 'file')",
                )?
                .query_row(params![g, self.account.address], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
            messages += n;
            unread += u;
            last = last.max(l);
        }
        let (timer, suite, muted, pinned, archived, nickname): (
            i64,
            u16,
            bool,
            bool,
            bool,
            Option<String>,
        ) = self
            .conn
            .prepare_cached(
                "SELECT timer_secs, ciphersuite, muted, pinned, archived,
                        (SELECT nickname FROM contacts WHERE address = chats.peer)
                 FROM chats WHERE group_id = ?1",
            )?
            .query_row([group_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
            })?;
        let title = match (kind.as_str(), &peer, &name) {
            ("direct", Some(p), _) => nickname.unwrap_or_else(|| p.clone()),
            ("note", ..) => NOTES_TITLE.into(),
            (_, _, Some(n)) => n.clone(),
            _ => "(unnamed group)".into(),
        };
        Ok(ChatSummary {
            preview: preview.map(|p| p.1),
            title,
            unread: unread as u64,
            muted,
            pinned,
            archived,
            timer_secs: timer as u64,
            post_quantum: suite == Suite::PostQuantum.code(),
            id: hex::encode(group_id),
            kind,
            name,
            peer,
            state,
            members,
            messages: messages as u64,
            last_message_at: last.map(|l| l as u64),
        })
    }

    /// The messages of a chat, oldest first; at most the last `limit`, or the last `limit`
    /// before the message (or event) `before` to page back.
    ///
    /// A direct chat's history covers every direct chat with the same account: when both sides
    /// start one at the same moment there are two MLS groups, but one conversation.
    pub fn history(
        &self,
        chat: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<MessageView>, Error> {
        let group_id = self.resolve(chat)?;
        let groups = conversation(&self.conn, &group_id)?;
        let cut = match before {
            Some(id) => self.position(&groups, id)?,
            None => i64::MAX,
        };
        let mut views = Vec::new();
        for g in &groups {
            views.extend(self.message_views(
                "WHERE m.group_id = ?1 AND m.id < ?3 ORDER BY m.id DESC LIMIT ?2",
                params![g, limit as i64, cut],
            )?);
        }
        // Stored order is the order of arrival, which follows the server's order.
        views.sort_by_key(|v| std::cmp::Reverse(v.row));
        views.truncate(limit);
        views.reverse();
        Ok(views)
    }

    pub(crate) fn message_views(
        &self,
        filter: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<MessageView>, Error> {
        let sql = format!(
            "SELECT m.group_id, c.kind, c.name, c.peer, m.msg_id, m.sender, m.kind, m.body,
                    m.status, m.sent_at, m.received_at, m.attachment,
                    (SELECT o.error FROM outbox o
                     WHERE o.group_id = m.group_id AND o.msg_id = m.msg_id),
                    m.reply_to, m.mentions, m.edited_at IS NOT NULL, m.deleted,
                    (SELECT nickname FROM contacts WHERE address = m.sender),
                    (SELECT nickname FROM contacts WHERE address = c.peer), m.id
             FROM messages m JOIN chats c ON c.group_id = m.group_id {filter}"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(args, |r| {
            let group_id: Vec<u8> = r.get(0)?;
            let kind: String = r.get(1)?;
            let name: Option<String> = r.get(2)?;
            let peer: Option<String> = r.get(3)?;
            let nickname: Option<String> = r.get(18)?;
            let chat_name = match (kind.as_str(), peer, name) {
                ("direct", Some(p), _) => nickname.unwrap_or(p),
                ("note", ..) => NOTES_TITLE.into(),
                (_, _, Some(n)) => n,
                _ => "(unnamed group)".into(),
            };
            let reply_to: Option<String> = r.get(13)?;
            let mentions: Option<String> = r.get(14)?;
            Ok(MessageView {
                chat: hex::encode(group_id),
                chat_name,
                id: r.get(4)?,
                sender: r.get(5)?,
                kind: r.get(6)?,
                body: r.get(7)?,
                status: r.get(8)?,
                sent_at: r.get::<_, i64>(9)? as u64,
                received_at: r.get::<_, i64>(10)? as u64,
                file: r.get::<_, Option<String>>(11)?.and_then(|a| file_info(&a)),
                error: r.get(12)?,
                reply_to: reply_to.map(|id| Quote { id, sender: None, text: None }),
                mentions: mentions.and_then(|m| serde_json::from_str(&m).ok()).unwrap_or_default(),
                edited: r.get(15)?,
                deleted: r.get(16)?,
                sender_name: r.get(17)?,
                reactions: Vec::new(),
                delivered_to: Vec::new(),
                read_by: Vec::new(),
                row: r.get(19)?,
            })
        })?;
        let mut views: Vec<MessageView> = rows.collect::<Result<_, _>>()?;
        drop(stmt);
        self.complete_views(&mut views)?;
        Ok(views)
    }
}

/// What a stored attachment reference shows.
pub(crate) fn file_info(attachment: &str) -> Option<FileInfo> {
    match serde_json::from_str::<Body>(attachment).ok()? {
        Body::File { name, size, media_type, .. } => Some(FileInfo { name, size, media_type }),
        _ => None,
    }
}
