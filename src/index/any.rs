//! A collection's graph whatever it stores per point: its vectors, or their int8 codes.

use std::path::Path;
use std::sync::Arc;

use super::{encode, FlatGraph, Graph, GraphMeta, Planning, SharedVector};
use crate::model::{CollectionConfig, Metric, Quantization};

/// What a collection holds in memory for a point, and what its graph refers to.
#[derive(Clone, Debug)]
pub enum Stored {
    /// The vector itself.
    Full(SharedVector),
    /// Its int8 code ([`super::encode`]); the vector is on disk.
    Codes(Arc<[u8]>),
}

impl Stored {
    /// The stored form of `v` for a collection quantised as `q`.
    pub fn of(v: Vec<f32>, q: Quantization) -> Stored {
        match q {
            Quantization::None | Quantization::Int8Ram => Stored::Full(v.into()),
            Quantization::Int8 => Stored::Codes(encode(&v).into()),
        }
    }

    /// The vector, when it is held in memory.
    pub fn full(&self) -> Option<&SharedVector> {
        match self {
            Stored::Full(v) => Some(v),
            Stored::Codes(_) => None,
        }
    }

    fn codes(&self) -> Option<&Arc<[u8]>> {
        match self {
            Stored::Codes(c) => Some(c),
            Stored::Full(_) => None,
        }
    }
}

/// The graph of a collection: over its vectors, or over their codes.
pub enum AnyGraph {
    /// Unquantised.
    Full(Graph<f32>),
    /// int8 codes.
    Codes(Graph<u8>),
}

/// The frozen search copy of an [`AnyGraph`].
#[derive(Clone)]
pub enum AnyFlat {
    /// Unquantised.
    Full(Arc<FlatGraph<f32>>),
    /// int8 codes.
    Codes(Arc<FlatGraph<u8>>),
}

macro_rules! each {
    ($self:expr, $g:ident => $e:expr) => {
        match $self {
            AnyGraph::Full($g) => $e,
            AnyGraph::Codes($g) => $e,
        }
    };
}

/// The items of a block in the graph's own row type (a row of the other kind counts as absent;
/// a collection only ever stores one kind).
fn rows<T>(
    items: &[(u64, Option<Stored>)],
    pick: impl Fn(&Stored) -> Option<&Arc<[T]>>,
) -> Vec<(u64, Option<Arc<[T]>>)> {
    items
        .iter()
        .map(|(i, s)| (*i, s.as_ref().and_then(&pick).cloned()))
        .collect()
}

impl AnyGraph {
    /// An empty graph for a collection, starting at `watermark`.
    pub fn new(
        config: &CollectionConfig,
        capacity: usize,
        watermark: u64,
        epoch_since: u64,
    ) -> AnyGraph {
        match config.quantization {
            Quantization::None | Quantization::Int8Ram => {
                AnyGraph::Full(Graph::new(config, capacity, watermark, epoch_since))
            }
            Quantization::Int8 => {
                AnyGraph::Codes(Graph::new(config, capacity, watermark, epoch_since))
            }
        }
    }

    /// Loads a dumped graph of the collection's kind ([`Graph::load`]).
    pub fn load(
        dir: &Path,
        config: &CollectionConfig,
        stored: &dyn Fn(u64) -> Option<Stored>,
    ) -> Option<(AnyGraph, GraphMeta)> {
        match config.quantization {
            Quantization::None | Quantization::Int8Ram => {
                let full = |i| stored(i).and_then(|s| s.full().cloned());
                Graph::load(dir, config, &full).map(|(g, m)| (AnyGraph::Full(g), m))
            }
            Quantization::Int8 => {
                let codes = |i| stored(i).and_then(|s| s.codes().cloned());
                Graph::load(dir, config, &codes).map(|(g, m)| (AnyGraph::Codes(g), m))
            }
        }
    }

    /// The next internal id this graph expects.
    pub fn watermark(&self) -> u64 {
        each!(self, g => g.watermark())
    }

    /// First internal id of this graph's epoch.
    pub fn epoch_since(&self) -> u64 {
        each!(self, g => g.epoch_since)
    }

    /// Number of points inserted.
    pub fn len(&self) -> u64 {
        each!(self, g => g.len())
    }

    /// True when no point was inserted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The graph's number, unique in the process ([`Graph::serial`]).
    pub fn serial(&self) -> u64 {
        each!(self, g => g.serial())
    }

    /// Inserts one block of ids; returns how it was planned in the end ([`Graph::insert_block`]).
    pub fn insert_block(
        &self,
        items: &[(u64, Option<Stored>)],
        end: u64,
        planning: Planning,
    ) -> Planning {
        match self {
            AnyGraph::Full(g) => g.insert_block(&rows(items, Stored::full), end, planning),
            AnyGraph::Codes(g) => g.insert_block(&rows(items, Stored::codes), end, planning),
        }
    }

    /// Moves the watermark to `to` without inserting.
    pub fn advance(&self, to: u64) {
        each!(self, g => g.advance(to))
    }

    /// Approximate k nearest neighbours of `q` as (internal id, distance in the graph's order),
    /// best first ([`Graph::search`]); a quantised graph walks on `code`, the query's int8 code,
    /// or encodes `q` when the caller has none.
    pub fn search(
        &self,
        q: &[f32],
        code: Option<&[u8]>,
        k: usize,
        ef: usize,
        keep: Option<&dyn Fn(u64) -> bool>,
    ) -> Vec<(u64, f32)> {
        match self {
            AnyGraph::Full(g) => g.search(q, k, ef, keep),
            AnyGraph::Codes(g) => match code {
                Some(c) => g.search(c, k, ef, keep),
                None => g.search(&encode(q), k, ef, keep),
            },
        }
    }

    /// Refreshes the frozen search copy ([`Graph::freeze`]).
    pub fn freeze(&self) {
        each!(self, g => g.freeze())
    }

    /// The frozen search copy, if one was made.
    pub fn flat(&self) -> Option<AnyFlat> {
        match self {
            AnyGraph::Full(g) => g.flat().map(AnyFlat::Full),
            AnyGraph::Codes(g) => g.flat().map(AnyFlat::Codes),
        }
    }

    /// How far the frozen copy trails the graph, in ids.
    pub fn flat_lag(&self) -> u64 {
        each!(self, g => g.flat_lag())
    }

    /// The metric the graph was built for.
    pub fn metric(&self) -> Metric {
        each!(self, g => g.metric())
    }

    /// True when the graph walks int8 codes (its distances are approximate).
    pub fn quantized(&self) -> bool {
        matches!(self, AnyGraph::Codes(_))
    }

    /// Writes the graph and its meta into `dir` ([`Graph::dump`]).
    pub fn dump(&self, dir: &Path, meta: &GraphMeta) -> anyhow::Result<()> {
        each!(self, g => g.dump(dir, meta))
    }
}

impl AnyFlat {
    /// Ids below this are covered.
    pub fn watermark(&self) -> u64 {
        match self {
            AnyFlat::Full(f) => f.watermark(),
            AnyFlat::Codes(f) => f.watermark(),
        }
    }

    /// True when the copy's distances are approximate (int8 codes): more than `k` of its
    /// candidates are rescored.
    pub fn approximate(&self) -> bool {
        match self {
            AnyFlat::Full(f) => f.walks_codes(),
            AnyFlat::Codes(_) => true,
        }
    }

    /// The `k` nearest accepted ids of `q` ([`FlatGraph::search`]); a quantised copy walks on
    /// `code`, the query's int8 code, or encodes `q` when the caller has none.
    pub fn search(
        &self,
        q: &[f32],
        code: Option<&[u8]>,
        k: usize,
        ef: usize,
        keep: Option<&dyn Fn(u64) -> bool>,
    ) -> Vec<(u64, f32)> {
        match self {
            AnyFlat::Full(f) => f.search(q, k, ef, keep),
            AnyFlat::Codes(f) => match code {
                Some(c) => f.search(c, k, ef, keep),
                None => f.search(&encode(q), k, ef, keep),
            },
        }
    }
}
