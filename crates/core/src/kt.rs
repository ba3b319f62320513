//! What key transparency commits to, and the server's signed directory roots.
//!
//! The server keeps an append-only, verifiable directory (AKD) mapping each address to a
//! 64-byte value: the account's identity key and the SHA-256 of its current signed device
//! list. Every epoch's root hash is signed by the server's KT key, naming the previous root,
//! so the roots form a chain anyone can check, and the directory's own proofs show that each
//! epoch only added to the last.

use sha2::{Digest, Sha256};

use crate::account::{IdentityKey, SignedList};
use crate::{Address, auth};

const ROOT_CONTEXT: &[u8] = b"sotto/v1/kt-root\0";

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

/// The identity key a directory value names.
pub fn committed_identity(value: &[u8]) -> Option<&[u8]> {
    (value.len() == 64).then(|| &value[..32])
}

/// One epoch's root, as the server signs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    /// The epoch.
    pub epoch: u64,
    /// The directory's root hash at that epoch.
    pub hash: Vec<u8>,
    /// The previous epoch's root hash (empty at epoch 0).
    pub previous: Vec<u8>,
}

impl Root {
    fn payload(&self) -> Vec<u8> {
        let mut p = ROOT_CONTEXT.to_vec();
        p.extend_from_slice(&self.epoch.to_be_bytes());
        p.extend_from_slice(&(self.hash.len() as u32).to_be_bytes());
        p.extend_from_slice(&self.hash);
        p.extend_from_slice(&self.previous);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_verify_only_as_signed_and_commitments_bind_the_list() {
        let key = IdentityKey::generate().expect("key");
        let root = Root { epoch: 3, hash: vec![1; 32], previous: vec![2; 32] };
        let sig = root.sign(&key);
        assert!(root.verify(&key.public(), &sig));
        assert!(!Root { epoch: 4, ..root.clone() }.verify(&key.public(), &sig));
        assert!(!Root { hash: vec![9; 32], ..root.clone() }.verify(&key.public(), &sig));
        assert!(!Root { previous: vec![], ..root.clone() }.verify(&key.public(), &sig));
        let list = SignedList { body: b"list".to_vec(), signature: vec![5; 64] };
        let c = commitment(&[7; 32], &list);
        assert_eq!(committed_identity(&c), Some(&[7u8; 32][..]));
        let other = SignedList { signature: vec![6; 64], ..list.clone() };
        assert_ne!(c, commitment(&[7; 32], &other));
    }
}
