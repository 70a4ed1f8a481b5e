//! Every example, run in-process against a real server started on a free port (the same code
//! `cargo run -p tollgate-client --example NAME` runs; its `main` only adds the URL and exit
//! code). The server runs on the system clock: the examples show spacing in real time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

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
);
