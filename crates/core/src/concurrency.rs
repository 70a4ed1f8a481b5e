//! `concurrency`: at most `limit` live leases per key, each with its own holder and expiry.
//!
//! A lease is identified by an id the caller chooses (unique per key). An expired lease
//! frees only its own slot: renewing or releasing it afterwards never touches a lease
//! granted since.

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::period::Period;
use crate::time::Nanos;

/// The most leases one concurrency limit may allow.
pub const MAX_CONCURRENCY: u32 = 1_000_000;

/// Parameters of a concurrency limit.
///
/// ```
/// use tollgate_core::{Concurrency, Nanos, Period};
/// let c = Concurrency::new(1, Period::from_secs(30)?)?;
/// let now = Nanos::from_secs(1_000);
/// let (a, s) = c.acquire(None, now, "lease-a", "worker-1", None);
/// assert!(a.acquired);
/// let (b, _) = c.acquire(s.as_ref(), now, "lease-b", "worker-2", None);
/// assert!(!b.acquired);
/// assert_eq!(b.retry_after, Nanos::from_secs(30)); // when lease-a expires, unless released
/// # Ok::<(), tollgate_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Concurrency {
    limit: u32,
    lease_ttl: Period,
}

/// One live lease.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lease {
    /// Unique under its key.
    pub id: String,
    /// Who holds it (a worker id, for observability).
    pub holder: String,
    /// When it lapses unless renewed (epoch nanoseconds).
    pub expires_at: Nanos,
}

/// The leases of one key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct ConcurrencyState {
    /// Leases, possibly including expired ones not yet pruned.
    pub leases: Vec<Lease>,
}

/// The answer to a lease request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseDecision {
    /// Whether the lease was granted.
    pub acquired: bool,
    /// The limit.
    pub limit: u64,
    /// Free slots after this decision.
    pub remaining: u64,
    /// When granted: when the lease expires unless renewed.
    pub expires_at: Nanos,
    /// When denied: until the earliest live lease expires (a release may free a slot sooner).
    pub retry_after: Nanos,
}

impl Concurrency {
    /// At most `limit` live leases, each lasting `lease_ttl` unless renewed.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] when `limit` is 0 or above [`MAX_CONCURRENCY`].
    pub fn new(limit: u32, lease_ttl: Period) -> Result<Concurrency, Error> {
        if limit == 0 || limit > MAX_CONCURRENCY {
            return Err(Error::InvalidParameter {
                name: "limit",
                value: limit.to_string(),
                reason: format!("must be between 1 and {MAX_CONCURRENCY}"),
            });
        }
        Ok(Concurrency { limit, lease_ttl })
    }

    /// The most live leases.
    pub const fn limit(&self) -> u32 {
        self.limit
    }

    /// The default lease time to live.
    pub const fn lease_ttl(&self) -> Period {
        self.lease_ttl
    }

    fn live(state: Option<&ConcurrencyState>, now: Nanos) -> Vec<Lease> {
        state
            .map(|s| {
                s.leases
                    .iter()
                    .filter(|l| l.expires_at > now)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    fn wrap(leases: Vec<Lease>) -> Option<ConcurrencyState> {
        (!leases.is_empty()).then_some(ConcurrencyState { leases })
    }

    /// Tries to take a slot for lease `id` held by `holder`, lasting `ttl` (default: the
    /// limit's `lease_ttl`). Returns the decision and the state to store (`None`: no leases).
    /// Acquiring an id that is already live renews it.
    pub fn acquire(
        &self,
        state: Option<&ConcurrencyState>,
        now: Nanos,
        id: &str,
        holder: &str,
        ttl: Option<Nanos>,
    ) -> (LeaseDecision, Option<ConcurrencyState>) {
        let now = now.min(Nanos::LAST);
        let mut leases = Self::live(state, now);
        let expires_at = now + ttl.unwrap_or(self.lease_ttl.as_nanos());
        let limit = u64::from(self.limit);
        if let Some(existing) = leases.iter_mut().find(|l| l.id == id) {
            existing.expires_at = existing.expires_at.max(expires_at);
            let decision = LeaseDecision {
                acquired: true,
                limit,
                remaining: limit.saturating_sub(leases.len() as u64),
                expires_at: leases
                    .iter()
                    .find(|l| l.id == id)
                    .map_or(expires_at, |l| l.expires_at),
                retry_after: Nanos::ZERO,
            };
            return (decision, Self::wrap(leases));
        }
        if (leases.len() as u64) < limit {
            leases.push(Lease {
                id: id.to_owned(),
                holder: holder.to_owned(),
                expires_at,
            });
            let decision = LeaseDecision {
                acquired: true,
                limit,
                remaining: limit - leases.len() as u64,
                expires_at,
                retry_after: Nanos::ZERO,
            };
            (decision, Self::wrap(leases))
        } else {
            // With a lowered limit, several leases may have to lapse first.
            let mut expiries: Vec<Nanos> = leases.iter().map(|l| l.expires_at).collect();
            expiries.sort_unstable();
            let must_lapse = leases.len() - (limit as usize) + 1;
            let retry_at = expiries.get(must_lapse - 1).copied().unwrap_or(now);
            let decision = LeaseDecision {
                acquired: false,
                limit,
                remaining: 0,
                expires_at: Nanos::ZERO,
                retry_after: retry_at - now,
            };
            (decision, Self::wrap(leases))
        }
    }

    /// Extends live lease `id` to `now + ttl` (default `lease_ttl`). Returns the new expiry.
    ///
    /// # Errors
    /// [`Error::LeaseNotHeld`] when `id` is not live: released, expired (its slot may be
    /// someone else's by now), or never granted.
    pub fn renew(
        &self,
        state: Option<&ConcurrencyState>,
        now: Nanos,
        id: &str,
        ttl: Option<Nanos>,
    ) -> Result<(Nanos, Option<ConcurrencyState>), Error> {
        let now = now.min(Nanos::LAST);
        let mut leases = Self::live(state, now);
        let lease = leases
            .iter_mut()
            .find(|l| l.id == id)
            .ok_or_else(|| Error::LeaseNotHeld {
                lease_id: id.to_owned(),
            })?;
        lease.expires_at = now + ttl.unwrap_or(self.lease_ttl.as_nanos());
        let expires_at = lease.expires_at;
        Ok((expires_at, Self::wrap(leases)))
    }

    /// Releases lease `id`. Returns whether it was live, and the state to store. Releasing an
    /// expired or unknown lease changes nothing else.
    pub fn release(
        &self,
        state: Option<&ConcurrencyState>,
        now: Nanos,
        id: &str,
    ) -> (bool, Option<ConcurrencyState>) {
        let now = now.min(Nanos::LAST);
        let mut leases = Self::live(state, now);
        let before = leases.len();
        leases.retain(|l| l.id != id);
        (leases.len() < before, Self::wrap(leases))
    }

    /// Live leases at `now`.
    pub fn live_leases(&self, state: Option<&ConcurrencyState>, now: Nanos) -> Vec<Lease> {
        Self::live(state, now.min(Nanos::LAST))
    }
}

impl ConcurrencyState {
    /// When the last lease lapses: the state may be forgotten from then on.
    pub fn fresh_at(&self) -> Nanos {
        self.leases
            .iter()
            .map(|l| l.expires_at)
            .max()
            .unwrap_or(Nanos::ZERO)
    }
}
