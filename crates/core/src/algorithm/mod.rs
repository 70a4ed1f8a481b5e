//! The unit-consuming algorithms behind one enum, [`RateLimit`].
//!
//! Every call is pure: `(limit, prior state, now, units) → (decision, next state)`. The prior
//! state travels with the limit that produced it ([`LimitState`]), so a limit whose parameters
//! changed since can take the state over: usage is kept, a lower limit applies at once, and a
//! change of algorithm starts conservatively from what the old state had left.

pub(crate) mod fixed_window;
pub(crate) mod gcra;
pub(crate) mod sliding_window;

use std::borrow::Cow;
use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

use crate::decision::{Decision, Usage};
use crate::error::InsufficientCapacity;
use crate::time::Nanos;
use fixed_window::{FixedWindow, FixedWindowState};
use gcra::{Gcra, GcraState, TokenBucket};
use sliding_window::{SlidingWindow, SlidingWindowState};

/// A limit that admits units over time: one of the rate algorithms of docs/design.md §2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateLimit {
    /// `limit` units in any interval of `period` (the default algorithm).
    SlidingWindow(SlidingWindow),
    /// `limit` units per window.
    FixedWindow(FixedWindow),
    /// Generic cell rate algorithm.
    Gcra(Gcra),
    /// GCRA spelled as a token bucket.
    TokenBucket(TokenBucket),
}

/// The state one [`RateLimit`] keeps for one key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "algorithm", rename_all = "snake_case")]
pub enum RateState {
    /// Sliding-window buckets.
    SlidingWindow(SlidingWindowState),
    /// The current fixed window.
    FixedWindow(FixedWindowState),
    /// GCRA's theoretical arrival time (also for `token_bucket`).
    Gcra(GcraState),
}

/// A state together with the limit that produced it: what a store keeps per key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitState {
    /// The limit as it was when `state` was written.
    pub limit: RateLimit,
    /// The state.
    pub state: RateState,
}

/// The result of [`RateLimit::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The answer.
    pub decision: Decision,
    /// What to store when the decision is applied: `None` means the key is in its fresh state
    /// and may be forgotten. On a denial this is the prior state (possibly converted to the
    /// current parameters); storing it or keeping the old one are equivalent.
    pub state: Option<LimitState>,
}

impl RateLimit {
    /// The most units this limit admits at once (`limit`, `burst` or `capacity`).
    pub fn capacity(&self) -> u64 {
        match self {
            RateLimit::SlidingWindow(l) => l.limit(),
            RateLimit::FixedWindow(l) => l.limit(),
            RateLimit::Gcra(l) => l.burst(),
            RateLimit::TokenBucket(l) => l.capacity(),
        }
    }

    /// The algorithm's name as the API spells it.
    pub fn algorithm(&self) -> crate::Algorithm {
        match self {
            RateLimit::SlidingWindow(_) => crate::Algorithm::SlidingWindow,
            RateLimit::FixedWindow(_) => crate::Algorithm::FixedWindow,
            RateLimit::Gcra(_) => crate::Algorithm::Gcra,
            RateLimit::TokenBucket(_) => crate::Algorithm::TokenBucket,
        }
    }

    /// Checks that `units` can ever be admitted by this limit.
    ///
    /// # Errors
    /// [`InsufficientCapacity`] when `units > capacity()`.
    #[inline]
    pub fn check_units(&self, units: NonZeroU32) -> Result<(), InsufficientCapacity> {
        let units = u64::from(units.get());
        if units > self.capacity() {
            return Err(InsufficientCapacity {
                units,
                capacity: self.capacity(),
            });
        }
        Ok(())
    }

    /// Decides whether `units` may pass at `now`, given the key's `prior` state.
    ///
    /// # Errors
    /// [`InsufficientCapacity`] when `units` exceed what the limit can ever hold; retrying
    /// cannot help. A denial is `Ok` with `decision.allowed == false`.
    ///
    /// # Guarantees
    /// See docs/design.md §2: never admits beyond the algorithm's bound for any arrival sequence, a
    /// clock that steps back never admits extra, `retry_after` is exact (gcra, fixed window) or
    /// at most one sub-bucket late (sliding window) and never early.
    #[inline]
    pub fn decide(
        &self,
        prior: Option<&LimitState>,
        now: Nanos,
        units: NonZeroU32,
    ) -> Result<Outcome, InsufficientCapacity> {
        self.check_units(units)?;
        let units = u64::from(units.get());
        let now = now.min(Nanos::LAST);
        let adopted = self.adopt(prior, now);
        let state = adopted.as_deref();
        let (decision, next) = match (self, state) {
            (RateLimit::SlidingWindow(l), s) => {
                let (d, n) = l.decide(s.and_then(as_sliding), now, units);
                (d, n.map(RateState::SlidingWindow))
            }
            (RateLimit::FixedWindow(l), s) => {
                let (d, n) = l.decide(s.and_then(as_fixed), now, units);
                (d, n.map(RateState::FixedWindow))
            }
            (RateLimit::Gcra(l), s) => {
                let (d, n) = l.decide(s.and_then(as_gcra), now, units);
                (d, n.map(RateState::Gcra))
            }
            (RateLimit::TokenBucket(l), s) => {
                let (d, n) = l.as_gcra().decide(s.and_then(as_gcra), now, units);
                (d, n.map(RateState::Gcra))
            }
        };
        Ok(Outcome {
            decision,
            state: next.map(|state| LimitState {
                limit: *self,
                state,
            }),
        })
    }

    /// What the key's state means now, without consuming anything.
    pub fn usage(&self, prior: Option<&LimitState>, now: Nanos) -> Usage {
        let now = now.min(Nanos::LAST);
        let adopted = self.adopt(prior, now);
        let s = adopted.as_deref();
        match self {
            RateLimit::SlidingWindow(l) => l.usage(s.and_then(as_sliding), now),
            RateLimit::FixedWindow(l) => l.usage(s.and_then(as_fixed), now),
            RateLimit::Gcra(l) => l.usage(s.and_then(as_gcra), now),
            RateLimit::TokenBucket(l) => l.as_gcra().usage(s.and_then(as_gcra), now),
        }
    }

    /// Gives `units` back (a run that did not use what it acquired). Returns the state to store,
    /// `None` when the key is fresh afterwards. Never goes below empty.
    pub fn refund(
        &self,
        prior: Option<&LimitState>,
        now: Nanos,
        units: NonZeroU32,
    ) -> Option<LimitState> {
        let units = u64::from(units.get());
        let now = now.min(Nanos::LAST);
        let adopted = self.adopt(prior, now)?;
        let next = match (self, &*adopted) {
            (RateLimit::SlidingWindow(l), RateState::SlidingWindow(s)) => {
                l.refund(s, now, units).map(RateState::SlidingWindow)
            }
            (RateLimit::FixedWindow(l), RateState::FixedWindow(s)) => {
                l.refund(s, now, units).map(RateState::FixedWindow)
            }
            (RateLimit::Gcra(l), RateState::Gcra(s)) => {
                l.refund(s, now, units).map(RateState::Gcra)
            }
            (RateLimit::TokenBucket(l), RateState::Gcra(s)) => {
                l.as_gcra().refund(s, now, units).map(RateState::Gcra)
            }
            // `adopt` always returns this limit's own kind of state.
            _ => Some(adopted.into_owned()),
        };
        next.map(|state| LimitState {
            limit: *self,
            state,
        })
    }

    /// The prior state expressed in this limit's terms at `now` (`None`: fresh).
    #[inline]
    fn adopt<'p>(&self, prior: Option<&'p LimitState>, now: Nanos) -> Option<Cow<'p, RateState>> {
        let prior = prior?;
        // A fresh state is no state, whatever limit wrote it (stores may forget it any time).
        if prior.fresh_at() <= now {
            return None;
        }
        if prior.limit == *self {
            // The usual case, borrowed: cloning would copy a sliding window's buckets (a heap
            // allocation) at every decision, only to build the next state from them.
            return Some(Cow::Borrowed(&prior.state));
        }
        self.convert(prior, now).map(Cow::Owned)
    }

    /// `prior`, written under another limit, in this limit's terms at `now`.
    fn convert(&self, prior: &LimitState, now: Nanos) -> Option<RateState> {
        if let (Some(new), Some(old), RateState::Gcra(s)) =
            (self.as_gcra(), prior.limit.as_gcra(), &prior.state)
        {
            return new.rescale(old, s, now).map(RateState::Gcra);
        }
        match (self, &prior.limit, &prior.state) {
            (
                RateLimit::SlidingWindow(new),
                RateLimit::SlidingWindow(old),
                RateState::SlidingWindow(s),
            ) => {
                return new.rebucket(old, s, now).map(RateState::SlidingWindow);
            }
            (RateLimit::FixedWindow(_), RateLimit::FixedWindow(_), RateState::FixedWindow(s)) => {
                // The running window keeps its end and usage; new parameters shape the next.
                return Some(RateState::FixedWindow(*s));
            }
            _ => {}
        }
        // A different algorithm: start from what the old state had left, never more.
        let left = prior.limit.usage(Some(prior), now).remaining;
        let used = self.capacity() - left.min(self.capacity());
        match self {
            RateLimit::SlidingWindow(l) => l.seeded(used, now).map(RateState::SlidingWindow),
            RateLimit::FixedWindow(l) => l.seeded(used, now).map(RateState::FixedWindow),
            RateLimit::Gcra(l) => l.seeded(used, now).map(RateState::Gcra),
            RateLimit::TokenBucket(l) => l.as_gcra().seeded(used, now).map(RateState::Gcra),
        }
    }

    fn as_gcra(&self) -> Option<&Gcra> {
        match self {
            RateLimit::Gcra(g) => Some(g),
            RateLimit::TokenBucket(t) => Some(t.as_gcra()),
            _ => None,
        }
    }
}

impl LimitState {
    /// The instant from which this state equals a fresh one (absent time stepping back), so a
    /// store may forget the key then.
    #[inline]
    pub fn fresh_at(&self) -> Nanos {
        match (&self.limit, &self.state) {
            (RateLimit::SlidingWindow(l), RateState::SlidingWindow(s)) => l.fresh_at(s),
            (_, RateState::FixedWindow(s)) => s.window_end,
            (_, RateState::Gcra(s)) => s.tat,
            // A sliding-window state under another limit: keep it for its longest possible life.
            (_, RateState::SlidingWindow(_)) => Nanos::MAX,
        }
    }
}

fn as_sliding(s: &RateState) -> Option<&SlidingWindowState> {
    match s {
        RateState::SlidingWindow(s) => Some(s),
        _ => None,
    }
}

fn as_fixed(s: &RateState) -> Option<&FixedWindowState> {
    match s {
        RateState::FixedWindow(s) => Some(s),
        _ => None,
    }
}

fn as_gcra(s: &RateState) -> Option<&GcraState> {
    match s {
        RateState::Gcra(s) => Some(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Align, Period};

    const ONE: NonZeroU32 = NonZeroU32::MIN;

    fn n(units: u32) -> NonZeroU32 {
        NonZeroU32::new(units).expect("nonzero in tests")
    }

    #[test]
    fn units_beyond_capacity_are_an_error_not_a_denial() {
        let l = RateLimit::SlidingWindow(SlidingWindow::new(5, Period::SECOND).unwrap());
        let e = l.decide(None, Nanos::ZERO, n(6)).unwrap_err();
        assert_eq!(
            e,
            InsufficientCapacity {
                units: 6,
                capacity: 5
            }
        );
    }

    #[test]
    fn changing_algorithm_keeps_no_more_than_what_was_left() {
        let t = Nanos::from_secs(1_000);
        let old = RateLimit::SlidingWindow(SlidingWindow::new(10, Period::MINUTE).unwrap());
        let mut s = None;
        for _ in 0..8 {
            s = old.decide(s.as_ref(), t, ONE).unwrap().state;
        }
        let new = RateLimit::Gcra(Gcra::new("100/m".parse().unwrap(), 50).unwrap());
        // 2 were left: the new limit starts with 2 remaining, not its burst of 50.
        assert_eq!(new.usage(s.as_ref(), t).remaining, 2);
        let fixed =
            RateLimit::FixedWindow(FixedWindow::new(1, Period::MINUTE, Align::FirstUse).unwrap());
        assert_eq!(fixed.usage(s.as_ref(), t).remaining, 1);
    }

    #[test]
    fn lowering_a_gcra_rate_keeps_the_units_used() {
        let t = Nanos::from_secs(1_000);
        let old = RateLimit::Gcra(Gcra::new("10/s".parse().unwrap(), 10).unwrap());
        let s = old.decide(None, t, n(5)).unwrap().state;
        let new = RateLimit::Gcra(Gcra::new("5/s".parse().unwrap(), 5).unwrap());
        let u = new.usage(s.as_ref(), t);
        assert_eq!((u.used, u.remaining), (5, 0));
        assert!(!new.decide(s.as_ref(), t, ONE).unwrap().decision.allowed);
    }

    #[test]
    fn refund_gives_units_back() {
        let t = Nanos::from_secs(1_000);
        for l in [
            RateLimit::SlidingWindow(SlidingWindow::new(3, Period::MINUTE).unwrap()),
            RateLimit::FixedWindow(FixedWindow::new(3, Period::MINUTE, Align::Clock).unwrap()),
            RateLimit::Gcra(Gcra::new("3/m".parse().unwrap(), 3).unwrap()),
        ] {
            let s = l.decide(None, t, n(3)).unwrap().state;
            assert_eq!(l.usage(s.as_ref(), t).remaining, 0, "{l:?}");
            let s = l.refund(s.as_ref(), t, n(2));
            assert_eq!(l.usage(s.as_ref(), t).remaining, 2, "{l:?}");
            let s = l.refund(s.as_ref(), t, n(5));
            assert_eq!(
                s, None,
                "{l:?}: refunding more than used leaves a fresh key"
            );
        }
    }
}
