//! Code shared by the examples (not an example itself: cargo builds only `examples/*.rs` and
//! `examples/*/main.rs`).

// Each example uses some of these modules: what one leaves unused is used by another.
#[allow(dead_code)]
pub mod lag;
#[allow(dead_code)]
pub mod pgvector;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `--quantization` argument, spelled as in a collection's JSON config (`none`, `int8`,
/// `int8_ram`).
#[allow(dead_code)]
pub fn parse_quantization(s: &str) -> Result<quiver::model::Quantization, String> {
    serde_json::from_value(serde_json::Value::String(s.into())).map_err(|e| e.to_string())
}

// Where the examples that start node processes find the server and the data set (a plain
// comment: clap would take a doc comment as the help text of every example that uses it).
#[derive(clap::Args)]
pub struct Inputs {
    /// The server binary.
    #[arg(long, default_value = "target/release/quiver")]
    pub bin: PathBuf,
    /// The shared data set folder (base.fvecs, queries.fvecs, groundtruth.ivecs).
    #[arg(long, default_value = "../shared/data/minilm-debian")]
    pub data: PathBuf,
}

/// The cluster secret of the examples' node processes.
const SECRET: &str = "examples-cluster-secret-0123";

/// A `quiver serve` process on a free loopback port, killed when dropped.
pub struct NodeProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl NodeProcess {
    /// Starts `bin serve` with its data in `dir`, joining `join` if given, with `extra` flags
    /// (space-separated); its log (warnings only) goes to stderr.
    pub fn spawn(bin: &Path, dir: &Path, join: Option<&str>, extra: &str) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--cluster-secret", SECRET, "--log", "warn"])
            .args(extra.split_whitespace())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(url) = join {
            cmd.args(["--join", url]);
        }
        Ok(NodeProcess {
            child: cmd.spawn()?,
            url: format!("http://127.0.0.1:{port}"),
        })
    }
}

impl NodeProcess {
    /// The process's resident memory (`VmRSS`) in MiB; 0 when it cannot be read (off Linux).
    #[allow(dead_code)]
    pub fn rss_mib(&self) -> f64 {
        status_mib(&format!("/proc/{}/status", self.child.id()), "VmRSS:")
    }
}

/// A memory line (`VmHWM:`, `VmRSS:`) of a `/proc/*/status` file in MiB; 0 when it cannot be
/// read (off Linux).
#[allow(dead_code)]
pub fn status_mib(status: &str, key: &str) -> f64 {
    std::fs::read_to_string(status)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `{url}/readyz` until it answers 2xx; an error after `within`.
pub async fn wait_ready(url: &str, within: Duration) -> anyhow::Result<()> {
    let ready_url = format!("{url}/readyz");
    let deadline = Instant::now() + within;
    loop {
        if reqwest::get(&ready_url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{url} not ready after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
