//! Data written by a build from before 0.2 loads and follows today's rules (docs/design.md
//! §3): its runs keep the task definition they were enqueued with, a limit change re-plans the
//! runs it left parked, a newer definition of a dynamic key re-plans that key, and a limit
//! those runs name cannot be deleted. The data is what that build wrote
//! (`tests/fixtures/before-0.2/make.sh` says how): a SQLite data directory, and a Redis
//! deployment dumped as JSON, loaded into a Redis of the test's own under a fresh prefix.
//!
//! In both, the old build saw: limit `slow` (gcra, one per ten years), task `sync` on it and
//! task `per-user` (dynamic key `input.user`, one per ten years; concurrency `input.acct` of
//! 1), both with a lease timeout of ten years; three `sync` runs and two `per-user` runs of
//! user `u1`; one of each leased to worker `old`, the others parked.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

mod common;
#[path = "../../redis/tests/common/mod.rs"]
mod redis_common;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/before-0.2");

const YEAR_MS: u64 = 365 * 86_400_000;

use common::Binary as Node;

/// The runs of `task`, oldest first.
async fn runs(node: &Node, task: &str) -> Vec<Value> {
    let answer = node
        .ok(reqwest::Method::GET, &format!("/v1/runs?task={task}"), None)
        .await;
    let mut runs = answer["runs"].as_array().unwrap().clone();
    runs.sort_by_key(|r| r["created_at_ms"].as_u64());
    runs
}

/// Leases up to 10 runs of `task`, without waiting.
async fn lease(node: &Node, task: &str) -> Vec<Value> {
    let answer = node
        .ok(
            reqwest::Method::POST,
            "/v1/workers/lease",
            Some(json!({"worker_id": "new", "tasks": [task], "max": 10})),
        )
        .await;
    answer["runs"].as_array().unwrap().clone()
}

fn states(runs: &[Value]) -> Vec<String> {
    let mut s: Vec<String> = runs
        .iter()
        .map(|r| r["state"].as_str().unwrap().to_owned())
        .collect();
    s.sort();
    s
}

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// What the old build left behind, checked and then driven by today's rules.
async fn follows_todays_rules(node: &Node) {
    // As the old build left them.
    let sync = runs(node, "sync").await;
    assert_eq!(states(&sync), ["running", "waiting", "waiting"], "{sync:?}");
    let per_user = runs(node, "per-user").await;
    assert_eq!(states(&per_user), ["running", "waiting"], "{per_user:?}");
    assert!(
        lease(node, "sync").await.is_empty(),
        "nothing fits for ten years"
    );

    // The task's lease timeout changes; the old runs keep theirs (ten years).
    node.ok(
        reqwest::Method::PUT,
        "/v1/tasks/sync",
        Some(json!({"rate_limits": [{"static_key": "slow"}], "lease_timeout": "30s"})),
    )
    .await;
    let running = sync.iter().find(|r| r["state"] == "running").unwrap();
    let id = running["id"].as_str().unwrap();
    let beat = node
        .ok(
            reqwest::Method::POST,
            &format!("/v1/runs/{id}/heartbeat"),
            Some(json!({})),
        )
        .await;
    assert!(
        beat["lease_expires_at_ms"].as_u64().unwrap() > now_ms() + YEAR_MS,
        "an old run keeps its task's definition from before the change: {beat}"
    );

    // A limit change re-plans the runs the old build parked: both become ready now.
    node.ok(
        reqwest::Method::PUT,
        "/v1/limits/slow",
        Some(json!({"algorithm": "gcra", "limit": 100, "period": "1s", "burst": 100})),
    )
    .await;
    let leased = lease(node, "sync").await;
    assert_eq!(leased.len(), 2, "{leased:?}");
    for r in &leased {
        assert!(
            r["lease_expires_at_ms"].as_u64().unwrap() > now_ms() + YEAR_MS,
            "an old run keeps its ten-year lease timeout: {r}"
        );
    }

    // The runs the old build enqueued still name `slow`: it cannot be deleted.
    node.ok(reqwest::Method::PUT, "/v1/tasks/sync", Some(json!({})))
        .await;
    let (status, answer) = node
        .call(reqwest::Method::DELETE, "/v1/limits/slow", None)
        .await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("3 runs not yet ended"),
        "{answer}"
    );

    // A newer definition of the dynamic key (and a larger concurrency limit) re-plans it:
    // the run the old build parked on `u1` starts, beside the new one.
    let old_running = per_user.iter().find(|r| r["state"] == "running").unwrap();
    node.ok(
        reqwest::Method::PUT,
        "/v1/tasks/per-user",
        Some(json!({"rate_limits": [{"dynamic_key": "input.user", "limit": 100, "period": "1s", "algorithm": "gcra", "burst": 100}],
                    "concurrency": [{"key": "input.acct", "limit": 3}]})),
    )
    .await;
    node.ok(
        reqwest::Method::POST,
        "/v1/tasks/per-user/runs",
        Some(json!({"input": {"user": "u1", "acct": "a1"}})),
    )
    .await;
    let leased = lease(node, "per-user").await;
    assert_eq!(
        leased.len(),
        2,
        "the parked old run and the new one: {leased:?}"
    );
    assert!(leased.iter().all(|r| r["id"] != old_running["id"]));

    // Once the old runs end, the limit can go.
    for r in runs(node, "sync").await {
        let id = r["id"].as_str().unwrap();
        node.ok(
            reqwest::Method::POST,
            &format!("/v1/runs/{id}/complete"),
            Some(json!({})),
        )
        .await;
    }
    node.ok(reqwest::Method::DELETE, "/v1/limits/slow", None)
        .await;
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_data_directory_from_before_0_2_follows_todays_rules() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("migration-sqlite-{}", std::process::id()));
    copy_dir(&Path::new(FIXTURES).join("sqlite"), &dir);
    let node = Node::start([std::ffi::OsStr::new("--data-dir"), dir.as_os_str()]).await;
    follows_todays_rules(&node).await;
}

/// Writes the dumped deployment into `url` under `prefix` instead of the old one.
fn load_redis_dump(url: &str, prefix: &str) {
    let text = std::fs::read_to_string(Path::new(FIXTURES).join("redis.json")).unwrap();
    let dump: Vec<Value> = serde_json::from_str(&text).unwrap();
    let re = |s: &str| s.replace("tgmig1", prefix);
    let client = redis::Client::open(url).unwrap();
    let mut con = client.get_connection().unwrap();
    for item in dump {
        let key = re(item["key"].as_str().unwrap());
        let values: Vec<String> = match &item["value"] {
            Value::String(s) => vec![re(s)],
            Value::Array(a) => a.iter().map(|v| re(v.as_str().unwrap())).collect(),
            other => panic!("unexpected value {other}"),
        };
        let cmd = match item["type"].as_str().unwrap() {
            "string" => "SET",
            "hash" => "HSET",
            "list" => "RPUSH",
            "set" => "SADD",
            "zset" => "ZADD",
            other => panic!("unexpected type {other}"),
        };
        let mut c = redis::cmd(cmd);
        c.arg(&key);
        if cmd == "ZADD" {
            // ZRANGE WITHSCORES gives member, score; ZADD takes score, member.
            for pair in values.chunks(2) {
                c.arg(&pair[1]).arg(&pair[0]);
            }
        } else {
            c.arg(&values);
        }
        c.query::<()>(&mut con).unwrap();
        if let Some(ttl) = item["pttl"].as_i64()
            && ttl > 0
        {
            redis::cmd("PEXPIRE")
                .arg(&key)
                .arg(ttl)
                .query::<()>(&mut con)
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_deployment_from_before_0_2_follows_todays_rules() {
    let Some(redis) =
        redis_common::redis("a_redis_deployment_from_before_0_2_follows_todays_rules")
    else {
        return;
    };
    let prefix = redis_common::fresh_prefix();
    load_redis_dump(&redis.url, &prefix);
    let node = Node::start([
        "--redis",
        redis.url.as_str(),
        "--redis-prefix",
        prefix.as_str(),
    ])
    .await;
    follows_todays_rules(&node).await;
}
