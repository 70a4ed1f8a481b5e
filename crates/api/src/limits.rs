//! Limits and decisions: `GET /healthz`, `PUT/GET/DELETE /v1/limits/{key}`, `GET /v1/limits`,
//! `POST /v1/acquire`, `POST /v1/acquire/batch`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ErrorBody;

/// The parameters of a rate algorithm, written once for the three bodies that carry them: a
/// declared limit ([`LimitSpec`]), an inline definition in an acquire ([`AcquireEntry`], whose
/// definition is a `LimitSpec`), and a task's dynamic key ([`RateLimitUse`](crate::RateLimitUse)).
/// On the wire they are fields of those bodies, not an object of their own.
///
/// `limit` is not here: it is a number in a limit and a number or a CEL expression in a task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitParams {
    /// `sliding_window` (default), `fixed_window`, `gcra`, `token_bucket`, `concurrency` or
    /// `barrier` (the last two only in a [`LimitSpec`]).
    pub algorithm: Option<String>,
    /// `limit` + `period` in one string (`"100/m"`).
    pub rate: Option<String>,
    /// The window, as a period string (`"1s"`, `"1h30m"`, `"MINUTE"`).
    pub period: Option<String>,
    /// `gcra`: how many units may be taken at once (default 1).
    pub burst: Option<u64>,
    /// `sliding_window`: sub-windows per window (default 60).
    pub precision: Option<u32>,
    /// `fixed_window`: `first_use` (default) or `clock`.
    pub align: Option<String>,
    /// `token_bucket`: the bucket's size.
    pub capacity: Option<u64>,
    /// `token_bucket`: the refill rate (`"10/s"`).
    pub refill: Option<String>,
}

impl LimitParams {
    /// The fields' names, in the order they are written.
    pub const FIELDS: [&'static str; 8] = [
        "algorithm",
        "rate",
        "period",
        "burst",
        "precision",
        "align",
        "capacity",
        "refill",
    ];

    /// The names of the fields that are set, in [`LimitParams::FIELDS`] order.
    pub fn set_fields(&self) -> impl Iterator<Item = &'static str> + use<> {
        let set = [
            self.algorithm.is_some(),
            self.rate.is_some(),
            self.period.is_some(),
            self.burst.is_some(),
            self.precision.is_some(),
            self.align.is_some(),
            self.capacity.is_some(),
            self.refill.is_some(),
        ];
        Self::FIELDS
            .into_iter()
            .zip(set)
            .filter_map(|(name, set)| set.then_some(name))
    }

    /// Whether no field is set.
    pub fn is_empty(&self) -> bool {
        self.set_fields().next().is_none()
    }

    /// Reads the value of field `key` into its slot; `Ok(false)` when `key` is not one of
    /// these fields.
    pub(crate) fn read<'de, A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
        seen: &mut Seen,
    ) -> Result<bool, A::Error> {
        match key {
            "algorithm" => read(&mut self.algorithm, "algorithm", map, seen)?,
            "rate" => read(&mut self.rate, "rate", map, seen)?,
            "period" => read(&mut self.period, "period", map, seen)?,
            "burst" => read(&mut self.burst, "burst", map, seen)?,
            "precision" => read(&mut self.precision, "precision", map, seen)?,
            "align" => read(&mut self.align, "align", map, seen)?,
            "capacity" => read(&mut self.capacity, "capacity", map, seen)?,
            "refill" => read(&mut self.refill, "refill", map, seen)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Writes `algorithm` and `rate` (the fields a body writes before its `limit`).
    pub(crate) fn write_head<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        write(map, "algorithm", &self.algorithm)?;
        write(map, "rate", &self.rate)
    }

    /// Writes the other fields, from `period` on.
    pub(crate) fn write_tail<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        write(map, "period", &self.period)?;
        write(map, "burst", &self.burst)?;
        write(map, "precision", &self.precision)?;
        write(map, "align", &self.align)?;
        write(map, "capacity", &self.capacity)?;
        write(map, "refill", &self.refill)
    }
}

/// The fields a hand-written struct reader has read, to refuse a field given twice as the
/// derived readers do.
#[derive(Default)]
pub(crate) struct Seen(Vec<&'static str>);

impl Seen {
    /// Whether field `name` has been read.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.0.contains(&name)
    }
}

/// Reads an optional field's value into `slot` (`null` reads as absent, as with the derive).
pub(crate) fn read<'de, T: Deserialize<'de>, A: MapAccess<'de>>(
    slot: &mut Option<T>,
    name: &'static str,
    map: &mut A,
    seen: &mut Seen,
) -> Result<(), A::Error> {
    if seen.0.contains(&name) {
        return Err(de::Error::duplicate_field(name));
    }
    seen.0.push(name);
    *slot = map.next_value()?;
    Ok(())
}

/// Writes an optional field, leaving it out when absent.
pub(crate) fn write<M: SerializeMap, T: Serialize>(
    map: &mut M,
    name: &'static str,
    value: &Option<T>,
) -> Result<(), M::Error> {
    match value {
        Some(v) => map.serialize_entry(name, v),
        None => Ok(()),
    }
}

/// A map's next key, one of `fields`. An unknown one is refused while the key is read, as
/// the derived readers do with `deny_unknown_fields`: an error path (serde_path_to_error)
/// then ends with the unknown name, which the server answers as the error's `field`.
pub(crate) fn next_key<'de, A: MapAccess<'de>>(
    map: &mut A,
    fields: &'static [&'static str],
) -> Result<Option<&'static str>, A::Error> {
    map.next_key_seed(FieldName(fields))
}

/// Reads a field name, one of those it holds.
struct FieldName(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for FieldName {
    type Value = &'static str;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<&'static str, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl Visitor<'_> for FieldName {
    type Value = &'static str;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("field identifier")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<&'static str, E> {
        self.0
            .iter()
            .find(|f| **f == v)
            .copied()
            .ok_or_else(|| E::unknown_field(v, self.0))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<&'static str, E> {
        self.visit_str(&String::from_utf8_lossy(v))
    }
}

/// A limit definition in its JSON form (`PUT /v1/limits/{key}`, inline acquire entries, the
/// `GET` answers): a `limit`, the rate [`LimitParams`], and the fields of concurrency limits
/// and barriers. Which fields apply depends on `algorithm`:
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
/// Unknown fields are refused, naming them.
///
/// ```
/// use tollgate_api::{LimitParams, LimitSpec};
/// let spec: LimitSpec = serde_json::from_str(r#"{"algorithm": "gcra", "rate": "10/s", "burst": 5}"#)?;
/// assert_eq!(spec.params.burst, Some(5));
/// assert_eq!(spec, LimitSpec::rate("10/s").with(|p| {
///     p.algorithm = Some("gcra".into());
///     p.burst = Some(5);
/// }));
/// assert!(serde_json::from_str::<LimitSpec>(r#"{"rate": "1/s", "brust": 2}"#).is_err());
/// # let _ = LimitParams::default();
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitSpec {
    /// Units per `period` (rate algorithms), or leases at once (`concurrency`).
    pub limit: Option<u64>,
    /// The rate algorithm's parameters (`algorithm`, `rate`, `period`, `burst`, …).
    pub params: LimitParams,
    /// `concurrency`: how long a lease lasts without renewal (default `30s`).
    pub lease_ttl: Option<String>,
    /// `barrier`: how many parties it waits for.
    pub parties: Option<u32>,
    /// `barrier`: how long it lives.
    pub ttl: Option<String>,
    /// Declared limits only: the limit adapts within these bounds (AIMD, docs/design.md
    /// §3.16), and `limit` is the limit in force.
    pub adaptive: Option<AdaptiveSpec>,
}

impl LimitSpec {
    /// The fields' names, in the order they are written.
    pub const FIELDS: [&'static str; 13] = [
        "algorithm",
        "rate",
        "limit",
        "adaptive",
        "period",
        "burst",
        "precision",
        "align",
        "capacity",
        "refill",
        "lease_ttl",
        "parties",
        "ttl",
    ];

    /// A `sliding_window` definition from a rate string (`"100/m"`).
    pub fn rate(rate: impl Into<String>) -> LimitSpec {
        LimitSpec {
            params: LimitParams {
                rate: Some(rate.into()),
                ..LimitParams::default()
            },
            ..LimitSpec::default()
        }
    }

    /// A `sliding_window` definition of `limit` units per `period` (`"1s"`, `"MINUTE"`).
    pub fn limit_per(limit: u64, period: impl Into<String>) -> LimitSpec {
        LimitSpec {
            limit: Some(limit),
            params: LimitParams {
                period: Some(period.into()),
                ..LimitParams::default()
            },
            ..LimitSpec::default()
        }
    }

    /// The same definition with its [`LimitParams`] changed by `f`.
    #[must_use]
    pub fn with(mut self, f: impl FnOnce(&mut LimitParams)) -> LimitSpec {
        f(&mut self.params);
        self
    }

    /// Whether no field is set.
    pub fn is_empty(&self) -> bool {
        *self == LimitSpec::default()
    }

    /// Reads the value of field `key`; `Ok(false)` when `key` is not one of its fields.
    fn read<'de, A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
        seen: &mut Seen,
    ) -> Result<bool, A::Error> {
        match key {
            "limit" => read(&mut self.limit, "limit", map, seen)?,
            "lease_ttl" => read(&mut self.lease_ttl, "lease_ttl", map, seen)?,
            "parties" => read(&mut self.parties, "parties", map, seen)?,
            "ttl" => read(&mut self.ttl, "ttl", map, seen)?,
            "adaptive" => read(&mut self.adaptive, "adaptive", map, seen)?,
            _ => return self.params.read(key, map, seen),
        }
        Ok(true)
    }

    /// Writes its fields, in [`LimitSpec::FIELDS`] order, into `map`.
    fn write<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        self.params.write_head(map)?;
        write(map, "limit", &self.limit)?;
        write(map, "adaptive", &self.adaptive)?;
        self.params.write_tail(map)?;
        write(map, "lease_ttl", &self.lease_ttl)?;
        write(map, "parties", &self.parties)?;
        write(map, "ttl", &self.ttl)
    }
}

impl Serialize for LimitSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        self.write(&mut map)?;
        map.end()
    }
}

impl<'de> Deserialize<'de> for LimitSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<LimitSpec, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LimitSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("struct LimitSpec")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LimitSpec, A::Error> {
                let mut spec = LimitSpec::default();
                let mut seen = Seen::default();
                while let Some(key) = next_key(&mut map, &LimitSpec::FIELDS)? {
                    if !spec.read(key, &mut map, &mut seen)? {
                        return Err(de::Error::unknown_field(key, &LimitSpec::FIELDS));
                    }
                }
                Ok(spec)
            }
        }
        d.deserialize_struct("LimitSpec", &LimitSpec::FIELDS, V)
    }
}

/// A declared limit's `adaptive` bounds: the limit in force moves between `min` and `max`
/// (1 ≤ `min` ≤ `max`), starting at `max` (docs/design.md §3.16).
///
/// ```
/// use tollgate_api::{AdaptiveSpec, LimitSpec};
/// let spec: LimitSpec = serde_json::from_str(
///     r#"{"algorithm": "gcra", "period": "1s", "adaptive": {"min": 2, "max": 50}}"#,
/// )?;
/// assert_eq!(spec.adaptive, Some(AdaptiveSpec { min: 2, max: 50 }));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct AdaptiveSpec {
    /// The lowest the limit in force goes (at least 1).
    pub min: u64,
    /// The highest it goes, and where it starts.
    pub max: u64,
}

/// What a worker reports about a call to the upstream an adaptive limit protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum FeedbackOutcome {
    /// The call went through: the limit in force grows by one (up to `max`).
    Ok,
    /// The upstream pushed back (a 429): the limit in force halves (down to `min`).
    Throttled,
}

impl FeedbackOutcome {
    /// `"ok"` or `"throttled"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            FeedbackOutcome::Ok => "ok",
            FeedbackOutcome::Throttled => "throttled",
        }
    }
}

/// `POST /v1/limits/{key}/feedback`'s body.
///
/// ```
/// use tollgate_api::{FeedbackOutcome, FeedbackRequest};
/// let r: FeedbackRequest = serde_json::from_str(r#"{"outcome": "throttled"}"#)?;
/// assert_eq!(r.outcome, FeedbackOutcome::Throttled);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    /// `ok` or `throttled`.
    pub outcome: FeedbackOutcome,
}

/// `GET /healthz`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Health {
    /// `"ok"` while the server accepts requests.
    pub status: String,
}

/// Which namespace a limit's state lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
    /// While the key is paused (`POST /v1/limits/{key}/pause`): when the pause ends, in
    /// Unix-epoch milliseconds (rounded up); `None` when it is not paused.
    #[serde(default)]
    pub paused_until_ms: Option<u64>,
    /// An adaptive limit's limit in force (the definition's `limit`); `None` for a limit that
    /// does not adapt.
    #[serde(default)]
    pub limit_in_force: Option<u64>,
}

/// `POST /v1/limits/{key}/pause`'s body: pause for `for_ms` from now or until `until_ms` (one
/// of the two), a dynamic key with `"dynamic": true`.
///
/// ```
/// use tollgate_api::PauseRequest;
/// let r: PauseRequest = serde_json::from_str(r#"{"for_ms": 30000, "dynamic": true}"#)?;
/// assert_eq!((r.for_ms, r.until_ms, r.dynamic), (Some(30_000), None, true));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PauseRequest {
    /// Pause this many milliseconds from now (1 to ten years).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_ms: Option<u64>,
    /// Pause until this instant, in Unix-epoch milliseconds (one already past pauses nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
    /// The key is a dynamic key (a task's `dynamic_key`, an inline acquire's key), not a
    /// declared limit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dynamic: bool,
}

/// A key's pause, as `POST /v1/limits/{key}/pause` and `GET /v1/pauses` answer it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Pause {
    /// The key.
    pub key: String,
    /// `static` (a declared limit) or `dynamic`.
    pub namespace: Namespace,
    /// When the pause in force ends, in Unix-epoch milliseconds (rounded up); `None` when no
    /// pause is in force (an `until_ms` already past).
    pub paused_until_ms: Option<u64>,
}

/// `DELETE /v1/limits/{key}/pause`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Resumed {
    /// The key.
    pub key: String,
    /// `static` or `dynamic`.
    pub namespace: Namespace,
    /// Whether a pause was in force (and is now ended).
    pub was_paused: bool,
}

/// `GET /v1/pauses`'s answer: every pause in force, by namespace and key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PauseListing {
    /// The pauses in force.
    pub pauses: Vec<Pause>,
}

/// `GET /v1/limits`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcquireEntry {
    /// The key.
    pub key: String,
    /// What this acquisition costs (server default 1).
    pub units: Option<u32>,
    /// A definition sent with the entry: the key is then a dynamic key (no prior `PUT`
    /// needed; the latest definition applies, usage kept). Without one the key must be
    /// declared (404 `unknown_limit`). On the wire its fields are the entry's.
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
        self.define(LimitSpec::rate(rate))
    }
}

impl AcquireEntry {
    /// The fields' names, in the order they are written.
    const FIELDS: [&'static str; 14] = [
        "key",
        "units",
        "algorithm",
        "rate",
        "limit",
        "period",
        "burst",
        "precision",
        "align",
        "capacity",
        "refill",
        "lease_ttl",
        "parties",
        "ttl",
    ];
}

impl Serialize for AcquireEntry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("key", &self.key)?;
        write(&mut map, "units", &self.units)?;
        if let Some(definition) = &self.definition {
            definition.write(&mut map)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for AcquireEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<AcquireEntry, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AcquireEntry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // The name the server's error messages have always shown.
                f.write_str("struct EntryBody")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AcquireEntry, A::Error> {
                let mut key = None;
                let mut units = None;
                let mut spec = LimitSpec::default();
                let mut seen = Seen::default();
                while let Some(name) = next_key(&mut map, &AcquireEntry::FIELDS)? {
                    match name {
                        "key" => {
                            if seen.0.contains(&"key") {
                                return Err(de::Error::duplicate_field("key"));
                            }
                            seen.0.push("key");
                            key = Some(map.next_value::<String>()?);
                        }
                        "units" => read(&mut units, "units", &mut map, &mut seen)?,
                        _ => {
                            if !spec.read(name, &mut map, &mut seen)? {
                                return Err(de::Error::unknown_field(name, &AcquireEntry::FIELDS));
                            }
                        }
                    }
                }
                Ok(AcquireEntry {
                    key: key.ok_or_else(|| de::Error::missing_field("key"))?,
                    units,
                    definition: (!spec.is_empty()).then_some(spec),
                })
            }
        }
        d.deserialize_struct("EntryBody", &AcquireEntry::FIELDS, V)
    }
}

/// `POST /v1/acquire`'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// The requests, decided in order (at most [`MAX_ACQUIRE_BATCH`](crate::MAX_ACQUIRE_BATCH)).
    pub requests: Vec<BatchItem>,
}

/// One request of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct BatchItem {
    /// The entries, all taken or none.
    pub limits: Vec<AcquireEntry>,
}

/// The decision on one acquire: all of its entries consumed, or none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct BatchAnswer {
    /// One result per request, in order.
    pub results: Vec<BatchOutcome>,
}
