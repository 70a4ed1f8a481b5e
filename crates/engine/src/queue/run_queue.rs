//! [`RunQueue`]: one interface for a run queue, whatever keeps it — the embedded
//! [`Engine`](crate::Engine) (memory or SQLite) or the Redis engine (`tollgate-redis`). The server
//! holds an `Arc<dyn RunQueue>` and never says which engine is behind it (docs/design.md §4.3).
//!
//! The front both engines share is written here once: the long-poll ([`lease_until`], over one
//! leasing attempt each engine provides, [`LeaseQueue::try_lease`]), name checks
//! ([`check_name`]), compiling a task against the declared limits ([`compile_task`]) and finding
//! the tasks that name a limit ([`tasks_naming`], for `limit_in_use`). The queue's rules
//! themselves stay each engine's own (`queue/state.rs`, the Redis engine's Lua scripts).

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Instant;
use tollgate_core::{Adaptive, Declared, Feedback, Limit, Nanos, Period};

use crate::error::Error;
use crate::limiter::AsyncLimiter;
use crate::metrics::QueueMetrics;
use crate::queue::run::{LeasedRun, RunState, RunView};
use crate::spec::LimitSpec;
use crate::store::{AcquireEntry, Namespace, Pause};
use crate::task::{Task, TaskSpec};

/// Most runs one lease call returns (the API's limit on `max`).
pub use tollgate_api::MAX_LEASE_BATCH;

/// What every asynchronous [`RunQueue`] method returns: a boxed future, so that the trait stays
/// object-safe without an `async-trait` dependency.
pub type QueueFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

/// One leasing attempt's answer ([`LeaseQueue::try_lease`]).
#[derive(Debug, Default)]
pub struct LeaseAttempt {
    /// The runs leased, in the order they were taken.
    pub runs: Vec<LeasedRun>,
    /// More runs may be ready now: try again at once instead of waiting for a wakeup. (Redis's
    /// lease script stops at a bound of its own work per call; the embedded engine never says
    /// so.)
    pub more: bool,
}

/// The part of a run queue the shared long-poll ([`lease_until`]) needs. Separate from
/// [`RunQueue`] because every embedded [`Engine<S>`](crate::Engine) has it, whatever its store,
/// while only `Engine<DynStore>` is a [`RunQueue`].
pub trait LeaseQueue: Send + Sync + 'static {
    /// One attempt at leasing up to `max` runs of `tasks` for `worker_id`: no waiting.
    fn try_lease<'a>(
        &'a self,
        worker_id: &'a str,
        tasks: &'a [String],
        max: usize,
    ) -> QueueFuture<'a, LeaseAttempt>;

    /// Woken (`notify_waiters`) whenever runs may have become ready.
    fn ready(&self) -> &Notify;

    /// How long a waiting long-poll goes without a new attempt unless woken: `Some` where a
    /// wakeup can be lost (Redis: another node's pub/sub message), `None` where it cannot.
    fn poll_interval(&self) -> Option<Duration>;

    /// A count of long-polls in progress, kept by [`lease_until`], for an engine that needs it:
    /// the embedded engine's timer leaves its changes to the commit of the lease call it wakes
    /// (`Engine::apply` with `carry`), which only pays while someone is leasing.
    fn lease_calls(&self) -> Option<&AtomicUsize> {
        None
    }
}

/// When an enqueued run may start: at once, or no sooner than a delay or an instant (Celery's
/// `countdown` and `eta`, Dramatiq's `delay`). A run due later is `scheduled` until then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// At once (admitted now).
    #[default]
    Now,
    /// This long after the engine's now at enqueue.
    After(Nanos),
    /// At this instant (since the Unix epoch); one already past is at once.
    At(Nanos),
}

impl StartAt {
    /// The instant it is due, given the engine's `now`; `None` for [`StartAt::Now`].
    pub fn due(self, now: Nanos) -> Option<Nanos> {
        match self {
            StartAt::Now => None,
            StartAt::After(d) => Some(now + d),
            StartAt::At(t) => Some(t),
        }
    }
}

/// When a pause ends ([`RunQueue::pause`]): this long after the engine's now, or at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseEnd {
    /// This long after the engine's now.
    For(Nanos),
    /// At this instant (since the Unix epoch); one already past pauses nothing.
    Until(Nanos),
}

impl PauseEnd {
    /// The instant it ends, given the engine's `now`.
    pub fn at(self, now: Nanos) -> Nanos {
        match self {
            PauseEnd::For(d) => now + d,
            PauseEnd::Until(t) => t,
        }
    }
}

/// A run queue: limits, tasks, runs and their workers' calls. Both engines implement it; the
/// server holds one as `Arc<dyn RunQueue>`.
///
/// Methods that read (`task`, `tasks`, `run`, `runs`, `depth`) are asynchronous because a
/// store may have to do IO for them (Redis).
pub trait RunQueue: LeaseQueue {
    /// `"embedded"` or `"redis"`, for logs and the dashboard.
    fn mode(&self) -> &'static str;

    /// The limiter for direct acquires, leases and barriers, over the same store; its calls
    /// are awaited (Redis does IO for them).
    fn limits(&self) -> &AsyncLimiter;

    /// Declares or redefines static limit `key` (usage kept) and re-plans the runs parked on it.
    fn put_limit<'a>(&'a self, key: &'a str, spec: LimitSpec) -> QueueFuture<'a, Limit>;

    /// Removes static limit `key`; whether it existed. Refused ([`Error::LimitInUse`]) while
    /// a task or a run not yet ended names it.
    fn remove_limit<'a>(&'a self, key: &'a str) -> QueueFuture<'a, bool>;

    /// Reports `feedback` for adaptive limit `key`: one AIMD step of its limit in force, which
    /// redefines the limit (usage kept) and re-plans the runs parked on it in the same step,
    /// as [`RunQueue::put_limit`] does (docs/design.md §3.16). Returns the definition after
    /// it. [`Error::UnknownLimit`]; [`Error::NotAdaptive`] for a limit that does not adapt.
    fn feedback<'a>(&'a self, key: &'a str, feedback: Feedback) -> QueueFuture<'a, Declared>;

    /// The bounds of every declared limit that adapts, by key (what the views of limits show
    /// beside the limiter's definition, whose `limit` is the limit in force).
    fn adaptive_limits(&self) -> QueueFuture<'_, BTreeMap<String, Adaptive>>;

    /// Pauses `key` until `end` (a pause in force that ends later is kept) and re-plans the
    /// runs parked on it; returns when the pause in force ends (docs/design.md §3.13).
    /// [`Error::UnknownLimit`] for a static key that is not declared.
    fn pause<'a>(
        &'a self,
        namespace: Namespace,
        key: &'a str,
        end: PauseEnd,
    ) -> QueueFuture<'a, Nanos>;

    /// Ends `key`'s pause now and tries the head of the runs parked on it; whether one was in
    /// force.
    fn resume<'a>(&'a self, namespace: Namespace, key: &'a str) -> QueueFuture<'a, bool>;

    /// Every pause in force.
    fn pauses(&self) -> QueueFuture<'_, Vec<Pause>>;

    /// Defines or redefines task `name`. Runs already enqueued keep their definition.
    fn put_task<'a>(&'a self, name: &'a str, spec: TaskSpec) -> QueueFuture<'a, Arc<Task>>;

    /// Task `name`.
    fn task<'a>(&'a self, name: &'a str) -> QueueFuture<'a, Option<Arc<Task>>>;

    /// Every task, by name.
    fn tasks(&self) -> QueueFuture<'_, Vec<Arc<Task>>>;

    /// Enqueues a run of `task`.
    fn enqueue<'a>(
        &'a self,
        task: &'a str,
        input: Value,
        additional_metadata: Value,
    ) -> QueueFuture<'a, RunView> {
        self.enqueue_at(task, input, additional_metadata, StartAt::Now)
    }

    /// As [`RunQueue::enqueue`], for a run that starts no sooner than `start` (`scheduled`
    /// until then).
    fn enqueue_at<'a>(
        &'a self,
        task: &'a str,
        input: Value,
        additional_metadata: Value,
        start: StartAt,
    ) -> QueueFuture<'a, RunView> {
        self.enqueue_with(task, input, additional_metadata, start, None)
    }

    /// As [`RunQueue::enqueue_at`], at `priority` (1 to 4) rather than its task's; `None`: its
    /// task's (docs/design.md §3.15).
    fn enqueue_with<'a>(
        &'a self,
        task: &'a str,
        input: Value,
        additional_metadata: Value,
        start: StartAt,
        priority: Option<u8>,
    ) -> QueueFuture<'a, RunView>;

    /// Enqueues one run of every task triggered by event `name` (all or none).
    fn emit<'a>(
        &'a self,
        name: &'a str,
        data: Value,
        additional_metadata: Value,
    ) -> QueueFuture<'a, Vec<RunView>> {
        self.emit_at(name, data, additional_metadata, StartAt::Now)
    }

    /// As [`RunQueue::emit`], for runs that start no sooner than `start`.
    fn emit_at<'a>(
        &'a self,
        name: &'a str,
        data: Value,
        additional_metadata: Value,
        start: StartAt,
    ) -> QueueFuture<'a, Vec<RunView>>;

    /// Extends a running run's lease by its own lease timeout.
    fn heartbeat<'a>(&'a self, id: &'a str, attempt: Option<u32>) -> QueueFuture<'a, RunView>;

    /// Marks a running run succeeded.
    fn complete<'a>(
        &'a self,
        id: &'a str,
        attempt: Option<u32>,
        output: Option<Value>,
    ) -> QueueFuture<'a, RunView>;

    /// Records a failure: with `retry`, requeued while attempts remain (after its task's
    /// backoff, `scheduled` meanwhile); otherwise failed.
    fn fail<'a>(
        &'a self,
        id: &'a str,
        attempt: Option<u32>,
        error: String,
        retry: bool,
    ) -> QueueFuture<'a, RunView> {
        self.fail_with(id, attempt, error, retry, None)
    }

    /// As [`RunQueue::fail`]; with `retry`, `retry_after` (an upstream's `Retry-After`) is the
    /// wait before the next attempt instead of the task's backoff.
    fn fail_with<'a>(
        &'a self,
        id: &'a str,
        attempt: Option<u32>,
        error: String,
        retry: bool,
        retry_after: Option<Nanos>,
    ) -> QueueFuture<'a, RunView>;

    /// Hands a running run back without counting an attempt.
    fn release<'a>(&'a self, id: &'a str, attempt: Option<u32>) -> QueueFuture<'a, RunView>;

    /// Cancels a run that has not ended.
    fn cancel<'a>(&'a self, id: &'a str) -> QueueFuture<'a, RunView>;

    /// Run `id` ([`Error::UnknownRun`] if there is none).
    fn run<'a>(&'a self, id: &'a str) -> QueueFuture<'a, RunView>;

    /// Why run `id` waits, key by key (docs/design.md §3.14).
    fn explain<'a>(&'a self, id: &'a str) -> QueueFuture<'a, tollgate_api::Explanation>;

    /// Runs, newest first, optionally of one task and/or in one state; at most `limit`.
    fn runs<'a>(
        &'a self,
        task: Option<&'a str>,
        state: Option<RunState>,
        limit: usize,
    ) -> QueueFuture<'a, Vec<RunView>>;

    /// Runs per task and state.
    fn depth(&self) -> QueueFuture<'_, Vec<(String, RunState, u64)>>;

    /// The queue's counters (this node's, in Redis mode). A copy.
    fn metrics(&self) -> QueueMetrics;

    /// Journals direct use for crash recovery. Only the embedded engine with SQLite needs to;
    /// Redis keeps direct use itself.
    fn note_direct_use<'a>(&'a self, entries: &'a [AcquireEntry<'_>]) -> QueueFuture<'a, ()> {
        let _ = entries;
        Box::pin(std::future::ready(Ok(())))
    }

    /// How long ended runs are kept.
    fn set_retention(&self, retention: Period);

    /// Forgets ended runs older than the retention now; returns how many.
    fn prune(&self) -> QueueFuture<'_, usize>;

    /// Flushes what must be and stops background work; call before exiting.
    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// Leases up to `max` runs (clamped to 1..=[`MAX_LEASE_BATCH`]) of `tasks` for `worker_id`.
/// Returns as soon as it holds at least one run; waits up to `wait` only while it holds none,
/// woken by [`LeaseQueue::ready`] (and, where a wakeup may be lost, every
/// [`LeaseQueue::poll_interval`]). The wait also ends as soon as `stop` completes (a server
/// shutting down answers its long-polls at once): the call then returns what it holds, which is
/// nothing. `stop` only cuts the wait, never a lease being taken, so unlike dropping the future
/// it never leaves runs leased to nobody.
///
/// # Errors
/// Store failures.
pub async fn lease_until<Q: LeaseQueue + ?Sized>(
    queue: &Q,
    worker_id: &str,
    tasks: &[String],
    max: usize,
    wait: Duration,
    stop: impl Future<Output = ()>,
) -> Result<Vec<LeasedRun>, Error> {
    let max = max.clamp(1, MAX_LEASE_BATCH);
    let deadline = Instant::now() + wait;
    let _leasing = queue.lease_calls().map(Leasing::enter);
    tokio::pin!(stop);
    loop {
        // Registered before the attempt: a run made ready while it runs still wakes this wait.
        let notified = queue.ready().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let attempt = queue.try_lease(worker_id, tasks, max).await?;
        if !attempt.runs.is_empty() || Instant::now() >= deadline {
            return Ok(attempt.runs);
        }
        if attempt.more {
            continue;
        }
        let nap = match queue.poll_interval() {
            Some(every) => deadline.min(Instant::now() + every),
            None => deadline,
        };
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep_until(nap) => {}
            // Nothing is held while waiting, so nothing is lost by stopping here.
            () = &mut stop => return Ok(Vec::new()),
        }
    }
}

/// [`lease_until`] without a way to stop early.
///
/// # Errors
/// Store failures.
///
/// # Cancel safety
/// Not cancel-safe while it takes a lease: dropped then, the runs it has just leased stay
/// leased to nobody until their lease expires (costing an attempt). To end a wait early, use
/// [`lease_until`].
pub async fn lease<Q: LeaseQueue + ?Sized>(
    queue: &Q,
    worker_id: &str,
    tasks: &[String],
    max: usize,
    wait: Duration,
) -> Result<Vec<LeasedRun>, Error> {
    lease_until(queue, worker_id, tasks, max, wait, std::future::pending()).await
}

/// Counts a lease call in progress for as long as it lives (dropped futures included).
struct Leasing<'a>(&'a AtomicUsize);

impl<'a> Leasing<'a> {
    fn enter(count: &'a AtomicUsize) -> Leasing<'a> {
        count.fetch_add(1, Ordering::Relaxed);
        Leasing(count)
    }
}

impl Drop for Leasing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Checks a task name (the rules of a key), answering [`Error::InvalidName`] with at most its
/// first 64 characters.
///
/// # Errors
/// [`Error::InvalidName`].
pub fn check_name(name: &str) -> Result<(), Error> {
    crate::error::check_key(name).map_err(|_| Error::InvalidName {
        name: name.chars().take(64).collect(),
    })
}

/// Compiles task `name` against the declared limits `declared` gives (a `static_key` must name
/// one, and constant units must fit its capacity).
///
/// # Errors
/// [`Error::Spec`] naming the field.
pub fn compile_task(
    name: &str,
    spec: TaskSpec,
    declared: &dyn Fn(&str) -> Option<Limit>,
) -> Result<Task, Error> {
    Task::compile(name, spec, declared).map_err(Error::Spec)
}

/// The declared limits `spec` names as `static_key`s, read from `limits` (a key that is not
/// declared, or not even a valid key, is left out: compiling says which field is wrong).
///
/// # Errors
/// Store failures.
pub async fn declared_limits(
    limits: &AsyncLimiter,
    spec: &TaskSpec,
) -> Result<HashMap<String, Limit>, Error> {
    let mut declared = HashMap::new();
    for key in spec
        .rate_limits
        .iter()
        .filter_map(|r| r.static_key.as_deref())
    {
        if declared.contains_key(key) {
            continue;
        }
        match limits.get(key).await {
            Ok(Some(info)) => {
                declared.insert(key.to_owned(), info.limit);
            }
            Ok(None) | Err(Error::InvalidKey { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(declared)
}

/// The tasks (by name, sorted) that name declared limit `key` as a `static_key`: a limit they
/// name is in use ([`Error::LimitInUse`]).
pub fn tasks_naming<'a>(tasks: impl IntoIterator<Item = &'a Arc<Task>>, key: &str) -> Vec<String> {
    let mut names: Vec<String> = tasks
        .into_iter()
        .filter(|t| t.uses_static_key(key))
        .map(|t| t.name.clone())
        .collect();
    names.sort();
    names
}
