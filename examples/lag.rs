//! Replication lag with real processes (issue 11): a leader and two read replicas of the release
//! binary on loopback, single-point writes at a fixed rate, and for every write the time from
//! the leader's acknowledgement until a replica serves the point (see `common/lag.rs`). Prints
//! p50 / p99 / max per rate; asserts nothing. The bench prints the same table.
//!
//! ```text
//! cargo build --release && cargo run --release --example lag -- --rates 400,2000 --secs 10
//! ```

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use quiver::dataset::read_fvecs;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    inputs: common::Inputs,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let lag = common::lag::Lag {
        bin: args.inputs.bin,
        vectors: Arc::new(read_fvecs(
            &args.inputs.data.join("base.fvecs"),
            Some(20_000),
        )?),
        rates: args.rates,
        secs: args.secs,
        dir: args.dir,
        node_args: args.node_args,
    };
    let probes = common::lag::measure(&lag).await?;
    if let Some(path) = &args.trace {
        let rows: String = probes
            .iter()
            .map(|p| {
                format!(
                    "{},{:.3},{:.3},{:.3},{}\n",
                    p.rate, p.acked_ms, p.lag_ms, p.write_ms, p.replica
                )
            })
            .collect();
        std::fs::write(path, rows)?;
    }
    Ok(())
}
