//! The real server, started in-process on a free loopback port, and a client for it.
#![allow(dead_code)] // each test file uses a different part
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tollgate::core::Nanos;
use tollgate::{Clock, FakeClock};
use tollgate_client::Client;
use tollgate_server::{AppState, Settings};

/// 2023-11-14T22:13:20Z: an epoch-anchored start, as the production clock has.
pub const START: Nanos = Nanos::from_secs(1_700_000_000);

pub fn fake_clock() -> FakeClock {
    FakeClock::new(START)
}

pub struct Server {
    pub client: Client,
    pub base: String,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), String>>,
}

impl Server {
    pub async fn start(clock: impl Clock + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port");
        let addr = listener.local_addr().expect("a bound address");
        let state = AppState::new(clock, Settings::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tollgate_server::run(listener, state.clone(), async {
            let _ = stopped.await;
        });
        let task = tokio::spawn(async move { serving.await.map_err(|e| format!("{e:#}")) });
        let base = format!("http://{addr}");
        Server {
            client: Client::new(&base).expect("a valid base URL"),
            base,
            state,
            stop: Some(stop),
            task,
        }
    }

    /// Stops the server, leaves the port closed for `down`, and serves the same state on the
    /// same port again: an outage that loses nothing.
    pub async fn restart_after(self, down: std::time::Duration) -> Server {
        let (base, state, client) = (self.base.clone(), self.state.clone(), self.client.clone());
        let addr = base.trim_start_matches("http://").to_owned();
        self.stop().await;
        tokio::time::sleep(down).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(&addr).await {
                Ok(listener) => break listener,
                Err(e) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "rebinding {addr}: {e}"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tollgate_server::run(listener, state.clone(), async {
            let _ = stopped.await;
        });
        let task = tokio::spawn(async move { serving.await.map_err(|e| format!("{e:#}")) });
        Server {
            client,
            base,
            state,
            stop: Some(stop),
            task,
        }
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task)
            .await
            .expect("the server task did not panic")
            .expect("run() returned Ok");
    }
}
