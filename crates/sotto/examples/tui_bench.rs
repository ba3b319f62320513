//! The terminal client over a large home: how long until its first screen is drawn, how much
//! memory that takes, and how long a message the engine received takes to reach the screen.
//!
//! ```text
//! cargo run --release -p sotto --example tui_bench -- [--messages 100000] [--chats 50]
//!     [--out bench-results]
//! ```
//!
//! A real `sotto-server` (the library, on a loopback port) and real clients over HTTP and
//! WebSocket. Alice's home gets `--chats` groups (real MLS groups) filled with `--messages`
//! synthetic messages written straight into her database. Then, as `sotto tui` does: open the
//! home, start the engine on its own thread, ask for the chats, open the first, draw (on
//! ratatui's `TestBackend`, 120×40). Then bob sends alice messages; each is timed from bob's
//! send returning (the server has stored it) to the app having drawn it. Figures go to stdout
//! and to `OUT/tui.json`.

#[path = "../../client/examples/shared/mod.rs"]
mod shared;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use rusqlite::params;
use serde_json::{Value, json};
use sotto::tui::app::{App, Effect};
use sotto::tui::keys::{Key, KeyCode};
use sotto::tui::view;
use sotto_client::engine::{self, Engine, Event, Input};
use sotto_client::{Client, Error, RegisterOptions, Target};

const PASSPHRASE: &str = "correct horse battery staple";

/// Resident memory of this process now and at its peak (KiB), from /proc.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

enum Note {
    Event(Box<Event>),
    Answer(u64, Result<Value, Error>),
}

/// The terminal client's loop without a terminal: the engine on its thread, the app here.
struct Harness {
    app: App,
    inputs: mpsc::Sender<Input>,
    notes_tx: mpsc::Sender<Note>,
    notes: mpsc::Receiver<Note>,
    term: Terminal<TestBackend>,
}

impl Harness {
    fn perform(&self, effects: Vec<Effect>) {
        for effect in effects {
            if let Effect::Run(tag, command) = effect {
                let answers = self.notes_tx.clone();
                let reply: engine::Reply = Box::new(move |r| {
                    let _ = answers.send(Note::Answer(tag, r));
                });
                let _ = self.inputs.send(Input::Command(command, reply));
            }
        }
    }

    /// Takes in what the engine said (waiting up to `wait` for the first of it) and draws.
    fn turn(&mut self, wait: Duration) -> Vec<Event> {
        let mut events = Vec::new();
        let mut next = self.notes.recv_timeout(wait).ok();
        while let Some(note) = next {
            let effects = match note {
                Note::Event(e) => {
                    events.push((*e).clone());
                    self.app.on_event(*e)
                }
                Note::Answer(tag, answer) => self.app.on_answer(tag, answer),
            };
            self.perform(effects);
            next = self.notes.try_recv().ok();
        }
        let mut drawn = view::Drawn::default();
        let app = &self.app;
        self.term.draw(|f| drawn = view::draw(f, app)).expect("draw");
        let effects = self.app.scrolled_to(drawn.total_lines, drawn.shown);
        self.perform(effects);
        events
    }
}

fn main() {
    let shared::Options { messages, chats, out } = shared::options();
    let dir = tempfile::tempdir().expect("tempdir");

    // The server, on a loopback port, on a runtime of its own.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let config = sotto_server::Config {
        data_dir: dir.path().join("server"),
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        registration: sotto_server::RegistrationMode::Open,
        ..sotto_server::Config::default()
    };
    std::fs::create_dir_all(&config.data_dir).expect("data dir");
    let url = runtime.block_on(async {
        let store = sotto_server::open_store(&config).expect("store");
        let listener = sotto_server::bind(&config).await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(sotto_server::serve(config, store, listener, std::future::pending()));
        url
    });

    let options = RegisterOptions {
        passphrase: zeroize::Zeroizing::new(PASSPHRASE.into()),
        ..RegisterOptions::default()
    };
    let alice_home = dir.path().join("alice");
    let mut alice =
        Client::register(&alice_home, &url, "alice@localhost", &options).expect("alice").client;
    let mut bob = Client::register(&dir.path().join("bob"), &url, "bob@localhost", &options)
        .expect("bob")
        .client;

    // Alice's chats: real groups, then the synthetic messages.
    let setup = Instant::now();
    let mut ids = Vec::new();
    for c in 0..chats {
        let chat = alice.create_group(&format!("chat {c}"), &[]).expect("group");
        ids.push(hex::decode(&chat.id).expect("id"));
    }
    drop(alice);
    let mut db = shared::open_db(&alice_home, PASSPHRASE);
    let tx = db.transaction().expect("tx");
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO messages (group_id, msg_id, sender, kind, body, status, sent_at,
                                       received_at, reported, read_at)
                 VALUES (?1, ?2, 'carol@localhost', 'text', ?3, 'received', ?4, ?4, 1, ?4)",
            )
            .expect("prepare");
        let base = 1_790_000_000_000i64;
        for i in 0..messages {
            let body = format!("message {i}: the quick brown fox jumps over the lazy dog");
            let id = format!("{:032x}", (i as u128) << 32 | 0xfeed);
            insert.execute(params![ids[i % chats], id, body, base + i as i64 * 1000]).expect("row");
        }
    }
    tx.commit().expect("commit");
    drop(db);
    let setup_s = setup.elapsed().as_secs_f64();
    let before = memory_kib();

    // As `sotto tui` starts: open the home (the passphrase's key derivation), start the
    // engine, ask for the chats, open the first one, draw.
    let started = Instant::now();
    let client = Client::open(&alice_home, PASSPHRASE).expect("open");
    let opened = started.elapsed();
    let (inputs, inputs_rx) = mpsc::channel::<Input>();
    let (notes_tx, notes) = mpsc::channel::<Note>();
    let feed = inputs.clone();
    let events = notes_tx.clone();
    let engine_thread = std::thread::spawn(move || {
        let _ = engine::run(Engine::new(client), &inputs_rx, &feed, &mut |e| {
            let _ = events.send(Note::Event(Box::new(e)));
        });
    });
    let mut h = Harness {
        app: App::new("alice@localhost", false),
        inputs,
        notes_tx,
        notes,
        term: Terminal::new(TestBackend::new(120, 40)).expect("terminal"),
    };
    let effects = h.app.start();
    h.perform(effects);
    while h.app.chats.len() < chats {
        h.turn(Duration::from_secs(30));
    }
    let listed = started.elapsed();
    let effects = h.app.on_key(Key::new(KeyCode::Enter));
    h.perform(effects);
    while h.app.open.as_ref().is_none_or(|o| o.messages.is_empty()) {
        h.turn(Duration::from_secs(30));
    }
    let first_screen = started.elapsed();
    let after = memory_kib();

    // Messages from bob: from his send returning to alice's screen having drawn it.
    let to_alice = Target::Address("alice@localhost".parse().expect("address"));
    bob.send_text(&to_alice, "warm-up").expect("send");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !h.app.chats.iter().any(|c| c.peer.as_deref() == Some("bob@localhost")) {
        assert!(Instant::now() < deadline, "bob's chat never arrived");
        h.turn(Duration::from_millis(50));
    }
    let mut latencies = Vec::new();
    for i in 0..20 {
        let text = format!("ping {i}");
        bob.send_text(&to_alice, &text).expect("send");
        let sent = Instant::now();
        let deadline = sent + Duration::from_secs(30);
        loop {
            let events = h.turn(Duration::from_millis(200));
            if events
                .iter()
                .any(|e| matches!(e, Event::Message { message } if message.body == text))
            {
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            assert!(Instant::now() < deadline, "{text} never arrived");
        }
    }
    latencies.sort_by(f64::total_cmp);
    let median = latencies[latencies.len() / 2];
    let worst = latencies[latencies.len() - 1];
    let _ = h.inputs.send(Input::Stop);
    let _ = engine_thread.join();

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("{messages} messages in {chats} chats (set up in {setup_s:.1} s)");
    println!("open the home (passphrase key derivation):  {:>8.1} ms", ms(opened));
    println!("the chat list drawn:                         {:>8.1} ms", ms(listed));
    println!("first screen (a chat open, drawn):           {:>8.1} ms", ms(first_screen));
    println!(
        "memory: {:.1} MiB resident before opening, {:.1} MiB after the first screen, peak {:.1} MiB (server and both clients included)",
        before.0 as f64 / 1024.0,
        after.0 as f64 / 1024.0,
        after.1 as f64 / 1024.0
    );
    println!(
        "a received message on screen: median {median:.1} ms, worst {worst:.1} ms of {} (the terminal loop adds at most its 20 ms key poll)",
        latencies.len()
    );
    std::fs::create_dir_all(&out).expect("out dir");
    let result = json!({
        "messages": messages, "chats": chats,
        "open_ms": ms(opened), "chat_list_ms": ms(listed), "first_screen_ms": ms(first_screen),
        "rss_before_kib": before.0, "rss_after_kib": after.0, "peak_kib": after.1,
        "message_to_screen_median_ms": median, "message_to_screen_worst_ms": worst,
    });
    std::fs::write(out.join("tui.json"), serde_json::to_vec_pretty(&result).expect("json"))
        .expect("write tui.json");
    println!("wrote {}", out.join("tui.json").display());
}
