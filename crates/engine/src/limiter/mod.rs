//! [`Limiter`]: the API users embed. It reads the clock, validates, and hands plain-data
//! requests to a [`Store`]; waiting is done here, with timers, never by polling the store.
//! [`AsyncLimiter`] is the same over an [`AsyncStore`](crate::AsyncStore) (Redis), for async
//! callers such as the server; the waits both use are written once, in `waits.rs`.

mod async_limiter;
mod waits;

pub use async_limiter::AsyncLimiter;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tollgate_core::{Barrier, BarrierStatus, Concurrency, LeaseDecision, Limit, Nanos};

use crate::clock::{Clock, SystemClock};
use crate::error::Error;
use crate::store::memory::MemoryStore;
use crate::store::{AcquireEntry, Acquired, LimitInfo, Store, Target};

/// The embeddable limiter: declared limits, atomic multi-key acquire, waits, refunds,
/// concurrency leases and barriers over one [`Store`]. Cheap to clone (shared inside).
///
/// ```
/// use tollgate::{AcquireEntry, Limiter};
/// use tollgate_core::{Gcra, RateLimit};
///
/// let limiter = Limiter::new();
/// // An API limit of 10 per second, where one call may cost several units.
/// limiter.upsert("stripe-api", RateLimit::Gcra(Gcra::new("10/s".parse()?, 10)?))?;
/// let batch = limiter.try_acquire(&[AcquireEntry::new("stripe-api", 4)])?;
/// assert!(batch.allowed);
/// assert_eq!(batch.decisions[0].remaining, 6);
/// let too_much = limiter.try_acquire(&[AcquireEntry::new("stripe-api", 7)])?;
/// assert!(!too_much.allowed); // a denial is a value; retry_after says when
/// assert!(too_much.retry_after().as_millis_ceil() <= 100);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Limiter<S: Store = MemoryStore> {
    inner: Arc<Inner<S>>,
}

struct Inner<S> {
    store: Arc<S>,
    clock: Arc<dyn Clock>,
    /// Woken at every barrier arrival made through this limiter (or its [`AsyncLimiter`]).
    barrier_changed: Arc<Notify>,
    lease_prefix: u64,
    lease_seq: AtomicU64,
}

impl<S: Store> Clone for Limiter<S> {
    fn clone(&self) -> Self {
        Limiter {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl Default for Limiter<MemoryStore> {
    fn default() -> Self {
        Limiter::new()
    }
}

impl Limiter<MemoryStore> {
    /// An in-memory limiter on the system clock.
    pub fn new() -> Limiter<MemoryStore> {
        Limiter::with_store(MemoryStore::new(), SystemClock::new())
    }
}

impl<S: Store> Limiter<S> {
    /// A limiter over `store`, reading time from `clock`.
    pub fn with_store(store: S, clock: impl Clock + 'static) -> Limiter<S> {
        // Random per limiter: several limiters (nodes) sharing one store must never hand out
        // the same lease id, even when created at the same instant.
        let lease_prefix = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(clock.now().as_nanos());
            h.write_u32(std::process::id());
            h.finish()
        };
        Limiter {
            inner: Arc::new(Inner {
                store: Arc::new(store),
                clock: Arc::new(clock),
                barrier_changed: Arc::new(Notify::new()),
                lease_prefix,
                lease_seq: AtomicU64::new(0),
            }),
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// The current time on this limiter's clock.
    pub fn now(&self) -> Nanos {
        self.inner.clock.now()
    }

    /// The same store, clock and barrier wake-ups, for async callers: what the server's
    /// direct acquires, leases and barriers use with the embedded engine.
    pub fn to_async(&self) -> AsyncLimiter
    where
        S: 'static,
    {
        self.to_async_over(Arc::clone(&self.inner.store) as Arc<dyn crate::AsyncStore>)
    }

    /// As [`Limiter::to_async`], over `store`: this limiter's store as another layer sees it
    /// (the engine's, journalling leases and barriers).
    pub(crate) fn to_async_over(&self, store: Arc<dyn crate::AsyncStore>) -> AsyncLimiter {
        AsyncLimiter::with_parts(
            store,
            Arc::clone(&self.inner.clock),
            Arc::clone(&self.inner.barrier_changed),
        )
    }

    /// The store, shared.
    pub(crate) fn shared_store(&self) -> Arc<S> {
        Arc::clone(&self.inner.store)
    }

    /// Declares or redefines the limit `key`. Redefining keeps its usage: a lower limit applies
    /// at once, and so does a higher one.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; store failures.
    pub fn upsert(&self, key: &str, limit: impl Into<Limit>) -> Result<(), Error> {
        self.inner.store.put_limit(key, limit.into(), self.now())
    }

    /// Removes the limit `key`; returns whether it existed.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; store failures.
    pub fn remove(&self, key: &str) -> Result<bool, Error> {
        self.inner.store.remove_limit(key)
    }

    /// The declared limit `key` with its live state.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; store failures.
    pub fn get(&self, key: &str) -> Result<Option<LimitInfo>, Error> {
        self.inner.store.get_limit(key, self.now())
    }

    /// Every declared limit, and every dynamic key with state.
    ///
    /// # Errors
    /// Store failures.
    pub fn list(&self) -> Result<Vec<LimitInfo>, Error> {
        self.inner.store.list_limits(self.now())
    }

    /// Decides now, without waiting: all entries admitted and consumed, or none.
    ///
    /// # Errors
    /// [`Error::UnknownLimit`], [`Error::WrongAlgorithm`], [`Error::InsufficientCapacity`],
    /// [`Error::InvalidKey`], [`Error::ZeroUnits`], [`Error::EmptyRequest`]; store failures.
    /// A denial is `Ok` with `allowed == false`.
    pub fn try_acquire(&self, entries: &[AcquireEntry<'_>]) -> Result<Acquired, Error> {
        self.inner.store.acquire(entries, self.now())
    }

    /// Waits up to `max_wait` for all entries to be admitted together, sleeping until each
    /// denial's `retry_after` (no polling). Returns the denial at once when the wait it needs
    /// is longer than what is left of `max_wait`.
    ///
    /// # Errors
    /// As [`Limiter::try_acquire`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tollgate::Error> {
    /// use std::time::Duration;
    /// use tollgate::{AcquireEntry, Limiter, MemoryStore, TokioClock};
    /// use tollgate_core::{Gcra, Nanos, RateLimit};
    /// let limiter = Limiter::with_store(MemoryStore::new(), TokioClock::new(Nanos::from_secs(1_000)));
    /// limiter.upsert("spaced", RateLimit::Gcra(Gcra::new("10/s".parse()?, 1)?))?;
    /// let e = [AcquireEntry::new("spaced", 1)];
    /// assert!(limiter.acquire(&e, Duration::from_secs(1)).await?.allowed);
    /// let started = limiter.now();
    /// assert!(limiter.acquire(&e, Duration::from_secs(1)).await?.allowed);
    /// assert_eq!(limiter.now() - started, Nanos::from_millis(100)); // slept exactly until admitted
    /// # Ok(()) }
    /// ```
    pub async fn acquire(
        &self,
        entries: &[AcquireEntry<'_>],
        max_wait: Duration,
    ) -> Result<Acquired, Error> {
        waits::acquire(&*self.inner.store, &*self.inner.clock, entries, max_wait).await
    }

    /// Gives units back to each entry's key (a run that did not use what it took).
    ///
    /// # Errors
    /// As [`Limiter::try_acquire`], except capacity.
    pub fn refund(&self, entries: &[AcquireEntry<'_>]) -> Result<(), Error> {
        self.inner.store.refund(entries, self.now())
    }

    fn next_lease_id(&self) -> String {
        let seq = self.inner.lease_seq.fetch_add(1, Ordering::Relaxed);
        format!("{:x}-{seq:x}", self.inner.lease_prefix)
    }

    /// Tries to take a concurrency slot now. `Ok(Ok(guard))` holds the slot until the guard is
    /// dropped or released; `Ok(Err(decision))` is a denial with its `retry_after`.
    ///
    /// # Errors
    /// Unknown or wrong-kind key; store failures.
    ///
    /// ```
    /// use tollgate::{Limiter, Target};
    /// use tollgate_core::{Concurrency, Period};
    /// let limiter = Limiter::new();
    /// limiter.upsert("db", Concurrency::new(5, Period::from_secs(30)?)?)?;
    /// let guards: Vec<_> = (0..5).map(|_| limiter.try_lease(Target::Static("db"), "worker-1").unwrap().unwrap()).collect();
    /// assert!(limiter.try_lease(Target::Static("db"), "worker-2")?.is_err()); // 5 held
    /// drop(guards); // released on drop
    /// assert!(limiter.try_lease(Target::Static("db"), "worker-2")?.is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_lease(
        &self,
        target: Target<'_, Concurrency>,
        holder: &str,
    ) -> Result<Result<LeaseGuard<S>, LeaseDecision>, Error> {
        self.try_lease_for(target, holder, None)
    }

    /// As [`Limiter::try_lease`], with a lease time to live other than the limit's `lease_ttl`.
    ///
    /// # Errors
    /// As [`Limiter::try_lease`].
    pub fn try_lease_for(
        &self,
        target: Target<'_, Concurrency>,
        holder: &str,
        ttl: Option<Duration>,
    ) -> Result<Result<LeaseGuard<S>, LeaseDecision>, Error> {
        let id = self.next_lease_id();
        let ttl = ttl.map(Nanos::from);
        let d = self
            .inner
            .store
            .lease_acquire(target, &id, holder, ttl, self.now())?;
        if !d.acquired {
            return Ok(Err(d));
        }
        Ok(Ok(LeaseGuard {
            limiter: self.clone(),
            key: target.key().to_owned(),
            inline: match target {
                Target::Static(_) => None,
                Target::Dynamic(_, c) => Some(c),
            },
            id,
            expires_at: d.expires_at,
            ttl,
            released: false,
        }))
    }

    /// Waits up to `max_wait` for a concurrency slot, sleeping until the earliest lease would
    /// lapse and re-trying then. A release by another holder of this limiter wakes it earlier
    /// only at that re-try; use short lease TTLs for prompt hand-over.
    ///
    /// # Errors
    /// As [`Limiter::try_lease`].
    pub async fn lease(
        &self,
        target: Target<'_, Concurrency>,
        holder: &str,
        max_wait: Duration,
    ) -> Result<Result<LeaseGuard<S>, LeaseDecision>, Error> {
        let deadline = Instant::now() + max_wait;
        loop {
            match self.try_lease(target, holder)? {
                Ok(guard) => return Ok(Ok(guard)),
                Err(d) => {
                    let wait = d.retry_after.as_duration().max(Duration::from_nanos(1));
                    if Instant::now() + wait > deadline {
                        return Ok(Err(d));
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Creates barrier `key` for `parties` unless a live one exists; returns its status.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; store failures.
    pub fn create_barrier(&self, key: &str, barrier: Barrier) -> Result<BarrierStatus, Error> {
        self.inner.store.barrier_create(key, barrier, self.now())
    }

    /// Arrives at barrier `key` and waits up to `max_wait` for every party. Returns `true` when
    /// released, `false` on timeout.
    ///
    /// # Errors
    /// [`tollgate_core::Error::BarrierMissing`] or `BarrierExpired` (as [`Error::Core`]): a
    /// missing or expired barrier is never a silent pass.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tollgate::Error> {
    /// use std::time::Duration;
    /// use tollgate::Limiter;
    /// use tollgate_core::{Barrier, Period};
    /// let limiter = Limiter::new();
    /// limiter.create_barrier("batch-42", Barrier::new(5, Period::MINUTE)?)?;
    /// let parties: Vec<_> = (0..5)
    ///     .map(|_| {
    ///         let l = limiter.clone();
    ///         tokio::spawn(async move { l.wait_barrier("batch-42", Duration::from_secs(5)).await })
    ///     })
    ///     .collect();
    /// for p in parties {
    ///     assert!(p.await.expect("task")?); // all five released together
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn wait_barrier(&self, key: &str, max_wait: Duration) -> Result<bool, Error> {
        waits::barrier(
            &*self.inner.store,
            &*self.inner.clock,
            &self.inner.barrier_changed,
            key,
            max_wait,
        )
        .await
    }

    /// Forgets idle dynamic keys and expired barriers now; returns how many.
    ///
    /// # Errors
    /// Store failures.
    pub fn sweep(&self) -> Result<usize, Error> {
        self.inner.store.sweep(self.now())
    }
}

/// A held concurrency slot. Released when dropped (or by [`LeaseGuard::release`]); expires on
/// its own unless renewed before `expires_at`.
pub struct LeaseGuard<S: Store = MemoryStore> {
    limiter: Limiter<S>,
    key: String,
    inline: Option<Concurrency>,
    id: String,
    expires_at: Nanos,
    ttl: Option<Nanos>,
    released: bool,
}

impl<S: Store> LeaseGuard<S> {
    fn target(&self) -> Target<'_, Concurrency> {
        match self.inline {
            None => Target::Static(&self.key),
            Some(c) => Target::Dynamic(&self.key, c),
        }
    }

    /// The lease id (unique per limiter).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// When the lease lapses unless renewed.
    pub fn expires_at(&self) -> Nanos {
        self.expires_at
    }

    /// Extends the lease by its time to live from now.
    ///
    /// # Errors
    /// [`tollgate_core::Error::LeaseNotHeld`] when it already expired (its slot may be someone
    /// else's); store failures.
    pub fn renew(&mut self) -> Result<Nanos, Error> {
        let limiter = self.limiter.clone();
        self.expires_at =
            limiter
                .inner
                .store
                .lease_renew(self.target(), &self.id, self.ttl, limiter.now())?;
        Ok(self.expires_at)
    }

    /// Releases the slot now; returns whether the lease was still live.
    ///
    /// # Errors
    /// Store failures.
    pub fn release(mut self) -> Result<bool, Error> {
        self.released = true;
        let limiter = self.limiter.clone();
        limiter
            .inner
            .store
            .lease_release(self.target(), &self.id, limiter.now())
    }
}

impl<S: Store> Drop for LeaseGuard<S> {
    fn drop(&mut self) {
        if !self.released {
            let limiter = self.limiter.clone();
            // A failed release is not lost: the lease lapses at its expiry.
            let _ = limiter
                .inner
                .store
                .lease_release(self.target(), &self.id, limiter.now());
        }
    }
}
