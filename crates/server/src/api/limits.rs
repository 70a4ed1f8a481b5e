//! Declared (static) limits: `PUT/GET/DELETE /v1/limits/{key}` and `GET /v1/limits`.
//!
//! A limit is answered as its key, its namespace, its canonical definition (the fields of
//! [`LimitSpec`], defaults filled in) and its live state:
//! ```json
//! {"key": "stripe-api", "namespace": "static", "algorithm": "gcra", "limit": 10,
//!  "period": "1s", "burst": 5, "used": 2, "remaining": 3, "reset_after_ms": 200}
//! ```
//! For a concurrency limit `used` counts the live leases, and `reset_after_ms` is `null`.
//! The listing also shows the dynamic keys that have state (`"namespace": "dynamic"`), and
//! how many there are (`"dynamic_total"`). `GET /v1/limits?dynamic=N` keeps only the `N`
//! busiest dynamic keys (the largest share of their limit used first): a dashboard polling
//! it stays small however many per-user keys are live.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use tollgate::core::Limit;
use tollgate::{LimitInfo, LimitSpec, LimitSpecExt, Namespace, StateView};
use tollgate_api::{
    ErrorCode, Limit as LimitView, LimitListing as Listing, Namespace as ShownNamespace,
};

use crate::api::{duration_ms, validate_key};
use crate::error::ApiError;
use crate::extract::{JsonBody, Segment};
use crate::state::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/limits", get(list))
        .route("/v1/limits/{key}", get(get_one).put(put).delete(remove))
}

/// One limit with its live state.
fn view(info: LimitInfo) -> LimitView {
    let (used, remaining, reset_after_ms) = match info.state {
        StateView::Rate(u) => (u.used, u.remaining, Some(duration_ms(u.reset_after))),
        StateView::Concurrency { live, limit } => (live, limit.saturating_sub(live), None),
        StateView::Barrier(b) => (
            u64::from(b.arrived),
            u64::from(b.parties.saturating_sub(b.arrived)),
            None,
        ),
    };
    LimitView {
        key: info.key,
        namespace: namespace_name(info.namespace),
        definition: LimitSpec::from_limit(&info.limit),
        used,
        remaining,
        reset_after_ms,
    }
}

fn namespace_name(ns: Namespace) -> ShownNamespace {
    match ns {
        Namespace::Static => ShownNamespace::Static,
        Namespace::Dynamic => ShownNamespace::Dynamic,
        Namespace::Barrier => ShownNamespace::Barrier,
    }
}

/// The share of a limit's capacity in use, for ordering (0 when it holds nothing).
fn load(l: &LimitView) -> f64 {
    let capacity = l.used.saturating_add(l.remaining);
    if capacity == 0 {
        0.0
    } else {
        l.used as f64 / capacity as f64
    }
}

/// Every declared limit, then the dynamic keys: all of them, or the `dynamic` busiest.
pub(crate) async fn listing(state: &AppState, dynamic: Option<usize>) -> Result<Listing, ApiError> {
    let limits: Vec<LimitView> = state.limits().list().await?.into_iter().map(view).collect();
    let (mut dynamic_keys, mut limits): (Vec<LimitView>, Vec<LimitView>) = limits
        .into_iter()
        .partition(|l| l.namespace == ShownNamespace::Dynamic);
    let dynamic_total = dynamic_keys.len();
    if let Some(n) = dynamic {
        dynamic_keys.sort_by(|a, b| {
            load(b)
                .total_cmp(&load(a))
                .then(b.used.cmp(&a.used))
                .then_with(|| a.key.cmp(&b.key))
        });
        dynamic_keys.truncate(n);
    }
    limits.extend(dynamic_keys);
    Ok(Listing {
        limits,
        dynamic_total,
    })
}

/// `GET /v1/limits?dynamic=N`: every declared limit, then every dynamic key with state (or
/// the `N` busiest).
async fn list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Listing>, ApiError> {
    let mut dynamic = None;
    for pair in query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("dynamic", n)) => {
                dynamic = Some(n.parse::<usize>().map_err(|_| {
                    ApiError::bad_request(
                        ErrorCode::InvalidField,
                        format!("dynamic must be a number of keys, not {n:?}"),
                    )
                    .with_field("dynamic")
                })?);
            }
            _ => {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidField,
                    "GET /v1/limits takes only the parameter dynamic=N",
                )
                .with_field(pair.split('=').next().unwrap_or(pair).to_owned()));
            }
        }
    }
    Ok(Json(listing(&state, dynamic).await?))
}

fn unknown(key: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::UnknownLimit,
        format!("no limit is declared under key {key:?}"),
    )
    .with_field("key")
}

/// `GET /v1/limits/{key}`.
async fn get_one(
    State(state): State<AppState>,
    Segment(key): Segment,
) -> Result<Json<LimitView>, ApiError> {
    validate_key(&key, "key")?;
    match state.limits().get(&key).await? {
        Some(info) => Ok(Json(view(info))),
        None => Err(unknown(&key)),
    }
}

/// `PUT /v1/limits/{key}`: declares or redefines; usage is kept across a redefinition of the
/// same kind. Answers the canonical limit with its live state.
async fn put(
    State(state): State<AppState>,
    Segment(key): Segment,
    JsonBody(spec): JsonBody<LimitSpec>,
) -> Result<Json<LimitView>, ApiError> {
    validate_key(&key, "key")?;
    if let Limit::Barrier(_) = spec.to_limit()? {
        // A barrier is a one-off meeting point with a lifetime, not a standing limit: it has
        // its own routes, and a declared one could never be acquired or listed.
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::WrongAlgorithm,
            "barriers are created with POST /v1/barriers/{key}, not declared as limits",
        )
        .with_field("algorithm"));
    }
    // Durable (SQLite) before it is answered.
    state.queue().put_limit(&key, spec).await?;
    match state.limits().get(&key).await? {
        Some(info) => Ok(Json(view(info))),
        // Removed by a concurrent DELETE between the two calls.
        None => Err(unknown(&key)),
    }
}

/// `DELETE /v1/limits/{key}`: 204, 404 `unknown_limit`, or 409 `limit_in_use` while a task
/// names it.
async fn remove(
    State(state): State<AppState>,
    Segment(key): Segment,
) -> Result<StatusCode, ApiError> {
    validate_key(&key, "key")?;
    if state.queue().remove_limit(&key).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(unknown(&key))
    }
}
