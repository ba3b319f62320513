//! Group credentials and sealed rosters: how the server checks that a submission comes from a
//! member of a group without learning which member, and keeps who is in the group without
//! being able to read it at rest.
//!
//! Every member derives the same 32-byte [`GroupCredential`] from each epoch of an MLS group
//! (the MLS exporter, so it changes with every commit and a removed member never learns the
//! next one). A submission to the group carries it, over a connection that names no device.
//! The server keeps the group's roster, the device ids its messages go to, only sealed
//! (ChaCha20-Poly1305) under a key derived from the current epoch's credential: a submission
//! whose credential opens the roster is a member's, and a copy of the server's disk holds
//! no membership in the clear. A commit brings the next epoch's credential, under which the
//! server seals the new roster.
//!
//! ```
//! use sotto_core::roster::{GroupCredential, open_roster, seal_roster};
//! let c = GroupCredential::from_bytes(&[7; 32]).unwrap();
//! let sealed = seal_roster(&c, b"group", 3, &[5, 9]).unwrap();
//! assert_eq!(open_roster(&c, b"group", 3, &sealed).unwrap(), vec![5, 9]);
//! assert!(open_roster(&c, b"group", 4, &sealed).is_err(), "bound to its epoch");
//! let other = GroupCredential::from_bytes(&[8; 32]).unwrap();
//! assert!(open_roster(&other, b"group", 3, &sealed).is_err());
//! ```

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::{Error, random_bytes};

/// Bytes of a group credential.
pub const CREDENTIAL_LEN: usize = 32;
/// The MLS exporter label credentials are derived with.
pub const EXPORTER_LABEL: &str = "sotto/v1/group-credential";
/// Most devices a sealed roster holds.
pub const MAX_ROSTER: usize = 100_000;

const NONCE_LEN: usize = 12;
const VERSION: u8 = 1;

/// A group epoch's credential. `Debug` does not show it; it is zeroed when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupCredential(Zeroizing<[u8; CREDENTIAL_LEN]>);

impl fmt::Debug for GroupCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GroupCredential([redacted])")
    }
}

impl GroupCredential {
    /// A credential from its bytes (exactly [`CREDENTIAL_LEN`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let bytes: [u8; CREDENTIAL_LEN] = bytes
            .try_into()
            .map_err(|_| Error::Invalid(format!("a group credential is {CREDENTIAL_LEN} bytes")))?;
        Ok(GroupCredential(Zeroizing::new(bytes)))
    }

    /// Its bytes, to send to the server.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_slice()
    }

    /// What the server may keep of an epoch's credential, to tell a member that is behind
    /// (it shows an older epoch's credential) from a stranger: a one-way derivation that
    /// neither opens the roster nor passes for the credential.
    pub fn verifier(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        let _ = hkdf::Hkdf::<Sha256>::new(None, self.0.as_slice())
            .expand(b"sotto/v1/roster-verifier", &mut out);
        out
    }

    fn roster_key(&self) -> Zeroizing<[u8; 32]> {
        let mut key = Zeroizing::new([0u8; 32]);
        // HKDF-SHA256 cannot fail for an output this short.
        let _ = hkdf::Hkdf::<Sha256>::new(None, self.0.as_slice())
            .expand(b"sotto/v1/roster-key", key.as_mut());
        key
    }
}

fn aad(group_id: &[u8], epoch: u64) -> Vec<u8> {
    let mut aad = b"sotto/v1/roster\0".to_vec();
    aad.extend_from_slice(&(group_id.len() as u64).to_be_bytes());
    aad.extend_from_slice(group_id);
    aad.extend_from_slice(&epoch.to_be_bytes());
    aad
}

/// Seals a roster (device ids, kept sorted and without repeats) for `epoch` of a group.
pub fn seal_roster(
    credential: &GroupCredential,
    group_id: &[u8],
    epoch: u64,
    devices: &[u64],
) -> Result<Vec<u8>, Error> {
    let mut ids: Vec<u64> = devices.iter().copied().filter(|&d| d != 0).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() > MAX_ROSTER {
        return Err(Error::Invalid(format!("a group holds at most {MAX_ROSTER} devices")));
    }
    // Padded with zeros (no device has id 0) to a power of two, at least 4: the sealed size
    // tells the group's size only roughly.
    ids.resize(ids.len().max(4).next_power_of_two(), 0);
    let plain = Zeroizing::new(ids.iter().flat_map(|d| d.to_be_bytes()).collect::<Vec<u8>>());
    let nonce = random_bytes(NONCE_LEN)?;
    let key = credential.roster_key();
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key.as_slice()));
    let sealed = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: &plain, aad: &aad(group_id, epoch) })
        .map_err(|_| Error::Internal("roster sealing failed"))?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens a roster sealed for `epoch` of a group; fails unless `credential` is that epoch's.
pub fn open_roster(
    credential: &GroupCredential,
    group_id: &[u8],
    epoch: u64,
    sealed: &[u8],
) -> Result<Vec<u64>, Error> {
    let refused = || Error::Invalid("the group credential does not open the roster".into());
    let (&version, rest) = sealed.split_first().ok_or_else(refused)?;
    if version != VERSION || rest.len() < NONCE_LEN + 16 {
        return Err(refused());
    }
    let (nonce, body) = rest.split_at(NONCE_LEN);
    let key = credential.roster_key();
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key.as_slice()));
    let plain = Zeroizing::new(
        cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad: &aad(group_id, epoch) })
            .map_err(|_| refused())?,
    );
    if !plain.len().is_multiple_of(8) {
        return Err(refused());
    }
    Ok(plain
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
        .filter(|&d| d != 0)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rosters_open_only_with_their_credential_group_and_epoch() {
        let c = GroupCredential::from_bytes(&[1; 32]).expect("credential");
        let sealed = seal_roster(&c, b"g", 1, &[9, 3, 3, 7]).expect("sealed");
        assert_eq!(open_roster(&c, b"g", 1, &sealed).expect("opens"), vec![3, 7, 9]);
        assert!(open_roster(&c, b"h", 1, &sealed).is_err());
        assert!(open_roster(&c, b"g", 2, &sealed).is_err());
        let mut bad = sealed.clone();
        *bad.last_mut().expect("not empty") ^= 1;
        assert!(open_roster(&c, b"g", 1, &bad).is_err());
        for n in 0..sealed.len() {
            assert!(open_roster(&c, b"g", 1, &sealed[..n]).is_err());
        }
        // The device ids are not in the sealed bytes, and the size gives the count roughly.
        assert!(!sealed.windows(8).any(|w| w == 9u64.to_be_bytes()));
        let five = seal_roster(&c, b"g", 1, &[1, 2, 3, 4, 5]).expect("sealed");
        let eight = seal_roster(&c, b"g", 1, &[1, 2, 3, 4, 5, 6, 7, 8]).expect("sealed");
        assert_eq!(five.len(), eight.len());
        assert_eq!(sealed.len(), seal_roster(&c, b"g", 1, &[1]).expect("sealed").len());
    }

    #[test]
    fn credentials_have_one_length_and_hide_in_debug() {
        assert!(GroupCredential::from_bytes(&[0; 31]).is_err());
        let c = GroupCredential::from_bytes(&[0xab; 32]).expect("credential");
        assert!(!format!("{c:?}").contains("171"));
        assert!(!format!("{c:?}").to_lowercase().contains("ab"));
    }
}
