//! Runs over HTTP, driven like a worker would: enqueue, events, the lease long-poll,
//! heartbeat, complete, fail, release, cancel, lease expiry, listing, and the 404/409 cases.
//!
//! Where time matters the server runs on tokio's paused clock (`TokioClock`), so leases expire
//! and long-polls end at exact virtual instants and nothing sleeps for real.

mod common;

use std::time::Duration;

use common::{START, Server, fake_clock, id, ids};
use serde_json::{Value, json};
use tokio::time::Instant;
use tollgate::TokioClock;
use tollgate_server::Settings;

const START_MS: u64 = START.as_millis_floor();

async fn paused() -> Server {
    Server::start(TokioClock::new(START)).await
}

#[tokio::test]
async fn enqueue_answers_201_with_the_run_and_where_to_find_it() {
    let server = Server::start(fake_clock()).await;
    server.define_task("send-email", json!({})).await;
    let r = server
        .post(
            "/v1/tasks/send-email/runs",
            json!({"input": {"to": "a@example.com"}, "additional_metadata": {"tier": "pro"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let run = r.body.clone();
    let run_id = id(&run);
    assert_eq!(
        r.header("location"),
        Some(format!("/v1/runs/{run_id}").as_str())
    );
    assert_eq!(
        run,
        json!({
            "id": run_id, "task": "send-email", "state": "queued",
            "input": {"to": "a@example.com"}, "additional_metadata": {"tier": "pro"},
            "attempt": 0, "max_attempts": 3, "waiting_on": null, "eligible_at_ms": null,
            "skip_reason": null, "error": null, "output": null,
            "created_at_ms": START_MS, "updated_at_ms": START_MS,
            "lease_expires_at_ms": null, "worker_id": null, "priority": 2,
        })
    );
    assert_eq!(server.run(&run_id).await, run);

    // Metadata defaults to an empty object; input is required (any JSON).
    let plain = server.enqueue("send-email", json!(null)).await;
    assert_eq!(plain["additional_metadata"], json!({}));
    assert_eq!(plain["input"], json!(null));
    let r = server.post("/v1/tasks/send-email/runs", json!({})).await;
    assert_eq!((r.status, r.code()), (400, "missing_field"));
    assert_eq!(r.body["error"]["field"], "input");
    server.stop().await;
}

#[tokio::test]
async fn an_event_starts_a_run_of_every_task_it_triggers() {
    let server = Server::start(fake_clock()).await;
    for name in ["welcome-email", "crm-sync"] {
        server
            .define_task(name, json!({"triggers": ["user.created", "user.invited"]}))
            .await;
    }
    server
        .define_task("billing", json!({"triggers": ["invoice.paid"]}))
        .await;
    let r = server
        .post(
            "/v1/events",
            json!({"name": "user.created", "data": {"user_id": 7}, "additional_metadata": {"source": "api"}}),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let runs = r.body["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for (run, task) in runs.iter().zip(["crm-sync", "welcome-email"]) {
        assert_eq!(run["task"], task);
        assert_eq!(run["state"], "queued");
        assert_eq!(
            run.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["id", "state", "task"]
        );
    }
    let leased = server
        .lease(&["welcome-email", "crm-sync", "billing"], 10, 0)
        .await;
    assert_eq!(leased.len(), 2);
    for run in &leased {
        assert_eq!(run["input"], json!({"user_id": 7}), "data is the input");
        assert_eq!(run["additional_metadata"], json!({"source": "api"}));
    }

    // No task listens: accepted, nothing started.
    let r = server
        .post("/v1/events", json!({"name": "nobody.cares", "data": {}}))
        .await;
    assert_eq!((r.status, r.body.clone()), (202, json!({"runs": []})));
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_lease_returns_at_once_when_a_run_is_there_and_waits_only_while_none_is() {
    let server = paused().await;
    server.define_task("t", json!({})).await;
    let run = server.enqueue("t", json!({"n": 1})).await;

    let start = Instant::now();
    let leased = server.lease(&["t"], 10, 30_000).await;
    assert_eq!(start.elapsed(), Duration::ZERO, "a run was there");
    assert_eq!(
        leased,
        [json!({
            "id": id(&run), "task": "t", "input": {"n": 1}, "additional_metadata": {},
            "attempt": 1, "lease_expires_at_ms": START_MS + 30_000,
        })]
    );
    let running = server.run(&id(&run)).await;
    assert_eq!(running["state"], "running");
    assert_eq!(running["worker_id"], "w1");

    // Nothing there: waits the whole wait_ms, then answers with no runs.
    let start = Instant::now();
    assert!(server.lease(&["t"], 10, 1_500).await.is_empty());
    assert_eq!(start.elapsed(), Duration::from_millis(1_500));

    // A long-poll waiting when a run is enqueued gets it that instant.
    let poll = {
        let client = server.client.clone();
        let url = server.url("/v1/workers/lease");
        tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&json!({"worker_id": "w2", "tasks": ["t"], "max": 5, "wait_ms": 60_000}))
                .send()
                .await
                .unwrap();
            (Instant::now(), r.json::<Value>().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let enqueued_at = Instant::now();
    let second = server.enqueue("t", json!({"n": 2})).await;
    let (answered_at, body) = poll.await.unwrap();
    assert_eq!(ids(body["runs"].as_array().unwrap()), [id(&second)]);
    assert_eq!(answered_at, enqueued_at);
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn wait_ms_is_capped_by_the_servers_max_wait() {
    let settings = Settings {
        max_wait: Duration::from_secs(5),
        ..Settings::default()
    };
    let server = Server::with_settings(TokioClock::new(START), settings).await;
    server.define_task("t", json!({})).await;
    let start = Instant::now();
    assert!(server.lease(&["t"], 1, 3_600_000).await.is_empty());
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_waiting_long_poll_is_answered_at_once_when_the_server_shuts_down() {
    let server = paused().await;
    server.define_task("t", json!({})).await;
    let poll = {
        let client = server.client.clone();
        let url = server.url("/v1/workers/lease");
        tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&json!({"worker_id": "w1", "tasks": ["t"], "max": 5, "wait_ms": 60_000}))
                .send()
                .await
                .unwrap();
            (
                Instant::now(),
                r.status().as_u16(),
                r.json::<Value>().await.unwrap(),
            )
        })
    };
    // In virtual time: the poll is waiting once the runtime has gone idle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stopping_at = Instant::now();
    server.stop().await;
    let (answered_at, status, body) = poll.await.unwrap();
    assert_eq!((status, body), (200, json!({"runs": []})));
    assert_eq!(answered_at, stopping_at, "not held for the rest of wait_ms");
}

#[tokio::test(start_paused = true)]
async fn heartbeats_extend_the_lease_and_complete_records_the_output() {
    let server = paused().await;
    server
        .define_task("t", json!({"lease_timeout": "10s"}))
        .await;
    let run_id = id(&server.enqueue("t", json!({})).await);
    let leased = server.lease(&["t"], 1, 0).await;
    assert_eq!(leased[0]["lease_expires_at_ms"], START_MS + 10_000);

    tokio::time::sleep(Duration::from_secs(8)).await;
    let r = server
        .act(&run_id, "heartbeat", json!({"attempt": 1}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["lease_expires_at_ms"], START_MS + 18_000);
    assert_eq!(r.body["state"], "running");
    // Past the first expiry, still running; an empty body is a heartbeat too.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(server.run(&run_id).await["state"], "running");
    let r = server
        .send("POST", &format!("/v1/runs/{run_id}/heartbeat"), None)
        .await;
    assert_eq!(r.body["lease_expires_at_ms"], START_MS + 26_000);

    let r = server
        .act(
            &run_id,
            "complete",
            json!({"output": {"sent": true}, "attempt": 1}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["state"], "succeeded");
    assert_eq!(r.body["output"], json!({"sent": true}));
    assert_eq!(r.body["lease_expires_at_ms"], Value::Null);
    assert_eq!(server.run(&run_id).await, r.body);
    server.stop().await;
}

#[tokio::test]
async fn fail_with_retry_requeues_until_max_attempts_then_fails() {
    let server = Server::start(fake_clock()).await;
    server
        .define_task("flaky", json!({"max_attempts": 3}))
        .await;
    let run_id = id(&server.enqueue("flaky", json!({})).await);
    for attempt in 1..=3 {
        let leased = server.lease(&["flaky"], 1, 0).await;
        assert_eq!(ids(&leased), std::slice::from_ref(&run_id));
        assert_eq!(leased[0]["attempt"], attempt);
        let r = server
            .act(
                &run_id,
                "fail",
                json!({"error": format!("boom {attempt}"), "retry": true, "attempt": attempt}),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.body["error"], format!("boom {attempt}"));
        let expected = if attempt < 3 { "queued" } else { "failed" };
        assert_eq!(r.body["state"], expected, "after attempt {attempt}");
    }
    assert!(server.lease(&["flaky"], 1, 0).await.is_empty());

    // Without retry, one failure is final.
    let once = id(&server.enqueue("flaky", json!({})).await);
    server.lease(&["flaky"], 1, 0).await;
    let r = server
        .act(&once, "fail", json!({"error": "bad input"}))
        .await;
    assert_eq!(
        (r.body["state"].clone(), r.body["attempt"].clone()),
        (json!("failed"), json!(1))
    );
    server.stop().await;
}

#[tokio::test]
async fn release_hands_a_run_back_without_counting_the_attempt() {
    let server = Server::start(fake_clock()).await;
    server.define_task("t", json!({"max_attempts": 1})).await;
    let run_id = id(&server.enqueue("t", json!({})).await);
    assert_eq!(server.lease(&["t"], 1, 0).await[0]["attempt"], 1);
    let r = server.act(&run_id, "release", json!({"attempt": 1})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        (r.body["state"].clone(), r.body["attempt"].clone()),
        (json!("queued"), json!(0))
    );
    assert_eq!(r.body["worker_id"], Value::Null);
    // With max_attempts 1, a counted attempt would have left none.
    let again = server.lease_as("w2", &["t"], 1, 0).await;
    assert_eq!(
        (id(&again[0]), again[0]["attempt"].clone()),
        (run_id.clone(), json!(1))
    );
    server.stop().await;
}

#[tokio::test]
async fn cancel_ends_a_run_that_has_not_ended() {
    let server = Server::start(fake_clock()).await;
    server.define_task("t", json!({})).await;
    let queued = id(&server.enqueue("t", json!({})).await);
    let r = server.act(&queued, "cancel", json!({})).await;
    assert_eq!(
        (r.status, r.body["state"].clone()),
        (200, json!("cancelled"))
    );
    assert!(server.lease(&["t"], 10, 0).await.is_empty(), "never leased");
    let r = server.act(&queued, "cancel", json!({})).await;
    assert_eq!((r.status, r.code()), (409, "invalid_state"));

    // A running run: its worker learns of it on its next call.
    let running = id(&server.enqueue("t", json!({})).await);
    server.lease(&["t"], 1, 0).await;
    let r = server
        .send("POST", &format!("/v1/runs/{running}/cancel"), None)
        .await;
    assert_eq!(r.body["state"], "cancelled");
    let r = server
        .act(&running, "complete", json!({"attempt": 1}))
        .await;
    assert_eq!((r.status, r.code()), (409, "invalid_state"));
    let r = server.act(&running, "cancel", json!({"reason": "x"})).await;
    assert_eq!((r.status, r.code()), (400, "unknown_field"));
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_expired_lease_requeues_the_run_as_the_next_attempt_and_frees_its_slot() {
    let server = paused().await;
    server
        .define_task(
            "t",
            json!({"lease_timeout": "5s", "concurrency": [{"key": "'only-one'", "limit": 1}]}),
        )
        .await;
    let first = id(&server.enqueue("t", json!({})).await);
    let leased = server.lease_as("w1", &["t"], 10, 0).await;
    assert_eq!(ids(&leased), std::slice::from_ref(&first));

    // w1 stops heartbeating: at lease_expires_at the run is queued again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let r = server.run(&first).await;
    assert_eq!(r["state"], "queued");
    assert_eq!(r["error"], "lease expired on attempt 1");
    assert_eq!(r["worker_id"], Value::Null);

    // The slot was freed: the run leases again at once, as attempt 2.
    let again = server.lease_as("w2", &["t"], 10, 0).await;
    assert_eq!(
        (id(&again[0]), again[0]["attempt"].clone()),
        (first.clone(), json!(2))
    );

    // The stale worker cannot touch the new attempt, and is told why.
    let r = server.act(&first, "complete", json!({"attempt": 1})).await;
    assert_eq!((r.status, r.code()), (409, "invalid_state"));
    assert_eq!(r.body["error"]["field"], "attempt");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("attempt 2"),
        "{:?}",
        r.body
    );
    let r = server.act(&first, "heartbeat", json!({"attempt": 1})).await;
    assert_eq!((r.status, r.code()), (409, "invalid_state"));
    let r = server.act(&first, "complete", json!({"attempt": 2})).await;
    assert_eq!(
        (r.status, r.body["state"].clone()),
        (200, json!("succeeded"))
    );
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_lease_that_expires_on_the_last_attempt_fails_the_run() {
    let server = paused().await;
    server
        .define_task("t", json!({"lease_timeout": "1s", "max_attempts": 2}))
        .await;
    let run_id = id(&server.enqueue("t", json!({})).await);
    for attempt in 1..=2 {
        let leased = server.lease(&["t"], 1, 10_000).await;
        assert_eq!(leased[0]["attempt"], attempt);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let r = server.run(&run_id).await;
    assert_eq!(r["state"], "failed");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("lease expired on attempt 2 of 2"),
        "{r}"
    );
    server.stop().await;
}

#[tokio::test]
async fn unknown_runs_are_404_and_calls_the_state_does_not_allow_are_409() {
    let server = Server::start(fake_clock()).await;
    server.define_task("t", json!({})).await;
    for (method, path) in [
        ("GET", "/v1/runs/nope"),
        ("GET", "/v1/runs/%FF"),
        ("POST", "/v1/runs/nope/heartbeat"),
        ("POST", "/v1/runs/nope/complete"),
        ("POST", "/v1/runs/nope/release"),
        ("POST", "/v1/runs/nope/cancel"),
        ("POST", "/v1/runs/%FF/complete"),
    ] {
        let r = server.send(method, path, None).await;
        assert_eq!(
            (r.status, r.code()),
            (404, "unknown_run"),
            "{method} {path}"
        );
    }
    let r = server.act("nope", "fail", json!({"error": "x"})).await;
    assert_eq!((r.status, r.code()), (404, "unknown_run"));

    let queued = id(&server.enqueue("t", json!({})).await);
    for action in ["heartbeat", "complete", "release"] {
        let r = server.act(&queued, action, json!({})).await;
        assert_eq!((r.status, r.code()), (409, "invalid_state"), "{action}");
        assert!(
            r.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("queued"),
            "{:?}",
            r.body
        );
    }
    let r = server.act(&queued, "fail", json!({"error": "x"})).await;
    assert_eq!((r.status, r.code()), (409, "invalid_state"));

    server.lease(&["t"], 1, 0).await;
    assert_eq!(server.act(&queued, "complete", json!({})).await.status, 200);
    let r = server.act(&queued, "complete", json!({})).await;
    assert_eq!(
        (r.status, r.code()),
        (409, "invalid_state"),
        "completed twice"
    );
    let r = server.act(&queued, "fail", json!({})).await;
    assert_eq!((r.status, r.code()), (400, "missing_field"));
    assert_eq!(r.body["error"]["field"], "error");
    server.stop().await;
}

#[tokio::test]
async fn runs_are_listed_newest_first_and_filtered_by_task_and_state() {
    let server = Server::start(fake_clock()).await;
    server.define_task("a", json!({})).await;
    server.define_task("b", json!({})).await;
    let a = server.enqueue_n("a", 3, json!({})).await;
    let b = server.enqueue_n("b", 2, json!({})).await;
    let leased = server.lease(&["a"], 1, 0).await;
    assert_eq!(ids(&leased), [a[0].clone()]);

    let list = |query: &'static str| {
        let server = &server;
        async move {
            let r = server.get(&format!("/v1/runs{query}")).await;
            assert_eq!(r.status, 200, "{query}: {:?}", r.body);
            ids(r.body["runs"].as_array().unwrap())
        }
    };
    assert_eq!(
        list("").await,
        [&b[1], &b[0], &a[2], &a[1], &a[0]].map(String::clone)
    );
    assert_eq!(
        list("?task=a").await,
        [&a[2], &a[1], &a[0]].map(String::clone)
    );
    assert_eq!(list("?state=running").await, [a[0].clone()]);
    assert_eq!(
        list("?task=a&state=queued").await,
        [&a[2], &a[1]].map(String::clone)
    );
    assert_eq!(list("?task=b&state=running").await, Vec::<String>::new());
    assert_eq!(list("?limit=2").await, [&b[1], &b[0]].map(String::clone));
    assert_eq!(
        list("?task=&state=&limit=").await.len(),
        5,
        "empty means unset"
    );

    for (query, status, code, field) in [
        ("?state=done", 400, "invalid_field", "state"),
        ("?limit=0", 400, "invalid_field", "limit"),
        ("?limit=1001", 400, "invalid_field", "limit"),
        ("?limit=many", 400, "invalid_field", "limit"),
        ("?status=queued", 400, "unknown_field", "status"),
        ("?task=nope", 422, "unknown_task", "task"),
    ] {
        let r = server.get(&format!("/v1/runs{query}")).await;
        assert_eq!(
            (r.status, r.code(), r.body["error"]["field"].as_str()),
            (status, code, Some(field)),
            "{query}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn lease_requests_are_validated() {
    let server = Server::start(fake_clock()).await;
    server.define_task("t", json!({})).await;
    let body = |worker: &str, tasks: Value, max: Value| json!({"worker_id": worker, "tasks": tasks, "max": max});
    for (req, status, code, field) in [
        (
            body("", json!(["t"]), json!(1)),
            400,
            "invalid_field",
            "worker_id",
        ),
        (
            body("w\n1", json!(["t"]), json!(1)),
            400,
            "invalid_field",
            "worker_id",
        ),
        (
            body("w", json!([]), json!(1)),
            400,
            "invalid_field",
            "tasks",
        ),
        (
            body("w", json!(["t", "nope"]), json!(1)),
            422,
            "unknown_task",
            "tasks[1]",
        ),
        (
            body("w", json!(["t"]), json!(0)),
            400,
            "invalid_field",
            "max",
        ),
        (
            body("w", json!(["t"]), json!(1001)),
            400,
            "invalid_field",
            "max",
        ),
        (
            body("w", json!(["t"]), json!(-1)),
            400,
            "invalid_field",
            "max",
        ),
        (
            body("w", json!("t"), json!(1)),
            400,
            "invalid_field",
            "tasks",
        ),
        (
            json!({"worker_id": "w", "tasks": ["t"]}),
            400,
            "missing_field",
            "max",
        ),
        (
            json!({"tasks": ["t"], "max": 1}),
            400,
            "missing_field",
            "worker_id",
        ),
        (
            json!({"worker_id": "w", "tasks": ["t"], "max": 1, "wait_ms": -5}),
            400,
            "invalid_field",
            "wait_ms",
        ),
        (
            json!({"worker_id": "w", "tasks": ["t"], "max": 1, "slots": 3}),
            400,
            "unknown_field",
            "slots",
        ),
    ] {
        let r = server.post("/v1/workers/lease", req.clone()).await;
        assert_eq!(
            (r.status, r.code(), r.body["error"]["field"].as_str()),
            (status, code, Some(field)),
            "{req}: {:?}",
            r.body
        );
    }
    // A task named twice gets one share, and max is respected across tasks.
    server.define_task("u", json!({})).await;
    server.enqueue_n("t", 3, json!({})).await;
    server.enqueue_n("u", 3, json!({})).await;
    let leased = server.lease(&["t", "t", "u"], 4, 0).await;
    let tasks: Vec<&str> = leased.iter().map(|r| r["task"].as_str().unwrap()).collect();
    assert_eq!(tasks, ["t", "u", "t", "u"], "one per task in turn");
    server.stop().await;
}
