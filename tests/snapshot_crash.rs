//! Crash during a snapshot install, with real processes: a replica joins a leader whose log is
//! purged (so it is sent a snapshot), is SIGKILLed while the snapshot is half-imported, restarts,
//! and converges to the leader's data: it finishes the install from the retained snapshot file
//! instead of serving (or replaying the log onto) a half-imported state.
//!
//! The kill is timed with the hidden `QUIVER_TEST_INSTALL_DELAY_MS`, which pauses the install
//! after its first import batch (state cleared and partly rewritten), and with the install marker
//! the node writes before it clears anything.

use std::time::{Duration, Instant};

use quiver::model::{CollectionConfig, Consistency, Metric, PointId, PointInput, SearchRequest};
use quiver_client::Client;

mod common;
use common::eventually_within;
use common::process::{free_port, Launch, Proc};

const SECRET: &str = "snap-cluster-secret-0123";
const WAIT: Duration = Duration::from_secs(30);
/// Points on the leader: more than one import batch (2,000 records), so the pause falls in the
/// middle of the import.
const POINTS: u64 = 3_000;
const BATCH: u64 = 50;
const MARKER: &str = "install-in-progress";

/// A node that snapshots every 20 log entries and pauses a snapshot install for
/// `install_delay_ms` after its first import batch.
fn node(install_delay_ms: u64) -> Launch {
    Launch::new(SECRET, WAIT)
        .args(["--snapshot-logs", "20", "--snapshot-min-interval-secs", "0"])
        .env("QUIVER_TEST_INSTALL_DELAY_MS", install_delay_ms)
}

fn batch(b: u64) -> Vec<PointInput> {
    (b * BATCH..(b + 1) * BATCH)
        .map(|i| {
            let x = i as f32;
            PointInput {
                id: PointId::Num(i),
                vector: vec![
                    (x * 0.37).sin(),
                    (x * 0.11).cos(),
                    (i % 17) as f32 / 17.0,
                    (i % 5) as f32,
                    (x * 0.013).sin(),
                    1.0,
                    (i % 101) as f32 / 101.0,
                    (x * 0.7).cos(),
                ],
                payload: Some(serde_json::json!({"i": i})),
            }
        })
        .collect()
}

/// Point count, every point (with vector and payload) and exact top-20 results for a few
/// queries, read at `index` or later.
async fn contents(
    c: &Client,
    index: u64,
    n: u64,
) -> Result<
    (
        usize,
        Vec<quiver::model::PointRecord>,
        Vec<Vec<quiver::model::Hit>>,
    ),
    String,
> {
    let at = Some(Consistency::MinIndex { min_index: index });
    let info = c
        .collection_with("k", at.as_ref())
        .await
        .map_err(|e| e.to_string())?;
    let mut points = Vec::new();
    let ids: Vec<PointId> = (0..n).map(PointId::Num).collect();
    for chunk in ids.chunks(1_000) {
        let got = c
            .get_points("k", chunk.to_vec(), true, at.clone())
            .await
            .map_err(|e| e.to_string())?;
        points.extend(got.points);
    }
    let mut hits = Vec::new();
    for q in 0..5u64 {
        let mut req = SearchRequest::new(batch(q * 7)[q as usize].vector.clone(), 20);
        req.exact = true;
        req.with_payload = true;
        req.consistency = at.clone();
        hits.push(c.search("k", &req).await.map_err(|e| e.to_string())?.hits);
    }
    Ok((info.points, points, hits))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_while_installing_a_snapshot_converges_after_restart() {
    let (dir_p, dir_r) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (port_p, port_r) = (free_port(), free_port());
    let primary = Proc::spawn(dir_p.path(), port_p, node(0));
    let url_p = primary.url();
    let leader = Client::new(&url_p, None).unwrap();
    let config = CollectionConfig::new(8, Metric::L2);
    let every = Duration::from_millis(50);
    eventually_within("the leader to take a write", WAIT, every, || async {
        leader.create_collection("k", &config).await.is_ok()
    })
    .await;
    let mut last = 0;
    for b in 0..POINTS / BATCH {
        last = leader.upsert("k", batch(b)).await.unwrap().index;
    }

    // The replica joins; with the leader's log purged it is sent a snapshot, whose install
    // pauses (for far longer than the test waits) after its first import batch.
    let mut replica = Proc::spawn(dir_r.path(), port_r, node(60_000).join(&url_p));
    let marker = dir_r.path().join(MARKER);
    let every = Duration::from_millis(10);
    eventually_within(
        "the replica to start installing a snapshot",
        WAIT,
        every,
        || async { marker.exists() },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    replica.kill9();
    assert!(marker.exists(), "the install finished before the kill");
    drop(replica);

    // Restarted (no delay now): it redoes the import from the retained file and catches up.
    let replica = Proc::spawn(dir_r.path(), port_r, node(0).join(&url_p));
    let follower = Client::new(&replica.url(), None).unwrap();
    let want = contents(&leader, last, POINTS).await.unwrap();
    assert_eq!(want.0, POINTS as usize);
    let deadline = Instant::now() + WAIT;
    let got = loop {
        match contents(&follower, last, POINTS).await {
            Ok(got) if got.0 == want.0 => break got,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "the replica did not converge: {:?}",
                    other.map(|g| g.0)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(!marker.exists(), "the install marker was left behind");
    assert_eq!(got.1.len(), POINTS as usize);
    assert!(got.1 == want.1, "stored points differ");
    assert_eq!(got.2, want.2, "search results differ");

    // Replication carries on past the snapshot.
    let next = leader
        .upsert("k", batch(POINTS / BATCH))
        .await
        .unwrap()
        .index;
    let want = contents(&leader, next, POINTS + BATCH).await.unwrap();
    let deadline = Instant::now() + WAIT;
    let got = loop {
        match contents(&follower, next, POINTS + BATCH).await {
            Ok(got) => break got,
            Err(e) => {
                assert!(Instant::now() < deadline, "the replica stopped: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(got.0, POINTS as usize + BATCH as usize);
    assert!(got.1 == want.1, "stored points differ after a later write");
    assert_eq!(got.2, want.2, "search results differ after a later write");
}
