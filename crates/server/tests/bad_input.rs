//! Bad input everywhere gets a clear 4xx with a stable code and the field it is about: never a
//! 500, a panic or a hang.

mod common;

use common::{Server, fake_clock};
use serde_json::json;
use tollgate::MAX_KEY_LEN;
use tollgate_server::Settings;

const MAX_BODY: usize = 4096;

async fn server() -> Server {
    let settings = Settings {
        max_body: MAX_BODY,
        ..Settings::default()
    };
    let server = Server::with_settings(fake_clock(), settings).await;
    for (key, def) in [
        ("api", json!({"limit": 10, "period": "1m"})),
        ("small", json!({"limit": 3, "period": "1m"})),
        ("db", json!({"algorithm": "concurrency", "limit": 2})),
    ] {
        assert_eq!(
            server.put(&format!("/v1/limits/{key}"), def).await.status,
            200
        );
    }
    let job =
        json!({"rate_limits": [{"dynamic_key": "input.user_id", "limit": 10, "period": "1m"}]});
    assert_eq!(server.put("/v1/tasks/job", job).await.status, 200);
    server
}

struct Case {
    method: &'static str,
    path: String,
    body: Option<String>,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
}

fn case(
    method: &'static str,
    path: impl Into<String>,
    body: impl Into<Option<String>>,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
) -> Case {
    Case {
        method,
        path: path.into(),
        body: body.into(),
        status,
        code,
        field,
    }
}

fn acquire(limits: &str) -> String {
    format!(r#"{{"limits": [{limits}]}}"#)
}

#[tokio::test]
async fn bad_input_gets_a_status_a_code_and_the_field() {
    let server = server().await;
    let long_key = "k".repeat(MAX_KEY_LEN + 1);
    let s = |x: &str| Some(x.to_owned());
    let cases = vec![
        // Malformed JSON and wrong shapes.
        case(
            "POST",
            "/v1/acquire",
            s(r#"{"limits": ["#),
            400,
            "invalid_json",
            None,
        ),
        case(
            "POST",
            "/v1/acquire",
            s("not json"),
            400,
            "invalid_json",
            None,
        ),
        case(
            "POST",
            "/v1/acquire",
            s(r#"{"limits": []} trailing"#),
            400,
            "invalid_json",
            None,
        ),
        case(
            "POST",
            "/v1/acquire",
            s("[1, 2]"),
            400,
            "invalid_field",
            None,
        ),
        case(
            "POST",
            "/v1/acquire",
            s("{}"),
            400,
            "missing_field",
            Some("limits"),
        ),
        case(
            "POST",
            "/v1/acquire",
            None,
            400,
            "missing_field",
            Some("limits"),
        ),
        case(
            "POST",
            "/v1/acquire",
            s(r#"{"limits": {}}"#),
            400,
            "invalid_field",
            Some("limits"),
        ),
        case(
            "POST",
            "/v1/acquire",
            s(&acquire(r#"{"units": 1}"#)),
            400,
            "missing_field",
            Some("limits[0].key"),
        ),
        case(
            "POST",
            "/v1/acquire",
            s(&acquire(r#"{"key": 7}"#)),
            400,
            "invalid_field",
            Some("limits[0].key"),
        ),
        case(
            "POST",
            "/v1/acquire",
            s(&acquire(r#"{"key": "api", "units": "two"}"#)),
            400,
            "invalid_field",
            Some("limits[0].units"),
        ),
        case(
            "POST",
            "/v1/acquire",
            s(&acquire(r#"{"key": "api"}, {"key": "api", "units": 1.5}"#)),
            400,
            "invalid_field",
            Some("limits[1].units"),
        ),
        case(
            "POST",
            "/v1/acquire",
            s(r#"{"limits": [{"key": "api"}], "wait_ms": "soon"}"#),
            400,
            "invalid_field",
            Some("wait_ms"),
        ),
        case(
            "POST",
            "/v1/acquire",
            s(r#"{"limits": [{"key": "api"}], "wait_ms": -1}"#),
            400,
            "invalid_field",
            Some("wait_ms"),
        ),
        // Unknown fields are refused, not ignored.
        case(
            "POST",
            "/v1/acquire",
            s(&acquire(r#"{"key": "api", "unit": 1}"#)),
            400,
            "unknown_field",
            Some("limits[0].unit"),
        ),
        case(
            "POST",
            "/v1/acquire",
            s(r#"{"limits": [{"key": "api"}], "wait": 5}"#),
            400,
            "unknown_field",
            Some("wait"),
        ),
        case(
            "PUT",
            "/v1/limits/x",
            s(r#"{"limit": 1, "period": "1s", "brust": 2}"#),
            400,
            "unknown_field",
            Some("brust"),
        ),
        // Zero and negative units and limits.
        case(
            "POST",
            "/v1/acquire",
            s(&acquire(r#"{"key": "api", "units": 0}"#)),
            400,
            "invalid_field",
            Some("limits[0].units"),
        ),
        case(
            "POST",
            "/v1/acquire",
            s(&acquire(r#"{"key": "api", "units": -1}"#)),
            400,
            "invalid_field",
            Some("limits[0].units"),
        ),
        case(
            "POST",
            "/v1/acquire",
            s(&acquire(r#"{"key": "api", "units": 4294967296}"#)),
            400,
            "invalid_field",
            Some("limits[0].units"),
        ),
        case(
            "POST",
            "/v1/acquire",
            s(&acquire(r#"{"key": "u", "limit": 0, "period": "1s"}"#)),
            400,
            "invalid_field",
            Some("limits[0].limit"),
        ),
        case(
            "POST",
            "/v1/acquire",
            s(&acquire(r#"{"key": "u", "limit": -5, "period": "1s"}"#)),
            400,
            "invalid_field",
            Some("limits[0].limit"),
        ),
        case(
            "PUT",
            "/v1/limits/x",
            s(r#"{"limit": 0, "period": "1s"}"#),
            400,
            "invalid_field",
            Some("limit"),
        ),
        case(
            "PUT",
            "/v1/limits/x",
            s(r#"{"limit": -1, "period": "1s"}"#),
            400,
            "invalid_field",
            Some("limit"),
        ),
        case(
            "PUT",
            "/v1/limits/x",
            s(r#"{"limit": "ten", "period": "1s"}"#),
            400,
            "invalid_field",
            Some("limit"),
        ),
        case(
            "POST",
            "/v1/leases",
            s(r#"{"key": "k", "limit": 0}"#),
            400,
            "invalid_field",
            Some("limit"),
        ),
        case(
            "POST",
            "/v1/leases",
            s(r#"{"key": "k", "limit": -2}"#),
            400,
            "invalid_field",
            Some("limit"),
        ),
        case(
            "POST",
            "/v1/leases",
            s(r#"{"key": "k", "limit": 1, "ttl_ms": 0}"#),
            400,
            "invalid_field",
            Some("ttl_ms"),
        ),
        case(
            "POST",
            "/v1/barriers/b",
            s(r#"{"parties": 0, "ttl_ms": 1000}"#),
            400,
            "invalid_field",
            Some("parties"),
        ),
        case(
            "POST",
            "/v1/barriers/b",
            s(r#"{"parties": 2, "ttl_ms": 0}"#),
            400,
            "invalid_field",
            Some("ttl_ms"),
        ),
        case(
            "POST",
            "/v1/barriers/b",
            s(r#"{"parties": 2}"#),
            400,
            "missing_field",
            Some("ttl_ms"),
        ),
        // Periods and rates: the error quotes the input.
        case(
            "PUT",
            "/v1/limits/x",
            s(r#"{"limit": 10, "period": "fortnightly"}"#),
            400,
            "invalid_period",
            Some("period"),
        ),
        case(
            "POST",
            "/v1/acquire",
            s(&acquire(
                r#"{"key": "u", "limit": 5, "period": "10 apples"}"#,
            )),
            400,
            "invalid_period",
            Some("limits[0].period"),
        ),
        case(
            "POST",
            "/v1/acquire",
            s(&acquire(r#"{"key": "u", "rate": "5 per day"}"#)),
            400,
            "invalid_rate",
            Some("limits[0].rate"),
        ),
        case(
            "PUT",
            "/v1/limits/x",
            s(r#"{"limit": 10}"#),
            400,
            "missing_field",
            Some("period"),
        ),
        case(
            "PUT",
            "/v1/limits/x",
            s(r#"{"algorithm": "leaky", "rate": "1/s"}"#),
            400,
            "invalid_field",
            Some("algorithm"),
        ),
        // Keys.
        case(
            "POST",
            "/v1/acquire",
            s(&acquire(&format!(r#"{{"key": "{long_key}"}}"#))),
            400,
            "invalid_key",
            Some("limits[0].key"),
        ),
        case(
            "POST",
            "/v1/acquire",
            s(&acquire(r#"{"key": ""}"#)),
            400,
            "invalid_key",
            Some("limits[0].key"),
        ),
        case(
            "POST",
            "/v1/acquire",
            s(&acquire(r#"{"key": "a\nb", "rate": "1/s"}"#)),
            400,
            "invalid_key",
            Some("limits[0].key"),
        ),
        case(
            "PUT",
            format!("/v1/limits/{long_key}"),
            s(r#"{"rate": "1/s"}"#),
            400,
            "invalid_key",
            Some("key"),
        ),
        case(
            "GET",
            format!("/v1/limits/{long_key}"),
            None,
            400,
            "invalid_key",
            Some("key"),
        ),
        case(
            "PUT",
            "/v1/limits/%FF",
            s(r#"{"rate": "1/s"}"#),
            400,
            "invalid_key",
            Some("key"),
        ),
        case(
            "POST",
            "/v1/leases",
            s(&format!(r#"{{"key": "{long_key}", "limit": 1}}"#)),
            400,
            "invalid_key",
            Some("key"),
        ),
        case(
            "POST",
            format!("/v1/barriers/{long_key}"),
            s(r#"{"parties": 2, "ttl_ms": 1000}"#),
            400,
            "invalid_key",
            Some("key"),
        ),
        // Unknown things.
        case(
            "POST",
            "/v1/acquire",
            s(&acquire(r#"{"key": "api"}, {"key": "nope"}"#)),
            404,
            "unknown_limit",
            Some("limits[1].key"),
        ),
        case(
            "GET",
            "/v1/limits/nope",
            None,
            404,
            "unknown_limit",
            Some("key"),
        ),
        case(
            "DELETE",
            "/v1/limits/nope",
            None,
            404,
            "unknown_limit",
            Some("key"),
        ),
        case(
            "POST",
            "/v1/leases",
            s(r#"{"key": "nope"}"#),
            404,
            "unknown_limit",
            Some("key"),
        ),
        case(
            "POST",
            "/v1/leases/garbage/renew",
            s("{}"),
            404,
            "unknown_lease",
            None,
        ),
        case(
            "DELETE",
            "/v1/leases/garbage",
            None,
            404,
            "unknown_lease",
            None,
        ),
        case(
            "POST",
            "/v1/barriers/nope/wait",
            s(r#"{"timeout_ms": 5}"#),
            404,
            "unknown_barrier",
            None,
        ),
        case("GET", "/v1/nowhere", None, 404, "not_found", None),
        case(
            "DELETE",
            "/v1/acquire",
            None,
            405,
            "method_not_allowed",
            None,
        ),
        // Valid JSON, impossible requests.
        case(
            "POST",
            "/v1/acquire",
            s(&acquire(r#"{"key": "db"}"#)),
            422,
            "wrong_algorithm",
            Some("limits[0].key"),
        ),
        case(
            "POST",
            "/v1/acquire",
            s(&acquire(
                r#"{"key": "x", "algorithm": "concurrency", "limit": 2}"#,
            )),
            422,
            "wrong_algorithm",
            Some("limits[0].algorithm"),
        ),
        case(
            "POST",
            "/v1/leases",
            s(r#"{"key": "api"}"#),
            422,
            "wrong_algorithm",
            Some("key"),
        ),
        case(
            "PUT",
            "/v1/limits/x",
            s(r#"{"algorithm": "barrier", "parties": 2, "ttl": "1m"}"#),
            422,
            "wrong_algorithm",
            Some("algorithm"),
        ),
        case(
            "POST",
            "/v1/acquire",
            s(&acquire(r#"{"key": "small", "units": 4}"#)),
            422,
            "insufficient_capacity",
            Some("limits[0].units"),
        ),
        case(
            "POST",
            "/v1/acquire",
            s(&acquire(r#"{"key": "u", "units": 6, "rate": "5/s"}"#)),
            422,
            "insufficient_capacity",
            Some("limits[0].units"),
        ),
        // Batches name the request and the entry.
        case(
            "POST",
            "/v1/acquire/batch",
            s(
                r#"{"requests": [{"limits": [{"key": "api"}]}, {"limits": [{"key": "api", "units": 0}]}]}"#,
            ),
            400,
            "invalid_field",
            Some("requests[1].limits[0].units"),
        ),
        case(
            "POST",
            "/v1/acquire/batch",
            s(r#"{"requests": [{"limits": [{"key": "api", "wait_ms": 5}]}]}"#),
            400,
            "unknown_field",
            Some("requests[0].limits[0].wait_ms"),
        ),
        case(
            "POST",
            "/v1/acquire/batch",
            s(r#"{"requests": [{"limits": []}]}"#),
            400,
            "invalid_field",
            Some("requests[0].limits"),
        ),
        // Tasks.
        case(
            "PUT",
            "/v1/tasks/t",
            s(r#"{"rate_limit": []}"#),
            400,
            "invalid_field",
            Some("rate_limit"),
        ),
        case(
            "PUT",
            "/v1/tasks/t",
            s(
                r#"{"rate_limits": [{"static_key": "api"}, {"dynamic_key": "input.", "limit": 1, "period": "1s"}]}"#,
            ),
            400,
            "invalid_expression",
            Some("rate_limits[1].dynamic_key"),
        ),
        case(
            "PUT",
            "/v1/tasks/t",
            s(r#"{"rate_limits": [{"static_key": "nope"}]}"#),
            422,
            "unknown_limit",
            Some("rate_limits[0].static_key"),
        ),
        case(
            "PUT",
            "/v1/tasks/t",
            s(r#"{"rate_limits": [{"static_key": "small", "units": 4}]}"#),
            422,
            "insufficient_capacity",
            Some("rate_limits[0].units"),
        ),
        case(
            "PUT",
            "/v1/tasks/t",
            s(r#"{"rate_limits": [{"static_key": "db"}]}"#),
            422,
            "wrong_algorithm",
            Some("rate_limits[0].static_key"),
        ),
        case(
            "PUT",
            "/v1/tasks/t",
            s(r#"{"lease_timeout": "soon"}"#),
            400,
            "invalid_period",
            Some("lease_timeout"),
        ),
        case(
            "PUT",
            format!("/v1/tasks/{long_key}"),
            s("{}"),
            400,
            "invalid_name",
            Some("name"),
        ),
        case(
            "GET",
            "/v1/tasks/nope",
            None,
            404,
            "unknown_task",
            Some("name"),
        ),
        case(
            "DELETE",
            "/v1/tasks/job",
            None,
            405,
            "method_not_allowed",
            None,
        ),
        // Runs.
        case(
            "POST",
            "/v1/tasks/nope/runs",
            s(r#"{"input": {}}"#),
            404,
            "unknown_task",
            Some("name"),
        ),
        case(
            "POST",
            "/v1/tasks/job/runs",
            s("{}"),
            400,
            "missing_field",
            Some("input"),
        ),
        case(
            "POST",
            "/v1/tasks/job/runs",
            s(r#"{"input": {}, "metadata": {}}"#),
            400,
            "unknown_field",
            Some("metadata"),
        ),
        case(
            "POST",
            "/v1/tasks/job/runs",
            s(r#"{"input": {"user_id": null}}"#),
            422,
            "invalid_expression",
            Some("rate_limits[0].dynamic_key"),
        ),
        case("GET", "/v1/runs/nope", None, 404, "unknown_run", None),
        case(
            "POST",
            "/v1/runs/nope/complete",
            s("{}"),
            404,
            "unknown_run",
            None,
        ),
        case(
            "POST",
            "/v1/runs/%FF/cancel",
            None,
            404,
            "unknown_run",
            None,
        ),
        case(
            "POST",
            "/v1/runs/nope/fail",
            s("{}"),
            400,
            "missing_field",
            Some("error"),
        ),
        case(
            "POST",
            "/v1/runs/nope/heartbeat",
            s(r#"{"attempt": -1}"#),
            400,
            "invalid_field",
            Some("attempt"),
        ),
        case(
            "GET",
            "/v1/runs?state=done",
            None,
            400,
            "invalid_field",
            Some("state"),
        ),
        case(
            "GET",
            "/v1/runs?limit=0",
            None,
            400,
            "invalid_field",
            Some("limit"),
        ),
        case(
            "GET",
            "/v1/runs?task=nope",
            None,
            422,
            "unknown_task",
            Some("task"),
        ),
        // Events and workers.
        case(
            "POST",
            "/v1/events",
            s(r#"{"data": {}}"#),
            400,
            "missing_field",
            Some("name"),
        ),
        case(
            "POST",
            "/v1/events",
            s(r#"{"name": "", "data": {}}"#),
            400,
            "invalid_name",
            Some("name"),
        ),
        case(
            "POST",
            "/v1/workers/lease",
            s(r#"{"worker_id": "w", "tasks": ["job", "nope"], "max": 1}"#),
            422,
            "unknown_task",
            Some("tasks[1]"),
        ),
        case(
            "POST",
            "/v1/workers/lease",
            s(r#"{"worker_id": "w", "tasks": ["job"], "max": 0}"#),
            400,
            "invalid_field",
            Some("max"),
        ),
        case(
            "POST",
            "/v1/workers/lease",
            s(r#"{"worker_id": "", "tasks": ["job"], "max": 1}"#),
            400,
            "invalid_field",
            Some("worker_id"),
        ),
        case(
            "POST",
            "/v1/workers/lease",
            s(r#"{"worker_id": "w", "tasks": [], "max": 1}"#),
            400,
            "invalid_field",
            Some("tasks"),
        ),
        // Too large, decided from Content-Length.
        case(
            "POST",
            "/v1/acquire",
            Some(format!(
                r#"{{"limits": [{{"key": "{}"}}]}}"#,
                "x".repeat(MAX_BODY)
            )),
            413,
            "payload_too_large",
            None,
        ),
    ];
    let mut failures = Vec::new();
    for c in &cases {
        let r = server.send(c.method, &c.path, c.body.as_deref()).await;
        let got = (r.status, r.code(), r.body["error"]["field"].as_str());
        let shown = c
            .body
            .as_deref()
            .unwrap_or("")
            .chars()
            .take(120)
            .collect::<String>();
        if got != (c.status, c.code, c.field) {
            failures.push(format!(
                "{} {} {shown}\n    expected {:?}\n    got      {:?}",
                c.method,
                c.path.chars().take(60).collect::<String>(),
                (c.status, c.code, c.field),
                r.body
            ));
        }
        let message = r.body["error"]["message"].as_str().unwrap_or("");
        assert!(!message.is_empty(), "{} {}: no message", c.method, c.path);
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    server.stop().await;
}

#[tokio::test]
async fn parse_errors_quote_the_input() {
    let server = server().await;
    let r = server
        .put("/v1/limits/x", json!({"limit": 10, "period": "10 apples"}))
        .await;
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"10 apples\""),
        "{:?}",
        r.body
    );
    let r = server
        .post(
            "/v1/acquire",
            json!({"limits": [{"key": "u", "rate": "5 per day"}]}),
        )
        .await;
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"5 per day\"")
    );
    server.stop().await;
}

#[tokio::test]
async fn bodies_over_max_body_are_refused_before_reading() {
    let server = server().await;
    // A Content-Length far over the limit and no body at all: answered without waiting for it.
    let answer = server
        .raw(b"POST /v1/acquire HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n\r\n")
        .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"payload_too_large\""), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    server.stop().await;
}

#[tokio::test]
async fn chunked_bodies_over_max_body_are_refused_while_reading() {
    let server = server().await;
    let mut request =
        b"POST /v1/acquire HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        request.extend_from_slice(format!("{:x}\r\n", 2000).as_bytes());
        request.extend(std::iter::repeat_n(b' ', 2000));
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let answer = server.raw(&request).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"payload_too_large\""), "{answer}");

    // Under the limit, chunked is fine.
    let body = br#"{"limits": [{"key": "api"}]}"#;
    let mut request =
        b"POST /v1/acquire HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    request.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
    request.extend_from_slice(body);
    request.extend_from_slice(b"\r\n0\r\n\r\n");
    let answer = server.raw(&request).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn json_without_content_type_is_accepted() {
    let server = server().await;
    let r = server
        .send(
            "POST",
            "/v1/acquire",
            Some(r#"{"limits": [{"key": "api"}]}"#),
        )
        .await;
    assert_eq!((r.status, &r.body["allowed"]), (200, &json!(true)));
    let r = server
        .client
        .post(server.url("/v1/acquire"))
        .header("content-type", "text/plain")
        .body(r#"{"limits": [{"key": "api"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn garbage_anywhere_is_never_a_server_error() {
    let server = server().await;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let bodies: Vec<Vec<u8>> = [
        "",
        "null",
        "[]",
        "{}",
        "\"x\"",
        "1e999",
        "-0",
        "true",
        "{\"limits\": null}",
        "{\"limits\": [null]}",
        "{\"limits\": [{\"key\": null}]}",
        "{\"requests\": [[]]}",
        "{\"key\": \"k\", \"limit\": 99999999999}",
        "{\"parties\": 4294967296, \"ttl_ms\": 1}",
        "{\"ttl_ms\": 18446744073709551615}",
        "{\"timeout_ms\": 1e3}",
        &deep,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .chain([
        vec![0xff, 0xfe, 0x00],
        b"{\"limits\": [{\"key\": \"\xff\"}]}".to_vec(),
    ])
    .collect();
    let routes = [
        ("PUT", "/v1/limits/k"),
        ("POST", "/v1/acquire"),
        ("POST", "/v1/acquire/batch"),
        ("POST", "/v1/leases"),
        ("POST", "/v1/leases/a2V5.00-1/renew"),
        ("POST", "/v1/barriers/b"),
        ("POST", "/v1/barriers/b/wait"),
        ("PUT", "/v1/tasks/t"),
        ("POST", "/v1/tasks/job/runs"),
        ("POST", "/v1/events"),
        ("POST", "/v1/workers/lease"),
        ("POST", "/v1/runs/x/heartbeat"),
        ("POST", "/v1/runs/x/complete"),
        ("POST", "/v1/runs/x/fail"),
        ("POST", "/v1/runs/x/cancel"),
    ];
    for (method, path) in routes {
        for body in &bodies {
            let method_ = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let r = server
                .client
                .request(method_, server.url(path))
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned();
            assert!(status < 500, "{method} {path} {shown}: {status} {text}");
            if status >= 400 {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert!(
                    v["error"]["code"].is_string(),
                    "{method} {path} {shown}: {text}"
                );
            }
        }
    }
    server.stop().await;
}
