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
use sotto_core::queue::QueueKey;
use sotto_proto as proto;
use sotto_proto::live::{Down, PROTOCOL_V2, Up, Version};
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
            .args(["--max-connections-per-ip", "200000", "--blob-quota", "1000G"])
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

    /// The server's data directory.
    pub fn data_dir(&self) -> &Path {
        &self._data.0
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
    /// Its queue key, given to the server: what waits in its queue is sealed to it, as for
    /// every real client.
    pub(crate) queue: Arc<QueueKey>,
}

/// A copy as the device reads it: opened if the server sealed it.
pub(crate) fn opened(queue: &QueueKey, me: u64, copy: &[u8]) -> anyhow::Result<Vec<u8>> {
    if sotto_core::queue::is_sealed(copy) { Ok(queue.open(me, copy)?) } else { Ok(copy.to_vec()) }
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
    let queue = QueueKey::generate()?;
    let body = proto::QueueKey { key: proto::Bytes(queue.public().to_vec()) };
    let req = hyper::Request::put(format!("http://{addr}/v1/queue/key"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {}", tok.token))
        .body(Full::new(Bytes::from(serde_json::to_vec(&body)?)))?;
    let _: proto::QueueKey = exchange(http, "/v1/queue/key", req).await?;
    Ok(Device { id, token: tok.token, address, key, queue: Arc::new(queue) })
}

/// A device's live connection, in either version of the protocol (`sotto_proto::live`).
pub(crate) struct Live {
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    version: Version,
}

/// What waiting on a [`Live`] connection gave.
pub(crate) enum Next {
    /// Queued messages: one per frame in version 1, a page in version 2.
    Page(Vec<proto::QueuedMessage>),
    /// Nothing yet, or a frame that carries no message.
    Nothing,
    /// The connection closed.
    Closed,
}

impl Live {
    /// Opens a device's live connection, offering `version`.
    pub(crate) async fn open(
        addr: SocketAddr,
        token: &str,
        version: Version,
    ) -> anyhow::Result<Live> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut request = format!("ws://{addr}/v1/ws").into_client_request()?;
        request.headers_mut().insert("authorization", format!("Bearer {token}").parse()?);
        if version == Version::V2 {
            request.headers_mut().insert("sec-websocket-protocol", PROTOCOL_V2.parse()?);
        }
        let (ws, _) = tokio_tungstenite::client_async(request, stream).await?;
        Ok(Live { ws, version })
    }

    /// Waits up to `wait` for the next frame.
    pub(crate) async fn next(&mut self, wait: std::time::Duration) -> anyhow::Result<Next> {
        let frame = match tokio::time::timeout(wait, self.ws.next()).await {
            Err(_) => return Ok(Next::Nothing),
            Ok(None) => return Ok(Next::Closed),
            Ok(Some(frame)) => frame?,
        };
        let down = match frame {
            WsMessage::Text(text) => Down::from_text(&text)?,
            WsMessage::Binary(bytes) => Down::from_binary(&bytes)?,
            WsMessage::Close(_) => return Ok(Next::Closed),
            _ => return Ok(Next::Nothing),
        };
        Ok(match down {
            Down::Messages(page) => Next::Page(page),
            Down::Acked(_) => Next::Nothing,
            Down::Error(e) => bail!("the server refused: {}", e.error.message),
        })
    }

    /// Acknowledges everything up to and including `up_to`.
    pub(crate) async fn ack(&mut self, up_to: u64) -> anyhow::Result<()> {
        let ack = Up::Ack(proto::AckRequest { up_to });
        let frame = match self.version {
            Version::V2 => WsMessage::Binary(ack.to_binary().into()),
            Version::V1 => WsMessage::Text(ack.to_text().into()),
        };
        Ok(self.ws.send(frame).await?)
    }
}

/// Receives a device's queue over the WebSocket, acknowledging each frame's messages, until
/// `stop`.
async fn receive(
    addr: SocketAddr,
    (me, token, queue): (u64, String, Arc<QueueKey>),
    version: Version,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut live = Live::open(addr, &token, version).await?;
    while !stop.load(Ordering::Relaxed) {
        let page = match live.next(std::time::Duration::from_millis(200)).await? {
            Next::Page(page) => page,
            Next::Nothing => continue,
            Next::Closed => break,
        };
        for m in &page {
            let payload = opened(&queue, me, &m.message.0)?;
            if !own_copy(&payload, me) {
                recorder.delivered(&payload);
            }
        }
        if let Some(last) = page.last() {
            live.ack(last.seq).await?;
        }
    }
    Ok(())
}

/// A group's credentials for epochs 0 and 1: the MLS exporter's for real groups, made up
/// for the relay's stand-in groups (the server only checks that they open the roster).
pub(crate) struct Credentials {
    pub first: Vec<u8>,
    pub next: Vec<u8>,
}

impl Credentials {
    /// Made-up credentials for a stand-in group.
    pub(crate) fn made_up(group: &[u8]) -> Self {
        use sha2::Digest as _;
        let derive = |epoch: u8| {
            sha2::Sha256::new().chain_update(group).chain_update([epoch]).finalize().to_vec()
        };
        Credentials { first: derive(0), next: derive(1) }
    }
}

/// Makes `devices` the roster of `group` on the server, as a group's creation does: the first
/// submits a commit (epoch 0, with its token: the group is new) whose welcome goes to the
/// others; everyone acknowledges what that queued. Returns the group's epoch.
pub(crate) async fn enrol(
    http: &Http,
    addr: SocketAddr,
    group: &[u8],
    devices: &[(u64, &str)],
    (commit, welcome): (Vec<u8>, Vec<u8>),
    credentials: &Credentials,
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
        credential: Some(proto::Bytes(credentials.first.clone())),
        next_credential: Some(proto::Bytes(credentials.next.clone())),
        roster: None,
    };
    let created: proto::SubmitResponse =
        post(http, addr, "/v1/messages", Some(creator), &request).await?;
    for (_, token) in devices {
        let page: proto::QueueResponse = get(http, addr, "/v1/queue", token).await?;
        if let Some(last) = page.messages.last() {
            let ack = proto::AckRequest { up_to: last.seq };
            let _: proto::AckResponse =
                post(http, addr, "/v1/queue/ack", Some(token), &ack).await?;
        }
    }
    Ok(created.epoch)
}

/// The group device `i` sends to: itself and the next device (a ring of one-to-one chats).
fn pair_group(i: usize) -> Vec<u8> {
    format!("bench-pair-{i}").into_bytes()
}

/// Makes every device's pair group, the roster of each: the device and the next one.
async fn enrol_pairs(http: &Http, addr: SocketAddr, devices: &[Device]) -> anyhow::Result<()> {
    for (i, d) in devices.iter().enumerate() {
        let next = &devices[(i + 1) % devices.len()];
        let roster = [(d.id, d.token.as_str()), (next.id, next.token.as_str())];
        let group = pair_group(i);
        let parts = (b"commit".to_vec(), b"join".to_vec());
        enrol(http, addr, &group, &roster, parts, &Credentials::made_up(&group)).await?;
    }
    Ok(())
}

/// Where a payload's sender is written (after the timestamp): the copy a sealed submission
/// queues for its own sender is recognised by it, and not counted as delivered.
const SENDER_AT: std::ops::Range<usize> = 8..16;

/// Whether a delivered payload is the copy of one `me` sent.
fn own_copy(payload: &[u8], me: u64) -> bool {
    payload.get(SENDER_AT) == Some(&me.to_le_bytes()[..])
}

/// Submits one opaque payload of device `from` into its pair group (sealed: no token), with
/// a unique submission id.
async fn submit(
    http: &Http,
    addr: SocketAddr,
    counter: &AtomicU64,
    (from, group): (u64, &[u8]),
    mut payload: Vec<u8>,
) -> anyhow::Result<proto::SubmitResponse> {
    let n = counter.fetch_add(1, Ordering::Relaxed);
    if let Some(at) = payload.get_mut(SENDER_AT) {
        at.copy_from_slice(&from.to_le_bytes());
    }
    let request = proto::SubmitRequest {
        submission_id: Some(proto::Bytes(n.to_le_bytes().to_vec())),
        group_id: proto::Bytes(group.to_vec()),
        kind: proto::SubmitKind::Application,
        epoch: 1,
        delivery: proto::Delivery { recipients: Vec::new(), message: proto::Bytes(payload) },
        welcome: None,
        removed: Vec::new(),
        expires_at: None,
        credential: Some(proto::Bytes(Credentials::made_up(group).next)),
        next_credential: None,
        roster: None,
    };
    post(http, addr, "/v1/messages", None, &request).await
}

/// One submission slot: sends into `group` again and again, each after the previous was
/// accepted.
async fn send_loop(
    http: Http,
    addr: SocketAddr,
    (from, group): (u64, Vec<u8>),
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    counter: Arc<AtomicU64>,
) {
    while !stop.load(Ordering::Relaxed) {
        let sent = submit(&http, addr, &counter, (from, &group), recorder.payload()).await;
        if sent.is_err() {
            recorder.error();
        }
    }
}

/// Runs the relay workload once, live connections speaking `version`; the result is named
/// `system`.
pub async fn relay(
    server: &SottoServer,
    p: &RelayParams,
    (system, version): (&str, Version),
) -> anyhow::Result<RelayResult> {
    let http = http_client();
    let addr = server.addr;
    let mut devices = Vec::with_capacity(p.devices);
    for n in 0..p.devices {
        devices.push(register(&http, addr, n).await.context("registering a device")?);
    }
    enrol_pairs(&http, addr, &devices).await.context("making the bench groups")?;
    let recorder = Arc::new(Recorder::new(p.warmup, p.measure));
    let stop = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::new();
    for d in &devices {
        receivers.push(tokio::spawn(receive(
            addr,
            (d.id, d.token.clone(), d.queue.clone()),
            version,
            recorder.clone(),
            stop.clone(),
        )));
    }
    let counter = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        for _ in 0..p.window {
            senders.push(tokio::spawn(send_loop(
                http.clone(),
                addr,
                (d.id, pair_group(i)),
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
    Ok(recorder.result(system, p, cpu, peak_rss_kib(server.pid())))
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

/// A page of a device's queue: in the binary form clients ask for
/// (`sotto_proto::live::PAGE_MEDIA_TYPE`), or in JSON with version 1.
async fn page(
    http: &Http,
    addr: SocketAddr,
    (after, version): (u64, Version),
    token: &str,
) -> anyhow::Result<proto::QueueResponse> {
    let path = format!("/v1/queue?after={after}&limit=500");
    if version == Version::V1 {
        return get(http, addr, &path, token).await;
    }
    let req = hyper::Request::get(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {token}"))
        .header("accept", proto::live::PAGE_MEDIA_TYPE)
        .body(Full::new(Bytes::new()))?;
    let resp = http.request(req).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("{path}: HTTP {status}: {}", String::from_utf8_lossy(&bytes));
    }
    Ok(proto::QueueResponse::from_binary(&bytes)?)
}

/// The backlog workload: queues for offline devices are filled, then drained in pages,
/// binary ones or, with version 1, JSON; the result is named `system`.
pub async fn backlog(
    server: &SottoServer,
    (devices, per_device): (usize, usize),
    (system, version): (&str, Version),
) -> anyhow::Result<crate::BacklogResult> {
    let http = http_client();
    let addr = server.addr;
    let mut all = Vec::with_capacity(devices);
    for n in 0..devices {
        all.push(register(&http, addr, n).await.context("registering a device")?);
    }
    enrol_pairs(&http, addr, &all).await.context("making the bench groups")?;
    let recorder =
        Arc::new(Recorder::new(std::time::Duration::ZERO, std::time::Duration::from_secs(3600)));
    let started = std::time::Instant::now();
    let mut senders = Vec::new();
    let counter = Arc::new(AtomicU64::new(0));
    for (i, d) in all.iter().enumerate() {
        for slot in 0..crate::BACKLOG_WINDOW {
            let (http, recorder, counter) = (http.clone(), recorder.clone(), counter.clone());
            let (from, group) = (d.id, pair_group(i));
            let count = crate::slot_share(per_device, slot);
            senders.push(tokio::spawn(async move {
                for _ in 0..count {
                    submit(&http, addr, &counter, (from, &group), recorder.payload()).await?;
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
        let (http, token, me, queue) = (http.clone(), d.token.clone(), d.id, d.queue.clone());
        drainers.push(tokio::spawn(async move {
            let (mut after, mut received) = (0u64, 0usize);
            loop {
                let page = page(&http, addr, (after, version), &token).await?;
                for m in &page.messages {
                    if !own_copy(&opened(&queue, me, &m.message.0)?, me) {
                        received += 1;
                    }
                }
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
    crate::BacklogResult::checked(system, devices, per_device, drained, fill, drain)
}
