//! [`Worker`]: leases runs of the tasks it serves, runs their handlers in N slots,
//! heartbeats while they run, reports the outcome, and shuts down gracefully.
//!
//! One loop leases (a long poll for at most the free slots, so a worker never holds more runs
//! than it has slots); every leased run gets a task of its own that spawns the handler,
//! heartbeats every third of the task's lease timeout while it runs, and then completes or
//! fails the run. Every call carries the run's `attempt`: a worker whose lease lapsed gets 409
//! instead of touching the attempt another worker now holds, logs it and drops the run.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tollgate_api::{ErrorCode, LeasedRun};

use crate::client::Client;
use crate::error::Error;
use crate::task_builder::TaskBuilder;

/// What a handler answers: the run's output (stored with the run), or why it failed.
pub type HandlerResult = Result<Option<Value>, HandlerError>;

type BoxFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;
type Handler = Arc<dyn Fn(RunContext) -> BoxFuture + Send + Sync>;

/// The default number of runs a worker executes at once.
pub const DEFAULT_SLOTS: usize = 4;
/// The default time a lease call waits on the server for a run (a long poll).
pub const DEFAULT_POLL_WAIT: Duration = Duration::from_secs(10);
/// The default time in-flight handlers get to finish at shutdown before their runs are
/// released.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// The run a handler executes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RunContext {
    /// The run's id.
    pub id: String,
    /// The task it is a run of.
    pub task: String,
    /// This attempt, 1-based.
    pub attempt: u32,
    /// The run's input.
    pub input: Value,
    /// The metadata given at enqueue (`null` when none).
    pub additional_metadata: Value,
    /// When the lease this attempt started with lapses (Unix-epoch ms); the worker extends it
    /// while the handler runs.
    pub lease_expires_at_ms: u64,
    /// The server's time when it leased this attempt (Unix-epoch ms): when the run's limits
    /// admitted it.
    pub leased_at_ms: u64,
    /// The worker running it.
    pub worker_id: String,
    /// A client for the same server, for handlers that acquire limits or wait on barriers.
    pub client: Client,
}

/// Why a handler failed, and whether the run should be tried again (while attempts remain).
///
/// Any `std::error::Error` converts into a retryable one, so handlers can use `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    message: String,
    retry: bool,
}

impl HandlerError {
    /// A failure worth another attempt (the run is queued again while attempts remain).
    pub fn retry(message: impl Into<String>) -> HandlerError {
        HandlerError {
            message: message.into(),
            retry: true,
        }
    }

    /// A failure that ends the run as `failed` now.
    pub fn fatal(message: impl Into<String>) -> HandlerError {
        HandlerError {
            message: message.into(),
            retry: false,
        }
    }

    /// The message stored as the run's `error`.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the run is retried.
    pub fn retries(&self) -> bool {
        self.retry
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error> From<E> for HandlerError {
    fn from(e: E) -> HandlerError {
        HandlerError::retry(e.to_string())
    }
}

/// What a worker did, answered by [`Worker::run`] once it has stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerSummary {
    /// Runs leased.
    pub leased: u64,
    /// Runs completed.
    pub succeeded: u64,
    /// Runs failed (retried or for good).
    pub failed: u64,
    /// Runs handed back at shutdown without counting an attempt.
    pub released: u64,
    /// Runs dropped because their lease was lost (expired, cancelled, or the server refused
    /// the outcome), or whose outcome could not be reported.
    pub lost: u64,
}

/// Why [`Worker::run`] could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// No task was registered.
    #[error("the worker has no tasks: register at least one")]
    NoTasks,
    /// The server refused a task definition (bad CEL, an unknown static limit, …).
    #[error("registering task {task:?}: {source}")]
    #[non_exhaustive]
    Register {
        /// The task.
        task: String,
        /// The server's answer.
        #[source]
        source: Error,
    },
}

struct Registered {
    task: TaskBuilder,
    handler: Handler,
}

/// Configures a [`Worker`]: its id, slots, the tasks it serves and their handlers.
pub struct WorkerBuilder {
    client: Client,
    id: Option<String>,
    slots: usize,
    poll_wait: Duration,
    grace: Duration,
    tasks: Vec<Registered>,
}

impl fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("id", &self.id)
            .field("slots", &self.slots)
            .field(
                "tasks",
                &self.tasks.iter().map(|t| t.task.name()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl WorkerBuilder {
    /// The worker's id, shown on the runs it leases (default `worker-{pid}-{n}`).
    #[must_use]
    pub fn id(mut self, id: impl Into<String>) -> WorkerBuilder {
        self.id = Some(id.into());
        self
    }

    /// How many runs it executes at once (default [`DEFAULT_SLOTS`], at least 1).
    #[must_use]
    pub fn slots(mut self, slots: usize) -> WorkerBuilder {
        self.slots = slots.clamp(1, tollgate_api::MAX_LEASE_BATCH);
        self
    }

    /// How long one lease call waits on the server while no run is ready (default
    /// [`DEFAULT_POLL_WAIT`]; the server caps it).
    #[must_use]
    pub fn poll_wait(mut self, wait: Duration) -> WorkerBuilder {
        self.poll_wait = wait;
        self
    }

    /// How long in-flight handlers get to finish at shutdown (default [`DEFAULT_GRACE`]);
    /// runs still running then are released, without counting an attempt.
    #[must_use]
    pub fn grace(mut self, grace: Duration) -> WorkerBuilder {
        self.grace = grace;
        self
    }

    /// Serves `task` (defined on the server when the worker starts) with `handler`. A second
    /// registration of the same name replaces the first.
    #[must_use]
    pub fn register<F, Fut>(mut self, task: TaskBuilder, handler: F) -> WorkerBuilder
    where
        F: Fn(RunContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |ctx| Box::pin(handler(ctx)) as BoxFuture);
        self.tasks.retain(|t| t.task.name() != task.name());
        self.tasks.push(Registered { task, handler });
        self
    }

    /// The worker.
    pub fn build(self) -> Worker {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = self.id.unwrap_or_else(|| {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            format!("worker-{}-{n}", std::process::id())
        });
        Worker {
            client: self.client,
            id,
            slots: self.slots,
            poll_wait: self.poll_wait,
            grace: self.grace,
            tasks: self.tasks,
        }
    }
}

/// A worker runtime: serves registered tasks from a Tollgate server.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use serde_json::json;
/// use tollgate_client::{Client, HandlerError, RunContext, Task, Worker};
///
/// async fn send_email(run: RunContext) -> Result<Option<serde_json::Value>, HandlerError> {
///     let to = run.input["to"].as_str().ok_or_else(|| HandlerError::fatal("no `to`"))?;
///     println!("attempt {} of run {}: mailing {to}", run.attempt, run.id);
///     Ok(Some(json!({"sent": true})))
/// }
///
/// let client = Client::new("http://127.0.0.1:7070")?;
/// let worker = Worker::builder(client)
///     .id("mailer-1")
///     .slots(8)
///     .register(
///         Task::builder("send-email").dynamic_limit("input.to", 1, 5, "1h"),
///         send_email,
///     )
///     .build();
/// // Until Ctrl-C; then in-flight runs get 30 s to finish, the rest are released.
/// let summary = worker.run_until_ctrl_c().await?;
/// println!("{summary:?}");
/// # Ok(())
/// # }
/// ```
pub struct Worker {
    client: Client,
    id: String,
    slots: usize,
    poll_wait: Duration,
    grace: Duration,
    tasks: Vec<Registered>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.id)
            .field("slots", &self.slots)
            .field(
                "tasks",
                &self.tasks.iter().map(|t| t.task.name()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

enum Outcome {
    Succeeded,
    Failed,
    Released,
    Lost,
}

impl WorkerSummary {
    fn record(&mut self, done: Result<Outcome, JoinError>) {
        match done {
            Ok(Outcome::Succeeded) => self.succeeded += 1,
            Ok(Outcome::Failed) => self.failed += 1,
            Ok(Outcome::Released) => self.released += 1,
            Ok(Outcome::Lost) => self.lost += 1,
            Err(e) => {
                tracing::error!(error = %e, "a run's task ended abnormally");
                self.lost += 1;
            }
        }
    }
}

/// Capped exponential backoff for transient errors: 100 ms, doubling, at most 5 s.
struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(5);

    fn new() -> Backoff {
        Backoff(Backoff::FIRST)
    }

    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Backoff::CAP);
        d
    }
}

impl Worker {
    /// A builder for a worker that talks to the server through `client`.
    pub fn builder(client: Client) -> WorkerBuilder {
        WorkerBuilder {
            client,
            id: None,
            slots: DEFAULT_SLOTS,
            poll_wait: DEFAULT_POLL_WAIT,
            grace: DEFAULT_GRACE,
            tasks: Vec::new(),
        }
    }

    /// The worker's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// [`Worker::run`] until Ctrl-C (SIGINT).
    ///
    /// # Errors
    /// As [`Worker::run`].
    pub async fn run_until_ctrl_c(self) -> Result<WorkerSummary, WorkerError> {
        self.run(async {
            if let Err(e) = tokio::signal::ctrl_c().await {
                // Without a signal handler the worker runs until the process ends, rather than
                // stopping at once.
                tracing::error!(error = %e, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
        })
        .await
    }

    /// Defines the tasks on the server (`PUT /v1/tasks/{name}`), then leases and runs them
    /// until `shutdown` completes. Then it stops leasing, gives in-flight handlers the grace
    /// period to finish (heartbeating meanwhile), releases the runs still running (no attempt
    /// counted), and answers what it did.
    ///
    /// Transient errors (the server briefly unreachable, 503) are retried with capped
    /// backoff. A lease call in flight at shutdown is awaited (a long poll answers within the
    /// poll wait), for at most the grace period, and the runs it brings are released at once.
    ///
    /// # Errors
    /// [`WorkerError::NoTasks`]; [`WorkerError::Register`] when the server refuses a task
    /// definition.
    pub async fn run<F>(self, shutdown: F) -> Result<WorkerSummary, WorkerError>
    where
        F: Future<Output = ()>,
    {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut summary = WorkerSummary::default();
        if self.tasks.is_empty() {
            return Err(WorkerError::NoTasks);
        }
        if !self.register_all(shutdown.as_mut()).await? {
            return Ok(summary);
        }
        let names: Vec<String> = self
            .tasks
            .iter()
            .map(|t| t.task.name().to_owned())
            .collect();
        let by_name: HashMap<&str, &Registered> =
            self.tasks.iter().map(|t| (t.task.name(), t)).collect();
        let (release_tx, release_rx) = watch::channel(false);
        let mut running: JoinSet<Outcome> = JoinSet::new();
        let mut backoff = Backoff::new();
        tracing::info!(worker = %self.id, slots = self.slots, tasks = ?names, "worker started");

        let in_flight = 'lease: loop {
            while let Some(done) = running.try_join_next() {
                summary.record(done);
            }
            let free = self.slots.saturating_sub(running.len());
            if free == 0 {
                tokio::select! {
                    () = &mut shutdown => break 'lease None,
                    Some(done) = running.join_next() => summary.record(done),
                }
                continue;
            }
            let max = u32::try_from(free).unwrap_or(u32::MAX);
            let mut lease =
                Box::pin(
                    self.client
                        .worker_lease(&self.id, &names, max, Some(self.poll_wait)),
                );
            let leased = tokio::select! {
                () = &mut shutdown => break 'lease Some(lease),
                leased = &mut lease => leased,
            };
            match leased {
                Ok(runs) => {
                    backoff = Backoff::new();
                    for run in runs {
                        summary.leased += 1;
                        let Some(registered) = by_name.get(run.task.as_str()) else {
                            // The server only leases the tasks asked for; hand back anything else.
                            tracing::warn!(run = %run.id, task = %run.task, "leased a run of a task this worker does not serve; releasing it");
                            let client = self.client.clone();
                            running.spawn(async move {
                                release_run(&client, &run.id, run.attempt).await
                            });
                            continue;
                        };
                        running.spawn(execute(
                            self.client.clone(),
                            self.id.clone(),
                            run,
                            Arc::clone(&registered.handler),
                            registered.task.lease_timeout_duration(),
                            release_rx.clone(),
                        ));
                    }
                }
                Err(e) => {
                    if e.code() == Some(&ErrorCode::UnknownTask) {
                        // The server forgot the definitions (an in-memory server restarted, say).
                        tracing::warn!(worker = %self.id, error = %e, "tasks unknown to the server; defining them again");
                        match self.register_all(shutdown.as_mut()).await {
                            Ok(true) => continue,
                            Ok(false) => break 'lease None,
                            Err(e) => {
                                tracing::error!(worker = %self.id, error = %e, "defining tasks again failed")
                            }
                        }
                    }
                    let wait = backoff.next();
                    tracing::warn!(worker = %self.id, error = %e, retry_in = ?wait, "leasing failed");
                    tokio::select! {
                        () = &mut shutdown => break 'lease None,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        };

        tracing::info!(worker = %self.id, in_flight = running.len(), grace = ?self.grace, "worker shutting down");
        let grace_deadline = Instant::now() + self.grace;
        if let Some(lease) = in_flight {
            // The server may have leased runs to the call in flight just as shutdown began: its
            // answer comes within the poll wait. Wait for it (within the grace) and hand those
            // runs back at once rather than leaving them to lapse.
            if let Ok(Ok(runs)) = tokio::time::timeout_at(grace_deadline, lease).await {
                for run in runs {
                    summary.leased += 1;
                    tracing::info!(run = %run.id, "leased as shutdown began; releasing it");
                    let client = self.client.clone();
                    running.spawn(async move { release_run(&client, &run.id, run.attempt).await });
                }
            }
        }
        let grace_over = tokio::time::sleep_until(grace_deadline);
        tokio::pin!(grace_over);
        let mut released = false;
        loop {
            tokio::select! {
                done = running.join_next() => match done {
                    Some(done) => summary.record(done),
                    None => break,
                },
                () = &mut grace_over, if !released => {
                    released = true;
                    tracing::info!(worker = %self.id, left = running.len(), "grace period over; releasing the runs still running");
                    let _ = release_tx.send(true);
                }
            }
        }
        tracing::info!(worker = %self.id, ?summary, "worker stopped");
        Ok(summary)
    }

    /// Defines every task; `Ok(false)` when `shutdown` came first.
    async fn register_all<F: Future<Output = ()>>(
        &self,
        mut shutdown: Pin<&mut F>,
    ) -> Result<bool, WorkerError> {
        for registered in &self.tasks {
            let mut backoff = Backoff::new();
            loop {
                let put = registered.task.put(&self.client);
                let answer = tokio::select! {
                    () = shutdown.as_mut() => return Ok(false),
                    answer = put => answer,
                };
                match answer {
                    Ok(_) => break,
                    Err(e) if e.is_transient() => {
                        let wait = backoff.next();
                        tracing::warn!(task = %registered.task.name(), error = %e, retry_in = ?wait, "defining the task failed");
                        tokio::select! {
                            () = shutdown.as_mut() => return Ok(false),
                            () = tokio::time::sleep(wait) => {}
                        }
                    }
                    Err(source) => {
                        return Err(WorkerError::Register {
                            task: registered.task.name().to_owned(),
                            source,
                        });
                    }
                }
            }
        }
        Ok(true)
    }
}

/// Runs one leased run: the handler in a task of its own (so a panic is a failed attempt, not
/// a dead worker), heartbeats while it runs, then the outcome.
async fn execute(
    client: Client,
    worker_id: String,
    run: LeasedRun,
    handler: Handler,
    lease_timeout: Duration,
    mut release: watch::Receiver<bool>,
) -> Outcome {
    let lease_ms = u64::try_from(lease_timeout.as_millis()).unwrap_or(u64::MAX);
    let id = run.id.clone();
    let attempt = run.attempt;
    let ctx = RunContext {
        id: run.id,
        task: run.task,
        attempt,
        input: run.input,
        additional_metadata: run.additional_metadata,
        lease_expires_at_ms: run.lease_expires_at_ms,
        leased_at_ms: run.lease_expires_at_ms.saturating_sub(lease_ms),
        worker_id,
        client: client.clone(),
    };
    // Dropping this task (a worker dropped or aborted) aborts its handler too.
    let mut handle = AbortOnDrop(tokio::spawn(handler(ctx)));
    let every = (lease_timeout / 3).max(Duration::from_millis(10));
    let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let joined = loop {
        tokio::select! {
            joined = &mut handle.0 => break joined,
            _ = ticks.tick() => match client.heartbeat(&id, Some(attempt)).await {
                Ok(_) => {}
                Err(e) if e.is_transient() => {
                    tracing::warn!(run = %id, attempt, error = %e, "heartbeat failed; trying again at the next one");
                }
                Err(e) => {
                    handle.0.abort();
                    tracing::warn!(run = %id, attempt, error = %e, "lease lost (expired, cancelled or taken by another attempt); dropping the run");
                    return Outcome::Lost;
                }
            },
            _ = release.changed() => {
                handle.0.abort();
                return release_run(&client, &id, attempt).await;
            }
        }
    };

    // Reporting is retried past a brief outage; past the lease timeout (or 30 s) the lease
    // has lapsed anyway and another attempt will run.
    let deadline = Instant::now() + lease_timeout.max(Duration::from_secs(30));
    let (answer, outcome) = match joined {
        Ok(Ok(output)) => {
            let answer = report(deadline, &id, || {
                client.complete(&id, Some(attempt), output.as_ref())
            })
            .await;
            (answer, Outcome::Succeeded)
        }
        Ok(Err(failure)) => {
            tracing::info!(run = %id, attempt, error = %failure, retry = failure.retries(), "handler failed");
            let answer = report(deadline, &id, || {
                client.fail(&id, Some(attempt), failure.message(), failure.retries())
            })
            .await;
            (answer, Outcome::Failed)
        }
        Err(e) => {
            let message = if e.is_panic() {
                "the handler panicked".to_owned()
            } else {
                format!("the handler did not finish: {e}")
            };
            tracing::error!(run = %id, attempt, "{message}");
            let answer = report(deadline, &id, || {
                client.fail(&id, Some(attempt), &message, true)
            })
            .await;
            (answer, Outcome::Failed)
        }
    };
    match answer {
        Ok(()) => outcome,
        Err(e) => {
            tracing::warn!(run = %id, attempt, error = %e, "the outcome was not recorded; dropping the run");
            Outcome::Lost
        }
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn release_run(client: &Client, id: &str, attempt: u32) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(5);
    match report(deadline, id, || client.release(id, Some(attempt))).await {
        Ok(()) => {
            tracing::info!(run = %id, attempt, "released");
            Outcome::Released
        }
        Err(e) => {
            tracing::warn!(run = %id, attempt, error = %e, "releasing failed; the run comes back when its lease lapses");
            Outcome::Lost
        }
    }
}

/// Calls `call` until it succeeds, fails for good, or `deadline` passes.
async fn report<T, Fut>(
    deadline: Instant,
    id: &str,
    mut call: impl FnMut() -> Fut,
) -> Result<(), Error>
where
    Fut: Future<Output = Result<T, Error>>,
{
    let mut backoff = Backoff::new();
    loop {
        match call().await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                let wait = backoff.next();
                tracing::warn!(run = %id, error = %e, retry_in = ?wait, "reporting failed");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}
