//! A large group end to end: real `sotto` processes (alice, bob, carol, dave) and a real
//! `sotto-server`; the other members are devices registered through the API, each with one
//! classical key package on file, which never read (their queues keep what they are sent).
//! alice creates the group with everyone, bob joins and reads a message, alice adds dave and
//! removes carol, and bob and dave follow. Each step is one CLI process, timed from start to
//! exit; beside them, what the server stored.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::StreamExt as _;
use openmls_memory_storage::MemoryStorage;
use serde::Serialize;
use serde_json::Value;
use sotto_core::DeviceRef;
use sotto_core::mls::{self, Identity, Provider, Suite};
use sotto_proto as proto;

use crate::Scratch;
use crate::daemon::Home;
use crate::files::timed;
use crate::proc_stats::peak_rss_kib;
use crate::sotto::{self, SottoServer};

/// One run's figures. Times are seconds of one CLI process, start to exit.
#[derive(Debug, Clone, Serialize)]
pub struct BigGroupResult {
    /// Members, the creator included.
    pub members: usize,
    /// Registering the API members and their key packages (set-up, not a figure of merit).
    pub setup_seconds: f64,
    /// A CLI process that does nothing but open the home and list its chats (`sotto chats`),
    /// for scale: each step below pays this too.
    pub baseline_seconds: f64,
    /// `sotto group create` with every member: claiming and checking each account's keys,
    /// the MLS commit, the welcome uploaded as a file, the submission.
    pub create_seconds: f64,
    /// The creating process's peak resident memory, KiB.
    pub create_peak_rss_kib: u64,
    /// Bytes of the files (messages kept by reference) the creation left on the server.
    pub create_file_bytes: u64,
    /// Bytes queued, all queues together, after the creation.
    pub create_queued_bytes: u64,
    /// bob's `sotto sync` that joins (the welcome fetched and processed).
    pub join_seconds: f64,
    /// alice's `sotto send --group` of a short text.
    pub send_seconds: f64,
    /// bob's `sotto sync` that reads it.
    pub read_seconds: f64,
    /// alice's `sotto group add` of dave.
    pub add_seconds: f64,
    /// dave's `sotto sync` that joins.
    pub add_join_seconds: f64,
    /// bob's `sotto sync` that processes the add.
    pub add_follow_seconds: f64,
    /// alice's `sotto group remove` of carol.
    pub remove_seconds: f64,
    /// bob's `sotto sync` that processes the removal and reads a message sent after it.
    pub remove_follow_seconds: f64,
    /// Bytes of every file on the server at the end.
    pub file_bytes: u64,
    /// Bytes queued, all queues together, at the end.
    pub queued_bytes: u64,
    /// The server's peak resident memory, KiB.
    pub server_peak_rss_kib: u64,
}

/// Registers `count` API members concurrently; their addresses.
async fn register_members(server: &SottoServer, count: usize) -> anyhow::Result<Vec<String>> {
    let http = sotto::http_client();
    let addr = server.addr();
    let one = |n: usize| {
        let http = http.clone();
        async move {
            let d = sotto::register(&http, addr, n).await?;
            let kp = tokio::task::spawn_blocking(move || {
                let provider = Provider::new(MemoryStorage::default());
                d.key.store(&provider)?;
                let me = Identity {
                    device: DeviceRef { address: d.address.clone(), device_id: d.id },
                    key: d.key,
                };
                // Classical only, as a device that offers nothing else: a group this large
                // is classical whatever its members offer.
                let kp = mls::key_packages_offering(
                    &provider,
                    &me,
                    Suite::Classical,
                    &[Suite::Classical],
                    1,
                    false,
                )?
                .remove(0);
                anyhow::Ok((me.device.address.to_string(), d.token, kp))
            })
            .await??;
            let (address, token, kp) = kp;
            let _: proto::KeyPackageCount = sotto::post(
                &http,
                addr,
                "/v1/keypackages",
                Some(&token),
                &proto::UploadKeyPackages {
                    key_packages: vec![proto::Bytes(kp)],
                    last_resort: None,
                    replace: false,
                },
            )
            .await?;
            anyhow::Ok(address)
        }
    };
    futures_util::stream::iter(0..count)
        .map(one)
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Bytes queued in all queues, and bytes of all files, in the server's data directory.
fn stored(data: &Path) -> anyhow::Result<(u64, u64)> {
    let db = rusqlite::Connection::open_with_flags(
        data.join("sotto.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let queued: i64 =
        db.query_row("SELECT coalesce(sum(length(message)), 0) FROM queue", [], |r| r.get(0))?;
    let mut files = 0;
    if let Ok(dir) = std::fs::read_dir(data.join("blobs")) {
        for entry in dir {
            files += entry?.metadata()?.len();
        }
    }
    Ok((queued as u64, files))
}

/// Runs one CLI step in `home`; its wall time and peak memory, and its JSON answer.
fn step(bin: &Path, home: &Home, args: &[&str]) -> anyhow::Result<(Duration, u64, Value)> {
    let mut c: Command = home.command(bin);
    c.args(args);
    let (took, peak, out) =
        timed(c).with_context(|| format!("{} {}", home.address, args.join(" ")))?;
    let what = args.iter().take(2).copied().collect::<Vec<_>>().join(" ");
    eprintln!("  big group: {} `sotto {what}`: {:.2} s", home.address, took.as_secs_f64());
    Ok((took, peak, serde_json::from_slice(&out).unwrap_or(Value::Null)))
}

/// The texts of a sync's new text messages.
fn texts(v: &Value) -> Vec<String> {
    let text = |m: &Value| (m["kind"] == "text").then(|| m["body"].as_str().map(str::to_string));
    v["messages"]
        .as_array()
        .map(|m| m.iter().filter_map(|m| text(m).flatten()).collect())
        .unwrap_or_default()
}

/// Runs the workload with a group of `members` (at least 5).
pub async fn run(
    server: &SottoServer,
    bin: &Path,
    members: usize,
) -> anyhow::Result<BigGroupResult> {
    let members = members.max(5);
    let scratch = Scratch::new("big-group")?;
    let url = format!("http://{}", server.addr());
    let started = std::time::Instant::now();
    let api_members = register_members(server, members - 4).await?;
    let setup_seconds = started.elapsed().as_secs_f64();
    let data = server.data_dir().to_path_buf();
    let (bin, pid) = (bin.to_path_buf(), server.pid());
    tokio::task::spawn_blocking(move || {
        let bin = bin.as_path();
        let [alice, bob, carol, dave] = ["alice", "bob", "carol", "dave"]
            .map(|name| Home::register(bin, &scratch.0, name, &url));
        let (alice, bob, carol, dave) = (alice?, bob?, carol?, dave?);
        let mut args = vec!["group".to_string(), "create".into(), "big".into()];
        // Addresses in several arguments: one argument is limited to 128 KiB.
        let everyone: Vec<String> =
            [bob.address.clone(), carol.address.clone()].into_iter().chain(api_members).collect();
        for chunk in everyone.chunks(1000) {
            args.push("--members".into());
            args.push(chunk.join(","));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (baseline, _, _) = step(bin, &alice, &["chats"])?;
        let (create, create_peak, _) = step(bin, &alice, &args)?;
        let (create_queued, create_files) = stored(&data)?;
        let (join, _, _) = step(bin, &bob, &["sync"])?;
        let (send, _, _) = step(bin, &alice, &["send", "--group", "big", "hello, everyone"])?;
        let (read, _, v) = step(bin, &bob, &["sync"])?;
        if texts(&v) != ["hello, everyone"] {
            bail!("bob read {v}");
        }
        let (add, _, _) = step(bin, &alice, &["group", "add", "big", &dave.address])?;
        let (add_join, _, v) = step(bin, &dave, &["sync"])?;
        if v["failures"].as_array().is_some_and(|f| !f.is_empty()) {
            bail!("dave's sync: {v}");
        }
        let (add_follow, _, _) = step(bin, &bob, &["sync"])?;
        let (remove, _, _) = step(bin, &alice, &["group", "remove", "big", &carol.address])?;
        step(bin, &alice, &["send", "--group", "big", "without carol"])?;
        let (remove_follow, _, v) = step(bin, &bob, &["sync"])?;
        if texts(&v) != ["without carol"] {
            bail!("bob read {v}");
        }
        let (_, _, v) = step(bin, &carol, &["sync"])?;
        if texts(&v).iter().any(|t| t == "without carol") {
            bail!("carol, removed, read what was sent after: {v}");
        }
        let (queued, files) = stored(&data)?;
        let s = |d: Duration| d.as_secs_f64();
        Ok(BigGroupResult {
            members,
            setup_seconds,
            baseline_seconds: s(baseline),
            create_seconds: s(create),
            create_peak_rss_kib: create_peak,
            create_file_bytes: create_files,
            create_queued_bytes: create_queued,
            join_seconds: s(join),
            send_seconds: s(send),
            read_seconds: s(read),
            add_seconds: s(add),
            add_join_seconds: s(add_join),
            add_follow_seconds: s(add_follow),
            remove_seconds: s(remove),
            remove_follow_seconds: s(remove_follow),
            file_bytes: files,
            queued_bytes: queued,
            server_peak_rss_kib: peak_rss_kib(pid),
        })
    })
    .await?
}
