//! Key transparency on the client: every device list this device accepts must be what the
//! server's append-only directory holds for that address (a lookup proof against a signed
//! root); this device monitors its own address's history; and an auditor checks, without an
//! account, that the directory only ever grew and that its signed roots chain.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use sotto_core::Address;
use sotto_core::account::SignedList;
use sotto_core::kt::{self, Root};
use sotto_proto as proto;

use crate::api::Api;
use crate::{Client, Error};

fn untrusted(what: impl std::fmt::Display) -> Error {
    Error::Untrusted(format!("key transparency: {what}"))
}

fn root_of(r: &proto::SignedRoot) -> Root {
    Root { epoch: r.epoch, hash: r.hash.0.clone(), previous: r.previous.0.clone() }
}

/// Whether a directory check failed because the value differs (perhaps not yet published).
pub(crate) enum KtCheck {
    /// The directory holds this list.
    Holds,
    /// The directory holds another value for the address.
    Differs,
}

impl Client {
    /// The directory keys pinned for this home. A home made before every server published a
    /// directory has none: it pins the server's now, once, as registration would have (trust
    /// on first use), and says so; a server that still publishes none is refused.
    fn directory_keys(&mut self) -> Result<(Vec<u8>, Vec<u8>), Error> {
        if let Some(keys) = &self.account.kt_keys {
            return Ok(keys.clone());
        }
        let info: proto::ServerInfo = self.api.get("/v1/info", None)?;
        let Some(keys) = crate::kt_keys(&info.kt) else {
            return Err(untrusted(
                "the server publishes no key directory, so no key it hands out can be checked",
            ));
        };
        self.conn.execute(
            "UPDATE account SET kt_signing_key = ?1, kt_vrf_key = ?2 WHERE id = 1",
            params![keys.0, keys.1],
        )?;
        crate::db::add_notice(
            &self.conn,
            "this home had no key directory pinned; the server's directory keys are pinned now \
             (trusted on first use, as at registration)",
        )?;
        self.account.kt_keys = Some(keys.clone());
        Ok(keys)
    }

    /// Checks a signed root against the pinned KT key and every root seen before, then pins it.
    fn accept_root(&self, signed: &proto::SignedRoot) -> Result<Root, Error> {
        let Some((signing_key, _)) = &self.account.kt_keys else {
            return Err(untrusted("no directory key is pinned for this home"));
        };
        let root = root_of(signed);
        if !root.verify(signing_key, &signed.signature.0) {
            return Err(untrusted(format!(
                "the root of epoch {} is not signed by the directory key pinned at registration",
                root.epoch
            )));
        }
        let seen = |epoch: u64| -> Result<Option<Vec<u8>>, Error> {
            Ok(self
                .conn
                .query_row("SELECT hash FROM kt_roots WHERE epoch = ?1", [epoch as i64], |r| {
                    r.get(0)
                })
                .optional()?)
        };
        if seen(root.epoch)?.is_some_and(|h| h != root.hash) {
            return Err(untrusted(format!(
                "the server has shown two different directory roots for epoch {}",
                root.epoch
            )));
        }
        if let Some(prev) = root.epoch.checked_sub(1)
            && seen(prev)?.is_some_and(|h| h != root.previous)
        {
            return Err(untrusted(format!(
                "the root of epoch {} does not follow the root of epoch {prev} seen before",
                root.epoch
            )));
        }
        let newest: Option<i64> =
            self.conn.query_row("SELECT MAX(epoch) FROM kt_roots", [], |r| r.get(0))?;
        if newest.is_some_and(|n| (n as u64) > root.epoch) {
            return Err(untrusted(format!(
                "the server answered from epoch {}, older than epoch {} seen before",
                root.epoch,
                newest.unwrap_or(0)
            )));
        }
        self.conn.execute(
            "INSERT OR IGNORE INTO kt_roots (epoch, hash) VALUES (?1, ?2)",
            params![root.epoch as i64, root.hash],
        )?;
        Ok(root)
    }

    /// Verifies that the directory holds `signed` (with `identity_key`) for `address`.
    pub(crate) fn kt_check(
        &mut self,
        address: &Address,
        identity_key: &[u8],
        signed: &SignedList,
    ) -> Result<KtCheck, Error> {
        let (_, vrf_key) = self.directory_keys()?;
        let token = self.token()?;
        let answer: proto::KtProof =
            self.api.get(&format!("/v1/kt/lookup/{address}"), Some(&token))?;
        let root = self.accept_root(&answer.root)?;
        let entry = kt::verify_lookup(&vrf_key, &root, address, &answer.proof.0)
            .map_err(|e| untrusted(format!("{address}: {e}")))?;
        Ok(if entry.value == kt::commitment(identity_key, signed) {
            KtCheck::Holds
        } else {
            KtCheck::Differs
        })
    }

    /// Checks this account's whole history in the directory: since this device was made,
    /// every value must carry this account's identity key. A key the user never published
    /// is reported.
    pub(crate) fn monitor_own_key(&mut self) -> Result<(), Error> {
        let (_, vrf_key) = self.directory_keys()?;
        let me = self.me.device.address.clone();
        let token = self.token()?;
        let answer: proto::KtProof = self.api.get(&format!("/v1/kt/history/{me}"), Some(&token))?;
        let root = self.accept_root(&answer.root)?;
        let history = kt::verify_history(&vrf_key, &root, &me, &answer.proof.0)
            .map_err(|e| untrusted(format!("your own history: {e}")))?;
        let mine = self.identity.public();
        for entry in history.iter().filter(|e| e.epoch > self.account.kt_since) {
            if kt::committed_identity(&entry.value) != Some(mine.as_slice()) {
                return Err(untrusted(format!(
                    "the directory shows an identity key for {me} that this account never \
                     published (epoch {}): the server, or someone with its database, is \
                     impersonating you",
                    entry.epoch
                )));
            }
        }
        Ok(())
    }

    /// The newest directory epoch this device has seen.
    pub(crate) fn kt_epoch(&self) -> Result<u64, Error> {
        let newest: Option<i64> =
            self.conn.query_row("SELECT MAX(epoch) FROM kt_roots", [], |r| r.get(0))?;
        Ok(newest.map(|n| n as u64).unwrap_or(0))
    }

    /// The directory signing key pinned for this home.
    pub fn kt_signing_key(&self) -> Option<Vec<u8>> {
        self.account.kt_keys.as_ref().map(|(s, _)| s.clone())
    }

    /// The roots this device has seen, for an auditor to compare with the chain it verified.
    pub fn kt_roots_seen(&self) -> Result<RootLog, Error> {
        let mut stmt = self.conn.prepare("SELECT epoch, hash FROM kt_roots ORDER BY epoch")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// Directory roots as (epoch, root hash) pairs.
pub type RootLog = Vec<(u64, Vec<u8>)>;

/// What an audit verified.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    /// The directory's signing key (hex).
    pub signing_key: String,
    /// Epochs whose signed roots chain and whose transitions were proven append-only.
    pub epochs: u64,
    /// Epochs whose append-only proofs were checked in this run (the rest by an earlier one).
    pub proven_now: u64,
    /// The latest root hash (hex).
    pub latest_root: String,
    /// Roots compared with a device's or a previous audit's record.
    pub compared_roots: usize,
}

/// Audits a server's key directory: every signed root verifies with the directory key
/// (`expected_key` if given, else the one the server names), the roots chain without gaps,
/// every epoch from `proven_until` on only added to the previous one (AKD append-only proofs;
/// a previous audit proved the epochs before), and every root in `known` (roots a device or a
/// previous audit saw) is part of the verified chain.
pub fn audit(
    server: &str,
    ca_cert: Option<&str>,
    expected_key: Option<&[u8]>,
    known: &[(u64, Vec<u8>)],
    proven_until: u64,
) -> Result<(AuditReport, RootLog), Error> {
    let api = Api::new(
        Box::new(crate::http::HttpTransport::new(server, ca_cert)?),
        std::sync::Arc::new(crate::transport::SystemClock),
        ca_cert,
    );
    let info: proto::ServerInfo = api.get("/v1/info", None)?;
    let keys = info.kt.ok_or_else(|| untrusted("the server has no key directory"))?;
    if expected_key.is_some_and(|k| k != keys.signing_key.0) {
        return Err(untrusted("the server's directory key is not the one expected"));
    }
    let mut roots: Vec<Root> = Vec::new();
    loop {
        let from = roots.len();
        let page: proto::KtRoots =
            api.get(&format!("/v1/kt/roots?from={from}&limit=1000"), None)?;
        if page.roots.is_empty() {
            break;
        }
        for signed in &page.roots {
            let root = root_of(signed);
            if root.epoch != roots.len() as u64 {
                return Err(untrusted(format!(
                    "the roots skip from {} to {}",
                    roots.len(),
                    root.epoch
                )));
            }
            if !root.verify(&keys.signing_key.0, &signed.signature.0) {
                return Err(untrusted(format!("the root of epoch {} is not signed", root.epoch)));
            }
            let previous = roots.last().map(|r| r.hash.clone()).unwrap_or_default();
            if root.previous != previous {
                return Err(untrusted(format!(
                    "the root of epoch {} does not name the root before it",
                    root.epoch
                )));
            }
            roots.push(root);
        }
    }
    let latest = roots.last().ok_or_else(|| untrusted("the directory has no roots"))?.epoch;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| Error::Io(format!("cannot start the audit runtime: {e}")))?;
    // Epochs up to `proven_until` were proven by the audit whose roots are in `known`; the
    // comparison below makes sure they are the same roots.
    let mut start = proven_until.min(latest);
    while start < latest {
        let end = (start + 32).min(latest);
        let answer: proto::KtAudit =
            api.get(&format!("/v1/kt/audit?start={start}&end={end}"), None)?;
        let proof: akd::AppendOnlyProof = serde_json::from_slice(&answer.proof.0)
            .map_err(|e| untrusted(format!("malformed audit proof: {e}")))?;
        let mut hashes = Vec::new();
        for r in &roots[start as usize..=end as usize] {
            hashes.push(
                <[u8; 32]>::try_from(r.hash.as_slice())
                    .map_err(|_| untrusted("a root hash is not 32 bytes"))?,
            );
        }
        runtime.block_on(akd::auditor::audit_verify::<kt::Config>(hashes, proof)).map_err(|e| {
            untrusted(format!(
                "epochs {start} to {end} are not an append-only extension of each other: {e}"
            ))
        })?;
        start = end;
    }
    let chain: BTreeMap<u64, &Vec<u8>> = roots.iter().map(|r| (r.epoch, &r.hash)).collect();
    for (epoch, hash) in known {
        match chain.get(epoch) {
            Some(h) if *h == hash => {}
            Some(_) => {
                return Err(untrusted(format!(
                    "the root of epoch {epoch} differs from the one seen before: the server \
                     rewrote its history or showed different views"
                )));
            }
            None => {
                return Err(untrusted(format!(
                    "epoch {epoch} was seen before but is missing from the directory"
                )));
            }
        }
    }
    let report = AuditReport {
        signing_key: hex::encode(&keys.signing_key.0),
        epochs: latest + 1,
        proven_now: latest - proven_until.min(latest),
        latest_root: hex::encode(&roots[latest as usize].hash),
        compared_roots: known.len(),
    };
    Ok((report, roots.into_iter().map(|r| (r.epoch, r.hash)).collect()))
}

/// Roots recorded by a previous audit (a JSON file of `[epoch, "hex"]` pairs).
pub fn load_audit_state(path: &Path) -> Result<RootLog, Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::Io(format!("cannot read {}: {e}", path.display()))),
    };
    let pairs: Vec<(u64, String)> = serde_json::from_str(&text).map_err(|e| {
        Error::Invalid(format!("{} is not an audit state file: {e}", path.display()))
    })?;
    pairs
        .into_iter()
        .map(|(e, h)| {
            hex::decode(&h)
                .map(|h| (e, h))
                .map_err(|_| Error::Invalid(format!("bad hash in {}", path.display())))
        })
        .collect()
}

/// Records the verified roots for the next audit.
pub fn save_audit_state(path: &Path, roots: &[(u64, Vec<u8>)]) -> Result<(), Error> {
    let pairs: Vec<(u64, String)> = roots.iter().map(|(e, h)| (*e, hex::encode(h))).collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&pairs).unwrap_or_default())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| Error::Io(format!("cannot write {}: {e}", path.display())))
}
