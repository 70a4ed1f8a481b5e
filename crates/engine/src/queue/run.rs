//! [`Run`]: one execution request of a task, and its lifecycle states.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tollgate_core::Nanos;

use crate::task::{DEFAULT_LEASE_TIMEOUT, OnLimit, Rendered};
use tollgate_core::Period;

pub use tollgate_api::{LeasedRun, RunState, RunView};

/// One run, as the queue keeps and persists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// Opaque id.
    pub id: String,
    /// Enqueue order (FIFO ties are broken by it).
    pub seq: u64,
    /// The task's name.
    pub task: String,
    /// Lifecycle state.
    pub state: RunState,
    /// The run's input.
    pub input: Value,
    /// Caller-supplied metadata.
    pub additional_metadata: Value,
    /// The event that triggered the run, if any (`{"name", "data"}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Value>,
    /// 1-based; goes up by one at each lease. 0 before the first lease.
    pub attempt: u32,
    /// Attempts allowed (lease expiries count).
    pub max_attempts: u32,
    /// Limits and concurrency keys rendered at enqueue.
    pub rendered: Rendered,
    /// What the run keeps of its task's definition at enqueue (docs/design.md §3). `None` only
    /// in runs written by a build before 0.2, until the engine fills it in at load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<RunPolicy>,
    /// The key a waiting (or skipped) run is held by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_on: Option<String>,
    /// When a waiting run may start (for rate limits; unknown for concurrency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eligible_at: Option<Nanos>,
    /// Why a run was skipped (`rate_limited`, `duplicate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_reason: Option<String>,
    /// The last failure's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What a successful run returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// When it was enqueued.
    pub created_at: Nanos,
    /// When its state last changed.
    pub updated_at: Nanos,
    /// When its rate units were last consumed (rebuilding limiter state after a restart
    /// replays these).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumed_at: Option<Nanos>,
    /// Its rate units are consumed for the coming (or current) attempt.
    #[serde(default)]
    pub reserved: bool,
    /// Concurrency keys whose slot this run holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<String>,
    /// When the current lease lapses unless renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<Nanos>,
    /// Who holds the lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
}

impl Run {
    /// The task definition this run was enqueued with.
    pub fn policy(&self) -> RunPolicy {
        self.policy.unwrap_or_default()
    }
}

/// The parts of its task's definition a run keeps from its enqueue, with `max_attempts` and
/// its rendered limits (docs/design.md §3): redefining a task changes only runs enqueued after
/// it, as Hatchet's and Inngest's versioned definitions do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunPolicy {
    /// What happens when a limit does not admit the run.
    pub on_limit: OnLimit,
    /// How long a lease lasts without a heartbeat.
    pub lease_timeout: Period,
}

impl Default for RunPolicy {
    fn default() -> RunPolicy {
        RunPolicy {
            on_limit: OnLimit::Requeue,
            lease_timeout: DEFAULT_LEASE_TIMEOUT,
        }
    }
}

impl From<&Run> for RunView {
    fn from(r: &Run) -> RunView {
        RunView {
            id: r.id.clone(),
            task: r.task.clone(),
            state: r.state,
            input: r.input.clone(),
            additional_metadata: r.additional_metadata.clone(),
            attempt: r.attempt,
            max_attempts: r.max_attempts,
            waiting_on: r.waiting_on.clone(),
            // Instants round up too: a worker that waits until eligible_at_ms is never early.
            eligible_at_ms: r.eligible_at.map(Nanos::as_millis_ceil),
            skip_reason: r.skip_reason.clone(),
            error: r.error.clone(),
            output: r.output.clone(),
            created_at_ms: r.created_at.as_millis_floor(),
            updated_at_ms: r.updated_at.as_millis_floor(),
            lease_expires_at_ms: r.lease_expires_at.map(Nanos::as_millis_floor),
            worker_id: r.worker_id.clone(),
        }
    }
}

impl From<&Run> for LeasedRun {
    fn from(r: &Run) -> LeasedRun {
        LeasedRun {
            id: r.id.clone(),
            task: r.task.clone(),
            input: r.input.clone(),
            additional_metadata: r.additional_metadata.clone(),
            attempt: r.attempt,
            lease_expires_at_ms: r.lease_expires_at.map_or(0, Nanos::as_millis_floor),
        }
    }
}
