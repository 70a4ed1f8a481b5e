//! `POST /v1/workers/lease`: a worker asks for runs of the tasks it serves (a long-poll).
//!
//! ```json
//! {"worker_id": "w-1", "tasks": ["send-email", "sync"], "max": 10, "wait_ms": 20000}
//! ```
//! answers
//! ```json
//! {"runs": [{"id": "18c2…-1", "task": "send-email", "input": {…}, "additional_metadata": {},
//!            "attempt": 1, "lease_expires_at_ms": 1700000030000}]}
//! ```
//! The call answers as soon as it holds at least one run (up to `max`, taking one run per task
//! in turn); it waits up to `wait_ms` (default 0, capped at the server's
//! [`MAX_WAIT`](crate::MAX_WAIT)) only while it holds none, and is woken the moment a run is
//! enqueued or a parked run reaches its `eligible_at`. A server shutting down answers waiting
//! calls at once, with no runs. The server keeps no per-worker slot count: `max` is what this
//! worker can take now.
//!
//! The worker then heartbeats each run before `lease_expires_at_ms` and reports its outcome
//! (`/v1/runs/{id}/…`), passing the `attempt` it was given.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use tollgate::queue::run_queue::lease_until;
use tollgate::{MAX_KEY_LEN, MAX_LEASE_BATCH};
use tollgate_api::{ErrorCode, LeasedRuns as LeaseAnswer, WorkerLeaseRequest as LeaseRequest};

use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::state::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/v1/workers/lease", post(lease))
}

fn invalid(field: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(ErrorCode::InvalidField, message).with_field(field)
}

/// The request's tasks, deduplicated in order, once they are all known to be defined.
async fn validate(state: &AppState, req: &LeaseRequest) -> Result<(Vec<String>, usize), ApiError> {
    if req.worker_id.is_empty()
        || req.worker_id.len() > MAX_KEY_LEN
        || req.worker_id.chars().any(char::is_control)
    {
        return Err(invalid(
            "worker_id",
            format!("worker_id must be 1 to {MAX_KEY_LEN} bytes without control characters"),
        ));
    }
    if req.tasks.is_empty() {
        return Err(invalid(
            "tasks",
            "tasks must name at least one task this worker serves",
        ));
    }
    let max = usize::try_from(req.max)
        .ok()
        .filter(|m| (1..=MAX_LEASE_BATCH).contains(m))
        .ok_or_else(|| {
            invalid(
                "max",
                format!(
                    "invalid max {}: must be between 1 and {MAX_LEASE_BATCH}",
                    req.max
                ),
            )
        })?;
    let mut tasks: Vec<String> = Vec::with_capacity(req.tasks.len());
    for (i, name) in req.tasks.iter().enumerate() {
        if state.queue().task(name).await?.is_none() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::UnknownTask,
                format!("no task is defined under name {name:?}"),
            )
            .with_field(format!("tasks[{i}]")));
        }
        // A task named twice would get two turns in each round.
        if !tasks.contains(name) {
            tasks.push(name.clone());
        }
    }
    Ok((tasks, max))
}

/// `POST /v1/workers/lease`.
async fn lease(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<LeaseRequest>,
) -> Result<Json<LeaseAnswer>, ApiError> {
    let (tasks, max) = validate(&state, &req).await?;
    let wait = Duration::from_millis(req.wait_ms.unwrap_or(0)).min(state.settings().max_wait);
    // Shutdown ends the wait, never a lease being committed: a dropped call could leave runs
    // leased to nobody until their lease expires.
    let runs = lease_until(
        state.queue(),
        &req.worker_id,
        &tasks,
        max,
        wait,
        state.shutting_down(),
    )
    .await?;
    Ok(Json(LeaseAnswer { runs }))
}
