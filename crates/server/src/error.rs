use crate::store::StoreError;

/// Errors that stop the server from starting or running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is not usable.
    #[error("configuration: {0}")]
    Config(String),
    /// Reading files or binding the socket failed.
    #[error("{0}")]
    Io(String),
    /// Another server process serves the same data directory.
    #[error("{0}")]
    InUse(String),
    /// The certificate or key could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
}
