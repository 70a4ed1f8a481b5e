//! `fixed_window` (docs/design.md §2): never more than `limit` units per window, windows opening at the
//! first use after the previous one ended (`first_use`) or on clock multiples of `period`
//! (`clock`); a denial's `retry_after` is exactly when the next window opens.

mod common;

use common::{CASES, Key, Step, gap, limit, period, pick_units, start, steps};
use proptest::prelude::*;
use tollgate_core::{Align, Decision, FixedWindow, Nanos, RateLimit};

fn fixed(align: Align) -> impl Strategy<Value = FixedWindow> {
    (limit(), period()).prop_map(move |(l, p)| FixedWindow::new(l, p, align).expect("valid"))
}

fn any_fixed() -> impl Strategy<Value = FixedWindow> {
    prop_oneof![fixed(Align::FirstUse), fixed(Align::Clock)]
}

/// Drives `fw` through `steps`, calling `check(key, now, units, decision)` after every decision.
fn run(
    fw: FixedWindow,
    t0: Nanos,
    steps: &[Step],
    mut check: impl FnMut(&Key, u64, u64, &Decision) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    let mut key = Key::new(RateLimit::FixedWindow(fw));
    let mut now = t0.as_nanos();
    for &(selector, r, u) in steps {
        now += gap(fw.period().as_nanos().as_nanos(), selector, r);
        let n = pick_units(fw.limit(), u);
        let d = key.decide(Nanos::from_nanos(now), n);
        check(&key, now, n, &d)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// With `first_use`, a window `[t, t + period)` opens at the first request `t` at or after
    /// the previous window's end; it admits at most `limit` units, and its first request passes.
    #[test]
    fn first_use_windows_never_admit_more_than_limit(
        fw in fixed(Align::FirstUse), t0 in start(), steps in steps()
    ) {
        let p = fw.period().as_nanos().as_nanos();
        let (mut end, mut used) = (0u64, 0u64);
        run(fw, t0, &steps, |_, now, n, d| {
            if now >= end {
                (end, used) = (now + p, 0);
                prop_assert!(d.allowed, "the first request of a window was denied");
            }
            prop_assert_eq!(d.reset_after, Nanos::from_nanos(end - now), "not the window opened at first use");
            if d.allowed {
                used += n;
                prop_assert!(used <= fw.limit(), "{used} units in window ending {end}, limit {}", fw.limit());
            }
            Ok(())
        })?;
    }

    /// With `clock`, windows are `[k·period, (k+1)·period)`: each admits at most `limit` units,
    /// and a window's first request passes.
    #[test]
    fn clock_windows_never_admit_more_than_limit(
        fw in fixed(Align::Clock), t0 in start(), steps in steps()
    ) {
        let p = fw.period().as_nanos().as_nanos();
        let (mut window, mut used) = (None, 0u64);
        run(fw, t0, &steps, |_, now, n, d| {
            let k = now / p;
            if window != Some(k) {
                (window, used) = (Some(k), 0);
                prop_assert!(d.allowed, "the first request of window {k} was denied");
            }
            prop_assert_eq!(d.reset_after, Nanos::from_nanos((k + 1) * p - now), "not the clock window");
            if d.allowed {
                used += n;
                prop_assert!(used <= fw.limit(), "{used} units in window {k}, limit {}", fw.limit());
            }
            Ok(())
        })?;
    }

    /// A denial's `retry_after` is exact: the retry at that instant passes, a nanosecond earlier
    /// it is still the full window.
    #[test]
    fn retry_after_of_a_denial_is_exact(fw in any_fixed(), t0 in start(), steps in steps()) {
        run(fw, t0, &steps, |key, now, n, d| {
            if !d.allowed {
                let at = Nanos::from_nanos(now) + d.retry_after;
                prop_assert!(d.retry_after > Nanos::ZERO);
                prop_assert!(key.probe(at, n).allowed, "retry at +{:?} denied", d.retry_after);
                prop_assert!(!key.probe(at - Nanos::from_nanos(1), n).allowed, "retry 1ns early admitted");
            }
            Ok(())
        })?;
    }

    /// `remaining` is exact: that many units pass at the same instant, one more does not.
    #[test]
    fn remaining_is_exactly_what_can_still_be_admitted_now(
        fw in any_fixed(), t0 in start(), steps in steps()
    ) {
        run(fw, t0, &steps, |key, now, _, d| {
            let now = Nanos::from_nanos(now);
            prop_assert!(d.remaining <= fw.limit());
            if d.remaining > 0 {
                prop_assert!(key.probe(now, d.remaining).allowed, "remaining {} denied", d.remaining);
            }
            if d.remaining < fw.limit() {
                prop_assert!(!key.probe(now, d.remaining + 1).allowed, "remaining {} + 1 admitted", d.remaining);
            }
            Ok(())
        })?;
    }
}
