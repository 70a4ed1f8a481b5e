//! Concurrency leases and barriers through the client, against the real server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Server, fake_clock};
use tollgate::SystemClock;
use tollgate_client::{Client, Error, ErrorCode, LeaseGuard, LeaseLost, LeaseRequest, LimitSpec};

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

/// One slot of a dynamic key, for `holder`.
fn one_slot(key: &str, holder: &str, ttl: Duration) -> LeaseRequest {
    LeaseRequest::new(key).limit(1).ttl(ttl).holder(holder)
}

async fn guard(c: &Client, request: &LeaseRequest) -> LeaseGuard {
    match c.lease_guard(request).await.unwrap() {
        Ok(guard) => guard,
        Err(denied) => panic!("denied: {denied:?}"),
    }
}

/// Whether another holder gets the key's one slot now (released at once if so).
async fn slot_is_free(c: &Client, key: &str) -> bool {
    let other = c
        .lease_acquire(&one_slot(key, "other", Duration::from_secs(60)))
        .await
        .unwrap();
    if let Some(id) = &other.lease_id {
        c.lease_release(id).await.unwrap();
    }
    other.acquired
}

/// Polls until the key's slot is free, failing after a deadline (no fixed sleep).
async fn until_free(c: &Client, key: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !slot_is_free(c, key).await {
        assert!(
            Instant::now() < deadline,
            "{what}: the slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for the guard to report its loss, failing after a deadline.
async fn lost(guard: &LeaseGuard) -> LeaseLost {
    tokio::time::timeout(Duration::from_secs(10), guard.lost())
        .await
        .expect("the guard never reported its lease lost")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_guard_keeps_its_slot_past_three_ttls_by_renewing_it() {
    // The real clock: without renewals the lease would lapse after 1.5 s.
    let server = Server::start(SystemClock::new()).await;
    let c = &server.client;
    let ttl = Duration::from_millis(1_500);
    let held = guard(c, &one_slot("guard:renewed", "w1", ttl)).await;
    let first_expiry = held.expires_at_ms();
    let start = Instant::now();
    while start.elapsed() < 3 * ttl + ttl / 3 {
        assert!(
            !slot_is_free(c, "guard:renewed").await,
            "another holder got the slot after {:?}: the lease was not renewed",
            start.elapsed()
        );
        assert!(!held.is_lost(), "{:?}", held.lost_reason());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(held.expires_at_ms() > first_expiry);
    assert!(held.release().await.unwrap());
    assert!(slot_is_free(c, "guard:renewed").await);
    server.stop().await;
}

#[tokio::test]
async fn dropping_a_lease_guard_frees_its_slot_from_any_thread() {
    // A frozen clock and a long ttl: the slot frees only if the drop releases it.
    let server = Server::start(fake_clock()).await;
    let c = &server.client;
    let ttl = Duration::from_secs(60);
    let held = guard(c, &one_slot("guard:dropped", "w1", ttl)).await;
    assert_eq!(held.ttl(), ttl);
    assert_eq!((held.lease().limit, held.lease().remaining), (1, 0));

    // A full key is an answer, with its retry time, as for `lease_acquire`.
    let denied = c
        .lease_guard(&one_slot("guard:dropped", "w2", ttl))
        .await
        .unwrap()
        .unwrap_err();
    assert!(!denied.acquired);
    assert!(denied.retry_after_ms.unwrap() > 0);

    drop(held);
    until_free(c, "guard:dropped", "dropped in the runtime").await;

    // Dropped on a thread with no runtime: the renewing task still releases it.
    let held = guard(c, &one_slot("guard:dropped", "w2", ttl)).await;
    assert!(!slot_is_free(c, "guard:dropped").await);
    std::thread::spawn(move || drop(held)).join().unwrap();
    until_free(c, "guard:dropped", "dropped on a plain thread").await;
    server.stop().await;
}

#[tokio::test]
async fn releasing_a_lease_guard_frees_its_slot_and_answers_ok() {
    let server = Server::start(fake_clock()).await;
    let c = &server.client;
    let held = guard(
        c,
        &one_slot("guard:released", "w1", Duration::from_secs(60)),
    )
    .await;
    let id = held.lease_id().to_owned();
    assert!(!slot_is_free(c, "guard:released").await);
    assert!(held.release().await.unwrap(), "it was held");
    // Awaited: free now, no polling.
    assert!(slot_is_free(c, "guard:released").await);
    let gone = c.lease_release(&id).await.unwrap_err();
    assert_eq!(gone.code(), Some(&ErrorCode::UnknownLease));

    // A declared limit without a ttl in the request: renewed with the limit's lease_ttl.
    c.put_limit(
        "db",
        &LimitSpec {
            limit: Some(1),
            lease_ttl: Some("1m30s".into()),
            ..LimitSpec::default()
        }
        .with(|p| p.algorithm = Some("concurrency".into())),
    )
    .await
    .unwrap();
    let declared = guard(c, &LeaseRequest::new("db").holder("w1")).await;
    assert_eq!(declared.ttl(), Duration::from_secs(90));
    assert_eq!(
        declared.expires_at_ms(),
        server.state.now().as_millis_floor() + 90_000
    );
    assert!(declared.release().await.unwrap());
    assert_eq!(c.get_limit("db").await.unwrap().used, 0);
    server.stop().await;
}

#[tokio::test]
async fn a_lease_guard_whose_lease_was_released_elsewhere_reports_it_lost() {
    // Frozen server clock: only the other call ends the lease. Renewals every 100 ms.
    let server = Server::start(fake_clock()).await;
    let c = &server.client;
    let held = guard(
        c,
        &one_slot("guard:taken", "w1", Duration::from_millis(300)),
    )
    .await;
    assert!(!held.is_lost());
    // Another call with the same lease id (the same holder, elsewhere) releases it.
    c.lease_release(held.lease_id()).await.unwrap();
    match lost(&held).await {
        LeaseLost::Refused(e) => assert_eq!(e.code(), Some(&ErrorCode::LeaseExpired)),
        other => panic!("{other:?}"),
    }
    assert!(held.is_lost());
    assert!(matches!(held.lost_reason(), Some(LeaseLost::Refused(_))));
    // The slot was someone else's to take; releasing the lost guard touches nothing.
    let other = guard(c, &one_slot("guard:taken", "w2", Duration::from_secs(60))).await;
    assert!(!held.release().await.unwrap(), "not held any more");
    assert!(!slot_is_free(c, "guard:taken").await, "w2 keeps its slot");
    drop(other);
    server.stop().await;
}

#[tokio::test]
async fn a_lease_guard_whose_lease_expired_on_the_server_reports_it_lost() {
    let clock = fake_clock();
    let server = Server::start(clock.clone()).await;
    let c = &server.client;
    let held = guard(
        c,
        &one_slot("guard:expired", "w1", Duration::from_millis(300)),
    )
    .await;
    // The server's clock jumps past the expiry (a paused process, say): the next renewal
    // finds the lease gone.
    clock.advance(Duration::from_secs(5));
    match lost(&held).await {
        LeaseLost::Refused(e) => assert_eq!(e.code(), Some(&ErrorCode::LeaseExpired)),
        other => panic!("{other:?}"),
    }
    assert!(held.is_lost());
    server.stop().await;
}

#[tokio::test]
async fn a_lease_guard_that_cannot_renew_before_its_ttl_lapses_reports_it_lost() {
    let server = Server::start(fake_clock()).await;
    let c = server.client.clone();
    let held = guard(
        &c,
        &one_slot("guard:lapsed", "w1", Duration::from_millis(600)),
    )
    .await;
    server.stop().await; // nothing answers any more
    match lost(&held).await {
        LeaseLost::Lapsed(last) => {
            if let Some(e) = last {
                assert!(e.is_transient(), "{e}");
            }
        }
        other => panic!("{other:?}"),
    }
    assert!(held.is_lost());
    // Releasing reports the server still unreachable.
    assert!(held.release().await.unwrap_err().is_transient());
}

#[tokio::test]
async fn a_lease_guard_retries_renewals_through_an_outage_shorter_than_its_ttl() {
    // A frozen server clock: the lease cannot expire on the server; only the guard could give
    // up. Renewals every 2 s, an outage of 2.1 s, so at least one renewal fails; retries
    // every second at most, so one gets through well before the 6 s lapse.
    let clock = fake_clock();
    let server = Server::start(clock.clone()).await;
    let held = guard(
        &server.client,
        &one_slot("guard:outage", "w1", Duration::from_secs(6)),
    )
    .await;
    let before = held.expires_at_ms();
    let server = server.restart_after(Duration::from_millis(2_100)).await;
    clock.advance(Duration::from_millis(1)); // a renewal after this moves the expiry
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.expires_at_ms() <= before {
        assert!(!held.is_lost(), "gave up: {:?}", held.lost_reason());
        assert!(Instant::now() < deadline, "never renewed after the outage");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!held.is_lost());
    assert!(!slot_is_free(&server.client, "guard:outage").await);
    assert!(held.release().await.unwrap());
    server.stop().await;
}
