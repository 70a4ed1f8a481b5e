//! Declared (static) limits: `PUT/GET/DELETE /v1/limits/{key}` and `GET /v1/limits`; pauses:
//! `POST/DELETE /v1/limits/{key}/pause` and `GET /v1/pauses` (docs/design.md §3.13).
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
//! it stays small however many per-user keys are live. A paused key shows when its pause ends
//! (`paused_until_ms`, else `null`), an adaptive limit its bounds (`adaptive`) and its limit in
//! force (`limit_in_force`, also its `limit`; `null` for a limit that does not adapt).
//!
//! `POST /v1/limits/{key}/feedback` `{"outcome": "ok" | "throttled"}` steps an adaptive limit
//! (docs/design.md §3.16) and answers the limit as `GET` does.

use std::collections::BTreeMap;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use tollgate::core::Limit;
use tollgate::core::Nanos;
use tollgate::{
    Adaptive, Declared, Feedback, LimitInfo, LimitSpec, LimitSpecExt, Namespace, Pause, PauseEnd,
    StateView,
};
use tollgate_api::{
    ErrorCode, FeedbackOutcome, FeedbackRequest, Limit as LimitView, LimitListing as Listing,
    Namespace as ShownNamespace, Pause as PauseView, PauseListing, PauseRequest, Resumed,
};

use crate::api::{duration_ms, period_ms, validate_key};
use crate::error::ApiError;
use crate::extract::{JsonBody, Segment};
use crate::state::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/limits", get(list))
        .route("/v1/limits/{key}", get(get_one).put(put).delete(remove))
        .route("/v1/limits/{key}/pause", post(pause).delete(resume))
        .route("/v1/limits/{key}/feedback", post(feedback))
        .route("/v1/pauses", get(pauses))
}

/// When `info`'s key is paused until, among the pauses in force.
fn paused_until(pauses: &[Pause], ns: Namespace, key: &str) -> Option<u64> {
    pauses
        .iter()
        .find(|p| p.namespace == ns && p.key == key)
        .map(|p| p.until.as_millis_ceil())
}

/// What the views of limits show besides a limit's own state: the pauses in force and the
/// bounds of the adaptive limits.
pub(crate) struct Beside {
    pauses: Vec<Pause>,
    adaptive: BTreeMap<String, Adaptive>,
}

impl Beside {
    /// Read now.
    pub(crate) async fn read(state: &AppState) -> Result<Beside, ApiError> {
        Ok(Beside {
            pauses: state.queue().pauses().await?,
            adaptive: state.queue().adaptive_limits().await?,
        })
    }
}

/// A limit's definition: its declared bounds when it is a static limit that adapts.
pub(crate) fn declared(info: &LimitInfo, adaptive: &BTreeMap<String, Adaptive>) -> Declared {
    match adaptive.get(&info.key) {
        Some(b) if info.namespace == Namespace::Static => {
            Declared::adaptive(info.limit, *b).unwrap_or(Declared::fixed(info.limit))
        }
        _ => Declared::fixed(info.limit),
    }
}

/// One limit with its live state.
fn view(info: LimitInfo, beside: &Beside) -> LimitView {
    let declared = declared(&info, &beside.adaptive);
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
        paused_until_ms: paused_until(&beside.pauses, info.namespace, &info.key),
        key: info.key,
        namespace: namespace_name(info.namespace),
        definition: LimitSpec::from_declared(&declared),
        used,
        remaining,
        reset_after_ms,
        limit_in_force: declared.limit_in_force(),
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
    let beside = Beside::read(state).await?;
    let limits: Vec<LimitView> = state
        .limits()
        .list()
        .await?
        .into_iter()
        .map(|info| view(info, &beside))
        .collect();
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
    Ok(Json(one(&state, &key).await?))
}

/// Declared limit `key` as `GET /v1/limits/{key}` answers it.
async fn one(state: &AppState, key: &str) -> Result<LimitView, ApiError> {
    let beside = Beside::read(state).await?;
    match state.limits().get(key).await? {
        Some(info) => Ok(view(info, &beside)),
        // Never declared, or removed by a concurrent DELETE.
        None => Err(unknown(key)),
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
    if let Limit::Barrier(_) = spec.to_declared()?.limit() {
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
    Ok(Json(one(&state, &key).await?))
}

/// The core's name for what a worker reported.
pub(crate) fn outcome(o: FeedbackOutcome) -> Feedback {
    match o {
        FeedbackOutcome::Ok => Feedback::Ok,
        FeedbackOutcome::Throttled => Feedback::Throttled,
    }
}

/// Reports `outcome` for adaptive limit `key` (checked, named as `field` in errors): one AIMD
/// step of its limit in force, and the runs parked on it re-planned (docs/design.md §3.16).
pub(crate) async fn feedback_key(
    state: &AppState,
    key: &str,
    field: &str,
    outcome: FeedbackOutcome,
) -> Result<(), ApiError> {
    validate_key(key, field)?;
    state
        .queue()
        .feedback(key, self::outcome(outcome))
        .await
        .map(drop)
        .map_err(|e| match e {
            tollgate::Error::UnknownLimit { .. } => unknown(key).with_field(field.to_owned()),
            e @ tollgate::Error::NotAdaptive { .. } => {
                ApiError::from(e).with_field(field.to_owned())
            }
            e => ApiError::from(e),
        })
}

/// `POST /v1/limits/{key}/feedback` `{"outcome": "ok" | "throttled"}`: what a worker's call
/// to the upstream an adaptive limit protects met. Answers the limit, its new limit in force
/// included.
async fn feedback(
    State(state): State<AppState>,
    Segment(key): Segment,
    JsonBody(req): JsonBody<FeedbackRequest>,
) -> Result<Json<LimitView>, ApiError> {
    feedback_key(&state, &key, "key", req.outcome).await?;
    Ok(Json(one(&state, &key).await?))
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

/// The latest instant a pause may end at: 2200-01-01 (instants stay exact in Redis's doubles).
const MAX_UNTIL_MS: u64 = 7_258_118_400_000;

/// When a pause ends, from a body's `for_ms` / `until_ms` (exactly one), the fields named as
/// `field_prefix` + the field (`"pause."` in a `fail` body).
pub(crate) fn pause_end(
    for_ms: Option<u64>,
    until_ms: Option<u64>,
    field_prefix: &str,
) -> Result<PauseEnd, ApiError> {
    match (for_ms, until_ms) {
        (Some(ms), None) => {
            let field = format!("{field_prefix}for_ms");
            Ok(PauseEnd::For(period_ms(ms, &field)?.as_nanos()))
        }
        (None, Some(ms)) if ms > MAX_UNTIL_MS => Err(ApiError::bad_request(
            ErrorCode::InvalidField,
            format!("until_ms must be at most {MAX_UNTIL_MS} (2200-01-01)"),
        )
        .with_field(format!("{field_prefix}until_ms"))),
        (None, Some(ms)) => Ok(PauseEnd::Until(Nanos::from_millis(ms))),
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            ErrorCode::InvalidField,
            "give for_ms (from now) or until_ms (an instant), not both",
        )
        .with_field(format!("{field_prefix}until_ms"))),
        (None, None) => Err(ApiError::bad_request(
            ErrorCode::InvalidField,
            "a pause needs for_ms (milliseconds from now) or until_ms (a Unix-epoch instant in milliseconds)",
        )
        .with_field(format!("{field_prefix}for_ms"))),
    }
}

fn namespace_of(dynamic: bool) -> Namespace {
    if dynamic {
        Namespace::Dynamic
    } else {
        Namespace::Static
    }
}

/// Pauses `key` (checked, named as `field`) until `end`; the pause in force as answered.
pub(crate) async fn pause_key(
    state: &AppState,
    key: &str,
    field: &str,
    dynamic: bool,
    end: PauseEnd,
) -> Result<PauseView, ApiError> {
    validate_key(key, field)?;
    let ns = namespace_of(dynamic);
    let until = state
        .queue()
        .pause(ns, key, end)
        .await
        .map_err(|e| match e {
            tollgate::Error::UnknownLimit { .. } => ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::UnknownLimit,
                format!(
                    "no limit is declared under key {key:?} (a dynamic key is paused with \"dynamic\": true)"
                ),
            )
            .with_field(field.to_owned()),
            e => ApiError::from(e),
        })?;
    let now = state.now();
    Ok(PauseView {
        key: key.to_owned(),
        namespace: namespace_name(ns),
        paused_until_ms: (until > now).then(|| until.as_millis_ceil()),
    })
}

/// `POST /v1/limits/{key}/pause` `{"for_ms" | "until_ms", "dynamic"?}`: every acquire and run
/// on the key waits until the pause ends (a pause in force that ends later is kept). Answers
/// the pause in force.
async fn pause(
    State(state): State<AppState>,
    Segment(key): Segment,
    JsonBody(req): JsonBody<PauseRequest>,
) -> Result<Json<PauseView>, ApiError> {
    let end = pause_end(req.for_ms, req.until_ms, "")?;
    Ok(Json(
        pause_key(&state, &key, "key", req.dynamic, end).await?,
    ))
}

/// `DELETE /v1/limits/{key}/pause[?dynamic=true]`: ends the pause now; the runs waiting on the
/// key are tried at once.
async fn resume(
    State(state): State<AppState>,
    Segment(key): Segment,
    RawQuery(query): RawQuery,
) -> Result<Json<Resumed>, ApiError> {
    validate_key(&key, "key")?;
    let mut dynamic = false;
    for pair in query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        dynamic = match pair.split_once('=') {
            Some(("dynamic", "true")) => true,
            Some(("dynamic", "false")) => false,
            _ => {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidField,
                    format!(
                        "DELETE /v1/limits/{{key}}/pause takes only dynamic=true or dynamic=false, not {pair:?}"
                    ),
                )
                .with_field("dynamic"));
            }
        };
    }
    let ns = namespace_of(dynamic);
    let was_paused = state.queue().resume(ns, &key).await?;
    Ok(Json(Resumed {
        key,
        namespace: namespace_name(ns),
        was_paused,
    }))
}

/// `GET /v1/pauses`: every pause in force.
async fn pauses(State(state): State<AppState>) -> Result<Json<PauseListing>, ApiError> {
    let pauses = state
        .queue()
        .pauses()
        .await?
        .into_iter()
        .map(|p| PauseView {
            paused_until_ms: Some(p.until.as_millis_ceil()),
            namespace: namespace_name(p.namespace),
            key: p.key,
        })
        .collect();
    Ok(Json(PauseListing { pauses }))
}
