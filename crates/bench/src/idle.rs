//! Idle connections: how much server memory an authenticated, idle WebSocket costs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::proc_stats::rss_kib;
use crate::sotto::{self, SottoServer};

/// Connections opened from one loopback source address (below the ephemeral port range).
const PER_SOURCE: usize = 20_000;
/// Live connections the server lets one device hold; the connections are spread over as
/// many devices as that takes (with fewer, the server refuses the fifth of a device's).
const LIVE_PER_DEVICE: usize = 4;

/// Server memory at one number of idle connections.
#[derive(Debug, Clone, Serialize)]
pub struct IdleResult {
    /// The system under test.
    pub system: String,
    /// Open, authenticated, idle connections.
    pub connections: usize,
    /// Server resident memory, KiB.
    pub server_rss_kib: u64,
    /// Resident memory per connection over the baseline, bytes.
    pub bytes_per_connection: f64,
}

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn open(addr: SocketAddr, n: usize, token: &str) -> anyhow::Result<Socket> {
    // Spread over 127.0.0.2, 127.0.0.3, … so the ephemeral ports of one source do not run out.
    let source = Ipv4Addr::new(127, 0, 0, 2 + (n / PER_SOURCE) as u8);
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    socket.set_nodelay(true)?;
    let stream = socket.connect(addr).await?;
    let mut request = format!("ws://{addr}/v1/ws").into_client_request()?;
    request.headers_mut().insert("authorization", format!("Bearer {token}").parse()?);
    let (ws, _) = tokio_tungstenite::client_async(request, stream).await?;
    Ok(ws)
}

/// Opens connections up to each count in `steps` and measures the server's memory at each.
pub async fn idle(server: &SottoServer, steps: &[usize]) -> anyhow::Result<Vec<IdleResult>> {
    let http = sotto::http_client();
    let addr = server.addr();
    let mut devices = Vec::new();
    let most = steps.iter().copied().max().unwrap_or(1);
    for n in 0..most.div_ceil(LIVE_PER_DEVICE) {
        devices.push(sotto::register(&http, addr, n).await.context("registering a device")?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = rss_kib(server.pid());
    let mut held = Vec::new();
    let mut results = Vec::new();
    for &target in steps {
        while held.len() < target {
            // Open in parallel batches.
            let batch: Vec<_> = (held.len()..target.min(held.len() + 500))
                .map(|n| {
                    let token = devices[n % devices.len()].token.clone();
                    tokio::spawn(async move { open(addr, n, &token).await })
                })
                .collect();
            for t in batch {
                held.push(t.await?.with_context(|| format!("connection {}", held.len() + 1))?);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss = rss_kib(server.pid());
        let per = (rss.saturating_sub(baseline) * 1024) as f64 / target as f64;
        eprintln!(
            "{:>16} {target:>7} idle connections: {rss:>8} KiB RSS, {per:>7.0} B each",
            "sotto"
        );
        results.push(IdleResult {
            system: "sotto".into(),
            connections: target,
            server_rss_kib: rss,
            bytes_per_connection: per,
        });
    }
    drop(held);
    Ok(results)
}
