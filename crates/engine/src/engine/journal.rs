//! The journal plumbing: every change to the queue runs under its lock and is journaled in
//! order ([`Engine::mutate`], [`Engine::apply`]). Separate because every other job goes
//! through it, and its ordering rules (who commits what, and when waiters wake) stand alone.

use tollgate_core::Nanos;

use super::Engine;
use crate::db::Write;
use crate::error::{Error, StoreError};
use crate::queue::state::QueueState;
use crate::store::Store;

pub(super) type Commit = std::pin::Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

impl<S: Store + 'static> Engine<S> {
    /// Runs `f` on the queue under its lock, journals what changed (in order), wakes lease
    /// waiters and the timer, then waits for the commit.
    pub(super) async fn mutate<T>(
        &self,
        writes: Vec<Write>,
        f: impl FnOnce(&mut QueueState, Nanos, &dyn Store) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let (out, commit) = self.apply(writes, false, f);
        if let Some(commit) = commit {
            commit.await?;
        }
        out
    }

    /// [`Engine::mutate`] without waiting: returns `f`'s result and the commit of what changed
    /// (none without a database or without changes), already submitted.
    ///
    /// With `carry`, when `f` made runs ready while a lease call is in progress, the runs it
    /// changed are not journaled now but by the next change, whoever makes it (changed runs
    /// are kept until then): the woken lease call then commits the timer's reservation and its
    /// own lease together, and answers after one commit instead of two in a row. Only for
    /// changes acknowledged to nobody (the timer's).
    pub(super) fn apply<T>(
        &self,
        writes: Vec<Write>,
        carry: bool,
        f: impl FnOnce(&mut QueueState, Nanos, &dyn Store) -> Result<T, Error>,
    ) -> (Result<T, Error>, Option<Commit>) {
        let (out, commit, ready, earlier) = {
            let mut st = self.inner.state.lock();
            let now = self.inner.limiter.now();
            let before = st.next_deadline();
            // What is due at `now` (timers, lapsed leases) happens before the change, whether
            // or not the timer task has got there yet: a worker call after its lease lapsed
            // finds the run requeued, and every change sees the same queue at the same instant.
            st.process_due(now, self.inner.limiter.store());
            let out = f(&mut st, now, self.inner.limiter.store());
            let after = st.next_deadline();
            // Only a deadline that moved earlier needs the timer task to re-plan its sleep.
            let earlier = matches!((before, after), (None, Some(_)))
                || matches!((before, after), (Some(b), Some(a)) if a < b);
            let ready = std::mem::take(&mut st.became_ready);
            let carried = carry
                && ready
                && self
                    .inner
                    .leasing
                    .load(std::sync::atomic::Ordering::Relaxed)
                    > 0;
            let mut all = writes;
            all.extend(st.drain_writes());
            if !carried {
                all.extend(
                    st.drain_dirty()
                        .into_iter()
                        .map(|r| Write::PutRun(Box::new(r))),
                );
            }
            (out, self.journal(all, now), ready, earlier)
        };
        // Waiters are woken before this change's commit completes: whatever they do next is
        // committed after it (one writer, in submission order), and they answer only once their
        // own commit is done, so nothing is answered before it is durable — and a parked run's
        // dispatch waits for one commit, not two.
        if ready {
            self.inner.ready.notify_waiters();
        }
        if earlier {
            self.inner.timer.notify_one();
        }
        (out, commit)
    }

    fn journal(&self, writes: Vec<Write>, now: Nanos) -> Option<Commit> {
        match (&self.inner.db, writes.is_empty()) {
            (Some(db), false) => Some(Box::pin(db.submit(writes, now))),
            _ => None,
        }
    }
}
