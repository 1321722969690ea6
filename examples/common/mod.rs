//! Code shared by the examples (not an example itself: cargo builds only `examples/*.rs` and
//! `examples/*/main.rs`).

pub mod lag;
