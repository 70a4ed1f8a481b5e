//! [`ApiError`]: every failure as `{"error": {"code", "message", "field"?, "transient"?}}`.

use std::fmt;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tollgate::SpecError;
use tollgate_api::{ErrorBody, ErrorCode, ErrorEnvelope};

/// An error answer: an HTTP status, a stable snake_case `code` that clients may match on, a
/// message for people, and the request field it is about, as a path (`limits[1].units`).
///
/// | status | codes |
/// | --- | --- |
/// | 400 | `invalid_json`, `invalid_field`, `missing_field`, `unknown_field`, `invalid_period`, `invalid_rate`, `invalid_key`, `invalid_body` |
/// | 400 | `invalid_name` (task names) |
/// | 400 | `invalid_expression` (a task's CEL that does not compile) |
/// | 404 | `unknown_limit`, `unknown_lease`, `unknown_barrier`, `unknown_task`, `unknown_run`, `not_found` (the thing a path names) |
/// | 405 | `method_not_allowed` |
/// | 409 | `lease_expired`, `barrier_expired`, `invalid_state`, `limit_in_use` |
/// | 413 | `payload_too_large` |
/// | 422 | `wrong_algorithm`, `insufficient_capacity`, `unknown_limit` (a task's `static_key`), `unknown_task` (a lease's `tasks[i]`), `invalid_expression` (a run's input that a task's CEL cannot evaluate) |
/// | 500 | `internal_error` (details are logged, never sent) |
/// | 503 | `store_unavailable`, with `"transient": true` |
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                code,
                message: message.into(),
                field: None,
                transient: status == StatusCode::SERVICE_UNAVAILABLE,
            },
        }
    }

    /// 400 with `code`.
    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// An internal failure: logged in full here, answered as a bare 500 so that nothing about
    /// the server's insides reaches the client.
    pub fn internal(context: &str, error: &dyn fmt::Display) -> ApiError {
        tracing::error!(%error, "{context}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::InternalError,
            "internal error; the server log has the details",
        )
    }

    /// The same error, about request field `field`.
    #[must_use]
    pub fn with_field(mut self, field: impl Into<String>) -> ApiError {
        self.body.field = Some(field.into());
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable code.
    pub fn code(&self) -> &ErrorCode {
        &self.body.code
    }

    /// The message for people.
    pub fn message(&self) -> &str {
        &self.body.message
    }

    /// The field the error is about, if any.
    pub fn field(&self) -> Option<&str> {
        self.body.field.as_deref()
    }

    pub(crate) fn body(&self) -> &ErrorBody {
        &self.body
    }

    /// Whether the store failed in a way retrying may fix.
    pub(crate) fn is_transient(&self) -> bool {
        self.body.transient
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.body.code,
            self.body.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        let mut response = (status, axum::Json(ErrorEnvelope { error: self.body })).into_response();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The body was not read: the connection cannot be reused for another request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl From<SpecError> for ApiError {
    fn from(e: SpecError) -> ApiError {
        // Malformed definitions are 400; a well-formed one naming what cannot be (a limit not
        // declared, units no limit of that size can hold, the wrong kind of limit) is 422.
        // The engine's codes are the API's (its SpecError is written for this answer).
        let code = ErrorCode::from(e.code);
        let status = match code {
            ErrorCode::WrongAlgorithm
            | ErrorCode::UnknownLimit
            | ErrorCode::InsufficientCapacity => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::BAD_REQUEST,
        };
        let field = e.field.clone();
        let mut err = ApiError::new(status, code, e.message);
        if !field.is_empty() {
            err = err.with_field(field);
        }
        err
    }
}

impl From<tollgate::Error> for ApiError {
    fn from(e: tollgate::Error) -> ApiError {
        use tollgate::Error as E;
        use tollgate::core::Error as C;
        let (status, code) = match &e {
            E::UnknownLimit { .. } => (StatusCode::NOT_FOUND, ErrorCode::UnknownLimit),
            E::WrongAlgorithm { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::WrongAlgorithm)
            }
            E::InsufficientCapacity { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::InsufficientCapacity,
            ),
            E::NotAdaptive { .. } => (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::NotAdaptive),
            E::InvalidKey { .. } => (StatusCode::BAD_REQUEST, ErrorCode::InvalidKey),
            E::ZeroUnits { .. } | E::EmptyRequest => {
                (StatusCode::BAD_REQUEST, ErrorCode::InvalidField)
            }
            E::UnknownTask { .. } => (StatusCode::NOT_FOUND, ErrorCode::UnknownTask),
            E::UnknownRun { .. } => (StatusCode::NOT_FOUND, ErrorCode::UnknownRun),
            E::InvalidState { .. } => (StatusCode::CONFLICT, ErrorCode::InvalidState),
            E::LimitInUse { .. } => (StatusCode::CONFLICT, ErrorCode::LimitInUse),
            E::InvalidName { .. } => (StatusCode::BAD_REQUEST, ErrorCode::InvalidName),
            E::Spec(spec) => return ApiError::from(spec.clone()),
            E::Expression { field, .. } => {
                // Valid JSON and a valid task; this run's input made an expression fail. The
                // message quotes the expression; the run was not stored (never run unlimited).
                let field = field.clone();
                return ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    ErrorCode::InvalidExpression,
                    e.to_string(),
                )
                .with_field(field);
            }
            E::Core(core) => match core {
                C::InvalidPeriod { .. } => (StatusCode::BAD_REQUEST, ErrorCode::InvalidPeriod),
                C::InvalidRate { .. } => (StatusCode::BAD_REQUEST, ErrorCode::InvalidRate),
                C::InvalidParameter { .. } | C::UnknownAlgorithm { .. } => {
                    (StatusCode::BAD_REQUEST, ErrorCode::InvalidField)
                }
                C::InsufficientCapacity(_) => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    ErrorCode::InsufficientCapacity,
                ),
                C::LeaseNotHeld { .. } => (StatusCode::CONFLICT, ErrorCode::LeaseExpired),
                C::BarrierMissing => (StatusCode::NOT_FOUND, ErrorCode::UnknownBarrier),
                C::BarrierExpired { .. } => (StatusCode::CONFLICT, ErrorCode::BarrierExpired),
                _ => return ApiError::internal("unexpected engine error", &e),
            },
            E::Store(s) if s.is_transient() => {
                tracing::warn!(error = %s, "store unavailable");
                return ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::StoreUnavailable,
                    "the limit store is unavailable; retry later",
                );
            }
            _ => return ApiError::internal("engine failure", &DisplayChain(&e)),
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// An error with its sources, for the log.
struct DisplayChain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_their_status_and_code() {
        use tollgate::Error as E;
        use tollgate::core::{Algorithm, Error as C, Nanos};
        let cases: Vec<(tollgate::Error, u16, &str)> = vec![
            (E::UnknownLimit { key: "k".into() }, 404, "unknown_limit"),
            (
                E::WrongAlgorithm {
                    key: "k".into(),
                    expected: "a rate limit",
                    found: Algorithm::Concurrency,
                },
                422,
                "wrong_algorithm",
            ),
            (
                E::InsufficientCapacity {
                    key: "k".into(),
                    units: 5,
                    capacity: 4,
                },
                422,
                "insufficient_capacity",
            ),
            (
                E::InvalidKey {
                    key: String::new(),
                    reason: "empty",
                },
                400,
                "invalid_key",
            ),
            (E::ZeroUnits { key: "k".into() }, 400, "invalid_field"),
            (E::NotAdaptive { key: "k".into() }, 422, "not_adaptive"),
            (E::EmptyRequest, 400, "invalid_field"),
            (
                E::Core(C::LeaseNotHeld {
                    lease_id: "x".into(),
                }),
                409,
                "lease_expired",
            ),
            (E::Core(C::BarrierMissing), 404, "unknown_barrier"),
            (E::UnknownTask { name: "t".into() }, 404, "unknown_task"),
            (E::UnknownRun { id: "r".into() }, 404, "unknown_run"),
            (
                E::LimitInUse {
                    key: "k".into(),
                    tasks: vec!["t".into()],
                    runs: 0,
                },
                409,
                "limit_in_use",
            ),
            (
                E::Expression {
                    field: "rate_limits[0].units".into(),
                    source_text: "input.n".into(),
                    message: "failed: no such key".into(),
                },
                422,
                "invalid_expression",
            ),
            (
                E::Core(C::BarrierExpired {
                    expired_at: Nanos::ZERO,
                }),
                409,
                "barrier_expired",
            ),
            (
                E::Store(tollgate::StoreError::transient("connection refused", None)),
                503,
                "store_unavailable",
            ),
            (
                E::Store(tollgate::StoreError::permanent("disk on fire", None)),
                500,
                "internal_error",
            ),
        ];
        for (e, status, code) in cases {
            let shown = e.to_string();
            let api = ApiError::from(e);
            assert_eq!(
                (api.status().as_u16(), api.code().as_str()),
                (status, code),
                "{shown}"
            );
            assert_eq!(api.is_transient(), status == 503, "{shown}");
            if status == 500 {
                assert!(
                    !api.body().message.contains("disk"),
                    "internal details leaked"
                );
            }
        }
    }

    #[test]
    fn spec_errors_are_400_when_malformed_and_422_when_impossible() {
        let spec = |code: &'static str| SpecError {
            code,
            field: "rate_limits[0].static_key".into(),
            message: "m".into(),
        };
        for (code, status) in [
            ("invalid_expression", 400),
            ("invalid_field", 400),
            ("invalid_period", 400),
            ("missing_field", 400),
            ("unknown_limit", 422),
            ("insufficient_capacity", 422),
            ("wrong_algorithm", 422),
        ] {
            let api = ApiError::from(spec(code));
            assert_eq!((api.status().as_u16(), api.code().as_str()), (status, code));
            assert_eq!(api.field(), Some("rate_limits[0].static_key"));
        }
    }
}
