//! The client engine: one long-running object per home that owns the database, the live
//! connection and the outbox. Front ends (the CLI, `sotto daemon`'s JSON-RPC, a terminal UI)
//! give it [`Command`]s and receive its [`Event`]s.
//!
//! The engine itself does no waiting and owns no thread: [`Engine`] is fed — a command, a
//! frame from the live connection, "the connection closed", "time passed" — and answers with
//! what to do next and what changed. Requests go through the [`crate::transport`] seams, so
//! tests drive it with an in-memory transport and a clock of their own. [`run`] is the
//! threaded driver the daemon uses: one thread runs the engine, another blocks on the live
//! connection.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sotto_proto as proto;
use sotto_proto::live::{Down, FrameError, Up};

use crate::outbox::transient;
use crate::transport::{LiveLink, Received};
use crate::{ChatSummary, Client, Error, MessageView, Target};

/// Something a front end asks of the engine: one per CLI command that works on an open home.
/// On the wire (JSON-RPC) the variant is the method and its fields the named params.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "method", content = "params", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// The account and device (`sotto whoami`).
    Whoami,
    /// The chats (`sotto chats`).
    Chats {
        /// Archived chats too.
        #[serde(default)]
        all: bool,
    },
    /// A chat's latest messages (`sotto history`).
    History {
        /// The chat: an address, a chat id or prefix, or a group name.
        chat: String,
        /// How many of the latest (default 50).
        #[serde(default)]
        limit: Option<usize>,
        /// Those before this message or event id (paging back).
        #[serde(default)]
        before: Option<String>,
    },
    /// Messages holding every word of `text` (`sotto search`), newest first.
    Search {
        /// The words.
        text: String,
        /// Only in this chat.
        #[serde(default)]
        chat: Option<String>,
        /// At most this many (default 50).
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Sends a text (`sotto send`): to an address, or to a chat with `group`.
    Send {
        /// The address of a direct chat.
        #[serde(default)]
        to: Option<String>,
        /// A chat: its id, id prefix or group name.
        #[serde(default)]
        group: Option<String>,
        /// The text.
        text: String,
        /// The message this one answers (its id or an unambiguous prefix).
        #[serde(default)]
        reply_to: Option<String>,
    },
    /// Reacts to a message with one emoji; empty removes the reaction (`sotto react`).
    React {
        /// The message id or a prefix of it.
        message: String,
        /// The emoji.
        emoji: String,
    },
    /// Replaces the text of one of this account's messages (`sotto edit`).
    Edit {
        /// The message id or a prefix of it.
        message: String,
        /// The new text.
        text: String,
    },
    /// Deletes one of this account's messages for everyone (`sotto delete`).
    Delete {
        /// The message id or a prefix of it.
        message: String,
    },
    /// Marks a chat read (`sotto read`); with read receipts on, tells the senders.
    Read {
        /// The chat.
        chat: String,
    },
    /// Turns delivery or read receipts on or off; returns both (`sotto receipts`).
    Receipts {
        /// Delivery receipts.
        #[serde(default)]
        delivery: Option<bool>,
        /// Read receipts.
        #[serde(default)]
        read: Option<bool>,
    },
    /// Names a contact here, or clears its name (`sotto contact name`).
    ContactName {
        /// The contact's address.
        address: String,
        /// The name; absent or empty clears it.
        #[serde(default)]
        name: Option<String>,
    },
    /// The contacts that have a name here (`sotto contact list`).
    Contacts,
    /// Writes a chat, or every chat, decrypted to a directory (`sotto export`).
    Export {
        /// The chat; absent: every chat.
        #[serde(default)]
        chat: Option<String>,
        /// `json` or `markdown`.
        format: crate::ExportFormat,
        /// The directory (absolute: the engine's working directory is its own).
        out: PathBuf,
        /// Leave the files out (texts and file names only).
        #[serde(default)]
        no_files: bool,
    },
    /// Sends a file (`sotto send-file`).
    SendFile {
        /// The address of a direct chat.
        #[serde(default)]
        to: Option<String>,
        /// A chat: its id, id prefix or group name.
        #[serde(default)]
        group: Option<String>,
        /// The file (an absolute path, as the engine's working directory is its own).
        path: PathBuf,
    },
    /// Downloads a file (`sotto download`).
    Download {
        /// The message id or a prefix of it.
        message: String,
        /// Where to write it (an absolute path; default: its name in the home's downloads).
        #[serde(default)]
        out: Option<PathBuf>,
    },
    /// Tries a failed message again (`sotto resend`).
    Resend {
        /// The message id or a prefix of it.
        message: String,
    },
    /// Fetches and processes what arrived, and delivers the outbox (`sotto sync`).
    Sync,
    /// Creates a group (`sotto group create`).
    GroupCreate {
        /// Its name.
        name: String,
        /// The members to add.
        #[serde(default)]
        members: Vec<String>,
    },
    /// Adds members (`sotto group add`).
    GroupAdd {
        /// The chat.
        chat: String,
        /// The members to add.
        members: Vec<String>,
    },
    /// Removes members (`sotto group remove`).
    GroupRemove {
        /// The chat.
        chat: String,
        /// The members to remove.
        members: Vec<String>,
    },
    /// Leaves a group (`sotto group leave`).
    GroupLeave {
        /// The chat.
        chat: String,
    },
    /// Renames a group for every member (`sotto group rename`).
    GroupRename {
        /// The chat.
        chat: String,
        /// Its new name.
        name: String,
    },
    /// Mutes, pins or archives a chat here, or undoes it (`sotto chat mute|pin|archive`).
    ChatFlag {
        /// The chat.
        chat: String,
        /// `muted`, `pinned` or `archived`.
        flag: crate::ChatFlag,
        /// Set (true) or clear.
        on: bool,
    },
    /// Deletes a chat's messages on this device and hides it (`sotto chat delete`).
    ChatDelete {
        /// The chat.
        chat: String,
    },
    /// Sets the disappearing-message timer (`sotto chat timer`), in seconds (0: off).
    ChatTimer {
        /// The chat.
        chat: String,
        /// Seconds.
        seconds: u64,
    },
    /// The safety number with a contact; marks it verified or accepts a change (`sotto verify`).
    Verify {
        /// The contact.
        address: String,
        /// Record their current identity key as verified.
        #[serde(default)]
        mark_verified: bool,
        /// With `mark_verified`: the number they showed.
        #[serde(default)]
        expect: Option<String>,
        /// Accept a changed key without verifying.
        #[serde(default)]
        accept_change: bool,
    },
    /// The account's devices (`sotto devices list`).
    DevicesList,
    /// Approves a new device (`sotto devices link`).
    DevicesLink {
        /// The linking code it shows.
        code: String,
        /// A name for it.
        #[serde(default)]
        name: Option<String>,
    },
    /// Revokes a device (`sotto devices revoke`).
    DevicesRevoke {
        /// Its id.
        device: u64,
    },
    /// Revokes a device and orders it to erase itself (`sotto devices wipe`).
    DevicesWipe {
        /// Its id.
        device: u64,
    },
    /// Replaces this device's keys in every chat now (`sotto heal`); with `every_secs`, first
    /// sets how often that happens by itself.
    Heal {
        /// Seconds between updates (an hour to 90 days; 7 days unless set).
        #[serde(default)]
        every_secs: Option<u64>,
    },
    /// How old the key directory's newest root may be before new keys are refused
    /// (`sotto kt max-age`); with `secs`, first sets it.
    KtMaxAge {
        /// Seconds (a minute to 7 days; an hour unless set).
        #[serde(default)]
        secs: Option<u64>,
    },
}

impl Command {
    /// Every method name, as on the wire.
    pub const METHODS: &'static [&'static str] = &[
        "whoami",
        "chats",
        "history",
        "search",
        "send",
        "react",
        "edit",
        "delete",
        "read",
        "receipts",
        "contact_name",
        "contacts",
        "export",
        "send_file",
        "download",
        "resend",
        "sync",
        "group_create",
        "group_add",
        "group_remove",
        "group_leave",
        "group_rename",
        "chat_flag",
        "chat_delete",
        "chat_timer",
        "verify",
        "devices_list",
        "devices_link",
        "devices_revoke",
        "devices_wipe",
        "heal",
        "kt_max_age",
    ];

    /// A command from a JSON-RPC method and its params (absent params: none).
    pub fn from_rpc(method: &str, params: Option<Value>) -> Result<Command, Error> {
        if !Self::METHODS.contains(&method) {
            return Err(Error::Invalid(format!("no method {method:?}")));
        }
        let mut call = serde_json::Map::new();
        call.insert("method".into(), Value::String(method.into()));
        // No params, `null` and `{}` all mean none (methods without parameters take them all).
        let empty = |p: &Value| p.is_null() || p.as_object().is_some_and(|o| o.is_empty());
        let none = params.as_ref().is_none_or(empty);
        if let Some(params) = params.filter(|p| !empty(p)) {
            call.insert("params".into(), params);
        }
        let parsed = serde_json::from_value(Value::Object(call.clone()));
        // A method whose parameters are all optional takes none as an empty set of them.
        let parsed = match parsed {
            Err(_) if none => {
                call.insert("params".into(), Value::Object(serde_json::Map::new()));
                serde_json::from_value(Value::Object(call))
            }
            other => other,
        };
        parsed.map_err(|e| Error::Invalid(format!("bad params for {method}: {e}")))
    }

    /// The JSON-RPC method this command is.
    pub fn method(&self) -> &'static str {
        match self {
            Command::Whoami => "whoami",
            Command::Chats { .. } => "chats",
            Command::History { .. } => "history",
            Command::Search { .. } => "search",
            Command::Send { .. } => "send",
            Command::React { .. } => "react",
            Command::Edit { .. } => "edit",
            Command::Delete { .. } => "delete",
            Command::Read { .. } => "read",
            Command::Receipts { .. } => "receipts",
            Command::ContactName { .. } => "contact_name",
            Command::Contacts => "contacts",
            Command::Export { .. } => "export",
            Command::SendFile { .. } => "send_file",
            Command::Download { .. } => "download",
            Command::Resend { .. } => "resend",
            Command::Sync => "sync",
            Command::GroupCreate { .. } => "group_create",
            Command::GroupAdd { .. } => "group_add",
            Command::GroupRemove { .. } => "group_remove",
            Command::GroupLeave { .. } => "group_leave",
            Command::GroupRename { .. } => "group_rename",
            Command::ChatFlag { .. } => "chat_flag",
            Command::ChatDelete { .. } => "chat_delete",
            Command::ChatTimer { .. } => "chat_timer",
            Command::Verify { .. } => "verify",
            Command::DevicesList => "devices_list",
            Command::DevicesLink { .. } => "devices_link",
            Command::DevicesRevoke { .. } => "devices_revoke",
            Command::DevicesWipe { .. } => "devices_wipe",
            Command::Heal { .. } => "heal",
            Command::KtMaxAge { .. } => "kt_max_age",
        }
    }
}

/// Something that changed, for every front end to show.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A new message or chat event (membership, timer), received or sent from this account.
    Message {
        /// It, as `history` shows it.
        message: MessageView,
    },
    /// The delivery state of one of this account's messages changed (`pending`, `sent`,
    /// `failed`, with the reason).
    Delivery {
        /// It, as `history` shows it now.
        message: MessageView,
    },
    /// A chat was created or changed (members, name, timer, left).
    Chat {
        /// It, as `chats` shows it.
        chat: ChatSummary,
    },
    /// An account notice: a device linked, revoked or wiped, a contact's key changed.
    Notice {
        /// What happened.
        text: String,
    },
    /// A message arrived that could not be processed (it is skipped; the queue goes on).
    Failure {
        /// Its position in the server queue.
        seq: u64,
        /// Why (never its content).
        reason: String,
    },
    /// The live connection's state.
    Connection {
        /// `connected`, or `disconnected` (then retried).
        state: String,
        /// Why it is down.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A file transfer's progress.
    Progress {
        /// `upload` or `download`.
        transfer: String,
        /// Bytes done.
        done: u64,
        /// Bytes in all.
        total: u64,
    },
}

impl Event {
    /// Every event kind, as on the wire.
    pub const KINDS: &'static [&'static str] =
        &["message", "delivery", "chat", "notice", "failure", "connection", "progress"];

    /// This event's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Message { .. } => "message",
            Event::Delivery { .. } => "delivery",
            Event::Chat { .. } => "chat",
            Event::Notice { .. } => "notice",
            Event::Failure { .. } => "failure",
            Event::Connection { .. } => "connection",
            Event::Progress { .. } => "progress",
        }
    }
}

/// Runs one command on an open client; returns the JSON object `sotto --json` prints for it.
/// `progress` hears file transfers (bytes done, bytes in all).
pub fn execute(
    client: &mut Client,
    command: Command,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Value, Error> {
    fn json(value: impl Serialize) -> Result<Value, Error> {
        serde_json::to_value(value).map_err(|e| Error::Io(format!("cannot encode: {e}")))
    }
    fn target(to: Option<String>, group: Option<String>) -> Result<Target, Error> {
        match (to, group) {
            (Some(to), None) => Ok(Target::Address(to.parse()?)),
            (None, Some(group)) => Ok(Target::Chat(group)),
            _ => Err(Error::Invalid("give an address (to) or a chat (group), not both".into())),
        }
    }
    match command {
        Command::Whoami => json(client.account()),
        Command::Chats { all } => json(client.chats(all)?),
        Command::History { chat, limit, before } => {
            json(client.history(&chat, limit.unwrap_or(50), before.as_deref())?)
        }
        Command::Search { text, chat, limit } => {
            json(client.search(&text, chat.as_deref(), limit.unwrap_or(50))?)
        }
        Command::Send { to, group, text, reply_to } => {
            json(client.send_reply(&target(to, group)?, &text, reply_to.as_deref())?)
        }
        Command::React { message, emoji } => json(client.react(&message, &emoji)?),
        Command::Edit { message, text } => json(client.edit_message(&message, &text)?),
        Command::Delete { message } => json(client.delete_message(&message)?),
        Command::Read { chat } => json(client.mark_read(&chat)?),
        Command::Receipts { delivery, read } => json(client.receipts(delivery, read)?),
        Command::ContactName { address, name } => {
            json(client.set_nickname(&address, name.as_deref())?)
        }
        Command::Contacts => json(client.contacts()?),
        Command::Export { chat, format, out, no_files } => {
            if !out.is_absolute() {
                return Err(Error::Invalid("give the export directory as an absolute path".into()));
            }
            json(client.export(chat.as_deref(), format, &out, !no_files, progress)?)
        }
        Command::GroupRename { chat, name } => json(client.rename_group(&chat, &name)?),
        Command::ChatFlag { chat, flag, on } => json(client.set_chat_flag(&chat, flag, on)?),
        Command::ChatDelete { chat } => {
            Ok(serde_json::json!({ "deleted": client.delete_chat_for_me(&chat)? }))
        }
        Command::SendFile { to, group, path } => {
            json(client.send_file(&target(to, group)?, &path, progress)?)
        }
        Command::Download { message, out } => {
            json(client.download(&message, out.as_deref(), progress)?)
        }
        Command::Resend { message } => json(client.resend(&message)?),
        Command::Sync => json(client.sync()?),
        Command::GroupCreate { name, members } => {
            let members: Vec<String> =
                members.into_iter().filter(|m| !m.trim().is_empty()).collect();
            json(client.create_group(&name, &members)?)
        }
        Command::GroupAdd { chat, members } => json(client.add_members(&chat, &members)?),
        Command::GroupRemove { chat, members } => json(client.remove_members(&chat, &members)?),
        Command::GroupLeave { chat } => json(client.leave(&chat)?),
        Command::ChatTimer { chat, seconds } => json(client.set_timer(&chat, seconds)?),
        Command::Verify { address, mark_verified, expect, accept_change } => {
            json(if mark_verified {
                client.mark_verified(&address, expect.as_deref())?
            } else if accept_change {
                client.accept_change(&address)?
            } else {
                client.safety_number(&address)?
            })
        }
        Command::DevicesList => json(client.devices()?),
        Command::DevicesLink { code, name } => json(client.approve_link(&code, name.as_deref())?),
        Command::DevicesRevoke { device } => {
            client.revoke(device)?;
            json(client.devices()?)
        }
        Command::DevicesWipe { device } => {
            client.wipe(device)?;
            json(client.devices()?)
        }
        Command::Heal { every_secs } => {
            if let Some(secs) = every_secs {
                client.set_heal_interval(secs)?;
            }
            json(client.heal(true)?)
        }
        Command::KtMaxAge { secs } => {
            if let Some(secs) = secs {
                client.set_kt_max_age(secs)?;
            }
            Ok(serde_json::json!({ "max_age_secs": client.kt_max_age()? }))
        }
    }
}

/// The first wait before reconnecting; it doubles up to [`MAX_RECONNECT`].
const FIRST_RECONNECT: u64 = 250;
/// The longest wait between connection attempts.
const MAX_RECONNECT: u64 = 30_000;

/// What the engine wants done about the live connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Wants {
    /// Nothing now; call [`Engine::tick`] again by this time (Unix milliseconds).
    WaitUntil(u64),
    /// The device was revoked or wiped: stop.
    Stop,
}

/// One home's engine (see the module documentation).
#[derive(Debug)]
pub struct Engine {
    client: Client,
    events: Vec<Event>,
    /// Whether a live connection is up.
    connected: bool,
    /// When to try connecting next (Unix milliseconds), while disconnected.
    reconnect_at: u64,
    /// The wait after the next failed connection attempt.
    backoff: u64,
    /// The device is revoked or wiped: nothing more to do.
    stopped: Option<(bool, String)>,
}

impl Engine {
    /// An engine over an open client. It connects on the first [`Engine::tick`].
    pub fn new(client: Client) -> Engine {
        Engine {
            client,
            events: Vec::new(),
            connected: false,
            reconnect_at: 0,
            backoff: FIRST_RECONNECT,
            stopped: None,
        }
    }

    /// The client inside.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Why the engine stopped, if it did: the device was revoked, or wiped.
    pub fn stopped(&self) -> Option<Error> {
        self.stopped.as_ref().map(|(wiped, why)| match wiped {
            true => Error::Wiped(why.clone()),
            false => Error::Revoked(why.clone()),
        })
    }

    /// The events since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Runs a command; what it changed is also told as events.
    pub fn execute(&mut self, command: Command) -> Result<Value, Error> {
        let mut progress = Vec::new();
        let result = self.execute_with(command, &mut |e| progress.push(e));
        let mut events = progress;
        events.append(&mut self.events);
        self.events = events;
        result
    }

    /// [`Engine::execute`], with a file transfer's progress told to `live` as it goes (at
    /// most a hundred events per transfer) rather than queued with the other events.
    pub fn execute_with(
        &mut self,
        command: Command,
        live: &mut dyn FnMut(Event),
    ) -> Result<Value, Error> {
        let transfer = match &command {
            Command::SendFile { .. } => "upload",
            Command::Download { .. } | Command::Export { .. } => "download",
            _ => "",
        };
        let mut last = 0;
        let result = execute(&mut self.client, command.clone(), &mut |done, total| {
            if done == total || done >= last + total.max(100) / 100 {
                last = done;
                live(Event::Progress { transfer: transfer.into(), done, total });
            }
        });
        self.report(&command, &result);
        result
    }

    /// Events for what a command did.
    fn report(&mut self, command: &Command, result: &Result<Value, Error>) {
        let message = |v: &Value| serde_json::from_value::<MessageView>(v.clone()).ok();
        match (command, result) {
            (Command::Send { .. } | Command::SendFile { .. } | Command::Resend { .. }, Ok(v)) => {
                if let Some(m) = message(v) {
                    self.events.push(Event::Delivery { message: m });
                }
            }
            (
                Command::GroupCreate { .. }
                | Command::GroupAdd { .. }
                | Command::GroupRemove { .. }
                | Command::GroupLeave { .. }
                | Command::ChatTimer { .. },
                Ok(v),
            ) => {
                if let Ok(chat) = serde_json::from_value::<ChatSummary>(v.clone()) {
                    self.events.push(Event::Chat { chat });
                }
            }
            (Command::Sync, Ok(v)) => {
                if let Ok(report) = serde_json::from_value::<crate::SyncReport>(v.clone()) {
                    self.report_sync(report);
                }
            }
            // A message that could not go now is stored: its state is news too.
            (_, Err(Error::Queued { message, .. } | Error::NotSent { message, .. })) => {
                let found = self.client.message_views(
                    "WHERE m.msg_id = ?1 AND m.sender = ?2",
                    rusqlite::params![message, self.client.account.address],
                );
                if let Ok(Some(m)) = found.map(|mut v| v.pop()) {
                    self.events.push(Event::Delivery { message: m });
                }
            }
            _ => {}
        }
    }

    fn report_sync(&mut self, report: crate::SyncReport) {
        let crate::SyncReport { messages, failures, notices, updated, .. } = report;
        self.events.extend(messages.into_iter().map(|message| Event::Message { message }));
        self.events.extend(updated.into_iter().map(|message| Event::Delivery { message }));
        self.events.extend(notices.into_iter().map(|text| Event::Notice { text }));
        self.events
            .extend(failures.into_iter().map(|f| Event::Failure { seq: f.seq, reason: f.reason }));
    }

    /// Ends the engine on a revoked or wiped device; other errors pass through.
    fn check_revoked(&mut self, e: Error) -> Error {
        let e = match e {
            e if e.server_code() == Some("device_revoked") => self.client.obey_revocation(),
            e if e.server_code().is_some_and(crate::account_barred) => self.client.obey_wipe_or(e),
            e => e,
        };
        if matches!(e, Error::Revoked(_) | Error::Wiped(_)) {
            self.stopped = Some((matches!(e, Error::Wiped(_)), e.to_string()));
            self.events.push(Event::Notice { text: e.to_string() });
        }
        e
    }

    /// Lets time pass: catches up and opens the live connection when it is time to (returned
    /// for the caller to read), and delivers what is due in the outbox.
    pub fn tick(&mut self) -> (Option<Box<dyn LiveLink>>, Wants) {
        if self.stopped.is_some() {
            return (None, Wants::Stop);
        }
        let now = self.client.now_ms();
        let mut link = None;
        if !self.connected && now >= self.reconnect_at {
            match self.connect() {
                Ok(l) => {
                    self.connected = true;
                    self.backoff = FIRST_RECONNECT;
                    self.events.push(Event::Connection { state: "connected".into(), reason: None });
                    link = Some(l);
                }
                Err(e) => {
                    let e = self.check_revoked(e);
                    if self.stopped.is_some() {
                        return (None, Wants::Stop);
                    }
                    if e.server_code() == Some("unauthorized") {
                        // A token the server no longer knows: log in again next time.
                        self.client.api.forget_token();
                    }
                    self.disconnected(e.to_string());
                }
            }
        }
        // Chats due for a fresh key of this device (a sync above did them already).
        if self.connected && link.is_none() {
            match self.client.heal(false) {
                Ok(report) => {
                    for (chat, reason) in report.failed {
                        self.events.push(Event::Notice {
                            text: format!(
                                "could not update this device's keys in {chat}: {reason}"
                            ),
                        });
                    }
                }
                Err(e) => {
                    let e = self.check_revoked(e);
                    if self.stopped.is_some() {
                        return (None, Wants::Stop);
                    }
                    self.events.push(Event::Notice { text: format!("key update: {e}") });
                }
            }
        }
        // Receipts that gathered long enough join the outbox.
        if let Err(e) = self.client.queue_receipts(false) {
            self.events.push(Event::Notice { text: format!("receipts: {e}") });
        }
        // The outbox: what is due now (a sync above delivered everything already).
        match self.client.flush_outbox(None, false) {
            Ok(changed) => match self.client.updated_views(changed) {
                Ok(views) => {
                    self.events.extend(views.into_iter().map(|message| Event::Delivery { message }))
                }
                Err(e) => self.events.push(Event::Notice { text: format!("outbox: {e}") }),
            },
            Err(e) => {
                let e = self.check_revoked(e);
                if self.stopped.is_some() {
                    return (None, Wants::Stop);
                }
                // The server being away is told by `connection` events already.
                if !transient(&e) {
                    self.events.push(Event::Notice { text: format!("outbox: {e}") });
                }
            }
        }
        (link, Wants::WaitUntil(self.next_wake()))
    }

    /// Catches up, then opens the live connection.
    fn connect(&mut self) -> Result<Box<dyn LiveLink>, Error> {
        let report = self.client.sync()?;
        self.report_sync(report);
        self.client.connect_live()
    }

    fn disconnected(&mut self, reason: String) {
        self.connected = false;
        let jitter = u64::from(sotto_core::random_bytes(1).map(|b| b[0]).unwrap_or(0));
        self.reconnect_at = self.client.now_ms() + self.backoff + jitter;
        self.backoff = (self.backoff * 2).min(MAX_RECONNECT);
        self.events.push(Event::Connection { state: "disconnected".into(), reason: Some(reason) });
    }

    /// When something is due: a reconnection, or the outbox's next attempt.
    fn next_wake(&self) -> u64 {
        let outbox = self.client.outbox_next_at().ok().flatten().unwrap_or(u64::MAX);
        let receipts = self.client.receipts_next_at().ok().flatten().unwrap_or(u64::MAX);
        let outbox = outbox.min(receipts);
        let (reconnect, heal) = if self.connected {
            (u64::MAX, self.client.heal_next_at().ok().flatten().unwrap_or(u64::MAX))
        } else {
            // Keys are updated once connected again (a sync does it).
            (self.reconnect_at, u64::MAX)
        };
        outbox.min(reconnect).min(heal)
    }

    /// The live connection closed.
    pub fn closed(&mut self) {
        if self.connected {
            self.disconnected("the connection closed".into());
        }
    }

    /// A frame from the live connection. Returns the acknowledgement to send back, if any:
    /// one for a whole page of messages.
    pub fn frame(&mut self, frame: Result<Down, FrameError>) -> Option<Up> {
        match frame {
            // A connection given up on (below) may still bring pages: they wait, unacknowledged,
            // for the catch-up, which takes them in order after what was left.
            Ok(Down::Messages(_)) if !self.connected => None,
            Ok(Down::Messages(page)) => {
                let (processed, up_to) = match self.client.process_page(&page) {
                    Ok(done) => done?,
                    // A message kept by reference could not be fetched: not acknowledged, and
                    // the catch-up after reconnecting takes the page again.
                    Err(e) if crate::outbox::transient(&e) => {
                        self.disconnected(e.to_string());
                        return None;
                    }
                    Err(e) => {
                        // The local database failed: not acknowledged, so it comes again.
                        self.events.push(Event::Notice { text: format!("could not store: {e}") });
                        return None;
                    }
                };
                match self.client.finish_batch(processed, false) {
                    Ok(report) => self.report_sync(report),
                    Err(e) => {
                        let e = self.check_revoked(e);
                        self.events.push(Event::Notice { text: e.to_string() });
                    }
                }
                Some(Up::Ack(proto::AckRequest { up_to }))
            }
            Ok(Down::Acked(a)) => {
                if let Err(e) = crate::db::set_last_acked(&self.client.conn, a.up_to) {
                    self.events.push(Event::Notice { text: format!("could not store: {e}") });
                }
                None
            }
            Ok(Down::Error(e)) => {
                let error = Error::Server {
                    status: 0,
                    code: crate::error::code_name(e.error.code),
                    message: e.error.message,
                    epoch: None,
                };
                let error = self.check_revoked(error);
                self.disconnected(error.to_string());
                None
            }
            Err(e) => {
                self.disconnected(format!("bad frame from the server: {e}"));
                None
            }
        }
    }
}

/// Where a command's answer goes: called once, on the engine's thread (a channel's send, so
/// that front ends on any runtime can wait their way).
pub type Reply = Box<dyn FnOnce(Result<Value, Error>) + Send>;

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Input::Command(c, _) => f.debug_tuple("Command").field(&c.method()).finish(),
            Input::Frame(g, _) => f.debug_tuple("Frame").field(g).finish(),
            Input::Closed(g) => f.debug_tuple("Closed").field(g).finish(),
            Input::Stop => f.write_str("Stop"),
        }
    }
}

/// What reaches the engine's thread.
pub enum Input {
    /// A command, and where its answer goes.
    Command(Command, Reply),
    /// A frame from live connection number `.0`.
    Frame(u64, Result<Down, FrameError>),
    /// Live connection number `.0` closed.
    Closed(u64),
    /// Stop.
    Stop,
}

/// Runs `engine` until [`Input::Stop`] or the device is revoked: commands from `inputs`,
/// events to `on_event`. The live connection is read on a thread of its own that feeds
/// `inputs` (which is why `feed` must send to it).
pub fn run(
    mut engine: Engine,
    inputs: &Receiver<Input>,
    feed: &Sender<Input>,
    on_event: &mut dyn FnMut(Event),
) -> Result<(), Error> {
    let mut generation = 0u64;
    let mut reader: Option<(Arc<AtomicBool>, Sender<Up>)> = None;
    // When something is due (a reconnection, an outbox retry); ticks happen then, not after
    // every command or frame.
    let mut wake = 0;
    let result = loop {
        if engine.client.now_ms() >= wake {
            let (link, wants) = engine.tick();
            engine.take_events().into_iter().for_each(&mut *on_event);
            if let Some(link) = link {
                generation += 1;
                if let Some((stop, _)) = reader.take() {
                    stop.store(true, Ordering::Relaxed);
                }
                reader = Some(read_live(link, generation, feed.clone()));
            }
            wake = match wants {
                Wants::Stop => {
                    break Err(engine.stopped().unwrap_or(Error::Revoked("revoked".into())));
                }
                Wants::WaitUntil(at) => at,
            };
        }
        let wait = wake.saturating_sub(engine.client.now_ms()).clamp(1, 60_000);
        let input = match inputs.recv_timeout(Duration::from_millis(wait)) {
            Ok(input) => input,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break Ok(()),
        };
        match input {
            Input::Command(command, reply) => {
                reply(engine.execute_with(command, on_event));
                // A message that has to wait sets when it is tried next.
                wake = wake.min(engine.next_wake());
            }
            Input::Frame(g, frame) if g == generation => {
                if let Some(ack) = engine.frame(frame)
                    && let Some((_, acks)) = &reader
                {
                    let _ = acks.send(ack);
                }
                // A refusal on the connection drops it (reconnect in time); a commit may make
                // key updates due (another device of this account was removed).
                wake = wake.min(engine.next_wake());
            }
            Input::Closed(g) if g == generation => {
                reader = None;
                engine.closed();
                wake = wake.min(engine.next_wake());
            }
            Input::Frame(..) | Input::Closed(_) => {}
            Input::Stop => break Ok(()),
        }
        engine.take_events().into_iter().for_each(&mut *on_event);
    };
    engine.take_events().into_iter().for_each(&mut *on_event);
    if let Some((stop, _)) = reader {
        stop.store(true, Ordering::Relaxed);
    }
    result
}

/// Reads a live connection on a thread of its own: frames go to `feed`, acknowledgements come
/// back on the returned sender. Setting the flag closes it.
fn read_live(
    mut link: Box<dyn LiveLink>,
    generation: u64,
    feed: Sender<Input>,
) -> (Arc<AtomicBool>, Sender<Up>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (ack_tx, acks) = std::sync::mpsc::channel::<Up>();
    let stopping = stop.clone();
    std::thread::spawn(move || {
        loop {
            if stopping.load(Ordering::Relaxed) {
                link.close();
                return;
            }
            while let Ok(ack) = acks.try_recv() {
                if !link.send(&ack) {
                    let _ = feed.send(Input::Closed(generation));
                    return;
                }
            }
            match link.recv(Duration::from_millis(25)) {
                Received::Frame(frame) => {
                    if feed.send(Input::Frame(generation, frame)).is_err() {
                        link.close();
                        return;
                    }
                }
                Received::Idle => {}
                Received::Closed => {
                    let _ = feed.send(Input::Closed(generation));
                    return;
                }
            }
        }
    });
    (stop, ack_tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_parses_and_names_itself() {
        for method in Command::METHODS {
            // Every field a method needs, in a form every one of them accepts.
            let params = serde_json::json!({
                "chat": "c", "limit": 1, "to": "a@b.org", "text": "t", "path": "/p", "out": "/o",
                "message": "m", "name": "n", "members": [], "seconds": 1, "address": "a@b.org",
                "code": "c", "device": 1, "emoji": "x", "flag": "muted", "on": true, "format": "json",
            });
            let obj = params.as_object().cloned().unwrap_or_default();
            // Keep only the fields this method takes: try each subset made by dropping the
            // ones serde calls unknown.
            let mut params = obj.clone();
            if let Ok(c) = Command::from_rpc(method, Some(serde_json::json!({}))) {
                assert_eq!(c.method(), *method);
                continue;
            }
            let command = loop {
                match Command::from_rpc(method, Some(Value::Object(params.clone()))) {
                    Ok(c) => break c,
                    Err(Error::Invalid(e)) => {
                        let unknown = e
                            .split_once("unknown field `")
                            .and_then(|(_, rest)| rest.split_once('`'))
                            .map(|(field, _)| field.to_string());
                        match unknown.and_then(|k| params.remove(&k)) {
                            Some(_) => continue,
                            None => panic!("{method}: {e}"),
                        }
                    }
                    Err(e) => panic!("{method}: {e}"),
                }
            };
            assert_eq!(command.method(), *method);
            let wire = serde_json::to_value(&command).unwrap_or_default();
            assert_eq!(wire["method"], *method);
        }
        assert!(Command::from_rpc("nope", None).is_err());
        assert!(Command::from_rpc("send", Some(serde_json::json!({"text": 1}))).is_err());
    }

    #[test]
    fn every_event_kind_is_listed_and_on_the_wire() {
        let events = [
            Event::Notice { text: String::new() },
            Event::Failure { seq: 1, reason: String::new() },
            Event::Connection { state: "connected".into(), reason: None },
            Event::Progress { transfer: "upload".into(), done: 0, total: 1 },
        ];
        for e in &events {
            assert!(Event::KINDS.contains(&e.kind()));
            assert_eq!(serde_json::to_value(e).unwrap_or_default()["event"], e.kind());
        }
        let mut kinds = Event::KINDS.to_vec();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds.len(), Event::KINDS.len());
    }
}
