//! The MLS seam (RFC 9420).
//!
//! This is the only module of Sotto that names the MLS library (openmls today). Everything it
//! exposes speaks in bytes and Sotto types — [`DeviceRef`], group ids as byte strings, epochs as
//! integers — so that the ciphersuite, and even the library, can change behind it.
//!
//! State lives in the storage provider the caller hands in ([`Provider::new`]). The client passes
//! a provider over its SQLite transaction, so a message's new MLS state commits (or rolls back)
//! together with the caller's own rows.
//!
//! Every device's credential is a basic credential whose identity is its [`DeviceRef`]
//! (`alice@example.org/3`) and whose signature key is the device key, which also authenticates
//! the device to the server (see [`crate::auth`]).

use std::fmt;
use std::sync::LazyLock;

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::storage::{CURRENT_VERSION, StorageProvider};

use zeroize::Zeroizing;

use crate::roster::{self, GroupCredential};
use crate::{Address, DeviceRef, Error};

mod crypto;
pub use crypto::Crypto;

/// The ciphersuites Sotto speaks. Both sign with Ed25519 (the device key) and encrypt with
/// ChaCha20-Poly1305; they differ in the key encapsulation that protects path secrets and
/// welcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Suite {
    /// `MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519` (0x0003): every group made before
    /// post-quantum groups, and groups with a device that publishes nothing else.
    Classical,
    /// `MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519` (0x004D): X-Wing, the hybrid of ML-KEM-768
    /// and X25519, so recorded traffic stays closed to a future quantum computer unless both
    /// break. The code point is provisional (draft-ietf-mls-pq-ciphersuites) and may change
    /// before the draft becomes an RFC.
    PostQuantum,
}

impl Suite {
    /// Every suite, the one new chats prefer first.
    pub const PREFERRED: [Suite; 2] = [Suite::PostQuantum, Suite::Classical];

    /// The MLS code point.
    pub fn code(self) -> u16 {
        self.ciphersuite() as u16
    }

    /// The suite with MLS code point `code`, if Sotto speaks it.
    pub fn from_code(code: u16) -> Option<Suite> {
        Suite::PREFERRED.into_iter().find(|s| s.code() == code)
    }

    /// A short name for people: `x25519` or `x-wing`.
    pub fn name(self) -> &'static str {
        match self {
            Suite::Classical => "x25519",
            Suite::PostQuantum => "x-wing",
        }
    }

    fn ciphersuite(self) -> Ciphersuite {
        match self {
            Suite::Classical => Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519,
            Suite::PostQuantum => Ciphersuite::MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519,
        }
    }
}

/// The signature scheme of every suite (device keys are Ed25519).
const SIGNATURE_SCHEME: SignatureScheme = SignatureScheme::ED25519;

/// How many past epochs' secrets a member keeps, so that application messages sent just before
/// a commit still decrypt after it.
const MAX_PAST_EPOCHS: usize = 5;

/// Length of a fresh group id in bytes.
pub const GROUP_ID_LEN: usize = 16;

/// The process's cryptography ([`Crypto`]), its random generators seeded from the operating
/// system once.
static CRYPTO: LazyLock<Crypto> = LazyLock::new(|| {
    // Seeding fails only when the operating system has no entropy source at all; nothing
    // could be encrypted safely then, so this is the one place that stops the process.
    Crypto::new().expect("the operating system's random generator is unavailable")
});

/// An MLS provider: [`Crypto`] for cryptography, RustCrypto's generator for randomness, and
/// the caller's storage.
pub struct Provider<S> {
    crypto: &'static Crypto,
    storage: S,
}

impl<S> fmt::Debug for Provider<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider").finish_non_exhaustive()
    }
}

impl<S: StorageProvider<CURRENT_VERSION>> Provider<S> {
    /// A provider over `storage`.
    pub fn new(storage: S) -> Self {
        Provider { crypto: &CRYPTO, storage }
    }

    /// `n` random bytes from the provider's cryptographic generator.
    pub fn random(&self, n: usize) -> Result<Vec<u8>, Error> {
        random_bytes(n)
    }
}

/// `n` random bytes from the MLS provider's cryptographic generator.
pub(crate) fn random_bytes(n: usize) -> Result<Vec<u8>, Error> {
    use openmls_traits::random::OpenMlsRand as _;
    CRYPTO.rust.random_vec(n).map_err(|_| Error::Internal("random generator failed"))
}

impl<S: StorageProvider<CURRENT_VERSION>> OpenMlsProvider for Provider<S> {
    type CryptoProvider = Crypto;
    type RandProvider = RustCrypto;
    type StorageProvider = S;

    fn storage(&self) -> &S {
        &self.storage
    }
    fn crypto(&self) -> &Crypto {
        self.crypto
    }
    fn rand(&self) -> &RustCrypto {
        &self.crypto.rust
    }
}

fn mls_err(e: impl fmt::Display) -> Error {
    Error::Mls(e.to_string())
}

fn storage_err(e: impl fmt::Display) -> Error {
    Error::Storage(e.to_string())
}

/// A device's signing key (Ed25519). The private half zeroizes on drop and never prints.
pub struct DeviceKey(SignatureKeyPair);

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceKey")
            .field("public", &hex::encode(self.0.public()))
            .field("private", &"[redacted]")
            .finish()
    }
}

impl DeviceKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, Error> {
        SignatureKeyPair::new(SIGNATURE_SCHEME)
            .map(DeviceKey)
            .map_err(|_| Error::Internal("key generation failed"))
    }

    /// The public key (32 bytes).
    pub fn public(&self) -> &[u8] {
        self.0.public()
    }

    /// Signs `payload` (build payloads with [`crate::auth`]).
    pub fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, Error> {
        use openmls_traits::signatures::Signer;
        self.0.sign(payload).map_err(|_| Error::Internal("signing failed"))
    }

    /// Saves the key in the provider's storage.
    pub fn store<S: StorageProvider<CURRENT_VERSION>>(&self, p: &Provider<S>) -> Result<(), Error> {
        self.0.store(&p.storage).map_err(storage_err)
    }

    /// Loads the key whose public half is `public`.
    pub fn load<S: StorageProvider<CURRENT_VERSION>>(
        p: &Provider<S>,
        public: &[u8],
    ) -> Option<Self> {
        SignatureKeyPair::read(&p.storage, public, SIGNATURE_SCHEME).map(DeviceKey)
    }
}

/// A device's MLS identity: who it is and the key it signs with.
#[derive(Debug)]
pub struct Identity {
    /// The device, as named in its credential.
    pub device: DeviceRef,
    /// The device's signing key.
    pub key: DeviceKey,
}

impl Identity {
    fn credential(&self) -> CredentialWithKey {
        CredentialWithKey {
            credential: BasicCredential::new(self.device.to_string().into_bytes()).into(),
            signature_key: self.key.public().to_vec().into(),
        }
    }
}

/// A key package that passed validation, ready to add to a group.
#[derive(Debug, Clone)]
pub struct ValidKeyPackage {
    package: KeyPackage,
    /// The device the key package belongs to.
    pub device: DeviceRef,
}

impl ValidKeyPackage {
    /// The suite the key package is for: it can only join groups of that suite.
    pub fn suite(&self) -> Suite {
        // Validation admitted only suites Sotto speaks.
        Suite::from_code(self.package.ciphersuite() as u16).unwrap_or(Suite::Classical)
    }

    /// Whether the device says, in its signed leaf, that it speaks `suite`.
    pub fn offers(&self, suite: Suite) -> bool {
        let wanted: VerifiableCiphersuite = suite.ciphersuite().into();
        self.package.leaf_node().capabilities().ciphersuites().contains(&wanted)
    }

    /// The device's signature key, as its leaf carries it.
    pub fn signature_key(&self) -> &[u8] {
        self.package.leaf_node().signature_key().as_slice()
    }
}

/// What a commit produced: send `commit` to the group's other members and `welcome` (if any)
/// to the added ones, tagged with `epoch` so the server can order commits.
#[derive(Debug)]
pub struct CommitOutput {
    /// The epoch the commit was made in; the group moves to `epoch + 1` once it is accepted.
    pub epoch: u64,
    /// The commit message.
    pub commit: Vec<u8>,
    /// The welcome for added members.
    pub welcome: Option<Vec<u8>>,
}

/// What processing an incoming message did. `Debug` leaves the plaintext out.
#[non_exhaustive]
pub enum Incoming {
    /// A welcome: this device joined a group.
    Joined {
        /// The group joined.
        group_id: Vec<u8>,
        /// The member who added this device, when known.
        inviter: Option<DeviceRef>,
    },
    /// An application message.
    Application {
        /// The group it belongs to.
        group_id: Vec<u8>,
        /// Its authenticated sender.
        sender: DeviceRef,
        /// The decrypted content.
        plaintext: Vec<u8>,
    },
    /// A commit, now merged.
    Commit {
        /// The group it belongs to.
        group_id: Vec<u8>,
        /// The committer.
        sender: Option<DeviceRef>,
        /// Devices added by the commit.
        added: Vec<DeviceRef>,
        /// Devices removed by another member.
        removed: Vec<DeviceRef>,
        /// Devices removed at their own request (they left).
        left: Vec<DeviceRef>,
        /// Whether this device was removed.
        self_removed: bool,
    },
    /// A proposal, stored until someone commits it.
    Proposal {
        /// The group it belongs to.
        group_id: Vec<u8>,
        /// The proposer.
        sender: Option<DeviceRef>,
    },
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Incoming::Joined { group_id, inviter } => {
                write!(f, "Joined({}, by {inviter:?})", hex::encode(group_id))
            }
            Incoming::Application { group_id, sender, plaintext } => write!(
                f,
                "Application({}, from {sender}, [{} bytes])",
                hex::encode(group_id),
                plaintext.len()
            ),
            Incoming::Commit { group_id, added, removed, left, .. } => write!(
                f,
                "Commit({}, added {added:?}, removed {removed:?}, left {left:?})",
                hex::encode(group_id)
            ),
            Incoming::Proposal { group_id, sender } => {
                write!(f, "Proposal({}, from {sender:?})", hex::encode(group_id))
            }
        }
    }
}

fn device_of(credential: &Credential) -> Option<DeviceRef> {
    let basic = BasicCredential::try_from(credential.clone()).ok()?;
    std::str::from_utf8(basic.identity()).ok()?.parse().ok()
}

fn create_config(suite: Suite) -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .ciphersuite(suite.ciphersuite())
        .max_past_epochs(MAX_PAST_EPOCHS)
        .use_ratchet_tree_extension(true)
        .build()
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .max_past_epochs(MAX_PAST_EPOCHS)
        .use_ratchet_tree_extension(true)
        .build()
}

fn load<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    group_id: &[u8],
) -> Result<MlsGroup, Error> {
    MlsGroup::load(&p.storage, &GroupId::from_slice(group_id))
        .map_err(storage_err)?
        .ok_or_else(|| Error::UnknownGroup(hex::encode(group_id)))
}

fn serialize(msg: &MlsMessageOut) -> Result<Vec<u8>, Error> {
    msg.tls_serialize_detached().map_err(|_| Error::Internal("MLS serialization failed"))
}

/// Creates `count` one-time key packages for `suite`, or last-resort ones if `last_resort`.
/// Their leaves say the device speaks every suite Sotto does (see [`key_packages_offering`]).
pub fn key_packages<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    me: &Identity,
    suite: Suite,
    count: usize,
    last_resort: bool,
) -> Result<Vec<Vec<u8>>, Error> {
    key_packages_offering(p, me, suite, &Suite::PREFERRED, count, last_resort)
}

/// [`key_packages`] whose leaves list `offers` (and `suite`) as the suites the device speaks.
/// The list is signed with the package, so a key package of one suite also tells, under the
/// device's signature, which other suites it has published packages for: a server that hands
/// out a classical package and holds back the post-quantum ones is caught by it
/// ([`ValidKeyPackage::offers`]).
pub fn key_packages_offering<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    me: &Identity,
    suite: Suite,
    offers: &[Suite],
    count: usize,
    last_resort: bool,
) -> Result<Vec<Vec<u8>>, Error> {
    let mut suites: Vec<Ciphersuite> = offers.iter().map(|s| s.ciphersuite()).collect();
    if !offers.contains(&suite) {
        suites.push(suite.ciphersuite());
    }
    (0..count)
        .map(|_| {
            let mut capabilities = Capabilities::builder().ciphersuites(suites.clone());
            let mut builder = KeyPackage::builder();
            if last_resort {
                // The leaf must declare the extension it carries, or the key package fails
                // validation at whoever claims it.
                capabilities = capabilities.extensions(vec![ExtensionType::LastResort]);
                builder = builder.mark_as_last_resort();
            }
            let bundle = builder
                .leaf_node_capabilities(capabilities.build())
                .build(suite.ciphersuite(), p, &me.key.0, me.credential())
                .map_err(mls_err)?;
            bundle
                .key_package()
                .tls_serialize_detached()
                .map_err(|_| Error::Internal("key package serialization failed"))
        })
        .collect()
}

/// The reference of one of this device's key packages (made by [`key_packages`]), under which
/// its private keys are stored.
pub fn key_package_ref<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    bytes: &[u8],
) -> Result<Vec<u8>, Error> {
    let package = KeyPackageIn::tls_deserialize(&mut &bytes[..])
        .map_err(|e| Error::MalformedMls(e.to_string()))?
        .validate(p.crypto(), ProtocolVersion::Mls10)
        .map_err(|e| Error::InvalidKeyPackage(e.to_string()))?;
    package
        .hash_ref(p.crypto())
        .map_err(mls_err)?
        .tls_serialize_detached()
        .map_err(|_| Error::Internal("key package reference serialization failed"))
}

/// Forgets the private keys of one of this device's key packages: nothing made for it opens
/// on this device any more.
pub fn forget_key_package<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    reference: &[u8],
) -> Result<(), Error> {
    let reference = KeyPackageRef::tls_deserialize(&mut &reference[..])
        .map_err(|e| Error::MalformedMls(e.to_string()))?;
    p.storage.delete_key_package(&reference).map_err(storage_err)
}

/// Decodes and validates a key package handed out for an account, checking that its
/// credential names a device of `expected` and, if given, exactly `device_id`.
pub fn validate_key_package<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    bytes: &[u8],
    expected: &Address,
    device_id: Option<u64>,
) -> Result<ValidKeyPackage, Error> {
    let mut slice = bytes;
    let kp_in = KeyPackageIn::tls_deserialize(&mut slice)
        .map_err(|e| Error::MalformedMls(e.to_string()))?;
    if !slice.is_empty() {
        return Err(Error::MalformedMls("trailing bytes after key package".into()));
    }
    let package = kp_in
        .validate(p.crypto(), ProtocolVersion::Mls10)
        .map_err(|e| Error::InvalidKeyPackage(e.to_string()))?;
    let Some(suite) = Suite::from_code(package.ciphersuite() as u16) else {
        return Err(Error::InvalidKeyPackage("unsupported ciphersuite".into()));
    };
    // The keys others will encrypt to must be keys of the suite: a member's malformed key
    // would make every later commit in its chats fail for everyone.
    let leaf_key = package
        .leaf_node()
        .encryption_key()
        .tls_serialize_detached()
        .map_err(|_| Error::InvalidKeyPackage("an unreadable leaf key".into()))?;
    // A variable-length vector: its length prefix takes 1, 2 or 4 bytes (RFC 9420, 2.1.2).
    let prefix = leaf_key.first().map_or(0, |b| 1usize << (b >> 6));
    let keys = [package.hpke_init_key().as_slice(), leaf_key.get(prefix..).unwrap_or_default()];
    if keys.iter().any(|k| !crypto::public_key_fits(suite.ciphersuite(), k)) {
        return Err(Error::InvalidKeyPackage("a key of the wrong length for its suite".into()));
    }
    let device = device_of(package.leaf_node().credential());
    match device {
        Some(d) if &d.address == expected && device_id.is_none_or(|id| id == d.device_id) => {
            Ok(ValidKeyPackage { package, device: d })
        }
        other => Err(Error::KeyPackageMismatch {
            expected: expected.to_string(),
            found: other
                .map(|d| d.to_string())
                .unwrap_or_else(|| "an unreadable credential".into()),
        }),
    }
}

/// Creates a new group of `suite` with only this device in it, at epoch 0, and returns its id.
pub fn create_group<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    me: &Identity,
    suite: Suite,
) -> Result<Vec<u8>, Error> {
    let id = p.random(GROUP_ID_LEN)?;
    MlsGroup::new_with_group_id(
        p,
        &me.key.0,
        &create_config(suite),
        GroupId::from_slice(&id),
        me.credential(),
    )
    .map_err(mls_err)?;
    Ok(id)
}

/// Adds devices to a group. The commit stays pending until [`merge_pending_commit`].
pub fn add_members<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    group_id: &[u8],
    me: &Identity,
    packages: &[ValidKeyPackage],
) -> Result<CommitOutput, Error> {
    let mut group = load(p, group_id)?;
    same_suite(&group, packages)?;
    let epoch = group.epoch().as_u64();
    let kps: Vec<KeyPackage> = packages.iter().map(|k| k.package.clone()).collect();
    let (commit, welcome, _) = group.add_members(p, &me.key.0, &kps).map_err(mls_err)?;
    Ok(CommitOutput { epoch, commit: serialize(&commit)?, welcome: Some(serialize(&welcome)?) })
}

/// Refuses key packages of another suite than the group's, by name (the library's own error
/// would not say which device).
fn same_suite(group: &MlsGroup, packages: &[ValidKeyPackage]) -> Result<(), Error> {
    match packages.iter().find(|k| k.package.ciphersuite() != group.ciphersuite()) {
        Some(k) => Err(Error::InvalidKeyPackage(format!(
            "{}'s key package is for {}, the group uses another suite",
            k.device,
            k.suite().name()
        ))),
        None => Ok(()),
    }
}

/// The suite of a group.
pub fn group_suite<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    group_id: &[u8],
) -> Result<Suite, Error> {
    let group = load(p, group_id)?;
    Suite::from_code(group.ciphersuite() as u16)
        .ok_or_else(|| Error::MalformedMls("a group of an unknown suite".into()))
}

/// Commits the removal of `leaves` (pending until [`merge_pending_commit`]).
fn commit_removal<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    group: &mut MlsGroup,
    me: &Identity,
    leaves: &[LeafNodeIndex],
) -> Result<CommitOutput, Error> {
    let epoch = group.epoch().as_u64();
    let (commit, welcome, _) = group.remove_members(p, &me.key.0, leaves).map_err(mls_err)?;
    let welcome = welcome.as_ref().map(serialize).transpose()?;
    Ok(CommitOutput { epoch, commit: serialize(&commit)?, welcome })
}

/// Removes every device of the given accounts from a group. The commit stays pending until
/// [`merge_pending_commit`].
pub fn remove_accounts<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    group_id: &[u8],
    me: &Identity,
    accounts: &[Address],
) -> Result<CommitOutput, Error> {
    let mut group = load(p, group_id)?;
    let mut leaves = Vec::new();
    for account in accounts {
        let before = leaves.len();
        for m in group.members() {
            if device_of(&m.credential).is_some_and(|d| &d.address == account) {
                leaves.push(m.index);
            }
        }
        if leaves.len() == before {
            return Err(Error::NotAMember(account.to_string()));
        }
    }
    commit_removal(p, &mut group, me, &leaves)
}

/// Removes the given devices from the group (a revoked device, for example).
pub fn remove_devices<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    group_id: &[u8],
    me: &Identity,
    devices: &[DeviceRef],
) -> Result<CommitOutput, Error> {
    let mut group = load(p, group_id)?;
    let leaves = leaves_of(&group, devices)?;
    commit_removal(p, &mut group, me, &leaves)
}

fn leaves_of(group: &MlsGroup, devices: &[DeviceRef]) -> Result<Vec<LeafNodeIndex>, Error> {
    devices
        .iter()
        .map(|device| {
            group
                .members()
                .find(|m| device_of(&m.credential).as_ref() == Some(device))
                .map(|m| m.index)
                .ok_or_else(|| Error::NotAMember(device.to_string()))
        })
        .collect()
}

/// Removes `remove` and adds the devices of `packages` in one commit (an account whose
/// devices were replaced, as after a recovery: members see its devices change, not the
/// account leave and come back). The commit stays pending until [`merge_pending_commit`].
pub fn replace_devices<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    group_id: &[u8],
    me: &Identity,
    remove: &[DeviceRef],
    packages: &[ValidKeyPackage],
) -> Result<CommitOutput, Error> {
    let mut group = load(p, group_id)?;
    same_suite(&group, packages)?;
    let epoch = group.epoch().as_u64();
    let leaves = leaves_of(&group, remove)?;
    let bundle = group
        .commit_builder()
        .propose_removals(leaves)
        .propose_adds(packages.iter().map(|k| k.package.clone()))
        .load_psks(p.storage())
        .map_err(mls_err)?
        .build(p.rand(), p.crypto(), &me.key.0, |_| true)
        .map_err(mls_err)?
        .stage_commit(p)
        .map_err(mls_err)?;
    let welcome = bundle.to_welcome_msg().as_ref().map(serialize).transpose()?;
    let (commit, _, _) = bundle.into_contents();
    Ok(CommitOutput { epoch, commit: serialize(&commit)?, welcome })
}

/// The group's members with their signature keys.
pub fn member_keys<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    group_id: &[u8],
) -> Result<Vec<(DeviceRef, Vec<u8>)>, Error> {
    Ok(load(p, group_id)?
        .members()
        .filter_map(|m| device_of(&m.credential).map(|d| (d, m.signature_key.clone())))
        .collect())
}

/// Commits the proposals other members sent (for example a member leaving), if there are any.
pub fn commit_pending_proposals<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    group_id: &[u8],
    me: &Identity,
) -> Result<Option<CommitOutput>, Error> {
    let mut group = load(p, group_id)?;
    if group.pending_proposals().next().is_none() || !group.is_active() {
        return Ok(None);
    }
    let epoch = group.epoch().as_u64();
    let (commit, welcome, _) = group.commit_to_pending_proposals(p, &me.key.0).map_err(mls_err)?;
    let welcome = welcome.as_ref().map(serialize).transpose()?;
    Ok(Some(CommitOutput { epoch, commit: serialize(&commit)?, welcome }))
}

/// Commits a fresh leaf key for this device (and any proposals waiting), so that keys of its
/// that leaked stop opening the group's later messages (post-compromise security). Pending
/// until [`merge_pending_commit`].
pub fn self_update<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    group_id: &[u8],
    me: &Identity,
) -> Result<CommitOutput, Error> {
    let mut group = load(p, group_id)?;
    let epoch = group.epoch().as_u64();
    let bundle = group.self_update(p, &me.key.0, LeafNodeParameters::default()).map_err(mls_err)?;
    // A self-update adds no one: there is no welcome.
    Ok(CommitOutput { epoch, commit: serialize(bundle.commit())?, welcome: None })
}

/// Forgets this device's pending commit (the server refused it: another commit won the epoch).
pub fn clear_pending_commit<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    group_id: &[u8],
) -> Result<(), Error> {
    load(p, group_id)?.clear_pending_commit(&p.storage).map_err(storage_err)
}

/// The group's epoch authenticator: equal on every member in the same epoch of the same
/// group, different on a fork.
pub fn epoch_authenticator<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    group_id: &[u8],
) -> Result<Vec<u8>, Error> {
    Ok(load(p, group_id)?.epoch_authenticator().as_slice().to_vec())
}

/// The group's credential for its current epoch: what a submission to the group shows the
/// server (see [`crate::roster`]).
pub fn group_credential<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    group_id: &[u8],
) -> Result<GroupCredential, Error> {
    credential_of(&load(p, group_id)?, p)
}

fn credential_of<S: StorageProvider<CURRENT_VERSION>>(
    group: &MlsGroup,
    p: &Provider<S>,
) -> Result<GroupCredential, Error> {
    let secret = Zeroizing::new(
        group
            .export_secret(p.crypto(), roster::EXPORTER_LABEL, b"", roster::CREDENTIAL_LEN)
            .map_err(mls_err)?,
    );
    GroupCredential::from_bytes(&secret)
}

/// The credential of the epoch this device's pending commit leads to, if it has one: the
/// commit brings it to the server, which seals the new roster under it.
pub fn next_group_credential<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    group_id: &[u8],
) -> Result<Option<GroupCredential>, Error> {
    let group = load(p, group_id)?;
    let Some(staged) = group.pending_commit() else { return Ok(None) };
    let secret = Zeroizing::new(
        staged
            .export_secret(p.crypto(), roster::EXPORTER_LABEL, b"", roster::CREDENTIAL_LEN)
            .map_err(mls_err)?,
    );
    GroupCredential::from_bytes(&secret).map(Some)
}

/// The HPKE suite of queue keys (see [`crate::queue`]): X25519, HKDF-SHA256,
/// ChaCha20-Poly1305.
const QUEUE_HPKE: openmls_traits::types::HpkeConfig = openmls_traits::types::HpkeConfig(
    openmls_traits::types::HpkeKemType::DhKem25519,
    openmls_traits::types::HpkeKdfType::HkdfSha256,
    openmls_traits::types::HpkeAeadType::ChaCha20Poly1305,
);

/// An HPKE key pair (private, public) of the queue suite, derived from `seed`.
pub(crate) fn hpke_keypair(seed: &[u8]) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), Error> {
    use openmls_traits::crypto::OpenMlsCrypto as _;
    let pair = CRYPTO
        .derive_hpke_keypair(QUEUE_HPKE, seed)
        .map_err(|_| Error::Internal("deriving an HPKE key pair failed"))?;
    Ok((Zeroizing::new(pair.private.to_vec()), pair.public))
}

/// HPKE to `public` in the queue suite: the encapsulation and `len` bytes exported.
pub(crate) fn hpke_export_to(
    public: &[u8],
    info: &[u8],
    context: &[u8],
    len: usize,
) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), Error> {
    use openmls_traits::crypto::OpenMlsCrypto as _;
    let (enc, secret) = CRYPTO
        .hpke_setup_sender_and_export(QUEUE_HPKE, public, info, context, len)
        .map_err(|_| Error::Invalid("not a usable queue key".into()))?;
    Ok((enc, Zeroizing::new(secret.to_vec())))
}

/// The receiving side of [`hpke_export_to`].
pub(crate) fn hpke_export_from(
    enc: &[u8],
    private: &[u8],
    info: &[u8],
    context: &[u8],
    len: usize,
) -> Result<Zeroizing<Vec<u8>>, Error> {
    use openmls_traits::crypto::OpenMlsCrypto as _;
    let secret = CRYPTO
        .hpke_setup_receiver_and_export(QUEUE_HPKE, enc, private, info, context, len)
        .map_err(|_| Error::MalformedMls("a sealed queued message does not open".into()))?;
    Ok(Zeroizing::new(secret.to_vec()))
}

/// What a commit changes in a group's membership.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Devices it adds.
    pub added: Vec<DeviceRef>,
    /// Devices it removes on a member's decision.
    pub removed: Vec<DeviceRef>,
    /// Devices it removes at their own request (they left).
    pub left: Vec<DeviceRef>,
}

fn changes_of(group: &MlsGroup, staged: &StagedCommit) -> Changes {
    let added = staged
        .add_proposals()
        .filter_map(|a| device_of(a.add_proposal().key_package().leaf_node().credential()))
        .collect();
    let (mut removed, mut left) = (Vec::new(), Vec::new());
    for r in staged.remove_proposals() {
        let leaf = r.remove_proposal().removed();
        let Some(device) = group.member(leaf).and_then(device_of) else { continue };
        match r.sender() {
            Sender::Member(by) if *by == leaf => left.push(device),
            _ => removed.push(device),
        }
    }
    Changes { added, removed, left }
}

/// What this device's pending commit changes: whom it adds, removes, and lets leave (the
/// server takes the last two off the group's roster).
pub fn pending_changes<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    group_id: &[u8],
) -> Result<Changes, Error> {
    let group = load(p, group_id)?;
    Ok(group.pending_commit().map(|staged| changes_of(&group, staged)).unwrap_or_default())
}

/// Applies this device's own pending commit once the server has accepted it.
pub fn merge_pending_commit<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    group_id: &[u8],
) -> Result<(), Error> {
    load(p, group_id)?.merge_pending_commit(p).map_err(mls_err)
}

/// Creates a proposal to remove this device from the group; another member commits it.
/// Returns the epoch it was made in and the message.
pub fn leave<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    group_id: &[u8],
    me: &Identity,
) -> Result<(u64, Vec<u8>), Error> {
    let mut group = load(p, group_id)?;
    let epoch = group.epoch().as_u64();
    let msg = group.leave_group(p, &me.key.0).map_err(mls_err)?;
    Ok((epoch, serialize(&msg)?))
}

/// Deletes a group's local state.
pub fn delete_group<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    group_id: &[u8],
) -> Result<(), Error> {
    match MlsGroup::load(&p.storage, &GroupId::from_slice(group_id)).map_err(storage_err)? {
        Some(mut g) => g.delete(&p.storage).map_err(storage_err),
        None => Ok(()),
    }
}

/// Encrypts an application message for the group.
pub fn encrypt<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    group_id: &[u8],
    me: &Identity,
    plaintext: &[u8],
) -> Result<Vec<u8>, Error> {
    let mut group = load(p, group_id)?;
    let msg = group.create_message(p, &me.key.0, plaintext).map_err(mls_err)?;
    serialize(&msg)
}

/// An application message ready to submit: its epoch, the group's members and the ciphertext.
#[derive(Debug)]
pub struct Sealed {
    /// The epoch it is encrypted in.
    pub epoch: u64,
    /// The group's devices, in leaf order (the sender included).
    pub members: Vec<DeviceRef>,
    /// The MLS message.
    pub ciphertext: Vec<u8>,
    /// The group's credential for `epoch`, which the submission shows the server.
    pub credential: GroupCredential,
}

/// [`encrypt`] with the epoch, members and credential it was encrypted for, from one load of
/// the group.
pub fn seal<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    group_id: &[u8],
    me: &Identity,
    plaintext: &[u8],
) -> Result<Sealed, Error> {
    let mut group = load(p, group_id)?;
    let epoch = group.epoch().as_u64();
    let members = group.members().filter_map(|m| device_of(&m.credential)).collect();
    let credential = credential_of(&group, p)?;
    let msg = group.create_message(p, &me.key.0, plaintext).map_err(mls_err)?;
    Ok(Sealed { epoch, members, ciphertext: serialize(&msg)?, credential })
}

/// The devices in a group, in leaf order.
pub fn members<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    group_id: &[u8],
) -> Result<Vec<DeviceRef>, Error> {
    Ok(load(p, group_id)?.members().filter_map(|m| device_of(&m.credential)).collect())
}

/// The group's current epoch.
pub fn epoch<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    group_id: &[u8],
) -> Result<u64, Error> {
    Ok(load(p, group_id)?.epoch().as_u64())
}

/// This device's current leaf encryption key in the group (a commit of its own, such as
/// [`self_update`], replaces it).
pub fn own_leaf_key<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    group_id: &[u8],
) -> Result<Vec<u8>, Error> {
    let group = load(p, group_id)?;
    let leaf = group.own_leaf_node().ok_or(Error::UnknownGroup("no own leaf".into()))?;
    leaf.encryption_key()
        .tls_serialize_detached()
        .map_err(|e| Error::Invalid(format!("cannot encode a leaf key: {e}")))
}

/// Whether the group holds proposals waiting for a commit.
pub fn has_pending_proposals<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    group_id: &[u8],
) -> Result<bool, Error> {
    let group = load(p, group_id)?;
    Ok(group.is_active() && group.pending_proposals().next().is_some())
}

/// Whether this device is still a member of the group.
pub fn is_active<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    group_id: &[u8],
) -> Result<bool, Error> {
    Ok(load(p, group_id)?.is_active())
}

/// The group a protocol message belongs to, without processing it; `None` for a welcome.
pub fn group_of(bytes: &[u8]) -> Result<Option<Vec<u8>>, Error> {
    match decode(bytes)?.extract() {
        MlsMessageBodyIn::Welcome(_) => Ok(None),
        MlsMessageBodyIn::PrivateMessage(m) => {
            Ok(Some(ProtocolMessage::from(m).group_id().as_slice().to_vec()))
        }
        MlsMessageBodyIn::PublicMessage(m) => {
            Ok(Some(ProtocolMessage::from(m).group_id().as_slice().to_vec()))
        }
        _ => Err(Error::UnexpectedMls("neither a welcome nor a group message")),
    }
}

fn decode(bytes: &[u8]) -> Result<MlsMessageIn, Error> {
    let mut slice = bytes;
    let msg = MlsMessageIn::tls_deserialize(&mut slice)
        .map_err(|e| Error::MalformedMls(e.to_string()))?;
    if !slice.is_empty() {
        return Err(Error::MalformedMls("trailing bytes after message".into()));
    }
    Ok(msg)
}

/// Processes one incoming message: joins on a welcome, decrypts an application message,
/// merges a commit, or stores a proposal.
pub fn process<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    bytes: &[u8],
) -> Result<Incoming, Error> {
    process_cached(p, bytes, &mut GroupCache::default())
}

/// A group kept in memory between messages, as the last application message processed left
/// it (in memory and in storage alike), so that the next message to the same group need not
/// load its state again. Valid only while nothing else writes the group's state: its holder
/// [`GroupCache::clear`]s it otherwise. `Debug` shows nothing of the group.
#[derive(Default)]
pub struct GroupCache {
    group: Option<MlsGroup>,
}

impl std::fmt::Debug for GroupCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCache").field("holds", &self.group.is_some()).finish()
    }
}

impl GroupCache {
    /// Forgets the group held (its state in storage may have changed).
    pub fn clear(&mut self) {
        self.group = None;
    }
}

/// [`process`] with a group kept between calls: the group a message is for comes from
/// `cache` if it holds that group, else from storage; after an application message the
/// group stays in `cache`. Anything else (a commit, a proposal, a welcome, an error, whose
/// storage writes the caller may undo) leaves `cache` empty.
pub fn process_cached<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    bytes: &[u8],
    cache: &mut GroupCache,
) -> Result<Incoming, Error> {
    let cached = cache.group.take();
    let protocol: ProtocolMessage = match decode(bytes)?.extract() {
        MlsMessageBodyIn::Welcome(welcome) => {
            let staged = StagedWelcome::new_from_welcome(p, &join_config(), welcome, None)
                .map_err(mls_err)?;
            let inviter = staged.welcome_sender().ok().and_then(|l| device_of(l.credential()));
            let group = staged.into_group(p).map_err(mls_err)?;
            return Ok(Incoming::Joined {
                group_id: group.group_id().as_slice().to_vec(),
                inviter,
            });
        }
        MlsMessageBodyIn::PrivateMessage(m) => m.into(),
        MlsMessageBodyIn::PublicMessage(m) => m.into(),
        _ => return Err(Error::UnexpectedMls("neither a welcome nor a group message")),
    };
    let group_id = protocol.group_id().as_slice().to_vec();
    let mut group = match cached {
        Some(g) if g.group_id().as_slice() == group_id.as_slice() => g,
        _ => load(p, &group_id)?,
    };
    let processed = group.process_message(p, protocol).map_err(mls_err)?;
    let sender = device_of(processed.credential());
    match processed.into_content() {
        ProcessedMessageContent::ApplicationMessage(app) => {
            let sender = sender.ok_or(Error::UnexpectedMls("sender has no Sotto credential"))?;
            cache.group = Some(group);
            Ok(Incoming::Application { group_id, sender, plaintext: app.into_bytes() })
        }
        ProcessedMessageContent::ProposalMessage(proposal) => {
            group.store_pending_proposal(&p.storage, *proposal).map_err(storage_err)?;
            Ok(Incoming::Proposal { group_id, sender })
        }
        ProcessedMessageContent::StagedCommitMessage(staged) => {
            let Changes { added, removed, left } = changes_of(&group, &staged);
            let self_removed = staged.self_removed();
            group.merge_staged_commit(p, *staged).map_err(mls_err)?;
            Ok(Incoming::Commit { group_id, sender, added, removed, left, self_removed })
        }
        _ => Err(Error::UnexpectedMls("external proposals are not supported")),
    }
}

#[cfg(test)]
mod tests {
    use openmls_memory_storage::MemoryStorage;

    use super::*;

    type InMemProvider = Provider<MemoryStorage>;

    fn device(name: &str, id: u64) -> (InMemProvider, Identity) {
        let p = Provider::new(MemoryStorage::default());
        let key = DeviceKey::generate().expect("key");
        key.store(&p).expect("store key");
        let device = DeviceRef {
            address: format!("{name}@localhost").parse().expect("addr"),
            device_id: id,
        };
        (p, Identity { device, key })
    }

    fn package(from: &(InMemProvider, Identity), checker: &InMemProvider) -> ValidKeyPackage {
        package_in(from, checker, Suite::Classical)
    }

    fn package_in(
        from: &(InMemProvider, Identity),
        checker: &InMemProvider,
        suite: Suite,
    ) -> ValidKeyPackage {
        let kp = key_packages(&from.0, &from.1, suite, 1, false).expect("kp").pop().expect("one");
        validate_key_package(checker, &kp, &from.1.device.address, Some(from.1.device.device_id))
            .expect("valid")
    }

    #[test]
    fn key_packages_are_checked_against_the_claimed_device() {
        let (alice, bob) = (device("alice", 1), device("bob", 2));
        let kp = key_packages(&bob.0, &bob.1, Suite::Classical, 1, false)
            .expect("kp")
            .pop()
            .expect("one");
        let eve: Address = "eve@localhost".parse().expect("addr");
        assert!(matches!(
            validate_key_package(&alice.0, &kp, &eve, None),
            Err(Error::KeyPackageMismatch { .. })
        ));
        assert!(matches!(
            validate_key_package(&alice.0, &kp, &bob.1.device.address, Some(3)),
            Err(Error::KeyPackageMismatch { .. })
        ));
        assert!(matches!(
            validate_key_package(&alice.0, b"\x00\x01junk", &bob.1.device.address, None),
            Err(Error::MalformedMls(_))
        ));
        let mut trailing = kp.clone();
        trailing.push(0);
        assert!(validate_key_package(&alice.0, &trailing, &bob.1.device.address, None).is_err());
        let mut tampered = kp.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(validate_key_package(&alice.0, &tampered, &bob.1.device.address, None).is_err());
    }

    #[test]
    fn a_group_lives_through_add_message_and_leave() {
        group_lifecycle(Suite::Classical);
    }

    /// A group with alice and bob in it, bob joined.
    fn pair(alice: &(InMemProvider, Identity), bob: &(InMemProvider, Identity)) -> Vec<u8> {
        let gid = create_group(&alice.0, &alice.1, Suite::Classical).expect("group");
        let out = add_members(&alice.0, &gid, &alice.1, &[package(bob, &alice.0)]).expect("add");
        merge_pending_commit(&alice.0, &gid).expect("merge");
        assert!(matches!(
            process(&bob.0, &out.welcome.expect("welcome")),
            Ok(Incoming::Joined { .. })
        ));
        gid
    }

    #[test]
    fn a_kept_group_reads_a_run_of_messages_across_groups_as_loading_does() {
        let (alice, bob, carol) = (device("alice", 1), device("bob", 2), device("carol", 3));
        let (one, two) = (pair(&alice, &bob), pair(&carol, &bob));
        let mut cache = GroupCache::default();
        for i in 0..6 {
            let (from, gid) = if i % 3 == 2 { (&carol, &two) } else { (&alice, &one) };
            let text = format!("message {i}");
            let ct = encrypt(&from.0, gid, &from.1, text.as_bytes()).expect("encrypt");
            match process_cached(&bob.0, &ct, &mut cache).expect("decrypt") {
                Incoming::Application { group_id, plaintext, .. } => {
                    assert_eq!((&group_id, plaintext), (gid, text.into_bytes()));
                }
                other => panic!("expected a message, got {other:?}"),
            }
            assert!(cache.group.is_some(), "an application message leaves its group kept");
        }
        // What the kept group wrote is in storage: bob's state loads and goes on from there,
        // and a replay fails against either.
        let ct = encrypt(&alice.0, &one, &alice.1, b"after").expect("encrypt");
        assert!(matches!(process(&bob.0, &ct), Ok(Incoming::Application { .. })));
        assert!(process_cached(&bob.0, &ct, &mut cache).is_err(), "a replay");
        assert!(cache.group.is_none(), "an error leaves nothing kept");
        // Bob's own messages, sent meanwhile, still read at alice's.
        let mine = encrypt(&bob.0, &one, &bob.1, b"from bob").expect("encrypt");
        assert!(matches!(process(&alice.0, &mine), Ok(Incoming::Application { .. })));
    }

    #[test]
    fn an_x_wing_group_lives_through_add_message_and_leave() {
        group_lifecycle(Suite::PostQuantum);
    }

    fn group_lifecycle(suite: Suite) {
        let (alice, bob, carol) = (device("alice", 1), device("bob", 2), device("carol", 3));
        let gid = create_group(&alice.0, &alice.1, suite).expect("group");
        assert_eq!(group_suite(&alice.0, &gid).expect("suite"), suite);
        let kps = [package_in(&bob, &alice.0, suite), package_in(&carol, &alice.0, suite)];
        let out = add_members(&alice.0, &gid, &alice.1, &kps).expect("add");
        assert_eq!(out.epoch, 0);
        merge_pending_commit(&alice.0, &gid).expect("merge");
        let welcome = out.welcome.expect("welcome");
        for member in [&bob, &carol] {
            match process(&member.0, &welcome).expect("join") {
                Incoming::Joined { group_id, inviter } => {
                    assert_eq!(group_id, gid);
                    assert_eq!(inviter, Some(alice.1.device.clone()));
                }
                other => panic!("expected a join, got {other:?}"),
            }
        }
        assert_eq!(epoch(&bob.0, &gid).expect("epoch"), 1);
        assert_eq!(group_suite(&bob.0, &gid).expect("suite"), suite);

        let ct = encrypt(&alice.0, &gid, &alice.1, b"hello").expect("encrypt");
        assert!(!ct.windows(5).any(|w| w == b"hello"));
        match process(&bob.0, &ct).expect("decrypt") {
            Incoming::Application { sender, plaintext, .. } => {
                assert_eq!(sender, alice.1.device);
                assert_eq!(plaintext, b"hello");
            }
            other => panic!("expected a message, got {other:?}"),
        }
        // Processing the same ciphertext twice fails: no replays.
        assert!(process(&bob.0, &ct).is_err());

        // carol leaves; bob commits her proposal; everyone sees who left.
        let (e, proposal) = leave(&carol.0, &gid, &carol.1).expect("leave");
        assert_eq!(e, 1);
        for m in [&alice, &bob] {
            assert!(matches!(
                process(&m.0, &proposal).expect("proposal"),
                Incoming::Proposal { .. }
            ));
        }
        assert!(has_pending_proposals(&bob.0, &gid).expect("pending"));
        let commit = commit_pending_proposals(&bob.0, &gid, &bob.1).expect("commit").expect("some");
        merge_pending_commit(&bob.0, &gid).expect("merge");
        match process(&alice.0, &commit.commit).expect("commit") {
            Incoming::Commit { left, removed, self_removed, .. } => {
                assert_eq!(left, vec![carol.1.device.clone()]);
                assert!(removed.is_empty() && !self_removed);
            }
            other => panic!("expected a commit, got {other:?}"),
        }
        match process(&carol.0, &commit.commit).expect("carol sees her removal") {
            Incoming::Commit { self_removed, .. } => assert!(self_removed),
            other => panic!("expected a commit, got {other:?}"),
        }
        let members = members(&alice.0, &gid).expect("members");
        assert_eq!(members, vec![alice.1.device.clone(), bob.1.device.clone()]);

        // alice removes bob: bob learns it and can read nothing afterwards.
        let bob_addr = bob.1.device.address.clone();
        let out = remove_accounts(&alice.0, &gid, &alice.1, &[bob_addr]).expect("remove");
        merge_pending_commit(&alice.0, &gid).expect("merge");
        match process(&bob.0, &out.commit).expect("commit") {
            Incoming::Commit { self_removed, .. } => assert!(self_removed),
            other => panic!("expected a commit, got {other:?}"),
        }
        let after = encrypt(&alice.0, &gid, &alice.1, b"bob is gone").expect("encrypt");
        assert!(process(&bob.0, &after).is_err());
        let nobody: Address = "nobody@localhost".parse().expect("addr");
        assert!(matches!(
            remove_accounts(&alice.0, &gid, &alice.1, &[nobody]),
            Err(Error::NotAMember(_))
        ));
    }

    #[test]
    fn a_forgotten_key_package_opens_nothing() {
        let (alice, bob) = (device("alice", 1), device("bob", 2));
        let kp = key_packages(&bob.0, &bob.1, Suite::PostQuantum, 1, false).expect("kp").remove(0);
        let reference = key_package_ref(&bob.0, &kp).expect("reference");
        let valid = validate_key_package(&alice.0, &kp, &bob.1.device.address, None).expect("ok");
        let gid = create_group(&alice.0, &alice.1, Suite::PostQuantum).expect("group");
        let out = add_members(&alice.0, &gid, &alice.1, &[valid]).expect("add");
        forget_key_package(&bob.0, &reference).expect("forget");
        assert!(process(&bob.0, &out.welcome.expect("welcome")).is_err());
        assert!(forget_key_package(&bob.0, b"\xff").is_err(), "a malformed reference");
    }

    #[test]
    fn suites_do_not_mix() {
        let (alice, bob) = (device("alice", 1), device("bob", 2));
        let classical = package_in(&bob, &alice.0, Suite::Classical);
        let pq = package_in(&bob, &alice.0, Suite::PostQuantum);
        assert_eq!((classical.suite(), pq.suite()), (Suite::Classical, Suite::PostQuantum));
        let pq_group = create_group(&alice.0, &alice.1, Suite::PostQuantum).expect("group");
        let classical_group = create_group(&alice.0, &alice.1, Suite::Classical).expect("group");
        for (gid, wrong) in [(&pq_group, &classical), (&classical_group, &pq)] {
            match add_members(&alice.0, gid, &alice.1, std::slice::from_ref(wrong)) {
                Err(Error::InvalidKeyPackage(why)) => assert!(why.contains("bob@localhost/2")),
                other => panic!("a key package of another suite was taken: {other:?}"),
            }
            match replace_devices(&alice.0, gid, &alice.1, &[], std::slice::from_ref(wrong)) {
                Err(Error::InvalidKeyPackage(_)) => {}
                other => panic!("a key package of another suite was taken: {other:?}"),
            }
        }
        assert_eq!(Suite::from_code(0x004D), Some(Suite::PostQuantum));
        assert_eq!(Suite::from_code(0x0003), Some(Suite::Classical));
        assert_eq!(Suite::from_code(0x0001), None);
    }

    /// MLS variable-length integer (RFC 9420, section 2.1.2), lengths below 2^14.
    fn varint(n: usize) -> Vec<u8> {
        if n < 64 { vec![n as u8] } else { vec![0x40 | (n >> 8) as u8, n as u8] }
    }

    /// A key package of bob's for X-Wing whose init key is `init_key`, correctly signed by his
    /// device key: what a malicious member could publish.
    fn x_wing_package_with_init_key(bob: &(InMemProvider, Identity), init_key: &[u8]) -> Vec<u8> {
        let kp = key_packages(&bob.0, &bob.1, Suite::PostQuantum, 1, false).expect("kp").remove(0);
        // version (2) and cipher_suite (2), then init_key<V> (a 2-byte length: 1216 bytes).
        let len = (usize::from(kp[4] & 0x3f) << 8) | usize::from(kp[5]);
        assert_eq!(len, 1216, "an X-Wing public key");
        // The signature closes the package: a 2-byte length (64) and 64 bytes.
        assert_eq!(kp[kp.len() - 66..kp.len() - 64], [0x40, 64]);
        let mut tbs = kp[..4].to_vec();
        tbs.extend(varint(init_key.len()));
        tbs.extend(init_key);
        tbs.extend(&kp[6 + len..kp.len() - 66]);
        // SignWithLabel: SignContent { label<V>, content<V> } signed with Ed25519.
        let label = b"MLS 1.0 KeyPackageTBS";
        let mut content = varint(label.len());
        content.extend(label);
        content.extend(varint(tbs.len()));
        content.extend(&tbs);
        let signature = bob.1.key.sign(&content).expect("sign");
        tbs.extend(varint(signature.len()));
        tbs.extend(signature);
        tbs
    }

    #[test]
    fn malformed_x_wing_keys_from_a_member_are_refused_without_panic() {
        let (alice, bob) = (device("alice", 1), device("bob", 2));
        let address = bob.1.device.address.clone();
        // The crafting is right: the same key re-signed is accepted.
        let kp = key_packages(&bob.0, &bob.1, Suite::PostQuantum, 1, false).expect("kp").remove(0);
        let genuine = kp[6..6 + 1216].to_vec();
        let resigned = x_wing_package_with_init_key(&bob, &genuine);
        if let Err(e) = validate_key_package(&alice.0, &resigned, &address, None) {
            panic!("{e}");
        }
        let mut refused = 0;
        for init_key in [
            Vec::new(),
            vec![0u8; 1],
            vec![0u8; 32],
            vec![0xffu8; 1215],
            vec![0xffu8; 1217],
            vec![0u8; 1216],
            vec![0xffu8; 1216],
        ] {
            let bad = x_wing_package_with_init_key(&bob, &init_key);
            let Ok(valid) = validate_key_package(&alice.0, &bad, &address, None) else {
                refused += 1;
                continue;
            };
            // Taken as a key package: adding it must fail cleanly or produce a welcome bob
            // cannot open — never a panic.
            let gid = create_group(&alice.0, &alice.1, Suite::PostQuantum).expect("group");
            if add_members(&alice.0, &gid, &alice.1, &[valid]).is_err() {
                refused += 1;
            }
        }
        // Wrong lengths, ML-KEM coefficients out of range, an all-zero X25519 half: all refused.
        assert_eq!(refused, 7, "malformed keys are refused");

        // The KEM itself, given garbage: errors, not panics.
        let config = || Suite::PostQuantum.ciphersuite().hpke_config();
        let crypto: &Crypto = &CRYPTO;
        for len in [0usize, 1, 32, 1215, 1217, 4096] {
            let pk = vec![0x5au8; len];
            assert!(crypto.hpke_seal(config(), &pk, b"info", b"aad", b"secret").is_err(), "{len}");
        }
        let pair = crypto.derive_hpke_keypair(config(), &[7u8; 32]).expect("key pair");
        for len in [0usize, 1, 32, 1119, 1121, 4096] {
            let bogus = HpkeCiphertext {
                kem_output: vec![0x5au8; len].into(),
                ciphertext: vec![1u8; 40].into(),
            };
            assert!(
                crypto.hpke_open(config(), &bogus, &pair.private, b"info", b"aad").is_err(),
                "{len}"
            );
        }
    }

    #[test]
    fn self_updates_heal_and_forks_show_in_the_authenticator() {
        let (alice, bob) = (device("alice", 1), device("bob", 2));
        let gid = create_group(&alice.0, &alice.1, Suite::Classical).expect("group");
        let out = add_members(&alice.0, &gid, &alice.1, &[package(&bob, &alice.0)]).expect("add");
        merge_pending_commit(&alice.0, &gid).expect("merge");
        process(&bob.0, &out.welcome.expect("welcome")).expect("join");
        let authenticator = |p: &InMemProvider| epoch_authenticator(p, &gid).expect("auth");
        assert_eq!(authenticator(&alice.0), authenticator(&bob.0));

        // bob's update is refused by the server: he forgets it and stays where alice is.
        let refused = self_update(&bob.0, &gid, &bob.1).expect("update");
        assert_eq!(refused.epoch, 1);
        assert!(refused.welcome.is_none());
        clear_pending_commit(&bob.0, &gid).expect("clear");
        assert_eq!(epoch(&bob.0, &gid).expect("epoch"), 1);

        // alice's update goes through: a new epoch, the same on both sides, and different
        // from the one before.
        let before = authenticator(&alice.0);
        let update = self_update(&alice.0, &gid, &alice.1).expect("update");
        merge_pending_commit(&alice.0, &gid).expect("merge");
        assert!(matches!(
            process(&bob.0, &update.commit).expect("commit"),
            Incoming::Commit { .. }
        ));
        assert_eq!(epoch(&bob.0, &gid).expect("epoch"), 2);
        assert_eq!(authenticator(&alice.0), authenticator(&bob.0));
        assert_ne!(authenticator(&alice.0), before);
        // The commit bob made and forgot cannot be applied by alice: it was never merged.
        assert!(process(&alice.0, &refused.commit).is_err());
    }

    #[test]
    fn device_keys_never_print() {
        let key = DeviceKey::generate().expect("key");
        let shown = format!("{key:?}");
        assert!(shown.contains("[redacted]"));
        // Only the public half and the placeholder appear.
        assert_eq!(
            shown,
            format!(
                "DeviceKey {{ public: {:?}, private: \"[redacted]\" }}",
                hex::encode(key.public())
            )
        );
    }
}

/// Mutation smoke tests for the decoders of outside input: thousands of corrupted messages,
/// each of which must be refused with an error, never a panic. (Coverage-guided fuzzing needs
/// a nightly toolchain; this runs in every test run.)
#[cfg(test)]
mod mutation_tests {
    use openmls_memory_storage::MemoryStorage;

    use super::*;

    /// xorshift64*: deterministic, so a failure reproduces.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
        let mut m = input.to_vec();
        match rng.below(4) {
            0 => {
                let i = rng.below(m.len());
                m[i] ^= 1 << rng.below(8);
            }
            1 => m.truncate(rng.below(m.len())),
            2 => {
                let i = rng.below(m.len());
                m[i] = rng.next() as u8;
            }
            _ => {
                let i = rng.below(m.len());
                let extra: Vec<u8> = (0..rng.below(16) + 1).map(|_| rng.next() as u8).collect();
                m.splice(i..i, extra);
            }
        }
        m
    }

    fn identity(p: &Provider<MemoryStorage>, name: &str, id: u64) -> Identity {
        let key = DeviceKey::generate().expect("key");
        key.store(p).expect("store");
        let device = DeviceRef {
            address: format!("{name}@localhost").parse().expect("addr"),
            device_id: id,
        };
        Identity { device, key }
    }

    #[test]
    fn corrupted_mls_input_is_refused_without_panic() {
        corrupted_input_is_refused(Suite::Classical);
    }

    #[test]
    fn corrupted_x_wing_input_is_refused_without_panic() {
        corrupted_input_is_refused(Suite::PostQuantum);
    }

    fn corrupted_input_is_refused(suite: Suite) {
        let (pa, pb) =
            (Provider::new(MemoryStorage::default()), Provider::new(MemoryStorage::default()));
        let (alice, bob) = (identity(&pa, "alice", 1), identity(&pb, "bob", 2));
        // openmls deletes a one-time key package's private key as soon as a welcome names it,
        // before the welcome is fully checked; the client undoes that by rolling back its
        // transaction (tested in sotto-client). MemoryStorage has no transactions, so bob is
        // added with his last-resort key package here, which is never deleted.
        let kps = key_packages(&pb, &bob, suite, 2, true).expect("kps");
        let kp = validate_key_package(&pa, &kps[0], &bob.device.address, Some(2)).expect("kp");
        let gid = create_group(&pa, &alice, suite).expect("group");
        let out = add_members(&pa, &gid, &alice, &[kp]).expect("add");
        merge_pending_commit(&pa, &gid).expect("merge");
        let welcome = out.welcome.expect("welcome");
        let message = encrypt(&pa, &gid, &alice, b"payload").expect("encrypt");

        let mut rng = Rng(0x5eed_1234_abcd_ef01);
        let mut refused = 0;
        for round in 0..1500 {
            let kp_bad = mutate(&mut rng, &kps[1]);
            if kp_bad != kps[1]
                && validate_key_package(&pa, &kp_bad, &bob.device.address, None).is_err()
            {
                refused += 1;
            }
            let _ = group_of(&mutate(&mut rng, &message));
            // Bob has not joined: every corrupted group message must fail cleanly.
            assert!(process(&pb, &mutate(&mut rng, &message)).is_err(), "round {round}");
            if round % 5 == 0 {
                let w = mutate(&mut rng, &welcome);
                if w != welcome {
                    assert!(
                        process(&pb, &w).is_err(),
                        "a corrupted welcome was accepted (round {round})"
                    );
                }
            }
        }
        assert!(refused > 1000, "most corrupted key packages are refused ({refused})");
        // After all that, the real welcome and message still work.
        assert!(matches!(process(&pb, &welcome).expect("join"), Incoming::Joined { .. }));
        match process(&pb, &message).expect("decrypt") {
            Incoming::Application { plaintext, .. } => assert_eq!(plaintext, b"payload"),
            other => panic!("expected the message, got {other:?}"),
        }
    }

    #[test]
    fn corrupted_content_is_refused_without_panic() {
        let valid = crate::content::Message {
            v: crate::content::VERSION,
            id: "0011".into(),
            sent_at: 1,
            expires_in: None,
            n: None,
            root: None,
            body: crate::content::Body::text("hello"),
        }
        .encode();
        let mut rng = Rng(42);
        for _ in 0..5000 {
            let _ = crate::content::Message::decode(&mutate(&mut rng, &valid));
        }
    }
}
