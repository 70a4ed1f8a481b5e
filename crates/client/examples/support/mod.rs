//! What every example shares: the server URL, a clear message when it is not reachable, unique
//! names (so an example can run again against the same server), and a worker run until the
//! example's runs have ended.
#![allow(dead_code)] // each example uses a different part

use std::future::Future;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tollgate_client::{Client, RunState, RunView, Worker, WorkerSummary};

/// An example's error: printed on one line by [`main`].
pub type Error = Box<dyn std::error::Error + Send + Sync>;
/// An example's result.
pub type Result<T = ()> = std::result::Result<T, Error>;

/// The default server URL, where `tollgate serve` listens.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

/// Runs `demo` with the server URL from `TOLLGATE_SERVER` (default [`DEFAULT_SERVER`]);
/// exits non-zero with one line on failure.
pub fn main<F, Fut>(demo: F) -> ExitCode
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result>,
{
    let server = std::env::var("TOLLGATE_SERVER").unwrap_or_else(|_| DEFAULT_SERVER.to_owned());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(demo(server)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A client for `server`, once it answers `/healthz`.
pub async fn connect(server: &str) -> Result<Client> {
    let client = Client::builder()
        .base_url(server)
        .connect_timeout(Duration::from_secs(2))
        .build()?;
    client.health().await.map_err(|e| {
        format!(
            "the Tollgate server at {server} is not reachable ({e}); start one with \
             `tollgate serve --memory` or set TOLLGATE_SERVER"
        )
    })?;
    Ok(client)
}

/// `name` with a suffix unique to this execution, so that an example run twice against one
/// server does not share limits, tasks or keys with its previous run.
pub fn unique(name: &str) -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    format!("{name}-{}", ms % 100_000_000)
}

/// What handlers record: `(leased_at_ms, label)` per run started.
#[derive(Clone, Default)]
pub struct Starts(Arc<Mutex<Vec<(u64, String)>>>);

impl Starts {
    pub fn push(&self, leased_at_ms: u64, label: impl Into<String>) {
        if let Ok(mut starts) = self.0.lock() {
            starts.push((leased_at_ms, label.into()));
        }
    }

    /// Every start, in order of the server's lease time.
    pub fn sorted(&self) -> Vec<(u64, String)> {
        let mut starts = self.0.lock().map(|s| s.clone()).unwrap_or_default();
        starts.sort();
        starts
    }
}

/// Prints `starts` as a timeline from the first one.
pub fn print_timeline(starts: &[(u64, String)]) {
    let first = starts.first().map_or(0, |s| s.0);
    for (at, label) in starts {
        println!("  +{:>5} ms  {label}", at - first);
    }
}

/// The most of `times_ms` (sorted) that fall within any `window_ms`-long interval.
pub fn most_in_window(times_ms: &[u64], window_ms: u64) -> usize {
    let mut most = 0;
    for (i, start) in times_ms.iter().enumerate() {
        let n = times_ms[i..]
            .iter()
            .take_while(|t| **t < start + window_ms)
            .count();
        most = most.max(n);
    }
    most
}

/// Runs `worker` until every run of `ids` has ended (at most 20 s), then shuts it down.
pub async fn run_until_done(
    worker: Worker,
    client: &Client,
    ids: &[String],
) -> Result<WorkerSummary> {
    let watcher = client.clone();
    let ids = ids.to_vec();
    let summary = worker
        .run(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while tokio::time::Instant::now() < deadline {
                if all_ended(&watcher, &ids).await {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await?;
    Ok(summary)
}

async fn all_ended(client: &Client, ids: &[String]) -> bool {
    for id in ids {
        match client.get_run(id).await {
            Ok(run) if ended(&run) => {}
            _ => return false,
        }
    }
    true
}

fn ended(run: &RunView) -> bool {
    matches!(
        run.state,
        RunState::Succeeded | RunState::Failed | RunState::Skipped | RunState::Cancelled
    )
}

/// Fails with `message` unless `ok`.
pub fn check(ok: bool, message: impl Into<String>) -> Result {
    if ok {
        Ok(())
    } else {
        Err(message.into().into())
    }
}
