//! Many threads, shared and overlapping keys, one million decisions: zero over-admission, no
//! partial consumption, no deadlock.
//!
//! Time is frozen within each phase, so a key can admit at most what it had remaining when
//! the phase began, and its usage afterwards must equal its usage before plus exactly the
//! units admitted to it (a lost update or a partial multi-key acquire would break equality).

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tollgate::{AcquireEntry, FakeClock, Limiter, MemoryStore, StateView};
use tollgate_core::{
    Align, FixedWindow, Gcra, Nanos, Period, RateLimit, SlidingWindow, TokenBucket,
};

const THREADS: usize = 16;
const PHASES: usize = 10;
const PER_THREAD_PER_PHASE: usize = 1_000_000 / (THREADS * PHASES);

fn limits() -> Vec<(String, RateLimit)> {
    let p = |s: &str| Period::parse(s).unwrap();
    let mut out = Vec::new();
    for i in 0..3 {
        out.push((
            format!("gcra-{i}"),
            RateLimit::Gcra(Gcra::new("500/s".parse().unwrap(), 200).unwrap()),
        ));
        out.push((
            format!("sliding-{i}"),
            RateLimit::SlidingWindow(SlidingWindow::new(300, p("1s")).unwrap()),
        ));
        out.push((
            format!("fixed-{i}"),
            RateLimit::FixedWindow(FixedWindow::new(250, p("700ms"), Align::Clock).unwrap()),
        ));
        out.push((
            format!("bucket-{i}"),
            RateLimit::TokenBucket(TokenBucket::new(150, "300/s".parse().unwrap()).unwrap()),
        ));
    }
    out
}

/// A small deterministic generator (xorshift), so every run exercises the same interleaving
/// inputs and failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn used(limiter: &Limiter, key: &str) -> u64 {
    match limiter.get(key).unwrap().unwrap().state {
        StateView::Rate(u) => u.used,
        other => panic!("{other:?}"),
    }
}

#[test]
fn sixteen_threads_one_million_decisions_never_over_admit() {
    let clock = FakeClock::new(Nanos::from_secs(1_700_000_000));
    let limiter = Limiter::with_store(MemoryStore::new(), clock.clone());
    let limits = Arc::new(limits());
    for (key, limit) in limits.iter() {
        limiter.upsert(key, *limit).unwrap();
    }
    let mut total_decisions = 0;
    for phase in 0..PHASES {
        let remaining_before: Vec<u64> = limits
            .iter()
            .map(|(k, _)| match limiter.get(k).unwrap().unwrap().state {
                StateView::Rate(u) => u.remaining,
                other => panic!("{other:?}"),
            })
            .collect();
        let used_before: Vec<u64> = limits.iter().map(|(k, _)| used(&limiter, k)).collect();
        let admitted: Arc<Vec<AtomicU64>> =
            Arc::new(limits.iter().map(|_| AtomicU64::new(0)).collect());
        let decisions = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (limiter, limits, admitted, decisions) = (
                    limiter.clone(),
                    limits.clone(),
                    admitted.clone(),
                    decisions.clone(),
                );
                std::thread::spawn(move || {
                    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((phase * THREADS + t) as u64 + 1));
                    for _ in 0..PER_THREAD_PER_PHASE {
                        // 1 to 4 distinct keys in random order (overlapping sets, any order).
                        let n = 1 + rng.below(4);
                        let mut picked: Vec<usize> = Vec::with_capacity(n);
                        while picked.len() < n {
                            let k = rng.below(limits.len());
                            if !picked.contains(&k) {
                                picked.push(k);
                            }
                        }
                        let units: Vec<u32> =
                            picked.iter().map(|_| 1 + rng.below(3) as u32).collect();
                        let entries: Vec<AcquireEntry<'_>> = picked
                            .iter()
                            .zip(&units)
                            .map(|(&k, &u)| AcquireEntry::new(&limits[k].0, u))
                            .collect();
                        let r = limiter.try_acquire(&entries).unwrap();
                        decisions.fetch_add(1, Ordering::Relaxed);
                        if r.allowed {
                            for (&k, &u) in picked.iter().zip(&units) {
                                admitted[k].fetch_add(u64::from(u), Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("worker thread");
        }
        total_decisions += decisions.load(Ordering::Relaxed);
        for (i, (key, _)) in limits.iter().enumerate() {
            let got = admitted[i].load(Ordering::Relaxed);
            assert!(
                got <= remaining_before[i],
                "phase {phase}: {key} admitted {got} with only {} remaining",
                remaining_before[i]
            );
            assert_eq!(
                used(&limiter, key),
                used_before[i] + got,
                "phase {phase}: {key} usage is not exact"
            );
        }
        // Every key was contended: the demand far exceeds capacity, so each filled up.
        assert!(admitted.iter().any(|a| a.load(Ordering::Relaxed) > 0));
        clock.advance(Nanos::from_millis(137 * (phase as u64 % 4 + 1)));
    }
    assert_eq!(total_decisions, 1_000_000);
}
