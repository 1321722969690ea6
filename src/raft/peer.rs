//! The one client for calls between nodes. Every request it builds carries the cluster secret:
//! Raft RPC ([`super::Network`]), a follower's linearizable read asking the leader for its read
//! index, and a node asking to join or to leave. Nothing else in the server sends the secret.

use std::sync::Arc;
use std::time::Duration;

use super::SECRET_HEADER;

/// An HTTP client that authenticates to peers with the cluster secret (cheap to clone).
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    secret: Arc<str>,
}

impl PeerClient {
    /// A client sending `secret`. Connections time out after 2 s, requests after 90 s unless a
    /// call sets its own timeout (Raft RPC does): longer than a leader takes to answer a write
    /// (at most 60 s), so that a forwarded write gets the leader's own answer instead of an
    /// ambiguous timeout (review L14).
    pub fn new(secret: &str) -> PeerClient {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(8)
            .build()
            // Without TLS (reqwest's default features are off) building cannot fail; if it
            // ever did, the node could not talk to its peers at all.
            .expect("an HTTP client without TLS always builds");
        PeerClient {
            http,
            secret: secret.into(),
        }
    }

    /// `POST {base}{path}` with the cluster secret.
    pub fn post(&self, base: &str, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", base.trim_end_matches('/')))
            .header(SECRET_HEADER, &*self.secret)
    }

    /// The secret this client sends.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The underlying client, for forwarding a caller's request with the caller's own headers.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}
