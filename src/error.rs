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
    /// A read's answer would be larger than the limit on answers.
    #[error("the answer would exceed {0} bytes; ask for fewer points, a smaller k, or without vectors or payloads")]
    AnswerTooLarge(usize),
    /// A body that is not JSON by its content type.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// This node is not the leader and cannot forward (no leader known, or leadership moved).
    #[error("not the leader{}", .0.as_ref().map(|l| format!("; the leader is {l}")).unwrap_or_default())]
    NotLeader(Option<String>),
    /// A read could not reach the requested index in time.
    #[error("timed out waiting for applied index {wanted}; this node has applied {applied}")]
    ReadTimeout {
        /// The index asked for.
        wanted: u64,
        /// This node's applied index.
        applied: u64,
    },
    /// A bounded-staleness read found this node too stale.
    #[error("{0}")]
    Stale(String),
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

    /// A copy to hand to each request of a failed group (errors from sled or io are not `Clone`).
    pub fn clone_for_reply(&self) -> Error {
        match self {
            Error::InvalidInput { field, message } => Error::InvalidInput {
                field: field.clone(),
                message: message.clone(),
            },
            Error::CollectionNotFound(s) => Error::CollectionNotFound(s.clone()),
            Error::PointNotFound(s) => Error::PointNotFound(s.clone()),
            Error::Conflict(s) => Error::Conflict(s.clone()),
            Error::NotLeader(s) => Error::NotLeader(s.clone()),
            Error::Stale(s) => Error::Stale(s.clone()),
            Error::ReadTimeout { wanted, applied } => Error::ReadTimeout {
                wanted: *wanted,
                applied: *applied,
            },
            Error::Unavailable(s) => Error::Unavailable(s.clone()),
            other => Error::Unavailable(other.to_string()),
        }
    }

    /// Whether the same request may succeed if retried later (possibly on another node).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unavailable(_)
            | Error::Io(_)
            | Error::NotLeader(_)
            | Error::ReadTimeout { .. }
            | Error::Stale(_) => true,
            Error::InvalidInput { .. }
            | Error::CollectionNotFound(_)
            | Error::PointNotFound(_)
            | Error::Conflict(_)
            | Error::Unauthorized
            | Error::Forbidden
            | Error::PayloadTooLarge(_)
            | Error::AnswerTooLarge(_)
            | Error::UnsupportedMediaType(_)
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
            | Error::PayloadTooLarge(_)
            | Error::AnswerTooLarge(_)
            | Error::UnsupportedMediaType(_) => true,
            Error::Unavailable(_)
            | Error::NotLeader(_)
            | Error::ReadTimeout { .. }
            | Error::Stale(_)
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
