//! Runs: `POST /v1/tasks/{name}/runs` (enqueue), `GET /v1/runs/{id}`, `GET /v1/runs/{id}/explain`
//! (why it waits), `GET /v1/runs`, and what
//! a worker reports about a run it leased: `POST /v1/runs/{id}/heartbeat`, `/complete`,
//! `/fail`, `/release`, and `/cancel`.
//!
//! A run is answered as:
//! ```json
//! {"id": "18c2…-1", "task": "sync", "state": "waiting", "input": {"user_id": "u1"},
//!  "additional_metadata": {}, "attempt": 0, "max_attempts": 3, "waiting_on": "u1",
//!  "eligible_at_ms": 1700000060000, "skip_reason": null, "error": null, "output": null,
//!  "created_at_ms": 1700000000000, "updated_at_ms": 1700000000000,
//!  "lease_expires_at_ms": null, "worker_id": null}
//! ```
//! `*_at_ms` are Unix-epoch milliseconds; `eligible_at_ms` is rounded up (a worker that waits
//! until then is never early), the others down.
//!
//! Enqueueing evaluates the task's CEL expressions once: one that cannot be evaluated for this
//! input is 422 `invalid_expression` naming the field and quoting the expression, and no run
//! is stored (never an unlimited run). A run whose units can never fit is stored as `failed`
//! with the reason; one over its limits under `on_limit: skip` as `skipped`.
//!
//! The worker calls take `{"attempt"?}` (plus `output`, or `error` and `retry`): with
//! `attempt`, the call applies only to that attempt, so a worker whose lease lapsed (and whose
//! run was leased again) gets 409 `invalid_state` instead of touching the new attempt. A run
//! that is not running is 409 `invalid_state` too; an unknown id is 404 `unknown_run`.
//! `fail` retries (requeues while attempts remain) only with `"retry": true`, and with
//! `"pause": {"key", "for_ms" | "until_ms", "dynamic"?}` first pauses that key for everyone (an
//! upstream's 429 with `Retry-After`; docs/design.md §3.13). `complete` and `fail` take
//! `"feedback": {"key", "outcome"}` for an adaptive limit (docs/design.md §3.16), applied
//! first, as `POST /v1/limits/{key}/feedback`; `release` hands a
//! run back without counting the attempt and gives back the units it took.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;
use tollgate::{RunState, RunView};
use tollgate_api::{
    AttemptRequest, CancelRequest, CompleteRequest, EnqueueRequest, ErrorCode, FailRequest,
    RunListing as Listing,
};

use crate::api::tasks::unknown_task;
use crate::error::ApiError;
use crate::extract::{JsonBody, Segment};
use crate::state::AppState;

/// Runs `GET /v1/runs` answers when `limit` is not given.
pub(crate) const DEFAULT_LIST_LIMIT: usize = tollgate_api::DEFAULT_RUN_LIST_LIMIT;
/// The most runs `GET /v1/runs` answers.
pub(crate) const MAX_LIST_LIMIT: usize = tollgate_api::MAX_RUN_LIST_LIMIT;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/tasks/{name}/runs", post(enqueue))
        .route("/v1/runs", get(list))
        .route("/v1/runs/{id}", get(get_one))
        .route("/v1/runs/{id}/explain", get(explain))
        .route("/v1/runs/{id}/heartbeat", post(heartbeat))
        .route("/v1/runs/{id}/complete", post(complete))
        .route("/v1/runs/{id}/fail", post(fail))
        .route("/v1/runs/{id}/release", post(release))
        .route("/v1/runs/{id}/cancel", post(cancel))
}

/// `additional_metadata` when none is given (or `null`).
pub(crate) fn metadata(given: Option<Value>) -> Value {
    match given {
        None | Some(Value::Null) => Value::Object(serde_json::Map::new()),
        Some(v) => v,
    }
}

/// When a run may start, from a body's `delay_ms` / `run_at_ms` (at most one; a 400 naming
/// `run_at_ms` when both are given).
pub(crate) fn start_at(
    delay_ms: Option<u64>,
    run_at_ms: Option<u64>,
) -> Result<tollgate::StartAt, ApiError> {
    use tollgate::core::Nanos;
    // Instants stay exact everywhere (Redis's scripts count µs in doubles): ten years of delay
    // at most, and no instant past 2200.
    const MAX_DELAY_MS: u64 = 10 * 365 * 86_400_000;
    const MAX_RUN_AT_MS: u64 = 7_258_118_400_000;
    if delay_ms.is_some_and(|ms| ms > MAX_DELAY_MS) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidField,
            format!("delay_ms must be at most {MAX_DELAY_MS} (ten years)"),
        )
        .with_field("delay_ms"));
    }
    if run_at_ms.is_some_and(|ms| ms > MAX_RUN_AT_MS) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidField,
            format!("run_at_ms must be at most {MAX_RUN_AT_MS} (2200-01-01)"),
        )
        .with_field("run_at_ms"));
    }
    match (delay_ms, run_at_ms) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            ErrorCode::InvalidField,
            "give delay_ms (from now) or run_at_ms (an instant), not both",
        )
        .with_field("run_at_ms")),
        (Some(ms), None) => Ok(tollgate::StartAt::After(Nanos::from_millis(ms))),
        (None, Some(ms)) => Ok(tollgate::StartAt::At(Nanos::from_millis(ms))),
        (None, None) => Ok(tollgate::StartAt::Now),
    }
}

/// `POST /v1/tasks/{name}/runs`: 201 with the run (and `Location: /v1/runs/{id}`), once it is
/// durable.
async fn enqueue(
    State(state): State<AppState>,
    name: Result<Segment, ApiError>,
    JsonBody(req): JsonBody<EnqueueRequest>,
) -> Result<Response, ApiError> {
    let Segment(name) = name.map_err(|_| unknown_task("(not UTF-8)"))?;
    let start = start_at(req.delay_ms, req.run_at_ms)?;
    let run = state
        .queue()
        .enqueue_with(
            &name,
            req.input,
            metadata(req.additional_metadata),
            start,
            req.priority,
        )
        .await
        .map_err(|e| match e {
            tollgate::Error::UnknownTask { .. } => unknown_task(&name),
            e => ApiError::from(e),
        })?;
    let mut response = (StatusCode::CREATED, Json(&run)).into_response();
    // Run ids are made of hex digits and `-`: always a valid header value.
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/runs/{}", run.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

fn unknown_run(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::UnknownRun,
        format!("no run has id {id:?}"),
    )
}

/// An `{id}` segment: one that is not even text names no run.
fn run_id(segment: Result<Segment, ApiError>) -> Result<String, ApiError> {
    segment
        .map(|Segment(id)| id)
        .map_err(|_| unknown_run("(not UTF-8)"))
}

/// Engine errors of the worker calls, with a clearer word when a stale attempt is the cause.
async fn run_error(
    state: &AppState,
    id: &str,
    attempt: Option<u32>,
    e: tollgate::Error,
) -> ApiError {
    if let tollgate::Error::InvalidState { action, .. } = &e
        && let (Some(asked), Ok(run)) = (attempt, state.queue().run(id).await)
        && run.state == RunState::Running
        && run.attempt != asked
    {
        return ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::InvalidState,
            format!(
                "run {id:?} is on attempt {}, not {asked}: attempt {asked} is over (its lease \
                 expired or it was handed back), so this worker cannot {action} it",
                run.attempt
            ),
        )
        .with_field("attempt");
    }
    ApiError::from(e)
}

/// `GET /v1/runs/{id}`.
async fn get_one(
    State(state): State<AppState>,
    id: Result<Segment, ApiError>,
) -> Result<Json<RunView>, ApiError> {
    let id = run_id(id)?;
    state.queue().run(&id).await.map(Json).map_err(|e| match e {
        tollgate::Error::UnknownRun { .. } => unknown_run(&id),
        // Redis mode: unreachable is 503, not "no such run".
        other => other.into(),
    })
}

/// `GET /v1/runs/{id}/explain`: why the run waits, key by key (docs/design.md §3.14).
async fn explain(
    State(state): State<AppState>,
    id: Result<Segment, ApiError>,
) -> Result<Json<tollgate_api::Explanation>, ApiError> {
    let id = run_id(id)?;
    state
        .queue()
        .explain(&id)
        .await
        .map(Json)
        .map_err(|e| match e {
            tollgate::Error::UnknownRun { .. } => unknown_run(&id),
            other => other.into(),
        })
}

/// `POST /v1/runs/{id}/heartbeat` `{"attempt"?}`: extends the lease by the task's
/// `lease_timeout` from now; answers the run with its new `lease_expires_at_ms`.
async fn heartbeat(
    State(state): State<AppState>,
    id: Result<Segment, ApiError>,
    JsonBody(req): JsonBody<AttemptRequest>,
) -> Result<Json<RunView>, ApiError> {
    let id = run_id(id)?;
    let run = match state.queue().heartbeat(&id, req.attempt).await {
        Ok(run) => run,
        Err(e) => return Err(run_error(&state, &id, req.attempt, e).await),
    };
    Ok(Json(run))
}

/// `POST /v1/runs/{id}/complete` `{"output"?, "attempt"?}`: the run succeeded.
async fn complete(
    State(state): State<AppState>,
    id: Result<Segment, ApiError>,
    JsonBody(req): JsonBody<CompleteRequest>,
) -> Result<Json<RunView>, ApiError> {
    let id = run_id(id)?;
    // What the upstream said counts whatever becomes of this call (a lease that lapsed meanwhile
    // does not unsay it); a refused feedback leaves the run as it was.
    if let Some(f) = &req.feedback {
        crate::api::limits::feedback_key(&state, &f.key, "feedback.key", f.outcome).await?;
    }
    let run = match state.queue().complete(&id, req.attempt, req.output).await {
        Ok(run) => run,
        Err(e) => return Err(run_error(&state, &id, req.attempt, e).await),
    };
    Ok(Json(run))
}

/// `POST /v1/runs/{id}/fail` `{"error", "retry"?, "attempt"?, "retry_after_ms"?}`: with
/// `retry`, the run is queued again while attempts remain (`scheduled` first when
/// `retry_after_ms` or its task's `retry` backoff says to wait); otherwise (or when none
/// remain) it is `failed`.
async fn fail(
    State(state): State<AppState>,
    id: Result<Segment, ApiError>,
    JsonBody(req): JsonBody<FailRequest>,
) -> Result<Json<RunView>, ApiError> {
    let id = run_id(id)?;
    const MAX_RETRY_AFTER_MS: u64 = tollgate::task::MAX_RETRY_DELAY_MICROS / 1_000;
    if req.retry_after_ms.is_some_and(|ms| ms > MAX_RETRY_AFTER_MS) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidField,
            format!("retry_after_ms must be at most {MAX_RETRY_AFTER_MS} (a year)"),
        )
        .with_field("retry_after_ms"));
    }
    let retry_after = req.retry_after_ms.map(tollgate::core::Nanos::from_millis);
    // An upstream's 429 pauses the key for everyone first, so the retry itself waits for it.
    if let Some(p) = &req.pause {
        let end = crate::api::limits::pause_end(p.for_ms, p.until_ms, "pause.")?;
        crate::api::limits::pause_key(&state, &p.key, "pause.key", p.dynamic, end).await?;
    }
    // A throttled upstream lowers its adaptive limit first, so the retry waits on the new one.
    if let Some(f) = &req.feedback {
        crate::api::limits::feedback_key(&state, &f.key, "feedback.key", f.outcome).await?;
    }
    let run = match state
        .queue()
        .fail_with(&id, req.attempt, req.error, req.retry, retry_after)
        .await
    {
        Ok(run) => run,
        Err(e) => return Err(run_error(&state, &id, req.attempt, e).await),
    };
    Ok(Json(run))
}

/// `POST /v1/runs/{id}/release` `{"attempt"?}`: hands the run back (graceful worker shutdown);
/// the attempt is not counted.
async fn release(
    State(state): State<AppState>,
    id: Result<Segment, ApiError>,
    JsonBody(req): JsonBody<AttemptRequest>,
) -> Result<Json<RunView>, ApiError> {
    let id = run_id(id)?;
    let run = match state.queue().release(&id, req.attempt).await {
        Ok(run) => run,
        Err(e) => return Err(run_error(&state, &id, req.attempt, e).await),
    };
    Ok(Json(run))
}

/// `POST /v1/runs/{id}/cancel` `{}`: ends a run that has not ended (409 `invalid_state` for
/// one that has). A running run's worker learns it on its next call (409).
async fn cancel(
    State(state): State<AppState>,
    id: Result<Segment, ApiError>,
    JsonBody(CancelRequest {}): JsonBody<CancelRequest>,
) -> Result<Json<RunView>, ApiError> {
    let id = run_id(id)?;
    let run = match state.queue().cancel(&id).await {
        Ok(run) => run,
        Err(e) => return Err(run_error(&state, &id, None, e).await),
    };
    Ok(Json(run))
}

/// The query of `GET /v1/runs`.
#[derive(Debug, Default, PartialEq)]
struct ListQuery {
    task: Option<String>,
    state: Option<RunState>,
    limit: usize,
}

impl ListQuery {
    /// Parses `task=&state=&limit=`. Empty values count as absent; unknown names are refused.
    fn parse(query: Option<&str>) -> Result<ListQuery, ApiError> {
        let mut out = ListQuery {
            limit: DEFAULT_LIST_LIMIT,
            ..ListQuery::default()
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = percent_decode(name).unwrap_or_default();
            let value = percent_decode(value).ok_or_else(|| {
                ApiError::bad_request(
                    ErrorCode::InvalidField,
                    format!("the {name} parameter is not valid percent-encoded UTF-8"),
                )
                .with_field(name.clone())
            })?;
            if value.is_empty() {
                continue;
            }
            match name.as_str() {
                "task" => out.task = Some(value),
                "state" => {
                    out.state = Some(value.parse().map_err(|message: String| {
                        ApiError::bad_request(ErrorCode::InvalidField, message).with_field("state")
                    })?);
                }
                "limit" => {
                    out.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
                        .ok_or_else(|| {
                            ApiError::bad_request(
                                ErrorCode::InvalidField,
                                format!(
                                    "invalid limit {value:?}: must be a whole number between 1 and {MAX_LIST_LIMIT}"
                                ),
                            )
                            .with_field("limit")
                        })?;
                }
                _ => {
                    return Err(ApiError::bad_request(
                        ErrorCode::UnknownField,
                        format!("unknown parameter {name:?}: expected task, state or limit"),
                    )
                    .with_field(name));
                }
            }
        }
        Ok(out)
    }
}

/// Decodes `%XX` escapes and `+` (a space, as forms send it); `None` for a bad escape or bytes
/// that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `GET /v1/runs?task=&state=&limit=`: runs newest first, `limit` (default 100, at most 1000).
/// A `task` that is not defined is 422 `unknown_task` (a typo would otherwise read as "no
/// runs"); a bad `state` is 400 `invalid_field`.
async fn list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Listing>, ApiError> {
    let q = ListQuery::parse(query.as_deref())?;
    if let Some(task) = &q.task
        && state.queue().task(task).await?.is_none()
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::UnknownTask,
            format!("no task is defined under name {task:?}"),
        )
        .with_field("task"));
    }
    let runs = state
        .queue()
        .runs(q.task.as_deref(), q.state, q.limit)
        .await?;
    Ok(Json(Listing { runs }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_queries_parse_and_refuse_what_they_do_not_know() {
        let q = |s: &str| ListQuery::parse(Some(s));
        assert_eq!(
            q("task=send%20email&state=waiting&limit=5").ok(),
            Some(ListQuery {
                task: Some("send email".into()),
                state: Some(RunState::Waiting),
                limit: 5
            })
        );
        assert_eq!(
            q("task=&state=").ok(),
            Some(ListQuery {
                limit: DEFAULT_LIST_LIMIT,
                ..ListQuery::default()
            })
        );
        assert_eq!(
            q("task=a+b").ok().and_then(|q| q.task).as_deref(),
            Some("a b")
        );
        let err = |s: &str| {
            let e = q(s).unwrap_err();
            (e.code().as_str().to_owned(), e.field().map(str::to_owned))
        };
        let f = |s: &str| Some(s.to_owned());
        assert_eq!(err("state=done"), ("invalid_field".to_owned(), f("state")));
        assert_eq!(err("limit=0"), ("invalid_field".to_owned(), f("limit")));
        assert_eq!(err("limit=1001"), ("invalid_field".to_owned(), f("limit")));
        assert_eq!(err("limit=-1"), ("invalid_field".to_owned(), f("limit")));
        assert_eq!(err("limit=lots"), ("invalid_field".to_owned(), f("limit")));
        assert_eq!(
            err("status=queued"),
            ("unknown_field".to_owned(), f("status"))
        );
        assert_eq!(err("task=%FF"), ("invalid_field".to_owned(), f("task")));
        assert_eq!(err("task=%4"), ("invalid_field".to_owned(), f("task")));
    }

    #[test]
    fn percent_decoding_takes_escapes_and_plus() {
        assert_eq!(percent_decode("a%2Fb+c").as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%FF"), None);
    }
}
