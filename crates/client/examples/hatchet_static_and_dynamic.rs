//! Hatchet's rate limits: a **static** limit every run shares (declared once, like Hatchet's
//! `admin.put_rate_limit("llm-api", 4, SECOND)`), and a **dynamic** limit per user, rendered
//! from the run's input with CEL, whose limit is itself CEL (pro users get more).
//!
//! ```text
//! tollgate serve --memory &
//! cargo run -p tollgate-client --example hatchet_static_and_dynamic
//! ```
//! The server URL comes from `TOLLGATE_SERVER` (default `http://127.0.0.1:7070`).

#[path = "support/mod.rs"]
mod support;

use std::process::ExitCode;

use serde_json::json;
use tollgate_client::{LimitSpec, Task, TaskBuilder, Worker};

use support::{Starts, check, connect, most_in_window, print_timeline, unique};

fn main() -> ExitCode {
    support::main(demo)
}

/// The task: one unit of the static limit, and one of the user's own key, whose limit depends
/// on the run's tier.
fn definition(task: &str, llm: &str) -> TaskBuilder {
    Task::builder(task)
        .static_limit(llm, 1)
        .dynamic_limit(format!("'{task}/' + input.user_id"), 1, 1, "1s")
        .limit_expr("additional_metadata.tier == 'pro' ? 2 : 1")
}

/// Nine runs (alice and carol on the pro tier: 4 and 2, bob on the free tier: 3) under a
/// static 4/s limit and a per-user limit of 2/s for pro and 1/s for free; shows when each
/// started.
pub async fn demo(server: String) -> support::Result {
    let client = connect(&server).await?;
    let llm = unique("llm-api");
    let task = unique("summarize");
    client
        .put_limit(&llm, &LimitSpec::limit_per(4, "1s"))
        .await?;
    println!("static limit {llm}: 4 per second, shared by every run");
    println!("dynamic limit per user: 2 per second on the pro tier, 1 on free");

    let starts = Starts::default();
    let recorded = starts.clone();
    let worker = Worker::builder(client.clone())
        .slots(8)
        .register(definition(&task, &llm), move |run| {
            let recorded = recorded.clone();
            async move {
                let user = run.input["user_id"].as_str().unwrap_or("?").to_owned();
                recorded.push(run.leased_at_ms, user);
                Ok(None)
            }
        })
        .build();

    // The worker defines the task when it starts; define it now, to enqueue before it runs.
    definition(&task, &llm).put(&client).await?;
    let mut ids = Vec::new();
    for (user, tier, n) in [("alice", "pro", 4), ("bob", "free", 3), ("carol", "pro", 2)] {
        for _ in 0..n {
            let run = client
                .enqueue(
                    &task,
                    &json!({"user_id": user}),
                    Some(&json!({"tier": tier})),
                )
                .await?;
            ids.push(run.id);
        }
    }
    let summary = support::run_until_done(worker, &client, &ids).await?;

    let starts = starts.sorted();
    println!("runs started (server lease time):");
    print_timeline(&starts);
    let times = |who: Option<&str>| -> Vec<u64> {
        starts
            .iter()
            .filter(|(_, u)| who.is_none_or(|w| u == w))
            .map(|(t, _)| *t)
            .collect()
    };
    check(
        summary.succeeded == 9,
        format!("expected 9 runs to succeed: {summary:?}"),
    )?;
    let most = |who| most_in_window(&times(who), 1000);
    let (all, alice, bob, carol) = (
        most(None),
        most(Some("alice")),
        most(Some("bob")),
        most(Some("carol")),
    );
    println!(
        "most starts in any second: all {all} (static limit 4), alice {alice} and carol {carol} \
         (pro: 2), bob {bob} (free: 1)"
    );
    check(
        all <= 4 && alice <= 2 && carol <= 2 && bob <= 1,
        "a limit was exceeded",
    )?;
    println!("ok: every run ran, and no second saw more than the static or per-user limits allow");
    Ok(())
}
