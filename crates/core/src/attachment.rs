//! Attachments: a file is encrypted with a fresh random key by the STREAM construction
//! (ChaCha20-Poly1305 in 64 KiB chunks, each authenticated with its position and whether it
//! is the last), so it can be encrypted, uploaded, downloaded and checked in constant memory,
//! and a transfer can resume at any chunk. The key travels inside the MLS message; the server
//! stores only the ciphertext under a random id.
//!
//! Before encryption a file is padded with zero bytes to [`padme`] of its size, so that the
//! blob's size tells the server little more than the order of magnitude of the file's (at
//! most 12 % more bytes; under 3.2 % from 64 KiB up). [`Layout`] says where the file's bytes
//! and the padding lie in the chunks; the true size travels inside the MLS message, and the
//! receiver checks that the padding is zero and cuts it off. Files from clients before
//! padding have none: their message says so (see [`crate::content::Body::File`]).
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

/// Padmé, the padded length of `len` bytes (Nikitin et al., "Reducing Metadata Leakage from
/// Encrypted Files and Communication with PURBs", PETS 2019): with E = ⌊log2 len⌋ and
/// S = ⌊log2 E⌋ + 1, the last E − S bits of the length are rounded up to zero. A padded
/// length is then a floating-point number with an S-bit mantissa, so it reveals O(log log len)
/// bits of the length, and the overhead stays below 2^−S: at most 11.7 % (at 129 bytes),
/// under 6.25 % from 256 bytes, under 3.2 % from 64 KiB, under 1.6 % from 4 GiB.
///
/// Lengths below 9 are their own padding, a padded length pads to itself, and the result
/// saturates at `u64::MAX` (far beyond any file).
///
/// ```
/// use sotto_core::attachment::padme;
/// assert_eq!(padme(300_000), 303_104); // a multiple of 2^13: 1 % more
/// assert_eq!(padme(1 << 20), 1 << 20); // powers of two stay as they are
/// assert_eq!(padme(padme(123_456_789)), padme(123_456_789));
/// ```
pub fn padme(len: u64) -> u64 {
    if len < 2 {
        return len;
    }
    // E = ⌊log2 len⌋ ≥ 1, S = ⌊log2 E⌋ + 1 ≤ E.
    let e = u64::BITS - 1 - len.leading_zeros();
    let s = u32::BITS - e.leading_zeros();
    let mask = (1u64 << (e - s)) - 1;
    len.checked_add(mask).map_or(u64::MAX, |l| l & !mask)
}

/// Where a file's bytes lie in its blob: the file, then zero bytes up to [`padme`] of its
/// size (none in files from clients before padding), sealed in [`CHUNK`]-byte chunks.
/// Chunk boundaries fall at the same plaintext offsets whatever the padding, so a transfer
/// resumes at a chunk as before.
///
/// ```
/// use sotto_core::attachment::{CHUNK, Layout, encrypted_len, padme};
/// let size = 3 * CHUNK as u64 + 1000;
/// let layout = Layout::new(size, true);
/// assert_eq!(layout.padded_len(), padme(size));
/// assert_eq!(layout.sealed_len(), encrypted_len(padme(size)));
/// assert_eq!(layout.data_len(3), 1000); // the file ends in chunk 3...
/// assert_eq!(layout.chunk_len(3), (padme(size) - 3 * CHUNK as u64) as usize); // ...then zeros
/// assert_eq!(Layout::new(size, false).sealed_len(), encrypted_len(size)); // older clients
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    size: u64,
    padded: u64,
}

impl Layout {
    /// The layout of a file of `size` bytes: padded to [`padme`]`(size)` when `padded` (every
    /// file this version sends), else exactly `size` bytes (files from older clients).
    pub fn new(size: u64, padded: bool) -> Layout {
        Layout { size, padded: if padded { padme(size) } else { size } }
    }

    /// The file's own size.
    pub fn size(self) -> u64 {
        self.size
    }

    /// The plaintext the blob holds: the file and its padding.
    pub fn padded_len(self) -> u64 {
        self.padded
    }

    /// How many chunks the blob has.
    pub fn chunks(self) -> u64 {
        chunks(self.padded)
    }

    /// The blob's size on the server.
    pub fn sealed_len(self) -> u64 {
        encrypted_len(self.padded)
    }

    /// Whether chunk `chunk` is the last (sealed as such, so the stream cannot end early).
    pub fn is_last(self, chunk: u64) -> bool {
        chunk.checked_add(1) == Some(self.chunks())
    }

    /// Plaintext bytes in chunk `chunk`, file and padding: [`CHUNK`], fewer in the last, none
    /// past the end.
    pub fn chunk_len(self, chunk: u64) -> usize {
        Self::part(self.padded, chunk)
    }

    /// The file's bytes in chunk `chunk`; the rest of the chunk is padding.
    pub fn data_len(self, chunk: u64) -> usize {
        Self::part(self.size, chunk)
    }

    fn part(len: u64, chunk: u64) -> usize {
        let left = len.saturating_sub(chunk.saturating_mul(CHUNK as u64));
        // At most CHUNK, so the conversion cannot truncate.
        left.min(CHUNK as u64) as usize
    }

    /// The file's bytes in chunk `chunk`'s plaintext (as [`FileKey::open`] returned it), once
    /// its length is checked and its padding found to be all zeros.
    pub fn unpad(self, chunk: u64, plaintext: &[u8]) -> Result<&[u8], BadPadding> {
        if chunk >= self.chunks() || plaintext.len() != self.chunk_len(chunk) {
            return Err(BadPadding { chunk, what: "has a length its announced size rules out" });
        }
        let (data, padding) = plaintext.split_at(self.data_len(chunk));
        if padding.iter().any(|&b| b != 0) {
            return Err(BadPadding { chunk, what: "holds padding that is not zero" });
        }
        Ok(data)
    }

    /// Progress in the file's bytes once `done` chunks are through: the padding is spread
    /// over the whole, so progress moves steadily and reaches `size` with the last chunk.
    pub fn progress(self, done: u64) -> u64 {
        let through = done.saturating_mul(CHUNK as u64).min(self.padded);
        if self.padded == 0 {
            return self.size;
        }
        // through ≤ padded, so the quotient is at most size and fits.
        (u128::from(through) * u128::from(self.size) / u128::from(self.padded)) as u64
    }
}

/// A chunk that authenticated but is not laid out as its file's announced size says: its
/// sender did not follow the format (a damaged file does not authenticate at all).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chunk {chunk} of the file {what}: the file is not what its sender announced")]
pub struct BadPadding {
    /// The chunk.
    pub chunk: u64,
    /// What is wrong with it.
    pub what: &'static str,
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

    /// Lengths to check properties on: every one up to 70 000, then the edges of every octave
    /// and pseudo-random ones up to beyond the largest file.
    fn lengths() -> impl Iterator<Item = u64> {
        let edges = (1..64).flat_map(|e| {
            let p = 1u64 << e;
            [p - 1, p, p + 1, p + p / 3]
        });
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let random = std::iter::repeat_with(move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x >> (x % 40)
        });
        (0..70_000).chain(edges).chain(random.take(100_000))
    }

    #[test]
    fn padme_pads_little_and_to_few_sizes() {
        for len in lengths() {
            let p = padme(len);
            assert!(p >= len, "{len}");
            assert_eq!(padme(p), p, "idempotent at {len}");
            // At most 12 % more (11.7 % at worst, at 129 bytes), 6.25 % from 256 bytes on.
            if p < u64::MAX {
                let extra = u128::from(p - len);
                assert!(extra * 100 <= u128::from(len) * 12, "{len} -> {p}");
                if len >= 256 {
                    assert!(extra * 16 < u128::from(len), "{len} -> {p}");
                }
                if len >= 1 << 16 {
                    assert!(extra * 32 < u128::from(len), "{len} -> {p}");
                }
            }
        }
        // Worked examples, and the edges.
        assert_eq!((0..=8).map(padme).collect::<Vec<_>>(), (0..=8).collect::<Vec<_>>());
        assert_eq!(padme(9), 10);
        assert_eq!(padme(129), 144);
        assert_eq!(padme(1000), 1024); // E = 9, S = 4: a multiple of 32
        assert_eq!(padme(1100), 1152); // E = 10, S = 4: a multiple of 64
        assert_eq!(padme(1 << 30), 1 << 30);
        assert_eq!(padme((1 << 30) + 1), (1 << 30) + (1 << 25));
        assert_eq!(padme(MAX_FILE), MAX_FILE);
        assert_eq!(padme(u64::MAX), u64::MAX);
        // Padding never takes a file past the largest blob the server accepts.
        assert!(padme(MAX_FILE - 1) <= MAX_FILE);
        // Few sizes: the lengths of an octave [2^E, 2^(E+1)) pad to 2^S multiples of 2^(E−S)
        // (32 multiples of 2 KiB from 64 KiB), the last ones to the next octave's first.
        let sizes: std::collections::BTreeSet<u64> =
            (1u64 << 16..1 << 17).step_by(7).map(padme).collect();
        let expected: std::collections::BTreeSet<u64> = (32..=64).map(|m| m * (1 << 11)).collect();
        assert_eq!(sizes, expected);
    }

    #[test]
    fn layouts_put_the_file_then_zeros_in_chunks() {
        let c = CHUNK as u64;
        for (size, padded) in [(0, true), (0, false), (1, true), (c, true), (2 * c + 1, true)]
            .into_iter()
            .chain([(5 * c + 1000, true), (5 * c + 1000, false), ((1 << 30) + 1, true)])
        {
            let l = Layout::new(size, padded);
            assert_eq!(l.size(), size);
            assert_eq!(l.padded_len(), if padded { padme(size) } else { size });
            assert_eq!(l.sealed_len(), encrypted_len(l.padded_len()));
            let n = l.chunks();
            assert!(l.is_last(n - 1) && !l.is_last(n) && (n == 1 || !l.is_last(n - 2)));
            let plain: u64 = (0..n).map(|i| l.chunk_len(i) as u64).sum();
            let data: u64 = (0..n).map(|i| l.data_len(i) as u64).sum();
            assert_eq!((plain, data), (l.padded_len(), size), "{size}");
            assert!((0..n).all(|i| l.data_len(i) <= l.chunk_len(i)));
            assert!((0..n - 1).all(|i| l.chunk_len(i) == CHUNK), "only the last is short");
            let sealed: u64 = (0..n).map(|i| (l.chunk_len(i) + TAG) as u64).sum();
            assert_eq!(sealed, l.sealed_len());
            assert_eq!((l.chunk_len(n), l.data_len(n)), (0, 0));
            assert_eq!((l.progress(0), l.progress(n), l.progress(u64::MAX)), (0, size, size));
            assert!((0..n).all(|i| l.progress(i) <= l.progress(i + 1)));
        }
        // Unpadding: the file's bytes back, after the zeros are checked.
        let l = Layout::new(5 * c + 1000, true);
        let mut last = vec![0u8; l.chunk_len(5)];
        last[..1000].fill(7);
        assert_eq!(l.unpad(5, &last), Ok(&last[..1000]));
        assert_eq!(l.unpad(0, &[1; CHUNK]), Ok(&[1u8; CHUNK][..]));
        last[1000] = 1;
        let err = l.unpad(5, &last).expect_err("padding must be zero");
        assert_eq!(err.chunk, 5);
        assert!(err.to_string().contains("padding that is not zero"), "{err}");
        last[1000] = 0;
        assert!(l.unpad(5, &last[..last.len() - 1]).is_err(), "short");
        assert!(l.unpad(4, &last).is_err(), "a short chunk in the middle");
        assert!(l.unpad(6, &[]).is_err(), "past the end");
        // A file from an older client has no padding, and a padded one cannot pass for it.
        let old = Layout::new(5 * c + 1000, false);
        assert_eq!(old.unpad(5, &[7; 1000]), Ok(&[7u8; 1000][..]));
        assert!(old.unpad(5, &last).is_err());
        // An empty file is one empty chunk, padded or not.
        assert_eq!(Layout::new(0, true).unpad(0, &[]), Ok(&[][..]));
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
