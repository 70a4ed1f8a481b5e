//! Many concurrent callers on shared keys with multi-key acquires, pipelined over the store's
//! one connection from several runtime threads: zero over-admission, and the store's own
//! accounting equals what was admitted (no partial or lost writes).

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tollgate::{AcquireEntry, AsyncStore, StateView};
use tollgate_core::{
    Align, FixedWindow, Gcra, Limit, Nanos, Period, RateLimit, SlidingWindow, TokenBucket,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_threads_never_over_admit_across_shared_multi_key_requests() {
    let Some(redis) =
        common::redis("eight_threads_never_over_admit_across_shared_multi_key_requests")
    else {
        return;
    };
    let store = redis.store();
    // Time stands still: nothing refills, so every unit admitted stays counted.
    let now = Nanos::from_secs(1_700_000_000);
    let hour = Period::HOUR;
    let statics: [(&str, RateLimit); 3] = [
        (
            "a",
            RateLimit::SlidingWindow(SlidingWindow::new(50, hour).unwrap()),
        ),
        (
            "b",
            RateLimit::Gcra(Gcra::new("40/h".parse().unwrap(), 40).unwrap()),
        ),
        (
            "c",
            RateLimit::FixedWindow(FixedWindow::new(60, hour, Align::Clock).unwrap()),
        ),
    ];
    for (key, limit) in statics {
        store.put_limit(key, Limit::Rate(limit), now).await.unwrap();
    }
    let user = RateLimit::TokenBucket(TokenBucket::new(30, "30/h".parse().unwrap()).unwrap());
    let capacity = [50u64, 40, 60, 30];
    let admitted: Arc<[AtomicU64; 4]> = Arc::default();

    let mut callers = tokio::task::JoinSet::new();
    {
        for t in 0..8u64 {
            let store = store.clone();
            let admitted = Arc::clone(&admitted);
            callers.spawn(async move {
                let mut x = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                for _ in 0..150 {
                    // xorshift: a different, repeatable mix of keys per thread.
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let units = 1 + (x % 2) as u32;
                    let mut picked: Vec<usize> =
                        (0..4).filter(|i| (x >> (8 + i)) & 1 == 1).collect();
                    if picked.len() < 2 {
                        picked = vec![(x % 4) as usize, ((x >> 3) % 4) as usize];
                    }
                    let entries: Vec<AcquireEntry<'_>> = picked
                        .iter()
                        .map(|&i| match i {
                            0 => AcquireEntry::new("a", units),
                            1 => AcquireEntry::new("b", units),
                            2 => AcquireEntry::new("c", units),
                            _ => AcquireEntry::dynamic("u", user, units),
                        })
                        .collect();
                    let got = store.acquire(&entries, now).await.unwrap();
                    if got.allowed {
                        for &i in &picked {
                            admitted[i].fetch_add(u64::from(units), Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    }
    while let Some(done) = callers.join_next().await {
        done.unwrap();
    }

    let admitted: Vec<u64> = admitted.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    for (i, (&got, &cap)) in admitted.iter().zip(&capacity).enumerate() {
        assert!(got <= cap, "key {i}: {got} units admitted, limit {cap}");
    }
    // The store's own usage equals what callers were told they got.
    for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
        let info = store.get_limit(key, now).await.unwrap().unwrap();
        let StateView::Rate(usage) = info.state else {
            panic!("{key} is a rate limit")
        };
        assert_eq!(usage.used, admitted[i], "{key}");
    }
    let listed = store.list_limits(now).await.unwrap();
    let u = listed.iter().find(|l| l.key == "u").expect("u has state");
    let StateView::Rate(usage) = u.state else {
        panic!("u is a rate limit")
    };
    assert_eq!(usage.used, admitted[3], "u");
    // The shared keys did fill up: the test exercised contention, not an idle store.
    assert!(
        admitted.iter().zip(&capacity).any(|(g, c)| c - g <= 2),
        "{admitted:?}"
    );
}
