//! Live heap bytes per resident key: tollgate's `MemoryStore` with 1 M dynamic `gcra` keys vs
//! `governor`'s keyed limiter (DashMap) with 1 M `String` keys (BENCHMARKS.md).
//!
//! A counting global allocator records every allocation; "live" is bytes allocated minus bytes
//! freed (reallocations included) between the two snapshots around building one limiter. The
//! key strings the caller holds are allocated before the first snapshot; each library's own
//! copy of every key is counted. Bytes are as requested from the allocator (its own rounding
//! and headers are not included, equally for both).
//!
//! `cargo bench -p tollgate --bench memory`

use std::time::Instant;

use governor::RateLimiter;
use governor::clock::FakeRelativeClock;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tollgate::core::{Align, FixedWindow, Nanos, Period, RateLimit, SlidingWindow};
use tollgate::{AcquireEntry, MemoryStore, Store};

mod common;
use common::{GovernorKeyed, gcra_deny, governor_deny, keys};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const KEYS: usize = 1_000_000;

/// Bytes live now that were not live when `region` was opened.
fn live_since(region: &Region<'_, std::alloc::System>) -> i128 {
    let s = region.change();
    s.bytes_allocated as i128 - s.bytes_deallocated as i128 + s.bytes_reallocated as i128
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument selects nothing here.
    let keys = keys(KEYS);
    let key_bytes: usize = keys.iter().map(String::len).sum();
    println!(
        "{KEYS} keys, {:.1} bytes of key text per key on average",
        key_bytes as f64 / KEYS as f64
    );

    // One unit each from a 1/h limit: every key stays resident (its state is far from fresh).
    let tollgate = tollgate_bytes("tollgate MemoryStore", &keys, gcra_deny());
    // The same for the other algorithms, which the store keeps in a box beside the slot
    // (for information: governor has no equivalent).
    let fixed = FixedWindow::new(1, Period::HOUR, Align::FirstUse).expect("a valid window");
    tollgate_bytes(
        "tollgate MemoryStore, fixed_window keys",
        &keys,
        RateLimit::FixedWindow(fixed),
    );
    let sliding = SlidingWindow::new(1, Period::HOUR).expect("a valid window");
    tollgate_bytes(
        "tollgate MemoryStore, sliding_window keys",
        &keys,
        RateLimit::SlidingWindow(sliding),
    );

    let region = Region::new(GLOBAL);
    let started = Instant::now();
    let limiter: GovernorKeyed =
        RateLimiter::dashmap_with_clock(governor_deny(), FakeRelativeClock::default());
    for key in &keys {
        assert!(limiter.check_key(key).is_ok(), "a fresh key admits one");
    }
    let governor = live_since(&region);
    assert_eq!(limiter.len(), KEYS, "every key is resident");
    report("governor keyed (DashMap)", governor, started);
    drop(limiter);

    println!(
        "ratio tollgate/governor: {:.2}",
        tollgate as f64 / governor as f64
    );
}

/// Live bytes of a `MemoryStore` holding one dynamic key per `keys`, each with one unit taken
/// from `limit`.
fn tollgate_bytes(name: &str, keys: &[String], limit: RateLimit) -> i128 {
    let now = Nanos::from_secs(1_700_000_000);
    let region = Region::new(GLOBAL);
    let started = Instant::now();
    let store = MemoryStore::new();
    for key in keys {
        let answer = store
            .acquire(&[AcquireEntry::dynamic(key, limit, 1)], now)
            .expect("a valid request");
        assert!(answer.allowed, "a fresh key admits one unit");
    }
    let live = live_since(&region);
    assert_eq!(store.len(), KEYS, "every key is resident");
    report(name, live, started);
    live
}

fn report(name: &str, live: i128, started: Instant) {
    println!(
        "{name}: {live} live bytes for {KEYS} keys = {:.1} bytes/key (built in {:.2?})",
        live as f64 / KEYS as f64,
        started.elapsed()
    );
}
