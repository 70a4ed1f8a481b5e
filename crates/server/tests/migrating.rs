//! What users moving from Hatchet, Inngest, Celery and Dramatiq expect (issue 13, README
//! "Coming from another job system"), end to end against the real server in every mode: in
//! memory, on SQLite (a data directory of its own) and on Redis (`REDIS_URL` or a
//! `redis-server` of the test's own; skipped loudly without one, failed under `CI=true`).

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

mod common;
#[path = "../../redis/tests/common/mod.rs"]
mod redis_common;

use common::Server;
use serde_json::json;
use tollgate::SystemClock;
use tollgate_redis::RedisStore;
use tollgate_server::{AppState, Settings};

/// One server in one mode, with what it needs kept alive.
struct Mode {
    name: &'static str,
    server: Server,
    _dir: Option<tempfile::TempDir>,
    _redis: Option<redis_common::TestRedis>,
}

/// The server in memory, on SQLite and (when there is a Redis) on Redis.
async fn each_mode(test: &str) -> Vec<Mode> {
    let mut modes = vec![Mode {
        name: "memory",
        server: Server::start(SystemClock::new()).await,
        _dir: None,
        _redis: None,
    }];
    let dir = tempfile::tempdir().unwrap();
    let sqlite = AppState::open(dir.path(), Settings::default()).unwrap();
    modes.push(Mode {
        name: "sqlite",
        server: Server::with_state(sqlite).await,
        _dir: Some(dir),
        _redis: None,
    });
    if let Some(redis) = redis_common::redis(test) {
        let store = RedisStore::builder(&redis.url)
            .prefix(redis_common::fresh_prefix())
            .build()
            .unwrap();
        modes.push(Mode {
            name: "redis",
            server: Server::with_state(AppState::redis(store, Settings::default())).await,
            _dir: None,
            _redis: Some(redis),
        });
    }
    modes
}

/// Hatchet users write a rate limit's period as `duration`: taken as `period`, shown as it, and
/// applied (a limit of 1 per minute admits one run, the next waits); both at once is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_given_with_hatchets_duration_is_kept_as_its_period() {
    for Mode { name, server, .. } in
        each_mode("a_rate_limit_given_with_hatchets_duration_is_kept_as_its_period").await
    {
        let t = server
            .define_task(
                "hatchet",
                json!({"rate_limits": [{"dynamic_key": "input.user", "limit": 1, "duration": "MINUTE"}]}),
            )
            .await;
        assert_eq!(
            t["spec"]["rate_limits"],
            json!([{"dynamic_key": "input.user", "limit": 1, "period": "MINUTE"}]),
            "{name}"
        );
        let first = server.enqueue("hatchet", json!({"user": "u1"})).await;
        let second = server.enqueue("hatchet", json!({"user": "u1"})).await;
        let leased = server.lease(&["hatchet"], 10, 0).await;
        assert_eq!(leased.len(), 1, "{name}: {leased:?}");
        assert_eq!(leased[0]["id"], first["id"], "{name}");
        let second = server.run(second["id"].as_str().unwrap()).await;
        assert_eq!(second["state"], "waiting", "{name}: {second:?}");
        let r = server
            .put(
                "/v1/tasks/both",
                json!({"rate_limits": [{"dynamic_key": "input.user", "limit": 1, "duration": "1m", "period": "1m"}]}),
            )
            .await;
        assert_eq!(
            (r.status, r.code()),
            (400, "invalid_field"),
            "{name}: {:?}",
            r.body
        );
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains("not both"), "{name}: {message}");
        server.stop().await;
    }
}

/// Each task an event triggers stands alone: the one whose key expression cannot be evaluated
/// for this event gets a failed run naming the expression and what CEL said; the others are
/// enqueued and run. A direct enqueue with the same failing expression is still a 422.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_expression_fails_for_one_task_fails_that_run_and_keeps_the_others() {
    for Mode { name, server, .. } in each_mode(
        "an_event_whose_expression_fails_for_one_task_fails_that_run_and_keeps_the_others",
    )
    .await
    {
        server
            .define_task("a-plain", json!({"triggers": ["company.updated"]}))
            .await;
        server
            .define_task(
                "b-limited",
                json!({"triggers": ["company.updated"],
                       "rate_limits": [{"dynamic_key": "event.data.company_id", "limit": 1, "period": "4h"}]}),
            )
            .await;
        let r = server
            .post(
                "/v1/events",
                json!({"name": "company.updated", "data": {"name": "no id"}}),
            )
            .await;
        assert_eq!(r.status, 202, "{name}: {:?}", r.body);
        let mut runs = r.body["runs"].as_array().unwrap().clone();
        runs.sort_by_key(|r| r["task"].as_str().unwrap().to_owned());
        assert_eq!(runs.len(), 2, "{name}: {runs:?}");
        assert_eq!(
            (&runs[0]["task"], &runs[0]["state"]),
            (&json!("a-plain"), &json!("queued")),
            "{name}"
        );
        assert!(runs[0].get("error").is_none(), "{name}: {runs:?}");
        assert_eq!(
            (&runs[1]["task"], &runs[1]["state"]),
            (&json!("b-limited"), &json!("failed")),
            "{name}"
        );
        let error = runs[1]["error"].as_str().unwrap();
        assert!(
            error.starts_with(
                "invalid_expression: rate_limits[0].dynamic_key: expression \"event.data.company_id\""
            ),
            "{name}: {error}"
        );
        assert!(error.contains("company_id"), "{name}: {error}");
        // Both are kept: the failed run shows its error, the other is leased.
        let failed = server.run(runs[1]["id"].as_str().unwrap()).await;
        assert_eq!(
            (failed["state"].clone(), failed["error"].clone()),
            (json!("failed"), json!(error)),
            "{name}"
        );
        let leased = server.lease(&["a-plain", "b-limited"], 10, 0).await;
        assert_eq!(leased.len(), 1, "{name}: {leased:?}");
        assert_eq!(leased[0]["id"], runs[0]["id"], "{name}");
        // A direct enqueue still refuses the run.
        let r = server
            .post(
                "/v1/tasks/b-limited/runs",
                json!({"input": {"name": "no id"}}),
            )
            .await;
        assert_eq!(
            (r.status, r.code()),
            (422, "invalid_expression"),
            "{name}: {:?}",
            r.body
        );
        server.stop().await;
    }
}

/// Celery's `rate_limit="1/h"` as `"throttle": "1/h"`: one rate for the task across every worker
/// (two workers lease one run between them; the rest wait with their instant), the task's own
/// (another task with the same throttle has its own budget), shown back as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_celery_throttle_is_one_rate_for_the_task_across_workers() {
    for Mode { name, server, .. } in
        each_mode("a_celery_throttle_is_one_rate_for_the_task_across_workers").await
    {
        let t = server.define_task("send", json!({"throttle": "1/h"})).await;
        assert_eq!(t["spec"]["throttle"], json!("1/h"), "{name}: {t}");
        server
            .define_task("other", json!({"throttle": "1/h"}))
            .await;
        let runs = server.enqueue_n("send", 3, json!({})).await;
        let other = server.enqueue("other", json!({})).await;
        let mut leased = server.lease_as("w1", &["send"], 10, 0).await;
        leased.extend(server.lease_as("w2", &["send"], 10, 0).await);
        assert_eq!(common::ids(&leased), runs[..1], "{name}: {leased:?}");
        let waiting = server.run(&runs[1]).await;
        assert_eq!(waiting["state"], "waiting", "{name}: {waiting}");
        let now = waiting["created_at_ms"].as_u64().unwrap();
        let eligible = waiting["eligible_at_ms"].as_u64().unwrap();
        assert!(
            (now + 3_590_000..=now + 3_610_000).contains(&eligible),
            "{name}: the next slot is an hour on: {waiting}"
        );
        let leased = server.lease(&["other"], 10, 0).await;
        assert_eq!(leased.len(), 1, "{name}: {leased:?}");
        assert_eq!(leased[0]["id"], other["id"], "{name}");
        server.stop().await;
    }
}

/// Inngest's `throttle` with a `key` and a dynamic rate limit with `"scope": "task"`: one budget
/// per key within the task, none shared with another task rendering the same key, while a
/// global key (Hatchet's default) is shared. A throttle with `on_limit: "skip"` is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_a_tasks_own_are_never_shared_with_another_task() {
    for Mode { name, server, .. } in
        each_mode("keys_of_a_tasks_own_are_never_shared_with_another_task").await
    {
        let per_user = json!({"dynamic_key": "input.user", "limit": 1, "period": "1h"});
        let mut own = per_user.clone();
        own["scope"] = json!("task");
        for (task, spec) in [
            (
                "throttled-a",
                json!({"throttle": {"limit": 1, "period": "1h", "key": "input.user"}}),
            ),
            (
                "throttled-b",
                json!({"throttle": {"limit": 1, "period": "1h", "key": "input.user"}}),
            ),
            ("own-a", json!({"rate_limits": [own.clone()]})),
            ("own-b", json!({"rate_limits": [own]})),
            ("shared-a", json!({"rate_limits": [per_user.clone()]})),
            ("shared-b", json!({"rate_limits": [per_user]})),
        ] {
            server.define_task(task, spec).await;
            for user in ["u1", "u1", "u2"] {
                server.enqueue(task, json!({"user": user})).await;
            }
        }
        let leased = |runs: Vec<serde_json::Value>| {
            let mut v: Vec<String> = runs
                .iter()
                .map(|r| {
                    format!(
                        "{}/{}",
                        r["task"].as_str().unwrap(),
                        r["input"]["user"].as_str().unwrap()
                    )
                })
                .collect();
            v.sort();
            v
        };
        let got = leased(
            server
                .lease(&["throttled-a", "throttled-b", "own-a", "own-b"], 100, 0)
                .await,
        );
        let expected: Vec<String> = ["own-a", "own-b", "throttled-a", "throttled-b"]
            .iter()
            .flat_map(|t| [format!("{t}/u1"), format!("{t}/u2")])
            .collect();
        assert_eq!(got, expected, "{name}");
        // One budget per user for the two tasks sharing a global key: one run of each user,
        // of whichever task.
        let mut users: Vec<String> = leased(server.lease(&["shared-a", "shared-b"], 100, 0).await)
            .iter()
            .map(|r| r.split('/').nth(1).unwrap().to_owned())
            .collect();
        users.sort();
        assert_eq!(users, ["u1", "u2"], "{name}");
        let r = server
            .put(
                "/v1/tasks/skipping",
                json!({"throttle": "1/s", "on_limit": "skip"}),
            )
            .await;
        assert_eq!(
            (r.status, r.code(), r.body["error"]["field"].as_str()),
            (400, "invalid_field", Some("throttle")),
            "{name}: {:?}",
            r.body
        );
        server.stop().await;
    }
}

/// Inngest's `rateLimit` as `"rate_limit"`: decided once, at enqueue, whatever `on_limit` says —
/// a run over it is stored as skipped with the key (one budget per `key` value, the task's own);
/// a run it admits keeps its units and then waits on its other limits as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inngest_rate_limit_skips_runs_over_it_and_lets_the_rest_wait_as_usual() {
    for Mode { name, server, .. } in
        each_mode("an_inngest_rate_limit_skips_runs_over_it_and_lets_the_rest_wait_as_usual").await
    {
        let t = server
            .define_task(
                "ingest",
                json!({"rate_limit": {"limit": 1, "period": "1h", "key": "input.company"},
                       "rate_limits": [{"dynamic_key": "input.user", "limit": 1, "period": "1h"}]}),
            )
            .await;
        assert_eq!(
            t["spec"]["rate_limit"],
            json!({"limit": 1, "period": "1h", "key": "input.company"}),
            "{name}"
        );
        let first = server
            .enqueue("ingest", json!({"company": "c1", "user": "u1"}))
            .await;
        let over = server
            .enqueue("ingest", json!({"company": "c1", "user": "u2"}))
            .await;
        let other = server
            .enqueue("ingest", json!({"company": "c2", "user": "u1"}))
            .await;
        assert_eq!(first["state"], "queued", "{name}: {first}");
        assert_eq!(
            (&over["state"], &over["skip_reason"]),
            (&json!("skipped"), &json!("rate_limited")),
            "{name}: {over}"
        );
        assert_eq!(
            over["waiting_on"], "task:ingest:rate_limit:c1",
            "{name}: {over}"
        );
        assert_eq!(other["state"], "queued", "{name}: {other}");
        // Past the gate, the per-user limit applies as usual: u1's second run waits.
        let leased = server.lease(&["ingest"], 10, 0).await;
        assert_eq!(common::ids(&leased), [common::id(&first)], "{name}");
        let other = server.run(&common::id(&other)).await;
        assert_eq!(
            (&other["state"], &other["waiting_on"]),
            (&json!("waiting"), &json!("u1")),
            "{name}: {other}"
        );
        server.stop().await;
    }
}

/// Celery's `countdown`/`eta` and Dramatiq's `delay`: a run enqueued with `delay_ms` (or
/// `run_at_ms`) is `scheduled`, with its due instant in `eligible_at_ms`, counted and listed
/// as such, leased by nobody until then; a waiting long-poll gets it when it is due. Nothing
/// is decided before: its `rate_limit` skips it only when it is due. A cancelled scheduled run
/// never starts; `run_at_ms` in the past is at once; both fields at once is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_run_is_scheduled_until_it_is_due_and_decided_then() {
    for Mode { name, server, .. } in
        each_mode("a_delayed_run_is_scheduled_until_it_is_due_and_decided_then").await
    {
        server
            .define_task("later", json!({"rate_limit": {"limit": 1, "period": "1h"}}))
            .await;
        let post = |body: serde_json::Value| server.post("/v1/tasks/later/runs", body);
        let first = post(json!({"input": {"n": 1}, "delay_ms": 1_200})).await;
        assert_eq!(first.status, 201, "{name}: {:?}", first.body);
        let first = first.body;
        assert_eq!(first["state"], "scheduled", "{name}: {first}");
        let created = first["created_at_ms"].as_u64().unwrap();
        let due = first["eligible_at_ms"].as_u64().unwrap();
        assert!(
            (created + 1_199..=created + 1_201).contains(&due),
            "{name}: due 1.2 s after {created}: {first}"
        );
        let second = post(json!({"input": {"n": 2}, "delay_ms": 1_200}))
            .await
            .body;
        assert_eq!(
            second["state"], "scheduled",
            "{name}: not decided before it is due"
        );
        let cancelled = post(json!({"input": {"n": 3}, "delay_ms": 1_000}))
            .await
            .body;
        let r = server
            .act(&common::id(&cancelled), "cancel", json!({}))
            .await;
        assert_eq!(r.body["state"], "cancelled", "{name}: {:?}", r.body);
        let listed = server.get("/v1/runs?task=later&state=scheduled").await.body;
        assert_eq!(
            listed["runs"].as_array().unwrap().len(),
            2,
            "{name}: {listed}"
        );
        let task = server.get("/v1/tasks/later").await.body;
        assert_eq!(task["depth"]["scheduled"], 2, "{name}: {task}");
        assert!(server.lease(&["later"], 10, 0).await.is_empty(), "{name}");
        // A waiting long-poll gets the first when it is due; the second is over the rate
        // limit then, and skipped.
        let leased = server.lease(&["later"], 10, 5_000).await;
        assert_eq!(common::ids(&leased), [common::id(&first)], "{name}");
        // It is due a moment after the first: a read after that sees it decided.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let second = loop {
            let run = server.run(&common::id(&second)).await;
            if run["state"] != "scheduled" || std::time::Instant::now() > deadline {
                break run;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert_eq!(
            (&second["state"], &second["skip_reason"]),
            (&json!("skipped"), &json!("rate_limited")),
            "{name}: {second}"
        );
        let cancelled = server.run(&common::id(&cancelled)).await;
        assert_eq!(cancelled["state"], "cancelled", "{name}");

        server.define_task("now", json!({"triggers": ["go"]})).await;
        let past = server
            .post(
                "/v1/tasks/now/runs",
                json!({"input": {}, "run_at_ms": 1_000}),
            )
            .await;
        assert_eq!(past.body["state"], "queued", "{name}: {:?}", past.body);
        let both = server
            .post(
                "/v1/tasks/now/runs",
                json!({"input": {}, "delay_ms": 1, "run_at_ms": 1}),
            )
            .await;
        assert_eq!(
            (
                both.status,
                both.code(),
                both.body["error"]["field"].as_str()
            ),
            (400, "invalid_field", Some("run_at_ms")),
            "{name}: {:?}",
            both.body
        );
        let event = server
            .post(
                "/v1/events",
                json!({"name": "go", "data": {}, "delay_ms": 60_000}),
            )
            .await;
        assert_eq!(
            event.body["runs"][0]["state"], "scheduled",
            "{name}: {:?}",
            event.body
        );
        server.stop().await;
    }
}

/// Hatchet's and Inngest's retries with backoff: a task's `retry` spaces the attempts after
/// `fail` with `retry: true` — the first waits `backoff`, the next `factor` times longer — and
/// `retry_after_ms` (an upstream's Retry-After) overrides it once. Meanwhile the run is
/// `scheduled` with its due instant, holds no worker slot, and no lease gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_wait_out_their_backoff_scheduled() {
    for Mode { name, server, .. } in each_mode("retries_wait_out_their_backoff_scheduled").await {
        server
            .define_task(
                "flaky",
                json!({"max_attempts": 4, "retry": {"backoff": "300ms", "factor": 2, "max": "10s"}}),
            )
            .await;
        let run = server.enqueue("flaky", json!({})).await;
        let id = common::id(&run);
        let mut waits = Vec::new();
        for (attempt, body) in [
            (1, json!({"error": "503", "retry": true})),
            (2, json!({"error": "503", "retry": true})),
            (
                3,
                json!({"error": "429", "retry": true, "retry_after_ms": 50}),
            ),
        ] {
            let leased = server.lease(&["flaky"], 1, 5_000).await;
            assert_eq!(
                common::ids(&leased),
                [id.as_str()],
                "{name}: attempt {attempt}"
            );
            assert_eq!(leased[0]["attempt"], attempt, "{name}");
            let failed = server.act(&id, "fail", body).await.body;
            assert_eq!(failed["state"], "scheduled", "{name}: {failed}");
            let wait = failed["eligible_at_ms"].as_u64().unwrap()
                - failed["updated_at_ms"].as_u64().unwrap();
            waits.push(wait);
            assert!(server.lease(&["flaky"], 1, 0).await.is_empty(), "{name}");
        }
        // 300 ms, then twice that, then the worker's 50 ms (ms rounding: one more at most).
        for (got, want) in waits.iter().zip([300, 600, 50]) {
            assert!((want..=want + 1).contains(got), "{name}: waits {waits:?}");
        }
        let last = server.lease(&["flaky"], 1, 5_000).await;
        assert_eq!(last[0]["attempt"], 4, "{name}");
        let r = server
            .put(
                "/v1/tasks/bad",
                json!({"retry": {"backoff": "1s", "max": "500ms"}}),
            )
            .await;
        assert_eq!(
            (r.status, r.code(), r.body["error"]["field"].as_str()),
            (400, "invalid_field", Some("retry.max")),
            "{name}: {:?}",
            r.body
        );
        server.stop().await;
    }
}
