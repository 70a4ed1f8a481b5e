//! Concurrency leases and barriers taken directly (`/v1/leases`, `/v1/barriers`), made durable
//! in the SQLite mode (docs/design.md §8.1, §8.3): every grant, renewal, release, creation and
//! arrival is committed before it is answered, and a restart takes them back. Separate because
//! it is the one durability path that wraps the store rather than the queue: the limiter's async
//! calls (what the server makes) go through [`DurableLeases`], which asks the memory store and
//! then journals what it answered.

use std::sync::Arc;

use tollgate_core::{Barrier, BarrierStatus, Concurrency, LeaseDecision, Limit, Nanos, Period};

use crate::db::{Db, StoredBarrier, StoredLease, Write};
use crate::error::Error;
use crate::spec::{LimitSpec, LimitSpecExt};
use crate::store::{
    AcquireEntry, Acquired, AsyncStore, LimitInfo, Namespace, Pause, Store, StoreFuture, Target,
};

/// The engine's store for async callers when it has a database: the store itself, with leases
/// and barriers journalled. Everything else passes through untouched.
pub(super) struct DurableLeases<S: Store> {
    pub(super) store: Arc<S>,
    pub(super) db: Arc<Db>,
}

impl<S: Store> DurableLeases<S> {
    /// Commits `write`, stamped `now`, and then answers `answer`.
    async fn journal<T>(&self, write: Write, now: Nanos, answer: T) -> Result<T, Error> {
        self.db.submit(vec![write], now).await?;
        Ok(answer)
    }
}

fn barrier_write(key: &str, s: &BarrierStatus) -> Write {
    Write::PutBarrier(StoredBarrier {
        key: key.to_owned(),
        parties: s.parties,
        arrived: s.arrived,
        expires_at: s.expires_at,
    })
}

impl<S: Store + 'static> AsyncStore for DurableLeases<S> {
    fn put_limit<'a>(&'a self, key: &'a str, limit: Limit, now: Nanos) -> StoreFuture<'a, ()> {
        AsyncStore::put_limit(&*self.store, key, limit, now)
    }
    fn remove_limit<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        AsyncStore::remove_limit(&*self.store, key)
    }
    fn get_limit<'a>(&'a self, key: &'a str, now: Nanos) -> StoreFuture<'a, Option<LimitInfo>> {
        AsyncStore::get_limit(&*self.store, key, now)
    }
    fn list_limits(&self, now: Nanos) -> StoreFuture<'_, Vec<LimitInfo>> {
        AsyncStore::list_limits(&*self.store, now)
    }
    fn get_dynamic<'a>(&'a self, key: &'a str, now: Nanos) -> StoreFuture<'a, Option<LimitInfo>> {
        AsyncStore::get_dynamic(&*self.store, key, now)
    }
    // Pauses are journalled by the engine (Engine::pause), which re-plans the queue with them.
    fn pause<'a>(
        &'a self,
        namespace: Namespace,
        key: &'a str,
        until: Nanos,
        now: Nanos,
    ) -> StoreFuture<'a, Nanos> {
        AsyncStore::pause(&*self.store, namespace, key, until, now)
    }
    fn resume<'a>(
        &'a self,
        namespace: Namespace,
        key: &'a str,
        now: Nanos,
    ) -> StoreFuture<'a, bool> {
        AsyncStore::resume(&*self.store, namespace, key, now)
    }
    fn pauses(&self, now: Nanos) -> StoreFuture<'_, Vec<Pause>> {
        AsyncStore::pauses(&*self.store, now)
    }
    fn acquire<'a>(
        &'a self,
        entries: &'a [AcquireEntry<'a>],
        now: Nanos,
    ) -> StoreFuture<'a, Acquired> {
        AsyncStore::acquire(&*self.store, entries, now)
    }
    fn refund<'a>(&'a self, entries: &'a [AcquireEntry<'a>], now: Nanos) -> StoreFuture<'a, ()> {
        AsyncStore::refund(&*self.store, entries, now)
    }
    fn lease_acquire<'a>(
        &'a self,
        target: Target<'a, Concurrency>,
        lease_id: &'a str,
        holder: &'a str,
        ttl: Option<Nanos>,
        now: Nanos,
    ) -> StoreFuture<'a, LeaseDecision> {
        Box::pin(async move {
            let d = Store::lease_acquire(&*self.store, target, lease_id, holder, ttl, now)?;
            if !d.acquired {
                return Ok(d);
            }
            let write = Write::PutLease(StoredLease {
                namespace: target.namespace(),
                key: target.key().to_owned(),
                id: lease_id.to_owned(),
                holder: holder.to_owned(),
                spec: match target {
                    Target::Dynamic(_, c) => Some(LimitSpec::from_limit(&Limit::Concurrency(c))),
                    Target::Static(_) => None,
                },
                expires_at: d.expires_at,
            });
            self.journal(write, now, d).await
        })
    }
    fn lease_renew<'a>(
        &'a self,
        target: Target<'a, Concurrency>,
        lease_id: &'a str,
        ttl: Option<Nanos>,
        now: Nanos,
    ) -> StoreFuture<'a, Nanos> {
        Box::pin(async move {
            let expires_at = Store::lease_renew(&*self.store, target, lease_id, ttl, now)?;
            let write = Write::RenewLease {
                namespace: target.namespace(),
                key: target.key().to_owned(),
                id: lease_id.to_owned(),
                expires_at,
            };
            self.journal(write, now, expires_at).await
        })
    }
    fn lease_release<'a>(
        &'a self,
        target: Target<'a, Concurrency>,
        lease_id: &'a str,
        now: Nanos,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let held = Store::lease_release(&*self.store, target, lease_id, now)?;
            if !held {
                return Ok(false);
            }
            let write = Write::ForgetLease {
                namespace: target.namespace(),
                key: target.key().to_owned(),
                id: lease_id.to_owned(),
            };
            self.journal(write, now, held).await
        })
    }
    fn barrier_create<'a>(
        &'a self,
        key: &'a str,
        barrier: Barrier,
        now: Nanos,
    ) -> StoreFuture<'a, BarrierStatus> {
        Box::pin(async move {
            let s = Store::barrier_create(&*self.store, key, barrier, now)?;
            self.journal(barrier_write(key, &s), now, s).await
        })
    }
    fn barrier_arrive<'a>(&'a self, key: &'a str, now: Nanos) -> StoreFuture<'a, BarrierStatus> {
        Box::pin(async move {
            let s = Store::barrier_arrive(&*self.store, key, now)?;
            self.journal(barrier_write(key, &s), now, s).await
        })
    }
    fn barrier_status<'a>(&'a self, key: &'a str, now: Nanos) -> StoreFuture<'a, BarrierStatus> {
        AsyncStore::barrier_status(&*self.store, key, now)
    }
    fn sweep(&self, now: Nanos) -> StoreFuture<'_, usize> {
        AsyncStore::sweep(&*self.store, now)
    }
}

/// Takes back, at start, the leases and barriers the database kept that have not expired by
/// `now`: a lease holds its slot until its stored expiry, a barrier keeps its expiry and its
/// arrivals. One that no longer fits (its limit was removed or lowered) is logged and left out.
pub(super) fn restore(
    store: &dyn Store,
    leases: &[StoredLease],
    barriers: &[StoredBarrier],
    now: Nanos,
) {
    for l in leases.iter().filter(|l| l.expires_at > now) {
        let concurrency = match (&l.spec, l.namespace) {
            (None, Namespace::Static) => None,
            (Some(spec), Namespace::Dynamic) => match spec.to_limit() {
                Ok(Limit::Concurrency(c)) => Some(c),
                _ => {
                    tracing::warn!(key = %l.key, lease = %l.id, "a stored lease has an unreadable definition; left out");
                    continue;
                }
            },
            _ => continue,
        };
        let target = match &concurrency {
            None => Target::Static(&l.key),
            Some(c) => Target::Dynamic(&l.key, *c),
        };
        let ttl = Some(l.expires_at - now);
        match store.lease_acquire(target, &l.id, &l.holder, ttl, now) {
            Ok(d) if d.acquired => {}
            Ok(_) => {
                tracing::warn!(key = %l.key, lease = %l.id, "a stored lease no longer fits its limit; left out")
            }
            Err(e) => {
                tracing::warn!(key = %l.key, lease = %l.id, error = %e, "a stored lease cannot be restored")
            }
        }
    }
    for b in barriers.iter().filter(|b| b.expires_at > now) {
        let restored = Period::from_nanos(b.expires_at - now)
            .ok()
            .and_then(|ttl| Barrier::new(b.parties, ttl).ok())
            .ok_or_else(|| "an invalid definition".to_owned())
            .and_then(|barrier| {
                store
                    .barrier_create(&b.key, barrier, now)
                    .map_err(|e| e.to_string())
            })
            .and_then(|_| {
                for _ in 0..b.arrived {
                    store
                        .barrier_arrive(&b.key, now)
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            });
        if let Err(e) = restored {
            tracing::warn!(key = %b.key, error = %e, "a stored barrier cannot be restored");
        }
    }
}
