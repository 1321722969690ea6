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
    /// Rebuild a collection's graph without its tombstones now, whatever `rebuild_ratio` says:
    /// the memory of deleted and replaced points is handed back once the rebuild is swapped in.
    /// The leader proposes it when a collection with tombstones has been idle for a while
    /// (`--compact-idle-secs`), and `POST /collections/{name}/compact` on demand. It goes
    /// through the log so that every node starts the rebuild at the same index and builds the
    /// same graph (a timer on each node would not). (Last: bincode numbers variants in order.)
    Compact {
        /// Collection name.
        collection: String,
    },
}

/// Largest log entry the writer makes, in bytes (as estimated by [`Command::size_hint`]).
/// openraft gives each AppendEntries one heartbeat interval to be sent, written and fsynced by
/// the follower (review M8), so entries stay small whatever the size of a request: requests are
/// grouped only up to this size, and a larger upsert is written as several entries, in order.
pub const ENTRY_BYTES: usize = 4 << 20;

impl PointWrite {
    /// About how many bytes this point takes in the log.
    pub fn size_hint(&self) -> usize {
        let id = match &self.id {
            PointId::Num(_) => 8,
            PointId::Str(s) => s.len() + 8,
        };
        16 + id + self.vector.len() * 4 + self.payload.as_ref().map_or(0, String::len)
    }
}

/// Splits `points` into runs of at most `max_bytes` each (a point larger than that alone), in
/// order.
pub fn split_points(points: Vec<PointWrite>, max_bytes: usize) -> Vec<Vec<PointWrite>> {
    let mut parts = Vec::new();
    let mut part = Vec::new();
    let mut bytes = 0;
    for p in points {
        let size = p.size_hint();
        if !part.is_empty() && bytes + size > max_bytes {
            parts.push(std::mem::take(&mut part));
            bytes = 0;
        }
        bytes += size;
        part.push(p);
    }
    if !part.is_empty() || parts.is_empty() {
        parts.push(part);
    }
    parts
}

impl Command {
    /// About how many bytes this command takes in the log.
    pub fn size_hint(&self) -> usize {
        match self {
            Command::Upsert { points, .. } => {
                64 + points.iter().map(PointWrite::size_hint).sum::<usize>()
            }
            Command::Batch(cmds) => cmds.iter().map(Command::size_hint).sum(),
            Command::Delete {
                selector: DeleteSelector::Ids(ids),
                ..
            } => 64 + ids.len() * 24,
            _ => 256,
        }
    }

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
    /// A compaction was applied.
    Compacted {
        /// Tombstones the rebuild that it started drops (0: there were none, nothing started).
        tombstones: usize,
    },
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A config written before `quantization` existed (its bincode layout then) still decodes,
    /// unquantised; a quantised one round-trips in bincode and in JSON, where the field is left
    /// out at its default.
    #[test]
    fn configs_keep_their_bincode_layout_and_round_trip() {
        #[derive(Serialize)]
        struct Before {
            dim: usize,
            metric: Metric,
            hnsw: HnswConfig,
        }
        let old = bincode::serialize(&Before {
            dim: 384,
            metric: Metric::Dot,
            hnsw: HnswConfig::default(),
        })
        .unwrap();
        let plain = CollectionConfig::new(384, Metric::Dot);
        assert_eq!(bincode::serialize(&plain).unwrap(), old);
        assert_eq!(
            bincode::deserialize::<CollectionConfig>(&old).unwrap(),
            plain
        );
        for metric in [Metric::Cosine, Metric::L2, Metric::Dot] {
            for (quantization, name) in [
                (Quantization::Int8, "int8"),
                (Quantization::Int8Ram, "int8_ram"),
            ] {
                let q = CollectionConfig {
                    quantization,
                    ..CollectionConfig::new(7, metric)
                };
                let bytes = bincode::serialize(&q).unwrap();
                assert_eq!(bytes.len(), old.len());
                assert_eq!(bincode::deserialize::<CollectionConfig>(&bytes).unwrap(), q);
                let json = serde_json::to_value(q).unwrap();
                assert_eq!(json["quantization"], name);
                assert_eq!(serde_json::from_value::<CollectionConfig>(json).unwrap(), q);
            }
        }
        let json = serde_json::to_value(plain).unwrap();
        assert!(json.get("quantization").is_none());
        // An unknown kind or metric tag is an error, not a silent default.
        let mut bad = old.clone();
        bad[8..12].copy_from_slice(&(2u32 + 256 * 9).to_le_bytes());
        assert!(bincode::deserialize::<CollectionConfig>(&bad).is_err());
        let e = serde_json::from_value::<CollectionConfig>(
            serde_json::json!({"dim": 3, "metric": "l2", "quantization": "int4"}),
        );
        assert!(e.is_err());
    }

    fn point(i: u64, dim: usize) -> PointWrite {
        PointWrite {
            id: PointId::Num(i),
            vector: vec![0.5; dim],
            payload: None,
        }
    }

    #[test]
    fn large_upserts_split_in_order_into_bounded_parts() {
        let points: Vec<PointWrite> = (0..1000).map(|i| point(i, 384)).collect();
        let size = points[0].size_hint();
        let parts = split_points(points.clone(), 100 * size);
        assert_eq!(parts.len(), 10);
        assert!(parts.iter().all(|p| p.len() == 100));
        assert_eq!(parts.concat(), points);
        // A point larger than the bound travels alone; nothing is ever dropped.
        let parts = split_points(points[..3].to_vec(), 1);
        assert_eq!(parts.len(), 3);
        assert_eq!(split_points(Vec::new(), 1), vec![Vec::<PointWrite>::new()]);
    }
}
