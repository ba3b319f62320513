//! Drawing the terminal client: the chat list, the conversation, the composer, the status
//! line, the help screen. Everything another user wrote goes through
//! [`crate::terminal_line`] first: no control character or escape sequence reaches the
//! terminal.

use ratatui::Frame;
use ratatui::layout::{Constraint, Direction, Layout, Position, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph};
use sotto_client::{DeviceView, MessageView, SafetyView, format_time};

use crate::terminal_line;
use crate::tui::app::{App, COMMANDS, Focus, Screen};

/// Colours senders are shown in: the same sender always gets the same one.
const PALETTE: [Color; 6] =
    [Color::Cyan, Color::Green, Color::Yellow, Color::Magenta, Color::LightBlue, Color::LightRed];

/// The columns a character takes on a terminal (as ratatui counts them).
fn char_width(c: char) -> usize {
    let mut buf = [0u8; 4];
    Span::raw(&*c.encode_utf8(&mut buf)).width()
}

/// The columns a text takes.
fn text_width(s: &str) -> usize {
    Span::raw(s).width()
}

/// Lines of one message drawn at most.
const MAX_LINES_PER_MESSAGE: usize = 200;

/// What the last drawing found, for the app to clamp its scrolling with.
#[derive(Debug, Clone, Copy, Default)]
pub struct Drawn {
    /// Lines the conversation holds at the current width.
    pub total_lines: usize,
    /// Lines it shows.
    pub shown: usize,
}

fn fg(app: &App, color: Color) -> Style {
    if app.color { Style::default().fg(color) } else { Style::default() }
}

fn dim() -> Style {
    Style::default().add_modifier(Modifier::DIM)
}

fn sender_color(app: &App, sender: &str) -> Style {
    // FNV-1a: stable across runs and machines.
    let hash = sender
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    fg(app, PALETTE[(hash % PALETTE.len() as u64) as usize]).add_modifier(Modifier::BOLD)
}

/// Splits `text` into lines that fit `width` columns (by display width), breaking at spaces
/// where it can: `first` columns are already taken on the first line, `indent` on the others.
fn wrap(text: &str, width: usize, first: usize, indent: usize) -> Vec<String> {
    let width = width.max(indent + 8);
    let mut lines = Vec::new();
    let mut line = String::new();
    let mut used = first;
    for word in text.split_inclusive(' ') {
        let w = text_width(word.trim_end());
        if used + w > width && !line.is_empty() {
            lines.push(std::mem::take(&mut line));
            used = indent;
        }
        for c in word.chars() {
            let cw = char_width(c);
            if used + cw > width && !line.is_empty() && c != ' ' {
                lines.push(std::mem::take(&mut line));
                used = indent;
            }
            line.push(c);
            used += cw;
        }
    }
    lines.push(line);
    lines
}

fn clock(ms: u64) -> String {
    format_time(ms).get(11..16).unwrap_or("").to_string()
}

fn day(ms: u64) -> String {
    format_time(ms).get(..10).unwrap_or("").to_string()
}

/// The lines of the open conversation at `width` columns.
pub fn conversation_lines(app: &App, width: usize) -> Vec<Line<'static>> {
    let Some(open) = &app.open else { return Vec::new() };
    let mut lines: Vec<Line<'static>> = Vec::new();
    if open.more_before && open.search.is_none() {
        lines.push(Line::styled("(scroll up for earlier messages)", dim()));
    }
    let mut last_day = String::new();
    for m in &open.messages {
        let d = day(m.sent_at);
        if d != last_day {
            let rule = "─".repeat(width.saturating_sub(d.len() + 2) / 2);
            lines.push(Line::styled(format!("{rule} {d} {rule}"), dim()));
            last_day = d;
        }
        message_lines(app, m, width, &mut lines);
    }
    if open.messages.is_empty() {
        let text = match (&open.search, &open.chat) {
            (Some(_), _) => "nothing found",
            (None, None) => "no messages yet: the first one you send starts the chat",
            (None, Some(_)) => "no messages yet",
        };
        lines.push(Line::styled(text, dim()));
    }
    lines
}

fn message_lines(app: &App, m: &MessageView, width: usize, lines: &mut Vec<Line<'static>>) {
    let time = clock(m.sent_at);
    let pad = " ".repeat(6);
    match m.kind.as_str() {
        "event" | "mark" => {
            let style = dim().add_modifier(Modifier::ITALIC);
            let mark = if m.kind == "event" { "*" } else { "·" };
            for (i, l) in wrap(&terminal_line(&m.body), width, 8, 8).into_iter().enumerate() {
                let lead = if i == 0 { format!("{time} {mark} ") } else { format!("{pad}  ") };
                lines.push(Line::styled(format!("{lead}{l}"), style));
            }
            return;
        }
        _ => {}
    }
    if let Some(q) = &m.reply_to {
        let who = q.sender.as_deref().map(terminal_line).unwrap_or_default();
        let text = q.text.as_deref().map(terminal_line).unwrap_or_else(|| "…".into());
        let quote: String = format!("{pad}┌ {who}: {text}").chars().take(width).collect();
        lines.push(Line::styled(quote, dim()));
    }
    let ours = m.sender == app.me;
    let name = if ours {
        "you".to_string()
    } else {
        terminal_line(m.sender_name.as_deref().unwrap_or(&m.sender))
    };
    // Ids are checked when messages arrive; what reaches the terminal is made safe anyway.
    let id: String = terminal_line(&m.id.chars().take(8).collect::<String>());
    let body = if m.deleted {
        "(deleted)".to_string()
    } else if let Some(f) = &m.file {
        format!("[file {} — {} bytes] (:download {id})", terminal_line(&f.name), f.size)
    } else if m.kind == "unsupported" {
        "(a kind of message this version cannot show)".to_string()
    } else {
        m.body.clone()
    };
    let mark = match m.status.as_str() {
        "pending" => " …",
        "sent" => " ✓",
        "delivered" => " ✓✓",
        "read" => " ✓✓ read",
        "failed" => " ✗ not sent (:resend)",
        _ => "",
    };
    let edited = if m.edited { " (edited)" } else { "" };
    let head = format!("{time} {name}: ");
    let head_width = text_width(&head);
    let mut first = true;
    let body_style =
        if m.deleted { dim().add_modifier(Modifier::ITALIC) } else { Style::default() };
    // A message of thousands of lines shows its start (history and search have all of it).
    let mut shown_lines = 0;
    for source in body.split('\n') {
        if shown_lines >= MAX_LINES_PER_MESSAGE {
            lines.push(Line::styled(
                format!("{pad}… (longer: :search or the CLI's history)"),
                dim(),
            ));
            break;
        }
        let start = if first { head_width } else { 6 };
        for (i, l) in wrap(&terminal_line(source), width, start, 6).into_iter().enumerate() {
            let mut spans = Vec::new();
            if first && i == 0 {
                spans.push(Span::raw(format!("{time} ")));
                spans.push(Span::styled(name.clone(), sender_color(app, &m.sender)));
                spans.push(Span::raw(": "));
            } else {
                spans.push(Span::raw(pad.clone()));
            }
            spans.push(Span::styled(l, body_style));
            lines.push(Line::from(spans));
            shown_lines += 1;
        }
        first = false;
    }
    // Marks and the id's start (for :reply, :react, :edit, :delete) close the last line, or
    // take one of their own when it is full.
    let failed = m.status == "failed";
    let marks = vec![
        Span::styled(edited.to_string(), dim()),
        Span::styled(
            mark.to_string(),
            if failed { fg(app, Color::Red) } else { fg(app, Color::Green) },
        ),
        Span::styled(format!(" #{id}"), dim()),
    ];
    let marks_width: usize = marks.iter().map(Span::width).sum();
    match lines.last_mut() {
        Some(last) if last.width() + marks_width <= width => last.spans.extend(marks),
        _ => {
            let mut spans = vec![Span::raw(pad.clone())];
            spans.extend(marks);
            lines.push(Line::from(spans));
        }
    }
    if !m.reactions.is_empty() {
        let list: Vec<String> = m
            .reactions
            .iter()
            .map(|r| format!("{} {}", terminal_line(&r.emoji), terminal_line(&r.from)))
            .collect();
        lines.push(Line::styled(format!("{pad}{}", list.join("  ")), dim()));
    }
}

/// Draws the whole screen; returns what the app needs to clamp scrolling.
pub fn draw(frame: &mut Frame<'_>, app: &App) -> Drawn {
    let area = frame.area();
    match &app.screen {
        Screen::Main => {}
        Screen::Help(scroll) => {
            help(frame, app, area, *scroll);
            return Drawn::default();
        }
        Screen::Safety(view) => {
            safety(frame, app, view, area);
            return Drawn::default();
        }
        Screen::Devices(list, selected) => {
            devices(frame, app, list, *selected, area);
            return Drawn::default();
        }
    }
    // Warnings that cannot be missed span the whole width, above the list and the chat.
    let banner = if app.banners.is_empty() { 0 } else { 1 };
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([Constraint::Length(banner), Constraint::Min(3), Constraint::Length(1)])
        .split(area);
    if let Some(text) = app.banners.first() {
        let more = if app.banners.len() > 1 {
            format!(" (+{})", app.banners.len() - 1)
        } else {
            String::new()
        };
        let fix = crate::tui::app::remedy(text);
        let fix =
            if fix.is_empty() { String::new() } else { format!(" → {}", terminal_line(&fix)) };
        let line = format!("⚠ {}{fix}{more} (Esc dismisses)", terminal_line(text));
        let style = fg(app, Color::Red).add_modifier(Modifier::BOLD | Modifier::REVERSED);
        frame.render_widget(Paragraph::new(Line::styled(line, style)), rows[0]);
    }
    let rows = [rows[1], rows[2]];
    let list_width = (area.width / 3).clamp(16, 30);
    let cols = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Length(list_width), Constraint::Min(20)])
        .split(rows[0]);
    chat_list(frame, app, cols[0]);
    let composer_height = app.composer.lines().count().clamp(1, 6) as u16 + 2;
    let right = Layout::default()
        .direction(Direction::Vertical)
        .constraints([Constraint::Min(3), Constraint::Length(composer_height)])
        .split(cols[1]);
    let drawn = conversation(frame, app, right[0]);
    composer(frame, app, right[1]);
    status_line(frame, app, rows[1]);
    drawn
}

fn border(app: &App, focused: bool) -> Style {
    if focused { fg(app, Color::Cyan).add_modifier(Modifier::BOLD) } else { dim() }
}

/// A bordered panel titled `title`; the area inside it.
fn panel(frame: &mut Frame<'_>, app: &App, area: Rect, title: String, focused: bool) -> Rect {
    let block =
        Block::default().borders(Borders::ALL).title(title).border_style(border(app, focused));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    inner
}

fn chat_list(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let title = match &app.filter {
        Some(f) => format!(" /{} ", terminal_line(f)),
        None => " Chats ".to_string(),
    };
    let inner = panel(frame, app, area, title, app.focus == Focus::List);
    let width = inner.width as usize;
    let visible = app.visible();
    let per = 2usize;
    let fits = (inner.height as usize / per).max(1);
    let first = app.selected.saturating_sub(fits - 1);
    let mut lines = Vec::new();
    for (i, c) in visible.iter().enumerate().skip(first).take(fits) {
        let selected = i == app.selected;
        let mut flags = String::new();
        if c.pinned {
            flags.push('^');
        }
        if c.muted {
            flags.push('~');
        }
        if c.state != "active" {
            flags.push('x');
        }
        let unread = if c.unread > 0 { format!(" ({})", c.unread) } else { String::new() };
        let room = width.saturating_sub(unread.chars().count() + flags.chars().count() + 2);
        let title: String = terminal_line(&c.title).chars().take(room).collect();
        let style = if selected {
            Style::default().add_modifier(Modifier::REVERSED)
        } else if c.unread > 0 {
            Style::default().add_modifier(Modifier::BOLD)
        } else {
            Style::default()
        };
        let marker = if selected { ">" } else { " " };
        lines.push(Line::from(vec![
            Span::styled(format!("{marker}{title}"), style),
            Span::styled(unread, fg(app, Color::Yellow).add_modifier(Modifier::BOLD)),
            Span::styled(format!(" {flags}"), dim()),
        ]));
        let preview = c.preview.as_deref().map(terminal_line).unwrap_or_default();
        let preview: String = preview.chars().take(width.saturating_sub(2)).collect();
        lines.push(Line::styled(format!("  {preview}"), dim()));
    }
    if visible.is_empty() {
        let hint = if app.filter.is_some() { "no chat matches" } else { "no chats: :dm ADDRESS" };
        lines.push(Line::styled(hint, dim()));
    }
    frame.render_widget(Paragraph::new(lines), inner);
}

fn conversation(frame: &mut Frame<'_>, app: &App, area: Rect) -> Drawn {
    let title = match (&app.open, app.open_summary()) {
        (Some(open), summary) => {
            let mut t = format!(" {} ", terminal_line(&open.title));
            if let Some(s) = summary {
                if s.kind == "group" {
                    t.push_str(&format!("· {} members ", s.members.len()));
                }
                if s.timer_secs > 0 {
                    t.push_str(&format!(
                        "· disappearing {} ",
                        crate::format_duration(s.timer_secs)
                    ));
                }
            }
            if let Some(words) = &open.search {
                t.push_str(&format!("· search: {} ", terminal_line(words)));
            }
            t
        }
        (None, _) => " Sotto ".to_string(),
    };
    let inner = panel(frame, app, area, title, app.focus == Focus::Conversation);
    if app.open.is_none() {
        let hint = vec![
            Line::raw("Pick a chat on the left (j/k or arrows, Enter),"),
            Line::raw("or :dm ADDRESS to start one. ? shows every key."),
        ];
        frame.render_widget(Paragraph::new(hint).style(dim()), inner);
        return Drawn { total_lines: 0, shown: inner.height as usize };
    }
    let lines = conversation_lines(app, inner.width as usize);
    let shown = inner.height as usize;
    let scroll = app.open.as_ref().map_or(0, |o| o.scroll);
    let total = lines.len();
    let end = total.saturating_sub(scroll.min(total.saturating_sub(shown)));
    let start = end.saturating_sub(shown);
    let visible: Vec<Line<'static>> = lines[start..end].to_vec();
    frame.render_widget(Paragraph::new(visible), inner);
    Drawn { total_lines: total, shown }
}

fn composer(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let to = app.open.as_ref().map(|o| terminal_line(&o.title)).unwrap_or_default();
    let title = match (&app.reply_to, app.open.is_some()) {
        (Some(r), _) => format!(" reply to #{} (Enter sends) ", terminal_line(r)),
        (None, true) => format!(" to {to} · Enter sends "),
        (None, false) => " message ".to_string(),
    };
    let inner = panel(frame, app, area, title, app.focus == Focus::Composer);
    let width = inner.width as usize;
    let mut lines: Vec<String> = Vec::new();
    for source in app.composer.split('\n') {
        lines.extend(wrap(&terminal_line(source), width.saturating_sub(1), 0, 0));
    }
    let skip = lines.len().saturating_sub(inner.height as usize);
    let shown: Vec<Line<'static>> = lines[skip..].iter().cloned().map(Line::raw).collect();
    frame.render_widget(Paragraph::new(shown), inner);
    if app.focus == Focus::Composer && app.command.is_none() {
        let last = lines.last().map_or(0, |l| text_width(l));
        let row = (lines.len() - skip).saturating_sub(1) as u16;
        frame.set_cursor_position(Position {
            x: inner.x + (last as u16).min(inner.width.saturating_sub(1)),
            y: inner.y + row.min(inner.height.saturating_sub(1)),
        });
    }
}

fn status_line(frame: &mut Frame<'_>, app: &App, area: Rect) {
    if let Some((question, _)) = &app.confirm {
        let line =
            Line::styled(question.clone(), fg(app, Color::Yellow).add_modifier(Modifier::BOLD));
        frame.render_widget(Paragraph::new(line), area);
        return;
    }
    if let Some(line) = &app.command {
        let text = format!(":{}", terminal_line(line));
        let x = area.x + (text.chars().count() as u16).min(area.width.saturating_sub(1));
        frame.render_widget(Paragraph::new(text), area);
        frame.set_cursor_position(Position { x, y: area.y });
        return;
    }
    let connected = app.status.connection == "connected";
    let dot = Span::styled("● ", fg(app, if connected { Color::Green } else { Color::Red }));
    let mut spans = vec![
        dot,
        Span::raw(terminal_line(&app.status.connection)),
        Span::styled(" │ ", dim()),
        Span::raw(terminal_line(&app.me)),
        Span::styled(" │ ", dim()),
    ];
    if let Some((transfer, done, total)) = &app.status.progress {
        let filled = (done.saturating_mul(20) / (*total).max(1)) as usize;
        let pct = done.saturating_mul(100) / (*total).max(1);
        spans.push(Span::raw(format!(
            "{transfer} [{}{}] {pct}% of {} bytes  ",
            "=".repeat(filled.min(20)),
            " ".repeat(20 - filled.min(20)),
            total
        )));
    }
    match (&app.status.error, &app.status.info) {
        (Some(e), _) => spans.push(Span::styled(terminal_line(e), fg(app, Color::Red))),
        (None, Some(i)) => spans.push(Span::raw(terminal_line(i))),
        (None, None) => spans.push(Span::styled("? help  : commands  Tab switches", dim())),
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// A QR code in half blocks, dark on light as scanners want it.
fn qr_lines(text: &str) -> Vec<String> {
    match qrcode::QrCode::new(text.as_bytes()) {
        Ok(qr) => qr
            .render::<qrcode::render::unicode::Dense1x2>()
            .dark_color(qrcode::render::unicode::Dense1x2::Light)
            .light_color(qrcode::render::unicode::Dense1x2::Dark)
            .quiet_zone(true)
            .build()
            .lines()
            .map(str::to_owned)
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn safety(frame: &mut Frame<'_>, app: &App, view: &SafetyView, area: Rect) {
    frame.render_widget(Clear, area);
    let title = format!(" Safety number with {} ", terminal_line(&view.address));
    let inner = panel(frame, app, area, title, true);
    let mut lines: Vec<Line<'static>> = vec![Line::raw("")];
    let groups: Vec<&str> = view.safety_number.split(' ').collect();
    for row in groups.chunks(4) {
        lines.push(Line::styled(
            format!("    {}", row.join("  ")),
            Style::default().add_modifier(Modifier::BOLD),
        ));
    }
    lines.push(Line::raw(""));
    let (state, style) = if view.changed_since_verified {
        (
            format!(
                "{}'s identity key CHANGED since you verified it: sending is blocked. Compare again, then v; or a accepts the change.",
                terminal_line(&view.address)
            ),
            fg(app, Color::Red).add_modifier(Modifier::BOLD),
        )
    } else if view.verified {
        ("verified: you compared this number with them".to_string(), fg(app, Color::Green))
    } else {
        ("not verified: compare these digits (or scan the code) with theirs, in person or on a call you trust; then press v".to_string(), Style::default())
    };
    for l in wrap(&state, inner.width as usize, 0, 0) {
        lines.push(Line::styled(l, style));
    }
    lines.push(Line::styled("v mark verified   Esc back", dim()));
    let qr = qr_lines(&view.qr_text);
    let room = (inner.height as usize).saturating_sub(lines.len() + 1);
    if qr.len() <= room {
        lines.push(Line::raw(""));
        lines.extend(qr.into_iter().map(Line::raw));
    } else {
        lines.push(Line::styled("(a taller terminal shows the QR code)", dim()));
    }
    frame.render_widget(Paragraph::new(lines), inner);
}

fn devices(frame: &mut Frame<'_>, app: &App, list: &[DeviceView], selected: usize, area: Rect) {
    frame.render_widget(Clear, area);
    let inner = panel(frame, app, area, " Devices of this account ".to_string(), true);
    let mut lines: Vec<Line<'static>> = Vec::new();
    for (i, d) in list.iter().enumerate() {
        let name = d.name.as_deref().map(terminal_line).unwrap_or_else(|| "(no name)".into());
        let this = if d.this_device { " (this device)" } else { "" };
        let seen = d
            .last_seen
            .map(|s| format!(", last seen {}", format_time(s.saturating_mul(1000))))
            .unwrap_or_default();
        let text = format!(
            "{} {:>3}  {name}{this}  {}{seen}",
            if i == selected { ">" } else { " " },
            d.device_id,
            d.state
        );
        let style = if i == selected {
            Style::default().add_modifier(Modifier::REVERSED)
        } else {
            Style::default()
        };
        lines.push(Line::styled(text, style));
    }
    lines.push(Line::raw(""));
    let keys = "j/k select   r revoke   w wipe (both ask first)   :link CODE approves a new \
                device   Esc back";
    lines
        .extend(wrap(keys, inner.width as usize, 0, 0).into_iter().map(|l| Line::styled(l, dim())));
    frame.render_widget(Paragraph::new(lines), inner);
}

/// Every key and command.
pub fn help_lines() -> Vec<String> {
    let mut lines = vec![
        "Keys".to_string(),
        "  Tab              chat list → conversation → composer".to_string(),
        "  j/k, arrows      move in the list; scroll the conversation".to_string(),
        "  Enter, l         open the selected chat (list); send (composer)".to_string(),
        "  Alt-Enter        new line in the composer".to_string(),
        "  PgUp/PgDn, wheel scroll the conversation (earlier messages load at the top)".to_string(),
        "  gg / G           first / last".to_string(),
        "  /                filter chats (list); search the chat (conversation)".to_string(),
        "  i                write (composer)    Esc  leave the composer, search, a warning"
            .to_string(),
        "  :                a command (Tab completes)    ?  this help    q, Ctrl-C  quit"
            .to_string(),
        "  S                the safety number with the open direct chat's contact".to_string(),
        String::new(),
        "Commands (MESSAGE: the #id shown after a message, or its start)".to_string(),
    ];
    for (name, args, what) in COMMANDS {
        lines.push(format!("  {:<28} {what}", format!(":{name} {args}")));
    }
    lines.push(String::new());
    lines.push(
        "Marks: … waiting  ✓ sent  ✓✓ delivered  ✓✓ read  ✗ not sent;  ^ pinned  ~ muted".into(),
    );
    lines.push("j/k, PgUp/PgDn scroll; any other key closes this help.".into());
    lines
}

fn help(frame: &mut Frame<'_>, app: &App, area: Rect, scroll: u16) {
    frame.render_widget(Clear, area);
    let inner = panel(frame, app, area, " Help (j/k scroll) ".to_string(), true);
    let lines: Vec<Line<'static>> = help_lines().into_iter().map(Line::raw).collect();
    let most = (lines.len() as u16).saturating_sub(inner.height);
    frame.render_widget(Paragraph::new(lines).scroll((scroll.min(most), 0)), inner);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_respects_width_and_wide_characters() {
        assert_eq!(wrap("hello world", 8, 0, 0), ["hello ", "world"]);
        assert_eq!(wrap("abcdefghij", 8, 0, 0), ["abcdefgh", "ij"]);
        assert_eq!(wrap("日本語のテキスト", 8, 0, 0), ["日本語の", "テキスト"]);
        assert_eq!(wrap("", 8, 0, 0), [""]);
        // Lines after the first start indented: they hold less.
        assert_eq!(wrap("aaaa bbbb cccc dddd", 14, 6, 6), ["aaaa ", "bbbb ", "cccc ", "dddd"]);
        assert_eq!(wrap("aaaa bbbb cccc", 12, 0, 4), ["aaaa bbbb ", "cccc"]);
    }
}
