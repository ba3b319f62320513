//! Sotto's server library.
//!
//! The server relays and stores opaque MLS messages. It knows accounts, their devices' public
//! keys, key packages waiting to be claimed, the current epoch of each group (to order commits)
//! and, for each device, a durable queue of ciphertexts that leaves the queue only when that
//! device acknowledges it. It never holds a key that decrypts a message.
//!
//! - [`Config`] — what to serve and where.
//! - [`store`] — the storage seam ([`store::Store`]) and its SQLite backend.
//! - [`serve`] — runs the HTTP/WebSocket API (axum on tokio; TLS by rustls when configured).
//! - [`create_invite`] — mints an invite code (the operator's `sotto-server invite create`).
//! - [`create_operator_key`] — the key managed accounts accept for revocations and wipes.
//! - [`backup`] — consistent copies of the data directory while serving, and restores.
//! - [`admin`] — the operator's requests (account lifecycle, invites, audit log), executed by
//!   the running server's admin API or on the data directory.
#![forbid(unsafe_code)]

pub mod admin;
mod api;
pub mod backup;
mod config;
mod error;
pub mod kt;
mod limits;
mod metrics;
mod net;
mod session;
pub mod store;

use std::sync::Arc;

pub use config::{Clock, Config, TlsFiles};
pub use error::Error;
pub use net::{InProcess, bind, bind_admin, serve, serve_with_admin};
use sha2::{Digest, Sha256};
use sotto_core::account::IdentityKey;
pub use sotto_proto::RegistrationMode;
use store::Store;

/// SHA-256 of an invite code. Only hashes are stored, so a copy of the database does not
/// give working codes.
pub(crate) fn invite_hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// An invite as minted.
#[derive(Debug, Clone)]
pub struct Invite {
    /// The code to hand to the new user (a secret until used).
    pub code: String,
    /// When it expires (Unix seconds).
    pub expires_at: u64,
    /// How many accounts it can create.
    pub uses: u32,
}

/// Mints an invite code valid for `ttl_secs` seconds and `uses` registrations; the accounts
/// it registers get a term of `valid_for` seconds, if given.
pub fn create_invite(
    store: &dyn Store,
    ttl_secs: u64,
    uses: u32,
    valid_for: Option<u64>,
) -> Result<Invite, Error> {
    let raw = sotto_core::random_bytes(15).map_err(|e| Error::Internal(e.to_string()))?;
    // Base32 without padding: easy to read aloud and type, 120 bits of entropy.
    const ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let mut bits = 0u32;
    let mut acc = 0u32;
    let mut chars = Vec::with_capacity(24);
    for b in raw {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            chars.push(ALPHABET[((acc >> bits) & 31) as usize]);
        }
    }
    // Four groups of six: xxxxxx-xxxxxx-xxxxxx-xxxxxx.
    let code = chars
        .chunks(6)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("-");
    let now = sotto_core::unix_now();
    // At most what the database holds, so that what is said is what is stored.
    let expires_at = now.saturating_add(ttl_secs).min(i64::MAX as u64);
    store.create_invite(&invite_hash(&code), expires_at, uses, valid_for, now)?;
    Ok(Invite { code, expires_at, uses })
}

/// Holds the data directory for one serving process; released when dropped (or when the
/// process ends, however it ends).
#[derive(Debug)]
pub struct DataLock(#[allow(dead_code)] std::fs::File);

/// Takes the data directory for this process: a second server on the same directory would
/// corrupt nothing (SQLite locks its files) but would split clients between two processes,
/// each with its own rate limits, revocations in memory and key directory publisher. The
/// lock file names the process that holds it.
pub fn lock_data_dir(config: &Config) -> Result<DataLock, Error> {
    use std::io::{Read as _, Seek as _, Write as _};
    let path = config.data_dir.join("server.lock");
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| Error::Io(format!("cannot create {}: {e}", config.data_dir.display())))?;
    // Owner-only, like everything in the data directory.
    private_file(&path)?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::Io(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() { String::new() } else { format!(" (pid {holder})") };
            return Err(Error::InUse(format!(
                "another sotto-server{who} serves {}; stop it first, or give this one its own \
                 --data directory",
                config.data_dir.display()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(Error::Io(format!("cannot lock {}: {e}", path.display())));
        }
    }
    // Whatever a server that ended badly left: the next one writes its own.
    let _ = std::fs::remove_file(config.data_dir.join("admin.url"));
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = write!(file, "{}", std::process::id());
    let _ = file.flush();
    Ok(DataLock(file))
}

/// Refuses a data directory that a restore left half done (its marker is there): a server
/// started on it would make new key-directory keys, and every client would refuse it.
pub fn check_no_interrupted_restore(config: &Config) -> Result<(), Error> {
    let marker = config.data_dir.join(backup::RESTORE_MARKER);
    if marker.exists() {
        return Err(Error::Config(format!(
            "a restore into {} did not finish ({} is there); run the restore again with \
             --replace (what it replaced is in a replaced-* directory beside it)",
            config.data_dir.display(),
            marker.display()
        )));
    }
    Ok(())
}

/// Where a running server said it listens (`DATA/server.url`), for the subcommands that talk
/// to it.
pub fn serving_url(config: &Config) -> Option<String> {
    let url = std::fs::read_to_string(config.data_dir.join("server.url")).ok()?;
    let url = url.trim();
    (url.starts_with("http://") || url.starts_with("https://")).then(|| url.to_string())
}

/// Records where this server listens, for [`serving_url`].
pub fn record_serving_url(config: &Config, url: &str) -> Result<(), Error> {
    let path = config.data_dir.join("server.url");
    private_file(&path)?;
    std::fs::write(&path, url)
        .map_err(|e| Error::Io(format!("cannot write {}: {e}", path.display())))
}

fn operator_key_path(config: &Config) -> std::path::PathBuf {
    config.data_dir.join("operator.key")
}

/// Reads a 32-byte secret key file, if it exists.
fn read_secret(path: &std::path::Path) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>, Error> {
    match std::fs::read(path) {
        Ok(secret) if secret.len() == 32 => Ok(Some(zeroize::Zeroizing::new(secret))),
        Ok(_) => Err(Error::Config(format!("{} is not a 32-byte key", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io(format!("cannot read {}: {e}", path.display()))),
    }
}

/// Reads a 32-byte secret key file, creating it (random, owner-readable only) if missing.
pub(crate) fn secret_file(path: &std::path::Path) -> Result<zeroize::Zeroizing<Vec<u8>>, Error> {
    if let Some(secret) = read_secret(path)? {
        return Ok(secret);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Io(format!("cannot create {}: {e}", dir.display())))?;
    }
    let secret = zeroize::Zeroizing::new(
        sotto_core::random_bytes(32).map_err(|e| Error::Internal(e.to_string()))?,
    );
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    use std::io::Write as _;
    options
        .open(path)
        .and_then(|mut f| f.write_all(&secret).and_then(|()| f.sync_all()))
        .map_err(|e| Error::Io(format!("cannot write {}: {e}", path.display())))?;
    Ok(secret)
}

/// The operator's signing key, if `sotto-server operator-key` made one. Managed accounts
/// accept its public half; it signs their revocations and wipes.
pub fn load_operator_key(config: &Config) -> Result<Option<IdentityKey>, Error> {
    read_secret(&operator_key_path(config))?
        .map(|s| IdentityKey::from_secret(&s).map_err(|e| Error::Internal(e.to_string())))
        .transpose()
}

/// Returns the operator key, creating it (owner-readable only) on first use.
pub fn create_operator_key(config: &Config) -> Result<IdentityKey, Error> {
    let secret = secret_file(&operator_key_path(config))?;
    IdentityKey::from_secret(&secret).map_err(|e| Error::Internal(e.to_string()))
}

/// Signs, with the operator key, an order for a managed account's device to erase itself
/// (for `POST /v1/operator/wipe`).
pub fn operator_wipe_command(
    config: &Config,
    store: &dyn Store,
    address: &str,
    device_id: u64,
) -> Result<sotto_proto::WipeRequest, Error> {
    use sotto_core::account::{Signer, WipeCommand};
    let key = load_operator_key(config)?.ok_or_else(|| {
        Error::Config("no operator key; create one with `sotto-server operator-key`".into())
    })?;
    let address: sotto_core::Address =
        address.parse().map_err(|e: sotto_core::Error| Error::Config(e.to_string()))?;
    let device = store
        .device(device_id)?
        .filter(|d| d.address == address.as_str())
        .ok_or_else(|| Error::Config(format!("{address} has no device {device_id}")))?;
    let now = sotto_core::unix_now();
    let command = WipeCommand::new(address, device.device_key, Signer::Operator, now)
        .map_err(|e| Error::Internal(e.to_string()))?
        .sign(&key);
    Ok(sotto_proto::WipeRequest {
        command: sotto_proto::SignedData {
            body: sotto_proto::Bytes(command.body),
            signature: sotto_proto::Bytes(command.signature),
        },
    })
}

/// Opens the configured store: the embedded SQLite database in the data directory.
pub fn open_store(config: &Config) -> Result<Arc<dyn Store>, Error> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| Error::Io(format!("cannot create {}: {e}", config.data_dir.display())))?;
    #[cfg(unix)]
    {
        // Only ciphertext and public keys, but also who talks to whom: owner only.
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700));
    }
    let db = config.data_dir.join("sotto.db");
    private_file(&db)?;
    let store = store::SqliteStore::open(&db)?;
    Ok(Arc::new(store))
}

/// Makes `path` readable by its owner only, creating it empty if missing (SQLite gives its
/// journal files the database file's mode, so they follow). The data directory is already
/// owner-only; this keeps the files so when copied out of it or when the directory's mode
/// is loosened.
pub(crate) fn private_file(path: &std::path::Path) -> Result<(), Error> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(|e| Error::Io(format!("cannot open {}: {e}", path.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for suffix in ["", "-wal", "-shm"] {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            let file = std::path::Path::new(&name);
            match std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)) {
                Ok(()) => {}
                // A journal that is not there (or that a closing connection removed just now)
                // is made again with the database file's mode.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !suffix.is_empty() => {}
                Err(e) => {
                    return Err(Error::Io(format!("cannot restrict {}: {e}", file.display())));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invites_are_random_readable_and_stored_hashed() {
        let store = store::SqliteStore::in_memory().expect("store");
        let a = create_invite(&store, 60, 1, None).expect("invite");
        let b = create_invite(&store, 60, 1, None).expect("invite");
        assert_ne!(a.code, b.code);
        assert_eq!(a.code.len(), 27, "{}", a.code);
        assert_eq!(a.code.split('-').map(str::len).collect::<Vec<_>>(), vec![6, 6, 6, 6]);
        assert!(a.code.chars().all(|c| c == '-' || c.is_ascii_alphanumeric()));
        let acct = store::NewAccount {
            address: "a@x",
            device_key: b"k",
            invite_hash: Some(&invite_hash(&a.code)),
            list: &store::ListRecord {
                version: 1,
                identity_key: vec![1; 32],
                recovery_key: vec![2; 32],
                operator_key: None,
                body: b"{}".to_vec(),
                signature: vec![0; 64],
            },
        };
        store.register(&acct, sotto_core::unix_now()).expect("code works");
    }
}
