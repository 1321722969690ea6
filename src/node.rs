//! Wiring: open the engine, start Raft over it, bind the listener, bootstrap (initialise a
//! single-voter cluster, or join one), serve until shutdown, then stop cleanly: a read replica
//! leaves the cluster, Raft stops, indexers dump their graphs, sled flushes.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::BasicNode;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::{router, AppState};
use crate::cluster::{Cluster, CompactionPolicy};
use crate::config::Config;
use crate::engine::Engine;
use crate::raft::{LogStore, Network, NodeId, PeerClient, PeerHealth, Raft, StateMachine};
use crate::writer::Writer;

/// How long a joining node keeps asking before giving up.
const JOIN_DEADLINE: Duration = Duration::from_secs(600);

/// A running node (for tests and embedding): its address and a way to stop it.
pub struct Node {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// The engine, for in-process inspection.
    pub engine: Arc<Engine>,
    /// Raft and membership.
    pub cluster: Arc<Cluster>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Node {
    /// Opens the data dir, starts Raft, binds `config.listen`, serves in the background and
    /// bootstraps: a fresh node without `--join` initialises a single-voter cluster and waits to
    /// lead it; with `--join` it asks to be added (in the background).
    pub async fn start(config: Config) -> anyhow::Result<Node> {
        config.validate()?;
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let (engine, cluster, pristine) = open(&config, addr).await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            listener,
            engine.clone(),
            cluster.clone(),
            config.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        bootstrap(&cluster, &config, pristine).await?;
        Ok(Node {
            addr,
            engine,
            cluster,
            stop: Some(stop),
            task,
        })
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// This node's Raft id.
    pub fn id(&self) -> NodeId {
        self.cluster.id
    }

    /// Stops serving and closes the store (without leaving the cluster: a restart rejoins as
    /// the same member). The data dir can be reopened afterwards.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let engine = self.engine.clone();
        drop(self.engine);
        drop(self.cluster);
        self.task.await??;
        release(engine).await;
        Ok(())
    }

    /// Leaves the cluster (a read replica scaling down), then stops.
    pub async fn leave_and_stop(self) -> anyhow::Result<()> {
        self.cluster.request_leave().await;
        self.stop().await
    }
}

/// Reads this node's id from the data dir, or creates a fresh random one: a wiped data dir always
/// means a new id, never a reused one. Only a missing file makes a new id: a file that cannot be
/// read or parsed stops the node (a new id beside old Raft state would be a different member
/// with this member's log; review L1). The new id is durable (file and directory fsynced) before
/// it is used.
fn node_id(data_dir: &Path) -> anyhow::Result<NodeId> {
    use anyhow::Context;
    let path = data_dir.join("node_id");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            return text
                .trim()
                .parse()
                .with_context(|| format!("{} is not a node id", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let id = loop {
        let id: u64 = rand::random();
        if id != 0 {
            break id;
        }
    };
    let tmp = data_dir.join("node_id.tmp");
    std::fs::write(&tmp, id.to_string())?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(id)
}

async fn open(
    config: &Config,
    addr: SocketAddr,
) -> anyhow::Result<(Arc<Engine>, Arc<Cluster>, bool)> {
    let opts = config.engine_options();
    let started = Instant::now();
    let engine = Arc::new(tokio::task::spawn_blocking(move || Engine::open(opts)).await??);
    let id = node_id(&config.data_dir)?;
    let log = LogStore::open(engine.store().db(), id)?;
    let durability = log.durability();
    let pristine = log.is_pristine();
    let sm = StateMachine::new(engine.clone())?;
    let (secret, made_up) = config.secret();
    let health = PeerHealth::default();
    let peer = PeerClient::new(&secret);
    let network = Network::new(peer.clone(), health.clone());
    let raft = Raft::new(id, Arc::new(config.raft_config()?), network, log, sm).await?;
    // A learner acknowledges appends before they are fsynced (see `raft::Durability`): tell the
    // log store which this node is, from the membership openraft loaded or installed.
    let mut metrics = raft.metrics();
    tokio::spawn(async move {
        loop {
            let (index, learner) = {
                let m = metrics.borrow();
                let mc = &m.membership_config;
                let index = mc.log_id().as_ref().map_or(0, |l| l.index);
                (index, !mc.membership().voter_ids().any(|v| v == id))
            };
            durability.observe(index, learner);
            if metrics.changed().await.is_err() {
                break;
            }
        }
    });
    if made_up {
        let others = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .filter(|(n, _)| **n != id)
            .count();
        if others > 0 {
            let _ = raft.shutdown().await;
            anyhow::bail!("this node's cluster has {others} other member(s): start it with the cluster's --cluster-secret");
        }
        tracing::info!(
            "no --cluster-secret: internal endpoints are closed (this node can take no replicas)"
        );
    }
    let advertise = advertise_url(config, addr).await?;
    tracing::info!(
        id,
        %advertise,
        secs = started.elapsed().as_secs_f64(),
        collections = engine.list().len(),
        applied = engine.last_applied(),
        "store opened"
    );
    let cluster = Arc::new(Cluster::new(
        raft,
        id,
        advertise,
        peer,
        health,
        Duration::from_millis(config.read_wait_ms),
        config.ready_max_lag,
    ));
    cluster.spawn_leader_log();
    cluster.spawn_learner_expiry(Duration::from_secs(config.learner_expiry_secs));
    cluster.spawn_snapshot_policy(
        config.snapshot_logs,
        Duration::from_secs(config.snapshot_min_interval_secs),
    );
    Ok((engine, cluster, pristine))
}

/// The URL peers are told: `--advertise`, or with `--advertise auto` this host's address on the
/// route towards the cluster (containers whose address is not known in advance), or the bound
/// address.
async fn advertise_url(config: &Config, addr: SocketAddr) -> anyhow::Result<String> {
    match config.advertise.as_deref() {
        Some("auto") => {
            let ip = route_ip(&config.join_urls()).await?;
            Ok(format!("http://{}", SocketAddr::new(ip, addr.port())))
        }
        Some(url) => Ok(url.trim_end_matches('/').to_string()),
        None => {
            if addr.ip().is_unspecified() {
                tracing::warn!(%addr, "listening on all interfaces without --advertise: peers cannot reach this address; set --advertise to this node's reachable URL, or to auto");
            }
            Ok(format!("http://{addr}"))
        }
    }
}

/// The local address the kernel would use to reach the first join target that resolves (or, with
/// none, any public address; no packet is sent: a UDP `connect` only picks the route).
async fn route_ip(join: &[String]) -> anyhow::Result<std::net::IpAddr> {
    let mut targets: Vec<SocketAddr> = Vec::new();
    for url in join {
        let host = url
            .split("://")
            .last()
            .unwrap_or(url)
            .split('/')
            .next()
            .unwrap_or_default();
        let with_port = if host.contains(':') {
            host.to_string()
        } else {
            format!("{host}:80")
        };
        if let Ok(found) = tokio::net::lookup_host(with_port).await {
            targets.extend(found);
        }
    }
    targets.push(SocketAddr::from(([192, 0, 2, 1], 9)));
    for target in targets {
        let bind = if target.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let Ok(sock) = tokio::net::UdpSocket::bind(bind).await else {
            continue;
        };
        if sock.connect(target).await.is_ok() {
            if let Ok(local) = sock.local_addr() {
                if !local.ip().is_unspecified() {
                    return Ok(local.ip());
                }
            }
        }
    }
    anyhow::bail!("--advertise auto: found no route to the cluster; give --advertise URL")
}

/// What the `--peers` of a node with no state say, asked all at once.
#[derive(Debug, PartialEq)]
enum PeersSay {
    /// At least one peer is a member of a cluster: join it.
    Cluster,
    /// Every peer answered, and none belongs to a cluster: a first start, this node initialises.
    AllFresh,
    /// Some peers did not answer (down, still loading, not resolvable yet) and none that did
    /// belongs to a cluster: those may hold the cluster, so wait.
    Unsure(Vec<String>),
}

async fn ask_peers(http: &reqwest::Client, peers: &[String], api_key: Option<&str>) -> PeersSay {
    let asks = peers
        .iter()
        .map(|url| async move { (url.clone(), crate::topology::ask(http, url, api_key).await) });
    let answers = futures_util::future::join_all(asks).await;
    if answers
        .iter()
        .any(|(_, a)| a.as_ref().is_some_and(|s| !s.members.is_empty()))
    {
        return PeersSay::Cluster;
    }
    let missing: Vec<String> = answers
        .into_iter()
        .filter(|(_, a)| a.is_none())
        .map(|(u, _)| u)
        .collect();
    if missing.is_empty() {
        PeersSay::AllFresh
    } else {
        PeersSay::Unsure(missing)
    }
}

/// A first voter with no state and `--peers` (pod 0 of a StatefulSet): it initialises a cluster
/// only when every peer answered and none belongs to one; it joins the peers' cluster as a voter
/// when one does; and it waits, however long, while some peer does not answer, since that peer
/// may hold the cluster (its volume intact, still loading). Never a second cluster beside the
/// first (split brain), at the price that a lost volume plus a peer gone for good needs an
/// operator (start the node without `--peers`, or with `--join`).
async fn bootstrap_with_peers(cluster: Arc<Cluster>, config: Config) {
    let peers = config.peer_urls();
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
    {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "cannot build an HTTP client to ask --peers");
            return;
        }
    };
    let mut last_note: Option<Instant> = None;
    loop {
        match ask_peers(&http, &peers, config.api_key.as_deref()).await {
            PeersSay::Cluster => {
                tracing::warn!(?peers, "this node has no state but its peers already form a cluster: joining it as a voter instead of initialising a new one");
                match cluster.request_join(&peers, true, JOIN_DEADLINE).await {
                    Ok(index) => tracing::info!(index, "joined the existing cluster"),
                    Err(e) => tracing::error!(error = %e, "could not join the existing cluster"),
                }
                return;
            }
            PeersSay::AllFresh => {
                match initialise(&cluster).await {
                    Ok(()) => tracing::info!(
                        id = cluster.id,
                        "every peer is new: initialised the cluster"
                    ),
                    Err(e) => tracing::error!(error = %e, "could not initialise the cluster"),
                }
                return;
            }
            PeersSay::Unsure(missing) => {
                if last_note.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(?missing, "no state here, and some --peers do not answer: waiting for them before deciding whether to initialise or join (they may hold the cluster)");
                    last_note = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Initialises a single-voter cluster of this node and waits until it leads.
async fn initialise(cluster: &Cluster) -> anyhow::Result<()> {
    let members = BTreeMap::from([(
        cluster.id,
        BasicNode {
            addr: cluster.advertise.clone(),
        },
    )]);
    cluster.raft.initialize(members).await?;
    cluster
        .raft
        .wait(Some(Duration::from_secs(30)))
        .current_leader(cluster.id, "initialise")
        .await?;
    Ok(())
}

async fn bootstrap(cluster: &Arc<Cluster>, config: &Config, pristine: bool) -> anyhow::Result<()> {
    match &config.join {
        None if pristine && !config.peer_urls().is_empty() => {
            tokio::spawn(bootstrap_with_peers(cluster.clone(), config.clone()));
        }
        None if pristine => {
            initialise(cluster).await?;
            tracing::info!(id = cluster.id, "initialised a single-voter cluster");
        }
        None => {}
        Some(_) => {
            // Also on restart: a replica that was expired while away asks to be added again.
            let (c, urls, voter) = (cluster.clone(), config.join_urls(), config.voter);
            let after = rejoin_after(config);
            tokio::spawn(async move {
                match c.request_join(&urls, voter, JOIN_DEADLINE).await {
                    Ok(index) => tracing::info!(index, "joined the cluster"),
                    Err(e) => tracing::error!(error = %e, "could not join the cluster"),
                }
                if !voter {
                    rejoin_when_forgotten(c, urls, after).await;
                }
            });
        }
    }
    Ok(())
}

/// How long a read replica goes without hearing from a leader before it asks to join again: half
/// the learner expiry (nodes share their flags), between 2 and 15 s.
fn rejoin_after(config: &Config) -> Duration {
    Duration::from_millis(config.learner_expiry_secs * 500)
        .clamp(Duration::from_secs(2), Duration::from_secs(15))
}

/// A read replica that no leader has reached for `after` may have been removed (learner expiry
/// while it was slow or cut off), and a removed learner is never told: it asks to join again.
/// For a replica that is still a member the join is a no-op on the leader.
async fn rejoin_when_forgotten(cluster: Arc<Cluster>, urls: Vec<String>, after: Duration) {
    let weak = Arc::downgrade(&cluster);
    drop(cluster);
    let mut silent_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(c) = weak.upgrade() else { return };
        if c.fatal().is_some() {
            return;
        }
        let heard = c.ready().is_ok() || c.last_contact().is_some_and(|t| t.elapsed() < after);
        if heard {
            silent_since = None;
            continue;
        }
        let since = *silent_since.get_or_insert_with(Instant::now);
        if since.elapsed() < after {
            continue;
        }
        tracing::warn!(
            secs = since.elapsed().as_secs(),
            "no leader has reached this replica for a while; asking to join again"
        );
        match c.request_join(&urls, false, Duration::from_secs(30)).await {
            Ok(index) => tracing::info!(index, "joined the cluster again"),
            Err(e) => tracing::warn!(error = %e, "asking to join again failed; will retry"),
        }
        silent_since = None;
    }
}

/// Waits (briefly) until no request still holds the engine, so sled's directory lock is released.
async fn release(engine: Arc<Engine>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut engine = engine;
    loop {
        match Arc::try_unwrap(engine) {
            Ok(e) => {
                let _ = tokio::task::spawn_blocking(move || drop(e)).await;
                return;
            }
            Err(e) if Instant::now() < deadline => {
                engine = e;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(_) => {
                tracing::warn!("engine still referenced after shutdown");
                return;
            }
        }
    }
}

async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    cluster: Arc<Cluster>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let writer = Writer::start(cluster.raft.clone(), config.max_batch_points);
    cluster.spawn_compaction(
        &engine,
        writer.clone(),
        CompactionPolicy {
            idle: Duration::from_secs(config.compact_idle_secs),
            ratio: config.compact_ratio,
        },
    );
    let state = AppState {
        engine: engine.clone(),
        writer,
        config: Arc::new(config),
        cluster: cluster.clone(),
    };
    let app = router(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    if let Err(e) = cluster.raft.shutdown().await {
        tracing::warn!(error = %e, "raft did not shut down cleanly");
    }
    drop(cluster);
    let e = engine.clone();
    tokio::task::spawn_blocking(move || e.close()).await??;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Runs a node until `shutdown` resolves (the `quiver serve` entry point). A read replica leaves
/// the cluster before it stops.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let node = Node::start(config).await?;
    tracing::info!(addr = %node.addr, id = node.id(), "quiver listening");
    shutdown.await;
    node.leave_and_stop().await
}

/// Resolves on ctrl-c or SIGTERM (docker stop).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown requested");
}
