//! The Redis run queue against the embedded one: random sequences of enqueues, leases, worker
//! calls, cancels and clock steps go to both engines on one fake clock, and after every step
//! each run must be in the same state on both (state, attempt, what it waits on and until
//! when, whether it failed; after a clock step, once the next call settled what fell due),
//! every call must succeed or fail alike, and every lease must hand out the same runs in the
//! same order. The embedded engine is the reference; times and periods fall on whole
//! microseconds, where the Redis scripts decide exactly as the core.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

mod common;

use std::time::Duration;

use proptest::prelude::*;
use serde_json::json;
use tollgate::{Engine, Error, FakeClock, Limiter, MemoryStore, RunView};
use tollgate_core::Nanos;
use tollgate_redis::{RedisEngine, RedisStore};

const T0: Nanos = Nanos::from_secs(1_700_000_000);

const TASKS: [&str; 5] = ["rate", "user", "conc", "skip", "both"];

#[derive(Debug, Clone)]
enum Op {
    Enqueue { task: usize, user: u8 },
    Lease { task: usize, max: usize },
    Complete(usize),
    Fail { run: usize, retry: bool },
    Release(usize),
    Cancel(usize),
    Heartbeat(usize),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..TASKS.len(), 0u8..3).prop_map(|(task, user)| Op::Enqueue { task, user }),
        4 => (0..TASKS.len(), 1usize..4).prop_map(|(task, max)| Op::Lease { task, max }),
        2 => any::<usize>().prop_map(Op::Complete),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(run, retry)| Op::Fail { run, retry }),
        1 => any::<usize>().prop_map(Op::Release),
        1 => any::<usize>().prop_map(Op::Cancel),
        1 => any::<usize>().prop_map(Op::Heartbeat),
        3 => prop_oneof![Just(1u64), Just(250), Just(500), Just(1_000), Just(5_000), Just(31_000)]
            .prop_map(Op::Advance),
    ]
}

/// What must agree about a run.
fn shape(
    v: &RunView,
) -> (
    String,
    u32,
    Option<String>,
    Option<u64>,
    bool,
    Option<String>,
) {
    (
        v.state.as_str().to_owned(),
        v.attempt,
        v.waiting_on.clone(),
        v.eligible_at_ms,
        v.error.is_some(),
        v.skip_reason.clone(),
    )
}

/// The kind of an error, which both engines must agree on.
fn kind(r: &Result<RunView, Error>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(Error::InvalidState { state, .. }) => format!("invalid_state:{state}"),
        Err(Error::UnknownRun { .. }) => "unknown_run".into(),
        Err(e) => format!("other: {e}"),
    }
}

struct Pair {
    local: Engine,
    redis: RedisEngine,
    clock: FakeClock,
    /// Run ids by enqueue order: (embedded, redis).
    runs: Vec<(String, String)>,
}

impl Pair {
    async fn define(&self) {
        let limit = serde_json::from_value(
            json!({"algorithm": "gcra", "limit": 2, "period": "1s", "burst": 2}),
        )
        .unwrap();
        self.local.put_limit("k", limit).await.unwrap();
        let limit = serde_json::from_value(
            json!({"algorithm": "gcra", "limit": 2, "period": "1s", "burst": 2}),
        )
        .unwrap();
        self.redis.put_limit("k", limit).await.unwrap();
        let specs = [
            json!({"rate_limits": [{"static_key": "k", "units": 1}], "lease_timeout": "30s", "max_attempts": 2}),
            json!({"rate_limits": [{"dynamic_key": "input.user", "limit": 3, "period": "1m", "algorithm": "sliding_window"}]}),
            json!({"concurrency": [{"key": "'c'", "limit": 2}], "lease_timeout": "30s"}),
            json!({"on_limit": "skip", "rate_limits": [{"dynamic_key": "input.user", "limit": 1, "period": "5s", "algorithm": "fixed_window"}]}),
            json!({"concurrency": [{"key": "'c'", "limit": 2}], "rate_limits": [{"static_key": "k", "units": 1}], "lease_timeout": "30s"}),
        ];
        for (name, spec) in TASKS.iter().zip(specs) {
            self.local
                .put_task(name, serde_json::from_value(spec.clone()).unwrap())
                .await
                .unwrap();
            self.redis
                .put_task(name, serde_json::from_value(spec).unwrap())
                .await
                .unwrap();
        }
    }

    fn run(&self, i: usize) -> Option<&(String, String)> {
        if self.runs.is_empty() {
            None
        } else {
            self.runs.get(i % self.runs.len())
        }
    }

    async fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Enqueue { task, user } => {
                let input = json!({"user": format!("u{user}")});
                let a = self
                    .local
                    .enqueue(TASKS[*task], input.clone(), json!({}))
                    .await
                    .unwrap();
                let b = self
                    .redis
                    .enqueue(TASKS[*task], input, json!({}))
                    .await
                    .unwrap();
                prop_assert_eq!(shape(&a), shape(&b), "enqueue {:?}", op);
                self.runs.push((a.id, b.id));
            }
            Op::Lease { task, max } => {
                let tasks = [TASKS[*task].to_owned()];
                let a = self
                    .local
                    .lease("w", &tasks, *max, Duration::ZERO)
                    .await
                    .unwrap();
                let b = self
                    .redis
                    .lease("w", &tasks, *max, Duration::ZERO)
                    .await
                    .unwrap();
                let index = |id: &str, redis: bool| {
                    self.runs
                        .iter()
                        .position(|(l, r)| if redis { r == id } else { l == id })
                };
                let a: Vec<_> = a.iter().map(|r| (index(&r.id, false), r.attempt)).collect();
                let b: Vec<_> = b.iter().map(|r| (index(&r.id, true), r.attempt)).collect();
                prop_assert_eq!(a, b, "lease {:?}", op);
            }
            Op::Advance(ms) => self.clock.advance(Nanos::from_millis(*ms)),
            Op::Complete(i)
            | Op::Fail { run: i, .. }
            | Op::Release(i)
            | Op::Cancel(i)
            | Op::Heartbeat(i) => {
                let Some((l, r)) = self.run(*i).cloned() else {
                    return Ok(());
                };
                let (a, b) = match op {
                    Op::Complete(_) => (
                        self.local.complete(&l, None, None).await,
                        self.redis.complete(&r, None, None).await,
                    ),
                    Op::Fail { retry, .. } => (
                        self.local.fail(&l, None, "boom".into(), *retry).await,
                        self.redis.fail(&r, None, "boom".into(), *retry).await,
                    ),
                    Op::Release(_) => (
                        self.local.release(&l, None).await,
                        self.redis.release(&r, None).await,
                    ),
                    Op::Cancel(_) => (self.local.cancel(&l).await, self.redis.cancel(&r).await),
                    _ => (
                        self.local.heartbeat(&l, None).await,
                        self.redis.heartbeat(&r, None).await,
                    ),
                };
                prop_assert_eq!(kind(&a), kind(&b), "{:?}", op);
            }
        }
        // Every run agrees after every step but a clock step: reads settle nothing, so what
        // fell due shows once a background timer got to it or the next call settles it, and
        // the next call settles the same things at the same instant on both.
        if matches!(op, Op::Advance(_)) {
            return Ok(());
        }
        for (n, (l, r)) in self.runs.iter().enumerate() {
            let a = self.local.run(l).unwrap();
            let b = self.redis.run(r).unwrap();
            prop_assert_eq!(shape(&a), shape(&b), "run #{} after {:?}", n, op);
        }
        Ok(())
    }
}

/// Runs `ops` on a fresh pair of engines sharing one fake clock.
fn check(runtime: &tokio::runtime::Runtime, url: &str, ops: &[Op]) -> Result<(), TestCaseError> {
    runtime.block_on(async {
        let clock = FakeClock::new(T0);
        let store = RedisStore::builder(url)
            .prefix(common::fresh_prefix())
            .use_server_time(false)
            .build()
            .unwrap();
        let mut pair = Pair {
            local: Engine::in_memory(Limiter::with_store(MemoryStore::new(), clock.clone())),
            redis: RedisEngine::new(store, clock.clone()),
            clock,
            runs: Vec::new(),
        };
        pair.define().await;
        let result = async {
            for op in ops {
                pair.step(op).await?;
            }
            Ok::<(), TestCaseError>(())
        }
        .await;
        pair.redis.close().await;
        result
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_redis_queue_decides_every_step_as_the_embedded_one() {
    let Some(redis) = common::redis("the_redis_queue_decides_every_step_as_the_embedded_one")
    else {
        return;
    };
    let runtime = runtime();
    // 64 cases per build; `PROPTEST_CASES=5000` for a deeper search.
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in proptest::collection::vec(op(), 1..60))| {
        check(&runtime, &redis.url, &ops)?;
    });
}

/// Cases the random search once found, kept so they run on every build.
#[test]
fn the_redis_queue_agrees_on_the_cases_found_before() {
    let Some(redis) = common::redis("the_redis_queue_agrees_on_the_cases_found_before") else {
        return;
    };
    let runtime = runtime();
    use Op::*;
    let cases: Vec<Vec<Op>> = vec![
        // A parked head cancelled once its key had room again: the run behind it must take
        // its turn at once on both (the embedded engine once left it to the next tick).
        vec![
            Enqueue { task: 0, user: 0 },
            Enqueue { task: 1, user: 0 },
            Enqueue { task: 0, user: 0 },
            Enqueue { task: 1, user: 0 },
            Lease { task: 0, max: 1 },
            Enqueue { task: 3, user: 0 },
            Lease { task: 1, max: 1 },
            Advance(31_000),
            Cancel(1),
            Lease { task: 1, max: 3 },
        ],
        // A worker's complete after its lease lapsed but before any sweep: requeued on both
        // (the Redis script once completed it when its sweeper had not run yet).
        vec![
            Enqueue { task: 4, user: 0 },
            Lease { task: 4, max: 2 },
            Advance(31_000),
            Complete(0),
            Cancel(0),
        ],
    ];
    for (n, ops) in cases.iter().enumerate() {
        if let Err(e) = check(&runtime, &redis.url, ops) {
            panic!("case {n}: {e}");
        }
    }
}
