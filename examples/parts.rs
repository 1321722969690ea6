//! How search cost grows with the number of graph parts (issue 10's segment design): the same
//! points as one collection, or split by id into P collections searched one after another with
//! their top k merged. Prints recall@10 and time per query for each P; asserts nothing.
//!
//! ```text
//! cargo run --release --example parts -- --points 100000 --parts 1,2,4,8
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use quiver::dataset::{derived_rows, read_fvecs, recall_at, DERIVED_SIGMA, POINT_SEED, QUERY_SEED};
use quiver::engine::{Engine, EngineOptions, SearchParams};
use quiver::model::{CollectionConfig, Command, Metric, PointId, PointWrite};

#[derive(Parser)]
struct Args {
    /// Data set folder with base.fvecs and queries.fvecs.
    #[arg(long, default_value = "../shared/data/minilm-debian")]
    data: PathBuf,
    /// Points in all (derived from the base set as `quiver derive` does).
    #[arg(long, default_value_t = 100_000)]
    points: u64,
    /// Part counts to compare.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    parts: Vec<u64>,
    /// Search breadth per part.
    #[arg(long, default_value_t = 64)]
    ef: usize,
    /// Queries.
    #[arg(long, default_value_t = 200)]
    queries: usize,
}

const K: usize = 10;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let real = read_fvecs(&args.data.join("base.fvecs"), None)?;
    let real_q = read_fvecs(&args.data.join("queries.fvecs"), Some(args.queries))?;
    let base = derived_rows(&real, 0..args.points, POINT_SEED, DERIVED_SIGMA);
    let queries = derived_rows(&real_q, 0..real_q.len() as u64, QUERY_SEED, DERIVED_SIGMA);
    let truth = quiver::dataset::exact_top_k(&base, &queries, K);
    println!("| parts | points per part | recall@10 | ms per query (all parts, one thread) |");
    println!("|---:|---:|---:|---:|");
    for &p in &args.parts {
        let dir = tempfile::tempdir()?;
        let mut opts = EngineOptions::new(dir.path());
        opts.exact_below = 0;
        let engine = Engine::open(opts)?;
        let config = CollectionConfig::new(base[0].len(), Metric::Cosine);
        let mut index = 0;
        for part in 0..p {
            index += 1;
            let name = format!("p{part}");
            engine.apply(&[(
                index,
                Command::CreateCollection {
                    name: name.clone(),
                    config,
                },
            )])?;
            let ids: Vec<u64> = (0..args.points).filter(|i| i % p == part).collect();
            for chunk in ids.chunks(1_000) {
                index += 1;
                let points = chunk
                    .iter()
                    .map(|&i| PointWrite {
                        id: PointId::Num(i),
                        vector: base[i as usize].clone(),
                        payload: None,
                    })
                    .collect();
                engine.apply(&[(
                    index,
                    Command::Upsert {
                        collection: name.clone(),
                        points,
                    },
                )])?;
            }
        }
        engine.wait_indexed(Duration::from_secs(3600));
        let cols: Vec<_> = (0..p)
            .map(|part| engine.get(&format!("p{part}")))
            .collect::<Result<_, _>>()?;
        for c in &cols {
            while c.search_copy_lag() != Some(0) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let (mut recall, started) = (0.0, Instant::now());
        for (qi, q) in queries.iter().enumerate() {
            let mut hits = Vec::new();
            for c in &cols {
                let params = SearchParams::nearest(q.clone(), K, args.ef);
                hits.extend(c.search(&params));
            }
            hits.sort_by(|a, b| b.score.total_cmp(&a.score));
            let ids: Vec<u64> = hits
                .iter()
                .take(K)
                .filter_map(|h| match h.id {
                    PointId::Num(n) => Some(n),
                    PointId::Str(_) => None,
                })
                .collect();
            recall += recall_at(&ids, &truth[qi], K);
        }
        let ms = started.elapsed().as_secs_f64() * 1e3 / queries.len() as f64;
        println!(
            "| {p} | {} | {:.3} | {ms:.3} |",
            args.points / p,
            recall / queries.len() as f64
        );
        drop(cols);
        engine.close()?;
    }
    Ok(())
}
