//! A typed async client for quiver over HTTP (reqwest). It speaks the types in [`crate::wire`],
//! which the server uses too, and routes by the rules in [`crate::routing`], which
//! `quiver gateway` uses too.
//!
//! - **Writes** go to the leader. With discovery on, the client learns the leader from
//!   `GET /cluster`; otherwise it writes to the first node that accepts a connection (every node
//!   forwards writes to the leader). A write is sent again only when it provably never reached a
//!   node (connection refused) or a node refused it as not the leader; a write that may have been
//!   applied is never silently retried (upserts by id are idempotent, so the caller may).
//! - **Reads** are spread over the replicas with a [`Policy`] (round robin, least outstanding,
//!   power of two choices on latency) and retried once on another node only when the first one
//!   provably did no work (see [`crate::routing`]).
//! - **Sessions**: the client remembers the highest index its writes returned; with
//!   [`ClientBuilder::read_your_writes`] every read that names no consistency carries it as
//!   `min_index`, so a replica answers only once it has those writes.
//!
//! ```no_run
//! # async fn demo() -> Result<(), quiver_client::ClientError> {
//! use quiver_client::{Client, Policy};
//! let client = Client::builder(["http://127.0.0.1:7070"])
//!     .policy(Policy::LeastOutstanding)
//!     .read_your_writes(true)
//!     .connect()
//!     .await?;
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::balance::{BackendStats, Policy};
use crate::routing::{Answer, Failure, Routing, RoutingConfig, Served};
use crate::wire::{
    BatchSearchRequest, BatchSearchResponse, ClusterStatus, CollectionConfig, CollectionInfo,
    CollectionList, Consistency, ConsistencyLevel, DeleteRequest, ErrorBody, GetPointsRequest,
    GetPointsResponse, Health, PointId, PointInput, PointResponse, SearchRequest, SearchResponse,
    UpsertRequest, WriteResponse,
};

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

impl From<Failure> for ClientError {
    fn from(f: Failure) -> ClientError {
        match f {
            Failure::NoNode(why) => ClientError::NoNode(why),
            Failure::Transport { error, .. } => ClientError::Http(error),
        }
    }
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
        let routing = Routing::new(RoutingConfig {
            seeds: self.urls.clone(),
            policy: self.policy,
            api_key: self.api_key.clone(),
            discover: self.discover,
            read_from_leader: self.read_from_leader,
            refresh_every: self.refresh_every,
            probe_timeout: Duration::from_secs(2),
        })?;
        let http = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(64)
            .build()?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                routing: Arc::new(routing),
                session: AtomicU64::new(0),
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
    routing: Arc<Routing>,
    session: AtomicU64,
}

/// A quiver client (cheap to clone; clones share connections, balancing state and the session).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// A request body, serialised once however many nodes it is sent to.
type Body = Option<Bytes>;

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
        &self.inner.routing.seeds()[0]
    }

    /// The leader's URL, as last discovered.
    pub fn leader(&self) -> Option<String> {
        self.inner.routing.leader()
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
        self.inner.routing.readers().stats()
    }

    /// Rediscovers the leader and the ready replicas now.
    pub async fn refresh(&self) -> Result<(), ClientError> {
        if self.inner.routing.refresh().await {
            Ok(())
        } else {
            Err(ClientError::NoNode(format!(
                "none of {:?} answered GET /cluster",
                self.inner.routing.seeds()
            )))
        }
    }

    async fn send(
        &self,
        node: &str,
        method: &Method,
        path: &str,
        body: &Body,
    ) -> reqwest::Result<Answer<()>> {
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
        let body = resp.bytes().await?;
        Ok(Answer {
            status,
            body,
            extra: (),
        })
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
        let (code, message, field) = match serde_json::from_slice::<ErrorBody>(body) {
            Ok(e) => (e.error.code, e.error.message, e.error.field),
            Err(_) => (
                "unknown".to_string(),
                String::from_utf8_lossy(body).into_owned(),
                None,
            ),
        };
        Err(ClientError::Api {
            status,
            code,
            message,
            field,
        })
    }

    fn decode_served<T: DeserializeOwned>(served: Served<()>) -> Result<T, ClientError> {
        Self::decode(served.answer.status, &served.answer.body)
    }

    async fn write(
        &self,
        method: Method,
        path: &str,
        body: Body,
    ) -> Result<WriteResponse, ClientError> {
        let (method, body) = (&method, &body);
        let served = self
            .inner
            .routing
            .write(|node, _| async move { self.send(&node, method, path, body).await })
            .await?;
        let w: WriteResponse = Self::decode_served(served)?;
        self.observe_index(w.index);
        Ok(w)
    }

    async fn read<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Body,
    ) -> Result<T, ClientError> {
        let (method, body) = (&method, &body);
        let served = self
            .inner
            .routing
            .read(|node, _| async move { self.send(&node, method, path, body).await })
            .await?;
        Self::decode_served(served)
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
        self.write(
            Method::PUT,
            &format!("/collections/{name}", name = urlencode(name)),
            json(config)?,
        )
        .await
    }

    /// `DELETE /collections/{name}`.
    pub async fn delete_collection(&self, name: &str) -> Result<WriteResponse, ClientError> {
        self.write(
            Method::DELETE,
            &format!("/collections/{name}", name = urlencode(name)),
            None,
        )
        .await
    }

    /// `POST /collections/{name}/compact`: rebuilds the collection's graph without its
    /// tombstones now (the leader also does so by itself once a collection is idle).
    pub async fn compact(&self, name: &str) -> Result<WriteResponse, ClientError> {
        self.write(
            Method::POST,
            &format!("/collections/{name}/compact", name = urlencode(name)),
            None,
        )
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
        self.read(
            Method::GET,
            &format!("/collections/{name}{q}", name = urlencode(name)),
            None,
        )
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
            &format!("/collections/{name}/points", name = urlencode(name)),
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
            &format!("/collections/{name}/points/{id}{q}", name = urlencode(name)),
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
        let path = format!("/collections/{name}/points/get", name = urlencode(name));
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
            &format!("/collections/{name}/points/delete", name = urlencode(name)),
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
        let path = format!("/collections/{name}/points/search", name = urlencode(name));
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
        let path = format!(
            "/collections/{name}/points/search/batch",
            name = urlencode(name)
        );
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
        let a = self.send(node, &Method::GET, "/healthz", &None).await?;
        Self::decode(a.status, &a.body)
    }

    /// `GET /readyz` of one node: `Ok(index)` when it is a member and caught up, else the API
    /// error saying why (503 `unavailable`).
    pub async fn readiness(&self, node: &str) -> Result<u64, ClientError> {
        let a = self.send(node, &Method::GET, "/readyz", &None).await?;
        Self::decode::<Health>(a.status, &a.body).map(|r| r.index)
    }
}

/// Percent-encodes a path segment (string ids may hold any character; a collection name that the
/// server would refuse still reaches it as one segment, to be refused by name).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names_are_encoded_as_one_path_segment() {
        let name = "a b";
        assert_eq!(
            format!("/collections/{name}", name = urlencode(name)),
            "/collections/a%20b"
        );
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
