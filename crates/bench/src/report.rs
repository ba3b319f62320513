//! The results file and the Markdown report.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::crypto::{CryptoResult, SizeResult};
use crate::daemon::DaemonResult;
use crate::e2ee::E2eeResult;
use crate::idle::IdleResult;
use crate::plot::{Series, line_chart};
use crate::{BacklogResult, RelayResult};

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When (Unix seconds).
    pub at: u64,
    /// The machine.
    pub machine: Machine,
    /// Whether this was the seconds-long smoke mode (figures not meaningful).
    pub smoke: bool,
    /// Relay runs, by system and window.
    pub relay: Vec<RelayResult>,
    /// Server memory with idle connections.
    pub idle: Vec<IdleResult>,
    /// Offline backlogs filled, then drained.
    pub backlog: Vec<BacklogResult>,
    /// Client-side crypto micro-benchmarks.
    pub crypto: Vec<CryptoResult>,
    /// Sizes of MLS messages, per suite.
    pub mls_sizes: Vec<SizeResult>,
    /// Messaging with real MLS on both ends.
    pub e2ee: Vec<E2eeResult>,
    /// Key transparency costs.
    pub kt: Vec<crate::kt::KtResult>,
    /// `sotto daemon` against `sotto send` processes, and its notification latency.
    pub daemon: Vec<DaemonResult>,
    /// Attachments sent and downloaded, beside the cipher's speed.
    pub files: Vec<crate::files::FilesResult>,
    /// The big-group workload.
    pub big_group: Vec<crate::big_group::BigGroupResult>,
    /// Systems requested but not run, and why.
    pub skipped: Vec<(String, String)>,
}

/// What the figures were measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPU model.
    pub cpu: String,
    /// Logical cores.
    pub cores: usize,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Kernel release.
    pub kernel: String,
    /// This process's open-file limit (caps the idle-connection count).
    pub open_files_limit: String,
}

impl Machine {
    /// Reads this machine's description.
    pub fn here() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_else(|| "unknown".into());
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .unwrap_or(0)
            / 1024;
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| k.trim().to_string())
            .unwrap_or_default();
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let open_files_limit = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| {
                l.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .map(|l| l.split_whitespace().skip(3).take(2).collect::<Vec<_>>().join(" / "))
            })
            .unwrap_or_default();
        Machine { cpu, cores, memory_mib, kernel, open_files_limit }
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 { format!("{:.2}×", a / b) } else { "–".into() }
}

/// Writes `results.json`, `report.md` and its charts into `dir`.
pub fn write(report: &Report, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(report)?)?;
    std::fs::write(dir.join("report.md"), markdown(report))?;
    let by_system = |value: fn(&RelayResult) -> f64| -> Vec<Series> {
        let mut systems: Vec<&str> = Vec::new();
        for r in &report.relay {
            if !systems.contains(&r.system.as_str()) {
                systems.push(&r.system);
            }
        }
        systems
            .iter()
            .map(|s| Series {
                label: (*s).to_string(),
                points: report
                    .relay
                    .iter()
                    .filter(|r| r.system == *s)
                    .map(|r| (r.window.to_string(), value(r)))
                    .collect(),
            })
            .collect()
    };
    if !report.relay.is_empty() {
        let throughput = line_chart(
            "Relay throughput",
            "window (submissions in flight per device)",
            "delivered msgs/s",
            &by_system(|r| r.msgs_per_sec),
        );
        std::fs::write(dir.join("throughput.svg"), throughput)?;
        let latency = line_chart(
            "Relay latency, 99th percentile",
            "window (submissions in flight per device)",
            "p99 ms",
            &by_system(|r| r.p99_us as f64 / 1000.0),
        );
        std::fs::write(dir.join("latency-p99.svg"), latency)?;
    }
    if !report.idle.is_empty() {
        let idle = vec![Series {
            label: "sotto".into(),
            points: report
                .idle
                .iter()
                .map(|x| (x.connections.to_string(), x.bytes_per_connection))
                .collect(),
        }];
        std::fs::write(
            dir.join("idle-memory.svg"),
            line_chart(
                "Server memory per idle connection",
                "idle connections",
                "bytes each",
                &idle,
            ),
        )?;
    }
    Ok(())
}

/// The report as Markdown.
pub fn markdown(r: &Report) -> String {
    let mut md = String::new();
    let m = &r.machine;
    let _ = writeln!(md, "# Sotto relay benchmark\n");
    if r.smoke {
        let _ = writeln!(md, "**Smoke run: seconds long, figures not meaningful.**\n");
    }
    let _ = writeln!(
        md,
        "Machine: {} ({} cores, {} MiB, Linux {}). Load generator and servers share it.\n",
        m.cpu, m.cores, m.memory_mib, m.kernel
    );
    if !r.relay.is_empty() {
        let _ = writeln!(
            md,
            "Workload: each device sends 1 KiB payloads to the next device with `window` submissions \
             in flight, each waiting for the server's acknowledgement; receivers acknowledge every \
             message (Sotto: each page of messages its live connection carries). Latency is end \
             to end, from submission to the receiver. Server CPU µs/msg is the server process's \
             CPU time (from /proc) per message relayed.\n"
        );
        let _ = writeln!(
            md,
            "| system | devices | window | msgs/s | vs jetstream-fsync | p50 µs | p90 µs | p99 µs | p99.9 µs | server CPU % | server CPU µs/msg | server peak RSS MiB | errors |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for x in &r.relay {
            let reference = r
                .relay
                .iter()
                .find(|y| {
                    y.system == "jetstream-fsync" && y.window == x.window && y.devices == x.devices
                })
                .map(|y| y.msgs_per_sec)
                .unwrap_or(0.0);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.1} | {} |",
                x.system,
                x.devices,
                x.window,
                x.msgs_per_sec,
                ratio(x.msgs_per_sec, reference),
                x.p50_us,
                x.p90_us,
                x.p99_us,
                x.p999_us,
                x.server_cpu_percent,
                cpu_per_message(x.server_cpu_percent, x.msgs_per_sec),
                x.server_peak_rss_kib as f64 / 1024.0,
                x.errors
            );
        }
    }
    let mut peers: Vec<&str> = Vec::new();
    for x in r.relay.iter().filter(|x| x.system != "sotto") {
        if !peers.contains(&x.system.as_str()) {
            peers.push(&x.system);
        }
    }
    let sotto: Vec<&RelayResult> = r.relay.iter().filter(|x| x.system == "sotto").collect();
    if !sotto.is_empty() && !peers.is_empty() {
        let _ = writeln!(md, "\nSotto's throughput as a multiple of each peer's, same window:\n");
        let _ = writeln!(md, "| window | {} |", peers.join(" | "));
        let _ = writeln!(md, "|---:|{}", "---:|".repeat(peers.len()));
        for s in &sotto {
            let cells: Vec<String> = peers
                .iter()
                .map(|p| {
                    r.relay
                        .iter()
                        .find(|x| x.system == *p && x.window == s.window && x.devices == s.devices)
                        .map(|x| ratio(s.msgs_per_sec, x.msgs_per_sec))
                        .unwrap_or_else(|| "–".into())
                })
                .collect();
            let _ = writeln!(md, "| {} | {} |", s.window, cells.join(" | "));
        }
    }
    if !r.relay.is_empty() {
        let _ = writeln!(
            md,
            "\n![Relay throughput](throughput.svg)\n\n![Relay p99 latency](latency-p99.svg)"
        );
    }
    if !r.backlog.is_empty() {
        let _ = writeln!(
            md,
            "\nBacklog: queues of offline devices filled (16 submissions in flight per device), \
             then drained in pages of 500 with one acknowledgement per page:\n"
        );
        let _ = writeln!(md, "| system | devices | messages each | fill msgs/s | drain msgs/s |");
        let _ = writeln!(md, "|---|---:|---:|---:|---:|");
        for x in &r.backlog {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.0} | {:.0} |",
                x.system, x.devices, x.per_device, x.fill_msgs_per_sec, x.drain_msgs_per_sec
            );
        }
    }
    if !r.idle.is_empty() {
        let _ = writeln!(
            md,
            "\nIdle authenticated WebSocket connections (open-file limit here: {} soft / hard):\n",
            r.machine.open_files_limit
        );
        let _ = writeln!(md, "| system | connections | server RSS MiB | bytes per connection |");
        let _ = writeln!(md, "|---|---:|---:|---:|");
        for x in &r.idle {
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} | {:.0} |",
                x.system,
                x.connections,
                x.server_rss_kib as f64 / 1024.0,
                x.bytes_per_connection
            );
        }
        let _ = writeln!(md, "\n![Server memory per idle connection](idle-memory.svg)");
    }
    if !r.e2ee.is_empty() {
        let _ = writeln!(
            md,
            "\nEnd to end encrypted: two members of a group encrypt 1 KiB messages with MLS \
             (window 1 each) and every member decrypts what reaches it, through the real server; \
             all clients run in the load generator:\n"
        );
        let _ = writeln!(
            md,
            "| group size | sent msgs/s | decrypted deliveries/s | p50 µs | p99 µs | server CPU % |"
        );
        let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|");
        for x in &r.e2ee {
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.0} | {} | {} | {:.0} |",
                x.group_size,
                x.sent_per_sec,
                x.decrypted_per_sec,
                x.p50_us,
                x.p99_us,
                x.server_cpu_percent
            );
        }
    }
    if !r.crypto.is_empty() {
        crypto_markdown(&mut md, r);
    }
    if !r.kt.is_empty() {
        let _ = writeln!(
            md,
            "\nKey transparency (akd 0.13): Sotto's SQLite storage beside AKD's in-memory \
             reference, one publisher, proofs as sent (JSON):\n"
        );
        let _ = writeln!(
            md,
            "| storage | accounts | publish all | +100 accounts | lookup proof | verify | \
             lookup proof size | history proof (2 versions) | audit proof (1 epoch) |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for x in &r.kt {
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} ms | {:.0} ms | {:.0} µs | {:.0} µs | {:.1} KB | {:.1} KB | \
                 {:.1} KB in {:.0} ms |",
                x.storage,
                x.accounts,
                x.publish_all_ms,
                x.publish_100_ms,
                x.lookup_prove_us,
                x.lookup_verify_us,
                x.lookup_proof_bytes as f64 / 1e3,
                x.history_proof_bytes as f64 / 1e3,
                x.audit_proof_bytes as f64 / 1e3,
                x.audit_prove_ms
            );
        }
    }
    for x in &r.daemon {
        daemon_markdown(&mut md, x);
    }
    if !r.files.is_empty() {
        let _ = writeln!(
            md,
            "\nAttachments: alice sends bob a file with `sotto send-file` (read, hashed, \
             sealed in 64 KiB ChaCha20-Poly1305 chunks, streamed to the server, which makes \
             it durable) and bob fetches it with `sotto download` (authenticated, hashed, \
             written and made durable), each timed from process start to exit; beside them, \
             one core sealing and opening 64 KiB chunks, and the disk writing a file as \
             large and syncing it, in the same run:\n"
        );
        let _ = writeln!(
            md,
            "| file MiB | upload MiB/s | of sealing | download MiB/s | of opening | seal MiB/s (1 core) | open MiB/s | disk write MiB/s | client peak RSS MiB up / down | server peak RSS MiB |"
        );
        let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for x in &r.files {
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.0} % | {:.0} | {:.0} % | {:.0} | {:.0} | {:.0} | {:.1} / {:.1} | {:.1} |",
                x.size_mib,
                x.upload_mib_per_sec,
                100.0 * x.upload_mib_per_sec / x.seal_mib_per_sec,
                x.download_mib_per_sec,
                100.0 * x.download_mib_per_sec / x.open_mib_per_sec,
                x.seal_mib_per_sec,
                x.open_mib_per_sec,
                x.disk_write_mib_per_sec,
                x.upload_client_peak_rss_kib as f64 / 1024.0,
                x.download_client_peak_rss_kib as f64 / 1024.0,
                x.server_peak_rss_kib as f64 / 1024.0,
            );
        }
    }
    for x in &r.big_group {
        big_group_markdown(&mut md, x);
    }
    if !r.skipped.is_empty() {
        let _ = writeln!(md, "\nNot run:");
        for (system, why) in &r.skipped {
            let _ = writeln!(md, "- {system}: {why}");
        }
    }
    md
}

/// The daemon workload's section.
fn daemon_markdown(md: &mut String, x: &DaemonResult) {
    let cost = if x.kdf_full_cost {
        "the full cost a real user pays at every process start"
    } else {
        "the cheap test-only cost a debug build allows: a release build pays the full cost \
         at every process start"
    };
    let _ = writeln!(
        md,
        "\n`sotto daemon`: alice sends to bob through her daemon (sequential JSON-RPC `send` \
         calls on its Unix socket, each waiting for its answer) and carol with one \
         `sotto --json send` process per message (sequential, no daemon running for her), the \
         two ways alternating in ten rounds, against one real server; bob is offline meanwhile. \
         The homes' passphrase key derivation is {} ({cost}); client `{}`.\n",
        x.kdf, x.client_bin
    );
    let _ = writeln!(md, "| way | messages | total s | ms per message |");
    let _ = writeln!(md, "|---|---:|---:|---:|");
    let _ = writeln!(
        md,
        "| `sotto send` processes | {} | {:.2} | {:.2} |",
        x.cli_sends, x.cli_seconds, x.cli_ms_per_msg
    );
    let _ = writeln!(
        md,
        "| through the daemon | {} | {:.2} | {:.2} |",
        x.daemon_sends, x.daemon_seconds, x.daemon_ms_per_msg
    );
    let fewer = if x.cli_sends < x.daemon_sends {
        " (fewer processes than daemon sends: compare per message)".to_string()
    } else {
        String::new()
    };
    let _ = writeln!(
        md,
        "\nThrough the daemon a send is {} faster per message{fewer}.",
        ratio(x.cli_ms_per_msg, x.daemon_ms_per_msg)
    );
    let _ = writeln!(
        md,
        "\nNotification latency: bob's daemon started with {} messages queued (catching up and \
         answering its first call took {:.2} s), subscribed to events; alice sent {} messages \
         through her daemon, {:.0} ms apart. Delay from alice's `send` call returning (the \
         server has stored the message) to bob's subscriber reading its `message` \
         notification:\n",
        x.bob_backlog, x.bob_catch_up_seconds, x.notify_messages, x.notify_spacing_ms
    );
    let _ = writeln!(
        md,
        "| p50 ms | p90 ms | p99 ms | max ms | heard before the answer (0 ms) | missing | \
         from the call p50 / p99 ms | alice's send call p50 / p99 ms |"
    );
    let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        md,
        "| {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {:.2} / {:.2} | {:.2} / {:.2} |",
        x.notify_p50_ms,
        x.notify_p90_ms,
        x.notify_p99_ms,
        x.notify_max_ms,
        x.notify_before_answer,
        x.notify_missing,
        x.notify_from_call_p50_ms,
        x.notify_from_call_p99_ms,
        x.send_call_p50_ms,
        x.send_call_p99_ms
    );
    let _ = writeln!(
        md,
        "\nIdle afterwards, the daemons used {:.1} % (alice) and {:.1} % (bob) of a core; \
         alice's peaked at {:.1} MiB resident.",
        x.alice_idle_cpu_percent,
        x.bob_idle_cpu_percent,
        x.alice_peak_rss_kib as f64 / 1024.0
    );
}

fn duration(us: f64) -> String {
    if us >= 1000.0 { format!("{:.1} ms", us / 1000.0) } else { format!("{us:.1} µs") }
}

fn crypto_markdown(md: &mut String, r: &Report) {
    let _ = writeln!(
        md,
        "\nClient crypto, one core, beside the Ed25519 ceiling measured in the same run:\n"
    );
    let _ = writeln!(md, "| operation | per second | mean | throughput |");
    let _ = writeln!(md, "|---|---:|---:|---:|");
    for x in r.crypto.iter().filter(|x| x.suite.is_none()) {
        let throughput =
            x.bytes_per_sec.map(|b| format!("{:.0} MB/s", b / 1e6)).unwrap_or_default();
        let _ = writeln!(
            md,
            "| {} | {:.0} | {} | {throughput} |",
            x.name,
            x.ops_per_sec,
            duration(x.mean_us)
        );
    }
    let find = |n: &str, suite: &str| {
        r.crypto.iter().find(|x| x.name == n && x.suite.as_deref().unwrap_or("") == suite)
    };
    let _ = writeln!(
        md,
        "\nMLS through Sotto's seam (openmls; RustCrypto, and libcrux for X-Wing's key \
         encapsulation), mean time per operation: \
         MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519 (x25519) beside \
         MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519 (x-wing, post-quantum hybrid):\n"
    );
    let _ = writeln!(md, "| operation | x25519 | x-wing | x-wing / x25519 |");
    let _ = writeln!(md, "|---|---:|---:|---:|");
    for x in r.crypto.iter().filter(|x| x.suite.as_deref() == Some("x25519")) {
        let pq = find(&x.name, "x-wing");
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            x.name,
            duration(x.mean_us),
            pq.map(|p| duration(p.mean_us)).unwrap_or_default(),
            pq.map(|p| format!("{:.2}×", p.mean_us / x.mean_us.max(1e-9))).unwrap_or_default()
        );
    }
    if !r.mls_sizes.is_empty() {
        let _ = writeln!(md, "\nSizes on the wire, bytes:\n");
        let _ = writeln!(md, "| message | x25519 | x-wing | x-wing / x25519 |");
        let _ = writeln!(md, "|---|---:|---:|---:|");
        for x in r.mls_sizes.iter().filter(|x| x.suite == "x25519") {
            let pq = r.mls_sizes.iter().find(|p| p.name == x.name && p.suite == "x-wing");
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                x.name,
                x.bytes,
                pq.map(|p| p.bytes.to_string()).unwrap_or_default(),
                pq.map(|p| format!("{:.1}×", p.bytes as f64 / x.bytes.max(1) as f64))
                    .unwrap_or_default()
            );
        }
    }
    let ops = |n: &str, suite: &str| find(n, suite).map(|x| x.ops_per_sec);
    if let (Some(enc), Some(sign), Some(dec), Some(verify)) = (
        ops("mls encrypt 100 B", "x25519"),
        ops("ed25519 sign", ""),
        ops("mls decrypt 100 B", "x25519"),
        ops("ed25519 verify", ""),
    ) {
        let _ = writeln!(
            md,
            "\nSmall messages reach {:.0} % of the signing ceiling (encrypt) and {:.0} % of the \
             verification ceiling (decrypt).",
            100.0 * enc / sign,
            100.0 * dec / verify
        );
    }
}

/// Server CPU microseconds per message, from its CPU share and the message rate.
fn cpu_per_message(cpu_percent: f64, msgs_per_sec: f64) -> f64 {
    if msgs_per_sec > 0.0 { cpu_percent * 10_000.0 / msgs_per_sec } else { 0.0 }
}

fn big_group_markdown(md: &mut String, x: &crate::big_group::BigGroupResult) {
    let _ = writeln!(
        md,
        "\nA group of {} end to end: alice, bob, carol and dave are `sotto` processes, the \
         other members devices registered through the API with one key package each (they \
         never read, so their queues keep every copy). Each step is one process, start to \
         exit; a process that only opens its home takes {:.2} s.\n",
        x.members, x.baseline_seconds
    );
    let _ = writeln!(md, "| step | seconds |");
    let _ = writeln!(md, "|---|---:|");
    let rows = [
        ("alice creates the group with everyone", x.create_seconds),
        ("bob joins (`sync`)", x.join_seconds),
        ("alice sends a text", x.send_seconds),
        ("bob reads it (`sync`)", x.read_seconds),
        ("alice adds dave", x.add_seconds),
        ("dave joins (`sync`)", x.add_join_seconds),
        ("bob follows the add (`sync`)", x.add_follow_seconds),
        ("alice removes carol", x.remove_seconds),
        ("bob follows the removal and reads the next text (`sync`)", x.remove_follow_seconds),
    ];
    for (what, seconds) in rows {
        let _ = writeln!(md, "| {what} | {seconds:.2} |");
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let _ = writeln!(
        md,
        "\nStored on the server after the creation: {:.1} MiB of files (messages kept once, by \
         reference) and {:.1} MiB in all queues together; at the end {:.1} MiB and {:.1} MiB. \
         Peak memory: the creating client {:.0} MiB, the server {:.0} MiB.",
        mib(x.create_file_bytes),
        mib(x.create_queued_bytes),
        mib(x.file_bytes),
        mib(x.queued_bytes),
        x.create_peak_rss_kib as f64 / 1024.0,
        x.server_peak_rss_kib as f64 / 1024.0,
    );
}
