//! The relay workload against Synapse's to-device messages (`/sendToDevice` and `/sync`), the
//! Matrix API closest to per-device queues. Synapse runs on SQLite with its rate limits lifted.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{Value, json};

use crate::proc_stats::peak_rss_kib;
use crate::sotto::{Http, http_client};
use crate::{Recorder, RelayParams, RelayResult, Scratch, free_port};

const SHARED_SECRET: &str = "sotto-bench-registration";
const LIFTED: &str = "{per_second: 1000000, burst_count: 1000000}";

/// A running Synapse, killed when dropped.
#[derive(Debug)]
pub struct SynapseServer {
    child: Child,
    addr: SocketAddr,
    _data: Scratch,
}

impl SynapseServer {
    /// Writes a loopback-only configuration and starts Synapse with `python`.
    pub fn start(python: &Path) -> anyhow::Result<SynapseServer> {
        let data = Scratch::new("synapse")?;
        let port = free_port()?;
        let dir = data.0.display();
        let config = format!(
            "server_name: localhost\n\
             pid_file: {dir}/homeserver.pid\n\
             listeners:\n  - port: {port}\n    bind_addresses: ['127.0.0.1']\n    type: http\n    tls: false\n    resources:\n      - names: [client]\n        compress: false\n\
             database:\n  name: sqlite3\n  args:\n    database: {dir}/homeserver.db\n\
             media_store_path: {dir}/media\n\
             signing_key_path: {dir}/signing.key\n\
             report_stats: false\n\
             registration_shared_secret: {SHARED_SECRET}\n\
             trusted_key_servers: []\n\
             suppress_key_server_warning: true\n\
             federation_domain_whitelist: []\n\
             presence:\n  enabled: false\n\
             rc_message: {LIFTED}\n\
             rc_registration: {LIFTED}\n\
             rc_login:\n  address: {LIFTED}\n  account: {LIFTED}\n  failed_attempts: {LIFTED}\n\
             rc_key_requests: {LIFTED}\n"
        );
        let path = data.0.join("homeserver.yaml");
        std::fs::write(&path, config)?;
        let keys = Command::new(python)
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(&path)
            .arg("--generate-keys")
            .output()
            .context("running synapse --generate-keys")?;
        if !keys.status.success() {
            bail!("synapse --generate-keys failed: {}", String::from_utf8_lossy(&keys.stderr));
        }
        let child = Command::new(python)
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting synapse")?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        for _ in 0..600 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Ok(SynapseServer { child, addr, _data: data });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("synapse did not start listening on {port}")
    }
}

impl Drop for SynapseServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn call(
    http: &Http,
    method: &str,
    url: String,
    token: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<Value> {
    let mut req = hyper::Request::builder().method(method).uri(&url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = req.header("content-type", "application/json").body(Full::new(Bytes::from(body)))?;
    let resp = http.request(req).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("{method} {url}: HTTP {status}: {}", String::from_utf8_lossy(&bytes));
    }
    Ok(serde_json::from_slice(&bytes)?)
}

/// A registered Matrix user with one device.
struct User {
    user_id: String,
    device_id: String,
    token: String,
}

async fn register(http: &Http, addr: SocketAddr, n: usize) -> anyhow::Result<User> {
    let url = format!("http://{addr}/_synapse/admin/v1/register");
    let nonce = call(http, "GET", url.clone(), None, None).await?["nonce"]
        .as_str()
        .context("no nonce")?
        .to_string();
    let (username, password) = (format!("bench{n}"), "bench-password-1");
    let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(SHARED_SECRET.as_bytes())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (i, part) in [nonce.as_str(), &username, password, "notadmin"].iter().enumerate() {
        if i > 0 {
            mac.update(b"\0");
        }
        mac.update(part.as_bytes());
    }
    let body = json!({"nonce": nonce, "username": username, "password": password, "admin": false,
                      "mac": hex::encode(mac.finalize().into_bytes())});
    let r = call(http, "POST", url, None, Some(&body)).await?;
    Ok(User {
        user_id: r["user_id"].as_str().context("user_id")?.into(),
        device_id: r["device_id"].as_str().context("device_id")?.into(),
        token: r["access_token"].as_str().context("access_token")?.into(),
    })
}

const FILTER: &str = "%7B%22room%22%3A%7B%22rooms%22%3A%5B%5D%7D%2C%22presence%22%3A%7B%22types%22%3A%5B%5D%7D%2C%22account_data%22%3A%7B%22types%22%3A%5B%5D%7D%7D";

/// Long-polls `/sync` and records every to-device payload; each `since` acknowledges the
/// previous batch (Synapse then deletes it).
async fn receive(
    http: Http,
    addr: SocketAddr,
    token: String,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut since: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        let url = match &since {
            Some(s) => format!(
                "http://{addr}/_matrix/client/v3/sync?timeout=1000&filter={FILTER}&since={s}"
            ),
            None => format!("http://{addr}/_matrix/client/v3/sync?timeout=0&filter={FILTER}"),
        };
        let r = call(&http, "GET", url, Some(&token), None).await?;
        for event in r["to_device"]["events"].as_array().into_iter().flatten() {
            if let Some(p) = event["content"]["p"].as_str() {
                let payload = base64::engine::general_purpose::STANDARD.decode(p)?;
                recorder.delivered(&payload);
            }
        }
        since = r["next_batch"].as_str().map(str::to_owned);
    }
    Ok(())
}

/// Runs the relay workload once.
pub async fn relay(server: &SynapseServer, p: &RelayParams) -> anyhow::Result<RelayResult> {
    let http = http_client();
    let addr = server.addr;
    let mut users = Vec::new();
    for n in 0..p.devices {
        users.push(register(&http, addr, n).await.context("registering a Matrix user")?);
    }
    let recorder = Arc::new(Recorder::new(p.warmup, p.measure));
    let stop = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::new();
    for u in &users {
        receivers.push(tokio::spawn(receive(
            http.clone(),
            addr,
            u.token.clone(),
            recorder.clone(),
            stop.clone(),
        )));
    }
    let txn = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let to = &users[(i + 1) % users.len()];
        for _ in 0..p.window {
            let (http, token, recorder, stop, txn) =
                (http.clone(), u.token.clone(), recorder.clone(), stop.clone(), txn.clone());
            let (user, device) = (to.user_id.clone(), to.device_id.clone());
            senders.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let id = txn.fetch_add(1, Ordering::Relaxed);
                    let payload =
                        base64::engine::general_purpose::STANDARD.encode(recorder.payload());
                    let body =
                        json!({"messages": {user.clone(): {device.clone(): {"p": payload}}}});
                    let url =
                        format!("http://{addr}/_matrix/client/v3/sendToDevice/m.sotto.bench/{id}");
                    if call(&http, "PUT", url, Some(&token), Some(&body)).await.is_err() {
                        recorder.error();
                    }
                }
            }));
        }
    }
    let pid = server.child.id();
    let cpu = recorder.run(pid, &stop).await;
    crate::join_all(senders).await;
    crate::join_all(receivers).await;
    Ok(recorder.result("synapse", p, cpu, peak_rss_kib(pid)))
}
