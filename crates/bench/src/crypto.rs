//! Client-side crypto micro-benchmarks through Sotto's MLS seam, beside the Ed25519 ceiling
//! measured in the same run (small MLS messages are bound by one signature and one
//! verification each), for the classical suite and X-Wing side by side: times, and the sizes
//! of what goes over the wire.

use std::time::{Duration, Instant};

use openmls_memory_storage::MemoryStorage;
use serde::Serialize;
use sotto_core::content::{Body, Message, VERSION};
use sotto_core::mls::{self, DeviceKey, Identity, Provider, Suite};
use sotto_core::{DeviceRef, auth};

/// One micro-benchmark's figure.
#[derive(Debug, Clone, Serialize)]
pub struct CryptoResult {
    /// What was measured.
    pub name: String,
    /// Operations per second.
    pub ops_per_sec: f64,
    /// Mean time per operation, microseconds.
    pub mean_us: f64,
    /// Bytes per second, for payload-sized operations.
    pub bytes_per_sec: Option<f64>,
    /// The MLS suite (`x25519`, `x-wing`), for MLS operations.
    pub suite: Option<String>,
}

/// The size of one thing on the wire, in bytes, per suite.
#[derive(Debug, Clone, Serialize)]
pub struct SizeResult {
    /// What was measured.
    pub name: String,
    /// The suite (`x25519`, `x-wing`).
    pub suite: String,
    /// Bytes.
    pub bytes: usize,
}

/// Everything [`run`] measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CryptoReport {
    /// Timings.
    pub results: Vec<CryptoResult>,
    /// Sizes.
    pub sizes: Vec<SizeResult>,
}

type Mem = Provider<MemoryStorage>;

fn member(n: usize) -> anyhow::Result<(Mem, Identity)> {
    let p = Provider::new(MemoryStorage::default());
    let key = DeviceKey::generate()?;
    key.store(&p)?;
    let device = DeviceRef { address: format!("m{n}@localhost").parse()?, device_id: n as u64 + 1 };
    Ok((p, Identity { device, key }))
}

/// Runs `op` repeatedly for about `budget` (at least `min` times); returns the mean duration.
fn time(
    budget: Duration,
    min: usize,
    mut op: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<(usize, Duration)> {
    let start = Instant::now();
    let mut n = 0;
    while n < min || start.elapsed() < budget {
        op()?;
        n += 1;
    }
    Ok((n, start.elapsed() / n as u32))
}

fn result(name: &str, n_and_mean: (usize, Duration), bytes: Option<usize>) -> CryptoResult {
    let mean = n_and_mean.1.as_secs_f64().max(1e-12);
    CryptoResult {
        name: name.into(),
        ops_per_sec: 1.0 / mean,
        mean_us: mean * 1e6,
        bytes_per_sec: bytes.map(|b| b as f64 / mean),
        suite: None,
    }
}

fn in_suite(suite: Suite, mut r: CryptoResult) -> CryptoResult {
    r.suite = Some(suite.name().into());
    r
}

/// A group built for measuring.
struct Group {
    members: Vec<(Mem, Identity)>,
    id: Vec<u8>,
    /// The committer's time to add everyone.
    add: Duration,
    /// One newcomer's time to join from the welcome.
    join: Duration,
    /// The welcome's size in bytes.
    welcome_bytes: usize,
}

/// A group of `size` members of `suite` built by the first. Only the second member joins
/// (the others' joins would cost the same and nothing below needs them).
fn group(size: usize, suite: Suite) -> anyhow::Result<Group> {
    let members: Vec<(Mem, Identity)> = (0..size).map(member).collect::<Result<_, _>>()?;
    let (p0, id0) = &members[0];
    let gid = mls::create_group(p0, id0, suite)?;
    let (mut add, mut join, mut welcome_bytes) = (Duration::ZERO, Duration::ZERO, 0);
    if size > 1 {
        let packages = members[1..]
            .iter()
            .map(|(p, id)| {
                let kp = mls::key_packages(p, id, suite, 1, false)?.remove(0);
                Ok(mls::validate_key_package(p0, &kp, &id.device.address, None)?)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let started = Instant::now();
        let out = mls::add_members(p0, &gid, id0, &packages)?;
        mls::merge_pending_commit(p0, &gid)?;
        add = started.elapsed();
        let welcome = out.welcome.unwrap_or_default();
        welcome_bytes = welcome.len();
        let started = Instant::now();
        mls::process(&members[1].0, &welcome)?;
        join = started.elapsed();
    }
    Ok(Group { members, id: gid, add, join, welcome_bytes })
}

fn text(len: usize) -> Vec<u8> {
    Message {
        v: VERSION,
        id: "00".into(),
        sent_at: 0,
        expires_in: None,
        n: None,
        root: None,
        body: Body::text("x".repeat(len)),
    }
    .encode()
}

/// Runs every micro-benchmark, each for about `budget`.
pub fn run(budget: Duration, big_group: usize) -> anyhow::Result<CryptoReport> {
    let mut report = CryptoReport::default();
    let out = &mut report.results;
    // The ceiling: one Ed25519 signature and one verification.
    let key = DeviceKey::generate()?;
    let msg = [7u8; 100];
    let sig = key.sign(&msg)?;
    out.push(result(
        "ed25519 sign",
        time(budget, 100, || key.sign(&msg).map(drop).map_err(Into::into))?,
        None,
    ));
    out.push(result(
        "ed25519 verify",
        time(budget, 100, || {
            anyhow::ensure!(auth::verify(key.public(), &msg, &sig));
            Ok(())
        })?,
        None,
    ));

    // Attachments: one 64 KiB STREAM chunk (ChaCha20-Poly1305, RustCrypto), sealed and
    // opened: the ceiling for file transfer on this machine.
    let file_key = sotto_core::attachment::FileKey::generate()?;
    let chunk = vec![5u8; sotto_core::attachment::CHUNK];
    let sealed = file_key.seal(0, false, &chunk)?;
    out.push(result(
        "file chunk seal 64 KiB (chacha20-poly1305)",
        time(budget, 20, || file_key.seal(0, false, &chunk).map(drop).map_err(Into::into))?,
        Some(chunk.len()),
    ));
    out.push(result(
        "file chunk open 64 KiB (chacha20-poly1305)",
        time(budget, 20, || {
            file_key.open(0, false, &sealed).map(drop).map_err(|e| anyhow::anyhow!(e))
        })?,
        Some(chunk.len()),
    ));
    for suite in [Suite::Classical, Suite::PostQuantum] {
        suite_run(&mut report, suite, budget, big_group)?;
    }
    Ok(report)
}

/// The MLS operations in one suite.
fn suite_run(
    report: &mut CryptoReport,
    suite: Suite,
    budget: Duration,
    big_group: usize,
) -> anyhow::Result<()> {
    let mut size = |name: String, bytes: usize| {
        report.sizes.push(SizeResult { name, suite: suite.name().into(), bytes });
    };
    let (p, id) = member(0)?;
    let kp = mls::key_packages(&p, &id, suite, 1, false)?.remove(0);
    size("key package".into(), kp.len());
    let mut out = Vec::new();
    out.push(result(
        "key package: create",
        time(budget, 20, || {
            mls::key_packages(&p, &id, suite, 1, false).map(drop).map_err(Into::into)
        })?,
        None,
    ));
    out.push(result(
        "key package: validate",
        time(budget, 20, || {
            mls::validate_key_package(&p, &kp, &id.device.address, None)
                .map(drop)
                .map_err(Into::into)
        })?,
        None,
    ));

    // Application messages in a group of two: encrypt on one side, decrypt on the other.
    let Group { members, id: gid, .. } = group(2, suite)?;
    for (label, len) in [("100 B", 100usize), ("64 KiB", 64 * 1024)] {
        let plaintext = text(len);
        let mut ciphertexts = Vec::new();
        let enc = time(budget, 20, || {
            ciphertexts.push(mls::encrypt(&members[0].0, &gid, &members[0].1, &plaintext)?);
            Ok(())
        })?;
        out.push(result(&format!("mls encrypt {label}"), enc, Some(len)));
        size(format!("message {label}"), ciphertexts[0].len());
        let mut it = ciphertexts.iter();
        let dec = time(Duration::ZERO, ciphertexts.len(), || {
            let ct = it.next().ok_or_else(|| anyhow::anyhow!("ran out of ciphertexts"))?;
            mls::process(&members[1].0, ct)?;
            Ok(())
        })?;
        out.push(result(&format!("mls decrypt {label}"), dec, Some(len)));
    }

    // Adding members: the committer's cost (key package validation excluded).
    for n in [10usize, 100, big_group] {
        let Group { members, id: gid, add, join, welcome_bytes } = group(n, suite)?;
        out.push(result(&format!("add {} members: committer", n - 1), (1, add), None));
        out.push(result(&format!("add {} members: a newcomer joins", n - 1), (1, join), None));
        size(format!("welcome adding {} members", n - 1), welcome_bytes);
        // A 100-byte message in the group: its state (the ratchet tree with every member's
        // keys) is loaded for each message.
        let plaintext = text(100);
        let started = Instant::now();
        let ct = mls::encrypt(&members[0].0, &gid, &members[0].1, &plaintext)?;
        out.push(result(
            &format!("100 B in a {n}-member group: encrypt"),
            (1, started.elapsed()),
            None,
        ));
        let started = Instant::now();
        mls::process(&members[1].0, &ct)?;
        out.push(result(
            &format!("100 B in a {n}-member group: decrypt"),
            (1, started.elapsed()),
            None,
        ));
        // A commit in the group (removing the last member), processed by another member.
        let last = members[n - 1].1.device.address.clone();
        let started = Instant::now();
        let commit = mls::remove_accounts(&members[0].0, &gid, &members[0].1, &[last])?;
        mls::merge_pending_commit(&members[0].0, &gid)?;
        let made = started.elapsed();
        size(format!("commit in a {n}-member group"), commit.commit.len());
        out.push(result(&format!("commit in a {n}-member group: create"), (1, made), None));
        let started = Instant::now();
        mls::process(&members[1].0, &commit.commit)?;
        out.push(result(
            &format!("commit in a {n}-member group: process"),
            (1, started.elapsed()),
            None,
        ));
    }
    report.results.extend(out.into_iter().map(|r| in_suite(suite, r)));
    Ok(())
}
