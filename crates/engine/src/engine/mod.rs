//! [`Engine`]: what the server runs — a [`Limiter`], the task-run admission queue, and
//! (optionally) SQLite durability. The server is a thin HTTP shell over it.
//!
//! One file per job, so each can be read (and changed) without the others: construction and
//! the queue API here; `journal` (every change journaled in order), `recovery` (restoring and
//! replaying after a restart), `direct_use` (journalling direct acquires), `durable_leases`
//! (journalling direct leases and barriers), `pauses` (pausing keys), `retention`
//! (forgetting ended runs), `background` (the tasks an engine spawns), `run_queue` (the engine as
//! a [`RunQueue`](crate::RunQueue); the long-poll is the one both engines share, in
//! `crate::queue::run_queue`).

mod background;
mod direct_use;
mod durable_leases;
mod journal;
mod pauses;
mod recovery;
mod retention;
mod run_queue;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::Notify;
use tollgate_core::{Adaptive, Declared, Feedback, Limit};

use crate::db::{Db, StoredState, Write};
use crate::error::Error;
use crate::fast_map::FastHashMap;
use crate::limiter::{AsyncLimiter, Limiter};
use crate::metrics::QueueMetrics;
use crate::queue::run::{LeasedRun, Run, RunState, RunView};
use crate::queue::run_queue::{LeaseAttempt, StartAt, check_name, compile_task, tasks_naming};
use crate::queue::state::{QueueState, WaitKey};
use crate::spec::{LimitSpec, LimitSpecExt};
use crate::store::memory::MemoryStore;
use crate::store::{Namespace, Store};
use crate::task::{Task, TaskSpec};
use background::{spawn_pruning, spawn_snapshots, spawn_timer};
use direct_use::DirectEntry;
pub use retention::DEFAULT_RETENTION;

pub use crate::queue::run_queue::MAX_LEASE_BATCH;

/// The embedded server's core. Cheap to clone. Must be created inside a tokio runtime: it
/// spawns the task that fires parked runs' timers and lease expiries.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tollgate::Error> {
/// use std::time::Duration;
/// use tollgate::{Engine, Limiter, LimitSpec, TaskSpec};
/// let engine = Engine::in_memory(Limiter::new());
/// engine.put_limit("test-limit", serde_json::from_str::<LimitSpec>(r#"{"rate": "2/s"}"#).unwrap()).await?;
/// let spec: TaskSpec = serde_json::from_str(r#"{"rate_limits": [{"static_key": "test-limit", "units": 1}]}"#).unwrap();
/// engine.put_task("send-email", spec).await?;
/// let run = engine.enqueue("send-email", serde_json::json!({"to": "a@example.com"}), serde_json::json!({})).await?;
/// let leased = engine.lease("worker-1", &["send-email".to_owned()], 10, Duration::from_secs(1)).await?;
/// assert_eq!(leased[0].id, run.id);
/// assert_eq!(leased[0].attempt, 1);
/// engine.complete(&run.id, None, None).await?;
/// # Ok(()) }
/// ```
pub struct Engine<S: Store + 'static = MemoryStore> {
    inner: Arc<Inner<S>>,
}

struct Inner<S: Store> {
    limiter: Limiter<S>,
    /// The same limiter for async callers ([`RunQueue::limits`](crate::RunQueue::limits)).
    limits: AsyncLimiter,
    state: Mutex<QueueState>,
    /// Woken when runs become ready (lease long-polls wait on it).
    ready: Notify,
    /// Woken when a timer may have moved earlier.
    timer: Arc<Notify>,
    db: Option<Arc<Db>>,
    /// Keys with direct (`/v1/acquire`) use, for crash recovery (only with a `db`).
    /// By namespace, then key, so the acquire path looks a key up without allocating.
    direct: Mutex<FastHashMap<Namespace, FastHashMap<String, DirectEntry>>>,
    /// How long ended runs are kept (nanoseconds; 0: forever).
    retention: std::sync::atomic::AtomicU64,
    /// The bounds of the declared limits that adapt (docs/design.md §3.16), by key: the rest
    /// of their definition, the limit in force included, is the limiter's. Changed only under
    /// the queue's lock (a change of a limit is one step with its re-plan).
    adaptive: Mutex<BTreeMap<String, Adaptive>>,
    /// Lease calls in progress (counted by the shared long-poll, through
    /// `LeaseQueue::lease_calls`): a timer that wakes one leaves its own changes to that call's
    /// commit ([`Engine::apply`]).
    leasing: std::sync::atomic::AtomicUsize,
}

impl<S: Store> Drop for Inner<S> {
    fn drop(&mut self) {
        // Lets the timer task notice the engine is gone.
        self.timer.notify_one();
    }
}

impl<S: Store + 'static> Clone for Engine<S> {
    fn clone(&self) -> Self {
        Engine {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S: Store + 'static> Engine<S> {
    /// An engine that keeps everything in memory.
    pub fn in_memory(limiter: Limiter<S>) -> Engine<S> {
        Engine::build(limiter, None)
    }

    fn build(limiter: Limiter<S>, db: Option<Db>) -> Engine<S> {
        let prefix = format!("{:x}-", limiter.now().as_nanos() / 1_000);
        let db = db.map(Arc::new);
        // With a database, direct leases and barriers are journalled (docs/design.md §8.1).
        let limits = match &db {
            None => limiter.to_async(),
            Some(db) => limiter.to_async_over(Arc::new(durable_leases::DurableLeases {
                store: limiter.shared_store(),
                db: Arc::clone(db),
            })),
        };
        let engine = Engine {
            inner: Arc::new(Inner {
                limits,
                limiter,
                state: Mutex::new(QueueState::new(prefix)),
                ready: Notify::new(),
                timer: Arc::new(Notify::new()),
                db,
                direct: Mutex::new(FastHashMap::default()),
                adaptive: Mutex::new(BTreeMap::new()),
                retention: std::sync::atomic::AtomicU64::new(
                    DEFAULT_RETENTION.as_nanos().as_nanos(),
                ),
                leasing: std::sync::atomic::AtomicUsize::new(0),
            }),
        };
        spawn_timer(
            Arc::downgrade(&engine.inner),
            Arc::clone(&engine.inner.timer),
        );
        if engine.inner.db.is_some() {
            spawn_snapshots(Arc::downgrade(&engine.inner));
        }
        spawn_pruning(Arc::downgrade(&engine.inner));
        engine
    }

    /// The limiter.
    pub fn limiter(&self) -> &Limiter<S> {
        &self.inner.limiter
    }

    fn compile(&self, name: &str, spec: TaskSpec) -> Result<Task, Error> {
        let limiter = &self.inner.limiter;
        compile_task(name, spec, &|key| {
            // The in-memory store fails only for an invalid key, which compiling reports.
            limiter.get(key).ok().flatten().map(|i| i.limit)
        })
    }

    /// Declares or redefines static limit `key` (usage kept), durably; returns the limit in
    /// force. An adaptive limit redefined with the same bounds keeps the limit in force it has
    /// learnt ([`Declared::redefine`], docs/design.md §3.16).
    ///
    /// # Errors
    /// [`Error::Spec`] for a bad definition; [`Error::InvalidKey`]; store failures.
    pub async fn put_limit(&self, key: &str, spec: LimitSpec) -> Result<Limit, Error> {
        let given = spec.to_declared().map_err(Error::Spec)?;
        crate::error::check_key(key)?;
        let declared = self
            .mutate(Vec::new(), |st, now, store| {
                let declared = given.redefine(self.declared(key)?.as_ref());
                self.define(st, key, declared, now, store)?;
                Ok(declared)
            })
            .await?;
        Ok(*declared.limit())
    }

    /// Reports `feedback` for adaptive limit `key`: one AIMD step of its limit in force, which
    /// redefines the limit (usage kept) and re-plans the runs parked on it, durably, as a
    /// [`Engine::put_limit`] does (docs/design.md §3.16). Returns the definition after it.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; [`Error::UnknownLimit`]; [`Error::NotAdaptive`] for a limit
    /// declared without `adaptive`; store failures.
    pub async fn feedback(&self, key: &str, feedback: Feedback) -> Result<Declared, Error> {
        crate::error::check_key(key)?;
        let step = |current: Option<Declared>| {
            let current = current.ok_or_else(|| Error::UnknownLimit {
                key: key.to_owned(),
            })?;
            let next = current
                .feedback(feedback)
                .ok_or_else(|| Error::NotAdaptive {
                    key: key.to_owned(),
                })?;
            Ok::<_, Error>((current, next))
        };
        // Refused, or already at a bound, before the queue is touched (as a pause of an unknown
        // key is): a call that changes nothing settles nothing, in both engines.
        let (current, next) = step(self.declared(key)?)?;
        if next == current {
            return Ok(next);
        }
        self.mutate(Vec::new(), |st, now, store| {
            let (current, next) = step(self.declared(key)?)?;
            // Already at a bound: nothing changes, nothing to write.
            if next != current {
                self.define(st, key, next, now, store)?;
            }
            Ok(next)
        })
        .await
    }

    /// The bounds of every declared limit that adapts, by key.
    pub fn adaptive_limits(&self) -> BTreeMap<String, Adaptive> {
        self.inner.adaptive.lock().clone()
    }

    /// Declared limit `key`'s definition in force (its limit and, when it adapts, its bounds).
    fn declared(&self, key: &str) -> Result<Option<Declared>, Error> {
        let Some(info) = self.inner.limiter.get(key)? else {
            return Ok(None);
        };
        let bounds = self.inner.adaptive.lock().get(key).copied();
        Ok(Some(match bounds {
            Some(b) => Declared::adaptive(info.limit, b).unwrap_or(Declared::fixed(info.limit)),
            None => Declared::fixed(info.limit),
        }))
    }

    /// Makes `declared` the definition of `key`, under the queue's lock: the limiter's limit
    /// (usage kept), its bounds, the journal; then what waits on the key is re-planned within
    /// this call (limits are live).
    fn define(
        &self,
        st: &mut QueueState,
        key: &str,
        declared: Declared,
        now: tollgate_core::Nanos,
        store: &dyn Store,
    ) -> Result<(), Error> {
        self.inner.limiter.upsert(key, *declared.limit())?;
        {
            let mut adaptive = self.inner.adaptive.lock();
            match declared.bounds() {
                Some(b) => adaptive.insert(key.to_owned(), b),
                None => adaptive.remove(key),
            };
        }
        st.journal_later(Write::PutLimit {
            key: key.to_owned(),
            spec: LimitSpec::from_declared(&declared),
        });
        st.replan(&WaitKey::declared(key), now, store);
        Ok(())
    }

    /// Removes static limit `key`. Returns whether it existed.
    ///
    /// # Errors
    /// [`Error::LimitInUse`] while a task names it as a `static_key` or a run not yet ended
    /// does (docs/design.md §3: no run is left parked on a limit that is gone).
    pub async fn remove_limit(&self, key: &str) -> Result<bool, Error> {
        crate::error::check_key(key)?;
        let limiter = self.inner.limiter.clone();
        let write = Write::DeleteLimit {
            key: key.to_owned(),
        };
        // Checked under the queue's lock, so no run naming the key slips in between.
        let (removed, commit) = self.apply(vec![write], false, |st, _, _| {
            let tasks = tasks_naming(st.tasks.values(), key);
            let runs = st.declared_users(key);
            if !tasks.is_empty() || runs > 0 {
                return Err(Error::LimitInUse {
                    key: key.to_owned(),
                    tasks,
                    runs,
                });
            }
            let removed = limiter.remove(key)?;
            self.inner.adaptive.lock().remove(key);
            Ok(removed)
        });
        let removed = removed?;
        if let Some(commit) = commit {
            commit.await?;
        }
        Ok(removed)
    }

    /// Defines or redefines task `name`. Runs already enqueued keep the limits rendered for them.
    ///
    /// # Errors
    /// [`Error::Spec`] naming the field: a bad CEL expression, an unknown static key, ….
    pub async fn put_task(&self, name: &str, spec: TaskSpec) -> Result<Arc<Task>, Error> {
        check_name(name)?;
        let task = Arc::new(self.compile(name, spec.clone())?);
        let write = Write::PutTask {
            name: name.to_owned(),
            spec,
        };
        let t = Arc::clone(&task);
        self.mutate(vec![write], move |st, _, _| {
            st.tasks.insert(t.name.clone(), t);
            Ok(())
        })
        .await?;
        Ok(task)
    }

    /// Task `name`.
    pub fn task(&self, name: &str) -> Option<Arc<Task>> {
        self.inner.state.lock().tasks.get(name).cloned()
    }

    /// Every task, by name.
    pub fn tasks(&self) -> Vec<Arc<Task>> {
        let st = self.inner.state.lock();
        let sorted: BTreeMap<&String, &Arc<Task>> = st.tasks.iter().collect();
        sorted.into_values().cloned().collect()
    }

    /// Enqueues a run of `task`; answers once it is durable.
    ///
    /// # Errors
    /// [`Error::UnknownTask`]; [`Error::Expression`] when a CEL expression cannot be
    /// evaluated for this input (never an unlimited run); store failures.
    pub async fn enqueue(
        &self,
        task: &str,
        input: Value,
        additional_metadata: Value,
    ) -> Result<RunView, Error> {
        self.enqueue_at(task, input, additional_metadata, StartAt::Now)
            .await
    }

    /// As [`Engine::enqueue`], for a run that starts no sooner than `start`: until then it is
    /// `scheduled`, and nothing is decided for it (docs/design.md §3.3).
    ///
    /// # Errors
    /// As [`Engine::enqueue`].
    pub async fn enqueue_at(
        &self,
        task: &str,
        input: Value,
        additional_metadata: Value,
        start: StartAt,
    ) -> Result<RunView, Error> {
        self.enqueue_with(task, input, additional_metadata, start, None)
            .await
    }

    /// As [`Engine::enqueue_at`], at `priority` (1 to 4; `None`: its task's) rather than its
    /// task's (docs/design.md §3.15).
    ///
    /// # Errors
    /// As [`Engine::enqueue`]; [`Error::Spec`] (field `priority`) outside 1 to 4.
    pub async fn enqueue_with(
        &self,
        task: &str,
        input: Value,
        additional_metadata: Value,
        start: StartAt,
        priority: Option<u8>,
    ) -> Result<RunView, Error> {
        crate::task::check_priority(priority)?;
        self.mutate(Vec::new(), |st, now, store| {
            let prepared = st
                .prepare(task, input, additional_metadata, None)?
                .due_at(start.due(now))
                .at_priority(priority);
            let id = st.insert(prepared, now, store)?;
            Ok(view(st, &id))
        })
        .await
    }

    /// Enqueues one run of every task triggered by event `name`, with `data` as input. Each
    /// task's run stands alone: one whose expressions fail is stored as failed, its error
    /// naming the expression and what CEL said, and the others proceed.
    ///
    /// # Errors
    /// Store failures (then no run of the event is kept).
    pub async fn emit(
        &self,
        name: &str,
        data: Value,
        additional_metadata: Value,
    ) -> Result<Vec<RunView>, Error> {
        self.emit_at(name, data, additional_metadata, StartAt::Now)
            .await
    }

    /// As [`Engine::emit`], for runs that start no sooner than `start`.
    ///
    /// # Errors
    /// As [`Engine::emit`].
    pub async fn emit_at(
        &self,
        name: &str,
        data: Value,
        additional_metadata: Value,
        start: StartAt,
    ) -> Result<Vec<RunView>, Error> {
        self.mutate(Vec::new(), |st, now, store| {
            let mut names: Vec<String> = st
                .tasks
                .values()
                .filter(|t| t.triggers.iter().any(|t| t == name))
                .map(|t| t.name.clone())
                .collect();
            names.sort();
            let event = serde_json::json!({"name": name, "data": data});
            // Every run is rendered before any is stored; a run whose expression fails is
            // stored as failed (Task::render_for_event), so rendering itself cannot fail here.
            let prepared = names
                .iter()
                .map(|task| {
                    st.prepare(
                        task,
                        data.clone(),
                        additional_metadata.clone(),
                        Some(event.clone()),
                    )
                })
                .collect::<Result<Vec<_>, Error>>()?;
            let mut out = Vec::with_capacity(prepared.len());
            for p in prepared {
                let id = st.insert(p.due_at(start.due(now)), now, store)?;
                out.push(view(st, &id));
            }
            Ok(out)
        })
        .await
    }

    /// Leases up to `max` runs of `tasks` for `worker_id`. Returns as soon as it holds at least
    /// one run; waits up to `wait` only while it has none, woken when a run becomes ready.
    ///
    /// # Errors
    /// Store failures.
    ///
    /// # Cancel safety
    /// Not cancel-safe while it commits: dropped then, the runs it has just leased stay leased
    /// to nobody until their lease expires (costing an attempt). To end a wait early, use
    /// [`Engine::lease_until`].
    pub async fn lease(
        &self,
        worker_id: &str,
        tasks: &[String],
        max: usize,
        wait: Duration,
    ) -> Result<Vec<LeasedRun>, Error> {
        self.lease_until(worker_id, tasks, max, wait, std::future::pending())
            .await
    }

    /// As [`Engine::lease`], but the wait also ends as soon as `stop` completes (a server
    /// shutting down answers its long-polls at once): the call then returns what it holds,
    /// which is nothing. `stop` only cuts the wait, never a lease being committed, so unlike
    /// dropping the future it never leaves runs leased to nobody.
    ///
    /// The long-poll is the one both engines share ([`crate::queue::run_queue::lease_until`]),
    /// over [`Engine::try_lease`].
    ///
    /// # Errors
    /// Store failures.
    pub async fn lease_until(
        &self,
        worker_id: &str,
        tasks: &[String],
        max: usize,
        wait: Duration,
        stop: impl Future<Output = ()>,
    ) -> Result<Vec<LeasedRun>, Error> {
        crate::queue::run_queue::lease_until(self, worker_id, tasks, max, wait, stop).await
    }

    /// One attempt at leasing up to `max` runs of `tasks` for `worker_id`, without waiting
    /// (what [`Engine::lease_until`] repeats). `max` is taken as given.
    ///
    /// # Errors
    /// Store failures.
    pub async fn try_lease(
        &self,
        worker_id: &str,
        tasks: &[String],
        max: usize,
    ) -> Result<LeaseAttempt, Error> {
        let runs = self
            .mutate(Vec::new(), |st, now, store| {
                let ids = st.lease(worker_id, tasks, max, now, store);
                Ok(ids
                    .iter()
                    .map(|id| LeasedRun::from(&st.runs[id]))
                    .collect::<Vec<_>>())
            })
            .await?;
        // Every ready run of these tasks was offered: nothing is left to try before a wakeup.
        Ok(LeaseAttempt { runs, more: false })
    }

    /// Extends a running run's lease; returns the new expiry. `attempt`, when given, must be
    /// the run's current attempt (a worker whose lease lapsed cannot touch the next attempt).
    ///
    /// # Errors
    /// [`Error::UnknownRun`]; [`Error::InvalidState`] when the run is not running.
    pub async fn heartbeat(&self, id: &str, attempt: Option<u32>) -> Result<RunView, Error> {
        self.mutate(Vec::new(), |st, now, _| {
            st.heartbeat(id, attempt, now)?;
            Ok(view(st, id))
        })
        .await
    }

    /// Marks a running run succeeded.
    ///
    /// # Errors
    /// As [`Engine::heartbeat`].
    pub async fn complete(
        &self,
        id: &str,
        attempt: Option<u32>,
        output: Option<Value>,
    ) -> Result<RunView, Error> {
        self.mutate(Vec::new(), |st, now, _| {
            st.complete(id, attempt, output, now)?;
            Ok(view(st, id))
        })
        .await
    }

    /// Records a failure: with `retry`, requeued while attempts remain; otherwise failed.
    ///
    /// # Errors
    /// As [`Engine::heartbeat`].
    pub async fn fail(
        &self,
        id: &str,
        attempt: Option<u32>,
        error: String,
        retry: bool,
    ) -> Result<RunView, Error> {
        self.fail_with(id, attempt, error, retry, None).await
    }

    /// As [`Engine::fail`]; with `retry`, the next attempt waits `retry_after` when given, else
    /// its task's `retry` backoff (`scheduled` meanwhile).
    ///
    /// # Errors
    /// As [`Engine::heartbeat`].
    pub async fn fail_with(
        &self,
        id: &str,
        attempt: Option<u32>,
        error: String,
        retry: bool,
        retry_after: Option<tollgate_core::Nanos>,
    ) -> Result<RunView, Error> {
        self.mutate(Vec::new(), |st, now, _| {
            st.fail_run(id, attempt, error, retry, retry_after, now)?;
            Ok(view(st, id))
        })
        .await
    }

    /// Hands a running run back without counting an attempt (graceful worker shutdown).
    ///
    /// # Errors
    /// As [`Engine::heartbeat`].
    pub async fn release(&self, id: &str, attempt: Option<u32>) -> Result<RunView, Error> {
        self.mutate(Vec::new(), |st, now, store| {
            st.release(id, attempt, now, store)?;
            Ok(view(st, id))
        })
        .await
    }

    /// Cancels a run that has not ended.
    ///
    /// # Errors
    /// [`Error::UnknownRun`]; [`Error::InvalidState`] for an ended run.
    pub async fn cancel(&self, id: &str) -> Result<RunView, Error> {
        self.mutate(Vec::new(), |st, now, store| {
            st.cancel(id, now, store)?;
            Ok(view(st, id))
        })
        .await
    }

    /// Run `id`.
    ///
    /// # Errors
    /// [`Error::UnknownRun`].
    pub fn run(&self, id: &str) -> Result<RunView, Error> {
        let st = self.inner.state.lock();
        st.view(id)
            .ok_or_else(|| Error::UnknownRun { id: id.to_owned() })
    }

    /// Why run `id` waits: each key it needs with its limit in force, usage, pause and wait
    /// queue (docs/design.md §3.14), once what is due is settled (as every queue call does), so
    /// that a run whose turn has come is not explained as waiting.
    ///
    /// # Errors
    /// [`Error::UnknownRun`]; store failures.
    pub async fn explain(&self, id: &str) -> Result<tollgate_api::Explanation, Error> {
        self.mutate(Vec::new(), |st, now, store| st.explain(id, now, store))
            .await
    }

    /// Runs, newest first, optionally of one task and/or in one state; at most `limit`.
    pub fn runs(&self, task: Option<&str>, state: Option<RunState>, limit: usize) -> Vec<RunView> {
        let st = self.inner.state.lock();
        let mut runs: Vec<&Run> = st
            .runs
            .values()
            .filter(|r| task.is_none_or(|t| r.task == t) && state.is_none_or(|s| r.state() == s))
            .collect();
        runs.sort_by_key(|r| std::cmp::Reverse(r.seq));
        runs.into_iter()
            .take(limit)
            .filter_map(|r| st.view(&r.id))
            .collect()
    }

    /// Runs per task and state.
    pub fn depth(&self) -> Vec<(String, RunState, u64)> {
        let mut out: Vec<_> = self
            .inner
            .state
            .lock()
            .depth()
            .into_iter()
            .map(|((t, s), n)| (t, s, n))
            .collect();
        out.sort_by(|a, b| (&a.0, a.1.as_str()).cmp(&(&b.0, b.1.as_str())));
        out
    }

    /// The queue's counters: run transitions and decisions per task (labelled by the index in
    /// the task's `rate_limits`, never by a rendered key) and the dispatch lag of parked runs.
    /// A copy, taken under the queue's lock.
    pub fn metrics(&self) -> QueueMetrics {
        self.inner.state.lock().metrics.counts.clone()
    }

    /// Flushes everything and records a clean shutdown (SQLite); call before exiting.
    pub async fn close(&self) {
        if let Some(db) = &self.inner.db {
            // Runs the timer changed and left for a lease call to journal.
            let _ = self.mutate(Vec::new(), |_, _, _| Ok(())).await;
            let _ = self.snapshot_direct_use().await;
            let now = self.inner.limiter.now();
            match self.inner.limiter.store().export_rate_states(now) {
                Ok(states) => {
                    let saved = states
                        .iter()
                        .map(|e| StoredState::new(e.namespace, e.key.clone(), &e.state))
                        .collect();
                    if let Err(e) = db.submit(vec![Write::ReplaceStates(saved)], now).await {
                        tracing::error!(error = %e, "cannot save the limiter state at shutdown");
                        return; // not marked clean: the next start treats it as a crash
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot export the limiter state at shutdown");
                    return;
                }
            }
            db.close(now).await;
        }
    }
}

/// A run's view, right after the call that changed it (the run exists).
fn view(st: &QueueState, id: &str) -> RunView {
    st.view(id)
        .unwrap_or_else(|| unreachable!("the run {id} was just changed"))
}
