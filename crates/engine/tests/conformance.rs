//! The memory store against the reference, on random operation sequences.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use tollgate::MemoryStore;
use tollgate::testkit::{Config, check_conformance};
use tollgate_core::Nanos;

#[test]
fn memory_store_conforms_to_the_reference() {
    check_conformance(MemoryStore::new, Config::default());
}

#[test]
fn memory_store_conforms_at_microsecond_resolution() {
    // The resolution the Redis store will run at.
    check_conformance(
        MemoryStore::new,
        Config {
            resolution: Nanos::from_micros(1),
            cases: 64,
            ..Config::default()
        },
    );
}
