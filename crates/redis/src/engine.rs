//! [`RedisEngine`]: what `tollgate serve --redis` runs — limits, tasks, runs and leases all in
//! Redis, so that any number of nodes behind a load balancer act as one.
//!
//! The same rules as the embedded [`tollgate::Engine`] (docs/design.md §3), with the queue's state
//! machine ported to Lua (`scripts/queue_*.lua`): every operation is one script call, atomic
//! in Redis, so nodes never step on each other (operations made while Redis is busy share one
//! call: [`batch`]). A lease decides a run's limits and takes its
//! lease in the same script: no node consumes units for a run another node took.
//!
//! Each node keeps only caches and counters: compiled tasks (checked against Redis on every
//! use), its own metrics, and two background jobs — a sweeper that fires parked runs' timers
//! and lease expiries when they fall due (safe on every node at once), and a subscriber that
//! wakes this node's long-polling workers when any node makes a run ready.

mod batch;
mod run_queue;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use redis::Value;
use serde_json::Value as Json;
use tokio::sync::Notify;
use tokio::time::Instant;
use tollgate::metrics::{DecisionCount, QueueMetrics};
use tollgate::{
    AsyncLimiter, AsyncStore, Clock, DEFAULT_RETENTION, Error, LeasedRun, LimitSpec, Namespace,
    OnLimit, Pause, PauseEnd, RunContext, RunState, RunView, StartAt, StoreError, Task, TaskSpec,
    Transition, check_key,
};
use tollgate_core::{Adaptive, Declared, Feedback, Limit, Nanos, Period};

use crate::keys::Kind;
use crate::store::RedisStore;
use batch::Batcher;

use tollgate::LeaseAttempt;
use tollgate::LimitSpecExt;
use tollgate::queue::run_queue::{check_name, compile_task, declared_limits, tasks_naming};

/// The default of [`RedisEngine::set_poll_interval`].
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The longest wait between two attempts to reach Redis after a failure (sweeper, subscriber).
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The server's core in Redis mode. Cheap to clone. Must be created inside a tokio runtime: it
/// starts the sweeper and the subscriber.
#[derive(Clone)]
pub struct RedisEngine {
    inner: Arc<Inner>,
}

struct Inner {
    limits: AsyncLimiter,
    store: RedisStore,
    /// Prefix of the queue's keys: `<prefix>:q:{<prefix>}:`.
    q: String,
    /// Compiled tasks by name, with the definition (text and version) they were compiled from.
    tasks: Mutex<HashMap<String, Cached>>,
    /// Woken when a run became ready on any node.
    ready: Arc<Notify>,
    /// Woken when this node learnt of an earlier deadline (or is closing).
    timer: Arc<Notify>,
    /// The earliest timer or lease expiry this node knows of (µs on Redis's clock; 0: none).
    next_deadline: AtomicU64,
    metrics: Mutex<QueueMetrics>,
    /// How long ended runs are kept (nanoseconds; 0: forever).
    retention: AtomicU64,
    /// [`RedisEngine::set_poll_interval`], in nanoseconds.
    poll_interval: AtomicU64,
    closed: Arc<AtomicBool>,
    /// Woken when `closed` is set (the subscriber waits on it).
    closing: Arc<Notify>,
    /// Single-run enqueues, coalesced into enqueue script calls.
    enqueues: Batcher<Vec<String>, Option<RunView>>,
    /// Heartbeats, completes, fails, releases and cancels, coalesced into run script calls.
    run_ops: Batcher<RunOp, (String, Vec<Value>)>,
}

/// One op of `queue_run.lua`.
struct RunOp {
    op: &'static str,
    id: String,
    attempt: Option<u32>,
    text: String,
    retry: bool,
    /// With `retry`: the wait before the next attempt, µs, instead of the task's backoff.
    retry_after: Option<u64>,
}

/// The most enqueues one batched call carries. A call holds Redis for its whole duration, and
/// every other call of every node waits behind it: a batch is kept to about half a millisecond
/// of Redis's time (an enqueue costs it about 20 µs, a worker call about 15 µs). Measured
/// (docs/design.md §9.1): 16 enqueues per batch gave 0.87 of BullMQ, 32 gave 0.81, 64 gave
/// 0.76–0.80 (worker calls waited behind long enqueue batches), and 8 gave 0.66 (too many calls).
const ENQ_BATCH: usize = 16;
/// The most worker calls one batched call carries (see [`ENQ_BATCH`]).
const RUN_BATCH: usize = 32;

/// How many batched calls of one kind a node has in flight at once; calls made meanwhile wait
/// for the next batch. One measured best (docs/design.md §9.1): the batches grow while Redis
/// works, and each pays the fixed part of a call once.
const BATCHES_IN_FLIGHT: usize = 1;

impl Drop for Inner {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Relaxed);
        self.timer.notify_one();
        self.closing.notify_waiters();
    }
}

/// A task as this node compiled it.
struct Cached {
    /// The definition's text.
    text: String,
    /// The version Redis gave that definition (`"0"`: defined before versions existed). An
    /// enqueue names it, and the script refuses it once the task is redefined.
    version: String,
    task: Arc<Task>,
}

/// A static limit's definition as Redis holds it: its spec and its adaptive bounds
/// (`"<min> <max>"`), each `""` when there is none.
#[derive(Debug, Clone)]
struct Stored {
    spec: String,
    bounds: String,
}

/// Adaptive bounds from their stored form, `"<min> <max>"`.
fn parse_bounds(text: &str) -> Option<Adaptive> {
    let (min, max) = text.split_once(' ')?;
    Adaptive::new(min.parse().ok()?, max.parse().ok()?).ok()
}

/// How many times a compare-and-set of a definition is tried before giving up with a transient
/// error (each conflict means another node's change went through).
const MAX_CAS_TRIES: usize = 1_000;

/// How many times an enqueue renders its runs again after being told the task changed.
const STALE_RETRIES: usize = 5;

/// What a queue script reports about its effects, for the node's metrics.
#[derive(Default)]
struct Effects {
    transitions: Vec<(String, Transition)>,
    decisions: Vec<(String, usize, bool)>,
    lags: Vec<Nanos>,
}

impl RedisEngine {
    /// An engine over `store` (whose prefix names the deployment: nodes sharing a Redis and a
    /// prefix act as one), reading `clock` for what the store needs a caller's time for.
    /// Starts the sweeper and the subscriber; does not connect yet (a node may start while
    /// Redis is down).
    pub fn new(store: RedisStore, clock: impl Clock + 'static) -> RedisEngine {
        let q = format!("{0}:q:{{{0}}}:", store.prefix());
        let inner = Arc::new_cyclic(|me: &Weak<Inner>| Inner {
            enqueues: {
                let me = me.clone();
                Batcher::spawn(ENQ_BATCH, BATCHES_IN_FLIGHT, move |runs| {
                    let me = me.clone();
                    async move { RedisEngine::upgrade(&me)?.insert_batch(runs).await }
                })
            },
            run_ops: {
                let me = me.clone();
                Batcher::spawn(RUN_BATCH, BATCHES_IN_FLIGHT, move |ops| {
                    let me = me.clone();
                    async move { RedisEngine::upgrade(&me)?.run_ops(ops).await }
                })
            },
            limits: AsyncLimiter::new(Arc::new(store.clone()), clock),
            store,
            q,
            tasks: Mutex::new(HashMap::new()),
            ready: Arc::new(Notify::new()),
            timer: Arc::new(Notify::new()),
            next_deadline: AtomicU64::new(0),
            metrics: Mutex::new(QueueMetrics::default()),
            retention: AtomicU64::new(DEFAULT_RETENTION.as_nanos().as_nanos()),
            poll_interval: AtomicU64::new(nanos(POLL_INTERVAL)),
            closed: Arc::new(AtomicBool::new(false)),
            closing: Arc::new(Notify::new()),
        });
        spawn_sweeper(Arc::downgrade(&inner));
        spawn_subscriber(&inner);
        spawn_pruning(Arc::downgrade(&inner));
        RedisEngine { inner }
    }

    /// How long a waiting long-poll, or this node's sweeper, goes without looking at Redis
    /// unless woken (default 1 s; at least 1 ms). Long-polls are woken by a pub/sub message
    /// when any node makes a run ready, and the sweeper by this node's own earlier deadlines;
    /// this interval bounds what a lost message or a timer set by another node can cost.
    pub fn set_poll_interval(&self, every: Duration) {
        self.inner.poll_interval.store(
            nanos(every.max(Duration::from_millis(1))),
            Ordering::Relaxed,
        );
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_nanos(self.inner.poll_interval.load(Ordering::Relaxed))
    }

    /// The limiter (direct acquires, leases, barriers) over the same Redis.
    pub fn limits(&self) -> &AsyncLimiter {
        &self.inner.limits
    }

    /// The Redis store.
    pub fn store(&self) -> &RedisStore {
        &self.inner.store
    }

    // ---- limits and tasks -----------------------------------------------------------------

    /// Declares or redefines static limit `key` (usage kept) and re-plans the runs parked on
    /// it, in one step; returns the limit in force. An adaptive limit redefined with the same
    /// bounds keeps the limit in force it has learnt ([`Declared::redefine`], docs/design.md
    /// §3.16): that one is a compare-and-set against the definition in force.
    ///
    /// # Errors
    /// [`Error::Spec`]; [`Error::InvalidKey`]; store failures.
    pub async fn put_limit(&self, key: &str, spec: LimitSpec) -> Result<Limit, Error> {
        let given = spec.to_declared().map_err(Error::Spec)?;
        check_key(key)?;
        if given.bounds().is_none() {
            // A limit that does not adapt is taken as given, whatever is there.
            self.define(key, &given, None).await?;
            return Ok(*given.limit());
        }
        let declared = self
            .define_with(key, |prior| Ok((given.redefine(prior), true)))
            .await?;
        Ok(*declared.limit())
    }

    /// Reports `feedback` for adaptive limit `key`: one AIMD step of its limit in force (the
    /// core's, [`Declared::feedback`]), which redefines the limit (usage kept) and re-plans
    /// the runs parked on it in one step. Many nodes may report at once: the definition is
    /// written only while it is still the one the step was computed from (a compare-and-set
    /// in `queue_define`), else read again and stepped again, so no report is lost.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; [`Error::UnknownLimit`]; [`Error::NotAdaptive`]; store failures.
    pub async fn feedback(&self, key: &str, feedback: Feedback) -> Result<Declared, Error> {
        check_key(key)?;
        self.define_with(key, |prior| {
            let current = prior.ok_or_else(|| Error::UnknownLimit {
                key: key.to_owned(),
            })?;
            let next = current
                .feedback(feedback)
                .ok_or_else(|| Error::NotAdaptive {
                    key: key.to_owned(),
                })?;
            // Already at a bound: nothing to write.
            Ok((next, next != *current))
        })
        .await
    }

    /// The bounds of every declared limit that adapts, by key.
    ///
    /// # Errors
    /// Store failures; bounds Tollgate cannot read.
    pub async fn adaptive_limits(&self) -> Result<BTreeMap<String, Adaptive>, Error> {
        let key = &self.q_key("adaptive");
        let all: BTreeMap<String, String> = self
            .inner
            .store
            .run("read the adaptive limits", |mut con| async move {
                redis::cmd("HGETALL").arg(key).query_async(&mut con).await
            })
            .await?;
        all.into_iter()
            .map(|(k, b)| match parse_bounds(&b) {
                Some(b) => Ok((k, b)),
                None => Err(self.inner.store.corrupt(format_args!(
                    "the adaptive limit {k:?} has bounds Tollgate cannot read: {b:?}"
                ))),
            })
            .collect()
    }

    /// Read-compute-write of `key`'s definition: `decide` gets the definition in force and
    /// answers the next one and whether to write it; it is written by a compare-and-set
    /// against what was read, and decided again from what is there on a conflict.
    async fn define_with(
        &self,
        key: &str,
        decide: impl Fn(Option<&Declared>) -> Result<(Declared, bool), Error>,
    ) -> Result<Declared, Error> {
        let mut seen = self.read_definition(key).await?;
        for _ in 0..MAX_CAS_TRIES {
            let prior = self.parse_definition(key, &seen)?;
            let (next, write) = decide(prior.as_ref())?;
            if !write {
                return Ok(next);
            }
            match self.define(key, &next, Some(&seen)).await? {
                None => return Ok(next),
                Some(now) => seen = now,
            }
        }
        Err(Error::Store(StoreError::transient(
            format!("the limit {key:?} kept changing under {MAX_CAS_TRIES} tries to change it"),
            None,
        )))
    }

    /// `key`'s definition as stored: its spec and its adaptive bounds ("" for none).
    async fn read_definition(&self, key: &str) -> Result<Stored, Error> {
        let def = &self.inner.store.key(Kind::Def, key);
        let adaptive = &self.q_key("adaptive");
        let (spec, bounds): (Option<String>, Option<String>) = self
            .inner
            .store
            .run("read a limit", |mut con| async move {
                redis::pipe()
                    .get(def)
                    .hget(adaptive, key)
                    .query_async(&mut con)
                    .await
            })
            .await?;
        Ok(Stored {
            spec: spec.unwrap_or_default(),
            bounds: bounds.unwrap_or_default(),
        })
    }

    /// The definition `stored` holds; `None` when there is none (or a barrier).
    fn parse_definition(&self, key: &str, stored: &Stored) -> Result<Option<Declared>, Error> {
        if stored.spec.is_empty() {
            return Ok(None);
        }
        let corrupt = || {
            self.inner.store.corrupt(format_args!(
                "the static limit {key:?} holds a definition Tollgate cannot read"
            ))
        };
        let limit = crate::spec::parse(&stored.spec).ok_or_else(corrupt)?;
        if matches!(limit, Limit::Barrier(_)) {
            return Ok(None);
        }
        if stored.bounds.is_empty() {
            return Ok(Some(Declared::fixed(limit)));
        }
        let bounds = parse_bounds(&stored.bounds).ok_or_else(corrupt)?;
        Declared::adaptive(limit, bounds)
            .map(Some)
            .map_err(|_| corrupt())
    }

    /// Writes `declared` as `key`'s definition and re-plans the runs parked on it, in one
    /// step; with `expected`, only while the definition is still that (else answers what is
    /// there now).
    async fn define(
        &self,
        key: &str,
        declared: &Declared,
        expected: Option<&Stored>,
    ) -> Result<Option<Stored>, Error> {
        let mut args = self.limit_args("put", key);
        args.push(crate::spec::limit(declared.limit()));
        args.push(
            declared
                .bounds()
                .map(|b| format!("{} {}", b.min(), b.max()))
                .unwrap_or_default(),
        );
        match expected {
            Some(e) => args.extend(["if".to_owned(), e.spec.clone(), e.bounds.clone()]),
            None => args.push(String::new()),
        }
        let (status, items) = self
            .queue_call("put a limit", Script::Define, &args)
            .await?;
        match (status.as_str(), &items[..]) {
            ("ok", _) => Ok(None),
            ("conflict", [spec, bounds, ..]) => Ok(Some(Stored {
                spec: text_of(spec).unwrap_or_default(),
                bounds: text_of(bounds).unwrap_or_default(),
            })),
            _ => Err(self
                .inner
                .store
                .corrupt(format_args!("put a limit answered {status:?}"))),
        }
    }

    /// Pauses `key` until `end` (a pause in force that ends later is kept) and re-plans the
    /// runs parked on it in the same step; returns when the pause in force ends.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; [`Error::UnknownLimit`] for a static key that is not declared;
    /// store failures.
    pub async fn pause(
        &self,
        namespace: Namespace,
        key: &str,
        end: PauseEnd,
    ) -> Result<Nanos, Error> {
        check_key(key)?;
        let store = &self.inner.store;
        if namespace == Namespace::Static
            // At this node's now (ignored on Redis's own clock): a view at instant 0 of a
            // state its limit's redefinition left to convert reads as corrupt.
            && AsyncStore::get_limit(store, key, self.inner.limits.now())
                .await?
                .is_none()
        {
            return Err(Error::UnknownLimit {
                key: key.to_owned(),
            });
        }
        let (mode, at) = match end {
            PauseEnd::For(d) => ("for", crate::spec::micros_ceil(d)),
            PauseEnd::Until(t) => ("until", crate::spec::micros_ceil(t)),
        };
        let mut args = self.pause_args("pause", namespace, key);
        args.extend([mode.to_owned(), at.to_string()]);
        let (status, items) = self
            .queue_call("pause a key", Script::Define, &args)
            .await?;
        self.expect_ok("pause a key", &status)?;
        items
            .first()
            .and_then(int)
            .and_then(|us| u64::try_from(us).ok())
            .map(Nanos::from_micros)
            .ok_or_else(|| {
                self.inner
                    .store
                    .corrupt(format_args!("pause answered {items:?}"))
            })
    }

    /// Ends `key`'s pause and tries the head of the runs parked on it, in one step; returns
    /// whether a pause was in force.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; store failures.
    pub async fn resume(&self, namespace: Namespace, key: &str) -> Result<bool, Error> {
        check_key(key)?;
        let args = self.pause_args("resume", namespace, key);
        let (status, items) = self
            .queue_call("end a pause", Script::Define, &args)
            .await?;
        self.expect_ok("end a pause", &status)?;
        Ok(items.first().and_then(int) == Some(1))
    }

    /// Every pause in force.
    ///
    /// # Errors
    /// Store failures.
    pub async fn pauses(&self) -> Result<Vec<Pause>, Error> {
        AsyncStore::pauses(&self.inner.store, self.inner.limits.now()).await
    }

    fn pause_args(&self, op: &str, namespace: Namespace, key: &str) -> Vec<String> {
        let mut args = self.script_args();
        let k = self.inner.store.pause_keys(namespace, key);
        let code = if namespace == Namespace::Dynamic {
            "d"
        } else {
            "s"
        };
        args.extend([
            op.to_owned(),
            key.to_owned(),
            code.to_owned(),
            k.key,
            k.index,
            k.member,
        ]);
        args
    }

    /// Removes static limit `key`; returns whether it existed.
    ///
    /// # Errors
    /// [`Error::LimitInUse`] while a task names it as a `static_key` or a run not yet ended
    /// does; store failures.
    pub async fn remove_limit(&self, key: &str) -> Result<bool, Error> {
        check_key(key)?;
        let tasks = tasks_naming(&self.tasks().await?, key);
        let in_use = |runs| Error::LimitInUse {
            key: key.to_owned(),
            tasks: tasks.clone(),
            runs,
        };
        let mut args = self.limit_args("remove", key);
        args.push(if tasks.is_empty() { "0" } else { "1" }.to_owned());
        let (status, items) = self
            .queue_call("remove a limit", Script::Define, &args)
            .await?;
        let n = items.first().and_then(int);
        match (status.as_str(), n) {
            ("ok", Some(n)) => Ok(n == 1),
            ("in_use", Some(n)) => Err(in_use(u32::try_from(n).unwrap_or(u32::MAX))),
            _ => Err(self
                .inner
                .store
                .corrupt(format_args!("remove a limit answered {status:?}"))),
        }
    }

    /// The first ARGV of queue_define.lua for a limit: the queue's, the op, the limit's key and its keys.
    fn limit_args(&self, op: &str, key: &str) -> Vec<String> {
        let mut args = self.script_args();
        args.extend([op.to_owned(), key.to_owned()]);
        args.extend(
            [
                Kind::Def,
                Kind::StaticRate,
                Kind::StaticLeases,
                Kind::StaticHolders,
            ]
            .map(|k| self.inner.store.key(k, key)),
        );
        args
    }

    /// Defines or redefines task `name` for every node.
    ///
    /// # Errors
    /// [`Error::InvalidName`]; [`Error::Spec`] naming the field; store failures.
    pub async fn put_task(&self, name: &str, spec: TaskSpec) -> Result<Arc<Task>, Error> {
        check_name(name)?;
        let text = serde_json::to_string(&spec).map_err(|e| {
            Error::Store(StoreError::permanent(
                format!("task {name:?} cannot be written: {e}"),
                None,
            ))
        })?;
        let task = Arc::new(self.compile(name, spec).await?);
        let mut args = self.script_args();
        args.extend(["task".to_owned(), name.to_owned(), text.clone()]);
        let (status, items) = self.queue_call("put a task", Script::Define, &args).await?;
        self.expect_ok("put a task", &status)?;
        let version = items
            .first()
            .and_then(int)
            .ok_or_else(|| self.inner.store.corrupt("put a task answered no version"))?
            .to_string();
        self.remember(name, text, version, &task);
        Ok(task)
    }

    /// Keeps `task`, compiled from definition `text` whose version is `version`.
    fn remember(&self, name: &str, text: String, version: String, task: &Arc<Task>) {
        let cached = Cached {
            text,
            version,
            task: Arc::clone(task),
        };
        self.inner.tasks.lock().insert(name.to_owned(), cached);
    }

    async fn compile(&self, name: &str, spec: TaskSpec) -> Result<Task, Error> {
        let declared = declared_limits(&self.inner.limits, &spec).await?;
        compile_task(name, spec, &|key| declared.get(key).cloned())
    }

    /// A task as stored, compiled once per definition text.
    async fn cached(&self, name: &str, text: String, version: String) -> Result<Arc<Task>, Error> {
        if let Some(c) = self.inner.tasks.lock().get_mut(name)
            && c.text == text
        {
            c.version = version;
            return Ok(Arc::clone(&c.task));
        }
        let spec: TaskSpec = serde_json::from_str(&text).map_err(|e| {
            self.inner.store.corrupt(format_args!(
                "task {name:?} holds a definition Tollgate cannot read: {e}"
            ))
        })?;
        // Compiled against the limits as they are now. A limit a task names cannot be removed
        // (`remove_limit` refuses), so this fails only if another node removed one while this
        // task was being defined: the enqueue is then rejected naming the missing limit.
        let task = Arc::new(self.compile(name, spec).await?);
        self.remember(name, text, version, &task);
        Ok(task)
    }

    /// Task `name` as this node last compiled it, with its definition's version: no IO. An
    /// enqueue with it is refused by Redis if the task has been redefined since.
    fn known_task(&self, name: &str) -> Option<(Arc<Task>, String)> {
        let tasks = self.inner.tasks.lock();
        let c = tasks.get(name)?;
        Some((Arc::clone(&c.task), c.version.clone()))
    }

    /// Task `name`, as Redis holds it now.
    ///
    /// # Errors
    /// Store failures.
    pub async fn task(&self, name: &str) -> Result<Option<Arc<Task>>, Error> {
        let (tasks, versions) = (&self.q_key("tasks"), &self.q_key("taskv"));
        let (text, version): (Option<String>, Option<String>) = self
            .inner
            .store
            .run("read a task", |mut con| async move {
                redis::pipe()
                    .hget(tasks, name)
                    .hget(versions, name)
                    .query_async(&mut con)
                    .await
            })
            .await?;
        match text {
            Some(t) => {
                let version = version.unwrap_or_else(|| "0".to_owned());
                Ok(Some(self.cached(name, t, version).await?))
            }
            None => Ok(None),
        }
    }

    /// Every task, by name.
    ///
    /// # Errors
    /// Store failures.
    pub async fn tasks(&self) -> Result<Vec<Arc<Task>>, Error> {
        Ok(self
            .tasks_with_versions()
            .await?
            .into_iter()
            .map(|(t, _)| t)
            .collect())
    }

    /// Every task, by name, with its definition's version.
    async fn tasks_with_versions(&self) -> Result<Vec<(Arc<Task>, String)>, Error> {
        let (tasks, versions) = (&self.q_key("tasks"), &self.q_key("taskv"));
        let (all, mut numbers): (BTreeMap<String, String>, HashMap<String, String>) = self
            .inner
            .store
            .run("read the tasks", |mut con| async move {
                redis::pipe()
                    .hgetall(tasks)
                    .hgetall(versions)
                    .query_async(&mut con)
                    .await
            })
            .await?;
        let mut out = Vec::with_capacity(all.len());
        for (n, t) in all {
            let version = numbers.remove(&n).unwrap_or_else(|| "0".to_owned());
            let task = self.cached(&n, t, version.clone()).await?;
            out.push((task, version));
        }
        Ok(out)
    }

    // ---- runs -----------------------------------------------------------------------------

    /// Enqueues a run of `task`; answers once Redis holds it.
    ///
    /// # Errors
    /// [`Error::UnknownTask`]; [`Error::Expression`] (never an unlimited run); store failures.
    pub async fn enqueue(
        &self,
        task: &str,
        input: Json,
        additional_metadata: Json,
    ) -> Result<RunView, Error> {
        self.enqueue_at(task, input, additional_metadata, StartAt::Now)
            .await
    }

    /// As [`RedisEngine::enqueue`], for a run that starts no sooner than `start` (`scheduled`
    /// until then; its instant is reckoned on Redis's clock).
    ///
    /// # Errors
    /// As [`RedisEngine::enqueue`].
    pub async fn enqueue_at(
        &self,
        task: &str,
        input: Json,
        additional_metadata: Json,
        start: StartAt,
    ) -> Result<RunView, Error> {
        self.enqueue_with(task, input, additional_metadata, start, None)
            .await
    }

    /// As [`RedisEngine::enqueue_at`], at `priority` (1 to 4; `None`: its task's) rather than
    /// its task's (docs/design.md §3.15).
    ///
    /// # Errors
    /// As [`RedisEngine::enqueue`]; [`Error::Spec`] (field `priority`) outside 1 to 4.
    pub async fn enqueue_with(
        &self,
        task: &str,
        input: Json,
        additional_metadata: Json,
        start: StartAt,
        priority: Option<u8>,
    ) -> Result<RunView, Error> {
        tollgate::task::check_priority(priority)?;
        let unknown = || Error::UnknownTask {
            name: task.to_owned(),
        };
        // The task as this node knows it, without asking Redis: the enqueue script checks its
        // version, and a stale one is read again.
        let (mut t, mut version) = match self.known_task(task) {
            Some(known) => known,
            None => self.read_task(task).await?.ok_or_else(unknown)?,
        };
        for _ in 0..STALE_RETRIES {
            let args = self.run_args(
                &t,
                &version,
                &input,
                &additional_metadata,
                None,
                (start, priority),
            )?;
            if let Some(view) = self.inner.enqueues.call(args).await? {
                return Ok(view);
            }
            (t, version) = self.read_task(task).await?.ok_or_else(unknown)?;
        }
        Err(self.stale(task))
    }

    /// Task `name` read from Redis now, with its definition's version.
    async fn read_task(&self, name: &str) -> Result<Option<(Arc<Task>, String)>, Error> {
        self.task(name).await?;
        Ok(self.known_task(name))
    }

    /// The error of an enqueue that kept finding its task redefined.
    fn stale(&self, task: &str) -> Error {
        Error::Store(StoreError::transient(
            format!(
                "task {task:?} was redefined {STALE_RETRIES} times while this enqueue was rendering its runs; try again"
            ),
            None,
        ))
    }

    /// Enqueues one run of every task triggered by event `name`, in one call (all stored or
    /// none). Each task's run stands alone: one whose expressions fail is stored as failed, its
    /// error naming the expression and what CEL said, and the others proceed.
    ///
    /// # Errors
    /// Store failures.
    pub async fn emit(
        &self,
        name: &str,
        data: Json,
        additional_metadata: Json,
    ) -> Result<Vec<RunView>, Error> {
        self.emit_at(name, data, additional_metadata, StartAt::Now)
            .await
    }

    /// As [`RedisEngine::emit`], for runs that start no sooner than `start`.
    ///
    /// # Errors
    /// As [`RedisEngine::emit`].
    pub async fn emit_at(
        &self,
        name: &str,
        data: Json,
        additional_metadata: Json,
        start: StartAt,
    ) -> Result<Vec<RunView>, Error> {
        let event = serde_json::json!({"name": name, "data": data});
        let mut stale = String::new();
        for _ in 0..STALE_RETRIES {
            let mut runs = Vec::new();
            for (t, version) in self.tasks_with_versions().await? {
                if t.triggers.iter().any(|x| x == name) {
                    runs.push(self.run_args(
                        &t,
                        &version,
                        &data,
                        &additional_metadata,
                        Some(&event),
                        (start, None),
                    )?);
                }
            }
            if runs.is_empty() {
                return Ok(Vec::new());
            }
            match self.insert(runs).await {
                Ok(Some(views)) => return Ok(views),
                Ok(None) => stale = name.to_owned(),
                Err(e) => return Err(e),
            }
        }
        Err(self.stale(&stale))
    }

    /// Renders a run of `task` (whose definition is `version`), starting at `start` with its
    /// `priority` (`None`: its task's), into the 19 values
    /// queue_enqueue.lua reads.
    fn run_args(
        &self,
        task: &Task,
        version: &str,
        input: &Json,
        meta: &Json,
        event: Option<&Json>,
        (start, priority): (StartAt, Option<u8>),
    ) -> Result<Vec<String>, Error> {
        let ctx = RunContext {
            input,
            additional_metadata: meta,
            event,
        };
        let (rendered, failure) = if ctx.event.is_some() {
            task.render_for_event(&ctx)
        } else {
            task.render_for_enqueue(&ctx)?
        };
        let failure = failure.unwrap_or_default();
        let priority = priority.unwrap_or(rendered.priority);
        // One entry per distinct key (the stores sum the units of entries naming one key).
        let mut rate: Vec<(bool, String, u64, String, usize)> = Vec::new();
        for r in &rendered.rate {
            let spec = match &r.dynamic {
                None => String::new(),
                Some(s) => crate::spec::rate(&s.to_rate_limit().map_err(Error::Spec)?),
            };
            let dynamic = r.dynamic.is_some();
            match rate.iter_mut().find(|e| e.0 == dynamic && e.1 == r.key) {
                Some(e) => {
                    e.2 += u64::from(r.units);
                    if dynamic {
                        e.3 = spec;
                    }
                }
                None => rate.push((
                    dynamic,
                    r.key.clone(),
                    u64::from(r.units),
                    spec,
                    r.spec_index,
                )),
            }
        }
        let line = |dynamic: bool, key: &str, units: u64, spec: &str, index: usize| {
            let (ns, guard, state) = if dynamic {
                ("d", Kind::DynamicLeases, Kind::DynamicRate)
            } else {
                ("s", Kind::Def, Kind::StaticRate)
            };
            format!(
                "{ns}\t{units}\t{spec}\t{}\t{}\t{key}\t{index}",
                self.inner.store.key(guard, key),
                self.inner.store.key(state, key)
            )
        };
        let rate = rate
            .iter()
            .map(|(dynamic, key, units, spec, index)| line(*dynamic, key, *units, spec, *index))
            .collect::<Vec<_>>()
            .join("\n");
        // The task's `rate_limit`, decided at enqueue (always a dynamic key of its own).
        let gate = rendered
            .gate
            .iter()
            .map(|g| {
                let spec = match &g.dynamic {
                    None => String::new(),
                    Some(s) => crate::spec::rate(&s.to_rate_limit().map_err(Error::Spec)?),
                };
                Ok(line(
                    g.dynamic.is_some(),
                    &g.key,
                    u64::from(g.units),
                    &spec,
                    g.spec_index,
                ))
            })
            .collect::<Result<Vec<_>, Error>>()?
            .join("\n");
        let conc = rendered
            .concurrency
            .iter()
            .map(|c| format!("{}\t{}", c.limit, c.key))
            .collect::<Vec<_>>()
            .join("\n");
        let (idem_key, idem_ms) = match (&rendered.idempotency_key, task.idempotency_period()) {
            (Some(k), Some(p)) => (k.clone(), p.as_nanos().as_millis_ceil().to_string()),
            _ => (String::new(), String::new()),
        };
        Ok(vec![
            task.name.clone(),
            match task.on_limit {
                OnLimit::Requeue => "r".into(),
                OnLimit::Skip => "s".into(),
            },
            task.max_attempts.to_string(),
            task.lease_timeout.as_nanos().as_micros_ceil().to_string(),
            input.to_string(),
            meta.to_string(),
            event.map(Json::to_string).unwrap_or_default(),
            rate,
            conc,
            idem_key,
            idem_ms,
            failure,
            version.to_owned(),
            gate,
            // When it may start: "" at once, "+<µs>" after a delay, "@<µs>" at an instant
            // (µs rounded up, so a run never starts early).
            match start {
                StartAt::Now => String::new(),
                StartAt::After(d) => format!("+{}", d.as_micros_ceil()),
                StartAt::At(t) => format!("@{}", t.as_micros_ceil()),
            },
            // Its retry backoff: "<backoff µs> <factor> <max µs or empty> <jitter 0|1>".
            task.retry
                .map(|r| {
                    format!(
                        "{} {} {} {}",
                        r.backoff.as_nanos().as_micros_ceil(),
                        r.factor,
                        r.max
                            .map(|m| m.as_nanos().as_micros_ceil().to_string())
                            .unwrap_or_default(),
                        u8::from(r.jitter)
                    )
                })
                .unwrap_or_default(),
            // Its priority, fairness key and weight ("" for the defaults: 2, none, 1).
            if priority == tollgate::task::DEFAULT_PRIORITY {
                String::new()
            } else {
                priority.to_string()
            },
            rendered.fairness.clone().unwrap_or_default(),
            if rendered.weight == 1 {
                String::new()
            } else {
                rendered.weight.to_string()
            },
        ])
    }

    /// Stores rendered runs, all or none; `None` when a task was redefined since it was read
    /// (the runs must be rendered again, and that task's cached definition is dropped).
    async fn insert(&self, runs: Vec<Vec<String>>) -> Result<Option<Vec<RunView>>, Error> {
        let mut args = self.script_args();
        args.push(runs.len().to_string());
        for r in runs {
            args.extend(r);
        }
        let (status, items) = self.queue_call("enqueue", Script::Enqueue, &args).await?;
        if status == "stale" {
            if let Some(task) = items.first().and_then(text_of) {
                self.inner.tasks.lock().remove(&task);
            }
            return Ok(None);
        }
        self.expect_ok("enqueue", &status)?;
        items
            .iter()
            .map(|v| self.view(v))
            .collect::<Result<_, _>>()
            .map(Some)
    }

    /// The engine of a batcher's task, or the error its callers get once it is gone.
    fn upgrade(me: &Weak<Inner>) -> Result<RedisEngine, Error> {
        me.upgrade()
            .map(|inner| RedisEngine { inner })
            .ok_or_else(|| {
                Error::Store(StoreError::transient(
                    "the Redis engine is closing; try again on another node",
                    None,
                ))
            })
    }

    /// Independent single-run enqueues stored in one call: a view each, or `None` for every one
    /// when a task was redefined meanwhile (each caller renders its run again; nothing is stored).
    async fn insert_batch(&self, runs: Vec<Vec<String>>) -> Result<Vec<Option<RunView>>, Error> {
        let n = runs.len();
        match self.insert(runs).await? {
            Some(views) => Ok(views.into_iter().map(Some).collect()),
            None => Ok((0..n).map(|_| None).collect()),
        }
    }

    /// Run ops applied in one call, in order: each one's status and payload.
    async fn run_ops(&self, ops: Vec<RunOp>) -> Result<Vec<(String, Vec<Value>)>, Error> {
        let mut args = self.script_args();
        args.reserve(1 + 5 * ops.len());
        args.push(ops.len().to_string());
        for op in ops {
            args.extend([
                op.op.to_owned(),
                op.id,
                op.attempt.map(|a| a.to_string()).unwrap_or_default(),
                op.text,
                match (op.retry, op.retry_after) {
                    (false, _) => "0".to_owned(),
                    (true, None) => "1".to_owned(),
                    (true, Some(us)) => format!("1:{us}"),
                },
            ]);
        }
        let (status, items) = self.queue_call("update runs", Script::Run, &args).await?;
        self.expect_ok("update runs", &status)?;
        items
            .into_iter()
            .map(|answer| match answer {
                Value::Array(mut parts) if !parts.is_empty() => {
                    let rest = parts.split_off(1);
                    let status = text_of(&parts[0]).unwrap_or_default();
                    Ok((status, rest))
                }
                other => Err(self.inner.store.bad_reply("update runs", &other)),
            })
            .collect()
    }

    /// Leases up to `max` runs of `tasks` for `worker_id`. Returns as soon as it holds at least
    /// one run; waits up to `wait` only while it has none, woken when any node makes a run
    /// ready (and looking at Redis every poll interval, in case a wakeup was lost). `stop` cuts
    /// the wait short (never a lease being taken). The long-poll is the one both engines share
    /// ([`tollgate::queue::run_queue::lease_until`]), over [`RedisEngine::try_lease`].
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
        tollgate::queue::run_queue::lease_until(self, worker_id, tasks, max, wait, stop).await
    }

    /// One call of the lease script: up to `max` runs of `tasks` for `worker_id`, no waiting.
    /// `more` says the script stopped with runs possibly still ready. `max` is taken as given.
    ///
    /// # Errors
    /// Store failures.
    pub async fn try_lease(
        &self,
        worker_id: &str,
        tasks: &[String],
        max: usize,
    ) -> Result<LeaseAttempt, Error> {
        let mut args = self.script_args();
        args.push(worker_id.to_owned());
        args.push(max.to_string());
        args.extend(tasks.iter().cloned());
        let (status, items) = self.queue_call("lease", Script::Lease, &args).await?;
        self.expect_ok("lease", &status)?;
        let more = items.first().and_then(int) == Some(1);
        if let Some(at) = items.get(1).and_then(int) {
            self.learn_deadline(at);
        }
        let runs = items
            .iter()
            .skip(2)
            .map(|v| {
                parse_leased(v).ok_or_else(|| self.inner.store.bad_reply("read a leased run", v))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(LeaseAttempt { runs, more })
    }

    /// As [`RedisEngine::lease_until`] without a way to stop early.
    ///
    /// # Errors
    /// Store failures.
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

    async fn run_op(
        &self,
        op: &'static str,
        id: &str,
        attempt: Option<u32>,
        text: &str,
        retry: bool,
    ) -> Result<RunView, Error> {
        self.run_op_with(op, id, attempt, text, retry, None).await
    }

    async fn run_op_with(
        &self,
        op: &'static str,
        id: &str,
        attempt: Option<u32>,
        text: &str,
        retry: bool,
        retry_after: Option<Nanos>,
    ) -> Result<RunView, Error> {
        let (status, items) = self
            .inner
            .run_ops
            .call(RunOp {
                op,
                id: id.to_owned(),
                attempt,
                text: text.to_owned(),
                retry,
                retry_after: retry_after.map(Nanos::as_micros_ceil),
            })
            .await?;
        match status.as_str() {
            "ok" => items.first().map(|v| self.view(v)).unwrap_or_else(|| {
                Err(self
                    .inner
                    .store
                    .corrupt(format_args!("{op} answered no run")))
            }),
            "unknown" => Err(Error::UnknownRun { id: id.to_owned() }),
            "invalid_state" => {
                let state = items
                    .first()
                    .and_then(text_of)
                    .and_then(|s| s.parse::<RunState>().ok())
                    .map_or("unknown", RunState::as_str);
                Err(Error::InvalidState {
                    id: id.to_owned(),
                    state,
                    action: op,
                })
            }
            other => Err(self
                .inner
                .store
                .corrupt(format_args!("{op} answered {other:?}"))),
        }
    }

    /// Extends a running run's lease by its task's lease timeout.
    ///
    /// # Errors
    /// [`Error::UnknownRun`]; [`Error::InvalidState`] when it is not running (or `attempt` is
    /// not its current one); store failures.
    pub async fn heartbeat(&self, id: &str, attempt: Option<u32>) -> Result<RunView, Error> {
        self.run_op("heartbeat", id, attempt, "", false).await
    }

    /// Marks a running run succeeded.
    ///
    /// # Errors
    /// As [`RedisEngine::heartbeat`].
    pub async fn complete(
        &self,
        id: &str,
        attempt: Option<u32>,
        output: Option<Json>,
    ) -> Result<RunView, Error> {
        let text = output.map(|o| o.to_string()).unwrap_or_default();
        self.run_op("complete", id, attempt, &text, false).await
    }

    /// Records a failure: with `retry`, requeued while attempts remain; otherwise failed.
    ///
    /// # Errors
    /// As [`RedisEngine::heartbeat`].
    pub async fn fail(
        &self,
        id: &str,
        attempt: Option<u32>,
        error: String,
        retry: bool,
    ) -> Result<RunView, Error> {
        self.fail_with(id, attempt, error, retry, None).await
    }

    /// As [`RedisEngine::fail`]; with `retry`, the next attempt waits `retry_after` when
    /// given, else its task's `retry` backoff (`scheduled` meanwhile).
    ///
    /// # Errors
    /// As [`RedisEngine::heartbeat`].
    pub async fn fail_with(
        &self,
        id: &str,
        attempt: Option<u32>,
        error: String,
        retry: bool,
        retry_after: Option<Nanos>,
    ) -> Result<RunView, Error> {
        self.run_op_with("fail", id, attempt, &error, retry, retry_after)
            .await
    }

    /// Hands a running run back without counting an attempt; its rate units are refunded.
    ///
    /// # Errors
    /// As [`RedisEngine::heartbeat`].
    pub async fn release(&self, id: &str, attempt: Option<u32>) -> Result<RunView, Error> {
        self.run_op("release", id, attempt, "", false).await
    }

    /// Cancels a run that has not ended.
    ///
    /// # Errors
    /// [`Error::UnknownRun`]; [`Error::InvalidState`] for an ended run; store failures.
    pub async fn cancel(&self, id: &str) -> Result<RunView, Error> {
        self.run_op("cancel", id, None, "", false).await
    }

    /// Run `id`.
    ///
    /// # Errors
    /// [`Error::UnknownRun`]; store failures.
    pub async fn run(&self, id: &str) -> Result<RunView, Error> {
        let args = vec![self.inner.q.clone(), "get".to_owned(), id.to_owned()];
        let (status, items) = self.queue_call("read a run", Script::Read, &args).await?;
        match (status.as_str(), items.first()) {
            ("ok", Some(v)) => self.view(v),
            _ => Err(Error::UnknownRun { id: id.to_owned() }),
        }
    }

    /// Why run `id` waits: each key it needs with its limit in force, usage, pause and wait
    /// queue (docs/design.md §3.14), read from Redis as the embedded engine reads its own.
    ///
    /// # Errors
    /// [`Error::UnknownRun`]; store failures.
    pub async fn explain(&self, id: &str) -> Result<tollgate::api::Explanation, Error> {
        use tollgate::queue::explain::{self, QueuePlace};
        // What is due is settled first, as the embedded engine does (and every queue call).
        sweep(self).await?;
        let args = vec![self.inner.q.clone(), "explain".to_owned(), id.to_owned()];
        let (status, items) = self
            .queue_call("explain a run", Script::Read, &args)
            .await?;
        let (Some(view), "ok") = (items.first(), status.as_str()) else {
            return Err(Error::UnknownRun { id: id.to_owned() });
        };
        let view = self.view(view)?;
        let bad = || {
            self.inner
                .store
                .corrupt(format_args!("explain answered {items:?}"))
        };
        let ready_ahead = items.get(1).and_then(int).ok_or_else(bad)?;
        let store = &self.inner.store;
        let now = self.inner.limits.now();
        let pauses = AsyncStore::pauses(store, now).await?;
        let eligible_at = view.eligible_at_ms.map(Nanos::from_millis);
        let mut limits = Vec::new();
        for entry in &items[2..] {
            let Value::Array(f) = entry else {
                return Err(bad());
            };
            let text = |i: usize| f.get(i).and_then(text_of).ok_or_else(bad);
            let number = |i: usize| {
                f.get(i)
                    .and_then(int)
                    .and_then(|n| u64::try_from(n).ok())
                    .ok_or_else(bad)
            };
            let position = f.get(7).and_then(int).ok_or_else(bad)?;
            let place = QueuePlace {
                waiting: number(6)?,
                position: u64::try_from(position).ok(),
                ahead: f[8..].iter().filter_map(text_of).collect(),
            };
            let key = text(1)?;
            if text(0)? == "c" {
                let limit = u32::try_from(number(4)?).unwrap_or(u32::MAX);
                limits.push(explain::concurrency_key(&key, limit, number(5)?, place));
                continue;
            }
            let dynamic = text(2)? == "d";
            let (spec, info) = if dynamic {
                let spec = crate::spec::parse(&text(3)?)
                    .map(|l| LimitSpec::from_limit(&l))
                    .ok_or_else(bad)?;
                (Some(spec), AsyncStore::get_dynamic(store, &key, now).await?)
            } else {
                (None, AsyncStore::get_limit(store, &key, now).await?)
            };
            limits.push(explain::rate_key(
                &key,
                dynamic,
                spec.as_ref(),
                info.as_ref(),
                &pauses,
                place,
                eligible_at,
                now,
            ));
        }
        Ok(tollgate::api::Explanation {
            state: view.state,
            eligible_at_ms: view.eligible_at_ms,
            run: view,
            ready_ahead: u64::try_from(ready_ahead).ok(),
            limits,
        })
    }

    /// Runs, newest first, optionally of one task and/or in one state; at most `limit`.
    ///
    /// # Errors
    /// Store failures.
    pub async fn runs(
        &self,
        task: Option<&str>,
        state: Option<RunState>,
        limit: usize,
    ) -> Result<Vec<RunView>, Error> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let args = vec![
            self.inner.q.clone(),
            "list".to_owned(),
            task.unwrap_or_default().to_owned(),
            state.map(RunState::as_str).unwrap_or_default().to_owned(),
            limit.to_string(),
        ];
        let (status, items) = self.queue_call("list runs", Script::Read, &args).await?;
        self.expect_ok("list runs", &status)?;
        items.iter().map(|v| self.view(v)).collect()
    }

    /// Runs per task and state (states with none left out).
    ///
    /// # Errors
    /// Store failures.
    pub async fn depth(&self) -> Result<Vec<(String, RunState, u64)>, Error> {
        let args = vec![self.inner.q.clone(), "depth".to_owned()];
        let (status, items) = self
            .queue_call("read the depth", Script::Read, &args)
            .await?;
        self.expect_ok("read the depth", &status)?;
        items
            .chunks(3)
            .map(|c| {
                let parsed = (|| {
                    Some((
                        text_of(c.first()?)?,
                        text_of(c.get(1)?)?.parse::<RunState>().ok()?,
                        u64::try_from(int(c.get(2)?)?).ok()?,
                    ))
                })();
                parsed.ok_or_else(|| self.inner.store.corrupt("unreadable depth reply"))
            })
            .collect()
    }

    /// This node's counters: the transitions and decisions its own calls caused, and the
    /// dispatch lag of the parked runs it leased (Prometheus sums nodes).
    pub fn metrics(&self) -> QueueMetrics {
        self.inner.metrics.lock().clone()
    }

    /// How long ended runs are kept (default 7 days); a zero period keeps them forever.
    pub fn set_retention(&self, retention: Period) {
        self.inner
            .retention
            .store(retention.as_nanos().as_nanos(), Ordering::Relaxed);
    }

    /// Forgets runs that ended longer than the retention ago; returns how many.
    ///
    /// # Errors
    /// Store failures.
    pub async fn prune(&self) -> Result<usize, Error> {
        let keep = self.inner.retention.load(Ordering::Relaxed);
        if keep == 0 {
            return Ok(0);
        }
        let now_us = self.redis_now_us().await?;
        let cutoff = now_us.saturating_sub(keep / 1_000);
        let mut total = 0;
        loop {
            let args = vec![
                self.inner.q.clone(),
                "prune".to_owned(),
                cutoff.to_string(),
                "1000".to_owned(),
            ];
            let (status, items) = self.queue_call("prune runs", Script::Read, &args).await?;
            self.expect_ok("prune runs", &status)?;
            let n = items
                .first()
                .and_then(int)
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(0);
            total += n;
            if n < 1000 {
                return Ok(total);
            }
        }
    }

    /// Stops this node's background jobs. Everything else already lives in Redis.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Relaxed);
        self.inner.timer.notify_one();
        self.inner.closing.notify_waiters();
    }

    // ---- plumbing -------------------------------------------------------------------------

    fn q_key(&self, what: &str) -> String {
        format!("{}{what}", self.inner.q)
    }

    async fn redis_now_us(&self) -> Result<u64, Error> {
        let (secs, micros): (u64, u64) = self
            .inner
            .store
            .run("read the time", |mut con| async move {
                redis::cmd("TIME").query_async(&mut con).await
            })
            .await?;
        Ok(secs * 1_000_000 + micros)
    }

    /// prefix, now, slack: the first ARGV of every writing queue script.
    fn script_args(&self) -> Vec<String> {
        let now = self.inner.limits.now();
        vec![
            self.inner.q.clone(),
            self.inner.store.now_arg(now),
            self.inner.store.slack_ms().to_string(),
        ]
    }

    async fn queue_call(
        &self,
        what: &str,
        script: Script,
        args: &[String],
    ) -> Result<(String, Vec<Value>), Error> {
        let scripts = self.inner.store.scripts();
        let script = match script {
            Script::Enqueue => &scripts.queue_enqueue,
            Script::Lease => &scripts.queue_lease,
            Script::Run => &scripts.queue_run,
            Script::Sweep => &scripts.queue_sweep,
            Script::Read => &scripts.queue_read,
            Script::Define => &scripts.queue_define,
        };
        let reply = self.inner.store.call(what, script, &[], args).await?;
        let Value::Array(mut items) = reply else {
            return Err(self.inner.store.bad_reply(what, &reply));
        };
        if items.len() < 2 {
            return Err(self.inner.store.bad_reply(what, &Value::Array(items)));
        }
        let rest = items.split_off(2);
        let status = text_of(&items[0]).unwrap_or_default();
        self.account(&items[1]);
        Ok((status, rest))
    }

    fn expect_ok(&self, what: &str, status: &str) -> Result<(), Error> {
        if status == "ok" {
            Ok(())
        } else {
            Err(self
                .inner
                .store
                .corrupt(format_args!("{what} answered {status:?}")))
        }
    }

    /// Adds a script's effects to this node's counters.
    fn account(&self, effects: &Value) {
        let e = parse_effects(effects);
        if e.transitions.is_empty() && e.decisions.is_empty() && e.lags.is_empty() {
            return;
        }
        let mut m = self.inner.metrics.lock();
        for (task, t) in e.transitions {
            tracing::debug!(target: "tollgate::queue", task, transition = t.as_str(), "run transition");
            m.tasks.entry(task).or_default().transitions[t as usize] += 1;
        }
        for (task, index, allowed) in e.decisions {
            let d = &mut m.tasks.entry(task).or_default().decisions;
            if d.len() <= index {
                d.resize(index + 1, DecisionCount::default());
            }
            if allowed {
                d[index].allowed += 1;
            } else {
                d[index].denied += 1;
            }
        }
        for lag in e.lags {
            m.dispatch_lag.observe(lag);
        }
    }

    fn learn_deadline(&self, at_us: i64) {
        let Ok(at) = u64::try_from(at_us) else {
            return;
        };
        let known = self.inner.next_deadline.load(Ordering::Relaxed);
        if known == 0 || at < known {
            self.inner.next_deadline.store(at, Ordering::Relaxed);
            self.inner.timer.notify_one();
        }
    }

    /// A run view from a queue script's reply (the fields of `VIEW` in queue_lib.lua).
    fn view(&self, v: &Value) -> Result<RunView, Error> {
        parse_view(v).ok_or_else(|| self.inner.store.bad_reply("read a run", v))
    }
}

#[derive(Clone, Copy)]
enum Script {
    Enqueue,
    Lease,
    Run,
    Sweep,
    Read,
    Define,
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn opt_text(v: &Value) -> Option<Option<String>> {
    match v {
        Value::Nil => Some(None),
        other => text_of(other).map(Some),
    }
}

fn opt_u64(v: &Value) -> Option<Option<u64>> {
    match opt_text(v)? {
        None => Some(None),
        Some(s) => s.parse().ok().map(Some),
    }
}

fn micros_to_ms_floor(us: u64) -> u64 {
    us / 1_000
}

fn micros_to_ms_ceil(us: u64) -> u64 {
    us.div_ceil(1_000)
}

fn parse_view(v: &Value) -> Option<RunView> {
    let Value::Array(f) = v else { return None };
    if f.len() != 17 {
        return None;
    }
    let json = |v: &Value| -> Option<Json> { serde_json::from_str(&text_of(v)?).ok() };
    let output = match opt_text(&f[11])? {
        None => None,
        Some(s) => Some(serde_json::from_str(&s).ok()?),
    };
    Some(RunView {
        id: text_of(&f[0])?,
        task: text_of(&f[1])?,
        state: text_of(&f[2])?.parse().ok()?,
        input: json(&f[3])?,
        additional_metadata: json(&f[4])?,
        attempt: u32::try_from(int(&f[5])?).ok()?,
        max_attempts: u32::try_from(int(&f[6])?).ok()?,
        waiting_on: opt_text(&f[7])?,
        // Instants round up for eligible_at (a worker waiting until then is never early).
        eligible_at_ms: opt_u64(&f[8])?.map(micros_to_ms_ceil),
        skip_reason: opt_text(&f[9])?,
        error: opt_text(&f[10])?,
        output,
        created_at_ms: micros_to_ms_floor(opt_u64(&f[12])?.unwrap_or(0)),
        updated_at_ms: micros_to_ms_floor(opt_u64(&f[13])?.unwrap_or(0)),
        lease_expires_at_ms: opt_u64(&f[14])?.map(micros_to_ms_floor),
        worker_id: opt_text(&f[15])?,
        priority: match opt_u64(&f[16])? {
            Some(p) => u8::try_from(p).ok()?,
            None => tollgate::task::DEFAULT_PRIORITY,
        },
    })
}

/// A leased run from queue_lease.lua's reply: `{ id, task, input, meta, attempt, lease expiry
/// µs }`.
fn parse_leased(v: &Value) -> Option<LeasedRun> {
    let Value::Array(f) = v else { return None };
    if f.len() != 6 {
        return None;
    }
    let json = |v: &Value| -> Option<Json> { serde_json::from_str(&text_of(v)?).ok() };
    Some(LeasedRun {
        id: text_of(&f[0])?,
        task: text_of(&f[1])?,
        input: json(&f[2])?,
        additional_metadata: json(&f[3])?,
        attempt: u32::try_from(int(&f[4])?).ok()?,
        lease_expires_at_ms: micros_to_ms_floor(u64::try_from(int(&f[5])?).ok()?),
    })
}

fn parse_effects(v: &Value) -> Effects {
    let mut out = Effects::default();
    let Value::Array(parts) = v else { return out };
    let list = |i: usize| -> Vec<String> {
        match parts.get(i) {
            Some(Value::Array(items)) => items.iter().filter_map(text_of).collect(),
            _ => Vec::new(),
        }
    };
    let tr = list(0);
    for pair in tr.chunks(2) {
        if let [task, name] = pair
            && let Some(t) = Transition::ALL.into_iter().find(|t| t.as_str() == name)
        {
            out.transitions.push((task.clone(), t));
        }
    }
    for triple in list(1).chunks(3) {
        if let [task, index, outcome] = triple
            && let Ok(i) = index.parse()
        {
            out.decisions.push((task.clone(), i, outcome == "a"));
        }
    }
    for lag in list(2) {
        if let Ok(us) = lag.parse::<u64>() {
            out.lags.push(Nanos::from_micros(us));
        }
    }
    out
}

/// Fires due timers and lease expiries. Sleeps until the earliest deadline this node knows of,
/// at most the poll interval (another node may have set an earlier one), or until woken.
fn spawn_sweeper(engine: Weak<Inner>) {
    let Some(timer) = engine.upgrade().map(|i| Arc::clone(&i.timer)) else {
        return;
    };
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(50);
        loop {
            let woken = timer.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let nap = {
                // No strong reference is held while sleeping: dropping the engine ends this.
                let Some(inner) = engine.upgrade() else {
                    return;
                };
                if inner.closed.load(Ordering::Relaxed) {
                    return;
                }
                let e = RedisEngine { inner };
                match sweep(&e).await {
                    Ok(Some((next, now))) => {
                        backoff = Duration::from_millis(50);
                        e.inner.next_deadline.store(next, Ordering::Relaxed);
                        Duration::from_micros(next.saturating_sub(now)).min(e.poll_interval())
                    }
                    Ok(None) => {
                        backoff = Duration::from_millis(50);
                        e.inner.next_deadline.store(0, Ordering::Relaxed);
                        e.poll_interval()
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "sweeping the run queue failed; retrying");
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        backoff
                    }
                }
            };
            tokio::select! {
                () = &mut woken => {}
                () = tokio::time::sleep(nap) => {}
            }
        }
    });
}

/// One sweep: the next deadline and Redis's now (µs), or `None` when nothing is pending.
async fn sweep(e: &RedisEngine) -> Result<Option<(u64, u64)>, Error> {
    let (status, items) = e
        .queue_call("sweep", Script::Sweep, &e.script_args())
        .await?;
    e.expect_ok("sweep", &status)?;
    let next = items.first().and_then(int).unwrap_or(-1);
    let now = items.get(1).and_then(int).unwrap_or(0);
    Ok(match (u64::try_from(next), u64::try_from(now)) {
        (Ok(next), Ok(now)) => Some((next, now)),
        _ => None,
    })
}

/// Listens on the queue's `ready` channel, waking this node's long-polls; reconnects with a
/// backoff capped at one second. Holds no reference to the engine: closing or dropping it
/// ends the task.
fn spawn_subscriber(inner: &Arc<Inner>) {
    let ready = Arc::clone(&inner.ready);
    let closed = Arc::clone(&inner.closed);
    let closing = Arc::clone(&inner.closing);
    let store = inner.store.clone();
    let channel = format!("{}ready", inner.q);
    tokio::spawn(async move {
        let until_closed = || async {
            let woken = closing.notified();
            tokio::pin!(woken);
            // Registered before the flag is read: a close in between still wakes us.
            woken.as_mut().enable();
            if !closed.load(Ordering::Relaxed) {
                woken.await;
            }
        };
        let mut backoff = Duration::from_millis(50);
        while !closed.load(Ordering::Relaxed) {
            let wake = || ready.notify_waiters();
            match store.subscribe(&channel, until_closed(), &wake).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "the queue's subscription dropped; reconnecting");
                    // Runs may have become ready while we were away.
                    ready.notify_waiters();
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = until_closed() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    });
}

fn spawn_pruning(engine: Weak<Inner>) {
    tokio::spawn(async move {
        let every = Duration::from_secs(60);
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = engine.upgrade() else {
                return;
            };
            if inner.closed.load(Ordering::Relaxed) {
                return;
            }
            let e = RedisEngine { inner };
            match e.prune().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(runs = n, "forgot ended runs past the retention"),
                Err(err) => tracing::warn!(error = %err, "forgetting old runs failed"),
            }
        }
    });
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
