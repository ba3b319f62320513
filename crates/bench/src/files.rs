//! Attachments end to end: alice sends bob a file with `sotto send-file` and bob downloads it
//! with `sotto download`, real processes against one real `sotto-server` on loopback. Beside
//! them, the speed of the cipher they are bound by, measured in the same run: one core sealing
//! and opening 64 KiB STREAM chunks (ChaCha20-Poly1305), as the client does.

use std::io::{BufReader, Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::Value;
use sotto_core::attachment::{CHUNK, FileKey};

use crate::Scratch;
use crate::daemon::Home;
use crate::proc_stats::peak_rss_kib;
use crate::sotto::SottoServer;

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct FilesResult {
    /// The file's size, MiB.
    pub size_mib: u64,
    /// `sotto send-file`, from start to exit (the file read, hashed, sealed, uploaded and made
    /// durable on the server, then announced in an MLS message), seconds.
    pub upload_seconds: f64,
    /// MiB/s of it.
    pub upload_mib_per_sec: f64,
    /// `sotto download`, from start to exit (fetched, authenticated, hashed, written and made
    /// durable), seconds.
    pub download_seconds: f64,
    /// MiB/s of it.
    pub download_mib_per_sec: f64,
    /// One core sealing 64 KiB chunks, MiB/s.
    pub seal_mib_per_sec: f64,
    /// One core opening them, MiB/s.
    pub open_mib_per_sec: f64,
    /// Writing a file of the same size to the same disk and making it durable (what the
    /// server does with an upload and the client with a download), MiB/s.
    pub disk_write_mib_per_sec: f64,
    /// The sending client's peak resident memory, KiB.
    pub upload_client_peak_rss_kib: u64,
    /// The downloading client's, KiB.
    pub download_client_peak_rss_kib: u64,
    /// The server's peak resident memory over the run, KiB.
    pub server_peak_rss_kib: u64,
}

/// Runs `command` to its end; its wall time and peak resident memory (KiB), or its output
/// if it failed.
pub(crate) fn timed(mut command: Command) -> anyhow::Result<(Duration, u64, Vec<u8>)> {
    let start = Instant::now();
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).spawn()?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    let mut peak = 0;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        peak = peak.max(peak_rss_kib(child.id()));
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = start.elapsed();
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        bail!("{}", String::from_utf8_lossy(&out).trim());
    }
    Ok((took, peak, out))
}

/// MiB/s of `op` over 64 KiB, run for about `budget`.
fn per_core(budget: Duration, mut op: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut n = 0u64;
    while n < 16 || start.elapsed() < budget {
        op()?;
        n += 1;
    }
    Ok((n * CHUNK as u64) as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64())
}

/// Writes `size_mib` MiB of pseudo-random bytes to `path`, durably.
fn write_file(path: &Path, size_mib: u64) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..size_mib {
        for word in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        out.write_all(&block)?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}

/// Whether two files hold the same bytes.
fn same(a: &Path, b: &Path) -> anyhow::Result<bool> {
    let (mut a, mut b) = (
        BufReader::with_capacity(1 << 20, std::fs::File::open(a)?),
        BufReader::with_capacity(1 << 20, std::fs::File::open(b)?),
    );
    let (mut x, mut y) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = a.read(&mut x)?;
        if n == 0 {
            return Ok(b.read(&mut y)? == 0);
        }
        b.read_exact(&mut y[..n])?;
        if x[..n] != y[..n] {
            return Ok(false);
        }
    }
}

/// Sends and downloads one file of `size_mib` MiB with the `sotto` binary `bin`.
pub fn run(server: &SottoServer, bin: &Path, size_mib: u64) -> anyhow::Result<FilesResult> {
    let url = format!("http://{}", server.addr());
    let scratch = Scratch::new("files")?;
    let alice = Home::register(bin, &scratch.0, "alice", &url)?;
    let bob = Home::register(bin, &scratch.0, "bob", &url)?;
    // The chat exists before the file goes: its creation is not what is measured.
    alice.send(bin, &bob.address, "a file follows")?;
    let file = scratch.0.join("file.bin");
    write_file(&file, size_mib)?;

    let mut send = alice.command(bin);
    send.arg("send-file").arg(&bob.address).arg(&file);
    let (up, up_rss, out) = timed(send).context("sotto send-file")?;
    let sent: Value = serde_json::from_slice(&out).context("send-file's answer")?;
    let id = sent["id"].as_str().context("send-file's answer has no id")?.to_string();
    let mut sync = bob.command(bin);
    sync.arg("sync");
    timed(sync).context("sotto sync")?;
    let copy = scratch.0.join("copy.bin");
    let mut download = bob.command(bin);
    download.args(["download", &id, "--out"]).arg(&copy);
    let (down, down_rss, _) = timed(download).context("sotto download")?;
    if !same(&file, &copy)? {
        bail!("the downloaded file differs from the one sent");
    }

    // The disk's own speed at the same job, after the transfers (whose files are still
    // there, so the page cache holds as much unwritten data as it did for them).
    let start = Instant::now();
    write_file(&scratch.0.join("disk.bin"), size_mib)?;
    let disk = size_mib as f64 / start.elapsed().as_secs_f64();

    let key = FileKey::generate()?;
    let chunk = vec![7u8; CHUNK];
    let sealed = key.seal(0, false, &chunk)?;
    let budget = Duration::from_secs(1);
    let seal = per_core(budget, || key.seal(0, false, &chunk).map(drop).map_err(Into::into))?;
    let open =
        per_core(budget, || key.open(0, false, &sealed).map(drop).map_err(|e| anyhow::anyhow!(e)))?;
    let mib = size_mib as f64;
    let r = FilesResult {
        size_mib,
        upload_seconds: up.as_secs_f64(),
        upload_mib_per_sec: mib / up.as_secs_f64(),
        download_seconds: down.as_secs_f64(),
        download_mib_per_sec: mib / down.as_secs_f64(),
        seal_mib_per_sec: seal,
        open_mib_per_sec: open,
        disk_write_mib_per_sec: disk,
        upload_client_peak_rss_kib: up_rss,
        download_client_peak_rss_kib: down_rss,
        server_peak_rss_kib: peak_rss_kib(server.pid()),
    };
    eprintln!(
        "{:>16} {} MiB: upload {:.0} MiB/s ({:.0} % of sealing), download {:.0} MiB/s ({:.0} % \
         of opening); the disk writes {:.0} MiB/s",
        "sotto-files",
        size_mib,
        r.upload_mib_per_sec,
        100.0 * r.upload_mib_per_sec / seal,
        r.download_mib_per_sec,
        100.0 * r.download_mib_per_sec / open,
        disk
    );
    Ok(r)
}
