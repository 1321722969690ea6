//! Read throughput through `quiver gateway` with 1, 2 and 4 read replicas (prints a table;
//! asserts nothing). Every node and the gateway are real processes of the release binary on
//! loopback; the load generator is this process: `--clients` concurrent searches through the
//! gateway for `--secs` seconds per row, the same queries every row.
//!
//! ```text
//! cargo build --release && cargo run --release --example gateway_bench -- \
//!     --data ../shared/data/minilm-debian --replicas 1,2,4
//! ```
//!
//! On a 2-core machine every process shares the same cores, so the rows mostly show the
//! gateway's overhead; on a machine with cores to spare the rows show the scaling.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use quiver::dataset::{percentile, read_fvecs};
use quiver::model::{CollectionConfig, Metric, PointId, PointInput, SearchRequest};
use quiver_client::Client;
use quiver_client::Policy;

#[derive(Parser)]
struct Args {
    /// Data set folder with base.fvecs and queries.fvecs.
    #[arg(long, default_value = "../shared/data/minilm-debian")]
    data: PathBuf,
    /// The quiver binary.
    #[arg(long, default_value = "target/release/quiver")]
    bin: PathBuf,
    /// Base vectors to load.
    #[arg(long, default_value_t = 20_000)]
    limit: usize,
    /// Replica counts to measure, in increasing order.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    replicas: Vec<usize>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds of load per row.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Search breadth.
    #[arg(long, default_value_t = 32)]
    ef: usize,
    /// The gateway's read policy.
    #[arg(long, value_enum, default_value_t = Policy::PowerOfTwo)]
    policy: Policy,
    /// First port to use (nodes take the next ones, the gateway the last).
    #[arg(long, default_value_t = 17_300)]
    port: u16,
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn node(args: &Args, dir: &std::path::Path, port: u16, join: Option<&str>) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(&args.bin);
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--log", "warn"])
        .args(["--cluster-secret", "bench-cluster-secret-0123"])
        .stdout(Stdio::null());
    if let Some(j) = join {
        cmd.args(["--join", j]);
    }
    Ok(Proc(cmd.spawn()?))
}

async fn wait_ready(url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if reqwest::get(format!("{url}/readyz"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{url} not ready in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Until the node's graph holds every point (searches before that scan the unindexed tail).
async fn wait_indexed(url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let info = match reqwest::get(format!("{url}/collections/bench")).await {
            Ok(r) => r.json::<serde_json::Value>().await.ok(),
            Err(_) => None,
        };
        if info.is_some_and(|i| i["unindexed"] == 0) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{url} never finished indexing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `clients` loops of searches against `url` for `secs`: (qps, p50 ms, p99 ms, errors).
async fn load(
    url: &str,
    queries: Arc<Vec<Vec<f32>>>,
    clients: usize,
    secs: u64,
    ef: usize,
) -> (f64, f64, f64, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, queries, stop) = (
            Client::new(url, None).expect("client"),
            queries.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors, mut i) = (Vec::new(), 0usize, c * 7919);
            while !stop.load(Ordering::Relaxed) {
                let mut req = SearchRequest::new(queries[i % queries.len()].clone(), 10);
                req.ef = Some(ef);
                req.with_payload = false;
                // The queries repeat: measure the searches, not the query cache.
                req.cache = false;
                let t = Instant::now();
                match client.search("bench", &req).await {
                    Ok(_) => lat.push(t.elapsed().as_secs_f64() * 1e3),
                    Err(_) => errors += 1,
                }
                i += 1;
            }
            (lat, errors)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut lat, mut errors) = (Vec::new(), 0);
    for t in tasks {
        if let Ok((l, e)) = t.await {
            lat.extend(l);
            errors += e;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    (
        lat.len() as f64 / elapsed,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        errors,
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.bin.exists(),
        "{} not found: run `cargo build --release` first or pass --bin",
        args.bin.display()
    );
    let base = read_fvecs(&args.data.join("base.fvecs"), Some(args.limit))?;
    let queries = Arc::new(read_fvecs(&args.data.join("queries.fvecs"), None)?);
    let root = tempfile::tempdir()?;
    let primary_url = format!("http://127.0.0.1:{}", args.port);
    let primary = node(&args, &root.path().join("n0"), args.port, None)?;
    wait_ready(&primary_url).await?;
    let client = Client::new(&primary_url, None)?;
    let config = CollectionConfig::new(base[0].len(), Metric::Cosine);
    client.create_collection("bench", &config).await?;
    let t = Instant::now();
    for (n, chunk) in base.chunks(1_000).enumerate() {
        let points = chunk
            .iter()
            .enumerate()
            .map(|(i, v)| PointInput {
                id: PointId::Num((n * 1_000 + i) as u64),
                vector: v.clone(),
                payload: None,
            })
            .collect();
        client.upsert("bench", points).await?;
    }
    println!(
        "loaded {} vectors in {:.1} s; {} clients, ef {}, {} s per row, policy {:?}, {} cores",
        base.len(),
        t.elapsed().as_secs_f64(),
        args.clients,
        args.ef,
        args.secs,
        args.policy,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let max = args.replicas.iter().copied().max().unwrap_or(1);
    let gw_port = args.port + max as u16 + 1;
    let gateway_url = format!("http://127.0.0.1:{gw_port}");
    let mut replicas: Vec<(Proc, String)> = Vec::new();
    let mut gateway: Option<Proc> = None;
    println!("| replicas | through | QPS | p50 ms | p99 ms | errors |");
    println!("|---:|---|---:|---:|---:|---:|");
    for &want in &args.replicas {
        while replicas.len() < want {
            let port = args.port + 1 + replicas.len() as u16;
            let url = format!("http://127.0.0.1:{port}");
            let dir = root.path().join(format!("n{}", replicas.len() + 1));
            replicas.push((node(&args, &dir, port, Some(&primary_url))?, url));
        }
        for (_, url) in &replicas {
            wait_ready(url).await?;
            wait_indexed(url).await?;
        }
        // A fresh gateway per row, so that every row starts from the same balancer state.
        drop(gateway.take());
        let mut cmd = Command::new(&args.bin);
        cmd.arg("gateway")
            .args(["--nodes", &primary_url])
            .args(["--listen", &format!("127.0.0.1:{gw_port}")])
            .args(["--policy", policy_name(args.policy)])
            .args(["--log", "warn"]);
        gateway = Some(Proc(cmd.spawn()?));
        wait_gateway(&gateway_url, want).await?;
        // Warm up, then measure.
        let _ = load(&gateway_url, queries.clone(), args.clients, 1, args.ef).await;
        let (qps, p50, p99, errors) = load(
            &gateway_url,
            queries.clone(),
            args.clients,
            args.secs,
            args.ef,
        )
        .await;
        println!("| {want} | gateway | {qps:.0} | {p50:.2} | {p99:.2} | {errors} |");
        if want == args.replicas[0] {
            let direct = &replicas[0].1;
            let (qps, p50, p99, errors) =
                load(direct, queries.clone(), args.clients, args.secs, args.ef).await;
            println!(
                "| {want} | direct to the replica | {qps:.0} | {p50:.2} | {p99:.2} | {errors} |"
            );
        }
    }
    drop(gateway);
    drop(replicas);
    drop(primary);
    Ok(())
}

fn policy_name(p: Policy) -> &'static str {
    match p {
        Policy::RoundRobin => "round-robin",
        Policy::LeastOutstanding => "least-outstanding",
        Policy::PowerOfTwo => "power-of-two",
    }
}

async fn wait_gateway(url: &str, readers: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = match reqwest::get(format!("{url}/gateway/status")).await {
            Ok(r) => r.json::<serde_json::Value>().await.ok(),
            Err(_) => None,
        };
        if status.is_some_and(|s| s["readers"].as_array().is_some_and(|r| r.len() == readers)) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "gateway never saw {readers} readers"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
