//! The admission queue's state machine: ready queues per task, wait queues per key with one
//! timer per key (its head's `eligible_at`), running leases by expiry, and concurrency slots.
//! The order within ready and wait queues (priorities, fairness keys) is `ready_queue.rs` and
//! `wait_queue.rs` (docs/design.md §3.15).
//!
//! Everything here is synchronous and runs under the queue's one mutex, with `now` passed in;
//! the async shell in `mod.rs` owns timers, long-polls and durability.
//!
//! Scheduling rules (docs/design.md §3):
//! - A run that cannot start is parked on the key that denied it, in that key's wait queue (in
//!   its priority and its fairness key's turn). Only the head of a key's queue holds a timer;
//!   when it fires, the head is tried first and *reserves* what it needs (its rate units are
//!   consumed for it), then the next head is tried, until one is denied and becomes the timed
//!   head. N runs parked on one key never wake together, and a 5-unit run is not starved by a
//!   stream of 1-unit runs.
//! - A run needing a key whose queue is not empty joins it without trying, so newcomers take
//!   their turn with the parked runs instead of overtaking them.
//! - Concurrency slots are taken at lease and held until the run ends or its lease lapses; a
//!   freed slot goes to the head of that key's FIFO (reserved for it).
//! - Parked runs sit in no ready queue, hold no worker slot and consume no attempt.
//!
//! Each transition assigns the run a new [`RunPhase`], which carries what belongs to the state
//! (the key a waiting run is parked on, with its namespace, and its `eligible_at`; a running
//! run's lease and worker; a skipped run's reason): nothing of the phase it leaves is left
//! behind. What outlives a phase (attempt, error, output, reserved units, held slots,
//! `consumed_at`) stays on the run and is managed here by hand.

mod explain;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use serde_json::Value;
use tollgate_core::{Nanos, Period};

use super::key_uses::KeyUses;
use super::ready_queue::ReadyQueue;
pub(crate) use super::run::WaitKey;
use super::run::{Run, RunPhase, RunPolicy, RunState, RunView};
use super::wait_queue::WaitQueue;
use crate::error::Error;
use crate::fast_map::FastHashMap;
use crate::metrics::{Metrics, Transition};
use crate::spec::LimitSpecExt;
use crate::store::{AcquireEntry, Store};
use crate::task::{OnLimit, Rendered, RunContext, Task};

/// Result of trying to start (or reserve) a run.
enum Admission {
    Admitted,
    Parked(WaitKey, Option<Nanos>),
    Failed(String),
}

/// A run rendered for its task, not stored yet ([`QueueState::prepare`]).
pub(crate) struct Prepared {
    task: Arc<Task>,
    rendered: Rendered,
    /// Why the run fails at once (units that can never fit).
    failure: Option<String>,
    input: Value,
    additional_metadata: Value,
    event: Option<Value>,
    /// When it is due, if later than its enqueue (`delay_ms`, `run_at_ms`).
    due: Option<Nanos>,
}

impl Prepared {
    /// Due at `due` (scheduled until then) rather than at once.
    pub(crate) fn due_at(mut self, due: Option<Nanos>) -> Prepared {
        self.due = due;
        self
    }

    /// At `priority` (1 to 4) rather than its task's.
    pub(crate) fn at_priority(mut self, priority: Option<u8>) -> Prepared {
        if let Some(p) = priority {
            self.rendered.priority = p;
        }
        self
    }
}

/// The whole queue.
#[derive(Default)]
pub(crate) struct QueueState {
    pub(crate) runs: FastHashMap<String, Run>,
    pub(crate) tasks: FastHashMap<String, Arc<Task>>,
    ready: FastHashMap<String, ReadyQueue>,
    parked: FastHashMap<WaitKey, WaitQueue>,
    /// Rate keys' timers by due instant; an entry that no longer matches `timer_at` is stale
    /// and skipped when it comes up.
    timers: BinaryHeap<Reverse<(Nanos, WaitKey)>>,
    /// The one timer each parked rate key's head holds.
    timer_at: FastHashMap<WaitKey, Nanos>,
    /// What the runs not yet ended name, per key.
    key_uses: KeyUses,
    leases: BinaryHeap<Reverse<(Nanos, String)>>,
    /// Scheduled runs by due instant, then enqueue order (the Redis engine's order too); an
    /// entry whose run is no longer scheduled at that instant is stale and skipped.
    scheduled: std::collections::BTreeSet<(Nanos, u64, String)>,
    /// Concurrency slots held, by key.
    live: FastHashMap<String, u32>,
    /// Idempotency keys seen, by (task, key), with when they stop counting.
    seen: FastHashMap<(String, String), Nanos>,
    seen_sweep_at: usize,
    next_seq: u64,
    pub(crate) id_prefix: String,
    dirty: Vec<String>,
    /// Writes decided under the lock, journalled before the runs this change touched.
    writes: Vec<crate::db::Write>,
    /// Set when runs became ready: lease waiters should look.
    pub(crate) became_ready: bool,
    /// Transition and decision counters, dispatch lag.
    pub(crate) metrics: Metrics,
}

/// The acquire entries of `run`'s rate limits, a dynamic key with its newest definition.
fn entries<'a>(run: &'a Run, key_uses: &'a KeyUses) -> Result<Vec<AcquireEntry<'a>>, String> {
    run.rendered
        .rate
        .iter()
        .map(|r| {
            let newest = r
                .dynamic
                .as_ref()
                .and_then(|_| key_uses.newest_rate(&r.key));
            match newest {
                Some(spec) => spec
                    .to_rate_limit()
                    .map(|l| AcquireEntry::dynamic(&r.key, l, r.units)),
                None => r.entry(),
            }
            .map_err(|e| format!("invalid limit for key {:?}: {e}", r.key))
        })
        .collect()
}

impl QueueState {
    pub(crate) fn new(id_prefix: String) -> QueueState {
        QueueState {
            id_prefix,
            seen_sweep_at: 1024,
            ..QueueState::default()
        }
    }

    fn touch(&mut self, id: &str, now: Nanos) {
        if let Some(r) = self.runs.get_mut(id) {
            r.updated_at = now;
        }
        self.dirty.push(id.to_owned());
    }

    /// Journals `write` with this change (for what is only known under the lock).
    pub(crate) fn journal_later(&mut self, write: crate::db::Write) {
        self.writes.push(write);
    }

    /// Writes decided under the lock since the last call, for the journal.
    pub(crate) fn drain_writes(&mut self) -> Vec<crate::db::Write> {
        std::mem::take(&mut self.writes)
    }

    /// Runs changed since the last call, for the journal.
    pub(crate) fn drain_dirty(&mut self) -> Vec<Run> {
        let mut ids = std::mem::take(&mut self.dirty);
        ids.sort_unstable();
        ids.dedup();
        ids.iter()
            .filter_map(|id| self.runs.get(id).cloned())
            .collect()
    }

    /// The earliest instant something is due (a parked head's timer, a lease expiry or a
    /// scheduled run).
    pub(crate) fn next_deadline(&self) -> Option<Nanos> {
        let t = self.timers.peek().map(|Reverse((t, _))| *t);
        let l = self.leases.peek().map(|Reverse((t, _))| *t);
        let s = self.scheduled.first().map(|(t, _, _)| *t);
        [t, l, s].into_iter().flatten().min()
    }

    fn run(&self, id: &str) -> Result<&Run, Error> {
        self.runs
            .get(id)
            .ok_or_else(|| Error::UnknownRun { id: id.to_owned() })
    }

    // ---- what runs name: live limits and the newest definitions of dynamic keys ------------

    /// Run `id` ended: the keys it named lose a user.
    fn unregister(&mut self, id: &str) {
        if let Some(run) = self.runs.get(id) {
            self.key_uses.unregister(&run.rendered);
        }
    }

    /// How many runs not yet ended name declared limit `key`.
    pub(crate) fn declared_users(&self, key: &str) -> u32 {
        self.key_uses.declared_users(key)
    }

    /// The limit of concurrency key `key` in force: its newest.
    fn concurrency_limit(&self, key: &str, own: u32) -> u32 {
        self.key_uses.newest_limit(key).unwrap_or(own)
    }

    /// A limit changed (a declared limit redefined, or a dynamic key's newest definition):
    /// the runs parked on it are re-planned now. Its head is tried at once and becomes ready
    /// if it fits (then the next, until one is denied); a denied head gets its new
    /// `eligible_at` and the key's timer moves to it.
    pub(crate) fn replan(&mut self, key: &WaitKey, now: Nanos, store: &dyn Store) {
        match key {
            WaitKey::Rate { .. } => {
                if self.parked.contains_key(key) {
                    self.wake_rate(key, now, store);
                }
            }
            WaitKey::Concurrency(k) => {
                let k = k.clone();
                self.wake_concurrency(&k, now);
            }
        }
    }

    fn set_timer(&mut self, key: &WaitKey, at: Nanos) {
        self.timer_at.insert(key.clone(), at);
        self.timers.push(Reverse((at, key.clone())));
    }

    /// Run `id` as the API shows it. A run parked behind a rate key's head shows the head's
    /// `eligible_at`, the earliest it could start: derived here, so it is never stale.
    pub(crate) fn view(&self, id: &str) -> Option<RunView> {
        let run = self.runs.get(id)?;
        let mut view = RunView::from(run);
        if let RunPhase::Waiting {
            on: key @ WaitKey::Rate { .. },
            ..
        } = &run.phase
            && let Some(head) = self.parked.get(key).and_then(WaitQueue::head)
            && head != id
        {
            view.eligible_at_ms = self
                .runs
                .get(head)
                .and_then(|h| h.phase.eligible_at())
                .map(Nanos::as_millis_ceil);
        }
        Some(view)
    }

    // ---- enqueue -------------------------------------------------------------------------

    /// Renders a run of `task` without storing it or changing anything: the part of an
    /// enqueue that can reject the run. An event prepares all its runs before storing any, so
    /// that one task's failing expression keeps none of them.
    pub(crate) fn prepare(
        &self,
        task_name: &str,
        input: Value,
        additional_metadata: Value,
        event: Option<Value>,
    ) -> Result<Prepared, Error> {
        let task = self
            .tasks
            .get(task_name)
            .cloned()
            .ok_or_else(|| Error::UnknownTask {
                name: task_name.to_owned(),
            })?;
        let ctx = RunContext {
            input: &input,
            additional_metadata: &additional_metadata,
            event: event.as_ref(),
        };
        let (rendered, failure) = if ctx.event.is_some() {
            task.render_for_event(&ctx)
        } else {
            task.render_for_enqueue(&ctx)?
        };
        Ok(Prepared {
            task,
            rendered,
            failure,
            input,
            additional_metadata,
            event,
            due: None,
        })
    }

    /// Stores a prepared run: failed, skipped, scheduled (due after `now`) or queued.
    pub(crate) fn insert(
        &mut self,
        prepared: Prepared,
        now: Nanos,
        store: &dyn Store,
    ) -> Result<String, Error> {
        let Prepared {
            task,
            rendered,
            failure,
            input,
            additional_metadata,
            event,
            due,
        } = prepared;
        let policy = RunPolicy {
            on_limit: task.on_limit,
            lease_timeout: task.lease_timeout,
            retry: task.retry,
        };
        // A declared limit is known now too: units it can never hold fail the run at once
        // rather than at its first lease.
        let failure = failure.or_else(|| {
            rendered.rate.iter().filter(|r| r.dynamic.is_none()).find_map(|r| {
                let capacity = match store.get_limit(&r.key, now).ok()??.limit {
                    tollgate_core::Limit::Rate(l) => l.capacity(),
                    _ => return None,
                };
                (u64::from(r.units) > capacity).then(|| {
                    format!(
                        "insufficient_capacity: rate_limits[{}] asks {} units of key {:?}, which holds at most {capacity}",
                        r.spec_index, r.units, r.key
                    )
                })
            })
        });

        self.next_seq += 1;
        let seq = self.next_seq;
        let id = format!("{}{seq:x}", self.id_prefix);
        let mut run = Run {
            id: id.clone(),
            seq,
            task: task.name.clone(),
            phase: RunPhase::Queued,
            input,
            additional_metadata,
            event,
            attempt: 0,
            max_attempts: task.max_attempts,
            rendered,
            policy: Some(policy),
            error: None,
            output: None,
            created_at: now,
            updated_at: now,
            consumed_at: None,
            gate_at: None,
            reserved: false,
            held: Vec::new(),
        };
        if let Some(reason) = failure {
            run.phase = RunPhase::Failed { worker_id: None };
            run.error = Some(reason);
        } else if let Some(key) = run.rendered.idempotency_key.clone() {
            self.sweep_seen(now);
            let k = (task.name.clone(), key);
            if self.seen.get(&k).is_some_and(|until| *until > now) {
                run.phase = RunPhase::Skipped {
                    reason: "duplicate".into(),
                    key: Some(k.1.clone()),
                };
            } else {
                let period = task
                    .idempotency_period()
                    .map_or(Nanos::ZERO, Period::as_nanos);
                self.seen.insert(k, now + period);
            }
        }
        // A run due later is scheduled: its rate_limit and its policy are decided when it is
        // due (wake_scheduled). Until then it names its keys as any run not yet ended.
        match due {
            Some(at) if at > now && run.state() == RunState::Queued => {
                run.phase = RunPhase::Scheduled { at, retry: false };
            }
            _ => Self::pass_gate(&mut run, now, store)?,
        }
        // A run that may still start names its keys from now on: the newest definition of a
        // dynamic key is its own, and a key whose definition this changed is re-planned below.
        let live = matches!(run.state(), RunState::Queued | RunState::Scheduled);
        let changed = if live {
            self.key_uses.register(&run.rendered)
        } else {
            Vec::new()
        };
        if let Err(e) = self.apply_skip_policy(&mut run, now, store) {
            self.key_uses.unregister(&run.rendered);
            return Err(e);
        }
        self.metrics
            .transition(&run.task, &run.id, Transition::Enqueued);
        match &run.phase {
            RunPhase::Scheduled { at, .. } => {
                self.scheduled.insert((*at, seq, id.clone()));
            }
            _ => self.place_new(&run),
        }
        if live && !matches!(run.state(), RunState::Queued | RunState::Scheduled) {
            self.key_uses.unregister(&run.rendered);
        }
        self.runs.insert(id.clone(), run);
        self.dirty.push(id.clone());
        for key in changed {
            self.replan(&key, now, store);
        }
        Ok(id)
    }

    /// A new run's outcome: a queued run joins its task's ready queue; a run that ended is
    /// counted as such.
    fn place_new(&mut self, run: &Run) {
        match run.state() {
            RunState::Queued => {
                self.ready.entry(run.task.clone()).or_default().push(
                    &run.id,
                    run.rendered.priority,
                    false,
                );
                self.became_ready = true;
            }
            RunState::Failed => self
                .metrics
                .transition(&run.task, &run.id, Transition::Failed),
            RunState::Skipped => self
                .metrics
                .transition(&run.task, &run.id, Transition::Skipped),
            _ => {}
        }
    }

    /// The task's `rate_limit` (Inngest's), decided once for a queued run, whatever the policy:
    /// a run over it is skipped; one it admits keeps the units, taken at `gate_at` (what
    /// recovery replays after a crash, engine/recovery.rs). A transient store error is
    /// returned, nothing consumed.
    fn pass_gate(run: &mut Run, now: Nanos, store: &dyn Store) -> Result<(), Error> {
        if run.state() == RunState::Queued && !run.rendered.gate.is_empty() {
            match run.rendered.gate_entries().map(|e| store.acquire(&e, now)) {
                Ok(Ok(a)) if a.allowed => run.gate_at = Some(now),
                Ok(Ok(a)) => {
                    let i = a.first_denied().unwrap_or(0);
                    run.phase = RunPhase::Skipped {
                        reason: "rate_limited".into(),
                        key: run.rendered.gate.get(i).map(|r| r.key.clone()),
                    };
                }
                Ok(Err(e)) if e.is_transient() => return Err(e),
                Ok(Err(e)) => {
                    run.phase = RunPhase::Failed { worker_id: None };
                    run.error = Some(e.to_string());
                }
                Err(e) => {
                    run.phase = RunPhase::Failed { worker_id: None };
                    run.error = Some(e.to_string());
                }
            }
        }
        Ok(())
    }

    /// `on_limit: skip` for a queued run: its limits are consumed now; a run over them never
    /// runs. A transient store error is returned, nothing consumed.
    fn apply_skip_policy(
        &mut self,
        run: &mut Run,
        now: Nanos,
        store: &dyn Store,
    ) -> Result<(), Error> {
        let skip = run.policy.is_some_and(|p| p.on_limit == OnLimit::Skip);
        if run.state() != RunState::Queued || !skip || run.rendered.rate.is_empty() {
            return Ok(());
        }
        let result = entries(run, &self.key_uses).map(|e| store.acquire(&e, now));
        if let Ok(Ok(a)) = &result {
            self.metrics.decision(&run.task, &run.rendered.rate, a);
        }
        match result {
            Ok(Ok(a)) if a.allowed => {
                run.reserved = true;
                run.consumed_at = Some(now);
            }
            Ok(Ok(a)) => {
                let i = a.first_denied().unwrap_or(0);
                run.phase = RunPhase::Skipped {
                    reason: "rate_limited".into(),
                    key: run.rendered.rate.get(i).map(|r| r.key.clone()),
                };
            }
            Ok(Err(e)) if e.is_transient() => return Err(e),
            Ok(Err(e)) => {
                run.phase = RunPhase::Failed { worker_id: None };
                run.error = Some(e.to_string());
            }
            Err(reason) => {
                run.phase = RunPhase::Failed { worker_id: None };
                run.error = Some(reason);
            }
        }
        Ok(())
    }

    /// A scheduled run that is due: admitted as a new run would be (its rate_limit, then its
    /// policy), then queued, skipped or failed.
    fn wake_scheduled(&mut self, id: &str, at: Nanos, now: Nanos, store: &dyn Store) {
        let Some(mut run) = self.runs.remove(id) else {
            return;
        };
        let RunPhase::Scheduled { at: due, retry } = run.phase else {
            // Cancelled (or otherwise moved on) since: a stale entry.
            self.runs.insert(id.to_owned(), run);
            return;
        };
        if due != at {
            self.runs.insert(id.to_owned(), run);
            return;
        }
        run.phase = RunPhase::Queued;
        // A retry that waited out its backoff is queued; a new run is admitted as one.
        let outcome = if retry {
            Ok(())
        } else {
            Self::pass_gate(&mut run, now, store)
                .and_then(|()| self.apply_skip_policy(&mut run, now, store))
        };
        if let Err(e) = outcome {
            run.phase = RunPhase::Failed { worker_id: None };
            run.error = Some(e.to_string());
        }
        self.place_new(&run);
        if run.state().is_final() {
            self.key_uses.unregister(&run.rendered);
        }
        run.updated_at = now;
        self.runs.insert(id.to_owned(), run);
        self.dirty.push(id.to_owned());
    }

    fn sweep_seen(&mut self, now: Nanos) {
        if self.seen.len() >= self.seen_sweep_at {
            self.seen.retain(|_, until| *until > now);
            self.seen_sweep_at = (self.seen.len() * 2).max(1024);
        }
    }

    /// Restores a run loaded from the journal, re-queueing what was queued or waiting (in
    /// enqueue order, so parked runs park again in their original FIFO order).
    pub(crate) fn restore(&mut self, mut run: Run) {
        self.next_seq = self.next_seq.max(run.seq);
        let id = run.id.clone();
        if run.policy.is_none() {
            // Written by a build that read these from the task at each use: the task's
            // definition now is what that build would have applied.
            let task = self.tasks.get(&run.task);
            run.policy = Some(task.map_or_else(RunPolicy::default, |t| RunPolicy {
                on_limit: t.on_limit,
                lease_timeout: t.lease_timeout,
                retry: t.retry,
            }));
        }
        if !run.state().is_final() {
            // Restore goes by seq: the newest definition of a dynamic key ends up in force.
            self.key_uses.register(&run.rendered);
        }
        // A waiting run is parked on the key its phase names (a journal's waiting run whose key
        // none of its limits names was read as queued: see `Run`'s journal form).
        match &run.phase {
            RunPhase::Waiting { on, .. } => {
                // Parks again where it was, in enqueue order (restore goes by seq); the first one
                // per key is the head and gets the key's timer (finish_restore).
                for k in &run.held {
                    *self.live.entry(k.clone()).or_default() += 1;
                }
                self.parked.entry(on.clone()).or_default().push(
                    &id,
                    run.seq,
                    run.rendered.priority,
                    run.rendered.fairness.as_deref(),
                    run.rendered.weight,
                );
            }
            RunPhase::Queued => {
                for k in &run.held {
                    *self.live.entry(k.clone()).or_default() += 1;
                }
                self.ready.entry(run.task.clone()).or_default().push(
                    &id,
                    run.rendered.priority,
                    false,
                );
                self.became_ready = true;
            }
            RunPhase::Running {
                lease_expires_at, ..
            } => {
                for k in &run.held {
                    *self.live.entry(k.clone()).or_default() += 1;
                }
                self.leases.push(Reverse((*lease_expires_at, id.clone())));
            }
            RunPhase::Scheduled { at, .. } => {
                self.scheduled.insert((*at, run.seq, id.clone()));
            }
            _ => {}
        }
        if let (Some(key), Some(period)) = (
            run.rendered.idempotency_key.clone(),
            self.tasks
                .get(&run.task)
                .and_then(|t| t.idempotency_period()),
        ) && !matches!(&run.phase, RunPhase::Skipped { reason, .. } if reason == "duplicate")
        {
            let until = run.created_at + period.as_nanos();
            let e = self.seen.entry((run.task.clone(), key)).or_insert(until);
            *e = (*e).max(until);
        }
        self.runs.insert(id, run);
    }

    /// After every run is restored: each rate key's head gets its timer back (at its stored
    /// `eligible_at`, or now), and free concurrency slots go to the heads waiting for them.
    pub(crate) fn finish_restore(&mut self, now: Nanos) {
        let keys: Vec<WaitKey> = self.parked.keys().cloned().collect();
        for key in keys {
            match &key {
                WaitKey::Rate { .. } => {
                    let at = self
                        .parked
                        .get(&key)
                        .and_then(WaitQueue::head)
                        .and_then(|h| self.runs.get(h))
                        .and_then(|r| r.phase.eligible_at())
                        .unwrap_or(now);
                    self.set_timer(&key, at);
                }
                WaitKey::Concurrency(k) => {
                    let k = k.clone();
                    self.wake_concurrency(&k, now);
                }
            }
        }
    }

    // ---- admission -----------------------------------------------------------------------

    /// Tries to start run `id` now: concurrency first (nothing consumed when full), then rate
    /// units (unless already reserved), then takes its slots.
    fn admit(&mut self, id: &str, now: Nanos, store: &dyn Store) -> Admission {
        let Some(run) = self.runs.get(id) else {
            return Admission::Failed("run vanished".into());
        };
        let rate_due = !run.reserved
            && run.policy().on_limit == OnLimit::Requeue
            && !run.rendered.rate.is_empty();
        if rate_due {
            // FIFO per key: queue behind runs already parked on any of our keys.
            for r in &run.rendered.rate {
                let k = WaitKey::Rate {
                    dynamic: r.dynamic.is_some(),
                    key: r.key.clone(),
                };
                if let Some(q) = self.parked.get(&k)
                    && !q.is_empty()
                {
                    let eta = q
                        .head()
                        .and_then(|h| self.runs.get(h))
                        .and_then(|h| h.phase.eligible_at());
                    return Admission::Parked(k, eta);
                }
            }
        }
        for c in &run.rendered.concurrency {
            if run.held.contains(&c.key) {
                continue;
            }
            let k = WaitKey::Concurrency(c.key.clone());
            let queued = self.parked.get(&k).is_some_and(|q| !q.is_empty());
            let limit = self.concurrency_limit(&c.key, c.limit);
            if queued || self.live.get(&c.key).copied().unwrap_or(0) >= limit {
                return Admission::Parked(k, None);
            }
        }
        if rate_due {
            let result = match entries(run, &self.key_uses) {
                Ok(e) => store.acquire(&e, now),
                Err(reason) => return Admission::Failed(reason),
            };
            if let Ok(a) = &result {
                self.metrics.decision(&run.task, &run.rendered.rate, a);
            }
            match result {
                Ok(a) if a.allowed => {
                    let run = self
                        .runs
                        .get_mut(id)
                        .unwrap_or_else(|| unreachable!("checked above"));
                    run.reserved = true;
                    run.consumed_at = Some(now);
                }
                Ok(a) => {
                    let i = a.first_denied().unwrap_or(0);
                    let r = &run.rendered.rate[i];
                    let k = WaitKey::Rate {
                        dynamic: r.dynamic.is_some(),
                        key: r.key.clone(),
                    };
                    return Admission::Parked(k, Some(now + a.decisions[i].retry_after));
                }
                Err(e) => return Admission::Failed(e.to_string()),
            }
        }
        let run = self
            .runs
            .get_mut(id)
            .unwrap_or_else(|| unreachable!("checked above"));
        let wanted: Vec<String> = run
            .rendered
            .concurrency
            .iter()
            .map(|c| c.key.clone())
            .filter(|k| !run.held.contains(k))
            .collect();
        for k in wanted {
            *self.live.entry(k.clone()).or_default() += 1;
            run.held.push(k);
        }
        Admission::Admitted
    }

    fn park(&mut self, id: &str, key: WaitKey, eta: Option<Nanos>, now: Nanos) {
        // A parked run holds no slot: never one while waiting for another (no hold-and-wait
        // deadlock), nor while waiting for a rate limit (it would shut out every other user
        // of the key for as long as the limit keeps it).
        self.release_slots(id, now);
        if let Some(run) = self.runs.get_mut(id) {
            run.phase = RunPhase::Waiting {
                on: key.clone(),
                eligible_at: eta,
            };
            self.metrics
                .transition(&run.task, &run.id, Transition::Parked);
            tracing::debug!(
                target: "tollgate::queue",
                run = %run.id,
                waiting_on = key.name(),
                eligible_at_ms = eta.map(Nanos::as_millis_ceil),
                "run parked"
            );
        }
        self.metrics.forget(id);
        let Some(run) = self.runs.get(id) else {
            return;
        };
        let q = self.parked.entry(key.clone()).or_default();
        let was_empty = q.is_empty();
        q.push(
            id,
            run.seq,
            run.rendered.priority,
            run.rendered.fairness.as_deref(),
            run.rendered.weight,
        );
        let is_head = q.head() == Some(id);
        if was_empty {
            if let Some(t) = eta {
                self.set_timer(&key, t);
            }
        } else if is_head && let Some(t) = self.timer_at.get(&key).copied() {
            // It goes ahead of the runs parked before it: it is tried when the key's timer
            // fires, and shows that instant.
            if let Some(run) = self.runs.get_mut(id) {
                run.phase = RunPhase::Waiting {
                    on: key.clone(),
                    eligible_at: Some(t),
                };
            }
        }
        self.touch(id, now);
    }

    fn make_ready_first(&mut self, id: &str, now: Nanos) {
        if let Some(run) = self.runs.get_mut(id) {
            run.phase = RunPhase::Queued;
            self.ready
                .entry(run.task.clone())
                .or_default()
                .push(id, run.rendered.priority, true);
            self.became_ready = true;
        }
        self.touch(id, now);
    }

    fn fail(&mut self, id: &str, reason: String, now: Nanos) {
        self.release_slots(id, now);
        self.unregister(id);
        if let Some(run) = self.runs.get_mut(id) {
            // The worker whose lease it failed under stays on record; a lapsed lease has none.
            let worker_id = match std::mem::replace(&mut run.phase, RunPhase::Queued) {
                RunPhase::Running { worker_id, .. } => Some(worker_id),
                _ => None,
            };
            run.phase = RunPhase::Failed { worker_id };
            run.error = Some(reason);
            run.reserved = false;
            self.metrics
                .transition(&run.task, &run.id, Transition::Failed);
        }
        self.metrics.forget(id);
        self.touch(id, now);
    }

    /// Frees the concurrency slots run `id` holds and hands each to the head of its FIFO.
    fn release_slots(&mut self, id: &str, now: Nanos) {
        let held = match self.runs.get_mut(id) {
            Some(r) => std::mem::take(&mut r.held),
            None => return,
        };
        for k in held {
            if let Some(n) = self.live.get_mut(&k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.live.remove(&k);
                }
            }
            self.wake_concurrency(&k, now);
        }
    }

    /// Hands free slots of concurrency key `key` to the runs at the head of its FIFO.
    fn wake_concurrency(&mut self, key: &str, now: Nanos) {
        let wk = WaitKey::Concurrency(key.to_owned());
        loop {
            let Some(id) = self
                .parked
                .get(&wk)
                .and_then(|q| q.head().map(str::to_owned))
            else {
                self.parked.remove(&wk);
                return;
            };
            let Some(run) = self.runs.get(&id) else {
                self.take_parked(&wk, &id);
                continue;
            };
            if !matches!(&run.phase, RunPhase::Waiting { on, .. } if *on == wk) {
                self.take_parked(&wk, &id);
                continue;
            }
            let own = run
                .rendered
                .concurrency
                .iter()
                .find(|c| c.key == key)
                .map_or(0, |c| c.limit);
            let limit = self.concurrency_limit(key, own);
            if self.live.get(key).copied().unwrap_or(0) >= limit {
                return;
            }
            self.take_parked(&wk, &id);
            *self.live.entry(key.to_owned()).or_default() += 1;
            if let Some(run) = self.runs.get_mut(&id) {
                run.held.push(key.to_owned());
            }
            // Eligible from the moment its slot was freed.
            self.metrics.woken(&id, now);
            self.make_ready_first(&id, now);
        }
    }

    /// Takes run `id` out of `key`'s wait queue, its turn come (admitted, or moved on); an
    /// empty queue is forgotten (its fairness turns start afresh).
    fn take_parked(&mut self, key: &WaitKey, id: &str) {
        if let Some(q) = self.parked.get_mut(key) {
            q.take(id);
            if q.is_empty() {
                self.parked.remove(key);
            }
        }
    }

    /// A rate key's timer fired: reserve for its head, then the next, until one is denied.
    fn wake_rate(&mut self, key: &WaitKey, now: Nanos, store: &dyn Store) {
        // Whatever timer the key held is spent: a head denied below sets the next one.
        self.timer_at.remove(key);
        loop {
            let Some(id) = self
                .parked
                .get(key)
                .and_then(|q| q.head().map(str::to_owned))
            else {
                self.parked.remove(key);
                return;
            };
            let valid = self
                .runs
                .get(&id)
                .is_some_and(|r| matches!(&r.phase, RunPhase::Waiting { on, .. } if on == key));
            if !valid {
                self.take_parked(key, &id);
                continue;
            }
            let run = &self.runs[&id];
            let eligible_at = run.phase.eligible_at().unwrap_or(now);
            if run.reserved {
                // Already holds its units (parked on concurrency before, then re-parked).
                self.take_parked(key, &id);
                self.metrics.woken(&id, eligible_at);
                self.make_ready_first(&id, now);
                continue;
            }
            let result = match entries(run, &self.key_uses) {
                Ok(e) => store.acquire(&e, now),
                Err(reason) => {
                    self.take_parked(key, &id);
                    self.fail(&id, reason, now);
                    continue;
                }
            };
            if let Ok(a) = &result {
                self.metrics.decision(&run.task, &run.rendered.rate, a);
            }
            match result {
                Ok(a) if a.allowed => {
                    self.take_parked(key, &id);
                    if let Some(run) = self.runs.get_mut(&id) {
                        run.reserved = true;
                        run.consumed_at = Some(now);
                    }
                    self.metrics.woken(&id, eligible_at);
                    self.make_ready_first(&id, now);
                }
                Ok(a) => {
                    let i = a.first_denied().unwrap_or(0);
                    let r = &run.rendered.rate[i];
                    let denied = WaitKey::Rate {
                        dynamic: r.dynamic.is_some(),
                        key: r.key.clone(),
                    };
                    let eta = now + a.decisions[i].retry_after;
                    if denied == *key {
                        if let Some(run) = self.runs.get_mut(&id) {
                            run.phase = RunPhase::Waiting {
                                on: key.clone(),
                                eligible_at: Some(eta),
                            };
                        }
                        self.touch(&id, now);
                        self.set_timer(key, eta);
                        return;
                    }
                    self.take_parked(key, &id);
                    self.park(&id, denied, Some(eta), now);
                }
                Err(e) if e.is_transient() => {
                    // The store is unreachable: try this head again shortly.
                    self.set_timer(key, now + Nanos::from_millis(100));
                    return;
                }
                Err(e) => {
                    self.take_parked(key, &id);
                    self.fail(&id, e.to_string(), now);
                }
            }
        }
    }

    /// Fires due timers and lease expiries. The engine calls it before every change
    /// (`Engine::apply`), so the operations below find nothing due left.
    pub(crate) fn process_due(&mut self, now: Nanos, store: &dyn Store) {
        while let Some(Reverse((t, _))) = self.timers.peek() {
            if *t > now {
                break;
            }
            let Some(Reverse((t, key))) = self.timers.pop() else {
                break;
            };
            if self.timer_at.get(&key) == Some(&t) {
                self.wake_rate(&key, now, store);
            }
        }
        while let Some(Reverse((t, _))) = self.leases.peek() {
            if *t > now {
                break;
            }
            let Some(Reverse((t, id))) = self.leases.pop() else {
                break;
            };
            let expired = self
                .runs
                .get(&id)
                .is_some_and(|r| r.phase.lease_expires_at() == Some(t));
            if expired {
                self.expire(&id, now);
            }
        }
        while let Some((at, _, _)) = self.scheduled.first() {
            if *at > now {
                break;
            }
            let Some((at, _, id)) = self.scheduled.pop_first() else {
                break;
            };
            self.wake_scheduled(&id, at, now, store);
        }
    }

    fn expire(&mut self, id: &str, now: Nanos) {
        self.release_slots(id, now);
        let Some(run) = self.runs.get_mut(id) else {
            return;
        };
        run.reserved = false;
        // The lease is gone: the run is queued again below, or failed with no worker.
        run.phase = RunPhase::Queued;
        self.metrics
            .transition(&run.task, &run.id, Transition::Expired);
        if run.attempt >= run.max_attempts {
            let reason = format!(
                "lease expired on attempt {} of {}: the worker stopped heartbeating",
                run.attempt, run.max_attempts
            );
            self.fail(id, reason, now);
        } else {
            run.error = Some(format!("lease expired on attempt {}", run.attempt));
            match Self::backoff(run, None) {
                Some(delay) => self.schedule_retry(id, now + delay),
                None => self.make_ready_first(id, now),
            }
        }
    }

    /// How long a retry of `run` (after its current attempt) waits: `retry_after` when given,
    /// else its task's backoff (with jitter when asked for); `None` to queue it at once.
    fn backoff(run: &Run, retry_after: Option<Nanos>) -> Option<Nanos> {
        let delay = match retry_after {
            Some(d) => d,
            None => {
                let policy = run.policy.and_then(|p| p.retry)?;
                let micros = policy.delay_micros(run.attempt);
                let micros = if policy.jitter {
                    // Between half of the delay and all of it, from a per-process seeded hash
                    // of the run and its attempt.
                    use std::hash::BuildHasher;
                    let half = micros / 2;
                    let seed =
                        foldhash::fast::RandomState::default().hash_one((&run.id, run.attempt));
                    half + seed % (micros - half + 1)
                } else {
                    micros
                };
                Nanos::from_micros(micros)
            }
        };
        (delay > Nanos::ZERO).then_some(delay)
    }

    /// Schedules run `id` to be queued again at `at` (a retry waiting out its backoff).
    fn schedule_retry(&mut self, id: &str, at: Nanos) {
        if let Some(run) = self.runs.get_mut(id) {
            run.phase = RunPhase::Scheduled { at, retry: true };
            self.scheduled.insert((at, run.seq, id.to_owned()));
        }
    }

    // ---- worker operations ---------------------------------------------------------------

    /// Leases up to `max` runs of `tasks`, taking one per task in turn (what was due has
    /// been fired by the caller).
    pub(crate) fn lease(
        &mut self,
        worker_id: &str,
        tasks: &[String],
        max: usize,
        now: Nanos,
        store: &dyn Store,
    ) -> Vec<String> {
        let mut out = Vec::new();
        let mut exhausted = vec![false; tasks.len()];
        while out.len() < max && exhausted.iter().any(|e| !e) {
            for (i, task) in tasks.iter().enumerate() {
                if out.len() >= max || exhausted[i] {
                    continue;
                }
                match self.next_admitted(task, now, store) {
                    Some(id) => {
                        self.start(&id, worker_id, now);
                        out.push(id);
                    }
                    None => exhausted[i] = true,
                }
            }
        }
        out
    }

    fn next_admitted(&mut self, task: &str, now: Nanos, store: &dyn Store) -> Option<String> {
        loop {
            let runs = &self.runs;
            let id = self.ready.get_mut(task)?.take(
                |id| runs.get(id).is_some_and(|r| r.state() == RunState::Queued),
                |id| runs.get(id).map_or(u64::MAX, |r| r.seq),
            )?;
            match self.admit(&id, now, store) {
                Admission::Admitted => return Some(id),
                Admission::Parked(key, eta) => self.park(&id, key, eta, now),
                Admission::Failed(reason) => self.fail(&id, reason, now),
            }
        }
    }

    fn start(&mut self, id: &str, worker_id: &str, now: Nanos) {
        if let Some(run) = self.runs.get_mut(id) {
            let timeout = run.policy().lease_timeout.as_nanos();
            run.attempt += 1;
            let until = now + timeout;
            run.phase = RunPhase::Running {
                lease_expires_at: until,
                worker_id: worker_id.to_owned(),
            };
            self.leases.push(Reverse((until, id.to_owned())));
            self.metrics
                .transition(&run.task, &run.id, Transition::Leased);
        }
        self.metrics.leased(id, now);
        self.touch(id, now);
    }

    fn running(&self, id: &str, attempt: Option<u32>, action: &'static str) -> Result<(), Error> {
        let run = self.run(id)?;
        if run.state() != RunState::Running || attempt.is_some_and(|a| a != run.attempt) {
            return Err(Error::InvalidState {
                id: id.to_owned(),
                state: run.state().as_str(),
                action,
            });
        }
        Ok(())
    }

    /// Extends a running run's lease by its task's lease timeout.
    pub(crate) fn heartbeat(
        &mut self,
        id: &str,
        attempt: Option<u32>,
        now: Nanos,
    ) -> Result<Nanos, Error> {
        self.running(id, attempt, "heartbeat")?;
        let Some(run) = self.runs.get_mut(id) else {
            return Err(Error::UnknownRun { id: id.to_owned() });
        };
        let until = now + run.policy().lease_timeout.as_nanos();
        if let RunPhase::Running {
            lease_expires_at, ..
        } = &mut run.phase
        {
            *lease_expires_at = until;
        }
        self.leases.push(Reverse((until, id.to_owned())));
        self.touch(id, now);
        Ok(until)
    }

    /// Marks a running run succeeded.
    pub(crate) fn complete(
        &mut self,
        id: &str,
        attempt: Option<u32>,
        output: Option<Value>,
        now: Nanos,
    ) -> Result<(), Error> {
        self.running(id, attempt, "complete")?;
        self.release_slots(id, now);
        self.unregister(id);
        if let Some(run) = self.runs.get_mut(id) {
            run.phase = RunPhase::Succeeded {
                worker_id: run.phase.worker_id().map(str::to_owned),
            };
            run.output = output;
            run.error = None;
            run.reserved = false;
            self.metrics
                .transition(&run.task, &run.id, Transition::Succeeded);
        }
        self.touch(id, now);
        Ok(())
    }

    /// Records a failure; requeues when `retry` and attempts remain.
    pub(crate) fn fail_run(
        &mut self,
        id: &str,
        attempt: Option<u32>,
        error: String,
        retry: bool,
        retry_after: Option<Nanos>,
        now: Nanos,
    ) -> Result<RunState, Error> {
        self.running(id, attempt, "fail")?;
        let run = &self.runs[id];
        if retry && run.attempt < run.max_attempts {
            let backoff = Self::backoff(run, retry_after);
            self.release_slots(id, now);
            if let Some(run) = self.runs.get_mut(id) {
                run.error = Some(error);
                run.reserved = false;
                run.phase = RunPhase::Queued;
            }
            let state = match backoff {
                Some(delay) => {
                    self.schedule_retry(id, now + delay);
                    RunState::Scheduled
                }
                None => {
                    if let Some(run) = self.runs.get(id) {
                        self.ready.entry(run.task.clone()).or_default().push(
                            id,
                            run.rendered.priority,
                            false,
                        );
                        self.became_ready = true;
                    }
                    RunState::Queued
                }
            };
            self.touch(id, now);
            Ok(state)
        } else {
            self.fail(id, error, now);
            Ok(RunState::Failed)
        }
    }

    /// Hands a running run back without counting the attempt; its rate units are refunded.
    pub(crate) fn release(
        &mut self,
        id: &str,
        attempt: Option<u32>,
        now: Nanos,
        store: &dyn Store,
    ) -> Result<(), Error> {
        self.running(id, attempt, "release")?;
        self.release_slots(id, now);
        self.refund(id, now, store);
        if let Some(run) = self.runs.get_mut(id) {
            run.attempt = run.attempt.saturating_sub(1);
        }
        self.make_ready_first(id, now);
        Ok(())
    }

    fn refund(&mut self, id: &str, now: Nanos, store: &dyn Store) {
        let Some(run) = self.runs.get(id) else { return };
        if run.reserved && run.policy().on_limit == OnLimit::Requeue {
            if let Ok(e) = entries(run, &self.key_uses) {
                // A failed refund only leaves the units counted: conservative.
                let _ = store.refund(&e, now);
            }
            if let Some(run) = self.runs.get_mut(id) {
                run.reserved = false;
                run.consumed_at = None;
            }
        }
    }

    /// Cancels a run that has not ended.
    pub(crate) fn cancel(&mut self, id: &str, now: Nanos, store: &dyn Store) -> Result<(), Error> {
        let run = self.run(id)?;
        if run.state().is_final() {
            return Err(Error::InvalidState {
                id: id.to_owned(),
                state: run.state().as_str(),
                action: "cancel",
            });
        }
        let was = run.state();
        let parked_on = match &run.phase {
            RunPhase::Waiting { on, .. } => Some(on.clone()),
            _ => None,
        };
        if was != RunState::Running {
            self.refund(id, now, store);
        }
        self.release_slots(id, now);
        self.unregister(id);
        if let Some(run) = self.runs.get_mut(id) {
            // A running run's worker stays on record: it learns of the cancel on its next call.
            run.phase = RunPhase::Cancelled {
                worker_id: run.phase.worker_id().map(str::to_owned),
            };
            self.metrics
                .transition(&run.task, &run.id, Transition::Cancelled);
        }
        self.metrics.forget(id);
        self.touch(id, now);
        if let Some(key) = parked_on
            && let Some(q) = self.parked.get_mut(&key)
        {
            let was_head = q.head() == Some(id);
            q.remove(id);
            if q.is_empty() {
                self.parked.remove(&key);
            }
            if was_head {
                // The next run takes its turn now: it is admitted or parked with its own
                // eligible_at before this call returns, not at the next tick.
                match &key {
                    WaitKey::Rate { .. } => self.wake_rate(&key, now, store),
                    WaitKey::Concurrency(k) => self.wake_concurrency(k, now),
                }
            }
        }
        Ok(())
    }

    /// How many runs each task has in each state.
    pub(crate) fn depth(&self) -> std::collections::HashMap<(String, RunState), u64> {
        let mut out = std::collections::HashMap::new();
        for r in self.runs.values() {
            *out.entry((r.task.clone(), r.state())).or_default() += 1;
        }
        out
    }
}
