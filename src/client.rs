//! A typed async client for quiver over HTTP (reqwest). It shares only the DTOs in
//! [`crate::model`] with the server.
//!
//! - **Writes** go to the leader. With discovery on, the client learns the leader from
//!   `GET /cluster`; otherwise it writes to the first node that accepts a connection (every node
//!   forwards writes to the leader). A write is sent again only when it provably never reached a
//!   node (connection refused) or a node refused it as not the leader; a write that may have been
//!   applied is never silently retried (upserts by id are idempotent, so the caller may).
//! - **Reads** are spread over the replicas with a [`Policy`] (round robin, least outstanding,
//!   power of two choices on latency) and retried once on another node only when the first one
//!   provably did no work: the connection was never made (refused, connect timeout), or the node
//!   answered 503 (not ready, no leader, too stale) or 504 `read_timeout` (it waited for an index
//!   and gave up before reading). A read whose connection broke after it was sent is not sent
//!   again: the request itself may be what killed the node, and would kill the next one.
//! - **Sessions**: the client remembers the highest index its writes returned; with
//!   [`ClientBuilder::read_your_writes`] every read that names no consistency carries it as
//!   `min_index`, so a replica answers only once it has those writes.
//!
//! ```no_run
//! # async fn demo() -> Result<(), quiver::client::ClientError> {
//! use quiver::client::Client;
//! use quiver::balance::Policy;
//! let client = Client::builder(["http://127.0.0.1:7070"])
//!     .policy(Policy::LeastOutstanding)
//!     .read_your_writes(true)
//!     .connect()
//!     .await?;
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::balance::{BackendStats, Balancer, Policy};
use crate::cluster::ClusterStatus;
use crate::model::{
    BatchSearchRequest, BatchSearchResponse, CollectionConfig, CollectionInfo, CollectionList,
    Consistency, ConsistencyLevel, DeleteRequest, GetPointsRequest, GetPointsResponse, Health,
    PointId, PointInput, PointResponse, SearchRequest, SearchResponse, UpsertRequest,
    WriteResponse,
};
use crate::topology;

/// What can go wrong talking to quiver.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A node answered with an error.
    #[error("{status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The error code from the body (`invalid_input`, ...).
        code: String,
        /// The message from the body.
        message: String,
        /// The offending field, for `invalid_input`.
        field: Option<String>,
    },
    /// The request did not complete (connection, timeout, undecodable body). For a write, it
    /// may or may not have been applied.
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// No node could be reached or none was configured.
    #[error("no node available: {0}")]
    NoNode(String),
}

impl ClientError {
    /// A 503 `not_leader`: refused before it was applied, so safe to send elsewhere.
    pub fn is_not_leader(&self) -> bool {
        matches!(self, ClientError::Api { status, code, .. }
            if *status == StatusCode::SERVICE_UNAVAILABLE && code == "not_leader")
    }

    /// The error code of an API error (`collection_not_found`, ...).
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorInner,
}
#[derive(Deserialize)]
struct ErrorInner {
    code: String,
    message: String,
    field: Option<String>,
}

/// Settings of a [`Client`]; start with [`Client::builder`].
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    urls: Vec<String>,
    api_key: Option<String>,
    policy: Policy,
    discover: bool,
    read_your_writes: bool,
    read_from_leader: bool,
    timeout: Duration,
    refresh_every: Duration,
}

impl ClientBuilder {
    /// API key sent as `Authorization: Bearer`.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// How reads pick a node (default: power of two choices).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Learn the leader and the ready replicas from `GET /cluster` (default on). Off: writes go
    /// to the given URLs in order and reads are spread over all of them.
    pub fn discover(mut self, on: bool) -> Self {
        self.discover = on;
        self
    }

    /// Send the highest index this client's writes returned as `min_index` on every read that
    /// names no consistency (default off).
    pub fn read_your_writes(mut self, on: bool) -> Self {
        self.read_your_writes = on;
        self
    }

    /// Also read from the leader (by default it serves reads only when no replica is ready).
    pub fn read_from_leader(mut self, on: bool) -> Self {
        self.read_from_leader = on;
        self
    }

    /// Longest a request may take (default 120 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How often discovery runs again in the background of reads (default 5 s).
    pub fn refresh_every(mut self, every: Duration) -> Self {
        self.refresh_every = every;
        self
    }

    /// The client, without touching the network (discovery runs on first use).
    pub fn build(self) -> Result<Client, ClientError> {
        let seeds = topology::normalise(&self.urls);
        if seeds.is_empty() {
            return Err(ClientError::NoNode("no URL given".into()));
        }
        let http = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(64)
            .build()?;
        let probe = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let readers = Balancer::new(self.policy);
        readers.set(seeds.clone());
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                probe,
                known: RwLock::new(seeds.clone()),
                seeds,
                leader: RwLock::new(None),
                readers,
                session: AtomicU64::new(0),
                last_refresh: Mutex::new(None),
                settings: self,
            }),
        })
    }

    /// The client, after a first discovery round (when discovery is on).
    pub async fn connect(self) -> Result<Client, ClientError> {
        let discover = self.discover;
        let client = self.build()?;
        if discover {
            client.refresh().await?;
        }
        Ok(client)
    }
}

struct Inner {
    settings: ClientBuilder,
    http: reqwest::Client,
    probe: reqwest::Client,
    seeds: Vec<String>,
    known: RwLock<Vec<String>>,
    leader: RwLock<Option<String>>,
    readers: Balancer,
    session: AtomicU64,
    last_refresh: Mutex<Option<Instant>>,
}

/// A quiver client (cheap to clone; clones share connections, balancing state and the session).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// A request body, serialised once however many nodes it is sent to.
type Body = Option<axum::body::Bytes>;

fn json<T: serde::Serialize + ?Sized>(body: &T) -> Result<Body, ClientError> {
    serde_json::to_vec(body)
        .map(|v| Some(v.into()))
        .map_err(|e| ClientError::NoNode(format!("unserialisable body: {e}")))
}

impl Client {
    /// A client for one node (no discovery): every request goes to `base`.
    pub fn new(base: &str, api_key: Option<String>) -> Result<Client, ClientError> {
        let mut b = Client::builder([base]).discover(false);
        b.api_key = api_key;
        b.build()
    }

    /// Settings for a client of the nodes at `urls` (any members; more are discovered).
    pub fn builder<I, S>(urls: I) -> ClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientBuilder {
            urls: urls.into_iter().map(Into::into).collect(),
            api_key: None,
            policy: Policy::default(),
            discover: true,
            read_your_writes: false,
            read_from_leader: false,
            timeout: Duration::from_secs(120),
            refresh_every: Duration::from_secs(5),
        }
    }

    /// The first configured node's URL.
    pub fn base(&self) -> &str {
        &self.inner.seeds[0]
    }

    /// The leader's URL, as last discovered.
    pub fn leader(&self) -> Option<String> {
        self.inner.leader.read().clone()
    }

    /// The highest index this client's writes returned (its read-your-writes token).
    pub fn session_index(&self) -> u64 {
        self.inner.session.load(Ordering::Relaxed)
    }

    /// Raises the session token, e.g. to one handed over from another process.
    pub fn observe_index(&self, index: u64) {
        self.inner.session.fetch_max(index, Ordering::Relaxed);
    }

    /// Per-node read counters (requests served, failures, latency average, in flight).
    pub fn read_stats(&self) -> Vec<BackendStats> {
        self.inner.readers.stats()
    }

    /// Rediscovers the leader and the ready replicas now.
    pub async fn refresh(&self) -> Result<(), ClientError> {
        let inner = &self.inner;
        *inner.last_refresh.lock() = Some(Instant::now());
        let candidates = inner.known.read().clone();
        let topo = topology::discover(&inner.probe, &candidates, inner.settings.api_key.as_deref())
            .await
            .ok_or_else(|| {
                ClientError::NoNode(format!("none of {candidates:?} answered GET /cluster"))
            })?;
        let readers = topo.readers(inner.settings.read_from_leader);
        if !readers.is_empty() {
            inner.readers.set(readers);
        }
        topology::merge_known(&mut inner.known.write(), &inner.seeds, &topo);
        *inner.leader.write() = topo.leader;
        Ok(())
    }

    /// Runs discovery in the background when it is due (reads never wait for it).
    fn refresh_if_due(&self) {
        if !self.inner.settings.discover {
            return;
        }
        let due = {
            let mut last = self.inner.last_refresh.lock();
            let due = last.is_none_or(|t| t.elapsed() >= self.inner.settings.refresh_every);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.refresh().await {
                    tracing::debug!(error = %e, "background discovery failed");
                }
            });
        }
    }

    async fn send(
        &self,
        node: &str,
        method: &Method,
        path: &str,
        body: &Body,
    ) -> Result<(StatusCode, axum::body::Bytes), ClientError> {
        let mut req = self
            .inner
            .http
            .request(method.clone(), format!("{node}{path}"));
        if let Some(k) = &self.inner.settings.api_key {
            req = req.bearer_auth(k);
        }
        if let Some(bytes) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes.clone());
        }
        // The body is read here, so that a connection lost mid-answer is a transport error.
        let resp = req.send().await?;
        let status = resp.status();
        Ok((status, resp.bytes().await?))
    }

    fn decode<T: DeserializeOwned>(status: StatusCode, body: &[u8]) -> Result<T, ClientError> {
        if status.is_success() {
            return serde_json::from_slice(body).map_err(|e| ClientError::Api {
                status,
                code: "undecodable".into(),
                message: format!("the answer is not what was expected: {e}"),
                field: None,
            });
        }
        let text = String::from_utf8_lossy(body).into_owned();
        let (code, message, field) = match serde_json::from_str::<ErrorEnvelope>(&text) {
            Ok(e) => (e.error.code, e.error.message, e.error.field),
            Err(_) => ("unknown".to_string(), text, None),
        };
        Err(ClientError::Api {
            status,
            code,
            message,
            field,
        })
    }

    /// Nodes to try for a write: the leader first, then every other known node.
    fn write_targets(&self) -> Vec<String> {
        let mut out: Vec<String> = self.inner.leader.read().iter().cloned().collect();
        for u in self.inner.known.read().iter() {
            if !out.contains(u) {
                out.push(u.clone());
            }
        }
        out
    }

    async fn write(
        &self,
        method: Method,
        path: &str,
        body: Body,
    ) -> Result<WriteResponse, ClientError> {
        let mut tried: Vec<String> = Vec::new();
        let mut rediscovered = false;
        let mut last_err = None;
        loop {
            let next = self
                .write_targets()
                .into_iter()
                .find(|u| !tried.contains(u));
            let Some(node) = next else { break };
            tried.push(node.clone());
            let outcome = match self.send(&node, &method, path, &body).await {
                Ok((status, bytes)) => Self::decode::<WriteResponse>(status, &bytes),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(w) => {
                    self.observe_index(w.index);
                    // A node that knew no leader waited for an election and forwarded the write:
                    // learn the new leader now, so that the next write goes straight to it.
                    if self.inner.settings.discover && self.leader().is_none() {
                        let _ = self.refresh().await;
                    }
                    return Ok(w);
                }
                // Never reached the node (connection refused), or refused by a node that is not
                // the leader: either way not applied, so another node may take it.
                Err(ClientError::Http(e)) if e.is_connect() => {
                    last_err = Some(ClientError::Http(e))
                }
                Err(e) if e.is_not_leader() => last_err = Some(e),
                // Anything else may have been applied: never sent again behind the caller's back.
                Err(e) => return Err(e),
            }
            if self.inner.settings.discover && !rediscovered {
                rediscovered = true;
                let _ = self.refresh().await;
            }
        }
        Err(last_err.unwrap_or_else(|| ClientError::NoNode("no node to write to".into())))
    }

    async fn read<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Body,
    ) -> Result<T, ClientError> {
        self.refresh_if_due();
        let mut tried: Vec<String> = Vec::new();
        let mut last_err = None;
        for _ in 0..2 {
            let Some(lease) = self.inner.readers.pick(&tried) else {
                break;
            };
            let node = lease.url().to_string();
            match self.send(&node, &method, path, &body).await {
                Ok((status, bytes)) if refused_before_work(status, &bytes) => {
                    lease.failure();
                    last_err = Some(Self::decode::<T>(status, &bytes).err());
                }
                Ok((status, bytes)) => {
                    // A 500 is the node's fault (not retried: the node answered) and counts
                    // against it; 4xx are the caller's.
                    if status.is_server_error() {
                        lease.failure();
                    } else {
                        lease.success();
                    }
                    return Self::decode(status, &bytes);
                }
                // Never connected: the node did nothing, another may take the read.
                Err(ClientError::Http(e)) if e.is_connect() => {
                    lease.failure();
                    last_err = Some(Some(ClientError::Http(e)));
                }
                // Sent, then the connection broke or timed out: the read may be what brought the
                // node down, so it is not repeated on the next one.
                Err(e) => {
                    lease.failure();
                    if self.inner.settings.discover {
                        self.refresh_soon();
                    }
                    return Err(e);
                }
            }
            tried.push(node);
        }
        if self.inner.settings.discover {
            self.refresh_soon();
        }
        Err(last_err
            .flatten()
            .unwrap_or_else(|| ClientError::NoNode("no node to read from".into())))
    }

    fn refresh_soon(&self) {
        *self.inner.last_refresh.lock() = None;
    }

    /// The consistency a read without one gets: the session token with read-your-writes.
    fn session_consistency(&self) -> Option<Consistency> {
        let index = self.session_index();
        (self.inner.settings.read_your_writes && index > 0)
            .then_some(Consistency::MinIndex { min_index: index })
    }

    fn read_query(&self, consistency: Option<&Consistency>) -> String {
        let session = self.session_consistency();
        match consistency.or(session.as_ref()) {
            None => String::new(),
            Some(Consistency::Level(ConsistencyLevel::Eventual)) => "?consistency=eventual".into(),
            Some(Consistency::Level(ConsistencyLevel::Linearizable)) => {
                "?consistency=linearizable".into()
            }
            Some(Consistency::MinIndex { min_index }) => format!("?min_index={min_index}"),
            Some(Consistency::MaxLag { max_lag_ms }) => format!("?max_lag_ms={max_lag_ms}"),
        }
    }

    /// `PUT /collections/{name}`.
    pub async fn create_collection(
        &self,
        name: &str,
        config: &CollectionConfig,
    ) -> Result<WriteResponse, ClientError> {
        self.write(Method::PUT, &format!("/collections/{name}"), json(config)?)
            .await
    }

    /// `DELETE /collections/{name}`.
    pub async fn delete_collection(&self, name: &str) -> Result<WriteResponse, ClientError> {
        self.write(Method::DELETE, &format!("/collections/{name}"), None)
            .await
    }

    /// `GET /collections/{name}` (session consistency).
    pub async fn collection(&self, name: &str) -> Result<CollectionInfo, ClientError> {
        self.collection_with(name, None).await
    }

    /// `GET /collections/{name}` at a given consistency.
    pub async fn collection_with(
        &self,
        name: &str,
        consistency: Option<&Consistency>,
    ) -> Result<CollectionInfo, ClientError> {
        let q = self.read_query(consistency);
        self.read(Method::GET, &format!("/collections/{name}{q}"), None)
            .await
    }

    /// `GET /collections`.
    pub async fn collections(&self) -> Result<CollectionList, ClientError> {
        let q = self.read_query(None);
        self.read(Method::GET, &format!("/collections{q}"), None)
            .await
    }

    /// `PUT /collections/{name}/points` (insert or replace by id).
    pub async fn upsert(
        &self,
        name: &str,
        points: Vec<PointInput>,
    ) -> Result<WriteResponse, ClientError> {
        let body = UpsertRequest { points };
        self.write(
            Method::PUT,
            &format!("/collections/{name}/points"),
            json(&body)?,
        )
        .await
    }

    /// `GET /collections/{name}/points/{id}` (session consistency).
    pub async fn get_point(&self, name: &str, id: &PointId) -> Result<PointResponse, ClientError> {
        self.get_point_with(name, id, None).await
    }

    /// `GET /collections/{name}/points/{id}` at a given consistency.
    pub async fn get_point_with(
        &self,
        name: &str,
        id: &PointId,
        consistency: Option<&Consistency>,
    ) -> Result<PointResponse, ClientError> {
        let q = self.read_query(consistency);
        let id = urlencode(&id.to_string());
        self.read(
            Method::GET,
            &format!("/collections/{name}/points/{id}{q}"),
            None,
        )
        .await
    }

    /// `POST /collections/{name}/points/get`: the points that exist among `ids`, in order
    /// (session consistency unless one is given).
    pub async fn get_points(
        &self,
        name: &str,
        ids: Vec<PointId>,
        with_vector: bool,
        consistency: Option<Consistency>,
    ) -> Result<GetPointsResponse, ClientError> {
        let req = GetPointsRequest {
            ids,
            with_vector,
            consistency: consistency.or_else(|| self.session_consistency()),
        };
        let path = format!("/collections/{name}/points/get");
        self.read(Method::POST, &path, json(&req)?).await
    }

    /// `POST /collections/{name}/points/delete`.
    pub async fn delete_points(
        &self,
        name: &str,
        req: &DeleteRequest,
    ) -> Result<WriteResponse, ClientError> {
        self.write(
            Method::POST,
            &format!("/collections/{name}/points/delete"),
            json(req)?,
        )
        .await
    }

    /// `POST /collections/{name}/points/search` (session consistency unless the request names one).
    pub async fn search(
        &self,
        name: &str,
        req: &SearchRequest,
    ) -> Result<SearchResponse, ClientError> {
        let path = format!("/collections/{name}/points/search");
        match (&req.consistency, self.session_consistency()) {
            (None, Some(c)) => {
                let mut req = req.clone();
                req.consistency = Some(c);
                self.read(Method::POST, &path, json(&req)?).await
            }
            _ => self.read(Method::POST, &path, json(req)?).await,
        }
    }

    /// `POST /collections/{name}/points/search/batch`.
    pub async fn search_batch(
        &self,
        name: &str,
        req: &BatchSearchRequest,
    ) -> Result<BatchSearchResponse, ClientError> {
        let path = format!("/collections/{name}/points/search/batch");
        match (&req.consistency, self.session_consistency()) {
            (None, Some(c)) => {
                let req = BatchSearchRequest {
                    searches: req.searches.clone(),
                    consistency: Some(c),
                };
                self.read(Method::POST, &path, json(&req)?).await
            }
            _ => self.read(Method::POST, &path, json(req)?).await,
        }
    }

    /// `GET /cluster` from a reader.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, ClientError> {
        self.read(Method::GET, "/cluster", None).await
    }

    /// `GET /healthz` of one node (`node`: its URL, e.g. from [`Client::read_stats`]).
    pub async fn health(&self, node: &str) -> Result<Health, ClientError> {
        let (status, body) = self.send(node, &Method::GET, "/healthz", &None).await?;
        Self::decode(status, &body)
    }

    /// `GET /readyz` of one node: `Ok(index)` when it is a member and caught up, else the API
    /// error saying why (503 `unavailable`).
    pub async fn readiness(&self, node: &str) -> Result<u64, ClientError> {
        #[derive(Deserialize)]
        struct Ready {
            index: u64,
        }
        let (status, body) = self.send(node, &Method::GET, "/readyz", &None).await?;
        Self::decode::<Ready>(status, &body).map(|r| r.index)
    }
}

/// Percent-encodes a path segment (string ids may hold any character).
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether an error answer says the node refused a read before doing any of its work, so that
/// another node may be asked: 503 (not ready, no leader, stale) or a quiver 504 `read_timeout`
/// (the wait for an index expired before the read ran). A 502, or a 504 from something between
/// the client and the node, says nothing of what the node did.
pub(crate) fn refused_before_work(status: StatusCode, body: &[u8]) -> bool {
    match status.as_u16() {
        503 => true,
        504 => serde_json::from_slice::<ErrorEnvelope>(body)
            .is_ok_and(|e| e.error.code == "read_timeout"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_encoded_as_one_path_segment() {
        assert_eq!(urlencode("a b/c?d"), "a%20b%2Fc%3Fd");
        assert_eq!(urlencode("9f8e-x_y.z~"), "9f8e-x_y.z~");
    }

    #[test]
    fn a_builder_needs_a_url() {
        assert!(matches!(
            Client::builder(Vec::<String>::new()).build(),
            Err(ClientError::NoNode(_))
        ));
    }
}
