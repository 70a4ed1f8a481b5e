//! Adaptive limits (docs/design.md §3.16): the AIMD step and the definitions it makes.
//! The limit in force starts at `max`, grows by exactly one per `ok` up to `max`, halves
//! (rounding down) per `throttled` but never below `min`, and never leaves `[min, max]`; a
//! redefinition with the same bounds keeps what was learnt, other bounds start afresh.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

mod common;

use common::{CASES, period, precision};
use proptest::prelude::*;
use tollgate_core::{
    Adaptive, Align, Concurrency, Declared, Feedback, FixedWindow, Gcra, Limit, MAX_LIMIT, Rate,
    RateLimit, SlidingWindow, TokenBucket,
};

/// Bounds `1 ≤ min ≤ max`, mostly small, sometimes near the largest limit.
fn bounds() -> impl Strategy<Value = Adaptive> {
    prop_oneof![
        4 => (1u64..=40, 0u64..=60).prop_map(|(min, span)| Adaptive::new(min, min + span).unwrap()),
        1 => (1u64..=MAX_LIMIT, 1u64..=MAX_LIMIT)
            .prop_map(|(a, b)| Adaptive::new(a.min(b), a.max(b)).unwrap()),
    ]
}

fn feedback() -> impl Strategy<Value = Feedback> {
    prop_oneof![Just(Feedback::Ok), Just(Feedback::Throttled)]
}

/// A limit of every algorithm that adapts, with its number at `n`.
fn adaptable(n: u64) -> impl Strategy<Value = Limit> {
    (period(), precision(), 1u64..=40, 0usize..4).prop_map(move |(p, prec, burst, which)| {
        let conc = u32::try_from(n.min(1_000_000)).unwrap();
        match which {
            0 => Limit::Rate(RateLimit::SlidingWindow(
                SlidingWindow::with_precision(n, p, prec).unwrap(),
            )),
            1 => Limit::Rate(RateLimit::FixedWindow(
                FixedWindow::new(n, p, Align::Clock).unwrap(),
            )),
            2 => Limit::Rate(RateLimit::Gcra(
                Gcra::new(Rate::new(n, p).unwrap(), burst).unwrap(),
            )),
            _ => Limit::Concurrency(Concurrency::new(conc, p).unwrap()),
        }
    })
}

/// Bounds and an adaptive definition starting at their `max`.
fn started() -> impl Strategy<Value = (Adaptive, Declared)> {
    (1u64..=40, 0u64..=60)
        .prop_flat_map(|(min, span)| {
            let b = Adaptive::new(min, min + span).unwrap();
            adaptable(b.start()).prop_map(move |l| (b, l))
        })
        .prop_map(|(b, l)| (b, Declared::adaptive(l, b).unwrap()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn a_step_never_leaves_the_bounds(b in bounds(), n in any::<u64>(), f in feedback()) {
        let next = b.step(n, f);
        prop_assert!(b.contains(next), "{b:?} {n} {f:?} -> {next}");
    }

    #[test]
    fn ok_adds_exactly_one_up_to_max(b in bounds(), at in any::<u64>()) {
        let n = b.clamp(at);
        let next = b.step(n, Feedback::Ok);
        if n < b.max() {
            prop_assert_eq!(next, n + 1);
        } else {
            prop_assert_eq!(next, b.max());
        }
    }

    #[test]
    fn throttled_halves_rounding_down_but_never_below_min(b in bounds(), at in any::<u64>()) {
        let n = b.clamp(at);
        let next = b.step(n, Feedback::Throttled);
        prop_assert_eq!(next, (n / 2).max(b.min()));
        prop_assert!(next <= n);
    }

    #[test]
    fn a_new_adaptive_limit_starts_at_max_and_every_sequence_stays_within_bounds(
        (b, d) in started(),
        fs in prop::collection::vec(feedback(), 0..200),
    ) {
        prop_assert_eq!(d.limit_in_force(), Some(b.max()));
        let mut d = d;
        let mut expected = b.start();
        for f in fs {
            let next = d.feedback(f).unwrap();
            expected = b.step(expected, f);
            prop_assert_eq!(next.limit_in_force(), Some(expected));
            prop_assert!(b.contains(expected));
            prop_assert_eq!(next.bounds(), Some(b));
            // Only the number moves: the algorithm and its other parameters stay.
            prop_assert_eq!(next.limit().with_adaptable(b.max()).unwrap(),
                d.limit().with_adaptable(b.max()).unwrap());
            d = next;
        }
    }

    #[test]
    fn a_redefinition_with_the_same_bounds_keeps_the_limit_in_force(
        (b, d) in started(),
        fs in prop::collection::vec(feedback(), 1..50),
        given_at in any::<u64>(),
    ) {
        let learnt = fs.iter().fold(d, |d, f| d.feedback(*f).unwrap());
        // The same definition again, with any `limit` within the bounds (or none: max).
        let again = Declared::adaptive(d.limit().with_adaptable(b.clamp(given_at)).unwrap(), b).unwrap();
        prop_assert_eq!(again.redefine(Some(&learnt)), learnt);
        // Other bounds start afresh from what is given.
        let other = Adaptive::new(b.min(), b.max() + 1).unwrap();
        let moved = Declared::adaptive(d.limit().with_adaptable(other.start()).unwrap(), other).unwrap();
        prop_assert_eq!(moved.redefine(Some(&learnt)).limit_in_force(), Some(other.max()));
        // A limit that did not adapt before starts afresh too; one that stops adapting is as given.
        let fixed = Declared::fixed(*learnt.limit());
        prop_assert_eq!(again.redefine(Some(&fixed)), again);
        prop_assert_eq!(fixed.redefine(Some(&learnt)), fixed);
        prop_assert_eq!(again.redefine(None), again);
    }
}

#[test]
fn bad_bounds_and_limits_that_cannot_adapt_are_refused_by_name() {
    let name = |e: tollgate_core::Error| match e {
        tollgate_core::Error::InvalidParameter { name, .. } => name,
        other => panic!("{other}"),
    };
    assert_eq!(name(Adaptive::new(0, 5).unwrap_err()), "min");
    assert_eq!(name(Adaptive::new(6, 5).unwrap_err()), "min");
    assert_eq!(name(Adaptive::new(1, MAX_LIMIT + 1).unwrap_err()), "max");
    let b = Adaptive::new(2, 10).unwrap();
    let rate: Rate = "10/s".parse().unwrap();
    let bucket = Limit::Rate(RateLimit::TokenBucket(TokenBucket::new(10, rate).unwrap()));
    assert_eq!(name(Declared::adaptive(bucket, b).unwrap_err()), "adaptive");
    let conc = Limit::Concurrency(Concurrency::new(5, tollgate_core::Period::SECOND).unwrap());
    let huge = Adaptive::new(1, 2_000_000).unwrap();
    assert_eq!(
        name(Declared::adaptive(conc.with_adaptable(1).unwrap(), huge).unwrap_err()),
        "max"
    );
    let gcra = Limit::Rate(RateLimit::Gcra(Gcra::new(rate, 3).unwrap()));
    assert_eq!(
        name(Declared::adaptive(gcra.with_adaptable(11).unwrap(), b).unwrap_err()),
        "limit"
    );
    assert_eq!(Declared::fixed(gcra).feedback(Feedback::Ok), None);
    assert_eq!(Declared::fixed(gcra).limit_in_force(), None);
    assert_eq!(
        "throttled".parse::<Feedback>().unwrap(),
        Feedback::Throttled
    );
    assert!("slow".parse::<Feedback>().is_err());
}

#[test]
fn the_smallest_steps_by_hand() {
    let b = Adaptive::new(3, 8).unwrap();
    assert_eq!(b.start(), 8);
    assert_eq!(b.step(8, Feedback::Ok), 8);
    assert_eq!(b.step(8, Feedback::Throttled), 4);
    assert_eq!(b.step(4, Feedback::Throttled), 3);
    assert_eq!(b.step(7, Feedback::Throttled), 3);
    assert_eq!(b.step(3, Feedback::Throttled), 3);
    assert_eq!(b.step(3, Feedback::Ok), 4);
    let one = Adaptive::new(1, 1).unwrap();
    assert_eq!(one.step(1, Feedback::Ok), 1);
    assert_eq!(one.step(1, Feedback::Throttled), 1);
}
