//! `GET /healthz`: liveness.

use axum::routing::get;
use axum::{Json, Router};
use tollgate_api::Health;

use crate::state::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz))
}

/// `200 {"status": "ok"}` while the server accepts requests.
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
    })
}
