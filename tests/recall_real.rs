//! Recall on real data: the 50,000 MiniLM embeddings of ../shared/data/minilm-debian, searched at
//! the server's default ef, against the shipped exact top-100 ground truth.
//!
//! The data set lives beside the repository (CI sees `../shared/` read-only). Set
//! `QUIVER_DATA_DIR_MINILM` to point elsewhere.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use quiver::config::Config;
use quiver::dataset::{read_fvecs, read_ivecs, recall_at};
use quiver::engine::{Engine, SearchParams};
use quiver::index::dot;
use quiver::model::{CollectionConfig, Command, Metric, PointId, PointWrite, Quantization};

fn data_dir() -> PathBuf {
    std::env::var_os("QUIVER_DATA_DIR_MINILM")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/minilm-debian")
        })
}

#[test]
fn minilm_recall_at_10_is_at_least_0_95_at_the_default_ef() {
    recall_at_the_default_ef(Quantization::None);
}

/// Issue 10: an int8 collection walks its graph on codes and rescores the candidates with the
/// full vectors from disk; recall must hold, and scores must be the exact ones.
#[test]
fn minilm_int8_recall_at_10_after_rescoring_is_at_least_0_95() {
    recall_at_the_default_ef(Quantization::Int8);
}

/// An `int8_ram` collection walks int8 codes beside its vectors in memory and rescores the
/// candidates with them: the same recall, exact scores.
#[test]
fn minilm_int8_ram_recall_at_10_after_rescoring_is_at_least_0_95() {
    recall_at_the_default_ef(Quantization::Int8Ram);
}

fn recall_at_the_default_ef(quantization: Quantization) {
    let data = data_dir();
    assert!(
        data.join("base.fvecs").exists(),
        "data set missing at {} (set QUIVER_DATA_DIR_MINILM)",
        data.display()
    );
    let base = read_fvecs(&data.join("base.fvecs"), None).unwrap();
    let queries = read_fvecs(&data.join("queries.fvecs"), None).unwrap();
    let truth = read_ivecs(&data.join("groundtruth.ivecs"), None).unwrap();
    assert_eq!((base.len(), queries.len()), (50_000, 1_000));

    let dir = tempfile::tempdir().unwrap();
    let config = Config::for_test(dir.path());
    let engine = Engine::open(config.engine_options()).unwrap();
    let cc = CollectionConfig {
        quantization,
        ..CollectionConfig::new(base[0].len(), Metric::Cosine)
    };
    engine
        .apply(&[(
            1,
            Command::CreateCollection {
                name: "minilm".into(),
                config: cc,
            },
        )])
        .unwrap();
    let started = Instant::now();
    let mut index = 1;
    for (c, chunk) in base.chunks(5_000).enumerate() {
        let points = chunk
            .iter()
            .enumerate()
            .map(|(i, v)| PointWrite {
                id: PointId::Num((c * 5_000 + i) as u64),
                vector: v.clone(),
                payload: None,
            })
            .collect();
        index += 1;
        engine
            .apply(&[(
                index,
                Command::Upsert {
                    collection: "minilm".into(),
                    points,
                },
            )])
            .unwrap();
    }
    assert!(
        engine.wait_indexed(Duration::from_secs(900)),
        "indexing did not finish"
    );
    eprintln!("indexed 50k in {:.1} s", started.elapsed().as_secs_f64());

    let mut total = 0.0;
    for (q, t) in queries.iter().zip(&truth) {
        let p = SearchParams::nearest(q.clone(), 10, config.default_ef);
        let hits = engine.search("minilm", &p).unwrap();
        for h in &hits {
            let PointId::Num(i) = h.id else { continue };
            let want = dot(q, &base[i as usize]);
            assert!((h.score - want).abs() < 1e-5, "{} vs exact {want}", h.score);
        }
        let ids: Vec<u64> = hits
            .iter()
            .map(|h| match h.id {
                PointId::Num(n) => n,
                PointId::Str(_) => u64::MAX,
            })
            .collect();
        total += recall_at(&ids, t, 10);
    }
    let recall = total / queries.len() as f64;
    eprintln!(
        "{quantization:?}: recall@10 at ef={}: {recall:.4}",
        config.default_ef
    );
    assert!(
        recall >= 0.95,
        "{quantization:?}: recall@10 {recall} < 0.95"
    );
}
