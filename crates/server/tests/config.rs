//! The config file against the real binary (docs/http-api.md, "Config file"): `serve --config`
//! applies its limits and tasks at start and its `[server]` settings where no flag or
//! environment variable is given; errors name file, line, column and field and exit 2; SIGHUP
//! applies it again and a broken file changes nothing; `tollgate apply -f` plans, applies,
//! prunes and is idempotent; nodes of one Redis deployment starting with the same file write
//! it once.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

mod common;
#[path = "../../redis/tests/common/mod.rs"]
mod redis_common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

use common::{hang_up, spawn_serve, spawn_serve_with};

/// A fresh folder under the target directory with `tollgate.toml` holding `text`; the file.
fn config_with(text: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "config-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tollgate.toml");
    std::fs::write(&file, text).unwrap();
    file
}

const FILE: &str = r#"
[server]
listen = "127.0.0.1:1"       # the test's --listen wins
max_body = "1KiB"
retention = "1d"

[limits.stripe-api]
algorithm = "gcra"
limit = 10
period = "1s"
burst = 5

[limits."tenant:acme"]
rate = "100/m"

[tasks.charge]
rate_limits = [{ static_key = "stripe-api" }]
max_attempts = 5
"#;

async fn get(base: &str, path: &str) -> (u16, Value) {
    let r = reqwest::get(format!("{base}{path}")).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The status of an acquire whose body is about `bytes` long.
async fn post_of_size(base: &str, bytes: usize) -> u16 {
    let body = format!(
        "{{\"limits\": [{{\"key\": \"stripe-api\"}}], \"pad\": \"{}\"}}",
        "x".repeat(bytes)
    );
    reqwest::Client::new()
        .post(format!("{base}/v1/acquire"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_applies_the_file_at_start_and_flags_and_environment_win() {
    let file = config_with(FILE);
    let (_child, base) = spawn_serve(["--memory", "--config", file.to_str().unwrap()]).await;
    let (status, limit) = get(&base, "/v1/limits/stripe-api").await;
    assert_eq!(status, 200, "{limit}");
    assert_eq!(
        (limit["algorithm"].as_str(), limit["burst"].as_u64()),
        (Some("gcra"), Some(5))
    );
    let (status, _) = get(&base, "/v1/limits/tenant:acme").await;
    assert_eq!(status, 200);
    let (status, task) = get(&base, "/v1/tasks/charge").await;
    assert_eq!(status, 200);
    assert_eq!(task["spec"]["max_attempts"], 5);
    // [server] max_body = 1KiB is in force: a 2 KiB body is too large (413, not a 400 about
    // the unknown `pad` field, which a 1 MiB limit would give).
    assert_eq!(post_of_size(&base, 2048).await, 413);

    // A flag wins over the file, and so does the environment.
    let (_flag, base) = spawn_serve([
        "--memory",
        "--config",
        file.to_str().unwrap(),
        "--max-body",
        "1MiB",
    ])
    .await;
    assert_eq!(post_of_size(&base, 2048).await, 400);
    let (_env, base) = spawn_serve_with(["--memory", "--config", file.to_str().unwrap()], |cmd| {
        cmd.env("TOLLGATE_MAX_BODY", "1MiB");
    })
    .await;
    assert_eq!(post_of_size(&base, 2048).await, 400);
}

async fn serve_output(args: &[&str]) -> std::process::Output {
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["serve", "--memory", "--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("TOLLGATE_CONFIG")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the server refused to start in time")
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_stops_the_start_naming_line_column_and_field_with_status_2() {
    let cases = [
        (
            "[limits.a]\nlimit = 10\nperiod = \"1 fortnight\"\n",
            ":3:10: limits.a.period:",
        ),
        (
            "[limits.a]\nlimit = 10\nperiod = \"1s\"\nbrust = 2\n",
            ":4:",
        ),
        ("[server]\nmax_body = \"lots\"\n", ":2:12: server.max_body:"),
        ("[server]\nport = 7070\n", ":2:1:"),
        (
            "[tasks.t]\nrate_limits = [{ static_key = \"nope\" }]\n",
            ":2:15: tasks.t.rate_limits",
        ),
        ("[limits.a\n", ":1:"),
    ];
    for (text, wanted) in cases {
        let file = config_with(text);
        let out = serve_output(&["--config", file.to_str().unwrap()]).await;
        assert_eq!(out.status.code(), Some(2), "{text:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("{}{wanted}", file.display())),
            "{text:?}: {stderr}"
        );
    }
    let out = serve_output(&["--config", "/nonexistent/tollgate.toml"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the config file"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_the_file_again_and_a_broken_one_changes_nothing() {
    let file = config_with(FILE);
    let (mut child, base) =
        spawn_serve_with(["--memory", "--config", file.to_str().unwrap()], |cmd| {
            cmd.stderr(std::process::Stdio::piped())
                .env("RUST_LOG", "info");
        })
        .await;
    let mut log = common::ServerLog::of(&mut child);
    log.until("config applied").await;

    std::fs::write(&file, FILE.replace("limit = 10", "limit = 20")).unwrap();
    hang_up(&child);
    let line = log.until("config applied again").await;
    assert!(
        line.contains("changes=1") && line.contains("unchanged=2"),
        "{line}"
    );
    let (_, limit) = get(&base, "/v1/limits/stripe-api").await;
    assert_eq!(limit["limit"], 20);

    std::fs::write(
        &file,
        "[limits.stripe-api]\nlimit = 30\nperiod = \"soon\"\n",
    )
    .unwrap();
    hang_up(&child);
    let line = log.until("cannot be used").await;
    assert!(line.contains(":3:10") && line.contains("period"), "{line}");
    let (_, limit) = get(&base, "/v1/limits/stripe-api").await;
    assert_eq!(limit["limit"], 20, "a broken file changed nothing");
}

async fn tollgate(args: &[&str]) -> (Option<i32>, String, String) {
    let out = common::run_cli(args, &[], None).await;
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_plans_applies_prunes_and_changes_nothing_the_second_time() {
    let admin = "apply-admin";
    let worker = "apply-worker";
    let tokens = config_with(
        &(common::token_table("ops", "admin", admin)
            + &common::token_table("ci", "worker", worker)),
    );
    let (_child, base) = spawn_serve(["--memory", "--tokens-file", tokens.to_str().unwrap()]).await;
    let file = config_with(FILE);
    let f = file.to_str().unwrap();
    // Something the file does not name.
    let (code, _, err) = tollgate(&[
        "limits", "put", "old", "3/s", "--server", &base, "--token", admin,
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");

    // A dry run says what would change and changes nothing.
    let (code, out, err) = tollgate(&[
        "apply",
        "-f",
        f,
        "--dry-run",
        "--server",
        &base,
        "--token",
        admin,
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("+ limits.stripe-api"), "{out}");
    assert!(out.contains("+ limits.\"tenant:acme\""), "{out}");
    assert!(out.contains("+ tasks.charge"), "{out}");
    assert!(out.contains("would make 3 changes, 0 unchanged"), "{out}");
    assert!(out.contains("dry run: nothing was changed"), "{out}");
    let (status, _) = get_with(&base, "/v1/limits/stripe-api", admin).await;
    assert_eq!(status, 404, "a dry run declared a limit");

    // A worker token cannot apply.
    let (code, _, err) = tollgate(&["apply", "-f", f, "--server", &base, "--token", worker]).await;
    assert_eq!(code, Some(2));
    assert!(err.contains("forbidden"), "{err}");

    // Applied; what the file does not name stays.
    let (code, out, err) = tollgate(&["apply", "-f", f, "--server", &base, "--token", admin]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("made 3 changes, 0 unchanged"), "{out}");
    assert_eq!(get_with(&base, "/v1/limits/stripe-api", admin).await.0, 200);
    assert_eq!(get_with(&base, "/v1/limits/old", admin).await.0, 200);
    assert_eq!(get_with(&base, "/v1/tasks/charge", admin).await.0, 200);

    // Again: nothing to do (every node of a deployment can apply the same file).
    let (_, out, _) = tollgate(&["apply", "-f", f, "--server", &base, "--token", admin]).await;
    assert!(out.contains("made 0 changes, 3 unchanged"), "{out}");

    // A change, and --prune: the limit the file does not name goes.
    std::fs::write(&file, FILE.replace("limit = 10", "limit = 20")).unwrap();
    let (code, out, err) = tollgate(&[
        "apply", "-f", f, "--prune", "--json", "--server", &base, "--token", admin,
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    let plan: Value = serde_json::from_str(&out).unwrap();
    let ops: Vec<(String, String)> = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["op"].as_str().unwrap().to_owned(),
                c["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        ops,
        [
            ("change".to_owned(), "stripe-api".to_owned()),
            ("remove".to_owned(), "old".to_owned())
        ]
    );
    assert_eq!(plan["changes"][0]["before"]["limit"], 10);
    assert_eq!(plan["changes"][0]["after"]["limit"], 20);
    assert_eq!(get_with(&base, "/v1/limits/old", admin).await.0, 404);
    assert_eq!(
        get_with(&base, "/v1/limits/stripe-api", admin).await.1["limit"],
        20
    );

    // A task the server refuses: the error points into the file, status 2.
    std::fs::write(
        &file,
        "[tasks.bad]\nrate_limits = [{ static_key = \"nope\" }]\n",
    )
    .unwrap();
    let (code, _, err) = tollgate(&["apply", "-f", f, "--server", &base, "--token", admin]).await;
    assert_eq!(code, Some(2));
    assert!(
        err.contains(&format!("{f}:2:15: tasks.bad.rate_limits")),
        "{err}"
    );
}

async fn get_with(base: &str, path: &str, token: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Starts `serve --redis … --config FILE` and waits for its "config applied" log line.
async fn node_applying(
    url: &str,
    prefix: &str,
    file: &str,
) -> (tokio::process::Child, String, String) {
    let (mut child, base) = spawn_serve_with(
        ["--redis", url, "--redis-prefix", prefix, "--config", file],
        |cmd| {
            cmd.stderr(std::process::Stdio::piped())
                .env("RUST_LOG", "info");
        },
    )
    .await;
    let mut log = common::ServerLog::of(&mut child);
    let line = log.until("config applied").await;
    log.drain();
    (child, base, line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_one_redis_deployment_starting_with_one_file_write_it_once() {
    let Some(redis) =
        redis_common::redis("nodes_of_one_redis_deployment_starting_with_one_file_write_it_once")
    else {
        return;
    };
    let prefix = redis_common::fresh_prefix();
    let file = config_with(&FILE.replace("max_body = \"1KiB\"\n", ""));
    let f = file.to_str().unwrap();
    let (_first, base_a, line) = node_applying(&redis.url, &prefix, f).await;
    assert!(
        line.contains("changes=3") && line.contains("unchanged=0"),
        "{line}"
    );
    let (_second, base_b, line) = node_applying(&redis.url, &prefix, f).await;
    assert!(
        line.contains("changes=0") && line.contains("unchanged=3"),
        "{line}"
    );
    for base in [&base_a, &base_b] {
        let (status, limit) = get(base, "/v1/limits/stripe-api").await;
        assert_eq!((status, limit["burst"].as_u64()), (200, Some(5)), "{limit}");
        assert_eq!(
            get(base, "/v1/tasks/charge").await.1["spec"]["max_attempts"],
            5
        );
    }
}
