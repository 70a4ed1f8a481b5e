//! `POST /v1/events`: an event starts one run of every task whose `triggers` name it.
//!
//! ```json
//! {"name": "intercom/company.updated", "data": {"company_id": "c1"}, "additional_metadata": {}}
//! ```
//! answers `202` (each run is enqueued, none has started):
//! ```json
//! {"runs": [{"id": "18c2…-1", "task": "sync-company", "state": "queued"}]}
//! ```
//! Each run's input is `data`, and its expressions see `event` as `{"name", "data"}`. Each
//! triggered task's run stands alone: a run over its limits under `on_limit: skip` is listed
//! with state `skipped`; one whose expressions cannot be evaluated for this event is stored as
//! `failed` and listed with its `error` (`invalid_expression: rate_limits[0].dynamic_key:
//! expression "event.data.id" failed: …`), and the other tasks' runs proceed. An event no task
//! listens to answers `{"runs": []}`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use tollgate::MAX_KEY_LEN;
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
    let start = super::runs::start_at(req.delay_ms, req.run_at_ms)?;
    let runs = state
        .queue()
        .emit_at(&name, req.data, additional_metadata, start)
        .await?;
    let runs = runs
        .into_iter()
        .map(|r| EventRun {
            id: r.id,
            task: r.task,
            state: r.state,
            error: r.error,
        })
        .collect();
    Ok((StatusCode::ACCEPTED, Json(EventAnswer { runs })))
}
