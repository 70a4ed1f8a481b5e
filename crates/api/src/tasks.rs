//! Tasks: `PUT/GET /v1/tasks/{name}`, `GET /v1/tasks`. [`TaskSpec`] is a task definition in
//! its JSON form, kept as given so that `GET /v1/tasks/{name}` shows it back.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::limits::{LimitParams, Seen, next_key, read, write};
use crate::runs::RunState;

/// A task definition as users write it (`PUT /v1/tasks/{name}`). Every field is optional; `{}` is a task
/// with no limits, `on_limit` requeue, 3 attempts and a 30 s lease timeout. Unknown fields are
/// rejected everywhere.
///
/// ```
/// use tollgate_api::TaskSpec;
/// let spec: TaskSpec = serde_json::from_str(r#"{
///     "rate_limits": [{"dynamic_key": "input.user_id", "limit": 10, "period": "MINUTE"}],
///     "concurrency": [{"key": "input.account_id", "limit": 2}]
/// }"#)?;
/// assert_eq!(spec.rate_limits[0].dynamic_key.as_deref(), Some("input.user_id"));
/// assert!(serde_json::from_str::<TaskSpec>(r#"{"rate_limitz": []}"#).is_err());
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Rate limits every run acquires (all of them atomically).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimitUse>,
    /// Concurrency limits held while a run is leased.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub concurrency: Vec<ConcurrencyUse>,
    /// What happens to a run that cannot start (default `requeue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_limit: Option<OnLimit>,
    /// Runs with the same rendered key within `period` are skipped as duplicates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<IdempotencyUse>,
    /// Event names that start a run of this task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<String>,
    /// Attempts before a run fails for good (default 3, at most 100); lease expiries count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// How long a lease lasts without a heartbeat, as a period string (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_timeout: Option<String>,
    /// Runs over this rate wait, evenly spaced: Celery's task `rate_limit` (`"10/m"`) shared by
    /// every worker, or Inngest's `throttle` (`{"limit", "period", "burst"?, "key"?}`). A gcra
    /// limit of the task's own (two tasks never share it), added to `rate_limits`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<Throttle>,
    /// Runs over this rate are stored as `skipped` when enqueued, whatever `on_limit` says:
    /// Inngest's `rateLimit`. The same forms as `throttle` (gcra, burst 1 unless given, the
    /// task's own key), decided once, at enqueue: a run it admits keeps its units and waits
    /// on its other limits as usual.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Throttle>,
    /// How retries are spaced (after `fail` with `retry: true`, and after a lapsed lease):
    /// Hatchet's and Inngest's backoff. Without it a retry is queued at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// The default priority of its runs, 1 (least urgent) to 4 (most urgent); default 2. A
    /// number, or a CEL expression evaluated per run at enqueue (`input.vip ? 4 : 2`). An
    /// enqueue's own `priority` wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<NumberOrExpr>,
    /// A CEL expression naming who a run is for (`input.tenant_id`): runs that wait on the same
    /// limit take turns across these keys (weighted by `fairness_weight`), not arrival order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fairness_key: Option<String>,
    /// A run's share when fairness keys take turns, 1 to 1000 (default 1): a number or CEL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fairness_weight: Option<NumberOrExpr>,
}

/// A task's `retry`: the first retry waits `backoff`, each next one `factor` times longer, at
/// most `max`; `jitter` waits a random part of the second half of each delay instead.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// The first retry's delay, a period string (`"1s"`).
    pub backoff: String,
    /// Each next delay is this many times the one before (default 2; 1 for constant delays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<u32>,
    /// The longest delay, a period string (default: no bound but the period limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
    /// Spread retries: each delay becomes a random one between half of it and all of it
    /// (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<bool>,
}

/// A task's `throttle`: a rate string (`"10/m"`, Celery's form) or Inngest's object. Either is
/// gcra with a burst of 1 unless `burst` says otherwise: `{"limit": 10, "period": "1h"}` starts
/// one run every 6 minutes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Throttle {
    /// `"10/m"`: one limit for the whole task.
    Rate(String),
    /// `{"limit": 10, "period": "1m", "burst": 2, "key": "event.data.user_id"}`.
    Spec(ThrottleSpec),
}

/// Inngest's throttle object.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ThrottleSpec {
    /// Runs per `period`.
    pub limit: u64,
    /// A period string (`"1m"`, `"1h"`).
    pub period: String,
    /// Runs that may start back to back (default 1: evenly spaced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// A CEL expression: one limit per value (per user, per account) within the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl Serialize for Throttle {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Throttle::Rate(r) => s.serialize_str(r),
            Throttle::Spec(spec) => spec.serialize(s),
        }
    }
}

// By hand rather than `#[serde(untagged)]`: an object's own errors (an unknown field, a missing
// `period`) reach the caller instead of "did not match any variant".
impl<'de> Deserialize<'de> for Throttle {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Throttle, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Throttle;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    r#"a rate string ("10/m") or an object {"limit", "period", "burst"?, "key"?}"#,
                )
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Throttle, E> {
                Ok(Throttle::Rate(s.to_owned()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Throttle, A::Error> {
                Err(de::Error::custom(
                    r#"one rate is expected here ("10/m" or {"limit", "period", "burst"?, "key"?}), not a list: a task's list of limits is `rate_limits`"#,
                ))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Throttle, A::Error> {
                ThrottleSpec::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(Throttle::Spec)
            }
        }
        d.deserialize_any(V)
    }
}

/// Where a dynamic key's limit applies: one budget for every task rendering the key (the
/// default, as in Hatchet), or one per task (as Inngest's per-function limits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum KeyScope {
    /// Every task rendering the key shares its limit.
    #[default]
    Global,
    /// The key is the task's own: the same key rendered by another task is another limit.
    Task,
}

/// What a task does with a run that a limit does not admit now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum OnLimit {
    /// Limits are taken when a worker leases the run; until then it is parked (the default).
    #[default]
    Requeue,
    /// Limits are taken at enqueue; a run over the limit is stored as `skipped`.
    Skip,
}

/// One rate limit a task uses: a declared limit (`static_key`), or a key rendered per run
/// (`dynamic_key`, CEL) with its definition here: a `limit` (a number or CEL) and the rate
/// [`LimitParams`] of a [`LimitSpec`](crate::LimitSpec), written as fields of this object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RateLimitUse {
    /// The key of a declared limit, literally.
    pub static_key: Option<String>,
    /// A CEL expression giving the key, in the dynamic namespace.
    pub dynamic_key: Option<String>,
    /// Units one run costs (default 1): a number or a CEL expression.
    pub units: Option<NumberOrExpr>,
    /// The limit of a dynamic key: a number or a CEL expression.
    pub limit: Option<NumberOrExpr>,
    /// The rest of a dynamic key's definition (`algorithm`, `rate`, `period`, `burst`, …).
    pub params: LimitParams,
    /// Whether a dynamic key is shared by every task (default) or the task's own.
    pub scope: Option<KeyScope>,
}

impl RateLimitUse {
    /// The fields' names, in the order they are written; `duration`, Hatchet's name for
    /// `period`, is read as `period` and written back as it.
    pub const FIELDS: [&'static str; 14] = [
        "static_key",
        "dynamic_key",
        "units",
        "limit",
        "algorithm",
        "rate",
        "period",
        "burst",
        "precision",
        "align",
        "capacity",
        "refill",
        "scope",
        "duration",
    ];

    /// The definition fields that are set, by name (they apply to dynamic keys only).
    pub fn definition_fields(&self) -> impl Iterator<Item = &'static str> + use<> {
        self.limit
            .is_some()
            .then_some("limit")
            .into_iter()
            .chain(self.params.set_fields())
    }
}

impl Serialize for RateLimitUse {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        write(&mut map, "static_key", &self.static_key)?;
        write(&mut map, "dynamic_key", &self.dynamic_key)?;
        write(&mut map, "units", &self.units)?;
        write(&mut map, "limit", &self.limit)?;
        self.params.write_head(&mut map)?;
        self.params.write_tail(&mut map)?;
        write(&mut map, "scope", &self.scope)?;
        map.end()
    }
}

impl<'de> Deserialize<'de> for RateLimitUse {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RateLimitUse, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RateLimitUse;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("struct RateLimitUse")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RateLimitUse, A::Error> {
                let mut r = RateLimitUse::default();
                let mut seen = Seen::default();
                while let Some(key) = next_key(&mut map, &RateLimitUse::FIELDS)? {
                    match key {
                        "static_key" => read(&mut r.static_key, "static_key", &mut map, &mut seen)?,
                        "dynamic_key" => {
                            read(&mut r.dynamic_key, "dynamic_key", &mut map, &mut seen)?;
                        }
                        "units" => read(&mut r.units, "units", &mut map, &mut seen)?,
                        "limit" => read(&mut r.limit, "limit", &mut map, &mut seen)?,
                        "scope" => read(&mut r.scope, "scope", &mut map, &mut seen)?,
                        // Hatchet's SDKs write a rate limit's period as `duration`.
                        "duration" | "period" => {
                            let other = if key == "duration" {
                                "period"
                            } else {
                                "duration"
                            };
                            if seen.has(other) {
                                return Err(de::Error::custom(
                                    "give `period` or `duration` (Hatchet's name for it), not both",
                                ));
                            }
                            if key == "duration" {
                                read(&mut r.params.period, "duration", &mut map, &mut seen)?;
                            } else if !r.params.read(key, &mut map, &mut seen)? {
                                return Err(de::Error::unknown_field(key, &RateLimitUse::FIELDS));
                            }
                        }
                        _ => {
                            if !r.params.read(key, &mut map, &mut seen)? {
                                return Err(de::Error::unknown_field(key, &RateLimitUse::FIELDS));
                            }
                        }
                    }
                }
                Ok(r)
            }
        }
        d.deserialize_struct("RateLimitUse", &RateLimitUse::FIELDS, V)
    }
}

/// A concurrency limit a task uses: at most `limit` leased runs per rendered `key`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyUse {
    /// A CEL expression giving the key (`"'global'"` for one shared key).
    pub key: String,
    /// Leased runs per key: a number or a CEL expression.
    pub limit: NumberOrExpr,
}

/// Deduplication of runs by a rendered key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct IdempotencyUse {
    /// A CEL expression giving the key (`"event.data.id"`).
    pub key: String,
    /// How long a key is remembered, as a period string (`"24h"`).
    pub period: String,
}

/// A constant (a JSON number) or a CEL expression (a JSON string).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NumberOrExpr {
    /// A constant.
    Number(u64),
    /// CEL source, evaluated per run.
    Expr(String),
}

impl From<u64> for NumberOrExpr {
    fn from(n: u64) -> NumberOrExpr {
        NumberOrExpr::Number(n)
    }
}

impl From<&str> for NumberOrExpr {
    fn from(s: &str) -> NumberOrExpr {
        NumberOrExpr::Expr(s.to_owned())
    }
}

impl Serialize for NumberOrExpr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            NumberOrExpr::Number(n) => s.serialize_u64(*n),
            NumberOrExpr::Expr(e) => s.serialize_str(e),
        }
    }
}

// By hand rather than `#[serde(untagged)]`, whose error ("did not match any variant") says
// nothing about what was expected.
impl<'de> Deserialize<'de> for NumberOrExpr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<NumberOrExpr, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NumberOrExpr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number or a CEL expression string")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<NumberOrExpr, E> {
                Ok(NumberOrExpr::Number(n))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<NumberOrExpr, E> {
                u64::try_from(n)
                    .map(NumberOrExpr::Number)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(n), &self))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<NumberOrExpr, E> {
                Err(E::invalid_value(de::Unexpected::Float(n), &self))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<NumberOrExpr, E> {
                Ok(NumberOrExpr::Expr(s.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Runs of a task per state (`"depth"` in a task's answer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default)]
#[allow(missing_docs)] // one count per `RunState`, named as it
pub struct Depth {
    pub scheduled: u64,
    pub queued: u64,
    pub waiting: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub skipped: u64,
    pub cancelled: u64,
}

impl Depth {
    /// The count for `state`.
    pub fn get(&self, state: RunState) -> u64 {
        match state {
            RunState::Scheduled => self.scheduled,
            RunState::Queued => self.queued,
            RunState::Waiting => self.waiting,
            RunState::Running => self.running,
            RunState::Succeeded => self.succeeded,
            RunState::Failed => self.failed,
            RunState::Skipped => self.skipped,
            RunState::Cancelled => self.cancelled,
        }
    }

    /// Adds `n` runs in `state`.
    pub fn add(&mut self, state: RunState, n: u64) {
        let slot = match state {
            RunState::Scheduled => &mut self.scheduled,
            RunState::Queued => &mut self.queued,
            RunState::Waiting => &mut self.waiting,
            RunState::Running => &mut self.running,
            RunState::Succeeded => &mut self.succeeded,
            RunState::Failed => &mut self.failed,
            RunState::Skipped => &mut self.skipped,
            RunState::Cancelled => &mut self.cancelled,
        };
        *slot += n;
    }
}

/// A task as `PUT/GET /v1/tasks/{name}` and `GET /v1/tasks` answer it: its definition as
/// given, with the defaults it runs under filled in, and how many runs it has in each state.
///
/// The definition is written with every field, defaults filled in (`"on_limit": "requeue"`,
/// `"max_attempts": 3`, `"lease_timeout": "30s"`, empty lists, `"idempotency": null`), so
/// that a reader need not know the defaults; read back, it is a [`TaskSpec`] that defines
/// the same task again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Task {
    /// The task's name.
    pub name: String,
    /// Its definition, defaults filled in.
    #[serde(serialize_with = "shown_spec")]
    pub spec: TaskSpec,
    /// Its runs per state.
    #[serde(default)]
    pub depth: Depth,
}

/// A [`TaskSpec`] with every field written out.
fn shown_spec<S: Serializer>(spec: &TaskSpec, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    #[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
    struct Shown<'a> {
        rate_limits: &'a [RateLimitUse],
        concurrency: &'a [ConcurrencyUse],
        on_limit: OnLimit,
        idempotency: &'a Option<IdempotencyUse>,
        triggers: &'a [String],
        max_attempts: u32,
        lease_timeout: std::borrow::Cow<'a, str>,
        throttle: &'a Option<Throttle>,
        rate_limit: &'a Option<Throttle>,
        retry: &'a Option<RetrySpec>,
    }
    Shown {
        rate_limits: &spec.rate_limits,
        concurrency: &spec.concurrency,
        on_limit: spec.on_limit.unwrap_or_default(),
        idempotency: &spec.idempotency,
        triggers: &spec.triggers,
        max_attempts: spec.max_attempts.unwrap_or(crate::DEFAULT_MAX_ATTEMPTS),
        lease_timeout: match &spec.lease_timeout {
            Some(t) => std::borrow::Cow::Borrowed(t.as_str()),
            None => std::borrow::Cow::Owned(format!("{}s", crate::DEFAULT_LEASE_TIMEOUT.as_secs())),
        },
        throttle: &spec.throttle,
        rate_limit: &spec.rate_limit,
        retry: &spec.retry,
    }
    .serialize(s)
}

/// `GET /v1/tasks`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskListing {
    /// Every task, by name.
    pub tasks: Vec<Task>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn number_or_expr_reads_numbers_and_strings_and_explains_the_rest() {
        let read = |v: serde_json::Value| serde_json::from_value::<NumberOrExpr>(v);
        assert_eq!(read(json!(3)).unwrap(), NumberOrExpr::Number(3));
        assert_eq!(read(json!("input.w")).unwrap(), "input.w".into());
        for bad in [json!(-1), json!(1.5), json!(true), json!(null), json!([1])] {
            let e = read(bad.clone()).unwrap_err().to_string();
            assert!(
                e.contains("a whole number or a CEL expression string"),
                "{bad}: {e}"
            );
        }
        assert_eq!(
            serde_json::to_value(NumberOrExpr::Number(3)).unwrap(),
            json!(3)
        );
        assert_eq!(
            serde_json::to_value(NumberOrExpr::from("input.w")).unwrap(),
            json!("input.w")
        );
    }

    #[test]
    fn a_throttle_is_a_rate_string_or_inngests_object_and_reads_back_as_written() {
        for v in [
            json!({"throttle": "10/m"}),
            json!({"throttle": {"limit": 10, "period": "1h"}}),
            json!({"throttle": {"limit": 10, "period": "1h", "burst": 2, "key": "input.user"}}),
        ] {
            let spec: TaskSpec = serde_json::from_value(v.clone()).unwrap();
            assert_eq!(serde_json::to_value(&spec).unwrap(), v);
        }
        let read = |v| {
            serde_json::from_value::<TaskSpec>(v)
                .unwrap_err()
                .to_string()
        };
        let e = read(json!({"throttle": {"limit": 10, "period": "1h", "rate": "1/s"}}));
        assert!(e.contains("unknown field `rate`"), "{e}");
        let e = read(json!({"throttle": {"limit": 10}}));
        assert!(e.contains("missing field `period`"), "{e}");
        let e = read(json!({"throttle": 10}));
        assert!(e.contains(r#"a rate string ("10/m") or an object"#), "{e}");
    }

    #[test]
    fn a_rate_limit_entry_takes_a_scope() {
        let spec: TaskSpec = serde_json::from_value(json!({"rate_limits": [
            {"dynamic_key": "input.user", "limit": 1, "period": "1s", "scope": "task"}]}))
        .unwrap();
        assert_eq!(spec.rate_limits[0].scope, Some(KeyScope::Task));
        let e = serde_json::from_value::<TaskSpec>(json!({"rate_limits": [
            {"dynamic_key": "input.user", "limit": 1, "period": "1s", "scope": "worker"}]}))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("unknown variant `worker`, expected `global` or `task`"),
            "{e}"
        );
    }

    #[test]
    fn empty_spec_serializes_as_an_empty_object() {
        assert_eq!(
            serde_json::to_value(TaskSpec::default()).unwrap(),
            json!({})
        );
        assert_eq!(
            serde_json::from_value::<TaskSpec>(json!({})).unwrap(),
            TaskSpec::default()
        );
    }
}
