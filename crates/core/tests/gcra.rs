//! `gcra` and its `token_bucket` spelling (docs/design.md §2): emission interval `T = ⌈period/limit⌉`,
//! exactly `burst` units at once from a fresh state, then one per `T`; `retry_after` exact to
//! the nanosecond; `token_bucket(capacity, refill)` is `gcra(refill, burst = capacity)`.

mod common;

use common::{CASES, Key, Step, gap, period, pick_units, start, steps, units};
use proptest::prelude::*;
use tollgate_core::{
    Decision, Gcra, InsufficientCapacity, Nanos, Rate, RateLimit, RateState, TokenBucket,
};

/// Rates from 1 per period up to one unit per nanosecond.
fn rate() -> impl Strategy<Value = Rate> {
    (
        prop_oneof![4 => 1u64..=50, 1 => 51u64..=1_000_000_000],
        period(),
    )
        .prop_map(|(l, p)| Rate::new(l, p).expect("valid rate"))
}

fn gcra() -> impl Strategy<Value = Gcra> {
    (rate(), 1u64..=40).prop_map(|(r, b)| Gcra::new(r, b).expect("tolerance under 20 years"))
}

/// Drives `g` through `steps`, calling `check(key, now, units, decision, log)` after every
/// decision; `log` holds the admitted `(time, units)`.
fn run(
    g: Gcra,
    t0: Nanos,
    steps: &[Step],
    mut check: impl FnMut(&Key, u64, u64, &Decision, &[(u64, u64)]) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    let mut key = Key::new(RateLimit::Gcra(g));
    let mut log = Vec::new();
    let mut now = t0.as_nanos();
    // Gaps on the scale of the tolerance, where refills matter.
    let scale = g.emission_interval().as_nanos() * g.burst();
    for &(selector, r, u) in steps {
        now += gap(scale, selector, r);
        let n = pick_units(g.burst(), u);
        let d = key.decide(Nanos::from_nanos(now), n);
        if d.allowed {
            log.push((now, n));
        }
        check(&key, now, n, &d, &log)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// From a fresh state, `burst` units pass at one instant however they are split into
    /// requests, the next unit at that instant is denied, and `burst + 1` in one request can
    /// never pass.
    #[test]
    fn a_fresh_state_admits_exactly_burst_units_at_once(
        g in gcra(), t0 in start(), splits in prop::collection::vec(any::<u64>(), 40)
    ) {
        let mut key = Key::new(RateLimit::Gcra(g));
        let mut left = g.burst();
        for r in splits.iter().cycle() {
            if left == 0 {
                break;
            }
            let n = 1 + r % left;
            let d = key.decide(t0, n);
            prop_assert!(d.allowed, "{n} of the burst denied with {left} left: {d:?}");
            left -= n;
            prop_assert_eq!(d.remaining, left);
        }
        let d = key.decide(t0, 1);
        prop_assert!(!d.allowed, "unit {} admitted at once", g.burst() + 1);
        let too_many = RateLimit::Gcra(g).decide(None, t0, units(g.burst() + 1));
        prop_assert_eq!(
            too_many.unwrap_err(),
            InsufficientCapacity { units: g.burst() + 1, capacity: g.burst() }
        );
    }

    /// `T = ⌈period/limit⌉`, and once the burst is spent the next unit comes exactly `T` later.
    #[test]
    fn emission_interval_is_period_over_limit_rounded_up(g in gcra(), t0 in start()) {
        let r = g.rate();
        let t = r.period().as_nanos().as_nanos().div_ceil(r.limit());
        prop_assert_eq!(g.emission_interval(), Nanos::from_nanos(t));
        let mut key = Key::new(RateLimit::Gcra(g));
        prop_assert!(key.decide(t0, g.burst()).allowed);
        let next = t0 + Nanos::from_nanos(t);
        prop_assert!(!key.probe(next - Nanos::from_nanos(1), 1).allowed, "a unit before T passed");
        prop_assert!(key.probe(next, 1).allowed, "the unit at T was denied");
    }

    /// A retry at `now + retry_after` passes; one nanosecond earlier it does not.
    #[test]
    fn retry_after_is_exact_to_the_nanosecond(g in gcra(), t0 in start(), steps in steps()) {
        run(g, t0, &steps, |key, now, n, d, _| {
            if !d.allowed {
                let at = Nanos::from_nanos(now) + d.retry_after;
                prop_assert!(d.retry_after > Nanos::ZERO);
                prop_assert!(key.probe(at, n).allowed, "retry at +{:?} denied", d.retry_after);
                prop_assert!(
                    !key.probe(at - Nanos::from_nanos(1), n).allowed,
                    "retry 1ns before +{:?} admitted", d.retry_after
                );
            }
            Ok(())
        })?;
    }

    /// The long-run bound: admissions in any span `[s, s + D]` total at most
    /// `burst + ⌊D / T⌋` units.
    #[test]
    fn admits_at_most_burst_plus_one_unit_per_interval_over_any_span(
        g in gcra(), t0 in start(), steps in steps()
    ) {
        let t = g.emission_interval().as_nanos();
        run(g, t0, &steps, |_, _, _, d, log| {
            if d.allowed {
                let &(last, _) = log.last().expect("just admitted");
                let mut total = 0;
                for &(first, n) in log.iter().rev() {
                    total += n;
                    let bound = g.burst() + (last - first) / t;
                    prop_assert!(
                        total <= bound,
                        "{total} units admitted in [{first}, {last}], bound {bound}"
                    );
                }
            }
            Ok(())
        })?;
    }

    /// `remaining` is exact: that many units pass at the same instant, one more does not.
    #[test]
    fn remaining_is_exactly_what_can_still_be_admitted_now(
        g in gcra(), t0 in start(), steps in steps()
    ) {
        run(g, t0, &steps, |key, now, _, d, _| {
            let now = Nanos::from_nanos(now);
            prop_assert!(d.remaining <= g.burst());
            if d.remaining > 0 {
                prop_assert!(key.probe(now, d.remaining).allowed, "remaining {} denied", d.remaining);
            }
            if d.remaining < g.burst() {
                prop_assert!(!key.probe(now, d.remaining + 1).allowed, "remaining {} + 1 admitted", d.remaining);
            }
            Ok(())
        })?;
    }

    /// One implementation, two spellings: every decision and state match.
    #[test]
    fn token_bucket_decides_exactly_like_gcra_with_burst_equal_to_capacity(
        refill in rate(), capacity in 1u64..=40, t0 in start(), steps in steps()
    ) {
        let g = Gcra::new(refill, capacity).expect("valid gcra");
        let tb = TokenBucket::new(capacity, refill).expect("valid bucket");
        prop_assert_eq!(tb.as_gcra(), &g);
        let mut gk = Key::new(RateLimit::Gcra(g));
        let mut tk = Key::new(RateLimit::TokenBucket(tb));
        let mut now = t0.as_nanos();
        let scale = g.emission_interval().as_nanos() * capacity;
        for (selector, r, u) in steps {
            now += gap(scale, selector, r);
            let n = pick_units(capacity, u);
            let t = Nanos::from_nanos(now);
            prop_assert_eq!(gk.decide(t, n), tk.decide(t, n));
            let inner = |k: &Key| k.state.as_ref().map(|s| s.state.clone());
            prop_assert!(matches!(inner(&tk), Some(RateState::Gcra(_)) | None));
            prop_assert_eq!(inner(&gk), inner(&tk));
            prop_assert_eq!(gk.limit.usage(gk.state.as_ref(), t), tk.limit.usage(tk.state.as_ref(), t));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// `Gcra::decide_in_place` (what the memory store runs for a key whose state was written
    /// under the same limit) answers exactly what `RateLimit::decide` answers, for both
    /// spellings, and leaves the state `decide` returns (unchanged on a denial).
    #[test]
    fn deciding_in_place_is_deciding(
        g in gcra(), t0 in start(), steps in steps(), bucket in any::<bool>()
    ) {
        let limit = if bucket {
            RateLimit::TokenBucket(TokenBucket::new(g.burst(), g.rate()).expect("valid"))
        } else {
            RateLimit::Gcra(g)
        };
        let mut state: Option<tollgate_core::LimitState> = None;
        let mut in_place = tollgate_core::GcraState { tat: Nanos::ZERO };
        let mut now = t0.as_nanos();
        let scale = g.emission_interval().as_nanos() * g.burst();
        for (selector, r, u) in steps {
            // Sometimes step back in time, as a clock may.
            now = if selector % 7 == 0 { now.saturating_sub(r % scale.max(1)) } else { now + gap(scale, selector, r) };
            let n = pick_units(g.burst() + 1, u);
            let t = Nanos::from_nanos(now);
            let units = std::num::NonZeroU32::new(u32::try_from(n).expect("small")).expect("nonzero");
            let expected = limit.decide(state.as_ref(), t, units);
            let got = g.decide_in_place(&mut in_place, t, units);
            match expected {
                Err(e) => prop_assert_eq!(got, Err(e)),
                Ok(out) => {
                    prop_assert_eq!(got, Ok(out.decision));
                    if out.decision.allowed {
                        let Some(RateState::Gcra(s)) = out.state.as_ref().map(|s| s.state.clone()) else {
                            return Err(TestCaseError::fail("an admission leaves a gcra state"));
                        };
                        prop_assert_eq!(in_place, s);
                        state = out.state;
                    }
                }
            }
        }
    }
}
