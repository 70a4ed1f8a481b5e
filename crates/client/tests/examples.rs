//! Every example, run in-process against a real server started on a free port (the same code
//! `cargo run -p tollgate-client --example NAME` runs; its `main` only adds the URL and exit
//! code). The server runs on the system clock: the examples show spacing in real time.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Each example brings its own `support` module, as it does when built as a binary.
#![allow(clippy::duplicate_mod)]

mod common;

use common::Server;
use tollgate::SystemClock;

macro_rules! examples {
    ($($name:ident => $path:literal),* $(,)?) => {$(
        #[allow(dead_code, unreachable_pub)]
        #[path = $path]
        mod $name;

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let server = Server::start(SystemClock::new()).await;
            if let Err(e) = $name::demo(server.base.clone()).await {
                panic!("example {} failed: {e}", stringify!($name));
            }
        }
    )*};
}

examples!(
    hatchet_static_and_dynamic => "../examples/hatchet_static_and_dynamic.rs",
    inngest_skip_by_company => "../examples/inngest_skip_by_company.rs",
    celery_rate_changed_at_runtime => "../examples/celery_rate_changed_at_runtime.rs",
    dramatiq_concurrency => "../examples/dramatiq_concurrency.rs",
    dramatiq_bucket => "../examples/dramatiq_bucket.rs",
    dramatiq_window => "../examples/dramatiq_window.rs",
    dramatiq_barrier => "../examples/dramatiq_barrier.rs",
);

#[tokio::test]
async fn an_example_without_a_server_says_so() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let e = dramatiq_window::demo(url.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("the Tollgate server at {url} is not reachable")),
        "{e}"
    );
    assert!(e.contains("TOLLGATE_SERVER"), "{e}");
}
