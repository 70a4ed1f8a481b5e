//! Tollgate's wire types: every request and response body of the HTTP API, the error body
//! with its codes, and the API's shared constants. The server (`tollgate-server`) writes and
//! reads them, the Rust client (`tollgate-client`) reads and writes them; this crate depends on
//! serde alone, so a worker that uses the client compiles nothing of the engine.
//!
//! ```
//! use tollgate_api::{AcquireEntry, AcquireRequest, ErrorCode, ErrorEnvelope};
//!
//! let body = AcquireRequest {
//!     limits: vec![AcquireEntry::new("stripe-api"), AcquireEntry::new("user:42").rate("10/m")],
//!     wait_ms: Some(500),
//! };
//! assert_eq!(
//!     serde_json::to_string(&body)?,
//!     r#"{"limits":[{"key":"stripe-api"},{"key":"user:42","rate":"10/m"}],"wait_ms":500}"#
//! );
//!
//! let answer: ErrorEnvelope = serde_json::from_str(
//!     r#"{"error": {"code": "unknown_limit", "message": "no limit", "field": "limits[0].key"}}"#,
//! )?;
//! assert_eq!(answer.error.code, ErrorCode::UnknownLimit);
//! # Ok::<(), serde_json::Error>(())
//! ```
//!
//! Request bodies refuse unknown fields (the server answers 400 `unknown_field` naming it);
//! answers accept them, so an older client reads a newer server's answers, and an unknown
//! error code is kept as [`ErrorCode::Other`].
//!
//! # Layout
//! - `error.rs`: [`ErrorEnvelope`], [`ErrorBody`], [`ErrorCode`].
//! - `limits.rs`: limit definitions ([`LimitSpec`], whose rate parameters, [`LimitParams`],
//!   a task's dynamic keys share) and views ([`Limit`], [`LimitListing`]),
//!   [`Health`], acquire and batch acquire ([`AcquireRequest`], [`AcquireEntry`],
//!   [`Acquisition`], [`KeyDecision`], [`BatchRequest`], [`BatchAnswer`]).
//! - `leases.rs`: concurrency leases ([`LeaseRequest`], [`Lease`], [`LeaseRenewal`]) and
//!   barriers ([`BarrierCreate`], [`Barrier`], [`BarrierWait`]).
//! - `tasks.rs`: task definitions ([`TaskSpec`] and its parts) and views ([`Task`], [`Depth`]).
//! - `runs.rs`: runs ([`RunState`], [`RunView`], [`LeasedRun`]), enqueue, events, worker
//!   leases and what a worker reports ([`CompleteRequest`], [`FailRequest`], …).
//! - This file: the constants the server enforces and clients size requests by.
//!
//! Feature `schema`: a JSON Schema of every body (`schemars`), for the server's OpenAPI
//! document (`GET /openapi.json`); off for the client.

use std::time::Duration;

mod error;
mod leases;
mod limits;
mod runs;
#[cfg(feature = "schema")]
mod schema;
mod tasks;

pub use error::{ErrorBody, ErrorCode, ErrorEnvelope};
pub use leases::{
    Barrier, BarrierCreate, BarrierReleased, BarrierWait, Lease, LeaseRenewal, LeaseRequest,
    RenewRequest,
};
pub use limits::{
    AcquireEntry, AcquireRequest, Acquisition, AdaptiveSpec, BatchAnswer, BatchItem, BatchOutcome,
    BatchRequest, FeedbackOutcome, FeedbackRequest, Health, KeyDecision, Limit, LimitListing,
    LimitParams, LimitSpec, Namespace, Pause, PauseListing, PauseRequest, Resumed,
};
pub use runs::{
    AttemptRequest, CancelRequest, CompleteRequest, EnqueueRequest, EventAnswer, EventRequest,
    EventRun, Explanation, FailPause, FailRequest, KeyExplanation, LeasedRun, LeasedRuns,
    RunFeedback, RunListing, RunState, RunView, WorkerLeaseRequest,
};
pub use tasks::{
    ConcurrencyUse, Depth, IdempotencyUse, KeyScope, NumberOrExpr, OnLimit, RateLimitUse,
    RetrySpec, Task, TaskListing, TaskSpec, Throttle, ThrottleSpec,
};

/// The most runs one `POST /v1/workers/lease` may ask for (`max`).
pub const MAX_LEASE_BATCH: usize = 1_000;
/// How long a run's lease lasts without a heartbeat when its task does not say.
pub const DEFAULT_LEASE_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts of a run when its task does not say.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// The longest a call may ask the server to wait (`wait_ms` of acquire and worker leases,
/// `timeout_ms` of a barrier wait); longer waits are cut to this.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// The most limits one acquire may name: the store groups entries by key in quadratic time,
/// and no real request needs more.
pub const MAX_ACQUIRE_LIMITS: usize = 64;
/// The most requests one batch acquire may hold.
pub const MAX_ACQUIRE_BATCH: usize = 1_000;
/// Runs `GET /v1/runs` answers when it is not given `limit`.
pub const DEFAULT_RUN_LIST_LIMIT: usize = 100;
/// The most runs `GET /v1/runs` answers (`limit`).
pub const MAX_RUN_LIST_LIMIT: usize = 1_000;

/// Whole milliseconds, rounded up (a wait of that long is never short), saturating.
pub(crate) fn millis_ceil(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
