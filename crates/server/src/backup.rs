//! Consistent copies of a data directory, taken while the server serves, and putting one back.
//!
//! A backup holds both databases (each a single consistent snapshot, made by SQLite's
//! `VACUUM INTO` from a reader that does not stop the server), the keys, and the files the
//! copied database knows, cut to the bytes it had received. `manifest.json` lists every file
//! with its size and SHA-256; a restore checks them all before it touches anything.
//!
//! The key directory is copied before the main database, so the restored directory is never
//! ahead of the device lists it vouches for (the server publishes what it lacks at start).
//!
//! A restore rewinds the server to the moment of the backup, while clients remember later
//! things. It makes up for what it can (docs/operating.md says what clients see):
//! - queue positions and device ids jump ahead, past any the server can have given out
//!   since the backup, so no client mistakes a new message for one it processed;
//! - the session key is replaced, so every token is refused and devices log in again;
//! - every group's roster and epoch are taken from its next commit (devices that joined
//!   after the backup are unknown to the copy).

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Config, Error};

/// The manifest's format version.
const VERSION: u32 = 1;
/// Files copied as they are, if present. The session key is not: a restored server makes a
/// new one.
const KEYS: &[&str] = &["kt.key", "kt-vrf.key", "operator.key", "admin.token"];
/// An upper bound on queue positions (and device ids) the server hands out a second: the
/// writer commits at most 512 submissions a batch, each at most a few thousand copies.
const MAX_IDS_PER_SECOND: u64 = 100_000_000;

/// One file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupFile {
    /// Its path inside the backup (and the data directory).
    pub path: String,
    /// Its size.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// What a backup holds (`manifest.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The format version.
    pub version: u32,
    /// When it was taken (Unix seconds).
    pub created_at: u64,
    /// The domain the server hosted.
    pub domain: String,
    /// Every file.
    pub files: Vec<BackupFile>,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Io(format!("cannot {what} {}: {e}", path.display()))
}

fn db_err(path: &Path, e: rusqlite::Error) -> Error {
    Error::Io(format!("{}: {e}", path.display()))
}

/// A new owner-only directory (it must not exist, or be empty).
fn fresh_dir(dir: &Path) -> Result<(), Error> {
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(|e| io("read", dir, e))?;
        if entries.next().is_some() {
            return Err(Error::Config(format!(
                "{} is not empty; give a new directory for the backup",
                dir.display()
            )));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io("restrict", dir, e))?;
    }
    Ok(())
}

/// Hashes a file.
fn digest(path: &Path) -> Result<(u64, String), Error> {
    let mut file = std::fs::File::open(path).map_err(|e| io("read", path, e))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| io("read", path, e))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(hash.finalize())))
}

/// Copies at most `limit` bytes of `from` to a new owner-only file `to`, synced.
fn copy_file(from: &Path, to: &Path, limit: Option<u64>) -> Result<(), Error> {
    let source = std::fs::File::open(from).map_err(|e| io("read", from, e))?;
    crate::private_file(to)?;
    let mut target = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(to)
        .map_err(|e| io("write", to, e))?;
    let mut source: Box<dyn std::io::Read> = match limit {
        Some(n) => Box::new(source.take(n)),
        None => Box::new(source),
    };
    std::io::copy(&mut source, &mut target).map_err(|e| io("write", to, e))?;
    target.flush().and_then(|()| target.sync_all()).map_err(|e| io("write", to, e))
}

/// A consistent copy of a SQLite database, from a reader beside the server.
fn snapshot(from: &Path, to: &Path) -> Result<(), Error> {
    let conn = rusqlite::Connection::open_with_flags(
        from,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| db_err(from, e))?;
    conn.busy_timeout(std::time::Duration::from_secs(30)).map_err(|e| db_err(from, e))?;
    let target = to.to_str().ok_or_else(|| Error::Config("the backup path is not UTF-8".into()))?;
    conn.execute("VACUUM INTO ?1", [target]).map_err(|e| db_err(from, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io("restrict", to, e))?;
    }
    Ok(())
}

/// Takes a backup of `config.data_dir` into `out` (a new or empty directory), while the
/// server serves or not.
pub fn backup(config: &Config, out: &Path) -> Result<Manifest, Error> {
    let data = &config.data_dir;
    if !data.join("sotto.db").exists() {
        return Err(Error::Config(format!("{} holds no server database", data.display())));
    }
    fresh_dir(out)?;
    let created_at = sotto_core::unix_now();
    let mut paths: Vec<String> = Vec::new();
    // The key directory first: the copy of the main database is then at least as new.
    if data.join("kt.db").exists() {
        snapshot(&data.join("kt.db"), &out.join("kt.db"))?;
        paths.push("kt.db".into());
    }
    snapshot(&data.join("sotto.db"), &out.join("sotto.db"))?;
    paths.push("sotto.db".into());
    for key in KEYS {
        if data.join(key).exists() {
            copy_file(&data.join(key), &out.join(key), None)?;
            paths.push((*key).into());
        }
    }
    // The files the copied database knows, as far as it knows them.
    let blobs: Vec<(Vec<u8>, i64)> = {
        let db = out.join("sotto.db");
        let conn = rusqlite::Connection::open(&db).map_err(|e| db_err(&db, e))?;
        let mut stmt = conn
            .prepare("SELECT id, received FROM blobs ORDER BY id")
            .map_err(|e| db_err(&db, e))?;
        let rows =
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(|e| db_err(&db, e))?;
        rows.collect::<Result<_, _>>().map_err(|e| db_err(&db, e))?
    };
    if !blobs.is_empty() {
        std::fs::create_dir_all(out.join("blobs")).map_err(|e| io("create", out, e))?;
    }
    for (id, received) in blobs {
        let name = format!("blobs/{}", hex::encode(&id));
        let from = data.join(&name);
        if !from.exists() {
            // Deleted since the snapshot: its row goes with the next sweep after a restore.
            continue;
        }
        copy_file(&from, &out.join(&name), Some(u64::try_from(received).unwrap_or(0)))?;
        paths.push(name);
    }
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let (size, sha256) = digest(&out.join(&path))?;
        files.push(BackupFile { path, size, sha256 });
    }
    let manifest = Manifest { version: VERSION, created_at, domain: config.domain.clone(), files };
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Internal(e.to_string()))?;
    let path = out.join("manifest.json");
    crate::private_file(&path)?;
    std::fs::write(&path, text).map_err(|e| io("write", &path, e))?;
    Ok(manifest)
}

/// Reads and checks a backup: the manifest, and every file's size and digest.
pub fn verify(from: &Path) -> Result<Manifest, Error> {
    let path = from.join("manifest.json");
    let text = std::fs::read(&path).map_err(|e| io("read", &path, e))?;
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| Error::Config(format!("{} is not a backup manifest: {e}", path.display())))?;
    if manifest.version != VERSION {
        return Err(Error::Config(format!(
            "this backup has format {}; this server reads format {VERSION}",
            manifest.version
        )));
    }
    if !manifest.files.iter().any(|f| f.path == "sotto.db") {
        return Err(Error::Config("the backup has no sotto.db".into()));
    }
    for file in &manifest.files {
        // Only names the backup itself writes: never a path that leaves the directory.
        let safe = file.path == "sotto.db"
            || file.path == "kt.db"
            || KEYS.contains(&file.path.as_str())
            || file.path.strip_prefix("blobs/").is_some_and(|h| {
                !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            });
        if !safe {
            return Err(Error::Config(format!(
                "the backup lists an unexpected file {:?}",
                file.path
            )));
        }
        let (size, sha256) = digest(&from.join(&file.path))?;
        if size != file.size || sha256 != file.sha256 {
            return Err(Error::Config(format!(
                "{} in the backup is damaged (its size or SHA-256 differs from the manifest); \
                 nothing was restored",
                file.path
            )));
        }
    }
    Ok(manifest)
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The backup's manifest.
    pub manifest: Manifest,
    /// Where the data directory's previous contents were moved, if it had any.
    pub previous: Option<PathBuf>,
}

/// Puts the backup in `from` back into `config.data_dir`. The server must be stopped (the
/// caller holds [`crate::lock_data_dir`]). A data directory that holds a database is refused
/// unless `replace`: its contents then move to `DATA/replaced-TIME/`.
pub fn restore(
    config: &Config,
    from: &Path,
    replace: bool,
    actor: &str,
) -> Result<Restored, Error> {
    let manifest = verify(from)?;
    if manifest.domain != config.domain {
        return Err(Error::Config(format!(
            "the backup is of a server for @{}, and this one is for @{}; give --domain {}",
            manifest.domain, config.domain, manifest.domain
        )));
    }
    let data = &config.data_dir;
    let now = sotto_core::unix_now();
    let mut previous = None;
    if data.join("sotto.db").exists() {
        if !replace {
            return Err(Error::Config(format!(
                "{} already holds a server database; add --replace to move it aside and \
                 restore over it",
                data.display()
            )));
        }
        let aside = data.join(format!("replaced-{now}"));
        std::fs::create_dir_all(&aside).map_err(|e| io("create", &aside, e))?;
        for entry in std::fs::read_dir(data).map_err(|e| io("read", data, e))? {
            let entry = entry.map_err(|e| io("read", data, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name == "server.lock" || name.starts_with("replaced-") {
                continue;
            }
            std::fs::rename(entry.path(), aside.join(&*name))
                .map_err(|e| io("move aside", &entry.path(), e))?;
        }
        previous = Some(aside);
    }
    std::fs::create_dir_all(data.join("blobs")).map_err(|e| io("create", data, e))?;
    for file in &manifest.files {
        copy_file(&from.join(&file.path), &data.join(&file.path), None)?;
    }
    // A new session key: every token given out since the backup is refused.
    let _ = std::fs::remove_file(data.join("session.key"));
    for stale in ["server.url", "admin.url"] {
        let _ = std::fs::remove_file(data.join(stale));
    }
    let db = data.join("sotto.db");
    // Bring the copy to this version's schema before adjusting it.
    drop(crate::store::SqliteStore::open(&db)?);
    let mut conn = rusqlite::Connection::open(&db).map_err(|e| db_err(&db, e))?;
    let tx = conn.transaction().map_err(|e| db_err(&db, e))?;
    let gap = now
        .saturating_sub(manifest.created_at)
        .saturating_add(10)
        .saturating_mul(MAX_IDS_PER_SECOND);
    let gap = i64::try_from(gap).unwrap_or(i64::MAX / 4);
    for table in ["queue", "devices"] {
        let current: i64 = tx
            .query_row(
                &format!(
                    "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = ?1), 0), \
                          COALESCE((SELECT MAX(rowid) FROM {table}), 0))"
                ),
                [table],
                |r| r.get(0),
            )
            .map_err(|e| db_err(&db, e))?;
        tx.execute("DELETE FROM sqlite_sequence WHERE name = ?1", [table])
            .map_err(|e| db_err(&db, e))?;
        tx.execute(
            "INSERT INTO sqlite_sequence (name, seq) VALUES (?1, ?2)",
            rusqlite::params![table, current.saturating_add(gap)],
        )
        .map_err(|e| db_err(&db, e))?;
    }
    tx.execute("UPDATE groups SET roster = 0, restored = 1", []).map_err(|e| db_err(&db, e))?;
    tx.execute(
        "INSERT INTO audit (at, actor, action, subject, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        rusqlite::params![
            i64::try_from(now).unwrap_or(i64::MAX),
            format!("{} (data directory)", crate::admin::actor_name(actor)),
            "server.restore",
            config.domain,
            format!("backup taken at {}", manifest.created_at)
        ],
    )
    .map_err(|e| db_err(&db, e))?;
    tx.commit().map_err(|e| db_err(&db, e))?;
    Ok(Restored { manifest, previous })
}
