//! "Why is this run waiting" (docs/design.md §3.14): `GET /v1/runs/{id}/explain` over HTTP, in
//! memory and on Redis, and `tollgate runs explain` from the command line. The differential
//! model test (crates/redis/tests/queue_model.rs) holds both engines to the same answers on
//! random sequences; this drives the route as an operator would.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

mod common;
#[path = "../../redis/tests/common/mod.rs"]
mod redis_common;

use common::{Server, fake_clock};
use serde_json::{Value, json};
use tollgate_redis::RedisStore;
use tollgate_server::{AppState, Settings};

async fn explain(s: &Server, run: &str) -> Value {
    let r = s.get(&format!("/v1/runs/{run}/explain")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
}

async fn a_waiting_run_is_explained_key_by_key(s: &Server) {
    s.define_limit(
        "api",
        json!({"algorithm": "gcra", "limit": 1, "period": "1h", "burst": 1}),
    )
    .await;
    s.define_task(
        "call",
        json!({"rate_limits": [{"static_key": "api"},
                               {"dynamic_key": "input.user", "limit": 50, "period": "1m"}],
               "concurrency": [{"key": "'pool'", "limit": 2}]}),
    )
    .await;
    let runs = s.enqueue_n("call", 4, json!({"user": "u1"})).await;
    let leased = s.lease(&["call"], 10, 0).await;
    assert_eq!(common::ids(&leased), vec![runs[0].clone()]);

    // The third run: second in api's queue, behind the second.
    let e = explain(s, &runs[2]).await;
    assert_eq!(e["state"], "waiting");
    assert_eq!(e["run"]["id"], runs[2].as_str());
    assert_eq!(e["ready_ahead"], Value::Null);
    let eligible = e["eligible_at_ms"].as_u64().unwrap();
    assert_eq!(e["run"]["eligible_at_ms"].as_u64(), Some(eligible));
    let limits = e["limits"].as_array().unwrap();
    assert_eq!(limits.len(), 3, "{e}");
    assert_eq!(
        limits[0],
        json!({"key": "api", "namespace": "static", "algorithm": "gcra", "limit_in_force": 1,
               "used": 1, "remaining": 0, "waiting": 3, "position": 1,
               "ahead": [runs[1]], "paused_until_ms": null, "eligible_at_ms": eligible})
    );
    assert_eq!(
        limits[1],
        json!({"key": "u1", "namespace": "dynamic", "algorithm": "sliding_window",
               "limit_in_force": 50, "used": 1, "remaining": 49, "waiting": 0,
               "position": null, "ahead": [], "paused_until_ms": null, "eligible_at_ms": null})
    );
    assert_eq!(
        limits[2],
        json!({"key": "pool", "namespace": "dynamic", "algorithm": "concurrency",
               "limit_in_force": 2, "used": 1, "remaining": 1, "waiting": 0,
               "position": null, "ahead": [], "paused_until_ms": null, "eligible_at_ms": null})
    );
    // The head is at position 0 with nobody ahead.
    let head = explain(s, &runs[1]).await;
    assert_eq!(head["limits"][0]["position"], 0);
    assert_eq!(head["limits"][0]["ahead"], json!([]));

    // A paused dynamic key says until when; a queued run says how many are ahead of it.
    s.post(
        "/v1/limits/u1/pause",
        json!({"for_ms": 60_000, "dynamic": true}),
    )
    .await;
    s.define_task("plain", json!({})).await;
    let plain = s.enqueue_n("plain", 3, json!({})).await;
    let e = explain(s, &plain[2]).await;
    assert_eq!(
        (e["state"].as_str(), e["ready_ahead"].as_u64()),
        (Some("queued"), Some(2))
    );
    assert_eq!(e["limits"], json!([]));
    let e = explain(s, &runs[3]).await;
    let until = e["limits"][1]["paused_until_ms"].as_u64().unwrap();
    assert_eq!(e["limits"][1]["eligible_at_ms"].as_u64(), Some(until));
    assert_eq!(e["limits"][1]["remaining"], 0);

    let missing = s.get("/v1/runs/nope/explain").await;
    assert_eq!((missing.status, missing.code()), (404, "unknown_run"));
}

#[tokio::test]
async fn a_waiting_run_is_explained_in_memory() {
    let s = Server::start(fake_clock()).await;
    a_waiting_run_is_explained_key_by_key(&s).await;
}

#[tokio::test]
async fn a_waiting_run_is_explained_on_redis() {
    let Some(redis) = redis_common::redis("a_waiting_run_is_explained_on_redis") else {
        return;
    };
    let store = RedisStore::builder(&redis.url)
        .prefix(redis_common::fresh_prefix())
        .build()
        .unwrap();
    let s = Server::with_state(AppState::redis(store, Settings::default())).await;
    a_waiting_run_is_explained_key_by_key(&s).await;
}

/// `tollgate runs explain ID` prints the run and a table of its keys, or the JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_explain_prints_each_key() {
    let s = Server::start(tollgate::SystemClock::new()).await;
    s.define_limit("api", json!({"limit": 1, "period": "1h"}))
        .await;
    s.define_task("call", json!({"rate_limits": [{"static_key": "api"}]}))
        .await;
    let runs = s.enqueue_n("call", 3, json!({})).await;
    s.lease(&["call"], 10, 0).await;
    let out = common::run_cli(
        &["--server", &s.base, "runs", "explain", &runs[2]],
        &[],
        None,
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("state      waiting"), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("api "))
        .unwrap_or_else(|| panic!("no row for api: {text}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    // KEY ALGORITHM LIMIT USED REMAINING WAITING POSITION PAUSED ELIGIBLE AHEAD
    assert_eq!(
        &cells[..7],
        ["api", "sliding_window", "1", "1", "0", "2", "1"],
        "{row}"
    );
    assert_eq!(cells[9], runs[1], "{row}");
    let json = common::run_cli(
        &["--server", &s.base, "--json", "runs", "explain", &runs[2]],
        &[],
        None,
    )
    .await;
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["limits"][0]["position"], 1);
}
