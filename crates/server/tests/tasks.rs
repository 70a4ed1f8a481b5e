//! Task definitions over HTTP: `PUT/GET /v1/tasks/{name}`, `GET /v1/tasks`, and every
//! definition error with its status, code and field.

mod common;

use common::{Server, fake_clock};
use serde_json::{Value, json};

async fn server() -> Server {
    let server = Server::start(fake_clock()).await;
    server
        .define_limit("test-limit", json!({"rate": "2/s"}))
        .await;
    server
        .define_limit("small", json!({"limit": 3, "period": "1m"}))
        .await;
    server
        .define_limit("db", json!({"algorithm": "concurrency", "limit": 2}))
        .await;
    server
}

fn zero_depth() -> Value {
    json!({"scheduled": 0, "queued": 0, "waiting": 0, "running": 0, "succeeded": 0, "failed": 0, "skipped": 0, "cancelled": 0})
}

#[tokio::test]
async fn an_empty_definition_is_answered_with_every_default_shown() {
    let server = server().await;
    let t = server.define_task("noop", json!({})).await;
    assert_eq!(
        t,
        json!({
            "name": "noop",
            "spec": {"rate_limits": [], "concurrency": [], "on_limit": "requeue",
                     "idempotency": null, "triggers": [], "max_attempts": 3, "lease_timeout": "30s",
                     "throttle": null, "rate_limit": null, "retry": null},
            "depth": zero_depth(),
        })
    );
    assert_eq!(server.get("/v1/tasks/noop").await.body, t);
    server.stop().await;
}

#[tokio::test]
async fn a_full_definition_is_kept_as_given_and_reads_back_as_the_same_task() {
    let server = server().await;
    let spec = json!({
        "rate_limits": [
            {"static_key": "test-limit", "units": 1},
            {"dynamic_key": "input.user_id", "units": 1, "limit": 10, "period": "MINUTE"},
            {"dynamic_key": "'tier:' + additional_metadata.tier", "units": "input.weight",
             "limit": "additional_metadata.tier == 'pro' ? 100 : 10", "period": "1h",
             "algorithm": "gcra", "burst": 5}
        ],
        "concurrency": [{"key": "input.account_id", "limit": 2}],
        "on_limit": "skip",
        "idempotency": {"key": "event.data.id", "period": "24h"},
        "triggers": ["intercom/company.updated"],
        "max_attempts": 5,
        "lease_timeout": "2m",
        "throttle": null,
        "rate_limit": null,
        "retry": null
    });
    let t = server.define_task("sync", spec.clone()).await;
    assert_eq!(t["name"], "sync");
    assert_eq!(t["spec"], spec, "nothing added, nothing rewritten");
    // What GET shows can be sent back as it is.
    let again = server.define_task("sync", t["spec"].clone()).await;
    assert_eq!(again["spec"], spec);
    server.stop().await;
}

#[tokio::test]
async fn tasks_are_listed_by_name_with_their_depth_per_state() {
    let server = server().await;
    server.define_task("b-task", json!({})).await;
    server
        .define_task(
            "a-task",
            json!({"rate_limits": [{"static_key": "small", "units": 1}]}),
        )
        .await;
    server.enqueue_n("a-task", 5, json!({})).await;
    server.enqueue_n("b-task", 2, json!({})).await;
    // Three of a-task's runs fit "small"; the other two park on it.
    let leased = server.lease(&["a-task"], 10, 0).await;
    assert_eq!(leased.len(), 3);
    let done = common::id(&leased[0]);
    assert_eq!(server.act(&done, "complete", json!({})).await.status, 200);

    let list = server.get("/v1/tasks").await;
    assert_eq!(list.status, 200);
    let tasks = list.body["tasks"].as_array().unwrap();
    let names: Vec<&str> = tasks.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a-task", "b-task"]);
    assert_eq!(
        tasks[0]["depth"],
        json!({"scheduled": 0, "queued": 0, "waiting": 2, "running": 2, "succeeded": 1, "failed": 0, "skipped": 0, "cancelled": 0})
    );
    assert_eq!(tasks[1]["depth"]["queued"], 2);
    assert_eq!(
        server.get("/v1/tasks/a-task").await.body["depth"],
        tasks[0]["depth"]
    );
    server.stop().await;
}

#[tokio::test]
async fn redefining_a_task_applies_to_new_runs() {
    let server = server().await;
    server.define_task("t", json!({"max_attempts": 1})).await;
    let old = server.enqueue("t", json!({})).await;
    let t = server.define_task("t", json!({"max_attempts": 4})).await;
    assert_eq!(t["spec"]["max_attempts"], 4);
    let new = server.enqueue("t", json!({})).await;
    assert_eq!(
        old["max_attempts"], 1,
        "a run keeps what it was enqueued with"
    );
    assert_eq!(new["max_attempts"], 4);
    assert_eq!(
        server.get("/v1/tasks").await.body["tasks"][0]["depth"]["queued"],
        2
    );
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_task_is_404() {
    let server = server().await;
    for path in ["/v1/tasks/nope", "/v1/tasks/%FF"] {
        let r = server.get(path).await;
        assert_eq!((r.status, r.code()), (404, "unknown_task"), "{path}");
        assert_eq!(r.body["error"]["field"], "name");
    }
    let r = server
        .post("/v1/tasks/nope/runs", json!({"input": {}}))
        .await;
    assert_eq!((r.status, r.code()), (404, "unknown_task"));
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"nope\"")
    );
    server.stop().await;
}

#[tokio::test]
async fn every_definition_error_names_its_status_code_and_field() {
    let server = server().await;
    let rl = |x: Value| json!({"rate_limits": [{"static_key": "test-limit"}, x]});
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        // CEL that does not compile: 400, naming the field.
        (
            rl(json!({"dynamic_key": "input.user_id +", "limit": 10, "period": "1m"})),
            400,
            "invalid_expression",
            "rate_limits[1].dynamic_key",
        ),
        (
            rl(json!({"dynamic_key": "user_id", "limit": 10, "period": "1m"})),
            400,
            "invalid_expression",
            "rate_limits[1].dynamic_key",
        ),
        (
            rl(
                json!({"dynamic_key": "input.u", "units": "input.w *", "limit": 10, "period": "1m"}),
            ),
            400,
            "invalid_expression",
            "rate_limits[1].units",
        ),
        (
            rl(json!({"dynamic_key": "input.u", "limit": "(", "period": "1m"})),
            400,
            "invalid_expression",
            "rate_limits[1].limit",
        ),
        (
            json!({"concurrency": [{"key": "input.account_id ==", "limit": 2}]}),
            400,
            "invalid_expression",
            "concurrency[0].key",
        ),
        (
            json!({"idempotency": {"key": "nope.id", "period": "1h"}}),
            400,
            "invalid_expression",
            "idempotency.key",
        ),
        // Declared limits: unknown, too small, the wrong kind — valid JSON, impossible: 422.
        (
            rl(json!({"static_key": "missing"})),
            422,
            "unknown_limit",
            "rate_limits[1].static_key",
        ),
        (
            rl(json!({"static_key": "small", "units": 4})),
            422,
            "insufficient_capacity",
            "rate_limits[1].units",
        ),
        (
            rl(json!({"dynamic_key": "input.u", "units": 6, "limit": 5, "period": "1m"})),
            422,
            "insufficient_capacity",
            "rate_limits[1].units",
        ),
        (
            rl(json!({"static_key": "db"})),
            422,
            "wrong_algorithm",
            "rate_limits[1].static_key",
        ),
        // Malformed definitions: 400.
        (
            rl(json!({"static_key": "small", "dynamic_key": "input.u"})),
            400,
            "invalid_field",
            "rate_limits[1]",
        ),
        (
            rl(json!({"units": 1})),
            400,
            "missing_field",
            "rate_limits[1]",
        ),
        (
            rl(json!({"static_key": "small", "limit": 5})),
            400,
            "invalid_field",
            "rate_limits[1].limit",
        ),
        (
            rl(json!({"static_key": "small", "units": 0})),
            400,
            "invalid_field",
            "rate_limits[1].units",
        ),
        (
            rl(json!({"static_key": "small", "units": -1})),
            400,
            "invalid_field",
            "rate_limits[1].units",
        ),
        (
            rl(json!({"static_key": "small", "units": 1.5})),
            400,
            "invalid_field",
            "rate_limits[1].units",
        ),
        (
            rl(json!({"dynamic_key": "input.u", "limit": 10, "period": "fortnightly"})),
            400,
            "invalid_period",
            "rate_limits[1].period",
        ),
        (
            rl(json!({"dynamic_key": "input.u", "rate": "5 per day"})),
            400,
            "invalid_rate",
            "rate_limits[1].rate",
        ),
        (
            rl(json!({"dynamic_key": "input.u", "limit": 10})),
            400,
            "missing_field",
            "rate_limits[1].period",
        ),
        (
            rl(
                json!({"dynamic_key": "input.u", "limit": 10, "period": "1m", "algorithm": "leaky"}),
            ),
            400,
            "invalid_field",
            "rate_limits[1].algorithm",
        ),
        (
            rl(json!({"static_key": "small", "unit": 1})),
            400,
            "unknown_field",
            "rate_limits[1].unit",
        ),
        (
            // Inngest's rate_limit is one rate: a list is rate_limits mistyped, and says so.
            json!({"rate_limit": []}),
            400,
            "invalid_field",
            "rate_limit",
        ),
        (
            json!({"concurrency": [{"key": "'k'", "limit": 0}]}),
            400,
            "invalid_field",
            "concurrency[0].limit",
        ),
        (
            json!({"concurrency": [{"key": "'k'"}]}),
            400,
            "missing_field",
            "concurrency[0].limit",
        ),
        (
            json!({"on_limit": "drop"}),
            400,
            "invalid_field",
            "on_limit",
        ),
        (
            json!({"max_attempts": 0}),
            400,
            "invalid_field",
            "max_attempts",
        ),
        (
            json!({"max_attempts": 101}),
            400,
            "invalid_field",
            "max_attempts",
        ),
        (
            json!({"max_attempts": "3"}),
            400,
            "invalid_field",
            "max_attempts",
        ),
        (
            json!({"lease_timeout": "soon"}),
            400,
            "invalid_period",
            "lease_timeout",
        ),
        (
            json!({"idempotency": {"key": "input.id", "period": "forever"}}),
            400,
            "invalid_period",
            "idempotency.period",
        ),
        (
            json!({"triggers": [""]}),
            400,
            "invalid_field",
            "triggers[0]",
        ),
        (json!({"triggers": "a"}), 400, "invalid_field", "triggers"),
    ];
    let mut failures = Vec::new();
    for (spec, status, code, field) in &cases {
        let r = server.put("/v1/tasks/t", spec.clone()).await;
        let got = (r.status, r.code(), r.body["error"]["field"].as_str());
        if got != (*status, *code, Some(*field)) {
            failures.push(format!(
                "{spec}\n    expected {:?}\n    got      {:?}",
                (status, code, field),
                r.body
            ));
        }
        assert!(
            !r.body["error"]["message"].as_str().unwrap_or("").is_empty(),
            "{spec}: no message"
        );
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // None of them defined anything.
    assert_eq!(server.get("/v1/tasks").await.body, json!({"tasks": []}));
    server.stop().await;
}

#[tokio::test]
async fn definition_errors_quote_the_expression_and_what_cel_said() {
    let server = server().await;
    let r = server
        .put(
            "/v1/tasks/t",
            json!({"rate_limits": [{"dynamic_key": "input.user_id +", "limit": 10, "period": "1m"}]}),
        )
        .await;
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("input.user_id +"), "{message}");
    let r = server
        .put(
            "/v1/tasks/t",
            json!({"rate_limits": [{"static_key": "missing"}]}),
        )
        .await;
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"missing\"")
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_task_names_are_refused() {
    let server = server().await;
    let long = "t".repeat(513);
    let r = server.put(&format!("/v1/tasks/{long}"), json!({})).await;
    assert_eq!((r.status, r.code()), (400, "invalid_name"));
    assert_eq!(r.body["error"]["field"], "name");
    let r = server.put("/v1/tasks/a%0Ab", json!({})).await;
    assert_eq!((r.status, r.code()), (400, "invalid_name"));
    let r = server.put("/v1/tasks/%FF", json!({})).await;
    assert_eq!((r.status, r.code()), (400, "invalid_name"));
    server.stop().await;
}
