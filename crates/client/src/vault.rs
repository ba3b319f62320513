//! The home's database key. Everything a client keeps lives in one SQLCipher database,
//! encrypted with a random 256-bit key; that key is stored only wrapped (ChaCha20-Poly1305)
//! under a key derived from the user's passphrase with Argon2id, in `keys.json`. Changing
//! the passphrase re-wraps the key and leaves the database untouched.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sotto_core::KdfCost;
use zeroize::Zeroizing;

use crate::Error;

const KEY_FILE: &str = "keys.json";
const AAD: &[u8] = b"sotto/v1/home-key";

/// The database key of an unlocked home.
pub(crate) struct HomeKey(pub(crate) Zeroizing<[u8; 32]>);

impl std::fmt::Debug for HomeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HomeKey([redacted])")
    }
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    v: u32,
    kdf: String,
    m_kib: u32,
    t: u32,
    p: u32,
    salt: String,
    wrapped: String,
}

/// The Argon2id cost for new keys. The test suite, in debug builds only, may ask for a cheap
/// one (`SOTTO_INSECURE_FAST_KDF=1`) so that hundreds of CLI runs stay fast; release builds
/// always use the recommended cost. A home keeps the cost it was made with.
fn cost_for_new_keys() -> KdfCost {
    if cfg!(debug_assertions) && std::env::var_os("SOTTO_INSECURE_FAST_KDF").is_some() {
        return KdfCost { m_kib: 64, t: 1, p: 1 };
    }
    KdfCost::RECOMMENDED
}

fn key_path(home: &Path) -> std::path::PathBuf {
    home.join(KEY_FILE)
}

/// Whether `home` has a key file.
pub(crate) fn exists(home: &Path) -> bool {
    key_path(home).exists()
}

fn check_passphrase(passphrase: &str) -> Result<(), Error> {
    if passphrase.is_empty() {
        return Err(Error::Invalid("the passphrase is empty".into()));
    }
    Ok(())
}

fn wrap(passphrase: &str, key: &[u8; 32]) -> Result<KeyFile, Error> {
    check_passphrase(passphrase)?;
    let cost = cost_for_new_keys();
    let salt = sotto_core::random_bytes(16)?;
    let kek = sotto_core::passphrase_key(passphrase.as_bytes(), &salt, cost)?;
    let wrapped = sotto_core::seal(&kek, AAD, key)?;
    Ok(KeyFile {
        v: 1,
        kdf: "argon2id".into(),
        m_kib: cost.m_kib,
        t: cost.t,
        p: cost.p,
        salt: hex::encode(salt),
        wrapped: hex::encode(wrapped),
    })
}

fn write(home: &Path, file: &KeyFile) -> Result<(), Error> {
    let path = key_path(home);
    let tmp = home.join(format!("{KEY_FILE}.tmp"));
    let io = |e: std::io::Error| Error::Io(format!("cannot write {}: {e}", path.display()));
    let bytes = serde_json::to_vec_pretty(file).map_err(|e| Error::Io(e.to_string()))?;
    {
        use std::io::Write as _;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp).map_err(io)?;
        f.write_all(&bytes).and_then(|()| f.sync_all()).map_err(io)?;
    }
    std::fs::rename(&tmp, &path).map_err(io)?;
    if let Ok(dir) = std::fs::File::open(home) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Makes a new random database key for `home`, protected by `passphrase`.
pub(crate) fn create(home: &Path, passphrase: &str) -> Result<HomeKey, Error> {
    if exists(home) {
        return Err(Error::Invalid(format!("{} already has a key", home.display())));
    }
    let key: [u8; 32] = sotto_core::random_bytes(32)?
        .try_into()
        .map_err(|_| Error::Internal("random key of the wrong length"))?;
    let key = HomeKey(Zeroizing::new(key));
    std::fs::create_dir_all(home)
        .map_err(|e| Error::Io(format!("cannot create {}: {e}", home.display())))?;
    write(home, &wrap(passphrase, &key.0)?)?;
    Ok(key)
}

fn read(home: &Path) -> Result<KeyFile, Error> {
    let path = key_path(home);
    let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotRegistered(home.display().to_string()),
        _ => Error::Io(format!("cannot read {}: {e}", path.display())),
    })?;
    let file: KeyFile = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Io(format!("{} is damaged: {e}", path.display())))?;
    if file.v != 1 || file.kdf != "argon2id" {
        return Err(Error::Io(format!("{} was written by a newer sotto", path.display())));
    }
    Ok(file)
}

/// Unwraps the database key with `passphrase`; a wrong one is [`Error::WrongPassphrase`].
pub(crate) fn unlock(home: &Path, passphrase: &str) -> Result<HomeKey, Error> {
    let file = read(home)?;
    let damaged = || Error::Io(format!("{} is damaged", key_path(home).display()));
    let salt = hex::decode(&file.salt).map_err(|_| damaged())?;
    let wrapped = hex::decode(&file.wrapped).map_err(|_| damaged())?;
    let cost = KdfCost { m_kib: file.m_kib, t: file.t, p: file.p };
    let kek = sotto_core::passphrase_key(passphrase.as_bytes(), &salt, cost)?;
    let key = sotto_core::open(&kek, AAD, &wrapped).ok_or(Error::WrongPassphrase)?;
    let key: [u8; 32] = key.as_slice().try_into().map_err(|_| damaged())?;
    Ok(HomeKey(Zeroizing::new(key)))
}

/// Re-wraps the database key under `new` (the database is not touched).
pub(crate) fn change(home: &Path, old: &str, new: &str) -> Result<(), Error> {
    let key = unlock(home, old)?;
    write(home, &wrap(new, &key.0)?)
}
