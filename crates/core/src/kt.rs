//! What key transparency commits to, and the server's signed directory roots.
//!
//! The server keeps an append-only, verifiable directory (AKD) mapping each address to a
//! 64-byte value: the account's identity key and the SHA-256 of its current signed device
//! list. Every epoch's root hash is signed by the server's KT key, naming the previous root,
//! so the roots form a chain anyone can check, and the directory's own proofs show that each
//! epoch only added to the last.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::account::{IdentityKey, SignedList};
use crate::{Address, auth};

const ROOT_CONTEXT: &[u8] = b"sotto/v1/kt-root\0";
/// A root signed together with the time the server vouched that it was the newest.
const TIMED_ROOT_CONTEXT: &[u8] = b"sotto/v1/kt-root-at\0";

/// The directory label of an address.
pub fn label(address: &Address) -> Vec<u8> {
    address.as_str().as_bytes().to_vec()
}

/// The directory value for an account's signed device list: identity key ‖ SHA-256 of the
/// signed list (body and signature).
pub fn commitment(identity_key: &[u8], list: &SignedList) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update((list.body.len() as u64).to_be_bytes());
    h.update(&list.body);
    h.update(&list.signature);
    let mut value = identity_key.to_vec();
    value.extend_from_slice(&h.finalize());
    value
}

/// The directory value of a deleted address: the server's statement that the account is gone.
/// Its identity half is all zeroes, which is no Ed25519 key, so it matches no device list.
pub fn tombstone() -> Vec<u8> {
    let mut value = vec![0u8; 32];
    value.extend_from_slice(&Sha256::digest(b"sotto/v1/kt-deleted"));
    value
}

/// Whether a directory value is [`tombstone`].
pub fn is_tombstone(value: &[u8]) -> bool {
    value == tombstone().as_slice()
}

/// The identity key a directory value names.
pub fn committed_identity(value: &[u8]) -> Option<&[u8]> {
    (value.len() == 64).then(|| &value[..32])
}

/// One epoch's root, as the server signs it.
///
/// A root recorded when its epoch was published carries no time (`time` 0). The root the
/// server answers a lookup with is signed again with the time of the answer (Unix seconds):
/// the server's statement that at `time` this was its newest epoch, so a client can refuse a
/// view that was frozen or replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    /// The epoch.
    pub epoch: u64,
    /// The directory's root hash at that epoch.
    pub hash: Vec<u8>,
    /// The previous epoch's root hash (empty at epoch 0).
    pub previous: Vec<u8>,
    /// When the server vouched for this root as its newest, Unix seconds; 0 for none.
    pub time: u64,
}

impl Root {
    fn payload(&self) -> Vec<u8> {
        let context = if self.time == 0 { ROOT_CONTEXT } else { TIMED_ROOT_CONTEXT };
        let mut p = context.to_vec();
        p.extend_from_slice(&self.epoch.to_be_bytes());
        p.extend_from_slice(&(self.hash.len() as u32).to_be_bytes());
        p.extend_from_slice(&self.hash);
        p.extend_from_slice(&self.previous);
        if self.time != 0 {
            p.extend_from_slice(&self.time.to_be_bytes());
        }
        p
    }

    /// Signs the root with the server's KT key.
    pub fn sign(&self, key: &IdentityKey) -> Vec<u8> {
        key.sign_payload(&self.payload())
    }

    /// Whether `signature` is the KT key's signature of this root.
    pub fn verify(&self, kt_key: &[u8], signature: &[u8]) -> bool {
        auth::verify(kt_key, &self.payload(), signature)
    }
}

/// A root with its signature, as members tell each other inside their encrypted messages:
/// the newest one the sender was shown, so that a server showing members different
/// directories is caught (two signed roots for one epoch prove it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenRoot {
    /// The epoch.
    pub epoch: u64,
    /// The root hash.
    #[serde(with = "crate::account::hex_bytes")]
    pub hash: Vec<u8>,
    /// The previous epoch's root hash.
    #[serde(with = "crate::account::hex_bytes")]
    pub previous: Vec<u8>,
    /// When the server vouched for it as its newest (0 for none).
    #[serde(default)]
    pub time: u64,
    /// The directory's signature.
    #[serde(with = "crate::account::hex_bytes")]
    pub signature: Vec<u8>,
}

impl SeenRoot {
    /// The root it names.
    pub fn root(&self) -> Root {
        Root {
            epoch: self.epoch,
            hash: self.hash.clone(),
            previous: self.previous.clone(),
            time: self.time,
        }
    }
}

/// The directory's domain separation label.
#[derive(Debug, Clone)]
pub struct Domain;

impl akd_core::DomainLabel for Domain {
    fn domain_label() -> &'static [u8] {
        b"sotto/v1/kt"
    }
}

/// The directory's configuration, on server and clients alike.
pub type Config = akd_core::ExperimentalConfiguration<Domain>;

/// One entry of a verified key history: the value an address had from `epoch` on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// When the value was published.
    pub epoch: u64,
    /// The label's version (1 for the first value).
    pub version: u64,
    /// The value ([`commitment`]).
    pub value: Vec<u8>,
}

fn digest(hash: &[u8]) -> Result<akd_core::hash::Digest, String> {
    hash.try_into().map_err(|_| "a root hash is 32 bytes".to_string())
}

/// Verifies a lookup proof (JSON, as the server sends it) for `address` against a root the
/// caller has checked the signature of; returns the value the directory holds.
pub fn verify_lookup(
    vrf_key: &[u8],
    root: &Root,
    address: &Address,
    proof_json: &[u8],
) -> Result<HistoryEntry, String> {
    let proof: akd_core::LookupProof =
        serde_json::from_slice(proof_json).map_err(|e| format!("malformed lookup proof: {e}"))?;
    let r = akd_core::verify::lookup_verify::<Config>(
        vrf_key,
        digest(&root.hash)?,
        root.epoch,
        akd_core::AkdLabel(label(address)),
        proof,
    )
    .map_err(|e| format!("lookup proof does not verify: {e}"))?;
    Ok(HistoryEntry { epoch: r.epoch, version: r.version, value: r.value.0 })
}

/// Verifies a complete key history proof (JSON) for `address`; returns every value it ever
/// had, newest first.
pub fn verify_history(
    vrf_key: &[u8],
    root: &Root,
    address: &Address,
    proof_json: &[u8],
) -> Result<Vec<HistoryEntry>, String> {
    let proof: akd_core::HistoryProof =
        serde_json::from_slice(proof_json).map_err(|e| format!("malformed history proof: {e}"))?;
    let params = akd_core::verify::history::HistoryVerificationParams::Default {
        history_params: akd_core::verify::history::HistoryParams::Complete,
    };
    let results = akd_core::verify::key_history_verify::<Config>(
        vrf_key,
        digest(&root.hash)?,
        root.epoch,
        akd_core::AkdLabel(label(address)),
        proof,
        params,
    )
    .map_err(|e| format!("history proof does not verify: {e}"))?;
    Ok(results
        .into_iter()
        .map(|r| HistoryEntry { epoch: r.epoch, version: r.version, value: r.value.0 })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_verify_only_as_signed_and_commitments_bind_the_list() {
        let key = IdentityKey::generate().expect("key");
        let root = Root { epoch: 3, hash: vec![1; 32], previous: vec![2; 32], time: 0 };
        let sig = root.sign(&key);
        assert!(root.verify(&key.public(), &sig));
        assert!(!Root { epoch: 4, ..root.clone() }.verify(&key.public(), &sig));
        assert!(!Root { hash: vec![9; 32], ..root.clone() }.verify(&key.public(), &sig));
        assert!(!Root { previous: vec![], ..root.clone() }.verify(&key.public(), &sig));
        // A time cannot be added to, changed on or stripped from a signed root.
        assert!(!Root { time: 1_800_000_000, ..root.clone() }.verify(&key.public(), &sig));
        let timed = Root { time: 1_800_000_000, ..root.clone() };
        let timed_sig = timed.sign(&key);
        assert!(timed.verify(&key.public(), &timed_sig));
        assert!(!Root { time: 1_800_000_001, ..timed.clone() }.verify(&key.public(), &timed_sig));
        assert!(!root.verify(&key.public(), &timed_sig));
        let list = SignedList { body: b"list".to_vec(), signature: vec![5; 64] };
        let c = commitment(&[7; 32], &list);
        assert_eq!(committed_identity(&c), Some(&[7u8; 32][..]));
        let other = SignedList { signature: vec![6; 64], ..list.clone() };
        assert_ne!(c, commitment(&[7; 32], &other));
    }
}
