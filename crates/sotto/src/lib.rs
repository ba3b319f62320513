//! Helpers shared by the `sotto` and `sotto-server` binaries (formatting, completions and
//! manual pages; everything else lives in the client and server libraries).
#![forbid(unsafe_code)]

pub mod daemon;
pub mod packaging;
pub mod tui;

/// Parses a duration in seconds: a number with s, m, h, d or w (no unit: hours).
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 30m or 7d"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" | "" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(format!("unknown unit {unit:?}: use s, m, h, d or w")),
    };
    match n.checked_mul(mult) {
        Some(0) | None => Err("the duration must be positive and under a few billion years".into()),
        Some(v) => Ok(v),
    }
}

/// A duration in seconds in the largest unit that states it exactly (90m, 2h, 7d).
pub fn format_duration(secs: u64) -> String {
    match secs {
        0 => "0s".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Whether `c` must not reach a terminal as it is: control characters (which move the
/// cursor, set titles, change colours or rewrite the line) and the marks that reorder text.
fn unsafe_on_terminal(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            // Bidirectional marks, overrides and isolates: they reorder what follows.
            '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
            // Line and paragraph separators (some terminals break lines at them), and
            // invisible characters that make two texts look alike (the zero-width joiners
            // stay: emoji sequences and several scripts need them).
            | '\u{2028}' | '\u{2029}' | '\u{200b}' | '\u{2060}' | '\u{feff}'
        )
}

/// Text another user wrote, made safe to print on one line: every control character, escape
/// sequence introducer, carriage return, newline and bidirectional mark becomes `�`.
pub fn terminal_line(text: &str) -> String {
    text.chars().map(|c| if unsafe_on_terminal(c) { '\u{fffd}' } else { c }).collect()
}

/// Text another user wrote (a message), made safe to print: as [`terminal_line`], except that
/// newlines are kept and every line after the first is indented, so a message can never pose
/// as a line of its own (another sender, another chat).
pub fn terminal_text(text: &str) -> String {
    text.split('\n').map(terminal_line).collect::<Vec<_>>().join("\n    ")
}

pub use sotto_client::format_time;

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc() {
        assert_eq!(super::format_time(0), "1970-01-01 00:00:00");
        assert_eq!(super::format_time(1_795_689_000_000), "2026-11-26 10:30:00");
        assert_eq!(super::format_time(951_782_400_000), "2000-02-29 00:00:00");
    }
}

#[cfg(test)]
mod terminal_tests {
    use super::*;

    #[test]
    fn nothing_another_user_writes_controls_the_terminal() {
        let forged = "ok\n[2026-12-03 15:14:00] team <bob@localhost> send me your recovery key";
        assert_eq!(
            terminal_text(forged),
            "ok\n    [2026-12-03 15:14:00] team <bob@localhost> send me your recovery key"
        );
        assert_eq!(terminal_line(forged).lines().count(), 1);
        let escapes = "\u{1b}[31mred\u{1b}]0;title\u{7}\rover\u{9b}2J\u{202e}txt.exe\u{7f}";
        let shown = terminal_text(escapes);
        assert!(!shown.chars().any(unsafe_on_terminal), "{shown:?}");
        assert_eq!(
            shown,
            "\u{fffd}[31mred\u{fffd}]0;title\u{fffd}\u{fffd}over\u{fffd}2J\u{fffd}txt.exe\u{fffd}"
        );
        assert_eq!(terminal_line("team\nname"), "team\u{fffd}name");
        assert_eq!(terminal_line("a\u{2028}b\u{200b}c\u{feff}"), "a\u{fffd}b\u{fffd}c\u{fffd}");
        assert_eq!(terminal_text("plain text, ünïcode ✓"), "plain text, ünïcode ✓");
        let family = "\u{1f468}\u{200d}\u{1f469}\u{200d}\u{1f467}";
        assert_eq!(terminal_text(family), family, "emoji sequences keep their joiners");
    }
}
