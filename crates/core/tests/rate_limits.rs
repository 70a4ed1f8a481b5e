//! Rules every rate algorithm keeps (docs/design.md §2): units beyond capacity are an error, not a
//! denial; a clock that steps back never panics and never admits extra; durations in answers
//! are never early, also once rounded up to milliseconds.

mod common;

use common::{CASES, Key, gap, period_of, pick_units, rate_limit, start, steps};
use proptest::prelude::*;
use tollgate_core::{
    Align, FixedWindow, Gcra, InsufficientCapacity, Nanos, Period, RateLimit, SlidingWindow,
};

/// Where a sequence starts: at 0, at an epoch instant, or a few periods before `u64::MAX`.
fn anywhere(limit: &RateLimit, selector: u8, r: u64) -> u64 {
    let p = period_of(limit).as_nanos().as_nanos();
    match selector % 3 {
        0 => r % (2 * p),
        1 => 1_700_000_000_000_000_000 + r % 1_000_000_000_000,
        _ => u64::MAX - r % (4 * p),
    }
}

/// The next reported time: usually forward (saturating at `u64::MAX`), one step in four
/// backward by up to two periods (saturating at 0).
fn next_time(now: u64, period: u64, selector: u8, r: u64) -> u64 {
    if selector % 4 == 3 {
        now.saturating_sub(r % (2 * period + 1))
    } else {
        now.saturating_add(gap(period, selector / 4, r))
    }
}

/// Checks admissions against the algorithm's bound in clamped time: each admission is read as
/// happening at the latest admission time so far, so a clock stepping back counts as a clock
/// standing still.
///
/// Clamped to the latest *admission*, not the latest request: a denial leaves the state as it
/// was (a store need not write it back), so no algorithm can know a denied request's time.
/// Clamping to denials too is impossible for any pure sliding window: limit 2, period 10 s,
/// precision >= 2 (sub-buckets <= 5 s). [1 unit at 0 s (admitted); 2 at 19 s (denied); 1 at
/// 5 s; 2 at 20 s] gives the algorithm the same inputs at 5 s and 20 s as the plain sequence
/// [1 at 0 s; 1 at 5 s; 2 at 20 s], where 5 s must admit (1 + 1 <= 2) and 20 s must admit by
/// 25 s (the exact log is free at 20 s; at most one sub-bucket late). Reading the 5 s
/// admission at 19 s, 3 units fall within one period either way. GCRA hits the same wall at
/// the end of time: a request whose `tat` would pass `u64::MAX` is denied without a trace.
#[derive(Default)]
struct Clamped {
    /// Latest admission time.
    latest: u64,
    /// Admitted `(clamped time, units)`.
    log: Vec<(u64, u64)>,
    /// The fixed window model: `(start, units)`.
    window: Option<(u64, u64)>,
}

impl Clamped {
    fn admitted(&mut self, limit: &RateLimit, now: u64, units: u64) -> Result<(), TestCaseError> {
        let p = period_of(limit).as_nanos().as_nanos();
        let t = self.latest.max(now);
        self.latest = t;
        self.log.push((t, units));
        match limit {
            RateLimit::SlidingWindow(sw) => {
                let held: u64 = self
                    .log
                    .iter()
                    .rev()
                    .take_while(|&&(a, _)| u128::from(a) + u128::from(p) > u128::from(t))
                    .map(|&(_, u)| u)
                    .sum();
                prop_assert!(
                    held <= sw.limit(),
                    "{held} units in the period ending at clamped {t}"
                );
            }
            RateLimit::FixedWindow(fw) => {
                let (start, used) = match (fw.align(), self.window) {
                    (Align::FirstUse, Some((s, u)))
                        if u128::from(t) < u128::from(s) + u128::from(p) =>
                    {
                        (s, u)
                    }
                    (Align::FirstUse, _) => (t, 0),
                    (Align::Clock, Some((s, u))) if s == t / p * p => (s, u),
                    (Align::Clock, _) => (t / p * p, 0),
                };
                let used = used + units;
                self.window = Some((start, used));
                prop_assert!(
                    used <= fw.limit(),
                    "{used} units in the window from clamped {start}"
                );
            }
            RateLimit::Gcra(_) | RateLimit::TokenBucket(_) => {
                let (burst, interval) = match limit {
                    RateLimit::Gcra(g) => (g.burst(), g.emission_interval()),
                    RateLimit::TokenBucket(b) => (b.capacity(), b.as_gcra().emission_interval()),
                    _ => unreachable!("matched above"),
                };
                let mut total = 0;
                for &(first, n) in self.log.iter().rev() {
                    total += n;
                    let bound = burst + (t - first) / interval.as_nanos();
                    prop_assert!(
                        total <= bound,
                        "{total} units in clamped [{first}, {t}], bound {bound}"
                    );
                }
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// More units than the limit can ever hold is `InsufficientCapacity` (retrying cannot help),
    /// whatever the state and time; up to capacity is always a decision.
    #[test]
    fn units_beyond_capacity_are_insufficient_capacity_not_a_denial(
        limit in rate_limit(), t0 in start(), steps in steps(), extra in 1u64..=1_000
    ) {
        let cap = limit.capacity();
        let p = period_of(&limit).as_nanos().as_nanos();
        let mut key = Key::new(limit);
        let mut now = t0.as_nanos();
        for (selector, r, u) in steps {
            now += gap(p, selector, r);
            let t = Nanos::from_nanos(now);
            let over = cap + extra;
            let err = limit.decide(key.state.as_ref(), t, common::units(over)).unwrap_err();
            prop_assert_eq!(err, InsufficientCapacity { units: over, capacity: cap });
            prop_assert!(limit.decide(key.state.as_ref(), t, common::units(cap)).is_ok());
            key.decide(t, pick_units(cap, u));
        }
    }

    /// A clock that steps back (randomly, by up to two periods, down to 0) never admits beyond
    /// the algorithm's bound read in clamped time: as if the clock had stood still at the
    /// latest admission.
    ///
    /// Not near `u64::MAX`: there a request whose state cannot be recorded (gcra's `tat` past
    /// `u64`) is denied from a fresh state, which the key then forgets — and a clock stepping
    /// back after a fresh key was forgotten is outside what any kept state can know (see the
    /// next test for the bound near `u64::MAX`).
    #[test]
    fn a_clock_that_steps_back_never_admits_extra(
        limit in rate_limit(), at in (any::<u8>(), any::<u64>()), steps in steps()
    ) {
        let p = period_of(&limit).as_nanos().as_nanos();
        let mut key = Key::new(limit);
        let mut clamped = Clamped::default();
        let mut now = anywhere(&limit, at.0 % 2, at.1);
        for (selector, r, u) in steps {
            now = next_time(now, p, selector, r);
            let n = pick_units(limit.capacity(), u);
            if key.decide(Nanos::from_nanos(now), n).allowed {
                clamped.admitted(&limit, now, n)?;
            }
        }
    }

    /// Up to `u64::MAX` and at it, where instants saturate, nothing is admitted beyond the
    /// algorithm's bound.
    #[test]
    fn never_admits_extra_near_u64_max(
        limit in rate_limit(), from_end in any::<u64>(), steps in steps()
    ) {
        let p = period_of(&limit).as_nanos().as_nanos();
        let mut key = Key::new(limit);
        let mut clamped = Clamped::default();
        let mut now = anywhere(&limit, 2, from_end);
        for (selector, r, u) in steps {
            // Small steps, so that many requests land within a period of the end and at it.
            now = now.saturating_add(gap(p / 4 + 1, selector, r));
            let n = pick_units(limit.capacity(), u);
            if key.decide(Nanos::from_nanos(now), n).allowed {
                clamped.admitted(&limit, now, n)?;
            }
        }
    }

    /// Near 0 and near `u64::MAX`, with steps both ways, every call answers sanely: nothing
    /// panics, counts stay within capacity, and an admission never asks to wait.
    #[test]
    fn answers_stay_sane_near_zero_and_near_u64_max(
        limit in rate_limit(), at in (any::<u8>(), any::<u64>()), steps in steps()
    ) {
        let p = period_of(&limit).as_nanos().as_nanos();
        let cap = limit.capacity();
        let mut key = Key::new(limit);
        let mut now = anywhere(&limit, at.0, at.1);
        for (selector, r, u) in steps {
            now = next_time(now, p, selector, r);
            let t = Nanos::from_nanos(now);
            let n = pick_units(cap, u);
            if matches!(r % 7, 0) {
                key.state = limit.refund(key.state.as_ref(), t, common::units(n));
            } else {
                let d = key.decide(t, n);
                prop_assert!(d.remaining <= cap);
                prop_assert_eq!(d.allowed, d.retry_after == Nanos::ZERO, "{:?}", d);
            }
            let usage = limit.usage(key.state.as_ref(), t);
            prop_assert_eq!(usage.used + usage.remaining, cap, "{:?}", usage);
        }
    }

    /// Durations are rounded up, never early: a denied client that waits `retry_after` — or
    /// its whole milliseconds rounded up — is admitted, and after `reset_after` the key is
    /// back to fresh.
    #[test]
    fn waiting_the_durations_given_is_never_early(
        limit in rate_limit(), t0 in start(), steps in steps()
    ) {
        let p = period_of(&limit).as_nanos().as_nanos();
        let mut key = Key::new(limit);
        let mut now = t0.as_nanos();
        for (selector, r, u) in steps {
            now += gap(p, selector, r);
            let t = Nanos::from_nanos(now);
            let n = pick_units(limit.capacity(), u);
            let d = key.decide(t, n);
            if !d.allowed {
                let ms = Nanos::from_millis(d.retry_after.as_millis_ceil());
                prop_assert!(key.probe(t + d.retry_after, n).allowed, "early by retry_after {:?}", d.retry_after);
                prop_assert!(key.probe(t + ms, n).allowed, "early by retry_after_ms {ms:?}");
            }
            for wait in [d.reset_after, Nanos::from_millis(d.reset_after.as_millis_ceil())] {
                let usage = limit.usage(key.state.as_ref(), t + wait);
                prop_assert_eq!(usage.used, 0, "not fresh {:?} after {:?}", wait, d);
            }
        }
    }
}

/// Deciding `n` units `times` times at `now` on one key: how many were admitted.
fn admitted_at(limit: RateLimit, now: Nanos, times: usize) -> usize {
    let mut key = Key::new(limit);
    (0..times).filter(|_| key.decide(now, 1).allowed).count()
}

/// Regression: gcra compared a saturated `tat + n·T` with a saturated `now + burst·T`; near
/// `u64::MAX` both were `u64::MAX`, so every request passed.
#[test]
fn gcra_admits_at_most_its_burst_near_u64_max() {
    let limit = RateLimit::Gcra(Gcra::new("1/s".parse().unwrap(), 2).unwrap());
    for now in [
        Nanos::MAX,
        Nanos::MAX - Nanos::SECOND,
        Nanos::MAX - Nanos::from_secs(3),
    ] {
        assert!(admitted_at(limit, now, 5) <= 2, "at {now:?}");
    }
    assert_eq!(admitted_at(limit, Nanos::MAX - Nanos::from_secs(3), 5), 2);
}

/// Regression: a window ending past `u64` saturates to `u64::MAX`; at `now == u64::MAX` it
/// read as over, so every request opened a new window and passed.
#[test]
fn fixed_window_keeps_its_window_at_u64_max() {
    for align in [Align::FirstUse, Align::Clock] {
        let limit = RateLimit::FixedWindow(FixedWindow::new(1, Period::SECOND, align).unwrap());
        assert_eq!(admitted_at(limit, Nanos::MAX, 5), 1, "{align:?}");
    }
}

/// Regression: a sliding window whose units count until past `u64` reports `fresh_at ==
/// u64::MAX`, which at `now == u64::MAX` read as fresh, so every request started afresh.
#[test]
fn sliding_window_keeps_its_usage_at_u64_max() {
    let limit = RateLimit::SlidingWindow(SlidingWindow::new(1, Period::SECOND).unwrap());
    assert_eq!(admitted_at(limit, Nanos::MAX, 5), 1);
    let mut key = Key::new(limit);
    assert!(key.decide(Nanos::MAX - Nanos::from_millis(10), 1).allowed);
    let d = key.decide(Nanos::MAX, 1);
    assert!(!d.allowed && d.retry_after > Nanos::ZERO, "{d:?}");
}
