//! `concurrency` (docs/design.md §2): at most `limit` live leases; each lease has its own holder and
//! expiry, and an expired lease frees only its own slot.

use proptest::prelude::*;
use tollgate_core::{Concurrency, ConcurrencyState, Error, Nanos, Period};

const CASES: u32 = 256;

fn ttl() -> impl Strategy<Value = Period> {
    (1u64..=10_000).prop_map(|ms| Period::from_millis(ms).expect("in range"))
}

/// One operation: (kind, lease pick, holder, time/ttl randomness).
type Op = (u8, u8, u8, u64);

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec((any::<u8>(), any::<u8>(), 0u8..4, any::<u64>()), 1..200)
}

/// A per-call ttl: the default, or an explicit one up to twice the default.
fn ttl_for(c: &Concurrency, r: u64) -> Option<Nanos> {
    matches!(r % 3, 0)
        .then(|| Nanos::from_nanos(1 + (r >> 2) % (2 * c.lease_ttl().as_nanos().as_nanos())))
}

fn live_ids(c: &Concurrency, s: Option<&ConcurrencyState>, now: Nanos) -> Vec<String> {
    let mut ids: Vec<String> = c.live_leases(s, now).into_iter().map(|l| l.id).collect();
    ids.sort();
    ids
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// With lease ids from a small pool (so ids collide and re-acquire), random holders, ttls,
    /// renewals, releases and time: live leases never exceed `limit`, and an acquire of a new
    /// id is granted whenever a slot is free.
    #[test]
    fn live_leases_never_exceed_limit(
        limit in 1u32..=5, ttl in ttl(), t0 in 0u64..=1u64 << 62, ops in ops()
    ) {
        let c = Concurrency::new(limit, ttl).expect("valid");
        let mut state = None;
        let mut now = Nanos::from_nanos(t0);
        for (kind, pick, holder, r) in ops {
            let id = format!("lease-{}", pick % 8);
            match kind % 4 {
                0 => now = now + Nanos::from_nanos(r % (2 * ttl.as_nanos().as_nanos())),
                1 => {
                    let live = c.live_leases(state.as_ref(), now);
                    let was_live = live.iter().any(|l| l.id == id);
                    let free = live.len() < limit as usize;
                    let (d, s) = c.acquire(state.as_ref(), now, &id, &format!("w{holder}"), ttl_for(&c, r));
                    prop_assert_eq!(d.acquired, was_live || free, "{:?}", d);
                    state = s;
                }
                2 => {
                    if let Ok((_, s)) = c.renew(state.as_ref(), now, &id, ttl_for(&c, r)) {
                        state = s;
                    }
                }
                _ => state = c.release(state.as_ref(), now, &id).1,
            }
            let live = c.live_leases(state.as_ref(), now);
            prop_assert!(live.len() <= limit as usize, "{} live leases, limit {limit}", live.len());
        }
    }

    /// Leases with unique ids: once a lease has expired, renewing it is `LeaseNotHeld` and
    /// releasing it returns false and leaves every other live lease in place; a live lease
    /// renews and releases only itself.
    #[test]
    fn an_expired_lease_frees_only_its_own_slot(
        limit in 1u32..=5, ttl in ttl(), t0 in 0u64..=1u64 << 62, ops in ops()
    ) {
        let c = Concurrency::new(limit, ttl).expect("valid");
        let mut state = None;
        let mut now = Nanos::from_nanos(t0);
        // Every lease granted, with the expiry its holder was told.
        let mut granted: Vec<(String, Nanos)> = Vec::new();
        for (i, (kind, pick, holder, r)) in ops.into_iter().enumerate() {
            match kind % 4 {
                0 => now = now + Nanos::from_nanos(r % (2 * ttl.as_nanos().as_nanos())),
                1 => {
                    let id = format!("lease-{i}");
                    let (d, s) = c.acquire(state.as_ref(), now, &id, &format!("w{holder}"), ttl_for(&c, r));
                    state = s;
                    if d.acquired {
                        granted.push((id, d.expires_at));
                    }
                }
                kind => {
                    if granted.is_empty() {
                        continue;
                    }
                    let g = pick as usize % granted.len();
                    let (id, expires_at) = granted[g].clone();
                    let before = live_ids(&c, state.as_ref(), now);
                    let held = before.contains(&id);
                    prop_assert_eq!(held, expires_at > now, "lease {} told {:?}", id, expires_at);
                    if kind == 2 {
                        match c.renew(state.as_ref(), now, &id, ttl_for(&c, r)) {
                            Ok((until, s)) => {
                                prop_assert!(held, "renewed a lease that was not held");
                                prop_assert_eq!(live_ids(&c, s.as_ref(), now), before);
                                granted[g].1 = until;
                                state = s;
                            }
                            Err(e) => {
                                prop_assert!(!held, "a held lease failed to renew: {e}");
                                prop_assert_eq!(e, Error::LeaseNotHeld { lease_id: id });
                            }
                        }
                    } else {
                        let (released, s) = c.release(state.as_ref(), now, &id);
                        prop_assert_eq!(released, held);
                        let mut expected = before;
                        expected.retain(|l| *l != id);
                        prop_assert_eq!(live_ids(&c, s.as_ref(), now), expected);
                        granted[g].1 = Nanos::ZERO;
                        state = s;
                    }
                }
            }
        }
    }

    /// Lowering the limit below the live leases grants no new lease until fewer than the new
    /// limit are live; then one is granted again.
    #[test]
    fn a_lowered_limit_grants_no_new_lease_until_live_is_below_it(
        old in 2u32..=6, new in 1u32..=5, ttl in ttl(), t0 in 0u64..=1u64 << 62,
        expiries in prop::collection::vec(1u64..=10_000, 6), ops in ops()
    ) {
        prop_assume!(new < old);
        let (c1, c2) = (Concurrency::new(old, ttl).expect("valid"), Concurrency::new(new, ttl).expect("valid"));
        let mut now = Nanos::from_nanos(t0);
        let mut state = None;
        for (i, ms) in expiries.iter().take(old as usize).enumerate() {
            let (d, s) = c1.acquire(state.as_ref(), now, &format!("old-{i}"), "w", Some(Nanos::from_millis(*ms)));
            prop_assert!(d.acquired);
            state = s;
        }
        for (i, (kind, _, _, r)) in ops.into_iter().enumerate() {
            if matches!(kind % 2, 0) {
                now = now + Nanos::from_nanos(r % (2 * ttl.as_nanos().as_nanos()));
                continue;
            }
            let live = c2.live_leases(state.as_ref(), now).len();
            let (d, s) = c2.acquire(state.as_ref(), now, &format!("new-{i}"), "w", None);
            prop_assert_eq!(d.acquired, live < new as usize, "{} live, new limit {}: {:?}", live, new, d);
            state = s;
        }
    }

    /// A lease lives its whole ttl, also when that ends past `u64::MAX` (the expiry saturates):
    /// until then a limit of one grants no other lease.
    #[test]
    fn a_lease_lives_its_whole_ttl_even_near_u64_max(
        ttl in ttl(), before_end in any::<u64>(), later in any::<u64>()
    ) {
        let c = Concurrency::new(1, ttl).expect("valid");
        let ttl = ttl.as_nanos().as_nanos();
        let t = u64::MAX - before_end % (2 * ttl);
        let (d, s) = c.acquire(None, Nanos::from_nanos(t), "a", "w1", None);
        prop_assert!(d.acquired);
        // Any instant from the grant until just before it lapses (or up to u64::MAX).
        let end = (u128::from(t) + u128::from(ttl) - 1).min(u128::from(u64::MAX));
        let span = u64::try_from(end - u128::from(t)).expect("within u64");
        // Often exactly the last instant, where a saturated expiry is easiest to misread.
        let at = Nanos::from_nanos(t + if matches!(later % 4, 0) { span } else { later % (span + 1) });
        prop_assert_eq!(live_ids(&c, s.as_ref(), at), vec!["a".to_owned()]);
        prop_assert!(!c.acquire(s.as_ref(), at, "b", "w2", None).0.acquired, "second lease at {:?}", at);
    }

    /// A denied acquire's `retry_after` is exact when nothing is released meanwhile: at that
    /// instant a slot is free, a nanosecond earlier it is not.
    #[test]
    fn a_denied_acquire_retry_after_is_exact(
        limit in 1u32..=5, lowered in 0u32..=3, ttl in ttl(), t0 in 0u64..=1u64 << 62, ops in ops()
    ) {
        let c = Concurrency::new(limit, ttl).expect("valid");
        // Sometimes decide under a lower limit than the leases were taken with.
        let probe = Concurrency::new(limit.saturating_sub(lowered).max(1), ttl).expect("valid");
        let mut state = None;
        let mut now = Nanos::from_nanos(t0);
        for (i, (kind, _, _, r)) in ops.into_iter().enumerate() {
            if matches!(kind % 3, 0) {
                now = now + Nanos::from_nanos(r % ttl.as_nanos().as_nanos());
                continue;
            }
            let (d, s) = c.acquire(state.as_ref(), now, &format!("a-{i}"), "w", ttl_for(&c, r));
            state = s;
            let (d2, _) = probe.acquire(state.as_ref(), now, "probe", "p", None);
            for d in [d, d2] {
                if !d.acquired {
                    let l = if d.limit == u64::from(limit) { &c } else { &probe };
                    let at = now + d.retry_after;
                    prop_assert!(d.retry_after > Nanos::ZERO);
                    prop_assert!(l.acquire(state.as_ref(), at, "probe", "p", None).0.acquired);
                    prop_assert!(!l.acquire(state.as_ref(), at - Nanos::from_nanos(1), "probe", "p", None).0.acquired);
                }
            }
        }
    }
}

/// Regression: a lease's expiry past `u64` saturates to `u64::MAX`, and at `now == u64::MAX`
/// the lease read as expired, so every acquire was granted.
#[test]
fn a_lease_granted_near_u64_max_stays_live_at_u64_max() {
    let c = Concurrency::new(1, Period::SECOND).unwrap();
    let (a, s) = c.acquire(None, Nanos::MAX - Nanos::from_millis(1), "a", "w1", None);
    assert!(a.acquired);
    let (b, _) = c.acquire(s.as_ref(), Nanos::MAX, "b", "w2", None);
    assert!(!b.acquired && b.retry_after > Nanos::ZERO, "{b:?}");
}
