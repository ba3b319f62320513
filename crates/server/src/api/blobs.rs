//! Attachments: opaque ciphertext blobs, uploaded in pieces that can resume, downloaded as a
//! stream that can resume, deleted when they expire. The server never sees a key or a name:
//! those travel inside MLS messages.

use std::collections::HashSet;
use std::sync::Mutex as StdMutex;

use axum::body::Body;
use axum::http::HeaderMap;
use futures_util::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};

use super::*;
use crate::store::BlobRecord;

/// Within a long upload request, bytes received between durability checkpoints: each is
/// flushed to disk and recorded in the background while the next arrive, so an upload that
/// breaks off resumes at most this far back.
const CHECKPOINT: u64 = 8 << 20;
/// How long an unfinished upload may wait before it is deleted.
const INCOMPLETE_TTL: u64 = 86_400;
/// The same for a file made with a group's credential (a commit or welcome kept by reference).
const GROUP_INCOMPLETE_TTL: u64 = 3_600;
/// Largest blob: the largest file, encrypted.
fn max_blob() -> u64 {
    sotto_core::attachment::encrypted_len(sotto_core::attachment::MAX_FILE)
}

/// Blobs being written right now (one writer per blob).
#[derive(Debug, Default)]
pub(crate) struct Uploading(StdMutex<HashSet<Vec<u8>>>);

/// A blob's place in [`Uploading`], given up when the request and its last durability
/// checkpoint are both done (a checkpoint may finish after its request was cut off).
struct UploadGuard(Shared, Vec<u8>);

impl Drop for UploadGuard {
    fn drop(&mut self) {
        self.0.uploading.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.1);
    }
}

fn blob_id(text: &str) -> Result<Vec<u8>, ApiError> {
    hex::decode(text)
        .ok()
        .filter(|id| id.len() == 16)
        .ok_or_else(|| ApiError::bad_request("a blob id is 32 hex digits"))
}

fn no_blob() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::UnknownFile,
        "no such file (it may have expired)",
    )
}

fn status_of(b: &BlobRecord) -> proto::BlobStatus {
    proto::BlobStatus { id: Bytes(b.id.clone()), size: b.size, received: b.received }
}

pub(crate) fn blob_path(state: &AppState, id: &[u8]) -> std::path::PathBuf {
    state.config.data_dir.join("blobs").join(hex::encode(id))
}

fn io_failed(e: std::io::Error) -> ApiError {
    if e.raw_os_error() == Some(28) {
        return StoreError::Unwritable(e.to_string()).into();
    }
    ApiError::internal("blob file", &e)
}

/// `POST /v1/blobs`.
pub(super) async fn create(
    State(state): State<Shared>,
    ClientIp(ip): ClientIp,
    MaybeDevice(device): MaybeDevice,
    ApiJson(req): ApiJson<proto::NewBlob>,
) -> Result<Json<proto::BlobStatus>, ApiError> {
    if req.size == 0 || req.size > max_blob() {
        return Err(ApiError::bad_request(format!("a file is 1 to {} bytes", max_blob())));
    }
    // Made with a token, a file is its account's; made with a group's credential instead, it
    // is the group's, and the server learns no uploader (see `anonymous_owner`).
    let owner = match (device, &req.group) {
        (Some(device), _) => {
            state
                .blob_creations
                .check(device)
                .map_err(|wait| ApiError::rate_limited("new files from this device", wait))?;
            None
        }
        (None, Some(group)) => Some(anonymous_owner(&state, ip, group, req.size).await?),
        (None, None) => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "a file is made with a device token, or with a group's credential",
            ));
        }
    };
    let device = device.unwrap_or(BlobRecord::GROUP_FILE_DEVICE);
    let now = unix_now();
    // A group's file is one commit or welcome, uploaded as soon as it is made: what is not
    // complete within the hour is not coming.
    let unfinished = if owner.is_some() { GROUP_INCOMPLETE_TTL } else { INCOMPLETE_TTL };
    let id = sotto_core::random_bytes(16).map_err(|e| ApiError::internal("random id", &e))?;
    let path = blob_path(&state, &id);
    let (quota, pool) = (state.config.blob_quota, state.config.group_file_quota);
    let record_id = id.clone();
    let record = blocking(&state, move |s| {
        let address = match owner {
            Some(group) => group,
            None => s.device(device)?.map(|d| d.address).unwrap_or_default(),
        };
        let record = BlobRecord {
            id: record_id,
            device,
            address,
            size: req.size,
            received: 0,
            created_at: now,
            expires_at: now + unfinished,
            lifetime: req.expires_in.unwrap_or(u64::MAX),
        };
        s.create_blob(&record, quota, pool)?;
        Ok(record)
    })
    .await?;
    // Owner-only, like the rest of the data directory.
    if let Some(dir) = path.parent() {
        let mut builder = tokio::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        builder.mode(0o700);
        builder.create(dir).await.map_err(io_failed)?;
    }
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(&path).await.map_err(io_failed)?;
    Ok(Json(status_of(&record)))
}

/// Checks that a file made without a token comes from a member of `group` in its current
/// epoch, and charges its bytes to the group and the client's address as a submission's are;
/// returns the owner its quota is kept under: the group, never an account (no address has a
/// `:`).
async fn anonymous_owner(
    state: &Shared,
    ip: IpAddr,
    group: &proto::BlobGroup,
    size: u64,
) -> Result<String, ApiError> {
    // Such a file holds one MLS message: no larger than a client accepts to fetch.
    let largest = sotto_core::reference::sealed_len(sotto_core::reference::MAX_MESSAGE);
    if size > largest {
        return Err(ApiError::bad_request(format!(
            "a file made with a group's credential is at most {largest} bytes"
        )));
    }
    let credential = sotto_core::roster::GroupCredential::from_bytes(&group.credential.0)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let group_id = group.group_id.0.clone();
    if group_id.is_empty() || group_id.len() > 256 {
        return Err(ApiError::bad_request("a group id is 1 to 256 bytes"));
    }
    // As many as submissions from the address may be made; each opens a sealed roster.
    state.ip_submits.check(ip).map_err(|wait| ApiError::rate_limited("new files", wait))?;
    state
        .ip_bytes
        .check_n(ip, size as f64)
        .map_err(|wait| ApiError::rate_limited("bytes stored from this address", wait))?;
    let key = group_id.clone();
    blocking(state, move |s| s.check_member(&key, &credential)).await?;
    state
        .group_bytes
        .check_n(group_id.clone(), size as f64)
        .map_err(|wait| ApiError::rate_limited("bytes stored in this group", wait))?;
    Ok(format!("{}{}", BlobRecord::GROUP_OWNER_PREFIX, hex::encode(&group_id)))
}

/// A blob this caller may write to: its own device's, or — with no token — one made with a
/// group's credential. Anything else looks like no upload at all.
async fn own_blob(
    state: &Shared,
    device: Option<u64>,
    id: Vec<u8>,
) -> Result<BlobRecord, ApiError> {
    let blob = blocking(state, move |s| s.blob(&id)).await?;
    blob.filter(|b| b.device == device.unwrap_or(BlobRecord::GROUP_FILE_DEVICE)).ok_or_else(no_blob)
}

/// `DELETE /v1/blobs/{id}`: the uploading account (any of its devices) takes its file back,
/// as when the message that carried it is deleted for everyone. Another account's blob looks
/// like none: both answer 404 (a client takes 404 as "already gone").
pub(super) async fn delete(
    State(state): State<Shared>,
    AuthDevice(device): AuthDevice,
    Path(id): Path<String>,
) -> Result<Json<proto::Deleted>, ApiError> {
    let id = blob_id(&id)?;
    let path = blob_path(&state, &id);
    let found = blocking(&state, move |s| {
        let address = s.device(device)?.map(|d| d.address).unwrap_or_default();
        match s.blob(&id)? {
            Some(b) if b.address == address => {
                s.delete_blob(&id)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    })
    .await?;
    if !found {
        return Err(no_blob());
    }
    // The row went first: a file left behind by a failure here is an orphan nobody can name.
    match tokio::fs::remove_file(&path).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_failed(e)),
    }
    Ok(Json(proto::Deleted { deleted: true }))
}

/// When a blob with `received` bytes expires. A complete file lives as long as messages do,
/// or as its chat's timer says; until then `expires_at` is the deadline for finishing the
/// upload, and the lifetime asked for is kept in `lifetime`.
fn expiry(state: &AppState, blob: &BlobRecord, received: u64) -> u64 {
    if received == blob.size {
        // A group's file outlives the copies that name it: they are queued after it is
        // complete (days after, for a commit whose fate was in doubt).
        let margin = if blob.is_group_file() { INCOMPLETE_TTL } else { 0 };
        unix_now() + blob.lifetime.min(state.config.message_ttl_secs) + margin
    } else {
        blob.expires_at
    }
}

/// Waits for an upload's durability checkpoint.
async fn settle(done: tokio::task::JoinHandle<Result<(), ApiError>>) -> Result<(), ApiError> {
    done.await.map_err(|e| ApiError::internal("upload checkpoint failed", &e))?
}

/// Bytes per write of an upload to its file: each is one trip to a blocking thread. An
/// upload holds about twice this (here and in `tokio::fs::File`) while it lasts.
const UPLOAD_BUFFER: usize = 256 << 10;
/// Bytes per read of a download from its file. A download holds about twice this while it
/// lasts, and a client may keep many open (one per HTTP/2 stream), so it stays small.
const DOWNLOAD_BUFFER: usize = 64 << 10;

/// `GET /v1/blobs/{id}/status`.
pub(super) async fn status(
    State(state): State<Shared>,
    MaybeDevice(device): MaybeDevice,
    Path(id): Path<String>,
) -> Result<Json<proto::BlobStatus>, ApiError> {
    let blob = own_blob(&state, device, blob_id(&id)?).await?;
    Ok(Json(status_of(&blob)))
}

/// `PUT /v1/blobs/{id}?offset=N`: appends the body at `offset`, which must be where the blob
/// ends; answers with what is now durably stored.
pub(super) async fn upload(
    State(state): State<Shared>,
    MaybeDevice(device): MaybeDevice,
    Path(id): Path<String>,
    query: Result<Query<HashMap<String, u64>>, QueryRejection>,
    body: Body,
) -> Result<Json<proto::BlobStatus>, ApiError> {
    let Query(q) = query.map_err(|r| ApiError::bad_request(r.body_text()))?;
    let offset = q.get("offset").copied().unwrap_or(0);
    let id = blob_id(&id)?;
    let blob = own_blob(&state, device, id.clone()).await?;
    {
        let mut busy = state.uploading.0.lock().unwrap_or_else(|p| p.into_inner());
        if !busy.insert(id.clone()) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::UploadInProgress,
                "this file is being uploaded by another request",
            ));
        }
    }
    let guard = Arc::new(UploadGuard(state.clone(), id.clone()));
    if offset != blob.received {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::WrongOffset,
            format!("the upload continues at byte {}, not {offset}", blob.received),
        ));
    }
    let path = blob_path(&state, &id);
    let file = tokio::fs::OpenOptions::new().write(true).open(&path).await.map_err(io_failed)?;
    // A second handle on the same open file, for the checkpoints' fsyncs.
    let syncer = Arc::new(file.try_clone().await.map_err(io_failed)?.into_std().await);
    let mut file = file;
    file.seek(std::io::SeekFrom::Start(offset)).await.map_err(io_failed)?;
    // The body arrives in pieces of a few KiB; each write to a `tokio::fs::File` is a trip
    // to a blocking thread, so they are gathered into larger writes.
    let mut file = tokio::io::BufWriter::with_capacity(UPLOAD_BUFFER, file);
    let mut written = 0u64;
    let mut checkpoint: Option<tokio::task::JoinHandle<Result<(), ApiError>>> = None;
    let mut checked = offset;
    let mut stream = body.into_data_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge, e.to_string())
        })?;
        if offset + written + piece.len() as u64 > blob.size {
            return Err(ApiError::bad_request("more bytes than the file's size"));
        }
        file.write_all(&piece).await.map_err(io_failed)?;
        written += piece.len() as u64;
        if offset + written - checked >= CHECKPOINT {
            // One checkpoint at a time: the one before must be done. A blob deleted (or
            // expired) meanwhile ends the upload there: its file is gone from the quota.
            if let Some(done) = checkpoint.take() {
                settle(done).await?;
            }
            file.flush().await.map_err(io_failed)?;
            checked = offset + written;
            let (state, syncer, guard) = (state.clone(), syncer.clone(), guard.clone());
            let expires_at = expiry(&state, &blob, checked);
            checkpoint = Some(tokio::task::spawn_blocking(move || {
                syncer.sync_data().map_err(io_failed)?;
                let id = &guard.1;
                match state.store.blob_received(id, checked, expires_at) {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(no_blob()),
                    Err(e) => Err(e.into()),
                }
            }));
        }
    }
    if let Some(done) = checkpoint.take() {
        settle(done).await?;
    }
    // Bytes count as received only once they are on disk.
    file.flush().await.map_err(io_failed)?;
    file.get_ref().sync_data().await.map_err(io_failed)?;
    crate::metrics::METRICS.file_bytes_in.fetch_add(written, std::sync::atomic::Ordering::Relaxed);
    let received = offset + written;
    // A request that brought nothing changes nothing: a complete file keeps its expiry
    // (whoever holds the id of a group's file could otherwise keep it for ever).
    if written == 0 {
        return Ok(Json(status_of(&blob)));
    }
    let expires_at = expiry(&state, &blob, received);
    let record_id = id.clone();
    if !blocking(&state, move |s| s.blob_received(&record_id, received, expires_at)).await? {
        return Err(no_blob());
    }
    drop(guard);
    Ok(Json(proto::BlobStatus { id: Bytes(id), size: blob.size, received }))
}

/// `GET /v1/blobs/{id}`: the ciphertext, from the `Range: bytes=N-` offset if given. Anyone
/// with the id (a 128-bit secret that travels only inside MLS messages) may fetch it.
pub(super) async fn download(
    State(state): State<Shared>,
    AuthDevice(device): AuthDevice,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = blob_id(&id)?;
    let lookup = id.clone();
    let blob = blocking(&state, move |s| s.blob(&lookup)).await?.ok_or_else(no_blob)?;
    // Someone else's unfinished upload looks like no file at all: its id is not out yet.
    if blob.received < blob.size && blob.device != device {
        return Err(no_blob());
    }
    if blob.received < blob.size {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::UploadInProgress,
            "this file is still being uploaded",
        ));
    }
    let start = match headers.get(axum::http::header::RANGE) {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("bytes="))
            .and_then(|v| v.strip_suffix('-'))
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|s| *s <= blob.size)
            .ok_or_else(|| ApiError::bad_request("only Range: bytes=N- is supported"))?,
    };
    let mut file = tokio::fs::File::open(blob_path(&state, &id)).await.map_err(io_failed)?;
    // The length announced is what the disk holds: a file damaged on disk then reaches the
    // client as a clean, short body that it reports as truncated, rather than as a connection
    // cut in the middle of a response.
    let stored = file.metadata().await.map_err(io_failed)?.len();
    if stored != blob.size {
        tracing::warn!(
            stored,
            expected = blob.size,
            "a stored file's length is not its recorded size"
        );
    }
    let end = stored.min(blob.size);
    file.seek(std::io::SeekFrom::Start(start)).await.map_err(io_failed)?;
    let stream = tokio_util::io::ReaderStream::with_capacity(
        file.take(end.saturating_sub(start)),
        DOWNLOAD_BUFFER,
    );
    // Counted as handed over when the response starts (a reader may stop early).
    crate::metrics::METRICS
        .file_bytes_out
        .fetch_add(end.saturating_sub(start), std::sync::atomic::Ordering::Relaxed);
    let mut response = Response::new(Body::from_stream(stream));
    let h = response.headers_mut();
    h.insert(axum::http::header::CONTENT_LENGTH, end.saturating_sub(start).into());
    h.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/octet-stream"),
    );
    if start > 0 {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(v) = format!("bytes {start}-{}/{}", blob.size - 1, blob.size).parse() {
            response.headers_mut().insert(axum::http::header::CONTENT_RANGE, v);
        }
    }
    Ok(response)
}

/// Deletes expired blobs (files, then rows).
pub(crate) fn sweep(
    store: &dyn Store,
    data_dir: &std::path::Path,
    now: u64,
) -> Result<usize, StoreError> {
    let expired = store.expired_blobs(now)?;
    for id in &expired {
        let _ = std::fs::remove_file(data_dir.join("blobs").join(hex::encode(id)));
        store.delete_blob(id)?;
    }
    Ok(expired.len())
}
