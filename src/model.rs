//! Log types: the `Command`s that mutate state and the `Reply`s that apply gives back. The wire
//! types a client sends live in [`quiver_client::wire`] and are re-exported here, so the server
//! names every type it stores or serves from this one module.
//!
//! The Raft log carries `Command`s in bincode 1.3.3, which cannot express untagged enums or
//! `serde_json::Value`. So payloads and filters travel inside commands as JSON text.

use serde::{Deserialize, Serialize};

pub use quiver_client::wire::*;

/// A point as it travels in the log: the vector is already validated (and normalised for cosine),
/// the payload is JSON text (bincode cannot carry `serde_json::Value`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PointWrite {
    /// External id.
    pub id: PointId,
    /// The vector, finite and of the collection's dimension.
    pub vector: Vec<f32>,
    /// Payload as JSON text (an object), if any.
    pub payload: Option<String>,
}

/// Which points a delete removes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DeleteSelector {
    /// These ids (missing ones are ignored).
    Ids(Vec<PointId>),
    /// Every point whose payload matches this filter, as JSON text; evaluated at apply time.
    Filter(String),
}

/// Every mutation of the store. Applied deterministically, in log order, by `engine::Engine`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Create a collection (idempotent when the config is equal).
    CreateCollection {
        /// Name.
        name: String,
        /// Configuration.
        config: CollectionConfig,
    },
    /// Drop a collection and all its points.
    DeleteCollection {
        /// Name.
        name: String,
    },
    /// Insert or replace points.
    Upsert {
        /// Collection name.
        collection: String,
        /// Points, each replacing any point with the same id.
        points: Vec<PointWrite>,
    },
    /// Delete points.
    Delete {
        /// Collection name.
        collection: String,
        /// Which points.
        selector: DeleteSelector,
    },
    /// Several commands coalesced into one log entry (group commit); applied in order.
    Batch(Vec<Command>),
    /// Changes nothing (Raft's blank and membership entries still advance the applied index).
    Noop,
}

impl Command {
    /// Number of points this command carries, for batching decisions.
    pub fn weight(&self) -> usize {
        match self {
            Command::Upsert { points, .. } => points.len().max(1),
            Command::Batch(cmds) => cmds.iter().map(Command::weight).sum(),
            _ => 1,
        }
    }
}

/// The deterministic outcome of applying one command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// A collection was created (`created = false`: it already existed with the same config).
    Created {
        /// Whether this command created it.
        created: bool,
    },
    /// A collection was dropped (`existed = false`: there was none).
    Dropped {
        /// Whether it existed.
        existed: bool,
    },
    /// Points were written.
    Upserted {
        /// How many.
        count: usize,
    },
    /// Points were deleted.
    Deleted {
        /// How many existed and were removed.
        count: usize,
    },
    /// The command was rejected; nothing changed.
    Rejected(ApplyError),
    /// Replies of a `Command::Batch`, in order.
    Batch(Vec<Reply>),
    /// The reply to `Command::Noop`.
    Noop,
}

/// Why a command was rejected at apply time. Deterministic: every replica rejects it the same way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    /// No such collection.
    #[error("collection '{0}' does not exist")]
    CollectionNotFound(String),
    /// Exists with another config.
    #[error("collection '{0}' already exists with a different configuration")]
    CollectionConflict(String),
    /// A vector has the wrong length.
    #[error("points[{index}].vector: expected dimension {expected}, got {got}")]
    DimensionMismatch {
        /// Position in the batch.
        index: usize,
        /// The collection's dimension.
        expected: usize,
        /// The vector's length.
        got: usize,
    },
    /// A payload or filter could not be parsed.
    #[error("{0}")]
    Invalid(String),
}
