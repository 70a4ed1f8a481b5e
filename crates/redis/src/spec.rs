//! Limit definitions as the space-separated specs the scripts read (see `scripts/lib.lua`).
//!
//! A spec carries the exact period in nanoseconds (read back by Rust only, so a definition
//! round-trips exactly) and the microsecond values the scripts compute with.

use tollgate_core::{
    Algorithm, Align, Barrier, Concurrency, FixedWindow, Gcra, Limit, Nanos, Period, Rate,
    RateLimit, SlidingWindow, TokenBucket,
};

/// Microseconds, rounded up: a duration the scripts use is never shorter than asked.
pub(crate) fn micros_ceil(n: Nanos) -> u64 {
    n.as_micros_ceil()
}

/// The spec of a rate limit.
pub(crate) fn rate(limit: &RateLimit) -> String {
    match limit {
        RateLimit::SlidingWindow(l) => format!(
            "sw {} {} {} {}",
            l.limit(),
            l.period().as_nanos().as_nanos(),
            l.precision(),
            micros_ceil(l.period().as_nanos())
        ),
        RateLimit::FixedWindow(l) => format!(
            "fw {} {} {} {}",
            l.limit(),
            l.period().as_nanos().as_nanos(),
            match l.align() {
                Align::Clock => "c",
                Align::FirstUse => "f",
            },
            micros_ceil(l.period().as_nanos())
        ),
        RateLimit::Gcra(g) => gcra("gcra", g, g.burst()),
        RateLimit::TokenBucket(t) => gcra("tb", t.as_gcra(), t.capacity()),
    }
}

fn gcra(code: &str, g: &Gcra, burst: u64) -> String {
    let rate = g.rate();
    format!(
        "{code} {} {} {burst} {}",
        rate.limit(),
        rate.period().as_nanos().as_nanos(),
        micros_ceil(g.emission_interval())
    )
}

/// The spec of a concurrency limit.
pub(crate) fn concurrency(c: &Concurrency) -> String {
    let ttl = c.lease_ttl().as_nanos();
    format!("conc {} {} {}", c.limit(), ttl.as_nanos(), micros_ceil(ttl))
}

/// The spec of any limit (a static definition).
pub(crate) fn limit(limit: &Limit) -> String {
    match limit {
        Limit::Rate(r) => rate(r),
        Limit::Concurrency(c) => concurrency(c),
        Limit::Barrier(b) => format!("bar {} {}", b.parties(), b.ttl().as_nanos().as_nanos()),
    }
}

/// A limit back from its spec; `None` for anything that is not one.
pub(crate) fn parse(spec: &str) -> Option<Limit> {
    let t: Vec<&str> = spec.split_ascii_whitespace().collect();
    let num = |i: usize| -> Option<u64> { t.get(i)?.parse().ok() };
    let period = |i: usize| Period::from_nanos(Nanos::from_nanos(num(i)?)).ok();
    let limit = match *t.first()? {
        "sw" => Limit::Rate(RateLimit::SlidingWindow(
            SlidingWindow::with_precision(num(1)?, period(2)?, u32::try_from(num(3)?).ok()?)
                .ok()?,
        )),
        "fw" => {
            let align = match *t.get(3)? {
                "c" => Align::Clock,
                "f" => Align::FirstUse,
                _ => return None,
            };
            Limit::Rate(RateLimit::FixedWindow(
                FixedWindow::new(num(1)?, period(2)?, align).ok()?,
            ))
        }
        "gcra" => Limit::Rate(RateLimit::Gcra(
            Gcra::new(Rate::new(num(1)?, period(2)?).ok()?, num(3)?).ok()?,
        )),
        "tb" => Limit::Rate(RateLimit::TokenBucket(
            TokenBucket::new(num(3)?, Rate::new(num(1)?, period(2)?).ok()?).ok()?,
        )),
        "conc" => {
            Limit::Concurrency(Concurrency::new(u32::try_from(num(1)?).ok()?, period(2)?).ok()?)
        }
        "bar" => Limit::Barrier(Barrier::new(u32::try_from(num(1)?).ok()?, period(2)?).ok()?),
        _ => return None,
    };
    Some(limit)
}

/// The algorithm behind a spec's first token.
pub(crate) fn algorithm(code: &str) -> Option<Algorithm> {
    Some(match code {
        "sw" => Algorithm::SlidingWindow,
        "fw" => Algorithm::FixedWindow,
        "gcra" => Algorithm::Gcra,
        "tb" => Algorithm::TokenBucket,
        "conc" => Algorithm::Concurrency,
        "bar" => Algorithm::Barrier,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_limit_round_trips_exactly() {
        let odd = Period::from_nanos(Nanos::from_nanos(1_000_007_000)).unwrap();
        let rate = Rate::new(7, odd).unwrap();
        for l in [
            Limit::Rate(RateLimit::SlidingWindow(
                SlidingWindow::with_precision(3, odd, 7).unwrap(),
            )),
            Limit::Rate(RateLimit::FixedWindow(
                FixedWindow::new(3, Period::MINUTE, Align::Clock).unwrap(),
            )),
            Limit::Rate(RateLimit::FixedWindow(
                FixedWindow::new(3, odd, Align::FirstUse).unwrap(),
            )),
            Limit::Rate(RateLimit::Gcra(Gcra::new(rate, 4).unwrap())),
            Limit::Rate(RateLimit::TokenBucket(TokenBucket::new(5, rate).unwrap())),
            Limit::Concurrency(Concurrency::new(2, odd).unwrap()),
            Limit::Barrier(Barrier::new(3, Period::SECOND).unwrap()),
        ] {
            assert_eq!(parse(&limit(&l)), Some(l), "{}", limit(&l));
        }
    }

    #[test]
    fn script_values_are_microseconds_rounded_up() {
        let g = Gcra::new("3/s".parse().unwrap(), 1).unwrap();
        // T = ⌈1 s / 3⌉ = 333_333_334 ns → 333_334 µs.
        assert_eq!(rate(&RateLimit::Gcra(g)), "gcra 3 1000000000 1 333334");
    }

    #[test]
    fn garbage_is_not_a_limit() {
        for s in [
            "",
            "sw",
            "sw 0 1000000 1 1000",
            "fw 1 1000000 x 1000",
            "conc a b c",
        ] {
            assert_eq!(parse(s), None, "{s:?}");
        }
    }
}
