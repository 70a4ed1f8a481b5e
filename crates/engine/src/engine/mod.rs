//! [`Engine`]: what the server runs — a [`Limiter`], the task-run admission queue, and
//! (optionally) SQLite durability. The server is a thin HTTP shell over it.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Instant;
use tollgate_core::{Limit, LimitState, Nanos, Period, RateLimit};

use crate::db::{Db, DirectUse, Loaded, StoredState, Write};
use crate::error::{Error, StoreError};
use crate::limiter::Limiter;
use crate::metrics::QueueMetrics;
use crate::queue::run::{LeasedRun, Run, RunState, RunView};
use crate::queue::state::{QueueState, WaitKey};
use crate::spec::LimitSpec;
use crate::store::memory::MemoryStore;
use crate::store::{AcquireEntry, Namespace, Store, Target};
use crate::task::{Task, TaskSpec};

/// Most runs one lease call returns.
pub const MAX_LEASE_BATCH: usize = 1_000;

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
    state: Mutex<QueueState>,
    /// Woken when runs become ready (lease long-polls wait on it).
    ready: Notify,
    /// Woken when a timer may have moved earlier.
    timer: Arc<Notify>,
    db: Option<Db>,
    /// Keys with direct (`/v1/acquire`) use, for crash recovery (only with a `db`).
    /// By namespace, then key, so the acquire path looks a key up without allocating.
    direct: Mutex<HashMap<Namespace, HashMap<String, DirectEntry>>>,
    /// How long ended runs are kept (nanoseconds; 0: forever).
    retention: std::sync::atomic::AtomicU64,
    /// Lease calls in progress: a timer that wakes one leaves its own changes to that call's
    /// commit ([`Engine::apply`]).
    leasing: std::sync::atomic::AtomicUsize,
}

/// What the journal knows of one key's direct use.
struct DirectEntry {
    /// Dynamic keys: the parameters of the last use.
    limit: Option<RateLimit>,
    last_used: Nanos,
    /// Used since the last snapshot.
    dirty: bool,
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

type Commit = std::pin::Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

impl<S: Store + 'static> Engine<S> {
    /// An engine that keeps everything in memory.
    pub fn in_memory(limiter: Limiter<S>) -> Engine<S> {
        Engine::build(limiter, None)
    }

    fn build(limiter: Limiter<S>, db: Option<Db>) -> Engine<S> {
        let prefix = format!("{:x}-", limiter.now().as_nanos() / 1_000);
        let engine = Engine {
            inner: Arc::new(Inner {
                limiter,
                state: Mutex::new(QueueState::new(prefix)),
                ready: Notify::new(),
                timer: Arc::new(Notify::new()),
                db,
                direct: Mutex::new(HashMap::new()),
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

    /// An engine persisting to `db`, restored from what it held: limits, tasks, and runs —
    /// queued and parked runs re-queue in their original order, leased runs keep their lease,
    /// and the units that runs consumed are replayed into the limiter at the times they were
    /// consumed, so limiter state after a restart is exactly what those runs left.
    ///
    /// # Errors
    /// A stored limit or task that no longer compiles.
    pub fn with_db(limiter: Limiter<S>, db: Db, loaded: Loaded) -> Result<Engine<S>, Error> {
        for (key, spec) in &loaded.limits {
            let limit = spec
                .to_limit()
                .map_err(|e| Error::Spec(e.within(&format!("limits[{key}]"))))?;
            limiter.upsert(key, limit)?;
        }
        let engine = Engine::build(limiter, Some(db));
        {
            let mut st = engine.inner.state.lock();
            for (name, spec) in loaded.tasks {
                let task = engine.compile(&name, spec)?;
                st.tasks.insert(name, Arc::new(task));
            }
            let now = engine.inner.limiter.now();
            let store = engine.inner.limiter.store();
            if loaded.clean_shutdown {
                // A clean stop left the exact limiter state (runs' consumption included).
                for saved in &loaded.states {
                    if let Some(state) = saved.to_limit_state() {
                        // A static limit removed since has nothing to restore into.
                        let _ = store.import_rate_state(saved.namespace, &saved.key, state, now);
                    }
                }
            } else {
                let mut consumed: Vec<&Run> = loaded
                    .runs
                    .iter()
                    .filter(|r| r.consumed_at.is_some())
                    .collect();
                consumed.sort_by_key(|r| (r.consumed_at, r.seq));
                for run in consumed {
                    replay(store, run, now);
                }
                // Direct use since the last snapshot is unknown: every key with direct use is
                // treated as fully used from the latest instant the crash can have happened.
                let crash_by = loaded
                    .last_time
                    .map_or(now, |t| (t + SNAPSHOT_EVERY.saturating_mul(2)).min(now));
                for d in &loaded.direct_use {
                    if let Some(limit) =
                        direct_limit(store, d.namespace, &d.key, d.spec.as_ref(), now)
                        && let Some(full) = exhausted(&limit, crash_by)
                        && full.fresh_at() > now
                    {
                        let _ = store.import_rate_state(d.namespace, &d.key, full, now);
                    }
                }
            }
            let mut direct = engine.inner.direct.lock();
            for d in loaded.direct_use {
                let limit = d.spec.as_ref().and_then(|s| s.to_rate_limit().ok());
                direct.entry(d.namespace).or_default().insert(
                    d.key,
                    DirectEntry {
                        limit,
                        last_used: d.last_used,
                        dirty: false,
                    },
                );
            }
            drop(direct);
            for run in loaded.runs {
                st.restore(run);
            }
            st.finish_restore(now);
        }
        engine.inner.timer.notify_one();
        Ok(engine)
    }

    /// Keeps ended runs (succeeded, failed, skipped, cancelled) for `retention` after their last
    /// change, then forgets them (memory and database). A run whose consumed units still count
    /// against a limit is kept until they no longer do, so forgetting never loosens a limit
    /// after a restart. The default is [`DEFAULT_RETENTION`].
    pub fn set_retention(&self, retention: Period) {
        self.inner.retention.store(
            retention.as_nanos().as_nanos(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Forgets ended runs older than the retention now; returns how many.
    ///
    /// # Errors
    /// Store failures (the database).
    pub async fn prune(&self) -> Result<usize, Error> {
        let retention = Nanos::from_nanos(
            self.inner
                .retention
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        let store = self.inner.limiter.store();
        let removed = self
            .mutate(Vec::new(), |st, now, _| {
                let cutoff = now - retention;
                let old: Vec<String> = st
                    .runs
                    .values()
                    .filter(|r| r.state.is_final() && r.updated_at <= cutoff)
                    .filter(|r| !consumption_counts(store, r, now))
                    .map(|r| r.id.clone())
                    .collect();
                for id in &old {
                    st.runs.remove(id);
                }
                Ok(old)
            })
            .await?;
        if let (Some(db), false) = (&self.inner.db, removed.is_empty()) {
            let n = removed.len();
            let writes = removed
                .into_iter()
                .map(|id| Write::DeleteRun { id })
                .collect();
            db.submit(writes, self.inner.limiter.now()).await?;
            return Ok(n);
        }
        Ok(removed.len())
    }

    /// Records that `entries` were just consumed by direct use (`/v1/acquire`), so that after a
    /// crash those keys are treated as fully used for one period (DESIGN §4). A key's first use
    /// is committed before this returns; later uses are snapshotted about every second.
    /// Without a database this does nothing.
    ///
    /// # Errors
    /// Store failures.
    pub async fn note_direct_use(&self, entries: &[AcquireEntry<'_>]) -> Result<(), Error> {
        let Some(db) = &self.inner.db else {
            return Ok(());
        };
        let now = self.inner.limiter.now();
        let mut writes = Vec::new();
        {
            let mut direct = self.inner.direct.lock();
            for e in entries {
                let (ns, key) = (e.target.namespace(), e.target.key());
                let limit = match e.target {
                    Target::Dynamic(_, l) => Some(l),
                    Target::Static(_) => None,
                };
                let keys = direct.entry(ns).or_default();
                if let Some(d) = keys.get_mut(key) {
                    d.last_used = now;
                    d.limit = limit;
                    d.dirty = true;
                    continue;
                }
                keys.insert(
                    key.to_owned(),
                    DirectEntry {
                        limit,
                        last_used: now,
                        dirty: false,
                    },
                );
                writes.push(Write::DirectUse(DirectUse {
                    namespace: ns,
                    key: key.to_owned(),
                    spec: limit.map(|l| LimitSpec::from_limit(&Limit::Rate(l))),
                    last_used: now,
                }));
            }
        }
        if !writes.is_empty() {
            db.submit(writes, now).await?;
        }
        Ok(())
    }

    /// Journals direct use since the last snapshot and forgets keys whose use has expired.
    async fn snapshot_direct_use(&self) -> Result<(), Error> {
        let Some(db) = &self.inner.db else {
            return Ok(());
        };
        let now = self.inner.limiter.now();
        let store = self.inner.limiter.store();
        let mut writes = Vec::new();
        {
            let mut direct = self.inner.direct.lock();
            for (ns, keys) in direct.iter_mut() {
                keys.retain(|key, d| {
                    let limit = d.limit.or_else(|| direct_limit(store, *ns, key, None, now));
                    let alive = limit
                        .as_ref()
                        .and_then(|l| exhausted(l, d.last_used))
                        .is_some_and(|full| full.fresh_at() > now);
                    if !alive {
                        writes.push(Write::ForgetDirectUse {
                            namespace: *ns,
                            key: key.clone(),
                        });
                    } else if d.dirty {
                        d.dirty = false;
                        writes.push(Write::DirectUse(DirectUse {
                            namespace: *ns,
                            key: key.clone(),
                            spec: d.limit.map(|l| LimitSpec::from_limit(&Limit::Rate(l))),
                            last_used: d.last_used,
                        }));
                    }
                    alive
                });
            }
        } // the lock is released before the commit is awaited
        if !writes.is_empty() {
            db.submit(writes, now).await?;
        }
        Ok(())
    }

    /// The limiter.
    pub fn limiter(&self) -> &Limiter<S> {
        &self.inner.limiter
    }

    fn compile(&self, name: &str, spec: TaskSpec) -> Result<Task, Error> {
        let limiter = &self.inner.limiter;
        Task::compile(name, spec, &|key| {
            limiter.get(key).ok().flatten().map(|i| i.limit)
        })
        .map_err(Error::Spec)
    }

    /// Runs `f` on the queue under its lock, journals what changed (in order), wakes lease
    /// waiters and the timer, then waits for the commit.
    async fn mutate<T>(
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
    fn apply<T>(
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

    /// Declares or redefines static limit `key` (usage kept), durably.
    ///
    /// # Errors
    /// [`Error::Spec`] for a bad definition; [`Error::InvalidKey`]; store failures.
    pub async fn put_limit(&self, key: &str, spec: LimitSpec) -> Result<Limit, Error> {
        let limit = spec.to_limit().map_err(Error::Spec)?;
        crate::error::check_key(key)?;
        let canonical = LimitSpec::from_limit(&limit);
        let limiter = self.inner.limiter.clone();
        let write = Write::PutLimit {
            key: key.to_owned(),
            spec: canonical,
        };
        self.mutate(vec![write], move |st, now, store| {
            limiter.upsert(key, limit)?;
            // Limits are live: what waits on this key is re-planned within this call.
            st.replan(&WaitKey::declared(key), now, store);
            Ok(())
        })
        .await?;
        Ok(limit)
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
            limiter.remove(key)
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
        self.mutate(Vec::new(), |st, now, store| {
            let id = st.enqueue(task, input, additional_metadata, None, now, store)?;
            Ok(view(st, &id))
        })
        .await
    }

    /// Enqueues one run of every task triggered by event `name`, with `data` as input.
    ///
    /// # Errors
    /// [`Error::Expression`] for a run whose expressions fail (no run of the event is kept
    /// then); store failures.
    pub async fn emit(
        &self,
        name: &str,
        data: Value,
        additional_metadata: Value,
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
            // Every run is rendered before any is stored: one task's failing expression must
            // not leave the other tasks' runs behind (stored, journaled, and leased) while the
            // caller is told the event was rejected.
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
                let id = st.insert(p, now, store)?;
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
        let max = max.clamp(1, MAX_LEASE_BATCH);
        let deadline = Instant::now() + wait;
        let _leasing = Leasing::enter(&self.inner.leasing);
        tokio::pin!(stop);
        loop {
            let notified = self.inner.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let leased = self
                .mutate(Vec::new(), |st, now, store| {
                    let ids = st.lease(worker_id, tasks, max, now, store);
                    Ok(ids
                        .iter()
                        .map(|id| LeasedRun::from(&st.runs[id]))
                        .collect::<Vec<_>>())
                })
                .await?;
            if !leased.is_empty() || Instant::now() >= deadline {
                return Ok(leased);
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(deadline) => {}
                // Nothing is held while waiting, so nothing is lost by stopping here.
                () = &mut stop => return Ok(Vec::new()),
            }
        }
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
        self.mutate(Vec::new(), |st, now, _| {
            st.fail_run(id, attempt, error, retry, now)?;
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

    /// Runs, newest first, optionally of one task and/or in one state; at most `limit`.
    pub fn runs(&self, task: Option<&str>, state: Option<RunState>, limit: usize) -> Vec<RunView> {
        let st = self.inner.state.lock();
        let mut runs: Vec<&Run> = st
            .runs
            .values()
            .filter(|r| task.is_none_or(|t| r.task == t) && state.is_none_or(|s| r.state == s))
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

/// Counts a lease call in progress for as long as it lives (dropped futures included).
struct Leasing<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Leasing<'a> {
    fn enter(count: &'a std::sync::atomic::AtomicUsize) -> Leasing<'a> {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Leasing(count)
    }
}

impl Drop for Leasing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How often direct use is journalled.
const SNAPSHOT_EVERY: Nanos = Nanos::SECOND;

/// The rate limit a directly used key has now: a static key's definition, or a dynamic key's
/// last parameters.
fn direct_limit(
    store: &dyn Store,
    ns: Namespace,
    key: &str,
    spec: Option<&LimitSpec>,
    now: Nanos,
) -> Option<RateLimit> {
    match ns {
        Namespace::Static => match store.get_limit(key, now).ok()??.limit {
            Limit::Rate(r) => Some(r),
            _ => None,
        },
        _ => spec.and_then(|s| s.to_rate_limit().ok()),
    }
}

/// The state of `limit` fully used at `at`.
fn exhausted(limit: &RateLimit, at: Nanos) -> Option<LimitState> {
    let units = NonZeroU32::new(u32::try_from(limit.capacity()).ok()?)?;
    limit.decide(None, at, units).ok()?.state
}

/// Ended runs are kept this long by default.
pub const DEFAULT_RETENTION: Period = match Period::from_secs_const(7 * 86_400) {
    Some(p) => p,
    None => Period::DAY,
};

/// Whether units `run` consumed still count against any of its limits at `now`.
fn consumption_counts(store: &dyn Store, run: &Run, now: Nanos) -> bool {
    let Some(at) = run.consumed_at else {
        return false;
    };
    run.rendered
        .rate
        .iter()
        .filter_map(|r| r.entry().ok())
        .any(|e| still_counts(store, &e, at, now))
}

/// Re-applies the units `run` consumed, at the time it consumed them, where they still count.
fn replay(store: &dyn Store, run: &Run, now: Nanos) {
    let Some(at) = run.consumed_at else { return };
    let entries: Vec<AcquireEntry<'_>> = run
        .rendered
        .rate
        .iter()
        .filter_map(|r| r.entry().ok())
        .filter(|e| still_counts(store, e, at, now))
        .collect();
    if !entries.is_empty() {
        // A denial here means the limit was lowered since: usage is then already at or over the
        // new limit through earlier replays, which is what counts.
        let _ = store.acquire(&entries, at);
    }
}

/// Whether `units` consumed at `at` would still be counted at `now` by the entry's limit.
fn still_counts(store: &dyn Store, e: &AcquireEntry<'_>, at: Nanos, now: Nanos) -> bool {
    let limit = match e.target {
        crate::store::Target::Dynamic(_, l) => Some(l),
        crate::store::Target::Static(k) => match store.get_limit(k, at) {
            Ok(Some(info)) => match info.limit {
                Limit::Rate(r) => Some(r),
                _ => None,
            },
            _ => None,
        },
    };
    let Some(limit) = limit else { return false };
    let units = NonZeroU32::new(e.units).unwrap_or(NonZeroU32::MIN);
    limit
        .decide(None, at, units)
        .ok()
        .and_then(|o| o.state)
        .is_some_and(|s| s.fresh_at() > now)
}

/// A run's view, right after the call that changed it (the run exists).
fn view(st: &QueueState, id: &str) -> RunView {
    st.view(id)
        .unwrap_or_else(|| unreachable!("the run {id} was just changed"))
}

/// The tasks (by name, sorted) that name declared limit `key` as a `static_key`.
pub(crate) fn tasks_naming<'a>(
    tasks: impl Iterator<Item = &'a Arc<Task>>,
    key: &str,
) -> Vec<String> {
    let mut names: Vec<String> = tasks
        .filter(|t| t.uses_static_key(key))
        .map(|t| t.name.clone())
        .collect();
    names.sort();
    names
}

fn check_name(name: &str) -> Result<(), Error> {
    crate::error::check_key(name).map_err(|_| Error::InvalidName {
        name: name.chars().take(64).collect(),
    })
}

fn spawn_pruning<S: Store + 'static>(engine: Weak<Inner<S>>) {
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

fn spawn_snapshots<S: Store + 'static>(engine: Weak<Inner<S>>) {
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

fn spawn_timer<S: Store + 'static>(engine: Weak<Inner<S>>, timer: Arc<Notify>) {
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
