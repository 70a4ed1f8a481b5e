//! [`Error`]: what a call can fail with. A denial (`allowed: false`, `acquired: false`,
//! `released: false`) is an answer, never an error.

use std::time::Duration;

use tollgate_api::{ErrorBody, ErrorCode};

/// A failed call.
///
/// Match on [`Error::Api`]'s `code` (or [`Error::code`]), an [`ErrorCode`], to tell the
/// server's answers apart (`ErrorCode::UnknownLimit`, `ErrorCode::InvalidPeriod`, …); a code
/// this version does not know, from a newer server, is [`ErrorCode::Other`]. [`Error::is_transient`] says whether trying again
/// later may succeed.
///
/// ```
/// # async fn f(client: &tollgate_client::Client) -> Result<(), tollgate_client::Error> {
/// use tollgate_client::{Error, ErrorCode};
/// match client.get_limit("stripe-api").await {
///     Ok(limit) => println!("{} remaining", limit.remaining),
///     Err(Error::Api { code: ErrorCode::UnknownLimit, .. }) => println!("not declared"),
///     Err(e) => return Err(e),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with an error: `{"error": {"code", "message", "field"?,
    /// "transient"?}}`.
    #[error("{status} {code}: {message}{}", field.as_deref().map(|f| format!(" (field {f})")).unwrap_or_default())]
    #[non_exhaustive]
    Api {
        /// The HTTP status (400, 404, 409, 413, 422, 503, …).
        status: u16,
        /// The stable code ([`ErrorCode::UnknownLimit`], [`ErrorCode::InvalidPeriod`], …).
        code: ErrorCode,
        /// What went wrong, for people.
        message: String,
        /// The request field the error is about, as a path (`limits[1].units`), if any.
        field: Option<String>,
        /// Whether the server says retrying later may succeed (`store_unavailable`).
        transient: bool,
    },
    /// The server could not be reached (refused, unresolvable, or no connection within the
    /// connect timeout): most often, it is not running.
    #[error("cannot connect to the Tollgate server at {url}: {reason}")]
    #[non_exhaustive]
    Connect {
        /// The server's base URL.
        url: String,
        /// The innermost cause, in one line (`Connection refused (os error 111)`).
        reason: String,
        /// The underlying error.
        #[source]
        source: reqwest::Error,
    },
    /// No answer within the call's timeout (the client's timeout, plus the wait the call asked
    /// the server for).
    #[error("{method} {url}: no answer within {timeout:?}")]
    #[non_exhaustive]
    Timeout {
        /// The request method.
        method: String,
        /// The request URL.
        url: String,
        /// The timeout that passed.
        timeout: Duration,
        /// The underlying error.
        #[source]
        source: reqwest::Error,
    },
    /// The connection failed after it was made (reset, closed before the answer was read).
    #[error("{method} {url}: {reason}")]
    #[non_exhaustive]
    Transport {
        /// The request method.
        method: String,
        /// The request URL.
        url: String,
        /// The innermost cause, in one line.
        reason: String,
        /// The underlying error.
        #[source]
        source: reqwest::Error,
    },
    /// An answer this client cannot read: not the JSON it expects, or an error status without
    /// the server's error body (a proxy's error page, say).
    #[error("{method} {url}: undecodable answer (HTTP {status}): {reason}")]
    #[non_exhaustive]
    Decode {
        /// The request method.
        method: String,
        /// The request URL.
        url: String,
        /// The HTTP status of the answer.
        status: u16,
        /// What could not be read, with the start of the body.
        reason: String,
    },
    /// A request body could not be encoded as JSON.
    #[error("encoding the request body: {0}")]
    Encode(#[source] serde_json::Error),
    /// The base URL given to [`Client::new`](crate::Client::new) or the builder is not usable.
    #[error("invalid Tollgate server URL {url:?}: {reason}")]
    #[non_exhaustive]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The token given to [`ClientBuilder::token`](crate::ClientBuilder::token) cannot be
    /// sent in an HTTP header (it has control characters or is not visible ASCII).
    #[error("invalid token: it cannot be sent in an Authorization header")]
    InvalidToken,
    /// The CA given to [`ClientBuilder::ca_certificate`](crate::ClientBuilder::ca_certificate)
    /// holds no PEM certificate.
    #[error("invalid CA certificate: no PEM certificate in it")]
    InvalidCertificate,
    /// The HTTP client could not be built (its TLS backend failed to start, say).
    #[error("building the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
}

impl Error {
    /// Whether trying the same call again later may succeed: the server unreachable or too
    /// slow, a connection cut, a `transient` server error (503 `store_unavailable`), or a
    /// gateway error (502, 503, 504) from something between the client and the server.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Api { transient, .. } => *transient,
            Error::Connect { .. } | Error::Timeout { .. } | Error::Transport { .. } => true,
            Error::Decode { status, .. } => matches!(status, 502..=504),
            Error::Encode(_)
            | Error::InvalidUrl { .. }
            | Error::InvalidToken
            | Error::InvalidCertificate
            | Error::Build(_) => false,
        }
    }

    /// The server's error code, for [`Error::Api`].
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The request field the server's error is about, for [`Error::Api`].
    pub fn field(&self) -> Option<&str> {
        match self {
            Error::Api { field, .. } => field.as_deref(),
            _ => None,
        }
    }

    /// The HTTP status of the answer, for [`Error::Api`] and [`Error::Decode`].
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } | Error::Decode { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The [`Error::Api`] of an answer with `status` and `body`.
pub(crate) fn api_error(body: ErrorBody, status: u16) -> Error {
    Error::Api {
        status,
        code: body.code,
        message: body.message,
        field: body.field,
        // A 503 is transient whatever the body says (docs/http-api.md: it always carries the flag).
        transient: body.transient || status == 503,
    }
}

/// The innermost cause of `e`, in one line: reqwest's own message names the URL and says
/// "error sending request", which the variants already say better.
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string().replace('\n', " ")
}
