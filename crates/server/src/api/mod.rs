//! The HTTP and WebSocket API. Handlers validate input, call the store on a blocking thread
//! and map every failure to an [`ApiError`] in one place.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State,
};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use sotto_core::{Address, auth, unix_now};
use sotto_proto::live::Version;
use sotto_proto::{self as proto, Bytes, ErrorCode};
use tokio::sync::watch;

use crate::Config;
use crate::invite_hash;
use crate::limits::{PeerAddr, RateLimiter};
use crate::session::Sessions;
use crate::store::{
    Barred, KeyPackageStock, NewAccount, Ordering, PAGE_MAX_BYTES, Store, StoreError, Submission,
};

pub(crate) mod admin;
#[cfg(test)]
mod authz_tests;
mod blobs;
mod devices;
mod kt;
mod openapi;

pub(crate) use blobs::sweep as sweep_blobs;
pub(crate) use devices::LINK_TTL_SECS;

/// Largest request body accepted.
const MAX_BODY: usize = 2 * 1024 * 1024;
/// Most key packages in one upload, and most a device may have on file.
const MAX_KEY_PACKAGES_PER_UPLOAD: usize = 100;
const MAX_KEY_PACKAGES_STOCK: u64 = 1000;
/// Largest single key package.
const MAX_KEY_PACKAGE_LEN: usize = 16 * 1024;
/// Most ciphersuites a claim may name.
const MAX_CLAIM_SUITES: usize = 8;
/// Most recipients of one submission, across its deliveries.
const MAX_RECIPIENTS: usize = 10_000;
/// Files a device may start: two a second, in bursts of 200 (an album shared at once).
const BLOBS_PER_SECOND: f64 = 2.0;
const BLOB_BURST: f64 = 200.0;
/// A device, and a group, may queue bursts of this many seconds' worth of
/// [`Config::submit_bytes_per_second`].
const SUBMIT_BURST_SECS: f64 = 64.0;
/// Sealed submissions name no device: their limits count per client address, which has the
/// allowance of this many devices.
const PER_ADDRESS_DEVICES: f64 = 16.0;
/// Default and largest page of a queue fetch.
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 500;
/// Store writes handed to the writer at once; more wait their turn.
const MAX_CONCURRENT_WRITES: usize = 128;
/// Page size on the WebSocket: small, so a slow reader holds little server memory.
const LIVE_PAGE: u32 = 16;
/// Bytes of one WebSocket page (a single larger message still goes alone).
const LIVE_PAGE_BYTES: usize = 256 * 1024;
/// Live connections one device may hold at once.
const MAX_LIVE_PER_DEVICE: usize = 4;
/// How often a live connection is pinged, at most (a third of the idle timeout if that is
/// shorter): a peer that answers nothing for four pings is gone and its socket is closed.
const LIVE_PING: std::time::Duration = std::time::Duration::from_secs(30);
/// KiB of JSON request bodies buffered at once from authenticated devices (64 MiB), and
/// from requests without a token (16 MiB): the two budgets are apart, so no one without an
/// account can hold up the members' requests. Bodies announced at [`UNBUDGETED`] or less
/// take nothing from either (the connection caps bound them).
static BUFFERING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(64 * 1024);
static PUBLIC_BUFFERING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(16 * 1024);
static SUBMIT_BUFFERING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(64 * 1024);
const UNBUDGETED: usize = 16 * 1024;
/// Largest bodies of routes that need no token: logging in, registering or recovering,
/// opening a link (whose sealed request is up to 64 KiB).
const LOGIN_BODY: usize = 4 * 1024;
const SMALL_BODY: usize = 16 * 1024;
const LINK_BODY: usize = 128 * 1024;
/// How long a JSON request body may take to arrive.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long one WebSocket send may take before the reader counts as gone (at most; the idle
/// timeout if that is shorter).
const LIVE_SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Wakes WebSocket connections of devices whose queue received something, and keeps the
/// copies just queued for devices that are connected, so that a live connection delivers
/// them from memory rather than reading them back from the store.
#[derive(Debug, Default)]
struct Notifier {
    devices: Mutex<Slots>,
}

/// Every connected device's slot, and the bytes of copies they keep together.
#[derive(Debug, Default)]
struct Slots {
    map: HashMap<u64, Slot>,
    bytes: usize,
}

impl Slots {
    /// Removes a device's slot and what it kept.
    fn remove(&mut self, device: u64) {
        if let Some(slot) = self.map.remove(&device) {
            self.bytes -= slot.bytes;
        }
    }
}

/// A connected device: how its live connections are woken, and its latest copies.
#[derive(Debug)]
struct Slot {
    wake: watch::Sender<()>,
    /// Copies queued since its connections last took them, by increasing seq: `(seq, time
    /// queued, copy)`. At most [`RECENT_COPIES`] copies and [`RECENT_BYTES`] bytes; the
    /// oldest make room, and a connection that misses one reads the store instead.
    recent: std::collections::VecDeque<(u64, u64, Vec<u8>)>,
    bytes: usize,
}

/// Most copies, and bytes, kept in memory per connected device.
const RECENT_COPIES: usize = 32;
const RECENT_BYTES: usize = 128 * 1024;
/// Most bytes kept for all devices together: many connections that stall while a large group
/// is busy hold no more than this; beyond it, copies are read from the store.
const RECENT_TOTAL_BYTES: usize = 32 << 20;

impl Notifier {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.devices.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn subscribe(&self, device: u64) -> watch::Receiver<()> {
        let mut slots = self.lock();
        let slot = slots.map.entry(device).or_insert_with(|| Slot {
            wake: watch::channel(()).0,
            recent: Default::default(),
            bytes: 0,
        });
        slot.wake.subscribe()
    }

    fn notify(&self, devices: impl IntoIterator<Item = u64>) {
        let mut slots = self.lock();
        for device in devices {
            if let Some(slot) = slots.map.get(&device) {
                if slot.wake.receiver_count() == 0 {
                    slots.remove(device);
                } else {
                    slot.wake.send_replace(());
                }
            }
        }
    }

    /// Keeps the copies just committed for the devices that are connected, then wakes every
    /// device that received one.
    fn queued(&self, committed: crate::store::Committed) {
        let mut slots = self.lock();
        let Slots { map, bytes: total } = &mut *slots;
        for copy in committed.copies {
            let Some(slot) = map.get_mut(&copy.device) else { continue };
            let len = copy.message.len();
            if len > RECENT_BYTES || *total + len > RECENT_TOTAL_BYTES {
                continue;
            }
            // The store hands copies over in commit order; sorted all the same, so that a
            // copy out of order could only cost a read of the store, never a skipped copy.
            let at = slot.recent.partition_point(|(seq, ..)| *seq < copy.seq);
            slot.recent.insert(at, (copy.seq, copy.at, copy.message));
            slot.bytes += len;
            *total += len;
            while slot.recent.len() > RECENT_COPIES || slot.bytes > RECENT_BYTES {
                match slot.recent.pop_front() {
                    Some((_, _, m)) => {
                        slot.bytes -= m.len();
                        *total -= m.len();
                    }
                    None => break,
                }
            }
        }
        drop(slots);
        // (Devices whose connections are all gone lose their slot here.)
        self.notify(committed.devices);
    }

    /// The copies that follow `after` in `device`'s queue without a gap, if the first of them
    /// is in memory (up to `count` copies and `max_bytes`, one at least), and whether more
    /// are; those up to `after` are forgotten. `None`: the store must be read.
    fn recent(
        &self,
        device: u64,
        after: u64,
        count: usize,
        max_bytes: usize,
    ) -> Option<crate::store::QueuePage> {
        let mut slots = self.lock();
        let Slots { map, bytes: total } = &mut *slots;
        let slot = map.get_mut(&device)?;
        while slot.recent.front().is_some_and(|(seq, ..)| *seq <= after) {
            if let Some((_, _, m)) = slot.recent.pop_front() {
                slot.bytes -= m.len();
                *total -= m.len();
            }
        }
        let mut page = Vec::new();
        let (mut next, mut bytes) = (after.checked_add(1)?, 0);
        for (seq, at, message) in &slot.recent {
            if *seq != next {
                break;
            }
            if page.len() == count || (!page.is_empty() && bytes + message.len() > max_bytes) {
                return Some((page, true));
            }
            bytes += message.len();
            page.push((*seq, message.to_vec(), *at));
            next += 1;
        }
        (!page.is_empty()).then_some((page, false))
    }

    /// Forgets a device's copies once no connection of it is left.
    fn release(&self, device: u64) {
        let mut slots = self.lock();
        if slots.map.get(&device).is_some_and(|slot| slot.wake.receiver_count() == 0) {
            slots.remove(device);
        }
    }
}

/// What every handler shares.
pub(crate) struct AppState {
    store: Arc<dyn Store>,
    pub(crate) config: Config,
    notifier: Arc<Notifier>,
    /// Becomes true when the server is shutting down.
    stopping: watch::Receiver<bool>,
    /// Requests per authenticated device.
    device_rate: RateLimiter<u64>,
    /// Registration attempts per client IP address.
    registration_rate: RateLimiter<IpAddr>,
    /// Bytes each client address has had stored in queues.
    ip_bytes: RateLimiter<IpAddr>,
    /// Submissions per client address (they carry no device token).
    ip_submits: RateLimiter<IpAddr>,
    /// Live connections per device.
    live: Mutex<HashMap<u64, usize>>,
    /// Bytes stored in queues per group.
    group_bytes: RateLimiter<Vec<u8>>,
    /// Files each device starts (each is a row and a file on disk, however small).
    blob_creations: RateLimiter<u64>,
    /// Challenges and tokens.
    sessions: Sessions,
    /// Bounds the writes waiting on blocking threads.
    writes: tokio::sync::Semaphore,
    /// Revoked devices: their tokens open only the wipe endpoints. Loaded at start, updated
    /// by every revocation (which all go through this API).
    revoked: std::sync::RwLock<std::collections::HashSet<u64>>,
    /// Devices of suspended, expired and deleted accounts: refused everything. Loaded at
    /// start, refreshed on every sweep and after every change through the admin API.
    barred: std::sync::RwLock<HashMap<u64, Barred>>,
    /// The operator's public key, if one was made (`sotto-server operator-key`); the admin
    /// API reloads it.
    operator_key: std::sync::RwLock<Option<Vec<u8>>>,
    /// The key transparency directory.
    kt: crate::kt::KeyDirectory,
    /// Blobs being uploaded.
    uploading: blobs::Uploading,
}

impl AppState {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        config: Config,
        sessions: Sessions,
        stopping: watch::Receiver<bool>,
        operator_key: Option<Vec<u8>>,
        kt: crate::kt::KeyDirectory,
    ) -> Result<Self, StoreError> {
        let per_second = f64::from(config.device_requests_per_second);
        let per_hour = f64::from(config.registrations_per_hour_per_ip);
        let bytes_rate = config.submit_bytes_per_second as f64;
        let revoked = store.revoked_devices()?.into_iter().collect();
        let barred = store
            .barred_devices(config.account_grace_secs, config.clock.now_secs())?
            .into_iter()
            .collect();
        // Copies reach the live connections from the store's writer, in the order they were
        // committed: a connection then finds a device's copies in memory without a gap.
        let notifier = Arc::new(Notifier::default());
        let publish = notifier.clone();
        store.publish_queued_to(Box::new(move |committed| publish.queued(committed)));
        Ok(AppState {
            revoked: std::sync::RwLock::new(revoked),
            barred: std::sync::RwLock::new(barred),
            operator_key: std::sync::RwLock::new(operator_key),
            kt,
            uploading: Default::default(),
            store,
            notifier,
            stopping,
            device_rate: RateLimiter::new(per_second, per_second * 10.0),
            registration_rate: RateLimiter::new(per_hour / 3600.0, per_hour),
            // An address may be a whole office behind one NAT: it gets the budget of
            // several devices.
            ip_bytes: RateLimiter::new(
                bytes_rate * PER_ADDRESS_DEVICES,
                bytes_rate * PER_ADDRESS_DEVICES * SUBMIT_BURST_SECS,
            ),
            ip_submits: RateLimiter::new(
                per_second * PER_ADDRESS_DEVICES,
                per_second * PER_ADDRESS_DEVICES * 10.0,
            ),
            group_bytes: RateLimiter::new(bytes_rate, bytes_rate * SUBMIT_BURST_SECS),
            blob_creations: RateLimiter::new(BLOBS_PER_SECOND, BLOB_BURST),
            live: Mutex::default(),
            sessions,
            writes: tokio::sync::Semaphore::new(MAX_CONCURRENT_WRITES),
            config,
        })
    }

    fn is_revoked(&self, device: u64) -> bool {
        self.revoked.read().unwrap_or_else(|p| p.into_inner()).contains(&device)
    }

    fn barred(&self, device: u64) -> Option<Barred> {
        self.barred.read().unwrap_or_else(|p| p.into_inner()).get(&device).copied()
    }

    /// Replaces the barred devices with `now_barred` and closes the live connections of those
    /// newly barred.
    pub(crate) fn set_barred(&self, now_barred: HashMap<u64, Barred>) {
        let mut barred = self.barred.write().unwrap_or_else(|p| p.into_inner());
        let newly: Vec<u64> =
            now_barred.keys().filter(|d| !barred.contains_key(d)).copied().collect();
        *barred = now_barred;
        drop(barred);
        self.notifier.notify(newly);
    }

    /// Reads the barred devices from the store again.
    pub(crate) async fn refresh_barred(self: &Arc<Self>) {
        let (grace, now) = (self.config.account_grace_secs, self.config.clock.now_secs());
        let state = self.clone();
        match blocking(&state, move |s| s.barred_devices(grace, now)).await {
            Ok(list) => self.set_barred(list.into_iter().collect()),
            Err(e) => tracing::warn!(error = %e.message, "reading barred accounts failed"),
        }
    }

    pub(crate) fn operator_key(&self) -> Option<Vec<u8>> {
        self.operator_key.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts a new operator key in service (after `sotto-server operator-key`).
    pub(crate) fn set_operator_key(&self, key: Option<Vec<u8>>) {
        *self.operator_key.write().unwrap_or_else(|p| p.into_inner()) = key;
    }

    /// Marks devices revoked and wakes their live connections, which then close.
    fn revoke(&self, devices: &[u64]) {
        self.revoked.write().unwrap_or_else(|p| p.into_inner()).extend(devices);
        self.notifier.notify(devices.iter().copied());
    }
}

type Shared = Arc<AppState>;

/// An error answer: status, stable code and message. Built in one place from store errors.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    epoch: Option<u64>,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), epoch: None, retry_after: None }
    }

    fn rate_limited(what: &str, wait: std::time::Duration) -> Self {
        let secs = wait.as_secs() + 1;
        ApiError {
            retry_after: Some(secs),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                format!("too many {what}; retry in {secs} s"),
            )
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }

    fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }

    fn internal(context: &str, detail: &dyn std::fmt::Display) -> Self {
        tracing::error!(%detail, "{context}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, "internal server error")
    }

    fn body(&self) -> proto::ErrorBody {
        proto::ErrorBody {
            error: proto::ErrorDetail {
                code: self.code,
                message: self.message.clone(),
                epoch: self.epoch,
            },
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        use StatusCode as S;
        match e {
            StoreError::AddressTaken => {
                Self::new(S::CONFLICT, ErrorCode::AddressTaken, "address already registered")
            }
            StoreError::InviteInvalid => {
                Self::new(S::FORBIDDEN, ErrorCode::InviteInvalid, "unknown invite code")
            }
            StoreError::InviteExpired => {
                Self::new(S::FORBIDDEN, ErrorCode::InviteExpired, "invite code has expired")
            }
            StoreError::InviteUsedUp => {
                Self::new(S::FORBIDDEN, ErrorCode::InviteUsedUp, "invite code has no uses left")
            }
            StoreError::DeviceKeyTaken => {
                Self::bad_request("this device key is already registered")
            }
            StoreError::StaleEpoch { current } => ApiError {
                epoch: Some(current),
                ..Self::new(
                    S::CONFLICT,
                    ErrorCode::StaleEpoch,
                    format!("the group has moved on to epoch {current}; catch up and retry"),
                )
            },
            StoreError::UnknownDevice(d) => {
                Self::new(S::NOT_FOUND, ErrorCode::UnknownDevice, format!("unknown device {d}"))
            }
            StoreError::QueueFull { device } => Self::new(
                S::INSUFFICIENT_STORAGE,
                ErrorCode::QueueFull,
                format!("the queue of device {device} is full until that device catches up"),
            ),
            StoreError::ListConflict => Self::new(
                S::CONFLICT,
                ErrorCode::InvalidDeviceList,
                "the device list changed meanwhile; fetch it and try again",
            ),
            StoreError::UnknownLink => devices::unknown_link(),
            StoreError::NotMember => Self::new(
                S::FORBIDDEN,
                ErrorCode::NotMember,
                "the group's credential does not match: not a member of this group",
            ),
            StoreError::GroupUnsealed => Self::new(
                S::CONFLICT,
                ErrorCode::GroupUnsealed,
                "the server holds no sealed roster for this group: submit again with a device \
                 token and the group's roster",
            ),
            StoreError::SubmissionConflict => Self::new(
                S::CONFLICT,
                ErrorCode::SubmissionConflict,
                "this submission id was used for a different submission; use a new one",
            ),
            StoreError::BlobQuota { used, quota } => Self::new(
                S::INSUFFICIENT_STORAGE,
                ErrorCode::QuotaExceeded,
                format!(
                    "your files on this server take {used} of {quota} bytes; this one does not fit"
                ),
            ),
            StoreError::LinkTaken => {
                Self::new(S::CONFLICT, ErrorCode::LinkTaken, "that part of the link is set already")
            }
            StoreError::Unwritable(detail) => {
                tracing::error!(%detail, "storage cannot be written; refusing new data");
                Self::new(
                    S::INSUFFICIENT_STORAGE,
                    ErrorCode::StorageFull,
                    "the server cannot store anything new right now (storage full or read-only)",
                )
            }
            StoreError::NoAccount => {
                Self::new(S::NOT_FOUND, ErrorCode::UnknownUser, "no such account")
            }
            StoreError::AccountDeleted => barred_error(Barred::Deleted),
            other => Self::internal("store failed", &other),
        }
    }
}

/// The answer to a device whose account is refused service. The device keeps its data.
fn barred_error(why: Barred) -> ApiError {
    let (code, message) = match why {
        Barred::Suspended => (
            ErrorCode::AccountSuspended,
            "this account is suspended by the server's operator; this device keeps its messages \
             and works again once the account is resumed",
        ),
        Barred::Expired => (
            ErrorCode::AccountExpired,
            "this account's term has ended; ask the server's operator to renew it (this device \
             keeps its messages)",
        ),
        Barred::Deleted => (
            ErrorCode::AccountDeleted,
            "this account was deleted by the server's operator; this device keeps what it holds",
        ),
    };
    ApiError::new(StatusCode::FORBIDDEN, code, message)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

/// `Json` whose rejections are [`ApiError`]s.
pub(crate) struct ApiJson<T>(T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // Bodies are buffered whole before parsing: the bytes buffered at once, over every
        // connection, are bounded, so slow senders of large bodies cannot exhaust memory.
        let announced = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .unwrap_or(MAX_BODY);
        let kib = u32::try_from(announced.min(MAX_BODY) / 1024 + 1).unwrap_or(u32::MAX);
        // Sealed submissions carry no token (their credential is checked once the body is
        // in): they have a budget of their own, so bodies sent without a token to this route
        // hold up neither members' other requests nor logging in.
        let budget = if req.uri().path() == "/v1/messages" {
            &SUBMIT_BUFFERING
        } else if req.extensions().get::<Authenticated>().is_some() {
            &BUFFERING
        } else {
            &PUBLIC_BUFFERING
        };
        let read = async {
            let _permit =
                if announced > UNBUDGETED { Some(budget.acquire_many(kib).await) } else { None };
            Json::<T>::from_request(req, state).await
        };
        let Ok(parsed) = tokio::time::timeout(BODY_TIMEOUT, read).await else {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::BadRequest,
                format!("the request body did not arrive within {} s", BODY_TIMEOUT.as_secs()),
            ));
        };
        match parsed {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::BytesRejection(r))
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ErrorCode::TooLarge,
                    "request body larger than this endpoint takes",
                ))
            }
            Err(r) => Err(ApiError::bad_request(r.body_text())),
        }
    }
}

/// The device a request's bearer token belongs to; never a revoked one.
pub(crate) struct AuthDevice(u64);

/// Like [`AuthDevice`], but a revoked device passes too (it may fetch its wipe command).
pub(crate) struct AnyDevice(u64);

/// The authenticated device, if the request carries a token at all.
pub(crate) struct MaybeDevice(Option<u64>);

fn revoked_error() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        ErrorCode::DeviceRevoked,
        "this device was revoked; it can only fetch its wipe command",
    )
}

impl FromRequestParts<Shared> for AuthDevice {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        let device = authenticate(parts, state)?;
        if let Some(why) = state.barred(device) {
            return Err(barred_error(why));
        }
        if state.is_revoked(device) {
            return Err(revoked_error());
        }
        Ok(AuthDevice(device))
    }
}

impl FromRequestParts<Shared> for AnyDevice {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        let device = authenticate(parts, state)?;
        // A revoked device may always learn of (and confirm) a wipe, whatever became of its
        // account since: an operator who wipes a lost device and then suspends or deletes the
        // account must not keep the wipe from it.
        if !state.is_revoked(device)
            && let Some(why) = state.barred(device)
        {
            return Err(barred_error(why));
        }
        Ok(AnyDevice(device))
    }
}

impl FromRequestParts<Shared> for MaybeDevice {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        if !parts.headers.contains_key(axum::http::header::AUTHORIZATION) {
            return Ok(MaybeDevice(None));
        }
        Ok(MaybeDevice(Some(AuthDevice::from_request_parts(parts, state).await?.0)))
    }
}

/// Marks a request whose token was verified (its body then counts against the members'
/// buffering budget).
#[derive(Debug, Clone, Copy)]
struct Authenticated;

fn authenticate(parts: &mut Parts, state: &Shared) -> Result<u64, ApiError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization header"))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer TOKEN"))?;
    let device = state
        .sessions
        .verify(token, unix_now())
        .ok_or_else(|| ApiError::unauthorized("unknown or expired token"))?;
    state.device_rate.check(device).map_err(|wait| ApiError::rate_limited("requests", wait))?;
    parts.extensions.insert(Authenticated);
    Ok(device)
}

/// Hands a write to the store's writer without a blocking thread (see
/// [`Store::submit_queued`]) and waits for its answer, holding one of
/// [`MAX_CONCURRENT_WRITES`] permits meanwhile, so a flood of submissions waits its turn
/// without holding anything. (A request cancelled while its write is queued gives its permit
/// back, and the writer still does the write: what bounds the queue then is the per-device
/// and per-address rates.)
async fn queued_write<T>(
    state: &Shared,
    start: impl FnOnce(&dyn Store) -> crate::store::Pending<T>,
) -> Result<T, ApiError> {
    let _permit =
        state.writes.acquire().await.map_err(|e| ApiError::internal("write limiter closed", &e))?;
    match start(state.store.as_ref()).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::internal("store writer stopped", &e)),
    }
}

/// Runs a store call on a blocking thread.
async fn blocking<T: Send + 'static>(
    state: &Shared,
    f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || f(store.as_ref())).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::internal("store task failed", &e)),
    }
}

fn parse_address(state: &Shared, text: &str) -> Result<Address, ApiError> {
    let address: Address = text.parse().map_err(|e: sotto_core::Error| {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidAddress, e.to_string())
    })?;
    if address.domain() != state.config.domain {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::WrongDomain,
            format!(
                "this server hosts @{} addresses, not @{}",
                state.config.domain,
                address.domain()
            ),
        ));
    }
    Ok(address)
}

/// Every route: its path, the methods it answers, and its handlers. The router is built from
/// this table, and the authorization matrix test runs over it, so a route cannot be added
/// without a row in that matrix (docs/reliability.md).
fn routes() -> Vec<(&'static str, &'static [&'static str], axum::routing::MethodRouter<Shared>)> {
    vec![
        ("/v1/info", &["GET"], get(info)),
        ("/v1/openapi.json", &["GET"], get(openapi_document)),
        ("/healthz", &["GET"], get(healthz)),
        ("/readyz", &["GET"], get(readyz)),
        ("/v1/register", &["POST"], post(register).layer(DefaultBodyLimit::max(SMALL_BODY))),
        ("/v1/auth/challenge", &["POST"], post(challenge).layer(DefaultBodyLimit::max(LOGIN_BODY))),
        ("/v1/auth/token", &["POST"], post(token).layer(DefaultBodyLimit::max(LOGIN_BODY))),
        ("/v1/keypackages", &["POST", "GET"], post(upload_key_packages).get(key_package_stock)),
        ("/v1/keypackages/claim", &["POST"], post(claim_key_packages)),
        ("/v1/users/{address}/devices", &["GET"], get(devices::list)),
        ("/v1/devices", &["POST"], post(devices::update)),
        ("/v1/devices/wipe", &["POST"], post(devices::wipe)),
        (
            "/v1/operator/wipe",
            &["POST"],
            post(devices::operator_wipe).layer(DefaultBodyLimit::max(SMALL_BODY)),
        ),
        ("/v1/wipe", &["GET"], get(devices::pending_wipe)),
        ("/v1/wipe/confirm", &["POST"], post(devices::confirm_wipe)),
        ("/v1/links", &["POST"], post(devices::open_link).layer(DefaultBodyLimit::max(LINK_BODY))),
        ("/v1/links/{id}", &["GET", "POST"], get(devices::get_link).post(devices::reply_link)),
        ("/v1/recover", &["POST"], post(devices::recover).layer(DefaultBodyLimit::max(SMALL_BODY))),
        ("/v1/blobs", &["POST"], post(blobs::create)),
        (
            "/v1/blobs/{id}",
            &["GET", "PUT", "DELETE"],
            get(blobs::download)
                .put(blobs::upload)
                .delete(blobs::delete)
                // An upload is streamed to disk, bounded by its file's announced size.
                .layer(DefaultBodyLimit::disable()),
        ),
        ("/v1/blobs/{id}/status", &["GET"], get(blobs::status)),
        ("/v1/kt/roots", &["GET"], get(kt::roots)),
        ("/v1/kt/lookup/{address}", &["GET"], get(kt::lookup)),
        ("/v1/kt/history/{address}", &["GET"], get(kt::history)),
        ("/v1/kt/audit", &["GET"], get(kt::audit)),
        ("/v1/messages", &["POST"], post(submit)),
        ("/v1/queue", &["GET"], get(fetch)),
        ("/v1/queue/ack", &["POST"], post(ack)),
        ("/v1/queue/key", &["PUT"], put(set_queue_key).layer(DefaultBodyLimit::max(SMALL_BODY))),
        ("/v1/ws", &["GET"], get(websocket)),
    ]
}

/// Routes whose requests are message traffic, never logged one by one.
const MESSAGE_TRAFFIC: [&str; 5] =
    ["/v1/messages", "/v1/queue", "/v1/queue/ack", "/v1/queue/key", "/v1/ws"];

/// Counts each answered request by its route's template and status.
async fn count_request(
    path: Option<axum::extract::MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let response = next.run(request).await;
    let route = path.as_ref().map_or("other", |p| p.as_str());
    let status = response.status().as_u16();
    crate::metrics::METRICS.request(route, status);
    // The route's template, never the path a client sent (it may hold an address or id).
    // Message traffic (submissions, fetches, acknowledgements, live delivery) is not logged
    // at any level: a log of it would say who talks when.
    if !MESSAGE_TRAFFIC.contains(&route) {
        tracing::debug!(%method, route, status, micros = started.elapsed().as_micros() as u64, "answered");
    }
    response
}

pub(crate) fn router(state: Shared) -> Router {
    routes()
        .into_iter()
        .fold(Router::new(), |router, (path, _, handlers)| router.route(path, handlers))
        .route_layer(axum::middleware::from_fn(count_request))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, ErrorCode::BadRequest, "no such endpoint")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// `GET /v1/openapi.json`: the API's OpenAPI 3.1 document (docs/openapi.json).
async fn openapi_document() -> Response {
    static DOCUMENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(openapi::document_json);
    ([(axum::http::header::CONTENT_TYPE, "application/json")], DOCUMENT.as_str()).into_response()
}

/// `GET /healthz`: the process answers (for a supervisor's liveness check).
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// `GET /readyz`: the store answers a query too (for a load balancer's readiness check);
/// otherwise the store's error (500 `internal`, or 507 `storage_full`). Says nothing else
/// about the server.
async fn readyz(State(state): State<Shared>) -> Result<Json<serde_json::Value>, ApiError> {
    blocking(&state, |s| s.device(0)).await?;
    Ok(Json(serde_json::json!({ "status": "ready" })))
}

async fn info(State(state): State<Shared>) -> Json<proto::ServerInfo> {
    Json(proto::ServerInfo {
        domain: state.config.domain.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        registration: state.config.registration,
        operator_key: state.operator_key().map(Bytes),
        kt: Some(proto::KtKeys {
            signing_key: Bytes(state.kt.signing_key()),
            vrf_key: Bytes(state.kt.vrf_key().to_vec()),
        }),
    })
}

/// The client's address: the peer's, or, when the peer is a trusted reverse proxy, the
/// nearest address in `X-Forwarded-For` that is not itself a trusted proxy.
fn client_ip(state: &Shared, peer: IpAddr, headers: &axum::http::HeaderMap) -> IpAddr {
    let trusted = &state.config.trusted_proxies;
    if !trusted.contains(&peer) {
        return peer;
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|a| a.trim().parse::<IpAddr>())
        .collect::<Vec<_>>();
    let mut nearest = peer;
    for address in forwarded.into_iter().rev() {
        match address {
            Ok(ip) if trusted.contains(&ip) => nearest = ip,
            Ok(ip) => return ip,
            // A malformed entry: nothing further out can be trusted.
            Err(_) => break,
        }
    }
    nearest
}

/// The client's address as limits count it (see [`client_ip`] and
/// [`crate::limits::address_bucket`]).
pub(crate) struct ClientIp(IpAddr);

impl FromRequestParts<Shared> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<PeerAddr>>()
            .map(|c| c.0.0.ip())
            .ok_or_else(|| ApiError::internal("no peer address", &"missing ConnectInfo"))?;
        Ok(ClientIp(crate::limits::address_bucket(client_ip(state, peer, &parts.headers))))
    }
}

async fn register(
    State(state): State<Shared>,
    ClientIp(client): ClientIp,
    ApiJson(req): ApiJson<proto::RegisterRequest>,
) -> Result<Json<proto::RegisterResponse>, ApiError> {
    // Every attempt counts, successful or not: this also slows down guessing invite codes.
    state
        .registration_rate
        .check(client)
        .map_err(|wait| ApiError::rate_limited("registrations from this address", wait))?;
    let address = parse_address(&state, &req.address)?;
    if req.device_key.0.len() != 32 {
        return Err(ApiError::bad_request("device_key must be a 32-byte Ed25519 public key"));
    }
    let payload = auth::registration_payload(&address, &req.device_key.0);
    if !auth::verify(&req.device_key.0, &payload, &req.signature.0) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::BadSignature,
            "registration signature does not verify with the device key",
        ));
    }
    let invite_hash = match (state.config.registration, req.invite.as_deref()) {
        (proto::RegistrationMode::Open, _) => None,
        (proto::RegistrationMode::Invite, None | Some("")) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::InviteRequired,
                "this server registers by invite only; ask its operator for an invite code",
            ));
        }
        (proto::RegistrationMode::Invite, Some(code)) => Some(invite_hash(code.trim())),
    };
    let list = devices::first_list(&state, &address, &req.device_key.0, &req.device_list)?;
    let list_for_kt = list.clone();
    let addr = address.to_string();
    let key = req.device_key.0;
    let device_id = blocking(&state, move |s| {
        let account = NewAccount {
            address: &addr,
            device_key: &key,
            invite_hash: invite_hash.as_deref(),
            list: &list,
        };
        s.register(&account, unix_now())
    })
    .await?;
    kt::publish(&state, &address, &list_for_kt).await;
    tracing::info!(device_id, "registered a new account");
    Ok(Json(proto::RegisterResponse { address: address.to_string(), device_id }))
}

async fn challenge(
    State(state): State<Shared>,
    ApiJson(req): ApiJson<proto::ChallengeRequest>,
) -> Result<Json<proto::ChallengeResponse>, ApiError> {
    let device_id = req.device_id;
    if blocking(&state, move |s| s.device(device_id)).await?.is_none() {
        return Err(StoreError::UnknownDevice(device_id).into());
    }
    let nonce = state
        .sessions
        .challenge(device_id, unix_now())
        .map_err(|e| ApiError::internal("making a challenge failed", &e))?;
    Ok(Json(proto::ChallengeResponse { nonce: Bytes(nonce) }))
}

async fn token(
    State(state): State<Shared>,
    ApiJson(req): ApiJson<proto::TokenRequest>,
) -> Result<Json<proto::TokenResponse>, ApiError> {
    let device_id = req.device_id;
    let now = unix_now();
    let invalid = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::ChallengeInvalid,
            "unknown, used or expired challenge; request a new one",
        )
    };
    if !state.sessions.check(device_id, &req.nonce.0, now) {
        return Err(invalid());
    }
    let device = blocking(&state, move |s| s.device(device_id)).await?.ok_or_else(invalid)?;
    let payload = auth::challenge_payload(&state.config.domain, device_id, &req.nonce.0);
    if !auth::verify(&device.device_key, &payload, &req.signature.0) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::BadSignature,
            "challenge signature does not verify with the device key",
        ));
    }
    // A correctly signed nonce gives one token: a replay of the same answer is refused.
    if !state.sessions.consume(&req.nonce.0, now) {
        return Err(invalid());
    }
    let address = device.address.clone();
    let account = blocking(&state, move |s| s.account(&address)).await?;
    let grace = state.config.account_grace_secs;
    // A token never outlives the account's term and grace period.
    let mut ttl = state.config.token_ttl_secs;
    if let Some(account) = &account {
        // A revoked device still logs in, to fetch a wipe ordered for it: its token opens
        // nothing else (every other route refuses it, barred account or not).
        if let Some(why) = account.barred(state.config.account_grace_secs, unix_now())
            && !state.is_revoked(device_id)
        {
            return Err(barred_error(why));
        }
        if let Some(end) = account.valid_until.map(|t| t.saturating_add(grace))
            && !state.is_revoked(device_id)
        {
            ttl = ttl.min(end.saturating_sub(now).max(1));
        }
    }
    // "Last seen" for the account's device list, to the hour (when a device logs in is
    // traffic too); a full disk must not stop logins.
    let seen = now - now % 3600;
    if let Err(e) = blocking(&state, move |s| s.touch_device(device_id, seen)).await {
        tracing::debug!(?e, "could not record a login");
    }
    let token = state.sessions.token(device_id, now + ttl);
    Ok(Json(proto::TokenResponse { token, expires_in: ttl }))
}

/// The ciphersuite a key package (MLS wire format: `version`, then `cipher_suite`) names, if
/// it is an MLS 1.0 key package at all. The server keeps packages apart by suite; whether the
/// rest is sound is for whoever claims it to check.
fn key_package_suite(kp: &[u8]) -> Option<u16> {
    match kp {
        [0, 1, hi, lo, ..] => Some(u16::from_be_bytes([*hi, *lo])),
        _ => None,
    }
}

fn count(stocks: Vec<KeyPackageStock>) -> proto::KeyPackageCount {
    let classical = stocks.iter().find(|s| s.ciphersuite == proto::CLASSICAL_SUITE);
    proto::KeyPackageCount {
        remaining: classical.map_or(0, |s| s.remaining),
        last_resort: classical.is_some_and(|s| s.last_resort),
        suites: Some(
            stocks
                .iter()
                .map(|s| proto::SuiteStock {
                    ciphersuite: s.ciphersuite,
                    remaining: s.remaining,
                    last_resort: s.last_resort,
                })
                .collect(),
        ),
    }
}

async fn upload_key_packages(
    State(state): State<Shared>,
    AuthDevice(device): AuthDevice,
    ApiJson(req): ApiJson<proto::UploadKeyPackages>,
) -> Result<Json<proto::KeyPackageCount>, ApiError> {
    if req.key_packages.len() > MAX_KEY_PACKAGES_PER_UPLOAD {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_KEY_PACKAGES_PER_UPLOAD} key packages per upload"
        )));
    }
    let all = req.key_packages.iter().chain(req.last_resort.iter());
    if all.clone().any(|k| k.0.is_empty() || k.0.len() > MAX_KEY_PACKAGE_LEN) {
        return Err(ApiError::bad_request(format!(
            "each key package must be 1 to {MAX_KEY_PACKAGE_LEN} bytes"
        )));
    }
    let mut suites = all.map(|k| key_package_suite(&k.0));
    let suite = match suites.next() {
        None => proto::CLASSICAL_SUITE,
        Some(None) => return Err(ApiError::bad_request("not an MLS 1.0 key package")),
        Some(Some(first)) => {
            if let Some(other) = suites.find(|s| *s != Some(first)) {
                return Err(ApiError::bad_request(match other {
                    None => "not an MLS 1.0 key package".to_string(),
                    Some(_) => "the key packages of one upload must share a ciphersuite".into(),
                }));
            }
            first
        }
    };
    // Only the suites Sotto speaks: each has its own stock, so any other code would be
    // storage beyond the per-device bound.
    if !proto::SUITES.contains(&suite) {
        return Err(ApiError::bad_request(format!("unsupported ciphersuite 0x{suite:04x}")));
    }
    let one_time: Vec<Vec<u8>> = req.key_packages.into_iter().map(|k| k.0).collect();
    let last_resort = req.last_resort.map(|k| k.0);
    let replace = req.replace;
    let stock = blocking(&state, move |s| {
        let stock = s.key_package_stock(device)?;
        let on_file = match stock.iter().find(|s| s.ciphersuite == suite) {
            Some(s) if !replace => s.remaining,
            _ => 0,
        };
        if on_file + one_time.len() as u64 > MAX_KEY_PACKAGES_STOCK {
            return Ok(Err(on_file));
        }
        s.add_key_packages(device, suite, &one_time, last_resort.as_deref(), replace).map(Ok)
    })
    .await?
    .map_err(|on_file| {
        ApiError::bad_request(format!(
            "a device may keep at most {MAX_KEY_PACKAGES_STOCK} key packages of a ciphersuite \
             ({on_file} on file)"
        ))
    })?;
    Ok(Json(count(stock)))
}

async fn key_package_stock(
    State(state): State<Shared>,
    AuthDevice(device): AuthDevice,
) -> Result<Json<proto::KeyPackageCount>, ApiError> {
    let stock = blocking(&state, move |s| s.key_package_stock(device)).await?;
    Ok(Json(count(stock)))
}

fn unknown_user(address: &Address) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, ErrorCode::UnknownUser, format!("no account {address}"))
}

async fn claim_key_packages(
    State(state): State<Shared>,
    AuthDevice(_): AuthDevice,
    ApiJson(req): ApiJson<proto::ClaimRequest>,
) -> Result<Json<proto::ClaimResponse>, ApiError> {
    let address = parse_address(&state, &req.address)?;
    let addr = address.to_string();
    let only = req.device_ids;
    let suites = match req.ciphersuites {
        None => vec![proto::CLASSICAL_SUITE],
        Some(list) if list.is_empty() || list.len() > MAX_CLAIM_SUITES => {
            return Err(ApiError::bad_request(format!(
                "ciphersuites names 1 to {MAX_CLAIM_SUITES} suites"
            )));
        }
        Some(list) => list,
    };
    let (exists, claimed) = blocking(&state, move |s| {
        let exists = !s.devices(&addr)?.is_empty();
        let claimed = if exists {
            s.claim_key_packages(&addr, only.as_deref(), &suites)?
        } else {
            Vec::new()
        };
        Ok((exists, claimed))
    })
    .await?;
    if !exists {
        return Err(unknown_user(&address));
    }
    Ok(Json(proto::ClaimResponse {
        address: address.to_string(),
        key_packages: claimed
            .into_iter()
            .map(|(device_id, kp)| proto::ClaimedKeyPackage { device_id, key_package: Bytes(kp) })
            .collect(),
    }))
}

/// Refuses a submission's shape before anything is looked up: sizes, credentials, what only
/// a commit may carry, and device lists that name a device twice.
fn check_submission(req: &proto::SubmitRequest) -> Result<(), ApiError> {
    if req.group_id.0.is_empty() || req.group_id.0.len() > 64 {
        return Err(ApiError::bad_request("group_id must be 1 to 64 bytes"));
    }
    if req.submission_id.as_ref().is_some_and(|id| id.0.is_empty() || id.0.len() > 64) {
        return Err(ApiError::bad_request("submission_id must be 1 to 64 bytes"));
    }
    // Epochs and times are kept as SQLite integers.
    if req.epoch >= i64::MAX as u64 || req.expires_at.is_some_and(|t| t > i64::MAX as u64 / 2) {
        return Err(ApiError::bad_request("epoch or expires_at out of range"));
    }
    let commit = req.kind == proto::SubmitKind::Commit;
    if !commit
        && (req.welcome.is_some() || !req.removed.is_empty() || req.next_credential.is_some())
    {
        return Err(ApiError::bad_request(
            "only a commit carries a welcome, removes devices or brings the next credential",
        ));
    }
    let credential_len = sotto_core::roster::CREDENTIAL_LEN;
    let well_formed = |c: &Option<Bytes>| c.as_ref().is_some_and(|c| c.0.len() == credential_len);
    if !well_formed(&req.credential) {
        return Err(ApiError::bad_request(format!(
            "a submission carries the group's credential ({credential_len} bytes)"
        )));
    }
    if commit && !well_formed(&req.next_credential) {
        return Err(ApiError::bad_request(format!(
            "a commit carries the next epoch's credential ({credential_len} bytes)"
        )));
    }
    if !req.delivery.recipients.is_empty() {
        return Err(ApiError::bad_request(
            "a message goes to the group's roster: it names no recipients",
        ));
    }
    let lists = [
        ("removed", &req.removed),
        ("welcome recipients", req.welcome.as_ref().map_or(&req.removed, |w| &w.recipients)),
        ("roster", req.roster.as_ref().unwrap_or(&req.removed)),
    ];
    for (what, list) in lists {
        if list.len() > MAX_RECIPIENTS {
            return Err(ApiError::bad_request(format!("at most {MAX_RECIPIENTS} {what}")));
        }
        let mut seen = std::collections::HashSet::with_capacity(list.len());
        if let Some(d) = list.iter().find(|d| !seen.insert(**d)) {
            return Err(ApiError::bad_request(format!("device {d} is named twice in {what}")));
        }
    }
    if req.welcome.as_ref().is_some_and(|w| w.recipients.is_empty()) {
        return Err(ApiError::bad_request("a welcome needs at least one recipient"));
    }
    if std::iter::once(&req.delivery).chain(req.welcome.as_ref()).any(|d| d.message.0.is_empty()) {
        return Err(ApiError::bad_request("empty message"));
    }
    Ok(())
}

/// What a submission's idempotency id stands for: a repeat must carry the same content.
fn submission_digest(req: &proto::SubmitRequest) -> [u8; 32] {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field(b"sotto-submission-v2");
    field(&req.group_id.0);
    field(&[req.kind as u8]);
    field(&req.epoch.to_be_bytes());
    field(&req.expires_at.map_or([0xff; 8], u64::to_be_bytes));
    let ids = |ids: &[u64]| ids.iter().flat_map(|d| d.to_be_bytes()).collect::<Vec<u8>>();
    for d in std::iter::once(&req.delivery).chain(req.welcome.as_ref()) {
        field(&ids(&d.recipients));
        field(&d.message.0);
    }
    field(&ids(&req.removed));
    h.finalize().into()
}

/// `POST /v1/messages`: a sealed submission. The request names no device (a token is looked
/// at only when the group has no sealed roster yet); the group's credential shows that a
/// member made it. What one request stores is bounded per client address and per group,
/// besides each recipient's queue limits.
async fn submit(
    State(state): State<Shared>,
    ClientIp(ip): ClientIp,
    MaybeDevice(device): MaybeDevice,
    ApiJson(req): ApiJson<proto::SubmitRequest>,
) -> Result<Json<proto::SubmitResponse>, ApiError> {
    state.ip_submits.check(ip).map_err(|wait| ApiError::rate_limited("submissions", wait))?;
    check_submission(&req)?;
    let credential = |c: Option<Bytes>| {
        c.map(|c| sotto_core::roster::GroupCredential::from_bytes(&c.0))
            .transpose()
            .map_err(|e| ApiError::bad_request(e.to_string()))
    };
    let digest = submission_digest(&req);
    let current = credential(req.credential)?.ok_or(ApiError::bad_request("no credential"))?;
    let next = credential(req.next_credential)?;
    // Bytes this request may store: the message once per roster device at most, the welcome
    // once per device it adds. The roster is sealed, so its size is bounded by the limit.
    let welcome_bytes =
        req.welcome.as_ref().map_or(0, |w| w.message.0.len() * w.recipients.len()) as f64;
    let per_second = state.config.submit_bytes_per_second as f64;
    let message_bytes = req.delivery.message.0.len() as f64;
    if message_bytes + welcome_bytes > per_second * SUBMIT_BURST_SECS {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooLarge,
            format!(
                "this submission would store {} bytes in queues; the limit is {}",
                (message_bytes + welcome_bytes) as u64,
                (per_second * SUBMIT_BURST_SECS) as u64
            ),
        ));
    }
    // The address pays for what it sends at once, refused or not; the group only for what
    // was stored (a stranger who knows a group's id cannot spend its budget), but a group in
    // debt waits.
    state
        .ip_bytes
        .check_n(ip, message_bytes + welcome_bytes)
        .map_err(|wait| ApiError::rate_limited("bytes queued from this address", wait))?;
    let group_key = req.group_id.0.clone();
    state
        .group_bytes
        .peek(&group_key, message_bytes)
        .map_err(|wait| ApiError::rate_limited("bytes queued in this group", wait))?;
    let ordering = match req.kind {
        proto::SubmitKind::Application => Ordering::NotBefore(req.epoch),
        proto::SubmitKind::Commit => Ordering::Advance(req.epoch),
        proto::SubmitKind::Proposal => Ordering::AtEpoch(req.epoch),
    };
    let submission_id = req.submission_id.map(|id| id.0);
    let group_id = req.group_id.0;
    let message = req.delivery.message.0;
    let welcome = req.welcome.map(|w| (w.recipients, w.message.0));
    let (removed, roster) = (req.removed, req.roster);
    let limits = state.config.queue_limits;
    // Queued copies keep their time only to the minute (or an eighth of the time-to-live, if
    // that is shorter): enough to expire them, too little to line copies up by the second.
    let grain = (state.config.message_ttl_secs / 8).clamp(1, 60);
    let now = unix_now();
    let queue_time = now / grain * grain;
    // A disappearing message's expiry is the sender's clock plus the timer: kept as it came,
    // it would give the second it was sent. It is rounded up to the minute, or to an eighth of
    // the time it has left if that is shorter (a copy must not outlive a short timer by much).
    let expires_at = req.expires_at.map(|t| {
        let grain = (t.saturating_sub(now) / 8).clamp(1, grain);
        t.div_ceil(grain).saturating_mul(grain)
    });
    let done = queued_write(&state, |s| {
        let submission = Submission {
            id: submission_id.as_deref(),
            digest,
            group_id: &group_id,
            ordering,
            to: crate::store::To::Group(crate::store::GroupAuth {
                credential: &current,
                next: next.as_ref(),
                device,
                roster: roster.as_deref(),
            }),
            message: &message,
            welcome: welcome.as_ref().map(|(r, m)| (r.as_slice(), m.as_slice())),
            removed: &removed,
            limits,
            expires_at,
        };
        s.submit_queued(&submission, queue_time)
    })
    .await?;
    let queued = done.recipients.len() as u64;
    // What the copies took is charged now, so a large group's senders wait longer.
    let stored = done.bytes as f64;
    state.ip_bytes.charge(ip, (stored - message_bytes - welcome_bytes).max(0.0));
    state.group_bytes.charge(group_key, stored);
    let metrics = &crate::metrics::METRICS;
    metrics.submissions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    metrics.queued.fetch_add(queued, std::sync::atomic::Ordering::Relaxed);
    // (The store's writer has kept the copies and woken their devices.)
    Ok(Json(proto::SubmitResponse { epoch: done.epoch, dropped: done.dropped }))
}

/// `GET /v1/queue`: a page of the device's queue, in JSON, or in binary for a client that
/// accepts [`proto::live::PAGE_MEDIA_TYPE`] (no base64, no JSON on the catch-up path).
async fn fetch(
    State(state): State<Shared>,
    AuthDevice(device): AuthDevice,
    headers: axum::http::HeaderMap,
    query: Result<Query<proto::QueueQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|r| ApiError::bad_request(r.body_text()))?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let not_before = unix_now().saturating_sub(state.config.message_ttl_secs);
    let (messages, more) =
        blocking(&state, move |s| s.fetch(device, q.after, limit, not_before, PAGE_MAX_BYTES))
            .await?;
    crate::metrics::METRICS
        .delivered
        .fetch_add(messages.len() as u64, std::sync::atomic::Ordering::Relaxed);
    if accepts(&headers, proto::live::PAGE_MEDIA_TYPE) {
        let bytes = messages.iter().map(|(_, m, _)| m.len()).sum();
        let mut page = proto::live::queue_page(more, messages.len(), bytes);
        for (seq, message, at) in &messages {
            proto::live::put_message(&mut page, *seq, *at, message);
        }
        let headers = [
            (axum::http::header::CONTENT_TYPE, proto::live::PAGE_MEDIA_TYPE),
            (axum::http::header::VARY, "accept"),
        ];
        return Ok((headers, page).into_response());
    }
    let page = proto::QueueResponse {
        messages: messages
            .into_iter()
            .map(|(seq, m, at)| proto::QueuedMessage { seq, message: Bytes(m), at: Some(at) })
            .collect(),
        more,
    };
    Ok(([(axum::http::header::VARY, "accept")], Json(page)).into_response())
}

/// Whether the request's `Accept` names `media_type` (parameters such as `q` are not weighed:
/// a client names the binary page only to get it).
fn accepts(headers: &axum::http::HeaderMap, media_type: &str) -> bool {
    headers.get_all(axum::http::header::ACCEPT).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case(media_type))
        })
    })
}

async fn set_queue_key(
    State(state): State<Shared>,
    AuthDevice(device): AuthDevice,
    ApiJson(req): ApiJson<proto::QueueKey>,
) -> Result<Json<proto::QueueKey>, ApiError> {
    // A key the server cannot seal to would fail every submission to the device's groups:
    // it is tried now.
    sotto_core::queue::Sealer::new(&req.key.0, device)
        .map_err(|e| ApiError::bad_request(format!("not a usable queue key: {e}")))?;
    let key = req.key.0.clone();
    blocking(&state, move |s| s.set_queue_key(device, &key)).await?;
    Ok(Json(req))
}

async fn ack(
    State(state): State<Shared>,
    AuthDevice(device): AuthDevice,
    ApiJson(req): ApiJson<proto::AckRequest>,
) -> Result<Json<proto::AckResponse>, ApiError> {
    let removed = queued_write(&state, |s| s.ack_queued(device, req.up_to)).await?;
    crate::metrics::METRICS.acknowledged.fetch_add(removed, std::sync::atomic::Ordering::Relaxed);
    Ok(Json(proto::AckResponse { up_to: req.up_to, removed }))
}

/// One of a device's live connections, counted until dropped.
struct LiveSlot(Shared, u64);

impl LiveSlot {
    fn take(state: &Shared, device: u64) -> Option<LiveSlot> {
        let mut live = state.live.lock().unwrap_or_else(|p| p.into_inner());
        let count = live.entry(device).or_insert(0);
        if *count >= MAX_LIVE_PER_DEVICE {
            return None;
        }
        *count += 1;
        Some(LiveSlot(state.clone(), device))
    }
}

impl Drop for LiveSlot {
    fn drop(&mut self) {
        let mut live = self.0.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = live.get_mut(&self.1) {
            *count -= 1;
            if *count == 0 {
                live.remove(&self.1);
            }
        }
    }
}

async fn websocket(
    State(state): State<Shared>,
    AuthDevice(device): AuthDevice,
    abort: Option<axum::Extension<crate::limits::Abort>>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return ApiError::new(
                StatusCode::UPGRADE_REQUIRED,
                ErrorCode::BadRequest,
                format!("this endpoint takes a WebSocket upgrade: {}", rejection.body_text()),
            )
            .into_response();
        }
    };
    let abort = abort.map(|a| a.0).unwrap_or_default();
    let Some(slot) = LiveSlot::take(&state, device) else {
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            format!("a device may hold {MAX_LIVE_PER_DEVICE} live connections; close one first"),
        )
        .into_response();
    };
    // Idle connections dominate a messaging server's memory: keep per-connection buffers
    // small (the default read buffer alone is 128 KiB, touched at allocation). Clients only
    // send small acknowledgement frames; messages go out as they are written.
    // Version 2 (binary, batched frames) when the client offers it; JSON text frames otherwise.
    let upgrade = upgrade.protocols([proto::live::PROTOCOL_V2]);
    upgrade.max_message_size(64 * 1024).read_buffer_size(4 * 1024).write_buffer_size(0).on_upgrade(
        move |socket| async move {
            let _open = crate::metrics::OpenGauge::open(&crate::metrics::METRICS.live_open);
            let mut socket = socket;
            let version =
                proto::live::Version::from_protocol(socket.protocol().map(|p| p.as_bytes()));
            // Set before the socket is dropped: dropping it closes the connection.
            if live_delivery(state.clone(), device, version, &mut socket).await == Ending::PeerGone
            {
                abort.set();
            }
            state.notifier.release(device);
            drop(socket);
            drop(slot);
        },
    )
}

/// "An acknowledgement was applied", in the connection's version.
fn acked_frame(version: Version, acked: proto::AckResponse) -> WsMessage {
    match version {
        Version::V2 => WsMessage::Binary(proto::live::Down::Acked(acked).to_binary().into()),
        Version::V1 => json_frame(&proto::ServerFrame::Acked(acked)),
    }
}

/// An error, in the connection's version.
fn error_frame(version: Version, e: &ApiError) -> WsMessage {
    match version {
        Version::V2 => WsMessage::Binary(proto::live::Down::Error(e.body()).to_binary().into()),
        Version::V1 => json_frame(&proto::ServerFrame::Error(e.body())),
    }
}

fn json_frame(f: &proto::ServerFrame) -> WsMessage {
    WsMessage::Text(serde_json::to_string(f).unwrap_or_default().into())
}

/// The frames that carry a page of queued messages: one binary frame in version 2; in
/// version 1 a JSON frame per message, each made as it is sent.
fn page_frames(
    version: Version,
    messages: Vec<(u64, Vec<u8>, u64)>,
) -> Box<dyn Iterator<Item = WsMessage> + Send> {
    match version {
        Version::V2 => {
            let bytes = messages.iter().map(|m| m.1.len()).sum();
            let mut out = proto::live::messages_frame(messages.len(), bytes);
            for (seq, message, at) in &messages {
                proto::live::put_message(&mut out, *seq, *at, message);
            }
            Box::new(std::iter::once(WsMessage::Binary(out.into())))
        }
        Version::V1 => Box::new(messages.into_iter().map(|(seq, message, at)| {
            json_frame(&proto::ServerFrame::Message(proto::QueuedMessage {
                seq,
                message: Bytes(message),
                at: Some(at),
            }))
        })),
    }
}

/// How a live connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Closed by either side, or by the server for its own reasons.
    Done,
    /// The peer stopped reading or answering: the connection is reset, so the kernel does
    /// not keep what it could not send.
    PeerGone,
}

/// Streams a device's queue over a WebSocket: everything queued, then each new message as it
/// arrives. Messages stay queued until the client acknowledges them.
async fn live_delivery(
    state: Shared,
    device: u64,
    version: Version,
    socket: &mut WebSocket,
) -> Ending {
    let mut wake = state.notifier.subscribe(device);
    let mut stopping = state.stopping.clone();
    let mut sent = 0u64;
    let every = LIVE_PING.min(std::time::Duration::from_secs(state.config.idle_timeout_secs) / 3);
    let every = every.max(std::time::Duration::from_millis(100));
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    // When the client last sent anything (its WebSocket library answers pings by itself): a
    // peer silent for four pings is gone, even if its kernel still takes what is sent.
    let mut heard = tokio::time::Instant::now();
    let send_timeout =
        LIVE_SEND_TIMEOUT.min(std::time::Duration::from_secs(state.config.idle_timeout_secs));
    // Acknowledgements are written one at a time, off the delivery loop (which goes on
    // sending while one waits for its commit); those that arrive meanwhile are folded into
    // the next, since each covers everything before it.
    let mut acking: Option<tokio::task::JoinHandle<(u64, Result<u64, ApiError>)>> = None;
    let mut ack_wanted: Option<u64> = None;
    let start_ack = |up_to: u64| {
        let state = state.clone();
        tokio::spawn(
            async move { (up_to, queued_write(&state, |s| s.ack_queued(device, up_to)).await) },
        )
    };
    loop {
        if let Some(why) = state.barred(device) {
            let _ = socket.send(error_frame(version, &barred_error(why))).await;
            return Ending::Done;
        }
        if state.is_revoked(device) {
            let _ = socket.send(error_frame(version, &revoked_error())).await;
            return Ending::Done;
        }
        if *stopping.borrow_and_update() {
            // Going away (1001): clients reconnect to the next instance.
            let close =
                axum::extract::ws::CloseFrame { code: 1001, reason: "server shutting down".into() };
            let _ = socket.send(WsMessage::Close(Some(close))).await;
            return Ending::Done;
        }
        wake.borrow_and_update();
        // What was just queued comes from memory when it follows what was sent; anything
        // else (the first page, a gap, a copy memory let go) from the store.
        let page = match state.notifier.recent(device, sent, LIVE_PAGE as usize, LIVE_PAGE_BYTES) {
            Some(page) => Ok(page),
            None => {
                let not_before = unix_now().saturating_sub(state.config.message_ttl_secs);
                blocking(&state, move |s| {
                    s.fetch(device, sent, LIVE_PAGE, not_before, LIVE_PAGE_BYTES)
                })
                .await
            }
        };
        let (messages, more) = match page {
            Ok(page) => page,
            Err(e) => {
                let _ = socket.send(error_frame(version, &e)).await;
                return Ending::Done;
            }
        };
        crate::metrics::METRICS
            .delivered
            .fetch_add(messages.len() as u64, std::sync::atomic::Ordering::Relaxed);
        // Nothing new sends nothing (version 2 has no empty page).
        let frames = match messages.last() {
            Some(&(last, ..)) => {
                sent = last;
                page_frames(version, messages)
            }
            None => Box::new(std::iter::empty()),
        };
        for f in frames {
            // A reader that takes no data for this long is gone; its messages stay queued.
            match tokio::time::timeout(send_timeout, socket.send(f)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Ending::Done,
                Err(_) => return Ending::PeerGone,
            }
        }
        if more || wake.has_changed().unwrap_or(false) {
            continue;
        }
        tokio::select! {
            _ = ping.tick() => {
                if heard.elapsed() > every * 4 {
                    return Ending::PeerGone;
                }
                let ping = WsMessage::Ping(Default::default());
                match tokio::time::timeout(send_timeout, socket.send(ping)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Ending::Done,
                    Err(_) => return Ending::PeerGone,
                }
            }
            stop = stopping.changed() => if stop.is_err() { return Ending::Done },
            changed = wake.changed() => if changed.is_err() { return Ending::Done },
            done = async {
                match acking.as_mut() {
                    Some(handle) => handle.await,
                    None => std::future::pending().await,
                }
            } => {
                acking = ack_wanted.take().map(start_ack);
                let reply = match done {
                    Ok((up_to, Ok(removed))) => {
                        crate::metrics::METRICS.acknowledged.fetch_add(removed, std::sync::atomic::Ordering::Relaxed);
                        acked_frame(version, proto::AckResponse { up_to, removed })
                    }
                    Ok((_, Err(e))) => error_frame(version, &e),
                    Err(e) => error_frame(version, &ApiError::internal("acknowledging failed", &e)),
                };
                if socket.send(reply).await.is_err() {
                    return Ending::Done;
                }
            }
            incoming = socket.recv() => {
                if matches!(incoming, Some(Ok(_))) {
                    heard = tokio::time::Instant::now();
                }
                let up = match incoming {
                    Some(Ok(WsMessage::Text(text))) => proto::live::Up::from_text(&text),
                    Some(Ok(WsMessage::Binary(bytes))) => proto::live::Up::from_binary(&bytes),
                    Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return Ending::Done,
                    Some(Ok(_)) => continue,
                };
                match up {
                    Ok(proto::live::Up::Ack(a)) if acking.is_none() => {
                        acking = Some(start_ack(a.up_to));
                    }
                    Ok(proto::live::Up::Ack(a)) => {
                        ack_wanted = Some(ack_wanted.map_or(a.up_to, |w| w.max(a.up_to)));
                    }
                    Err(e) => {
                        let reply = error_frame(version, &ApiError::bad_request(format!("bad frame: {e}")));
                        if socket.send(reply).await.is_err() {
                            return Ending::Done;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod notifier_tests {
    use super::*;
    use crate::store::{Committed, QueuedCopy};

    /// What a commit of `copies` hands over.
    fn committed(copies: Vec<QueuedCopy>) -> Committed {
        let mut devices: Vec<u64> = copies.iter().map(|c| c.device).collect();
        devices.sort_unstable();
        devices.dedup();
        Committed { copies, devices }
    }

    fn copy(device: u64, seq: u64, len: usize) -> QueuedCopy {
        QueuedCopy { device, seq, at: 60, message: vec![seq as u8; len] }
    }

    fn seqs(page: &[(u64, Vec<u8>, u64)]) -> Vec<u64> {
        page.iter().map(|(seq, ..)| *seq).collect()
    }

    #[test]
    fn copies_come_from_memory_only_without_a_gap() {
        let n = Notifier::default();
        // A device with no live connection keeps nothing.
        n.queued(committed(vec![copy(7, 1, 10)]));
        assert!(n.recent(7, 0, 16, 1 << 20).is_none());
        let _live = n.subscribe(7);
        // Handed over out of order, kept in order.
        n.queued(committed(vec![copy(7, 3, 10), copy(8, 1, 10)]));
        n.queued(committed(vec![copy(7, 2, 10)]));
        let (page, more) = n.recent(7, 1, 16, 1 << 20).expect("from memory");
        assert_eq!((seqs(&page), more), (vec![2, 3], false));
        assert_eq!(page[0].2, 60);
        // What was sent is forgotten; a gap sends the reader to the store.
        assert!(n.recent(7, 3, 16, 1 << 20).is_none());
        n.queued(committed(vec![copy(7, 5, 10)]));
        assert!(n.recent(7, 3, 16, 1 << 20).is_none(), "4 is missing");
        // Pages stop at the count and the byte limit (one copy at least).
        n.queued(committed((6..10).map(|s| copy(7, s, 100)).collect()));
        let (page, more) = n.recent(7, 4, 2, 1 << 20).expect("from memory");
        assert_eq!((seqs(&page), more), (vec![5, 6], true));
        let (page, more) = n.recent(7, 6, 16, 150).expect("from memory");
        assert_eq!((seqs(&page), more), (vec![7], true));
    }

    #[test]
    fn memory_is_bounded_and_let_go() {
        let n = Notifier::default();
        let live = n.subscribe(1);
        n.queued(committed((1..=100).map(|s| copy(1, s, 10)).collect()));
        // Only the newest are kept: the oldest come from the store.
        assert!(n.recent(1, 0, 16, 1 << 20).is_none());
        let first = 100 - RECENT_COPIES as u64;
        let (page, _) = n.recent(1, first, 100, 1 << 20).expect("the newest");
        assert_eq!(page.len(), RECENT_COPIES);
        n.queued(committed((101..=104).map(|s| copy(1, s, RECENT_BYTES / 2)).collect()));
        let slot_bytes = n.lock().map.get(&1).map(|s| s.bytes).unwrap_or(0);
        assert!(slot_bytes <= RECENT_BYTES, "{slot_bytes} bytes kept");
        assert_eq!(n.lock().bytes, slot_bytes);
        // A copy larger than the budget is never kept.
        n.queued(committed(vec![copy(1, 105, RECENT_BYTES + 1)]));
        assert!(n.recent(1, 104, 16, usize::MAX).is_none());
        // The last connection gone, the device's copies go.
        drop(live);
        n.release(1);
        assert!(n.lock().map.is_empty());
        assert_eq!(n.lock().bytes, 0);
    }

    #[test]
    fn all_devices_together_keep_a_bounded_amount() {
        let n = Notifier::default();
        let per = RECENT_BYTES / 2;
        let devices = 2 * RECENT_TOTAL_BYTES / per;
        let live: Vec<_> = (0..devices as u64).map(|d| n.subscribe(d)).collect();
        n.queued(committed((0..devices as u64).map(|d| copy(d, 1, per)).collect()));
        let total = n.lock().bytes;
        assert!(total <= RECENT_TOTAL_BYTES, "{total} bytes kept");
        // Those that found no room read the store; every device was woken all the same.
        assert!(n.recent(devices as u64 - 1, 0, 16, usize::MAX).is_none());
        assert!(n.recent(0, 0, 16, usize::MAX).is_some());
        assert!(live.iter().all(|rx| rx.has_changed().unwrap_or(false)));
    }

    #[test]
    fn a_device_whose_copy_was_not_kept_is_woken_all_the_same() {
        let n = Notifier::default();
        let (near, far) = (n.subscribe(1), n.subscribe(2));
        // A submission to a large group hands over the first copies only, and every device.
        n.queued(Committed { copies: vec![copy(1, 1, 10)], devices: vec![1, 2] });
        assert!(near.has_changed().unwrap_or(false) && far.has_changed().unwrap_or(false));
        assert!(n.recent(1, 0, 16, 1 << 20).is_some());
        assert!(n.recent(2, 0, 16, 1 << 20).is_none(), "device 2 reads the store");
    }
}
