//! A Redis Cluster of the test's own (three primaries): with `cluster(true)` every key of a
//! store shares the slot of `{<prefix>}`, the store talks to that slot's owner whichever node
//! it was given, and everything works as on one server — the conformance suite unchanged, and
//! the run queue.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

mod common;

use std::time::Duration;

use serde_json::json;
use tollgate::testkit::{Config, check_conformance};
use tollgate::{FakeClock, RunState};
use tollgate_core::Nanos;
use tollgate_redis::{RedisEngine, RedisStore};

fn store(url: &str) -> RedisStore {
    RedisStore::builder(url)
        .prefix(common::fresh_prefix())
        .use_server_time(false)
        .cluster(true)
        .build()
        .unwrap()
}

#[test]
fn the_conformance_suite_passes_on_a_redis_cluster() {
    let Some(cluster) = common::own_cluster("the_conformance_suite_passes_on_a_redis_cluster")
    else {
        return;
    };
    // Seeds on every node: most stores' slots live on another node than their seed.
    let n = std::sync::atomic::AtomicUsize::new(0);
    check_conformance(
        || {
            let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            store(&cluster.url(i % 3))
        },
        Config {
            resolution: Nanos::from_micros(1),
            cases: 128,
            ..Config::default()
        },
    );
}

#[tokio::test]
async fn every_key_of_a_store_lives_in_one_slot() {
    let Some(cluster) = common::own_cluster("every_key_of_a_store_lives_in_one_slot") else {
        return;
    };
    let s = store(&cluster.url(0));
    assert!(
        s.prefix().starts_with('{') && s.prefix().ends_with('}'),
        "{}",
        s.prefix()
    );
    let limiter = tollgate::AsyncLimiter::new(
        std::sync::Arc::new(s.clone()),
        FakeClock::new(Nanos::from_secs(1_700_000_000)),
    );
    for key in ["a", "b", "{other}:c", "user:42"] {
        let limit = tollgate_core::RateLimit::Gcra(
            tollgate_core::Gcra::new("10/s".parse().unwrap(), 10).unwrap(),
        );
        limiter.upsert(key, limit).await.unwrap();
        assert!(
            limiter
                .try_acquire(&[tollgate::AcquireEntry::new(key, 1)])
                .await
                .unwrap()
                .allowed
        );
    }
    // Several keys in one request: atomic, even those naming another tag.
    let all = limiter
        .try_acquire(&[
            tollgate::AcquireEntry::new("a", 1),
            tollgate::AcquireEntry::new("{other}:c", 1),
        ])
        .await
        .unwrap();
    assert!(all.allowed);
    let mut slots = std::collections::BTreeSet::new();
    for port in &cluster.ports {
        let mut con = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
            .unwrap()
            .get_connection()
            .unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", s.prefix()))
            .query(&mut con)
            .unwrap();
        for k in keys {
            let slot: i64 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(&k)
                .query(&mut con)
                .unwrap();
            slots.insert(slot);
        }
    }
    assert_eq!(slots.len(), 1, "{slots:?}");
    assert_eq!(
        limiter.list().await.unwrap().len(),
        4,
        "listing finds every limit on the slot's node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_queue_works_on_a_redis_cluster() {
    let Some(cluster) = common::own_cluster("the_run_queue_works_on_a_redis_cluster") else {
        return;
    };
    let clock = FakeClock::new(Nanos::from_secs(1_700_000_000));
    let a = RedisEngine::new(store(&cluster.url(1)), clock.clone());
    // A second node seeded on another cluster node, same prefix.
    let b = RedisEngine::new(
        RedisStore::builder(cluster.url(2))
            .prefix(a.store().prefix().trim_matches(['{', '}']))
            .use_server_time(false)
            .cluster(true)
            .build()
            .unwrap(),
        clock.clone(),
    );
    a.put_limit(
        "k",
        serde_json::from_value(json!({"algorithm": "gcra", "limit": 1, "period": "1s"})).unwrap(),
    )
    .await
    .unwrap();
    b.put_task(
        "t",
        serde_json::from_value(json!({"rate_limits": [{"static_key": "k"}]})).unwrap(),
    )
    .await
    .unwrap();
    let first = a.enqueue("t", json!({}), json!({})).await.unwrap();
    let second = b.enqueue("t", json!({}), json!({})).await.unwrap();
    let got = b
        .lease("w", &["t".to_owned()], 5, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, first.id);
    let parked = a.run(&second.id).await.unwrap();
    assert_eq!(parked.state, RunState::Waiting);
    assert_eq!(parked.waiting_on.as_deref(), Some("k"));
    clock.advance(Nanos::from_secs(1));
    let got = a
        .lease("w", &["t".to_owned()], 5, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(got[0].id, second.id);
    b.complete(&first.id, None, None).await.unwrap();
    a.complete(&second.id, None, None).await.unwrap();
    assert_eq!(
        b.runs(Some("t"), Some(RunState::Succeeded), 10)
            .await
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn a_store_finds_its_slot_again_when_its_seed_node_is_gone() {
    let Some(mut cluster) =
        common::own_cluster("a_store_finds_its_slot_again_when_its_seed_node_is_gone")
    else {
        return;
    };
    // A store whose slot lives on another node than its seed (node 0).
    let (s, owner_port) = loop {
        let s = store(&cluster.url(0));
        let mut con = redis::Client::open(cluster.url(0).as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        // Node 0 redirects a key of the store's slot to the slot's owner, or serves it.
        let owner = match redis::cmd("GET")
            .arg(format!("{}probe", s.prefix()))
            .query::<Option<String>>(&mut con)
        {
            Ok(_) => Some(cluster.ports[0]),
            // `MOVED <slot> <host>:<port>`
            Err(e) => e
                .redirect_node()
                .and_then(|(addr, _slot)| addr.rsplit(':').next()?.parse().ok()),
        };
        if let Some(port) = owner
            && port != cluster.ports[0]
        {
            break (s, port);
        }
    };
    let limiter = tollgate::AsyncLimiter::new(
        std::sync::Arc::new(s),
        FakeClock::new(Nanos::from_secs(1_700_000_000)),
    );
    let limit = tollgate_core::RateLimit::Gcra(
        tollgate_core::Gcra::new("3/h".parse().unwrap(), 3).unwrap(),
    );
    limiter.upsert("k", limit).await.unwrap();
    assert!(
        limiter
            .try_acquire(&[tollgate::AcquireEntry::new("k", 1)])
            .await
            .unwrap()
            .allowed
    );
    // The seed dies, and the store's connections to the owner are dropped: it must find the
    // owner again through the other nodes it learnt of.
    cluster.kill(0);
    let mut owner = redis::Client::open(format!("redis://127.0.0.1:{owner_port}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    let _: redis::Value = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query(&mut owner)
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let decision = loop {
        match limiter
            .try_acquire(&[tollgate::AcquireEntry::new("k", 1)])
            .await
        {
            Ok(d) => break d,
            Err(e) => {
                assert!(e.is_transient(), "{e}");
                assert!(
                    std::time::Instant::now() < deadline,
                    "never found the slot again: {e}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    assert!(decision.allowed);
    assert_eq!(
        decision.decisions[0].remaining, 1,
        "the state survived: 2 of 3 used"
    );
}
