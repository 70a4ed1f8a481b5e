//! Behaviours of the Redis store beyond the conformance suite: namespaces, expiry, the server
//! clock, failures, and what is kept in Redis.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tollgate::{AcquireEntry, AsyncStore, Target};
use tollgate_core::{Barrier, Concurrency, Gcra, Limit, Nanos, Period, RateLimit, SlidingWindow};
use tollgate_redis::RedisStore;

fn gcra(rate: &str, burst: u64) -> RateLimit {
    RateLimit::Gcra(Gcra::new(rate.parse().unwrap(), burst).unwrap())
}

const NOW: Nanos = Nanos::from_secs(1_700_000_000);

fn raw(redis: &common::TestRedis) -> redis::Connection {
    redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap()
}

/// Every Redis key under `prefix`.
fn redis_keys(con: &mut redis::Connection, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query(con)
        .unwrap();
    keys.sort();
    keys
}

#[tokio::test]
async fn a_dynamic_key_never_touches_the_static_limit_of_that_name() {
    let Some(redis) = common::redis("a_dynamic_key_never_touches_the_static_limit_of_that_name")
    else {
        return;
    };
    let store = redis.store();
    store
        .put_limit("stripe-api", Limit::Rate(gcra("1/m", 1)), NOW)
        .await
        .unwrap();
    let dynamic = AcquireEntry::dynamic("stripe-api", gcra("100/m", 100), 50);
    assert!(store.acquire(&[dynamic], NOW).await.unwrap().allowed);
    assert!(
        store
            .acquire(&[AcquireEntry::new("stripe-api", 1)], NOW)
            .await
            .unwrap()
            .allowed
    );
    assert!(
        !store
            .acquire(&[AcquireEntry::new("stripe-api", 1)], NOW)
            .await
            .unwrap()
            .allowed
    );
    assert_eq!(
        store.acquire(&[dynamic], NOW).await.unwrap().decisions[0].remaining,
        0,
        "the dynamic key kept its own 50 + 50"
    );
}

#[tokio::test]
async fn a_multi_key_acquire_is_all_or_nothing_and_sums_units_per_key() {
    let Some(redis) = common::redis("a_multi_key_acquire_is_all_or_nothing_and_sums_units_per_key")
    else {
        return;
    };
    let store = redis.store();
    let per_user = RateLimit::SlidingWindow(SlidingWindow::new(3, Period::MINUTE).unwrap());
    store
        .put_limit("global", Limit::Rate(gcra("100/m", 100)), NOW)
        .await
        .unwrap();
    let both = |units| {
        [
            AcquireEntry::new("global", 1),
            AcquireEntry::dynamic("u", per_user, units),
        ]
    };
    assert!(store.acquire(&both(2), NOW).await.unwrap().allowed);
    let denied = store.acquire(&both(2), NOW).await.unwrap();
    assert!(!denied.allowed);
    assert_eq!(denied.first_denied(), Some(1));
    // Nothing was taken from "global" by the denied request.
    assert_eq!(denied.decisions[0].remaining, 98);
    let got = store
        .acquire(&[AcquireEntry::new("global", 1)], NOW)
        .await
        .unwrap();
    assert_eq!(got.decisions[0].remaining, 98);
    // Entries naming one key share one decision for their summed units: 1 + 1 > 1 left.
    let twice = [
        AcquireEntry::dynamic("u", per_user, 1),
        AcquireEntry::dynamic("u", per_user, 1),
    ];
    let d = store.acquire(&twice, NOW).await.unwrap();
    assert!(!d.allowed);
    assert_eq!(d.decisions[0], d.decisions[1]);
}

#[tokio::test]
async fn state_expires_once_fresh_and_definitions_never_expire() {
    let Some(redis) = common::redis("state_expires_once_fresh_and_definitions_never_expire") else {
        return;
    };
    let store = redis.store();
    let mut con = raw(&redis);
    store
        .put_limit("api", Limit::Rate(gcra("1/s", 5)), NOW)
        .await
        .unwrap();
    store
        .acquire(&[AcquireEntry::new("api", 2)], NOW)
        .await
        .unwrap();
    store
        .acquire(&[AcquireEntry::dynamic("user:42", gcra("1/m", 1), 1)], NOW)
        .await
        .unwrap();
    store
        .lease_acquire(
            Target::Dynamic("jobs", Concurrency::new(2, Period::HOUR).unwrap()),
            "lease-1",
            "worker-1",
            Some(Nanos::from_secs(30)),
            NOW,
        )
        .await
        .unwrap();
    store
        .barrier_create(
            "b",
            Barrier::new(2, Period::from_secs(10).unwrap()).unwrap(),
            NOW,
        )
        .await
        .unwrap();
    let slack_ms = 1_000;
    for key in redis_keys(&mut con, store.prefix()) {
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut con).unwrap();
        // The key kind sits right after the prefix.
        let kind = key[store.prefix().len() + 1..]
            .split(':')
            .next()
            .unwrap()
            .to_owned();
        let fresh_in_ms = match kind.as_str() {
            "def" => {
                assert_eq!(ttl, -1, "{key}: definitions never expire");
                continue;
            }
            "sr" => 2_000,         // 2 units of a 1/s GCRA
            "dr" => 60_000,        // 1 unit of 1/m
            "dl" | "dh" => 30_000, // the lease's ttl
            "b" => 10_000,         // the barrier's ttl
            other => panic!("unexpected key kind {other}: {key}"),
        };
        assert!(
            ttl > fresh_in_ms - 5_000 && ttl <= fresh_in_ms + slack_ms,
            "{key}: PTTL {ttl} ms, fresh in {fresh_in_ms} ms"
        );
    }
}

#[tokio::test]
async fn idle_dynamic_keys_are_forgotten_by_redis() {
    let Some(redis) = common::redis("idle_dynamic_keys_are_forgotten_by_redis") else {
        return;
    };
    // Server time and no slack: keys expire when Redis's clock says their state is fresh.
    let store = RedisStore::builder(&redis.url)
        .prefix(common::fresh_prefix())
        .expiry_slack(Duration::ZERO)
        .build()
        .unwrap();
    let mut con = raw(&redis);
    for i in 0..200 {
        let key = format!("user:{i}");
        let d = store
            .acquire(
                &[AcquireEntry::dynamic(&key, gcra("20/s", 1), 1)],
                Nanos::ZERO,
            )
            .await
            .unwrap();
        assert!(d.allowed);
        // Checked at once, key by key: on a loaded machine the first keys may already be
        // fresh (and gone) by the time the last is written.
        let suffix = format!(":{key}");
        assert!(
            redis_keys(&mut con, store.prefix())
                .iter()
                .any(|k| k.ends_with(&suffix)),
            "{key} is in Redis right after its use"
        );
    }
    // Each is fresh 50 ms after its use; poll rather than sleep a fixed time.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !redis_keys(&mut con, store.prefix()).is_empty() {
        assert!(Instant::now() < deadline, "idle keys stayed in Redis");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn server_time_ignores_the_callers_clock() {
    let Some(redis) = common::redis("server_time_ignores_the_callers_clock") else {
        return;
    };
    let store = RedisStore::builder(&redis.url)
        .prefix(common::fresh_prefix())
        .use_server_time(true)
        .build()
        .unwrap();
    let e = [AcquireEntry::dynamic("k", gcra("1/h", 1), 1)];
    // Callers whose clocks disagree wildly still share one timeline.
    assert!(store.acquire(&e, Nanos::ZERO).await.unwrap().allowed);
    let denied = store
        .acquire(&e, Nanos::from_secs(4_000_000_000))
        .await
        .unwrap();
    assert!(!denied.allowed);
    let retry = denied.decisions[0].retry_after;
    assert!(
        retry > Nanos::from_secs(3_590) && retry <= Nanos::from_secs(3_600),
        "{retry:?}"
    );
    // Instants are on Redis's clock (this machine's, here).
    let c = Concurrency::new(1, Period::MINUTE).unwrap();
    let lease = store
        .lease_acquire(Target::Dynamic("w", c), "l", "h", None, Nanos::ZERO)
        .await
        .unwrap();
    let wall = Nanos::from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap());
    let expected = wall + Nanos::from_secs(60);
    let skew = if lease.expires_at > expected {
        lease.expires_at - expected
    } else {
        expected - lease.expires_at
    };
    assert!(
        skew < Nanos::from_secs(5),
        "{:?} vs {expected:?}",
        lease.expires_at
    );
}

#[tokio::test]
async fn functions_are_reloaded_after_function_flush() {
    let Some(redis) = common::redis("functions_are_reloaded_after_function_flush") else {
        return;
    };
    let store = redis.store();
    store.ping().await.unwrap();
    let e = [AcquireEntry::dynamic("k", gcra("10/s", 10), 1)];
    assert!(store.acquire(&e, NOW).await.unwrap().allowed);
    let mut con = raw(&redis);
    let flush = |con: &mut redis::Connection| {
        let () = redis::cmd("FUNCTION").arg("FLUSH").query(con).unwrap();
    };
    // One call, then a pipeline of calls (list_limits), each finding the functions gone.
    flush(&mut con);
    assert_eq!(
        store.acquire(&e, NOW).await.unwrap().decisions[0].remaining,
        8
    );
    flush(&mut con);
    let listed = store.list_limits(NOW).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    // One library, named by its version, with one function per operation under its name.
    let libraries: Vec<redis::Value> = redis::cmd("FUNCTION").arg("LIST").query(&mut con).unwrap();
    assert_eq!(libraries.len(), 1, "{libraries:?}");
    let text = format!("{libraries:?}");
    assert!(text.contains("tollgate_"), "{text}");
}

#[tokio::test]
async fn data_tollgate_did_not_write_is_a_permanent_error_not_a_panic() {
    let Some(redis) = common::redis("data_tollgate_did_not_write_is_a_permanent_error_not_a_panic")
    else {
        return;
    };
    let store = redis.store();
    let mut con = raw(&redis);
    let e = [AcquireEntry::dynamic("k", gcra("10/s", 10), 1)];
    assert!(store.acquire(&e, NOW).await.unwrap().allowed);
    let keys = redis_keys(&mut con, store.prefix());
    assert_eq!(keys.len(), 1, "{keys:?}");
    let () = redis::cmd("SET")
        .arg(&keys[0])
        .arg("garbage")
        .query(&mut con)
        .unwrap();
    let err = store.acquire(&e, NOW).await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    let () = redis::cmd("DEL")
        .arg(&keys[0])
        .query::<i64>(&mut con)
        .map(drop)
        .unwrap();
    let _: i64 = redis::cmd("HSET")
        .arg(&keys[0])
        .arg("f")
        .arg("v")
        .query(&mut con)
        .unwrap();
    let err = store.acquire(&e, NOW).await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
}

/// How many times Redis ran `command` (scripts' calls included), from `INFO commandstats`.
fn calls_of(con: &mut redis::Connection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(con).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// The Redis key of `kind` ("def", "sr", ...) among the store's keys.
fn key_of(con: &mut redis::Connection, prefix: &str, kind: &str) -> String {
    redis_keys(con, prefix)
        .into_iter()
        .find(|k| k[prefix.len() + 1..].starts_with(&format!("{kind}:")))
        .unwrap()
}

/// A declared limit's state carries the limit's spec now (docs/design.md §9), so an acquire on a
/// key in use reads its state (and its pause key, §3.13) and writes one key: the definition is
/// read only when there is no state. A redefinition reaches the state at once, and the next decision
/// converts the usage under the new limit.
#[tokio::test]
async fn a_declared_key_in_use_is_decided_without_reading_its_definition() {
    let Some(redis) =
        common::redis("a_declared_key_in_use_is_decided_without_reading_its_definition")
    else {
        return;
    };
    let store = redis.store();
    let mut con = raw(&redis);
    let one = [AcquireEntry::new("api", 1)];
    store
        .put_limit("api", Limit::Rate(gcra("1/s", 5)), NOW)
        .await
        .unwrap();
    let gets = calls_of(&mut con, "get");
    let d = store.acquire(&one, NOW).await.unwrap();
    assert_eq!((d.allowed, d.decisions[0].remaining), (true, 4));
    assert_eq!(
        calls_of(&mut con, "get") - gets,
        3,
        "no state yet: state, definition and pause"
    );
    let gets = calls_of(&mut con, "get");
    let d = store.acquire(&one, NOW).await.unwrap();
    assert_eq!((d.allowed, d.decisions[0].remaining), (true, 3));
    assert_eq!(
        calls_of(&mut con, "get") - gets,
        2,
        "the state and the pause"
    );
    // Redefined with twice the burst: the two units used are kept, and the state knows.
    store
        .put_limit("api", Limit::Rate(gcra("1/s", 10)), NOW)
        .await
        .unwrap();
    let gets = calls_of(&mut con, "get");
    let d = store.acquire(&one, NOW).await.unwrap();
    assert_eq!(
        (d.allowed, d.decisions[0].limit, d.decisions[0].remaining),
        (true, 10, 7)
    );
    assert_eq!(
        calls_of(&mut con, "get") - gets,
        2,
        "the state and the pause"
    );
}

/// States written before the state knew its limit's spec ("<spec>|<state>", no '@') may lag a
/// redefinition: they are decided under the definition, read as before, and then rewritten.
#[tokio::test]
async fn a_state_written_before_it_knew_its_limit_is_decided_under_the_definition() {
    let Some(redis) =
        common::redis("a_state_written_before_it_knew_its_limit_is_decided_under_the_definition")
    else {
        return;
    };
    let store = redis.store();
    let mut con = raw(&redis);
    let one = [AcquireEntry::new("api", 1)];
    store
        .put_limit("api", Limit::Rate(gcra("1/s", 5)), NOW)
        .await
        .unwrap();
    store
        .acquire(&[AcquireEntry::new("api", 2)], NOW)
        .await
        .unwrap();
    let (def, st) = (
        key_of(&mut con, store.prefix(), "def"),
        key_of(&mut con, store.prefix(), "sr"),
    );
    let state: String = redis::cmd("GET").arg(&st).query(&mut con).unwrap();
    let old_spec: String = redis::cmd("GET").arg(&def).query(&mut con).unwrap();
    assert!(state.starts_with(&format!("@{old_spec}|")), "{state}");
    // What an earlier build left: the state without '@', and a definition it redefined alone.
    let () = redis::cmd("SET")
        .arg(&st)
        .arg(&state[1..])
        .arg("KEEPTTL")
        .query(&mut con)
        .unwrap();
    let new_spec = old_spec.replacen(" 5 ", " 10 ", 1);
    assert_ne!(new_spec, old_spec);
    let () = redis::cmd("SET")
        .arg(&def)
        .arg(&new_spec)
        .query(&mut con)
        .unwrap();
    let gets = calls_of(&mut con, "get");
    let d = store.acquire(&one, NOW).await.unwrap();
    assert_eq!(
        (d.allowed, d.decisions[0].limit, d.decisions[0].remaining),
        (true, 10, 7)
    );
    assert_eq!(
        calls_of(&mut con, "get") - gets,
        3,
        "state, definition and pause"
    );
    let state: String = redis::cmd("GET").arg(&st).query(&mut con).unwrap();
    assert!(state.starts_with(&format!("@{new_spec}|")), "{state}");
}

/// A sliding window's state is "@<spec>|<MessagePack array>": bytes that do not decode, or
/// decode to something else, are named as unreadable state, never a script error or a panic.
#[tokio::test]
async fn an_unreadable_sliding_window_state_is_named_as_such() {
    let Some(redis) = common::redis("an_unreadable_sliding_window_state_is_named_as_such") else {
        return;
    };
    let store = redis.store();
    let mut con = raw(&redis);
    let sw = RateLimit::SlidingWindow(SlidingWindow::new(5, Period::SECOND).unwrap());
    let e = [AcquireEntry::dynamic("k", sw, 1)];
    assert!(store.acquire(&e, NOW).await.unwrap().allowed);
    assert!(
        store
            .acquire(&e, NOW + Nanos::from_millis(300))
            .await
            .unwrap()
            .allowed
    );
    let keys = redis_keys(&mut con, store.prefix());
    let state: Vec<u8> = redis::cmd("GET").arg(&keys[0]).query(&mut con).unwrap();
    let bar = state.iter().position(|b| *b == b'|').unwrap();
    assert!(state.starts_with(b"@sw "), "{state:?}");
    // Two buckets: a MessagePack array of four integers.
    assert_eq!(state[bar + 1], 0x94, "{state:?}");
    for garbled in [
        &[0xc1, 0x00][..],         // never used in MessagePack
        &[0x94, 0x01][..],         // an array cut short
        &[0xa3, b'a', b'b', b'c'], // a string, not an array
        &[0x93, 0x01, 0x02, 0x03], // an odd number of values
        b"12 3 13 1",              // the text form
    ] {
        let mut value = state[..=bar].to_vec();
        value.extend_from_slice(garbled);
        let () = redis::cmd("SET")
            .arg(&keys[0])
            .arg(value)
            .query(&mut con)
            .unwrap();
        let err = store.acquire(&e, NOW).await.unwrap_err();
        assert!(!err.is_transient(), "{err}");
        assert!(err.to_string().contains("state"), "{garbled:?}: {err}");
    }
}

/// A TCP port that refuses connections.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn an_unreachable_server_is_a_quick_transient_error_without_the_password() {
    // No Redis needed: nothing listens on this port.
    let url = format!("redis://app:hunter2@127.0.0.1:{}/", closed_port());
    let builder = RedisStore::builder(&url).connect_timeout(Duration::from_millis(500));
    assert!(!format!("{builder:?}").contains("hunter2"));
    let store = builder.build().unwrap();
    let started = Instant::now();
    let err = store
        .acquire(&[AcquireEntry::dynamic("k", gcra("1/s", 1), 1)], NOW)
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    for text in [
        err.to_string(),
        format!("{err:?}"),
        format!("{store:?}"),
        store.url().to_owned(),
    ] {
        assert!(!text.contains("hunter2"), "password leaked: {text}");
    }
    assert!(err.to_string().contains("app:***@127.0.0.1"), "{err}");
    let bad = RedisStore::open("redis://app:hunter2@[nonsense").unwrap_err();
    assert!(!bad.to_string().contains("hunter2"), "{bad}");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_transiently() {
    // Accepts connections and never replies: the response timeout must bound every call.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "redis://127.0.0.1:{}/",
        listener.local_addr().unwrap().port()
    );
    let store = RedisStore::builder(&url)
        .connect_timeout(Duration::from_millis(300))
        .response_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = store
        .acquire(&[AcquireEntry::dynamic("k", gcra("1/s", 1), 1)], NOW)
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    drop(listener);
}

#[tokio::test]
async fn redis_keys_carry_the_prefix_and_one_hash_tag_per_tollgate_key() {
    let Some(redis) =
        common::redis("redis_keys_carry_the_prefix_and_one_hash_tag_per_tollgate_key")
    else {
        return;
    };
    let store = redis.store();
    let mut con = raw(&redis);
    let c = Concurrency::new(1, Period::MINUTE).unwrap();
    store
        .put_limit("{acct}:api", Limit::Rate(gcra("1/s", 1)), NOW)
        .await
        .unwrap();
    store
        .acquire(&[AcquireEntry::new("{acct}:api", 1)], NOW)
        .await
        .unwrap();
    store
        .lease_acquire(Target::Dynamic("{acct}:jobs", c), "l", "h", None, NOW)
        .await
        .unwrap();
    let keys = redis_keys(&mut con, store.prefix());
    assert_eq!(keys.len(), 4, "{keys:?}");
    for key in &keys {
        // Redis hashes the part between the first `{` and the next `}`.
        let open = key.find('{').unwrap();
        let close = open + key[open..].find('}').unwrap();
        assert_eq!(&key[open + 1..close], "acct", "{key}");
    }
}

#[tokio::test]
async fn a_clock_stepping_back_never_admits_extra() {
    // Why: callers passing their own `now` may disagree or step back; the stored state must
    // hold (the algorithms treat an earlier `now` as no later than the state says).
    let Some(redis) = common::redis("a_clock_stepping_back_never_admits_extra") else {
        return;
    };
    let store = redis.store();
    let per_sec = |l| RateLimit::SlidingWindow(SlidingWindow::new(l, Period::SECOND).unwrap());
    for (key, limit) in [("g", gcra("1/s", 1)), ("s", per_sec(1))] {
        let e = [AcquireEntry::dynamic(key, limit, 1)];
        assert!(
            store
                .acquire(&e, Nanos::from_secs(100))
                .await
                .unwrap()
                .allowed,
            "{key}"
        );
        for back in [99_999, 99_000, 50_000, 1] {
            let d = store.acquire(&e, Nanos::from_millis(back)).await.unwrap();
            assert!(!d.allowed, "{key} at {back} ms");
            assert!(
                d.decisions[0].retry_after > Nanos::ZERO,
                "{key} at {back} ms"
            );
        }
    }
}

/// A fake server that answers as Redis `version` would to the commands the store sends: `INFO`
/// with that version, `FCALL` and `FUNCTION` unknown (as before 7.0), anything else `+OK`.
fn old_server(version: &'static str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "redis://127.0.0.1:{}/",
        listener.local_addr().unwrap().port()
    );
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || {
                let mut out = stream.try_clone().unwrap();
                let mut lines = BufReader::new(stream);
                let mut line = String::new();
                let mut read_line = |line: &mut String| {
                    line.clear();
                    lines.read_line(line).ok().filter(|n| *n > 0).map(|_| ())
                };
                // Commands are arrays of bulk strings: *N, then $len and the bytes, N times.
                while read_line(&mut line).is_some() {
                    let n: usize = line.trim()[1..].parse().unwrap_or(0);
                    let mut args = Vec::new();
                    for _ in 0..n {
                        read_line(&mut line).unwrap();
                        read_line(&mut line).unwrap();
                        args.push(line.trim_end_matches("\r\n").to_owned());
                    }
                    let name = args
                        .first()
                        .map(|a| a.to_ascii_uppercase())
                        .unwrap_or_default();
                    let reply = match name.as_str() {
                        "INFO" => {
                            let info = format!("# Server\r\nredis_version:{version}\r\n");
                            format!("${}\r\n{info}\r\n", info.len())
                        }
                        "FCALL" | "FUNCTION" => format!(
                            "-ERR unknown command '{}', with args beginning with: \r\n",
                            args[0]
                        ),
                        "PING" => "+PONG\r\n".to_owned(),
                        _ => "+OK\r\n".to_owned(),
                    };
                    if out.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

#[tokio::test]
async fn a_server_older_than_redis_7_is_refused_naming_its_version() {
    let store = RedisStore::open(&old_server("6.2.14")).unwrap();
    let e = store.ping().await.unwrap_err();
    assert!(!e.is_transient(), "{e}");
    let message = e.to_string();
    assert!(
        message.contains("Redis 6.2.14") && message.contains("Redis 7.0 or later"),
        "{message}"
    );
    // A call finds FCALL unknown, checks the version, and says the same.
    let e = store
        .acquire(&[AcquireEntry::dynamic("k", gcra("1/s", 1), 1)], NOW)
        .await
        .unwrap_err();
    assert!(!e.is_transient(), "{e}");
    assert!(e.to_string().contains("Redis 6.2.14"), "{e}");
}
