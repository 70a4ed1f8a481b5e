//! Limits and decisions: `GET /healthz`, `PUT/GET/DELETE /v1/limits/{key}`,
//! `GET /v1/limits`, `POST/DELETE /v1/limits/{key}/pause`, `GET /v1/pauses`, `POST /v1/acquire`,
//! `POST /v1/acquire/batch`.

use std::time::Duration;

use reqwest::Method;
use tollgate_api::{
    AcquireEntry, AcquireRequest, Acquisition, BatchAnswer, BatchItem, BatchOutcome, BatchRequest,
    ErrorBody, FeedbackOutcome, FeedbackRequest, Health, Limit, LimitListing, LimitSpec, Pause,
    PauseListing, PauseRequest, Resumed,
};

use crate::client::{Client, millis_ceil};
use crate::error::Error;

/// One result of [`Client::acquire_batch`]: a decision, or the error that deciding that
/// request met (an unknown limit, units beyond capacity); the other requests still count.
pub type BatchResult = Result<Acquisition, ErrorBody>;

impl Client {
    /// `GET /healthz`: whether the server is up.
    ///
    /// # Errors
    /// [`Error::Connect`] when it is not reachable.
    pub async fn health(&self) -> Result<Health, Error> {
        self.call(
            Method::GET,
            self.url(&["healthz"]),
            None::<&()>,
            Duration::ZERO,
        )
        .await
    }

    /// `PUT /v1/limits/{key}`: declares or redefines a limit (usage kept across a redefinition
    /// of the same algorithm). Answers it canonically, with its live state.
    ///
    /// # Errors
    /// [`Error::Api`] with `invalid_period`, `invalid_rate`, `invalid_field`, `missing_field`
    /// (each with `field`), `invalid_key`, or `wrong_algorithm` (a barrier).
    pub async fn put_limit(&self, key: &str, definition: &LimitSpec) -> Result<Limit, Error> {
        self.call(
            Method::PUT,
            self.url(&["v1", "limits", key]),
            Some(definition),
            Duration::ZERO,
        )
        .await
    }

    /// `GET /v1/limits/{key}`: a declared limit with its live state.
    ///
    /// # Errors
    /// [`Error::Api`] 404 `unknown_limit`.
    pub async fn get_limit(&self, key: &str) -> Result<Limit, Error> {
        self.call(
            Method::GET,
            self.url(&["v1", "limits", key]),
            None::<&()>,
            Duration::ZERO,
        )
        .await
    }

    /// `GET /v1/limits`: every declared limit, then every dynamic key that has state.
    ///
    /// # Errors
    /// Transport and server errors only.
    pub async fn list_limits(&self) -> Result<Vec<Limit>, Error> {
        let limits: LimitListing = self
            .call(
                Method::GET,
                self.url(&["v1", "limits"]),
                None::<&()>,
                Duration::ZERO,
            )
            .await?;
        Ok(limits.limits)
    }

    /// `DELETE /v1/limits/{key}`.
    ///
    /// # Errors
    /// [`Error::Api`] 404 `unknown_limit`, or 409 `limit_in_use` while a task names it.
    pub async fn delete_limit(&self, key: &str) -> Result<(), Error> {
        self.call_empty(
            Method::DELETE,
            self.url(&["v1", "limits", key]),
            None::<&()>,
        )
        .await
    }

    /// `POST /v1/limits/{key}/pause`: pauses a key for everyone (an upstream answered 429):
    /// until it ends, every acquire and run on it waits. A pause in force that ends later is
    /// kept. Answers the pause in force.
    ///
    /// ```
    /// # async fn f(client: &tollgate_client::Client) -> Result<(), tollgate_client::Error> {
    /// use tollgate_client::PauseRequest;
    /// let pause = PauseRequest { for_ms: Some(30_000), ..PauseRequest::default() };
    /// let p = client.pause("stripe-api", &pause).await?;
    /// println!("paused until {:?}", p.paused_until_ms);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::Api`]: 404 `unknown_limit` for a static key that is not declared (a dynamic key
    /// needs `dynamic: true`); 400 `invalid_field` without exactly one of `for_ms` and
    /// `until_ms`.
    pub async fn pause(&self, key: &str, request: &PauseRequest) -> Result<Pause, Error> {
        self.call(
            Method::POST,
            self.url(&["v1", "limits", key, "pause"]),
            Some(request),
            Duration::ZERO,
        )
        .await
    }

    /// `POST /v1/limits/{key}/feedback`: what a call to the upstream an adaptive limit
    /// protects met. `ok` raises its limit in force by one (up to its `max`), `throttled`
    /// halves it (down to its `min`); the runs waiting on it are re-planned at once. Answers
    /// the limit, `limit_in_force` included.
    ///
    /// ```
    /// # async fn f(client: &tollgate_client::Client) -> Result<(), tollgate_client::Error> {
    /// use tollgate_client::FeedbackOutcome;
    /// let limit = client.feedback("stripe-api", FeedbackOutcome::Throttled).await?;
    /// println!("now {:?} per period", limit.limit_in_force);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::Api`]: 404 `unknown_limit` for a key that is not declared, 422 `not_adaptive`
    /// for a limit declared without `adaptive`.
    pub async fn feedback(&self, key: &str, outcome: FeedbackOutcome) -> Result<Limit, Error> {
        self.call(
            Method::POST,
            self.url(&["v1", "limits", key, "feedback"]),
            Some(&FeedbackRequest { outcome }),
            Duration::ZERO,
        )
        .await
    }

    /// `DELETE /v1/limits/{key}/pause`: ends a key's pause now (`dynamic` for a dynamic key);
    /// the runs waiting on it are tried at once.
    ///
    /// # Errors
    /// Transport and server errors only.
    pub async fn resume(&self, key: &str, dynamic: bool) -> Result<Resumed, Error> {
        let mut url = self.url(&["v1", "limits", key, "pause"]);
        if dynamic {
            url.query_pairs_mut().append_pair("dynamic", "true");
        }
        self.call(Method::DELETE, url, None::<&()>, Duration::ZERO)
            .await
    }

    /// `GET /v1/pauses`: every pause in force.
    ///
    /// # Errors
    /// Transport and server errors only.
    pub async fn pauses(&self) -> Result<Vec<Pause>, Error> {
        let listing: PauseListing = self
            .call(
                Method::GET,
                self.url(&["v1", "pauses"]),
                None::<&()>,
                Duration::ZERO,
            )
            .await?;
        Ok(listing.pauses)
    }

    /// `POST /v1/acquire`: takes every entry's units atomically, or none. A denial is an
    /// answer (`allowed: false` with `retry_after_ms`), not an error.
    ///
    /// With `wait`, the server holds the request until it is admitted or the wait it would
    /// need no longer fits (capped by the server, 60 s by default); the call's timeout grows by
    /// `wait`.
    ///
    /// ```
    /// # async fn f(client: &tollgate_client::Client) -> Result<(), tollgate_client::Error> {
    /// use std::time::Duration;
    /// use tollgate_client::AcquireEntry;
    /// let answer = client
    ///     .acquire(&[AcquireEntry::new("user:42").rate("10/m")], Some(Duration::from_secs(2)))
    ///     .await?;
    /// if !answer.allowed {
    ///     println!("retry in {:?}", answer.retry_after());
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::Api`]: 404 `unknown_limit` (field `limits[i].key`) for an undeclared key
    /// without a definition; 422 `insufficient_capacity` for units the limit can never hold;
    /// 422 `wrong_algorithm` for concurrency or barrier keys; 400 for malformed entries;
    /// 503 `store_unavailable` (transient).
    pub async fn acquire(
        &self,
        limits: &[AcquireEntry],
        wait: Option<Duration>,
    ) -> Result<Acquisition, Error> {
        let body = AcquireRequest {
            limits: limits.to_vec(),
            wait_ms: wait.map(millis_ceil),
        };
        self.call(
            Method::POST,
            self.url(&["v1", "acquire"]),
            Some(&body),
            wait.unwrap_or_default(),
        )
        .await
    }

    /// `POST /v1/acquire/batch`: each request decided on its own, atomically, in order,
    /// without waiting. One result per request.
    ///
    /// # Errors
    /// [`Error::Api`] when the batch is malformed as a whole (an empty request, a bad entry;
    /// nothing is decided then). Errors that only deciding reveals are results.
    pub async fn acquire_batch(
        &self,
        requests: &[Vec<AcquireEntry>],
    ) -> Result<Vec<BatchResult>, Error> {
        let body = BatchRequest {
            requests: requests
                .iter()
                .map(|limits| BatchItem {
                    limits: limits.clone(),
                })
                .collect(),
        };
        let answer: BatchAnswer = self
            .call(
                Method::POST,
                self.url(&["v1", "acquire", "batch"]),
                Some(&body),
                Duration::ZERO,
            )
            .await?;
        Ok(answer
            .results
            .into_iter()
            .map(|r| match r {
                BatchOutcome::Decided(a) => Ok(a),
                BatchOutcome::Failed { error } => Err(error),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tollgate_api::Namespace;

    #[test]
    fn entries_serialize_as_the_server_reads_them() {
        let entries = [
            AcquireEntry::new("stripe-api"),
            AcquireEntry::new("user:42").units(2).rate("10/m"),
        ];
        let body = AcquireRequest {
            limits: entries.to_vec(),
            wait_ms: Some(500),
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            json!({"limits": [{"key": "stripe-api"}, {"key": "user:42", "units": 2, "rate": "10/m"}],
                   "wait_ms": 500})
        );
    }

    #[test]
    fn limits_read_with_their_flattened_definition() {
        let limit: Limit = serde_json::from_value(json!({
            "key": "g", "namespace": "static", "algorithm": "gcra", "limit": 10, "period": "1s",
            "burst": 4, "used": 1, "remaining": 3, "reset_after_ms": 100
        }))
        .unwrap();
        assert_eq!(limit.definition.params.burst, Some(4));
        assert_eq!(limit.namespace, Namespace::Static);
        let future: Limit = serde_json::from_value(json!({
            "key": "c", "namespace": "somewhere", "algorithm": "concurrency", "limit": 2,
            "lease_ttl": "30s", "used": 0, "remaining": 2, "reset_after_ms": null
        }))
        .unwrap();
        assert_eq!(future.namespace, Namespace::Other);
        assert_eq!(future.reset_after_ms, None);
    }
}
