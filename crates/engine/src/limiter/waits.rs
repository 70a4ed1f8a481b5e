//! The waits of [`Limiter`](super::Limiter) and [`AsyncLimiter`](super::AsyncLimiter), written
//! once over an [`AsyncStore`] (every [`Store`](crate::Store) is one): they sleep on timers
//! until a decision can change, never polling the store in a loop.

use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::error::{Error, check_key};
use crate::store::{AcquireEntry, Acquired, AsyncStore};

/// How often a barrier waiter re-reads the store even without a local wake-up, for stores
/// shared with other processes whose arrivals this process cannot observe directly.
const BARRIER_RECHECK: Duration = Duration::from_millis(100);

/// Waits up to `max_wait` for all entries to be admitted together, sleeping until each
/// denial's `retry_after`; returns the denial at once when the wait it needs is longer than
/// what is left of `max_wait`.
pub(super) async fn acquire<S: AsyncStore + ?Sized>(
    store: &S,
    clock: &dyn Clock,
    entries: &[AcquireEntry<'_>],
    max_wait: Duration,
) -> Result<Acquired, Error> {
    let deadline = Instant::now() + max_wait;
    loop {
        let answer = store.acquire(entries, clock.now()).await?;
        if answer.allowed {
            return Ok(answer);
        }
        let wait = answer
            .retry_after()
            .as_duration()
            .max(Duration::from_nanos(1));
        if Instant::now() + wait > deadline {
            return Ok(answer);
        }
        tokio::time::sleep(wait).await;
    }
}

/// Arrives at barrier `key` and waits up to `max_wait` for every party: woken by arrivals
/// through `changed`, and re-reading the store every [`BARRIER_RECHECK`] for arrivals made
/// elsewhere. `true` when released, `false` on timeout.
pub(super) async fn barrier<S: AsyncStore + ?Sized>(
    store: &S,
    clock: &dyn Clock,
    changed: &Notify,
    key: &str,
    max_wait: Duration,
) -> Result<bool, Error> {
    check_key(key)?;
    let deadline = Instant::now() + max_wait;
    let status = store.barrier_arrive(key, clock.now()).await?;
    changed.notify_waiters();
    if status.released {
        return Ok(true);
    }
    loop {
        let notified = changed.notified();
        tokio::pin!(notified);
        // Register before reading, so an arrival between the read and the wait wakes us.
        notified.as_mut().enable();
        let status = store.barrier_status(key, clock.now()).await?;
        if status.released {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        let expires_in = (status.expires_at - clock.now()).as_duration();
        let wake = (now + BARRIER_RECHECK).min(deadline).min(now + expires_in);
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}
