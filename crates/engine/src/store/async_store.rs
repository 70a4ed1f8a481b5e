//! [`AsyncStore`]: the [`Store`] operations for stores that do network IO (Redis), so that a
//! caller on an async runtime awaits the reply instead of blocking a runtime thread.
//!
//! Every [`Store`] is also an `AsyncStore` (its futures are ready at once): code written against
//! `AsyncStore` (the server's direct acquires, [`AsyncLimiter`](crate::AsyncLimiter), the
//! conformance suite) runs on the in-memory store and on Redis alike. A store that does IO
//! implements only this trait. The operations, their arguments and their guarantees are the
//! same as [`Store`]'s; see there.

use std::future::Future;
use std::pin::Pin;

use tollgate_core::{Barrier, BarrierStatus, Concurrency, LeaseDecision, Limit, Nanos};

use super::{AcquireEntry, Acquired, LimitInfo, Namespace, Pause, Store, Target};
use crate::error::Error;

/// A store call in flight.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

/// The [`Store`] operations, awaited. See [`Store`] for what each does and may fail with.
pub trait AsyncStore: Send + Sync {
    /// [`Store::put_limit`].
    fn put_limit<'a>(&'a self, key: &'a str, limit: Limit, now: Nanos) -> StoreFuture<'a, ()>;
    /// [`Store::remove_limit`].
    fn remove_limit<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool>;
    /// [`Store::get_limit`].
    fn get_limit<'a>(&'a self, key: &'a str, now: Nanos) -> StoreFuture<'a, Option<LimitInfo>>;
    /// [`Store::list_limits`].
    fn list_limits(&self, now: Nanos) -> StoreFuture<'_, Vec<LimitInfo>>;
    /// [`Store::get_dynamic`].
    fn get_dynamic<'a>(&'a self, key: &'a str, now: Nanos) -> StoreFuture<'a, Option<LimitInfo>>;
    /// [`Store::acquire`].
    fn acquire<'a>(
        &'a self,
        entries: &'a [AcquireEntry<'a>],
        now: Nanos,
    ) -> StoreFuture<'a, Acquired>;
    /// [`Store::refund`].
    fn refund<'a>(&'a self, entries: &'a [AcquireEntry<'a>], now: Nanos) -> StoreFuture<'a, ()>;
    /// [`Store::lease_acquire`].
    fn lease_acquire<'a>(
        &'a self,
        target: Target<'a, Concurrency>,
        lease_id: &'a str,
        holder: &'a str,
        ttl: Option<Nanos>,
        now: Nanos,
    ) -> StoreFuture<'a, LeaseDecision>;
    /// [`Store::lease_renew`].
    fn lease_renew<'a>(
        &'a self,
        target: Target<'a, Concurrency>,
        lease_id: &'a str,
        ttl: Option<Nanos>,
        now: Nanos,
    ) -> StoreFuture<'a, Nanos>;
    /// [`Store::lease_release`].
    fn lease_release<'a>(
        &'a self,
        target: Target<'a, Concurrency>,
        lease_id: &'a str,
        now: Nanos,
    ) -> StoreFuture<'a, bool>;
    /// [`Store::barrier_create`].
    fn barrier_create<'a>(
        &'a self,
        key: &'a str,
        barrier: Barrier,
        now: Nanos,
    ) -> StoreFuture<'a, BarrierStatus>;
    /// [`Store::barrier_arrive`].
    fn barrier_arrive<'a>(&'a self, key: &'a str, now: Nanos) -> StoreFuture<'a, BarrierStatus>;
    /// [`Store::barrier_status`].
    fn barrier_status<'a>(&'a self, key: &'a str, now: Nanos) -> StoreFuture<'a, BarrierStatus>;
    /// [`Store::sweep`].
    fn sweep(&self, now: Nanos) -> StoreFuture<'_, usize>;
    /// [`Store::pause`].
    fn pause<'a>(
        &'a self,
        namespace: Namespace,
        key: &'a str,
        until: Nanos,
        now: Nanos,
    ) -> StoreFuture<'a, Nanos>;
    /// [`Store::resume`].
    fn resume<'a>(
        &'a self,
        namespace: Namespace,
        key: &'a str,
        now: Nanos,
    ) -> StoreFuture<'a, bool>;
    /// [`Store::pauses`].
    fn pauses(&self, now: Nanos) -> StoreFuture<'_, Vec<Pause>>;
}

/// A store that never waits on IO answers at once.
fn ready<'a, T: Send + 'a>(r: Result<T, Error>) -> StoreFuture<'a, T> {
    Box::pin(std::future::ready(r))
}

impl<S: Store + ?Sized> AsyncStore for S {
    fn put_limit<'a>(&'a self, key: &'a str, limit: Limit, now: Nanos) -> StoreFuture<'a, ()> {
        ready(Store::put_limit(self, key, limit, now))
    }
    fn remove_limit<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        ready(Store::remove_limit(self, key))
    }
    fn get_limit<'a>(&'a self, key: &'a str, now: Nanos) -> StoreFuture<'a, Option<LimitInfo>> {
        ready(Store::get_limit(self, key, now))
    }
    fn list_limits(&self, now: Nanos) -> StoreFuture<'_, Vec<LimitInfo>> {
        ready(Store::list_limits(self, now))
    }
    fn get_dynamic<'a>(&'a self, key: &'a str, now: Nanos) -> StoreFuture<'a, Option<LimitInfo>> {
        ready(Store::get_dynamic(self, key, now))
    }
    fn acquire<'a>(
        &'a self,
        entries: &'a [AcquireEntry<'a>],
        now: Nanos,
    ) -> StoreFuture<'a, Acquired> {
        ready(Store::acquire(self, entries, now))
    }
    fn refund<'a>(&'a self, entries: &'a [AcquireEntry<'a>], now: Nanos) -> StoreFuture<'a, ()> {
        ready(Store::refund(self, entries, now))
    }
    fn lease_acquire<'a>(
        &'a self,
        target: Target<'a, Concurrency>,
        lease_id: &'a str,
        holder: &'a str,
        ttl: Option<Nanos>,
        now: Nanos,
    ) -> StoreFuture<'a, LeaseDecision> {
        ready(Store::lease_acquire(
            self, target, lease_id, holder, ttl, now,
        ))
    }
    fn lease_renew<'a>(
        &'a self,
        target: Target<'a, Concurrency>,
        lease_id: &'a str,
        ttl: Option<Nanos>,
        now: Nanos,
    ) -> StoreFuture<'a, Nanos> {
        ready(Store::lease_renew(self, target, lease_id, ttl, now))
    }
    fn lease_release<'a>(
        &'a self,
        target: Target<'a, Concurrency>,
        lease_id: &'a str,
        now: Nanos,
    ) -> StoreFuture<'a, bool> {
        ready(Store::lease_release(self, target, lease_id, now))
    }
    fn barrier_create<'a>(
        &'a self,
        key: &'a str,
        barrier: Barrier,
        now: Nanos,
    ) -> StoreFuture<'a, BarrierStatus> {
        ready(Store::barrier_create(self, key, barrier, now))
    }
    fn barrier_arrive<'a>(&'a self, key: &'a str, now: Nanos) -> StoreFuture<'a, BarrierStatus> {
        ready(Store::barrier_arrive(self, key, now))
    }
    fn barrier_status<'a>(&'a self, key: &'a str, now: Nanos) -> StoreFuture<'a, BarrierStatus> {
        ready(Store::barrier_status(self, key, now))
    }
    fn sweep(&self, now: Nanos) -> StoreFuture<'_, usize> {
        ready(Store::sweep(self, now))
    }
    fn pause<'a>(
        &'a self,
        namespace: Namespace,
        key: &'a str,
        until: Nanos,
        now: Nanos,
    ) -> StoreFuture<'a, Nanos> {
        ready(Store::pause(self, namespace, key, until, now))
    }
    fn resume<'a>(
        &'a self,
        namespace: Namespace,
        key: &'a str,
        now: Nanos,
    ) -> StoreFuture<'a, bool> {
        ready(Store::resume(self, namespace, key, now))
    }
    fn pauses(&self, now: Nanos) -> StoreFuture<'_, Vec<Pause>> {
        ready(Store::pauses(self, now))
    }
}
