//! Groups: commits (creating, adding, removing, leaving, timers) and the events they show.

use std::collections::BTreeSet;

use rusqlite::params;
use sotto_core::content::{Body, ChatKind};
use sotto_core::mls::{self, CommitOutput, Identity, Provider, Suite};
use sotto_core::{Address, DeviceRef};
use sotto_proto::{self as proto, Bytes};

use crate::db::{self, Storage};
use crate::*;

impl Client {
    pub(crate) fn parse_addresses(&self, list: &[String]) -> Result<Vec<Address>, Error> {
        let mut out: Vec<Address> = Vec::new();
        for a in list {
            let a: Address = a.parse()?;
            if a == self.me.device.address {
                return Err(Error::Invalid("you are always a member of your own chats".into()));
            }
            if !out.contains(&a) {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// Makes a commit with `make` and submits it; on a stale epoch rolls it back, catches up
    /// and tries again. `make` returns the commit and the devices that get its welcome.
    pub(crate) fn commit(
        &mut self,
        group_id: &[u8],
        mut make: impl FnMut(
            &Provider<Storage<'_>>,
            &Identity,
        ) -> Result<(CommitOutput, Vec<u64>), Error>,
    ) -> Result<(), Error> {
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            match self.commit_once(group_id, &mut make)? {
                true => return Ok(()),
                false => {
                    self.catch_up()?;
                    self.require_active(group_id)?;
                }
            }
        }
        Err(Error::TooManyRetries)
    }

    /// One attempt: true if the server accepted the commit, false if the epoch was stale.
    pub(crate) fn commit_once(
        &mut self,
        group_id: &[u8],
        make: &mut impl FnMut(
            &Provider<Storage<'_>>,
            &Identity,
        ) -> Result<(CommitOutput, Vec<u64>), Error>,
    ) -> Result<bool, Error> {
        self.resolve_in_doubt()?;
        let token = self.token()?;
        let (entry, request) = {
            let tx = begin(&self.conn)?;
            let p = db::provider(&tx);
            let credential = mls::group_credential(&p, group_id)?;
            let (out, welcome_to) = make(&p, &self.me)?;
            let changes = mls::pending_changes(&p, group_id)?;
            let next = mls::next_group_credential(&p, group_id)?
                .ok_or(Error::Internal("a commit without a pending commit"))?;
            let removed =
                changes.removed.iter().chain(&changes.left).map(|d| d.device_id).collect();
            // What is too large to copy into every queue goes once, by reference.
            let copies = mls::members(&p, group_id)?.len();
            let group = (group_id, &credential);
            // The group moved on meanwhile (the file's maker is checked against its epoch):
            // the commit is dropped with the transaction, to be made again after catching up.
            let stale = |e: Error| if e.is_stale_epoch() { Ok(None) } else { Err(e) };
            let Some(commit) =
                self.by_reference(group, &token, out.commit, copies).map(Some).or_else(stale)?
            else {
                return Ok(false);
            };
            let welcome = match out.welcome.filter(|_| !welcome_to.is_empty()) {
                Some(w) => {
                    let Some(message) = self
                        .by_reference(group, &token, w, welcome_to.len())
                        .map(Some)
                        .or_else(stale)?
                    else {
                        return Ok(false);
                    };
                    Some(proto::Delivery { message: Bytes(message), recipients: welcome_to })
                }
                None => None,
            };
            db::expect_echo(&tx, &commit, self.now_ms() as i64)?;
            let request = proto::SubmitRequest {
                submission_id: Some(Bytes(sotto_core::random_bytes(16)?)),
                group_id: Bytes(group_id.to_vec()),
                kind: proto::SubmitKind::Commit,
                epoch: out.epoch,
                delivery: proto::Delivery { recipients: Vec::new(), message: Bytes(commit) },
                welcome,
                removed,
                expires_at: None,
                credential: Some(Bytes(credential.as_bytes().to_vec())),
                next_credential: Some(Bytes(next.as_bytes().to_vec())),
                roster: None,
            };
            // The pending commit and the submission that carries it are kept together: a
            // crash before the answer leaves a commit in doubt, settled before anything else.
            let entry = self.record_commit(&tx, &request)?;
            tx.commit()?;
            (entry, request)
        };
        // Files behind references, to delete if the commit is refused.
        let referenced: Vec<Vec<u8>> = std::iter::once(&request.delivery)
            .chain(&request.welcome)
            .filter(|d| sotto_core::reference::is_reference(&d.message.0))
            .map(|d| d.message.0.clone())
            .collect();
        let forget = |this: &Self| referenced.iter().for_each(|r| this.forget_reference(&token, r));
        match self.submit_sealed(request, &token) {
            Ok(resp) => {
                crate::outbox::failpoint("after-commit");
                self.commit_taken(entry, group_id)?;
                if !resp.dropped.is_empty() {
                    db::mark_dropped(&self.conn, group_id)?;
                }
                Ok(true)
            }
            Err(e) if e.is_stale_epoch() => {
                self.commit_refused(entry, group_id)?;
                forget(self);
                Ok(false)
            }
            // Its fate is unknown: it stays in doubt until the server can be asked again.
            Err(e) if crate::outbox::transient(&e) => Err(e),
            Err(e) => {
                self.commit_refused(entry, group_id)?;
                forget(self);
                Err(e)
            }
        }
    }

    /// Creates a named group with the given members.
    pub fn create_group(&mut self, name: &str, members: &[String]) -> Result<ChatSummary, Error> {
        let name = crate::conversation::check_group_name(name)?;
        let name = name.as_str();
        let addresses = self.parse_addresses(members)?;
        let (suite, packages) = self.claim_new_chat(&addresses)?;
        let group_id = self.start_chat(ChatKind::Group, Some(name), None, suite, &packages)?;
        self.chat_summary(&group_id)
    }

    pub(crate) fn group_info(&self, group_id: &[u8]) -> Result<Body, Error> {
        let ChatRow { kind, name, .. } = self.chat_row(group_id)?;
        let kind = match kind.as_str() {
            "direct" => ChatKind::Direct,
            "note" => ChatKind::Note,
            _ => ChatKind::Group,
        };
        Ok(Body::ChatInfo { kind, name })
    }

    /// Adds accounts to a group. They read messages sent from now on, not earlier ones.
    pub fn add_members(&mut self, chat: &str, members: &[String]) -> Result<ChatSummary, Error> {
        let group_id = self.resolve(chat)?;
        self.require_active(&group_id)?;
        self.require_shared(&group_id)?;
        let addresses = self.parse_addresses(members)?;
        let current: BTreeSet<Address> = mls::members(&db::provider(&self.conn), &group_id)?
            .into_iter()
            .map(|d| d.address)
            .collect();
        if let Some(a) = addresses.iter().find(|a| current.contains(*a)) {
            return Err(Error::Invalid(format!("{a} is already a member")));
        }
        let suite = self.chat_suite(&group_id)?;
        let devices = mls::members(&db::provider(&self.conn), &group_id)?.len();
        let mut packages = Vec::new();
        let lists = self.verified_lists(&addresses)?;
        for (a, list) in addresses.iter().zip(lists) {
            packages.extend(self.claim_for(&group_id, a, None, &list?)?);
        }
        if suite == Suite::PostQuantum && devices + packages.len() > MAX_POST_QUANTUM_DEVICES {
            return Err(Error::Invalid(format!(
                "a post-quantum chat holds at most {MAX_POST_QUANTUM_DEVICES} devices ({} with \
                 these members); start a new group for more: groups that large are classical",
                devices + packages.len()
            )));
        }
        self.add_packages(&group_id, &packages)?;
        let info = self.group_info(&group_id)?;
        self.send_body(&group_id, info)?;
        self.chat_summary(&group_id)
    }

    /// Sets a chat's disappearing-message timer (0 turns it off). Every member's devices
    /// learn it in-band and delete each later message that long after it was sent.
    pub fn set_timer(&mut self, chat: &str, seconds: u64) -> Result<ChatSummary, Error> {
        if seconds > sotto_core::content::MAX_TIMER_SECS {
            return Err(Error::Invalid("a timer is at most a year".into()));
        }
        let group_id = self.resolve(chat)?;
        self.send_body(&group_id, Body::Timer { seconds })?;
        let me = self.account.address.clone();
        self.conn.execute(
            "UPDATE chats SET timer_secs = ?1 WHERE group_id = ?2",
            params![seconds as i64, group_id],
        )?;
        crate::receive::forget_counts_after_timer(&self.conn, &group_id, seconds)?;
        self.conn.execute(
            "INSERT INTO messages (group_id, msg_id, sender, kind, body, status, sent_at,
                                   received_at, reported)
             VALUES (?1, ?2, ?3, 'event', ?4, 'sent', ?5, ?5, 1)",
            params![
                group_id,
                format!("event-{}", random_hex(8)?),
                me,
                timer_event(&me, seconds),
                self.now_ms() as i64
            ],
        )?;
        self.chat_summary(&group_id)
    }

    /// Deletes every message whose disappearing-message time has come.
    pub(crate) fn purge_expired(&self) -> Result<usize, Error> {
        crate::conversation::purge_waiting(&self.conn, self.now_ms())?;
        Ok(self.conn.execute(
            "DELETE FROM messages WHERE expires_at IS NOT NULL AND expires_at <= ?1",
            [self.now_ms() as i64],
        )?)
    }

    /// Removes accounts from a group; they cannot read anything sent afterwards.
    pub fn remove_members(&mut self, chat: &str, members: &[String]) -> Result<ChatSummary, Error> {
        let group_id = self.resolve(chat)?;
        self.require_active(&group_id)?;
        self.require_shared(&group_id)?;
        let addresses = self.parse_addresses(members)?;
        if addresses.is_empty() {
            return Err(Error::Invalid("name at least one member to remove".into()));
        }
        self.commit(&group_id, |p, me| {
            Ok((mls::remove_accounts(p, &group_id, me, &addresses)?, Vec::new()))
        })?;
        self.chat_summary(&group_id)
    }

    /// Leaves a chat: proposes this device's removal (the next member to sync commits it)
    /// and deletes the chat's keys here.
    pub fn leave(&mut self, chat: &str) -> Result<ChatSummary, Error> {
        let group_id = self.resolve(chat)?;
        self.require_active(&group_id)?;
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            let token = self.token()?;
            let tx = begin(&self.conn)?;
            let p = db::provider(&tx);
            let credential = mls::group_credential(&p, &group_id)?;
            let (epoch, proposal) = mls::leave(&p, &group_id, &self.me)?;
            db::expect_echo(&tx, &proposal, self.now_ms() as i64)?;
            let request = proto::SubmitRequest {
                submission_id: None,
                group_id: Bytes(group_id.clone()),
                kind: proto::SubmitKind::Proposal,
                epoch,
                delivery: proto::Delivery { recipients: Vec::new(), message: Bytes(proposal) },
                welcome: None,
                removed: Vec::new(),
                expires_at: None,
                credential: Some(Bytes(credential.as_bytes().to_vec())),
                next_credential: None,
                roster: None,
            };
            match self.submit_sealed(request, &token) {
                Ok(_) => {
                    mls::delete_group(&p, &group_id)?;
                    tx.execute("UPDATE chats SET state = 'left' WHERE group_id = ?1", [&group_id])?;
                    tx.commit()?;
                    return self.chat_summary(&group_id);
                }
                Err(e) if e.is_stale_epoch() => {
                    drop(tx);
                    self.catch_up()?;
                    self.require_active(&group_id)?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::TooManyRetries)
    }

    /// Commits pending proposals (members leaving) in those of `groups` that have them. A
    /// lost race is fine: the winner's commit covers the same proposals.
    pub(crate) fn commit_proposals(&mut self, groups: BTreeSet<Vec<u8>>) -> Result<(), Error> {
        for group_id in groups {
            if !mls::has_pending_proposals(&db::provider(&self.conn), &group_id)? {
                continue;
            }
            self.commit_once(&group_id, &mut |p, me| {
                let out = mls::commit_pending_proposals(p, &group_id, me)?
                    .ok_or(Error::Internal("pending proposals vanished"))?;
                Ok((out, Vec::new()))
            })?;
        }
        Ok(())
    }
}

/// An event a commit shows in its chat.
pub(crate) struct ChatEvent {
    /// The account it is about or by.
    pub(crate) sender: String,
    /// What happened.
    pub(crate) text: String,
    /// A change of one account's devices (linked, removed, replaced), which every chat with
    /// that account sees: told once as a notice, and only as a quiet mark in each chat.
    pub(crate) account: bool,
}

/// The events a commit shows in its chat: whom `who` added and removed, devices linked and
/// removed by accounts that stay, and who left. A removal of this device itself
/// (`self_removed`) is told separately.
pub(crate) fn commit_events(
    who: &str,
    me: &str,
    changes: &mls::Changes,
    present: &[DeviceRef],
    self_removed: bool,
) -> Vec<ChatEvent> {
    let event = |sender: &str, text: String, account: bool| ChatEvent {
        sender: sender.to_string(),
        text,
        account,
    };
    let accounts = |devices: &[DeviceRef]| -> BTreeSet<String> {
        devices.iter().map(|d| d.address.to_string()).collect()
    };
    // An account that keeps other devices in the chat changed its device list.
    let keeps_others = |a: &str, changed: &[DeviceRef]| {
        present.iter().any(|d| d.address.as_str() == a && !changed.contains(d))
    };
    let mut events = Vec::new();
    // An account whose devices were all replaced in one commit (a recovery) is still here.
    let replaced: BTreeSet<String> =
        accounts(&changes.added).intersection(&accounts(&changes.removed)).cloned().collect();
    for a in &replaced {
        events.push(event(who, format!("{a}'s devices were replaced"), true));
    }
    for a in accounts(&changes.added).into_iter().filter(|a| !replaced.contains(a)) {
        events.push(if keeps_others(&a, &changes.added) {
            event(who, format!("{a} linked a new device"), true)
        } else {
            event(who, format!("{who} added {a}"), false)
        });
    }
    for a in accounts(&changes.removed)
        .into_iter()
        .filter(|a| !(replaced.contains(a) || a == me && self_removed))
    {
        events.push(if keeps_others(&a, &changes.removed) {
            event(who, format!("{a} removed a device"), true)
        } else {
            event(who, format!("{who} removed {a}"), false)
        });
    }
    for a in accounts(&changes.left).into_iter().filter(|a| a != me) {
        events.push(event(&a, format!("{a} left"), false));
    }
    events
}

/// How a timer change reads in a chat.
pub(crate) fn timer_event(who: &str, seconds: u64) -> String {
    if seconds == 0 {
        return format!("{who} turned disappearing messages off");
    }
    let (n, unit) = match seconds {
        s if s % 86_400 == 0 => (s / 86_400, "d"),
        s if s % 3600 == 0 => (s / 3600, "h"),
        s if s % 60 == 0 => (s / 60, "m"),
        s => (s, "s"),
    };
    format!("{who} set disappearing messages to {n}{unit}")
}
