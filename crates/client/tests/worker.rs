//! The worker runtime against the real server, started in-process on the system clock (leases
//! lapse in real time here). Waits are short: lease timeouts of 500 ms, polls with deadlines.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::Server;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tollgate::SystemClock;
use tollgate_client::{
    Client, ErrorCode, HandlerError, RunState, RunView, Task, Worker, WorkerError, WorkerSummary,
};

const LEASE: Duration = Duration::from_millis(500);
const DEADLINE: Duration = Duration::from_secs(8);

type Running = (
    oneshot::Sender<()>,
    JoinHandle<Result<WorkerSummary, WorkerError>>,
);

/// Runs `worker` until the sender is used (or dropped).
fn start(worker: Worker) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    (stop, handle)
}

async fn stop((stop, handle): Running) -> WorkerSummary {
    let _ = stop.send(());
    tokio::time::timeout(DEADLINE, handle)
        .await
        .expect("the worker stops")
        .expect("the worker did not panic")
        .expect("the worker ran")
}

/// Polls `check` every 20 ms until it answers `Some`, failing after [`DEADLINE`].
async fn until<T, Fut: Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> Fut,
) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn run_in(c: &Client, id: &str, states: &[RunState]) -> RunView {
    until(&format!("run {id} is in {states:?}"), || async {
        let run = c.get_run(id).await.unwrap();
        states.contains(&run.state).then_some(run)
    })
    .await
}

fn worker(c: &Client, id: &str) -> tollgate_client::WorkerBuilder {
    Worker::builder(c.clone())
        .id(id)
        .poll_wait(Duration::from_millis(250))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_every_run_with_at_most_slots_at_once() {
    let server = Server::start(SystemClock::new()).await;
    let c = &server.client;
    let now = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (n, m) = (Arc::clone(&now), Arc::clone(&most));
    let w = worker(c, "w1")
        .slots(3)
        .register(Task::builder("work"), move |run| {
            let (now, most) = (Arc::clone(&n), Arc::clone(&m));
            async move {
                let at_once = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(at_once, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                Ok(Some(
                    json!({"doubled": run.input["n"].as_u64().unwrap() * 2}),
                ))
            }
        })
        .build();
    let running = start(w);
    // The worker defines the task; enqueue once it exists.
    until("the task is defined", || async {
        c.get_task("work").await.ok()
    })
    .await;
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(c.enqueue("work", &json!({"n": n}), None).await.unwrap().id);
    }
    for (n, id) in ids.iter().enumerate() {
        let run = run_in(c, id, &[RunState::Succeeded]).await;
        assert_eq!(run.output, Some(json!({"doubled": n * 2})));
        assert_eq!(run.attempt, 1);
        assert_eq!(run.worker_id.as_deref(), Some("w1"));
    }
    let summary = stop(running).await;
    assert_eq!((summary.leased, summary.succeeded), (10, 10), "{summary:?}");
    let most = most.load(Ordering::SeqCst);
    assert!(most <= 3, "{most} handlers ran at once with 3 slots");
    assert!(most >= 2, "slots ran in parallel: at most {most} at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_run_leased_past_its_lease_timeout() {
    let server = Server::start(SystemClock::new()).await;
    let c = &server.client;
    let w = worker(c, "w1")
        .register(Task::builder("long").lease_timeout(LEASE), |_| async {
            // Three lease timeouts: without heartbeats the lease would lapse twice over.
            tokio::time::sleep(LEASE * 3).await;
            Ok(None)
        })
        .build();
    let running = start(w);
    until("the task is defined", || async {
        c.get_task("long").await.ok()
    })
    .await;
    let id = c.enqueue("long", &json!({}), None).await.unwrap().id;
    let run = run_in(c, &id, &[RunState::Succeeded, RunState::Failed]).await;
    assert_eq!(run.state, RunState::Succeeded);
    assert_eq!(run.attempt, 1, "the lease never lapsed: {run:?}");
    let summary = stop(running).await;
    assert_eq!((summary.succeeded, summary.lost), (1, 0), "{summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_run_is_finished_by_another_worker() {
    let server = Server::start(SystemClock::new()).await;
    let c = &server.client;
    let task = || Task::builder("job").lease_timeout(LEASE);
    let (_stop_a, a) = start(
        worker(c, "a")
            .register(task(), |_| async {
                std::future::pending::<()>().await;
                Ok(None)
            })
            .build(),
    );
    until("the task is defined", || async {
        c.get_task("job").await.ok()
    })
    .await;
    let id = c.enqueue("job", &json!({}), None).await.unwrap().id;
    let run = run_in(c, &id, &[RunState::Running]).await;
    assert_eq!(run.worker_id.as_deref(), Some("a"));
    // Killed: no release, no more heartbeats.
    a.abort();
    let b = start(
        worker(c, "b")
            .register(task(), |run| async move {
                Ok(Some(json!({"attempt": run.attempt})))
            })
            .build(),
    );
    let run = run_in(c, &id, &[RunState::Succeeded, RunState::Failed]).await;
    assert_eq!(run.state, RunState::Succeeded);
    assert_eq!(run.attempt, 2, "the lapsed lease counted an attempt");
    assert_eq!(run.worker_id.as_deref(), Some("b"));
    assert_eq!(run.output, Some(json!({"attempt": 2})));
    stop(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_an_in_flight_run_finish_within_the_grace() {
    let server = Server::start(SystemClock::new()).await;
    let c = &server.client;
    let running = start(
        worker(c, "w1")
            .grace(Duration::from_secs(5))
            .register(Task::builder("job").lease_timeout(LEASE), |_| async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                Ok(Some(json!("done")))
            })
            .build(),
    );
    until("the task is defined", || async {
        c.get_task("job").await.ok()
    })
    .await;
    let id = c.enqueue("job", &json!({}), None).await.unwrap().id;
    run_in(c, &id, &[RunState::Running]).await;
    let summary = stop(running).await;
    assert_eq!((summary.succeeded, summary.released), (1, 0), "{summary:?}");
    let run = c.get_run(&id).await.unwrap();
    assert_eq!(run.state, RunState::Succeeded);
    assert_eq!(run.output, Some(json!("done")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_a_run_that_outlasts_the_grace_without_counting_an_attempt() {
    let server = Server::start(SystemClock::new()).await;
    let c = &server.client;
    let running = start(
        worker(c, "w1")
            .grace(Duration::from_millis(200))
            .register(Task::builder("job").lease_timeout(LEASE), |_| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(None)
            })
            .build(),
    );
    until("the task is defined", || async {
        c.get_task("job").await.ok()
    })
    .await;
    let id = c.enqueue("job", &json!({}), None).await.unwrap().id;
    run_in(c, &id, &[RunState::Running]).await;
    let summary = stop(running).await;
    assert_eq!((summary.succeeded, summary.released), (0, 1), "{summary:?}");
    let run = c.get_run(&id).await.unwrap();
    assert_eq!(run.state, RunState::Queued, "{run:?}");
    // The next lease is attempt 1 again: the release counted none.
    let leased = c
        .worker_lease("w2", &["job".to_owned()], 1, Some(Duration::from_secs(2)))
        .await
        .unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!((leased[0].id.as_str(), leased[0].attempt), (id.as_str(), 1));
}

/// A run the server leases to the call in flight as shutdown begins is released at once, not
/// left leased to nobody until its lease lapses (costing an attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_leased_to_the_poll_in_flight_at_shutdown_is_released() {
    let server = Server::start(SystemClock::new()).await;
    let c = &server.client;
    let running = start(
        worker(c, "w1")
            .poll_wait(Duration::from_secs(3))
            .grace(Duration::from_secs(5))
            .register(
                Task::builder("job").lease_timeout(Duration::from_secs(60)),
                |_| async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok(None)
                },
            )
            .build(),
    );
    let queue = server.state.queue();
    until("the worker's lease call waits on the server", || async {
        let waiting = queue.lease_calls().map_or(0, |n| n.load(Ordering::Relaxed));
        (waiting > 0).then_some(())
    })
    .await;
    let (stop_tx, handle) = running;
    let _ = stop_tx.send(());
    // Let the worker see the shutdown before the run exists, so that the poll in flight is
    // the one that leases it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let id = c.enqueue("job", &json!({}), None).await.unwrap().id;
    let summary = tokio::time::timeout(DEADLINE, handle)
        .await
        .expect("the worker stops")
        .expect("the worker did not panic")
        .expect("the worker ran");
    assert_eq!(
        (summary.leased, summary.released, summary.lost),
        (1, 1, 0),
        "{summary:?}"
    );
    let run = c.get_run(&id).await.unwrap();
    assert_eq!(run.state, RunState::Queued, "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_failure_is_retried_or_final_as_the_handler_says() {
    let server = Server::start(SystemClock::new()).await;
    let c = &server.client;
    let running = start(
        worker(c, "w1")
            .register(Task::builder("flaky").max_attempts(3), |run| async move {
                if run.attempt == 1 {
                    return Err(HandlerError::retry("upstream timed out"));
                }
                Ok(Some(json!({"attempt": run.attempt})))
            })
            .register(Task::builder("broken"), |_| async {
                Err(HandlerError::fatal("bad input"))
            })
            .build(),
    );
    until("the tasks are defined", || async {
        c.get_task("broken").await.ok()
    })
    .await;
    let flaky = c.enqueue("flaky", &json!({}), None).await.unwrap().id;
    let broken = c.enqueue("broken", &json!({}), None).await.unwrap().id;
    let run = run_in(c, &flaky, &[RunState::Succeeded, RunState::Failed]).await;
    assert_eq!(run.state, RunState::Succeeded);
    assert_eq!(run.attempt, 2);
    assert_eq!(run.output, Some(json!({"attempt": 2})));
    let run = run_in(c, &broken, &[RunState::Succeeded, RunState::Failed]).await;
    assert_eq!(run.state, RunState::Failed);
    assert_eq!(run.attempt, 1, "a fatal failure is not retried");
    assert_eq!(run.error.as_deref(), Some("bad input"));
    let summary = stop(running).await;
    assert_eq!((summary.succeeded, summary.failed), (1, 2), "{summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_task_definition_stops_the_worker_with_the_servers_error() {
    let server = Server::start(SystemClock::new()).await;
    let w = Worker::builder(server.client.clone())
        .register(
            Task::builder("bad").dynamic_limit("input.(", 1, 1, "1s"),
            |_| async { Ok(None) },
        )
        .build();
    match w.run(std::future::pending()).await {
        Err(WorkerError::Register { task, source, .. }) => {
            assert_eq!(task, "bad");
            assert_eq!(source.code(), Some(&ErrorCode::InvalidExpression));
        }
        other => panic!("expected a registration error, got {other:?}"),
    }
    let none = Worker::builder(server.client.clone()).build();
    assert!(matches!(
        none.run(std::future::pending()).await,
        Err(WorkerError::NoTasks)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_before_its_server_waits_for_it() {
    // A free port, then nothing listening on it for a while: connections are refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = Client::new(format!("http://127.0.0.1:{port}")).unwrap();
    let running = start(
        worker(&c, "early")
            .register(Task::builder("job"), |_| async { Ok(Some(json!(1))) })
            .build(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let state = tollgate_server::AppState::new(SystemClock::new(), Default::default());
    tokio::spawn(tollgate_server::run(
        listener,
        state,
        std::future::pending::<()>(),
    ));
    until("the task is defined", || async {
        c.get_task("job").await.ok()
    })
    .await;
    let id = c.enqueue("job", &json!({}), None).await.unwrap().id;
    let run = run_in(&c, &id, &[RunState::Succeeded]).await;
    assert_eq!(run.output, Some(json!(1)));
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cancelled_while_running_is_dropped_and_its_handler_stopped() {
    let server = Server::start(SystemClock::new()).await;
    let c = &server.client;
    // Set when the handler's future is dropped: the worker stopped it.
    struct Dropped(Arc<AtomicUsize>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = Arc::clone(&dropped);
    let running = start(
        worker(c, "w1")
            .register(Task::builder("job").lease_timeout(LEASE), move |_| {
                let guard = Dropped(Arc::clone(&d));
                async move {
                    let _guard = guard;
                    std::future::pending::<()>().await;
                    Ok(None)
                }
            })
            .build(),
    );
    until("the task is defined", || async {
        c.get_task("job").await.ok()
    })
    .await;
    let id = c.enqueue("job", &json!({}), None).await.unwrap().id;
    run_in(c, &id, &[RunState::Running]).await;
    c.cancel(&id).await.unwrap();
    // The next heartbeat gets 409: the worker drops the run and stops its handler.
    until("the handler is stopped", || async {
        (dropped.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    let summary = stop(running).await;
    assert_eq!((summary.lost, summary.succeeded), (1, 0), "{summary:?}");
    assert_eq!(c.get_run(&id).await.unwrap().state, RunState::Cancelled);
}
