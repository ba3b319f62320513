//! The client's local database: openmls's tables (through its SQLite storage provider) and
//! Sotto's own rows, in one SQLite file per home, so one transaction covers both.

use std::path::Path;

use openmls_sqlite_storage::{Codec, SqliteStorageProvider};
use rusqlite::{Connection, OptionalExtension, params};
use sotto_core::mls::Provider;

use crate::Error;
use crate::vault::HomeKey;

/// The codec openmls's storage uses for its values.
#[derive(Debug, Default)]
pub(crate) struct JsonCodec;

impl Codec for JsonCodec {
    type Error = serde_json::Error;
    fn to_vec<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        serde_json::to_vec(value)
    }
    fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        serde_json::from_slice(slice)
    }
}

pub(crate) type Storage<'c> = SqliteStorageProvider<JsonCodec, &'c Connection>;

/// An MLS provider over this connection (or transaction).
pub(crate) fn provider(conn: &Connection) -> Provider<Storage<'_>> {
    Provider::new(SqliteStorageProvider::new(conn))
}

/// Sotto's own schema; `PRAGMA user_version` counts the migrations applied.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE account (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    address TEXT NOT NULL,
    device_id INTEGER NOT NULL,
    server TEXT NOT NULL,
    ca_cert TEXT,
    device_key BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE sync_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq INTEGER NOT NULL,
    last_acked INTEGER NOT NULL
);
INSERT INTO sync_state (id, last_seq, last_acked) VALUES (1, 0, 0);
CREATE TABLE chats (
    group_id BLOB PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT,
    peer TEXT,
    state TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id BLOB NOT NULL,
    msg_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    status TEXT NOT NULL,
    sent_at INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    reported INTEGER NOT NULL DEFAULT 0,
    UNIQUE (group_id, msg_id)
);
CREATE INDEX messages_by_chat ON messages(group_id, id);
CREATE TABLE failures (
    seq INTEGER PRIMARY KEY,
    reason TEXT NOT NULL,
    at INTEGER NOT NULL,
    reported INTEGER NOT NULL DEFAULT 0
);
"#,
    r#"
ALTER TABLE account ADD COLUMN identity_secret BLOB;
ALTER TABLE account ADD COLUMN linked_at INTEGER NOT NULL DEFAULT 0;
CREATE TABLE device_lists (
    address TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    body BLOB NOT NULL,
    signature BLOB NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE wipes_issued (
    nonce BLOB PRIMARY KEY,
    device_id INTEGER NOT NULL,
    command BLOB NOT NULL,
    signature BLOB NOT NULL,
    issued_at INTEGER NOT NULL,
    confirmed_at INTEGER
);
CREATE TABLE wipes_seen (
    nonce BLOB PRIMARY KEY,
    reason TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE TABLE notices (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    text TEXT NOT NULL,
    at INTEGER NOT NULL,
    reported INTEGER NOT NULL DEFAULT 0
);
"#,
    r#"
CREATE TABLE verified (
    address TEXT PRIMARY KEY,
    identity_key BLOB NOT NULL,
    verified_at INTEGER NOT NULL
);
"#,
    r#"
ALTER TABLE account ADD COLUMN kt_signing_key BLOB;
ALTER TABLE account ADD COLUMN kt_vrf_key BLOB;
ALTER TABLE account ADD COLUMN kt_since INTEGER NOT NULL DEFAULT 0;
CREATE TABLE kt_roots (
    epoch INTEGER PRIMARY KEY,
    hash BLOB NOT NULL
);
"#,
    r#"
ALTER TABLE chats ADD COLUMN timer_secs INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN expires_at INTEGER;
CREATE INDEX messages_by_expiry ON messages(expires_at) WHERE expires_at IS NOT NULL;
"#,
    r#"
ALTER TABLE messages ADD COLUMN attachment TEXT;
CREATE TABLE uploads (
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime INTEGER NOT NULL,
    blob BLOB NOT NULL,
    key BLOB NOT NULL,
    nonce BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (path, size, mtime)
);
"#,
    r#"
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    group_id BLOB NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('message', 'commit')),
    msg_id TEXT,
    payload BLOB,
    request BLOB,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX outbox_by_message ON outbox(group_id, msg_id);
"#,
    r#"
ALTER TABLE chats ADD COLUMN leaf_updated_at INTEGER NOT NULL DEFAULT 0;
UPDATE chats SET leaf_updated_at = created_at;
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
ALTER TABLE chats ADD COLUMN sent_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN n INTEGER;
CREATE TABLE counters (
    group_id BLOB NOT NULL,
    sender TEXT NOT NULL,
    last INTEGER NOT NULL,
    PRIMARY KEY (group_id, sender)
);
"#,
    r#"
ALTER TABLE kt_roots ADD COLUMN previous BLOB;
ALTER TABLE chats ADD COLUMN kt_told INTEGER NOT NULL DEFAULT -1;
CREATE TABLE kt_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    newest BLOB,
    newest_time INTEGER NOT NULL DEFAULT 0,
    split TEXT
);
INSERT INTO kt_state (id) VALUES (1);
ALTER TABLE chats ADD COLUMN prune_pending INTEGER NOT NULL DEFAULT 0;
"#,
    // 10: each chat's MLS ciphersuite (code point); every chat made before was classical.
    r#"
ALTER TABLE chats ADD COLUMN ciphersuite INTEGER NOT NULL DEFAULT 3;
"#,
    // 11: this device's key packages, by the replacement round (Unix ms) they belong to,
    // so the private keys of rounds long replaced can be forgotten.
    r#"
CREATE TABLE own_key_packages (
    reference BLOB PRIMARY KEY,
    round INTEGER NOT NULL
);
CREATE INDEX own_key_packages_by_round ON own_key_packages(round);
"#,
    // 12: names of this account's devices, by device key, kept after the list stops naming
    // them (a revoked or wiped device keeps its name in `devices`).
    r#"
CREATE TABLE device_names (
    device_key BLOB PRIMARY KEY,
    name TEXT NOT NULL
);
"#,
    // 13: conversations (content format 2): replies, mentions, edits (the winning edit's
    // sender time and id), deletions (tombstones), reactions, amendments that arrived before
    // their message, receipts, read state; chat flags and contacts' nicknames; full-text
    // search over texts and file names, inside this same encrypted file; indexes for the chat
    // list and for what a sync reports (without them each scanned every message).
    r#"
ALTER TABLE messages ADD COLUMN reply_to TEXT;
ALTER TABLE messages ADD COLUMN mentions TEXT;
ALTER TABLE messages ADD COLUMN edited_at INTEGER;
ALTER TABLE messages ADD COLUMN edit_id TEXT;
ALTER TABLE messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN read_at INTEGER;
UPDATE messages SET read_at = received_at;
CREATE INDEX messages_by_msg_id ON messages(msg_id);
CREATE INDEX messages_summary ON messages(group_id, kind, sent_at, read_at, sender, deleted);
CREATE INDEX messages_unreported ON messages(id) WHERE reported = 0;
CREATE TABLE reactions (
    group_id BLOB NOT NULL,
    target TEXT NOT NULL,
    reactor TEXT NOT NULL,
    emoji TEXT NOT NULL,
    sent_at INTEGER NOT NULL,
    PRIMARY KEY (group_id, target, reactor)
);
CREATE TABLE amends_waiting (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id BLOB NOT NULL,
    target TEXT NOT NULL,
    sender TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    sent_at INTEGER NOT NULL,
    body TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX amends_waiting_by_target ON amends_waiting(target);
CREATE INDEX amends_waiting_by_sender ON amends_waiting(group_id, sender, id);
CREATE TABLE receipts (
    group_id BLOB NOT NULL,
    msg_id TEXT NOT NULL,
    account TEXT NOT NULL,
    delivered_at INTEGER NOT NULL,
    read_at INTEGER,
    PRIMARY KEY (group_id, msg_id, account)
);
CREATE TABLE receipts_due (
    group_id BLOB NOT NULL,
    msg_id TEXT NOT NULL,
    receipt TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (group_id, msg_id, receipt)
);
ALTER TABLE chats ADD COLUMN muted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE chats ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;
ALTER TABLE chats ADD COLUMN archived INTEGER NOT NULL DEFAULT 0;
ALTER TABLE chats ADD COLUMN hidden INTEGER NOT NULL DEFAULT 0;
CREATE TABLE contacts (
    address TEXT PRIMARY KEY,
    nickname TEXT NOT NULL
);
CREATE VIRTUAL TABLE messages_fts USING fts5(
    body, content = 'messages', content_rowid = 'id', tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages
WHEN new.kind IN ('text', 'file') BEGIN
    INSERT INTO messages_fts (rowid, body) VALUES (new.id, new.body);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages
WHEN old.kind IN ('text', 'file') BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.id, old.body);
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF body ON messages
WHEN old.kind IN ('text', 'file') BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.id, old.body);
    INSERT INTO messages_fts (rowid, body) VALUES (new.id, new.body);
END;
INSERT INTO messages_fts (rowid, body) SELECT id, body FROM messages WHERE kind IN ('text', 'file');
"#,
    // Sealed submissions go to every device of the group, this one included: the digests
    // of what this device submitted, to skip its own copies. The queue key: the server seals
    // what waits in this device's queue to its public half.
    r#"
CREATE TABLE echoes (
    digest BLOB PRIMARY KEY,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE queue_key (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seed BLOB NOT NULL,
    given INTEGER NOT NULL DEFAULT 0
);
"#,
    // The files that references named, once fetched: a reference names a file once, and one
    // repeated (to make this device download a large file again and again) is refused.
    r#"
CREATE TABLE fetched_references (
    blob BLOB PRIMARY KEY,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
"#,
];

/// A counter of writes to MLS group state (the tables an `MlsGroup` is loaded from), which a
/// group kept in memory between a page's messages checks before it is used again. Made at
/// every opening, so that a table the MLS storage recreates in a later version gets its
/// triggers back.
fn mls_generation_schema() -> String {
    let mut sql = String::from(
        "CREATE TABLE IF NOT EXISTS mls_generation (
             id INTEGER PRIMARY KEY CHECK (id = 1),
             n INTEGER NOT NULL
         );
         INSERT OR IGNORE INTO mls_generation (id, n) VALUES (1, 0);",
    );
    let tables = [
        ("group_data", "openmls_group_data"),
        ("proposals", "openmls_proposals"),
        ("leaf_nodes", "openmls_own_leaf_nodes"),
    ];
    for (short, table) in tables {
        for op in ["INSERT", "UPDATE", "DELETE"] {
            sql.push_str(&format!(
                "CREATE TRIGGER IF NOT EXISTS mls_generation_{short}_{} AFTER {op} ON {table}
                 BEGIN UPDATE mls_generation SET n = n + 1 WHERE id = 1; END;",
                op.to_lowercase()
            ));
        }
    }
    sql
}

/// How many writes to MLS group state there have been (see [`mls_generation_schema`]).
pub(crate) fn mls_generation(conn: &Connection) -> Result<i64, Error> {
    Ok(conn
        .prepare_cached("SELECT n FROM mls_generation WHERE id = 1")?
        .query_row([], |r| r.get(0))?)
}

const DB_FILE: &str = "sotto.db";

/// Whether `home` holds a database.
pub(crate) fn exists(home: &Path) -> bool {
    home.join(DB_FILE).exists()
}

/// Opens (creating if asked) the encrypted database in `home` with its key, and brings both
/// schemas up to date.
pub(crate) fn open(home: &Path, create: bool, key: &HomeKey) -> Result<Connection, Error> {
    let path = home.join(DB_FILE);
    if !create && !path.exists() {
        return Err(Error::NotRegistered(home.display().to_string()));
    }
    if create {
        std::fs::create_dir_all(home)
            .map_err(|e| Error::Io(format!("cannot create {}: {e}", home.display())))?;
        restrict(home, 0o700);
    }
    let mut conn = Connection::open(&path)?;
    restrict(&path, 0o600);
    // SQLCipher: a raw 256-bit key (no key derivation of its own); every page, the journal
    // included, is encrypted with it.
    let pragma =
        zeroize::Zeroizing::new(format!("PRAGMA key = \"x'{}'\";", hex::encode(&key.0[..])));
    conn.execute_batch(&pragma)?;
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)).map_err(
        |_| Error::Io(format!("{} does not open with this home's key (damaged?)", path.display())),
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    // The statements a send or a received message runs are prepared once per connection.
    conn.set_prepared_statement_cache_capacity(64);
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    SqliteStorageProvider::<JsonCodec, &mut Connection>::new(&mut conn)
        .run_migrations()
        .map_err(|e| Error::Io(format!("migrating MLS storage: {e}")))?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > MIGRATIONS.len() as i64 {
        return Err(Error::Io(format!(
            "{} was written by a newer sotto (schema {version}); upgrade sotto",
            path.display()
        )));
    }
    for (i, m) in MIGRATIONS.iter().enumerate().skip(usize::try_from(version).unwrap_or(0)) {
        let tx = conn.transaction()?;
        tx.execute_batch(m)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
    }
    conn.execute_batch(&mls_generation_schema())?;
    Ok(conn)
}

#[cfg(unix)]
fn restrict(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}

#[cfg(not(unix))]
fn restrict(_: &Path, _: u32) {}

/// The account row.
#[derive(Clone)]
pub(crate) struct AccountRow {
    pub address: String,
    pub device_id: u64,
    pub server: String,
    pub ca_cert: Option<String>,
    pub device_key: Vec<u8>,
    /// The account's identity key (secret half); `None` in homes made before identity keys.
    pub identity_secret: Option<zeroize::Zeroizing<Vec<u8>>>,
    /// When this device was linked (Unix seconds).
    pub linked_at: u64,
    /// The key directory's signing and VRF keys, pinned when this home was made.
    pub kt_keys: Option<(Vec<u8>, Vec<u8>)>,
    /// Directory epochs after this one must show this account's own identity key.
    pub kt_since: u64,
}

impl std::fmt::Debug for AccountRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountRow")
            .field("address", &self.address)
            .field("device_id", &self.device_id)
            .field("server", &self.server)
            .field("identity_secret", &self.identity_secret.as_ref().map(|_| "[redacted]"))
            .finish_non_exhaustive()
    }
}

pub(crate) fn account(conn: &Connection) -> Result<Option<AccountRow>, Error> {
    Ok(conn
        .query_row(
            "SELECT address, device_id, server, ca_cert, device_key, identity_secret, linked_at,
                    kt_signing_key, kt_vrf_key, kt_since
             FROM account WHERE id = 1",
            [],
            |r| {
                Ok(AccountRow {
                    address: r.get(0)?,
                    device_id: r.get::<_, i64>(1)? as u64,
                    server: r.get(2)?,
                    ca_cert: r.get(3)?,
                    device_key: r.get(4)?,
                    identity_secret: r.get::<_, Option<Vec<u8>>>(5)?.map(zeroize::Zeroizing::new),
                    linked_at: r.get::<_, i64>(6)? as u64,
                    kt_keys: r.get::<_, Option<Vec<u8>>>(7)?.zip(r.get::<_, Option<Vec<u8>>>(8)?),
                    kt_since: r.get::<_, i64>(9)? as u64,
                })
            },
        )
        .optional()?)
}

pub(crate) fn insert_account(conn: &Connection, a: &AccountRow) -> Result<(), Error> {
    conn.execute(
        "INSERT INTO account (id, address, device_id, server, ca_cert, device_key, created_at,
                              identity_secret, linked_at, kt_signing_key, kt_vrf_key, kt_since)
         VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?6, ?8, ?9, ?10)",
        params![
            a.address,
            a.device_id as i64,
            a.server,
            a.ca_cert,
            a.device_key,
            a.linked_at as i64,
            a.identity_secret.as_ref().map(|s| s.as_slice()),
            a.kt_keys.as_ref().map(|k| k.0.as_slice()),
            a.kt_keys.as_ref().map(|k| k.1.as_slice()),
            a.kt_since as i64
        ],
    )?;
    Ok(())
}

/// The device list pinned for `address`.
/// The server reported devices of this group revoked (`dropped`): nothing more is encrypted
/// in it until fresh device lists say which to remove ([`crate::Client::prune_revoked`]).
/// Each report counts: one that arrives while a check runs keeps the chat marked.
pub(crate) fn mark_dropped(conn: &Connection, group_id: &[u8]) -> Result<(), Error> {
    conn.prepare_cached("UPDATE chats SET prune_pending = prune_pending + 1 WHERE group_id = ?1")?
        .execute([group_id])?;
    Ok(())
}

/// How many reports of revoked devices in this group wait to be confirmed (0: none).
pub(crate) fn prune_pending(conn: &Connection, group_id: &[u8]) -> Result<i64, Error> {
    Ok(conn
        .prepare_cached("SELECT prune_pending FROM chats WHERE group_id = ?1")?
        .query_row([group_id], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// A setting of this home, if set.
pub(crate) fn setting(conn: &Connection, name: &str) -> Result<Option<u64>, Error> {
    let value: Option<i64> = conn
        .prepare_cached("SELECT value FROM settings WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()?;
    Ok(value.map(|v| v.max(0) as u64))
}

/// Sets a setting of this home.
pub(crate) fn set_setting(conn: &Connection, name: &str, value: u64) -> Result<(), Error> {
    conn.execute(
        "INSERT INTO settings (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = ?2",
        params![name, value as i64],
    )?;
    Ok(())
}

pub(crate) fn pinned_list(
    conn: &Connection,
    address: &str,
) -> Result<Option<sotto_core::account::SignedList>, Error> {
    Ok(conn
        .query_row("SELECT body, signature FROM device_lists WHERE address = ?1", [address], |r| {
            Ok(sotto_core::account::SignedList { body: r.get(0)?, signature: r.get(1)? })
        })
        .optional()?)
}

pub(crate) fn pin_list(
    conn: &Connection,
    address: &str,
    version: u64,
    list: &sotto_core::account::SignedList,
) -> Result<(), Error> {
    conn.execute(
        "INSERT INTO device_lists (address, version, body, signature, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (address) DO UPDATE SET version = ?2, body = ?3, signature = ?4,
                                             updated_at = ?5
         WHERE excluded.version > device_lists.version",
        params![address, version as i64, list.body, list.signature, sotto_core::unix_now() as i64],
    )?;
    Ok(())
}

pub(crate) fn add_notice(conn: &Connection, text: &str) -> Result<(), Error> {
    conn.execute(
        "INSERT INTO notices (text, at) VALUES (?1, ?2)",
        params![text, sotto_core::unix_now() as i64],
    )?;
    Ok(())
}

/// Adds a notice unless the same one was added in the last ten minutes (one change seen in
/// many chats is told once).
pub(crate) fn add_notice_once(conn: &Connection, text: &str) -> Result<(), Error> {
    let recent: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM notices WHERE text = ?1 AND at >= ?2)")?
        .query_row(params![text, sotto_core::unix_now().saturating_sub(600) as i64], |r| {
            r.get(0)
        })?;
    if !recent {
        add_notice(conn, text)?;
    }
    Ok(())
}

/// How long an own submission's digest is kept for its copy to come back: longer than any
/// server keeps a queued message.
const ECHO_KEEP_MS: i64 = 90 * 24 * 3600 * 1000;

fn echo_digest(message: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(message).into()
}

/// Notes that this device submitted `message`: the server queues a copy for this device too.
pub(crate) fn expect_echo(conn: &Connection, message: &[u8], now_ms: i64) -> Result<(), Error> {
    conn.prepare_cached("INSERT OR IGNORE INTO echoes (digest, created_at) VALUES (?1, ?2)")?
        .execute(params![&echo_digest(message)[..], now_ms])?;
    Ok(())
}

/// Whether a reference named the file `blob` before (see [`fetched_reference`]).
pub(crate) fn reference_fetched(conn: &Connection, blob: &[u8]) -> Result<bool, Error> {
    Ok(conn.prepare_cached("SELECT 1 FROM fetched_references WHERE blob = ?1")?.exists([blob])?)
}

/// Notes that a reference's file was fetched, in the transaction of its message, and
/// forgets notes older than any queued message.
pub(crate) fn fetched_reference(conn: &Connection, blob: &[u8], now_ms: i64) -> Result<(), Error> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO fetched_references (blob, created_at) VALUES (?1, ?2)",
    )?
    .execute(params![blob, now_ms])?;
    conn.prepare_cached("DELETE FROM fetched_references WHERE created_at < ?1")?
        .execute([now_ms.saturating_sub(ECHO_KEEP_MS)])?;
    Ok(())
}

/// Whether `message` is the copy of one this device submitted (then forgotten), and forgets
/// digests too old to come back.
pub(crate) fn take_echo(conn: &Connection, message: &[u8], now_ms: i64) -> Result<bool, Error> {
    let taken = conn
        .prepare_cached("DELETE FROM echoes WHERE digest = ?1")?
        .execute([&echo_digest(message)[..]])?
        > 0;
    conn.prepare_cached("DELETE FROM echoes WHERE created_at < ?1")?
        .execute([now_ms.saturating_sub(ECHO_KEEP_MS)])?;
    Ok(taken)
}

pub(crate) fn last_seq(conn: &Connection) -> Result<u64, Error> {
    Ok(conn.query_row("SELECT last_seq FROM sync_state WHERE id = 1", [], |r| r.get::<_, i64>(0))?
        as u64)
}

/// The highest seq the server confirmed removing from the queue.
pub(crate) fn last_acked(conn: &Connection) -> Result<u64, Error> {
    Ok(conn
        .query_row("SELECT last_acked FROM sync_state WHERE id = 1", [], |r| r.get::<_, i64>(0))?
        as u64)
}

pub(crate) fn set_last_acked(conn: &Connection, seq: u64) -> Result<(), Error> {
    conn.execute(
        "UPDATE sync_state SET last_acked = MAX(last_acked, ?1) WHERE id = 1",
        [seq as i64],
    )?;
    Ok(())
}

pub(crate) fn set_last_seq(conn: &Connection, seq: u64) -> Result<(), Error> {
    conn.execute("UPDATE sync_state SET last_seq = ?1 WHERE id = 1", [seq as i64])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_to_mls_group_state_count_and_the_count_survives_reopening() {
        let home = tempfile::tempdir().expect("dir");
        let key = HomeKey(zeroize::Zeroizing::new([7u8; 32]));
        let conn = open(home.path(), true, &key).expect("open");
        let before = mls_generation(&conn).expect("count");
        conn.execute(
            "INSERT INTO openmls_group_data (provider_version, group_id, data_type, group_data)
             VALUES (1, x'01', 'tree', x'00')",
            [],
        )
        .expect("insert");
        conn.execute("UPDATE openmls_group_data SET group_data = x'01'", []).expect("update");
        conn.execute(
            "INSERT INTO openmls_own_leaf_nodes (provider_version, group_id, leaf_node)
             VALUES (1, x'01', x'00')",
            [],
        )
        .expect("insert");
        conn.execute("DELETE FROM openmls_group_data", []).expect("delete");
        assert_eq!(mls_generation(&conn).expect("count"), before + 4);
        // Sotto's own tables do not count.
        conn.execute("UPDATE sync_state SET last_seq = 5", []).expect("update");
        assert_eq!(mls_generation(&conn).expect("count"), before + 4);
        drop(conn);
        let conn = open(home.path(), false, &key).expect("reopen");
        assert_eq!(mls_generation(&conn).expect("count"), before + 4);
        let triggers: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'trigger'
                 AND name LIKE 'mls_generation_%'",
                [],
                |r| r.get(0),
            )
            .expect("triggers");
        assert_eq!(triggers, 9);
    }
}
