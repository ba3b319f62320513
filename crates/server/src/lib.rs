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
#![forbid(unsafe_code)]

mod api;
mod config;
mod error;
mod limits;
mod net;
mod session;
pub mod store;

use std::sync::Arc;

pub use config::{Config, TlsFiles};
pub use error::Error;
pub use net::{bind, serve};
use sha2::{Digest, Sha256};
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

/// Mints an invite code valid for `ttl_secs` seconds and `uses` registrations.
pub fn create_invite(store: &dyn Store, ttl_secs: u64, uses: u32) -> Result<Invite, Error> {
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
    let expires_at = now.saturating_add(ttl_secs);
    store.create_invite(&invite_hash(&code), expires_at, uses, now)?;
    Ok(Invite { code, expires_at, uses })
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
    let store = store::SqliteStore::open(&config.data_dir.join("sotto.db"))?;
    Ok(Arc::new(store))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invites_are_random_readable_and_stored_hashed() {
        let store = store::SqliteStore::in_memory().expect("store");
        let a = create_invite(&store, 60, 1).expect("invite");
        let b = create_invite(&store, 60, 1).expect("invite");
        assert_ne!(a.code, b.code);
        assert_eq!(a.code.len(), 27, "{}", a.code);
        assert_eq!(a.code.split('-').map(str::len).collect::<Vec<_>>(), vec![6, 6, 6, 6]);
        assert!(a.code.chars().all(|c| c == '-' || c.is_ascii_alphanumeric()));
        let acct = store::NewAccount {
            address: "a@x",
            device_key: b"k",
            invite_hash: Some(&invite_hash(&a.code)),
        };
        store.register(&acct, sotto_core::unix_now()).expect("code works");
    }
}
