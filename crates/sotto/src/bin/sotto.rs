//! `sotto`: the command-line client.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use sotto::format_time;
use sotto_client::{ChatSummary, Client, Error, MessageView, Target};

/// Sotto: end-to-end encrypted messaging through a server that cannot read it.
///
/// Each home directory (--home, or SOTTO_HOME) holds one device of one account: its keys,
/// chats and messages. Every command takes --json and then prints one JSON document
/// (`listen` prints one per line); errors are then printed as {"error": {"code", "message"}}.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Cli {
    /// This device's home directory [default: ~/.local/share/sotto].
    #[arg(long, env = "SOTTO_HOME", global = true)]
    home: Option<PathBuf>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create an account on a server and make this home its first device.
    Register {
        /// The address to register, e.g. alice@example.org.
        address: String,
        /// The server's URL.
        #[arg(long, env = "SOTTO_SERVER", default_value = "http://127.0.0.1:7700")]
        server: String,
        /// The invite code from the server's operator.
        #[arg(long, env = "SOTTO_INVITE")]
        invite: Option<String>,
        /// Trust only this CA certificate (PEM) for the server's TLS certificate.
        #[arg(long)]
        ca_cert: Option<PathBuf>,
    },
    /// Show this home's account and device.
    Whoami,
    /// Send a message: `sotto send ADDRESS TEXT`, or `sotto send --group CHAT TEXT`.
    /// TEXT `-` reads the message from standard input.
    Send {
        /// Send to this chat (id, id prefix or group name) instead of an address.
        #[arg(long, short)]
        group: Option<String>,
        /// ADDRESS TEXT, or TEXT with --group.
        #[arg(required = true, num_args = 1..=2, value_names = ["ADDRESS", "TEXT"])]
        args: Vec<String>,
    },
    /// Fetch and decrypt everything that arrived, and print it.
    Sync,
    /// Stay connected and print messages as they arrive (one JSON object per line with --json).
    Listen {
        /// Stop after this many seconds.
        #[arg(long)]
        timeout: Option<u64>,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<usize>,
    },
    /// List conversations.
    Chats,
    /// Show a conversation's messages.
    History {
        /// The chat: an address (direct chat), a chat id or prefix, or a group name.
        chat: String,
        /// How many of the latest messages to show.
        #[arg(long, short = 'n', default_value_t = 50)]
        limit: usize,
    },
    /// Create and manage groups.
    #[command(subcommand)]
    Group(GroupCommand),
}

#[derive(Subcommand, Debug)]
enum GroupCommand {
    /// Create a group.
    Create {
        /// The group's name.
        name: String,
        /// Members to add, comma-separated.
        #[arg(long, short, value_delimiter = ',')]
        members: Vec<String>,
    },
    /// Add members; they will read what is sent from now on.
    Add {
        /// The group (id, id prefix or name).
        chat: String,
        /// Addresses to add.
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Remove members; they cannot read anything sent afterwards.
    Remove {
        /// The group (id, id prefix or name).
        chat: String,
        /// Addresses to remove.
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Leave a group.
    Leave {
        /// The group (id, id prefix or name).
        chat: String,
    },
}

fn default_home() -> PathBuf {
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(data).join("sotto");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/sotto"),
        None => PathBuf::from(".sotto"),
    }
}

/// A stable code for each error, for scripts.
fn error_code(e: &Error) -> String {
    match e {
        Error::NotRegistered(_) => "not_registered".into(),
        Error::AlreadyRegistered(..) => "already_registered".into(),
        Error::Unreachable { .. } => "unreachable".into(),
        Error::Server { code, .. } => code.clone(),
        Error::Protocol(_) => "protocol".into(),
        Error::Invalid(_) => "invalid_input".into(),
        Error::UnknownChat(_) => "unknown_chat".into(),
        Error::AmbiguousChat(_) => "ambiguous_chat".into(),
        Error::NoKeyPackages(_) => "no_key_packages".into(),
        Error::NotActive(_) => "not_a_member".into(),
        Error::TooManyRetries => "too_many_retries".into(),
        Error::Core(sotto_core::Error::InvalidAddress(_)) => "invalid_address".into(),
        Error::Core(sotto_core::Error::NotAMember(_)) => "unknown_member".into(),
        Error::Core(_) => "crypto".into(),
        Error::Database(_) => "local_database".into(),
        _ => "internal".into(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"error": {"code": error_code(&e), "message": e.to_string()}})
                );
            } else {
                eprintln!("sotto: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

fn print_json(value: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

fn print_message(m: &MessageView) {
    let when = format_time(m.sent_at);
    let status = match m.status.as_str() {
        "pending" => " (sending)",
        "failed" => " (not sent)",
        _ => "",
    };
    if m.kind == "event" {
        println!("[{when}] {}: * {}", m.chat_name, m.body);
    } else {
        println!("[{when}] {} <{}> {}{status}", m.chat_name, m.sender, m.body);
    }
}

fn print_chat(c: &ChatSummary) {
    let title = match (c.kind.as_str(), &c.peer, &c.name) {
        ("direct", Some(p), _) => p.clone(),
        (_, _, Some(n)) => format!("{n} (group)"),
        _ => "(unnamed group)".into(),
    };
    let state = if c.state == "active" { String::new() } else { format!(" [{}]", c.state) };
    println!("{}  {title}{state}", &c.id);
    if !c.members.is_empty() {
        println!("    members: {}", c.members.join(", "));
    }
    println!(
        "    {} message(s){}",
        c.messages,
        c.last_message_at.map(|t| format!(", last {}", format_time(t))).unwrap_or_default()
    );
}

fn run(cli: Cli) -> Result<(), Error> {
    let home = cli.home.clone().unwrap_or_else(default_home);
    let json = cli.json;
    match cli.command {
        Command::Register { address, server, invite, ca_cert } => {
            let ca = ca_cert.map(|p| p.display().to_string());
            let client =
                Client::register(&home, &server, &address, invite.as_deref(), ca.as_deref())?;
            let a = client.account();
            if json {
                print_json(&a);
            } else {
                println!("registered {} (device {}) on {}", a.address, a.device_id, a.server);
                println!("home: {}", home.display());
            }
        }
        Command::Whoami => {
            let a = Client::open(&home)?.account();
            if json {
                print_json(&a);
            } else {
                println!("{} (device {}) on {}", a.address, a.device_id, a.server);
                println!("device key: {}", a.device_key);
            }
        }
        Command::Send { group, args } => {
            let (target, text) = match (group, args.as_slice()) {
                (Some(g), [text]) => (Target::Chat(g), text.clone()),
                (None, [to, text]) => {
                    (Target::Address(to.parse().map_err(Error::Core)?), text.clone())
                }
                (Some(_), _) => {
                    return Err(Error::Invalid("with --group, give only the text".into()));
                }
                (None, _) => {
                    return Err(Error::Invalid(
                        "give ADDRESS and TEXT, or --group CHAT and TEXT".into(),
                    ));
                }
            };
            let text = if text == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map_err(|e| Error::Io(format!("reading standard input: {e}")))?;
                s.trim_end_matches('\n').to_string()
            } else {
                text
            };
            let mut client = Client::open(&home)?;
            let sent = client.send_text(&target, &text)?;
            if json {
                print_json(&sent);
            } else {
                print_message(&sent);
            }
        }
        Command::Sync => {
            let mut client = Client::open(&home)?;
            let report = client.sync()?;
            if json {
                print_json(&report);
            } else {
                report.messages.iter().for_each(print_message);
                for f in &report.failures {
                    eprintln!("sotto: a message (#{}) could not be read: {}", f.seq, f.reason);
                }
                if report.messages.is_empty() && std::io::stdout().is_terminal() {
                    println!("no new messages");
                }
            }
        }
        Command::Listen { timeout, count } => {
            let mut client = Client::open(&home)?;
            let deadline = timeout.map(|t| Instant::now() + Duration::from_secs(t));
            let seen = std::cell::Cell::new(0usize);
            let stop = || {
                deadline.is_some_and(|d| Instant::now() >= d)
                    || count.is_some_and(|c| seen.get() >= c)
            };
            client.listen(
                |m| {
                    seen.set(seen.get() + 1);
                    if json {
                        println!("{}", serde_json::to_string(m).unwrap_or_default());
                    } else {
                        print_message(m);
                    }
                },
                &stop,
            )?;
        }
        Command::Chats => {
            let chats = Client::open(&home)?.chats()?;
            if json {
                print_json(&chats);
            } else if chats.is_empty() {
                println!("no chats yet; `sotto send ADDRESS TEXT` starts one");
            } else {
                chats.iter().for_each(print_chat);
            }
        }
        Command::History { chat, limit } => {
            let messages = Client::open(&home)?.history(&chat, limit)?;
            if json {
                print_json(&messages);
            } else {
                messages.iter().for_each(print_message);
            }
        }
        Command::Group(cmd) => {
            let mut client = Client::open(&home)?;
            let chat = match cmd {
                GroupCommand::Create { name, members } => {
                    let members: Vec<String> =
                        members.into_iter().filter(|m| !m.trim().is_empty()).collect();
                    client.create_group(&name, &members)?
                }
                GroupCommand::Add { chat, members } => client.add_members(&chat, &members)?,
                GroupCommand::Remove { chat, members } => client.remove_members(&chat, &members)?,
                GroupCommand::Leave { chat } => client.leave(&chat)?,
            };
            if json {
                print_json(&chat);
            } else {
                print_chat(&chat);
            }
        }
    }
    Ok(())
}
