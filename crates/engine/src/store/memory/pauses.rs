//! Paused keys (docs/design.md §3.13): a key paused until an instant denies every acquire until
//! then. Kept apart from the shards, behind one flag, so that acquires pay one relaxed load
//! while nothing is paused.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;
use tollgate_core::Nanos;

use crate::store::{Namespace, Pause};

#[derive(Default)]
pub(super) struct Pauses {
    /// Whether `until` holds any entry (live or ended): the acquire path's only cost otherwise.
    any: AtomicBool,
    /// When each key's pause ends: static keys, then dynamic ones (looked up by `&str`, so an
    /// acquire allocates nothing while some key is paused).
    until: RwLock<[BTreeMap<String, Nanos>; 2]>,
}

fn slot(ns: Namespace) -> usize {
    usize::from(ns == Namespace::Dynamic)
}

impl Pauses {
    /// How much longer `key` stays paused at `now`, if it is.
    #[inline]
    pub(super) fn left(&self, ns: Namespace, key: &str, now: Nanos) -> Option<Nanos> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        let until = *self.until.read()[slot(ns)].get(key)?;
        (until > now).then(|| until - now)
    }

    /// Pauses `key` until `until`, or keeps a pause that ends later; returns the end in force.
    pub(super) fn pause(&self, ns: Namespace, key: &str, until: Nanos, now: Nanos) -> Nanos {
        let mut maps = self.until.write();
        for map in maps.iter_mut() {
            map.retain(|_, t| *t > now);
        }
        let end = maps[slot(ns)].entry(key.to_owned()).or_insert(until);
        *end = (*end).max(until);
        let end = *end;
        self.any.store(true, Ordering::Relaxed);
        end
    }

    /// Ends `key`'s pause; whether one was in force.
    pub(super) fn resume(&self, ns: Namespace, key: &str, now: Nanos) -> bool {
        let mut maps = self.until.write();
        let was = maps[slot(ns)].remove(key).is_some_and(|t| t > now);
        for map in maps.iter_mut() {
            map.retain(|_, t| *t > now);
        }
        self.any
            .store(maps.iter().any(|m| !m.is_empty()), Ordering::Relaxed);
        was
    }

    /// The pauses in force at `now`, by namespace and key.
    pub(super) fn list(&self, now: Nanos) -> Vec<Pause> {
        let maps = self.until.read();
        [Namespace::Static, Namespace::Dynamic]
            .into_iter()
            .flat_map(|ns| {
                maps[slot(ns)]
                    .iter()
                    .filter(|(_, t)| **t > now)
                    .map(move |(key, t)| Pause {
                        namespace: ns,
                        key: key.clone(),
                        until: *t,
                    })
            })
            .collect()
    }
}
