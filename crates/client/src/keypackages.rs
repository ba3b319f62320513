//! Key packages: keeping this device's stock on the server, and claiming other devices'
//! (checked against their signed device lists).

use sotto_core::Address;
use sotto_core::account::DeviceList;
use sotto_core::mls::{self, Suite, ValidKeyPackage};
use sotto_proto::{self as proto, Bytes};

use crate::db;
use crate::*;

/// Setting: when this device last replaced all its key packages (Unix milliseconds).
const KEY_PACKAGES_ROTATED: &str = "key_packages_rotated_at";

impl Client {
    pub(crate) fn token(&mut self) -> Result<String, Error> {
        let domain = self.me.device.address.domain().to_string();
        self.api.token(&domain, self.me.device.device_id, &self.me.key)
    }

    /// Tops up this device's key packages on the server, in every suite it publishes; once
    /// per healing period (and at [`Client::heal`] for all chats), replaces them all instead:
    /// key packages wait on the server for weeks, and private keys of theirs that leaked with
    /// this device's state would open the next chat someone starts with it.
    pub(crate) fn replenish_key_packages(&mut self) -> Result<(), Error> {
        let now = self.now_ms();
        let rotated = db::setting(&self.conn, KEY_PACKAGES_ROTATED)?.unwrap_or(0);
        let replace = now >= rotated.saturating_add(self.heal_interval()?.saturating_mul(1000));
        let token = self.token()?;
        let stock: proto::KeyPackageCount = self.api.get("/v1/keypackages", Some(&token))?;
        // A server that answers without a per-suite stock files one suite only: it gets
        // classical packages, as it always did, and nothing replaced.
        let (published, suites, replace) = match stock.suites {
            Some(suites) => (published_suites(), suites, replace),
            None => (
                vec![Suite::Classical],
                vec![proto::SuiteStock {
                    ciphersuite: Suite::Classical.code(),
                    remaining: stock.remaining,
                    last_resort: stock.last_resort,
                }],
                false,
            ),
        };
        for &suite in &published {
            let (remaining, has_last_resort) = suites
                .iter()
                .find(|s| s.ciphersuite == suite.code())
                .filter(|_| !replace)
                .map_or((0, false), |s| (s.remaining, s.last_resort));
            if remaining >= KEY_PACKAGE_LOW_WATER && has_last_resort {
                continue;
            }
            let (one_time, last_resort) = {
                let tx = begin(&self.conn)?;
                let p = db::provider(&tx);
                let one_time = if remaining < KEY_PACKAGE_LOW_WATER {
                    mls::key_packages_offering(
                        &p,
                        &self.me,
                        suite,
                        &published,
                        KEY_PACKAGE_BATCH,
                        false,
                    )?
                } else {
                    Vec::new()
                };
                let last_resort = if has_last_resort {
                    None
                } else {
                    mls::key_packages_offering(&p, &self.me, suite, &published, 1, true)?.pop()
                };
                // Each package belongs to a replacement round: this one if it replaces, else
                // the last one.
                let round = if replace { now } else { rotated };
                for kp in one_time.iter().chain(last_resort.iter()) {
                    tx.execute(
                        "INSERT OR IGNORE INTO own_key_packages (reference, round) VALUES (?1, ?2)",
                        rusqlite::params![mls::key_package_ref(&p, kp)?, round as i64],
                    )?;
                }
                tx.commit()?;
                (one_time, last_resort)
            };
            let _: proto::KeyPackageCount = self.api.post(
                "/v1/keypackages",
                &proto::UploadKeyPackages {
                    key_packages: one_time.into_iter().map(Bytes).collect(),
                    last_resort: last_resort.map(Bytes),
                    replace,
                },
                Some(&token),
            )?;
        }
        if replace {
            db::set_setting(&self.conn, KEY_PACKAGES_ROTATED, now)?;
            self.forget_old_key_packages(now)?;
        }
        Ok(())
    }

    /// Forgets the private keys of key packages two replacement rounds old: the server
    /// dropped them a round ago, and a welcome made with one before that had the whole round
    /// to arrive.
    fn forget_old_key_packages(&mut self, round: u64) -> Result<(), Error> {
        let tx = begin(&self.conn)?;
        let previous: Option<i64> = tx.query_row(
            "SELECT MAX(round) FROM own_key_packages WHERE round < ?1",
            [round as i64],
            |r| r.get(0),
        )?;
        let Some(previous) = previous else { return Ok(()) };
        let old: Vec<Vec<u8>> = {
            let mut stmt = tx.prepare("SELECT reference FROM own_key_packages WHERE round < ?1")?;
            let rows = stmt.query_map([previous], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let p = db::provider(&tx);
        for reference in &old {
            mls::forget_key_package(&p, reference)?;
        }
        tx.execute("DELETE FROM own_key_packages WHERE round < ?1", [previous])?;
        tx.commit()?;
        Ok(())
    }

    /// Makes the next top-up replace every key package this device has on the server.
    pub(crate) fn rotate_key_packages_soon(&self) -> Result<(), Error> {
        db::set_setting(&self.conn, KEY_PACKAGES_ROTATED, 0)
    }

    /// Key packages for a group that exists: of its suite.
    pub(crate) fn claim_for(
        &mut self,
        group_id: &[u8],
        address: &Address,
        only: Option<Vec<u64>>,
        list: &DeviceList,
    ) -> Result<Vec<ValidKeyPackage>, Error> {
        let suite = self.chat_suite(group_id)?;
        self.claim_listed(address, only, list, &[suite])
    }

    /// Key packages for a new chat with `accounts` and this account's other devices, and the
    /// suite the chat is to use: post-quantum when every device has a key package for it and
    /// they are few enough ([`MAX_POST_QUANTUM_DEVICES`]), else classical (a device that has
    /// not published post-quantum packages yet — one that has not run since an upgrade —
    /// could not be added otherwise).
    pub(crate) fn claim_new_chat(
        &mut self,
        accounts: &[Address],
    ) -> Result<(Suite, Vec<ValidKeyPackage>), Error> {
        // A chat of this many accounts has more devices than post-quantum chats take: only
        // classical packages are claimed, rather than taking every member's X-Wing one and
        // claiming again.
        let wanted = match accounts.len() >= MAX_POST_QUANTUM_DEVICES {
            true => vec![Suite::Classical],
            false => published_suites(),
        };
        let me = self.me.device.address.clone();
        let everyone: Vec<Address> = accounts.iter().chain(std::iter::once(&me)).cloned().collect();
        let verified = self.verified_lists(&everyone)?;
        let mut lists = Vec::with_capacity(everyone.len());
        let mut packages = Vec::new();
        for (address, list) in everyone.into_iter().zip(verified) {
            let list = list?;
            packages.extend(self.claim_listed(&address, None, &list, &wanted)?);
            lists.push((address, list));
        }
        // A device's leaf lists, under its signature, the suites it published packages for;
        // it always has one of each on file (the last-resort ones are never used up). A
        // package of a less wanted suite from a device that offers a more wanted one means the
        // server held the better ones back to weaken the chat.
        if let Some((k, better)) = packages.iter().find_map(|k| {
            let better = wanted.iter().take_while(|s| **s != k.suite()).find(|s| k.offers(**s));
            better.map(|b| (k, *b))
        }) {
            return Err(Error::Untrusted(format!(
                "the server handed out an {} key for {}, whose signed key package says it \
                 published {} keys too: the server held those back (or that device is \
                 faulty); refusing to start a weaker chat",
                k.suite().name(),
                k.device,
                better.name()
            )));
        }
        let suite = wanted
            .iter()
            .copied()
            .filter(|s| *s != Suite::PostQuantum || packages.len() < MAX_POST_QUANTUM_DEVICES)
            .find(|s| packages.iter().all(|k| k.suite() == *s))
            .unwrap_or(Suite::Classical);
        let (mut fit, redo): (Vec<_>, Vec<_>) =
            packages.into_iter().partition(|k| k.suite() == suite);
        for (address, list) in &lists {
            let ids: Vec<u64> = redo
                .iter()
                .filter(|k| &k.device.address == address)
                .map(|k| k.device.device_id)
                .collect();
            if !ids.is_empty() {
                fit.extend(self.claim_listed(address, Some(ids), list, &[suite])?);
            }
        }
        Ok((suite, fit))
    }

    /// Claims and validates one key package per device of `address` (only `only`, if given),
    /// each of the first of `suites` the device has one of. Every key package must belong to
    /// a device in `list`, the account's signed device list, verified already.
    pub(crate) fn claim_listed(
        &mut self,
        address: &Address,
        only: Option<Vec<u64>>,
        list: &DeviceList,
        suites: &[Suite],
    ) -> Result<Vec<ValidKeyPackage>, Error> {
        self.require_verified_key(address, &list.identity_key)?;
        let token = self.token()?;
        let claimed: proto::ClaimResponse = self.api.post(
            "/v1/keypackages/claim",
            &proto::ClaimRequest {
                address: address.to_string(),
                device_ids: only.clone(),
                ciphersuites: Some(suites.iter().map(|s| s.code()).collect()),
            },
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
        // One package per device, and only of devices asked for: a server repeating one
        // device's package could otherwise pass it off as many devices.
        let mut seen = std::collections::BTreeSet::new();
        if let Some(k) = packages.iter().find(|k| {
            !seen.insert(k.device.device_id)
                || only.as_ref().is_some_and(|ids| !ids.contains(&k.device.device_id))
        }) {
            return Err(Error::Untrusted(format!(
                "the server handed out a key package for {} twice or unasked",
                k.device
            )));
        }
        if let Some(k) = packages.iter().find(|k| !suites.contains(&k.suite())) {
            return Err(Error::Untrusted(format!(
                "the server offered an {} key for {}, a suite not asked for",
                k.suite().name(),
                k.device
            )));
        }
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

/// The suites this device publishes key packages for and offers new chats, most wanted first.
///
/// Debug builds read `SOTTO_SUITES=classical` to behave as a device from before post-quantum
/// groups (classical packages and chats only), so tests can mix the two; release builds
/// always use both.
pub(crate) fn published_suites() -> Vec<Suite> {
    #[cfg(debug_assertions)]
    if std::env::var("SOTTO_SUITES").is_ok_and(|s| s == "classical") {
        return vec![Suite::Classical];
    }
    Suite::PREFERRED.to_vec()
}
