//! End to end with real containers: builds the image (deploy/docker/build-image.sh, from the
//! binary this test run built), brings up docker-compose.yml, ingests real MiniLM vectors through
//! the primary, checks that every replica answers the same top-10 at the same index, scales the
//! replicas to 4 and to 1, switches the project to the `ha` profile (three voters), kills the
//! primary and checks that writes through the gateway resume with no acknowledged write lost.
//! Everything is torn down at the end, also on failure.
//!
//! Needs a Docker engine with compose (`docker compose` or `docker-compose`) and root for the
//! base image's debootstrap. Without a reachable engine the test says so and passes, unless
//! `QUIVER_REQUIRE_DOCKER=1` (set by .ci/run), where it fails.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use quiver::dataset::read_fvecs;
use quiver::model::{CollectionConfig, Consistency, Metric, PointId, PointInput, SearchRequest};
use quiver_client::{Client, ClientError};

mod common;
use common::eventually_within;
use common::http::{cluster_json, ready};
use common::process::free_port;

const IMAGE: &str = "quiver:e2e-test";
const DEADLINE: Duration = Duration::from_secs(120);
const POINTS: usize = 3_000;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn data_dir() -> PathBuf {
    std::env::var_os("QUIVER_DATA_DIR_MINILM")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/data/minilm-debian"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One compose project, taken down (with its volumes) when dropped.
struct Project {
    compose: Vec<String>,
    name: String,
    env: Vec<(String, String)>,
}

impl Project {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.compose[0]);
        c.args(&self.compose[1..])
            .arg("-f")
            .arg(repo().join("docker-compose.yml"))
            .args(["-p", &self.name])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c
    }

    /// `up -d`, with `--scale replica=N` when given (else the file's default of 2).
    fn up(&self, profile_ha: bool, replicas: Option<usize>) {
        let scale = replicas.map(|n| format!("replica={n}"));
        let mut args = vec![];
        if profile_ha {
            args.extend(["--profile", "ha"]);
        }
        args.extend(["up", "-d", "--no-build"]);
        if let Some(s) = &scale {
            args.extend(["--scale", s]);
        }
        run(&mut self.cmd(&args));
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(out) = self
                .cmd(&["--profile", "ha", "logs", "--tail", "40"])
                .output()
            {
                eprintln!("{}", String::from_utf8_lossy(&out.stdout));
            }
        }
        let _ = self
            .cmd(&[
                "--profile",
                "ha",
                "down",
                "-v",
                "--remove-orphans",
                "-t",
                "5",
            ])
            .output();
    }
}

fn compose_command() -> Option<Vec<String>> {
    let ok = |c: &mut Command| c.output().is_ok_and(|o| o.status.success());
    if !ok(Command::new("docker").arg("info")) {
        return None;
    }
    if ok(Command::new("docker").args(["compose", "version"])) {
        return Some(vec!["docker".into(), "compose".into()]);
    }
    if ok(Command::new("docker-compose").arg("version")) {
        return Some(vec!["docker-compose".into()]);
    }
    None
}

/// Polls `f` every 200 ms until it is true, for at most [`DEADLINE`].
async fn eventually<F: Future<Output = bool>>(what: &str, f: impl FnMut() -> F) {
    eventually_within(what, DEADLINE, Duration::from_millis(200), f).await;
}

/// The learners' URLs (container addresses, reachable from the host over the bridge).
async fn learners(primary: &str) -> Vec<String> {
    let Some(c) = cluster_json(primary).await else {
        return Vec::new();
    };
    c["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "learner")
        .filter_map(|m| m["addr"].as_str().map(str::to_string))
        .collect()
}

/// Waits until exactly `n` learners are members and every one answers `/readyz`.
async fn ready_replicas(primary: &str, n: usize) {
    eventually(&format!("{n} ready replicas"), || async {
        let l = learners(primary).await;
        l.len() == n
            && futures_util::future::join_all(l.iter().map(|u| ready(u)))
                .await
                .iter()
                .all(|r| *r)
    })
    .await;
}

fn search(v: &[f32], index: u64, exact: bool) -> SearchRequest {
    let mut q = SearchRequest::new(v.to_vec(), 10);
    q.exact = exact;
    q.consistency = Some(Consistency::MinIndex { min_index: index });
    q
}

fn ids(hits: &[quiver::model::Hit]) -> Vec<PointId> {
    hits.iter().map(|h| h.id.clone()).collect()
}

/// Every replica (and the primary) gives the same exact top-10 at `index`, and its graph search
/// finds most of it.
async fn replicas_agree(primary: &Client, replicas: &[String], queries: &[Vec<f32>], index: u64) {
    for q in queries {
        let want = ids(&primary
            .search("e2e", &search(q, index, true))
            .await
            .unwrap()
            .hits);
        assert_eq!(want.len(), 10);
        for r in replicas {
            let c = Client::new(r, None).unwrap();
            let exact = c.search("e2e", &search(q, index, true)).await.unwrap();
            assert!(exact.index >= index);
            assert_eq!(ids(&exact.hits), want, "replica {r} disagrees");
            let approx = ids(&c
                .search("e2e", &search(q, index, false))
                .await
                .unwrap()
                .hits);
            let found = approx.iter().filter(|id| want.contains(id)).count();
            assert!(found >= 8, "replica {r}: graph search found {found}/10");
        }
    }
}

fn batch(vectors: &[Vec<f32>], from: usize) -> Vec<PointInput> {
    vectors
        .iter()
        .enumerate()
        .map(|(i, v)| PointInput {
            id: PointId::Num((from + i) as u64),
            vector: v.clone(),
            payload: Some(serde_json::json!({"row": from + i})),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_cluster_scales_and_fails_over() {
    let Some(compose) = compose_command() else {
        assert!(
            std::env::var("QUIVER_REQUIRE_DOCKER").is_err(),
            "QUIVER_REQUIRE_DOCKER is set but no Docker engine with compose is reachable"
        );
        eprintln!("SKIPPED: no Docker engine with compose here (QUIVER_REQUIRE_DOCKER unset)");
        return;
    };
    let started = Instant::now();
    let base = read_fvecs(&data_dir().join("base.fvecs"), Some(POINTS + 400)).unwrap();
    let queries = read_fvecs(&data_dir().join("queries.fvecs"), Some(10)).unwrap();
    run(
        Command::new(repo().join("deploy/docker/build-image.sh")).args([
            "--binary",
            env!("CARGO_BIN_EXE_quiver"),
            "--tag",
            IMAGE,
        ]),
    );
    eprintln!("image built in {:?}", started.elapsed());

    let (pp, gp) = (free_port(), free_port());
    let project = Project {
        compose,
        name: format!("quivere2e{}", std::process::id()),
        env: vec![
            ("QUIVER_IMAGE".into(), IMAGE.into()),
            ("QUIVER_PRIMARY_PORT".into(), pp.to_string()),
            ("QUIVER_GATEWAY_PORT".into(), gp.to_string()),
            ("QUIVER_GATEWAY_REFRESH_MS".into(), "300".into()),
            (
                "QUIVER_CLUSTER_SECRET".into(),
                "e2e-cluster-secret-0123".into(),
            ),
        ],
    };
    let (primary_url, gateway_url) = (
        format!("http://127.0.0.1:{pp}"),
        format!("http://127.0.0.1:{gp}"),
    );
    project.up(false, None);
    eventually("primary and gateway ready", || async {
        ready(&primary_url).await && ready(&gateway_url).await
    })
    .await;

    // Ingest real vectors through the primary.
    let primary = Client::new(&primary_url, None).unwrap();
    let config = CollectionConfig::new(384, Metric::Cosine);
    primary.create_collection("e2e", &config).await.unwrap();
    let mut index = 0;
    for (n, chunk) in base[..POINTS].chunks(500).enumerate() {
        index = primary
            .upsert("e2e", batch(chunk, n * 500))
            .await
            .unwrap()
            .index;
    }
    ready_replicas(&primary_url, 2).await;
    replicas_agree(&primary, &learners(&primary_url).await, &queries, index).await;
    eprintln!("2 replicas agree after {:?}", started.elapsed());

    // Reads through the gateway reach the replicas.
    let gateway = Client::new(&gateway_url, None).unwrap();
    let via = gateway
        .search("e2e", &search(&queries[0], index, true))
        .await
        .unwrap();
    assert_eq!(via.hits.len(), 10);

    // Scale out: the new replicas join, catch up, become ready and answer alike.
    project.up(false, Some(4));
    ready_replicas(&primary_url, 4).await;
    replicas_agree(&primary, &learners(&primary_url).await, &queries, index).await;
    eprintln!("4 replicas agree after {:?}", started.elapsed());

    // Scale in: the stopped replicas leave the membership.
    project.up(false, Some(1));
    eventually("one learner left", || async {
        learners(&primary_url).await.len() == 1
    })
    .await;
    let status = cluster_json(&primary_url).await.unwrap();
    assert_eq!(
        status["members"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );

    // High availability: two more voters join the running primary.
    project.up(true, Some(1));
    eventually("three voters", || async {
        cluster_json(&primary_url).await.is_some_and(|c| {
            c["members"]
                .as_array()
                .is_some_and(|m| m.iter().filter(|m| m["role"] == "voter").count() == 3)
        })
    })
    .await;
    eventually("gateway knows three voters", || async {
        let Ok(r) = reqwest::get(format!("{gateway_url}/gateway/status")).await else {
            return false;
        };
        r.json::<serde_json::Value>().await.is_ok_and(|s| {
            s["members"].as_array().is_some_and(|m| {
                m.iter()
                    .filter(|m| m["role"] == "voter" && m["ready"] == true)
                    .count()
                    == 3
            })
        })
    })
    .await;

    // Writes through the gateway before and after the primary is killed; every acknowledged one
    // must survive.
    let mut acked: BTreeSet<u64> = (0..POINTS as u64).collect();
    let mut next = POINTS;
    let mut killed_at = None;
    while next < POINTS + 400 {
        if next == POINTS + 200 && killed_at.is_none() {
            run(&mut project.cmd(&["kill", "primary"]));
            killed_at = Some(Instant::now());
        }
        match gateway
            .upsert("e2e", batch(&base[next..next + 10], next))
            .await
        {
            Ok(w) => {
                acked.extend(next as u64..next as u64 + 10);
                index = index.max(w.index);
                next += 10;
            }
            Err(ClientError::Api { status, .. }) if status.is_server_error() => {
                // 503/502 while the leader is gone: retry the same batch (upserts are idempotent).
                let since = killed_at.map(|t| t.elapsed()).unwrap_or_default();
                assert!(since < DEADLINE, "writes did not resume after failover");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("write through the gateway failed: {e}"),
        }
    }
    if let Some(t) = killed_at {
        eprintln!("writes resumed; failover window ≤ {:?}", t.elapsed());
    }
    let info = gateway
        .collection_with("e2e", Some(&Consistency::MinIndex { min_index: index }))
        .await
        .unwrap();
    assert_eq!(info.points, acked.len());
    for id in acked.iter().step_by(7).chain(acked.iter().rev().take(200)) {
        let at = Consistency::MinIndex { min_index: index };
        let got = gateway
            .get_point_with("e2e", &PointId::Num(*id), Some(&at))
            .await;
        assert!(got.is_ok(), "acknowledged point {id} lost: {:?}", got.err());
    }
    drop(project);
    eprintln!("compose e2e passed in {:?}", started.elapsed());
}
