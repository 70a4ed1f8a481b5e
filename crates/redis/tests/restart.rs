//! A Redis restart is survived: while the server is down every call fails with a transient
//! error (quickly, never a panic); once it is back, calls work again without a new store.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use tollgate::{AcquireEntry, AsyncStore};
use tollgate_core::{Barrier, Concurrency, Gcra, Limit, Nanos, Period, RateLimit, SlidingWindow};
use tollgate_redis::RedisStore;

/// A store on `url` (fresh prefix, caller time, connect and response timeouts `timeout`) with
/// limit "api" declared (gcra 100/s), the time it was declared at, and that limit.
async fn store_with_api(url: &str, timeout: Duration) -> (RedisStore, Nanos, RateLimit) {
    let store = RedisStore::builder(url)
        .prefix(common::fresh_prefix())
        .use_server_time(false)
        .connect_timeout(timeout)
        .response_timeout(timeout)
        .build()
        .unwrap();
    let now = Nanos::from_secs(1_700_000_000);
    let limit = RateLimit::Gcra(Gcra::new("100/s".parse().unwrap(), 100).unwrap());
    store
        .put_limit("api", Limit::Rate(limit), now)
        .await
        .unwrap();
    (store, now, limit)
}

#[tokio::test]
async fn a_redis_restart_gives_transient_errors_then_works_again() {
    let Some(mut redis) =
        common::own_redis("a_redis_restart_gives_transient_errors_then_works_again")
    else {
        return;
    };
    let (store, now, limit) = store_with_api(&redis.url, Duration::from_millis(300)).await;
    for _ in 0..4 {
        assert!(
            store
                .acquire(&[AcquireEntry::new("api", 1)], now)
                .await
                .unwrap()
                .allowed
        );
    }

    redis.kill();
    let started = Instant::now();
    // Pooled connections to the old process, then new connections: all fail, transiently.
    for i in 0..6 {
        let e = store
            .acquire(&[AcquireEntry::new("api", 1)], now)
            .await
            .expect_err("Redis is down");
        assert!(e.is_transient(), "call {i}: {e}");
    }
    let c = Concurrency::new(1, Period::SECOND).unwrap();
    let b = Barrier::new(2, Period::SECOND).unwrap();
    let failures = [
        store
            .lease_acquire(tollgate::Target::Dynamic("w", c), "l1", "h", None, now)
            .await
            .err(),
        store.barrier_create("b", b, now).await.err(),
        store.get_limit("api", now).await.err(),
        store.list_limits(now).await.err(),
        store.put_limit("x", Limit::Rate(limit), now).await.err(),
        store.ping().await.err(),
    ];
    for e in failures {
        let e = e.expect("Redis is down");
        assert!(e.is_transient(), "{e}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failing took {:?}",
        started.elapsed()
    );

    redis.start().expect("redis-server restarts");
    // The server kept no data (no persistence) and no scripts: both come back on demand.
    let dynamic = RateLimit::SlidingWindow(SlidingWindow::new(2, Period::MINUTE).unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    let decision = loop {
        match store
            .acquire(&[AcquireEntry::dynamic("u1", dynamic, 1)], now)
            .await
        {
            Ok(d) => break d,
            Err(e) => {
                assert!(e.is_transient(), "{e}");
                assert!(Instant::now() < deadline, "no recovery after restart: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    assert!(decision.allowed);
    assert_eq!(decision.decisions[0].remaining, 1);
    store
        .put_limit("api", Limit::Rate(limit), now)
        .await
        .unwrap();
    assert!(
        store
            .acquire(&[AcquireEntry::new("api", 1)], now)
            .await
            .unwrap()
            .allowed
    );
}

/// A Redis that stops answering never stalls the runtime: on a single-threaded runtime another
/// task runs to its end while a call waits for its reply (with IO blocking the thread, as
/// before the store was asynchronous, it could not run until the call gave up).
#[tokio::test(flavor = "current_thread")]
async fn a_hung_redis_never_blocks_the_runtime_thread() {
    let Some(redis) = common::own_redis("a_hung_redis_never_blocks_the_runtime_thread") else {
        return;
    };
    // Connected and working before Redis hangs.
    let (store, now, _) = store_with_api(&redis.url, Duration::from_secs(2)).await;

    redis.pause();
    let other = tokio::spawn(tokio::time::sleep(Duration::from_millis(20)));
    let answer = store.acquire(&[AcquireEntry::new("api", 1)], now).await;
    let other_finished = other.is_finished();
    redis.resume();

    let e = answer.expect_err("Redis never answered");
    assert!(e.is_transient(), "{e}");
    assert!(
        other_finished,
        "another task on the runtime could not run while the call waited for Redis"
    );
}
