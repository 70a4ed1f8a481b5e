//! Inngest's `rateLimit` with a key: a task triggered by the `intercom/company.updated` event
//! runs at most once per company per period; the other events' runs are **skipped** (never
//! queued), not delayed. Limits are taken when the event arrives (`on_limit: skip`).
//!
//! ```text
//! tollgate serve --memory &
//! cargo run -p tollgate-client --example inngest_skip_by_company
//! ```
//! The server URL comes from `TOLLGATE_SERVER` (default `http://127.0.0.1:7070`).

#[path = "support/mod.rs"]
mod support;

use std::process::ExitCode;

use serde_json::json;
use tollgate_client::{OnLimit, RunState, Task, TaskBuilder, Worker};

use support::{check, connect, unique};

const EVENT: &str = "intercom/company.updated";

fn main() -> ExitCode {
    support::main(demo)
}

fn definition(task: &str) -> TaskBuilder {
    // The task's name in the key keeps this execution's budget apart from earlier ones.
    Task::builder(task)
        .trigger(EVENT)
        .dynamic_limit(format!("'{task}/' + event.data.company_id"), 1, 1, "1m")
        .on_limit(OnLimit::Skip)
}

/// Five events (acme three times, globex twice): one run per company, the rest skipped.
pub async fn demo(server: String) -> support::Result {
    let client = connect(&server).await?;
    let task = unique("sync-company");
    definition(&task).put(&client).await?;
    println!("task {task}: on {EVENT}, at most 1 run per company per minute, else skip");

    let mut queued = Vec::new();
    let mut skipped = 0;
    for company in ["acme", "acme", "globex", "acme", "globex"] {
        let runs = client
            .send_event(EVENT, &json!({"company_id": company}), None)
            .await?;
        // Earlier executions' tasks listen to the same event: look at this one's run only.
        let Some(run) = runs.into_iter().find(|r| r.task == task) else {
            return Err(format!("the event started no run of {task}").into());
        };
        let view = client.get_run(&run.id).await?;
        println!(
            "  event for {company:<6} → run {} {:?}{}",
            run.id,
            view.state,
            view.skip_reason
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
        match view.state {
            RunState::Skipped => skipped += 1,
            _ => queued.push(run.id),
        }
    }
    check(
        queued.len() == 2 && skipped == 3,
        format!(
            "expected 2 runs and 3 skipped, got {} and {skipped}",
            queued.len()
        ),
    )?;

    let worker = Worker::builder(client.clone())
        .register(definition(&task), |run| async move {
            println!("  syncing company {}", run.input["company_id"]);
            Ok(None)
        })
        .build();
    let summary = support::run_until_done(worker, &client, &queued).await?;
    check(
        summary.succeeded == 2,
        format!("expected 2 runs to succeed: {summary:?}"),
    )?;
    println!("ok: one sync per company ran; the 3 extra events were skipped, never queued");
    Ok(())
}
