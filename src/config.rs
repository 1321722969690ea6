//! Every setting, from flags or `QUIVER_*` environment variables, with defaults that make
//! `quiver serve` work alone. No other module reads the environment.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::engine::EngineOptions;

/// Settings of a serving node (`quiver serve`).
#[derive(Clone, Debug, Args)]
pub struct Config {
    /// Directory for the database and graph dumps (created if missing).
    #[arg(long, env = "QUIVER_DATA_DIR", default_value = "quiver-data")]
    pub data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "QUIVER_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// When set, every request must carry `Authorization: Bearer <key>` (or `api-key: <key>`).
    #[arg(long, env = "QUIVER_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// When set, this key is accepted for reads only (writes answer 403).
    #[arg(long, env = "QUIVER_READ_ONLY_API_KEY", hide_env_values = true)]
    pub read_only_api_key: Option<String>,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "QUIVER_MAX_BODY_BYTES", default_value_t = 64 << 20)]
    pub max_body_bytes: usize,
    /// Search breadth used when a request gives no `ef`.
    #[arg(long, env = "QUIVER_DEFAULT_EF", default_value_t = 64)]
    pub default_ef: usize,
    /// Most points a collection may hold outside its HNSW graph before writes wait (backpressure).
    #[arg(long, env = "QUIVER_MAX_UNINDEXED", default_value_t = 20_000)]
    pub max_unindexed: u64,
    /// Rebuild a graph when deleted points exceed this fraction of it.
    #[arg(long, env = "QUIVER_REBUILD_RATIO", default_value_t = 0.2)]
    pub rebuild_ratio: f64,
    /// Collections with at most this many points are searched exactly.
    #[arg(long, env = "QUIVER_EXACT_BELOW", default_value_t = 1_000)]
    pub exact_below: usize,
    /// sled page cache, in MiB.
    #[arg(long, env = "QUIVER_CACHE_MB", default_value_t = 256)]
    pub cache_mb: u64,
    /// Most points coalesced into one durable write (group commit).
    #[arg(long, env = "QUIVER_MAX_BATCH_POINTS", default_value_t = 20_000)]
    pub max_batch_points: usize,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info,quiver=debug`.
    #[arg(long, env = "QUIVER_LOG", default_value = "info")]
    pub log: String,
}

impl Config {
    /// Defaults for tests: a data dir, an ephemeral port on loopback.
    pub fn for_test(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_key: None,
            read_only_api_key: None,
            max_body_bytes: 64 << 20,
            default_ef: 64,
            max_unindexed: 20_000,
            rebuild_ratio: 0.2,
            exact_below: 1_000,
            cache_mb: 64,
            max_batch_points: 20_000,
            log: "warn".into(),
        }
    }

    /// Fails fast on settings that cannot work.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.default_ef >= 1 && self.default_ef <= crate::model::MAX_K,
            "--default-ef must be 1..=10000"
        );
        anyhow::ensure!(
            self.rebuild_ratio > 0.0 && self.rebuild_ratio < 1.0,
            "--rebuild-ratio must be in (0, 1)"
        );
        anyhow::ensure!(
            self.max_body_bytes >= 1024,
            "--max-body-bytes must be at least 1024"
        );
        anyhow::ensure!(
            self.max_batch_points >= 1,
            "--max-batch-points must be at least 1"
        );
        anyhow::ensure!(
            self.max_unindexed >= 1,
            "--max-unindexed must be at least 1"
        );
        if let (Some(a), Some(b)) = (&self.api_key, &self.read_only_api_key) {
            anyhow::ensure!(a != b, "--api-key and --read-only-api-key must differ");
        }
        Ok(())
    }

    /// The engine's share of the settings.
    pub fn engine_options(&self) -> EngineOptions {
        let mut o = EngineOptions::new(&self.data_dir);
        o.cache_bytes = self.cache_mb << 20;
        o.max_unindexed = self.max_unindexed;
        o.rebuild_ratio = self.rebuild_ratio;
        o.exact_below = self.exact_below;
        o
    }
}
