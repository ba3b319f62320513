//! AKD's storage on SQLite: the directory's tree nodes and value states, and the server's
//! signed roots, in `kt.db` beside the main database (so publishing never contends with
//! message traffic for the main database's write lock).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use akd::errors::StorageError;
use akd::storage::types::{
    DbRecord, KeyData, StorageType, ValueState, ValueStateKey, ValueStateRetrievalFlag,
};
use akd::storage::{Database, DbSetState, Storable};
use akd::{AkdLabel, AkdValue};
use rusqlite::{Connection, OptionalExtension, params};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS records (
    key BLOB PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS value_states (
    label BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    version INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (label, epoch)
);
CREATE TABLE IF NOT EXISTS roots (
    epoch INTEGER PRIMARY KEY,
    hash BLOB NOT NULL,
    previous BLOB NOT NULL,
    signature BLOB NOT NULL,
    published_at INTEGER NOT NULL
);
"#;

/// A signed root as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootRow {
    /// The epoch.
    pub epoch: u64,
    /// Its root hash.
    pub hash: Vec<u8>,
    /// The previous epoch's root hash.
    pub previous: Vec<u8>,
    /// When the root was vouched for as the newest (0 as recorded at publication).
    pub time: u64,
    /// The KT key's signature.
    pub signature: Vec<u8>,
}

/// The directory's SQLite storage.
#[derive(Debug, Clone)]
pub struct KtStorage {
    conn: Arc<Mutex<Connection>>,
}

fn err(e: impl std::fmt::Display) -> StorageError {
    StorageError::Other(e.to_string())
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl KtStorage {
    /// Opens (creating) the directory database at `path`.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(KtStorage { conn: Arc::new(Mutex::new(conn)) })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a signed root.
    pub fn put_root(&self, root: &RootRow, now: u64) -> Result<(), StorageError> {
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO roots (epoch, hash, previous, signature, published_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![i(root.epoch), root.hash, root.previous, root.signature, i(now)],
            )
            .map_err(err)?;
        Ok(())
    }

    /// Signed roots from epoch `from`, at most `limit`, oldest first.
    pub fn roots(&self, from: u64, limit: u32) -> Result<Vec<RootRow>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT epoch, hash, previous, signature FROM roots WHERE epoch >= ?1
                 ORDER BY epoch LIMIT ?2",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map(params![i(from), limit], |r| {
                Ok(RootRow {
                    epoch: r.get::<_, i64>(0)? as u64,
                    hash: r.get(1)?,
                    previous: r.get(2)?,
                    time: 0,
                    signature: r.get(3)?,
                })
            })
            .map_err(err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }

    /// The latest signed root.
    pub fn latest_root(&self) -> Result<Option<RootRow>, StorageError> {
        let from: Option<i64> =
            self.conn().query_row("SELECT MAX(epoch) FROM roots", [], |r| r.get(0)).map_err(err)?;
        Ok(match from {
            Some(e) => self.roots(e as u64, 1)?.pop(),
            None => None,
        })
    }

    /// The latest value of every label (for reconciling with the account store).
    pub fn latest_values(&self) -> Result<HashMap<Vec<u8>, Vec<u8>>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT v.data FROM value_states v
                 JOIN (SELECT label, MAX(epoch) AS epoch FROM value_states GROUP BY label) m
                   ON v.label = m.label AND v.epoch = m.epoch",
            )
            .map_err(err)?;
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0)).map_err(err)?;
        let mut out = HashMap::new();
        for row in rows {
            let state: ValueState = serde_json::from_slice(&row.map_err(err)?).map_err(err)?;
            out.insert(state.username.0.clone(), state.value.0.clone());
        }
        Ok(out)
    }

    fn value_state(
        &self,
        label: &[u8],
        flag: ValueStateRetrievalFlag,
    ) -> Result<Option<ValueState>, StorageError> {
        let (filter, arg): (&str, i64) = match flag {
            ValueStateRetrievalFlag::SpecificVersion(v) => ("version = ?2 ORDER BY epoch", i(v)),
            ValueStateRetrievalFlag::SpecificEpoch(e) => ("epoch = ?2", i(e)),
            ValueStateRetrievalFlag::LeqEpoch(e) => ("epoch <= ?2 ORDER BY epoch DESC", i(e)),
            ValueStateRetrievalFlag::MaxEpoch => ("?2 = ?2 ORDER BY epoch DESC", 0),
            ValueStateRetrievalFlag::MinEpoch => ("?2 = ?2 ORDER BY epoch ASC", 0),
        };
        let sql = format!("SELECT data FROM value_states WHERE label = ?1 AND {filter} LIMIT 1");
        let data: Option<Vec<u8>> = self
            .conn()
            .query_row(&sql, params![label, arg], |r| r.get(0))
            .optional()
            .map_err(err)?;
        data.map(|d| serde_json::from_slice(&d).map_err(err)).transpose()
    }

    fn get_one(&self, key: &[u8], kind: StorageType) -> Result<Option<DbRecord>, StorageError> {
        if kind == StorageType::ValueState {
            let ValueStateKey(label, epoch) = ValueState::key_from_full_binary(key).map_err(err)?;
            return Ok(self
                .value_state(&label, ValueStateRetrievalFlag::SpecificEpoch(epoch))?
                .map(DbRecord::ValueState));
        }
        let data: Option<Vec<u8>> = self
            .conn()
            .query_row("SELECT data FROM records WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(err)?;
        data.map(|d| serde_json::from_slice(&d).map_err(err)).transpose()
    }
}

#[async_trait::async_trait]
impl Database for KtStorage {
    async fn set(&self, record: DbRecord) -> Result<(), StorageError> {
        self.batch_set(vec![record], DbSetState::General).await
    }

    async fn batch_set(
        &self,
        records: Vec<DbRecord>,
        _state: DbSetState,
    ) -> Result<(), StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(err)?;
        for record in &records {
            match record {
                DbRecord::ValueState(s) => {
                    let state = serde_json::to_vec(s).map_err(err)?;
                    tx.execute(
                        "INSERT OR REPLACE INTO value_states (label, epoch, version, data)
                         VALUES (?1, ?2, ?3, ?4)",
                        params![s.username.0, i(s.epoch), i(s.version), state],
                    )
                    .map_err(err)?;
                }
                _ => {
                    let data = serde_json::to_vec(record).map_err(err)?;
                    tx.execute(
                        "INSERT OR REPLACE INTO records (key, data) VALUES (?1, ?2)",
                        params![record.get_full_binary_id(), data],
                    )
                    .map_err(err)?;
                }
            }
        }
        tx.commit().map_err(err)
    }

    async fn get<St: Storable>(&self, id: &St::StorageKey) -> Result<DbRecord, StorageError> {
        let key = St::get_full_binary_key_id(id);
        self.get_one(&key, St::data_type())?
            .ok_or_else(|| StorageError::NotFound(format!("{:?}", St::data_type())))
    }

    async fn batch_get<St: Storable>(
        &self,
        ids: &[St::StorageKey],
    ) -> Result<Vec<DbRecord>, StorageError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(r) = self.get_one(&St::get_full_binary_key_id(id), St::data_type())? {
                out.push(r);
            }
        }
        Ok(out)
    }

    async fn get_user_data(&self, username: &AkdLabel) -> Result<KeyData, StorageError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT data FROM value_states WHERE label = ?1 ORDER BY epoch")
            .map_err(err)?;
        let rows = stmt.query_map([&username.0], |r| r.get::<_, Vec<u8>>(0)).map_err(err)?;
        let mut states = Vec::new();
        for row in rows {
            states.push(serde_json::from_slice(&row.map_err(err)?).map_err(err)?);
        }
        if states.is_empty() {
            return Err(StorageError::NotFound("ValueState".into()));
        }
        Ok(KeyData { states })
    }

    async fn get_user_state(
        &self,
        username: &AkdLabel,
        flag: ValueStateRetrievalFlag,
    ) -> Result<ValueState, StorageError> {
        self.value_state(&username.0, flag)?
            .ok_or_else(|| StorageError::NotFound("ValueState".into()))
    }

    async fn get_user_state_versions(
        &self,
        usernames: &[AkdLabel],
        flag: ValueStateRetrievalFlag,
    ) -> Result<HashMap<AkdLabel, (u64, AkdValue)>, StorageError> {
        let mut out = HashMap::new();
        for u in usernames {
            if let Some(s) = self.value_state(&u.0, flag)? {
                out.insert(u.clone(), (s.version, s.value));
            }
        }
        Ok(out)
    }
}
