//! Concurrency leases (`POST /v1/leases`, `POST /v1/leases/{id}/renew`,
//! `DELETE /v1/leases/{id}`) and barriers (`POST /v1/barriers/{key}`,
//! `GET /v1/barriers/{key}`, `POST /v1/barriers/{key}/wait`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `POST /v1/leases`'s body: a lease on a concurrency key.
///
/// With `limit`, the key is a dynamic concurrency key with that many slots (leases last
/// `ttl_ms`, default 30 s); without, it must be a declared concurrency limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// The key.
    pub key: String,
    /// Slots of a dynamic key; `None` for a declared limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// How long the lease lasts without renewal, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// Who holds it (shown in listings; free text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

impl LeaseRequest {
    /// A lease on the declared concurrency limit `key`.
    pub fn new(key: impl Into<String>) -> LeaseRequest {
        LeaseRequest {
            key: key.into(),
            limit: None,
            ttl_ms: None,
            holder: None,
        }
    }

    /// A dynamic key with `limit` slots (no prior `PUT` needed).
    #[must_use]
    pub fn limit(mut self, limit: u32) -> LeaseRequest {
        self.limit = Some(limit);
        self
    }

    /// The lease's time to live (rounded up to whole milliseconds).
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> LeaseRequest {
        self.ttl_ms = Some(crate::millis_ceil(ttl));
        self
    }

    /// Names the holder.
    #[must_use]
    pub fn holder(mut self, holder: impl Into<String>) -> LeaseRequest {
        self.holder = Some(holder.into());
        self
    }
}

/// `POST /v1/leases/{id}/renew`'s body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// The new time to live, in milliseconds (default: the lease's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// The answer to a lease request, `200` whether granted or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Lease {
    /// Whether a slot was granted.
    pub acquired: bool,
    /// The lease's id (renew and release with it), when granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
    /// When the lease lapses unless renewed, Unix-epoch milliseconds, when granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// When denied, how long until a slot may free up, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// The key's slots.
    pub limit: u64,
    /// Slots left.
    pub remaining: u64,
}

/// `POST /v1/leases/{id}/renew`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LeaseRenewal {
    /// The lease's id, unchanged.
    pub lease_id: String,
    /// The new expiry, Unix-epoch milliseconds.
    pub expires_at_ms: u64,
}

/// `POST /v1/barriers/{key}`'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct BarrierCreate {
    /// How many parties it waits for.
    pub parties: u32,
    /// How long it lives, in milliseconds.
    pub ttl_ms: u64,
}

/// `POST /v1/barriers/{key}/wait`'s body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct BarrierWait {
    /// How long to wait for release, in milliseconds (default and cap:
    /// [`MAX_WAIT`](crate::MAX_WAIT)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// A barrier, as `POST/GET /v1/barriers/{key}` answer it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Barrier {
    /// The key.
    pub key: String,
    /// Whether every party has arrived.
    pub released: bool,
    /// Parties arrived so far.
    pub arrived: u32,
    /// Parties it waits for.
    pub parties: u32,
    /// When it expires, Unix-epoch milliseconds.
    pub expires_at_ms: u64,
}

/// `POST /v1/barriers/{key}/wait`'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct BarrierReleased {
    /// Whether the barrier was released within the timeout.
    pub released: bool,
}
