//! `barrier`: released once `parties` have arrived; expires after `ttl`.
//!
//! A missing or expired barrier is an error, never a silent pass: a waiter that times out or
//! comes too late must not proceed as if everyone had arrived.

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::period::Period;
use crate::time::Nanos;

/// The most parties one barrier may wait for.
pub const MAX_PARTIES: u32 = 1_000_000;

/// Parameters of a barrier.
///
/// ```
/// use tollgate_core::{Barrier, Nanos, Period};
/// let b = Barrier::new(2, Period::MINUTE)?;
/// let now = Nanos::from_secs(10);
/// let s = b.create(now);
/// let (first, s) = Barrier::arrive(Some(&s), now)?;
/// assert!(!first.released);
/// let (second, _) = Barrier::arrive(Some(&s), now)?;
/// assert!(second.released);
/// assert!(Barrier::arrive(None, now).is_err()); // no barrier: an error, not a pass
/// # Ok::<(), tollgate_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Barrier {
    parties: u32,
    ttl: Period,
}

/// One barrier's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BarrierState {
    /// Arrivals needed for release.
    pub parties: u32,
    /// Arrivals so far.
    pub arrived: u32,
    /// When the barrier stops existing (epoch nanoseconds).
    pub expires_at: Nanos,
}

/// Where a barrier stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BarrierStatus {
    /// All parties have arrived.
    pub released: bool,
    /// Arrivals so far.
    pub arrived: u32,
    /// Arrivals needed.
    pub parties: u32,
    /// When the barrier expires.
    pub expires_at: Nanos,
}

impl Barrier {
    /// A barrier for `parties` arrivals that lives `ttl`.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] when `parties` is 0 or above [`MAX_PARTIES`].
    pub fn new(parties: u32, ttl: Period) -> Result<Barrier, Error> {
        if parties == 0 || parties > MAX_PARTIES {
            return Err(Error::InvalidParameter {
                name: "parties",
                value: parties.to_string(),
                reason: format!("must be between 1 and {MAX_PARTIES}"),
            });
        }
        Ok(Barrier { parties, ttl })
    }

    /// Arrivals needed.
    pub const fn parties(&self) -> u32 {
        self.parties
    }

    /// How long a barrier lives.
    pub const fn ttl(&self) -> Period {
        self.ttl
    }

    /// A new barrier at `now`, with nobody arrived.
    pub fn create(&self, now: Nanos) -> BarrierState {
        BarrierState {
            parties: self.parties,
            arrived: 0,
            expires_at: now + self.ttl.as_nanos(),
        }
    }

    /// One party arrives. Arrivals after release keep it released.
    ///
    /// # Errors
    /// [`Error::BarrierMissing`] without a state, [`Error::BarrierExpired`] past its expiry.
    pub fn arrive(
        state: Option<&BarrierState>,
        now: Nanos,
    ) -> Result<(BarrierStatus, BarrierState), Error> {
        let s = Self::check(state, now)?;
        let next = BarrierState {
            arrived: s.arrived.saturating_add(1),
            ..*s
        };
        Ok((status(&next), next))
    }

    /// Where the barrier stands, without arriving.
    ///
    /// # Errors
    /// As [`Barrier::arrive`].
    pub fn status(state: Option<&BarrierState>, now: Nanos) -> Result<BarrierStatus, Error> {
        Self::check(state, now).map(status)
    }

    fn check(state: Option<&BarrierState>, now: Nanos) -> Result<&BarrierState, Error> {
        let s = state.ok_or(Error::BarrierMissing)?;
        if now >= s.expires_at {
            return Err(Error::BarrierExpired {
                expired_at: s.expires_at,
            });
        }
        Ok(s)
    }
}

fn status(s: &BarrierState) -> BarrierStatus {
    BarrierStatus {
        released: s.arrived >= s.parties,
        arrived: s.arrived,
        parties: s.parties,
        expires_at: s.expires_at,
    }
}
