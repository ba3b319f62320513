use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// An account address, `local@domain`, always lower case.
///
/// The local part is 1–64 characters of `a-z 0-9 . _ -`; the domain is a host name
/// (`a-z 0-9 . -`, labels not starting or ending with `-`), at most 253 characters.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Address(String);

impl Address {
    /// The address as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before `@`.
    pub fn local(&self) -> &str {
        self.0.split_once('@').map(|(l, _)| l).unwrap_or("")
    }

    /// The part after `@`.
    pub fn domain(&self) -> &str {
        self.0.split_once('@').map(|(_, d)| d).unwrap_or("")
    }
}

fn valid_local(local: &str) -> bool {
    (1..=64).contains(&local.len())
        && local
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && !local.starts_with('.')
        && !local.ends_with('.')
}

/// Whether `domain` is an acceptable host name for an address or a server's domain.
pub(crate) fn valid_domain(domain: &str) -> bool {
    (1..=253).contains(&domain.len())
        && domain.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl FromStr for Address {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.split_once('@') {
            Some((local, domain)) if valid_local(local) && valid_domain(domain) => {
                Ok(Address(lower))
            }
            _ => Err(Error::InvalidAddress(s.chars().take(300).collect())),
        }
    }
}

impl TryFrom<String> for Address {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<Address> for String {
    fn from(a: Address) -> String {
        a.0
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({})", self.0)
    }
}

/// One device of an account: `local@domain/N`, where `N` is the id the server assigned at
/// registration. This is the identity carried in the device's MLS credential.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceRef {
    /// The account the device belongs to.
    pub address: Address,
    /// The server-assigned device id.
    pub device_id: u64,
}

impl fmt::Display for DeviceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.device_id)
    }
}

impl FromStr for DeviceRef {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::InvalidDeviceRef(s.chars().take(300).collect());
        let (addr, id) = s.rsplit_once('/').ok_or_else(bad)?;
        let device_id = id.parse().map_err(|_| bad())?;
        let address = addr.parse().map_err(|_| bad())?;
        Ok(DeviceRef { address, device_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalised_and_checked() {
        let a: Address = " Bob.Smith@Example.ORG ".parse().expect("valid");
        assert_eq!(a.as_str(), "bob.smith@example.org");
        assert_eq!(a.local(), "bob.smith");
        assert_eq!(a.domain(), "example.org");
        for bad in [
            "",
            "bob",
            "@example.org",
            "bob@",
            "bob@@x",
            "b b@x",
            "bob@-x.org",
            "bob@x..org",
            ".bob@x",
            "bob/1@x",
            "bøb@x",
        ] {
            assert!(
                matches!(bad.parse::<Address>(), Err(Error::InvalidAddress(_))),
                "{bad:?} should be rejected"
            );
        }
        let long = format!("{}@x", "a".repeat(65));
        assert!(long.parse::<Address>().is_err());
    }

    #[test]
    fn device_refs_round_trip() {
        let d: DeviceRef = "alice@localhost/42".parse().expect("valid");
        assert_eq!(d.device_id, 42);
        assert_eq!(d.to_string(), "alice@localhost/42");
        assert!("alice@localhost".parse::<DeviceRef>().is_err());
        assert!("alice@localhost/x".parse::<DeviceRef>().is_err());
        assert!("alice/1".parse::<DeviceRef>().is_err());
    }
}
