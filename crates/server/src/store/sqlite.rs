//! The embedded SQLite store.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, mpsc};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{
    AccountChange, AccountRecord, AuditRecord, Barred, BlobRecord, DeviceRecord, InviteRecord,
    KeyPackageStock, LinkRecord, ListRecord, NewAccount, Ordering, PAGE_MAX_BYTES, QueueLimits,
    QueuePage, SignedBlob, Store, StoreError, StoreTotals, Submission, WipeRecord,
};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
/// Never edit one that has shipped: add a new one.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE invites (
    code_hash BLOB PRIMARY KEY,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    uses_left INTEGER NOT NULL
);
CREATE TABLE accounts (
    address TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
);
CREATE TABLE devices (
    device_id INTEGER PRIMARY KEY AUTOINCREMENT,
    address TEXT NOT NULL REFERENCES accounts(address),
    device_key BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
CREATE INDEX devices_by_address ON devices(address);
CREATE TABLE key_packages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id INTEGER NOT NULL,
    data BLOB NOT NULL,
    last_resort INTEGER NOT NULL
);
CREATE INDEX key_packages_by_device ON key_packages(device_id, last_resort, id);
CREATE TABLE groups (
    group_id BLOB PRIMARY KEY,
    epoch INTEGER NOT NULL
);
CREATE TABLE queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id INTEGER NOT NULL,
    message BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX queue_by_device ON queue(device_id, seq);
CREATE TABLE submissions (
    device_id INTEGER NOT NULL,
    submission_id BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (device_id, submission_id)
);
CREATE INDEX submissions_by_age ON submissions(created_at);
CREATE INDEX queue_by_age ON queue(created_at);
CREATE TABLE queue_stats (
    device_id INTEGER PRIMARY KEY,
    messages INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
"#,
    r#"
ALTER TABLE accounts ADD COLUMN list_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN identity_key BLOB;
ALTER TABLE accounts ADD COLUMN recovery_key BLOB;
ALTER TABLE accounts ADD COLUMN operator_key BLOB;
ALTER TABLE accounts ADD COLUMN device_list BLOB;
ALTER TABLE accounts ADD COLUMN list_signature BLOB;
ALTER TABLE devices ADD COLUMN revoked_at INTEGER;
ALTER TABLE devices ADD COLUMN last_seen INTEGER;
CREATE TABLE wipes (
    device_id INTEGER PRIMARY KEY,
    command BLOB NOT NULL,
    command_signature BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    confirmation BLOB,
    confirmation_signature BLOB,
    confirmed_at INTEGER
);
CREATE TABLE links (
    link_id BLOB PRIMARY KEY,
    request BLOB NOT NULL,
    response BLOB,
    history BLOB,
    created_at INTEGER NOT NULL
);
CREATE INDEX links_by_age ON links(created_at);
"#,
    r#"
ALTER TABLE queue ADD COLUMN expires_at INTEGER;
CREATE INDEX queue_by_expiry ON queue(expires_at) WHERE expires_at IS NOT NULL;
"#,
    r#"
CREATE TABLE blobs (
    id BLOB PRIMARY KEY,
    device_id INTEGER NOT NULL,
    address TEXT NOT NULL,
    size INTEGER NOT NULL,
    received INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    lifetime INTEGER NOT NULL
);
CREATE INDEX blobs_by_address ON blobs(address);
CREATE INDEX blobs_by_expiry ON blobs(expires_at);
"#,
    // Group rosters: who may submit to a group and be sent to in it. Groups that existed
    // before have `roster = 0` and get their roster from their next commit.
    r#"
ALTER TABLE groups ADD COLUMN roster INTEGER NOT NULL DEFAULT 0;
CREATE TABLE group_members (
    group_id BLOB NOT NULL,
    device_id INTEGER NOT NULL,
    PRIMARY KEY (group_id, device_id)
);
CREATE INDEX group_members_by_device ON group_members(device_id);
ALTER TABLE submissions ADD COLUMN digest BLOB;
"#,
    // Key packages by ciphersuite (MLS code point): those on file were all classical.
    r#"
ALTER TABLE key_packages ADD COLUMN ciphersuite INTEGER NOT NULL DEFAULT 3;
DROP INDEX key_packages_by_device;
CREATE INDEX key_packages_by_device ON key_packages(device_id, ciphersuite, last_resort, id);
"#,
    // Account lifecycle: suspension, terms, deletion (the address row stays), and the
    // operator's audit log. Groups restored from a backup take their epoch from their next
    // commit.
    r#"
ALTER TABLE accounts ADD COLUMN suspended_at INTEGER;
ALTER TABLE accounts ADD COLUMN valid_until INTEGER;
ALTER TABLE accounts ADD COLUMN deleted_at INTEGER;
ALTER TABLE invites ADD COLUMN valid_for INTEGER;
ALTER TABLE groups ADD COLUMN restored INTEGER NOT NULL DEFAULT 0;
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL
);
"#,
];

/// A [`Store`] on one SQLite database file (WAL mode, `synchronous=FULL`: a committed
/// transaction is on disk).
#[derive(Debug)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// Submissions and acknowledgements go through the writer thread (group commit).
    writer: mpsc::Sender<(Job, Reply)>,
}

fn backend(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    match e.sqlite_error_code() {
        Some(C::DiskFull | C::ReadOnly | C::SystemIoFailure) => {
            StoreError::Unwritable(e.to_string())
        }
        _ => StoreError::Backend(e.to_string()),
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::from_connection(Connection::open(path).map_err(backend)?)
    }

    /// An in-memory database, for unit tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::from_connection(Connection::open_in_memory().map_err(backend)?)
    }

    fn from_connection(mut conn: Connection) -> Result<Self, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(backend)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(backend)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(backend)?;
        conn.pragma_update(None, "foreign_keys", true).map_err(backend)?;
        let version: i64 =
            conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(backend)?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::Backend(format!(
                "database schema version {version} is newer than this server ({known}); \
                 upgrade sotto-server"
            )));
        }
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(to_u64(version) as usize) {
            let tx = conn.transaction().map_err(backend)?;
            tx.execute_batch(migration).map_err(backend)?;
            tx.pragma_update(None, "user_version", i as i64 + 1).map_err(backend)?;
            tx.commit().map_err(backend)?;
        }
        let conn = Arc::new(Mutex::new(conn));
        let (tx, rx) = mpsc::channel();
        let shared = conn.clone();
        std::thread::Builder::new()
            .name("sotto-store-writer".into())
            .spawn(move || writer(shared, rx))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore { conn, writer: tx })
    }

    /// Hands a write to the writer thread and waits until it is committed (or refused).
    fn write(&self, job: Job) -> Result<u64, StoreError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.writer
            .send((job, reply))
            .map_err(|_| StoreError::Backend("the store's writer thread stopped".into()))?;
        answer
            .recv()
            .map_err(|_| StoreError::Backend("the store's writer thread stopped".into()))?
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions roll
        // back on drop), so a poisoned lock is still safe to use.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn device_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRecord> {
    Ok(DeviceRecord {
        device_id: to_u64(r.get(0)?),
        address: r.get(1)?,
        device_key: r.get(2)?,
        created_at: to_u64(r.get(3)?),
        revoked_at: r.get::<_, Option<i64>>(4)?.map(to_u64),
        last_seen: r.get::<_, Option<i64>>(5)?.map(to_u64),
    })
}

const LIST_COLUMNS: &str =
    "list_version, identity_key, recovery_key, operator_key, device_list, list_signature";

fn list_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ListRecord> {
    Ok(ListRecord {
        version: to_u64(r.get(0)?),
        identity_key: r.get(1)?,
        recovery_key: r.get(2)?,
        operator_key: r.get(3)?,
        body: r.get(4)?,
        signature: r.get(5)?,
    })
}

const DEVICE_COLUMNS: &str = "device_id, address, device_key, created_at, revoked_at, last_seen";

/// An account with its device counts; add a `WHERE` and `GROUP BY a.address`.
const ACCOUNT_QUERY: &str = "SELECT a.address, a.created_at,
        COUNT(d.device_id) FILTER (WHERE d.revoked_at IS NULL),
        COUNT(d.device_id) FILTER (WHERE d.revoked_at IS NOT NULL),
        MAX(d.last_seen), a.suspended_at, a.valid_until, a.deleted_at
    FROM accounts a LEFT JOIN devices d ON d.address = a.address";

fn account_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AccountRecord> {
    let time = |i| r.get::<_, Option<i64>>(i).map(|t| t.map(to_u64));
    Ok(AccountRecord {
        address: r.get(0)?,
        created_at: to_u64(r.get(1)?),
        devices: to_u64(r.get(2)?),
        revoked: to_u64(r.get(3)?),
        last_seen: time(4)?,
        suspended_at: time(5)?,
        valid_until: time(6)?,
        deleted_at: time(7)?,
    })
}

fn insert_audit(tx: &Connection, audit: &AuditRecord) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO audit (at, actor, action, subject, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![to_i64(audit.at), audit.actor, audit.action, audit.subject, audit.detail],
    )
    .map_err(backend)?;
    Ok(())
}

fn key_taken(tx: &Connection, key: &[u8]) -> Result<bool, StoreError> {
    Ok(tx
        .query_row("SELECT 1 FROM devices WHERE device_key = ?1", [key], |_| Ok(()))
        .optional()
        .map_err(backend)?
        .is_some())
}

fn set_list(tx: &Connection, address: &str, list: &ListRecord) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE accounts SET list_version = ?2, identity_key = ?3, recovery_key = ?4,
                             operator_key = ?5, device_list = ?6, list_signature = ?7
         WHERE address = ?1",
        params![
            address,
            to_i64(list.version),
            list.identity_key,
            list.recovery_key,
            list.operator_key,
            list.body,
            list.signature
        ],
    )
    .map_err(backend)?;
    Ok(())
}

/// Revokes a device: it keeps its row (for display) and loses its queue and key packages.
fn revoke_in(tx: &Connection, device: u64, now: u64) -> Result<(), StoreError> {
    let d = to_i64(device);
    tx.execute("DELETE FROM group_members WHERE device_id = ?1", [d]).map_err(backend)?;
    tx.execute(
        "UPDATE devices SET revoked_at = COALESCE(revoked_at, ?2) WHERE device_id = ?1",
        params![d, to_i64(now)],
    )
    .map_err(backend)?;
    tx.execute("DELETE FROM queue WHERE device_id = ?1", [d]).map_err(backend)?;
    tx.execute("DELETE FROM queue_stats WHERE device_id = ?1", [d]).map_err(backend)?;
    tx.execute("DELETE FROM key_packages WHERE device_id = ?1", [d]).map_err(backend)?;
    Ok(())
}

/// Takes messages that left a queue off its counters.
fn uncount(tx: &Connection, device: i64, messages: i64, bytes: i64) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE queue_stats SET messages = MAX(messages - ?2, 0), bytes = MAX(bytes - ?3, 0)
         WHERE device_id = ?1",
        params![device, messages, bytes],
    )
    .map_err(backend)?;
    Ok(())
}

/// Most jobs committed together.
const MAX_BATCH: usize = 512;

/// An owned copy of a [`Submission`], to hand to the writer thread.
#[derive(Debug)]
struct OwnedSubmission {
    sender: u64,
    id: Option<Vec<u8>>,
    group_id: Vec<u8>,
    digest: [u8; 32],
    ordering: Ordering,
    deliveries: Vec<(Vec<u64>, Vec<u8>)>,
    joining: Vec<u64>,
    removed: Vec<u64>,
    limits: QueueLimits,
    expires_at: Option<u64>,
}

impl From<&Submission<'_>> for OwnedSubmission {
    fn from(s: &Submission<'_>) -> Self {
        OwnedSubmission {
            sender: s.sender,
            id: s.id.map(<[u8]>::to_vec),
            digest: s.digest,
            group_id: s.group_id.to_vec(),
            ordering: s.ordering,
            deliveries: s.deliveries.iter().map(|(r, m)| (r.to_vec(), m.to_vec())).collect(),
            joining: s.joining.to_vec(),
            removed: s.removed.to_vec(),
            expires_at: s.expires_at,
            limits: s.limits,
        }
    }
}

impl OwnedSubmission {
    fn borrowed(&self) -> Submission<'_> {
        Submission {
            sender: self.sender,
            id: self.id.as_deref(),
            digest: self.digest,
            group_id: &self.group_id,
            ordering: self.ordering,
            deliveries: self.deliveries.iter().map(|(r, m)| (r.as_slice(), m.as_slice())).collect(),
            joining: &self.joining,
            removed: &self.removed,
            limits: self.limits,
            expires_at: self.expires_at,
        }
    }
}

/// A write for the writer thread.
#[derive(Debug)]
enum Job {
    Submit(OwnedSubmission, u64),
    Ack(u64, u64),
}

type Reply = mpsc::SyncSender<Result<u64, StoreError>>;

/// The writer thread: takes every job waiting, runs each in a savepoint of one transaction and
/// commits once, so concurrent writers share one fsync (group commit). Each job answers only
/// after the commit that made it durable; a failed job rolls back alone.
fn writer(conn: Arc<Mutex<Connection>>, jobs: mpsc::Receiver<(Job, Reply)>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
        let started = std::time::Instant::now();
        let results = run_batch(&mut conn, &batch);
        drop(conn);
        let metrics = &crate::metrics::METRICS;
        metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
        metrics.commit_batch.observe(batch.len() as f64);
        for ((_, reply), result) in batch.into_iter().zip(results) {
            let _ = reply.send(result);
        }
    }
}

fn run_batch(conn: &mut Connection, batch: &[(Job, Reply)]) -> Vec<Result<u64, StoreError>> {
    let fail_all = |e: rusqlite::Error| {
        let e = backend(e);
        batch.iter().map(|_| Err(clone_error(&e))).collect()
    };
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return fail_all(e),
    };
    let mut results = Vec::with_capacity(batch.len());
    for (job, _) in batch {
        let sp = match tx.savepoint() {
            Ok(sp) => sp,
            Err(e) => return fail_all(e),
        };
        let result = match job {
            Job::Submit(s, now) => submit_in(&sp, &s.borrowed(), *now),
            Job::Ack(device, up_to) => ack_in(&sp, *device, *up_to),
        };
        // Dropping the savepoint without committing it rolls this job back alone.
        if result.is_ok()
            && let Err(e) = sp.commit()
        {
            return fail_all(e);
        }
        results.push(result);
    }
    match tx.commit() {
        Ok(()) => results,
        Err(e) => fail_all(e),
    }
}

fn clone_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unwritable(m) => StoreError::Unwritable(m.clone()),
        other => StoreError::Backend(other.to_string()),
    }
}

/// Stores one submission inside the writer's transaction (see [`Store::submit`]).
fn submit_in(tx: &Connection, submission: &Submission<'_>, now: u64) -> Result<u64, StoreError> {
    if let Some(id) = submission.id {
        let seen: Option<(i64, Option<Vec<u8>>)> = tx
            .query_row(
                "SELECT epoch, digest FROM submissions WHERE device_id = ?1 AND submission_id = ?2",
                params![to_i64(submission.sender), id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(backend)?;
        if let Some((epoch, digest)) = seen {
            // Rows stored before digests were kept have none: they still answer repeats.
            if digest.is_some_and(|d| d != submission.digest) {
                return Err(StoreError::SubmissionConflict);
            }
            return Ok(to_u64(epoch));
        }
    }
    let group: Option<(i64, bool, bool)> = tx
        .query_row(
            "SELECT epoch, roster, restored FROM groups WHERE group_id = ?1",
            [submission.group_id],
            |r| Ok((r.get(0)?, r.get::<_, i64>(1)? != 0, r.get::<_, i64>(2)? != 0)),
        )
        .optional()
        .map_err(backend)?;
    // Restored from a backup, the group may have moved on meanwhile: its members' epoch is
    // taken as it comes, until a commit sets it again.
    let restored = group.is_some_and(|(_, _, r)| r);
    // The sender's membership is checked before the epoch, so a stranger learns nothing of
    // the group; the recipients after it, so a member that missed a change is told to catch
    // up rather than that its recipients are wrong.
    let roster = match submission.ordering {
        Ordering::None => None,
        _ => roster_of(tx, submission, group.map(|(_, known, _)| known))?,
    };
    let current_epoch = group.map(|(e, _, _)| to_u64(e)).unwrap_or(0);
    let epoch = match submission.ordering {
        Ordering::None => current_epoch,
        Ordering::NotBefore(e) if e < current_epoch => {
            return Err(StoreError::StaleEpoch { current: current_epoch });
        }
        Ordering::NotBefore(_) => {
            check_recipients(submission, roster.as_ref())?;
            current_epoch
        }
        Ordering::AtEpoch(e) | Ordering::Advance(e)
            if e != current_epoch && !(restored && e > current_epoch) =>
        {
            return Err(StoreError::StaleEpoch { current: current_epoch });
        }
        Ordering::AtEpoch(e) => {
            check_recipients(submission, roster.as_ref())?;
            e
        }
        Ordering::Advance(e) => {
            check_recipients(submission, roster.as_ref())?;
            tx.execute(
                "INSERT INTO groups (group_id, epoch, roster) VALUES (?1, ?2, 1)
                 ON CONFLICT (group_id) DO UPDATE SET epoch = excluded.epoch, roster = 1,
                                                     restored = 0",
                params![submission.group_id, to_i64(e + 1)],
            )
            .map_err(backend)?;
            update_roster(tx, submission, roster)?;
            e + 1
        }
    };
    {
        let mut exists =
            tx.prepare_cached("SELECT 1 FROM devices WHERE device_id = ?1").map_err(backend)?;
        let mut stats = tx
            .prepare_cached("SELECT messages, bytes FROM queue_stats WHERE device_id = ?1")
            .map_err(backend)?;
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO queue (device_id, message, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(backend)?;
        let mut count = tx
            .prepare_cached(
                "INSERT INTO queue_stats (device_id, messages, bytes) VALUES (?1, 1, ?2)
                 ON CONFLICT (device_id) DO UPDATE
                 SET messages = messages + 1, bytes = bytes + excluded.bytes",
            )
            .map_err(backend)?;
        let limits = submission.limits;
        for (recipients, message) in &submission.deliveries {
            let len = message.len() as u64;
            for &device in *recipients {
                if !exists.exists([to_i64(device)]).map_err(backend)? {
                    return Err(StoreError::UnknownDevice(device));
                }
                let (messages, bytes): (i64, i64) = stats
                    .query_row([to_i64(device)], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
                    .map_err(backend)?
                    .unwrap_or((0, 0));
                if to_u64(messages) >= limits.max_messages
                    || to_u64(bytes).saturating_add(len) > limits.max_bytes
                {
                    return Err(StoreError::QueueFull { device });
                }
                insert
                    .execute(params![
                        to_i64(device),
                        message,
                        to_i64(now),
                        submission.expires_at.map(to_i64)
                    ])
                    .map_err(backend)?;
                count.execute(params![to_i64(device), to_i64(len)]).map_err(backend)?;
            }
        }
    }
    if let Some(id) = submission.id {
        tx.execute(
            "INSERT INTO submissions (device_id, submission_id, epoch, created_at, digest)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                to_i64(submission.sender),
                id,
                to_i64(epoch),
                to_i64(now),
                &submission.digest[..]
            ],
        )
        .map_err(backend)?;
    }
    Ok(epoch)
}

/// The group's roster, with the sender checked to be in it; `None` for a group that predates
/// rosters (`known == Some(false)`): it is not checked, and its next commit sets its roster.
/// A group the server has not seen yet holds only its creator, the sender.
fn roster_of(
    tx: &Connection,
    submission: &Submission<'_>,
    known: Option<bool>,
) -> Result<Option<BTreeSet<u64>>, StoreError> {
    let roster: BTreeSet<u64> = match known {
        Some(false) => return Ok(None),
        None => BTreeSet::from([submission.sender]),
        Some(true) => {
            let mut members = tx
                .prepare_cached("SELECT device_id FROM group_members WHERE group_id = ?1")
                .map_err(backend)?;
            let rows = members
                .query_map([submission.group_id], |r| r.get::<_, i64>(0))
                .map_err(backend)?;
            rows.map(|r| r.map(to_u64)).collect::<Result<_, _>>().map_err(backend)?
        }
    };
    if !roster.contains(&submission.sender) {
        return Err(StoreError::NotMember { device: submission.sender });
    }
    Ok(Some(roster))
}

/// Checks that every recipient is in the roster (devices a commit adds count for its own
/// deliveries).
fn check_recipients(
    submission: &Submission<'_>,
    roster: Option<&BTreeSet<u64>>,
) -> Result<(), StoreError> {
    let Some(roster) = roster else { return Ok(()) };
    let joining: BTreeSet<u64> = match submission.ordering {
        Ordering::Advance(_) => submission.joining.iter().copied().collect(),
        _ => BTreeSet::new(),
    };
    for (recipients, _) in &submission.deliveries {
        if let Some(&d) = recipients.iter().find(|d| !roster.contains(d) && !joining.contains(d)) {
            return Err(StoreError::NotMember { device: d });
        }
    }
    Ok(())
}

/// Writes a commit's roster: the members before it plus the devices it adds, minus those it
/// removes. A group new to the server starts with its creator; one that predates rosters
/// starts with the sender and the recipients of this commit.
fn update_roster(
    tx: &Connection,
    submission: &Submission<'_>,
    before: Option<BTreeSet<u64>>,
) -> Result<(), StoreError> {
    let mut add: BTreeSet<u64> = submission.joining.iter().copied().collect();
    add.insert(submission.sender);
    if before.is_none() {
        add.extend(submission.deliveries.iter().flat_map(|(r, _)| r.iter().copied()));
    }
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO group_members (group_id, device_id) VALUES (?1, ?2)
             ON CONFLICT (group_id, device_id) DO NOTHING",
        )
        .map_err(backend)?;
    for d in add {
        insert.execute(params![submission.group_id, to_i64(d)]).map_err(backend)?;
    }
    let mut delete = tx
        .prepare_cached("DELETE FROM group_members WHERE group_id = ?1 AND device_id = ?2")
        .map_err(backend)?;
    for &d in submission.removed {
        delete.execute(params![submission.group_id, to_i64(d)]).map_err(backend)?;
    }
    Ok(())
}

/// Removes acknowledged messages inside the writer's transaction (see [`Store::ack`]).
fn ack_in(tx: &Connection, device_id: u64, up_to: u64) -> Result<u64, StoreError> {
    let args = params![to_i64(device_id), to_i64(up_to)];
    let (messages, bytes): (i64, i64) = tx
        .query_row(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(message)), 0) FROM queue
             WHERE device_id = ?1 AND seq <= ?2",
            args,
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(backend)?;
    if messages == 0 {
        return Ok(0);
    }
    tx.execute("DELETE FROM queue WHERE device_id = ?1 AND seq <= ?2", args).map_err(backend)?;
    uncount(tx, to_i64(device_id), messages, bytes)?;
    Ok(to_u64(messages))
}

impl Store for SqliteStore {
    fn create_invite(
        &self,
        code_hash: &[u8],
        expires_at: u64,
        uses: u32,
        valid_for: Option<u64>,
        now: u64,
    ) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "INSERT INTO invites (code_hash, created_at, expires_at, uses_left, valid_for)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![code_hash, to_i64(now), to_i64(expires_at), uses, valid_for.map(to_i64)],
            )
            .map_err(backend)?;
        Ok(())
    }

    fn invites(&self) -> Result<Vec<InviteRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT code_hash, created_at, expires_at, uses_left, valid_for FROM invites
                 WHERE uses_left > 0 ORDER BY created_at, code_hash",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(InviteRecord {
                    code_hash: r.get(0)?,
                    created_at: to_u64(r.get(1)?),
                    expires_at: to_u64(r.get(2)?),
                    uses_left: u32::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                    valid_for: r.get::<_, Option<i64>>(4)?.map(to_u64),
                })
            })
            .map_err(backend)?;
        rows.collect::<Result<_, _>>().map_err(backend)
    }

    fn revoke_invite(&self, prefix: &[u8]) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
        let matching: Vec<Vec<u8>> = {
            let mut stmt = tx
                .prepare("SELECT code_hash FROM invites WHERE substr(code_hash, 1, ?2) = ?1")
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![prefix, prefix.len() as i64], |r| r.get(0))
                .map_err(backend)?;
            rows.collect::<Result<_, _>>().map_err(backend)?
        };
        if let [one] = matching.as_slice() {
            tx.execute("DELETE FROM invites WHERE code_hash = ?1", [one]).map_err(backend)?;
            tx.commit().map_err(backend)?;
        }
        Ok(matching.len())
    }

    fn accounts(&self) -> Result<Vec<AccountRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!("{ACCOUNT_QUERY} GROUP BY a.address ORDER BY a.address"))
            .map_err(backend)?;
        let rows = stmt.query_map([], account_row).map_err(backend)?;
        rows.collect::<Result<_, _>>().map_err(backend)
    }

    fn account(&self, address: &str) -> Result<Option<AccountRecord>, StoreError> {
        self.conn()
            .query_row(
                &format!("{ACCOUNT_QUERY} WHERE a.address = ?1 GROUP BY a.address"),
                [address],
                account_row,
            )
            .optional()
            .map_err(backend)
    }

    fn change_account(
        &self,
        address: &str,
        change: AccountChange,
        audit: &AuditRecord,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
        let deleted: Option<Option<i64>> = tx
            .query_row("SELECT deleted_at FROM accounts WHERE address = ?1", [address], |r| {
                r.get(0)
            })
            .optional()
            .map_err(backend)?;
        match deleted {
            None => return Err(StoreError::NoAccount),
            Some(Some(_)) => return Err(StoreError::AccountDeleted),
            Some(None) => {}
        }
        let now = to_i64(audit.at);
        let mut files = Vec::new();
        match change {
            AccountChange::Suspend => {
                tx.execute(
                    "UPDATE accounts SET suspended_at = COALESCE(suspended_at, ?2) WHERE address = ?1",
                    params![address, now],
                )
                .map_err(backend)?;
            }
            AccountChange::Resume => {
                tx.execute("UPDATE accounts SET suspended_at = NULL WHERE address = ?1", [address])
                    .map_err(backend)?;
            }
            AccountChange::Term(until) => {
                tx.execute(
                    "UPDATE accounts SET valid_until = ?2 WHERE address = ?1",
                    params![address, until.map(to_i64)],
                )
                .map_err(backend)?;
            }
            AccountChange::Delete => {
                let devices: Vec<i64> = {
                    let mut stmt = tx
                        .prepare("SELECT device_id FROM devices WHERE address = ?1")
                        .map_err(backend)?;
                    let rows = stmt.query_map([address], |r| r.get(0)).map_err(backend)?;
                    rows.collect::<Result<_, _>>().map_err(backend)?
                };
                // Wipes ordered before stay: a lost device still erases itself when it next
                // asks, even after its account is gone.
                for device in devices {
                    revoke_in(&tx, to_u64(device), audit.at)?;
                }
                files = {
                    let mut stmt =
                        tx.prepare("SELECT id FROM blobs WHERE address = ?1").map_err(backend)?;
                    let rows = stmt.query_map([address], |r| r.get(0)).map_err(backend)?;
                    rows.collect::<Result<_, _>>().map_err(backend)?
                };
                tx.execute("DELETE FROM blobs WHERE address = ?1", [address]).map_err(backend)?;
                tx.execute(
                    "UPDATE accounts SET deleted_at = ?2, suspended_at = NULL, valid_until = NULL,
                            identity_key = NULL, recovery_key = NULL, operator_key = NULL,
                            device_list = NULL, list_signature = NULL
                     WHERE address = ?1",
                    params![address, now],
                )
                .map_err(backend)?;
            }
        }
        insert_audit(&tx, audit)?;
        tx.commit().map_err(backend)?;
        Ok(files)
    }

    fn barred_devices(&self, grace: u64, now: u64) -> Result<Vec<(u64, Barred)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT d.device_id, a.deleted_at IS NOT NULL, a.suspended_at IS NOT NULL
                 FROM accounts a JOIN devices d ON d.address = a.address
                 WHERE a.deleted_at IS NOT NULL OR a.suspended_at IS NOT NULL
                    OR (a.valid_until IS NOT NULL AND a.valid_until + ?1 <= ?2)",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![to_i64(grace), to_i64(now)], |r| {
                let why = match (r.get::<_, bool>(1)?, r.get::<_, bool>(2)?) {
                    (true, _) => Barred::Deleted,
                    (false, true) => Barred::Suspended,
                    (false, false) => Barred::Expired,
                };
                Ok((to_u64(r.get(0)?), why))
            })
            .map_err(backend)?;
        rows.collect::<Result<_, _>>().map_err(backend)
    }

    fn totals(&self) -> Result<StoreTotals, StoreError> {
        self.conn()
            .query_row(
                "SELECT
                   (SELECT COUNT(*) FROM accounts WHERE deleted_at IS NULL),
                   (SELECT COUNT(*) FROM accounts WHERE suspended_at IS NOT NULL),
                   (SELECT COUNT(*) FROM devices WHERE revoked_at IS NULL),
                   (SELECT COALESCE(SUM(messages), 0) FROM queue_stats),
                   (SELECT COALESCE(SUM(bytes), 0) FROM queue_stats),
                   (SELECT COALESCE(SUM(received), 0) FROM blobs)",
                [],
                |r| {
                    Ok(StoreTotals {
                        accounts: to_u64(r.get(0)?),
                        suspended: to_u64(r.get(1)?),
                        devices: to_u64(r.get(2)?),
                        queued_messages: to_u64(r.get(3)?),
                        queued_bytes: to_u64(r.get(4)?),
                        file_bytes: to_u64(r.get(5)?),
                    })
                },
            )
            .map_err(backend)
    }

    fn record_audit(&self, audit: &AuditRecord) -> Result<(), StoreError> {
        insert_audit(&self.conn(), audit)
    }

    fn audit_log(&self, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT at, actor, action, subject, detail FROM
                   (SELECT * FROM audit ORDER BY id DESC LIMIT ?1) ORDER BY id",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map([limit], |r| {
                Ok(AuditRecord {
                    at: to_u64(r.get(0)?),
                    actor: r.get(1)?,
                    action: r.get(2)?,
                    subject: r.get(3)?,
                    detail: r.get(4)?,
                })
            })
            .map_err(backend)?;
        rows.collect::<Result<_, _>>().map_err(backend)
    }

    fn register(&self, account: &NewAccount<'_>, now: u64) -> Result<u64, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
        let mut term = None;
        if let Some(hash) = account.invite_hash {
            let invite: Option<(i64, i64, Option<i64>)> = tx
                .query_row(
                    "SELECT expires_at, uses_left, valid_for FROM invites WHERE code_hash = ?1",
                    [hash],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(backend)?;
            match invite {
                None => return Err(StoreError::InviteInvalid),
                Some((expires, _, _)) if to_u64(expires) <= now => {
                    return Err(StoreError::InviteExpired);
                }
                Some((_, uses, _)) if uses <= 0 => return Err(StoreError::InviteUsedUp),
                Some((_, _, valid_for)) => term = valid_for.map(|v| now.saturating_add(to_u64(v))),
            }
        }
        let taken: bool = tx
            .query_row("SELECT 1 FROM accounts WHERE address = ?1", [account.address], |_| Ok(()))
            .optional()
            .map_err(backend)?
            .is_some();
        if taken {
            return Err(StoreError::AddressTaken);
        }
        if key_taken(&tx, account.device_key)? {
            return Err(StoreError::DeviceKeyTaken);
        }
        if let Some(hash) = account.invite_hash {
            tx.execute("UPDATE invites SET uses_left = uses_left - 1 WHERE code_hash = ?1", [hash])
                .map_err(backend)?;
        }
        tx.execute(
            "INSERT INTO accounts (address, created_at, valid_until) VALUES (?1, ?2, ?3)",
            params![account.address, to_i64(now), term.map(to_i64)],
        )
        .map_err(backend)?;
        set_list(&tx, account.address, account.list)?;
        tx.execute(
            "INSERT INTO devices (address, device_key, created_at) VALUES (?1, ?2, ?3)",
            params![account.address, account.device_key, to_i64(now)],
        )
        .map_err(backend)?;
        let id = tx.last_insert_rowid();
        tx.commit().map_err(backend)?;
        Ok(to_u64(id))
    }

    fn device(&self, device_id: u64) -> Result<Option<DeviceRecord>, StoreError> {
        self.conn()
            .query_row(
                &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE device_id = ?1"),
                [to_i64(device_id)],
                device_row,
            )
            .optional()
            .map_err(backend)
    }

    fn devices(&self, address: &str) -> Result<Vec<DeviceRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {DEVICE_COLUMNS} FROM devices WHERE address = ?1 ORDER BY device_id"
            ))
            .map_err(backend)?;
        let rows = stmt.query_map([address], device_row).map_err(backend)?;
        rows.collect::<Result<_, _>>().map_err(backend)
    }

    fn add_key_packages(
        &self,
        device_id: u64,
        ciphersuite: u16,
        one_time: &[Vec<u8>],
        last_resort: Option<&[u8]>,
        replace: bool,
    ) -> Result<Vec<KeyPackageStock>, StoreError> {
        {
            let mut conn = self.conn();
            let tx = conn.transaction().map_err(backend)?;
            let (d, cs) = (to_i64(device_id), i64::from(ciphersuite));
            if replace {
                tx.execute(
                    "DELETE FROM key_packages WHERE device_id = ?1 AND ciphersuite = ?2",
                    params![d, cs],
                )
                .map_err(backend)?;
            }
            for kp in one_time {
                tx.execute(
                    "INSERT INTO key_packages (device_id, ciphersuite, data, last_resort)
                     VALUES (?1, ?2, ?3, 0)",
                    params![d, cs, kp],
                )
                .map_err(backend)?;
            }
            if let Some(kp) = last_resort {
                tx.execute(
                    "DELETE FROM key_packages
                     WHERE device_id = ?1 AND ciphersuite = ?2 AND last_resort = 1",
                    params![d, cs],
                )
                .map_err(backend)?;
                tx.execute(
                    "INSERT INTO key_packages (device_id, ciphersuite, data, last_resort)
                     VALUES (?1, ?2, ?3, 1)",
                    params![d, cs, kp],
                )
                .map_err(backend)?;
            }
            tx.commit().map_err(backend)?;
        }
        self.key_package_stock(device_id)
    }

    fn key_package_stock(&self, device_id: u64) -> Result<Vec<KeyPackageStock>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT ciphersuite, SUM(1 - last_resort), SUM(last_resort) FROM key_packages
                 WHERE device_id = ?1 GROUP BY ciphersuite ORDER BY ciphersuite",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map([to_i64(device_id)], |r| {
                Ok(KeyPackageStock {
                    ciphersuite: u16::try_from(r.get::<_, i64>(0)?).unwrap_or(u16::MAX),
                    remaining: to_u64(r.get(1)?),
                    last_resort: r.get::<_, i64>(2)? > 0,
                })
            })
            .map_err(backend)?;
        rows.collect::<Result<_, _>>().map_err(backend)
    }

    fn claim_key_packages(
        &self,
        address: &str,
        only: Option<&[u64]>,
        ciphersuites: &[u16],
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
        let devices: Vec<i64> = {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT device_id FROM devices WHERE address = ?1 AND revoked_at IS NULL
                     ORDER BY device_id",
                )
                .map_err(backend)?;
            let rows = stmt.query_map([address], |r| r.get(0)).map_err(backend)?;
            let all: Vec<i64> = rows.collect::<Result<_, _>>().map_err(backend)?;
            all.into_iter().filter(|d| only.is_none_or(|only| only.contains(&to_u64(*d)))).collect()
        };
        let mut claimed = Vec::with_capacity(devices.len());
        for device in devices {
            // The first suite in the caller's order that the device has any key package of;
            // in it, one-time packages first (last_resort = 0 sorts first), oldest first.
            let mut found: Option<(i64, Vec<u8>, bool)> = None;
            for cs in ciphersuites {
                found = tx
                    .query_row(
                        "SELECT id, data, last_resort FROM key_packages
                         WHERE device_id = ?1 AND ciphersuite = ?2
                         ORDER BY last_resort, id LIMIT 1",
                        params![device, i64::from(*cs)],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? != 0)),
                    )
                    .optional()
                    .map_err(backend)?;
                if found.is_some() {
                    break;
                }
            }
            if let Some((id, data, last_resort)) = found {
                if !last_resort {
                    tx.execute("DELETE FROM key_packages WHERE id = ?1", [id]).map_err(backend)?;
                }
                claimed.push((to_u64(device), data));
            }
        }
        tx.commit().map_err(backend)?;
        Ok(claimed)
    }

    fn submit(&self, submission: &Submission<'_>, now: u64) -> Result<u64, StoreError> {
        self.write(Job::Submit(OwnedSubmission::from(submission), now))
    }

    fn fetch(
        &self,
        device_id: u64,
        after: u64,
        limit: u32,
        not_before: u64,
        max_bytes: usize,
    ) -> Result<QueuePage, StoreError> {
        let max_bytes = max_bytes.min(PAGE_MAX_BYTES);
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, message, created_at FROM queue WHERE device_id = ?1 AND seq > ?2
                 AND created_at >= ?4 ORDER BY seq LIMIT ?3",
            )
            .map_err(backend)?;
        let args =
            params![to_i64(device_id), to_i64(after), i64::from(limit) + 1, to_i64(not_before)];
        let mut rows = stmt
            .query_map(args, |r| {
                Ok((to_u64(r.get(0)?), r.get::<_, Vec<u8>>(1)?, to_u64(r.get(2)?)))
            })
            .map_err(backend)?;
        let mut messages = Vec::new();
        let mut bytes = 0usize;
        for row in rows.by_ref() {
            let (seq, message, at) = row.map_err(backend)?;
            if messages.len() == limit as usize
                || (!messages.is_empty() && bytes + message.len() > max_bytes)
            {
                return Ok((messages, true));
            }
            bytes += message.len();
            messages.push((seq, message, at));
        }
        Ok((messages, false))
    }

    fn sweep(
        &self,
        keep_submissions_until: u64,
        expire_messages_before: u64,
        now: u64,
    ) -> Result<u64, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
        tx.execute(
            "DELETE FROM submissions WHERE created_at < ?1",
            [to_i64(keep_submissions_until)],
        )
        .map_err(backend)?;
        // Too old for the server's time-to-live, or past the message's own expiry.
        const EXPIRED: &str = "created_at < ?1 OR (expires_at IS NOT NULL AND expires_at <= ?2)";
        let args = params![to_i64(expire_messages_before), to_i64(now)];
        let expired: Vec<(i64, i64, i64)> = {
            let mut stmt = tx
                .prepare(&format!(
                    "SELECT device_id, COUNT(*), SUM(LENGTH(message)) FROM queue
                     WHERE {EXPIRED} GROUP BY device_id"
                ))
                .map_err(backend)?;
            let rows =
                stmt.query_map(args, |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).map_err(backend)?;
            rows.collect::<Result<_, _>>().map_err(backend)?
        };
        tx.execute(&format!("DELETE FROM queue WHERE {EXPIRED}"), args).map_err(backend)?;
        for (device, messages, bytes) in &expired {
            uncount(&tx, *device, *messages, *bytes)?;
        }
        tx.commit().map_err(backend)?;
        Ok(expired.iter().map(|(_, m, _)| to_u64(*m)).sum())
    }

    fn device_list(&self, address: &str) -> Result<Option<ListRecord>, StoreError> {
        self.conn()
            .query_row(
                &format!(
                    "SELECT {LIST_COLUMNS} FROM accounts
                     WHERE address = ?1 AND device_list IS NOT NULL"
                ),
                [address],
                list_row,
            )
            .optional()
            .map_err(backend)
    }

    fn all_device_lists(&self) -> Result<Vec<(String, ListRecord)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {LIST_COLUMNS}, address FROM accounts WHERE device_list IS NOT NULL"
            ))
            .map_err(backend)?;
        let rows = stmt.query_map([], |r| Ok((r.get(6)?, list_row(r)?))).map_err(backend)?;
        rows.collect::<Result<_, _>>().map_err(backend)
    }

    fn update_devices(
        &self,
        address: &str,
        expected_version: u64,
        list: &ListRecord,
        new_device: Option<&[u8]>,
        revoke: &[u64],
        now: u64,
    ) -> Result<Option<u64>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
        let current: Option<i64> = tx
            .query_row("SELECT list_version FROM accounts WHERE address = ?1", [address], |r| {
                r.get(0)
            })
            .optional()
            .map_err(backend)?;
        if current.map(to_u64) != Some(expected_version) {
            return Err(StoreError::ListConflict);
        }
        let mut id = None;
        if let Some(key) = new_device {
            if key_taken(&tx, key)? {
                return Err(StoreError::DeviceKeyTaken);
            }
            tx.execute(
                "INSERT INTO devices (address, device_key, created_at) VALUES (?1, ?2, ?3)",
                params![address, key, to_i64(now)],
            )
            .map_err(backend)?;
            id = Some(to_u64(tx.last_insert_rowid()));
        }
        for device in revoke {
            revoke_in(&tx, *device, now)?;
        }
        set_list(&tx, address, list)?;
        tx.commit().map_err(backend)?;
        Ok(id)
    }

    fn revoked_devices(&self) -> Result<Vec<u64>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT device_id FROM devices WHERE revoked_at IS NOT NULL")
            .map_err(backend)?;
        let rows = stmt.query_map([], |r| r.get::<_, i64>(0)).map_err(backend)?;
        rows.map(|r| r.map(to_u64)).collect::<Result<_, _>>().map_err(backend)
    }

    fn touch_device(&self, device_id: u64, now: u64) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE devices SET last_seen = ?2 WHERE device_id = ?1",
                params![to_i64(device_id), to_i64(now)],
            )
            .map_err(backend)?;
        Ok(())
    }

    fn put_wipe(&self, device_id: u64, command: &SignedBlob, now: u64) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
        tx.execute(
            "INSERT OR REPLACE INTO wipes (device_id, command, command_signature, created_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![to_i64(device_id), command.0, command.1, to_i64(now)],
        )
        .map_err(backend)?;
        revoke_in(&tx, device_id, now)?;
        tx.commit().map_err(backend)
    }

    fn wipe(&self, device_id: u64) -> Result<Option<WipeRecord>, StoreError> {
        self.conn()
            .query_row(
                "SELECT command, command_signature, confirmation, confirmation_signature
                 FROM wipes WHERE device_id = ?1",
                [to_i64(device_id)],
                |r| {
                    let confirmation: Option<Vec<u8>> = r.get(2)?;
                    let signature: Option<Vec<u8>> = r.get(3)?;
                    Ok(WipeRecord {
                        command: (r.get(0)?, r.get(1)?),
                        confirmation: confirmation.zip(signature),
                    })
                },
            )
            .optional()
            .map_err(backend)
    }

    fn confirm_wipe(
        &self,
        device_id: u64,
        confirmation: &SignedBlob,
        now: u64,
    ) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE wipes SET confirmation = ?2, confirmation_signature = ?3, confirmed_at = ?4
                 WHERE device_id = ?1",
                params![to_i64(device_id), confirmation.0, confirmation.1, to_i64(now)],
            )
            .map_err(backend)?;
        Ok(())
    }

    fn open_link(&self, link_id: &[u8], request: &[u8], now: u64) -> Result<(), StoreError> {
        let inserted = self
            .conn()
            .execute(
                "INSERT OR IGNORE INTO links (link_id, request, created_at) VALUES (?1, ?2, ?3)",
                params![link_id, request, to_i64(now)],
            )
            .map_err(backend)?;
        if inserted == 0 { Err(StoreError::LinkTaken) } else { Ok(()) }
    }

    fn link(&self, link_id: &[u8]) -> Result<Option<LinkRecord>, StoreError> {
        self.conn()
            .query_row(
                "SELECT request, response, history FROM links WHERE link_id = ?1",
                [link_id],
                |r| Ok(LinkRecord { request: r.get(0)?, response: r.get(1)?, history: r.get(2)? }),
            )
            .optional()
            .map_err(backend)
    }

    fn reply_link(
        &self,
        link_id: &[u8],
        response: Option<&[u8]>,
        history: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
        let current = tx
            .query_row(
                "SELECT response IS NOT NULL, history IS NOT NULL FROM links WHERE link_id = ?1",
                [link_id],
                |r| Ok((r.get::<_, bool>(0)?, r.get::<_, bool>(1)?)),
            )
            .optional()
            .map_err(backend)?;
        let Some((has_response, has_history)) = current else {
            return Err(StoreError::UnknownLink);
        };
        if (response.is_some() && has_response) || (history.is_some() && has_history) {
            return Err(StoreError::LinkTaken);
        }
        if let Some(r) = response {
            tx.execute("UPDATE links SET response = ?2 WHERE link_id = ?1", params![link_id, r])
                .map_err(backend)?;
        }
        if let Some(h) = history {
            tx.execute("UPDATE links SET history = ?2 WHERE link_id = ?1", params![link_id, h])
                .map_err(backend)?;
        }
        tx.commit().map_err(backend)
    }

    fn expire_links(&self, before: u64) -> Result<u64, StoreError> {
        let n = self
            .conn()
            .execute("DELETE FROM links WHERE created_at < ?1", [to_i64(before)])
            .map_err(backend)?;
        Ok(n as u64)
    }

    fn ack(&self, device_id: u64, up_to: u64) -> Result<u64, StoreError> {
        self.write(Job::Ack(device_id, up_to))
    }

    fn create_blob(&self, blob: &BlobRecord, quota: u64) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
        let used: i64 = tx
            .query_row(
                "SELECT COALESCE(SUM(size), 0) FROM blobs WHERE address = ?1",
                [&blob.address],
                |r| r.get(0),
            )
            .map_err(backend)?;
        let used = to_u64(used);
        if used.saturating_add(blob.size) > quota {
            return Err(StoreError::BlobQuota { used, quota });
        }
        tx.execute(
            "INSERT INTO blobs (id, device_id, address, size, received, created_at, expires_at,
                                lifetime)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                blob.id,
                to_i64(blob.device),
                blob.address,
                to_i64(blob.size),
                to_i64(blob.received),
                to_i64(blob.created_at),
                to_i64(blob.expires_at),
                to_i64(blob.lifetime)
            ],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)
    }

    fn blob(&self, id: &[u8]) -> Result<Option<BlobRecord>, StoreError> {
        self.conn()
            .query_row(
                "SELECT id, device_id, address, size, received, created_at, expires_at, lifetime
                 FROM blobs WHERE id = ?1",
                [id],
                |r| {
                    Ok(BlobRecord {
                        id: r.get(0)?,
                        device: to_u64(r.get(1)?),
                        address: r.get(2)?,
                        size: to_u64(r.get(3)?),
                        received: to_u64(r.get(4)?),
                        created_at: to_u64(r.get(5)?),
                        expires_at: to_u64(r.get(6)?),
                        lifetime: to_u64(r.get(7)?),
                    })
                },
            )
            .optional()
            .map_err(backend)
    }

    fn blob_received(&self, id: &[u8], received: u64, expires_at: u64) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE blobs SET received = ?2, expires_at = ?3 WHERE id = ?1",
                params![id, to_i64(received), to_i64(expires_at)],
            )
            .map_err(backend)?;
        Ok(())
    }

    fn expired_blobs(&self, now: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT id FROM blobs WHERE expires_at <= ?1").map_err(backend)?;
        let rows = stmt.query_map([to_i64(now)], |r| r.get(0)).map_err(backend)?;
        rows.collect::<Result<_, _>>().map_err(backend)
    }

    fn delete_blob(&self, id: &[u8]) -> Result<(), StoreError> {
        self.conn().execute("DELETE FROM blobs WHERE id = ?1", [id]).map_err(backend)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewAccount;

    /// A group stored before rosters existed keeps working, and its next commit sets a roster
    /// that then shuts out everyone else.
    #[test]
    fn groups_from_before_rosters_are_adopted_by_their_next_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.db");
        let store = SqliteStore::open(&path).expect("store");
        let list = crate::store::tests::list(1);
        let reg = |address: &str, key: &[u8]| {
            let account = NewAccount { address, device_key: key, invite_hash: None, list: &list };
            store.register(&account, 1).expect("register")
        };
        let (a, b, m) = (reg("a@x", b"a"), reg("b@x", b"b"), reg("m@x", b"m"));
        Connection::open(&path)
            .expect("open")
            .execute("INSERT INTO groups (group_id, epoch) VALUES (?1, 3)", [&b"old"[..]])
            .expect("an old group");
        let (to_a, to_b) = ([a], [b]);
        let sub = |sender, ordering, to: &'static [u64]| Submission {
            sender,
            id: None,
            digest: [0; 32],
            group_id: b"old",
            ordering,
            deliveries: vec![(to, &b"m"[..])],
            joining: &[],
            removed: &[],
            limits: QueueLimits::UNLIMITED,
            expires_at: None,
        };
        let to_a: &'static [u64] = Box::leak(Box::new(to_a));
        let to_b: &'static [u64] = Box::leak(Box::new(to_b));
        assert_eq!(store.submit(&sub(a, Ordering::NotBefore(3), to_b), 1).expect("unchecked"), 3);
        assert_eq!(store.submit(&sub(a, Ordering::Advance(3), to_b), 1).expect("commit"), 4);
        assert_eq!(store.submit(&sub(b, Ordering::NotBefore(4), to_a), 1).expect("member"), 4);
        assert!(matches!(
            store.submit(&sub(m, Ordering::NotBefore(4), to_a), 1),
            Err(StoreError::NotMember { device }) if device == m
        ));
    }
}
