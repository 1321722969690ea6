//! openraft's own storage conformance suite against the sled log store and the engine-backed
//! state machine.

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use quiver::engine::{Engine, EngineOptions};
use quiver::raft::{LogStore, NodeId, StateMachine, TypeConfig};

/// Builds stores for node `.0`: 1 is a voter in the suite's memberships; 99 is in none of them,
/// so its log store treats itself as a learner and acknowledges appends before they are fsynced.
struct Builder(NodeId);

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = EngineOptions::new(dir.path());
        opts.cache_bytes = 4 << 20;
        let engine = Arc::new(Engine::open(opts).expect("engine"));
        let log = LogStore::open(engine.store().db(), self.0).expect("log store");
        let sm = StateMachine::new(engine).expect("state machine");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("openraft=info")
        .with_test_writer()
        .try_init();
    Suite::test_all(Builder(1)).expect("storage suite, as a voter");
    Suite::test_all(Builder(99)).expect("storage suite, as a learner");
}
