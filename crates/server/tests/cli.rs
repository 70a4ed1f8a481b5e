//! The client commands of the real `tollgate` binary against a server started in-process:
//! tables for people, `--json` for scripts, `acquire` exit codes, why a run waits, and one
//! line with a non-zero exit when something fails.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use std::process::Output;

use serde_json::Value;
use tollgate::SystemClock;
use tollgate_server::{AppState, Settings};

/// Starts a server on a free port; returns its base URL.
async fn server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = AppState::new(SystemClock::new(), Settings::default());
    tokio::spawn(tollgate_server::run(
        listener,
        state,
        std::future::pending::<()>(),
    ));
    format!("http://{addr}")
}

/// Runs the binary with `args` (and no TOLLGATE_* from the environment) off the runtime.
async fn tollgate(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(&args)
            .env_remove("TOLLGATE_SERVER")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_declared_listed_and_removed_as_tables_or_json() {
    let url = server().await;
    let put = tollgate(&[
        "--server",
        &url,
        "limits",
        "put",
        "stripe-api",
        "10/s",
        "--algorithm",
        "gcra",
        "--burst",
        "5",
    ])
    .await;
    assert!(put.status.success(), "{}", stderr(&put));
    assert!(stdout(&put).contains("stripe-api"), "{}", stdout(&put));
    // --server is accepted after the subcommand too.
    let ls = tollgate(&["limits", "ls", "--server", &url]).await;
    let table = stdout(&ls);
    assert!(table.starts_with("KEY"), "{table}");
    assert!(
        table.contains("gcra") && table.contains("10/1s burst 5"),
        "{table}"
    );
    let json: Value = serde_json::from_str(&stdout(
        &tollgate(&["limits", "ls", "--json", "--server", &url]).await,
    ))
    .unwrap();
    assert_eq!(json[0]["key"], "stripe-api");
    assert_eq!(json[0]["burst"], 5);
    let rm = tollgate(&["--server", &url, "limits", "rm", "stripe-api"]).await;
    assert!(rm.status.success());
    let again = tollgate(&["--server", &url, "limits", "rm", "stripe-api"]).await;
    assert_eq!(again.status.code(), Some(2));
    assert!(
        stderr(&again).contains("unknown_limit"),
        "{}",
        stderr(&again)
    );
    assert_eq!(
        stderr(&again).lines().count(),
        1,
        "one line: {}",
        stderr(&again)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_prints_allowed_or_denied_and_exits_zero_or_one() {
    let url = server().await;
    tollgate(&["--server", &url, "limits", "put", "one", "1/h"]).await;
    let first = tollgate(&["--server", &url, "acquire", "one"]).await;
    assert_eq!(first.status.code(), Some(0));
    assert!(stdout(&first).starts_with("allowed"), "{}", stdout(&first));
    let second = tollgate(&["--server", &url, "acquire", "one", "--units", "1"]).await;
    assert_eq!(second.status.code(), Some(1));
    let text = stdout(&second);
    assert!(
        text.starts_with("denied, retry after ") && text.trim_end().ends_with(" ms"),
        "{text}"
    );
    let json: Value = serde_json::from_str(&stdout(
        &tollgate(&["--server", &url, "--json", "acquire", "one"]).await,
    ))
    .unwrap();
    assert_eq!(json["allowed"], false);
    assert!(json["retry_after_ms"].as_u64().unwrap() > 3_500_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_paused_listed_and_resumed_from_the_command_line() {
    let url = server().await;
    tollgate(&["--server", &url, "limits", "put", "api", "100/s"]).await;
    let pause = tollgate(&["--server", &url, "limits", "pause", "api", "--for", "2m"]).await;
    assert!(pause.status.success(), "{}", stderr(&pause));
    let table = stdout(&pause);
    assert!(table.starts_with("KEY"), "{table}");
    let row = table.lines().nth(1).unwrap_or_default();
    assert_eq!(
        row.split_whitespace().take(2).collect::<Vec<_>>(),
        ["api", "static"],
        "{table}"
    );
    // LEFT is whole seconds to the end the server named, read on this machine's clock a moment
    // after the pause began: 120 s unless the call took more than half a second.
    let left: Vec<&str> = row.split_whitespace().skip(3).collect();
    assert!(left == ["120", "s"] || left == ["119", "s"], "{table}");
    let denied = tollgate(&["--server", &url, "acquire", "api"]).await;
    assert_eq!(denied.status.code(), Some(1), "{}", stdout(&denied));
    let json: Value = serde_json::from_str(&stdout(
        &tollgate(&["--server", &url, "--json", "limits", "pauses"]).await,
    ))
    .unwrap();
    assert_eq!(json[0]["key"], "api");
    let until = json[0]["paused_until_ms"].as_u64().unwrap();
    let ls: Value = serde_json::from_str(&stdout(
        &tollgate(&["--server", &url, "--json", "limits", "ls"]).await,
    ))
    .unwrap();
    assert_eq!(ls[0]["paused_until_ms"].as_u64(), Some(until));
    // A dynamic key, paused until an instant.
    let until_arg = (until + 1_000).to_string();
    let dynamic = tollgate(&[
        "--server",
        &url,
        "limits",
        "pause",
        "u1",
        "--until",
        &until_arg,
        "--dynamic",
    ])
    .await;
    let row = stdout(&dynamic)
        .lines()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        row.split_whitespace().take(2).collect::<Vec<_>>(),
        ["u1", "dynamic"],
        "{row}"
    );
    let resume = tollgate(&["--server", &url, "limits", "resume", "api"]).await;
    assert_eq!(stdout(&resume), "resumed api\n");
    let again = tollgate(&["--server", &url, "limits", "resume", "api"]).await;
    assert_eq!(stdout(&again), "api was not paused\n");
    let allowed = tollgate(&["--server", &url, "acquire", "api"]).await;
    assert_eq!(allowed.status.code(), Some(0));
    // Neither or both of --for and --until: clap refuses before anything is sent.
    let neither = tollgate(&["--server", &url, "limits", "pause", "api"]).await;
    assert_eq!(neither.status.code(), Some(2));
    let bad = tollgate(&["--server", &url, "limits", "pause", "api", "--for", "soon"]).await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("invalid --for"), "{}", stderr(&bad));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_limits_take_feedback_from_the_command_line() {
    let url = server().await;
    let put = tollgate(&[
        "--server",
        &url,
        "limits",
        "put",
        "api",
        "50/s",
        "--algorithm",
        "gcra",
        "--adaptive",
        "2..50",
    ])
    .await;
    assert!(put.status.success(), "{}", stderr(&put));
    assert!(stdout(&put).contains("LIMIT_IN_FORCE"), "{}", stdout(&put));
    assert!(stdout(&put).contains("50 (2..50)"), "{}", stdout(&put));
    let throttled = tollgate(&["--server", &url, "limits", "feedback", "api", "throttled"]).await;
    assert!(throttled.status.success(), "{}", stderr(&throttled));
    assert!(
        stdout(&throttled).contains("25 (2..50)"),
        "{}",
        stdout(&throttled)
    );
    let ok = tollgate(&[
        "--server", &url, "--json", "limits", "feedback", "api", "ok",
    ])
    .await;
    let json: Value = serde_json::from_str(&stdout(&ok)).unwrap();
    assert_eq!(json[0]["limit_in_force"], 26, "{json}");
    assert_eq!(
        json[0]["adaptive"],
        serde_json::json!({"min": 2, "max": 50})
    );
    let ls: Value = serde_json::from_str(&stdout(
        &tollgate(&["--server", &url, "--json", "limits", "ls"]).await,
    ))
    .unwrap();
    assert_eq!(ls[0]["limit_in_force"], 26, "{ls}");
    let get = tollgate(&["--server", &url, "limits", "get", "api"]).await;
    assert!(stdout(&get).contains("26 (2..50)"), "{}", stdout(&get));
    // A limit that does not adapt says so; an outcome clap does not know never leaves.
    tollgate(&["--server", &url, "limits", "put", "plain", "10/s"]).await;
    let plain = tollgate(&["--server", &url, "limits", "feedback", "plain", "ok"]).await;
    assert_eq!(plain.status.code(), Some(2), "{}", stdout(&plain));
    assert!(
        stderr(&plain).contains("not_adaptive"),
        "{}",
        stderr(&plain)
    );
    let bad = tollgate(&["--server", &url, "limits", "feedback", "api", "slow"]).await;
    assert_eq!(bad.status.code(), Some(2));
    let bounds = tollgate(&[
        "--server",
        &url,
        "limits",
        "put",
        "x",
        "5/s",
        "--adaptive",
        "5",
    ])
    .await;
    assert_eq!(bounds.status.code(), Some(2), "{}", stderr(&bounds));
    assert!(
        stderr(&bounds).contains("--adaptive"),
        "{}",
        stderr(&bounds)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_get_says_why_a_run_waits_and_until_when() {
    let url = server().await;
    tollgate(&[
        "--server",
        &url,
        "limits",
        "put",
        "api",
        "1/h",
        "--algorithm",
        "gcra",
    ])
    .await;
    let client = reqwest::Client::new();
    let task = serde_json::json!({"rate_limits": [{"static_key": "api", "units": 1}], "triggers": ["user.created"]});
    client
        .put(format!("{url}/v1/tasks/sync"))
        .json(&task)
        .send()
        .await
        .unwrap();
    let first = tollgate(&[
        "--server",
        &url,
        "runs",
        "enqueue",
        "sync",
        "--input",
        r#"{"user": 1}"#,
    ])
    .await;
    assert!(first.status.success(), "{}", stderr(&first));
    let second: Value = serde_json::from_str(&stdout(
        &tollgate(&[
            "--server",
            &url,
            "--json",
            "runs",
            "enqueue",
            "sync",
            "--input",
            r#"{"user": 2}"#,
        ])
        .await,
    ))
    .unwrap();
    let id = second["id"].as_str().unwrap();
    let lease = serde_json::json!({"worker_id": "w", "tasks": ["sync"], "max": 10});
    client
        .post(format!("{url}/v1/workers/lease"))
        .json(&lease)
        .send()
        .await
        .unwrap();
    let shown = stdout(&tollgate(&["--server", &url, "runs", "get", id]).await);
    assert!(shown.contains("state      waiting"), "{shown}");
    assert!(shown.contains("waiting on api"), "{shown}");
    assert!(shown.contains("eligible   in "), "{shown}");
    let ls = stdout(&tollgate(&["--server", &url, "runs", "ls", "--state", "waiting"]).await);
    assert!(ls.contains(id) && ls.contains("api"), "{ls}");
    let tasks = stdout(&tollgate(&["--server", &url, "tasks", "ls"]).await);
    assert!(
        tasks.contains("sync") && tasks.contains("WAITING"),
        "{tasks}"
    );
    let sent = tollgate(&[
        "--server",
        &url,
        "events",
        "send",
        "user.created",
        "--data",
        r#"{"user": 3}"#,
    ])
    .await;
    assert!(stdout(&sent).contains("sync"), "{}", stdout(&sent));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_one_line_and_a_non_zero_exit() {
    let url = server().await;
    let bad_json = tollgate(&["--server", &url, "runs", "enqueue", "t", "--input", "{bad"]).await;
    assert_eq!(bad_json.status.code(), Some(2));
    assert!(
        stderr(&bad_json).contains("--input is not valid JSON"),
        "{}",
        stderr(&bad_json)
    );
    let bad_rate = tollgate(&["--server", &url, "limits", "put", "x", "10/apples"]).await;
    assert_eq!(bad_rate.status.code(), Some(2));
    assert!(
        stderr(&bad_rate).contains("\"10/apples\""),
        "{}",
        stderr(&bad_rate)
    );
    // A server that is down: a quick, clear line, not a panic.
    let down = tollgate(&["--server", "http://127.0.0.1:1", "limits", "ls"]).await;
    assert_eq!(down.status.code(), Some(2));
    let line = stderr(&down);
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.contains("cannot connect") && line.contains("127.0.0.1:1"),
        "{line}"
    );
    assert!(!line.contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_comes_from_tollgate_server_when_no_flag_is_given() {
    let url = server().await;
    // A limit only this server has: the listing proves which server answered.
    tollgate(&["--server", &url, "limits", "put", "only-here", "1/s"]).await;
    let url2 = url.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["limits", "ls"])
            .env("TOLLGATE_SERVER", url2)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("only-here"), "{}", stdout(&out));
}

/// `tasks put` defines a task from `--spec`, a file or flags alone (a Celery-style
/// `--throttle`), `tasks get` shows it back with its defaults; a bad definition is one line and
/// exit 2, with the server's reason when the server refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_defined_and_shown_from_the_command_line() {
    let url = server().await;
    let put = tollgate(&[
        "--server",
        &url,
        "tasks",
        "put",
        "digest",
        "--throttle",
        "10/m",
    ])
    .await;
    assert_eq!(put.status.code(), Some(0), "{}", stderr(&put));
    assert!(
        stdout(&put).contains(r#""throttle": "10/m""#),
        "{}",
        stdout(&put)
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("task.json");
    std::fs::write(
        &file,
        r#"{"rate_limits": [{"dynamic_key": "input.user", "limit": 1, "duration": "1h", "scope": "task"}]}"#,
    )
    .unwrap();
    let put = tollgate(&[
        "--server",
        &url,
        "--json",
        "tasks",
        "put",
        "per-user",
        "--file",
        file.to_str().unwrap(),
        "--max-attempts",
        "5",
    ])
    .await;
    assert_eq!(put.status.code(), Some(0), "{}", stderr(&put));
    let shown: Value = serde_json::from_str(&stdout(
        &tollgate(&["--server", &url, "--json", "tasks", "get", "per-user"]).await,
    ))
    .unwrap();
    assert_eq!(shown["spec"]["max_attempts"], 5, "{shown}");
    assert_eq!(
        shown["spec"]["rate_limits"][0],
        serde_json::json!({"dynamic_key": "input.user", "limit": 1, "period": "1h", "scope": "task"})
    );
    let put = tollgate(&[
        "--server",
        &url,
        "tasks",
        "put",
        "ingest",
        "--rate-limit",
        "100/h",
    ])
    .await;
    assert_eq!(put.status.code(), Some(0), "{}", stderr(&put));
    assert!(
        stdout(&put).contains(r#""rate_limit": "100/h""#),
        "{}",
        stdout(&put)
    );
    let later = tollgate(&[
        "--server", &url, "runs", "enqueue", "digest", "--delay", "90s",
    ])
    .await;
    assert_eq!(later.status.code(), Some(0), "{}", stderr(&later));
    let shown = stdout(&later);
    assert!(
        shown.contains("state      scheduled") && shown.contains("due        in "),
        "{shown}"
    );
    let put = tollgate(&[
        "--server",
        &url,
        "tasks",
        "put",
        "on-go",
        "--spec",
        r#"{"triggers": ["go"]}"#,
    ])
    .await;
    assert_eq!(put.status.code(), Some(0), "{}", stderr(&put));
    let sent = tollgate(&[
        "--server", &url, "--json", "events", "send", "go", "--delay", "1m",
    ])
    .await;
    assert!(
        stdout(&sent).contains(r#""state":"scheduled""#),
        "{}",
        stdout(&sent)
    );
    let bad = tollgate(&[
        "--server", &url, "runs", "enqueue", "digest", "--delay", "soon",
    ])
    .await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("--delay \"soon\""),
        "{}",
        stderr(&bad)
    );
    let get = stdout(&tollgate(&["--server", &url, "tasks", "get", "digest"]).await);
    assert!(
        get.starts_with("digest\n") && get.contains("runs: 0 queued"),
        "{get}"
    );

    for (args, says) in [
        (
            vec![
                "tasks",
                "put",
                "t",
                "--throttle",
                "10/m",
                "--on-limit",
                "skip",
            ],
            "400 invalid_field",
        ),
        (
            vec!["tasks", "put", "t", "--spec", "[1]"],
            "must be a JSON object",
        ),
        (
            vec!["tasks", "put", "t", "--spec", r#"{"rate_limitz": []}"#],
            "unknown field `rate_limitz`",
        ),
        (
            vec!["tasks", "put", "t", "--file", "/no/such/file"],
            "cannot read --file",
        ),
        (vec!["tasks", "get", "nope"], "404 unknown_task"),
    ] {
        let mut line = vec!["--server", url.as_str()];
        line.extend(args.iter().copied());
        let out = tollgate(&line).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(
            stderr(&out).lines().count(),
            1,
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
}
