//! The storage seam: the few primitive operations the server needs from a database.
//!
//! Every method is synchronous and atomic on its own; the server calls them from blocking
//! threads, never on the async executor. [`SqliteStore`] is the embedded default; a
//! PostgreSQL backend implements the same trait (the SQL is kept portable). The shared
//! conformance tests in `tests.rs` run against every backend.

mod sqlite;
#[cfg(test)]
pub(crate) mod tests;

pub use sotto_core::roster::GroupCredential;
pub use sqlite::SqliteStore;

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Its id.
    pub device_id: u64,
    /// The account it belongs to.
    pub address: String,
    /// Its Ed25519 public key.
    pub device_key: Vec<u8>,
    /// When it registered (Unix seconds).
    pub created_at: u64,
    /// When it was revoked.
    pub revoked_at: Option<u64>,
    /// When it last logged in.
    pub last_seen: Option<u64>,
}

/// An account as the operator's listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRecord {
    /// Its address.
    pub address: String,
    /// When it registered (Unix seconds).
    pub created_at: u64,
    /// Devices not revoked.
    pub devices: u64,
    /// Devices revoked (or wiped).
    pub revoked: u64,
    /// When one of its devices last logged in.
    pub last_seen: Option<u64>,
    /// When the operator suspended it, if it is suspended.
    pub suspended_at: Option<u64>,
    /// The end of its term, if it has one (it is then suspended after the grace period).
    pub valid_until: Option<u64>,
    /// When it was deleted: only the address is kept, so it cannot be taken again.
    pub deleted_at: Option<u64>,
}

/// What the store holds, read when metrics are scraped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreTotals {
    /// Accounts not deleted.
    pub accounts: u64,
    /// Accounts suspended.
    pub suspended: u64,
    /// Devices not revoked.
    pub devices: u64,
    /// Messages waiting in queues.
    pub queued_messages: u64,
    /// Bytes waiting in queues.
    pub queued_bytes: u64,
    /// Bytes of files kept.
    pub file_bytes: u64,
}

impl AccountRecord {
    /// Why the account's devices are refused service at `now`, if they are: deleted, then
    /// suspended, then a term that ended more than `grace` seconds ago (the same rule as
    /// [`Store::barred_devices`]).
    pub fn barred(&self, grace: u64, now: u64) -> Option<Barred> {
        if self.deleted_at.is_some() {
            Some(Barred::Deleted)
        } else if self.suspended_at.is_some() {
            Some(Barred::Suspended)
        } else {
            self.valid_until.filter(|end| end.saturating_add(grace) <= now).map(|_| Barred::Expired)
        }
    }
}

/// Why an account's devices are refused service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Barred {
    /// The operator suspended the account.
    Suspended,
    /// Its term and grace period ran out.
    Expired,
    /// The operator deleted it.
    Deleted,
}

/// A change the operator makes to an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountChange {
    /// Refuse its devices service until resumed; nothing is deleted.
    Suspend,
    /// Undo [`AccountChange::Suspend`].
    Resume,
    /// Set the end of its term (Unix seconds), or remove the term.
    Term(Option<u64>),
    /// Revoke its devices, delete its queues, key packages, files and device list; keep the
    /// address, marked deleted, and any wipe ordered for its devices.
    Delete,
}

/// One line of the operator's audit log: who did what to whom, when. Never message traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// When (Unix seconds).
    pub at: u64,
    /// Who: the operator's name as the command gave it, and how it reached the server.
    pub actor: String,
    /// What: `account.suspend`, `invite.create`, ...
    pub action: String,
    /// The account or invite it concerns.
    pub subject: String,
    /// Anything else worth keeping (a term's end, a reason).
    pub detail: String,
}

/// An invite not used up. Only the code's hash is kept: it names the invite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteRecord {
    /// SHA-256 of the code.
    pub code_hash: Vec<u8>,
    /// When it was minted (Unix seconds).
    pub created_at: u64,
    /// When it expires.
    pub expires_at: u64,
    /// Registrations it still allows.
    pub uses_left: u32,
    /// The term (seconds) of the accounts it registers, if they get one.
    pub valid_for: Option<u64>,
}

/// An account's signed device list and the keys the server checks against it. The server
/// verifies the signature before storing; the store only keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListRecord {
    /// The list's version.
    pub version: u64,
    /// The identity key that signs it.
    pub identity_key: Vec<u8>,
    /// The recovery key's public half.
    pub recovery_key: Vec<u8>,
    /// The operator key the account accepted, if any.
    pub operator_key: Option<Vec<u8>>,
    /// The list's JSON bytes.
    pub body: Vec<u8>,
    /// The identity key's signature.
    pub signature: Vec<u8>,
}

/// A new account with its first device.
#[derive(Debug, Clone)]
pub struct NewAccount<'a> {
    /// The normalised address.
    pub address: &'a str,
    /// The first device's public key.
    pub device_key: &'a [u8],
    /// SHA-256 of the invite code, or `None` in open registration.
    pub invite_hash: Option<&'a [u8]>,
    /// Version 1 of the device list.
    pub list: &'a ListRecord,
}

/// A signed object as stored: bytes and signature.
pub type SignedBlob = (Vec<u8>, Vec<u8>);

/// A wipe ordered for a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WipeRecord {
    /// The signed command.
    pub command: SignedBlob,
    /// The device's signed confirmation, once it obeyed.
    pub confirmation: Option<SignedBlob>,
}

/// An attachment's ciphertext, stored as a file beside the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRecord {
    /// Its random id.
    pub id: Vec<u8>,
    /// The uploading device.
    pub device: u64,
    /// The uploading account (quotas are per account).
    pub address: String,
    /// Its full size.
    pub size: u64,
    /// Bytes received so far (durably).
    pub received: u64,
    /// When the upload began.
    pub created_at: u64,
    /// When it is deleted.
    pub expires_at: u64,
    /// How long it lives once complete (seconds; the server's TTL caps it).
    pub lifetime: u64,
}

impl BlobRecord {
    /// The device of a group's file, made with the group's credential and no token: none.
    pub const GROUP_FILE_DEVICE: u64 = 0;
    /// What starts the owner of a group's file, followed by the group id in hex.
    pub const GROUP_OWNER_PREFIX: &'static str = "group:";

    /// Whether this is a group's file: kept under the group (its owner), naming no device.
    pub fn is_group_file(&self) -> bool {
        self.address.starts_with(Self::GROUP_OWNER_PREFIX)
    }
}

/// A device link in progress: sealed parts, opaque to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRecord {
    /// The new device's request.
    pub request: Vec<u8>,
    /// The approving device's response.
    pub response: Option<Vec<u8>>,
    /// The approving device's history.
    pub history: Option<Vec<u8>>,
}

/// How a submission is ordered against the group's epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordering {
    /// No ordering and no roster check: a plain relay into queues. The API never uses it.
    None,
    /// The group must not have moved past this epoch (an application message: members who
    /// joined since could not read it).
    NotBefore(u64),
    /// The group must be at this epoch, and stays there (a proposal).
    AtEpoch(u64),
    /// The group must be at this epoch, and moves to the next (a commit).
    Advance(u64),
}

/// Bounds on one device's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Most messages waiting.
    pub max_messages: u64,
    /// Most bytes waiting.
    pub max_bytes: u64,
}

impl QueueLimits {
    /// No bounds (tests).
    pub const UNLIMITED: QueueLimits = QueueLimits { max_messages: u64::MAX, max_bytes: u64::MAX };
}

/// A message for a group and an optional welcome, stored atomically.
#[derive(Debug, Clone)]
pub struct Submission<'a> {
    /// The submitter's idempotency key: a submission seen before is not stored again.
    pub id: Option<&'a [u8]>,
    /// A digest of the submission's content, kept with `id`: a repeat of `id` with other
    /// content is refused.
    pub digest: [u8; 32],
    /// The MLS group id.
    pub group_id: &'a [u8],
    /// Ordering rule.
    pub ordering: Ordering,
    /// Whom the message goes to, and what shows the submission may be made.
    pub to: To<'a>,
    /// The message.
    pub message: &'a [u8],
    /// For a commit: the welcome and the devices it adds (they join the roster).
    pub welcome: Option<(&'a [u64], &'a [u8])>,
    /// For a commit: the devices it removes (they leave the roster, after this commit).
    pub removed: &'a [u64],
    /// No recipient's queue may grow past these.
    pub limits: QueueLimits,
    /// Undelivered copies are deleted at this time (Unix seconds).
    pub expires_at: Option<u64>,
}

/// Whom a submission goes to.
#[derive(Debug, Clone)]
pub enum To<'a> {
    /// Every device in the group's roster (the sender's too: the server does not know it).
    Group(GroupAuth<'a>),
    /// Exactly these devices, with no roster kept or checked: a plain relay (store tests).
    Devices(&'a [u64]),
}

/// What shows that a submission comes from a member of the group.
///
/// The store keeps a group's roster only sealed under the current epoch's credential
/// (`sotto_core::roster`): a credential that opens it is a member's. A group with no sealed
/// roster (new, kept from before sealed rosters, restored from a backup) is sealed by the
/// first submission that names an authenticated `device`: a new group's roster is that
/// device; an older group's is its plaintext roster, which the sealing deletes, and the
/// device must be in it; a restored group's is `roster`, which must include the device.
#[derive(Debug, Clone)]
pub struct GroupAuth<'a> {
    /// The credential of the submission's epoch.
    pub credential: &'a GroupCredential,
    /// For a commit: the next epoch's credential, which seals the new roster.
    pub next: Option<&'a GroupCredential>,
    /// The submitting device, if it authenticated (only to seal an unsealed group).
    pub device: Option<u64>,
    /// The roster the submitter claims (only to seal a group restored from a backup).
    pub roster: Option<&'a [u64]>,
}

/// What a stored submission did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Submitted {
    /// The group's epoch afterwards.
    pub epoch: u64,
    /// Devices a copy was queued for (empty when a repeat was answered).
    pub recipients: Vec<u64>,
    /// Roster devices that are revoked: nothing was queued for them.
    pub dropped: Vec<u64>,
    /// Bytes queued, all copies together.
    pub bytes: u64,
    /// The copies queued, as stored, the first [`COPIES_RETURNED_BYTES`] of them: a live
    /// connection can deliver them from memory instead of reading them back. Empty in the
    /// answer when they went to a [`QueuedSink`] (see [`Store::publish_queued_to`]).
    pub copies: Vec<QueuedCopy>,
}

/// What a group commit queued, handed to a [`QueuedSink`]: the copies of its submissions (as
/// [`Submitted::copies`], in the order they were committed, so each device's by increasing
/// seq) and every device that received one, once each.
#[derive(Debug, Default)]
pub struct Committed {
    /// The copies, in commit order.
    pub copies: Vec<QueuedCopy>,
    /// Every device a copy was queued for, sorted.
    pub devices: Vec<u64>,
}

/// Receives what each group commit queued, from the store's writer (see
/// [`Store::publish_queued_to`]).
pub type QueuedSink = Box<dyn Fn(Committed) + Send + Sync>;

/// Most bytes of copies a submission returns in [`Submitted::copies`] (a message to a large
/// group would otherwise be held twice in memory).
pub const COPIES_RETURNED_BYTES: u64 = 1 << 20;

/// A copy a submission queued for one device, as stored (sealed to the device's queue key
/// where it gave one). Its `Debug` shows only the length.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct QueuedCopy {
    /// The device whose queue holds it.
    pub device: u64,
    /// Its position in that queue.
    pub seq: u64,
    /// When it was queued, as stored (Unix seconds, rounded).
    pub at: u64,
    /// The copy.
    pub message: Vec<u8>,
}

impl std::fmt::Debug for QueuedCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuedCopy")
            .field("device", &self.device)
            .field("seq", &self.seq)
            .field("at", &self.at)
            .field("bytes", &self.message.len())
            .finish()
    }
}

/// Most bytes of messages in one page of a queue (a single larger message still comes alone),
/// so a fetch never loads a whole queue into memory.
pub const PAGE_MAX_BYTES: usize = 8 * 1024 * 1024;

/// A page of a device's queue: (seq, message) pairs, oldest first, and whether more follow.
pub type QueuePage = (Vec<(u64, Vec<u8>, u64)>, bool);

/// Key package stock of a device in one ciphersuite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPackageStock {
    /// The ciphersuite (MLS code point).
    pub ciphersuite: u16,
    /// Unclaimed one-time key packages.
    pub remaining: u64,
    /// Whether a last-resort key package is on file.
    pub last_resort: bool,
}

/// Errors from a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The address is registered already.
    #[error("address already registered")]
    AddressTaken,
    /// No invite with that code.
    #[error("unknown invite")]
    InviteInvalid,
    /// The invite has expired.
    #[error("invite expired")]
    InviteExpired,
    /// The invite has no uses left.
    #[error("invite used up")]
    InviteUsedUp,
    /// The device key is registered already.
    #[error("device key already registered")]
    DeviceKeyTaken,
    /// A commit or proposal for an epoch the group is not at.
    #[error("stale epoch; the group is at epoch {current}")]
    StaleEpoch {
        /// The group's epoch.
        current: u64,
    },
    /// A recipient device does not exist.
    #[error("unknown device {0}")]
    UnknownDevice(u64),
    /// The credential does not open the group's roster, or the device is not in it.
    #[error("not a member of the group")]
    NotMember,
    /// The group has no sealed roster: it takes a submission from an authenticated device.
    #[error("the group has no sealed roster yet")]
    GroupUnsealed,
    /// No account with that address.
    #[error("no such account")]
    NoAccount,
    /// The account was deleted; only its address is kept.
    #[error("the account was deleted")]
    AccountDeleted,
    /// A submission id seen before came with different content.
    #[error("submission id reused for a different submission")]
    SubmissionConflict,
    /// A recipient's queue is at its limit.
    #[error("the queue of device {device} is full")]
    QueueFull {
        /// The recipient.
        device: u64,
    },
    /// The device list changed since it was read (a concurrent update).
    #[error("the device list changed meanwhile")]
    ListConflict,
    /// No such link.
    #[error("unknown link")]
    UnknownLink,
    /// The link, or that part of it, exists already.
    #[error("link part already set")]
    LinkTaken,
    /// An account's blobs would exceed its quota.
    #[error("blob quota exceeded: {used} of {quota} bytes in use")]
    BlobQuota {
        /// Bytes the account's blobs take.
        used: u64,
        /// The quota.
        quota: u64,
    },
    /// The database cannot be written: the disk is full or read-only, or failing.
    #[error("storage cannot be written: {0}")]
    Unwritable(String),
    /// The database failed.
    #[error("database: {0}")]
    Backend(String),
}

/// A write handed to the store whose answer comes later (see [`Store::submit_queued`]). The
/// sender goes away without answering only if the store stopped.
pub type Pending<T> = tokio::sync::oneshot::Receiver<Result<T, StoreError>>;

/// The primitive operations of a server store.
pub trait Store: Send + Sync + 'static {
    /// Records an invite; the accounts it registers get a term of `valid_for` seconds, if
    /// given.
    fn create_invite(
        &self,
        code_hash: &[u8],
        expires_at: u64,
        uses: u32,
        valid_for: Option<u64>,
        now: u64,
    ) -> Result<(), StoreError>;

    /// Every invite not used up, expired ones included, oldest first.
    fn invites(&self) -> Result<Vec<InviteRecord>, StoreError>;

    /// Withdraws the invites whose code hash starts with `prefix`, if exactly one does;
    /// returns how many matched (0: none, more than 1: nothing withdrawn, say more).
    fn revoke_invite(&self, prefix: &[u8]) -> Result<usize, StoreError>;

    /// Every account, by address (deleted ones included).
    fn accounts(&self) -> Result<Vec<AccountRecord>, StoreError>;

    /// One account, if the address was ever registered.
    fn account(&self, address: &str) -> Result<Option<AccountRecord>, StoreError>;

    /// Applies an operator's change to an account and records `audit`, at once. Returns the
    /// ids of the files a deletion removed from the database (their bytes are for the caller
    /// to delete). [`StoreError::NoAccount`] if the address was never registered,
    /// [`StoreError::AccountDeleted`] if it was deleted.
    fn change_account(
        &self,
        address: &str,
        change: AccountChange,
        audit: &AuditRecord,
    ) -> Result<Vec<Vec<u8>>, StoreError>;

    /// Devices refused service at `now`: those of suspended and deleted accounts, and of
    /// accounts whose term ended more than `grace` seconds ago.
    fn barred_devices(&self, grace: u64, now: u64) -> Result<Vec<(u64, Barred)>, StoreError>;

    /// Appends a line to the audit log.
    fn record_audit(&self, audit: &AuditRecord) -> Result<(), StoreError>;

    /// The newest `limit` lines of the audit log, oldest first.
    fn audit_log(&self, limit: u32) -> Result<Vec<AuditRecord>, StoreError>;

    /// Totals for the operator's metrics.
    fn totals(&self) -> Result<StoreTotals, StoreError>;

    /// Creates an account and its first device, consuming one use of the invite (if any).
    /// Returns the device id.
    fn register(&self, account: &NewAccount<'_>, now: u64) -> Result<u64, StoreError>;

    /// A device by id.
    fn device(&self, device_id: u64) -> Result<Option<DeviceRecord>, StoreError>;

    /// The devices of an account, revoked ones included, oldest first; empty if the account
    /// does not exist.
    fn devices(&self, address: &str) -> Result<Vec<DeviceRecord>, StoreError>;

    /// An account's device list; `None` if there is no such account (or it predates lists).
    fn device_list(&self, address: &str) -> Result<Option<ListRecord>, StoreError>;

    /// Every account's device list (to check the key directory against).
    fn all_device_lists(&self) -> Result<Vec<(String, ListRecord)>, StoreError>;

    /// Replaces the device list if its version is still `expected_version`, registers
    /// `new_device` (returning its id) and revokes `revoke`, all at once. A revoked device
    /// loses its queue and key packages.
    fn update_devices(
        &self,
        address: &str,
        expected_version: u64,
        list: &ListRecord,
        new_device: Option<&[u8]>,
        revoke: &[u64],
        now: u64,
    ) -> Result<Option<u64>, StoreError>;

    /// Ids of every revoked device.
    fn revoked_devices(&self) -> Result<Vec<u64>, StoreError>;

    /// Sets the public key copies queued for a device are sealed to from now on (see
    /// `sotto_core::queue`); the caller has checked it is usable.
    fn set_queue_key(&self, device_id: u64, key: &[u8]) -> Result<(), StoreError>;

    /// Records that a device logged in.
    fn touch_device(&self, device_id: u64, now: u64) -> Result<(), StoreError>;

    /// Stores a wipe command for a device and revokes it.
    fn put_wipe(&self, device_id: u64, command: &SignedBlob, now: u64) -> Result<(), StoreError>;

    /// The wipe ordered for a device, if any.
    fn wipe(&self, device_id: u64) -> Result<Option<WipeRecord>, StoreError>;

    /// Stores a device's confirmation of its wipe.
    fn confirm_wipe(
        &self,
        device_id: u64,
        confirmation: &SignedBlob,
        now: u64,
    ) -> Result<(), StoreError>;

    /// Opens a link with the new device's request.
    fn open_link(&self, link_id: &[u8], request: &[u8], now: u64) -> Result<(), StoreError>;

    /// A link by id.
    fn link(&self, link_id: &[u8]) -> Result<Option<LinkRecord>, StoreError>;

    /// Sets a link's response and/or history; each can be set once.
    fn reply_link(
        &self,
        link_id: &[u8],
        response: Option<&[u8]>,
        history: Option<&[u8]>,
    ) -> Result<(), StoreError>;

    /// Deletes links opened before `before`; returns how many.
    fn expire_links(&self, before: u64) -> Result<u64, StoreError>;

    /// Whether `credential` is a member's of `group_id` in its current epoch (it opens the
    /// group's sealed roster): [`StoreError::StaleEpoch`] for one of its recent epochs,
    /// [`StoreError::GroupUnsealed`] for a group with no sealed roster, else
    /// [`StoreError::NotMember`].
    fn check_member(
        &self,
        group_id: &[u8],
        credential: &sotto_core::roster::GroupCredential,
    ) -> Result<(), StoreError>;

    /// Records a new blob if its owner's blobs stay within `quota` bytes — and, for a group's
    /// file (an owner `group:…`), the bytes all groups' files hold (received so far) and its
    /// own within `group_pool`.
    fn create_blob(&self, blob: &BlobRecord, quota: u64, group_pool: u64)
    -> Result<(), StoreError>;

    /// A blob by id.
    fn blob(&self, id: &[u8]) -> Result<Option<BlobRecord>, StoreError>;

    /// Records how much of a blob is durably received (and, once complete, when it expires);
    /// false if there is no such blob (any more: deleted or expired meanwhile).
    fn blob_received(&self, id: &[u8], received: u64, expires_at: u64) -> Result<bool, StoreError>;

    /// Ids of blobs that expired by `now`; [`Store::delete_blob`] removes them.
    fn expired_blobs(&self, now: u64) -> Result<Vec<Vec<u8>>, StoreError>;

    /// Forgets a blob.
    fn delete_blob(&self, id: &[u8]) -> Result<(), StoreError>;

    /// Adds one-time key packages of `ciphersuite` and replaces the device's last-resort one
    /// of that suite, if given; with `replace`, first drops every package of the device in
    /// that suite. Returns the stock afterwards, as [`Store::key_package_stock`].
    fn add_key_packages(
        &self,
        device_id: u64,
        ciphersuite: u16,
        one_time: &[Vec<u8>],
        last_resort: Option<&[u8]>,
        replace: bool,
    ) -> Result<Vec<KeyPackageStock>, StoreError>;

    /// A device's key package stock: one entry per ciphersuite it has any of, by suite.
    fn key_package_stock(&self, device_id: u64) -> Result<Vec<KeyPackageStock>, StoreError>;

    /// Takes one key package per device of the account that is not revoked (only those in
    /// `only`, if given), of the first of `ciphersuites` the device has any of: a one-time
    /// one (deleted) if any is left, else the last-resort one (kept).
    fn claim_key_packages(
        &self,
        address: &str,
        only: Option<&[u64]>,
        ciphersuites: &[u16],
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;

    /// Checks the submission's credential against the group's sealed roster (see
    /// [`GroupAuth`]) and the ordering rule, queues the message for every roster device (the
    /// welcome for the devices a commit adds) and, for a commit, seals the new roster under
    /// the next epoch's credential, all or nothing.
    ///
    /// The epoch is checked before the credential: a member that missed a change gets
    /// [`StoreError::StaleEpoch`] and catches up (the current epoch number is all a stranger
    /// who knows the group's id learns). A wrong credential gets [`StoreError::NotMember`].
    ///
    /// A submission whose id was stored before is not checked or stored again: the epoch
    /// recorded then is returned, or [`StoreError::SubmissionConflict`] if its digest
    /// differs. No submission row names its sender.
    fn submit(&self, submission: &Submission<'_>, now: u64) -> Result<Submitted, StoreError>;

    /// [`Store::submit`] for an async caller: the submission is handed over at once and the
    /// answer arrives on the receiver, with no thread blocked while it waits for its commit.
    fn submit_queued(&self, submission: &Submission<'_>, now: u64) -> Pending<Submitted>;

    /// [`Store::ack`] for an async caller, as [`Store::submit_queued`].
    fn ack_queued(&self, device_id: u64, up_to: u64) -> Pending<u64>;

    /// From now on hands what every committed submission queued to `sink`, a whole group
    /// commit at once, in the order it was committed and before any of its submissions is
    /// answered; the answers then carry no copies. (Answers resume their callers in any
    /// order: publishing from there, a device's copies could arrive out of order.) Set once;
    /// a later sink is ignored.
    fn publish_queued_to(&self, sink: QueuedSink);

    /// Up to `limit` queued messages (and about `max_bytes`, at most [`PAGE_MAX_BYTES`]; a
    /// single larger message still comes alone) of a device with
    /// seq > `after` that were queued at or after `not_before` (older ones have expired),
    /// oldest first, and whether more follow.
    fn fetch(
        &self,
        device_id: u64,
        after: u64,
        limit: u32,
        not_before: u64,
        max_bytes: usize,
    ) -> Result<QueuePage, StoreError>;

    /// Removes a device's queued messages with seq <= `up_to`; returns how many.
    fn ack(&self, device_id: u64, up_to: u64) -> Result<u64, StoreError>;

    /// Deletes idempotency records older than `keep_submissions_until`, queued messages
    /// older than `expire_messages_before`, and queued messages whose own expiry is at or
    /// before `now`. Returns how many queued messages expired.
    fn sweep(
        &self,
        keep_submissions_until: u64,
        expire_messages_before: u64,
        now: u64,
    ) -> Result<u64, StoreError>;
}
