//! In-process cluster tests: real nodes on port 0 talking HTTP over loopback. Waits are on Raft
//! metrics (`raft.wait(..).metrics(..)`), or on a condition polled with a deadline, never on a
//! fixed sleep.

use std::time::{Duration, Instant};

use quiver::client::{Client, ClientError};
use quiver::model::{Consistency, PointId, SearchRequest};

mod common;
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
    let status: serde_json::Value = reqwest::get(format!("{}/cluster", a.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["role"], "leader");
    assert_eq!(status["leader_id"], a.id());
    let members = status["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    assert_eq!(members.iter().filter(|m| m["role"] == "learner").count(), 2);
    let status_b: serde_json::Value = reqwest::get(format!("{}/cluster", b.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status_b["role"], "learner");
    assert_eq!(status_b["leader_addr"], serde_json::json!(a.url()));

    // Replicas become ready once caught up.
    eventually("replica ready", || async {
        reqwest::get(format!("{}/readyz", b.url()))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;

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
    assert!(
        cb.get_point("s", &PointId::Num(20_004)).await.is_err() || b.cluster.applied() >= w.index
    );
    wait_applied(&b, w.index).await;
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
