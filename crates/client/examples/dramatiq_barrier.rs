//! Dramatiq's `Barrier(backend, "batch", ttl=…)`: `create(parties=3)`, then each of three
//! runs waits on it, and all go on together once the last one arrives. A missing barrier is an
//! error, never a silent pass.
//!
//! ```text
//! tollgate serve --memory &
//! cargo run -p tollgate-client --example dramatiq_barrier
//! ```
//! The server URL comes from `TOLLGATE_SERVER` (default `http://127.0.0.1:7070`).

#[path = "support/mod.rs"]
mod support;

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;
use tollgate_client::{ErrorCode, HandlerError, Task, Worker};

use support::{check, connect, unique};

fn main() -> ExitCode {
    support::main(demo)
}

/// Three runs that work 100, 300 and 600 ms, then wait on a 3-party barrier.
pub async fn demo(server: String) -> support::Result {
    let client = connect(&server).await?;
    let task = unique("load-part");
    let barrier = unique("batch");
    client
        .barrier_create(&barrier, 3, Duration::from_secs(30))
        .await?;
    println!("barrier {barrier}: 3 parties");

    let definition = Task::builder(&task);
    definition.put(&client).await?;

    let t0 = Instant::now();
    // (part, arrived, released) in ms since t0.
    let log = Arc::new(Mutex::new(Vec::<(u64, u128, u128)>::new()));
    let recorded = Arc::clone(&log);
    let worker = Worker::builder(client.clone())
        .slots(3)
        .poll_wait(Duration::from_secs(1))
        .register(definition, move |run| {
            let recorded = Arc::clone(&recorded);
            async move {
                let part = run.input["part"].as_u64().unwrap_or(0);
                let key = run.input["barrier"].as_str().unwrap_or_default().to_owned();
                tokio::time::sleep(Duration::from_millis(
                    run.input["work_ms"].as_u64().unwrap_or(0),
                ))
                .await;
                let arrived = t0.elapsed().as_millis();
                let released = run
                    .client
                    .barrier_wait(&key, Duration::from_secs(5))
                    .await?;
                if !released {
                    return Err(HandlerError::retry("the barrier timed out"));
                }
                let at = t0.elapsed().as_millis();
                println!("  part {part}: arrived at {arrived:>4} ms, went on at {at:>4} ms");
                if let Ok(mut log) = recorded.lock() {
                    log.push((part, arrived, at));
                }
                Ok(None)
            }
        })
        .build();
    let mut ids = Vec::new();
    for (part, work_ms) in [(1, 100), (2, 300), (3, 600)] {
        let input = json!({"part": part, "work_ms": work_ms, "barrier": barrier});
        ids.push(client.enqueue(&task, &input, None).await?.id);
    }
    let summary = support::run_until_done(worker, &client, &ids).await?;
    check(
        summary.succeeded == 3,
        format!("expected 3 runs to succeed: {summary:?}"),
    )?;
    let log = log.lock().map(|l| l.clone()).unwrap_or_default();
    let last_arrival = log.iter().map(|l| l.1).max().unwrap_or(0);
    check(
        log.len() == 3 && log.iter().all(|l| l.2 >= last_arrival),
        "a part went on before every part had arrived",
    )?;

    match client
        .barrier_wait(&unique("no-such-barrier"), Duration::from_millis(100))
        .await
    {
        Err(e) if e.code() == Some(&ErrorCode::UnknownBarrier) => {
            println!("waiting on a barrier nobody created: {e}");
        }
        other => return Err(format!("a missing barrier should be an error, got {other:?}").into()),
    }
    println!("ok: no part went on before the last one arrived");
    Ok(())
}
