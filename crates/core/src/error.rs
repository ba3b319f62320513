/// Errors raised by the core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An address is not of the form `local@domain` with the allowed characters.
    #[error("invalid address {0:?}: expected local@domain (letters, digits, '.', '_', '-')")]
    InvalidAddress(String),
    /// A device reference is not of the form `local@domain/N`.
    #[error("invalid device reference {0:?}: expected local@domain/NUMBER")]
    InvalidDeviceRef(String),
    /// Bytes that should hold an MLS message, key package or welcome could not be decoded.
    #[error("malformed MLS data: {0}")]
    MalformedMls(String),
    /// A message decoded as MLS but is not of the kind expected here.
    #[error("unexpected MLS message: {0}")]
    UnexpectedMls(&'static str),
    /// A key package failed validation (bad signature, wrong ciphersuite, expired).
    #[error("invalid key package: {0}")]
    InvalidKeyPackage(String),
    /// A key package's credential does not name the device it was handed out for.
    #[error("key package names {found}, expected a device of {expected}")]
    KeyPackageMismatch {
        /// The address the key package was requested for.
        expected: String,
        /// What the key package's credential says.
        found: String,
    },
    /// The MLS group is not in local state.
    #[error("unknown group {0}")]
    UnknownGroup(String),
    /// A group operation named a member that is not in the group.
    #[error("{0} is not a member of this group")]
    NotAMember(String),
    /// The MLS library refused an operation (a stale or invalid message, a wrong epoch).
    #[error("MLS: {0}")]
    Mls(String),
    /// The MLS storage provider failed.
    #[error("MLS storage: {0}")]
    Storage(String),
    /// Message content could not be decoded.
    #[error("malformed message content: {0}")]
    MalformedContent(String),
    /// Input that is not what it should be (a code, a key as typed).
    #[error("{0}")]
    Invalid(String),
    /// A bug: a state that should be impossible.
    #[error("internal error: {0}")]
    Internal(&'static str),
}
