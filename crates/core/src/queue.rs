//! Queued copies sealed at rest: what waits in a device's queue on the server is readable
//! only with a key that device holds.
//!
//! An MLS message shows its group id and epoch in the clear, and every member's copy of it is
//! the same bytes: a server's disk full of queued copies would show who is in which group.
//! So each device gives the server the public half of a [`QueueKey`] (X25519), and the server
//! seals every copy it queues for the device: it sets up HPKE (RFC 9180, base mode) to that
//! key once in a while ([`Sealer`], held in memory only, never written), derives a
//! ChaCha20-Poly1305 key from the HPKE exporter, and encrypts each copy under it with a
//! random nonce. The copy is padded inside the encryption, so that the stored size is one of
//! a few ([`crate::content::padded_len`]). The device opens copies with its private key.
//!
//! A copy cannot be opened from the server's disk, whose keys the server does not keep
//! beyond its process; the live server knows what it queued, as it always does.
//!
//! ```
//! use sotto_core::queue::{QueueKey, Sealer, is_sealed};
//! let key = QueueKey::generate().unwrap();
//! let sealer = Sealer::new(key.public(), 7).unwrap();
//! let sealed = sealer.seal(7, b"an MLS message").unwrap();
//! assert!(is_sealed(&sealed) && sealed.len() == 256);
//! assert_eq!(key.open(7, &sealed).unwrap(), b"an MLS message");
//! assert!(key.open(8, &sealed).is_err(), "bound to its queue");
//! ```

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use zeroize::Zeroizing;

use crate::{Error, mls, random_bytes};

/// The first byte of a sealed copy. An MLS message starts with its protocol version (0x00
/// 0x01), so a device tells sealed copies from plain ones (queued before it gave a key).
pub const MAGIC: u8 = 0x5e;
/// Bytes of a queue key's public half (X25519).
pub const PUBLIC_LEN: usize = 32;

const ENC_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const LEN_LEN: usize = 4;
/// What a sealed copy adds besides padding: magic, HPKE encapsulation, nonce, tag, length.
pub const OVERHEAD: usize = 1 + ENC_LEN + NONCE_LEN + TAG_LEN + LEN_LEN;
const INFO: &[u8] = b"sotto/v1/queue";
const EXPORT: &[u8] = b"sotto/v1/queue-key";

/// Whether `bytes` is a sealed copy (rather than a plain MLS message).
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.first() == Some(&MAGIC)
}

fn aad(device: u64) -> Vec<u8> {
    let mut aad = INFO.to_vec();
    aad.extend_from_slice(&device.to_be_bytes());
    aad
}

/// A device's queue key. Only its 32-byte seed is kept; `Debug` shows neither half.
pub struct QueueKey {
    seed: Zeroizing<Vec<u8>>,
    private: Zeroizing<Vec<u8>>,
    public: Vec<u8>,
    /// The last encapsulation opened and the key it gave: the server uses one for a while.
    last: std::sync::Mutex<Option<Opened>>,
}

/// An encapsulation and the key it gave.
type Opened = (Vec<u8>, Zeroizing<Vec<u8>>);

impl fmt::Debug for QueueKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("QueueKey([redacted])")
    }
}

impl QueueKey {
    /// A new random key.
    pub fn generate() -> Result<Self, Error> {
        Self::from_seed(&random_bytes(32)?)
    }

    /// The key a seed (from [`QueueKey::seed`]) stands for.
    pub fn from_seed(seed: &[u8]) -> Result<Self, Error> {
        if seed.len() != 32 {
            return Err(Error::Invalid("a queue key seed is 32 bytes".into()));
        }
        let (private, public) = mls::hpke_keypair(seed)?;
        Ok(QueueKey {
            seed: Zeroizing::new(seed.to_vec()),
            private,
            public,
            last: std::sync::Mutex::new(None),
        })
    }

    /// The seed, to keep in the device's encrypted store.
    pub fn seed(&self) -> &[u8] {
        &self.seed
    }

    /// The public half, for the server.
    pub fn public(&self) -> &[u8] {
        &self.public
    }

    /// Opens a copy the server sealed for queue `device`.
    pub fn open(&self, device: u64, sealed: &[u8]) -> Result<Vec<u8>, Error> {
        let refused = || Error::MalformedMls("a sealed queued message does not open".into());
        let body = sealed.strip_prefix(&[MAGIC]).ok_or_else(refused)?;
        if body.len() < ENC_LEN + NONCE_LEN + TAG_LEN + LEN_LEN {
            return Err(refused());
        }
        let (enc, rest) = body.split_at(ENC_LEN);
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let cipher = {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            let key = match last.as_ref() {
                Some((seen, key)) if seen == enc => key.clone(),
                _ => {
                    let key = mls::hpke_export_from(enc, &self.private, INFO, EXPORT, 32)?;
                    *last = Some((enc.to_vec(), key.clone()));
                    key
                }
            };
            ChaCha20Poly1305::new(Key::from_slice(&key))
        };
        let plain = cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: &aad(device) })
            .map_err(|_| refused())?;
        let (len, padded) = plain.split_at(LEN_LEN);
        let len = u32::from_be_bytes(len.try_into().map_err(|_| refused())?) as usize;
        if len > padded.len() || padded[len..].iter().any(|&b| b != 0) {
            return Err(refused());
        }
        Ok(padded[..len].to_vec())
    }
}

/// What the server seals a device's copies with: an HPKE encapsulation to the device's queue
/// key and the key exported from it. Held in memory only. `Debug` shows neither.
pub struct Sealer {
    enc: Vec<u8>,
    key: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealer([redacted])")
    }
}

impl Sealer {
    /// A fresh encapsulation to `public`, a device's queue key (see [`QueueKey::public`]).
    pub fn new(public: &[u8], _device: u64) -> Result<Self, Error> {
        if public.len() != PUBLIC_LEN {
            return Err(Error::Invalid(format!("a queue key is {PUBLIC_LEN} bytes")));
        }
        let (enc, key) = mls::hpke_export_to(public, INFO, EXPORT, 32)?;
        if enc.len() != ENC_LEN {
            return Err(Error::Internal("unexpected HPKE encapsulation length"));
        }
        Ok(Sealer { enc, key })
    }

    /// Seals a copy of `message` for queue `device`, padded so that the whole takes
    /// [`crate::content::padded_len`] of its size.
    pub fn seal(&self, device: u64, message: &[u8]) -> Result<Vec<u8>, Error> {
        let len = u32::try_from(message.len())
            .map_err(|_| Error::Invalid("a queued message is under 4 GiB".into()))?;
        let total = crate::content::padded_len(message.len() + OVERHEAD);
        let mut plain = Zeroizing::new(Vec::with_capacity(total - OVERHEAD + LEN_LEN));
        plain.extend_from_slice(&len.to_be_bytes());
        plain.extend_from_slice(message);
        plain.resize(total - OVERHEAD + LEN_LEN, 0);
        let nonce = random_bytes(NONCE_LEN)?;
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.key));
        let sealed = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: &plain, aad: &aad(device) })
            .map_err(|_| Error::Internal("sealing a queued message failed"))?;
        let mut out = Vec::with_capacity(total);
        out.push(MAGIC);
        out.extend_from_slice(&self.enc);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        debug_assert_eq!(out.len(), total);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_open_only_with_their_key_and_queue_and_take_a_padded_size() {
        let key = QueueKey::generate().expect("key");
        let other = QueueKey::generate().expect("key");
        let sealer = Sealer::new(key.public(), 3).expect("sealer");
        for len in [0, 1, 100, 195, 196, 1000, 70_000] {
            let message = vec![0xabu8; len];
            let sealed = sealer.seal(3, &message).expect("sealed");
            assert_eq!(sealed.len(), crate::content::padded_len(len + OVERHEAD), "{len}");
            assert!(is_sealed(&sealed));
            assert_eq!(key.open(3, &sealed).expect("opens"), message);
            assert!(other.open(3, &sealed).is_err());
            assert!(key.open(4, &sealed).is_err());
        }
        // Two copies of one message look unrelated.
        let (a, b) = (sealer.seal(3, b"same").expect("a"), sealer.seal(3, b"same").expect("b"));
        assert_ne!(a, b);
        // Damage anywhere, or a cut, is refused, never a panic.
        let sealed = sealer.seal(3, b"hello").expect("sealed");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x40;
            assert!(key.open(3, &bad).is_err(), "byte {i}");
            assert!(key.open(3, &sealed[..i]).is_err(), "cut at {i}");
        }
    }

    #[test]
    fn a_key_comes_back_from_its_seed_and_hides_in_debug() {
        let key = QueueKey::generate().expect("key");
        let again = QueueKey::from_seed(key.seed()).expect("from seed");
        assert_eq!(key.public(), again.public());
        let sealed = Sealer::new(key.public(), 1).expect("sealer").seal(1, b"x").expect("seal");
        assert_eq!(again.open(1, &sealed).expect("opens"), b"x");
        assert_eq!(format!("{key:?}"), "QueueKey([redacted])");
        assert!(QueueKey::from_seed(&[0; 31]).is_err());
        assert!(Sealer::new(&[0; 31], 1).is_err());
    }
}
