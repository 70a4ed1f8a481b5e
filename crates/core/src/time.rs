//! [`Nanos`]: the one time type of the core.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Nanoseconds, used both for instants (since the Unix epoch) and for durations.
///
/// A `u64` of nanoseconds reaches the year 2554, so epoch instants always fit. `+` and `-`
/// **saturate**: time arithmetic never panics and never wraps, so a clock that seems to step
/// back yields a zero duration, not a huge one.
///
/// ```
/// use tollgate_core::Nanos;
/// let t = Nanos::from_millis(1_500);
/// assert_eq!(t.as_millis_ceil(), 1_500);
/// assert_eq!((Nanos::from_millis(1) - Nanos::from_secs(1)), Nanos::ZERO);
/// assert_eq!(Nanos::from_nanos(1).as_millis_ceil(), 1); // durations round up
/// ```
#[derive(Copy, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Nanos(u64);

impl Nanos {
    /// Zero: the epoch, or an empty duration.
    pub const ZERO: Nanos = Nanos(0);
    /// The largest representable value.
    pub const MAX: Nanos = Nanos(u64::MAX);
    /// The latest instant the core decides at; later times are read as this one. `MAX` itself
    /// is left for instants that saturated (a window end or expiry beyond `u64`), so such an
    /// instant always lies ahead and a state that ends there never looks fresh.
    pub(crate) const LAST: Nanos = Nanos(u64::MAX - 1);
    /// One millisecond.
    pub const MILLISECOND: Nanos = Nanos(1_000_000);
    /// One second.
    pub const SECOND: Nanos = Nanos(1_000_000_000);

    /// From a count of nanoseconds.
    pub const fn from_nanos(nanos: u64) -> Nanos {
        Nanos(nanos)
    }

    /// From microseconds, saturating.
    pub const fn from_micros(micros: u64) -> Nanos {
        Nanos(micros.saturating_mul(1_000))
    }

    /// From milliseconds, saturating.
    pub const fn from_millis(millis: u64) -> Nanos {
        Nanos(millis.saturating_mul(1_000_000))
    }

    /// From seconds, saturating.
    pub const fn from_secs(secs: u64) -> Nanos {
        Nanos(secs.saturating_mul(1_000_000_000))
    }

    /// The count of nanoseconds.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Whole milliseconds, rounded **up**: a client that waits this long is never early.
    pub const fn as_millis_ceil(self) -> u64 {
        self.0.div_ceil(1_000_000)
    }

    /// Whole milliseconds, rounded down (for instants such as `*_at_ms`).
    pub const fn as_millis_floor(self) -> u64 {
        self.0 / 1_000_000
    }

    /// Whole microseconds, rounded up.
    pub const fn as_micros_ceil(self) -> u64 {
        self.0.div_ceil(1_000)
    }

    /// Saturating addition.
    pub const fn saturating_add(self, other: Nanos) -> Nanos {
        Nanos(self.0.saturating_add(other.0))
    }

    /// Saturating subtraction: `ZERO` when `other` is later.
    pub const fn saturating_sub(self, other: Nanos) -> Nanos {
        Nanos(self.0.saturating_sub(other.0))
    }

    /// Saturating multiplication by a count.
    pub const fn saturating_mul(self, count: u64) -> Nanos {
        Nanos(self.0.saturating_mul(count))
    }

    /// This duration as a [`Duration`].
    pub const fn as_duration(self) -> Duration {
        Duration::from_nanos(self.0)
    }
}

impl From<Duration> for Nanos {
    /// Saturates at [`Nanos::MAX`].
    fn from(d: Duration) -> Nanos {
        Nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}

impl From<Nanos> for Duration {
    fn from(n: Nanos) -> Duration {
        Duration::from_nanos(n.0)
    }
}

impl Add for Nanos {
    type Output = Nanos;
    /// Saturating.
    fn add(self, rhs: Nanos) -> Nanos {
        self.saturating_add(rhs)
    }
}

impl Sub for Nanos {
    type Output = Nanos;
    /// Saturating: never below zero.
    fn sub(self, rhs: Nanos) -> Nanos {
        self.saturating_sub(rhs)
    }
}

impl fmt::Debug for Nanos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ns", self.0)
    }
}

impl fmt::Display for Nanos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&Duration::from_nanos(self.0), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_wrapping() {
        assert_eq!(Nanos::MAX + Nanos::from_nanos(1), Nanos::MAX);
        assert_eq!(Nanos::ZERO - Nanos::from_nanos(1), Nanos::ZERO);
        assert_eq!(Nanos::from_secs(u64::MAX), Nanos::MAX);
    }

    #[test]
    fn millis_round_up_for_durations_and_down_for_instants() {
        let n = Nanos::from_nanos(2_000_001);
        assert_eq!(n.as_millis_ceil(), 3);
        assert_eq!(n.as_millis_floor(), 2);
        assert_eq!(Nanos::from_millis(2).as_millis_ceil(), 2);
    }
}
