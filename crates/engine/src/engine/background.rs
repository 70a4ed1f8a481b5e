//! The background tasks every engine spawns: the timer that fires parked runs and lease
//! expiries, direct-use snapshots, and periodic pruning. Separate because they hold the engine
//! only weakly and end when it is dropped, which is easier to check in one place.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use super::direct_use::SNAPSHOT_EVERY;
use super::{Engine, Inner};
use crate::store::Store;

pub(super) fn spawn_pruning<S: Store + 'static>(engine: Weak<Inner<S>>) {
    tokio::spawn(async move {
        // The first pass a minute after start, not at once: nothing has ended yet, and an
        // immediate pass would race with callers running `prune` themselves.
        let every = Duration::from_secs(60);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = engine.upgrade() else {
                return;
            };
            let _ = Engine { inner }.prune().await;
        }
    });
}

pub(super) fn spawn_snapshots<S: Store + 'static>(engine: Weak<Inner<S>>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SNAPSHOT_EVERY.as_duration());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = engine.upgrade() else {
                return;
            };
            let _ = Engine { inner }.snapshot_direct_use().await;
        }
    });
}

pub(super) fn spawn_timer<S: Store + 'static>(engine: Weak<Inner<S>>, timer: Arc<Notify>) {
    tokio::spawn(async move {
        loop {
            let notified = timer.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let sleep_for = {
                let Some(inner) = engine.upgrade() else {
                    return;
                };
                let e = Engine { inner };
                // `apply` fires what is due before it runs this.
                let (next, commit) = e.apply(Vec::new(), true, |st, now, _| {
                    Ok(st.next_deadline().map(|t| t - now))
                });
                if let Some(commit) = commit {
                    // Not awaited here: what the timer changed (reservations, expiries) is
                    // acknowledged to nobody, and every later change — the lease that hands a
                    // woken run to a worker included — commits after it (one writer, in
                    // submission order) and answers only then. Awaiting it would start the next
                    // sleep late by however long this commit took.
                    tokio::spawn(async move {
                        if let Err(e) = commit.await {
                            tracing::warn!(error = %e, "cannot journal the queue's timers");
                        }
                    });
                }
                next.unwrap_or(None)
            };
            match sleep_for {
                Some(d) => {
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep(d.as_duration()) => {}
                    }
                }
                None => notified.await,
            }
        }
    });
}
