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
//! - every group's epoch is taken from its next submission, and a group that moved on since
//!   the backup has its roster sealed again by the next member to submit, who names it
//!   (devices that joined after the backup are unknown to the copy).

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Config, Error};

/// The manifest's format version.
const VERSION: u32 = 1;
/// The largest manifest read.
const MAX_MANIFEST: u64 = 64 << 20;
/// A file in the data directory while a restore swaps files: a server refuses to start on a
/// directory a restore left half done.
pub const RESTORE_MARKER: &str = "restore-in-progress";

/// Files copied as they are, if present. The session key is not: a restored server makes a
/// new one.
const KEYS: &[&str] = &["kt.key", "kt-vrf.key", "operator.key", "admin.token", "metrics.token"];
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

/// Makes `dir`, owner-only, refusing one that exists: a directory someone else made (or
/// holds files in) could read the copy or redirect its writes.
fn fresh_dir(dir: &Path) -> Result<(), Error> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| io("create", parent, e))?;
    }
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::Config(format!(
                "{} exists; give a new directory (the backup makes it, readable by this user \
                 only)",
                dir.display()
            ))
        } else {
            io("create", dir, e)
        }
    })
}

/// Hashes a regular file (never a link, a device or a pipe), reading at most `limit` bytes.
fn digest(path: &Path, limit: u64) -> Result<(u64, String), Error> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| io("read", path, e))?;
    if !meta.file_type().is_file() {
        return Err(Error::Config(format!("{} is not a regular file", path.display())));
    }
    let mut file = std::fs::File::open(path).map_err(|e| io("read", path, e))?.take(limit);
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

/// Takes a backup of `config.data_dir` into `out` (a new directory it makes), while the
/// server serves or not.
pub fn backup(config: &Config, out: &Path) -> Result<Manifest, Error> {
    let data = &config.data_dir;
    if !data.join("sotto.db").exists() {
        return Err(Error::Config(format!("{} holds no server database", data.display())));
    }
    if let (Some(parent), Ok(data)) =
        (out.parent().and_then(|p| p.canonicalize().ok()), data.canonicalize())
        && parent.starts_with(&data)
    {
        return Err(Error::Config(format!(
            "a backup inside the data directory {} would be lost with it; give a directory \
             elsewhere",
            data.display()
        )));
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
        let (size, sha256) = digest(&out.join(&path), u64::MAX)?;
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
    let meta = std::fs::symlink_metadata(&path).map_err(|e| io("read", &path, e))?;
    if !meta.file_type().is_file() || meta.len() > MAX_MANIFEST {
        return Err(Error::Config(format!(
            "{} is not a backup manifest (a regular file of at most {MAX_MANIFEST} bytes)",
            path.display()
        )));
    }
    let mut text = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(MAX_MANIFEST).read_to_end(&mut text))
        .map_err(|e| io("read", &path, e))?;
    if let Ok(blobs) = std::fs::symlink_metadata(from.join("blobs"))
        && !blobs.file_type().is_dir()
    {
        return Err(Error::Config("the backup's blobs is not a directory".into()));
    }
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
    let mut seen = std::collections::HashSet::new();
    for file in &manifest.files {
        if !seen.insert(file.path.as_str()) {
            return Err(Error::Config(format!("the backup lists {:?} twice", file.path)));
        }
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
        let (size, sha256) = digest(&from.join(&file.path), file.size.saturating_add(1))?;
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

/// Files beside a database that SQLite would apply to it: a restored database must not meet
/// its predecessor's.
const SIDE_FILES: &[&str] = &["-wal", "-shm", "-journal"];

/// Puts the backup in `from` back into `config.data_dir`. The server must be stopped (the
/// caller holds [`crate::lock_data_dir`]). If the directory holds any file the restore would
/// write, it is refused unless `replace`: those files then move to `DATA/replaced-TIME/`.
///
/// Nothing in the data directory changes until the copy is complete and its database opens
/// (in a staging directory inside it); a failure after that puts the previous files back.
pub fn restore(
    config: &Config,
    from: &Path,
    replace: bool,
    actor: &str,
) -> Result<Restored, Error> {
    let data = &config.data_dir;
    std::fs::create_dir_all(data).map_err(|e| io("create", data, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700));
    }
    let inside = match (from.canonicalize(), data.canonicalize()) {
        (Ok(f), Ok(d)) => f.starts_with(&d),
        _ => false,
    };
    if inside {
        return Err(Error::Config(format!(
            "the backup is inside the data directory {}; move it elsewhere first",
            data.display()
        )));
    }
    let manifest = verify(from)?;
    if manifest.domain != config.domain {
        return Err(Error::Config(format!(
            "the backup is of a server for @{}, and this one is for @{}; give --domain {}",
            manifest.domain, config.domain, manifest.domain
        )));
    }
    let now = sotto_core::unix_now();
    let staging = data.join(format!(".restore-{now}-{}", std::process::id()));
    let staged = stage(config, from, &manifest, &staging, now, actor);
    let result = staged.and_then(|()| swap_in(data, &staging, &manifest, replace, now));
    let _ = std::fs::remove_dir_all(&staging);
    let previous = result?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for dir in [data.clone(), data.join("blobs")] {
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
    }
    Ok(Restored { manifest, previous })
}

/// Copies the backup into `staging`, brings its database to this version's schema and makes
/// up for the rewind.
fn stage(
    config: &Config,
    from: &Path,
    manifest: &Manifest,
    staging: &Path,
    now: u64,
    actor: &str,
) -> Result<(), Error> {
    fresh_dir(staging)?;
    std::fs::create_dir(staging.join("blobs")).map_err(|e| io("create", staging, e))?;
    for file in &manifest.files {
        copy_file(&from.join(&file.path), &staging.join(&file.path), Some(file.size))?;
        // Checked again as copied: the backup may have changed since it was verified.
        if digest(&staging.join(&file.path), file.size.saturating_add(1))?.1 != file.sha256 {
            return Err(Error::Config(format!("{} changed while it was restored", file.path)));
        }
    }
    let db = staging.join("sotto.db");
    drop(crate::store::SqliteStore::open(&db)?);
    if staging.join("kt.db").exists() {
        let kt = staging.join("kt.db");
        let conn = rusqlite::Connection::open(&kt).map_err(|e| db_err(&kt, e))?;
        let check: String =
            conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(|e| db_err(&kt, e))?;
        if check != "ok" {
            return Err(Error::Config(format!("kt.db in the backup is damaged: {check}")));
        }
    }
    let mut conn = rusqlite::Connection::open(&db).map_err(|e| db_err(&db, e))?;
    let tx = conn.transaction().map_err(|e| db_err(&db, e))?;
    let gap = now
        .saturating_sub(manifest.created_at)
        .saturating_add(10)
        .saturating_mul(MAX_IDS_PER_SECOND);
    let gap = i64::try_from(gap).unwrap_or(i64::MAX / 4);
    // Queue positions count per device.
    tx.execute("UPDATE devices SET queue_seq = queue_seq + ?1", [gap])
        .map_err(|e| db_err(&db, e))?;
    let table = "devices";
    let current: i64 = tx
        .query_row(
            "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = ?1), 0), \
             COALESCE((SELECT MAX(rowid) FROM devices), 0))",
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
    // A sealed roster stays: if the group has not moved on since, its members' credential
    // still opens it; if it has, the next member to submit seals the roster again.
    tx.execute("UPDATE groups SET roster = 0, restored = 1", []).map_err(|e| db_err(&db, e))?;
    tx.execute("DELETE FROM group_members", []).map_err(|e| db_err(&db, e))?;
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
    drop(conn);
    for name in ["sotto.db", "kt.db"] {
        for side in SIDE_FILES {
            let _ = std::fs::remove_file(staging.join(format!("{name}{side}")));
        }
    }
    Ok(())
}

/// Moves what the restore replaces aside and the staged files into place; on failure, puts
/// everything back. Returns where the replaced files went, if any.
fn swap_in(
    data: &Path,
    staging: &Path,
    manifest: &Manifest,
    replace: bool,
    now: u64,
) -> Result<Option<PathBuf>, Error> {
    // Everything the restored server would read: the files of the backup, the databases'
    // side files, the blobs, and the session key (a new one is made at start).
    let mut replaced: Vec<String> =
        vec!["blobs".into(), "session.key".into(), "sotto.db".into(), "kt.db".into()];
    // Every key the server reads, even one the backup lacks: it would not belong with it.
    replaced.extend(KEYS.iter().map(|k| (*k).to_string()));
    for name in ["sotto.db", "kt.db"] {
        for side in SIDE_FILES {
            replaced.push(format!("{name}{side}"));
        }
    }
    let present: Vec<&String> =
        replaced.iter().filter(|n| std::fs::symlink_metadata(data.join(n)).is_ok()).collect();
    let only_empty_blobs = present.len() == 1
        && present[0] == "blobs"
        && std::fs::read_dir(data.join("blobs")).map(|mut d| d.next().is_none()).unwrap_or(false);
    if !present.is_empty() && !only_empty_blobs && !replace {
        return Err(Error::Config(format!(
            "{} already holds server data ({}); add --replace to move it aside and restore \
             over it",
            data.display(),
            present.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    let mut aside = None;
    let mut moves: Vec<(PathBuf, PathBuf)> = Vec::new();
    let marker = data.join(RESTORE_MARKER);
    std::fs::write(&marker, format!("{now}\n")).map_err(|e| io("write", &marker, e))?;
    let mut run = || -> Result<(), Error> {
        if !present.is_empty() {
            let mut dir = data.join(format!("replaced-{now}"));
            let mut n = 1;
            while dir.exists() {
                n += 1;
                dir = data.join(format!("replaced-{now}-{n}"));
            }
            fresh_dir(&dir)?;
            for name in &present {
                let (from, to) = (data.join(name), dir.join(name));
                std::fs::rename(&from, &to).map_err(|e| io("move aside", &from, e))?;
                moves.push((from, to));
            }
            aside = Some(dir);
        }
        let mut names: Vec<String> = manifest
            .files
            .iter()
            .filter(|f| !f.path.starts_with("blobs/"))
            .map(|f| f.path.clone())
            .collect();
        names.push("blobs".into());
        for name in names {
            let (from, to) = (staging.join(&name), data.join(&name));
            std::fs::rename(&from, &to).map_err(|e| io("move into place", &to, e))?;
            moves.push((from, to));
        }
        Ok(())
    };
    match run() {
        Ok(()) => {
            for stale in ["server.url", "admin.url"] {
                let _ = std::fs::remove_file(data.join(stale));
            }
            let _ = std::fs::remove_file(&marker);
            Ok(aside)
        }
        Err(e) => {
            let mut stuck = Vec::new();
            for (from, to) in moves.into_iter().rev() {
                if std::fs::rename(&to, &from).is_err() {
                    stuck.push(to.display().to_string());
                }
            }
            if let Some(dir) = aside {
                let _ = std::fs::remove_dir(dir);
            }
            if !stuck.is_empty() {
                // The marker stays: the server will not start on this directory.
                return Err(Error::Io(format!(
                    "{e}; and these could not be put back: {} (move them back by hand, then \
                     delete {})",
                    stuck.join(", "),
                    marker.display()
                )));
            }
            let _ = std::fs::remove_file(&marker);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data directory with one account, and a backup of it.
    fn setup() -> (tempfile::TempDir, Config, PathBuf) {
        let dir = tempfile::tempdir().expect("dir");
        let config = Config { data_dir: dir.path().join("data"), ..Config::default() };
        let store = crate::open_store(&config).expect("store");
        store.create_invite(b"code", u64::MAX / 2, 1, None, 0).expect("invite");
        drop(store);
        std::fs::write(config.data_dir.join("kt.key"), [7u8; 32]).expect("key");
        let out = dir.path().join("backup");
        backup(&config, &out).expect("backup");
        (dir, config, out)
    }

    fn invites(config: &Config) -> usize {
        crate::open_store(config).expect("store").invites().expect("invites").len()
    }

    #[test]
    fn a_backup_needs_a_new_directory_outside_the_data() {
        let (dir, config, _) = setup();
        let existing = dir.path().join("empty");
        std::fs::create_dir(&existing).expect("dir");
        let refused = backup(&config, &existing).expect_err("exists");
        assert!(refused.to_string().contains("exists"), "{refused}");
        let inside = backup(&config, &config.data_dir.join("copy")).expect_err("inside");
        assert!(inside.to_string().contains("inside the data directory"), "{inside}");
    }

    #[test]
    fn keys_the_backup_lacks_go_aside_and_a_half_done_restore_stops_the_server() {
        let (_dir, config, out) = setup();
        std::fs::write(config.data_dir.join("operator.key"), [9u8; 32]).expect("key");
        let done = restore(&config, &out, true, "ops").expect("restore");
        assert!(!config.data_dir.join("operator.key").exists(), "not the backup's");
        assert!(done.previous.expect("aside").join("operator.key").exists());
        assert!(crate::check_no_interrupted_restore(&config).is_ok());
        std::fs::write(config.data_dir.join(RESTORE_MARKER), "1\n").expect("marker");
        let refused = crate::check_no_interrupted_restore(&config).expect_err("marker");
        assert!(refused.to_string().contains("did not finish"), "{refused}");
    }

    #[test]
    fn a_failed_restore_changes_nothing() {
        let (dir, config, out) = setup();
        // A database of a newer schema, with its manifest entry made to match.
        let bad = dir.path().join("bad");
        std::fs::create_dir(&bad).expect("dir");
        for f in ["sotto.db", "kt.db", "kt.key", "manifest.json"] {
            if out.join(f).exists() {
                std::fs::copy(out.join(f), bad.join(f)).expect("copy");
            }
        }
        let conn = rusqlite::Connection::open(bad.join("sotto.db")).expect("open");
        conn.pragma_update(None, "user_version", 99).expect("pragma");
        drop(conn);
        let mut manifest: Manifest =
            serde_json::from_slice(&std::fs::read(bad.join("manifest.json")).expect("read"))
                .expect("manifest");
        manifest.files.retain(|f| !f.path.starts_with("blobs/"));
        for f in &mut manifest.files {
            (f.size, f.sha256) = digest(&bad.join(&f.path), u64::MAX).expect("digest");
        }
        std::fs::write(bad.join("manifest.json"), serde_json::to_vec(&manifest).expect("json"))
            .expect("write");
        let before: Vec<_> = std::fs::read_dir(&config.data_dir)
            .expect("read")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(restore(&config, &bad, true, "ops").is_err());
        let after: Vec<_> = std::fs::read_dir(&config.data_dir)
            .expect("read")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(before, after, "nothing moved");
        assert_eq!(invites(&config), 1);

        // A backup kept inside the data directory is refused before anything happens.
        let inside = config.data_dir.join("kept");
        std::fs::rename(&out, &inside).expect("move");
        let refused = restore(&config, &inside, true, "ops").expect_err("inside");
        assert!(refused.to_string().contains("inside the data directory"), "{refused}");
        assert_eq!(invites(&config), 1);
    }

    #[test]
    fn restore_refuses_any_existing_file_without_replace_and_leaves_no_stale_wal() {
        let (_dir, config, out) = setup();
        // Only kt.db and a write-ahead log are left: still refused without --replace.
        std::fs::remove_file(config.data_dir.join("sotto.db")).expect("rm");
        std::fs::write(config.data_dir.join("sotto.db-wal"), b"stale").expect("wal");
        let refused = restore(&config, &out, false, "ops").expect_err("refused");
        assert!(refused.to_string().contains("--replace"), "{refused}");
        let done = restore(&config, &out, true, "ops").expect("restore");
        let aside = done.previous.expect("moved aside");
        assert!(aside.join("sotto.db-wal").exists());
        assert!(!config.data_dir.join("sotto.db-wal").exists());
        assert_eq!(invites(&config), 1);
        // Twice in the same second: a second directory for what the second one replaces.
        let again = restore(&config, &out, true, "ops").expect("again");
        assert_ne!(again.previous.expect("aside"), aside);
    }

    #[test]
    fn a_backup_holding_links_or_duplicates_is_refused() {
        let (_dir, config, out) = setup();
        std::fs::remove_file(out.join("kt.key")).expect("rm");
        #[cfg(unix)]
        std::os::unix::fs::symlink("/dev/zero", out.join("kt.key")).expect("link");
        let refused = verify(&out).expect_err("link");
        assert!(refused.to_string().contains("not a regular file"), "{refused}");
        std::fs::remove_file(out.join("kt.key")).expect("rm");
        std::fs::write(out.join("kt.key"), [7u8; 32]).expect("key");
        let mut manifest: Manifest =
            serde_json::from_slice(&std::fs::read(out.join("manifest.json")).expect("read"))
                .expect("manifest");
        let first = manifest.files[0].clone();
        manifest.files.push(first);
        std::fs::write(out.join("manifest.json"), serde_json::to_vec(&manifest).expect("json"))
            .expect("write");
        let refused = restore(&config, &out, true, "ops").expect_err("twice");
        assert!(refused.to_string().contains("twice"), "{refused}");
    }
}
