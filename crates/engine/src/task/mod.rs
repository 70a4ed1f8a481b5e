//! Tasks: the limits a kind of work names (docs/design.md §3), compiled once when the task is defined
//! and rendered once per run, at enqueue.
//!
//! ```
//! use serde_json::json;
//! use tollgate::{LimitSpec, LimitSpecExt};
//! use tollgate::task::{RunContext, Task, TaskSpec};
//!
//! let spec: TaskSpec = serde_json::from_value(json!({
//!     "rate_limits": [
//!         {"static_key": "test-limit", "units": 1},
//!         {"dynamic_key": "input.user_id", "limit": 10, "period": "MINUTE"},
//!     ],
//!     "concurrency": [{"key": "input.account_id", "limit": 2}],
//! }))?;
//! // The caller looks declared limits up (here: one, 100 per minute).
//! let declared = serde_json::from_value::<LimitSpec>(json!({"rate": "100/m"}))?.to_limit()?;
//! let task = Task::compile("sync", spec, &|key| (key == "test-limit").then_some(declared))?;
//!
//! let input = json!({"user_id": "u1", "account_id": 7});
//! let run = task.render(&RunContext::new(&input))?;
//! assert_eq!(run.rate[1].key, "u1"); // in the dynamic namespace
//! assert_eq!(run.concurrency[0].key, "7");
//!
//! // A missing field never means "unlimited": the run is rejected.
//! let e = task.render(&RunContext::new(&json!({"account_id": 7}))).unwrap_err();
//! assert_eq!((e.code(), e.field()), ("invalid_expression", "rate_limits[1].dynamic_key"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Layout
//! - [`TaskSpec`] and its parts: the JSON form, kept as given.
//! - [`Expr`]: a CEL expression compiled once, with its source text.
//! - [`Task`]: a compiled, validated spec; [`Task::render`] gives a run's [`Rendered`] limits.

mod expr;
mod render;
mod spec;

pub use expr::Expr;
pub use render::{RenderError, Rendered, RenderedConcurrency, RenderedLimit, RunContext};
pub use spec::{
    ConcurrencyUse, IdempotencyUse, KeyScope, NumberOrExpr, OnLimit, RateLimitUse, RetrySpec,
    TaskSpec, Throttle, ThrottleSpec,
};

use tollgate_core::{Limit, MAX_CONCURRENCY, MAX_LIMIT, Period, RateLimit};

use crate::error::{Error, check_key};
use crate::spec::{LimitSpec, LimitSpecExt, SpecError};
use expr::{Scope, Uses};
use tollgate_api::LimitParams;

/// Attempts of a run when the task does not say.
pub const DEFAULT_MAX_ATTEMPTS: u32 = tollgate_api::DEFAULT_MAX_ATTEMPTS;
/// The most attempts a task may allow.
pub const MAX_ATTEMPTS: u32 = 100;
/// A run's priority when neither its enqueue nor its task says (docs/design.md §3.15).
pub const DEFAULT_PRIORITY: u8 = 2;
/// The most urgent priority (1 is the least).
pub const MAX_PRIORITY: u8 = 4;
/// Checks an enqueue's own priority.
///
/// # Errors
/// [`Error::Spec`] (field `priority`) outside 1 to 4.
pub fn check_priority(priority: Option<u8>) -> Result<(), Error> {
    match priority {
        Some(p) if !(1..=MAX_PRIORITY).contains(&p) => Err(Error::Spec(spec_error(
            "invalid_field",
            "priority",
            format!("invalid priority {p}: must be between 1 (least urgent) and {MAX_PRIORITY}"),
        ))),
        _ => Ok(()),
    }
}

/// The largest `fairness_weight`.
pub const MAX_FAIRNESS_WEIGHT: u32 = 1_000;
/// How long a lease lasts without a heartbeat when the task does not say.
pub const DEFAULT_LEASE_TIMEOUT: Period =
    match Period::from_secs_const(tollgate_api::DEFAULT_LEASE_TIMEOUT.as_secs()) {
        Some(p) => p,
        None => Period::SECOND,
    };

fn spec_error(
    code: &'static str,
    field: impl Into<String>,
    message: impl Into<String>,
) -> SpecError {
    SpecError {
        code,
        field: field.into(),
        message: message.into(),
    }
}

/// `units` or a limit: known when the task is defined, or computed per run.
#[derive(Clone, Debug)]
enum Amount {
    Const(u64),
    Expr(Expr),
}

impl Amount {
    /// Compiles a `units`/`limit` field that must be between 1 and `max`.
    fn compile(value: &NumberOrExpr, field: &str, max: u64) -> Result<Amount, SpecError> {
        match value {
            NumberOrExpr::Number(n) if (1..=max).contains(n) => Ok(Amount::Const(*n)),
            NumberOrExpr::Number(n) => Err(spec_error(
                "invalid_field",
                field,
                format!("invalid value {n}: must be between 1 and {max}"),
            )),
            NumberOrExpr::Expr(source) => Ok(Amount::Expr(
                Expr::compile(source).map_err(|e| e.within(field))?,
            )),
        }
    }

    fn constant(&self) -> Option<u64> {
        match self {
            Amount::Const(n) => Some(*n),
            Amount::Expr(_) => None,
        }
    }

    fn uses(&self) -> Uses {
        match self {
            Amount::Const(_) => Uses::default(),
            Amount::Expr(e) => e.uses(),
        }
    }

    fn render(
        &self,
        scope: &Scope,
        max: u64,
        field: impl FnOnce() -> String,
    ) -> Result<u64, RenderError> {
        match self {
            Amount::Const(n) => Ok(*n),
            Amount::Expr(e) => eval(e, scope, field, |v| expr::to_count(v, max)),
        }
    }
}

/// Evaluates `e` and converts its value; both failures name `field` and the source.
fn eval<T>(
    e: &Expr,
    scope: &Scope,
    field: impl FnOnce() -> String,
    convert: impl FnOnce(&cel::Value) -> Result<T, String>,
) -> Result<T, RenderError> {
    e.eval(scope)
        .map_err(|m| format!("failed: {m}"))
        .and_then(|v| convert(&v))
        .map_err(|message| RenderError::Expression {
            field: field(),
            source_text: e.source().to_owned(),
            message,
        })
}

/// Renders a key and checks it as the stores will.
/// Evaluates a key expression; the key is `prefix` (a task's scope, or `""`) and the value.
fn render_key(
    e: &Expr,
    prefix: &str,
    scope: &Scope,
    field: impl FnOnce() -> String,
) -> Result<String, RenderError> {
    eval(e, scope, field, |v| {
        let mut key = expr::to_key(v)?;
        if !prefix.is_empty() {
            key.insert_str(0, prefix);
        }
        match check_key(&key) {
            Ok(()) => Ok(key),
            Err(Error::InvalidKey { key, reason }) => {
                Err(format!("gave {key:?}, which is not a valid key: {reason}"))
            }
            Err(other) => Err(other.to_string()),
        }
    })
}

#[derive(Clone, Debug)]
enum DynamicLimit {
    /// A constant limit: its canonical definition and capacity, computed once.
    Const { spec: LimitSpec, capacity: u64 },
    /// `limit` is CEL; `template` is the rest of the definition.
    Expr { limit: Expr, template: LimitSpec },
}

#[derive(Clone, Debug)]
enum CompiledRate {
    Static {
        key: String,
        units: Amount,
    },
    Dynamic {
        /// `None`: the key is `scope` itself (a throttle without `key`).
        key: Option<Expr>,
        /// Put before the rendered key: `""` for a global key, `task:<name>:` for a key of the
        /// task's own (`"scope": "task"`, a throttle), so two tasks never share it.
        scope: Box<str>,
        units: Amount,
        // Boxed: a definition is far larger than a static key's entry.
        limit: Box<DynamicLimit>,
    },
}

/// The longest wait before a retry, whatever the backoff says: a year, in µs (the Redis
/// engine's `MAX_RETRY_DELAY` too).
pub const MAX_RETRY_DELAY_MICROS: u64 = 365 * 86_400 * 1_000_000;

/// A task's `retry`, compiled: the delay before each retry (docs/design.md §3.3). Kept with
/// each run (its policy), so a redefinition changes only runs enqueued after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RetryPolicy {
    /// The first retry's delay.
    pub backoff: Period,
    /// Each next delay is this many times the one before (at least 1).
    pub factor: u32,
    /// The longest delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Period>,
    /// Each delay becomes a random one between half of it and all of it.
    #[serde(default)]
    pub jitter: bool,
}

impl RetryPolicy {
    fn compile(spec: &RetrySpec) -> Result<RetryPolicy, SpecError> {
        let factor = spec.factor.unwrap_or(2);
        if !(1..=1000).contains(&factor) {
            return Err(spec_error(
                "invalid_field",
                "retry.factor",
                format!("invalid retry factor {factor}: must be between 1 and 1000"),
            ));
        }
        let backoff = parse_period(&spec.backoff, "retry.backoff")?;
        let max = spec
            .max
            .as_deref()
            .map(|m| parse_period(m, "retry.max"))
            .transpose()?;
        if let Some(max) = max
            && max < backoff
        {
            return Err(spec_error(
                "invalid_field",
                "retry.max",
                format!("retry.max ({max}) is shorter than retry.backoff ({backoff})"),
            ));
        }
        Ok(RetryPolicy {
            backoff,
            factor,
            max,
            jitter: spec.jitter.unwrap_or(false),
        })
    }

    /// The delay before the retry that follows attempt `attempt` (1-based): `backoff` after
    /// the first, then `factor` times longer each time, at most `max`; without jitter. In
    /// whole microseconds, as the Redis engine reckons it.
    pub fn delay_micros(&self, attempt: u32) -> u64 {
        let cap = self
            .max
            .map_or(MAX_RETRY_DELAY_MICROS, |m| m.as_nanos().as_micros_ceil())
            .min(MAX_RETRY_DELAY_MICROS);
        let mut delay = self.backoff.as_nanos().as_micros_ceil().min(cap);
        for _ in 1..attempt {
            if delay >= cap {
                break;
            }
            delay = delay.saturating_mul(u64::from(self.factor)).min(cap);
        }
        delay
    }
}

/// The prefix of the keys a task keeps to itself (`"scope": "task"`, `throttle`): `task:<name>:`.
/// docs/design.md §3.1.
fn task_scope(task: &str) -> String {
    format!("task:{task}:")
}

#[derive(Clone, Debug)]
struct CompiledConcurrency {
    key: Expr,
    limit: Amount,
}

/// A compiled, validated task. Compiling checks everything that can be checked when the task
/// is defined, so that a run only fails on what its own values make wrong.
///
/// Cheap to clone (expressions are shared), `Send` and `Sync`: render runs from any thread.
#[derive(Clone, Debug)]
pub struct Task {
    /// The task's name.
    pub name: String,
    /// The definition as given (what `GET /v1/tasks/{name}` shows).
    pub spec: TaskSpec,
    /// `spec.on_limit` or its default.
    pub on_limit: OnLimit,
    /// `spec.max_attempts` or its default.
    pub max_attempts: u32,
    /// `spec.lease_timeout` or its default.
    pub lease_timeout: Period,
    /// Event names that start a run.
    pub triggers: Vec<String>,
    /// `spec.retry`, compiled: how retries are spaced.
    pub retry: Option<RetryPolicy>,
    rate: Vec<CompiledRate>,
    /// `rate_limit`: decided at enqueue only.
    gate: Option<CompiledRate>,
    concurrency: Vec<CompiledConcurrency>,
    idempotency: Option<(Expr, Period)>,
    /// `priority`: 1 to 4 (docs/design.md §3.15).
    priority: Amount,
    /// `fairness_key` and `fairness_weight`.
    fairness: Option<Expr>,
    weight: Amount,
    uses: Uses,
}

impl Task {
    /// Compiles and validates `spec`. `limits` looks a declared (static) limit up by key.
    ///
    /// # Errors
    /// [`SpecError`] naming the field (`rate_limits[1].dynamic_key`) with code:
    /// - `invalid_expression`: CEL that does not parse, or names an unknown variable;
    /// - `unknown_limit`: a `static_key` that names no declared limit;
    /// - `wrong_algorithm`: a `static_key` naming a concurrency limit or barrier;
    /// - `insufficient_capacity`: constant `units` beyond a limit's constant capacity;
    /// - `invalid_period`, `invalid_rate`, `missing_field`, `invalid_field`: as for
    ///   [`LimitSpec`], and for `static_key` with `dynamic_key` (or neither), zero `units`,
    ///   definition fields on a static key, `max_attempts` outside 1..=100, a bad name or
    ///   trigger.
    pub fn compile(
        name: &str,
        spec: TaskSpec,
        limits: &dyn Fn(&str) -> Option<Limit>,
    ) -> Result<Task, SpecError> {
        check_key(name).map_err(|e| spec_error("invalid_field", "name", e.to_string()))?;
        let mut uses = Uses::default();

        let mut rate = Vec::with_capacity(spec.rate_limits.len() + 1);
        for (i, r) in spec.rate_limits.iter().enumerate() {
            rate.push(compile_rate(r, &format!("rate_limits[{i}]"), name, limits)?);
        }
        if let Some(t) = &spec.throttle {
            if spec.on_limit == Some(OnLimit::Skip) {
                return Err(spec_error(
                    "invalid_field",
                    "throttle",
                    "a throttle makes runs over its rate wait, and on_limit \"skip\" drops them: \
                     drop one of the two (a rate_limits entry with on_limit \"skip\" drops runs over a rate)",
                ));
            }
            rate.push(compile_throttle(t, name, "throttle")?);
        }
        let gate = match &spec.rate_limit {
            None => None,
            Some(r) => Some(compile_throttle(r, name, "rate_limit")?),
        };
        for compiled in rate.iter().chain(&gate) {
            uses = uses.union(match compiled {
                CompiledRate::Static { units, .. } => units.uses(),
                CompiledRate::Dynamic {
                    key, units, limit, ..
                } => {
                    let limit = match &**limit {
                        DynamicLimit::Const { .. } => Uses::default(),
                        DynamicLimit::Expr { limit, .. } => limit.uses(),
                    };
                    key.as_ref()
                        .map_or(Uses::default(), Expr::uses)
                        .union(units.uses())
                        .union(limit)
                }
            });
        }

        let mut concurrency = Vec::with_capacity(spec.concurrency.len());
        for (i, c) in spec.concurrency.iter().enumerate() {
            let key =
                Expr::compile(&c.key).map_err(|e| e.within(&format!("concurrency[{i}].key")))?;
            let limit = Amount::compile(
                &c.limit,
                &format!("concurrency[{i}].limit"),
                u64::from(MAX_CONCURRENCY),
            )?;
            uses = uses.union(key.uses()).union(limit.uses());
            concurrency.push(CompiledConcurrency { key, limit });
        }

        let idempotency = match &spec.idempotency {
            None => None,
            Some(idem) => {
                let key = Expr::compile(&idem.key).map_err(|e| e.within("idempotency.key"))?;
                let period = parse_period(&idem.period, "idempotency.period")?;
                uses = uses.union(key.uses());
                Some((key, period))
            }
        };

        for (i, t) in spec.triggers.iter().enumerate() {
            check_key(t).map_err(|e| {
                spec_error("invalid_field", format!("triggers[{i}]"), e.to_string())
            })?;
        }

        let priority = match &spec.priority {
            None => Amount::Const(u64::from(DEFAULT_PRIORITY)),
            Some(p) => Amount::compile(p, "priority", u64::from(MAX_PRIORITY))?,
        };
        let fairness = match &spec.fairness_key {
            None => None,
            Some(k) => Some(Expr::compile(k).map_err(|e| e.within("fairness_key"))?),
        };
        let weight = match &spec.fairness_weight {
            None => Amount::Const(1),
            Some(_) if fairness.is_none() => {
                return Err(spec_error(
                    "invalid_field",
                    "fairness_weight",
                    "fairness_weight weighs a fairness_key's turns: give a fairness_key with it",
                ));
            }
            Some(w) => Amount::compile(w, "fairness_weight", u64::from(MAX_FAIRNESS_WEIGHT))?,
        };
        uses = uses
            .union(priority.uses())
            .union(fairness.as_ref().map_or(Uses::default(), Expr::uses))
            .union(weight.uses());

        let max_attempts = spec.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if !(1..=MAX_ATTEMPTS).contains(&max_attempts) {
            return Err(spec_error(
                "invalid_field",
                "max_attempts",
                format!(
                    "invalid max_attempts {max_attempts}: must be between 1 and {MAX_ATTEMPTS}"
                ),
            ));
        }
        let retry = spec.retry.as_ref().map(RetryPolicy::compile).transpose()?;
        let lease_timeout = match &spec.lease_timeout {
            None => DEFAULT_LEASE_TIMEOUT,
            Some(p) => parse_period(p, "lease_timeout")?,
        };

        Ok(Task {
            name: name.to_owned(),
            on_limit: spec.on_limit.unwrap_or_default(),
            max_attempts,
            lease_timeout,
            triggers: spec.triggers.clone(),
            retry,
            spec,
            rate,
            gate,
            concurrency,
            idempotency,
            priority,
            fairness,
            weight,
            uses,
        })
    }

    /// How long an idempotency key is remembered, when the task has one.
    pub fn idempotency_period(&self) -> Option<Period> {
        self.idempotency.as_ref().map(|(_, p)| *p)
    }

    /// Whether the task names declared limit `key` as a `static_key` (it cannot be removed
    /// while any task does).
    pub fn uses_static_key(&self, key: &str) -> bool {
        self.spec
            .rate_limits
            .iter()
            .any(|r| r.static_key.as_deref() == Some(key))
    }

    /// [`Task::render`] as an enqueue needs it: an expression error rejects the run
    /// ([`Error::Expression`]); units a dynamic key can never hold give the reason the run is
    /// stored as failed (with nothing rendered), never an endless requeue.
    ///
    /// # Errors
    /// [`Error::Expression`].
    pub fn render_for_enqueue(
        &self,
        ctx: &RunContext<'_>,
    ) -> Result<(Rendered, Option<String>), Error> {
        match self.render(ctx) {
            Ok(r) => Ok((r, None)),
            Err(RenderError::Expression {
                field,
                source_text,
                message,
            }) => Err(Error::Expression {
                field,
                source_text,
                message,
            }),
            Err(RenderError::InsufficientCapacity {
                field,
                key,
                units,
                capacity,
            }) => Ok((
                Rendered::default(),
                Some(format!(
                    "insufficient_capacity: {field} asks {units} units of key {key:?}, which holds at most {capacity}"
                )),
            )),
        }
    }

    /// As [`Task::render_for_enqueue`], for a run an event starts: there an expression that
    /// fails fails this run alone (its error, `invalid_expression: …`, names the field, the
    /// expression and what CEL said) instead of rejecting the event, so the runs of the other
    /// tasks the event triggers proceed (docs/design.md §3.2).
    pub fn render_for_event(&self, ctx: &RunContext<'_>) -> (Rendered, Option<String>) {
        match self.render_for_enqueue(ctx) {
            Ok(rendered) => rendered,
            Err(e) => (
                Rendered::default(),
                Some(format!("invalid_expression: {e}")),
            ),
        }
    }

    /// Evaluates every expression once for a run, at enqueue. Only the variables the task's
    /// expressions name are converted from JSON.
    ///
    /// # Errors
    /// [`RenderError::Expression`] (reject the enqueue) for an expression that fails or gives a
    /// value of the wrong type, or a key the stores would refuse. Otherwise
    /// [`RenderError::InsufficientCapacity`] (fail the run) for units beyond what a dynamic
    /// key's rendered limit can ever hold. Units beyond a *static* limit's capacity are found
    /// when acquiring, since its definition may change after the run is enqueued.
    pub fn render(&self, ctx: &RunContext<'_>) -> Result<Rendered, RenderError> {
        let scope = Scope::new(self.uses, ctx.input, ctx.additional_metadata, ctx.event);
        // An expression error anywhere rejects the run, so it wins over a capacity problem
        // found earlier.
        let mut over_capacity = None;
        let mut rate = Vec::with_capacity(self.rate.len());
        for (i, r) in self.rate.iter().enumerate() {
            // The entries of `rate_limits`, then the throttle's.
            let throttle = i >= self.spec.rate_limits.len();
            let field = |name: &str| {
                if throttle {
                    format!("throttle.{name}")
                } else {
                    format!("rate_limits[{i}].{name}")
                }
            };
            let (key, dynamic, units) = match r {
                CompiledRate::Static { key, units } => {
                    let units = units.render(&scope, u64::from(u32::MAX), || field("units"))?;
                    (key.clone(), None, units)
                }
                CompiledRate::Dynamic {
                    key,
                    scope: prefix,
                    units,
                    limit,
                } => {
                    let key = match key {
                        None => prefix.to_string(),
                        Some(key) => render_key(key, prefix, &scope, || {
                            field(if throttle { "key" } else { "dynamic_key" })
                        })?,
                    };
                    let units = units.render(&scope, u64::from(u32::MAX), || field("units"))?;
                    let (spec, capacity) = match &**limit {
                        DynamicLimit::Const { spec, capacity } => (spec.clone(), *capacity),
                        DynamicLimit::Expr { limit, template } => {
                            let rate_limit = eval(
                                limit,
                                &scope,
                                || field("limit"),
                                |v| {
                                    let n = expr::to_count(v, MAX_LIMIT)?;
                                    let spec = LimitSpec {
                                        limit: Some(n),
                                        ..template.clone()
                                    };
                                    spec.to_rate_limit()
                                        .map_err(|e| format!("gave {n}, which makes no limit: {e}"))
                                },
                            )?;
                            (
                                LimitSpec::from_limit(&Limit::Rate(rate_limit)),
                                rate_limit.capacity(),
                            )
                        }
                    };
                    if units > capacity && over_capacity.is_none() {
                        over_capacity = Some(RenderError::InsufficientCapacity {
                            field: field("units"),
                            key: key.clone(),
                            units,
                            capacity,
                        });
                    }
                    (key, Some(spec), units)
                }
            };
            rate.push(RenderedLimit {
                key,
                dynamic,
                // Invariant: rendered with a maximum of u32::MAX.
                units: u32::try_from(units).unwrap_or(u32::MAX),
                spec_index: i,
            });
        }

        let mut concurrency = Vec::with_capacity(self.concurrency.len());
        for (i, c) in self.concurrency.iter().enumerate() {
            let key = render_key(&c.key, "", &scope, || format!("concurrency[{i}].key"))?;
            let limit = c.limit.render(&scope, u64::from(MAX_CONCURRENCY), || {
                format!("concurrency[{i}].limit")
            })?;
            concurrency.push(RenderedConcurrency {
                key,
                // Invariant: rendered with a maximum of MAX_CONCURRENCY, a u32.
                limit: u32::try_from(limit).unwrap_or(MAX_CONCURRENCY),
                spec_index: i,
            });
        }

        let idempotency_key = match &self.idempotency {
            None => None,
            Some((key, _)) => Some(render_key(key, "", &scope, || {
                "idempotency.key".to_owned()
            })?),
        };

        // `rate_limit` (compiled as a constant gcra limit of the task's own, one unit a run).
        let mut gate = Vec::new();
        if let Some(CompiledRate::Dynamic {
            key,
            scope: prefix,
            limit,
            ..
        }) = &self.gate
            && let DynamicLimit::Const { spec, .. } = &**limit
        {
            let key = match key {
                None => prefix.to_string(),
                Some(key) => render_key(key, prefix, &scope, || "rate_limit.key".to_owned())?,
            };
            gate.push(RenderedLimit {
                key,
                dynamic: Some(spec.clone()),
                units: 1,
                spec_index: self.rate.len(),
            });
        }

        let priority = self
            .priority
            .render(&scope, u64::from(MAX_PRIORITY), || "priority".to_owned())?;
        let fairness = match &self.fairness {
            None => None,
            Some(key) => Some(render_key(key, "", &scope, || "fairness_key".to_owned())?),
        };
        let weight = self
            .weight
            .render(&scope, u64::from(MAX_FAIRNESS_WEIGHT), || {
                "fairness_weight".to_owned()
            })?;

        match over_capacity {
            Some(e) => Err(e),
            None => Ok(Rendered {
                rate,
                concurrency,
                idempotency_key,
                gate,
                // Invariants: rendered with maxima that fit.
                priority: u8::try_from(priority).unwrap_or(MAX_PRIORITY),
                fairness,
                weight: u32::try_from(weight).unwrap_or(MAX_FAIRNESS_WEIGHT),
            }),
        }
    }
}

fn parse_period(s: &str, field: &str) -> Result<Period, SpecError> {
    Period::parse(s).map_err(|e| spec_error("invalid_period", field, e.to_string()))
}

/// A task's `throttle` or `rate_limit` (`field`): a gcra limit of the task's own, burst 1
/// unless given, one unit a run, under `task:<name>:<field>[:<key>]`.
fn compile_throttle(t: &Throttle, task: &str, field: &str) -> Result<CompiledRate, SpecError> {
    let (params, limit, key) = match t {
        Throttle::Rate(rate) => (
            LimitParams {
                rate: Some(rate.clone()),
                ..LimitParams::default()
            },
            None,
            None,
        ),
        Throttle::Spec(spec) => (
            LimitParams {
                period: Some(spec.period.clone()),
                burst: spec.burst,
                ..LimitParams::default()
            },
            Some(spec.limit),
            spec.key.as_deref(),
        ),
    };
    let template = LimitSpec {
        limit,
        params: LimitParams {
            algorithm: Some("gcra".to_owned()),
            burst: params.burst.or(Some(1)),
            ..params
        },
        ..LimitSpec::default()
    };
    let rate_limit = template.to_rate_limit().map_err(|e| e.within(field))?;
    let scope = format!("{}{field}", task_scope(task));
    let (key, scope) = match key {
        None => (None, scope),
        Some(source) => (
            Some(Expr::compile(source).map_err(|e| e.within(&format!("{field}.key")))?),
            format!("{scope}:"),
        ),
    };
    Ok(CompiledRate::Dynamic {
        key,
        scope: scope.into_boxed_str(),
        units: Amount::Const(1),
        limit: Box::new(DynamicLimit::Const {
            spec: LimitSpec::from_limit(&Limit::Rate(rate_limit)),
            capacity: rate_limit.capacity(),
        }),
    })
}

fn compile_rate(
    r: &RateLimitUse,
    prefix: &str,
    task: &str,
    limits: &dyn Fn(&str) -> Option<Limit>,
) -> Result<CompiledRate, SpecError> {
    let field = |name: &str| format!("{prefix}.{name}");
    let units = match &r.units {
        None => Amount::Const(1),
        Some(u) => Amount::compile(u, &field("units"), u64::from(u32::MAX))?,
    };
    let too_many = |units: u64, capacity: u64| {
        spec_error(
            "insufficient_capacity",
            field("units"),
            format!(
                "{units} units can never be admitted: the limit holds at most {capacity} at once"
            ),
        )
    };
    match (&r.static_key, &r.dynamic_key) {
        (Some(_), Some(_)) => Err(spec_error(
            "invalid_field",
            prefix,
            "give either static_key (a declared limit) or dynamic_key (a CEL expression), not both",
        )),
        (None, None) => Err(spec_error(
            "missing_field",
            prefix,
            "a rate limit needs static_key (a declared limit) or dynamic_key (a CEL expression)",
        )),
        (Some(key), None) => {
            if r.scope == Some(KeyScope::Task) {
                return Err(spec_error(
                    "invalid_field",
                    field("scope"),
                    "scope applies to dynamic_key only; a static_key is one declared limit, \
                     shared by every task that names it",
                ));
            }
            if let Some(name) = r.definition_fields().next() {
                return Err(spec_error(
                    "invalid_field",
                    field(name),
                    format!(
                        "{name} applies to dynamic_key only; a static_key uses its declared definition"
                    ),
                ));
            }
            match limits(key) {
                None => Err(spec_error(
                    "unknown_limit",
                    field("static_key"),
                    format!("no limit is declared under key {key:?}"),
                )),
                Some(Limit::Rate(limit)) => match units.constant() {
                    Some(u) if u > limit.capacity() => Err(too_many(u, limit.capacity())),
                    _ => Ok(CompiledRate::Static {
                        key: key.clone(),
                        units,
                    }),
                },
                Some(other) => Err(spec_error(
                    "wrong_algorithm",
                    field("static_key"),
                    format!(
                        "{key:?} is a {} limit; rate_limits need a rate algorithm",
                        other.algorithm()
                    ),
                )),
            }
        }
        (None, Some(source)) => {
            let key = Expr::compile(source).map_err(|e| e.within(&field("dynamic_key")))?;
            let (limit_const, limit_expr) = match &r.limit {
                None => (None, None),
                Some(l) => match Amount::compile(l, &field("limit"), MAX_LIMIT)? {
                    Amount::Const(n) => (Some(n), None),
                    Amount::Expr(e) => (None, Some(e)),
                },
            };
            let template = LimitSpec {
                limit: limit_const,
                params: r.params.clone(),
                ..LimitSpec::default()
            };
            let limit = match limit_expr {
                None => {
                    let rate_limit = template.to_rate_limit().map_err(|e| e.within(prefix))?;
                    let capacity = rate_limit.capacity();
                    if let Some(u) = units.constant().filter(|u| *u > capacity) {
                        return Err(too_many(u, capacity));
                    }
                    DynamicLimit::Const {
                        spec: LimitSpec::from_limit(&Limit::Rate(rate_limit)),
                        capacity,
                    }
                }
                Some(limit) => {
                    // Validate the rest of the definition now. The largest limit is the most
                    // permissive value for every check that depends on it (gcra's burst
                    // tolerance shrinks as the limit grows), so an error here holds for any
                    // limit the expression may give.
                    let probe = LimitSpec {
                        limit: Some(MAX_LIMIT),
                        ..template.clone()
                    };
                    let rate_limit = probe.to_rate_limit().map_err(|e| e.within(prefix))?;
                    // gcra's capacity is its burst, whatever the limit.
                    if let RateLimit::Gcra(g) = rate_limit
                        && let Some(u) = units.constant().filter(|u| *u > g.burst())
                    {
                        return Err(too_many(u, g.burst()));
                    }
                    DynamicLimit::Expr { limit, template }
                }
            };
            Ok(CompiledRate::Dynamic {
                key: Some(key),
                scope: match r.scope.unwrap_or_default() {
                    KeyScope::Global => "".into(),
                    KeyScope::Task => task_scope(task).into_boxed_str(),
                },
                units,
                limit: Box::new(limit),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task(spec: serde_json::Value) -> Task {
        Task::compile("t", serde_json::from_value(spec).unwrap(), &|_| None).unwrap()
    }

    #[test]
    fn task_is_send_sync_and_cheap_to_clone() {
        fn send_sync<T: Send + Sync + Clone>() {}
        send_sync::<Task>();
        send_sync::<Expr>();
    }

    // docs/design.md §3: "Expressions compile when the task is registered … and evaluate once per run".
    // Rendering must never parse CEL again, however many runs there are.
    #[test]
    fn rendering_never_compiles_an_expression() {
        let t = task(json!({
            "rate_limits": [{"dynamic_key": "'tier:' + additional_metadata.tier", "units": "input.weight",
                             "limit": "additional_metadata.tier == 'pro' ? 100 : 10", "period": "1h"}],
            "concurrency": [{"key": "input.account_id", "limit": "input.slots"}],
            "idempotency": {"key": "input.id", "period": "1h"},
        }));
        let before = expr::COMPILATIONS.with(|c| c.get());
        for n in 0..1_000 {
            let input = json!({"weight": 1 + n % 5, "account_id": n, "slots": 2, "id": n});
            let meta = json!({"tier": if n % 2 == 0 { "pro" } else { "free" }});
            let run = t
                .render(&RunContext::new(&input).with_metadata(&meta))
                .unwrap();
            assert_eq!(run.idempotency_key, Some(n.to_string()));
        }
        assert_eq!(expr::COMPILATIONS.with(|c| c.get()), before);
        // Clones share the compiled programs too.
        let clone = t.clone();
        assert_eq!(expr::COMPILATIONS.with(|c| c.get()), before);
        drop(clone);
    }

    #[test]
    fn only_the_variables_named_are_bound() {
        let t = task(
            json!({"rate_limits": [{"dynamic_key": "input.user_id", "limit": 1, "period": "1s"}]}),
        );
        assert_eq!(
            t.uses,
            Uses {
                input: true,
                ..Uses::default()
            }
        );
    }

    #[test]
    fn gcra_capacity_is_known_even_when_its_limit_is_cel() {
        let e = Task::compile(
            "t",
            serde_json::from_value(
                json!({"rate_limits": [{"dynamic_key": "input.k", "units": 6,
                "limit": "input.l", "period": "1h", "algorithm": "gcra", "burst": 5}]}),
            )
            .unwrap(),
            &|_| None,
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str()),
            ("insufficient_capacity", "rate_limits[0].units")
        );
    }
}
