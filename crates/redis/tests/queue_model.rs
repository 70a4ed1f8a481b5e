//! The run queue's executable specification (docs/design.md §3): random sequences of enqueues,
//! leases, worker calls, cancels, clock steps, task redefinitions (lease timeout, attempts,
//! policy, a dynamic key's parameters, a concurrency limit), limit changes (raise, lower,
//! algorithm change, delete, adaptive bounds) and adaptive limits' feedback (docs/design.md
//! §3.16) go to both engines — the embedded one and the Redis one — on one
//! fake clock. After every step each run must be in the same state on both (state, attempt,
//! what it waits on and until when, whether it failed, its lease expiry; after a clock step,
//! once the next call settled what fell due), every call must succeed or fail alike, and every
//! lease must hand out the same runs in the same order. Neither engine is the reference: the
//! rules are, and each engine must follow them as the other does. Times and periods fall on
//! whole microseconds, where the Redis scripts decide exactly as the core.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

mod common;

use std::time::Duration;

use proptest::prelude::*;
use serde_json::json;
use tollgate::{
    Engine, Error, FakeClock, Feedback, Limiter, MemoryStore, Namespace, PauseEnd, RunView, StartAt,
};
use tollgate_core::Nanos;
use tollgate_redis::{RedisEngine, RedisStore};

const T0: Nanos = Nanos::from_secs(1_700_000_000);

const TASKS: [&str; 8] = [
    "rate", "user", "conc", "skip", "both", "tmp", "multi", "fair",
];

/// Declared limits: "k" (named by tasks 0, 4 and 6) and "k2" (named by task 5 in some of its
/// definitions only, so it can be deleted while runs still name it).
const LIMITS: [&str; 2] = ["k", "k2"];

/// How many definitions [`limit_def`] has.
const LIMIT_DEFS: usize = 8;

/// The definitions a declared limit takes in turn: the first is the initial one; then a raise,
/// a lower one, algorithm changes, and adaptive ones (docs/design.md §3.16): 5 starts at its
/// max, 6 has other bounds, 7 has the bounds of 5 (so it keeps what 5 learnt) and a `limit`
/// that only says where a new one starts.
fn limit_def(variant: usize) -> serde_json::Value {
    match variant % LIMIT_DEFS {
        0 => json!({"algorithm": "gcra", "limit": 2, "period": "1s", "burst": 2}),
        1 => json!({"algorithm": "gcra", "limit": 100, "period": "1s", "burst": 100}),
        2 => json!({"algorithm": "gcra", "limit": 1, "period": "5s", "burst": 1}),
        3 => json!({"algorithm": "sliding_window", "limit": 3, "period": "2s"}),
        4 => json!({"algorithm": "fixed_window", "limit": 4, "period": "1s"}),
        5 => {
            json!({"algorithm": "gcra", "period": "1s", "burst": 2, "adaptive": {"min": 1, "max": 4}})
        }
        6 => {
            json!({"algorithm": "sliding_window", "period": "2s", "adaptive": {"min": 1, "max": 3}})
        }
        _ => json!({"algorithm": "gcra", "limit": 2, "period": "500ms", "burst": 1,
                    "adaptive": {"min": 1, "max": 4}}),
    }
}

/// Task `task`'s definition number `variant` (0: the initial one). Later ones change what a
/// run keeps from its enqueue (lease timeout, attempts, policy) or what applies to every run on
/// a key (a dynamic key's parameters, a concurrency limit).
fn task_def(task: usize, variant: usize) -> serde_json::Value {
    let v = variant % 3;
    match task {
        // The third definition spaces its retries (after a fail with retry, or a lapsed lease).
        0 => {
            let mut d = json!({"rate_limits": [{"static_key": "k", "units": 1}],
                    "lease_timeout": (["30s", "1s", "5s"][v]), "max_attempts": ([2, 1, 3][v])});
            if v == 2 {
                d["retry"] = json!({"backoff": "1s", "factor": 2, "max": "3s"});
            }
            d
        }
        1 => json!({"rate_limits": [{"dynamic_key": "input.user", "limit": ([3, 1, 10][v]),
                    "period": "1m", "algorithm": "sliding_window"}]}),
        2 => json!({"concurrency": [{"key": "'c'", "limit": ([2, 1, 4][v])}],
                    "lease_timeout": (["30s", "2s", "30s"][v])}),
        // The requeue variant also has Inngest's rate_limit: skipped at enqueue when over it,
        // waiting on its other limits when not.
        3 => {
            let mut d = json!({"on_limit": (["skip", "requeue", "skip"][v]), "rate_limits": [{"dynamic_key": "input.user",
                    "limit": ([1, 1, 2][v]), "period": "5s", "algorithm": "fixed_window"}]});
            if v == 1 {
                d["rate_limit"] =
                    json!({"limit": 2, "period": "4s", "burst": 2, "key": "input.user"});
            }
            d
        }
        4 => json!({"concurrency": [{"key": "'c'", "limit": ([2, 3, 1][v])}],
                    "rate_limits": [{"static_key": "k", "units": 1}], "lease_timeout": "30s"}),
        5 => [
            json!({"rate_limits": [{"static_key": "k2", "units": 1}], "max_attempts": 1}),
            json!({"rate_limit": "1/s"}),
            json!({"rate_limits": [{"static_key": "k2", "units": 2}]}),
        ][v]
            .clone(),
        // Priorities and fairness keys (docs/design.md §3.15) on a declared limit, a concurrency
        // key and a dynamic key.
        7 => [
            json!({"rate_limits": [{"static_key": "k", "units": 1}], "fairness_key": "input.user",
                   "priority": "input.user == 'u0' ? 4 : 2"}),
            json!({"concurrency": [{"key": "'c'", "limit": 1}], "fairness_key": "input.user",
                   "fairness_weight": "input.user == 'u1' ? 3 : 1", "lease_timeout": "30s"}),
            json!({"rate_limits": [{"dynamic_key": "'f'", "limit": 2, "period": "1s", "algorithm": "gcra"}],
                   "priority": 1, "fairness_key": "'t' + input.user"}),
        ][v]
            .clone(),
        _ => json!({"rate_limits": [{"static_key": "k", "units": 1},
                                    {"dynamic_key": "'m' + input.user", "limit": ([2, 5, 1][v]), "period": "1s", "algorithm": "gcra"}],
                    "concurrency": [{"key": "input.user", "limit": ([1, 2, 1][v])}],
                    "lease_timeout": (["30s", "3s", "30s"][v])}),
    }
}

#[derive(Debug, Clone)]
enum Op {
    Enqueue {
        task: usize,
        user: u8,
    },
    /// Enqueues a run at its own priority (docs/design.md §3.15).
    EnqueueUrgent {
        task: usize,
        user: u8,
        priority: u8,
    },
    /// Enqueues a run that starts no sooner than `delay_ms` from now (scheduled until then).
    EnqueueLater {
        task: usize,
        user: u8,
        delay_ms: u64,
    },
    Lease {
        task: usize,
        max: usize,
    },
    Complete(usize),
    Fail {
        run: usize,
        retry: bool,
    },
    /// Fails run `run` with a retry after `ms` (an upstream's Retry-After).
    FailAfter {
        run: usize,
        ms: u64,
    },
    Release(usize),
    Cancel(usize),
    Heartbeat(usize),
    Advance(u64),
    /// Redefines task `task` with its definition number `variant`.
    DefineTask {
        task: usize,
        variant: usize,
    },
    /// Redefines declared limit `LIMITS[limit]` with `limit_def(variant)`.
    PutLimit {
        limit: usize,
        variant: usize,
    },
    /// Deletes declared limit `LIMITS[limit]`.
    RemoveLimit {
        limit: usize,
    },
    /// Reports `ok` (or `throttled`) for declared limit `LIMITS[limit]` (refused alike when it
    /// does not adapt).
    Feedback {
        limit: usize,
        ok: bool,
    },
    /// Pauses a key for `ms` (docs/design.md §3.13): declared limit `LIMITS[key]`, or dynamic
    /// key `u<key>` (task 1's and 3's) or `mu<key>` (task 6's) when `dynamic`.
    Pause {
        key: usize,
        dynamic: bool,
        multi: bool,
        ms: u64,
    },
    /// Ends the pause `Pause` with the same fields set.
    Resume {
        key: usize,
        dynamic: bool,
        multi: bool,
    },
    /// Explains run `run` (docs/design.md §3.14): both engines must say the same.
    Explain(usize),
}

/// The namespace and key a `Pause` or `Resume` names.
fn paused_key(key: usize, dynamic: bool, multi: bool) -> (Namespace, String) {
    if dynamic {
        let prefix = if multi { "mu" } else { "u" };
        (Namespace::Dynamic, format!("{prefix}{}", key % 3))
    } else {
        (Namespace::Static, LIMITS[key % LIMITS.len()].to_owned())
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..TASKS.len(), 0u8..3).prop_map(|(task, user)| Op::Enqueue { task, user }),
        3 => (0..TASKS.len(), 0u8..3, 1u8..=4)
            .prop_map(|(task, user, priority)| Op::EnqueueUrgent { task, user, priority }),
        3 => (0..TASKS.len(), 0u8..3, prop_oneof![Just(0u64), Just(250), Just(1_000), Just(5_000)])
            .prop_map(|(task, user, delay_ms)| Op::EnqueueLater { task, user, delay_ms }),
        8 => (0..TASKS.len(), 1usize..4).prop_map(|(task, max)| Op::Lease { task, max }),
        4 => any::<usize>().prop_map(Op::Complete),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(run, retry)| Op::Fail { run, retry }),
        1 => (any::<usize>(), prop_oneof![Just(0u64), Just(500), Just(2_000)])
            .prop_map(|(run, ms)| Op::FailAfter { run, ms }),
        2 => any::<usize>().prop_map(Op::Release),
        2 => any::<usize>().prop_map(Op::Cancel),
        2 => any::<usize>().prop_map(Op::Heartbeat),
        6 => prop_oneof![Just(1u64), Just(250), Just(500), Just(1_000), Just(5_000), Just(31_000)]
            .prop_map(Op::Advance),
        2 => (0..TASKS.len(), 0usize..3).prop_map(|(task, variant)| Op::DefineTask { task, variant }),
        3 => (0..LIMITS.len(), 0usize..LIMIT_DEFS).prop_map(|(limit, variant)| Op::PutLimit { limit, variant }),
        4 => (0..LIMITS.len(), any::<bool>()).prop_map(|(limit, ok)| Op::Feedback { limit, ok }),
        1 => (0..LIMITS.len()).prop_map(|limit| Op::RemoveLimit { limit }),
        2 => (0usize..3, any::<bool>(), any::<bool>(), prop_oneof![Just(1u64), Just(700), Just(3_000), Just(40_000)])
            .prop_map(|(key, dynamic, multi, ms)| Op::Pause { key, dynamic, multi, ms }),
        1 => (0usize..3, any::<bool>(), any::<bool>())
            .prop_map(|(key, dynamic, multi)| Op::Resume { key, dynamic, multi }),
        2 => any::<usize>().prop_map(Op::Explain),
    ]
}

/// What must agree about a run.
type Shape = (
    String,
    u32,
    u32,
    Option<String>,
    Option<u64>,
    bool,
    Option<String>,
    Option<u64>,
    u8,
);

fn shape(v: &RunView) -> Shape {
    (
        v.state.as_str().to_owned(),
        v.attempt,
        v.max_attempts,
        v.waiting_on.clone(),
        v.eligible_at_ms,
        v.error.is_some(),
        v.skip_reason.clone(),
        v.lease_expires_at_ms,
        v.priority,
    )
}

/// The kind of an error, which both engines must agree on.
fn kind<T>(r: &Result<T, Error>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(Error::InvalidState { state, .. }) => format!("invalid_state:{state}"),
        Err(Error::UnknownRun { .. }) => "unknown_run".into(),
        Err(Error::LimitInUse { tasks, runs, .. }) => format!("limit_in_use:{tasks:?}:{runs}"),
        Err(Error::Spec(e)) => format!("spec:{}:{}", e.code, e.field),
        Err(Error::UnknownLimit { key }) => format!("unknown_limit:{key}"),
        Err(Error::NotAdaptive { key }) => format!("not_adaptive:{key}"),
        Err(e) => format!("other: {e}"),
    }
}

struct Pair {
    local: Engine,
    redis: RedisEngine,
    clock: FakeClock,
    /// Run ids by enqueue order: (embedded, redis).
    runs: Vec<(String, String)>,
    /// Every run leased, by enqueue order, in lease order.
    leased: Vec<usize>,
}

impl Pair {
    async fn define(&mut self) -> Result<(), TestCaseError> {
        for limit in 0..LIMITS.len() {
            self.step(&Op::PutLimit { limit, variant: 0 }).await?;
        }
        for task in 0..TASKS.len() {
            self.step(&Op::DefineTask { task, variant: 0 }).await?;
        }
        Ok(())
    }

    /// An explanation with run ids replaced by enqueue order, comparable across engines.
    fn comparable(&self, e: &tollgate::api::Explanation, redis: bool) -> String {
        let index = |id: &str| {
            self.runs
                .iter()
                .position(|(l, r)| if redis { r == id } else { l == id })
        };
        let mut v = serde_json::to_value(e).unwrap();
        v["run"] = json!(shape(&e.run));
        for (k, l) in e.limits.iter().enumerate() {
            let ahead: Vec<_> = l.ahead.iter().map(|id| index(id)).collect();
            v["limits"][k]["ahead"] = json!(ahead);
        }
        v.to_string()
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
                    .await;
                let b = self.redis.enqueue(TASKS[*task], input, json!({})).await;
                prop_assert_eq!(kind(&a), kind(&b), "enqueue {:?}", op);
                if let (Ok(a), Ok(b)) = (a, b) {
                    prop_assert_eq!(shape(&a), shape(&b), "enqueue {:?}", op);
                    self.runs.push((a.id, b.id));
                }
            }
            Op::EnqueueUrgent {
                task,
                user,
                priority,
            } => {
                let input = json!({"user": format!("u{user}")});
                let p = Some(*priority);
                let a = self
                    .local
                    .enqueue_with(TASKS[*task], input.clone(), json!({}), StartAt::Now, p)
                    .await;
                let b = self
                    .redis
                    .enqueue_with(TASKS[*task], input, json!({}), StartAt::Now, p)
                    .await;
                prop_assert_eq!(kind(&a), kind(&b), "enqueue {:?}", op);
                if let (Ok(a), Ok(b)) = (a, b) {
                    prop_assert_eq!(shape(&a), shape(&b), "enqueue {:?}", op);
                    self.runs.push((a.id, b.id));
                }
            }
            Op::EnqueueLater {
                task,
                user,
                delay_ms,
            } => {
                let input = json!({"user": format!("u{user}")});
                let start = StartAt::After(Nanos::from_millis(*delay_ms));
                let a = self
                    .local
                    .enqueue_at(TASKS[*task], input.clone(), json!({}), start)
                    .await;
                let b = self
                    .redis
                    .enqueue_at(TASKS[*task], input, json!({}), start)
                    .await;
                prop_assert_eq!(kind(&a), kind(&b), "enqueue {:?}", op);
                if let (Ok(a), Ok(b)) = (a, b) {
                    prop_assert_eq!(shape(&a), shape(&b), "enqueue {:?}", op);
                    self.runs.push((a.id, b.id));
                }
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
                prop_assert_eq!(&a, &b, "lease {:?}", op);
                self.leased.extend(a.iter().filter_map(|(i, _)| *i));
            }
            Op::Advance(ms) => self.clock.advance(Nanos::from_millis(*ms)),
            Op::DefineTask { task, variant } => {
                let spec = task_def(*task, *variant);
                let a = self
                    .local
                    .put_task(TASKS[*task], serde_json::from_value(spec.clone()).unwrap())
                    .await;
                let b = self
                    .redis
                    .put_task(TASKS[*task], serde_json::from_value(spec).unwrap())
                    .await;
                prop_assert_eq!(kind(&a), kind(&b), "{:?}", op);
            }
            Op::PutLimit { limit, variant } => {
                let spec = limit_def(*variant);
                let a = self
                    .local
                    .put_limit(
                        LIMITS[*limit],
                        serde_json::from_value(spec.clone()).unwrap(),
                    )
                    .await;
                let b = self
                    .redis
                    .put_limit(LIMITS[*limit], serde_json::from_value(spec).unwrap())
                    .await;
                prop_assert_eq!(kind(&a), kind(&b), "{:?}", op);
                prop_assert_eq!(a.ok(), b.ok(), "{:?}", op);
            }
            Op::Feedback { limit, ok } => {
                let f = if *ok {
                    Feedback::Ok
                } else {
                    Feedback::Throttled
                };
                let a = self.local.feedback(LIMITS[*limit], f).await;
                let b = self.redis.feedback(LIMITS[*limit], f).await;
                prop_assert_eq!(kind(&a), kind(&b), "{:?}", op);
                prop_assert_eq!(a.ok(), b.ok(), "{:?}", op);
            }
            Op::RemoveLimit { limit } => {
                let a = self.local.remove_limit(LIMITS[*limit]).await;
                let b = self.redis.remove_limit(LIMITS[*limit]).await;
                prop_assert_eq!(kind(&a), kind(&b), "{:?}", op);
                prop_assert_eq!(a.ok(), b.ok(), "{:?}", op);
            }
            Op::Pause {
                key,
                dynamic,
                multi,
                ms,
            } => {
                let (ns, key) = paused_key(*key, *dynamic, *multi);
                let end = PauseEnd::For(Nanos::from_millis(*ms));
                let a = self.local.pause(ns, &key, end).await;
                let b = self.redis.pause(ns, &key, end).await;
                prop_assert_eq!(kind(&a), kind(&b), "{:?}", op);
                prop_assert_eq!(a.ok(), b.ok(), "{:?}", op);
            }
            Op::Resume {
                key,
                dynamic,
                multi,
            } => {
                let (ns, key) = paused_key(*key, *dynamic, *multi);
                let a = self.local.resume(ns, &key).await;
                let b = self.redis.resume(ns, &key).await;
                prop_assert_eq!(kind(&a), kind(&b), "{:?}", op);
                prop_assert_eq!(a.ok(), b.ok(), "{:?}", op);
            }
            Op::Explain(i) => {
                let Some((l, r)) = self.run(*i).cloned() else {
                    return Ok(());
                };
                let a = self
                    .local
                    .explain(&l)
                    .await
                    .map(|e| self.comparable(&e, false));
                let b = self
                    .redis
                    .explain(&r)
                    .await
                    .map(|e| self.comparable(&e, true));
                prop_assert_eq!(kind(&a), kind(&b), "{:?}", op);
                if let (Ok(a), Ok(b)) = (a, b) {
                    prop_assert_eq!(a, b, "{:?}", op);
                }
            }
            Op::Complete(i)
            | Op::Fail { run: i, .. }
            | Op::FailAfter { run: i, .. }
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
                    Op::FailAfter { ms, .. } => {
                        let after = Some(Nanos::from_millis(*ms));
                        (
                            self.local
                                .fail_with(&l, None, "busy".into(), true, after)
                                .await,
                            self.redis
                                .fail_with(&r, None, "busy".into(), true, after)
                                .await,
                        )
                    }
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
            let b = self.redis.run(r).await.unwrap();
            prop_assert_eq!(shape(&a), shape(&b), "run #{} after {:?}", n, op);
        }
        // Every declared limit has the same definition on both: its limit (in force, for an
        // adaptive one) and its bounds.
        let (bounds_a, bounds_b) = (
            self.local.adaptive_limits(),
            self.redis.adaptive_limits().await.unwrap(),
        );
        prop_assert_eq!(&bounds_a, &bounds_b, "adaptive bounds after {:?}", op);
        for key in LIMITS {
            let a = self.local.limiter().get(key).unwrap().map(|i| i.limit);
            let b = self.redis.limits().get(key).await.unwrap().map(|i| i.limit);
            prop_assert_eq!(a, b, "limit {} after {:?}", key, op);
        }
        Ok(())
    }
}

/// Runs `ops` on a fresh pair of engines sharing one fake clock.
fn check(runtime: &tokio::runtime::Runtime, url: &str, ops: &[Op]) -> Result<(), TestCaseError> {
    run(runtime, url, ops).map(drop)
}

/// [`check`], answering the runs leased (by enqueue order) in lease order.
fn run(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    ops: &[Op],
) -> Result<Vec<usize>, TestCaseError> {
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
            leased: Vec::new(),
        };
        let result = async {
            pair.define().await?;
            for op in ops {
                pair.step(op).await?;
            }
            Ok::<(), TestCaseError>(())
        }
        .await;
        pair.redis.close().await;
        result.map(|()| pair.leased)
    })
}

/// The promises of docs/design.md §3.15 on fixed sequences, in both engines (every step is
/// compared as in the random search): weighted turns across fairness keys, strict priority, and
/// the bound on how long a lower priority waits.
#[test]
fn priorities_and_fairness_keys_keep_their_promises_in_both_engines() {
    let Some(redis) =
        common::redis("priorities_and_fairness_keys_keep_their_promises_in_both_engines")
    else {
        return;
    };
    let runtime = runtime();
    use Op::*;

    // Task 7, second definition: one slot ('c', limit 1), turns by user, u1 weighing 3. A u2
    // run holds the slot while 6 runs of u0 and 6 of u1 park; then each completion hands the
    // slot to the next in turn.
    let mut ops = vec![
        DefineTask {
            task: 7,
            variant: 1,
        },
        Enqueue { task: 7, user: 2 },
        Lease { task: 7, max: 1 },
    ];
    for _ in 0..6 {
        ops.push(Enqueue { task: 7, user: 0 });
        ops.push(Enqueue { task: 7, user: 1 });
    }
    ops.push(Lease { task: 7, max: 20 });
    let leased = run(&runtime, &redis.url, &ops).unwrap();
    assert_eq!(leased, [0], "the u2 run holds the slot, the others park");
    let mut order = Vec::new();
    let mut holder = 0;
    for _ in 0..8 {
        ops.push(Complete(holder));
        ops.push(Lease { task: 7, max: 1 });
        let leased = run(&runtime, &redis.url, &ops).unwrap();
        holder = *leased.last().unwrap();
        order.push(holder);
    }
    // Runs 1, 3, 5, … are u0's; 2, 4, 6, … u1's (enqueued alternately).
    let u1 = order.iter().filter(|i| *i % 2 == 0).count();
    assert_eq!(u1, 6, "u1 weighs 3: 6 of the first 8 turns, in {order:?}");

    // Task 2 ('c', 2 slots): two runs hold them; a priority-1 run parks, then 20 priority-4
    // runs. Strict priority serves the urgent ones first, but the tenth slot freed goes to the
    // oldest of the priorities' first runs: the priority-1 run.
    let mut ops = vec![
        Enqueue { task: 2, user: 0 },
        Enqueue { task: 2, user: 0 },
        Lease { task: 2, max: 2 },
        EnqueueUrgent {
            task: 2,
            user: 0,
            priority: 1,
        },
    ];
    for _ in 0..20 {
        ops.push(EnqueueUrgent {
            task: 2,
            user: 0,
            priority: 4,
        });
    }
    ops.push(Lease { task: 2, max: 30 });
    let mut order: Vec<usize> = Vec::new();
    let mut holders = vec![0, 1];
    for _ in 0..12 {
        let done = holders.remove(0);
        ops.push(Complete(done));
        ops.push(Lease { task: 2, max: 1 });
        let leased = run(&runtime, &redis.url, &ops).unwrap();
        let next = *leased.last().unwrap();
        holders.push(next);
        order.push(next);
    }
    // Run 2 is the priority-1 run; 3.. the urgent ones.
    assert_eq!(order.iter().position(|i| *i == 2), Some(9), "{order:?}");
    assert!(order[..9].iter().all(|i| *i >= 3), "{order:?}");
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
    // 256 cases per build (about 15 s); `PROPTEST_CASES=5000` for a deeper search.
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let config = ProptestConfig {
        cases,
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
        // A pause of a declared key whose state a redefinition left to convert: the Redis
        // engine checked the key exists by viewing it at instant 0, which read that state as
        // corrupt (only with the callers' clock, as tests use).
        vec![
            Enqueue { task: 5, user: 0 },
            PutLimit {
                limit: 1,
                variant: 1,
            },
            Lease { task: 5, max: 1 },
            Enqueue { task: 0, user: 0 },
            Enqueue { task: 0, user: 0 },
            PutLimit {
                limit: 1,
                variant: 0,
            },
            Pause {
                key: 1,
                dynamic: false,
                multi: false,
                ms: 1,
            },
        ],
        // Feedback that changes nothing (ok at max) settles nothing on either engine: the
        // embedded one once settled what was due first, Redis wrote nothing.
        vec![
            PutLimit {
                limit: 0,
                variant: 5,
            },
            EnqueueLater {
                task: 0,
                user: 0,
                delay_ms: 250,
            },
            Advance(250),
            Feedback { limit: 0, ok: true },
        ],
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
        // Two keys' timers due at the same instant, a static key's and a dynamic one's, with a
        // run naming both: the embedded engine woke the static key first, Redis (whose timers
        // are a sorted set, ordered by member at equal scores) the dynamic one, so the run was
        // admitted on one and parked on the other. Both now wake in Redis's order.
        vec![
            Enqueue { task: 6, user: 0 },
            Lease { task: 6, max: 1 },
            Enqueue { task: 0, user: 0 },
            Enqueue { task: 0, user: 0 },
            Fail {
                run: 17925269099535701433,
                retry: true,
            },
            Enqueue { task: 4, user: 0 },
            Enqueue { task: 4, user: 0 },
            Lease { task: 6, max: 1 },
            Lease { task: 4, max: 2 },
            Advance(500),
            Enqueue { task: 0, user: 0 },
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
