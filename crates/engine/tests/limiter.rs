//! The embeddable `Limiter`: acquire (try and wait), refunds, redefinition, leases, barriers,
//! and the errors a caller can meet. Async tests run on tokio's paused clock, which
//! `TokioClock` follows, so waits take no real time.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use std::time::Duration;

use tollgate::{AcquireEntry, Error, FakeClock, Limiter, MemoryStore, Target, TokioClock};
use tollgate_core::{
    Align, Barrier, Concurrency, FixedWindow, Gcra, Nanos, Period, RateLimit, SlidingWindow,
    TokenBucket,
};

const T0: Nanos = Nanos::from_secs(1_700_000_000);

fn gcra(rate: &str, burst: u64) -> RateLimit {
    RateLimit::Gcra(Gcra::new(rate.parse().unwrap(), burst).unwrap())
}

fn sliding(limit: u64, period: Period) -> RateLimit {
    RateLimit::SlidingWindow(SlidingWindow::new(limit, period).unwrap())
}

fn fake() -> (Limiter, FakeClock) {
    let clock = FakeClock::new(T0);
    (
        Limiter::with_store(MemoryStore::new(), clock.clone()),
        clock,
    )
}

fn paused() -> Limiter {
    Limiter::with_store(MemoryStore::new(), TokioClock::new(T0))
}

#[test]
fn a_denied_multi_key_request_consumes_nothing() {
    let (limiter, _) = fake();
    limiter
        .upsert("wide", sliding(100, Period::MINUTE))
        .unwrap();
    limiter
        .upsert("narrow", sliding(1, Period::MINUTE))
        .unwrap();
    let both = [AcquireEntry::new("wide", 5), AcquireEntry::new("narrow", 1)];
    assert!(limiter.try_acquire(&both).unwrap().allowed);
    let again = limiter.try_acquire(&both).unwrap();
    assert!(!again.allowed);
    assert_eq!(again.first_denied(), Some(1));
    assert!(again.decisions[0].allowed, "wide alone would have admitted");
    assert_eq!(
        limiter
            .try_acquire(&[AcquireEntry::new("wide", 1)])
            .unwrap()
            .decisions[0]
            .remaining,
        94
    );
}

#[test]
fn entries_naming_the_same_key_sum_their_units() {
    let (limiter, _) = fake();
    limiter.upsert("k", sliding(5, Period::MINUTE)).unwrap();
    let r = limiter
        .try_acquire(&[AcquireEntry::new("k", 2), AcquireEntry::new("k", 3)])
        .unwrap();
    assert!(r.allowed);
    assert_eq!(r.decisions[0], r.decisions[1]);
    assert_eq!(r.decisions[0].remaining, 0);
    let e = limiter
        .try_acquire(&[AcquireEntry::new("k", 3), AcquireEntry::new("k", 3)])
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InsufficientCapacity {
                units: 6,
                capacity: 5,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn errors_are_specific() {
    let (limiter, _) = fake();
    limiter
        .upsert("conc", Concurrency::new(1, Period::SECOND).unwrap())
        .unwrap();
    let cases: [(&[AcquireEntry<'_>], &str); 5] = [
        (
            &[AcquireEntry::new("missing", 1)],
            "no limit is declared under key \"missing\"",
        ),
        (&[AcquireEntry::new("conc", 1)], "is a concurrency limit"),
        (&[AcquireEntry::new("", 1)], "must not be empty"),
        (
            &[AcquireEntry::dynamic("u", gcra("1/s", 1), 0)],
            "units must be at least 1",
        ),
        (&[], "at least one key"),
    ];
    for (entries, message) in cases {
        let e = limiter.try_acquire(entries).unwrap_err();
        assert!(
            e.to_string().contains(message),
            "{e} should mention {message:?}"
        );
        assert!(!e.is_transient());
    }
    let long = "k".repeat(tollgate::MAX_KEY_LEN + 1);
    assert!(matches!(
        limiter.try_acquire(&[AcquireEntry::dynamic(&long, gcra("1/s", 1), 1)]),
        Err(Error::InvalidKey { .. })
    ));
}

#[test]
fn redefining_a_limit_keeps_usage_lower_applies_at_once_and_higher_too() {
    let (limiter, _) = fake();
    limiter.upsert("k", sliding(10, Period::MINUTE)).unwrap();
    assert!(
        limiter
            .try_acquire(&[AcquireEntry::new("k", 6)])
            .unwrap()
            .allowed
    );
    limiter.upsert("k", sliding(5, Period::MINUTE)).unwrap();
    assert!(
        !limiter
            .try_acquire(&[AcquireEntry::new("k", 1)])
            .unwrap()
            .allowed,
        "6 used of 5"
    );
    limiter.upsert("k", sliding(20, Period::MINUTE)).unwrap();
    let r = limiter.try_acquire(&[AcquireEntry::new("k", 14)]).unwrap();
    assert!(r.allowed, "raised at once: 14 more fit in 20");
    assert_eq!(r.decisions[0].remaining, 0);
}

#[test]
fn refunds_give_units_back() {
    let (limiter, _) = fake();
    let bucket = RateLimit::TokenBucket(TokenBucket::new(3, "1/h".parse().unwrap()).unwrap());
    limiter.upsert("tokens", bucket).unwrap();
    assert!(
        limiter
            .try_acquire(&[AcquireEntry::new("tokens", 3)])
            .unwrap()
            .allowed
    );
    assert!(
        !limiter
            .try_acquire(&[AcquireEntry::new("tokens", 1)])
            .unwrap()
            .allowed
    );
    limiter.refund(&[AcquireEntry::new("tokens", 2)]).unwrap();
    assert!(
        limiter
            .try_acquire(&[AcquireEntry::new("tokens", 2)])
            .unwrap()
            .allowed
    );
}

#[test]
fn listing_shows_static_limits_and_live_dynamic_keys_only() {
    let (limiter, clock) = fake();
    limiter
        .upsert("static", sliding(3, Period::SECOND))
        .unwrap();
    let per_user = gcra("1/s", 1);
    limiter
        .try_acquire(&[AcquireEntry::dynamic("user:1", per_user, 1)])
        .unwrap();
    let keys: Vec<_> = limiter.list().unwrap().into_iter().map(|i| i.key).collect();
    assert_eq!(keys, ["static", "user:1"]);
    clock.advance(Nanos::from_secs(2));
    let keys: Vec<_> = limiter.list().unwrap().into_iter().map(|i| i.key).collect();
    assert_eq!(
        keys,
        ["static"],
        "the dynamic key is fresh again, so it is forgotten"
    );
    assert!(limiter.remove("static").unwrap());
    assert!(limiter.list().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn waiting_acquire_answers_as_soon_as_admitted() {
    let limiter = paused();
    let window =
        RateLimit::FixedWindow(FixedWindow::new(2, Period::SECOND, Align::FirstUse).unwrap());
    limiter.upsert("w", window).unwrap();
    let e = [AcquireEntry::new("w", 2)];
    assert!(limiter.acquire(&e, Duration::ZERO).await.unwrap().allowed);
    let start = limiter.now();
    let r = limiter.acquire(&e, Duration::from_secs(5)).await.unwrap();
    assert!(r.allowed);
    assert_eq!(
        limiter.now() - start,
        Nanos::from_secs(1),
        "woke exactly when the window reset"
    );
}

#[tokio::test(start_paused = true)]
async fn waiting_acquire_gives_up_at_once_when_the_wait_exceeds_its_budget() {
    let limiter = paused();
    limiter.upsert("slow", gcra("1/m", 1)).unwrap();
    let e = [AcquireEntry::new("slow", 1)];
    assert!(limiter.try_acquire(&e).unwrap().allowed);
    let start = limiter.now();
    let r = limiter.acquire(&e, Duration::from_secs(10)).await.unwrap();
    assert!(!r.allowed);
    assert_eq!(limiter.now(), start, "no pointless sleep");
    assert_eq!(r.retry_after(), Nanos::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn concurrency_leases_release_on_drop_and_expire_only_their_own_slot() {
    let limiter = paused();
    let conc = Concurrency::new(2, Period::from_secs(10).unwrap()).unwrap();
    limiter.upsert("db", conc).unwrap();
    let a = limiter
        .try_lease(Target::Static("db"), "w1")
        .unwrap()
        .unwrap();
    let mut b = limiter
        .try_lease(Target::Static("db"), "w2")
        .unwrap()
        .unwrap();
    assert!(
        limiter
            .try_lease(Target::Static("db"), "w3")
            .unwrap()
            .is_err()
    );
    drop(a);
    let c = limiter
        .try_lease(Target::Static("db"), "w3")
        .unwrap()
        .unwrap();
    // b renews; c does not and lapses after 10 s: only c's slot frees.
    tokio::time::sleep(Duration::from_secs(6)).await;
    b.renew().unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let d = limiter
        .try_lease(Target::Static("db"), "w4")
        .unwrap()
        .unwrap();
    assert!(
        limiter
            .try_lease(Target::Static("db"), "w5")
            .unwrap()
            .is_err(),
        "b and d hold both slots"
    );
    assert!(
        !c.release().unwrap(),
        "c had expired: releasing it frees nothing"
    );
    assert!(
        limiter
            .try_lease(Target::Static("db"), "w5")
            .unwrap()
            .is_err()
    );
    drop((b, d));
}

#[tokio::test(start_paused = true)]
async fn waiting_for_a_lease_wakes_when_a_holder_lapses() {
    let limiter = paused();
    let conc = Concurrency::new(1, Period::from_secs(3).unwrap()).unwrap();
    let held = limiter
        .try_lease(Target::Dynamic("job:7", conc), "w1")
        .unwrap()
        .unwrap();
    let start = limiter.now();
    let next = limiter
        .lease(Target::Dynamic("job:7", conc), "w2", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(next.is_ok());
    assert_eq!(limiter.now() - start, Nanos::from_secs(3));
    assert!(!held.release().unwrap(), "the first lease had lapsed");
}

#[tokio::test(start_paused = true)]
async fn barrier_releases_all_parties_together() {
    let limiter = paused();
    limiter
        .create_barrier("b", Barrier::new(5, Period::MINUTE).unwrap())
        .unwrap();
    let mut waiting = Vec::new();
    for _ in 0..4 {
        let l = limiter.clone();
        waiting.push(tokio::spawn(async move {
            l.wait_barrier("b", Duration::from_secs(30)).await
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for w in &waiting {
        assert!(!w.is_finished(), "four of five arrived: nobody passes yet");
    }
    assert!(
        limiter
            .wait_barrier("b", Duration::from_secs(30))
            .await
            .unwrap()
    );
    for w in waiting {
        assert!(w.await.unwrap().unwrap());
    }
}

#[tokio::test(start_paused = true)]
async fn barrier_times_out_and_never_passes_when_missing_or_expired() {
    let limiter = paused();
    limiter
        .create_barrier(
            "b",
            Barrier::new(2, Period::from_secs(10).unwrap()).unwrap(),
        )
        .unwrap();
    assert!(
        !limiter
            .wait_barrier("b", Duration::from_secs(1))
            .await
            .unwrap(),
        "timed out"
    );
    let missing = limiter
        .wait_barrier("nope", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(
        matches!(missing, Error::Core(tollgate_core::Error::BarrierMissing)),
        "{missing}"
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let expired = limiter
        .wait_barrier("b", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(
        matches!(
            expired,
            Error::Core(tollgate_core::Error::BarrierExpired { .. })
        ),
        "{expired}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_waiter_whose_barrier_expires_gets_an_error_not_a_pass() {
    let limiter = paused();
    limiter
        .create_barrier("b", Barrier::new(3, Period::from_secs(2).unwrap()).unwrap())
        .unwrap();
    let r = limiter.wait_barrier("b", Duration::from_secs(60)).await;
    assert!(
        matches!(
            r,
            Err(Error::Core(tollgate_core::Error::BarrierExpired { .. }))
        ),
        "{r:?}"
    );
}

#[test]
fn limiters_sharing_a_store_never_hand_out_the_same_lease_id() {
    // Why: lease ids are the only identity of a lease; two nodes created at the same instant
    // once produced equal ids, so the second "renewed" the first's lease: two holders, one slot.
    let store = std::sync::Arc::new(MemoryStore::new());
    let clock = FakeClock::new(T0);
    let a = Limiter::with_store(store.clone(), clock.clone());
    let b = Limiter::with_store(store, clock);
    a.upsert("db", Concurrency::new(1, Period::MINUTE).unwrap())
        .unwrap();
    let held = a.try_lease(Target::Static("db"), "a").unwrap().unwrap();
    assert!(
        b.try_lease(Target::Static("db"), "b").unwrap().is_err(),
        "one slot, already held"
    );
    drop(held);
}
