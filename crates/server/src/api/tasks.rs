//! Task definitions: `PUT /v1/tasks/{name}`, `GET /v1/tasks/{name}`, `GET /v1/tasks`.
//!
//! The body of a `PUT` is a task spec (docs/design.md §3); every field is optional. A task is answered
//! as its name, its definition with the defaults filled in (so that what a run will get is
//! visible, and the `spec` object can be sent back as it is), and how many runs it has in each
//! state:
//! ```json
//! {"name": "send-email",
//!  "spec": {"rate_limits": [{"static_key": "test-limit", "units": 1}], "concurrency": [],
//!           "on_limit": "requeue", "idempotency": null, "triggers": [],
//!           "max_attempts": 3, "lease_timeout": "30s", "throttle": null,
//!           "rate_limit": null, "retry": null},
//!  "depth": {"scheduled": 0, "queued": 2, "waiting": 0, "running": 1, "succeeded": 7, "failed": 0,
//!            "skipped": 0, "cancelled": 0}}
//! ```
//! Errors name the field: a CEL expression that does not compile is 400 `invalid_expression`
//! (`rate_limits[1].dynamic_key`); a `static_key` naming no declared limit is 422
//! `unknown_limit`; constant units beyond a constant limit's capacity are 422
//! `insufficient_capacity`.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use tollgate::{Task, TaskSpec};
use tollgate_api::{Depth, ErrorCode, Task as TaskView, TaskListing as Listing};

use crate::error::ApiError;
use crate::extract::{JsonBody, Segment};
use crate::state::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/tasks", get(list))
        .route("/v1/tasks/{name}", get(get_one).put(put))
}

/// Runs of one task in each state.
async fn depths(state: &AppState) -> Result<HashMap<String, Depth>, ApiError> {
    let mut out: HashMap<String, Depth> = HashMap::new();
    for (task, run_state, n) in state.queue().depth().await? {
        out.entry(task).or_default().add(run_state, n);
    }
    Ok(out)
}

/// A definition with its defaults filled in. Field for field a [`TaskSpec`], so that it reads
/// back as the same task.
/// A task as the API shows it: its definition as given, with the defaults it runs under.
fn view(task: &Task, depth: Depth) -> TaskView {
    let spec = &task.spec;
    TaskView {
        name: task.name.clone(),
        spec: TaskSpec {
            on_limit: Some(task.on_limit),
            max_attempts: Some(task.max_attempts),
            // As given when given (the spec is kept as written), else the default.
            lease_timeout: Some(
                spec.lease_timeout
                    .clone()
                    .unwrap_or_else(|| task.lease_timeout.to_string()),
            ),
            ..spec.clone()
        },
        depth,
    }
}

pub(crate) fn unknown_task(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::UnknownTask,
        format!("no task is defined under name {name:?}"),
    )
    .with_field("name")
}

/// A `{name}` segment: one that is not even text names no task.
fn task_name(segment: Result<Segment, ApiError>) -> Result<String, ApiError> {
    segment
        .map(|Segment(name)| name)
        .map_err(|_| unknown_task("(not UTF-8)"))
}

/// Every task with its depth, by name.
pub(crate) async fn views(state: &AppState) -> Result<Vec<TaskView>, ApiError> {
    let depths = depths(state).await?;
    Ok(state
        .queue()
        .tasks()
        .await?
        .iter()
        .map(|t| view(t, depths.get(&t.name).copied().unwrap_or_default()))
        .collect())
}

/// `GET /v1/tasks`: every task, by name.
async fn list(State(state): State<AppState>) -> Result<Json<Listing>, ApiError> {
    Ok(Json(Listing {
        tasks: views(&state).await?,
    }))
}

/// `GET /v1/tasks/{name}`: 404 `unknown_task` if not defined.
async fn get_one(
    State(state): State<AppState>,
    name: Result<Segment, ApiError>,
) -> Result<Json<TaskView>, ApiError> {
    let name = task_name(name)?;
    let task = state
        .queue()
        .task(&name)
        .await?
        .ok_or_else(|| unknown_task(&name))?;
    let depth = depths(&state).await?.remove(&name).unwrap_or_default();
    Ok(Json(view(&task, depth)))
}

/// `PUT /v1/tasks/{name}`: defines or redefines (runs already enqueued keep the limits they
/// were rendered with). Durable before it is answered.
async fn put(
    State(state): State<AppState>,
    name: Result<Segment, ApiError>,
    JsonBody(spec): JsonBody<TaskSpec>,
) -> Result<Json<TaskView>, ApiError> {
    let Segment(name) = name.map_err(|_| {
        ApiError::bad_request(ErrorCode::InvalidName, "a task name must be UTF-8 text")
            .with_field("name")
    })?;
    let task = state.queue().put_task(&name, spec).await.map_err(|e| {
        let named = matches!(e, tollgate::Error::InvalidName { .. });
        let err = ApiError::from(e);
        if named { err.with_field("name") } else { err }
    })?;
    let depth = depths(&state).await?.remove(&name).unwrap_or_default();
    Ok(Json(view(&task, depth)))
}
