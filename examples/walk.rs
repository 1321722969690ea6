//! The graph walk alone (issue 11): builds one graph over the shared set in id order, freezes
//! its search copy, and times that copy's search on one thread, the same way
//! `../shared/peers/bench_hnswlib.py` times hnswlib (k = 10, each query alone, recall@10 against
//! the shipped ground truth). Every ef is measured `--rounds` times, interleaved, and the median
//! is printed, so that noise from the machine shows as spread rather than as a trend. Prints
//! figures; asserts nothing.
//!
//! ```text
//! cargo run --release --example walk -- --efs 16,32,64 --rounds 5
//! ```

mod common;

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use quiver::dataset::{read_fvecs, read_ivecs, recall_at};
use quiver::index::{
    badness, normalize, rescored, score, AnyGraph, Planning, Scored, Stored, BLOCK,
};
use quiver::model::{CollectionConfig, HnswConfig, Metric, Quantization};

#[derive(Parser)]
struct Args {
    /// Data set folder with base.fvecs, queries.fvecs, groundtruth.ivecs.
    #[arg(long, default_value = "../shared/data/minilm-debian")]
    data: PathBuf,
    /// ef values to sweep.
    #[arg(long, value_delimiter = ',', default_value = "16,32,64")]
    efs: Vec<usize>,
    /// Measurements per ef (the median is printed).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// HNSW m.
    #[arg(long, default_value_t = HnswConfig::default().m)]
    m: usize,
    /// HNSW ef_construction.
    #[arg(long, default_value_t = HnswConfig::default().ef_construction)]
    ef_construction: usize,
    /// `none`, `int8` or `int8_ram`. A walk over codes (`int8`, `int8_ram`) has its best
    /// candidates rescored with the vectors, as a node does.
    #[arg(long, default_value = "none", value_parser = common::parse_quantization)]
    quantization: Quantization,
}

const K: usize = 10;

fn main() -> anyhow::Result<()> {
    quiver::alloc::limit_arenas();
    let args = Args::parse();
    let mut base = read_fvecs(&args.data.join("base.fvecs"), None)?;
    let mut queries = read_fvecs(&args.data.join("queries.fvecs"), None)?;
    let truth = read_ivecs(&args.data.join("groundtruth.ivecs"), None)?;
    base.iter_mut().chain(queries.iter_mut()).for_each(|v| {
        normalize(v);
    });
    let quantization = args.quantization;
    let config = CollectionConfig {
        dim: base[0].len(),
        metric: Metric::Cosine,
        hnsw: HnswConfig {
            m: args.m,
            ef_construction: args.ef_construction,
        },
        quantization,
    };
    let graph = AnyGraph::new(&config, base.len(), 0, 0);
    let started = Instant::now();
    let items: Vec<(u64, Option<Stored>)> = base
        .iter()
        .enumerate()
        .map(|(i, v)| (i as u64, Some(Stored::of(v.clone(), quantization))))
        .collect();
    for block in items.chunks(BLOCK as usize) {
        let end = block.last().map_or(0, |(i, _)| i + 1);
        graph.insert_block(block, end, Planning::Behind);
    }
    graph.freeze();
    // As a node's indexer does after each refresh of the search copy.
    quiver::alloc::collapse_now();
    let (anonymous, huge) = quiver::alloc::anonymous_mib();
    println!("{huge:.0} of {anonymous:.0} MiB anonymous memory on huge pages");
    println!(
        "{} points, dim {}, m {}, ef_construction {}, {:?}: built in {:.1} s",
        base.len(),
        config.dim,
        args.m,
        args.ef_construction,
        quantization,
        started.elapsed().as_secs_f64()
    );
    let walks_codes = graph.flat().is_some_and(|f| f.approximate());
    println!("walk over int8 codes, rescored: {walks_codes}");
    let flat = graph
        .flat()
        .ok_or_else(|| anyhow::anyhow!("no search copy"))?;
    let keep_all = |_: u64| true;
    let mut qps: Vec<Vec<f64>> = vec![Vec::new(); args.efs.len()];
    let mut recall = vec![0.0; args.efs.len()];
    for _ in 0..args.rounds {
        for (e, &ef) in args.efs.iter().enumerate() {
            let t = Instant::now();
            let mut hits = 0.0;
            for (q, gt) in queries.iter().zip(&truth) {
                let wanted = if walks_codes { rescored(K, ef) } else { K };
                let mut found: Vec<Scored<u64>> = flat
                    .search(q, None, wanted, ef, Some(&keep_all))
                    .into_iter()
                    .map(|(i, d)| match walks_codes {
                        true => {
                            let s = score(config.metric, q, &base[i as usize]);
                            Scored(badness(config.metric, s), i)
                        }
                        false => Scored(d, i),
                    })
                    .collect();
                found.sort_unstable();
                let ids: Vec<u64> = found.iter().take(K).map(|s| s.1).collect();
                hits += recall_at(&ids, gt, K);
            }
            qps[e].push(queries.len() as f64 / t.elapsed().as_secs_f64());
            recall[e] = hits / queries.len() as f64;
        }
    }
    println!("| ef | recall@10 | QPS (median) | QPS (min–max) |");
    println!("|---:|---:|---:|---:|");
    for (e, ef) in args.efs.iter().enumerate() {
        let v = &mut qps[e];
        v.sort_by(f64::total_cmp);
        println!(
            "| {ef} | {:.3} | {:.0} | {:.0}–{:.0} |",
            recall[e],
            v[v.len() / 2],
            v[0],
            v[v.len() - 1]
        );
    }
    Ok(())
}
