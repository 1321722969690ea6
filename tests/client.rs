//! The Rust client against in-process clusters: it finds the leader from any node, spreads reads
//! over the replicas by policy, retries a read on another node when one dies, and its
//! read-your-writes session makes replicas answer only with the client's writes applied.

use std::collections::BTreeMap;

use quiver::model::PointId;
use quiver_client::Policy;
use quiver_client::{Client, ClientError};

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_discovers_the_leader_balances_reads_and_reads_its_writes() {
    let (a, _da) = start(None, false, |_| {}).await;
    let (b, _db) = start(Some(&a.url()), false, |_| {}).await;
    let (c, _dc) = start(Some(&a.url()), false, |_| {}).await;
    wait_members(&a, 3).await;
    eventually("replicas ready", || async {
        b.cluster.ready().is_ok() && c.cluster.ready().is_ok()
    })
    .await;
    for policy in [
        Policy::RoundRobin,
        Policy::LeastOutstanding,
        Policy::PowerOfTwo,
    ] {
        // Seeded with a replica only.
        let client = Client::builder([b.url()])
            .policy(policy)
            .read_your_writes(true)
            .connect()
            .await
            .unwrap();
        assert_eq!(client.leader(), Some(a.url()));
        // Readiness is live (a replica under load may miss a probe): wait until both count.
        eventually("both replicas readers", || async {
            client.refresh().await.is_ok() && client.read_stats().len() == 2
        })
        .await;
        let name = format!("{policy:?}").to_lowercase();
        client.create_collection(&name, &config4()).await.unwrap();
        let mut written = 0;
        for round in 0..10u64 {
            let w = client.upsert(&name, points(round * 10, 10)).await.unwrap();
            assert_eq!(client.session_index(), w.index);
            written += 10;
            // Straight after the write, on whichever replica: the session token makes it wait.
            let info = client.collection(&name).await.unwrap();
            assert_eq!(
                info.points, written,
                "{policy:?}: a replica answered without our write"
            );
            assert!(info.index >= w.index);
        }
        let served: BTreeMap<String, u64> = client
            .read_stats()
            .into_iter()
            .map(|s| (s.url, s.served))
            .collect();
        assert_eq!(served.keys().cloned().collect::<Vec<_>>(), {
            let mut r = vec![b.url(), c.url()];
            r.sort();
            r
        });
        assert_eq!(served.values().sum::<u64>(), 10);
        if policy == Policy::RoundRobin {
            assert!(served.values().all(|n| *n == 5), "{served:?}");
        }
    }

    // Per-node probes.
    let probe = Client::builder([a.url()]).connect().await.unwrap();
    let health = probe.health(&b.url()).await.unwrap();
    assert_eq!(health.status, "ok");
    assert!(probe.readiness(&b.url()).await.unwrap() >= 1);
    assert!(probe.readiness("http://127.0.0.1:1").await.is_err());

    // A replica dies: every read still succeeds (retried on the other one).
    let client = Client::builder([a.url()])
        .policy(Policy::RoundRobin)
        .connect()
        .await
        .unwrap();
    let b_url = b.url();
    b.stop().await.unwrap();
    for i in 0..10u64 {
        let got = client.get_point("roundrobin", &PointId::Num(i)).await;
        assert!(got.is_ok(), "read {i} failed: {:?}", got.err());
    }
    // The dead replica was either counted as failed or already dropped by the rediscovery that
    // its failure asked for.
    let stats = client.read_stats();
    let dead = stats.iter().find(|s| s.url == b_url);
    assert!(dead.is_none_or(|s| s.failures >= 1), "{stats:?}");
    c.stop().await.unwrap();
    a.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_writes_follow_the_leader_after_failover() {
    let [(a, _da), (b, _db), (c, _dc)] = start_three_voters().await;
    let client = Client::builder([a.url()]).connect().await.unwrap();
    client.create_collection("f", &config4()).await.unwrap();
    client.upsert("f", points(0, 10)).await.unwrap();
    a.stop().await.unwrap();
    // Until a new leader is elected a write fails with a clear error (never a silent retry of
    // an ambiguous write); then the client finds the new leader by itself.
    let deadline = std::time::Instant::now() + WAIT;
    let w = loop {
        match client.upsert("f", points(10, 10)).await {
            Ok(w) => break w,
            Err(ClientError::Api { status, .. }) if status.is_server_error() => {}
            Err(ClientError::NoNode(_)) => {}
            Err(ClientError::Http(e)) if e.is_connect() => {}
            Err(e) => panic!("unexpected: {e}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "writes did not resume"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let leader = client.leader().unwrap();
    assert!(leader == b.url() || leader == c.url(), "{leader}");
    let info = client
        .collection_with(
            "f",
            Some(&quiver::model::Consistency::MinIndex { min_index: w.index }),
        )
        .await
        .unwrap();
    assert_eq!(info.points, 20);
    b.stop().await.unwrap();
    c.stop().await.unwrap();
}

/// Review H5: a read whose connection broke after it was sent (as when the request itself killed
/// the node) is not repeated on the next node. Two fake nodes read the request and drop the
/// connection unanswered; exactly one of them sees it.
#[tokio::test]
async fn a_read_that_broke_a_node_is_not_sent_to_another() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;

    let seen = Arc::new(AtomicUsize::new(0));
    let mut urls = Vec::new();
    for _ in 0..2 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        urls.push(format!("http://{}", listener.local_addr().unwrap()));
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = vec![0u8; 65536];
                let _ = conn.read(&mut buf).await;
                seen.fetch_add(1, Ordering::SeqCst);
                drop(conn);
            }
        });
    }
    let client = Client::builder(urls)
        .discover(false)
        .policy(Policy::RoundRobin)
        .build()
        .unwrap();
    let req = quiver::model::SearchRequest::new(vec![1.0, 0.0, 0.0], 3);
    let err = client.search("d", &req).await.unwrap_err();
    assert!(matches!(err, ClientError::Http(_)), "{err}");
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}
