//! [`LimitSpec`] (defined in `tollgate-api`): a limit definition as users write it in JSON
//! (`PUT /v1/limits/{key}`, inline acquire entries, persisted definitions), converted to and
//! from the core's [`Limit`] by [`LimitSpecExt`].
//!
//! ```
//! use tollgate::{LimitSpec, LimitSpecExt};
//! let spec: LimitSpec = serde_json::from_str(r#"{"rate": "100/m"}"#)?;
//! let limit = spec.to_limit()?;
//! assert_eq!(limit.algorithm().as_str(), "sliding_window");
//! let gcra: LimitSpec = serde_json::from_str(r#"{"algorithm": "gcra", "limit": 10, "period": "1s", "burst": 5}"#)?;
//! assert_eq!(LimitSpec::from_limit(&gcra.to_limit()?).params.burst, Some(5));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use tollgate_api::AdaptiveSpec;
pub use tollgate_api::LimitSpec;
use tollgate_core::{
    Adaptive, Algorithm, Align, Barrier, Concurrency, Declared, FixedWindow, Gcra, Limit, Period,
    Rate, RateLimit, SlidingWindow, TokenBucket,
};

/// Default lease time to live of a concurrency limit.
pub const DEFAULT_LEASE_TTL: Period = match Period::from_secs_const(30) {
    Some(p) => p,
    None => Period::SECOND,
};

/// A definition that does not make a limit: which field, what is wrong, and a stable code
/// (`invalid_field`, `invalid_period`, `invalid_rate`, `missing_field`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// A stable snake_case code clients may match on.
    pub code: &'static str,
    /// The field, as a path relative to the definition (`period`, `burst`).
    pub field: String,
    /// What is wrong, quoting the input where there is one.
    pub message: String,
}

impl SpecError {
    fn new(code: &'static str, field: &str, message: impl Into<String>) -> SpecError {
        SpecError {
            code,
            field: field.to_owned(),
            message: message.into(),
        }
    }

    /// The same error with its field nested under `prefix` (`rate_limits[2]` + `period`).
    pub fn within(mut self, prefix: &str) -> SpecError {
        self.field = if self.field.is_empty() {
            prefix.to_owned()
        } else {
            format!("{prefix}.{}", self.field)
        };
        self
    }
}

fn core_error(field: &str, e: tollgate_core::Error) -> SpecError {
    let code = match e {
        tollgate_core::Error::InvalidPeriod { .. } => "invalid_period",
        tollgate_core::Error::InvalidRate { .. } => "invalid_rate",
        _ => "invalid_field",
    };
    SpecError::new(code, field, e.to_string())
}

fn period(field: &str, s: &str) -> Result<Period, SpecError> {
    Period::parse(s).map_err(|e| core_error(field, e))
}

fn rate_of(field: &str, s: &str) -> Result<Rate, SpecError> {
    Rate::parse(s).map_err(|e| core_error(field, e))
}

/// What the engine makes of a [`LimitSpec`]: the core limit it describes, and back.
///
/// The definition is plain data in `tollgate-api` (which knows nothing of the core); its
/// checks live here, beside the core types they build.
pub trait LimitSpecExt: Sized {
    /// The algorithm named (default `sliding_window`).
    ///
    /// # Errors
    /// [`SpecError`] for an unknown name.
    fn algorithm(&self) -> Result<Algorithm, SpecError>;

    /// The core limit this definition describes (for an adaptive one, at its limit in force:
    /// `limit`, or `adaptive.max` when no `limit` is given).
    ///
    /// # Errors
    /// [`SpecError`] naming the first field that is missing, misplaced or invalid.
    fn to_limit(&self) -> Result<Limit, SpecError>;

    /// The declared definition this describes: the limit, and its adaptive bounds when it has
    /// `adaptive` (docs/design.md §3.16). An adaptive limit's `limit` (or `rate`) is optional
    /// and must lie within the bounds; without one the limit in force starts at `max`.
    ///
    /// # Errors
    /// [`SpecError`] naming the field: as [`LimitSpecExt::to_limit`], and `adaptive` (an
    /// algorithm that cannot adapt: `token_bucket`, `barrier`), `adaptive.min` (0, or above
    /// `max`), `adaptive.max` (beyond the algorithm's range), `limit` or `rate` (outside the
    /// bounds).
    fn to_declared(&self) -> Result<Declared, SpecError>;

    /// The canonical definition of a declared limit, with its `adaptive` bounds.
    fn from_declared(declared: &Declared) -> Self;

    /// A rate limit, or an error naming `algorithm` when the definition is of another kind.
    ///
    /// # Errors
    /// As [`LimitSpecExt::to_limit`], or `wrong_algorithm` for concurrency and barriers.
    fn to_rate_limit(&self) -> Result<RateLimit, SpecError>;

    /// The canonical definition of `limit` (what `GET /v1/limits/{key}` shows).
    fn from_limit(limit: &Limit) -> Self;
}

impl LimitSpecExt for LimitSpec {
    fn algorithm(&self) -> Result<Algorithm, SpecError> {
        match &self.params.algorithm {
            None => Ok(Algorithm::SlidingWindow),
            Some(a) => a.parse().map_err(|e| core_error("algorithm", e)),
        }
    }

    fn to_limit(&self) -> Result<Limit, SpecError> {
        self.to_declared().map(|d| *d.limit())
    }

    fn to_declared(&self) -> Result<Declared, SpecError> {
        let Some(AdaptiveSpec { min, max }) = self.adaptive else {
            return plain_limit(self).map(Declared::fixed);
        };
        self.algorithm()?;
        let bounds = Adaptive::new(min, max).map_err(|e| adaptive_error(self, e))?;
        let mut plain = self.clone();
        plain.adaptive = None;
        let given = plain.limit.is_some() || plain.params.rate.is_some();
        if !given {
            // Parsed at `min`, which every algorithm that adapts takes, then started at `max`
            // (refused below, naming `adaptive.max`, when the algorithm does not take it).
            plain.limit = Some(bounds.min());
        }
        let mut limit = match plain_limit(&plain) {
            Err(e) if !given && e.field == "limit" => {
                // The algorithm takes no `limit` (token_bucket, barrier): say so about
                // `adaptive`, which is what was given.
                plain.limit = None;
                plain_limit(&plain)?
            }
            other => other?,
        };
        if !given && let Ok(start) = limit.with_adaptable(bounds.start()) {
            limit = start;
        }
        Declared::adaptive(limit, bounds).map_err(|e| adaptive_error(self, e))
    }

    fn from_declared(declared: &Declared) -> LimitSpec {
        let mut s = canonical(declared.limit());
        s.adaptive = declared.bounds().map(|b| AdaptiveSpec {
            min: b.min(),
            max: b.max(),
        });
        s
    }

    fn to_rate_limit(&self) -> Result<RateLimit, SpecError> {
        match self.to_limit()? {
            Limit::Rate(r) => Ok(r),
            other => Err(SpecError::new(
                "wrong_algorithm",
                "algorithm",
                format!("{} is not a rate algorithm here", other.algorithm()),
            )),
        }
    }

    /// The canonical definition of `limit` (what `GET /v1/limits/{key}` shows).
    fn from_limit(limit: &Limit) -> LimitSpec {
        canonical(limit)
    }
}

/// A core error about an adaptive definition, named as the field it is about.
fn adaptive_error(spec: &LimitSpec, e: tollgate_core::Error) -> SpecError {
    let field = match &e {
        tollgate_core::Error::InvalidParameter { name: "min", .. } => "adaptive.min",
        tollgate_core::Error::InvalidParameter { name: "max", .. } => "adaptive.max",
        tollgate_core::Error::InvalidParameter { name: "limit", .. }
            if spec.params.rate.is_some() =>
        {
            "rate"
        }
        tollgate_core::Error::InvalidParameter { name: "limit", .. } => "limit",
        _ => "adaptive",
    };
    core_error(field, e)
}

/// The limit a definition without `adaptive` describes.
fn plain_limit(spec: &LimitSpec) -> Result<Limit, SpecError> {
    let algorithm = spec.algorithm()?;
    reject_foreign(spec, algorithm)?;
    let lim = |e: tollgate_core::Error, field: &str| core_error(field, e);
    Ok(match algorithm {
        Algorithm::SlidingWindow => {
            let r = limit_and_period(spec)?;
            let precision = spec
                .params
                .precision
                .unwrap_or(tollgate_core::DEFAULT_PRECISION);
            let field = if spec.params.precision.is_some() {
                "precision"
            } else {
                "limit"
            };
            Limit::Rate(RateLimit::SlidingWindow(
                SlidingWindow::with_precision(r.limit(), r.period(), precision)
                    .map_err(|e| lim(e, field))?,
            ))
        }
        Algorithm::FixedWindow => {
            let r = limit_and_period(spec)?;
            let align: Align = match &spec.params.align {
                None => Align::FirstUse,
                Some(a) => a.parse().map_err(|e| lim(e, "align"))?,
            };
            Limit::Rate(RateLimit::FixedWindow(
                FixedWindow::new(r.limit(), r.period(), align).map_err(|e| lim(e, "limit"))?,
            ))
        }
        Algorithm::Gcra => {
            let r = limit_and_period(spec)?;
            Limit::Rate(RateLimit::Gcra(
                Gcra::new(r, spec.params.burst.unwrap_or(1)).map_err(|e| lim(e, "burst"))?,
            ))
        }
        Algorithm::TokenBucket => {
            let capacity = spec.params.capacity.ok_or_else(|| {
                SpecError::new("missing_field", "capacity", "token_bucket needs a capacity")
            })?;
            let refill = spec.params.refill.as_deref().ok_or_else(|| {
                SpecError::new(
                    "missing_field",
                    "refill",
                    "token_bucket needs a refill rate such as \"10/s\"",
                )
            })?;
            let refill = rate_of("refill", refill)?;
            Limit::Rate(RateLimit::TokenBucket(
                TokenBucket::new(capacity, refill).map_err(|e| lim(e, "capacity"))?,
            ))
        }
        Algorithm::Concurrency => {
            let limit = spec.limit.ok_or_else(|| {
                SpecError::new("missing_field", "limit", "concurrency needs a limit")
            })?;
            let limit = u32::try_from(limit).map_err(|_| {
                SpecError::new(
                    "invalid_field",
                    "limit",
                    format!("invalid limit {limit}: too large"),
                )
            })?;
            let ttl = match &spec.lease_ttl {
                None => DEFAULT_LEASE_TTL,
                Some(t) => period("lease_ttl", t)?,
            };
            Limit::Concurrency(Concurrency::new(limit, ttl).map_err(|e| lim(e, "limit"))?)
        }
        Algorithm::Barrier => {
            let parties = spec.parties.ok_or_else(|| {
                SpecError::new("missing_field", "parties", "barrier needs parties")
            })?;
            let ttl = spec.ttl.as_deref().ok_or_else(|| {
                SpecError::new("missing_field", "ttl", "barrier needs a ttl such as \"1m\"")
            })?;
            Limit::Barrier(
                Barrier::new(parties, period("ttl", ttl)?).map_err(|e| lim(e, "parties"))?,
            )
        }
    })
}

/// `rate`, or `limit` + `period`.
fn limit_and_period(spec: &LimitSpec) -> Result<Rate, SpecError> {
    match (&spec.params.rate, spec.limit, &spec.params.period) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(SpecError::new(
            "invalid_field",
            "rate",
            "give either rate or limit and period, not both",
        )),
        (Some(r), None, None) => rate_of("rate", r),
        (None, Some(l), Some(p)) => {
            Rate::new(l, period("period", p)?).map_err(|e| core_error("limit", e))
        }
        (None, None, _) => Err(SpecError::new(
            "missing_field",
            "limit",
            "a limit needs limit and period (e.g. {\"limit\": 100, \"period\": \"1m\"}) or a rate (e.g. {\"rate\": \"100/m\"})",
        )),
        (None, Some(_), None) => Err(SpecError::new(
            "missing_field",
            "period",
            "a limit needs a period such as \"1s\", \"1m\" or \"MINUTE\"",
        )),
    }
}

/// Refuses the fields `algorithm` does not take.
fn reject_foreign(spec: &LimitSpec, algorithm: Algorithm) -> Result<(), SpecError> {
    let allowed: &[&str] = match algorithm {
        Algorithm::SlidingWindow => &["rate", "limit", "period", "precision"],
        Algorithm::FixedWindow => &["rate", "limit", "period", "align"],
        Algorithm::Gcra => &["rate", "limit", "period", "burst"],
        Algorithm::TokenBucket => &["capacity", "refill"],
        Algorithm::Concurrency => &["limit", "lease_ttl"],
        Algorithm::Barrier => &["parties", "ttl"],
    };
    let present = [
        ("rate", spec.params.rate.is_some()),
        ("limit", spec.limit.is_some()),
        ("period", spec.params.period.is_some()),
        ("burst", spec.params.burst.is_some()),
        ("precision", spec.params.precision.is_some()),
        ("align", spec.params.align.is_some()),
        ("capacity", spec.params.capacity.is_some()),
        ("refill", spec.params.refill.is_some()),
        ("lease_ttl", spec.lease_ttl.is_some()),
        ("parties", spec.parties.is_some()),
        ("ttl", spec.ttl.is_some()),
    ];
    for (name, is_set) in present {
        if is_set && !allowed.contains(&name) {
            return Err(SpecError::new(
                "invalid_field",
                name,
                format!(
                    "{name} does not apply to {algorithm} (it takes {})",
                    allowed.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// The canonical definition of `limit` (what `GET /v1/limits/{key}` shows).
fn canonical(limit: &Limit) -> LimitSpec {
    let mut s = LimitSpec::default();
    s.params.algorithm = Some(limit.algorithm().as_str().to_owned());
    match limit {
        Limit::Rate(RateLimit::SlidingWindow(l)) => {
            s.limit = Some(l.limit());
            s.params.period = Some(l.period().to_string());
            s.params.precision = Some(l.precision());
        }
        Limit::Rate(RateLimit::FixedWindow(l)) => {
            s.limit = Some(l.limit());
            s.params.period = Some(l.period().to_string());
            s.params.align = Some(
                match l.align() {
                    Align::FirstUse => "first_use",
                    Align::Clock => "clock",
                }
                .to_owned(),
            );
        }
        Limit::Rate(RateLimit::Gcra(l)) => {
            s.limit = Some(l.rate().limit());
            s.params.period = Some(l.rate().period().to_string());
            s.params.burst = Some(l.burst());
        }
        Limit::Rate(RateLimit::TokenBucket(l)) => {
            s.params.capacity = Some(l.capacity());
            s.params.refill = Some(l.refill().to_string());
        }
        Limit::Concurrency(c) => {
            s.limit = Some(u64::from(c.limit()));
            s.lease_ttl = Some(c.lease_ttl().to_string());
        }
        Limit::Barrier(b) => {
            s.parties = Some(b.parties());
            s.ttl = Some(b.ttl().to_string());
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> LimitSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn every_algorithm_round_trips_through_its_canonical_form() {
        for json in [
            r#"{"rate": "100/m"}"#,
            r#"{"limit": 5, "period": "1h30m", "precision": 10}"#,
            r#"{"algorithm": "fixed_window", "limit": 3, "period": "MINUTE", "align": "clock"}"#,
            r#"{"algorithm": "gcra", "rate": "10/s", "burst": 4}"#,
            r#"{"algorithm": "token_bucket", "capacity": 20, "refill": "5/s"}"#,
            r#"{"algorithm": "concurrency", "limit": 5}"#,
            r#"{"algorithm": "barrier", "parties": 5, "ttl": "1m"}"#,
        ] {
            let limit = spec(json)
                .to_limit()
                .unwrap_or_else(|e| panic!("{json}: {e}"));
            let canonical = LimitSpec::from_limit(&limit);
            assert_eq!(canonical.to_limit().unwrap(), limit, "{json}");
        }
    }

    #[test]
    fn bad_definitions_name_the_field_and_code() {
        for (json, code, field) in [
            (
                r#"{"limit": 10, "period": "10 apples"}"#,
                "invalid_period",
                "period",
            ),
            (r#"{"rate": "10 per minute"}"#, "invalid_rate", "rate"),
            (r#"{"limit": 0, "period": "1s"}"#, "invalid_field", "limit"),
            (r#"{"limit": 10}"#, "missing_field", "period"),
            (r#"{}"#, "missing_field", "limit"),
            (r#"{"rate": "1/s", "limit": 1}"#, "invalid_field", "rate"),
            (
                r#"{"algorithm": "leaky", "limit": 1, "period": "1s"}"#,
                "invalid_field",
                "algorithm",
            ),
            (
                r#"{"limit": 1, "period": "1s", "burst": 2}"#,
                "invalid_field",
                "burst",
            ),
            (
                r#"{"algorithm": "gcra", "limit": 1, "period": "1s", "burst": 0}"#,
                "invalid_field",
                "burst",
            ),
            (
                r#"{"algorithm": "fixed_window", "rate": "1/s", "align": "noon"}"#,
                "invalid_field",
                "align",
            ),
            (
                r#"{"algorithm": "token_bucket", "capacity": 5}"#,
                "missing_field",
                "refill",
            ),
            (
                r#"{"algorithm": "barrier", "parties": 0, "ttl": "1s"}"#,
                "invalid_field",
                "parties",
            ),
        ] {
            let e = spec(json).to_limit().expect_err(json);
            assert_eq!((e.code, e.field.as_str()), (code, field), "{json}: {e}");
        }
        let e = spec(r#"{"limit": 10, "period": "10 apples"}"#)
            .to_limit()
            .unwrap_err();
        assert!(e.message.contains("\"10 apples\""), "{e}");
    }

    #[test]
    fn adaptive_definitions_start_at_max_and_refuse_what_cannot_adapt_by_field() {
        let d = spec(r#"{"algorithm": "gcra", "period": "1s", "burst": 3, "adaptive": {"min": 2, "max": 50}}"#)
            .to_declared()
            .unwrap();
        assert_eq!(d.limit_in_force(), Some(50));
        let canonical = LimitSpec::from_declared(&d);
        assert_eq!(
            serde_json::to_string(&canonical).unwrap(),
            r#"{"algorithm":"gcra","limit":50,"adaptive":{"min":2,"max":50},"period":"1s","burst":3}"#
        );
        assert_eq!(canonical.to_declared().unwrap(), d);
        let given = spec(r#"{"limit": 7, "period": "1s", "adaptive": {"min": 2, "max": 50}}"#);
        assert_eq!(given.to_declared().unwrap().limit_in_force(), Some(7));
        let conc = spec(r#"{"algorithm": "concurrency", "adaptive": {"min": 1, "max": 8}}"#);
        assert_eq!(conc.to_declared().unwrap().limit_in_force(), Some(8));
        for (json, code, field) in [
            (
                r#"{"period": "1s", "adaptive": {"min": 0, "max": 5}}"#,
                "invalid_field",
                "adaptive.min",
            ),
            (
                r#"{"period": "1s", "adaptive": {"min": 6, "max": 5}}"#,
                "invalid_field",
                "adaptive.min",
            ),
            (
                r#"{"period": "1s", "adaptive": {"min": 1, "max": 1000000001}}"#,
                "invalid_field",
                "adaptive.max",
            ),
            (
                r#"{"algorithm": "concurrency", "adaptive": {"min": 1, "max": 2000000}}"#,
                "invalid_field",
                "adaptive.max",
            ),
            (
                r#"{"limit": 51, "period": "1s", "adaptive": {"min": 2, "max": 50}}"#,
                "invalid_field",
                "limit",
            ),
            (
                r#"{"limit": 1, "period": "1s", "adaptive": {"min": 2, "max": 50}}"#,
                "invalid_field",
                "limit",
            ),
            (
                r#"{"rate": "60/m", "adaptive": {"min": 2, "max": 50}}"#,
                "invalid_field",
                "rate",
            ),
            (
                r#"{"algorithm": "token_bucket", "capacity": 5, "refill": "1/s", "adaptive": {"min": 1, "max": 5}}"#,
                "invalid_field",
                "adaptive",
            ),
            (
                r#"{"algorithm": "barrier", "parties": 2, "ttl": "1s", "adaptive": {"min": 1, "max": 5}}"#,
                "invalid_field",
                "adaptive",
            ),
            (
                r#"{"adaptive": {"min": 1, "max": 5}}"#,
                "missing_field",
                "period",
            ),
        ] {
            let e = spec(json).to_declared().expect_err(json);
            assert_eq!((e.code, e.field.as_str()), (code, field), "{json}: {e}");
        }
        assert!(serde_json::from_str::<LimitSpec>(r#"{"adaptive": {"min": 1}}"#).is_err());
        assert!(
            serde_json::from_str::<LimitSpec>(r#"{"adaptive": {"min": 1, "max": 2, "step": 1}}"#)
                .is_err()
        );
    }

    #[test]
    fn unknown_fields_are_rejected_not_ignored() {
        let e = serde_json::from_str::<LimitSpec>(r#"{"limit": 1, "period": "1s", "brust": 2}"#)
            .unwrap_err();
        assert!(e.to_string().contains("brust"), "{e}");
    }
}
