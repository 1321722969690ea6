//! quiver: a replicated vector store.
//!
//! Writes flow `api → writer → engine → {store, index}`; reads flow `api → engine`.
//! The engine is a deterministic, Raft-free state machine over sled and hnsw_rs; see
//! [`engine`] for its invariants and the README's architecture section for the whole picture.

pub mod alloc;
pub mod api;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod dataset;
pub mod engine;
pub mod error;
pub mod gateway;
pub mod index;
pub mod model;
pub mod node;
mod priority;
pub mod proxy;
pub mod raft;
pub mod store;
pub mod telemetry;
pub mod writer;

pub use error::{Error, Result};

// The client crate is the one home of the wire types, the outside view of a cluster and the
// read balancing; the server names them by these paths too.
pub use quiver_client::{balance, filter, routes, routing, topology};
