//! Runs the shared storage conformance suite against every backend.

kvcore::conformance_tests!(memory, kvcore::storage::MemoryStorage::new);
