//! The error body, `{"error": {"code", "message", "field"?, "transient"?}}`, and its codes.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $text:literal,)*) => {
        /// A stable error code, as the server writes it (`"unknown_limit"`).
        ///
        /// It (de)serializes as its snake_case string. A code this version does not know (a
        /// newer server's) is kept as [`ErrorCode::Other`], so an older client still reads
        /// the error and shows it unchanged.
        ///
        /// ```
        /// use tollgate_api::ErrorCode;
        /// let known: ErrorCode = serde_json::from_str(r#""unknown_limit""#)?;
        /// assert_eq!(known, ErrorCode::UnknownLimit);
        /// let newer: ErrorCode = serde_json::from_str(r#""quota_frozen""#)?;
        /// assert_eq!(newer, ErrorCode::Other("quota_frozen".into()));
        /// assert_eq!(newer.as_str(), "quota_frozen");
        /// # Ok::<(), serde_json::Error>(())
        /// ```
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
            /// A code this version does not know, kept as sent.
            Other(String),
        }

        impl ErrorCode {
            /// Every code this version knows, in the order of the table in the crate docs.
            pub const KNOWN: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The snake_case code, as on the wire.
            pub fn as_str(&self) -> &str {
                match self {
                    $(ErrorCode::$variant => $text,)*
                    ErrorCode::Other(s) => s,
                }
            }

            /// The code named `s`: a known variant, or [`ErrorCode::Other`].
            pub fn parse(s: &str) -> ErrorCode {
                match s {
                    $($text => ErrorCode::$variant,)*
                    other => ErrorCode::Other(other.to_owned()),
                }
            }
        }
    };
}

error_codes! {
    /// 400: the body is not valid JSON.
    InvalidJson = "invalid_json",
    /// 400: a value of the wrong type or out of range (also: a body that is not an object).
    InvalidField = "invalid_field",
    /// 400: a required field is missing.
    MissingField = "missing_field",
    /// 400: a field this route does not take.
    UnknownField = "unknown_field",
    /// 400: a period that does not parse (`"10 apples"`).
    InvalidPeriod = "invalid_period",
    /// 400: a rate that does not parse (`"10 per minute"`).
    InvalidRate = "invalid_rate",
    /// 400: a key that is empty, too long or has control characters.
    InvalidKey = "invalid_key",
    /// 400: the request body could not be read.
    InvalidBody = "invalid_body",
    /// 400: a task or event name that is not allowed.
    InvalidName = "invalid_name",
    /// 400 (a task's CEL that does not compile) or 422 (a run's input it cannot evaluate).
    InvalidExpression = "invalid_expression",
    /// 404 (or 422 for a task's `static_key`): no limit is declared under that key.
    UnknownLimit = "unknown_limit",
    /// 404: no lease is held under that id.
    UnknownLease = "unknown_lease",
    /// 404: no barrier under that key.
    UnknownBarrier = "unknown_barrier",
    /// 404 (or 422 for a lease's `tasks[i]`): no task under that name.
    UnknownTask = "unknown_task",
    /// 404: no run with that id.
    UnknownRun = "unknown_run",
    /// 401: no token, or one the server does not know (`WWW-Authenticate: Bearer`).
    Unauthorized = "unauthorized",
    /// 403: the token's role does not have the right; the message names the role needed.
    Forbidden = "forbidden",
    /// 404: no route for that path.
    NotFound = "not_found",
    /// 405: the route does not take that method.
    MethodNotAllowed = "method_not_allowed",
    /// 409: the lease is no longer held.
    LeaseExpired = "lease_expired",
    /// 409: the barrier expired before it was released.
    BarrierExpired = "barrier_expired",
    /// 409: the run is not in a state that allows the call (or the attempt is over).
    InvalidState = "invalid_state",
    /// 409: the limit is still named by a task.
    LimitInUse = "limit_in_use",
    /// 413: the body is larger than the server's limit.
    PayloadTooLarge = "payload_too_large",
    /// 422: the key holds another kind of limit.
    WrongAlgorithm = "wrong_algorithm",
    /// 422: feedback for a limit that does not adapt (declared without `adaptive`).
    NotAdaptive = "not_adaptive",
    /// 422: units that the limit can never hold.
    InsufficientCapacity = "insufficient_capacity",
    /// 500: the server failed; its log has the details.
    InternalError = "internal_error",
    /// 503: the store is unreachable; retry later (`"transient": true`).
    StoreUnavailable = "store_unavailable",
}

impl ErrorCode {
    /// Whether this version knows the code (it is not [`ErrorCode::Other`]).
    pub fn is_known(&self) -> bool {
        !matches!(self, ErrorCode::Other(_))
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for ErrorCode {
    fn from(s: &str) -> ErrorCode {
        ErrorCode::parse(s)
    }
}

impl PartialEq<str> for ErrorCode {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ErrorCode, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ErrorCode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an error code string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ErrorCode, E> {
                Ok(ErrorCode::parse(s))
            }
        }
        d.deserialize_str(V)
    }
}

/// The `error` object of an error answer, and of a failed request in a batch acquire's
/// results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ErrorBody {
    /// The stable code.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
    /// The request field the error is about, as a path (`limits[1].units`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Whether retrying later may succeed (always with 503 `store_unavailable`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub transient: bool,
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if let Some(field) = &self.field {
            write!(f, " (field {field})")?;
        }
        Ok(())
    }
}

/// An error answer: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ErrorEnvelope {
    /// The error.
    pub error: ErrorBody,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_known_code_round_trips_as_its_string() {
        for code in ErrorCode::KNOWN {
            let text = serde_json::to_value(code).unwrap();
            assert_eq!(text, json!(code.as_str()));
            let back: ErrorCode = serde_json::from_value(text).unwrap();
            assert_eq!(&back, code);
            assert!(back.is_known(), "{code}");
        }
        let mut names: Vec<&str> = ErrorCode::KNOWN.iter().map(ErrorCode::as_str).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(
            names.len(),
            ErrorCode::KNOWN.len(),
            "a code is listed twice"
        );
    }

    // An older client must read a newer server's errors: the code is kept, not refused.
    #[test]
    fn an_unknown_code_is_kept_and_written_back_unchanged() {
        let body = json!({"error": {"code": "quota_frozen", "message": "m", "field": "x"}});
        let read: ErrorEnvelope = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(read.error.code, ErrorCode::Other("quota_frozen".into()));
        assert!(!read.error.code.is_known());
        assert_eq!(serde_json::to_value(&read).unwrap(), body);
    }

    #[test]
    fn error_bodies_omit_what_is_not_set() {
        let body = ErrorBody {
            code: ErrorCode::StoreUnavailable,
            message: "retry".into(),
            field: None,
            transient: true,
        };
        let json = serde_json::to_string(&ErrorEnvelope { error: body }).unwrap();
        assert_eq!(
            json,
            r#"{"error":{"code":"store_unavailable","message":"retry","transient":true}}"#
        );
        let plain: ErrorBody =
            serde_json::from_value(json!({"code": "not_found", "message": "m"})).unwrap();
        assert_eq!(
            (plain.code, plain.field, plain.transient),
            (ErrorCode::NotFound, None, false)
        );
    }
}
