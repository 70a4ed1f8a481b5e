//! Queue throughput: enqueue → lease → complete, in runs/s (docs/design.md §6: ≥ 20 k runs/s durable
//! (SQLite) through the engine API in-process; over HTTP reported as a ratio to that floor).
//!
//! The task has one rate limit (a declared gcra key with a limit no run reaches), so every
//! admission makes a limiter decision. Each phase gets a fresh engine (and, for SQLite, a
//! fresh data directory under the target directory):
//! - `in-process`: `TOLLGATE_BENCH_PRODUCERS` (default 4) producers, each keeping
//!   `TOLLGATE_BENCH_IN_FLIGHT` (default 16) `enqueue` calls in flight, and
//!   `TOLLGATE_BENCH_WORKERS` (default 4) workers, each leasing up to 100 runs at a time
//!   (`lease_until` with a 50 ms wait) and completing them concurrently (`complete`, so that
//!   one group commit covers a batch), through the server's `Arc<dyn RunQueue>` (the engine
//!   the server runs, behind `dyn Store`, and the shared long-poll). Everything runs on a 2-worker tokio runtime.
//! - `HTTP`: the same flow through the server (`POST /v1/tasks/bench/runs`,
//!   `POST /v1/workers/lease` with `max` 100 and `wait_ms` 50, `POST /v1/runs/{id}/complete`
//!   spread over 8 connections per worker), the server on a 2-worker runtime and the load
//!   generator on a thread of its own (raw HTTP/1.1 keep-alive connections).
//!
//! Producers pause while more than 20,000 runs are enqueued and not yet completed, so the
//! backlog stays bounded. runs/s counts completions over the measured window (after 0.5 s of
//! warm-up); scenarios are interleaved over `TOLLGATE_BENCH_ROUNDS` (default 2) rounds of
//! `TOLLGATE_BENCH_SECS` (default 3) seconds, and the HTTP ÷ in-process ratio is taken within
//! each round (median reported).
//!
//! With Redis (a `redis-server` of the bench's own on a free port, or `REDIS_URL`), the same
//! two phases run on a Redis-backed node (`tollgate serve --redis`), each on a fresh key
//! prefix: what one node pushes through a shared queue. Without Redis those rows are skipped,
//! and the bench says so.
//!
//! `cargo bench -p tollgate-server --bench queue` (a scenario-name filter may follow `--`).

mod common;
#[path = "../../redis/tests/common/mod.rs"]
mod redis_common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::future::join_all;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tollgate::queue::run_queue::lease_until;
use tollgate::{
    Db, DynStore, Engine, LimitSpec, Limiter, MemoryStore, RunQueue, SystemClock, TaskSpec,
};
use tollgate_redis::{RedisEngine, RedisStore};
use tollgate_server::{AppState, Settings};

use common::{Conn, cpu_ticks, post_req, put_req, table, thousands, ticks_to_secs};

const WARMUP: Duration = Duration::from_millis(500);
/// Producers pause while this many runs are enqueued and not completed.
const BACKLOG: u64 = 20_000;
/// Runs leased per call.
const LEASE_MAX: usize = 100;
/// How long an empty lease call waits.
const LEASE_WAIT_MS: u64 = 50;
/// Connections each HTTP worker completes its runs over.
const COMPLETE_CONNS: usize = 8;

const LIMIT: &str =
    r#"{"algorithm": "gcra", "limit": 100000000, "period": "1s", "burst": 1000000}"#;
const TASK: &str = r#"{"rate_limits": [{"static_key": "q", "units": 1}]}"#;

#[derive(Clone, Copy)]
struct Shape {
    producers: usize,
    in_flight: usize,
    workers: usize,
}

#[derive(Default)]
struct Counters {
    enqueued: AtomicU64,
    completed: AtomicU64,
    stop: AtomicBool,
}

impl Counters {
    fn backlog(&self) -> u64 {
        self.enqueued
            .load(Ordering::Relaxed)
            .saturating_sub(self.completed.load(Ordering::Relaxed))
    }
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// What one phase measured.
#[derive(Clone, Copy, Default)]
struct Phase {
    completed: u64,
    enqueued: u64,
    secs: f64,
    /// CPU seconds of the engine/server side (every thread but the load generator's).
    server_cpu: f64,
    /// CPU seconds of the HTTP load generator.
    client_cpu: f64,
    /// CPU seconds of the SQLite writer thread (`tollgate-db`), which every commit goes through.
    writer_cpu: f64,
}

impl Phase {
    fn runs_per_sec(&self) -> f64 {
        self.completed as f64 / self.secs
    }
    fn add(&mut self, o: Phase) {
        self.completed += o.completed;
        self.enqueued += o.enqueued;
        self.secs += o.secs;
        self.server_cpu += o.server_cpu;
        self.client_cpu += o.client_cpu;
        self.writer_cpu += o.writer_cpu;
    }
}

/// Waits out the warm-up, then measures `counters` and CPU over `measure`, then stops.
async fn measure_window(counters: &Counters, measure: Duration) -> Phase {
    tokio::time::sleep(WARMUP).await;
    let cpu = || {
        let all = cpu_ticks("").unwrap_or(0);
        let client = cpu_ticks("loadgen").unwrap_or(0);
        let writer = cpu_ticks("tollgate-db").unwrap_or(0);
        (all.saturating_sub(client), client, writer)
    };
    let (s0, c0, w0) = cpu();
    let (e0, d0) = (
        counters.enqueued.load(Ordering::Relaxed),
        counters.completed.load(Ordering::Relaxed),
    );
    let t0 = Instant::now();
    tokio::time::sleep(measure).await;
    let (e1, d1) = (
        counters.enqueued.load(Ordering::Relaxed),
        counters.completed.load(Ordering::Relaxed),
    );
    let secs = t0.elapsed().as_secs_f64();
    let (s1, c1, w1) = cpu();
    counters.stop.store(true, Ordering::Relaxed);
    Phase {
        completed: d1 - d0,
        enqueued: e1 - e0,
        secs,
        server_cpu: ticks_to_secs(s1.saturating_sub(s0)),
        client_cpu: ticks_to_secs(c1.saturating_sub(c0)),
        writer_cpu: ticks_to_secs(w1.saturating_sub(w0)),
    }
}

/// Where a scenario keeps its runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Memory,
    Sqlite,
    Redis,
}

/// What a scenario needs to build its engine: a fresh data directory (SQLite) and the
/// bench's Redis.
struct Env<'a> {
    dir: &'a Path,
    redis: Option<&'a str>,
}

impl Env<'_> {
    fn redis_store(&self) -> anyhow::Result<RedisStore> {
        let url = self.redis.context("no Redis")?;
        Ok(RedisStore::builder(url)
            .prefix(redis_common::fresh_prefix())
            .build()?)
    }
}

fn limiter() -> Limiter<DynStore> {
    Limiter::with_store(Arc::new(MemoryStore::new()), SystemClock::new())
}

/// A fresh engine of `kind`, with the bench's limit and task declared.
async fn backend(kind: Kind, env: &Env<'_>) -> anyhow::Result<Arc<dyn RunQueue>> {
    let backend: Arc<dyn RunQueue> = match kind {
        Kind::Memory => Arc::new(Engine::in_memory(limiter())),
        Kind::Sqlite => {
            let (db, loaded) = Db::open(env.dir)?;
            Arc::new(Engine::with_db(limiter(), db, loaded)?)
        }
        Kind::Redis => Arc::new(RedisEngine::new(env.redis_store()?, SystemClock::new())),
    };
    backend
        .put_limit("q", serde_json::from_str::<LimitSpec>(LIMIT)?)
        .await?;
    backend
        .put_task("bench", serde_json::from_str::<TaskSpec>(TASK)?)
        .await?;
    Ok(backend)
}

/// enqueue → lease → complete through the engine API, on the current (multi-thread) runtime.
async fn in_process(
    engine: Arc<dyn RunQueue>,
    shape: Shape,
    measure: Duration,
) -> anyhow::Result<Phase> {
    let counters = Arc::new(Counters::default());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..shape.producers * shape.in_flight {
        let (engine, counters) = (engine.clone(), Arc::clone(&counters));
        tasks.spawn(async move {
            let mut n = 0_u64;
            while !counters.stopped() {
                if counters.backlog() > BACKLOG {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                engine.enqueue("bench", json!({"n": n}), json!({})).await?;
                counters.enqueued.fetch_add(1, Ordering::Relaxed);
                n += 1;
                // The memory engine answers without ever suspending: let the others run.
                if n.is_multiple_of(16) {
                    tokio::task::yield_now().await;
                }
            }
            anyhow::Ok(())
        });
    }
    let names = vec!["bench".to_owned()];
    for w in 0..shape.workers {
        let (engine, counters, names) = (engine.clone(), Arc::clone(&counters), names.clone());
        tasks.spawn(async move {
            let worker = format!("w{w}");
            while !counters.stopped() {
                let runs = lease_until(
                    &*engine,
                    &worker,
                    &names,
                    LEASE_MAX,
                    Duration::from_millis(LEASE_WAIT_MS),
                    std::future::pending(),
                )
                .await?;
                let done = join_all(
                    runs.iter()
                        .map(|r| engine.complete(&r.id, Some(r.attempt), None)),
                )
                .await;
                for d in done {
                    d?;
                }
                counters
                    .completed
                    .fetch_add(runs.len() as u64, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
            anyhow::Ok(())
        });
    }
    let phase = measure_window(&counters, measure).await;
    while let Some(t) = tasks.join_next().await {
        t.context("a bench task panicked")??;
    }
    engine.close().await;
    Ok(phase)
}

#[derive(Deserialize)]
struct Leased {
    runs: Vec<LeasedRun>,
}

#[derive(Deserialize)]
struct LeasedRun {
    id: String,
    attempt: u32,
}

/// The same flow over HTTP; runs on the load generator's runtime.
async fn over_http(addr: SocketAddr, shape: Shape, measure: Duration) -> anyhow::Result<Phase> {
    let mut setup = Conn::connect(addr).await?;
    setup.expect(&put_req("/v1/limits/q", LIMIT), 200).await?;
    setup.expect(&put_req("/v1/tasks/bench", TASK), 200).await?;
    let counters = Arc::new(Counters::default());
    let mut tasks = tokio::task::JoinSet::new();
    let enqueue: Arc<[u8]> = post_req("/v1/tasks/bench/runs", r#"{"input": {"n": 1}}"#).into();
    for _ in 0..shape.producers * shape.in_flight {
        let (counters, enqueue) = (Arc::clone(&counters), Arc::clone(&enqueue));
        tasks.spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            while !counters.stopped() {
                if counters.backlog() > BACKLOG {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                conn.expect(&enqueue, 201).await?;
                counters.enqueued.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    for w in 0..shape.workers {
        let counters = Arc::clone(&counters);
        tasks.spawn(async move {
            let lease = post_req(
                "/v1/workers/lease",
                &format!(
                    r#"{{"worker_id": "w{w}", "tasks": ["bench"], "max": {LEASE_MAX}, "wait_ms": {LEASE_WAIT_MS}}}"#
                ),
            );
            let mut lease_conn = Conn::connect(addr).await?;
            let mut conns = Vec::with_capacity(COMPLETE_CONNS);
            for _ in 0..COMPLETE_CONNS {
                conns.push(Conn::connect(addr).await?);
            }
            while !counters.stopped() {
                let body = lease_conn.expect(&lease, 200).await?;
                let leased: Leased = serde_json::from_slice(body)?;
                let n = leased.runs.len();
                let done = join_all(conns.iter_mut().enumerate().map(|(c, conn)| {
                    let mine: Vec<Vec<u8>> = leased
                        .runs
                        .iter()
                        .skip(c)
                        .step_by(COMPLETE_CONNS)
                        .map(|r| {
                            post_req(
                                &format!("/v1/runs/{}/complete", r.id),
                                &format!(r#"{{"attempt": {}}}"#, r.attempt),
                            )
                        })
                        .collect();
                    async move {
                        for req in mine {
                            conn.expect(&req, 200).await?;
                        }
                        anyhow::Ok(())
                    }
                }))
                .await;
                for d in done {
                    d?;
                }
                counters.completed.fetch_add(n as u64, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    let phase = measure_window(&counters, measure).await;
    while let Some(t) = tasks.join_next().await {
        t.context("a load generator task panicked")??;
    }
    Ok(phase)
}

/// Serves `state` on the server runtime, drives it from a `loadgen` thread, then stops it.
fn http_phase(
    server_rt: &tokio::runtime::Runtime,
    kind: Kind,
    env: &Env<'_>,
    shape: Shape,
    measure: Duration,
) -> anyhow::Result<Phase> {
    let (addr, stop, done) = server_rt.block_on(async {
        let state = match kind {
            Kind::Memory => AppState::new(SystemClock::new(), Settings::default()),
            Kind::Sqlite => AppState::open(env.dir, Settings::default())?,
            Kind::Redis => AppState::redis(env.redis_store()?, Settings::default()),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(tollgate_server::run(listener, state, async {
            let _ = stopped.await;
        }));
        anyhow::Ok((addr, stop, done))
    })?;
    let loadgen = std::thread::Builder::new().name("loadgen".into()).spawn(
        move || -> anyhow::Result<Phase> {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(over_http(addr, shape, measure))
        },
    )?;
    let phase = match loadgen.join() {
        Ok(p) => p?,
        Err(_) => bail!("the load generator panicked"),
    };
    server_rt.block_on(async {
        let _ = stop.send(());
        done.await??;
        anyhow::Ok(())
    })?;
    Ok(phase)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if !n.is_multiple_of(2) => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

fn main() -> anyhow::Result<()> {
    let shape = Shape {
        producers: common::env_usize("TOLLGATE_BENCH_PRODUCERS", 4),
        in_flight: common::env_usize("TOLLGATE_BENCH_IN_FLIGHT", 16),
        workers: common::env_usize("TOLLGATE_BENCH_WORKERS", 4),
    };
    let rounds = common::env_usize("TOLLGATE_BENCH_ROUNDS", 2);
    let measure = common::phase_secs(3.0);
    println!("machine: {}", common::machine());
    println!(
        "{} producers x {} in flight, {} workers leasing up to {LEASE_MAX}; {rounds} rounds of {:.1} s per scenario (+{:.1} s warm-up)",
        shape.producers,
        shape.in_flight,
        shape.workers,
        measure.as_secs_f64(),
        WARMUP.as_secs_f64()
    );
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("server")
        .enable_all()
        .build()?;
    // `cargo bench` passes `--bench`; anything else is a filter on scenario names.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let redis = redis_common::redis("queue bench");
    // (name, over HTTP, where runs live)
    let scenarios: Vec<(&str, bool, Kind)> = [
        ("in-process, memory", false, Kind::Memory),
        ("in-process, SQLite", false, Kind::Sqlite),
        ("in-process, Redis", false, Kind::Redis),
        ("HTTP, memory", true, Kind::Memory),
        ("HTTP, SQLite", true, Kind::Sqlite),
        ("HTTP, Redis", true, Kind::Redis),
    ]
    .into_iter()
    .filter(|(name, ..)| filter.as_deref().is_none_or(|f| name.contains(f)))
    .filter(|&(name, _, kind)| {
        let skip = kind == Kind::Redis && redis.is_none();
        if skip {
            println!("{name}: skipped, no Redis (see above)");
        }
        !skip
    })
    .collect();
    let mut results: Vec<Vec<Phase>> = vec![Vec::new(); scenarios.len()];
    for round in 0..rounds {
        for (i, &(name, http, kind)) in scenarios.iter().enumerate() {
            let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
            let env = Env {
                dir: dir.path(),
                redis: redis.as_ref().map(|r| r.url.as_str()),
            };
            let phase = if http {
                http_phase(&server_rt, kind, &env, shape, measure)
            } else {
                server_rt.block_on(async {
                    let engine = backend(kind, &env).await?;
                    in_process(engine, shape, measure).await
                })
            }
            .with_context(|| format!("round {round}, {name}"))?;
            results[i].push(phase);
        }
    }
    let mut rows = Vec::new();
    for (i, &(name, http, kind)) in scenarios.iter().enumerate() {
        let mut m = Phase::default();
        for p in &results[i] {
            m.add(*p);
        }
        // HTTP against the in-process figure of the same engine, within each round.
        let floor = scenarios
            .iter()
            .position(|&(_, h, k)| !h && k == kind)
            .map_or("-".to_owned(), |f| {
                format!(
                    "{:.2}",
                    median(
                        (0..rounds)
                            .map(|r| {
                                results[i][r].runs_per_sec() / results[f][r].runs_per_sec()
                            })
                            .collect()
                    )
                )
            });
        let per_round: Vec<String> = results[i]
            .iter()
            .map(|p| thousands(p.runs_per_sec()))
            .collect();
        rows.push(vec![
            name.to_owned(),
            thousands(m.runs_per_sec()),
            floor,
            thousands(m.enqueued as f64 / m.secs),
            format!("{:.1}", m.server_cpu * 1e6 / m.completed.max(1) as f64),
            if kind == Kind::Sqlite {
                format!("{:.1}", m.writer_cpu * 1e6 / m.completed.max(1) as f64)
            } else {
                "-".to_owned()
            },
            if http {
                format!("{:.1}", m.client_cpu * 1e6 / m.completed.max(1) as f64)
            } else {
                "-".to_owned()
            },
            per_round.join(" / "),
        ]);
    }
    println!();
    table(
        &[
            "scenario",
            "runs/s (completed)",
            "÷ in-process, same engine",
            "enqueued/s",
            "engine/server CPU µs/run",
            "of which SQLite writer",
            "loadgen CPU µs/run",
            "per round",
        ],
        &rows,
    );
    println!();
    println!("load average after: {}", common::load_average());
    Ok(())
}
