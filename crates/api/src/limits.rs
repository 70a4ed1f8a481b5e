//! Limits and decisions: `GET /healthz`, `PUT/GET/DELETE /v1/limits/{key}`, `GET /v1/limits`,
//! `POST /v1/acquire`, `POST /v1/acquire/batch`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ErrorBody;

/// A limit definition in its JSON form (`PUT /v1/limits/{key}`, inline acquire entries, the
/// `GET` answers). Which fields apply depends on `algorithm`:
///
/// | algorithm | fields |
/// | --- | --- |
/// | `sliding_window` (default) | `limit` + `period`, or `rate`; `precision` (default 60) |
/// | `fixed_window` | `limit` + `period`, or `rate`; `align`: `first_use` (default) or `clock` |
/// | `gcra` | `limit` + `period`, or `rate`; `burst` (default 1) |
/// | `token_bucket` | `capacity` + `refill` (a rate such as `"10/s"`) |
/// | `concurrency` | `limit`; `lease_ttl` (default `30s`) |
/// | `barrier` | `parties` + `ttl` |
///
/// The engine checks a definition (`tollgate::LimitSpecExt::to_limit`); here it is data.
///
/// ```
/// use tollgate_api::LimitSpec;
/// let spec: LimitSpec = serde_json::from_str(r#"{"algorithm": "gcra", "rate": "10/s", "burst": 5}"#)?;
/// assert_eq!(spec.burst, Some(5));
/// assert!(serde_json::from_str::<LimitSpec>(r#"{"rate": "1/s", "brust": 2}"#).is_err());
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    /// `sliding_window` (default), `fixed_window`, `gcra`, `token_bucket`, `concurrency` or
    /// `barrier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// `limit` + `period` in one string (`"100/m"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    /// Units per `period` (rate algorithms), or leases at once (`concurrency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// The window, as a period string (`"1s"`, `"1h30m"`, `"MINUTE"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    /// `gcra`: how many units may be taken at once (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// `sliding_window`: sub-windows per window (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<u32>,
    /// `fixed_window`: `first_use` (default) or `clock`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub align: Option<String>,
    /// `token_bucket`: the bucket's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u64>,
    /// `token_bucket`: the refill rate (`"10/s"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill: Option<String>,
    /// `concurrency`: how long a lease lasts without renewal (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ttl: Option<String>,
    /// `barrier`: how many parties it waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parties: Option<u32>,
    /// `barrier`: how long it lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// `GET /healthz`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `"ok"` while the server accepts requests.
    pub status: String,
}

/// Which namespace a limit's state lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Namespace {
    /// Declared with `PUT /v1/limits/{key}`, persisted.
    Static,
    /// Rendered from a task's CEL expression, or defined inline in an acquire: listed while it
    /// has state.
    Dynamic,
    /// A barrier.
    Barrier,
    /// A namespace this version does not know (a newer server).
    #[serde(other)]
    Other,
}

/// A limit with its canonical definition and live state, as `PUT/GET /v1/limits/{key}` and
/// `GET /v1/limits` answer it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    /// The key.
    pub key: String,
    /// Where its state lives.
    pub namespace: Namespace,
    /// Its definition, canonical: defaults filled in, `rate` spelled as `limit` + `period`.
    #[serde(flatten)]
    pub definition: LimitSpec,
    /// Units used in the current window (leases held, for `concurrency`).
    pub used: u64,
    /// Units left.
    pub remaining: u64,
    /// When the usage resets, in milliseconds from now; `None` for `concurrency`.
    pub reset_after_ms: Option<u64>,
}

/// `GET /v1/limits`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitListing {
    /// Every declared limit, then the dynamic keys with state (or the busiest, with
    /// `?dynamic=N`).
    pub limits: Vec<Limit>,
    /// Dynamic keys with state, including those left out by `?dynamic=N`.
    #[serde(default)]
    pub dynamic_total: usize,
}

/// One entry of an acquire: a key, its units, and optionally its definition inline.
///
/// ```
/// use tollgate_api::AcquireEntry;
/// let per_user = AcquireEntry::new("user:42").units(2).rate("10/m");
/// assert_eq!(
///     serde_json::to_string(&per_user)?,
///     r#"{"key":"user:42","units":2,"rate":"10/m"}"#
/// );
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "EntryWire")]
pub struct AcquireEntry {
    /// The key.
    pub key: String,
    /// What this acquisition costs (server default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub units: Option<u32>,
    /// A definition sent with the entry: the key is then a dynamic key (no prior `PUT`
    /// needed; the latest definition applies, usage kept). Without one the key must be
    /// declared (404 `unknown_limit`).
    #[serde(flatten)]
    pub definition: Option<LimitSpec>,
}

impl AcquireEntry {
    /// An entry for `key`, one unit, no inline definition.
    pub fn new(key: impl Into<String>) -> AcquireEntry {
        AcquireEntry {
            key: key.into(),
            units: None,
            definition: None,
        }
    }

    /// Costs `units` (at least 1; 0 is refused by the server with `invalid_field`).
    #[must_use]
    pub fn units(mut self, units: u32) -> AcquireEntry {
        self.units = Some(units);
        self
    }

    /// Carries `definition` inline (a dynamic key).
    #[must_use]
    pub fn define(mut self, definition: LimitSpec) -> AcquireEntry {
        self.definition = Some(definition);
        self
    }

    /// Carries an inline `sliding_window` definition from a rate string (`"10/m"`).
    #[must_use]
    pub fn rate(self, rate: impl Into<String>) -> AcquireEntry {
        self.define(LimitSpec {
            rate: Some(rate.into()),
            ..LimitSpec::default()
        })
    }
}

/// An entry as read: the fields of [`LimitSpec`] spelled out, because `deny_unknown_fields`
/// does not work through `flatten` (an unknown field must be refused, naming it).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryWire {
    key: String,
    #[serde(default)]
    units: Option<u32>,
    #[serde(default)]
    algorithm: Option<String>,
    #[serde(default)]
    rate: Option<String>,
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default)]
    period: Option<String>,
    #[serde(default)]
    burst: Option<u64>,
    #[serde(default)]
    precision: Option<u32>,
    #[serde(default)]
    align: Option<String>,
    #[serde(default)]
    capacity: Option<u64>,
    #[serde(default)]
    refill: Option<String>,
    #[serde(default)]
    lease_ttl: Option<String>,
    #[serde(default)]
    parties: Option<u32>,
    #[serde(default)]
    ttl: Option<String>,
}

impl From<EntryWire> for AcquireEntry {
    fn from(w: EntryWire) -> AcquireEntry {
        let spec = LimitSpec {
            algorithm: w.algorithm,
            rate: w.rate,
            limit: w.limit,
            period: w.period,
            burst: w.burst,
            precision: w.precision,
            align: w.align,
            capacity: w.capacity,
            refill: w.refill,
            lease_ttl: w.lease_ttl,
            parties: w.parties,
            ttl: w.ttl,
        };
        AcquireEntry {
            key: w.key,
            units: w.units,
            definition: (spec != LimitSpec::default()).then_some(spec),
        }
    }
}

/// `POST /v1/acquire`'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcquireRequest {
    /// The entries, all taken or none (1 to [`MAX_ACQUIRE_LIMITS`](crate::MAX_ACQUIRE_LIMITS)).
    pub limits: Vec<AcquireEntry>,
    /// How long the server may hold the request until it is admitted (capped at
    /// [`MAX_WAIT`](crate::MAX_WAIT)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// `POST /v1/acquire/batch`'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// The requests, decided in order (at most [`MAX_ACQUIRE_BATCH`](crate::MAX_ACQUIRE_BATCH)).
    pub requests: Vec<BatchItem>,
}

/// One request of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchItem {
    /// The entries, all taken or none.
    pub limits: Vec<AcquireEntry>,
}

/// The decision on one acquire: all of its entries consumed, or none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acquisition {
    /// Whether every entry was admitted (and consumed).
    pub allowed: bool,
    /// When denied, how long until the request could be admitted, in milliseconds (rounded
    /// up: waiting that long is never early). 0 when allowed.
    pub retry_after_ms: u64,
    /// One decision per entry, in request order.
    pub decisions: Vec<KeyDecision>,
}

impl Acquisition {
    /// [`Acquisition::retry_after_ms`] as a duration.
    pub fn retry_after(&self) -> Duration {
        Duration::from_millis(self.retry_after_ms)
    }
}

/// The decision for one key of an acquire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDecision {
    /// The key.
    pub key: String,
    /// Whether this key would admit the request.
    pub allowed: bool,
    /// The key's limit (0 when the server answered `--on-store-error open` without counting).
    pub limit: u64,
    /// Units left after this decision.
    pub remaining: u64,
    /// How long until this key would admit the request, in milliseconds (rounded up).
    pub retry_after_ms: u64,
    /// How long until this key's usage resets, in milliseconds (rounded up).
    pub reset_after_ms: u64,
}

/// One result of a batch acquire: a decision, or the error deciding that request met (an
/// unknown limit, units beyond capacity); the other requests still count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BatchOutcome {
    /// `{"error": {...}}`.
    Failed {
        /// The error.
        error: ErrorBody,
    },
    /// The decision.
    Decided(Acquisition),
}

/// `POST /v1/acquire/batch`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchAnswer {
    /// One result per request, in order.
    pub results: Vec<BatchOutcome>,
}
