//! Code shared by the examples (not an example itself: cargo builds only `examples/*.rs` and
//! `examples/*/main.rs`).

pub mod lag;

use std::time::{Duration, Instant};

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
