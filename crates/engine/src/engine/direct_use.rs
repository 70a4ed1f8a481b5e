//! Direct use (`/v1/acquire`, outside the queue) journalled for crash recovery: a key's first
//! use committed at once, later uses snapshotted about every second. Separate because it is
//! the only durability path that does not go through the queue's journal.

use std::num::NonZeroU32;

use tollgate_core::{Limit, LimitState, Nanos, RateLimit};

use super::Engine;
use crate::db::{DirectUse, Write};
use crate::error::Error;
use crate::spec::{LimitSpec, LimitSpecExt};
use crate::store::{AcquireEntry, Namespace, Store, Target};

/// What the journal knows of one key's direct use.
pub(super) struct DirectEntry {
    /// Dynamic keys: the parameters of the last use.
    pub(super) limit: Option<RateLimit>,
    pub(super) last_used: Nanos,
    /// Used since the last snapshot.
    pub(super) dirty: bool,
}

impl<S: Store + 'static> Engine<S> {
    /// Records that `entries` were just consumed by direct use (`/v1/acquire`), so that after a
    /// crash those keys are treated as fully used for one period (docs/design.md §8.3). A key's first use
    /// is committed before this returns; later uses are snapshotted about every second.
    /// Without a database this does nothing.
    ///
    /// # Errors
    /// Store failures.
    pub async fn note_direct_use(&self, entries: &[AcquireEntry<'_>]) -> Result<(), Error> {
        let Some(db) = &self.inner.db else {
            return Ok(());
        };
        let now = self.inner.limiter.now();
        let mut writes = Vec::new();
        {
            let mut direct = self.inner.direct.lock();
            for e in entries {
                let (ns, key) = (e.target.namespace(), e.target.key());
                let limit = match e.target {
                    Target::Dynamic(_, l) => Some(l),
                    Target::Static(_) => None,
                };
                let keys = direct.entry(ns).or_default();
                if let Some(d) = keys.get_mut(key) {
                    d.last_used = now;
                    d.limit = limit;
                    d.dirty = true;
                    continue;
                }
                keys.insert(
                    key.to_owned(),
                    DirectEntry {
                        limit,
                        last_used: now,
                        dirty: false,
                    },
                );
                writes.push(Write::DirectUse(DirectUse {
                    namespace: ns,
                    key: key.to_owned(),
                    spec: limit.map(|l| LimitSpec::from_limit(&Limit::Rate(l))),
                    last_used: now,
                }));
            }
        }
        if !writes.is_empty() {
            db.submit(writes, now).await?;
        }
        Ok(())
    }

    /// Journals direct use since the last snapshot and forgets keys whose use has expired.
    pub(super) async fn snapshot_direct_use(&self) -> Result<(), Error> {
        let Some(db) = &self.inner.db else {
            return Ok(());
        };
        let now = self.inner.limiter.now();
        let store = self.inner.limiter.store();
        let mut writes = Vec::new();
        {
            let mut direct = self.inner.direct.lock();
            for (ns, keys) in direct.iter_mut() {
                keys.retain(|key, d| {
                    let limit = d.limit.or_else(|| direct_limit(store, *ns, key, None, now));
                    let alive = limit
                        .as_ref()
                        .and_then(|l| exhausted(l, d.last_used))
                        .is_some_and(|full| full.fresh_at() > now);
                    if !alive {
                        writes.push(Write::ForgetDirectUse {
                            namespace: *ns,
                            key: key.clone(),
                        });
                    } else if d.dirty {
                        d.dirty = false;
                        writes.push(Write::DirectUse(DirectUse {
                            namespace: *ns,
                            key: key.clone(),
                            spec: d.limit.map(|l| LimitSpec::from_limit(&Limit::Rate(l))),
                            last_used: d.last_used,
                        }));
                    }
                    alive
                });
            }
        } // the lock is released before the commit is awaited
        if !writes.is_empty() {
            db.submit(writes, now).await?;
        }
        Ok(())
    }
}

/// How often direct use is journalled.
pub(super) const SNAPSHOT_EVERY: Nanos = Nanos::SECOND;

/// The rate limit a directly used key has now: a static key's definition, or a dynamic key's
/// last parameters.
pub(super) fn direct_limit(
    store: &dyn Store,
    ns: Namespace,
    key: &str,
    spec: Option<&LimitSpec>,
    now: Nanos,
) -> Option<RateLimit> {
    match ns {
        Namespace::Static => match store.get_limit(key, now).ok()??.limit {
            Limit::Rate(r) => Some(r),
            _ => None,
        },
        _ => spec.and_then(|s| s.to_rate_limit().ok()),
    }
}

/// The state of `limit` fully used at `at`.
pub(super) fn exhausted(limit: &RateLimit, at: Nanos) -> Option<LimitState> {
    let units = NonZeroU32::new(u32::try_from(limit.capacity()).ok()?)?;
    limit.decide(None, at, units).ok()?.state
}
