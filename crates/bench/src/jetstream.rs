//! The relay workload against NATS JetStream: a stream over `bench.>`, a durable pull consumer
//! per device, publishes that wait for the stream's acknowledgement, explicit acks.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;

use crate::proc_stats::{CpuMeter, peak_rss_kib};
use crate::{Recorder, RelayParams, RelayResult, Scratch, free_port};

/// A running `nats-server -js`, killed when dropped.
#[derive(Debug)]
pub struct NatsServer {
    child: Child,
    url: String,
    fsync: bool,
    _data: Scratch,
}

impl NatsServer {
    /// Starts `bin` with JetStream on a free loopback port. With `fsync`, every write is synced
    /// before it is acknowledged (`sync_interval: always`), like Sotto's `synchronous=FULL`;
    /// without, JetStream's default (a sync every two minutes).
    pub fn start(bin: &Path, fsync: bool) -> anyhow::Result<NatsServer> {
        let data = Scratch::new("nats")?;
        let port = free_port()?;
        let sync = if fsync { "\n  sync_interval: always" } else { "" };
        let config = format!(
            "listen: 127.0.0.1:{port}\nhttp: 0\njetstream {{\n  store_dir: \"{}\"{sync}\n}}\n",
            data.0.display()
        );
        let config_path = data.0.join("nats.conf");
        std::fs::write(&config_path, config)?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let url = format!("nats://127.0.0.1:{port}");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(NatsServer { child, url, fsync, _data: data });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("nats-server did not start listening on {port}")
    }

    /// The name in reports.
    pub fn name(&self) -> &'static str {
        if self.fsync { "jetstream-fsync" } else { "jetstream" }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    Ok(async_nats::ConnectOptions::new().connect(url).await?)
}

/// Runs the relay workload once.
pub async fn relay(server: &NatsServer, p: &RelayParams) -> anyhow::Result<RelayResult> {
    let admin = jetstream::new(connect(&server.url).await?);
    let name = format!("BENCH{}", p.window);
    let stream = admin
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("bench{}.>", p.window)],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let recorder = Arc::new(Recorder::new(p.warmup, p.measure));
    let stop = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::new();
    let mut contexts = Vec::new();
    for i in 0..p.devices {
        // Each device has its own connection, as each Sotto device has its own sockets.
        let js = jetstream::new(connect(&server.url).await?);
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(format!("d{i}")),
                filter_subject: format!("bench{}.d{i}", p.window),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await?;
        let (recorder, stop) = (recorder.clone(), stop.clone());
        receivers.push(tokio::spawn(async move {
            let mut messages = consumer.messages().await?;
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), messages.next()).await {
                    Err(_) => continue,
                    Ok(None) => break,
                    Ok(Some(m)) => {
                        let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
                        recorder.delivered(&m.payload);
                        m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                    }
                }
            }
            anyhow::Ok(())
        }));
        contexts.push(js);
    }
    let mut senders = Vec::new();
    for (i, js) in contexts.iter().enumerate() {
        let subject = format!("bench{}.d{}", p.window, (i + 1) % p.devices);
        for _ in 0..p.window {
            let (js, subject, recorder, stop) =
                (js.clone(), subject.clone(), recorder.clone(), stop.clone());
            senders.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let payload = recorder.payload();
                    let acked = match js.publish(subject.clone(), payload.into()).await {
                        Ok(ack) => ack.await.is_ok(),
                        Err(_) => false,
                    };
                    if !acked {
                        recorder.error();
                    }
                }
            }));
        }
    }
    recorder.wait_until_measuring().await;
    let pid = server.child.id();
    let cpu = CpuMeter::start(pid);
    recorder.wait_until_done().await;
    let cpu = cpu.percent();
    stop.store(true, Ordering::Relaxed);
    for t in senders {
        let _ = t.await;
    }
    for t in receivers {
        let _ = t.await;
    }
    let _ = admin.delete_stream(&name).await;
    Ok(recorder.result(server.name(), p, cpu, peak_rss_kib(pid)))
}
