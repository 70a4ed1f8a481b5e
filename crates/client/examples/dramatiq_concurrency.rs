//! Dramatiq's `ConcurrentRateLimiter(backend, "crawl", limit=2)`: at most two runs of a key at
//! once, across every worker, whatever their slots. Here the limit is part of the task
//! (`concurrency`), held from lease until the run ends, and freed per run (a dead worker frees
//! only its own slot, when its lease lapses).
//!
//! ```text
//! tollgate serve --memory &
//! cargo run -p tollgate-client --example dramatiq_concurrency
//! ```
//! The server URL comes from `TOLLGATE_SERVER` (default `http://127.0.0.1:7070`).

#[path = "support/mod.rs"]
mod support;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use tollgate_client::{Task, Worker};

use support::{Starts, check, connect, print_timeline, unique};

fn main() -> ExitCode {
    support::main(demo)
}

/// Six 300 ms runs on a worker with 6 slots, under a concurrency limit of 2.
pub async fn demo(server: String) -> support::Result {
    let client = connect(&server).await?;
    let task = unique("crawl");
    let definition = Task::builder(&task).concurrency(format!("'{task}'"), 2);
    definition.put(&client).await?;
    println!("task {task}: at most 2 runs at once (the worker has 6 slots)");

    let now = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let starts = Starts::default();
    let (n, m, recorded) = (Arc::clone(&now), Arc::clone(&most), starts.clone());
    let worker = Worker::builder(client.clone())
        .slots(6)
        .poll_wait(Duration::from_secs(1))
        .register(definition, move |run| {
            let (now, most, recorded) = (Arc::clone(&n), Arc::clone(&m), recorded.clone());
            async move {
                let at_once = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(at_once, Ordering::SeqCst);
                recorded.push(
                    run.leased_at_ms,
                    format!("page {} ({at_once} running)", run.input["page"]),
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                Ok(None)
            }
        })
        .build();
    let mut ids = Vec::new();
    for page in 0..6 {
        ids.push(
            client
                .enqueue(&task, &json!({"page": page}), None)
                .await?
                .id,
        );
    }
    let summary = support::run_until_done(worker, &client, &ids).await?;
    println!("runs started:");
    print_timeline(&starts.sorted());
    let most = most.load(Ordering::SeqCst);
    println!("most runs at once: {most}");
    check(
        summary.succeeded == 6,
        format!("expected 6 runs to succeed: {summary:?}"),
    )?;
    check(most <= 2, format!("{most} runs at once over a limit of 2"))?;
    println!("ok: never more than 2 at once, though the worker had 6 free slots");
    Ok(())
}
