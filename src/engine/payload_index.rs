//! The payload index: for every key path of every point's payload, which internal ids hold which
//! scalar value there, so that a selective filter becomes a short list of candidates instead of a
//! [`Filter::matches`] call on every point.
//!
//! What is indexed, for a payload object (anything else indexes nothing, and matches no
//! condition): every scalar at every key path. A top-level key is a path under its literal name;
//! a nested object adds `parent.child` paths (through objects only: `lookup` in `filter.rs` never
//! walks into arrays); an array indexes its scalar elements under the array's own path. Strings of
//! at most [`MAX_INDEXED_STRING`] bytes are indexed by value, numbers by their `f64` value (what
//! [`Filter::matches`] compares; `-0.0` is `0.0`, NaN is left out), booleans by value; nulls and
//! longer strings are left out. Paths longer than [`MAX_KEY_LEN`] characters are left out too: no
//! valid condition can name them.
//!
//! The literal-versus-nested rule of `lookup` (a top-level key `a.b` hides the nested path
//! `a` → `b`) is not modelled: both spellings are indexed under the same path `a.b`. That only
//! adds candidates, and [`PayloadIndex::candidates`] promises a superset: the caller checks each
//! candidate with [`Filter::matches`].
//!
//! Posting lists are [`RoaringBitmap`]s of `u32` ids, with a single id kept inline (most values of
//! a unique field, a timestamp say, have one point). Internal ids above `u32::MAX` cannot go in
//! them; such ids are kept apart and returned by every `candidates` answer (still a superset, and
//! in practice never: internal ids are dense from 0).
//!
//! Determinism: only ordered maps and bitmaps, no hashing, randomness or clock, so that every node
//! applying the same writes holds the same index (it is maintained in the Raft apply step).

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::mem::size_of;
use std::ops::Bound;

use roaring::RoaringBitmap;
use serde_json::Value;

use crate::filter::{Condition, Filter, Range, MAX_KEY_LEN};

/// Longest string value, in bytes, that the index holds. A longer payload string is left out (it
/// would cost memory for a value that filters hardly ever name), so a condition whose query value
/// is longer cannot be answered by the index.
pub const MAX_INDEXED_STRING: usize = 64;

/// Most posting lists a range condition may visit once earlier conditions have narrowed the
/// candidates, at the least...
const MIN_RANGE_BUDGET: u64 = 4_096;
/// ...and per candidate held. A range over many distinct values (`n >= 0` on a unique field) costs
/// one step per value, more than checking the few candidates it could strike out; past this
/// budget the condition is skipped, which leaves a superset.
const RANGE_BUDGET_PER_CANDIDATE: u64 = 4;

/// The ids holding one value at one path.
#[derive(Clone, Debug)]
enum Posting {
    /// A single id, inline (no allocation).
    One(u32),
    /// Two or more ids.
    Many(RoaringBitmap),
}

impl Posting {
    fn add(&mut self, id: u32) {
        match self {
            Posting::One(x) if *x == id => {}
            Posting::One(x) => {
                let mut b = RoaringBitmap::new();
                b.insert(*x);
                b.insert(id);
                *self = Posting::Many(b);
            }
            Posting::Many(b) => {
                b.insert(id);
            }
        }
    }

    /// Removes `id`; true when no id is left.
    fn remove(&mut self, id: u32) -> bool {
        match self {
            Posting::One(x) => *x == id,
            Posting::Many(b) => {
                b.remove(id);
                match (b.len(), b.min()) {
                    (0, _) => true,
                    (1, Some(x)) => {
                        *self = Posting::One(x);
                        false
                    }
                    _ => false,
                }
            }
        }
    }

    fn or_into(&self, out: &mut RoaringBitmap) {
        match self {
            Posting::One(x) => {
                out.insert(*x);
            }
            Posting::Many(b) => *out |= b,
        }
    }

    /// Heap bytes beyond the posting itself: for a bitmap, an estimate from what its containers
    /// hold (not their capacities, so that it depends on the ids only, not on how they came).
    fn heap(&self) -> usize {
        match self {
            Posting::One(_) => 0,
            Posting::Many(b) => {
                let s = b.statistics();
                // Array containers hold 2 bytes a value, about half again in spare capacity.
                let arrays = s.n_values_array_containers as usize * 3;
                let bitsets = s.n_bitset_containers as usize * BITSET_BYTES;
                s.n_containers as usize * CONTAINER_BYTES
                    + arrays
                    + bitsets
                    + s.n_bytes_run_containers as usize
            }
        }
    }
}

/// Bytes of one roaring container header (key and store handle).
const CONTAINER_BYTES: usize = 32;
/// Bytes of one roaring bitset container.
const BITSET_BYTES: usize = 8_192;

/// Rough heap bytes of one allocation of `n` bytes, allocator overhead included.
fn alloc_bytes(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        (n + 8).next_multiple_of(16).max(32)
    }
}

/// Rough heap bytes of one `BTreeMap<K, V>` entry: nodes hold 11 entries and run from about
/// half full (keys inserted in order, as ids and counters often are) to two thirds, plus their
/// headers and the internal levels.
const fn entry_bytes<K, V>() -> usize {
    (size_of::<K>() + size_of::<V>()) * 7 / 4 + 4
}

/// One indexed value, as found in a payload.
#[derive(Clone, Copy)]
enum Term<'a> {
    Str(&'a str),
    Num(u64),
    Bool(bool),
}

/// The term a payload scalar is indexed under; `None` for what the index leaves out.
fn payload_term(v: &Value) -> Option<Term<'_>> {
    match v {
        Value::String(s) if s.len() <= MAX_INDEXED_STRING => Some(Term::Str(s)),
        Value::Number(n) => n.as_f64().and_then(num_key).map(Term::Num),
        Value::Bool(b) => Some(Term::Bool(*b)),
        _ => None,
    }
}

/// An `f64` as a `u64` that sorts in numeric order (`-0.0` as `0.0`); `None` for NaN.
fn num_key(x: f64) -> Option<u64> {
    if x.is_nan() {
        return None;
    }
    let bits = if x == 0.0 { 0.0f64 } else { x }.to_bits();
    Some(if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    })
}

/// The numeric keys a range admits, or `None` when it admits no number (a NaN bound, or bounds
/// that cross).
fn range_bounds(r: &Range) -> Option<(Bound<u64>, Bound<u64>)> {
    if [r.gt, r.gte, r.lt, r.lte]
        .iter()
        .flatten()
        .any(|b| b.is_nan())
    {
        return None; // every comparison with NaN is false
    }
    // (value, inclusive); the tighter bound wins, and at equal values the exclusive one.
    let tighter = |a: Option<(f64, bool)>, b: Option<(f64, bool)>, lower: bool| match (a, b) {
        (Some(a), Some(b)) => {
            let a_wins = if a.0 == b.0 {
                !a.1
            } else {
                (a.0 > b.0) == lower
            };
            Some(if a_wins { a } else { b })
        }
        (a, b) => a.or(b),
    };
    let lo = tighter(r.gt.map(|x| (x, false)), r.gte.map(|x| (x, true)), true);
    let hi = tighter(r.lt.map(|x| (x, false)), r.lte.map(|x| (x, true)), false);
    if let (Some(lo), Some(hi)) = (lo, hi) {
        if lo.0 > hi.0 || (lo.0 == hi.0 && !(lo.1 && hi.1)) {
            return None;
        }
    }
    let bound = |b: Option<(f64, bool)>| -> Option<Bound<u64>> {
        Some(match b {
            None => Bound::Unbounded,
            Some((x, true)) => Bound::Included(num_key(x)?),
            Some((x, false)) => Bound::Excluded(num_key(x)?),
        })
    };
    Some((bound(lo)?, bound(hi)?))
}

/// Whether a condition is answered by a range scan (`match` takes precedence when both are set,
/// as in [`Filter::matches`]).
fn is_range(c: &Condition) -> bool {
    c.matches.is_none() && c.range.is_some()
}

/// Adds `id` under `key`; `owned` makes the map's key when the value is new, `key_heap` is what
/// that key holds on the heap.
fn add_to<K, Q>(
    map: &mut BTreeMap<K, Posting>,
    key: &Q,
    owned: impl FnOnce() -> K,
    key_heap: usize,
    id: u32,
    bytes: &mut usize,
) where
    K: Borrow<Q> + Ord,
    Q: Ord + ?Sized,
{
    if let Some(p) = map.get_mut(key) {
        let before = p.heap();
        p.add(id);
        *bytes = bytes.saturating_sub(before) + p.heap();
    } else {
        map.insert(owned(), Posting::One(id));
        *bytes += entry_bytes::<K, Posting>() + key_heap;
    }
}

/// Removes `id` from under `key`, and the entry when it empties.
fn remove_from<K, Q>(
    map: &mut BTreeMap<K, Posting>,
    key: &Q,
    key_heap: usize,
    id: u32,
    bytes: &mut usize,
) where
    K: Borrow<Q> + Ord,
    Q: Ord + ?Sized,
{
    let Some(p) = map.get_mut(key) else {
        return;
    };
    let before = p.heap();
    if p.remove(id) {
        map.remove(key);
        *bytes = bytes.saturating_sub(before + entry_bytes::<K, Posting>() + key_heap);
    } else {
        *bytes = bytes.saturating_sub(before) + p.heap();
    }
}

/// The values found at one key path.
#[derive(Default)]
struct Field {
    strings: BTreeMap<Box<str>, Posting>,
    numbers: BTreeMap<u64, Posting>,
    bools: BTreeMap<bool, Posting>,
}

impl Field {
    fn is_empty(&self) -> bool {
        self.strings.is_empty() && self.numbers.is_empty() && self.bools.is_empty()
    }

    fn add(&mut self, term: Term<'_>, id: u32, bytes: &mut usize) {
        match term {
            Term::Str(s) => add_to(
                &mut self.strings,
                s,
                || s.into(),
                alloc_bytes(s.len()),
                id,
                bytes,
            ),
            Term::Num(k) => add_to(&mut self.numbers, &k, || k, 0, id, bytes),
            Term::Bool(b) => add_to(&mut self.bools, &b, || b, 0, id, bytes),
        }
    }

    fn remove(&mut self, term: Term<'_>, id: u32, bytes: &mut usize) {
        match term {
            Term::Str(s) => remove_from(&mut self.strings, s, alloc_bytes(s.len()), id, bytes),
            Term::Num(k) => remove_from(&mut self.numbers, &k, 0, id, bytes),
            Term::Bool(b) => remove_from(&mut self.bools, &b, 0, id, bytes),
        }
    }

    /// The posting of a query value; `None` when no point holds it (or it is no scalar).
    fn get(&self, v: &Value) -> Option<&Posting> {
        match v {
            Value::String(s) => self.strings.get(s.as_str()),
            Value::Number(n) => self.numbers.get(&num_key(n.as_f64()?)?),
            Value::Bool(b) => self.bools.get(b),
            _ => None,
        }
    }
}

/// Intersects `set` into the running result (`None`: nothing narrowed yet).
fn narrow_to(acc: &mut Option<RoaringBitmap>, set: RoaringBitmap) {
    match acc {
        None => *acc = Some(set),
        Some(a) => *a &= set,
    }
}

/// Whether an object reachable from `v` through objects (the paths the index and `lookup` walk)
/// has a key with a dot in it.
fn has_dotted_key(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.iter().any(|(k, c)| k.contains('.') || has_dotted_key(c)),
        _ => false,
    }
}

/// How many posting lists a range condition may visit, given the candidates so far.
fn range_budget(acc: Option<&RoaringBitmap>) -> u64 {
    acc.map_or(u64::MAX, |a| {
        MIN_RANGE_BUDGET.max(a.len().saturating_mul(RANGE_BUDGET_PER_CANDIDATE))
    })
}

/// An inverted index over point payloads: key path → value → internal ids.
///
/// Maintained by the caller with [`PayloadIndex::insert`] and [`PayloadIndex::remove`], each id
/// holding at most one payload at a time (remove the old payload before inserting a new one);
/// queried with [`PayloadIndex::candidates`]. Deterministic: the same calls give the same index.
#[derive(Default)]
pub struct PayloadIndex {
    /// Key path → its values.
    fields: BTreeMap<Box<str>, Field>,
    /// Ids above `u32::MAX`, which the bitmaps cannot hold: a candidate of every query.
    wide: BTreeSet<u64>,
    /// Ids whose payload has a key containing a dot (at any object depth): for them the index
    /// may over-approximate (see the module documentation), so no answer is exact while any is
    /// held.
    dotted: BTreeSet<u64>,
    /// Running estimate of the heap held by `fields`.
    bytes: usize,
}

impl PayloadIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Indexes the payload of internal id `iid`: every scalar at every key path (see the module
    /// documentation). An id above `u32::MAX` is not indexed but returned by every
    /// [`PayloadIndex::candidates`] answer until removed, so answers stay correct.
    pub fn insert(&mut self, iid: u64, payload: &Value) {
        self.update(iid, payload, true);
    }

    /// Removes what [`PayloadIndex::insert`] added for `iid` and `payload` (the same payload).
    /// Removing what was not inserted changes nothing.
    pub fn remove(&mut self, iid: u64, payload: &Value) {
        self.update(iid, payload, false);
    }

    /// A superset of the live ids whose payload satisfies `filter`, sorted ascending without
    /// duplicates, and whether it is exactly those ids; or `None` when the index cannot narrow the
    /// filter: it has no `must` condition the index can answer and its `should` list is empty or
    /// names a condition the index cannot answer (a string longer than [`MAX_INDEXED_STRING`]
    /// bytes, or a key longer than [`MAX_KEY_LEN`] characters). `must_not` never narrows.
    ///
    /// Exact (the caller need not check the candidates with [`Filter::matches`]) when every
    /// condition was answered by the index (none skipped, none on a long string or key),
    /// `must_not` is empty, no id above `u32::MAX` is held, and no indexed payload has a key with a
    /// dot in it; or when the answer is empty. Otherwise the caller checks each candidate.
    ///
    /// Cost: a few map look-ups per `match` value, one step per distinct value a `range` covers;
    /// a range over many values after other conditions have narrowed the set to a few candidates
    /// is skipped rather than scanned (the answer is then a larger superset).
    pub fn candidates(&self, filter: &Filter) -> Option<(Vec<u64>, bool)> {
        let (set, answered) = self.narrow(filter)?;
        if set.is_empty() && self.wide.is_empty() {
            return Some((Vec::new(), true));
        }
        let exact = answered
            && filter.must_not.is_empty()
            && self.wide.is_empty()
            && self.dotted.is_empty();
        let mut ids = Vec::with_capacity(set.len() as usize + self.wide.len());
        ids.extend(set.iter().map(u64::from));
        ids.extend(self.wide.iter().copied());
        Some((ids, exact))
    }

    /// Rough heap bytes held (posting lists, maps and keys, allocator overhead included).
    pub fn heap_bytes(&self) -> usize {
        self.bytes + (self.wide.len() + self.dotted.len()) * entry_bytes::<u64, ()>()
    }

    fn update(&mut self, iid: u64, payload: &Value, add: bool) {
        if has_dotted_key(payload) {
            if add {
                self.dotted.insert(iid);
            } else {
                self.dotted.remove(&iid);
            }
        }
        let Ok(id) = u32::try_from(iid) else {
            if add {
                self.wide.insert(iid);
            } else {
                self.wide.remove(&iid);
            }
            return;
        };
        let Value::Object(top) = payload else {
            return;
        };
        let mut path = String::new();
        for (key, value) in top {
            path.clear();
            path.push_str(key);
            self.visit(&mut path, key.chars().count(), value, id, add);
        }
    }

    /// Indexes (or un-indexes) `value`, found at `path` (`chars` characters long).
    fn visit(&mut self, path: &mut String, chars: usize, value: &Value, id: u32, add: bool) {
        if chars > MAX_KEY_LEN {
            return; // no valid condition names this path, nor any below it
        }
        match value {
            Value::Object(children) => {
                for (key, child) in children {
                    let len = path.len();
                    path.push('.');
                    path.push_str(key);
                    self.visit(path, chars + 1 + key.chars().count(), child, id, add);
                    path.truncate(len);
                }
            }
            Value::Array(items) => {
                for term in items.iter().filter_map(payload_term) {
                    self.term(path, term, id, add);
                }
            }
            scalar => {
                if let Some(term) = payload_term(scalar) {
                    self.term(path, term, id, add);
                }
            }
        }
    }

    fn term(&mut self, path: &str, term: Term<'_>, id: u32, add: bool) {
        const FIELD_ENTRY: usize = entry_bytes::<Box<str>, Field>();
        if add {
            if !self.fields.contains_key(path) {
                self.fields.insert(path.into(), Field::default());
                self.bytes += FIELD_ENTRY + alloc_bytes(path.len());
            }
            if let Some(field) = self.fields.get_mut(path) {
                field.add(term, id, &mut self.bytes);
            }
        } else if let Some(field) = self.fields.get_mut(path) {
            field.remove(term, id, &mut self.bytes);
            if field.is_empty() {
                self.fields.remove(path);
                self.bytes = self
                    .bytes
                    .saturating_sub(FIELD_ENTRY + alloc_bytes(path.len()));
            }
        }
    }

    /// The filter's candidates as a bitmap (without the wide ids), and whether every condition
    /// was answered (none skipped).
    fn narrow(&self, filter: &Filter) -> Option<(RoaringBitmap, bool)> {
        let empty = |acc: &Option<RoaringBitmap>| acc.as_ref().is_some_and(|a| a.is_empty());
        let mut acc = None;
        let mut answered = true;
        // Match conditions first (a look-up per value, whatever the data); then ranges, whose
        // budget depends on how far the matches narrowed.
        let mut unlimited = u64::MAX; // match conditions spend no budget
        for c in filter.must.iter().filter(|c| !is_range(c)) {
            match self.condition(c, &mut unlimited) {
                Some(set) => {
                    narrow_to(&mut acc, set);
                    if empty(&acc) {
                        return acc.map(|a| (a, true));
                    }
                }
                None => answered = false,
            }
        }
        for c in filter.must.iter().filter(|c| is_range(c)) {
            match self.condition(c, &mut range_budget(acc.as_ref())) {
                Some(set) => {
                    narrow_to(&mut acc, set);
                    if empty(&acc) {
                        return acc.map(|a| (a, true));
                    }
                }
                None => answered = false,
            }
        }
        if !filter.should.is_empty() {
            let mut budget = range_budget(acc.as_ref());
            let union = filter
                .should
                .iter()
                .try_fold(RoaringBitmap::new(), |mut u, c| {
                    u |= self.condition(c, &mut budget)?;
                    Some(u)
                });
            match union {
                Some(union) => narrow_to(&mut acc, union),
                None => answered = false,
            }
        }
        acc.map(|a| (a, answered))
    }

    /// Every id whose payload may satisfy `c`, or `None` when the index cannot tell (or a range
    /// would visit more than `budget` posting lists; the budget is spent as it goes).
    fn condition(&self, c: &Condition, budget: &mut u64) -> Option<RoaringBitmap> {
        if c.key.chars().count() > MAX_KEY_LEN {
            return None; // paths this long are not indexed
        }
        let field = self.fields.get(c.key.as_str());
        let mut out = RoaringBitmap::new();
        if let Some(m) = &c.matches {
            let wanted: &[Value] = match (&m.value, &m.any) {
                (Some(v), _) => std::slice::from_ref(v),
                (None, Some(vs)) => vs,
                (None, None) => &[],
            };
            let long = |v: &Value| matches!(v, Value::String(s) if s.len() > MAX_INDEXED_STRING);
            if wanted.iter().any(long) {
                return None; // such strings are not indexed: no posting would be complete
            }
            if let Some(field) = field {
                for p in wanted.iter().filter_map(|v| field.get(v)) {
                    p.or_into(&mut out);
                }
            }
        } else if let Some(r) = &c.range {
            if let (Some(field), Some(bounds)) = (field, range_bounds(r)) {
                let mut singles = Vec::new();
                for p in field.numbers.range(bounds).map(|(_, p)| p) {
                    *budget = budget.checked_sub(1)?;
                    match p {
                        Posting::One(x) => singles.push(*x),
                        Posting::Many(b) => out |= b,
                    }
                }
                // Sorted and deduplicated, the singles build a bitmap in one append pass (the
                // fallback, inserting one by one, is never taken).
                singles.sort_unstable();
                singles.dedup();
                match RoaringBitmap::from_sorted_iter(singles.iter().copied()) {
                    Ok(b) => out |= b,
                    Err(_) => out.extend(singles),
                }
            }
        }
        Some(out)
    }

    /// The heap estimate recomputed from scratch (tests check the running one against it).
    #[cfg(test)]
    fn recount_bytes(&self) -> usize {
        fn postings<K>(map: &BTreeMap<K, Posting>, key_heap: impl Fn(&K) -> usize) -> usize {
            map.iter()
                .map(|(k, p)| entry_bytes::<K, Posting>() + key_heap(k) + p.heap())
                .sum()
        }
        let fields: usize = self
            .fields
            .iter()
            .map(|(path, f)| {
                entry_bytes::<Box<str>, Field>()
                    + alloc_bytes(path.len())
                    + postings(&f.strings, |s| alloc_bytes(s.len()))
                    + postings(&f.numbers, |_| 0)
                    + postings(&f.bools, |_| 0)
            })
            .sum();
        fields + (self.wide.len() + self.dotted.len()) * entry_bytes::<u64, ()>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn f(v: Value) -> Filter {
        serde_json::from_value(v).unwrap()
    }

    fn index(points: &[(u64, Value)]) -> PayloadIndex {
        let mut idx = PayloadIndex::new();
        for (iid, p) in points {
            idx.insert(*iid, p);
        }
        idx
    }

    /// The candidates of a filter given as JSON.
    fn cands(idx: &PayloadIndex, filter: Value) -> Option<Vec<u64>> {
        idx.candidates(&f(filter)).map(|(ids, _)| ids)
    }

    fn must(cond: Value) -> Value {
        json!({ "must": [cond] })
    }

    fn eq(key: &str, v: Value) -> Value {
        must(json!({"key": key, "match": {"value": v}}))
    }

    fn range(key: &str, r: Value) -> Value {
        must(json!({"key": key, "range": r}))
    }

    #[test]
    fn match_value_finds_strings_numbers_and_bools() {
        let idx = index(&[
            (0, json!({"s": "a", "n": 1, "b": true})),
            (1, json!({"s": "b", "n": 2, "b": false})),
            (2, json!({"s": "a", "n": 2.5, "b": true})),
        ]);
        assert_eq!(cands(&idx, eq("s", json!("a"))), Some(vec![0, 2]));
        assert_eq!(cands(&idx, eq("s", json!("c"))), Some(vec![]));
        assert_eq!(cands(&idx, eq("n", json!(2))), Some(vec![1]));
        assert_eq!(cands(&idx, eq("n", json!(2.5))), Some(vec![2]));
        assert_eq!(cands(&idx, eq("b", json!(true))), Some(vec![0, 2]));
        assert_eq!(cands(&idx, eq("b", json!(false))), Some(vec![1]));
        // Types never mix: "1" is not 1, true is not 1.
        assert_eq!(cands(&idx, eq("n", json!("1"))), Some(vec![]));
        assert_eq!(cands(&idx, eq("b", json!(1))), Some(vec![]));
        assert_eq!(cands(&idx, eq("missing", json!("a"))), Some(vec![]));
    }

    #[test]
    fn numbers_compare_as_f64() {
        let idx = index(&[
            (0, json!({"n": 1})),
            (1, json!({"n": 1.0})),
            (2, json!({"n": -0.0})),
            (3, json!({"n": 0})),
            (4, json!({"n": u64::MAX})),
            (5, json!({"n": -7})),
        ]);
        assert_eq!(cands(&idx, eq("n", json!(1.0))), Some(vec![0, 1]));
        assert_eq!(cands(&idx, eq("n", json!(1))), Some(vec![0, 1]));
        assert_eq!(cands(&idx, eq("n", json!(0.0))), Some(vec![2, 3]));
        assert_eq!(cands(&idx, eq("n", json!(-0.0))), Some(vec![2, 3]));
        assert_eq!(cands(&idx, eq("n", json!(-7.0))), Some(vec![5]));
        // u64::MAX - 1 is the same f64 as u64::MAX, as Filter::matches sees it.
        assert_eq!(cands(&idx, eq("n", json!(u64::MAX - 1))), Some(vec![4]));
    }

    #[test]
    fn match_any_is_a_union() {
        let idx = index(&[
            (0, json!({"k": "x"})),
            (1, json!({"k": 3})),
            (2, json!({"k": false})),
            (3, json!({"k": "y"})),
        ]);
        let any = |vs: Value| must(json!({"key": "k", "match": {"any": vs}}));
        assert_eq!(
            cands(&idx, any(json!(["x", 3, false]))),
            Some(vec![0, 1, 2])
        );
        assert_eq!(cands(&idx, any(json!(["z"]))), Some(vec![]));
        assert_eq!(cands(&idx, any(json!([]))), Some(vec![]));
    }

    #[test]
    fn range_bounds_are_exclusive_or_inclusive_as_asked() {
        let points: Vec<(u64, Value)> = (0..10).map(|i| (i, json!({"n": i}))).collect();
        let idx = index(&points);
        let r = |r: Value| cands(&idx, range("n", r));
        assert_eq!(r(json!({"gt": 7})), Some(vec![8, 9]));
        assert_eq!(r(json!({"gte": 7})), Some(vec![7, 8, 9]));
        assert_eq!(r(json!({"lt": 2})), Some(vec![0, 1]));
        assert_eq!(r(json!({"lte": 2})), Some(vec![0, 1, 2]));
        assert_eq!(r(json!({"gt": 2.5, "lte": 5})), Some(vec![3, 4, 5]));
        assert_eq!(r(json!({"gte": 3, "lt": 3})), Some(vec![]));
        assert_eq!(r(json!({"gte": 3, "lte": 3})), Some(vec![3]));
        assert_eq!(r(json!({"gt": 6, "lt": 2})), Some(vec![]));
        // All given bounds hold: the tighter of gt and gte wins, exclusive at a tie.
        assert_eq!(r(json!({"gt": 8, "gte": 2})), Some(vec![9]));
        assert_eq!(r(json!({"gt": 8, "gte": 8})), Some(vec![9]));
        assert_eq!(r(json!({"lt": 1, "lte": 1})), Some(vec![0]));
        assert_eq!(
            r(json!({"gte": -1e300, "lt": 1e300})),
            Some((0..10).collect())
        );
        // Negative numbers and -0.0 sort numerically.
        let idx = index(&[
            (0, json!({"n": -2.5})),
            (1, json!({"n": -0.0})),
            (2, json!({"n": 3})),
        ]);
        let r = |r: Value| cands(&idx, range("n", r));
        assert_eq!(r(json!({"lt": 0})), Some(vec![0]));
        assert_eq!(r(json!({"gte": 0})), Some(vec![1, 2]));
        assert_eq!(r(json!({"gte": -0.0, "lte": 0.0})), Some(vec![1]));
        assert_eq!(r(json!({"gt": -3, "lt": -1})), Some(vec![0]));
    }

    #[test]
    fn a_range_admits_only_numbers() {
        let idx = index(&[
            (0, json!({"n": "5"})),
            (1, json!({"n": true})),
            (2, json!({"n": 5})),
        ]);
        assert_eq!(cands(&idx, range("n", json!({"gte": 0}))), Some(vec![2]));
        // A NaN bound (refused by validation) admits nothing, as in Filter::matches.
        let nan = Filter {
            must: vec![Condition {
                key: "n".into(),
                matches: None,
                range: Some(Range {
                    gt: Some(f64::NAN),
                    ..Range::default()
                }),
            }],
            ..Filter::default()
        };
        assert_eq!(idx.candidates(&nan), Some((vec![], true)));
    }

    #[test]
    fn nested_keys_are_dotted_paths() {
        let idx = index(&[
            (0, json!({"meta": {"lang": "en", "geo": {"cc": "de"}}})),
            (1, json!({"meta": {"lang": "fr"}})),
            (2, json!({"meta": "en"})),
        ]);
        assert_eq!(cands(&idx, eq("meta.lang", json!("en"))), Some(vec![0]));
        assert_eq!(cands(&idx, eq("meta.geo.cc", json!("de"))), Some(vec![0]));
        assert_eq!(cands(&idx, eq("meta", json!("en"))), Some(vec![2]));
        assert_eq!(cands(&idx, eq("meta.geo", json!("de"))), Some(vec![]));
    }

    #[test]
    fn arrays_index_their_scalar_elements() {
        let idx = index(&[
            (0, json!({"tags": ["a", "b", 3, true]})),
            (1, json!({"tags": ["b"]})),
            // Filter::matches walks no array: objects and arrays inside one never match.
            (2, json!({"tags": [{"x": "a"}, ["a"]]})),
            (3, json!({"o": {"tags": ["a"]}})),
        ]);
        assert_eq!(cands(&idx, eq("tags", json!("b"))), Some(vec![0, 1]));
        assert_eq!(cands(&idx, eq("tags", json!("a"))), Some(vec![0]));
        assert_eq!(cands(&idx, eq("tags", json!(3))), Some(vec![0]));
        assert_eq!(cands(&idx, eq("tags", json!(true))), Some(vec![0]));
        assert_eq!(cands(&idx, eq("tags.x", json!("a"))), Some(vec![]));
        assert_eq!(cands(&idx, eq("o.tags", json!("a"))), Some(vec![3]));
        assert_eq!(cands(&idx, range("tags", json!({"gt": 2}))), Some(vec![0]));
    }

    #[test]
    fn literal_dotted_keys_and_nested_paths_share_a_path() {
        let points = [
            (0, json!({"a.b": "lit"})),
            (1, json!({"a": {"b": "nest"}})),
            // Both spellings: Filter::matches sees the literal key only.
            (2, json!({"a.b": "lit", "a": {"b": "nest"}})),
        ];
        let idx = index(&points);
        let lit = cands(&idx, eq("a.b", json!("lit"))).unwrap();
        assert_eq!(lit, vec![0, 2]);
        let nest = cands(&idx, eq("a.b", json!("nest"))).unwrap();
        assert_eq!(nest, vec![1, 2]); // a superset: 2 does not match
        let filter = f(eq("a.b", json!("nest")));
        let exact: Vec<u64> = points
            .iter()
            .filter(|(_, p)| filter.matches(Some(p)))
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(exact, vec![1]);
    }

    #[test]
    fn long_strings_are_not_indexed_and_their_queries_are_not_narrowed() {
        let at_limit = "s".repeat(MAX_INDEXED_STRING);
        let over = "s".repeat(MAX_INDEXED_STRING + 1);
        let idx = index(&[
            (0, json!({"s": at_limit, "k": 1})),
            (1, json!({"s": over, "k": 1})),
        ]);
        assert_eq!(cands(&idx, eq("s", json!(at_limit))), Some(vec![0]));
        assert_eq!(cands(&idx, eq("s", json!(over))), None);
        let any = must(json!({"key": "s", "match": {"any": ["x", over]}}));
        assert_eq!(cands(&idx, any), None);
        // Another must condition still narrows; the long one is skipped (superset).
        let both = json!({"must": [{"key": "s", "match": {"value": over}},
                                   {"key": "k", "match": {"value": 1}}]});
        assert_eq!(cands(&idx, both), Some(vec![0, 1]));
        // Even on a path the index has never seen.
        assert_eq!(cands(&idx, eq("unseen", json!(over))), None);
    }

    #[test]
    fn paths_longer_than_a_key_are_not_indexed() {
        let long_key = "k".repeat(MAX_KEY_LEN);
        let idx = index(&[(
            0,
            json!({ long_key.clone(): 1, "o": { long_key.clone(): 2 } }),
        )]);
        assert_eq!(cands(&idx, eq(&long_key, json!(1))), Some(vec![0]));
        assert_eq!(cands(&idx, eq(&format!("o.{long_key}"), json!(2))), None);
        assert_eq!(idx.fields.len(), 1);
    }

    #[test]
    fn must_intersects_should_unites_must_not_is_ignored() {
        let idx = index(&[
            (0, json!({"c": "red", "n": 1})),
            (1, json!({"c": "red", "n": 2})),
            (2, json!({"c": "blue", "n": 2})),
            (3, json!({"c": "green", "n": 3})),
        ]);
        let red = json!({"key": "c", "match": {"value": "red"}});
        let blue = json!({"key": "c", "match": {"value": "blue"}});
        let two = json!({"key": "n", "match": {"value": 2}});
        let long = json!({"key": "c", "match": {"value": "x".repeat(100)}});
        let c = |v: Value| cands(&idx, v);
        assert_eq!(c(json!({"must": [red, two]})), Some(vec![1]));
        assert_eq!(c(json!({"should": [red, blue]})), Some(vec![0, 1, 2]));
        assert_eq!(c(json!({"must": [two], "should": [red]})), Some(vec![1]));
        assert_eq!(c(json!({"must_not": [red]})), None);
        assert_eq!(
            c(json!({"must": [two], "must_not": [red]})),
            Some(vec![1, 2])
        );
        // A should condition the index cannot answer: should does not narrow.
        assert_eq!(c(json!({"should": [red, long]})), None);
        assert_eq!(
            c(json!({"must": [two], "should": [red, long]})),
            Some(vec![1, 2])
        );
        assert_eq!(c(json!({})), None);
    }

    #[test]
    fn a_wide_range_after_a_narrow_match_is_skipped_not_scanned() {
        let points: Vec<(u64, Value)> = (0..10_000)
            .map(|i| (i, json!({"tag": format!("t{}", i % 100), "n": i})))
            .collect();
        let idx = index(&points);
        let tag = json!({"key": "tag", "match": {"value": "t7"}});
        let wide = json!({"key": "n", "range": {"gte": 5_000}});
        let narrow = json!({"key": "n", "range": {"gte": 5_000, "lt": 5_500}});
        let got = cands(&idx, json!({"must": [tag, wide]})).unwrap();
        assert_eq!(got.len(), 100, "the range over 5,000 values is skipped");
        let got = cands(&idx, json!({"must": [tag, narrow]})).unwrap();
        assert_eq!(got, (5_007..5_500).step_by(100).collect::<Vec<u64>>());
        // Alone, a wide range is scanned whole.
        assert_eq!(cands(&idx, must(wide)).unwrap().len(), 5_000);
    }

    #[test]
    fn remove_takes_back_what_insert_added() {
        let a = json!({"s": "x", "n": 1, "tags": ["x", "x", 2], "o": {"b": true}, "o.b": true});
        let b = json!({"s": "x", "n": 1});
        let mut idx = PayloadIndex::new();
        idx.insert(1, &a);
        idx.insert(2, &b);
        assert_eq!(cands(&idx, eq("s", json!("x"))), Some(vec![1, 2]));
        idx.remove(1, &a);
        assert_eq!(cands(&idx, eq("s", json!("x"))), Some(vec![2]));
        assert_eq!(cands(&idx, eq("tags", json!(2))), Some(vec![]));
        assert_eq!(cands(&idx, eq("o.b", json!(true))), Some(vec![]));
        assert_eq!(idx.heap_bytes(), idx.recount_bytes());
        // Removing again, or what was never there, changes nothing.
        idx.remove(1, &a);
        idx.remove(7, &b);
        assert_eq!(cands(&idx, eq("n", json!(1))), Some(vec![2]));
        idx.remove(2, &b);
        assert!(idx.fields.is_empty());
        assert_eq!(idx.heap_bytes(), 0);
    }

    #[test]
    fn ids_beyond_u32_are_candidates_of_every_query() {
        let big = u64::from(u32::MAX) + 5;
        let mut idx = index(&[(3, json!({"k": 1})), (u64::from(u32::MAX), json!({"k": 1}))]);
        idx.insert(big, &json!({"k": 2}));
        assert_eq!(
            cands(&idx, eq("k", json!(1))),
            Some(vec![3, u64::from(u32::MAX), big])
        );
        assert_eq!(cands(&idx, eq("k", json!(9))), Some(vec![big]));
        assert!(idx.heap_bytes() > 0);
        idx.remove(big, &json!({"k": 2}));
        assert_eq!(cands(&idx, eq("k", json!(9))), Some(vec![]));
    }

    #[test]
    fn non_object_payloads_index_nothing() {
        let idx = index(&[(0, json!(null)), (1, json!([1, 2])), (2, json!("s"))]);
        assert!(idx.fields.is_empty());
        assert_eq!(cands(&idx, eq("k", json!(1))), Some(vec![]));
    }

    #[test]
    fn heap_bytes_grows_with_the_index() {
        let mut idx = PayloadIndex::new();
        assert_eq!(idx.heap_bytes(), 0);
        for i in 0..5_000 {
            idx.insert(i, &json!({"tag": format!("t{}", i % 10), "n": i}));
        }
        let bytes = idx.heap_bytes();
        assert_eq!(bytes, idx.recount_bytes());
        // 5,000 unique numbers cost an entry each; 10 tags cost a bitmap of 500 each.
        assert!(bytes > 5_000 * 32 && bytes < 5_000 * 200, "{bytes}");
    }

    // The brute-force model: Filter::matches over every live payload.

    const KEYS: &[&str] = &["a", "b", "c"];
    const DOTTED_KEYS: &[&str] = &["a", "b", "a.b", "b.c", ""];
    const QUERY_KEYS: &[&str] = &["a", "b", "c", "a.b", "a.c", "b.a", "b.c", "a.b.c", "d", ""];
    const NUMBERS: &[f64] = &[-2.0, -0.0, 0.0, 1.0, 2.5, 3.0];

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            3 => prop::sample::select(vec!["x", "y", "z", ""]).prop_map(|s| json!(s)),
            1 => Just(json!("l".repeat(MAX_INDEXED_STRING + 1))),
            1 => Just(json!("m".repeat(MAX_INDEXED_STRING))),
            3 => prop::sample::select(NUMBERS).prop_map(|x| json!(x)),
            2 => prop::sample::select(vec![-2i64, 0, 1, 3]).prop_map(|x| json!(x)),
            2 => any::<bool>().prop_map(Value::Bool),
            1 => Just(Value::Null),
        ]
    }

    fn object(
        keys: &'static [&'static str],
        inner: impl Strategy<Value = Value>,
    ) -> impl Strategy<Value = Value> {
        prop::collection::btree_map(prop::sample::select(keys), inner, 0..4)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
    }

    /// A payload object with keys from `keys`: scalars, arrays and nested objects.
    fn payload(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
        let value = scalar().prop_recursive(2, 12, 3, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                object(keys, inner),
            ]
        });
        prop_oneof![20 => object(keys, value), 1 => Just(Value::Null)]
    }

    fn condition() -> impl Strategy<Value = Condition> {
        let bound = || prop::option::of(prop::sample::select(NUMBERS));
        let range = (bound(), bound(), bound(), bound()).prop_map(|(gt, gte, lt, lte)| Range {
            gt,
            gte,
            lt,
            lte,
        });
        let value = prop::option::weighted(0.9, scalar());
        let any = prop::option::weighted(0.9, prop::collection::vec(scalar(), 0..4));
        let matches = (value, any).prop_map(|(value, any)| crate::filter::Match { value, any });
        (
            prop::sample::select(QUERY_KEYS),
            prop::option::weighted(0.6, matches),
            prop::option::weighted(0.6, range),
        )
            .prop_map(|(key, matches, range)| Condition {
                key: key.to_string(),
                matches,
                range,
            })
    }

    fn filter() -> impl Strategy<Value = Filter> {
        let conds = |n| prop::collection::vec(condition(), 0..n);
        (conds(4), conds(4), conds(3)).prop_map(|(must, should, must_not)| Filter {
            must,
            should,
            must_not,
        })
    }

    /// Whether a filter names a string the index does not hold.
    fn names_long_strings(f: &Filter) -> bool {
        let long = |v: &Value| matches!(v, Value::String(s) if s.len() > MAX_INDEXED_STRING);
        f.must.iter().chain(&f.should).any(|c| {
            c.matches
                .as_ref()
                .is_some_and(|m| m.value.iter().any(long) || m.any.iter().flatten().any(long))
        })
    }

    /// Inserts every payload, removes those marked, then checks every filter against the model.
    /// `exact`: payloads have no dotted keys, so an answer without `must_not` or long strings is
    /// the exact match set.
    fn check_against_model(
        points: &[(Value, bool)],
        filters: &[Filter],
        exact: bool,
    ) -> Result<(), TestCaseError> {
        let mut idx = PayloadIndex::new();
        for (iid, (p, _)) in points.iter().enumerate() {
            idx.insert(iid as u64, p);
        }
        for (iid, (p, removed)) in points.iter().enumerate() {
            if *removed {
                idx.remove(iid as u64, p);
            }
        }
        prop_assert_eq!(idx.heap_bytes(), idx.recount_bytes());
        for filter in filters {
            let want: Vec<u64> = points
                .iter()
                .enumerate()
                .filter(|(_, (p, removed))| !removed && filter.matches(Some(p)))
                .map(|(iid, _)| iid as u64)
                .collect();
            let Some((got, flagged)) = idx.candidates(filter) else {
                continue;
            };
            if flagged {
                prop_assert_eq!(&got, &want, "flagged exact: {:?}", filter);
            }
            prop_assert!(got.windows(2).all(|w| w[0] < w[1]), "not sorted: {:?}", got);
            for iid in &want {
                prop_assert!(
                    got.binary_search(iid).is_ok(),
                    "{} matches {:?} but is no candidate: {:?}",
                    iid,
                    filter,
                    points[*iid as usize].0
                );
            }
            for iid in &got {
                prop_assert!(!points[*iid as usize].1, "removed {} is a candidate", iid);
            }
            if exact && filter.must_not.is_empty() && !names_long_strings(filter) {
                prop_assert_eq!(&got, &want, "{:?}", filter);
                prop_assert!(flagged, "exact but not flagged: {:?}", filter);
            }
        }
        for (iid, (p, removed)) in points.iter().enumerate() {
            if !removed {
                idx.remove(iid as u64, p);
            }
        }
        prop_assert!(idx.fields.is_empty());
        prop_assert_eq!(idx.heap_bytes(), 0);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Payloads with literal dotted keys too: every answer is a superset of the matches.
        #[test]
        fn candidates_are_a_superset_of_the_matches(
            points in prop::collection::vec((payload(DOTTED_KEYS), prop::bool::weighted(0.3)), 0..24),
            filters in prop::collection::vec(filter(), 1..12),
        ) {
            check_against_model(&points, &filters, false)?;
        }

        /// Payloads without dotted keys: answers to filters without `must_not` (and without
        /// unindexed strings) are exactly the matches.
        #[test]
        fn candidates_are_exact_without_dotted_keys_or_must_not(
            points in prop::collection::vec((payload(KEYS), prop::bool::weighted(0.3)), 0..24),
            filters in prop::collection::vec(filter(), 1..12),
        ) {
            check_against_model(&points, &filters, true)?;
        }
    }
}
