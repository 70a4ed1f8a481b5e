//! [`TaskBuilder`]: a task definition ([`TaskSpec`], docs/design.md §3) written in Rust, for
//! [`Client::put_task`] or a [`Worker`](crate::Worker).

use std::time::Duration;

use tollgate_api::{
    ConcurrencyUse, ErrorCode, IdempotencyUse, KeyScope, LimitParams, NumberOrExpr, OnLimit,
    RateLimitUse, RetrySpec, TaskSpec, Throttle, ThrottleSpec,
};

use crate::client::Client;
use crate::error::Error;
use crate::runs::Task;

/// A task definition under construction: its name and the [`TaskSpec`] sent to the server.
///
/// Limit modifiers ([`TaskBuilder::units_expr`], [`TaskBuilder::limit_expr`],
/// [`TaskBuilder::algorithm`], …) apply to the rate limit added last. Constants are numbers;
/// the `_expr` variants take CEL evaluated per run (with `input`, `additional_metadata` and
/// `event` in scope).
///
/// ```
/// use std::time::Duration;
/// use tollgate_client::{OnLimit, Task};
///
/// let task = Task::builder("summarize")
///     .static_limit("llm-api", 1)
///     .dynamic_limit("input.user_id", 1, 10, "1m")
///     .units_expr("input.weight")
///     .limit_expr("additional_metadata.tier == 'pro' ? 100 : 10")
///     .algorithm("gcra")
///     .concurrency("input.account_id", 2)
///     .idempotency("input.request_id", "24h")
///     .on_limit(OnLimit::Requeue)
///     .trigger("document/uploaded")
///     .max_attempts(5)
///     .lease_timeout(Duration::from_secs(30));
/// let spec = task.spec();
/// assert_eq!(spec.rate_limits.len(), 2);
/// assert_eq!(spec.lease_timeout.as_deref(), Some("30000ms"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskBuilder {
    name: String,
    spec: TaskSpec,
    lease_timeout: Duration,
    problems: Vec<String>,
}

/// The server's default lease timeout (docs/design.md §3), used when a task does not set one.
pub const DEFAULT_LEASE_TIMEOUT: Duration = tollgate_api::DEFAULT_LEASE_TIMEOUT;

impl Task {
    /// A definition of task `name`, with no limits (see [`TaskBuilder`]).
    pub fn builder(name: impl Into<String>) -> TaskBuilder {
        TaskBuilder {
            name: name.into(),
            spec: TaskSpec::default(),
            lease_timeout: DEFAULT_LEASE_TIMEOUT,
            problems: Vec::new(),
        }
    }
}

impl TaskBuilder {
    /// The task's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The definition as it is sent to the server.
    pub fn spec(&self) -> &TaskSpec {
        &self.spec
    }

    /// How long a lease lasts without a heartbeat (the server's default, 30 s, unless set).
    pub fn lease_timeout_duration(&self) -> Duration {
        self.lease_timeout
    }

    /// What is wrong with the definition (a modifier with no rate limit to apply to, say);
    /// empty when it can be sent.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// Uses the declared limit `key` (`PUT /v1/limits/{key}`), `units` per run.
    #[must_use]
    pub fn static_limit(mut self, key: impl Into<String>, units: u64) -> TaskBuilder {
        self.spec.rate_limits.push(RateLimitUse {
            static_key: Some(key.into()),
            units: Some(NumberOrExpr::Number(units)),
            ..RateLimitUse::default()
        });
        self
    }

    /// Uses a key rendered per run from CEL (`"input.user_id"`), `units` per run, at most
    /// `limit` units per `period` (a period string: `"1s"`, `"500ms"`, `"MINUTE"`).
    #[must_use]
    pub fn dynamic_limit(
        mut self,
        key_cel: impl Into<String>,
        units: u64,
        limit: u64,
        period: impl Into<String>,
    ) -> TaskBuilder {
        self.spec.rate_limits.push(RateLimitUse {
            dynamic_key: Some(key_cel.into()),
            units: Some(NumberOrExpr::Number(units)),
            limit: Some(NumberOrExpr::Number(limit)),
            params: LimitParams {
                period: Some(period.into()),
                ..LimitParams::default()
            },
            ..RateLimitUse::default()
        });
        self
    }

    /// Adds a rate limit as written (any field of [`RateLimitUse`]).
    #[must_use]
    pub fn rate_limit(mut self, limit: RateLimitUse) -> TaskBuilder {
        self.spec.rate_limits.push(limit);
        self
    }

    fn last(mut self, what: &str, f: impl FnOnce(&mut RateLimitUse)) -> TaskBuilder {
        match self.spec.rate_limits.last_mut() {
            Some(limit) => f(limit),
            None => self.problems.push(format!(
                "{what} applies to the rate limit added last, and there is none yet"
            )),
        }
        self
    }

    /// The last rate limit's units, as CEL evaluated per run (`"input.weight"`).
    #[must_use]
    pub fn units_expr(self, cel: impl Into<String>) -> TaskBuilder {
        let cel = cel.into();
        self.last("units_expr", |l| l.units = Some(NumberOrExpr::Expr(cel)))
    }

    /// The last (dynamic) rate limit's limit, as CEL evaluated per run.
    #[must_use]
    pub fn limit_expr(self, cel: impl Into<String>) -> TaskBuilder {
        let cel = cel.into();
        self.last("limit_expr", |l| l.limit = Some(NumberOrExpr::Expr(cel)))
    }

    /// The last (dynamic) rate limit's algorithm: `sliding_window` (default), `fixed_window`,
    /// `gcra`, `token_bucket`.
    #[must_use]
    pub fn algorithm(self, algorithm: impl Into<String>) -> TaskBuilder {
        let algorithm = algorithm.into();
        self.last("algorithm", |l| l.params.algorithm = Some(algorithm))
    }

    /// The last (dynamic) rate limit's `burst` (`gcra`).
    #[must_use]
    pub fn burst(self, burst: u64) -> TaskBuilder {
        self.last("burst", |l| l.params.burst = Some(burst))
    }

    /// The last (dynamic) rate limit's window alignment (`fixed_window`): `first_use` or
    /// `clock`.
    #[must_use]
    pub fn align(self, align: impl Into<String>) -> TaskBuilder {
        let align = align.into();
        self.last("align", |l| l.params.align = Some(align))
    }

    /// The last (dynamic) rate limit's key is the task's own (`"scope": "task"`): the same key
    /// rendered by another task is another limit, as Inngest's per-function limits are. Keys
    /// are shared by every task by default, as in Hatchet.
    #[must_use]
    pub fn scope_task(self) -> TaskBuilder {
        self.last("scope_task", |l| l.scope = Some(KeyScope::Task))
    }

    /// Runs of this task start at most at `rate` (`"10/m"`), evenly spaced, across every
    /// worker: Celery's task `rate_limit`, made global. Runs over it wait.
    #[must_use]
    pub fn throttle(mut self, rate: impl Into<String>) -> TaskBuilder {
        self.spec.throttle = Some(Throttle::Rate(rate.into()));
        self
    }

    /// Inngest's `throttle`: `limit` runs per `period`, `burst` of them back to back (Inngest's
    /// default is 1), one budget per value of `key_cel` when given. Runs over it wait.
    #[must_use]
    pub fn throttle_per(
        mut self,
        limit: u64,
        period: impl Into<String>,
        burst: Option<u64>,
        key_cel: Option<&str>,
    ) -> TaskBuilder {
        self.spec.throttle = Some(rate_spec(limit, period.into(), burst, key_cel));
        self
    }

    /// Inngest's `rateLimit`: runs enqueued over `rate` (`"10/h"`) are stored as skipped, whatever
    /// [`TaskBuilder::on_limit`] says (`"rate_limit"`, decided once, at enqueue).
    #[must_use]
    pub fn skip_over_rate(mut self, rate: impl Into<String>) -> TaskBuilder {
        self.spec.rate_limit = Some(Throttle::Rate(rate.into()));
        self
    }

    /// [`TaskBuilder::skip_over_rate`] in Inngest's form: `limit` runs per `period`, `burst`
    /// at once (default 1), one budget per value of `key_cel` when given.
    #[must_use]
    pub fn skip_over_rate_per(
        mut self,
        limit: u64,
        period: impl Into<String>,
        burst: Option<u64>,
        key_cel: Option<&str>,
    ) -> TaskBuilder {
        self.spec.rate_limit = Some(rate_spec(limit, period.into(), burst, key_cel));
        self
    }

    /// Spaces retries (after a failure with retry, or a lapsed lease): the first waits
    /// `backoff` (`"1s"`), each next one `factor` times longer (2 by default), at most `max`.
    /// The run is `scheduled` meanwhile and holds no slot.
    #[must_use]
    pub fn retry(
        mut self,
        backoff: impl Into<String>,
        factor: Option<u32>,
        max: Option<&str>,
    ) -> TaskBuilder {
        self.spec.retry = Some(RetrySpec {
            backoff: backoff.into(),
            factor,
            max: max.map(str::to_owned),
            jitter: None,
        });
        self
    }

    /// What happens to a run its limits do not admit now: parked until they do
    /// ([`OnLimit::Requeue`], the default) or stored as skipped ([`OnLimit::Skip`]).
    #[must_use]
    pub fn on_limit(mut self, on_limit: OnLimit) -> TaskBuilder {
        self.spec.on_limit = Some(on_limit);
        self
    }

    /// At most `limit` leased runs per key rendered from `key_cel` (`"'global'"` for one key).
    #[must_use]
    pub fn concurrency(mut self, key_cel: impl Into<String>, limit: u64) -> TaskBuilder {
        self.spec.concurrency.push(ConcurrencyUse {
            key: key_cel.into(),
            limit: NumberOrExpr::Number(limit),
        });
        self
    }

    /// A concurrency limit whose limit is CEL evaluated per run.
    #[must_use]
    pub fn concurrency_expr(
        mut self,
        key_cel: impl Into<String>,
        limit_cel: impl Into<String>,
    ) -> TaskBuilder {
        self.spec.concurrency.push(ConcurrencyUse {
            key: key_cel.into(),
            limit: NumberOrExpr::Expr(limit_cel.into()),
        });
        self
    }

    /// Runs whose key rendered from `key_cel` was seen within `period` are skipped (reason
    /// `duplicate`).
    #[must_use]
    pub fn idempotency(
        mut self,
        key_cel: impl Into<String>,
        period: impl Into<String>,
    ) -> TaskBuilder {
        self.spec.idempotency = Some(IdempotencyUse {
            key: key_cel.into(),
            period: period.into(),
        });
        self
    }

    /// An event name that starts a run of this task (`POST /v1/events`).
    #[must_use]
    pub fn trigger(mut self, event: impl Into<String>) -> TaskBuilder {
        self.spec.triggers.push(event.into());
        self
    }

    /// Attempts before a run fails for good (server default 3); lease expiries count.
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> TaskBuilder {
        self.spec.max_attempts = Some(attempts);
        self
    }

    /// How long a lease lasts without a heartbeat (server default 30 s), millisecond
    /// resolution. A [`Worker`](crate::Worker) heartbeats every third of it.
    #[must_use]
    pub fn lease_timeout(mut self, timeout: Duration) -> TaskBuilder {
        if timeout < Duration::from_millis(1) {
            self.problems
                .push("lease_timeout must be at least 1ms".to_owned());
        }
        self.lease_timeout = timeout;
        self.spec.lease_timeout = Some(format!("{}ms", timeout.as_millis()));
        self
    }

    /// `PUT /v1/tasks/{name}` with this definition.
    ///
    /// # Errors
    /// [`Error::Api`] with the server's code and field (`invalid_expression`,
    /// `unknown_limit`, …); a builder with [`TaskBuilder::problems`] is refused before any
    /// call, as 400 `invalid_field`.
    pub async fn put(&self, client: &Client) -> Result<Task, Error> {
        if let Some(problem) = self.problems.first() {
            return Err(Error::Api {
                status: 400,
                code: ErrorCode::InvalidField,
                message: format!("task {:?}: {problem}", self.name),
                field: None,
                transient: false,
            });
        }
        client.put_task(&self.name, &self.spec).await
    }
}

/// Inngest's form of a `throttle` or `rate_limit`.
fn rate_spec(limit: u64, period: String, burst: Option<u64>, key_cel: Option<&str>) -> Throttle {
    Throttle::Spec(ThrottleSpec {
        limit,
        period,
        burst,
        key: key_cel.map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builds_the_wire_spec_of_design_section_3() {
        let task = Task::builder("t")
            .static_limit("test-limit", 1)
            .dynamic_limit("input.user_id", 1, 10, "MINUTE")
            .dynamic_limit("'tier:' + additional_metadata.tier", 1, 10, "1h")
            .units_expr("input.weight")
            .limit_expr("additional_metadata.tier == 'pro' ? 100 : 10")
            .algorithm("gcra")
            .burst(5)
            .concurrency("input.account_id", 2)
            .idempotency("event.data.id", "24h")
            .trigger("intercom/company.updated")
            .max_attempts(3)
            .lease_timeout(Duration::from_secs(30));
        assert!(task.problems().is_empty());
        assert_eq!(
            serde_json::to_value(task.spec()).unwrap(),
            json!({
                "rate_limits": [
                    {"static_key": "test-limit", "units": 1},
                    {"dynamic_key": "input.user_id", "units": 1, "limit": 10, "period": "MINUTE"},
                    {"dynamic_key": "'tier:' + additional_metadata.tier", "units": "input.weight",
                     "limit": "additional_metadata.tier == 'pro' ? 100 : 10", "period": "1h",
                     "algorithm": "gcra", "burst": 5}
                ],
                "concurrency": [{"key": "input.account_id", "limit": 2}],
                "idempotency": {"key": "event.data.id", "period": "24h"},
                "triggers": ["intercom/company.updated"],
                "max_attempts": 3,
                "lease_timeout": "30000ms"
            })
        );
    }

    #[test]
    fn a_modifier_without_a_rate_limit_is_a_problem_not_a_silent_no_op() {
        let task = Task::builder("t").units_expr("input.w");
        assert_eq!(task.problems().len(), 1);
        assert!(task.spec().rate_limits.is_empty());
    }
}
