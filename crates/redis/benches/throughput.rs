//! Redis decisions per second and round trips per acquire, against a floor measured in the
//! same run (docs/design.md §6: "throughput ≥ 80 % of a minimal GCRA EVALSHA floor").
//!
//! The floor is the least a Redis-backed GCRA can do: one `EVALSHA` of a ten-line script that
//! reads one key's TAT, decides, and writes it back with `SET … PX`. Tollgate's `RedisStore`
//! does the same job with every guarantee (microsecond state, parameter migration, Redis
//! `TIME`, several keys all or nothing), so the ratio is the price of those.
//!
//! Every scenario runs `TOLLGATE_BENCH_THREADS` concurrent callers (tokio tasks on a 2-thread
//! runtime) sharing one multiplexed connection — the store's own transport, and the floor's
//! too, so the ratio compares scripts, not clients — for the same wall time, in rounds that
//! alternate floor and Tollgate so both see the same machine load.
//! Round trips are counted on the server (`INFO commandstats`: `FCALL`, `FUNCTION`, `EVALSHA`,
//! `EVAL` and `SCRIPT` calls, which only clients send) and divided by the acquires made, and so
//! are the commands the scripts run inside them (`GET`, `SET`, `TIME`, …: a count that does not
//! depend on the machine's load). The clients' own CPU time per acquire is reported beside
//! Redis's: on a small machine they share the cores.
//!
//! `cargo bench -p tollgate-redis --bench throughput` (a `redis-server` of its own on a free
//! port, or `REDIS_URL`). Knobs: `TOLLGATE_BENCH_THREADS` (default 8),
//! `TOLLGATE_BENCH_SECONDS` per round (default 2), `TOLLGATE_BENCH_ROUNDS` (default 3).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tollgate::{AcquireEntry, AsyncStore};
use tollgate_core::{Align, FixedWindow, Gcra, Limit, Nanos, RateLimit, SlidingWindow};
use tollgate_redis::RedisStore;

/// The floor: GCRA on every key given, all or nothing, TAT in µs, in the fewest Redis calls
/// possible.
const FLOOR: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tats = {}
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  if now < tat - interval * (burst - 1) then return {0, i} end
  tats[i] = tat + interval
end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', math.ceil((tats[i] - now) / 1000) + 1000)
end
return {1, 0}
";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the server has counted so far: client round trips (calls of the commands only clients
/// send: FCALL, FUNCTION, EVALSHA, EVAL, SCRIPT), the server's time inside them in µs, and the
/// commands the scripts ran inside them (every other command but INFO, which this asks with).
fn round_trips(url: &str) -> (u64, u64, u64) {
    let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut con)
        .unwrap();
    let field = |l: &str, name: &str| -> Option<u64> {
        let v = l.split(&format!("{name}=")).nth(1)?;
        v.split(',').next()?.parse::<u64>().ok()
    };
    let client = |l: &str| {
        l.starts_with("cmdstat_fcall:")
            || l.starts_with("cmdstat_function")
            || l.starts_with("cmdstat_evalsha:")
            || l.starts_with("cmdstat_eval:")
            || l.starts_with("cmdstat_script")
    };
    info.lines()
        .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:"))
        .fold((0, 0, 0), |(calls, usec, inside), l| {
            let n = field(l, "calls").unwrap_or(0);
            if client(l) {
                (calls + n, usec + field(l, "usec").unwrap_or(0), inside)
            } else {
                (calls, usec, inside + n)
            }
        })
}

/// This process's CPU time so far (user + system, every thread), in µs: what the clients
/// spend per call, beside what Redis spends. Linux only (`/proc/self/stat`, USER_HZ = 100).
fn client_cpu_us() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12th and 13th after ')'.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) * 10_000
}

/// One decision, as a future of its own (so that many run at once on one runtime).
type Op = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Runs `op` in `callers` concurrent loops for `seconds`; decisions per second and how many.
fn run(rt: &tokio::runtime::Runtime, callers: u64, seconds: u64, op: &Op) -> (f64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    rt.block_on(async {
        let mut loops = tokio::task::JoinSet::new();
        for _ in 0..callers {
            let (op, stop, count) = (Arc::clone(op), Arc::clone(&stop), Arc::clone(&count));
            loops.spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    op().await;
                    n += 1;
                }
                count.fetch_add(n, Ordering::Relaxed);
            });
        }
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        while let Some(done) = loops.join_next().await {
            done.unwrap();
        }
    });
    let n = count.load(Ordering::Relaxed);
    (n as f64 / start.elapsed().as_secs_f64(), n)
}

fn main() {
    let Some(redis) = common::redis("throughput bench") else {
        return;
    };
    let url = redis.url.clone();
    let threads = env("TOLLGATE_BENCH_THREADS", 8);
    let seconds = env("TOLLGATE_BENCH_SECONDS", 2);
    let rounds = env("TOLLGATE_BENCH_ROUNDS", 3);
    let prefix = common::fresh_prefix();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = RedisStore::builder(&url)
        .prefix(prefix.clone())
        .build()
        .unwrap();
    // Limits that never deny during the run: every call is an admitted decision that writes.
    let huge = "1000000000/s".parse().unwrap();
    let gcra = Limit::Rate(RateLimit::Gcra(Gcra::new(huge, 1_000_000_000).unwrap()));
    let sliding = Limit::Rate(RateLimit::SlidingWindow(
        SlidingWindow::new(1_000_000_000, "1s".parse().unwrap()).unwrap(),
    ));
    let fixed = Limit::Rate(RateLimit::FixedWindow(
        FixedWindow::new(1_000_000_000, "1s".parse().unwrap(), Align::Clock).unwrap(),
    ));
    let now = Nanos::ZERO; // ignored: the store reads Redis TIME
    let keys: Vec<String> = (0..10).map(|i| format!("bench-{i}")).collect();
    rt.block_on(async {
        for k in &keys {
            store.put_limit(k, gcra, now).await.unwrap();
        }
        store.put_limit("bench-sw", sliding, now).await.unwrap();
        store.put_limit("bench-fw", fixed, now).await.unwrap();
    });
    let floor = redis::Script::new(FLOOR);

    println!(
        "{threads} concurrent callers on one connection, {seconds} s per round, {rounds} rounds; redis {}",
        store.url()
    );
    println!(
        "| scenario | decisions/s (median of rounds) | ratio to the floor of as many keys | round trips per acquire | commands inside per acquire | Redis µs per acquire | client CPU µs per acquire |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    // (name, what it does, index of the floor it is compared with)
    let scenarios: Vec<(&str, Op, usize)> = vec![
        (
            "floor: minimal GCRA EVALSHA, 1 key",
            floor_of(&rt, &url, &floor, &prefix, 1),
            0,
        ),
        ("tollgate gcra, 1 key", acquire(&store, &keys[..1]), 0),
        ("floor, 3 keys", floor_of(&rt, &url, &floor, &prefix, 3), 2),
        ("tollgate gcra, 3 keys", acquire(&store, &keys[..3]), 2),
        (
            "floor, 10 keys",
            floor_of(&rt, &url, &floor, &prefix, 10),
            4,
        ),
        ("tollgate gcra, 10 keys", acquire(&store, &keys[..10]), 4),
        (
            "tollgate sliding_window, 1 key",
            acquire(&store, &["bench-sw".to_owned()]),
            0,
        ),
        (
            "tollgate fixed_window, 1 key",
            acquire(&store, &["bench-fw".to_owned()]),
            0,
        ),
    ];
    type Round = (f64, f64, f64, f64, f64);
    let mut results: Vec<Vec<Round>> = vec![Vec::new(); scenarios.len()];
    for _ in 0..rounds {
        for (i, (_, op, _)) in scenarios.iter().enumerate() {
            let (calls0, usec0, inside0) = round_trips(&url);
            let cpu0 = client_cpu_us();
            let (rate, n) = run(&rt, threads, seconds, op);
            let cpu1 = client_cpu_us();
            let (calls1, usec1, inside1) = round_trips(&url);
            let n = n.max(1) as f64;
            results[i].push((
                rate,
                (calls1 - calls0) as f64 / n,
                (usec1 - usec0) as f64 / n,
                (cpu1 - cpu0) as f64 / n,
                (inside1 - inside0) as f64 / n,
            ));
        }
    }
    let median = |i: usize, f: fn(&Round) -> f64| {
        let mut v: Vec<f64> = results[i].iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (i, (name, _, floor)) in scenarios.iter().enumerate() {
        let rate = median(i, |r| r.0);
        println!(
            "| {name} | {rate:.0} | {:.2} | {:.3} | {:.1} | {:.1} | {:.1} |",
            rate / median(*floor, |r| r.0),
            median(i, |r| r.1),
            median(i, |r| r.4),
            median(i, |r| r.2),
            median(i, |r| r.3),
        );
    }
}

/// An acquire of one unit of each of `keys` on `store`.
fn acquire(store: &RedisStore, keys: &[String]) -> Op {
    let (store, keys) = (store.clone(), Arc::new(keys.to_vec()));
    Arc::new(move || {
        let (store, keys) = (store.clone(), Arc::clone(&keys));
        Box::pin(async move {
            let entries: Vec<AcquireEntry<'_>> =
                keys.iter().map(|k| AcquireEntry::new(k, 1)).collect();
            let a = store.acquire(&entries, Nanos::ZERO).await.unwrap();
            assert!(a.allowed);
        })
    })
}

/// The floor script on `n` keys of its own, on one multiplexed connection of its own.
fn floor_of(
    rt: &tokio::runtime::Runtime,
    url: &str,
    floor: &redis::Script,
    prefix: &str,
    n: usize,
) -> Op {
    let con = rt.block_on(async {
        redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    });
    let floor = floor.clone();
    let keys: Arc<Vec<String>> =
        Arc::new((0..n).map(|i| format!("{prefix}:floor:{n}:{i}")).collect());
    Arc::new(move || {
        let (mut con, floor, keys) = (con.clone(), floor.clone(), Arc::clone(&keys));
        Box::pin(async move {
            let mut inv = floor.prepare_invoke();
            for k in keys.iter() {
                inv.key(k);
            }
            let _: Vec<i64> = inv
                .arg(1)
                .arg(1_000_000_000)
                .invoke_async(&mut con)
                .await
                .unwrap();
        })
    })
}
