//! The core's errors.

use crate::time::Nanos;

/// Everything the core can refuse. A *denial* is not here: it is a normal
/// [`Decision`](crate::Decision) with `allowed == false`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A period string or value that is not a period.
    #[error("invalid period {input:?}: {reason}")]
    InvalidPeriod {
        /// What was given.
        input: String,
        /// What was expected.
        reason: String,
    },
    /// A rate string that is not `N/unit` or `N/period`.
    #[error("invalid rate {input:?}: {reason}")]
    InvalidRate {
        /// What was given.
        input: String,
        /// What was expected.
        reason: String,
    },
    /// A limit parameter that is zero, absurd, or inconsistent with the others.
    #[error("invalid {name} {value}: {reason}")]
    InvalidParameter {
        /// The parameter's name as users spell it (`limit`, `burst`, `precision`, …).
        name: &'static str,
        /// The value given.
        value: String,
        /// The accepted range or rule.
        reason: String,
    },
    /// An algorithm name that is not one of Tollgate's.
    #[error(
        "unknown algorithm {input:?}: expected one of sliding_window, fixed_window, gcra, token_bucket, concurrency, barrier"
    )]
    UnknownAlgorithm {
        /// What was given.
        input: String,
    },
    /// Units that this limit can never admit at once.
    #[error(transparent)]
    InsufficientCapacity(#[from] InsufficientCapacity),
    /// A lease id that is not live under its key (never granted, released, or expired).
    #[error("lease {lease_id:?} is not held: it was released, has expired, or never existed")]
    LeaseNotHeld {
        /// The lease id asked about.
        lease_id: String,
    },
    /// A barrier that was never created, or was removed.
    #[error("no barrier exists under this key")]
    BarrierMissing,
    /// A barrier whose time to live has passed.
    #[error("the barrier expired at {expired_at:?} before all parties arrived")]
    BarrierExpired {
        /// When it expired (epoch nanoseconds).
        expired_at: Nanos,
    },
}

/// `units` larger than what the limit can ever hold at once: retrying can never succeed.
///
/// Distinct from a denial, which clears with time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{units} units can never be admitted: the limit holds at most {capacity} at once")]
pub struct InsufficientCapacity {
    /// Units asked for.
    pub units: u64,
    /// The most the limit admits at once.
    pub capacity: u64,
}
