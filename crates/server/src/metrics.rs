//! `GET /metrics`: Prometheus metrics in the OpenMetrics text format, with
//! [`prometheus_client`].
//!
//! | metric | labels | what |
//! | --- | --- | --- |
//! | `tollgate_decisions_total` | `limit`, `outcome` | decisions per limit: `allowed` (units taken) or `denied` (this limit refused) |
//! | `tollgate_decision_duration_seconds` | | time of one direct decision in the store (`/v1/acquire` without a wait) |
//! | `tollgate_run_transitions_total` | `task`, `transition` | runs `enqueued`, `parked`, `leased`, `succeeded`, `failed`, `skipped`, `expired`, `cancelled` |
//! | `tollgate_queue_depth` | `task`, `state` | runs `scheduled`, `queued`, `waiting` and `running` now |
//! | `tollgate_dispatch_lag_seconds` | | from a parked run's `eligible_at` to its lease |
//! | `tollgate_limit_in_force` | `key` | an adaptive limit's limit in force (docs/design.md §3.16) |
//!
//! Labels stay bounded (STYLE: never a raw key): `limit` is a declared (static) key, `dynamic`
//! for every inline key of `/v1/acquire`, or `task:NAME/rate_limits[I]` for a task run's limit,
//! whatever key it rendered to; `task` is a task name; `key` is a declared (adaptive) key.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tollgate::{RunQueue, RunState, Task, Transition};

use crate::error::ApiError;
use crate::state::AppState;

/// The `limit` label of every inline (dynamic) key of `/v1/acquire`.
pub(crate) const DYNAMIC: &str = "dynamic";

/// The server's own metrics and the registry that also reads the engine's at scrape time.
pub(crate) struct Metrics {
    registry: Registry,
    shared: Arc<Shared>,
    decision_seconds: Histogram,
    /// Held from handing the collector a depth snapshot to the end of encoding, so that two
    /// scrapes at once each encode their own.
    encoding: Mutex<()>,
}

/// What the handlers count and the collector reads.
#[derive(Default)]
struct Shared {
    /// Direct decisions by `limit` label. Looked up by `&str`, so counting allocates only the
    /// first time a key is seen; keys are declared ones (or [`DYNAMIC`]), so the map is bounded.
    decisions: RwLock<HashMap<String, Outcomes>>,
    /// The tasks and depths read for the scrape being encoded (`None`: left out).
    depth: Mutex<Option<Depth>>,
}

/// Every task and the runs per task and state, read (asynchronously: Redis does IO for them)
/// before a scrape is encoded, because a prometheus `Collector` encodes synchronously.
pub(crate) struct Depth {
    tasks: Vec<Arc<Task>>,
    runs: Vec<(String, RunState, u64)>,
    /// Every adaptive limit's limit in force, by key.
    in_force: Vec<(String, u64)>,
}

impl Depth {
    /// Reads the depth for one scrape. In Redis mode these read Redis: when it is unreachable
    /// the scrape still answers, without the depth gauges, rather than failing whole.
    pub(crate) async fn read(queue: &dyn RunQueue) -> Option<Depth> {
        match (queue.tasks().await, queue.depth().await) {
            (Ok(tasks), Ok(runs)) => Some(Depth {
                tasks,
                runs,
                in_force: in_force(queue).await.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "adaptive limits left out of this scrape");
                    Vec::new()
                }),
            }),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "queue depth left out of this scrape");
                None
            }
        }
    }
}

/// Every adaptive limit's limit in force, by key.
async fn in_force(queue: &dyn RunQueue) -> Result<Vec<(String, u64)>, tollgate::Error> {
    let mut out = Vec::new();
    for key in queue.adaptive_limits().await?.into_keys() {
        // A limit removed since the bounds were read is simply not shown.
        if let Some(n) = queue
            .limits()
            .get(&key)
            .await?
            .and_then(|info| info.limit.adaptable())
        {
            out.push((key, n));
        }
    }
    Ok(out)
}

#[derive(Default)]
struct Outcomes {
    allowed: Counter,
    denied: Counter,
}

impl Metrics {
    pub(crate) fn new(engine: Arc<dyn RunQueue>) -> Metrics {
        let shared = Arc::new(Shared::default());
        let mut registry = Registry::default();
        // 1 µs to about 0.4 s: in-memory decisions take microseconds, store round trips longer.
        let decision_seconds = Histogram::new(exponential_buckets(1e-6, 2.5, 15));
        registry.register(
            "tollgate_decision_duration_seconds",
            "Time of one direct decision in the store (/v1/acquire without a wait)",
            decision_seconds.clone(),
        );
        registry.register_collector(Box::new(EngineCollector {
            engine,
            shared: Arc::clone(&shared),
        }));
        Metrics {
            registry,
            shared,
            decision_seconds,
            encoding: Mutex::new(()),
        }
    }

    /// Counts one decision of `limit` (a declared key, or [`DYNAMIC`]).
    pub(crate) fn decision(&self, limit: &str, allowed: bool) {
        let count = |o: &Outcomes| {
            if allowed {
                o.allowed.inc();
            } else {
                o.denied.inc();
            }
        };
        // A poisoned lock only means a panic elsewhere while inserting: the counters in it are
        // still whole, so keep counting.
        let map = self
            .shared
            .decisions
            .read()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(o) = map.get(limit) {
            count(o);
            return;
        }
        drop(map);
        let mut map = self
            .shared
            .decisions
            .write()
            .unwrap_or_else(|e| e.into_inner());
        count(map.entry(limit.to_owned()).or_default());
    }

    pub(crate) fn decision_time(&self, took: Duration) {
        self.decision_seconds.observe(took.as_secs_f64());
    }

    /// Encodes every metric, with `depth` (read by [`Depth::read`]) as the queue's depth.
    fn encode(&self, depth: Option<Depth>) -> Result<String, fmt::Error> {
        // A poisoned lock only means a panic in another scrape: nothing it guards is broken.
        let _one_at_a_time = self.encoding.lock().unwrap_or_else(|e| e.into_inner());
        *self.shared.depth.lock().unwrap_or_else(|e| e.into_inner()) = depth;
        let mut out = String::new();
        let encoded = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        *self.shared.depth.lock().unwrap_or_else(|e| e.into_inner()) = None;
        encoded?;
        Ok(out)
    }
}

/// Reads the engine's counters and depths, and the direct decisions, at scrape time.
struct EngineCollector {
    engine: Arc<dyn RunQueue>,
    shared: Arc<Shared>,
}

impl fmt::Debug for EngineCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EngineCollector")
    }
}

/// Runs in these states make a task's queue.
const QUEUE_STATES: [RunState; 4] = [
    RunState::Scheduled,
    RunState::Queued,
    RunState::Waiting,
    RunState::Running,
];

impl Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let queue = self.engine.metrics();
        let mut tasks: Vec<(&String, &tollgate::metrics::TaskMetrics)> =
            queue.tasks.iter().collect();
        tasks.sort_by_key(|(name, _)| *name);

        // Decisions: direct ones by declared key (or "dynamic"), task runs' by spec.
        let mut m = encoder.encode_descriptor(
            "tollgate_decisions",
            "Decisions per limit: allowed (units taken) or denied (this limit refused); \
             dynamic keys are counted under \"dynamic\" or their task's spec, never by key",
            None,
            MetricType::Counter,
        )?;
        {
            let map = self
                .shared
                .decisions
                .read()
                .unwrap_or_else(|e| e.into_inner());
            let mut direct: Vec<(&String, &Outcomes)> = map.iter().collect();
            direct.sort_by_key(|(k, _)| *k);
            for (limit, o) in direct {
                for (outcome, c) in [("allowed", &o.allowed), ("denied", &o.denied)] {
                    let labels = [("limit", limit.as_str()), ("outcome", outcome)];
                    ConstCounter::new(c.get()).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        for (task, t) in &tasks {
            for (i, d) in t.decisions.iter().enumerate() {
                let limit = format!("task:{task}/rate_limits[{i}]");
                for (outcome, n) in [("allowed", d.allowed), ("denied", d.denied)] {
                    let labels = [("limit", limit.as_str()), ("outcome", outcome)];
                    ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
                }
            }
        }

        let mut m = encoder.encode_descriptor(
            "tollgate_run_transitions",
            "Run state transitions per task",
            None,
            MetricType::Counter,
        )?;
        for (task, t) in &tasks {
            for tr in Transition::ALL {
                let labels = [("task", task.as_str()), ("transition", tr.as_str())];
                ConstCounter::new(t.transition(tr)).encode(m.encode_family(&labels)?)?;
            }
        }

        // Every defined task shows its depth, zeros included, so a dashboard sees it drain.
        // Read before encoding ([`Depth::read`]); left out when the store was unreachable.
        let (tasks_now, depth_now, in_force) = match self
            .shared
            .depth
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            Some(d) => (d.tasks, d.runs, d.in_force),
            None => (Vec::new(), Vec::new(), Vec::new()),
        };
        let mut depth: HashMap<(String, RunState), u64> = tasks_now
            .iter()
            .flat_map(|t| QUEUE_STATES.map(|s| ((t.name.clone(), s), 0)))
            .collect();
        for (task, state, n) in depth_now {
            if QUEUE_STATES.contains(&state) {
                depth.insert((task, state), n);
            }
        }
        let mut depth: Vec<_> = depth.into_iter().collect();
        depth.sort_by(|a, b| (&a.0.0, a.0.1.as_str()).cmp(&(&b.0.0, b.0.1.as_str())));
        let mut m = encoder.encode_descriptor(
            "tollgate_queue_depth",
            "Runs per task in the queued, waiting (parked) and running states",
            None,
            MetricType::Gauge,
        )?;
        for ((task, state), n) in &depth {
            let labels = [("task", task.as_str()), ("state", state.as_str())];
            let n = i64::try_from(*n).unwrap_or(i64::MAX);
            ConstGauge::new(n).encode(m.encode_family(&labels)?)?;
        }

        let mut m = encoder.encode_descriptor(
            "tollgate_limit_in_force",
            "An adaptive limit's limit in force (AIMD between its min and max), by declared key",
            None,
            MetricType::Gauge,
        )?;
        for (key, n) in &in_force {
            let n = i64::try_from(*n).unwrap_or(i64::MAX);
            ConstGauge::new(n).encode(m.encode_family(&[("key", key.as_str())])?)?;
        }

        let lag = &queue.dispatch_lag;
        // The encoder sums the buckets itself: per-bucket counts, the overflow last.
        let buckets: Vec<(f64, u64)> = tollgate::metrics::LAG_BUCKETS
            .iter()
            .zip(lag.buckets)
            .map(|(b, n)| (b.as_duration().as_secs_f64(), n))
            .chain(std::iter::once((f64::INFINITY, lag.overflow)))
            .collect();
        let mut m = encoder.encode_descriptor(
            "tollgate_dispatch_lag_seconds",
            "From a parked run's eligible_at (or its concurrency slot freeing) to its lease",
            None,
            MetricType::Histogram,
        )?;
        m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            lag.sum.as_duration().as_secs_f64(),
            lag.count,
            &buckets,
            None,
        )?;
        Ok(())
    }
}

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(scrape))
}

/// `GET /metrics`.
async fn scrape(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let depth = Depth::read(state.queue()).await;
    let body = state
        .metrics()
        .encode(depth)
        .map_err(|e| ApiError::internal("encoding the metrics", &e))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    ))
}
