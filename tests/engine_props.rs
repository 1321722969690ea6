//! Property tests of the engine against a brute-force model:
//! - random create / upsert / delete / drop / search sequences: every reply and every exact
//!   search equals the model's (one of the two collections is quantised);
//! - two engines fed the same commands return identical (HNSW) results;
//! - HNSW recall@10 ≥ 0.9 on random data, with and without int8 codes (`int8`, `int8_ram`);
//! - a reopened engine holds the same data;
//! - the query cache: under any interleaving of writes, deletes, rebuilds and searches, on a
//!   leader and on a replica fed the same log, a cached answer equals the one computed at the
//!   same state.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use quiver::engine::{Engine, EngineOptions, SearchParams};
use quiver::index::{dot, l2_squared, normalize};
use quiver::model::{
    CollectionConfig, Command, DeleteSelector, HnswConfig, Metric, PointId, PointWrite,
    Quantization, Reply,
};
use quiver_client::filter::Filter;

const DIM: usize = 4;
const NAMES: [&str; 3] = ["a", "b", "c"];
/// How each collection stores its vectors: "b" is quantised and "c" walks codes beside its
/// vectors, so that every property holds for int8 codes with their full vectors on disk or in
/// memory as well.
const QUANTIZED: [Quantization; 3] = [
    Quantization::None,
    Quantization::Int8,
    Quantization::Int8Ram,
];

#[derive(Clone, Debug)]
enum Op {
    Create(usize, Metric),
    Drop(usize),
    Upsert(usize, Vec<(u64, Vec<f32>, u8)>),
    DeleteIds(usize, Vec<u64>),
    DeleteTag(usize, u8),
    Search(usize, Vec<f32>, usize, Option<u8>),
    /// Rebuild the graph without its tombstones now (`Command::Compact`).
    Compact(usize),
    /// Let the indexers catch up (the graph, its frozen copy and any rebuild settle).
    Wait,
}

fn metric() -> impl Strategy<Value = Metric> {
    prop_oneof![Just(Metric::Cosine), Just(Metric::L2), Just(Metric::Dot)]
}

fn vector() -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(-1.0f32..1.0, DIM)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0..3usize, metric()).prop_map(|(c, m)| Op::Create(c, m)),
        1 => (0..3usize).prop_map(Op::Drop),
        6 => (0..3usize, prop::collection::vec((0..40u64, vector(), 0..3u8), 1..30)).prop_map(|(c, p)| Op::Upsert(c, p)),
        2 => (0..3usize, prop::collection::vec(0..40u64, 1..8)).prop_map(|(c, i)| Op::DeleteIds(c, i)),
        1 => (0..3usize, 0..3u8).prop_map(|(c, t)| Op::DeleteTag(c, t)),
        4 => (0..3usize, vector(), 1..12usize, prop::option::of(0..3u8)).prop_map(|(c, q, k, f)| Op::Search(c, q, k, f)),
        1 => (0..3usize).prop_map(Op::Compact),
    ]
}

fn opts(dir: &std::path::Path) -> EngineOptions {
    let mut o = EngineOptions::new(dir);
    o.cache_bytes = 8 << 20;
    o.exact_below = 0;
    o.rebuild_min_points = 16;
    o
}

fn tag_filter(t: u8) -> Filter {
    serde_json::from_value(serde_json::json!({"must": [{"key": "tag", "match": {"value": t}}]}))
        .unwrap()
}

/// The model: per collection, its metric and id → (stored vector, tag).
type Model = BTreeMap<String, (Metric, BTreeMap<u64, (Vec<f32>, u8)>)>;

fn model_score(m: Metric, q: &[f32], v: &[f32]) -> f32 {
    match m {
        Metric::Cosine | Metric::Dot => dot(q, v),
        Metric::L2 => l2_squared(q, v).sqrt(),
    }
}

/// Turns an op into a command (as the API would: cosine vectors normalised, zero vectors dropped).
fn command(op: &Op, model: &Model) -> Option<Command> {
    Some(match op {
        Op::Create(c, m) => Command::CreateCollection {
            name: NAMES[*c].into(),
            config: CollectionConfig {
                dim: DIM,
                metric: *m,
                hnsw: HnswConfig {
                    m: 8,
                    ef_construction: 32,
                },
                quantization: QUANTIZED[*c],
            },
        },
        Op::Drop(c) => Command::DeleteCollection {
            name: NAMES[*c].into(),
        },
        Op::Upsert(c, pts) => {
            let metric = model.get(NAMES[*c]).map(|x| x.0).unwrap_or(Metric::L2);
            let points = pts
                .iter()
                .filter_map(|(id, v, tag)| {
                    let mut v = v.clone();
                    if metric == Metric::Cosine && !normalize(&mut v) {
                        return None;
                    }
                    Some(PointWrite {
                        id: PointId::Num(*id),
                        vector: v,
                        payload: Some(format!("{{\"tag\":{tag}}}")),
                    })
                })
                .collect::<Vec<_>>();
            if points.is_empty() {
                return None;
            }
            Command::Upsert {
                collection: NAMES[*c].into(),
                points,
            }
        }
        Op::DeleteIds(c, ids) => Command::Delete {
            collection: NAMES[*c].into(),
            selector: DeleteSelector::Ids(ids.iter().map(|i| PointId::Num(*i)).collect()),
        },
        Op::DeleteTag(c, t) => Command::Delete {
            collection: NAMES[*c].into(),
            selector: DeleteSelector::Filter(serde_json::to_string(&tag_filter(*t)).unwrap()),
        },
        Op::Compact(c) => Command::Compact {
            collection: NAMES[*c].into(),
        },
        Op::Search(..) | Op::Wait => return None,
    })
}

/// Applies a command to the model; returns the reply the engine must give. The model keeps no
/// tombstones, so a compaction's reply counts none: the caller checks that count otherwise.
fn model_apply(model: &mut Model, cmd: &Command) -> Reply {
    match cmd {
        Command::CreateCollection { name, config } => match model.get(name) {
            Some((m, _)) if *m == config.metric => Reply::Created { created: false },
            Some(_) => Reply::Rejected(quiver::model::ApplyError::CollectionConflict(name.clone())),
            None => {
                model.insert(name.clone(), (config.metric, BTreeMap::new()));
                Reply::Created { created: true }
            }
        },
        Command::DeleteCollection { name } => Reply::Dropped {
            existed: model.remove(name).is_some(),
        },
        Command::Upsert { collection, points } => match model.get_mut(collection) {
            None => Reply::Rejected(quiver::model::ApplyError::CollectionNotFound(
                collection.clone(),
            )),
            Some((_, pts)) => {
                for p in points {
                    let PointId::Num(id) = p.id else {
                        unreachable!()
                    };
                    let tag: serde_json::Value =
                        serde_json::from_str(p.payload.as_deref().unwrap()).unwrap();
                    pts.insert(id, (p.vector.clone(), tag["tag"].as_u64().unwrap() as u8));
                }
                Reply::Upserted {
                    count: points.len(),
                }
            }
        },
        Command::Delete {
            collection,
            selector,
        } => match model.get_mut(collection) {
            None => Reply::Rejected(quiver::model::ApplyError::CollectionNotFound(
                collection.clone(),
            )),
            Some((_, pts)) => {
                let before = pts.len();
                match selector {
                    DeleteSelector::Ids(ids) => {
                        for id in ids {
                            let PointId::Num(id) = id else { unreachable!() };
                            pts.remove(id);
                        }
                    }
                    DeleteSelector::Filter(text) => {
                        let f: Filter = serde_json::from_str(text).unwrap();
                        let t = f.must[0]
                            .matches
                            .as_ref()
                            .unwrap()
                            .value
                            .as_ref()
                            .unwrap()
                            .as_u64()
                            .unwrap() as u8;
                        pts.retain(|_, (_, tag)| *tag != t);
                    }
                }
                Reply::Deleted {
                    count: before - pts.len(),
                }
            }
        },
        Command::Compact { collection } => match model.get(collection) {
            None => Reply::Rejected(quiver::model::ApplyError::CollectionNotFound(
                collection.clone(),
            )),
            Some(_) => Reply::Compacted { tombstones: 0 },
        },
        Command::Batch(_) | Command::Noop => unreachable!(),
    }
}

fn params(
    q: &[f32],
    k: usize,
    tag: Option<u8>,
    metric: Metric,
    exact: bool,
) -> Option<SearchParams> {
    let mut v = q.to_vec();
    if metric == Metric::Cosine && !normalize(&mut v) {
        return None;
    }
    Some(SearchParams {
        vector: v,
        k,
        ef: 32,
        filter: tag.map(tag_filter),
        score_threshold: None,
        with_payload: true,
        with_vector: false,
        exact,
        sized_ef: false,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_brute_force_model_and_is_deterministic(ops in prop::collection::vec(op(), 1..60)) {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let e1 = Engine::open(opts(d1.path())).unwrap();
        let e2 = Engine::open(opts(d2.path())).unwrap();
        let mut model = Model::new();
        let mut index = 0;
        let mut approx_queries = Vec::new();
        for op in &ops {
            if let Op::Search(c, q, k, tag) = op {
                let name = NAMES[*c];
                let Some((metric, pts)) = model.get(name) else {
                    prop_assert!(e1.get(name).is_err());
                    continue;
                };
                let Some(p) = params(q, *k, *tag, *metric, true) else { continue };
                let hits = e1.search(name, &p).unwrap();
                let mut want: Vec<(f32, u64)> = pts
                    .iter()
                    .filter(|(_, (_, t))| tag.is_none_or(|x| x == *t))
                    .map(|(id, (v, _))| (model_score(*metric, &p.vector, v), *id))
                    .collect();
                want.sort_by(|a, b| if metric.higher_is_better() { b.0.total_cmp(&a.0) } else { a.0.total_cmp(&b.0) });
                want.truncate(*k);
                prop_assert_eq!(hits.len(), want.len());
                for (h, w) in hits.iter().zip(&want) {
                    prop_assert!((h.score - w.0).abs() < 1e-4, "score {} vs {}", h.score, w.0);
                    let PointId::Num(id) = h.id else { unreachable!() };
                    let (v, _) = &pts[&id];
                    prop_assert!((model_score(*metric, &p.vector, v) - h.score).abs() < 1e-4);
                }
                approx_queries.push((name, params(q, *k, *tag, *metric, false).unwrap()));
                continue;
            }
            let Some(cmd) = command(op, &model) else { continue };
            index += 1;
            let want = model_apply(&mut model, &cmd);
            let got1 = e1.apply(&[(index, cmd.clone())]).unwrap();
            let got2 = e2.apply(&[(index, cmd.clone())]).unwrap();
            match (&cmd, &want) {
                // A compaction drops what tombstones there are (both engines the same) and
                // leaves none.
                (Command::Compact { collection }, Reply::Compacted { .. }) => {
                    prop_assert!(matches!(got1[0], Reply::Compacted { .. }), "{:?}", got1[0]);
                    prop_assert_eq!(&got1[0], &got2[0]);
                    prop_assert_eq!(e1.info(collection).unwrap().tombstones, 0);
                }
                _ => {
                    prop_assert_eq!(&got1[0], &want);
                    prop_assert_eq!(&got2[0], &want);
                }
            }
        }
        // Point counts agree with the model.
        for (name, (_, pts)) in &model {
            prop_assert_eq!(e1.info(name).unwrap().points, pts.len());
        }
        // Once both indexers are idle, approximate searches agree exactly between the engines.
        prop_assert!(e1.wait_indexed(Duration::from_secs(30)));
        prop_assert!(e2.wait_indexed(Duration::from_secs(30)));
        for (name, p) in &approx_queries {
            if model.contains_key(*name) {
                prop_assert_eq!(e1.search(name, p).unwrap(), e2.search(name, p).unwrap());
            }
        }
        // A reopened engine holds the same data and gives the same exact answers.
        let before: Vec<_> = approx_queries.iter().filter(|(n, _)| model.contains_key(*n))
            .map(|(n, p)| { let mut p = p.clone(); p.exact = true; e1.search(n, &p).unwrap() }).collect();
        e1.close().unwrap();
        drop(e1);
        let e1 = match Engine::open(opts(d1.path())) {
            Ok(e) => e,
            Err(e) => panic!("reopen failed: {e:?}"),
        };
        prop_assert_eq!(e1.last_applied(), index);
        let after: Vec<_> = approx_queries.iter().filter(|(n, _)| model.contains_key(*n))
            .map(|(n, p)| { let mut p = p.clone(); p.exact = true; e1.search(n, &p).unwrap() }).collect();
        prop_assert_eq!(before, after);
    }
}

fn random_vectors(seed: u64, n: usize, dim: usize) -> Vec<Vec<f32>> {
    // xorshift: deterministic, no extra dependency.
    let mut s = seed.max(1);
    (0..n)
        .map(|_| {
            (0..dim)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    (s % 20_000) as f32 / 10_000.0 - 1.0
                })
                .collect()
        })
        .collect()
}

fn recall_at_10_is_at_least_0_9(
    seed: u64,
    metric: Metric,
    quantization: Quantization,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(opts(dir.path())).unwrap();
    let (n, dim) = (2_000, 16);
    let config = CollectionConfig {
        quantization,
        ..CollectionConfig::new(dim, metric)
    };
    e.apply(&[(
        1,
        Command::CreateCollection {
            name: "r".into(),
            config,
        },
    )])
    .unwrap();
    let mut data = random_vectors(seed, n + 50, dim);
    if metric == Metric::Cosine {
        data.iter_mut().for_each(|v| {
            normalize(v);
        });
    }
    let points = data[..n]
        .iter()
        .enumerate()
        .map(|(i, v)| PointWrite {
            id: PointId::Num(i as u64),
            vector: v.clone(),
            payload: None,
        })
        .collect();
    e.apply(&[(
        2,
        Command::Upsert {
            collection: "r".into(),
            points,
        },
    )])
    .unwrap();
    prop_assert!(e.wait_indexed(Duration::from_secs(60)));
    let mut total = 0.0;
    for q in &data[n..] {
        let approx = e
            .search("r", &params(q, 10, None, metric, false).unwrap())
            .unwrap();
        let exact = e
            .search("r", &params(q, 10, None, metric, true).unwrap())
            .unwrap();
        let want: std::collections::HashSet<_> = exact.iter().map(|h| h.id.clone()).collect();
        total += approx.iter().filter(|h| want.contains(&h.id)).count() as f64 / 10.0;
    }
    let recall = total / 50.0;
    prop_assert!(
        recall >= 0.9,
        "recall@10 {recall} for {metric:?}, {quantization:?}"
    );
    // Scores are exact whatever the graph walks: the same ids score the same either way.
    if quantization.walks_codes() {
        let q = &data[n];
        let mut p = params(q, 10, None, metric, false).unwrap();
        p.with_vector = true;
        for h in e.search("r", &p).unwrap() {
            let PointId::Num(i) = h.id else {
                unreachable!()
            };
            prop_assert_eq!(h.vector.as_deref(), Some(&data[i as usize][..]));
            prop_assert_eq!(h.score, model_score(metric, &p.vector, &data[i as usize]));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4, ..ProptestConfig::default() })]

    #[test]
    fn hnsw_recall_at_10_is_at_least_0_9(seed in 1u64..u64::MAX, metric in metric()) {
        for quantization in QUANTIZED {
            recall_at_10_is_at_least_0_9(seed, metric, quantization)?;
        }
    }
}

/// A search through `e`'s query cache, checked against the same search computed afresh: equal
/// whenever both ran under the same [`quiver::engine::ViewTag`] (the indexer may move it between
/// the two), and a repeat under an unchanged tag is a cache hit. Returns whether it compared.
fn check_cached(e: &Engine, name: &str, p: &SearchParams) -> Result<bool, TestCaseError> {
    let Ok(c) = e.get(name) else { return Ok(false) };
    let cache = e.query_cache();
    let before = c.view_tag();
    let cached = cache.search(&c, p, true);
    let (fresh, tag) = c.search_tagged(p);
    if tag != Some(before) || c.view_tag() != before {
        return Ok(false);
    }
    prop_assert_eq!(&cached, &fresh);
    let hits = cache.stats().hits;
    let again = cache.search(&c, p, true);
    if c.view_tag() == before {
        prop_assert_eq!(&again, &fresh);
        prop_assert_eq!(cache.stats().hits, hits + 1);
    }
    // Opting out computes the same answer and leaves the counters alone.
    let stats = cache.stats();
    prop_assert_eq!(&cache.search(&c, p, false), &fresh);
    prop_assert_eq!(
        cache.stats().hits + cache.stats().misses,
        stats.hits + stats.misses
    );
    Ok(true)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn cached_answers_equal_computed_ones_on_leader_and_replica(
        ops in prop::collection::vec(prop_oneof![12 => op(), 1 => Just(Op::Wait)], 1..80)
    ) {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let leader = Engine::open(opts(d1.path())).unwrap();
        // The replica's cache holds a few answers only, so that eviction runs too.
        let replica = Engine::open(EngineOptions { query_cache_bytes: 4 << 10, ..opts(d2.path()) }).unwrap();
        let mut model = Model::new();
        let (mut index, mut compared) = (0, 0);
        let mut queries = Vec::new();
        for op in &ops {
            match op {
                Op::Search(c, q, k, tag) => {
                    let name = NAMES[*c];
                    let Some((metric, _)) = model.get(name) else { continue };
                    for exact in [false, true] {
                        let Some(p) = params(q, *k, *tag, *metric, exact) else { continue };
                        for e in [&leader, &replica] {
                            compared += usize::from(check_cached(e, name, &p)?);
                        }
                        queries.push((name, p));
                    }
                }
                Op::Wait => {
                    prop_assert!(leader.wait_indexed(Duration::from_secs(30)));
                    prop_assert!(replica.wait_indexed(Duration::from_secs(30)));
                }
                _ => {
                    let Some(cmd) = command(op, &model) else { continue };
                    index += 1;
                    model_apply(&mut model, &cmd);
                    leader.apply(&[(index, cmd.clone())]).unwrap();
                    replica.apply(&[(index, cmd)]).unwrap();
                }
            }
        }
        // Settled, at the same index: the leader's cached answers are the replica's, cached or
        // computed.
        prop_assert!(leader.wait_indexed(Duration::from_secs(30)));
        prop_assert!(replica.wait_indexed(Duration::from_secs(30)));
        for (name, p) in &queries {
            let (Ok(a), Ok(b)) = (leader.get(name), replica.get(name)) else { continue };
            let cached = leader.query_cache().search(&a, p, true);
            prop_assert_eq!(&cached, &leader.query_cache().search(&a, p, true));
            prop_assert_eq!(&cached, &replica.query_cache().search(&b, p, true));
            prop_assert_eq!(&cached, &b.search(p));
            compared += 1;
        }
        prop_assert!(queries.is_empty() || compared > 0);
    }
}

/// Issue 11: a write to one collection leaves the cached answers of another servable (it moves
/// only its own collection's tag), while the written collection's next search is a stale miss.
#[test]
fn a_write_to_one_collection_keeps_another_collections_answers_cached() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(opts(dir.path())).unwrap();
    let mut model = Model::new();
    let mut index = 0;
    let mut apply = |op: Op, model: &mut Model| {
        let cmd = command(&op, model).unwrap();
        index += 1;
        model_apply(model, &cmd);
        e.apply(&[(index, cmd)]).unwrap();
    };
    let points: Vec<(u64, Vec<f32>, u8)> = (0..20u64)
        .map(|i| (i, vec![i as f32 / 20.0, 1.0, 0.5, -0.5], (i % 3) as u8))
        .collect();
    for c in 0..2 {
        apply(Op::Create(c, Metric::L2), &mut model);
        apply(Op::Upsert(c, points.clone()), &mut model);
    }
    assert!(e.wait_indexed(Duration::from_secs(30)));
    let p = params(&[0.3, 1.0, 0.5, -0.5], 5, None, Metric::L2, false).unwrap();
    let (a, b) = (e.get("a").unwrap(), e.get("b").unwrap());
    let cache = e.query_cache();
    let first = [cache.search(&a, &p, true), cache.search(&b, &p, true)];
    let before = cache.stats();
    apply(
        Op::Upsert(0, vec![(99, vec![0.3, 1.0, 0.5, -0.5], 0)]),
        &mut model,
    );
    assert_eq!(cache.search(&b, &p, true), first[1]);
    assert_eq!(
        cache.stats().hits,
        before.hits + 1,
        "b's answer is still a hit"
    );
    let now = cache.search(&a, &p, true);
    assert_eq!(cache.stats().stale, before.stale + 1, "a's answer is stale");
    assert_ne!(now, first[0]);
    assert_eq!(now, a.search(&p));
}
