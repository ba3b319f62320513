/// Errors from the client library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The home directory holds no account yet.
    #[error("no account in {0}; run `sotto register` first")]
    NotRegistered(String),
    /// The home directory already holds an account.
    #[error("{0} already holds an account (`sotto whoami` shows it); choose another --home")]
    AlreadyRegistered(String),
    /// The server could not be reached.
    #[error("cannot reach the server at {url}: {reason}")]
    Unreachable {
        /// The server's URL.
        url: String,
        /// What failed (connection refused, timeout, TLS).
        reason: String,
    },
    /// The server refused the request.
    #[error("server refused: {message} ({code})")]
    Server {
        /// HTTP status.
        status: u16,
        /// Stable error code.
        code: String,
        /// The server's explanation.
        message: String,
        /// For a stale epoch: the group's current epoch.
        epoch: Option<u64>,
    },
    /// The server answered something that is not the protocol.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// An address, chat or argument given by the user is not valid.
    #[error("{0}")]
    Invalid(String),
    /// No chat matches what the user named.
    #[error("no chat matches {0:?}; `sotto chats` lists them")]
    UnknownChat(String),
    /// More than one chat matches what the user named: the candidates, as `ID NAME`.
    #[error("{0:?} matches several chats ({candidates}); give more of the id", candidates = .1.join(", "))]
    AmbiguousChat(String, Vec<String>),
    /// The account exists but has no key packages left to start a conversation with.
    #[error("{0} has no key packages on the server; they must sync once before they can be added")]
    NoKeyPackages(String),
    /// The chat is not active any more.
    #[error("you are no longer a member of this chat ({0})")]
    NotActive(String),
    /// Commits kept losing races with other members.
    #[error("the group kept changing under us; try again")]
    TooManyRetries,
    /// The server gave something that fails verification: it may be lying.
    #[error("refusing: {0}")]
    Untrusted(String),
    /// A contact verified by safety number has a different identity key now.
    #[error(
        "{0}'s identity key changed since you verified it: compare safety numbers again \
         (`sotto verify {0}`) and mark it verified, or accept the change with \
         `sotto verify {0} --accept-change`"
    )]
    IdentityChanged(String),
    /// This device was revoked by the account (and possibly wiped).
    #[error("{0}")]
    Revoked(String),
    /// This device obeyed a wipe command: its local state is erased.
    #[error("{0}")]
    Wiped(String),
    /// A downloaded file failed authentication, or is truncated: it was tampered with or
    /// damaged, and nothing of it is kept.
    #[error("{0}")]
    Tampered(String),
    /// The passphrase does not unlock this home (nothing was changed).
    #[error("wrong passphrase for this home; nothing was changed")]
    WrongPassphrase,
    /// The operating system's keyring is missing or refused.
    #[error("{0}")]
    Keyring(String),
    /// The core (addresses, MLS) refused.
    #[error(transparent)]
    Core(#[from] sotto_core::Error),
    /// The local database failed.
    #[error("local database: {0}")]
    Database(#[from] rusqlite::Error),
    /// A bug: a state that should be impossible.
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// A local file could not be read or written.
    #[error("{0}")]
    Io(String),
    /// The chat has no other member whose device could receive the message.
    #[error("{0}")]
    NoRecipients(String),
    /// No message of this account matches what the user named.
    #[error("no message of yours matches {0:?}; `sotto history CHAT` shows ids")]
    UnknownMessage(String),
    /// The message is stored and waits in the outbox: the server is down or busy now.
    #[error(
        "{source}; message {message} is kept and goes out with the next `sotto sync` (a \
         running `sotto daemon` retries it by itself)"
    )]
    Queued {
        /// The message id.
        message: String,
        /// Why it waits.
        source: Box<Error>,
    },
    /// A running `sotto daemon` reported an error (with its code).
    #[error("{message}")]
    Remote {
        /// The error code.
        code: String,
        /// The message.
        message: String,
    },
    /// The server refused the message for good: it is marked failed.
    #[error("{source}; message {message} was not sent (`sotto resend {message}` tries again)")]
    NotSent {
        /// The message id.
        message: String,
        /// Why.
        source: Box<Error>,
    },
}

impl Error {
    /// A stable snake_case code for each error, for scripts and JSON-RPC clients.
    pub fn code(&self) -> String {
        match self {
            Error::NotRegistered(_) => "not_registered".into(),
            Error::AlreadyRegistered(..) => "already_registered".into(),
            Error::Unreachable { .. } => "unreachable".into(),
            Error::Server { code, .. } => code.clone(),
            Error::Protocol(_) => "protocol".into(),
            Error::Invalid(_) => "invalid_input".into(),
            Error::UnknownChat(_) => "unknown_chat".into(),
            Error::AmbiguousChat(..) => "ambiguous_chat".into(),
            Error::Io(_) => "io".into(),
            Error::NoKeyPackages(_) => "no_key_packages".into(),
            Error::NotActive(_) => "not_a_member".into(),
            Error::TooManyRetries => "too_many_retries".into(),
            Error::Core(sotto_core::Error::InvalidAddress(_)) => "invalid_address".into(),
            Error::Core(sotto_core::Error::NotAMember(_)) => "unknown_member".into(),
            Error::Core(sotto_core::Error::Invalid(_)) => "invalid_input".into(),
            Error::Core(_) => "crypto".into(),
            Error::Database(_) => "local_database".into(),
            Error::Untrusted(_) => "untrusted".into(),
            Error::WrongPassphrase => "wrong_passphrase".into(),
            Error::Tampered(_) => "tampered".into(),
            Error::Revoked(_) => "device_revoked".into(),
            Error::IdentityChanged(_) => "identity_changed".into(),
            Error::Wiped(_) => "device_wiped".into(),
            Error::Keyring(_) => "keyring".into(),
            Error::UnknownMessage(_) => "unknown_message".into(),
            Error::NoRecipients(_) => "no_recipients".into(),
            // What kept the message from going out.
            Error::Queued { source, .. } | Error::NotSent { source, .. } => source.code(),
            Error::Remote { code, .. } => code.clone(),
            Error::Internal(_) => "internal".into(),
        }
    }

    /// The server's error code, if the server refused.
    pub fn server_code(&self) -> Option<&str> {
        match self {
            Error::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    pub(crate) fn is_stale_epoch(&self) -> bool {
        matches!(self, Error::Server { code, .. } if code == "stale_epoch")
    }
}

/// The stable snake_case name of a server error code, as on the wire.
pub(crate) fn code_name(code: sotto_proto::ErrorCode) -> String {
    match serde_json::to_value(code) {
        Ok(serde_json::Value::String(name)) => name,
        _ => "unknown".into(),
    }
}
