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
//! Producers pause while more than 20,000 runs (1,000 on Redis, where a run costs far more:
//! either is a fraction of a second of work) are enqueued and not yet completed, so the
//! backlog stays bounded and producers soon wait on the workers. runs/s counts completions
//! over the measured window (after 0.5 s of warm-up); scenarios are interleaved over
//! `TOLLGATE_BENCH_ROUNDS` (default 2) rounds of `TOLLGATE_BENCH_SECS` (default 3) seconds, and
//! the HTTP ÷ in-process ratio is taken within each round (median reported).
//!
//! With Redis (a `redis-server` of the bench's own on a free port, or `REDIS_URL`), the same
//! two phases run on a Redis-backed node (`tollgate serve --redis`), each on a fresh key
//! prefix: what one node pushes through a shared queue. Without Redis those rows are skipped,
//! and the bench says so. Redis's own CPU (`INFO cpu`) and commands (`INFO commandstats`) are
//! read at both ends of every measured window on Redis, and reported per completed run (the
//! `TOLLGATE_BENCH_REDIS_TOP` commands, default 6, that took the most time).
//!
//! BullMQ 5, the queue users would otherwise pick, runs on the same redis-server in the same
//! rounds (a queue of its own per phase, under the `tgbench-bull` prefix), in the shape of the
//! HTTP phase: `Queue.add` with producers × in-flight (64) adds in flight, as many `Worker`s
//! as Tollgate has workers (4), each with `concurrency` equal to the lease size (100), so that
//! both sides hold up to 400 runs at once; a rate limiter no job reaches, a processor that does
//! nothing, and completed jobs kept (BullMQ's default), then a second row with every job added
//! with `removeOnComplete: true`. The driver is `bullmq_peer.mjs` (beside this file): the
//! bench installs `bullmq@5` with npm into `target/bench-bullmq/` once, copies the driver
//! there, and runs one Node process per phase (BullMQ and its load generator on Node's one
//! thread), which reports jobs completed over the same warm-up and window. Tollgate's
//! `HTTP, Redis` runs/s ÷ BullMQ's jobs/s is taken within each round (median reported).
//! Without `node` and `npm` on PATH, or without the install, the BullMQ rows are skipped, and
//! the bench says why.
//!
//! `HTTP, Redis, 3 nodes` is the `HTTP, Redis` phase spread over three nodes on one Redis and
//! one prefix (three `AppState`s, each with its own engine, connection, sweeper and subscriber,
//! each on a listener of its own, all on the server runtime): producers and workers are dealt
//! round-robin over the nodes, a worker's lease and completes going to the same node. Its
//! runs/s ÷ the one node's, within each round, is what nodes cost each other.
//!
//! `in-process, …, parked` and `…, fair + priorities` are what priorities and fairness cost
//! (docs/design.md §3.15), A/B in the same rounds: the task also holds a concurrency key of
//! 200 slots, fewer than the 400 runs the workers lease at once, so half the runs park and are
//! handed a slot as others complete (every run goes through a wait queue); the B row's task adds
//! `"fairness_key": "input.tenant"` and `"priority": "input.p"`, its runs spread over 64
//! tenants and the four priorities. B ÷ A is taken within each round (median reported).
//!
//! `cargo bench -p tollgate-server --bench queue` (a scenario-name filter may follow `--`,
//! case-insensitive: `-- bullmq` runs the BullMQ rows and the `HTTP, Redis` row they are
//! compared with, `-- redis` every Redis row).

#[path = "common/bullmq.rs"]
mod bullmq;
mod common;
#[path = "../../redis/tests/common/mod.rs"]
mod redis_common;
#[path = "common/redis_stats.rs"]
mod redis_stats;

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
use redis_stats::{Probe, RedisUse};

const WARMUP: Duration = Duration::from_millis(500);
/// Producers pause while this many runs are enqueued and not completed: a fraction of a
/// second of work for the embedded engines ...
const BACKLOG: u64 = 20_000;
/// ... and on Redis (Tollgate's and BullMQ's phases alike), where a run costs 10–50 × more,
/// so that producers soon wait on the workers and the window measures what the queue sustains,
/// not a flood of enqueues that starves the workers (or a backlog that the workers drain).
const REDIS_BACKLOG: u64 = 1_000;
/// Runs leased per call.
const LEASE_MAX: usize = 100;
/// How long an empty lease call waits.
const LEASE_WAIT_MS: u64 = 50;
/// Connections each HTTP worker completes its runs over.
const COMPLETE_CONNS: usize = 8;

const LIMIT: &str =
    r#"{"algorithm": "gcra", "limit": 100000000, "period": "1s", "burst": 1000000}"#;
const TASK: &str = r#"{"rate_limits": [{"static_key": "q", "units": 1}]}"#;
/// The A/B pair: half the runs in flight park on the concurrency key.
const TASK_PARKED: &str = r#"{"rate_limits": [{"static_key": "q", "units": 1}],
    "concurrency": [{"key": "'pool'", "limit": 200}]}"#;
const TASK_FAIR: &str = r#"{"rate_limits": [{"static_key": "q", "units": 1}],
    "concurrency": [{"key": "'pool'", "limit": 200}],
    "fairness_key": "input.tenant", "priority": "input.p"}"#;

/// What the bench's task holds and its runs bring.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// One rate limit no run reaches.
    Plain,
    /// And a concurrency key that parks half the runs in flight (A).
    Parked,
    /// And fairness keys and priorities (B).
    Fair,
}

impl Workload {
    fn task(self) -> &'static str {
        match self {
            Workload::Plain => TASK,
            Workload::Parked => TASK_PARKED,
            Workload::Fair => TASK_FAIR,
        }
    }

    /// Run `n`'s input.
    fn input(self, n: u64) -> serde_json::Value {
        match self {
            Workload::Fair => json!({"n": n, "tenant": format!("t{}", n % 64), "p": 1 + n % 4}),
            _ => json!({"n": n}),
        }
    }
}

/// The backlog bound for phases on `kind`.
fn backlog_bound(kind: Kind) -> u64 {
    if kind == Kind::Redis {
        REDIS_BACKLOG
    } else {
        BACKLOG
    }
}

#[derive(Clone, Copy)]
struct Shape {
    producers: usize,
    in_flight: usize,
    workers: usize,
}

struct Counters {
    enqueued: AtomicU64,
    completed: AtomicU64,
    stop: AtomicBool,
    /// Producers pause while more runs than this are enqueued and not completed.
    bound: u64,
}

impl Counters {
    fn new(bound: u64) -> Counters {
        Counters {
            enqueued: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            bound,
        }
    }
    fn full(&self) -> bool {
        self.enqueued
            .load(Ordering::Relaxed)
            .saturating_sub(self.completed.load(Ordering::Relaxed))
            > self.bound
    }
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// What one phase measured.
#[derive(Clone, Default)]
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
    /// What Redis did over the window (phases on Redis).
    redis: RedisUse,
}

impl Phase {
    fn runs_per_sec(&self) -> f64 {
        self.completed as f64 / self.secs
    }
    fn add(&mut self, o: &Phase) {
        self.completed += o.completed;
        self.enqueued += o.enqueued;
        self.secs += o.secs;
        self.server_cpu += o.server_cpu;
        self.client_cpu += o.client_cpu;
        self.writer_cpu += o.writer_cpu;
        self.redis.add(&o.redis);
    }
    /// Per completed run.
    fn per_run(&self, x: f64) -> f64 {
        x / self.completed.max(1) as f64
    }
}

/// Waits out the warm-up, then measures `counters` and CPU (and Redis, given its URL) over
/// `measure`, then stops, whether or not measuring succeeded.
async fn measure_window(
    counters: &Counters,
    measure: Duration,
    redis: Option<&str>,
) -> anyhow::Result<Phase> {
    let phase = window(counters, measure, redis).await;
    counters.stop.store(true, Ordering::Relaxed);
    phase
}

async fn window(
    counters: &Counters,
    measure: Duration,
    redis: Option<&str>,
) -> anyhow::Result<Phase> {
    let mut probe = redis.map(Probe::connect).transpose()?;
    tokio::time::sleep(WARMUP).await;
    let cpu = || {
        let all = cpu_ticks("").unwrap_or(0);
        let client = cpu_ticks("loadgen").unwrap_or(0);
        let writer = cpu_ticks("tollgate-db").unwrap_or(0);
        (all.saturating_sub(client), client, writer)
    };
    let r0 = probe.as_mut().map(Probe::snapshot).transpose()?;
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
    let r1 = probe.as_mut().map(Probe::snapshot).transpose()?;
    Ok(Phase {
        completed: d1 - d0,
        enqueued: e1 - e0,
        secs,
        server_cpu: ticks_to_secs(s1.saturating_sub(s0)),
        client_cpu: ticks_to_secs(c1.saturating_sub(c0)),
        writer_cpu: ticks_to_secs(w1.saturating_sub(w0)),
        redis: match (r0, r1) {
            (Some(r0), Some(r1)) => r0.until(&r1),
            _ => RedisUse::default(),
        },
    })
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
    /// The URL whose counters a phase of `kind` reads.
    fn probe(&self, kind: Kind) -> Option<String> {
        self.redis
            .filter(|_| kind == Kind::Redis)
            .map(str::to_owned)
    }

    fn redis_store(&self) -> anyhow::Result<RedisStore> {
        self.redis_store_at(&redis_common::fresh_prefix())
    }

    /// A store of its own (its own connection: a node of its own) under `prefix`.
    fn redis_store_at(&self, prefix: &str) -> anyhow::Result<RedisStore> {
        let url = self.redis.context("no Redis")?;
        Ok(RedisStore::builder(url).prefix(prefix).build()?)
    }
}

fn limiter() -> Limiter<DynStore> {
    Limiter::with_store(Arc::new(MemoryStore::new()), SystemClock::new())
}

/// A fresh engine of `kind`, with the bench's limit and task declared.
async fn backend(
    kind: Kind,
    env: &Env<'_>,
    workload: Workload,
) -> anyhow::Result<Arc<dyn RunQueue>> {
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
        .put_task("bench", serde_json::from_str::<TaskSpec>(workload.task())?)
        .await?;
    Ok(backend)
}

/// enqueue → lease → complete through the engine API, on the current (multi-thread) runtime.
async fn in_process(
    engine: Arc<dyn RunQueue>,
    kind: Kind,
    workload: Workload,
    shape: Shape,
    measure: Duration,
    redis: Option<String>,
) -> anyhow::Result<Phase> {
    let counters = Arc::new(Counters::new(backlog_bound(kind)));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..shape.producers * shape.in_flight {
        let (engine, counters) = (engine.clone(), Arc::clone(&counters));
        tasks.spawn(async move {
            let mut n = 0_u64;
            while !counters.stopped() {
                if counters.full() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                engine
                    .enqueue("bench", workload.input(n), json!({}))
                    .await?;
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
    let phase = measure_window(&counters, measure, redis.as_deref()).await;
    while let Some(t) = tasks.join_next().await {
        t.context("a bench task panicked")??;
    }
    engine.close().await;
    phase
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

/// The same flow over HTTP, producer `i` and worker `w` on node `i` and `w` modulo the nodes;
/// runs on the load generator's runtime.
async fn over_http(
    nodes: Vec<SocketAddr>,
    kind: Kind,
    shape: Shape,
    measure: Duration,
    redis: Option<String>,
) -> anyhow::Result<Phase> {
    let mut setup = Conn::connect(nodes[0]).await?;
    setup.expect(&put_req("/v1/limits/q", LIMIT), 200).await?;
    setup.expect(&put_req("/v1/tasks/bench", TASK), 200).await?;
    let counters = Arc::new(Counters::new(backlog_bound(kind)));
    let mut tasks = tokio::task::JoinSet::new();
    let enqueue: Arc<[u8]> = post_req("/v1/tasks/bench/runs", r#"{"input": {"n": 1}}"#).into();
    for p in 0..shape.producers * shape.in_flight {
        let (counters, enqueue) = (Arc::clone(&counters), Arc::clone(&enqueue));
        let addr = nodes[p % nodes.len()];
        tasks.spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            while !counters.stopped() {
                if counters.full() {
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
        let addr = nodes[w % nodes.len()];
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
    let phase = measure_window(&counters, measure, redis.as_deref()).await;
    while let Some(t) = tasks.join_next().await {
        t.context("a load generator task panicked")??;
    }
    phase
}

/// Serves `nodes` nodes (more than one: Redis only, sharing one prefix) on the server runtime,
/// drives them from a `loadgen` thread, then stops them.
fn http_phase(
    server_rt: &tokio::runtime::Runtime,
    kind: Kind,
    nodes: usize,
    env: &Env<'_>,
    shape: Shape,
    measure: Duration,
) -> anyhow::Result<Phase> {
    let prefix = redis_common::fresh_prefix();
    let mut addrs = Vec::with_capacity(nodes);
    let mut servers = Vec::with_capacity(nodes);
    for _ in 0..nodes {
        let (addr, stop, done) = server_rt.block_on(async {
            let state = match kind {
                Kind::Memory => AppState::new(SystemClock::new(), Settings::default()),
                Kind::Sqlite => AppState::open(env.dir, Settings::default())?,
                Kind::Redis => AppState::redis(env.redis_store_at(&prefix)?, Settings::default()),
            };
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let (stop, stopped) = oneshot::channel::<()>();
            let done = tokio::spawn(tollgate_server::run(listener, state, async {
                let _ = stopped.await;
            }));
            anyhow::Ok((addr, stop, done))
        })?;
        addrs.push(addr);
        servers.push((stop, done));
    }
    let probe = env.probe(kind);
    let loadgen = std::thread::Builder::new().name("loadgen".into()).spawn(
        move || -> anyhow::Result<Phase> {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(over_http(addrs, kind, shape, measure, probe))
        },
    )?;
    let phase = match loadgen.join() {
        Ok(p) => p?,
        Err(_) => bail!("the load generator panicked"),
    };
    server_rt.block_on(async {
        for (stop, done) in servers {
            let _ = stop.send(());
            done.await??;
        }
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

/// One BullMQ phase on the bench's Redis, in `shape`.
fn bullmq_phase(
    peer: &bullmq::Peer,
    redis_url: &str,
    remove_on_complete: bool,
    shape: Shape,
    measure: Duration,
) -> anyhow::Result<Phase> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let out = peer.run(&bullmq::Run {
        redis_url,
        queue: format!(
            "q-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ),
        warmup: WARMUP,
        measure,
        in_flight: shape.producers * shape.in_flight,
        workers: shape.workers,
        concurrency: LEASE_MAX,
        backlog: REDIS_BACKLOG,
        remove_on_complete,
    })?;
    Ok(Phase {
        completed: out.completed,
        enqueued: out.added,
        secs: out.secs,
        server_cpu: out.node_cpu,
        client_cpu: 0.0,
        writer_cpu: 0.0,
        redis: out.redis,
    })
}

/// What a scenario runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scenario {
    InProcess(Kind),
    /// In-process, with a workload other than the plain one (the A/B of §3.15).
    Workload(Kind, Workload),
    Http(Kind),
    /// Over HTTP, spread over this many nodes on one Redis prefix.
    RedisNodes(usize),
    /// BullMQ 5 on the bench's Redis.
    Bullmq {
        remove_on_complete: bool,
    },
}

impl Scenario {
    fn on_redis(self) -> bool {
        matches!(
            self,
            Scenario::InProcess(Kind::Redis)
                | Scenario::Workload(Kind::Redis, _)
                | Scenario::Http(Kind::Redis)
                | Scenario::RedisNodes(_)
                | Scenario::Bullmq { .. }
        )
    }
}

/// Tollgate's row that BullMQ's are compared with.
const TOLLGATE_REDIS: Scenario = Scenario::Http(Kind::Redis);

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
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .map(|f| f.to_lowercase());
    let redis = redis_common::redis("queue bench");
    let all: Vec<(&str, Scenario)> = vec![
        ("in-process, memory", Scenario::InProcess(Kind::Memory)),
        ("in-process, SQLite", Scenario::InProcess(Kind::Sqlite)),
        ("in-process, Redis", Scenario::InProcess(Kind::Redis)),
        (
            "in-process, memory, parked",
            Scenario::Workload(Kind::Memory, Workload::Parked),
        ),
        (
            "in-process, memory, parked, fair + priorities",
            Scenario::Workload(Kind::Memory, Workload::Fair),
        ),
        (
            "in-process, Redis, parked",
            Scenario::Workload(Kind::Redis, Workload::Parked),
        ),
        (
            "in-process, Redis, parked, fair + priorities",
            Scenario::Workload(Kind::Redis, Workload::Fair),
        ),
        ("HTTP, memory", Scenario::Http(Kind::Memory)),
        ("HTTP, SQLite", Scenario::Http(Kind::Sqlite)),
        ("HTTP, Redis", TOLLGATE_REDIS),
        ("HTTP, Redis, 3 nodes", Scenario::RedisNodes(3)),
        (
            "BullMQ 5 on Redis, completed kept",
            Scenario::Bullmq {
                remove_on_complete: false,
            },
        ),
        (
            "BullMQ 5 on Redis, removeOnComplete",
            Scenario::Bullmq {
                remove_on_complete: true,
            },
        ),
    ];
    let matches = |name: &str| {
        filter
            .as_deref()
            .is_none_or(|f| name.to_lowercase().contains(f))
    };
    // A BullMQ or a many-node row brings the Tollgate row it is compared with.
    let wants_one_node = all.iter().any(|&(name, s)| {
        matches!(s, Scenario::Bullmq { .. } | Scenario::RedisNodes(_)) && matches(name)
    });
    let mut scenarios: Vec<(&str, Scenario)> = all
        .into_iter()
        .filter(|&(name, s)| matches(name) || (wants_one_node && s == TOLLGATE_REDIS))
        .collect();
    scenarios.retain(|&(name, s)| {
        let skip = s.on_redis() && redis.is_none();
        if skip {
            println!("{name}: skipped, no Redis (see above)");
        }
        !skip
    });
    let peer = if scenarios
        .iter()
        .any(|(_, s)| matches!(s, Scenario::Bullmq { .. }))
    {
        let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .context("the target directory")?;
        match bullmq::setup(target) {
            Ok(peer) => {
                println!(
                    "BullMQ: {}; {} adds in flight, {} Workers x concurrency {LEASE_MAX}, a limiter no job reaches",
                    peer.description,
                    shape.producers * shape.in_flight,
                    shape.workers
                );
                if shape.producers * shape.in_flight != 64 || shape.workers != 4 {
                    println!(
                        "note: not the shape of the BullMQ comparison (64 in flight, 4 workers)"
                    );
                }
                Some(peer)
            }
            Err(why) => {
                println!("BullMQ 5: skipped, {why}");
                scenarios.retain(|(_, s)| !matches!(s, Scenario::Bullmq { .. }));
                None
            }
        }
    } else {
        None
    };
    let mut results: Vec<Vec<Phase>> = vec![Vec::new(); scenarios.len()];
    for round in 0..rounds {
        for (i, &(name, scenario)) in scenarios.iter().enumerate() {
            let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
            let env = Env {
                dir: dir.path(),
                redis: redis.as_ref().map(|r| r.url.as_str()),
            };
            let phase = match scenario {
                Scenario::InProcess(kind) => server_rt.block_on(async {
                    let engine = backend(kind, &env, Workload::Plain).await?;
                    in_process(
                        engine,
                        kind,
                        Workload::Plain,
                        shape,
                        measure,
                        env.probe(kind),
                    )
                    .await
                }),
                Scenario::Workload(kind, workload) => server_rt.block_on(async {
                    let engine = backend(kind, &env, workload).await?;
                    in_process(engine, kind, workload, shape, measure, env.probe(kind)).await
                }),
                Scenario::Http(kind) => http_phase(&server_rt, kind, 1, &env, shape, measure),
                Scenario::RedisNodes(n) => {
                    http_phase(&server_rt, Kind::Redis, n, &env, shape, measure)
                }
                Scenario::Bullmq { remove_on_complete } => bullmq_phase(
                    peer.as_ref().context("no BullMQ")?,
                    env.redis.context("no Redis")?,
                    remove_on_complete,
                    shape,
                    measure,
                ),
            }
            .with_context(|| format!("round {round}, {name}"))?;
            results[i].push(phase);
        }
    }
    // The median over rounds of row `i`'s runs/s ÷ row `j`'s, within each round.
    let ratio = |i: usize, j: usize| {
        median(
            (0..rounds)
                .map(|r| results[i][r].runs_per_sec() / results[j][r].runs_per_sec())
                .collect(),
        )
    };
    let totals: Vec<Phase> = results
        .iter()
        .map(|phases| {
            let mut m = Phase::default();
            for p in phases {
                m.add(p);
            }
            m
        })
        .collect();
    let mut rows = Vec::new();
    for (i, &(name, scenario)) in scenarios.iter().enumerate() {
        let m = &totals[i];
        // HTTP against the in-process figure of the same engine, within each round.
        let floor = match scenario {
            Scenario::InProcess(kind) | Scenario::Http(kind) => scenarios
                .iter()
                .position(|&(_, s)| s == Scenario::InProcess(kind))
                .map_or("-".to_owned(), |f| format!("{:.2}", ratio(i, f))),
            Scenario::RedisNodes(_) => scenarios
                .iter()
                .position(|&(_, s)| s == Scenario::InProcess(Kind::Redis))
                .map_or("-".to_owned(), |f| format!("{:.2}", ratio(i, f))),
            Scenario::Workload(..) => "-".to_owned(),
            Scenario::Bullmq { .. } => "-".to_owned(),
        };
        let per_round: Vec<String> = results[i]
            .iter()
            .map(|p| thousands(p.runs_per_sec()))
            .collect();
        rows.push(vec![
            name.to_owned(),
            thousands(m.runs_per_sec()),
            floor,
            thousands(m.enqueued as f64 / m.secs),
            format!("{:.1}", m.per_run(m.server_cpu * 1e6)),
            if scenario == Scenario::InProcess(Kind::Sqlite)
                || scenario == Scenario::Http(Kind::Sqlite)
            {
                format!("{:.1}", m.per_run(m.writer_cpu * 1e6))
            } else {
                "-".to_owned()
            },
            if matches!(scenario, Scenario::Http(_) | Scenario::RedisNodes(_)) {
                format!("{:.1}", m.per_run(m.client_cpu * 1e6))
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
            "engine/server CPU µs/run (BullMQ: node)",
            "of which SQLite writer",
            "loadgen CPU µs/run",
            "per round",
        ],
        &rows,
    );

    // Tollgate's Redis queue over HTTP against BullMQ, within each round.
    if let Some(t) = scenarios.iter().position(|&(_, s)| s == TOLLGATE_REDIS) {
        let mut rows = Vec::new();
        for (b, &(name, scenario)) in scenarios.iter().enumerate() {
            if !matches!(scenario, Scenario::Bullmq { .. }) {
                continue;
            }
            let per_round: Vec<String> = (0..rounds)
                .map(|r| {
                    format!(
                        "{:.2}",
                        results[t][r].runs_per_sec() / results[b][r].runs_per_sec()
                    )
                })
                .collect();
            let redis_cpu = |p: &Phase| p.per_run(p.redis.cpu);
            rows.push(vec![
                name.to_owned(),
                thousands(totals[b].runs_per_sec()),
                thousands(totals[t].runs_per_sec()),
                format!("{:.2}", ratio(t, b)),
                per_round.join(" / "),
                format!("{:.2}", redis_cpu(&totals[t]) / redis_cpu(&totals[b])),
            ]);
        }
        if !rows.is_empty() {
            println!();
            println!("Tollgate's Redis queue over HTTP against BullMQ 5 on the same redis-server:");
            println!();
            table(
                &[
                    "peer",
                    "BullMQ jobs/s (completed)",
                    "Tollgate HTTP, Redis runs/s",
                    "Tollgate ÷ BullMQ (median of rounds)",
                    "per round",
                    "Redis CPU per run, Tollgate ÷ BullMQ",
                ],
                &rows,
            );
        }
    }

    // What fairness and priorities cost: B ÷ A within each round.
    for kind in [Kind::Memory, Kind::Redis] {
        let a = scenarios
            .iter()
            .position(|&(_, s)| s == Scenario::Workload(kind, Workload::Parked));
        let b = scenarios
            .iter()
            .position(|&(_, s)| s == Scenario::Workload(kind, Workload::Fair));
        if let (Some(a), Some(b)) = (a, b) {
            let per_round: Vec<String> = (0..rounds)
                .map(|r| {
                    format!(
                        "{:.2}",
                        results[b][r].runs_per_sec() / results[a][r].runs_per_sec()
                    )
                })
                .collect();
            println!();
            println!(
                "{} ÷ {}: {:.2} (median of rounds; per round {})",
                scenarios[b].0,
                scenarios[a].0,
                ratio(b, a),
                per_round.join(" / ")
            );
        }
    }

    // Many nodes against one, within each round.
    if let Some(t) = scenarios.iter().position(|&(_, s)| s == TOLLGATE_REDIS) {
        for (n, &(name, scenario)) in scenarios.iter().enumerate() {
            if !matches!(scenario, Scenario::RedisNodes(_)) {
                continue;
            }
            let per_round: Vec<String> = (0..rounds)
                .map(|r| {
                    format!(
                        "{:.2}",
                        results[n][r].runs_per_sec() / results[t][r].runs_per_sec()
                    )
                })
                .collect();
            println!();
            println!(
                "{name} ÷ one node: {:.2} (median of rounds; per round {})",
                ratio(n, t),
                per_round.join(" / ")
            );
        }
    }

    // Where Redis's time goes, per completed run.
    let top_n = common::env_usize("TOLLGATE_BENCH_REDIS_TOP", 6);
    let mut rows = Vec::new();
    for (i, &(name, _)) in scenarios.iter().enumerate() {
        let m = &totals[i];
        if !m.redis.measured {
            continue;
        }
        let scripts = m.redis.scripts();
        let top: Vec<String> = m
            .redis
            .top(top_n)
            .iter()
            .map(|(cmd, c)| {
                format!(
                    "{cmd} {:.2} × {:.1}",
                    m.per_run(c.calls as f64),
                    c.usec as f64 / c.calls.max(1) as f64
                )
            })
            .collect();
        rows.push(vec![
            name.to_owned(),
            format!("{:.1}", m.per_run(m.redis.cpu * 1e6)),
            format!("{:.2}", m.per_run(scripts.calls as f64)),
            format!("{:.1}", m.per_run(m.redis.calls() as f64)),
            format!("{:.1}", m.per_run(scripts.usec as f64)),
            top.join(", "),
        ]);
    }
    if !rows.is_empty() {
        println!();
        println!(
            "Redis per completed run: CPU from INFO cpu (user + sys); calls and µs from INFO commandstats, where a script's time includes the commands it runs, \
             which are also counted on their own, and µs are wall-clock (a Redis waiting for a CPU looks slower there):"
        );
        println!();
        table(
            &[
                "scenario",
                "Redis CPU µs/run",
                "script calls/run",
                "commands/run (scripts' included)",
                "in scripts µs/run (wall)",
                "most time: command calls/run × µs/call (wall)",
            ],
            &rows,
        );
    }
    println!();
    println!("load average after: {}", common::load_average());
    Ok(())
}
