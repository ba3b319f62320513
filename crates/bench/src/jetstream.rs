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

use crate::proc_stats::peak_rss_kib;
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
    let pid = server.child.id();
    let cpu = recorder.run(pid, &stop).await;
    crate::join_all(senders).await;
    crate::join_all(receivers).await;
    let _ = admin.delete_stream(&name).await;
    Ok(recorder.result(server.name(), p, cpu, peak_rss_kib(pid)))
}

/// The backlog workload: streams for offline consumers are filled, then drained in batches,
/// acknowledging the last message of each batch (`AckPolicy::All`, like Sotto's `up_to`).
pub async fn backlog(
    server: &NatsServer,
    devices: usize,
    per_device: usize,
) -> anyhow::Result<crate::BacklogResult> {
    let admin = jetstream::new(connect(&server.url).await?);
    let stream = admin
        .create_stream(stream::Config {
            name: "BACKLOG".into(),
            subjects: vec!["backlog.>".into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let mut consumers = Vec::new();
    let mut contexts = Vec::new();
    for i in 0..devices {
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(format!("b{i}")),
                filter_subject: format!("backlog.d{i}"),
                ack_policy: consumer::AckPolicy::All,
                ..Default::default()
            })
            .await?;
        consumers.push(consumer);
        contexts.push(jetstream::new(connect(&server.url).await?));
    }
    let recorder = Arc::new(Recorder::new(Duration::ZERO, Duration::from_secs(3600)));
    let started = std::time::Instant::now();
    let mut senders = Vec::new();
    for (i, js) in contexts.iter().enumerate() {
        let subject = format!("backlog.d{}", (i + 1) % devices);
        for slot in 0..crate::BACKLOG_WINDOW {
            let (js, subject, recorder) = (js.clone(), subject.clone(), recorder.clone());
            let count = crate::slot_share(per_device, slot);
            senders.push(tokio::spawn(async move {
                for _ in 0..count {
                    js.publish(subject.clone(), recorder.payload().into())
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
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
    for consumer in consumers {
        drainers.push(tokio::spawn(async move {
            let mut received = 0usize;
            while received < per_device {
                let mut batch = consumer
                    .batch()
                    .max_messages(500)
                    .expires(Duration::from_secs(2))
                    .messages()
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let mut last = None;
                while let Some(m) = batch.next().await {
                    received += 1;
                    last = Some(m.map_err(|e| anyhow::anyhow!("{e}"))?);
                }
                match last {
                    Some(m) => m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?,
                    None => bail!("a batch came back empty"),
                }
            }
            anyhow::Ok(received)
        }));
    }
    let mut drained = 0;
    for d in drainers {
        drained += d.await??;
    }
    let drain = started.elapsed();
    let _ = admin.delete_stream("BACKLOG").await;
    crate::BacklogResult::checked(server.name(), devices, per_device, drained, fill, drain)
}
