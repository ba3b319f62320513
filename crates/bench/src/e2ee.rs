//! The full end-to-end-encrypted workload: real MLS on both ends, through the real server.
//! In a group of `size`, [`SENDERS`] members send 1 KiB application messages (window 1 each) to
//! all the others, and every member decrypts what it receives, so the client-side cost of
//! fan-out shows.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

use openmls_memory_storage::MemoryStorage;
use serde::Serialize;
use sotto_core::DeviceRef;
use sotto_core::mls::{self, Identity, Incoming, Provider};
use sotto_proto as proto;
use sotto_proto::live::Version;

use crate::Recorder;
use crate::proc_stats::CpuMeter;
use crate::sotto::{self, SottoServer};

/// One group size's figures.
#[derive(Debug, Clone, Serialize)]
pub struct E2eeResult {
    /// Members (all send, all receive).
    pub group_size: usize,
    /// Messages encrypted and accepted by the server per second.
    pub sent_per_sec: f64,
    /// Deliveries decrypted per second, summed over members.
    pub decrypted_per_sec: f64,
    /// End-to-end latency, encryption to decryption, microseconds.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Server CPU, percent of one core.
    pub server_cpu_percent: f64,
}

/// Members that send; the rest only read, as in most conversations.
pub const SENDERS: usize = 2;

struct Member {
    provider: Provider<MemoryStorage>,
    identity: Identity,
    /// What it sent and has not seen come back: the server sends a group's messages to every
    /// member, the sender too, and those copies are skipped as a real client skips them.
    sent: HashSet<Vec<u8>>,
    /// Its queue key: the server seals what it queues for the device.
    queue: Arc<sotto_core::queue::QueueKey>,
}

/// Runs the workload for a group of `size`.
pub async fn e2ee(
    server: &SottoServer,
    size: usize,
    warmup: Duration,
    measure: Duration,
) -> anyhow::Result<E2eeResult> {
    let http = sotto::http_client();
    let addr = server.addr();
    let mut members = Vec::new();
    let mut tokens = Vec::new();
    for n in 0..size {
        let d = sotto::register(&http, addr, n).await.context("registering a device")?;
        let provider = Provider::new(MemoryStorage::default());
        d.key.store(&provider)?;
        let identity =
            Identity { device: DeviceRef { address: d.address, device_id: d.id }, key: d.key };
        members.push(Member { provider, identity, sent: HashSet::new(), queue: d.queue });
        tokens.push(d.token);
    }
    // Set the group up locally; the measured part is steady-state messaging through the server.
    let gid = mls::create_group(&members[0].provider, &members[0].identity, mls::Suite::Classical)?;
    let packages = members[1..]
        .iter()
        .map(|m| {
            let kp = mls::key_packages(&m.provider, &m.identity, mls::Suite::Classical, 1, false)?
                .remove(0);
            Ok(mls::validate_key_package(
                &members[0].provider,
                &kp,
                &m.identity.device.address,
                None,
            )?)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let first = mls::group_credential(&members[0].provider, &gid)?;
    let out = mls::add_members(&members[0].provider, &gid, &members[0].identity, &packages)?;
    let next = mls::next_group_credential(&members[0].provider, &gid)?
        .context("a commit without a pending commit")?;
    mls::merge_pending_commit(&members[0].provider, &gid)?;
    let welcome = out.welcome.unwrap_or_default();
    for m in &members[1..] {
        mls::process(&m.provider, &welcome)?;
    }
    let epoch = mls::epoch(&members[0].provider, &gid)?;
    let ids: Vec<u64> = members.iter().map(|m| m.identity.device.device_id).collect();
    // The server learns the group's roster from its first commit, as with real clients.
    let roster: Vec<(u64, &str)> =
        ids.iter().copied().zip(tokens.iter().map(String::as_str)).collect();
    let credentials =
        sotto::Credentials { first: first.as_bytes().to_vec(), next: next.as_bytes().to_vec() };
    sotto::enrol(&http, addr, &gid, &roster, (out.commit, welcome), &credentials).await?;
    let members: Vec<Arc<Mutex<Member>>> =
        members.into_iter().map(|m| Arc::new(Mutex::new(m))).collect();

    let recorder = Arc::new(Recorder::new(warmup, measure));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, member) in members.iter().enumerate() {
        let ws = sotto::Live::open(addr, &tokens[i], Version::V2).await?;
        tasks.push(tokio::spawn(receive(ws, member.clone(), recorder.clone(), stop.clone())));
        if i >= SENDERS {
            continue;
        }
        tasks.push(tokio::spawn(send(
            http.clone(),
            addr,
            Sending {
                member: member.clone(),
                group: gid.clone(),
                epoch,
                credential: credentials.next.clone(),
            },
            recorder.clone(),
            stop.clone(),
            sent.clone(),
        )));
    }
    recorder.wait_until_measuring().await;
    let cpu = CpuMeter::start(server.pid());
    let sent_before = sent.load(Ordering::Relaxed);
    recorder.wait_until_done().await;
    let sent_during = sent.load(Ordering::Relaxed) - sent_before;
    let cpu = cpu.percent();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    let r = recorder.result(
        "sotto-e2ee",
        &crate::RelayParams { devices: size, window: 1, warmup, measure },
        cpu,
        0,
    );
    Ok(E2eeResult {
        group_size: size,
        sent_per_sec: sent_during as f64 / measure.as_secs_f64(),
        decrypted_per_sec: r.msgs_per_sec,
        p50_us: r.p50_us,
        p99_us: r.p99_us,
        server_cpu_percent: cpu,
    })
}

/// The sending member's device id (submission ids must not repeat across senders).
fn sender_id(s: &Sending) -> u64 {
    s.member.lock().unwrap_or_else(|p| p.into_inner()).identity.device.device_id
}

struct Sending {
    member: Arc<Mutex<Member>>,
    group: Vec<u8>,
    epoch: u64,
    credential: Vec<u8>,
}

async fn send(
    http: sotto::Http,
    addr: SocketAddr,
    s: Sending,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let plaintext = recorder.payload();
        let ciphertext = tokio::task::block_in_place(|| {
            let mut m = s.member.lock().unwrap_or_else(|p| p.into_inner());
            let c = mls::encrypt(&m.provider, &s.group, &m.identity, &plaintext)?;
            m.sent.insert(c.clone());
            anyhow::Ok(c)
        })?;
        n += 1;
        let request = proto::SubmitRequest {
            submission_id: Some(proto::Bytes(
                [s.epoch, n, sender_id(&s)].map(u64::to_le_bytes).concat(),
            )),
            group_id: proto::Bytes(s.group.clone()),
            kind: proto::SubmitKind::Application,
            epoch: s.epoch,
            delivery: proto::Delivery { recipients: Vec::new(), message: proto::Bytes(ciphertext) },
            welcome: None,
            removed: Vec::new(),
            expires_at: None,
            credential: Some(proto::Bytes(s.credential.clone())),
            next_credential: None,
            roster: None,
        };
        let accepted: anyhow::Result<proto::SubmitResponse> =
            sotto::post(&http, addr, "/v1/messages", None, &request).await;
        match accepted {
            Ok(_) => {
                sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => recorder.error(),
        }
    }
    Ok(())
}

async fn receive(
    mut live: sotto::Live,
    member: Arc<Mutex<Member>>,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    while !stop.load(Ordering::Relaxed) {
        let page = match live.next(Duration::from_millis(200)).await? {
            sotto::Next::Page(page) => page,
            sotto::Next::Nothing => continue,
            sotto::Next::Closed => break,
        };
        for m in &page {
            let incoming = tokio::task::block_in_place(|| {
                let mut member = member.lock().unwrap_or_else(|p| p.into_inner());
                let me = member.identity.device.device_id;
                let copy = sotto::opened(&member.queue, me, &m.message.0)?;
                if member.sent.remove(&copy) {
                    return Ok(None);
                }
                anyhow::Ok(Some(mls::process(&member.provider, &copy)?))
            })?;
            if let Some(Incoming::Application { plaintext, .. }) = incoming {
                recorder.delivered(&plaintext);
            }
        }
        if let Some(last) = page.last() {
            live.ack(last.seq).await?;
        }
    }
    Ok(())
}
