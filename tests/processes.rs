//! Multi-process tests: the real `quiver` binary, several nodes on loopback, `kill -9` during
//! ingest. Afterwards every acknowledged id must be present on every node, and all nodes must
//! hold identical data.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiver::model::{CollectionConfig, Metric, PointId, PointInput, SearchRequest};
use quiver_client::Client;

mod common;
use common::eventually_within;
use common::http::cluster_json;
use common::process::{free_port, Launch, Proc};

const SECRET: &str = "proc-cluster-secret-0123";
const WAIT: Duration = Duration::from_secs(60);

/// A node process on a free port. Graph search from the first point (`--exact-below 0`), so
/// that approximate answers are compared too.
fn spawn_node(dir: &Path, join: Option<String>, voter: bool) -> Proc {
    let mut launch = Launch::new(SECRET, WAIT).args(["--exact-below", "0"]);
    if let Some(j) = join {
        launch = launch.join(&j);
    }
    if voter {
        launch = launch.voter();
    }
    Proc::spawn(dir, free_port(), launch)
}

/// Polls `f` every 50 ms until it is true, for at most [`WAIT`].
async fn eventually<F: Future<Output = bool>>(what: &str, f: impl FnMut() -> F) {
    eventually_within(what, WAIT, Duration::from_millis(50), f).await;
}

async fn members(url: &str) -> usize {
    cluster_json(url)
        .await
        .and_then(|c| c["members"].as_array().map(Vec::len))
        .unwrap_or(0)
}

fn batch(b: u64) -> Vec<PointInput> {
    (b * 25..b * 25 + 25)
        .map(|i| PointInput {
            id: PointId::Str(format!("p-{i}")),
            vector: vec![(i % 31) as f32, (i % 7) as f32, 1.0, (i as f32 * 0.1).cos()],
            payload: Some(serde_json::json!({"i": i})),
        })
        .collect()
}

/// Writes batches through whichever node answers (upserts with explicit ids are idempotent, so
/// retrying one on another node is safe) and records the ids each acknowledged write carried.
async fn ingest(
    urls: Vec<String>,
    batches: u64,
    acked: Arc<Mutex<BTreeSet<String>>>,
    last: Arc<Mutex<u64>>,
) {
    let clients: Vec<Client> = urls.iter().map(|u| Client::new(u, None).unwrap()).collect();
    for b in 0..batches {
        let pts = batch(b);
        let deadline = Instant::now() + WAIT;
        let mut i = b as usize;
        loop {
            match clients[i % clients.len()].upsert("k", pts.clone()).await {
                Ok(w) => {
                    let mut a = acked.lock().unwrap();
                    a.extend(pts.iter().map(|p| p.id.to_string()));
                    let mut l = last.lock().unwrap();
                    *l = (*l).max(w.index);
                    break;
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "ingest stuck: {e}");
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

/// Every node has applied `index`, holds every acked id, and all hold identical data.
async fn check_identical(urls: &[String], acked: &BTreeSet<String>, index: u64) {
    let mut snapshots = Vec::new();
    for url in urls {
        let c = Client::new(url, None).unwrap();
        let mut q = SearchRequest::new(vec![3.0, 2.0, 1.0, 0.5], 20);
        q.exact = true;
        q.consistency = Some(quiver::model::Consistency::MinIndex { min_index: index });
        let hits = c.search("k", &q).await.unwrap().hits;
        let info = c.collection("k").await.unwrap();
        let mut points = Vec::new();
        for id in acked {
            let p = c
                .get_point("k", &PointId::Str(id.clone()))
                .await
                .unwrap_or_else(|e| panic!("{url} lost acknowledged {id}: {e}"));
            points.push(p.point);
        }
        snapshots.push((info.points, hits, points));
    }
    for s in &snapshots[1..] {
        assert_eq!(s.0, snapshots[0].0, "point counts differ");
        assert_eq!(s.1, snapshots[0].1, "search results differ");
        assert!(s.2 == snapshots[0].2, "stored points differ");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_replica_during_ingest_loses_nothing() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let primary = spawn_node(dirs[0].path(), None, false);
    let mut r1 = spawn_node(dirs[1].path(), Some(primary.url()), false);
    let r2 = spawn_node(dirs[2].path(), Some(primary.url()), false);
    eventually("3 members", || async { members(&primary.url()).await == 3 }).await;
    Client::new(&primary.url(), None)
        .unwrap()
        .create_collection("k", &CollectionConfig::new(4, Metric::L2))
        .await
        .unwrap();

    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let last = Arc::new(Mutex::new(0));
    let task = tokio::spawn(ingest(vec![primary.url()], 80, acked.clone(), last.clone()));
    eventually("some ingest", || async {
        acked.lock().unwrap().len() >= 500
    })
    .await;
    r1.kill9();
    eventually("more ingest", || async {
        acked.lock().unwrap().len() >= 1000
    })
    .await;
    r1.restart();
    task.await.unwrap();

    let urls = vec![primary.url(), r1.url(), r2.url()];
    let acked = acked.lock().unwrap().clone();
    let index = *last.lock().unwrap();
    assert_eq!(acked.len(), 2000);
    check_identical(&urls, &acked, index).await;
    assert_eq!(members(&primary.url()).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_of_three_voters_during_ingest_loses_nothing() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut a = spawn_node(dirs[0].path(), None, false);
    let b = spawn_node(dirs[1].path(), Some(a.url()), true);
    let c = spawn_node(dirs[2].path(), Some(a.url()), true);
    eventually("3 voters", || async {
        cluster_json(&a.url()).await.is_some_and(|s| {
            s["members"]
                .as_array()
                .is_some_and(|m| m.iter().filter(|x| x["role"] == "voter").count() == 3)
        })
    })
    .await;
    Client::new(&a.url(), None)
        .unwrap()
        .create_collection("k", &CollectionConfig::new(4, Metric::Cosine))
        .await
        .unwrap();

    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let last = Arc::new(Mutex::new(0));
    let urls = vec![a.url(), b.url(), c.url()];
    let task = tokio::spawn(ingest(urls.clone(), 80, acked.clone(), last.clone()));
    eventually("some ingest", || async {
        acked.lock().unwrap().len() >= 500
    })
    .await;
    a.kill9();
    task.await.unwrap();

    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 2000);
    let index = *last.lock().unwrap();
    check_identical(&urls[1..], &acked, index).await;
    // The old leader comes back as a follower and converges too.
    a.restart();
    check_identical(&urls, &acked, index).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_stopped_with_sigterm_leaves_the_cluster() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let primary = spawn_node(dirs[0].path(), None, false);
    let mut replica = spawn_node(dirs[1].path(), Some(primary.url()), false);
    eventually("2 members", || async { members(&primary.url()).await == 2 }).await;
    // It can ask the leader to remove it only once it has heard from the leader.
    eventually("the replica to know its leader", || async {
        cluster_json(&replica.url())
            .await
            .is_some_and(|c| c["leader_id"].is_u64())
    })
    .await;
    let status = replica.terminate();
    assert!(status.success(), "replica exited with {status}");
    // Removed at once by its own request, not by the (30 s) expiry.
    assert_eq!(members(&primary.url()).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_import_and_search_against_a_running_node() {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/minilm-debian");
    if !data.join("base.fvecs").exists() {
        eprintln!("SKIPPED: data set not at {}", data.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = spawn_node(dir.path(), None, false);
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_quiver"))
            .args(args)
            .env("QUIVER_URL", node.url())
            .output()
            .expect("run quiver")
    };
    let base = data.join("base.fvecs");
    let texts = data.join("base_texts.txt");
    let out = cli(&[
        "import",
        "-c",
        "cli",
        "--create",
        "cosine",
        "--limit",
        "300",
        "--batch",
        "64",
        "--file",
        base.to_str().unwrap(),
        "--texts",
        texts.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("imported 300 points"));

    // A stored vector's nearest neighbour is itself, with its text as payload.
    let out = cli(&[
        "search",
        "-c",
        "cli",
        "--fvecs",
        base.to_str().unwrap(),
        "--row",
        "5",
        "-k",
        "3",
        "--exact",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(found["hits"][0]["id"], 5);
    let line5 = std::fs::read_to_string(&texts)
        .unwrap()
        .lines()
        .nth(5)
        .unwrap()
        .to_string();
    assert_eq!(
        found["hits"][0]["payload"]["text"],
        serde_json::json!(line5)
    );
    assert_eq!(found["hits"].as_array().map(Vec::len), Some(3));

    // Bad input: a clear message and a failing exit status, no panic.
    let out = cli(&["search", "-c", "cli", "--vector", "[1, 2"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--vector must be a JSON array"));
    let out = cli(&["search", "-c", "cli", "--vector", "[1, 2]"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("vector"));

    // A derived set (issue 10's recipe), imported until every point is in the graph.
    let derived = dir.path().join("derived.fvecs");
    let out = cli(&[
        "derive",
        "--from",
        base.to_str().unwrap(),
        "--count",
        "1500",
        "--out",
        derived.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = quiver::dataset::read_fvecs(&derived, None).unwrap();
    // Row 7 derives from base row 7 (7 mod 8 = 7 mod 50,000).
    let src = quiver::dataset::read_fvecs(&base, Some(8)).unwrap();
    assert_eq!(rows.len(), 1500);
    assert_eq!(rows[7], quiver::dataset::derived_row(&src, 7, 1, 0.03));
    let out = cli(&[
        "import",
        "-c",
        "derived",
        "--create",
        "cosine",
        "--wait-indexed",
        "--file",
        derived.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("indexed 1500 points"), "{stdout}");
    drop(node);
}

fn vec8(i: u64) -> Vec<f32> {
    // A cheap deterministic scramble, so that the graph is not built on a lattice.
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..8)
        .map(|_| {
            x ^= x >> 29;
            x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x ^= x >> 32;
            (x % 20_000) as f32 / 10_000.0 - 1.0
        })
        .collect()
}

/// One of four writers: batches of 10 fresh ids through whichever voter answers, until `stop`.
async fn writer(
    w: u64,
    urls: Vec<String>,
    acked: Arc<Mutex<BTreeSet<u64>>>,
    last: Arc<Mutex<u64>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let clients: Vec<Client> = urls.iter().map(|u| Client::new(u, None).unwrap()).collect();
    let mut node = w as usize;
    for b in 0u64.. {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let ids: Vec<u64> = (0..10).map(|j| (b * 4 + w) * 10 + j).collect();
        let pts: Vec<PointInput> = ids
            .iter()
            .map(|&i| PointInput {
                id: PointId::Num(i),
                vector: vec8(i),
                payload: None,
            })
            .collect();
        match clients[node % clients.len()].upsert("g", pts).await {
            Ok(r) => {
                acked.lock().unwrap().extend(ids);
                let mut l = last.lock().unwrap();
                *l = (*l).max(r.index);
            }
            // Refused, or ambiguous: the batch is not counted as acknowledged (it may still be
            // applied, which the end state allows); try another node next.
            Err(_) => {
                node += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Issue 9's leader kill loop: three voters and two replicas, four concurrent writers, the leader
/// killed with SIGKILL and restarted ten times. At the end every acknowledged id is on every
/// node, the counts are identical, and so are the approximate (graph) top-10s: every node,
/// including the ones that restarted from a graph dump, built the same graph from the same log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_killed_ten_times_loses_nothing_and_every_graph_answers_alike() {
    let dirs: Vec<tempfile::TempDir> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = spawn_node(dirs[0].path(), None, false);
    let b = spawn_node(dirs[1].path(), Some(a.url()), true);
    let c = spawn_node(dirs[2].path(), Some(a.url()), true);
    let voters_url = format!("{},{},{}", a.url(), b.url(), c.url());
    let r1 = spawn_node(dirs[3].path(), Some(voters_url.clone()), false);
    let r2 = spawn_node(dirs[4].path(), Some(voters_url), false);
    let mut voters = vec![a, b, c];
    eventually("3 voters and 2 replicas", || async {
        cluster_json(&voters[0].url()).await.is_some_and(|s| {
            s["members"].as_array().is_some_and(|m| {
                m.len() == 5 && m.iter().filter(|x| x["role"] == "voter").count() == 3
            })
        })
    })
    .await;
    let urls: Vec<String> = voters.iter().map(Proc::url).collect();
    Client::new(&urls[0], None)
        .unwrap()
        .create_collection("g", &CollectionConfig::new(8, Metric::L2))
        .await
        .unwrap();

    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let last = Arc::new(Mutex::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            tokio::spawn(writer(
                w,
                urls.clone(),
                acked.clone(),
                last.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let mut round = 0;
    while round < 10 {
        let before = acked.lock().unwrap().len();
        // Writes are acknowledged under the current leader before it is killed.
        eventually("writes acknowledged", || async {
            acked.lock().unwrap().len() >= before + 40
        })
        .await;
        let mut leader = None;
        for (i, v) in voters.iter().enumerate() {
            if let Some(s) = cluster_json(&v.url()).await {
                if s["role"] == "leader" && s["writable"] == true {
                    leader = Some(i);
                    break;
                }
            }
        }
        let mut view = Vec::new();
        for v in &voters {
            let s = cluster_json(&v.url()).await.unwrap_or_default();
            view.push((s["id"].clone(), s["role"].clone(), s["term"].clone()));
        }
        eprintln!("round {round}: killing voter {leader:?} of {view:?}");
        let Some(i) = leader else {
            // No writable leader at this instant (an election): try again this round.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        voters[i].kill9();
        // The others elect a leader among themselves before the killed node comes back.
        let killed_id = view[i].0.clone();
        let others: Vec<String> = (0..3)
            .filter(|o| *o != i)
            .map(|o| voters[o].url())
            .collect();
        eventually("a new leader among the others", || {
            let others = others.clone();
            let killed_id = killed_id.clone();
            async move {
                for o in &others {
                    if let Some(s) = cluster_json(o).await {
                        if s["role"] == "leader" && s["id"] != killed_id {
                            return true;
                        }
                    }
                }
                false
            }
        })
        .await;
        voters[i].restart();
        eprintln!("round {round}: voter {i} killed, replaced as leader, restarted");
        round += 1;
    }
    let after_kills = acked.lock().unwrap().len();
    eventually("writes after the last kill", || async {
        acked.lock().unwrap().len() >= after_kills + 40
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let index = *last.lock().unwrap();
    let mut all: Vec<String> = urls.clone();
    all.extend([r1.url(), r2.url()]);

    // Every node: the final index applied, every acknowledged id present, the graph complete.
    let mut answers = Vec::new();
    for url in &all {
        let client = Client::new(url, None).unwrap();
        let at = Some(quiver::model::Consistency::MinIndex { min_index: index });
        let info = client.collection_with("g", at.as_ref()).await.unwrap();
        let ids: Vec<PointId> = acked.iter().map(|&i| PointId::Num(i)).collect();
        for chunk in ids.chunks(1_000) {
            let got = client
                .get_points("g", chunk.to_vec(), false, at.clone())
                .await
                .unwrap();
            assert_eq!(
                got.points.len(),
                chunk.len(),
                "{url} lost acknowledged points"
            );
        }
        eventually("the graph holds every point", || async {
            client.collection("g").await.is_ok_and(|i| i.unindexed == 0)
        })
        .await;
        let mut tops = Vec::new();
        for q in 0..20u64 {
            let mut req = SearchRequest::new(vec8(1_000_000 + q), 10);
            req.with_payload = false;
            let hits = client.search("g", &req).await.unwrap().hits;
            tops.push(
                hits.into_iter()
                    .map(|h| (h.id, h.score.to_bits()))
                    .collect::<Vec<_>>(),
            );
        }
        answers.push((url.clone(), info.points, tops));
    }
    for (url, points, tops) in &answers[1..] {
        assert_eq!(*points, answers[0].1, "{url}: point count differs");
        assert!(tops == &answers[0].2, "{url}: graph top-10s differ");
    }
    eprintln!(
        "{} acknowledged points, {} in the collection",
        acked.len(),
        answers[0].1
    );
}
