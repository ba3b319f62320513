//! Counters and histograms for the operator, rendered in the Prometheus text format on the
//! admin listener (`GET /metrics`).
//!
//! No label names a person, a device or a group: only routes, status codes and totals. The
//! figures live in one process-wide [`METRICS`] so the store's writer thread can record its
//! commits without a handle to the API.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{LazyLock, Mutex};

use crate::store::StoreTotals;

/// The server's figures.
pub(crate) static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// A histogram with fixed bucket bounds.
#[derive(Debug)]
pub(crate) struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, then the `+Inf` bucket (not cumulative; summed when rendered).
    counts: Vec<AtomicU64>,
    /// The sum of observations, in millionths.
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub(crate) fn observe(&self, value: f64) {
        let i = self.bounds.iter().position(|b| value <= *b).unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add((value.max(0.0) * 1e6) as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut total = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            total += count.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {total}");
        }
        total += self.counts[self.bounds.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {total}");
    }
}

const SECONDS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Every figure the server keeps.
#[derive(Debug)]
pub(crate) struct Metrics {
    /// Requests answered, by route template, then status code.
    requests: Mutex<BTreeMap<String, BTreeMap<u16, u64>>>,
    /// Submissions stored (each a message for a group, with its copies).
    pub(crate) submissions: AtomicU64,
    /// Copies queued for devices.
    pub(crate) queued: AtomicU64,
    /// Messages handed to devices (fetched pages and live deliveries).
    pub(crate) delivered: AtomicU64,
    /// Messages acknowledged (and deleted).
    pub(crate) acknowledged: AtomicU64,
    /// Connections accepted on the public listener since start.
    pub(crate) connections_total: AtomicU64,
    /// Connections open now.
    pub(crate) connections_open: AtomicU64,
    /// Live (WebSocket) delivery connections open now.
    pub(crate) live_open: AtomicU64,
    /// File bytes received.
    pub(crate) file_bytes_in: AtomicU64,
    /// File bytes sent.
    pub(crate) file_bytes_out: AtomicU64,
    /// Writes committed together by the store's writer.
    pub(crate) commit_batch: Histogram,
    /// Time to commit (and fsync) one batch of writes.
    pub(crate) commit_seconds: Histogram,
    /// Time to publish one key directory epoch.
    pub(crate) kt_publish_seconds: Histogram,
    /// The key directory's newest epoch.
    pub(crate) kt_epoch: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::default(),
            submissions: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            acknowledged: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            live_open: AtomicU64::new(0),
            file_bytes_in: AtomicU64::new(0),
            file_bytes_out: AtomicU64::new(0),
            commit_batch: Histogram::new(BATCH),
            commit_seconds: Histogram::new(SECONDS),
            kt_publish_seconds: Histogram::new(SECONDS),
            kt_epoch: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Counts one answered request. `route` is the route's template (`/v1/blobs/{id}`), never
    /// the path a client sent.
    pub(crate) fn request(&self, route: &str, status: u16) {
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        // The hot path allocates nothing: a route is a new key once.
        match map.get_mut(route) {
            Some(statuses) => *statuses.entry(status).or_insert(0) += 1,
            None => {
                map.insert(route.to_string(), BTreeMap::from([(status, 1)]));
            }
        }
    }

    /// The Prometheus text exposition of every figure, with the store's totals.
    pub(crate) fn render(&self, totals: &StoreTotals) -> String {
        let mut out = String::with_capacity(8 * 1024);
        out.push_str(
            "# HELP sotto_http_requests_total Requests answered, by route and status.\n\
             # TYPE sotto_http_requests_total counter\n",
        );
        for (route, statuses) in self.requests.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            for (status, n) in statuses {
                let _ = writeln!(
                    out,
                    "sotto_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                    escape(route)
                );
            }
        }
        let counters = [
            ("sotto_submissions_total", "Submissions stored.", &self.submissions),
            ("sotto_queued_total", "Message copies queued for devices.", &self.queued),
            ("sotto_delivered_total", "Messages handed to devices.", &self.delivered),
            ("sotto_acknowledged_total", "Messages acknowledged and deleted.", &self.acknowledged),
            ("sotto_connections_total", "Connections accepted.", &self.connections_total),
            ("sotto_file_received_bytes_total", "File bytes received.", &self.file_bytes_in),
            (
                "sotto_file_sent_bytes_total",
                "File bytes sent (counted when a download starts).",
                &self.file_bytes_out,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Relaxed)
            );
        }
        let gauges = [
            ("sotto_connections_open", "Connections open.", self.connections_open.load(Relaxed)),
            ("sotto_live_connections", "Live delivery connections open.", {
                self.live_open.load(Relaxed)
            }),
            ("sotto_kt_epoch", "The key directory's newest epoch.", self.kt_epoch.load(Relaxed)),
            ("sotto_accounts", "Accounts (not deleted).", totals.accounts),
            ("sotto_accounts_suspended", "Accounts suspended.", totals.suspended),
            ("sotto_devices", "Devices not revoked.", totals.devices),
            ("sotto_queue_depth_messages", "Messages waiting in queues.", totals.queued_messages),
            ("sotto_queue_depth_bytes", "Bytes waiting in queues.", totals.queued_bytes),
            ("sotto_file_stored_bytes", "Bytes of files kept.", totals.file_bytes),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
        self.commit_batch.render(
            &mut out,
            "sotto_store_commit_batch_size",
            "Writes committed together (one fsync).",
        );
        self.commit_seconds.render(
            &mut out,
            "sotto_store_commit_seconds",
            "Time to commit and fsync one batch.",
        );
        self.kt_publish_seconds.render(
            &mut out,
            "sotto_kt_publish_seconds",
            "Time to publish one key directory epoch.",
        );
        out
    }
}

/// A label value as the text format wants it.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Counts a connection open until dropped.
#[derive(Debug)]
pub(crate) struct OpenGauge(&'static AtomicU64);

impl OpenGauge {
    pub(crate) fn open(gauge: &'static AtomicU64) -> Self {
        gauge.fetch_add(1, Relaxed);
        OpenGauge(gauge)
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_text_is_well_formed() {
        let m = Metrics::default();
        m.commit_seconds.observe(0.0007);
        m.commit_seconds.observe(0.003);
        m.commit_seconds.observe(99.0);
        m.request("/v1/queue", 200);
        m.request("/v1/queue", 200);
        m.request("odd\"route", 404);
        let text = m.render(&StoreTotals { queued_messages: 5, ..Default::default() });
        assert!(text.contains("sotto_store_commit_seconds_bucket{le=\"0.001\"} 1\n"), "{text}");
        assert!(text.contains("sotto_store_commit_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(text.contains("sotto_store_commit_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("sotto_store_commit_seconds_count 3\n"));
        assert!(text.contains("sotto_http_requests_total{route=\"/v1/queue\",status=\"200\"} 2"));
        assert!(text.contains("route=\"odd\\\"route\""));
        assert!(text.contains("sotto_queue_depth_messages 5\n"));
    }
}
