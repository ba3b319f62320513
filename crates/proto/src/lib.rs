//! Sotto's wire types: every request and response body exchanged between `sotto-server` and
//! its clients, over HTTP (JSON) and WebSocket (JSON text frames, or binary frames in version 2:
//! [`live`]). Only this crate knows the encoding; binary fields in JSON travel as standard
//! base64 strings ([`Bytes`]).
//!
//! All paths are under `/v1`. Authenticated endpoints take `Authorization: Bearer TOKEN`, a
//! token obtained by signing a challenge with the device key ([`ChallengeRequest`],
//! [`TokenRequest`]). Errors are [`ErrorBody`] with a stable [`ErrorCode`].
//!
//! ```
//! use sotto_proto::{Bytes, AckRequest};
//! let b = Bytes(vec![0, 1, 2]);
//! assert_eq!(serde_json::to_string(&b).unwrap(), "\"AAEC\"");
//! let ack: AckRequest = serde_json::from_str(r#"{"up_to": 9}"#).unwrap();
//! assert_eq!(ack.up_to, 9);
//! ```
#![forbid(unsafe_code)]

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub mod live;

/// The API version prefix.
pub const PREFIX: &str = "/v1";

/// Binary data, base64 on the wire. Its `Debug` shows only the length: these are ciphertexts,
/// keys and signatures, and none of them belongs in a log.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Bytes(pub Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({} bytes)", self.0.len())
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(&self.0))
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Bytes {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .content_encoding("base64")
            .description(Some("Binary data, standard base64."))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Bytes {}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD.decode(s.as_bytes()).map(Bytes).map_err(serde::de::Error::custom)
    }
}

/// `GET /v1/info`, unauthenticated: what this server is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServerInfo {
    /// The domain of the addresses this server hosts.
    pub domain: String,
    /// The server's version.
    pub version: String,
    /// How accounts are created.
    pub registration: RegistrationMode,
    /// The operator's public key, which managed accounts accept to let the operator revoke
    /// and wipe their devices. `None` if the operator has not made one.
    #[serde(default)]
    pub operator_key: Option<Bytes>,
    /// The key directory's keys: clients pin them at registration.
    #[serde(default)]
    pub kt: Option<KtKeys>,
}

/// The key transparency directory's public keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KtKeys {
    /// Ed25519 key that signs every epoch's root.
    pub signing_key: Bytes,
    /// The VRF public key that hides labels in the tree.
    pub vrf_key: Bytes,
}

/// One epoch's root of the key directory, signed (`sotto_core::kt::Root`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignedRoot {
    /// The epoch.
    pub epoch: u64,
    /// The root hash.
    pub hash: Bytes,
    /// The previous epoch's root hash (empty at epoch 0).
    pub previous: Bytes,
    /// When the server vouched for this root as its newest (Unix seconds; signed with it).
    /// 0 on a root as recorded at its epoch's publication.
    #[serde(default)]
    pub time: u64,
    /// The signature by the KT signing key.
    pub signature: Bytes,
}

/// `GET /v1/kt/lookup/{address}` and `GET /v1/kt/history/{address}`: a proof (JSON of the
/// AKD proof) and the signed root it verifies against.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KtProof {
    /// The root.
    pub root: SignedRoot,
    /// The proof, AKD's JSON encoding.
    pub proof: Bytes,
}

/// `GET /v1/kt/roots?from=N&limit=M`: signed roots, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KtRoots {
    /// The roots.
    pub roots: Vec<SignedRoot>,
}

/// `GET /v1/kt/audit?start=A&end=B`: proof that the directory only grew from epoch A to B
/// (AKD's append-only proof, JSON; B - A is at most 32).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KtAudit {
    /// The proof.
    pub proof: Bytes,
}

/// A signed object: JSON bytes and an Ed25519 signature over a context string and them
/// (`sotto_core::account`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignedData {
    /// The JSON bytes.
    pub body: Bytes,
    /// The signature.
    pub signature: Bytes,
}

/// How accounts are created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RegistrationMode {
    /// Only with an invite code minted by the operator.
    Invite,
    /// Anyone may register (development).
    Open,
}

/// `POST /v1/register`: create an account and its first device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterRequest {
    /// The address to register, on this server's domain.
    pub address: String,
    /// The invite code (required unless registration is open).
    #[serde(default)]
    pub invite: Option<String>,
    /// The device's Ed25519 public key.
    pub device_key: Bytes,
    /// Signature of `sotto_core::auth::registration_payload` with the device key.
    pub signature: Bytes,
    /// Version 1 of the account's device list, listing this device, signed by the new
    /// identity key.
    pub device_list: SignedData,
}

/// Answer to [`RegisterRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterResponse {
    /// The normalised address.
    pub address: String,
    /// The id of the new device.
    pub device_id: u64,
}

/// `POST /v1/auth/challenge`: ask for a nonce to sign.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChallengeRequest {
    /// The device that will sign.
    pub device_id: u64,
}

/// Answer to [`ChallengeRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChallengeResponse {
    /// A single-use random nonce, valid for a short time.
    pub nonce: Bytes,
}

/// `POST /v1/auth/token`: exchange a signed nonce for a bearer token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenRequest {
    /// The device.
    pub device_id: u64,
    /// The nonce from [`ChallengeResponse`].
    pub nonce: Bytes,
    /// Signature of `sotto_core::auth::challenge_payload`.
    pub signature: Bytes,
}

/// Answer to [`TokenRequest`]. The token is a secret: never log it.
#[derive(Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenResponse {
    /// The bearer token.
    pub token: String,
    /// Seconds until it expires.
    pub expires_in: u64,
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token", &"[redacted]")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// `POST /v1/keypackages`: publish key packages for the authenticated device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UploadKeyPackages {
    /// One-time key packages.
    #[serde(default)]
    pub key_packages: Vec<Bytes>,
    /// A last-resort key package, handed out when the one-time ones run out (replaces the
    /// previous one).
    #[serde(default)]
    pub last_resort: Option<Bytes>,
    /// Drop the device's unclaimed key packages of this ciphersuite first: their private keys
    /// may have leaked with the device's state, and these replace them.
    #[serde(default)]
    pub replace: bool,
}

/// `GET /v1/keypackages` and answer to [`UploadKeyPackages`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyPackageCount {
    /// One-time key packages of the classical suite (0x0003) still unclaimed; clients that
    /// know only that suite read this.
    pub remaining: u64,
    /// Whether a last-resort key package of the classical suite is on file.
    pub last_resort: bool,
    /// The stock of every ciphersuite the device has key packages of (absent from servers
    /// that know one suite only).
    #[serde(default)]
    pub suites: Option<Vec<SuiteStock>>,
}

/// A device's key packages of one ciphersuite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SuiteStock {
    /// The MLS ciphersuite code point (as the key packages name it).
    pub ciphersuite: u16,
    /// One-time key packages still unclaimed.
    pub remaining: u64,
    /// Whether a last-resort key package is on file.
    pub last_resort: bool,
}

/// The ciphersuite an upload or claim means when it names none: X25519, ChaCha20-Poly1305,
/// SHA-256, Ed25519 (0x0003).
pub const CLASSICAL_SUITE: u16 = 3;

/// X-Wing, ChaCha20-Poly1305, SHA-256, Ed25519 (0x004D, a provisional code point from
/// draft-ietf-mls-pq-ciphersuites).
pub const X_WING_SUITE: u16 = 0x004D;

/// The ciphersuites the server files key packages of.
pub const SUITES: [u16; 2] = [CLASSICAL_SUITE, X_WING_SUITE];

/// `POST /v1/keypackages/claim`: take one key package of every device of an account.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimRequest {
    /// The account.
    pub address: String,
    /// Only these devices of the account (default: all).
    #[serde(default)]
    pub device_ids: Option<Vec<u64>>,
    /// Ciphersuites acceptable, most wanted first: each device gives a key package of the
    /// first it has any of (default: [`CLASSICAL_SUITE`] only).
    #[serde(default)]
    pub ciphersuites: Option<Vec<u16>>,
}

/// One claimed key package.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimedKeyPackage {
    /// The device it belongs to.
    pub device_id: u64,
    /// The key package (MLS wire format).
    pub key_package: Bytes,
}

/// Answer to [`ClaimRequest`]. Devices with no key package at all are left out.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimResponse {
    /// The normalised address.
    pub address: String,
    /// One key package per device.
    pub key_packages: Vec<ClaimedKeyPackage>,
}

/// One device of an account.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceInfo {
    /// Its id.
    pub device_id: u64,
    /// Its Ed25519 public key.
    pub device_key: Bytes,
    /// When it registered (Unix seconds).
    pub created_at: u64,
    /// When it last logged in (Unix seconds); shown to the account's own devices only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<u64>,
    /// When it was revoked, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
    /// A wipe ordered for it, and its confirmation; shown to the account's own devices only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wipe: Option<WipeStatus>,
}

/// A wipe command and, once the device obeyed, its signed confirmation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WipeStatus {
    /// The command (`sotto_core::account::WipeCommand`).
    pub command: SignedData,
    /// The device's confirmation (`sotto_core::account::WipeConfirmation`).
    #[serde(default)]
    pub confirmation: Option<SignedData>,
}

/// `GET /v1/users/{address}/devices`. Without a token only `device_list` is filled in.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DevicesResponse {
    /// The normalised address.
    pub address: String,
    /// The account's current signed device list.
    pub device_list: SignedData,
    /// Its devices, revoked ones included (empty without a token).
    #[serde(default)]
    pub devices: Vec<DeviceInfo>,
}

/// `POST /v1/devices`: replace the account's device list with a newer signed version. Devices
/// no longer listed are revoked at once; `new_device` registers the one device the new list
/// adds (linking).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateDevicesRequest {
    /// The new list, one version above the current one.
    pub device_list: SignedData,
    /// A device to register, listed in `device_list`.
    #[serde(default)]
    pub new_device: Option<NewDevice>,
}

/// A device being linked.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewDevice {
    /// Its Ed25519 public key.
    pub device_key: Bytes,
    /// Its signature of `sotto_core::auth::registration_payload`.
    pub signature: Bytes,
}

/// Answer to [`UpdateDevicesRequest`] and [`RecoverRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateDevicesResponse {
    /// The list version now on file.
    pub version: u64,
    /// The id of the registered device, if one was.
    #[serde(default)]
    pub device_id: Option<u64>,
    /// Devices revoked by this update.
    #[serde(default)]
    pub revoked: Vec<u64>,
}

/// `POST /v1/recover`: take an account back with its recovery key. The new list carries a new
/// identity key endorsed by the recovery key and lists only `device`; every other device is
/// revoked.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecoverRequest {
    /// The account.
    pub address: String,
    /// The new device.
    pub device: NewDevice,
    /// The new device list.
    pub device_list: SignedData,
}

/// `POST /v1/devices/wipe` (the account's own device, with a token) and
/// `POST /v1/operator/wipe` (signed by the operator key, no token): order a device to erase
/// itself. The device is revoked at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WipeRequest {
    /// The signed command.
    pub command: SignedData,
}

/// Answer to [`WipeRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WipeResponse {
    /// The target device's id.
    pub device_id: u64,
}

/// `GET /v1/wipe`: the wipe ordered for the authenticated device, if any. Revoked devices may
/// call it (and `POST /v1/wipe/confirm`) and nothing else.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PendingWipe {
    /// The command.
    #[serde(default)]
    pub command: Option<SignedData>,
}

/// `POST /v1/wipe/confirm`: the device's signed confirmation that it erased itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WipeConfirm {
    /// The confirmation.
    pub confirmation: SignedData,
}

/// `POST /v1/blobs`: start uploading an attachment's ciphertext of `size` bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewBlob {
    /// The ciphertext's full size.
    pub size: u64,
    /// Sent without a device token instead: the group whose member makes the file (a message
    /// kept by reference, `sotto_core::reference`), which the server learns in place of an
    /// uploader. The file counts against the group's quota, not an account's, and anyone who
    /// has its id may append to it until it is complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<BlobGroup>,
    /// For a chat with disappearing messages: delete the file this many seconds after it is
    /// complete (sooner than the server's usual time-to-live).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
}

/// A group member's standing, for a file made without a device token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BlobGroup {
    /// The MLS group id.
    pub group_id: Bytes,
    /// The group's credential for its current epoch (32 bytes), as a submission carries it.
    pub credential: Bytes,
}

/// A blob's state: answer to [`NewBlob`] and `GET /v1/blobs/{id}/status`. Upload with
/// `PUT /v1/blobs/{id}?offset=N` (raw bytes, `offset` = `received`; one request may carry
/// the rest of the file, and `received` advances durably every 8 MiB while it streams, so
/// it can end anywhere, inside an encrypted chunk too); download with `GET /v1/blobs/{id}`
/// (a `Range: bytes=N-` header resumes).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BlobStatus {
    /// The blob id (16 bytes, hex in paths).
    pub id: Bytes,
    /// Its full size.
    pub size: u64,
    /// Bytes durably received.
    pub received: u64,
}

/// `DELETE /v1/blobs/{id}`: the file is gone (or was already).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Deleted {
    /// Always true.
    pub deleted: bool,
}

/// `POST /v1/links`, unauthenticated: a new device opens a link, with its request sealed
/// under the linking code.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OpenLink {
    /// The link id derived from the code (16 bytes).
    pub link_id: Bytes,
    /// The sealed request.
    pub request: Bytes,
}

/// `GET /v1/links/{id-hex}`: a link's sealed parts so far.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LinkState {
    /// The new device's sealed request.
    pub request: Bytes,
    /// The approving device's sealed response.
    #[serde(default)]
    pub response: Option<Bytes>,
    /// The approving device's sealed history.
    #[serde(default)]
    pub history: Option<Bytes>,
}

/// `POST /v1/links/{id-hex}` (authenticated): the approving device adds its response or the
/// history. Each part can be set once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LinkReply {
    /// The sealed response.
    #[serde(default)]
    pub response: Option<Bytes>,
    /// The sealed history.
    #[serde(default)]
    pub history: Option<Bytes>,
}

/// What kind of MLS message a submission carries; decides how the server orders it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SubmitKind {
    /// An application message made in `epoch`: refused with [`ErrorCode::StaleEpoch`] if
    /// the group has moved past it (members added since could not read it).
    Application,
    /// A commit made in `epoch`: accepted only if the group is at `epoch`, which then
    /// advances by one. A stale commit gets [`ErrorCode::StaleEpoch`].
    Commit,
    /// A proposal made in `epoch`: accepted only if the group is at `epoch`.
    Proposal,
}

/// A message and the devices it goes to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Delivery {
    /// Recipient device ids: for a welcome, the devices the commit adds; for the message
    /// itself, none (it goes to every device in the group's roster, the sender's included).
    #[serde(default)]
    pub recipients: Vec<u64>,
    /// The MLS message.
    pub message: Bytes,
}

/// `POST /v1/messages`: submit an MLS message for a group.
///
/// The submission names no sender: it is sent without a device token and carries the
/// group's `credential` for `epoch` (derived by every member from the MLS exporter, see
/// `sotto_core::roster`), which must open the group's sealed roster on the server. The
/// message goes to every device in the roster, the sender's own included. Only a group the
/// server holds no sealed roster for ([`ErrorCode::GroupUnsealed`]: new, from before sealed
/// rosters, or restored from a backup) takes a submission with a device token, and `roster`.
///
/// Submissions are idempotent by `submission_id`: sending the same request again (after a
/// lost answer) returns the first answer and queues nothing twice.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SubmitRequest {
    /// A random id (16 bytes) the client chooses per submission; retries reuse it.
    #[serde(default)]
    pub submission_id: Option<Bytes>,
    /// The MLS group id.
    pub group_id: Bytes,
    /// How the server orders it.
    pub kind: SubmitKind,
    /// The epoch the message was made in.
    pub epoch: u64,
    /// The message for the group's other members.
    pub delivery: Delivery,
    /// A welcome for devices added by a commit, queued in the same transaction. Only a
    /// commit may carry one; its recipients join the group's roster on the server.
    #[serde(default)]
    pub welcome: Option<Delivery>,
    /// For a commit: the devices it removes from the group (those the committer removes and
    /// those whose own removal proposals it commits). The server takes them off the group's
    /// roster, so they can no longer submit to the group or be sent to in it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<u64>,
    /// Undelivered copies are deleted at this time (Unix seconds): disappearing messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// The group's credential for `epoch` (32 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<Bytes>,
    /// For a commit: the credential of the epoch it leads to, under which the server seals
    /// the new roster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_credential: Option<Bytes>,
    /// Every device in the group (the sender's included), sent with a device token only
    /// after [`ErrorCode::GroupUnsealed`]: the server seals it as the group's roster if it
    /// knows none (a group restored from a backup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roster: Option<Vec<u64>>,
}

/// Answer to [`SubmitRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SubmitResponse {
    /// The group's epoch after the submission.
    pub epoch: u64,
    /// Recipients that were revoked: nothing was queued for them. The sender should remove
    /// them from the group once their account's device list confirms it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<u64>,
}

/// A message waiting in a device's queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueuedMessage {
    /// Its position; strictly increasing within a queue.
    pub seq: u64,
    /// The MLS message.
    pub message: Bytes,
    /// When the server queued it (Unix seconds), so that the events a message makes (someone
    /// added, removed) show the server's time rather than when this device got to them.
    /// Absent from older servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<u64>,
}

/// `GET /v1/queue?after=SEQ&limit=N`: the authenticated device's queue, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueResponse {
    /// Up to `limit` messages after `after`.
    pub messages: Vec<QueuedMessage>,
    /// Whether more messages follow.
    pub more: bool,
}

/// Query of `GET /v1/queue`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueQuery {
    /// Only messages with a greater seq.
    #[serde(default)]
    pub after: u64,
    /// At most this many (the server caps it).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// `PUT /v1/queue/key`: the public key (X25519, 32 bytes) the server seals this device's
/// queued copies to from now on, so that what waits in its queue is unreadable at rest (see
/// `sotto_core::queue`). Answered with [`QueueKey`] too.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueKey {
    /// The public key.
    pub key: Bytes,
}

/// `POST /v1/queue/ack`: remove every message up to and including `up_to` from the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AckRequest {
    /// The highest seq processed.
    pub up_to: u64,
}

/// Answer to [`AckRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AckResponse {
    /// The `up_to` of the request answered.
    pub up_to: u64,
    /// How many messages left the queue.
    pub removed: u64,
}

/// Frames the server sends on `GET /v1/ws` in version 1 (JSON text frames; see [`live`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// A queued message; it stays queued until acknowledged.
    Message(QueuedMessage),
    /// An acknowledgement was applied.
    Acked(AckResponse),
    /// The request was refused; the connection closes.
    Error(ErrorBody),
}

/// Frames a client sends on `GET /v1/ws` in version 1 (see [`live`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Acknowledge every message up to and including `up_to`.
    Ack(AckRequest),
}

/// Stable error codes; clients match on these, never on messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request body or query is not what the endpoint takes.
    BadRequest,
    /// An address is malformed.
    InvalidAddress,
    /// An address belongs to another domain.
    WrongDomain,
    /// The address is already registered.
    AddressTaken,
    /// Registration needs an invite and none was given.
    InviteRequired,
    /// The invite code is unknown.
    InviteInvalid,
    /// The invite has expired.
    InviteExpired,
    /// The invite has no uses left.
    InviteUsedUp,
    /// A signature does not verify.
    BadSignature,
    /// No token, or an unknown or expired one.
    Unauthorized,
    /// The challenge nonce is unknown, used or expired.
    ChallengeInvalid,
    /// No such account.
    UnknownUser,
    /// A recipient device does not exist.
    UnknownDevice,
    /// A commit or proposal was made in an epoch the group has left.
    StaleEpoch,
    /// The body is larger than the server accepts.
    TooLarge,
    /// A recipient's queue is at its limit until that device catches up.
    QueueFull,
    /// The server cannot store anything new right now (disk full or read-only).
    StorageFull,
    /// Too many requests; retry after the number of seconds in `Retry-After`.
    RateLimited,
    /// The device was revoked: only fetching a wipe command is still allowed.
    DeviceRevoked,
    /// A device list is malformed, mis-signed, not the next version, or lists unknown keys.
    InvalidDeviceList,
    /// No link with that id (expired, or the code is wrong).
    UnknownLink,
    /// That part of the link was set already.
    LinkTaken,
    /// The account has not accepted the operator's key.
    NotManaged,
    /// An account's files would exceed its quota on the server.
    QuotaExceeded,
    /// An upload's offset is not where the blob ends (resume from `received`).
    WrongOffset,
    /// No file with that id: it expired, was deleted with its message, or never existed.
    UnknownFile,
    /// The file is being uploaded: another request is writing it, or it is not complete yet.
    UploadInProgress,
    /// The submission's group credential is not the group's, or a device is not a member.
    NotMember,
    /// A submission id was reused for a different submission.
    SubmissionConflict,
    /// The server holds no sealed roster for the group (a new group, one from before sealed
    /// rosters, or one restored from a backup): submit again with a device token and the
    /// group's roster.
    GroupUnsealed,
    /// The operator suspended the account; the device keeps its data and works again once
    /// the account is resumed.
    AccountSuspended,
    /// The account's term ended (and its grace period); the operator can renew it.
    AccountExpired,
    /// The operator deleted the account; its address is not given to anyone else.
    AccountDeleted,
    /// The server failed; the details are in its log.
    Internal,
}

/// Every error response: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The error inside [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// What went wrong, for programs.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
    /// For [`ErrorCode::StaleEpoch`]: the group's current epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}
