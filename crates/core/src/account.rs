//! What makes an account more than its devices: the identity key that certifies them, the
//! recovery key for the day every device is lost, the signed device list, signed wipe
//! commands, and the end-to-end encrypted channel that links a new device.
//!
//! Every signed object is JSON bytes plus an Ed25519 signature over a context string and
//! those exact bytes, so nothing depends on re-encoding JSON the same way twice, and a
//! signature made for one purpose never verifies for another.
//!
//! ```
//! use sotto_core::account::{DeviceList, IdentityKey, ListedDevice, RecoveryKey};
//! let identity = IdentityKey::generate().unwrap();
//! let recovery = RecoveryKey::generate().unwrap();
//! let list = DeviceList::first(
//!     "alice@example.org".parse().unwrap(),
//!     &identity,
//!     recovery.public(),
//!     None,
//!     ListedDevice { key: vec![7; 32], added_at: 1, name: None },
//!     1,
//! );
//! let signed = list.sign(&identity);
//! let checked = DeviceList::verify(&signed).unwrap();
//! assert_eq!(checked.version, 1);
//! assert_eq!(RecoveryKey::parse(&recovery.to_text()).unwrap().public(), recovery.public());
//! ```

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use ed25519_dalek::{Signer as _, SigningKey};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::{Address, Error, auth, random_bytes};

/// Largest device list accepted (bytes of JSON).
pub const MAX_LIST_LEN: usize = 64 * 1024;
/// Most devices an account may have listed at once.
pub const MAX_DEVICES: usize = 64;
/// Longest device name.
pub const MAX_NAME_LEN: usize = 64;

const LIST_CONTEXT: &[u8] = b"sotto/v1/device-list\0";
const ENDORSE_CONTEXT: &[u8] = b"sotto/v1/recovery-endorsement\0";
const WIPE_CONTEXT: &[u8] = b"sotto/v1/wipe\0";
const CONFIRM_CONTEXT: &[u8] = b"sotto/v1/wipe-confirmation\0";

fn derive(ikm: &[u8], info: &[u8], out: &mut [u8]) {
    // HKDF-SHA256 cannot fail for outputs this short.
    let _ = hkdf::Hkdf::<Sha256>::new(None, ikm).expand(info, out);
}

fn signed_payload(context: &[u8], body: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(context.len() + body.len());
    p.extend_from_slice(context);
    p.extend_from_slice(body);
    p
}

pub(crate) fn sealed(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, Error> {
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    let mut out = random_bytes(12)?;
    let ct = cipher
        .encrypt(Nonce::from_slice(&out), Payload { msg: plaintext, aad })
        .map_err(|_| Error::Internal("encryption failed"))?;
    out.extend_from_slice(&ct);
    Ok(out)
}

pub(crate) fn opened(key: &[u8; 32], aad: &[u8], data: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if data.len() < 12 + 16 {
        return None;
    }
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    cipher
        .decrypt(Nonce::from_slice(&data[..12]), Payload { msg: &data[12..], aad })
        .ok()
        .map(Zeroizing::new)
}

/// Base32 in groups of four, the way codes are shown to people.
fn grouped(bytes: &[u8]) -> String {
    let text = data_encoding::BASE32_NOPAD.encode(bytes);
    let chunks: Vec<&str> =
        text.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).unwrap_or("")).collect();
    chunks.join("-")
}

/// Reads what [`grouped`] wrote, forgiving case, spaces and dashes.
fn ungrouped(text: &str) -> Option<Vec<u8>> {
    let clean: String = text
        .chars()
        .filter(|c| !matches!(c, '-' | ' ' | '\t' | '\n' | '\r'))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    data_encoding::BASE32_NOPAD.decode(clean.as_bytes()).ok()
}

/// Serde for byte fields as hex strings.
pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        hex::decode(s.as_bytes()).map_err(serde::de::Error::custom)
    }

    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => s.serialize_some(&hex::encode(v)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
            let s = Option::<std::borrow::Cow<'de, str>>::deserialize(d)?;
            s.map(|s| hex::decode(s.as_bytes()).map_err(serde::de::Error::custom)).transpose()
        }
    }
}

/// An Ed25519 signing key held by people, not by one device: the account's identity key and
/// the key derived from a recovery key. Zeroized on drop; `Debug` shows the public half only.
pub struct IdentityKey(SigningKey);

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKey")
            .field("public", &hex::encode(self.public()))
            .field("private", &"[redacted]")
            .finish()
    }
}

impl IdentityKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, Error> {
        let seed = Zeroizing::new(random_bytes(32)?);
        Self::from_secret(&seed)
    }

    /// The key whose 32-byte secret is `secret`.
    pub fn from_secret(secret: &[u8]) -> Result<Self, Error> {
        let seed: Zeroizing<[u8; 32]> = Zeroizing::new(
            secret.try_into().map_err(|_| Error::Invalid("a secret key is 32 bytes".into()))?,
        );
        Ok(IdentityKey(SigningKey::from_bytes(&seed)))
    }

    /// The 32-byte secret, for the device's own encrypted store and for linking devices.
    pub fn secret(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.0.to_bytes().to_vec())
    }

    /// The public key (32 bytes).
    pub fn public(&self) -> Vec<u8> {
        self.0.verifying_key().to_bytes().to_vec()
    }

    fn sign_raw(&self, payload: &[u8]) -> Vec<u8> {
        self.0.sign(payload).to_bytes().to_vec()
    }

    /// Signs a payload that starts with its own context string (see [`crate::auth`]).
    pub fn sign_payload(&self, payload: &[u8]) -> Vec<u8> {
        self.sign_raw(payload)
    }

    /// The key that seals device names, so only the account's own devices read them.
    fn names_key(&self) -> Zeroizing<[u8; 32]> {
        let mut k = Zeroizing::new([0u8; 32]);
        derive(self.0.as_bytes(), b"sotto/v1/device-names", k.as_mut());
        k
    }

    /// Encrypts a device name for the signed device list.
    pub fn seal_name(&self, name: &str) -> Result<Vec<u8>, Error> {
        sealed(&self.names_key(), b"sotto/v1/device-name", name.as_bytes())
    }

    /// Decrypts a device name sealed by [`IdentityKey::seal_name`].
    pub fn open_name(&self, sealed_name: &[u8]) -> Option<String> {
        let plain = opened(&self.names_key(), b"sotto/v1/device-name", sealed_name)?;
        String::from_utf8(plain.to_vec()).ok()
    }
}

/// The recovery key shown once at registration: 32 random bytes, written as base32 groups.
/// It derives an Ed25519 key whose public half the server and the account's contacts know;
/// only a signature by it can give the account a new identity key.
pub struct RecoveryKey {
    secret: Zeroizing<Vec<u8>>,
    key: IdentityKey,
}

impl fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecoveryKey").field("public", &hex::encode(self.public())).finish()
    }
}

impl RecoveryKey {
    /// A fresh recovery key.
    pub fn generate() -> Result<Self, Error> {
        Self::from_secret(Zeroizing::new(random_bytes(32)?))
    }

    fn from_secret(secret: Zeroizing<Vec<u8>>) -> Result<Self, Error> {
        let mut seed = Zeroizing::new([0u8; 32]);
        derive(&secret, b"sotto/v1/recovery-signing-key", seed.as_mut());
        Ok(RecoveryKey { key: IdentityKey::from_secret(seed.as_ref())?, secret })
    }

    /// Reads a recovery key as the user typed it (case, spaces and dashes do not matter).
    pub fn parse(text: &str) -> Result<Self, Error> {
        match ungrouped(text) {
            Some(bytes) if bytes.len() == 32 => Self::from_secret(Zeroizing::new(bytes)),
            _ => Err(Error::Invalid(
                "that is not a recovery key: expected 13 groups of letters A-Z and digits 2-7"
                    .into(),
            )),
        }
    }

    /// The text to show the user, once.
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(grouped(&self.secret))
    }

    /// The public half of the derived key.
    pub fn public(&self) -> Vec<u8> {
        self.key.public()
    }

    /// Endorses `identity_key` as the account's identity from device list `version` on.
    pub fn endorse(&self, address: &Address, identity_key: &[u8], version: u64) -> Vec<u8> {
        self.key.sign_raw(&endorsement_payload(address, identity_key, version))
    }
}

fn endorsement_payload(address: &Address, identity_key: &[u8], version: u64) -> Vec<u8> {
    let mut p = ENDORSE_CONTEXT.to_vec();
    p.extend_from_slice(address.as_str().as_bytes());
    p.push(0);
    p.extend_from_slice(identity_key);
    p.extend_from_slice(&version.to_be_bytes());
    p
}

/// A device as listed in a [`DeviceList`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedDevice {
    /// Its Ed25519 public key (also its MLS signature key).
    #[serde(with = "hex_bytes")]
    pub key: Vec<u8>,
    /// When it was linked (Unix seconds, the linking device's clock).
    pub added_at: u64,
    /// Its name, sealed with [`IdentityKey::seal_name`]: only the account's devices read it.
    #[serde(default, with = "hex_bytes::option", skip_serializing_if = "Option::is_none")]
    pub name: Option<Vec<u8>>,
}

/// The set of devices that speak for an account, signed by its identity key and versioned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceList {
    /// Format version (1).
    pub v: u32,
    /// The account.
    pub address: Address,
    /// Increases with every change; clients refuse to go back.
    pub version: u64,
    /// The account's identity key, which signs this list.
    #[serde(with = "hex_bytes")]
    pub identity_key: Vec<u8>,
    /// The public half of the recovery key.
    #[serde(with = "hex_bytes")]
    pub recovery_key: Vec<u8>,
    /// An operator key the account accepted (managed accounts): it may sign wipe commands.
    #[serde(default, with = "hex_bytes::option", skip_serializing_if = "Option::is_none")]
    pub operator_key: Option<Vec<u8>>,
    /// The devices.
    pub devices: Vec<ListedDevice>,
    /// When it was signed (Unix seconds).
    pub issued_at: u64,
    /// When the identity key changed (recovery): the recovery key's signature of the new
    /// identity key, for [`endorsement_payload`].
    #[serde(default, with = "hex_bytes::option", skip_serializing_if = "Option::is_none")]
    pub endorsement: Option<Vec<u8>>,
}

/// A device list as it travels: the JSON bytes and the identity key's signature of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedList {
    /// The JSON of a [`DeviceList`].
    pub body: Vec<u8>,
    /// Signature of the context string and `body` by the list's identity key.
    pub signature: Vec<u8>,
}

/// Why a device list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ListError {
    /// Not a device list, or too large.
    #[error("malformed device list: {0}")]
    Malformed(String),
    /// The signature does not verify with the list's identity key.
    #[error("the device list's signature does not verify")]
    BadSignature,
    /// The list is for another account.
    #[error("the device list is for {found}, not {expected}")]
    WrongAddress {
        /// The account asked for.
        expected: String,
        /// The account the list names.
        found: String,
    },
    /// Older than a list already seen.
    #[error("the device list is version {got}, older than version {seen} already seen")]
    Rollback {
        /// The newest version seen before.
        seen: u64,
        /// The version offered.
        got: u64,
    },
    /// Same version as one seen before, different content.
    #[error("two different device lists claim version {0}")]
    Equivocation(u64),
    /// The identity key changed without a valid endorsement by the known recovery key.
    #[error("the identity key changed without the account's recovery key")]
    UnendorsedIdentityChange,
}

impl DeviceList {
    /// Version 1 of a new account's list, holding its first device.
    pub fn first(
        address: Address,
        identity: &IdentityKey,
        recovery_key: Vec<u8>,
        operator_key: Option<Vec<u8>>,
        device: ListedDevice,
        now: u64,
    ) -> Self {
        DeviceList {
            v: 1,
            address,
            version: 1,
            identity_key: identity.public(),
            recovery_key,
            operator_key,
            devices: vec![device],
            issued_at: now,
            endorsement: None,
        }
    }

    /// A whole new account's keys and signed version 1 listing `device_key` (no name, not
    /// managed), for programs that register devices without the client library.
    pub fn new_account(
        address: Address,
        device_key: &[u8],
        now: u64,
    ) -> Result<(SignedList, IdentityKey, RecoveryKey), Error> {
        let identity = IdentityKey::generate()?;
        let recovery = RecoveryKey::generate()?;
        let device = ListedDevice { key: device_key.to_vec(), added_at: now, name: None };
        let list = DeviceList::first(address, &identity, recovery.public(), None, device, now);
        Ok((list.sign(&identity), identity, recovery))
    }

    /// The next version: same account and keys, no endorsement, to be changed and signed.
    pub fn next(&self, now: u64) -> Self {
        DeviceList { version: self.version + 1, issued_at: now, endorsement: None, ..self.clone() }
    }

    /// Whether `key` is one of the listed devices.
    pub fn lists(&self, key: &[u8]) -> bool {
        self.devices.iter().any(|d| d.key == key)
    }

    /// Signs the list with the identity key.
    pub fn sign(&self, identity: &IdentityKey) -> SignedList {
        // Serializing plain data with string keys cannot fail.
        let body = serde_json::to_vec(self).unwrap_or_default();
        let signature = identity.sign_raw(&signed_payload(LIST_CONTEXT, &body));
        SignedList { body, signature }
    }

    /// Decodes a signed list and checks its signature against its own identity key and its
    /// shape. Whether that identity key is the right one is [`DeviceList::check_update`]'s job.
    pub fn verify(signed: &SignedList) -> Result<DeviceList, ListError> {
        if signed.body.len() > MAX_LIST_LEN {
            return Err(ListError::Malformed("too large".into()));
        }
        let list: DeviceList = serde_json::from_slice(&signed.body)
            .map_err(|e| ListError::Malformed(e.to_string()))?;
        if list.v != 1 {
            return Err(ListError::Malformed(format!("unknown format version {}", list.v)));
        }
        if !auth::verify(
            &list.identity_key,
            &signed_payload(LIST_CONTEXT, &signed.body),
            &signed.signature,
        ) {
            return Err(ListError::BadSignature);
        }
        if list.devices.is_empty() || list.devices.len() > MAX_DEVICES {
            return Err(ListError::Malformed(format!("1 to {MAX_DEVICES} devices")));
        }
        let mut keys: Vec<&[u8]> = list.devices.iter().map(|d| d.key.as_slice()).collect();
        keys.sort();
        keys.dedup();
        if keys.len() != list.devices.len() || keys.iter().any(|k| k.len() != 32) {
            return Err(ListError::Malformed("device keys must be distinct 32-byte keys".into()));
        }
        if list.recovery_key.len() != 32
            || list.operator_key.as_ref().is_some_and(|k| k.len() != 32)
        {
            return Err(ListError::Malformed("keys are 32 bytes".into()));
        }
        Ok(list)
    }

    /// Checks that `self` may follow `known` (a list of the same account accepted before):
    /// not older, not a different list under the same version, and an identity key change
    /// only with the recovery key's endorsement. Returns whether the identity key changed.
    pub fn check_update(&self, known: &DeviceList) -> Result<bool, ListError> {
        if self.address != known.address {
            return Err(ListError::WrongAddress {
                expected: known.address.to_string(),
                found: self.address.to_string(),
            });
        }
        if self.version < known.version {
            return Err(ListError::Rollback { seen: known.version, got: self.version });
        }
        if self.version == known.version {
            return if self == known {
                Ok(false)
            } else {
                Err(ListError::Equivocation(self.version))
            };
        }
        if self.identity_key == known.identity_key {
            return Ok(false);
        }
        let endorsed = self.endorsement.as_ref().is_some_and(|sig| {
            self.recovery_key == known.recovery_key
                && auth::verify(
                    &known.recovery_key,
                    &endorsement_payload(&self.address, &self.identity_key, self.version),
                    sig,
                )
        });
        if endorsed { Ok(true) } else { Err(ListError::UnendorsedIdentityChange) }
    }

    /// Checks a recovery: `self` must carry a valid endorsement by `recovery_key`.
    pub fn endorsed_by(&self, recovery_key: &[u8]) -> bool {
        self.endorsement.as_ref().is_some_and(|sig| {
            auth::verify(
                recovery_key,
                &endorsement_payload(&self.address, &self.identity_key, self.version),
                sig,
            )
        })
    }
}

/// Who signed a [`WipeCommand`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signer {
    /// The account's identity key.
    Identity,
    /// The operator key a managed account accepted.
    Operator,
}

/// An order to a device to erase itself, signed by the account's identity key (or the
/// accepted operator key). The server can queue it but never forge it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WipeCommand {
    /// Format version (1).
    pub v: u32,
    /// The account.
    pub address: Address,
    /// The target device's key.
    #[serde(with = "hex_bytes")]
    pub device_key: Vec<u8>,
    /// 16 random bytes; a device never obeys the same nonce twice.
    #[serde(with = "hex_bytes")]
    pub nonce: Vec<u8>,
    /// When it was issued (Unix seconds).
    pub issued_at: u64,
    /// Which key signs it.
    pub signer: Signer,
}

/// A signed object as it travels: JSON bytes and a signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The JSON.
    pub body: Vec<u8>,
    /// The signature of the context string and `body`.
    pub signature: Vec<u8>,
}

/// Why a wipe command was not obeyed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WipeRefused {
    /// Not a wipe command.
    #[error("malformed wipe command")]
    Malformed,
    /// Not signed by the account's identity key (or its accepted operator key).
    #[error("the wipe command is not signed by this account's keys (forged)")]
    Forged,
    /// For another device or account.
    #[error("the wipe command is for another device")]
    Misdirected,
    /// Issued before this device existed, or already obeyed.
    #[error("the wipe command is a replay (issued before this device was linked, or seen before)")]
    Replayed,
}

/// How far a wipe command's clock may run ahead of or behind the target's.
pub const WIPE_CLOCK_SKEW: u64 = 300;

impl WipeCommand {
    /// A new command for the device with `device_key`.
    pub fn new(
        address: Address,
        device_key: Vec<u8>,
        signer: Signer,
        now: u64,
    ) -> Result<Self, Error> {
        Ok(WipeCommand {
            v: 1,
            address,
            device_key,
            nonce: random_bytes(16)?,
            issued_at: now,
            signer,
        })
    }

    /// Signs it.
    pub fn sign(&self, key: &IdentityKey) -> Signed {
        let body = serde_json::to_vec(self).unwrap_or_default();
        let signature = key.sign_raw(&signed_payload(WIPE_CONTEXT, &body));
        Signed { body, signature }
    }

    /// Decodes a command and checks only its signature, against `identity_key` or, for an
    /// operator command, `operator_key`.
    pub fn verify_signature(
        signed: &Signed,
        identity_key: &[u8],
        operator_key: Option<&[u8]>,
    ) -> Result<WipeCommand, WipeRefused> {
        let cmd: WipeCommand = serde_json::from_slice(&signed.body)
            .ok()
            .filter(|c: &WipeCommand| c.v == 1 && c.nonce.len() == 16)
            .ok_or(WipeRefused::Malformed)?;
        let key = match cmd.signer {
            Signer::Identity => Some(identity_key),
            Signer::Operator => operator_key,
        };
        let payload = signed_payload(WIPE_CONTEXT, &signed.body);
        if !key.is_some_and(|k| auth::verify(k, &payload, &signed.signature)) {
            return Err(WipeRefused::Forged);
        }
        Ok(cmd)
    }

    /// The target's full check: signed by the account, for this device, issued after it was
    /// linked, and not a nonce obeyed before (`seen`).
    pub fn verify_for_target(
        signed: &Signed,
        me: &Address,
        my_key: &[u8],
        linked_at: u64,
        identity_key: &[u8],
        operator_key: Option<&[u8]>,
        seen: impl Fn(&[u8]) -> bool,
    ) -> Result<WipeCommand, WipeRefused> {
        let cmd = Self::verify_signature(signed, identity_key, operator_key)?;
        if &cmd.address != me || cmd.device_key != my_key {
            return Err(WipeRefused::Misdirected);
        }
        if cmd.issued_at + WIPE_CLOCK_SKEW < linked_at || seen(&cmd.nonce) {
            return Err(WipeRefused::Replayed);
        }
        Ok(cmd)
    }
}

/// A wiped device's last words: it erased itself on this command's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WipeConfirmation {
    /// Format version (1).
    pub v: u32,
    /// The command's nonce.
    #[serde(with = "hex_bytes")]
    pub nonce: Vec<u8>,
    /// The device's key.
    #[serde(with = "hex_bytes")]
    pub device_key: Vec<u8>,
    /// When it erased itself (Unix seconds).
    pub wiped_at: u64,
}

impl WipeConfirmation {
    /// The body to sign with the device key (see [`WipeConfirmation::payload`]).
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// What the device key signs for `body`.
    pub fn payload(body: &[u8]) -> Vec<u8> {
        signed_payload(CONFIRM_CONTEXT, body)
    }

    /// Checks a confirmation against the command it answers.
    pub fn verify(signed: &Signed, command: &WipeCommand) -> Option<WipeConfirmation> {
        let c: WipeConfirmation = serde_json::from_slice(&signed.body).ok()?;
        let valid = c.nonce == command.nonce
            && c.device_key == command.device_key
            && auth::verify(&command.device_key, &Self::payload(&signed.body), &signed.signature);
        valid.then_some(c)
    }
}

/// The one-time secret behind a linking code. The new device shows it; the approving device
/// types (or scans) it. Both derive from it the id of the link at the server and the key that
/// encrypts everything exchanged: the server relays ciphertext it cannot open or replace.
pub struct LinkSecret(Zeroizing<Vec<u8>>);

impl fmt::Debug for LinkSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LinkSecret([redacted])")
    }
}

/// What a message on the linking channel is; bound into its encryption so one can never be
/// passed off as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkPart {
    /// New device → approving device: its key.
    Request,
    /// Approving device → new device: the account's keys.
    Response,
    /// Approving device → new device: recent history.
    History,
}

impl LinkSecret {
    /// A fresh secret (128 bits).
    pub fn generate() -> Result<Self, Error> {
        Ok(LinkSecret(Zeroizing::new(random_bytes(16)?)))
    }

    /// Reads a linking code as typed.
    pub fn parse(code: &str) -> Result<Self, Error> {
        match ungrouped(code) {
            Some(b) if b.len() == 16 => Ok(LinkSecret(Zeroizing::new(b))),
            _ => Err(Error::Invalid(
                "that is not a linking code: expected 7 groups of letters A-Z and digits 2-7"
                    .into(),
            )),
        }
    }

    /// The code to show.
    pub fn code(&self) -> Zeroizing<String> {
        Zeroizing::new(grouped(&self.0))
    }

    /// The link's id at the server (reveals nothing about the secret).
    pub fn id(&self) -> Vec<u8> {
        let mut id = vec![0u8; 16];
        derive(&self.0, b"sotto/v1/link-id", &mut id);
        id
    }

    fn key(&self) -> Zeroizing<[u8; 32]> {
        let mut k = Zeroizing::new([0u8; 32]);
        derive(&self.0, b"sotto/v1/link-key", k.as_mut());
        k
    }

    fn aad(&self, part: LinkPart) -> Vec<u8> {
        let mut aad = b"sotto/v1/link/".to_vec();
        aad.extend_from_slice(format!("{part:?}").as_bytes());
        aad.extend_from_slice(&self.id());
        aad
    }

    /// Encrypts one part of the exchange.
    pub fn seal(&self, part: LinkPart, plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        sealed(&self.key(), &self.aad(part), plaintext)
    }

    /// Decrypts one part; `None` if it was not sealed with this secret for this part.
    pub fn open(&self, part: LinkPart, data: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        opened(&self.key(), &self.aad(part), data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Address {
        "alice@example.org".parse().expect("address")
    }

    fn device(n: u8) -> ListedDevice {
        ListedDevice { key: vec![n; 32], added_at: 1, name: None }
    }

    fn first(identity: &IdentityKey, recovery: &RecoveryKey) -> DeviceList {
        DeviceList::first(alice(), identity, recovery.public(), None, device(1), 1)
    }

    #[test]
    fn lists_verify_and_refuse_tampering() {
        let id = IdentityKey::generate().expect("key");
        let rec = RecoveryKey::generate().expect("key");
        let signed = first(&id, &rec).sign(&id);
        assert!(DeviceList::verify(&signed).is_ok());
        let mut tampered = signed.clone();
        let at = tampered.body.len() - 3;
        tampered.body[at] ^= 1;
        assert!(DeviceList::verify(&tampered).is_err());
        let unsigned = SignedList { body: signed.body.clone(), signature: vec![0; 64] };
        assert_eq!(DeviceList::verify(&unsigned), Err(ListError::BadSignature));
        // Signed by someone else's key while naming alice's.
        let other = IdentityKey::generate().expect("key");
        let forged = SignedList {
            body: signed.body.clone(),
            signature: other.sign_raw(&signed_payload(LIST_CONTEXT, &signed.body)),
        };
        assert_eq!(DeviceList::verify(&forged), Err(ListError::BadSignature));
    }

    #[test]
    fn updates_refuse_rollback_equivocation_and_unendorsed_identity_changes() {
        let id = IdentityKey::generate().expect("key");
        let rec = RecoveryKey::generate().expect("key");
        let v1 = first(&id, &rec);
        let mut v2 = v1.next(2);
        v2.devices.push(device(2));
        assert_eq!(v2.check_update(&v1), Ok(false));
        assert_eq!(v1.check_update(&v2), Err(ListError::Rollback { seen: 2, got: 1 }));
        let mut v2b = v1.next(2);
        v2b.devices.push(device(3));
        assert_eq!(v2b.check_update(&v2), Err(ListError::Equivocation(2)));
        // A new identity key needs the recovery key's endorsement.
        let id2 = IdentityKey::generate().expect("key");
        let mut v3 = v2.next(3);
        v3.identity_key = id2.public();
        assert_eq!(v3.check_update(&v2), Err(ListError::UnendorsedIdentityChange));
        let impostor = RecoveryKey::generate().expect("key");
        v3.endorsement = Some(impostor.endorse(&alice(), &id2.public(), 3));
        assert_eq!(v3.check_update(&v2), Err(ListError::UnendorsedIdentityChange));
        v3.endorsement = Some(rec.endorse(&alice(), &id2.public(), 3));
        assert_eq!(v3.check_update(&v2), Ok(true));
        assert!(v3.endorsed_by(&rec.public()));
        // An endorsement for another version does not carry over.
        let mut v4 = v3.next(4);
        v4.identity_key = IdentityKey::generate().expect("key").public();
        v4.endorsement = v3.endorsement.clone();
        assert_eq!(v4.check_update(&v3), Err(ListError::UnendorsedIdentityChange));
    }

    #[test]
    fn wipe_commands_are_checked_for_signature_target_and_replay() {
        let id = IdentityKey::generate().expect("key");
        let op = IdentityKey::generate().expect("key");
        let target = vec![9u8; 32];
        let cmd = WipeCommand::new(alice(), target.clone(), Signer::Identity, 1000).expect("cmd");
        let signed = cmd.sign(&id);
        let never = |_: &[u8]| false;
        let check = |s: &Signed, key: &[u8], linked: u64, seen: &dyn Fn(&[u8]) -> bool| {
            WipeCommand::verify_for_target(s, &alice(), key, linked, &id.public(), None, seen)
        };
        assert_eq!(check(&signed, &target, 900, &never), Ok(cmd.clone()));
        assert_eq!(check(&signed, &[8u8; 32], 900, &never), Err(WipeRefused::Misdirected));
        assert_eq!(check(&signed, &target, 5000, &never), Err(WipeRefused::Replayed));
        assert_eq!(check(&signed, &target, 900, &|_| true), Err(WipeRefused::Replayed));
        // Forged: signed by a key that is not the account's.
        assert_eq!(check(&cmd.sign(&op), &target, 900, &never), Err(WipeRefused::Forged));
        // An operator command verifies only if the account accepted that operator key.
        let by_op = WipeCommand { signer: Signer::Operator, ..cmd.clone() }.sign(&op);
        assert_eq!(check(&by_op, &target, 900, &never), Err(WipeRefused::Forged));
        let accepted = WipeCommand::verify_for_target(
            &by_op,
            &alice(),
            &target,
            900,
            &id.public(),
            Some(&op.public()),
            never,
        );
        assert!(accepted.is_ok());
        let junk = Signed { body: b"{}".to_vec(), signature: vec![] };
        assert_eq!(check(&junk, &target, 0, &never), Err(WipeRefused::Malformed));
    }

    #[test]
    fn link_parts_open_only_with_the_right_code_and_part() {
        let secret = LinkSecret::generate().expect("secret");
        let code = secret.code();
        let again = LinkSecret::parse(&code.to_lowercase().replace('-', " ")).expect("parse");
        assert_eq!(again.id(), secret.id());
        let sealed = secret.seal(LinkPart::Request, b"hello").expect("seal");
        assert_eq!(again.open(LinkPart::Request, &sealed).expect("open").as_slice(), b"hello");
        assert!(again.open(LinkPart::Response, &sealed).is_none());
        let other = LinkSecret::generate().expect("secret");
        assert!(other.open(LinkPart::Request, &sealed).is_none());
        assert!(LinkSecret::parse("not a code").is_err());
        assert!(RecoveryKey::parse(&code).is_err());
    }

    #[test]
    fn device_names_are_sealed_to_the_identity() {
        let id = IdentityKey::generate().expect("key");
        let sealed = id.seal_name("laptop").expect("seal");
        assert_eq!(id.open_name(&sealed).as_deref(), Some("laptop"));
        assert!(IdentityKey::generate().expect("key").open_name(&sealed).is_none());
        assert!(format!("{id:?}").contains("redacted"));
        assert!(!format!("{id:?}").contains(&hex::encode(id.secret().as_slice())));
        let rec = RecoveryKey::generate().expect("key");
        assert!(!format!("{rec:?}").contains(rec.to_text().as_str()));
        let link = LinkSecret::generate().expect("secret");
        assert!(!format!("{link:?}").contains(link.code().as_str()));
    }
}
