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
mod chats;
mod conversation;
mod db;
mod devices;
pub mod engine;
mod error;
mod export;
mod files;
mod groups;
mod heal;
mod home;
pub mod http;
mod keypackages;
mod keyring;
mod kt;
mod live;
mod outbox;
mod receive;
mod reference;
mod send;
pub mod transport;
mod vault;
mod verify;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, Transaction, TransactionBehavior};
use serde::{Deserialize, Serialize};
use sotto_core::Address;
use sotto_core::account::IdentityKey;
use sotto_core::mls::Identity;
use sotto_proto as proto;
use zeroize::Zeroizing;

use crate::api::Api;
pub use crate::conversation::{ChatFlag, Contact, ReceiptSettings};
use crate::db::AccountRow;
pub use crate::devices::{DeviceView, LinkOutcome, LinkedDevice};
pub use crate::error::Error;

/// Whether a server error code says this device's account is refused service (suspended,
/// expired or deleted by the operator): the device keeps its data, unless a wipe was ordered
/// for it ([`Client::obey_wipe_or`]).
pub fn account_barred(code: &str) -> bool {
    matches!(code, "account_suspended" | "account_expired" | "account_deleted")
}
pub use crate::export::{EXPORT_WARNING, ExportFormat, ExportReport, format_time};
pub use crate::files::Downloaded;
pub use crate::heal::{DEFAULT_HEAL_INTERVAL_SECS, HealReport};
pub use crate::kt::{AuditReport, audit, load_audit_state, save_audit_state};
pub use crate::verify::SafetyView;

/// One-time key packages uploaded at a time.
const KEY_PACKAGE_BATCH: usize = 50;
/// Upload more when fewer than this remain on the server.
const KEY_PACKAGE_LOW_WATER: u64 = 10;
/// Most devices in a post-quantum chat. Its welcomes and commits carry an X-Wing key of about
/// 1.2 KB per member (X25519: 32 bytes); past this, adding one could outgrow what the server
/// takes in one request (2 MiB). Larger chats start classical.
const MAX_POST_QUANTUM_DEVICES: usize = 300;
/// Attempts at a commit that keeps losing the race for an epoch.
const MAX_COMMIT_ATTEMPTS: usize = 8;
/// Queue page size when catching up.
const SYNC_PAGE: u32 = 200;

/// A chat as listed by [`Client::chats`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatSummary {
    /// The chat id (the MLS group id, hex).
    pub id: String,
    /// `direct`, `group` or `note` (notes to self).
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
    /// Whether the chat's keys are agreed with X-Wing (post-quantum hybrid) rather than
    /// X25519 alone.
    pub post_quantum: bool,
    /// What to call it: a contact's nickname or address, a group's name, "Notes".
    #[serde(default)]
    pub title: String,
    /// Messages from others not yet read here.
    #[serde(default)]
    pub unread: u64,
    /// Muted: no notification for it.
    #[serde(default)]
    pub muted: bool,
    /// Pinned: listed first.
    #[serde(default)]
    pub pinned: bool,
    /// Archived: listed only with `--all` (a new message from others brings it back unless
    /// it is muted).
    #[serde(default)]
    pub archived: bool,
    /// The start of the last text (or file name), for a chat list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<String>,
}

/// The message a reply answers, as the reply quotes it. `Debug` leaves the text out.
#[derive(Clone, Serialize, Deserialize)]
pub struct Quote {
    /// Its id.
    pub id: String,
    /// Its sender, when this device has the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// The start of its text (or a file's name); none if it is unknown here or deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl std::fmt::Debug for Quote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quote")
            .field("id", &self.id)
            .field("sender", &self.sender)
            .field("text", &self.text.as_ref().map(|t| format!("[{} bytes]", t.len())))
            .finish()
    }
}

/// One account's reaction to a message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReactionView {
    /// The account.
    pub from: String,
    /// The emoji.
    pub emoji: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A message or event as shown to the user. `Debug` leaves the body out.
#[derive(Clone, Serialize, Deserialize)]
pub struct MessageView {
    /// The chat id.
    pub chat: String,
    /// What to call the chat: the peer of a direct chat, a group's name.
    pub chat_name: String,
    /// The message id chosen by its sender (events: `event-…`).
    pub id: String,
    /// The sending account.
    pub sender: String,
    /// `text`, `file`, `event` for membership changes and other chat events, `mark` for an
    /// account's change told once as a notice and quietly in each chat, `unsupported` for a
    /// kind of message a newer Sotto sent.
    pub kind: String,
    /// The text (a file's name; empty once deleted).
    pub body: String,
    /// `received`; for this account's own messages `pending`, `sent`, `failed`, then
    /// `delivered` once every other member account received it and `read` once every one
    /// read it (those that send read receipts).
    pub status: String,
    /// Why a message of this account is not sent yet, or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The sender's clock (Unix milliseconds).
    pub sent_at: u64,
    /// When this device stored it (Unix milliseconds).
    pub received_at: u64,
    /// For `file` messages: what the file is (`sotto download ID` fetches it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<FileInfo>,
    /// The sender's nickname here, if one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_name: Option<String>,
    /// The message this one answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<Quote>,
    /// Accounts the text mentions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<String>,
    /// Whether its sender edited it (`body` is the latest text).
    #[serde(default, skip_serializing_if = "is_false")]
    pub edited: bool,
    /// Whether its sender deleted it (only this tombstone is left).
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted: bool,
    /// Reactions, one per account.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<ReactionView>,
    /// This account's messages: the accounts whose devices received it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delivered_to: Vec<String>,
    /// This account's messages: the accounts that read it (those that send read receipts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_by: Vec<String>,
    /// Where it is stored (the order of arrival), for merging a conversation's chats.
    #[serde(skip)]
    row: i64,
}

/// A file a message carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    /// Its position in the server queue.
    pub seq: u64,
    /// Why (never the content).
    pub reason: String,
}

/// What [`Client::sync`] did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SyncReport {
    /// New messages and events, oldest first.
    pub messages: Vec<MessageView>,
    /// Messages that arrived and could not be processed.
    pub failures: Vec<Failure>,
    /// How many queued messages were processed.
    pub processed: u64,
    /// Account events: devices linked, revoked or wiped, keys changed, commands refused.
    pub notices: Vec<String>,
    /// This device's messages whose delivery state changed (sent, failed, still pending).
    pub updated: Vec<MessageView>,
    /// Chats (ids) where this device's keys were replaced (see `sotto heal`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub healed: Vec<String>,
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

/// The directory keys a server announces, if it announces well-formed ones (both 32 bytes).
fn kt_keys(keys: &Option<proto::KtKeys>) -> Option<(Vec<u8>, Vec<u8>)> {
    keys.as_ref()
        .filter(|k| k.signing_key.0.len() == 32 && k.vrf_key.0.len() == 32)
        .map(|k| (k.signing_key.0.clone(), k.vrf_key.0.clone()))
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
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
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
    /// Messages whose view changed (edits, deletions, reactions, receipts), to report.
    updated: Vec<(Vec<u8>, String)>,
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
    /// This device's queue key, once loaded (see [`Client::queue_key`]).
    queue_key: std::cell::OnceCell<sotto_core::queue::QueueKey>,
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
