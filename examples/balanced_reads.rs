//! Reads balanced over read replicas, with the per-node split printed.
//!
//! Starts a leader and three replicas in this process (on loopback ports), writes through the
//! client (which finds the leader itself), then sends reads with each policy and prints how many
//! each replica served and its latency average.
//!
//! ```text
//! cargo run --release --example balanced_reads
//! ```

use quiver::config::Config;
use quiver::model::{CollectionConfig, Metric, PointId, PointInput, SearchRequest};
use quiver::node::Node;
use quiver_client::Client;
use quiver_client::Policy;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let leader = Node::start(Config::for_test(root.path().join("leader"))).await?;
    let mut replicas = Vec::new();
    for i in 0..3 {
        let mut c = Config::for_test(root.path().join(format!("replica{i}")));
        c.join = Some(leader.url());
        replicas.push(Node::start(c).await?);
    }

    let writer = Client::builder([leader.url()]).connect().await?;
    let config = CollectionConfig::new(8, Metric::L2);
    writer.create_collection("demo", &config).await?;
    let points: Vec<PointInput> = (0..2_000u64)
        .map(|i| PointInput {
            id: PointId::Num(i),
            vector: (0..8).map(|d| ((i * 31 + d * 7) % 101) as f32).collect(),
            payload: None,
        })
        .collect();
    let w = writer.upsert("demo", points).await?;
    println!("wrote 2,000 points; leader {:?}", writer.leader());

    for policy in [
        Policy::RoundRobin,
        Policy::LeastOutstanding,
        Policy::PowerOfTwo,
    ] {
        // Seeded with one replica: the leader and the other replicas are discovered.
        let client = Client::builder([replicas[0].url()])
            .policy(policy)
            .read_your_writes(true)
            .connect()
            .await?;
        // Hand over the writer's token: every read waits until the replica has those points.
        client.observe_index(w.index);
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let c = client.clone();
            tasks.push(tokio::spawn(async move {
                for q in 0..50u64 {
                    let v = (0..8).map(|d| ((t * 13 + q + d) % 101) as f32).collect();
                    c.search("demo", &SearchRequest::new(v, 10)).await?;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        println!("\n{policy:?}: 400 reads");
        for s in client.read_stats() {
            println!(
                "  {}  served {:>4}  latency avg {:.2} ms  failures {}",
                s.url, s.served, s.latency_ms, s.failures
            );
        }
    }
    for r in replicas {
        r.stop().await?;
    }
    leader.stop().await?;
    Ok(())
}
