//! [`Run`]: one execution request of a task, and its lifecycle.
//!
//! A run's lifecycle state and what belongs to it are one value, its [`RunPhase`]: what a
//! waiting run waits on and until when, a running run's lease and worker, why a run was
//! skipped. A transition assigns a new phase, so nothing of the old one is left behind. What
//! outlives a phase (the attempt, the last error, the output, the reserved rate units, the
//! concurrency slots held, when units were consumed) stays on the [`Run`].
//!
//! The journal stores runs as JSON in the form of builds before the phase existed (loose
//! `state`, `waiting_on`, `eligible_at`, `skip_reason`, `lease_expires_at`, `worker_id`
//! fields): [`Run`] is written and read through private records of that form, so journals
//! written by either build load in the other.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tollgate_core::Nanos;

use crate::task::{DEFAULT_LEASE_TIMEOUT, OnLimit, Rendered, RetryPolicy};
use tollgate_core::Period;

pub use tollgate_api::{LeasedRun, RunState, RunView};

/// One run, as the queue keeps and persists it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "RunRecord")]
pub struct Run {
    /// Opaque id.
    pub id: String,
    /// Enqueue order (FIFO ties are broken by it).
    pub seq: u64,
    /// The task's name.
    pub task: String,
    /// Lifecycle state, with what belongs to it.
    pub phase: RunPhase,
    /// The run's input.
    pub input: Value,
    /// Caller-supplied metadata.
    pub additional_metadata: Value,
    /// The event that triggered the run, if any (`{"name", "data"}`).
    pub event: Option<Value>,
    /// 1-based; goes up by one at each lease. 0 before the first lease.
    pub attempt: u32,
    /// Attempts allowed (lease expiries count).
    pub max_attempts: u32,
    /// Limits and concurrency keys rendered at enqueue.
    pub rendered: Rendered,
    /// What the run keeps of its task's definition at enqueue (docs/design.md §3). `None` only
    /// in runs written by a build before 0.2, until the engine fills it in at load.
    pub policy: Option<RunPolicy>,
    /// The last failure's message.
    pub error: Option<String>,
    /// What a successful run returned.
    pub output: Option<Value>,
    /// When it was enqueued.
    pub created_at: Nanos,
    /// When its state last changed.
    pub updated_at: Nanos,
    /// When its rate units were last consumed (rebuilding limiter state after a restart
    /// replays these).
    pub consumed_at: Option<Nanos>,
    /// When its task's `rate_limit` took its unit (at enqueue, or when it was due): replayed
    /// after a restart as `consumed_at` is.
    pub gate_at: Option<Nanos>,
    /// Its rate units are consumed for the coming (or current) attempt.
    pub reserved: bool,
    /// Concurrency keys whose slot this run holds.
    pub held: Vec<String>,
}

/// A run's lifecycle state with what belongs to it ([`Run::state`] is derived from it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunPhase {
    /// Enqueued with a delay, or waiting out a retry's backoff: nothing happens until `at`.
    Scheduled {
        /// When it is due.
        at: Nanos,
        /// A retry waiting out its backoff: queued when due. Otherwise a new run, admitted
        /// when due as a new run is (its rate_limit, its policy).
        retry: bool,
    },
    /// In its task's ready queue.
    Queued,
    /// Parked on the key that denied it.
    Waiting {
        /// The key it is parked on, with its namespace.
        on: WaitKey,
        /// When it may start (for rate limits; unknown for concurrency).
        eligible_at: Option<Nanos>,
    },
    /// Leased to a worker.
    Running {
        /// When the lease lapses unless renewed.
        lease_expires_at: Nanos,
        /// Who holds the lease.
        worker_id: String,
    },
    /// Ended: its worker completed it.
    Succeeded {
        /// The worker that completed it.
        worker_id: Option<String>,
    },
    /// Ended: it failed for good.
    Failed {
        /// The worker that failed it, when it failed under a lease it still held (not when the
        /// lease lapsed).
        worker_id: Option<String>,
    },
    /// Ended: never ran (`rate_limited` under `on_limit: skip`, or a `duplicate`).
    Skipped {
        /// Why: `rate_limited` or `duplicate`.
        reason: String,
        /// The key that denied it (the rate key, or the idempotency key).
        key: Option<String>,
    },
    /// Ended: cancelled before it ended.
    Cancelled {
        /// The worker that held its lease, when it was cancelled while running.
        worker_id: Option<String>,
    },
}

impl RunPhase {
    /// The lifecycle state this phase is.
    pub fn state(&self) -> RunState {
        match self {
            RunPhase::Scheduled { .. } => RunState::Scheduled,
            RunPhase::Queued => RunState::Queued,
            RunPhase::Waiting { .. } => RunState::Waiting,
            RunPhase::Running { .. } => RunState::Running,
            RunPhase::Succeeded { .. } => RunState::Succeeded,
            RunPhase::Failed { .. } => RunState::Failed,
            RunPhase::Skipped { .. } => RunState::Skipped,
            RunPhase::Cancelled { .. } => RunState::Cancelled,
        }
    }

    /// The worker that holds (or held, when the run ended under its lease) the run.
    pub fn worker_id(&self) -> Option<&str> {
        match self {
            RunPhase::Running { worker_id, .. } => Some(worker_id),
            RunPhase::Succeeded { worker_id }
            | RunPhase::Failed { worker_id }
            | RunPhase::Cancelled { worker_id } => worker_id.as_deref(),
            _ => None,
        }
    }

    /// The key a waiting (or skipped) run is held by, by name.
    pub fn waiting_on(&self) -> Option<&str> {
        match self {
            RunPhase::Waiting { on, .. } => Some(on.name()),
            RunPhase::Skipped { key, .. } => key.as_deref(),
            _ => None,
        }
    }

    /// When a waiting run may start, if known; when a scheduled run is due.
    pub fn eligible_at(&self) -> Option<Nanos> {
        match self {
            RunPhase::Waiting { eligible_at, .. } => *eligible_at,
            RunPhase::Scheduled { at, .. } => Some(*at),
            _ => None,
        }
    }

    /// When a running run's lease lapses.
    pub fn lease_expires_at(&self) -> Option<Nanos> {
        match self {
            RunPhase::Running {
                lease_expires_at, ..
            } => Some(*lease_expires_at),
            _ => None,
        }
    }
}

/// What a parked run waits on: a key with its namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WaitKey {
    /// A rate limit key (static or dynamic namespace).
    Rate {
        /// In the dynamic namespace (a key defined by the run's own rate limit).
        dynamic: bool,
        /// The key.
        key: String,
    },
    /// A concurrency key.
    Concurrency(String),
}

/// Timers due at the same instant fire in this order: the order of the Redis engine's wait
/// keys as strings (`c:<key>` < `rd:<key>` < `rs:<key>`, then the key's bytes), which its
/// sorted set of timers keeps. Both engines must wake keys in the same order: a run naming
/// two keys is admitted by whichever wakes first (docs/design.md §3.12).
impl Ord for WaitKey {
    fn cmp(&self, other: &WaitKey) -> std::cmp::Ordering {
        fn rank(k: &WaitKey) -> (u8, &str) {
            match k {
                WaitKey::Concurrency(key) => (0, key),
                WaitKey::Rate { dynamic: true, key } => (1, key),
                WaitKey::Rate {
                    dynamic: false,
                    key,
                } => (2, key),
            }
        }
        rank(self).cmp(&rank(other))
    }
}

impl PartialOrd for WaitKey {
    fn partial_cmp(&self, other: &WaitKey) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl WaitKey {
    /// The key's name, without its namespace.
    pub fn name(&self) -> &str {
        match self {
            WaitKey::Rate { key, .. } | WaitKey::Concurrency(key) => key,
        }
    }

    /// A declared (static) limit's key.
    pub(crate) fn declared(key: &str) -> WaitKey {
        WaitKey::Rate {
            dynamic: false,
            key: key.to_owned(),
        }
    }

    /// The key named `name` among `rendered`'s limits: a rate key first, then a concurrency
    /// key. The journal stores a waiting run's key by name only; this finds its namespace.
    fn named(rendered: &Rendered, name: &str) -> Option<WaitKey> {
        if let Some(r) = rendered.rate.iter().find(|r| r.key == name) {
            return Some(WaitKey::Rate {
                dynamic: r.dynamic.is_some(),
                key: r.key.clone(),
            });
        }
        rendered
            .concurrency
            .iter()
            .find(|c| c.key == name)
            .map(|c| WaitKey::Concurrency(c.key.clone()))
    }
}

impl Run {
    /// Lifecycle state (derived from the phase).
    pub fn state(&self) -> RunState {
        self.phase.state()
    }

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
    /// How its retries are spaced (none: a retry is queued at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
}

impl Default for RunPolicy {
    fn default() -> RunPolicy {
        RunPolicy {
            on_limit: OnLimit::Requeue,
            lease_timeout: DEFAULT_LEASE_TIMEOUT,
            retry: None,
        }
    }
}

// ---- the journal's form ------------------------------------------------------------------
//
// Both records below are the journal's form of a run, field for field and in this order: a
// run is written through `RunRecordRef` (borrowing, so a write clones nothing) and read
// through `RunRecord`. They must stay alike; the tests below pin the bytes.

/// A run as the journal stores it, read.
#[derive(Deserialize)]
struct RunRecord {
    id: String,
    seq: u64,
    task: String,
    state: RunState,
    input: Value,
    additional_metadata: Value,
    #[serde(default)]
    event: Option<Value>,
    attempt: u32,
    max_attempts: u32,
    rendered: Rendered,
    #[serde(default)]
    policy: Option<RunPolicy>,
    #[serde(default)]
    waiting_on: Option<String>,
    #[serde(default)]
    eligible_at: Option<Nanos>,
    #[serde(default)]
    skip_reason: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    output: Option<Value>,
    created_at: Nanos,
    updated_at: Nanos,
    #[serde(default)]
    consumed_at: Option<Nanos>,
    #[serde(default)]
    gate_at: Option<Nanos>,
    #[serde(default)]
    retrying: bool,
    #[serde(default)]
    reserved: bool,
    #[serde(default)]
    held: Vec<String>,
    #[serde(default)]
    lease_expires_at: Option<Nanos>,
    #[serde(default)]
    worker_id: Option<String>,
}

/// A run as the journal stores it, written.
#[derive(Serialize)]
struct RunRecordRef<'a> {
    id: &'a str,
    seq: u64,
    task: &'a str,
    state: RunState,
    input: &'a Value,
    additional_metadata: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a Value>,
    attempt: u32,
    max_attempts: u32,
    rendered: &'a Rendered,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<RunPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    waiting_on: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eligible_at: Option<Nanos>,
    #[serde(skip_serializing_if = "Option::is_none")]
    skip_reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<&'a Value>,
    created_at: Nanos,
    updated_at: Nanos,
    #[serde(skip_serializing_if = "Option::is_none")]
    consumed_at: Option<Nanos>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gate_at: Option<Nanos>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    retrying: bool,
    reserved: bool,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    held: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_expires_at: Option<Nanos>,
    #[serde(skip_serializing_if = "Option::is_none")]
    worker_id: Option<&'a str>,
}

impl Serialize for Run {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let skip_reason = match &self.phase {
            RunPhase::Skipped { reason, .. } => Some(reason.as_str()),
            _ => None,
        };
        RunRecordRef {
            id: &self.id,
            seq: self.seq,
            task: &self.task,
            state: self.state(),
            input: &self.input,
            additional_metadata: &self.additional_metadata,
            event: self.event.as_ref(),
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            rendered: &self.rendered,
            policy: self.policy,
            waiting_on: self.phase.waiting_on(),
            eligible_at: self.phase.eligible_at(),
            skip_reason,
            error: self.error.as_deref(),
            output: self.output.as_ref(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            consumed_at: self.consumed_at,
            gate_at: self.gate_at,
            retrying: matches!(self.phase, RunPhase::Scheduled { retry: true, .. }),
            reserved: self.reserved,
            held: &self.held,
            lease_expires_at: self.phase.lease_expires_at(),
            worker_id: self.phase.worker_id(),
        }
        .serialize(serializer)
    }
}

impl From<RunRecord> for Run {
    fn from(r: RunRecord) -> Run {
        let phase = match r.state {
            RunState::Scheduled => RunPhase::Scheduled {
                at: r.eligible_at.unwrap_or(r.created_at),
                retry: r.retrying,
            },
            RunState::Queued => RunPhase::Queued,
            // The journal names the key only: its namespace is found among the run's own
            // limits. A waiting run whose key is none of them could not be parked again, and
            // is queued (restoring it would requeue it anyway).
            RunState::Waiting => match r
                .waiting_on
                .as_deref()
                .and_then(|name| WaitKey::named(&r.rendered, name))
            {
                Some(on) => RunPhase::Waiting {
                    on,
                    eligible_at: r.eligible_at,
                },
                None => RunPhase::Queued,
            },
            // No build writes a running run without its lease and worker; one read without a
            // lease has lapsed already (it is requeued or failed at once), not held forever.
            RunState::Running => RunPhase::Running {
                lease_expires_at: r.lease_expires_at.unwrap_or(Nanos::ZERO),
                worker_id: r.worker_id.unwrap_or_default(),
            },
            RunState::Succeeded => RunPhase::Succeeded {
                worker_id: r.worker_id,
            },
            RunState::Failed => RunPhase::Failed {
                worker_id: r.worker_id,
            },
            RunState::Skipped => RunPhase::Skipped {
                reason: r.skip_reason.unwrap_or_default(),
                key: r.waiting_on,
            },
            RunState::Cancelled => RunPhase::Cancelled {
                worker_id: r.worker_id,
            },
        };
        Run {
            id: r.id,
            seq: r.seq,
            task: r.task,
            phase,
            input: r.input,
            additional_metadata: r.additional_metadata,
            event: r.event,
            attempt: r.attempt,
            max_attempts: r.max_attempts,
            rendered: r.rendered,
            policy: r.policy,
            error: r.error,
            output: r.output,
            created_at: r.created_at,
            updated_at: r.updated_at,
            consumed_at: r.consumed_at,
            gate_at: r.gate_at,
            reserved: r.reserved,
            held: r.held,
        }
    }
}

impl From<&Run> for RunView {
    fn from(r: &Run) -> RunView {
        RunView {
            id: r.id.clone(),
            task: r.task.clone(),
            state: r.state(),
            input: r.input.clone(),
            additional_metadata: r.additional_metadata.clone(),
            attempt: r.attempt,
            max_attempts: r.max_attempts,
            waiting_on: r.phase.waiting_on().map(str::to_owned),
            // Instants round up too: a worker that waits until eligible_at_ms is never early.
            eligible_at_ms: r.phase.eligible_at().map(Nanos::as_millis_ceil),
            skip_reason: match &r.phase {
                RunPhase::Skipped { reason, .. } => Some(reason.clone()),
                _ => None,
            },
            error: r.error.clone(),
            output: r.output.clone(),
            created_at_ms: r.created_at.as_millis_floor(),
            updated_at_ms: r.updated_at.as_millis_floor(),
            lease_expires_at_ms: r.phase.lease_expires_at().map(Nanos::as_millis_floor),
            worker_id: r.phase.worker_id().map(str::to_owned),
            priority: r.rendered.priority,
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
            lease_expires_at_ms: r.phase.lease_expires_at().map_or(0, Nanos::as_millis_floor),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

    use serde_json::json;

    use super::*;
    use crate::task::{RenderedConcurrency, RenderedLimit};

    /// `Run` as builds before the phase defined it, field for field: the journal's form.
    #[derive(Serialize)]
    struct Before {
        id: String,
        seq: u64,
        task: String,
        state: RunState,
        input: Value,
        additional_metadata: Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        event: Option<Value>,
        attempt: u32,
        max_attempts: u32,
        rendered: Rendered,
        #[serde(skip_serializing_if = "Option::is_none")]
        policy: Option<RunPolicy>,
        #[serde(skip_serializing_if = "Option::is_none")]
        waiting_on: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        eligible_at: Option<Nanos>,
        #[serde(skip_serializing_if = "Option::is_none")]
        skip_reason: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        output: Option<Value>,
        created_at: Nanos,
        updated_at: Nanos,
        #[serde(skip_serializing_if = "Option::is_none")]
        consumed_at: Option<Nanos>,
        reserved: bool,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        held: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        lease_expires_at: Option<Nanos>,
        #[serde(skip_serializing_if = "Option::is_none")]
        worker_id: Option<String>,
    }

    fn before(state: RunState) -> Before {
        Before {
            id: "r1".into(),
            seq: 1,
            task: "t".into(),
            state,
            input: json!({"user": "u1"}),
            additional_metadata: json!({}),
            event: None,
            attempt: 0,
            max_attempts: 3,
            rendered: Rendered {
                rate: vec![
                    RenderedLimit {
                        key: "api".into(),
                        dynamic: None,
                        units: 1,
                        spec_index: 0,
                    },
                    RenderedLimit {
                        key: "u1".into(),
                        dynamic: Some(
                            serde_json::from_value(json!({"algorithm": "gcra", "rate": "1/s"}))
                                .unwrap(),
                        ),
                        units: 2,
                        spec_index: 1,
                    },
                ],
                concurrency: vec![RenderedConcurrency {
                    key: "acct".into(),
                    limit: 1,
                    spec_index: 0,
                }],
                idempotency_key: None,
                gate: Vec::new(),
                ..Rendered::default()
            },
            policy: Some(RunPolicy::default()),
            waiting_on: None,
            eligible_at: None,
            skip_reason: None,
            error: None,
            output: None,
            created_at: Nanos::from_millis(5),
            updated_at: Nanos::from_millis(6),
            consumed_at: None,
            reserved: false,
            held: Vec::new(),
            lease_expires_at: None,
            worker_id: None,
        }
    }

    /// Reads what the build before the phase wrote, checks the phase, and writes it back
    /// byte for byte.
    fn same_bytes(old: &Before, phase: &RunPhase) {
        let bytes = serde_json::to_string(old).unwrap();
        let run: Run = serde_json::from_str(&bytes).unwrap();
        assert_eq!(&run.phase, phase, "{bytes}");
        assert_eq!(serde_json::to_string(&run).unwrap(), bytes);
    }

    #[test]
    fn every_phase_keeps_the_journal_form() {
        same_bytes(&before(RunState::Queued), &RunPhase::Queued);

        let mut w = before(RunState::Waiting);
        w.waiting_on = Some("api".into());
        w.eligible_at = Some(Nanos::from_millis(9));
        w.reserved = true;
        w.consumed_at = Some(Nanos::from_millis(4));
        w.error = Some("lease expired on attempt 1".into());
        w.attempt = 1;
        let on = WaitKey::declared("api");
        same_bytes(
            &w,
            &RunPhase::Waiting {
                on,
                eligible_at: Some(Nanos::from_millis(9)),
            },
        );
        w.waiting_on = Some("u1".into());
        let on = WaitKey::Rate {
            dynamic: true,
            key: "u1".into(),
        };
        same_bytes(
            &w,
            &RunPhase::Waiting {
                on,
                eligible_at: Some(Nanos::from_millis(9)),
            },
        );
        w.waiting_on = Some("acct".into());
        w.eligible_at = None;
        let on = WaitKey::Concurrency("acct".into());
        same_bytes(
            &w,
            &RunPhase::Waiting {
                on,
                eligible_at: None,
            },
        );

        let mut r = before(RunState::Running);
        r.attempt = 1;
        r.held = vec!["acct".into()];
        r.lease_expires_at = Some(Nanos::from_secs(60));
        r.worker_id = Some("w1".into());
        same_bytes(
            &r,
            &RunPhase::Running {
                lease_expires_at: Nanos::from_secs(60),
                worker_id: "w1".into(),
            },
        );

        let mut s = before(RunState::Succeeded);
        s.worker_id = Some("w1".into());
        s.output = Some(json!({"ok": true}));
        let worker_id = Some("w1".to_owned());
        same_bytes(&s, &RunPhase::Succeeded { worker_id });

        let mut f = before(RunState::Failed);
        f.error = Some("boom".into());
        same_bytes(&f, &RunPhase::Failed { worker_id: None });

        let mut k = before(RunState::Skipped);
        k.skip_reason = Some("rate_limited".into());
        k.waiting_on = Some("api".into());
        same_bytes(
            &k,
            &RunPhase::Skipped {
                reason: "rate_limited".into(),
                key: Some("api".into()),
            },
        );

        let mut c = before(RunState::Cancelled);
        c.reserved = true;
        c.worker_id = Some("w1".into());
        let worker_id = Some("w1".to_owned());
        same_bytes(&c, &RunPhase::Cancelled { worker_id });
    }

    #[test]
    fn a_waiting_record_on_a_key_it_does_not_name_is_read_as_queued() {
        let mut w = before(RunState::Waiting);
        w.waiting_on = Some("gone".into());
        let run: Run = serde_json::from_str(&serde_json::to_string(&w).unwrap()).unwrap();
        assert_eq!(run.phase, RunPhase::Queued);
        w.waiting_on = None;
        let run: Run = serde_json::from_str(&serde_json::to_string(&w).unwrap()).unwrap();
        assert_eq!(run.phase, RunPhase::Queued);
    }
}
