//! The plaintext carried inside MLS application messages.
//!
//! A message is a small JSON document with a format version, a random message id (used to
//! deduplicate), the sender's clock and a typed body. New types and fields are added, never
//! changed: a body type this version does not know decodes as [`Body::Unsupported`], and a
//! message carries the lowest format version that can read it (a plain text stays version 1,
//! so older clients keep reading it; a reply is a text with fields they ignore).
//!
//! So that a message's size says little of its content, [`Message::encode`] pads the JSON
//! with trailing spaces to one of a few sizes ([`padded_len`]): JSON allows whitespace after
//! the value, so every decoder, older clients' included, reads a padded message as before,
//! and this one reads unpadded messages from older clients.

use serde::{Deserialize, Serialize};

use crate::Error;

/// Current content format version: 2 added replies, mentions, reactions, edits, deletes,
/// receipts and note-to-self chats.
pub const VERSION: u8 = 2;

/// Longest emoji accepted in a reaction, in bytes (one emoji with its modifiers).
pub const MAX_EMOJI_LEN: usize = 64;

/// Most message ids one receipt acknowledges.
pub const MAX_RECEIPT_IDS: usize = 500;

/// Most accounts one text mentions.
pub const MAX_MENTIONS: usize = 64;

/// Longest disappearing-message timer: a year.
pub const MAX_TIMER_SECS: u64 = 365 * 86_400;

/// Largest accepted text body, in bytes.
pub const MAX_TEXT_LEN: usize = 64 * 1024;

/// The smallest size a message pads to. The envelope (id, clock, count) takes about 100
/// bytes, so a text of up to 150 bytes, a reaction, a deletion or a receipt for a few
/// messages fit in it; a file reference (about 390 bytes) takes the next size. A
/// key-directory root, told now and then, adds about 350 bytes.
pub const MIN_PADDED_LEN: usize = 256;

/// The largest power-of-two size a message pads to: it holds the longest text
/// ([`MAX_TEXT_LEN`]) with its envelope unless the text is mostly characters JSON escapes.
/// Longer encodings (at most about 520 KB: a text of control characters, each escaped to six
/// bytes, with the most mentions) pad to a multiple of it.
pub const MAX_PADDED_BUCKET: usize = 128 * 1024;

/// The size an encoded message of `len` bytes pads to: the next power of two from
/// [`MIN_PADDED_LEN`] up to [`MAX_PADDED_BUCKET`], then the next multiple of
/// [`MAX_PADDED_BUCKET`]. Every legal message takes one of 13 sizes (256 B … 128 KiB, then
/// 256, 384 and 512 KiB), at the cost of at most doubling it.
///
/// ```
/// use sotto_core::content::padded_len;
/// assert_eq!(padded_len(90), 256);
/// assert_eq!(padded_len(257), 512);
/// assert_eq!(padded_len(70_000), 128 * 1024);
/// assert_eq!(padded_len(200_000), 256 * 1024);
/// assert_eq!(padded_len(300_000), 384 * 1024);
/// ```
pub fn padded_len(len: usize) -> usize {
    if len <= MAX_PADDED_BUCKET {
        len.max(MIN_PADDED_LEN).next_power_of_two()
    } else {
        len.div_ceil(MAX_PADDED_BUCKET).saturating_mul(MAX_PADDED_BUCKET)
    }
}

/// Whether a conversation is a 1:1 chat or a named group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatKind {
    /// Two accounts.
    Direct,
    /// A named group.
    Group,
    /// Notes to self: this account's own devices only (format version 2).
    Note,
}

impl ChatKind {
    /// The name used in the client's database and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            ChatKind::Direct => "direct",
            ChatKind::Group => "group",
            ChatKind::Note => "note",
        }
    }
}

/// The typed part of a message. Its `Debug` output leaves the text out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Body {
    /// A text message.
    Text {
        /// The text.
        text: String,
        /// The id of the message this one answers (format version 2; older clients show the
        /// text alone).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<String>,
        /// The accounts the text names with `@address` (format version 2).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        mentions: Vec<String>,
    },
    /// What kind of conversation this group is, and its name. Sent when a group is created
    /// and whenever members are added, so newcomers learn it.
    ChatInfo {
        /// Direct or group.
        kind: ChatKind,
        /// The group's name (groups only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// A file: its ciphertext waits on the server as blob `blob`; `key` and `nonce` decrypt
    /// it (see [`crate::attachment`]); `sha256` is the plaintext's digest.
    File {
        /// The blob id (hex).
        blob: String,
        /// The file key (hex).
        key: String,
        /// The STREAM nonce prefix (hex).
        nonce: String,
        /// Plaintext size in bytes.
        size: u64,
        /// SHA-256 of the plaintext (hex).
        sha256: String,
        /// The file's name.
        name: String,
        /// Its media type.
        media_type: String,
        /// Whether the blob holds the file followed by zero bytes up to
        /// [`crate::attachment::padme`]`(size)`, as every file is sent since padding began.
        /// False (absent) in files from older clients, whose blob holds `size` bytes.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        padded: bool,
    },
    /// Disappearing messages: every device deletes this chat's messages `seconds` after they
    /// arrive (0 turns it off).
    Timer {
        /// Seconds a message lives; 0 for off.
        seconds: u64,
    },
    /// The sender's reaction to a message: one emoji per account and message, replacing its
    /// earlier one; empty removes it.
    Reaction {
        /// The message reacted to.
        target: String,
        /// The emoji, or empty.
        emoji: String,
    },
    /// A new text for one of the sender's own messages; of several edits, the one sent last
    /// wins, in whatever order they arrive.
    Edit {
        /// The message edited.
        target: String,
        /// Its new text.
        text: String,
    },
    /// Takes back one of the sender's own messages: every device keeps only a tombstone.
    Delete {
        /// The message deleted.
        target: String,
    },
    /// Tells the chat which of its messages reached (or were read on) the sender's device.
    Receipt {
        /// `delivered` or `read`.
        receipt: ReceiptKind,
        /// The messages.
        ids: Vec<String>,
    },
    /// A body type this version does not know (sent by a newer client): shown as an
    /// unsupported message, never an error. Never sent.
    #[serde(other)]
    Unsupported,
}

/// What a receipt says of the messages it lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    /// They reached a device of the sender's account.
    Delivered,
    /// The sender's account read them.
    Read,
}

impl Body {
    /// A plain text.
    pub fn text(text: impl Into<String>) -> Body {
        Body::Text { text: text.into(), reply_to: None, mentions: Vec::new() }
    }

    /// The lowest format version that reads this body: version 1 clients refuse a message
    /// whose version is above theirs, so what they can read is sent as version 1.
    pub fn version(&self) -> u8 {
        match self {
            // Version 1 readers ignore the fields they do not know: a reply reads as a text.
            Body::Text { .. }
            | Body::ChatInfo { kind: ChatKind::Direct | ChatKind::Group, .. }
            | Body::File { .. }
            | Body::Timer { .. } => 1,
            _ => VERSION,
        }
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Text { text, reply_to, .. } => {
                write!(f, "Text([{} bytes], reply: {})", text.len(), reply_to.is_some())
            }
            Body::Reaction { .. } => write!(f, "Reaction"),
            Body::Edit { text, .. } => write!(f, "Edit([{} bytes])", text.len()),
            Body::Delete { .. } => write!(f, "Delete"),
            Body::Receipt { receipt, ids } => write!(f, "Receipt({receipt:?}, {})", ids.len()),
            Body::Unsupported => write!(f, "Unsupported"),
            Body::ChatInfo { kind, .. } => write!(f, "ChatInfo({kind:?})"),
            Body::Timer { seconds } => write!(f, "Timer({seconds})"),
            Body::File { size, .. } => write!(f, "File([{size} bytes])"),
        }
    }
}

/// One application message's plaintext.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Format version, [`VERSION`].
    pub v: u8,
    /// Random id chosen by the sender (hex), unique per conversation.
    pub id: String,
    /// The sender's clock, milliseconds since the Unix epoch.
    pub sent_at: u64,
    /// Seconds after arrival at which every device deletes this message (disappearing
    /// messages); absent when the chat has no timer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
    /// The sending device's count of its messages in this chat (1, 2, 3…), so that recipients
    /// notice messages the server held back or reordered. Absent from older clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u64>,
    /// The newest key-directory root the sender was shown, when it has not told this chat
    /// about it yet. Absent from older clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<crate::kt::SeenRoot>,
    /// The content.
    #[serde(flatten)]
    pub body: Body,
}

impl Message {
    /// Encodes the message: JSON, padded with trailing spaces to [`padded_len`] of its length.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing these plain types into a Vec cannot fail.
        let mut json = serde_json::to_vec(self).unwrap_or_default();
        json.resize(padded_len(json.len()), b' ');
        json
    }

    /// Decodes and checks a message, padded or not (whitespace after the JSON value is
    /// skipped, whatever its length: the limits are on the fields, which padding leaves
    /// alone).
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        // serde's messages can quote the input; report only what kind of error and where.
        let msg: Message = serde_json::from_slice(bytes).map_err(|e| {
            Error::MalformedContent(format!("{:?} error at byte {}", e.classify(), e.column()))
        })?;
        // A newer version only adds: what this one knows of it still reads the same.
        if msg.v == 0 {
            return Err(Error::MalformedContent("unsupported version 0".into()));
        }
        if msg.id.is_empty() || msg.id.len() > 64 {
            return Err(Error::MalformedContent("bad message id".into()));
        }
        match &msg.body {
            Body::Text { text, .. } | Body::Edit { text, .. } if text.len() > MAX_TEXT_LEN => {
                Err(Error::MalformedContent("text too long".into()))
            }
            Body::Text { reply_to: Some(id), .. }
            | Body::Edit { target: id, .. }
            | Body::Delete { target: id }
            | Body::Reaction { target: id, .. }
                if !is_message_id(id) =>
            {
                Err(Error::MalformedContent("bad message reference".into()))
            }
            Body::Text { mentions, .. }
                if mentions.len() > MAX_MENTIONS || mentions.iter().any(|m| m.len() > 320) =>
            {
                Err(Error::MalformedContent("bad mentions".into()))
            }
            Body::Reaction { emoji, .. }
                if emoji.len() > MAX_EMOJI_LEN || emoji.chars().any(char::is_control) =>
            {
                Err(Error::MalformedContent("bad reaction".into()))
            }
            Body::Receipt { ids, .. }
                if ids.is_empty()
                    || ids.len() > MAX_RECEIPT_IDS
                    || !ids.iter().all(|id| is_message_id(id)) =>
            {
                Err(Error::MalformedContent("bad receipt".into()))
            }
            Body::ChatInfo { name: Some(n), .. } if n.len() > 256 => {
                Err(Error::MalformedContent("group name too long".into()))
            }
            Body::File { blob, key, nonce, sha256, name, media_type, size, .. }
                if blob.len() != 32
                    || key.len() != 64
                    || nonce.len() != 14
                    || sha256.len() != 64
                    || name.len() > 1024
                    || media_type.len() > 256
                    || *size > crate::attachment::MAX_FILE =>
            {
                Err(Error::MalformedContent("bad file reference".into()))
            }
            Body::Timer { seconds } if *seconds > MAX_TIMER_SECS => {
                Err(Error::MalformedContent("timer too long".into()))
            }
            _ if msg.expires_in.is_some_and(|e| e == 0 || e > MAX_TIMER_SECS) => {
                Err(Error::MalformedContent("bad expiry".into()))
            }
            _ => Ok(msg),
        }
    }
}

/// Whether `id` has the form of a message id: 128 random bits in lower-case hex.
pub fn is_message_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let m = Message {
            v: VERSION,
            id: "00ff".into(),
            sent_at: 5,
            expires_in: Some(60),
            n: Some(3),
            root: Some(crate::kt::SeenRoot {
                epoch: 9,
                hash: vec![1; 32],
                previous: vec![2; 32],
                time: 1_800_000_000,
                signature: vec![3; 64],
            }),
            body: Body::text("héllo"),
        };
        assert_eq!(Message::decode(&m.encode()).expect("decodes"), m);
        let info = Message {
            v: VERSION,
            id: "01".into(),
            sent_at: 5,
            expires_in: None,
            n: None,
            root: None,
            body: Body::ChatInfo { kind: ChatKind::Group, name: Some("team".into()) },
        };
        assert_eq!(Message::decode(&info.encode()).expect("decodes"), info);
        let secret = br#"{"v":1,"id":"a","sent_at":1,"type":"text","text":7,"x":"top secret"}"#;
        let err = Message::decode(secret).expect_err("text must be a string").to_string();
        assert!(!err.contains("secret") && !err.contains('7'), "{err}");
        assert!(!format!("{m:?}").contains("héllo"));
        let id = "0123456789abcdef0123456789abcdef";
        for bad in [
            &b"not json"[..],
            br#"{"v":0,"id":"a","sent_at":1,"type":"text","text":"x"}"#,
            br#"{"v":2,"id":"a","sent_at":1,"type":"text","text":"x","reply_to":"zz"}"#,
            br#"{"v":2,"id":"a","sent_at":1,"type":"reaction","target":"A123","emoji":"x"}"#,
            br#"{"v":2,"id":"a","sent_at":1,"type":"delete","target":""}"#,
            br#"{"v":2,"id":"a","sent_at":1,"type":"receipt","receipt":"read","ids":[]}"#,
            br#"{"v":2,"id":"a","sent_at":1,"type":"receipt","receipt":"seen","ids":["00"]}"#,
            br#"{"v":1,"id":"","sent_at":1,"type":"text","text":"x"}"#,
            br#"{"v":1,"id":"a","sent_at":1,"expires_in":0,"type":"text","text":"x"}"#,
            br#"{"v":1,"id":"a","sent_at":1,"type":"timer","seconds":99999999999}"#,
        ] {
            assert!(matches!(Message::decode(bad), Err(Error::MalformedContent(_))), "{bad:?}");
        }
        let bell = format!(
            r#"{{"v":2,"id":"a","sent_at":1,"type":"reaction","target":"{id}","emoji":"\u0007"}}"#
        );
        assert!(Message::decode(bell.as_bytes()).is_err());
        let many = vec![id.to_string(); MAX_RECEIPT_IDS + 1];
        let receipt = Body::Receipt { receipt: ReceiptKind::Delivered, ids: many };
        assert!(Message::decode(&Message { body: receipt, ..m.clone() }.encode()).is_err());
    }

    /// A message as a client sends it: a random id, a clock, a count.
    fn sent(body: Body) -> Message {
        Message {
            v: body.version(),
            id: "0123456789abcdef0123456789abcdef".into(),
            sent_at: 1_800_000_000_000,
            expires_in: None,
            n: Some(41),
            root: None,
            body,
        }
    }

    fn is_bucket(len: usize) -> bool {
        (len.is_power_of_two() && (MIN_PADDED_LEN..=MAX_PADDED_BUCKET).contains(&len))
            || (len > MAX_PADDED_BUCKET && len.is_multiple_of(MAX_PADDED_BUCKET))
    }

    #[test]
    fn messages_pad_to_few_sizes_and_unpadded_ones_still_read() {
        let id = "0123456789abcdef0123456789abcdef".to_string();
        let root = crate::kt::SeenRoot {
            epoch: 9,
            hash: vec![1; 32],
            previous: vec![2; 32],
            time: 1_800_000_000,
            signature: vec![3; 64],
        };
        let file = |padded| Body::File {
            blob: "00".repeat(16),
            key: "11".repeat(32),
            nonce: "22".repeat(7),
            size: 300_000,
            sha256: "33".repeat(32),
            name: "report.pdf".into(),
            media_type: "application/pdf".into(),
            padded,
        };
        let mut messages: Vec<Message> = [0, 1, 50, 200, 1000, 5000, 60_000, MAX_TEXT_LEN]
            .into_iter()
            .map(|n| sent(Body::text("é".repeat(n / 2))))
            .collect();
        messages.extend(
            [
                file(true),
                file(false),
                Body::Reaction { target: id.clone(), emoji: "👍".into() },
                Body::Receipt { receipt: ReceiptKind::Read, ids: vec![id.clone(); 500] },
                Body::Delete { target: id.clone() },
                Body::Timer { seconds: 3600 },
                Body::ChatInfo { kind: ChatKind::Group, name: Some("team".into()) },
            ]
            .map(sent),
        );
        messages.push(Message {
            root: Some(root.clone()),
            expires_in: Some(60),
            ..sent(file(true))
        });
        // Quotes and control characters: JSON escapes them, up to six bytes each.
        messages.push(sent(Body::text("\"\u{1}".repeat(MAX_TEXT_LEN / 2))));
        for m in &messages {
            let bytes = m.encode();
            let plain = serde_json::to_vec(m).expect("json");
            assert!(is_bucket(bytes.len()), "{} bytes", bytes.len());
            assert_eq!(bytes.len(), padded_len(plain.len()));
            assert_eq!(&bytes[..plain.len()], &plain[..], "the JSON, then spaces");
            assert!(bytes[plain.len()..].iter().all(|&b| b == b' '));
            assert_eq!(Message::decode(&bytes).expect("padded decodes"), *m);
            // What older clients sent, unpadded, reads the same.
            assert_eq!(Message::decode(&plain).expect("unpadded decodes"), *m);
        }
        // A short text and its envelope fit the smallest size, a file reference the next.
        assert_eq!(messages[2].encode().len(), MIN_PADDED_LEN);
        assert_eq!(sent(file(true)).encode().len(), 512);

        // A file from an older client has no `padded`: its blob is not padded.
        let old = br#"{"v":1,"id":"a","sent_at":1,"type":"file","blob":"00000000000000000000000000000000","key":"1111111111111111111111111111111111111111111111111111111111111111","nonce":"22222222222222","size":5,"sha256":"3333333333333333333333333333333333333333333333333333333333333333","name":"a","media_type":"text/plain"}"#;
        assert!(matches!(
            Message::decode(old).expect("decodes").body,
            Body::File { padded: false, .. }
        ));
        assert!(!String::from_utf8_lossy(&sent(file(false)).encode()).contains("padded"));

        // The largest message a client may send, every field at its limit and escaped to the
        // most bytes, still takes one of the 13 sizes and decodes.
        let worst = Message {
            v: VERSION,
            id: "f".repeat(64),
            sent_at: u64::MAX,
            expires_in: Some(MAX_TIMER_SECS),
            n: Some(u64::MAX),
            root: Some(root),
            body: Body::Text {
                text: "\u{1}".repeat(MAX_TEXT_LEN),
                reply_to: Some(id),
                mentions: vec!["\u{1}".repeat(320); MAX_MENTIONS],
            },
        };
        let bytes = worst.encode();
        assert_eq!(bytes.len(), 512 * 1024);
        assert_eq!(Message::decode(&bytes).expect("decodes"), worst);
        let sizes: std::collections::BTreeSet<usize> =
            (0..=bytes.len()).step_by(97).map(padded_len).collect();
        assert_eq!(sizes.len(), 13);
    }

    #[test]
    fn version_two_bodies_and_newer_kinds() {
        let id = "0123456789abcdef0123456789abcdef".to_string();
        let base = Message {
            v: VERSION,
            id: "01".into(),
            sent_at: 5,
            expires_in: None,
            n: None,
            root: None,
            body: Body::text("x"),
        };
        for body in [
            Body::Text {
                text: "re".into(),
                reply_to: Some(id.clone()),
                mentions: vec!["bob@example.org".into()],
            },
            Body::Reaction { target: id.clone(), emoji: "👍🏽".into() },
            Body::Reaction { target: id.clone(), emoji: String::new() },
            Body::Edit { target: id.clone(), text: "fixed".into() },
            Body::Delete { target: id.clone() },
            Body::Receipt { receipt: ReceiptKind::Read, ids: vec![id.clone()] },
            Body::ChatInfo { kind: ChatKind::Note, name: None },
        ] {
            let m = Message { v: body.version(), body, ..base.clone() };
            assert_eq!(Message::decode(&m.encode()).expect("decodes"), m);
        }
        // What a version 1 client can read is sent as version 1; a reply reads as its text.
        assert_eq!(Body::text("x").version(), 1);
        let reply = Body::Text { text: "r".into(), reply_to: Some(id.clone()), mentions: vec![] };
        assert_eq!(reply.version(), 1);
        assert_eq!(Body::Delete { target: id.clone() }.version(), 2);
        assert_eq!(Body::ChatInfo { kind: ChatKind::Note, name: None }.version(), 2);
        // A kind from a newer version is unsupported, not an error; so is a newer version
        // whose known parts read as before.
        let newer = br#"{"v":7,"id":"a","sent_at":1,"type":"poll","question":"?","x":[1]}"#;
        assert_eq!(Message::decode(newer).expect("decodes").body, Body::Unsupported);
        let newer = br#"{"v":3,"id":"a","sent_at":1,"type":"text","text":"hi","extra":1}"#;
        assert_eq!(Message::decode(newer).expect("decodes").body, Body::text("hi"));
        let edit = Body::Edit { target: id, text: "secret words".into() };
        assert!(!format!("{edit:?}").contains("secret"));
        // Ids are lower-case hex, as every client writes them (an upper-case twin would be a
        // second id for the same message).
        assert!(is_message_id("0123456789abcdef0123456789abcdef"));
        assert!(!is_message_id("0123456789ABCDEF0123456789abcdef"));
    }
}
