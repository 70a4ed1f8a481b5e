//! [`Period`] and [`Rate`]: parsing `"90s"`, `"1h30m"`, `"MINUTE"`, `"100/m"`, `"5/24h"`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;
use crate::time::Nanos;

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000 * MS;
const MIN: u64 = 60 * SEC;
const HOUR: u64 = 60 * MIN;
const DAY: u64 = 24 * HOUR;
const WEEK: u64 = 7 * DAY;

/// The named durations, case-insensitive (`MONTH` = 30 days, `YEAR` = 365 days).
const NAMED: [(&str, u64); 7] = [
    ("SECOND", SEC),
    ("MINUTE", MIN),
    ("HOUR", HOUR),
    ("DAY", DAY),
    ("WEEK", WEEK),
    ("MONTH", 30 * DAY),
    ("YEAR", 365 * DAY),
];

/// Suffixes, longest first so that `ms` is tried before `m`. `ns` is not advertised, but it is
/// what `Display` prints for a sub-millisecond remainder, so it parses back.
const SUFFIXES: [(&str, u64); 7] = [
    ("ns", 1),
    ("ms", MS),
    ("s", SEC),
    ("m", MIN),
    ("h", HOUR),
    ("d", DAY),
    ("w", WEEK),
];

const EXPECTED_PERIOD: &str = "expected a number with a unit (ms, s, m, h, d, w) such as \"500ms\", \"90s\" or \
     \"1h30m\", or one of SECOND, MINUTE, HOUR, DAY, WEEK, MONTH, YEAR";

/// The length of a limit's window or refill: from 1 ms to 10 years.
///
/// Parsed from `500ms`, `1s`, `90s`, `10m`, `4h`, `1d`, `1w`, compounds such as `1h30m`, or the
/// names `SECOND MINUTE HOUR DAY WEEK MONTH YEAR` in any case (a month is 30 days, a year 365).
/// Serialized as its canonical string.
///
/// ```
/// use tollgate_core::Period;
/// let p: Period = "1h30m".parse()?;
/// assert_eq!(p.as_nanos().as_millis_ceil(), 5_400_000);
/// assert_eq!(p.to_string(), "1h30m");
/// assert_eq!("minute".parse::<Period>()?, "60s".parse()?);
/// # Ok::<(), tollgate_core::Error>(())
/// ```
///
/// # Errors
/// A parse error quotes the input and says what was expected:
/// ```
/// let err = "10 apples".parse::<tollgate_core::Period>().unwrap_err();
/// assert!(err.to_string().contains("\"10 apples\""));
/// ```
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period(Nanos);

impl Period {
    /// The shortest period: one millisecond.
    pub const MIN: Period = Period(Nanos::from_millis(1));
    /// The longest period: ten years of 365 days.
    pub const MAX: Period = Period(Nanos::from_nanos(3_650 * DAY));
    /// One second.
    pub const SECOND: Period = Period(Nanos::from_nanos(SEC));
    /// One minute.
    pub const MINUTE: Period = Period(Nanos::from_nanos(MIN));
    /// One hour.
    pub const HOUR: Period = Period(Nanos::from_nanos(HOUR));
    /// One day.
    pub const DAY: Period = Period(Nanos::from_nanos(DAY));

    /// A period of exactly `nanos`.
    ///
    /// # Errors
    /// [`Error::InvalidPeriod`] outside `[Period::MIN, Period::MAX]`.
    pub fn from_nanos(nanos: Nanos) -> Result<Period, Error> {
        if nanos < Period::MIN.0 || nanos > Period::MAX.0 {
            return Err(Error::InvalidPeriod {
                input: format!("{}ns", nanos.as_nanos()),
                reason: "a period must be between 1ms and 10 years".into(),
            });
        }
        Ok(Period(nanos))
    }

    /// A period of `secs` seconds, usable in constants: `None` outside the accepted range.
    pub const fn from_secs_const(secs: u64) -> Option<Period> {
        let n = Nanos::from_secs(secs);
        if n.as_nanos() < Period::MIN.0.as_nanos() || n.as_nanos() > Period::MAX.0.as_nanos() {
            None
        } else {
            Some(Period(n))
        }
    }

    /// A period of `millis` milliseconds.
    ///
    /// # Errors
    /// As [`Period::from_nanos`].
    pub fn from_millis(millis: u64) -> Result<Period, Error> {
        Period::from_nanos(Nanos::from_millis(millis))
    }

    /// A period of `secs` seconds.
    ///
    /// # Errors
    /// As [`Period::from_nanos`].
    pub fn from_secs(secs: u64) -> Result<Period, Error> {
        Period::from_nanos(Nanos::from_secs(secs))
    }

    /// The length in nanoseconds.
    pub const fn as_nanos(self) -> Nanos {
        self.0
    }

    /// Parses a period string (see the type's docs).
    ///
    /// # Errors
    /// [`Error::InvalidPeriod`], quoting `input`.
    pub fn parse(input: &str) -> Result<Period, Error> {
        let err = |reason: &str| Error::InvalidPeriod {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(err(EXPECTED_PERIOD));
        }
        if let Some((_, n)) = NAMED.iter().find(|(name, _)| name.eq_ignore_ascii_case(s)) {
            return Period::from_nanos(Nanos::from_nanos(*n)).map_err(|_| err("out of range"));
        }
        let mut total: u64 = 0;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(err(EXPECTED_PERIOD));
            }
            let number: u64 = rest[..digits]
                .parse()
                .map_err(|_| err("the number is too large"))?;
            rest = &rest[digits..];
            let Some((suffix, unit)) = SUFFIXES.iter().find(|(suf, _)| rest.starts_with(suf))
            else {
                return Err(err(if rest.is_empty() {
                    "a number needs a unit (ms, s, m, h, d, w), e.g. \"30s\""
                } else {
                    EXPECTED_PERIOD
                }));
            };
            rest = &rest[suffix.len()..];
            total = number
                .checked_mul(*unit)
                .and_then(|n| total.checked_add(n))
                .ok_or_else(|| err("a period must be between 1ms and 10 years"))?;
        }
        Period::from_nanos(Nanos::from_nanos(total))
            .map_err(|_| err("a period must be between 1ms and 10 years"))
    }
}

impl FromStr for Period {
    type Err = Error;
    fn from_str(s: &str) -> Result<Period, Error> {
        Period::parse(s)
    }
}

impl fmt::Display for Period {
    /// The canonical compound form, largest units first: `1h30m`, `500ms`, `1w2d`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0.as_nanos();
        for (suffix, unit) in [
            ("w", WEEK),
            ("d", DAY),
            ("h", HOUR),
            ("m", MIN),
            ("s", SEC),
            ("ms", MS),
        ] {
            if rest >= unit {
                write!(f, "{}{}", rest / unit, suffix)?;
                rest %= unit;
            }
        }
        if rest > 0 {
            // Only reachable for periods built from sub-millisecond nanos.
            write!(f, "{rest}ns")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Period({self})")
    }
}

impl Serialize for Period {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Period, D::Error> {
        let s = String::deserialize(d)?;
        Period::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// `limit` units per `period`: `"100/m"`, `"10/s"`, `"5/24h"`, `"1000/DAY"`.
///
/// ```
/// use tollgate_core::Rate;
/// let r: Rate = "100/m".parse()?;
/// assert_eq!(r.limit(), 100);
/// assert_eq!(r.period().to_string(), "1m");
/// assert_eq!("5/24h".parse::<Rate>()?.period().to_string(), "1d");
/// # Ok::<(), tollgate_core::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidRate`] quoting the input: `"100"`, `"0/s"`, `"x/m"`, `"10/fortnight"`.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rate {
    limit: u64,
    period: Period,
}

impl Rate {
    /// `limit` units per `period`.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] when `limit` is 0 or above [`crate::MAX_LIMIT`].
    pub fn new(limit: u64, period: Period) -> Result<Rate, Error> {
        crate::check_limit("limit", limit)?;
        Ok(Rate { limit, period })
    }

    /// Units per period.
    pub const fn limit(self) -> u64 {
        self.limit
    }

    /// The period.
    pub const fn period(self) -> Period {
        self.period
    }

    /// Parses `N/unit` or `N/period`.
    ///
    /// # Errors
    /// [`Error::InvalidRate`], quoting `input`.
    pub fn parse(input: &str) -> Result<Rate, Error> {
        let err = |reason: String| Error::InvalidRate {
            input: input.to_owned(),
            reason,
        };
        let expected = "expected N/unit or N/period such as \"100/m\", \"10/s\" or \"5/24h\"";
        let (n, p) = input
            .trim()
            .split_once('/')
            .ok_or_else(|| err(expected.into()))?;
        let n = n.trim();
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err(format!("{n:?} is not a whole number; {expected}")));
        }
        let limit: u64 = n.parse().map_err(|_| err(format!("{n:?} is too large")))?;
        let p = p.trim();
        // A bare unit (`m`, `s`, `h`) means one of it.
        let period = match SUFFIXES.iter().find(|(suf, _)| *suf == p) {
            Some((_, unit)) => Period::from_nanos(Nanos::from_nanos(*unit)),
            None => Period::parse(p),
        }
        .map_err(|e| match e {
            Error::InvalidPeriod { reason, .. } => err(format!("bad period {p:?}: {reason}")),
            other => err(other.to_string()),
        })?;
        Rate::new(limit, period).map_err(|e| err(e.to_string()))
    }
}

impl FromStr for Rate {
    type Err = Error;
    fn from_str(s: &str) -> Result<Rate, Error> {
        Rate::parse(s)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.limit, self.period)
    }
}

impl fmt::Debug for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rate({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(p: &str) -> u64 {
        Period::parse(p)
            .unwrap_or_else(|e| panic!("{p}: {e}"))
            .as_nanos()
            .as_nanos()
            / MS
    }

    #[test]
    fn parses_every_listed_form() {
        assert_eq!(ms("500ms"), 500);
        assert_eq!(ms("1s"), 1_000);
        assert_eq!(ms("90s"), 90_000);
        assert_eq!(ms("10m"), 600_000);
        assert_eq!(ms("4h"), 4 * 3_600_000);
        assert_eq!(ms("1d"), 86_400_000);
        assert_eq!(ms("1w"), 7 * 86_400_000);
        assert_eq!(ms("1h30m"), 5_400_000);
        assert_eq!(ms("1d12h"), 36 * 3_600_000);
        assert_eq!(ms("1m30s500ms"), 90_500);
        assert_eq!(ms("SECOND"), 1_000);
        assert_eq!(ms("minute"), 60_000);
        assert_eq!(ms("Hour"), 3_600_000);
        assert_eq!(ms("DAY"), 86_400_000);
        assert_eq!(ms("week"), 7 * 86_400_000);
        assert_eq!(ms("MONTH"), 30 * 86_400_000);
        assert_eq!(ms("year"), 365 * 86_400_000);
        assert_eq!(ms(" 25h "), 25 * 3_600_000, "no 24-hour cap");
    }

    #[test]
    fn rejects_bad_periods_quoting_the_input() {
        for bad in [
            "",
            "10",
            "1.5h",
            "-1s",
            "1x",
            "h",
            "0s",
            "0ms",
            "11y",
            "3651d",
            "1M",
            "1h 30m",
            "99999999999999999999s",
        ] {
            let e = Period::parse(bad).expect_err(bad);
            assert!(
                e.to_string().contains(&format!("{bad:?}")),
                "{bad:?} -> {e}"
            );
        }
        assert!(
            Period::parse("10")
                .unwrap_err()
                .to_string()
                .contains("unit")
        );
    }

    #[test]
    fn accepts_the_bounds() {
        assert_eq!(Period::parse("1ms").unwrap(), Period::MIN);
        assert_eq!(Period::parse("3650d").unwrap(), Period::MAX);
        assert!(Period::parse("YEAR").is_ok());
    }

    #[test]
    fn display_round_trips() {
        for p in ["1h30m", "500ms", "1w2d3h4m5s6ms", "1s", "1d"] {
            let parsed = Period::parse(p).unwrap();
            assert_eq!(parsed.to_string(), p);
            assert_eq!(Period::parse(&parsed.to_string()).unwrap(), parsed);
        }
    }

    #[test]
    fn parses_rates() {
        let r = Rate::parse("100/m").unwrap();
        assert_eq!((r.limit(), ms(&r.period().to_string())), (100, 60_000));
        assert_eq!(Rate::parse("10/s").unwrap().period(), Period::SECOND);
        assert_eq!(Rate::parse("50/h").unwrap().period(), Period::HOUR);
        assert_eq!(Rate::parse("5/24h").unwrap().period(), Period::DAY);
        assert_eq!(Rate::parse("1000/d").unwrap().period(), Period::DAY);
        assert_eq!(Rate::parse("7/MINUTE").unwrap().period(), Period::MINUTE);
        assert_eq!(
            Rate::parse("3/90s").unwrap().period(),
            Period::from_secs(90).unwrap()
        );
    }

    #[test]
    fn rejects_bad_rates_quoting_the_input() {
        for bad in [
            "100",
            "0/s",
            "x/m",
            "10/fortnight",
            "/s",
            "10/",
            "-1/s",
            "1.5/s",
        ] {
            let e = Rate::parse(bad).expect_err(bad);
            assert!(
                e.to_string().contains(&format!("{bad:?}")),
                "{bad:?} -> {e}"
            );
        }
    }
}
