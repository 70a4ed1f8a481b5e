//! Shared by the bench binaries: the limits both libraries are given, deterministic key
//! workloads, and key strings built before anything is measured.

// Each bench binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::FakeRelativeClock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use tollgate::core::{Gcra, Period, Rate, RateLimit};

/// `governor`'s keyed limiter on a fake clock, as every bench builds it.
pub type GovernorKeyed = RateLimiter<
    String,
    DashMapStateStore<String>,
    FakeRelativeClock,
    NoOpMiddleware<governor::nanos::Nanos>,
>;

/// The "mostly allowed" limit: 200 000 per millisecond (one unit every 5 ns), burst 1 000.
/// The benches advance time by [`STEP_NS`] = 10 ns per decision, half the rate, so every
/// decision is admitted while the state of a busy key stays live (not fresh).
pub const ALLOW_INTERVAL_NS: u64 = 5;
/// Burst of the "mostly allowed" limit.
pub const ALLOW_BURST: u32 = 1_000;
/// Simulated time per decision.
pub const STEP_NS: u64 = 10;
/// The fake clocks are advanced by `CHUNK · STEP_NS` every `CHUNK` decisions, so the atomic
/// read-modify-write of advancing a fake clock is amortised (and paid equally by both sides).
pub const CHUNK: u64 = 32;

/// `governor`'s spelling of the "mostly allowed" limit.
pub fn governor_allow() -> Quota {
    Quota::with_period(Duration::from_nanos(ALLOW_INTERVAL_NS))
        .expect("a non-zero period")
        .allow_burst(nonzero(ALLOW_BURST))
}

/// `governor`'s spelling of the "mostly denied" limit: one per hour, burst 1.
pub fn governor_deny() -> Quota {
    Quota::per_hour(NonZeroU32::MIN)
}

/// Tollgate's spelling of the "mostly allowed" limit.
pub fn gcra_allow() -> RateLimit {
    let per_ms = 1_000_000 / ALLOW_INTERVAL_NS;
    let rate = Rate::new(per_ms, Period::MIN).expect("a valid rate");
    RateLimit::Gcra(Gcra::new(rate, u64::from(ALLOW_BURST)).expect("a valid gcra"))
}

/// Tollgate's spelling of the "mostly denied" limit.
pub fn gcra_deny() -> RateLimit {
    let rate = Rate::new(1, Period::HOUR).expect("a valid rate");
    RateLimit::Gcra(Gcra::new(rate, 1).expect("a valid gcra"))
}

/// A non-zero `u32`.
pub fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("a non-zero constant")
}

/// `n` distinct key strings, formatted once, before anything is timed.
pub fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user:{i}")).collect()
}

/// SplitMix64: a tiny deterministic generator (no `rand` dependency, same sequence everywhere).
pub struct SplitMix(u64);

impl SplitMix {
    /// Seeded.
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How the benches pick keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dist {
    /// Every key equally likely.
    Uniform,
    /// Zipf with exponent 1: key of rank `k` drawn with probability ∝ `1/k` (with 1 M keys
    /// the hottest gets ~7 % of requests, the top 1 % of keys ~2/3 of them).
    Zipf,
}

impl Dist {
    /// Its name in bench ids.
    pub fn name(self) -> &'static str {
        match self {
            Dist::Uniform => "uniform",
            Dist::Zipf => "zipf",
        }
    }
}

/// Length of a precomputed key-index sequence (a power of two; the benches cycle through it).
pub const SEQ_LEN: usize = 1 << 20;

/// `SEQ_LEN` key indices in `0..n`, drawn from `dist` with a fixed seed.
pub fn sequence(n: usize, dist: Dist, seed: u64) -> Vec<u32> {
    let mut rng = SplitMix::new(seed);
    match dist {
        Dist::Uniform => (0..SEQ_LEN)
            .map(|_| (rng.next_u64() % n as u64) as u32)
            .collect(),
        Dist::Zipf => {
            let mut cdf = Vec::with_capacity(n);
            let mut total = 0.0;
            for rank in 1..=n {
                total += 1.0 / rank as f64;
                cdf.push(total);
            }
            // Ranks are scattered over key indices, so hot keys are not the first inserted.
            let scatter = |rank: usize| (rank as u64 * 0x9E37_79B1 % n as u64) as u32;
            (0..SEQ_LEN)
                .map(|_| {
                    let u = rng.next_f64() * total;
                    let rank = cdf.partition_point(|&c| c < u).min(n - 1);
                    scatter(rank)
                })
                .collect()
        }
    }
}
