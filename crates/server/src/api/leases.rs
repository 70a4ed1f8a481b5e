//! Concurrency leases: `POST /v1/leases`, `POST /v1/leases/{id}/renew`,
//! `DELETE /v1/leases/{id}`.
//!
//! `{"key", "limit"?, "ttl_ms"?, "holder"?}`: with `limit`, the key is a dynamic concurrency
//! key with that many slots (its leases last `ttl_ms`, default 30 s); without, it must be a
//! declared concurrency limit (its leases last `ttl_ms`, default the limit's `lease_ttl`).
//! The answer is `200` whether granted or not:
//! `{"acquired": true, "lease_id", "expires_at_ms", "limit", "remaining"}` or
//! `{"acquired": false, "retry_after_ms", "limit", "remaining": 0}`.
//!
//! # Lease ids
//! A lease id describes itself: `<base64url(descriptor)>.<unique>`, where the descriptor holds
//! the namespace, the key, the lease's time to live and (dynamic keys) the limit. Renewing and
//! releasing need no table of leases on the server, and work on any node sharing the store.
//! An id that does not decode is 404 `unknown_lease`. An id that decodes but whose lease is
//! not held (expired, released, or never granted: the store cannot tell these apart) is 409
//! `lease_expired` on renew and 404 `unknown_lease` on release.
//!
//! Renewing a lease on a dynamic key re-applies the parameters it was granted under (the
//! engine takes a dynamic key's parameters from each request).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tollgate::core::{Concurrency, Nanos};
use tollgate::{DEFAULT_LEASE_TTL, MAX_KEY_LEN, Target};
use tollgate_api::{
    ErrorCode, Lease as LeaseAnswer, LeaseRenewal as RenewAnswer, LeaseRequest, RenewRequest,
};

use crate::api::{duration_ms, instant_ms, period_ms, validate_key};
use crate::error::ApiError;
use crate::extract::{JsonBody, Segment};
use crate::state::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/leases", post(acquire))
        .route("/v1/leases/{id}/renew", post(renew))
        .route("/v1/leases/{id}", delete(release))
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct LeaseRef {
    key: String,
    /// `Some` for a dynamic key: the limit and lease time to live it was granted under.
    dynamic: Option<(u32, u64)>,
    /// The time to live asked for (static keys; dynamic ones keep it in `dynamic`).
    ttl_ms: Option<u64>,
    /// Unique under the key: the store's lease id.
    unique: String,
}

impl LeaseRef {
    fn encode(&self) -> String {
        let descriptor = match (self.dynamic, self.ttl_ms) {
            (Some((limit, ttl)), _) => format!("d:{limit}:{ttl}:{}", self.key),
            (None, Some(ttl)) => format!("s::{ttl}:{}", self.key),
            (None, None) => format!("s:::{}", self.key),
        };
        format!("{}.{}", URL_SAFE_NO_PAD.encode(descriptor), self.unique)
    }

    /// `None` for anything [`LeaseRef::encode`] did not make.
    fn decode(id: &str) -> Option<LeaseRef> {
        let (descriptor, unique) = id.split_once('.')?;
        let unique_ok = !unique.is_empty()
            && unique.len() <= 64
            && unique.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
        if !unique_ok {
            return None;
        }
        let descriptor = String::from_utf8(URL_SAFE_NO_PAD.decode(descriptor).ok()?).ok()?;
        let mut parts = descriptor.splitn(4, ':');
        let (kind, limit, ttl, key) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let number = |s: &str| -> Option<Option<u64>> {
            if s.is_empty() {
                Some(None)
            } else {
                s.parse().ok().map(Some)
            }
        };
        let (limit, ttl) = (number(limit)?, number(ttl)?);
        let dynamic = match (kind, limit, ttl) {
            ("d", Some(limit), Some(ttl)) => Some((u32::try_from(limit).ok()?, ttl)),
            ("s", None, _) => None,
            _ => return None,
        };
        if key.is_empty() || key.len() > MAX_KEY_LEN || key.chars().any(char::is_control) {
            return None;
        }
        Some(LeaseRef {
            key: key.to_owned(),
            dynamic,
            ttl_ms: if dynamic.is_some() { None } else { ttl },
            unique: unique.to_owned(),
        })
    }

    fn parse(id: &str) -> Result<LeaseRef, ApiError> {
        LeaseRef::decode(id).ok_or_else(unknown_lease)
    }

    /// The engine target; `None` if the encoded parameters no longer make a limit.
    fn target(&self) -> Option<Target<'_, Concurrency>> {
        Some(match self.dynamic {
            None => Target::Static(&self.key),
            Some((limit, ttl)) => Target::Dynamic(
                &self.key,
                Concurrency::new(limit, tollgate::core::Period::from_millis(ttl).ok()?).ok()?,
            ),
        })
    }

    /// The time to live renewals use unless the request names one.
    fn default_ttl(&self) -> Option<Nanos> {
        match self.dynamic {
            Some((_, ttl)) => Some(Nanos::from_millis(ttl)),
            None => self.ttl_ms.map(Nanos::from_millis),
        }
    }
}

fn unknown_lease() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::UnknownLease,
        "no lease is held under this id (released, expired, or never granted)",
    )
}

/// Errors of renew and release: the key's limit gone or changed kind means the lease is gone.
fn lease_error(e: tollgate::Error) -> ApiError {
    match e {
        tollgate::Error::UnknownLimit { .. } | tollgate::Error::WrongAlgorithm { .. } => {
            unknown_lease()
        }
        e => ApiError::from(e),
    }
}

/// `POST /v1/leases`.
async fn acquire(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<LeaseRequest>,
) -> Result<Json<LeaseAnswer>, ApiError> {
    validate_key(&req.key, "key")?;
    let holder = req.holder.unwrap_or_default();
    if holder.len() > MAX_KEY_LEN {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidField,
            format!("holder must be at most {MAX_KEY_LEN} bytes"),
        )
        .with_field("holder"));
    }
    let ttl = req.ttl_ms.map(|ms| period_ms(ms, "ttl_ms")).transpose()?;
    let lease = LeaseRef {
        key: req.key,
        dynamic: match req.limit {
            None => None,
            Some(limit) => {
                let ttl_ms = req
                    .ttl_ms
                    .unwrap_or(DEFAULT_LEASE_TTL.as_nanos().as_millis_floor());
                Concurrency::new(limit, ttl.unwrap_or(DEFAULT_LEASE_TTL))
                    .map_err(|e| ApiError::from(tollgate::Error::from(e)).with_field("limit"))?;
                Some((limit, ttl_ms))
            }
        },
        ttl_ms: if req.limit.is_none() {
            req.ttl_ms
        } else {
            None
        },
        unique: state.next_lease_suffix(),
    };
    let target = lease.target().ok_or_else(|| {
        ApiError::bad_request(ErrorCode::InvalidField, "invalid lease parameters")
            .with_field("limit")
    })?;
    let decision = state
        .limits()
        .lease_acquire(target, &lease.unique, &holder, ttl.map(|p| p.as_nanos()))
        .await
        .map_err(|e| {
            let field = match e {
                tollgate::Error::UnknownLimit { .. } | tollgate::Error::WrongAlgorithm { .. } => {
                    Some("key")
                }
                _ => None,
            };
            let err = ApiError::from(e);
            match field {
                Some(f) => err.with_field(f),
                None => err,
            }
        })?;
    Ok(Json(if decision.acquired {
        LeaseAnswer {
            acquired: true,
            lease_id: Some(lease.encode()),
            expires_at_ms: Some(instant_ms(decision.expires_at)),
            retry_after_ms: None,
            limit: decision.limit,
            remaining: decision.remaining,
        }
    } else {
        LeaseAnswer {
            acquired: false,
            lease_id: None,
            expires_at_ms: None,
            retry_after_ms: Some(duration_ms(decision.retry_after)),
            limit: decision.limit,
            remaining: decision.remaining,
        }
    }))
}

/// `POST /v1/leases/{id}/renew`: `{"ttl_ms"?}` → `{"lease_id", "expires_at_ms"}`.
async fn renew(
    State(state): State<AppState>,
    id: Result<Segment, ApiError>,
    JsonBody(req): JsonBody<RenewRequest>,
) -> Result<Json<RenewAnswer>, ApiError> {
    // An id that is not even text is as unknown as any other malformed one.
    let Segment(id) = id.map_err(|_| unknown_lease())?;
    let lease = LeaseRef::parse(&id)?;
    let target = lease.target().ok_or_else(unknown_lease)?;
    let ttl = match req.ttl_ms {
        Some(ms) => Some(period_ms(ms, "ttl_ms")?.as_nanos()),
        None => lease.default_ttl(),
    };
    let expires_at = state
        .limits()
        .lease_renew(target, &lease.unique, ttl)
        .await
        .map_err(lease_error)?;
    Ok(Json(RenewAnswer {
        lease_id: id,
        expires_at_ms: instant_ms(expires_at),
    }))
}

/// `DELETE /v1/leases/{id}`: 204 when the lease was held, else 404 `unknown_lease`. Releasing
/// never touches another holder's slot.
async fn release(
    State(state): State<AppState>,
    id: Result<Segment, ApiError>,
) -> Result<StatusCode, ApiError> {
    let Segment(id) = id.map_err(|_| unknown_lease())?;
    let lease = LeaseRef::parse(&id)?;
    let target = lease.target().ok_or_else(unknown_lease)?;
    let held = state
        .limits()
        .lease_release(target, &lease.unique)
        .await
        .map_err(lease_error)?;
    if held {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(unknown_lease())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_round_trip() {
        for lease in [
            LeaseRef {
                key: "db:primary".into(),
                dynamic: None,
                ttl_ms: None,
                unique: "00ff-1".into(),
            },
            LeaseRef {
                key: "a.b:c/d é".into(),
                dynamic: None,
                ttl_ms: Some(1_500),
                unique: "ab-0".into(),
            },
            LeaseRef {
                key: "user:42".into(),
                dynamic: Some((3, 30_000)),
                ttl_ms: None,
                unique: "1-2".into(),
            },
        ] {
            let id = lease.encode();
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
                "{id} is not URL-safe"
            );
            assert_eq!(LeaseRef::decode(&id), Some(lease));
        }
    }

    #[test]
    fn malformed_lease_ids_do_not_decode() {
        let good = LeaseRef {
            key: "k".into(),
            dynamic: None,
            ttl_ms: None,
            unique: "ab-1".into(),
        }
        .encode();
        let (descriptor, _) = good.split_once('.').unwrap();
        for bad in [
            "",
            ".",
            "nodot",
            &format!("{descriptor}."),
            &format!("{descriptor}.zz"),
            "!!!.ab-1",
            &format!("{}.ab-1", URL_SAFE_NO_PAD.encode("x:1:2:k")),
            &format!("{}.ab-1", URL_SAFE_NO_PAD.encode("d::2:k")),
            &format!("{}.ab-1", URL_SAFE_NO_PAD.encode("s:::")),
            &format!("{}.ab-1", URL_SAFE_NO_PAD.encode([0xff, 0xfe])),
        ] {
            assert_eq!(LeaseRef::decode(bad), None, "{bad}");
        }
    }
}
