//! `sotto-bench`: runs the relay workload against Sotto and peer servers and writes a report.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sotto_bench::jetstream::NatsServer;
use sotto_bench::report::{self, Machine, Report};
use sotto_bench::sotto::SottoServer;
use sotto_bench::synapse::{self, SynapseServer};
use sotto_bench::{RelayParams, big_group, crypto, daemon, e2ee, files, idle, jetstream, sotto};
use sotto_proto::live::Version;

/// Sotto's load generator: the same workload against Sotto and peers, in one run.
///
/// Peers are installed by `scripts/install-peers.sh`. Results go to OUT/results.json and
/// OUT/report.md.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// A seconds-long run that only checks that everything works (for CI).
    #[arg(long)]
    smoke: bool,
    /// Systems to measure: sotto, jetstream (default sync), jetstream-fsync (sync always),
    /// synapse (to-device messages), files (a file sent and downloaded with the `sotto`
    /// binary, beside one core's cipher speed), big-group (a group of --big-group-members
    /// created, joined, grown and shrunk with the `sotto` binary); and, only when named,
    /// sotto-json (Sotto's
    /// relay with live connections speaking version 1, JSON frames one message each, and its
    /// backlog drained in JSON pages: the reference for version 2's binary pages) and daemon (`sotto daemon` against `sotto
    /// send` processes, and its notification latency).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "sotto,jetstream-fsync,jetstream,synapse,files,big-group"
    )]
    systems: Vec<String>,
    /// Simulated devices.
    #[arg(long, default_value_t = 16)]
    devices: usize,
    /// Windows (submissions in flight per device) to sweep.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    windows: Vec<usize>,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Warm-up seconds per run.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Idle-connection counts to measure Sotto's memory at (empty: skip). The open-file limit
    /// of this machine caps them.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,15000")]
    idle: Vec<usize>,
    /// Messages queued per offline device in the backlog workload (0: skip).
    #[arg(long, default_value_t = 5000)]
    backlog: usize,
    /// Group sizes for the end-to-end-encrypted workload (0: skip).
    #[arg(long, value_delimiter = ',', default_value = "2,10,100")]
    e2ee_groups: Vec<usize>,
    /// Seconds per client crypto micro-benchmark (0: skip them).
    #[arg(long, default_value_t = 2.0)]
    crypto_seconds: f64,
    /// The largest group in the crypto benchmarks.
    #[arg(long, default_value_t = 1000)]
    big_group: usize,
    /// Directory sizes (accounts) for the key transparency costs (empty: skip).
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    kt: Vec<usize>,
    /// Messages sent through `sotto daemon` in the daemon workload (0: skip it).
    #[arg(long, default_value_t = 1000)]
    daemon_sends: usize,
    /// Messages sent by `sotto send` processes in the daemon workload, one process each
    /// [default: as many as --daemon-sends].
    #[arg(long)]
    daemon_cli_sends: Option<usize>,
    /// Messages whose notification latency the daemon workload measures.
    #[arg(long, default_value_t = 200)]
    daemon_notify: usize,
    /// Members of the group in the big-group workload (a group created, joined, grown and
    /// shrunk with the `sotto` binary).
    #[arg(long, default_value_t = 10_000)]
    big_group_members: usize,
    /// The file's size in the files workload, MiB (0: skip it).
    #[arg(long, default_value_t = 1024)]
    file_mib: u64,
    /// Where to write the results.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// The sotto-server binary [default: next to this program].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The sotto client binary [default: next to this program].
    #[arg(long)]
    client_bin: Option<PathBuf>,
    /// The Python that has Synapse installed.
    #[arg(long, default_value = "python3")]
    python: PathBuf,
    /// The nats-server binary [default: from PATH].
    #[arg(long, default_value = "nats-server")]
    nats_bin: PathBuf,
}

/// The binary `name` next to this program; `flag` is the option that names it otherwise.
fn sibling(name: &str, flag: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let dir = me.parent().context("no directory for this program")?;
    // Tests run from target/*/deps; binaries live one level up.
    for d in [dir, dir.parent().unwrap_or(dir)] {
        let candidate = d.join(name);
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    anyhow::bail!("{name} not found next to {}; build it or pass {flag}", me.display())
}

fn found(bin: &PathBuf) -> bool {
    std::process::Command::new(bin).arg("--version").output().is_ok_and(|o| o.status.success())
}

fn say_relay(r: &sotto_bench::RelayResult) {
    eprintln!(
        "{:>16} window {:>3}: {:>8.0} msgs/s  p99 {:>6} µs  server {:>4.0} µs CPU/msg",
        r.system,
        r.window,
        r.msgs_per_sec,
        r.p99_us,
        r.server_cpu_percent * 10_000.0 / r.msgs_per_sec.max(1.0)
    );
}

fn say_backlog(b: &sotto_bench::BacklogResult) {
    eprintln!(
        "{:>16} backlog: fill {:>8.0} msgs/s, drain {:>8.0} msgs/s",
        b.system, b.fill_msgs_per_sec, b.drain_msgs_per_sec
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut a = Args::parse();
    if a.smoke {
        a.devices = a.devices.min(4);
        a.windows = vec![1, 4];
        a.idle = vec![200];
        a.backlog = a.backlog.min(100);
        a.crypto_seconds = a.crypto_seconds.min(0.05);
        a.e2ee_groups = vec![2];
        a.big_group = a.big_group.min(20);
        a.kt = vec![200];
        a.daemon_sends = a.daemon_sends.min(5);
        a.daemon_cli_sends = a.daemon_cli_sends.map(|n| n.min(5));
        a.daemon_notify = a.daemon_notify.min(5);
        a.file_mib = a.file_mib.min(4);
        a.big_group_members = a.big_group_members.min(20);
        a.seconds = 1;
        a.warmup = 0;
    }
    let server_bin = match &a.server_bin {
        Some(p) => p.clone(),
        None => sibling("sotto-server", "--server-bin")?,
    };
    let mut report = Report {
        at: sotto_core::unix_now(),
        machine: Machine::here(),
        smoke: a.smoke,
        relay: Vec::new(),
        idle: Vec::new(),
        backlog: Vec::new(),
        crypto: Vec::new(),
        mls_sizes: Vec::new(),
        e2ee: Vec::new(),
        kt: Vec::new(),
        daemon: Vec::new(),
        files: Vec::new(),
        big_group: Vec::new(),
        skipped: Vec::new(),
    };
    let params = |window: usize| RelayParams {
        devices: a.devices.max(2),
        window: window.max(1),
        warmup: Duration::from_millis(if a.smoke { 300 } else { a.warmup * 1000 }),
        measure: Duration::from_secs(a.seconds.max(1)),
    };
    for system in &a.systems {
        match system.as_str() {
            "sotto" | "sotto-json" => {
                let version = if system == "sotto" { Version::V2 } else { Version::V1 };
                for &w in &a.windows {
                    // A fresh server per run: no run inherits another's queues.
                    let server = SottoServer::start(&server_bin)?;
                    let r = sotto::relay(&server, &params(w), (system, version)).await?;
                    say_relay(&r);
                    report.relay.push(r);
                }
                if a.backlog > 0 {
                    let server = SottoServer::start(&server_bin)?;
                    let shape = (a.devices.max(2), a.backlog);
                    let b = sotto::backlog(&server, shape, (system, version)).await?;
                    say_backlog(&b);
                    report.backlog.push(b);
                }
            }
            "jetstream" | "jetstream-fsync" => {
                if !found(&a.nats_bin) {
                    let why =
                        format!("{} not found; run scripts/install-peers.sh", a.nats_bin.display());
                    if a.smoke {
                        eprintln!("skipping {system}: {why}");
                        report.skipped.push((system.clone(), why));
                        continue;
                    }
                    anyhow::bail!(why);
                }
                for &w in &a.windows {
                    let server = NatsServer::start(&a.nats_bin, system == "jetstream-fsync")?;
                    let r = jetstream::relay(&server, &params(w)).await?;
                    say_relay(&r);
                    report.relay.push(r);
                }
                if a.backlog > 0 {
                    let server = NatsServer::start(&a.nats_bin, system == "jetstream-fsync")?;
                    let b = jetstream::backlog(&server, a.devices.max(2), a.backlog).await?;
                    say_backlog(&b);
                    report.backlog.push(b);
                }
            }
            "synapse" => {
                let has_synapse = std::process::Command::new(&a.python)
                    .args(["-c", "import synapse"])
                    .output()
                    .is_ok_and(|o| o.status.success());
                if !has_synapse {
                    let why = "Synapse not installed; run scripts/install-peers.sh".to_string();
                    if a.smoke {
                        eprintln!("skipping synapse: {why}");
                        report.skipped.push((system.clone(), why));
                        continue;
                    }
                    anyhow::bail!(why);
                }
                for &w in &a.windows {
                    let server = SynapseServer::start(&a.python)?;
                    let r = synapse::relay(&server, &params(w)).await?;
                    say_relay(&r);
                    report.relay.push(r);
                }
            }
            "daemon" => {
                if a.daemon_sends == 0 {
                    continue;
                }
                let params = daemon::DaemonParams {
                    client_bin: match &a.client_bin {
                        Some(p) => p.clone(),
                        None => sibling("sotto", "--client-bin")?,
                    },
                    daemon_sends: a.daemon_sends,
                    cli_sends: a.daemon_cli_sends.unwrap_or(a.daemon_sends),
                    notify: a.daemon_notify,
                    spacing: Duration::from_millis(10),
                    idle_watch: Duration::from_millis(if a.smoke { 300 } else { 2000 }),
                };
                let server = SottoServer::start(&server_bin)?;
                let r =
                    tokio::task::spawn_blocking(move || daemon::run(&server, &params)).await??;
                report.daemon.push(r);
            }
            "files" => {
                if a.file_mib == 0 {
                    continue;
                }
                let bin = match (&a.client_bin, sibling("sotto", "--client-bin")) {
                    (Some(p), _) => p.clone(),
                    (None, Ok(p)) => p,
                    (None, Err(why)) if a.smoke => {
                        eprintln!("skipping files: {why}");
                        report.skipped.push((system.clone(), why.to_string()));
                        continue;
                    }
                    (None, Err(why)) => return Err(why),
                };
                let server = SottoServer::start(&server_bin)?;
                let mib = a.file_mib;
                let r =
                    tokio::task::spawn_blocking(move || files::run(&server, &bin, mib)).await??;
                report.files.push(r);
            }
            "big-group" => {
                let bin = match (&a.client_bin, sibling("sotto", "--client-bin")) {
                    (Some(p), _) => p.clone(),
                    (None, Ok(p)) => p,
                    (None, Err(why)) if a.smoke => {
                        eprintln!("skipping big-group: {why}");
                        report.skipped.push((system.clone(), why.to_string()));
                        continue;
                    }
                    (None, Err(why)) => return Err(why),
                };
                let server = SottoServer::start(&server_bin)?;
                let r = big_group::run(&server, &bin, a.big_group_members).await?;
                eprintln!(
                    "{:>16} {} members: created in {:.1} s, joined in {:.1} s",
                    "big-group", r.members, r.create_seconds, r.join_seconds
                );
                report.big_group.push(r);
            }
            other => anyhow::bail!(
                "unknown system {other:?}: use sotto, sotto-json, jetstream, jetstream-fsync, \
                 synapse, daemon, files, big-group"
            ),
        }
    }
    let steps: Vec<usize> = a.idle.iter().copied().filter(|n| *n > 0).collect();
    if !steps.is_empty() {
        let server = SottoServer::start(&server_bin)?;
        report.idle = idle::idle(&server, &steps).await?;
    }
    for &size in a.e2ee_groups.iter().filter(|s| **s >= 2) {
        let server = SottoServer::start(&server_bin)?;
        let p = params(1);
        let r = e2ee::e2ee(&server, size, p.warmup, p.measure).await?;
        eprintln!(
            "{:>16} group of {size:>3}: {:>7.0} sent/s, {:>8.0} decrypted/s, p99 {:>7} µs",
            "sotto-e2ee", r.sent_per_sec, r.decrypted_per_sec, r.p99_us
        );
        report.e2ee.push(r);
    }
    if a.crypto_seconds > 0.0 {
        let budget = Duration::from_secs_f64(a.crypto_seconds);
        let big = a.big_group.max(11);
        let measured = tokio::task::spawn_blocking(move || crypto::run(budget, big)).await??;
        report.crypto = measured.results;
        report.mls_sizes = measured.sizes;
        for c in &report.crypto {
            let suite = c.suite.as_deref().map(|s| format!(" [{s}]")).unwrap_or_default();
            eprintln!("{:>50}{suite}: {:>10.0}/s", c.name, c.ops_per_sec);
        }
    }
    let sizes: Vec<usize> = a.kt.iter().copied().filter(|n| *n > 0).collect();
    if !sizes.is_empty() {
        report.kt = sotto_bench::kt::run(&sizes).await?;
    }
    report::write(&report, &a.out)?;
    println!("{}", report::markdown(&report));
    eprintln!("wrote {}/results.json and report.md", a.out.display());
    Ok(())
}
