//! The real `tollgate` binary: starts, serves, answers /healthz, stops on SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{Instant, timeout};

const DEADLINE: Duration = Duration::from_secs(30);

fn tollgate() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.env_remove("TOLLGATE_LISTEN")
        .env_remove("TOLLGATE_DATA_DIR")
        .env_remove("TOLLGATE_MEMORY")
        .env_remove("TOLLGATE_MAX_BODY")
        .env_remove("TOLLGATE_ON_STORE_ERROR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Reads the `listening on http://ADDR` line the server prints once bound.
async fn base_url(child: &mut Child) -> String {
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let line = timeout(DEADLINE, lines.next_line())
        .await
        .expect("the server printed its address in time")
        .expect("stdout is readable")
        .expect("the server printed a line");
    line.strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned()
}

/// Polls /healthz until it answers or the deadline passes.
async fn wait_healthy(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match client.get(format!("{base}/healthz")).send().await {
            Ok(r) if r.status() == 200 => {
                assert_eq!(
                    r.json::<serde_json::Value>().await.expect("a JSON body"),
                    json!({"status": "ok"})
                );
                return;
            }
            other => assert!(Instant::now() < deadline, "never healthy: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGTERM by pid, then waits for a clean exit.
async fn terminate(mut child: Child) {
    let pid = child.id().expect("still running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let exit = timeout(DEADLINE, child.wait())
        .await
        .expect("the server stopped in time")
        .expect("the exit status is readable");
    assert!(exit.success(), "exit after SIGTERM: {exit:?}");
}

#[tokio::test]
async fn the_binary_serves_until_sigterm() {
    let mut child = tollgate()
        .args(["serve", "--memory", "--listen", "127.0.0.1:0"])
        .spawn()
        .unwrap();
    let base = base_url(&mut child).await;
    let client = reqwest::Client::new();
    wait_healthy(&client, &base).await;

    let put = client
        .put(format!("{base}/v1/limits/api"))
        .json(&json!({"rate": "2/m"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    for allowed in [true, true, false] {
        let r: serde_json::Value = client
            .post(format!("{base}/v1/acquire"))
            .json(&json!({"limits": [{"key": "api"}]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["allowed"], allowed);
    }
    terminate(child).await;
}

#[tokio::test]
async fn the_binary_reads_its_settings_from_the_environment() {
    let mut child = tollgate()
        .arg("serve")
        .env("TOLLGATE_LISTEN", "127.0.0.1:0")
        .env("TOLLGATE_MEMORY", "true")
        .env("TOLLGATE_MAX_BODY", "1KiB")
        .spawn()
        .unwrap();
    let base = base_url(&mut child).await;
    let client = reqwest::Client::new();
    wait_healthy(&client, &base).await;
    let r = client
        .post(format!("{base}/v1/acquire"))
        .body(" ".repeat(2048))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    terminate(child).await;
}

#[tokio::test]
async fn the_binary_refuses_bad_arguments_clearly() {
    let out = tollgate()
        .args(["serve", "--memory", "--max-body", "lots"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"lots\""));

    let out = tollgate()
        .args(["serve", "--data-dir", "Cargo.toml"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("tollgate: "), "{stderr}");
    assert!(stderr.contains("not a directory"), "{stderr}");

    let out = tollgate()
        .args(["serve", "--memory", "--listen", "127.0.0.1:notaport"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));
}
