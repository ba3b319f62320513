//! Safety numbers and verified contacts: once a contact is verified, a change of its identity
//! key stops sending to it until the user verifies again or accepts the change.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use sotto_core::account::DeviceList;
use sotto_core::safety::SafetyNumber;
use sotto_core::{Address, unix_now};

use crate::{Client, Error, db};

/// A contact's safety number and verification state.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SafetyView {
    /// The contact.
    pub address: String,
    /// 60 digits in groups of five; the same on both sides.
    pub safety_number: String,
    /// What the QR code carries.
    pub qr_text: String,
    /// Whether the user marked the contact's current identity key verified.
    pub verified: bool,
    /// Whether the identity key changed since it was verified (sending is blocked).
    pub changed_since_verified: bool,
    /// The contact's identity key (hex).
    pub identity_key: String,
}

impl Client {
    fn verified_key(&self, address: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self
            .conn
            .query_row("SELECT identity_key FROM verified WHERE address = ?1", [address], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// The identity key this device has pinned for `address`, if any.
    fn pinned_identity(&self, address: &str) -> Result<Option<Vec<u8>>, Error> {
        let Some(signed) = db::pinned_list(&self.conn, address)? else { return Ok(None) };
        Ok(DeviceList::verify(&signed).ok().map(|l| l.identity_key))
    }

    /// The safety number with `address` and its identity key, from its freshly checked list.
    fn safety(&mut self, address: &str) -> Result<(Address, SafetyNumber, Vec<u8>), Error> {
        let address: Address = address.parse()?;
        if address == self.me.device.address {
            return Err(Error::Invalid("a safety number is between you and someone else".into()));
        }
        let (list, _) = self.verified_list(&address)?;
        let me = &self.me.device.address;
        let number = SafetyNumber::new(me, &self.identity.public(), &address, &list.identity_key);
        Ok((address, number, list.identity_key))
    }

    fn view(
        &self,
        address: Address,
        number: &SafetyNumber,
        key: Vec<u8>,
    ) -> Result<SafetyView, Error> {
        let verified = self.verified_key(address.as_str())?;
        Ok(SafetyView {
            address: address.to_string(),
            safety_number: number.grouped(),
            qr_text: number.qr_text(),
            verified: verified.as_ref() == Some(&key),
            changed_since_verified: verified.is_some_and(|k| k != key),
            identity_key: hex::encode(&key),
        })
    }

    /// The safety number with `address`, after fetching and checking its current keys.
    pub fn safety_number(&mut self, address: &str) -> Result<SafetyView, Error> {
        let (address, number, key) = self.safety(address)?;
        self.view(address, &number, key)
    }

    /// Records `address`'s current identity key as verified (after the user compared the
    /// safety number). With `expected` (scanned QR text or typed digits), only if it matches.
    pub fn mark_verified(
        &mut self,
        address: &str,
        expected: Option<&str>,
    ) -> Result<SafetyView, Error> {
        let (address, number, key) = self.safety(address)?;
        if expected.is_some_and(|e| !number.matches(e)) {
            return Err(Error::Untrusted(format!(
                "the safety number does not match {address}'s: do not mark it verified; \
                 someone may be intercepting"
            )));
        }
        self.conn.execute(
            "INSERT INTO verified (address, identity_key, verified_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (address) DO UPDATE SET identity_key = ?2, verified_at = ?3",
            params![address.as_str(), key, unix_now() as i64],
        )?;
        self.view(address, &number, key)
    }

    /// Forgets that `address` was verified: sending works again, without the assurance.
    pub fn accept_change(&mut self, address: &str) -> Result<SafetyView, Error> {
        let a: Address = address.parse()?;
        self.conn.execute("DELETE FROM verified WHERE address = ?1", [a.as_str()])?;
        self.safety_number(address)
    }

    /// Refuses to encrypt for a group holding a verified contact whose identity key changed.
    pub(crate) fn require_verified_keys(&self, group_id: &[u8]) -> Result<(), Error> {
        // Only contacts the user verified can have changed since: with none, the group's
        // members need not be loaded.
        let any: bool = self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM verified)")?
            .query_row([], |r| r.get(0))?;
        if !any {
            return Ok(());
        }
        let members = sotto_core::mls::members(&db::provider(&self.conn), group_id)?;
        let accounts: std::collections::BTreeSet<Address> =
            members.into_iter().map(|d| d.address).collect();
        for a in accounts.iter().filter(|a| **a != self.me.device.address) {
            // Only contacts the user verified can have changed since (and checking a pinned
            // list's signature costs more than looking that up).
            if self.verified_key(a.as_str())?.is_none() {
                continue;
            }
            if let Some(key) = self.pinned_identity(a.as_str())? {
                self.require_verified_key(a, &key)?;
            }
        }
        Ok(())
    }

    /// Refuses `identity_key` for `address` if the user verified another one.
    pub(crate) fn require_verified_key(
        &self,
        address: &Address,
        identity_key: &[u8],
    ) -> Result<(), Error> {
        match self.verified_key(address.as_str())? {
            Some(verified) if verified != identity_key => {
                Err(Error::IdentityChanged(address.to_string()))
            }
            _ => Ok(()),
        }
    }
}
