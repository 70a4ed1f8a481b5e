//! The task-run admission queue through the `Engine` API, on tokio's paused clock (which
//! `TokioClock` follows), so timers fire at exact virtual instants and nothing sleeps for real.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use std::time::Duration;

use serde_json::{Value, json};
use tollgate::{Engine, Error, FakeClock, Limiter, MemoryStore, RunState, TokioClock};
use tollgate_core::Nanos;

const T0: Nanos = Nanos::from_secs(1_700_000_000);

fn engine() -> Engine {
    Engine::in_memory(Limiter::with_store(MemoryStore::new(), TokioClock::new(T0)))
}

async fn limit(e: &Engine, key: &str, spec: Value) {
    e.put_limit(key, serde_json::from_value(spec).unwrap())
        .await
        .unwrap();
}

async fn task(e: &Engine, name: &str, spec: Value) {
    e.put_task(name, serde_json::from_value(spec).unwrap())
        .await
        .unwrap();
}

async fn enqueue(e: &Engine, task: &str, input: Value) -> String {
    e.enqueue(task, input, json!({})).await.unwrap().id
}

async fn lease(e: &Engine, task: &str, max: usize) -> Vec<String> {
    e.lease("w1", &[task.to_owned()], max, Duration::ZERO)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect()
}

fn state(e: &Engine, id: &str) -> RunState {
    e.run(id).unwrap().state
}

/// Enqueues `n` runs of `task` with the same input; their ids in enqueue order.
async fn enqueue_n(e: &Engine, task: &str, n: usize, input: Value) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(enqueue(e, task, input.clone()).await);
    }
    ids
}

/// `api` (gcra 10/s, burst 5) used by tasks `small` (1 unit) and `big` (5 units), with one
/// small run already leased: 4 units are left.
async fn small_and_big_on_one_key() -> Engine {
    let e = engine();
    limit(
        &e,
        "api",
        json!({"algorithm": "gcra", "rate": "10/s", "burst": 5}),
    )
    .await;
    task(
        &e,
        "small",
        json!({"rate_limits": [{"static_key": "api", "units": 1}]}),
    )
    .await;
    task(
        &e,
        "big",
        json!({"rate_limits": [{"static_key": "api", "units": 5}]}),
    )
    .await;
    let first = enqueue(&e, "small", json!({})).await;
    assert_eq!(lease(&e, "small", 1).await, [first]);
    e
}

#[tokio::test(start_paused = true)]
async fn static_limit_of_two_per_second_parks_the_rest_with_an_exact_eligible_at() {
    let e = engine();
    limit(
        &e,
        "test-limit",
        json!({"algorithm": "gcra", "rate": "2/s", "burst": 2}),
    )
    .await;
    task(
        &e,
        "t",
        json!({"rate_limits": [{"static_key": "test-limit", "units": 1}]}),
    )
    .await;
    let ids: Vec<String> = enqueue_n(&e, "t", 5, json!({})).await;
    let leased = lease(&e, "t", 10).await;
    assert_eq!(leased, ids[..2], "two admitted, in enqueue order");
    let third = e.run(&ids[2]).unwrap();
    assert_eq!(third.state, RunState::Waiting);
    assert_eq!(third.waiting_on.as_deref(), Some("test-limit"));
    // gcra 2/s burst 2: the third unit fits 500 ms after the first two.
    assert_eq!(third.eligible_at_ms, Some(T0.as_millis_floor() + 500));
    // A long-poll returns it at that instant, and the fourth 500 ms later.
    let start = tokio::time::Instant::now();
    let got = e
        .lease("w1", &["t".into()], 10, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        [ids[2].clone()]
    );
    assert_eq!(start.elapsed(), Duration::from_millis(500));
    let got = e
        .lease("w1", &["t".into()], 10, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(got[0].id, ids[3]);
    assert_eq!(start.elapsed(), Duration::from_millis(1_000));
}

#[tokio::test(start_paused = true)]
async fn a_busy_users_parked_runs_never_delay_another_users_runs() {
    let e = engine();
    task(
        &e,
        "sync",
        json!({"rate_limits": [{"dynamic_key": "input.user_id", "units": 1, "limit": 10, "period": "MINUTE"}]}),
    )
    .await;
    let mut a = Vec::new();
    for _ in 0..30 {
        a.push(enqueue(&e, "sync", json!({"user_id": "a"})).await);
    }
    let mut b = Vec::new();
    for _ in 0..5 {
        b.push(enqueue(&e, "sync", json!({"user_id": "b"})).await);
    }
    let leased = lease(&e, "sync", 100).await;
    assert_eq!(leased.len(), 15, "10 of a and all 5 of b");
    for id in &b {
        assert!(leased.contains(id), "b's runs are not delayed");
    }
    let waiting = e.runs(Some("sync"), Some(RunState::Waiting), 100);
    assert_eq!(waiting.len(), 20);
    assert!(
        waiting
            .iter()
            .all(|r| r.waiting_on.as_deref() == Some("a") && r.attempt == 0)
    );
}

#[tokio::test(start_paused = true)]
async fn only_the_head_of_a_keys_queue_wakes_and_a_big_run_is_not_starved() {
    let e = small_and_big_on_one_key().await;
    // 4 units left: the 5-unit run parks; small runs arriving later queue behind it.
    let big = enqueue(&e, "big", json!({})).await;
    assert!(lease(&e, "big", 1).await.is_empty());
    assert_eq!(state(&e, &big), RunState::Waiting);
    let smalls = enqueue_n(&e, "small", 3, json!({})).await;
    assert!(
        lease(&e, "small", 3).await.is_empty(),
        "small runs do not overtake the parked big one"
    );
    for id in &smalls {
        assert_eq!(e.run(id).unwrap().waiting_on.as_deref(), Some("api"));
    }
    // At the big run's eligible_at it gets its 5 units; the small ones follow one per 100 ms.
    let got = e
        .lease(
            "w1",
            &["big".into(), "small".into()],
            10,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(got.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), [big]);
    let start = tokio::time::Instant::now();
    let mut order = Vec::new();
    while order.len() < 3 {
        for r in e
            .lease("w1", &["small".into()], 10, Duration::from_secs(5))
            .await
            .unwrap()
        {
            order.push((r.id, start.elapsed()));
        }
    }
    assert_eq!(
        order.iter().map(|o| o.0.clone()).collect::<Vec<_>>(),
        smalls,
        "FIFO per key"
    );
    assert_eq!(order[0].1, Duration::from_millis(100));
    assert_eq!(
        order[2].1,
        Duration::from_millis(300),
        "one at a time, never together"
    );
}

#[tokio::test(start_paused = true)]
async fn skip_policy_stores_over_limit_runs_as_skipped_with_the_key() {
    let e = engine();
    task(
        &e,
        "company-sync",
        json!({
            "rate_limits": [{"dynamic_key": "event.data.company_id", "units": 1, "limit": 1, "period": "4h"}],
            "on_limit": "skip",
            "triggers": ["intercom/company.updated"]
        }),
    )
    .await;
    let first = e
        .emit(
            "intercom/company.updated",
            json!({"company_id": "c1"}),
            json!({}),
        )
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].state, RunState::Queued);
    for _ in 0..3 {
        let later = e
            .emit(
                "intercom/company.updated",
                json!({"company_id": "c1"}),
                json!({}),
            )
            .await
            .unwrap();
        assert_eq!(later[0].state, RunState::Skipped);
        assert_eq!(later[0].skip_reason.as_deref(), Some("rate_limited"));
        assert_eq!(later[0].waiting_on.as_deref(), Some("c1"));
    }
    let other = e
        .emit(
            "intercom/company.updated",
            json!({"company_id": "c2"}),
            json!({}),
        )
        .await
        .unwrap();
    assert_eq!(
        other[0].state,
        RunState::Queued,
        "another company is not limited"
    );
    assert_eq!(
        e.runs(Some("company-sync"), Some(RunState::Skipped), 10)
            .len(),
        3,
        "skipped runs are stored"
    );
    assert_eq!(lease(&e, "company-sync", 10).await.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn idempotency_skips_duplicates_within_the_period() {
    let e = engine();
    task(
        &e,
        "t",
        json!({"idempotency": {"key": "input.id", "period": "1h"}}),
    )
    .await;
    assert_eq!(
        e.enqueue("t", json!({"id": 7}), json!({}))
            .await
            .unwrap()
            .state,
        RunState::Queued
    );
    let dup = e.enqueue("t", json!({"id": 7}), json!({})).await.unwrap();
    assert_eq!(
        (dup.state, dup.skip_reason.as_deref()),
        (RunState::Skipped, Some("duplicate"))
    );
    tokio::time::sleep(Duration::from_secs(3_600)).await;
    assert_eq!(
        e.enqueue("t", json!({"id": 7}), json!({}))
            .await
            .unwrap()
            .state,
        RunState::Queued
    );
}

#[tokio::test(start_paused = true)]
async fn concurrency_slots_are_held_while_running_and_handed_to_the_next_in_line() {
    let e = engine();
    task(
        &e,
        "t",
        json!({"concurrency": [{"key": "input.account", "limit": 2}]}),
    )
    .await;
    let ids = enqueue_n(&e, "t", 4, json!({"account": "x"})).await;
    assert_eq!(lease(&e, "t", 10).await, ids[..2]);
    assert_eq!(e.run(&ids[2]).unwrap().waiting_on.as_deref(), Some("x"));
    e.complete(&ids[0], Some(1), Some(json!({"ok": true})))
        .await
        .unwrap();
    assert_eq!(
        lease(&e, "t", 10).await,
        [ids[2].clone()],
        "the freed slot goes to the head"
    );
    assert_eq!(state(&e, &ids[3]), RunState::Waiting);
}

#[tokio::test(start_paused = true)]
async fn an_expired_lease_requeues_the_run_as_the_next_attempt_and_frees_its_slot() {
    let e = engine();
    task(
        &e,
        "t",
        json!({"lease_timeout": "1s", "concurrency": [{"key": "'k'", "limit": 1}]}),
    )
    .await;
    let id = enqueue(&e, "t", json!({})).await;
    let other = enqueue(&e, "t", json!({})).await;
    assert_eq!(lease(&e, "t", 10).await, std::slice::from_ref(&id));
    tokio::time::sleep(Duration::from_millis(900)).await;
    e.heartbeat(&id, Some(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        state(&e, &id),
        RunState::Running,
        "the heartbeat extended the lease"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(state(&e, &id), RunState::Queued, "expired");
    // The freed slot goes to the run that was waiting for it; the expired run queues behind.
    let next = e
        .lease("w2", &["t".into()], 10, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!((next[0].id.clone(), next[0].attempt), (other.clone(), 1));
    assert_eq!(state(&e, &id), RunState::Waiting);
    e.complete(&other, Some(1), None).await.unwrap();
    let next = e
        .lease("w2", &["t".into()], 10, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        (next[0].id.clone(), next[0].attempt),
        (id.clone(), 2),
        "the next lease is attempt 2"
    );
    // The stale worker cannot complete the new attempt.
    let stale = e.complete(&id, Some(1), None).await.unwrap_err();
    assert!(matches!(stale, Error::InvalidState { .. }), "{stale}");
}

/// On a fake clock and a one-thread runtime the timer task cannot run between the clock step
/// and the call, so only the call itself can find the lapsed lease.
#[tokio::test]
async fn a_worker_call_after_its_lease_lapsed_finds_the_run_requeued() {
    let clock = FakeClock::new(T0);
    let e = Engine::in_memory(Limiter::with_store(MemoryStore::new(), clock.clone()));
    task(&e, "t", json!({"lease_timeout": "30s", "max_attempts": 3})).await;
    let ids = enqueue_n(&e, "t", 2, json!({})).await;
    assert_eq!(lease(&e, "t", 2).await, ids);
    clock.advance(Nanos::from_millis(29_999));
    e.heartbeat(&ids[1], Some(1))
        .await
        .expect("a millisecond before the lease lapses the heartbeat holds");
    clock.advance(Nanos::from_millis(1));
    for call in ["complete", "heartbeat", "fail", "release"] {
        let err = match call {
            "complete" => e.complete(&ids[0], Some(1), None).await,
            "heartbeat" => e.heartbeat(&ids[0], Some(1)).await,
            "fail" => e.fail(&ids[0], Some(1), "late".into(), true).await,
            _ => e.release(&ids[0], Some(1)).await,
        }
        .expect_err(call);
        assert!(
            matches!(
                err,
                Error::InvalidState {
                    state: "queued",
                    ..
                }
            ),
            "{call}: {err}"
        );
    }
    let run = e.run(&ids[0]).unwrap();
    assert_eq!((run.state, run.attempt), (RunState::Queued, 1));
    assert!(run.error.unwrap().contains("lease expired"));
    assert_eq!(
        state(&e, &ids[1]),
        RunState::Running,
        "its lease was extended"
    );
}

#[tokio::test(start_paused = true)]
async fn failures_retry_until_max_attempts_then_fail() {
    let e = engine();
    task(&e, "t", json!({"max_attempts": 2})).await;
    let id = enqueue(&e, "t", json!({})).await;
    lease(&e, "t", 1).await;
    let r = e.fail(&id, None, "boom".into(), true).await.unwrap();
    assert_eq!((r.state, r.attempt), (RunState::Queued, 1));
    lease(&e, "t", 1).await;
    let r = e.fail(&id, None, "boom again".into(), true).await.unwrap();
    assert_eq!(
        (r.state, r.error.as_deref()),
        (RunState::Failed, Some("boom again"))
    );
}

#[tokio::test(start_paused = true)]
async fn release_hands_back_without_counting_an_attempt_and_refunds_units() {
    let e = engine();
    limit(&e, "one", json!({"rate": "1/h"})).await;
    task(
        &e,
        "t",
        json!({"rate_limits": [{"static_key": "one", "units": 1}]}),
    )
    .await;
    let id = enqueue(&e, "t", json!({})).await;
    assert_eq!(lease(&e, "t", 1).await, std::slice::from_ref(&id));
    let r = e.release(&id, Some(1)).await.unwrap();
    assert_eq!((r.state, r.attempt), (RunState::Queued, 0));
    let again = e
        .lease("w2", &["t".into()], 1, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        again[0].attempt, 1,
        "the unit came back, so it leases again at once"
    );
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_parked_head_passes_the_timer_to_the_next() {
    let e = engine();
    limit(&e, "one", json!({"algorithm": "gcra", "rate": "1/s"})).await;
    task(
        &e,
        "t",
        json!({"rate_limits": [{"static_key": "one", "units": 1}]}),
    )
    .await;
    let ids = enqueue_n(&e, "t", 3, json!({})).await;
    assert_eq!(lease(&e, "t", 10).await, [ids[0].clone()]);
    e.cancel(&ids[1]).await.unwrap();
    let got = e
        .lease("w1", &["t".into()], 10, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(got[0].id, ids[2]);
    assert_eq!(state(&e, &ids[1]), RunState::Cancelled);
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_parked_head_lets_the_runs_behind_it_through_at_once() {
    let e = small_and_big_on_one_key().await;
    // 4 units left: the 5-unit head parks and two 1-unit runs queue behind it.
    let big = enqueue(&e, "big", json!({})).await;
    assert!(lease(&e, "big", 1).await.is_empty());
    let smalls = enqueue_n(&e, "small", 2, json!({})).await;
    assert!(lease(&e, "small", 2).await.is_empty());
    e.cancel(&big).await.unwrap();
    // Before any timer could fire (no time has passed), the next runs have their turn.
    for id in &smalls {
        assert_eq!(
            state(&e, id),
            RunState::Queued,
            "visible as soon as cancel answers"
        );
    }
    assert_eq!(lease(&e, "small", 2).await, smalls);
}

#[tokio::test(start_paused = true)]
async fn a_failing_expression_rejects_the_run_instead_of_running_it_unlimited() {
    let e = engine();
    task(
        &e,
        "t",
        json!({"rate_limits": [{"dynamic_key": "input.user_id", "units": 1, "limit": 10, "period": "1m"}]}),
    )
    .await;
    let err = e
        .enqueue("t", json!({"no_user": 1}), json!({}))
        .await
        .unwrap_err();
    match err {
        Error::Expression {
            field, source_text, ..
        } => {
            assert_eq!(field, "rate_limits[0].dynamic_key");
            assert_eq!(source_text, "input.user_id");
        }
        other => panic!("{other}"),
    }
    assert!(e.runs(Some("t"), None, 10).is_empty(), "nothing was stored");
}

#[tokio::test(start_paused = true)]
async fn units_beyond_capacity_fail_the_run_at_once_with_the_reason() {
    let e = engine();
    task(
        &e,
        "t",
        json!({"rate_limits": [{"dynamic_key": "input.user", "units": "input.weight", "limit": 5, "period": "1m"}]}),
    )
    .await;
    let r = e
        .enqueue("t", json!({"user": "u", "weight": 6}), json!({}))
        .await
        .unwrap();
    assert_eq!(r.state, RunState::Failed);
    assert!(
        r.error
            .as_deref()
            .unwrap_or_default()
            .contains("insufficient_capacity"),
        "{:?}",
        r.error
    );
}

#[tokio::test(start_paused = true)]
async fn a_lease_long_poll_returns_as_soon_as_a_run_is_enqueued() {
    let e = engine();
    task(&e, "t", json!({})).await;
    let poller = {
        let e = e.clone();
        tokio::spawn(async move {
            e.lease("w1", &["t".into()], 5, Duration::from_secs(30))
                .await
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start = tokio::time::Instant::now();
    let id = enqueue(&e, "t", json!({})).await;
    let got = poller.await.unwrap().unwrap();
    assert_eq!(got[0].id, id);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

// A server shutting down must answer its long-polls at once, without dropping a lease call
// mid-commit (which would leave runs leased to nobody until their lease expires).
#[tokio::test(start_paused = true)]
async fn lease_until_ends_the_wait_when_told_and_takes_nothing_after() {
    let e = engine();
    task(&e, "t", json!({})).await;
    let start = tokio::time::Instant::now();
    let got = e
        .lease_until(
            "w1",
            &["t".into()],
            5,
            Duration::from_secs(30),
            tokio::time::sleep(Duration::from_secs(2)),
        )
        .await
        .unwrap();
    assert!(got.is_empty());
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(2),
        "stopped, not timed out"
    );
    let id = enqueue(&e, "t", json!({})).await;
    assert_eq!(
        state(&e, &id),
        RunState::Queued,
        "the stopped call leased nothing"
    );
    // A run already there is still leased: `stop` only cuts the wait.
    let got = e
        .lease_until("w1", &["t".into()], 5, Duration::from_secs(30), async {})
        .await
        .unwrap();
    assert_eq!(got[0].id, id);
}

// The message used to read `expression "input.user_id" failed: failed: No such key`.
#[tokio::test(start_paused = true)]
async fn an_expression_error_says_what_failed_once() {
    let e = engine();
    task(
        &e,
        "t",
        json!({"rate_limits": [{"dynamic_key": "input.user_id", "limit": 10, "period": "1m"}]}),
    )
    .await;
    let shown = e
        .enqueue("t", json!({}), json!({}))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        shown.starts_with("rate_limits[0].dynamic_key: expression \"input.user_id\" failed: "),
        "{shown}"
    );
    assert!(!shown.contains("failed: failed"), "{shown}");
    let shown = e
        .enqueue("t", json!({"user_id": [1]}), json!({}))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        shown.starts_with("rate_limits[0].dynamic_key: expression \"input.user_id\" gave "),
        "{shown}"
    );
}

// Each task an event triggers gets a run of its own (docs/design.md §3.2): an expression that
// fails for one task fails that task's run with the reason, and the other tasks' runs go on as
// if it were not there. The event itself is accepted.
#[tokio::test(start_paused = true)]
async fn an_event_failing_for_one_task_fails_that_run_and_keeps_the_others() {
    let e = engine();
    limit(&e, "one", json!({"rate": "1/h"})).await;
    task(
        &e,
        "a-skips",
        json!({"triggers": ["company.updated"], "on_limit": "skip",
               "rate_limits": [{"static_key": "one", "units": 1}]}),
    )
    .await;
    task(
        &e,
        "b-needs-id",
        json!({"triggers": ["company.updated"],
               "rate_limits": [{"dynamic_key": "event.data.company_id", "limit": 1, "period": "4h"}]}),
    )
    .await;
    let runs = e
        .emit("company.updated", json!({"name": "no id"}), json!({}))
        .await
        .unwrap();
    let states: Vec<(String, RunState)> = runs.iter().map(|r| (r.task.clone(), r.state)).collect();
    assert_eq!(
        states,
        [
            ("a-skips".to_owned(), RunState::Queued),
            ("b-needs-id".to_owned(), RunState::Failed)
        ]
    );
    let error = runs[1].error.as_deref().unwrap_or_default();
    assert!(
        error.starts_with(
            "invalid_expression: rate_limits[0].dynamic_key: expression \"event.data.company_id\""
        ),
        "{error}"
    );
    assert_eq!(e.runs(None, None, 10).len(), 2, "both runs are kept");
    // a-skips' run took "one"'s only unit: its next run is skipped, b's goes on.
    let runs = e
        .emit("company.updated", json!({"company_id": "c1"}), json!({}))
        .await
        .unwrap();
    let states: Vec<(String, RunState)> = runs.into_iter().map(|r| (r.task, r.state)).collect();
    assert_eq!(
        states,
        [
            ("a-skips".to_owned(), RunState::Skipped),
            ("b-needs-id".to_owned(), RunState::Queued)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn ended_runs_are_forgotten_after_the_retention_but_not_while_their_units_count() {
    let e = engine();
    e.set_retention(tollgate_core::Period::HOUR);
    limit(&e, "slow", json!({"algorithm": "gcra", "rate": "1/2h"})).await;
    task(
        &e,
        "limited",
        json!({"rate_limits": [{"static_key": "slow", "units": 1}]}),
    )
    .await;
    task(&e, "free", json!({})).await;
    let limited = enqueue(&e, "limited", json!({})).await;
    let free = enqueue(&e, "free", json!({})).await;
    let waiting = enqueue(&e, "limited", json!({})).await;
    assert_eq!(
        lease(&e, "limited", 10).await,
        std::slice::from_ref(&limited)
    );
    assert_eq!(lease(&e, "free", 10).await, std::slice::from_ref(&free));
    e.complete(&limited, None, None).await.unwrap();
    e.complete(&free, None, None).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3_601)).await;
    e.prune().await.unwrap();
    assert!(
        matches!(e.run(&free), Err(Error::UnknownRun { .. })),
        "ended an hour ago: forgotten"
    );
    assert_eq!(
        state(&e, &limited),
        RunState::Succeeded,
        "its unit counts for 2 h: kept"
    );
    assert!(
        e.run(&waiting).is_ok(),
        "runs that have not ended are never forgotten"
    );
    tokio::time::sleep(Duration::from_secs(3_600)).await;
    e.prune().await.unwrap();
    assert!(matches!(e.run(&limited), Err(Error::UnknownRun { .. })));
}

#[tokio::test(start_paused = true)]
async fn units_beyond_a_declared_limits_capacity_fail_the_run_at_enqueue() {
    // Why: a static key's capacity is known at enqueue; waiting for the first lease to find out
    // left an impossible run queued.
    let e = engine();
    limit(&e, "small", json!({"rate": "3/m"})).await;
    task(
        &e,
        "t",
        json!({"rate_limits": [{"static_key": "small", "units": "input.n"}]}),
    )
    .await;
    let r = e.enqueue("t", json!({"n": 4}), json!({})).await.unwrap();
    assert_eq!(r.state, RunState::Failed);
    let error = r.error.unwrap_or_default();
    assert!(
        error.contains("insufficient_capacity") && error.contains("\"small\""),
        "{error}"
    );
    assert_eq!(
        e.enqueue("t", json!({"n": 3}), json!({}))
            .await
            .unwrap()
            .state,
        RunState::Queued
    );
}

#[tokio::test(start_paused = true)]
async fn a_run_parked_on_a_rate_limit_holds_no_concurrency_slot() {
    let e = engine();
    limit(&e, "hourly", json!({"rate": "1/h"})).await;
    let both = json!({"rate_limits": [{"static_key": "hourly"}], "concurrency": [{"key": "'k'", "limit": 1}]});
    task(&e, "a", both).await;
    task(
        &e,
        "b",
        json!({"concurrency": [{"key": "'k'", "limit": 1}]}),
    )
    .await;
    let a = enqueue_n(&e, "a", 2, json!({})).await;
    assert_eq!(lease(&e, "a", 2).await, a[..1]);
    assert_eq!(e.run(&a[1]).unwrap().waiting_on.as_deref(), Some("k"));
    // a[0] ends: its slot goes to a[1], which then finds the hourly limit spent and parks on
    // it, handing the slot on instead of keeping it for an hour.
    e.complete(&a[0], None, None).await.unwrap();
    assert!(lease(&e, "a", 1).await.is_empty());
    assert_eq!(e.run(&a[1]).unwrap().waiting_on.as_deref(), Some("hourly"));
    let b = enqueue(&e, "b", json!({})).await;
    assert_eq!(lease(&e, "b", 1).await, [b]);
}
