//! One outside view of a cluster, and the rules for sending it requests. The Rust [`Client`] and
//! `quiver gateway` both route through a [`Routing`], so they keep the same discovery state and
//! follow the same retry rules. These rules are a correctness contract:
//!
//! - **A write is sent again only when it provably did not apply**: the connection was never
//!   made, or the node answered 503 `not_leader` (refused before proposing). A write whose
//!   connection broke after it was sent, or that got any other answer, is never resent behind the
//!   caller's back. Writes go to the leader first, then to any other known node (every node
//!   forwards writes to the leader).
//! - **A read is retried once, on another node, only when the first did no work**: the
//!   connection was never made, or the node answered 503 (not ready, no leader, too stale) or a
//!   quiver 504 `read_timeout` (it waited for an index and gave up before reading). A read whose
//!   connection broke after it was sent is not repeated: it may be what killed the node. When no
//!   replica is ready, the leader answers.
//! - **Discovery** asks every known node for `GET /cluster`, believes the view naming a leader in
//!   the highest term, and probes each member's `/readyz` ([`topology::discover`]). When no node
//!   answers, the last view stays.
//!
//! The transport is the caller's: [`Routing::read`] and [`Routing::write`] take a function that
//! sends the request to one node and returns its whole answer.
//!
//! [`Client`]: crate::Client

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use reqwest::StatusCode;
use tokio::sync::Notify;

use crate::balance::{Balancer, Policy};
use crate::topology::{self, MemberView};
use crate::wire::ErrorBody;

/// Settings of a [`Routing`].
#[derive(Clone, Debug)]
pub struct RoutingConfig {
    /// Nodes to start from (any members; more are discovered). Trailing slashes are trimmed.
    pub seeds: Vec<String>,
    /// How reads pick a node.
    pub policy: Policy,
    /// API key for the discovery calls.
    pub api_key: Option<String>,
    /// Learn the leader and the ready replicas from `GET /cluster`. Off: writes go to the seeds
    /// in order and reads are spread over all of them.
    pub discover: bool,
    /// Also read from the leader (by default it serves reads only when no replica is ready).
    pub read_from_leader: bool,
    /// Rediscover in the background of reads at most this often.
    pub refresh_every: Duration,
    /// Timeout of each discovery call.
    pub probe_timeout: Duration,
}

/// What one node answered: status, whole body, and whatever else the transport keeps (the
/// gateway keeps the headers).
#[derive(Debug)]
pub struct Answer<T> {
    /// HTTP status.
    pub status: StatusCode,
    /// The whole body.
    pub body: Bytes,
    /// Transport-specific extras.
    pub extra: T,
}

/// The answer a request ended with, and the node that gave it.
#[derive(Debug)]
pub struct Served<T> {
    /// The node's URL.
    pub node: String,
    /// Its answer (which may be an error answer; the rules above decide whether to try another).
    pub answer: Answer<T>,
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// No node to send it to.
    #[error("no node available: {0}")]
    NoNode(String),
    /// The request could not be completed with `node`. With `sent` false it never reached the
    /// node (connection refused or connect timeout); with `sent` true it may have been applied.
    #[error("{node}: {error}")]
    Transport {
        /// The node's URL.
        node: String,
        /// What went wrong.
        error: reqwest::Error,
        /// Whether the request may have reached the node.
        sent: bool,
    },
}

/// The discovery state and retry rules shared by the client and the gateway.
pub struct Routing {
    config: RoutingConfig,
    probe: reqwest::Client,
    /// Nodes to ask for the membership: the seeds, then every member seen.
    known: RwLock<Vec<String>>,
    leader: RwLock<Option<String>>,
    members: RwLock<Vec<MemberView>>,
    readers: Balancer,
    refreshes: AtomicU64,
    last_refresh: Mutex<Option<Instant>>,
    /// One discovery round at a time, so that an older view never overwrites a newer one.
    refreshing: tokio::sync::Mutex<()>,
    wanted: Notify,
}

/// Whether an error answer says the node refused a read before doing any of its work, so that
/// another node may be asked: 503 (not ready, no leader, stale) or a quiver 504 `read_timeout`
/// (the wait for an index expired before the read ran). A 502, or a 504 from something between
/// the caller and the node, says nothing of what the node did.
pub fn refused_before_work(status: StatusCode, body: &[u8]) -> bool {
    match status.as_u16() {
        503 => true,
        504 => ErrorBody::code_of(body).as_deref() == Some("read_timeout"),
        _ => false,
    }
}

/// Whether an answer is a 503 `not_leader`: refused before it was proposed, so safe to send
/// elsewhere.
pub fn is_not_leader(status: StatusCode, body: &[u8]) -> bool {
    status == StatusCode::SERVICE_UNAVAILABLE
        && ErrorBody::code_of(body).as_deref() == Some("not_leader")
}

impl Routing {
    /// A routing over `config.seeds`, without touching the network: reads go to the seeds until
    /// the first discovery round.
    pub fn new(config: RoutingConfig) -> Result<Routing, Failure> {
        let seeds = topology::normalise(&config.seeds);
        if seeds.is_empty() {
            return Err(Failure::NoNode("no URL given".into()));
        }
        let probe = reqwest::Client::builder()
            .timeout(config.probe_timeout)
            .build()
            .map_err(|e| Failure::NoNode(format!("cannot build an HTTP client: {e}")))?;
        let readers = Balancer::new(config.policy);
        readers.set(seeds.clone());
        Ok(Routing {
            known: RwLock::new(seeds.clone()),
            config: RoutingConfig { seeds, ..config },
            probe,
            leader: RwLock::new(None),
            members: RwLock::new(Vec::new()),
            readers,
            refreshes: AtomicU64::new(0),
            last_refresh: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            wanted: Notify::new(),
        })
    }

    /// The seeds, normalised.
    pub fn seeds(&self) -> &[String] {
        &self.config.seeds
    }

    /// The settings.
    pub fn config(&self) -> &RoutingConfig {
        &self.config
    }

    /// The leader's URL, as last discovered.
    pub fn leader(&self) -> Option<String> {
        self.leader.read().clone()
    }

    /// The members at the last discovery round.
    pub fn members(&self) -> Vec<MemberView> {
        self.members.read().clone()
    }

    /// Where reads go, with per-node counters.
    pub fn readers(&self) -> &Balancer {
        &self.readers
    }

    /// Completed discovery rounds.
    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }

    /// Rediscovers the leader and the ready members now. `false` when no node answered (the last
    /// view then stays: requests fail over by themselves, or answer 503).
    pub async fn refresh(&self) -> bool {
        let _one_at_a_time = self.refreshing.lock().await;
        *self.last_refresh.lock() = Some(Instant::now());
        let candidates = self.known.read().clone();
        let api_key = self.config.api_key.as_deref();
        let Some(topo) = topology::discover(&self.probe, &candidates, api_key).await else {
            tracing::debug!(
                ?candidates,
                "no node answered GET /cluster; keeping the last view"
            );
            return false;
        };
        self.readers.set(topo.readers(self.config.read_from_leader));
        topology::merge_known(&mut self.known.write(), &self.config.seeds, &topo);
        *self.members.write() = topo.members;
        *self.leader.write() = topo.leader;
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Asks for a discovery round soon: the next read starts one, and [`Routing::wanted`]
    /// wakes whoever refreshes in a loop.
    pub fn refresh_soon(&self) {
        *self.last_refresh.lock() = None;
        self.wanted.notify_one();
    }

    /// Resolves when someone asked for a discovery round ([`Routing::refresh_soon`]).
    pub async fn wanted(&self) {
        self.wanted.notified().await
    }

    /// Starts a discovery round in the background when one is due (reads never wait for it).
    fn refresh_if_due(self: &Arc<Self>) {
        if !self.config.discover {
            return;
        }
        let due = {
            let mut last = self.last_refresh.lock();
            let due = last.is_none_or(|t| t.elapsed() >= self.config.refresh_every);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            let me = self.clone();
            tokio::spawn(async move { me.refresh().await });
        }
    }

    /// Nodes to try for a write: the leader first, then every other known node.
    fn write_targets(&self) -> Vec<String> {
        let mut out: Vec<String> = self.leader.read().iter().cloned().collect();
        for u in self.known.read().iter() {
            if !out.contains(u) {
                out.push(u.clone());
            }
        }
        out
    }

    /// Sends a write with `send(node, attempt)` by the write rule above.
    pub async fn write<T, F, Fut>(&self, send: F) -> Result<Served<T>, Failure>
    where
        F: Fn(String, usize) -> Fut,
        Fut: Future<Output = reqwest::Result<Answer<T>>>,
    {
        let discover = self.config.discover;
        if discover && self.leader().is_none() {
            self.refresh().await;
        }
        let mut tried: Vec<String> = Vec::new();
        let mut rediscovered = false;
        let mut last = None;
        loop {
            let next = self
                .write_targets()
                .into_iter()
                .find(|u| !tried.contains(u));
            let Some(node) = next else { break };
            tried.push(node.clone());
            match send(node.clone(), tried.len() - 1).await {
                Ok(a) if is_not_leader(a.status, &a.body) => {
                    last = Some(Ok(Served { node, answer: a }));
                }
                Ok(a) => {
                    // Taken by a node other than the leader we knew (it waited for an election,
                    // or followed a newer leader, and forwarded the write): learn the leader now,
                    // so that the next write goes straight to it.
                    if discover
                        && a.status.is_success()
                        && self.leader().as_deref() != Some(node.as_str())
                    {
                        self.refresh().await;
                    }
                    return Ok(Served { node, answer: a });
                }
                Err(error) if error.is_connect() => {
                    last = Some(Err(Failure::Transport {
                        node,
                        error,
                        sent: false,
                    }));
                }
                Err(error) => {
                    self.refresh_soon();
                    return Err(Failure::Transport {
                        node,
                        error,
                        sent: true,
                    });
                }
            }
            if discover && !rediscovered {
                rediscovered = true;
                self.refresh().await;
            }
        }
        last.unwrap_or_else(|| Err(Failure::NoNode("no node to write to".into())))
    }

    /// Sends a read with `send(node, attempt)` by the read rule above.
    pub async fn read<T, F, Fut>(self: &Arc<Self>, send: F) -> Result<Served<T>, Failure>
    where
        F: Fn(String, usize) -> Fut,
        Fut: Future<Output = reqwest::Result<Answer<T>>>,
    {
        self.refresh_if_due();
        let mut tried: Vec<String> = Vec::new();
        let mut last = None;
        for attempt in 0..2 {
            let Some(lease) = self.readers.pick(&tried) else {
                break;
            };
            let node = lease.url().to_string();
            match send(node.clone(), attempt).await {
                Ok(a) if refused_before_work(a.status, &a.body) => {
                    lease.failure();
                    self.refresh_soon();
                    last = Some(Ok(Served {
                        node: node.clone(),
                        answer: a,
                    }));
                }
                Ok(a) => {
                    // A 500 is the node's fault (not retried: the node answered) and counts
                    // against it; 4xx are the caller's.
                    if a.status.is_server_error() {
                        lease.failure();
                    } else {
                        lease.success();
                    }
                    return Ok(Served { node, answer: a });
                }
                Err(error) if error.is_connect() => {
                    lease.failure();
                    self.refresh_soon();
                    tracing::debug!(node, %error, "replica unreachable; trying another");
                    last = Some(Err(Failure::Transport {
                        node: node.clone(),
                        error,
                        sent: false,
                    }));
                }
                Err(error) => {
                    lease.failure();
                    self.refresh_soon();
                    tracing::debug!(node, %error, "read failed after it was sent; not retried");
                    return Err(Failure::Transport {
                        node,
                        error,
                        sent: true,
                    });
                }
            }
            tried.push(node);
        }
        if let Some(out) = last {
            return out;
        }
        // No replica is ready: the leader (if any) answers.
        let Some(node) = self.leader() else {
            return Err(Failure::NoNode(
                "no ready replica and no known leader".into(),
            ));
        };
        match send(node.clone(), 0).await {
            Ok(answer) => Ok(Served { node, answer }),
            Err(error) => Err(Failure::Transport {
                sent: !error.is_connect(),
                node,
                error,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reads_refused_before_any_work_are_retried() {
        let timeout = br#"{"error":{"code":"read_timeout","message":"m"}}"#;
        let s = |c: u16| StatusCode::from_u16(c).unwrap();
        assert!(refused_before_work(s(503), b"{}"));
        assert!(refused_before_work(s(504), timeout));
        // A 504 or 502 from anything between the caller and the node says nothing of what the
        // node did; a 500 is an answer.
        assert!(!refused_before_work(s(504), b"upstream timed out"));
        assert!(!refused_before_work(s(502), b""));
        assert!(!refused_before_work(s(500), timeout));
    }

    #[test]
    fn only_not_leader_refusals_free_a_write_for_another_node() {
        let s = |c: u16| StatusCode::from_u16(c).unwrap();
        let not_leader = br#"{"error":{"code":"not_leader","message":"m"}}"#;
        let other = br#"{"error":{"code":"unavailable","message":"m"}}"#;
        assert!(is_not_leader(s(503), not_leader));
        assert!(!is_not_leader(s(503), other));
        assert!(!is_not_leader(s(500), not_leader));
    }

    #[test]
    fn routing_needs_a_seed() {
        let config = RoutingConfig {
            seeds: vec![" / ".into()],
            policy: Policy::RoundRobin,
            api_key: None,
            discover: true,
            read_from_leader: false,
            refresh_every: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(1),
        };
        assert!(matches!(Routing::new(config), Err(Failure::NoNode(_))));
    }
}
