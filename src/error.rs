//! The crate's error type and its classification: each kind's HTTP status and stable code, the
//! one table that the node's API and the gateway answer errors by.

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
    /// The request contradicts the state: a collection that exists with another configuration,
    /// a node id that is already a member elsewhere.
    #[error("{0}")]
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

    /// The HTTP status and the stable machine-readable code this error is answered with.
    pub fn classify(&self) -> (u16, &'static str) {
        match self {
            Error::InvalidInput { .. } => (400, "invalid_input"),
            Error::CollectionNotFound(_) => (404, "collection_not_found"),
            Error::PointNotFound(_) => (404, "point_not_found"),
            Error::Conflict(_) => (409, "conflict"),
            Error::Unauthorized => (401, "unauthorized"),
            Error::Forbidden => (403, "forbidden"),
            Error::PayloadTooLarge(_) => (413, "payload_too_large"),
            Error::AnswerTooLarge(_) => (413, "answer_too_large"),
            Error::UnsupportedMediaType(_) => (415, "unsupported_media_type"),
            Error::Unavailable(_) => (503, "unavailable"),
            Error::NotLeader(_) => (503, "not_leader"),
            Error::ReadTimeout { .. } => (504, "read_timeout"),
            Error::Stale(_) => (503, "stale"),
            Error::Corrupt(_) | Error::Storage(_) | Error::Io(_) | Error::Internal(_) => {
                (500, "internal")
            }
        }
    }
}

impl From<ApplyError> for Error {
    fn from(e: ApplyError) -> Error {
        match e {
            ApplyError::CollectionNotFound(n) => Error::CollectionNotFound(n),
            ApplyError::CollectionConflict(n) => Error::Conflict(format!(
                "collection '{n}' already exists with a different configuration"
            )),
            e @ ApplyError::DimensionMismatch { index, .. } => {
                Error::invalid(format!("points[{index}].vector"), e.to_string())
            }
            ApplyError::Invalid(m) => Error::invalid("body", m),
        }
    }
}
