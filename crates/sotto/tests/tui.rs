//! The terminal client's screens and key flows, drawn on ratatui's `TestBackend` and compared
//! with the snapshots in `tests/snapshots/` (`SOTTO_UPDATE_SNAPSHOTS=1` rewrites them).

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use serde_json::{Value, json};
use sotto::tui::app::{App, Effect, Focus, Open, Screen};
use sotto::tui::keys::{Key, KeyCode};
use sotto::tui::view;
use sotto_client::engine::Command;
use sotto_client::{ChatSummary, MessageView};

const T0: u64 = 1_796_400_000_000; // 2026-12-04 …

fn chat(id: &str, kind: &str, title: &str, unread: u64, preview: &str) -> ChatSummary {
    serde_json::from_value(json!({
        "id": id, "kind": kind, "name": if kind == "group" { Some(title) } else { None },
        "peer": if kind == "direct" { Some(title) } else { None }, "state": "active",
        "members": ["alice@example.org", "bob@example.org"], "messages": 3,
        "last_message_at": T0, "timer_secs": 0, "post_quantum": true, "title": title,
        "unread": unread, "muted": false, "pinned": false, "archived": false,
        "preview": preview,
    }))
    .expect("chat")
}

fn message(id: &str, sender: &str, body: &str, at: u64, extra: Value) -> MessageView {
    let mut m = json!({
        "chat": "c1", "chat_name": "bob@example.org", "id": id, "sender": sender,
        "kind": "text", "body": body, "status": "received", "sent_at": at, "received_at": at,
    });
    if let (Some(m), Some(extra)) = (m.as_object_mut(), extra.as_object()) {
        m.extend(extra.clone());
    }
    serde_json::from_value(m).expect("message")
}

/// A home with three chats, the direct chat with bob open.
fn app() -> App {
    let mut app = App::new("alice@example.org", false);
    app.status.connection = "connected".into();
    app.chats = vec![
        chat("c1", "direct", "bob@example.org", 2, "see you at one"),
        chat("c2", "group", "team", 0, "minutes attached"),
        chat("c3", "note", "Notes to self", 0, "buy milk"),
    ];
    let id = |n: u8| format!("{n:02x}{}", "ab".repeat(15));
    let messages = vec![
        message(
            "event-1-0",
            "bob@example.org",
            "bob@example.org added you",
            T0 - 86_400_000,
            json!({"kind": "event"}),
        ),
        message(&id(1), "bob@example.org", "Lunch tomorrow?", T0 - 86_000_000, json!({})),
        message(
            &id(2),
            "alice@example.org",
            "Yes! Where?",
            T0 - 85_000_000,
            json!({"status": "read", "reactions": [{"from": "bob@example.org", "emoji": "👍"}]}),
        ),
        message(
            &id(3),
            "bob@example.org",
            "The usual place, at one; a long line that has to wrap \
            around because it does not fit in the conversation's width",
            T0,
            json!({"reply_to": {"id": id(2), "sender": "alice@example.org", "text": "Yes! Where?"}, "edited": true}),
        ),
        message(&id(4), "bob@example.org", "", T0 + 1000, json!({"deleted": true})),
        message(
            &id(5),
            "bob@example.org",
            "menu.pdf",
            T0 + 2000,
            json!({"kind": "file", "file": {"name": "menu.pdf", "size": 48213, "media_type": "application/pdf"}}),
        ),
        message(
            &id(6),
            "alice@example.org",
            "see you at one",
            T0 + 3000,
            json!({"status": "pending"}),
        ),
    ];
    app.open = Some(Open {
        chat: Some("c1".into()),
        to: None,
        title: "bob@example.org".into(),
        messages,
        more_before: false,
        scroll: 0,
        search: None,
    });
    app.focus = Focus::Composer;
    app
}

/// Draws `app` at `w`×`h`; the screen as text, one line per row.
fn screen(app: &mut App, w: u16, h: u16) -> String {
    let mut term = Terminal::new(TestBackend::new(w, h)).expect("terminal");
    let mut drawn = view::Drawn::default();
    term.draw(|f| drawn = view::draw(f, app)).expect("draw");
    app.scrolled_to(drawn.total_lines, drawn.shown);
    let buffer = term.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..h {
        let mut line = String::new();
        let mut skip = 0;
        for x in 0..w {
            let symbol = buffer[(x, y)].symbol().to_string();
            if skip > 0 {
                skip -= 1;
                continue;
            }
            skip = ratatui::text::Span::raw(symbol.as_str()).width().saturating_sub(1);
            line.push_str(&symbol);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn snapshot(name: &str, got: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots").join(name);
    if std::env::var_os("SOTTO_UPDATE_SNAPSHOTS").is_some() || !path.exists() {
        std::fs::create_dir_all(path.parent().expect("dir")).expect("snapshot dir");
        std::fs::write(&path, got).expect("write snapshot");
    }
    let want = std::fs::read_to_string(&path).expect("snapshot");
    assert_eq!(got, want, "{name} differs; SOTTO_UPDATE_SNAPSHOTS=1 rewrites it:\n{got}");
}

fn commands(effects: &[Effect]) -> Vec<&Command> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Run(_, c) => Some(c),
            Effect::Bell | Effect::Notify(_) => None,
        })
        .collect()
}

fn type_text(app: &mut App, text: &str) -> Vec<Effect> {
    text.chars().flat_map(|c| app.on_key(Key::char(c))).collect()
}

#[test]
fn main_screen_at_80_by_24() {
    let mut app = app();
    app.composer = "thanks, I'll be".into();
    snapshot("main_80x24.txt", &screen(&mut app, 80, 24));
}

#[test]
fn main_screen_wide_with_a_warning() {
    let mut app = app();
    app.banners.push("bob@example.org's identity key changed (the account was recovered)".into());
    snapshot("main_120x30_warning.txt", &screen(&mut app, 120, 30));
}

#[test]
fn help_lists_every_command() {
    let mut app = app();
    app.on_key(Key::new(KeyCode::Esc));
    app.on_key(Key::char('?'));
    assert!(matches!(app.screen, Screen::Help(0)));
    let shown = screen(&mut app, 100, 45);
    for (name, ..) in sotto::tui::app::COMMANDS {
        assert!(shown.contains(&format!(":{name} ")), ":{name} missing from help:\n{shown}");
    }
    snapshot("help_100x45.txt", &shown);
    // At 80×24 it scrolls.
    app.on_key(Key::char('j'));
    assert!(matches!(app.screen, Screen::Help(1)));
    snapshot("help_80x24_scrolled.txt", &screen(&mut app, 80, 24));
    app.on_key(Key::char('x'));
    assert!(matches!(app.screen, Screen::Main));
}

#[test]
fn hostile_text_never_reaches_the_terminal() {
    let mut app = app();
    let evil = "\u{1b}]0;pwned\u{7}\u{1b}[2J\u{1b}[31mred\r\nfake line\u{202e}txt.exe\u{9b}31m";
    app.chats[0].title = format!("bob{evil}");
    app.chats[0].preview = Some(evil.into());
    if let Some(open) = &mut app.open {
        open.title = format!("bob{evil}");
        open.messages.push(message(
            &format!("07{}", "cd".repeat(15)),
            &format!("mallory{evil}"),
            evil,
            T0 + 5000,
            json!({"reactions": [{"from": evil, "emoji": evil}], "file": {"name": evil, "size": 1, "media_type": evil}}),
        ));
    }
    app.banners.push(evil.into());
    app.status.error = Some(evil.into());
    let shown = screen(&mut app, 100, 30);
    assert!(!shown.chars().any(|c| c.is_control() && c != '\n'), "{shown:?}");
    assert!(!shown.contains('\u{202e}') && !shown.contains('\u{9b}'));
    assert!(shown.contains("�]0;pwned�"), "{shown}");
    snapshot("hostile_100x30.txt", &shown);
}

#[test]
fn keys_move_open_send_and_run_commands() {
    let mut app = App::new("alice@example.org", false);
    app.chats = vec![
        chat("c1", "direct", "bob@example.org", 0, "hi"),
        chat("c2", "group", "team", 3, "minutes"),
    ];
    // The list: j moves, Enter opens and asks for the chat's history (and reads it).
    assert_eq!(app.focus, Focus::List);
    app.on_key(Key::char('j'));
    assert_eq!(app.selected, 1);
    let effects = app.on_key(Key::new(KeyCode::Enter));
    let asked = commands(&effects);
    assert!(
        matches!(asked[0], Command::History { chat, limit: Some(100), before: None } if chat == "c2")
    );
    assert!(matches!(asked[1], Command::Read { chat } if chat == "c2"));
    assert_eq!(app.focus, Focus::Composer);
    // The composer: Alt-Enter is a new line, Enter sends.
    type_text(&mut app, "two");
    app.on_key(Key::alt(KeyCode::Enter));
    type_text(&mut app, "lines");
    let effects = app.on_key(Key::new(KeyCode::Enter));
    assert!(matches!(commands(&effects)[0],
        Command::Send { group: Some(g), text, reply_to: None, .. } if g == "c2" && text == "two\nlines"));
    assert!(app.composer.is_empty());
    // Pasting keeps newlines; an empty composer sends nothing.
    app.on_paste("a\r\nb");
    assert_eq!(app.composer, "a\nb");
    app.on_key(Key::ctrl('u'));
    assert!(app.on_key(Key::new(KeyCode::Enter)).is_empty());
    // `:` commands, with completion.
    app.on_key(Key::new(KeyCode::Esc));
    app.on_key(Key::char(':'));
    type_text(&mut app, "rea");
    app.on_key(Key::new(KeyCode::Tab));
    assert_eq!(app.command.as_deref(), Some("react "));
    type_text(&mut app, "0a0b 🎉");
    let effects = app.on_key(Key::new(KeyCode::Enter));
    assert!(
        matches!(commands(&effects)[0], Command::React { message, emoji } if message == "0a0b" && emoji == "🎉")
    );
    let effects = app.run_command("reply 0a0b");
    assert!(effects.is_empty());
    type_text(&mut app, "sure");
    let effects = app.on_key(Key::new(KeyCode::Enter));
    assert!(
        matches!(commands(&effects)[0], Command::Send { reply_to: Some(r), .. } if r == "0a0b")
    );
    assert!(matches!(
        commands(&app.run_command("timer 1h"))[0],
        Command::ChatTimer { seconds: 3600, .. }
    ));
    assert!(
        matches!(commands(&app.run_command("rename crew"))[0], Command::GroupRename { name, .. } if name == "crew")
    );
    assert!(commands(&app.run_command("nonsense")).is_empty());
    assert!(app.status.error.as_deref().is_some_and(|e| e.contains(":help")));
    // The list filter: / then letters; Enter opens the match.
    app.focus = Focus::List;
    app.on_key(Key::char('/'));
    type_text(&mut app, "bob");
    assert_eq!(app.visible().len(), 1);
    let effects = app.on_key(Key::new(KeyCode::Enter));
    assert!(matches!(commands(&effects)[0], Command::History { chat, .. } if chat == "c1"));
    // Ctrl-C quits from anywhere.
    app.on_key(Key::ctrl('c'));
    assert!(app.quit);
}

#[test]
fn scrolling_to_the_top_loads_older_messages_once() {
    let mut app = app();
    if let Some(open) = &mut app.open {
        open.more_before = true;
    }
    app.focus = Focus::Conversation;
    app.on_key(Key::char('g'));
    app.on_key(Key::char('g'));
    let mut term = Terminal::new(TestBackend::new(80, 24)).expect("terminal");
    let mut drawn = view::Drawn::default();
    term.draw(|f| drawn = view::draw(f, &app)).expect("draw");
    let effects = app.scrolled_to(drawn.total_lines, drawn.shown);
    let first = app.open.as_ref().and_then(|o| o.messages.first()).map(|m| m.id.clone());
    assert!(
        matches!(commands(&effects)[..], [Command::History { before, .. }] if *before == first)
    );
    // Asked once: until the answer comes, the top asks for nothing more.
    assert!(app.scrolled_to(drawn.total_lines, drawn.shown).is_empty());
}

#[test]
fn safety_number_and_devices_screens() {
    let mut app = app();
    let view: sotto_client::SafetyView = serde_json::from_value(json!({
        "address": "bob@example.org",
        "safety_number": "12345 67890 12345 67890 12345 67890 12345 67890 12345 67890 12345 67890",
        "qr_text": "sotto-safety:v1:bob@example.org:0123456789abcdef",
        "verified": false, "changed_since_verified": false, "identity_key": "ab",
    }))
    .expect("view");
    app.screen = Screen::Safety(view);
    let shown = screen(&mut app, 80, 40);
    assert!(shown.contains("12345  67890  12345  67890"), "{shown}");
    assert!(shown.contains('▀') || shown.contains('▄'), "a QR code:\n{shown}");
    snapshot("safety_80x40.txt", &shown);
    // v marks the contact verified.
    let effects = app.on_key(Key::char('v'));
    assert!(matches!(commands(&effects)[..], [Command::Verify { mark_verified: true, .. }]));

    let devices: Vec<sotto_client::DeviceView> = serde_json::from_value(json!([
        {"device_id": 1, "name": "phone", "device_key": "aa", "this_device": true, "state": "active",
         "linked_at": 1_796_000_000, "last_seen": 1_796_400_000, "wiped_at": null},
        {"device_id": 4, "name": "old laptop", "device_key": "bb", "this_device": false,
         "state": "active", "linked_at": 1_796_000_000, "last_seen": null, "wiped_at": null},
    ]))
    .expect("devices");
    app.screen = Screen::Devices(devices, 0);
    app.on_key(Key::char('j'));
    snapshot("devices_80x24.txt", &screen(&mut app, 80, 24));
    // Wiping asks first; anything but y cancels.
    assert!(app.on_key(Key::char('w')).is_empty());
    assert!(app.confirm.as_ref().is_some_and(|(q, _)| q.contains("wipe device 4")));
    let asking = screen(&mut app, 80, 24);
    assert!(asking.contains("wipe device 4? it is revoked and erases itself (y/n)"), "{asking}");
    assert!(app.on_key(Key::char('n')).is_empty());
    assert!(app.confirm.is_none());
    app.run_command("wipe 4");
    let effects = app.on_key(Key::char('y'));
    assert!(matches!(commands(&effects)[..], [Command::DevicesWipe { device: 4 }]));
}

#[test]
fn drafts_stay_with_their_chat() {
    let mut app = app();
    app.composer = "half a thought".into();
    app.focus = Focus::List;
    app.on_key(Key::char('j'));
    app.on_key(Key::new(KeyCode::Enter));
    assert!(app.composer.is_empty(), "team's composer starts empty");
    app.focus = Focus::List;
    app.on_key(Key::char('k'));
    app.on_key(Key::new(KeyCode::Enter));
    assert_eq!(app.composer, "half a thought");
}

#[test]
fn file_paths_complete_and_transfers_show_a_bar() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["report-2026.pdf", "report-2025.pdf", "notes.txt"] {
        std::fs::write(dir.path().join(name), b"x").expect("write");
    }
    std::fs::create_dir(dir.path().join("photos")).expect("dir");
    let base = dir.path().display().to_string();
    let complete = sotto::tui::app::complete_path;
    assert_eq!(complete(&format!("file {base}/no")), Ok(format!("file {base}/notes.txt")));
    assert_eq!(complete(&format!("file {base}/ph")), Ok(format!("file {base}/photos/")));
    // Several fit: as far as they agree, then the candidates.
    assert_eq!(complete(&format!("file {base}/rep")), Ok(format!("file {base}/report-202")));
    assert_eq!(
        complete(&format!("file {base}/report-202")),
        Err(vec!["report-2025.pdf".to_string(), "report-2026.pdf".to_string()])
    );
    assert_eq!(complete(&format!("file {base}/nothing")), Err(Vec::new()));
    // Through the `:` line.
    let mut app = app();
    app.focus = Focus::Conversation;
    app.on_key(Key::char(':'));
    type_text(&mut app, &format!("file {base}/no"));
    app.on_key(Key::new(KeyCode::Tab));
    assert_eq!(app.command, Some(format!("file {base}/notes.txt")));

    app.command = None;
    app.on_event(sotto_client::engine::Event::Progress {
        transfer: "upload".into(),
        done: 1 << 29,
        total: 1 << 31,
    });
    let shown = screen(&mut app, 100, 24);
    assert!(shown.contains("upload [=====               ] 25% of 2147483648 bytes"), "{shown}");
    app.on_event(sotto_client::engine::Event::Progress {
        transfer: "upload".into(),
        done: 1 << 31,
        total: 1 << 31,
    });
    assert!(!screen(&mut app, 100, 24).contains("upload ["));
}

fn tag_of(effects: &[Effect], want: impl Fn(&Command) -> bool) -> u64 {
    effects
        .iter()
        .find_map(|e| match e {
            Effect::Run(tag, c) if want(c) => Some(*tag),
            _ => None,
        })
        .expect("asked")
}

#[test]
fn answers_land_where_they_belong_and_typed_ahead_keys_do_nothing() {
    let mut app = app();
    // A message sent to bob, answered after the user moved to carol, stays out of her view.
    app.composer = "for bob".into();
    let sent = app.on_key(Key::new(KeyCode::Enter));
    let tag = tag_of(&sent, |c| matches!(c, Command::Send { .. }));
    app.run_command("dm carol@example.org");
    app.composer = "for carol, unsent".into();
    let bobs = message("0b".repeat(16).as_str(), "alice@example.org", "for bob", T0, json!({}));
    app.on_answer(tag, Ok(serde_json::to_value(&bobs).expect("json")));
    let open = app.open.as_ref().expect("open");
    assert_eq!((open.chat.as_deref(), open.to.as_deref()), (None, Some("carol@example.org")));
    assert!(open.messages.is_empty(), "{:?}", open.messages);
    // What was written for carol stays hers; bob's chat starts empty again.
    app.focus = Focus::List;
    app.on_key(Key::new(KeyCode::Enter));
    assert!(app.composer.is_empty());
    app.run_command("dm carol@example.org");
    assert_eq!(app.composer, "for carol, unsent");

    // A group named like a contact is not that contact's chat.
    let mut app = crate::app();
    app.chats.push(chat("g9", "group", "bob@example.org", 0, ""));
    let mut fake = message(&"0c".repeat(16), "mallory@example.org", "it's me, bob", T0, json!({}));
    fake.chat = "g9".into();
    fake.chat_name = "bob@example.org".into();
    app.on_event(sotto_client::engine::Event::Message { message: fake });
    assert!(app.open.as_ref().expect("open").messages.iter().all(|m| m.chat == "c1"));

    // Chat events never raise warnings (they may quote what others wrote); notices do, once.
    let mut rename = message("event-9-0", "mallory@example.org", "", T0, json!({"kind": "event"}));
    rename.body = "mallory renamed the group to: bob's identity key changed".into();
    app.on_event(sotto_client::engine::Event::Message { message: rename });
    assert!(app.banners.is_empty());
    for _ in 0..3 {
        app.on_event(sotto_client::engine::Event::Notice {
            text: "bob@example.org's identity key changed".into(),
        });
    }
    assert_eq!(app.banners.len(), 1);

    // A burst of messages asks for the chat list once (then once more when that answer comes).
    let mut app = crate::app();
    let mut asked = 0;
    for i in 0..10 {
        let m =
            message(&format!("{i:02x}{}", "ee".repeat(15)), "bob@example.org", "x", T0, json!({}));
        asked += commands(&app.on_event(sotto_client::engine::Event::Message { message: m }))
            .iter()
            .filter(|c| matches!(c, Command::Chats { .. }))
            .count();
    }
    assert_eq!(asked, 1);

    // A safety screen asked for before the last key opens locked: the typed-ahead `v` does
    // not mark anyone verified.
    let asked = app.run_command("safety bob@example.org");
    let tag = tag_of(&asked, |c| matches!(c, Command::Verify { .. }));
    app.on_key(Key::char('v'));
    let view = json!({"address": "bob@example.org", "safety_number": "1", "qr_text": "q",
                      "verified": false, "changed_since_verified": true, "identity_key": "ab"});
    app.on_answer(tag, Ok(view));
    assert!(matches!(app.screen, Screen::Safety(_)) && app.locked);
    assert!(app.on_key(Key::char('v')).is_empty(), "the first key only unlocks");
    // Accepting a changed key asks first.
    assert!(app.on_key(Key::char('a')).is_empty());
    assert!(app.confirm.as_ref().is_some_and(|(q, _)| q.contains("without comparing")));

    // Quitting with something unsent asks first.
    let mut app = crate::app();
    app.composer = "unsent".into();
    app.focus = Focus::List;
    app.on_key(Key::char('q'));
    assert!(!app.quit && app.confirm.is_some());
    app.on_key(Key::char('y'));
    assert!(app.quit);
}

#[test]
fn a_message_rings_and_notifies_with_the_chat_name_only() {
    let mut app = app();
    let m = message(&"0d".repeat(16), "bob@example.org", "the secret plan", T0, json!({}));
    let effects = app.on_event(sotto_client::engine::Event::Message { message: m.clone() });
    assert!(effects.iter().any(|e| matches!(e, Effect::Bell)));
    let notes: Vec<&String> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Notify(title) => Some(title),
            _ => None,
        })
        .collect();
    assert_eq!(notes, ["bob@example.org"]);
    // Muted: neither.
    app.chats[0].muted = true;
    let effects = app.on_event(sotto_client::engine::Event::Message { message: m });
    assert!(!effects.iter().any(|e| matches!(e, Effect::Bell | Effect::Notify(_))));
}
