//! Dispatch lag of parked runs (docs/design.md §6: a parked run is leased ≤ 5 ms after its
//! `eligible_at`), on the real clock (`SystemClock`).
//!
//! `TOLLGATE_BENCH_RUNS` (default 2,000) runs of a task limited by a declared gcra key of
//! 200/s with a burst of 1 are enqueued at once while 4 workers long-poll for them (`wait`
//! 1 s, up to 10 runs a call). The first run starts at once; every other one is parked on the
//! key, each becoming eligible 5 ms after the previous one was admitted. For each parked run:
//! - `eligible_at`: when the limit admits it — what the engine computed when it parked it as
//!   the key's head (`now + retry_after` of the denial before its admission);
//! - `admitted`: when the engine reserved its units (the key's timer fired);
//! - `received`: when the worker holding the lease call had it back, on the same clock.
//!
//! lag = received − eligible_at; timer lag = admitted − eligible_at.
//!
//! In-process (memory and SQLite engines) the times come from a store wrapper that records
//! every decision on the key. Over HTTP (SQLite data directory, workers calling
//! `POST /v1/workers/lease` with `wait_ms`) they come from the journal: each run's
//! `consumed_at`, with `eligible_at` = the previous run's `consumed_at` + 5 ms (gcra with a
//! burst of 1; the in-process SQLite phase checks this against the recorded decisions).
//!
//! `cargo bench -p tollgate-server --bench dispatch`

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tollgate::core::{
    Barrier, BarrierStatus, Concurrency, LeaseDecision, Limit, LimitState, Nanos,
};
use tollgate::{
    AcquireEntry, Acquired, Db, Engine, ExportedState, LimitInfo, LimitSpec, Limiter, MemoryStore,
    Namespace, Store, SystemClock, Target, TaskSpec,
};
use tollgate_server::{AppState, Settings};

use common::{Conn, Percentiles, ms, post_req, put_req, table};

const KEY: &str = "lag";
const LIMIT: &str = r#"{"algorithm": "gcra", "limit": 200, "period": "1s", "burst": 1}"#;
/// One unit every 5 ms.
const INTERVAL: Nanos = Nanos::from_millis(5);
const TASK: &str = r#"{"rate_limits": [{"static_key": "lag", "units": 1}]}"#;
const WORKERS: usize = 4;
const LEASE_MAX: usize = 10;
const WAIT: Duration = Duration::from_secs(1);

/// One decision on [`KEY`]: when, and for a denial, when the engine was told to try again.
#[derive(Clone, Copy, Debug)]
enum Event {
    Allowed(Nanos),
    Denied { eta: Nanos },
}

/// A [`MemoryStore`] that records every decision on [`KEY`].
#[derive(Default)]
struct Recording {
    inner: MemoryStore,
    events: Mutex<Vec<Event>>,
}

impl Store for Recording {
    fn put_limit(&self, key: &str, limit: Limit, now: Nanos) -> Result<(), tollgate::Error> {
        self.inner.put_limit(key, limit, now)
    }
    fn remove_limit(&self, key: &str) -> Result<bool, tollgate::Error> {
        self.inner.remove_limit(key)
    }
    fn get_limit(&self, key: &str, now: Nanos) -> Result<Option<LimitInfo>, tollgate::Error> {
        self.inner.get_limit(key, now)
    }
    fn list_limits(&self, now: Nanos) -> Result<Vec<LimitInfo>, tollgate::Error> {
        self.inner.list_limits(now)
    }
    fn acquire(
        &self,
        entries: &[AcquireEntry<'_>],
        now: Nanos,
    ) -> Result<Acquired, tollgate::Error> {
        let out = self.inner.acquire(entries, now)?;
        if entries.len() == 1 && entries[0].target == Target::Static(KEY) {
            self.events.lock().push(if out.allowed {
                Event::Allowed(now)
            } else {
                Event::Denied {
                    eta: now + out.retry_after(),
                }
            });
        }
        Ok(out)
    }
    fn refund(&self, entries: &[AcquireEntry<'_>], now: Nanos) -> Result<(), tollgate::Error> {
        self.inner.refund(entries, now)
    }
    fn pause(
        &self,
        namespace: tollgate::Namespace,
        key: &str,
        until: Nanos,
        now: Nanos,
    ) -> Result<Nanos, tollgate::Error> {
        self.inner.pause(namespace, key, until, now)
    }
    fn resume(
        &self,
        namespace: tollgate::Namespace,
        key: &str,
        now: Nanos,
    ) -> Result<bool, tollgate::Error> {
        self.inner.resume(namespace, key, now)
    }
    fn pauses(&self, now: Nanos) -> Result<Vec<tollgate::Pause>, tollgate::Error> {
        self.inner.pauses(now)
    }
    fn lease_acquire(
        &self,
        target: Target<'_, Concurrency>,
        lease_id: &str,
        holder: &str,
        ttl: Option<Nanos>,
        now: Nanos,
    ) -> Result<LeaseDecision, tollgate::Error> {
        self.inner.lease_acquire(target, lease_id, holder, ttl, now)
    }
    fn lease_renew(
        &self,
        target: Target<'_, Concurrency>,
        lease_id: &str,
        ttl: Option<Nanos>,
        now: Nanos,
    ) -> Result<Nanos, tollgate::Error> {
        self.inner.lease_renew(target, lease_id, ttl, now)
    }
    fn lease_release(
        &self,
        target: Target<'_, Concurrency>,
        lease_id: &str,
        now: Nanos,
    ) -> Result<bool, tollgate::Error> {
        self.inner.lease_release(target, lease_id, now)
    }
    fn barrier_create(
        &self,
        key: &str,
        barrier: Barrier,
        now: Nanos,
    ) -> Result<BarrierStatus, tollgate::Error> {
        self.inner.barrier_create(key, barrier, now)
    }
    fn barrier_arrive(&self, key: &str, now: Nanos) -> Result<BarrierStatus, tollgate::Error> {
        self.inner.barrier_arrive(key, now)
    }
    fn barrier_status(&self, key: &str, now: Nanos) -> Result<BarrierStatus, tollgate::Error> {
        self.inner.barrier_status(key, now)
    }
    fn sweep(&self, now: Nanos) -> Result<usize, tollgate::Error> {
        self.inner.sweep(now)
    }
    fn export_rate_states(&self, now: Nanos) -> Result<Vec<ExportedState>, tollgate::Error> {
        self.inner.export_rate_states(now)
    }
    fn import_rate_state(
        &self,
        namespace: Namespace,
        key: &str,
        state: LimitState,
        now: Nanos,
    ) -> Result<(), tollgate::Error> {
        self.inner.import_rate_state(namespace, key, state, now)
    }
}

/// Per parked run: (eligible_at, admitted, received), in enqueue order.
type Times = Vec<(Nanos, Nanos, Nanos)>;

/// Pairs each admission with the denial before it (the eligible_at the engine computed), in
/// order; `None` for a run admitted without being parked.
fn admissions(events: &[Event]) -> Vec<(Option<Nanos>, Nanos)> {
    let mut out = Vec::new();
    let mut eta = None;
    for e in events {
        match *e {
            Event::Denied { eta: t } => eta = Some(t),
            Event::Allowed(at) => out.push((eta.take(), at)),
        }
    }
    out
}

/// Joins admissions (FIFO: the k-th admission is the k-th run enqueued) with receipt times.
fn join(
    admitted: &[(Option<Nanos>, Nanos)],
    ids: &[String],
    received: &std::collections::HashMap<String, Nanos>,
) -> anyhow::Result<Times> {
    ensure!(
        admitted.len() == ids.len(),
        "{} admissions for {} runs",
        admitted.len(),
        ids.len()
    );
    let mut out = Vec::new();
    for ((eligible, at), id) in admitted.iter().zip(ids) {
        let got = *received
            .get(id)
            .with_context(|| format!("run {id} was never received"))?;
        ensure!(got >= *at, "run {id} received before it was admitted");
        if let Some(eligible) = eligible {
            ensure!(*at >= *eligible, "run {id} admitted before its eligible_at");
            out.push((*eligible, *at, got));
        }
    }
    Ok(out)
}

/// Leases until every run has been received; records when each one was.
async fn work_in_process<S: Store + 'static>(
    engine: Engine<S>,
    total: usize,
) -> anyhow::Result<std::collections::HashMap<String, Nanos>> {
    let received = Arc::new(Mutex::new(std::collections::HashMap::new()));
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        let (engine, received) = (engine.clone(), Arc::clone(&received));
        workers.spawn(async move {
            let tasks = vec!["parked".to_owned()];
            let worker = format!("w{w}");
            while received.lock().len() < total {
                let runs = engine.lease(&worker, &tasks, LEASE_MAX, WAIT).await?;
                let now = engine.limiter().now();
                {
                    let mut got = received.lock();
                    for r in &runs {
                        got.insert(r.id.clone(), now);
                    }
                }
                for r in &runs {
                    engine.complete(&r.id, Some(r.attempt), None).await?;
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(w) = workers.join_next().await {
        w.context("a worker panicked")??;
    }
    let out = std::mem::take(&mut *received.lock());
    Ok(out)
}

/// Runs the scenario through the engine API; returns the times and, for SQLite, the times the
/// journal gives (to check the HTTP method against).
async fn in_process(dir: Option<&Path>, total: usize) -> anyhow::Result<(Times, Option<Times>)> {
    let store = Arc::new(Recording::default());
    let limiter = Limiter::with_store(Arc::clone(&store), SystemClock::new());
    let engine = match dir {
        None => Engine::in_memory(limiter),
        Some(dir) => {
            let (db, loaded) = Db::open(dir)?;
            Engine::with_db(limiter, db, loaded)?
        }
    };
    engine
        .put_limit(KEY, serde_json::from_str::<LimitSpec>(LIMIT)?)
        .await?;
    engine
        .put_task("parked", serde_json::from_str::<TaskSpec>(TASK)?)
        .await?;
    let workers = tokio::spawn(work_in_process(engine.clone(), total));
    // Let the workers start their long-polls first.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut ids = Vec::with_capacity(total);
    for n in 0..total {
        ids.push(
            engine
                .enqueue("parked", json!({"n": n}), json!({}))
                .await?
                .id,
        );
    }
    let received = workers.await.context("the workers panicked")??;
    engine.close().await;
    let events = store.events.lock().clone();
    let times = join(&admissions(&events), &ids, &received)?;
    let journal = match dir {
        Some(dir) => Some(from_journal(dir, &received)?),
        None => None,
    };
    Ok((times, journal))
}

/// Times from a closed data directory: `consumed_at` per run in enqueue order, eligible_at
/// the previous admission + [`INTERVAL`].
fn from_journal(
    dir: &Path,
    received: &std::collections::HashMap<String, Nanos>,
) -> anyhow::Result<Times> {
    let (db, loaded) = Db::open(dir)?;
    let mut runs: Vec<_> = loaded.runs.iter().filter(|r| r.task == "parked").collect();
    runs.sort_by_key(|r| r.seq);
    let mut admitted = Vec::with_capacity(runs.len());
    let mut previous: Option<Nanos> = None;
    for r in &runs {
        let at = r
            .consumed_at
            .with_context(|| format!("run {} has no consumed_at", r.id))?;
        admitted.push((previous.map(|p| p + INTERVAL), at));
        previous = Some(at);
    }
    let ids: Vec<String> = runs.iter().map(|r| r.id.clone()).collect();
    let times = join(&admitted, &ids, received)?;
    drop(db);
    Ok(times)
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

/// The HTTP scenario's load generator: long-polling workers and one producer.
async fn drive_http(
    addr: SocketAddr,
    clock: AppState,
    total: usize,
) -> anyhow::Result<std::collections::HashMap<String, Nanos>> {
    let mut setup = Conn::connect(addr).await?;
    setup
        .expect(&put_req(&format!("/v1/limits/{KEY}"), LIMIT), 200)
        .await?;
    setup
        .expect(&put_req("/v1/tasks/parked", TASK), 200)
        .await?;
    let received = Arc::new(Mutex::new(std::collections::HashMap::new()));
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        let (received, clock) = (Arc::clone(&received), clock.clone());
        workers.spawn(async move {
            let lease = post_req(
                "/v1/workers/lease",
                &format!(
                    r#"{{"worker_id": "w{w}", "tasks": ["parked"], "max": {LEASE_MAX}, "wait_ms": {}}}"#,
                    WAIT.as_millis()
                ),
            );
            let mut conn = Conn::connect(addr).await?;
            while received.lock().len() < total {
                let body = conn.expect(&lease, 200).await?;
                let now = clock.now();
                let leased: Leased = serde_json::from_slice(body)?;
                {
                    let mut got = received.lock();
                    for r in &leased.runs {
                        got.insert(r.id.clone(), now);
                    }
                }
                for r in &leased.runs {
                    let complete = post_req(
                        &format!("/v1/runs/{}/complete", r.id),
                        &format!(r#"{{"attempt": {}}}"#, r.attempt),
                    );
                    conn.expect(&complete, 200).await?;
                }
            }
            anyhow::Ok(())
        });
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let enqueue = post_req("/v1/tasks/parked/runs", r#"{"input": {}}"#);
    // One connection, one run at a time: the journal's `seq` gives the order.
    for _ in 0..total {
        setup.expect(&enqueue, 201).await?;
    }
    while let Some(w) = workers.join_next().await {
        w.context("a worker panicked")??;
    }
    let out = std::mem::take(&mut *received.lock());
    Ok(out)
}

fn http(server_rt: &tokio::runtime::Runtime, dir: &Path, total: usize) -> anyhow::Result<Times> {
    let (addr, state, stop, done) = server_rt.block_on(async {
        let state = AppState::open(dir, Settings::default())?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(tollgate_server::run(listener, state.clone(), async {
            let _ = stopped.await;
        }));
        anyhow::Ok((addr, state, stop, done))
    })?;
    let clock = state.clone();
    let loadgen = std::thread::Builder::new()
        .name("loadgen".into())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(drive_http(addr, clock, total))
        })?;
    let received = match loadgen.join() {
        Ok(r) => r?,
        Err(_) => bail!("the load generator panicked"),
    };
    server_rt.block_on(async {
        let _ = stop.send(());
        done.await??;
        anyhow::Ok(())
    })?;
    drop(state);
    from_journal(dir, &received)
}

fn summary(name: &str, times: &Times) -> Vec<String> {
    let to_ns = |d: Nanos| d.as_nanos();
    let mut lag: Vec<u64> = times.iter().map(|(e, _, r)| to_ns(*r - *e)).collect();
    let mut timer: Vec<u64> = times.iter().map(|(e, a, _)| to_ns(*a - *e)).collect();
    let within = lag.iter().filter(|l| **l <= 5_000_000).count();
    let lag = Percentiles::of(&mut lag);
    let timer = Percentiles::of(&mut timer);
    vec![
        name.to_owned(),
        times.len().to_string(),
        ms(lag.p50),
        ms(lag.p99),
        ms(lag.max),
        format!("{:.1}", 100.0 * within as f64 / times.len().max(1) as f64),
        ms(timer.p50),
        ms(timer.p99),
        ms(timer.max),
    ]
}

fn main() -> anyhow::Result<()> {
    let total = common::env_usize("TOLLGATE_BENCH_RUNS", 2_000);
    let filter = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let wanted = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    println!("machine: {}", common::machine());
    println!(
        "{total} runs enqueued at once on gcra 200/s burst 1; {WORKERS} workers long-polling (wait {} ms, up to {LEASE_MAX} runs per call)",
        WAIT.as_millis()
    );
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("server")
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    let mut check = None;
    if wanted("in-process, memory") {
        let (times, _) = server_rt.block_on(in_process(None, total))?;
        rows.push(summary("in-process, memory", &times));
    }
    if wanted("in-process, SQLite") {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
        let (times, journal) = server_rt.block_on(in_process(Some(dir.path()), total))?;
        rows.push(summary("in-process, SQLite", &times));
        if let Some(journal) = journal {
            // The journal's eligible_at against the engine's own, run by run.
            let worst = times
                .iter()
                .zip(&journal)
                .map(|(a, b)| a.0.as_nanos().abs_diff(b.0.as_nanos()))
                .max()
                .unwrap_or(0);
            check = Some((times.len() == journal.len(), worst));
        }
    }
    if wanted("HTTP, SQLite") {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
        let times = http(&server_rt, dir.path(), total)?;
        rows.push(summary("HTTP, SQLite", &times));
    }
    println!();
    table(
        &[
            "scenario",
            "parked runs",
            "lag p50 ms",
            "lag p99 ms",
            "lag max ms",
            "≤ 5 ms %",
            "timer p50 ms",
            "timer p99 ms",
            "timer max ms",
        ],
        &rows,
    );
    if let Some((same_count, worst)) = check {
        println!();
        println!(
            "journal method check (in-process SQLite): same runs {same_count}, largest eligible_at difference {worst} ns"
        );
    }
    println!();
    println!("load average after: {}", common::load_average());
    Ok(())
}
