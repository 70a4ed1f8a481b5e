//! The embedded engine's side of "why is this run waiting" (docs/design.md §3.14): where a run
//! stands in each wait queue and ready queue, read under the queue's lock.

use tollgate_api::{Explanation, RunState};
use tollgate_core::Nanos;

use super::QueueState;
use crate::error::Error;
use crate::queue::explain::{self, AHEAD_SHOWN, QueuePlace};
use crate::queue::run::{RunPhase, WaitKey};
use crate::store::Store;

impl QueueState {
    /// Where run `id` stands in `key`'s wait queue: runs that still wait on the key only (a
    /// cancelled run is dropped from the queue lazily).
    fn place(&self, key: &WaitKey, id: &str) -> QueuePlace {
        let mut place = QueuePlace::default();
        let Some(queue) = self.parked.get(key) else {
            return place;
        };
        for other in queue.iter() {
            let waits = self
                .runs
                .get(other)
                .is_some_and(|r| matches!(&r.phase, RunPhase::Waiting { on, .. } if on == key));
            if !waits {
                continue;
            }
            if other == id {
                place.position = Some(place.waiting);
            } else if place.position.is_none() && place.ahead.len() < AHEAD_SHOWN {
                place.ahead.push(other.to_owned());
            }
            place.waiting += 1;
        }
        if place.position.is_none() {
            place.ahead.clear();
        }
        place
    }

    /// How many ready runs of `task` are ahead of queued run `id`.
    fn ready_ahead(&self, task: &str, id: &str) -> Option<u64> {
        let queue = self.ready.get(task)?;
        let mut ahead = 0;
        for other in queue.iter() {
            if other == id {
                return Some(ahead);
            }
            if self
                .runs
                .get(other)
                .is_some_and(|r| r.state() == RunState::Queued)
            {
                ahead += 1;
            }
        }
        None
    }

    /// Why run `id` waits: each key it needs, as the store and the queue see it now.
    ///
    /// # Errors
    /// [`Error::UnknownRun`]; store failures.
    pub(crate) fn explain(
        &self,
        id: &str,
        now: Nanos,
        store: &dyn Store,
    ) -> Result<Explanation, Error> {
        let run = self.run(id)?;
        let view = self
            .view(id)
            .ok_or_else(|| Error::UnknownRun { id: id.to_owned() })?;
        let pauses = store.pauses(now)?;
        let eligible_at = view.eligible_at_ms.map(Nanos::from_millis);
        let mut limits = Vec::new();
        let mut seen = Vec::new();
        for r in &run.rendered.rate {
            let key = WaitKey::Rate {
                dynamic: r.dynamic.is_some(),
                key: r.key.clone(),
            };
            if seen.contains(&key) {
                continue;
            }
            let (spec, info) = match &r.dynamic {
                Some(own) => (
                    Some(self.key_uses.newest_rate(&r.key).unwrap_or(own)),
                    store.get_dynamic(&r.key, now)?,
                ),
                None => (None, store.get_limit(&r.key, now)?),
            };
            limits.push(explain::rate_key(
                &r.key,
                r.dynamic.is_some(),
                spec,
                info.as_ref(),
                &pauses,
                self.place(&key, id),
                eligible_at,
                now,
            ));
            seen.push(key);
        }
        for c in &run.rendered.concurrency {
            let key = WaitKey::Concurrency(c.key.clone());
            if seen.contains(&key) {
                continue;
            }
            limits.push(explain::concurrency_key(
                &c.key,
                self.concurrency_limit(&c.key, c.limit),
                u64::from(self.live.get(&c.key).copied().unwrap_or(0)),
                self.place(&key, id),
            ));
            seen.push(key);
        }
        let ready_ahead = match run.state() {
            RunState::Queued => self.ready_ahead(&run.task, id),
            _ => None,
        };
        Ok(Explanation {
            state: view.state,
            eligible_at_ms: view.eligible_at_ms,
            run: view,
            ready_ahead,
            limits,
        })
    }
}
