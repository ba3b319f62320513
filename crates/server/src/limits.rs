//! Flood control: token-bucket rate limits and a cap on simultaneous connections.

use std::collections::HashMap;
use std::hash::Hash;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Buckets kept before idle (full) ones are forgotten.
const MAX_TRACKED: usize = 100_000;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A token bucket per key: `rate` tokens a second, holding at most `burst`.
#[derive(Debug)]
pub(crate) struct RateLimiter<K> {
    buckets: Mutex<HashMap<K, Bucket>>,
    rate: f64,
    burst: f64,
}

impl<K: Hash + Eq> RateLimiter<K> {
    pub(crate) fn new(rate_per_second: f64, burst: f64) -> Self {
        RateLimiter {
            buckets: Mutex::default(),
            rate: rate_per_second.max(1e-9),
            burst: burst.max(1.0),
        }
    }

    /// Takes a token for `key`, or says how long until one is available.
    pub(crate) fn check(&self, key: K) -> Result<(), Duration> {
        self.check_n(key, 1.0)
    }

    /// Takes `n` tokens for `key` (at most the burst), or says how long until they are there.
    pub(crate) fn check_n(&self, key: K, n: f64) -> Result<(), Duration> {
        let n = n.min(self.burst);
        let now = Instant::now();
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED {
            // Memory stays bounded: forget keys whose buckets have refilled.
            let (rate, burst) = (self.rate, self.burst);
            map.retain(|_, b| b.tokens + now.duration_since(b.last).as_secs_f64() * rate < burst);
        }
        let bucket = map.entry(key).or_insert(Bucket { tokens: self.burst, last: now });
        let elapsed = now.duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= n {
            bucket.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((n - bucket.tokens) / self.rate))
        }
    }
}

/// A listener that holds at most `max` connections open; further ones wait in the kernel's
/// backlog until one closes. Accept errors (out of descriptors) back off instead of spinning.
#[derive(Debug)]
pub(crate) struct CappedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
}

impl CappedListener {
    pub(crate) fn new(inner: TcpListener, max: usize) -> Self {
        CappedListener { inner, permits: Arc::new(Semaphore::new(max.max(1))) }
    }

    /// Waits for room, then for a connection.
    pub(crate) async fn accept_capped(&self) -> (CappedStream, SocketAddr) {
        // The semaphore is never closed, so acquiring cannot fail.
        let permit = loop {
            if let Ok(p) = self.permits.clone().acquire_owned().await {
                break p;
            }
        };
        let mut backoff = Duration::from_millis(5);
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    return (CappedStream { inner: stream, _permit: permit }, addr);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

impl axum::serve::Listener for CappedListener {
    type Io = CappedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (CappedStream, SocketAddr) {
        self.accept_capped().await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// The peer's address, as request extension `ConnectInfo<PeerAddr>`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerAddr(pub(crate) SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, CappedListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, CappedListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// A connection that frees its place under the cap when dropped.
#[derive(Debug)]
pub(crate) struct CappedStream {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for CappedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_allow_bursts_then_the_rate() {
        let limiter = RateLimiter::new(1.0, 3.0);
        assert!(limiter.check("a").is_ok());
        assert!(limiter.check("a").is_ok());
        assert!(limiter.check("a").is_ok());
        let wait = limiter.check("a").expect_err("burst spent");
        assert!(wait > Duration::from_millis(500) && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(limiter.check("b").is_ok(), "keys are independent");
    }

    #[test]
    fn weighted_checks_take_many_tokens() {
        let limiter = RateLimiter::new(100.0, 1000.0);
        assert!(limiter.check_n("a", 900.0).is_ok());
        let wait = limiter.check_n("a", 300.0).expect_err("only about 100 left");
        assert!(wait > Duration::from_millis(1500) && wait <= Duration::from_secs(3), "{wait:?}");
        assert!(limiter.check_n("a", 50.0).is_ok(), "a smaller amount still fits");
    }
}
