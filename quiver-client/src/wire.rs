//! The wire types: what a client and a node say to each other over HTTP, in JSON. The server
//! (`quiver`) and this client both use these definitions, so a field added on one side cannot
//! drift from the other.
//!
//! [`PointId`] picks its encoding by `is_human_readable()`: a bare string or number in JSON, a
//! tagged enum in bincode (the server's Raft log carries these types too).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::ToSchema;

use crate::filter::Filter;

/// Largest dimension a collection may declare; beyond this a single vector is a denial of service.
pub const MAX_DIM: usize = 65_536;
/// Largest `k` (and `ef`) a search may ask for.
pub const MAX_K: usize = 10_000;
/// Upper bound on HNSW `m`; hnsw_rs calls `process::exit` above 256.
pub const MAX_M: usize = 128;
/// Upper bound on `ef_construction`.
pub const MAX_EF_CONSTRUCTION: usize = 4_096;
/// Longest collection name.
pub const MAX_NAME_LEN: usize = 128;
/// Longest string point id, in characters (JSON Schema's `maxLength` counts characters).
pub const MAX_ID_LEN: usize = 512;
/// Most searches in one batch request.
pub const MAX_BATCH_SEARCHES: usize = 1_024;
/// Largest sum of `k` over the searches of one batch: the work one request may ask for.
pub const MAX_BATCH_K: usize = 100_000;
/// Most ids in one `points/get`.
pub const MAX_GET_IDS: usize = 10_000;
/// Largest `min_index` and `max_lag_ms` a request may give (2^53, exact in every JSON parser).
pub const MAX_TOKEN: u64 = 1 << 53;
/// Largest JSON answer a read may produce, in bytes (searches, batches, `points/get`); a read
/// whose answer would be larger fails with 413 `answer_too_large` before it is all built.
pub const MAX_ANSWER_BYTES: usize = 64 << 20;

/// Largest squared Euclidean norm a stored or query vector may have. With `‖a‖², ‖b‖² ≤ B`, every
/// partial sum of `a·b` is at most `B` and `‖a-b‖² ≤ 4B` in absolute value, so with `B = f32::MAX/8`
/// no distance, in any kernel's accumulation order, can overflow to ±inf or NaN. Real embeddings
/// are many orders of magnitude below it (the bound is a norm of about 6.5e18).
pub const MAX_NORM_SQUARED: f64 = f32::MAX as f64 / 8.0;

/// Elements within ± this bound keep any vector of up to [`MAX_DIM`] (65,536) elements within
/// [`MAX_NORM_SQUARED`]; the OpenAPI schema advertises it, the server checks the norm itself.
pub const VECTOR_ELEMENT_BOUND: f64 = 1e16;

/// Serde helper for the vectors of requests: each element is read as the JSON number it is (an
/// `f64`) and must lie within ±[`VECTOR_ELEMENT_BOUND`], as the schema says, before it becomes an
/// `f32`, which cannot tell the bound from numbers just past it (1e16 + 2 was accepted). An error
/// names the element (`vector[3]`). Binary formats read plain `f32`s.
pub mod vector {
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};
    use serde::Deserialize;
    use std::fmt;

    use super::{MAX_DIM, VECTOR_ELEMENT_BOUND};

    /// One element, checked against the bound.
    struct Element(f32);

    impl<'de> Deserialize<'de> for Element {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            if !d.is_human_readable() {
                return f32::deserialize(d).map(Element);
            }
            let x = f64::deserialize(d)?;
            if x.abs() <= VECTOR_ELEMENT_BOUND {
                Ok(Element(x as f32))
            } else {
                Err(D::Error::custom(format!(
                    "{x} is out of range: elements must be within ±{VECTOR_ELEMENT_BOUND:e}"
                )))
            }
        }
    }

    struct Elements;

    impl<'de> Visitor<'de> for Elements {
        type Value = Vec<f32>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array of numbers")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<f32>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_DIM));
            while let Some(Element(x)) = seq.next_element()? {
                out.push(x);
            }
            Ok(out)
        }
    }

    /// A request's vector.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f32>, D::Error> {
        d.deserialize_seq(Elements)
    }
}

/// Why a vector cannot be indexed: `Some((position, reason))`, where `position` is the element at
/// fault (a non-finite value) or `None` for the vector as a whole (its norm is too large for its
/// distances to be finite). The one rule for every metric, checked by the API before a write
/// reaches the log and again when a write is applied.
pub fn vector_problem(v: &[f32]) -> Option<(Option<usize>, &'static str)> {
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Some((Some(i), "must be a finite number"));
    }
    let norm2: f64 = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    if norm2 > MAX_NORM_SQUARED {
        return Some((
            None,
            "its norm is too large for distances to be finite (at most about 6.5e18)",
        ));
    }
    None
}

/// Serde helpers for integer fields: JSON Schema's `integer` includes integer-valued numbers
/// such as `18.0`, so JSON input accepts them; binary formats (the log) read plain integers.
pub mod int {
    use serde::de::{Deserializer, Error, Visitor};
    use serde::Deserialize;
    use std::fmt;

    struct Unsigned;

    impl Visitor<'_> for Unsigned {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an unsigned integer")
        }
        fn visit_u64<E: Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom("expected an unsigned integer"))
        }
        fn visit_f64<E: Error>(self, v: f64) -> Result<u64, E> {
            // 2^64 is exactly representable; every integral f64 below it fits a u64.
            if v.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&v) {
                Ok(v as u64)
            } else {
                Err(E::custom(format!("expected an unsigned integer, got {v}")))
            }
        }
    }

    /// A `u64`, from a JSON integer or an integer-valued number.
    pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        if d.is_human_readable() {
            d.deserialize_any(Unsigned)
        } else {
            <u64 as Deserialize>::deserialize(d)
        }
    }

    /// A `usize`, likewise.
    pub fn usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        let v = if d.is_human_readable() {
            d.deserialize_any(Unsigned)?
        } else {
            return <usize as Deserialize>::deserialize(d);
        };
        usize::try_from(v).map_err(|_| D::Error::custom("integer too large"))
    }

    struct Wrapped(usize);
    impl<'de> Deserialize<'de> for Wrapped {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            usize(d).map(Wrapped)
        }
    }

    /// An optional `usize` (`null` or absent is `None`).
    pub fn opt_usize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
        Ok(Option::<Wrapped>::deserialize(d)?.map(|w| w.0))
    }
}

/// A point's external id: a string (LangChain uses UUID strings) or an unsigned integer.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PointId {
    /// An unsigned integer id.
    Num(u64),
    /// A string id.
    Str(String),
}

impl fmt::Display for PointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PointId::Num(n) => write!(f, "{n}"),
            PointId::Str(s) => f.write_str(s),
        }
    }
}

impl PointId {
    /// Parses an id as it appears in a URL path: all digits means a number.
    pub fn from_path(s: &str) -> PointId {
        match s.parse::<u64>() {
            Ok(n) if !s.starts_with('+') => PointId::Num(n),
            _ => PointId::Str(s.to_string()),
        }
    }
}

impl From<u64> for PointId {
    fn from(n: u64) -> PointId {
        PointId::Num(n)
    }
}

impl From<String> for PointId {
    fn from(s: String) -> PointId {
        PointId::Str(s)
    }
}

impl From<&str> for PointId {
    fn from(s: &str) -> PointId {
        PointId::Str(s.to_string())
    }
}

impl utoipa::PartialSchema for PointId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(MAX_ID_LEN)),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0))
                    .maximum(Some(utoipa::Number::UInt(u64::MAX as usize))),
            )
            .description(Some("A string (e.g. a UUID) or an unsigned integer"))
            .into()
    }
}

impl ToSchema for PointId {}

#[derive(Serialize, Deserialize)]
enum PointIdTagged {
    Num(u64),
    Str(String),
}

impl Serialize for PointId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            match self {
                PointId::Num(n) => s.serialize_u64(*n),
                PointId::Str(v) => s.serialize_str(v),
            }
        } else {
            match self {
                PointId::Num(n) => PointIdTagged::Num(*n).serialize(s),
                PointId::Str(v) => PointIdTagged::Str(v.clone()).serialize(s),
            }
        }
    }
}

impl<'de> Deserialize<'de> for PointId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = PointId;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a non-empty string or an unsigned integer")
                }
                fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PointId, E> {
                    Ok(PointId::Num(v))
                }
                fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PointId, E> {
                    u64::try_from(v)
                        .map(PointId::Num)
                        .map_err(|_| E::custom("point id must be an unsigned integer or a string"))
                }
                fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<PointId, E> {
                    if v.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&v) {
                        Ok(PointId::Num(v as u64))
                    } else {
                        Err(E::custom(
                            "point id must be an unsigned integer or a string",
                        ))
                    }
                }
                fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PointId, E> {
                    if v.is_empty() || v.chars().count() > MAX_ID_LEN {
                        return Err(E::custom(format!(
                            "string point id must have 1 to {MAX_ID_LEN} characters"
                        )));
                    }
                    Ok(PointId::Str(v.to_string()))
                }
            }
            d.deserialize_any(V)
        } else {
            Ok(match PointIdTagged::deserialize(d)? {
                PointIdTagged::Num(n) => PointId::Num(n),
                PointIdTagged::Str(s) => PointId::Str(s),
            })
        }
    }
}

/// How similarity is measured. Cosine vectors are normalised on write and searched by dot product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Cosine similarity (score in [-1, 1], higher is better).
    Cosine,
    /// Euclidean distance (score ≥ 0, lower is better).
    L2,
    /// Inner product (higher is better).
    Dot,
}

impl Metric {
    /// True when a higher score means a closer point.
    pub fn higher_is_better(self) -> bool {
        !matches!(self, Metric::L2)
    }
}

/// HNSW graph parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HnswConfig {
    /// Links per node on upper layers (layer 0 keeps 2·m), 2..=128.
    #[serde(default = "default_m", deserialize_with = "int::usize")]
    #[schema(minimum = 2, maximum = 128, default = 16)]
    pub m: usize,
    /// Candidate list size while building, 1..=4096 (a value below `m` builds as `m`); larger
    /// builds slower and recalls better.
    #[serde(default = "default_ef_construction", deserialize_with = "int::usize")]
    #[schema(minimum = 1, maximum = 4096, default = 100)]
    pub ef_construction: usize,
}

fn default_m() -> usize {
    16
}
fn default_ef_construction() -> usize {
    100
}

impl Default for HnswConfig {
    fn default() -> Self {
        HnswConfig {
            m: default_m(),
            ef_construction: default_ef_construction(),
        }
    }
}

/// How a collection holds the vectors its graph walks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// The full `f32` vectors, in memory (the default).
    #[default]
    None,
    /// Scalar int8 codes in memory (a quarter of the vectors' size, plus 8 bytes each); the full
    /// vectors stay on disk, and the graph's candidates are rescored with them, so scores are
    /// exact.
    Int8,
    /// The full vectors in memory, as `none`, and their int8 codes beside them, which the graph
    /// walk reads; the best candidates are rescored with the vectors, so scores are exact. The
    /// fastest search (1.6-1.9× `none` at equal recall), for about a quarter more memory than
    /// `none`.
    #[serde(rename = "int8_ram")]
    Int8Ram,
}

impl Quantization {
    /// True for the default.
    pub fn is_none(&self) -> bool {
        *self == Quantization::None
    }

    /// True when the full vectors live on disk and only codes in memory (`int8`).
    pub fn vectors_on_disk(&self) -> bool {
        *self == Quantization::Int8
    }

    /// True when the graph walk reads int8 codes and its candidates are rescored.
    pub fn walks_codes(&self) -> bool {
        *self != Quantization::None
    }
}

/// A collection's immutable configuration.
///
/// In JSON it is an object of its fields (`quantization` only when set). In bincode (the
/// server's log, store and snapshots) it keeps the layout it had before `quantization` existed,
/// `(dim, metric, hnsw)`, with the quantisation in the metric's tag: `metric + 256 · kind`.
/// Data written before the field decodes as unquantised, and no field is appended that older
/// records lack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CollectionConfig {
    /// Vector dimension, 1..=65536.
    #[serde(deserialize_with = "int::usize")]
    #[schema(minimum = 1, maximum = 65536)]
    pub dim: usize,
    /// Similarity measure.
    pub metric: Metric,
    /// Graph parameters (defaults m=16, ef_construction=100).
    #[serde(default)]
    pub hnsw: HnswConfig,
    /// `int8` keeps int8 codes in memory and the full vectors on disk (about a third of the
    /// memory at 384 dimensions); `int8_ram` walks int8 codes and keeps the full vectors in
    /// memory (faster search, a quarter more memory); default `none`.
    #[serde(default)]
    pub quantization: Quantization,
}

/// The JSON form of [`CollectionConfig`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigJson {
    #[serde(deserialize_with = "int::usize")]
    dim: usize,
    metric: Metric,
    #[serde(default)]
    hnsw: HnswConfig,
    #[serde(default, skip_serializing_if = "Quantization::is_none")]
    quantization: Quantization,
}

impl Serialize for CollectionConfig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            ConfigJson {
                dim: self.dim,
                metric: self.metric,
                hnsw: self.hnsw,
                quantization: self.quantization,
            }
            .serialize(s)
        } else {
            let metric = match self.metric {
                Metric::Cosine => 0u32,
                Metric::L2 => 1,
                Metric::Dot => 2,
            };
            let kind = match self.quantization {
                Quantization::None => 0u32,
                Quantization::Int8 => 1,
                Quantization::Int8Ram => 2,
            };
            (self.dim as u64, metric + 256 * kind, self.hnsw).serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for CollectionConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        if d.is_human_readable() {
            let j = ConfigJson::deserialize(d)?;
            return Ok(CollectionConfig {
                dim: j.dim,
                metric: j.metric,
                hnsw: j.hnsw,
                quantization: j.quantization,
            });
        }
        let (dim, tag, hnsw) = <(u64, u32, HnswConfig)>::deserialize(d)?;
        let metric = match tag % 256 {
            0 => Metric::Cosine,
            1 => Metric::L2,
            2 => Metric::Dot,
            t => return Err(D::Error::custom(format!("unknown metric tag {t}"))),
        };
        let quantization = match tag / 256 {
            0 => Quantization::None,
            1 => Quantization::Int8,
            2 => Quantization::Int8Ram,
            k => return Err(D::Error::custom(format!("unknown quantization {k}"))),
        };
        let dim = usize::try_from(dim).map_err(D::Error::custom)?;
        Ok(CollectionConfig {
            dim,
            metric,
            hnsw,
            quantization,
        })
    }
}

impl CollectionConfig {
    /// A collection of `dim`-dimensional vectors compared by `metric`, with the default graph
    /// parameters and no quantisation.
    pub fn new(dim: usize, metric: Metric) -> CollectionConfig {
        CollectionConfig {
            dim,
            metric,
            hnsw: HnswConfig::default(),
            quantization: Quantization::None,
        }
    }

    /// Checks ranges; the error names the offending field.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.dim == 0 || self.dim > MAX_DIM {
            return Err(("dim".into(), format!("must be between 1 and {MAX_DIM}")));
        }
        if self.hnsw.m < 2 || self.hnsw.m > MAX_M {
            return Err(("hnsw.m".into(), format!("must be between 2 and {MAX_M}")));
        }
        if self.hnsw.ef_construction == 0 || self.hnsw.ef_construction > MAX_EF_CONSTRUCTION {
            return Err((
                "hnsw.ef_construction".into(),
                format!("must be between 1 and {MAX_EF_CONSTRUCTION}"),
            ));
        }
        Ok(())
    }
}

/// Checks a collection name: 1-128 characters of `[A-Za-z0-9_.-]`.
pub fn validate_collection_name(name: &str) -> Result<(), String> {
    // `.` and `..` are path segments that URL normalisation removes: no client could name them.
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "collection name must be 1-{MAX_NAME_LEN} characters of A-Z a-z 0-9 _ - . (not `.` or `..`)"
        ))
    }
}

/// A point as the API accepts it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PointInput {
    /// String or unsigned integer id.
    pub id: PointId,
    /// The embedding, of the collection's dimension.
    #[schema(schema_with = crate::schema::vector)]
    #[serde(deserialize_with = "vector::deserialize")]
    pub vector: Vec<f32>,
    /// Any JSON object.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub payload: Option<serde_json::Value>,
}

/// `PUT /collections/{name}/points` body.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpsertRequest {
    /// Points to insert or replace (at least one).
    #[schema(min_items = 1)]
    pub points: Vec<PointInput>,
}

/// `POST /collections/{name}/points/delete` body: exactly one of `ids` (at least one) and
/// `filter` (at least one condition). The schema is written out in `api::schema`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    /// Ids to delete.
    #[serde(default)]
    pub ids: Option<Vec<PointId>>,
    /// Delete every point matching this filter.
    #[serde(default)]
    pub filter: Option<Filter>,
}

/// How fresh a read must be. JSON: `"eventual"` (default), `"linearizable"`,
/// `{"min_index": N}` or `{"max_lag_ms": T}`. The schema is written out in `api::schema`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Consistency {
    /// A named level.
    Level(ConsistencyLevel),
    /// Read-your-writes: wait (bounded) until this node has applied index N.
    MinIndex {
        /// The index a write returned.
        #[serde(deserialize_with = "int::u64")]
        min_index: u64,
    },
    /// Bounded staleness: answer only if caught up with the leader within T ms.
    MaxLag {
        /// Largest acceptable staleness, in ms.
        #[serde(deserialize_with = "int::u64")]
        max_lag_ms: u64,
    },
}

/// Named consistency levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConsistencyLevel {
    /// Answer from local state at once.
    Eventual,
    /// Answer at or after the leader's commit index at the time of the request.
    Linearizable,
}

impl Default for Consistency {
    fn default() -> Self {
        Consistency::Level(ConsistencyLevel::Eventual)
    }
}

/// Query parameters of reads that have no body (`GET .../points/{id}`).
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadParams {
    /// `eventual` or `linearizable`.
    #[param(nullable = false)]
    pub consistency: Option<ConsistencyLevel>,
    /// Read-your-writes: wait until this index is applied.
    #[param(nullable = false, maximum = 9007199254740992_u64)]
    pub min_index: Option<u64>,
    /// Bounded staleness in ms.
    #[param(nullable = false, maximum = 9007199254740992_u64)]
    pub max_lag_ms: Option<u64>,
}

impl ReadParams {
    /// A parameter past [`MAX_TOKEN`], as `(field, reason)`: out of the schema's range whichever
    /// level wins (a `min_index` beside `consistency=linearizable` was accepted).
    pub fn problem(&self) -> Option<(&'static str, String)> {
        [
            ("min_index", self.min_index),
            ("max_lag_ms", self.max_lag_ms),
        ]
        .into_iter()
        .find(|(_, v)| v.is_some_and(|v| v > MAX_TOKEN))
        .map(|(field, _)| (field, format!("must be at most {MAX_TOKEN}")))
    }

    /// The consistency these parameters ask for (the strictest given wins).
    pub fn consistency(&self) -> Consistency {
        if let Some(ConsistencyLevel::Linearizable) = self.consistency {
            Consistency::Level(ConsistencyLevel::Linearizable)
        } else if let Some(n) = self.min_index {
            Consistency::MinIndex { min_index: n }
        } else if let Some(t) = self.max_lag_ms {
            Consistency::MaxLag { max_lag_ms: t }
        } else {
            Consistency::default()
        }
    }
}

/// A similarity search.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// Query vector, of the collection's dimension.
    #[schema(schema_with = crate::schema::vector)]
    #[serde(deserialize_with = "vector::deserialize")]
    pub vector: Vec<f32>,
    /// Number of neighbours wanted (1..=10000).
    #[serde(default = "default_k", deserialize_with = "int::usize")]
    #[schema(minimum = 1, maximum = 10000, default = 10)]
    pub k: usize,
    /// Search breadth, 1..=10000; defaults to the node's `default_ef` (at least k).
    #[serde(default, deserialize_with = "int::opt_usize")]
    #[schema(minimum = 1, maximum = 10000)]
    pub ef: Option<usize>,
    /// Payload filter.
    #[serde(default)]
    pub filter: Option<Filter>,
    /// Drop hits worse than this score.
    #[serde(default)]
    #[schema(schema_with = crate::schema::score_threshold)]
    pub score_threshold: Option<f32>,
    /// Include payloads in hits (default true).
    #[serde(default = "default_true")]
    pub with_payload: bool,
    /// Include vectors in hits (default false).
    #[serde(default)]
    pub with_vector: bool,
    /// Brute-force search instead of HNSW (for recall checks).
    #[serde(default)]
    pub exact: bool,
    /// How fresh the answer must be (default eventual).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
    /// Use the node's query cache (default true): an answer cached under the collection's
    /// current state, or computed and kept. `false` computes it and leaves the cache alone
    /// (benchmarks of the search itself). Either way the answer is the same.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    #[schema(default = true)]
    pub cache: bool,
}

impl SearchRequest {
    /// A plain top-`k` search with the defaults for everything else.
    pub fn new(vector: Vec<f32>, k: usize) -> SearchRequest {
        SearchRequest {
            vector,
            k,
            ef: None,
            filter: None,
            score_threshold: None,
            with_payload: true,
            with_vector: false,
            exact: false,
            consistency: None,
            cache: true,
        }
    }
}

fn default_k() -> usize {
    10
}
fn is_true(b: &bool) -> bool {
    *b
}

fn default_true() -> bool {
    true
}

/// A batch of searches against one collection.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchSearchRequest {
    /// The searches, answered in order: 1 to 1,024, whose `k` add up to at most 100,000.
    #[schema(min_items = 1, max_items = 1024)]
    pub searches: Vec<SearchRequest>,
    /// How fresh the answers must be (default eventual); applies to the whole batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
}

/// One search result.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Hit {
    /// The point's id.
    pub id: PointId,
    /// Cosine similarity or dot product (higher is better) or Euclidean distance (lower is better).
    pub score: f32,
    /// The payload, when asked for.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(value_type = Option<Object>)]
    pub payload: Option<serde_json::Value>,
    /// The stored vector (normalised for cosine), when asked for.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub vector: Option<Vec<f32>>,
}

/// A stored point.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct PointRecord {
    /// The point's id.
    pub id: PointId,
    /// The stored vector (normalised for cosine).
    pub vector: Vec<f32>,
    /// The payload.
    #[schema(value_type = Option<Object>)]
    pub payload: Option<serde_json::Value>,
}

/// `POST /collections/{name}/points/get`: several points by id in one read.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GetPointsRequest {
    /// The ids (1 to 10,000); ids with no point are left out of the answer.
    #[schema(min_items = 1, max_items = 10000)]
    pub ids: Vec<PointId>,
    /// Include the stored vectors (default true).
    #[serde(default = "default_true")]
    pub with_vector: bool,
    /// How fresh the answer must be (default eventual).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
}

/// The points found, in the order asked, and the index they were read at.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct GetPointsResponse {
    /// The points that exist, in request order.
    pub points: Vec<PointRecord>,
    /// Applied log index.
    pub index: u64,
}

/// What `GET /collections/{name}` returns.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct CollectionInfo {
    /// Name.
    pub name: String,
    /// Configuration.
    pub config: CollectionConfig,
    /// Live points.
    pub points: usize,
    /// Deleted or replaced points still held in the graph until the next rebuild.
    pub tombstones: usize,
    /// Points applied but not yet inserted into the HNSW graph (searched exactly meanwhile). The
    /// graph takes points in blocks of 256 internal ids; the last, incomplete block (up to 255
    /// points, also searched exactly) waits for the writes that complete it and is not counted.
    pub unindexed: usize,
    /// Applied log index this answer was read at (`GET /collections/{name}`; 0 inside a list).
    #[serde(default)]
    pub index: u64,
}

/// Liveness answer.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always "ok" when the process serves requests.
    pub status: String,
    /// Last applied log index.
    pub index: u64,
}

/// The answer to every write.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct WriteResponse {
    /// Log index of the write; pass it back as `min_index` for read-your-writes.
    pub index: u64,
    /// Points written (upserts).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub upserted: Option<usize>,
    /// Points deleted (deletes).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub deleted: Option<usize>,
    /// Whether this request created the collection (false: it already existed, same config).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub created: Option<bool>,
    /// Tombstones a compaction drops: a rebuild of the graph without them started at `index`
    /// on every node (0: there were none, nothing started).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub compacted: Option<usize>,
}

impl WriteResponse {
    /// The answer to a write applied at `index` that reports nothing else; set the field of
    /// the write's kind on it.
    pub fn at(index: u64) -> WriteResponse {
        WriteResponse {
            index,
            upserted: None,
            deleted: None,
            created: None,
            compacted: None,
        }
    }
}

/// `GET /collections`.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct CollectionList {
    /// Every collection.
    pub collections: Vec<CollectionInfo>,
    /// Applied log index this answer was read at.
    #[serde(default)]
    pub index: u64,
}

/// Search answer.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct SearchResponse {
    /// Best first.
    pub hits: Vec<Hit>,
    /// Applied log index the answer was served at.
    pub index: u64,
}

/// Batch search answer.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct BatchSearchResponse {
    /// One hit list per search, in order.
    pub results: Vec<Vec<Hit>>,
    /// Applied log index the answers were served at.
    pub index: u64,
}

/// A point and the index it was read at.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct PointResponse {
    /// The point.
    #[serde(flatten)]
    pub point: PointRecord,
    /// Applied log index.
    pub index: u64,
}

/// The JSON error body every endpoint answers with: `{"error": {"code", "message", "field"?}}`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Details of an error.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_input`, `collection_not_found`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// JSON path of the offending field, for `invalid_input`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub field: Option<String>,
}

impl ErrorBody {
    /// An error body with this code and message.
    pub fn new(code: &str, message: impl Into<String>, field: Option<String>) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: code.to_string(),
                message: message.into(),
                field,
            },
        }
    }

    /// The `error.code` of a quiver error body, if `body` is one.
    pub fn code_of(body: &[u8]) -> Option<String> {
        serde_json::from_slice::<ErrorBody>(body)
            .ok()
            .map(|b| b.error.code)
    }
}

/// A node id.
pub type NodeId = u64;

/// One member as `GET /cluster` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MemberInfo {
    /// Node id.
    pub id: NodeId,
    /// Its advertised URL.
    pub addr: String,
    /// `voter` or `learner`.
    pub role: String,
    /// On the leader: the last log index known to be replicated there.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub matched: Option<u64>,
    /// On the leader: how many entries it trails the leader's log.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lag: Option<u64>,
}

/// `GET /cluster`: one node's view of the cluster.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ClusterStatus {
    /// This node's id.
    pub id: NodeId,
    /// leader, follower, learner or candidate.
    pub role: String,
    /// Current Raft term.
    pub term: u64,
    /// The leader's id, if known.
    pub leader_id: Option<NodeId>,
    /// The leader's URL, if known.
    pub leader_addr: Option<String>,
    /// Last applied log index.
    pub applied_index: u64,
    /// Commit index: the leader's own on the leader, the last one the leader told us elsewhere.
    pub committed_index: u64,
    /// Last index in this node's log.
    pub last_log_index: u64,
    /// Members, voters first.
    pub members: Vec<MemberInfo>,
    /// Whether this node takes writes now: it leads, its Raft runs, and a quorum acknowledged it
    /// within an election timeout. A leader cut off from its quorum says `false` here and
    /// answers writes with 503 `not_leader` until it hears from the quorum again or steps down.
    #[serde(default)]
    pub writable: bool,
    /// On the leader: milliseconds since a quorum last acknowledged it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub quorum_ack_ms: Option<u64>,
    /// Why Raft stopped on this node (a fatal error), if it did.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fatal: Option<String>,
}
