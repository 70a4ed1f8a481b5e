//! In-process decision cost: tollgate against `governor` under the same fake time, every
//! algorithm against `gcra`, and atomic multi-key acquires (docs/design.md §6, BENCHMARKS.md).
//!
//! Both libraries read a fake clock (an atomic load) at every decision, and both clocks are
//! advanced by `CHUNK · STEP_NS` every `CHUNK` decisions: 10 ns of simulated time per decision.
//!
//! Groups:
//! - `gcra_core`: one key, tollgate-core `RateLimit::decide` on its own state vs `governor`'s
//!   direct limiter `check()`.
//! - `gcra_engine`: one key through the engine (`Limiter::try_acquire`, static or dynamic key)
//!   vs `governor` keyed (DashMap) with one key.
//! - `gcra_keyed_10k`, `gcra_keyed_1m`: dynamic keys vs `governor` keyed, uniform and zipf key
//!   choice, 1 and 2 threads, three limits (see [`Regime`]).
//! - `algorithms_core`, `algorithms_engine`: every rate algorithm, one key, allow and deny.
//! - `acquire_keys`: atomic acquire of 1, 3 and 10 declared keys.
//!
//! `cargo bench -p tollgate --bench decisions [-- FILTER]`

use std::cell::OnceCell;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Bencher, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use governor::RateLimiter;
use governor::clock::FakeRelativeClock;
use tollgate::core::{
    Align, FixedWindow, Gcra, GcraState, LimitState, Nanos, Period, Rate, RateLimit, SlidingWindow,
    TokenBucket,
};
use tollgate::{AcquireEntry, Clock, FakeClock, Limiter, MemoryStore};

mod common;
use common::{
    CHUNK, Dist, GovernorKeyed, SEQ_LEN, STEP_NS, gcra_allow, gcra_deny, governor_allow,
    governor_deny, keys, nonzero, sequence,
};

/// Where tollgate's fake clock starts: an epoch instant of today's order.
const T0: Nanos = Nanos::from_secs(1_700_000_000);

/// Counts decisions and advances both kinds of fake clock every `CHUNK`.
struct Ticker(u64);

impl Ticker {
    #[inline]
    fn tick(&mut self) -> bool {
        self.0 += 1;
        if self.0 == CHUNK {
            self.0 = 0;
            true
        } else {
            false
        }
    }
}

fn advance_tollgate(clock: &FakeClock) {
    clock.advance(Nanos::from_nanos(STEP_NS * CHUNK));
}

fn advance_governor(clock: &FakeRelativeClock) {
    clock.advance(Duration::from_nanos(STEP_NS * CHUNK));
}

fn tollgate_limiter(clock: &FakeClock) -> Limiter<MemoryStore> {
    Limiter::with_store(MemoryStore::new(), clock.clone())
}

// ---------------------------------------------------------------------------------------------
// Single-key loops, shared by several groups.

/// tollgate-core alone: decide, keep the admitted state, like a store would.
fn core_loop(b: &mut Bencher<'_>, limit: RateLimit) {
    let clock = FakeClock::new(T0);
    let mut state: Option<LimitState> = None;
    let mut ticker = Ticker(0);
    b.iter(|| {
        let out = limit
            .decide(state.as_ref(), clock.now(), nonzero(1))
            .expect("one unit fits every bench limit");
        black_box(&out.decision);
        if out.decision.allowed {
            state = out.state;
        }
        if ticker.tick() {
            advance_tollgate(&clock);
        }
    });
}

/// tollgate-core's in-place entry point: `Gcra::decide_in_place` on a `GcraState` (what the
/// memory store runs for a key whose state was written under the same limit).
fn core_in_place_loop(b: &mut Bencher<'_>, limit: RateLimit) {
    let RateLimit::Gcra(gcra) = limit else {
        panic!("a gcra limit");
    };
    let clock = FakeClock::new(T0);
    let mut state = GcraState { tat: Nanos::ZERO };
    let mut ticker = Ticker(0);
    b.iter(|| {
        let decision = gcra
            .decide_in_place(&mut state, clock.now(), nonzero(1))
            .expect("one unit fits every bench limit");
        black_box(&decision);
        if ticker.tick() {
            advance_tollgate(&clock);
        }
    });
}

/// The engine: `Limiter::try_acquire` on a fake clock.
fn engine_loop(
    b: &mut Bencher<'_>,
    limiter: &Limiter<MemoryStore>,
    clock: &FakeClock,
    entries: &[AcquireEntry<'_>],
) {
    limiter.try_acquire(entries).expect("a valid request");
    let mut ticker = Ticker(0);
    b.iter(|| {
        // Inspected in place: moving the 176-byte answer out (`expect`, or returning it to
        // criterion) costs more than some decisions and is not the limiter's doing.
        let answer = limiter.try_acquire(entries);
        black_box(&answer);
        if ticker.tick() {
            advance_tollgate(clock);
        }
    });
}

fn governor_direct_loop(b: &mut Bencher<'_>, quota: governor::Quota) {
    let clock = FakeRelativeClock::default();
    let limiter = RateLimiter::direct_with_clock(quota, clock.clone());
    let mut ticker = Ticker(0);
    b.iter(|| {
        let answer = limiter.check();
        black_box(&answer);
        if ticker.tick() {
            advance_governor(&clock);
        }
    });
}

fn governor_keyed_loop(b: &mut Bencher<'_>, quota: governor::Quota) {
    let clock = FakeRelativeClock::default();
    let limiter: GovernorKeyed = RateLimiter::dashmap_with_clock(quota, clock.clone());
    let key = String::from("api");
    let mut ticker = Ticker(0);
    b.iter(|| {
        let answer = limiter.check_key(&key);
        black_box(&answer);
        if ticker.tick() {
            advance_governor(&clock);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// 1(a), 1(b): one key.

fn gcra_core(c: &mut Criterion) {
    let mut g = c.benchmark_group("gcra_core");
    g.throughput(Throughput::Elements(1));
    g.bench_function("tollgate/allow", |b| core_loop(b, gcra_allow()));
    g.bench_function("tollgate_in_place/allow", |b| {
        core_in_place_loop(b, gcra_allow())
    });
    g.bench_function("governor/allow", |b| {
        governor_direct_loop(b, governor_allow())
    });
    g.bench_function("tollgate/deny", |b| core_loop(b, gcra_deny()));
    g.bench_function("tollgate_in_place/deny", |b| {
        core_in_place_loop(b, gcra_deny())
    });
    g.bench_function("governor/deny", |b| {
        governor_direct_loop(b, governor_deny())
    });
    g.finish();
}

fn gcra_engine(c: &mut Criterion) {
    let mut g = c.benchmark_group("gcra_engine");
    g.throughput(Throughput::Elements(1));
    for (name, limit, quota) in [
        ("allow", gcra_allow(), governor_allow()),
        ("deny", gcra_deny(), governor_deny()),
    ] {
        g.bench_function(format!("tollgate_static/{name}"), |b| {
            let clock = FakeClock::new(T0);
            let limiter = tollgate_limiter(&clock);
            limiter.upsert("api", limit).expect("a valid limit");
            engine_loop(b, &limiter, &clock, &[AcquireEntry::new("api", 1)]);
        });
        g.bench_function(format!("tollgate_dynamic/{name}"), |b| {
            let clock = FakeClock::new(T0);
            let limiter = tollgate_limiter(&clock);
            engine_loop(
                b,
                &limiter,
                &clock,
                &[AcquireEntry::dynamic("api", limit, 1)],
            );
        });
        g.bench_function(format!("governor_keyed/{name}"), |b| {
            governor_keyed_loop(b, quota);
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// 1(c): many keys.

/// The three per-key limits of the keyed groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Regime {
    /// 200 000/ms, burst 1 000: every decision is admitted, and a key is back to fresh a few
    /// nanoseconds after each use, long before it is used again. Tollgate's shards sweep fresh
    /// keys out once they outgrow their threshold: with 1 M keys only a few thousand stay
    /// resident and most decisions insert their key again; `governor` keeps every key.
    AllowIdle,
    /// 1/s with a burst of 100 M: every decision is admitted and every key's state stays live
    /// (not fresh) for the whole run, so both libraries only look keys up.
    AllowLive,
    /// 1/h, burst 1, each key used once beforehand: every decision is a denial.
    Deny,
}

impl Regime {
    const ALL: [Regime; 3] = [Regime::AllowIdle, Regime::AllowLive, Regime::Deny];

    fn name(self) -> &'static str {
        match self {
            Regime::AllowIdle => "allow_idle",
            Regime::AllowLive => "allow_live",
            Regime::Deny => "deny",
        }
    }

    fn tollgate(self) -> RateLimit {
        match self {
            Regime::AllowIdle => gcra_allow(),
            Regime::AllowLive => {
                let rate = Rate::new(1, Period::SECOND).expect("a valid rate");
                RateLimit::Gcra(Gcra::new(rate, 100_000_000).expect("a valid gcra"))
            }
            Regime::Deny => gcra_deny(),
        }
    }

    fn governor(self) -> governor::Quota {
        match self {
            Regime::AllowIdle => governor_allow(),
            Regime::AllowLive => {
                governor::Quota::per_second(nonzero(1)).allow_burst(nonzero(100_000_000))
            }
            Regime::Deny => governor_deny(),
        }
    }
}

/// Everything one keyed group needs, built once (on first use) and shared by its benches.
struct KeyedFixture {
    keys: Vec<String>,
    uniform: Vec<u32>,
    zipf: Vec<u32>,
    tollgate_clock: FakeClock,
    governor_clock: FakeRelativeClock,
    /// One limiter per regime, for both libraries, indexed like `Regime::ALL`.
    tollgate: Vec<Limiter<MemoryStore>>,
    governor: Vec<GovernorKeyed>,
    /// Where the next batch starts in the key sequence (so samples don't replay it).
    cursor: AtomicUsize,
}

impl KeyedFixture {
    fn new(n: usize) -> KeyedFixture {
        let started = Instant::now();
        let keys = keys(n);
        let tollgate_clock = FakeClock::new(T0);
        let governor_clock = FakeRelativeClock::default();
        let tollgate: Vec<_> = Regime::ALL
            .iter()
            .map(|_| tollgate_limiter(&tollgate_clock))
            .collect();
        let governor: Vec<GovernorKeyed> = Regime::ALL
            .iter()
            .map(|r| RateLimiter::dashmap_with_clock(r.governor(), governor_clock.clone()))
            .collect();
        // Every key used once: resident in both, and spent under `Deny`.
        for (i, regime) in Regime::ALL.iter().enumerate() {
            let limit = regime.tollgate();
            for key in &keys {
                let answer = tollgate[i]
                    .try_acquire(&[AcquireEntry::dynamic(key, limit, 1)])
                    .expect("a valid request");
                assert!(answer.allowed, "a fresh key admits one unit");
                assert!(governor[i].check_key(key).is_ok(), "a fresh key admits one");
            }
        }
        let fixture = KeyedFixture {
            uniform: sequence(n, Dist::Uniform, 1),
            zipf: sequence(n, Dist::Zipf, 2),
            keys,
            tollgate_clock,
            governor_clock,
            tollgate,
            governor,
            cursor: AtomicUsize::new(0),
        };
        eprintln!(
            "keyed fixture: {n} keys, set up in {:.1?}",
            started.elapsed()
        );
        fixture.report_admissions(n);
        fixture
    }

    fn sequence(&self, dist: Dist) -> &[u32] {
        match dist {
            Dist::Uniform => &self.uniform,
            Dist::Zipf => &self.zipf,
        }
    }

    /// Prints the share of admitted decisions in each regime, to show that "allow" and
    /// "deny" measure what they say (both libraries must agree).
    fn report_admissions(&self, n: usize) {
        const SAMPLE: usize = 200_000;
        for (i, regime) in Regime::ALL.iter().enumerate() {
            for dist in [Dist::Uniform, Dist::Zipf] {
                let limit = regime.tollgate();
                let seq = self.sequence(dist);
                let (mut ours, mut theirs) = (0, 0);
                let mut ticker = Ticker(0);
                for &k in seq.iter().take(SAMPLE) {
                    let key = &self.keys[k as usize];
                    let answer = self.tollgate[i]
                        .try_acquire(&[AcquireEntry::dynamic(key, limit, 1)])
                        .expect("a valid request");
                    ours += usize::from(answer.allowed);
                    theirs += usize::from(self.governor[i].check_key(key).is_ok());
                    if ticker.tick() {
                        advance_tollgate(&self.tollgate_clock);
                        advance_governor(&self.governor_clock);
                    }
                }
                eprintln!(
                    "admitted, {n} keys, {} {}: tollgate {:.1} %, governor {:.1} %",
                    regime.name(),
                    dist.name(),
                    100.0 * ours as f64 / SAMPLE as f64,
                    100.0 * theirs as f64 / SAMPLE as f64,
                );
            }
        }
    }

    /// Runs `iters` decisions split over `threads` threads; returns the wall time.
    fn timed(&self, threads: usize, iters: u64, run: impl Fn(usize, u64) + Sync) -> Duration {
        let threads_u64 = threads as u64;
        let share = |t: usize| iters / threads_u64 + u64::from((t as u64) < iters % threads_u64);
        let started = Instant::now();
        if threads == 1 {
            run(
                self.cursor.fetch_add(iters as usize, Ordering::Relaxed),
                iters,
            );
        } else {
            std::thread::scope(|s| {
                for t in 0..threads {
                    let n = share(t);
                    let start = self.cursor.fetch_add(n as usize, Ordering::Relaxed);
                    let run = &run;
                    s.spawn(move || run(start, n));
                }
            });
        }
        started.elapsed()
    }

    fn bench_tollgate(&self, regime: usize, dist: Dist, threads: usize, iters: u64) -> Duration {
        let limiter = &self.tollgate[regime];
        let limit = Regime::ALL[regime].tollgate();
        let seq = self.sequence(dist);
        self.timed(threads, iters, |start, n| {
            let mut ticker = Ticker(0);
            for i in start..start + n as usize {
                let key = &self.keys[seq[i & (SEQ_LEN - 1)] as usize];
                let answer = limiter.try_acquire(&[AcquireEntry::dynamic(key, limit, 1)]);
                black_box(&answer);
                if ticker.tick() {
                    advance_tollgate(&self.tollgate_clock);
                }
            }
        })
    }

    fn bench_governor(&self, regime: usize, dist: Dist, threads: usize, iters: u64) -> Duration {
        let limiter = &self.governor[regime];
        let seq = self.sequence(dist);
        self.timed(threads, iters, |start, n| {
            let mut ticker = Ticker(0);
            for i in start..start + n as usize {
                let key = &self.keys[seq[i & (SEQ_LEN - 1)] as usize];
                let answer = limiter.check_key(key);
                black_box(&answer);
                if ticker.tick() {
                    advance_governor(&self.governor_clock);
                }
            }
        })
    }
}

fn keyed_group(c: &mut Criterion, name: &str, n: usize) {
    let fixture: OnceCell<KeyedFixture> = OnceCell::new();
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1));
    // Flat: every sample runs the same (large) batch, so spawning 2 threads is amortised.
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_millis(1_500));
    for (r, regime) in Regime::ALL.iter().enumerate() {
        for dist in [Dist::Uniform, Dist::Zipf] {
            for threads in [1, 2] {
                let case = format!("{}/{}/{threads}t", regime.name(), dist.name());
                g.bench_function(format!("tollgate/{case}"), |b| {
                    let f = fixture.get_or_init(|| KeyedFixture::new(n));
                    b.iter_custom(|iters| f.bench_tollgate(r, dist, threads, iters));
                });
                g.bench_function(format!("governor/{case}"), |b| {
                    let f = fixture.get_or_init(|| KeyedFixture::new(n));
                    b.iter_custom(|iters| f.bench_governor(r, dist, threads, iters));
                });
            }
        }
    }
    g.finish();
}

fn gcra_keyed(c: &mut Criterion) {
    keyed_group(c, "gcra_keyed_10k", 10_000);
    keyed_group(c, "gcra_keyed_1m", 1_000_000);
}

// ---------------------------------------------------------------------------------------------
// 2: every algorithm as a ratio to gcra.

/// `(name, mostly-allowed limit, mostly-denied limit)`: the same budget as `gcra_allow` /
/// `gcra_deny` in each algorithm's terms.
fn algorithms() -> Vec<(&'static str, RateLimit, RateLimit)> {
    let ms = Period::MIN;
    let per_ms = 1_000_000 / common::ALLOW_INTERVAL_NS;
    let burst = u64::from(common::ALLOW_BURST);
    let hourly = Rate::new(1, Period::HOUR).expect("a valid rate");
    vec![
        ("gcra", gcra_allow(), gcra_deny()),
        (
            "token_bucket",
            RateLimit::TokenBucket(
                TokenBucket::new(burst, Rate::new(per_ms, ms).expect("a valid rate"))
                    .expect("a valid bucket"),
            ),
            RateLimit::TokenBucket(TokenBucket::new(1, hourly).expect("a valid bucket")),
        ),
        (
            "fixed_window",
            RateLimit::FixedWindow(
                FixedWindow::new(per_ms, ms, Align::FirstUse).expect("a valid window"),
            ),
            RateLimit::FixedWindow(
                FixedWindow::new(1, Period::HOUR, Align::FirstUse).expect("a valid window"),
            ),
        ),
        (
            "sliding_window",
            RateLimit::SlidingWindow(
                SlidingWindow::with_precision(per_ms, ms, 60).expect("a valid window"),
            ),
            RateLimit::SlidingWindow(
                SlidingWindow::with_precision(1, Period::HOUR, 60).expect("a valid window"),
            ),
        ),
    ]
}

fn algorithms_core(c: &mut Criterion) {
    let mut g = c.benchmark_group("algorithms_core");
    g.throughput(Throughput::Elements(1));
    for (name, allow, deny) in algorithms() {
        g.bench_function(format!("{name}/allow"), |b| core_loop(b, allow));
        g.bench_function(format!("{name}/deny"), |b| core_loop(b, deny));
    }
    g.finish();
}

fn algorithms_engine(c: &mut Criterion) {
    let mut g = c.benchmark_group("algorithms_engine");
    g.throughput(Throughput::Elements(1));
    for (name, allow, deny) in algorithms() {
        for (path, limit) in [("allow", allow), ("deny", deny)] {
            g.bench_function(format!("{name}/{path}"), |b| {
                let clock = FakeClock::new(T0);
                let limiter = tollgate_limiter(&clock);
                limiter.upsert("api", limit).expect("a valid limit");
                engine_loop(b, &limiter, &clock, &[AcquireEntry::new("api", 1)]);
            });
        }
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// 3: atomic multi-key acquire.

fn acquire_keys(c: &mut Criterion) {
    let mut g = c.benchmark_group("acquire_keys");
    let names: Vec<String> = (0..10).map(|i| format!("limit-{i}")).collect();
    for n in [1usize, 3, 10] {
        // Elements = keys: criterion's throughput line then reads as keys per second.
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("{n}"), |b| {
            let clock = FakeClock::new(T0);
            let limiter = tollgate_limiter(&clock);
            for name in &names {
                limiter.upsert(name, gcra_allow()).expect("a valid limit");
            }
            let entries: Vec<_> = names[..n].iter().map(|k| AcquireEntry::new(k, 1)).collect();
            engine_loop(b, &limiter, &clock, &entries);
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = gcra_core, gcra_engine, gcra_keyed, algorithms_core, algorithms_engine, acquire_keys
}
criterion_main!(benches);
