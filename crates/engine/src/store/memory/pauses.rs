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
    until: RwLock<BTreeMap<(Namespace, String), Nanos>>,
}

impl Pauses {
    /// How much longer `key` stays paused at `now`, if it is.
    #[inline]
    pub(super) fn left(&self, ns: Namespace, key: &str, now: Nanos) -> Option<Nanos> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        // A BTreeMap lookup by a borrowed (Namespace, &str) needs an owned key; pauses are few
        // and the lookup only happens while some exist.
        let until = *self.until.read().get(&(ns, key.to_owned()))?;
        (until > now).then(|| until - now)
    }

    /// Pauses `key` until `until`, or keeps a pause that ends later; returns the end in force.
    pub(super) fn pause(&self, ns: Namespace, key: &str, until: Nanos, now: Nanos) -> Nanos {
        let mut map = self.until.write();
        map.retain(|_, t| *t > now);
        let end = map.entry((ns, key.to_owned())).or_insert(until);
        *end = (*end).max(until);
        let end = *end;
        self.any.store(true, Ordering::Relaxed);
        end
    }

    /// Ends `key`'s pause; whether one was in force.
    pub(super) fn resume(&self, ns: Namespace, key: &str, now: Nanos) -> bool {
        let mut map = self.until.write();
        let was = map.remove(&(ns, key.to_owned())).is_some_and(|t| t > now);
        map.retain(|_, t| *t > now);
        self.any.store(!map.is_empty(), Ordering::Relaxed);
        was
    }

    /// The pauses in force at `now`.
    pub(super) fn list(&self, now: Nanos) -> Vec<Pause> {
        self.until
            .read()
            .iter()
            .filter(|(_, t)| **t > now)
            .map(|((ns, key), t)| Pause {
                namespace: *ns,
                key: key.clone(),
                until: *t,
            })
            .collect()
    }
}
