//! A task's ready runs (docs/design.md §3.15): the order a worker's lease takes them in. Higher
//! priority first; within a priority, runs that waited or were handed back before runs that
//! never waited, each in the order they became ready. While runs of more than one priority are
//! ready, every tenth run taken is the oldest of the priorities' next runs. Entries of runs that
//! are no longer queued (cancelled) are dropped when they come up, in both engines.

use std::collections::VecDeque;

use super::wait_queue::{FORCED_EVERY, band};

#[derive(Debug, Default)]
struct Band {
    /// Runs woken from a key's wait queue or handed back: served before `normal`.
    first: VecDeque<String>,
    /// Runs in the order they were enqueued.
    normal: VecDeque<String>,
}

impl Band {
    fn front(&self) -> Option<&String> {
        self.first.front().or_else(|| self.normal.front())
    }

    fn pop(&mut self) -> Option<String> {
        self.first.pop_front().or_else(|| self.normal.pop_front())
    }
}

/// One task's ready runs.
#[derive(Debug, Default)]
pub(crate) struct ReadyQueue {
    bands: [Band; 4],
    /// Runs taken while more than one priority was ready.
    taken_mixed: u64,
}

impl ReadyQueue {
    /// Adds run `id` at the back of its priority's `first` or `normal` runs.
    pub(crate) fn push(&mut self, id: &str, priority: u8, first: bool) {
        let b = &mut self.bands[usize::from(band(priority))];
        if first {
            b.first.push_back(id.to_owned());
        } else {
            b.normal.push_back(id.to_owned());
        }
    }

    /// Takes the next run: `live` says whether an entry's run is still queued (stale entries
    /// are dropped as they come up) and `seq` gives a run's enqueue sequence.
    pub(crate) fn take(
        &mut self,
        live: impl Fn(&str) -> bool,
        seq: impl Fn(&str) -> u64,
    ) -> Option<String> {
        for b in &mut self.bands {
            while b.front().is_some_and(|id| !live(id)) {
                b.pop();
            }
        }
        let mut ready = (0..self.bands.len()).filter(|&i| self.bands[i].front().is_some());
        let top = ready.next()?;
        let chosen = if ready.next().is_some() {
            let forced = self.taken_mixed % FORCED_EVERY == FORCED_EVERY - 1;
            self.taken_mixed += 1;
            if forced {
                (top..self.bands.len())
                    .filter(|&i| self.bands[i].front().is_some())
                    .min_by_key(|&i| self.bands[i].front().map_or(u64::MAX, |id| seq(id)))?
            } else {
                top
            }
        } else {
            top
        };
        self.bands[chosen].pop()
    }

    /// The runs in order (priorities, then `first` before `normal`; the every-tenth turn
    /// aside).
    pub(crate) fn iter(&self) -> impl Iterator<Item = &String> {
        self.bands
            .iter()
            .flat_map(|b| b.first.iter().chain(b.normal.iter()))
    }
}
