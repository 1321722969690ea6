//! The Rust client of quiver, a replicated vector store, and the wire types it shares with the
//! server.
//!
//! - [`Client`]: a typed async client that discovers the leader and the ready replicas, sends
//!   writes to the leader and spreads reads over the replicas ([`client`] has the details).
//! - [`wire`]: every request and answer body, as the server defines and checks them; [`filter`]:
//!   payload filters; [`schema`]: the OpenAPI schemas written out by hand.
//! - [`routing`]: the outside view of a cluster and the retry rules, shared with
//!   `quiver gateway`; [`topology`]: discovery; [`balance`]: read load balancing.
//!
//! This crate depends on neither the server's storage nor its Raft: an application that only
//! speaks HTTP to quiver compiles reqwest, serde and tokio, not openraft, sled, hnsw_rs or axum.
//!
//! ```no_run
//! # async fn demo() -> Result<(), quiver_client::ClientError> {
//! use quiver_client::wire::{CollectionConfig, HnswConfig, Metric, PointInput, SearchRequest};
//! use quiver_client::Client;
//!
//! let client = Client::builder(["http://127.0.0.1:7070"]).connect().await?;
//! let config = CollectionConfig::new(3, Metric::Cosine);
//! client.create_collection("docs", &config).await?;
//! let point = PointInput { id: 1.into(), vector: vec![0.1, 0.2, 0.3], payload: None };
//! client.upsert("docs", vec![point]).await?;
//! let hits = client.search("docs", &SearchRequest::new(vec![0.1, 0.2, 0.3], 5)).await?;
//! # Ok(()) }
//! ```

pub mod balance;
pub mod client;
pub mod filter;
pub mod routes;
pub mod routing;
pub mod schema;
pub mod topology;
pub mod wire;

pub use balance::Policy;
pub use client::{Client, ClientBuilder, ClientError};
