//! [`Backend`]: the engine behind the API — embedded (memory or SQLite, one node) or Redis
//! (any number of nodes sharing one Redis). Handlers call it and never care which.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tollgate::core::{Limit, Period};
use tollgate::{
    AcquireEntry, DynStore, Engine, Error, LeasedRun, LimitSpec, Limiter, QueueMetrics, RunState,
    RunView, Task, TaskSpec,
};
use tollgate_redis::RedisEngine;

/// Where limits, tasks and runs live. Cheap to clone.
#[derive(Clone)]
pub enum Backend {
    /// In this process: memory, or SQLite under `--data-dir`.
    Embedded(Engine<DynStore>),
    /// In Redis (`--redis`): shared by every node on the same Redis and prefix.
    Redis(RedisEngine),
}

impl Backend {
    /// The limiter for direct acquires, leases and barriers.
    pub fn limiter(&self) -> &Limiter<DynStore> {
        match self {
            Backend::Embedded(e) => e.limiter(),
            Backend::Redis(e) => e.limiter(),
        }
    }

    /// `"embedded"` or `"redis"`, for logs and the dashboard.
    pub fn mode(&self) -> &'static str {
        match self {
            Backend::Embedded(_) => "embedded",
            Backend::Redis(_) => "redis",
        }
    }

    /// Declares or redefines static limit `key`.
    ///
    /// # Errors
    /// As [`Engine::put_limit`].
    pub async fn put_limit(&self, key: &str, spec: LimitSpec) -> Result<Limit, Error> {
        match self {
            Backend::Embedded(e) => e.put_limit(key, spec).await,
            Backend::Redis(e) => e.put_limit(key, spec).await,
        }
    }

    /// Removes static limit `key`.
    ///
    /// # Errors
    /// As [`Engine::remove_limit`].
    pub async fn remove_limit(&self, key: &str) -> Result<bool, Error> {
        match self {
            Backend::Embedded(e) => e.remove_limit(key).await,
            Backend::Redis(e) => e.remove_limit(key).await,
        }
    }

    /// Defines or redefines task `name`.
    ///
    /// # Errors
    /// As [`Engine::put_task`].
    pub async fn put_task(&self, name: &str, spec: TaskSpec) -> Result<Arc<Task>, Error> {
        match self {
            Backend::Embedded(e) => e.put_task(name, spec).await,
            Backend::Redis(e) => e.put_task(name, spec).await,
        }
    }

    /// Task `name`.
    ///
    /// # Errors
    /// Store failures (Redis).
    pub fn task(&self, name: &str) -> Result<Option<Arc<Task>>, Error> {
        match self {
            Backend::Embedded(e) => Ok(e.task(name)),
            Backend::Redis(e) => e.task(name),
        }
    }

    /// Every task, by name.
    ///
    /// # Errors
    /// Store failures (Redis).
    pub fn tasks(&self) -> Result<Vec<Arc<Task>>, Error> {
        match self {
            Backend::Embedded(e) => Ok(e.tasks()),
            Backend::Redis(e) => e.tasks(),
        }
    }

    /// Enqueues a run.
    ///
    /// # Errors
    /// As [`Engine::enqueue`].
    pub async fn enqueue(&self, task: &str, input: Value, meta: Value) -> Result<RunView, Error> {
        match self {
            Backend::Embedded(e) => e.enqueue(task, input, meta).await,
            Backend::Redis(e) => e.enqueue(task, input, meta).await,
        }
    }

    /// Enqueues the runs an event triggers.
    ///
    /// # Errors
    /// As [`Engine::emit`].
    pub async fn emit(&self, name: &str, data: Value, meta: Value) -> Result<Vec<RunView>, Error> {
        match self {
            Backend::Embedded(e) => e.emit(name, data, meta).await,
            Backend::Redis(e) => e.emit(name, data, meta).await,
        }
    }

    /// Long-polls for runs.
    ///
    /// # Errors
    /// As [`Engine::lease_until`].
    pub async fn lease_until(
        &self,
        worker_id: &str,
        tasks: &[String],
        max: usize,
        wait: Duration,
        stop: impl Future<Output = ()>,
    ) -> Result<Vec<LeasedRun>, Error> {
        match self {
            Backend::Embedded(e) => e.lease_until(worker_id, tasks, max, wait, stop).await,
            Backend::Redis(e) => e.lease_until(worker_id, tasks, max, wait, stop).await,
        }
    }

    /// Extends a lease.
    ///
    /// # Errors
    /// As [`Engine::heartbeat`].
    pub async fn heartbeat(&self, id: &str, attempt: Option<u32>) -> Result<RunView, Error> {
        match self {
            Backend::Embedded(e) => e.heartbeat(id, attempt).await,
            Backend::Redis(e) => e.heartbeat(id, attempt).await,
        }
    }

    /// Completes a run.
    ///
    /// # Errors
    /// As [`Engine::complete`].
    pub async fn complete(
        &self,
        id: &str,
        attempt: Option<u32>,
        output: Option<Value>,
    ) -> Result<RunView, Error> {
        match self {
            Backend::Embedded(e) => e.complete(id, attempt, output).await,
            Backend::Redis(e) => e.complete(id, attempt, output).await,
        }
    }

    /// Fails a run.
    ///
    /// # Errors
    /// As [`Engine::fail`].
    pub async fn fail(
        &self,
        id: &str,
        attempt: Option<u32>,
        error: String,
        retry: bool,
    ) -> Result<RunView, Error> {
        match self {
            Backend::Embedded(e) => e.fail(id, attempt, error, retry).await,
            Backend::Redis(e) => e.fail(id, attempt, error, retry).await,
        }
    }

    /// Hands a run back.
    ///
    /// # Errors
    /// As [`Engine::release`].
    pub async fn release(&self, id: &str, attempt: Option<u32>) -> Result<RunView, Error> {
        match self {
            Backend::Embedded(e) => e.release(id, attempt).await,
            Backend::Redis(e) => e.release(id, attempt).await,
        }
    }

    /// Cancels a run.
    ///
    /// # Errors
    /// As [`Engine::cancel`].
    pub async fn cancel(&self, id: &str) -> Result<RunView, Error> {
        match self {
            Backend::Embedded(e) => e.cancel(id).await,
            Backend::Redis(e) => e.cancel(id).await,
        }
    }

    /// Run `id`.
    ///
    /// # Errors
    /// As [`Engine::run`]; store failures (Redis).
    pub fn run(&self, id: &str) -> Result<RunView, Error> {
        match self {
            Backend::Embedded(e) => e.run(id),
            Backend::Redis(e) => e.run(id),
        }
    }

    /// Runs, newest first.
    ///
    /// # Errors
    /// Store failures (Redis).
    pub fn runs(
        &self,
        task: Option<&str>,
        state: Option<RunState>,
        limit: usize,
    ) -> Result<Vec<RunView>, Error> {
        match self {
            Backend::Embedded(e) => Ok(e.runs(task, state, limit)),
            Backend::Redis(e) => e.runs(task, state, limit),
        }
    }

    /// Runs per task and state.
    ///
    /// # Errors
    /// Store failures (Redis).
    pub fn depth(&self) -> Result<Vec<(String, RunState, u64)>, Error> {
        match self {
            Backend::Embedded(e) => Ok(e.depth()),
            Backend::Redis(e) => e.depth(),
        }
    }

    /// The queue's counters (this node's, in Redis mode).
    pub fn metrics(&self) -> QueueMetrics {
        match self {
            Backend::Embedded(e) => e.metrics(),
            Backend::Redis(e) => e.metrics(),
        }
    }

    /// Journals direct use for crash recovery (embedded with SQLite; Redis keeps it itself).
    ///
    /// # Errors
    /// As [`Engine::note_direct_use`].
    pub async fn note_direct_use(&self, entries: &[AcquireEntry<'_>]) -> Result<(), Error> {
        match self {
            Backend::Embedded(e) => e.note_direct_use(entries).await,
            Backend::Redis(_) => Ok(()),
        }
    }

    /// How long ended runs are kept.
    pub fn set_retention(&self, retention: Period) {
        match self {
            Backend::Embedded(e) => e.set_retention(retention),
            Backend::Redis(e) => e.set_retention(retention),
        }
    }

    /// Flushes and stops background work; call before exiting.
    pub async fn close(&self) {
        match self {
            Backend::Embedded(e) => e.close().await,
            Backend::Redis(e) => e.close().await,
        }
    }
}
