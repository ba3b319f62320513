//! Attachments: a file is encrypted with a fresh random key by the STREAM construction
//! (ChaCha20-Poly1305 in 64 KiB chunks, each authenticated with its position and whether it
//! is the last), so it can be encrypted, uploaded, downloaded and checked in constant memory,
//! and a transfer can resume at any chunk. The key travels inside the MLS message; the server
//! stores only the ciphertext under a random id.
//!
//! ```
//! use sotto_core::attachment::{FileKey, CHUNK, encrypted_len};
//! let key = FileKey::generate().unwrap();
//! let chunks = [vec![1u8; CHUNK], vec![2u8; 10]];
//! let sealed: Vec<Vec<u8>> =
//!     chunks.iter().enumerate().map(|(i, c)| key.seal(i as u32, i == 1, c).unwrap()).collect();
//! assert_eq!(sealed.iter().map(Vec::len).sum::<usize>() as u64, encrypted_len(CHUNK as u64 + 10));
//! assert_eq!(key.open(1, true, &sealed[1]).unwrap().as_slice(), &chunks[1][..]);
//! assert!(key.open(1, false, &sealed[1]).is_err(), "the last chunk cannot pass for another");
//! ```

use std::fmt;

use chacha20poly1305::aead::KeyInit;
use chacha20poly1305::aead::stream::{NewStream, StreamBE32, StreamPrimitive};
use chacha20poly1305::{ChaCha20Poly1305, Key};
use zeroize::Zeroizing;

use crate::{Error, random_bytes};

/// Plaintext bytes per chunk.
pub const CHUNK: usize = 64 * 1024;
/// The authentication tag added to each chunk.
pub const TAG: usize = 16;
/// Bytes per encrypted chunk (the last may be shorter).
pub const SEALED_CHUNK: usize = CHUNK + TAG;
/// Largest file (4 GiB).
pub const MAX_FILE: u64 = 4 << 30;

/// How many chunks a file of `size` bytes has (an empty file has one, empty).
pub fn chunks(size: u64) -> u64 {
    size.div_ceil(CHUNK as u64).max(1)
}

/// The encrypted size of a file of `size` bytes.
pub fn encrypted_len(size: u64) -> u64 {
    size + chunks(size) * TAG as u64
}

/// Why a chunk did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chunk {0} does not authenticate: the file was tampered with or damaged")]
pub struct Tampered(pub u32);

/// A file's key and nonce prefix. `Debug` shows neither.
#[derive(Clone)]
pub struct FileKey {
    key: Zeroizing<[u8; 32]>,
    nonce: [u8; 7],
}

impl fmt::Debug for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FileKey([redacted])")
    }
}

impl FileKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, Error> {
        let key = random_bytes(32)?;
        let nonce = random_bytes(7)?;
        Self::from_parts(&key, &nonce)
    }

    /// A key from its parts (as carried in a message).
    pub fn from_parts(key: &[u8], nonce: &[u8]) -> Result<Self, Error> {
        let key: [u8; 32] =
            key.try_into().map_err(|_| Error::Invalid("a file key is 32 bytes".into()))?;
        let nonce: [u8; 7] =
            nonce.try_into().map_err(|_| Error::Invalid("a file nonce is 7 bytes".into()))?;
        Ok(FileKey { key: Zeroizing::new(key), nonce })
    }

    /// The key (secret).
    pub fn key(&self) -> &[u8] {
        self.key.as_ref()
    }

    /// The nonce prefix.
    pub fn nonce(&self) -> &[u8] {
        &self.nonce
    }

    fn stream(&self) -> StreamBE32<ChaCha20Poly1305> {
        let aead = ChaCha20Poly1305::new(Key::from_slice(self.key.as_ref()));
        StreamBE32::from_aead(aead, (&self.nonce).into())
    }

    /// Encrypts chunk number `position` (`last` for the final one).
    pub fn seal(&self, position: u32, last: bool, plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        self.stream()
            .encrypt(position, last, plaintext)
            .map_err(|_| Error::Internal("chunk encryption failed"))
    }

    /// Decrypts and authenticates chunk number `position`.
    pub fn open(
        &self,
        position: u32,
        last: bool,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, Tampered> {
        self.stream()
            .decrypt(position, last, ciphertext)
            .map(Zeroizing::new)
            .map_err(|_| Tampered(position))
    }
}

/// A file name safe to create in a directory: no path, no leading dot, no control
/// characters, at most 200 bytes; `file` if nothing is left.
pub fn safe_file_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    // Control characters, and the invisible marks that reorder or hide text (a name ending
    // in U+202E `…txt.exe` shows as `…exe.txt`).
    let hidden = |c: &char| {
        c.is_control()
            || matches!(*c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
    };
    let mut clean: String =
        base.chars().filter(|c| !hidden(c)).collect::<String>().trim_start_matches('.').into();
    while clean.len() > 200 {
        clean.pop();
    }
    if clean.trim().is_empty() { "file".into() } else { clean }
}

#[cfg(test)]
mod name_tests {
    #[test]
    fn hidden_marks_leave_file_names() {
        assert_eq!(super::safe_file_name("x\u{202e}txt.exe"), "xtxt.exe");
        assert_eq!(super::safe_file_name("../a\u{200b}b\u{2066}.pdf"), "ab.pdf");
    }
}

/// A media type from a file name's extension (`application/octet-stream` if unknown).
pub fn media_type(name: &str) -> &'static str {
    let ext = name.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "txt" => "text/plain",
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "mp4" => "video/mp4",
        "mp3" => "audio/mpeg",
        "zip" => "application/zip",
        "json" => "application/json",
        "html" | "htm" => "text/html",
        "csv" => "text/csv",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_open_only_in_place_and_untampered() {
        let key = FileKey::generate().expect("key");
        let a = key.seal(0, false, b"first").expect("seal");
        let b = key.seal(1, true, b"second").expect("seal");
        assert_eq!(key.open(0, false, &a).expect("open").as_slice(), b"first");
        assert_eq!(key.open(1, true, &b).expect("open").as_slice(), b"second");
        assert_eq!(key.open(1, true, &a), Err(Tampered(1)), "chunks cannot be reordered");
        assert_eq!(key.open(0, true, &a), Err(Tampered(0)), "a stream cannot end early");
        let mut bad = b.clone();
        bad[2] ^= 1;
        assert_eq!(key.open(1, true, &bad), Err(Tampered(1)));
        let other = FileKey::generate().expect("key");
        assert!(other.open(0, false, &a).is_err());
        assert!(!format!("{key:?}").contains(&hex::encode(key.key())));
    }

    #[test]
    fn sizes_and_names() {
        assert_eq!(chunks(0), 1);
        assert_eq!(encrypted_len(0), TAG as u64);
        assert_eq!(chunks(CHUNK as u64), 1);
        assert_eq!(chunks(CHUNK as u64 + 1), 2);
        assert_eq!(safe_file_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_file_name(".bashrc"), "bashrc");
        assert_eq!(safe_file_name("a\\b\u{7}c.txt"), "bc.txt");
        assert_eq!(safe_file_name(".."), "file");
        assert_eq!(media_type("Report.PDF"), "application/pdf");
    }
}
