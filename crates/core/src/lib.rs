//! Tollgate's pure core: time, periods and rates, and every rate-limiting algorithm as a state
//! machine — state in, `(decision, new state)` out, time passed in as [`Nanos`].
//!
//! No IO, no clock, no locks, no async: stores and the engine read the clock and make these
//! decisions atomic and durable.
//!
//! ```
//! use tollgate_core::{Nanos, RateLimit, SlidingWindow};
//! use std::num::NonZeroU32;
//!
//! // 100 per minute, sliding window.
//! let rate: tollgate_core::Rate = "100/m".parse()?;
//! let limit = RateLimit::SlidingWindow(SlidingWindow::new(rate.limit(), rate.period())?);
//! let now = Nanos::from_secs(1_700_000_000);
//! let out = limit.decide(None, now, NonZeroU32::new(30).unwrap())?;
//! assert!(out.decision.allowed);
//! assert_eq!(out.decision.remaining, 70);
//! // Store `out.state` for the key; pass it back as the prior state next time.
//! # Ok::<(), tollgate_core::Error>(())
//! ```
//!
//! # Layout
//! - [`time`](Nanos): the `Nanos` newtype, saturating.
//! - [`Period`], [`Rate`]: parsing `"1h30m"`, `"MINUTE"`, `"100/m"`.
//! - [`RateLimit`]: `sliding_window`, `fixed_window`, `gcra`, `token_bucket`, one file each.
//! - [`Concurrency`]: per-holder leases. [`Barrier`]: `parties` arrivals.
//! - [`Adaptive`], [`Declared`], [`Feedback`]: adaptive (AIMD) limits.
//! - [`Decision`], [`Usage`], [`Error`], [`InsufficientCapacity`].

mod adaptive;
mod algorithm;
mod barrier;
mod concurrency;
mod decision;
mod error;
mod period;
mod time;

pub use adaptive::{Adaptive, Declared, Feedback};
pub use algorithm::fixed_window::{Align, FixedWindow, FixedWindowState};
pub use algorithm::gcra::{Gcra, GcraState, TokenBucket};
pub use algorithm::sliding_window::{
    Bucket, DEFAULT_PRECISION, MAX_PRECISION, SlidingWindow, SlidingWindowState,
};
pub use algorithm::{LimitState, Outcome, RateLimit, RateState};
pub use barrier::{Barrier, BarrierState, BarrierStatus, MAX_PARTIES};
pub use concurrency::{Concurrency, ConcurrencyState, Lease, LeaseDecision, MAX_CONCURRENCY};
pub use decision::{Decision, Usage};
pub use error::{Error, InsufficientCapacity};
pub use period::{Period, Rate};
pub use time::Nanos;

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// The largest `limit`, `burst` or `capacity`: one billion units.
pub const MAX_LIMIT: u64 = 1_000_000_000;

pub(crate) fn check_limit(name: &'static str, value: u64) -> Result<(), Error> {
    if value == 0 || value > MAX_LIMIT {
        return Err(Error::InvalidParameter {
            name,
            value: value.to_string(),
            reason: format!("must be between 1 and {MAX_LIMIT}"),
        });
    }
    Ok(())
}

/// The algorithms by name, as the API spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// The default.
    SlidingWindow,
    /// Fixed windows, `first_use` or `clock` aligned.
    FixedWindow,
    /// Generic cell rate algorithm.
    Gcra,
    /// GCRA with `capacity` and `refill`.
    TokenBucket,
    /// Live leases.
    Concurrency,
    /// Parties arriving.
    Barrier,
}

impl Algorithm {
    /// The snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::Gcra => "gcra",
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::Concurrency => "concurrency",
            Algorithm::Barrier => "barrier",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Algorithm, Error> {
        [
            Algorithm::SlidingWindow,
            Algorithm::FixedWindow,
            Algorithm::Gcra,
            Algorithm::TokenBucket,
            Algorithm::Concurrency,
            Algorithm::Barrier,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
        .ok_or_else(|| Error::UnknownAlgorithm {
            input: s.to_owned(),
        })
    }
}

/// Any limit definition: a rate limit, a concurrency limit or a barrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// Consumes units over time.
    Rate(RateLimit),
    /// Live leases.
    Concurrency(Concurrency),
    /// Parties arriving.
    Barrier(Barrier),
}

impl Limit {
    /// The algorithm's name.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Limit::Rate(r) => r.algorithm(),
            Limit::Concurrency(_) => Algorithm::Concurrency,
            Limit::Barrier(_) => Algorithm::Barrier,
        }
    }
}

impl From<RateLimit> for Limit {
    fn from(r: RateLimit) -> Limit {
        Limit::Rate(r)
    }
}

impl From<Concurrency> for Limit {
    fn from(c: Concurrency) -> Limit {
        Limit::Concurrency(c)
    }
}

impl From<Barrier> for Limit {
    fn from(b: Barrier) -> Limit {
        Limit::Barrier(b)
    }
}
