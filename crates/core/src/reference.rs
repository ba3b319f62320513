//! Messages by reference: an MLS message too large to copy into every recipient's queue (a
//! welcome for many new members, a commit in a large group) is kept once on the server as an
//! encrypted file, and the queues get a [`Reference`] to it instead.
//!
//! The file is sealed like an attachment ([`crate::attachment`]: a fresh key, padded,
//! ChaCha20-Poly1305 in STREAM chunks), and the reference carries its id, key, true size and
//! SHA-256. A reference travels where the MLS message would have travelled — through the
//! server, which seals each queued copy to its device — so it hides nothing from the server
//! that the message itself would not have shown; what protects the message is MLS, as always.
//! The reference's digest binds the file to it: a server that swaps the file is caught before
//! MLS sees a byte.
//!
//! A reference starts with a byte no MLS message starts with (every `MLSMessage` begins with
//! its protocol version, `0x0001`), so a queued copy is one or the other.
//!
//! ```
//! use sotto_core::reference::{Reference, open, seal};
//! let message = vec![7u8; 100_000];
//! let (sealed, reference) = seal([1; 16], &message).unwrap();
//! let wire = reference.encode();
//! let back = Reference::decode(&wire).unwrap().expect("a reference");
//! assert_eq!(back.sealed_len(), sealed.len() as u64);
//! assert_eq!(open(&back, &sealed).unwrap().as_slice(), &message[..]);
//! assert!(Reference::decode(&[0, 1, 0, 1]).unwrap().is_none(), "an MLS message is not one");
//! ```

use std::fmt;

use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::Error;
use crate::attachment::{FileKey, Layout};

/// What a reference starts with: `0xff` (no MLS message does), then `S`, `R` and the format
/// version.
const MAGIC: [u8; 4] = [0xff, b'S', b'R', 1];
/// Magic, blob id, key, nonce prefix, size, digest.
const ENCODED_LEN: usize = MAGIC.len() + 16 + 32 + 7 + 8 + 32;
/// The largest message kept by reference: what a recipient accepts to download and hold in
/// memory. A welcome adding 10 000 members with X-Wing keys is about 26 MB.
pub const MAX_MESSAGE: u64 = 64 << 20;

/// Where a message kept as an encrypted file is, and how to open it. `Debug` shows the id and
/// size only.
#[derive(Clone, PartialEq, Eq)]
pub struct Reference {
    /// The file's id on the server.
    pub blob: [u8; 16],
    key: [u8; 32],
    nonce: [u8; 7],
    /// The message's size in bytes.
    pub size: u64,
    /// The message's SHA-256.
    pub sha256: [u8; 32],
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reference")
            .field("blob", &hex::encode(self.blob))
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        self.key.zeroize();
    }
}

/// Whether a queued copy is a reference rather than an MLS message (decode it to be sure).
pub fn is_reference(bytes: &[u8]) -> bool {
    bytes.first() == Some(&MAGIC[0])
}

impl Reference {
    /// The bytes that go into the queues.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCODED_LEN);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.blob);
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.sha256);
        out
    }

    /// `None` if `bytes` is not a reference (an MLS message); an error if it starts as one
    /// but is malformed, or names a message larger than [`MAX_MESSAGE`].
    pub fn decode(bytes: &[u8]) -> Result<Option<Reference>, Error> {
        if !is_reference(bytes) {
            return Ok(None);
        }
        let bad = |what: &str| Error::Invalid(format!("a message reference {what}"));
        if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
            return Err(bad("has an unknown format"));
        }
        if bytes.len() != ENCODED_LEN {
            return Err(bad(&format!("is {ENCODED_LEN} bytes, not {}", bytes.len())));
        }
        let mut rest = &bytes[MAGIC.len()..];
        let mut take = |n: usize| {
            let (head, tail) = rest.split_at(n);
            rest = tail;
            head
        };
        let blob: [u8; 16] = take(16).try_into().map_err(|_| bad("is cut short"))?;
        let key: [u8; 32] = take(32).try_into().map_err(|_| bad("is cut short"))?;
        let nonce: [u8; 7] = take(7).try_into().map_err(|_| bad("is cut short"))?;
        let size = u64::from_be_bytes(take(8).try_into().map_err(|_| bad("is cut short"))?);
        let sha256: [u8; 32] = take(32).try_into().map_err(|_| bad("is cut short"))?;
        if size == 0 || size > MAX_MESSAGE {
            return Err(bad(&format!("names {size} bytes; 1 to {MAX_MESSAGE} are allowed")));
        }
        Ok(Some(Reference { blob, key, nonce, size, sha256 }))
    }

    /// The file's layout.
    pub fn layout(&self) -> Layout {
        Layout::new(self.size, true)
    }

    /// The file's size on the server.
    pub fn sealed_len(&self) -> u64 {
        self.layout().sealed_len()
    }

    /// The blob id as the server's paths spell it.
    pub fn blob_hex(&self) -> String {
        hex::encode(self.blob)
    }

    fn file_key(&self) -> Result<FileKey, Error> {
        FileKey::from_parts(&self.key, &self.nonce)
    }
}

/// The sealed size of a message of `len` bytes kept by reference.
pub fn sealed_len(len: u64) -> u64 {
    Layout::new(len, true).sealed_len()
}

/// Seals `message` under a fresh key for the file `blob` (whose size the server was told as
/// [`sealed_len`]); returns the file's bytes and the reference to queue.
pub fn seal(blob: [u8; 16], message: &[u8]) -> Result<(Vec<u8>, Reference), Error> {
    let size = message.len() as u64;
    if size == 0 || size > MAX_MESSAGE {
        return Err(Error::Invalid(format!(
            "a message kept by reference is 1 to {MAX_MESSAGE} bytes, not {size}"
        )));
    }
    let key = FileKey::generate()?;
    let layout = Layout::new(size, true);
    let mut sealed = Vec::with_capacity(layout.sealed_len() as usize);
    let mut plain = Zeroizing::new(Vec::with_capacity(crate::attachment::CHUNK));
    for chunk in 0..layout.chunks() {
        let start = (chunk as usize) * crate::attachment::CHUNK;
        let data = &message[start.min(message.len())..][..layout.data_len(chunk)];
        plain.clear();
        plain.extend_from_slice(data);
        plain.resize(layout.chunk_len(chunk), 0);
        let position = u32::try_from(chunk).map_err(|_| Error::Internal("too many chunks"))?;
        sealed.extend_from_slice(&key.seal(position, layout.is_last(chunk), &plain)?);
    }
    let reference = Reference {
        blob,
        key: key.key().try_into().map_err(|_| Error::Internal("file key length"))?,
        nonce: key.nonce().try_into().map_err(|_| Error::Internal("file nonce length"))?,
        size,
        sha256: Sha256::digest(message).into(),
    };
    Ok((sealed, reference))
}

/// Opens the file a reference names: every chunk must authenticate, the padding be zero and
/// the digest match.
pub fn open(reference: &Reference, sealed: &[u8]) -> Result<Vec<u8>, Error> {
    let layout = reference.layout();
    if sealed.len() as u64 != layout.sealed_len() {
        return Err(Error::Invalid(format!(
            "the referenced file is {} bytes, not the {} its reference says",
            sealed.len(),
            layout.sealed_len()
        )));
    }
    let key = reference.file_key()?;
    let mut message = Vec::with_capacity(reference.size as usize);
    let mut at = 0usize;
    for chunk in 0..layout.chunks() {
        let len = layout.chunk_len(chunk) + crate::attachment::TAG;
        let position = u32::try_from(chunk).map_err(|_| Error::Internal("too many chunks"))?;
        let plain = key
            .open(position, layout.is_last(chunk), &sealed[at..at + len])
            .map_err(|e| Error::Invalid(format!("the referenced file: {e}")))?;
        let data = layout
            .unpad(chunk, &plain)
            .map_err(|e| Error::Invalid(format!("the referenced file: {e}")))?;
        message.extend_from_slice(data);
        at += len;
    }
    if Sha256::digest(&message).as_slice() != reference.sha256 {
        return Err(Error::Invalid(
            "the referenced file is not the message its reference names (digest differs)".into(),
        ));
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_of_every_shape_come_back_whole() {
        for len in [1usize, 100, 65_535, 65_536, 65_537, 200_000, 1 << 20] {
            let message: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let (sealed, reference) = seal([9; 16], &message).expect("seal");
            assert_eq!(sealed.len() as u64, sealed_len(len as u64), "{len}");
            assert!(sealed.len() > len, "padded and tagged");
            let back = Reference::decode(&reference.encode()).expect("decode").expect("some");
            assert_eq!(back, reference);
            assert_eq!(open(&back, &sealed).expect("open"), message, "{len}");
        }
    }

    #[test]
    fn hostile_references_and_files_are_refused() {
        let message = vec![3u8; 70_000];
        let (sealed, reference) = seal([1; 16], &message).expect("seal");
        let wire = reference.encode();
        // Malformed references: cut, lengthened, another version, absurd sizes.
        for bad in [
            wire[..wire.len() - 1].to_vec(),
            [wire.clone(), vec![0]].concat(),
            [vec![0xff, b'S', b'R', 2], wire[4..].to_vec()].concat(),
            vec![0xff],
        ] {
            assert!(Reference::decode(&bad).is_err(), "{bad:?}");
        }
        for size in [0u64, MAX_MESSAGE + 1, u64::MAX] {
            let mut w = wire.clone();
            w[59..67].copy_from_slice(&size.to_be_bytes());
            let e = Reference::decode(&w).expect_err("size");
            assert!(e.to_string().contains("bytes"), "{e}");
        }
        // A file that is not the one referenced: cut, one bit flipped, another message.
        assert!(open(&reference, &sealed[..sealed.len() - 1]).is_err());
        let mut flipped = sealed.clone();
        flipped[100] ^= 1;
        assert!(open(&reference, &flipped).is_err());
        let (other, _) = seal([1; 16], &vec![4u8; 70_000]).expect("seal");
        assert!(open(&reference, &other).is_err());
        // The right key, a file sealed under it with other bytes: the digest catches it.
        let mut lying = reference.clone();
        lying.sha256 = [0; 32];
        let e = open(&lying, &sealed).expect_err("digest");
        assert!(e.to_string().contains("digest"), "{e}");
        // No secret in Debug.
        let shown = format!("{reference:?}");
        assert!(!shown.contains(&hex::encode(reference.key)), "{shown}");
    }
}
