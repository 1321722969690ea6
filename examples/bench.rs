//! quiver's benchmark on a real data set (prints figures; asserts nothing).
//!
//! ```text
//! cargo run --release --example bench -- --data ../shared/data/minilm-debian
//! ```
//!
//! Phases: durable ingest over HTTP (batches of 500) → index build → peak RSS → search sweep over
//! ef (recall@10, QPS, p50/p99) in-process and over HTTP with 1 and 8 clients → restart-to-ready
//! with and without the graph dump → a new replica joining → replication in-process → replica lag
//! with `quiver serve` processes (`common/lag.rs`). The server runs in its own tokio runtime; the
//! load generator shares the machine, as a real client on the same host would.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use quiver::config::Config;
use quiver::dataset::{percentile, read_fvecs, read_ivecs, recall_at};
use quiver::engine::SearchParams;
use quiver::model::{
    CollectionConfig, HnswConfig, Metric, PointId, PointInput, Quantization, SearchRequest,
};
use quiver::node::Node;
use quiver_client::Client;

#[derive(Parser)]
struct Args {
    /// Data set folder with base.fvecs, queries.fvecs, groundtruth.ivecs.
    #[arg(long, default_value = "../shared/data/minilm-debian")]
    data: PathBuf,
    /// Use only the first N base vectors (ground truth is then recomputed exactly).
    #[arg(long)]
    limit: Option<usize>,
    /// Instead, N vectors derived from the base set (issue 10's recipe, as `quiver derive`:
    /// base[i mod n] plus noise of 0.03, normalised; seed 1), with queries derived the same way
    /// from queries.fvecs (seed 2) and exact ground truth computed here.
    #[arg(long)]
    scale: Option<u64>,
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
    /// The collection's quantisation (`none` or `int8`).
    #[arg(long, default_value = "none", value_parser = common::parse_quantization)]
    quantization: Quantization,
    /// The server's backpressure bound (points outside the graph before writes wait).
    #[arg(long, default_value_t = 20_000)]
    max_unindexed: u64,
    /// Raft heartbeat of the replication cluster, in ms.
    #[arg(long, default_value_t = 250)]
    heartbeat_ms: u64,
    /// Skip the replication measurements.
    #[arg(long)]
    no_replication: bool,
    /// Skip the HTTP sweeps.
    #[arg(long)]
    no_http: bool,
    /// Skip the restart measurements.
    #[arg(long)]
    no_restart: bool,
    /// Skip the new replica joining the loaded node.
    #[arg(long)]
    no_join: bool,
    /// The JSON that `../shared/peers/bench_hnswlib.py --out FILE` wrote in this session: the
    /// in-process rows are printed beside hnswlib's at the same ef (issue 11).
    #[arg(long)]
    hnswlib: Option<PathBuf>,
    /// Instead, run `bench_hnswlib.py` (beside the data set's `data/`, in `peers/`) with this
    /// Python, which needs hnswlib and numpy, right after the in-process sweep, and print the
    /// same table from its answer.
    #[arg(long, conflicts_with = "hnswlib")]
    hnswlib_python: Option<PathBuf>,
    /// The server's snapshot interval in log entries (`--snapshot-logs`; default: the server's).
    #[arg(long)]
    snapshot_logs: Option<u64>,
    /// The server binary for the measures with processes (the lag table, against pgvector).
    #[arg(long, default_value = "target/release/quiver")]
    lag_bin: PathBuf,
    /// Writes per second for that table.
    #[arg(long, value_delimiter = ',', default_value = "400,2000")]
    lag_rates: Vec<u64>,
    /// Seconds of writes per rate for that table (the first second is not counted).
    #[arg(long, default_value_t = 10)]
    lag_secs: u64,
    /// Skip the replica lag measured with processes.
    #[arg(long)]
    no_process_lag: bool,
    /// Run the node with its heap on small pages (as `QUIVER_HUGE_PAGES=0`), then, after the
    /// in-process sweep, move the heap onto huge pages and sweep again: each in-process row
    /// comes twice, measured in one process over one graph.
    #[arg(long)]
    pages_ab: bool,
    /// Last, quiver against PostgreSQL + pgvector under the same C-client load, at matched
    /// recall (pgvector's standby must run: see `examples/pgvector.rs`); `--pg-*` tune it.
    #[arg(long)]
    pgvector: bool,
    #[command(flatten)]
    against: common::pgvector::Against,
}

const K: usize = 10;
const COLLECTION: &str = "bench";
const SECRET: &str = "bench-cluster-secret-0123";
/// How long a joining replica may take to be ready.
const JOIN_WITHIN: Duration = Duration::from_secs(600);

fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

/// A memory line of this process's status (`VmHWM:`, `VmRSS:`) in MiB.
fn status_mib(key: &str) -> f64 {
    common::status_mib("/proc/self/status", key)
}

/// A search whose filter keeps 1 % of the points (a range over the `row` payload), at ef 64:
/// latency and recall@10 against the exact filtered answer.
fn filtered_search(coll: &quiver::engine::Collection, queries: &[Vec<f32>], n: usize) {
    let width = (n / 100).max(1);
    let (mut lat, mut recall) = (Vec::new(), 0.0);
    for (i, q) in queries.iter().enumerate() {
        let from = (i * 7_919) % (n - width + 1);
        let filter: quiver::filter::Filter = serde_json::from_value(serde_json::json!({
            "must": [{"key": "row", "range": {"gte": from, "lt": from + width}}]
        }))
        .expect("a valid filter");
        let mut p = search_params(q, 64, Some(filter), true);
        let exact: Vec<u64> = ids_of(&coll.search(&p));
        p.exact = false;
        let t = Instant::now();
        let hits = coll.search(&p);
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        let want: Vec<i32> = exact.iter().map(|&x| x as i32).collect();
        recall += recall_at(&ids_of(&hits), &want, K);
    }
    lat.sort_by(f64::total_cmp);
    println!(
        "\nfiltered search, 1 % of the points match ({width} of {n}), ef 64: p50 {:.2} ms, \
         p99 {:.2} ms, recall@10 {:.3} against the exact filtered answer",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        recall / queries.len().max(1) as f64
    );
}

/// The query cache on a workload with repeated queries: 20,000 searches at ef 64 drawn from the
/// queries by a Zipf law (the r-th most popular with weight 1/r, fixed seed), through the node's
/// cache (empty at the start, at its `--query-cache-mb` default), then the same sequence
/// computed afresh. Prints the hit rate, throughput and latency of both, and checks that every
/// cached answer is the computed one.
fn cached_search(
    engine: &quiver::engine::Engine,
    coll: &quiver::engine::Collection,
    queries: &[Vec<f32>],
    truth: &[Vec<i32>],
) {
    use rand::{Rng, SeedableRng};
    const DRAWS: usize = 20_000;
    let mut cdf = Vec::with_capacity(queries.len());
    let mut sum = 0.0;
    for r in 1..=queries.len() {
        sum += 1.0 / r as f64;
        cdf.push(sum);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mix: Vec<usize> = (0..DRAWS)
        .map(|_| {
            let u = rng.random::<f64>() * sum;
            cdf.partition_point(|&c| c < u).min(queries.len() - 1)
        })
        .collect();
    let cache = engine.query_cache();
    let before = cache.stats();
    let mut answers = Vec::with_capacity(DRAWS);
    let mut run = |use_cache: bool| {
        let mut lat = Vec::with_capacity(DRAWS);
        let mut recall = 0.0;
        let started = Instant::now();
        for &i in &mix {
            let p = search_params(&queries[i], 64, None, false);
            let t = Instant::now();
            let hits = cache.search(coll, &p, use_cache);
            lat.push(t.elapsed().as_secs_f64() * 1e3);
            recall += recall_at(&ids_of(&hits), &truth[i], K);
            if use_cache {
                answers.push(hits);
            } else {
                assert_eq!(answers[lat.len() - 1], hits, "a cached answer differs");
            }
        }
        let secs = started.elapsed().as_secs_f64();
        lat.sort_by(f64::total_cmp);
        (
            DRAWS as f64 / secs,
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            recall / DRAWS as f64,
        )
    };
    let on = run(true);
    let after = cache.stats();
    let off = run(false);
    let hits = after.hits - before.hits;
    let looked = hits + after.misses - before.misses;
    println!(
        "\n## query cache ({DRAWS} searches, Zipf over {} queries, ef 64)\n",
        queries.len()
    );
    println!("| cache | hit rate | QPS | p50 ms | p99 ms | recall@10 |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| on ({} MiB bound, {} entries, {:.1} MiB held) | {:.3} | {:.0} | {:.3} | {:.3} | {:.3} |",
        after.capacity >> 20,
        after.entries,
        after.bytes as f64 / (1 << 20) as f64,
        hits as f64 / looked.max(1) as f64,
        on.0,
        on.1,
        on.2,
        on.3
    );
    println!(
        "| off | — | {:.0} | {:.3} | {:.3} | {:.3} |",
        off.0, off.1, off.2, off.3
    );
}

/// Waits (up to 10 minutes) until the collection's frozen search copy covers its whole graph.
fn wait_for_search_copy(coll: &quiver::engine::Collection) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while coll.search_copy_lag() != Some(0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A search for `q`'s top K, without payloads or vectors.
fn search_params(
    q: &[f32],
    ef: usize,
    filter: Option<quiver::filter::Filter>,
    exact: bool,
) -> SearchParams {
    SearchParams {
        vector: q.to_vec(),
        k: K,
        ef,
        filter,
        score_threshold: None,
        with_payload: false,
        with_vector: false,
        exact,
        sized_ef: false,
    }
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
        r.cache = false;
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
                // Every sweep measures the search itself, not the query cache.
                r.cache = false;
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

/// The search sweep on this thread, one row per ef, appended to `rows`.
fn in_process_sweep(
    coll: &quiver::engine::Collection,
    queries: &[Vec<f32>],
    truth: &[Vec<i32>],
    efs: &[usize],
    mode: &str,
    rows: &mut Vec<Row>,
) {
    for &ef in efs {
        let mut lat = Vec::with_capacity(queries.len());
        let mut recall = 0.0;
        let started = Instant::now();
        for (i, q) in queries.iter().enumerate() {
            let p = search_params(q, ef, None, false);
            let t = Instant::now();
            let hits = coll.search(&p);
            lat.push(t.elapsed().as_secs_f64() * 1e3);
            recall += recall_at(&ids_of(&hits), &truth[i], K);
        }
        let secs = started.elapsed().as_secs_f64();
        lat.sort_by(f64::total_cmp);
        rows.push(Row {
            ef,
            mode: mode.into(),
            recall: recall / queries.len() as f64,
            qps: queries.len() as f64 / secs,
            p50_ms: percentile(&lat, 0.5),
            p99_ms: percentile(&lat, 0.99),
        });
    }
}

/// The process's anonymous memory on huge pages, in words.
fn anon_huge() -> String {
    let (anonymous, huge) = quiver::alloc::anonymous_mib();
    format!("{huge:.0} of {anonymous:.0} MiB anonymous on huge pages")
}

fn main() -> anyhow::Result<()> {
    // The server's allocator policy (src/main.rs), so that memory figures are the server's.
    quiver::alloc::limit_arenas();
    let args = Args::parse();
    if args.pages_ab {
        // Before any thread starts: the indexers read it after each refresh of a search copy.
        std::env::set_var("QUIVER_HUGE_PAGES", "0");
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,openraft=off".into()),
        )
        .init();
    let mut base = read_fvecs(&args.data.join("base.fvecs"), args.limit)?;
    let mut queries = read_fvecs(&args.data.join("queries.fvecs"), Some(args.queries))?;
    if let Some(n) = args.scale {
        use quiver::dataset::{derived_rows, DERIVED_SIGMA, POINT_SEED, QUERY_SEED};
        let real = std::mem::take(&mut base);
        base = derived_rows(&real, 0..n, POINT_SEED, DERIVED_SIGMA);
        let real_queries = std::mem::take(&mut queries);
        queries = derived_rows(
            &real_queries,
            0..real_queries.len() as u64,
            QUERY_SEED,
            DERIVED_SIGMA,
        );
    }
    let truth: Vec<Vec<i32>> = if args.limit.is_some() || args.scale.is_some() {
        let started = Instant::now();
        let truth = quiver::dataset::exact_top_k(&base, &queries, K);
        println!(
            "exact ground truth for {} queries in {:.1} s",
            queries.len(),
            started.elapsed().as_secs_f64()
        );
        truth
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
    config.cluster_secret = Some(SECRET.into());
    config.max_unindexed = args.max_unindexed;
    if let Some(n) = args.snapshot_logs {
        config.snapshot_logs = n;
    }
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
        quantization: args.quantization,
    };
    let n = base.len();
    let (ingest_secs, build_secs) = client_rt.block_on(async {
        Client::new(&url, None)?
            .create_collection(COLLECTION, &ccfg)
            .await?;
        let started = Instant::now();
        ingest_all(&url, &base, args.ingest_concurrency, true).await?;
        let ingest = started.elapsed().as_secs_f64();
        let engine = node.engine.clone();
        tokio::task::spawn_blocking(move || engine.wait_indexed(Duration::from_secs(3600))).await?;
        Ok::<_, anyhow::Error>((ingest, started.elapsed().as_secs_f64()))
    })?;
    println!("\n## ingest\n");
    println!("durable ingest over HTTP (batches of 500, {} in flight): {:.0} vectors/s ({n} in {ingest_secs:.1} s)", args.ingest_concurrency, n as f64 / ingest_secs);
    let blocks = n as u64 / quiver::index::BLOCK * quiver::index::BLOCK;
    println!(
        "graph complete ({blocks} of {n} indexed: the last incomplete block of {} is searched exactly) {build_secs:.1} s after the first write: {:.0} vectors/s",
        n as u64 - blocks,
        n as f64 / build_secs
    );
    let data_mib = (n * dim * 4) as f64 / (1 << 20) as f64;
    println!(
        "peak RSS after build: {:.0} MiB (the whole process: the bench's own copy of the data, \
         {data_mib:.0} MiB, included)",
        peak_rss_mib()
    );

    // Let the indexer's background graph dump (it follows a large ingest) finish first, and the
    // node's last collapse onto huge pages run (at most `COLLAPSE_EVERY` after the burst): the
    // sweep measures the node as it settles, not its first seconds.
    std::thread::sleep(quiver::alloc::COLLAPSE_EVERY + Duration::from_secs(1));
    // In-process sweep, one thread, once the frozen search copy covers the whole graph: until
    // then the points it lacks are scanned exactly (or, more than 8,192 behind, hnsw_rs' own
    // graph is walked), which moved recall at ef 64 between 0.966 and 0.986 from run to run.
    let coll = node.engine.get(COLLECTION)?;
    wait_for_search_copy(&coll);
    let mut rows = Vec::new();
    for q in queries.iter().take(200) {
        let p = search_params(q, 64, None, false);
        coll.search(&p);
    }
    if args.pages_ab {
        let mode = format!("in-process, 1 thread, small pages ({})", anon_huge());
        in_process_sweep(&coll, &queries, &truth, &args.efs, &mode, &mut rows);
        let started = Instant::now();
        quiver::alloc::collapse_now();
        let secs = started.elapsed().as_secs_f64();
        let mode = format!(
            "in-process, 1 thread, huge pages ({}, collapsed in {secs:.2} s)",
            anon_huge()
        );
        in_process_sweep(&coll, &queries, &truth, &args.efs, &mode, &mut rows);
    } else {
        in_process_sweep(
            &coll,
            &queries,
            &truth,
            &args.efs,
            "in-process, 1 thread",
            &mut rows,
        );
    }
    if let Some(path) = &args.hnswlib {
        against_hnswlib(path, &rows)?;
    }
    if let Some(python) = &args.hnswlib_python {
        let out = dir.path().join("hnswlib.json");
        let script = args.data.join("../../peers/bench_hnswlib.py");
        println!("\nrunning {} for hnswlib's rows", script.display());
        let status = std::process::Command::new(python)
            .arg(&script)
            .args(["--skip-1t-build", "--runs", "1", "--out"])
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "{} failed: {status}", script.display());
        against_hnswlib(&out, &rows)?;
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
    filtered_search(&coll, &queries, n);
    cached_search(&node.engine, &coll, &queries, &truth);
    println!("\npeak RSS: {:.0} MiB", peak_rss_mib());
    if !args.no_join {
        join_replica(&url, &server_rt, &client_rt)?;
    }

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
        // Search speed after the restart: the frozen search copy must be back (not hnsw_rs').
        let coll = node.engine.get(COLLECTION)?;
        wait_for_search_copy(&coll);
        let copy_secs = started.elapsed().as_secs_f64();
        let timed = Instant::now();
        for q in queries.iter().take(200) {
            let p = search_params(q, 64, None, false);
            std::hint::black_box(coll.search(&p));
        }
        let per_query_ms = timed.elapsed().as_secs_f64() * 1e3 / queries.len().min(200) as f64;
        println!(
            "after the restart: search copy back {copy_secs:.2} s after the start; \
             {per_query_ms:.2} ms per query at ef 64 (compare the sweep above)"
        );
        drop(coll);
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
    if !args.no_replication {
        replication(&args, &base, &server_rt, &client_rt)?;
    }
    if !args.no_process_lag {
        println!("\n## replica lag with processes\n");
        if args.lag_bin.exists() {
            let lag = common::lag::Lag {
                bin: args.lag_bin.clone(),
                vectors: Arc::new(base.iter().take(20_000).cloned().collect()),
                rates: args.lag_rates.clone(),
                secs: args.lag_secs,
                dir: None,
                node_args: String::new(),
            };
            client_rt.block_on(common::lag::measure(&lag))?;
        } else {
            println!(
                "skipped: {} is missing (`cargo build --release` makes it)",
                args.lag_bin.display()
            );
        }
    }
    if args.pgvector {
        println!("\n## against pgvector, C clients, matched recall\n");
        client_rt.block_on(common::pgvector::measure(
            &args.lag_bin,
            &args.data,
            &args.against,
        ))?;
    }
    Ok(())
}

/// Upserts `base` in batches of 500 (ids = row numbers, `{"row": n}` payloads if asked) with
/// `concurrency` requests in flight; returns the seconds taken and the last index.
async fn ingest_all(
    url: &str,
    base: &[Vec<f32>],
    concurrency: usize,
    payloads: bool,
) -> anyhow::Result<(f64, u64)> {
    let client = Client::new(url, None)?;
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut set = tokio::task::JoinSet::new();
    for (c, chunk) in base.chunks(500).enumerate() {
        let permit = sem.clone().acquire_owned().await?;
        let points: Vec<PointInput> = chunk
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let n = c * 500 + i;
                PointInput {
                    id: PointId::Num(n as u64),
                    vector: v.clone(),
                    payload: payloads.then(|| serde_json::json!({ "row": n })),
                }
            })
            .collect();
        let client = client.clone();
        set.spawn(async move {
            let r = client.upsert(COLLECTION, points).await;
            drop(permit);
            r
        });
    }
    let mut last = 0;
    while let Some(r) = set.join_next().await {
        last = last.max(r??.index);
    }
    Ok((started.elapsed().as_secs_f64(), last))
}

/// Visibility lag: writes `rate` vectors/s for `secs` seconds on the leader (batches of `batch`),
/// and times each one from its acknowledgement until the replica has applied it.
async fn visibility_lag(
    leader: &str,
    replica: &Node,
    base: &[Vec<f32>],
    rate: usize,
    batch: usize,
    secs: f64,
) -> anyhow::Result<(f64, f64, f64)> {
    let client = Client::new(leader, None)?;
    let writes = ((rate as f64 * secs) / batch as f64) as usize;
    let interval = Duration::from_secs_f64(batch as f64 / rate as f64);
    let mut tick = tokio::time::interval(interval);
    let mut set = tokio::task::JoinSet::new();
    let started = Instant::now();
    for w in 0..writes {
        tick.tick().await;
        let points: Vec<PointInput> = (0..batch)
            .map(|i| {
                let n = w * batch + i;
                PointInput {
                    id: PointId::Num(1_000_000 + n as u64),
                    vector: base[n % base.len()].clone(),
                    payload: None,
                }
            })
            .collect();
        let (client, raft) = (client.clone(), replica.cluster.raft.clone());
        set.spawn(async move {
            let ack = client.upsert(COLLECTION, points).await?;
            let acked_at = Instant::now();
            raft.wait(Some(Duration::from_secs(30)))
                .applied_index_at_least(Some(ack.index), "visible")
                .await?;
            Ok::<_, anyhow::Error>(acked_at.elapsed().as_secs_f64() * 1e3)
        });
    }
    let mut lags = Vec::new();
    while let Some(r) = set.join_next().await {
        lags.push(r??);
    }
    let achieved = (writes * batch) as f64 / started.elapsed().as_secs_f64();
    lags.sort_by(f64::total_cmp);
    Ok((achieved, percentile(&lags, 0.5), percentile(&lags, 0.99)))
}

/// Prints the in-process rows beside hnswlib's single-thread batch rows at the same ef, from the
/// JSON its peer script wrote (`curve[]` of `ef`, `recall@10`, `qps_batch_1t`). Both must come
/// from the same session on the same machine: the host's speed drifts between sessions.
fn against_hnswlib(path: &std::path::Path, rows: &[Row]) -> anyhow::Result<()> {
    let peer: serde_json::Value = serde_json::from_slice(&std::fs::read(path)?)?;
    let curve = peer["curve"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("{}: no `curve` array", path.display()))?;
    println!(
        "\n## in-process against hnswlib (one thread; {})\n",
        path.display()
    );
    println!("| quiver | ef | quiver recall@10 | quiver q/s | hnswlib recall@10 | hnswlib q/s | hnswlib's speed / quiver's |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let Some(h) = curve.iter().find(|h| h["ef"].as_u64() == Some(r.ef as u64)) else {
            continue;
        };
        let (recall, qps) = (h["recall@10"].as_f64(), h["qps_batch_1t"].as_f64());
        if let (Some(recall), Some(qps)) = (recall, qps) {
            println!(
                "| {} | {} | {:.3} | {:.0} | {recall:.3} | {qps:.0} | {:.2} |",
                r.mode,
                r.ef,
                r.recall,
                r.qps,
                qps / r.qps
            );
        }
    }
    Ok(())
}

/// Issue 10: a new replica joins the loaded node (a snapshot with the graph dump, then the log),
/// in this process: seconds until it is ready, and the resident memory it added.
fn join_replica(
    leader: &str,
    server_rt: &tokio::runtime::Runtime,
    client_rt: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut c = Config::for_test(dir.path());
    c.log = "warn".into();
    c.join = Some(leader.to_string());
    c.cluster_secret = Some(SECRET.into());
    let before = status_mib("VmRSS:");
    let started = Instant::now();
    let replica = server_rt.block_on(Node::start(c))?;
    client_rt.block_on(common::wait_ready(&replica.url(), JOIN_WITHIN))?;
    let ready = started.elapsed().as_secs_f64();
    let info = replica.engine.info(COLLECTION)?;
    println!(
        "\n## a new replica joins\n\nready (/readyz 200) {ready:.1} s after it started: {} points, \
         {} outside the graph; resident memory of the process {before:.0} -> {:.0} MiB (peak {:.0})",
        info.points,
        info.unindexed,
        status_mib("VmRSS:"),
        peak_rss_mib()
    );
    server_rt.block_on(replica.stop())?;
    Ok(())
}

fn replication(
    args: &Args,
    base: &[Vec<f32>],
    server_rt: &tokio::runtime::Runtime,
    client_rt: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    println!("\n## replication (leader + 2 learners, all on this machine)\n");
    let dirs: Vec<tempfile::TempDir> = (0..4)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let mk = |i: usize, join: Option<String>| {
        let mut c = Config::for_test(dirs[i].path());
        c.log = "warn".into();
        c.join = join;
        c.cluster_secret = Some(SECRET.into());
        c.heartbeat_ms = args.heartbeat_ms;
        c.snapshot_logs = 200;
        c.snapshot_min_interval_secs = 30;
        c
    };
    let leader = server_rt.block_on(Node::start(mk(0, None)))?;
    let r1 = server_rt.block_on(Node::start(mk(1, Some(leader.url()))))?;
    let r2 = server_rt.block_on(Node::start(mk(2, Some(leader.url()))))?;
    server_rt.block_on(
        leader
            .cluster
            .raft
            .wait(Some(Duration::from_secs(30)))
            .metrics(
                |m| m.membership_config.membership().nodes().count() == 3,
                "members",
            ),
    )?;
    let dim = base[0].len();
    let ccfg = CollectionConfig {
        dim,
        metric: Metric::Cosine,
        hnsw: HnswConfig {
            m: args.m,
            ef_construction: args.ef_construction,
        },
        quantization: args.quantization,
    };
    client_rt.block_on(Client::new(&leader.url(), None)?.create_collection(COLLECTION, &ccfg))?;
    let (secs, last) = client_rt.block_on(ingest_all(
        &leader.url(),
        base,
        args.ingest_concurrency,
        false,
    ))?;
    println!(
        "replicated durable ingest: {:.0} vectors/s ({} in {secs:.1} s)",
        base.len() as f64 / secs,
        base.len()
    );
    let started = Instant::now();
    for r in [&r1, &r2] {
        server_rt.block_on(
            r.cluster
                .raft
                .wait(Some(Duration::from_secs(600)))
                .applied_index_at_least(Some(last), "caught up"),
        )?;
    }
    println!(
        "both learners applied everything {:.2} s after the last acknowledgement",
        started.elapsed().as_secs_f64()
    );
    for e in [&leader.engine, &r1.engine, &r2.engine] {
        e.wait_indexed(Duration::from_secs(3600));
    }
    // Let the graph dumps that follow a large ingest finish: steady state is what is measured.
    std::thread::sleep(Duration::from_secs(5));
    println!("| target vectors/s | batch | achieved | visibility lag p50 ms | p99 ms |");
    println!("|---:|---:|---:|---:|---:|");
    for (rate, batch) in [(400, 1), (2_000, 10)] {
        let (achieved, p50, p99) =
            client_rt.block_on(visibility_lag(&leader.url(), &r1, base, rate, batch, 5.0))?;
        println!("| {rate} | {batch} | {achieved:.0} | {p50:.2} | {p99:.2} |");
    }
    // A new replica joins the loaded collection: snapshot, then log.
    let started = Instant::now();
    let r3 = server_rt.block_on(Node::start(mk(3, Some(leader.url()))))?;
    client_rt.block_on(common::wait_ready(&r3.url(), JOIN_WITHIN))?;
    let ready = started.elapsed().as_secs_f64();
    r3.engine.wait_indexed(Duration::from_secs(3600));
    let indexed = started.elapsed().as_secs_f64();
    println!("\nnew replica joining {} points: ready (/readyz 200, serving) after {ready:.2} s, graph complete after {indexed:.1} s", r3.engine.info(COLLECTION)?.points);
    for n in [r3, r2, r1, leader] {
        server_rt.block_on(n.stop())?;
    }
    Ok(())
}
