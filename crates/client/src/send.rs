//! Sending application messages: the chat a target names, encryption and submission.

use rusqlite::params;
use sotto_core::Address;
use sotto_core::content::{Body, ChatKind, Message, VERSION};
use sotto_core::mls::{self, Provider, ValidKeyPackage};
use sotto_proto::{self as proto, Bytes};

use crate::db::{self, Storage};
use crate::*;

impl Client {
    pub(crate) fn recipients(
        &self,
        p: &Provider<Storage<'_>>,
        group_id: &[u8],
    ) -> Result<Vec<u64>, Error> {
        Ok(mls::members(p, group_id)?
            .into_iter()
            .filter(|d| d != &self.me.device)
            .map(|d| d.device_id)
            .collect())
    }

    /// Sends a text message; creates the direct chat on first use.
    pub fn send_text(&mut self, target: &Target, text: &str) -> Result<MessageView, Error> {
        if text.is_empty() {
            return Err(Error::Invalid("empty message".into()));
        }
        if text.len() > sotto_core::content::MAX_TEXT_LEN {
            return Err(Error::Invalid(format!(
                "message longer than {} bytes",
                sotto_core::content::MAX_TEXT_LEN
            )));
        }
        let group_id = self.target_group(target)?;
        let sent = self
            .send_body(&group_id, Body::Text { text: text.to_string() })?
            .ok_or(Error::Internal("text message without a stored row"))?;
        // The message is sent; tidying the group must not make it look failed.
        if let Err(e) = self.prune_revoked() {
            db::add_notice(&self.conn, &format!("could not remove revoked devices: {e}"))?;
        }
        Ok(sent)
    }

    /// Key packages of this account's other devices, so a new chat includes them from the
    /// start (one that has none now is added by a later sync).
    pub(crate) fn own_devices(&mut self) -> Result<Vec<ValidKeyPackage>, Error> {
        let me = self.me.device.address.clone();
        self.claim(&me, None)
    }

    /// The chat a target names; the direct chat with an address is created on first use.
    pub(crate) fn target_group(&mut self, target: &Target) -> Result<Vec<u8>, Error> {
        match target {
            Target::Chat(spec) => self.resolve(spec),
            Target::Address(peer) if peer == &self.me.device.address => {
                Err(Error::Invalid("cannot start a direct chat with yourself".into()))
            }
            Target::Address(peer) => match self.direct_chat(peer)? {
                Some(id) => Ok(id),
                None => self.start_direct(peer),
            },
        }
    }

    pub(crate) fn start_direct(&mut self, peer: &Address) -> Result<Vec<u8>, Error> {
        let mut packages = self.claim(peer, None)?;
        packages.extend(self.own_devices()?);
        let group_id = self.new_group(ChatKind::Direct, None, Some(peer))?;
        self.commit(&group_id, |p, me| {
            let out = mls::add_members(p, &group_id, me, &packages)?;
            Ok((out, packages.iter().map(|k| k.device.device_id).collect()))
        })?;
        self.send_body(&group_id, Body::ChatInfo { kind: ChatKind::Direct, name: None })?;
        Ok(group_id)
    }

    pub(crate) fn new_group(
        &mut self,
        kind: ChatKind,
        name: Option<&str>,
        peer: Option<&Address>,
    ) -> Result<Vec<u8>, Error> {
        let tx = begin(&self.conn)?;
        let group_id = mls::create_group(&db::provider(&tx), &self.me)?;
        tx.execute(
            "INSERT INTO chats (group_id, kind, name, peer, state, created_at)
             VALUES (?1, ?2, ?3, ?4, 'active', ?5)",
            params![group_id, kind.as_str(), name, peer.map(Address::as_str), self.now_ms() as i64],
        )?;
        tx.commit()?;
        Ok(group_id)
    }

    /// Encrypts and submits an application message. The ratchet state is committed before
    /// the message leaves, so a lost answer can never make us reuse a key. If the group moved
    /// on meanwhile, the client catches up and encrypts again in the new epoch. The stored
    /// row is marked `failed` if the server did not take it.
    pub(crate) fn send_body(
        &mut self,
        group_id: &[u8],
        body: Body,
    ) -> Result<Option<MessageView>, Error> {
        self.require_active(group_id)?;
        self.require_verified_keys(group_id)?;
        // What the chat shows: a text, or a file's name (with the reference kept to download
        // it later; the key in it is as safe as everything else in the encrypted home).
        let (kind, text, attachment) = match &body {
            Body::Text { text } => ("text", Some(text.clone()), None),
            Body::File { name, .. } => {
                ("file", Some(name.clone()), serde_json::to_string(&body).ok())
            }
            _ => ("", None, None),
        };
        // Messages (not chat settings) carry the chat's disappearing-message timer.
        let timer: i64 = self.conn.query_row(
            "SELECT timer_secs FROM chats WHERE group_id = ?1",
            [group_id],
            |r| r.get(0),
        )?;
        let expires_in = (text.is_some() && timer > 0).then_some(timer as u64);
        let msg =
            Message { v: VERSION, id: random_hex(16)?, sent_at: self.now_ms(), expires_in, body };
        if let Some(text) = &text {
            self.conn.execute(
                "INSERT INTO messages (group_id, msg_id, sender, kind, body, status, sent_at,
                                       received_at, reported, expires_at, attachment)
                 VALUES (?1, ?2, ?3, ?7, ?4, 'pending', ?5, ?5, 1, ?6, ?8)",
                params![
                    group_id,
                    msg.id,
                    self.account.address,
                    text,
                    msg.sent_at as i64,
                    expires_in.map(|s| (msg.sent_at + s * 1000) as i64),
                    kind,
                    attachment
                ],
            )?;
        }
        let mut result = Err(Error::TooManyRetries);
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            result = self.submit_application(group_id, &msg);
            match &result {
                Err(e) if e.is_stale_epoch() => {
                    if let Err(e) = self.catch_up().and_then(|_| self.require_active(group_id)) {
                        result = Err(e);
                        break;
                    }
                }
                _ => break,
            }
        }
        let status = if result.is_ok() { "sent" } else { "failed" };
        self.conn.execute(
            "UPDATE messages SET status = ?1 WHERE group_id = ?2 AND msg_id = ?3",
            params![status, group_id, msg.id],
        )?;
        result?;
        if text.is_none() {
            return Ok(None);
        }
        let mut views = self
            .message_views("WHERE m.group_id = ?1 AND m.msg_id = ?2", params![group_id, msg.id])?;
        Ok(views.pop())
    }

    pub(crate) fn submit_application(
        &mut self,
        group_id: &[u8],
        msg: &Message,
    ) -> Result<(), Error> {
        let token = self.token()?;
        let (ciphertext, recipients, epoch) = {
            let tx = begin(&self.conn)?;
            let p = db::provider(&tx);
            let ciphertext = mls::encrypt(&p, group_id, &self.me, &msg.encode())?;
            let recipients = self.recipients(&p, group_id)?;
            let epoch = mls::epoch(&p, group_id)?;
            tx.commit()?;
            (ciphertext, recipients, epoch)
        };
        if recipients.is_empty() {
            return Ok(());
        }
        let resp = self.api.submit(
            proto::SubmitRequest {
                submission_id: None,
                group_id: Bytes(group_id.to_vec()),
                kind: proto::SubmitKind::Application,
                epoch,
                delivery: proto::Delivery { recipients, message: Bytes(ciphertext) },
                welcome: None,
                removed: Vec::new(),
                // Copies nobody fetched in time go too (disappearing messages).
                expires_at: msg.expires_in.map(|s| msg.sent_at / 1000 + s),
            },
            &token,
        )?;
        if !resp.dropped.is_empty() {
            self.touched.borrow_mut().dropped.insert(group_id.to_vec());
        }
        Ok(())
    }
}
