//! Sending application messages: the chat a target names, encryption and submission.

use rusqlite::params;
use sotto_core::Address;
use sotto_core::content::{Body, ChatKind};
use sotto_core::mls::{self, Suite};
use sotto_proto as proto;

use crate::db;
use crate::outbox;
use crate::*;

impl Client {
    /// Submits to a group without naming this device: the request carries the group's
    /// credential, and the server sends it to every device of the group. A group the server
    /// holds no sealed roster for (new to it, from before sealed rosters, or restored from a
    /// backup) takes it once with this device's token and the group's devices, which the
    /// server then keeps sealed as its roster.
    pub(crate) fn submit_sealed(
        &self,
        request: proto::SubmitRequest,
        token: &str,
    ) -> Result<proto::SubmitResponse, Error> {
        match self.api.submit(request.clone(), None) {
            Err(e) if e.server_code() == Some("group_unsealed") => {
                let roster = mls::members(&db::provider(&self.conn), &request.group_id.0)?
                    .into_iter()
                    .map(|d| d.device_id)
                    .collect();
                let request = proto::SubmitRequest { roster: Some(roster), ..request };
                self.api.submit(request, Some(token))
            }
            other => other,
        }
    }

    /// Sends a text message; creates the direct chat on first use.
    pub fn send_text(&mut self, target: &Target, text: &str) -> Result<MessageView, Error> {
        self.send_reply(target, text, None)
    }

    /// Sends a text, answering the message `reply_to` (its id or an unambiguous prefix, in
    /// the same chat) if given. Members named as `@address` are mentioned.
    pub fn send_reply(
        &mut self,
        target: &Target,
        text: &str,
        reply_to: Option<&str>,
    ) -> Result<MessageView, Error> {
        crate::conversation::check_text(text)?;
        let group_id = self.target_group(target)?;
        let reply_to = reply_to.map(|r| self.reply_target(&group_id, r)).transpose()?;
        let mentions = self.mentions(&group_id, text)?;
        let body = Body::Text { text: text.to_string(), reply_to, mentions };
        let sent = self.send_body(&group_id, body);
        // Devices the server reported revoked leave the group whatever became of the message;
        // tidying the group must not make a sent message look failed.
        if let Err(e) = self.prune_revoked() {
            db::add_notice(&self.conn, &format!("could not remove revoked devices: {e}"))?;
        }
        sent?.ok_or(Error::Internal("text message without a stored row"))
    }

    /// The chat a target names; the direct chat with an address is created on first use.
    pub(crate) fn target_group(&mut self, target: &Target) -> Result<Vec<u8>, Error> {
        match target {
            Target::Chat(spec) => self.resolve(spec),
            // Notes to self: a chat of this account's own devices.
            Target::Address(peer) if peer == &self.me.device.address => self.notes_chat(),
            Target::Address(peer) => match self.direct_chat(peer)? {
                Some(id) => Ok(id),
                None => self.start_direct(peer),
            },
        }
    }

    pub(crate) fn start_direct(&mut self, peer: &Address) -> Result<Vec<u8>, Error> {
        // This account's other devices are in it from the start (one that has no key package
        // now is added by a later sync).
        let (suite, packages) = self.claim_new_chat(std::slice::from_ref(peer))?;
        self.start_chat(ChatKind::Direct, None, Some(peer), suite, &packages)
    }

    /// Creates a chat of `kind` holding the devices of `packages`, and tells them what it is.
    pub(crate) fn start_chat(
        &mut self,
        kind: ChatKind,
        name: Option<&str>,
        peer: Option<&Address>,
        suite: Suite,
        packages: &[mls::ValidKeyPackage],
    ) -> Result<Vec<u8>, Error> {
        let group_id = self.new_group(kind, name, peer, suite)?;
        if !packages.is_empty() {
            self.add_packages(&group_id, packages)?;
        }
        self.send_body(&group_id, Body::ChatInfo { kind, name: name.map(str::to_owned) })?;
        Ok(group_id)
    }

    /// Adds the devices of `packages` to a chat (one commit).
    pub(crate) fn add_packages(
        &mut self,
        group_id: &[u8],
        packages: &[mls::ValidKeyPackage],
    ) -> Result<(), Error> {
        self.commit(group_id, |p, me| {
            let out = mls::add_members(p, group_id, me, packages)?;
            Ok((out, packages.iter().map(|k| k.device.device_id).collect()))
        })
    }

    pub(crate) fn new_group(
        &mut self,
        kind: ChatKind,
        name: Option<&str>,
        peer: Option<&Address>,
        suite: Suite,
    ) -> Result<Vec<u8>, Error> {
        let tx = begin(&self.conn)?;
        let group_id = mls::create_group(&db::provider(&tx), &self.me, suite)?;
        tx.execute(
            "INSERT INTO chats (group_id, kind, name, peer, state, created_at, leaf_updated_at,
                                ciphersuite)
             VALUES (?1, ?2, ?3, ?4, 'active', ?5, ?5, ?6)",
            params![
                group_id,
                kind.as_str(),
                name,
                peer.map(Address::as_str),
                self.now_ms() as i64,
                suite.code()
            ],
        )?;
        tx.commit()?;
        Ok(group_id)
    }

    /// Sends a message through the outbox: stored first, then delivered with the chat's
    /// earlier waiting messages. Returns the message as the chat shows it (none for chat
    /// settings); an error says whether it waits ([`Error::Queued`]) or was refused
    /// ([`Error::NotSent`]).
    pub(crate) fn send_body(
        &mut self,
        group_id: &[u8],
        body: Body,
    ) -> Result<Option<MessageView>, Error> {
        self.require_active(group_id)?;
        self.require_verified_keys(group_id)?;
        let shown = matches!(body, Body::Text { .. } | Body::File { .. });
        let msg_id = self.enqueue(group_id, body)?;
        let changed = self.flush_outbox(Some(group_id), true)?;
        if shown {
            return self.message_view(group_id, &msg_id, changed).map(Some);
        }
        // A chat setting: only its fate matters.
        for (_, _, outcome) in changed {
            match outcome {
                outbox::Outcome::Later(e) | outbox::Outcome::Failed(e) => return Err(e),
                outbox::Outcome::Sent => {}
            }
        }
        Ok(None)
    }
}
