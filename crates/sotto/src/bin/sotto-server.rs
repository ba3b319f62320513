//! `sotto-server`: runs the server, and mints invites for the operator.

use std::net::SocketAddr;
use std::path::PathBuf;

use std::io::Write as _;

use anyhow::Context;

/// `println!` that never panics: a reader that went away (`| head -1`) ends the output,
/// not the program.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}
use clap::{Parser, Subcommand, ValueEnum};
use sotto_server::admin::{self, Request};
use sotto_server::{Config, RegistrationMode, TlsFiles};

/// Sotto's server: relays end-to-end encrypted messages it cannot read.
///
/// With no arguments it serves on 127.0.0.1:7700 for addresses @localhost, keeping its
/// database in ./sotto-data. Registration is by invite: mint one with `sotto-server invite create`.
#[derive(Parser, Debug)]
#[command(name = "sotto-server", version, about, long_about, args_override_self = true)]
struct Cli {
    /// A TOML file of settings: each key is one of the long options below (`listen`,
    /// `tls-cert`, `queue-max-bytes`...; docs/deploy/sotto-server.toml has them all).
    /// Options given on the command line, then environment variables, win over the file.
    #[arg(long, env = "SOTTO_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Directory of the server's database.
    #[arg(long, env = "SOTTO_DATA", default_value = "sotto-data", global = true)]
    data: PathBuf,
    /// Log lines as `text` for people or `json` (one object a line) for a log collector.
    /// SOTTO_LOG sets the level: error, warn, info (the default: start, stop, operator
    /// actions, sweeps) or debug (every request's route, status and time; connections).
    #[arg(long, env = "SOTTO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
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
    /// Most bytes the files of messages kept by reference may take, all groups together
    /// (such a file names no account: it is its group's, and each group keeps within
    /// --blob-quota too). K, M or G.
    #[arg(long, env = "SOTTO_GROUP_FILE_QUOTA", default_value = "64G", value_parser = parse_size)]
    group_file_quota: u64,
    /// Bytes a second one device, and one group, may have queued (a copy per recipient
    /// counts; bursts of 64 seconds' worth). K, M or G.
    #[arg(long, env = "SOTTO_SUBMIT_RATE", default_value = "8M", value_parser = parse_size)]
    submit_rate: u64,
    /// How often expired messages and sessions are swept (e.g. 5m).
    #[arg(long, env = "SOTTO_SWEEP_INTERVAL", default_value = "5m", value_parser = sotto::parse_duration)]
    sweep_interval: u64,
    /// How long an account whose term ended keeps working before it is suspended (e.g. 14d).
    #[arg(long, env = "SOTTO_ACCOUNT_GRACE", default_value = "14d", value_parser = parse_duration_or_zero)]
    account_grace: u64,
    /// Where the admin API (operator commands, /metrics) listens: a loopback address and
    /// port, port 0 for any free one (recorded in DATA/admin.url), or `off`.
    #[arg(long, env = "SOTTO_ADMIN_LISTEN", default_value = "127.0.0.1:0", value_parser = parse_admin_listen)]
    admin_listen: AdminListen,
}

/// A duration that may be zero (`0`, `0s`, `0d`...).
fn parse_duration_or_zero(s: &str) -> Result<u64, String> {
    if s.trim().trim_end_matches(|c: char| c.is_ascii_alphabetic()) == "0" {
        return Ok(0);
    }
    sotto::parse_duration(s)
}

/// `--admin-listen`: an address, or `off`.
#[derive(Clone, Copy, Debug)]
struct AdminListen(Option<SocketAddr>);

fn parse_admin_listen(s: &str) -> Result<AdminListen, String> {
    if s == "off" {
        return Ok(AdminListen(None));
    }
    let addr: SocketAddr =
        s.parse().map_err(|_| format!("{s:?} is not an address:port (or `off`)"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address: the admin API listens on loopback only"
        ));
    }
    Ok(AdminListen(Some(addr)))
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
    /// it, letting the operator revoke and wipe their devices. A running server puts it in
    /// service at once.
    OperatorKey {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Act on a managed account's devices with the operator key.
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// The accounts this server hosts: list them, suspend, resume, give terms, delete.
    #[command(subcommand)]
    Accounts(AccountsCommand),
    /// Copy the data directory (both databases, the keys, the files) into a new directory,
    /// consistently, while the server serves. The copy holds the server's secret keys: keep
    /// it as safe as the data directory.
    Backup {
        /// A new directory (made owner-only; one that exists is refused).
        out: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put a backup back into --data, after checking every file against its manifest. The
    /// server must be stopped. Devices log in again; docs/operating.md says what else
    /// clients see.
    Restore {
        /// The backup's directory.
        from: PathBuf,
        /// Move what --data holds into DATA/replaced-TIME/ and restore over it.
        #[arg(long)]
        replace: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write manual pages (sotto-server.1 and one per subcommand) into a directory.
    Man {
        /// The directory (e.g. /usr/local/share/man/man1).
        dir: PathBuf,
    },
    /// Check the settings (from --config, the environment and the command line) without
    /// serving: print what the server would use, or what is wrong.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The audit log: every operator action (accounts, invites, the operator key), with who
    /// and when. Never message traffic.
    Audit {
        /// How many of the newest lines.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Every operator command goes to the running server's admin API (found through
/// DATA/admin.url, with the token in DATA/admin.token or SOTTO_ADMIN_TOKEN), which puts the
/// change in service at once; when no server runs on --data, it is carried out on the data
/// directory directly.
#[derive(Subcommand, Debug)]
enum AccountsCommand {
    /// Every account: its state, devices in use and revoked, when it registered and was
    /// last seen.
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
    /// Cut an account off: its devices get `account_suspended` and keep their data; messages
    /// sent to it wait in its queues. Live connections close at once.
    Suspend {
        /// The account.
        address: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Undo `suspend`.
    Resume {
        /// The account.
        address: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Give an account a term from now (e.g. 180d); after it and the grace period
    /// (--account-grace) its devices get `account_expired` until it is renewed.
    Term {
        /// The account.
        address: String,
        /// How long from now.
        #[arg(long, value_parser = sotto::parse_duration, required_unless_present = "none")]
        valid_for: Option<u64>,
        /// Remove the term instead.
        #[arg(long, conflicts_with = "valid_for")]
        none: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Extend an account's term: from its end, or from now if it has ended.
    Renew {
        /// The account.
        address: String,
        /// By how long (e.g. 180d).
        #[arg(long = "for", value_parser = sotto::parse_duration, default_value = "180d")]
        by: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete an account: revoke its devices, delete its queues, key packages, files and
    /// device list. The address stays taken, and the key directory records that it is gone.
    /// Cannot be undone.
    Delete {
        /// The account.
        address: String,
        /// Do it: without this, only say what would happen.
        #[arg(long)]
        yes: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate the settings and print them.
    Check {
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
        /// Give the accounts it creates a term (e.g. 180d), renewable with `accounts renew`.
        #[arg(long, value_parser = sotto::parse_duration)]
        valid_for: Option<u64>,
        /// Print JSON: {"id", "code", "expires_at", "uses", "valid_for"}.
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
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// ", last seen TIME" for a login time, if there was one.
fn last_seen(at: Option<u64>) -> String {
    at.map(|s| format!(", last seen {}", sotto::format_time(s.saturating_mul(1000))))
        .unwrap_or_default()
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

/// Options a settings file cannot hold.
const NOT_IN_FILE: &[&str] = &["config", "help", "version"];

/// The arguments a settings file stands for, placed before the command line's so that those
/// win. A key whose environment variable is set is skipped: the environment wins too.
fn file_args(
    path: &std::path::Path,
    command: &clap::Command,
    given: &std::collections::HashSet<String>,
) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the settings file {}", path.display()))?;
    let table: toml::Table =
        text.parse().map_err(|e| anyhow::anyhow!("{} is not valid TOML: {e}", path.display()))?;
    let settable: Vec<&clap::Arg> = command
        .get_arguments()
        .filter(|a| a.get_long().is_some_and(|l| !NOT_IN_FILE.contains(&l)))
        .collect();
    let mut args = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (key, value) in table {
        let long = key.replace('_', "-");
        if !seen.insert(long.clone()) {
            anyhow::bail!(
                "{}: {long} is set twice (as {key} and another spelling)",
                path.display()
            );
        }
        let Some(arg) = settable.iter().find(|a| a.get_long() == Some(long.as_str())) else {
            let names: Vec<&str> = settable.iter().filter_map(|a| a.get_long()).collect();
            anyhow::bail!(
                "{}: unknown setting {key:?}; the settings are {}",
                path.display(),
                names.join(", ")
            );
        };
        // The command line replaces the file's value (lists included), and so does the
        // environment.
        if given.contains(&long) || arg.get_env().is_some_and(|env| std::env::var_os(env).is_some())
        {
            continue;
        }
        let flag = matches!(arg.get_action(), clap::ArgAction::SetTrue);
        let text = |v: &toml::Value| match v {
            toml::Value::String(s) => Some(s.clone()),
            toml::Value::Integer(i) => Some(i.to_string()),
            _ => None,
        };
        match &value {
            toml::Value::Boolean(true) if flag => args.push(format!("--{long}")),
            toml::Value::Boolean(false) if flag => {}
            toml::Value::Array(items) if !flag => {
                let items: Option<Vec<String>> = items.iter().map(text).collect();
                let items = items.with_context(|| {
                    format!("{}: {key} takes a list of strings", path.display())
                })?;
                if !items.is_empty() {
                    args.push(format!("--{long}={}", items.join(",")));
                }
            }
            v if !flag => match text(v) {
                Some(v) => args.push(format!("--{long}={v}")),
                None => anyhow::bail!("{}: {key} takes a string or a number", path.display()),
            },
            _ => anyhow::bail!("{}: {key} takes true or false", path.display()),
        }
    }
    Ok(args)
}

/// The command line, with the settings file's values where neither the command line nor the
/// environment gives one.
fn parse_cli() -> anyhow::Result<Cli> {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let command = Cli::command();
    let cli = Cli::from_arg_matches(&command.clone().get_matches())?;
    let Some(path) = &cli.config else { return Ok(cli) };
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let given = argv
        .iter()
        .skip(1)
        .filter_map(|a| a.to_str()?.strip_prefix("--"))
        .filter_map(|a| a.split('=').next().map(str::to_owned))
        .collect();
    let from_file = file_args(path, &command, &given)?;
    argv.splice(1.min(argv.len())..1.min(argv.len()), from_file.into_iter().map(Into::into));
    Ok(Cli::from_arg_matches(&command.get_matches_from(argv))?)
}

fn main() -> anyhow::Result<()> {
    let cli = parse_cli()?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("SOTTO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(|| LossyStderr);
    match cli.log_format {
        LogFormat::Text => {
            logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init()
        }
        LogFormat::Json => logs.json().with_ansi(false).init(),
    }
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
        group_file_quota: cli.serve.group_file_quota,
        submit_bytes_per_second: cli.serve.submit_rate,
        account_grace_secs: cli.serve.account_grace,
        admin_listen: cli.serve.admin_listen.0,
        ..Config::default()
    };
    let (request, json) = match cli.command {
        None | Some(Command::Serve) => {
            // One serving process per data directory; the lock is taken before the store opens.
            config.check()?;
            let _lock = sotto_server::lock_data_dir(&config)?;
            sotto_server::check_no_interrupted_restore(&config)?;
            let store = sotto_server::open_store(&config)?;
            return serve(config, store);
        }
        Some(Command::Operator(OperatorCommand::Wipe { address, device, server })) => {
            return operator_wipe(&config, &address, device, server);
        }
        Some(Command::Config(ConfigCommand::Check { json })) => {
            return config_check(&config, json);
        }
        Some(Command::Completions { shell }) => {
            use clap::CommandFactory as _;
            sotto::packaging::completions(Cli::command(), shell, &mut std::io::stdout());
            return Ok(());
        }
        Some(Command::Man { dir }) => {
            use clap::CommandFactory as _;
            let pages = sotto::packaging::man_pages(Cli::command(), &dir)
                .with_context(|| format!("cannot write manual pages into {}", dir.display()))?;
            say!("wrote {} manual page(s) into {}", pages.len(), dir.display());
            return Ok(());
        }
        Some(Command::Backup { out, json }) => {
            let manifest = sotto_server::backup::backup(&config, &out)?;
            let bytes: u64 = manifest.files.iter().map(|f| f.size).sum();
            if json {
                say!(
                    "{}",
                    serde_json::json!({
                        "dir": out, "created_at": manifest.created_at,
                        "files": manifest.files.len(), "bytes": bytes,
                    })
                );
            } else {
                say!(
                    "backed up {} file(s), {bytes} bytes, into {}; it holds the server's keys: \
                     keep it safe",
                    manifest.files.len(),
                    out.display()
                );
            }
            return Ok(());
        }
        Some(Command::Restore { from, replace, json }) => {
            let _lock = sotto_server::lock_data_dir(&config).map_err(|e| match e {
                sotto_server::Error::InUse(why) => {
                    anyhow::anyhow!("{why}; a restore needs the server stopped")
                }
                other => other.into(),
            })?;
            let restored =
                sotto_server::backup::restore(&config, &from, replace, &operator_name())?;
            if json {
                say!(
                    "{}",
                    serde_json::json!({
                        "created_at": restored.manifest.created_at,
                        "files": restored.manifest.files.len(),
                        "previous": restored.previous,
                    })
                );
            } else {
                say!(
                    "restored the backup taken {} into {}",
                    sotto::format_time(restored.manifest.created_at.saturating_mul(1000)),
                    config.data_dir.display()
                );
                if let Some(previous) = &restored.previous {
                    say!("what it held before is in {}", previous.display());
                }
            }
            return Ok(());
        }
        Some(Command::Invite(c)) => match c {
            InviteCommand::Create { expires, uses, valid_for, json } => {
                (Request::InviteCreate { expires_in: expires, uses, valid_for }, json)
            }
            InviteCommand::List { json } => (Request::InviteList {}, json),
            InviteCommand::Revoke { id, json } => (Request::InviteRevoke { id }, json),
        },
        Some(Command::OperatorKey { json }) => (Request::OperatorKey {}, json),
        Some(Command::Audit { limit, json }) => (Request::Audit { limit }, json),
        Some(Command::Accounts(c)) => match c {
            AccountsCommand::List { json } => (Request::AccountsList {}, json),
            AccountsCommand::Show { address, json } => (Request::AccountsShow { address }, json),
            AccountsCommand::Suspend { address, json } => {
                (Request::AccountsSuspend { address }, json)
            }
            AccountsCommand::Resume { address, json } => {
                (Request::AccountsResume { address }, json)
            }
            AccountsCommand::Term { address, valid_for, none: _, json } => {
                (Request::AccountsTerm { address, valid_for }, json)
            }
            AccountsCommand::Renew { address, by, json } => {
                (Request::AccountsRenew { address, by }, json)
            }
            AccountsCommand::Delete { address, yes: false, .. } => anyhow::bail!(
                "this deletes {address}: its devices are revoked, its queued messages, key \
                 packages, files and device list are deleted, and the address stays taken. It \
                 cannot be undone; add --yes to do it"
            ),
            AccountsCommand::Delete { address, yes: true, json } => {
                (Request::AccountsDelete { address }, json)
            }
        },
    };
    let answer = admin_request(&config, &request)?;
    if json {
        say!("{answer}");
    } else {
        print_answer(&config, &request, &answer);
    }
    Ok(())
}

/// `config check`: the settings the server would run with, or what is wrong with them.
fn config_check(config: &Config, json: bool) -> anyhow::Result<()> {
    config.check()?;
    if let Some(tls) = &config.tls {
        for file in [&tls.cert, &tls.key] {
            std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?;
        }
    }
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    let settings = serde_json::json!({
        "data": config.data_dir, "listen": config.listen.to_string(), "scheme": scheme,
        "domain": config.domain,
        "registration": format!("{:?}", config.registration).to_ascii_lowercase(),
        "admin_listen": config.admin_listen.map(|a| a.to_string()),
        "queue_max_messages": config.queue_limits.max_messages,
        "queue_max_bytes": config.queue_limits.max_bytes,
        "message_ttl_secs": config.message_ttl_secs,
        "max_connections": config.max_connections,
        "max_connections_per_ip": config.max_connections_per_ip,
        "header_timeout_secs": config.header_timeout_secs,
        "idle_timeout_secs": config.idle_timeout_secs,
        "trusted_proxies": config.trusted_proxies.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "device_requests_per_second": config.device_requests_per_second,
        "registrations_per_hour_per_ip": config.registrations_per_hour_per_ip,
        "blob_quota": config.blob_quota,
        "group_file_quota": config.group_file_quota,
        "submit_bytes_per_second": config.submit_bytes_per_second,
        "sweep_interval_secs": config.sweep_interval_secs,
        "account_grace_secs": config.account_grace_secs,
    });
    if json {
        say!("{settings}");
    } else {
        say!(
            "settings are valid: serving {scheme}://{} for @{} from {}",
            config.listen,
            config.domain,
            config.data_dir.display()
        );
        if let Some(map) = settings.as_object() {
            for (key, value) in map {
                say!("  {key} = {value}");
            }
        }
    }
    Ok(())
}

/// Who runs this command, for the audit log.
fn operator_name() -> String {
    std::env::var("SOTTO_OPERATOR")
        .or_else(|_| std::env::var("USER"))
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// Carries out an operator's request: through the running server's admin API, or on the data
/// directory when no server runs (holding the directory's lock meanwhile, so none starts).
fn admin_request(config: &Config, request: &Request) -> anyhow::Result<serde_json::Value> {
    let reads_only = matches!(
        request,
        Request::AccountsList {}
            | Request::AccountsShow { .. }
            | Request::InviteList {}
            | Request::Audit { .. }
    );
    if reads_only && !config.data_dir.join("sotto.db").exists() {
        anyhow::bail!(
            "{} holds no server data; give the server's --data (or its --config)",
            config.data_dir.display()
        );
    }
    match sotto_server::lock_data_dir(config) {
        Ok(_lock) => {
            let store = sotto_server::open_store(config)?;
            Ok(admin::execute_offline(config, store.as_ref(), request.clone(), &operator_name())?)
        }
        Err(sotto_server::Error::InUse(_)) => {
            // A server that is starting records its admin address just after its lock.
            let mut url = admin::admin_url(config);
            for _ in 0..50 {
                if url.is_some() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
                url = admin::admin_url(config);
            }
            let url = url.with_context(|| {
                format!(
                    "a server runs on {} without an admin API (--admin-listen off); stop it, \
                     or restart it with one",
                    config.data_dir.display()
                )
            })?;
            let token = match std::env::var("SOTTO_ADMIN_TOKEN") {
                Ok(t) => t,
                Err(_) => admin::admin_token(config)?,
            };
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(std::time::Duration::from_secs(60)))
                .build()
                .into();
            let mut resp = agent
                .post(&format!("{url}/admin/v1"))
                .header("Authorization", &format!("Bearer {token}"))
                .send_json(admin::Call { operator: operator_name(), request: request.clone() })
                .with_context(|| format!("cannot reach the server's admin API at {url}"))?;
            let body: serde_json::Value = resp.body_mut().read_json().unwrap_or_default();
            if !resp.status().is_success() {
                anyhow::bail!(
                    "{}",
                    body["error"]["message"].as_str().unwrap_or("the admin API refused")
                );
            }
            Ok(body)
        }
        Err(e) => Err(e.into()),
    }
}

fn time(at: &serde_json::Value) -> String {
    at.as_u64().map(|s| sotto::format_time(s.saturating_mul(1000))).unwrap_or_default()
}

/// An account's line: its state and devices.
fn account_line(a: &serde_json::Value) -> String {
    let state = match a["state"].as_str().unwrap_or("") {
        "active" => match a["valid_until"].as_u64() {
            Some(_) => format!("active until {}", time(&a["valid_until"])),
            None => "active".into(),
        },
        "grace" => format!("in grace: its term ended {}", time(&a["valid_until"])),
        "expired" => format!("expired: its term ended {}", time(&a["valid_until"])),
        "suspended" => format!("suspended {}", time(&a["suspended_at"])),
        "deleted" => format!("deleted {}", time(&a["deleted_at"])),
        other => other.to_string(),
    };
    let revoked = match a["revoked_devices"].as_u64() {
        Some(n) if n > 0 => format!(" ({n} revoked)"),
        _ => String::new(),
    };
    format!(
        "{}  {state}; {} device(s){revoked}, registered {}{}",
        a["address"].as_str().unwrap_or(""),
        a["devices"],
        time(&a["created_at"]),
        last_seen(a["last_seen"].as_u64())
    )
}

/// Prints an answer for people.
fn print_answer(config: &Config, request: &Request, answer: &serde_json::Value) {
    let empty = Vec::new();
    let list = answer.as_array().unwrap_or(&empty);
    match request {
        Request::AccountsList {} if list.is_empty() => say!("no accounts yet"),
        Request::AccountsList {} => list.iter().for_each(|a| say!("{}", account_line(a))),
        Request::AccountsShow { .. } => {
            say!("{}", account_line(answer));
            let how = if answer["managed"] == true {
                "managed (operator wipe works)"
            } else {
                "not managed"
            };
            say!("  {how}");
            for d in answer["device_list"].as_array().unwrap_or(&empty) {
                let state = match d["revoked_at"].as_u64() {
                    Some(_) => format!("revoked {}", time(&d["revoked_at"])),
                    None => "active".into(),
                };
                say!(
                    "  device {:>4}  {state}, linked {}{}",
                    d["device_id"],
                    time(&d["created_at"]),
                    last_seen(d["last_seen"].as_u64())
                );
            }
        }
        Request::AccountsSuspend { .. }
        | Request::AccountsResume { .. }
        | Request::AccountsTerm { .. }
        | Request::AccountsRenew { .. }
        | Request::AccountsDelete { .. } => say!("{}", account_line(answer)),
        Request::InviteCreate { .. } => {
            say!("{}", answer["code"].as_str().unwrap_or(""));
            let term = match answer["valid_for"].as_u64() {
                Some(secs) => format!("; the accounts it creates last {} day(s)", secs / 86_400),
                None => String::new(),
            };
            eprintln!(
                "valid for {} registration(s) until {}{term}",
                answer["uses"],
                time(&answer["expires_at"])
            );
        }
        Request::InviteList {} if list.is_empty() => {
            say!("no invites; `sotto-server invite create` mints one")
        }
        Request::InviteList {} => {
            for i in list {
                let state = if i["expired"] == true { "expired" } else { "valid until" };
                say!(
                    "{}  {} use(s) left, {state} {}",
                    i["id"].as_str().unwrap_or(""),
                    i["uses_left"],
                    time(&i["expires_at"])
                );
            }
        }
        Request::InviteRevoke { id } => {
            say!("invite {id} withdrawn: its code registers nobody from now on")
        }
        Request::Audit { .. } if list.is_empty() => say!("the audit log is empty"),
        Request::Audit { .. } => {
            for l in list {
                let detail = l["detail"].as_str().filter(|d| !d.is_empty());
                say!(
                    "{}  {}  {} {}{}",
                    time(&l["at"]),
                    sotto::terminal_line(l["actor"].as_str().unwrap_or("")),
                    l["action"].as_str().unwrap_or(""),
                    sotto::terminal_line(l["subject"].as_str().unwrap_or("")),
                    detail.map(|d| format!(" ({})", sotto::terminal_line(d))).unwrap_or_default()
                );
            }
        }
        Request::OperatorKey {} => {
            say!("{}", answer["operator_key"].as_str().unwrap_or(""));
            eprintln!(
                "operator key in {}; it is in service (a server started later reads it too). \
                 Accounts registered with `sotto register --managed` accept it.",
                config.data_dir.join("operator.key").display()
            );
        }
    }
}

/// `operator wipe`: signs the order with the operator key and hands it to the server.
fn operator_wipe(
    config: &Config,
    address: &str,
    device: u64,
    server: Option<String>,
) -> anyhow::Result<()> {
    let store = sotto_server::open_store(config)?;
    let command = sotto_server::operator_wipe_command(config, store.as_ref(), address, device)?;
    let server = server
        .or_else(|| sotto_server::serving_url(config))
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
    say!("device {device} of {address} is revoked and will erase itself");
    Ok(())
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
        let admin = sotto_server::bind_admin(&config).await?;
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
        sotto_server::serve_with_admin(config, store, listener, admin, shutdown_signal()).await?;
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_documented_settings_file_has_every_setting() {
        let text = include_str!("../../../../docs/deploy/sotto-server.toml");
        let example: toml::Table = text.parse().expect("TOML");
        let command = Cli::command();
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long().filter(|l| !NOT_IN_FILE.contains(l)) else {
                continue;
            };
            // Settings shown commented out count too (the TLS files have no default).
            let set = |l: &str| l.trim_start_matches("# ").starts_with(&format!("{long} = "));
            assert!(text.lines().any(set), "docs/deploy/sotto-server.toml lacks {long}");
        }
        for key in example.keys() {
            assert!(
                command.get_arguments().any(|a| a.get_long() == Some(key.as_str())),
                "{key} is not a setting"
            );
        }
    }
}
