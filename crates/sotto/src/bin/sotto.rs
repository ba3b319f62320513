//! `sotto`: the command-line client.

/// `println!` that ends the program quietly when standard output is closed (`sotto history |
/// head -1`), as command-line tools do, instead of panicking. It shadows the standard macro
/// in this file.
macro_rules! println {
    () => { emit(format_args!("")) };
    ($($arg:tt)*) => { emit(format_args!($($arg)*)) };
}

fn emit(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        // Anything else (a full disk): the output is lost, but the command still reports
        // through its exit code and standard error.
        let _ = writeln!(std::io::stderr(), "sotto: cannot write the output: {e}");
    }
}

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use sotto::daemon::DaemonClient;
use sotto::format_time;
use sotto_client::engine;
use sotto_client::{
    AccountInfo, ChatSummary, Client, DeviceView, Downloaded, Error, HealReport, LinkOutcome,
    MessageView, NewHome, RegisterOptions, SafetyView, SyncReport,
};

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
    /// Read this home's passphrase from a file (its first line). Otherwise it comes from
    /// SOTTO_PASSPHRASE, or is asked for on the terminal.
    #[arg(long, global = true, conflicts_with = "passphrase_fd")]
    passphrase_file: Option<PathBuf>,
    /// Read this home's passphrase from an open file descriptor (its first line).
    #[arg(long, global = true)]
    passphrase_fd: Option<u32>,
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
        #[arg(long, env = "SOTTO_INVITE", hide_env_values = true)]
        invite: Option<Secret>,
        /// Trust only this CA certificate (PEM) for the server's TLS certificate.
        #[arg(long)]
        ca_cert: Option<PathBuf>,
        /// A name for this device, shown only to the account's own devices.
        #[arg(long)]
        device_name: Option<String>,
        /// Accept the server operator's key: the operator may then revoke and wipe this
        /// account's devices (for organisations that manage their members' devices).
        #[arg(long)]
        managed: bool,
    },
    /// Make this home a new device of an existing account: shows a linking code (and QR code)
    /// to approve with `sotto devices link CODE` on a device the account already has.
    Link {
        /// The account, e.g. alice@example.org.
        address: String,
        /// The server's URL.
        #[arg(long, env = "SOTTO_SERVER", default_value = "http://127.0.0.1:7700")]
        server: String,
        /// A name for this device.
        #[arg(long)]
        name: Option<String>,
        /// Give up after this many seconds without approval.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Trust only this CA certificate (PEM) for the server's TLS certificate.
        #[arg(long)]
        ca_cert: Option<PathBuf>,
    },
    /// Take an account back on this (fresh) home with its recovery key, when every device is
    /// lost. All other devices are revoked; contacts see that the account's keys changed.
    Recover {
        /// The account.
        address: String,
        /// The server's URL.
        #[arg(long, env = "SOTTO_SERVER", default_value = "http://127.0.0.1:7700")]
        server: String,
        /// The recovery key (read from standard input when not given).
        #[arg(long, env = "SOTTO_RECOVERY_KEY", hide_env_values = true)]
        recovery_key: Option<Secret>,
        /// Trust only this CA certificate (PEM) for the server's TLS certificate.
        #[arg(long)]
        ca_cert: Option<PathBuf>,
    },
    /// Show the safety number with a contact (digits, and a QR code on a terminal). Compare it
    /// with theirs in person or on a call; if it matches, mark them verified: a later change of
    /// their identity key then stops sending to them until you verify again.
    Verify {
        /// The contact.
        address: String,
        /// Record their current identity key as verified.
        #[arg(long, conflicts_with = "accept_change")]
        mark_verified: bool,
        /// With --mark-verified: the number they showed you (digits, or a scanned QR text);
        /// refused if it differs.
        #[arg(long, requires = "mark_verified")]
        expect: Option<String>,
        /// Their key changed and you accept that without verifying: sending works again.
        #[arg(long)]
        accept_change: bool,
    },
    /// List, link, revoke and wipe this account's devices.
    #[command(subcommand)]
    Devices(DevicesCommand),
    /// Change the passphrase that protects this home (its data is not rewritten).
    #[command(subcommand)]
    Passphrase(PassphraseCommand),
    /// Keep this home's key in the system keyring, so commands need no passphrase.
    #[command(subcommand)]
    Keyring(KeyringCommand),
    /// Key transparency: check the server's key directory.
    #[command(subcommand)]
    Kt(KtCommand),
    /// Keep this home's client running, for scripts, bots and other front ends: JSON-RPC 2.0
    /// on a Unix socket in the home (and optionally on standard input/output, or HTTP with
    /// Server-Sent Events). While it runs, `sotto` commands on this home go through it.
    /// docs/jsonrpc.md describes every method and event.
    Daemon {
        /// Also serve JSON-RPC on standard input and output, one JSON object per line (the
        /// daemon stops when input ends).
        #[arg(long)]
        stdio: bool,
        /// Also serve HTTP on this loopback address (e.g. 127.0.0.1:7780): `POST /rpc`, and
        /// `GET /events` (Server-Sent Events, replaying the last 1000 after Last-Event-ID).
        /// Requests show the token in the home's daemon.token as a bearer token.
        #[arg(long)]
        http: Option<std::net::SocketAddr>,
    },
    /// Show this home's account and device.
    Whoami,
    /// Send a message: `sotto send ADDRESS TEXT`, or `sotto send --group CHAT TEXT`.
    /// TEXT `-` reads the message from standard input. Your own address is your notes to
    /// self (kept on your devices only). In a group, `@address` mentions a member.
    Send {
        /// Send to this chat (id, id prefix or group name) instead of an address.
        #[arg(long, short)]
        group: Option<String>,
        /// Answer this message (its id, or the start of it, from `history`); it is quoted.
        #[arg(long, short, value_name = "MESSAGE")]
        reply: Option<String>,
        /// ADDRESS TEXT, or TEXT with --group.
        #[arg(required = true, num_args = 1..=2, value_names = ["ADDRESS", "TEXT"])]
        args: Vec<String>,
    },
    /// Send a file (up to 4 GiB): `sotto send-file ADDRESS PATH`, or `--group CHAT PATH`. It is
    /// encrypted here; an interrupted upload resumes when the command runs again.
    SendFile {
        /// Send to this chat (id, id prefix or group name) instead of an address.
        #[arg(long, short)]
        group: Option<String>,
        /// ADDRESS PATH, or PATH with --group.
        #[arg(required = true, num_args = 1..=2, value_names = ["ADDRESS", "PATH"])]
        args: Vec<String>,
    },
    /// Download the file a message carries (its id, or a prefix of it, from `history`). It is
    /// written under its name only once it is complete and verified; an interrupted download
    /// resumes.
    Download {
        /// The message id.
        message: String,
        /// Where to write it (a file, or a directory) [default: its name, here].
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Try again to send a message of yours that failed (or still waits): its id, or a prefix
    /// of it, from `history`.
    Resend {
        /// The message id.
        message: String,
    },
    /// Fetch and decrypt everything that arrived, deliver what waits in the outbox, and print
    /// what is new.
    Sync,
    /// Replace this device's keys in every chat, and the key packages it left on the server,
    /// now, so that whatever leaked of them before (a stolen backup, malware since removed)
    /// opens none of the later messages. This also happens by itself every 7 days (`--every`
    /// changes that) and, for chats, right after the account revokes or wipes a device
    Heal {
        /// How often each chat gets fresh keys from now on, e.g. 12h, 7d (1h to 90d)
        #[arg(long)]
        every: Option<String>,
    },
    /// The terminal client: every chat at a glance, the conversation, a composer; it stays
    /// connected. `?` inside lists every key, `:help` every command. Respects NO_COLOR.
    Tui {
        /// Desktop notifications too (through notify-send, where installed): the chat's name
        /// only, never the message.
        #[arg(long)]
        notify: bool,
    },
    /// Print the shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write manual pages (sotto.1 and one per subcommand) into a directory.
    Man {
        /// The directory (e.g. /usr/local/share/man/man1).
        dir: PathBuf,
    },
    /// Stay connected and print messages as they arrive (one JSON object per line with --json).
    Listen {
        /// Stop after this many seconds.
        #[arg(long)]
        timeout: Option<u64>,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<usize>,
    },
    /// List conversations: pinned first, then the most recent; unread counts.
    Chats {
        /// Archived chats too.
        #[arg(long, short)]
        all: bool,
    },
    /// Show a conversation's messages, with their ids (for reply, react, edit, delete).
    History {
        /// The chat: an address (direct chat), a contact's nickname, a chat id or prefix, a
        /// group name, or `notes`.
        chat: String,
        /// How many of the latest messages to show.
        #[arg(long, short = 'n', default_value_t = 50)]
        limit: usize,
        /// Page back: the messages before this one (an id from an earlier page).
        #[arg(long, value_name = "MESSAGE")]
        before: Option<String>,
    },
    /// Search every chat (or one) for messages holding all the words given, newest first.
    /// Words match as prefixes ("meet" finds "meeting"); case and accents are ignored. The
    /// index is inside the encrypted home.
    Search {
        /// The words.
        text: String,
        /// Only in this chat.
        #[arg(long, short)]
        chat: Option<String>,
        /// At most this many results.
        #[arg(long, short = 'n', default_value_t = 50)]
        limit: usize,
    },
    /// React to a message with one emoji (replacing your earlier reaction to it).
    React {
        /// The message id (or the start of it).
        message: String,
        /// The emoji; omit it with --remove.
        #[arg(required_unless_present = "remove")]
        emoji: Option<String>,
        /// Take your reaction back.
        #[arg(long)]
        remove: bool,
    },
    /// Replace the text of a message you sent; everyone sees it marked as edited.
    Edit {
        /// The message id (or the start of it).
        message: String,
        /// The new text (`-` reads it from standard input).
        text: String,
    },
    /// Delete a message you sent, for everyone: their devices keep only a tombstone, and a
    /// file it carried is deleted from the server.
    Delete {
        /// The message id (or the start of it).
        message: String,
    },
    /// Mark a chat read; with read receipts on, its senders see that you read their messages.
    Read {
        /// The chat.
        chat: String,
    },
    /// Show or change receipts: delivery receipts (on by default) tell senders their message
    /// reached your device; read receipts (off by default) that you read it. They travel
    /// encrypted like any message.
    Receipts {
        /// Delivery receipts: on or off.
        #[arg(long, value_parser = on_off)]
        delivery: Option<bool>,
        /// Read receipts: on or off.
        #[arg(long, value_parser = on_off)]
        read: Option<bool>,
    },
    /// Write a chat (or every chat, with --all) decrypted to a directory, as JSON or Markdown,
    /// with its files. The export is NOT encrypted: keep it somewhere safe, delete it after.
    Export {
        /// The chat.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        chat: Option<String>,
        /// Every chat, archived ones too.
        #[arg(long)]
        all: bool,
        /// json (one document per chat) or markdown (one page per chat, for reading).
        #[arg(long, short, default_value = "markdown", value_parser = ["json", "markdown"])]
        format: String,
        /// The directory to write to (made if missing; files in it of the same names are
        /// replaced).
        #[arg(long, short)]
        out: PathBuf,
        /// Leave the files out: texts and file names only.
        #[arg(long)]
        no_files: bool,
    },
    /// Local names for contacts (never sent anywhere).
    #[command(subcommand)]
    Contact(ContactCommand),
    /// Create and manage groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Settings of a chat.
    #[command(subcommand)]
    Chat(ChatCommand),
}

#[derive(Subcommand, Debug)]
enum PassphraseCommand {
    /// Protect this home with a new passphrase: from --new-passphrase-file,
    /// SOTTO_NEW_PASSPHRASE, or asked twice on the terminal.
    Change {
        /// Read the new passphrase from this file (its first line).
        #[arg(long)]
        new_passphrase_file: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum KeyringCommand {
    /// Keep this home's database key in the system keyring too (asks the passphrase once).
    ///
    /// Commands then open the home without the passphrase, which keeps working. On Linux the
    /// keyring is the kernel's: the key stays in memory, never on disk, for the login session
    /// and a few days after; after a reboot the passphrase is asked once and the key goes
    /// back. Any program running as you can read it, as with every system keyring.
    Enable,
    /// Delete this home's key from the system keyring: the passphrase is needed again.
    Disable,
    /// Whether this home uses the system keyring and whether the keyring holds its key now.
    Status,
}

#[derive(Subcommand, Debug)]
enum KtCommand {
    /// Verify, without an account, that the server's key directory only ever grew: every
    /// epoch's root is signed and names the one before, and each epoch is an append-only
    /// extension of the last. With a home that holds an account, also checks every root that
    /// device was shown; with --state, every root a previous audit saw.
    Audit {
        /// The server's URL [default: the home's server, else http://127.0.0.1:7700].
        #[arg(long, env = "SOTTO_SERVER")]
        server: Option<String>,
        /// The directory key to expect (hex) [default: the home's pinned key, else the
        /// server's].
        #[arg(long)]
        kt_key: Option<String>,
        /// A file recording the roots verified, compared on the next run.
        #[arg(long)]
        state: Option<PathBuf>,
        /// Trust only this CA certificate (PEM) for the server's TLS certificate.
        #[arg(long)]
        ca_cert: Option<PathBuf>,
    },
    /// Show or set how long ago the server may have vouched for its directory's newest root
    /// before this device refuses new keys from it (a server showing a frozen or replayed
    /// view of the directory is caught this way). An hour unless set.
    MaxAge {
        /// The new bound, e.g. 30m, 2h (1m to 7d).
        age: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum DevicesCommand {
    /// List the account's devices: names, when linked, when last seen, revoked or wiped.
    List,
    /// Approve a new device showing CODE (from `sotto link` on that device): it gets the
    /// account's keys, joins every chat and receives recent history.
    Link {
        /// The linking code the new device shows.
        code: String,
        /// A name for the new device (overrides the one it proposes).
        #[arg(long)]
        name: Option<String>,
    },
    /// Revoke a device: it stops working at the server at once and is removed from every chat.
    Revoke {
        /// The device id (see `sotto devices list`).
        device: u64,
    },
    /// Revoke a device and order it to erase itself the next time it contacts the server.
    Wipe {
        /// The device id (see `sotto devices list`).
        device: u64,
    },
}

#[derive(Subcommand, Debug)]
enum ContactCommand {
    /// Show this name instead of the contact's address, here; without NAME, clear it.
    Name {
        /// The contact's address.
        address: String,
        /// The name.
        name: Option<String>,
    },
    /// List the contacts you named.
    List,
}

/// `on`/`off` (or true/false, yes/no) as a flag value.
fn on_off(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err("give on or off".into()),
    }
}

#[derive(Subcommand, Debug)]
enum ChatCommand {
    /// Disappearing messages: every member's devices delete each message this long after it
    /// was sent, and undelivered copies expire on the server.
    Timer {
        /// The chat (an address, a chat id or prefix, or a group name).
        chat: String,
        /// How long messages live (30s, 10m, 1h, 7d, 4w), or `off`.
        duration: String,
    },
    /// No notifications from this chat (here only).
    Mute {
        /// The chat.
        chat: String,
    },
    /// Notifications again.
    Unmute {
        /// The chat.
        chat: String,
    },
    /// List this chat first.
    Pin {
        /// The chat.
        chat: String,
    },
    /// Stop listing it first.
    Unpin {
        /// The chat.
        chat: String,
    },
    /// Hide the chat from `chats` (`chats --all` shows it); a new message brings it back
    /// unless it is muted.
    Archive {
        /// The chat.
        chat: String,
    },
    /// List it again.
    Unarchive {
        /// The chat.
        chat: String,
    },
    /// Delete the chat's messages on this device and hide it until a new message arrives.
    /// You stay a member (`group leave` leaves); other devices and members keep theirs.
    Delete {
        /// The chat.
        chat: String,
    },
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
    /// Rename a group; every member sees the new name.
    Rename {
        /// The group (id, id prefix or name).
        chat: String,
        /// Its new name.
        name: String,
    },
}

/// A secret argument (invite code, recovery key): zeroized on drop, never in `Debug`.
#[derive(Clone)]
struct Secret(zeroize::Zeroizing<String>);

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(zeroize::Zeroizing::new(s.to_string())))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where this run's passphrase comes from; read once (a file descriptor cannot be read
/// twice) and kept zeroized.
struct Unlock {
    file: Option<PathBuf>,
    fd: Option<u32>,
    cached: std::cell::OnceCell<zeroize::Zeroizing<String>>,
}

/// Shortest passphrase accepted for a new home.
const MIN_PASSPHRASE: usize = 8;

fn first_line(path: &std::path::Path) -> Result<zeroize::Zeroizing<String>, Error> {
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        Error::Io(format!("cannot read the passphrase from {}: {e}", path.display()))
    })?);
    Ok(zeroize::Zeroizing::new(text.lines().next().unwrap_or("").to_string()))
}

fn prompt(question: &str) -> Result<zeroize::Zeroizing<String>, Error> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::Invalid(
            "a passphrase is needed: set SOTTO_PASSPHRASE, or pass --passphrase-file or \
             --passphrase-fd"
                .into(),
        ));
    }
    rpassword::prompt_password(question)
        .map(zeroize::Zeroizing::new)
        .map_err(|e| Error::Io(format!("reading the passphrase: {e}")))
}

impl Unlock {
    fn read_passphrase(&self, question: &str) -> Result<zeroize::Zeroizing<String>, Error> {
        if let Some(path) = &self.file {
            return first_line(path);
        }
        if let Some(fd) = self.fd {
            return first_line(&PathBuf::from(format!("/dev/fd/{fd}")));
        }
        if let Some(p) = std::env::var_os("SOTTO_PASSPHRASE") {
            return Ok(zeroize::Zeroizing::new(p.to_string_lossy().into_owned()));
        }
        prompt(question)
    }

    /// Opens the account in `home`: from the system keyring if the home uses it and the
    /// keyring holds its key, otherwise with the passphrase.
    fn open(&self, home: &std::path::Path) -> Result<Client, Error> {
        match Client::open_from_keyring(home)? {
            Some(client) => Ok(client),
            None => Client::open(home, self.get(home)?),
        }
    }

    /// Whether a passphrase was given without a terminal (file, descriptor, environment).
    fn given(&self) -> bool {
        self.file.is_some() || self.fd.is_some() || std::env::var_os("SOTTO_PASSPHRASE").is_some()
    }

    /// The passphrase of an existing home.
    fn get(&self, home: &std::path::Path) -> Result<&str, Error> {
        if let Some(p) = self.cached.get() {
            return Ok(p);
        }
        let p = self.read_passphrase(&format!("passphrase for {}: ", home.display()))?;
        Ok(self.cached.get_or_init(|| p))
    }

    /// A passphrase for a new home: asked twice on a terminal, and not too short.
    fn new_home(&self) -> Result<zeroize::Zeroizing<String>, Error> {
        let interactive = !self.given();
        let p = self.read_passphrase("passphrase to protect this device's data: ")?;
        check_new_passphrase(&p)?;
        if interactive && *prompt("the same passphrase again: ")? != *p {
            return Err(Error::Invalid("the two passphrases differ".into()));
        }
        Ok(p)
    }
}

fn check_new_passphrase(p: &str) -> Result<(), Error> {
    if p.chars().count() < MIN_PASSPHRASE {
        return Err(Error::Invalid(format!(
            "a passphrase has at least {MIN_PASSPHRASE} characters"
        )));
    }
    Ok(())
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
    e.code()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let home = cli.home.clone().unwrap_or_else(default_home);
    let unlock = Unlock {
        file: cli.passphrase_file.clone(),
        fd: cli.passphrase_fd,
        cached: std::cell::OnceCell::new(),
    };
    match run(cli, &unlock) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A revoked device learns here whether it was also ordered to erase itself.
            let e = match e {
                Error::Server { ref code, .. } if code == "device_revoked" => {
                    unlock.open(&home).map(|mut c| c.obey_revocation()).unwrap_or(e)
                }
                // A closed account's device still obeys a wipe ordered before.
                Error::Server { ref code, .. } if sotto_client::account_barred(code) => {
                    match unlock.open(&home) {
                        Ok(mut c) => c.obey_wipe_or(e),
                        Err(_) => e,
                    }
                }
                e => e,
            };
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

/// `value` as a JSON object with `extra`'s fields added.
fn with_fields(value: &impl serde::Serialize, extra: serde_json::Value) -> serde_json::Value {
    let mut v = serde_json::to_value(value).unwrap_or_default();
    if let (Some(obj), serde_json::Value::Object(more)) = (v.as_object_mut(), extra) {
        obj.extend(more);
    }
    v
}

fn print_json(value: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

fn print_message(m: &MessageView) {
    let when = format_time(m.sent_at);
    let status = match m.status.as_str() {
        "pending" => " (waiting to be sent)".to_string(),
        "failed" => format!(" (not sent; `sotto resend {}`)", sotto::terminal_line(&m.id)),
        "delivered" => " ✓✓".to_string(),
        "read" => " ✓✓ read".to_string(),
        _ => String::new(),
    };
    let edited = if m.edited { " (edited)" } else { "" };
    // Names, texts and file details come from other users: nothing of them may control the
    // terminal or pose as a line of its own.
    let chat = sotto::terminal_line(&m.chat_name);
    let sender = sotto::terminal_line(m.sender_name.as_deref().unwrap_or(&m.sender));
    // The id's start names the message for reply, react, edit and delete.
    let id: String = m.id.chars().take(8).collect();
    let id = sotto::terminal_line(&id);
    if let Some(q) = &m.reply_to {
        let who = q.sender.as_deref().map(sotto::terminal_line).unwrap_or_default();
        let text = match &q.text {
            Some(t) => sotto::terminal_line(t),
            None => "(a message not here, or deleted)".into(),
        };
        println!("  ┌ {who}: {text}");
    }
    match m.kind.as_str() {
        "event" | "mark" => println!("[{when}] {chat}: * {}", sotto::terminal_text(&m.body)),
        "unsupported" => println!(
            "[{when} {id}] {chat} <{sender}> (a kind of message this version of sotto cannot \
             show; update sotto)"
        ),
        _ if m.deleted => println!("[{when} {id}] {chat} <{sender}> (deleted)"),
        _ => match &m.file {
            Some(f) => println!(
                "[{when} {id}] {chat} <{sender}> [file {} — {} bytes, {}] (sotto download {}){status}",
                sotto::terminal_line(&f.name),
                f.size,
                sotto::terminal_line(&f.media_type),
                sotto::terminal_line(&m.id)
            ),
            None => println!(
                "[{when} {id}] {chat} <{sender}> {}{edited}{status}",
                sotto::terminal_text(&m.body)
            ),
        },
    }
    if !m.reactions.is_empty() {
        let list: Vec<String> = m
            .reactions
            .iter()
            .map(|r| {
                format!("{} {}", sotto::terminal_line(&r.emoji), sotto::terminal_line(&r.from))
            })
            .collect();
        println!("    {}", list.join("  "));
    }
}

/// A progress bar on a terminal; hidden with --json or when output is not a terminal.
fn progress_bar(json: bool, what: &str) -> Progress {
    if json || !std::io::stderr().is_terminal() {
        return Progress(indicatif::ProgressBar::hidden(), false);
    }
    // Drawn from the first report on, when the size is known (not as "0 B/0 B", full).
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::hidden());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    Progress(bar, true)
}

/// A transfer's progress bar: hidden until the transfer reports its size.
struct Progress(indicatif::ProgressBar, bool);

impl Progress {
    fn report(&self, done: u64, total: u64) {
        self.0.set_length(total);
        self.0.set_position(done);
        if self.1 && self.0.is_hidden() {
            self.0.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

fn print_device(d: &DeviceView) {
    let name =
        d.name.as_deref().map_or_else(|| format!("device {}", d.device_id), sotto::terminal_line);
    let this = if d.this_device { " (this device)" } else { "" };
    println!("{}  {name}{this}  [{}]", d.device_id, d.state);
    println!("    linked {}", format_time(d.linked_at * 1000));
    if let Some(seen) = d.last_seen {
        println!("    last seen {}", format_time(seen * 1000));
    }
    if let Some(w) = d.wiped_at {
        println!("    confirmed its wipe at {}", format_time(w * 1000));
    }
    println!("    key {}", d.device_key);
}

fn print_safety(v: &SafetyView) {
    println!("Safety number with {}:", v.address);
    println!();
    let groups: Vec<&str> = v.safety_number.split(' ').collect();
    for row in groups.chunks(4) {
        println!("    {}", row.join("  "));
    }
    println!();
    print_qr(&v.qr_text);
    if v.changed_since_verified {
        println!("WARNING: {}'s identity key CHANGED since you verified it.", v.address);
        println!("Sending to them is blocked until you compare this number again and run");
        println!("`sotto verify {} --mark-verified`, or accept with --accept-change.", v.address);
    } else if v.verified {
        println!("verified: you compared this number with {}", v.address);
    } else {
        println!("not verified: compare it with {}, then run", v.address);
        println!("`sotto verify {} --mark-verified`", v.address);
    }
}

/// A QR code drawn with block characters, on a terminal only.
fn print_qr(text: &str) {
    if !std::io::stdout().is_terminal() {
        return;
    }
    if let Ok(qr) = qrcode::QrCode::new(text.as_bytes()) {
        let image = qr
            .render::<qrcode::render::unicode::Dense1x2>()
            .dark_color(qrcode::render::unicode::Dense1x2::Light)
            .light_color(qrcode::render::unicode::Dense1x2::Dark)
            .build();
        println!("{image}");
    }
}

/// Shows a linking code: as text, and as a QR code on a terminal. With --json, one JSON line
/// (flushed) so a script can pass the code on while the command waits.
fn show_link_code(code: &str, json: bool) {
    use std::io::Write as _;
    if json {
        println!("{}", serde_json::json!({"link_code": code}));
        let _ = std::io::stdout().flush();
        return;
    }
    println!("On a device this account already has, run:");
    println!();
    println!("    sotto devices link {code}");
    println!();
    print_qr(code);
    println!("Waiting for approval...");
    let _ = std::io::stdout().flush();
}

fn print_chat(c: &ChatSummary) {
    let title = match (c.kind.as_str(), &c.peer, &c.name) {
        ("direct", Some(p), _) if c.title != *p => {
            format!("{} <{}>", sotto::terminal_line(&c.title), sotto::terminal_line(p))
        }
        ("direct", Some(p), _) => sotto::terminal_line(p),
        ("note", ..) => sotto::terminal_line(&c.title),
        (_, _, Some(n)) => format!("{} (group)", sotto::terminal_line(n)),
        _ => "(unnamed group)".into(),
    };
    let mut state = if c.state == "active" { String::new() } else { format!(" [{}]", c.state) };
    for (on, mark) in [(c.pinned, " [pinned]"), (c.muted, " [muted]"), (c.archived, " [archived]")]
    {
        if on {
            state.push_str(mark);
        }
    }
    if c.unread > 0 {
        state.push_str(&format!("  {} unread", c.unread));
    }
    let timer = if c.timer_secs > 0 {
        format!("  (messages disappear after {} s)", c.timer_secs)
    } else {
        String::new()
    };
    println!("{}  {title}{state}{timer}", &c.id);
    if !c.members.is_empty() {
        println!("    members: {}", sotto::terminal_line(&c.members.join(", ")));
    }
    println!(
        "    {} message(s){}; {}",
        c.messages,
        c.last_message_at.map(|t| format!(", last {}", format_time(t))).unwrap_or_default(),
        if c.post_quantum { "post-quantum keys (X-Wing)" } else { "classical keys (X25519)" }
    );
}

fn run(cli: Cli, unlock: &Unlock) -> Result<(), Error> {
    // Neither needs a home.
    match &cli.command {
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            sotto::packaging::completions(Cli::command(), *shell, &mut std::io::stdout());
            return Ok(());
        }
        Command::Man { dir } => {
            use clap::CommandFactory as _;
            let pages = sotto::packaging::man_pages(Cli::command(), dir)
                .map_err(|e| Error::Io(format!("{}: {e}", dir.display())))?;
            println!("wrote {} manual page(s) into {}", pages.len(), dir.display());
            return Ok(());
        }
        _ => {}
    }
    let home = cli.home.clone().unwrap_or_else(default_home);
    let open = || unlock.open(&home);
    let json = cli.json;
    if let Some(command) = engine_command(&cli.command)? {
        // Through the home's daemon when one runs (no second login, no lock contention);
        // otherwise on the home directly.
        let value = match DaemonClient::connect(&home) {
            Some(mut daemon) => {
                let call = serde_json::to_value(&command).unwrap_or_default();
                let params = call.get("params").cloned().unwrap_or(serde_json::json!({}));
                daemon.call(command.method(), params)?
            }
            None => {
                let mut client = open()?;
                let bar = progress_bar(
                    json,
                    match command {
                        engine::Command::Download { .. } | engine::Command::Export { .. } => {
                            "receiving"
                        }
                        _ => "sending",
                    },
                );
                let value = engine::execute(&mut client, command, &mut |done, total| {
                    bar.report(done, total)
                })?;
                bar.finish();
                value
            }
        };
        if let Command::Export { .. } = cli.command {
            eprintln!("sotto: warning: {}", sotto_client::EXPORT_WARNING);
        }
        return show(&cli.command, value, json);
    }
    match cli.command {
        Command::Register { address, server, invite, ca_cert, device_name, managed } => {
            let options = RegisterOptions {
                invite: invite.map(|s| s.0.to_string()),
                ca_cert: ca_cert.map(|p| p.display().to_string()),
                device_name,
                managed,
                passphrase: unlock.new_home()?,
            };
            let registered = Client::register(&home, &server, &address, &options)?;
            let a = registered.client.account();
            if json {
                print_json(&with_fields(
                    &a,
                    serde_json::json!({"recovery_key": registered.recovery_key.as_str()}),
                ));
            } else {
                println!("registered {} (device {}) on {}", a.address, a.device_id, a.server);
                println!("home: {}", home.display());
                println!();
                println!("Your recovery key (shown only now; write it down and keep it safe):");
                println!();
                println!("    {}", registered.recovery_key.as_str());
                println!();
                println!(
                    "With it, `sotto recover` takes the account back if every device is lost."
                );
                if let Some(k) = &registered.operator_key {
                    println!();
                    println!("This account is MANAGED: the server's operator (key {k})");
                    println!("can revoke and remotely wipe its devices.");
                }
            }
        }
        Command::Link { address, server, name, timeout, ca_cert } => {
            let ca = ca_cert.map(|p| p.display().to_string());
            let passphrase = unlock.new_home()?;
            let new = NewHome {
                home: &home,
                server: &server,
                ca_cert: ca.as_deref(),
                passphrase: &passphrase,
            };
            let linked = Client::link_new_device(
                &new,
                &address,
                name.as_deref(),
                Duration::from_secs(timeout),
                |code| show_link_code(code, json),
            )?;
            let a = linked.client.account();
            if json {
                print_json(&with_fields(
                    &a,
                    serde_json::json!({"history_messages": linked.history_messages}),
                ));
            } else {
                println!(
                    "linked: this home is device {} of {}; {} message(s) of history received",
                    a.device_id, a.address, linked.history_messages
                );
            }
        }
        Command::Recover { address, server, recovery_key, ca_cert } => {
            let key = match recovery_key {
                Some(k) => k.0,
                None => {
                    if std::io::stdin().is_terminal() {
                        eprintln!("recovery key for {address}:");
                    }
                    let mut line = zeroize::Zeroizing::new(String::new());
                    std::io::stdin()
                        .read_line(&mut line)
                        .map_err(|e| Error::Io(format!("reading standard input: {e}")))?;
                    line
                }
            };
            let ca = ca_cert.map(|p| p.display().to_string());
            let passphrase = unlock.new_home()?;
            let new = NewHome {
                home: &home,
                server: &server,
                ca_cert: ca.as_deref(),
                passphrase: &passphrase,
            };
            let client = Client::recover(&new, &address, &key)?;
            let a = client.account();
            if json {
                print_json(&a);
            } else {
                println!(
                    "recovered {}: this home is its only device now (device {}); every other \
                     device is revoked",
                    a.address, a.device_id
                );
            }
        }
        Command::Passphrase(PassphraseCommand::Change { new_passphrase_file }) => {
            let old = unlock.get(&home)?;
            let new = match new_passphrase_file {
                Some(path) => first_line(&path)?,
                None => match std::env::var_os("SOTTO_NEW_PASSPHRASE") {
                    Some(p) => zeroize::Zeroizing::new(p.to_string_lossy().into_owned()),
                    None => {
                        let p = prompt("new passphrase: ")?;
                        if *prompt("the new passphrase again: ")? != *p {
                            return Err(Error::Invalid("the two passphrases differ".into()));
                        }
                        p
                    }
                },
            };
            check_new_passphrase(&new)?;
            Client::change_passphrase(&home, old, &new)?;
            if json {
                print_json(&serde_json::json!({"changed": true}));
            } else {
                println!("the passphrase of {} is changed", home.display());
            }
        }
        Command::Keyring(command) => {
            let status = match command {
                KeyringCommand::Enable => Client::enable_keyring(&home, unlock.get(&home)?)?,
                KeyringCommand::Disable => {
                    Client::disable_keyring(&home)?;
                    Client::keyring_status(&home)?
                }
                KeyringCommand::Status => Client::keyring_status(&home)?,
            };
            if json {
                print_json(&status);
            } else if status.enabled && status.holds_key {
                println!(
                    "{} opens without its passphrase: {} holds its key",
                    home.display(),
                    status.keyring
                );
            } else if status.enabled {
                println!(
                    "{} uses the system keyring, which does not hold its key now ({}); the next \
                     command asks the passphrase once and puts the key back",
                    home.display(),
                    status.keyring
                );
            } else {
                println!(
                    "{} opens with its passphrase only (keyring: {})",
                    home.display(),
                    status.keyring
                );
            }
        }
        Command::Kt(KtCommand::Audit { server, kt_key, state, ca_cert }) => {
            // Without an unlocked home the audit runs as anyone's would.
            let client = match Client::open_from_keyring(&home) {
                Ok(Some(client)) => Some(client),
                _ if unlock.given() => open().ok(),
                _ => None,
            };
            let mut known =
                client.as_ref().map(Client::kt_roots_seen).transpose()?.unwrap_or_default();
            // A previous audit proved the epochs it recorded; this one goes on from there.
            let mut proven_until = 0;
            if let Some(path) = &state {
                let previous = sotto_client::load_audit_state(path)?;
                proven_until = previous.last().map(|(e, _)| *e).unwrap_or(0);
                known.extend(previous);
            }
            let server = server
                .or_else(|| client.as_ref().map(|c| c.account().server))
                .unwrap_or_else(|| "http://127.0.0.1:7700".into());
            let expected = match kt_key {
                Some(k) => Some(
                    hex::decode(k.trim())
                        .map_err(|_| Error::Invalid(format!("{k:?} is not a hex key")))?,
                ),
                None => client.as_ref().and_then(Client::kt_signing_key),
            };
            let ca = ca_cert.map(|p| p.display().to_string());
            let (report, roots) = sotto_client::audit(
                &server,
                ca.as_deref(),
                expected.as_deref(),
                &known,
                proven_until,
            )?;
            if let Some(path) = &state {
                sotto_client::save_audit_state(path, &roots)?;
            }
            if json {
                print_json(&report);
            } else {
                println!(
                    "the key directory of {server} checks out: {} epochs, each signed and an \
                     append-only extension of the last",
                    report.epochs
                );
                println!("latest root {}", report.latest_root);
                println!("directory key {}", report.signing_key);
                if report.compared_roots > 0 {
                    println!("{} root(s) seen before are part of it", report.compared_roots);
                }
            }
        }
        Command::Daemon { stdio, http } => {
            if http.is_some_and(|a| !a.ip().is_loopback()) {
                return Err(Error::Invalid(
                    "the daemon's HTTP serves this machine only: give a loopback address \
                     (127.0.0.1 or [::1]); its token must not cross a network in the clear"
                        .into(),
                ));
            }
            let client = open()?;
            let options = sotto::daemon::Options { stdio, http };
            sotto::daemon::serve(client, &options, &mut |where_| {
                eprintln!("sotto daemon: {where_}")
            })?;
        }
        Command::Tui { notify } => {
            if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
                return Err(Error::Invalid("sotto tui needs a terminal".into()));
            }
            if DaemonClient::connect(&home).is_some() {
                return Err(Error::Invalid(
                    "a daemon runs for this home: stop it first (the terminal client runs the \
                     home's engine itself)"
                        .into(),
                ));
            }
            sotto::tui::run(open()?, sotto::tui::Options { notify })?;
        }
        Command::Listen { timeout, count } => {
            if let Some(daemon) = DaemonClient::connect(&home) {
                return listen_via(daemon, timeout, count, json);
            }
            let mut client = open()?;
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
        // Handled above, through the engine.
        _ => return Err(Error::Internal("an engine command reached the home's own commands")),
    }
    Ok(())
}

/// A text argument; `-` reads it from standard input.
fn text_arg(text: &str) -> Result<String, Error> {
    if text != "-" {
        return Ok(text.to_string());
    }
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => {
            Error::Invalid("standard input is not UTF-8 text".into())
        }
        _ => Error::Io(format!("reading standard input: {e}")),
    })?;
    Ok(s.trim_end_matches('\n').to_string())
}

/// The engine command a CLI command stands for (`None`: it works on the home's files, or is
/// the daemon itself).
fn engine_command(command: &Command) -> Result<Option<engine::Command>, Error> {
    use engine::Command as E;
    let absolute = |p: &std::path::Path| {
        std::path::absolute(p).map_err(|e| Error::Io(format!("{}: {e}", p.display())))
    };
    // ADDRESS X or --group CHAT X.
    let split = |group: &Option<String>, args: &[String], what: &str| match (group, args) {
        (Some(g), [x]) => Ok((None, Some(g.clone()), x.clone())),
        (None, [to, x]) => Ok((Some(to.clone()), None, x.clone())),
        (Some(_), _) => Err(Error::Invalid(format!("with --group, give only the {what}"))),
        (None, _) => Err(Error::Invalid(format!(
            "give ADDRESS and {0}, or --group CHAT and {0}",
            what.to_uppercase()
        ))),
    };
    Ok(Some(match command {
        Command::Whoami => E::Whoami,
        Command::Chats { all } => E::Chats { all: *all },
        Command::History { chat, limit, before } => {
            E::History { chat: chat.clone(), limit: Some(*limit), before: before.clone() }
        }
        Command::Search { text, chat, limit } => {
            E::Search { text: text.clone(), chat: chat.clone(), limit: Some(*limit) }
        }
        Command::React { message, emoji, remove } => E::React {
            message: message.clone(),
            emoji: if *remove { String::new() } else { emoji.clone().unwrap_or_default() },
        },
        Command::Edit { message, text } => {
            E::Edit { message: message.clone(), text: text_arg(text)? }
        }
        Command::Delete { message } => E::Delete { message: message.clone() },
        Command::Read { chat } => E::Read { chat: chat.clone() },
        Command::Receipts { delivery, read } => E::Receipts { delivery: *delivery, read: *read },
        Command::Contact(ContactCommand::Name { address, name }) => {
            E::ContactName { address: address.clone(), name: name.clone() }
        }
        Command::Contact(ContactCommand::List) => E::Contacts,
        Command::Export { chat, all: _, format, out, no_files } => E::Export {
            chat: chat.clone(),
            format: if format == "json" {
                sotto_client::ExportFormat::Json
            } else {
                sotto_client::ExportFormat::Markdown
            },
            out: absolute(out)?,
            no_files: *no_files,
        },
        Command::Send { group, reply, args } => {
            let (to, group, text) = split(group, args, "text")?;
            if let Some(to) = &to {
                to.parse::<sotto_core::Address>().map_err(Error::Core)?;
            }
            E::Send { to, group, text: text_arg(&text)?, reply_to: reply.clone() }
        }
        Command::SendFile { group, args } => {
            let (to, group, path) = split(group, args, "path")?;
            if let Some(to) = &to {
                to.parse::<sotto_core::Address>().map_err(Error::Core)?;
            }
            E::SendFile { to, group, path: absolute(std::path::Path::new(&path))? }
        }
        Command::Download { message, out } => {
            // Relative to where the command runs, also when a daemon does the work.
            let out = match out {
                Some(o) => absolute(o)?,
                None => absolute(std::path::Path::new("."))?,
            };
            E::Download { message: message.clone(), out: Some(out) }
        }
        Command::Resend { message } => E::Resend { message: message.clone() },
        Command::Sync => E::Sync,
        Command::Chat(ChatCommand::Timer { chat, duration }) => {
            let seconds = match duration.trim() {
                "off" | "0" => 0,
                d => sotto::parse_duration(d).map_err(Error::Invalid)?,
            };
            E::ChatTimer { chat: chat.clone(), seconds }
        }
        Command::Group(GroupCommand::Create { name, members }) => {
            E::GroupCreate { name: name.clone(), members: members.clone() }
        }
        Command::Group(GroupCommand::Add { chat, members }) => {
            E::GroupAdd { chat: chat.clone(), members: members.clone() }
        }
        Command::Group(GroupCommand::Remove { chat, members }) => {
            E::GroupRemove { chat: chat.clone(), members: members.clone() }
        }
        Command::Group(GroupCommand::Leave { chat }) => E::GroupLeave { chat: chat.clone() },
        Command::Group(GroupCommand::Rename { chat, name }) => {
            E::GroupRename { chat: chat.clone(), name: name.clone() }
        }
        Command::Chat(ChatCommand::Delete { chat }) => E::ChatDelete { chat: chat.clone() },
        Command::Chat(flag) => {
            use sotto_client::ChatFlag::*;
            let (chat, flag, on) = match flag {
                ChatCommand::Mute { chat } => (chat, Muted, true),
                ChatCommand::Unmute { chat } => (chat, Muted, false),
                ChatCommand::Pin { chat } => (chat, Pinned, true),
                ChatCommand::Unpin { chat } => (chat, Pinned, false),
                ChatCommand::Archive { chat } => (chat, Archived, true),
                ChatCommand::Unarchive { chat } => (chat, Archived, false),
                ChatCommand::Timer { .. } | ChatCommand::Delete { .. } => {
                    return Err(Error::Internal("chat command handled above"));
                }
            };
            E::ChatFlag { chat: chat.clone(), flag, on }
        }
        Command::Verify { address, mark_verified, expect, accept_change } => E::Verify {
            address: address.clone(),
            mark_verified: *mark_verified,
            expect: expect.clone(),
            accept_change: *accept_change,
        },
        Command::Devices(DevicesCommand::List) => E::DevicesList,
        Command::Devices(DevicesCommand::Link { code, name }) => {
            E::DevicesLink { code: code.clone(), name: name.clone() }
        }
        Command::Devices(DevicesCommand::Revoke { device }) => E::DevicesRevoke { device: *device },
        Command::Devices(DevicesCommand::Wipe { device }) => E::DevicesWipe { device: *device },
        Command::Kt(KtCommand::MaxAge { age }) => E::KtMaxAge {
            secs: age.as_deref().map(sotto::parse_duration).transpose().map_err(Error::Invalid)?,
        },
        Command::Heal { every } => E::Heal {
            every_secs: every
                .as_deref()
                .map(sotto::parse_duration)
                .transpose()
                .map_err(Error::Invalid)?,
        },
        _ => return Ok(None),
    }))
}

/// Reads a command's JSON result as the type it is.
fn typed<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, Error> {
    serde_json::from_value(value)
        .map_err(|e| Error::Protocol(format!("an answer of an unexpected shape: {e}")))
}

/// Prints a command's result: as it is with --json, for people otherwise.
fn show(command: &Command, value: serde_json::Value, json: bool) -> Result<(), Error> {
    if json {
        print_json(&value);
        return Ok(());
    }
    match command {
        Command::Whoami => {
            let a: AccountInfo = typed(value)?;
            println!("{} (device {}) on {}", a.address, a.device_id, a.server);
            println!("device key:   {}", a.device_key);
            println!("identity key: {}", a.identity_key);
            if let Some(k) = &a.operator_key {
                println!("MANAGED: the server's operator (key {k}) may revoke and wipe");
                println!("this account's devices");
            }
        }
        Command::Chats { .. } => {
            let chats: Vec<ChatSummary> = typed(value)?;
            if chats.is_empty() {
                println!("no chats yet; `sotto send ADDRESS TEXT` starts one");
            }
            chats.iter().for_each(print_chat);
        }
        Command::History { .. } => {
            let page: Vec<MessageView> = typed(value)?;
            page.iter().for_each(print_message);
            if let Some(first) = page.first()
                && std::io::stdout().is_terminal()
            {
                println!("(earlier: --before {})", sotto::terminal_line(&first.id));
            }
        }
        Command::Search { .. } => {
            let found: Vec<MessageView> = typed(value)?;
            if found.is_empty() {
                println!("nothing found");
            }
            found.iter().for_each(print_message);
        }
        Command::Send { .. }
        | Command::SendFile { .. }
        | Command::Resend { .. }
        | Command::React { .. }
        | Command::Edit { .. }
        | Command::Delete { .. } => {
            print_message(&typed(value)?);
        }
        Command::Read { .. } => print_chat(&typed(value)?),
        Command::Receipts { .. } => {
            let on = |b: bool| if b { "on" } else { "off" };
            println!("delivery receipts: {}", on(value["delivery"].as_bool().unwrap_or(true)));
            println!("read receipts:     {}", on(value["read"].as_bool().unwrap_or(false)));
        }
        Command::Contact(ContactCommand::Name { .. }) => {
            let c: sotto_client::Contact = typed(value)?;
            match &c.nickname {
                Some(n) => println!("{} is shown as {}", c.address, sotto::terminal_line(n)),
                None => println!("{} is shown by address", c.address),
            }
        }
        Command::Contact(ContactCommand::List) => {
            let list: Vec<sotto_client::Contact> = typed(value)?;
            if list.is_empty() {
                println!("no named contacts; `sotto contact name ADDRESS NAME` names one");
            }
            for c in list {
                let name = c.nickname.as_deref().map(sotto::terminal_line).unwrap_or_default();
                println!("{}  {name}", c.address);
            }
        }
        Command::Export { .. } => {
            let report: sotto_client::ExportReport = typed(value)?;
            println!(
                "exported {} chat(s), {} message(s) and {} file(s) to {}",
                report.chats.len(),
                report.messages,
                report.files,
                report.dir
            );
            for missing in &report.files_missing {
                println!("* not saved: {}", sotto::terminal_line(missing));
            }
        }
        Command::Chat(ChatCommand::Delete { .. }) => {
            println!(
                "deleted {} message(s) on this device; the chat comes back when a new message \
                 arrives",
                value["deleted"].as_u64().unwrap_or(0)
            );
        }
        Command::Download { .. } => {
            let got: Downloaded = typed(value)?;
            println!("{} ({} bytes, {}), verified", got.path, got.size, got.media_type);
        }
        Command::Sync => {
            let report: SyncReport = typed(value)?;
            report.messages.iter().for_each(print_message);
            for m in &report.updated {
                print_message(m);
            }
            for n in &report.notices {
                println!("* {}", sotto::terminal_text(n));
            }
            for f in &report.failures {
                eprintln!("sotto: a message (#{}) could not be read: {}", f.seq, f.reason);
            }
            if report.messages.is_empty() && std::io::stdout().is_terminal() {
                println!("no new messages");
            }
        }
        Command::Chat(_) | Command::Group(_) => print_chat(&typed(value)?),
        Command::Kt(KtCommand::MaxAge { .. }) => {
            let secs = value["max_age_secs"].as_u64().unwrap_or(0);
            println!(
                "new keys are taken only from a directory root vouched for in the last {}",
                sotto::format_duration(secs)
            );
        }
        Command::Heal { .. } => {
            let report: HealReport = typed(value)?;
            println!("fresh keys for this device in {} chat(s)", report.updated.len());
            for (chat, reason) in &report.failed {
                println!(
                    "* not in {chat} yet (tried again later): {}",
                    sotto::terminal_text(reason)
                );
            }
            if !report.postponed.is_empty() {
                println!(
                    "* {} chat(s) wait until the server can be reached again",
                    report.postponed.len()
                );
            }
            let days = report.interval_secs as f64 / 86_400.0;
            println!("this happens by itself every {days:.1} day(s)");
        }
        Command::Verify { .. } => print_safety(&typed(value)?),
        Command::Devices(DevicesCommand::Link { .. }) => {
            let outcome: LinkOutcome = typed(value)?;
            println!(
                "linked device {}: added to {} chat(s), {} message(s) of history sent",
                outcome.device_id, outcome.chats_joined, outcome.history_messages
            );
            if outcome.chats_pending > 0 {
                println!(
                    "{} chat(s) wait for the new device's keys; the next sync adds it",
                    outcome.chats_pending
                );
            }
        }
        Command::Devices(cmd) => {
            match cmd {
                DevicesCommand::Revoke { device } => {
                    println!("revoked device {device}; it was removed from every chat");
                }
                DevicesCommand::Wipe { device } => println!(
                    "device {device} is revoked and will erase itself when it next contacts \
                     the server; `sotto devices list` shows its confirmation"
                ),
                _ => {}
            }
            typed::<Vec<DeviceView>>(value)?.iter().for_each(print_device);
        }
        _ => {}
    }
    Ok(())
}

/// `sotto listen` while a daemon runs: its message events.
fn listen_via(
    mut daemon: DaemonClient,
    timeout: Option<u64>,
    count: Option<usize>,
    json: bool,
) -> Result<(), Error> {
    daemon.subscribe()?;
    let deadline = timeout.map(|t| Instant::now() + Duration::from_secs(t));
    let mut seen = 0;
    while count.is_none_or(|c| seen < c) {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            break;
        }
        daemon.set_timeout(left.map(|l| l.max(Duration::from_millis(1))));
        let note = match daemon.read() {
            Ok(n) => n,
            Err(Error::Io(_)) if deadline.is_some_and(|d| Instant::now() >= d) => break,
            Err(e) => return Err(e),
        };
        if note["method"] != "event" || note["params"]["event"] != "message" {
            continue;
        }
        let m: MessageView = typed(note["params"]["message"].clone())?;
        seen += 1;
        if json {
            println!("{}", serde_json::to_string(&m).unwrap_or_default());
        } else {
            print_message(&m);
        }
    }
    Ok(())
}
