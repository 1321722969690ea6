//! The crate's error type and its classification. No HTTP here: `api` maps kinds to statuses.

use crate::model::ApplyError;

/// Result with the crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in quiver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; `field` names what is wrong (e.g. `points[3].vector`).
    #[error("{field}: {message}")]
    InvalidInput {
        /// JSON path of the offending field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// No such collection.
    #[error("collection '{0}' does not exist")]
    CollectionNotFound(String),
    /// No such point.
    #[error("point '{0}' does not exist")]
    PointNotFound(String),
    /// The collection exists with another configuration.
    #[error("collection '{0}' already exists with a different configuration")]
    Conflict(String),
    /// Missing or wrong API key.
    #[error("missing or invalid API key")]
    Unauthorized,
    /// The key is valid but may only read.
    #[error("this API key may only read")]
    Forbidden,
    /// The request body is larger than the configured limit.
    #[error("request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    /// The node is shutting down or its writer has stopped after a storage failure.
    #[error("node unavailable: {0}")]
    Unavailable(String),
    /// Persistent data could not be decoded.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// Storage I/O failed.
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),
    /// Other I/O failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A bug or an unexpected condition.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// An invalid-input error for `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Error {
        Error::InvalidInput {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Whether the same request may succeed if retried later (possibly on another node).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unavailable(_) | Error::Io(_) => true,
            Error::InvalidInput { .. }
            | Error::CollectionNotFound(_)
            | Error::PointNotFound(_)
            | Error::Conflict(_)
            | Error::Unauthorized
            | Error::Forbidden
            | Error::PayloadTooLarge(_)
            | Error::Corrupt(_)
            | Error::Storage(_)
            | Error::Internal(_) => false,
        }
    }

    /// Whether the caller is at fault (a 4xx rather than a 5xx).
    pub fn is_client_fault(&self) -> bool {
        match self {
            Error::InvalidInput { .. }
            | Error::CollectionNotFound(_)
            | Error::PointNotFound(_)
            | Error::Conflict(_)
            | Error::Unauthorized
            | Error::Forbidden
            | Error::PayloadTooLarge(_) => true,
            Error::Unavailable(_)
            | Error::Corrupt(_)
            | Error::Storage(_)
            | Error::Io(_)
            | Error::Internal(_) => false,
        }
    }
}

impl From<ApplyError> for Error {
    fn from(e: ApplyError) -> Error {
        match e {
            ApplyError::CollectionNotFound(n) => Error::CollectionNotFound(n),
            ApplyError::CollectionConflict(n) => Error::Conflict(n),
            e @ ApplyError::DimensionMismatch { index, .. } => {
                Error::invalid(format!("points[{index}].vector"), e.to_string())
            }
            ApplyError::Invalid(m) => Error::invalid("body", m),
        }
    }
}
