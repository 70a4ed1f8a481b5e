//! The real binary's logs: `RUST_LOG` is honoured; start and stop are logged at info, every
//! run's state changes at debug only.

mod common;

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::process::Child;
use tokio::time::timeout;

const DEADLINE: Duration = Duration::from_secs(30);

/// Starts `tollgate serve --memory` on a free port with `RUST_LOG` set to `filter`.
async fn start(filter: &str) -> (Child, String) {
    common::spawn_serve_with(["--memory"], |cmd| {
        cmd.env("RUST_LOG", filter)
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped());
    })
    .await
}

/// One run through enqueue, lease and complete; its id.
async fn one_run(base: &str) -> String {
    let client = reqwest::Client::new();
    let ok = |r: reqwest::Response| {
        assert!(r.status().is_success(), "{r:?}");
        r
    };
    ok(client
        .put(format!("{base}/v1/tasks/mail"))
        .json(&json!({}))
        .send()
        .await
        .expect("PUT task"));
    let run: Value = ok(client
        .post(format!("{base}/v1/tasks/mail/runs"))
        .json(&json!({"input": {}}))
        .send()
        .await
        .expect("POST run"))
    .json()
    .await
    .expect("a run");
    let id = run["id"].as_str().expect("an id").to_owned();
    ok(client
        .post(format!("{base}/v1/workers/lease"))
        .json(&json!({"worker_id": "w", "tasks": ["mail"], "max": 1}))
        .send()
        .await
        .expect("lease"));
    ok(client
        .post(format!("{base}/v1/runs/{id}/complete"))
        .json(&json!({}))
        .send()
        .await
        .expect("complete"));
    id
}

/// SIGTERM, then everything the server wrote on stderr.
async fn stop(mut child: Child) -> String {
    let pid = child.id().expect("still running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let mut out = String::new();
    timeout(DEADLINE, stderr.read_to_string(&mut out))
        .await
        .expect("the server stopped in time")
        .expect("stderr is readable");
    let exit = timeout(DEADLINE, child.wait())
        .await
        .expect("the server exited in time")
        .expect("an exit status");
    assert!(exit.success(), "{exit:?}\n{out}");
    out
}

#[tokio::test]
async fn run_transitions_are_logged_at_debug_only() {
    let (child, base) = start("info").await;
    let id = one_run(&base).await;
    let info = stop(child).await;
    assert!(info.contains("serving the HTTP API"), "{info}");
    assert!(info.contains("shutting down"), "{info}");
    assert!(info.contains("stopped"), "{info}");
    assert!(
        !info.contains(&id),
        "per-run changes must not be logged at info:\n{info}"
    );

    let (child, base) = start("info,tollgate=debug").await;
    let id = one_run(&base).await;
    let debug = stop(child).await;
    let about_run: Vec<&str> = debug.lines().filter(|l| l.contains(&id)).collect();
    for transition in ["enqueued", "leased", "succeeded"] {
        let wanted = format!("transition=\"{transition}\"");
        assert!(
            about_run
                .iter()
                .any(|l| l.contains("DEBUG") && l.contains(&wanted)),
            "no debug line for {transition}:\n{debug}"
        );
    }
}

#[tokio::test]
async fn logs_to_a_pipe_carry_no_colour_codes_and_json_gives_one_object_per_line() {
    // No NO_COLOR here: stderr being a pipe is what turns colours off.
    let (child, base) = common::spawn_serve_with(["--memory"], |cmd| {
        cmd.env("RUST_LOG", "info")
            .env_remove("NO_COLOR")
            .stderr(Stdio::piped());
    })
    .await;
    one_run(&base).await;
    let text = stop(child).await;
    assert!(text.contains("serving the HTTP API"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a piped log:\n{text}"
    );

    let (child, base) = common::spawn_serve_with(["--memory", "--log-format", "json"], |cmd| {
        cmd.env("RUST_LOG", "info,tollgate=debug")
            .env_remove("NO_COLOR")
            .stderr(Stdio::piped());
    })
    .await;
    let id = one_run(&base).await;
    let text = stop(child).await;
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "INFO" && l["fields"]["message"] == "serving the HTTP API"),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "DEBUG" && l.to_string().contains(&id)),
        "no debug line about the run in:\n{text}"
    );
    assert!(lines.iter().all(|l| l["timestamp"].is_string()), "{text}");
}
