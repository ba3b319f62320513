//! The byte strings a device signs to prove possession of its device key, and their check.
//!
//! Each payload starts with its own context string, so a signature made for one purpose can
//! never be replayed for another, nor confused with an MLS signature (MLS labels its signed
//! content with `"MLS 1.0 "`).

use ed25519_dalek::{Signature, VerifyingKey};

use crate::Address;

/// Payload signed at registration: binds the new device key to the address it registers.
pub fn registration_payload(address: &Address, public_key: &[u8]) -> Vec<u8> {
    let mut p = b"sotto/v1/register\0".to_vec();
    p.extend_from_slice(address.as_str().as_bytes());
    p.push(0);
    p.extend_from_slice(public_key);
    p
}

/// Payload signed to answer a login challenge from the server of `domain`.
pub fn challenge_payload(domain: &str, device_id: u64, nonce: &[u8]) -> Vec<u8> {
    let mut p = b"sotto/v1/challenge\0".to_vec();
    p.extend_from_slice(domain.as_bytes());
    p.push(0);
    p.extend_from_slice(&device_id.to_be_bytes());
    p.extend_from_slice(nonce);
    p
}

/// Whether `signature` is a valid Ed25519 signature of `payload` by `public_key`.
/// Malformed keys and signatures are simply invalid.
pub fn verify(public_key: &[u8], payload: &[u8], signature: &[u8]) -> bool {
    let Ok(key_bytes) = <[u8; 32]>::try_from(public_key) else { return false };
    let Ok(key) = VerifyingKey::from_bytes(&key_bytes) else { return false };
    let Ok(sig) = Signature::from_slice(signature) else { return false };
    key.verify_strict(payload, &sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mls::DeviceKey;

    #[test]
    fn signatures_verify_only_for_their_payload_and_key() {
        let key = DeviceKey::generate().expect("key");
        let other = DeviceKey::generate().expect("key");
        let addr: Address = "alice@localhost".parse().expect("address");
        let payload = registration_payload(&addr, key.public());
        let sig = key.sign(&payload).expect("sign");
        assert!(verify(key.public(), &payload, &sig));
        assert!(!verify(other.public(), &payload, &sig));
        let challenge = challenge_payload("localhost", 1, &payload);
        assert!(!verify(key.public(), &challenge, &sig));
        assert!(!verify(&[1, 2, 3], &payload, &sig));
        assert!(!verify(key.public(), &payload, &sig[..10]));
    }
}
