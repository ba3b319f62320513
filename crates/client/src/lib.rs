//! Sotto's client library.
//!
//! A [`Client`] is one device of one account, living in a *home* directory that holds a single
//! SQLite database: the device's keys and MLS state (through openmls's SQLite storage
//! provider) and Sotto's own rows — the account, chats, messages and the sync position.
//!
//! Every incoming message is processed in one transaction: the new MLS state, the stored
//! plaintext and the position in the server queue commit together, and the server is told to
//! drop the message only afterwards. A crash at any point therefore either redoes the whole
//! message or finds it done; nothing is lost and nothing is stored twice.
//!
//! Commits go through the server's per-group ordering: if another member's commit won the
//! epoch, the server answers `stale_epoch`, the local attempt is rolled back, the client
//! catches up and tries again.
//!
//! The library is blocking (ureq for HTTP, tungstenite for the WebSocket), which suits the
//! CLI and keeps the async runtime out of clients that do not need one.
#![forbid(unsafe_code)]

mod api;
mod db;
mod devices;
mod error;
mod files;
mod keyring;
mod kt;
mod live;
mod vault;
mod verify;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use serde::Serialize;
use sotto_core::account::{DeviceList, IdentityKey, ListedDevice, RecoveryKey};
use sotto_core::content::{Body, ChatKind, Message, VERSION};
use sotto_core::mls::{
    self, CommitOutput, DeviceKey, Identity, Incoming, Provider, ValidKeyPackage,
};
use sotto_core::{Address, DeviceRef, auth, unix_now};
use sotto_proto::{self as proto, Bytes};
use zeroize::Zeroizing;

use crate::api::Api;
use crate::db::{AccountRow, Storage};
pub use crate::devices::{DeviceView, LinkOutcome, LinkedDevice};
pub use crate::error::Error;
pub use crate::files::Downloaded;
pub use crate::kt::{AuditReport, audit, load_audit_state, save_audit_state};
pub use crate::verify::SafetyView;

/// One-time key packages uploaded at a time.
const KEY_PACKAGE_BATCH: usize = 50;
/// Upload more when fewer than this remain on the server.
const KEY_PACKAGE_LOW_WATER: u64 = 10;
/// Attempts at a commit that keeps losing the race for an epoch.
const MAX_COMMIT_ATTEMPTS: usize = 8;
/// Queue page size when catching up.
const SYNC_PAGE: u32 = 200;

/// A chat as listed by [`Client::chats`].
#[derive(Debug, Clone, Serialize)]
pub struct ChatSummary {
    /// The chat id (the MLS group id, hex).
    pub id: String,
    /// `direct` or `group`.
    pub kind: String,
    /// The group's name (groups).
    pub name: Option<String>,
    /// The other account (direct chats).
    pub peer: Option<String>,
    /// `active`, `left` or `removed`.
    pub state: String,
    /// Member accounts, this one included (active chats only).
    pub members: Vec<String>,
    /// How many messages the chat holds.
    pub messages: u64,
    /// When the last message was sent (Unix milliseconds).
    pub last_message_at: Option<u64>,
    /// The disappearing-message timer in seconds (0: off).
    pub timer_secs: u64,
}

/// A message or event as shown to the user. `Debug` leaves the body out.
#[derive(Clone, Serialize)]
pub struct MessageView {
    /// The chat id.
    pub chat: String,
    /// What to call the chat: the peer of a direct chat, a group's name.
    pub chat_name: String,
    /// The message id chosen by its sender (events: `event-…`).
    pub id: String,
    /// The sending account.
    pub sender: String,
    /// `text`, or `event` for membership changes.
    pub kind: String,
    /// The text.
    pub body: String,
    /// `received`; for this account's own messages `sent`, `pending` or `failed`.
    pub status: String,
    /// The sender's clock (Unix milliseconds).
    pub sent_at: u64,
    /// When this device stored it (Unix milliseconds).
    pub received_at: u64,
    /// For `file` messages: what the file is (`sotto download ID` fetches it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<FileInfo>,
}

/// A file a message carries.
#[derive(Debug, Clone, Serialize)]
pub struct FileInfo {
    /// Its name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its media type.
    pub media_type: String,
}

impl std::fmt::Debug for MessageView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageView")
            .field("chat", &self.chat)
            .field("id", &self.id)
            .field("sender", &self.sender)
            .field("kind", &self.kind)
            .field("body", &format_args!("[{} bytes]", self.body.len()))
            .field("status", &self.status)
            .field("sent_at", &self.sent_at)
            .finish_non_exhaustive()
    }
}

/// A message that arrived but could not be processed.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// Its position in the server queue.
    pub seq: u64,
    /// Why (never the content).
    pub reason: String,
}

/// What [`Client::sync`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    /// New messages and events, oldest first.
    pub messages: Vec<MessageView>,
    /// Messages that arrived and could not be processed.
    pub failures: Vec<Failure>,
    /// How many queued messages were processed.
    pub processed: u64,
    /// Account events: devices linked, revoked or wiped, keys changed, commands refused.
    pub notices: Vec<String>,
}

/// Choices made at registration.
#[derive(Clone, Default)]
pub struct RegisterOptions {
    /// The invite code.
    pub invite: Option<String>,
    /// A CA certificate (PEM file) to trust for this server.
    pub ca_cert: Option<String>,
    /// This device's name, seen only by the account's own devices.
    pub device_name: Option<String>,
    /// Accept the server operator's key: it may then revoke and wipe this account's devices.
    pub managed: bool,
    /// The passphrase that will protect this home's database.
    pub passphrase: Zeroizing<String>,
}

/// Where a new device's home is made: the directory, the server, a CA to pin it to, and the
/// passphrase that will protect the home.
#[derive(Clone, Copy)]
pub struct NewHome<'a> {
    /// The home directory (must not hold an account).
    pub home: &'a Path,
    /// The server's URL.
    pub server: &'a str,
    /// A CA certificate (PEM file) to trust for this server.
    pub ca_cert: Option<&'a str>,
    /// The new home's passphrase.
    pub passphrase: &'a str,
}

impl std::fmt::Debug for NewHome<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewHome")
            .field("home", &self.home)
            .field("server", &self.server)
            .field("passphrase", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// A registered account: the client, and the recovery key to show the user once.
pub struct Registered {
    /// The new device's client.
    pub client: Client,
    /// The recovery key (secret): the only way back in if every device is lost.
    pub recovery_key: Zeroizing<String>,
    /// The operator key accepted, if the account is managed (hex).
    pub operator_key: Option<String>,
}

/// The directory keys a server announces, as pinned.
fn kt_keys(keys: &Option<proto::KtKeys>) -> Option<(Vec<u8>, Vec<u8>)> {
    keys.as_ref().map(|k| (k.signing_key.0.clone(), k.vrf_key.0.clone()))
}

/// Whether a home keeps its database key in the OS keyring.
#[derive(Debug, Clone, Serialize)]
pub struct KeyringStatus {
    /// The home opens from the keyring when the keyring holds its key.
    pub enabled: bool,
    /// The keyring holds the key now (after a reboot it does not, until the passphrase is
    /// given once).
    pub holds_key: bool,
    /// Which keyring, or why there is none.
    pub keyring: String,
}

/// The account a home holds.
#[derive(Debug, Clone, Serialize)]
pub struct AccountInfo {
    /// The address.
    pub address: String,
    /// This device's id.
    pub device_id: u64,
    /// The server URL.
    pub server: String,
    /// This device's public key (hex).
    pub device_key: String,
    /// The account's identity key (hex), which signs its device list.
    pub identity_key: String,
    /// For a managed account, the operator key it accepted (hex): its holder may revoke and
    /// wipe the account's devices.
    pub operator_key: Option<String>,
}

impl std::fmt::Debug for RegisterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterOptions")
            .field("invite", &self.invite.as_ref().map(|_| "[redacted]"))
            .field("ca_cert", &self.ca_cert)
            .field("device_name", &self.device_name)
            .field("managed", &self.managed)
            .field("passphrase", &"[redacted]")
            .finish()
    }
}

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registered")
            .field("client", &self.client)
            .field("recovery_key", &"[redacted]")
            .field("operator_key", &self.operator_key)
            .finish()
    }
}

/// Where to send a message.
#[derive(Debug, Clone)]
pub enum Target {
    /// The direct chat with this account (created on first use).
    Address(Address),
    /// A chat by id, id prefix or group name.
    Chat(String),
}

/// What processing a batch of messages left to do.
#[derive(Debug, Default)]
struct Touched {
    /// Groups that received proposals.
    proposals: BTreeSet<Vec<u8>>,
    /// Whether a welcome consumed a key package.
    joined: bool,
    /// Groups joined: their members are checked against their accounts' device lists.
    joined_groups: BTreeSet<Vec<u8>>,
    /// Groups where the server dropped revoked recipients: prune them.
    dropped: BTreeSet<Vec<u8>>,
}

/// A row of the chats table.
struct ChatRow {
    kind: String,
    name: Option<String>,
    peer: Option<String>,
    state: String,
}

/// One device's client.
pub struct Client {
    home: PathBuf,
    conn: Connection,
    account: AccountRow,
    me: Identity,
    identity: IdentityKey,
    api: Api,
    touched: std::cell::RefCell<Touched>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("home", &self.home)
            .field("device", &self.me.device)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn begin(conn: &Connection) -> Result<Transaction<'_>, Error> {
    Ok(Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?)
}

fn random_hex(n: usize) -> Result<String, Error> {
    Ok(hex::encode(sotto_core::random_bytes(n)?))
}

impl Client {
    /// Creates an account on `server`: a new identity key and recovery key, this home's device
    /// key, version 1 of the signed device list; then publishes key packages.
    pub fn register(
        home: &Path,
        server: &str,
        address: &str,
        options: &RegisterOptions,
    ) -> Result<Registered, Error> {
        let (address, api, info) =
            Self::prepare_home(home, server, address, options.ca_cert.as_deref())?;
        let operator_key = match (options.managed, info.operator_key.clone()) {
            (false, _) => None,
            (true, Some(k)) if k.0.len() == 32 => Some(k.0),
            (true, _) => {
                return Err(Error::Invalid(format!(
                    "{} has no operator key; an unmanaged account needs no --managed",
                    api.base()
                )));
            }
        };
        let identity = IdentityKey::generate()?;
        let recovery = RecoveryKey::generate()?;
        let key = DeviceKey::generate()?;
        let now = unix_now();
        let name = options.device_name.as_deref().map(|n| identity.seal_name(n)).transpose()?;
        let list = DeviceList::first(
            address.clone(),
            &identity,
            recovery.public(),
            operator_key.clone(),
            ListedDevice { key: key.public().to_vec(), added_at: now, name },
            now,
        );
        let signed = list.sign(&identity);
        let signature = key.sign(&auth::registration_payload(&address, key.public()))?;
        let reg: proto::RegisterResponse = api.post(
            "/v1/register",
            &proto::RegisterRequest {
                address: address.to_string(),
                invite: options.invite.clone(),
                device_key: Bytes(key.public().to_vec()),
                signature: Bytes(signature),
                device_list: devices::to_proto(&signed),
            },
            None,
        )?;
        let client = Self::create_home(
            home,
            api,
            Identity { device: DeviceRef { address, device_id: reg.device_id }, key },
            identity,
            (&signed, list.version),
            kt_keys(&info.kt),
            &options.passphrase,
        )?;
        Ok(Registered {
            client,
            recovery_key: recovery.to_text(),
            operator_key: operator_key.map(hex::encode),
        })
    }

    /// Checks that `home` is free and that `server` hosts `address`.
    fn prepare_home(
        home: &Path,
        server: &str,
        address: &str,
        ca_cert: Option<&str>,
    ) -> Result<(Address, Api, proto::ServerInfo), Error> {
        if db::exists(home) || vault::exists(home) {
            return Err(Error::AlreadyRegistered(home.display().to_string()));
        }
        let address: Address = address.parse()?;
        let api = Api::new(server, ca_cert)?;
        let info: proto::ServerInfo = api.get("/v1/info", None)?;
        if info.domain != address.domain() {
            return Err(Error::Invalid(format!(
                "{} hosts @{} addresses; {address} belongs elsewhere",
                api.base(),
                info.domain
            )));
        }
        Ok((address, api, info))
    }

    /// Writes a new home for a device the server now knows, and publishes key packages.
    fn create_home(
        home: &Path,
        api: Api,
        me: Identity,
        identity: IdentityKey,
        (list, version): (&sotto_core::account::SignedList, u64),
        kt_keys: Option<(Vec<u8>, Vec<u8>)>,
        passphrase: &str,
    ) -> Result<Client, Error> {
        let key = vault::create(home, passphrase)?;
        let conn = db::open(home, true, &key)?;
        let account = AccountRow {
            address: me.device.address.to_string(),
            device_id: me.device.device_id,
            server: api.base().to_string(),
            ca_cert: api.ca_path().map(str::to_owned),
            device_key: me.key.public().to_vec(),
            identity_secret: Some(identity.secret()),
            linked_at: unix_now(),
            kt_keys,
            kt_since: 0,
        };
        {
            let tx = begin(&conn)?;
            me.key.store(&db::provider(&tx))?;
            db::insert_account(&tx, &account)?;
            db::pin_list(&tx, &account.address, version, list)?;
            tx.commit()?;
        }
        let mut client = Client::assemble(home, conn, account, me, identity, api);
        // The directory must already show this device's list; from this epoch on, every
        // value for this address must carry this identity key.
        let me = client.me.device.address.clone();
        client.verified_list(&me)?;
        client.account.kt_since = client.kt_epoch()?;
        client.conn.execute(
            "UPDATE account SET kt_since = ?1 WHERE id = 1",
            [client.account.kt_since as i64],
        )?;
        client.replenish_key_packages()?;
        Ok(client)
    }

    fn assemble(
        home: &Path,
        conn: Connection,
        account: AccountRow,
        me: Identity,
        identity: IdentityKey,
        api: Api,
    ) -> Client {
        Client {
            home: home.to_path_buf(),
            conn,
            account,
            me,
            identity,
            api,
            touched: Default::default(),
        }
    }

    /// Opens the account in `home`, unlocking its database with `passphrase`. A home that
    /// keeps its key in the OS keyring and whose keyring lost it (a reboot) gets it back.
    pub fn open(home: &Path, passphrase: &str) -> Result<Client, Error> {
        Client::refuse_unencrypted(home)?;
        let key = vault::unlock(home, passphrase)?;
        if let Ok(store) = keyring::system() {
            // A convenience only (and nothing for a home that does not use the keyring): the
            // home is open either way.
            let _ = vault::keyring_refill(home, &key, &*store);
        }
        Client::open_with(home, &key)
    }

    /// Opens the account in `home` with the database key the OS keyring holds for it
    /// (`sotto keyring enable`). `None` if the home does not use the keyring, or the keyring
    /// cannot be reached or no longer holds the key: open it with the passphrase then.
    pub fn open_from_keyring(home: &Path) -> Result<Option<Client>, Error> {
        Client::refuse_unencrypted(home)?;
        if !vault::exists(home) {
            return Err(Error::NotRegistered(home.display().to_string()));
        }
        let Ok(store) = keyring::system() else { return Ok(None) };
        match vault::keyring_unlock(home, &*store) {
            Ok(Some(key)) => Client::open_with(home, &key).map(Some),
            Ok(None) | Err(Error::Keyring(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Keeps `home`'s database key in the OS keyring too, so that it opens without the
    /// passphrase (which keeps working). Returns the home's keyring status.
    pub fn enable_keyring(home: &Path, passphrase: &str) -> Result<KeyringStatus, Error> {
        let store = keyring::system()?;
        vault::keyring_enable(home, passphrase, &*store)?;
        Client::keyring_status(home)
    }

    /// Deletes `home`'s key from the OS keyring: the passphrase is needed again. Returns
    /// whether the home used the keyring.
    pub fn disable_keyring(home: &Path) -> Result<bool, Error> {
        let store = keyring::system().ok();
        vault::keyring_disable(home, store.as_deref())
    }

    /// Whether `home` uses the OS keyring, and whether the keyring holds its key now.
    pub fn keyring_status(home: &Path) -> Result<KeyringStatus, Error> {
        let store = keyring::system();
        let (enabled, holds_key) = vault::keyring_state(home, store.as_deref().ok())?;
        Ok(KeyringStatus {
            enabled,
            holds_key,
            keyring: match &store {
                Ok(s) => s.name().to_string(),
                Err(e) => e.to_string(),
            },
        })
    }

    fn refuse_unencrypted(home: &Path) -> Result<(), Error> {
        if db::exists(home) && !vault::exists(home) {
            return Err(Error::Invalid(format!(
                "{} was made by an older sotto that did not encrypt it; register a new home",
                home.display()
            )));
        }
        Ok(())
    }

    fn open_with(home: &Path, key: &vault::HomeKey) -> Result<Client, Error> {
        let conn = db::open(home, false, key)?;
        let account =
            db::account(&conn)?.ok_or_else(|| Error::NotRegistered(home.display().to_string()))?;
        let key = DeviceKey::load(&db::provider(&conn), &account.device_key)
            .ok_or(Error::Io("the device key is missing from the local database".into()))?;
        let identity = match &account.identity_secret {
            Some(secret) => IdentityKey::from_secret(secret)?,
            None => {
                return Err(Error::Invalid(format!(
                    "{} holds an account made before identity keys; register a new one",
                    home.display()
                )));
            }
        };
        let address: Address = account.address.parse()?;
        let me = Identity { device: DeviceRef { address, device_id: account.device_id }, key };
        let api = Api::new(&account.server, account.ca_cert.as_deref())?;
        let client = Client::assemble(home, conn, account, me, identity, api);
        client.purge_expired()?;
        Ok(client)
    }

    /// The account this home holds.
    pub fn account(&self) -> AccountInfo {
        AccountInfo {
            address: self.account.address.clone(),
            device_id: self.account.device_id,
            server: self.account.server.clone(),
            device_key: hex::encode(&self.account.device_key),
            identity_key: hex::encode(self.identity.public()),
            operator_key: self.operator_key().map(hex::encode),
        }
    }

    fn token(&mut self) -> Result<String, Error> {
        let domain = self.me.device.address.domain().to_string();
        self.api.token(&domain, self.me.device.device_id, &self.me.key)
    }

    fn replenish_key_packages(&mut self) -> Result<(), Error> {
        let token = self.token()?;
        let stock: proto::KeyPackageCount = self.api.get("/v1/keypackages", Some(&token))?;
        if stock.remaining >= KEY_PACKAGE_LOW_WATER && stock.last_resort {
            return Ok(());
        }
        let (one_time, last_resort) = {
            let tx = begin(&self.conn)?;
            let p = db::provider(&tx);
            let one_time = if stock.remaining < KEY_PACKAGE_LOW_WATER {
                mls::key_packages(&p, &self.me, KEY_PACKAGE_BATCH, false)?
            } else {
                Vec::new()
            };
            let last_resort = if stock.last_resort {
                None
            } else {
                mls::key_packages(&p, &self.me, 1, true)?.pop()
            };
            tx.commit()?;
            (one_time, last_resort)
        };
        let _: proto::KeyPackageCount = self.api.post(
            "/v1/keypackages",
            &proto::UploadKeyPackages {
                key_packages: one_time.into_iter().map(Bytes).collect(),
                last_resort: last_resort.map(Bytes),
            },
            Some(&token),
        )?;
        Ok(())
    }

    /// Claims and validates one key package per device of `address` (only `only`, if given).
    /// Every key package must belong to a device in the account's signed device list.
    fn claim(
        &mut self,
        address: &Address,
        only: Option<Vec<u64>>,
    ) -> Result<Vec<ValidKeyPackage>, Error> {
        let list = self.verified_list(address)?.0;
        self.claim_listed(address, only, &list)
    }

    /// [`Client::claim`] against a device list verified already.
    fn claim_listed(
        &mut self,
        address: &Address,
        only: Option<Vec<u64>>,
        list: &DeviceList,
    ) -> Result<Vec<ValidKeyPackage>, Error> {
        self.require_verified_key(address, &list.identity_key)?;
        let token = self.token()?;
        let claimed: proto::ClaimResponse = self.api.post(
            "/v1/keypackages/claim",
            &proto::ClaimRequest { address: address.to_string(), device_ids: only },
            Some(&token),
        )?;
        let p = db::provider(&self.conn);
        let packages: Vec<ValidKeyPackage> = claimed
            .key_packages
            .iter()
            .filter(|c| {
                !(address == &self.me.device.address && c.device_id == self.me.device.device_id)
            })
            .map(|c| {
                // What the server hands out and fails verification is the server's doing.
                mls::validate_key_package(&p, &c.key_package.0, address, Some(c.device_id)).map_err(
                    |e| {
                        Error::Untrusted(format!("the server offered a bad key for {address}: {e}"))
                    },
                )
            })
            .collect::<Result<_, _>>()?;
        if let Some(k) = packages.iter().find(|k| !list.lists(k.signature_key())) {
            return Err(Error::Untrusted(format!(
                "the server offered a key for {}, a device that is not in {address}'s signed \
                 device list; refusing to encrypt to it",
                k.device
            )));
        }
        if packages.is_empty() && address != &self.me.device.address {
            return Err(Error::NoKeyPackages(address.to_string()));
        }
        Ok(packages)
    }

    fn parse_addresses(&self, list: &[String]) -> Result<Vec<Address>, Error> {
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

    // ---- chats ----

    fn chat_row(&self, group_id: &[u8]) -> Result<ChatRow, Error> {
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
    fn resolve(&self, spec: &str) -> Result<Vec<u8>, Error> {
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
    /// on the one with the smallest id.
    ///
    /// A chat whose only devices of `peer` are no longer in its signed device list (the peer
    /// recovered the account on a new device) is passed over for one that reaches it.
    fn direct_chat(&self, peer: &Address) -> Result<Option<Vec<u8>>, Error> {
        let candidates: Vec<Vec<u8>> = {
            let mut stmt = self.conn.prepare(
                "SELECT group_id FROM chats WHERE kind = 'direct' AND peer = ?1 AND state = 'active'
                 ORDER BY group_id",
            )?;
            let rows = stmt.query_map([peer.as_str()], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
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

    fn require_active(&self, group_id: &[u8]) -> Result<(), Error> {
        match self.chat_row(group_id)?.state {
            state if state == "active" => Ok(()),
            state => Err(Error::NotActive(state)),
        }
    }

    /// All chats, most recently active first; one entry per direct correspondent.
    pub fn chats(&self) -> Result<Vec<ChatSummary>, Error> {
        let rows: Vec<(Vec<u8>, Option<String>)> = {
            let mut stmt = self.conn.prepare(
                "SELECT c.group_id, CASE WHEN c.kind = 'direct' THEN c.peer END FROM chats c
                 ORDER BY COALESCE((SELECT MAX(m.id) FROM messages m WHERE m.group_id = c.group_id), 0) DESC,
                          c.created_at DESC",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut peers = BTreeSet::new();
        let mut out = Vec::new();
        for (id, peer) in rows {
            let id = match peer {
                Some(p) if !peers.insert(p.clone()) => continue,
                // The chat messages to this account go to, if there is an active one.
                Some(p) => self.direct_chat(&p.parse()?)?.unwrap_or(id),
                None => id,
            };
            out.push(self.chat_summary(&id)?);
        }
        Ok(out)
    }

    fn chat_summary(&self, group_id: &[u8]) -> Result<ChatSummary, Error> {
        let ChatRow { kind, name, peer, state } = self.chat_row(group_id)?;
        let members = if state == "active" {
            let p = db::provider(&self.conn);
            let set: BTreeSet<String> =
                mls::members(&p, group_id)?.into_iter().map(|d| d.address.to_string()).collect();
            set.into_iter().collect()
        } else {
            Vec::new()
        };
        let (messages, last): (i64, Option<i64>) = self.conn.query_row(
            "SELECT COUNT(*), MAX(m.sent_at) FROM messages m JOIN chats c ON c.group_id = m.group_id
             WHERE m.kind = 'text' AND (m.group_id = ?1 OR (?2 IS NOT NULL AND c.kind = 'direct' AND c.peer = ?2))",
            params![group_id, if kind == "direct" { peer.as_deref() } else { None }],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let timer: i64 = self.conn.query_row(
            "SELECT timer_secs FROM chats WHERE group_id = ?1",
            [group_id],
            |r| r.get(0),
        )?;
        Ok(ChatSummary {
            timer_secs: timer as u64,
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

    /// The messages of a chat, oldest first; at most the last `limit`.
    ///
    /// A direct chat's history covers every direct chat with the same account: when both sides
    /// start one at the same moment there are two MLS groups, but one conversation.
    pub fn history(&self, chat: &str, limit: usize) -> Result<Vec<MessageView>, Error> {
        let group_id = self.resolve(chat)?;
        let row = self.chat_row(&group_id)?;
        let mut views = match (row.kind.as_str(), row.peer) {
            ("direct", Some(peer)) => self.message_views(
                "WHERE c.kind = 'direct' AND c.peer = ?1 ORDER BY m.id DESC LIMIT ?2",
                params![peer, limit as i64],
            )?,
            _ => self.message_views(
                "WHERE m.group_id = ?1 ORDER BY m.id DESC LIMIT ?2",
                params![group_id, limit as i64],
            )?,
        };
        views.reverse();
        Ok(views)
    }

    fn message_views(
        &self,
        filter: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<MessageView>, Error> {
        let sql = format!(
            "SELECT m.group_id, c.kind, c.name, c.peer, m.msg_id, m.sender, m.kind, m.body,
                    m.status, m.sent_at, m.received_at, m.attachment
             FROM messages m JOIN chats c ON c.group_id = m.group_id {filter}"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(args, |r| {
            let group_id: Vec<u8> = r.get(0)?;
            let kind: String = r.get(1)?;
            let name: Option<String> = r.get(2)?;
            let peer: Option<String> = r.get(3)?;
            let chat_name = match (kind.as_str(), peer, name) {
                ("direct", Some(p), _) => p,
                (_, _, Some(n)) => n,
                _ => "(unnamed group)".into(),
            };
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
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // ---- sending ----

    fn recipients(&self, p: &Provider<Storage<'_>>, group_id: &[u8]) -> Result<Vec<u64>, Error> {
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
    fn own_devices(&mut self) -> Result<Vec<ValidKeyPackage>, Error> {
        let me = self.me.device.address.clone();
        self.claim(&me, None)
    }

    /// The chat a target names; the direct chat with an address is created on first use.
    fn target_group(&mut self, target: &Target) -> Result<Vec<u8>, Error> {
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

    fn start_direct(&mut self, peer: &Address) -> Result<Vec<u8>, Error> {
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

    fn new_group(
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
            params![group_id, kind.as_str(), name, peer.map(Address::as_str), now_ms() as i64],
        )?;
        tx.commit()?;
        Ok(group_id)
    }

    /// Encrypts and submits an application message. The ratchet state is committed before
    /// the message leaves, so a lost answer can never make us reuse a key. If the group moved
    /// on meanwhile, the client catches up and encrypts again in the new epoch. The stored
    /// row is marked `failed` if the server did not take it.
    fn send_body(&mut self, group_id: &[u8], body: Body) -> Result<Option<MessageView>, Error> {
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
        let msg = Message { v: VERSION, id: random_hex(16)?, sent_at: now_ms(), expires_in, body };
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

    fn submit_application(&mut self, group_id: &[u8], msg: &Message) -> Result<(), Error> {
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

    /// Makes a commit with `make` and submits it; on a stale epoch rolls it back, catches up
    /// and tries again. `make` returns the commit and the devices that get its welcome.
    fn commit(
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
    fn commit_once(
        &mut self,
        group_id: &[u8],
        make: &mut impl FnMut(
            &Provider<Storage<'_>>,
            &Identity,
        ) -> Result<(CommitOutput, Vec<u64>), Error>,
    ) -> Result<bool, Error> {
        let token = self.token()?;
        // The transaction stays open across the submission: if the server refuses, dropping
        // it rolls the pending commit back as if it had never been made.
        let tx = begin(&self.conn)?;
        let p = db::provider(&tx);
        let recipients = self.recipients(&p, group_id)?;
        let (out, welcome_to) = make(&p, &self.me)?;
        let changes = mls::pending_changes(&p, group_id)?;
        let removed = changes.removed.iter().chain(&changes.left).map(|d| d.device_id).collect();
        let request = proto::SubmitRequest {
            submission_id: None,
            group_id: Bytes(group_id.to_vec()),
            kind: proto::SubmitKind::Commit,
            epoch: out.epoch,
            delivery: proto::Delivery { recipients, message: Bytes(out.commit) },
            welcome: out
                .welcome
                .filter(|_| !welcome_to.is_empty())
                .map(|w| proto::Delivery { recipients: welcome_to, message: Bytes(w) }),
            removed,
            expires_at: None,
        };
        match self.api.submit(request, &token) {
            Ok(resp) => {
                mls::merge_pending_commit(&p, group_id)?;
                // The committer sees what its commit did, as every other member does.
                let me = self.account.address.clone();
                let present = mls::members(&p, group_id)?;
                for (sender, text) in commit_events(&me, &me, &changes, &present, false) {
                    tx.execute(
                        "INSERT INTO messages (group_id, msg_id, sender, kind, body, status,
                                               sent_at, received_at, reported)
                         VALUES (?1, ?2, ?3, 'event', ?4, 'sent', ?5, ?5, 1)",
                        params![
                            group_id,
                            format!("event-{}", random_hex(8)?),
                            sender,
                            text,
                            now_ms() as i64
                        ],
                    )?;
                }
                tx.commit()?;
                if !resp.dropped.is_empty() {
                    self.touched.borrow_mut().dropped.insert(group_id.to_vec());
                }
                Ok(true)
            }
            Err(e) if e.is_stale_epoch() => Ok(false),
            Err(e) => Err(e),
        }
    }

    // ---- groups ----

    /// Creates a named group with the given members.
    pub fn create_group(&mut self, name: &str, members: &[String]) -> Result<ChatSummary, Error> {
        let name = name.trim();
        if name.is_empty() || name.len() > 256 {
            return Err(Error::Invalid("a group name is 1 to 256 bytes".into()));
        }
        let addresses = self.parse_addresses(members)?;
        let mut packages = self.own_devices()?;
        for a in &addresses {
            packages.extend(self.claim(a, None)?);
        }
        let group_id = self.new_group(ChatKind::Group, Some(name), None)?;
        if !packages.is_empty() {
            self.commit(&group_id, |p, me| {
                let out = mls::add_members(p, &group_id, me, &packages)?;
                Ok((out, packages.iter().map(|k| k.device.device_id).collect()))
            })?;
        }
        self.send_body(
            &group_id,
            Body::ChatInfo { kind: ChatKind::Group, name: Some(name.into()) },
        )?;
        self.chat_summary(&group_id)
    }

    fn group_info(&self, group_id: &[u8]) -> Result<Body, Error> {
        let ChatRow { kind, name, .. } = self.chat_row(group_id)?;
        let kind = if kind == "direct" { ChatKind::Direct } else { ChatKind::Group };
        Ok(Body::ChatInfo { kind, name })
    }

    /// Adds accounts to a group. They read messages sent from now on, not earlier ones.
    pub fn add_members(&mut self, chat: &str, members: &[String]) -> Result<ChatSummary, Error> {
        let group_id = self.resolve(chat)?;
        self.require_active(&group_id)?;
        let addresses = self.parse_addresses(members)?;
        let current: BTreeSet<Address> = mls::members(&db::provider(&self.conn), &group_id)?
            .into_iter()
            .map(|d| d.address)
            .collect();
        if let Some(a) = addresses.iter().find(|a| current.contains(*a)) {
            return Err(Error::Invalid(format!("{a} is already a member")));
        }
        let mut packages = Vec::new();
        for a in &addresses {
            packages.extend(self.claim(a, None)?);
        }
        self.commit(&group_id, |p, me| {
            let out = mls::add_members(p, &group_id, me, &packages)?;
            Ok((out, packages.iter().map(|k| k.device.device_id).collect()))
        })?;
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
        self.conn.execute(
            "INSERT INTO messages (group_id, msg_id, sender, kind, body, status, sent_at,
                                   received_at, reported)
             VALUES (?1, ?2, ?3, 'event', ?4, 'sent', ?5, ?5, 1)",
            params![
                group_id,
                format!("event-{}", random_hex(8)?),
                me,
                timer_event(&me, seconds),
                now_ms() as i64
            ],
        )?;
        self.chat_summary(&group_id)
    }

    /// Deletes every message whose disappearing-message time has come.
    fn purge_expired(&self) -> Result<usize, Error> {
        Ok(self.conn.execute(
            "DELETE FROM messages WHERE expires_at IS NOT NULL AND expires_at <= ?1",
            [now_ms() as i64],
        )?)
    }

    /// Removes accounts from a group; they cannot read anything sent afterwards.
    pub fn remove_members(&mut self, chat: &str, members: &[String]) -> Result<ChatSummary, Error> {
        let group_id = self.resolve(chat)?;
        self.require_active(&group_id)?;
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
            let recipients = self.recipients(&p, &group_id)?;
            let (epoch, proposal) = mls::leave(&p, &group_id, &self.me)?;
            let request = proto::SubmitRequest {
                submission_id: None,
                group_id: Bytes(group_id.clone()),
                kind: proto::SubmitKind::Proposal,
                epoch,
                delivery: proto::Delivery { recipients, message: Bytes(proposal) },
                welcome: None,
                removed: Vec::new(),
                expires_at: None,
            };
            match self.api.submit(request, &token) {
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

    // ---- receiving ----

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
        self.finish_batch(processed, true)
    }

    /// After processing: commits pending proposals and tops up key packages — everywhere if
    /// `thorough`, else only where the batch made it necessary — and collects what is new.
    fn finish_batch(&mut self, processed: u64, thorough: bool) -> Result<SyncReport, Error> {
        let touched = self.touched.take();
        for group_id in &touched.joined_groups {
            self.check_members(group_id)?;
        }
        self.touched.borrow_mut().dropped.extend(touched.dropped);
        self.prune_revoked()?;
        let groups = if thorough { self.active_chats()? } else { touched.proposals };
        self.commit_proposals(groups)?;
        if thorough || touched.joined {
            self.replenish_key_packages()?;
        }
        self.purge_expired()?;
        let mut report = self.unreported()?;
        report.processed = processed;
        Ok(report)
    }

    fn active_chats(&self) -> Result<BTreeSet<Vec<u8>>, Error> {
        let mut stmt = self.conn.prepare("SELECT group_id FROM chats WHERE state = 'active'")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Processes the whole queue; returns how many messages it processed.
    fn catch_up(&mut self) -> Result<u64, Error> {
        let mut processed = 0;
        let processed_up_to = db::last_seq(&self.conn)?;
        if processed_up_to > db::last_acked(&self.conn)? {
            // Messages processed before a crash or a lost connection, never acknowledged.
            self.ack(processed_up_to)?;
        }
        loop {
            let token = self.token()?;
            let after = db::last_seq(&self.conn)?;
            let page: proto::QueueResponse = self
                .api
                .get(&format!("/v1/queue?after={after}&limit={SYNC_PAGE}"), Some(&token))?;
            for m in &page.messages {
                self.process_one(m.seq, &m.message.0)?;
                processed += 1;
            }
            if let Some(last) = page.messages.last() {
                self.ack(last.seq)?;
            }
            if !page.more || page.messages.is_empty() {
                return Ok(processed);
            }
        }
    }

    /// Tells the server to drop what was processed. A server whose storage is full cannot
    /// delete either; the messages are safe here, so that is no failure: the next sync
    /// acknowledges them again.
    fn ack(&mut self, up_to: u64) -> Result<(), Error> {
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

    /// Processes one queued message in one transaction with the new sync position.
    fn process_one(&self, seq: u64, data: &[u8]) -> Result<(), Error> {
        let tx = begin(&self.conn)?;
        if seq <= db::last_seq(&tx)? {
            return Ok(());
        }
        let outcome = mls::process(&db::provider(&tx), data);
        match outcome {
            Ok(incoming) => self.apply(&tx, seq, incoming)?,
            Err(e) => {
                // Roll back whatever processing wrote, then record the failure alone.
                drop(tx);
                let tx = begin(&self.conn)?;
                if !self.expected_failure(&tx, data)? {
                    record_failure(&tx, seq, &e.to_string())?;
                }
                db::set_last_seq(&tx, seq)?;
                tx.commit()?;
                return Ok(());
            }
        }
        db::set_last_seq(&tx, seq)?;
        tx.commit()?;
        Ok(())
    }

    /// Whether a message that failed to process belongs to a chat this device has left, where
    /// failing is expected.
    fn expected_failure(&self, tx: &Transaction<'_>, data: &[u8]) -> Result<bool, Error> {
        let Ok(Some(group_id)) = mls::group_of(data) else { return Ok(false) };
        let state: Option<String> = tx
            .query_row("SELECT state FROM chats WHERE group_id = ?1", [group_id], |r| r.get(0))
            .optional()?;
        Ok(matches!(state.as_deref(), Some("left" | "removed")))
    }

    fn apply(&self, tx: &Transaction<'_>, seq: u64, incoming: Incoming) -> Result<(), Error> {
        let now = now_ms() as i64;
        let event = |group_id: &[u8], n: usize, sender: &str, body: String| {
            tx.execute(
                "INSERT OR IGNORE INTO messages (group_id, msg_id, sender, kind, body, status,
                                                 sent_at, received_at)
                 VALUES (?1, ?2, ?3, 'event', ?4, 'received', ?5, ?5)",
                params![group_id, format!("event-{seq}-{n}"), sender, body, now],
            )
        };
        match incoming {
            Incoming::Joined { group_id, inviter } => {
                // Joining consumed one of this device's key packages.
                self.touched.borrow_mut().joined = true;
                self.touched.borrow_mut().joined_groups.insert(group_id.clone());
                tx.execute(
                    "INSERT INTO chats (group_id, kind, state, created_at)
                     VALUES (?1, 'group', 'active', ?2)
                     ON CONFLICT (group_id) DO UPDATE SET state = 'active'",
                    params![group_id, now],
                )?;
                let who =
                    inviter.map(|d| d.address.to_string()).unwrap_or_else(|| "someone".into());
                if who == self.account.address {
                    event(&group_id, 0, &who, "this device joined the chat".into())?;
                } else {
                    event(&group_id, 0, &who, format!("{who} added you"))?;
                }
            }
            Incoming::Application { group_id, sender, plaintext } => {
                match Message::decode(&plaintext) {
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
                            Body::Text { text } => ("text", text.clone(), None),
                            _ => ("text", String::new(), None),
                        };
                        // Sent by another device of this account: it is ours, and sent.
                        let status = if sender.address == self.me.device.address {
                            "sent"
                        } else {
                            "received"
                        };
                        // A disappearing message lives from when it was sent (or arrived, if
                        // the sender's clock runs ahead).
                        let expires_at = expires_in
                            .map(|s| (sent_at as i64).min(now).saturating_add((s * 1000) as i64));
                        tx.execute(
                            "INSERT OR IGNORE INTO messages (group_id, msg_id, sender, kind, body,
                                                             status, sent_at, received_at,
                                                             expires_at, attachment)
                             VALUES (?1, ?2, ?3, ?9, ?4, ?7, ?5, ?6, ?8, ?10)",
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
                                attachment
                            ],
                        )?;
                    }
                    Ok(Message { body: Body::Timer { seconds }, .. }) => {
                        tx.execute(
                            "UPDATE chats SET timer_secs = ?1 WHERE group_id = ?2",
                            params![seconds as i64, group_id],
                        )?;
                        let who = sender.address.to_string();
                        event(&group_id, 0, &who, timer_event(&who, seconds))?;
                    }
                    Ok(Message { body: Body::ChatInfo { kind, name }, .. }) => {
                        // A chat is shown as direct only while it really holds two accounts:
                        // otherwise a third party could listen in on what looks like a 1:1 chat.
                        let peer = match kind {
                            ChatKind::Direct => self.direct_peer(tx, &group_id)?,
                            ChatKind::Group => None,
                        };
                        let kind = if peer.is_some() { ChatKind::Direct } else { ChatKind::Group };
                        tx.execute(
                            "UPDATE chats SET kind = ?1, name = ?2, peer = ?3 WHERE group_id = ?4",
                            params![kind.as_str(), name, peer, group_id],
                        )?;
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
                let changes = mls::Changes { added, removed, left };
                let events =
                    commit_events(&who, &self.account.address, &changes, &present, self_removed);
                let mut n = 0;
                for (sender, text) in events {
                    event(&group_id, n, &sender, text)?;
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
    fn direct_peer(&self, tx: &Transaction<'_>, group_id: &[u8]) -> Result<Option<String>, Error> {
        let accounts: BTreeSet<Address> =
            mls::members(&db::provider(tx), group_id)?.into_iter().map(|d| d.address).collect();
        let mut others = accounts.iter().filter(|a| *a != &self.me.device.address);
        Ok(match (others.next(), others.next(), accounts.contains(&self.me.device.address)) {
            (Some(peer), None, true) => Some(peer.to_string()),
            _ => None,
        })
    }

    /// Commits pending proposals (members leaving) in those of `groups` that have them. A
    /// lost race is fine: the winner's commit covers the same proposals.
    fn commit_proposals(&mut self, groups: BTreeSet<Vec<u8>>) -> Result<(), Error> {
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

    fn unreported(&self) -> Result<SyncReport, Error> {
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
        Ok(SyncReport { messages, failures, processed: 0, notices })
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Protects `home`'s database key with a new passphrase. Only the wrapped key is
    /// rewritten; a wrong `old` passphrase changes nothing.
    pub fn change_passphrase(home: &Path, old: &str, new: &str) -> Result<(), Error> {
        vault::change(home, old, new)
    }
}

/// What a stored attachment reference shows.
fn file_info(attachment: &str) -> Option<FileInfo> {
    match serde_json::from_str::<Body>(attachment).ok()? {
        Body::File { name, size, media_type, .. } => Some(FileInfo { name, size, media_type }),
        _ => None,
    }
}

/// The events a commit shows in its chat, as (sender, text): whom `who` added and removed,
/// devices linked and removed by accounts that stay, and who left. A removal of this device
/// itself (`self_removed`) is told separately.
fn commit_events(
    who: &str,
    me: &str,
    changes: &mls::Changes,
    present: &[DeviceRef],
    self_removed: bool,
) -> Vec<(String, String)> {
    let accounts = |devices: &[DeviceRef]| -> BTreeSet<String> {
        devices.iter().map(|d| d.address.to_string()).collect()
    };
    // An account that keeps other devices in the chat changed its device list.
    let keeps_others = |a: &str, changed: &[DeviceRef]| {
        present.iter().any(|d| d.address.as_str() == a && !changed.contains(d))
    };
    let mut events = Vec::new();
    for a in accounts(&changes.added) {
        let text = if keeps_others(&a, &changes.added) {
            format!("{a} linked a new device")
        } else {
            format!("{who} added {a}")
        };
        events.push((who.to_string(), text));
    }
    for a in accounts(&changes.removed).into_iter().filter(|a| !(a == me && self_removed)) {
        let text = if keeps_others(&a, &changes.removed) {
            format!("{a} removed a device")
        } else {
            format!("{who} removed {a}")
        };
        events.push((who.to_string(), text));
    }
    for a in accounts(&changes.left).into_iter().filter(|a| a != me) {
        events.push((a.clone(), format!("{a} left")));
    }
    events
}

/// How a timer change reads in a chat.
fn timer_event(who: &str, seconds: u64) -> String {
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

fn record_failure(tx: &Transaction<'_>, seq: u64, reason: &str) -> Result<(), Error> {
    tx.execute(
        "INSERT OR REPLACE INTO failures (seq, reason, at, reported) VALUES (?1, ?2, ?3, 0)",
        params![seq as i64, reason, now_ms() as i64],
    )?;
    Ok(())
}
