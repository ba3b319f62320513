//! Key packages: keeping this device's stock on the server, and claiming other devices'
//! (checked against their signed device lists).

use sotto_core::Address;
use sotto_core::account::DeviceList;
use sotto_core::mls::{self, ValidKeyPackage};
use sotto_proto::{self as proto, Bytes};

use crate::db;
use crate::*;

impl Client {
    pub(crate) fn token(&mut self) -> Result<String, Error> {
        let domain = self.me.device.address.domain().to_string();
        self.api.token(&domain, self.me.device.device_id, &self.me.key)
    }

    pub(crate) fn replenish_key_packages(&mut self) -> Result<(), Error> {
        let token = self.token()?;
        let stock: proto::KeyPackageCount = self.api.get("/v1/keypackages", Some(&token))?;
        if stock.remaining >= KEY_PACKAGE_LOW_WATER && stock.last_resort {
            return Ok(());
        }
        let (one_time, last_resort) = {
            let tx = begin(&self.conn)?;
            let p = db::provider(&tx);
            let one_time = if stock.remaining < KEY_PACKAGE_LOW_WATER {
                mls::key_packages(&p, &self.me, KEY_PACKAGE_BATCH, false)?
            } else {
                Vec::new()
            };
            let last_resort = if stock.last_resort {
                None
            } else {
                mls::key_packages(&p, &self.me, 1, true)?.pop()
            };
            tx.commit()?;
            (one_time, last_resort)
        };
        let _: proto::KeyPackageCount = self.api.post(
            "/v1/keypackages",
            &proto::UploadKeyPackages {
                key_packages: one_time.into_iter().map(Bytes).collect(),
                last_resort: last_resort.map(Bytes),
            },
            Some(&token),
        )?;
        Ok(())
    }

    /// Claims and validates one key package per device of `address` (only `only`, if given).
    /// Every key package must belong to a device in the account's signed device list.
    pub(crate) fn claim(
        &mut self,
        address: &Address,
        only: Option<Vec<u64>>,
    ) -> Result<Vec<ValidKeyPackage>, Error> {
        let list = self.verified_list(address)?.0;
        self.claim_listed(address, only, &list)
    }

    /// [`Client::claim`] against a device list verified already.
    pub(crate) fn claim_listed(
        &mut self,
        address: &Address,
        only: Option<Vec<u64>>,
        list: &DeviceList,
    ) -> Result<Vec<ValidKeyPackage>, Error> {
        self.require_verified_key(address, &list.identity_key)?;
        let token = self.token()?;
        let claimed: proto::ClaimResponse = self.api.post(
            "/v1/keypackages/claim",
            &proto::ClaimRequest { address: address.to_string(), device_ids: only },
            Some(&token),
        )?;
        let p = db::provider(&self.conn);
        let packages: Vec<ValidKeyPackage> = claimed
            .key_packages
            .iter()
            .filter(|c| {
                !(address == &self.me.device.address && c.device_id == self.me.device.device_id)
            })
            .map(|c| {
                // What the server hands out and fails verification is the server's doing.
                mls::validate_key_package(&p, &c.key_package.0, address, Some(c.device_id)).map_err(
                    |e| {
                        Error::Untrusted(format!("the server offered a bad key for {address}: {e}"))
                    },
                )
            })
            .collect::<Result<_, _>>()?;
        if let Some(k) = packages.iter().find(|k| !list.lists(k.signature_key())) {
            return Err(Error::Untrusted(format!(
                "the server offered a key for {}, a device that is not in {address}'s signed \
                 device list; refusing to encrypt to it",
                k.device
            )));
        }
        if packages.is_empty() && address != &self.me.device.address {
            return Err(Error::NoKeyPackages(address.to_string()));
        }
        Ok(packages)
    }
}
