//! Attachments: a file is padded with zeros to its Padmé length (so the blob's size says
//! little of the file's) and encrypted in 64 KiB chunks under a fresh key (STREAM, see
//! `sotto_core::attachment`), uploaded in pieces that resume where the server's copy ends,
//! and announced in an MLS message that carries the key, size, digest, name and media type.
//! Downloads stream, authenticate every chunk, check that the padding is zero and cut it
//! off, and reach their final name only after the size and digest match. Files from older
//! clients, unpadded, read as before (their message says so). Memory stays constant
//! whatever the file's size.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sotto_core::attachment::{self, CHUNK, FileKey, Layout, SEALED_CHUNK};
use sotto_core::content::Body;
use sotto_proto as proto;

use crate::{Client, Error, MessageView, Target};

/// Chunks per upload request (1 MiB of plaintext).
const CHUNKS_PER_REQUEST: usize = 16;
/// Attempts at one upload piece when the connection fails.
const UPLOAD_ATTEMPTS: usize = 5;

/// What a download produced.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Downloaded {
    /// Where the file is.
    pub path: String,
    /// Its size.
    pub size: u64,
    /// Its SHA-256 (hex), as the sender announced and as checked.
    pub sha256: String,
    /// Its media type, as the sender announced.
    pub media_type: String,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Io(format!("{}: {e}", path.display()))
}

/// SHA-256 of a file, streamed.
fn digest_file(path: &Path) -> Result<Vec<u8>, Error> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            return Ok(h.finalize().to_vec());
        }
        h.update(&buf[..n]);
    }
}

/// Reads up to `buf.len()` bytes, stopping only at the end of the file.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Reads chunk `chunk`'s share of the file (at the file's current position) and seals it
/// with the padding that follows, as `layout` says.
fn seal_chunk(
    file: &mut impl Read,
    path: &Path,
    key: &FileKey,
    layout: Layout,
    chunk: u64,
    plain: &mut [u8],
) -> Result<Vec<u8>, Error> {
    // Reading a whole chunk's worth notices a file that grew; one that shrank ends early.
    let n = read_full(file, &mut plain[..CHUNK]).map_err(io(path))?;
    let len = layout.chunk_len(chunk);
    if n != layout.data_len(chunk) {
        return Err(Error::Io(format!("{} changed while it was being sent", path.display())));
    }
    plain[n..len].fill(0);
    let position = u32::try_from(chunk).map_err(|_| Error::Invalid("file too large".into()))?;
    Ok(key.seal(position, layout.is_last(chunk), &plain[..len])?)
}

/// Where opened chunks go: the file's bytes into the digest, the whole plaintext (padding
/// too, so a download resumes at any chunk) into the `.part` file.
struct Sink<'a, W> {
    file: &'a mut W,
    path: &'a Path,
    hash: &'a mut Sha256,
}

/// Reads chunks `from..` of a blob laid out as `layout` from `reader`, authenticates each,
/// checks its padding and passes it to `sink`; the blob must end exactly after the last.
fn open_chunks<W: Write>(
    reader: &mut impl Read,
    url: &str,
    key: &FileKey,
    layout: Layout,
    from: u64,
    sink: &mut Sink<'_, W>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), Error> {
    let chunks = layout.chunks();
    let mut sealed = vec![0u8; SEALED_CHUNK];
    for chunk in from..chunks {
        let len = layout.chunk_len(chunk) + attachment::TAG;
        let n = read_full(reader, &mut sealed[..len])
            .map_err(|e| Error::Unreachable { url: url.into(), reason: e.to_string() })?;
        if n < len {
            return Err(Error::Tampered(format!(
                "the file on the server is truncated (chunk {chunk} of {chunks} is short)"
            )));
        }
        let position =
            u32::try_from(chunk).map_err(|_| Error::Protocol("bad attachment reference".into()))?;
        let plain = key
            .open(position, layout.is_last(chunk), &sealed[..len])
            .map_err(|e| Error::Tampered(e.to_string()))?;
        let data = layout.unpad(chunk, &plain).map_err(|e| Error::Tampered(e.to_string()))?;
        sink.hash.update(data);
        sink.file.write_all(&plain).map_err(io(sink.path))?;
        progress(layout.progress(chunk + 1), layout.size());
    }
    let mut extra = [0u8; 1];
    if read_full(reader, &mut extra).unwrap_or(0) > 0 {
        return Err(Error::Tampered("the file on the server is longer than announced".into()));
    }
    Ok(())
}

impl Client {
    /// Encrypts and uploads a file, then sends it to `target`. An interrupted upload resumes
    /// where the server's copy ends, in this run (after a failed request) or the next one
    /// (the same file, unchanged). `progress` hears (bytes done, bytes in all).
    pub fn send_file(
        &mut self,
        target: &Target,
        path: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<MessageView, Error> {
        let meta = std::fs::metadata(path).map_err(io(path))?;
        if !meta.is_file() {
            return Err(Error::Invalid(format!("{} is not a file", path.display())));
        }
        let size = meta.len();
        if size > attachment::MAX_FILE {
            return Err(Error::Invalid("files are at most 4 GiB".into()));
        }
        let group_id = self.target_group(target)?;
        let name =
            attachment::safe_file_name(&path.file_name().unwrap_or_default().to_string_lossy());
        let canonical = std::fs::canonicalize(path).map_err(io(path))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // Every file goes padded; an upload begun unpadded (by an older version) has another
        // blob size, so it is started again rather than resumed.
        let layout = Layout::new(size, true);
        let sealed_size = layout.sealed_len();
        // In a chat with disappearing messages the file on the server goes with the message.
        let timer: i64 = self.conn.query_row(
            "SELECT timer_secs FROM chats WHERE group_id = ?1",
            [&group_id],
            |r| r.get(0),
        )?;
        let lifetime = (timer > 0).then_some(timer as u64);
        let (blob, key) = self.upload_slot(&canonical, size, mtime, sealed_size, lifetime)?;
        let sha256 = digest_file(path)?;
        self.upload(&blob, &key, path, layout, progress)?;
        self.conn.execute(
            "DELETE FROM uploads WHERE path = ?1 AND size = ?2 AND mtime = ?3",
            params![canonical.to_string_lossy(), size as i64, mtime as i64],
        )?;
        let body = Body::File {
            blob: hex::encode(&blob),
            key: hex::encode(key.key()),
            nonce: hex::encode(key.nonce()),
            size,
            sha256: hex::encode(sha256),
            media_type: attachment::media_type(&name).into(),
            name,
            padded: true,
        };
        let sent = self.send_body(&group_id, body)?;
        sent.ok_or(Error::Internal("file message without a stored row"))
    }

    /// The upload of this file begun before, if the server still has it; else a new one.
    fn upload_slot(
        &mut self,
        path: &Path,
        size: u64,
        mtime: u64,
        sealed_size: u64,
        lifetime: Option<u64>,
    ) -> Result<(Vec<u8>, FileKey), Error> {
        let key_path = path.to_string_lossy().into_owned();
        let earlier: Option<(Vec<u8>, Vec<u8>, Vec<u8>)> = self
            .conn
            .query_row(
                "SELECT blob, key, nonce FROM uploads WHERE path = ?1 AND size = ?2 AND mtime = ?3",
                params![key_path, size as i64, mtime as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        if let Some((blob, key, nonce)) = earlier {
            let token = self.token()?;
            let status: Result<proto::BlobStatus, Error> =
                self.api.get(&format!("/v1/blobs/{}/status", hex::encode(&blob)), Some(&token));
            match status {
                Ok(s) if s.size == sealed_size => {
                    return Ok((blob, FileKey::from_parts(&key, &nonce)?));
                }
                Ok(_) | Err(Error::Server { status: 404, .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let token = self.token()?;
        let status: proto::BlobStatus = self.api.post(
            "/v1/blobs",
            &proto::NewBlob { size: sealed_size, expires_in: lifetime },
            Some(&token),
        )?;
        let key = FileKey::generate()?;
        self.conn.execute(
            "INSERT OR REPLACE INTO uploads (path, size, mtime, blob, key, nonce, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                key_path,
                size as i64,
                mtime as i64,
                status.id.0,
                key.key(),
                key.nonce(),
                self.now_ms() as i64
            ],
        )?;
        Ok((status.id.0, key))
    }

    /// Uploads the encrypted chunks from where the server's copy ends.
    fn upload(
        &mut self,
        blob: &[u8],
        key: &FileKey,
        path: &Path,
        layout: Layout,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(), Error> {
        let id = hex::encode(blob);
        let size = layout.size();
        let chunks = layout.chunks();
        let sealed_size = layout.sealed_len();
        let mut file = std::fs::File::open(path).map_err(io(path))?;
        let mut plain = vec![0u8; CHUNK];
        let mut attempts = 0;
        'resume: loop {
            let token = self.token()?;
            let status: proto::BlobStatus =
                self.api.get(&format!("/v1/blobs/{id}/status"), Some(&token))?;
            let mut offset = status.received;
            if !offset.is_multiple_of(SEALED_CHUNK as u64) && offset != sealed_size {
                return Err(Error::Protocol("the server's copy ends inside a chunk".into()));
            }
            let mut chunk = offset / SEALED_CHUNK as u64;
            progress(layout.progress(chunk), size);
            // Chunks of padding alone lie past the file's end, where reading finds nothing.
            file.seek(SeekFrom::Start(chunk * CHUNK as u64)).map_err(io(path))?;
            while chunk < chunks {
                let mut piece = Vec::with_capacity(CHUNKS_PER_REQUEST * SEALED_CHUNK);
                while chunk < chunks && piece.len() < CHUNKS_PER_REQUEST * SEALED_CHUNK {
                    piece.extend_from_slice(&seal_chunk(
                        &mut file, path, key, layout, chunk, &mut plain,
                    )?);
                    chunk += 1;
                }
                // A long upload outlives a token: take a fresh one (cached) for each piece.
                let token = self.token()?;
                let put: Result<proto::BlobStatus, Error> =
                    self.api.put_bytes(&format!("/v1/blobs/{id}?offset={offset}"), &piece, &token);
                match put {
                    Ok(s) => {
                        offset = s.received;
                        attempts = 0;
                        progress(layout.progress(chunk), size);
                    }
                    Err(e @ (Error::Unreachable { .. } | Error::Server { .. }))
                        if attempts + 1 < UPLOAD_ATTEMPTS
                            && e.server_code().is_none_or(|c| {
                                c == "wrong_offset" || c == "upload_in_progress"
                            }) =>
                    {
                        attempts += 1;
                        std::thread::sleep(Duration::from_millis(500 * attempts as u64));
                        continue 'resume;
                    }
                    Err(e) => return Err(e),
                }
            }
            return Ok(());
        }
    }

    /// Downloads the file a message carries to `out` (default: its name in the current
    /// directory). The file appears under that name only once every chunk authenticated and
    /// the size and digest match; an interrupted download resumes from `OUT.part`.
    pub fn download(
        &mut self,
        message: &str,
        out: Option<&Path>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Downloaded, Error> {
        let rows: Vec<String> = {
            let mut stmt = self.conn.prepare(
                "SELECT attachment FROM messages WHERE attachment IS NOT NULL
                 AND (msg_id = ?1 OR (length(?1) >= 4 AND msg_id LIKE ?1 || '%'))",
            )?;
            let rows = stmt.query_map([message.trim()], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let body = match rows.as_slice() {
            [one] => serde_json::from_str::<Body>(one)
                .map_err(|e| Error::Protocol(format!("stored attachment: {e}")))?,
            [] => return Err(Error::Invalid(format!("no file message matches {message:?}"))),
            _ => return Err(Error::Invalid(format!("{message:?} matches several messages"))),
        };
        let Body::File { blob, key, nonce, size, sha256, name, media_type, padded } = body else {
            return Err(Error::Internal("stored attachment is not a file"));
        };
        let bad = |_| Error::Protocol("bad attachment reference".into());
        if blob.is_empty()
            || !blob.bytes().all(|b| b.is_ascii_hexdigit())
            || size > attachment::MAX_FILE
        {
            return Err(Error::Protocol("bad attachment reference".into()));
        }
        let key = FileKey::from_parts(
            &hex::decode(&key).map_err(bad)?,
            &hex::decode(&nonce).map_err(bad)?,
        )?;
        let out: PathBuf = match out {
            Some(p) if p.is_dir() => p.join(attachment::safe_file_name(&name)),
            Some(p) => p.to_path_buf(),
            None => PathBuf::from(attachment::safe_file_name(&name)),
        };
        if out.exists() {
            return Err(Error::Invalid(format!("{} exists; choose another --out", out.display())));
        }
        let part = PathBuf::from(format!("{}.part", out.display()));
        let result = self.fetch_into(&blob, &key, Layout::new(size, padded), &part, progress);
        let digest = match result {
            Ok(d) => d,
            Err(e @ Error::Tampered(_)) => {
                // Nothing of a tampered file is kept.
                let _ = std::fs::remove_file(&part);
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if hex::encode(&digest) != sha256 {
            let _ = std::fs::remove_file(&part);
            return Err(Error::Tampered(
                "the file's digest differs from the one its sender announced".into(),
            ));
        }
        std::fs::rename(&part, &out).map_err(io(&out))?;
        Ok(Downloaded { path: out.display().to_string(), size, sha256, media_type })
    }

    /// Streams, authenticates and appends every chunk after those already in `part`, then
    /// cuts the padding off; returns the plaintext's SHA-256.
    fn fetch_into(
        &mut self,
        blob: &str,
        key: &FileKey,
        layout: Layout,
        part: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Vec<u8>, Error> {
        let chunks = layout.chunks();
        // A `.part` that is a link (someone else's doing, in a shared directory) would make
        // the download write wherever it points.
        if std::fs::symlink_metadata(part).is_ok_and(|m| !m.file_type().is_file()) {
            return Err(Error::Invalid(format!(
                "{} exists and is not a regular file; remove it or choose another --out",
                part.display()
            )));
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(part)
            .map_err(io(part))?;
        // Whole chunks already here were authenticated (and their padding checked) by an
        // earlier run: keep them. The padding is kept in `part` too until the end, so a
        // download interrupted there resumes at its chunk as well.
        let have = (file.metadata().map_err(io(part))?.len() / CHUNK as u64).min(chunks - 1);
        file.set_len(have * CHUNK as u64).map_err(io(part))?;
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        file.seek(SeekFrom::Start(0)).map_err(io(part))?;
        for chunk in 0..have {
            file.read_exact(&mut buf).map_err(io(part))?;
            hash.update(&buf[..layout.data_len(chunk)]);
        }
        let token = self.token()?;
        let mut reader = self.api.get_stream(
            &format!("/v1/blobs/{blob}"),
            have * SEALED_CHUNK as u64,
            &token,
        )?;
        let url = self.api.base().to_string();
        let mut sink = Sink { file: &mut file, path: part, hash: &mut hash };
        open_chunks(&mut reader, &url, key, layout, have, &mut sink, progress)?;
        file.set_len(layout.size()).map_err(io(part))?;
        file.sync_all().map_err(io(part))?;
        Ok(hash.finalize().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    /// Pseudo-random bytes.
    fn data(size: usize) -> Vec<u8> {
        let mut x = size as u64 ^ 0x9e37_79b9_7f4a_7c15;
        (0..size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// A blob as this version seals it (`padded`), or as older clients did.
    fn seal(key: &FileKey, data: &[u8], padded: bool) -> Vec<u8> {
        let layout = Layout::new(data.len() as u64, padded);
        let mut file = Cursor::new(data);
        let mut plain = vec![0u8; CHUNK];
        let mut blob = Vec::new();
        for chunk in 0..layout.chunks() {
            let sealed = seal_chunk(&mut file, Path::new("f"), key, layout, chunk, &mut plain);
            blob.extend_from_slice(&sealed.expect("seal"));
        }
        blob
    }

    /// What opening a blob gave.
    #[derive(Debug)]
    struct Opened {
        /// What `.part` got.
        part: Vec<u8>,
        digest: Vec<u8>,
        /// The progress told.
        told: Vec<u64>,
    }

    /// Opens a blob's chunks from `from` on.
    fn open(blob: &[u8], key: &FileKey, layout: Layout, from: u64) -> Result<Opened, Error> {
        let (mut part, mut hash, mut told) = (Vec::new(), Sha256::new(), Vec::new());
        let mut sink = Sink { file: &mut part, path: Path::new("f.part"), hash: &mut hash };
        let rest = blob.get(from as usize * SEALED_CHUNK..).unwrap_or_default();
        open_chunks(
            &mut Cursor::new(rest),
            "http://test",
            key,
            layout,
            from,
            &mut sink,
            &mut |d, _| told.push(d),
        )?;
        Ok(Opened { part, digest: hash.finalize().to_vec(), told })
    }

    #[test]
    fn files_go_padded_and_come_back_whole() {
        let key = FileKey::generate().expect("key");
        let c = CHUNK;
        // Around chunk edges, and 4 MiB + 1, whose padding (128 KiB) fills whole chunks.
        for size in [0, 1, 1000, c - 1, c, c + 1, 300_000, 5 * c, (4 << 20) + 1] {
            let file = data(size);
            let layout = Layout::new(size as u64, true);
            let blob = seal(&key, &file, true);
            assert_eq!(
                blob.len() as u64,
                attachment::encrypted_len(attachment::padme(size as u64))
            );
            let Opened { part, digest, told } = open(&blob, &key, layout, 0).expect("opens");
            assert_eq!(part.len() as u64, layout.padded_len(), "padding is written too");
            assert_eq!(&part[..size], &file[..], "{size}");
            assert!(part[size..].iter().all(|&b| b == 0));
            assert_eq!(digest, Sha256::digest(&file).to_vec());
            assert!(told.windows(2).all(|w| w[0] <= w[1]) && told.last() == Some(&(size as u64)));
            // Resuming at any chunk reads the rest.
            for from in [1, layout.chunks() - 1].into_iter().filter(|&f| f < layout.chunks()) {
                let rest = open(&blob, &key, layout, from).expect("resumes").part;
                assert_eq!(rest, part[from as usize * c..], "{size} from {from}");
            }
        }
    }

    #[test]
    fn unpadded_files_of_older_clients_still_read() {
        let key = FileKey::generate().expect("key");
        for size in [0, 1000, CHUNK + 1, 300_000] {
            let file = data(size);
            let old = seal(&key, &file, false);
            assert_eq!(old.len() as u64, attachment::encrypted_len(size as u64));
            let layout = Layout::new(size as u64, false);
            let opened = open(&old, &key, layout, 0).expect("opens");
            assert_eq!(opened.part, file);
            assert_eq!(opened.digest, Sha256::digest(&file).to_vec());
        }
        // A blob whose message says the other layout is refused, not misread.
        let file = data(300_000);
        let (old, new) = (seal(&key, &file, false), seal(&key, &file, true));
        for (blob, padded) in [(&old, true), (&new, false)] {
            let err = open(blob, &key, Layout::new(300_000, padded), 0).expect_err("refused");
            assert!(matches!(err, Error::Tampered(_)), "{err}");
        }
    }

    #[test]
    fn hostile_blobs_are_refused_clearly() {
        let key = FileKey::generate().expect("key");
        let size = 300_000;
        let file = data(size);
        let layout = Layout::new(size as u64, true);
        let blob = seal(&key, &file, true);
        let message = |blob: &[u8]| match open(blob, &key, layout, 0) {
            Err(Error::Tampered(m)) => m,
            other => panic!("not refused as tampered: {other:?}"),
        };
        // Padding that is not zero, though sealed by the key's holder.
        let last = layout.chunks() - 1;
        let mut plain = vec![0u8; layout.chunk_len(last)];
        let data_len = layout.data_len(last);
        plain[..data_len].copy_from_slice(&file[last as usize * CHUNK..]);
        plain[data_len + 10] = 1;
        let mut bad = blob[..last as usize * SEALED_CHUNK].to_vec();
        bad.extend_from_slice(&key.seal(last as u32, true, &plain).expect("seal"));
        assert_eq!(bad.len(), blob.len());
        assert!(message(&bad).contains("padding that is not zero"));
        // Shorter or longer than the announced size says.
        assert!(message(&blob[..blob.len() - 1]).contains("truncated"));
        let mut long = blob.clone();
        long.push(0);
        assert!(message(&long).contains("longer than announced"));
        let mut flipped = blob.clone();
        flipped[1000] ^= 1;
        assert!(message(&flipped).contains("does not authenticate"));
    }

    #[test]
    fn a_file_that_changes_while_sent_is_refused() {
        let key = FileKey::generate().expect("key");
        let layout = Layout::new(1000, true);
        let mut plain = vec![0u8; CHUNK];
        for now in [999, 1001] {
            let mut file = Cursor::new(data(now));
            let err = seal_chunk(&mut file, Path::new("f"), &key, layout, 0, &mut plain)
                .expect_err("changed");
            assert!(err.to_string().contains("changed while it was being sent"), "{err}");
        }
    }
}
