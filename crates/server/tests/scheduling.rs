//! Admission over HTTP (docs/design.md §3 Scheduling): parked runs with an exact `eligible_at_ms`,
//! dispatched at that instant by a waiting long-poll; FIFO per key with only the head awake;
//! parked runs blocking nobody and consuming no attempt; skip policy; impossible units; CEL
//! evaluation errors.
//!
//! On tokio's paused clock (`TokioClock`): a long-poll's wait passes in virtual time, so "at
//! that instant" is checked exactly and no test polls or sleeps for real.

mod common;

use std::time::Duration;

use common::{START, Server, id, ids};
use serde_json::{Value, json};
use tokio::time::Instant;
use tollgate::TokioClock;

const START_MS: u64 = START.as_millis_floor();

async fn paused() -> Server {
    Server::start(TokioClock::new(START)).await
}

/// The ids of `runs` of `server` in state `state`, oldest first.
async fn in_state(server: &Server, task: &str, state: &str) -> Vec<String> {
    let r = server
        .get(&format!("/v1/runs?task={task}&state={state}"))
        .await;
    let mut runs = ids(r.body["runs"].as_array().expect("runs"));
    runs.reverse();
    runs
}

#[tokio::test(start_paused = true)]
async fn a_run_over_its_limit_is_parked_with_an_exact_eligible_at_and_dispatched_then() {
    let server = paused().await;
    server
        .define_limit(
            "api",
            json!({"algorithm": "gcra", "limit": 2, "period": "1s", "burst": 2}),
        )
        .await;
    server
        .define_task("t", json!({"rate_limits": [{"static_key": "api"}]}))
        .await;
    let runs = server.enqueue_n("t", 3, json!({})).await;
    assert_eq!(ids(&server.lease(&["t"], 10, 0).await), runs[..2]);

    let parked = server.run(&runs[2]).await;
    assert_eq!(parked["state"], "waiting");
    assert_eq!(parked["waiting_on"], "api");
    // gcra 2/s, burst 2: one more unit fits 500 ms after the first two.
    assert_eq!(parked["eligible_at_ms"], START_MS + 500);
    assert_eq!(parked["attempt"], 0);

    // One long-poll, no loop: answered at eligible_at, not before, not at the end of wait_ms.
    let start = Instant::now();
    let leased = server.lease(&["t"], 10, 30_000).await;
    assert_eq!(ids(&leased), [runs[2].clone()]);
    assert_eq!(start.elapsed(), Duration::from_millis(500));
    assert_eq!(server.now_ms(), START_MS + 500);
    assert_eq!(leased[0]["attempt"], 1);
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn runs_waiting_on_a_key_leave_in_fifo_order_and_only_the_head_wakes() {
    let server = paused().await;
    server
        .define_limit(
            "one-per-second",
            json!({"algorithm": "gcra", "rate": "1/s"}),
        )
        .await;
    server
        .define_task(
            "t",
            json!({"rate_limits": [{"static_key": "one-per-second"}]}),
        )
        .await;
    let runs = server.enqueue_n("t", 4, json!({})).await;
    assert_eq!(ids(&server.lease(&["t"], 10, 0).await), [runs[0].clone()]);
    assert_eq!(in_state(&server, "t", "waiting").await, runs[1..]);

    let start = Instant::now();
    for (i, run) in runs.iter().enumerate().skip(1) {
        // Each long-poll (max 10) gets exactly one run: the head, at its instant. The others
        // are not woken with it.
        let leased = server.lease(&["t"], 10, 30_000).await;
        assert_eq!(ids(&leased), std::slice::from_ref(run), "run {i}");
        assert_eq!(start.elapsed(), Duration::from_secs(i as u64));
        let waiting = in_state(&server, "t", "waiting").await;
        assert_eq!(waiting, runs[i + 1..], "after run {i}");
        if let Some(next) = waiting.first() {
            // The new head holds the next timer, one second on.
            assert_eq!(
                server.run(next).await["eligible_at_ms"],
                START_MS + 1_000 * (i as u64 + 1)
            );
        }
    }
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_big_run_at_the_head_is_not_starved_by_small_runs_behind_it() {
    let server = paused().await;
    server
        .define_limit(
            "pool",
            json!({"algorithm": "sliding_window", "limit": 5, "period": "1s", "precision": 10}),
        )
        .await;
    server
        .define_task(
            "t",
            json!({"rate_limits": [{"static_key": "pool", "units": "input.units"}]}),
        )
        .await;
    let first = id(&server.enqueue("t", json!({"units": 3})).await);
    let big = id(&server.enqueue("t", json!({"units": 5})).await);
    let small = server.enqueue_n("t", 3, json!({"units": 1})).await;
    // 3 units taken; the 5-unit run parks; the 1-unit runs queue behind it rather than
    // taking the 2 units left.
    assert_eq!(ids(&server.lease(&["t"], 10, 0).await), [first]);
    assert_eq!(
        in_state(&server, "t", "waiting").await,
        [vec![big.clone()], small.clone()].concat()
    );
    let leased = server.lease(&["t"], 10, 30_000).await;
    assert_eq!(ids(&leased), [big]);
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn parked_runs_never_block_runs_whose_keys_are_free_and_consume_no_attempt() {
    let server = paused().await;
    server
        .define_task(
            "sync",
            json!({"lease_timeout": "10m",
                   "rate_limits": [{"dynamic_key": "input.user_id", "limit": 1, "period": "30s"}]}),
        )
        .await;
    let busy = server
        .enqueue_n("sync", 3, json!({"user_id": "busy"}))
        .await;
    let other = id(&server.enqueue("sync", json!({"user_id": "other"})).await);
    let leased = server.lease(&["sync"], 10, 0).await;
    assert_eq!(ids(&leased), [busy[0].clone(), other.clone()]);

    for parked in &busy[1..] {
        let run = server.run(parked).await;
        assert_eq!(run["state"], "waiting");
        assert_eq!(run["waiting_on"], "busy", "the rendered key");
        assert_eq!(run["attempt"], 0, "parking is not an attempt");
    }
    // Asking again and again does not make them attempts either.
    for _ in 0..3 {
        assert!(server.lease(&["sync"], 10, 0).await.is_empty());
    }
    let later = id(&server.enqueue("sync", json!({"user_id": "later"})).await);
    assert_eq!(ids(&server.lease(&["sync"], 10, 0).await), [later]);
    let parked = server.run(&busy[1]).await;
    assert_eq!(parked["attempt"], 0);
    let leased = server.lease(&["sync"], 10, 60_000).await;
    assert_eq!(server.now_ms(), parked["eligible_at_ms"].as_u64().unwrap());
    assert_eq!(ids(&leased), [busy[1].clone()]);
    assert_eq!(leased[0]["attempt"], 1);
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn skip_policy_stores_over_limit_runs_as_skipped_with_the_reason_and_key() {
    let server = paused().await;
    server
        .define_task(
            "notify",
            json!({"on_limit": "skip",
                   "rate_limits": [{"dynamic_key": "'user:' + string(input.user_id)", "limit": 1, "period": "1h"}]}),
        )
        .await;
    let first = server.enqueue("notify", json!({"user_id": 1})).await;
    assert_eq!(first["state"], "queued");
    let second = server.enqueue("notify", json!({"user_id": 1})).await;
    assert_eq!(second["state"], "skipped");
    assert_eq!(second["skip_reason"], "rate_limited");
    assert_eq!(second["waiting_on"], "user:1");
    assert_eq!(server.run(&id(&second)).await, second, "stored");
    assert_eq!(in_state(&server, "notify", "skipped").await, [id(&second)]);
    // Skipped runs never run.
    assert_eq!(ids(&server.lease(&["notify"], 10, 0).await), [id(&first)]);
    assert!(server.lease(&["notify"], 10, 0).await.is_empty());
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn units_beyond_capacity_fail_the_run_at_once_with_the_reason() {
    let server = paused().await;
    server
        .define_limit("small", json!({"limit": 3, "period": "1m"}))
        .await;
    server
        .define_task(
            "dynamic",
            json!({"rate_limits": [{"dynamic_key": "input.user", "units": "input.weight", "limit": 5, "period": "1m"}]}),
        )
        .await;
    server
        .define_task(
            "static",
            json!({"rate_limits": [{"static_key": "small", "units": "input.weight"}]}),
        )
        .await;
    // Known at enqueue (the dynamic limit is rendered with the run): stored as failed.
    let r = server
        .enqueue("dynamic", json!({"user": "u", "weight": 6}))
        .await;
    assert_eq!(r["state"], "failed");
    let error = r["error"].as_str().unwrap();
    assert!(error.contains("insufficient_capacity"), "{error}");
    assert!(error.contains("rate_limits[0].units"), "{error}");
    assert!(error.contains("6 units"), "{error}");

    // A declared limit may be redefined before the run starts: found when it is tried.
    let run = id(&server.enqueue("static", json!({"weight": 4})).await);
    assert!(server.lease(&["static"], 10, 0).await.is_empty());
    let r = server.run(&run).await;
    assert_eq!(r["state"], "failed");
    assert!(r["error"].as_str().unwrap().contains("at most 3"), "{r}");
    assert_eq!(r["attempt"], 0);
    // Never requeued: a long-poll does not see it again.
    assert!(server.lease(&["static"], 10, 5_000).await.is_empty());
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_expression_that_cannot_be_evaluated_rejects_the_run_with_422() {
    let server = paused().await;
    server
        .define_task(
            "t",
            json!({"rate_limits": [
                {"dynamic_key": "input.user_id", "limit": 10, "period": "1m"},
                {"dynamic_key": "'org:' + input.org", "units": "input.weight", "limit": 10, "period": "1m"}
            ]}),
        )
        .await;
    let cases: [(Value, &str, &str); 4] = [
        (
            json!({"org": "o"}),
            "rate_limits[0].dynamic_key",
            "input.user_id",
        ),
        (
            json!({"user_id": [1, 2], "org": "o"}),
            "rate_limits[0].dynamic_key",
            "input.user_id",
        ),
        (
            json!({"user_id": 1, "org": "o", "weight": "heavy"}),
            "rate_limits[1].units",
            "input.weight",
        ),
        (
            json!({"user_id": 1, "org": "o", "weight": 0}),
            "rate_limits[1].units",
            "input.weight",
        ),
    ];
    for (input, field, expression) in cases {
        let r = server
            .post("/v1/tasks/t/runs", json!({"input": input}))
            .await;
        assert_eq!(
            (r.status, r.code(), r.body["error"]["field"].as_str()),
            (422, "invalid_expression", Some(field)),
            "{input}: {:?}",
            r.body
        );
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("{expression:?}")), "{message}");
    }
    assert_eq!(
        server.get("/v1/runs").await.body,
        json!({"runs": []}),
        "nothing stored: never an unlimited run"
    );
    server.stop().await;
}
