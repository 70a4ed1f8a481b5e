//! [`AsyncLimiter`]: the limiter over an [`AsyncStore`], for async callers.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tollgate_core::{Barrier, BarrierStatus, Concurrency, LeaseDecision, Limit, Nanos};

use super::waits;
use crate::clock::Clock;
use crate::error::Error;
use crate::store::{AcquireEntry, Acquired, AsyncStore, LimitInfo, Target};

/// Declared limits, atomic multi-key acquires, waits, refunds, concurrency leases and barriers
/// over an [`AsyncStore`]: every store call is awaited, so a store that does network IO
/// (Redis) never blocks a runtime thread. Cheap to clone (shared inside).
///
/// Unlike [`Limiter`](super::Limiter) it hands out no lease guards: the caller names its
/// lease ids and releases them (the server encodes them in its lease tokens).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use tollgate::{AcquireEntry, AsyncLimiter, MemoryStore, SystemClock};
/// use tollgate_core::{Gcra, RateLimit};
///
/// // Any store: `MemoryStore` here, `tollgate_redis::RedisStore` for many nodes.
/// let limiter = AsyncLimiter::new(Arc::new(MemoryStore::new()), SystemClock::new());
/// limiter.upsert("stripe-api", RateLimit::Gcra(Gcra::new("10/s".parse()?, 10)?)).await?;
/// let batch = limiter.try_acquire(&[AcquireEntry::new("stripe-api", 4)]).await?;
/// assert!(batch.allowed);
/// assert_eq!(batch.decisions[0].remaining, 6);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AsyncLimiter {
    store: Arc<dyn AsyncStore>,
    clock: Arc<dyn Clock>,
    /// Woken at every barrier arrival made through this limiter.
    barrier_changed: Arc<Notify>,
}

impl std::fmt::Debug for AsyncLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncLimiter").finish_non_exhaustive()
    }
}

impl AsyncLimiter {
    /// A limiter over `store`, reading time from `clock`.
    pub fn new(store: Arc<dyn AsyncStore>, clock: impl Clock + 'static) -> AsyncLimiter {
        AsyncLimiter::with_parts(store, Arc::new(clock), Arc::new(Notify::new()))
    }

    pub(super) fn with_parts(
        store: Arc<dyn AsyncStore>,
        clock: Arc<dyn Clock>,
        barrier_changed: Arc<Notify>,
    ) -> AsyncLimiter {
        AsyncLimiter {
            store,
            clock,
            barrier_changed,
        }
    }

    /// The store.
    pub fn store(&self) -> &dyn AsyncStore {
        &*self.store
    }

    /// The current time on this limiter's clock.
    pub fn now(&self) -> Nanos {
        self.clock.now()
    }

    /// Declares or redefines the limit `key` (see [`Limiter::upsert`](super::Limiter::upsert)).
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; store failures.
    pub async fn upsert(&self, key: &str, limit: impl Into<Limit>) -> Result<(), Error> {
        self.store.put_limit(key, limit.into(), self.now()).await
    }

    /// Removes the limit `key`; returns whether it existed.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; store failures.
    pub async fn remove(&self, key: &str) -> Result<bool, Error> {
        self.store.remove_limit(key).await
    }

    /// The declared limit `key` with its live state.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; store failures.
    pub async fn get(&self, key: &str) -> Result<Option<LimitInfo>, Error> {
        self.store.get_limit(key, self.now()).await
    }

    /// Every declared limit, and every dynamic key with state.
    ///
    /// # Errors
    /// Store failures.
    pub async fn list(&self) -> Result<Vec<LimitInfo>, Error> {
        self.store.list_limits(self.now()).await
    }

    /// Decides now, without waiting: all entries admitted and consumed, or none.
    ///
    /// # Errors
    /// As [`Limiter::try_acquire`](super::Limiter::try_acquire).
    pub async fn try_acquire(&self, entries: &[AcquireEntry<'_>]) -> Result<Acquired, Error> {
        self.store.acquire(entries, self.now()).await
    }

    /// Waits up to `max_wait` for all entries to be admitted together (see
    /// [`Limiter::acquire`](super::Limiter::acquire)).
    ///
    /// # Errors
    /// As [`AsyncLimiter::try_acquire`].
    pub async fn acquire(
        &self,
        entries: &[AcquireEntry<'_>],
        max_wait: Duration,
    ) -> Result<Acquired, Error> {
        waits::acquire(&*self.store, &*self.clock, entries, max_wait).await
    }

    /// Gives units back to each entry's key.
    ///
    /// # Errors
    /// As [`AsyncLimiter::try_acquire`], except capacity.
    pub async fn refund(&self, entries: &[AcquireEntry<'_>]) -> Result<(), Error> {
        self.store.refund(entries, self.now()).await
    }

    /// Takes a concurrency slot for lease `lease_id` held by `holder` for `ttl` (default: the
    /// limit's `lease_ttl`); a denial is `Ok` with `acquired == false`.
    ///
    /// # Errors
    /// Unknown or wrong-kind key; store failures.
    pub async fn lease_acquire(
        &self,
        target: Target<'_, Concurrency>,
        lease_id: &str,
        holder: &str,
        ttl: Option<Nanos>,
    ) -> Result<LeaseDecision, Error> {
        self.store
            .lease_acquire(target, lease_id, holder, ttl, self.now())
            .await
    }

    /// Extends a live lease; returns its new expiry.
    ///
    /// # Errors
    /// [`tollgate_core::Error::LeaseNotHeld`] (as [`Error::Core`]) for a lapsed, released or
    /// unknown lease; unknown key; store failures.
    pub async fn lease_renew(
        &self,
        target: Target<'_, Concurrency>,
        lease_id: &str,
        ttl: Option<Nanos>,
    ) -> Result<Nanos, Error> {
        self.store
            .lease_renew(target, lease_id, ttl, self.now())
            .await
    }

    /// Releases a lease; returns whether it was live.
    ///
    /// # Errors
    /// Unknown key; store failures.
    pub async fn lease_release(
        &self,
        target: Target<'_, Concurrency>,
        lease_id: &str,
    ) -> Result<bool, Error> {
        self.store.lease_release(target, lease_id, self.now()).await
    }

    /// Creates barrier `key` for `parties` unless a live one exists; returns its status.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; store failures.
    pub async fn create_barrier(
        &self,
        key: &str,
        barrier: Barrier,
    ) -> Result<BarrierStatus, Error> {
        self.store.barrier_create(key, barrier, self.now()).await
    }

    /// Barrier `key`'s status, without arriving.
    ///
    /// # Errors
    /// A missing or expired barrier (as [`Error::Core`]); store failures.
    pub async fn barrier_status(&self, key: &str) -> Result<BarrierStatus, Error> {
        self.store.barrier_status(key, self.now()).await
    }

    /// Arrives at barrier `key` and waits up to `max_wait` for every party (see
    /// [`Limiter::wait_barrier`](super::Limiter::wait_barrier)).
    ///
    /// # Errors
    /// As [`Limiter::wait_barrier`](super::Limiter::wait_barrier).
    pub async fn wait_barrier(&self, key: &str, max_wait: Duration) -> Result<bool, Error> {
        waits::barrier(
            &*self.store,
            &*self.clock,
            &self.barrier_changed,
            key,
            max_wait,
        )
        .await
    }

    /// Forgets idle dynamic keys and expired barriers now; returns how many.
    ///
    /// # Errors
    /// Store failures.
    pub async fn sweep(&self) -> Result<usize, Error> {
        self.store.sweep(self.now()).await
    }
}
