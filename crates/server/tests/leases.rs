//! Concurrency leases over HTTP: acquire, renew, release, expiry.

mod common;

use common::{Server, fake_clock};
use serde_json::json;
use tollgate::core::Nanos;

#[tokio::test]
async fn leases_acquire_renew_and_release() {
    let clock = fake_clock();
    let server = Server::start(clock.clone()).await;
    let now_ms = || server.state.now().as_millis_floor();
    let ask = json!({"key": "account:9", "limit": 2, "ttl_ms": 10_000, "holder": "worker-1"});

    let first = server.post("/v1/leases", ask.clone()).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(first.body["acquired"], true);
    assert_eq!(first.body["expires_at_ms"], now_ms() + 10_000);
    assert_eq!(
        (
            first.body["limit"].as_u64(),
            first.body["remaining"].as_u64()
        ),
        (Some(2), Some(1))
    );
    let second = server.post("/v1/leases", ask.clone()).await;
    assert_eq!(second.body["acquired"], true);
    let third = server.post("/v1/leases", ask.clone()).await;
    assert_eq!(third.status, 200);
    assert_eq!(third.body["acquired"], false);
    assert_eq!(third.body["retry_after_ms"], 10_000);
    assert!(third.body.get("lease_id").is_none());

    let id = first.body["lease_id"].as_str().unwrap().to_owned();
    assert_ne!(id, second.body["lease_id"].as_str().unwrap());
    clock.advance(Nanos::from_secs(6));
    let renewed = server
        .post(&format!("/v1/leases/{id}/renew"), json!({"ttl_ms": 20_000}))
        .await;
    assert_eq!(renewed.status, 200, "{:?}", renewed.body);
    assert_eq!(renewed.body["lease_id"], id.as_str());
    assert_eq!(renewed.body["expires_at_ms"], now_ms() + 20_000);
    // Without a body the lease's own time to live applies.
    let renewed = server
        .send("POST", &format!("/v1/leases/{id}/renew"), None)
        .await;
    assert_eq!(renewed.status, 200, "{:?}", renewed.body);
    assert_eq!(renewed.body["expires_at_ms"], now_ms() + 10_000);

    assert_eq!(server.delete(&format!("/v1/leases/{id}")).await.status, 204);
    let again = server.delete(&format!("/v1/leases/{id}")).await;
    assert_eq!((again.status, again.code()), (404, "unknown_lease"));
    assert_eq!(
        server.post("/v1/leases", ask.clone()).await.body["acquired"],
        true
    );
    server.stop().await;
}

#[tokio::test]
async fn an_expired_holder_frees_only_its_own_slot() {
    let clock = fake_clock();
    let server = Server::start(clock.clone()).await;
    let ask = |holder: &str, ttl_ms: u64| json!({"key": "db", "limit": 2, "ttl_ms": ttl_ms, "holder": holder});
    let slow = server.post("/v1/leases", ask("slow", 1_000)).await;
    let steady = server.post("/v1/leases", ask("steady", 60_000)).await;
    assert_eq!(steady.body["acquired"], true);
    clock.advance(Nanos::from_secs(2));
    // The slow holder's lease lapsed: its slot, and only its slot, is free.
    let newcomer = server.post("/v1/leases", ask("newcomer", 60_000)).await;
    assert_eq!(newcomer.body["acquired"], true);
    assert_eq!(
        server.post("/v1/leases", ask("late", 60_000)).await.body["acquired"],
        false
    );

    // The slow holder's renew and release cannot touch the slots others hold now.
    let slow_id = slow.body["lease_id"].as_str().unwrap();
    let renew = server
        .post(&format!("/v1/leases/{slow_id}/renew"), json!({}))
        .await;
    assert_eq!((renew.status, renew.code()), (409, "lease_expired"));
    let release = server.delete(&format!("/v1/leases/{slow_id}")).await;
    assert_eq!(release.status, 404);
    assert_eq!(
        server.post("/v1/leases", ask("late", 60_000)).await.body["acquired"],
        false
    );
    let listed = server.get("/v1/limits").await.body;
    assert_eq!(listed["limits"][0]["key"], "db");
    assert_eq!(listed["limits"][0]["namespace"], "dynamic");
    assert_eq!(listed["limits"][0]["used"], 2);
    server.stop().await;
}

#[tokio::test]
async fn declared_concurrency_limits_lease_by_key() {
    let clock = fake_clock();
    let server = Server::start(clock.clone()).await;
    server
        .put(
            "/v1/limits/db",
            json!({"algorithm": "concurrency", "limit": 1, "lease_ttl": "30s"}),
        )
        .await;
    let lease = server
        .post("/v1/leases", json!({"key": "db", "holder": "w1"}))
        .await;
    assert_eq!(lease.body["acquired"], true, "{:?}", lease.body);
    // No ttl_ms: the declared lease_ttl.
    let now_ms = server.state.now().as_millis_floor();
    assert_eq!(lease.body["expires_at_ms"], now_ms + 30_000);
    assert_eq!(server.get("/v1/limits/db").await.body["used"], 1);
    let denied = server.post("/v1/leases", json!({"key": "db"})).await;
    assert_eq!(denied.body["acquired"], false);
    assert_eq!(denied.body["retry_after_ms"], 30_000);

    // A dynamic concurrency key of the same name is another budget.
    let dynamic = server
        .post("/v1/leases", json!({"key": "db", "limit": 1}))
        .await;
    assert_eq!(dynamic.body["acquired"], true);

    let id = lease.body["lease_id"].as_str().unwrap();
    assert_eq!(server.delete(&format!("/v1/leases/{id}")).await.status, 204);
    assert_eq!(server.get("/v1/limits/db").await.body["used"], 0);
    assert_eq!(
        server.post("/v1/leases", json!({"key": "db"})).await.body["acquired"],
        true
    );

    // A lease whose limit was deleted is gone.
    let held = server
        .post("/v1/leases", json!({"key": "db", "limit": 5}))
        .await;
    assert_eq!(held.body["acquired"], true);
    let static_held = server.get("/v1/limits/db").await;
    assert_eq!(static_held.body["used"], 1);
    server.delete("/v1/limits/db").await;
    let orphan = server.post("/v1/leases", json!({"key": "db"})).await;
    assert_eq!((orphan.status, orphan.code()), (404, "unknown_limit"));
    server.stop().await;
}

#[tokio::test]
async fn lease_ids_are_self_describing() {
    // Two servers: an id granted by one is understood by the other without any table (with a
    // shared store it would renew there; with separate memory stores the lease is simply not
    // held there, which is a conflict and not a malformed id).
    let a = Server::start(fake_clock()).await;
    let b = Server::start(fake_clock()).await;
    let lease = a.post("/v1/leases", json!({"key": "k", "limit": 1})).await;
    let id = lease.body["lease_id"].as_str().unwrap();
    let (descriptor, _) = id.split_once('.').unwrap();
    assert!(!descriptor.is_empty());
    let elsewhere = b.post(&format!("/v1/leases/{id}/renew"), json!({})).await;
    assert_eq!((elsewhere.status, elsewhere.code()), (409, "lease_expired"));
    for bad in ["nonsense", "bm9wZQ.zz", "a.b.c", "%00", "%FF"] {
        let r = a.post(&format!("/v1/leases/{bad}/renew"), json!({})).await;
        assert_eq!((r.status, r.code()), (404, "unknown_lease"), "{bad}");
    }
    a.stop().await;
    b.stop().await;
}
