//! Changing a limit (docs/design.md §2): new parameters keep the usage, a lowered limit applies at once
//! and so does a raised one; a change of algorithm starts conservatively, never with more room
//! than the old state had left.

mod common;

use common::{
    CASES, Key, Step, gap, limit, period, period_of, pick_units, precision, rate_limit, start,
    steps,
};
use proptest::prelude::*;
use tollgate_core::{
    Align, FixedWindow, Gcra, Nanos, Period, Rate, RateLimit, SlidingWindow, TokenBucket,
};

fn sliding() -> impl Strategy<Value = RateLimit> {
    (limit(), period(), precision()).prop_map(|(l, p, n)| {
        RateLimit::SlidingWindow(SlidingWindow::with_precision(l, p, n).expect("valid"))
    })
}

fn fixed() -> impl Strategy<Value = RateLimit> {
    (limit(), period(), any::<bool>()).prop_map(|(l, p, clock)| {
        let align = if clock { Align::Clock } else { Align::FirstUse };
        RateLimit::FixedWindow(FixedWindow::new(l, p, align).expect("valid"))
    })
}

/// `gcra` or `token_bucket`: one state machine, so switching between them is a parameter change.
fn gcra() -> impl Strategy<Value = RateLimit> {
    (limit(), period(), 1u64..=40, any::<bool>()).prop_map(|(l, p, b, bucket)| {
        let rate = Rate::new(l, p).expect("valid rate");
        if bucket {
            RateLimit::TokenBucket(TokenBucket::new(b, rate).expect("valid"))
        } else {
            RateLimit::Gcra(Gcra::new(rate, b).expect("valid"))
        }
    })
}

/// Two limits of the same algorithm.
fn same_algorithm() -> impl Strategy<Value = (RateLimit, RateLimit)> {
    prop_oneof![(sliding(), sliding()), (fixed(), fixed()), (gcra(), gcra())]
}

/// The algorithm family: `gcra` and `token_bucket` are one.
fn family(l: &RateLimit) -> u8 {
    match l {
        RateLimit::SlidingWindow(_) => 0,
        RateLimit::FixedWindow(_) => 1,
        RateLimit::Gcra(_) | RateLimit::TokenBucket(_) => 2,
    }
}

/// Runs `steps` on `key` from `t0`, returning the last time and the admitted `(time, units)`.
fn history(key: &mut Key, t0: Nanos, steps: &[Step]) -> (u64, Vec<(u64, u64)>) {
    let p = period_of(&key.limit).as_nanos().as_nanos();
    let mut now = t0.as_nanos();
    let mut log = Vec::new();
    for &(selector, r, u) in steps {
        now += gap(p, selector, r);
        let n = pick_units(key.limit.capacity(), u);
        if key.decide(Nanos::from_nanos(now), n).allowed {
            log.push((now, n));
        }
    }
    (now, log)
}

/// Consumes `used` units (in requests of up to `chunk`) at `t` from a fresh state.
fn consume(limit: RateLimit, t: Nanos, used: u64, chunk: u64) -> Key {
    let mut key = Key::new(limit);
    let mut left = used;
    while left > 0 {
        let n = left.min(chunk);
        assert!(
            key.decide(t, n).allowed,
            "consuming within capacity from fresh"
        );
        left -= n;
    }
    key
}

/// Units admitted in `(t - span, t]`.
fn admitted_within(log: &[(u64, u64)], t: u64, span: u64) -> u64 {
    log.iter()
        .filter(|&&(a, _)| a <= t && u128::from(a) + u128::from(span) > u128::from(t))
        .map(|&(_, u)| u)
        .sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Units consumed under the old parameters are still used under the new ones: all of them
    /// for windows; for gcra all that the new burst can hold.
    #[test]
    fn changing_parameters_keeps_the_units_used(
        (l1, l2) in same_algorithm(), t0 in start(), used in any::<u64>(), chunk in any::<u64>()
    ) {
        let used = 1 + used % l1.capacity();
        let key = consume(l1, t0, used, 1 + chunk % l1.capacity());
        let u = l2.usage(key.state.as_ref(), t0);
        let kept = match l2 {
            RateLimit::Gcra(_) | RateLimit::TokenBucket(_) => used.min(l2.capacity()),
            _ => used,
        };
        prop_assert_eq!(u.used, kept, "{:?} -> {:?}", l1, l2);
    }

    /// A lowered limit applies at once: a request the kept usage leaves no room for under the
    /// new limit is denied immediately.
    #[test]
    fn a_lowered_limit_applies_at_once(
        (l1, l2) in same_algorithm(), t0 in start(), used in any::<u64>(), ask in any::<u64>()
    ) {
        prop_assume!(l2.capacity() < l1.capacity());
        let used = 1 + used % l1.capacity();
        let key = consume(l1, t0, used, l1.capacity());
        let ask = 1 + ask % l2.capacity();
        prop_assume!(used + ask > l2.capacity());
        let out = l2.decide(key.state.as_ref(), t0, common::units(ask)).expect("within capacity");
        prop_assert!(!out.decision.allowed, "{ask} admitted after {used} used: {:?} -> {:?}", l1, l2);
    }

    /// A raised limit applies at once: the extra room is there immediately, with no waiting for
    /// a refill.
    #[test]
    fn a_raised_limit_applies_at_once(
        (l1, l2) in same_algorithm(), t0 in start(), used in any::<u64>(), ask in any::<u64>()
    ) {
        prop_assume!(l2.capacity() > l1.capacity());
        let used = 1 + used % l1.capacity();
        let key = consume(l1, t0, used, l1.capacity());
        let ask = 1 + ask % (l2.capacity() - used);
        let out = l2.decide(key.state.as_ref(), t0, common::units(ask)).expect("within capacity");
        prop_assert!(out.decision.allowed, "{ask} denied after {used} used: {:?} -> {:?}", l1, l2);
        prop_assert_eq!(out.decision.remaining, l2.capacity() - used - ask);
    }

    /// After any history, gcra parameter changes keep the units outstanding (up to the new
    /// burst).
    #[test]
    fn gcra_change_keeps_the_units_outstanding(
        l1 in gcra(), l2 in gcra(), t0 in start(), steps in steps(), wait in any::<u64>()
    ) {
        let mut key = Key::new(l1);
        let (last, _) = history(&mut key, t0, &steps);
        let now = Nanos::from_nanos(last + wait % period_of(&l1).as_nanos().as_nanos());
        let before = l1.usage(key.state.as_ref(), now).used;
        let after = l2.usage(key.state.as_ref(), now).used;
        prop_assert_eq!(after, before.min(l2.capacity()));
    }

    /// After any history, a fixed window's change keeps the running window: its usage and end.
    #[test]
    fn fixed_window_change_keeps_the_running_window(
        l1 in fixed(), l2 in fixed(), t0 in start(), steps in steps(), wait in any::<u64>()
    ) {
        let mut key = Key::new(l1);
        let (last, _) = history(&mut key, t0, &steps);
        let now = Nanos::from_nanos(last + wait % period_of(&l1).as_nanos().as_nanos());
        let (before, after) = (l1.usage(key.state.as_ref(), now), l2.usage(key.state.as_ref(), now));
        prop_assert_eq!((after.used, after.reset_after), (before.used, before.reset_after));
    }

    /// After any history, a sliding window's change never forgets units that both the old
    /// period and the new one still cover, never invents usage, and keeps all of it when the
    /// period does not shrink. (Units the old limit has already let go are gone: the state is
    /// fresh without them and a store may have forgotten it.)
    #[test]
    fn sliding_window_change_never_forgets_usage_its_new_period_covers(
        l1 in sliding(), l2 in sliding(), t0 in start(), steps in steps(), wait in any::<u64>()
    ) {
        let mut key = Key::new(l1);
        let (last, log) = history(&mut key, t0, &steps);
        let now = last + wait % period_of(&l1).as_nanos().as_nanos();
        let (p1, p2) = (period_of(&l1).as_nanos().as_nanos(), period_of(&l2).as_nanos().as_nanos());
        let t = Nanos::from_nanos(now);
        let before = l1.usage(key.state.as_ref(), t).used;
        let after = l2.usage(key.state.as_ref(), t).used;
        let covered = admitted_within(&log, now, p1.min(p2));
        prop_assert!(after >= covered, "{after} used, but {covered} admitted within the new period");
        prop_assert!(after <= before, "{after} used after the change, {before} before");
        if p2 >= p1 {
            prop_assert_eq!(after, before, "a period that does not shrink keeps every unit");
        }
    }

    /// After a sliding window's change, units admitted before it are gone within the new
    /// period and one new sub-bucket: the new rate applies at once, it does not wait for the
    /// old buckets to drain.
    #[test]
    fn sliding_window_change_lets_old_units_go_within_the_new_period(
        l1 in sliding(), l2 in sliding(), t0 in start(), steps in steps(), wait in any::<u64>()
    ) {
        let mut key = Key::new(l1);
        let (last, _) = history(&mut key, t0, &steps);
        let now = Nanos::from_nanos(last + wait % period_of(&l1).as_nanos().as_nanos());
        let RateLimit::SlidingWindow(sw) = l2 else { unreachable!("sliding() makes sliding windows") };
        let p2 = sw.period().as_nanos().as_nanos();
        let later = now + Nanos::from_nanos(p2 + p2.div_ceil(u64::from(sw.precision())));
        // The change takes effect with the first decision under the new limit.
        let out = l2.decide(key.state.as_ref(), now, common::units(1)).expect("within capacity");
        let u = l2.usage(out.state.as_ref(), later);
        prop_assert_eq!(u.used, 0, "units still used one new period after the change");
    }

    /// Across a sliding window's change, the new limit holds from its first decision: no
    /// interval of the new period ending at a later admission holds more than the new limit,
    /// counting the units admitted before the change that the old limit still counted then
    /// (the exact window of the old period at the change).
    #[test]
    fn sliding_window_change_never_admits_beyond_the_new_limit_in_any_period(
        l1 in sliding(), l2 in sliding(), t0 in start(), before in steps(), after in steps()
    ) {
        let mut key = Key::new(l1);
        let (mut now, mut log) = history(&mut key, t0, &before);
        key.limit = l2;
        let (p1, p2) = (period_of(&l1).as_nanos().as_nanos(), period_of(&l2).as_nanos().as_nanos());
        for (i, (selector, r, u)) in after.into_iter().enumerate() {
            now += gap(p2, selector, r);
            if i == 0 {
                log.retain(|&(a, _)| a + p1 > now);
            }
            let n = pick_units(l2.capacity(), u);
            if key.decide(Nanos::from_nanos(now), n).allowed {
                log.push((now, n));
                let held = admitted_within(&log, now, p2);
                prop_assert!(held <= l2.capacity(), "{held} units in the new period ending {now}");
            }
        }
    }

    /// A change of algorithm starts with no more room than the old state had left: both in
    /// what `usage` reports and in what is actually admitted at that instant. (A state with
    /// nothing used is fresh: it equals no state, which a store may forget at any time, so the
    /// new limit starts fresh too — the rule is about usage, not capacity.)
    #[test]
    fn changing_algorithm_never_grants_more_than_the_old_state_had_left(
        l1 in rate_limit(), l2 in rate_limit(), t0 in start(), steps in steps(), wait in any::<u64>()
    ) {
        prop_assume!(family(&l1) != family(&l2));
        let mut key = Key::new(l1);
        let (last, _) = history(&mut key, t0, &steps);
        let now = Nanos::from_nanos(last + wait % period_of(&l1).as_nanos().as_nanos());
        let old = l1.usage(key.state.as_ref(), now);
        if old.used == 0 {
            return Ok(());
        }
        let left = old.remaining;
        prop_assert!(l2.usage(key.state.as_ref(), now).remaining <= left);
        key.limit = l2;
        let mut admitted = 0;
        while admitted <= left && key.decide(now, 1).allowed {
            admitted += 1;
        }
        prop_assert!(admitted <= left, "{admitted} admitted at once, {left} were left");
    }
}

/// Regression: `rebucket` mapped each old bucket to the new bucket of its *last* instant. From
/// coarse old sub-buckets (here 10 s) to a shorter period (1 s), that put the newest units
/// 10 s in the future and made the window slide past units admitted 0.7 s earlier: 60 more
/// units passed in a second already holding 100, under a limit of 60.
#[test]
fn lowering_a_coarse_sliding_window_keeps_units_of_older_buckets() {
    let old = RateLimit::SlidingWindow(
        SlidingWindow::with_precision(100, Period::from_secs(10).unwrap(), 1).unwrap(),
    );
    let new =
        RateLimit::SlidingWindow(SlidingWindow::with_precision(60, Period::SECOND, 1).unwrap());
    let mut key = Key::new(old);
    assert!(key.decide(Nanos::from_millis(9_500), 50).allowed);
    assert!(key.decide(Nanos::from_millis(10_200), 50).allowed);
    key.limit = new;
    assert_eq!(
        new.usage(key.state.as_ref(), Nanos::from_millis(10_200))
            .used,
        100
    );
    assert!(!key.decide(Nanos::from_millis(10_200), 10).allowed);
}

/// Regression: with units mapped to the last instant of a coarse old bucket, raising 6/min
/// (one 60 s bucket) to 6/s held 6 units admitted at 0.5 s until 61 s, and every admission
/// in between went into that future bucket: the new rate did not apply for a minute.
#[test]
fn raising_a_coarse_sliding_window_applies_the_new_rate_at_once() {
    let old =
        RateLimit::SlidingWindow(SlidingWindow::with_precision(6, Period::MINUTE, 1).unwrap());
    let new =
        RateLimit::SlidingWindow(SlidingWindow::with_precision(6, Period::SECOND, 1).unwrap());
    let mut key = Key::new(old);
    assert!(key.decide(Nanos::from_millis(500), 6).allowed);
    key.limit = new;
    // The change takes effect at its first decision, 0.5 s: the units then count in the new
    // bucket [0 s, 1 s), so until 2 s, not until 61 s.
    assert!(!key.decide(Nanos::from_millis(500), 1).allowed);
    assert!(!key.decide(Nanos::from_millis(1_999), 1).allowed);
    assert!(key.decide(Nanos::from_millis(2_000), 6).allowed);
    assert!(key.decide(Nanos::from_millis(4_000), 6).allowed);
}
