//! `POST /v1/acquire` and `/v1/acquire/batch` over HTTP.

mod common;

use common::{START, Server, fake_clock};
use serde_json::json;
use tollgate::TokioClock;
use tollgate::core::Nanos;

#[tokio::test]
async fn acquire_over_several_keys_is_all_or_nothing() {
    let server = Server::start(fake_clock()).await;
    server
        .put("/v1/limits/global", json!({"limit": 100, "period": "1m"}))
        .await;
    server
        .put("/v1/limits/stripe", json!({"limit": 2, "period": "1m"}))
        .await;

    let both = json!({"limits": [{"key": "global", "units": 5}, {"key": "stripe"}]});
    for remaining in [1, 0] {
        let a = server.post("/v1/acquire", both.clone()).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.body["allowed"], true, "{:?}", a.body);
        assert_eq!(a.body["retry_after_ms"], 0);
        assert_eq!(a.body["decisions"][1]["remaining"], remaining);
    }
    let denied = server.post("/v1/acquire", both.clone()).await;
    // A denial is an answer, not an error.
    assert_eq!(denied.status, 200);
    assert_eq!(denied.body["allowed"], false);
    let d = &denied.body["decisions"];
    assert_eq!(d[0]["key"], "global");
    assert_eq!(d[0]["allowed"], true, "global alone would admit");
    assert_eq!(d[1]["key"], "stripe");
    assert_eq!(d[1]["allowed"], false);
    assert!(denied.body["retry_after_ms"].as_u64().unwrap() > 0);
    assert_eq!(denied.body["retry_after_ms"], d[1]["retry_after_ms"]);

    // The denied request took nothing from "global": 10 used, 90 left.
    let global = server.get("/v1/limits/global").await;
    assert_eq!(global.body["used"], 10);
    server.stop().await;
}

#[tokio::test]
async fn entries_naming_the_same_key_have_their_units_summed() {
    let server = Server::start(fake_clock()).await;
    server
        .put("/v1/limits/api", json!({"limit": 5, "period": "1m"}))
        .await;
    let a = server
        .post(
            "/v1/acquire",
            json!({"limits": [{"key": "api", "units": 2}, {"key": "api", "units": 2}]}),
        )
        .await;
    assert_eq!(a.body["allowed"], true);
    assert_eq!(a.body["decisions"][0]["remaining"], 1);
    assert_eq!(a.body["decisions"][1]["remaining"], 1);
    let over = server
        .post(
            "/v1/acquire",
            json!({"limits": [{"key": "api", "units": 1}, {"key": "api", "units": 1}]}),
        )
        .await;
    assert_eq!(over.body["allowed"], false);
    server.stop().await;
}

#[tokio::test]
async fn inline_definitions_make_per_user_keys() {
    let server = Server::start(fake_clock()).await;
    let for_user = |user: &str| json!({"limits": [{"key": format!("user:{user}"), "limit": 3, "period": "MINUTE"}]});
    for _ in 0..3 {
        assert_eq!(
            server.post("/v1/acquire", for_user("42")).await.body["allowed"],
            true
        );
    }
    let denied = server.post("/v1/acquire", for_user("42")).await;
    assert_eq!(denied.body["allowed"], false);
    assert_eq!(denied.body["decisions"][0]["limit"], 3);
    // Another user has a budget of their own.
    let other = server.post("/v1/acquire", for_user("7")).await;
    assert_eq!(other.body["allowed"], true);
    assert_eq!(other.body["decisions"][0]["remaining"], 2);
    // Without a definition, a dynamic key is not a declared limit.
    let bare = server
        .post("/v1/acquire", json!({"limits": [{"key": "user:42"}]}))
        .await;
    assert_eq!((bare.status, bare.code()), (404, "unknown_limit"));
    server.stop().await;
}

#[tokio::test]
async fn a_dynamic_key_named_like_a_static_one_does_not_touch_it() {
    let server = Server::start(fake_clock()).await;
    server
        .put("/v1/limits/stripe-api", json!({"limit": 1, "period": "1m"}))
        .await;
    let dynamic = server
        .post(
            "/v1/acquire",
            json!({"limits": [{"key": "stripe-api", "units": 50, "rate": "100/m"}]}),
        )
        .await;
    assert_eq!(dynamic.body["allowed"], true);
    assert_eq!(dynamic.body["decisions"][0]["remaining"], 50);
    let declared = server.get("/v1/limits/stripe-api").await;
    assert_eq!(declared.body["used"], 0, "the static limit is untouched");
    assert_eq!(declared.body["limit"], 1);
    let static_use = server
        .post("/v1/acquire", json!({"limits": [{"key": "stripe-api"}]}))
        .await;
    assert_eq!(static_use.body["allowed"], true);
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn wait_ms_answers_as_soon_as_admitted() {
    // Paused tokio time: the server sleeps in virtual time, and TokioClock follows it.
    let server = Server::start(TokioClock::new(START)).await;
    server
        .put(
            "/v1/limits/spaced",
            json!({"algorithm": "gcra", "rate": "10/s"}),
        )
        .await;
    let one = json!({"limits": [{"key": "spaced"}], "wait_ms": 1000});
    assert_eq!(
        server.post("/v1/acquire", one.clone()).await.body["allowed"],
        true
    );

    let before = server.state.now();
    let waited = server.post("/v1/acquire", one.clone()).await;
    let elapsed = server.state.now() - before;
    assert_eq!(waited.body["allowed"], true, "{:?}", waited.body);
    // Admitted at 100 ms, answered then: not at the end of the 1 s wait.
    assert!(
        elapsed >= Nanos::from_millis(100) && elapsed < Nanos::from_millis(150),
        "answered after {elapsed:?}"
    );

    // A wait shorter than the one needed answers the denial at once.
    let before = server.state.now();
    let short = server
        .post(
            "/v1/acquire",
            json!({"limits": [{"key": "spaced"}], "wait_ms": 50}),
        )
        .await;
    assert_eq!(short.body["allowed"], false);
    assert_eq!(short.body["retry_after_ms"], 100);
    assert!(server.state.now() - before < Nanos::from_millis(50));
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn wait_ms_is_capped() {
    let server = Server::start(TokioClock::new(START)).await;
    server
        .put("/v1/limits/hourly", json!({"limit": 1, "period": "1h"}))
        .await;
    server
        .post("/v1/acquire", json!({"limits": [{"key": "hourly"}]}))
        .await;
    let before = server.state.now();
    let denied = server
        .post(
            "/v1/acquire",
            json!({"limits": [{"key": "hourly"}], "wait_ms": u64::MAX}),
        )
        .await;
    assert_eq!(denied.status, 200);
    assert_eq!(denied.body["allowed"], false);
    // The hour-long wait does not fit in the 60 s cap: answered at once.
    assert!(server.state.now() - before < Nanos::from_secs(1));
    server.stop().await;
}

#[tokio::test]
async fn headers_follow_the_most_restrictive_decision() {
    let server = Server::start(fake_clock()).await;
    server
        .put("/v1/limits/wide", json!({"limit": 100, "period": "1m"}))
        .await;
    server
        .put("/v1/limits/narrow", json!({"limit": 3, "period": "10s"}))
        .await;
    let both = json!({"limits": [{"key": "wide"}, {"key": "narrow"}]});
    let a = server.post("/v1/acquire", both.clone()).await;
    assert_eq!(a.header("ratelimit-limit"), Some("3"));
    assert_eq!(a.header("ratelimit-remaining"), Some("2"));
    // Seconds, rounded up, of the narrow key's reset (10 s and a sub-bucket).
    let reset_ms = a.body["decisions"][1]["reset_after_ms"].as_u64().unwrap();
    assert!(reset_ms >= 10_000);
    assert_eq!(
        a.header("ratelimit-reset"),
        Some(reset_ms.div_ceil(1000).to_string().as_str())
    );
    assert_eq!(a.header("retry-after"), None);
    server.post("/v1/acquire", both.clone()).await;
    server.post("/v1/acquire", both.clone()).await;
    let denied = server.post("/v1/acquire", both.clone()).await;
    assert_eq!(denied.status, 200);
    assert_eq!(denied.body["allowed"], false);
    assert_eq!(denied.header("ratelimit-limit"), Some("3"));
    assert_eq!(denied.header("ratelimit-remaining"), Some("0"));
    // Seconds, rounded up: never earlier than the millisecond answer.
    let retry_ms = denied.body["retry_after_ms"].as_u64().unwrap();
    let retry_s: u64 = denied.header("retry-after").unwrap().parse().unwrap();
    assert!(retry_s * 1000 >= retry_ms && retry_s * 1000 < retry_ms + 1000);
    server.stop().await;
}

#[tokio::test]
async fn batch_decides_each_request_on_its_own() {
    let server = Server::start(fake_clock()).await;
    server
        .put("/v1/limits/a", json!({"limit": 2, "period": "1m"}))
        .await;
    server
        .put("/v1/limits/b", json!({"limit": 1, "period": "1m"}))
        .await;
    let batch = server
        .post(
            "/v1/acquire/batch",
            json!({"requests": [
                {"limits": [{"key": "a"}, {"key": "b"}]},
                {"limits": [{"key": "a"}, {"key": "b"}]},
                {"limits": [{"key": "a"}]},
                {"limits": [{"key": "missing"}]},
                {"limits": [{"key": "a"}]},
                {"limits": [{"key": "u:1", "rate": "1/s"}]},
            ]}),
        )
        .await;
    assert_eq!(batch.status, 200, "{:?}", batch.body);
    let r = batch.body["results"].as_array().unwrap();
    assert_eq!(r.len(), 6);
    assert_eq!(r[0]["allowed"], true);
    // Denied by b, atomically: it took nothing from a, so the next one still fits.
    assert_eq!(r[1]["allowed"], false);
    assert_eq!(r[2]["allowed"], true);
    assert_eq!(r[3]["error"]["code"], "unknown_limit");
    assert_eq!(r[3]["error"]["field"], "requests[3].limits[0].key");
    assert_eq!(r[4]["allowed"], false);
    assert_eq!(r[5]["allowed"], true);
    assert_eq!(r[5]["decisions"][0]["key"], "u:1");
    server.stop().await;
}
