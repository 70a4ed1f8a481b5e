//! Health, declared limits and acquires through the client, against the real server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Server, fake_clock};
use tollgate::SystemClock;
use tollgate_client::{AcquireEntry, Error, ErrorCode, LimitSpec, Namespace};

fn spec(json: serde_json::Value) -> LimitSpec {
    serde_json::from_value(json).unwrap()
}

/// The `(status, code, field)` of a server error; panics on anything else.
fn api_error<T: std::fmt::Debug>(r: Result<T, Error>) -> (u16, ErrorCode, Option<String>) {
    match r {
        Err(Error::Api {
            status,
            code,
            field,
            ..
        }) => (status, code, field),
        other => panic!("expected a server error, got {other:?}"),
    }
}

#[tokio::test]
async fn health_answers_ok() {
    let server = Server::start(fake_clock()).await;
    assert_eq!(server.client.health().await.unwrap().status, "ok");
    server.stop().await;
}

#[tokio::test]
async fn limits_crud_round_trips_typed() {
    let server = Server::start(fake_clock()).await;
    let c = &server.client;
    let put = c
        .put_limit(
            "stripe-api",
            &spec(serde_json::json!({"algorithm": "gcra", "rate": "10/s", "burst": 4})),
        )
        .await
        .unwrap();
    assert_eq!(put.key, "stripe-api");
    assert_eq!(put.namespace, Namespace::Static);
    // Canonical: the rate is spelled as limit + period.
    assert_eq!(
        put.definition,
        spec(serde_json::json!({"algorithm": "gcra", "limit": 10, "period": "1s", "burst": 4}))
    );
    assert_eq!((put.used, put.remaining), (0, 4));
    assert_eq!(c.get_limit("stripe-api").await.unwrap(), put);

    // A key that is not one path segment as written still names one limit.
    let odd = "team/a b?#%";
    let slots = c
        .put_limit(
            odd,
            &spec(serde_json::json!({"algorithm": "concurrency", "limit": 3})),
        )
        .await
        .unwrap();
    assert_eq!(slots.key, odd);
    assert_eq!(slots.reset_after_ms, None);
    assert_eq!(c.get_limit(odd).await.unwrap().key, odd);

    let keys: Vec<String> = c
        .list_limits()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.key)
        .collect();
    assert_eq!(keys, ["stripe-api", odd]);

    c.delete_limit("stripe-api").await.unwrap();
    c.delete_limit(odd).await.unwrap();
    assert_eq!(
        api_error(c.get_limit("stripe-api").await),
        (404, "unknown_limit".into(), Some("key".into()))
    );
    assert_eq!(
        api_error(c.delete_limit("stripe-api").await),
        (404, "unknown_limit".into(), Some("key".into()))
    );
    assert!(c.list_limits().await.unwrap().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn bad_definitions_carry_the_servers_code_and_field() {
    let server = Server::start(fake_clock()).await;
    let c = &server.client;
    let cases = [
        (
            serde_json::json!({"limit": 5, "period": "fortnightly"}),
            "invalid_period",
            "period",
        ),
        (serde_json::json!({"rate": "lots"}), "invalid_rate", "rate"),
        (serde_json::json!({"limit": 5}), "missing_field", "period"),
    ];
    for (body, code, field) in cases {
        let err = c.put_limit("k", &spec(body.clone())).await.unwrap_err();
        assert_eq!(err.status(), Some(400), "{body}: {err}");
        assert_eq!(
            err.code().map(ErrorCode::as_str),
            Some(code),
            "{body}: {err}"
        );
        assert_eq!(err.field(), Some(field), "{body}: {err}");
        assert!(!err.is_transient(), "{body}");
        // The message is the server's, for people, in one line.
        let shown = err.to_string();
        assert!(shown.starts_with(&format!("400 {code}: ")), "{shown}");
        assert!(!shown.contains('\n'), "{shown}");
    }
    let barrier = c
        .put_limit(
            "b",
            &spec(serde_json::json!({"algorithm": "barrier", "parties": 2, "ttl": "1m"})),
        )
        .await;
    assert_eq!(
        api_error(barrier),
        (422, "wrong_algorithm".into(), Some("algorithm".into()))
    );
    server.stop().await;
}

#[tokio::test]
async fn acquire_denials_are_values_and_errors_are_typed() {
    let server = Server::start(fake_clock()).await;
    let c = &server.client;
    c.put_limit(
        "hourly",
        &spec(serde_json::json!({"limit": 2, "period": "1h"})),
    )
    .await
    .unwrap();
    let one = [AcquireEntry::new("hourly")];
    for remaining in [1, 0] {
        let a = c.acquire(&one, None).await.unwrap();
        assert!(a.allowed);
        assert_eq!(a.retry_after_ms, 0);
        assert_eq!(a.decisions.len(), 1);
        assert_eq!(a.decisions[0].key, "hourly");
        assert_eq!(
            (a.decisions[0].limit, a.decisions[0].remaining),
            (2, remaining)
        );
    }
    let denied = c.acquire(&one, None).await.unwrap();
    assert!(!denied.allowed);
    assert!(denied.retry_after_ms > 0);
    assert_eq!(
        denied.retry_after(),
        Duration::from_millis(denied.retry_after_ms)
    );
    assert!(!denied.decisions[0].allowed);

    // Inline definitions need no PUT; they live in the dynamic namespace.
    let per_user = [
        AcquireEntry::new("user:42").units(2).rate("3/m"),
        AcquireEntry::new("user:42-other").define(spec(
            serde_json::json!({"algorithm": "gcra", "limit": 1, "period": "1s"}),
        )),
    ];
    let a = c.acquire(&per_user, None).await.unwrap();
    assert!(a.allowed, "{a:?}");
    assert_eq!((a.decisions[0].limit, a.decisions[0].remaining), (3, 1));
    let b = c.acquire(&per_user, None).await.unwrap();
    assert!(!b.allowed, "all or nothing: {b:?}");
    let listed = c.list_limits().await.unwrap();
    let user = listed.iter().find(|l| l.key == "user:42").unwrap();
    assert_eq!(user.namespace, Namespace::Dynamic);
    assert_eq!(user.used, 2, "the denied request took nothing");

    assert_eq!(
        api_error(c.acquire(&[AcquireEntry::new("nope")], None).await),
        (404, "unknown_limit".into(), Some("limits[0].key".into()))
    );
    assert_eq!(
        api_error(
            c.acquire(&[AcquireEntry::new("hourly").units(5)], None)
                .await
        ),
        (
            422,
            "insufficient_capacity".into(),
            Some("limits[0].units".into())
        )
    );
    assert_eq!(
        api_error(
            c.acquire(&[AcquireEntry::new("x").units(0).rate("1/s")], None)
                .await
        ),
        (400, "invalid_field".into(), Some("limits[0].units".into()))
    );
    assert_eq!(
        api_error(
            c.acquire(&[AcquireEntry::new("x").rate("1/fortnight")], None)
                .await
        ),
        (400, "invalid_rate".into(), Some("limits[0].rate".into()))
    );
    assert_eq!(
        api_error(c.acquire(&[], None).await),
        (400, "invalid_field".into(), Some("limits".into()))
    );
    server.stop().await;
}

#[tokio::test]
async fn acquire_with_wait_answers_once_admitted() {
    // Real time: the server's wait sleeps on the tokio clock, which a fake clock would not
    // move. One emission interval of 100 ms is the only real wait.
    let server = Server::start(SystemClock::new()).await;
    let c = &server.client;
    c.put_limit(
        "spaced",
        &spec(serde_json::json!({"algorithm": "gcra", "rate": "10/s"})),
    )
    .await
    .unwrap();
    let one = [AcquireEntry::new("spaced")];
    assert!(c.acquire(&one, None).await.unwrap().allowed);

    let before = Instant::now();
    let waited = c
        .acquire(&one, Some(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(waited.allowed, "{waited:?}");
    assert!(
        before.elapsed() < Duration::from_secs(5),
        "answered when admitted, not at the end of the wait: {:?}",
        before.elapsed()
    );

    // A wait shorter than the one needed: the denial, at once.
    let short = c
        .acquire(&one, Some(Duration::from_millis(1)))
        .await
        .unwrap();
    assert!(!short.allowed);
    assert!(
        short.retry_after_ms > 1 && short.retry_after_ms <= 100,
        "{short:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn batch_results_are_decisions_or_per_request_errors() {
    let server = Server::start(fake_clock()).await;
    let c = &server.client;
    c.put_limit(
        "one",
        &spec(serde_json::json!({"limit": 1, "period": "1h"})),
    )
    .await
    .unwrap();
    let results = c
        .acquire_batch(&[
            vec![AcquireEntry::new("one")],
            vec![AcquireEntry::new("missing")],
            vec![AcquireEntry::new("one")],
            vec![
                AcquireEntry::new("dyn").rate("5/m"),
                AcquireEntry::new("one"),
            ],
        ])
        .await
        .unwrap();
    assert_eq!(results.len(), 4);
    assert!(results[0].as_ref().unwrap().allowed);
    let missing = results[1].as_ref().unwrap_err();
    assert_eq!(missing.code, "unknown_limit");
    assert_eq!(missing.field.as_deref(), Some("requests[1].limits[0].key"));
    assert!(!results[2].as_ref().unwrap().allowed);
    let both = results[3].as_ref().unwrap();
    assert!(!both.allowed);
    assert_eq!(both.decisions.len(), 2);

    // A malformed batch is refused whole.
    let err = c
        .acquire_batch(&[vec![AcquireEntry::new("one")], vec![]])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::InvalidField));
    assert_eq!(err.field(), Some("requests[1].limits"));
    assert!(c.acquire_batch(&[]).await.unwrap().is_empty());
    server.stop().await;
}

/// Adaptive limits (docs/design.md §3.16): feedback moves the limit in force, on its own or
/// with a run's outcome.
#[tokio::test]
async fn feedback_moves_an_adaptive_limit_in_force() {
    use tollgate_client::{
        AdaptiveSpec, CompleteRequest, FailRequest, FeedbackOutcome, RunFeedback, RunState,
    };
    let server = Server::start(fake_clock()).await;
    let c = &server.client;
    let put = c
        .put_limit(
            "api",
            &spec(
                serde_json::json!({"algorithm": "gcra", "period": "1s", "burst": 2,
                                     "adaptive": {"min": 2, "max": 50}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(put.limit_in_force, Some(50));
    assert_eq!(
        put.definition.adaptive,
        Some(AdaptiveSpec { min: 2, max: 50 })
    );
    let throttled = c.feedback("api", FeedbackOutcome::Throttled).await.unwrap();
    assert_eq!(
        (throttled.limit_in_force, throttled.definition.limit),
        (Some(25), Some(25))
    );
    assert_eq!(
        c.feedback("api", FeedbackOutcome::Ok)
            .await
            .unwrap()
            .limit_in_force,
        Some(26)
    );

    c.put_task(
        "call",
        &serde_json::from_value(serde_json::json!({"rate_limits": [{"static_key": "api"}]}))
            .unwrap(),
    )
    .await
    .unwrap();
    let run = c
        .enqueue("call", &serde_json::json!({}), None)
        .await
        .unwrap();
    let tasks = ["call".to_owned()];
    assert_eq!(c.worker_lease("w", &tasks, 1, None).await.unwrap().len(), 1);
    let failed = FailRequest {
        error: "429".into(),
        retry: true,
        attempt: Some(1),
        retry_after_ms: None,
        pause: None,
        feedback: Some(RunFeedback::new("api", FeedbackOutcome::Throttled)),
    };
    assert_eq!(
        c.fail_with(&run.id, &failed).await.unwrap().state,
        RunState::Queued
    );
    assert_eq!(c.get_limit("api").await.unwrap().limit_in_force, Some(13));
    assert_eq!(c.worker_lease("w", &tasks, 1, None).await.unwrap().len(), 1);
    let done = CompleteRequest {
        feedback: Some(RunFeedback::new("api", FeedbackOutcome::Ok)),
        ..CompleteRequest::default()
    };
    assert_eq!(
        c.complete_with(&run.id, &done).await.unwrap().state,
        RunState::Succeeded
    );
    assert_eq!(c.get_limit("api").await.unwrap().limit_in_force, Some(14));

    c.put_limit("plain", &spec(serde_json::json!({"rate": "5/s"})))
        .await
        .unwrap();
    assert_eq!(c.get_limit("plain").await.unwrap().limit_in_force, None);
    assert_eq!(
        api_error(c.feedback("plain", FeedbackOutcome::Ok).await),
        (422, ErrorCode::NotAdaptive, Some("key".into()))
    );
    assert_eq!(
        api_error(c.feedback("nope", FeedbackOutcome::Ok).await),
        (404, ErrorCode::UnknownLimit, Some("key".into()))
    );
    server.stop().await;
}
