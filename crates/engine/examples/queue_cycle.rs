//! A deterministic run-queue workload for counting instructions, not seconds: `N` runs of one
//! task on a declared gcra limit no run reaches, each enqueued, leased and completed in turn
//! on a current-thread runtime (one call in flight, so every SQLite commit holds one change
//! and nothing depends on timing). Under `valgrind --tool=callgrind` the count is the same
//! from run to run whatever else the machine does, so two builds compare exactly: the
//! instructions per run are `(I(N) − I(0)) / N`, startup cancelled out (BENCHMARKS.md says how).
//!
//! `cargo run --release -p tollgate --example queue_cycle -- N [memory|sqlite DIR]`

use std::time::Duration;

use serde_json::json;
use tollgate::{Db, Engine, LimitSpec, Limiter, MemoryStore, SystemClock, TaskSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().as_deref().unwrap_or("1000").parse()?;
    let mode = args.next().unwrap_or_else(|| "memory".into());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let limiter = Limiter::with_store(MemoryStore::new(), SystemClock::new());
        let engine = match mode.as_str() {
            "sqlite" => {
                let dir = args.next().ok_or("sqlite needs a directory")?;
                let _ = std::fs::remove_dir_all(&dir);
                let (db, loaded) = Db::open(std::path::Path::new(&dir))?;
                Engine::with_db(limiter, db, loaded)?
            }
            _ => Engine::in_memory(limiter),
        };
        let limit: LimitSpec = serde_json::from_value(
            json!({"algorithm": "gcra", "limit": 1_000_000_000u64, "period": "1s", "burst": 1_000_000_000u64}),
        )?;
        engine.put_limit("bench", limit).await?;
        let task: TaskSpec =
            serde_json::from_value(json!({"rate_limits": [{"static_key": "bench"}]}))?;
        engine.put_task("bench", task).await?;
        let tasks = ["bench".to_owned()];
        for i in 0..n {
            engine
                .enqueue("bench", json!({"i": i}), json!({}))
                .await?;
            let leased = engine.lease("w", &tasks, 1, Duration::ZERO).await?;
            for run in leased {
                engine.complete(&run.id, Some(run.attempt), None).await?;
            }
        }
        engine.close().await;
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
