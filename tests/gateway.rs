//! The gateway in front of in-process clusters: writes reach the leader, reads spread over the
//! ready replicas by policy, a replica that dies is skipped (its read retried elsewhere), and
//! after a leader fails over, writes through the gateway resume with nothing acknowledged lost.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use quiver::gateway::{Gateway, GatewayConfig, NODE_HEADER};
use quiver::model::{PointId, UpsertRequest};
use quiver_client::Policy;

mod common;
use common::http::{metrics_text, send, Body, Key};
use common::*;

/// Sends a JSON request through the gateway: (status, body, serving node).
async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value, String) {
    let body = body.map_or(Body::Empty, Body::Json);
    let reply = send(http, method, &url, &body, Key::Anonymous).await;
    let node = reply
        .headers
        .get(NODE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (reply.status.as_u16(), reply.body, node)
}

fn upsert_body(from: u64, n: u64) -> serde_json::Value {
    serde_json::to_value(UpsertRequest {
        points: points(from, n),
    })
    .unwrap()
}

fn search_body(min_index: u64) -> serde_json::Value {
    serde_json::to_value(query(min_index)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_routes_writes_to_the_leader_and_spreads_reads() {
    let (a, _da) = start(None, false, |_| {}).await;
    let (b, _db) = start(Some(&a.url()), false, |_| {}).await;
    let (c, _dc) = start(Some(&a.url()), false, |_| {}).await;
    wait_members(&a, 3).await;
    let gw = Gateway::start(GatewayConfig::for_test(vec![a.url()], Policy::RoundRobin))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let put = reqwest::Method::PUT;
    let (s, _, node) = call(
        &http,
        put.clone(),
        format!("{}/collections/g", gw.url()),
        Some(serde_json::to_value(config4()).unwrap()),
    )
    .await;
    assert_eq!((s, node.as_str()), (200, a.url().as_str()));
    let (s, w, node) = call(
        &http,
        put,
        format!("{}/collections/g/points", gw.url()),
        Some(upsert_body(0, 200)),
    )
    .await;
    assert_eq!((s, node), (200, a.url()));
    let index = w["index"].as_u64().unwrap();

    // Both replicas become ready readers; the leader serves no reads while they are.
    eventually("two ready readers", || async {
        gw.status().readers.len() == 2
    })
    .await;
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    let post = reqwest::Method::POST;
    for _ in 0..20 {
        let (s, body, node) = call(
            &http,
            post.clone(),
            format!("{}/collections/g/points/search", gw.url()),
            Some(search_body(index)),
        )
        .await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(body["hits"].as_array().map(Vec::len), Some(10));
        assert!(
            body["index"].as_u64().unwrap() >= index,
            "the token passed through"
        );
        *served.entry(node).or_default() += 1;
    }
    // Both replicas, never the leader. (Exact alternation is the balancer's unit test: here a
    // replica that misses a readiness probe under load may sit out a refresh.)
    assert_eq!(served.values().sum::<usize>(), 20);
    assert!(
        served.keys().all(|n| *n == b.url() || *n == c.url()) && served.len() == 2,
        "round robin spreads over the replicas: {served:?}"
    );
    // HEAD keeps the upstream's length.
    let head = http
        .head(format!("{}/collections/g?min_index={index}", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    let len = head
        .headers()
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(len.is_some_and(|n| n > 0), "{:?}", head.headers());
    // Bad input still gets the node's 4xx naming the field, untouched.
    let (s, body, _) = call(
        &http,
        reqwest::Method::POST,
        format!("{}/collections/g/points/search", gw.url()),
        Some(serde_json::json!({"vector": [1.0], "k": 3})),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(body["error"]["field"], "vector");

    // A replica dies: reads keep succeeding (a failed read is retried on the other replica), and
    // the dead one is dropped from the readers at the next refresh.
    b.stop().await.unwrap();
    for _ in 0..10 {
        let (s, _, node) = call(
            &http,
            reqwest::Method::POST,
            format!("{}/collections/g/points/search", gw.url()),
            Some(search_body(index)),
        )
        .await;
        assert_eq!((s, node), (200, c.url()));
    }
    eventually("dead replica dropped", || async {
        gw.status().readers.iter().all(|r| r.url == c.url())
    })
    .await;
    let status: serde_json::Value = reqwest::get(format!("{}/gateway/status", gw.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["leader"], serde_json::json!(a.url()));
    assert_eq!(status["policy"], "round_robin");
    let metrics = metrics_text(&gw.url()).await;
    for want in [
        "quiver_gateway_requests_total{kind=\"read\"",
        "quiver_gateway_requests_total{kind=\"write\"",
        "quiver_gateway_retries_total{kind=\"read\"}",
        "quiver_gateway_leader_known 1",
    ] {
        assert!(metrics.contains(want), "{want} missing from:\n{metrics}");
    }
    gw.stop().await;
    c.stop().await.unwrap();
    a.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn least_outstanding_and_power_of_two_use_every_replica() {
    let (a, _da) = start(None, false, |_| {}).await;
    let (b, _db) = start(Some(&a.url()), false, |_| {}).await;
    let (c, _dc) = start(Some(&a.url()), false, |_| {}).await;
    wait_members(&a, 3).await;
    let http = reqwest::Client::new();
    let gw0 = Gateway::start(GatewayConfig::for_test(vec![a.url()], Policy::RoundRobin))
        .await
        .unwrap();
    let (_, w, _) = call(
        &http,
        reqwest::Method::PUT,
        format!("{}/collections/p", gw0.url()),
        Some(serde_json::to_value(config4()).unwrap()),
    )
    .await;
    let index = w["index"].as_u64().unwrap();
    gw0.stop().await;
    for policy in [Policy::LeastOutstanding, Policy::PowerOfTwo] {
        let gw = Gateway::start(GatewayConfig::for_test(vec![b.url()], policy))
            .await
            .unwrap();
        eventually("two readers", || async { gw.status().readers.len() == 2 }).await;
        // Concurrent reads, so that in-flight counts and latencies differ between nodes.
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (http, url) = (http.clone(), gw.url());
            tasks.push(tokio::spawn(async move {
                let mut nodes = Vec::new();
                for _ in 0..10 {
                    let (s, _, node) = call(
                        &http,
                        reqwest::Method::GET,
                        format!("{url}/collections/p?min_index={index}"),
                        None,
                    )
                    .await;
                    assert_eq!(s, 200);
                    nodes.push(node);
                }
                nodes
            }));
        }
        let mut served: BTreeMap<String, usize> = BTreeMap::new();
        for t in tasks {
            for node in t.await.unwrap() {
                *served.entry(node).or_default() += 1;
            }
        }
        assert_eq!(served.values().sum::<usize>(), 80);
        assert!(
            served.keys().all(|n| *n == b.url() || *n == c.url()),
            "{policy:?}: reads only on replicas: {served:?}"
        );
        let stats = gw.status().readers;
        assert_eq!(stats.iter().map(|s| s.served).sum::<u64>(), 80, "{stats:?}");
        assert!(stats.iter().all(|s| s.outstanding == 0));
        gw.stop().await;
    }
    for n in [b, c, a] {
        n.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_through_the_gateway_resume_after_leader_failover() {
    let [(a, _da), (b, _db), (c, _dc)] = start_three_voters().await;
    // The gateway is seeded with the first node only: it must learn the others from it.
    let gw = Gateway::start(GatewayConfig::for_test(vec![a.url()], Policy::PowerOfTwo))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let (s, _, _) = call(
        &http,
        reqwest::Method::PUT,
        format!("{}/collections/f", gw.url()),
        Some(serde_json::to_value(config4()).unwrap()),
    )
    .await;
    assert_eq!(s, 200);
    let mut acked = Vec::new();
    for batch in 0..10u64 {
        let (s, _, _) = call(
            &http,
            reqwest::Method::PUT,
            format!("{}/collections/f/points", gw.url()),
            Some(upsert_body(batch * 10, 10)),
        )
        .await;
        assert_eq!(s, 200);
        acked.extend(batch * 10..batch * 10 + 10);
    }
    eventually("gateway knows all three", || async {
        gw.status().members.len() == 3
    })
    .await;
    let old_leader = a.url();
    a.stop().await.unwrap();

    // Writes through the gateway fail with a retryable 503 until a new leader is found, then
    // succeed; a client retrying 503s loses nothing.
    let deadline = Instant::now() + WAIT;
    let mut batch = 100u64;
    let mut resumed = 0;
    while resumed < 5 {
        let (s, body, node) = call(
            &http,
            reqwest::Method::PUT,
            format!("{}/collections/f/points", gw.url()),
            Some(upsert_body(batch * 10, 10)),
        )
        .await;
        match s {
            200 => {
                assert_ne!(node, old_leader);
                acked.extend(batch * 10..batch * 10 + 10);
                batch += 1;
                resumed += 1;
            }
            503 => {
                assert!(Instant::now() < deadline, "writes did not resume: {body}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let leader = gw.status().leader.unwrap();
    let last = [&b, &c].iter().map(|n| n.cluster.applied()).max().unwrap();
    for n in [&b, &c] {
        wait_applied(n, last).await;
        for id in &acked {
            assert!(
                n.engine.get_point("f", &PointId::Num(*id)).is_ok(),
                "acknowledged point {id} lost on {} (leader {leader})",
                n.id()
            );
        }
    }
    gw.stop().await;
    b.stop().await.unwrap();
    c.stop().await.unwrap();
}

/// The public entry point never proxies Raft RPC or membership changes, even with the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_does_not_proxy_internal_endpoints() {
    let (a, _da) = start(None, false, |_| {}).await;
    let gw = Gateway::start(GatewayConfig::for_test(vec![a.url()], Policy::RoundRobin))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    for path in [
        "/raft/vote",
        "/raft/append",
        "/raft/snapshot",
        "/cluster/join",
        "/cluster/leave",
        "/cluster/promote",
        "/cluster/read_index",
    ] {
        let r = http
            .post(format!("{}{path}", gw.url()))
            .header("x-quiver-cluster-secret", SECRET)
            .json(&serde_json::json!({"id": 42, "addr": "http://127.0.0.1:9", "voter": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    wait_members(&a, 1).await;
    assert_eq!(
        a.cluster
            .metrics()
            .membership_config
            .membership()
            .nodes()
            .count(),
        1
    );
}

/// Review L7: with an API key, the gateway's own status and metrics (every member's address, the
/// leader) need it as the nodes' endpoints do; the probes stay open, and proxied requests carry
/// the caller's key to the nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_own_endpoints_need_its_api_key() {
    const KEY: &str = "gateway-test-key";
    let (a, _da) = start(None, false, |c| c.api_key = Some(KEY.into())).await;
    let mut config = GatewayConfig::for_test(vec![a.url()], Policy::RoundRobin);
    config.api_key = Some(KEY.into());
    let gw = Gateway::start(config).await.unwrap();
    let http = reqwest::Client::new();
    for (path, key, want) in [
        ("/gateway/status", Key::Anonymous, 401),
        ("/gateway/status", Key::Bearer("wrong-key"), 401),
        ("/gateway/status", Key::Bearer(KEY), 200),
        ("/metrics", Key::Anonymous, 401),
        ("/metrics", Key::Header(KEY), 200),
        ("/healthz", Key::Anonymous, 200),
        ("/readyz", Key::Anonymous, 200),
        ("/collections", Key::Anonymous, 401),
        ("/collections", Key::Bearer(KEY), 200),
    ] {
        let url = format!("{}{path}", gw.url());
        let reply = send(&http, reqwest::Method::GET, &url, &Body::Empty, key).await;
        assert_eq!(reply.status.as_u16(), want, "{path} with {key:?}");
    }
    gw.stop().await;
    a.stop().await.unwrap();
}
