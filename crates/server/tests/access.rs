//! Access control against the real binary (docs/http-api.md, "Access control"): every route
//! group answers 401 without a token or with an unknown one, 403 to a role without the right,
//! and passes for one with it; `serve` refuses a non-loopback address without tokens; SIGHUP
//! reloads the tokens file and a broken one keeps the tokens in force; `tollgate token new`
//! makes a secret the server accepts; the CLI sends `--token`; the dashboard's cookie reads only.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use common::run_cli as tollgate;
use common::{hang_up, spawn_serve, spawn_serve_with};

/// The secrets of the tokens file every test here starts from.
const READ: &str = "read-secret";
const WORKER: &str = "worker-secret";
const ADMIN: &str = "admin-secret";

use common::token_table as table;

fn sha256_hex(secret: &str) -> String {
    tollgate_server::auth::sha256_hex(secret)
}

fn three_tokens() -> String {
    table("reader", "read", READ) + &table("ci", "worker", WORKER) + &table("ops", "admin", ADMIN)
}

/// A fresh file under the target directory holding `text`.
fn file_with(text: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "tokens-{}-{}.toml",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, text).expect("the tokens file is written");
    path
}

async fn call(
    base: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut request = client.request(method, format!("{base}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let answer = request.send().await.expect("the server answers");
    let (status, headers) = (answer.status(), answer.headers().clone());
    let text = answer.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_group_needs_a_token_with_the_role_of_its_group() {
    let tokens = file_with(&three_tokens());
    let (_child, base) = spawn_serve(["--memory", "--tokens-file", tokens.to_str().unwrap()]).await;
    // What the calls below act on, declared by the admin.
    let (status, _, _) = call(
        &base,
        Method::PUT,
        "/v1/limits/api",
        Some(ADMIN),
        Some(json!({"limit": 100, "period": "1m"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call(
        &base,
        Method::PUT,
        "/v1/tasks/email",
        Some(ADMIN),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    use Method as M;
    let routes: Vec<(Method, &str, Option<Value>, &str)> = vec![
        (M::GET, "/v1/limits", None, "read"),
        (M::GET, "/v1/limits/api", None, "read"),
        (M::GET, "/v1/tasks", None, "read"),
        (M::GET, "/v1/tasks/email", None, "read"),
        (M::GET, "/v1/runs", None, "read"),
        (M::GET, "/v1/runs/r1", None, "read"),
        (M::GET, "/v1/barriers/b", None, "read"),
        (M::GET, "/metrics", None, "read"),
        (M::GET, "/", None, "read"),
        (
            M::POST,
            "/v1/acquire",
            Some(json!({"limits": [{"key": "api"}]})),
            "worker",
        ),
        (
            M::POST,
            "/v1/acquire/batch",
            Some(json!({"requests": []})),
            "worker",
        ),
        (
            M::POST,
            "/v1/leases",
            Some(json!({"key": "c", "limit": 1})),
            "worker",
        ),
        (M::POST, "/v1/leases/x/renew", Some(json!({})), "worker"),
        (M::DELETE, "/v1/leases/x", None, "worker"),
        (
            M::POST,
            "/v1/barriers/b",
            Some(json!({"parties": 2, "ttl": "1m"})),
            "worker",
        ),
        (
            M::POST,
            "/v1/barriers/b/wait",
            Some(json!({"timeout_ms": 1})),
            "worker",
        ),
        (
            M::POST,
            "/v1/tasks/email/runs",
            Some(json!({"input": {}})),
            "worker",
        ),
        (
            M::POST,
            "/v1/events",
            Some(json!({"name": "e", "data": {}})),
            "worker",
        ),
        (
            M::POST,
            "/v1/workers/lease",
            Some(json!({"tasks": ["email"], "max": 1})),
            "worker",
        ),
        (M::POST, "/v1/runs/r1/heartbeat", Some(json!({})), "worker"),
        (M::POST, "/v1/runs/r1/complete", Some(json!({})), "worker"),
        (
            M::POST,
            "/v1/runs/r1/fail",
            Some(json!({"error": "x"})),
            "worker",
        ),
        (M::POST, "/v1/runs/r1/release", Some(json!({})), "worker"),
        (M::POST, "/v1/runs/r1/cancel", Some(json!({})), "worker"),
        (
            M::PUT,
            "/v1/limits/other",
            Some(json!({"limit": 1, "period": "1s"})),
            "admin",
        ),
        (M::DELETE, "/v1/limits/other", None, "admin"),
        (M::PUT, "/v1/tasks/other", Some(json!({})), "admin"),
    ];
    let rank = |role: &str| ["read", "worker", "admin"].iter().position(|r| *r == role);
    for (method, path, body, needed) in &routes {
        let what = format!("{method} {path}");
        // No token: 401, with the challenge (the dashboard shows its sign-in form instead).
        let (status, headers, answer) = call(&base, method.clone(), path, None, body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {answer}");
        if *path != "/" {
            assert_eq!(answer["error"]["code"], "unauthorized", "{what}: {answer}");
            assert!(
                headers[reqwest::header::WWW_AUTHENTICATE]
                    .to_str()
                    .unwrap()
                    .starts_with("Bearer"),
                "{what}"
            );
        }
        // A token the server does not know: 401 invalid_token.
        let (status, headers, answer) =
            call(&base, method.clone(), path, Some("guess"), body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {answer}");
        if *path != "/" {
            assert!(
                headers[reqwest::header::WWW_AUTHENTICATE]
                    .to_str()
                    .unwrap()
                    .contains("invalid_token"),
                "{what}"
            );
        }
        for (role, secret, name) in [
            ("read", READ, "reader"),
            ("worker", WORKER, "ci"),
            ("admin", ADMIN, "ops"),
        ] {
            let (status, _, answer) =
                call(&base, method.clone(), path, Some(secret), body.clone()).await;
            if rank(role) < rank(needed) {
                assert_eq!(status, StatusCode::FORBIDDEN, "{what} as {role}: {answer}");
                assert_eq!(answer["error"]["code"], "forbidden", "{what}");
                let message = answer["error"]["message"].as_str().unwrap();
                assert!(
                    message.contains(&format!("needs the {needed} role"))
                        && message.contains(&format!("{name:?}")),
                    "{what} as {role}: {message}"
                );
            } else {
                assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{what} as {role}: {status} {answer}"
                );
            }
        }
    }
    // Open routes.
    let (status, _, _) = call(&base, Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    // A route that does not exist says nothing about itself without a token.
    let (status, _, _) = call(&base, Method::GET, "/nowhere", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = call(&base, Method::GET, "/nowhere", Some(READ), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Other spellings of the header.
    let raw = reqwest::Client::new();
    for value in ["Basic cmVhZDpzZWNyZXQ=", "Bearer", "bearer read-secret"] {
        let answer = raw
            .get(format!("{base}/v1/limits"))
            .header("authorization", value)
            .send()
            .await
            .unwrap();
        let expected = if value == "bearer read-secret" {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        };
        assert_eq!(answer.status(), expected, "{value}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_non_loopback_address_without_tokens() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--memory", "--listen", "0.0.0.0:0"])
        .env_remove("TOLLGATE_TOKENS_FILE")
        .env_remove("TOLLGATE_INSECURE_NO_AUTH")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0 without access control")
            && stderr.contains("--tokens-file")
            && stderr.contains("tollgate token new")
            && stderr.contains("--insecure-no-auth"),
        "{stderr}"
    );
    // With the explicit opt-out, or with tokens, it serves.
    let (_open, base) = spawn_serve(["--memory", "--insecure-no-auth"]).await;
    let (status, _, _) = call(&base, Method::GET, "/v1/limits", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let tokens = file_with(&three_tokens());
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
    let out = cmd
        .args([
            "serve",
            "--memory",
            "--listen",
            "0.0.0.0:0",
            "--tokens-file",
        ])
        .arg(&tokens)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = out;
    let stdout = out.stdout.take().unwrap();
    use tokio::io::AsyncBufReadExt as _;
    let line = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::io::BufReader::new(stdout).lines().next_line(),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    assert!(line.starts_with("listening on http://0.0.0.0:"), "{line}");
    // A tokens file that does not parse stops the start, naming line and column.
    let broken = file_with("[[token]]\nname = \"a\"\nrole = \"root\"\n");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--memory", "--tokens-file"])
        .arg(&broken)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:3:", broken.display())) && stderr.contains("root"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_tokens_and_a_broken_file_keeps_them_in_force() {
    let tokens = file_with(&table("ci", "worker", WORKER));
    let (mut child, base) = spawn_serve_with(
        ["--memory", "--tokens-file", tokens.to_str().unwrap()],
        |cmd| {
            cmd.stderr(std::process::Stdio::piped())
                .env("RUST_LOG", "info");
        },
    )
    .await;
    let mut log = common::ServerLog::of(&mut child);
    let no_secret = |line: &str| {
        assert!(
            !line.contains(WORKER) && !line.contains(ADMIN),
            "a secret was logged: {line}"
        );
    };
    log.until_with("access control on", no_secret).await;
    let status = |token: &'static str| {
        let base = base.clone();
        async move {
            call(&base, Method::GET, "/v1/limits", Some(token), None)
                .await
                .0
        }
    };
    assert_eq!(status(WORKER).await, StatusCode::OK);
    assert_eq!(status(ADMIN).await, StatusCode::UNAUTHORIZED);

    // A new token, in force after SIGHUP.
    std::fs::write(
        &tokens,
        table("ci", "worker", WORKER) + &table("ops", "admin", ADMIN),
    )
    .unwrap();
    hang_up(&child);
    let line = log.until_with("tokens file read again", no_secret).await;
    assert!(line.contains("tokens=2"), "{line}");
    assert_eq!(status(ADMIN).await, StatusCode::OK);

    // A file that no longer parses: logged, and the tokens in force stay.
    std::fs::write(
        &tokens,
        "[[token]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = \"nope\"\n",
    )
    .unwrap();
    hang_up(&child);
    let line = log.until_with("cannot be used", no_secret).await;
    assert!(
        line.contains(":4:") && line.contains("64 hex digits"),
        "{line}"
    );
    assert_eq!(status(ADMIN).await, StatusCode::OK);
    assert_eq!(status(WORKER).await, StatusCode::OK);

    // A revoked token is refused after the next good reload.
    std::fs::write(&tokens, table("ops", "admin", ADMIN)).unwrap();
    hang_up(&child);
    log.until_with("tokens file read again", no_secret).await;
    assert_eq!(status(WORKER).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(ADMIN).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_token_works_once_its_table_is_in_the_file_and_the_cli_sends_it() {
    let out = tollgate(
        &[
            "token",
            "new",
            "--name",
            "deploy bot",
            "--role",
            "worker",
            "--json",
        ],
        &[],
        None,
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    let secret = made["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("tg_") && secret.len() >= 40, "{secret}");
    assert_eq!(made["sha256"], sha256_hex(&secret));
    let again = tollgate(
        &["token", "new", "--name", "x", "--role", "read", "--json"],
        &[],
        None,
    )
    .await;
    let again: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_ne!(
        again["secret"], made["secret"],
        "every secret is drawn anew"
    );
    // The human form shows the secret once and the table, which holds only the hash.
    let human = tollgate(
        &["token", "new", "--name", "h", "--role", "admin"],
        &[],
        None,
    )
    .await;
    let text = String::from_utf8(human.stdout).unwrap();
    assert!(
        text.contains("[[token]]\nname = \"h\"\nrole = \"admin\"\nsha256 = \""),
        "{text}"
    );
    // `token hash` gives the table of a secret of one's own.
    let hashed = tollgate(
        &["token", "hash", "--name", "mine", "--role", "read"],
        &[],
        Some("my own secret\n"),
    )
    .await;
    assert!(hashed.status.success());
    let text = String::from_utf8(hashed.stdout).unwrap();
    assert!(text.contains(&sha256_hex("my own secret")), "{text}");
    let empty = tollgate(
        &["token", "hash", "--name", "mine", "--role", "read"],
        &[],
        Some(""),
    )
    .await;
    assert!(!empty.status.success());
    let bad = tollgate(
        &["token", "new", "--name", "x", "--role", "root"],
        &[],
        None,
    )
    .await;
    assert_eq!(bad.status.code(), Some(2));

    let tokens = file_with(
        &(made["table"].as_str().unwrap().to_owned() + "\n" + &table("ops", "admin", ADMIN)),
    );
    let (_child, base) = spawn_serve(["--memory", "--tokens-file", tokens.to_str().unwrap()]).await;
    let (status, _, _) = call(&base, Method::GET, "/v1/limits", Some(&secret), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, answer) = call(
        &base,
        Method::PUT,
        "/v1/limits/k",
        Some(&secret),
        Some(json!({"limit": 1, "period": "1s"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"deploy bot\""),
        "{answer}"
    );

    // The CLI: without a token it says so and exits 2; --token and TOLLGATE_TOKEN work.
    let out = tollgate(&["limits", "ls", "--server", &base], &[], None).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unauthorized"), "{stderr}");
    let out = tollgate(
        &[
            "limits", "put", "k", "5/s", "--server", &base, "--token", ADMIN,
        ],
        &[],
        None,
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tollgate(
        &["limits", "ls", "--server", &base],
        &[("TOLLGATE_TOKEN", &secret)],
        None,
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains('k'));
    let out = tollgate(
        &["limits", "rm", "k", "--server", &base],
        &[("TOLLGATE_TOKEN", &secret)],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_cookie_signs_in_reads_only() {
    let tokens = file_with(&three_tokens());
    let (_child, base) = spawn_serve(["--memory", "--tokens-file", tokens.to_str().unwrap()]).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // Signed out: the sign-in form, 401.
    let page = client.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::UNAUTHORIZED);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("action=\"/login\"") && html.contains("name=\"token\""),
        "{html}"
    );
    // A wrong token: the form again, saying so, and no cookie.
    let wrong = client
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=guess")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.headers().get("set-cookie").is_none());
    assert!(wrong.text().await.unwrap().contains("not known"));
    // The right one: a cookie that scripts cannot read and other sites cannot send.
    let signed = client
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={WORKER}"))
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), StatusCode::SEE_OTHER);
    assert_eq!(signed.headers()["location"], "/");
    let cookie = signed.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && cookie.contains("Path=/"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    let get = |path: &str| {
        client
            .get(format!("{base}{path}"))
            .header("cookie", pair.clone())
            .send()
    };
    let page = get("/").await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("action=\"/logout\""));
    assert_eq!(get("/v1/limits").await.unwrap().status(), StatusCode::OK);
    assert_eq!(get("/metrics").await.unwrap().status(), StatusCode::OK);
    // The cookie never authorizes a write, whatever the token's role.
    let write = client
        .post(format!("{base}/v1/acquire"))
        .header("cookie", pair.clone())
        .json(&json!({"limits": [{"key": "k", "limit": 1, "period": "1s"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), StatusCode::UNAUTHORIZED);
    let body: Value = write.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("GET requests only"),
        "{body}"
    );
    // Signing out clears it.
    let out = client
        .post(format!("{base}/logout"))
        .header("cookie", pair.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
}
