//! Request extractors whose failures are [`ApiError`]s: a JSON body with a size limit decided
//! before reading and error paths naming the field, and path segments.

use std::pin::Pin;

use axum::body::{Body, HttpBody};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;
use serde_json::error::Category;
use tollgate_api::ErrorCode;

use crate::error::ApiError;
use crate::state::AppState;

/// A JSON request body, parsed into `T`.
///
/// - Bodies over `--max-body` are 413 `payload_too_large`: from `Content-Length` before a
///   byte is read, and while reading for bodies without one (chunked).
/// - Any `Content-Type`, or none, is accepted: workers in any language call this API, and
///   the body is JSON or an error anyway.
/// - An empty body reads as `{}`, so that calls whose fields are all optional need none.
/// - Malformed JSON is 400 `invalid_json`; a value of the wrong type is 400 `invalid_field`,
///   a missing one `missing_field`, an unknown one `unknown_field`, each naming the field's
///   path (`limits[2].units`).
pub(crate) struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let max = state.settings().max_body;
        if let Some(len) = content_length(req.headers())
            && len > max as u64
        {
            return Err(too_large(max));
        }
        let bytes = read_limited(req.into_body(), max).await?;
        parse(&bytes).map(JsonBody)
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn too_large(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::PayloadTooLarge,
        format!("the request body is larger than the server's limit of {max} bytes"),
    )
}

async fn read_limited(mut body: Body, max: usize) -> Result<Vec<u8>, ApiError> {
    let mut buf = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|_| {
            ApiError::bad_request(ErrorCode::InvalidBody, "the request body could not be read")
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len().saturating_add(data.len()) > max {
                return Err(too_large(max));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}

/// Parses a JSON body (see [`JsonBody`]).
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    // Every body is an object. serde would also read a struct from an array of its fields in
    // order, which is no way to write a request.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        let kind = match serde_json::from_slice::<serde_json::Value>(bytes).map_err(invalid_json)? {
            serde_json::Value::Array(_) => "an array",
            serde_json::Value::String(_) => "a string",
            serde_json::Value::Number(_) => "a number",
            serde_json::Value::Bool(_) => "a boolean",
            serde_json::Value::Null => "null",
            serde_json::Value::Object(_) => "an object",
        };
        return Err(ApiError::bad_request(
            ErrorCode::InvalidField,
            format!("the body must be a JSON object, not {kind}"),
        ));
    }
    // A valid body, the common case, is read without tracking the path; only a failing one is
    // read again with serde_path_to_error, to name the field (the same input fails the same way).
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(from_serde)?;
    de.end().map_err(invalid_json)?;
    Ok(value)
}

fn invalid_json(e: serde_json::Error) -> ApiError {
    ApiError::bad_request(
        ErrorCode::InvalidJson,
        format!("the body is not valid JSON: {e}"),
    )
}

fn from_serde(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    if inner.classify() != Category::Data {
        return invalid_json(inner);
    }
    // The field path says where; the line and column add nothing for a data error.
    let shown = inner.to_string();
    let message = match shown.rfind(" at line ") {
        Some(i) => shown[..i].to_owned(),
        None => shown,
    };
    let join = |name: &str| {
        if path == "." {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        }
    };
    let quoted = |prefix: &str| {
        let rest = message.strip_prefix(prefix)?;
        rest.split('`').next().map(str::to_owned)
    };
    let (code, field) = if let Some(name) = quoted("unknown field `") {
        // The path already ends with the unknown name, except at the top level.
        let field = if path == "." { name } else { path };
        (ErrorCode::UnknownField, Some(field))
    } else if let Some(name) = quoted("missing field `") {
        (ErrorCode::MissingField, Some(join(&name)))
    } else if path == "." {
        (ErrorCode::InvalidField, None)
    } else {
        (ErrorCode::InvalidField, Some(path))
    };
    let err = ApiError::bad_request(code, message);
    match field {
        Some(f) => err.with_field(f),
        None => err,
    }
}

/// A path segment (`{key}`, `{id}`), percent-decoded.
pub(crate) struct Segment(pub String);

impl FromRequestParts<AppState> for Segment {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(s)| Segment(s))
            .map_err(|e| {
                ApiError::bad_request(ErrorCode::InvalidKey, e.body_text()).with_field("key")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_api::ErrorCode;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        limits: Vec<Inner>,
        wait_ms: Option<u64>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        key: String,
        units: Option<u32>,
    }

    fn err(json: &str) -> (String, ErrorCode, Option<String>) {
        let e = parse::<Outer>(json.as_bytes()).unwrap_err();
        (
            e.status().to_string(),
            e.code().clone(),
            e.field().map(str::to_owned),
        )
    }

    #[test]
    fn errors_name_the_field_path() {
        let f = |s: &str| Some(s.to_owned());
        assert_eq!(
            err(r#"{"limits": [{"key": "a"}, {"key": "b", "units": "x"}]}"#).2,
            f("limits[1].units")
        );
        assert_eq!(
            err(r#"{"limits": [{"key": "a", "unit": 1}]}"#).1,
            "unknown_field"
        );
        assert_eq!(
            err(r#"{"limits": [{"key": "a", "unit": 1}]}"#).2,
            f("limits[0].unit")
        );
        assert_eq!(err(r#"{"limits": [{}]}"#).1, "missing_field");
        assert_eq!(err(r#"{"limits": [{}]}"#).2, f("limits[0].key"));
        assert_eq!(err(r#"{"wait_ms": 1}"#).2, f("limits"));
        assert_eq!(err(r#"{"limits": [], "wait_ms": -1}"#).2, f("wait_ms"));
        assert_eq!(err(r#"[1]"#).1, "invalid_field");
        assert_eq!(err(r#"{"limits": ["#).1, "invalid_json");
        assert_eq!(err(r#"{"limits": []} x"#).1, "invalid_json");
        assert_eq!(err(r#"{"limits": [] , }"#).1, "invalid_json");
    }

    #[test]
    fn an_empty_body_reads_as_an_empty_object() {
        assert_eq!(err("").2, Some("limits".to_owned()));
        assert_eq!(err(" \n").1, "missing_field");
    }
}
