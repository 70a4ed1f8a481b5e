//! Runs, events and workers: `POST /v1/tasks/{name}/runs` (enqueue), `POST /v1/events`,
//! `POST /v1/workers/lease`, `POST /v1/runs/{id}/{heartbeat,complete,fail,release,cancel}`,
//! `GET /v1/runs/{id}`, `GET /v1/runs`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::limits::FeedbackOutcome;

/// Where a run is in its life: `queued → running → succeeded | failed`, with
/// `waiting` (parked on a limit) between `queued` and `running`; `skipped` and `cancelled` end it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Enqueued with a delay (`delay_ms`, `run_at_ms`): nothing is decided until
    /// `eligible_at_ms`, when it is admitted as a new run would be.
    Scheduled,
    /// Ready to be leased.
    Queued,
    /// Parked until a limit allows it (`waiting_on`, `eligible_at`).
    Waiting,
    /// Leased by a worker.
    Running,
    /// Completed.
    Succeeded,
    /// Failed for good (attempts exhausted, a non-retried failure, or an impossible limit).
    Failed,
    /// Never ran: over its limits under `on_limit: skip`, or a duplicate.
    Skipped,
    /// Cancelled before it finished.
    Cancelled,
}

impl RunState {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Scheduled => "scheduled",
            RunState::Queued => "queued",
            RunState::Waiting => "waiting",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Skipped => "skipped",
            RunState::Cancelled => "cancelled",
        }
    }

    /// Whether the run has ended.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Failed | RunState::Skipped | RunState::Cancelled
        )
    }

    /// Every state, in lifecycle order.
    pub const ALL: [RunState; 8] = [
        RunState::Scheduled,
        RunState::Queued,
        RunState::Waiting,
        RunState::Running,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Skipped,
        RunState::Cancelled,
    ];
}

impl std::str::FromStr for RunState {
    type Err = String;
    fn from_str(s: &str) -> Result<RunState, String> {
        RunState::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown run state {s:?}: expected one of scheduled, queued, waiting, running, succeeded, failed, skipped, cancelled"))
    }
}

/// A run as the HTTP API shows it: times in epoch milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RunView {
    /// Opaque id.
    pub id: String,
    /// The task's name.
    pub task: String,
    /// Lifecycle state.
    pub state: RunState,
    /// The run's input.
    pub input: Value,
    /// Caller-supplied metadata.
    pub additional_metadata: Value,
    /// Current attempt (0 before the first lease).
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// The key a waiting run is held by.
    pub waiting_on: Option<String>,
    /// When a waiting run becomes eligible, or a scheduled run is due.
    pub eligible_at_ms: Option<u64>,
    /// Why it was skipped.
    pub skip_reason: Option<String>,
    /// The last failure.
    pub error: Option<String>,
    /// The result of a successful run.
    pub output: Option<Value>,
    /// Enqueue time.
    pub created_at_ms: u64,
    /// Last state change.
    pub updated_at_ms: u64,
    /// When a running run's lease lapses.
    pub lease_expires_at_ms: Option<u64>,
    /// The worker holding it.
    pub worker_id: Option<String>,
    /// Its priority, 1 (least urgent) to 4 (docs/design.md §3.15).
    #[serde(default = "default_priority")]
    pub priority: u8,
}

fn default_priority() -> u8 {
    2
}

/// A run handed to a worker by a lease call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LeasedRun {
    /// Opaque id.
    pub id: String,
    /// The task's name.
    pub task: String,
    /// The run's input.
    pub input: Value,
    /// Caller-supplied metadata.
    pub additional_metadata: Value,
    /// This attempt, 1-based.
    pub attempt: u32,
    /// When the lease lapses unless the worker heartbeats.
    pub lease_expires_at_ms: u64,
}

/// `POST /v1/tasks/{name}/runs`'s body. The answer is the run (`201`, a [`RunView`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct EnqueueRequest {
    /// The run's input (what the task's CEL sees as `input`).
    pub input: Value,
    /// Caller-supplied metadata, kept with the run (default `{}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_metadata: Option<Value>,
    /// Start no sooner than this many milliseconds from now (Celery's `countdown`, Dramatiq's
    /// `delay`): the run is `scheduled` until then. Not with `run_at_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Start no sooner than this instant, Unix-epoch milliseconds (Celery's `eta`). Not with
    /// `delay_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at_ms: Option<u64>,
    /// The run's priority, 1 (least urgent) to 4 (most urgent); default: its task's (2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
}

/// `POST /v1/events`'s body: one run of every task whose `triggers` name the event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct EventRequest {
    /// The event's name.
    pub name: String,
    /// Its data: each run's input.
    pub data: Value,
    /// Caller-supplied metadata, kept with each run (default `{}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_metadata: Option<Value>,
    /// As [`EnqueueRequest::delay_ms`], for every run the event starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// As [`EnqueueRequest::run_at_ms`], for every run the event starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at_ms: Option<u64>,
}

/// A run an event started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EventRun {
    /// The run's id.
    pub id: String,
    /// Its task.
    pub task: String,
    /// Its state: `queued`; `skipped` over its limits under `on_limit: skip`; `failed` when its
    /// expressions cannot be evaluated for this event (or it asks more units than a limit holds).
    pub state: RunState,
    /// Why a `failed` run failed (`invalid_expression: …`, `insufficient_capacity: …`);
    /// absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /v1/events`'s answer (`202`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EventAnswer {
    /// The runs started, none when no task listens.
    pub runs: Vec<EventRun>,
}

/// `POST /v1/workers/lease`'s body: a worker's long-poll for runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct WorkerLeaseRequest {
    /// Who asks (1 to 512 bytes, no control characters).
    pub worker_id: String,
    /// The tasks it serves.
    pub tasks: Vec<String>,
    /// How many runs it can take now, 1 to [`MAX_LEASE_BATCH`](crate::MAX_LEASE_BATCH).
    // Wider than needed so that 0 and 1001 get the server's message, not serde's.
    pub max: u64,
    /// How long to wait while no run is ready, in milliseconds (capped at
    /// [`MAX_WAIT`](crate::MAX_WAIT)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// `POST /v1/workers/lease`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LeasedRuns {
    /// The runs leased, possibly none.
    pub runs: Vec<LeasedRun>,
}

/// The body of `/heartbeat` and `/release`: with `attempt`, the call applies only to that
/// attempt (409 `invalid_state` once it is over).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct AttemptRequest {
    /// The attempt the worker was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
}

/// `/complete`'s body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    /// What the run returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// The attempt the worker was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// What the upstream said, for an adaptive limit: as `POST /v1/limits/{key}/feedback`,
    /// applied before the run completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<RunFeedback>,
}

/// `feedback` in `/complete` and `/fail`: an adaptive limit's key and what its upstream said.
///
/// ```
/// use tollgate_api::{FeedbackOutcome, RunFeedback};
/// let f = RunFeedback::new("stripe-api", FeedbackOutcome::Throttled);
/// assert_eq!(serde_json::to_string(&f)?, r#"{"key":"stripe-api","outcome":"throttled"}"#);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RunFeedback {
    /// A declared adaptive limit.
    pub key: String,
    /// `ok` or `throttled`.
    pub outcome: FeedbackOutcome,
}

impl RunFeedback {
    /// `outcome` for the adaptive limit `key`.
    pub fn new(key: impl Into<String>, outcome: FeedbackOutcome) -> RunFeedback {
        RunFeedback {
            key: key.into(),
            outcome,
        }
    }
}

/// `/fail`'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct FailRequest {
    /// What went wrong.
    pub error: String,
    /// Requeue while attempts remain (default: fail for good).
    #[serde(default)]
    pub retry: bool,
    /// The attempt the worker was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// With `retry`: wait this long before the next attempt (an upstream's `Retry-After`),
    /// instead of the task's `retry` backoff. The run is `scheduled` meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// Pause a key for everyone before failing (an upstream answered 429 with `Retry-After`):
    /// as `POST /v1/limits/{key}/pause`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<FailPause>,
    /// What the upstream said, for an adaptive limit: as `POST /v1/limits/{key}/feedback`,
    /// applied before the run fails (a `throttled` lowers the limit before the retry waits on
    /// it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<RunFeedback>,
}

/// `fail`'s `pause`: the key, for how long (`for_ms`) or until when (`until_ms`), and whether
/// it is a dynamic key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct FailPause {
    /// The key to pause.
    pub key: String,
    /// Pause this many milliseconds from now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_ms: Option<u64>,
    /// Pause until this instant, in Unix-epoch milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
    /// The key is a dynamic key, not a declared limit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dynamic: bool,
}

/// `GET /v1/runs/{id}/explain`: why a run waits, key by key (docs/design.md §3.14).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Explanation {
    /// The run, as `GET /v1/runs/{id}` shows it.
    pub run: RunView,
    /// Its state (the run's, repeated for the reader's convenience).
    pub state: RunState,
    /// The earliest it could start, in Unix-epoch milliseconds (rounded up), when known.
    pub eligible_at_ms: Option<u64>,
    /// For a `queued` run: how many ready runs of its task are ahead of it.
    pub ready_ahead: Option<u64>,
    /// Every limit and concurrency key the run needs, in the order its task names them.
    pub limits: Vec<KeyExplanation>,
}

/// One key a run needs, as [`Explanation`] shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct KeyExplanation {
    /// The key.
    pub key: String,
    /// `static` (a declared limit) or `dynamic` (rendered per run; every concurrency key).
    pub namespace: crate::Namespace,
    /// Its algorithm: a rate algorithm, or `concurrency`.
    pub algorithm: String,
    /// The limit in force now: a rate limit's `limit` (a token bucket's `capacity`), or a
    /// concurrency key's slots.
    pub limit_in_force: u64,
    /// Units used now (slots held, for concurrency).
    pub used: u64,
    /// Units (slots) admissible now.
    pub remaining: u64,
    /// Runs waiting on this key now.
    pub waiting: u64,
    /// The run's place in the key's wait queue (0: its head, the next to be tried) while it
    /// waits on this key; `None` otherwise.
    pub position: Option<u64>,
    /// The ids of up to 10 runs ahead of it in that queue, nearest the head first.
    pub ahead: Vec<String>,
    /// While the key is paused: when the pause ends (Unix-epoch ms, rounded up).
    pub paused_until_ms: Option<u64>,
    /// When this key would let the run be tried again: for the key it waits on, its
    /// `eligible_at_ms`; for a paused key, the end of the pause; otherwise `None`.
    pub eligible_at_ms: Option<u64>,
}

/// `/cancel`'s body: empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {}

/// `GET /v1/runs`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RunListing {
    /// The runs, newest first.
    pub runs: Vec<RunView>,
}
