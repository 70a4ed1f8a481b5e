//! Tollgate's server: the HTTP API that workers in any language share, and the `tollgate`
//! binary around it.
//!
//! The API is JSON over HTTP/1.1. Errors are `{"error": {"code", "message", "field"?}}` with a
//! stable `code` (see [`ApiError`]). A denial is not an error: `POST /v1/acquire` answers
//! `200` with `"allowed": false` and a `retry_after_ms`, never `429`, so that a client reads
//! one shape whatever the outcome (the `RateLimit-*` and `Retry-After` headers are there for
//! generic HTTP tooling).
//!
//! Serving on a port of the caller's choosing, with its own clock and shutdown signal:
//! ```no_run
//! # async fn serve() -> anyhow::Result<()> {
//! use tollgate::SystemClock;
//! use tollgate_server::{AppState, Settings};
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7070").await?;
//! let state = AppState::new(SystemClock::new(), Settings::default());
//! tollgate_server::run(listener, state, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```
//!
//! # Routes
//! | route | what |
//! | --- | --- |
//! | `GET /healthz` | liveness (no token needed) |
//! | `POST /login`, `POST /logout` | the dashboard's sign-in (cookie) and sign-out |
//! | `PUT/GET/DELETE /v1/limits/{key}`, `GET /v1/limits` | declared limits with live state |
//! | `POST /v1/acquire`, `POST /v1/acquire/batch` | atomic multi-key decisions, optional `wait_ms` (capped at [`MAX_WAIT`]) |
//! | `POST /v1/leases`, `POST /v1/leases/{id}/renew`, `DELETE /v1/leases/{id}` | concurrency leases with self-describing ids |
//! | `POST/GET /v1/barriers/{key}`, `POST /v1/barriers/{key}/wait` | barriers |
//! | `PUT/GET /v1/tasks/{name}`, `GET /v1/tasks` | task definitions (limits, policy, triggers) with defaults shown and run counts per state |
//! | `POST /v1/tasks/{name}/runs` | enqueue a run: `201` with the run; `422 invalid_expression` when the task's CEL cannot be evaluated for its input |
//! | `POST /v1/events` | one run of every task the event triggers: `202 {"runs": [...]}` |
//! | `POST /v1/workers/lease` | a worker's long-poll for runs (`wait_ms`, capped at [`MAX_WAIT`]; answered at once on shutdown) |
//! | `POST /v1/runs/{id}/heartbeat`, `/complete`, `/fail`, `/release`, `/cancel` | a leased run's lease and outcome (`attempt` guards against stale workers: `409 invalid_state`) |
//! | `GET /v1/runs/{id}`, `GET /v1/runs?task=&state=&limit=` | runs with `state`, `attempt`, `waiting_on`, `eligible_at_ms`, `skip_reason`, newest first |
//! | `GET /` | the dashboard: one self-contained page, server-rendered, then refreshed every 2 s from the JSON API |
//! | `GET /openapi.json` | the contract as OpenAPI 3.1, from the wire types (no token needed) |
//! | `GET /metrics` | Prometheus metrics (OpenMetrics text): decisions per limit, run transitions per task, queue depths, decision time, dispatch lag; labels never carry a rendered dynamic key |
//!
//! # Layout
//! - [`cli`]: `tollgate serve`, parsed, then validated, then resolved (binding, runtime).
//! - [`AppState`] and [`Settings`]: what every handler shares: the run queue as a
//!   `tollgate::RunQueue` trait object (either engine), the clock, the limits.
//! - [`config`]: the config file: read, planned against the server's definitions, applied.
//! - [`tls`]: HTTPS: the certificate and key, read at start and again on SIGHUP.
//! - [`auth`]: access control: the tokens file, roles, the middleware every request passes.
//! - [`ApiError`]: engine and input errors mapped to a status and a stable code
//!   (`tollgate_api::ErrorCode`).
//! - `extract`: the JSON body extractor (size limit before reading, field paths in errors).
//! - `api`: one module per area, each with its own `routes()`; [`app`] merges them. The
//!   bodies they read and write are the wire types of `tollgate-api`, shared with the client.
//! - `dashboard`: `GET /`, the page and its first render.
//! - [`openapi`]: `GET /openapi.json`, the contract as OpenAPI 3.1, from the wire types.
//! - `metrics`: `GET /metrics`, the server's counters plus the engine's read at scrape time.

mod api;
pub mod auth;
pub mod cli;
pub mod commands;
pub mod config;
mod dashboard;
mod error;
mod extract;
mod metrics;
pub mod openapi;
mod state;
pub mod tls;

use std::future::Future;

use anyhow::Context;
use axum::Router;

pub use error::ApiError;
pub use state::{AppState, DEFAULT_MAX_BODY, MAX_WAIT, Settings, StoreErrorPolicy};

/// The whole HTTP API over `state`: a plain router, so tests and embedders can drive it
/// without a socket.
pub fn app(state: AppState) -> Router {
    Router::new()
        .merge(api::health::routes())
        .merge(api::limits::routes())
        .merge(api::acquire::routes())
        .merge(api::leases::routes())
        .merge(api::barriers::routes())
        .merge(api::tasks::routes())
        .merge(api::runs::routes())
        .merge(api::events::routes())
        .merge(api::workers::routes())
        .merge(metrics::routes())
        .merge(openapi::routes())
        .merge(dashboard::routes())
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        // Before routing: an unknown route without a token is a 401, not a 404.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::check,
        ))
        .with_state(state)
}

/// Serves [`app`] on `listener` until `shutdown` completes, then stops accepting, ends the
/// waits in flight early (each answers with its current decision) and returns once every
/// open request has been answered.
///
/// # Errors
/// The listener failing.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener
        .local_addr()
        .context("reading the listening address")?;
    tracing::info!(%addr, version = env!("CARGO_PKG_VERSION"), "serving the HTTP API");
    let router = app(state.clone());
    let signal_state = state.clone();
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            stopping(&signal_state);
        })
        .await
        .context("serving HTTP");
    stopped(&state).await;
    served
}

/// [`run`] over HTTPS: the same router behind rustls with `tls` (`--tls-cert`, `--tls-key`;
/// [`tls::load`]), which [`tls::Tls::reload`] can swap while serving.
///
/// # Errors
/// The listener failing.
pub async fn run_tls(
    listener: tokio::net::TcpListener,
    tls: axum_server::tls_rustls::RustlsConfig,
    state: AppState,
    shutdown: impl Future + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener
        .local_addr()
        .context("reading the listening address")?;
    tracing::info!(%addr, version = env!("CARGO_PKG_VERSION"), "serving the HTTP API over TLS");
    let router = app(state.clone());
    let handle = axum_server::Handle::new();
    let signal_state = state.clone();
    let signal_handle = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopping(&signal_state);
        signal_handle.graceful_shutdown(None);
    });
    let listener = listener
        .into_std()
        .context("handing the listener to the TLS server")?;
    let served = axum_server::from_tcp_rustls(listener, tls)
        .context("serving HTTPS")?
        .handle(handle)
        .serve(router.into_make_service())
        .await
        .context("serving HTTPS");
    stopped(&state).await;
    served
}

fn stopping(state: &AppState) {
    tracing::info!("shutting down: answering the requests in flight");
    // Long waits (acquire `wait_ms`, barrier waits, worker lease long-polls) would otherwise
    // hold the shutdown for up to their full length.
    state.begin_shutdown();
}

async fn stopped(state: &AppState) {
    // Everything answered is committed; record the clean stop.
    state.queue().close().await;
    tracing::info!("stopped");
}
