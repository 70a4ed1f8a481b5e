//! Upstream back-pressure (docs/design.md §3.13): `POST/DELETE /v1/limits/{key}/pause`,
//! `GET /v1/pauses` and `fail` with `pause`, driven over HTTP as workers and an operator would,
//! in memory (a fake clock, so a pause's end is exact), on two Redis nodes (a pause made on one
//! holds on the other), and on SQLite across a restart of the real binary.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

mod common;
#[path = "../../redis/tests/common/mod.rs"]
mod redis_common;

use std::path::PathBuf;

use common::{Server, fake_clock, id};
use serde_json::{Value, json};
use tollgate::core::Nanos;
use tollgate_redis::RedisStore;
use tollgate_server::{AppState, Settings};

/// A limit with room to spare: only a pause holds anything back.
fn roomy() -> Value {
    json!({"algorithm": "gcra", "limit": 100, "period": "1s", "burst": 100})
}

/// What every mode must do, on `a` (and `b`, another node of the same deployment, or `a`
/// again): a paused key denies acquires and holds runs back on every node; a skip task's run is
/// skipped; the limit and `/v1/pauses` show the pause; a resume hands the waiting run to a
/// worker at once; a `fail` with `pause` pauses the key for everyone.
async fn pauses_hold_every_worker_back(a: &Server, b: &Server) {
    a.define_limit("api", roomy()).await;
    a.define_task(
        "call",
        json!({"rate_limits": [{"static_key": "api", "units": 1}]}),
    )
    .await;
    a.define_task(
        "ping",
        json!({"on_limit": "skip", "rate_limits": [{"static_key": "api", "units": 1}]}),
    )
    .await;

    let paused = a
        .post("/v1/limits/api/pause", json!({"for_ms": 60_000}))
        .await;
    assert_eq!(paused.status, 200, "{:?}", paused.body);
    let until = paused.body["paused_until_ms"].as_u64().unwrap();
    assert_eq!(paused.body["namespace"], "static");
    let now = b.now_ms();
    assert!(
        until > now + 59_000 && until <= now + 60_001,
        "{until} vs {now}"
    );

    // Another node denies acquires on the key, saying until when.
    let acquire = b
        .post(
            "/v1/acquire",
            json!({"limits": [{"key": "api", "units": 1}]}),
        )
        .await;
    assert_eq!(acquire.status, 200, "{:?}", acquire.body);
    assert_eq!(acquire.body["allowed"], false);
    assert_eq!(acquire.body["decisions"][0]["remaining"], 0);
    let retry = acquire.body["retry_after_ms"].as_u64().unwrap();
    assert!(retry > 59_000 && retry <= 60_000, "{retry}");

    // Runs wait for the end of the pause (a requeue task's run decides its limits when a
    // worker leases it); a skip task's run is skipped.
    let run = b.enqueue("call", json!({})).await;
    assert!(a.lease(&["call"], 5, 0).await.is_empty());
    let run = a.run(&id(&run)).await;
    assert_eq!(run["state"], "waiting", "{run}");
    assert_eq!(run["waiting_on"], "api");
    assert_eq!(run["eligible_at_ms"].as_u64(), Some(until), "{run}");
    let skipped = b.enqueue("ping", json!({})).await;
    assert_eq!(skipped["state"], "skipped", "{skipped}");
    assert_eq!(skipped["skip_reason"], "rate_limited");

    // Every view shows it.
    let limit = b.get("/v1/limits/api").await;
    assert_eq!(limit.body["paused_until_ms"].as_u64(), Some(until));
    let listing = b.get("/v1/limits").await;
    assert_eq!(
        listing.body["limits"][0]["paused_until_ms"].as_u64(),
        Some(until)
    );
    let pauses = b.get("/v1/pauses").await;
    assert_eq!(
        pauses.body,
        json!({"pauses": [{"key": "api", "namespace": "static", "paused_until_ms": until}]})
    );

    // A shorter pause keeps the longer one in force.
    let shorter = b
        .post("/v1/limits/api/pause", json!({"for_ms": 1_000}))
        .await;
    assert_eq!(shorter.body["paused_until_ms"].as_u64(), Some(until));

    // Resuming on one node hands the waiting run to a worker on the other, within the call.
    let resumed = b.delete("/v1/limits/api/pause").await;
    assert_eq!(
        resumed.body,
        json!({"key": "api", "namespace": "static", "was_paused": true})
    );
    assert_eq!(
        b.get("/v1/limits/api").await.body["paused_until_ms"],
        Value::Null
    );
    assert_eq!(b.get("/v1/pauses").await.body, json!({"pauses": []}));
    let leased = a.lease(&["call"], 5, 0).await;
    assert_eq!(common::ids(&leased), vec![id(&run)]);
    assert_eq!(
        b.delete("/v1/limits/api/pause").await.body["was_paused"],
        false
    );

    // A worker told 429 pauses the key for everyone as it fails its run with a retry: the retry
    // and the next run both wait for the pause.
    let failed = a
        .act(
            &id(&run),
            "fail",
            json!({"error": "429 Too Many Requests", "retry": true,
                   "pause": {"key": "api", "for_ms": 30_000}}),
        )
        .await;
    assert_eq!(failed.status, 200, "{:?}", failed.body);
    let pause = b.get("/v1/pauses").await.body["pauses"][0].clone();
    assert_eq!(pause["key"], "api");
    let until = pause["paused_until_ms"].as_u64().unwrap();
    let next = b.enqueue("call", json!({})).await;
    assert!(a.lease(&["call"], 5, 0).await.is_empty());
    let next = a.run(&id(&next)).await;
    assert_eq!(next["state"], "waiting", "{next}");
    assert_eq!(next["eligible_at_ms"].as_u64(), Some(until));
    let retried = a.run(&id(&run)).await;
    assert_eq!(retried["state"], "waiting", "{retried}");
    assert_eq!(retried["eligible_at_ms"].as_u64(), Some(until));

    // A dynamic key is paused in its own namespace; the declared key of that name is not.
    a.define_task(
        "per_user",
        json!({"rate_limits": [{"dynamic_key": "input.user", "limit": 10, "period": "1m"}]}),
    )
    .await;
    let dynamic = a
        .post(
            "/v1/limits/u1/pause",
            json!({"for_ms": 5_000, "dynamic": true}),
        )
        .await;
    assert_eq!(dynamic.status, 200, "{:?}", dynamic.body);
    assert_eq!(dynamic.body["namespace"], "dynamic");
    let u1 = b.enqueue("per_user", json!({"user": "u1"})).await;
    let u2 = b.enqueue("per_user", json!({"user": "u2"})).await;
    let leased = a.lease(&["per_user"], 5, 0).await;
    assert_eq!(common::ids(&leased), vec![id(&u2)]);
    assert_eq!(a.run(&id(&u1)).await["state"], "waiting");
    let denied = b
        .post(
            "/v1/acquire",
            json!({"limits": [{"key": "u1", "rate": "10/m"}]}),
        )
        .await;
    assert_eq!(denied.body["allowed"], false);
    let resumed = b.delete("/v1/limits/u1/pause?dynamic=true").await;
    assert_eq!(resumed.body["was_paused"], true);
    assert_eq!(b.run(&id(&u1)).await["state"], "queued");
}

/// Bad pauses are refused with the field named, and a refused pause in a `fail` leaves the run
/// as it was.
async fn bad_pauses_are_refused(s: &Server) {
    s.define_limit("svc", roomy()).await;
    let cases = [
        (json!({}), 400, "for_ms"),
        (json!({"for_ms": 1, "until_ms": 2}), 400, "until_ms"),
        (json!({"for_ms": 0}), 400, "for_ms"),
        (json!({"for_ms": 400_000_000_000u64}), 400, "for_ms"),
        (json!({"until_ms": 9_000_000_000_000u64}), 400, "until_ms"),
        (json!({"for_ms": 10, "extra": 1}), 400, ""),
    ];
    for (body, status, field) in cases {
        let r = s.post("/v1/limits/svc/pause", body.clone()).await;
        assert_eq!(r.status, status, "{body}: {:?}", r.body);
        if !field.is_empty() {
            assert_eq!(r.body["error"]["field"], field, "{body}: {:?}", r.body);
        }
    }
    let unknown = s.post("/v1/limits/nope/pause", json!({"for_ms": 10})).await;
    assert_eq!((unknown.status, unknown.code()), (404, "unknown_limit"));
    assert!(
        unknown.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("dynamic"),
        "{:?}",
        unknown.body
    );
    let query = s.delete("/v1/limits/svc/pause?dynamic=yes").await;
    assert_eq!((query.status, query.code()), (400, "invalid_field"));
    // An instant already past pauses nothing.
    let past = s
        .post("/v1/limits/svc/pause", json!({"until_ms": 1_000}))
        .await;
    assert_eq!(past.status, 200, "{:?}", past.body);
    assert_eq!(past.body["paused_until_ms"], Value::Null);
    assert_eq!(s.get("/v1/pauses").await.body, json!({"pauses": []}));

    s.define_task("job", json!({})).await;
    let run = s.enqueue("job", json!({})).await;
    assert_eq!(s.lease(&["job"], 1, 0).await.len(), 1);
    let refused = s
        .act(
            &id(&run),
            "fail",
            json!({"error": "429", "pause": {"key": "nope", "for_ms": 10}}),
        )
        .await;
    assert_eq!(refused.status, 404, "{:?}", refused.body);
    assert_eq!(refused.body["error"]["field"], "pause.key");
    let refused = s
        .act(
            &id(&run),
            "fail",
            json!({"error": "429", "pause": {"key": "svc"}}),
        )
        .await;
    assert_eq!(refused.status, 400, "{:?}", refused.body);
    assert_eq!(refused.body["error"]["field"], "pause.for_ms");
    assert_eq!(s.run(&id(&run)).await["state"], "running");
}

#[tokio::test]
async fn a_pause_holds_acquires_and_runs_in_memory() {
    let s = Server::start(fake_clock()).await;
    pauses_hold_every_worker_back(&s, &s).await;
}

#[tokio::test]
async fn bad_pauses_are_refused_in_memory() {
    let s = Server::start(fake_clock()).await;
    bad_pauses_are_refused(&s).await;
}

/// A pause ends exactly when it says: the waiting run is handed out at that instant, not before.
#[tokio::test]
async fn a_pause_ends_exactly_when_it_says() {
    let clock = fake_clock();
    let s = Server::start(clock.clone()).await;
    s.define_limit("api", roomy()).await;
    s.define_task(
        "call",
        json!({"rate_limits": [{"static_key": "api", "units": 1}]}),
    )
    .await;
    let paused = s
        .post("/v1/limits/api/pause", json!({"for_ms": 2_500}))
        .await;
    assert_eq!(
        paused.body["paused_until_ms"].as_u64(),
        Some(s.now_ms() + 2_500)
    );
    let run = s.enqueue("call", json!({})).await;
    clock.advance(Nanos::from_millis(2_499));
    assert!(s.lease(&["call"], 1, 0).await.is_empty());
    assert_eq!(s.run(&id(&run)).await["state"], "waiting");
    clock.advance(Nanos::from_millis(1));
    assert_eq!(common::ids(&s.lease(&["call"], 1, 0).await), vec![id(&run)]);
    assert_eq!(s.get("/v1/pauses").await.body, json!({"pauses": []}));
}

fn redis_store(url: &str, prefix: &str) -> RedisStore {
    RedisStore::builder(url).prefix(prefix).build().unwrap()
}

#[tokio::test]
async fn a_pause_on_one_redis_node_holds_every_node() {
    let Some(redis) = redis_common::redis("a_pause_on_one_redis_node_holds_every_node") else {
        return;
    };
    let prefix = redis_common::fresh_prefix();
    let a = Server::with_state(AppState::redis(
        redis_store(&redis.url, &prefix),
        Settings::default(),
    ))
    .await;
    let b = Server::with_state(AppState::redis(
        redis_store(&redis.url, &prefix),
        Settings::default(),
    ))
    .await;
    pauses_hold_every_worker_back(&a, &b).await;
}

#[tokio::test]
async fn bad_pauses_are_refused_on_redis() {
    let Some(redis) = redis_common::redis("bad_pauses_are_refused_on_redis") else {
        return;
    };
    let s = Server::with_state(AppState::redis(
        redis_store(&redis.url, &redis_common::fresh_prefix()),
        Settings::default(),
    ))
    .await;
    bad_pauses_are_refused(&s).await;
}

/// A pause is durable like a limit definition: the real binary on SQLite, stopped and started
/// again, still holds the key until the same instant.
#[tokio::test]
async fn a_pause_survives_a_restart() {
    use reqwest::Method;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("pauses-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let args = [std::ffi::OsString::from("--data-dir"), dir.clone().into()];
    let first = common::Binary::start(args.clone()).await;
    first.ok(Method::PUT, "/v1/limits/api", Some(roomy())).await;
    let paused = first
        .ok(
            Method::POST,
            "/v1/limits/api/pause",
            Some(json!({"for_ms": 3_600_000})),
        )
        .await;
    let dynamic = first
        .ok(
            Method::POST,
            "/v1/limits/u9/pause",
            Some(json!({"for_ms": 3_600_000, "dynamic": true})),
        )
        .await;
    drop(first); // killed

    let second = common::Binary::start(args).await;
    let pauses = second.ok(Method::GET, "/v1/pauses", None).await;
    assert_eq!(pauses["pauses"], json!([paused, dynamic]), "{pauses}");
    let acquire = second
        .ok(
            Method::POST,
            "/v1/acquire",
            Some(json!({"limits": [{"key": "api"}]})),
        )
        .await;
    assert_eq!(acquire["allowed"], false, "{acquire}");
    let _ = std::fs::remove_dir_all(&dir);
}
