//! `POST /v1/events`: an event starts one run of every task whose `triggers` name it.
//!
//! ```json
//! {"name": "intercom/company.updated", "data": {"company_id": "c1"}, "additional_metadata": {}}
//! ```
//! answers `202` (each run is enqueued, none has started):
//! ```json
//! {"runs": [{"id": "18c2…-1", "task": "sync-company", "state": "queued"}]}
//! ```
//! Each run's input is `data`, and its expressions see `event` as `{"name", "data"}`. A run
//! over its limits under `on_limit: skip` is listed with state `skipped`. An event no task
//! listens to answers `{"runs": []}`. If any triggered task's expressions cannot be evaluated
//! for this event, the answer is 422 `invalid_expression` naming the task, the field and the
//! expression, and no run of the event is kept.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use tollgate::{MAX_KEY_LEN, RunContext};
use tollgate_api::{ErrorCode, EventAnswer, EventRequest, EventRun};

use crate::api::runs::metadata;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::state::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/v1/events", post(emit))
}

/// `POST /v1/events`.
async fn emit(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<EventRequest>,
) -> Result<(StatusCode, Json<EventAnswer>), ApiError> {
    let name = req.name;
    if name.is_empty() || name.len() > MAX_KEY_LEN || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidName,
            format!("an event name must be 1 to {MAX_KEY_LEN} bytes without control characters"),
        )
        .with_field("name"));
    }
    let additional_metadata = metadata(req.additional_metadata);
    let runs = match state
        .queue()
        .emit(&name, req.data.clone(), additional_metadata.clone())
        .await
    {
        Ok(runs) => runs,
        Err(e @ tollgate::Error::Expression { .. }) => {
            return Err(expression_error(&state, &name, &req.data, &additional_metadata, e).await);
        }
        Err(e) => return Err(e.into()),
    };
    let runs = runs
        .into_iter()
        .map(|r| EventRun {
            id: r.id,
            task: r.task,
            state: r.state,
        })
        .collect();
    Ok((StatusCode::ACCEPTED, Json(EventAnswer { runs })))
}

/// The engine's error names the field but not which of the triggered tasks it belongs to:
/// render them again, as the engine did, to say which one failed. Only on this error path.
async fn expression_error(
    state: &AppState,
    name: &str,
    data: &Value,
    additional_metadata: &Value,
    e: tollgate::Error,
) -> ApiError {
    let event = json!({"name": name, "data": data});
    let ctx = RunContext::new(data)
        .with_metadata(additional_metadata)
        .with_event(&event);
    let failing = state
        .queue()
        .tasks()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.triggers.iter().any(|t| t == name))
        .find(|t| {
            matches!(
                t.render(&ctx),
                Err(tollgate::RenderError::Expression { .. })
            )
        });
    let api = ApiError::from(e);
    let Some(task) = failing else { return api };
    let named = ApiError::new(
        api.status(),
        api.code().clone(),
        format!("task {:?}: {}", task.name, api.message()),
    );
    match api.field() {
        Some(field) => named.with_field(field.to_owned()),
        None => named,
    }
}
