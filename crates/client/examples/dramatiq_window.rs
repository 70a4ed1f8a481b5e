//! Dramatiq's `WindowRateLimiter(backend, "api", limit=3, window=1)`: at most 3 runs in **any**
//! 1-second interval, not per clock second (a fixed window can admit up to twice its limit
//! across a boundary; a sliding one cannot). Here: `sliding_window`, the default algorithm.
//!
//! ```text
//! tollgate serve --memory &
//! cargo run -p tollgate-client --example dramatiq_window
//! ```
//! The server URL comes from `TOLLGATE_SERVER` (default `http://127.0.0.1:7070`).

#[path = "support/mod.rs"]
mod support;

use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;
use tollgate_client::{Task, Worker};

use support::{Starts, check, connect, most_in_window, print_timeline, unique};

fn main() -> ExitCode {
    support::main(demo)
}

/// Eight runs under 3 per sliding second.
pub async fn demo(server: String) -> support::Result {
    let client = connect(&server).await?;
    let task = unique("call-api");
    let definition = Task::builder(&task)
        .dynamic_limit(format!("'{task}'"), 1, 3, "1s")
        .algorithm("sliding_window");
    definition.put(&client).await?;
    println!("task {task}: at most 3 runs in any 1 s interval (sliding_window)");

    let starts = Starts::default();
    let recorded = starts.clone();
    let worker = Worker::builder(client.clone())
        .slots(8)
        .poll_wait(Duration::from_secs(1))
        .register(definition, move |run| {
            let recorded = recorded.clone();
            async move {
                recorded.push(run.leased_at_ms, format!("run {}", run.input["n"]));
                Ok(None)
            }
        })
        .build();
    let mut ids = Vec::new();
    for n in 0..8 {
        ids.push(client.enqueue(&task, &json!({"n": n}), None).await?.id);
    }
    let summary = support::run_until_done(worker, &client, &ids).await?;
    let starts = starts.sorted();
    println!("runs started:");
    print_timeline(&starts);
    let times: Vec<u64> = starts.iter().map(|s| s.0).collect();
    let most = most_in_window(&times, 1000);
    println!("most runs in any 1 s interval: {most}");
    check(
        summary.succeeded == 8,
        format!("expected 8 runs to succeed: {summary:?}"),
    )?;
    check(
        most <= 3,
        format!("{most} runs within 1 s over a limit of 3"),
    )?;
    println!("ok: no 1 s interval, wherever it starts, saw more than 3 runs");
    Ok(())
}
