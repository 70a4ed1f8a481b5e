//! Adaptive limits (docs/design.md §3.16): a declared limit whose `limit` follows what workers
//! report about the upstream it protects, by AIMD — one more per `ok`, half (rounded down) per
//! `throttled`, always within `[min, max]`, starting at `max`.
//!
//! Everything here is pure: the engines read the definition in force, call
//! [`Declared::feedback`] or [`Declared::redefine`], and store what it answers (atomically: the
//! embedded engine under its queue's lock, Redis by a compare-and-set).
//!
//! ```
//! use tollgate_core::{Adaptive, Declared, Feedback, Gcra, Limit, RateLimit};
//! let bounds = Adaptive::new(2, 10)?;
//! let gcra = Limit::Rate(RateLimit::Gcra(Gcra::new("10/s".parse()?, 5)?));
//! let d = Declared::adaptive(gcra, bounds)?;
//! assert_eq!(d.limit_in_force(), Some(10)); // starts at max
//! let d = d.feedback(Feedback::Throttled).unwrap();
//! assert_eq!(d.limit_in_force(), Some(5));
//! let d = d.feedback(Feedback::Ok).unwrap();
//! assert_eq!(d.limit_in_force(), Some(6));
//! # Ok::<(), tollgate_core::Error>(())
//! ```

use std::fmt;
use std::str::FromStr;

use crate::{
    Concurrency, Error, FixedWindow, Gcra, Limit, MAX_LIMIT, Rate, RateLimit, SlidingWindow,
};

/// What a worker reports about one call to the upstream an adaptive limit protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feedback {
    /// The call went through: the limit in force grows by one (up to `max`).
    Ok,
    /// The upstream pushed back (a 429, a 503): the limit in force halves (down to `min`).
    Throttled,
}

impl Feedback {
    /// The name as the API spells it: `ok` or `throttled`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Feedback::Ok => "ok",
            Feedback::Throttled => "throttled",
        }
    }
}

impl fmt::Display for Feedback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Feedback {
    type Err = Error;
    fn from_str(s: &str) -> Result<Feedback, Error> {
        match s {
            "ok" => Ok(Feedback::Ok),
            "throttled" => Ok(Feedback::Throttled),
            _ => Err(Error::InvalidParameter {
                name: "outcome",
                value: format!("{s:?}"),
                reason: "must be \"ok\" or \"throttled\"".to_owned(),
            }),
        }
    }
}

/// The bounds of an adaptive limit: `1 ≤ min ≤ max ≤ 1,000,000,000`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Adaptive {
    min: u64,
    max: u64,
}

impl Adaptive {
    /// Bounds `[min, max]`.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] named `min` (0, or above `max`) or `max` (above
    /// 1,000,000,000).
    pub fn new(min: u64, max: u64) -> Result<Adaptive, Error> {
        if min == 0 {
            return Err(Error::InvalidParameter {
                name: "min",
                value: min.to_string(),
                reason: "must be at least 1".to_owned(),
            });
        }
        if max > MAX_LIMIT {
            return Err(Error::InvalidParameter {
                name: "max",
                value: max.to_string(),
                reason: format!("must be at most {MAX_LIMIT}"),
            });
        }
        if min > max {
            return Err(Error::InvalidParameter {
                name: "min",
                value: min.to_string(),
                reason: format!("must be at most max ({max})"),
            });
        }
        Ok(Adaptive { min, max })
    }

    /// The lowest the limit in force goes.
    pub const fn min(self) -> u64 {
        self.min
    }

    /// The highest the limit in force goes, and where it starts.
    pub const fn max(self) -> u64 {
        self.max
    }

    /// Where the limit in force starts: `max` (nothing has pushed back yet).
    pub const fn start(self) -> u64 {
        self.max
    }

    /// Whether `n` lies within the bounds.
    pub const fn contains(self, n: u64) -> bool {
        self.min <= n && n <= self.max
    }

    /// `n` brought within the bounds.
    pub fn clamp(self, n: u64) -> u64 {
        n.clamp(self.min, self.max)
    }

    /// The AIMD step: the limit in force after `feedback`, given the one in force now (brought
    /// within the bounds first). `ok` adds exactly one, up to `max`; `throttled` halves,
    /// rounding down, never below `min`.
    pub fn step(self, in_force: u64, feedback: Feedback) -> u64 {
        let n = self.clamp(in_force);
        match feedback {
            Feedback::Ok => n.saturating_add(1).min(self.max),
            Feedback::Throttled => (n / 2).max(self.min),
        }
    }
}

impl Limit {
    /// The number an adaptive limit adapts: the `limit` of `sliding_window`, `fixed_window`,
    /// `gcra` (its rate's) and `concurrency`; `None` for `token_bucket` (a `capacity` and a
    /// `refill`, no `limit`) and barriers.
    pub fn adaptable(&self) -> Option<u64> {
        match self {
            Limit::Rate(RateLimit::SlidingWindow(l)) => Some(l.limit()),
            Limit::Rate(RateLimit::FixedWindow(l)) => Some(l.limit()),
            Limit::Rate(RateLimit::Gcra(l)) => Some(l.rate().limit()),
            Limit::Concurrency(c) => Some(u64::from(c.limit())),
            Limit::Rate(RateLimit::TokenBucket(_)) | Limit::Barrier(_) => None,
        }
    }

    /// The same limit with its [`Limit::adaptable`] number set to `n`, every other parameter
    /// kept.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] named `limit` for `n` out of the algorithm's range, or named
    /// `adaptive` for a limit that has no such number.
    pub fn with_adaptable(&self, n: u64) -> Result<Limit, Error> {
        Ok(match self {
            Limit::Rate(RateLimit::SlidingWindow(l)) => Limit::Rate(RateLimit::SlidingWindow(
                SlidingWindow::with_precision(n, l.period(), l.precision())?,
            )),
            Limit::Rate(RateLimit::FixedWindow(l)) => Limit::Rate(RateLimit::FixedWindow(
                FixedWindow::new(n, l.period(), l.align())?,
            )),
            Limit::Rate(RateLimit::Gcra(l)) => Limit::Rate(RateLimit::Gcra(Gcra::new(
                Rate::new(n, l.rate().period())?,
                l.burst(),
            )?)),
            Limit::Concurrency(c) => {
                let n = u32::try_from(n).map_err(|_| Error::InvalidParameter {
                    name: "limit",
                    value: n.to_string(),
                    reason: format!("must be between 1 and {}", crate::MAX_CONCURRENCY),
                })?;
                Limit::Concurrency(Concurrency::new(n, c.lease_ttl())?)
            }
            Limit::Rate(RateLimit::TokenBucket(_)) | Limit::Barrier(_) => {
                return Err(not_adaptable(self));
            }
        })
    }
}

fn not_adaptable(limit: &Limit) -> Error {
    let reason = match limit {
        Limit::Rate(RateLimit::TokenBucket(_)) => {
            "token_bucket has no limit to adapt (its capacity is a burst, its refill a rate): \
             declare it as gcra, with limit and period as the refill and burst as the capacity, \
             which decides the same"
        }
        _ => "only the limit of sliding_window, fixed_window, gcra and concurrency adapts",
    };
    Error::InvalidParameter {
        name: "adaptive",
        value: limit.algorithm().to_string(),
        reason: reason.to_owned(),
    }
}

/// A declared limit's definition: the limit, and its adaptive bounds when it adapts. The limit
/// in force of an adaptive limit is the limit's own number ([`Limit::adaptable`]): a feedback
/// redefines the limit with it, usage kept, as any redefinition does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Declared {
    limit: Limit,
    adaptive: Option<Adaptive>,
}

impl Declared {
    /// A limit that does not adapt.
    pub const fn fixed(limit: Limit) -> Declared {
        Declared {
            limit,
            adaptive: None,
        }
    }

    /// An adaptive limit whose limit in force is `limit`'s number (give `max` to start afresh).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] named `adaptive` for a limit that cannot adapt
    /// (`token_bucket`, barriers), `max` beyond what the algorithm takes (concurrency: at most
    /// 1,000,000), or `limit` for a number outside `[min, max]`.
    pub fn adaptive(limit: Limit, bounds: Adaptive) -> Result<Declared, Error> {
        let n = limit.adaptable().ok_or_else(|| not_adaptable(&limit))?;
        if let Err(Error::InvalidParameter { reason, .. }) = limit.with_adaptable(bounds.max) {
            return Err(Error::InvalidParameter {
                name: "max",
                value: bounds.max.to_string(),
                reason: format!("too large for {}: {reason}", limit.algorithm()),
            });
        }
        if !bounds.contains(n) {
            return Err(Error::InvalidParameter {
                name: "limit",
                value: n.to_string(),
                reason: format!(
                    "an adaptive limit's limit must be between min ({}) and max ({})",
                    bounds.min, bounds.max
                ),
            });
        }
        Ok(Declared {
            limit,
            adaptive: Some(bounds),
        })
    }

    /// The limit, whose number is the limit in force when it adapts.
    pub const fn limit(&self) -> &Limit {
        &self.limit
    }

    /// The adaptive bounds, when it adapts.
    pub const fn bounds(&self) -> Option<Adaptive> {
        self.adaptive
    }

    /// The limit in force of an adaptive limit; `None` when it does not adapt.
    pub fn limit_in_force(&self) -> Option<u64> {
        self.adaptive.and_then(|_| self.limit.adaptable())
    }

    /// The definition after `feedback` (one AIMD step, [`Adaptive::step`]); `None` when it does
    /// not adapt.
    pub fn feedback(&self, feedback: Feedback) -> Option<Declared> {
        let bounds = self.adaptive?;
        let next = bounds.step(self.limit.adaptable()?, feedback);
        let limit = self.limit.with_adaptable(next).ok()?;
        Some(Declared {
            limit,
            adaptive: Some(bounds),
        })
    }

    /// What a redefinition (`PUT /v1/limits/{key}`, `tollgate apply`) with `self` as given
    /// declares, when `prior` is the definition in force: an adaptive limit whose bounds did
    /// not change keeps the limit in force it has learnt (the `limit` given is only where a new
    /// one starts); any other definition is taken as given.
    pub fn redefine(self, prior: Option<&Declared>) -> Declared {
        let (Some(bounds), Some(prior)) = (self.adaptive, prior) else {
            return self;
        };
        if prior.adaptive != Some(bounds) {
            return self;
        }
        match prior
            .limit
            .adaptable()
            .map(|n| self.limit.with_adaptable(bounds.clamp(n)))
        {
            Some(Ok(limit)) => Declared {
                limit,
                adaptive: Some(bounds),
            },
            _ => self,
        }
    }
}

impl From<Limit> for Declared {
    fn from(limit: Limit) -> Declared {
        Declared::fixed(limit)
    }
}
