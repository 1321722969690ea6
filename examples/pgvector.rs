//! quiver against PostgreSQL + pgvector under the same C-client search load (issue 11), in one
//! run: pgvector's streaming standby with pgbench, a quiver read replica with wrk, at matched
//! recall@10, one side after the other for each client count (see `common/pgvector.rs`). Prints
//! the table; asserts nothing. The bench prints the same table with `--pgvector`.
//!
//! ```text
//! ../shared/peers/pgvector/setup.sh ../peers-venv
//! ../peers-venv/bin/python ../shared/peers/pgvector/standby.py
//! cargo build --release && cargo run --release --example pgvector -- --pg-clients 4,8 --pg-rounds 2
//! ../peers-venv/bin/python ../shared/peers/pgvector/standby.py stop
//! ```

mod common;

use clap::Parser;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    inputs: common::Inputs,
    #[command(flatten)]
    against: common::pgvector::Against,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    common::pgvector::measure(&args.inputs.bin, &args.inputs.data, &args.against).await
}
