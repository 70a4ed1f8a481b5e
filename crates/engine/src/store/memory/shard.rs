//! The sharded table: which shard a key lives in, one shard's table and clock, and locking one
//! shard or several (in ascending order, so overlapping key sets cannot deadlock).

use std::hash::{BuildHasher, Hasher};

use hashbrown::HashTable;
use parking_lot::MutexGuard;
use smallvec::SmallVec;
use tollgate_core::Nanos;

use super::MemoryStore;
use super::bindings::Bindings;
use super::key::is_slot_of;
use super::slot::Slot;
use crate::store::Namespace;

/// Shards: a power of two, enough that 2 to 64 threads rarely meet on one lock.
pub(super) const SHARDS: usize = 64;

/// Keeps each shard's lock on its own cache line, so threads on neighbouring shards don't
/// contend through false sharing.
#[repr(align(128))]
pub(super) struct Padded<T>(pub(super) T);

/// The shards one request holds, by shard index, ascending.
type Guards<'a> = SmallVec<[(usize, MutexGuard<'a, Shard>); 4]>;

pub(super) struct Shard {
    pub(super) table: HashTable<Slot>,
    /// The limits the table's compact slots refer to.
    pub(super) bindings: Bindings,
    /// The latest `now` this shard has decided at: a clock that steps back is treated as
    /// standing still, so a key forgotten as fresh can never be re-opened by earlier times.
    pub(super) high_water: Nanos,
    pub(super) sweep_at: usize,
}

impl Shard {
    pub(super) fn find(&self, hash: u64, ns: Namespace, key: &str) -> Option<&Slot> {
        self.table.find(hash, |s| is_slot_of(s, ns, key))
    }

    pub(super) fn remove(&mut self, hash: u64, ns: Namespace, key: &str) -> Option<Slot> {
        self.table
            .find_entry(hash, |s| is_slot_of(s, ns, key))
            .ok()
            .map(|e| e.remove().0)
    }

    /// Moves the shard's time forward; returns the time to decide at. Every operation starts
    /// with it, so it is also where unused bindings are collected when due.
    #[inline]
    pub(super) fn observe(&mut self, now: Nanos) -> Nanos {
        if self.bindings.due {
            self.collect_bindings();
        }
        self.high_water = self.high_water.max(now);
        self.high_water
    }
}

impl MemoryStore {
    pub(super) fn hash(&self, ns: Namespace, key: &str) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write_u8(ns as u8);
        h.write(key.as_bytes());
        h.finish()
    }

    pub(super) fn shard_of(hash: u64) -> usize {
        // High-middle bits: hashbrown uses the low bits for the bucket and the top 7 for tags.
        ((hash >> 32) as usize) & (SHARDS - 1)
    }

    pub(super) fn lock(&self, hash: u64) -> MutexGuard<'_, Shard> {
        self.shards[Self::shard_of(hash)].0.lock()
    }

    /// Shards locked for one request, in ascending order, with the request's decision time.
    pub(super) fn lock_many(
        &self,
        shard_ids: &mut SmallVec<[usize; 4]>,
        now: Nanos,
    ) -> (Guards<'_>, Nanos) {
        shard_ids.sort_unstable();
        shard_ids.dedup();
        let mut guards: Guards<'_> = shard_ids
            .iter()
            .map(|&i| (i, self.shards[i].0.lock()))
            .collect();
        let at = guards
            .iter()
            .map(|(_, g)| g.high_water)
            .max()
            .unwrap_or(now)
            .max(now);
        for (_, g) in &mut guards {
            g.observe(at);
        }
        (guards, at)
    }
}

pub(super) fn guard_for<'g, 'a>(
    guards: &'g mut [(usize, MutexGuard<'a, Shard>)],
    shard: usize,
) -> &'g mut Shard {
    // Invariant: `lock_many` locked every shard a prepared key maps to.
    let i = guards
        .iter()
        .position(|(i, _)| *i == shard)
        .unwrap_or_else(|| unreachable!("shard not locked"));
    &mut guards[i].1
}

#[cfg(test)]
mod tests {
    use crate::store::memory::{MemoryStore, gcra};
    use crate::store::{AcquireEntry, Store};
    use tollgate_core::Nanos;

    #[test]
    fn a_clock_stepping_back_is_treated_as_standing_still() {
        // Why: a key forgotten as fresh must not be re-opened by an earlier time, so each shard
        // decides at the latest time it has seen.
        let store = MemoryStore::new();
        let e = [AcquireEntry::dynamic("k", gcra("1/s", 1), 1)];
        assert!(store.acquire(&e, Nanos::from_secs(100)).unwrap().allowed);
        let back = store.acquire(&e, Nanos::from_secs(99)).unwrap();
        assert!(!back.allowed);
        assert_eq!(
            back.decisions[0].retry_after,
            Nanos::from_secs(1),
            "decided at 100 s, not 99 s"
        );
    }
}
