//! Concurrency leases and barriers through the client, against the real server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Server, fake_clock};
use tollgate_client::{Error, ErrorCode, LeaseRequest, LimitSpec};

#[tokio::test]
async fn leases_are_granted_renewed_released_and_denied_as_values() {
    let clock = fake_clock();
    let server = Server::start(clock.clone()).await;
    let c = &server.client;
    let now_ms = server.state.now().as_millis_floor();

    // A dynamic key with one slot.
    let first = c
        .lease_acquire(
            &LeaseRequest::new("account:7")
                .limit(1)
                .ttl(Duration::from_secs(10))
                .holder("w1"),
        )
        .await
        .unwrap();
    assert!(first.acquired);
    assert_eq!((first.limit, first.remaining), (1, 0));
    assert_eq!(first.expires_at_ms, Some(now_ms + 10_000));
    let id = first.lease_id.clone().unwrap();

    let full = c
        .lease_acquire(&LeaseRequest::new("account:7").limit(1))
        .await
        .unwrap();
    assert!(!full.acquired, "a full key is an answer, not an error");
    assert_eq!(full.lease_id, None);
    assert!(full.retry_after_ms.unwrap() > 0);

    clock.advance(Duration::from_secs(5));
    let renewed = c
        .lease_renew(&id, Some(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(renewed.lease_id, id);
    assert_eq!(renewed.expires_at_ms, now_ms + 5_000 + 30_000);
    let default_ttl = c.lease_renew(&id, None).await.unwrap();
    assert_eq!(default_ttl.expires_at_ms, now_ms + 5_000 + 10_000);

    c.lease_release(&id).await.unwrap();
    let again = c.lease_release(&id).await.unwrap_err();
    assert_eq!(
        (again.status(), again.code()),
        (Some(404), Some(&ErrorCode::UnknownLease))
    );
    let renew_gone = c.lease_renew(&id, None).await.unwrap_err();
    assert_eq!(renew_gone.code(), Some(&ErrorCode::LeaseExpired));
    let bogus = c.lease_renew("not-a-lease", None).await.unwrap_err();
    assert_eq!(bogus.code(), Some(&ErrorCode::UnknownLease));

    // A declared concurrency limit, leased without `limit`.
    c.put_limit(
        "db",
        &LimitSpec {
            limit: Some(2),
            lease_ttl: Some("45s".into()),
            ..LimitSpec::default()
        }
        .with(|p| p.algorithm = Some("concurrency".into())),
    )
    .await
    .unwrap();
    let declared = c.lease_acquire(&LeaseRequest::new("db")).await.unwrap();
    assert!(declared.acquired);
    assert_eq!(declared.expires_at_ms, Some(now_ms + 5_000 + 45_000));
    assert_eq!(c.get_limit("db").await.unwrap().used, 1);

    match c.lease_acquire(&LeaseRequest::new("nowhere")).await {
        Err(Error::Api {
            status: 404,
            code,
            field,
            ..
        }) => {
            assert_eq!(code, "unknown_limit");
            assert_eq!(field.as_deref(), Some("key"));
        }
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn barriers_release_every_party_and_never_pass_silently() {
    let server = Server::start(fake_clock()).await;
    let c = &server.client;
    let created = c
        .barrier_create("batch-1", 2, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        (
            created.key.as_str(),
            created.parties,
            created.arrived,
            created.released
        ),
        ("batch-1", 2, 0, false)
    );
    assert_eq!(
        created.expires_at_ms,
        server.state.now().as_millis_floor() + 60_000
    );

    let other = c.clone();
    let first =
        tokio::spawn(async move { other.barrier_wait("batch-1", Duration::from_secs(30)).await });
    // Poll until the first party has arrived (no fixed sleep).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.barrier_status("batch-1").await.unwrap().arrived < 1 {
        assert!(std::time::Instant::now() < deadline, "never arrived");
        tokio::task::yield_now().await;
    }
    assert!(
        c.barrier_wait("batch-1", Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert!(first.await.unwrap().unwrap());
    assert!(c.barrier_status("batch-1").await.unwrap().released);

    let missing = c
        .barrier_wait("never-made", Duration::from_millis(10))
        .await
        .unwrap_err();
    assert_eq!(
        (missing.status(), missing.code()),
        (Some(404), Some(&ErrorCode::UnknownBarrier))
    );
    let zero = c
        .barrier_create("zero", 0, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(zero.field(), Some("parties"));
    server.stop().await;
}
