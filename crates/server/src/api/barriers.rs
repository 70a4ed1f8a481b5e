//! Barriers: `POST /v1/barriers/{key}` `{"parties", "ttl_ms"}` creates one (or answers the
//! live one of that key), `GET /v1/barriers/{key}` shows it, and
//! `POST /v1/barriers/{key}/wait` `{"timeout_ms"?}` arrives and waits for every party:
//! `{"released": true}`, or `false` when the timeout (default and cap: [`crate::MAX_WAIT`])
//! passes first. A missing barrier is 404 `unknown_barrier`, an expired one 409
//! `barrier_expired`: never a silent pass.
//!
//! Status: `{"key", "released", "arrived", "parties", "expires_at_ms"}`.

use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use tollgate::core::{Barrier, BarrierStatus};
use tollgate_api::{
    Barrier as BarrierView, BarrierCreate as CreateRequest, BarrierReleased as WaitAnswer,
    BarrierWait as WaitRequest,
};

use crate::api::{instant_ms, period_ms, validate_key};
use crate::error::ApiError;
use crate::extract::{JsonBody, Segment};
use crate::state::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/barriers/{key}", post(create).get(status))
        .route("/v1/barriers/{key}/wait", post(wait))
}

/// A barrier as the API shows it.
fn view(key: String, s: BarrierStatus) -> BarrierView {
    BarrierView {
        key,
        released: s.released,
        arrived: s.arrived,
        parties: s.parties,
        expires_at_ms: instant_ms(s.expires_at),
    }
}

/// `POST /v1/barriers/{key}`.
async fn create(
    State(state): State<AppState>,
    Segment(key): Segment,
    JsonBody(req): JsonBody<CreateRequest>,
) -> Result<Json<BarrierView>, ApiError> {
    validate_key(&key, "key")?;
    let ttl = period_ms(req.ttl_ms, "ttl_ms")?;
    let barrier = Barrier::new(req.parties, ttl)
        .map_err(|e| ApiError::from(tollgate::Error::from(e)).with_field("parties"))?;
    let status = state.limits().create_barrier(&key, barrier).await?;
    Ok(Json(view(key, status)))
}

/// `GET /v1/barriers/{key}`.
async fn status(
    State(state): State<AppState>,
    Segment(key): Segment,
) -> Result<Json<BarrierView>, ApiError> {
    validate_key(&key, "key")?;
    let status = state.limits().barrier_status(&key).await?;
    Ok(Json(view(key, status)))
}

/// `POST /v1/barriers/{key}/wait`.
async fn wait(
    State(state): State<AppState>,
    Segment(key): Segment,
    JsonBody(req): JsonBody<WaitRequest>,
) -> Result<Json<WaitAnswer>, ApiError> {
    validate_key(&key, "key")?;
    let max = state.settings().max_wait;
    let timeout = req
        .timeout_ms
        .map_or(max, |ms| Duration::from_millis(ms).min(max));
    let limits = state.limits();
    let released = tokio::select! {
        r = limits.wait_barrier(&key, timeout) => r?,
        // Shutting down: the arrival counts; answer with where the barrier stands.
        () = state.shutting_down() => limits.barrier_status(&key).await?.released,
    };
    Ok(Json(WaitAnswer { released }))
}
