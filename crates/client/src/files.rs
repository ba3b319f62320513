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
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::Duration;

use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sotto_core::attachment::{self, CHUNK, FileKey, Layout, SEALED_CHUNK};
use sotto_core::content::Body;
use sotto_proto as proto;
use zeroize::Zeroizing;

use crate::{Client, Error, MessageView, Target};

/// Chunks sealed into one piece of an upload's body (1 MiB of plaintext).
const PIECE_CHUNKS: usize = 16;
/// Most bytes one upload request streams: each must go through within a time that allows
/// for a slow link (see `HttpTransport::put_stream`), so that a server that stops reading
/// cannot hold the upload for ever.
const UPLOAD_REQUEST: u64 = 64 << 20;
/// Attempts at an upload, each resuming where the server's copy ends, when the connection
/// fails.
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

/// Reads chunk `chunk`'s share of the file (at the file's current position) into `plain`
/// and pads it as `layout` says; returns the chunk's plaintext length.
fn read_chunk(
    file: &mut impl Read,
    path: &Path,
    layout: Layout,
    chunk: u64,
    plain: &mut [u8],
) -> Result<usize, Error> {
    // Reading a whole chunk's worth notices a file that grew; one that shrank ends early.
    let n = read_full(file, &mut plain[..CHUNK]).map_err(io(path))?;
    let len = layout.chunk_len(chunk);
    if n != layout.data_len(chunk) {
        return Err(Error::Io(format!("{} changed while it was being sent", path.display())));
    }
    plain[n..len].fill(0);
    Ok(len)
}

/// A chunk's plaintext, padded, on its way to be sealed.
type Plain = Result<(u64, Vec<u8>), Error>;
/// Sealed chunks, a piece of an upload's body, and the chunk that follows them.
type Piece = Result<(Vec<u8>, u64), Error>;

/// Reads the file from its start, hashing the file's bytes, and passes chunks `start..` on
/// to be sealed (the ones before are on the server already and are only hashed). Returns the
/// SHA-256; an error goes down the channel too, in order.
fn read_chunks(
    file: &mut impl Read,
    path: &Path,
    layout: Layout,
    start: u64,
    out: &SyncSender<Plain>,
) -> Result<Vec<u8>, Error> {
    let mut hash = Sha256::new();
    let mut plain = vec![0u8; CHUNK];
    for chunk in 0..layout.chunks() {
        let len = match read_chunk(file, path, layout, chunk, &mut plain) {
            Ok(len) => len,
            Err(e) => {
                let _ = out.send(Err(e));
                return Err(Error::Internal("the file could not be read"));
            }
        };
        hash.update(&plain[..layout.data_len(chunk)]);
        if chunk >= start && out.send(Ok((chunk, plain[..len].to_vec()))).is_err() {
            return Err(Error::Internal("the upload stopped"));
        }
    }
    Ok(hash.finalize().to_vec())
}

/// Seals the chunks `read_chunks` passes and gathers them into pieces of [`PIECE_CHUNKS`]
/// (the last piece ends with the last chunk). Stops when either side goes.
fn seal_pieces(key: &FileKey, layout: Layout, input: &Receiver<Plain>, out: &SyncSender<Piece>) {
    let mut piece = Vec::with_capacity(PIECE_CHUNKS * SEALED_CHUNK);
    for item in input {
        let sealed = item.and_then(|(chunk, plain)| {
            let position =
                u32::try_from(chunk).map_err(|_| Error::Invalid("file too large".into()))?;
            Ok((chunk, key.seal(position, layout.is_last(chunk), &plain)?))
        });
        let (chunk, sealed) = match sealed {
            Ok(s) => s,
            Err(e) => {
                let _ = out.send(Err(e));
                return;
            }
        };
        piece.extend_from_slice(&sealed);
        if (piece.len() >= PIECE_CHUNKS * SEALED_CHUNK || layout.is_last(chunk))
            && out.send(Ok((std::mem::take(&mut piece), chunk + 1))).is_err()
        {
            return;
        }
    }
}

/// Where opened chunks go: the file's bytes into the digest, the whole plaintext (padding
/// too, so a download resumes at any chunk) into the `.part` file.
struct Sink<'a, W> {
    file: &'a mut W,
    path: &'a Path,
    hash: &'a mut Sha256,
}

/// An upload's body: the sealed pieces as they come from [`seal_pieces`], from `at` in the
/// first. Tells `progress` the chunks sent so far.
struct PieceReader<'a> {
    pieces: Receiver<Piece>,
    piece: Vec<u8>,
    at: usize,
    /// Bytes this request may still take; then the body ends.
    left: u64,
    /// Why the pieces stopped, if they did not end.
    failed: Option<Error>,
    /// The chunk after the piece being read.
    through: Option<u64>,
    progress: &'a mut dyn FnMut(u64),
}

impl Read for PieceReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        while self.at >= self.piece.len() {
            match self.pieces.recv() {
                Ok(Ok((piece, through))) => {
                    // The first piece skips what the server has; later ones start at 0.
                    self.at = self.at.saturating_sub(self.piece.len());
                    self.piece = piece;
                    if let Some(done) = self.through.replace(through) {
                        (self.progress)(done);
                    }
                }
                Ok(Err(e)) => {
                    self.failed = Some(e);
                    return Err(std::io::Error::other("the file could not be sealed"));
                }
                Err(_) => {
                    if let Some(done) = self.through.take() {
                        (self.progress)(done);
                    }
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.piece.len() - self.at).min(self.left as usize);
        buf[..n].copy_from_slice(&self.piece[self.at..self.at + n]);
        self.at += n;
        self.left -= n as u64;
        Ok(n)
    }
}

/// An opened chunk's plaintext, padding included.
type Opened = Result<(u64, Zeroizing<Vec<u8>>), Error>;

/// Chunks opened ahead of the one being written.
const OPEN_AHEAD: usize = 16;

/// Reads chunks `from..` of a blob laid out as `layout` from `reader`, authenticates each,
/// checks its padding and passes it to `sink`; the blob must end exactly after the last.
/// A thread reads and authenticates while this one checks, hashes and writes.
fn open_chunks<W: Write>(
    reader: &mut (impl Read + Send),
    url: &str,
    key: &FileKey,
    layout: Layout,
    from: u64,
    sink: &mut Sink<'_, W>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), Error> {
    let chunks = layout.chunks();
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(OPEN_AHEAD);
        scope.spawn(move || read_and_open(reader, url, key, layout, from, &tx));
        let mut next = from;
        for opened in rx {
            let (chunk, plain) = opened?;
            let data = layout.unpad(chunk, &plain).map_err(|e| Error::Tampered(e.to_string()))?;
            sink.hash.update(data);
            sink.file.write_all(&plain).map_err(io(sink.path))?;
            progress(layout.progress(chunk + 1), layout.size());
            next = chunk + 1;
        }
        if next == chunks {
            Ok(())
        } else {
            Err(Error::Internal("the download stopped before its end"))
        }
    })
}

/// The reading half of [`open_chunks`]: sends each chunk opened, in order, or the first
/// error; stops when the receiver goes.
fn read_and_open(
    reader: &mut impl Read,
    url: &str,
    key: &FileKey,
    layout: Layout,
    from: u64,
    out: &SyncSender<Opened>,
) {
    let chunks = layout.chunks();
    let mut sealed = vec![0u8; SEALED_CHUNK];
    let mut open = |chunk: u64| -> Result<Zeroizing<Vec<u8>>, Error> {
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
        key.open(position, layout.is_last(chunk), &sealed[..len])
            .map_err(|e| Error::Tampered(e.to_string()))
    };
    for chunk in from..chunks {
        let opened = open(chunk);
        let failed = opened.is_err();
        if out.send(opened.map(|plain| (chunk, plain))).is_err() || failed {
            return;
        }
    }
    let mut extra = [0u8; 1];
    if read_full(reader, &mut extra).unwrap_or(0) > 0 {
        let _ = out
            .send(Err(Error::Tampered("the file on the server is longer than announced".into())));
    }
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
        let sha256 = self.upload(&blob, &key, path, layout, progress)?;
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
            &proto::NewBlob { size: sealed_size, expires_in: lifetime, group: None },
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

    /// Uploads the encrypted chunks from where the server's copy ends; returns the file's
    /// SHA-256, taken from the very bytes sealed.
    ///
    /// Three stages run at once: a thread reads the file and hashes it, a second seals its
    /// chunks, and this one streams them to the server in one request, which makes what it
    /// received durable as it goes (so a broken upload resumes near where it broke).
    fn upload(
        &mut self,
        blob: &[u8],
        key: &FileKey,
        path: &Path,
        layout: Layout,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Vec<u8>, Error> {
        let id = hex::encode(blob);
        let size = layout.size();
        let sealed_size = layout.sealed_len();
        let mut attempts = 0;
        loop {
            let token = self.token()?;
            let status: proto::BlobStatus =
                self.api.get(&format!("/v1/blobs/{id}/status"), Some(&token))?;
            let offset = status.received;
            if offset > sealed_size {
                return Err(Error::Protocol("the server's copy is longer than the file".into()));
            }
            // The server's copy may end inside a chunk: sealing is deterministic, so that
            // chunk is sealed again and sent from where the copy ends.
            let (start, skip) = if offset == sealed_size {
                (layout.chunks(), 0)
            } else {
                let start = offset / SEALED_CHUNK as u64;
                (start, (offset - start * SEALED_CHUNK as u64) as usize)
            };
            progress(layout.progress(start), size);
            let outcome = std::thread::scope(|scope| -> Result<Option<Vec<u8>>, Error> {
                let (plain_tx, plain_rx) = std::sync::mpsc::sync_channel(PIECE_CHUNKS);
                let (piece_tx, piece_rx) = std::sync::mpsc::sync_channel(1);
                let mut file = std::fs::File::open(path).map_err(io(path))?;
                let reader =
                    scope.spawn(move || read_chunks(&mut file, path, layout, start, &plain_tx));
                scope.spawn(move || seal_pieces(key, layout, &plain_rx, &piece_tx));
                if start < layout.chunks() {
                    let mut body = PieceReader {
                        pieces: piece_rx,
                        piece: Vec::new(),
                        at: skip,
                        left: 0,
                        failed: None,
                        through: None,
                        progress: &mut |done| progress(layout.progress(done), size),
                    };
                    let mut offset = offset;
                    while offset < sealed_size {
                        let sending = UPLOAD_REQUEST.min(sealed_size - offset);
                        body.left = sending;
                        // A long upload outlives a token: a fresh one (cached) for each request.
                        let token = self.token()?;
                        let put: Result<proto::BlobStatus, Error> = self.api.put_stream(
                            &format!("/v1/blobs/{id}?offset={offset}"),
                            &mut body,
                            sending,
                            Some(&token),
                        );
                        // A failure here (the file changed, say) ends the upload, whatever the
                        // server made of the cut request.
                        if let Some(e) = body.failed.take() {
                            return Err(e);
                        }
                        match put {
                            Ok(s) if s.received == offset + sending => offset = s.received,
                            // Cut short somewhere: ask again where the copy ends.
                            Ok(_) => return Ok(None),
                            Err(e @ (Error::Unreachable { .. } | Error::Server { .. }))
                                if e.server_code().is_none_or(|c| {
                                    c == "wrong_offset" || c == "upload_in_progress"
                                }) =>
                            {
                                // Dropping the pieces' receiver stops both threads.
                                return Ok(None);
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
                reader.join().map_err(|_| Error::Internal("the file reader failed"))?.map(Some)
            });
            match outcome? {
                Some(digest) => return Ok(digest),
                None if attempts + 1 < UPLOAD_ATTEMPTS => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(500 * attempts as u64));
                }
                None => {
                    return Err(Error::Unreachable {
                        url: self.api.base().to_string(),
                        reason: format!("the upload broke off {UPLOAD_ATTEMPTS} times"),
                    });
                }
            }
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
        // A file of any size takes as long as it keeps coming.
        let from = (have * SEALED_CHUNK as u64, None);
        let mut reader = self.api.get_stream(&format!("/v1/blobs/{blob}"), from, &token)?;
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
            let len = read_chunk(&mut file, Path::new("f"), layout, chunk, &mut plain);
            let len = len.expect("read");
            blob.extend_from_slice(
                &key.seal(chunk as u32, layout.is_last(chunk), &plain[..len]).expect("seal"),
            );
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

    /// The upload's reading and sealing threads, run as `upload` runs them from chunk `start`.
    fn upload_pieces(key: &FileKey, file: &[u8], start: u64) -> (Vec<Vec<u8>>, Vec<u64>, Vec<u8>) {
        let layout = Layout::new(file.len() as u64, true);
        let (plain_tx, plain_rx) = std::sync::mpsc::sync_channel(2);
        let (piece_tx, piece_rx) = std::sync::mpsc::sync_channel(1);
        std::thread::scope(|scope| {
            let reader = scope.spawn(move || {
                read_chunks(&mut Cursor::new(file), Path::new("f"), layout, start, &plain_tx)
            });
            scope.spawn(move || seal_pieces(key, layout, &plain_rx, &piece_tx));
            let (pieces, through): (Vec<_>, Vec<_>) =
                piece_rx.iter().map(|p| p.expect("piece")).unzip();
            (pieces, through, reader.join().expect("reader").expect("digest"))
        })
    }

    #[test]
    fn uploads_seal_in_pieces_what_a_single_pass_seals() {
        let key = FileKey::generate().expect("key");
        let per_piece = PIECE_CHUNKS * SEALED_CHUNK;
        for size in
            [0, 1000, PIECE_CHUNKS * CHUNK, PIECE_CHUNKS * CHUNK + 1, 3 * PIECE_CHUNKS * CHUNK - 5]
        {
            let file = data(size);
            let layout = Layout::new(size as u64, true);
            let whole = seal(&key, &file, true);
            let (pieces, through, digest) = upload_pieces(&key, &file, 0);
            assert_eq!(pieces.concat(), whole, "{size}");
            assert!(pieces.iter().rev().skip(1).all(|p| p.len() == per_piece), "{size}");
            assert_eq!(through.last(), Some(&layout.chunks()));
            assert_eq!(digest, Sha256::digest(&file).to_vec(), "{size}");
            // Resumed after some chunks: the rest is sealed, the digest is still the file's.
            let start = layout.chunks() - 1;
            let (rest, _, digest) = upload_pieces(&key, &file, start);
            assert_eq!(rest.concat(), whole[start as usize * SEALED_CHUNK..], "{size}");
            assert_eq!(digest, Sha256::digest(&file).to_vec(), "{size}");
        }
        // A server's copy that ends inside a chunk: the body starts from there.
        let file = data(5 * CHUNK + 77);
        let whole = seal(&key, &file, true);
        for offset in [1, SEALED_CHUNK - 1, 3 * SEALED_CHUNK + 100, whole.len() - 1] {
            let layout = Layout::new(file.len() as u64, true);
            let start = (offset / SEALED_CHUNK) as u64;
            let (pieces, _, _) = upload_pieces(&key, &file, start);
            let (tx, rx) = std::sync::mpsc::sync_channel(pieces.len());
            for (i, piece) in pieces.into_iter().enumerate() {
                tx.send(Ok((piece, start + i as u64 + 1))).expect("send");
            }
            drop(tx);
            let mut told = Vec::new();
            let mut body = PieceReader {
                pieces: rx,
                piece: Vec::new(),
                at: offset - start as usize * SEALED_CHUNK,
                left: u64::MAX,
                failed: None,
                through: None,
                progress: &mut |done| told.push(done),
            };
            let mut sent = Vec::new();
            body.read_to_end(&mut sent).expect("read");
            assert_eq!(sent, whole[offset..], "from {offset}");
            assert!(told.windows(2).all(|w| w[0] < w[1]), "{told:?}");
            assert!(told.last().is_some_and(|&t| t <= layout.chunks()), "{told:?}");
        }
        // A file that changes under the reader stops the upload with the reader's error.
        let layout = Layout::new(5 * CHUNK as u64, true);
        let short = data(3 * CHUNK);
        let (plain_tx, plain_rx) = std::sync::mpsc::sync_channel(2);
        let (piece_tx, piece_rx) = std::sync::mpsc::sync_channel(1);
        std::thread::scope(|scope| {
            scope.spawn(move || {
                read_chunks(&mut Cursor::new(&short), Path::new("f"), layout, 0, &plain_tx)
            });
            scope.spawn(move || seal_pieces(&key, layout, &plain_rx, &piece_tx));
            let err = piece_rx.iter().find_map(Result::err).expect("an error");
            assert!(err.to_string().contains("changed while it was being sent"), "{err}");
        });
    }

    #[test]
    fn a_file_that_changes_while_sent_is_refused() {
        let layout = Layout::new(1000, true);
        let mut plain = vec![0u8; CHUNK];
        for now in [999, 1001] {
            let mut file = Cursor::new(data(now));
            let err =
                read_chunk(&mut file, Path::new("f"), layout, 0, &mut plain).expect_err("changed");
            assert!(err.to_string().contains("changed while it was being sent"), "{err}");
        }
    }
}
