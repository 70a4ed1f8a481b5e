//! HTTP acquire against a bare axum handler, on the same machine in the same run (docs/design.md §6:
//! HTTP acquire ≥ 80 % of a bare axum handler; the batch endpoint in decisions/s).
//!
//! One process: the servers run on a 2-worker tokio runtime (threads `server-*`), the load
//! generator on a 1-thread runtime (thread `loadgen`), each with its own loopback listener.
//! The load generator keeps `TOLLGATE_BENCH_CONNS` (default 32) keep-alive connections, one
//! request in flight on each, written as raw HTTP/1.1 so that it costs little CPU.
//!
//! Scenarios, interleaved over `TOLLGATE_BENCH_ROUNDS` (default 5) rounds of
//! `TOLLGATE_BENCH_SECS` (default 1.5) seconds each after 0.3 s of warm-up, each round
//! starting one scenario later (on a shared machine, load drifts within a run: ratios are
//! taken within each round, and their median reported). A command-line argument keeps only
//! the scenarios whose name contains it (`-- "acquire 1 key"`), for profiling.
//! - `bare axum`: a handler answering a fixed small JSON body (the request carries the same
//!   body as `acquire 1 key`, unread);
//! - `acquire 1 key`: `POST /v1/acquire` on one declared gcra key with a huge limit (every
//!   request allowed), in-memory state; `acquire 1 key, durable`: the same with a SQLite data
//!   directory (`AppState::open`, the direct-use journal on); `acquire 1 key, with a token`:
//!   the in-memory one behind access control, each request carrying `Authorization: Bearer`
//!   (the cost of `--tokens-file`: a SHA-256 and a constant-time compare per request);
//! - `acquire 3 keys`: three declared keys in one atomic acquire;
//! - `batch 100`: `POST /v1/acquire/batch` with 100 one-key requests per call.
//!
//! Besides throughput it reports the server's CPU time per request (all threads but the load
//! generator's, from `/proc`): on 2 cores shared with the load generator, throughput ratios
//! understate the server-side difference, CPU per request does not.
//!
//! `cargo bench -p tollgate-server --bench http`

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::routing::post;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tollgate::SystemClock;
use tollgate_server::{AppState, Settings};

use common::{
    Conn, Percentiles, cpu_ticks, ms, post_req, put_req, table, thousands, ticks_to_secs,
};

const WARMUP: Duration = Duration::from_millis(300);

#[derive(Serialize)]
struct Bare {
    allowed: bool,
    retry_after_ms: u64,
}

async fn bare() -> Json<Bare> {
    Json(Bare {
        allowed: true,
        retry_after_ms: 0,
    })
}

/// A server running on the server runtime until `stop` is sent.
struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_bare() -> anyhow::Result<Running> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let app = Router::new().route("/bare", post(bare));
    let done = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .context("serving the bare handler")
    });
    Ok(Running { addr, stop, done })
}

async fn start_tollgate(state: AppState) -> anyhow::Result<Running> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(tollgate_server::run(listener, state, async {
        let _ = stopped.await;
    }));
    Ok(Running { addr, stop, done })
}

/// The secret of the bench's one token (an admin's), for the server with access control.
const TOKEN: &str = "bench-secret";

/// `request` with `Authorization: Bearer TOKEN` after its request line.
fn with_token(request: Vec<u8>) -> Vec<u8> {
    let end = request
        .windows(2)
        .position(|w| w == b"\r\n")
        .map_or(request.len(), |i| i + 2);
    let mut out = request[..end].to_vec();
    out.extend_from_slice(format!("authorization: Bearer {TOKEN}\r\n").as_bytes());
    out.extend_from_slice(&request[end..]);
    out
}

/// Declares the bench's keys: gcra, 100 M/s with a burst of 1 M, so nothing is denied.
async fn declare_keys(addr: SocketAddr, token: bool) -> anyhow::Result<()> {
    let mut conn = Conn::connect(addr).await?;
    for key in ["k1", "k2", "k3"] {
        let spec = r#"{"algorithm": "gcra", "limit": 100000000, "period": "1s", "burst": 1000000}"#;
        let request = put_req(&format!("/v1/limits/{key}"), spec);
        let request = if token { with_token(request) } else { request };
        conn.expect(&request, 200)
            .await
            .with_context(|| format!("declaring {key}"))?;
    }
    Ok(())
}

/// What a phase measured.
#[derive(Default, Clone)]
struct Phase {
    requests: u64,
    /// Decisions allowed (bare: every request counts as one).
    allowed: u64,
    decisions: u64,
    secs: f64,
    /// Server CPU seconds (every thread but the load generator's).
    server_cpu: f64,
    /// The load generator's CPU seconds.
    client_cpu: f64,
    latencies: Vec<u64>,
}

impl Phase {
    fn add(&mut self, other: Phase) {
        self.requests += other.requests;
        self.allowed += other.allowed;
        self.decisions += other.decisions;
        self.secs += other.secs;
        self.server_cpu += other.server_cpu;
        self.client_cpu += other.client_cpu;
        self.latencies.extend(other.latencies);
    }
    fn rps(&self) -> f64 {
        self.requests as f64 / self.secs
    }
    fn dps(&self) -> f64 {
        self.decisions as f64 / self.secs
    }
    /// Server CPU microseconds per request.
    fn cpu_per_request(&self) -> f64 {
        self.server_cpu * 1e6 / self.requests.max(1) as f64
    }
    /// Load generator CPU microseconds per request.
    fn client_cpu_per_request(&self) -> f64 {
        self.client_cpu * 1e6 / self.requests.max(1) as f64
    }
}

/// How a scenario's answers are read.
#[derive(Clone, Copy)]
enum Reading {
    /// Every 200 is one decision.
    Bare,
    /// One decision per answer: `{"allowed": …`.
    One,
    /// `n` decisions per answer.
    Batch(u64),
}

fn count(body: &[u8], needle: &[u8]) -> u64 {
    body.windows(needle.len()).filter(|w| *w == needle).count() as u64
}

/// Drives `conns` connections at `addr` with `request`: warm-up, then `secs` measured.
async fn drive(
    addr: SocketAddr,
    request: Arc<[u8]>,
    reading: Reading,
    conns: usize,
    measure: Duration,
) -> anyhow::Result<Phase> {
    let start = Instant::now();
    let from = start + WARMUP;
    let until = from + measure;
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let request = Arc::clone(&request);
        clients.spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            let mut phase = Phase::default();
            loop {
                let t0 = Instant::now();
                if t0 >= until {
                    break;
                }
                let body = conn.expect(&request, 200).await?;
                let allowed = match reading {
                    Reading::Bare => 1,
                    Reading::One => u64::from(body.starts_with(br#"{"allowed":true"#)),
                    Reading::Batch(_) => count(body, br#"{"allowed":true"#),
                };
                let t1 = Instant::now();
                if t0 >= from {
                    phase.requests += 1;
                    phase.allowed += allowed;
                    phase.decisions += match reading {
                        Reading::Bare | Reading::One => 1,
                        Reading::Batch(n) => n,
                    };
                    phase.latencies.push((t1 - t0).as_nanos() as u64);
                }
            }
            anyhow::Ok(phase)
        });
    }
    // CPU of every thread but this one's, over the measured window.
    tokio::time::sleep_until(from.into()).await;
    let cpu = || {
        let all = cpu_ticks("").unwrap_or(0);
        let me = cpu_ticks("loadgen").unwrap_or(0);
        (all.saturating_sub(me), me)
    };
    let (server0, client0) = cpu();
    tokio::time::sleep_until(until.into()).await;
    let (server1, client1) = cpu();
    let mut total = Phase {
        secs: measure.as_secs_f64(),
        server_cpu: ticks_to_secs(server1.saturating_sub(server0)),
        client_cpu: ticks_to_secs(client1.saturating_sub(client0)),
        ..Phase::default()
    };
    while let Some(client) = clients.join_next().await {
        let phase = client.context("a client task panicked")??;
        total.requests += phase.requests;
        total.allowed += phase.allowed;
        total.decisions += phase.decisions;
        total.latencies.extend(phase.latencies);
    }
    Ok(total)
}

struct Scenario {
    name: &'static str,
    addr: SocketAddr,
    request: Arc<[u8]>,
    reading: Reading,
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if !n.is_multiple_of(2) {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn main() -> anyhow::Result<()> {
    let conns = common::env_usize("TOLLGATE_BENCH_CONNS", 32);
    let rounds = common::env_usize("TOLLGATE_BENCH_ROUNDS", 5);
    let measure = common::phase_secs(1.5);
    // `cargo bench` passes `--bench`; anything else is a filter on scenario names.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    println!("machine: {}", common::machine());
    println!(
        "{conns} connections, {rounds} rounds of {:.1} s per scenario (+{:.1} s warm-up each)",
        measure.as_secs_f64(),
        WARMUP.as_secs_f64()
    );

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("server")
        .enable_all()
        .build()?;
    let data_dir = tempfile::tempdir()?;
    let tokens = data_dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        format!(
            "[[token]]\nname = \"bench\"\nrole = \"admin\"\nsha256 = \"{}\"\n",
            tollgate_server::auth::sha256_hex(TOKEN)
        ),
    )?;
    let access = tollgate_server::auth::Access::load(&tokens, false).map_err(anyhow::Error::msg)?;
    let (bare_srv, memory_srv, durable_srv, guarded_srv) = server_rt.block_on(async {
        let bare_srv = start_bare().await?;
        let memory = AppState::new(SystemClock::new(), Settings::default());
        let memory_srv = start_tollgate(memory).await?;
        let durable = AppState::open(data_dir.path(), Settings::default())?;
        let durable_srv = start_tollgate(durable).await?;
        let guarded = AppState::new(
            SystemClock::new(),
            Settings {
                access: Some(Arc::new(access)),
                ..Settings::default()
            },
        );
        let guarded_srv = start_tollgate(guarded).await?;
        anyhow::Ok((bare_srv, memory_srv, durable_srv, guarded_srv))
    })?;

    let one = r#"{"limits": [{"key": "k1"}]}"#;
    let three = r#"{"limits": [{"key": "k1"}, {"key": "k2"}, {"key": "k3"}]}"#;
    let batch = format!(
        r#"{{"requests": [{}]}}"#,
        vec![r#"{"limits": [{"key": "k1"}]}"#; 100].join(", ")
    );
    let scenarios: Vec<Scenario> = [
        Scenario {
            name: "bare axum",
            addr: bare_srv.addr,
            request: post_req("/bare", one).into(),
            reading: Reading::Bare,
        },
        Scenario {
            name: "acquire 1 key",
            addr: memory_srv.addr,
            request: post_req("/v1/acquire", one).into(),
            reading: Reading::One,
        },
        Scenario {
            name: "acquire 1 key, with a token",
            addr: guarded_srv.addr,
            request: with_token(post_req("/v1/acquire", one)).into(),
            reading: Reading::One,
        },
        Scenario {
            name: "acquire 1 key, durable",
            addr: durable_srv.addr,
            request: post_req("/v1/acquire", one).into(),
            reading: Reading::One,
        },
        Scenario {
            name: "acquire 3 keys",
            addr: memory_srv.addr,
            request: post_req("/v1/acquire", three).into(),
            reading: Reading::One,
        },
        Scenario {
            name: "batch 100 x 1 key",
            addr: memory_srv.addr,
            request: post_req("/v1/acquire/batch", &batch).into(),
            reading: Reading::Batch(100),
        },
    ]
    .into_iter()
    .filter(|s| filter.as_deref().is_none_or(|f| s.name.contains(f)))
    .collect();
    let names: Vec<&'static str> = scenarios.iter().map(|s| s.name).collect();

    // The load generator: one thread of its own, named so that its CPU can be told apart.
    let (memory_addr, durable_addr, guarded_addr) =
        (memory_srv.addr, durable_srv.addr, guarded_srv.addr);
    let loadgen = std::thread::Builder::new().name("loadgen".into()).spawn(
        move || -> anyhow::Result<Vec<Vec<Phase>>> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                declare_keys(memory_addr, false).await?;
                declare_keys(durable_addr, false).await?;
                declare_keys(guarded_addr, true).await?;
                let n = scenarios.len();
                let mut results = vec![Vec::new(); n];
                for round in 0..rounds {
                    for k in 0..n {
                        let i = (round + k) % n;
                        let s = &scenarios[i];
                        let phase =
                            drive(s.addr, Arc::clone(&s.request), s.reading, conns, measure)
                                .await
                                .with_context(|| format!("round {round}, {}", s.name))?;
                        results[i].push(phase);
                    }
                }
                anyhow::Ok(results)
            })
        },
    )?;
    let results = match loadgen.join() {
        Ok(r) => r?,
        Err(_) => bail!("the load generator panicked"),
    };

    server_rt.block_on(async {
        for srv in [bare_srv, memory_srv, durable_srv, guarded_srv] {
            let _ = srv.stop.send(());
            srv.done.await??;
        }
        anyhow::Ok(())
    })?;

    let merged: Vec<Phase> = results
        .iter()
        .map(|phases| {
            let mut m = Phase::default();
            for p in phases {
                m.add(p.clone());
            }
            m
        })
        .collect();
    let base = names.iter().position(|n| *n == "bare axum");
    let mut rows = Vec::new();
    for (i, (name, phase)) in names.iter().zip(&merged).enumerate() {
        let mut lat = phase.latencies.clone();
        let pct = Percentiles::of(&mut lat);
        // Ratios to the bare handler within each round, then their median.
        let (vs_bare, cpu_vs_bare) = match base {
            Some(b) => (
                format!(
                    "{:.2}",
                    median(
                        (0..rounds)
                            .map(|r| results[i][r].dps() / results[b][r].rps())
                            .collect()
                    )
                ),
                format!(
                    "{:.2}",
                    median(
                        (0..rounds)
                            .map(|r| {
                                results[b][r].cpu_per_request() / results[i][r].cpu_per_request()
                            })
                            .collect()
                    )
                ),
            ),
            None => ("-".to_owned(), "-".to_owned()),
        };
        rows.push(vec![
            (*name).to_owned(),
            thousands(phase.rps()),
            thousands(phase.dps()),
            vs_bare,
            ms(pct.p50),
            ms(pct.p99),
            format!("{:.1}", phase.cpu_per_request()),
            cpu_vs_bare,
            format!("{:.1}", phase.client_cpu_per_request()),
            format!(
                "{:.1}",
                100.0 * phase.allowed as f64 / phase.decisions.max(1) as f64
            ),
        ]);
    }
    println!();
    table(
        &[
            "scenario",
            "requests/s",
            "decisions/s",
            "decisions/s ÷ bare req/s",
            "p50 ms",
            "p99 ms",
            "server CPU µs/req",
            "bare CPU ÷ this CPU",
            "loadgen CPU µs/req",
            "allowed %",
        ],
        &rows,
    );
    println!();
    println!("per round, requests/s (decisions/s ÷ bare requests/s in the same round):");
    let mut per_round = Vec::new();
    for (name, phases) in names.iter().zip(&results) {
        let mut row = vec![(*name).to_owned()];
        for (r, p) in phases.iter().enumerate() {
            let ratio = base.map_or(String::new(), |b| {
                format!(" ({:.2})", p.dps() / results[b][r].rps())
            });
            row.push(format!("{}{ratio}", thousands(p.rps())));
        }
        per_round.push(row);
    }
    let round_names: Vec<String> = (1..=rounds).map(|r| format!("round {r}")).collect();
    let mut header = vec!["scenario"];
    header.extend(round_names.iter().map(String::as_str));
    table(&header, &per_round);
    println!();
    println!("load average after: {}", common::load_average());
    Ok(())
}
