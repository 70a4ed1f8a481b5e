//! Periods and rates (docs/design.md §2): the canonical `Display` parses back to the same value, and any
//! string either parses or fails with an error that quotes it — never a panic.

use proptest::prelude::*;
use serde::Deserialize;
use serde::de::IntoDeserializer;
use serde::de::value::{Error as DeError, StrDeserializer};
use tollgate_core::{Error, Nanos, Period, Rate};

const CASES: u32 = 256;
const MS: u64 = 1_000_000;

/// Any period in range: whole milliseconds (what users write) or any nanosecond count (what
/// `Period::from_nanos` accepts).
fn any_period() -> impl Strategy<Value = Period> {
    let (min, max) = (
        Period::MIN.as_nanos().as_nanos(),
        Period::MAX.as_nanos().as_nanos(),
    );
    prop_oneof![
        (min / MS..=max / MS).prop_map(|ms| Period::from_millis(ms).expect("in range")),
        (min..=max).prop_map(|ns| Period::from_nanos(Nanos::from_nanos(ns)).expect("in range")),
        (1u64..=100).prop_map(|ms| Period::from_millis(ms).expect("in range")),
    ]
}

fn deserialize(s: &str) -> Result<Period, DeError> {
    let d: StrDeserializer<'_, DeError> = s.into_deserializer();
    Period::deserialize(d)
}

/// Whether `e` quotes `input` as written.
fn quotes(e: &Error, input: &str) -> bool {
    e.to_string().contains(&format!("{input:?}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// `Display` is canonical and parses back — with `FromStr` and through serde (which
    /// serializes periods as that string) — to the same period.
    #[test]
    fn display_round_trips_for_every_period_in_range(p in any_period()) {
        let s = p.to_string();
        prop_assert_eq!(s.parse::<Period>().map_err(|e| e.to_string()), Ok(p), "{}", s);
        prop_assert_eq!(deserialize(&s).map_err(|e| e.to_string()), Ok(p), "{}", s);
    }

    /// A rate's `Display` (`N/period`) parses back to the same rate.
    #[test]
    fn rate_display_round_trips(limit in 1u64..=1_000_000_000, p in any_period()) {
        let r = Rate::new(limit, p).expect("valid");
        let s = r.to_string();
        prop_assert_eq!(s.parse::<Rate>().map_err(|e| e.to_string()), Ok(r), "{}", s);
    }

    /// A compound such as `1h30m` is the sum of its parts, whatever the order and repetition;
    /// out of range it is an error quoting the input.
    #[test]
    fn compound_periods_parse_to_the_sum_of_their_parts(
        parts in prop::collection::vec((0u64..=2_000, 0usize..6), 1..5)
    ) {
        const UNITS: [(&str, u64); 6] = [
            ("ms", MS), ("s", 1_000 * MS), ("m", 60_000 * MS), ("h", 3_600_000 * MS),
            ("d", 86_400_000 * MS), ("w", 604_800_000 * MS),
        ];
        let input: String = parts.iter().map(|&(n, u)| format!("{n}{}", UNITS[u].0)).collect();
        let total: u64 = parts.iter().map(|&(n, u)| n * UNITS[u].1).sum();
        match Period::parse(&input) {
            Ok(p) => prop_assert_eq!(p.as_nanos(), Nanos::from_nanos(total), "{}", input),
            Err(e) => {
                prop_assert!(
                    total < Period::MIN.as_nanos().as_nanos() || total > Period::MAX.as_nanos().as_nanos(),
                    "{input} ({total}ns, in range) rejected: {e}"
                );
                prop_assert!(quotes(&e, &input), "{e}");
            }
        }
    }

    /// Arbitrary strings — random Unicode, and near-misses built from the grammar's own pieces —
    /// never panic; every error quotes the input; every success is a period in range.
    #[test]
    fn garbage_never_panics_and_errors_quote_the_input(
        input in prop_oneof![
            ".*",
            "[0-9]{0,22}(ms|ns|s|m|h|d|w|M|y|x|/|\\.| |-)?[0-9]{0,3}[a-zA-Z]{0,6}",
            "[ \\t]?[0-9 ]{0,4}/[ ]?(([0-9]{0,3}(ms|s|m|h|d|w|ns|\\.)?){0,3}|second|MINUTE|hOuR|day|week|month|year|fortnight)[ ]?",
            "(?i)(second|minute|hour|day|week|month|year|sec|min)s?",
        ]
    ) {
        match Period::parse(&input) {
            Ok(p) => prop_assert!((Period::MIN..=Period::MAX).contains(&p)),
            Err(e) => prop_assert!(quotes(&e, &input), "{e}"),
        }
        match Rate::parse(&input) {
            Ok(r) => prop_assert!((1..=1_000_000_000).contains(&r.limit())),
            Err(e) => prop_assert!(quotes(&e, &input), "{e}"),
        }
        let _ = deserialize(&input);
    }
}

/// Regression: `Display` prints a sub-millisecond remainder as `ns` (`1ms1ns`), which neither
/// `FromStr` nor serde accepted back, so a period built with `Period::from_nanos` could be
/// serialized but not read again.
#[test]
fn sub_millisecond_periods_parse_back_from_display() {
    let p = Period::from_nanos(Nanos::from_nanos(1_000_001)).unwrap();
    assert_eq!(p.to_string(), "1ms1ns");
    assert_eq!("1ms1ns".parse::<Period>().unwrap(), p);
    assert_eq!(deserialize("1ms1ns").unwrap(), p);
    assert_eq!("1000000ns".parse::<Period>().unwrap(), Period::MIN);
    assert!(
        "999999ns"
            .parse::<Period>()
            .unwrap_err()
            .to_string()
            .contains("\"999999ns\"")
    );
}
