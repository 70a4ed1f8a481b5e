//! Concurrency leases (`POST /v1/leases`, `POST /v1/leases/{id}/renew`,
//! `DELETE /v1/leases/{id}`) and barriers (`POST /v1/barriers/{key}`,
//! `GET /v1/barriers/{key}`, `POST /v1/barriers/{key}/wait`).

use std::time::Duration;

use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::client::{Client, millis_ceil};
use crate::error::Error;

/// A request for one concurrency slot.
///
/// ```
/// use std::time::Duration;
/// use tollgate_client::LeaseRequest;
/// // A declared concurrency limit:
/// let declared = LeaseRequest::new("db:primary");
/// // A dynamic key with 2 slots, leases of 10 s, held by a named worker:
/// let dynamic = LeaseRequest::new("account:7").limit(2).ttl(Duration::from_secs(10)).holder("w1");
/// # let _ = (declared, dynamic);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseRequest {
    /// The key.
    pub key: String,
    /// The number of slots, making the key a dynamic concurrency key; without it, the key
    /// must be a declared `concurrency` limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// How long the lease lasts without a renewal, in milliseconds (server default: the
    /// limit's `lease_ttl`, or 30 s for a dynamic key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// Who holds it (for people reading the state).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

impl LeaseRequest {
    /// A lease on `key`, with the server's defaults.
    pub fn new(key: impl Into<String>) -> LeaseRequest {
        LeaseRequest {
            key: key.into(),
            limit: None,
            ttl_ms: None,
            holder: None,
        }
    }

    /// `limit` slots: a dynamic concurrency key.
    #[must_use]
    pub fn limit(mut self, limit: u32) -> LeaseRequest {
        self.limit = Some(limit);
        self
    }

    /// Leases that last `ttl` without a renewal (rounded up to whole milliseconds).
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> LeaseRequest {
        self.ttl_ms = Some(millis_ceil(ttl));
        self
    }

    /// Held by `holder`.
    #[must_use]
    pub fn holder(mut self, holder: impl Into<String>) -> LeaseRequest {
        self.holder = Some(holder.into());
        self
    }
}

/// The answer to a lease request: a slot, or a denial with `retry_after_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct Lease {
    /// Whether a slot was granted.
    pub acquired: bool,
    /// The lease's id, for renewing and releasing it (when acquired).
    #[serde(default)]
    pub lease_id: Option<String>,
    /// When the lease lapses unless renewed, Unix-epoch milliseconds (when acquired).
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
    /// How long until a slot may be free, in milliseconds (when denied).
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
    /// The key's number of slots.
    pub limit: u64,
    /// Slots left.
    pub remaining: u64,
}

/// A renewed lease.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct LeaseRenewal {
    /// The lease's id (unchanged).
    pub lease_id: String,
    /// The new expiry, Unix-epoch milliseconds.
    pub expires_at_ms: u64,
}

#[derive(Serialize)]
struct RenewRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl_ms: Option<u64>,
}

/// A barrier and who has arrived.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
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

#[derive(Serialize)]
struct BarrierCreate {
    parties: u32,
    ttl_ms: u64,
}

#[derive(Serialize)]
struct BarrierWait {
    timeout_ms: u64,
}

#[derive(Deserialize)]
struct Released {
    released: bool,
}

impl Client {
    /// `POST /v1/leases`: one concurrency slot. A full key is an answer (`acquired: false`
    /// with `retry_after_ms`), not an error.
    ///
    /// # Errors
    /// [`Error::Api`]: 404 `unknown_limit` (field `key`) for an undeclared key without
    /// `limit`; 422 `wrong_algorithm` for a key that is not a concurrency limit.
    pub async fn lease_acquire(&self, request: &LeaseRequest) -> Result<Lease, Error> {
        self.call(
            Method::POST,
            self.url(&["v1", "leases"]),
            Some(request),
            Duration::ZERO,
        )
        .await
    }

    /// `POST /v1/leases/{id}/renew`: extends a lease by `ttl` from now (default: the time to
    /// live it was granted with).
    ///
    /// # Errors
    /// [`Error::Api`]: 409 `lease_expired` when the lease is no longer held; 404
    /// `unknown_lease` for an id the server never made.
    pub async fn lease_renew(
        &self,
        lease_id: &str,
        ttl: Option<Duration>,
    ) -> Result<LeaseRenewal, Error> {
        let body = RenewRequest {
            ttl_ms: ttl.map(millis_ceil),
        };
        self.call(
            Method::POST,
            self.url(&["v1", "leases", lease_id, "renew"]),
            Some(&body),
            Duration::ZERO,
        )
        .await
    }

    /// `DELETE /v1/leases/{id}`: frees the slot.
    ///
    /// # Errors
    /// [`Error::Api`] 404 `unknown_lease` when it was not held (released, expired, unknown).
    pub async fn lease_release(&self, lease_id: &str) -> Result<(), Error> {
        self.call_empty(
            Method::DELETE,
            self.url(&["v1", "leases", lease_id]),
            None::<&()>,
        )
        .await
    }

    /// `POST /v1/barriers/{key}`: creates a barrier for `parties` that lives `ttl`, or answers
    /// the live one of that key.
    ///
    /// # Errors
    /// [`Error::Api`] 400 `invalid_field` for 0 parties (field `parties`) or a zero `ttl`
    /// (field `ttl_ms`).
    pub async fn barrier_create(
        &self,
        key: &str,
        parties: u32,
        ttl: Duration,
    ) -> Result<Barrier, Error> {
        let body = BarrierCreate {
            parties,
            ttl_ms: millis_ceil(ttl),
        };
        self.call(
            Method::POST,
            self.url(&["v1", "barriers", key]),
            Some(&body),
            Duration::ZERO,
        )
        .await
    }

    /// `GET /v1/barriers/{key}`: where a barrier stands.
    ///
    /// # Errors
    /// [`Error::Api`] 404 `unknown_barrier`, 409 `barrier_expired`.
    pub async fn barrier_status(&self, key: &str) -> Result<Barrier, Error> {
        self.call(
            Method::GET,
            self.url(&["v1", "barriers", key]),
            None::<&()>,
            Duration::ZERO,
        )
        .await
    }

    /// `POST /v1/barriers/{key}/wait`: arrives, and waits up to `timeout` (capped by the
    /// server, 60 s by default) for every party. Answers whether the barrier was released;
    /// `false` when the timeout passed first.
    ///
    /// # Errors
    /// [`Error::Api`] 404 `unknown_barrier` for a missing barrier, 409 `barrier_expired` for
    /// an expired one: never a silent pass.
    pub async fn barrier_wait(&self, key: &str, timeout: Duration) -> Result<bool, Error> {
        let body = BarrierWait {
            timeout_ms: millis_ceil(timeout),
        };
        let answer: Released = self
            .call(
                Method::POST,
                self.url(&["v1", "barriers", key, "wait"]),
                Some(&body),
                timeout,
            )
            .await?;
        Ok(answer.released)
    }
}
