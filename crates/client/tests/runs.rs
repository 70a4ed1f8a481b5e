//! Tasks, runs, events and the worker calls through the client, against the real server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Server, fake_clock};
use serde_json::json;
use tollgate_client::{
    Client, Error, ErrorCode, LimitSpec, OnLimit, RunFilter, RunState, TaskSpec,
};

fn task(json: serde_json::Value) -> TaskSpec {
    serde_json::from_value(json).unwrap()
}

fn tasks(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// The `(status, code, field)` of a server error; panics on anything else.
fn api_error<T: std::fmt::Debug>(r: Result<T, Error>) -> (u16, ErrorCode, Option<String>) {
    match r {
        Err(Error::Api {
            status,
            code,
            field,
            ..
        }) => (status, code, field),
        other => panic!("expected a server error, got {other:?}"),
    }
}

async fn one_per_hour(c: &Client) {
    let spec = LimitSpec::limit_per(1, "1h");
    c.put_limit("one-per-hour", &spec).await.unwrap();
}

#[tokio::test]
async fn tasks_are_defined_read_back_and_listed() {
    let server = Server::start(fake_clock()).await;
    let c = &server.client;
    one_per_hour(c).await;
    let spec = task(json!({
        "rate_limits": [
            {"static_key": "one-per-hour", "units": 1},
            {"dynamic_key": "input.user_id", "limit": 10, "period": "MINUTE"}
        ],
        "concurrency": [{"key": "input.account_id", "limit": 2}],
        "on_limit": "skip",
        "triggers": ["user/created"],
        "max_attempts": 5,
        "lease_timeout": "2m"
    }));
    let defined = c.put_task("sync", &spec).await.unwrap();
    assert_eq!(defined.name, "sync");
    assert_eq!(defined.spec.on_limit, Some(OnLimit::Skip));
    assert_eq!(defined.spec.rate_limits.len(), 2);
    assert_eq!(defined.depth.get(RunState::Queued), 0);
    // What the server shows can be sent back as it is.
    assert_eq!(c.put_task("sync", &defined.spec).await.unwrap(), defined);
    assert_eq!(c.get_task("sync").await.unwrap(), defined);

    c.put_task("another", &TaskSpec::default()).await.unwrap();
    let names: Vec<String> = c
        .list_tasks()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["another", "sync"]);

    assert_eq!(
        api_error(c.get_task("nope").await),
        (404, "unknown_task".into(), Some("name".into()))
    );
    let undeclared = task(json!({"rate_limits": [{"static_key": "undeclared"}]}));
    assert_eq!(
        api_error(c.put_task("t", &undeclared).await),
        (
            422,
            "unknown_limit".into(),
            Some("rate_limits[0].static_key".into())
        )
    );
    let bad_cel =
        task(json!({"rate_limits": [{"dynamic_key": "input.(", "limit": 1, "period": "1s"}]}));
    assert_eq!(
        api_error(c.put_task("t", &bad_cel).await),
        (
            400,
            "invalid_expression".into(),
            Some("rate_limits[0].dynamic_key".into())
        )
    );
    let bad_period = task(json!({"lease_timeout": "soonish"}));
    let err = c.put_task("t", &bad_period).await.unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::InvalidPeriod), "{err}");
    server.stop().await;
}

#[tokio::test]
async fn a_run_is_enqueued_leased_heartbeated_and_completed() {
    let server = Server::start(fake_clock()).await;
    let c = &server.client;
    c.put_task("send-email", &task(json!({"lease_timeout": "30s"})))
        .await
        .unwrap();
    let meta = json!({"tier": "pro"});
    let run = c
        .enqueue("send-email", &json!({"to": "a@example.com"}), Some(&meta))
        .await
        .unwrap();
    assert_eq!(run.state, RunState::Queued);
    assert_eq!((run.task.as_str(), run.attempt), ("send-email", 0));
    assert_eq!(run.additional_metadata, meta);
    assert_eq!(c.get_run(&run.id).await.unwrap(), run);

    let leased = c
        .worker_lease("w1", &tasks(&["send-email"]), 10, None)
        .await
        .unwrap();
    assert_eq!(leased.len(), 1);
    let lease = &leased[0];
    assert_eq!((lease.id.as_str(), lease.attempt), (run.id.as_str(), 1));
    assert_eq!(lease.input, json!({"to": "a@example.com"}));
    let now_ms = server.state.now().as_millis_floor();
    assert_eq!(lease.lease_expires_at_ms, now_ms + 30_000);

    let beat = c.heartbeat(&run.id, Some(1)).await.unwrap();
    assert_eq!(beat.state, RunState::Running);
    assert_eq!(beat.worker_id.as_deref(), Some("w1"));
    assert_eq!(beat.lease_expires_at_ms, Some(now_ms + 30_000));

    let output = json!({"sent": true});
    let done = c.complete(&run.id, Some(1), Some(&output)).await.unwrap();
    assert_eq!(done.state, RunState::Succeeded);
    assert_eq!(done.output, Some(output));
    assert_eq!(c.get_run(&run.id).await.unwrap(), done);
    assert_eq!(
        c.get_task("send-email")
            .await
            .unwrap()
            .depth
            .get(RunState::Succeeded),
        1
    );

    // Metadata defaults to an empty object.
    let plain = c.enqueue("send-email", &json!(null), None).await.unwrap();
    assert_eq!(plain.additional_metadata, json!({}));
    assert_eq!(
        api_error(c.enqueue("nope", &json!({}), None).await).1,
        "unknown_task"
    );
    server.stop().await;
}

#[tokio::test]
async fn fail_release_and_cancel_move_runs_and_stale_attempts_are_refused() {
    let server = Server::start(fake_clock()).await;
    let c = &server.client;
    c.put_task("t", &task(json!({"max_attempts": 2})))
        .await
        .unwrap();
    let run = c.enqueue("t", &json!({}), None).await.unwrap();
    let t = tasks(&["t"]);

    assert_eq!(
        c.worker_lease("w1", &t, 1, None).await.unwrap()[0].attempt,
        1
    );
    let retried = c
        .fail(&run.id, Some(1), "upstream 502", true)
        .await
        .unwrap();
    assert_eq!(retried.state, RunState::Queued);
    assert_eq!(retried.error.as_deref(), Some("upstream 502"));

    assert_eq!(
        c.worker_lease("w2", &t, 1, None).await.unwrap()[0].attempt,
        2
    );
    // The first worker's attempt is over: it cannot touch the second.
    assert_eq!(
        api_error(c.heartbeat(&run.id, Some(1)).await),
        (409, "invalid_state".into(), Some("attempt".into()))
    );
    let released = c.release(&run.id, Some(2)).await.unwrap();
    assert_eq!(released.state, RunState::Queued);
    assert_eq!(released.worker_id, None);

    // The release did not count: attempt 2 again, and a failure without retry ends it.
    assert_eq!(
        c.worker_lease("w2", &t, 1, None).await.unwrap()[0].attempt,
        2
    );
    let failed = c.fail(&run.id, Some(2), "bad input", false).await.unwrap();
    assert_eq!(failed.state, RunState::Failed);
    assert_eq!(
        api_error(c.complete(&run.id, None, None).await),
        (409, "invalid_state".into(), None)
    );

    let queued = c.enqueue("t", &json!({}), None).await.unwrap();
    assert_eq!(
        c.cancel(&queued.id).await.unwrap().state,
        RunState::Cancelled
    );
    assert_eq!(api_error(c.cancel(&queued.id).await).1, "invalid_state");

    for r in [
        c.get_run("no-such-run").await,
        c.heartbeat("no-such-run", None).await,
        c.release("no-such-run", None).await,
        c.cancel("no-such-run").await,
    ] {
        assert_eq!(api_error(r).0, 404);
    }
    assert_eq!(api_error(c.get_run("no-such-run").await).1, "unknown_run");
    server.stop().await;
}

#[tokio::test]
async fn runs_wait_on_their_limits_and_are_listed_by_task_and_state() {
    let server = Server::start(fake_clock()).await;
    let c = &server.client;
    one_per_hour(c).await;
    c.put_task(
        "limited",
        &task(json!({"rate_limits": [{"static_key": "one-per-hour"}]})),
    )
    .await
    .unwrap();
    let first = c.enqueue("limited", &json!({"n": 1}), None).await.unwrap();
    let second = c.enqueue("limited", &json!({"n": 2}), None).await.unwrap();
    let leased = c
        .worker_lease("w1", &tasks(&["limited"]), 10, None)
        .await
        .unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].id, first.id);

    let parked = c.get_run(&second.id).await.unwrap();
    assert_eq!(parked.state, RunState::Waiting);
    assert_eq!(parked.waiting_on.as_deref(), Some("one-per-hour"));
    let eligible = parked.eligible_at_ms.unwrap();
    assert!(
        eligible > server.state.now().as_millis_floor(),
        "{parked:?}"
    );

    let waiting = c
        .list_runs(&RunFilter::all().task("limited").state(RunState::Waiting))
        .await
        .unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].id, second.id);
    let all = c.list_runs(&RunFilter::all()).await.unwrap();
    let ids: Vec<&str> = all.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, [second.id.as_str(), first.id.as_str()], "newest first");
    assert_eq!(
        c.list_runs(&RunFilter::all().limit(1)).await.unwrap().len(),
        1
    );
    assert_eq!(
        api_error(c.list_runs(&RunFilter::all().task("nope")).await),
        (422, "unknown_task".into(), Some("task".into()))
    );
    assert_eq!(
        api_error(c.list_runs(&RunFilter::all().limit(0)).await),
        (400, "invalid_field".into(), Some("limit".into()))
    );

    // Under `on_limit: skip` an over-limit run is stored as skipped, not refused.
    c.put_task(
        "skipping",
        &task(json!({"on_limit": "skip",
                     "rate_limits": [{"dynamic_key": "input.user", "limit": 1, "period": "1h"}]})),
    )
    .await
    .unwrap();
    let ok = c
        .enqueue("skipping", &json!({"user": "u1"}), None)
        .await
        .unwrap();
    assert_eq!(ok.state, RunState::Queued);
    let skipped = c
        .enqueue("skipping", &json!({"user": "u1"}), None)
        .await
        .unwrap();
    assert_eq!(skipped.state, RunState::Skipped);
    assert!(skipped.skip_reason.is_some(), "{skipped:?}");
    // An input the task's CEL cannot evaluate is refused: never an unlimited run.
    assert_eq!(
        api_error(c.enqueue("skipping", &json!({}), None).await),
        (
            422,
            "invalid_expression".into(),
            Some("rate_limits[0].dynamic_key".into())
        )
    );
    server.stop().await;
}

#[tokio::test]
async fn events_start_a_run_of_every_task_they_trigger() {
    let server = Server::start(fake_clock()).await;
    let c = &server.client;
    for name in ["welcome", "crm-sync"] {
        c.put_task(name, &task(json!({"triggers": ["user/created"]})))
            .await
            .unwrap();
    }
    let data = json!({"user_id": "u1"});
    let runs = c.send_event("user/created", &data, None).await.unwrap();
    let started: Vec<(&str, RunState)> = runs.iter().map(|r| (r.task.as_str(), r.state)).collect();
    assert_eq!(
        started,
        [
            ("crm-sync", RunState::Queued),
            ("welcome", RunState::Queued)
        ]
    );
    assert_eq!(c.get_run(&runs[0].id).await.unwrap().input, data);
    assert!(
        c.send_event("nobody/listens", &data, None)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        api_error(c.send_event("", &data, None).await),
        (400, "invalid_name".into(), Some("name".into()))
    );
    server.stop().await;
}

#[tokio::test]
async fn the_worker_long_poll_outlasts_the_client_timeout_and_wakes_on_enqueue() {
    let server = Server::start(fake_clock()).await;
    server
        .client
        .put_task("t", &TaskSpec::default())
        .await
        .unwrap();
    // A timeout shorter than the wait: the call's timeout must grow by the wait.
    let client = Client::builder()
        .base_url(&server.base)
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let t = tasks(&["t"]);
    let before = Instant::now();
    let none = client
        .worker_lease("w1", &t, 5, Some(Duration::from_millis(600)))
        .await
        .unwrap();
    assert!(none.is_empty());
    assert!(before.elapsed() >= Duration::from_millis(600));

    // A waiting lease is answered as soon as a run is enqueued (or at once, if the enqueue
    // wins the race: either way, long before the 30 s wait).
    let poller = client.clone();
    let polling = {
        let t = t.clone();
        tokio::spawn(async move {
            let before = Instant::now();
            let runs = poller
                .worker_lease("w1", &t, 5, Some(Duration::from_secs(30)))
                .await;
            (runs, before.elapsed())
        })
    };
    let run = server
        .client
        .enqueue("t", &json!({"n": 1}), None)
        .await
        .unwrap();
    let (runs, elapsed) = polling.await.unwrap();
    let runs = runs.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].id, run.id);
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");

    assert_eq!(
        api_error(
            client
                .worker_lease("w1", &tasks(&["t", "nope"]), 1, None)
                .await
        ),
        (422, "unknown_task".into(), Some("tasks[1]".into()))
    );
    assert_eq!(
        api_error(client.worker_lease("w1", &t, 0, None).await),
        (400, "invalid_field".into(), Some("max".into()))
    );
    server.stop().await;
}

/// A throttle, Inngest's rate limit and a key of the task's own, written with the builder,
/// reach the server as written and apply: the throttle admits one run an hour, a task-scoped
/// key is not shared, a run over the rate limit is skipped.
#[tokio::test]
async fn throttles_and_task_scoped_keys_are_written_with_the_builder() {
    let server = Server::start(fake_clock()).await;
    let c = &server.client;
    for name in ["a", "b"] {
        let builder = tollgate_client::Task::builder(name)
            .dynamic_limit("input.user", 1, 1, "1h")
            .scope_task()
            .throttle("2/h");
        assert!(builder.problems().is_empty(), "{:?}", builder.problems());
        let defined = c.put_task(name, builder.spec()).await.unwrap();
        assert_eq!(defined.spec.rate_limits, builder.spec().rate_limits);
        assert_eq!(defined.spec.throttle, builder.spec().throttle);
        assert_eq!(
            serde_json::to_value(&defined.spec).unwrap()["throttle"],
            json!("2/h")
        );
        for user in ["u1", "u1", "u2"] {
            c.enqueue(name, &json!({"user": user}), None).await.unwrap();
        }
    }
    let leased = c
        .worker_lease("w", &tasks(&["a", "b"]), 10, None)
        .await
        .unwrap();
    let mut got: Vec<String> = leased
        .iter()
        .map(|r| format!("{}/{}", r.task, r.input["user"].as_str().unwrap()))
        .collect();
    got.sort();
    // Each task's own u1 key admits one run; its throttle (burst 1) one run at once.
    assert_eq!(got, ["a/u1", "b/u1"]);
    let skipping =
        tollgate_client::Task::builder("d").skip_over_rate_per(1, "1h", None, Some("input.user"));
    c.put_task("d", skipping.spec()).await.unwrap();
    let first = c.enqueue("d", &json!({"user": "u1"}), None).await.unwrap();
    let over = c.enqueue("d", &json!({"user": "u1"}), None).await.unwrap();
    assert_eq!(
        (first.state, over.state),
        (RunState::Queued, RunState::Skipped)
    );
    let inngest =
        tollgate_client::Task::builder("c").throttle_per(10, "1h", Some(2), Some("input.user"));
    let defined = c.put_task("c", inngest.spec()).await.unwrap();
    assert_eq!(
        serde_json::to_value(&defined.spec).unwrap()["throttle"],
        json!({"limit": 10, "period": "1h", "burst": 2, "key": "input.user"})
    );
}

/// A run that starts later: `enqueue_after` and `enqueue_at` give a `scheduled` run due then;
/// an instant already past starts it at once.
#[tokio::test]
async fn runs_enqueued_for_later_are_scheduled_until_due() {
    let server = Server::start(fake_clock()).await;
    let c = &server.client;
    c.put_task("later", &TaskSpec::default()).await.unwrap();
    let after = c
        .enqueue_after("later", &json!({}), None, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(after.state, RunState::Scheduled);
    assert_eq!(
        after.eligible_at_ms.unwrap() - after.created_at_ms,
        60_000,
        "{after:?}"
    );
    let due = std::time::UNIX_EPOCH + Duration::from_millis(after.eligible_at_ms.unwrap());
    let at = c.enqueue_at("later", &json!({}), None, due).await.unwrap();
    assert_eq!(
        (at.state, at.eligible_at_ms),
        (RunState::Scheduled, after.eligible_at_ms)
    );
    let past = c
        .enqueue_at("later", &json!({}), None, std::time::UNIX_EPOCH)
        .await
        .unwrap();
    assert_eq!(past.state, RunState::Queued);
    // An event's runs, later; a retry after an upstream's Retry-After; a task's backoff.
    let spaced = tollgate_client::Task::builder("spaced")
        .trigger("go")
        .retry("1h", Some(3), Some("10h"))
        .max_attempts(3);
    let defined = c.put_task("spaced", spaced.spec()).await.unwrap();
    assert_eq!(
        serde_json::to_value(&defined.spec).unwrap()["retry"],
        json!({"backoff": "1h", "factor": 3, "max": "10h"})
    );
    let runs = c
        .send_event_after("go", &json!({}), None, Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(runs[0].state, RunState::Scheduled);
    let run = c.enqueue("spaced", &json!({}), None).await.unwrap();
    c.worker_lease("w", &tasks(&["spaced"]), 1, None)
        .await
        .unwrap();
    let retried = c
        .fail_retry_after(&run.id, None, "429", Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(retried.state, RunState::Scheduled);
    assert_eq!(
        retried.eligible_at_ms.unwrap() - retried.updated_at_ms,
        2_000
    );
}
