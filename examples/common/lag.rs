//! Replication lag with real processes (issue 11): a leader and two read replicas of the release
//! binary on loopback, single-point writes at a fixed rate, and for every write the time from
//! the leader's acknowledgement until a replica serves the point (a point read on the replica,
//! round robin, with `min_index` set to the write's index: the replica answers once it has
//! applied it). Used by the `lag` and `bench` examples.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quiver::dataset::percentile;
use quiver::model::{CollectionConfig, Metric, PointId, PointInput};
use quiver_client::Client;

use super::{wait_ready, NodeProcess};

/// What to measure.
pub struct Lag {
    /// The server binary (`target/release/quiver`).
    pub bin: PathBuf,
    /// The vectors written, cycled through.
    pub vectors: Arc<Vec<Vec<f32>>>,
    /// Writes per second to measure at, one after the other.
    pub rates: Vec<u64>,
    /// Seconds of writes per rate (the first second is not counted).
    pub secs: u64,
    /// Folder for the nodes' data directories (default: the system's temporary folder).
    pub dir: Option<PathBuf>,
    /// Extra flags for every node, space-separated.
    pub node_args: String,
}

/// One counted write.
pub struct Probe {
    pub rate: u64,
    /// Milliseconds from the start of its rate to the leader's acknowledgement.
    pub acked_ms: f64,
    /// Milliseconds from the acknowledgement until the replica served the point.
    pub lag_ms: f64,
    /// Milliseconds the leader took to acknowledge.
    pub write_ms: f64,
    /// Which replica served it (0 or 1).
    pub replica: u64,
}

/// How long a node may take to start (or a replica to join).
const READY_WITHIN: Duration = Duration::from_secs(60);

/// Starts the three nodes, measures every rate and prints its row (the table's header first);
/// returns every counted probe.
pub async fn measure(lag: &Lag) -> anyhow::Result<Vec<Probe>> {
    let root = match &lag.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let http = reqwest::Client::new();
    let spawn = |dir: &str, join: Option<&str>| {
        NodeProcess::spawn(&lag.bin, &root.path().join(dir), join, &lag.node_args)
    };
    let leader = spawn("n0", None)?;
    wait_ready(&leader.url, READY_WITHIN).await?;
    let replicas = [
        spawn("n1", Some(&leader.url))?,
        spawn("n2", Some(&leader.url))?,
    ];
    for r in &replicas {
        wait_ready(&r.url, READY_WITHIN).await?;
    }
    let client = Client::new(&leader.url, None)?;
    let dim = lag.vectors.first().map_or(0, Vec::len);
    client
        .create_collection("lag", &CollectionConfig::new(dim, Metric::Cosine))
        .await?;
    println!(
        "a leader and 2 replicas (`quiver serve` processes{}), single-point writes; lag = from the \
         leader's acknowledgement until a replica serves the point\n",
        if lag.node_args.is_empty() {
            String::new()
        } else {
            format!(" with {}", lag.node_args)
        }
    );
    println!("| writes/s | writes | achieved/s | lag p50 ms | p99 ms | max ms | write p50 ms | write p99 ms |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut next_id = 0u64;
    let mut probes = Vec::new();
    for &rate in &lag.rates {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let total = rate * lag.secs;
        for n in 0..total {
            tick.tick().await;
            let id = next_id;
            next_id += 1;
            let (client, http, vectors) = (client.clone(), http.clone(), lag.vectors.clone());
            let replica = n % 2;
            let url = replicas[replica as usize].url.clone();
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
                        "{url}/collections/lag/points/{id}?min_index={}",
                        w.index
                    ))
                    .send()
                    .await?;
                anyhow::ensure!(r.status().is_success(), "replica read: {}", r.status());
                Ok::<_, anyhow::Error>(counted.then(|| Probe {
                    rate,
                    acked_ms: (acked - started).as_secs_f64() * 1e3,
                    lag_ms: acked.elapsed().as_secs_f64() * 1e3,
                    write_ms: (acked - sent).as_secs_f64() * 1e3,
                    replica,
                }))
            });
        }
        let mut these = Vec::new();
        while let Some(r) = tasks.join_next().await {
            these.extend(r??);
        }
        let secs = started.elapsed().as_secs_f64();
        let mut lags: Vec<f64> = these.iter().map(|p| p.lag_ms).collect();
        let mut writes: Vec<f64> = these.iter().map(|p| p.write_ms).collect();
        lags.sort_by(f64::total_cmp);
        writes.sort_by(f64::total_cmp);
        println!(
            "| {rate} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            lags.len(),
            total as f64 / secs,
            percentile(&lags, 0.5),
            percentile(&lags, 0.99),
            lags.last().copied().unwrap_or(0.0),
            percentile(&writes, 0.5),
            percentile(&writes, 0.99)
        );
        these.sort_by(|a, b| a.acked_ms.total_cmp(&b.acked_ms));
        probes.extend(these);
    }
    Ok(probes)
}
