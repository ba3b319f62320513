//! Sotto's load generator.
//!
//! Runs the same workload against Sotto and against peer servers on this machine, in the same
//! run, and reports each figure beside the peers'. Every system under test is started from its
//! own binary on loopback and stopped by PID; the load comes from this process (Rust, tokio,
//! `TCP_NODELAY` on every socket), so the client is never the Python-sized bottleneck.
//!
//! The relay workload: `devices` simulated devices, each with an authenticated live
//! connection (Sotto: WebSocket; JetStream: a durable pull consumer per device), each sending
//! 1 KiB opaque payloads to the next device with `window` submissions in flight, waiting for
//! the server's acknowledgement of each. Receivers acknowledge every message. Each payload
//! carries its send time, so the receiver measures end-to-end latency into an HDR histogram.

pub mod big_group;
pub mod crypto;
pub mod daemon;
pub mod e2ee;
pub mod files;
pub mod idle;
pub mod jetstream;
pub mod kt;
pub mod plot;
pub mod proc_stats;
pub mod report;
pub mod sotto;
pub mod synapse;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Size of every payload.
pub const PAYLOAD: usize = 1024;

/// One relay run's shape.
#[derive(Debug, Clone, Copy)]
pub struct RelayParams {
    /// Simulated devices (each sends and receives).
    pub devices: usize,
    /// Submissions in flight per device.
    pub window: usize,
    /// Load before measuring.
    pub warmup: Duration,
    /// Measured time.
    pub measure: Duration,
}

/// One relay run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct RelayResult {
    /// The system under test.
    pub system: String,
    /// Devices.
    pub devices: usize,
    /// Window per device.
    pub window: usize,
    /// Messages delivered during the measured time.
    pub delivered: u64,
    /// Delivered messages per second.
    pub msgs_per_sec: f64,
    /// End-to-end latency percentiles, microseconds.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Submissions that failed.
    pub errors: u64,
    /// Server CPU during the measured time, percent of one core.
    pub server_cpu_percent: f64,
    /// Server peak resident memory, KiB.
    pub server_peak_rss_kib: u64,
}

/// Submissions in flight per device while filling backlogs.
pub const BACKLOG_WINDOW: usize = 16;

/// How many of a device's `total` backlog messages submission slot `slot` sends.
pub fn slot_share(total: usize, slot: usize) -> usize {
    total / BACKLOG_WINDOW + usize::from(slot < total % BACKLOG_WINDOW)
}

/// One backlog run's figures: queues for offline devices filled, then drained.
#[derive(Debug, Clone, Serialize)]
pub struct BacklogResult {
    /// The system under test.
    pub system: String,
    /// Devices (each with a backlog).
    pub devices: usize,
    /// Messages queued per device.
    pub per_device: usize,
    /// Messages queued per second while filling.
    pub fill_msgs_per_sec: f64,
    /// Messages fetched and acknowledged per second while draining.
    pub drain_msgs_per_sec: f64,
}

impl BacklogResult {
    /// The figures, if every queued message came back out.
    pub fn checked(
        system: &str,
        devices: usize,
        per_device: usize,
        drained: usize,
        fill: Duration,
        drain: Duration,
    ) -> anyhow::Result<BacklogResult> {
        let total = devices * per_device;
        anyhow::ensure!(drained == total, "{system}: drained {drained} of {total} queued messages");
        Ok(BacklogResult {
            system: system.into(),
            devices,
            per_device,
            fill_msgs_per_sec: total as f64 / fill.as_secs_f64(),
            drain_msgs_per_sec: total as f64 / drain.as_secs_f64(),
        })
    }
}

/// Timestamps payloads and records deliveries that arrive inside the measured window.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    from_ns: u64,
    to_ns: u64,
    delivered: AtomicU64,
    errors: AtomicU64,
    histogram: Mutex<Histogram<u64>>,
}

impl Recorder {
    /// A recorder measuring from `warmup` after now, for `measure`.
    pub fn new(warmup: Duration, measure: Duration) -> Self {
        let from = warmup.as_nanos() as u64;
        Recorder {
            start: Instant::now(),
            from_ns: from,
            to_ns: from + measure.as_nanos() as u64,
            delivered: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            // 1 µs to 60 s at 3 significant digits.
            histogram: Mutex::new(
                Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
            ),
        }
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// A payload stamped with the current time.
    pub fn payload(&self) -> Vec<u8> {
        let mut p = vec![0u8; PAYLOAD];
        p[..8].copy_from_slice(&self.now_ns().to_le_bytes());
        p
    }

    /// Records the delivery of `payload`.
    pub fn delivered(&self, payload: &[u8]) {
        let Some(stamp) = payload.get(..8) else { return };
        let mut sent = [0u8; 8];
        sent.copy_from_slice(stamp);
        let sent = u64::from_le_bytes(sent);
        let now = self.now_ns();
        if (self.from_ns..self.to_ns).contains(&now) {
            self.delivered.fetch_add(1, Ordering::Relaxed);
            let micros = (now.saturating_sub(sent) / 1000).max(1);
            let mut h = self.histogram.lock().unwrap_or_else(|p| p.into_inner());
            let _ = h.record(micros.min(60_000_000));
        }
    }

    /// Counts a failed submission.
    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Waits until the measured time is over.
    pub async fn wait_until_done(&self) {
        let left = self.to_ns.saturating_sub(self.now_ns());
        tokio::time::sleep(Duration::from_nanos(left)).await;
    }

    /// Lets the load run through warm-up and the measured time, measuring process `pid`'s CPU
    /// over the latter (percent of one core), then raises `stop`.
    pub async fn run(&self, pid: u32, stop: &std::sync::atomic::AtomicBool) -> f64 {
        self.wait_until_measuring().await;
        let cpu = proc_stats::CpuMeter::start(pid);
        self.wait_until_done().await;
        let cpu = cpu.percent();
        stop.store(true, Ordering::Relaxed);
        cpu
    }

    /// Waits until the measured time starts.
    pub async fn wait_until_measuring(&self) {
        let left = self.from_ns.saturating_sub(self.now_ns());
        tokio::time::sleep(Duration::from_nanos(left)).await;
    }

    /// The figures, given the server's CPU and memory.
    pub fn result(&self, system: &str, p: &RelayParams, cpu: f64, rss: u64) -> RelayResult {
        let h = self.histogram.lock().unwrap_or_else(|p| p.into_inner());
        let delivered = self.delivered.load(Ordering::Relaxed);
        let seconds = (self.to_ns - self.from_ns) as f64 / 1e9;
        RelayResult {
            system: system.into(),
            devices: p.devices,
            window: p.window,
            delivered,
            msgs_per_sec: delivered as f64 / seconds,
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            errors: self.errors.load(Ordering::Relaxed),
            server_cpu_percent: cpu,
            server_peak_rss_kib: rss,
        }
    }
}

/// Waits for load tasks that were told to stop; their outcome no longer matters.
pub async fn join_all<T>(tasks: Vec<tokio::task::JoinHandle<T>>) {
    for t in tasks {
        let _ = t.await;
    }
}

/// A scratch directory removed when dropped.
#[derive(Debug)]
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    /// A fresh directory under the system's temporary directory.
    pub fn new(name: &str) -> std::io::Result<Scratch> {
        let dir = std::env::temp_dir().join(format!(
            "sotto-bench-{name}-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos() ^ u128::from(sotto_core::unix_now())
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free loopback port.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
