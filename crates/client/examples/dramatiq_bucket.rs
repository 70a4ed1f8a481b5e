//! Dramatiq's `BucketRateLimiter(backend, "api", limit=3, bucket=1000)`: at most 3 runs per
//! bucket, and buckets are **clock-aligned** (every whole second), as Sidekiq's bucket limiter
//! too. Here: `fixed_window` with `align: clock`.
//!
//! ```text
//! tollgate serve --memory &
//! cargo run -p tollgate-client --example dramatiq_bucket
//! ```
//! The server URL comes from `TOLLGATE_SERVER` (default `http://127.0.0.1:7070`).

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;
use tollgate_client::{Task, Worker};

use support::{Starts, check, connect, unique};

fn main() -> ExitCode {
    support::main(demo)
}

/// Seven runs under 3 per clock second: grouped by the second they started in.
pub async fn demo(server: String) -> support::Result {
    let client = connect(&server).await?;
    let task = unique("call-api");
    let definition = Task::builder(&task)
        .dynamic_limit(format!("'{task}'"), 1, 3, "1s")
        .algorithm("fixed_window")
        .align("clock");
    definition.put(&client).await?;
    println!("task {task}: 3 runs per clock second (fixed_window, align clock)");

    let starts = Starts::default();
    let recorded = starts.clone();
    let worker = Worker::builder(client.clone())
        .slots(8)
        .poll_wait(Duration::from_secs(1))
        .register(definition, move |run| {
            let recorded = recorded.clone();
            async move {
                recorded.push(run.leased_at_ms, run.input["n"].to_string());
                Ok(None)
            }
        })
        .build();
    let mut ids = Vec::new();
    for n in 0..7 {
        ids.push(client.enqueue(&task, &json!({"n": n}), None).await?.id);
    }
    let summary = support::run_until_done(worker, &client, &ids).await?;
    let mut buckets: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (at, label) in starts.sorted() {
        buckets
            .entry(at / 1000)
            .or_default()
            .push(format!("{label}@{}ms", at % 1000));
    }
    for (second, runs) in &buckets {
        println!(
            "  clock second …{:03}: {} runs {runs:?}",
            second % 1000,
            runs.len()
        );
    }
    check(
        summary.succeeded == 7,
        format!("expected 7 runs to succeed: {summary:?}"),
    )?;
    check(
        buckets.values().all(|r| r.len() <= 3),
        "a clock second held more than 3 runs",
    )?;
    check(buckets.len() >= 3, "7 runs at 3 per second need 3 buckets")?;
    println!("ok: never more than 3 runs in one clock-aligned second");
    Ok(())
}
