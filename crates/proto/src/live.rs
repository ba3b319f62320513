//! The live connection (`GET /v1/ws`) in its two versions, behind one pair of types.
//!
//! - **Version 1**, JSON text frames ([`ServerFrame`], [`ClientFrame`]): one queued message
//!   per frame, its bytes in base64. Every client and server speaks it.
//! - **Version 2**, binary frames, chosen when the client offers the WebSocket subprotocol
//!   [`PROTOCOL_V2`] and the server accepts it: the server sends a page of queued messages in
//!   one frame ([`Down::Messages`]), the client acknowledges a whole page with one cumulative
//!   [`Up::Ack`]. Nothing is base64-encoded or parsed as JSON on the hot path. Errors, which
//!   are rare, stay JSON inside their frame.
//!
//! A later version is a new subprotocol name: the server accepts the newest both sides know,
//! and an older peer keeps working on what it offered.
//!
//! Catching up over HTTP (`GET /v1/queue`) uses the same message layout: a client that sends
//! `Accept:` [`PAGE_MEDIA_TYPE`] gets the page in binary ([`QueueResponse::to_binary`]), with
//! that media type as its `Content-Type`; any other client gets JSON, with base64 bodies.
//!
//! Binary layout (integers big-endian):
//!
//! ```text
//! server → client
//!   0x01 (seq u64, at u64, len u32, message[len])+   queued messages, seq increasing; at 0 = unknown
//!   0x02 up_to u64, removed u64                      an acknowledgement was applied
//!   0x03 ErrorBody as JSON                           refused; the connection closes
//!   0x04 more u8 (seq u64, at u64, len u32, message[len])*
//!                                                    a page of GET /v1/queue; more is 0 or 1
//! client → server
//!   0x01 up_to u64                                   everything up to and including up_to is done
//! ```
//!
//! ```
//! use sotto_proto::live::{Down, Up};
//! use sotto_proto::{AckRequest, Bytes, QueuedMessage};
//! let page = Down::Messages(vec![
//!     QueuedMessage { seq: 7, message: Bytes(vec![1, 2]), at: Some(60) },
//!     QueuedMessage { seq: 9, message: Bytes(vec![3]), at: None },
//! ]);
//! let bytes = page.to_binary();
//! assert_eq!(Down::from_binary(&bytes).unwrap(), page);
//! let ack = Up::Ack(AckRequest { up_to: 9 });
//! assert_eq!(Up::from_binary(&ack.to_binary()).unwrap(), ack);
//! ```

use std::fmt;

use crate::{
    AckRequest, AckResponse, Bytes, ClientFrame, ErrorBody, QueueResponse, QueuedMessage,
    ServerFrame,
};

/// The WebSocket subprotocol of version 2 (binary frames, batched deliveries).
pub const PROTOCOL_V2: &str = "sotto.2";
/// The media type of a binary page of `GET /v1/queue` (see [`QueueResponse::to_binary`]).
pub const PAGE_MEDIA_TYPE: &str = "application/vnd.sotto.page.2";

const MESSAGES: u8 = 0x01;
const ACKED: u8 = 0x02;
const ERROR: u8 = 0x03;
const PAGE: u8 = 0x04;
const ACK: u8 = 0x01;
/// Bytes before each message's own in a [`Down::Messages`] frame.
const ENTRY_HEADER: usize = 8 + 8 + 4;

/// The encoding a live connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// JSON text frames, one message per frame.
    V1,
    /// Binary frames, batched.
    V2,
}

impl Version {
    /// The version a connection speaks, from the subprotocol its handshake settled on.
    pub fn from_protocol(protocol: Option<&[u8]>) -> Version {
        match protocol {
            Some(p) if p == PROTOCOL_V2.as_bytes() => Version::V2,
            _ => Version::V1,
        }
    }
}

/// What the server sends on a live connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Down {
    /// Queued messages, oldest first; they stay queued until acknowledged. Version 1 carries
    /// one per frame.
    Messages(Vec<QueuedMessage>),
    /// An acknowledgement was applied.
    Acked(AckResponse),
    /// The request was refused; the connection closes.
    Error(ErrorBody),
}

/// What a client sends on a live connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Up {
    /// Everything up to and including `up_to` is processed.
    Ack(AckRequest),
}

/// A frame that is not what the protocol allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The frame ends inside a field.
    Truncated,
    /// The first byte names no frame of this version.
    UnknownKind(u8),
    /// Bytes follow the last field.
    TrailingBytes,
    /// A page holds no message.
    EmptyPage,
    /// A page's "more" flag is neither 0 nor 1.
    BadFlag(u8),
    /// A page's sequence numbers do not increase.
    OutOfOrder {
        /// The offending number.
        seq: u64,
        /// The one before it.
        after: u64,
    },
    /// A JSON frame (version 1, or an error's body) does not parse.
    Json(String),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Truncated => f.write_str("frame ends inside a field"),
            FrameError::UnknownKind(k) => write!(f, "unknown frame kind {k:#04x}"),
            FrameError::TrailingBytes => f.write_str("bytes after the frame's last field"),
            FrameError::EmptyPage => f.write_str("a page of messages holds none"),
            FrameError::BadFlag(b) => write!(f, "a page's \"more\" flag is {b}, not 0 or 1"),
            FrameError::OutOfOrder { seq, after } => {
                write!(f, "message {seq} follows {after}: sequence numbers must increase")
            }
            FrameError::Json(e) => write!(f, "malformed JSON frame: {e}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Reads fields off the front of a frame.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.0.len() < n {
            return Err(FrameError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        let b = self.take(8)?;
        Ok(u64::from_be_bytes(b.try_into().map_err(|_| FrameError::Truncated)?))
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes(b.try_into().map_err(|_| FrameError::Truncated)?))
    }

    fn end(&self) -> Result<(), FrameError> {
        if self.0.is_empty() { Ok(()) } else { Err(FrameError::TrailingBytes) }
    }

    /// Queued messages up to the end, each `(seq u64, at u64, len u32, message[len])`, seq
    /// increasing; maybe none.
    fn messages(&mut self) -> Result<Vec<QueuedMessage>, FrameError> {
        let mut messages: Vec<QueuedMessage> = Vec::new();
        while !self.0.is_empty() {
            let seq = self.u64()?;
            let at = self.u64()?;
            let len = self.u32()? as usize;
            let message = self.take(len)?.to_vec();
            if let Some(last) = messages.last()
                && seq <= last.seq
            {
                return Err(FrameError::OutOfOrder { seq, after: last.seq });
            }
            let at = (at != 0).then_some(at);
            messages.push(QueuedMessage { seq, message: Bytes(message), at });
        }
        Ok(messages)
    }
}

impl Down {
    /// The version 2 (binary) frame.
    pub fn to_binary(&self) -> Vec<u8> {
        match self {
            Down::Messages(messages) => {
                let size: usize = messages.iter().map(|m| ENTRY_HEADER + m.message.0.len()).sum();
                let mut out = Vec::with_capacity(1 + size);
                out.push(MESSAGES);
                for m in messages {
                    put_message(&mut out, m.seq, m.at.unwrap_or(0), &m.message.0);
                }
                out
            }
            Down::Acked(a) => {
                let mut out = Vec::with_capacity(17);
                out.push(ACKED);
                out.extend_from_slice(&a.up_to.to_be_bytes());
                out.extend_from_slice(&a.removed.to_be_bytes());
                out
            }
            Down::Error(e) => {
                let mut out = vec![ERROR];
                out.extend_from_slice(&serde_json::to_vec(e).unwrap_or_default());
                out
            }
        }
    }

    /// Reads a version 2 (binary) frame.
    pub fn from_binary(frame: &[u8]) -> Result<Down, FrameError> {
        let mut r = Reader(frame);
        let kind = r.take(1)?[0];
        match kind {
            MESSAGES => {
                let messages = r.messages()?;
                if messages.is_empty() {
                    return Err(FrameError::EmptyPage);
                }
                Ok(Down::Messages(messages))
            }
            ACKED => {
                let up_to = r.u64()?;
                let removed = r.u64()?;
                r.end()?;
                Ok(Down::Acked(AckResponse { up_to, removed }))
            }
            ERROR => serde_json::from_slice(r.0)
                .map(Down::Error)
                .map_err(|e| FrameError::Json(e.to_string())),
            other => Err(FrameError::UnknownKind(other)),
        }
    }

    /// Reads a version 1 (JSON) frame.
    pub fn from_text(frame: &str) -> Result<Down, FrameError> {
        match serde_json::from_str::<ServerFrame>(frame) {
            Ok(ServerFrame::Message(m)) => Ok(Down::Messages(vec![m])),
            Ok(ServerFrame::Acked(a)) => Ok(Down::Acked(a)),
            Ok(ServerFrame::Error(e)) => Ok(Down::Error(e)),
            Err(e) => Err(FrameError::Json(e.to_string())),
        }
    }
}

impl QueueResponse {
    /// Checks what a page in either form must hold: sequence numbers that increase. (The
    /// binary form is checked as it is read; a JSON page can be checked with this.)
    pub fn check_order(&self) -> Result<(), FrameError> {
        for pair in self.messages.windows(2) {
            if pair[1].seq <= pair[0].seq {
                return Err(FrameError::OutOfOrder { seq: pair[1].seq, after: pair[0].seq });
            }
        }
        Ok(())
    }

    /// The binary page ([`PAGE_MEDIA_TYPE`]).
    pub fn to_binary(&self) -> Vec<u8> {
        let size: usize = self.messages.iter().map(|m| m.message.0.len()).sum();
        let mut out = queue_page(self.more, self.messages.len(), size);
        for m in &self.messages {
            put_message(&mut out, m.seq, m.at.unwrap_or(0), &m.message.0);
        }
        out
    }

    /// Reads a binary page ([`PAGE_MEDIA_TYPE`]).
    pub fn from_binary(page: &[u8]) -> Result<QueueResponse, FrameError> {
        let mut r = Reader(page);
        match r.take(1)?[0] {
            PAGE => {}
            other => return Err(FrameError::UnknownKind(other)),
        }
        let more = match r.take(1)?[0] {
            0 => false,
            1 => true,
            other => return Err(FrameError::BadFlag(other)),
        };
        Ok(QueueResponse { messages: r.messages()?, more })
    }
}

/// The start of a binary page of `GET /v1/queue` with room for `count` messages of `bytes`
/// in all, as [`messages_frame`]; add each with [`put_message`].
pub fn queue_page(more: bool, count: usize, bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + count * ENTRY_HEADER + bytes);
    out.push(PAGE);
    out.push(u8::from(more));
    out
}

/// Appends one message of a [`Down::Messages`] frame or a [`queue_page`] to `out`: for a
/// server that writes pages straight from its store.
pub fn put_message(out: &mut Vec<u8>, seq: u64, at: u64, message: &[u8]) {
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&at.to_be_bytes());
    // A queued message is far below 4 GiB: the server's body limit is megabytes.
    out.extend_from_slice(&u32::try_from(message.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(message);
}

/// The start of a [`Down::Messages`] frame with room for `bytes` of messages; add each with
/// [`put_message`].
pub fn messages_frame(count: usize, bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + count * ENTRY_HEADER + bytes);
    out.push(MESSAGES);
    out
}

impl Up {
    /// The version 2 (binary) frame.
    pub fn to_binary(&self) -> Vec<u8> {
        match self {
            Up::Ack(a) => {
                let mut out = Vec::with_capacity(9);
                out.push(ACK);
                out.extend_from_slice(&a.up_to.to_be_bytes());
                out
            }
        }
    }

    /// The version 1 (JSON) frame.
    pub fn to_text(&self) -> String {
        match self {
            Up::Ack(a) => serde_json::to_string(&ClientFrame::Ack(a.clone())).unwrap_or_default(),
        }
    }

    /// Reads a version 2 (binary) frame.
    pub fn from_binary(frame: &[u8]) -> Result<Up, FrameError> {
        let mut r = Reader(frame);
        match r.take(1)?[0] {
            ACK => {
                let up_to = r.u64()?;
                r.end()?;
                Ok(Up::Ack(AckRequest { up_to }))
            }
            other => Err(FrameError::UnknownKind(other)),
        }
    }

    /// Reads a version 1 (JSON) frame.
    pub fn from_text(frame: &str) -> Result<Up, FrameError> {
        match serde_json::from_str::<ClientFrame>(frame) {
            Ok(ClientFrame::Ack(a)) => Ok(Up::Ack(a)),
            Err(e) => Err(FrameError::Json(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorCode, ErrorDetail};

    fn message(seq: u64, len: usize) -> QueuedMessage {
        QueuedMessage { seq, message: Bytes(vec![seq as u8; len]), at: Some(1_700_000_000) }
    }

    #[test]
    fn frames_round_trip() {
        let frames = [
            Down::Messages(vec![message(1, 0), message(2, 300), message(40, 1)]),
            Down::Acked(AckResponse { up_to: 40, removed: 3 }),
            Down::Error(ErrorBody {
                error: ErrorDetail {
                    code: ErrorCode::DeviceRevoked,
                    message: "revoked".into(),
                    epoch: None,
                },
            }),
        ];
        for frame in frames {
            assert_eq!(Down::from_binary(&frame.to_binary()), Ok(frame));
        }
        let ack = Up::Ack(AckRequest { up_to: u64::MAX });
        assert_eq!(Up::from_binary(&ack.to_binary()), Ok(ack.clone()));
        assert_eq!(Up::from_text(&ack.to_text()), Ok(ack));
    }

    #[test]
    fn pages_written_piecewise_read_as_a_whole() {
        let mut frame = messages_frame(2, 5);
        put_message(&mut frame, 3, 10, b"abc");
        put_message(&mut frame, 4, 0, b"de");
        let Ok(Down::Messages(m)) = Down::from_binary(&frame) else { panic!("not a page") };
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].seq, m[0].at, &m[0].message.0[..]), (3, Some(10), &b"abc"[..]));
        assert_eq!((m[1].seq, m[1].at, &m[1].message.0[..]), (4, None, &b"de"[..]));
    }

    #[test]
    fn malformed_frames_are_named() {
        let page = Down::Messages(vec![message(5, 4), message(6, 4)]).to_binary();
        assert_eq!(Down::from_binary(&[]), Err(FrameError::Truncated));
        assert_eq!(Down::from_binary(&[0x09]), Err(FrameError::UnknownKind(0x09)));
        assert_eq!(Down::from_binary(&[MESSAGES]), Err(FrameError::EmptyPage));
        for cut in 2..page.len() {
            if cut == 1 + ENTRY_HEADER + 4 {
                continue; // a whole first message: a valid page of one
            }
            assert_eq!(Down::from_binary(&page[..cut]), Err(FrameError::Truncated), "cut {cut}");
        }
        let backwards = Down::Messages(vec![message(6, 1), message(6, 1)]).to_binary();
        assert_eq!(Down::from_binary(&backwards), Err(FrameError::OutOfOrder { seq: 6, after: 6 }));
        // A length far past the frame's end is refused before anything is allocated for it.
        let mut huge = vec![MESSAGES];
        put_message(&mut huge, 1, 0, b"");
        huge[17..21].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(Down::from_binary(&huge), Err(FrameError::Truncated));
        let mut acked = Down::Acked(AckResponse { up_to: 1, removed: 1 }).to_binary();
        acked.push(0);
        assert_eq!(Down::from_binary(&acked), Err(FrameError::TrailingBytes));
        assert!(matches!(Down::from_binary(&[ERROR, b'{']), Err(FrameError::Json(_))));
        assert_eq!(Up::from_binary(&[ACK, 0, 0]), Err(FrameError::Truncated));
        assert_eq!(Up::from_binary(&[0x02; 9]), Err(FrameError::UnknownKind(0x02)));
        assert!(matches!(Up::from_text("{\"type\":\"nack\"}"), Err(FrameError::Json(_))));
    }

    #[test]
    fn queue_pages_round_trip_and_refuse_what_is_malformed() {
        for page in [
            QueueResponse { messages: vec![], more: false },
            QueueResponse { messages: vec![message(1, 0), message(9, 700)], more: true },
        ] {
            assert_eq!(QueueResponse::from_binary(&page.to_binary()), Ok(page));
        }
        let page = QueueResponse { messages: vec![message(5, 4)], more: false }.to_binary();
        assert_eq!(&page[..2], &[PAGE, 0]);
        assert_eq!(QueueResponse::from_binary(&[]), Err(FrameError::Truncated));
        assert_eq!(QueueResponse::from_binary(&[PAGE]), Err(FrameError::Truncated));
        assert_eq!(QueueResponse::from_binary(&[PAGE, 2]), Err(FrameError::BadFlag(2)));
        assert_eq!(QueueResponse::from_binary(&[MESSAGES, 0]), Err(FrameError::UnknownKind(1)));
        // A JSON answer (a server that does not know the binary page) is not read as one.
        assert_eq!(QueueResponse::from_binary(b"{}"), Err(FrameError::UnknownKind(b'{')));
        for cut in 3..page.len() {
            assert_eq!(QueueResponse::from_binary(&page[..cut]), Err(FrameError::Truncated));
        }
        let backwards = QueueResponse { messages: vec![message(6, 1), message(2, 1)], more: true };
        assert_eq!(
            QueueResponse::from_binary(&backwards.to_binary()),
            Err(FrameError::OutOfOrder { seq: 2, after: 6 })
        );
        assert_eq!(backwards.check_order(), Err(FrameError::OutOfOrder { seq: 2, after: 6 }));
        let forwards = QueueResponse { messages: vec![message(2, 1), message(6, 1)], more: true };
        assert_eq!(forwards.check_order(), Ok(()));
    }

    #[test]
    fn version_one_frames_read_as_pages_of_one() {
        let text = serde_json::to_string(&ServerFrame::Message(message(8, 2))).expect("json");
        assert_eq!(Down::from_text(&text), Ok(Down::Messages(vec![message(8, 2)])));
        assert_eq!(Version::from_protocol(Some(b"sotto.2")), Version::V2);
        assert_eq!(Version::from_protocol(Some(b"sotto.3")), Version::V1);
        assert_eq!(Version::from_protocol(None), Version::V1);
    }
}
