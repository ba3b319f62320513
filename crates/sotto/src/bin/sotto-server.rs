//! `sotto-server`: runs the server, and mints invites for the operator.

use std::net::SocketAddr;
use std::path::PathBuf;

use std::io::Write as _;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use sotto_server::{Config, RegistrationMode, TlsFiles};

/// Sotto's server: relays end-to-end encrypted messages it cannot read.
///
/// With no arguments it serves on 127.0.0.1:7700 for addresses @localhost, keeping its
/// database in ./sotto-data. Registration is by invite: mint one with `sotto-server invite create`.
#[derive(Parser, Debug)]
#[command(name = "sotto-server", version, about, long_about)]
struct Cli {
    /// Directory of the server's database.
    #[arg(long, env = "SOTTO_DATA", default_value = "sotto-data", global = true)]
    data: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Address and port to listen on (port 0 picks a free one; the chosen address is printed).
    #[arg(long, env = "SOTTO_LISTEN", default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// The domain of the addresses this server hosts (alice@DOMAIN).
    #[arg(long, env = "SOTTO_DOMAIN", default_value = "localhost")]
    domain: String,
    /// Who may register: `invite` (with a code from `invite create`) or `open` (anyone; for
    /// development).
    #[arg(long, env = "SOTTO_REGISTRATION", value_enum, default_value_t = Registration::Invite)]
    registration: Registration,
    /// PEM certificate chain: serve HTTPS.
    #[arg(long, env = "SOTTO_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "SOTTO_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address (only behind a TLS-terminating proxy).
    #[arg(long)]
    danger_allow_plain_http: bool,
    /// Most messages waiting in one device's queue; senders then get `queue_full`.
    #[arg(long, env = "SOTTO_QUEUE_MAX_MESSAGES", default_value_t = 10_000)]
    queue_max_messages: u64,
    /// Most bytes waiting in one device's queue (a number with K, M or G).
    #[arg(long, env = "SOTTO_QUEUE_MAX_BYTES", default_value = "256M", value_parser = parse_size)]
    queue_max_bytes: u64,
    /// How long an undelivered message waits before it expires (e.g. 30d, 12h).
    #[arg(long, env = "SOTTO_MESSAGE_TTL", default_value = "30d", value_parser = sotto::parse_duration)]
    message_ttl: u64,
    /// Most simultaneous connections; further ones wait until one closes.
    #[arg(long, env = "SOTTO_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// Most simultaneous connections from one IP address; further ones are closed at once.
    /// Raise it for an office whose people share one address behind NAT.
    #[arg(long, env = "SOTTO_MAX_CONNECTIONS_PER_IP", default_value_t = 512)]
    max_connections_per_ip: usize,
    /// How long a client gets to send a request's headers (e.g. 15s).
    #[arg(long, env = "SOTTO_HEADER_TIMEOUT", default_value = "15s", value_parser = sotto::parse_duration)]
    header_timeout: u64,
    /// How long a connection may move no byte either way before it is closed (e.g. 90s).
    #[arg(long, env = "SOTTO_IDLE_TIMEOUT", default_value = "90s", value_parser = sotto::parse_duration)]
    idle_timeout: u64,
    /// The address of a reverse proxy in front of the server (repeat for several): its
    /// X-Forwarded-For header names the client, and the per-address connection cap spares it.
    #[arg(long = "trusted-proxy", env = "SOTTO_TRUSTED_PROXIES", value_delimiter = ',')]
    trusted_proxies: Vec<std::net::IpAddr>,
    /// Requests per second one device may make (bursts of ten times that).
    #[arg(long, env = "SOTTO_DEVICE_RATE", default_value_t = 200)]
    device_rate: u32,
    /// Registration attempts per hour from one IP address.
    #[arg(long, env = "SOTTO_REGISTRATION_RATE", default_value_t = 30)]
    registration_rate: u32,
    /// Most bytes of attached files one account may keep on the server (K, M or G).
    #[arg(long, env = "SOTTO_BLOB_QUOTA", default_value = "8G", value_parser = parse_size)]
    blob_quota: u64,
    /// Bytes a second one device, and one group, may have queued (a copy per recipient
    /// counts; bursts of 64 seconds' worth). K, M or G.
    #[arg(long, env = "SOTTO_SUBMIT_RATE", default_value = "8M", value_parser = parse_size)]
    submit_rate: u64,
    /// How often expired messages and sessions are swept (e.g. 5m).
    #[arg(long, env = "SOTTO_SWEEP_INTERVAL", default_value = "5m", value_parser = sotto::parse_duration)]
    sweep_interval: u64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Registration {
    Invite,
    Open,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Manage invite codes.
    #[command(subcommand)]
    Invite(InviteCommand),
    /// Create (once) and print the operator key. Accounts registered with `--managed` accept
    /// it, letting the operator revoke and wipe their devices. Restart the server after
    /// creating it so it is published.
    OperatorKey,
    /// Act on a managed account's devices with the operator key.
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// The accounts this server hosts (read from the data directory; works while it serves).
    #[command(subcommand)]
    Accounts(AccountsCommand),
}

#[derive(Subcommand, Debug)]
enum AccountsCommand {
    /// Every account: devices in use and revoked, when it registered and was last seen.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One account and its devices (their ids are what `operator wipe` takes).
    Show {
        /// The account.
        address: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum OperatorCommand {
    /// Revoke a device of a managed account and order it to erase itself. Unmanaged accounts
    /// refuse: only their owner can do that.
    Wipe {
        /// The account.
        address: String,
        /// The device id.
        device: u64,
        /// The running server's URL [default: where the server serving --data said it
        /// listens, else http:// and the --listen address].
        #[arg(long)]
        server: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum InviteCommand {
    /// Mint an invite code and print it.
    Create {
        /// How long the code stays valid: a number with s, m, h, d or w (e.g. 30m, 7d).
        #[arg(long, default_value = "7d", value_parser = sotto::parse_duration)]
        expires: u64,
        /// How many accounts the code can create.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        uses: u32,
        /// Print JSON: {"code", "expires_at", "uses"}.
        #[arg(long)]
        json: bool,
    },
    /// The invites not used up, expired ones included. Codes are not kept (only their
    /// hashes): an invite is named by the start of its hash.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Withdraw an invite: its id from `invite list` (or an unambiguous start of it).
    Revoke {
        /// The invite's id.
        id: String,
    },
}

/// ", last seen TIME" for a login time, if there was one.
fn last_seen(at: Option<u64>) -> String {
    at.map(|s| format!(", last seen {}", sotto::format_time(s.saturating_mul(1000))))
        .unwrap_or_default()
}

/// How an invite is named: the start of its code's hash (the code itself is not kept).
fn invite_id(code_hash: &[u8]) -> String {
    hex::encode(code_hash.get(..6).unwrap_or(code_hash))
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size like 512K or 256M"))?;
    let mult: u64 = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => return Err(format!("unknown unit {unit:?}: use K, M or G")),
    };
    n.checked_mul(mult).filter(|v| *v > 0).ok_or_else(|| "the size must be positive".into())
}

/// Standard error for log lines, which never fails: a line that cannot be written (stderr
/// redirected to a full disk, a closed pipe) is dropped. Logging must never take the server
/// down or leave a request unanswered.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SOTTO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(|| LossyStderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = Config {
        data_dir: cli.data.clone(),
        listen: cli.serve.listen,
        domain: cli.serve.domain.trim().to_ascii_lowercase(),
        registration: match cli.serve.registration {
            Registration::Invite => RegistrationMode::Invite,
            Registration::Open => RegistrationMode::Open,
        },
        tls: match (cli.serve.tls_cert, cli.serve.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            _ => None,
        },
        danger_allow_plain_http: cli.serve.danger_allow_plain_http,
        queue_limits: sotto_server::store::QueueLimits {
            max_messages: cli.serve.queue_max_messages.max(1),
            max_bytes: cli.serve.queue_max_bytes,
        },
        message_ttl_secs: cli.serve.message_ttl,
        max_connections: cli.serve.max_connections.max(1),
        max_connections_per_ip: cli.serve.max_connections_per_ip.max(1),
        header_timeout_secs: cli.serve.header_timeout.max(1),
        idle_timeout_secs: cli.serve.idle_timeout.max(1),
        trusted_proxies: cli.serve.trusted_proxies,
        device_requests_per_second: cli.serve.device_rate.max(1),
        registrations_per_hour_per_ip: cli.serve.registration_rate.max(1),
        sweep_interval_secs: cli.serve.sweep_interval,
        blob_quota: cli.serve.blob_quota,
        submit_bytes_per_second: cli.serve.submit_rate,
        ..Config::default()
    };
    // One serving process per data directory; the lock is taken before the store opens.
    let serving = matches!(cli.command, None | Some(Command::Serve));
    let _lock = if serving {
        config.check()?;
        Some(sotto_server::lock_data_dir(&config)?)
    } else {
        None
    };
    let store = sotto_server::open_store(&config)?;
    match cli.command {
        Some(Command::Invite(InviteCommand::Create { expires, uses, json })) => {
            let invite = sotto_server::create_invite(store.as_ref(), expires, uses)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "code": invite.code, "expires_at": invite.expires_at, "uses": invite.uses
                    })
                );
            } else {
                println!("{}", invite.code);
                eprintln!(
                    "valid for {} registration(s) until {} (Unix time {})",
                    invite.uses,
                    sotto::format_time(invite.expires_at * 1000),
                    invite.expires_at
                );
            }
            Ok(())
        }
        Some(Command::OperatorKey) => {
            let key = sotto_server::create_operator_key(&config)?;
            println!("{}", hex::encode(key.public()));
            eprintln!(
                "operator key in {}; restart sotto-server to publish it. Accounts registered \
                 with `sotto register --managed` accept it.",
                config.data_dir.join("operator.key").display()
            );
            Ok(())
        }
        Some(Command::Operator(OperatorCommand::Wipe { address, device, server })) => {
            let command =
                sotto_server::operator_wipe_command(&config, store.as_ref(), &address, device)?;
            let server = server
                .or_else(|| sotto_server::serving_url(&config))
                .unwrap_or_else(|| format!("http://{}", config.listen));
            let url = format!("{}/v1/operator/wipe", server.trim_end_matches('/'));
            let agent: ureq::Agent =
                ureq::Agent::config_builder().http_status_as_error(false).build().into();
            let mut resp = agent
                .post(&url)
                .send_json(&command)
                .with_context(|| format!("cannot reach the server at {server}; is it running?"))?;
            let body: serde_json::Value = resp.body_mut().read_json().unwrap_or_default();
            if !resp.status().is_success() {
                anyhow::bail!(
                    "the server refused: {}",
                    body["error"]["message"].as_str().unwrap_or("unknown error")
                );
            }
            println!("device {device} of {address} is revoked and will erase itself");
            Ok(())
        }
        Some(Command::Invite(InviteCommand::List { json })) => {
            let now = sotto_core::unix_now();
            let invites = store.invites()?;
            if json {
                let list: Vec<serde_json::Value> = invites
                    .iter()
                    .map(|i| {
                        serde_json::json!({
                            "id": invite_id(&i.code_hash), "created_at": i.created_at,
                            "expires_at": i.expires_at, "uses_left": i.uses_left,
                            "expired": i.expires_at <= now,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else if invites.is_empty() {
                println!("no invites; `sotto-server invite create` mints one");
            } else {
                for i in &invites {
                    let state = if i.expires_at <= now { "expired" } else { "valid until" };
                    println!(
                        "{}  {} use(s) left, {state} {}",
                        invite_id(&i.code_hash),
                        i.uses_left,
                        sotto::format_time(i.expires_at.saturating_mul(1000))
                    );
                }
            }
            Ok(())
        }
        Some(Command::Invite(InviteCommand::Revoke { id })) => {
            let prefix = hex::decode(id.trim())
                .ok()
                .filter(|p| !p.is_empty())
                .context("an invite id is hex, from `sotto-server invite list`")?;
            match store.revoke_invite(&prefix)? {
                0 => anyhow::bail!("no invite has the id {id}"),
                1 => {
                    println!("invite {id} withdrawn: its code registers nobody from now on");
                    Ok(())
                }
                _ => anyhow::bail!("several invites start with {id}: give more of the id"),
            }
        }
        Some(Command::Accounts(AccountsCommand::List { json })) => {
            let accounts = store.accounts()?;
            if json {
                let list: Vec<serde_json::Value> = accounts
                    .iter()
                    .map(|a| {
                        serde_json::json!({
                            "address": a.address, "created_at": a.created_at,
                            "devices": a.devices, "revoked_devices": a.revoked,
                            "last_seen": a.last_seen,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else if accounts.is_empty() {
                println!("no accounts yet");
            } else {
                for a in &accounts {
                    let seen = last_seen(a.last_seen);
                    println!(
                        "{}  {} device(s){}, registered {}{seen}",
                        a.address,
                        a.devices,
                        if a.revoked > 0 {
                            format!(" ({} revoked)", a.revoked)
                        } else {
                            String::new()
                        },
                        sotto::format_time(a.created_at.saturating_mul(1000))
                    );
                }
            }
            Ok(())
        }
        Some(Command::Accounts(AccountsCommand::Show { address, json })) => {
            let address = address.trim().to_ascii_lowercase();
            let devices = store.devices(&address)?;
            if devices.is_empty() {
                anyhow::bail!("no account {address} on this server");
            }
            let managed = store.device_list(&address)?.and_then(|l| l.operator_key).is_some();
            if json {
                let list: Vec<serde_json::Value> = devices
                    .iter()
                    .map(|d| {
                        serde_json::json!({
                            "device_id": d.device_id, "created_at": d.created_at,
                            "revoked_at": d.revoked_at, "last_seen": d.last_seen,
                            "device_key": hex::encode(&d.device_key),
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({ "address": address, "managed": managed, "devices": list })
                );
            } else {
                let how = if managed { "managed (operator wipe works)" } else { "not managed" };
                println!("{address}: {how}");
                for d in &devices {
                    let state = match d.revoked_at {
                        Some(t) => {
                            format!("revoked {}", sotto::format_time(t.saturating_mul(1000)))
                        }
                        None => "active".into(),
                    };
                    let seen = last_seen(d.last_seen);
                    println!(
                        "  device {:>4}  {state}, linked {}{seen}",
                        d.device_id,
                        sotto::format_time(d.created_at.saturating_mul(1000))
                    );
                }
            }
            Ok(())
        }
        None | Some(Command::Serve) => serve(config, store),
    }
}

fn serve(
    config: Config,
    store: std::sync::Arc<dyn sotto_server::store::Store>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = sotto_server::bind(&config).await?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        // Scripts read the address from this line; if stdout cannot take it, serve anyway.
        let mut out = std::io::stdout();
        let _ =
            writeln!(out, "sotto-server listening on {scheme}://{addr} (domain {})", config.domain)
                .and_then(|()| out.flush());
        // Where the subcommands that talk to this server find it.
        let host = if addr.ip().is_unspecified() {
            std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
        } else {
            addr
        };
        sotto_server::record_serving_url(&config, &format!("{scheme}://{host}"))?;
        tracing::info!(
            data = %config.data_dir.display(),
            registration = ?config.registration,
            "serving"
        );
        sotto_server::serve(config, store, listener, shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
