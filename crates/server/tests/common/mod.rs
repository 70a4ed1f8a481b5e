//! A server started in-process on a free port, driven over real HTTP like a worker would.
#![allow(dead_code)] // each test file uses a different part

use std::net::SocketAddr;

use reqwest::header::HeaderMap;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tollgate::core::Nanos;
use tollgate::{Clock, FakeClock};
use tollgate_server::{AppState, Settings};

/// 2023-11-14T22:13:20Z: an epoch-anchored start, as the production clock has.
pub const START: Nanos = Nanos::from_secs(1_700_000_000);

pub fn fake_clock() -> FakeClock {
    FakeClock::new(START)
}

/// An answer: status, JSON body (`Null` when empty), headers.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub headers: HeaderMap,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The error code of an error answer.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

pub struct Server {
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    pub async fn start(clock: impl Clock + 'static) -> Server {
        Server::with_settings(clock, Settings::default()).await
    }

    pub async fn with_settings(clock: impl Clock + 'static, settings: Settings) -> Server {
        Server::with_state(AppState::new(clock, settings)).await
    }

    /// A server over an existing state (a Redis node, say).
    pub async fn with_state(state: AppState) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port");
        let addr = listener.local_addr().expect("a bound address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(tollgate_server::run(listener, state.clone(), async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            state,
            stop: Some(stop),
            task,
        }
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task)
            .await
            .expect("the server task did not panic")
            .expect("run() returned Ok");
    }

    async fn answer(request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("the body arrives");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
        };
        Answer {
            status,
            body,
            headers,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> Answer {
        Server::answer(self.client.get(self.url(path))).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        Server::answer(self.client.delete(self.url(path))).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Answer {
        Server::answer(self.client.put(self.url(path)).json(&body)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        Server::answer(self.client.post(self.url(path)).json(&body)).await
    }

    /// A request with a raw body and no `Content-Type`, as a careless client sends it.
    pub async fn send(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method name");
        let mut request = self.client.request(method, self.url(path));
        if let Some(body) = body {
            request = request.body(body.to_owned());
        }
        Server::answer(request).await
    }

    /// Writes `request` on a fresh connection and reads until the server closes it.
    pub async fn raw(&self, request: &[u8]) -> String {
        let mut conn = TcpStream::connect(self.addr)
            .await
            .expect("the server accepts");
        conn.write_all(request)
            .await
            .expect("the request is written");
        let mut out = Vec::new();
        // The server closes the connection after a 413; a reset after the answer is fine too.
        let _ = conn.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Task-run helpers: each asserts the call succeeded, so a test reads as the worker's steps.
impl Server {
    /// The server clock's current time in epoch milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.state.now().as_millis_floor()
    }

    /// `PUT /v1/limits/{key}`, expecting 200.
    pub async fn define_limit(&self, key: &str, definition: Value) -> Value {
        let r = self.put(&format!("/v1/limits/{key}"), definition).await;
        assert_eq!(r.status, 200, "defining limit {key}: {:?}", r.body);
        r.body
    }

    /// `PUT /v1/tasks/{name}`, expecting 200.
    pub async fn define_task(&self, name: &str, spec: Value) -> Value {
        let r = self.put(&format!("/v1/tasks/{name}"), spec).await;
        assert_eq!(r.status, 200, "defining task {name}: {:?}", r.body);
        r.body
    }

    /// `POST /v1/tasks/{task}/runs` with `input`, expecting 201; the run.
    pub async fn enqueue(&self, task: &str, input: Value) -> Value {
        let r = self
            .post(
                &format!("/v1/tasks/{task}/runs"),
                serde_json::json!({"input": input}),
            )
            .await;
        assert_eq!(r.status, 201, "enqueueing a run of {task}: {:?}", r.body);
        r.body
    }

    /// Enqueues `n` runs of `task` with `input`; their ids in order.
    pub async fn enqueue_n(&self, task: &str, n: usize, input: Value) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            ids.push(id(&self.enqueue(task, input.clone()).await));
        }
        ids
    }

    /// `POST /v1/workers/lease` as worker `w1`, expecting 200; the leased runs.
    pub async fn lease(&self, tasks: &[&str], max: u64, wait_ms: u64) -> Vec<Value> {
        self.lease_as("w1", tasks, max, wait_ms).await
    }

    /// `POST /v1/workers/lease` as `worker_id`, expecting 200; the leased runs.
    pub async fn lease_as(
        &self,
        worker_id: &str,
        tasks: &[&str],
        max: u64,
        wait_ms: u64,
    ) -> Vec<Value> {
        let r = self
            .post(
                "/v1/workers/lease",
                serde_json::json!({"worker_id": worker_id, "tasks": tasks, "max": max, "wait_ms": wait_ms}),
            )
            .await;
        assert_eq!(r.status, 200, "leasing {tasks:?}: {:?}", r.body);
        r.body["runs"].as_array().expect("runs is an array").clone()
    }

    /// `GET /v1/runs/{id}`, expecting 200.
    pub async fn run(&self, id: &str) -> Value {
        let r = self.get(&format!("/v1/runs/{id}")).await;
        assert_eq!(r.status, 200, "getting run {id}: {:?}", r.body);
        r.body
    }

    /// `POST /v1/runs/{id}/{action}` with `body`.
    pub async fn act(&self, id: &str, action: &str, body: Value) -> Answer {
        self.post(&format!("/v1/runs/{id}/{action}"), body).await
    }
}

/// A run's (or leased run's) id.
pub fn id(run: &Value) -> String {
    run["id"].as_str().expect("a run has an id").to_owned()
}

/// The ids of `runs`, in order.
pub fn ids(runs: &[Value]) -> Vec<String> {
    runs.iter().map(id).collect()
}

/// The real `tollgate serve` binary on a free port with `args` after `serve --listen
/// 127.0.0.1:0` and no `TOLLGATE_*` settings inherited from the environment; its stderr
/// discarded (a full pipe would block its logging). Waits until it prints its address and
/// returns the process (killed on drop) and its base URL.
pub async fn spawn_serve<I, S>(args: I) -> (tokio::process::Child, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    spawn_serve_with(args, |_| {}).await
}

/// [`spawn_serve`], with `configure` applied to the command last (environment, a piped
/// stderr).
pub async fn spawn_serve_with<I, S>(
    args: I,
    configure: impl FnOnce(&mut tokio::process::Command),
) -> (tokio::process::Child, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    use tokio::io::AsyncBufReadExt as _;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.args(["serve", "--listen", "127.0.0.1:0"]).args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TOLLGATE_") {
            cmd.env_remove(name);
        }
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    configure(&mut cmd);
    let mut child = cmd.spawn().expect("the binary starts");
    let stdout = child.stdout.take().expect("stdout is piped");
    let line = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tokio::io::BufReader::new(stdout).lines().next_line(),
    )
    .await
    .expect("the server printed its address in time")
    .expect("stdout is readable")
    .expect("the server printed a line");
    let base = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (child, base)
}

/// The real `tollgate serve` binary ([`spawn_serve`]) with an HTTP client, answers read as
/// `(status, JSON)` (`null` for an empty body).
pub struct Binary {
    /// The process, killed on drop.
    pub child: tokio::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Sends the calls.
    pub client: reqwest::Client,
}

impl Binary {
    /// Starts the binary with `args` after `serve --listen 127.0.0.1:0`.
    pub async fn start<I, S>(args: I) -> Binary
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let (child, base) = spawn_serve(args).await;
        Binary {
            child,
            base,
            client: reqwest::Client::new(),
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let r = request.send().await.expect("the server answers");
        let status = r.status().as_u16();
        let text = r.text().await.expect("a readable body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A call that must succeed (2xx); its answer.
    pub async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (status, answer) = self.call(method.clone(), path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {answer}"
        );
        answer
    }
}

/// Sends SIGHUP to a server process (it reads its tokens, config and TLS files again).
pub fn hang_up(child: &tokio::process::Child) {
    let pid = child.id().expect("the server runs").to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -HUP {pid}");
}

/// The `[[token]]` table of a tokens file for `secret` (stored as its SHA-256).
pub fn token_table(name: &str, role: &str, secret: &str) -> String {
    format!(
        "[[token]]\nname = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n\n",
        tollgate_server::auth::sha256_hex(secret)
    )
}

/// The `tollgate` binary run with `args`, nothing of `TOLLGATE_TOKEN`, `TOLLGATE_SERVER` or
/// `TOLLGATE_CA_CERT` inherited, `env` added and `stdin` written to it; its output.
pub async fn run_cli(
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&str>,
) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.args(args)
        .env_remove("TOLLGATE_TOKEN")
        .env_remove("TOLLGATE_SERVER")
        .env_remove("TOLLGATE_CA_CERT")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("the binary starts");
    let mut input = child.stdin.take().expect("stdin is piped");
    if let Some(text) = stdin {
        input
            .write_all(text.as_bytes())
            .await
            .expect("stdin is writable");
    }
    drop(input);
    child.wait_with_output().await.expect("the binary ran")
}

/// The log (stderr, piped) of a server process, read line by line.
pub struct ServerLog(tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>);

impl ServerLog {
    /// Takes the piped stderr of `child`.
    pub fn of(child: &mut tokio::process::Child) -> ServerLog {
        use tokio::io::AsyncBufReadExt as _;
        let stderr = child.stderr.take().expect("stderr is piped");
        ServerLog(tokio::io::BufReader::new(stderr).lines())
    }

    /// Reads until a line contains `needle` (30 s at most), showing every line read to
    /// `inspect` first; that line.
    pub async fn until_with(&mut self, needle: &str, inspect: impl Fn(&str)) -> String {
        let read = async {
            loop {
                let line = self.0.next_line().await.expect("stderr is readable");
                let line = line.unwrap_or_else(|| panic!("the log ended before {needle:?}"));
                inspect(&line);
                if line.contains(needle) {
                    return line;
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), read)
            .await
            .unwrap_or_else(|_| panic!("no log line with {needle:?}"))
    }

    /// [`ServerLog::until_with`], looking at nothing else.
    pub async fn until(&mut self, needle: &str) -> String {
        self.until_with(needle, |_| {}).await
    }

    /// Keeps reading in the background, so the server never blocks on a full pipe.
    pub fn drain(mut self) {
        tokio::spawn(async move { while let Ok(Some(_)) = self.0.next_line().await {} });
    }
}
