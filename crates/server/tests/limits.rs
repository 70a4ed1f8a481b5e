//! Declared limits over HTTP: CRUD for every algorithm, canonical definitions, live state.

mod common;

use common::{Server, fake_clock};
use serde_json::json;
use tollgate::core::Nanos;

#[tokio::test]
async fn limits_crud_for_every_algorithm() {
    let server = Server::start(fake_clock()).await;
    let cases = [
        (
            "sliding",
            json!({"limit": 100, "period": "1m"}),
            json!({"algorithm": "sliding_window", "limit": 100, "period": "1m", "precision": 60}),
            100,
        ),
        (
            "fixed",
            json!({"algorithm": "fixed_window", "limit": 5, "period": "HOUR", "align": "clock"}),
            json!({"algorithm": "fixed_window", "limit": 5, "period": "1h", "align": "clock"}),
            5,
        ),
        (
            "gcra",
            json!({"algorithm": "gcra", "rate": "10/s", "burst": 4}),
            json!({"algorithm": "gcra", "limit": 10, "period": "1s", "burst": 4}),
            4,
        ),
        (
            "bucket",
            json!({"algorithm": "token_bucket", "capacity": 20, "refill": "5/s"}),
            json!({"algorithm": "token_bucket", "capacity": 20, "refill": "5/1s"}),
            20,
        ),
        (
            "slots",
            json!({"algorithm": "concurrency", "limit": 3, "lease_ttl": "45s"}),
            json!({"algorithm": "concurrency", "limit": 3, "lease_ttl": "45s"}),
            3,
        ),
    ];
    for (key, body, canonical, remaining) in &cases {
        let put = server.put(&format!("/v1/limits/{key}"), body.clone()).await;
        assert_eq!(put.status, 200, "{key}: {:?}", put.body);
        assert_eq!(put.body["key"], *key);
        assert_eq!(put.body["namespace"], "static");
        for (field, value) in canonical.as_object().unwrap() {
            assert_eq!(put.body[field], *value, "{key}.{field}: {:?}", put.body);
        }
        assert_eq!(put.body["used"], 0, "{key}");
        assert_eq!(put.body["remaining"], *remaining, "{key}");
        let got = server.get(&format!("/v1/limits/{key}")).await;
        assert_eq!((got.status, &got.body), (200, &put.body), "{key}");
    }

    let list = server.get("/v1/limits").await;
    assert_eq!(list.status, 200);
    let keys: Vec<&str> = list.body["limits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["bucket", "fixed", "gcra", "sliding", "slots"]);

    for (key, ..) in &cases {
        assert_eq!(
            server.delete(&format!("/v1/limits/{key}")).await.status,
            204
        );
        let gone = server.get(&format!("/v1/limits/{key}")).await;
        assert_eq!((gone.status, gone.code()), (404, "unknown_limit"));
        let again = server.delete(&format!("/v1/limits/{key}")).await;
        assert_eq!((again.status, again.code()), (404, "unknown_limit"));
    }
    assert_eq!(
        server.get("/v1/limits").await.body,
        json!({"limits": [], "dynamic_total": 0})
    );
    server.stop().await;
}

#[tokio::test]
async fn the_rate_shorthand_declares_a_sliding_window() {
    let server = Server::start(fake_clock()).await;
    let put = server.put("/v1/limits/api", json!({"rate": "100/m"})).await;
    assert_eq!(put.status, 200, "{:?}", put.body);
    assert_eq!(put.body["algorithm"], "sliding_window");
    assert_eq!(put.body["limit"], 100);
    assert_eq!(put.body["period"], "1m");
    assert_eq!(put.body["remaining"], 100);
    assert_eq!(put.body["reset_after_ms"], 0);
    server.stop().await;
}

#[tokio::test]
async fn listings_show_live_state() {
    let clock = fake_clock();
    let server = Server::start(clock.clone()).await;
    server
        .put(
            "/v1/limits/api",
            json!({"algorithm": "gcra", "rate": "10/s", "burst": 5}),
        )
        .await;
    server
        .put(
            "/v1/limits/db",
            json!({"algorithm": "concurrency", "limit": 2}),
        )
        .await;
    let took = server
        .post(
            "/v1/acquire",
            json!({"limits": [{"key": "api", "units": 3}]}),
        )
        .await;
    assert_eq!(took.body["allowed"], true);
    let lease = server.post("/v1/leases", json!({"key": "db"})).await;
    assert_eq!(lease.body["acquired"], true, "{:?}", lease.body);
    // A per-user key exists only while it has state.
    server
        .post(
            "/v1/acquire",
            json!({"limits": [{"key": "user:1", "rate": "2/s"}]}),
        )
        .await;

    let api = server.get("/v1/limits/api").await.body;
    assert_eq!(
        (api["used"].as_u64(), api["remaining"].as_u64()),
        (Some(3), Some(2))
    );
    // 3 units at one per 100 ms: fresh again in 300 ms.
    assert_eq!(api["reset_after_ms"], 300);
    let db = server.get("/v1/limits/db").await.body;
    assert_eq!(
        (db["used"].as_u64(), db["remaining"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(db["reset_after_ms"], json!(null));

    let list = server.get("/v1/limits").await.body;
    let user = list["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["key"] == "user:1")
        .expect("the dynamic key is listed while it has state");
    assert_eq!(user["namespace"], "dynamic");
    assert_eq!(user["limit"], 2);
    assert_eq!(user["used"], 1);

    clock.advance(Nanos::from_millis(100));
    let api = server.get("/v1/limits/api").await.body;
    assert_eq!(
        (api["used"].as_u64(), api["reset_after_ms"].as_u64()),
        (Some(2), Some(200))
    );
    clock.advance(Nanos::from_secs(1));
    let list = server.get("/v1/limits").await.body;
    assert!(
        list["limits"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["key"] != "user:1"),
        "a fresh dynamic key is forgotten: {list}"
    );
    server.stop().await;
}

#[tokio::test]
async fn redefining_a_limit_keeps_its_usage() {
    let server = Server::start(fake_clock()).await;
    server
        .put("/v1/limits/api", json!({"limit": 10, "period": "1m"}))
        .await;
    server
        .post(
            "/v1/acquire",
            json!({"limits": [{"key": "api", "units": 8}]}),
        )
        .await;
    // Lowering applies at once: 8 used of 5.
    let lowered = server
        .put("/v1/limits/api", json!({"limit": 5, "period": "1m"}))
        .await;
    assert_eq!(lowered.body["limit"], 5);
    let denied = server
        .post("/v1/acquire", json!({"limits": [{"key": "api"}]}))
        .await;
    assert_eq!(denied.body["allowed"], false);
    // Raising applies at once too: 8 used of 20.
    server
        .put("/v1/limits/api", json!({"limit": 20, "period": "1m"}))
        .await;
    let allowed = server
        .post("/v1/acquire", json!({"limits": [{"key": "api"}]}))
        .await;
    assert_eq!(allowed.body["allowed"], true);
    assert_eq!(allowed.body["decisions"][0]["remaining"], 11);
    server.stop().await;
}

#[tokio::test]
async fn keys_with_slashes_and_spaces_round_trip_percent_encoded() {
    let server = Server::start(fake_clock()).await;
    let put = server
        .put("/v1/limits/tenant%2F42%20api", json!({"rate": "5/s"}))
        .await;
    assert_eq!(put.status, 200, "{:?}", put.body);
    assert_eq!(put.body["key"], "tenant/42 api");
    let acquired = server
        .post("/v1/acquire", json!({"limits": [{"key": "tenant/42 api"}]}))
        .await;
    assert_eq!(acquired.body["allowed"], true);
    server.stop().await;
}

#[tokio::test]
async fn the_listing_can_keep_only_the_busiest_dynamic_keys() {
    let server = Server::start(fake_clock()).await;
    server
        .put("/v1/limits/declared", json!({"limit": 10, "period": "1m"}))
        .await;
    for (user, n) in [("a", 1), ("b", 4), ("c", 2)] {
        for _ in 0..n {
            let entry = json!({"key": format!("user:{user}"), "limit": 5, "period": "1m"});
            server.post("/v1/acquire", json!({"limits": [entry]})).await;
        }
    }
    let all = server.get("/v1/limits").await.body;
    assert_eq!(all["dynamic_total"], 3);
    assert_eq!(all["limits"].as_array().map(Vec::len), Some(4));

    let top = server.get("/v1/limits?dynamic=2").await;
    assert_eq!(top.status, 200);
    let keys: Vec<&str> = top.body["limits"]
        .as_array()
        .expect("limits")
        .iter()
        .map(|l| l["key"].as_str().expect("a key"))
        .collect();
    // Declared limits always, then the busiest dynamic keys first.
    assert_eq!(keys, ["declared", "user:b", "user:c"]);
    assert_eq!(top.body["dynamic_total"], 3);

    let bad = server.get("/v1/limits?dynamic=many").await;
    assert_eq!((bad.status, bad.code()), (400, "invalid_field"));
    let unknown = server.get("/v1/limits?sort=name").await;
    assert_eq!((unknown.status, unknown.code()), (400, "invalid_field"));
    server.stop().await;
}
