//! Safety numbers: what two people compare (read aloud, or by scanning a QR code) to know
//! that each holds the other's real identity key, not one a server slipped in.
//!
//! The construction follows Signal's numeric fingerprints: each account's half is 30 digits
//! from an iterated SHA-512 over a version, its identity key and its address; the safety
//! number is the two halves in a fixed order, so both sides see the same 60 digits whoever
//! asks, and it changes when either identity key changes.
//!
//! ```
//! use sotto_core::safety::SafetyNumber;
//! let a = "alice@example.org".parse().unwrap();
//! let b = "bob@example.org".parse().unwrap();
//! let n1 = SafetyNumber::new(&a, &[1; 32], &b, &[2; 32]);
//! let n2 = SafetyNumber::new(&b, &[2; 32], &a, &[1; 32]);
//! assert_eq!(n1, n2);
//! assert_eq!(n1.digits().len(), 60);
//! ```

use sha2::{Digest, Sha512};

use crate::Address;

/// Hash iterations per half (as Signal: slows down searching for a colliding key).
const ITERATIONS: usize = 5200;
const VERSION: u16 = 1;
/// Prefix of the QR code's text.
pub const QR_PREFIX: &str = "sotto-safety:v1:";

/// Two accounts' safety number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetyNumber(String);

fn half(address: &Address, identity_key: &[u8]) -> String {
    let mut hash = {
        let mut h = Sha512::new();
        h.update(VERSION.to_be_bytes());
        h.update(identity_key);
        h.update(address.as_str().as_bytes());
        h.finalize()
    };
    for _ in 1..ITERATIONS {
        let mut h = Sha512::new();
        h.update(hash);
        h.update(identity_key);
        hash = h.finalize();
    }
    // Six chunks of five bytes, each a 5-digit number (mod 100000).
    (0..6)
        .map(|i| {
            let chunk = &hash[i * 5..i * 5 + 5];
            let n = chunk.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            format!("{:05}", n % 100_000)
        })
        .collect()
}

impl SafetyNumber {
    /// The safety number of two accounts with their identity keys (order does not matter).
    pub fn new(a: &Address, a_key: &[u8], b: &Address, b_key: &[u8]) -> Self {
        let (x, y) = (half(a, a_key), half(b, b_key));
        SafetyNumber(if x <= y { x + &y } else { y + &x })
    }

    /// The 60 digits.
    pub fn digits(&self) -> &str {
        &self.0
    }

    /// The digits in twelve groups of five, for reading aloud.
    pub fn grouped(&self) -> String {
        let groups: Vec<&str> = (0..12).map(|i| &self.0[i * 5..i * 5 + 5]).collect();
        groups.join(" ")
    }

    /// The text a QR code carries.
    pub fn qr_text(&self) -> String {
        format!("{QR_PREFIX}{}", self.0)
    }

    /// Whether a scanned QR text or typed digits show this number.
    pub fn matches(&self, scanned: &str) -> bool {
        let digits: String = scanned
            .trim()
            .strip_prefix(QR_PREFIX)
            .unwrap_or(scanned)
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        digits == self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Address {
        s.parse().expect("address")
    }

    #[test]
    fn symmetric_and_sensitive_to_every_input() {
        let (a, b) = (addr("alice@x.org"), addr("bob@x.org"));
        let n = SafetyNumber::new(&a, &[1; 32], &b, &[2; 32]);
        assert_eq!(n, SafetyNumber::new(&b, &[2; 32], &a, &[1; 32]));
        assert!(n.digits().chars().all(|c| c.is_ascii_digit()));
        assert_eq!(n.grouped().split(' ').count(), 12);
        assert_ne!(n, SafetyNumber::new(&a, &[3; 32], &b, &[2; 32]), "alice's key changed");
        assert_ne!(n, SafetyNumber::new(&a, &[1; 32], &b, &[3; 32]), "bob's key changed");
        assert_ne!(n, SafetyNumber::new(&a, &[1; 32], &addr("carol@x.org"), &[2; 32]));
        assert!(n.matches(&n.qr_text()));
        assert!(n.matches(&n.grouped()));
        assert!(!n.matches(&SafetyNumber::new(&a, &[3; 32], &b, &[2; 32]).qr_text()));
    }
}
