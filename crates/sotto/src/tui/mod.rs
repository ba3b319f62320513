//! `sotto tui`: the terminal client, a front end of the client engine.
//!
//! One thread runs the engine (`sotto_client::engine::run`, as the daemon does); this one
//! reads the terminal, feeds [`app::App`] keys, engine events and answers, and draws it with
//! [`view`]. The app itself does no I/O, so tests drive it and draw it on ratatui's
//! `TestBackend`.

pub mod app;
pub mod keys;
pub mod view;

use std::io::Write as _;
use std::sync::mpsc;
use std::time::Duration;

use crossterm::event::{self, Event as TermEvent, KeyEventKind, MouseEventKind};
use crossterm::{execute, terminal};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use serde_json::Value;
use sotto_client::engine::{self, Engine, Event, Input};
use sotto_client::{Client, Error};

use app::{App, Effect};

/// What reaches the drawing thread.
enum Note {
    Event(Box<Event>),
    Answer(u64, Result<Value, Error>),
    Stopped(Result<(), Error>),
}

/// Restores the terminal when dropped (also when a panic unwinds).
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = terminal::disable_raw_mode();
        let _ = execute!(
            std::io::stdout(),
            event::DisableMouseCapture,
            event::DisableBracketedPaste,
            terminal::LeaveAlternateScreen,
            crossterm::cursor::Show
        );
    }
}

/// Notes from the engine taken in per turn (a flood must not starve the keyboard).
const NOTES_PER_TURN: usize = 256;

/// Shows a desktop notification through `notify-send` (libnotify), where there is one: the
/// chat's title only, never the message. Titles come from other users: made plain text.
fn notify(title: &str) {
    let title: String = crate::terminal_line(title)
        .chars()
        .take(80)
        .map(|c| if matches!(c, '<' | '>' | '&') { ' ' } else { c })
        .collect();
    let spawned = std::process::Command::new("notify-send")
        .args(["--app-name=Sotto", "Sotto", &format!("New message in {title}")])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    // Reaped on a thread of its own: the screen never waits for it.
    if let Ok(mut child) = spawned {
        std::thread::spawn(move || child.wait());
    }
}

/// How the terminal client runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Desktop notifications (through `notify-send`, where installed) besides the bell.
    pub notify: bool,
}

/// Runs the terminal client on an open home until the user quits (or the device is revoked).
pub fn run(client: Client, options: Options) -> Result<(), Error> {
    let me = client.account().address;
    let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let io = |e: std::io::Error| Error::Io(format!("terminal: {e}"));

    let (inputs_tx, inputs_rx) = mpsc::channel::<Input>();
    let (notes_tx, notes_rx) = mpsc::channel::<Note>();
    let feed = inputs_tx.clone();
    let events = notes_tx.clone();
    let engine_thread = std::thread::Builder::new()
        .name("sotto-engine".into())
        .spawn(move || {
            let result = engine::run(Engine::new(client), &inputs_rx, &feed, &mut |e| {
                let _ = events.send(Note::Event(Box::new(e)));
            });
            let _ = events.send(Note::Stopped(result));
        })
        .map_err(io)?;

    // A panic gives the terminal back before its message is printed (in raw mode, on the
    // alternate screen, it would be lost).
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        drop(Restore);
        default_hook(info);
    }));
    terminal::enable_raw_mode().map_err(io)?;
    let restore = Restore;
    execute!(
        std::io::stdout(),
        terminal::EnterAlternateScreen,
        event::EnableMouseCapture,
        event::EnableBracketedPaste
    )
    .map_err(io)?;
    let mut term = Terminal::new(CrosstermBackend::new(std::io::stdout())).map_err(io)?;

    let mut app = App::new(&me, color);
    let rang = std::cell::Cell::new(false);
    let notified = std::cell::Cell::new(false);
    let perform = |effects: Vec<Effect>| {
        for effect in effects {
            match effect {
                Effect::Run(tag, command) => {
                    let answers = notes_tx.clone();
                    let reply: engine::Reply = Box::new(move |r| {
                        let _ = answers.send(Note::Answer(tag, r));
                    });
                    let _ = inputs_tx.send(Input::Command(command, reply));
                }
                // Once per turn, however many messages arrived in it.
                Effect::Bell if !rang.get() => {
                    rang.set(true);
                    let mut out = std::io::stdout();
                    let _ = out.write_all(b"\x07");
                    let _ = out.flush();
                }
                Effect::Bell => {}
                Effect::Notify(title) if options.notify && !notified.get() => {
                    notified.set(true);
                    notify(&title);
                }
                Effect::Notify(_) => {}
            }
        }
    };
    perform(app.start());
    let mut outcome = Ok(());
    let mut dirty = true;
    while !app.quit {
        rang.set(false);
        notified.set(false);
        // What the engine said since the last turn (at most so much of it).
        for note in notes_rx.try_iter().take(NOTES_PER_TURN) {
            dirty = true;
            match note {
                Note::Event(e) => perform(app.on_event(*e)),
                Note::Answer(tag, answer) => perform(app.on_answer(tag, answer)),
                Note::Stopped(result) => {
                    outcome = result;
                    app.quit = true;
                }
            }
        }
        if app.quit {
            break;
        }
        if engine_thread.is_finished() {
            outcome = Err(Error::Internal("the client engine stopped"));
            break;
        }
        if dirty {
            let mut drawn = view::Drawn::default();
            term.draw(|f| drawn = view::draw(f, &app)).map_err(io)?;
            perform(app.scrolled_to(drawn.total_lines, drawn.shown));
            dirty = false;
        }
        // Keys wait at most this long, so engine news shows within it.
        if !event::poll(Duration::from_millis(20)).map_err(io)? {
            continue;
        }
        dirty = true;
        match event::read().map_err(io)? {
            TermEvent::Key(k) if k.kind != KeyEventKind::Release => perform(app.on_key(k.into())),
            TermEvent::Paste(text) => app.on_paste(&text),
            TermEvent::Mouse(m) => match m.kind {
                MouseEventKind::ScrollUp => perform(app.on_scroll(true)),
                MouseEventKind::ScrollDown => perform(app.on_scroll(false)),
                _ => {}
            },
            TermEvent::Resize(..) => term.autoresize().map_err(io)?,
            _ => {}
        }
    }
    drop(restore);
    let _ = inputs_tx.send(Input::Stop);
    let _ = engine_thread.join();
    outcome
}
