//! Concurrency leases (`POST /v1/leases`, `POST /v1/leases/{id}/renew`,
//! `DELETE /v1/leases/{id}`) and barriers (`POST /v1/barriers/{key}`,
//! `GET /v1/barriers/{key}`, `POST /v1/barriers/{key}/wait`).

use std::time::Duration;

use reqwest::Method;
use tollgate_api::{
    Barrier, BarrierCreate, BarrierReleased, BarrierWait, Lease, LeaseRenewal, LeaseRequest,
    RenewRequest,
};

use crate::client::{Client, millis_ceil};
use crate::error::Error;

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
            timeout_ms: Some(millis_ceil(timeout)),
        };
        let answer: BarrierReleased = self
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
