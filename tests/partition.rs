//! A real network partition: three voters of the real binary, each in its own network namespace
//! on a bridge, and the leader cut off from the other two by blackhole routes on both sides (the
//! test process, on the bridge, still reaches every node). Needs root and iproute2; it skips
//! itself otherwise, unless `QUIVER_REQUIRE_NETNS=1` (as in `.ci/run`).
//!
//! Checked: a new leader is elected and takes writes; the cut-off leader stops acknowledging
//! writes and says so in `/cluster`; no token or linearizable read on it returns data older than
//! the token; its `max_lag_ms` reads answer 503; after healing every node converges with every
//! acknowledged write. The times from the cut to the election and from the election to the first
//! acknowledged write are printed (figures, not assertions).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiver::model::{CollectionConfig, Metric, PointId, PointInput};
use quiver_client::Client;
use serde_json::{json, Value};

mod common;

const SECRET: &str = "netns-cluster-secret-0123";
const WAIT: Duration = Duration::from_secs(60);
const PORT: u16 = 7070;

/// Runs `ip` with `args`; `Err` with its stderr when it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A bridge and one namespace per node, removed on drop.
struct Net {
    tag: String,
    subnet: String,
    nodes: usize,
}

impl Net {
    fn bridge(&self) -> String {
        format!("qb{}", self.tag)
    }
    fn ns(&self, i: usize) -> String {
        format!("qn{}-{i}", self.tag)
    }
    fn addr(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, 11 + i)
    }
    fn url(&self, i: usize) -> String {
        format!("http://{}:{PORT}", self.addr(i))
    }

    fn create(nodes: usize) -> Result<Net, String> {
        let pid = std::process::id();
        let net = Net {
            tag: format!("{}", pid % 100_000),
            subnet: format!("10.{}.{}", 100 + (pid / 256) % 100, pid % 256),
            nodes,
        };
        let br = net.bridge();
        ip(&["link", "add", &br, "type", "bridge"])?;
        // Where bridged traffic passes through iptables (br_netfilter, as with Docker, whose
        // FORWARD policy is DROP), let the nodes reach each other across the bridge.
        net.forward(true);
        ip(&["addr", "add", &format!("{}.1/24", net.subnet), "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        for i in 0..nodes {
            let ns = net.ns(i);
            let veth = format!("qv{}-{i}", net.tag);
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &veth, "master", &br, "up"])?;
            let cidr = format!("{}/24", net.addr(i));
            ip(&[
                "netns", "exec", &ns, "ip", "addr", "add", &cidr, "dev", "eth0",
            ])?;
            ip(&["netns", "exec", &ns, "ip", "link", "set", "eth0", "up"])?;
            ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// Adds (or removes) the iptables rule that accepts forwarding within the bridge. Best
    /// effort: without iptables, or without br_netfilter, bridged traffic is not filtered.
    fn forward(&self, on: bool) {
        let br = self.bridge();
        let op = if on { "-I" } else { "-D" };
        let _ = Command::new("iptables")
            .args([op, "FORWARD", "-i", &br, "-o", &br, "-j", "ACCEPT"])
            .output();
    }

    /// Cuts (or heals) node `i` from every other node, both ways.
    fn isolate(&self, i: usize, cut: bool) {
        let verb = if cut { "add" } else { "del" };
        for j in (0..self.nodes).filter(|&j| j != i) {
            for (from, to) in [(i, j), (j, i)] {
                let dst = format!("{}/32", self.addr(to));
                ip(&[
                    "netns",
                    "exec",
                    &self.ns(from),
                    "ip",
                    "route",
                    verb,
                    "blackhole",
                    &dst,
                ])
                .unwrap();
            }
        }
    }

    fn spawn(&self, i: usize, dir: &Path, join: Option<&str>) -> Child {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(i), env!("CARGO_BIN_EXE_quiver")])
            .arg("serve")
            .arg("--data-dir")
            .arg(dir)
            .arg("--listen")
            .arg(format!("{}:{PORT}", self.addr(i)))
            .args(["--cluster-secret", SECRET, "--heartbeat-ms", "100"])
            .args(["--exact-below", "0", "--log", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(j) = join {
            cmd.args(["--join", j, "--voter"]);
        }
        cmd.spawn().expect("spawn quiver in a network namespace")
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.forward(false);
        for i in 0..self.nodes {
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn cluster(url: &str) -> Option<Value> {
    common::http::cluster_json(url).await
}

async fn eventually<F: std::future::Future<Output = bool>>(what: &str, f: impl FnMut() -> F) {
    common::eventually_within(what, WAIT, Duration::from_millis(25), f).await
}

fn point(i: u64) -> PointInput {
    PointInput {
        id: PointId::Num(i),
        vector: vec![(i % 13) as f32, (i % 5) as f32, 1.0, (i as f32 * 0.1).sin()],
        payload: Some(json!({"i": i})),
    }
}

/// Acknowledged writes: (id, log index, when).
type Acks = Arc<Mutex<Vec<(u64, u64, Instant)>>>;

/// Writes one point per request until `stop`, from `first` on, striding by `stride`.
async fn writer(client: Client, first: u64, stride: u64, acks: Acks, stop: Arc<Mutex<bool>>) {
    let mut id = first;
    while !*stop.lock().unwrap() {
        if let Ok(w) = client.upsert("p", vec![point(id)]).await {
            acks.lock().unwrap().push((id, w.index, Instant::now()));
            id += stride;
        } else {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn netns_usable() -> Option<Net> {
    let required = std::env::var("QUIVER_REQUIRE_NETNS").is_ok_and(|v| v == "1");
    // SAFETY: geteuid(2) has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let net = if root {
        Net::create(3)
    } else {
        Err("not root".into())
    };
    match net {
        Ok(n) => Some(n),
        Err(e) if required => panic!("QUIVER_REQUIRE_NETNS=1 but namespaces are unusable: {e}"),
        Err(e) => {
            eprintln!("skipping the partition test: {e}");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_by_the_network_stops_acknowledging_and_the_cluster_converges() {
    let Some(net) = netns_usable() else { return };
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let urls: Vec<String> = (0..3).map(|i| net.url(i)).collect();
    let mut nodes = Nodes(vec![net.spawn(0, dirs[0].path(), None)]);
    eventually("the first voter to lead", || async {
        cluster(&urls[0])
            .await
            .is_some_and(|c| c["writable"] == json!(true))
    })
    .await;
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        nodes.0.push(net.spawn(i, dir.path(), Some(&urls[0])));
    }
    eventually("three voters", || async {
        cluster(&urls[0]).await.is_some_and(|c| {
            c["members"]
                .as_array()
                .is_some_and(|m| m.iter().filter(|m| m["role"] == "voter").count() == 3)
        })
    })
    .await;

    let client = Client::builder(urls.clone()).connect().await.unwrap();
    let config = CollectionConfig::new(4, Metric::L2);
    client.create_collection("p", &config).await.unwrap();

    let acks: Acks = Arc::default();
    let stop = Arc::new(Mutex::new(false));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let c = Client::builder(urls.clone()).build().unwrap();
            tokio::spawn(writer(c, w, 3, acks.clone(), stop.clone()))
        })
        .collect();
    eventually("some writes", || async {
        acks.lock().unwrap().len() >= 100
    })
    .await;

    // Cut the leader off.
    let status = cluster(&urls[0]).await.unwrap();
    let old_term = status["term"].as_u64().unwrap();
    let leader_id = status["leader_id"].as_u64().unwrap();
    let members = status["members"].as_array().unwrap().clone();
    let leader_url = members
        .iter()
        .find(|m| m["id"].as_u64() == Some(leader_id))
        .and_then(|m| m["addr"].as_str())
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    let cut = urls.iter().position(|u| *u == leader_url).unwrap();
    let others: Vec<String> = (0..3)
        .filter(|&i| i != cut)
        .map(|i| urls[i].clone())
        .collect();
    let cut_at = Instant::now();
    net.isolate(cut, true);

    // A new leader, in a higher term, on the majority side.
    let elected_at = 'elected: loop {
        for u in &others {
            if let Some(c) = cluster(u).await {
                if c["role"] == "leader" && c["term"].as_u64() > Some(old_term) {
                    break 'elected Instant::now();
                }
            }
        }
        assert!(
            cut_at.elapsed() < WAIT,
            "no new leader on the majority side"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };

    // The cut-off leader says it does not take writes, and refuses one at once.
    eventually("the cut-off leader to say it is not writable", || async {
        cluster(&leader_url)
            .await
            .is_some_and(|c| c["writable"] == json!(false))
    })
    .await;
    let sent = Instant::now();
    let refused = http()
        .put(format!("{leader_url}/collections/p/points"))
        .json(&json!({"points": [{"id": 1_000_000, "vector": [1, 2, 3, 4]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_leader", "{body}");
    let refused_in = sent.elapsed();

    // Writes resume on the majority side.
    let resumed_after = loop {
        let first_new = acks
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, at)| *at > elected_at)
            .map(|(_, _, at)| *at)
            .min();
        if let Some(at) = first_new {
            break at - elected_at;
        }
        assert!(elected_at.elapsed() < WAIT, "writes did not resume");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eventually("writes on the new leader", || async {
        acks.lock()
            .unwrap()
            .iter()
            .filter(|(_, _, at)| *at > elected_at)
            .count()
            >= 50
    })
    .await;

    // Reads on the cut-off side never return data older than a token.
    let token = acks.lock().unwrap().iter().map(|a| a.1).max().unwrap();
    let newest = acks
        .lock()
        .unwrap()
        .iter()
        .find(|a| a.1 == token)
        .unwrap()
        .0;
    let read = |q: String| {
        let url = format!("{leader_url}/collections/p/points/{newest}?{q}");
        async move { http().get(url).send().await.unwrap() }
    };
    let by_token = read(format!("min_index={token}")).await;
    assert!(
        by_token.status() == 504 || by_token.status() == 503,
        "a token read past the cut answered {}",
        by_token.status()
    );
    let linearizable = read("consistency=linearizable".into()).await;
    assert!(
        linearizable.status().is_server_error(),
        "a linearizable read on the cut-off leader answered {}",
        linearizable.status()
    );
    let bounded = read("max_lag_ms=1000".into()).await;
    assert_eq!(bounded.status(), 503, "max_lag_ms on the cut-off side");

    *stop.lock().unwrap() = true;
    for w in writers {
        w.await.unwrap();
    }

    // Heal: every node converges, with every acknowledged write.
    net.isolate(cut, false);
    let acked: BTreeSet<u64> = acks.lock().unwrap().iter().map(|a| a.0).collect();
    let last = acks.lock().unwrap().iter().map(|a| a.1).max().unwrap();
    for url in &urls {
        let node = Client::new(url, None).unwrap();
        let ids: Vec<PointId> = acked.iter().map(|&i| PointId::Num(i)).collect();
        let token = quiver::model::Consistency::MinIndex { min_index: last };
        let healed = Instant::now();
        let got = loop {
            match node
                .get_points("p", ids.clone(), false, Some(token.clone()))
                .await
            {
                Ok(r) => break r.points.len(),
                Err(e) => assert!(healed.elapsed() < WAIT, "{url} did not catch up: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(got, acked.len(), "{url} lost acknowledged writes");
    }
    let terms: Vec<u64> = {
        let mut t = Vec::new();
        for u in &urls {
            t.push(cluster(u).await.unwrap()["term"].as_u64().unwrap());
        }
        t
    };
    eprintln!(
        "partition: new leader elected {:.2} s after the cut; first write acknowledged {:.3} s \
         after the election; the cut-off leader refused a write in {:.3} s; {} writes \
         acknowledged, terms after healing {terms:?}",
        (elected_at - cut_at).as_secs_f64(),
        resumed_after.as_secs_f64(),
        refused_in.as_secs_f64(),
        acked.len()
    );
    drop(nodes);
}
