//! Export: a chat (or every chat) written out decrypted, as JSON or Markdown, with its files.
//!
//! What is exported leaves the encrypted home: the caller says where, and the result carries
//! a warning that front ends show.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use rusqlite::params;
use serde::{Deserialize, Serialize};

use crate::conversation::conversation;
use crate::*;

/// The warning every export carries.
pub const EXPORT_WARNING: &str = "the export is not encrypted: anyone who can read its \
     directory can read these messages and files";

/// How an export is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    /// One JSON document per chat: the chat as `chats` shows it and its messages as
    /// `history` shows them.
    Json,
    /// One Markdown page per chat, for reading.
    Markdown,
}

/// What an export wrote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportReport {
    /// The directory written to.
    pub dir: String,
    /// The files written, one per chat, relative to `dir`.
    pub chats: Vec<String>,
    /// Messages and events exported.
    pub messages: usize,
    /// Attachments saved under `files/`.
    pub files: usize,
    /// Attachments that could not be fetched (expired, server unreachable), with why.
    pub files_missing: Vec<String>,
    /// [`EXPORT_WARNING`].
    pub warning: String,
}

/// One message in a JSON export: as `history` shows it, with where its file was saved.
#[derive(Serialize)]
struct Exported<'a> {
    #[serde(flatten)]
    message: &'a MessageView,
    #[serde(skip_serializing_if = "Option::is_none")]
    saved_as: Option<String>,
}

/// Formats Unix milliseconds as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn format_time(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// A name for a chat's export file: its title's letters and digits, then the id's start.
fn file_stem(chat: &ChatSummary) -> String {
    let title: String = chat
        .title
        .chars()
        .map(|c| if c.is_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
        .take(40)
        .collect();
    let title = title.trim_matches('-');
    let id: String = chat.id.chars().take(8).collect();
    if title.is_empty() { id } else { format!("{title}-{id}") }
}

/// Text from other users, made safe for a Markdown page: control characters dropped (newlines
/// kept), and nothing that could open HTML.
fn markdown_text(text: &str) -> String {
    text.chars()
        .filter(|c| *c == '\n' || !c.is_control())
        .collect::<String>()
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let io = |e: std::io::Error| Error::Io(format!("{}: {e}", path.display()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

impl Client {
    /// Writes `chat` (or every chat, archived ones too) to `out`, decrypted; files are
    /// downloaded into `out/files` unless `files` is false. `progress` hears the downloads.
    pub fn export(
        &mut self,
        chat: Option<&str>,
        format: ExportFormat,
        out: &Path,
        files: bool,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<ExportReport, Error> {
        let chats = match chat {
            Some(spec) => {
                let group_id = self.resolve(spec)?;
                vec![self.chat_summary(&group_id)?]
            }
            None => self.chats(true)?,
        };
        let io = |p: &Path| {
            let p = p.display().to_string();
            move |e: std::io::Error| Error::Io(format!("{p}: {e}"))
        };
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(out).map_err(io(out))?;
        let files_dir = out.join("files");
        let mut report = ExportReport {
            dir: out.display().to_string(),
            chats: Vec::new(),
            messages: 0,
            files: 0,
            files_missing: Vec::new(),
            warning: EXPORT_WARNING.into(),
        };
        for summary in chats {
            let group_id = hex::decode(&summary.id).map_err(|_| Error::Internal("chat id"))?;
            let mut messages = Vec::new();
            for g in conversation(&self.conn, &group_id)? {
                messages
                    .extend(self.message_views("WHERE m.group_id = ?1 ORDER BY m.id", params![g])?);
            }
            messages.sort_by_key(|m| m.row);
            let mut saved: Vec<Option<String>> = vec![None; messages.len()];
            if files {
                for (m, slot) in messages.iter().zip(saved.iter_mut()) {
                    let Some(f) = m.file.as_ref().filter(|_| !m.deleted) else { continue };
                    builder.create(&files_dir).map_err(io(&files_dir))?;
                    let name = format!(
                        "{}-{}",
                        m.id.chars().take(8).collect::<String>(),
                        sotto_core::attachment::safe_file_name(&f.name)
                    );
                    let path: PathBuf = files_dir.join(&name);
                    match self.download(&m.id, Some(&path), progress) {
                        Ok(_) => {
                            report.files += 1;
                            *slot = Some(format!("files/{name}"));
                        }
                        Err(e) => report.files_missing.push(format!("{}: {e}", f.name)),
                    }
                }
            }
            let stem = file_stem(&summary);
            let (name, bytes) = match format {
                ExportFormat::Json => {
                    let list: Vec<Exported<'_>> = messages
                        .iter()
                        .zip(&saved)
                        .map(|(message, s)| Exported { message, saved_as: s.clone() })
                        .collect();
                    let doc = serde_json::json!({
                        "warning": EXPORT_WARNING,
                        "chat": summary,
                        "messages": list,
                    });
                    let bytes = serde_json::to_vec_pretty(&doc)
                        .map_err(|e| Error::Io(format!("cannot encode: {e}")))?;
                    (format!("{stem}.json"), bytes)
                }
                ExportFormat::Markdown => {
                    (format!("{stem}.md"), markdown(&summary, &messages, &saved).into_bytes())
                }
            };
            write_file(&out.join(&name), &bytes)?;
            report.messages += messages.len();
            report.chats.push(name);
        }
        Ok(report)
    }
}

/// A chat as a Markdown page.
fn markdown(chat: &ChatSummary, messages: &[MessageView], saved: &[Option<String>]) -> String {
    let mut page = format!("# {}\n\n", markdown_text(&chat.title));
    if !chat.members.is_empty() {
        page.push_str(&format!("Members: {}\n\n", markdown_text(&chat.members.join(", "))));
    }
    for (m, saved) in messages.iter().zip(saved) {
        let when = format_time(m.sent_at);
        let who = markdown_text(m.sender_name.as_deref().unwrap_or(&m.sender));
        if matches!(m.kind.as_str(), "event" | "mark") {
            page.push_str(&format!("*{when} — {}*\n\n", markdown_text(&m.body)));
            continue;
        }
        page.push_str(&format!("**{who}** · {when}  \n"));
        if let Some(q) = &m.reply_to {
            let quoted = q.text.as_deref().map(markdown_text).unwrap_or_else(|| "…".into());
            let by = q.sender.as_deref().map(markdown_text).unwrap_or_default();
            page.push_str(&format!("> {by}: {}\n\n", quoted.replace('\n', " ")));
        }
        let body = if m.deleted {
            "*(deleted)*".to_string()
        } else if let Some(f) = &m.file {
            match saved {
                Some(path) => format!("[{}]({path}) ({} bytes)", markdown_text(&f.name), f.size),
                None => format!("{} ({} bytes, not saved)", markdown_text(&f.name), f.size),
            }
        } else if m.kind == "unsupported" {
            "*(a kind of message this version cannot show)*".to_string()
        } else {
            markdown_text(&m.body)
        };
        page.push_str(&body);
        if m.edited {
            page.push_str(" *(edited)*");
        }
        page.push('\n');
        if !m.reactions.is_empty() {
            let list: Vec<String> = m
                .reactions
                .iter()
                .map(|r| format!("{} {}", markdown_text(&r.emoji), markdown_text(&r.from)))
                .collect();
            page.push_str(&format!("\n{}\n", list.join(" · ")));
        }
        page.push('\n');
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_names() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(1_733_250_000_000), "2024-12-03 18:20:00");
        assert_eq!(markdown_text("a\u{1b}[31m<b>\nc"), "a[31m&lt;b&gt;\nc");
    }
}
