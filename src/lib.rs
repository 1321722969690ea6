//! quiver: a replicated vector store.
//!
//! Writes flow `api → writer → engine → {store, index}`; reads flow `api → engine`.
//! The engine is a deterministic, Raft-free state machine over sled and hnsw_rs; see
//! [`engine`] for its invariants and the README's architecture section for the whole picture.

pub mod api;
pub mod balance;
pub mod client;
pub mod cluster;
pub mod config;
pub mod dataset;
pub mod engine;
pub mod error;
pub mod filter;
pub mod gateway;
pub mod index;
pub mod model;
pub mod node;
pub mod raft;
pub mod store;
pub mod topology;
pub mod writer;

pub use error::{Error, Result};
