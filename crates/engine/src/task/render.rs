//! What rendering a task for one run produces: the keys, units and limits of that run, fixed at
//! enqueue (docs/design.md §3: expressions evaluate once per run).

use serde::{Deserialize, Serialize};

use crate::spec::{LimitSpec, LimitSpecExt, SpecError};
use crate::store::AcquireEntry;

/// The values a run's expressions see: the CEL variables `input`, `additional_metadata` and
/// `event`.
#[derive(Debug, Clone, Copy)]
pub struct RunContext<'a> {
    /// The run's input.
    pub input: &'a serde_json::Value,
    /// The run's metadata; `null` is seen as an empty map.
    pub additional_metadata: &'a serde_json::Value,
    /// The event that triggered the run (`{"name", "data", …}`); `None` is seen as an empty map.
    pub event: Option<&'a serde_json::Value>,
}

static NULL: serde_json::Value = serde_json::Value::Null;

impl<'a> RunContext<'a> {
    /// A run enqueued directly, without metadata.
    pub fn new(input: &'a serde_json::Value) -> RunContext<'a> {
        RunContext {
            input,
            additional_metadata: &NULL,
            event: None,
        }
    }

    /// With `additional_metadata`.
    pub fn with_metadata(mut self, additional_metadata: &'a serde_json::Value) -> RunContext<'a> {
        self.additional_metadata = additional_metadata;
        self
    }

    /// With the triggering `event`.
    pub fn with_event(mut self, event: &'a serde_json::Value) -> RunContext<'a> {
        self.event = Some(event);
        self
    }
}

/// A task's limits for one run. Stored with the run, so the run acquires what it was
/// enqueued with even if its task is redefined later.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rendered {
    /// Rate limits, in the order of `rate_limits`.
    pub rate: Vec<RenderedLimit>,
    /// Concurrency limits, in the order of `concurrency`.
    // Left out of the journal when empty or absent: every run is written at each change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub concurrency: Vec<RenderedConcurrency>,
    /// The rendered idempotency key, when the task has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The task's `rate_limit` (Inngest's): decided once, at enqueue; a run over it is skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gate: Vec<RenderedLimit>,
    /// The run's priority, 1 (least urgent) to 4 (docs/design.md §3.15).
    #[serde(
        default = "default_priority",
        skip_serializing_if = "is_default_priority"
    )]
    pub priority: u8,
    /// Its fairness key: runs waiting on one key take turns across these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fairness: Option<String>,
    /// Its share of the turns, 1 to 1000.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub weight: u32,
}

fn default_priority() -> u8 {
    super::DEFAULT_PRIORITY
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if takes a reference
fn is_default_priority(p: &u8) -> bool {
    *p == super::DEFAULT_PRIORITY
}

fn one() -> u32 {
    1
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if takes a reference
fn is_one(w: &u32) -> bool {
    *w == 1
}

impl Default for Rendered {
    fn default() -> Rendered {
        Rendered {
            rate: Vec::new(),
            concurrency: Vec::new(),
            idempotency_key: None,
            gate: Vec::new(),
            priority: super::DEFAULT_PRIORITY,
            fairness: None,
            weight: 1,
        }
    }
}

impl Rendered {
    /// The acquire entries of every rate limit, for one atomic acquire.
    ///
    /// # Errors
    /// As [`RenderedLimit::entry`].
    pub fn entries(&self) -> Result<Vec<AcquireEntry<'_>>, SpecError> {
        self.rate.iter().map(RenderedLimit::entry).collect()
    }

    /// The acquire entries of the task's `rate_limit`, decided at enqueue.
    ///
    /// # Errors
    /// As [`RenderedLimit::entry`].
    pub fn gate_entries(&self) -> Result<Vec<AcquireEntry<'_>>, SpecError> {
        self.gate.iter().map(RenderedLimit::entry).collect()
    }
}

/// One rate limit of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenderedLimit {
    /// The static key as declared, or the rendered dynamic key.
    pub key: String,
    /// `None` for a static key; for a dynamic key, the canonical definition
    /// ([`LimitSpec::from_limit`]) with the numbers rendered for this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic: Option<LimitSpec>,
    /// Units this run takes.
    pub units: u32,
    /// The index in the task's `rate_limits`: label metrics by this, never by the rendered key.
    pub spec_index: usize,
}

impl RenderedLimit {
    /// The acquire entry: [`Target::Static`](crate::Target::Static) for a declared key,
    /// [`Target::Dynamic`](crate::Target::Dynamic) for a rendered one, so a dynamic key never
    /// touches a static limit of the same name.
    ///
    /// # Errors
    /// Only for a `dynamic` definition that is not a rate limit, which rendering never
    /// produces (it can come from stored data edited by hand).
    pub fn entry(&self) -> Result<AcquireEntry<'_>, SpecError> {
        Ok(match &self.dynamic {
            None => AcquireEntry::new(&self.key, self.units),
            Some(spec) => AcquireEntry::dynamic(&self.key, spec.to_rate_limit()?, self.units),
        })
    }
}

/// One concurrency limit of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenderedConcurrency {
    /// The rendered key.
    pub key: String,
    /// Leased runs allowed under the key.
    pub limit: u32,
    /// The index in the task's `concurrency`.
    pub spec_index: usize,
}

/// Why a run could not be rendered.
///
/// Deliberately exhaustive: each variant means a different outcome for the run (rejected or
/// failed), so a new one should make every caller decide.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// An expression failed to evaluate or gave a value of the wrong type: the enqueue is
    /// rejected (422 `invalid_expression`).
    #[error("{field}: expression {source_text:?} {message}")]
    Expression {
        /// The field, e.g. `rate_limits[1].dynamic_key`.
        field: String,
        /// The expression as written.
        source_text: String,
        /// What went wrong.
        message: String,
    },
    /// Units beyond what the rendered limit can ever hold: the run is failed with this reason,
    /// not rejected, and never requeued.
    #[error(
        "{field}: key {key:?}: {units} units can never be admitted, the limit holds at most {capacity} at once"
    )]
    InsufficientCapacity {
        /// The units field, e.g. `rate_limits[2].units`.
        field: String,
        /// The rendered key.
        key: String,
        /// Units the run needs.
        units: u64,
        /// The most the limit admits at once.
        capacity: u64,
    },
}

impl RenderError {
    /// The stable code: `invalid_expression` or `insufficient_capacity`.
    pub fn code(&self) -> &'static str {
        match self {
            RenderError::Expression { .. } => "invalid_expression",
            RenderError::InsufficientCapacity { .. } => "insufficient_capacity",
        }
    }

    /// The field the error is about.
    pub fn field(&self) -> &str {
        match self {
            RenderError::Expression { field, .. }
            | RenderError::InsufficientCapacity { field, .. } => field,
        }
    }
}
