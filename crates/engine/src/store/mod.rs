//! The [`Store`] trait: what a limit-state store must do, and the plain-data requests it takes.
//!
//! The core decides; a store only makes each decision atomic (and, for some stores, durable
//! or shared). Every store passes the same conformance suite (`testkit` feature). Stores that do
//! network IO implement [`AsyncStore`] instead; every `Store` is an `AsyncStore` too.

mod async_store;
pub(crate) mod memory;

pub use async_store::{AsyncStore, StoreFuture};

use smallvec::SmallVec;
use tollgate_core::{
    Barrier, BarrierStatus, Concurrency, Decision, LeaseDecision, Limit, LimitState, Nanos,
    RateLimit, Usage,
};

use crate::error::{Error, check_key};

/// The two key namespaces of docs/design.md §3, plus barriers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Namespace {
    /// Limits declared up front (`PUT /v1/limits/{key}`), persisted as definitions.
    Static,
    /// Keys rendered per run or carrying their definition inline: state only, last writer's
    /// parameters win, forgotten once fresh.
    Dynamic,
    /// Barriers, by key.
    Barrier,
}

/// Which limit a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a, L> {
    /// A declared limit, looked up by key in the static namespace.
    Static(&'a str),
    /// A dynamic key with the parameters this request brings (upserted; usage kept).
    Dynamic(&'a str, L),
}

impl<'a, L> Target<'a, L> {
    /// The key.
    pub fn key(&self) -> &'a str {
        match self {
            Target::Static(k) | Target::Dynamic(k, _) => k,
        }
    }

    /// The namespace the key lives in.
    pub fn namespace(&self) -> Namespace {
        match self {
            Target::Static(_) => Namespace::Static,
            Target::Dynamic(..) => Namespace::Dynamic,
        }
    }
}

/// One key and the units wanted from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcquireEntry<'a> {
    /// The limit.
    pub target: Target<'a, RateLimit>,
    /// Units wanted (≥ 1).
    pub units: u32,
}

impl<'a> AcquireEntry<'a> {
    /// `units` from the declared limit `key`.
    pub fn new(key: &'a str, units: u32) -> AcquireEntry<'a> {
        AcquireEntry {
            target: Target::Static(key),
            units,
        }
    }

    /// `units` from the dynamic key `key`, whose parameters are `limit`.
    pub fn dynamic(key: &'a str, limit: RateLimit, units: u32) -> AcquireEntry<'a> {
        AcquireEntry {
            target: Target::Dynamic(key, limit),
            units,
        }
    }
}

/// The answer to an atomic multi-key acquire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquired {
    /// All entries admitted (and consumed) — or none consumed.
    pub allowed: bool,
    /// One decision per entry, in request order. Entries naming the same key share one
    /// decision for their summed units. When the request is denied, the decisions of keys
    /// that would have admitted say so, but nothing was consumed from them.
    pub decisions: SmallVec<[Decision; 4]>,
}

impl Acquired {
    /// For a denial: the longest `retry_after` among the entries that were denied.
    pub fn retry_after(&self) -> Nanos {
        self.decisions
            .iter()
            .filter(|d| !d.allowed)
            .map(|d| d.retry_after)
            .max()
            .unwrap_or(Nanos::ZERO)
    }

    /// The index of the first denied entry: the key a request waits on.
    pub fn first_denied(&self) -> Option<usize> {
        self.decisions.iter().position(|d| !d.allowed)
    }
}

/// Checks an acquire or refund request before any store looks at it: at least one entry,
/// valid keys, units of at least 1. Every store applies it, so they refuse alike.
///
/// # Errors
/// [`Error::EmptyRequest`], [`Error::InvalidKey`], [`Error::ZeroUnits`].
pub fn validate_entries(entries: &[AcquireEntry<'_>]) -> Result<(), Error> {
    if entries.is_empty() {
        return Err(Error::EmptyRequest);
    }
    for e in entries {
        check_key(e.target.key())?;
        if e.units == 0 {
            return Err(Error::ZeroUnits {
                key: e.target.key().to_owned(),
            });
        }
    }
    Ok(())
}

/// What a key holds now, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateView {
    /// A rate limit's usage.
    Rate(Usage),
    /// A concurrency limit's live leases.
    Concurrency {
        /// Live leases.
        live: u64,
        /// The limit.
        limit: u64,
    },
    /// A barrier.
    Barrier(BarrierStatus),
}

/// One key in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitInfo {
    /// The key.
    pub key: String,
    /// Static (declared) or dynamic.
    pub namespace: Namespace,
    /// Its definition (for dynamic keys: the last request's parameters).
    pub limit: Limit,
    /// Its live state.
    pub state: StateView,
}

/// A limit-state store. All methods are atomic per call; `acquire` is atomic across every key
/// it names, all or nothing.
///
/// Times are passed in by the caller (the engine reads the [`Clock`](crate::Clock)); a store
/// must never admit extra when `now` is earlier than a time it has already seen.
pub trait Store: Send + Sync {
    /// Declares (or redefines) the static limit `key`. Usage is kept across a redefinition.
    ///
    /// # Errors
    /// Store failures only.
    fn put_limit(&self, key: &str, limit: Limit, now: Nanos) -> Result<(), Error>;

    /// Removes the static limit `key` and its state. Returns whether it existed.
    ///
    /// # Errors
    /// Store failures only.
    fn remove_limit(&self, key: &str) -> Result<bool, Error>;

    /// The static limit `key` with its live state.
    ///
    /// # Errors
    /// Store failures only.
    fn get_limit(&self, key: &str, now: Nanos) -> Result<Option<LimitInfo>, Error>;

    /// Dynamic key `key` with its live state (the parameters of its latest use), while it has
    /// state; `None` once it is fresh.
    ///
    /// # Errors
    /// Store failures only.
    fn get_dynamic(&self, key: &str, now: Nanos) -> Result<Option<LimitInfo>, Error> {
        Ok(self
            .list_limits(now)?
            .into_iter()
            .find(|i| i.namespace == Namespace::Dynamic && i.key == key))
    }

    /// Every static limit, and every dynamic key that has state, sorted by namespace and key.
    ///
    /// # Errors
    /// Store failures only.
    fn list_limits(&self, now: Nanos) -> Result<Vec<LimitInfo>, Error>;

    /// Decides every entry atomically: if all are admitted, all are consumed; otherwise
    /// nothing is. Entries naming the same key have their units summed.
    ///
    /// # Errors
    /// [`Error::UnknownLimit`], [`Error::WrongAlgorithm`], [`Error::InsufficientCapacity`]
    /// (nothing consumed), store failures.
    fn acquire(&self, entries: &[AcquireEntry<'_>], now: Nanos) -> Result<Acquired, Error>;

    /// Gives units back to every entry's key (never below empty).
    ///
    /// # Errors
    /// As [`Store::acquire`], except capacity.
    fn refund(&self, entries: &[AcquireEntry<'_>], now: Nanos) -> Result<(), Error>;

    /// Takes a concurrency slot for lease `lease_id` held by `holder` for `ttl` (default: the
    /// limit's `lease_ttl`).
    ///
    /// # Errors
    /// Unknown or wrong-kind key, store failures.
    fn lease_acquire(
        &self,
        target: Target<'_, Concurrency>,
        lease_id: &str,
        holder: &str,
        ttl: Option<Nanos>,
        now: Nanos,
    ) -> Result<LeaseDecision, Error>;

    /// Extends a live lease; returns its new expiry.
    ///
    /// # Errors
    /// [`tollgate_core::Error::LeaseNotHeld`] (as [`Error::Core`]) for an expired, released or
    /// unknown lease; unknown key; store failures.
    fn lease_renew(
        &self,
        target: Target<'_, Concurrency>,
        lease_id: &str,
        ttl: Option<Nanos>,
        now: Nanos,
    ) -> Result<Nanos, Error>;

    /// Releases a lease; returns whether it was live. Never touches another lease.
    ///
    /// # Errors
    /// Unknown key, store failures.
    fn lease_release(
        &self,
        target: Target<'_, Concurrency>,
        lease_id: &str,
        now: Nanos,
    ) -> Result<bool, Error>;

    /// Creates barrier `key` unless a live one exists; returns its status.
    ///
    /// # Errors
    /// Store failures.
    fn barrier_create(
        &self,
        key: &str,
        barrier: Barrier,
        now: Nanos,
    ) -> Result<BarrierStatus, Error>;

    /// One party arrives at barrier `key`.
    ///
    /// # Errors
    /// [`tollgate_core::Error::BarrierMissing`] / `BarrierExpired` (as [`Error::Core`]).
    fn barrier_arrive(&self, key: &str, now: Nanos) -> Result<BarrierStatus, Error>;

    /// Barrier `key`'s status, without arriving.
    ///
    /// # Errors
    /// As [`Store::barrier_arrive`].
    fn barrier_status(&self, key: &str, now: Nanos) -> Result<BarrierStatus, Error>;

    /// Forgets dynamic keys and barriers whose state is fresh (or expired) at `now`; returns
    /// how many were removed. Stores may also do this on their own as they go.
    ///
    /// # Errors
    /// Store failures.
    fn sweep(&self, now: Nanos) -> Result<usize, Error>;

    /// Pauses `key` in `namespace` until `until` (docs/design.md §3.13): until then every
    /// acquire naming it is denied, with nothing consumed and `retry_after` no sooner than the
    /// pause ends. A pause in force that ends later is kept: pauses only ever extend here
    /// ([`Store::resume`] ends one early). Returns the end of the pause in force.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; store failures.
    fn pause(
        &self,
        namespace: Namespace,
        key: &str,
        until: Nanos,
        now: Nanos,
    ) -> Result<Nanos, Error>;

    /// Ends `key`'s pause now; returns whether one was in force.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; store failures.
    fn resume(&self, namespace: Namespace, key: &str, now: Nanos) -> Result<bool, Error>;

    /// Every pause in force at `now`, sorted by namespace and key.
    ///
    /// # Errors
    /// Store failures.
    fn pauses(&self, now: Nanos) -> Result<Vec<Pause>, Error>;

    /// Every rate state that is not fresh at `now`, static and dynamic, for a snapshot taken
    /// at a clean shutdown. Stores that are durable themselves (Redis) return nothing: there is
    /// nothing to carry over.
    ///
    /// # Errors
    /// Store failures.
    fn export_rate_states(&self, now: Nanos) -> Result<Vec<ExportedState>, Error> {
        let _ = now;
        Ok(Vec::new())
    }

    /// Puts a rate state back, replacing the key's current one (restoring a snapshot, or marking
    /// a key used after a crash). A static key must already be declared; otherwise this is
    /// [`Error::UnknownLimit`]. Stores that are durable themselves ignore it.
    ///
    /// # Errors
    /// As above; store failures.
    fn import_rate_state(
        &self,
        namespace: Namespace,
        key: &str,
        state: LimitState,
        now: Nanos,
    ) -> Result<(), Error> {
        let _ = (namespace, key, state, now);
        Ok(())
    }
}

/// A key's pause in force ([`Store::pause`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pause {
    /// Static or dynamic.
    pub namespace: Namespace,
    /// The key.
    pub key: String,
    /// When it ends.
    pub until: Nanos,
}

/// One key's rate state, as exported for a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedState {
    /// Static or dynamic.
    pub namespace: Namespace,
    /// The key.
    pub key: String,
    /// The state with the limit that wrote it.
    pub state: LimitState,
}

/// Any store, chosen at run time (the server picks memory or Redis from its flags).
pub type DynStore = std::sync::Arc<dyn Store>;

/// One store shared by several limiters (nodes in one process, tests).
impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    fn pause(
        &self,
        namespace: Namespace,
        key: &str,
        until: Nanos,
        now: Nanos,
    ) -> Result<Nanos, Error> {
        (**self).pause(namespace, key, until, now)
    }
    fn resume(&self, namespace: Namespace, key: &str, now: Nanos) -> Result<bool, Error> {
        (**self).resume(namespace, key, now)
    }
    fn get_dynamic(&self, key: &str, now: Nanos) -> Result<Option<LimitInfo>, Error> {
        (**self).get_dynamic(key, now)
    }
    fn pauses(&self, now: Nanos) -> Result<Vec<Pause>, Error> {
        (**self).pauses(now)
    }
    fn put_limit(&self, key: &str, limit: Limit, now: Nanos) -> Result<(), Error> {
        (**self).put_limit(key, limit, now)
    }
    fn remove_limit(&self, key: &str) -> Result<bool, Error> {
        (**self).remove_limit(key)
    }
    fn get_limit(&self, key: &str, now: Nanos) -> Result<Option<LimitInfo>, Error> {
        (**self).get_limit(key, now)
    }
    fn list_limits(&self, now: Nanos) -> Result<Vec<LimitInfo>, Error> {
        (**self).list_limits(now)
    }
    fn acquire(&self, entries: &[AcquireEntry<'_>], now: Nanos) -> Result<Acquired, Error> {
        (**self).acquire(entries, now)
    }
    fn refund(&self, entries: &[AcquireEntry<'_>], now: Nanos) -> Result<(), Error> {
        (**self).refund(entries, now)
    }
    fn lease_acquire(
        &self,
        target: Target<'_, Concurrency>,
        lease_id: &str,
        holder: &str,
        ttl: Option<Nanos>,
        now: Nanos,
    ) -> Result<LeaseDecision, Error> {
        (**self).lease_acquire(target, lease_id, holder, ttl, now)
    }
    fn lease_renew(
        &self,
        target: Target<'_, Concurrency>,
        lease_id: &str,
        ttl: Option<Nanos>,
        now: Nanos,
    ) -> Result<Nanos, Error> {
        (**self).lease_renew(target, lease_id, ttl, now)
    }
    fn lease_release(
        &self,
        target: Target<'_, Concurrency>,
        lease_id: &str,
        now: Nanos,
    ) -> Result<bool, Error> {
        (**self).lease_release(target, lease_id, now)
    }
    fn barrier_create(
        &self,
        key: &str,
        barrier: Barrier,
        now: Nanos,
    ) -> Result<BarrierStatus, Error> {
        (**self).barrier_create(key, barrier, now)
    }
    fn barrier_arrive(&self, key: &str, now: Nanos) -> Result<BarrierStatus, Error> {
        (**self).barrier_arrive(key, now)
    }
    fn barrier_status(&self, key: &str, now: Nanos) -> Result<BarrierStatus, Error> {
        (**self).barrier_status(key, now)
    }
    fn sweep(&self, now: Nanos) -> Result<usize, Error> {
        (**self).sweep(now)
    }
    fn export_rate_states(&self, now: Nanos) -> Result<Vec<ExportedState>, Error> {
        (**self).export_rate_states(now)
    }
    fn import_rate_state(
        &self,
        namespace: Namespace,
        key: &str,
        state: LimitState,
        now: Nanos,
    ) -> Result<(), Error> {
        (**self).import_rate_state(namespace, key, state, now)
    }
}
