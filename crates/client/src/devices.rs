//! The account's devices: signed device lists (verified and pinned for every account this
//! device talks to), linking a new device, revocation, remote wipe, and recovery.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sotto_core::account::{
    DeviceList, IdentityKey, LinkPart, LinkSecret, ListedDevice, RecoveryKey, Signed, SignedList,
    Signer, WipeCommand, WipeConfirmation, WipeRefused,
};
use sotto_core::mls::{self, DeviceKey, Identity, Suite};
use sotto_core::{Address, DeviceRef, auth, unix_now};
use sotto_proto::{self as proto, Bytes};
use zeroize::Zeroizing;

use crate::db;
use crate::kt::KtCheck;
use crate::{Client, Error, MAX_COMMIT_ATTEMPTS, begin, now_ms};

/// How many recent messages per chat a new device receives.
const HISTORY_PER_CHAT: i64 = 200;
/// Largest history sent to a new device (sealed, before base64).
const MAX_HISTORY_BYTES: usize = 1_400_000;
/// How long the approving device waits for the new one to publish its key packages.
const JOIN_WAIT: Duration = Duration::from_secs(120);
/// How often a waiting side polls the link.
const POLL: Duration = Duration::from_millis(500);
/// Most accounts whose device lists are pinned in one local transaction.
const PIN_BATCH: usize = 500;

/// A device list fetched and checked, not yet pinned.
struct CheckedList {
    list: DeviceList,
    fetched: SignedList,
    devices: Vec<proto::DeviceInfo>,
}

pub(crate) fn to_proto(s: &SignedList) -> proto::SignedData {
    proto::SignedData { body: Bytes(s.body.clone()), signature: Bytes(s.signature.clone()) }
}

fn from_proto(s: &proto::SignedData) -> SignedList {
    SignedList { body: s.body.0.clone(), signature: s.signature.0.clone() }
}

fn signed(s: &proto::SignedData) -> Signed {
    Signed { body: s.body.0.clone(), signature: s.signature.0.clone() }
}

/// A device of this account, as `sotto devices list` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DeviceView {
    /// Its id.
    pub device_id: u64,
    /// Its name (decrypted; only the account's devices can read it).
    pub name: Option<String>,
    /// Its public key (hex).
    pub device_key: String,
    /// Whether this is the device asking.
    pub this_device: bool,
    /// `active`, `revoked`, `wipe ordered` or `wiped`.
    pub state: String,
    /// When it was linked (Unix seconds).
    pub linked_at: u64,
    /// When it last logged in (Unix seconds).
    pub last_seen: Option<u64>,
    /// When it confirmed its wipe, checked against its key (Unix seconds).
    pub wiped_at: Option<u64>,
}

/// What approving a new device did.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LinkOutcome {
    /// The new device's id.
    pub device_id: u64,
    /// Chats the new device was added to.
    pub chats_joined: usize,
    /// Chats it could not be added to yet (it had not published keys in time); the next
    /// sync of any of this account's devices adds it.
    pub chats_pending: usize,
    /// Messages of recent history sent to it.
    pub history_messages: usize,
}

/// What linking this device got.
#[derive(Debug)]
pub struct LinkedDevice {
    /// The new device's client.
    pub client: Client,
    /// Messages of history received.
    pub history_messages: usize,
}

/// New device → approving device.
#[derive(Serialize, Deserialize)]
struct LinkRequest {
    device_key: String,
    signature: String,
    name: Option<String>,
}

/// Approving device → new device. Holds the identity key: it travels only sealed.
#[derive(Serialize, Deserialize)]
struct LinkResponse {
    address: Address,
    device_id: u64,
    identity_secret: String,
    list_body: String,
    list_signature: String,
    /// The directory keys the approving device pinned (hex).
    #[serde(default)]
    kt_keys: Option<(String, String)>,
}

impl Drop for LinkResponse {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        self.identity_secret.zeroize();
    }
}

#[derive(Serialize, Deserialize)]
struct HistoryChat {
    group_id: String,
    kind: String,
    name: Option<String>,
    peer: Option<String>,
    messages: Vec<HistoryMessage>,
    /// Reactions to those messages, as (message, account, emoji, sender's time).
    #[serde(default)]
    reactions: Vec<(String, String, String, i64)>,
}

#[derive(Serialize, Deserialize)]
struct HistoryMessage {
    msg_id: String,
    sender: String,
    body: String,
    sent_at: u64,
    /// Disappearing messages keep their deadline on the new device.
    #[serde(default)]
    expires_at: Option<u64>,
    /// `text` or `file` (histories from devices before files were sent hold texts only).
    #[serde(default = "text_kind")]
    kind: String,
    /// A file's reference and key (the MLS content of the file message), for `file`.
    #[serde(default)]
    attachment: Option<String>,
    /// The message it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reply_to: Option<String>,
    /// Mentioned accounts (a JSON list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mentions: Option<String>,
    /// The winning edit's sender time and id (`body` is its text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    edited: Option<(i64, String)>,
    /// Deleted by its sender: a tombstone.
    #[serde(default)]
    deleted: bool,
}

fn text_kind() -> String {
    "text".into()
}

impl Client {
    // ---- device lists ----

    /// Fetches `address`'s signed device list, verifies it against the list pinned here
    /// (never older, never a new identity key without the recovery key's endorsement), pins
    /// it, and returns it with the server's view of the devices.
    pub(crate) fn verified_list(
        &mut self,
        address: &Address,
    ) -> Result<(DeviceList, Vec<proto::DeviceInfo>), Error> {
        let checked = self.checked_list(address)?;
        self.pin_checked(address, &checked)?;
        Ok((checked.list, checked.devices))
    }

    /// [`Client::verified_list`] for many accounts, each answered on its own: fetched and
    /// checked one by one, then pinned together, in one local transaction per
    /// [`PIN_BATCH`] accounts (one at a time, joining a group of thousands waited for a disk
    /// sync per member). Only a failure of the local store fails them all.
    pub(crate) fn verified_lists(
        &mut self,
        addresses: &[Address],
    ) -> Result<Vec<Result<DeviceList, Error>>, Error> {
        let mut out = Vec::with_capacity(addresses.len());
        for chunk in addresses.chunks(PIN_BATCH) {
            // Checking may record directory roots (in transactions of its own): it is done
            // before the pins' transaction begins.
            let checked: Vec<_> = chunk.iter().map(|a| self.checked_list(a)).collect();
            // (Inside a caller's transaction, the pins are part of it.)
            let own = self.conn.is_autocommit();
            if own {
                self.conn.execute_batch("BEGIN IMMEDIATE")?;
            }
            let pinned = self.pin_all(chunk, &checked).and_then(|()| match own {
                true => Ok(self.conn.execute_batch("COMMIT")?),
                false => Ok(()),
            });
            if let Err(e) = pinned {
                // Nothing was pinned, and no transaction of ours is left open (a COMMIT that
                // failed leaves it so); the error says why.
                if own && !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                return Err(e);
            }
            out.extend(checked.into_iter().map(|c| c.map(|c| c.list)));
        }
        Ok(out)
    }

    fn pin_all(
        &mut self,
        addresses: &[Address],
        checked: &[Result<CheckedList, Error>],
    ) -> Result<(), Error> {
        for (address, checked) in addresses.iter().zip(checked) {
            if let Ok(checked) = checked {
                self.pin_checked(address, checked)?;
            }
        }
        Ok(())
    }

    /// Fetches `address`'s device list and checks it (signature, succession from the list
    /// pinned here, the key directory), pinning nothing.
    fn checked_list(&mut self, address: &Address) -> Result<CheckedList, Error> {
        // A list stored an instant ago may still be on its way into the directory.
        for attempt in 0..4 {
            let token = self.token()?;
            let resp: proto::DevicesResponse =
                self.api.get(&format!("/v1/users/{address}/devices"), Some(&token))?;
            let fetched = from_proto(&resp.device_list);
            let list = self.check_list(address, &fetched)?;
            match self.kt_check(address, &list.identity_key, &fetched)? {
                KtCheck::Holds => return Ok(CheckedList { list, fetched, devices: resp.devices }),
                KtCheck::Differs if attempt < 3 => std::thread::sleep(POLL / 2),
                KtCheck::Differs => break,
            }
        }
        Err(Error::Untrusted(format!(
            "key transparency: the directory does not hold the device list the server gave \
             for {address}; refusing it (the server may be substituting keys)"
        )))
    }

    /// Pins a checked list (and, for this account, remembers its devices' names).
    fn pin_checked(&mut self, address: &Address, checked: &CheckedList) -> Result<(), Error> {
        self.pin(address, &checked.list, &checked.fetched)?;
        if address == &self.me.device.address {
            self.remember_device_names(&checked.list)?;
        }
        Ok(())
    }

    /// Remembers the names of this account's listed devices: once a device is revoked or
    /// wiped, the list no longer names it, and `devices` would show it nameless.
    fn remember_device_names(&self, list: &DeviceList) -> Result<(), Error> {
        for d in &list.devices {
            let Some(name) = d.name.as_ref().and_then(|n| self.identity.open_name(n)) else {
                continue;
            };
            let known: Option<String> = self
                .conn
                .prepare_cached("SELECT name FROM device_names WHERE device_key = ?1")?
                .query_row([&d.key], |r| r.get(0))
                .optional()?;
            // Written only when it changed: a sync that finds the same list writes nothing.
            if known.as_deref() != Some(name.as_str()) {
                self.conn.execute(
                    "INSERT OR REPLACE INTO device_names (device_key, name) VALUES (?1, ?2)",
                    params![d.key, name],
                )?;
            }
        }
        Ok(())
    }

    /// Checks a fetched list's signature and that it may follow the one pinned.
    fn check_list(&self, address: &Address, fetched: &SignedList) -> Result<DeviceList, Error> {
        let untrusted = |e: &dyn std::fmt::Display| {
            Error::Untrusted(format!("the server's device list for {address} is bad: {e}"))
        };
        let list = DeviceList::verify(fetched).map_err(|e| untrusted(&e))?;
        if &list.address != address {
            return Err(untrusted(&"it names another account"));
        }
        let pinned = db::pinned_list(&self.conn, address.as_str())?
            .map(|p| DeviceList::verify(&p))
            .transpose()
            .map_err(|e| untrusted(&e))?;
        if let Some(known) = &pinned {
            list.check_update(known).map_err(|e| untrusted(&e))?;
        }
        Ok(list)
    }

    /// Pins a checked list, telling the user if the account's identity key changed.
    fn pin(
        &mut self,
        address: &Address,
        list: &DeviceList,
        fetched: &SignedList,
    ) -> Result<(), Error> {
        let known = db::pinned_list(&self.conn, address.as_str())?
            .and_then(|p| DeviceList::verify(&p).ok());
        if known.as_ref().is_some_and(|k| k.identity_key != list.identity_key) {
            self.key_change_notice(address)?;
        }
        // This account lost a device (revoked or wiped, here or from another device): what
        // that device knew must stop opening this one's messages, so its keys are replaced.
        if address == &self.me.device.address
            && known.is_some_and(|k| k.devices.iter().any(|d| !list.lists(&d.key)))
        {
            self.heal_soon()?;
        }
        db::pin_list(&self.conn, address.as_str(), list.version, fetched)
    }

    /// Tells the user, in every chat with `address`, that its identity key changed.
    fn key_change_notice(&self, address: &Address) -> Result<(), Error> {
        let text = format!(
            "{address}'s identity key changed (the account was recovered with its recovery key)"
        );
        db::add_notice(&self.conn, &text)?;
        let groups: Vec<Vec<u8>> = {
            let mut stmt =
                self.conn.prepare("SELECT group_id FROM chats WHERE state = 'active'")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let p = db::provider(&self.conn);
        for g in groups {
            if mls::members(&p, &g)?.iter().any(|d| &d.address == address) {
                // Told once above; each chat keeps a quiet mark.
                insert_mark(&self.conn, &g, address.as_str(), &text)?;
                // Its devices in the chat are replaced with those of its new list.
                db::mark_dropped(&self.conn, &g)?;
            }
        }
        Ok(())
    }

    /// Checks that every member of a group just joined is a device its account lists.
    pub(crate) fn check_members(&mut self, group_id: &[u8]) -> Result<(), Error> {
        let members = match mls::member_keys(&db::provider(&self.conn), group_id) {
            // Joined and removed again in the same batch: there is nobody left to check.
            Err(sotto_core::Error::UnknownGroup(_)) => return Ok(()),
            other => other?,
        };
        // Each account's devices in the chat, so that a group of thousands is one pass.
        let mut accounts: BTreeMap<Address, Vec<(&DeviceRef, &[u8])>> = BTreeMap::new();
        for (device, key) in &members {
            accounts.entry(device.address.clone()).or_default().push((device, key));
        }
        let addresses: Vec<Address> = accounts.keys().cloned().collect();
        let lists = self.verified_lists(&addresses)?;
        for ((account, devices), list) in accounts.into_iter().zip(lists) {
            let list = match list {
                Ok(list) => list,
                Err(e @ Error::Untrusted(_)) => {
                    db::add_notice(&self.conn, &e.to_string())?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            for (device, key) in devices {
                if !list.lists(key) {
                    db::add_notice(
                        &self.conn,
                        &format!(
                            "warning: {device} in chat {} is not in {account}'s signed device \
                             list",
                            hex::encode(group_id)
                        ),
                    )?;
                }
            }
        }
        Ok(())
    }

    /// This account's devices.
    pub fn devices(&mut self) -> Result<Vec<DeviceView>, Error> {
        let me = self.me.device.address.clone();
        let (list, infos) = self.verified_list(&me)?;
        let mut out = Vec::new();
        for info in infos {
            let listed = list.devices.iter().find(|d| d.key == info.device_key.0);
            let name = match listed.and_then(|d| d.name.as_ref()) {
                Some(n) => self.identity.open_name(n),
                // No longer listed (revoked, wiped): the name it had here.
                None => self
                    .conn
                    .prepare_cached("SELECT name FROM device_names WHERE device_key = ?1")?
                    .query_row([&info.device_key.0], |r| r.get(0))
                    .optional()?,
            };
            let wiped_at = info.wipe.as_ref().and_then(|w| self.confirmed_wipe(w));
            let state = match (&info.wipe, wiped_at, info.revoked_at, listed) {
                (_, Some(_), _, _) => "wiped",
                (Some(_), None, _, _) => "wipe ordered",
                (None, _, Some(_), _) | (None, _, None, None) => "revoked",
                _ => "active",
            };
            out.push(DeviceView {
                device_id: info.device_id,
                name,
                device_key: hex::encode(&info.device_key.0),
                this_device: info.device_id == self.me.device.device_id,
                state: state.into(),
                linked_at: listed.map(|d| d.added_at).unwrap_or(info.created_at),
                last_seen: info.last_seen,
                wiped_at,
            });
        }
        Ok(out)
    }

    /// The confirmation time of a wipe, if the confirmation verifies against the command and
    /// the command against this account's keys.
    fn confirmed_wipe(&self, w: &proto::WipeStatus) -> Option<u64> {
        let cmd = WipeCommand::verify_signature(
            &signed(&w.command),
            &self.identity.public(),
            self.operator_key().as_deref(),
        )
        .ok()?;
        WipeConfirmation::verify(&signed(w.confirmation.as_ref()?), &cmd).map(|c| c.wiped_at)
    }

    pub(crate) fn operator_key(&self) -> Option<Vec<u8>> {
        let pinned = db::pinned_list(&self.conn, &self.account.address).ok()??;
        DeviceList::verify(&pinned).ok()?.operator_key
    }

    /// Signs and uploads the next version of this account's list.
    fn publish_list(
        &mut self,
        list: &DeviceList,
        new_device: Option<proto::NewDevice>,
    ) -> Result<proto::UpdateDevicesResponse, Error> {
        let signed = list.sign(&self.identity);
        let token = self.token()?;
        let resp: proto::UpdateDevicesResponse = self.api.post(
            "/v1/devices",
            &proto::UpdateDevicesRequest { device_list: to_proto(&signed), new_device },
            Some(&token),
        )?;
        db::pin_list(&self.conn, &self.account.address, list.version, &signed)?;
        Ok(resp)
    }

    /// The key of one of this account's devices, by id, as the signed list confirms it.
    fn own_device_key(&mut self, device_id: u64) -> Result<(DeviceList, Vec<u8>), Error> {
        let me = self.me.device.address.clone();
        let (list, infos) = self.verified_list(&me)?;
        let info = infos.iter().find(|d| d.device_id == device_id).ok_or_else(|| {
            Error::Invalid(format!(
                "this account has no device {device_id}; see `sotto devices list`"
            ))
        })?;
        Ok((list, info.device_key.0.clone()))
    }

    // ---- revocation and wipe ----

    /// Revokes one of this account's devices: a new signed list without it (the server stops
    /// serving it at once), then its removal from every chat.
    pub fn revoke(&mut self, device_id: u64) -> Result<(), Error> {
        if device_id == self.me.device.device_id {
            return Err(Error::Invalid(
                "this device cannot revoke itself; revoke it from another device".into(),
            ));
        }
        let (list, key) = self.own_device_key(device_id)?;
        if list.lists(&key) {
            let mut next = list.next(unix_now());
            next.devices.retain(|d| d.key != key);
            self.publish_list(&next, None)?;
            self.heal_soon()?;
        }
        self.reconcile_devices()?;
        // This device's keys are replaced in every chat now (what fails is retried later).
        self.heal(false)?;
        Ok(())
    }

    /// Orders one of this account's devices to erase itself: revokes it, then queues a wipe
    /// command signed with the identity key.
    pub fn wipe(&mut self, device_id: u64) -> Result<(), Error> {
        self.revoke(device_id)?;
        let (_, key) = self.own_device_key(device_id)?;
        let cmd =
            WipeCommand::new(self.me.device.address.clone(), key, Signer::Identity, unix_now())?;
        let s = cmd.sign(&self.identity);
        self.conn.execute(
            "INSERT INTO wipes_issued (nonce, device_id, command, signature, issued_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![cmd.nonce, device_id as i64, s.body, s.signature, cmd.issued_at as i64],
        )?;
        let token = self.token()?;
        let _: proto::WipeResponse = self.api.post(
            "/v1/devices/wipe",
            &proto::WipeRequest {
                command: proto::SignedData { body: Bytes(s.body), signature: Bytes(s.signature) },
            },
            Some(&token),
        )?;
        Ok(())
    }

    /// Reports wipes this device ordered that the target has since confirmed.
    pub(crate) fn check_wipe_confirmations(&mut self) -> Result<(), Error> {
        let waiting: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM wipes_issued WHERE confirmed_at IS NULL",
            [],
            |r| r.get(0),
        )?;
        if waiting == 0 {
            return Ok(());
        }
        for d in self.devices()? {
            let Some(at) = d.wiped_at else { continue };
            let updated = self.conn.execute(
                "UPDATE wipes_issued SET confirmed_at = ?2
                 WHERE device_id = ?1 AND confirmed_at IS NULL",
                params![d.device_id as i64, at as i64],
            )?;
            if updated > 0 {
                db::add_notice(
                    &self.conn,
                    &format!("device {} confirmed that it erased itself", d.device_id),
                )?;
            }
        }
        Ok(())
    }

    /// Called when the server says this device is revoked: fetches a wipe command, obeys it
    /// if the account really signed it for this device (confirming, then erasing this home),
    /// and returns the error that explains what happened.
    pub fn obey_revocation(&mut self) -> Error {
        match self.try_obey_revocation() {
            Ok(e) | Err(e) => e,
        }
    }

    /// After the server refused this device because of its account (suspended, expired or
    /// deleted): erases it if a wipe was ordered for it (a lost device, say, whose account was
    /// then closed), otherwise gives `refused` back.
    pub fn obey_wipe_or(&mut self, refused: Error) -> Error {
        match self.try_obey_revocation() {
            Ok(Error::Revoked(_)) | Err(_) => refused,
            Ok(e) => e,
        }
    }

    fn try_obey_revocation(&mut self) -> Result<Error, Error> {
        let token = self.token()?;
        let pending: proto::PendingWipe = self.api.get("/v1/wipe", Some(&token))?;
        let Some(command) = pending.command else {
            return Ok(Error::Revoked(
                "this device was revoked by another device of the account; it can no longer \
                 send or receive"
                    .into(),
            ));
        };
        let s = signed(&command);
        let operator = self.operator_key();
        let conn = &self.conn;
        let seen = |nonce: &[u8]| {
            conn.query_row("SELECT 1 FROM wipes_seen WHERE nonce = ?1", [nonce], |_| Ok(())).is_ok()
        };
        let verdict = WipeCommand::verify_for_target(
            &s,
            &self.me.device.address,
            self.me.key.public(),
            self.account.linked_at,
            &self.identity.public(),
            operator.as_deref(),
            seen,
        );
        let cmd = match verdict {
            Ok(cmd) => cmd,
            Err(refused) => return self.refuse_wipe(&s, refused),
        };
        let confirmation = WipeConfirmation {
            v: 1,
            nonce: cmd.nonce,
            device_key: cmd.device_key,
            wiped_at: unix_now(),
        };
        let body = confirmation.body();
        let signature = self.me.key.sign(&WipeConfirmation::payload(&body))?;
        // Where it still can, the device says it obeyed; erasing does not depend on it.
        let _ = self.api.post::<_, proto::WipeResponse>(
            "/v1/wipe/confirm",
            &proto::WipeConfirm {
                confirmation: proto::SignedData { body: Bytes(body), signature: Bytes(signature) },
            },
            Some(&token),
        );
        // Close the database first, so nothing is written back after the erasure.
        let open = std::mem::replace(&mut self.conn, rusqlite::Connection::open_in_memory()?);
        drop(open);
        erase_home(&self.home)?;
        let by = match cmd.signer {
            Signer::Identity => "the account",
            Signer::Operator => "the server's operator (this is a managed account)",
        };
        Ok(Error::Wiped(format!(
            "this device was wiped on the order of {by}: its keys, messages and database are \
             erased"
        )))
    }

    fn refuse_wipe(&mut self, s: &Signed, refused: WipeRefused) -> Result<Error, Error> {
        let nonce =
            serde_json::from_slice::<WipeCommand>(&s.body).map(|c| c.nonce).unwrap_or_default();
        self.conn.execute(
            "INSERT OR IGNORE INTO wipes_seen (nonce, reason, at) VALUES (?1, ?2, ?3)",
            params![nonce, refused.to_string(), unix_now() as i64],
        )?;
        Ok(Error::Revoked(format!(
            "this device was revoked; a wipe command was ignored: {refused}"
        )))
    }

    // ---- keeping chats in step with the device list ----

    /// Brings every active chat in line with this account's signed device list: adds listed
    /// devices that are missing (if they have published key packages) and removes devices
    /// that are no longer listed. Any of the account's devices may do it; the first wins.
    /// Returns the devices found without key packages of a chat's suite.
    pub(crate) fn reconcile_devices(&mut self) -> Result<BTreeSet<(Suite, u64)>, Error> {
        let me = self.me.device.address.clone();
        let (list, infos) = self.verified_list(&me)?;
        // Devices found without key packages of a suite in this pass are not asked again for
        // each chat of that suite (a device may have packages of one suite and not the other).
        let mut exhausted: BTreeSet<(Suite, u64)> = BTreeSet::new();
        for group_id in self.active_chats()? {
            // One chat that cannot be brought in line does not hold up the others, nor the
            // rest of the sync; it is tried again at the next one.
            match self.reconcile_chat(&group_id, &list, &infos, &mut exhausted) {
                Err(e @ (Error::Database(_) | Error::Revoked(_) | Error::Wiped(_))) => {
                    return Err(e);
                }
                Err(e)
                    if crate::outbox::transient(&e)
                        || e.server_code() == Some("device_revoked") =>
                {
                    return Err(e);
                }
                Err(e) => db::add_notice(
                    &self.conn,
                    &format!(
                        "this account's devices could not be brought into chat {}: {e}",
                        hex::encode(&group_id)
                    ),
                )?,
                Ok(()) => {}
            }
        }
        Ok(exhausted)
    }

    fn reconcile_chat(
        &mut self,
        group_id: &[u8],
        list: &DeviceList,
        infos: &[proto::DeviceInfo],
        exhausted: &mut BTreeSet<(Suite, u64)>,
    ) -> Result<(), Error> {
        let me = self.me.device.address.clone();
        let suite = self.chat_suite(group_id)?;
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            let members = mls::member_keys(&db::provider(&self.conn), group_id)?;
            let mine: Vec<&(DeviceRef, Vec<u8>)> =
                members.iter().filter(|(d, _)| d.address == me).collect();
            let stale: Vec<DeviceRef> =
                mine.iter().filter(|(_, k)| !list.lists(k)).map(|(d, _)| d.clone()).collect();
            let missing: Vec<u64> = infos
                .iter()
                .filter(|i| i.revoked_at.is_none() && list.lists(&i.device_key.0))
                .filter(|i| !mine.iter().any(|(_, k)| k == &i.device_key.0))
                .map(|i| i.device_id)
                .filter(|id| !exhausted.contains(&(suite, *id)))
                .collect();
            // Removals first; additions on a later round (their key packages are claimed
            // only when they will be used).
            let packages = if !stale.is_empty() || missing.is_empty() {
                Vec::new()
            } else {
                let packages = self.claim_for(group_id, &me, Some(missing.clone()), list)?;
                exhausted.extend(
                    missing
                        .iter()
                        .filter(|id| !packages.iter().any(|k| k.device.device_id == **id))
                        .map(|id| (suite, *id)),
                );
                packages
            };
            if stale.is_empty() && packages.is_empty() {
                break;
            }
            let done = self.commit_once(group_id, &mut |p, me| {
                if stale.is_empty() {
                    let out = mls::add_members(p, group_id, me, &packages)?;
                    Ok((out, packages.iter().map(|k| k.device.device_id).collect()))
                } else {
                    Ok((mls::remove_devices(p, group_id, me, &stale)?, Vec::new()))
                }
            })?;
            if !done {
                self.catch_up()?;
                if self.require_active(group_id).is_err() {
                    break;
                }
            }
        }
        Ok(())
    }

    /// In groups where the server reported revoked recipients, removes every device of
    /// another account that the account's signed device list no longer names.
    pub(crate) fn prune_revoked(&mut self) -> Result<(), Error> {
        let groups: Vec<Vec<u8>> = {
            let mut stmt =
                self.conn.prepare("SELECT group_id FROM chats WHERE prune_pending > 0")?;
            stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?
        };
        // A chat that cannot be checked now stays marked (nothing is sent in it, and sending
        // there says why); the rest of a sync goes on.
        for group_id in groups {
            match self.prune_group(&group_id) {
                Err(e @ Error::Database(_)) => return Err(e),
                Err(e @ Error::Untrusted(_)) => {
                    let chat = hex::encode(&group_id);
                    db::add_notice(
                        &self.conn,
                        &format!("the devices in chat {chat} could not be checked: {e}"),
                    )?;
                }
                // A verified contact's new identity key waits for `verify --accept-change`;
                // an unreachable server, for the next try.
                Err(_) | Ok(()) => {}
            }
        }
        Ok(())
    }

    /// In a group where the server reported revoked recipients, brings every other account's
    /// devices in line with its fresh, directory-checked device list: removes those the list
    /// no longer names and, in the same commit, adds those it names that the group lacks (an
    /// account recovered on a new device keeps its chats; a verified contact's new identity
    /// key must be accepted first: `identity_changed`). Then the group is clear. An error
    /// leaves it marked, and nothing is sent in it.
    pub(crate) fn prune_group(&mut self, group_id: &[u8]) -> Result<(), Error> {
        // The answer to a removal commit reports the removed devices again: a second round
        // finds nothing left to do.
        for _ in 0..3 {
            let reports = db::prune_pending(&self.conn, group_id)?;
            if reports == 0 {
                return Ok(());
            }
            self.prune_round(group_id, reports)?;
        }
        match db::prune_pending(&self.conn, group_id)? {
            0 => Ok(()),
            _ => Err(Error::TooManyRetries),
        }
    }

    /// One check of a marked group, answering `reports` reports.
    fn prune_round(&mut self, group_id: &[u8], reports: i64) -> Result<(), Error> {
        // Cleared only of the reports this check answers: one that came meanwhile (the
        // answer to this very commit, say) keeps the chat marked for the next check.
        let clear = |conn: &rusqlite::Connection| -> Result<(), Error> {
            conn.execute(
                "UPDATE chats SET prune_pending = 0 WHERE group_id = ?1 AND prune_pending = ?2",
                params![group_id, reports],
            )?;
            Ok(())
        };
        let me = self.me.device.address.clone();
        if self.require_active(group_id).is_err() {
            return clear(&self.conn);
        }
        let members = mls::member_keys(&db::provider(&self.conn), group_id)?;
        let accounts: BTreeSet<Address> =
            members.iter().map(|(d, _)| d.address.clone()).filter(|a| a != &me).collect();
        let mut stale = Vec::new();
        let mut packages = Vec::new();
        let mut deleted = BTreeSet::new();
        for account in accounts {
            let (list, devices) = match self.verified_list(&account) {
                Ok(found) => found,
                // The operator deleted the account, and the directory says so: all its
                // devices leave the group.
                Err(e)
                    if e.server_code() == Some("account_deleted")
                        && self.kt_deleted(&account)? =>
                {
                    stale.extend(
                        members
                            .iter()
                            .filter(|(d, _)| d.address == account)
                            .map(|(d, _)| d.clone()),
                    );
                    deleted.insert(account);
                    continue;
                }
                Err(e) => return Err(e),
            };
            stale.extend(
                members
                    .iter()
                    .filter(|(d, k)| d.address == account && !list.lists(k))
                    .map(|(d, _)| d.clone()),
            );
            // Listed devices the group lacks (none for a device merely revoked).
            let missing: Vec<u64> = devices
                .iter()
                .filter(|d| d.revoked_at.is_none() && list.lists(&d.device_key.0))
                .filter(|d| !members.iter().any(|(_, k)| k == &d.device_key.0))
                .map(|d| d.device_id)
                .collect();
            if !missing.is_empty() {
                match self.claim_for(group_id, &account, Some(missing), &list) {
                    Ok(found) => packages.extend(found),
                    // Devices with no key package yet are added by a later check.
                    Err(Error::NoKeyPackages(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            let current = mls::members(&db::provider(&self.conn), group_id)?;
            let still: Vec<DeviceRef> =
                stale.iter().filter(|d| current.contains(d)).cloned().collect();
            packages.retain(|k| !current.contains(&k.device));
            if still.is_empty() && packages.is_empty() {
                return clear(&self.conn);
            }
            let welcomed: Vec<u64> = packages.iter().map(|k| k.device.device_id).collect();
            let done = self.commit_once(group_id, &mut |p, me| {
                let out = if packages.is_empty() {
                    mls::remove_devices(p, group_id, me, &still)?
                } else {
                    mls::replace_devices(p, group_id, me, &still, &packages)?
                };
                Ok((out, welcomed.clone()))
            })?;
            if done {
                for d in &still {
                    let text = if deleted.contains(&d.address) {
                        format!("removed {d}: the account {} was deleted on the server", d.address)
                    } else {
                        format!("removed {d}: no longer in {}'s signed device list", d.address)
                    };
                    insert_event(&self.conn, group_id, me.as_str(), &text)?;
                }
                for k in &packages {
                    let text = format!(
                        "added {}: new in {}'s signed device list",
                        k.device, k.device.address
                    );
                    insert_event(&self.conn, group_id, me.as_str(), &text)?;
                }
                clear(&self.conn)?;
                if !packages.is_empty() {
                    // The new devices learn what the chat is with the next delivery (queued
                    // only: this runs inside one).
                    let info = self.group_info(group_id)?;
                    self.enqueue(group_id, info)?;
                }
                return Ok(());
            }
            self.catch_up()?;
            if self.require_active(group_id).is_err() {
                return clear(&self.conn);
            }
        }
        Err(Error::TooManyRetries)
    }

    // ---- linking ----

    /// Approves a new device showing `code`: registers it under a new signed device list,
    /// hands it the account's keys sealed under the code, adds it to every chat, and sends it
    /// recent history.
    pub fn approve_link(&mut self, code: &str, name: Option<&str>) -> Result<LinkOutcome, Error> {
        let secret = LinkSecret::parse(code)?;
        let id = hex::encode(secret.id());
        let link: proto::LinkState = self.api.get(&format!("/v1/links/{id}"), None)?;
        let request = secret.open(LinkPart::Request, &link.request.0).ok_or_else(|| {
            Error::Untrusted(
                "the link request does not decrypt with this code; it was not made by the \
                 device showing the code"
                    .into(),
            )
        })?;
        if link.response.is_some() {
            return Err(Error::Invalid("this code was approved already".into()));
        }
        let request: LinkRequest = serde_json::from_slice(&request)
            .map_err(|e| Error::Protocol(format!("bad link request: {e}")))?;
        let key = hex::decode(&request.device_key)
            .map_err(|_| Error::Protocol("bad device key in link request".into()))?;
        let signature = hex::decode(&request.signature)
            .map_err(|_| Error::Protocol("bad signature in link request".into()))?;
        let me = self.me.device.address.clone();
        if !auth::verify(&key, &auth::registration_payload(&me, &key), &signature) {
            return Err(Error::Untrusted("the new device's signature does not verify".into()));
        }
        let (list, _) = self.verified_list(&me)?;
        let mut next = list.next(unix_now());
        let name = name.map(str::to_owned).or(request.name);
        let sealed_name = name.as_deref().map(|n| self.identity.seal_name(n)).transpose()?;
        next.devices.push(ListedDevice {
            key: key.clone(),
            added_at: unix_now(),
            name: sealed_name,
        });
        let resp = self.publish_list(
            &next,
            Some(proto::NewDevice { device_key: Bytes(key.clone()), signature: Bytes(signature) }),
        )?;
        let device_id =
            resp.device_id.ok_or(Error::Protocol("the server registered no device".into()))?;
        let signed_list = db::pinned_list(&self.conn, &self.account.address)?
            .ok_or(Error::Internal("the list just published is not pinned"))?;
        let response = LinkResponse {
            address: me.clone(),
            device_id,
            identity_secret: hex::encode(self.identity.secret().as_slice()),
            list_body: hex::encode(&signed_list.body),
            list_signature: hex::encode(&signed_list.signature),
            kt_keys: self.account.kt_keys.as_ref().map(|(s, v)| (hex::encode(s), hex::encode(v))),
        };
        let plain = Zeroizing::new(serde_json::to_vec(&response).unwrap_or_default());
        let sealed = secret.seal(LinkPart::Response, &plain)?;
        let token = self.token()?;
        let _: serde::de::IgnoredAny = self.api.post(
            &format!("/v1/links/{id}"),
            &proto::LinkReply { response: Some(Bytes(sealed)), history: None },
            Some(&token),
        )?;
        // Wait for the new device's key packages, adding it to each chat as they come.
        let deadline = Instant::now() + JOIN_WAIT;
        let device = DeviceRef { address: me.clone(), device_id };
        // How many polls in a row found only chats the device will not join left (its
        // packages of the other suite may be a moment behind, so one poll is not enough).
        let mut settled = 0;
        let (joined, pending) = loop {
            self.catch_up()?;
            let exhausted = self.reconcile_devices()?;
            let chats = self.active_chats()?;
            let p = db::provider(&self.conn);
            let mut state = Vec::with_capacity(chats.len());
            for g in &chats {
                state.push((self.chat_suite(g)?, mls::members(&p, g)?.contains(&device)));
            }
            let joined = state.iter().filter(|(_, j)| *j).count();
            // A device that joined chats of one suite and has no key packages of another (an
            // older version) will not join chats of that other: they are not waited for.
            let never = state
                .iter()
                .filter(|(s, j)| !j && joined > 0 && exhausted.contains(&(*s, device_id)))
                .count();
            settled = if joined + never == chats.len() { settled + 1 } else { 0 };
            if joined == chats.len() || settled >= 4 || Instant::now() >= deadline {
                break (joined, chats.len() - joined);
            }
            std::thread::sleep(POLL);
        };
        let (history, count) = self.history_for_link()?;
        let sealed = secret.seal(LinkPart::History, &history)?;
        let token = self.token()?;
        let _: serde::de::IgnoredAny = self.api.post(
            &format!("/v1/links/{id}"),
            &proto::LinkReply { response: None, history: Some(Bytes(sealed)) },
            Some(&token),
        )?;
        Ok(LinkOutcome {
            device_id,
            chats_joined: joined,
            chats_pending: pending,
            history_messages: count,
        })
    }

    /// Recent messages of every active chat, newest kept when the whole would be too large.
    fn history_for_link(&self) -> Result<(Zeroizing<Vec<u8>>, usize), Error> {
        let mut chats = Vec::new();
        for group_id in self.active_chats()? {
            let row = self.chat_row(&group_id)?;
            let mut stmt = self.conn.prepare(
                "SELECT msg_id, sender, body, sent_at, expires_at, kind, attachment, reply_to,
                        mentions, edited_at, edit_id, deleted FROM messages
                 WHERE group_id = ?1 AND kind IN ('text', 'file') ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![group_id, HISTORY_PER_CHAT], |r| {
                let edited = match (r.get::<_, Option<i64>>(9)?, r.get::<_, Option<String>>(10)?) {
                    (Some(at), Some(id)) => Some((at, id)),
                    _ => None,
                };
                Ok(HistoryMessage {
                    msg_id: r.get(0)?,
                    sender: r.get(1)?,
                    body: r.get(2)?,
                    sent_at: r.get::<_, i64>(3)? as u64,
                    expires_at: r.get::<_, Option<i64>>(4)?.map(|e| e as u64),
                    kind: r.get(5)?,
                    attachment: r.get(6)?,
                    reply_to: r.get(7)?,
                    mentions: r.get(8)?,
                    edited,
                    deleted: r.get(11)?,
                })
            })?;
            let mut messages: Vec<HistoryMessage> = rows.collect::<Result<_, _>>()?;
            messages.reverse();
            let mut stmt = self.conn.prepare(
                "SELECT target, reactor, emoji, sent_at FROM reactions
                 WHERE group_id = ?1 AND emoji != ''",
            )?;
            let rows =
                stmt.query_map([&group_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
            let reactions: Vec<(String, String, String, i64)> = rows
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .filter(|(target, ..)| messages.iter().any(|m| &m.msg_id == target))
                .collect();
            chats.push(HistoryChat {
                group_id: hex::encode(&group_id),
                kind: row.kind,
                name: row.name,
                peer: row.peer,
                messages,
                reactions,
            });
        }
        loop {
            let bytes = Zeroizing::new(serde_json::to_vec(&chats).unwrap_or_default());
            let count = chats.iter().map(|c| c.messages.len()).sum();
            if bytes.len() <= MAX_HISTORY_BYTES || count == 0 {
                return Ok((bytes, count));
            }
            // Drop the oldest message of the chat with the most.
            if let Some(c) = chats.iter_mut().max_by_key(|c| c.messages.len()) {
                let drop = (c.messages.len() / 4).max(1);
                c.messages.drain(..drop);
            }
        }
    }

    /// Links this home as a new device of `address`: shows a code through `show_code`, waits
    /// (up to `timeout`) for an existing device to approve it, takes the account's keys from
    /// the sealed response, publishes key packages, and imports the history it is sent.
    pub fn link_new_device(
        new: &crate::NewHome<'_>,
        address: &str,
        name: Option<&str>,
        timeout: Duration,
        show_code: impl FnOnce(&str),
    ) -> Result<LinkedDevice, Error> {
        let (address, api, _) = Self::prepare_home(
            &crate::http::HttpConnector,
            new.home,
            new.server,
            address,
            new.ca_cert,
        )?;
        let key = DeviceKey::generate()?;
        let signature = key.sign(&auth::registration_payload(&address, key.public()))?;
        let secret = LinkSecret::generate()?;
        let request = LinkRequest {
            device_key: hex::encode(key.public()),
            signature: hex::encode(&signature),
            name: name.map(str::to_owned),
        };
        let sealed =
            secret.seal(LinkPart::Request, &serde_json::to_vec(&request).unwrap_or_default())?;
        let id = hex::encode(secret.id());
        let _: serde::de::IgnoredAny = api.post(
            "/v1/links",
            &proto::OpenLink { link_id: Bytes(secret.id()), request: Bytes(sealed) },
            None,
        )?;
        show_code(&secret.code());
        let deadline = Instant::now() + timeout;
        let sealed_response = loop {
            let state: proto::LinkState = api.get(&format!("/v1/links/{id}"), None)?;
            if let Some(r) = state.response {
                break r;
            }
            if Instant::now() >= deadline {
                return Err(Error::Invalid(format!(
                    "no device approved this link within {} s; run the command again for a new code",
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(POLL);
        };
        let plain = secret.open(LinkPart::Response, &sealed_response.0).ok_or_else(|| {
            Error::Untrusted("the link response was not sealed with this code".into())
        })?;
        let response: LinkResponse = serde_json::from_slice(&plain)
            .map_err(|e| Error::Protocol(format!("bad link response: {e}")))?;
        let identity_secret = Zeroizing::new(
            hex::decode(&response.identity_secret)
                .map_err(|_| Error::Protocol("bad identity key in link response".into()))?,
        );
        let identity = IdentityKey::from_secret(&identity_secret)?;
        let signed_list = SignedList {
            body: hex::decode(&response.list_body).unwrap_or_default(),
            signature: hex::decode(&response.list_signature).unwrap_or_default(),
        };
        let list = DeviceList::verify(&signed_list)
            .map_err(|e| Error::Untrusted(format!("the account's device list is bad: {e}")))?;
        if list.identity_key != identity.public()
            || list.address != address
            || !list.lists(key.public())
            || response.address != address
        {
            return Err(Error::Untrusted(
                "the link response does not list this device under the account's identity key"
                    .into(),
            ));
        }
        let me = Identity { device: DeviceRef { address, device_id: response.device_id }, key };
        // The directory keys come from the approving device: this device trusts what the
        // account already pinned, not what the server says today.
        let decode = |k: &str| {
            hex::decode(k).ok().filter(|k| k.len() == 32).ok_or_else(|| {
                Error::Untrusted("the approving device sent a malformed directory key".into())
            })
        };
        let kt_keys = match &response.kt_keys {
            Some((s, v)) => Some((decode(s)?, decode(v)?)),
            // The account pinned none: nothing this device is shown could be checked.
            None => {
                return Err(Error::Untrusted(
                    "the approving device has no directory key pinned; link from a device \
                     that has one"
                        .into(),
                ));
            }
        };
        let mut client = Self::create_home(
            new.home,
            api,
            me,
            identity,
            (&signed_list, list.version),
            kt_keys,
            new.passphrase,
        )?;
        // The approving device sends history once it has added this device to its chats.
        let deadline = Instant::now() + JOIN_WAIT + Duration::from_secs(30);
        let mut history_messages = 0;
        loop {
            let state: proto::LinkState = client.api.get(&format!("/v1/links/{id}"), None)?;
            if let Some(h) = state.history {
                let plain = secret.open(LinkPart::History, &h.0).ok_or_else(|| {
                    Error::Untrusted("the history was not sealed with this code".into())
                })?;
                history_messages = client.import_history(&plain)?;
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(POLL);
        }
        client.sync()?;
        Ok(LinkedDevice { client, history_messages })
    }

    fn import_history(&mut self, plain: &[u8]) -> Result<usize, Error> {
        let chats: Vec<HistoryChat> = serde_json::from_slice(plain)
            .map_err(|e| Error::Protocol(format!("bad history: {e}")))?;
        let tx = begin(&self.conn)?;
        let mut count = 0;
        let now = self.now_ms() as i64;
        // Each chat's messages keep the old device's order; the chats are interleaved by when
        // messages were sent (the direct chats with one account are one conversation, shown
        // in stored order).
        let mut queues: Vec<(Vec<u8>, std::collections::VecDeque<HistoryMessage>)> = Vec::new();
        let mut reactions = Vec::new();
        for chat in chats {
            let Ok(group_id) = hex::decode(&chat.group_id) else { continue };
            let kind = match chat.kind.as_str() {
                "direct" => "direct",
                "note" => "note",
                _ => "group",
            };
            tx.execute(
                "INSERT OR IGNORE INTO chats (group_id, kind, name, peer, state, created_at)
                 VALUES (?1, ?2, ?3, ?4, 'joining', ?5)",
                params![group_id, kind, chat.name, chat.peer, now],
            )?;
            reactions.extend(chat.reactions.into_iter().map(|r| (group_id.clone(), r)));
            queues.push((group_id, chat.messages.into()));
        }
        let mut messages = Vec::new();
        while let Some((group_id, queue)) = queues
            .iter_mut()
            .filter(|(_, q)| !q.is_empty())
            .min_by_key(|(_, q)| q.front().map_or(u64::MAX, |m| m.sent_at))
        {
            if let Some(m) = queue.pop_front() {
                messages.push((group_id.clone(), m));
            }
        }
        for (group_id, m) in messages {
            if !sotto_core::content::is_message_id(&m.msg_id) {
                continue;
            }
            let status = if m.sender == self.account.address { "sent" } else { "received" };
            // A file message keeps what downloading it needs; anything else that does not
            // read as one is left out rather than shown broken.
            let attachment = match m.kind.as_str() {
                "text" => None,
                "file" => match m.attachment.filter(|a| crate::chats::file_info(a).is_some()) {
                    Some(a) => Some(a),
                    // A tombstone keeps nothing of what was deleted.
                    None if m.deleted => None,
                    None => continue,
                },
                _ => continue,
            };
            let (body, attachment) =
                if m.deleted { (String::new(), None) } else { (m.body, attachment) };
            let (edited_at, edit_id) = m.edited.filter(|_| !m.deleted).unzip();
            let reply_to = m.reply_to.filter(|r| sotto_core::content::is_message_id(r));
            count += tx.execute(
                "INSERT OR IGNORE INTO messages (group_id, msg_id, sender, kind, body, status,
                                                 sent_at, received_at, reported, expires_at,
                                                 attachment, reply_to, mentions, edited_at,
                                                 edit_id, deleted, read_at)
                 VALUES (?1, ?2, ?3, ?9, ?4, ?5, ?6, ?7, 1, ?8, ?10, ?11, ?12, ?13, ?14,
                         ?15, ?7)",
                params![
                    group_id,
                    m.msg_id,
                    m.sender,
                    body,
                    status,
                    m.sent_at as i64,
                    now,
                    m.expires_at.map(|e| e as i64),
                    m.kind,
                    attachment,
                    reply_to,
                    m.mentions.filter(|_| !m.deleted),
                    edited_at,
                    edit_id,
                    m.deleted
                ],
            )?;
        }
        for (group_id, (target, reactor, emoji, at)) in reactions {
            if emoji.len() <= sotto_core::content::MAX_EMOJI_LEN
                && !emoji.chars().any(char::is_control)
            {
                tx.execute(
                    "INSERT OR IGNORE INTO reactions (group_id, target, reactor, emoji, sent_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![group_id, target, reactor, emoji, at],
                )?;
            }
        }
        tx.commit()?;
        Ok(count)
    }

    // ---- recovery ----

    /// Takes `address` back on a fresh home with its recovery key: a new identity key
    /// endorsed by the recovery key, this device as the only one; every other device is
    /// revoked. Contacts see that the account's keys changed.
    pub fn recover(
        new: &crate::NewHome<'_>,
        address: &str,
        recovery_key: &str,
    ) -> Result<Client, Error> {
        let recovery = RecoveryKey::parse(recovery_key)?;
        let (address, api, info) = Self::prepare_home(
            &crate::http::HttpConnector,
            new.home,
            new.server,
            address,
            new.ca_cert,
        )?;
        let current: proto::DevicesResponse =
            api.get(&format!("/v1/users/{address}/devices"), None)?;
        let current = DeviceList::verify(&from_proto(&current.device_list))
            .map_err(|e| Error::Untrusted(format!("the server's device list is bad: {e}")))?;
        if current.recovery_key != recovery.public() {
            return Err(Error::Invalid(format!(
                "that recovery key does not belong to {address}; check it and try again"
            )));
        }
        let identity = IdentityKey::generate()?;
        let key = DeviceKey::generate()?;
        let now = unix_now();
        let mut list = current.next(now);
        list.identity_key = identity.public();
        list.devices = vec![ListedDevice { key: key.public().to_vec(), added_at: now, name: None }];
        list.endorsement = Some(recovery.endorse(&address, &list.identity_key, list.version));
        let signed_list = list.sign(&identity);
        let signature = key.sign(&auth::registration_payload(&address, key.public()))?;
        let resp: proto::UpdateDevicesResponse = api.post(
            "/v1/recover",
            &proto::RecoverRequest {
                address: address.to_string(),
                device: proto::NewDevice {
                    device_key: Bytes(key.public().to_vec()),
                    signature: Bytes(signature),
                },
                device_list: to_proto(&signed_list),
            },
            None,
        )?;
        let device_id =
            resp.device_id.ok_or(Error::Protocol("the server registered no device".into()))?;
        let me = Identity { device: DeviceRef { address, device_id }, key };
        let kt_keys = crate::kt_keys(&info.kt);
        Self::create_home(
            new.home,
            api,
            me,
            identity,
            (&signed_list, list.version),
            kt_keys,
            new.passphrase,
        )
    }
}

/// Records an event (a line in a chat's history that no member wrote).
pub(crate) fn insert_event(
    conn: &rusqlite::Connection,
    group_id: &[u8],
    sender: &str,
    text: &str,
) -> Result<(), Error> {
    insert_line(conn, group_id, sender, text, false)
}

/// Records a quiet mark in a chat: an account's change, told once as a notice.
fn insert_mark(
    conn: &rusqlite::Connection,
    group_id: &[u8],
    sender: &str,
    text: &str,
) -> Result<(), Error> {
    insert_line(conn, group_id, sender, text, true)
}

/// An event, or (`quiet`) a mark: already reported and read, so it is only in the history.
fn insert_line(
    conn: &rusqlite::Connection,
    group_id: &[u8],
    sender: &str,
    text: &str,
    quiet: bool,
) -> Result<(), Error> {
    let now = now_ms() as i64;
    let id = format!("event-{}", hex::encode(sotto_core::random_bytes(8)?));
    conn.execute(
        "INSERT INTO messages (group_id, msg_id, sender, kind, body, status, sent_at, received_at,
                              reported, read_at)
         VALUES (?1, ?2, ?3, ?6, ?4, 'received', ?5, ?5, ?7, ?8)",
        params![
            group_id,
            id,
            sender,
            text,
            now,
            if quiet { "mark" } else { "event" },
            quiet,
            quiet.then_some(now)
        ],
    )?;
    Ok(())
}

/// Erases a home directory's contents: every file is overwritten with zeros, synced, and
/// removed. (Flash storage may keep old blocks; encryption at rest closes that gap.)
fn erase_home(home: &Path) -> Result<(), Error> {
    // The key in the OS keyring goes too. Should the keyring refuse, the wipe goes on: the
    // key opens nothing once the database below is erased.
    if crate::vault::uses_keyring(home) {
        let _ = crate::Client::disable_keyring(home);
    }
    fn erase(path: &Path) -> std::io::Result<()> {
        let meta = std::fs::symlink_metadata(path)?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(path)? {
                erase(&entry?.path())?;
            }
            return std::fs::remove_dir(path);
        }
        if meta.is_file() {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
            let zeros = vec![0u8; 64 * 1024];
            let mut left = meta.len();
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                f.write_all(&zeros[..n])?;
                left -= n as u64;
            }
            f.sync_all()?;
        }
        std::fs::remove_file(path)
    }
    let entries = std::fs::read_dir(home)
        .map_err(|e| Error::Io(format!("cannot erase {}: {e}", home.display())))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::Io(e.to_string()))?;
        erase(&entry.path())
            .map_err(|e| Error::Io(format!("cannot erase {}: {e}", entry.path().display())))?;
    }
    Ok(())
}
