//! The embedded SQLite store.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, mpsc};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use sotto_core::queue::Sealer;

use super::{
    AccountChange, AccountRecord, AuditRecord, Barred, BlobRecord, Committed, DeviceRecord,
    GroupAuth, GroupCredential, InviteRecord, KeyPackageStock, LinkRecord, ListRecord, NewAccount,
    Ordering, PAGE_MAX_BYTES, Pending, QueueLimits, QueuePage, QueuedCopy, QueuedSink, SignedBlob,
    Store, StoreError, StoreTotals, Submission, Submitted, To, WipeRecord,
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
    // Sealed rosters: a group's roster is kept only sealed under its epoch's credential,
    // which clients hold. Rosters in the clear (`group_members`) stay until their group's
    // next submission seals them. Submissions no longer record their sender (device 0).
    r#"
ALTER TABLE groups ADD COLUMN sealed BLOB;
ALTER TABLE groups ADD COLUMN past BLOB;
UPDATE OR IGNORE submissions SET device_id = 0;
DELETE FROM submissions WHERE device_id != 0;
"#,
    // Queue positions count per device, so that the copies of one submission get unrelated
    // positions in each queue (a global sequence showed them side by side). Every device
    // goes on from the highest position given out so far: no client mistakes a new message
    // for one it processed.
    r#"
ALTER TABLE devices ADD COLUMN queue_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN queue_key BLOB;
UPDATE devices SET queue_seq = MAX(
    COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'queue'), 0),
    COALESCE((SELECT MAX(seq) FROM queue), 0));
CREATE TABLE queue_per_device (
    device_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    message BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    PRIMARY KEY (device_id, seq)
) WITHOUT ROWID;
INSERT INTO queue_per_device SELECT device_id, seq, message, created_at, expires_at FROM queue;
DROP TABLE queue;
ALTER TABLE queue_per_device RENAME TO queue;
CREATE INDEX queue_by_age ON queue(created_at);
CREATE INDEX queue_by_expiry ON queue(expires_at) WHERE expires_at IS NOT NULL;
"#,
    // Queued copies keyed by one integer (see `QueueSpan`): a device's queue number, given
    // once and never moved, above the copy's local position, counting the device's copies. A
    // table with row ids keeps a copy of 2 KiB in its leaf page, where a table without them
    // (at most about 1 KiB of a row in the leaf on 4 KiB pages) put the rest in an overflow
    // page of its own, so every append, read and delete touched two pages; a device's copies
    // stay side by side, as before. The small columns come first, read without passing the
    // message. `seq`, the position clients see, is kept beside: it moves ahead on a restore
    // (backup.rs), which the local position does not.
    r#"
CREATE TEMP TABLE queue_numbers_fit (devices INTEGER CHECK (devices <= 8388607));
INSERT INTO queue_numbers_fit SELECT COUNT(*) FROM devices;
DROP TABLE queue_numbers_fit;
ALTER TABLE devices ADD COLUMN queue_no INTEGER;
ALTER TABLE devices ADD COLUMN queue_local INTEGER NOT NULL DEFAULT 0;
UPDATE devices SET queue_no = numbered.n
    FROM (SELECT device_id, ROW_NUMBER() OVER (ORDER BY device_id) AS n FROM devices) AS numbered
    WHERE devices.device_id = numbered.device_id;
CREATE UNIQUE INDEX devices_by_queue_no ON devices(queue_no);
CREATE INDEX devices_revoked_with_queue_no ON devices(queue_no)
    WHERE revoked_at IS NOT NULL AND queue_no IS NOT NULL;
CREATE TABLE queue_rows (
    id INTEGER PRIMARY KEY,
    device_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    message BLOB NOT NULL
);
INSERT INTO queue_rows (id, device_id, seq, created_at, expires_at, message)
    SELECT (d.queue_no << 40) | ROW_NUMBER() OVER (PARTITION BY q.device_id ORDER BY q.seq),
           q.device_id, q.seq, q.created_at, q.expires_at, q.message
    FROM queue q JOIN devices d ON d.device_id = q.device_id
    ORDER BY q.device_id, q.seq;
UPDATE devices SET queue_local = (SELECT COUNT(*) FROM queue WHERE queue.device_id = devices.device_id);
DROP TABLE queue;
ALTER TABLE queue_rows RENAME TO queue;
CREATE INDEX queue_by_age ON queue(created_at);
CREATE INDEX queue_by_expiry ON queue(expires_at) WHERE expires_at IS NOT NULL;
"#,
];

/// Bits of a queued copy's id that hold its local position; the device's queue number is
/// above them. Local positions reach 2⁴⁰ per device (a million copies a day for three
/// thousand years), queue numbers 2²³ (devices not revoked at once: a revoked device's
/// number, its queue emptied, goes to the next device registered).
const LOCAL_BITS: u32 = 40;
/// The largest queue number (the migration to queue numbers checks it as a literal).
const MAX_QUEUE_NO: i64 = (1 << (63 - LOCAL_BITS)) - 1;

/// The ids of one device's queued copies: `queue_no << 40 | local`, from `first` to `last`
/// inclusive. Within it, ids and the positions clients see (`seq`) grow together.
#[derive(Debug, Clone, Copy)]
struct QueueSpan {
    first: i64,
    last: i64,
}

impl QueueSpan {
    /// The span of queue number `queue_no`, which must be in range: no number outside it is
    /// ever given, and one read from the database that is refuses rather than lands on
    /// another device's queue.
    fn of(queue_no: i64) -> Result<Self, StoreError> {
        if !(1..=MAX_QUEUE_NO).contains(&queue_no) {
            return Err(StoreError::Backend(format!("queue number {queue_no} is out of range")));
        }
        let base = queue_no << LOCAL_BITS;
        Ok(QueueSpan { first: base, last: base | ((1 << LOCAL_BITS) - 1) })
    }

    /// The span of device `device`'s queue; an empty one for a device with none (unknown,
    /// or revoked and its number given to another).
    fn for_device(conn: &Connection, device: u64) -> Result<Self, StoreError> {
        let no: Option<Option<i64>> = conn
            .prepare_cached("SELECT queue_no FROM devices WHERE device_id = ?1")
            .and_then(|mut q| q.query_row([to_i64(device)], |r| r.get(0)).optional())
            .map_err(backend)?;
        match no.flatten() {
            Some(no) => QueueSpan::of(no),
            None => Ok(QueueSpan { first: 0, last: -1 }),
        }
    }

    /// The id of the copy at local position `local`.
    fn id(self, local: i64) -> i64 {
        self.first | (local & ((1 << LOCAL_BITS) - 1))
    }

    /// The first copy at or after id `from` and at or before `to`: its id and `seq`.
    fn probe(
        self,
        conn: &Connection,
        from: i64,
        to: i64,
    ) -> Result<Option<(i64, u64)>, StoreError> {
        conn.prepare_cached(
            "SELECT id, seq FROM queue WHERE id BETWEEN ?1 AND ?2 ORDER BY id LIMIT 1",
        )
        .and_then(|mut q| {
            q.query_row([from, to], |r| Ok((r.get(0)?, to_u64(r.get(1)?)))).optional()
        })
        .map_err(backend)
    }

    /// The id of the first copy whose `seq` is above `after`, if any. Usually the queue's
    /// first copy (what came before was acknowledged); otherwise a binary search over ids,
    /// two lookups a halving, since `seq` grows with the id but may jump (a restore).
    fn first_after(self, conn: &Connection, after: u64) -> Result<Option<i64>, StoreError> {
        let Some((first, seq)) = self.probe(conn, self.first, self.last)? else {
            return Ok(None);
        };
        if seq > after {
            return Ok(Some(first));
        }
        let last: Option<(i64, u64)> = conn
            .prepare_cached(
                "SELECT id, seq FROM queue WHERE id BETWEEN ?1 AND ?2 ORDER BY id DESC LIMIT 1",
            )
            .and_then(|mut q| {
                q.query_row([self.first, self.last], |r| Ok((r.get(0)?, to_u64(r.get(1)?))))
                    .optional()
            })
            .map_err(backend)?;
        let Some(last) = last.filter(|(_, seq)| *seq > after) else {
            return Ok(None);
        };
        // Copy `a` has a seq at most `after`, copy `b` one above it, and no copy lies in
        // [c, b); each turn halves c - a.
        let (mut a, mut b, mut c) = (first, last.0, last.0);
        loop {
            // The copy after `a` is the answer if it is above `after`.
            match self.probe(conn, a + 1, b)? {
                Some((id, seq)) if seq > after => return Ok(Some(id)),
                Some((id, _)) => a = id,
                None => return Ok(Some(b)),
            }
            let mid = a + (c - a) / 2;
            if mid <= a {
                continue;
            }
            match self.probe(conn, mid, b)? {
                Some((id, seq)) if seq <= after => a = id,
                Some((id, _)) => (b, c) = (id, mid),
                None => c = mid,
            }
        }
    }

    /// The ids of the copies whose `seq` is at most `up_to`: `(first, last)`, maybe empty.
    fn up_to(self, conn: &Connection, up_to: u64) -> Result<(i64, i64), StoreError> {
        Ok(match self.first_after(conn, up_to)? {
            Some(id) => (self.first, id - 1),
            None => (self.first, self.last),
        })
    }
}

/// A [`Store`] on one SQLite database file (WAL mode, `synchronous=FULL`: a committed
/// transaction is on disk).
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// A read-only connection for queue fetches (file databases only).
    reader: Option<Mutex<Connection>>,
    /// Submissions and acknowledgements go through the writer thread (group commit).
    writer: mpsc::Sender<Job>,
    /// Dropped with the store, which ends the checkpoint thread (file databases only).
    checkpoints: Option<mpsc::Sender<()>>,
    /// Where the writer publishes what it queued (see [`Store::publish_queued_to`]).
    sink: Arc<std::sync::OnceLock<QueuedSink>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("reader", &self.reader.is_some())
            .field("publishes", &self.sink.get().is_some())
            .finish_non_exhaustive()
    }
}

/// How often the checkpoint thread copies the write-ahead log into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// The checkpoint thread: a passive checkpoint every [`CHECKPOINT_EVERY`] (it copies what no
/// reader still needs and waits for nobody), until the store is dropped.
fn checkpoints(conn: &Connection, stopped: &mpsc::Receiver<()>) {
    // Said once when checkpoints start failing (a full disk, say) and once when they work again.
    let mut failing = false;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0)) {
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "checkpoints of the write-ahead log fail");
            }
            Ok(_) if failing => {
                failing = false;
                tracing::info!("checkpoints of the write-ahead log work again");
            }
            _ => {}
        }
    }
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
        let mut store = Self::from_connection(Connection::open(path).map_err(backend)?)?;
        // Deliveries read on a connection of their own: in WAL mode they see every committed
        // write without waiting for the writer's next commit and its fsync.
        let reader = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(backend)?;
        reader.busy_timeout(std::time::Duration::from_secs(10)).map_err(backend)?;
        store.reader = Some(Mutex::new(reader));
        // The write-ahead log is copied back into the database by a thread of its own, not
        // by whichever commit crosses SQLite's threshold: the writer's group commits no
        // longer stall for it.
        let checkpointer = Connection::open(path).map_err(backend)?;
        checkpointer.busy_timeout(std::time::Duration::from_secs(10)).map_err(backend)?;
        store.conn().pragma_update(None, "wal_autocheckpoint", 0).map_err(backend)?;
        let (stop, stopped) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("sotto-store-checkpoint".into())
            .spawn(move || checkpoints(&checkpointer, &stopped))
            .map_err(|e| StoreError::Backend(format!("cannot start the checkpoint thread: {e}")))?;
        store.checkpoints = Some(stop);
        Ok(store)
    }

    /// An in-memory database, for unit tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::from_connection(Connection::open_in_memory().map_err(backend)?)
    }

    fn from_connection(mut conn: Connection) -> Result<Self, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(backend)?;
        // The writer's hot statements (a submission uses a dozen) all stay prepared.
        conn.set_prepared_statement_cache_capacity(64);
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
        let sink = Arc::new(std::sync::OnceLock::new());
        let publish = sink.clone();
        std::thread::Builder::new()
            .name("sotto-store-writer".into())
            .spawn(move || writer(shared, rx, &publish))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore { conn, reader: None, writer: tx, checkpoints: None, sink })
    }

    /// Hands a write to the writer thread; its answer comes once it is committed (or
    /// refused).
    fn hand_over(&self, job: Job) {
        if let Err(mpsc::SendError(job)) = self.writer.send(job) {
            job.answer(Err(writer_stopped()));
        }
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

/// Adds a device with a queue number: a revoked device's, whose queue was emptied when it
/// was revoked and is never filled again, or else the next one. Numbers in use are never more
/// than the devices not revoked, however many come and go. Returns the new device's id.
fn insert_device(tx: &Connection, address: &str, key: &[u8], now: u64) -> Result<i64, StoreError> {
    let free: Option<(i64, i64)> = tx
        .prepare_cached(
            "SELECT device_id, queue_no FROM devices
             WHERE revoked_at IS NOT NULL AND queue_no IS NOT NULL LIMIT 1",
        )
        .and_then(|mut q| q.query_row([], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(backend)?;
    let queue_no = match free {
        Some((revoked, no)) => {
            tx.execute("UPDATE devices SET queue_no = NULL WHERE device_id = ?1", [revoked])
                .map_err(backend)?;
            // Nothing can be left of its queue; a copy left over would be the new device's.
            tx.execute("DELETE FROM queue WHERE id BETWEEN ?1 AND ?2", {
                let span = QueueSpan::of(no)?;
                [span.first, span.last]
            })
            .map_err(backend)?;
            no
        }
        None => tx
            .query_row("SELECT COALESCE(MAX(queue_no), 0) + 1 FROM devices", [], |r| r.get(0))
            .map_err(backend)?,
    };
    if queue_no > MAX_QUEUE_NO {
        return Err(StoreError::Backend(format!(
            "this server has {MAX_QUEUE_NO} devices that are not revoked, its most"
        )));
    }
    tx.execute(
        "INSERT INTO devices (address, device_key, created_at, queue_no) VALUES (?1, ?2, ?3, ?4)",
        params![address, key, to_i64(now), queue_no],
    )
    .map_err(backend)?;
    Ok(tx.last_insert_rowid())
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
    let span = QueueSpan::for_device(tx, device)?;
    tx.execute("DELETE FROM queue WHERE id BETWEEN ?1 AND ?2", [span.first, span.last])
        .map_err(backend)?;
    tx.execute("DELETE FROM queue_stats WHERE device_id = ?1", [d]).map_err(backend)?;
    tx.execute("DELETE FROM key_packages WHERE device_id = ?1", [d]).map_err(backend)?;
    Ok(())
}

/// Takes messages that left a queue off its counters.
fn uncount(tx: &Connection, device: i64, messages: i64, bytes: i64) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE queue_stats SET messages = MAX(messages - ?2, 0), bytes = MAX(bytes - ?3, 0)
         WHERE device_id = ?1",
    )
    .and_then(|mut q| q.execute(params![device, messages, bytes]))
    .map_err(backend)?;
    Ok(())
}

/// Most jobs committed together.
const MAX_BATCH: usize = 512;

/// An owned copy of a [`Submission`], to hand to the writer thread.
#[derive(Debug)]
struct OwnedSubmission {
    id: Option<Vec<u8>>,
    group_id: Vec<u8>,
    digest: [u8; 32],
    ordering: Ordering,
    to: OwnedTo,
    message: Vec<u8>,
    welcome: Option<(Vec<u64>, Vec<u8>)>,
    removed: Vec<u64>,
    limits: QueueLimits,
    expires_at: Option<u64>,
}

#[derive(Debug)]
enum OwnedTo {
    Group {
        credential: GroupCredential,
        next: Option<GroupCredential>,
        device: Option<u64>,
        roster: Option<Vec<u64>>,
    },
    Devices(Vec<u64>),
}

impl From<&Submission<'_>> for OwnedSubmission {
    fn from(s: &Submission<'_>) -> Self {
        OwnedSubmission {
            id: s.id.map(<[u8]>::to_vec),
            digest: s.digest,
            group_id: s.group_id.to_vec(),
            ordering: s.ordering,
            to: match &s.to {
                To::Group(a) => OwnedTo::Group {
                    credential: a.credential.clone(),
                    next: a.next.cloned(),
                    device: a.device,
                    roster: a.roster.map(<[u64]>::to_vec),
                },
                To::Devices(d) => OwnedTo::Devices(d.to_vec()),
            },
            message: s.message.to_vec(),
            welcome: s.welcome.map(|(r, m)| (r.to_vec(), m.to_vec())),
            removed: s.removed.to_vec(),
            expires_at: s.expires_at,
            limits: s.limits,
        }
    }
}

impl OwnedSubmission {
    fn borrowed(&self) -> Submission<'_> {
        Submission {
            id: self.id.as_deref(),
            digest: self.digest,
            group_id: &self.group_id,
            ordering: self.ordering,
            to: match &self.to {
                OwnedTo::Group { credential, next, device, roster } => To::Group(GroupAuth {
                    credential,
                    next: next.as_ref(),
                    device: *device,
                    roster: roster.as_deref(),
                }),
                OwnedTo::Devices(d) => To::Devices(d),
            },
            message: &self.message,
            welcome: self.welcome.as_ref().map(|(r, m)| (r.as_slice(), m.as_slice())),
            removed: &self.removed,
            limits: self.limits,
            expires_at: self.expires_at,
        }
    }
}

/// A write for the writer thread, and where its answer goes.
#[derive(Debug)]
enum Job {
    Submit(Box<OwnedSubmission>, u64, Answer<Submitted>),
    Ack(u64, u64, Answer<u64>),
}

/// What a job did.
#[derive(Debug)]
enum Done {
    Submitted(Submitted),
    Acked(u64),
}

impl Job {
    /// Whether nobody waits for this job's answer any more.
    fn unwanted(&self) -> bool {
        match self {
            Job::Submit(_, _, to) => to.gone(),
            Job::Ack(_, _, to) => to.gone(),
        }
    }

    /// Sends the job's answer.
    fn answer(self, result: Result<Done, StoreError>) {
        fn other<T>() -> Result<T, StoreError> {
            Err(StoreError::Backend("the writer answered another job".into()))
        }
        match self {
            Job::Submit(_, _, to) => to.send(result.and_then(|d| match d {
                Done::Submitted(s) => Ok(s),
                Done::Acked(_) => other(),
            })),
            Job::Ack(_, _, to) => to.send(result.and_then(|d| match d {
                Done::Acked(n) => Ok(n),
                Done::Submitted(_) => other(),
            })),
        }
    }
}

fn writer_stopped() -> StoreError {
    StoreError::Backend("the store's writer thread stopped".into())
}

/// Where a job's answer goes: an async caller's channel, or a thread that blocks on it.
#[derive(Debug)]
enum Answer<T> {
    Async(tokio::sync::oneshot::Sender<Result<T, StoreError>>),
    Blocking(mpsc::SyncSender<Result<T, StoreError>>),
}

impl<T> Answer<T> {
    /// Whether an async caller has gone away (its request was dropped with its connection).
    fn gone(&self) -> bool {
        matches!(self, Answer::Async(to) if to.is_closed())
    }

    fn send(self, result: Result<T, StoreError>) {
        // A caller that went away no longer wants it.
        let _ = match self {
            Answer::Async(to) => to.send(result).map_err(drop),
            Answer::Blocking(to) => to.send(result).map_err(drop),
        };
    }
}

/// A channel for a caller that blocks until the answer comes (any thread, one that drives
/// async tasks too, as before the writer answered async callers).
fn blocking_answer<T>() -> (Answer<T>, mpsc::Receiver<Result<T, StoreError>>) {
    let (to, from) = mpsc::sync_channel(1);
    (Answer::Blocking(to), from)
}

/// Waits for the answer on a [`blocking_answer`] channel.
fn wait<T>(from: mpsc::Receiver<Result<T, StoreError>>) -> Result<T, StoreError> {
    from.recv().map_err(|_| writer_stopped())?
}

/// The writer thread: takes every job waiting, runs each in a savepoint of one transaction and
/// commits once, so concurrent writers share one fsync (group commit). Each job answers only
/// after the commit that made it durable; a failed job rolls back alone.
fn writer(
    conn: Arc<Mutex<Connection>>,
    jobs: mpsc::Receiver<Job>,
    sink: &std::sync::OnceLock<QueuedSink>,
) {
    let mut sealers = Sealers::default();
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
        let mut results = run_batch(&mut conn, &batch, &mut sealers);
        drop(conn);
        let metrics = &crate::metrics::METRICS;
        metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
        metrics.commit_batch.observe(batch.len() as f64);
        if let Some(sink) = sink.get() {
            publish(sink, &mut results);
        }
        for (job, result) in batch.into_iter().zip(results) {
            job.answer(result);
        }
    }
}

/// Hands what a committed batch queued to `sink`, taking the copies out of the answers.
fn publish(sink: &QueuedSink, results: &mut [Result<Done, StoreError>]) {
    let mut committed = Committed::default();
    for result in results {
        if let Ok(Done::Submitted(s)) = result {
            committed.copies.append(&mut s.copies);
            committed.devices.extend_from_slice(&s.recipients);
        }
    }
    if committed.devices.is_empty() {
        return;
    }
    committed.devices.sort_unstable();
    committed.devices.dedup();
    // A sink that panicked must not take the writer, and every later write, with it.
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink(committed))).is_err() {
        tracing::error!("handing queued copies to live connections failed; they read the store");
    }
}

fn run_batch(
    conn: &mut Connection,
    batch: &[Job],
    sealers: &mut Sealers,
) -> Vec<Result<Done, StoreError>> {
    let fail_all = |e: rusqlite::Error| {
        let e = backend(e);
        batch.iter().map(|_| Err(clone_error(&e))).collect()
    };
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return fail_all(e),
    };
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        // A job whose caller went away before it ran is not run: nobody learns its outcome,
        // so the client repeats it (submissions carry their id, acknowledgements are
        // cumulative), and requests dropped by the thousand cost the writer nothing.
        if job.unwanted() {
            results.push(Err(StoreError::Backend("the caller went away".into())));
            continue;
        }
        let sp = match tx.savepoint() {
            Ok(sp) => sp,
            Err(e) => return fail_all(e),
        };
        let result = match job {
            Job::Submit(s, now, _) => {
                submit_in(&sp, &s.borrowed(), *now, sealers).map(Done::Submitted)
            }
            Job::Ack(device, up_to, _) => ack_in(&sp, *device, *up_to).map(Done::Acked),
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
fn submit_in(
    tx: &Connection,
    submission: &Submission<'_>,
    now: u64,
    sealers: &mut Sealers,
) -> Result<Submitted, StoreError> {
    if let Some(id) = submission.id {
        let seen: Option<(i64, Option<Vec<u8>>)> = tx
            .prepare_cached(
                "SELECT epoch, digest FROM submissions WHERE device_id = 0 AND submission_id = ?1",
            )
            .and_then(|mut q| q.query_row([id], |r| Ok((r.get(0)?, r.get(1)?))).optional())
            .map_err(backend)?;
        if let Some((epoch, digest)) = seen {
            if digest.is_some_and(|d| d != submission.digest) {
                return Err(StoreError::SubmissionConflict);
            }
            return Ok(Submitted { epoch: to_u64(epoch), ..Submitted::default() });
        }
    }
    // (The group's past verifiers, 2 KiB, are read only when they are needed.)
    let group = group_row(tx, submission.group_id)?;
    // Restored from a backup, the group may have moved on meanwhile: its members' epoch is
    // taken as it comes, until a submission seals its roster again.
    let restored = group.as_ref().is_some_and(|g| g.restored);
    let current = group.as_ref().map_or(0, |g| g.epoch);
    // A sealed group checks the credential first: a stranger learns nothing, not even the
    // epoch; a member that is behind is told to catch up.
    let opened = match (&submission.to, &group) {
        (To::Group(auth), Some(g)) if !g.restored => match g.sealed.as_deref() {
            Some(sealed) => Some(open_sealed(tx, auth, submission.group_id, g, sealed)?),
            None => None,
        },
        _ => None,
    };
    let stale = match submission.ordering {
        Ordering::None => false,
        Ordering::NotBefore(e) => e < current,
        Ordering::AtEpoch(e) | Ordering::Advance(e) => e != current && !(restored && e > current),
    };
    if stale {
        return Err(StoreError::StaleEpoch { current });
    }
    // The epoch the submission was made in: the group's, or a restored group's as it comes.
    let made_in = match submission.ordering {
        Ordering::None => current,
        Ordering::NotBefore(e) | Ordering::AtEpoch(e) | Ordering::Advance(e) => e.max(current),
    };
    let (auth, roster) = match (&submission.to, opened) {
        (To::Devices(devices), _) => (None, devices.iter().copied().collect::<BTreeSet<u64>>()),
        (To::Group(auth), Some(roster)) => (Some(auth), roster),
        (To::Group(auth), None) => {
            (Some(auth), roster_of(tx, submission, auth, group.as_ref(), made_in)?)
        }
    };
    let mut out = Submitted { epoch: current, ..Submitted::default() };
    let mut queue = QueueWriter::new(tx, submission, now, sealers)?;
    for &device in &roster {
        queue.put(device, submission.message, &mut out)?;
    }
    let joining = submission.welcome.map_or(&[][..], |(to, _)| to);
    if let Some((to, welcome)) = submission.welcome {
        for &device in to {
            queue.put(device, welcome, &mut out)?;
        }
    }
    match (submission.ordering, auth) {
        (Ordering::Advance(e), Some(auth)) => {
            // The new roster: the members before, less those removed and revoked, plus
            // those added; readable only with the next epoch's credential.
            let next = auth.next.ok_or(StoreError::NotMember)?;
            let mut after = roster;
            after.extend(joining.iter().copied());
            for d in submission.removed.iter().chain(&out.dropped) {
                after.remove(d);
            }
            let mut past = past_of(tx, submission.group_id)?;
            past.extend_from_slice(&auth.credential.verifier());
            seal_group(tx, submission.group_id, e + 1, next, &after, &past)?;
            out.epoch = e + 1;
        }
        (Ordering::Advance(e), None) => {
            tx.execute(
                "INSERT INTO groups (group_id, epoch) VALUES (?1, ?2)
                 ON CONFLICT (group_id) DO UPDATE SET epoch = excluded.epoch, restored = 0",
                params![submission.group_id, to_i64(e + 1)],
            )
            .map_err(backend)?;
            out.epoch = e + 1;
        }
        (_, Some(auth)) if group.as_ref().is_none_or(|g| g.sealed.is_none() || g.restored) => {
            // The first submission to a group without a sealed roster seals it.
            seal_group(tx, submission.group_id, made_in, auth.credential, &roster, &[])?;
            out.epoch = made_in;
        }
        _ => {}
    }
    if let Some(id) = submission.id {
        tx.prepare_cached(
            "INSERT INTO submissions (device_id, submission_id, epoch, created_at, digest)
             VALUES (0, ?1, ?2, ?3, ?4)",
        )
        .and_then(|mut q| {
            q.execute(params![id, to_i64(out.epoch), to_i64(now), &submission.digest[..]])
        })
        .map_err(backend)?;
    }
    Ok(out)
}

/// A group as stored, if it is.
fn group_row(tx: &Connection, group_id: &[u8]) -> Result<Option<GroupRow>, StoreError> {
    tx.prepare_cached("SELECT epoch, roster, restored, sealed FROM groups WHERE group_id = ?1")
        .and_then(|mut q| {
            q.query_row([group_id], |r| {
                Ok(GroupRow {
                    epoch: to_u64(r.get(0)?),
                    plain_roster: r.get::<_, i64>(1)? != 0,
                    restored: r.get::<_, i64>(2)? != 0,
                    sealed: r.get(3)?,
                })
            })
            .optional()
        })
        .map_err(backend)
}

/// A group as stored.
struct GroupRow {
    epoch: u64,
    /// Its roster is in `group_members`, in the clear (kept from before sealed rosters).
    plain_roster: bool,
    restored: bool,
    sealed: Option<Vec<u8>>,
}

/// A group's verifiers of its last epochs' credentials ([`PAST_ENTRY`] bytes each), oldest
/// first, with random ones before them up to [`PAST_EPOCHS`], so the count says nothing.
fn past_of(tx: &Connection, group_id: &[u8]) -> Result<Vec<u8>, StoreError> {
    let past: Option<Option<Vec<u8>>> = tx
        .prepare_cached("SELECT past FROM groups WHERE group_id = ?1")
        .and_then(|mut q| q.query_row([group_id], |r| r.get(0)).optional())
        .map_err(backend)?;
    Ok(past.flatten().unwrap_or_default())
}

/// How many earlier epochs a member may be behind and still be told to catch up (further
/// behind, it is refused as a stranger is).
const PAST_EPOCHS: usize = 64;
const PAST_ENTRY: usize = 32;

/// Opens a sealed roster with the submission's credential: the roster, or
/// [`StoreError::StaleEpoch`] for a credential of one of the group's recent epochs, or
/// [`StoreError::NotMember`].
fn open_sealed(
    tx: &Connection,
    auth: &GroupAuth<'_>,
    group_id: &[u8],
    group: &GroupRow,
    sealed: &[u8],
) -> Result<BTreeSet<u64>, StoreError> {
    if let Ok(roster) =
        sotto_core::roster::open_roster(auth.credential, group_id, group.epoch, sealed)
    {
        return Ok(roster.into_iter().collect());
    }
    let verifier = auth.credential.verifier();
    if past_of(tx, group_id)?.chunks_exact(PAST_ENTRY).any(|entry| entry == verifier) {
        return Err(StoreError::StaleEpoch { current: group.epoch });
    }
    Err(StoreError::NotMember)
}

/// The roster a group submission goes to, once the submission has shown it may be made (see
/// [`crate::store::GroupAuth`]).
fn roster_of(
    tx: &Connection,
    submission: &Submission<'_>,
    auth: &GroupAuth<'_>,
    group: Option<&GroupRow>,
    made_in: u64,
) -> Result<BTreeSet<u64>, StoreError> {
    if let Some(g) = group
        && let Some(sealed) = g.sealed.as_deref()
    {
        let opened =
            sotto_core::roster::open_roster(auth.credential, submission.group_id, made_in, sealed);
        match opened {
            Ok(roster) => return Ok(roster.into_iter().collect()),
            // Restored from a backup, the roster may be of an epoch the group has left: it
            // is sealed again like a group that had none.
            Err(_) if g.restored => {}
            Err(_) => return Err(StoreError::NotMember),
        }
    }
    let device = auth.device.ok_or(StoreError::GroupUnsealed)?;
    let roster: BTreeSet<u64> = match group {
        None => BTreeSet::from([device]),
        Some(g) if g.plain_roster => {
            let mut members = tx
                .prepare_cached("SELECT device_id FROM group_members WHERE group_id = ?1")
                .map_err(backend)?;
            let rows = members
                .query_map([submission.group_id], |r| r.get::<_, i64>(0))
                .map_err(backend)?;
            rows.map(|r| r.map(to_u64)).collect::<Result<_, _>>().map_err(backend)?
        }
        Some(_) => auth.roster.ok_or(StoreError::GroupUnsealed)?.iter().copied().collect(),
    };
    if !roster.contains(&device) {
        return Err(StoreError::NotMember);
    }
    Ok(roster)
}

/// Writes a group's epoch and its roster sealed under that epoch's credential; the roster in
/// the clear, if it had one, is deleted.
fn seal_group(
    tx: &Connection,
    group_id: &[u8],
    epoch: u64,
    credential: &GroupCredential,
    roster: &BTreeSet<u64>,
    past: &[u8],
) -> Result<(), StoreError> {
    let ids: Vec<u64> = roster.iter().copied().collect();
    let sealed = sotto_core::roster::seal_roster(credential, group_id, epoch, &ids)
        .map_err(|e| StoreError::Backend(e.to_string()))?;
    // Always the last PAST_EPOCHS verifiers' worth of bytes: random ones fill in for epochs a
    // new group never had.
    let keep = PAST_EPOCHS * PAST_ENTRY;
    let mut past = past[past.len().saturating_sub(keep)..].to_vec();
    if past.len() < keep {
        let mut filled = sotto_core::random_bytes(keep - past.len())
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        filled.extend_from_slice(&past);
        past = filled;
    }
    tx.execute(
        "INSERT INTO groups (group_id, epoch, roster, restored, sealed, past)
         VALUES (?1, ?2, 0, 0, ?3, ?4)
         ON CONFLICT (group_id) DO UPDATE SET epoch = excluded.epoch, roster = 0, restored = 0,
                                             sealed = excluded.sealed, past = excluded.past",
        params![group_id, to_i64(epoch), sealed, past],
    )
    .map_err(backend)?;
    tx.execute("DELETE FROM group_members WHERE group_id = ?1", [group_id]).map_err(backend)?;
    Ok(())
}

/// How long the writer seals a device's copies with one HPKE encapsulation.
const SEALER_LIFETIME: std::time::Duration = std::time::Duration::from_secs(3600);
/// Most devices whose sealers are kept at once.
const MAX_SEALERS: usize = 100_000;

/// The sealers of the devices copies were queued for lately (see `sotto_core::queue`): in
/// the writer thread's memory only, each used for at most [`SEALER_LIFETIME`].
#[derive(Default)]
struct Sealers(std::collections::HashMap<u64, (std::time::Instant, Vec<u8>, Sealer)>);

impl Sealers {
    /// `message` sealed for `device`, whose queue key is `public`.
    fn seal(&mut self, device: u64, public: &[u8], message: &[u8]) -> Result<Vec<u8>, StoreError> {
        let usable = |e: &(std::time::Instant, Vec<u8>, Sealer)| {
            e.0.elapsed() < SEALER_LIFETIME && e.1 == public
        };
        if !self.0.get(&device).is_some_and(usable) {
            if self.0.len() >= MAX_SEALERS {
                self.0.retain(|_, e| e.0.elapsed() < SEALER_LIFETIME);
                if self.0.len() >= MAX_SEALERS {
                    self.0.clear();
                }
            }
            let sealer = Sealer::new(public, device)
                .map_err(|e| StoreError::Backend(format!("sealing for device {device}: {e}")))?;
            self.0.insert(device, (std::time::Instant::now(), public.to_vec(), sealer));
        }
        match self.0.get(&device) {
            Some((_, _, sealer)) => sealer
                .seal(device, message)
                .map_err(|e| StoreError::Backend(format!("sealing for device {device}: {e}"))),
            None => Err(StoreError::Backend("a sealer went missing".into())),
        }
    }
}

/// Queues copies of a submission's messages, within each recipient's limits.
struct QueueWriter<'t> {
    sealers: &'t mut Sealers,
    device: rusqlite::CachedStatement<'t>,
    stats: rusqlite::CachedStatement<'t>,
    next_seq: rusqlite::CachedStatement<'t>,
    insert: rusqlite::CachedStatement<'t>,
    count: rusqlite::CachedStatement<'t>,
    limits: QueueLimits,
    expires_at: Option<i64>,
    now: i64,
}

impl<'t> QueueWriter<'t> {
    fn new(
        tx: &'t Connection,
        s: &Submission<'_>,
        now: u64,
        sealers: &'t mut Sealers,
    ) -> Result<Self, StoreError> {
        let prepare = |sql: &str| tx.prepare_cached(sql).map_err(backend);
        Ok(QueueWriter {
            sealers,
            device: prepare(
                "SELECT revoked_at IS NOT NULL, queue_key FROM devices WHERE device_id = ?1",
            )?,
            stats: prepare("SELECT messages, bytes FROM queue_stats WHERE device_id = ?1")?,
            next_seq: prepare(
                "UPDATE devices SET queue_seq = queue_seq + 1, queue_local = queue_local + 1
                 WHERE device_id = ?1 RETURNING queue_seq, queue_local, queue_no",
            )?,
            insert: prepare(
                "INSERT INTO queue (id, device_id, seq, message, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?,
            count: prepare(
                "INSERT INTO queue_stats (device_id, messages, bytes) VALUES (?1, 1, ?2)
                 ON CONFLICT (device_id) DO UPDATE
                 SET messages = messages + 1, bytes = bytes + excluded.bytes",
            )?,
            limits: s.limits,
            expires_at: s.expires_at.map(to_i64),
            now: to_i64(now),
        })
    }

    /// Queues `message` for `device`; a revoked device gets nothing and is noted in `out`.
    fn put(&mut self, device: u64, message: &[u8], out: &mut Submitted) -> Result<(), StoreError> {
        let row: Option<(bool, Option<Vec<u8>>)> = self
            .device
            .query_row([to_i64(device)], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(backend)?;
        let queue_key = match row {
            None => return Err(StoreError::UnknownDevice(device)),
            Some((true, _)) => {
                out.dropped.push(device);
                return Ok(());
            }
            Some((false, key)) => key,
        };
        // A device that gave a queue key gets its copy sealed and padded; one that did not
        // (yet) gets it as it came.
        let sealed = match &queue_key {
            Some(public) => Some(self.sealers.seal(device, public, message)?),
            None => None,
        };
        let stored = sealed.as_deref().unwrap_or(message);
        let len = stored.len() as u64;
        let (messages, bytes): (i64, i64) = self
            .stats
            .query_row([to_i64(device)], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(backend)?
            .unwrap_or((0, 0));
        if to_u64(messages) >= self.limits.max_messages
            || to_u64(bytes).saturating_add(len) > self.limits.max_bytes
        {
            return Err(StoreError::QueueFull { device });
        }
        let (seq, local, queue_no): (i64, i64, Option<i64>) = self
            .next_seq
            .query_row([to_i64(device)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(backend)?;
        let queue_no = queue_no
            .ok_or_else(|| StoreError::Backend(format!("device {device} has no queue number")))?;
        if local >= 1 << LOCAL_BITS {
            return Err(StoreError::Backend(format!("device {device}'s queue has run out of ids")));
        }
        let id = QueueSpan::of(queue_no)?.id(local);
        self.insert
            .execute(params![id, to_i64(device), seq, stored, self.now, self.expires_at])
            .map_err(backend)?;
        self.count.execute(params![to_i64(device), to_i64(len)]).map_err(backend)?;
        out.recipients.push(device);
        out.bytes += len;
        if out.bytes <= super::COPIES_RETURNED_BYTES {
            out.copies.push(QueuedCopy {
                device,
                seq: to_u64(seq),
                at: to_u64(self.now),
                message: sealed.unwrap_or_else(|| message.to_vec()),
            });
        }
        Ok(())
    }
}

/// A page of device `device_id`'s queue after `after` (see [`Store::fetch`]), read inside
/// one transaction.
fn fetch_in(
    tx: &Connection,
    device_id: u64,
    after: u64,
    limit: u32,
    not_before: u64,
    max_bytes: usize,
) -> Result<QueuePage, StoreError> {
    let span = QueueSpan::for_device(tx, device_id)?;
    let Some(start) = span.first_after(tx, after)? else {
        return Ok((Vec::new(), false));
    };
    let mut stmt = tx
        .prepare_cached(
            "SELECT seq, message, created_at FROM queue WHERE id BETWEEN ?1 AND ?2
             AND created_at >= ?4 ORDER BY id LIMIT ?3",
        )
        .map_err(backend)?;
    let args = params![start, span.last, i64::from(limit) + 1, to_i64(not_before)];
    let mut rows = stmt
        .query_map(args, |r| Ok((to_u64(r.get(0)?), r.get::<_, Vec<u8>>(1)?, to_u64(r.get(2)?))))
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

/// Removes acknowledged messages inside the writer's transaction (see [`Store::ack`]).
fn ack_in(tx: &Connection, device_id: u64, up_to: u64) -> Result<u64, StoreError> {
    let (first, last) = QueueSpan::for_device(tx, device_id)?.up_to(tx, up_to)?;
    let args = params![first, last];
    let (messages, bytes): (i64, i64) = tx
        .prepare_cached(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(message)), 0) FROM queue
             WHERE id BETWEEN ?1 AND ?2",
        )
        .and_then(|mut q| q.query_row(args, |r| Ok((r.get(0)?, r.get(1)?))))
        .map_err(backend)?;
    if messages == 0 {
        return Ok(0);
    }
    tx.prepare_cached("DELETE FROM queue WHERE id BETWEEN ?1 AND ?2")
        .and_then(|mut q| q.execute(args))
        .map_err(backend)?;
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
        let id = insert_device(&tx, account.address, account.device_key, now)?;
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

    fn submit(&self, submission: &Submission<'_>, now: u64) -> Result<Submitted, StoreError> {
        let (to, answer) = blocking_answer();
        self.hand_over(Job::Submit(Box::new(OwnedSubmission::from(submission)), now, to));
        wait(answer)
    }

    fn submit_queued(&self, submission: &Submission<'_>, now: u64) -> Pending<Submitted> {
        let (to, answer) = tokio::sync::oneshot::channel();
        let job = Job::Submit(Box::new(OwnedSubmission::from(submission)), now, Answer::Async(to));
        self.hand_over(job);
        answer
    }

    fn fetch(
        &self,
        device_id: u64,
        after: u64,
        limit: u32,
        not_before: u64,
        max_bytes: usize,
    ) -> Result<QueuePage, StoreError> {
        let mut conn = match &self.reader {
            Some(reader) => reader.lock().unwrap_or_else(|p| p.into_inner()),
            None => self.conn(),
        };
        // One snapshot for the search and the read: the writer may delete meanwhile.
        let tx = conn.transaction().map_err(backend)?;
        fetch_in(&tx, device_id, after, limit, not_before, max_bytes.min(PAGE_MAX_BYTES))
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
            id = Some(to_u64(insert_device(&tx, address, key, now)?));
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

    fn set_queue_key(&self, device_id: u64, key: &[u8]) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE devices SET queue_key = ?2 WHERE device_id = ?1",
                params![to_i64(device_id), key],
            )
            .map_err(backend)?;
        Ok(())
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
        let (to, answer) = blocking_answer();
        self.hand_over(Job::Ack(device_id, up_to, to));
        wait(answer)
    }

    fn ack_queued(&self, device_id: u64, up_to: u64) -> Pending<u64> {
        let (to, answer) = tokio::sync::oneshot::channel();
        self.hand_over(Job::Ack(device_id, up_to, Answer::Async(to)));
        answer
    }

    fn publish_queued_to(&self, sink: QueuedSink) {
        // Only the first sink counts, as documented.
        if self.sink.set(sink).is_err() {
            tracing::warn!("a second sink for queued copies was ignored");
        }
    }

    fn check_member(
        &self,
        group_id: &[u8],
        credential: &sotto_core::roster::GroupCredential,
    ) -> Result<(), StoreError> {
        let conn = self.conn();
        let group = group_row(&conn, group_id)?;
        let auth = GroupAuth { credential, next: None, device: None, roster: None };
        match group {
            Some(g) if !g.restored => match g.sealed.as_deref() {
                Some(sealed) => open_sealed(&conn, &auth, group_id, &g, sealed).map(|_| ()),
                None => Err(StoreError::GroupUnsealed),
            },
            _ => Err(StoreError::GroupUnsealed),
        }
    }

    fn create_blob(
        &self,
        blob: &BlobRecord,
        quota: u64,
        group_pool: u64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
        let used = |sql: &str, owner: &str| -> Result<u64, StoreError> {
            tx.query_row(sql, [owner], |r| r.get::<_, i64>(0)).map(to_u64).map_err(backend)
        };
        let mine =
            used("SELECT COALESCE(SUM(size), 0) FROM blobs WHERE address = ?1", &blob.address)?;
        if mine.saturating_add(blob.size) > quota {
            return Err(StoreError::BlobQuota { used: mine, quota });
        }
        if blob.is_group_file() {
            // Bytes received, not announced: a file made and never uploaded (which costs its
            // maker nothing) holds no room in the pool, only in its group's quota.
            // (Every owner from "group:" up to "group;", the prefix's successor.)
            let all = used(
                "SELECT COALESCE(SUM(received), 0) FROM blobs
                 WHERE address >= ?1 AND address < 'group;'",
                BlobRecord::GROUP_OWNER_PREFIX,
            )?;
            if all.saturating_add(blob.size) > group_pool {
                return Err(StoreError::BlobQuota { used: all, quota: group_pool });
            }
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

    fn blob_received(&self, id: &[u8], received: u64, expires_at: u64) -> Result<bool, StoreError> {
        let changed = self
            .conn()
            .execute(
                "UPDATE blobs SET received = ?2, expires_at = ?3 WHERE id = ?1",
                params![id, to_i64(received), to_i64(expires_at)],
            )
            .map_err(backend)?;
        Ok(changed == 1)
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

    /// The first copy after a position is found by the shortcut or the search alike, whatever
    /// gaps acknowledgements left and however far a restore moved the positions on.
    #[test]
    fn the_first_copy_after_a_position_is_found_across_gaps_and_jumps() {
        let conn = Connection::open_in_memory().expect("db");
        conn.execute_batch(
            "CREATE TABLE queue (id INTEGER PRIMARY KEY, device_id INTEGER, seq INTEGER,
                                 created_at INTEGER, expires_at INTEGER, message BLOB)",
        )
        .expect("table");
        let span = QueueSpan::of(7).expect("span");
        // Another device's copies on either side must never be found.
        for (no, seq) in [(6, 1_000_000), (8, 0)] {
            let other = QueueSpan::of(no).expect("span");
            for local in [1, (1 << LOCAL_BITS) - 1] {
                conn.execute(
                    "INSERT INTO queue VALUES (?1, 0, ?2, 0, NULL, x'')",
                    [other.id(local), seq],
                )
                .expect("row");
            }
        }
        let empty = |after| span.first_after(&conn, after).expect("search");
        assert_eq!(empty(0), None, "an empty queue");
        // Local positions with holes (acknowledged, expired); seqs jumping twice (restores).
        let mut rows = Vec::new();
        let mut seq = 10u64;
        for local in 1..400i64 {
            seq += if local == 100 {
                1_000_000
            } else if local == 300 {
                1 << 50
            } else {
                1
            };
            if local % 7 == 3 || (150..260).contains(&local) {
                continue;
            }
            rows.push((span.id(local), seq));
        }
        for (id, seq) in &rows {
            conn.execute(
                "INSERT INTO queue VALUES (?1, 7, ?2, 0, NULL, x'')",
                params![id, to_i64(*seq)],
            )
            .expect("row");
        }
        let mut afters: Vec<u64> = vec![0, 10, u64::MAX, (1 << 50) + 1_000_000];
        for (_, seq) in &rows {
            afters.extend([seq - 1, *seq, seq + 1, seq + 500_000]);
        }
        for after in afters {
            let expected = rows.iter().find(|(_, s)| *s > after).map(|(id, _)| *id);
            assert_eq!(span.first_after(&conn, after).expect("search"), expected, "after {after}");
            let (first, last) = span.up_to(&conn, after).expect("range");
            let covered: Vec<u64> =
                rows.iter().filter(|(id, _)| (first..=last).contains(id)).map(|r| r.1).collect();
            assert!(covered.iter().all(|s| *s <= after), "after {after}");
            assert_eq!(covered.len(), rows.iter().filter(|(_, s)| *s <= after).count());
        }
    }

    /// A database from before the queue's integer keys keeps every queued copy, in order,
    /// under the positions clients know; new copies follow them.
    #[test]
    fn queues_move_to_integer_keys_whole_and_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.db");
        {
            let mut conn = Connection::open(&path).expect("open");
            let before = MIGRATIONS.len() - 1;
            for (i, m) in MIGRATIONS[..before].iter().enumerate() {
                let tx = conn.transaction().expect("tx");
                tx.execute_batch(m).expect("migration");
                tx.pragma_update(None, "user_version", i as i64 + 1).expect("version");
                tx.commit().expect("commit");
            }
            conn.execute_batch(
                "INSERT INTO accounts (address, created_at) VALUES ('a@x', 1);
                 INSERT INTO devices (device_id, address, device_key, created_at, queue_seq)
                     VALUES (5, 'a@x', x'05', 1, 900), (9, 'a@x', x'09', 1, 40),
                            (12, 'a@x', x'0c', 1, 0);
                 INSERT INTO queue (device_id, seq, message, created_at) VALUES
                     (9, 31, x'31', 100), (5, 700, x'0700', 100), (9, 12, x'12', 100),
                     (5, 899, x'0899', 100), (9, 40, x'40', 100);",
            )
            .expect("old rows");
        }
        let store = SqliteStore::open(&path).expect("migrated");
        let seqs = |device, after| -> Vec<(u64, Vec<u8>)> {
            let (page, more) = store.fetch(device, after, 100, 0, PAGE_MAX_BYTES).expect("fetch");
            assert!(!more);
            page.into_iter().map(|(seq, m, _)| (seq, m)).collect()
        };
        assert_eq!(seqs(9, 0), vec![(12, vec![0x12]), (31, vec![0x31]), (40, vec![0x40])]);
        assert_eq!(seqs(9, 12), vec![(31, vec![0x31]), (40, vec![0x40])]);
        assert_eq!(seqs(5, 0), vec![(700, vec![0x07, 0x00]), (899, vec![0x08, 0x99])]);
        assert_eq!(seqs(12, 0), vec![]);
        // Acknowledging removes what it names and no more; new copies come after the old.
        assert_eq!(store.ack(9, 31).expect("ack"), 2);
        assert_eq!(seqs(9, 0), vec![(40, vec![0x40])]);
        let relay = crate::store::tests::relay(&[9, 12], b"new", Ordering::None);
        store.submit(&relay, 200).expect("queued");
        assert_eq!(seqs(9, 0), vec![(40, vec![0x40]), (41, b"new".to_vec())]);
        assert_eq!(seqs(12, 0), vec![(1, b"new".to_vec())]);
        // A revoked device's queue goes, and nobody else's.
        revoke_in(&store.conn(), 12, 300).expect("revoke");
        assert_eq!(seqs(12, 0), vec![]);
        assert_eq!(seqs(9, 40), vec![(41, b"new".to_vec())]);
        // Devices keep their numbers apart; a new device takes a revoked one's number, and
        // the revoked device no longer reaches that queue; then the next number.
        let numbers = || -> Vec<(i64, Option<i64>, i64)> {
            store
                .conn()
                .prepare("SELECT device_id, queue_no, queue_local FROM devices ORDER BY device_id")
                .expect("query")
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .expect("rows")
                .collect::<Result<_, _>>()
                .expect("numbers")
        };
        assert_eq!(numbers(), vec![(5, Some(1), 2), (9, Some(2), 4), (12, Some(3), 1)]);
        let first = to_u64(insert_device(&store.conn(), "a@x", b"new", 2).expect("device"));
        let second = to_u64(insert_device(&store.conn(), "a@x", b"newer", 2).expect("device"));
        assert_eq!(
            numbers()[2..],
            [(12, None, 1), (to_i64(first), Some(3), 0), (to_i64(second), Some(4), 0)]
        );
        let to = [first];
        let relay = crate::store::tests::relay(&to, b"to the new", Ordering::None);
        store.submit(&relay, 400).expect("queued");
        assert_eq!(seqs(first, 0), vec![(1, b"to the new".to_vec())]);
        assert_eq!(seqs(12, 0), vec![], "the revoked device reads nothing of it");
        assert_eq!(store.ack(12, u64::MAX).expect("ack"), 0, "nor deletes it");
        assert_eq!(seqs(first, 0).len(), 1);
    }

    /// Groups without a sealed roster — from before rosters, with a roster in the clear, or
    /// restored from a backup — are sealed by the first submission of an authenticated
    /// member, and the roster in the clear is gone.
    #[test]
    fn unsealed_groups_are_sealed_by_a_member() {
        use crate::store::tests::{cred, relay};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.db");
        let store = SqliteStore::open(&path).expect("store");
        let list = crate::store::tests::list(1);
        let reg = |address: &str, key: &[u8]| {
            let account = NewAccount { address, device_key: key, invite_hash: None, list: &list };
            store.register(&account, 1).expect("register")
        };
        let (a, b, m) = (reg("a@x", b"a"), reg("b@x", b"b"), reg("m@x", b"m"));
        let raw = Connection::open(&path).expect("open");
        raw.execute(
            "INSERT INTO groups (group_id, epoch, roster) VALUES (?1, 3, 1)",
            [&b"plain"[..]],
        )
        .expect("a group with a roster in the clear");
        for d in [a, b] {
            raw.execute(
                "INSERT INTO group_members (group_id, device_id) VALUES (?1, ?2)",
                params![&b"plain"[..], to_i64(d)],
            )
            .expect("member");
        }
        raw.execute("INSERT INTO groups (group_id, epoch) VALUES (?1, 5)", [&b"unknown"[..]])
            .expect("a group whose roster nobody knows");
        let c3 = cred(3);
        let sub =
            |group: &'static [u8], epoch, device, roster: Option<&'static [u64]>| Submission {
                group_id: group,
                to: To::Group(GroupAuth { credential: &c3, next: None, device, roster }),
                ..relay(&[], b"m", Ordering::NotBefore(epoch))
            };
        // Without a token, the member is asked for one.
        assert!(matches!(
            store.submit(&sub(b"plain", 3, None, None), 1),
            Err(StoreError::GroupUnsealed)
        ));
        // Someone not in the roster in the clear cannot seal it.
        assert!(matches!(
            store.submit(&sub(b"plain", 3, Some(m), None), 1),
            Err(StoreError::NotMember)
        ));
        let done = store.submit(&sub(b"plain", 3, Some(a), None), 1).expect("sealed");
        assert_eq!((done.epoch, done.recipients), (3, vec![a, b]));
        let members: i64 =
            raw.query_row("SELECT COUNT(*) FROM group_members", [], |r| r.get(0)).expect("count");
        assert_eq!(members, 0, "no roster in the clear remains");
        // From now on the credential alone is enough, and the token no longer helps.
        assert_eq!(
            store.submit(&sub(b"plain", 3, None, None), 1).expect("sealed").recipients,
            vec![a, b]
        );
        let c4 = cred(4);
        let other = Submission {
            to: To::Group(GroupAuth { credential: &c4, next: None, device: Some(a), roster: None }),
            ..sub(b"plain", 3, None, None)
        };
        assert!(matches!(store.submit(&other, 1), Err(StoreError::NotMember)));
        // A group whose roster is unknown takes the one its first member names, which must
        // include that member.
        let ab: &'static [u64] = Box::leak(Box::new([a, b]));
        let only_b: &'static [u64] = Box::leak(Box::new([b]));
        assert!(matches!(
            store.submit(&sub(b"unknown", 5, Some(a), None), 1),
            Err(StoreError::GroupUnsealed)
        ));
        assert!(matches!(
            store.submit(&sub(b"unknown", 5, Some(a), Some(only_b)), 1),
            Err(StoreError::NotMember)
        ));
        let done = store.submit(&sub(b"unknown", 5, Some(a), Some(ab)), 1).expect("sealed");
        assert_eq!(done.recipients, vec![a, b]);
        let sealed: Vec<u8> = raw
            .query_row("SELECT sealed FROM groups WHERE group_id = ?1", [&b"unknown"[..]], |r| {
                r.get(0)
            })
            .expect("sealed roster");
        for d in [a, b] {
            assert!(
                !sealed.windows(8).any(|w| w == d.to_be_bytes()),
                "device ids are not readable"
            );
        }
        // Restored from a backup taken at epoch 5, the group has moved on to 7 meanwhile:
        // its old roster does not open with the new credential, so a member seals it again.
        raw.execute("UPDATE groups SET restored = 1", []).expect("restored");
        let c7 = cred(7);
        let moved_on = |device| Submission {
            to: To::Group(GroupAuth { credential: &c7, next: None, device, roster: Some(ab) }),
            ..sub(b"unknown", 7, None, None)
        };
        assert!(matches!(store.submit(&moved_on(None), 1), Err(StoreError::GroupUnsealed)));
        assert_eq!(store.submit(&moved_on(Some(b)), 1).expect("resealed").epoch, 7);
        assert!(matches!(
            store.submit(
                &Submission {
                    to: To::Group(GroupAuth {
                        credential: &c3,
                        next: None,
                        device: None,
                        roster: None
                    }),
                    ..sub(b"unknown", 7, None, None)
                },
                1
            ),
            Err(StoreError::NotMember)
        ));
    }

    /// A submission or acknowledgement whose caller went away before the writer took it is
    /// not run; those still waited for are.
    #[test]
    fn jobs_nobody_waits_for_are_not_run() {
        let store = SqliteStore::in_memory().expect("store");
        let list = crate::store::tests::list(1);
        let account =
            NewAccount { address: "a@x", device_key: b"a", invite_hash: None, list: &list };
        let a = store.register(&account, 1).expect("register");
        let to_a = [a];
        let relay = |m| crate::store::tests::relay(&to_a, m, Ordering::None);
        // The writer waits for the connection while the jobs come in.
        let held = store.conn();
        let kept = store.submit_queued(&relay(b"kept"), 1);
        drop(store.submit_queued(&relay(b"dropped"), 1));
        drop(store.ack_queued(a, u64::MAX));
        let last = store.submit_queued(&relay(b"last"), 1);
        drop(held);
        kept.blocking_recv().expect("answered").expect("stored");
        last.blocking_recv().expect("answered").expect("stored");
        let (page, _) = store.fetch(a, 0, 10, 0, PAGE_MAX_BYTES).expect("fetch");
        let bodies: Vec<&[u8]> = page.iter().map(|(_, m, _)| m.as_slice()).collect();
        assert_eq!(
            bodies,
            vec![&b"kept"[..], b"last"],
            "the dropped acknowledgement removed nothing"
        );
    }
}
