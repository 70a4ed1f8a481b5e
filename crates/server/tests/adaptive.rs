//! Adaptive (AIMD) limits (docs/design.md §3.16): `"adaptive": {"min", "max"}` on a declared
//! limit, `POST /v1/limits/{key}/feedback` and `feedback` in a run's `complete` and `fail`,
//! driven over HTTP as workers and an operator would: in memory (a fake clock: nothing moves but
//! what the feedback moves), on two Redis nodes (feedback sent to both at once loses nothing),
//! and on SQLite across a restart of the real binary (the limit in force survives it).

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

mod common;
#[path = "../../redis/tests/common/mod.rs"]
mod redis_common;

use std::path::PathBuf;

use common::{Answer, Server, fake_clock, id};
use serde_json::{Value, json};
use tollgate_redis::RedisStore;
use tollgate_server::{AppState, Settings};

/// A fixed window of an hour: what was used stays used for the whole test, so only the limit
/// in force decides how many runs go.
fn hourly(min: u64, max: u64) -> Value {
    json!({"algorithm": "fixed_window", "period": "1h", "adaptive": {"min": min, "max": max}})
}

async fn feedback(s: &Server, key: &str, outcome: &str) -> Answer {
    s.post(
        &format!("/v1/limits/{key}/feedback"),
        json!({"outcome": outcome}),
    )
    .await
}

/// The body of a page that is not JSON (`/metrics`, the dashboard).
async fn text(s: &Server, path: &str) -> String {
    let r = s.client.get(s.url(path)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// The limit in force `s` shows for `key`, checked to agree in every view.
async fn in_force(s: &Server, key: &str) -> u64 {
    let one = s.get(&format!("/v1/limits/{key}")).await;
    assert_eq!(one.status, 200, "{:?}", one.body);
    let n = one.body["limit_in_force"].as_u64().unwrap();
    assert_eq!(one.body["limit"].as_u64(), Some(n), "{:?}", one.body);
    let listing = s.get("/v1/limits").await;
    let listed = listing.body["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["key"] == key)
        .unwrap()
        .clone();
    assert_eq!(listed["limit_in_force"].as_u64(), Some(n), "{listed}");
    assert_eq!(listed["adaptive"], one.body["adaptive"], "{listed}");
    n
}

/// What every mode must do, on `a` and `b` (another node of the same deployment, or `a`
/// again): the limit starts at max, `ok` adds one and `throttled` halves within the bounds;
/// every view, `/metrics` and the dashboard show it; a raise hands waiting runs out at once;
/// `complete` and `fail` carry feedback; feedback sent at once from both nodes loses nothing;
/// a PUT with the same bounds keeps the limit in force, other bounds start again.
async fn the_limit_follows_what_workers_report(a: &Server, b: &Server) {
    let put = a.put("/v1/limits/api", hourly(1, 4)).await;
    assert_eq!(put.status, 200, "{:?}", put.body);
    assert_eq!(put.body["limit_in_force"], 4, "{:?}", put.body);
    assert_eq!(put.body["adaptive"], json!({"min": 1, "max": 4}));
    a.define_task(
        "call",
        json!({"rate_limits": [{"static_key": "api", "units": 1}]}),
    )
    .await;

    // Throttled twice on another node: 4 → 2 → 1, never below min.
    for expected in [2, 1, 1] {
        let r = feedback(b, "api", "throttled").await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.body["limit_in_force"], expected, "{:?}", r.body);
        assert_eq!(r.body["key"], "api");
    }
    assert_eq!(in_force(a, "api").await, 1);
    let plain = a.get("/v1/limits").await;
    assert!(
        plain.body["limits"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["key"] == "api" || l["limit_in_force"].is_null()),
        "{:?}",
        plain.body
    );

    // One run fits the limit in force; the other two wait on it.
    let runs: Vec<String> = b
        .enqueue_n("call", 3, json!({}))
        .await
        .into_iter()
        .collect();
    let first = a.lease(&["call"], 5, 0).await;
    assert_eq!(common::ids(&first), vec![runs[0].clone()]);
    assert_eq!(b.run(&runs[1]).await["state"], "waiting");
    assert_eq!(b.run(&runs[1]).await["waiting_on"], "api");

    // `ok` raises it to 2 and re-plans within the call: the next run is handed out at once.
    let raised = feedback(b, "api", "ok").await;
    assert_eq!(raised.body["limit_in_force"], 2);
    assert_eq!(a.run(&runs[1]).await["state"], "queued");
    let second = a.lease(&["call"], 5, 0).await;
    assert_eq!(common::ids(&second), vec![runs[1].clone()]);
    assert_eq!(a.run(&runs[2]).await["state"], "waiting");

    // A worker's `complete` says the call went through: 3, and the last run goes.
    let done = a
        .act(
            &runs[0],
            "complete",
            json!({"output": {}, "feedback": {"key": "api", "outcome": "ok"}}),
        )
        .await;
    assert_eq!(done.status, 200, "{:?}", done.body);
    assert_eq!(done.body["state"], "succeeded");
    assert_eq!(in_force(b, "api").await, 3);
    assert_eq!(
        common::ids(&a.lease(&["call"], 5, 0).await),
        vec![runs[2].clone()]
    );

    // A worker's `fail` says the upstream pushed back: 3 halves to 1 before the retry waits.
    let failed = b
        .act(
            &runs[1],
            "fail",
            json!({"error": "429", "retry": true,
                   "feedback": {"key": "api", "outcome": "throttled"}}),
        )
        .await;
    assert_eq!(failed.status, 200, "{:?}", failed.body);
    assert_eq!(in_force(a, "api").await, 1);

    // `/metrics` has the gauge, the dashboard the value and its bounds.
    let metrics = text(a, "/metrics").await;
    assert!(
        metrics.contains("tollgate_limit_in_force{key=\"api\"} 1"),
        "{metrics}"
    );
    let page = text(a, "/").await;
    assert!(page.contains("in force 1 (1–4)"), "{page}");

    // Many workers on both nodes at once: every report counts (a lost update would show less).
    let wide = a.put("/v1/limits/wide", hourly(1, 1_000)).await;
    assert_eq!(wide.body["limit_in_force"], 1_000);
    assert_eq!(
        feedback(a, "wide", "throttled").await.body["limit_in_force"],
        500
    );
    let reports = (0..40).map(|i| {
        let node = if i % 2 == 0 { a } else { b };
        feedback(node, "wide", "ok")
    });
    for r in futures_util::future::join_all(reports).await {
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    assert_eq!(in_force(b, "wide").await, 540);

    // The same definition again (an operator's `tollgate apply` at start) keeps what was
    // learnt, even with a `limit` that only says where a new one starts, and with another
    // period; other bounds start again at their max.
    let again = b.put("/v1/limits/wide", hourly(1, 1_000)).await;
    assert_eq!(again.body["limit_in_force"], 540, "{:?}", again.body);
    let mut with_limit = hourly(1, 1_000);
    with_limit["limit"] = json!(7);
    with_limit["period"] = json!("2h");
    let kept = a.put("/v1/limits/wide", with_limit).await;
    assert_eq!(kept.body["limit_in_force"], 540, "{:?}", kept.body);
    assert_eq!(kept.body["period"], "2h");
    let moved = a.put("/v1/limits/wide", hourly(1, 800)).await;
    assert_eq!(moved.body["limit_in_force"], 800, "{:?}", moved.body);
    // Without `adaptive` it stops adapting: `limit_in_force` is null, feedback is refused.
    let fixed = b
        .put(
            "/v1/limits/wide",
            json!({"algorithm": "fixed_window", "limit": 9, "period": "1h"}),
        )
        .await;
    assert_eq!(
        fixed.body["limit_in_force"],
        Value::Null,
        "{:?}",
        fixed.body
    );
    assert_eq!(fixed.body.get("adaptive"), None, "{:?}", fixed.body);
    let refused = feedback(a, "wide", "ok").await;
    assert_eq!((refused.status, refused.code()), (422, "not_adaptive"));
    // A concurrency limit adapts its slots.
    let conc = a
        .put(
            "/v1/limits/db",
            json!({"algorithm": "concurrency", "adaptive": {"min": 1, "max": 6}}),
        )
        .await;
    assert_eq!(conc.body["limit_in_force"], 6, "{:?}", conc.body);
    assert_eq!(feedback(b, "db", "throttled").await.body["limit"], 3);
}

/// Bad input is refused with the field named; a refused feedback in a worker call leaves the
/// run as it was.
async fn bad_adaptive_input_is_refused(s: &Server) {
    let cases = [
        (hourly(0, 5), 400, "invalid_field", "adaptive.min"),
        (hourly(6, 5), 400, "invalid_field", "adaptive.min"),
        (
            hourly(1, 1_000_000_001),
            400,
            "invalid_field",
            "adaptive.max",
        ),
        (
            json!({"algorithm": "concurrency", "adaptive": {"min": 1, "max": 2_000_000}}),
            400,
            "invalid_field",
            "adaptive.max",
        ),
        (
            json!({"algorithm": "gcra", "limit": 9, "period": "1s", "adaptive": {"min": 1, "max": 8}}),
            400,
            "invalid_field",
            "limit",
        ),
        (
            json!({"rate": "9/s", "adaptive": {"min": 1, "max": 8}}),
            400,
            "invalid_field",
            "rate",
        ),
        (
            json!({"algorithm": "token_bucket", "capacity": 5, "refill": "1/s",
                   "adaptive": {"min": 1, "max": 5}}),
            400,
            "invalid_field",
            "adaptive",
        ),
        (
            json!({"algorithm": "barrier", "parties": 2, "ttl": "1m",
                   "adaptive": {"min": 1, "max": 5}}),
            400,
            "invalid_field",
            "adaptive",
        ),
        (
            json!({"period": "1s", "adaptive": {"min": 1}}),
            400,
            "missing_field",
            "",
        ),
        (
            json!({"period": "1s", "adaptive": {"min": 1, "max": 2, "step": 1}}),
            400,
            "unknown_field",
            "",
        ),
    ];
    for (body, status, code, field) in cases {
        let r = s.put("/v1/limits/bad", body.clone()).await;
        assert_eq!((r.status, r.code()), (status, code), "{body}: {:?}", r.body);
        if !field.is_empty() {
            assert_eq!(r.body["error"]["field"], field, "{body}: {:?}", r.body);
        }
        let message = r.body["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{body}: {:?}", r.body);
    }
    assert_eq!(s.get("/v1/limits/bad").await.status, 404);
    // An inline acquire entry is a dynamic key: no bounds to adapt within.
    let inline = s
        .post(
            "/v1/acquire",
            json!({"limits": [{"key": "u1", "rate": "5/s", "adaptive": {"min": 1, "max": 5}}]}),
        )
        .await;
    assert_eq!((inline.status, inline.code()), (400, "unknown_field"));

    s.put(
        "/v1/limits/plain",
        json!({"algorithm": "gcra", "limit": 5, "period": "1s"}),
    )
    .await;
    s.put("/v1/limits/svc", hourly(1, 5)).await;
    let unknown = feedback(s, "nope", "ok").await;
    assert_eq!((unknown.status, unknown.code()), (404, "unknown_limit"));
    assert_eq!(unknown.body["error"]["field"], "key");
    let plain = feedback(s, "plain", "throttled").await;
    assert_eq!((plain.status, plain.code()), (422, "not_adaptive"));
    assert_eq!(plain.body["error"]["field"], "key");
    assert!(
        plain.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("adaptive"),
        "{:?}",
        plain.body
    );
    let outcome = feedback(s, "svc", "slow").await;
    assert_eq!(outcome.status, 400, "{:?}", outcome.body);
    assert_eq!(
        outcome.body["error"]["field"], "outcome",
        "{:?}",
        outcome.body
    );
    let missing = s.post("/v1/limits/svc/feedback", json!({})).await;
    assert_eq!((missing.status, missing.code()), (400, "missing_field"));
    let extra = s
        .post(
            "/v1/limits/svc/feedback",
            json!({"outcome": "ok", "units": 1}),
        )
        .await;
    assert_eq!((extra.status, extra.code()), (400, "unknown_field"));
    assert_eq!(in_force(s, "svc").await, 5);

    s.define_task("job", json!({})).await;
    let run = s.enqueue("job", json!({})).await;
    assert_eq!(s.lease(&["job"], 1, 0).await.len(), 1);
    for (action, key, status, code) in [
        ("complete", "nope", 404, "unknown_limit"),
        ("fail", "plain", 422, "not_adaptive"),
    ] {
        let mut body = json!({"feedback": {"key": key, "outcome": "throttled"}});
        if action == "fail" {
            body["error"] = json!("429");
        }
        let refused = s.act(&id(&run), action, body).await;
        assert_eq!(
            (refused.status, refused.code()),
            (status, code),
            "{:?}",
            refused.body
        );
        assert_eq!(refused.body["error"]["field"], "feedback.key");
    }
    assert_eq!(s.run(&id(&run)).await["state"], "running");
    assert_eq!(in_force(s, "svc").await, 5);
}

#[tokio::test]
async fn an_adaptive_limit_follows_feedback_in_memory() {
    let s = Server::start(fake_clock()).await;
    the_limit_follows_what_workers_report(&s, &s).await;
}

#[tokio::test]
async fn bad_adaptive_input_is_refused_in_memory() {
    let s = Server::start(fake_clock()).await;
    bad_adaptive_input_is_refused(&s).await;
}

fn redis_store(url: &str, prefix: &str) -> RedisStore {
    RedisStore::builder(url).prefix(prefix).build().unwrap()
}

#[tokio::test]
async fn an_adaptive_limit_follows_feedback_from_every_redis_node() {
    let Some(redis) =
        redis_common::redis("an_adaptive_limit_follows_feedback_from_every_redis_node")
    else {
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
    the_limit_follows_what_workers_report(&a, &b).await;
}

#[tokio::test]
async fn bad_adaptive_input_is_refused_on_redis() {
    let Some(redis) = redis_common::redis("bad_adaptive_input_is_refused_on_redis") else {
        return;
    };
    let s = Server::with_state(AppState::redis(
        redis_store(&redis.url, &redis_common::fresh_prefix()),
        Settings::default(),
    ))
    .await;
    bad_adaptive_input_is_refused(&s).await;
}

/// The limit in force is part of the definition, journalled like it: the real binary on SQLite,
/// killed and started again, still has what workers reported, and a config-style PUT of the same
/// definition after the restart keeps it.
#[tokio::test]
async fn the_limit_in_force_survives_a_restart() {
    use reqwest::Method;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("adaptive-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let args = [std::ffi::OsString::from("--data-dir"), dir.clone().into()];
    let first = common::Binary::start(args.clone()).await;
    first
        .ok(Method::PUT, "/v1/limits/api", Some(hourly(2, 50)))
        .await;
    for _ in 0..2 {
        first
            .ok(
                Method::POST,
                "/v1/limits/api/feedback",
                Some(json!({"outcome": "throttled"})),
            )
            .await;
    }
    let learnt = first
        .ok(
            Method::POST,
            "/v1/limits/api/feedback",
            Some(json!({"outcome": "ok"})),
        )
        .await;
    assert_eq!(learnt["limit_in_force"], 13, "{learnt}");
    drop(first); // killed

    let second = common::Binary::start(args).await;
    let after = second.ok(Method::GET, "/v1/limits/api", None).await;
    assert_eq!(after["limit_in_force"], 13, "{after}");
    assert_eq!(after["adaptive"], json!({"min": 2, "max": 50}));
    let again = second
        .ok(Method::PUT, "/v1/limits/api", Some(hourly(2, 50)))
        .await;
    assert_eq!(again["limit_in_force"], 13, "{again}");
    let next = second
        .ok(
            Method::POST,
            "/v1/limits/api/feedback",
            Some(json!({"outcome": "throttled"})),
        )
        .await;
    assert_eq!(next["limit_in_force"], 6, "{next}");
    let _ = std::fs::remove_dir_all(&dir);
}
