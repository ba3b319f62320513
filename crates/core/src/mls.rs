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

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::storage::{CURRENT_VERSION, StorageProvider};

use crate::{Address, DeviceRef, Error};

/// The ciphersuite every group and key package uses.
pub const CIPHERSUITE: Ciphersuite =
    Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519;

/// How many past epochs' secrets a member keeps, so that application messages sent just before
/// a commit still decrypt after it.
const MAX_PAST_EPOCHS: usize = 5;

/// Length of a fresh group id in bytes.
pub const GROUP_ID_LEN: usize = 16;

/// An MLS provider: RustCrypto for cryptography and randomness, and the caller's storage.
pub struct Provider<S> {
    crypto: RustCrypto,
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
        Provider { crypto: RustCrypto::default(), storage }
    }

    /// `n` random bytes from the provider's cryptographic generator.
    pub fn random(&self, n: usize) -> Result<Vec<u8>, Error> {
        self.crypto.random_vec(n).map_err(|_| Error::Internal("random generator failed"))
    }
}

impl<S: StorageProvider<CURRENT_VERSION>> OpenMlsProvider for Provider<S> {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = S;

    fn storage(&self) -> &S {
        &self.storage
    }
    fn crypto(&self) -> &RustCrypto {
        &self.crypto
    }
    fn rand(&self) -> &RustCrypto {
        &self.crypto
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
        SignatureKeyPair::new(CIPHERSUITE.signature_algorithm())
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
        SignatureKeyPair::read(&p.storage, public, CIPHERSUITE.signature_algorithm()).map(DeviceKey)
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

fn create_config() -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .ciphersuite(CIPHERSUITE)
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

/// Creates `count` one-time key packages, or one last-resort key package if `last_resort`.
pub fn key_packages<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    me: &Identity,
    count: usize,
    last_resort: bool,
) -> Result<Vec<Vec<u8>>, Error> {
    (0..count)
        .map(|_| {
            let mut builder = KeyPackage::builder();
            if last_resort {
                // The leaf must declare the extension it carries, or the key package fails
                // validation at whoever claims it.
                let capabilities =
                    Capabilities::builder().extensions(vec![ExtensionType::LastResort]).build();
                builder = builder.mark_as_last_resort().leaf_node_capabilities(capabilities);
            }
            let bundle =
                builder.build(CIPHERSUITE, p, &me.key.0, me.credential()).map_err(mls_err)?;
            bundle
                .key_package()
                .tls_serialize_detached()
                .map_err(|_| Error::Internal("key package serialization failed"))
        })
        .collect()
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
    if package.ciphersuite() != CIPHERSUITE {
        return Err(Error::InvalidKeyPackage("unsupported ciphersuite".into()));
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

/// Creates a new group with only this device in it, at epoch 0, and returns its id.
pub fn create_group<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    me: &Identity,
) -> Result<Vec<u8>, Error> {
    let id = p.random(GROUP_ID_LEN)?;
    MlsGroup::new_with_group_id(
        p,
        &me.key.0,
        &create_config(),
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
    let epoch = group.epoch().as_u64();
    let kps: Vec<KeyPackage> = packages.iter().map(|k| k.package.clone()).collect();
    let (commit, welcome, _) = group.add_members(p, &me.key.0, &kps).map_err(mls_err)?;
    Ok(CommitOutput { epoch, commit: serialize(&commit)?, welcome: Some(serialize(&welcome)?) })
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
}

/// [`encrypt`] with the epoch and members it was encrypted for, from one load of the group.
pub fn seal<S: StorageProvider<CURRENT_VERSION>>(
    p: &Provider<S>,
    group_id: &[u8],
    me: &Identity,
    plaintext: &[u8],
) -> Result<Sealed, Error> {
    let mut group = load(p, group_id)?;
    let epoch = group.epoch().as_u64();
    let members = group.members().filter_map(|m| device_of(&m.credential)).collect();
    let msg = group.create_message(p, &me.key.0, plaintext).map_err(mls_err)?;
    Ok(Sealed { epoch, members, ciphertext: serialize(&msg)? })
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
    let mut group = load(p, &group_id)?;
    let processed = group.process_message(p, protocol).map_err(mls_err)?;
    let sender = device_of(processed.credential());
    match processed.into_content() {
        ProcessedMessageContent::ApplicationMessage(app) => {
            let sender = sender.ok_or(Error::UnexpectedMls("sender has no Sotto credential"))?;
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
        let kp = key_packages(&from.0, &from.1, 1, false).expect("kp").pop().expect("one");
        validate_key_package(checker, &kp, &from.1.device.address, Some(from.1.device.device_id))
            .expect("valid")
    }

    #[test]
    fn key_packages_are_checked_against_the_claimed_device() {
        let (alice, bob) = (device("alice", 1), device("bob", 2));
        let kp = key_packages(&bob.0, &bob.1, 1, false).expect("kp").pop().expect("one");
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
        let (alice, bob, carol) = (device("alice", 1), device("bob", 2), device("carol", 3));
        let gid = create_group(&alice.0, &alice.1).expect("group");
        let kps = [package(&bob, &alice.0), package(&carol, &alice.0)];
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
    fn self_updates_heal_and_forks_show_in_the_authenticator() {
        let (alice, bob) = (device("alice", 1), device("bob", 2));
        let gid = create_group(&alice.0, &alice.1).expect("group");
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
        let (pa, pb) =
            (Provider::new(MemoryStorage::default()), Provider::new(MemoryStorage::default()));
        let (alice, bob) = (identity(&pa, "alice", 1), identity(&pb, "bob", 2));
        // openmls deletes a one-time key package's private key as soon as a welcome names it,
        // before the welcome is fully checked; the client undoes that by rolling back its
        // transaction (tested in sotto-client). MemoryStorage has no transactions, so bob is
        // added with his last-resort key package here, which is never deleted.
        let kps = key_packages(&pb, &bob, 2, true).expect("kps");
        let kp = validate_key_package(&pa, &kps[0], &bob.device.address, Some(2)).expect("kp");
        let gid = create_group(&pa, &alice).expect("group");
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
            body: crate::content::Body::Text { text: "hello".into() },
        }
        .encode();
        let mut rng = Rng(42);
        for _ in 0..5000 {
            let _ = crate::content::Message::decode(&mutate(&mut rng, &valid));
        }
    }
}
