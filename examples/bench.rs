//! quiver's benchmark on a real data set (prints figures; asserts nothing).
//!
//! ```text
//! cargo run --release --example bench -- --data ../shared/data/minilm-debian
//! ```
//!
//! Phases: durable ingest over HTTP (batches of 500) → index build → peak RSS → search sweep over
//! ef (recall@10, QPS, p50/p99) in-process and over HTTP with 1 and 8 clients → restart-to-ready
//! with and without the graph dump. The server runs in its own tokio runtime; the load generator
//! shares the machine, as a real client on the same host would.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use quiver::client::Client;
use quiver::config::Config;
use quiver::dataset::{read_fvecs, read_ivecs, recall_at};
use quiver::engine::SearchParams;
use quiver::model::{CollectionConfig, HnswConfig, Metric, PointId, PointInput, SearchRequest};
use quiver::node::Node;

#[derive(Parser)]
struct Args {
    /// Data set folder with base.fvecs, queries.fvecs, groundtruth.ivecs.
    #[arg(long, default_value = "../shared/data/minilm-debian")]
    data: PathBuf,
    /// Use only the first N base vectors (ground truth is then recomputed exactly).
    #[arg(long)]
    limit: Option<usize>,
    /// Number of queries.
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    /// ef values to sweep.
    #[arg(long, value_delimiter = ',', default_value = "16,32,64,128,256")]
    efs: Vec<usize>,
    /// HTTP client counts.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    clients: Vec<usize>,
    /// Upsert requests in flight during ingest.
    #[arg(long, default_value_t = 4)]
    ingest_concurrency: usize,
    /// HNSW ef_construction.
    #[arg(long, default_value_t = HnswConfig::default().ef_construction)]
    ef_construction: usize,
    /// HNSW m.
    #[arg(long, default_value_t = HnswConfig::default().m)]
    m: usize,
    /// The server's backpressure bound (points outside the graph before writes wait).
    #[arg(long, default_value_t = 20_000)]
    max_unindexed: u64,
    /// Skip the HTTP sweeps.
    #[arg(long)]
    no_http: bool,
    /// Skip the restart measurements.
    #[arg(long)]
    no_restart: bool,
}

const K: usize = 10;
const COLLECTION: &str = "bench";

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn exact_truth(base: &[Vec<f32>], queries: &[Vec<f32>]) -> Vec<Vec<i32>> {
    queries
        .iter()
        .map(|q| {
            let mut d: Vec<(f32, i32)> = base
                .iter()
                .enumerate()
                .map(|(i, v)| (-quiver::index::dot(q, v), i as i32))
                .collect();
            d.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            d.into_iter().take(K).map(|x| x.1).collect()
        })
        .collect()
}

struct Row {
    ef: usize,
    mode: String,
    recall: f64,
    qps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn ids_of(hits: &[quiver::model::Hit]) -> Vec<u64> {
    hits.iter()
        .filter_map(|h| match h.id {
            PointId::Num(n) => Some(n),
            PointId::Str(_) => None,
        })
        .collect()
}

async fn http_sweep(
    url: &str,
    queries: &Arc<Vec<Vec<f32>>>,
    truth: &Arc<Vec<Vec<i32>>>,
    ef: usize,
    clients: usize,
) -> anyhow::Result<Row> {
    let client = Client::new(url, None)?;
    // Warm-up.
    for q in queries.iter().take(50) {
        let mut r = SearchRequest::new(q.clone(), K);
        r.ef = Some(ef);
        r.with_payload = false;
        client.search(COLLECTION, &r).await?;
    }
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (client, queries, truth, next) =
            (client.clone(), queries.clone(), truth.clone(), next.clone());
        set.spawn(async move {
            let mut lat = Vec::new();
            let mut recall = 0.0;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= queries.len() {
                    break;
                }
                let mut r = SearchRequest::new(queries[i].clone(), K);
                r.ef = Some(ef);
                r.with_payload = false;
                let t = Instant::now();
                let resp = client.search(COLLECTION, &r).await?;
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                recall += recall_at(&ids_of(&resp.hits), &truth[i], K);
            }
            Ok::<_, anyhow::Error>((lat, recall))
        });
    }
    let mut lat = Vec::new();
    let mut recall = 0.0;
    while let Some(r) = set.join_next().await {
        let (l, rc) = r??;
        lat.extend(l);
        recall += rc;
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    Ok(Row {
        ef,
        mode: format!(
            "http, {clients} client{}",
            if clients == 1 { "" } else { "s" }
        ),
        recall: recall / queries.len() as f64,
        qps: queries.len() as f64 / secs,
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = read_fvecs(&args.data.join("base.fvecs"), args.limit)?;
    let queries = read_fvecs(&args.data.join("queries.fvecs"), Some(args.queries))?;
    let truth: Vec<Vec<i32>> = if args.limit.is_some() {
        exact_truth(&base, &queries)
    } else {
        read_ivecs(&args.data.join("groundtruth.ivecs"), Some(args.queries))?
    };
    let dim = base[0].len();
    println!(
        "data: {} base vectors, {} queries, dim {dim}; m={}, ef_construction={}",
        base.len(),
        queries.len(),
        args.m,
        args.ef_construction
    );

    let dir = tempfile::tempdir()?;
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut config = Config::for_test(dir.path());
    config.log = "warn".into();
    config.max_unindexed = args.max_unindexed;
    let node = server_rt.block_on(Node::start(config.clone()))?;
    let url = node.url();

    // Ingest.
    let ccfg = CollectionConfig {
        dim,
        metric: Metric::Cosine,
        hnsw: HnswConfig {
            m: args.m,
            ef_construction: args.ef_construction,
        },
    };
    let n = base.len();
    let (ingest_secs, build_secs) = client_rt.block_on(async {
        let client = Client::new(&url, None)?;
        client.create_collection(COLLECTION, &ccfg).await?;
        let started = Instant::now();
        let sem = Arc::new(tokio::sync::Semaphore::new(args.ingest_concurrency));
        let mut set = tokio::task::JoinSet::new();
        for (c, chunk) in base.chunks(500).enumerate() {
            let permit = sem.clone().acquire_owned().await?;
            let points: Vec<PointInput> = chunk
                .iter()
                .enumerate()
                .map(|(i, v)| PointInput {
                    id: PointId::Num((c * 500 + i) as u64),
                    vector: v.clone(),
                    payload: Some(serde_json::json!({"row": c * 500 + i})),
                })
                .collect();
            let client = client.clone();
            set.spawn(async move {
                let r = client.upsert(COLLECTION, points).await;
                drop(permit);
                r
            });
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        let ingest = started.elapsed().as_secs_f64();
        let engine = node.engine.clone();
        tokio::task::spawn_blocking(move || engine.wait_indexed(Duration::from_secs(3600))).await?;
        Ok::<_, anyhow::Error>((ingest, started.elapsed().as_secs_f64()))
    })?;
    println!("\n## ingest\n");
    println!("durable ingest over HTTP (batches of 500, {} in flight): {:.0} vectors/s ({n} in {ingest_secs:.1} s)", args.ingest_concurrency, n as f64 / ingest_secs);
    println!(
        "graph complete (all {n} indexed) {build_secs:.1} s after the first write: {:.0} vectors/s",
        n as f64 / build_secs
    );
    println!("peak RSS after build: {:.0} MiB", peak_rss_mib());

    // Let the indexer's background graph dump (it follows a large ingest) finish first.
    std::thread::sleep(Duration::from_secs(3));
    // In-process sweep, one thread.
    let coll = node.engine.get(COLLECTION)?;
    let mut rows = Vec::new();
    for q in queries.iter().take(200) {
        let p = SearchParams {
            vector: q.clone(),
            k: K,
            ef: 64,
            filter: None,
            score_threshold: None,
            with_payload: false,
            with_vector: false,
            exact: false,
        };
        coll.search(&p);
    }
    for &ef in &args.efs {
        let mut lat = Vec::with_capacity(queries.len());
        let mut recall = 0.0;
        let started = Instant::now();
        for (i, q) in queries.iter().enumerate() {
            let p = SearchParams {
                vector: q.clone(),
                k: K,
                ef,
                filter: None,
                score_threshold: None,
                with_payload: false,
                with_vector: false,
                exact: false,
            };
            let t = Instant::now();
            let hits = coll.search(&p);
            lat.push(t.elapsed().as_secs_f64() * 1e3);
            recall += recall_at(&ids_of(&hits), &truth[i], K);
        }
        let secs = started.elapsed().as_secs_f64();
        lat.sort_by(f64::total_cmp);
        rows.push(Row {
            ef,
            mode: "in-process, 1 thread".into(),
            recall: recall / queries.len() as f64,
            qps: queries.len() as f64 / secs,
            p50_ms: percentile(&lat, 0.5),
            p99_ms: percentile(&lat, 0.99),
        });
    }
    // HTTP sweeps.
    let qa = Arc::new(queries.clone());
    let ta = Arc::new(truth.clone());
    for &clients in if args.no_http {
        &[][..]
    } else {
        &args.clients[..]
    } {
        for &ef in &args.efs {
            rows.push(client_rt.block_on(http_sweep(&url, &qa, &ta, ef, clients))?);
        }
    }
    println!("\n## search (k={K})\n");
    println!("| mode | ef | recall@10 | QPS | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.3} | {:.0} | {:.2} | {:.2} |",
            r.mode, r.ef, r.recall, r.qps, r.p50_ms, r.p99_ms
        );
    }
    println!("\npeak RSS: {:.0} MiB", peak_rss_mib());

    if !args.no_restart {
        drop(coll);
        let engine = node.engine.clone();
        drop(engine);
        server_rt.block_on(node.stop())?;
        println!("\n## restart\n");
        let started = Instant::now();
        let node = server_rt.block_on(Node::start(config.clone()))?;
        let with_dump = started.elapsed().as_secs_f64();
        let info = node.engine.info(COLLECTION)?;
        println!(
            "restart to ready with the graph dump: {with_dump:.2} s ({} points, {} unindexed)",
            info.points, info.unindexed
        );
        server_rt.block_on(node.stop())?;
        std::fs::remove_dir_all(dir.path().join("graphs"))?;
        let started = Instant::now();
        let node = server_rt.block_on(Node::start(config.clone()))?;
        let open = started.elapsed().as_secs_f64();
        let engine = node.engine.clone();
        engine.wait_indexed(Duration::from_secs(3600));
        let full = started.elapsed().as_secs_f64();
        println!("restart without a dump: serving after {open:.2} s (tail searched exactly), graph rebuilt after {full:.1} s");
        drop(engine);
        server_rt.block_on(node.stop())?;
    }
    Ok(())
}
