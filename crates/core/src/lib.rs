//! Sotto's sans-I/O core.
//!
//! Everything here takes bytes and state and returns bytes and state: no sockets, no async
//! runtime, no database of its own. The client library and the server both build on it.
//!
//! - [`Address`] — `local@domain` account addresses, normalised and validated.
//! - [`DeviceRef`] — one device of an account, as it appears in MLS credentials.
//! - [`attachment`] — files encrypted in chunks (STREAM) for upload and streaming download.
//! - [`account`] — identity and recovery keys, signed device lists, wipe commands, linking.
//! - [`auth`] — the byte strings a device signs to prove possession of its key.
//! - [`content`] — the plaintext format carried inside MLS application messages.
//! - [`kt`] — what key transparency commits to, and the server's signed roots.
//! - [`safety`] — safety numbers two people compare to detect a substituted key.
//! - [`mls`] — the MLS seam: the only module that names the MLS library. Callers pass a
//!   storage provider (the client's SQLite database) and get back bytes and Sotto types.
//!
//! ```
//! use sotto_core::{Address, DeviceRef};
//! let alice: Address = "Alice@Example.org".parse().unwrap();
//! assert_eq!(alice.as_str(), "alice@example.org");
//! let device = DeviceRef { address: alice, device_id: 7 };
//! assert_eq!(device.to_string(), "alice@example.org/7");
//! assert_eq!(device.to_string().parse::<DeviceRef>().unwrap(), device);
//! ```
#![forbid(unsafe_code)]

pub mod account;
mod address;
pub mod attachment;
pub mod auth;
pub mod content;
mod error;
pub mod kt;
pub mod mls;
pub mod queue;
pub mod reference;
pub mod roster;
pub mod safety;

pub use address::{Address, DeviceRef};
pub use error::Error;

/// `n` bytes from a cryptographically secure random generator (the MLS crypto backend's).
pub fn random_bytes(n: usize) -> Result<Vec<u8>, Error> {
    mls::random_bytes(n)
}

/// Encrypts `plaintext` with ChaCha20-Poly1305 under `key` and a fresh random nonce (which
/// leads the output), binding `aad`.
pub fn seal(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, Error> {
    account::sealed(key, aad, plaintext)
}

/// Decrypts what [`seal`] made; `None` if the key, the associated data or the bytes differ.
pub fn open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Option<zeroize::Zeroizing<Vec<u8>>> {
    account::opened(key, aad, sealed)
}

/// Argon2id cost: memory in KiB, passes, lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfCost {
    /// Memory, KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl KdfCost {
    /// OWASP's recommended minimum for Argon2id (19 MiB, 2 passes, 1 lane).
    pub const RECOMMENDED: KdfCost = KdfCost { m_kib: 19 * 1024, t: 2, p: 1 };
}

/// A 256-bit key from a passphrase with Argon2id.
pub fn passphrase_key(
    passphrase: &[u8],
    salt: &[u8],
    cost: KdfCost,
) -> Result<zeroize::Zeroizing<[u8; 32]>, Error> {
    let params = argon2::Params::new(cost.m_kib, cost.t, cost.p, Some(32))
        .map_err(|e| Error::Invalid(format!("bad key derivation parameters: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase, salt, key.as_mut())
        .map_err(|e| Error::Invalid(format!("key derivation failed: {e}")))?;
    Ok(key)
}

/// The current time in seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
