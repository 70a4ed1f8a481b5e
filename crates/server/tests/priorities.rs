//! Fairness across the keys that share a limit, and priorities (docs/design.md §3.15), driven
//! over HTTP as workers would: in memory on a fake clock (the promise "a newcomer's runs start
//! within about two seconds" is about time), and on Redis (the same order, on real time).

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

mod common;
#[path = "../../redis/tests/common/mod.rs"]
mod redis_common;

use common::{Server, fake_clock, id};
use serde_json::json;
use tollgate::core::Nanos;
use tollgate_redis::RedisStore;
use tollgate_server::{AppState, Settings};

/// Tenant A has 1,000 runs parked on a shared 10/s limit when tenant B enqueues 10: B's runs
/// start within about two seconds (they take turns with A's), not after A's thousand.
#[tokio::test]
async fn a_newcomer_tenant_starts_within_two_seconds_behind_a_thousand_runs() {
    let clock = fake_clock();
    let s = Server::start(clock.clone()).await;
    s.define_limit(
        "shared",
        json!({"algorithm": "gcra", "limit": 10, "period": "1s", "burst": 10}),
    )
    .await;
    s.define_task(
        "call",
        json!({"rate_limits": [{"static_key": "shared"}], "fairness_key": "input.tenant"}),
    )
    .await;
    let a = s.enqueue_n("call", 1_000, json!({"tenant": "A"})).await;
    let first = s.lease(&["call"], 1_000, 0).await;
    assert_eq!(first.len(), 10, "the burst");
    let b = s.enqueue_n("call", 10, json!({"tenant": "B"})).await;
    assert!(s.lease(&["call"], 1_000, 0).await.is_empty());
    let mut started_b = Vec::new();
    let mut a_started = first.len();
    let mut elapsed_ms = 0;
    while started_b.len() < b.len() {
        clock.advance(Nanos::from_millis(100));
        elapsed_ms += 100;
        for run in s.lease(&["call"], 1_000, 0).await {
            if b.contains(&id(&run)) {
                started_b.push(elapsed_ms);
            } else {
                a_started += 1;
            }
        }
        assert!(
            elapsed_ms <= 5_000,
            "B is still waiting after {elapsed_ms} ms"
        );
    }
    assert!(
        *started_b.last().unwrap() <= 2_100,
        "B's runs started at {started_b:?} ms"
    );
    assert!(
        a_started >= 10 + 9,
        "A keeps its turns meanwhile: {a_started}"
    );
    assert_eq!(a.len(), 1_000);
}

/// A higher priority goes ahead of lower-priority runs that arrived earlier, whether it comes
/// from the task (a CEL expression) or the enqueue; FIFO within a priority; a priority outside
/// 1 to 4 is refused with the field named.
async fn urgent_runs_go_first(s: &Server) {
    s.define_task(
        "sync",
        json!({"concurrency": [{"key": "'pool'", "limit": 1}],
               "priority": "input.vip ? 3 : 2"}),
    )
    .await;
    let holder = s.enqueue("sync", json!({"vip": false})).await;
    assert_eq!(s.lease(&["sync"], 1, 0).await.len(), 1);
    let normal = s.enqueue_n("sync", 3, json!({"vip": false})).await;
    let vip = s.enqueue("sync", json!({"vip": true})).await;
    assert_eq!(vip["priority"], 3);
    let urgent = s
        .post(
            "/v1/tasks/sync/runs",
            json!({"input": {"vip": false}, "priority": 4}),
        )
        .await;
    assert_eq!(urgent.status, 201, "{:?}", urgent.body);
    assert_eq!(urgent.body["priority"], 4);
    // Every run parks behind the one holding the slot.
    assert!(s.lease(&["sync"], 10, 0).await.is_empty());
    let why = s
        .get(&format!("/v1/runs/{}/explain", id(&urgent.body)))
        .await;
    assert_eq!(why.body["limits"][0]["position"], 0, "{:?}", why.body);
    let mut order = Vec::new();
    let mut done = id(&holder);
    for _ in 0..5 {
        assert_eq!(s.act(&done, "complete", json!({})).await.status, 200);
        let next = s.lease(&["sync"], 1, 0).await;
        done = id(&next[0]);
        order.push(done.clone());
    }
    let mut expected = vec![id(&urgent.body), id(&vip)];
    expected.extend(normal);
    assert_eq!(order, expected);

    let bad = s
        .post(
            "/v1/tasks/sync/runs",
            json!({"input": {"vip": false}, "priority": 5}),
        )
        .await;
    assert_eq!(bad.status, 400, "{:?}", bad.body);
    assert_eq!(bad.body["error"]["field"], "priority");
    let bad = s
        .put("/v1/tasks/other", json!({"fairness_weight": 2}))
        .await;
    assert_eq!(bad.status, 400, "{:?}", bad.body);
    assert_eq!(bad.body["error"]["field"], "fairness_weight");
}

#[tokio::test]
async fn urgent_runs_go_first_in_memory() {
    urgent_runs_go_first(&Server::start(fake_clock()).await).await;
}

#[tokio::test]
async fn urgent_runs_go_first_on_redis() {
    let Some(redis) = redis_common::redis("urgent_runs_go_first_on_redis") else {
        return;
    };
    let store = RedisStore::builder(&redis.url)
        .prefix(redis_common::fresh_prefix())
        .build()
        .unwrap();
    urgent_runs_go_first(&Server::with_state(AppState::redis(store, Settings::default())).await)
        .await;
}
