//! The relay workload against a real `sotto-server`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sotto_core::auth;
use sotto_core::mls::DeviceKey;
use sotto_proto as proto;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::proc_stats::peak_rss_kib;
use crate::{Recorder, RelayParams, RelayResult, Scratch};

/// A running `sotto-server`, killed when dropped.
#[derive(Debug)]
pub struct SottoServer {
    child: Child,
    addr: SocketAddr,
    _data: Scratch,
}

impl SottoServer {
    /// Starts `bin` on a free loopback port with limits lifted for load.
    pub fn start(bin: &Path) -> anyhow::Result<SottoServer> {
        let data = Scratch::new("sotto")?;
        let mut child = Command::new(bin)
            .arg("--data")
            .arg(&data.0)
            .args(["--listen", "127.0.0.1:0", "--registration", "open"])
            .args(["--device-rate", "1000000", "--registration-rate", "1000000"])
            .args(["--queue-max-messages", "100000000", "--queue-max-bytes", "1000G"])
            .args(["--max-connections", "200000", "--submit-rate", "1000G"])
            .args(["--max-connections-per-ip", "200000"])
            .env("SOTTO_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("server stdout")?).read_line(&mut line)?;
        let url = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http://"))
            .with_context(|| format!("no address in the server's banner {line:?}"))?;
        Ok(SottoServer { addr: url.parse()?, child, _data: data })
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for SottoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) type Http = Client<HttpConnector, Full<Bytes>>;

pub(crate) fn http_client() -> Http {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(usize::MAX).build(connector)
}

pub(crate) async fn post<B: serde::Serialize, R: serde::de::DeserializeOwned>(
    http: &Http,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: &B,
) -> anyhow::Result<R> {
    let mut req = hyper::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(Full::new(Bytes::from(serde_json::to_vec(body)?)))?;
    exchange(http, path, req).await
}

/// Sends a request and decodes a successful JSON answer.
async fn exchange<R: serde::de::DeserializeOwned>(
    http: &Http,
    path: &str,
    req: hyper::Request<Full<Bytes>>,
) -> anyhow::Result<R> {
    let resp = http.request(req).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("{path}: HTTP {status}: {}", String::from_utf8_lossy(&bytes));
    }
    Ok(serde_json::from_slice(&bytes)?)
}

/// A registered, logged-in device.
#[derive(Debug)]
pub(crate) struct Device {
    pub(crate) id: u64,
    pub(crate) token: String,
    pub(crate) address: sotto_core::Address,
    pub(crate) key: DeviceKey,
}

pub(crate) async fn register(http: &Http, addr: SocketAddr, n: usize) -> anyhow::Result<Device> {
    let key = DeviceKey::generate()?;
    let address: sotto_core::Address = format!("bench{n}@localhost").parse()?;
    let signature = key.sign(&auth::registration_payload(&address, key.public()))?;
    let (list, _, _) = sotto_core::account::DeviceList::new_account(
        address.clone(),
        key.public(),
        sotto_core::unix_now(),
    )?;
    let reg: proto::RegisterResponse = post(
        http,
        addr,
        "/v1/register",
        None,
        &proto::RegisterRequest {
            address: address.to_string(),
            invite: None,
            device_key: proto::Bytes(key.public().to_vec()),
            signature: proto::Bytes(signature),
            device_list: proto::SignedData {
                body: proto::Bytes(list.body),
                signature: proto::Bytes(list.signature),
            },
        },
    )
    .await?;
    let id = reg.device_id;
    let ch: proto::ChallengeResponse =
        post(http, addr, "/v1/auth/challenge", None, &proto::ChallengeRequest { device_id: id })
            .await?;
    let signature = key.sign(&auth::challenge_payload("localhost", id, &ch.nonce.0))?;
    let tok: proto::TokenResponse = post(
        http,
        addr,
        "/v1/auth/token",
        None,
        &proto::TokenRequest { device_id: id, nonce: ch.nonce, signature: proto::Bytes(signature) },
    )
    .await?;
    Ok(Device { id, token: tok.token, address, key })
}

/// Opens a device's WebSocket.
pub(crate) async fn websocket(
    addr: SocketAddr,
    token: &str,
) -> anyhow::Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut request = format!("ws://{addr}/v1/ws").into_client_request()?;
    request.headers_mut().insert("authorization", format!("Bearer {token}").parse()?);
    Ok(tokio_tungstenite::client_async(request, stream).await?.0)
}

/// Receives a device's queue over the WebSocket, acknowledging each message, until `stop`.
async fn receive(
    addr: SocketAddr,
    token: String,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut ws = websocket(addr, &token).await?;
    while !stop.load(Ordering::Relaxed) {
        let next = tokio::time::timeout(std::time::Duration::from_millis(200), ws.next()).await;
        let frame = match next {
            Err(_) => continue,
            Ok(None) => break,
            Ok(Some(frame)) => frame?,
        };
        let WsMessage::Text(text) = frame else { continue };
        if let Ok(proto::ServerFrame::Message(m)) = serde_json::from_str(&text) {
            recorder.delivered(&m.message.0);
            let ack = proto::ClientFrame::Ack(proto::AckRequest { up_to: m.seq });
            ws.send(WsMessage::Text(serde_json::to_string(&ack)?.into())).await?;
        }
    }
    Ok(())
}

/// Makes `devices` the roster of `group` on the server, as a group's creation does: the first
/// submits a commit (epoch 0) whose welcome goes to the others, who acknowledge it. Returns
/// the group's epoch.
pub(crate) async fn enrol(
    http: &Http,
    addr: SocketAddr,
    group: &[u8],
    devices: &[(u64, &str)],
    commit: Vec<u8>,
    welcome: Vec<u8>,
) -> anyhow::Result<u64> {
    let Some(((_, creator), rest)) = devices.split_first() else { return Ok(0) };
    if rest.is_empty() {
        return Ok(0);
    }
    let request = proto::SubmitRequest {
        submission_id: None,
        group_id: proto::Bytes(group.to_vec()),
        kind: proto::SubmitKind::Commit,
        epoch: 0,
        delivery: proto::Delivery { recipients: Vec::new(), message: proto::Bytes(commit) },
        welcome: Some(proto::Delivery {
            recipients: rest.iter().map(|(id, _)| *id).collect(),
            message: proto::Bytes(welcome),
        }),
        removed: Vec::new(),
        expires_at: None,
    };
    let created: proto::SubmitResponse =
        post(http, addr, "/v1/messages", Some(creator), &request).await?;
    for (_, token) in rest {
        let page: proto::QueueResponse = get(http, addr, "/v1/queue", token).await?;
        if let Some(last) = page.messages.last() {
            let ack = proto::AckRequest { up_to: last.seq };
            let _: proto::AckResponse =
                post(http, addr, "/v1/queue/ack", Some(token), &ack).await?;
        }
    }
    Ok(created.epoch)
}

/// The group every relay and backlog message goes to (all registered devices are members).
const BENCH_GROUP: &[u8] = b"bench";

async fn enrol_all(http: &Http, addr: SocketAddr, devices: &[Device]) -> anyhow::Result<()> {
    let roster: Vec<(u64, &str)> = devices.iter().map(|d| (d.id, d.token.as_str())).collect();
    enrol(http, addr, BENCH_GROUP, &roster, b"commit".to_vec(), b"join".to_vec()).await?;
    Ok(())
}

/// Submits one opaque payload for `to`, with a unique submission id.
async fn submit(
    http: &Http,
    addr: SocketAddr,
    token: &str,
    counter: &AtomicU64,
    to: u64,
    payload: Vec<u8>,
) -> anyhow::Result<proto::SubmitResponse> {
    let n = counter.fetch_add(1, Ordering::Relaxed);
    let request = proto::SubmitRequest {
        submission_id: Some(proto::Bytes(n.to_le_bytes().to_vec())),
        group_id: proto::Bytes(BENCH_GROUP.to_vec()),
        kind: proto::SubmitKind::Application,
        epoch: 1,
        delivery: proto::Delivery { recipients: vec![to], message: proto::Bytes(payload) },
        welcome: None,
        removed: Vec::new(),
        expires_at: None,
    };
    post(http, addr, "/v1/messages", Some(token), &request).await
}

/// One submission slot: sends to `to` again and again, each after the previous was accepted.
async fn send_loop(
    http: Http,
    addr: SocketAddr,
    token: String,
    to: u64,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    counter: Arc<AtomicU64>,
) {
    while !stop.load(Ordering::Relaxed) {
        let sent = submit(&http, addr, &token, &counter, to, recorder.payload()).await;
        if sent.is_err() {
            recorder.error();
        }
    }
}

/// Runs the relay workload once.
pub async fn relay(server: &SottoServer, p: &RelayParams) -> anyhow::Result<RelayResult> {
    let http = http_client();
    let addr = server.addr;
    let mut devices = Vec::with_capacity(p.devices);
    for n in 0..p.devices {
        devices.push(register(&http, addr, n).await.context("registering a device")?);
    }
    enrol_all(&http, addr, &devices).await.context("making the bench group")?;
    let recorder = Arc::new(Recorder::new(p.warmup, p.measure));
    let stop = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::new();
    for d in &devices {
        receivers.push(tokio::spawn(receive(
            addr,
            d.token.clone(),
            recorder.clone(),
            stop.clone(),
        )));
    }
    let counter = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let to = devices[(i + 1) % devices.len()].id;
        for _ in 0..p.window {
            senders.push(tokio::spawn(send_loop(
                http.clone(),
                addr,
                d.token.clone(),
                to,
                recorder.clone(),
                stop.clone(),
                counter.clone(),
            )));
        }
    }
    let cpu = recorder.run(server.pid(), &stop).await;
    crate::join_all(senders).await;
    for t in receivers {
        match t.await {
            Ok(Err(e)) => bail!("a receiver failed: {e}"),
            Err(e) => bail!("a receiver panicked: {e}"),
            Ok(Ok(())) => {}
        }
    }
    Ok(recorder.result("sotto", p, cpu, peak_rss_kib(server.pid())))
}

async fn get<R: serde::de::DeserializeOwned>(
    http: &Http,
    addr: SocketAddr,
    path: &str,
    token: &str,
) -> anyhow::Result<R> {
    let req = hyper::Request::get(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))?;
    exchange(http, path, req).await
}

/// The backlog workload: queues for offline devices are filled, then drained in pages.
pub async fn backlog(
    server: &SottoServer,
    devices: usize,
    per_device: usize,
) -> anyhow::Result<crate::BacklogResult> {
    let http = http_client();
    let addr = server.addr;
    let mut all = Vec::with_capacity(devices);
    for n in 0..devices {
        all.push(register(&http, addr, n).await.context("registering a device")?);
    }
    enrol_all(&http, addr, &all).await.context("making the bench group")?;
    let recorder =
        Arc::new(Recorder::new(std::time::Duration::ZERO, std::time::Duration::from_secs(3600)));
    let started = std::time::Instant::now();
    let mut senders = Vec::new();
    let counter = Arc::new(AtomicU64::new(0));
    for (i, d) in all.iter().enumerate() {
        let to = all[(i + 1) % devices].id;
        for slot in 0..crate::BACKLOG_WINDOW {
            let (http, token, recorder, counter) =
                (http.clone(), d.token.clone(), recorder.clone(), counter.clone());
            let count = crate::slot_share(per_device, slot);
            senders.push(tokio::spawn(async move {
                for _ in 0..count {
                    submit(&http, addr, &token, &counter, to, recorder.payload()).await?;
                }
                anyhow::Ok(())
            }));
        }
    }
    for s in senders {
        s.await??;
    }
    let fill = started.elapsed();
    let started = std::time::Instant::now();
    let mut drainers = Vec::new();
    for d in &all {
        let (http, token) = (http.clone(), d.token.clone());
        drainers.push(tokio::spawn(async move {
            let (mut after, mut received) = (0u64, 0usize);
            loop {
                let page: proto::QueueResponse =
                    get(&http, addr, &format!("/v1/queue?after={after}&limit=500"), &token).await?;
                received += page.messages.len();
                if let Some(last) = page.messages.last() {
                    after = last.seq;
                    let _: proto::AckResponse = post(
                        &http,
                        addr,
                        "/v1/queue/ack",
                        Some(&token),
                        &proto::AckRequest { up_to: after },
                    )
                    .await?;
                }
                if !page.more {
                    return anyhow::Ok(received);
                }
            }
        }));
    }
    let mut drained = 0;
    for d in drainers {
        drained += d.await??;
    }
    let drain = started.elapsed();
    crate::BacklogResult::checked("sotto", devices, per_device, drained, fill, drain)
}
