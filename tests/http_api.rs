//! HTTP integration tests against a real node bound to port 0: every endpoint, every error case,
//! restart persistence, API keys, concurrent writes (group commit).

use quiver::config::Config;
use quiver::node::Node;
use reqwest::StatusCode;
use serde_json::{json, Value};

mod common;
use common::http::{send, Body, Key};

struct Harness {
    node: Node,
    http: reqwest::Client,
    _dir: Option<tempfile::TempDir>,
}

impl Harness {
    async fn start() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::for_test(dir.path());
        Harness::with(config, Some(dir)).await
    }

    async fn with(config: Config, dir: Option<tempfile::TempDir>) -> Harness {
        let node = Node::start(config).await.unwrap();
        Harness {
            node,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    /// (status, JSON body, or the text as a JSON string when it is not JSON).
    async fn send(
        &self,
        method: &str,
        path: &str,
        body: &Body<'_>,
        key: Key<'_>,
    ) -> (StatusCode, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let url = format!("{}{}", self.node.url(), path);
        let reply = send(&self.http, method, &url, body, key).await;
        (reply.status, reply.body)
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call_with(method, path, body, None).await
    }

    async fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> (StatusCode, Value) {
        let body = body.map_or(Body::Empty, Body::Json);
        let key = key.map_or(Key::Anonymous, Key::Bearer);
        self.send(method, path, &body, key).await
    }

    /// `body` as is, as JSON.
    async fn raw(&self, method: &str, path: &str, body: &str) -> (StatusCode, Value) {
        self.send(method, path, &Body::Raw(body), Key::Anonymous)
            .await
    }
}

/// Asserts a 4xx JSON error naming `field`.
fn assert_field_error(got: (StatusCode, Value), status: StatusCode, field: &str) {
    assert_eq!(got.0, status, "body: {}", got.1);
    assert_eq!(got.1["error"]["field"], json!(field), "body: {}", got.1);
    assert!(got.1["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
}

/// What a row of a table test must get back.
#[derive(Debug)]
enum Want {
    /// 400, with an error naming this field and a message.
    Field(&'static str),
    /// This status and error code.
    Code(u16, &'static str),
    /// This status, and this value at a JSON pointer into the body.
    At(u16, &'static str, Value),
    /// This status; the body is not looked at.
    Status(u16),
}

/// One row of a table test: method, path, body, API key, and what it must get back.
type Row<'a> = (&'a str, &'a str, Body<'a>, Key<'a>, Want);

/// Sends the rows in order and checks each answer; a failure names the row (counted from 1).
async fn check_rows<'a>(h: &Harness, rows: impl IntoIterator<Item = Row<'a>>) {
    for (i, (method, path, body, key, want)) in rows.into_iter().enumerate() {
        let (status, got) = h.send(method, path, &body, key).await;
        let row = format!("row {}: {method} {path} with {key:?} and {body}", i + 1);
        match want {
            Want::Field(field) => {
                assert_eq!(status, 400, "{row}: {got}");
                assert_eq!(got["error"]["field"], json!(field), "{row}: {got}");
                assert!(
                    got["error"]["message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty()),
                    "{row}: {got}"
                );
            }
            Want::Code(want, code) => {
                assert_eq!(status, want, "{row}: {got}");
                assert_eq!(got["error"]["code"], json!(code), "{row}: {got}");
            }
            Want::At(want, pointer, value) => {
                assert_eq!(status, want, "{row}: {got}");
                assert_eq!(got.pointer(pointer), Some(&value), "{row}: {got}");
            }
            Want::Status(want) => assert_eq!(status, want, "{row}: {got}"),
        }
    }
}

async fn create_docs(h: &Harness) {
    let (s, b) = h
        .call(
            "PUT",
            "/collections/docs",
            Some(json!({"dim": 3, "metric": "cosine"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = h
        .call(
            "PUT",
            "/collections/docs/points",
            Some(json!({"points": [
                {"id": 1, "vector": [1.0, 0.0, 0.0], "payload": {"lang": "en", "n": 1}},
                {"id": "b7e2c7f0-1b7e-4d5a-9f00-000000000002", "vector": [0.0, 1.0, 0.0], "payload": {"lang": "de", "n": 2}},
                {"id": 3, "vector": [0.7, 0.7, 0.0], "payload": {"lang": "en", "n": 3}},
                {"id": 4, "vector": [0.0, 0.0, 5.0]}
            ]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["upserted"], 4);
}

#[tokio::test]
async fn collections_lifecycle_and_errors() {
    let h = Harness::start().await;
    let (s, b) = h.call("GET", "/healthz", None).await;
    assert_eq!((s, &b["status"]), (StatusCode::OK, &json!("ok")));

    let (s, b) = h
        .call(
            "PUT",
            "/collections/c1",
            Some(json!({"dim": 4, "metric": "l2", "hnsw": {"m": 8}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["created"], true);
    let first_index = b["index"].as_u64().unwrap();
    // Idempotent with the same config, 409 with another.
    let (s, b) = h
        .call(
            "PUT",
            "/collections/c1",
            Some(json!({"dim": 4, "metric": "l2", "hnsw": {"m": 8}})),
        )
        .await;
    assert_eq!((s, &b["created"]), (StatusCode::OK, &json!(false)));
    assert!(b["index"].as_u64().unwrap() > first_index);
    let (s, b) = h
        .call(
            "PUT",
            "/collections/c1",
            Some(json!({"dim": 5, "metric": "l2"})),
        )
        .await;
    assert_eq!(
        (s, &b["error"]["code"]),
        (StatusCode::CONFLICT, &json!("conflict"))
    );

    assert_field_error(
        h.call(
            "PUT",
            "/collections/c2",
            Some(json!({"dim": 0, "metric": "l2"})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "dim",
    );
    assert_field_error(
        h.call(
            "PUT",
            "/collections/c2",
            Some(json!({"dim": 4, "metric": "hamming"})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "metric",
    );
    assert_field_error(
        h.call("PUT", "/collections/c2", Some(json!({"metric": "l2"})))
            .await,
        StatusCode::BAD_REQUEST,
        "body",
    );
    assert_field_error(
        h.call(
            "PUT",
            "/collections/c2",
            Some(json!({"dim": 4, "metric": "l2", "hnsw": {"m": 100000}})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "hnsw.m",
    );
    assert_field_error(
        h.call(
            "PUT",
            "/collections/c2",
            Some(json!({"dim": 4, "metric": "l2", "size": 1})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "size",
    );
    assert_field_error(
        h.call(
            "PUT",
            "/collections/bad%20name",
            Some(json!({"dim": 4, "metric": "l2"})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "name",
    );
    assert_field_error(
        h.raw("PUT", "/collections/c2", "{not json").await,
        StatusCode::BAD_REQUEST,
        "body",
    );
    assert_field_error(
        h.raw("PUT", "/collections/c2", "").await,
        StatusCode::BAD_REQUEST,
        "body",
    );

    let (s, b) = h.call("GET", "/collections", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["collections"].as_array().unwrap().len(), 1);
    let (s, b) = h.call("GET", "/collections/c1", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["config"]["hnsw"]["m"], 8);
    assert!(
        b["index"].as_u64().unwrap() >= first_index,
        "reads carry their applied index: {b}"
    );
    assert_eq!(b["points"], 0);
    let (s, b) = h.call("GET", "/collections/nope", None).await;
    assert_eq!(
        (s, &b["error"]["code"]),
        (StatusCode::NOT_FOUND, &json!("collection_not_found"))
    );

    let (s, _) = h.call("DELETE", "/collections/c1", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = h.call("DELETE", "/collections/c1", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = h.call("GET", "/collections/c1", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, b) = h.call("GET", "/no/such/route", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");

    let (s, b) = h.call("GET", "/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(b["paths"]["/collections/{name}/points/search"]["post"].is_object());
    assert!(b["components"]["schemas"]["SearchRequest"].is_object());
    h.node.stop().await.unwrap();
}

#[tokio::test]
async fn points_and_search() {
    let h = Harness::start().await;
    create_docs(&h).await;

    // Get by integer id, by string id; cosine vectors come back normalised.
    let (s, b) = h.call("GET", "/collections/docs/points/4", None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["vector"], json!([0.0, 0.0, 1.0]));
    let (s, b) = h
        .call(
            "GET",
            "/collections/docs/points/b7e2c7f0-1b7e-4d5a-9f00-000000000002",
            None,
        )
        .await;
    assert_eq!((s, &b["payload"]["lang"]), (StatusCode::OK, &json!("de")));
    let (s, b) = h.call("GET", "/collections/docs/points/99", None).await;
    assert_eq!(
        (s, &b["error"]["code"]),
        (StatusCode::NOT_FOUND, &json!("point_not_found"))
    );

    // Search: best first, payload by default, vectors on request.
    let (s, b) = h
        .call(
            "POST",
            "/collections/docs/points/search",
            Some(json!({"vector": [1.0, 0.1, 0.0], "k": 2, "with_vector": true})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let hits = b["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[0]["id"], 1);
    assert_eq!(hits[1]["id"], 3);
    assert!(hits[0]["score"].as_f64().unwrap() > hits[1]["score"].as_f64().unwrap());
    assert!(hits[0]["vector"].is_array() && hits[0]["payload"].is_object());
    assert!(b["index"].as_u64().unwrap() >= 2);

    // Filters, score threshold, without payload.
    let (_, b) = h
        .call(
            "POST",
            "/collections/docs/points/search",
            Some(json!({"vector": [1.0, 0.0, 0.0], "k": 10,
            "filter": {"must": [{"key": "lang", "match": {"value": "de"}}]}})),
        )
        .await;
    assert_eq!(b["hits"].as_array().unwrap().len(), 1);
    let (_, b) = h
        .call("POST", "/collections/docs/points/search", Some(json!({"vector": [1.0, 0.0, 0.0], "k": 10,
            "filter": {"must_not": [{"key": "n", "range": {"gte": 2}}], "should": [{"key": "lang", "match": {"any": ["en", "fr"]}}]}})))
        .await;
    assert_eq!(
        b["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["id"].clone())
            .collect::<Vec<_>>(),
        vec![json!(1)]
    );
    let (_, b) = h
        .call("POST", "/collections/docs/points/search", Some(json!({"vector": [1.0, 0.0, 0.0], "k": 10, "score_threshold": 0.5, "with_payload": false})))
        .await;
    let hits = b["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 2);
    assert!(hits.iter().all(|h| h.get("payload").is_none()));

    // Batch search.
    let (s, b) = h
        .call("POST", "/collections/docs/points/search/batch", Some(json!({"searches": [
            {"vector": [1.0, 0.0, 0.0], "k": 1}, {"vector": [0.0, 0.0, 1.0], "k": 1, "exact": true}]})))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["results"][0][0]["id"], 1);
    assert_eq!(b["results"][1][0]["id"], 4);

    // Upsert replaces.
    let (_, b) = h.call("PUT", "/collections/docs/points", Some(json!({"points": [{"id": 1, "vector": [0.0, 0.0, 1.0], "payload": {"lang": "fr"}}]}))).await;
    assert_eq!(b["upserted"], 1);
    let (_, b) = h.call("GET", "/collections/docs/points/1", None).await;
    assert_eq!(b["payload"]["lang"], "fr");
    let (_, b) = h.call("GET", "/collections/docs", None).await;
    assert_eq!(
        (b["points"].as_u64(), b["tombstones"].as_u64()),
        (Some(4), Some(1))
    );

    // Deletes by ids and by filter.
    let (s, b) = h
        .call(
            "POST",
            "/collections/docs/points/delete",
            Some(json!({"ids": [1, 99]})),
        )
        .await;
    assert_eq!((s, &b["deleted"]), (StatusCode::OK, &json!(1)));
    let (s, b) = h
        .call(
            "POST",
            "/collections/docs/points/delete",
            Some(json!({"filter": {"must": [{"key": "lang", "match": {"value": "de"}}]}})),
        )
        .await;
    assert_eq!((s, &b["deleted"]), (StatusCode::OK, &json!(1)));
    let (_, b) = h.call("GET", "/collections/docs", None).await;
    assert_eq!(b["points"], 2);
    let (_, b) = h
        .call(
            "POST",
            "/collections/docs/points/search",
            Some(json!({"vector": [0.0, 1.0, 0.0], "k": 10})),
        )
        .await;
    let ids: Vec<Value> = b["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].clone())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(!ids.contains(&json!(1)));

    let (s, b) = h.call("GET", "/metrics", None).await;
    assert_eq!(s, StatusCode::OK);
    let text = b.as_str().unwrap();
    assert!(
        text.contains("quiver_collection_points{collection=\"docs\"} 2"),
        "{text}"
    );
    assert!(text.contains("quiver_collection_tombstones{collection=\"docs\"}"));
    assert!(text.contains("quiver_http_request_duration_seconds_bucket"));
    assert!(text.contains("route=\"/collections/{name}/points/search\""));
    h.node.stop().await.unwrap();
}

#[tokio::test]
async fn every_bad_input_is_a_4xx_naming_the_field() {
    use Body::{Json, Raw};
    use Want::{Code, Field, Status};
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_test(dir.path());
    config.max_body_bytes = 64 * 1024;
    let h = Harness::with(config, Some(dir)).await;
    create_docs(&h).await;
    let up = |points: Value| Json(json!({ "points": points }));
    let big: Vec<f32> = vec![0.5; 3];
    let many: Vec<Value> = (0..3000).map(|i| json!({"id": i, "vector": big})).collect();
    let points = "/collections/docs/points";
    let search = "/collections/docs/points/search";
    let batch = "/collections/docs/points/search/batch";
    let delete = "/collections/docs/points/delete";
    #[rustfmt::skip]
    let rows = vec![
        ("PUT", points, up(json!([])), Field("points")),
        ("PUT", points, up(json!([{"id": 9, "vector": [1, 0, 0]}, {"id": 10, "vector": [1, 0]}])), Field("points[1].vector")),
        ("PUT", points, up(json!([{"id": 9, "vector": [0, 0, 0]}])), Field("points[0].vector")),
        ("PUT", points, Raw(r#"{"points":[{"id":9,"vector":[1e39,0,0]}]}"#), Field("points[0].vector[0]")),
        ("PUT", points, Raw(r#"{"points":[{"id":9,"vector":[NaN,0,0]}]}"#), Field("points[0].vector[0]")),
        ("PUT", points, Raw(r#"{"points":[{"id":9,"vector":[1,10000000000000002,0]}]}"#), Field("points[0].vector[1]")),
        ("POST", search, Raw(r#"{"vector":[-2e16,0,0]}"#), Field("vector[0]")),
        ("PUT", points, up(json!([{"id": 9, "vector": [1, "x", 0]}])), Field("points[0].vector[1]")),
        ("PUT", points, up(json!([{"id": -1, "vector": [1, 0, 0]}])), Field("points[0].id")),
        ("PUT", points, up(json!([{"id": "", "vector": [1, 0, 0]}])), Field("points[0].id")),
        ("PUT", points, up(json!([{"id": 1.5, "vector": [1, 0, 0]}])), Field("points[0].id")),
        ("PUT", points, up(json!([{"id": 9, "vector": [1, 0, 0], "payload": [1]}])), Field("points[0].payload")),
        ("PUT", points, up(json!([{"vector": [1, 0, 0]}])), Field("points[0]")),
        ("PUT", "/collections/nope/points", up(json!([{"id": 9, "vector": [1, 0, 0]}])), Status(404)),
        ("PUT", points, up(json!(many)), Code(413, "payload_too_large")),
        ("POST", search, Json(json!({"vector": [1, 0, 0], "k": 0})), Field("k")),
        ("POST", search, Json(json!({"vector": [1, 0, 0], "k": 1_000_000})), Field("k")),
        ("POST", search, Json(json!({"vector": [1, 0, 0], "k": 3, "ef": 0})), Field("ef")),
        ("POST", search, Json(json!({"vector": [1, 0, 0], "k": 3, "ef": 1_000_000_000u64})), Field("ef")),
        ("POST", search, Json(json!({"vector": [1, 0], "k": 3})), Field("vector")),
        ("POST", search, Json(json!({"vector": [0, 0, 0], "k": 3})), Field("vector")),
        ("POST", search, Json(json!({"vector": [1, 0, 0], "k": -3})), Field("k")),
        ("POST", search, Json(json!({"k": 3})), Field("body")),
        ("POST", search, Json(json!({"vector": [1, 0, 0], "filter": {"must": [{"key": "a"}]}})), Field("filter.must[0]")),
        ("POST", search, Json(json!({"vector": [1, 0, 0], "filter": {"must": [{"key": "a", "match": {"value": {"x": 1}}}]}})), Field("filter.must[0].match.value")),
        ("POST", search, Json(json!({"vector": [1, 0, 0], "filter": {"must": [{"key": "a", "range": {}}]}})), Field("filter.must[0].range")),
        ("POST", search, Json(json!({"vector": [1, 0, 0], "filter": {"muts": []}})), Field("filter.muts")),
        ("POST", batch, Json(json!({"searches": []})), Field("searches")),
        ("POST", batch, Json(json!({"searches": [{"vector": [1, 0, 0]}, {"vector": [1, 0, 0], "k": 0}]})), Field("searches[1].k")),
        ("POST", delete, Json(json!({})), Field("body")),
        ("POST", delete, Json(json!({"ids": []})), Field("ids")),
        ("POST", delete, Json(json!({"ids": [1], "filter": {}})), Field("body")),
    ];
    let anonymous = rows
        .into_iter()
        .map(|(m, p, b, w)| (m, p, b, Key::Anonymous, w));
    check_rows(&h, anonymous).await;

    // Nothing above changed the data.
    let (_, b) = h.call("GET", "/collections/docs", None).await;
    assert_eq!(
        (b["points"].as_u64(), b["tombstones"].as_u64()),
        (Some(4), Some(0))
    );
    h.node.stop().await.unwrap();
}

/// `POST /collections/{name}/compact` drops the tombstones at once (the leader's idle duty is off
/// here), answers how many, and changes no answer.
#[tokio::test]
async fn compact_drops_tombstones_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_test(dir.path());
    config.compact_idle_secs = 0;
    config.exact_below = 0;
    let h = Harness::with(config, Some(dir)).await;
    h.call(
        "PUT",
        "/collections/c",
        Some(json!({"dim": 3, "metric": "l2"})),
    )
    .await;
    let points: Vec<Value> = (0..600)
        .map(|i| json!({"id": i, "vector": [i as f32, (i % 7) as f32, 1.0]}))
        .collect();
    let (s, b) = h
        .call(
            "PUT",
            "/collections/c/points",
            Some(json!({"points": points})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let gone: Vec<u64> = (0..600).step_by(10).collect();
    let (s, b) = h
        .call(
            "POST",
            "/collections/c/points/delete",
            Some(json!({"ids": gone})),
        )
        .await;
    assert_eq!((s, &b["deleted"]), (StatusCode::OK, &json!(60)));
    let search = json!({"vector": [300.0, 3.0, 1.0], "k": 10, "cache": false});
    let (_, before) = h
        .call("POST", "/collections/c/points/search", Some(search.clone()))
        .await;

    let (s, b) = h.call("POST", "/collections/c/compact", None).await;
    assert_eq!((s, &b["compacted"]), (StatusCode::OK, &json!(60)), "{b}");
    let (_, info) = h.call("GET", "/collections/c", None).await;
    assert_eq!(
        (&info["points"], &info["tombstones"]),
        (&json!(540), &json!(0))
    );
    assert!(h
        .node
        .engine
        .wait_indexed(std::time::Duration::from_secs(30)));
    let (_, after) = h
        .call("POST", "/collections/c/points/search", Some(search))
        .await;
    assert_eq!(after["hits"], before["hits"]);

    // Nothing left to drop; an unknown collection is a 404 naming it.
    let (s, b) = h.call("POST", "/collections/c/compact", None).await;
    assert_eq!((s, &b["compacted"]), (StatusCode::OK, &json!(0)));
    let (s, b) = h.call("POST", "/collections/nope/compact", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    h.node.stop().await.unwrap();
}

#[tokio::test]
async fn selective_filter_returns_the_true_top_k() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_test(dir.path());
    config.exact_below = 0;
    let h = Harness::with(config, Some(dir)).await;
    let (s, _) = h
        .call(
            "PUT",
            "/collections/f",
            Some(json!({"dim": 8, "metric": "l2"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let points: Vec<Value> = (0..3000)
        .map(|i| {
            let v: Vec<f32> = (0..8).map(|d| ((i * 31 + d * 7) % 97) as f32 / 97.0).collect();
            json!({"id": i, "vector": v, "payload": {"kind": if i % 500 == 7 { "rare" } else { "common" }}})
        })
        .collect();
    let (s, _) = h
        .call(
            "PUT",
            "/collections/f/points",
            Some(json!({ "points": points })),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let filter = json!({"must": [{"key": "kind", "match": {"value": "rare"}}]});
    let q = json!([0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]);
    let (_, approx) = h
        .call(
            "POST",
            "/collections/f/points/search",
            Some(json!({"vector": q, "k": 5, "filter": filter})),
        )
        .await;
    let (_, exact) = h
        .call(
            "POST",
            "/collections/f/points/search",
            Some(json!({"vector": q, "k": 5, "filter": filter, "exact": true})),
        )
        .await;
    assert_eq!(approx["hits"].as_array().unwrap().len(), 5);
    assert_eq!(approx["hits"], exact["hits"]);
    h.node.stop().await.unwrap();
}

#[tokio::test]
async fn restart_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_test(dir.path());
    config.exact_below = 0;
    let h = Harness::with(config.clone(), None).await;
    let (s, _) = h
        .call(
            "PUT",
            "/collections/p",
            Some(json!({"dim": 4, "metric": "dot"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    for batch in 0..4 {
        let points: Vec<Value> = (0..500)
            .map(|i| {
                let id = batch * 500 + i;
                json!({"id": format!("id-{id}"), "vector": [id as f32 / 2000.0, 1.0, (id % 7) as f32, -1.0], "payload": {"b": batch}})
            })
            .collect();
        let (s, _) = h
            .call(
                "PUT",
                "/collections/p/points",
                Some(json!({ "points": points })),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
    }
    let (_, d) = h
        .call(
            "POST",
            "/collections/p/points/delete",
            Some(json!({"filter": {"must": [{"key": "b", "match": {"value": 3}}]}})),
        )
        .await;
    assert_eq!(d["deleted"], 500);
    // Exact searches must give identical answers; approximate ones the same scores (ties may
    // resolve to other ids when the restarted node's graph differs, e.g. a rebuild was pending).
    let queries: Vec<Value> = (0..10)
        .map(|i| json!({"vector": [i as f32, 0.5, 1.0, 0.0], "k": 7, "exact": i % 2 == 0}))
        .collect();
    let scores = |hits: &Value| -> Vec<f64> {
        hits.as_array()
            .unwrap()
            .iter()
            .map(|h| h["score"].as_f64().unwrap())
            .collect()
    };
    let mut before = Vec::new();
    for q in &queries {
        before.push(
            h.call("POST", "/collections/p/points/search", Some(q.clone()))
                .await
                .1["hits"]
                .clone(),
        );
    }
    let (_, info_before) = h.call("GET", "/collections/p", None).await;
    let (_, point_before) = h.call("GET", "/collections/p/points/id-42", None).await;
    let last_index = d["index"].as_u64().unwrap();
    h.node.stop().await.unwrap();

    let h = Harness::with(config, None).await;
    let (_, health) = h.call("GET", "/healthz", None).await;
    assert_eq!(health["index"].as_u64(), Some(last_index));
    let (_, info_after) = h.call("GET", "/collections/p", None).await;
    assert_eq!(info_after["points"], info_before["points"]);
    assert_eq!(info_after["points"], 1500);
    let (_, point_after) = h.call("GET", "/collections/p/points/id-42", None).await;
    assert_eq!(point_after["vector"], point_before["vector"]);
    for (q, want) in queries.iter().zip(&before) {
        let (_, got) = h
            .call("POST", "/collections/p/points/search", Some(q.clone()))
            .await;
        assert_eq!(got["hits"].as_array().unwrap().len(), 7);
        if q["exact"] == json!(true) {
            assert_eq!(&got["hits"], want);
        } else {
            assert_eq!(scores(&got["hits"]), scores(want));
        }
    }
    // Writes continue with increasing indices.
    let (_, w) = h
        .call(
            "PUT",
            "/collections/p/points",
            Some(json!({"points": [{"id": 5, "vector": [1, 1, 1, 1]}]})),
        )
        .await;
    assert!(w["index"].as_u64().unwrap() > last_index);
    h.node.stop().await.unwrap();
}

#[tokio::test]
async fn api_keys() {
    use Body::{Empty, Json};
    use Want::{At, Code, Status};
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_test(dir.path());
    config.api_key = Some("admin-secret".into());
    config.read_only_api_key = Some("reader-secret".into());
    let h = Harness::with(config, Some(dir)).await;
    let (admin, reader) = (Key::Bearer("admin-secret"), Key::Bearer("reader-secret"));
    let (anonymous, wrong) = (Key::Anonymous, Key::Bearer("wrong"));
    let create = || Json(json!({"dim": 2, "metric": "l2"}));
    let search = || Json(json!({"vector": [1, 2], "k": 1}));
    #[rustfmt::skip]
    let rows = vec![
        ("PUT", "/collections/k", create(), anonymous, Code(401, "unauthorized")),
        ("PUT", "/collections/k", create(), wrong, Status(401)),
        ("PUT", "/collections/k", create(), reader, Code(403, "forbidden")),
        ("PUT", "/collections/k", create(), admin, Status(200)),
        ("PUT", "/collections/k/points", Json(json!({"points": [{"id": 1, "vector": [1, 2]}]})), admin, Status(200)),
        ("PUT", "/collections/k/points", Json(json!({"points": [{"id": 2, "vector": [1, 2]}]})), reader, Status(403)),
        ("POST", "/collections/k/points/delete", Json(json!({"ids": [1]})), reader, Status(403)),
        ("DELETE", "/collections/k", Empty, reader, Status(403)),
        ("POST", "/collections/k/points/search", search(), reader, At(200, "/hits/0/id", json!(1))),
        ("POST", "/collections/k/points/search", search(), anonymous, Status(401)),
        ("GET", "/collections/k/points/1", Empty, reader, Status(200)),
        ("GET", "/metrics", Empty, anonymous, Status(401)),
        // The liveness probe stays open so that orchestrators can use it.
        ("GET", "/healthz", Empty, anonymous, Status(200)),
        // The header form `api-key:` works too.
        ("GET", "/collections", Empty, Key::Header("reader-secret"), Status(200)),
    ];
    check_rows(&h, rows).await;
    h.node.stop().await.unwrap();
}

#[tokio::test]
async fn concurrent_writes_are_group_committed_and_all_visible() {
    let h = Harness::start().await;
    let (s, _) = h
        .call(
            "PUT",
            "/collections/g",
            Some(json!({"dim": 2, "metric": "l2"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let client = quiver_client::Client::new(&h.node.url(), None).unwrap();
    let mut set = tokio::task::JoinSet::new();
    for w in 0..32u64 {
        let c = client.clone();
        set.spawn(async move {
            let points = (0..20)
                .map(|i| quiver::model::PointInput {
                    id: quiver::model::PointId::Num(w * 100 + i),
                    vector: vec![w as f32, i as f32],
                    payload: None,
                })
                .collect();
            c.upsert("g", points).await.unwrap().index
        });
    }
    let mut indices = Vec::new();
    while let Some(i) = set.join_next().await {
        indices.push(i.unwrap());
    }
    let info = client.collection("g").await.unwrap();
    assert_eq!(info.points, 640);
    // Every write got an index; concurrent ones may share one durable batch.
    assert!(indices.iter().all(|i| *i >= 2));
    // Each acknowledged write is visible immediately, before the graph catches up.
    let p = client
        .get_point("g", &quiver::model::PointId::Num(3119))
        .await
        .unwrap();
    assert_eq!(p.point.vector, vec![31.0, 19.0]);
    h.node.stop().await.unwrap();
}

#[tokio::test]
async fn several_points_are_read_in_one_request() {
    let h = Harness::start().await;
    create_docs(&h).await;
    let (s, b) = h
        .call(
            "POST",
            "/collections/docs/points/get",
            Some(json!({"ids": [3, "nope", "b7e2c7f0-1b7e-4d5a-9f00-000000000002", 1], "with_vector": false})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let ids: Vec<&Value> = b["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["id"])
        .collect();
    assert_eq!(
        ids,
        [
            &json!(3),
            &json!("b7e2c7f0-1b7e-4d5a-9f00-000000000002"),
            &json!(1)
        ]
    );
    assert_eq!(b["points"][0]["payload"]["n"], 3);
    assert_eq!(b["points"][0]["vector"], json!([]));
    assert!(b["index"].as_u64().unwrap() >= 2);
    let (_, b) = h
        .call(
            "POST",
            "/collections/docs/points/get",
            Some(json!({"ids": [4]})),
        )
        .await;
    assert_eq!(b["points"][0]["vector"], json!([0.0, 0.0, 1.0]));
    assert_field_error(
        h.call(
            "POST",
            "/collections/docs/points/get",
            Some(json!({"ids": []})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "ids",
    );
    assert_field_error(
        h.call(
            "POST",
            "/collections/docs/points/get",
            Some(json!({"ids": [1], "bogus": 1})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bogus",
    );
    let (s, b) = h
        .call(
            "POST",
            "/collections/none/points/get",
            Some(json!({"ids": [1]})),
        )
        .await;
    assert_eq!(
        (s, &b["error"]["code"]),
        (StatusCode::NOT_FOUND, &json!("collection_not_found"))
    );
    h.node.stop().await.unwrap();
}

/// Without `--cluster-secret` the internal endpoints are closed (C1): neither an unauthenticated
/// caller nor one holding the API key can join, leave, promote, read the read index, vote or
/// append, and nothing is streamed anywhere.
#[tokio::test]
async fn internal_endpoints_are_closed_without_a_cluster_secret() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_test(dir.path());
    config.api_key = Some("admin-secret".into());
    assert!(config.cluster_secret.is_none());
    let h = Harness::with(config, Some(dir)).await;
    let join = json!({"id": 42, "addr": "http://127.0.0.1:9", "voter": true});
    for key in [None, Some("admin-secret")] {
        for (path, body) in [
            ("/cluster/join", join.clone()),
            ("/cluster/leave", json!({"id": 1})),
            ("/cluster/promote", json!({"id": 42})),
            ("/cluster/read_index", json!({})),
        ] {
            let (s, b) = h.call_with("POST", path, Some(body), key).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{path} with {key:?}: {b}");
        }
        for path in ["/raft/vote", "/raft/append", "/raft/snapshot"] {
            let mut req = h
                .http
                .post(format!("{}{path}", h.node.url()))
                .body(vec![0u8; 64]);
            if let Some(k) = key {
                req = req.bearer_auth(k);
            }
            let s = req.send().await.unwrap().status();
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{path} with {key:?}");
        }
    }
    // A guessed secret header does not help either.
    let s = h
        .http
        .post(format!("{}/cluster/join", h.node.url()))
        .header("x-quiver-cluster-secret", "")
        .json(&join)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // The membership is still this node alone.
    let (_, c) = h
        .call_with("GET", "/cluster", None, Some("admin-secret"))
        .await;
    assert_eq!(c["members"].as_array().map(Vec::len), Some(1), "{c}");
}

/// Settings that would leave a cluster's internal endpoints guessable are refused at start.
#[test]
fn cluster_settings_need_a_real_secret() {
    let dir = tempfile::tempdir().unwrap();
    let base = Config::for_test(dir.path());
    assert!(base.validate().is_ok(), "a lone node needs no secret");
    let mut c = base.clone();
    c.join = Some("http://127.0.0.1:7070".into());
    assert!(c.validate().is_err(), "--join without a secret");
    let mut c = base.clone();
    c.peers = Some("http://127.0.0.1:7070".into());
    assert!(c.validate().is_err(), "--peers without a secret");
    let mut c = base.clone();
    c.cluster_secret = Some("short".into());
    assert!(c.validate().is_err(), "a secret under 16 characters");
    c.cluster_secret = Some("0123456789abcdef".into());
    c.join = Some("http://127.0.0.1:7070".into());
    assert!(c.validate().is_ok());
}

/// A dot-product upsert whose distances would overflow to NaN used to be acknowledged and then
/// kill the indexer on every node (H2): now it is a 400 before the log. Its elements are past the
/// bound the schema gives (±1e16), which keeps every admissible vector's norm in range, so the
/// error names the first of them (the norm check behind it is unit-tested in `index`).
#[tokio::test]
async fn vectors_whose_distances_overflow_are_refused() {
    let h = Harness::start().await;
    let (s, _) = h
        .call(
            "PUT",
            "/collections/d",
            Some(json!({"dim": 4, "metric": "dot"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let big = json!([3e38, -3e38, 3e38, -3e38]);
    let got = h
        .call(
            "PUT",
            "/collections/d/points",
            Some(json!({"points": [{"id": 1, "vector": [1, 0, 0, 0]}, {"id": 99, "vector": big}]})),
        )
        .await;
    assert_field_error(got, StatusCode::BAD_REQUEST, "points[1].vector[0]");
    let got = h
        .call(
            "POST",
            "/collections/d/points/search",
            Some(json!({"vector": big, "k": 1})),
        )
        .await;
    assert_field_error(got, StatusCode::BAD_REQUEST, "vector[0]");
    // Nothing of the refused request was written, and the collection still indexes.
    let (s, info) = h.call("GET", "/collections/d", None).await;
    assert_eq!((s, &info["points"]), (StatusCode::OK, &json!(0)));
    let (s, _) = h
        .call(
            "PUT",
            "/collections/d/points",
            Some(json!({"points": [{"id": 1, "vector": [1, 0, 0, 0]}]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
}

/// An indexer that fails is reported by /readyz and recovers by itself, rebuilding the graph
/// from the store; searches stay complete meanwhile and afterwards (H2).
#[tokio::test]
async fn a_failed_indexer_is_reported_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_test(dir.path());
    config.exact_below = 0;
    let h = Harness::with(config, Some(dir)).await;
    h.call(
        "PUT",
        "/collections/f",
        Some(json!({"dim": 2, "metric": "l2"})),
    )
    .await;
    let pts = |from: u64| -> Vec<Value> {
        (from..from + 200)
            .map(|i| json!({"id": i, "vector": [i as f32, (i % 7) as f32]}))
            .collect()
    };
    h.call(
        "PUT",
        "/collections/f/points",
        Some(json!({"points": pts(0)})),
    )
    .await;
    let col = h.node.engine.get("f").unwrap();
    // Three failures in a row: the indexer pauses 100 + 200 + 400 ms between them.
    col.inject_indexer_faults(3);
    let (s, _) = h
        .call(
            "PUT",
            "/collections/f/points",
            Some(json!({"points": pts(200)})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let reason = loop {
        let (s, b) = h.call("GET", "/readyz", None).await;
        if s == StatusCode::SERVICE_UNAVAILABLE {
            break b["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "readyz never reported the failure"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    assert!(reason.contains("indexer failed"), "{reason}");
    // Searches are complete while the graph is rebuilt.
    let (s, r) = h
        .call(
            "POST",
            "/collections/f/points/search",
            Some(json!({"vector": [399.0, 0.0], "k": 1})),
        )
        .await;
    assert_eq!((s, &r["hits"][0]["id"]), (StatusCode::OK, &json!(399)));
    let c = col.clone();
    assert!(
        tokio::task::spawn_blocking(move || c.wait_indexed(std::time::Duration::from_secs(30)))
            .await
            .unwrap()
    );
    assert_eq!(col.indexer_failures(), 3);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while h.call("GET", "/readyz", None).await.0 != StatusCode::OK {
        assert!(std::time::Instant::now() < deadline, "readyz stayed 503");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (_, info) = h.call("GET", "/collections/f", None).await;
    assert_eq!(
        (&info["points"], &info["unindexed"]),
        (&json!(400), &json!(0))
    );
    for q in [0u64, 150, 250, 399] {
        let (_, r) = h
            .call(
                "POST",
                "/collections/f/points/search",
                Some(json!({"vector": [q as f32, (q % 7) as f32], "k": 1})),
            )
            .await;
        assert_eq!(r["hits"][0]["id"], json!(q));
    }
}

/// Issue 9, the fuzzed API contract: what the OpenAPI document calls valid is accepted
/// (integer-valued numbers where it says integer, ef_construction below m), and it carries the
/// constraints the server checks (minItems, minimum, maximum, lengths, patterns).
#[tokio::test]
async fn the_schema_carries_the_constraints_and_integer_valued_numbers_are_integers() {
    let h = Harness::start().await;
    let (s, b) = h
        .call(
            "PUT",
            "/collections/ints",
            Some(json!({"dim": 3.0, "metric": "l2", "hnsw": {"m": 16.0, "ef_construction": 8}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = h
        .call(
            "PUT",
            "/collections/ints/points",
            Some(json!({"points": [{"id": 7.0, "vector": [1, 0, 0]}]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // Past 2^50 a fast-path decimal parse lands a quarter off the integer (CI's fuzzer found
    // `1909336419136499.0` rejected); JSON floats are parsed correctly rounded.
    let (s, b) = h
        .call(
            "PUT",
            "/collections/ints/points",
            Some(
                json!({"points": [{"id": 1_909_336_419_136_499.0_f64, "vector": [0, 1, 0]},
                                   {"id": 9_007_199_254_740_992.0_f64, "vector": [0, 0, 1]}]}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = h
        .call(
            "POST",
            "/collections/ints/points/get",
            Some(json!({"ids": [1_909_336_419_136_499_u64, 9_007_199_254_740_992_u64]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["points"].as_array().map(Vec::len), Some(2), "{b}");
    let (s, b) = h
        .call(
            "POST",
            "/collections/ints/points/search",
            Some(json!({"vector": [1, 0, 0], "k": 2.0, "ef": 18.0,
                        "consistency": {"max_lag_ms": 1000.0}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["hits"][0]["id"], json!(7));
    assert_field_error(
        h.call(
            "POST",
            "/collections/ints/points/search",
            Some(json!({"vector": [1, 0, 0], "k": 2.5})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "k",
    );

    let (_, doc) = h.call("GET", "/openapi.json", None).await;
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["CollectionConfig"]["properties"]["dim"]["minimum"],
        1
    );
    assert_eq!(
        schemas["CollectionConfig"]["properties"]["dim"]["maximum"],
        65536
    );
    assert_eq!(schemas["HnswConfig"]["properties"]["m"]["minimum"], 2);
    assert_eq!(
        schemas["UpsertRequest"]["properties"]["points"]["minItems"],
        1
    );
    assert_eq!(
        schemas["SearchRequest"]["properties"]["k"]["maximum"],
        10000
    );
    assert_eq!(schemas["SearchRequest"]["properties"]["ef"]["minimum"], 1);
    assert_eq!(
        schemas["GetPointsRequest"]["properties"]["ids"]["maxItems"],
        10000
    );
    assert_eq!(
        schemas["BatchSearchRequest"]["properties"]["searches"]["maxItems"],
        1024
    );
    let create = &doc["paths"]["/collections/{name}"]["put"];
    assert!(
        create["parameters"][0]["schema"]["pattern"].is_string(),
        "{create}"
    );
    for status in ["400", "401", "403", "409", "413", "415", "503"] {
        assert!(
            create["responses"][status].is_object(),
            "create lacks {status}"
        );
    }
    let search = &doc["paths"]["/collections/{name}/points/search"]["post"];
    for status in ["400", "401", "404", "413", "415", "503", "504"] {
        assert!(
            search["responses"][status].is_object(),
            "search lacks {status}"
        );
    }
    let list = &doc["paths"]["/collections"]["get"]["parameters"];
    assert_eq!(list[1]["name"], "min_index");
    assert_eq!(list[1]["in"], "query");
}

/// Issue 9: a `min_index` past the end of the log is the client's mistake, answered 400 at once
/// (it used to wait 5 s and answer 504).
#[tokio::test]
async fn a_min_index_past_the_log_is_a_400_at_once() {
    let h = Harness::start().await;
    create_docs(&h).await;
    let started = std::time::Instant::now();
    assert_field_error(
        h.call(
            "POST",
            "/collections/docs/points/search",
            Some(json!({"vector": [1, 0, 0], "consistency": {"min_index": 1_000_000}})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "consistency.min_index",
    );
    assert_field_error(
        h.call(
            "GET",
            "/collections/docs/points/1?min_index=9007199254740992",
            None,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "min_index",
    );
    // Past the schema's range whichever level wins (linearizable would ignore it).
    for query in [
        "consistency=linearizable&min_index=2432902008176639999",
        "consistency=linearizable&max_lag_ms=9007199254740993",
    ] {
        let (s, b) = h.call("GET", &format!("/collections?{query}"), None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}: {b}");
        let field = query.split(['&', '=']).nth(2).unwrap();
        assert_eq!(b["error"]["field"], field, "{b}");
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    // A token that exists is served.
    let (_, health) = h.call("GET", "/healthz", None).await;
    let index = health["index"].as_u64().unwrap();
    let (s, b) = h
        .call(
            "POST",
            "/collections/docs/points/search",
            Some(json!({"vector": [1, 0, 0], "consistency": {"min_index": index}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
}

/// Review M11: JSON bodies need a JSON content type (no "simple" cross-origin POST from a
/// browser), and an empty delete filter, which matched every point, is refused.
#[tokio::test]
async fn bodies_must_be_json_and_an_empty_delete_filter_is_refused() {
    let h = Harness::start().await;
    create_docs(&h).await;
    let url = format!("{}/collections/docs/points/search", h.node.url());
    for ctype in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut req = h.http.post(&url).body(r#"{"vector": [1, 0, 0]}"#);
        if let Some(c) = ctype {
            req = req.header("content-type", c);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(
            status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{ctype:?}: {body}"
        );
        assert_eq!(body["error"]["field"], "content-type");
    }
    let resp = h
        .http
        .post(&url)
        .header("content-type", "application/json; charset=utf-8")
        .body(r#"{"vector": [1, 0, 0]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    for filter in [json!({}), json!({"must": [], "should": []})] {
        assert_field_error(
            h.call(
                "POST",
                "/collections/docs/points/delete",
                Some(json!({ "filter": filter })),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "filter",
        );
    }
    let (_, info) = h.call("GET", "/collections/docs", None).await;
    assert_eq!(info["points"], 4);
}

/// Review H5: one read cannot make the node build an unbounded answer. A batch's k add up to at
/// most 100,000 (400 naming `searches`), and an answer past 64 MiB is refused with 413
/// `answer_too_large` (here: a 2 MiB payload asked for 40 times, by search batch and points/get).
#[tokio::test]
async fn a_read_has_a_budget() {
    let h = Harness::start().await;
    create_docs(&h).await;
    let searches: Vec<Value> = (0..20)
        .map(|_| json!({"vector": [1, 0, 0], "k": 10_000}))
        .collect();
    assert_field_error(
        h.call(
            "POST",
            "/collections/docs/points/search/batch",
            Some(json!({ "searches": searches })),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "searches",
    );

    let big = "x".repeat(2 << 20);
    let (s, b) = h
        .call(
            "PUT",
            "/collections/docs/points",
            Some(json!({"points": [{"id": 9, "vector": [1, 1, 1], "payload": {"big": big}}]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let searches: Vec<Value> = (0..40)
        .map(|_| json!({"vector": [1, 1, 1], "k": 1}))
        .collect();
    let (s, b) = h
        .call(
            "POST",
            "/collections/docs/points/search/batch",
            Some(json!({ "searches": searches })),
        )
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{b}");
    assert_eq!(b["error"]["code"], "answer_too_large");
    let (s, b) = h
        .call(
            "POST",
            "/collections/docs/points/get",
            Some(json!({ "ids": vec![9; 40] })),
        )
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{b}");
    assert_eq!(b["error"]["code"], "answer_too_large");
    // Within the budget, the same point is served.
    let (s, b) = h
        .call(
            "POST",
            "/collections/docs/points/get",
            Some(json!({"ids": [9, 9]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["points"].as_array().map(Vec::len), Some(2));
}

/// Review M10: request metrics label only the standard methods; anything else is `other`, so
/// random extension methods cannot add series without bound.
#[tokio::test]
async fn metrics_label_unknown_methods_as_other() {
    let h = Harness::start().await;
    let m = reqwest::Method::from_bytes(b"QUIVERFUZZ").unwrap();
    let resp = h
        .http
        .request(m, format!("{}/collections", h.node.url()))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error());
    let (_, text) = h.call("GET", "/metrics", None).await;
    let text = text.as_str().unwrap_or_default().to_string();
    assert!(!text.contains("QUIVERFUZZ"), "{text}");
    assert!(text.contains(r#"method="other""#), "{text}");
}

/// A Raft RPC meant for another node id (an earlier member at this address) is refused: a node
/// never votes or acknowledges entries in another member's name.
#[tokio::test]
async fn raft_rpc_for_another_node_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_test(dir.path());
    config.cluster_secret = Some("http-api-cluster-secret".into());
    let h = Harness::with(config, Some(dir)).await;
    let me = h.node.id();
    let send = |target: u64| {
        h.http
            .post(format!("{}/raft/vote", h.node.url()))
            .header("x-quiver-cluster-secret", "http-api-cluster-secret")
            .header("x-quiver-target-node", target.to_string())
            .body(vec![0u8; 8])
            .send()
    };
    assert_eq!(send(me.wrapping_add(1)).await.unwrap().status(), 503);
    // Addressed to this node, the (undecodable) request reaches Raft's decoder.
    assert_eq!(send(me).await.unwrap().status(), 400);
}

/// A JSON array of numbers as the f32s they were written from.
fn floats(v: &Value) -> Vec<f32> {
    serde_json::from_value(v.clone()).unwrap()
}

/// Point `i`'s 8-dimensional vector in the quantised collections' tests.
fn wavy(i: usize) -> Vec<f32> {
    (0..8)
        .map(|j| ((i * 31 + j * 7) as f32 * 0.173).sin() * (1.0 + i as f32 / 100.0))
        .collect()
}

/// Every hit (written as [`wavy`]) carries its exact L2 score for `q` and the vector written.
fn assert_exact_l2_hits(q: &[f32], hits: &[Value]) {
    for hit in hits {
        let v = wavy(hit["id"].as_u64().unwrap() as usize);
        let want = quiver::index::l2_squared(q, &v).sqrt();
        assert_eq!(hit["score"].as_f64().unwrap() as f32, want, "{hit}");
        assert_eq!(floats(&hit["vector"]), v, "{hit}");
    }
}

/// Issue 10: an int8 collection keeps codes in memory and its vectors on disk; what a client sees
/// is unchanged: the vectors it wrote, exact scores, and its config with `quantization`.
#[tokio::test]
async fn int8_collections_answer_with_the_exact_vectors_and_scores() {
    let h = Harness::start().await;
    let config = json!({"dim": 8, "metric": "l2", "quantization": "int8"});
    let (s, b) = h.call("PUT", "/collections/q", Some(config.clone())).await;
    assert_eq!((s, &b["created"]), (StatusCode::OK, &json!(true)), "{b}");
    let (s, b) = h.call("PUT", "/collections/q", Some(config)).await;
    assert_eq!((s, &b["created"]), (StatusCode::OK, &json!(false)), "{b}");
    // The same collection unquantised is another config.
    let (s, b) = h
        .call(
            "PUT",
            "/collections/q",
            Some(json!({"dim": 8, "metric": "l2"})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert_field_error(
        h.call(
            "PUT",
            "/collections/r",
            Some(json!({"dim": 8, "metric": "l2", "quantization": "int4"})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "quantization",
    );
    let (s, b) = h.call("GET", "/collections/q", None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["config"]["quantization"], "int8", "{b}");

    let points: Vec<Value> = (0..600)
        .map(|i| json!({"id": i, "vector": wavy(i), "payload": {"i": i}}))
        .collect();
    let (s, b) = h
        .call(
            "PUT",
            "/collections/q/points",
            Some(json!({ "points": points })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let q: Vec<f32> = wavy(1_000);
    for exact in [false, true] {
        let (s, b) = h
            .call(
                "POST",
                "/collections/q/points/search",
                Some(json!({"vector": q, "k": 5, "with_vector": true, "exact": exact})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let hits = b["hits"].as_array().unwrap();
        assert_eq!(hits.len(), 5, "{b}");
        assert_exact_l2_hits(&q, hits);
    }
    // A selective filter is scanned on the codes, and the shortlist rescored: the same top k as
    // the exact answer.
    let mut answers = Vec::new();
    for exact in [false, true] {
        let (s, b) = h
            .call(
                "POST",
                "/collections/q/points/search",
                Some(json!({"vector": q, "k": 10, "exact": exact,
                            "filter": {"must": [{"key": "i", "range": {"lt": 200}}]}})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["hits"].as_array().unwrap().len(), 10, "{b}");
        answers.push(b["hits"].clone());
    }
    assert_eq!(answers[0], answers[1]);
    let (s, b) = h
        .call(
            "POST",
            "/collections/q/points/get",
            Some(json!({"ids": [599, 0]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(floats(&b["points"][0]["vector"]), wavy(599));
    assert_eq!(floats(&b["points"][1]["vector"]), wavy(0));
}

/// An `int8_ram` collection walks int8 codes and rescores its candidates with the vectors it
/// holds: its config says so, and its graph answers (searched from the first point) are the
/// exact answers, with exact scores and the vectors that were written.
#[tokio::test]
async fn int8_ram_collections_walk_codes_and_answer_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_test(dir.path());
    config.exact_below = 0;
    let h = Harness::with(config, Some(dir)).await;
    let config = json!({"dim": 8, "metric": "l2", "quantization": "int8_ram"});
    let (s, b) = h.call("PUT", "/collections/w", Some(config)).await;
    assert_eq!((s, &b["created"]), (StatusCode::OK, &json!(true)), "{b}");
    let (s, b) = h.call("GET", "/collections/w", None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["config"]["quantization"], "int8_ram", "{b}");
    let points: Vec<Value> = (0..2_048)
        .map(|i| json!({"id": i, "vector": wavy(i)}))
        .collect();
    let (s, b) = h
        .call(
            "PUT",
            "/collections/w/points",
            Some(json!({ "points": points })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, b) = h.call("GET", "/collections/w", None).await;
        if b["unindexed"] == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not indexed: {b}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for qi in 0..20 {
        let q = wavy(5_000 + qi);
        let mut answers = Vec::new();
        for exact in [false, true] {
            let (s, b) = h
                .call(
                    "POST",
                    "/collections/w/points/search",
                    Some(json!({"vector": q, "k": 5, "with_vector": true, "exact": exact})),
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{b}");
            assert_exact_l2_hits(&q, b["hits"].as_array().unwrap());
            answers.push(b["hits"].clone());
        }
        assert_eq!(answers[0], answers[1], "query {qi}");
    }
}
