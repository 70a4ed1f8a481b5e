//! The run queue in Redis ([`RedisEngine`]): the same scheduling rules as the embedded engine
//! (docs/design.md §3), on a fake clock passed to the scripts (`use_server_time(false)`), so time moves
//! only when a test says so. Each test has its own key prefix on the test's Redis.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

mod common;

use std::time::Duration;

use serde_json::{Value, json};
use tollgate::{Error, FakeClock, RunState, Transition};
use tollgate_core::Nanos;
use tollgate_redis::{RedisEngine, RedisStore};

const T0: Nanos = Nanos::from_secs(1_700_000_000);

struct Fixture {
    engine: RedisEngine,
    clock: FakeClock,
    // Dropped last: the engine's connections point at it.
    _redis: common::TestRedis,
}

fn fixture(test: &str) -> Option<Fixture> {
    let redis = common::redis(test)?;
    let clock = FakeClock::new(T0);
    let store = RedisStore::builder(&redis.url)
        .prefix(common::fresh_prefix())
        .use_server_time(false)
        .build()
        .unwrap();
    Some(Fixture {
        engine: RedisEngine::new(store, clock.clone()),
        clock,
        _redis: redis,
    })
}

/// A second node on the same Redis, prefix and clock.
fn other_node(f: &Fixture) -> RedisEngine {
    RedisEngine::new(f.engine.store().clone(), f.clock.clone())
}

async fn limit(e: &RedisEngine, key: &str, spec: Value) {
    e.put_limit(key, serde_json::from_value(spec).unwrap())
        .await
        .unwrap();
}

async fn task(e: &RedisEngine, name: &str, spec: Value) {
    e.put_task(name, serde_json::from_value(spec).unwrap())
        .await
        .unwrap();
}

async fn enqueue(e: &RedisEngine, task: &str, input: Value) -> String {
    e.enqueue(task, input, json!({})).await.unwrap().id
}

async fn enqueue_n(e: &RedisEngine, task: &str, n: usize, input: Value) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(enqueue(e, task, input.clone()).await);
    }
    ids
}

async fn lease(e: &RedisEngine, task: &str, max: usize) -> Vec<String> {
    e.lease("w1", &[task.to_owned()], max, Duration::ZERO)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect()
}

async fn state(e: &RedisEngine, id: &str) -> RunState {
    e.run(id).await.unwrap().state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_lease_complete_round_trip_with_attempts_and_output() {
    let Some(f) = fixture("enqueue_lease_complete_round_trip_with_attempts_and_output") else {
        return;
    };
    let e = &f.engine;
    task(e, "email", json!({})).await;
    let run = e
        .enqueue("email", json!({"to": "a"}), json!({"tier": "pro"}))
        .await
        .unwrap();
    assert_eq!(run.state, RunState::Queued);
    assert_eq!(run.attempt, 0);
    assert_eq!(run.created_at_ms, T0.as_millis_floor());
    let leased = e
        .lease("w1", &["email".to_owned()], 10, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].id, run.id);
    assert_eq!(leased[0].attempt, 1);
    assert_eq!(leased[0].input, json!({"to": "a"}));
    assert_eq!(leased[0].additional_metadata, json!({"tier": "pro"}));
    // The default lease timeout: 30 s.
    assert_eq!(
        leased[0].lease_expires_at_ms,
        (T0 + Nanos::from_secs(30)).as_millis_floor()
    );
    let done = e
        .complete(&run.id, Some(1), Some(json!({"sent": true})))
        .await
        .unwrap();
    assert_eq!(done.state, RunState::Succeeded);
    assert_eq!(done.output, Some(json!({"sent": true})));
    // A second complete is a conflict, not a silent success.
    let again = e.complete(&run.id, None, None).await.unwrap_err();
    assert!(
        matches!(
            again,
            Error::InvalidState {
                state: "succeeded",
                ..
            }
        ),
        "{again:?}"
    );
    assert!(matches!(e.run("nope").await, Err(Error::UnknownRun { .. })));
    let m = e.metrics();
    let t = &m.tasks["email"];
    assert_eq!(t.transition(Transition::Enqueued), 1);
    assert_eq!(t.transition(Transition::Leased), 1);
    assert_eq!(t.transition(Transition::Succeeded), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_runs_park_with_exact_eligible_at_and_start_then() {
    let Some(f) = fixture("rate_limited_runs_park_with_exact_eligible_at_and_start_then") else {
        return;
    };
    let e = &f.engine;
    limit(
        e,
        "test-limit",
        json!({"algorithm": "gcra", "limit": 2, "period": "1s", "burst": 2}),
    )
    .await;
    task(
        e,
        "t",
        json!({"rate_limits": [{"static_key": "test-limit", "units": 1}]}),
    )
    .await;
    let ids = enqueue_n(e, "t", 5, json!({})).await;
    let got = lease(e, "t", 10).await;
    assert_eq!(got, ids[..2]);
    // The third is the head of the key's FIFO with the exact instant; the rest queue behind.
    let third = e.run(&ids[2]).await.unwrap();
    assert_eq!(third.state, RunState::Waiting);
    assert_eq!(third.waiting_on.as_deref(), Some("test-limit"));
    assert_eq!(
        third.eligible_at_ms,
        Some((T0 + Nanos::from_millis(500)).as_millis_ceil())
    );
    for id in &ids[3..] {
        assert_eq!(state(e, id).await, RunState::Waiting);
    }
    // Nothing before eligible_at.
    f.clock.advance(Nanos::from_millis(499));
    assert!(lease(e, "t", 10).await.is_empty());
    f.clock.advance(Nanos::from_millis(1));
    assert_eq!(lease(e, "t", 10).await, ids[2..3]);
    f.clock.advance(Nanos::from_millis(500));
    assert_eq!(lease(e, "t", 10).await, ids[3..4]);
    let m = e.metrics();
    assert_eq!(m.dispatch_lag.count, 2, "both woken runs report their lag");
    assert_eq!(m.tasks["t"].decisions[0].allowed, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_runs_never_block_runs_of_the_same_task_whose_keys_are_free() {
    let Some(f) = fixture("parked_runs_never_block_runs_of_the_same_task_whose_keys_are_free")
    else {
        return;
    };
    let e = &f.engine;
    task(
        e,
        "per-user",
        json!({"rate_limits": [{"dynamic_key": "input.user_id", "limit": 10, "period": "1m"}]}),
    )
    .await;
    let busy = enqueue_n(e, "per-user", 30, json!({"user_id": "u1"})).await;
    let other = enqueue_n(e, "per-user", 5, json!({"user_id": "u2"})).await;
    let got = lease(e, "per-user", 100).await;
    assert_eq!(got.len(), 15);
    assert_eq!(got[..10], busy[..10]);
    assert_eq!(
        got[10..],
        other[..],
        "u2's runs are not delayed by u1's parked ones"
    );
    let head = e.run(&busy[10]).await.unwrap();
    assert_eq!(head.waiting_on.as_deref(), Some("u1"));
    assert!(head.eligible_at_ms.is_some());
    let depth = e.depth().await.unwrap();
    assert!(
        depth.contains(&("per-user".to_owned(), RunState::Waiting, 20)),
        "{depth:?}"
    );
    assert!(
        depth.contains(&("per-user".to_owned(), RunState::Running, 15)),
        "{depth:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_reserves_so_a_big_run_is_not_starved_by_small_ones() {
    let Some(f) = fixture("the_head_reserves_so_a_big_run_is_not_starved_by_small_ones") else {
        return;
    };
    let e = &f.engine;
    limit(
        e,
        "k",
        json!({"algorithm": "gcra", "limit": 5, "period": "5s", "burst": 5}),
    )
    .await;
    task(
        e,
        "big",
        json!({"rate_limits": [{"static_key": "k", "units": 5}]}),
    )
    .await;
    task(
        e,
        "small",
        json!({"rate_limits": [{"static_key": "k", "units": 1}]}),
    )
    .await;
    let first_small = enqueue(e, "small", json!({})).await;
    assert_eq!(lease(e, "small", 1).await, [first_small]);
    let big = enqueue(e, "big", json!({})).await;
    assert!(lease(e, "big", 1).await.is_empty());
    assert_eq!(state(e, &big).await, RunState::Waiting);
    // Small runs arriving later queue behind the big one on the key instead of overtaking it.
    let small = enqueue_n(e, "small", 3, json!({})).await;
    assert!(lease(e, "small", 3).await.is_empty());
    for id in &small {
        assert_eq!(state(e, id).await, RunState::Waiting);
    }
    let eta = e.run(&big).await.unwrap().eligible_at_ms.unwrap();
    f.clock.set(Nanos::from_millis(eta));
    assert_eq!(lease(e, "big", 1).await, [big]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_slots_are_handed_to_the_fifo_head_and_freed_by_expiry() {
    let Some(f) = fixture("concurrency_slots_are_handed_to_the_fifo_head_and_freed_by_expiry")
    else {
        return;
    };
    let e = &f.engine;
    task(
        e,
        "c",
        json!({"concurrency": [{"key": "'acct'", "limit": 2}], "lease_timeout": "10s", "max_attempts": 2}),
    )
    .await;
    let ids = enqueue_n(e, "c", 4, json!({})).await;
    assert_eq!(lease(e, "c", 10).await, ids[..2]);
    assert_eq!(
        e.run(&ids[2]).await.unwrap().waiting_on.as_deref(),
        Some("acct")
    );
    assert_eq!(e.run(&ids[2]).await.unwrap().eligible_at_ms, None);
    e.complete(&ids[0], None, None).await.unwrap();
    f.clock.advance(Nanos::from_secs(5));
    assert_eq!(lease(e, "c", 10).await, ids[2..3]);
    // ids[1]'s worker stops heartbeating: its lease lapses at 10 s, its slot goes to the head
    // of the key's FIFO (ids[3]), and it comes back behind it as attempt 2.
    f.clock.advance(Nanos::from_secs(5));
    let got = e
        .lease("w2", &["c".to_owned()], 10, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, ids[3]);
    let lapsed = e.run(&ids[1]).await.unwrap();
    assert_eq!(lapsed.state, RunState::Waiting);
    assert_eq!(lapsed.error.as_deref(), Some("lease expired on attempt 1"));
    assert_eq!(e.metrics().tasks["c"].transition(Transition::Expired), 1);
    e.complete(&ids[3], None, None).await.unwrap();
    let again = e
        .lease("w2", &["c".to_owned()], 10, Duration::ZERO)
        .await
        .unwrap();
    let ids_again: Vec<_> = again.iter().map(|r| (r.id.clone(), r.attempt)).collect();
    assert_eq!(ids_again, [(ids[1].clone(), 2)]);
    // A stale attempt cannot touch the new one.
    let stale = e.heartbeat(&ids[1], Some(1)).await.unwrap_err();
    assert!(matches!(stale, Error::InvalidState { .. }), "{stale:?}");
    e.heartbeat(&ids[1], Some(2)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_policy_consumes_at_enqueue_and_stores_skipped_runs_with_the_key() {
    let Some(f) = fixture("skip_policy_consumes_at_enqueue_and_stores_skipped_runs_with_the_key")
    else {
        return;
    };
    let e = &f.engine;
    task(
        e,
        "sync",
        json!({
            "rate_limits": [{"dynamic_key": "event.data.company_id", "limit": 1, "period": "4h"}],
            "on_limit": "skip",
            "triggers": ["company.updated"]
        }),
    )
    .await;
    let first = e
        .emit("company.updated", json!({"company_id": "c1"}), json!({}))
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].state, RunState::Queued);
    let second = e
        .emit("company.updated", json!({"company_id": "c1"}), json!({}))
        .await
        .unwrap();
    assert_eq!(second[0].state, RunState::Skipped);
    assert_eq!(second[0].skip_reason.as_deref(), Some("rate_limited"));
    assert_eq!(second[0].waiting_on.as_deref(), Some("c1"));
    let other = e
        .emit("company.updated", json!({"company_id": "c2"}), json!({}))
        .await
        .unwrap();
    assert_eq!(other[0].state, RunState::Queued);
    assert!(
        e.emit("nobody.listens", json!({}), json!({}))
            .await
            .unwrap()
            .is_empty()
    );
    let skipped = e
        .runs(Some("sync"), Some(RunState::Skipped), 10)
        .await
        .unwrap();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].id, second[0].id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_capacity_and_expression_errors() {
    let Some(f) = fixture("idempotency_capacity_and_expression_errors") else {
        return;
    };
    let e = &f.engine;
    task(
        e,
        "once",
        json!({"idempotency": {"key": "input.id", "period": "1h"}}),
    )
    .await;
    assert_eq!(
        e.enqueue("once", json!({"id": 1}), json!({}))
            .await
            .unwrap()
            .state,
        RunState::Queued
    );
    let dup = e
        .enqueue("once", json!({"id": 1}), json!({}))
        .await
        .unwrap();
    assert_eq!(dup.state, RunState::Skipped);
    assert_eq!(dup.skip_reason.as_deref(), Some("duplicate"));
    f.clock.advance(Nanos::from_secs(3601));
    // The idempotency key lives in Redis with a PX expiry, which runs on Redis's clock, not
    // the test's fake one: only the key's existence is checked here.

    limit(
        e,
        "small",
        json!({"algorithm": "gcra", "limit": 2, "period": "1s", "burst": 2}),
    )
    .await;
    task(
        e,
        "heavy",
        json!({"rate_limits": [{"static_key": "small", "units": "input.n"}]}),
    )
    .await;
    let failed = e
        .enqueue("heavy", json!({"n": 3}), json!({}))
        .await
        .unwrap();
    assert_eq!(failed.state, RunState::Failed);
    assert!(
        failed
            .error
            .as_deref()
            .unwrap()
            .starts_with("insufficient_capacity"),
        "{failed:?}"
    );
    let bad = e
        .enqueue("heavy", json!({"n": "x"}), json!({}))
        .await
        .unwrap_err();
    assert!(matches!(bad, Error::Expression { .. }), "{bad:?}");
    assert!(matches!(
        e.enqueue("missing", json!({}), json!({})).await,
        Err(Error::UnknownTask { .. })
    ));
    // A limit a task names cannot be removed.
    assert!(matches!(
        e.remove_limit("small").await,
        Err(Error::LimitInUse { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_refunds_fail_retries_and_cancel_hands_the_timer_on() {
    let Some(f) = fixture("release_refunds_fail_retries_and_cancel_hands_the_timer_on") else {
        return;
    };
    let e = &f.engine;
    limit(
        e,
        "one",
        json!({"algorithm": "gcra", "limit": 1, "period": "1s", "burst": 1}),
    )
    .await;
    task(
        e,
        "t",
        json!({"rate_limits": [{"static_key": "one"}], "max_attempts": 2}),
    )
    .await;
    let first = enqueue(e, "t", json!({})).await;
    assert_eq!(lease(e, "t", 3).await, std::slice::from_ref(&first));
    // Released: its unit is refunded and it is first again, attempt not counted.
    let released = e.release(&first, Some(1)).await.unwrap();
    assert_eq!(released.state, RunState::Queued);
    assert_eq!(released.attempt, 0);
    assert_eq!(
        lease(e, "t", 1).await,
        std::slice::from_ref(&first),
        "the refunded unit is there again"
    );
    let mut ids = vec![first];
    ids.extend(enqueue_n(e, "t", 2, json!({})).await);
    assert!(lease(e, "t", 3).await.is_empty());
    // Fail with retry: queued again (behind the runs parked on its key meanwhile).
    let retried = e.fail(&ids[0], Some(1), "boom".into(), true).await.unwrap();
    assert_eq!(retried.state, RunState::Queued);
    assert_eq!(retried.error.as_deref(), Some("boom"));
    // Cancel the parked head: the next run inherits the key's turn.
    assert_eq!(state(e, &ids[1]).await, RunState::Waiting);
    let cancelled = e.cancel(&ids[1]).await.unwrap();
    assert_eq!(cancelled.state, RunState::Cancelled);
    assert!(matches!(
        e.cancel(&ids[1]).await,
        Err(Error::InvalidState { .. })
    ));
    f.clock.advance(Nanos::from_secs(1));
    let got = lease(e, "t", 3).await;
    assert_eq!(got.len(), 1, "one unit per second: {got:?}");
    f.clock.advance(Nanos::from_secs(1));
    let got2 = lease(e, "t", 3).await;
    let mut all: Vec<_> = got.into_iter().chain(got2).collect();
    all.sort();
    let mut want = vec![ids[0].clone(), ids[2].clone()];
    want.sort();
    assert_eq!(all, want);
    let failed = e.fail(&ids[0], None, "again".into(), true).await.unwrap();
    assert_eq!(
        failed.state,
        RunState::Failed,
        "attempt 2 of 2 does not retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_sees_tasks_and_runs_and_wakes_on_the_first_nodes_enqueue() {
    let Some(f) = fixture("a_second_node_sees_tasks_and_runs_and_wakes_on_the_first_nodes_enqueue")
    else {
        return;
    };
    let a = &f.engine;
    let b = other_node(&f);
    task(a, "t", json!({"max_attempts": 5})).await;
    assert_eq!(b.task("t").await.unwrap().unwrap().max_attempts, 5);
    // A worker long-polls node b, which never looks at Redis again by itself within the
    // wait: only node a's pub/sub message can hand it the run before the wait ends.
    b.set_poll_interval(Duration::from_secs(3_600));
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            let start = std::time::Instant::now();
            let got = b
                .lease("w", &["t".to_owned()], 1, Duration::from_secs(30))
                .await
                .unwrap();
            (got, start.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let id = enqueue(a, "t", json!({})).await;
    let (got, waited) = waiter.await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, id);
    // Without the message the call would take its one last look at the end of its 30 s
    // wait, and get the run then: a liveness bound, not a timing budget.
    assert!(
        waited < Duration::from_secs(25),
        "woken by node a's message, not by the end of the wait: {waited:?}"
    );
    // A redefinition on one node is what the other uses next: node a still holds version 1
    // of the task, compiled, and enqueues with it without reading Redis; the enqueue script
    // tells it the task changed, and the run gets the new definition.
    task(&b, "t", json!({"max_attempts": 7})).await;
    let second = a.enqueue("t", json!({}), json!({})).await.unwrap();
    assert_eq!(second.max_attempts, 7, "enqueued with the redefinition");
    assert_eq!(a.task("t").await.unwrap().unwrap().max_attempts, 7);
    assert_eq!(a.run(&id).await.unwrap().state, RunState::Running);
    let listed = a.runs(None, None, 10).await.unwrap();
    assert_eq!(listed.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_parked_on_a_rate_limit_holds_no_concurrency_slot() {
    let Some(f) = fixture("a_run_parked_on_a_rate_limit_holds_no_concurrency_slot") else {
        return;
    };
    let e = &f.engine;
    limit(e, "hourly", json!({"rate": "1/h"})).await;
    let both = json!({"rate_limits": [{"static_key": "hourly"}], "concurrency": [{"key": "'k'", "limit": 1}]});
    task(e, "a", both).await;
    task(e, "b", json!({"concurrency": [{"key": "'k'", "limit": 1}]})).await;
    let a = enqueue_n(e, "a", 2, json!({})).await;
    assert_eq!(lease(e, "a", 2).await, a[..1]);
    assert_eq!(e.run(&a[1]).await.unwrap().waiting_on.as_deref(), Some("k"));
    // a[0] ends: its slot goes to a[1], which then finds the hourly limit spent and parks on
    // it, handing the slot on instead of keeping it for an hour.
    e.complete(&a[0], None, None).await.unwrap();
    assert!(lease(e, "a", 1).await.is_empty());
    assert_eq!(
        e.run(&a[1]).await.unwrap().waiting_on.as_deref(),
        Some("hourly")
    );
    let b = enqueue(e, "b", json!({})).await;
    assert_eq!(lease(e, "b", 1).await, [b]);
}

/// The sweeper is told to look only once an hour, so only the call itself can find the lapsed
/// lease: the script settles what is due before it acts, as the embedded engine does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_call_after_its_lease_lapsed_finds_the_run_requeued() {
    let Some(f) = fixture("a_worker_call_after_its_lease_lapsed_finds_the_run_requeued") else {
        return;
    };
    let e = &f.engine;
    e.set_poll_interval(Duration::from_secs(3600));
    task(e, "t", json!({"lease_timeout": "30s", "max_attempts": 3})).await;
    let ids = enqueue_n(e, "t", 2, json!({})).await;
    assert_eq!(lease(e, "t", 2).await, ids);
    f.clock.advance(Nanos::from_millis(29_999));
    e.heartbeat(&ids[1], Some(1))
        .await
        .expect("a millisecond before the lease lapses the heartbeat holds");
    f.clock.advance(Nanos::from_millis(1));
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
    let run = e.run(&ids[0]).await.unwrap();
    assert_eq!((run.state, run.attempt), (RunState::Queued, 1));
    assert!(run.error.unwrap().contains("lease expired"));
    assert_eq!(
        state(e, &ids[1]).await,
        RunState::Running,
        "its lease was extended"
    );
}

/// Script calls made so far on `url`'s Redis (FCALL, from INFO commandstats).
async fn fcalls(url: &str) -> u64 {
    let client = redis::Client::open(url).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut con)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_fcall:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// Calls made while Redis is busy are coalesced into one script call (engine/batch.rs), and
/// every caller still gets the answer of its own call: views, conflicts and unknown runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_share_script_calls_and_each_gets_its_own_answer() {
    let test = "concurrent_calls_share_script_calls_and_each_gets_its_own_answer";
    let Some(redis) = common::own_redis(test) else {
        return;
    };
    let clock = FakeClock::new(T0);
    let store = RedisStore::builder(&redis.url)
        .prefix(common::fresh_prefix())
        .use_server_time(false)
        .build()
        .unwrap();
    let e = &RedisEngine::new(store, clock.clone());
    task(e, "job", json!({})).await;

    let before = fcalls(&redis.url).await;
    let enqueued = futures_util::future::join_all(
        (0..200).map(|i| e.enqueue("job", json!({ "i": i }), json!({}))),
    )
    .await;
    let enqueue_calls = fcalls(&redis.url).await - before;
    let mut ids = Vec::new();
    for (i, run) in enqueued.into_iter().enumerate() {
        let run = run.unwrap();
        assert_eq!(run.state, RunState::Queued);
        assert_eq!(
            run.input,
            json!({ "i": i }),
            "each enqueue answers its own run"
        );
        ids.push(run.id);
    }
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), 200);
    assert!(
        enqueue_calls < 50,
        "200 enqueues took {enqueue_calls} script calls"
    );

    let leased = lease(e, "job", 200).await;
    assert_eq!(leased.len(), 200);
    // Per run i: 0..100 complete with output i; 100..150 complete with a wrong attempt;
    // 150..200 heartbeat; and 20 completes of runs that do not exist.
    let before = fcalls(&redis.url).await;
    let answers =
        futures_util::future::join_all(ids.iter().enumerate().map(|(i, id)| async move {
            match i {
                0..100 => e.complete(id, Some(1), Some(json!(i))).await,
                100..150 => e.complete(id, Some(2), None).await,
                _ => e.heartbeat(id, Some(1)).await,
            }
        }))
        .await;
    let unknown = futures_util::future::join_all(
        (0..20).map(|i| async move { e.complete(&format!("nope{i}"), None, None).await }),
    )
    .await;
    let op_calls = fcalls(&redis.url).await - before;
    for (i, answer) in answers.into_iter().enumerate() {
        match i {
            0..100 => {
                let run = answer.unwrap();
                assert_eq!(
                    (run.id.as_str(), run.state),
                    (ids[i].as_str(), RunState::Succeeded)
                );
                assert_eq!(run.output, Some(json!(i)));
            }
            100..150 => assert!(
                matches!(
                    answer,
                    Err(Error::InvalidState {
                        state: "running",
                        action: "complete",
                        ..
                    })
                ),
                "{answer:?}"
            ),
            _ => {
                let run = answer.unwrap();
                assert_eq!(
                    (run.id.as_str(), run.state),
                    (ids[i].as_str(), RunState::Running)
                );
            }
        }
    }
    for answer in unknown {
        assert!(
            matches!(answer, Err(Error::UnknownRun { .. })),
            "{answer:?}"
        );
    }
    assert!(op_calls < 60, "220 run ops took {op_calls} script calls");
    for (i, id) in ids.iter().enumerate() {
        let want = if i < 100 {
            RunState::Succeeded
        } else {
            RunState::Running
        };
        assert_eq!(state(e, id).await, want, "run {i}");
    }
    let m = e.metrics();
    assert_eq!(m.tasks["job"].transition(Transition::Enqueued), 200);
    assert_eq!(m.tasks["job"].transition(Transition::Succeeded), 100);
}
