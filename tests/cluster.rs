//! In-process cluster tests: real nodes on port 0 talking HTTP over loopback. Waits are on Raft
//! metrics (`raft.wait(..).metrics(..)`), or on a condition polled with a deadline, never on a
//! fixed sleep.

use std::time::{Duration, Instant};

use quiver::model::{
    CollectionConfig, Consistency, DeleteRequest, Metric, PointId, PointInput, SearchRequest,
};
use quiver_client::{Client, ClientError};

mod common;
use common::http::{cluster_json, metrics_text, ready};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_and_two_learners_replicate_and_forward_writes() {
    let (a, _da) = start(None, false, |_| {}).await;
    let (b, _db) = start(Some(&a.url()), false, |_| {}).await;
    let (c, _dc) = start(Some(&a.url()), false, |_| {}).await;
    wait_members(&a, 3).await;

    let (ca, cb, cc) = (
        Client::new(&a.url(), None).unwrap(),
        Client::new(&b.url(), None).unwrap(),
        Client::new(&c.url(), None).unwrap(),
    );
    ca.create_collection("r", &config4()).await.unwrap();
    let w1 = ca.upsert("r", points(0, 300)).await.unwrap();

    // Read-your-writes on a replica right after the write on the leader.
    let hits = cb.search("r", &query(w1.index)).await.unwrap();
    assert_eq!(hits.hits.len(), 10);
    assert!(hits.index >= w1.index);

    // A write sent to a learner is forwarded to the leader; the answer carries the leader's index.
    let w2 = cc.upsert("r", points(1000, 1)).await.unwrap();
    assert!(w2.index > w1.index);
    let got = reqwest::get(format!(
        "{}/collections/r/points/1000?min_index={}",
        b.url(),
        w2.index
    ))
    .await
    .unwrap();
    assert_eq!(got.status(), 200);

    // Every node ends with the same data and answers identically at the same index.
    let last = a.cluster.applied();
    for n in [&b, &c] {
        wait_applied(n, last).await;
    }
    let want = ca.search("r", &query(last)).await.unwrap().hits;
    assert_eq!(cb.search("r", &query(last)).await.unwrap().hits, want);
    assert_eq!(cc.search("r", &query(last)).await.unwrap().hits, want);
    assert_eq!(b.engine.info("r").unwrap().points, 301);

    // The cluster view: one voter (the leader), two learners, lag per member on the leader.
    let status = cluster_json(&a.url()).await.unwrap();
    assert_eq!(status["role"], "leader");
    assert_eq!(status["leader_id"], a.id());
    let members = status["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    assert_eq!(members.iter().filter(|m| m["role"] == "learner").count(), 2);
    let status_b = cluster_json(&b.url()).await.unwrap();
    assert_eq!(status_b["role"], "learner");
    assert_eq!(status_b["leader_addr"], serde_json::json!(a.url()));

    // Replicas become ready once caught up.
    eventually("replica ready", || async { ready(&b.url()).await }).await;

    // Raft RPC and joins need the cluster secret.
    let r = reqwest::Client::new()
        .post(format!("{}/cluster/join", a.url()))
        .json(&serde_json::json!({"id": 5, "addr": "http://x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = reqwest::Client::new()
        .post(format!("{}/raft/vote", a.url()))
        .body(vec![1, 2, 3])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // A replica that leaves is removed from the membership.
    c.leave_and_stop().await.unwrap();
    wait_members(&a, 2).await;
    for n in [b, a] {
        n.stop().await.unwrap();
    }
}

/// Issue 10: once a churned collection goes idle, the leader proposes a compaction through the
/// log; every node drops its tombstones at the same index and, once rebuilt, the leader and its
/// replica give identical graph answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_collection_is_compacted_on_every_node() {
    let tweak = |c: &mut quiver::config::Config| {
        c.compact_idle_secs = 1;
        c.exact_below = 0;
    };
    let (a, _da) = start(None, false, tweak).await;
    let (b, _db) = start(Some(&a.url()), false, tweak).await;
    wait_members(&a, 2).await;
    let ca = Client::new(&a.url(), None).unwrap();
    ca.create_collection("r", &config4()).await.unwrap();
    ca.upsert("r", points(0, 1_000)).await.unwrap();
    // 10 % replaced and deleted: below `--rebuild-ratio`, so only a compaction drops them.
    ca.upsert("r", points(0, 50)).await.unwrap();
    let ids = (500..550).map(PointId::Num).collect();
    let del = DeleteRequest {
        ids: Some(ids),
        filter: None,
    };
    ca.delete_points("r", &del).await.unwrap();
    assert_eq!(a.engine.info("r").unwrap().tombstones, 100);

    eventually("both nodes compacted", || async {
        wait_applied(&b, a.cluster.applied()).await;
        [&a, &b]
            .iter()
            .all(|n| n.engine.info("r").unwrap().tombstones == 0)
    })
    .await;
    let last = a.cluster.applied();
    wait_applied(&b, last).await;
    for n in [&a, &b] {
        assert!(n.engine.wait_indexed(WAIT));
        assert_eq!(n.engine.info("r").unwrap().points, 950);
    }
    let mut q = query(last);
    q.exact = false;
    q.cache = false;
    let cb = Client::new(&b.url(), None).unwrap();
    let want = ca.search("r", &q).await.unwrap().hits;
    assert_eq!(want.len(), 10);
    assert_eq!(cb.search("r", &q).await.unwrap().hits, want);
    for n in [b, a] {
        n.stop().await.unwrap();
    }
}

/// Issue 11: a replica's query cache never serves an answer from before a write it has applied.
/// While the leader ingests, each round deletes the last probe point and writes a new one equal
/// to the query; the replica, read at the new probe's index with the cache on (twice, so the
/// second may be a hit), must rank the new probe first. Once the ingest stops, a repeat is a hit
/// that equals the answer computed afresh, and `/metrics` reports the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_query_cache_is_never_stale_under_ingest() {
    let (a, _da) = start(None, false, |_| {}).await;
    let (b, _db) = start(Some(&a.url()), false, |_| {}).await;
    wait_members(&a, 2).await;
    let (ca, cb) = (
        Client::new(&a.url(), None).unwrap(),
        Client::new(&b.url(), None).unwrap(),
    );
    ca.create_collection("q", &config4()).await.unwrap();
    ca.upsert("q", points(0, 300)).await.unwrap();
    let ingest = {
        let ca = ca.clone();
        tokio::spawn(async move {
            for i in 0..40 {
                ca.upsert("q", points(1_000 + i * 25, 25)).await.unwrap();
            }
        })
    };
    let probe = |r: u64| PointInput {
        id: PointId::Num(9_000_000 + r),
        vector: vec![0.5, 0.5, 1.0, 0.0],
        payload: None,
    };
    for r in 0..30u64 {
        if r > 0 {
            let del = quiver::model::DeleteRequest {
                ids: Some(vec![PointId::Num(9_000_000 + r - 1)]),
                filter: None,
            };
            ca.delete_points("q", &del).await.unwrap();
        }
        let w = ca.upsert("q", vec![probe(r)]).await.unwrap();
        for _ in 0..2 {
            let hits = cb.search("q", &query(w.index)).await.unwrap().hits;
            assert_eq!(hits[0].id, PointId::Num(9_000_000 + r), "round {r}");
            assert!(
                hits.iter().all(
                    |h| !matches!(h.id, PointId::Num(n) if n >= 9_000_000 && n != 9_000_000 + r)
                ),
                "round {r}: a deleted probe was served"
            );
        }
    }
    ingest.await.unwrap();
    let last = a.cluster.applied();
    wait_applied(&b, last).await;
    let stats = || b.engine.query_cache().stats();
    let cached = cb.search("q", &query(last)).await.unwrap().hits;
    let before = stats();
    assert_eq!(cb.search("q", &query(last)).await.unwrap().hits, cached);
    assert_eq!(
        stats().hits,
        before.hits + 1,
        "a repeat at an unchanged state is a hit"
    );
    let mut fresh = query(last);
    fresh.cache = false;
    assert_eq!(cb.search("q", &fresh).await.unwrap().hits, cached);
    assert_eq!(
        stats().hits + stats().misses,
        before.hits + before.misses + 1
    );
    let metrics = metrics_text(&b.url()).await;
    for name in [
        "quiver_query_cache_hits_total",
        "quiver_query_cache_misses_total",
        "quiver_query_cache_evictions_total",
        "quiver_query_cache_bytes",
    ] {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing from /metrics"));
        if name != "quiver_query_cache_evictions_total" {
            let v: u64 = line.split(' ').nth(1).unwrap().parse().unwrap();
            assert!(v > 0, "{line}");
        }
    }
    for n in [b, a] {
        n.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_learner_catches_up_from_a_snapshot() {
    let (a, _da) = start(None, false, |c| c.snapshot_logs = 20).await;
    let ca = Client::new(&a.url(), None).unwrap();
    ca.create_collection("s", &config4()).await.unwrap();
    let mut last = 0;
    for batch in 0..100u64 {
        last = ca
            .upsert("s", points(batch * 100, 100))
            .await
            .unwrap()
            .index;
    }
    // The leader has snapshotted and purged its log, so a new learner needs the snapshot.
    a.cluster
        .raft
        .wait(Some(WAIT))
        .metrics(|m| m.purged.is_some(), "purged")
        .await
        .unwrap();

    let (b, _db) = start(Some(&a.url()), false, |_| {}).await;
    wait_members(&a, 2).await;
    wait_applied(&b, last).await;
    assert!(
        b.cluster.metrics().snapshot.is_some(),
        "the learner did not install a snapshot"
    );
    assert_eq!(b.engine.info("s").unwrap().points, 10_000);
    let cb = Client::new(&b.url(), None).unwrap();
    assert_eq!(
        cb.search("s", &query(last)).await.unwrap().hits,
        ca.search("s", &query(last)).await.unwrap().hits
    );
    // And it keeps up with later writes through the log.
    let w = ca.upsert("s", points(20_000, 5)).await.unwrap();
    // Once the replica's applied index covers the write, the point is there: what `min_index`
    // reads rely on. (Not the converse: apply makes an entry's points visible as it goes and
    // publishes `last_applied` once the batch is committed to sled, so a reader may see a point
    // a moment before the index covers it. The point is committed either way.)
    wait_applied(&b, w.index).await;
    assert!(cb.get_point("s", &PointId::Num(20_004)).await.is_ok());
    assert_eq!(b.engine.info("s").unwrap().points, 10_005);
    b.stop().await.unwrap();
    a.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_voters_fail_over_without_losing_acknowledged_writes() {
    let [(a, _da), (b, _db), (c, _dc)] = start_three_voters().await;
    let ca = Client::new(&a.url(), None).unwrap();
    ca.create_collection("f", &config4()).await.unwrap();
    let mut acked = Vec::new();
    let mut last = 0;
    for batch in 0..20u64 {
        let w = ca.upsert("f", points(batch * 10, 10)).await.unwrap();
        acked.extend(batch * 10..batch * 10 + 10);
        last = w.index;
    }
    let old_leader = a.id();
    a.stop().await.unwrap();

    // A new leader is elected among the survivors.
    b.cluster
        .raft
        .wait(Some(WAIT))
        .metrics(
            |m| m.current_leader.is_some_and(|l| l != old_leader),
            "new leader",
        )
        .await
        .unwrap();
    for n in [&b, &c] {
        wait_applied(n, last).await;
        for id in &acked {
            assert!(
                n.engine.get_point("f", &PointId::Num(*id)).is_ok(),
                "acknowledged point {id} lost on {}",
                n.id()
            );
        }
    }
    // Writes continue, through either survivor (one forwards to the other).
    let cb = Client::new(&b.url(), None).unwrap();
    let cc = Client::new(&c.url(), None).unwrap();
    let mut w = None;
    let deadline = Instant::now() + WAIT;
    while w.is_none() {
        match cb.upsert("f", points(5_000, 3)).await {
            Ok(r) => w = Some(r),
            Err(ClientError::Api { status, .. }) if status == 503 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("write after failover failed: {e}"),
        }
    }
    let w = w.unwrap();
    assert!(w.index > last);
    let w3 = cc.upsert("f", points(6_000, 1)).await.unwrap();
    wait_applied(&c, w3.index.max(w.index)).await;
    assert_eq!(c.engine.info("f").unwrap().points, 204);
    b.stop().await.unwrap();
    c.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_replica_refuses_bounded_staleness_reads_then_recovers() {
    let (a, _da) = start(None, false, |_| {}).await;
    let (b, _db) = start(Some(&a.url()), false, |_| {}).await;
    wait_members(&a, 2).await;
    let ca = Client::new(&a.url(), None).unwrap();
    let cb = Client::new(&b.url(), None).unwrap();
    ca.create_collection("p", &config4()).await.unwrap();
    let w = ca.upsert("p", points(0, 50)).await.unwrap();
    wait_applied(&b, w.index).await;
    let mut fresh = SearchRequest::new(vec![0.0, 0.0, 1.0, 0.0], 3);
    fresh.consistency = Some(Consistency::MaxLag { max_lag_ms: 300 });
    eventually("fresh read on the replica", || async {
        cb.search("p", &fresh).await.is_ok()
    })
    .await;

    b.cluster.set_isolated(true);
    let w2 = ca.upsert("p", points(100, 10)).await.unwrap();
    eventually("stale answer", || async {
        matches!(cb.search("p", &fresh).await, Err(ClientError::Api { status, ref code, .. }) if status == 503 && code == "stale")
    })
    .await;
    // Eventual reads still answer, from the old state.
    let mut eventual = fresh.clone();
    eventual.consistency = None;
    assert!(cb.search("p", &eventual).await.unwrap().index < w2.index);
    // min_index beyond what the replica has: 504 after the bounded wait.
    let mut ryw = fresh.clone();
    ryw.consistency = Some(Consistency::MinIndex {
        min_index: w2.index,
    });
    let (tx, rx) = tokio::sync::oneshot::channel();
    let cb2 = cb.clone();
    tokio::spawn(async move {
        let _ = tx.send(cb2.search("p", &ryw).await);
    });
    // Heal the partition while that read waits: it completes once the replica catches up.
    b.cluster.set_isolated(false);
    let healed = rx.await.unwrap().unwrap();
    assert!(healed.index >= w2.index);
    eventually("fresh again", || async {
        cb.search("p", &fresh).await.is_ok()
    })
    .await;
    b.stop().await.unwrap();
    a.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_that_disappears_is_removed_and_concurrent_joins_all_succeed() {
    let (a, _da) = start(None, false, |c| c.learner_expiry_secs = 1).await;
    // Several replicas join at once: the leader serialises the membership changes.
    let (b, _db) = start(Some(&a.url()), false, |_| {}).await;
    let (c, _dc) = start(Some(&a.url()), false, |_| {}).await;
    let (d, _dd) = start(Some(&a.url()), false, |_| {}).await;
    wait_members(&a, 4).await;
    // Two vanish without leaving (as a container killed by a scale-down would).
    let gone = [c.id(), d.id()];
    c.stop().await.unwrap();
    d.stop().await.unwrap();
    wait_members(&a, 2).await;
    let m = a.cluster.metrics();
    let membership = m.membership_config.membership();
    assert!(gone.iter().all(|id| membership.get_node(id).is_none()));
    assert!(membership.get_node(&b.id()).is_some());
    b.stop().await.unwrap();
    a.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_first_voter_that_lost_its_state_rejoins_instead_of_starting_a_second_cluster() {
    let [(a, _da), (b, _db), (c, _dc)] = start_three_voters().await;
    let cb = Client::new(&b.url(), None).unwrap();
    cb.create_collection("k", &config4()).await.unwrap();
    let w = cb.upsert("k", points(0, 50)).await.unwrap();
    let (old_id, addr) = (a.id(), a.addr);
    a.stop().await.unwrap();

    // The same address, an empty data dir, no --join: only --peers.
    let peers = format!("{},{}", b.url(), c.url());
    let (a2, _da2) = start(None, false, |cfg| {
        cfg.listen = addr;
        cfg.peers = Some(peers);
    })
    .await;
    assert_ne!(a2.id(), old_id);
    let survivors = [&b, &c];
    eventually(
        "the new node replaces the old one among the voters",
        || async {
            let m = b.cluster.metrics();
            let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
            voters.len() == 3 && voters.contains(&a2.id()) && !voters.contains(&old_id)
        },
    )
    .await;
    // It holds the cluster's data, and no second cluster exists: everyone agrees on one leader.
    wait_applied(&a2, w.index).await;
    assert_eq!(a2.engine.info("k").unwrap().points, 50);
    let leader = b.cluster.metrics().current_leader;
    assert!(leader.is_some());
    for n in survivors {
        assert_eq!(n.cluster.metrics().current_leader, leader);
    }
    assert_eq!(a2.cluster.metrics().current_leader, leader);
    for n in [a2, b, c] {
        n.stop().await.unwrap();
    }
}

/// H1: all three voters restart at once, and the first comes back with its volume lost before
/// the others answer. It must not initialise a second cluster while they are down; once they are
/// back (with their data) it joins them as a voter.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_first_voter_with_no_state_waits_for_peers_that_do_not_answer() {
    let [(a, _da), (b, db), (c, dc)] = start_three_voters().await;
    let cb = Client::new(&b.url(), None).unwrap();
    cb.create_collection("k", &config4()).await.unwrap();
    let w = cb.upsert("k", points(0, 50)).await.unwrap();
    let (a_addr, a_url, b_addr, c_addr) = (a.addr, a.url(), b.addr, c.addr);
    let peers = format!("{},{}", b.url(), c.url());
    for n in [a, b, c] {
        n.stop().await.unwrap();
    }

    let (a2, _da2) = start(None, false, |cfg| {
        cfg.listen = a_addr;
        cfg.peers = Some(peers);
    })
    .await;
    // Ten election timeouts with both peers down: still no cluster here.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let m = a2.cluster.metrics();
    assert_eq!(m.membership_config.membership().nodes().count(), 0);
    assert_eq!(m.current_leader, None);

    // The peers come back with their state and elect a leader; the empty node joins them.
    let restart = |dir: &tempfile::TempDir, addr| {
        let mut cfg = quiver::config::Config::for_test(dir.path());
        cfg.listen = addr;
        cfg.join = Some(a_url.clone());
        cfg.voter = true;
        cfg.cluster_secret = Some(SECRET.into());
        quiver::node::Node::start(cfg)
    };
    let b2 = restart(&db, b_addr).await.unwrap();
    let c2 = restart(&dc, c_addr).await.unwrap();
    eventually(
        "the empty node becomes a voter of the old cluster",
        || async {
            let m = b2.cluster.metrics();
            let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
            voters.len() == 3 && voters.contains(&a2.id())
        },
    )
    .await;
    wait_applied(&a2, w.index).await;
    assert_eq!(a2.engine.info("k").unwrap().points, 50);
    let leader = b2.cluster.metrics().current_leader;
    assert!(leader.is_some());
    for n in [&a2, &c2] {
        assert_eq!(n.cluster.metrics().current_leader, leader);
    }
    for n in [a2, b2, c2] {
        n.stop().await.unwrap();
    }
}

async fn put_points(
    http: &reqwest::Client,
    node: &str,
    from: u64,
    n: u64,
) -> (u16, serde_json::Value) {
    let r = http
        .put(format!("{node}/collections/p/points"))
        .json(&serde_json::json!({ "points": points(from, n) }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

async fn search_at(http: &reqwest::Client, node: &str, consistency: serde_json::Value) -> u16 {
    http.post(format!("{node}/collections/p/points/search"))
        .json(&serde_json::json!({"vector": [1.0, 0.0, 1.0, 0.0], "k": 3, "consistency": consistency}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Item 7 and the fault tests of issue 9: the leader of three voters is cut off from the other
/// two (its Raft RPC fail both ways; clients still reach it). It stops acknowledging writes and
/// says so in /cluster; the others elect a leader that acknowledges writes; reads on the cut-off
/// node never return data older than a token; after healing every node holds every
/// acknowledged write and agrees on one leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_its_quorum_stops_acknowledging_writes() {
    let [(a, _da), (b, _db), (c, _dc)] = start_three_voters().await;
    let http = reqwest::Client::new();
    let r = http
        .put(format!("{}/collections/p", a.url()))
        .json(&config4())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (s, _) = put_points(&http, &a.url(), 0, 20).await;
    assert_eq!(s, 200);

    a.cluster.set_isolated(true);
    // A write on the cut-off leader is not acknowledged: 503 within a few election timeouts
    // (the first may have been proposed, so it is ambiguous; later ones are refused at once).
    let started = Instant::now();
    let (s, _) = put_points(&http, &a.url(), 1_000, 5).await;
    assert_eq!(s, 503);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let (s, body) = put_points(&http, &a.url(), 2_000, 5).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (503, Some("not_leader"))
    );
    assert!(started.elapsed() < Duration::from_millis(500));
    let status = a.cluster.status();
    assert!(
        !status.writable && status.quorum_ack_ms.is_some(),
        "{status:?}"
    );

    // The other two elect a leader, and writes through either are acknowledged again.
    eventually("a new leader among the others", || async {
        let l = b.cluster.metrics().current_leader;
        l.is_some() && l != Some(a.id()) && c.cluster.metrics().current_leader == l
    })
    .await;
    let (s, w2) = put_points(&http, &b.url(), 100, 20).await;
    assert_eq!(s, 200, "{w2}");
    let w2 = w2["index"].as_u64().unwrap();

    // Reads on the cut-off side: a token it has not reached, a linearizable read, and a
    // bounded-staleness read are refused rather than answered from old data.
    assert_eq!(
        search_at(&http, &a.url(), serde_json::json!({"min_index": w2})).await,
        504
    );
    assert!(search_at(&http, &a.url(), serde_json::json!("linearizable")).await >= 500);
    assert_eq!(
        search_at(&http, &a.url(), serde_json::json!({"max_lag_ms": 200})).await,
        503
    );

    // Heal: everyone converges on the new leader's log, with every acknowledged write.
    a.cluster.set_isolated(false);
    wait_applied(&a, w2).await;
    eventually("one leader everywhere", || async {
        let l = b.cluster.metrics().current_leader;
        l.is_some()
            && [&a, &c]
                .iter()
                .all(|n| n.cluster.metrics().current_leader == l)
    })
    .await;
    for n in [&a, &b, &c] {
        wait_applied(n, w2).await;
        let info = n.engine.info("p").unwrap();
        // 20 + 20 acknowledged; the refused writes are nowhere.
        assert_eq!(info.points, 40, "node {}", n.id());
        for id in [2_000u64, 2_004] {
            assert!(n
                .engine
                .get("p")
                .unwrap()
                .get(&PointId::Num(id), false)
                .is_none());
        }
    }
    for n in [a, b, c] {
        n.stop().await.unwrap();
    }
}

/// M9: a node whose Raft stopped says so: /healthz and /readyz answer 503 (so Kubernetes
/// restarts it and the gateway stops using it) and /cluster reports why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_raft_stopped_fails_its_probes() {
    let (a, _da) = start(None, false, |_| {}).await;
    let http = reqwest::Client::new();
    for probe in ["/healthz", "/readyz"] {
        let r = http
            .get(format!("{}{probe}", a.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{probe}");
    }
    a.cluster.raft.shutdown().await.unwrap();
    for probe in ["/healthz", "/readyz"] {
        let r = http
            .get(format!("{}{probe}", a.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503, "{probe}");
    }
    let status = a.cluster.status();
    assert!(status.fatal.is_some() && !status.writable, "{status:?}");
    let r = http
        .put(format!("{}/collections/x", a.url()))
        .json(&config4())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
}

/// M3: a replica that the leader expired while it was cut off asks to join again by itself once
/// it can, instead of staying outside the membership for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_replica_rejoins_by_itself() {
    let (a, _da) = start(None, false, |c| c.learner_expiry_secs = 1).await;
    let (b, _db) = start(Some(&a.url()), false, |c| c.learner_expiry_secs = 1).await;
    wait_members(&a, 2).await;
    b.cluster.set_isolated(true);
    wait_members(&a, 1).await;
    b.cluster.set_isolated(false);
    // No leader reaches it any more; after 2 s of that it asks to join again.
    wait_members(&a, 2).await;
    assert!(a
        .cluster
        .metrics()
        .membership_config
        .membership()
        .get_node(&b.id())
        .is_some());
    eventually("the replica is ready again", || async {
        ready(&b.url()).await
    })
    .await;
    b.stop().await.unwrap();
    a.stop().await.unwrap();
}

/// Review M8: a follower must write each AppendEntries within one heartbeat, so no log entry may
/// grow with the request. A 12 MB upsert is written as several bounded entries, in order; the
/// answer's index covers all of it, and a replica holds every point.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_upsert_is_written_as_several_bounded_entries() {
    let (leader, _dl) = start(None, false, |_| {}).await;
    let (replica, _dr) = start(Some(&leader.url()), false, |_| {}).await;
    wait_members(&leader, 2).await;
    let client = Client::new(&leader.url(), None).unwrap();
    let config = CollectionConfig::new(1024, Metric::L2);
    let created = client.create_collection("big", &config).await.unwrap();
    let points: Vec<PointInput> = (0..3_000u64)
        .map(|i| PointInput {
            id: PointId::Num(i),
            vector: vec![i as f32 / 3_000.0; 1024],
            payload: None,
        })
        .collect();
    let bytes = 3_000 * 1024 * 4;
    assert!(bytes > 2 * quiver::model::ENTRY_BYTES);
    let w = client.upsert("big", points).await.unwrap();
    assert_eq!(w.upserted, Some(3_000));
    // At least three entries after the create (ceil(12 MB / 4 MiB)).
    assert!(
        w.index >= created.index + 3,
        "{} after {}",
        w.index,
        created.index
    );
    wait_applied(&replica, w.index).await;
    let on_replica = Client::new(&replica.url(), None).unwrap();
    let info = on_replica.collection("big").await.unwrap();
    assert_eq!(info.points, 3_000);
    replica.stop().await.unwrap();
    leader.stop().await.unwrap();
}

/// Issue 9, item 6: a write that reaches a follower while its leader has just died is not failed
/// at once (the forward cannot connect): it waits for the election and is forwarded to the new
/// leader. A client sees one slower write, not an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_during_an_election_waits_for_the_new_leader() {
    let [(a, _da), (b, _db), (c, _dc)] = start_three_voters().await;
    let client = Client::new(&a.url(), None).unwrap();
    client.create_collection("e", &config4()).await.unwrap();
    client.upsert("e", points(0, 10)).await.unwrap();
    wait_applied(&b, client.session_index()).await;
    let follower = b.url();
    a.stop().await.unwrap();
    // At once, while b and c still take the dead node for their leader.
    let sent = Instant::now();
    let w = Client::new(&follower, None)
        .unwrap()
        .upsert("e", points(10, 10))
        .await
        .expect("the write waits for the election instead of failing");
    eprintln!(
        "a write during an election was acknowledged after {:.2} s",
        sent.elapsed().as_secs_f64()
    );
    let info = Client::new(&c.url(), None)
        .unwrap()
        .collection_with("e", Some(&Consistency::MinIndex { min_index: w.index }))
        .await
        .unwrap();
    assert_eq!(info.points, 20);
    b.stop().await.unwrap();
    c.stop().await.unwrap();
}
