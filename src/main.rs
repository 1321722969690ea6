//! The `quiver` binary: CLI parsing and dispatch only.

use clap::{Parser, Subcommand};
use quiver::cli::{DeriveArgs, ImportArgs, SearchArgs};
use quiver::config::Config;

#[derive(Parser)]
#[command(name = "quiver", version, about = "A replicated vector store")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node.
    Serve(Config),
    /// Load vectors from an .fvecs or JSON Lines file into a collection, over HTTP.
    Import(ImportArgs),
    /// Run one search from the command line.
    Search(SearchArgs),
    /// Run a stateless gateway: writes to the leader, reads spread over ready replicas.
    Gateway(quiver::gateway::GatewayConfig),
    /// Write a larger set derived from a real one as .fvecs (row i: base[i mod n] plus Gaussian
    /// noise, normalised), for `quiver import` and the benchmark at scale.
    Derive(DeriveArgs),
    /// Exit 0 when the URL answers 2xx within two seconds (container health checks; images
    /// carry no curl).
    Probe {
        /// URL to GET, e.g. http://127.0.0.1:7070/readyz.
        url: String,
    },
}

fn main() -> anyhow::Result<()> {
    quiver::alloc::limit_arenas();
    let cli = Cli::parse();
    let log = match &cli.cmd {
        Cmd::Serve(c) => c.log.clone(),
        Cmd::Gateway(c) => c.log.clone(),
        _ => "warn".to_string(),
    };
    quiver::telemetry::init_logging(&log);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Serve(config) => quiver::node::run(config, quiver::node::shutdown_signal()).await,
            Cmd::Import(args) => quiver::cli::import(args).await,
            Cmd::Search(args) => quiver::cli::search(args).await,
            Cmd::Gateway(config) => {
                quiver::gateway::run(config, quiver::node::shutdown_signal()).await
            }
            Cmd::Probe { url } => quiver::cli::probe(&url).await,
            Cmd::Derive(args) => quiver::cli::derive(args),
        }
    })
}
