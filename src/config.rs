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
    #[arg(long, env = "QUIVER_MAX_BODY_BYTES", default_value_t = MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Search breadth used when a request gives no `ef`.
    #[arg(long, env = "QUIVER_DEFAULT_EF", default_value_t = 64)]
    pub default_ef: usize,
    /// Most points a collection may hold outside its HNSW graph before writes wait (backpressure).
    #[arg(long, env = "QUIVER_MAX_UNINDEXED", default_value_t = EngineOptions::MAX_UNINDEXED)]
    pub max_unindexed: u64,
    /// Rebuild a graph when deleted points exceed this fraction of it.
    #[arg(long, env = "QUIVER_REBUILD_RATIO", default_value_t = EngineOptions::REBUILD_RATIO)]
    pub rebuild_ratio: f64,
    /// The leader compacts a collection (rebuilds its graph without its tombstones, on every
    /// node at the same log index) once it has taken no write for this long, in seconds (0: off).
    #[arg(long, env = "QUIVER_COMPACT_IDLE_SECS", default_value_t = 30)]
    pub compact_idle_secs: u64,
    /// ... if its tombstones are at least this fraction of its graph's points.
    #[arg(long, env = "QUIVER_COMPACT_RATIO", default_value_t = 0.02)]
    pub compact_ratio: f64,
    /// Collections with at most this many points are searched exactly.
    #[arg(long, env = "QUIVER_EXACT_BELOW", default_value_t = EngineOptions::EXACT_BELOW)]
    pub exact_below: usize,
    /// sled page cache, in MiB.
    #[arg(long, env = "QUIVER_CACHE_MB", default_value_t = EngineOptions::CACHE_MB)]
    pub cache_mb: u64,
    /// Query cache, in MiB (0: off): answers served while their collection is unchanged.
    #[arg(long, env = "QUIVER_QUERY_CACHE_MB", default_value_t = EngineOptions::QUERY_CACHE_MB)]
    pub query_cache_mb: u64,
    /// Most points coalesced into one durable write (group commit).
    #[arg(long, env = "QUIVER_MAX_BATCH_POINTS", default_value_t = 4_096)]
    pub max_batch_points: usize,
    /// URL peers and clients use to reach this node (default: `http://` + the bound address);
    /// `auto`: this host's IP on the route to the cluster (for containers), with the bound port.
    #[arg(long, env = "QUIVER_ADVERTISE")]
    pub advertise: Option<String>,
    /// Join the cluster at this URL (any member; several, comma-separated, are tried in turn) as
    /// a read replica (a Raft learner).
    #[arg(long, env = "QUIVER_JOIN")]
    pub join: Option<String>,
    /// Without `--join`: the other voters' URLs (comma-separated). A node with no state first
    /// asks them for the cluster; if one knows a leader, it joins that cluster as a voter instead
    /// of initialising a new one (so a first voter whose volume was lost cannot start a second
    /// cluster beside the first).
    #[arg(long, env = "QUIVER_PEERS")]
    pub peers: Option<String>,
    /// With `--join`: join as a voter instead (for a 3-voter primary group with failover).
    #[arg(long, env = "QUIVER_VOTER")]
    pub voter: bool,
    /// Secret required on Raft RPC and cluster membership calls (`/raft/*`,
    /// `/cluster/{join,leave,promote,read_index}`), and sent to peers; at least 16 characters,
    /// the same on every node. Required with `--join`, `--peers` and `--voter`. Without it a node
    /// makes up a random secret that nobody else knows: its internal endpoints are closed, and it
    /// can neither take nor join other nodes.
    #[arg(long, env = "QUIVER_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Longest a `min_index` or linearizable read waits for this node to catch up, in ms.
    #[arg(long, env = "QUIVER_READ_WAIT_MS", default_value_t = 5_000)]
    pub read_wait_ms: u64,
    /// `/readyz` fails while this node trails the leader's commit index by more entries.
    #[arg(long, env = "QUIVER_READY_MAX_LAG", default_value_t = 100)]
    pub ready_max_lag: u64,
    /// The leader removes a learner that has not answered for this long, in seconds.
    #[arg(long, env = "QUIVER_LEARNER_EXPIRY_SECS", default_value_t = 30)]
    pub learner_expiry_secs: u64,
    /// Raft heartbeat interval, in ms (elections time out after 5 to 10 heartbeats). openraft also
    /// uses it as the timeout of each AppendEntries, so it must cover sending a batch and the
    /// replica's fsync.
    #[arg(long, env = "QUIVER_HEARTBEAT_MS", default_value_t = 250)]
    pub heartbeat_ms: u64,
    /// Build a snapshot (and purge the log) after this many log entries.
    #[arg(long, env = "QUIVER_SNAPSHOT_LOGS", default_value_t = 1_000)]
    pub snapshot_logs: u64,
    /// ... but not more often than every this many seconds (a snapshot rewrites the whole state).
    #[arg(long, env = "QUIVER_SNAPSHOT_MIN_INTERVAL_SECS", default_value_t = 30)]
    pub snapshot_min_interval_secs: u64,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info,quiver=debug`.
    #[arg(long, env = "QUIVER_LOG", default_value = crate::telemetry::DEFAULT_LOG)]
    pub log: String,
    /// Tests only: a snapshot install pauses this long midway through its import, in ms.
    #[arg(
        long,
        env = "QUIVER_TEST_INSTALL_DELAY_MS",
        default_value_t = 0,
        hide = true
    )]
    pub test_install_delay_ms: u64,
}

/// The defaults of a settings struct as its flags declare them, with `args` (for required
/// flags) and without reading the environment: the one source of the defaults that tests use.
pub fn defaults_of<T: clap::Args + clap::FromArgMatches>(args: &[&str]) -> T {
    let cmd = T::augment_args(clap::Command::new("quiver")).mut_args(|a| a.env(None));
    let matches = cmd
        .try_get_matches_from(std::iter::once("quiver").chain(args.iter().copied()))
        .expect("the declared defaults parse");
    T::from_arg_matches(&matches).expect("the declared defaults fit their fields")
}

/// Default largest request body, in bytes (node and gateway).
pub const MAX_BODY_BYTES: usize = 64 << 20;

/// Shortest `--cluster-secret` accepted.
pub const MIN_SECRET_CHARS: usize = 16;

fn url_list(list: Option<&str>) -> Vec<String> {
    let parts: Vec<String> = list
        .into_iter()
        .flat_map(|j| j.split(','))
        .map(str::to_string)
        .collect();
    crate::topology::normalise(&parts)
}

impl Config {
    /// The cluster secret, and whether it was made up because none was given (a node alone, whose
    /// internal endpoints nobody can then call).
    pub fn secret(&self) -> (String, bool) {
        match &self.cluster_secret {
            Some(s) => (s.clone(), false),
            None => {
                let bytes: [u8; 32] = rand::random();
                (bytes.iter().map(|b| format!("{b:02x}")).collect(), true)
            }
        }
    }

    /// The `--join` URLs.
    pub fn join_urls(&self) -> Vec<String> {
        url_list(self.join.as_deref())
    }

    /// The `--peers` URLs.
    pub fn peer_urls(&self) -> Vec<String> {
        url_list(self.peers.as_deref())
    }

    /// `quiver serve`'s defaults (the environment ignored), as a test starts from them.
    pub fn defaults(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            ..defaults_of(&[])
        }
    }

    /// Defaults for tests: `quiver serve`'s, on an ephemeral loopback port, with faster
    /// heartbeats (elections in tests take 0.5-1 s), a smaller page cache, snapshots as soon as
    /// they are due, and quiet logs.
    pub fn for_test(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            cache_mb: 64,
            heartbeat_ms: 100,
            snapshot_min_interval_secs: 0,
            log: "warn".into(),
            ..Config::defaults(data_dir)
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
            (0.0..1.0).contains(&self.compact_ratio),
            "--compact-ratio must be in [0, 1)"
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
        if let Some(s) = &self.cluster_secret {
            anyhow::ensure!(
                s.chars().count() >= MIN_SECRET_CHARS,
                "--cluster-secret must be at least {MIN_SECRET_CHARS} characters (e.g. `openssl rand -hex 24`)"
            );
        } else {
            anyhow::ensure!(
                self.join.is_none() && self.peers.is_none() && !self.voter,
                "--join, --peers and --voter need --cluster-secret (QUIVER_CLUSTER_SECRET), the same on every node"
            );
        }
        if let (Some(a), Some(b)) = (&self.api_key, &self.read_only_api_key) {
            anyhow::ensure!(a != b, "--api-key and --read-only-api-key must differ");
        }
        Ok(())
    }

    /// openraft's settings.
    pub fn raft_config(&self) -> anyhow::Result<openraft::Config> {
        let cfg = openraft::Config {
            cluster_name: "quiver".into(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.heartbeat_ms * 5,
            election_timeout_max: self.heartbeat_ms * 10,
            // Per snapshot chunk; the last chunk also waits for the receiver's install.
            install_snapshot_timeout: 120_000,
            // Snapshots are triggered by `Cluster::spawn_snapshot_policy` (count and interval).
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: (self.snapshot_logs / 2).min(100),
            max_payload_entries: 16,
            ..Default::default()
        };
        Ok(cfg.validate()?)
    }

    /// The engine's share of the settings.
    pub fn engine_options(&self) -> EngineOptions {
        let mut o = EngineOptions::new(&self.data_dir);
        o.cache_bytes = self.cache_mb << 20;
        o.query_cache_bytes = self.query_cache_mb.saturating_mul(1 << 20);
        o.max_unindexed = self.max_unindexed;
        o.rebuild_ratio = self.rebuild_ratio;
        o.exact_below = self.exact_below;
        o.install_delay = std::time::Duration::from_millis(self.test_install_delay_ms);
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_defaults_are_the_cli_defaults() {
        let from_cli = Config::defaults("d").engine_options();
        assert_eq!(
            format!("{from_cli:?}"),
            format!("{:?}", EngineOptions::new("d"))
        );
        let gateway: crate::gateway::GatewayConfig = defaults_of(&["--nodes", "http://a"]);
        assert_eq!(gateway.max_body_bytes, Config::defaults("d").max_body_bytes);
        assert_eq!(gateway.nodes, ["http://a"]);
    }
}
