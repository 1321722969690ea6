//! The route table: every endpoint a node serves, with its method, path template and kind. The
//! node builds its router from this table, and everything that asks "is this request a read, a
//! write, or between nodes?" (API-key checks, write forwarding, the gateway, the client) derives
//! the answer from it, so that a new endpoint is classified in one place.

/// What an endpoint does, as far as routing and access are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A probe anyone may call (`/healthz`, `/readyz`).
    Open,
    /// Reads state: served by any ready replica; a read-only API key may call it.
    Read,
    /// Changes state: proposed on the leader (other nodes forward it there).
    Write,
    /// Raft RPC between nodes: the cluster secret, never an API key; never through the gateway.
    Internal,
    /// A membership change between nodes: like [`Kind::Internal`], and forwarded to the leader.
    Membership,
}

impl Kind {
    /// Between nodes only (cluster secret; not served by the gateway).
    pub fn is_internal(self) -> bool {
        matches!(self, Kind::Internal | Kind::Membership)
    }

    /// Only reads (a read-only API key may call it; any ready replica may answer).
    pub fn is_read(self) -> bool {
        matches!(self, Kind::Open | Kind::Read)
    }

    /// Must be handled by the leader (a follower forwards it).
    pub fn to_leader(self) -> bool {
        matches!(self, Kind::Write | Kind::Membership)
    }
}

/// The endpoints, by name (the node maps each to its handler).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Endpoint {
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
    ClusterStatus,
    ClusterJoin,
    ClusterLeave,
    ClusterPromote,
    ClusterReadIndex,
    RaftAppend,
    RaftVote,
    RaftSnapshot,
    ListCollections,
    CreateCollection,
    GetCollection,
    DeleteCollection,
    Compact,
    Upsert,
    DeletePoints,
    GetPoints,
    Search,
    SearchBatch,
    GetPoint,
}

/// One endpoint: `method path` (path parameters in braces, as axum writes them).
#[derive(Clone, Copy, Debug)]
pub struct Route {
    /// Which endpoint.
    pub endpoint: Endpoint,
    /// The HTTP method (`GET` also answers `HEAD`).
    pub method: &'static str,
    /// The path template.
    pub path: &'static str,
    /// What it does.
    pub kind: Kind,
}

const fn route(endpoint: Endpoint, method: &'static str, path: &'static str, kind: Kind) -> Route {
    Route {
        endpoint,
        method,
        path,
        kind,
    }
}

/// Every endpoint a node serves.
pub const ROUTES: &[Route] = {
    use Endpoint::*;
    use Kind::*;
    &[
        route(Healthz, "GET", "/healthz", Open),
        route(Readyz, "GET", "/readyz", Open),
        route(Metrics, "GET", "/metrics", Read),
        route(OpenApi, "GET", "/openapi.json", Read),
        route(ClusterStatus, "GET", "/cluster", Read),
        route(ClusterJoin, "POST", "/cluster/join", Membership),
        route(ClusterLeave, "POST", "/cluster/leave", Membership),
        route(ClusterPromote, "POST", "/cluster/promote", Membership),
        route(ClusterReadIndex, "POST", "/cluster/read_index", Internal),
        route(RaftAppend, "POST", "/raft/append", Internal),
        route(RaftVote, "POST", "/raft/vote", Internal),
        route(RaftSnapshot, "POST", "/raft/snapshot", Internal),
        route(ListCollections, "GET", "/collections", Read),
        route(CreateCollection, "PUT", "/collections/{name}", Write),
        route(GetCollection, "GET", "/collections/{name}", Read),
        route(DeleteCollection, "DELETE", "/collections/{name}", Write),
        route(Compact, "POST", "/collections/{name}/compact", Write),
        route(Upsert, "PUT", "/collections/{name}/points", Write),
        route(
            DeletePoints,
            "POST",
            "/collections/{name}/points/delete",
            Write,
        ),
        route(GetPoints, "POST", "/collections/{name}/points/get", Read),
        route(Search, "POST", "/collections/{name}/points/search", Read),
        route(
            SearchBatch,
            "POST",
            "/collections/{name}/points/search/batch",
            Read,
        ),
        route(GetPoint, "GET", "/collections/{name}/points/{id}", Read),
    ]
};

/// Whether `path` fits `template`, and how many of its segments are literal (a literal segment
/// wins over a parameter, as in axum).
fn fit(template: &str, path: &str) -> Option<usize> {
    let mut t = template.split('/');
    let mut p = path.split('/');
    let mut literal = 0;
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(literal),
            (Some(ts), Some(ps)) if ts.starts_with('{') => {
                if ps.is_empty() {
                    return None;
                }
            }
            (Some(ts), Some(ps)) if ts == ps => literal += 1,
            _ => return None,
        }
    }
}

/// The route a request is for, if any (`HEAD` counts as `GET`).
pub fn find(method: &str, path: &str) -> Option<&'static Route> {
    let method = if method == "HEAD" { "GET" } else { method };
    ROUTES
        .iter()
        .filter(|r| r.method == method)
        .filter_map(|r| fit(r.path, path).map(|literal| (literal, r)))
        .max_by_key(|(literal, _)| *literal)
        .map(|(_, r)| r)
}

/// What a request does. A request for no known endpoint (which a node answers 404 or 405) is a
/// read when its method is `GET` or `HEAD` and a write otherwise, so that it needs the full API
/// key and never counts as harmless; internal paths are recognised by prefix whatever the method.
pub fn classify(method: &str, path: &str) -> Kind {
    if let Some(r) = find(method, path) {
        return r.kind;
    }
    if path.starts_with("/raft/") {
        return Kind::Internal;
    }
    if let Some(r) = ROUTES
        .iter()
        .find(|r| r.path == path && r.kind.is_internal())
    {
        return r.kind;
    }
    match method {
        "GET" | "HEAD" => Kind::Read,
        _ => Kind::Write,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classified_by_the_table() {
        let k = classify;
        assert_eq!(k("POST", "/collections/c/points/search"), Kind::Read);
        assert_eq!(k("POST", "/collections/c/points/search/batch"), Kind::Read);
        assert_eq!(k("POST", "/collections/c/points/get"), Kind::Read);
        assert_eq!(k("POST", "/collections/c/points/delete"), Kind::Write);
        assert_eq!(k("PUT", "/collections/c/points"), Kind::Write);
        assert_eq!(k("GET", "/collections/c/points/search"), Kind::Read);
        assert_eq!(k("HEAD", "/collections/c"), Kind::Read);
        assert_eq!(k("DELETE", "/collections/c"), Kind::Write);
        assert_eq!(k("POST", "/collections/c/compact"), Kind::Write);
        assert_eq!(k("GET", "/healthz"), Kind::Open);
        assert_eq!(k("POST", "/cluster/join"), Kind::Membership);
        assert_eq!(k("GET", "/cluster/join"), Kind::Membership);
        assert_eq!(k("POST", "/cluster/read_index"), Kind::Internal);
        assert_eq!(k("GET", "/raft/anything"), Kind::Internal);
        assert_eq!(k("GET", "/cluster"), Kind::Read);
        // Unknown endpoints: a read only when the method says so.
        assert_eq!(k("GET", "/nowhere"), Kind::Read);
        assert_eq!(k("POST", "/nowhere"), Kind::Write);
        assert_eq!(k("POST", "/collections/c/points/search/"), Kind::Write);
    }

    #[test]
    fn a_literal_segment_wins_over_a_parameter() {
        let r = find("GET", "/collections/c/points/7").unwrap();
        assert_eq!(r.endpoint, Endpoint::GetPoint);
        assert!(find("GET", "/collections//points/7").is_none());
        assert_eq!(
            find("POST", "/collections/c/points/search")
                .unwrap()
                .endpoint,
            Endpoint::Search
        );
    }

    #[test]
    fn every_route_is_listed_once() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert!(
                    a.endpoint != b.endpoint && (a.method, a.path) != (b.method, b.path),
                    "{a:?} and {b:?}"
                );
            }
        }
    }
}
