//! The HTTP API, one module per area. Each exposes `routes()`, merged by [`crate::app`]:
//! direct use (`limits`, `acquire`, `leases`, `barriers`) and task runs (`tasks`, `runs`,
//! `events`, `workers`).
//!
//! Conventions: durations are `*_ms`, rounded up (a client that waits that long is never
//! early); instants are `*_at_ms`, Unix-epoch milliseconds, rounded down (a lease holder that
//! renews before then is never late).

pub(crate) mod acquire;
pub(crate) mod barriers;
pub(crate) mod events;
pub(crate) mod health;
pub(crate) mod leases;
pub(crate) mod limits;
pub(crate) mod runs;
pub(crate) mod tasks;
pub(crate) mod workers;

use axum::http::{StatusCode, Uri};
use tollgate::MAX_KEY_LEN;
use tollgate::core::Nanos;

use tollgate_api::ErrorCode;

use crate::error::ApiError;

/// A duration in whole milliseconds, rounded up.
pub(crate) fn duration_ms(d: Nanos) -> u64 {
    d.as_millis_ceil()
}

/// An instant in Unix-epoch milliseconds, rounded down.
pub(crate) fn instant_ms(t: Nanos) -> u64 {
    t.as_millis_floor()
}

/// Checks a key as the engine does, but names the request field it came from.
pub(crate) fn validate_key(key: &str, field: &str) -> Result<(), ApiError> {
    match tollgate::key_problem(key) {
        None => Ok(()),
        Some(reason) if key.len() > MAX_KEY_LEN => Err(ApiError::bad_request(
            ErrorCode::InvalidKey,
            format!("{reason}, this one has {}", key.len()),
        )
        .with_field(field)),
        Some(reason) => Err(ApiError::bad_request(ErrorCode::InvalidKey, reason).with_field(field)),
    }
}

/// A number of milliseconds that must make a period (1 ms to 10 years).
pub(crate) fn period_ms(ms: u64, field: &str) -> Result<tollgate::core::Period, ApiError> {
    tollgate::core::Period::from_millis(ms).map_err(|_| {
        ApiError::bad_request(
            ErrorCode::InvalidField,
            format!(
                "{field} must be between 1 and {} milliseconds, not {ms}",
                tollgate::core::Period::MAX.as_nanos().as_millis_floor()
            ),
        )
        .with_field(field)
    })
}

pub(crate) async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        format!("no route for {}", uri.path()),
    )
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        "this route does not take that method",
    )
}
