//! `POST /v1/acquire` and `POST /v1/acquire/batch`: atomic multi-key decisions.
//!
//! ```json
//! {"limits": [{"key": "stripe-api"}, {"key": "user:42", "units": 2, "rate": "10/m"}], "wait_ms": 500}
//! ```
//! An entry without a definition names a declared limit (404 `unknown_limit` otherwise). An
//! entry carrying one (`rate`, or `limit` + `period`, `algorithm`, …) is a dynamic key: its
//! state lives in the dynamic namespace, apart from any declared limit of the same name, and
//! the latest request's parameters apply (usage kept).
//!
//! The answer, `200` whether allowed or not (a denial is a decision, not an error):
//! ```json
//! {"allowed": false, "retry_after_ms": 1200,
//!  "decisions": [{"key": "stripe-api", "allowed": true, "limit": 10, "remaining": 4,
//!                 "retry_after_ms": 0, "reset_after_ms": 600}, ...]}
//! ```
//! All entries are consumed or none: a denied request took nothing. `wait_ms` (capped at
//! [`crate::MAX_WAIT`]) waits, without polling, until the request is admitted or the wait it
//! would need no longer fits, and answers as soon as it is admitted.
//!
//! When the store is unreachable, `--on-store-error closed` (default) answers 503
//! `store_unavailable` (`"transient": true`); `open` answers allowed, each decision with
//! `limit` and `remaining` 0 (nothing was counted). Leases and barriers always fail closed.
//!
//! Headers, from the most restrictive decision (on a denial, the denied key that needs the
//! longest wait; otherwise the key with the fewest remaining): `RateLimit-Limit`,
//! `RateLimit-Remaining`, `RateLimit-Reset` (seconds, rounded up), and `Retry-After` (seconds,
//! rounded up) on a denial.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use tollgate::core::{Nanos, RateLimit};
use tollgate::{AcquireEntry, Acquired, LimitSpecExt};
use tollgate_api::{
    AcquireEntry as EntryBody, AcquireRequest, Acquisition as Answer, BatchAnswer,
    BatchOutcome as BatchResult, BatchRequest, ErrorCode, KeyDecision as DecisionView,
    MAX_ACQUIRE_BATCH as MAX_BATCH, MAX_ACQUIRE_LIMITS as MAX_ENTRIES,
};

use crate::api::{duration_ms, validate_key};
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::state::{AppState, StoreErrorPolicy};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/acquire", post(acquire))
        .route("/v1/acquire/batch", post(batch))
}

/// A validated entry, owning its key.
struct Entry {
    key: String,
    inline: Option<RateLimit>,
    units: u32,
}

impl Entry {
    fn as_engine(&self) -> AcquireEntry<'_> {
        match self.inline {
            Some(limit) => AcquireEntry::dynamic(&self.key, limit, self.units),
            None => AcquireEntry::new(&self.key, self.units),
        }
    }
}

/// Validates one request's entries; `prefix` locates them in the body (`requests[3].`).
fn prepare(limits: Vec<EntryBody>, prefix: &str) -> Result<Vec<Entry>, ApiError> {
    if limits.is_empty() {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidField,
            "a request must name at least one limit",
        )
        .with_field(format!("{prefix}limits")));
    }
    if limits.len() > MAX_ENTRIES {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidField,
            format!(
                "a request may name at most {MAX_ENTRIES} limits, this one names {}",
                limits.len()
            ),
        )
        .with_field(format!("{prefix}limits")));
    }
    limits
        .into_iter()
        .enumerate()
        .map(|(i, mut body)| {
            // Field paths are built only for an error: a valid entry allocates none.
            let at = || format!("{prefix}limits[{i}]");
            if tollgate::key_problem(&body.key).is_some() {
                validate_key(&body.key, &format!("{}.key", at()))?;
            }
            let units = body.units.unwrap_or(1);
            if units == 0 {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidField,
                    "units must be at least 1",
                )
                .with_field(format!("{}.units", at())));
            }
            let key = std::mem::take(&mut body.key);
            let inline = match body.definition.take() {
                None => None,
                Some(spec) => Some(spec.to_rate_limit().map_err(|e| e.within(&at()))?),
            };
            Ok(Entry { key, inline, units })
        })
        .collect()
}

/// The answer to `entries`, decided.
fn answer(entries: &[Entry], acquired: &Acquired) -> Answer {
    Answer {
        allowed: acquired.allowed,
        retry_after_ms: duration_ms(acquired.retry_after()),
        decisions: entries
            .iter()
            .zip(&acquired.decisions)
            .map(|(e, d)| DecisionView {
                key: e.key.clone(),
                allowed: d.allowed,
                limit: d.limit,
                remaining: d.remaining,
                retry_after_ms: duration_ms(d.retry_after),
                reset_after_ms: duration_ms(d.reset_after),
            })
            .collect(),
    }
}

/// `--on-store-error open`: admitted, without counting.
fn fail_open(entries: &[Entry]) -> Answer {
    Answer {
        allowed: true,
        retry_after_ms: 0,
        decisions: entries
            .iter()
            .map(|e| DecisionView {
                key: e.key.clone(),
                allowed: true,
                limit: 0,
                remaining: 0,
                retry_after_ms: 0,
                reset_after_ms: 0,
            })
            .collect(),
    }
}

/// An engine error, located at the entry it is about (`prefix` as in [`prepare`]).
fn locate(e: tollgate::Error, entries: &[Entry], prefix: &str) -> ApiError {
    use tollgate::Error as E;
    let located = match &e {
        E::UnknownLimit { key } => {
            // Only entries without a definition look up declared limits.
            let i = entries
                .iter()
                .position(|x| x.inline.is_none() && &x.key == key);
            i.map(|i| format!("{prefix}limits[{i}].key"))
        }
        E::WrongAlgorithm { key, .. } | E::InvalidKey { key, .. } => entries
            .iter()
            .position(|x| &x.key == key)
            .map(|i| format!("{prefix}limits[{i}].key")),
        E::InsufficientCapacity { key, .. } | E::ZeroUnits { key } => entries
            .iter()
            .position(|x| &x.key == key)
            .map(|i| format!("{prefix}limits[{i}].units")),
        _ => None,
    };
    let err = ApiError::from(e);
    match located {
        Some(field) => err.with_field(field),
        None => err,
    }
}

/// Decides one validated request, waiting up to `wait` (zero: no wait).
async fn decide(
    state: &AppState,
    entries: &[Entry],
    wait: Duration,
    prefix: &str,
) -> Result<Answer, ApiError> {
    let engine: Vec<AcquireEntry<'_>> = entries.iter().map(Entry::as_engine).collect();
    let limits = state.limits();
    let result = if wait.is_zero() {
        let started = std::time::Instant::now();
        let r = limits.try_acquire(&engine).await;
        state.metrics().decision_time(started.elapsed());
        r
    } else {
        tokio::select! {
            r = limits.acquire(&engine, wait) => r,
            // Shutting down: answer with the decision as it stands now.
            () = state.shutting_down() => limits.try_acquire(&engine).await,
        }
    };
    match result {
        Ok(acquired) => {
            count_decisions(state, entries, &acquired);
            if acquired.allowed {
                // Journalled so that after a crash these keys are treated as fully used.
                state.queue().note_direct_use(&engine).await?;
            }
            Ok(answer(entries, &acquired))
        }
        Err(e) => {
            let err = locate(e, entries, prefix);
            if err.is_transient() && state.settings().on_store_error == StoreErrorPolicy::Open {
                Ok(fail_open(entries))
            } else {
                Err(err)
            }
        }
    }
}

/// Counts a decision per entry under a bounded label: its declared key, or `dynamic` for an
/// inline key (never the key itself, which may be a user id).
fn count_decisions(state: &AppState, entries: &[Entry], acquired: &Acquired) {
    let metrics = state.metrics();
    for (e, d) in entries.iter().zip(&acquired.decisions) {
        let limit = match e.inline {
            Some(_) => crate::metrics::DYNAMIC,
            None => e.key.as_str(),
        };
        if acquired.allowed {
            metrics.decision(limit, true);
        } else if !d.allowed {
            metrics.decision(limit, false);
        }
    }
}

/// Whole seconds, rounded up.
fn secs_ceil(d: Nanos) -> u64 {
    d.as_nanos().div_ceil(1_000_000_000)
}

/// Adds the `RateLimit-*` (and `Retry-After`) headers to `headers`, the response's own: no
/// second map to build and merge.
fn rate_limit_headers(headers: &mut HeaderMap, answer: &Answer, acquired_retry_after: Nanos) {
    let decisions = &answer.decisions;
    let restrictive = if answer.allowed {
        decisions
            .iter()
            .min_by_key(|d| (d.remaining, std::cmp::Reverse(d.reset_after_ms)))
    } else {
        decisions
            .iter()
            .filter(|d| !d.allowed)
            .max_by_key(|d| (d.retry_after_ms, d.reset_after_ms))
    };
    let number = |n: u64| HeaderValue::from(n);
    if let Some(d) = restrictive {
        headers.insert(HeaderName::from_static("ratelimit-limit"), number(d.limit));
        headers.insert(
            HeaderName::from_static("ratelimit-remaining"),
            number(d.remaining),
        );
        headers.insert(
            HeaderName::from_static("ratelimit-reset"),
            number(d.reset_after_ms.div_ceil(1_000)),
        );
    }
    if !answer.allowed {
        headers.insert(
            header::RETRY_AFTER,
            number(secs_ceil(acquired_retry_after).max(1)),
        );
    }
}

/// `POST /v1/acquire`.
async fn acquire(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<AcquireRequest>,
) -> Result<Response, ApiError> {
    let entries = prepare(req.limits, "")?;
    let wait = Duration::from_millis(req.wait_ms.unwrap_or(0)).min(state.settings().max_wait);
    let answer = decide(&state, &entries, wait, "").await?;
    let retry_after = Nanos::from_millis(answer.retry_after_ms);
    let mut response = Json(&answer).into_response();
    rate_limit_headers(response.headers_mut(), &answer, retry_after);
    Ok(response)
}

/// `POST /v1/acquire/batch`: each request decided on its own, atomically, in order, without
/// waiting. A malformed batch is rejected whole before anything is decided; an error that
/// only deciding reveals (an unknown limit, units beyond capacity) is that request's result,
/// `{"error": {...}}`, and the others still count.
async fn batch(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<BatchRequest>,
) -> Result<Json<BatchAnswer>, ApiError> {
    if req.requests.len() > MAX_BATCH {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidField,
            format!(
                "a batch may hold at most {MAX_BATCH} requests, this one holds {}",
                req.requests.len()
            ),
        )
        .with_field("requests"));
    }
    let prepared = req
        .requests
        .into_iter()
        .enumerate()
        .map(|(i, item)| prepare(item.limits, &format!("requests[{i}].")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut results = Vec::with_capacity(prepared.len());
    for (i, entries) in prepared.iter().enumerate() {
        let prefix = format!("requests[{i}].");
        results.push(
            match decide(&state, entries, Duration::ZERO, &prefix).await {
                Ok(answer) => BatchResult::Decided(answer),
                Err(e) => BatchResult::Failed {
                    error: e.body().clone(),
                },
            },
        );
    }
    Ok(Json(BatchAnswer { results }))
}
