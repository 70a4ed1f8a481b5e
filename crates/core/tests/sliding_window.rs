//! `sliding_window` (docs/design.md §2): never more than `limit` units in any interval of length
//! `period`, and a denial's `retry_after` is never early and at most one sub-bucket
//! (`⌈period/precision⌉`) late compared with an exact sliding log of the admitted history.

mod common;

use common::{CASES, Key, Step, gap, limit, period, pick_units, precision, start, steps};
use proptest::prelude::*;
use tollgate_core::{Decision, Nanos, RateLimit, SlidingWindow};

/// Admitted `(time, units)`, times nondecreasing.
type Log = Vec<(u64, u64)>;

fn sliding() -> impl Strategy<Value = SlidingWindow> {
    (limit(), period(), precision()).prop_map(|(l, p, n)| {
        SlidingWindow::with_precision(l, p, n).expect("generated parameters are valid")
    })
}

/// Units of the log admitted in `(t - span, t]`.
fn admitted_within(log: &[(u64, u64)], t: u64, span: u64) -> u64 {
    log.iter()
        .rev()
        .take_while(|&&(a, _)| u128::from(a) + u128::from(span) > u128::from(t))
        .map(|&(_, u)| u)
        .sum()
}

/// The exact sliding log's answer: the first `x >= now` at which `units` plus the units admitted
/// in `(x - period, x]` fit in `limit`.
fn exact_instant(log: &[(u64, u64)], now: u64, units: u64, limit: u64, period: u64) -> u128 {
    let (now, p) = (u128::from(now), u128::from(period));
    let live: Vec<(u128, u64)> = log
        .iter()
        .map(|&(a, u)| (u128::from(a), u))
        .filter(|&(a, _)| a + p > now)
        .collect();
    let mut counted: u64 = live.iter().map(|&(_, u)| u).sum();
    if units + counted <= limit {
        return now;
    }
    // Admissions leave the window oldest first, each at its time plus one period.
    for (a, u) in live {
        counted -= u;
        if units + counted <= limit {
            return a + p;
        }
    }
    unreachable!("units <= limit, so an empty window admits them")
}

/// Drives `sw` through `steps` from `t0`, calling `check(key, log, now, units, decision)` after
/// every decision (the log already holds the decision's units if it was an admission).
fn run(
    sw: SlidingWindow,
    t0: Nanos,
    steps: &[Step],
    mut check: impl FnMut(&Key, &Log, u64, u64, &Decision) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    let mut key = Key::new(RateLimit::SlidingWindow(sw));
    let mut log = Log::new();
    let mut now = t0.as_nanos();
    for &(selector, r, u) in steps {
        now += gap(sw.period().as_nanos().as_nanos(), selector, r);
        let n = pick_units(sw.limit(), u);
        let d = key.decide(Nanos::from_nanos(now), n);
        if d.allowed {
            log.push((now, n));
        }
        check(&key, &log, now, n, &d)?;
    }
    Ok(())
}

fn sub_bucket(sw: &SlidingWindow) -> u64 {
    sw.period()
        .as_nanos()
        .as_nanos()
        .div_ceil(u64::from(sw.precision()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// The sliding window's promise: for every admission at `a`, the units admitted in
    /// `(a - period, a]` (the worst interval ending there) are at most `limit`.
    #[test]
    fn never_admits_more_than_limit_in_any_interval_of_one_period(
        sw in sliding(), t0 in start(), steps in steps()
    ) {
        let p = sw.period().as_nanos().as_nanos();
        run(sw, t0, &steps, |_, log, now, _, d| {
            if d.allowed {
                let held = admitted_within(log, now, p);
                prop_assert!(
                    held <= sw.limit(),
                    "{held} units admitted in the period ending at {now}ns, limit {}", sw.limit()
                );
            }
            Ok(())
        })?;
    }

    /// The other side of the bound: the buckets only count admissions from the last period and
    /// one sub-bucket, so a request that fits even counting those is admitted.
    #[test]
    fn admits_whenever_one_period_plus_one_sub_bucket_leaves_room(
        sw in sliding(), t0 in start(), steps in steps()
    ) {
        let span = sw.period().as_nanos().as_nanos() + sub_bucket(&sw);
        run(sw, t0, &steps, |_, log, now, n, d| {
            if !d.allowed {
                let recent = admitted_within(log, now, span);
                prop_assert!(
                    recent + n > sw.limit(),
                    "denied {n} units at {now}ns with only {recent} admitted in the last \
                     period and sub-bucket (limit {})", sw.limit()
                );
            }
            Ok(())
        })?;
    }

    /// `retry_after` against the exact sliding log: never before the exact instant, at most
    /// `⌈period/precision⌉` after it.
    #[test]
    fn retry_after_is_never_early_and_at_most_one_sub_bucket_late(
        sw in sliding(), t0 in start(), steps in steps()
    ) {
        let p = sw.period().as_nanos().as_nanos();
        let late = u128::from(sub_bucket(&sw));
        run(sw, t0, &steps, |_, log, now, n, d| {
            if !d.allowed {
                let exact = exact_instant(log, now, n, sw.limit(), p);
                let retry_at = u128::from(now) + u128::from(d.retry_after.as_nanos());
                prop_assert!(retry_at >= exact, "retry at {retry_at} is before the exact {exact}");
                prop_assert!(
                    retry_at <= exact + late,
                    "retry at {retry_at} is more than {late}ns after the exact {exact}"
                );
            }
            Ok(())
        })?;
    }

    /// A client that waits exactly `retry_after` (nothing else happening) is admitted.
    #[test]
    fn a_retry_at_exactly_retry_after_is_admitted(
        sw in sliding(), t0 in start(), steps in steps()
    ) {
        run(sw, t0, &steps, |key, _, now, n, d| {
            if !d.allowed {
                prop_assert!(d.retry_after > Nanos::ZERO, "a denial must ask to wait");
                let retry = key.probe(Nanos::from_nanos(now) + d.retry_after, n);
                prop_assert!(retry.allowed, "retry after {:?} denied: {retry:?}", d.retry_after);
            } else {
                prop_assert_eq!(d.retry_after, Nanos::ZERO);
            }
            Ok(())
        })?;
    }

    /// `remaining` is exact: that many units are admissible at the same instant, one more is not.
    #[test]
    fn remaining_is_exactly_what_can_still_be_admitted_now(
        sw in sliding(), t0 in start(), steps in steps()
    ) {
        run(sw, t0, &steps, |key, _, now, _, d| {
            let now = Nanos::from_nanos(now);
            prop_assert!(d.remaining <= sw.limit());
            if d.remaining > 0 {
                prop_assert!(key.probe(now, d.remaining).allowed, "remaining {} denied", d.remaining);
            }
            if d.remaining < sw.limit() {
                prop_assert!(!key.probe(now, d.remaining + 1).allowed, "remaining {} + 1 admitted", d.remaining);
            }
            Ok(())
        })?;
    }
}
