//! Log-in challenges and bearer tokens, signed with a server key instead of stored.
//!
//! Logging in writes nothing to the database, so devices can still log in and read their
//! queues when the disk is full. A challenge nonce carries its own time and a MAC; it is good
//! for [`CHALLENGE_TTL_SECS`] and, on this server, only once. A token names its device and
//! expiry under a MAC. The key lives in `session.key` in the data directory (owner-only);
//! deleting that file logs every device out.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::Error;

/// How long a login challenge stays valid.
pub(crate) const CHALLENGE_TTL_SECS: u64 = 60;
const RANDOM_LEN: usize = 16;
const TAG_LEN: usize = 16;
const NONCE_LEN: usize = 8 + RANDOM_LEN + TAG_LEN;

/// Issues and checks challenges and tokens.
pub(crate) struct Sessions {
    key: Zeroizing<Vec<u8>>,
    /// Nonces already redeemed, with when they expire.
    redeemed: Mutex<HashMap<[u8; NONCE_LEN], u64>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("key", &"[redacted]").finish_non_exhaustive()
    }
}

impl Sessions {
    /// Loads the key from `path`, creating a random one (owner-only) the first time.
    pub(crate) fn load_or_create(path: &Path) -> Result<Self, Error> {
        let key = match std::fs::read(path) {
            Ok(k) if k.len() == 32 => Zeroizing::new(k),
            Ok(_) => {
                return Err(Error::Config(format!(
                    "{} is not a 32-byte session key; delete it to make a new one",
                    path.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let k = Zeroizing::new(
                    sotto_core::random_bytes(32).map_err(|e| Error::Internal(e.to_string()))?,
                );
                write_private(path, &k)?;
                k
            }
            Err(e) => return Err(Error::Io(format!("cannot read {}: {e}", path.display()))),
        };
        Ok(Sessions { key, redeemed: Mutex::default() })
    }

    fn tag(&self, parts: &[&[u8]]) -> Hmac<Sha256> {
        // HMAC takes keys of any length; 32 bytes always fits.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
        for p in parts {
            mac.update(&(p.len() as u64).to_be_bytes());
            mac.update(p);
        }
        mac
    }

    /// A fresh challenge nonce for `device_id`.
    pub(crate) fn challenge(&self, device_id: u64, now: u64) -> Result<Vec<u8>, Error> {
        let random =
            sotto_core::random_bytes(RANDOM_LEN).map_err(|e| Error::Internal(e.to_string()))?;
        let mut nonce = now.to_be_bytes().to_vec();
        nonce.extend_from_slice(&random);
        let tag = self
            .tag(&[b"sotto/challenge/v1", &device_id.to_be_bytes(), &nonce])
            .finalize()
            .into_bytes();
        nonce.extend_from_slice(&tag[..TAG_LEN]);
        Ok(nonce)
    }

    /// Whether `nonce` was issued by this server for `device_id` and is still fresh.
    pub(crate) fn check(&self, device_id: u64, nonce: &[u8], now: u64) -> bool {
        let Ok(nonce) = <[u8; NONCE_LEN]>::try_from(nonce) else { return false };
        let (body, tag) = nonce.split_at(8 + RANDOM_LEN);
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&body[..8]);
        let issued = u64::from_be_bytes(ts);
        let mac = self.tag(&[b"sotto/challenge/v1", &device_id.to_be_bytes(), body]);
        mac.verify_truncated_left(tag).is_ok() && issued <= now && now - issued < CHALLENGE_TTL_SECS
    }

    /// Marks a checked nonce as used; false if it was used before. Only nonces answered with
    /// a valid signature get here, so the set grows only with genuine log-ins.
    pub(crate) fn consume(&self, nonce: &[u8], now: u64) -> bool {
        let Ok(nonce) = <[u8; NONCE_LEN]>::try_from(nonce) else { return false };
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&nonce[..8]);
        let expires = u64::from_be_bytes(ts).saturating_add(CHALLENGE_TTL_SECS);
        let mut used = self.redeemed.lock().unwrap_or_else(|p| p.into_inner());
        used.retain(|_, e| *e > now);
        used.insert(nonce, expires).is_none()
    }

    /// A bearer token for `device_id`, valid until `expires_at`.
    pub(crate) fn token(&self, device_id: u64, expires_at: u64) -> String {
        let tag = self
            .tag(&[b"sotto/token/v1", &device_id.to_be_bytes(), &expires_at.to_be_bytes()])
            .finalize()
            .into_bytes();
        format!("v1.{device_id}.{expires_at}.{}", hex::encode(tag))
    }

    /// The device a token belongs to, if it is genuine and unexpired.
    pub(crate) fn verify(&self, token: &str, now: u64) -> Option<u64> {
        let mut parts = token.split('.');
        let (Some("v1"), Some(device), Some(expires), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let device: u64 = device.parse().ok()?;
        let expires: u64 = expires.parse().ok()?;
        let tag = hex::decode(tag).ok()?;
        self.tag(&[b"sotto/token/v1", &device.to_be_bytes(), &expires.to_be_bytes()])
            .verify_slice(&tag)
            .ok()?;
        (now < expires).then_some(device)
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::Io(format!("cannot create {}: {e}", path.display())))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::Io(format!("cannot write {}: {e}", path.display())))
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    std::fs::write(path, bytes)
        .map_err(|e| Error::Io(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions() -> (tempfile::TempDir, Sessions) {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Sessions::load_or_create(&dir.path().join("session.key")).expect("sessions");
        (dir, s)
    }

    #[test]
    fn challenges_are_bound_fresh_and_single_use() {
        let (_d, s) = sessions();
        let n = s.challenge(7, 1000).expect("nonce");
        assert!(!s.check(8, &n, 1001), "another device");
        assert!(!s.check(7, &n, 1000 + CHALLENGE_TTL_SECS), "expired");
        assert!(s.check(7, &n, 1010));
        assert!(s.consume(&n, 1010));
        assert!(!s.consume(&n, 1011), "used");
        let mut forged = s.challenge(7, 1000).expect("nonce");
        forged[3] ^= 1;
        assert!(!s.check(7, &forged, 1001));
        assert!(!s.check(7, b"short", 1001));
    }

    #[test]
    fn tokens_verify_only_as_issued() {
        let (dir, s) = sessions();
        let t = s.token(5, 2000);
        assert_eq!(s.verify(&t, 1999), Some(5));
        assert_eq!(s.verify(&t, 2000), None, "expired");
        assert_eq!(s.verify(&t.replace("v1.5.", "v1.6."), 1000), None, "other device");
        assert_eq!(s.verify(&t.replace(".2000.", ".9999."), 1000), None, "extended");
        assert_eq!(s.verify("v1.5.2000.00", 1000), None);
        assert_eq!(s.verify("nonsense", 1000), None);
        // The key persists: a restarted server still accepts the token.
        let again = Sessions::load_or_create(&dir.path().join("session.key")).expect("reload");
        assert_eq!(again.verify(&t, 1999), Some(5));
        assert!(!format!("{again:?}").contains(&hex::encode(&*again.key)));
    }
}
