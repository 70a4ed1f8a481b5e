//! Durability of the real `tollgate` binary on SQLite: after `kill -9` (and after a clean
//! SIGTERM stop), a restart on the same data directory has every acknowledged run in its
//! state, leased runs still leased, queued and parked runs resuming, limits and tasks defined,
//! and limiter consumption rebuilt from the runs (no over-admission).
//!
//! Real processes, real time: limits are per hour and leases last ten minutes, so nothing the
//! test checks can change while it runs.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::Child;
use tokio::time::{Instant, timeout};

const DEADLINE: Duration = Duration::from_secs(30);

/// A fresh, empty data directory under Cargo's temporary directory for integration tests.
fn data_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("durability-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A running `tollgate serve` and an HTTP client for it.
struct Tollgate {
    child: Child,
    base: String,
    client: reqwest::Client,
}

impl Tollgate {
    /// Starts the binary on a free port with `dir` as its data directory and waits until it
    /// answers.
    async fn start(dir: &Path) -> Tollgate {
        let (child, base) =
            common::spawn_serve([std::ffi::OsStr::new("--data-dir"), dir.as_os_str()]).await;
        let server = Tollgate {
            child,
            base,
            client: reqwest::Client::new(),
        };
        let deadline = Instant::now() + DEADLINE;
        loop {
            match server.client.get(server.url("/healthz")).send().await {
                Ok(r) if r.status() == 200 => return server,
                other => assert!(Instant::now() < deadline, "never healthy: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.client.request(method, self.url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let r = request.send().await.expect("the server answers");
        let status = r.status().as_u16();
        (status, r.json().await.expect("a JSON body"))
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// A call expected to succeed with `status`.
    async fn expect(&self, method: reqwest::Method, path: &str, body: Value, status: u16) -> Value {
        let (got, answer) = self.call(method.clone(), path, Some(body)).await;
        assert_eq!(got, status, "{method} {path}: {answer}");
        answer
    }

    async fn enqueue(&self, task: &str) -> String {
        let run = self
            .expect(
                reqwest::Method::POST,
                &format!("/v1/tasks/{task}/runs"),
                json!({"input": {}}),
                201,
            )
            .await;
        run["id"].as_str().expect("an id").to_owned()
    }

    async fn lease(&self, task: &str, max: u64) -> Vec<String> {
        let r = self
            .expect(
                reqwest::Method::POST,
                "/v1/workers/lease",
                json!({"worker_id": "w1", "tasks": [task], "max": max}),
                200,
            )
            .await;
        r["runs"]
            .as_array()
            .expect("runs")
            .iter()
            .map(|r| r["id"].as_str().expect("an id").to_owned())
            .collect()
    }

    async fn act(&self, id: &str, action: &str, body: Value) -> Value {
        self.expect(
            reqwest::Method::POST,
            &format!("/v1/runs/{id}/{action}"),
            body,
            200,
        )
        .await
    }

    /// Every run, by id.
    async fn runs(&self) -> BTreeMap<String, Value> {
        let r = self.get("/v1/runs?limit=1000").await;
        r["runs"]
            .as_array()
            .expect("runs")
            .iter()
            .map(|r| (r["id"].as_str().expect("an id").to_owned(), r.clone()))
            .collect()
    }

    /// `kill -9`: no chance to flush or record a clean stop.
    async fn kill(mut self) {
        self.child.kill().await.expect("SIGKILL is delivered");
    }

    /// SIGTERM, then waits for a clean exit.
    async fn terminate(mut self) {
        let pid = self.child.id().expect("still running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let exit = timeout(DEADLINE, self.child.wait())
            .await
            .expect("the server stopped in time")
            .expect("the exit status is readable");
        assert!(exit.success(), "exit after SIGTERM: {exit:?}");
    }
}

/// What the first process did, to check against after the restart.
struct Before {
    limit: Value,
    tasks: Value,
    runs: BTreeMap<String, Value>,
    /// The runs of `send` that took the two units of `hourly`, then the one parked on it.
    send_leased: Vec<String>,
    send_parked: String,
    /// Runs of `plain` that were still queued.
    plain_queued: Vec<String>,
    plain_running: String,
}

/// Defines a limit and tasks, enqueues, leases, completes and cancels: runs in every state.
async fn populate(server: &Tollgate) -> Before {
    use reqwest::Method;
    let limit = server
        .expect(
            Method::PUT,
            "/v1/limits/hourly",
            json!({"limit": 2, "period": "1h"}),
            200,
        )
        .await;
    server
        .expect(
            Method::PUT,
            "/v1/tasks/send",
            json!({"lease_timeout": "10m", "rate_limits": [{"static_key": "hourly"}]}),
            200,
        )
        .await;
    server
        .expect(
            Method::PUT,
            "/v1/tasks/plain",
            json!({"lease_timeout": "10m", "max_attempts": 5}),
            200,
        )
        .await;

    let send: Vec<String> = [
        server.enqueue("send").await,
        server.enqueue("send").await,
        server.enqueue("send").await,
    ]
    .into();
    let send_leased = server.lease("send", 10).await;
    assert_eq!(send_leased, send[..2], "two units of hourly");
    let parked = server.get(&format!("/v1/runs/{}", send[2])).await;
    assert_eq!(parked["state"], "waiting");

    let mut plain = Vec::new();
    for _ in 0..4 {
        plain.push(server.enqueue("plain").await);
    }
    let leased = server.lease("plain", 2).await;
    assert_eq!(leased, plain[..2]);
    server
        .act(
            &plain[0],
            "complete",
            json!({"output": {"ok": true}, "attempt": 1}),
        )
        .await;
    server.act(&plain[3], "cancel", json!({})).await;

    // A burst of concurrent enqueues, all acknowledged before the stop.
    let burst: Vec<_> = (0..50)
        .map(|_| {
            let client = server.client.clone();
            let url = server.url("/v1/tasks/plain/runs");
            tokio::spawn(async move {
                let r = client
                    .post(url)
                    .json(&json!({"input": {"burst": true}}))
                    .send()
                    .await
                    .expect("the server answers");
                assert_eq!(r.status(), 201);
                let run: Value = r.json().await.expect("a run");
                run["id"].as_str().expect("an id").to_owned()
            })
        })
        .collect();
    let mut burst_ids = Vec::new();
    for b in burst {
        burst_ids.push(b.await.expect("the enqueue task did not panic"));
    }
    // In enqueue order (the listing is newest first).
    let queued = server.get("/v1/runs?task=plain&state=queued").await;
    let plain_queued: Vec<String> = queued["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .rev()
        .map(|r| r["id"].as_str().expect("an id").to_owned())
        .collect();
    assert_eq!(plain_queued.len(), 51);
    assert_eq!(plain_queued[0], plain[2]);
    let mut sorted = plain_queued[1..].to_vec();
    sorted.sort();
    burst_ids.sort();
    assert_eq!(sorted, burst_ids, "the burst's runs are the queued ones");

    let runs = server.runs().await;
    assert_eq!(runs.len(), 3 + 4 + 50);
    Before {
        limit,
        tasks: server.get("/v1/tasks").await,
        runs,
        send_leased,
        send_parked: send[2].clone(),
        plain_queued,
        plain_running: plain[1].clone(),
    }
}

/// Everything `populate` left is there after the restart, and works on.
async fn check_restored(server: &Tollgate, before: &Before) {
    let limit = server.get("/v1/limits/hourly").await;
    assert_eq!(limit["limit"], before.limit["limit"]);
    assert_eq!(limit["period"], before.limit["period"]);
    assert_eq!(limit["used"], 2, "consumption rebuilt from the runs");
    assert_eq!(limit["remaining"], 0);

    let mut tasks = server.get("/v1/tasks").await;
    let mut expected = before.tasks.clone();
    // Depth moves as runs resume; the definitions must not.
    for t in tasks["tasks"]
        .as_array_mut()
        .into_iter()
        .chain(expected["tasks"].as_array_mut())
        .flatten()
    {
        t.as_object_mut().expect("a task").remove("depth");
    }
    assert_eq!(tasks, expected);

    let after = server.runs().await;
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.runs.keys().collect::<Vec<_>>(),
        "every acknowledged run, and no other"
    );
    for (id, was) in &before.runs {
        let now = &after[id];
        if was["state"] == "waiting" {
            // Parked runs resume: queued again until a lease tries them.
            assert!(
                now["state"] == "queued" || now["state"] == "waiting",
                "{now}"
            );
        } else {
            assert_eq!(now, was, "run {id} restored as it was");
        }
    }
    for id in &before.send_leased {
        assert_eq!(after[id]["state"], "running", "still leased");
        assert_eq!(after[id]["worker_id"], "w1");
    }

    // No over-admission: hourly's two units are still taken, so the parked run parks again.
    assert!(server.lease("send", 10).await.is_empty());
    let parked = server
        .get(&format!("/v1/runs/{}", before.send_parked))
        .await;
    assert_eq!(parked["state"], "waiting");
    assert_eq!(parked["waiting_on"], "hourly");
    assert_eq!(parked["attempt"], 0);
    assert_eq!(
        parked["eligible_at_ms"],
        before.runs[&before.send_parked]["eligible_at_ms"]
    );

    // Leased runs go on: their worker completes them with the attempt it was given.
    for id in &before.send_leased {
        let r = server.act(id, "complete", json!({"attempt": 1})).await;
        assert_eq!(r["state"], "succeeded");
    }
    let r = server
        .act(&before.plain_running, "heartbeat", json!({"attempt": 1}))
        .await;
    assert_eq!(r["state"], "running");

    // Queued runs resume, in enqueue order, each on its first attempt.
    let leased = server.lease("plain", 1000).await;
    assert_eq!(leased, before.plain_queued);
    let run = server.get(&format!("/v1/runs/{}", leased[0])).await;
    assert_eq!(run["attempt"], 1);
}

#[tokio::test]
async fn every_acknowledged_run_survives_kill_9_and_no_limit_over_admits() {
    let dir = data_dir("kill");
    let first = Tollgate::start(&dir).await;
    let before = populate(&first).await;
    first.kill().await;

    let second = Tollgate::start(&dir).await;
    check_restored(&second, &before).await;
    second.terminate().await;

    // And what the second process did is durable too.
    let third = Tollgate::start(&dir).await;
    for id in &before.send_leased {
        let run = third.get(&format!("/v1/runs/{id}")).await;
        assert_eq!(run["state"], "succeeded");
    }
    third.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_clean_sigterm_restart_restores_everything() {
    let dir = data_dir("term");
    let first = Tollgate::start(&dir).await;
    let before = populate(&first).await;
    first.terminate().await;

    let second = Tollgate::start(&dir).await;
    check_restored(&second, &before).await;
    second.terminate().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `remaining` of limit `key` as the listing shows it.
async fn remaining(server: &Tollgate, key: &str) -> u64 {
    server.get(&format!("/v1/limits/{key}")).await["remaining"]
        .as_u64()
        .expect("remaining")
}

async fn acquire(server: &Tollgate, body: Value) -> Value {
    server
        .expect(reqwest::Method::POST, "/v1/acquire", body, 200)
        .await
}

#[tokio::test]
async fn direct_use_is_exact_after_sigterm_and_never_over_admits_after_kill_9() {
    let dir = data_dir("direct");
    let first = Tollgate::start(&dir).await;
    for key in ["api", "untouched"] {
        first
            .expect(
                reqwest::Method::PUT,
                &format!("/v1/limits/{key}"),
                json!({"rate": "10/h"}),
                200,
            )
            .await;
    }
    let a = acquire(&first, json!({"limits": [{"key": "api", "units": 3}, {"key": "user:7", "limit": 5, "period": "1h"}]})).await;
    assert_eq!(a["allowed"], true);
    first.terminate().await;

    // A clean stop restores the limiter state exactly.
    let second = Tollgate::start(&dir).await;
    assert_eq!(remaining(&second, "api").await, 7);
    let d = acquire(
        &second,
        json!({"limits": [{"key": "user:7", "limit": 5, "period": "1h"}]}),
    )
    .await;
    assert_eq!(
        d["decisions"][0]["remaining"], 3,
        "the dynamic key kept its usage too"
    );
    second.kill().await;

    // After kill -9, uses since the last snapshot are unknown: keys with direct use count as
    // fully used for one period; a limit nobody used directly is untouched.
    let third = Tollgate::start(&dir).await;
    assert_eq!(remaining(&third, "api").await, 0);
    let d = acquire(
        &third,
        json!({"limits": [{"key": "user:7", "limit": 5, "period": "1h"}]}),
    )
    .await;
    assert_eq!(d["allowed"], false);
    assert_eq!(remaining(&third, "untouched").await, 10);
    third.terminate().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The status of a call whose answer may have no body (a 204).
async fn status_of(server: &Tollgate, method: reqwest::Method, path: &str) -> u16 {
    let r = server
        .client
        .request(method, server.url(path))
        .send()
        .await
        .expect("the server answers");
    r.status().as_u16()
}

async fn lease(server: &Tollgate, body: Value) -> Value {
    server
        .expect(reqwest::Method::POST, "/v1/leases", body, 200)
        .await
}

/// Concurrency leases and barriers taken directly are journalled (docs/design.md §8.1): after
/// `kill -9` a held lease still holds its slot (another holder is refused) and keeps its id and
/// expiry, so its holder renews and releases it as before; a barrier keeps its expiry and its
/// arrivals. A clean stop keeps them too, and a release is as durable as a grant.
#[tokio::test]
async fn direct_leases_and_barriers_survive_kill_9_and_a_clean_stop() {
    use reqwest::Method;
    let dir = data_dir("leases");
    let first = Tollgate::start(&dir).await;
    first
        .expect(
            Method::PUT,
            "/v1/limits/db",
            json!({"algorithm": "concurrency", "limit": 1, "lease_ttl": "10m"}),
            200,
        )
        .await;
    let declared = lease(&first, json!({"key": "db", "holder": "w1"})).await;
    assert_eq!(declared["acquired"], true, "{declared}");
    let declared_id = declared["lease_id"].as_str().unwrap().to_owned();
    let renewed = first
        .expect(
            Method::POST,
            &format!("/v1/leases/{declared_id}/renew"),
            json!({"ttl_ms": 1_200_000}),
            200,
        )
        .await;
    let dynamic_body = json!({"key": "jobs", "limit": 1, "ttl_ms": 600_000, "holder": "w1"});
    let dynamic = lease(&first, dynamic_body.clone()).await;
    assert_eq!(dynamic["acquired"], true, "{dynamic}");
    first
        .expect(
            Method::POST,
            "/v1/barriers/batch",
            json!({"parties": 3, "ttl_ms": 600_000}),
            200,
        )
        .await;
    let waited = first
        .expect(
            Method::POST,
            "/v1/barriers/batch/wait",
            json!({"timeout_ms": 10}),
            200,
        )
        .await;
    assert_eq!(waited["released"], false);
    let barrier = first.get("/v1/barriers/batch").await;
    assert_eq!(barrier["arrived"], 1);
    first.kill().await;

    let second = Tollgate::start(&dir).await;
    let refused = lease(&second, json!({"key": "db", "holder": "w2"})).await;
    assert_eq!(
        refused["acquired"], false,
        "the slot is still held: {refused}"
    );
    let mut other = dynamic_body.clone();
    other["holder"] = json!("w2");
    let refused = lease(&second, other.clone()).await;
    assert_eq!(
        refused["acquired"], false,
        "the slot is still held: {refused}"
    );
    assert_eq!(
        second.get("/v1/barriers/batch").await,
        barrier,
        "arrivals and expiry kept"
    );
    // The holder goes on with the id it was given: renew, then release.
    let again = second
        .expect(
            Method::POST,
            &format!("/v1/leases/{declared_id}/renew"),
            json!({"ttl_ms": 1_200_000}),
            200,
        )
        .await;
    assert!(
        again["expires_at_ms"].as_u64() >= renewed["expires_at_ms"].as_u64(),
        "{again} after {renewed}"
    );
    assert_eq!(
        status_of(
            &second,
            Method::DELETE,
            &format!("/v1/leases/{declared_id}")
        )
        .await,
        204
    );
    let taken = lease(&second, json!({"key": "db", "holder": "w2"})).await;
    assert_eq!(taken["acquired"], true, "{taken}");
    second.terminate().await;

    // A clean stop: the release stayed released, the new holder and the dynamic lease held.
    let third = Tollgate::start(&dir).await;
    let refused = lease(&third, json!({"key": "db", "holder": "w3"})).await;
    assert_eq!(refused["acquired"], false, "w2 holds it: {refused}");
    let refused = lease(&third, other).await;
    assert_eq!(refused["acquired"], false, "w1 holds it: {refused}");
    assert_eq!(
        status_of(&third, Method::DELETE, &format!("/v1/leases/{declared_id}")).await,
        404,
        "released before the restart"
    );
    assert_eq!(third.get("/v1/barriers/batch").await, barrier);
    third.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

async fn enqueue_state(server: &Tollgate, task: &str) -> Value {
    server
        .expect(
            reqwest::Method::POST,
            &format!("/v1/tasks/{task}/runs"),
            json!({"input": {}}),
            201,
        )
        .await["state"]
        .clone()
}

/// What a task's `rate_limit` took at enqueue counts after `kill -9` too: the run that passed it
/// is replayed into the limiter at the instant it was enqueued, so the next run is still
/// skipped; a run the gate skipped took nothing.
#[tokio::test]
async fn a_rate_limit_taken_at_enqueue_still_counts_after_kill_9() {
    use reqwest::Method;
    let dir = data_dir("gate");
    let first = Tollgate::start(&dir).await;
    first
        .expect(
            Method::PUT,
            "/v1/tasks/ingest",
            json!({"rate_limit": {"limit": 2, "period": "1h", "burst": 2}}),
            200,
        )
        .await;
    assert_eq!(enqueue_state(&first, "ingest").await, "queued");
    first.kill().await;

    let second = Tollgate::start(&dir).await;
    assert_eq!(
        enqueue_state(&second, "ingest").await,
        "queued",
        "one of two is left"
    );
    assert_eq!(
        enqueue_state(&second, "ingest").await,
        "skipped",
        "both are taken"
    );
    second.kill().await;

    let third = Tollgate::start(&dir).await;
    assert_eq!(
        enqueue_state(&third, "ingest").await,
        "skipped",
        "both still count, the skipped run took none"
    );
    third.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A scheduled run survives `kill -9` as it was: still scheduled, due at the same instant, and
/// leased by nobody before then.
#[tokio::test]
async fn a_scheduled_run_stays_scheduled_after_kill_9() {
    use reqwest::Method;
    let dir = data_dir("scheduled");
    let first = Tollgate::start(&dir).await;
    first
        .expect(Method::PUT, "/v1/tasks/later", json!({}), 200)
        .await;
    let run = first
        .expect(
            Method::POST,
            "/v1/tasks/later/runs",
            json!({"input": {}, "delay_ms": 3_600_000}),
            201,
        )
        .await;
    assert_eq!(run["state"], "scheduled");
    first.kill().await;

    let second = Tollgate::start(&dir).await;
    let id = run["id"].as_str().unwrap();
    let after = second.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(
        (&after["state"], &after["eligible_at_ms"]),
        (&run["state"], &run["eligible_at_ms"]),
        "{after}"
    );
    assert!(second.lease("later", 10).await.is_empty());
    second.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}
