//! Helpers shared by the test binaries. Each `tests/*.rs` is its own crate that declares
//! `mod common;` and uses a part of this, hence `allow(dead_code)`.
//!
//! - here: waits on a polled condition with a deadline (never a fixed sleep), and in-process
//!   nodes on port 0 over loopback with waits on Raft metrics;
//! - [`http`]: one JSON request (body, API key, status, headers, JSON answer) and `/cluster`;
//! - [`process`]: the real `quiver` binary as a child process (kill -9, SIGTERM, restart).
#![allow(dead_code)]

pub mod http;
pub mod process;

use std::future::Future;
use std::time::{Duration, Instant};

use quiver::config::Config;
use quiver::model::{CollectionConfig, Consistency, Metric, PointId, PointInput, SearchRequest};
use quiver::node::Node;
use tempfile::TempDir;

pub const WAIT: Duration = Duration::from_secs(30);
/// The cluster secret every in-process test node shares.
pub const SECRET: &str = "test-cluster-secret-0123";

/// Polls `f` every 20 ms until it is true; panics naming `what` after [`WAIT`].
pub async fn eventually<F: Future<Output = bool>>(what: &str, f: impl FnMut() -> F) {
    eventually_within(what, WAIT, Duration::from_millis(20), f).await;
}

/// Polls `f` every `every` until it is true; panics naming `what` once `limit` has passed.
pub async fn eventually_within<F: Future<Output = bool>>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> F,
) {
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(every).await;
    }
}

pub async fn start(
    join: Option<&str>,
    voter: bool,
    tweak: impl FnOnce(&mut Config),
) -> (Node, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_test(dir.path());
    config.join = join.map(str::to_string);
    config.voter = voter;
    config.cluster_secret = Some(SECRET.into());
    tweak(&mut config);
    (Node::start(config).await.unwrap(), dir)
}

pub async fn wait_members(node: &Node, n: usize) {
    node.cluster
        .raft
        .wait(Some(WAIT))
        .metrics(
            |m| m.membership_config.membership().nodes().count() == n,
            "members",
        )
        .await
        .unwrap();
}

pub async fn wait_applied(node: &Node, index: u64) {
    node.cluster
        .raft
        .wait(Some(WAIT))
        .applied_index_at_least(Some(index), "applied")
        .await
        .unwrap();
}

pub fn points(from: u64, n: u64) -> Vec<PointInput> {
    (from..from + n)
        .map(|i| PointInput {
            id: PointId::Num(i),
            vector: vec![
                (i % 97) as f32 / 97.0,
                (i % 13) as f32 / 13.0,
                1.0,
                (i as f32).sin(),
            ],
            payload: Some(serde_json::json!({"i": i})),
        })
        .collect()
}

pub fn config4() -> CollectionConfig {
    CollectionConfig::new(4, Metric::L2)
}

pub fn query(min_index: u64) -> SearchRequest {
    let mut q = SearchRequest::new(vec![0.5, 0.5, 1.0, 0.0], 10);
    q.exact = true;
    q.consistency = Some(Consistency::MinIndex { min_index });
    q
}

/// A leader and two nodes that joined it as voters, once all three are voters.
pub async fn start_three_voters() -> [(Node, TempDir); 3] {
    let a = start(None, false, |_| {}).await;
    let b = start(Some(&a.0.url()), true, |_| {}).await;
    let c = start(Some(&a.0.url()), true, |_| {}).await;
    a.0.cluster
        .raft
        .wait(Some(WAIT))
        .metrics(
            |m| m.membership_config.membership().voter_ids().count() == 3,
            "three voters",
        )
        .await
        .unwrap();
    [a, b, c]
}
