//! Celery's `rate_limit='4/s'` on a task, changed while workers run (Celery's
//! `app.control.rate_limit('send_email', '10/s')`): here one `PUT /v1/limits/{key}` changes
//! it for every worker at once. `gcra` with `burst` 1 spaces runs evenly, as Celery does.
//!
//! ```text
//! tollgate serve --memory &
//! cargo run -p tollgate-client --example celery_rate_changed_at_runtime
//! ```
//! The server URL comes from `TOLLGATE_SERVER` (default `http://127.0.0.1:7070`).

#[path = "support/mod.rs"]
mod support;

use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;
use tokio::sync::oneshot;
use tollgate_client::{Client, LimitSpec, RunState, Task};

use support::{Starts, check, connect, unique};

fn main() -> ExitCode {
    support::main(demo)
}

fn gcra(rate: &str) -> LimitSpec {
    LimitSpec::rate(rate).with(|p| p.algorithm = Some("gcra".into()))
}

/// Enqueues `n` runs, waits until they succeed, and answers the gaps between their starts.
async fn batch(
    client: &Client,
    task: &str,
    starts: &Starts,
    n: usize,
) -> support::Result<Vec<u64>> {
    let before = starts.sorted().len();
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            client
                .enqueue(task, &json!({"to": format!("user{i}@example.com")}), None)
                .await?
                .id,
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for id in &ids {
        while client.get_run(id).await?.state != RunState::Succeeded {
            check(
                tokio::time::Instant::now() < deadline,
                format!("run {id} did not succeed in time"),
            )?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let times: Vec<u64> = starts.sorted()[before..].iter().map(|s| s.0).collect();
    Ok(times.windows(2).map(|w| w[1] - w[0]).collect())
}

/// Four emails at 4/s, then the rate raised to 10/s at runtime, four more.
pub async fn demo(server: String) -> support::Result {
    let client = connect(&server).await?;
    let limit = unique("send-email");
    let task = unique("send_email");
    client.put_limit(&limit, &gcra("4/s")).await?;
    println!("limit {limit}: 4/s, spaced evenly (gcra, burst 1)");

    let starts = Starts::default();
    let recorded = starts.clone();
    let worker = tollgate_client::Worker::builder(client.clone())
        .slots(4)
        .poll_wait(Duration::from_secs(1))
        .register(Task::builder(&task).static_limit(&limit, 1), move |run| {
            let recorded = recorded.clone();
            async move {
                recorded.push(run.leased_at_ms, run.input["to"].to_string());
                Ok(None)
            }
        })
        .build();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let outcome = async {
        // The worker defines the task as it starts.
        while client.get_task(&task).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let slow = batch(&client, &task, &starts, 4).await?;
        println!("  at 4/s, gaps between starts: {slow:?} ms");
        client.put_limit(&limit, &gcra("10/s")).await?;
        println!("PUT {limit} rate 10/s (workers keep running)");
        let fast = batch(&client, &task, &starts, 4).await?;
        println!("  at 10/s, gaps between starts: {fast:?} ms");
        check(
            slow.iter().all(|g| *g >= 250),
            "runs closer than 250 ms at 4/s",
        )?;
        check(
            fast.iter().all(|g| *g >= 100),
            "runs closer than 100 ms at 10/s",
        )?;
        let mean = fast.iter().sum::<u64>() / fast.len().max(1) as u64;
        check(
            mean < 200,
            format!("the new rate did not apply: mean gap {mean} ms"),
        )?;
        support::Result::Ok(())
    }
    .await;
    let _ = stop.send(());
    running.await??;
    outcome?;
    println!("ok: the new rate applied at once to the running worker, without a restart");
    Ok(())
}
