//! Flood control: token-bucket rate limits and a cap on simultaneous connections.

use std::collections::HashMap;
use std::future::Future as _;
use std::hash::Hash;
use std::io;
use std::net::{IpAddr, SocketAddr};
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

impl<K: Hash + Eq> RateLimiter<K> {
    /// Whether `n` tokens are there, without taking them: `Err` with how long until they are.
    pub(crate) fn peek(&self, key: &K, n: f64) -> Result<(), Duration> {
        let n = n.min(self.burst);
        let map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let Some(bucket) = map.get(key) else { return Ok(()) };
        let elapsed = Instant::now().duration_since(bucket.last).as_secs_f64();
        let tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        if tokens >= n { Ok(()) } else { Err(Duration::from_secs_f64((n - tokens) / self.rate)) }
    }

    /// Takes `n` tokens that were spent already (what a request turned out to cost): the
    /// bucket may go into debt, down to minus one burst, and the key's next requests wait.
    pub(crate) fn charge(&self, key: K, n: f64) {
        let now = Instant::now();
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = map.entry(key).or_insert(Bucket { tokens: self.burst, last: now });
        let elapsed = now.duration_since(bucket.last).as_secs_f64();
        bucket.tokens =
            ((bucket.tokens + elapsed * self.rate).min(self.burst) - n).max(-self.burst);
        bucket.last = now;
    }
}

/// The address limits count against: an IPv4 address (also when written IPv4-mapped), or an
/// IPv6 address's /64 (one subscriber usually has a whole /64).
pub(crate) fn address_bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
        v4 => v4,
    }
}

/// How a listener bounds its connections.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionLimits {
    /// Most connections open at once; further ones wait in the kernel's backlog.
    pub(crate) max: usize,
    /// Most connections open at once from one IP address; further ones are closed at once.
    pub(crate) per_ip: usize,
    /// A connection that moves no byte either way for this long is closed.
    pub(crate) idle: Duration,
    /// A new connection must send its first byte within this time.
    pub(crate) first_byte: Duration,
    /// Addresses exempt from `per_ip` (reverse proxies speak for many clients).
    pub(crate) trusted: Arc<[IpAddr]>,
}

type PerIp = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// A listener that holds at most `max` connections open (further ones wait in the kernel's
/// backlog until one closes) and at most `per_ip` from one address. Accept errors (out of
/// descriptors) back off instead of spinning.
#[derive(Debug)]
pub(crate) struct CappedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    limits: ConnectionLimits,
    per_ip: PerIp,
}

impl CappedListener {
    pub(crate) fn new(inner: TcpListener, limits: ConnectionLimits) -> Self {
        CappedListener {
            inner,
            permits: Arc::new(Semaphore::new(limits.max.max(1))),
            limits,
            per_ip: PerIp::default(),
        }
    }

    /// Waits for room, then for a connection from an address below its own cap.
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
                    let Some(slot) = self.ip_slot(addr.ip()) else {
                        tracing::debug!("too many connections from one address");
                        drop(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let idle = self.limits.idle;
                    // Silence from the start counts like slow headers.
                    let deadline = Box::pin(tokio::time::sleep(self.limits.first_byte.min(idle)));
                    let stream = CappedStream {
                        inner: stream,
                        idle,
                        deadline,
                        abort: Abort::default(),
                        _permit: permit,
                        _slot: slot,
                    };
                    return (stream, addr);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Counts a connection from `ip`, or `None` if that address has its share already.
    fn ip_slot(&self, ip: IpAddr) -> Option<Option<IpSlot>> {
        if self.limits.trusted.contains(&ip) {
            return Some(None);
        }
        let ip = address_bucket(ip);
        let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let count = map.entry(ip).or_insert(0);
        if *count >= self.limits.per_ip.max(1) {
            return None;
        }
        *count += 1;
        Some(Some(IpSlot { ip, map: self.per_ip.clone() }))
    }
}

/// One connection counted against its address; uncounted when dropped.
#[derive(Debug)]
struct IpSlot {
    ip: IpAddr,
    map: PerIp,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = map.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// The peer's address, as request extension `ConnectInfo<PeerAddr>`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerAddr(pub(crate) SocketAddr);

/// A connection that frees its place under the caps when dropped, and fails once no byte
/// has moved either way for the idle time (a slow or stalled peer cannot hold it forever).
#[derive(Debug)]
pub(crate) struct CappedStream {
    inner: TcpStream,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    abort: Abort,
    _permit: OwnedSemaphorePermit,
    _slot: Option<IpSlot>,
}

/// Set when the server has given up on a connection's peer (it stopped reading): the
/// connection is then reset when closed, instead of leaving the kernel holding what it could
/// not send for as long as the peer keeps its end open.
#[derive(Debug, Clone, Default)]
pub(crate) struct Abort(Arc<std::sync::atomic::AtomicBool>);

impl Abort {
    /// Resets the connection when it closes.
    pub(crate) fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for CappedStream {
    fn drop(&mut self) {
        if self.abort.0.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = socket2::SockRef::from(&self.inner).set_linger(Some(Duration::ZERO));
        }
    }
}

impl CappedStream {
    /// The handle that makes this connection reset when it closes.
    pub(crate) fn abort_handle(&self) -> Abort {
        self.abort.clone()
    }
}

impl CappedStream {
    /// After progress, the idle time starts again; while waiting, it may run out.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    // A peer that moved nothing for this long is gone: reset, don't linger.
                    self.abort.set();
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connection idle for too long",
                    )))
                }
                Poll::Pending => Poll::Pending,
            },
            ready => {
                let next = tokio::time::Instant::now() + self.idle;
                self.deadline.as_mut().reset(next);
                ready
            }
        }
    }
}

impl AsyncRead for CappedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.watch(cx, poll)
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, poll)
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
    fn addresses_are_counted_by_subscriber() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(address_bucket(ip("::ffff:1.1.1.1")), ip("1.1.1.1"));
        assert_eq!(address_bucket(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            address_bucket(ip("2001:db8:1:2:ffff::9")),
            address_bucket(ip("2001:db8:1:2::7"))
        );
        assert_ne!(address_bucket(ip("2001:db8:1:3::1")), address_bucket(ip("2001:db8:1:2::1")));
        assert_eq!(address_bucket(ip("10.0.0.1")), ip("10.0.0.1"));
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
