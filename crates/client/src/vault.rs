//! The home's database key. Everything a client keeps lives in one SQLCipher database,
//! encrypted with a random 256-bit key; that key is stored only wrapped (ChaCha20-Poly1305)
//! under a key derived from the user's passphrase with Argon2id, in `keys.json`. Changing
//! the passphrase re-wraps the key and leaves the database untouched. A home may also keep its
//! key in the operating system's keyring ([`crate::keyring`]); `keys.json` then names the
//! entry and holds a check value that tells the right key from any other.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sotto_core::KdfCost;
use zeroize::Zeroizing;

use crate::Error;
use crate::keyring::KeyStore;

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keyring: Option<KeyringRef>,
}

/// Where the OS keyring keeps this home's key, and how to recognise it.
#[derive(Clone, Serialize, Deserialize)]
struct KeyringRef {
    /// The entry's name under [`crate::keyring::SERVICE`]: random, so it names nothing.
    entry: String,
    /// SHA-256 of a label and the key: tells the right key from a stale or foreign entry.
    check: String,
}

fn check_of(key: &[u8; 32]) -> String {
    use sha2::Digest as _;
    hex::encode(
        sha2::Sha256::new().chain_update(b"sotto/v1/home-key-check").chain_update(key).finalize(),
    )
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
        keyring: None,
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
    let mut file = wrap(new, &key.0)?;
    file.keyring = read(home)?.keyring;
    write(home, &file)
}

/// Whether this home keeps its key in the OS keyring too.
pub(crate) fn uses_keyring(home: &Path) -> bool {
    read(home).is_ok_and(|f| f.keyring.is_some())
}

/// Keeps the database key (unlocked with `passphrase`) in `store` as well, so the home opens
/// without the passphrase while the store holds it.
pub(crate) fn keyring_enable(
    home: &Path,
    passphrase: &str,
    store: &dyn KeyStore,
) -> Result<(), Error> {
    let key = unlock(home, passphrase)?;
    let mut file = read(home)?;
    let entry = match &file.keyring {
        Some(r) => r.entry.clone(),
        None => hex::encode(sotto_core::random_bytes(16)?),
    };
    store.set(&entry, key.0.as_slice())?;
    file.keyring = Some(KeyringRef { entry, check: check_of(&key.0) });
    write(home, &file)
}

/// The database key from `store`: `None` if the home does not use the keyring, or the store
/// no longer holds the key (a reboot), or holds something else under its name.
pub(crate) fn keyring_unlock(home: &Path, store: &dyn KeyStore) -> Result<Option<HomeKey>, Error> {
    let Some(r) = read(home)?.keyring else { return Ok(None) };
    let Some(secret) = store.get(&r.entry)? else { return Ok(None) };
    let mut key = Zeroizing::new([0u8; 32]);
    if secret.len() != key.len() {
        return Ok(None);
    }
    key.copy_from_slice(&secret);
    Ok((check_of(&key) == r.check).then_some(HomeKey(key)))
}

/// After the passphrase opened a home that uses the keyring: puts the key back into `store`
/// if the store lost it (or holds something else under its name).
pub(crate) fn keyring_refill(
    home: &Path,
    key: &HomeKey,
    store: &dyn KeyStore,
) -> Result<(), Error> {
    let Some(r) = read(home)?.keyring else { return Ok(()) };
    if r.check == check_of(&key.0) && keyring_unlock(home, store)?.is_none() {
        store.set(&r.entry, key.0.as_slice())?;
    }
    Ok(())
}

/// Stops keeping the key in the keyring: the entry is deleted from `store` (when there is
/// one to reach), then forgotten. Returns whether the home used the keyring.
pub(crate) fn keyring_disable(home: &Path, store: Option<&dyn KeyStore>) -> Result<bool, Error> {
    let mut file = read(home)?;
    let Some(r) = file.keyring.take() else { return Ok(false) };
    if let Some(store) = store {
        store.delete(&r.entry)?;
    }
    write(home, &file)?;
    Ok(true)
}

/// Whether the home uses the keyring, and whether `store` holds its key now.
pub(crate) fn keyring_state(
    home: &Path,
    store: Option<&dyn KeyStore>,
) -> Result<(bool, bool), Error> {
    let used = read(home)?.keyring.is_some();
    let held = match store {
        Some(store) if used => keyring_unlock(home, store)?.is_some(),
        _ => false,
    };
    Ok((used, held))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyring::Memory;

    #[test]
    fn the_keyring_opens_a_home_only_with_its_own_key() {
        let dir = tempfile::tempdir().expect("dir");
        let home = dir.path();
        let key = create(home, "correct horse").expect("create");
        let store = Memory::default();
        // Not enrolled: the keyring has nothing to say.
        assert!(keyring_unlock(home, &store).expect("unlock").is_none());
        assert!(matches!(keyring_enable(home, "wrong horse", &store), Err(Error::WrongPassphrase)));
        assert!(store.0.borrow().is_empty(), "a wrong passphrase stores nothing");

        keyring_enable(home, "correct horse", &store).expect("enable");
        let from_keyring = keyring_unlock(home, &store).expect("unlock").expect("key");
        assert_eq!(*from_keyring.0, *key.0);
        assert_eq!(keyring_state(home, Some(&store)).expect("state"), (true, true));
        // keys.json holds no copy of the key, only the entry's name and a check value.
        let file = std::fs::read_to_string(home.join(KEY_FILE)).expect("keys.json");
        assert!(!file.contains(&hex::encode(*key.0)));

        // A passphrase change keeps the keyring working.
        change(home, "correct horse", "battery staple").expect("change");
        assert!(keyring_unlock(home, &store).expect("unlock").is_some());

        // Something else under the entry's name is not taken for the key.
        let entry = store.0.borrow().keys().next().cloned().expect("entry");
        store.set(&entry, &[7; 32]).expect("set");
        assert!(keyring_unlock(home, &store).expect("unlock").is_none());
        store.set(&entry, &[7; 5]).expect("set");
        assert!(keyring_unlock(home, &store).expect("unlock").is_none());
        // The passphrase puts the right key back over it.
        let key = unlock(home, "battery staple").expect("unlock");
        keyring_refill(home, &key, &store).expect("refill");
        assert!(keyring_unlock(home, &store).expect("unlock").is_some());

        // A lost entry (a reboot) comes back after the passphrase opened the home.
        store.delete(&entry).expect("delete");
        assert_eq!(keyring_state(home, Some(&store)).expect("state"), (true, false));
        let key = unlock(home, "battery staple").expect("unlock");
        keyring_refill(home, &key, &store).expect("refill");
        assert!(keyring_unlock(home, &store).expect("unlock").is_some());

        assert!(keyring_disable(home, Some(&store)).expect("disable"));
        assert!(store.0.borrow().is_empty());
        assert!(!uses_keyring(home));
        assert!(!keyring_disable(home, Some(&store)).expect("disable again"));
        assert!(unlock(home, "battery staple").is_ok(), "the passphrase still opens it");
    }
}
