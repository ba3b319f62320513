//! Key transparency on the client: every device list this device accepts must be what the
//! server's append-only directory holds for that address (a lookup proof against a signed
//! root); this device monitors its own address's history; and an auditor checks, without an
//! account, that the directory only ever grew and that its signed roots chain.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sotto_core::Address;
use sotto_core::account::{DeviceList, SignedList};
use sotto_core::kt::{self, Root, SeenRoot};
use sotto_proto as proto;

use crate::api::Api;
use crate::{Client, Error};

fn untrusted(what: impl std::fmt::Display) -> Error {
    Error::Untrusted(format!("key transparency: {what}"))
}

fn root_of(r: &proto::SignedRoot) -> Root {
    Root { epoch: r.epoch, hash: r.hash.0.clone(), previous: r.previous.0.clone(), time: r.time }
}

/// How long ago the server may have vouched for its newest directory root before this device
/// refuses to take new keys from it, unless set otherwise.
pub const DEFAULT_KT_MAX_AGE_SECS: u64 = 3600;
/// The shortest bound that may be set (a server vouches at each answer; clocks drift).
pub const MIN_KT_MAX_AGE_SECS: u64 = 60;
/// The longest.
pub const MAX_KT_MAX_AGE_SECS: u64 = 7 * 86_400;
const MAX_AGE_SETTING: &str = "kt_max_age_secs";
/// How far a vouched time may fall behind the newest one seen (the server's clock stepping
/// back a little is not a replay).
const CLOCK_SLACK_SECS: u64 = 300;
/// The most epochs one check fills in (a million: years of a busy directory); a longer
/// gap is refused rather than fetched without end.
const MAX_CHAIN_GAP: u64 = 1_000_000;

/// Epochs are stored as SQLite integers: one that does not fit is no epoch of a real
/// directory.
fn check_epoch(epoch: u64) -> Result<(), Error> {
    if epoch >= i64::MAX as u64 {
        return Err(untrusted(format!("epoch {epoch} is out of range")));
    }
    Ok(())
}

/// Whether a directory check failed because the value differs (perhaps not yet published).
pub(crate) enum KtCheck {
    /// The directory holds this list.
    Holds,
    /// The directory holds another value for the address.
    Differs,
}

fn stored_hash(conn: &Connection, epoch: u64) -> Result<Option<Vec<u8>>, Error> {
    Ok(stored(conn, epoch)?.map(|(hash, _)| hash))
}

/// A recorded root: its hash, and the previous one's if known.
type Recorded = (Vec<u8>, Option<Vec<u8>>);

/// The root recorded for `epoch`.
fn stored(conn: &Connection, epoch: u64) -> Result<Option<Recorded>, Error> {
    Ok(conn
        .prepare_cached("SELECT hash, previous FROM kt_roots WHERE epoch = ?1")?
        .query_row([epoch as i64], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

/// Records a root whose signature was checked, after checking it against every root this
/// device recorded: one root per epoch, each naming the one before.
fn record_root(conn: &Connection, root: &Root) -> Result<(), Error> {
    if let Some((hash, previous)) = stored(conn, root.epoch)?
        && (hash != root.hash || previous.is_some_and(|p| p != root.previous))
    {
        return Err(untrusted(format!(
            "the server has shown two different directory roots for epoch {}",
            root.epoch
        )));
    }
    if let Some(prev) = root.epoch.checked_sub(1)
        && stored_hash(conn, prev)?.is_some_and(|h| h != root.previous)
    {
        return Err(untrusted(format!(
            "the root of epoch {} does not follow the root of epoch {prev} seen before",
            root.epoch
        )));
    }
    check_epoch(root.epoch)?;
    if stored(conn, root.epoch + 1)?.and_then(|(_, p)| p).is_some_and(|p| p != root.hash) {
        return Err(untrusted(format!(
            "the root of epoch {} seen before does not follow this root of epoch {}",
            root.epoch + 1,
            root.epoch
        )));
    }
    conn.prepare_cached(
        "INSERT INTO kt_roots (epoch, hash, previous) VALUES (?1, ?2, ?3)
         ON CONFLICT (epoch) DO UPDATE SET previous = ?3",
    )?
    .execute(params![root.epoch as i64, root.hash, root.previous])?;
    Ok(())
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

    /// How long ago the server may have vouched for its newest root before this device
    /// refuses new keys from it, seconds.
    pub fn kt_max_age(&self) -> Result<u64, Error> {
        Ok(crate::db::setting(&self.conn, MAX_AGE_SETTING)?.unwrap_or(DEFAULT_KT_MAX_AGE_SECS))
    }

    /// Sets that bound (between a minute and 7 days).
    pub fn set_kt_max_age(&mut self, secs: u64) -> Result<(), Error> {
        if !(MIN_KT_MAX_AGE_SECS..=MAX_KT_MAX_AGE_SECS).contains(&secs) {
            return Err(Error::Invalid(format!(
                "the key directory's answers may be allowed to be between {} minute and {} days \
                 old",
                MIN_KT_MAX_AGE_SECS / 60,
                MAX_KT_MAX_AGE_SECS / 86_400
            )));
        }
        crate::db::set_setting(&self.conn, MAX_AGE_SETTING, secs)
    }

    /// Checks a signed root against the pinned KT key and every root seen before, then
    /// records it. With `fresh`, the root must also have been vouched for as the server's
    /// newest within [`Client::kt_max_age`], and not before a root seen earlier.
    fn accept_root(&mut self, signed: &proto::SignedRoot, fresh: bool) -> Result<Root, Error> {
        let Some((signing_key, _)) = self.account.kt_keys.clone() else {
            return Err(untrusted("no directory key is pinned for this home"));
        };
        let root = root_of(signed);
        if !root.verify(&signing_key, &signed.signature.0) {
            return Err(untrusted(format!(
                "the root of epoch {} is not signed by the directory key pinned at registration",
                root.epoch
            )));
        }
        check_epoch(root.epoch)?;
        let newest_time: i64 =
            self.conn
                .query_row("SELECT newest_time FROM kt_state WHERE id = 1", [], |r| r.get(0))?;
        let newest_time = newest_time.max(0) as u64;
        if fresh {
            let now = self.now_ms() / 1000;
            let max_age = self.kt_max_age()?;
            if root.time == 0 {
                return Err(untrusted(
                    "the server's answer does not say when its directory root was current",
                ));
            }
            if now.saturating_sub(root.time) > max_age {
                return Err(untrusted(format!(
                    "the server's newest directory root (epoch {}) was vouched for {} ago, more \
                     than the {} allowed: the server may be showing this device a frozen or \
                     replayed view of the directory, or this device's clock is wrong",
                    root.epoch,
                    span(now - root.time),
                    span(max_age)
                )));
            }
            if root.time.saturating_add(CLOCK_SLACK_SECS) < newest_time {
                return Err(untrusted(format!(
                    "the server vouched for its directory root (epoch {}) at an earlier time \
                     than for one seen before: a replayed answer",
                    root.epoch
                )));
            }
        }
        let newest: Option<i64> =
            self.conn.query_row("SELECT MAX(epoch) FROM kt_roots", [], |r| r.get(0))?;
        if let Some(newest) = newest.map(|n| n as u64) {
            if newest > root.epoch {
                return Err(untrusted(format!(
                    "the server answered from epoch {}, older than epoch {newest} seen before",
                    root.epoch
                )));
            }
            // Every hole in the recorded chain up to this root is filled from the server
            // and checked: the one since the newest root, and any that a root told by another
            // member left.
            let mut gaps: Vec<(u64, u64)> = {
                let mut stmt = self.conn.prepare_cached(
                    "SELECT epoch, next FROM (SELECT epoch, LEAD(epoch) OVER (ORDER BY epoch)
                                                   AS next FROM kt_roots)
                     WHERE next > epoch + 1",
                )?;
                let rows = stmt.query_map([], |r| {
                    Ok((r.get::<_, i64>(0)?.max(0) as u64, r.get::<_, i64>(1)?.max(0) as u64))
                })?;
                rows.collect::<Result<_, _>>()?
            };
            if newest + 1 < root.epoch {
                gaps.push((newest, root.epoch));
            }
            for (from, to) in gaps {
                self.follow_chain(&signing_key, from, to)?;
            }
        }
        record_root(&self.conn, &root)?;
        // The time that later answers may not fall behind: never later than this device's
        // clock, so one answer dated in the future cannot make every honest one look old.
        let vouched = root.time.min(self.now_ms() / 1000);
        if root.time > 0 && vouched >= newest_time {
            let told = proto_seen(signed);
            self.conn.execute(
                "UPDATE kt_state SET newest = ?1, newest_time = ?2 WHERE id = 1",
                params![serde_json::to_vec(&told).unwrap_or_default(), vouched as i64],
            )?;
        }
        Ok(root)
    }

    /// Fetches and checks the signed roots between epoch `from` (seen) and `to` (being
    /// accepted), so that the newer root is known to descend from the older: a server that
    /// moved this device onto another branch of its history is caught.
    fn follow_chain(&mut self, signing_key: &[u8], from: u64, to: u64) -> Result<(), Error> {
        if to - from > MAX_CHAIN_GAP {
            return Err(untrusted(format!(
                "the directory jumped from epoch {from} to {to}, more than any real directory \
                 publishes in years"
            )));
        }
        // A root recorded before links were kept says nothing of the one before it: it is
        // fetched again too, so the link into it is checked and kept.
        let end = match stored(&self.conn, to)? {
            Some((_, None)) => to + 1,
            _ => to,
        };
        let mut next = from + 1;
        while next < end {
            let limit = (end - next).min(1000);
            let page: proto::KtRoots =
                self.api.get(&format!("/v1/kt/roots?from={next}&limit={limit}"), None)?;
            if page.roots.is_empty() {
                return Err(untrusted(format!(
                    "the server does not show the directory roots between epochs {from} and {end}"
                )));
            }
            let tx = crate::begin(&self.conn)?;
            for signed in page.roots.iter().take(limit as usize) {
                let root = root_of(signed);
                if root.epoch != next || !root.verify(signing_key, &signed.signature.0) {
                    return Err(untrusted(format!(
                        "the directory roots between epochs {from} and {to} are not the signed \
                         chain they should be (at epoch {next})"
                    )));
                }
                record_root(&tx, &root)?;
                next += 1;
            }
            tx.commit()?;
        }
        Ok(())
    }

    /// Learns a root another member was shown (told inside an encrypted message). A root
    /// the directory did not sign teaches nothing; one that contradicts a root this device
    /// recorded proves the server shows members different directories: this device then
    /// takes no new keys from it, and says so.
    pub(crate) fn hear_root(
        &self,
        tx: &Connection,
        from: &Address,
        seen: &SeenRoot,
    ) -> Result<(), Error> {
        let Some((signing_key, _)) = &self.account.kt_keys else { return Ok(()) };
        let root = seen.root();
        if !root.verify(signing_key, &seen.signature) || check_epoch(root.epoch).is_err() {
            return Ok(());
        }
        match record_root(tx, &root) {
            Err(Error::Untrusted(why)) => {
                let text = format!(
                    "the server showed {from} a key directory that contradicts the one it \
                     showed this device ({why}); it is showing members different views, so no \
                     new keys are taken from it"
                );
                tx.execute(
                    "UPDATE kt_state SET split = ?1 WHERE id = 1 AND split IS NULL",
                    [&text],
                )?;
                crate::db::add_notice(tx, &format!("untrusted: {text}"))?;
                Ok(())
            }
            other => other,
        }
    }

    /// The newest root this device was shown, if this chat has not been told about it yet
    /// (it is then marked as told), or `again` (a message encrypted anew, whose first
    /// encryption may have been the one that told it and never arrived).
    pub(crate) fn root_to_tell(
        &self,
        tx: &Connection,
        group_id: &[u8],
        again: bool,
    ) -> Result<Option<SeenRoot>, Error> {
        let newest: Option<Vec<u8>> = tx
            .prepare_cached("SELECT newest FROM kt_state WHERE id = 1")?
            .query_row([], |r| r.get(0))?;
        let Some(seen) = newest.and_then(|j| serde_json::from_slice::<SeenRoot>(&j).ok()) else {
            return Ok(None);
        };
        let told = tx
            .prepare_cached("UPDATE chats SET kt_told = ?2 WHERE group_id = ?1 AND kt_told < ?2")?
            .execute(params![group_id, seen.epoch as i64])?;
        Ok((told > 0 || again).then_some(seen))
    }

    /// Whether the key directory records `address` as deleted (its tombstone, with a proof
    /// against a root this device accepts): the server's claim that an account is gone is
    /// then on the append-only record, not just in one answer.
    pub(crate) fn kt_deleted(&mut self, address: &Address) -> Result<bool, Error> {
        let (_, vrf_key) = self.directory_keys()?;
        Ok(kt::is_tombstone(&self.kt_lookup(&vrf_key, address)?))
    }

    /// The directory's value for `address`, checked against a fresh root this device accepts.
    fn kt_lookup(&mut self, vrf_key: &[u8], address: &Address) -> Result<Vec<u8>, Error> {
        let token = self.token()?;
        let answer: proto::KtProof =
            self.api.get(&format!("/v1/kt/lookup/{address}"), Some(&token))?;
        let root = self.accept_root(&answer.root, true)?;
        let entry = kt::verify_lookup(vrf_key, &root, address, &answer.proof.0)
            .map_err(|e| untrusted(format!("{address}: {e}")))?;
        Ok(entry.value)
    }

    /// Verifies that the directory holds `signed` (with `identity_key`) for `address`.
    pub(crate) fn kt_check(
        &mut self,
        address: &Address,
        identity_key: &[u8],
        signed: &SignedList,
    ) -> Result<KtCheck, Error> {
        let (_, vrf_key) = self.directory_keys()?;
        let split: Option<String> =
            self.conn.query_row("SELECT split FROM kt_state WHERE id = 1", [], |r| r.get(0))?;
        // Caught showing members different directories, the server is trusted with no new
        // key: a list goes through only if it adds nothing to the one pinned (a revocation).
        if let Some(split) = split {
            let pinned = crate::db::pinned_list(&self.conn, address.as_str())?
                .and_then(|p| DeviceList::verify(&p).ok());
            let adds_nothing = match (pinned, DeviceList::verify(signed).ok()) {
                (Some(pinned), Some(list)) => {
                    pinned.identity_key == list.identity_key
                        && list.devices.iter().all(|d| pinned.lists(&d.key))
                }
                _ => false,
            };
            if !adds_nothing {
                return Err(Error::Untrusted(split));
            }
        }
        Ok(if self.kt_lookup(&vrf_key, address)? == kt::commitment(identity_key, signed) {
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
        // Not held to the freshness bound: this check runs at every sync, and a stale answer
        // here hides nothing that a fresh lookup by anyone else would not show.
        let root = self.accept_root(&answer.root, false)?;
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

/// A proto root as members tell each other.
fn proto_seen(r: &proto::SignedRoot) -> SeenRoot {
    SeenRoot {
        epoch: r.epoch,
        hash: r.hash.0.clone(),
        previous: r.previous.0.clone(),
        time: r.time,
        signature: r.signature.0.clone(),
    }
}

/// A duration in words ("3 h 5 min").
fn span(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{} min", s / 60),
        s => format!("{s} s"),
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
