//! The engine's conformance suite, unchanged, against Redis: every answer must equal the
//! reference's exactly at microsecond resolution.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

mod common;

use tollgate::testkit::{Config, check_conformance};
use tollgate_core::Nanos;

#[test]
fn redis_store_conforms_at_microsecond_resolution() {
    let Some(redis) = common::redis("redis_store_conforms_at_microsecond_resolution") else {
        return;
    };
    let base = redis.store();
    // Each case needs an empty store: a fresh prefix on the same connections.
    check_conformance(
        || {
            base.with_prefix(&common::fresh_prefix())
                .expect("a valid prefix")
        },
        Config {
            resolution: Nanos::from_micros(1),
            // TOLLGATE_REDIS_CASES=20000 for a longer soak.
            cases: std::env::var("TOLLGATE_REDIS_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1024),
            ..Config::default()
        },
    );
}
