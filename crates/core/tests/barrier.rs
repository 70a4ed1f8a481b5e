//! `barrier` (docs/design.md §2): released exactly once `parties` have arrived; a missing or expired
//! barrier is an error, never a silent pass.

use proptest::prelude::*;
use tollgate_core::{Barrier, Error, Nanos, Period};

const CASES: u32 = 256;

fn barrier() -> impl Strategy<Value = Barrier> {
    (1u32..=20, 1u64..=10_000).prop_map(|(n, ms)| {
        Barrier::new(n, Period::from_millis(ms).expect("in range")).expect("valid")
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Before expiry, every arrival and status reports released exactly when arrivals have
    /// reached `parties`.
    #[test]
    fn released_exactly_when_arrived_reaches_parties(
        b in barrier(), t0 in 0u64..=1u64 << 62, gaps in prop::collection::vec(any::<u64>(), 0..45)
    ) {
        let mut s = b.create(Nanos::from_nanos(t0));
        let ttl = b.ttl().as_nanos().as_nanos();
        let mut now = Nanos::from_nanos(t0);
        for (i, g) in gaps.into_iter().enumerate() {
            // Stay before expiry: advance at most a fraction of what is left.
            now = now + Nanos::from_nanos(g % ((s.expires_at - now).as_nanos() / 8 + 1));
            let (status, next) = Barrier::arrive(Some(&s), now).expect("alive");
            s = next;
            let arrived = u32::try_from(i + 1).expect("few arrivals");
            prop_assert_eq!(status.arrived, arrived);
            prop_assert_eq!(status.released, arrived >= b.parties(), "{:?}", status);
            prop_assert_eq!(Barrier::status(Some(&s), now).expect("alive"), status);
            prop_assert_eq!(status.expires_at, Nanos::from_nanos(t0 + ttl));
        }
    }

    /// No barrier is `BarrierMissing`, for arriving and for asking, at any time.
    #[test]
    fn a_missing_barrier_is_an_error_never_a_pass(now in any::<u64>()) {
        let now = Nanos::from_nanos(now);
        prop_assert_eq!(Barrier::arrive(None, now).unwrap_err(), Error::BarrierMissing);
        prop_assert_eq!(Barrier::status(None, now).unwrap_err(), Error::BarrierMissing);
    }

    /// From its expiry on, a barrier is `BarrierExpired` — even if everyone had arrived — and
    /// an arrival never releases it.
    #[test]
    fn an_expired_barrier_is_an_error_never_a_release(
        b in barrier(), t0 in 0u64..=1u64 << 62, arrivals in 0u32..=40, late in any::<u64>()
    ) {
        let t0 = Nanos::from_nanos(t0);
        let mut s = b.create(t0);
        for _ in 0..arrivals {
            s = Barrier::arrive(Some(&s), t0).expect("alive").1;
        }
        let expired = Error::BarrierExpired { expired_at: s.expires_at };
        let at = s.expires_at + Nanos::from_nanos(late % (1 << 40));
        prop_assert_eq!(Barrier::arrive(Some(&s), at).unwrap_err(), expired.clone());
        prop_assert_eq!(Barrier::status(Some(&s), at).unwrap_err(), expired);
        prop_assert!(Barrier::status(Some(&s), s.expires_at - Nanos::from_nanos(1)).is_ok());
    }
}
