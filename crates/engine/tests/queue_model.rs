//! The admission queue under random operation sequences (enqueue, lease, heartbeat, complete,
//! fail, release, cancel, time passing, lease expiry), checked for its guarantees after every
//! step and for liveness at the end:
//! - concurrency: never more running runs per key than its limit;
//! - attempts never exceed `max_attempts`; an ended run never changes again;
//! - every waiting run says what it waits on, and no other run does;
//! - nothing is lost: once workers keep leasing and completing, every run ends (with
//!   priorities and fairness keys in play: no run starves).

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use proptest::prelude::*;
use serde_json::json;
use tollgate::{Engine, Limiter, MemoryStore, RunState, RunView, TokioClock};
use tollgate_core::Nanos;

#[derive(Debug, Clone)]
enum Op {
    Enqueue {
        task: usize,
        user: u8,
        acct: u8,
        weight: u8,
    },
    Lease {
        task: usize,
        max: usize,
    },
    Heartbeat(usize),
    Complete(usize),
    Fail {
        pick: usize,
        retry: bool,
    },
    Release(usize),
    Cancel(usize),
    Advance(u64),
}

const TASKS: [&str; 3] = ["a", "b", "c"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..3usize, 0..3u8, 0..2u8, 1..=3u8).prop_map(|(task, user, acct, weight)| Op::Enqueue { task, user, acct, weight }),
        4 => (0..3usize, 1..=4usize).prop_map(|(task, max)| Op::Lease { task, max }),
        1 => any::<usize>().prop_map(Op::Heartbeat),
        3 => any::<usize>().prop_map(Op::Complete),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(pick, retry)| Op::Fail { pick, retry }),
        1 => any::<usize>().prop_map(Op::Release),
        1 => any::<usize>().prop_map(Op::Cancel),
        3 => prop_oneof![Just(0u64), 1..=300u64, Just(1_000), Just(2_500)].prop_map(Op::Advance),
    ]
}

async fn setup() -> Engine {
    let e = Engine::in_memory(Limiter::with_store(
        MemoryStore::new(),
        TokioClock::new(Nanos::from_secs(1_700_000_000)),
    ));
    e.put_limit(
        "one",
        serde_json::from_value(json!({"algorithm": "gcra", "rate": "5/s", "burst": 2})).unwrap(),
    )
    .await
    .unwrap();
    let specs = [
        // Priorities and fairness keys (docs/design.md §3.15) change only the order: every
        // guarantee below must hold with them.
        json!({"rate_limits": [{"static_key": "one", "units": 1}],
               "concurrency": [{"key": "'acct-' + string(input.acct)", "limit": 2}],
               "fairness_key": "'u' + string(input.user)", "priority": "input.weight + 1",
               "max_attempts": 3, "lease_timeout": "2s"}),
        json!({"rate_limits": [{"dynamic_key": "'u' + string(input.user)", "units": "input.weight", "limit": 3, "period": "1s"}],
               "fairness_key": "string(input.acct)", "fairness_weight": "input.weight",
               "max_attempts": 2, "lease_timeout": "1s"}),
        json!({"rate_limits": [{"dynamic_key": "'s' + string(input.user)", "units": 1, "limit": 2, "period": "1s"}],
               "on_limit": "skip", "concurrency": [{"key": "'acct-' + string(input.acct)", "limit": 2}]}),
    ];
    for (name, spec) in TASKS.iter().zip(specs) {
        e.put_task(name, serde_json::from_value(spec).unwrap())
            .await
            .unwrap();
    }
    e
}

fn all_runs(e: &Engine) -> Vec<RunView> {
    e.runs(None, None, usize::MAX)
}

fn pick(runs: &[RunView], state: Option<RunState>, i: usize) -> Option<&RunView> {
    let matching: Vec<&RunView> = runs
        .iter()
        .filter(|r| state.is_none_or(|s| r.state == s))
        .collect();
    (!matching.is_empty()).then(|| matching[i % matching.len()])
}

/// The guarantees that must hold after every step. `ended` remembers every run seen in a final
/// state, which must never change.
fn check(e: &Engine, ended: &mut HashMap<String, RunView>) -> Result<(), TestCaseError> {
    let runs = all_runs(e);
    let mut running_per_acct: BTreeMap<String, u32> = BTreeMap::new();
    for r in &runs {
        prop_assert!(r.attempt <= r.max_attempts, "attempts beyond max: {r:?}");
        match r.state {
            RunState::Waiting => {
                prop_assert!(r.waiting_on.is_some(), "a waiting run must say why: {r:?}")
            }
            RunState::Scheduled => {
                prop_assert!(
                    r.waiting_on.is_none() && r.eligible_at_ms.is_some(),
                    "a scheduled run says when it is due, and waits on no key: {r:?}"
                );
            }
            RunState::Queued
            | RunState::Running
            | RunState::Succeeded
            | RunState::Failed
            | RunState::Cancelled => {
                prop_assert!(
                    r.waiting_on.is_none(),
                    "only waiting (or skipped) runs wait on a key: {r:?}"
                );
            }
            RunState::Skipped => {}
        }
        if r.state == RunState::Running && r.task != "b" {
            *running_per_acct
                .entry(r.input["acct"].to_string())
                .or_default() += 1;
        }
        if r.state.is_final() {
            if let Some(before) = ended.get(&r.id) {
                prop_assert_eq!(before.state, r.state, "an ended run changed: {:?}", r);
            } else {
                ended.insert(r.id.clone(), r.clone());
            }
        } else {
            prop_assert!(!ended.contains_key(&r.id), "an ended run came back: {r:?}");
        }
    }
    for (acct, n) in running_per_acct {
        prop_assert!(
            n <= 2,
            "{n} runs of account {acct} running with a concurrency limit of 2"
        );
    }
    Ok(())
}

async fn apply(e: &Engine, op: &Op) {
    let runs = all_runs(e);
    match op {
        Op::Enqueue {
            task,
            user,
            acct,
            weight,
        } => {
            let input = json!({"user": user, "acct": acct, "weight": weight});
            e.enqueue(TASKS[*task], input, json!({})).await.unwrap();
        }
        Op::Lease { task, max } => {
            e.lease("w", &[TASKS[*task].to_owned()], *max, Duration::ZERO)
                .await
                .unwrap();
        }
        Op::Heartbeat(i) => {
            if let Some(r) = pick(&runs, Some(RunState::Running), *i) {
                worker_call(e, r, e.heartbeat(&r.id, Some(r.attempt)).await);
            }
        }
        Op::Complete(i) => {
            if let Some(r) = pick(&runs, Some(RunState::Running), *i) {
                worker_call(e, r, e.complete(&r.id, Some(r.attempt), None).await);
            }
        }
        Op::Fail { pick: i, retry } => {
            if let Some(r) = pick(&runs, Some(RunState::Running), *i) {
                let result = e.fail(&r.id, Some(r.attempt), "boom".into(), *retry).await;
                worker_call(e, r, result);
            }
        }
        Op::Release(i) => {
            if let Some(r) = pick(&runs, Some(RunState::Running), *i) {
                worker_call(e, r, e.release(&r.id, Some(r.attempt)).await);
            }
        }
        Op::Cancel(i) => {
            if let Some(r) = pick(&runs, None, *i) {
                let result = e.cancel(&r.id).await;
                prop_assert_cancel(e, r, result.is_ok());
            }
        }
        Op::Advance(ms) => tokio::time::sleep(Duration::from_millis(*ms)).await,
    }
}

/// Whether running run `seen`'s lease lapsed before the call that followed: every call first
/// settles what is due, so that call found it requeued (or failed, on its last attempt).
fn lapsed_meanwhile(e: &Engine, seen: &RunView) -> bool {
    let now = e.run(&seen.id).unwrap();
    seen.state == RunState::Running
        && (now.state != RunState::Running || now.attempt != seen.attempt)
        && now.error.is_some_and(|m| m.contains("lease expired"))
}

/// A worker call on a run seen running succeeds, unless its lease lapsed meanwhile.
fn worker_call(e: &Engine, seen: &RunView, result: Result<RunView, tollgate::Error>) {
    match result {
        Ok(_) => {}
        Err(tollgate::Error::InvalidState { .. }) if lapsed_meanwhile(e, seen) => {}
        Err(err) => panic!("a worker call on {seen:?} failed: {err}"),
    }
}

fn prop_assert_cancel(e: &Engine, run: &RunView, ok: bool) {
    // A run seen running whose lease lapsed on its last attempt has failed meanwhile.
    let ended_meanwhile =
        !ok && lapsed_meanwhile(e, run) && e.run(&run.id).unwrap().state.is_final();
    assert!(
        ok != run.state.is_final() || ended_meanwhile,
        "cancel succeeds exactly for runs that have not ended: {run:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn the_queue_keeps_its_guarantees_and_every_run_ends(ops in proptest::collection::vec(op(), 1..120)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async {
            let e = setup().await;
            let mut ended = HashMap::new();
            for op in &ops {
                apply(&e, op).await;
                check(&e, &mut ended)?;
            }
            // Liveness: workers that keep leasing and completing finish every run.
            let tasks: Vec<String> = TASKS.iter().map(|t| (*t).to_owned()).collect();
            for _ in 0..200 {
                if all_runs(&e).iter().all(|r| r.state.is_final()) {
                    break;
                }
                for r in e.lease("drain", &tasks, 100, Duration::ZERO).await.unwrap() {
                    e.complete(&r.id, Some(r.attempt), None).await.unwrap();
                }
                check(&e, &mut ended)?;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            let stuck: Vec<RunView> = all_runs(&e).into_iter().filter(|r| !r.state.is_final()).collect();
            prop_assert!(stuck.is_empty(), "runs never finished: {stuck:#?}");
            Ok(())
        })?;
    }
}
