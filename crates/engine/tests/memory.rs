//! The memory store keeps only live keys: a million one-shot dynamic keys do not stay resident.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use tollgate::{AcquireEntry, MemoryStore, Store};
use tollgate_core::{Gcra, Nanos, Period, RateLimit, SlidingWindow};

#[test]
fn a_million_one_shot_keys_do_not_stay_resident() {
    let store = MemoryStore::new();
    let limits = [
        RateLimit::Gcra(Gcra::new("10/s".parse().unwrap(), 1).unwrap()),
        RateLimit::SlidingWindow(SlidingWindow::new(5, Period::from_millis(200).unwrap()).unwrap()),
    ];
    let mut now = Nanos::from_secs(1_700_000_000);
    let mut peak = 0;
    let mut key = String::new();
    for i in 0..1_000_000u32 {
        key.clear();
        key.push_str("user:");
        key.push_str(&i.to_string());
        let limit = limits[(i % 2) as usize];
        assert!(
            store
                .acquire(&[AcquireEntry::dynamic(&key, limit, 1)], now)
                .unwrap()
                .allowed
        );
        // 10 µs apart: each key is fresh again within ~205 ms, so ~20 k keys are live at once.
        now = now + Nanos::from_micros(10);
        if i % 50_000 == 0 {
            peak = peak.max(store.len());
        }
    }
    peak = peak.max(store.len());
    // Each shard sweeps when it doubles past its last size, so residency stays within a small
    // multiple of the live set (~20 k), never near the million keys touched.
    assert!(peak < 100_000, "{peak} keys resident at peak");
    store.sweep(now + Nanos::from_secs(1)).unwrap();
    assert!(
        store.is_empty(),
        "every key is fresh a second later and swept"
    );
}
