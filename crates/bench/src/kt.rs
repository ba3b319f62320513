//! The cost of key transparency: publishing a directory of N accounts, proving and verifying
//! lookups, and auditing an epoch — on Sotto's SQLite storage for AKD, beside AKD's own
//! in-memory storage in the same run (the reference: what persistence costs).

use std::time::{Duration, Instant};

use akd::ecvrf::HardCodedAkdVRF;
use akd::storage::memory::AsyncInMemoryDatabase;
use akd::storage::{Database, StorageManager};
use akd::{AkdLabel, AkdValue, AzksParallelismConfig, Directory, HistoryParams};
use serde::Serialize;
use sotto_core::kt::{Config, Root};
use sotto_server::kt::KtStorage;

/// One directory size on one storage.
#[derive(Debug, Clone, Serialize)]
pub struct KtResult {
    /// `sqlite` (Sotto's) or `memory` (AKD's reference).
    pub storage: String,
    /// Accounts in the directory.
    pub accounts: usize,
    /// Publishing them all in one epoch, milliseconds.
    pub publish_all_ms: f64,
    /// Then an epoch of 100 changed accounts, milliseconds.
    pub publish_100_ms: f64,
    /// Generating one lookup proof, microseconds (mean).
    pub lookup_prove_us: f64,
    /// Verifying one lookup proof (as a client does), microseconds (mean).
    pub lookup_verify_us: f64,
    /// A lookup proof's size (JSON, as sent), bytes.
    pub lookup_proof_bytes: usize,
    /// A key history proof of an account with two versions, bytes.
    pub history_proof_bytes: usize,
    /// An append-only proof of the last epoch: bytes, and milliseconds to make.
    pub audit_proof_bytes: usize,
    /// Milliseconds to make that audit proof.
    pub audit_prove_ms: f64,
}

fn label(i: usize) -> AkdLabel {
    AkdLabel(format!("user{i}@localhost").into_bytes())
}

fn value(i: usize, round: u8) -> AkdValue {
    let mut v = vec![round; 64];
    v[..8].copy_from_slice(&(i as u64).to_be_bytes());
    AkdValue(v)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn measure<S: Database + 'static>(
    name: &str,
    db: S,
    accounts: usize,
) -> anyhow::Result<KtResult> {
    let vrf = HardCodedAkdVRF {};
    let dir = Directory::<Config, S, HardCodedAkdVRF>::new(
        StorageManager::new_no_cache(db),
        vrf,
        AzksParallelismConfig::disabled(),
    )
    .await?;
    let all: Vec<(AkdLabel, AkdValue)> = (0..accounts).map(|i| (label(i), value(i, 1))).collect();
    let start = Instant::now();
    dir.publish(all).await?;
    let publish_all = start.elapsed();
    let changed: Vec<(AkdLabel, AkdValue)> =
        (0..100.min(accounts)).map(|i| (label(i * 7 % accounts), value(i, 2))).collect();
    let start = Instant::now();
    dir.publish(changed).await?;
    let publish_100 = start.elapsed();

    let vrf_key = dir.get_public_key().await?.as_bytes().to_vec();
    let hash = dir.get_epoch_hash().await?;
    let root = Root { epoch: hash.0, hash: hash.1.to_vec(), previous: Vec::new(), time: 0 };
    let samples = 100.min(accounts);
    let mut prove = Duration::ZERO;
    let mut verify = Duration::ZERO;
    let mut lookup_bytes = 0;
    for k in 0..samples {
        let i = k * 997 % accounts;
        let start = Instant::now();
        let (proof, _) = dir.lookup(label(i)).await?;
        prove += start.elapsed();
        let json = serde_json::to_vec(&proof)?;
        lookup_bytes = json.len();
        let address = format!("user{i}@localhost").parse()?;
        let start = Instant::now();
        sotto_core::kt::verify_lookup(&vrf_key, &root, &address, &json)
            .map_err(|e| anyhow::anyhow!(e))?;
        verify += start.elapsed();
    }
    let (history, _) = dir.key_history(&label(0), HistoryParams::Complete).await?;
    let start = Instant::now();
    let audit = dir.audit(hash.0 - 1, hash.0).await?;
    let audit_prove = start.elapsed();
    Ok(KtResult {
        storage: name.into(),
        accounts,
        publish_all_ms: ms(publish_all),
        publish_100_ms: ms(publish_100),
        lookup_prove_us: prove.as_secs_f64() * 1e6 / samples as f64,
        lookup_verify_us: verify.as_secs_f64() * 1e6 / samples as f64,
        lookup_proof_bytes: lookup_bytes,
        history_proof_bytes: serde_json::to_vec(&history)?.len(),
        audit_proof_bytes: serde_json::to_vec(&audit)?.len(),
        audit_prove_ms: ms(audit_prove),
    })
}

/// Measures each size on both storages.
pub async fn run(sizes: &[usize]) -> anyhow::Result<Vec<KtResult>> {
    let mut out = Vec::new();
    for &n in sizes {
        let dir = tempfile::tempdir()?;
        let sqlite = KtStorage::open(&dir.path().join("kt.db"))
            .map_err(|e| anyhow::anyhow!("opening the directory: {e}"))?;
        for r in [
            measure("sqlite", sqlite, n).await?,
            measure("memory", AsyncInMemoryDatabase::new(), n).await?,
        ] {
            eprintln!(
                "{:>16} {:>7} accounts: publish {:>9.0} ms, +100 {:>6.0} ms, lookup {:>6.0} µs \
                 (verify {:>5.0} µs, {} B), audit of one epoch {} B",
                format!("kt-{}", r.storage),
                r.accounts,
                r.publish_all_ms,
                r.publish_100_ms,
                r.lookup_prove_us,
                r.lookup_verify_us,
                r.lookup_proof_bytes,
                r.audit_proof_bytes
            );
            out.push(r);
        }
    }
    Ok(out)
}
