//! SQLite durability through the `Engine`: limits, tasks and runs survive a restart, and the
//! units runs consumed are rebuilt exactly, so a restart never over-admits.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use std::time::Duration;

use serde_json::json;
use tollgate::{Clock, Db, Engine, FakeClock, Limiter, MemoryStore, RunState, TokioClock};
use tollgate_core::Nanos;

const T0: Nanos = Nanos::from_secs(1_700_000_000);

fn open(dir: &std::path::Path, clock: impl Clock + 'static) -> (Engine, bool) {
    let (db, loaded) = Db::open(dir).unwrap();
    let clean = loaded.clean_shutdown;
    let limiter = Limiter::with_store(MemoryStore::new(), clock);
    (Engine::with_db(limiter, db, loaded).unwrap(), clean)
}

// A fake clock on real tokio time: the database writer is a thread tokio cannot see, so paused
// time would auto-advance past lease expiries while a commit is awaited.
#[tokio::test]
async fn runs_limits_and_consumption_survive_an_unclean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(T0);
    let (e, _) = open(dir.path(), clock.clone());
    e.put_limit(
        "test-limit",
        serde_json::from_value(json!({"algorithm": "gcra", "rate": "2/m", "burst": 2})).unwrap(),
    )
    .await
    .unwrap();
    e.put_task(
        "t",
        serde_json::from_value(json!({"rate_limits": [{"static_key": "test-limit", "units": 1}]}))
            .unwrap(),
    )
    .await
    .unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(e.enqueue("t", json!({"i": i}), json!({})).await.unwrap().id);
    }
    let leased = e
        .lease("w1", &["t".into()], 10, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(leased.len(), 2);
    e.complete(&ids[0], Some(1), Some(json!("done")))
        .await
        .unwrap();
    // No close(): the engine is dropped as if the process had died.
    drop(e);

    let (e, clean) = open(dir.path(), clock.clone());
    assert!(!clean, "an unclean stop is detected");
    assert_eq!(e.run(&ids[0]).unwrap().state, RunState::Succeeded);
    assert_eq!(e.run(&ids[0]).unwrap().output, Some(json!("done")));
    assert_eq!(
        e.run(&ids[1]).unwrap().state,
        RunState::Running,
        "a leased run keeps its lease"
    );
    let parked = e.run(&ids[2]).unwrap();
    assert_eq!(
        (
            parked.state,
            parked.waiting_on.as_deref(),
            parked.eligible_at_ms
        ),
        (
            RunState::Waiting,
            Some("test-limit"),
            Some(T0.as_millis_floor() + 30_000)
        ),
        "a parked run is parked again, before any lease call, with the same eligible_at"
    );
    assert!(e.task("t").is_some());
    // Both units of the minute were consumed before the restart: nothing more is admitted.
    let again = e
        .lease("w1", &["t".into()], 10, Duration::ZERO)
        .await
        .unwrap();
    assert!(again.is_empty(), "replayed consumption: {again:?}");
    let waiting = e.runs(Some("t"), Some(RunState::Waiting), 10);
    assert_eq!(waiting.len(), 3);
    // gcra 2/m: the next unit fits 30 s after the first two.
    assert_eq!(
        e.run(&ids[2]).unwrap().eligible_at_ms,
        Some(T0.as_millis_floor() + 30_000)
    );
    // The lease from before the restart is still honoured, and expires on time if not.
    e.complete(&ids[1], Some(1), None).await.unwrap();
    e.close().await;

    let (e, clean) = open(dir.path(), clock.clone());
    assert!(clean, "close() records a clean shutdown");
    assert_eq!(e.run(&ids[1]).unwrap().state, RunState::Succeeded);
    assert_eq!(e.runs(Some("t"), None, 10).len(), 5);
}

#[tokio::test(start_paused = true)]
async fn restored_parked_runs_keep_their_fifo_order() {
    // The lease outlives the test: paused time jumps ahead while a commit is awaited from the
    // database thread, and an expiring first lease would rejoin the queue.
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = open(dir.path(), TokioClock::new(T0));
    e.put_limit(
        "one",
        serde_json::from_value(json!({"algorithm": "gcra", "rate": "1/s"})).unwrap(),
    )
    .await
    .unwrap();
    e.put_task(
        "t",
        serde_json::from_value(
            json!({"rate_limits": [{"static_key": "one", "units": 1}], "lease_timeout": "1h"}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(e.enqueue("t", json!({}), json!({})).await.unwrap().id);
    }
    assert_eq!(
        e.lease("w", &["t".into()], 10, Duration::ZERO)
            .await
            .unwrap()
            .len(),
        1
    );
    drop(e);
    let (e, _) = open(dir.path(), TokioClock::new(T0));
    let mut order = Vec::new();
    while order.len() < 3 {
        for r in e
            .lease("w", &["t".into()], 10, Duration::from_secs(5))
            .await
            .unwrap()
        {
            order.push(r.id);
        }
    }
    assert_eq!(order, ids[1..]);
}

fn used(e: &Engine, key: &str) -> (u64, u64) {
    match e.limiter().get(key).unwrap().unwrap().state {
        tollgate::StateView::Rate(u) => (u.used, u.remaining),
        other => panic!("{other:?}"),
    }
}

async fn direct(e: &Engine, key: &str, units: u32) {
    let entries = [tollgate::AcquireEntry::new(key, units)];
    assert!(e.limiter().try_acquire(&entries).unwrap().allowed);
    e.note_direct_use(&entries).await.unwrap();
}

#[tokio::test]
async fn a_clean_restart_restores_limiter_state_exactly_without_counting_runs_twice() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(T0);
    let (e, _) = open(dir.path(), clock.clone());
    e.put_limit(
        "api",
        serde_json::from_value(json!({"rate": "10/m"})).unwrap(),
    )
    .await
    .unwrap();
    e.put_task(
        "t",
        serde_json::from_value(json!({"rate_limits": [{"static_key": "api", "units": 1}]}))
            .unwrap(),
    )
    .await
    .unwrap();
    direct(&e, "api", 4).await;
    for _ in 0..2 {
        e.enqueue("t", json!({}), json!({})).await.unwrap();
    }
    assert_eq!(
        e.lease("w", &["t".into()], 10, Duration::ZERO)
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(used(&e, "api"), (6, 4));
    e.close().await;
    drop(e);
    let (e, clean) = open(dir.path(), clock.clone());
    assert!(clean);
    assert_eq!(
        used(&e, "api"),
        (6, 4),
        "4 direct + 2 by runs, exactly, not replayed twice"
    );
}

#[tokio::test]
async fn after_a_crash_direct_use_counts_as_fully_used_for_one_period() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(T0);
    let (e, _) = open(dir.path(), clock.clone());
    e.put_limit(
        "api",
        serde_json::from_value(json!({"rate": "10/m"})).unwrap(),
    )
    .await
    .unwrap();
    e.put_limit(
        "idle",
        serde_json::from_value(json!({"rate": "10/m"})).unwrap(),
    )
    .await
    .unwrap();
    direct(&e, "api", 1).await;
    drop(e); // a crash: no close()
    let (e, clean) = open(dir.path(), clock.clone());
    assert!(!clean);
    // Uses after the last snapshot are unknown, so the key is treated as fully used…
    assert_eq!(used(&e, "api").1, 0, "never over-admit after a crash");
    assert_eq!(
        used(&e, "idle").1,
        10,
        "a limit without direct use is not touched"
    );
    // …for one period from when the crash can have happened at the latest.
    clock.advance(Nanos::from_secs(60 + 2 + 2));
    assert_eq!(used(&e, "api").1, 10);
}

#[tokio::test]
async fn forgotten_runs_are_deleted_from_the_database_too() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(T0);
    let (e, _) = open(dir.path(), clock.clone());
    e.set_retention(tollgate_core::Period::HOUR);
    e.put_task("t", serde_json::from_value(json!({})).unwrap())
        .await
        .unwrap();
    let old = e.enqueue("t", json!({}), json!({})).await.unwrap().id;
    e.lease("w", &["t".into()], 1, Duration::ZERO)
        .await
        .unwrap();
    e.complete(&old, None, None).await.unwrap();
    clock.advance(Nanos::from_secs(3_601));
    let kept = e.enqueue("t", json!({}), json!({})).await.unwrap().id;
    assert_eq!(e.prune().await.unwrap(), 1);
    drop(e);
    let (e, _) = open(dir.path(), clock.clone());
    assert!(e.run(&old).is_err(), "not restored");
    assert_eq!(e.run(&kept).unwrap().state, RunState::Queued);
}
