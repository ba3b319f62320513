//! Attachments: a file is encrypted in 64 KiB chunks under a fresh key (STREAM, see
//! `sotto_core::attachment`), uploaded in pieces that resume where the server's copy ends,
//! and announced in an MLS message that carries the key, size, digest, name and media type.
//! Downloads stream, authenticate every chunk, and reach their final name only after the
//! size and digest match. Memory stays constant whatever the file's size.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sotto_core::attachment::{self, CHUNK, FileKey, SEALED_CHUNK};
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
        let sealed_size = attachment::encrypted_len(size);
        // In a chat with disappearing messages the file on the server goes with the message.
        let timer: i64 = self.conn.query_row(
            "SELECT timer_secs FROM chats WHERE group_id = ?1",
            [&group_id],
            |r| r.get(0),
        )?;
        let lifetime = (timer > 0).then_some(timer as u64);
        let (blob, key) = self.upload_slot(&canonical, size, mtime, sealed_size, lifetime)?;
        let sha256 = digest_file(path)?;
        self.upload(&blob, &key, path, size, progress)?;
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
        size: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(), Error> {
        let id = hex::encode(blob);
        let chunks = attachment::chunks(size);
        let sealed_size = attachment::encrypted_len(size);
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
            progress(chunk.min(chunks) * CHUNK as u64, size);
            file.seek(SeekFrom::Start(chunk * CHUNK as u64)).map_err(io(path))?;
            while chunk < chunks {
                let mut piece = Vec::with_capacity(CHUNKS_PER_REQUEST * SEALED_CHUNK);
                while chunk < chunks && piece.len() < CHUNKS_PER_REQUEST * SEALED_CHUNK {
                    let last = chunk + 1 == chunks;
                    let n = read_full(&mut file, &mut plain).map_err(io(path))?;
                    let expected = if last { size - chunk * CHUNK as u64 } else { CHUNK as u64 };
                    if n as u64 != expected {
                        return Err(Error::Io(format!(
                            "{} changed while it was being sent",
                            path.display()
                        )));
                    }
                    piece.extend_from_slice(&key.seal(chunk as u32, last, &plain[..n])?);
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
                        progress((chunk * CHUNK as u64).min(size), size);
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
        let Body::File { blob, key, nonce, size, sha256, name, media_type } = body else {
            return Err(Error::Internal("stored attachment is not a file"));
        };
        let bad = |_| Error::Protocol("bad attachment reference".into());
        if blob.is_empty() || !blob.bytes().all(|b| b.is_ascii_hexdigit()) {
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
        let result = self.fetch_into(&blob, &key, size, &part, progress);
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

    /// Streams, authenticates and appends every chunk after those already in `part`;
    /// returns the plaintext's SHA-256.
    fn fetch_into(
        &mut self,
        blob: &str,
        key: &FileKey,
        size: u64,
        part: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Vec<u8>, Error> {
        let chunks = attachment::chunks(size);
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
        // Whole chunks already here were authenticated by an earlier run: keep them.
        let have = (file.metadata().map_err(io(part))?.len() / CHUNK as u64).min(chunks - 1);
        file.set_len(have * CHUNK as u64).map_err(io(part))?;
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        file.seek(SeekFrom::Start(0)).map_err(io(part))?;
        for _ in 0..have {
            file.read_exact(&mut buf).map_err(io(part))?;
            hash.update(&buf);
        }
        let token = self.token()?;
        let mut reader = self.api.get_stream(
            &format!("/v1/blobs/{blob}"),
            have * SEALED_CHUNK as u64,
            &token,
        )?;
        let mut sealed = vec![0u8; SEALED_CHUNK];
        for chunk in have..chunks {
            let last = chunk + 1 == chunks;
            let len = if last {
                (size - chunk * CHUNK as u64) as usize + attachment::TAG
            } else {
                SEALED_CHUNK
            };
            let n = read_full(&mut reader, &mut sealed[..len]).map_err(|e| Error::Unreachable {
                url: self.api.base().into(),
                reason: e.to_string(),
            })?;
            if n < len {
                return Err(Error::Tampered(format!(
                    "the file on the server is truncated (chunk {chunk} of {chunks} is short)"
                )));
            }
            let plain = key
                .open(chunk as u32, last, &sealed[..len])
                .map_err(|e| Error::Tampered(e.to_string()))?;
            hash.update(plain.as_slice());
            file.write_all(&plain).map_err(io(part))?;
            progress(((chunk + 1) * CHUNK as u64).min(size), size);
        }
        let mut extra = [0u8; 1];
        if read_full(&mut reader, &mut extra).unwrap_or(0) > 0 {
            return Err(Error::Tampered("the file on the server is longer than announced".into()));
        }
        file.sync_all().map_err(io(part))?;
        Ok(hash.finalize().to_vec())
    }
}
