//! The terminal client's state and what keys and engine events do to it. No terminal, no
//! engine: [`App`] is fed keys, events and answers, and says what to ask the engine
//! ([`Effect`]); `view` draws it. Tests drive it directly.

use std::collections::HashMap;

use serde_json::Value;
use sotto_client::engine::{Command, Event};
use sotto_client::{ChatFlag, ChatSummary, DeviceView, Error, MessageView, SafetyView};

use crate::tui::keys::{Key, KeyCode};

/// Messages loaded at a time (the first screen, then each page back).
pub const PAGE: usize = 100;

/// Warnings kept waiting at most (the oldest goes first).
const MAX_BANNERS: usize = 5;

/// The `:` commands, for completion and the help screen: (name, arguments, what it does).
pub const COMMANDS: &[(&str, &str, &str)] = &[
    ("dm", "ADDRESS", "open (or start) the direct chat with ADDRESS"),
    ("group", "NAME [ADDRESS...]", "create a group"),
    ("add", "ADDRESS...", "add members to this group"),
    ("remove", "ADDRESS...", "remove members from this group"),
    ("leave", "", "leave this group"),
    ("rename", "NAME", "rename this group"),
    ("timer", "30s|1h|7d|off", "disappearing messages in this chat"),
    ("reply", "MESSAGE", "answer a message (the next one you send)"),
    ("react", "MESSAGE EMOJI", "react to a message (no emoji: take it back)"),
    ("edit", "MESSAGE TEXT", "replace the text of a message of yours"),
    ("delete", "MESSAGE", "delete a message of yours for everyone"),
    ("resend", "MESSAGE", "send a failed message again"),
    ("file", "PATH", "send a file"),
    ("download", "MESSAGE [PATH]", "download a file"),
    ("search", "WORDS", "search this chat (Esc returns)"),
    ("mute", "", "no bell for this chat"),
    ("unmute", "", "bell again"),
    ("pin", "", "list this chat first"),
    ("unpin", "", "stop listing it first"),
    ("archive", "", "hide this chat until someone writes"),
    ("name", "ADDRESS [NAME]", "a nickname for a contact (here only)"),
    ("safety", "[ADDRESS]", "the safety number (and QR code) with a contact"),
    ("devices", "", "this account's devices"),
    ("link", "CODE [NAME]", "approve a new device with the code it shows"),
    ("revoke", "DEVICE", "revoke a device of this account"),
    ("wipe", "DEVICE", "revoke a device and have it erase itself (asks first)"),
    ("help", "", "keys and commands"),
    ("quit", "", "leave the terminal client (also :q, Ctrl-C)"),
];

/// Which part of the screen keys go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    /// The chat list.
    List,
    /// The conversation (scrolling).
    Conversation,
    /// The composer (typing).
    Composer,
}

/// What fills the screen.
#[derive(Debug, Clone)]
pub enum Screen {
    /// Chats, conversation, composer.
    Main,
    /// Every key and command, scrolled down this many lines.
    Help(u16),
    /// The safety number with a contact.
    Safety(SafetyView),
    /// This account's devices, and the selected row.
    Devices(Vec<DeviceView>, usize),
}

/// What a `y` to a question does.
#[derive(Debug)]
pub enum Confirmed {
    /// Run this command.
    Run(Command),
    /// Quit (with unsent drafts).
    Quit,
}

/// What the app asks of the engine: a command, whose answer comes back to
/// [`App::on_answer`] with the same tag; or a terminal bell.
#[derive(Debug)]
pub enum Effect {
    /// Run this command.
    Run(u64, Command),
    /// Ring the terminal bell.
    Bell,
    /// A desktop notification that a message arrived in this chat (its title; never the
    /// message itself).
    Notify(String),
}

/// What an answer is for.
#[derive(Debug, Clone)]
enum Asked {
    Chats,
    /// A chat's messages: the first page, or a page before those loaded.
    History {
        chat: String,
        older: bool,
    },
    Search {
        chat: String,
    },
    /// A safety number; `keys`: how many keys had been pressed when it was asked.
    Safety {
        keys: u64,
    },
    /// The device list (or something that changes it).
    Devices {
        keys: u64,
    },
    /// A message sent from the composer to this chat (or, starting one, this address).
    Send {
        chat: Option<String>,
        to: Option<String>,
    },
    /// Marking a chat read: nothing to show.
    Read,
    /// Anything else: what to say when it is done.
    Other(&'static str),
}

/// The open conversation.
#[derive(Debug, Clone)]
pub struct Open {
    /// The chat id, or none for a direct chat that starts with the first message.
    pub chat: Option<String>,
    /// The address of a direct chat not yet started.
    pub to: Option<String>,
    /// Its title.
    pub title: String,
    /// Loaded messages, oldest first.
    pub messages: Vec<MessageView>,
    /// Whether older messages may exist.
    pub more_before: bool,
    /// Lines scrolled up from the newest.
    pub scroll: usize,
    /// Search results shown instead of the conversation, with the words.
    pub search: Option<String>,
}

/// The status line.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// `connected`, `disconnected (why)`, or `connecting`.
    pub connection: String,
    /// The last error, until the next key.
    pub error: Option<String>,
    /// The last notice.
    pub info: Option<String>,
    /// A file transfer under way: `upload` or `download`, bytes done, bytes in all.
    pub progress: Option<(String, u64, u64)>,
}

/// The whole state of the terminal client.
#[derive(Debug)]
pub struct App {
    /// This account's address.
    pub me: String,
    /// Colours on (off with `NO_COLOR`).
    pub color: bool,
    /// Every chat, as `chats --all` lists them.
    pub chats: Vec<ChatSummary>,
    /// The selected row of the visible (filtered) list.
    pub selected: usize,
    /// The list filter being typed, if any.
    pub filter: Option<String>,
    /// The open conversation.
    pub open: Option<Open>,
    /// Where keys go.
    pub focus: Focus,
    /// The composer's text.
    pub composer: String,
    /// The message the next one answers.
    pub reply_to: Option<String>,
    /// The `:` line being typed.
    pub command: Option<String>,
    /// What fills the screen.
    pub screen: Screen,
    /// The status line.
    pub status: Status,
    /// Warnings that stay until dismissed (a key changed, a lying server, a device lost).
    pub banners: Vec<String>,
    /// A question waiting for `y` (anything else cancels), and what `y` does.
    pub confirm: Option<(String, Confirmed)>,
    /// Keys pressed so far (a screen asked for before the last key opens locked: what was
    /// typed ahead must not answer it).
    keys: u64,
    /// Whether action keys on the open safety or devices screen are ignored until one key
    /// unlocks it.
    pub locked: bool,
    /// The chat list is to be asked for again once the answer in flight arrives.
    chats_dirty: bool,
    /// Unsent texts of chats left, by chat id.
    drafts: HashMap<String, String>,
    /// Set once the user asked to quit.
    pub quit: bool,
    /// Lines the conversation area showed last (for paging).
    pub page_lines: usize,
    pending_g: bool,
    next_tag: u64,
    asked: HashMap<u64, Asked>,
}

/// Whether a notice is one that must not be missed.
fn alarming(text: &str) -> bool {
    ["identity key changed", "untrusted", "revoked", "wiped", "did not arrive", "held back"]
        .iter()
        .any(|w| text.contains(w))
}

/// The command that deals with a warning, shown with it.
pub fn remedy(text: &str) -> String {
    if let Some(i) = text.find("'s identity key changed") {
        let address = text[..i].rsplit(' ').next().unwrap_or("ADDRESS");
        format!(":safety {address}")
    } else if text.contains("identity key changed") {
        ":safety ADDRESS".into()
    } else if text.contains("revoked") || text.contains("wiped") {
        ":devices".into()
    } else {
        String::new()
    }
}

/// Completes the last path of a `:file` or `:download` line from the file system: the
/// completed line, or the candidates when several fit.
pub fn complete_path(line: &str) -> Result<String, Vec<String>> {
    let Some((head, path)) = line.rsplit_once(' ') else { return Err(Vec::new()) };
    let (dir, prefix) = match path.rfind('/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => ("", path),
    };
    let listed = if dir.is_empty() { "." } else { dir };
    let Ok(entries) = std::fs::read_dir(listed) else { return Err(Vec::new()) };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let slash = if e.file_type().is_ok_and(|t| t.is_dir()) { "/" } else { "" };
            name.starts_with(prefix).then(|| format!("{name}{slash}"))
        })
        .collect();
    names.sort();
    match names.as_slice() {
        [] => Err(Vec::new()),
        [one] => Ok(format!("{head} {dir}{one}")),
        many => {
            // As far as every candidate agrees.
            let first = &many[0];
            let common = (0..=first.len())
                .rev()
                .filter(|&n| first.is_char_boundary(n))
                .find(|&n| many.iter().all(|m| m.starts_with(&first[..n])))
                .unwrap_or(0);
            if common > prefix.len() {
                Ok(format!("{head} {dir}{}", &first[..common]))
            } else {
                Err(many.to_vec())
            }
        }
    }
}

impl App {
    /// A fresh app for the account `me`.
    pub fn new(me: &str, color: bool) -> App {
        App {
            me: me.to_string(),
            color,
            chats: Vec::new(),
            selected: 0,
            filter: None,
            open: None,
            focus: Focus::List,
            composer: String::new(),
            reply_to: None,
            command: None,
            screen: Screen::Main,
            status: Status { connection: "connecting".into(), ..Status::default() },
            banners: Vec::new(),
            confirm: None,
            keys: 0,
            locked: false,
            chats_dirty: false,
            drafts: HashMap::new(),
            quit: false,
            page_lines: 20,
            pending_g: false,
            next_tag: 1,
            asked: HashMap::new(),
        }
    }

    /// What to ask first.
    pub fn start(&mut self) -> Vec<Effect> {
        self.ask_chats()
    }

    fn ask(&mut self, what: Asked, command: Command) -> Effect {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.asked.insert(tag, what);
        Effect::Run(tag, command)
    }

    /// Asks for the chat list, unless an answer to that is on its way: then once more after
    /// it (a burst of messages asks once or twice, not once per message).
    fn ask_chats(&mut self) -> Vec<Effect> {
        if self.asked.values().any(|a| matches!(a, Asked::Chats)) {
            self.chats_dirty = true;
            return Vec::new();
        }
        vec![self.ask(Asked::Chats, Command::Chats { all: true })]
    }

    fn other(&mut self, done: &'static str, command: Command) -> Effect {
        self.ask(Asked::Other(done), command)
    }

    /// The chats the list shows: archived ones only while filtering, in list order.
    pub fn visible(&self) -> Vec<&ChatSummary> {
        let filter = self.filter.as_deref().map(str::to_lowercase);
        self.chats
            .iter()
            .filter(|c| match &filter {
                Some(f) => {
                    c.title.to_lowercase().contains(f.as_str())
                        || c.peer.as_deref().is_some_and(|p| p.contains(f.as_str()))
                }
                None => !c.archived,
            })
            .collect()
    }

    /// Keeps what was being written with the chat it was written in, and takes up what was
    /// written in `next` (a chat id, or `to:ADDRESS` for a direct chat not started yet).
    fn switch_draft(&mut self, next: &str) {
        let current = self
            .open
            .as_ref()
            .and_then(|o| o.chat.clone().or_else(|| o.to.as_ref().map(|t| format!("to:{t}"))));
        if let Some(key) = current {
            let draft = std::mem::take(&mut self.composer);
            if draft.is_empty() {
                self.drafts.remove(&key);
            } else {
                self.drafts.insert(key, draft);
            }
        }
        self.composer = self.drafts.remove(next).unwrap_or_default();
        self.reply_to = None;
    }

    fn open_chat(&mut self, chat: &ChatSummary) -> Vec<Effect> {
        self.switch_draft(&chat.id);
        self.open = Some(Open {
            chat: Some(chat.id.clone()),
            to: None,
            title: chat.title.clone(),
            messages: Vec::new(),
            more_before: true,
            scroll: 0,
            search: None,
        });
        self.reply_to = None;
        self.focus = Focus::Composer;
        let history = Command::History { chat: chat.id.clone(), limit: Some(PAGE), before: None };
        let mut out =
            vec![self.ask(Asked::History { chat: chat.id.clone(), older: false }, history)];
        if chat.unread > 0 {
            out.push(self.ask(Asked::Read, Command::Read { chat: chat.id.clone() }));
        }
        out
    }

    fn open_id(&self) -> Option<&str> {
        self.open.as_ref().and_then(|o| o.chat.as_deref())
    }

    /// The open chat's summary.
    pub fn open_summary(&self) -> Option<&ChatSummary> {
        let id = self.open_id()?;
        self.chats.iter().find(|c| c.id == id)
    }

    /// Whether a message belongs to the open conversation (a direct conversation may span
    /// two chats with the same account).
    fn in_open(&self, m: &MessageView) -> bool {
        if self.open_id() == Some(m.chat.as_str()) {
            return true;
        }
        // Another chat of the same direct conversation: both known as direct chats with the
        // same account (a group named like a contact is not one).
        let direct_peer = |id: &str| {
            self.chats
                .iter()
                .find(|c| c.id == id && c.kind == "direct")
                .and_then(|c| c.peer.clone())
        };
        match (self.open_id().and_then(direct_peer), direct_peer(&m.chat)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    }

    // ---- keys ----

    /// A key. Returns what to ask of the engine.
    pub fn on_key(&mut self, key: Key) -> Vec<Effect> {
        self.status.error = None;
        if key.ctrl && key.code == KeyCode::Char('c') {
            self.quit = true;
            return Vec::new();
        }
        self.keys += 1;
        if let Some((_, confirmed)) = self.confirm.take() {
            if key.code == KeyCode::Char('y') {
                return match confirmed {
                    Confirmed::Run(command) => vec![self.other("done", command)],
                    Confirmed::Quit => {
                        self.quit = true;
                        Vec::new()
                    }
                };
            }
            self.status.info = Some("cancelled".into());
            return Vec::new();
        }
        if self.locked && matches!(self.screen, Screen::Safety(_) | Screen::Devices(..)) {
            self.locked = false;
            return Vec::new();
        }
        match &mut self.screen {
            Screen::Main => {}
            Screen::Help(scroll) => {
                match key.code {
                    KeyCode::Down | KeyCode::Char('j') => *scroll = scroll.saturating_add(1),
                    KeyCode::Up | KeyCode::Char('k') => *scroll = scroll.saturating_sub(1),
                    KeyCode::PageDown | KeyCode::Char(' ') => *scroll = scroll.saturating_add(10),
                    KeyCode::PageUp => *scroll = scroll.saturating_sub(10),
                    _ => self.screen = Screen::Main,
                }
                return Vec::new();
            }
            Screen::Safety(view) => {
                let address = view.address.clone();
                let changed = view.changed_since_verified;
                let verify = |mark_verified, accept_change| Command::Verify {
                    address: address.clone(),
                    mark_verified,
                    expect: None,
                    accept_change,
                };
                let keys = self.keys;
                return match key.code {
                    KeyCode::Char('v') => {
                        vec![self.ask(Asked::Safety { keys }, verify(true, false))]
                    }
                    KeyCode::Char('a') if changed => {
                        self.confirm = Some((
                            format!("accept {address}'s new key without comparing? (y/n)"),
                            Confirmed::Run(verify(false, true)),
                        ));
                        Vec::new()
                    }
                    _ => {
                        self.screen = Screen::Main;
                        Vec::new()
                    }
                };
            }
            Screen::Devices(list, selected) => {
                match key.code {
                    KeyCode::Up | KeyCode::Char('k') => *selected = selected.saturating_sub(1),
                    KeyCode::Down | KeyCode::Char('j') => {
                        *selected = (*selected + 1).min(list.len().saturating_sub(1));
                    }
                    KeyCode::Char(c @ ('r' | 'w')) => {
                        if let Some(d) = list.get(*selected).filter(|d| !d.this_device) {
                            let verb = if c == 'r' { "revoke" } else { "wipe" };
                            let line = format!("{verb} {}", d.device_id);
                            self.screen = Screen::Main;
                            return self.run_command(&line);
                        }
                    }
                    _ => self.screen = Screen::Main,
                }
                return Vec::new();
            }
        }
        if self.command.is_some() {
            return self.command_key(key);
        }
        if self.filter.is_some() && self.focus == Focus::List {
            return self.filter_key(key);
        }
        match self.focus {
            Focus::Composer => self.composer_key(key),
            Focus::List => self.list_key(key),
            Focus::Conversation => self.conversation_key(key),
        }
    }

    /// Text pasted into the terminal (bracketed paste): into the composer, newlines kept.
    pub fn on_paste(&mut self, text: &str) {
        if let Some(line) = &mut self.command {
            line.push_str(&text.replace(['\n', '\r'], " "));
        } else {
            self.focus = Focus::Composer;
            self.composer.push_str(&text.replace("\r\n", "\n").replace('\r', "\n"));
        }
    }

    /// The mouse wheel over the conversation.
    pub fn on_scroll(&mut self, up: bool) -> Vec<Effect> {
        self.scroll_by(if up { 3 } else { -3 })
    }

    fn focus_next(&mut self) {
        self.focus = match self.focus {
            Focus::List if self.open.is_some() => Focus::Conversation,
            Focus::List => Focus::List,
            Focus::Conversation => Focus::Composer,
            Focus::Composer => Focus::List,
        };
    }

    fn common_key(&mut self, key: Key) -> Option<Vec<Effect>> {
        match key.code {
            KeyCode::Tab => self.focus_next(),
            KeyCode::Char(':') => self.command = Some(String::new()),
            KeyCode::Char('?') | KeyCode::F(1) => self.screen = Screen::Help(0),
            KeyCode::Char('S') => return Some(self.run_command("safety")),
            KeyCode::Char('q') => self.ask_quit(),
            KeyCode::Char('i') if self.open.is_some() => self.focus = Focus::Composer,
            KeyCode::Esc => {
                // Leaving search results, or dismissing the oldest warning.
                if let Some(open) = &mut self.open
                    && open.search.is_some()
                {
                    return Some(self.leave_search());
                }
                if !self.banners.is_empty() {
                    self.banners.remove(0);
                }
            }
            _ => return None,
        }
        Some(Vec::new())
    }

    fn list_key(&mut self, key: Key) -> Vec<Effect> {
        let n = self.visible().len();
        match key.code {
            KeyCode::Up | KeyCode::Char('k') => self.selected = self.selected.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => {
                self.selected = (self.selected + 1).min(n.saturating_sub(1));
            }
            KeyCode::Char('g') if self.pending_g => {
                self.selected = 0;
                self.pending_g = false;
            }
            KeyCode::Char('g') => self.pending_g = true,
            KeyCode::Char('G') | KeyCode::End => self.selected = n.saturating_sub(1),
            KeyCode::Home => self.selected = 0,
            KeyCode::Char('/') => {
                self.filter = Some(String::new());
                self.selected = 0;
            }
            KeyCode::Enter | KeyCode::Right | KeyCode::Char('l') => {
                if let Some(chat) = self.visible().get(self.selected).map(|c| (*c).clone()) {
                    return self.open_chat(&chat);
                }
            }
            _ => return self.common_key(key).unwrap_or_default(),
        }
        if key.code != KeyCode::Char('g') {
            self.pending_g = false;
        }
        Vec::new()
    }

    fn filter_key(&mut self, key: Key) -> Vec<Effect> {
        let Some(filter) = &mut self.filter else { return Vec::new() };
        match key.code {
            KeyCode::Esc => self.filter = None,
            KeyCode::Backspace => {
                filter.pop();
            }
            KeyCode::Enter => {
                let chat = self.visible().get(self.selected).map(|c| (*c).clone());
                self.filter = None;
                if let Some(chat) = chat {
                    return self.open_chat(&chat);
                }
            }
            KeyCode::Up => self.selected = self.selected.saturating_sub(1),
            KeyCode::Down => {
                self.selected = (self.selected + 1).min(self.visible().len().saturating_sub(1))
            }
            KeyCode::Char(c) => {
                filter.push(c);
                self.selected = 0;
            }
            _ => {}
        }
        Vec::new()
    }

    fn conversation_key(&mut self, key: Key) -> Vec<Effect> {
        let page = self.page_lines.max(2) as isize - 1;
        let out = match key.code {
            KeyCode::Up | KeyCode::Char('k') => self.scroll_by(1),
            KeyCode::Down | KeyCode::Char('j') => self.scroll_by(-1),
            KeyCode::PageUp => self.scroll_by(page),
            KeyCode::PageDown => self.scroll_by(-page),
            KeyCode::Char('g') if self.pending_g => {
                self.pending_g = false;
                self.scroll_by(isize::MAX / 2)
            }
            KeyCode::Char('g') => {
                self.pending_g = true;
                return Vec::new();
            }
            KeyCode::Char('G') | KeyCode::End => {
                if let Some(open) = &mut self.open {
                    open.scroll = 0;
                }
                Vec::new()
            }
            KeyCode::Char('/') => {
                self.command = Some("search ".into());
                Vec::new()
            }
            _ => self.common_key(key).unwrap_or_default(),
        };
        self.pending_g = false;
        out
    }

    fn composer_key(&mut self, key: Key) -> Vec<Effect> {
        match key.code {
            KeyCode::Enter if key.alt => self.composer.push('\n'),
            KeyCode::Enter => return self.send(),
            KeyCode::Esc => self.focus = Focus::Conversation,
            KeyCode::Tab => self.focus_next(),
            KeyCode::Backspace => {
                self.composer.pop();
            }
            KeyCode::Char('u') if key.ctrl => self.composer.clear(),
            KeyCode::PageUp => return self.scroll_by(self.page_lines as isize - 1),
            KeyCode::PageDown => return self.scroll_by(1 - self.page_lines as isize),
            // Alt and a character is an escape sequence the terminal split, not text.
            KeyCode::Char(c) if !key.ctrl && !key.alt => self.composer.push(c),
            _ => {}
        }
        Vec::new()
    }

    fn scroll_by(&mut self, lines: isize) -> Vec<Effect> {
        let Some(open) = &mut self.open else { return Vec::new() };
        open.scroll = open.scroll.saturating_add_signed(lines);
        Vec::new()
    }

    /// Called by the view with how many lines the conversation holds: clamps the scroll and
    /// asks for older messages when the top is reached.
    pub fn scrolled_to(&mut self, total_lines: usize, shown: usize) -> Vec<Effect> {
        self.page_lines = shown;
        let Some(open) = &mut self.open else { return Vec::new() };
        let max = total_lines.saturating_sub(shown);
        // At the top (or all of it fits): earlier messages are wanted.
        let at_top = open.scroll >= max;
        open.scroll = open.scroll.min(max);
        if !at_top || !open.more_before || open.search.is_some() {
            return Vec::new();
        }
        let (Some(chat), Some(before)) =
            (open.chat.clone(), open.messages.first().map(|m| m.id.clone()))
        else {
            return Vec::new();
        };
        if self.asked.values().any(|a| matches!(a, Asked::History { older: true, .. })) {
            return Vec::new();
        }
        let before = Some(before);
        let command = Command::History { chat: chat.clone(), limit: Some(PAGE), before };
        vec![self.ask(Asked::History { chat, older: true }, command)]
    }

    fn send(&mut self) -> Vec<Effect> {
        let text = self.composer.trim_end().to_string();
        if text.trim().is_empty() {
            return Vec::new();
        }
        let Some(open) = &self.open else {
            self.status.error =
                Some("open a chat first (Enter on the list, or :dm ADDRESS)".into());
            return Vec::new();
        };
        let (to, group) = match (&open.chat, &open.to) {
            (Some(id), _) => (None, Some(id.clone())),
            (None, Some(to)) => (Some(to.clone()), None),
            _ => return Vec::new(),
        };
        self.composer.clear();
        let reply_to = self.reply_to.take();
        if let Some(open) = &mut self.open {
            open.scroll = 0;
        }
        let asked = Asked::Send { chat: group.clone(), to: to.clone() };
        vec![self.ask(asked, Command::Send { to, group, text, reply_to })]
    }

    fn leave_search(&mut self) -> Vec<Effect> {
        let Some(open) = &mut self.open else { return Vec::new() };
        open.search = None;
        let Some(chat) = open.chat.clone() else { return Vec::new() };
        open.messages.clear();
        open.more_before = true;
        open.scroll = 0;
        let history = Command::History { chat: chat.clone(), limit: Some(PAGE), before: None };
        vec![self.ask(Asked::History { chat, older: false }, history)]
    }

    // ---- the `:` line ----

    fn command_key(&mut self, key: Key) -> Vec<Effect> {
        let Some(line) = &mut self.command else { return Vec::new() };
        match key.code {
            KeyCode::Esc => self.command = None,
            KeyCode::Backspace if line.is_empty() => self.command = None,
            KeyCode::Backspace => {
                line.pop();
            }
            KeyCode::Tab if line.starts_with("file ") || line.starts_with("download ") => {
                match complete_path(line) {
                    Ok(completed) => *line = completed,
                    Err(many) if !many.is_empty() => {
                        let shown: Vec<String> = many.into_iter().take(12).collect();
                        self.status.info = Some(shown.join("  "));
                    }
                    Err(_) => {}
                }
            }
            KeyCode::Tab if !line.contains(' ') => {
                let matching: Vec<&str> = COMMANDS
                    .iter()
                    .map(|c| c.0)
                    .filter(|name| name.starts_with(line.as_str()))
                    .collect();
                match matching.as_slice() {
                    [one] => *line = format!("{one} "),
                    [] => {}
                    many => self.status.info = Some(many.join(" ")),
                }
            }
            KeyCode::Enter => {
                let line = self.command.take().unwrap_or_default();
                return self.run_command(line.trim());
            }
            KeyCode::Char(c) => line.push(c),
            _ => {}
        }
        Vec::new()
    }

    /// Runs a `:` command.
    pub fn run_command(&mut self, line: &str) -> Vec<Effect> {
        let (name, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim();
        let args: Vec<String> = rest.split_whitespace().map(str::to_owned).collect();
        let chat = self.open_id().map(str::to_owned);
        let need_chat = |app: &mut App| -> Option<String> {
            if chat.is_none() {
                app.status.error = Some(format!(":{name} works in an open chat"));
            }
            chat.clone()
        };
        let flag = |app: &mut App, flag: ChatFlag, on: bool| -> Vec<Effect> {
            match need_chat(app) {
                Some(chat) => vec![app.other("done", Command::ChatFlag { chat, flag, on })],
                None => Vec::new(),
            }
        };
        match name {
            "q" | "quit" => self.ask_quit(),
            "help" | "h" => self.screen = Screen::Help(0),
            "dm" => match args.first() {
                Some(address) => return self.dm(address),
                None => self.status.error = Some("usage: :dm ADDRESS".into()),
            },
            "group" => match args.split_first() {
                Some((name, members)) => {
                    let command =
                        Command::GroupCreate { name: name.clone(), members: members.to_vec() };
                    return vec![self.other("group created", command)];
                }
                None => self.status.error = Some("usage: :group NAME [ADDRESS...]".into()),
            },
            "add" | "remove" if !args.is_empty() => {
                if let Some(chat) = need_chat(self) {
                    let command = if name == "add" {
                        Command::GroupAdd { chat, members: args }
                    } else {
                        Command::GroupRemove { chat, members: args }
                    };
                    return vec![self.other("members changed", command)];
                }
            }
            "leave" => {
                if let Some(chat) = need_chat(self) {
                    return vec![self.other("left the group", Command::GroupLeave { chat })];
                }
            }
            "rename" if !rest.is_empty() => {
                if let Some(chat) = need_chat(self) {
                    let command = Command::GroupRename { chat, name: rest.to_string() };
                    return vec![self.other("renamed", command)];
                }
            }
            "timer" if !rest.is_empty() => {
                let seconds = match rest {
                    "off" | "0" => Ok(0),
                    d => crate::parse_duration(d),
                };
                match (seconds, need_chat(self)) {
                    (Ok(seconds), Some(chat)) => {
                        return vec![self.other("timer set", Command::ChatTimer { chat, seconds })];
                    }
                    (Err(e), _) => self.status.error = Some(e),
                    _ => {}
                }
            }
            "reply" if !rest.is_empty() => {
                self.reply_to = Some(rest.to_string());
                self.focus = Focus::Composer;
            }
            "react" if !args.is_empty() => {
                let emoji = args.get(1).cloned().unwrap_or_default();
                let command = Command::React { message: args[0].clone(), emoji };
                return vec![self.other("reacted", command)];
            }
            "edit" if args.len() >= 2 => {
                let (message, text) = rest.split_once(' ').unwrap_or((rest, ""));
                let command =
                    Command::Edit { message: message.to_string(), text: text.trim().to_string() };
                return vec![self.other("edited", command)];
            }
            "delete" if !rest.is_empty() => {
                return vec![self.other("deleted", Command::Delete { message: rest.to_string() })];
            }
            "resend" if !rest.is_empty() => {
                return vec![self.other("sent", Command::Resend { message: rest.to_string() })];
            }
            "file" if !rest.is_empty() => {
                if let Some(chat) = need_chat(self) {
                    let path = std::path::absolute(rest).unwrap_or_else(|_| rest.into());
                    let command = Command::SendFile { to: None, group: Some(chat), path };
                    return vec![self.other("file sent", command)];
                }
            }
            "download" if !args.is_empty() => {
                let out = args.get(1).map(|p| std::path::absolute(p).unwrap_or_else(|_| p.into()));
                let out = out.or_else(|| std::path::absolute(".").ok());
                let command = Command::Download { message: args[0].clone(), out };
                return vec![self.other("downloaded", command)];
            }
            "search" if !rest.is_empty() => {
                if let Some(chat) = need_chat(self) {
                    let command = Command::Search {
                        text: rest.to_string(),
                        chat: Some(chat.clone()),
                        limit: Some(PAGE),
                    };
                    if let Some(open) = &mut self.open {
                        open.search = Some(rest.to_string());
                    }
                    return vec![self.ask(Asked::Search { chat }, command)];
                }
            }
            "mute" => return flag(self, ChatFlag::Muted, true),
            "unmute" => return flag(self, ChatFlag::Muted, false),
            "pin" => return flag(self, ChatFlag::Pinned, true),
            "unpin" => return flag(self, ChatFlag::Pinned, false),
            "archive" => return flag(self, ChatFlag::Archived, true),
            "name" if !args.is_empty() => {
                let (address, nick) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = Some(nick.trim().to_string()).filter(|n| !n.is_empty());
                let command = Command::ContactName { address: address.to_string(), name };
                return vec![self.other("named", command)];
            }
            "safety" => {
                let peer =
                    self.open_summary().filter(|c| c.kind == "direct").and_then(|c| c.peer.clone());
                match args.first().cloned().or(peer) {
                    Some(address) => {
                        let command = Command::Verify {
                            address,
                            mark_verified: false,
                            expect: None,
                            accept_change: false,
                        };
                        return vec![self.ask(Asked::Safety { keys: self.keys }, command)];
                    }
                    None => {
                        self.status.error =
                            Some("usage: :safety ADDRESS (or open a direct chat)".into());
                    }
                }
            }
            "devices" => {
                return vec![self.ask(Asked::Devices { keys: self.keys }, Command::DevicesList)];
            }
            "link" if !args.is_empty() => {
                let command =
                    Command::DevicesLink { code: args[0].clone(), name: args.get(1).cloned() };
                self.status.info = Some("approving the new device…".into());
                return vec![self.ask(Asked::Devices { keys: self.keys }, command)];
            }
            "revoke" | "wipe" if !args.is_empty() => match args[0].parse::<u64>() {
                Ok(device) => {
                    self.confirm = Some(if name == "revoke" {
                        (
                            format!("revoke device {device}? it loses every chat (y/n)"),
                            Confirmed::Run(Command::DevicesRevoke { device }),
                        )
                    } else {
                        (
                            format!("wipe device {device}? it is revoked and erases itself (y/n)"),
                            Confirmed::Run(Command::DevicesWipe { device }),
                        )
                    });
                }
                Err(_) => self.status.error = Some(format!("usage: :{name} DEVICE (a number)")),
            },
            "" => {}
            _ => {
                self.status.error = Some(match COMMANDS.iter().find(|c| c.0 == name) {
                    Some((name, usage, _)) => format!("usage: :{name} {usage}"),
                    None => format!("no command :{name} (:help lists them)"),
                });
            }
        }
        Vec::new()
    }

    fn dm(&mut self, address: &str) -> Vec<Effect> {
        if let Some(chat) = self
            .chats
            .iter()
            .find(|c| c.kind == "direct" && c.peer.as_deref() == Some(address))
            .cloned()
        {
            return self.open_chat(&chat);
        }
        // Started by the first message.
        self.switch_draft(&format!("to:{address}"));
        self.open = Some(Open {
            chat: None,
            to: Some(address.to_string()),
            title: address.to_string(),
            messages: Vec::new(),
            more_before: false,
            scroll: 0,
            search: None,
        });
        self.focus = Focus::Composer;
        Vec::new()
    }

    /// Quits, after asking if unsent drafts would be lost.
    fn ask_quit(&mut self) {
        if self.composer.trim().is_empty() && self.drafts.values().all(|d| d.trim().is_empty()) {
            self.quit = true;
        } else {
            self.confirm =
                Some(("quit? what you were writing is not kept (y/n)".into(), Confirmed::Quit));
        }
    }

    /// Raises a warning banner (once, and at most a few waiting).
    fn warn(&mut self, text: &str) {
        if !self.banners.iter().any(|b| b == text) {
            self.banners.push(text.to_string());
        }
        if self.banners.len() > MAX_BANNERS {
            self.banners.remove(0);
        }
    }

    // ---- the engine ----

    /// An event from the engine.
    pub fn on_event(&mut self, event: Event) -> Vec<Effect> {
        let mut out = Vec::new();
        match event {
            Event::Message { message } => {
                let ours = message.sender == self.me;
                let known = self.chats.iter().find(|c| c.id == message.chat);
                let muted = known.is_some_and(|c| c.muted);
                if !ours && !muted && matches!(message.kind.as_str(), "text" | "file") {
                    out.push(Effect::Bell);
                    let title = known.map_or(message.chat_name.clone(), |c| c.title.clone());
                    out.push(Effect::Notify(title));
                }
                if self.in_open(&message) {
                    let open_id = self.open_id().map(str::to_owned);
                    if let Some(open) = &mut self.open
                        && open.search.is_none()
                        && !open
                            .messages
                            .iter()
                            .any(|m| m.id == message.id && m.chat == message.chat)
                    {
                        open.messages.push(message);
                        if let Some(chat) = open_id {
                            out.push(self.ask(Asked::Read, Command::Read { chat }));
                        }
                    }
                }
                out.extend(self.ask_chats());
            }
            Event::Delivery { message } => {
                if let Some(open) = &mut self.open
                    && let Some(m) = open
                        .messages
                        .iter_mut()
                        .find(|m| m.id == message.id && m.chat == message.chat)
                {
                    *m = message;
                }
            }
            Event::Chat { .. } => out.extend(self.ask_chats()),
            Event::Notice { text } => {
                // Notices are this client's own words (chat events may quote what others
                // wrote, so they never raise one).
                if alarming(&text) {
                    self.warn(&text);
                }
                self.status.info = Some(text);
            }
            Event::Failure { seq, reason } => {
                self.status.error = Some(format!("a message (#{seq}) could not be read: {reason}"));
            }
            Event::Connection { state, reason } => {
                self.status.connection = match reason {
                    Some(r) if state != "connected" => format!("{state} ({r})"),
                    _ => state,
                };
            }
            Event::Progress { transfer, done, total } => {
                self.status.progress = (done < total).then_some((transfer, done, total));
            }
        }
        out
    }

    /// The engine's answer to the command tagged `tag`.
    pub fn on_answer(&mut self, tag: u64, answer: Result<Value, Error>) -> Vec<Effect> {
        let Some(asked) = self.asked.remove(&tag) else { return Vec::new() };
        let value = match answer {
            Ok(v) => v,
            Err(e) => {
                if let (Asked::Send { .. }, Error::Queued { .. }) = (&asked, &e) {
                    self.status.info = Some(format!("kept, to be sent: {e}"));
                    return self.refresh_open();
                }
                self.status.error = Some(e.to_string());
                if matches!(e, Error::IdentityChanged(_) | Error::Untrusted(_) | Error::Revoked(_))
                {
                    self.warn(&e.to_string());
                }
                // A page that does not load is not asked for again and again.
                if let (Asked::History { older: true, .. }, Some(open)) = (&asked, &mut self.open) {
                    open.more_before = false;
                }
                return Vec::new();
            }
        };
        match asked {
            Asked::Chats => {
                let mut out = Vec::new();
                if std::mem::take(&mut self.chats_dirty) {
                    out.extend(self.ask_chats());
                }
                if let Ok(chats) = serde_json::from_value::<Vec<ChatSummary>>(value) {
                    // The selection follows its chat when the list reorders.
                    let selected = self.visible().get(self.selected).map(|c| c.id.clone());
                    self.chats = chats;
                    let visible = self.visible();
                    let n = visible.len();
                    self.selected = selected
                        .and_then(|id| visible.iter().position(|c| c.id == id))
                        .unwrap_or(self.selected)
                        .min(n.saturating_sub(1));
                    // A direct chat started from `:dm` has an id now.
                    if let Some(open) = &mut self.open
                        && open.chat.is_none()
                        && let Some(to) = &open.to
                        && let Some(c) = self
                            .chats
                            .iter()
                            .find(|c| c.kind == "direct" && c.peer.as_ref() == Some(to))
                    {
                        open.chat = Some(c.id.clone());
                        open.title = c.title.clone();
                    }
                }
                out
            }
            Asked::History { chat, older } => {
                let Ok(page) = serde_json::from_value::<Vec<MessageView>>(value) else {
                    return Vec::new();
                };
                if let Some(open) = &mut self.open
                    && open.chat.as_deref() == Some(chat.as_str())
                    && open.search.is_none()
                {
                    open.more_before = page.len() >= PAGE;
                    if older {
                        let mut page = page;
                        page.append(&mut open.messages);
                        open.messages = page;
                    } else {
                        open.messages = page;
                    }
                }
                Vec::new()
            }
            Asked::Search { chat } => {
                if let (Ok(mut found), Some(open)) =
                    (serde_json::from_value::<Vec<MessageView>>(value), &mut self.open)
                    && open.chat.as_deref() == Some(chat.as_str())
                {
                    found.reverse();
                    self.status.info = Some(format!("{} found (Esc returns)", found.len()));
                    open.messages = found;
                    open.more_before = false;
                    open.scroll = 0;
                }
                Vec::new()
            }
            Asked::Safety { keys } => {
                match serde_json::from_value::<SafetyView>(value) {
                    Ok(view) => {
                        self.locked = self.keys != keys;
                        self.screen = Screen::Safety(view);
                    }
                    Err(e) => self.status.error = Some(format!("an unexpected answer: {e}")),
                }
                Vec::new()
            }
            Asked::Devices { keys } => match serde_json::from_value::<Vec<DeviceView>>(value) {
                Ok(list) => {
                    self.locked = self.keys != keys;
                    self.screen = Screen::Devices(list, 0);
                    Vec::new()
                }
                // Linking answers with what it did; the list follows.
                Err(_) => vec![self.ask(Asked::Devices { keys }, Command::DevicesList)],
            },
            Asked::Read => Vec::new(),
            Asked::Send { chat, to } => {
                let mut out = Vec::new();
                // Shown only if the chat it went to is still the one open.
                if let Ok(m) = serde_json::from_value::<MessageView>(value)
                    && let Some(open) = &mut self.open
                    && (chat.is_some() && open.chat == chat || to.is_some() && open.to == to)
                {
                    if open.chat.is_none() {
                        open.chat = Some(m.chat.clone());
                    }
                    if !open.messages.iter().any(|x| x.id == m.id) {
                        open.messages.push(m);
                    }
                }
                out.extend(self.ask_chats());
                out
            }
            Asked::Other(done) => {
                if !done.is_empty() {
                    self.status.info = Some(done.to_string());
                }
                let mut out = self.refresh_open();
                out.extend(self.ask_chats());
                out
            }
        }
    }

    /// Loads the open chat's newest page again (after something changed it).
    fn refresh_open(&mut self) -> Vec<Effect> {
        let Some(open) = &self.open else { return Vec::new() };
        let (Some(chat), None) = (open.chat.clone(), &open.search) else { return Vec::new() };
        let limit = open.messages.len().clamp(PAGE, 1000);
        let history = Command::History { chat: chat.clone(), limit: Some(limit), before: None };
        vec![self.ask(Asked::History { chat, older: false }, history)]
    }
}
