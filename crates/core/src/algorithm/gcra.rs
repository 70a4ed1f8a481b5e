//! `gcra` (and its `token_bucket` spelling): the generic cell rate algorithm.
//!
//! State is one instant, the theoretical arrival time (`tat`): when the limit would be
//! back to fresh. With emission interval `T = ⌈period / limit⌉` and tolerance `burst·T`, a
//! request for `n` units at `now` is admitted iff `max(tat, now) + n·T − now ≤ burst·T`.
//! So a fresh state admits exactly `burst` units at once, then one unit per `T`, and a
//! denial's `retry_after` is exact to the nanosecond.

use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

use crate::decision::{Decision, Usage};
use crate::error::{Error, InsufficientCapacity};
use crate::period::{Period, Rate};
use crate::time::Nanos;

/// Parameters of a GCRA limit: `limit` per `period`, with `burst` admissible at once.
///
/// ```
/// use tollgate_core::{Gcra, Nanos, Rate, RateLimit};
/// use std::num::NonZeroU32;
/// // Celery-style 10/s spacing: one unit every 100 ms, no burst.
/// let limit = RateLimit::Gcra(Gcra::new("10/s".parse()?, 1)?);
/// let one = NonZeroU32::MIN;
/// let now = Nanos::from_secs(1_000);
/// let first = limit.decide(None, now, one)?;
/// assert!(first.decision.allowed);
/// let second = limit.decide(first.state.as_ref(), now, one)?;
/// assert!(!second.decision.allowed);
/// assert_eq!(second.decision.retry_after, Nanos::from_millis(100));
/// # Ok::<(), tollgate_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gcra {
    limit: u64,
    period: Period,
    burst: u64,
    interval: Nanos,
}

/// The `token_bucket` spelling of [`Gcra`]: a bucket of `capacity` tokens refilled at `refill`.
///
/// It is the same state machine as `Gcra` with `burst = capacity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenBucket {
    /// Same parameters, spelled differently: `capacity` is `burst`, `refill` the rate.
    gcra: Gcra,
}

/// GCRA state: the theoretical arrival time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GcraState {
    /// When the limit is back to fresh (epoch nanoseconds).
    pub tat: Nanos,
}

/// The longest a GCRA's tolerance (`burst · T`) may be: 20 years, so that `now + tolerance`
/// stays far from `u64` overflow for any epoch instant before the year 2500.
const MAX_TOLERANCE: Nanos = Nanos::from_secs(20 * 365 * 86_400);

impl Gcra {
    /// `rate` with `burst` units admissible at once from a fresh state.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] when `burst` is 0 or above [`crate::MAX_LIMIT`], or when
    /// `burst` emission intervals exceed 20 years.
    pub fn new(rate: Rate, burst: u64) -> Result<Gcra, Error> {
        crate::check_limit("burst", burst)?;
        let interval =
            Nanos::from_nanos(rate.period().as_nanos().as_nanos().div_ceil(rate.limit()));
        if interval.saturating_mul(burst) > MAX_TOLERANCE {
            return Err(Error::InvalidParameter {
                name: "burst",
                value: burst.to_string(),
                reason: format!(
                    "burst × (period / limit) must not exceed 20 years; with {rate} that allows a burst of at most {}",
                    MAX_TOLERANCE.as_nanos() / interval.as_nanos()
                ),
            });
        }
        Ok(Gcra {
            limit: rate.limit(),
            period: rate.period(),
            burst,
            interval,
        })
    }

    /// The rate.
    pub fn rate(&self) -> Rate {
        // Invariant: built from a valid Rate in `new`.
        Rate::new(self.limit, self.period).unwrap_or_else(|_| unreachable!())
    }

    /// Units admissible at once from a fresh state.
    pub const fn burst(&self) -> u64 {
        self.burst
    }

    /// `T = ⌈period / limit⌉`: the spacing between units once the burst is spent.
    pub const fn emission_interval(&self) -> Nanos {
        self.interval
    }

    #[inline]
    fn tolerance(&self) -> Nanos {
        self.interval.saturating_mul(self.burst)
    }

    /// What [`RateLimit::decide`](crate::RateLimit::decide) answers for a key whose state was
    /// written under this same limit (`RateLimit::Gcra(*self)` or its `TokenBucket` spelling),
    /// with the state updated in place instead of returned: on an admission `state` becomes
    /// the state `decide` returns, on a denial it is left as it was. A stale `state` (one whose
    /// `tat` is not after `now`) counts as fresh, as in `decide`. Stores use it to decide on a
    /// key's state where it lies, without moving a [`LimitState`](crate::LimitState) around.
    ///
    /// # Errors
    /// [`InsufficientCapacity`] when `units > burst`, as `decide`.
    #[inline]
    pub fn decide_in_place(
        &self,
        state: &mut GcraState,
        now: Nanos,
        units: NonZeroU32,
    ) -> Result<Decision, InsufficientCapacity> {
        let units = u64::from(units.get());
        if units > self.burst {
            return Err(InsufficientCapacity {
                units,
                capacity: self.burst,
            });
        }
        let (decision, next) = self.decide(Some(state), now.min(Nanos::LAST), units);
        if let Some(next) = next {
            *state = next;
        }
        Ok(decision)
    }

    #[inline]
    pub(crate) fn decide(
        &self,
        state: Option<&GcraState>,
        now: Nanos,
        units: u64,
    ) -> (Decision, Option<GcraState>) {
        let tat = state.map_or(now, |s| s.tat.max(now));
        // Not saturating: a `tat` past `u64` cannot be stored, and a saturated one compared
        // with a saturated horizon would admit without bound near `Nanos::MAX`.
        let new_tat = tat
            .as_nanos()
            .checked_add(self.interval.saturating_mul(units).as_nanos());
        let horizon = u128::from(now.as_nanos()) + u128::from(self.tolerance().as_nanos());
        if let Some(new_tat) = new_tat.filter(|&t| u128::from(t) <= horizon) {
            let new_tat = Nanos::from_nanos(new_tat);
            let decision = Decision {
                allowed: true,
                limit: self.burst,
                remaining: self.remaining_at(new_tat, now),
                retry_after: Nanos::ZERO,
                reset_after: new_tat - now,
            };
            (decision, Some(GcraState { tat: new_tat }))
        } else {
            let decision = Decision {
                allowed: false,
                limit: self.burst,
                remaining: self.remaining_at(tat, now),
                // Admitted exactly when new_tat - t == tolerance; never when past `u64`.
                retry_after: new_tat
                    .map_or(Nanos::MAX, |t| Nanos::from_nanos(t) - self.tolerance())
                    - now,
                reset_after: tat - now,
            };
            (decision, state.copied())
        }
    }

    #[inline]
    fn remaining_at(&self, tat: Nanos, now: Nanos) -> u64 {
        let headroom = (now + self.tolerance()) - tat;
        headroom.as_nanos() / self.interval.as_nanos()
    }

    pub(crate) fn usage(&self, state: Option<&GcraState>, now: Nanos) -> Usage {
        let tat = state.map_or(now, |s| s.tat.max(now));
        let remaining = self.remaining_at(tat, now).min(self.burst);
        Usage {
            limit: self.burst,
            used: self.burst - remaining,
            remaining,
            reset_after: tat - now,
        }
    }

    pub(crate) fn refund(&self, state: &GcraState, now: Nanos, units: u64) -> Option<GcraState> {
        let tat = state.tat - self.interval.saturating_mul(units);
        (tat > now).then_some(GcraState { tat })
    }

    /// A state with `used` units outstanding at `now`.
    pub(crate) fn seeded(&self, used: u64, now: Nanos) -> Option<GcraState> {
        (used > 0).then(|| GcraState {
            tat: now + self.interval.saturating_mul(used),
        })
    }

    /// Re-expresses a state kept under `old` so that the same number of units stays
    /// outstanding under `self` (usage is kept when parameters change).
    pub(crate) fn rescale(&self, old: &Gcra, state: &GcraState, now: Nanos) -> Option<GcraState> {
        let outstanding = (state.tat - now).as_nanos() as u128;
        if outstanding == 0 {
            return None;
        }
        let scaled = (outstanding * self.interval.as_nanos() as u128)
            .div_ceil(old.interval.as_nanos() as u128);
        let scaled = Nanos::from_nanos(u64::try_from(scaled).unwrap_or(u64::MAX));
        Some(GcraState { tat: now + scaled })
    }
}

impl TokenBucket {
    /// A bucket of `capacity` tokens refilled at `refill`.
    ///
    /// # Errors
    /// As [`Gcra::new`] with `burst = capacity`; the error names `capacity`.
    pub fn new(capacity: u64, refill: Rate) -> Result<TokenBucket, Error> {
        let gcra = Gcra::new(refill, capacity).map_err(|e| match e {
            Error::InvalidParameter { value, reason, .. } => Error::InvalidParameter {
                name: "capacity",
                value,
                reason: reason.replace("burst", "capacity"),
            },
            other => other,
        })?;
        Ok(TokenBucket { gcra })
    }

    /// Tokens when full.
    pub const fn capacity(&self) -> u64 {
        self.gcra.burst
    }

    /// The refill rate.
    pub fn refill(&self) -> Rate {
        self.gcra.rate()
    }

    /// The same limit in its GCRA spelling.
    pub const fn as_gcra(&self) -> &Gcra {
        &self.gcra
    }
}
