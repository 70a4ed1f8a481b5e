//! A fixed run of keyed gcra decisions over 1 M resident keys, one library per process, for
//! `valgrind --tool=callgrind`: instruction counts and simulated cache misses are the same at
//! every run, unlike times on a shared machine (BENCHMARKS.md, "Deterministic counts").
//!
//! Every key is used once beforehand under a 1/h limit, so every measured decision is a denial
//! of a resident key: a lookup and a decision, no insert, no sweep. The keys are drawn
//! uniformly (nearly every lookup starts with a cold cache line), or with `zipf` as the second
//! argument from the zipf sequence of the criterion benches (hot keys stay cached). Only
//! `run_tollgate` / `run_governor` are meant to be counted (`--toggle-collect`).
//!
//! ```sh
//! cargo bench -p tollgate --bench lookups --no-run   # prints the binary's path
//! valgrind --tool=callgrind --cache-sim=yes --toggle-collect='lookups::run_*' \
//!     target/release/deps/lookups-HASH tollgate      # or: governor; then optionally zipf
//! ```

use std::hint::black_box;

use governor::RateLimiter;
use governor::clock::FakeRelativeClock;
use tollgate::core::{Nanos, RateLimit};
use tollgate::{AcquireEntry, FakeClock, Limiter, MemoryStore};

mod common;
use common::{Dist, GovernorKeyed, gcra_deny, governor_deny, keys, sequence};

const KEYS: usize = 1_000_000;
/// Decisions counted: `DECISIONS` draws from the uniform key sequence.
const DECISIONS: usize = 1 << 18;

fn main() {
    // `cargo bench` passes `--bench`; the first other argument names the library, the second
    // the distribution.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let which = args.first().map_or("tollgate", String::as_str);
    let dist = match args.get(1).map(String::as_str) {
        None | Some("uniform") => Dist::Uniform,
        Some("zipf") => Dist::Zipf,
        Some(other) => panic!("unknown distribution {other:?}: uniform or zipf"),
    };
    let keys = keys(KEYS);
    // The criterion benches' seeds: 1 for uniform, 2 for zipf.
    let seq = sequence(KEYS, dist, if dist == Dist::Uniform { 1 } else { 2 });
    let seq = &seq[..DECISIONS];
    let allowed = match which {
        "tollgate" => {
            let limiter = Limiter::with_store(
                MemoryStore::new(),
                FakeClock::new(Nanos::from_secs(1_700_000_000)),
            );
            let limit = gcra_deny();
            for key in &keys {
                let entry = [AcquireEntry::dynamic(key, limit, 1)];
                let answer = limiter.try_acquire(&entry).expect("a valid request");
                assert!(answer.allowed, "a fresh key admits one unit");
            }
            run_tollgate(&limiter, &keys, seq, limit)
        }
        "governor" => {
            let limiter: GovernorKeyed =
                RateLimiter::dashmap_with_clock(governor_deny(), FakeRelativeClock::default());
            for key in &keys {
                assert!(limiter.check_key(key).is_ok(), "a fresh key admits one");
            }
            run_governor(&limiter, &keys, seq)
        }
        other => panic!("unknown library {other:?}: tollgate or governor"),
    };
    assert_eq!(allowed, 0, "every key was spent beforehand");
    println!(
        "{which}: {DECISIONS} {} decisions over {KEYS} resident keys, {allowed} admitted",
        dist.name()
    );
}

#[inline(never)]
fn run_tollgate(
    limiter: &Limiter<MemoryStore>,
    keys: &[String],
    seq: &[u32],
    limit: RateLimit,
) -> usize {
    let mut allowed = 0;
    for &i in seq {
        let entry = [AcquireEntry::dynamic(&keys[i as usize], limit, 1)];
        let answer = limiter.try_acquire(&entry).expect("a valid request");
        allowed += usize::from(black_box(&answer).allowed);
    }
    allowed
}

#[inline(never)]
fn run_governor(limiter: &GovernorKeyed, keys: &[String], seq: &[u32]) -> usize {
    let mut allowed = 0;
    for &i in seq {
        let answer = limiter.check_key(&keys[i as usize]);
        allowed += usize::from(black_box(&answer).is_ok());
    }
    allowed
}
