//! The query cache (issue 11): answers to searches, bounded by bytes, never stale.
//!
//! An answer is keyed by its collection and the canonical request (the prepared query vector's
//! bits, k, ef, filter, threshold, what to return, `exact`) and stored with the [`ViewTag`] it was
//! computed under: the collection's points and the state of its graph. A lookup serves it only
//! while that tag is still the collection's current one, so a cached answer is always the one the
//! node would compute at that moment; a write moves the tag of its own collection only, and the
//! stale entry is replaced by the next miss. Answers that no tag pins down (a walk of the live
//! hnsw_rs graph mid-ingest) are not stored. Consistency levels are unaffected: a read waits for
//! its index first, then looks up.
//!
//! Eviction is quick_cache's S3-FIFO over entry sizes, which resists scans better than LRU.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, Weighter};

use super::collection::{Collection, SearchParams, ViewTag};
use crate::model::Hit;

/// A cached answer: what it was computed under, the hits, and its size in bytes.
#[derive(Clone)]
struct Entry(Arc<(ViewTag, Vec<Hit>, u64)>);

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    collection: u64,
    request: Box<[u8]>,
}

#[derive(Clone)]
struct Bytes;

impl Weighter<Key, Entry> for Bytes {
    fn weight(&self, _key: &Key, entry: &Entry) -> u64 {
        entry.0 .2
    }
}

/// Counts evictions (entries pushed out by the byte bound).
#[derive(Clone, Default)]
struct Evictions(Arc<AtomicU64>);

impl Lifecycle<Key, Entry> for Evictions {
    type RequestState = ();

    fn on_evict(&self, _state: &mut (), _key: Key, _entry: Entry) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// What `/metrics` reports of the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that computed the answer (stale ones included).
    pub misses: u64,
    /// Misses that found an entry computed under an older tag.
    pub stale: u64,
    /// Entries pushed out by the byte bound.
    pub evictions: u64,
    /// Bytes held (keys and answers, estimated).
    pub bytes: u64,
    /// Entries held.
    pub entries: u64,
    /// The bound, in bytes (0: off).
    pub capacity: u64,
}

/// A node's query cache; with a bound of 0 bytes every search is computed.
pub struct QueryCache {
    cache: Option<Cache<Key, Entry, Bytes, DefaultHashBuilder, Evictions>>,
    evictions: Evictions,
    capacity: u64,
    hits: AtomicU64,
    misses: AtomicU64,
    stale: AtomicU64,
}

/// Fixed cost counted per entry besides its key and hits (the map slot, the `Arc`, the vector).
const ENTRY_OVERHEAD: u64 = 128;

impl QueryCache {
    /// A cache of at most `bytes` (0: off).
    pub fn new(bytes: u64) -> QueryCache {
        let evictions = Evictions::default();
        let cache = (bytes > 0).then(|| {
            // A guess at the entry count, for the table's initial size: 4 KiB per answer.
            let items = (bytes / 4096).clamp(16, 1 << 20) as usize;
            Cache::with(
                items,
                bytes,
                Bytes,
                DefaultHashBuilder::default(),
                evictions.clone(),
            )
        });
        QueryCache {
            cache,
            evictions,
            capacity: bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            stale: AtomicU64::new(0),
        }
    }

    /// The answer to `p` on `collection`: from the cache while its tag is current, else computed
    /// (and kept, when a tag pins it down). `use_cache: false` computes it and leaves the cache
    /// alone.
    pub fn search(&self, collection: &Collection, p: &SearchParams, use_cache: bool) -> Vec<Hit> {
        let Some(cache) = self.cache.as_ref().filter(|_| use_cache) else {
            return collection.search(p);
        };
        let key = Key {
            collection: collection.id(),
            request: canonical(p),
        };
        if let Some(Entry(e)) = cache.get(&key) {
            if e.0 == collection.view_tag() {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return e.1.clone();
            }
            self.stale.fetch_add(1, Ordering::Relaxed);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let (hits, tag) = collection.search_tagged(p);
        if let Some(tag) = tag {
            let bytes = ENTRY_OVERHEAD + key.request.len() as u64 + answer_bytes(&hits);
            cache.insert(key, Entry(Arc::new((tag, hits.clone(), bytes))));
        }
        hits
    }

    /// Hits, misses, evictions and size.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            evictions: self.evictions.0.load(Ordering::Relaxed),
            bytes: self.cache.as_ref().map_or(0, |c| c.weight()),
            entries: self.cache.as_ref().map_or(0, |c| c.len() as u64),
            capacity: self.capacity,
        }
    }
}

/// The request's canonical bytes: everything that decides the answer, in one fixed layout. The
/// vector is the prepared one (normalised for cosine), so requests that differ only before
/// preparation share an entry; the filter is its JSON (object keys sorted by serde_json).
fn canonical(p: &SearchParams) -> Box<[u8]> {
    let filter = p
        .filter
        .as_ref()
        .and_then(|f| serde_json::to_vec(f).ok())
        .unwrap_or_default();
    let mut out = Vec::with_capacity(p.vector.len() * 4 + filter.len() + 40);
    out.extend_from_slice(&(p.vector.len() as u64).to_le_bytes());
    for x in &p.vector {
        out.extend_from_slice(&x.to_bits().to_le_bytes());
    }
    out.extend_from_slice(&(p.k as u64).to_le_bytes());
    // A default ef grows with the collection ([`super::collection::sized_ef`]): that is in the
    // tag (the point count is part of the points' version), so the base ef and the flag suffice.
    out.extend_from_slice(&(p.ef as u64).to_le_bytes());
    let threshold = p
        .score_threshold
        .map_or(u64::MAX, |t| u64::from(t.to_bits()));
    out.extend_from_slice(&threshold.to_le_bytes());
    out.push(u8::from(p.sized_ef) | u8::from(p.with_payload) << 1);
    out.push(u8::from(p.with_vector) | u8::from(p.exact) << 1);
    out.extend_from_slice(&filter);
    out.into_boxed_slice()
}

/// About how many bytes the hits take in memory.
fn answer_bytes(hits: &[Hit]) -> u64 {
    hits.iter()
        .map(|h| {
            let id = match &h.id {
                crate::model::PointId::Num(_) => 0,
                crate::model::PointId::Str(s) => s.len(),
            };
            let payload = h.payload.as_ref().map_or(0, json_bytes);
            let vector = h.vector.as_ref().map_or(0, |v| v.len() * 4);
            (std::mem::size_of::<Hit>() + id + payload + vector) as u64
        })
        .sum()
}

/// A rough in-memory size of a JSON value (its text length plus a node per value).
fn json_bytes(v: &serde_json::Value) -> usize {
    use serde_json::Value;
    const NODE: usize = std::mem::size_of::<Value>();
    match v {
        Value::String(s) => NODE + s.len(),
        Value::Array(a) => NODE + a.iter().map(json_bytes).sum::<usize>(),
        Value::Object(m) => {
            NODE + m
                .iter()
                .map(|(k, v)| k.len() + 32 + json_bytes(v))
                .sum::<usize>()
        }
        _ => NODE,
    }
}
