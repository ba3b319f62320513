//! The `sotto daemon` workload: what keeping a home's client running saves, against one real
//! `sotto-server`, with the real `sotto` binary on both ends.
//!
//! Three users, alice, bob and carol, each with a home of their own. Then:
//!
//! 1. **Sends.** Carol sends to bob with one `sotto --json send` process per message
//!    (sequential; no daemon runs for her, so the CLI opens her home itself), and alice sends to
//!    bob through her daemon: sequential JSON-RPC `send` calls on one Unix socket, each waiting
//!    for its answer. The two ways alternate in ten rounds, so that both see the same machine
//!    (this one's speed drifts by a factor of two within minutes). Bob is offline (his messages
//!    queue on the server). Each way starts after an unmeasured send, so neither pays for
//!    creating its chat.
//! 2. **Notification latency.** Bob's daemon starts, catches up and is subscribed to events;
//!    alice sends messages through her daemon a few milliseconds apart. For each, the delay from
//!    alice's `send` call returning (the server has stored the message for bob's device) to
//!    bob's subscriber reading the `message` notification with that body.
//!
//! A process opens the home each time: it derives the key from the passphrase (Argon2id at the
//! cost the home was made with, which the report names), opens the encrypted database and logs
//! in; the daemon does so once. Test homes are made with `SOTTO_INSECURE_FAST_KDF=1`, which only
//! a debug build of `sotto` obeys: a release build gives them the full cost a real user pays.

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::{Value, json};

use crate::Scratch;
use crate::proc_stats::{CpuMeter, peak_rss_kib};
use crate::sotto::SottoServer;

/// The passphrase of both homes.
const PASSPHRASE: &str = "correct horse battery staple";
/// How long any one answer from a daemon may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a notification may take to arrive before it counts as missing.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(30);
/// The bodies of the latency workload's messages start with this.
const NOTIFY_PREFIX: &str = "latency ";
/// The sends are measured in this many rounds, each some processes then some daemon calls.
const SEND_ROUNDS: usize = 10;

/// One run's shape.
#[derive(Debug, Clone)]
pub struct DaemonParams {
    /// The `sotto` binary.
    pub client_bin: PathBuf,
    /// Messages sent through alice's daemon.
    pub daemon_sends: usize,
    /// Messages sent by `sotto send` processes (as many, or fewer when processes are slow).
    pub cli_sends: usize,
    /// Messages whose notification latency is measured.
    pub notify: usize,
    /// The pause after each of them before the next is sent.
    pub spacing: Duration,
    /// How long the daemons are watched while idle, for their CPU use.
    pub idle_watch: Duration,
}

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct DaemonResult {
    /// The `sotto` binary measured.
    pub client_bin: String,
    /// The passphrase key derivation the homes use (what every process start pays).
    pub kdf: String,
    /// Whether that is the full cost a real user pays (false: the debug-only test cost).
    pub kdf_full_cost: bool,
    /// Messages sent through the daemon.
    pub daemon_sends: usize,
    /// Seconds for all of them.
    pub daemon_seconds: f64,
    /// Milliseconds per message through the daemon.
    pub daemon_ms_per_msg: f64,
    /// Messages sent by `sotto send` processes.
    pub cli_sends: usize,
    /// Seconds for all of them.
    pub cli_seconds: f64,
    /// Milliseconds per message (per process).
    pub cli_ms_per_msg: f64,
    /// `cli_ms_per_msg / daemon_ms_per_msg`.
    pub speedup: f64,
    /// Seconds from starting bob's daemon to its first answer, with everything queued for it
    /// (`bob_backlog` messages) processed.
    pub bob_catch_up_seconds: f64,
    /// Messages alice had sent bob (all queued on the server) when his daemon started.
    pub bob_backlog: usize,
    /// Messages whose notification latency was measured.
    pub notify_messages: usize,
    /// The pause between them, milliseconds.
    pub notify_spacing_ms: f64,
    /// From alice's send call returning to bob's notification: median, milliseconds.
    pub notify_p50_ms: f64,
    /// 90th percentile.
    pub notify_p90_ms: f64,
    /// 99th percentile.
    pub notify_p99_ms: f64,
    /// The slowest.
    pub notify_max_ms: f64,
    /// Notifications bob read before alice's call had returned (counted as 0 ms above).
    pub notify_before_answer: usize,
    /// From alice's send call being made to bob's notification: median, milliseconds.
    pub notify_from_call_p50_ms: f64,
    /// 99th percentile.
    pub notify_from_call_p99_ms: f64,
    /// Notifications that never arrived (within 30 s).
    pub notify_missing: usize,
    /// Alice's send calls during the latency workload: median, milliseconds.
    pub send_call_p50_ms: f64,
    /// 99th percentile.
    pub send_call_p99_ms: f64,
    /// Alice's daemon while idle at the end, percent of one core.
    pub alice_idle_cpu_percent: f64,
    /// Bob's daemon while idle at the end, percent of one core.
    pub bob_idle_cpu_percent: f64,
    /// Alice's daemon's peak resident memory, KiB.
    pub alice_peak_rss_kib: u64,
}

/// One user's home directory.
#[derive(Debug)]
pub(crate) struct Home {
    pub(crate) dir: PathBuf,
    pub(crate) address: String,
}

impl Home {
    /// `sotto --home DIR --json` with the homes' passphrase (and the cheap test KDF, which only
    /// debug builds obey).
    pub(crate) fn command(&self, bin: &Path) -> Command {
        let mut c = Command::new(bin);
        c.env("SOTTO_PASSPHRASE", PASSPHRASE)
            .env("SOTTO_INSECURE_FAST_KDF", "1")
            .arg("--home")
            .arg(&self.dir)
            .arg("--json");
        c
    }

    /// Registers `name@localhost` in a fresh home under `scratch`.
    pub(crate) fn register(
        bin: &Path,
        scratch: &Path,
        name: &str,
        server: &str,
    ) -> anyhow::Result<Home> {
        let home = Home { dir: scratch.join(name), address: format!("{name}@localhost") };
        let out = home
            .command(bin)
            .args(["register", &home.address, "--server", server])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        if !out.status.success() {
            bail!("registering {}: {}", home.address, String::from_utf8_lossy(&out.stdout));
        }
        Ok(home)
    }

    /// Sends `text` to `to` with one `sotto send` process; fails unless it was sent.
    pub(crate) fn send(&self, bin: &Path, to: &str, text: &str) -> anyhow::Result<()> {
        let out = self
            .command(bin)
            .args(["send", to, text])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if !out.status.success() || answer["status"] != "sent" {
            bail!("sotto send: {}", String::from_utf8_lossy(&out.stdout).trim());
        }
        Ok(())
    }

    /// The passphrase key derivation this home was made with, and whether it is the full cost.
    fn kdf(&self) -> anyhow::Result<(String, bool)> {
        let path = self.dir.join("keys.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let file: Value = serde_json::from_str(&text)?;
        let field = |name: &str| file[name].as_u64().unwrap_or(0);
        let (m_kib, t, p) = (field("m_kib"), field("t"), field("p"));
        let full = sotto_core::KdfCost::RECOMMENDED;
        let is_full = m_kib >= u64::from(full.m_kib) && t >= u64::from(full.t);
        let kdf = file["kdf"].as_str().unwrap_or("unknown");
        let what = format!("{kdf} {m_kib} KiB, {t} pass(es), {p} lane(s)");
        Ok((what, is_full))
    }
}

/// A running `sotto daemon`, killed when dropped.
#[derive(Debug)]
struct Daemon {
    child: Child,
}

impl Daemon {
    /// Starts the daemon of `home` and waits until it listens.
    fn start(bin: &Path, home: &Home) -> anyhow::Result<Daemon> {
        let mut child = home
            .command(bin)
            .arg("daemon")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} daemon", bin.display()))?;
        let mut err = BufReader::new(child.stderr.take().context("the daemon's stderr")?);
        // Dropped (killed) on the way out if it never says it listens.
        let daemon = Daemon { child };
        let mut said = String::new();
        loop {
            let mut line = String::new();
            if err.read_line(&mut line)? == 0 {
                bail!("sotto daemon for {} ended: {}", home.address, said.trim());
            }
            said.push_str(&line);
            if line.contains("listening on") {
                break;
            }
        }
        // Keep draining its standard error so it never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = err.read_to_end(&mut sink);
        });
        Ok(daemon)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A JSON-RPC 2.0 connection to a daemon's socket: one JSON object per line each way.
#[derive(Debug)]
struct Rpc {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl Rpc {
    fn connect(home: &Home) -> anyhow::Result<Rpc> {
        let path = home.dir.join("daemon.sock");
        let stream =
            UnixStream::connect(&path).with_context(|| format!("connecting {}", path.display()))?;
        stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        let writer = stream.try_clone()?;
        Ok(Rpc { reader: BufReader::new(stream), writer, next_id: 1 })
    }

    /// Calls `method` and waits for its answer (notifications on the way are skipped).
    fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        writeln!(self.writer, "{request}").context("writing to the daemon")?;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).context("reading from the daemon")? == 0 {
                bail!("the daemon closed the connection");
            }
            let answer: Value = serde_json::from_str(&line)
                .with_context(|| format!("the daemon answered {line:?}"))?;
            if answer["id"] != json!(id) {
                continue;
            }
            if let Some(result) = answer.get("result") {
                return Ok(result.clone());
            }
            bail!("{method} failed: {}", answer["error"]);
        }
    }

    /// Alice's `send` through the daemon; fails unless the message was sent.
    fn send(&mut self, to: &str, text: &str) -> anyhow::Result<()> {
        let sent = self.call("send", json!({"to": to, "text": text}))?;
        if sent["status"] != "sent" {
            bail!("the daemon's send answered {sent}");
        }
        Ok(())
    }

    /// Subscribes, then hands the connection to a thread that reports each `message`
    /// notification whose body starts with [`NOTIFY_PREFIX`], with when it was read. The
    /// thread ends when the daemon closes the socket or the receiver is dropped.
    fn notifications(mut self) -> anyhow::Result<mpsc::Receiver<(String, Instant)>> {
        self.call("subscribe", json!({}))?;
        self.reader.get_ref().set_read_timeout(None)?;
        let (tx, rx) = mpsc::channel();
        let mut reader = self.reader;
        std::thread::spawn(move || {
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let at = Instant::now();
                let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
                if v["method"] != "event" || v["params"]["event"] != "message" {
                    continue;
                }
                let Some(body) = v["params"]["message"]["body"].as_str() else { continue };
                if body.starts_with(NOTIFY_PREFIX) && tx.send((body.to_string(), at)).is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

/// The `q` quantile of `sorted` (nearest rank); 0 when empty.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied().unwrap_or(0.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// CPU use of each process over `watch` while nothing is asked of them, percent of one core.
fn idle_cpu(pids: &[u32], watch: Duration) -> Vec<f64> {
    let meters: Vec<CpuMeter> = pids.iter().map(|&p| CpuMeter::start(p)).collect();
    std::thread::sleep(watch);
    meters.iter().map(CpuMeter::percent).collect()
}

/// Runs the workload once against `server` (blocking: run it off the async runtime).
pub fn run(server: &SottoServer, p: &DaemonParams) -> anyhow::Result<DaemonResult> {
    let bin = p.client_bin.as_path();
    let url = format!("http://{}", server.addr());
    let scratch = Scratch::new("daemon")?;
    let alice = Home::register(bin, &scratch.0, "alice", &url)?;
    let bob = Home::register(bin, &scratch.0, "bob", &url)?;
    let carol = Home::register(bin, &scratch.0, "carol", &url)?;
    let (kdf, kdf_full_cost) = alice.kdf()?;

    // 1. Sends, in interleaved rounds so that both ways see the same machine: carol's
    // processes (no daemon runs for her), then alice's daemon calls. Each way starts after an
    // unmeasured send that makes its chat.
    carol.send(bin, &bob.address, "warm-up (process)")?;
    let alice_daemon = Daemon::start(bin, &alice)?;
    let mut rpc = Rpc::connect(&alice)?;
    rpc.send(&bob.address, "warm-up (daemon)")?;
    let rounds = SEND_ROUNDS.min(p.cli_sends.max(1)).min(p.daemon_sends.max(1));
    let (mut cli, mut daemon) = (Duration::ZERO, Duration::ZERO);
    let (mut cli_done, mut daemon_done) = (0, 0);
    for round in 1..=rounds {
        let start = Instant::now();
        while cli_done < p.cli_sends * round / rounds {
            carol.send(bin, &bob.address, &format!("process {cli_done}"))?;
            cli_done += 1;
        }
        cli += start.elapsed();
        let start = Instant::now();
        while daemon_done < p.daemon_sends * round / rounds {
            rpc.send(&bob.address, &format!("daemon {daemon_done}"))?;
            daemon_done += 1;
        }
        daemon += start.elapsed();
    }
    let daemon_ms = ms(daemon) / p.daemon_sends.max(1) as f64;
    let cli_ms = ms(cli) / p.cli_sends.max(1) as f64;
    eprintln!(
        "{:>16} {} `sotto send` processes: {:.2} s, {:.2} ms each",
        "sotto-daemon",
        p.cli_sends,
        cli.as_secs_f64(),
        cli_ms
    );
    eprintln!(
        "{:>16} {} sends through the daemon: {:.2} s, {:.2} ms each ({:.1}× faster)",
        "sotto-daemon",
        p.daemon_sends,
        daemon.as_secs_f64(),
        daemon_ms,
        cli_ms / daemon_ms
    );

    // 2. Notification latency: bob's daemon catches up, then hears alice's messages live.
    let bob_backlog = p.cli_sends + p.daemon_sends + 2;
    let start = Instant::now();
    let bob_daemon = Daemon::start(bin, &bob)?;
    let arrivals = Rpc::connect(&bob)?.notifications()?;
    // Commands wait for the engine's first catch-up, so this answer means it is done.
    Rpc::connect(&bob)?.call("whoami", json!({}))?;
    let bob_catch_up = start.elapsed();
    // One message through before measuring: bob's live connection is up.
    rpc.send(&bob.address, &format!("{NOTIFY_PREFIX}warm-up"))?;
    arrivals
        .recv_timeout(NOTIFY_TIMEOUT)
        .context("bob's daemon did not report the warm-up message")?;

    let mut calls = Vec::with_capacity(p.notify);
    for i in 0..p.notify {
        let called = Instant::now();
        rpc.send(&bob.address, &format!("{NOTIFY_PREFIX}{i}"))?;
        calls.push((called, Instant::now()));
        std::thread::sleep(p.spacing);
    }
    let mut heard: Vec<Option<Instant>> = vec![None; p.notify];
    let deadline = Instant::now() + NOTIFY_TIMEOUT;
    while heard.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((body, at)) = arrivals.recv_timeout(left) else { break };
        let index = body.strip_prefix(NOTIFY_PREFIX).and_then(|n| n.parse::<usize>().ok());
        if let Some(slot) = index.and_then(|i| heard.get_mut(i)) {
            slot.get_or_insert(at);
        }
    }
    let (mut latencies, mut from_call) = (Vec::new(), Vec::new());
    let mut before_answer = 0;
    for ((called, answered), at) in calls.iter().zip(&heard) {
        if let Some(at) = at {
            before_answer += usize::from(*at < *answered);
            latencies.push(ms(at.saturating_duration_since(*answered)));
            from_call.push(ms(at.saturating_duration_since(*called)));
        }
    }
    let missing = p.notify - latencies.len();
    latencies.sort_by(f64::total_cmp);
    from_call.sort_by(f64::total_cmp);
    let mut call_ms: Vec<f64> = calls.iter().map(|(c, a)| ms(a.duration_since(*c))).collect();
    call_ms.sort_by(f64::total_cmp);

    let idle = idle_cpu(&[alice_daemon.pid(), bob_daemon.pid()], p.idle_watch);
    let result = DaemonResult {
        client_bin: bin.display().to_string(),
        kdf,
        kdf_full_cost,
        daemon_sends: p.daemon_sends,
        daemon_seconds: daemon.as_secs_f64(),
        daemon_ms_per_msg: daemon_ms,
        cli_sends: p.cli_sends,
        cli_seconds: cli.as_secs_f64(),
        cli_ms_per_msg: cli_ms,
        speedup: if daemon_ms > 0.0 { cli_ms / daemon_ms } else { 0.0 },
        bob_catch_up_seconds: bob_catch_up.as_secs_f64(),
        bob_backlog,
        notify_messages: p.notify,
        notify_spacing_ms: ms(p.spacing),
        notify_p50_ms: quantile(&latencies, 0.5),
        notify_p90_ms: quantile(&latencies, 0.9),
        notify_p99_ms: quantile(&latencies, 0.99),
        notify_max_ms: latencies.last().copied().unwrap_or(0.0),
        notify_before_answer: before_answer,
        notify_from_call_p50_ms: quantile(&from_call, 0.5),
        notify_from_call_p99_ms: quantile(&from_call, 0.99),
        notify_missing: missing,
        send_call_p50_ms: quantile(&call_ms, 0.5),
        send_call_p99_ms: quantile(&call_ms, 0.99),
        alice_idle_cpu_percent: idle.first().copied().unwrap_or(0.0),
        bob_idle_cpu_percent: idle.get(1).copied().unwrap_or(0.0),
        alice_peak_rss_kib: peak_rss_kib(alice_daemon.pid()),
    };
    eprintln!(
        "{:>16} notification latency over {} messages: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms \
         ({} missing); bob caught up on {} messages in {:.2} s",
        "sotto-daemon",
        p.notify,
        result.notify_p50_ms,
        result.notify_p99_ms,
        result.notify_max_ms,
        missing,
        bob_backlog,
        result.bob_catch_up_seconds
    );
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 100.0);
        assert_eq!(quantile(&v, 0.99), 198.0);
        assert_eq!(quantile(&v, 1.0), 200.0);
        assert_eq!(quantile(&[7.0], 0.99), 7.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
