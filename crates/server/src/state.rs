//! [`AppState`]: what every handler shares.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::path::Path;
use tokio::sync::watch;
use tollgate::core::Nanos;

use anyhow::Context;
use tollgate::{
    AsyncLimiter, Clock, Db, DynStore, Engine, Limiter, MemoryStore, RunQueue, SystemClock,
};
use tollgate_redis::{RedisEngine, RedisStore};

/// The default `--max-body`: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// The longest an acquire (`wait_ms`) or barrier wait (`timeout_ms`) may hold a request:
/// longer asks are cut to this. A client that wants to wait longer asks again; a proxy or load
/// balancer between it and us would likely time out a longer request anyway.
pub const MAX_WAIT: Duration = tollgate_api::MAX_WAIT;

/// What to answer when the store is unreachable (`--on-store-error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum StoreErrorPolicy {
    /// Answer 503 `store_unavailable` with `"transient": true` (the default): never admit
    /// what was not counted.
    #[default]
    Closed,
    /// Answer acquires as if allowed, so that an outage of the store does not stop the jobs.
    Open,
}

/// The server's tunables.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The largest request body, in bytes (`--max-body`).
    pub max_body: usize,
    /// What to do when the store fails transiently (`--on-store-error`).
    pub on_store_error: StoreErrorPolicy,
    /// The cap on `wait_ms` and barrier `timeout_ms`.
    pub max_wait: Duration,
    /// Access control (`--tokens-file`); `None`: every request is let through.
    pub access: Option<Arc<crate::auth::Access>>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            max_body: DEFAULT_MAX_BODY,
            on_store_error: StoreErrorPolicy::Closed,
            max_wait: MAX_WAIT,
            access: None,
        }
    }
}

/// Shared by every handler; cheap to clone.
///
/// Holds the run queue (limiter, tasks, runs, durability) as a [`RunQueue`] trait object and the
/// clock it reads: tests inject a [`tollgate::FakeClock`] or a [`tollgate::TokioClock`] under
/// paused tokio time. Only the constructors name an engine.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

struct Shared {
    queue: Arc<dyn RunQueue>,
    metrics: crate::metrics::Metrics,
    clock: Arc<dyn Clock>,
    settings: Settings,
    /// `true` once the server is shutting down: long waits answer at once.
    shutdown: watch::Sender<bool>,
    /// Lease ids are `<key part>.<node>-<seq>`: `node` is random per process, so ids issued
    /// by several nodes sharing one store do not collide.
    lease_node: u64,
    lease_seq: AtomicU64,
}

impl AppState {
    /// A state keeping everything in memory, reading `clock`. Must be called inside a tokio
    /// runtime (the engine starts its timer task).
    pub fn new(clock: impl Clock + 'static, settings: Settings) -> AppState {
        let clock: Arc<dyn Clock> = Arc::new(clock);
        let limiter = Limiter::with_store(memory_store(), Arc::clone(&clock));
        AppState::with_engine(Engine::in_memory(limiter), clock, settings)
    }

    /// A state keeping limits, tasks, runs and leases in Redis through `store` (its prefix
    /// names the deployment): every node on the same Redis and prefix acts as one. Opens
    /// nothing on disk. Must be called inside a tokio runtime (the engine starts its sweeper).
    pub fn redis(store: RedisStore, settings: Settings) -> AppState {
        AppState::redis_with_clock(store, SystemClock::new(), settings)
    }

    /// As [`AppState::redis`], reading `clock` (which decides only when `store` was built with
    /// `use_server_time(false)`: tests driving time themselves).
    pub fn redis_with_clock(
        store: RedisStore,
        clock: impl Clock + 'static,
        settings: Settings,
    ) -> AppState {
        let clock: Arc<dyn Clock> = Arc::new(clock);
        let engine = RedisEngine::new(store, Arc::clone(&clock));
        AppState::with_queue(Arc::new(engine), clock, settings)
    }

    /// A state persisting limits, tasks and runs in SQLite under `data_dir` (created if
    /// missing), restored from what it holds. The clock never goes below the last time the
    /// previous process committed. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// The directory or database cannot be opened, or holds definitions that no longer compile.
    pub fn open(data_dir: &Path, settings: Settings) -> anyhow::Result<AppState> {
        let (db, loaded) = Db::open(data_dir)
            .with_context(|| format!("opening the data directory {}", data_dir.display()))?;
        if !loaded.clean_shutdown {
            tracing::warn!(data_dir = %data_dir.display(), "the previous process did not shut down cleanly; runs are restored from the last commit");
        }
        let runs = loaded.runs.len();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::with_floor(
            loaded.last_time.unwrap_or_default(),
        ));
        let limiter = Limiter::with_store(memory_store(), Arc::clone(&clock));
        let engine = Engine::with_db(limiter, db, loaded)
            .context("restoring the stored limits, tasks and runs")?;
        tracing::info!(data_dir = %data_dir.display(), runs, "restored the durable state");
        Ok(AppState::with_engine(engine, clock, settings))
    }

    /// A state over an existing embedded engine, which must read the same `clock`.
    pub fn with_engine(
        engine: Engine<DynStore>,
        clock: Arc<dyn Clock>,
        settings: Settings,
    ) -> AppState {
        AppState::with_queue(Arc::new(engine), clock, settings)
    }

    /// A state over an existing run queue (either engine), which must read the same `clock`.
    pub fn with_queue(
        queue: Arc<dyn RunQueue>,
        clock: Arc<dyn Clock>,
        settings: Settings,
    ) -> AppState {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(clock.now().as_nanos());
        h.write_u32(std::process::id());
        AppState {
            inner: Arc::new(Shared {
                metrics: crate::metrics::Metrics::new(Arc::clone(&queue)),
                queue,
                clock,
                settings,
                shutdown: watch::Sender::new(false),
                lease_node: h.finish(),
                lease_seq: AtomicU64::new(0),
            }),
        }
    }

    /// The run queue behind the API, whichever engine keeps it.
    pub fn queue(&self) -> &dyn RunQueue {
        &*self.inner.queue
    }

    /// What `GET /metrics` reports.
    pub(crate) fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    /// The limiter behind the API's direct acquires, leases and barriers (awaited: in Redis
    /// mode its calls are network IO).
    pub fn limits(&self) -> &AsyncLimiter {
        self.inner.queue.limits()
    }

    /// The current time on the server's clock.
    pub fn now(&self) -> Nanos {
        self.inner.clock.now()
    }

    /// The settings this state was made with.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Makes every wait in flight, and every later one, answer at once.
    pub fn begin_shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// Completes once [`AppState::begin_shutdown`] has been called.
    pub(crate) async fn shutting_down(&self) {
        let mut rx = self.inner.shutdown.subscribe();
        // The sender lives in `self`, so `wait_for` cannot fail by the sender being dropped.
        let _ = rx.wait_for(|down| *down).await;
    }

    /// A lease id suffix unique across this process and, with high probability, across nodes.
    pub(crate) fn next_lease_suffix(&self) -> String {
        let seq = self.inner.lease_seq.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}-{seq:x}", self.inner.lease_node)
    }
}

/// The in-memory store, behind the same type as Redis's.
fn memory_store() -> DynStore {
    Arc::new(MemoryStore::new())
}
