//! The plaintext carried inside MLS application messages.
//!
//! A message is a small JSON document with a format version, a random message id (used to
//! deduplicate), the sender's clock and a typed body. Unknown body types decode as an error
//! the client reports rather than a panic; new types are added, never changed.

use serde::{Deserialize, Serialize};

use crate::Error;

/// Current content format version.
pub const VERSION: u8 = 1;

/// Longest disappearing-message timer: a year.
pub const MAX_TIMER_SECS: u64 = 365 * 86_400;

/// Largest accepted text body, in bytes.
pub const MAX_TEXT_LEN: usize = 64 * 1024;

/// Whether a conversation is a 1:1 chat or a named group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatKind {
    /// Two accounts.
    Direct,
    /// A named group.
    Group,
}

impl ChatKind {
    /// The name used in the client's database and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            ChatKind::Direct => "direct",
            ChatKind::Group => "group",
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
    },
    /// Disappearing messages: every device deletes this chat's messages `seconds` after they
    /// arrive (0 turns it off).
    Timer {
        /// Seconds a message lives; 0 for off.
        seconds: u64,
    },
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Text { text } => write!(f, "Text([{} bytes])", text.len()),
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
    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing these plain types into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes and checks a message.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        // serde's messages can quote the input; report only what kind of error and where.
        let msg: Message = serde_json::from_slice(bytes).map_err(|e| {
            Error::MalformedContent(format!("{:?} error at byte {}", e.classify(), e.column()))
        })?;
        if msg.v != VERSION {
            return Err(Error::MalformedContent(format!("unsupported version {}", msg.v)));
        }
        if msg.id.is_empty() || msg.id.len() > 64 {
            return Err(Error::MalformedContent("bad message id".into()));
        }
        match &msg.body {
            Body::Text { text } if text.len() > MAX_TEXT_LEN => {
                Err(Error::MalformedContent("text too long".into()))
            }
            Body::ChatInfo { name: Some(n), .. } if n.len() > 256 => {
                Err(Error::MalformedContent("group name too long".into()))
            }
            Body::File { blob, key, nonce, sha256, name, media_type, size }
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
            body: Body::Text { text: "héllo".into() },
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
        for bad in [
            &b"not json"[..],
            br#"{"v":2,"id":"a","sent_at":1,"type":"text","text":"x"}"#,
            br#"{"v":1,"id":"a","sent_at":1,"type":"video"}"#,
            br#"{"v":1,"id":"","sent_at":1,"type":"text","text":"x"}"#,
            br#"{"v":1,"id":"a","sent_at":1,"expires_in":0,"type":"text","text":"x"}"#,
            br#"{"v":1,"id":"a","sent_at":1,"type":"timer","seconds":99999999999}"#,
        ] {
            assert!(matches!(Message::decode(bad), Err(Error::MalformedContent(_))));
        }
    }
}
