//! Replication lag with real processes (issue 11): a leader and two read replicas of the release
//! binary on loopback, single-point writes at a fixed rate, and for every write the time from
//! the leader's acknowledgement until a replica serves the point (a point read on the replica,
//! round robin, with `min_index` set to the write's index: the replica answers once it has
//! applied it). Prints p50 / p99 / max per rate; asserts nothing.
//!
//! ```text
//! cargo build --release && cargo run --release --example lag -- --rates 400,2000 --secs 10
//! ```

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use quiver::dataset::{percentile, read_fvecs};
use quiver::model::{CollectionConfig, Metric, PointId, PointInput};
use quiver_client::Client;

#[derive(Parser)]
struct Args {
    /// The server binary.
    #[arg(long, default_value = "target/release/quiver")]
    bin: PathBuf,
    /// Data set folder with base.fvecs (the written vectors).
    #[arg(long, default_value = "../shared/data/minilm-debian")]
    data: PathBuf,
    /// Writes per second to measure at.
    #[arg(long, value_delimiter = ',', default_value = "400,2000")]
    rates: Vec<u64>,
    /// Seconds of writes per rate (the first second is not counted).
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Folder for the nodes' data directories (default: a temporary folder under the system's).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Extra flags for every node (e.g. `--heartbeat-ms 50`), space-separated.
    #[arg(long, default_value = "")]
    node_args: String,
    /// Write every counted probe as `rate,acked_ms,lag_ms,write_ms,replica` (CSV, `acked_ms`
    /// from the start of its rate) to this file, to see when the slow ones happen.
    #[arg(long)]
    trace: Option<PathBuf>,
}

const SECRET: &str = "lag-bench-cluster-secret-0123";

/// A node process, killed when dropped.
struct Node(Child, String);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn spawn(args: &Args, dir: &std::path::Path, join: Option<&str>) -> anyhow::Result<Node> {
    let port = free_port()?;
    let mut cmd = Command::new(&args.bin);
    cmd.arg("serve")
        .args(["--data-dir", &dir.to_string_lossy()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--cluster-secret", SECRET, "--log", "warn"])
        .args(args.node_args.split_whitespace())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(url) = join {
        cmd.args(["--join", url]);
    }
    Ok(Node(cmd.spawn()?, format!("http://127.0.0.1:{port}")))
}

async fn wait_ready(http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{url}/readyz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "{url} not ready after 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let vectors = Arc::new(read_fvecs(&args.data.join("base.fvecs"), Some(20_000))?);
    let root = match &args.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let http = reqwest::Client::new();
    let leader = spawn(&args, &root.path().join("n0"), None)?;
    wait_ready(&http, &leader.1).await?;
    let replicas = [
        spawn(&args, &root.path().join("n1"), Some(&leader.1))?,
        spawn(&args, &root.path().join("n2"), Some(&leader.1))?,
    ];
    for r in &replicas {
        wait_ready(&http, &r.1).await?;
    }
    let client = Client::new(&leader.1, None)?;
    client
        .create_collection(
            "lag",
            &CollectionConfig::new(vectors[0].len(), Metric::Cosine),
        )
        .await?;
    println!(
        "a leader and 2 replicas (`quiver serve` processes{}), single-point writes; lag = from the \
         leader's acknowledgement until a replica serves the point\n",
        if args.node_args.is_empty() {
            String::new()
        } else {
            format!(" with {}", args.node_args)
        }
    );
    println!("| writes/s | writes | achieved/s | lag p50 ms | p99 ms | max ms | write p50 ms | write p99 ms |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut next_id = 0u64;
    let mut trace = Vec::new();
    for &rate in &args.rates {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let total = rate * args.secs;
        for n in 0..total {
            tick.tick().await;
            let id = next_id;
            next_id += 1;
            let (client, http, vectors) = (client.clone(), http.clone(), vectors.clone());
            let replica = replicas[(n % 2) as usize].1.clone();
            let counted = n >= rate;
            tasks.spawn(async move {
                let point = PointInput {
                    id: PointId::Num(id),
                    vector: vectors[id as usize % vectors.len()].clone(),
                    payload: None,
                };
                let sent = Instant::now();
                let w = client.upsert("lag", vec![point]).await?;
                let acked = Instant::now();
                let r = http
                    .get(format!(
                        "{replica}/collections/lag/points/{id}?min_index={}",
                        w.index
                    ))
                    .send()
                    .await?;
                anyhow::ensure!(r.status().is_success(), "replica read: {}", r.status());
                let lag = acked.elapsed().as_secs_f64() * 1e3;
                let write = (acked - sent).as_secs_f64() * 1e3;
                let at = (acked - started).as_secs_f64() * 1e3;
                Ok::<_, anyhow::Error>(counted.then_some((lag, write, at, n % 2)))
            });
        }
        let (mut lag, mut write) = (Vec::new(), Vec::new());
        while let Some(r) = tasks.join_next().await {
            if let Some((l, w, at, replica)) = r?? {
                lag.push(l);
                write.push(w);
                trace.push((rate, at, l, w, replica));
            }
        }
        let secs = started.elapsed().as_secs_f64();
        lag.sort_by(f64::total_cmp);
        write.sort_by(f64::total_cmp);
        println!(
            "| {rate} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            lag.len(),
            total as f64 / secs,
            percentile(&lag, 0.5),
            percentile(&lag, 0.99),
            lag.last().copied().unwrap_or(0.0),
            percentile(&write, 0.5),
            percentile(&write, 0.99)
        );
    }
    if let Some(path) = &args.trace {
        trace.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let rows: String = trace
            .iter()
            .map(|(rate, at, l, w, r)| format!("{rate},{at:.3},{l:.3},{w:.3},{r}\n"))
            .collect();
        std::fs::write(path, rows)?;
    }
    drop(replicas);
    drop(leader);
    Ok(())
}
