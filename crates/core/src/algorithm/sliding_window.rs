//! `sliding_window` (the default): `limit` units in any interval of length `period`.
//!
//! Time is cut into `precision` sub-buckets per period: bucket `k` covers
//! `[k·P/N, (k+1)·P/N)` (index `⌊t·N/P⌋`, computed in `u128`). A request at bucket `b` is
//! checked against the **N+1** buckets `b−N ..= b`, which cover every admission in
//! `(t−P, t]`, so no interval of length `P` ever holds more than `limit` units. A bucket's
//! units stop counting at the first instant of bucket `k+N+1`, at most `⌈P/N⌉` after the
//! exact sliding-log instant: that bounds how late `retry_after` can be.

use serde::{Deserialize, Serialize};

use crate::decision::{Decision, Usage};
use crate::error::Error;
use crate::period::Period;
use crate::time::Nanos;

/// Default number of sub-buckets per period.
pub const DEFAULT_PRECISION: u32 = 60;
/// Most sub-buckets per period.
pub const MAX_PRECISION: u32 = 3_600;

/// Parameters of a sliding-window limit.
///
/// ```
/// use tollgate_core::{Nanos, Period, RateLimit, SlidingWindow};
/// use std::num::NonZeroU32;
/// let limit = RateLimit::SlidingWindow(SlidingWindow::new(2, Period::SECOND)?);
/// let one = NonZeroU32::MIN;
/// let t = Nanos::from_secs(100);
/// let a = limit.decide(None, t, one)?;
/// let b = limit.decide(a.state.as_ref(), t, one)?;
/// let c = limit.decide(b.state.as_ref(), t, one)?;
/// assert!(a.decision.allowed && b.decision.allowed && !c.decision.allowed);
/// // Free again once the admitting sub-bucket has slid out: one period plus one sub-bucket at most.
/// assert!(c.decision.retry_after <= Nanos::from_millis(1_000 + 17));
/// # Ok::<(), tollgate_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlidingWindow {
    limit: u64,
    period: Period,
    precision: u32,
}

/// Units admitted in one sub-bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Bucket {
    /// `⌊t·N/P⌋` of the admissions counted here.
    pub index: u64,
    /// Units admitted in this bucket.
    pub units: u64,
}

/// Sliding-window state: the non-empty buckets still in the window, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct SlidingWindowState {
    /// Non-empty buckets, strictly ascending by index.
    pub buckets: Vec<Bucket>,
}

impl SlidingWindow {
    /// `limit` units per `period`, with the default precision of 60 sub-buckets.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] when `limit` is 0 or above [`crate::MAX_LIMIT`].
    pub fn new(limit: u64, period: Period) -> Result<SlidingWindow, Error> {
        SlidingWindow::with_precision(limit, period, DEFAULT_PRECISION)
    }

    /// `limit` units per `period`, with `precision` sub-buckets (1 to 3600).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for a zero or absurd `limit` or `precision`.
    pub fn with_precision(
        limit: u64,
        period: Period,
        precision: u32,
    ) -> Result<SlidingWindow, Error> {
        crate::check_limit("limit", limit)?;
        if !(1..=MAX_PRECISION).contains(&precision) {
            return Err(Error::InvalidParameter {
                name: "precision",
                value: precision.to_string(),
                reason: format!("must be between 1 and {MAX_PRECISION}"),
            });
        }
        Ok(SlidingWindow {
            limit,
            period,
            precision,
        })
    }

    /// The most units in any interval of length `period`.
    pub const fn limit(&self) -> u64 {
        self.limit
    }

    /// The window length.
    pub const fn period(&self) -> Period {
        self.period
    }

    /// Sub-buckets per period.
    pub const fn precision(&self) -> u32 {
        self.precision
    }

    /// The index of the sub-bucket holding `t`.
    pub fn bucket_of(&self, t: Nanos) -> u64 {
        let i = t.as_nanos() as u128 * self.precision as u128
            / self.period.as_nanos().as_nanos() as u128;
        u64::try_from(i).unwrap_or(u64::MAX)
    }

    /// The first instant of sub-bucket `k`: `⌈k·P/N⌉`.
    pub fn bucket_start(&self, k: u64) -> Nanos {
        let t = (k as u128 * self.period.as_nanos().as_nanos() as u128)
            .div_ceil(self.precision as u128);
        Nanos::from_nanos(u64::try_from(t).unwrap_or(u64::MAX))
    }

    /// When bucket `k`'s units stop counting: the start of bucket `k+N+1`.
    fn expiry_of(&self, k: u64) -> Nanos {
        self.bucket_start(k.saturating_add(self.precision as u64 + 1))
    }

    /// The current bucket, never behind the newest recorded one (a clock that steps back
    /// is treated as standing still, so it cannot re-open buckets already pruned).
    fn current(&self, state: Option<&SlidingWindowState>, now: Nanos) -> u64 {
        let b = self.bucket_of(now);
        match state.and_then(|s| s.buckets.last()) {
            Some(last) => b.max(last.index),
            None => b,
        }
    }

    fn live<'s>(&self, state: Option<&'s SlidingWindowState>, current: u64) -> &'s [Bucket] {
        let Some(s) = state else { return &[] };
        let oldest = current.saturating_sub(self.precision as u64);
        let first = s.buckets.partition_point(|b| b.index < oldest);
        &s.buckets[first..]
    }

    pub(crate) fn decide(
        &self,
        state: Option<&SlidingWindowState>,
        now: Nanos,
        units: u64,
    ) -> (Decision, Option<SlidingWindowState>) {
        let current = self.current(state, now);
        let live = self.live(state, current);
        let used: u64 = live.iter().map(|b| b.units).sum();
        if used.saturating_add(units) <= self.limit {
            let mut buckets = Vec::with_capacity(live.len() + 1);
            buckets.extend_from_slice(live);
            match buckets.last_mut() {
                Some(last) if last.index == current => last.units += units,
                _ => buckets.push(Bucket {
                    index: current,
                    units,
                }),
            }
            let decision = Decision {
                allowed: true,
                limit: self.limit,
                remaining: self.limit - used - units,
                retry_after: Nanos::ZERO,
                reset_after: self.expiry_of(current) - now,
            };
            (decision, Some(SlidingWindowState { buckets }))
        } else {
            // Oldest buckets leave first; find the one whose departure frees enough.
            let need = used + units - self.limit;
            let mut freed = 0;
            let mut retry_at = Nanos::MAX;
            for b in live {
                freed += b.units;
                if freed >= need {
                    retry_at = self.expiry_of(b.index);
                    break;
                }
            }
            let decision = Decision {
                allowed: false,
                limit: self.limit,
                remaining: self.limit.saturating_sub(used),
                retry_after: retry_at - now,
                reset_after: live
                    .last()
                    .map_or(Nanos::ZERO, |b| self.expiry_of(b.index) - now),
            };
            (decision, state.cloned())
        }
    }

    pub(crate) fn usage(&self, state: Option<&SlidingWindowState>, now: Nanos) -> Usage {
        let live = self.live(state, self.current(state, now));
        let used: u64 = live.iter().map(|b| b.units).sum();
        Usage {
            limit: self.limit,
            used,
            remaining: self.limit.saturating_sub(used),
            reset_after: live
                .last()
                .map_or(Nanos::ZERO, |b| self.expiry_of(b.index) - now),
        }
    }

    /// Gives units back, newest first.
    pub(crate) fn refund(
        &self,
        state: &SlidingWindowState,
        now: Nanos,
        units: u64,
    ) -> Option<SlidingWindowState> {
        let current = self.current(Some(state), now);
        let mut buckets = self.live(Some(state), current).to_vec();
        let mut left = units;
        while left > 0 {
            let Some(last) = buckets.last_mut() else {
                break;
            };
            let take = left.min(last.units);
            last.units -= take;
            left -= take;
            if last.units == 0 {
                buckets.pop();
            }
        }
        (!buckets.is_empty()).then_some(SlidingWindowState { buckets })
    }

    pub(crate) fn seeded(&self, used: u64, now: Nanos) -> Option<SlidingWindowState> {
        (used > 0).then(|| SlidingWindowState {
            buckets: vec![Bucket {
                index: self.bucket_of(now),
                units: used,
            }],
        })
    }

    /// Moves a state kept under `old` onto this limit's buckets. Each old bucket's units go to
    /// the new bucket holding the latest instant they can have been admitted at, so they never
    /// expire earlier than they would have: conservative.
    ///
    /// That instant is the old bucket's last one, but no later than `now`: mapping a coarse old
    /// bucket to its last instant would put it, and the new limit's current bucket, up to an old
    /// sub-bucket in the future. The window would then slide past older buckets whose units
    /// still count (admitting beyond the new limit), and hold new admissions in that future
    /// bucket (a raised rate not applying for up to an old sub-bucket).
    pub(crate) fn rebucket(
        &self,
        old: &SlidingWindow,
        state: &SlidingWindowState,
        now: Nanos,
    ) -> Option<SlidingWindowState> {
        if old.period == self.period && old.precision == self.precision {
            return Some(state.clone());
        }
        let live = old.live(Some(state), old.current(Some(state), now));
        let newest = live.last()?.index;
        let last_of = |k: u64| old.bucket_start(k.saturating_add(1)) - Nanos::from_nanos(1);
        // Units were admitted by `now` — unless the clock has stepped back before the newest
        // bucket began, and then (when in it is unknown) by that bucket's last instant.
        let latest = if now >= old.bucket_start(newest) {
            now
        } else {
            last_of(newest)
        };
        let index_of = |k: u64| self.bucket_of(last_of(k).min(latest));
        // Gone by `now` under the new period.
        let oldest = self
            .bucket_of(now)
            .saturating_sub(u64::from(self.precision));
        // When `latest` is ahead of `now`, the units still counting must stay in the window
        // that ends at the newest bucket: moving them later is conservative.
        let floor = index_of(newest).saturating_sub(u64::from(self.precision));
        let mut buckets: Vec<Bucket> = Vec::with_capacity(live.len());
        for b in live {
            let index = index_of(b.index);
            if index < oldest {
                continue;
            }
            let index = index.max(floor);
            match buckets.last_mut() {
                Some(last) if last.index == index => last.units += b.units,
                _ => buckets.push(Bucket {
                    index,
                    units: b.units,
                }),
            }
        }
        (!buckets.is_empty()).then_some(SlidingWindowState { buckets })
    }

    pub(crate) fn fresh_at(&self, state: &SlidingWindowState) -> Nanos {
        state
            .buckets
            .last()
            .map_or(Nanos::ZERO, |b| self.expiry_of(b.index))
    }
}
