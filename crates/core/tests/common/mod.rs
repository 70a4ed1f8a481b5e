//! Strategies and drivers shared by the property tests.
//!
//! Every test binary uses a different subset of these helpers, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::num::NonZeroU32;

use proptest::prelude::*;
use tollgate_core::{
    Align, Decision, FixedWindow, Gcra, LimitState, Nanos, Period, Rate, RateLimit, SlidingWindow,
    TokenBucket,
};

/// Cases per property: modest, so the whole suite stays fast in debug builds on two cores.
pub const CASES: u32 = 256;
/// The longest arrival sequence a property drives.
pub const MAX_OPS: usize = 200;

/// `n` as the `units` of a request.
pub fn units(n: u64) -> NonZeroU32 {
    NonZeroU32::new(u32::try_from(n).expect("test units fit in u32")).expect("test units are >= 1")
}

/// Periods from 1 ms to 10 s: whole milliseconds, or odd nanosecond counts (periods that do
/// not divide evenly into sub-buckets or emission intervals).
pub fn period() -> impl Strategy<Value = Period> {
    prop_oneof![
        (1u64..=10_000).prop_map(|ms| Period::from_millis(ms).expect("1ms..=10s is in range")),
        (1_000_000u64..=10_000_000_000)
            .prop_map(|ns| Period::from_nanos(Nanos::from_nanos(ns)).expect("in range")),
    ]
}

/// Limits, mostly small so that sequences hit the limit often.
pub fn limit() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 1u64..=12, 1 => 13u64..=1_000]
}

/// Sliding-window precisions, including 1 (one bucket) and odd counts.
pub fn precision() -> impl Strategy<Value = u32> {
    prop_oneof![1u32..=7, Just(60), 1u32..=3_600]
}

/// Where a sequence starts: near 0, or at realistic epoch instants.
pub fn start() -> impl Strategy<Value = Nanos> {
    prop_oneof![
        (0u64..=1_000_000_000).prop_map(Nanos::from_nanos),
        (1_600_000_000_000_000_000u64..=1_900_000_000_000_000_000).prop_map(Nanos::from_nanos),
    ]
}

/// One arrival: (gap selector, gap randomness, units randomness).
pub type Step = (u8, u64, u64);

/// Arrival sequences of up to [`MAX_OPS`] steps.
pub fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec((any::<u8>(), any::<u64>(), any::<u64>()), 1..MAX_OPS)
}

/// A nonnegative gap, scaled to `scale` nanoseconds (a period) so that sequences hit every
/// regime: simultaneous arrivals, nanosecond nudges (bucket edges), sub-period gaps and gaps
/// beyond a period.
pub fn gap(scale: u64, selector: u8, r: u64) -> u64 {
    let p = scale;
    match selector % 6 {
        0 => 0,
        1 => r % 3,
        2 => r % (p / 16 + 1),
        3 => r % (p / 2 + 1),
        4 => r % (p + 2),
        _ => r % (3 * p),
    }
}

/// Units in `1..=capacity`, biased toward small requests.
pub fn pick_units(capacity: u64, r: u64) -> u64 {
    if matches!(r % 2, 0) {
        1 + (r / 2) % capacity.min(3)
    } else {
        1 + (r / 2) % capacity
    }
}

/// Any rate limit with small-to-moderate parameters.
pub fn rate_limit() -> impl Strategy<Value = RateLimit> {
    prop_oneof![
        (limit(), period(), precision()).prop_map(|(l, p, n)| RateLimit::SlidingWindow(
            SlidingWindow::with_precision(l, p, n).expect("valid sliding window")
        )),
        (limit(), period(), any::<bool>()).prop_map(|(l, p, clock)| RateLimit::FixedWindow(
            FixedWindow::new(l, p, if clock { Align::Clock } else { Align::FirstUse })
                .expect("valid fixed window")
        )),
        (limit(), period(), 1u64..=40).prop_map(|(l, p, b)| RateLimit::Gcra(
            Gcra::new(Rate::new(l, p).expect("valid rate"), b).expect("valid gcra")
        )),
        (limit(), period(), 1u64..=40).prop_map(|(l, p, c)| RateLimit::TokenBucket(
            TokenBucket::new(c, Rate::new(l, p).expect("valid rate")).expect("valid bucket")
        )),
    ]
}

/// The period a rate limit is defined over.
pub fn period_of(limit: &RateLimit) -> Period {
    match limit {
        RateLimit::SlidingWindow(l) => l.period(),
        RateLimit::FixedWindow(l) => l.period(),
        RateLimit::Gcra(l) => l.rate().period(),
        RateLimit::TokenBucket(l) => l.refill().period(),
    }
}

/// One key under one limit: decides and stores the state as a store would.
#[derive(Debug, Clone)]
pub struct Key {
    pub limit: RateLimit,
    pub state: Option<LimitState>,
}

impl Key {
    pub fn new(limit: RateLimit) -> Key {
        Key { limit, state: None }
    }

    /// Decides `n` units at `now` and stores the resulting state.
    pub fn decide(&mut self, now: Nanos, n: u64) -> Decision {
        let out = self
            .limit
            .decide(self.state.as_ref(), now, units(n))
            .expect("units within capacity");
        self.state = out.state;
        out.decision
    }

    /// What deciding would answer, without storing anything.
    pub fn probe(&self, now: Nanos, n: u64) -> Decision {
        self.limit
            .decide(self.state.as_ref(), now, units(n))
            .expect("units within capacity")
            .decision
    }
}
