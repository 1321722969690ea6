//! Churn soak (issue 10): a collection under replacing upserts and deletes for minutes, sampling
//! resident memory, live points, tombstones, graph lag and recall@10 against exact search; then
//! the same once the churn stops. Prints figures; asserts nothing. The node is the release
//! binary (`--bin`, build it first), run as a process of its own: its resident memory is what
//! the table shows.
//!
//! ```text
//! cargo build --release --bin quiver
//! cargo run --release --example churn -- --points 20000 --secs 240 --clients 3
//! cargo run --release --example churn -- --points 20000 --secs 120 --clients 3 --rate 1500
//! ```
//!
//! Each client loops: replace 50 random live ids with new vectors (derived from the real set,
//! as `quiver derive` does) and delete 50 others, then re-insert those 50 under fresh vectors,
//! so the live count stays near `--points` while every point is rewritten many times over.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use common::NodeProcess;
use quiver::dataset::{derived_row, read_fvecs};
use quiver::model::{
    CollectionConfig, Consistency, DeleteRequest, Metric, PointId, PointInput, Quantization,
    SearchRequest,
};
use quiver_client::Client;

#[derive(Parser)]
struct Args {
    /// Data set folder with base.fvecs and queries.fvecs.
    #[arg(long, default_value = "../shared/data/minilm-debian")]
    data: PathBuf,
    /// Live points to keep.
    #[arg(long, default_value_t = 20_000)]
    points: u64,
    /// How long the churn runs, in seconds.
    #[arg(long, default_value_t = 240)]
    secs: u64,
    /// Concurrent churning clients.
    #[arg(long, default_value_t = 3)]
    clients: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 15)]
    every: u64,
    /// How long to watch after the churn stops, in seconds.
    #[arg(long, default_value_t = 60)]
    after: u64,
    /// Points written or deleted per second, all clients together (0: as fast as the
    /// backpressure lets them).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// The node's sled page cache (`--cache-mb`), which fills as the churn writes.
    #[arg(long, default_value_t = 64)]
    cache_mb: u64,
    /// The server binary.
    #[arg(long, default_value = "target/release/quiver")]
    bin: PathBuf,
    /// More `quiver serve` flags, space-separated.
    #[arg(long, default_value = "")]
    node_args: String,
    /// The collection's quantisation (`none`, `int8` or `int8_ram`).
    #[arg(long, default_value = "none", value_parser = common::parse_quantization)]
    quantization: Quantization,
}

const NAME: &str = "churn";
const PER_REQUEST: usize = 50;

/// One line of figures: memory, counts, graph lag and recall@10 of graph search against exact.
async fn sample(node: &NodeProcess, client: &Client, queries: &[Vec<f32>], t: f64, rewritten: u64) {
    let info = client.collection(NAME).await.unwrap();
    let at = Some(Consistency::MinIndex {
        min_index: info.index,
    });
    let mut recall = 0.0;
    for q in queries {
        let mut req = SearchRequest::new(q.clone(), 10);
        req.with_payload = false;
        req.cache = false;
        req.consistency = at.clone();
        let approx = client.search(NAME, &req).await.unwrap().hits;
        req.exact = true;
        let exact = client.search(NAME, &req).await.unwrap().hits;
        let want: std::collections::HashSet<_> = exact.iter().map(|h| h.id.clone()).collect();
        recall += approx.iter().filter(|h| want.contains(&h.id)).count() as f64 / 10.0;
    }
    println!(
        "| {t:6.0} | {:7.0} | {:6} | {:10} | {:9} | {:9} | {:.3} |",
        node.rss_mib(),
        info.points,
        info.tombstones,
        info.unindexed,
        rewritten,
        recall / queries.len() as f64
    );
}

/// Waits until every complete block of the collection is in the graph.
async fn wait_indexed(client: &Client) -> anyhow::Result<()> {
    while client.collection(NAME).await?.unindexed > 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = Arc::new(read_fvecs(&args.data.join("base.fvecs"), None)?);
    let queries: Vec<Vec<f32>> = read_fvecs(&args.data.join("queries.fvecs"), Some(20))?;
    let dim = base[0].len();
    let dir = tempfile::tempdir()?;
    // The node is a process of its own (the release binary with its defaults), so that the
    // memory figures are the server's alone, not the client's vectors and buffers as well.
    let flags = format!("--cache-mb {} {}", args.cache_mb, args.node_args);
    let node = NodeProcess::spawn(&args.bin, dir.path(), None, &flags)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        common::wait_ready(&node.url, Duration::from_secs(30)).await?;
        let client = Client::new(&node.url, None)?;
        let config = CollectionConfig {
            quantization: args.quantization,
            ..CollectionConfig::new(dim, Metric::Cosine)
        };
        client.create_collection(NAME, &config).await?;
        // The initial load: ids 0..points, vectors from the real set.
        let started = Instant::now();
        for from in (0..args.points).step_by(500) {
            let points: Vec<PointInput> = (from..(from + 500).min(args.points))
                .map(|i| PointInput {
                    id: PointId::Num(i),
                    vector: base[(i % base.len() as u64) as usize].clone(),
                    payload: None,
                })
                .collect();
            client.upsert(NAME, points).await?;
        }
        wait_indexed(&client).await?;
        println!(
            "loaded and indexed {} points in {:.1} s; resident {:.0} MiB (a fresh load)",
            args.points,
            started.elapsed().as_secs_f64(),
            node.rss_mib()
        );
        println!("\n| t (s) | RSS MiB | points | tombstones | unindexed | rewritten | recall@10 |");
        println!("|---:|---:|---:|---:|---:|---:|---:|");
        sample(&node, &client, &queries, 0.0, 0).await;

        let stop = Arc::new(AtomicBool::new(false));
        let rewritten = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for c in 0..args.clients {
            let (client, stop, rewritten) = (client.clone(), stop.clone(), rewritten.clone());
            let (n, base) = (args.points, base.clone());
            // Each round writes or deletes 3 × PER_REQUEST points.
            let pace = (args.rate > 0).then(|| {
                let round = Duration::from_secs_f64(
                    (3 * PER_REQUEST) as f64 * args.clients as f64 / args.rate as f64,
                );
                let mut ticks = tokio::time::interval(round);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticks
            });
            tasks.push(tokio::spawn(async move {
                let mut pace = pace;
                // A per-client stream of fresh vectors and ids to touch.
                let mut round: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    if let Some(ticks) = pace.as_mut() {
                        ticks.tick().await;
                    }
                    round += 1;
                    let seed = 1_000 + c * 1_000_000 + round;
                    let pick = |k: u64| (seed.wrapping_mul(0x9E37_79B9) + k * 7_919) % n;
                    let fresh = |k: u64| PointInput {
                        id: PointId::Num(pick(k)),
                        vector: derived_row(&base, pick(k), seed, 0.03),
                        payload: None,
                    };
                    let replace: Vec<PointInput> = (0..PER_REQUEST as u64).map(fresh).collect();
                    if client.upsert(NAME, replace).await.is_err() {
                        continue;
                    }
                    let gone: Vec<PointId> = (0..PER_REQUEST as u64)
                        .map(|k| PointId::Num(pick(k + 10_000)))
                        .collect();
                    let del = DeleteRequest {
                        ids: Some(gone),
                        filter: None,
                    };
                    if client.delete_points(NAME, &del).await.is_err() {
                        continue;
                    }
                    let back: Vec<PointInput> =
                        (10_000..10_000 + PER_REQUEST as u64).map(fresh).collect();
                    if client.upsert(NAME, back).await.is_ok() {
                        rewritten.fetch_add(3 * PER_REQUEST as u64, Ordering::Relaxed);
                    }
                }
            }));
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(args.secs) {
            tokio::time::sleep(Duration::from_secs(args.every)).await;
            let t = started.elapsed().as_secs_f64();
            sample(
                &node,
                &client,
                &queries,
                t,
                rewritten.load(Ordering::Relaxed),
            )
            .await;
        }
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await?;
        }
        let churn_secs = started.elapsed().as_secs_f64();
        let total = rewritten.load(Ordering::Relaxed);
        println!(
            "\nchurn stopped after {churn_secs:.0} s: {total} points written or deleted ({:.0}/s)",
            total as f64 / churn_secs
        );
        let quiet = Instant::now();
        while quiet.elapsed() < Duration::from_secs(args.after) {
            tokio::time::sleep(Duration::from_secs(args.every)).await;
            sample(
                &node,
                &client,
                &queries,
                started.elapsed().as_secs_f64(),
                total,
            )
            .await;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    drop(node);
    Ok(())
}
