//! The in-memory store: sharded hash tables behind short mutexes. The fast path.
//!
//! Why mutexes and not lock-free cells: a multi-key acquire must see and replace several keys'
//! states at once. Each shard is a `parking_lot` mutex held only for the decision itself (no IO,
//! no allocation on the hot path for existing keys); a request locks the shards it touches in
//! ascending shard order, so overlapping key sets in any order cannot deadlock.
//!
//! Idle dynamic keys are forgotten: a key whose state becomes fresh after a decision is removed
//! at once, and each shard sweeps out keys that went fresh on their own whenever it has doubled
//! in size since its last sweep (amortised O(1) per insert), so one-shot keys never accumulate.
//!
//! # Files
//! - [`shard`]: the sharded table, a shard's clock, and locking shards in order.
//! - [`slot`]: one key's 32-byte slot and the state it holds.
//! - [`key`]: key comparison in table probes.
//! - [`bindings`]: the interned limits compact slots refer to, and their collection.
//! - [`sweep`]: forgetting idle keys.
//! - [`acquire`]: rate-limit acquires (the fast path included) and refunds.
//! - [`leases`]: concurrency leases and barriers.
//! - [`limits`]: declared limits and the [`LimitInfo`] views of keys.
//! - [`export`]: export and import of rate state.
//! - [`pauses`]: paused keys.

mod acquire;
mod bindings;
mod export;
mod key;
mod leases;
mod limits;
mod pauses;
mod shard;
mod slot;
mod sweep;

use hashbrown::HashTable;
use parking_lot::Mutex;
use tollgate_core::{Barrier, BarrierStatus, Concurrency, LeaseDecision, Limit, LimitState, Nanos};

use super::{
    AcquireEntry, Acquired, ExportedState, LimitInfo, Namespace, Pause, Store, Target,
    validate_entries,
};
use crate::error::{Error, check_key};
use bindings::Bindings;
use shard::{Padded, SHARDS, Shard};
use sweep::MIN_SWEEP;

/// The in-memory store. Cheap to share behind an `Arc`; `Limiter` does that for you.
///
/// ```
/// use tollgate::{MemoryStore, Store, AcquireEntry};
/// use tollgate_core::{Gcra, Limit, Nanos, RateLimit};
/// let store = MemoryStore::new();
/// let now = Nanos::from_secs(1_000);
/// store.put_limit("api", Limit::Rate(RateLimit::Gcra(Gcra::new("1/s".parse()?, 1)?)), now)?;
/// assert!(store.acquire(&[AcquireEntry::new("api", 1)], now)?.allowed);
/// assert!(!store.acquire(&[AcquireEntry::new("api", 1)], now)?.allowed);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct MemoryStore {
    shards: Box<[Padded<Mutex<Shard>>]>,
    hasher: foldhash::fast::RandomState,
    pauses: pauses::Pauses,
}

impl Default for MemoryStore {
    fn default() -> MemoryStore {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore {
            shards: (0..SHARDS)
                .map(|_| {
                    Padded(Mutex::new(Shard {
                        table: HashTable::new(),
                        bindings: Bindings::default(),
                        high_water: Nanos::ZERO,
                        sweep_at: MIN_SWEEP,
                    }))
                })
                .collect(),
            hasher: foldhash::fast::RandomState::default(),
            pauses: pauses::Pauses::default(),
        }
    }

    /// Keys currently held in memory (static, dynamic and barriers), including ones that are
    /// fresh but not yet swept.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().table.len()).sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Store for MemoryStore {
    fn put_limit(&self, key: &str, limit: Limit, now: Nanos) -> Result<(), Error> {
        self.define(key, limit, now)
    }

    fn remove_limit(&self, key: &str) -> Result<bool, Error> {
        check_key(key)?;
        let hash = self.hash(Namespace::Static, key);
        Ok(self
            .lock(hash)
            .remove(hash, Namespace::Static, key)
            .is_some())
    }

    fn get_limit(&self, key: &str, now: Nanos) -> Result<Option<LimitInfo>, Error> {
        check_key(key)?;
        let hash = self.hash(Namespace::Static, key);
        let mut shard = self.lock(hash);
        let now = shard.observe(now);
        Ok(shard
            .find(hash, Namespace::Static, key)
            .and_then(|s| Self::info(s, &shard.bindings, now)))
    }

    fn get_dynamic(&self, key: &str, now: Nanos) -> Result<Option<LimitInfo>, Error> {
        check_key(key)?;
        let hash = self.hash(Namespace::Dynamic, key);
        let mut shard = self.lock(hash);
        let now = shard.observe(now);
        Ok(shard
            .find(hash, Namespace::Dynamic, key)
            .filter(|s| s.fresh_at() > now)
            .and_then(|s| Self::info(s, &shard.bindings, now)))
    }

    fn list_limits(&self, now: Nanos) -> Result<Vec<LimitInfo>, Error> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.0.lock();
            let now = shard.observe(now);
            out.extend(
                shard
                    .table
                    .iter()
                    .filter(|s| match s.ns() {
                        Namespace::Static => true,
                        Namespace::Dynamic => s.fresh_at() > now,
                        Namespace::Barrier => false,
                    })
                    .filter_map(|s| Self::info(s, &shard.bindings, now)),
            );
        }
        out.sort_by(|a, b| (a.namespace, &a.key).cmp(&(b.namespace, &b.key)));
        Ok(out)
    }

    fn acquire(&self, entries: &[AcquireEntry<'_>], now: Nanos) -> Result<Acquired, Error> {
        validate_entries(entries)?;
        // A paused key is decided on the general path, which writes nothing unless all are
        // admitted (a pause admits nothing).
        if let [entry] = entries
            && self
                .pauses
                .left(entry.target.namespace(), entry.target.key(), now)
                .is_none()
        {
            return self.acquire_one(entry, now);
        }
        self.acquire_many(entries, now)
    }

    fn refund(&self, entries: &[AcquireEntry<'_>], now: Nanos) -> Result<(), Error> {
        validate_entries(entries)?;
        self.refund_all(entries, now)
    }

    fn lease_acquire(
        &self,
        target: Target<'_, Concurrency>,
        lease_id: &str,
        holder: &str,
        ttl: Option<Nanos>,
        now: Nanos,
    ) -> Result<LeaseDecision, Error> {
        self.with_leases(target, now, |c, prior, now| {
            Ok(c.acquire(prior, now, lease_id, holder, ttl))
        })
    }

    fn lease_renew(
        &self,
        target: Target<'_, Concurrency>,
        lease_id: &str,
        ttl: Option<Nanos>,
        now: Nanos,
    ) -> Result<Nanos, Error> {
        self.with_leases(target, now, |c, prior, now| {
            Ok(c.renew(prior, now, lease_id, ttl)?)
        })
    }

    fn lease_release(
        &self,
        target: Target<'_, Concurrency>,
        lease_id: &str,
        now: Nanos,
    ) -> Result<bool, Error> {
        self.with_leases(target, now, |c, prior, now| {
            Ok(c.release(prior, now, lease_id))
        })
    }

    fn barrier_create(
        &self,
        key: &str,
        barrier: Barrier,
        now: Nanos,
    ) -> Result<BarrierStatus, Error> {
        self.with_barrier(key, now, |prior, now| match Barrier::status(prior, now) {
            Ok(status) => Ok((status, None)),
            Err(_) => {
                let s = barrier.create(now);
                Ok((Barrier::status(Some(&s), now)?, Some(s)))
            }
        })
    }

    fn barrier_arrive(&self, key: &str, now: Nanos) -> Result<BarrierStatus, Error> {
        self.with_barrier(key, now, |prior, now| {
            let (status, next) = Barrier::arrive(prior, now)?;
            Ok((status, Some(next)))
        })
    }

    fn barrier_status(&self, key: &str, now: Nanos) -> Result<BarrierStatus, Error> {
        self.with_barrier(key, now, |prior, now| {
            Ok((Barrier::status(prior, now)?, None))
        })
    }

    fn export_rate_states(&self, now: Nanos) -> Result<Vec<ExportedState>, Error> {
        self.export_rates(now)
    }

    fn import_rate_state(
        &self,
        namespace: Namespace,
        key: &str,
        state: LimitState,
        now: Nanos,
    ) -> Result<(), Error> {
        self.import_rate(namespace, key, state, now)
    }

    fn pause(
        &self,
        namespace: Namespace,
        key: &str,
        until: Nanos,
        now: Nanos,
    ) -> Result<Nanos, Error> {
        check_key(key)?;
        Ok(self.pauses.pause(namespace, key, until, now))
    }

    fn resume(&self, namespace: Namespace, key: &str, now: Nanos) -> Result<bool, Error> {
        check_key(key)?;
        Ok(self.pauses.resume(namespace, key, now))
    }

    fn pauses(&self, now: Nanos) -> Result<Vec<Pause>, Error> {
        Ok(self.pauses.list(now))
    }

    fn sweep(&self, now: Nanos) -> Result<usize, Error> {
        Ok(self
            .shards
            .iter()
            .map(|s| {
                let mut s = s.0.lock();
                let now = s.observe(now);
                s.sweep(now)
            })
            .sum())
    }
}

/// A gcra limit, for the tests.
#[cfg(test)]
fn gcra(rate: &str, burst: u64) -> tollgate_core::RateLimit {
    tollgate_core::RateLimit::Gcra(tollgate_core::Gcra::new(rate.parse().unwrap(), burst).unwrap())
}
