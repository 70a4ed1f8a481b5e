//! Barriers over HTTP: release together, time out, never pass silently.

mod common;

use std::time::Duration;

use common::{Server, fake_clock};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tollgate::core::Nanos;

fn spawn_wait(server: &Server, key: &str, timeout_ms: u64) -> JoinHandle<(u16, Value)> {
    let client = server.client.clone();
    let url = server.url(&format!("/v1/barriers/{key}/wait"));
    tokio::spawn(async move {
        let r = client
            .post(url)
            .json(&json!({"timeout_ms": timeout_ms}))
            .send()
            .await
            .expect("the server answers");
        (r.status().as_u16(), r.json().await.expect("a JSON body"))
    })
}

/// Polls the barrier until `arrived` parties are there (or a deadline passes).
async fn until_arrived(server: &Server, key: &str, arrived: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = server.get(&format!("/v1/barriers/{key}")).await;
        if status.body["arrived"] == arrived {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{arrived} parties never arrived: {:?}",
            status.body
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn five_parties_are_released_together() {
    let server = Server::start(fake_clock()).await;
    let created = server
        .post(
            "/v1/barriers/batch-42",
            json!({"parties": 5, "ttl_ms": 60_000}),
        )
        .await;
    assert_eq!(created.status, 200, "{:?}", created.body);
    assert_eq!(created.body["arrived"], 0);
    assert_eq!(created.body["parties"], 5);
    assert_eq!(created.body["released"], false);
    assert_eq!(
        created.body["expires_at_ms"],
        server.state.now().as_millis_floor() + 60_000
    );

    let early: Vec<_> = (0..4)
        .map(|_| spawn_wait(&server, "batch-42", 30_000))
        .collect();
    until_arrived(&server, "batch-42", 4).await;
    assert!(
        early.iter().all(|w| !w.is_finished()),
        "nobody passes before the fifth party"
    );
    let last = spawn_wait(&server, "batch-42", 30_000).await.unwrap();
    assert_eq!(last, (200, json!({"released": true})));
    for w in early {
        assert_eq!(w.await.unwrap(), (200, json!({"released": true})));
    }
    let status = server.get("/v1/barriers/batch-42").await;
    assert_eq!(status.body["released"], true);
    server.stop().await;
}

#[tokio::test]
async fn creating_again_answers_the_live_barrier() {
    let server = Server::start(fake_clock()).await;
    server
        .post("/v1/barriers/b", json!({"parties": 2, "ttl_ms": 60_000}))
        .await;
    let waiting = spawn_wait(&server, "b", 30_000);
    until_arrived(&server, "b", 1).await;
    let again = server
        .post("/v1/barriers/b", json!({"parties": 9, "ttl_ms": 1_000}))
        .await;
    assert_eq!(again.body["parties"], 2);
    assert_eq!(again.body["arrived"], 1);
    assert_eq!(
        spawn_wait(&server, "b", 30_000).await.unwrap().1["released"],
        true
    );
    assert_eq!(waiting.await.unwrap().1["released"], true);
    server.stop().await;
}

#[tokio::test]
async fn a_wait_times_out_with_released_false() {
    let server = Server::start(fake_clock()).await;
    server
        .post("/v1/barriers/b", json!({"parties": 3, "ttl_ms": 60_000}))
        .await;
    let r = server
        .post("/v1/barriers/b/wait", json!({"timeout_ms": 50}))
        .await;
    assert_eq!((r.status, r.body), (200, json!({"released": false})));
    // The arrival counted.
    assert_eq!(server.get("/v1/barriers/b").await.body["arrived"], 1);
    server.stop().await;
}

#[tokio::test]
async fn missing_and_expired_barriers_are_errors_not_passes() {
    let clock = fake_clock();
    let server = Server::start(clock.clone()).await;
    let missing = server
        .post("/v1/barriers/nope/wait", json!({"timeout_ms": 10}))
        .await;
    assert_eq!((missing.status, missing.code()), (404, "unknown_barrier"));
    assert_eq!(server.get("/v1/barriers/nope").await.status, 404);

    server
        .post("/v1/barriers/b", json!({"parties": 2, "ttl_ms": 1_000}))
        .await;
    clock.advance(Nanos::from_secs(2));
    let expired = server
        .post("/v1/barriers/b/wait", json!({"timeout_ms": 10}))
        .await;
    assert_eq!((expired.status, expired.code()), (409, "barrier_expired"));
    // An expired barrier can be created anew.
    let fresh = server
        .post("/v1/barriers/b", json!({"parties": 1, "ttl_ms": 1_000}))
        .await;
    assert_eq!(fresh.body["parties"], 1);
    let r = server.post("/v1/barriers/b/wait", json!({})).await;
    assert_eq!(r.body, json!({"released": true}));
    server.stop().await;
}

#[tokio::test]
async fn shutdown_answers_waits_in_flight() {
    // Why: a wait may last up to 60 s; a graceful shutdown must not hang on it.
    let server = Server::start(fake_clock()).await;
    server
        .post("/v1/barriers/b", json!({"parties": 2, "ttl_ms": 600_000}))
        .await;
    let waiting = spawn_wait(&server, "b", 60_000);
    until_arrived(&server, "b", 1).await;
    let started = std::time::Instant::now();
    server.stop().await;
    assert_eq!(waiting.await.unwrap(), (200, json!({"released": false})));
    assert!(started.elapsed() < Duration::from_secs(30));
}
