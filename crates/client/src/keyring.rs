//! The operating system's keyring: where a home's database key may be kept so that the home
//! opens without its passphrase. The passphrase always keeps working; the keyring is a
//! convenience the user turns on per home (`sotto keyring enable`).
//!
//! On Linux the keyring is the kernel's key store (keyutils): the key lives in kernel memory,
//! in the user's session and persistent keyrings, never on disk. It survives logging out
//! while the persistent keyring lasts (a few days by default) and is gone after a reboot,
//! when the passphrase opens the home again and puts the key back. Any process of the same
//! user can read it, as with every OS keyring. Other systems have no keyring support yet and
//! use the passphrase.

use zeroize::Zeroizing;

use crate::Error;

/// The service name entries are filed under; the entry name is a random id per home.
pub(crate) const SERVICE: &str = "sotto";

/// A place that keeps small secrets by name: the OS keyring, or memory in unit tests.
pub(crate) trait KeyStore {
    /// What this store is, for people (`sotto keyring status`).
    fn name(&self) -> &'static str;
    /// The secret named `entry`, or `None` if the store does not hold it.
    fn get(&self, entry: &str) -> Result<Option<Zeroizing<Vec<u8>>>, Error>;
    /// Keeps `secret` under `entry`, replacing what was there.
    fn set(&self, entry: &str, secret: &[u8]) -> Result<(), Error>;
    /// Forgets `entry`; forgetting a missing entry is not an error.
    fn delete(&self, entry: &str) -> Result<(), Error>;
}

/// The operating system's keyring, or an error saying this system has none Sotto can use.
pub(crate) fn system() -> Result<Box<dyn KeyStore>, Error> {
    #[cfg(target_os = "linux")]
    {
        Ok(Box::new(linux::Kernel))
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err(Error::Keyring(
            "this system's keyring is not supported yet; the passphrase opens the home".into(),
        ))
    }
}

/// The kernel's key store. A key is added to the session keyring (shared by the programs of
/// one login) and linked into the user's persistent keyring, which outlives the session for
/// `/proc/sys/kernel/keys/persistent_keyring_expiry` seconds after its last use; a new
/// session finds it there and links it in again. Where the persistent keyring cannot be
/// reached (some containers), the session keyring alone serves.
#[cfg(target_os = "linux")]
mod linux {
    use linux_keyutils::{Key, KeyError, KeyRing, KeyRingIdentifier};
    use zeroize::Zeroizing;

    use super::{KeyStore, SERVICE};
    use crate::Error;

    pub(super) struct Kernel;

    fn failed(e: KeyError) -> Error {
        Error::Keyring(format!("the kernel keyring refused: {e:?}"))
    }

    fn description(entry: &str) -> String {
        format!("{SERVICE}:{entry}")
    }

    fn session() -> Result<KeyRing, Error> {
        KeyRing::from_special_id(KeyRingIdentifier::Session, false).map_err(failed)
    }

    /// The persistent keyring, reached through this process's own keyring so that the
    /// session keyring is left as it was.
    fn persistent() -> Option<KeyRing> {
        KeyRing::get_persistent(KeyRingIdentifier::Process).ok()
    }

    /// `ring`'s key named `description`; a key that is gone, expired or not ours is none.
    fn find(ring: &KeyRing, description: &str) -> Result<Option<Key>, Error> {
        match ring.search(description) {
            Ok(key) => Ok(Some(key)),
            Err(
                KeyError::KeyDoesNotExist
                | KeyError::KeyringDoesNotExist
                | KeyError::KeyExpired
                | KeyError::KeyRevoked
                | KeyError::AccessDenied
                | KeyError::PermissionDenied,
            ) => Ok(None),
            Err(e) => Err(failed(e)),
        }
    }

    impl KeyStore for Kernel {
        fn name(&self) -> &'static str {
            "the Linux kernel keyring"
        }

        fn get(&self, entry: &str) -> Result<Option<Zeroizing<Vec<u8>>>, Error> {
            let description = description(entry);
            let session = session()?;
            let key = match find(&session, &description)? {
                Some(key) => Some(key),
                None => match persistent() {
                    Some(p) => {
                        let key = find(&p, &description)?;
                        if let Some(key) = key {
                            // Back into this session, for the next programs of the login.
                            let _ = session.link_key(key);
                        }
                        key
                    }
                    None => None,
                },
            };
            let Some(key) = key else { return Ok(None) };
            // Every use renews its stay in the persistent keyring.
            if let Some(p) = persistent() {
                let _ = p.link_key(key);
            }
            let mut buf = Zeroizing::new(vec![0u8; 4096]);
            match key.read(&mut *buf) {
                Ok(n) if n <= buf.len() => {
                    buf.truncate(n);
                    Ok(Some(buf))
                }
                Ok(_) => Ok(None),
                Err(KeyError::AccessDenied | KeyError::KeyExpired | KeyError::KeyRevoked) => {
                    Ok(None)
                }
                Err(e) => Err(failed(e)),
            }
        }

        fn set(&self, entry: &str, secret: &[u8]) -> Result<(), Error> {
            let key = session()?.add_key(&description(entry), secret).map_err(failed)?;
            if let Some(p) = persistent() {
                let _ = p.link_key(key);
            }
            Ok(())
        }

        fn delete(&self, entry: &str) -> Result<(), Error> {
            let description = description(entry);
            let rings = [Some(session()?), persistent()];
            for ring in rings.iter().flatten() {
                // Invalidating removes the key from every keyring at once.
                if let Some(key) = find(ring, &description)? {
                    key.invalidate().map_err(failed)?;
                }
            }
            Ok(())
        }
    }
}

/// A keyring in memory, for unit tests.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Memory(
    pub(crate) std::cell::RefCell<std::collections::HashMap<String, Zeroizing<Vec<u8>>>>,
);

#[cfg(test)]
impl KeyStore for Memory {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn get(&self, entry: &str) -> Result<Option<Zeroizing<Vec<u8>>>, Error> {
        Ok(self.0.borrow().get(entry).cloned())
    }

    fn set(&self, entry: &str, secret: &[u8]) -> Result<(), Error> {
        self.0.borrow_mut().insert(entry.into(), Zeroizing::new(secret.to_vec()));
        Ok(())
    }

    fn delete(&self, entry: &str) -> Result<(), Error> {
        self.0.borrow_mut().remove(entry);
        Ok(())
    }
}
