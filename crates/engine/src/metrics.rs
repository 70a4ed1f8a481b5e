//! Counters the admission queue keeps about itself, for the server's `GET /metrics`, and the
//! debug-level log line of every run transition (target `tollgate::queue`).
//!
//! Every transition of a run happens under the queue's one lock, so the counters are plain
//! integers updated there: no atomics, no allocation once a task has been seen, and nothing
//! on the limiter's own hot path. [`Engine::metrics`](crate::Engine::metrics) copies them out
//! at scrape time.
//!
//! Labels stay bounded: counters are kept per task name and per index in the task's
//! `rate_limits`, never per rendered dynamic key (a per-user key would grow them without end).

use crate::fast_map::FastHashMap;

use tollgate_core::Nanos;

use crate::store::Acquired;
use crate::task::RenderedLimit;

/// A change in a run's life that is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transition {
    /// Accepted by an enqueue or an event (whatever it became at once).
    Enqueued,
    /// Parked on a key that denied it.
    Parked,
    /// Leased by a worker (one per attempt).
    Leased,
    /// Completed.
    Succeeded,
    /// Failed for good.
    Failed,
    /// Skipped (over its limits under `on_limit: skip`, or a duplicate).
    Skipped,
    /// Its lease lapsed (the worker stopped heartbeating).
    Expired,
    /// Cancelled.
    Cancelled,
}

impl Transition {
    /// Every transition, in lifecycle order.
    pub const ALL: [Transition; 8] = [
        Transition::Enqueued,
        Transition::Parked,
        Transition::Leased,
        Transition::Succeeded,
        Transition::Failed,
        Transition::Skipped,
        Transition::Expired,
        Transition::Cancelled,
    ];

    /// The snake_case name (a metric label value).
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Enqueued => "enqueued",
            Transition::Parked => "parked",
            Transition::Leased => "leased",
            Transition::Succeeded => "succeeded",
            Transition::Failed => "failed",
            Transition::Skipped => "skipped",
            Transition::Expired => "expired",
            Transition::Cancelled => "cancelled",
        }
    }
}

/// Upper bounds of the dispatch lag buckets, in nanoseconds (1 ms to 1 min; docs/design.md §6 budgets
/// 5 ms).
pub const LAG_BUCKETS: [Nanos; 14] = [
    Nanos::from_micros(500),
    Nanos::from_millis(1),
    Nanos::from_millis(2),
    Nanos::from_millis(5),
    Nanos::from_millis(10),
    Nanos::from_millis(25),
    Nanos::from_millis(50),
    Nanos::from_millis(100),
    Nanos::from_millis(250),
    Nanos::from_millis(500),
    Nanos::from_secs(1),
    Nanos::from_secs(5),
    Nanos::from_secs(15),
    Nanos::from_secs(60),
];

/// A histogram of durations with [`LAG_BUCKETS`] bounds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LagHistogram {
    /// Observations at or below each bound of [`LAG_BUCKETS`] (not cumulative).
    pub buckets: [u64; LAG_BUCKETS.len()],
    /// Observations above the last bound.
    pub overflow: u64,
    /// Sum of all observations.
    pub sum: Nanos,
    /// Number of observations.
    pub count: u64,
}

impl LagHistogram {
    /// Counts one duration.
    pub fn observe(&mut self, d: Nanos) {
        match LAG_BUCKETS.iter().position(|b| d <= *b) {
            Some(i) => self.buckets[i] += 1,
            None => self.overflow += 1,
        }
        self.sum = self.sum + d;
        self.count += 1;
    }

    /// `(upper bound, cumulative count)` per bucket, as Prometheus wants them (the `+Inf`
    /// bucket is `count`).
    pub fn cumulative(&self) -> Vec<(Nanos, u64)> {
        let mut total = 0;
        LAG_BUCKETS
            .iter()
            .zip(self.buckets)
            .map(|(b, n)| {
                total += n;
                (*b, total)
            })
            .collect()
    }
}

/// Decisions the queue made for one of a task's `rate_limits`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecisionCount {
    /// Units taken (the whole run was admitted).
    pub allowed: u64,
    /// This limit denied the run.
    pub denied: u64,
}

/// One task's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskMetrics {
    /// Per [`Transition`], in the order of [`Transition::ALL`].
    pub transitions: [u64; Transition::ALL.len()],
    /// Per index in the task's `rate_limits` (`rate_limits[i]`).
    pub decisions: Vec<DecisionCount>,
}

impl TaskMetrics {
    /// How many times runs of this task went through `t`.
    pub fn transition(&self, t: Transition) -> u64 {
        self.transitions[t as usize]
    }
}

/// The queue's counters, copied out by [`Engine::metrics`](crate::Engine::metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueMetrics {
    /// Per task name.
    pub tasks: FastHashMap<String, TaskMetrics>,
    /// From a parked run's `eligible_at` (or the instant its concurrency slot was freed) to its
    /// lease.
    pub dispatch_lag: LagHistogram,
}

/// What the queue keeps: the counters, and when each woken run became eligible.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) counts: QueueMetrics,
    /// Runs woken from a key's FIFO and not leased yet: when they became eligible.
    woken: FastHashMap<String, Nanos>,
}

impl Metrics {
    fn task(&mut self, task: &str) -> &mut TaskMetrics {
        // `get_mut` first: no allocation once the task has been seen.
        if !self.counts.tasks.contains_key(task) {
            self.counts
                .tasks
                .insert(task.to_owned(), TaskMetrics::default());
        }
        self.counts
            .tasks
            .get_mut(task)
            .unwrap_or_else(|| unreachable!("inserted above"))
    }

    /// Counts run `id` of `task` going through `t`, and logs it at debug level: per-run
    /// changes are too many for info.
    pub(crate) fn transition(&mut self, task: &str, id: &str, t: Transition) {
        self.task(task).transitions[t as usize] += 1;
        tracing::debug!(target: "tollgate::queue", run = id, task, transition = t.as_str(), "run transition");
    }

    /// Counts the decision of one acquire for a run of `task` whose limits are `rate`: every
    /// limit allowed when it was admitted, else the limits that denied it.
    pub(crate) fn decision(&mut self, task: &str, rate: &[RenderedLimit], acquired: &Acquired) {
        let counts = &mut self.task(task).decisions;
        for (r, d) in rate.iter().zip(&acquired.decisions) {
            if counts.len() <= r.spec_index {
                counts.resize(r.spec_index + 1, DecisionCount::default());
            }
            let c = &mut counts[r.spec_index];
            if acquired.allowed {
                c.allowed += 1;
            } else if !d.allowed {
                c.denied += 1;
            }
        }
    }

    /// Run `id` left a key's FIFO, eligible since `at`.
    pub(crate) fn woken(&mut self, id: &str, at: Nanos) {
        self.woken.insert(id.to_owned(), at);
    }

    /// Run `id` was leased at `now`: its lag, if it had been parked.
    pub(crate) fn leased(&mut self, id: &str, now: Nanos) {
        if let Some(at) = self.woken.remove(id) {
            self.counts.dispatch_lag.observe(now - at);
        }
    }

    /// Run `id` will not be leased from where it was woken (ended, or parked again).
    pub(crate) fn forget(&mut self, id: &str) {
        if !self.woken.is_empty() {
            self.woken.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_buckets_are_cumulative_and_overflow_counts_in_count_only() {
        let mut h = LagHistogram::default();
        h.observe(Nanos::from_millis(1));
        h.observe(Nanos::from_millis(3));
        h.observe(Nanos::from_secs(120));
        let c = h.cumulative();
        assert_eq!(c[1], (Nanos::from_millis(1), 1));
        assert_eq!(c[3], (Nanos::from_millis(5), 2));
        assert_eq!(c.last().map(|x| x.1), Some(2));
        assert_eq!(h.count, 3);
        assert_eq!(h.overflow, 1);
    }
}
