//! Runtime changes reach the runs they concern, in every mode (docs/design.md §3): the real
//! `tollgate serve` binary with `--memory`, on SQLite (`--data-dir`) and on Redis (`--redis`),
//! driven over HTTP as a worker and an operator would.
//! - Limits are live: raising a limit hands the runs parked on it to workers within the call
//!   (a waiting long-poll gets them), lowering it moves their `eligible_at` later, and a limit
//!   that a run not yet ended names cannot be deleted.
//! - A run keeps the task definition it was enqueued with: redefining the task's lease
//!   timeout changes only runs enqueued after it.
//!
//! Real time: limits are per minute or hour and the short lease lapses after one second, so
//! nothing the test checks depends on how fast the machine is.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

mod common;
#[path = "../../redis/tests/common/mod.rs"]
mod redis_common;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

/// Only a hang reaches it.
const DEADLINE: Duration = Duration::from_secs(30);

/// A running `tollgate serve`, and the test's own Redis when it uses one (kept alive as long
/// as the node).
struct Node {
    binary: common::Binary,
    _redis: Option<redis_common::TestRedis>,
}

impl std::ops::Deref for Node {
    type Target = common::Binary;
    fn deref(&self) -> &common::Binary {
        &self.binary
    }
}

/// Where the node keeps its data.
#[derive(Clone, Copy, Debug)]
enum Mode {
    Memory,
    Sqlite,
    Redis,
}

impl Node {
    /// The binary in `mode`, or `None` when Redis is wanted and there is none (skipped loudly;
    /// a failure under `CI=true`).
    async fn start(mode: Mode, test: &str) -> Option<Node> {
        let mut redis = None;
        let args: Vec<String> = match mode {
            Mode::Memory => vec!["--memory".into()],
            Mode::Sqlite => {
                let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                    .join(format!("runtime-{test}-{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&dir);
                vec!["--data-dir".into(), dir.display().to_string()]
            }
            Mode::Redis => {
                let r = redis_common::redis(test)?;
                let args = vec![
                    "--redis".into(),
                    r.url.clone(),
                    "--redis-prefix".into(),
                    redis_common::fresh_prefix(),
                ];
                redis = Some(r);
                args
            }
        };
        Some(Node {
            binary: common::Binary::start(args).await,
            _redis: redis,
        })
    }

    async fn put(&self, path: &str, body: Value) -> Value {
        self.ok(reqwest::Method::PUT, path, Some(body)).await
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.ok(reqwest::Method::POST, path, Some(body)).await
    }

    async fn run(&self, id: &str) -> Value {
        self.ok(reqwest::Method::GET, &format!("/v1/runs/{id}"), None)
            .await
    }

    async fn enqueue(&self, task: &str) -> String {
        let run = self
            .post(&format!("/v1/tasks/{task}/runs"), json!({"input": {}}))
            .await;
        run["id"].as_str().unwrap().to_owned()
    }

    async fn lease(&self, task: &str, max: u64, wait_ms: u64) -> Vec<Value> {
        let answer = self
            .post(
                "/v1/workers/lease",
                json!({"worker_id": "w", "tasks": [task], "max": max, "wait_ms": wait_ms}),
            )
            .await;
        answer["runs"].as_array().unwrap().clone()
    }
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

// ---- limits are live ------------------------------------------------------------------------

/// A gcra limit of 1 per hour, four runs, one leased: three wait an hour. Lowering the limit
/// moves their `eligible_at` later; raising it makes them ready at once, and a worker already
/// long-polling gets them within the call that raised it, not after the hour.
async fn a_limit_change_replans_the_runs_parked_on_it(mode: Mode, test: &str) {
    let Some(node) = Node::start(mode, test).await else {
        return;
    };
    node.put(
        "/v1/limits/slow",
        json!({"algorithm": "gcra", "limit": 1, "period": "1h"}),
    )
    .await;
    node.put(
        "/v1/tasks/sync",
        json!({"rate_limits": [{"static_key": "slow", "units": 1}]}),
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(node.enqueue("sync").await);
    }
    let first = node.lease("sync", 10, 0).await;
    assert_eq!(first.len(), 1, "one run fits an hour's limit of one");
    let parked: Vec<&String> = ids.iter().filter(|id| **id != first[0]["id"]).collect();
    let hour_from_now = now_ms() + 3_000_000;
    for id in &parked {
        let run = node.run(id).await;
        assert_eq!(run["state"], "waiting", "{run}");
        assert!(
            run["eligible_at_ms"].as_u64().unwrap() > hour_from_now,
            "{run}"
        );
    }

    // Lower: 1 per 4 hours. Every parked run, the head and those behind it, now waits longer.
    node.put(
        "/v1/limits/slow",
        json!({"algorithm": "gcra", "limit": 1, "period": "4h"}),
    )
    .await;
    let three_hours_from_now = now_ms() + 3 * 3_600_000;
    for id in &parked {
        let run = node.run(id).await;
        assert_eq!(run["state"], "waiting", "{run}");
        assert!(
            run["eligible_at_ms"].as_u64().unwrap() > three_hours_from_now,
            "a lowered limit moves eligible_at later: {run}"
        );
    }

    // Raise, while a worker long-polls: it gets the three runs from this call.
    let poll = {
        let client = node.client.clone();
        let url = format!("{}/v1/workers/lease", node.base);
        tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&json!({"worker_id": "w2", "tasks": ["sync"], "max": 10, "wait_ms": 20_000}))
                .send()
                .await
                .unwrap();
            r.json::<Value>().await.unwrap()
        })
    };
    // Let the long-poll start waiting first (if it had not, it would find the runs ready).
    tokio::time::sleep(Duration::from_millis(200)).await;
    node.put(
        "/v1/limits/slow",
        json!({"algorithm": "gcra", "limit": 100, "period": "1s", "burst": 100}),
    )
    .await;
    let mut leased: Vec<String> = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    let answer = tokio::time::timeout(DEADLINE, poll).await.unwrap().unwrap();
    // Woken by the raise (or, had it not started waiting yet, finding the runs ready): either
    // way it holds runs, where before the raise it would have waited out its 20 s for none.
    assert!(
        !answer["runs"].as_array().unwrap().is_empty(),
        "the waiting long-poll gets runs from the raise: {answer}"
    );
    for r in answer["runs"].as_array().unwrap() {
        leased.push(r["id"].as_str().unwrap().to_owned());
    }
    // A long-poll returns with what it holds once it holds one; the rest are ready for the
    // next call (never waiting an hour).
    while leased.len() < 3 {
        assert!(Instant::now() < deadline, "only {leased:?} leased");
        for r in node.lease("sync", 10, 1_000).await {
            leased.push(r["id"].as_str().unwrap().to_owned());
        }
    }
    leased.sort();
    let mut expected: Vec<String> = parked.iter().map(|s| (*s).clone()).collect();
    expected.sort();
    assert_eq!(leased, expected, "the raised limit admits every parked run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_change_replans_parked_runs_in_memory() {
    a_limit_change_replans_the_runs_parked_on_it(Mode::Memory, "replan_memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_change_replans_parked_runs_on_sqlite() {
    a_limit_change_replans_the_runs_parked_on_it(Mode::Sqlite, "replan_sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_change_replans_parked_runs_on_redis() {
    a_limit_change_replans_the_runs_parked_on_it(Mode::Redis, "replan_redis").await;
}

// ---- a run keeps its definition ---------------------------------------------------------------

/// A run enqueued while its task's lease timeout is 1 s keeps it after the task is redefined
/// with 30 s: its lease lapses after a second and it is requeued as its next attempt. A run
/// enqueued after the redefinition gets 30 s.
async fn a_run_keeps_the_definition_it_was_enqueued_with(mode: Mode, test: &str) {
    let Some(node) = Node::start(mode, test).await else {
        return;
    };
    node.put("/v1/tasks/job", json!({"lease_timeout": "1s"}))
        .await;
    let old = node.enqueue("job").await;
    node.put("/v1/tasks/job", json!({"lease_timeout": "30s"}))
        .await;
    let before = now_ms();
    let leased = node.lease("job", 1, 0).await;
    assert_eq!(leased[0]["id"], old.as_str());
    let expires = leased[0]["lease_expires_at_ms"].as_u64().unwrap();
    assert!(
        expires < before + 10_000,
        "the run keeps its 1 s lease timeout, not the new 30 s: expires {} ms after the lease",
        expires.saturating_sub(before)
    );
    // No heartbeat: it lapses after its own second and is requeued as its next attempt.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let run = node.run(&old).await;
        if run["state"] == "queued" {
            assert_eq!(run["attempt"], 1, "{run}");
            break;
        }
        assert_eq!(run["state"], "running", "{run}");
        assert!(
            Instant::now() < deadline,
            "the 1 s lease never lapsed: {run}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A run enqueued after the redefinition has the new timeout.
    let new = node.enqueue("job").await;
    node.ok(
        reqwest::Method::POST,
        &format!("/v1/runs/{old}/cancel"),
        Some(json!({})),
    )
    .await;
    let before = now_ms();
    let leased = node.lease("job", 1, 0).await;
    assert_eq!(leased[0]["id"], new.as_str());
    let expires = leased[0]["lease_expires_at_ms"].as_u64().unwrap();
    assert!(
        expires >= before + 29_000,
        "a run enqueued after the redefinition gets 30 s: {} ms",
        expires.saturating_sub(before)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_keeps_its_definition_in_memory() {
    a_run_keeps_the_definition_it_was_enqueued_with(Mode::Memory, "keeps_memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_keeps_its_definition_on_sqlite() {
    a_run_keeps_the_definition_it_was_enqueued_with(Mode::Sqlite, "keeps_sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_keeps_its_definition_on_redis() {
    a_run_keeps_the_definition_it_was_enqueued_with(Mode::Redis, "keeps_redis").await;
}

// ---- a limit runs still name cannot go --------------------------------------------------------

/// A task stops naming a limit, but a run enqueued before still does: deleting the limit is
/// refused (409 `limit_in_use`, counting the run) until that run ends.
async fn a_limit_a_run_names_cannot_be_deleted(mode: Mode, test: &str) {
    let Some(node) = Node::start(mode, test).await else {
        return;
    };
    node.put("/v1/limits/api", json!({"rate": "1/h"})).await;
    node.put(
        "/v1/tasks/call",
        json!({"rate_limits": [{"static_key": "api"}]}),
    )
    .await;
    let a = node.enqueue("call").await;
    let b = node.enqueue("call").await;
    let leased = node.lease("call", 10, 0).await;
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0]["id"], a.as_str(), "first in, first out");
    let (status, answer) = node
        .call(reqwest::Method::DELETE, "/v1/limits/api", None)
        .await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"]["code"], "limit_in_use", "{answer}");

    node.put("/v1/tasks/call", json!({})).await;
    let (status, answer) = node
        .call(reqwest::Method::DELETE, "/v1/limits/api", None)
        .await;
    assert_eq!(status, 409, "runs still name it: {answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("2 runs not yet ended"), "{message}");

    node.ok(
        reqwest::Method::POST,
        &format!("/v1/runs/{b}/cancel"),
        Some(json!({})),
    )
    .await;
    node.ok(
        reqwest::Method::POST,
        &format!("/v1/runs/{a}/complete"),
        Some(json!({})),
    )
    .await;
    let (status, answer) = node
        .call(reqwest::Method::DELETE, "/v1/limits/api", None)
        .await;
    assert!(
        (200..300).contains(&status),
        "no run names it now: {answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_runs_name_cannot_be_deleted_in_memory() {
    a_limit_a_run_names_cannot_be_deleted(Mode::Memory, "in_use_memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_runs_name_cannot_be_deleted_on_sqlite() {
    a_limit_a_run_names_cannot_be_deleted(Mode::Sqlite, "in_use_sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_runs_name_cannot_be_deleted_on_redis() {
    a_limit_a_run_names_cannot_be_deleted(Mode::Redis, "in_use_redis").await;
}
