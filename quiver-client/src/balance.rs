//! Read load balancing over a changing set of nodes, shared by the gateway and the Rust client.
//!
//! A [`Balancer`] holds the current backends and picks one per request with a [`Policy`]. The
//! caller holds the returned [`Lease`] while the request runs (that is what "outstanding" counts)
//! and reports how it went: a success feeds the latency average, a failure benches the backend
//! for a short while so that the next requests go elsewhere.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

/// How a read picks its node. JSON spells it `power_of_two`, flags `power-of-two` (each as its
/// convention has it); both accept either spelling (architecture review §4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Each node in turn.
    #[serde(alias = "round-robin")]
    #[cfg_attr(feature = "clap", value(alias = "round_robin"))]
    RoundRobin,
    /// The node with the fewest requests in flight from this process (ties: the first).
    #[serde(alias = "least-outstanding")]
    #[cfg_attr(feature = "clap", value(alias = "least_outstanding"))]
    LeastOutstanding,
    /// Two nodes at random; the one with the lower latency average × (in flight + 1) wins.
    #[default]
    #[serde(alias = "power-of-two")]
    #[cfg_attr(feature = "clap", value(alias = "power_of_two"))]
    PowerOfTwo,
}

/// How long a node that failed is skipped while others are available.
const BENCH: Duration = Duration::from_secs(2);
/// Weight of the newest sample in the latency average.
const EWMA_ALPHA: f64 = 0.2;

/// One node reads can go to, with what this process has seen of it.
#[derive(Debug)]
pub struct Backend {
    url: String,
    outstanding: AtomicUsize,
    /// Latency average in µs (0 = no sample yet).
    ewma_us: AtomicU64,
    served: AtomicU64,
    failures: AtomicU64,
    /// Skipped until this instant (ms since the balancer's epoch), after a failure.
    benched_until_ms: AtomicU64,
}

impl Backend {
    fn new(url: String) -> Backend {
        Backend {
            url,
            outstanding: AtomicUsize::new(0),
            ewma_us: AtomicU64::new(0),
            served: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            benched_until_ms: AtomicU64::new(0),
        }
    }

    /// Its base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn score(&self) -> f64 {
        // An unmeasured node looks fast so that it gets its first samples.
        let lat = self.ewma_us.load(Ordering::Relaxed).max(1) as f64;
        lat * (self.outstanding.load(Ordering::Relaxed) + 1) as f64
    }

    fn record(&self, elapsed: Duration) {
        let sample = elapsed.as_micros().max(1) as f64;
        let old = self.ewma_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old as f64 * (1.0 - EWMA_ALPHA) + sample * EWMA_ALPHA
        };
        self.ewma_us.store(new as u64, Ordering::Relaxed);
        self.served.fetch_add(1, Ordering::Relaxed);
    }
}

/// What [`Balancer::stats`] reports per node.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackendStats {
    /// The node's URL.
    pub url: String,
    /// Requests in flight now.
    pub outstanding: usize,
    /// Latency average in ms (0 before the first answer).
    pub latency_ms: f64,
    /// Requests answered.
    pub served: u64,
    /// Requests that failed (connection errors, 5xx).
    pub failures: u64,
    /// Skipped after a recent failure.
    pub benched: bool,
}

/// Picks a node per request; cheap to share (`Arc`).
#[derive(Debug)]
pub struct Balancer {
    policy: Policy,
    backends: RwLock<Vec<Arc<Backend>>>,
    next: AtomicUsize,
    rng: AtomicU64,
    epoch: Instant,
}

impl Balancer {
    /// An empty balancer.
    pub fn new(policy: Policy) -> Balancer {
        Balancer {
            policy,
            backends: RwLock::new(Vec::new()),
            next: AtomicUsize::new(0),
            rng: AtomicU64::new(0x9E37_79B9_7F4A_7C15 ^ std::process::id() as u64),
            epoch: Instant::now(),
        }
    }

    /// Its policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Replaces the set of nodes, keeping what was learnt about those that stay.
    pub fn set<I: IntoIterator<Item = String>>(&self, urls: I) {
        let mut backends = self.backends.write();
        let old = std::mem::take(&mut *backends);
        for url in urls {
            let url = url.trim_end_matches('/').to_string();
            if backends.iter().any(|b| b.url == url) {
                continue;
            }
            let kept = old.iter().find(|b| b.url == url).cloned();
            backends.push(kept.unwrap_or_else(|| Arc::new(Backend::new(url))));
        }
    }

    /// The current nodes' URLs.
    pub fn urls(&self) -> Vec<String> {
        self.backends.read().iter().map(|b| b.url.clone()).collect()
    }

    /// How many nodes it has.
    pub fn len(&self) -> usize {
        self.backends.read().len()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Per-node counters.
    pub fn stats(&self) -> Vec<BackendStats> {
        let now = self.now_ms();
        self.backends
            .read()
            .iter()
            .map(|b| BackendStats {
                url: b.url.clone(),
                outstanding: b.outstanding.load(Ordering::Relaxed),
                latency_ms: b.ewma_us.load(Ordering::Relaxed) as f64 / 1000.0,
                served: b.served.load(Ordering::Relaxed),
                failures: b.failures.load(Ordering::Relaxed),
                benched: b.benched_until_ms.load(Ordering::Relaxed) > now,
            })
            .collect()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn random(&self) -> u64 {
        // xorshift64*, shared without a lock: a lost update only repeats a number.
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::Relaxed);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Picks a node other than those in `exclude` (by URL), preferring nodes that have not failed
    /// recently; `None` when none is left.
    pub fn pick(&self, exclude: &[String]) -> Option<Lease> {
        let now = self.now_ms();
        let backends = self.backends.read();
        let allowed: Vec<&Arc<Backend>> = backends
            .iter()
            .filter(|b| !exclude.contains(&b.url))
            .collect();
        let healthy: Vec<&Arc<Backend>> = allowed
            .iter()
            .copied()
            .filter(|b| b.benched_until_ms.load(Ordering::Relaxed) <= now)
            .collect();
        // When every node failed lately, try them anyway rather than fail the request here.
        let pool = if healthy.is_empty() { allowed } else { healthy };
        let chosen = match pool.len() {
            0 => return None,
            1 => pool[0],
            n => match self.policy {
                Policy::RoundRobin => pool[self.next.fetch_add(1, Ordering::Relaxed) % n],
                Policy::LeastOutstanding => {
                    // Start the scan at a rotating offset so that ties spread out.
                    let start = self.next.fetch_add(1, Ordering::Relaxed);
                    (0..n)
                        .map(|i| pool[(start + i) % n])
                        .min_by_key(|b| b.outstanding.load(Ordering::Relaxed))
                        .unwrap_or(pool[0])
                }
                Policy::PowerOfTwo => {
                    let a = (self.random() % n as u64) as usize;
                    let b = (a + 1 + (self.random() % (n as u64 - 1)) as usize) % n;
                    let (x, y) = (pool[a], pool[b]);
                    if y.score() < x.score() {
                        y
                    } else {
                        x
                    }
                }
            },
        };
        chosen.outstanding.fetch_add(1, Ordering::Relaxed);
        Some(Lease {
            backend: chosen.clone(),
            started: Instant::now(),
            epoch: self.epoch,
        })
    }
}

/// One request on one node; dropping it ends the request (without a latency sample).
#[derive(Debug)]
pub struct Lease {
    backend: Arc<Backend>,
    started: Instant,
    /// The balancer's epoch, for the bench deadline.
    epoch: Instant,
}

impl Lease {
    /// The node's base URL.
    pub fn url(&self) -> &str {
        &self.backend.url
    }

    /// The node answered: record the latency.
    pub fn success(self) {
        self.backend.record(self.started.elapsed());
    }

    /// The node failed (connection error, 5xx): skip it for [`BENCH`] from now (not from when
    /// it was picked: a node that fails slowly must still be skipped afterwards).
    pub fn failure(self) {
        let b = &self.backend;
        b.failures.fetch_add(1, Ordering::Relaxed);
        let until = (self.epoch.elapsed() + BENCH).as_millis() as u64;
        b.benched_until_ms.fetch_max(until, Ordering::Relaxed);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.backend.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_reads_in_either_spelling() {
        for (text, want) in [
            ("\"power_of_two\"", Policy::PowerOfTwo),
            ("\"power-of-two\"", Policy::PowerOfTwo),
            ("\"least-outstanding\"", Policy::LeastOutstanding),
            ("\"round_robin\"", Policy::RoundRobin),
        ] {
            assert_eq!(serde_json::from_str::<Policy>(text).unwrap(), want);
        }
        assert_eq!(
            serde_json::to_string(&Policy::PowerOfTwo).unwrap(),
            "\"power_of_two\""
        );
    }

    fn urls(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("http://n{i}")).collect()
    }

    #[test]
    fn round_robin_visits_each_in_turn() {
        let b = Balancer::new(Policy::RoundRobin);
        b.set(urls(3));
        let seen: Vec<String> = (0..6)
            .map(|_| b.pick(&[]).map(|l| l.url().to_string()).unwrap_or_default())
            .collect();
        assert_eq!(seen[..3], urls(3)[..]);
        assert_eq!(seen[3..], urls(3)[..]);
    }

    #[test]
    fn least_outstanding_avoids_busy_nodes() {
        let b = Balancer::new(Policy::LeastOutstanding);
        b.set(urls(3));
        let mut held: Vec<Lease> = (0..3).filter_map(|_| b.pick(&[])).collect();
        let mut held_urls: Vec<&str> = held.iter().map(|l| l.url()).collect();
        held_urls.sort();
        assert_eq!(held_urls, ["http://n0", "http://n1", "http://n2"]);
        let n1 = held.iter().position(|l| l.url() == "http://n1");
        drop(n1.map(|i| held.remove(i)));
        // Only n1 has nothing in flight now.
        assert_eq!(
            b.pick(&[]).map(|l| l.url().to_string()),
            Some("http://n1".into())
        );
    }

    #[test]
    fn power_of_two_prefers_the_faster_node() {
        let b = Balancer::new(Policy::PowerOfTwo);
        b.set(urls(2));
        for backend in b.backends.read().iter() {
            let us = if backend.url == "http://n0" {
                10_000
            } else {
                100
            };
            backend.record(Duration::from_micros(us));
        }
        let fast = (0..100)
            .filter(|_| b.pick(&[]).is_some_and(|l| l.url() == "http://n1"))
            .count();
        assert_eq!(
            fast, 100,
            "with two nodes both are drawn, and the faster one wins"
        );
    }

    #[test]
    fn failures_bench_a_node_and_exclusion_is_honoured() {
        let b = Balancer::new(Policy::RoundRobin);
        b.set(urls(2));
        if let Some(l) = b.pick(&["http://n1".to_string()]) {
            assert_eq!(l.url(), "http://n0");
            l.failure();
        }
        for _ in 0..5 {
            assert_eq!(
                b.pick(&[]).map(|l| l.url().to_string()),
                Some("http://n1".into())
            );
        }
        // With every other node excluded, a benched node is still tried.
        let only = b.pick(&["http://n1".to_string()]);
        assert_eq!(only.map(|l| l.url().to_string()), Some("http://n0".into()));
        assert!(b.pick(&urls(2)).is_none());
        let stats = b.stats();
        assert_eq!(stats[0].failures, 1);
        assert!(stats[0].benched);
        assert_eq!(stats.iter().map(|s| s.outstanding).sum::<usize>(), 0);
    }

    #[test]
    fn a_slow_failure_is_benched_from_when_it_is_reported() {
        let b = Balancer::new(Policy::PowerOfTwo);
        b.set(urls(2));
        let lease = b.pick(&["http://n1".to_string()]);
        // The failure is reported well after the pick (a timeout, say).
        std::thread::sleep(Duration::from_millis(50));
        let reported = b.now_ms();
        if let Some(l) = lease {
            l.failure();
        }
        let until = b.backends.read()[0]
            .benched_until_ms
            .load(Ordering::Relaxed);
        assert!(until >= reported + BENCH.as_millis() as u64);
        for _ in 0..20 {
            assert_eq!(
                b.pick(&[]).map(|l| l.url().to_string()),
                Some("http://n1".into())
            );
        }
    }

    #[test]
    fn set_keeps_stats_of_nodes_that_stay() {
        let b = Balancer::new(Policy::RoundRobin);
        b.set(urls(2));
        if let Some(l) = b.pick(&[]) {
            l.success();
        }
        b.set(vec!["http://n0/".to_string(), "http://n5".to_string()]);
        assert_eq!(b.urls(), ["http://n0", "http://n5"]);
        assert_eq!(b.stats()[0].served, 1);
    }
}
