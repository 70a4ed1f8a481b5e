//! `fixed_window`: at most `limit` units per window.
//!
//! Windows start at the first use after the previous one ended (`first_use`, Hatchet's
//! refill) or on clock multiples of `period` (`clock`, Sidekiq's bucket, Dramatiq's Bucket).
//! Up to `2·limit` units can pass across a window boundary: that is what a fixed window is.

use serde::{Deserialize, Serialize};

use crate::decision::{Decision, Usage};
use crate::error::Error;
use crate::period::Period;
use crate::time::Nanos;

/// Where fixed windows start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Align {
    /// A window opens at the first use after the previous one ended.
    #[default]
    FirstUse,
    /// Windows are `[k·period, (k+1)·period)` on the epoch clock.
    Clock,
}

impl std::str::FromStr for Align {
    type Err = Error;
    fn from_str(s: &str) -> Result<Align, Error> {
        match s {
            "first_use" => Ok(Align::FirstUse),
            "clock" => Ok(Align::Clock),
            other => Err(Error::InvalidParameter {
                name: "align",
                value: format!("{other:?}"),
                reason: "expected \"first_use\" or \"clock\"".into(),
            }),
        }
    }
}

/// Parameters of a fixed-window limit.
///
/// ```
/// use tollgate_core::{Align, FixedWindow, Nanos, Period, RateLimit};
/// use std::num::NonZeroU32;
/// let limit = RateLimit::FixedWindow(FixedWindow::new(1, Period::MINUTE, Align::Clock)?);
/// let t = Nanos::from_secs(90); // 30 s into the window [60 s, 120 s)
/// let a = limit.decide(None, t, NonZeroU32::MIN)?;
/// let b = limit.decide(a.state.as_ref(), t, NonZeroU32::MIN)?;
/// assert_eq!(b.decision.retry_after, Nanos::from_secs(30));
/// # Ok::<(), tollgate_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FixedWindow {
    limit: u64,
    period: Period,
    align: Align,
}

/// Fixed-window state: the current window's end and its usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FixedWindowState {
    /// The first instant after the window (epoch nanoseconds).
    pub window_end: Nanos,
    /// Units admitted in the window.
    pub used: u64,
}

impl FixedWindow {
    /// `limit` units per window of `period`, aligned by `align`.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] when `limit` is 0 or above [`crate::MAX_LIMIT`].
    pub fn new(limit: u64, period: Period, align: Align) -> Result<FixedWindow, Error> {
        crate::check_limit("limit", limit)?;
        Ok(FixedWindow {
            limit,
            period,
            align,
        })
    }

    /// Units per window.
    pub const fn limit(&self) -> u64 {
        self.limit
    }

    /// The window length.
    pub const fn period(&self) -> Period {
        self.period
    }

    /// Where windows start.
    pub const fn align(&self) -> Align {
        self.align
    }

    /// The window holding `now`: the stored one while it lasts (also when the clock seems to
    /// step back before its start), else a new, empty one.
    fn window(&self, state: Option<&FixedWindowState>, now: Nanos) -> FixedWindowState {
        match state {
            Some(s) if now < s.window_end => *s,
            _ => {
                let p = self.period.as_nanos();
                let window_end = match self.align {
                    Align::FirstUse => now + p,
                    Align::Clock => {
                        Nanos::from_nanos((now.as_nanos() / p.as_nanos()).saturating_add(1))
                            .saturating_mul(p.as_nanos())
                    }
                };
                FixedWindowState {
                    window_end,
                    used: 0,
                }
            }
        }
    }

    pub(crate) fn decide(
        &self,
        state: Option<&FixedWindowState>,
        now: Nanos,
        units: u64,
    ) -> (Decision, Option<FixedWindowState>) {
        let w = self.window(state, now);
        let reset_after = w.window_end - now;
        if w.used.saturating_add(units) <= self.limit {
            let next = FixedWindowState {
                window_end: w.window_end,
                used: w.used + units,
            };
            let decision = Decision {
                allowed: true,
                limit: self.limit,
                remaining: self.limit - next.used,
                retry_after: Nanos::ZERO,
                reset_after,
            };
            (decision, Some(next))
        } else {
            let decision = Decision {
                allowed: false,
                limit: self.limit,
                remaining: self.limit.saturating_sub(w.used),
                // A new, empty window opens exactly at window_end.
                retry_after: reset_after,
                reset_after,
            };
            (decision, state.copied())
        }
    }

    pub(crate) fn usage(&self, state: Option<&FixedWindowState>, now: Nanos) -> Usage {
        let w = match state {
            Some(s) if now < s.window_end => *s,
            _ => {
                return Usage {
                    limit: self.limit,
                    used: 0,
                    remaining: self.limit,
                    reset_after: Nanos::ZERO,
                };
            }
        };
        Usage {
            limit: self.limit,
            used: w.used,
            remaining: self.limit.saturating_sub(w.used),
            reset_after: w.window_end - now,
        }
    }

    pub(crate) fn refund(
        &self,
        state: &FixedWindowState,
        now: Nanos,
        units: u64,
    ) -> Option<FixedWindowState> {
        if now >= state.window_end {
            return None;
        }
        let used = state.used.saturating_sub(units);
        (used > 0).then_some(FixedWindowState {
            window_end: state.window_end,
            used,
        })
    }

    pub(crate) fn seeded(&self, used: u64, now: Nanos) -> Option<FixedWindowState> {
        (used > 0).then(|| FixedWindowState {
            used,
            ..self.window(None, now)
        })
    }
}
