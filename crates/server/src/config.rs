use std::net::SocketAddr;
use std::path::PathBuf;

use sotto_proto::RegistrationMode;

use crate::store::QueueLimits;

/// A certificate chain and private key, PEM files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// What the server serves and where.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the database lives.
    pub data_dir: PathBuf,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The domain of the addresses this server hosts.
    pub domain: String,
    /// Invite-only or open registration.
    pub registration: RegistrationMode,
    /// Serve HTTPS with these files.
    pub tls: Option<TlsFiles>,
    /// Allow plain HTTP on a non-loopback address (for a TLS-terminating proxy in front).
    pub danger_allow_plain_http: bool,
    /// Lifetime of a bearer token, in seconds.
    pub token_ttl_secs: u64,
    /// Bounds on each device's queue.
    pub queue_limits: QueueLimits,
    /// How long an undelivered message waits in a queue before it expires, in seconds.
    pub message_ttl_secs: u64,
    /// Most simultaneous connections; further ones wait to be accepted.
    pub max_connections: usize,
    /// Most simultaneous connections from one IP address (trusted proxies excepted);
    /// further ones are closed at once.
    pub max_connections_per_ip: usize,
    /// Seconds a client gets to send a request's headers.
    pub header_timeout_secs: u64,
    /// Seconds a connection may move no byte either way before it is closed (live
    /// connections are pinged more often than this).
    pub idle_timeout_secs: u64,
    /// Reverse proxies whose `X-Forwarded-For` names the client (and which the per-address
    /// connection cap does not apply to).
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Requests per second each device may make (sustained; bursts of ten times that).
    pub device_requests_per_second: u32,
    /// Registrations per hour from one IP address.
    pub registrations_per_hour_per_ip: u32,
    /// How often expired rows are swept, in seconds.
    pub sweep_interval_secs: u64,
    /// Most bytes of files one account may keep on the server (and one group, of the files of
    /// messages kept by reference, which no account owns).
    pub blob_quota: u64,
    /// Most bytes the files of all groups may take together (counted as received: a file
    /// announced and not uploaded takes no room here, and expires within the hour).
    pub group_file_quota: u64,
    /// Bytes a second that one device, and one group, may have stored in queues (counting a
    /// copy per recipient), in bursts of 64 seconds' worth.
    pub submit_bytes_per_second: u64,
    /// How long an account whose term ended keeps working before it is suspended, seconds.
    pub account_grace_secs: u64,
    /// Where the admin API listens; `None` serves none.
    pub admin_listen: Option<SocketAddr>,
    /// The time the key directory vouches for in the roots it answers with.
    pub clock: Clock,
}

/// The server's clock, in Unix seconds: the system's, or one a test moves.
#[derive(Clone, Default)]
pub struct Clock(Option<std::sync::Arc<dyn Fn() -> u64 + Send + Sync>>);

impl Clock {
    /// A clock that reads `now`.
    pub fn from_fn(now: impl Fn() -> u64 + Send + Sync + 'static) -> Clock {
        Clock(Some(std::sync::Arc::new(now)))
    }

    /// The time now, Unix seconds.
    pub fn now_secs(&self) -> u64 {
        match &self.0 {
            Some(now) => now(),
            None => sotto_core::unix_now(),
        }
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Clock(custom)" } else { "Clock(system)" })
    }
}

impl Config {
    /// Refuses configurations that cannot or must not run: an invalid domain, or plain HTTP
    /// on a non-loopback address unless explicitly allowed.
    pub fn check(&self) -> Result<(), crate::Error> {
        if format!("x@{}", self.domain).parse::<sotto_core::Address>().is_err() {
            return Err(crate::Error::Config(format!(
                "{:?} is not a valid domain (a lower-case host name)",
                self.domain
            )));
        }
        if self.tls.is_none() && !self.listen.ip().is_loopback() && !self.danger_allow_plain_http {
            return Err(crate::Error::Config(format!(
                "refusing to serve plain HTTP on {}: give --tls-cert and --tls-key, or listen on \
                 loopback, or pass --danger-allow-plain-http behind a TLS-terminating proxy",
                self.listen
            )));
        }
        if let Some(admin) = self.admin_listen
            && !admin.ip().is_loopback()
        {
            return Err(crate::Error::Config(format!(
                "the admin API serves plain HTTP, so it listens on loopback only, not {admin}; \
                 reach it from elsewhere through an SSH tunnel"
            )));
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("sotto-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            domain: "localhost".into(),
            registration: RegistrationMode::Invite,
            tls: None,
            danger_allow_plain_http: false,
            token_ttl_secs: 3600,
            queue_limits: QueueLimits { max_messages: 10_000, max_bytes: 256 * 1024 * 1024 },
            message_ttl_secs: 30 * 86_400,
            max_connections: 10_000,
            max_connections_per_ip: 512,
            header_timeout_secs: 15,
            idle_timeout_secs: 90,
            trusted_proxies: Vec::new(),
            device_requests_per_second: 200,
            registrations_per_hour_per_ip: 30,
            sweep_interval_secs: 300,
            blob_quota: 8 << 30,
            group_file_quota: 64 << 30,
            submit_bytes_per_second: 8 << 20,
            account_grace_secs: 14 * 86_400,
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            clock: Clock::default(),
        }
    }
}
