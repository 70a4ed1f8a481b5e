//! A typed async client for Tollgate's HTTP API: every route of the server (docs/http-api.md), with
//! request and answer types, and the server's error codes as a typed [`Error`].
//!
//! A denial is an answer, not an error: [`Client::acquire`] answers
//! [`Acquisition`] with `allowed: false` and a `retry_after_ms`, [`Client::lease_acquire`] a
//! [`Lease`] with `acquired: false`. Errors are what the server refused ([`Error::Api`], with
//! its [`ErrorCode`] and `field`), or a server that could not be reached ([`Error::Connect`]) or
//! answered too late ([`Error::Timeout`]); [`Error::is_transient`] says whether to try again.
//!
//! ```no_run
//! # async fn example() -> Result<(), tollgate_client::Error> {
//! use std::time::Duration;
//! use tollgate_client::{AcquireEntry, Client, Error, ErrorCode, LimitSpec};
//!
//! let client = Client::new("http://127.0.0.1:7070")?;
//! let spec = LimitSpec::rate("10/s");
//! client.put_limit("stripe-api", &spec).await?;
//!
//! // Both keys or neither; wait up to a second for room.
//! let entries = [AcquireEntry::new("stripe-api"), AcquireEntry::new("user:42").rate("100/h")];
//! let answer = client.acquire(&entries, Some(Duration::from_secs(1))).await?;
//! if !answer.allowed {
//!     println!("denied; retry in {:?}", answer.retry_after());
//! }
//!
//! match client.get_limit("nope").await {
//!     Err(Error::Api { code: ErrorCode::UnknownLimit, .. }) => {}
//!     other => panic!("{other:?}"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Workers
//!
//! [`Worker`] serves tasks defined with [`Task::builder`]: it defines them on the server,
//! leases runs for its free slots (a long poll), heartbeats while each handler runs, completes
//! or fails the run, and at shutdown lets in-flight handlers finish within a grace period
//! before releasing the rest (no attempt counted).
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use tollgate_client::{Client, Task, Worker};
//!
//! let worker = Worker::builder(Client::new("http://127.0.0.1:7070")?)
//!     .slots(4)
//!     .register(
//!         Task::builder("resize").dynamic_limit("input.user_id", 1, 10, "1m"),
//!         |run| async move { Ok(Some(run.input)) },
//!     )
//!     .build();
//! let summary = worker.run_until_ctrl_c().await?;
//! println!("{} succeeded, {} released", summary.succeeded, summary.released);
//! # Ok(())
//! # }
//! ```
//!
//! # Lease guards
//!
//! [`Client::lease_guard`] takes a concurrency slot and answers a [`LeaseGuard`] (or the denied
//! [`Lease`], with its `retry_after_ms`): the HTTP counterpart of the embedded engine's
//! `LeaseGuard`. A task renews it every third of its time to live; dropping it releases the
//! slot ([`LeaseGuard::release`] does it and waits for the answer); a lease the server no
//! longer holds, or that could not be renewed before it lapsed, shows as
//! [`LeaseGuard::is_lost`] and resolves [`LeaseGuard::lost`] with a [`LeaseLost`].
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use tollgate_client::{Client, LeaseRequest};
//!
//! let client = Client::new("http://127.0.0.1:7070")?;
//! let request = LeaseRequest::new("db").ttl(Duration::from_secs(10)).holder("report-job");
//! if let Ok(guard) = client.lease_guard(&request).await? {
//!     // … work for minutes: the lease is renewed every 3.3 s …
//!     assert!(!guard.is_lost());
//! } // dropped: released
//! # Ok(())
//! # }
//! ```
//!
//! Requests are plain HTTP/1.1 (no TLS built in: with an `https` server, pass a
//! `reqwest::Client` with TLS enabled to [`ClientBuilder::http_client`]).
//!
//! # Layout
//! - [`Client`], [`ClientBuilder`] (`client.rs`): the base URL, timeouts (a call that asks
//!   the server to wait gets that wait added to its timeout), and the one request path every
//!   route goes through.
//! - [`Error`] (`error.rs`): the server's `{"error": {...}}` ([`ErrorBody`]) as
//!   [`Error::Api`] with its [`ErrorCode`]; transport failures as their own variants.
//! - `limits.rs`: health, limits CRUD, acquire and batch acquire.
//! - `leases.rs`: concurrency leases and barriers.
//! - `lease_guard.rs`: [`LeaseGuard`], a lease renewed in the background and released when
//!   dropped ([`Client::lease_guard`], [`LeaseLost`]).
//! - `runs.rs`: tasks, enqueue, events, worker leases, run outcomes and queries ([`Task`],
//!   [`RunFilter`]).
//! - `task_builder.rs`: [`Task::builder`] → [`TaskBuilder`], a [`TaskSpec`] written in Rust.
//! - `worker.rs`: the worker runtime ([`Worker`], [`WorkerBuilder`], [`RunContext`],
//!   [`HandlerError`]): N slots, long-poll leases, heartbeats, complete/fail with retry,
//!   graceful shutdown that releases what did not finish.
//!
//! The request and answer types are those of `tollgate-api` (re-exported here, and whole as
//! [`api`]), the same the server uses: [`LimitSpec`], [`Limit`], [`AcquireEntry`],
//! [`Acquisition`], [`LeaseRequest`], [`Lease`], [`Barrier`], [`TaskSpec`], [`RunView`],
//! [`LeasedRun`], [`RunState`], … This crate does not depend on the engine: a worker built
//! with it compiles no SQLite, no CEL and no scheduler.

mod client;
mod error;
mod lease_guard;
mod leases;
mod limits;
mod runs;
mod task_builder;
mod worker;

pub use client::{Client, ClientBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT};
pub use error::Error;
pub use lease_guard::{DEFAULT_GUARD_TTL, LeaseGuard, LeaseLost};
pub use limits::BatchResult;
pub use runs::{RunFilter, Task};
pub use task_builder::{DEFAULT_LEASE_TIMEOUT, TaskBuilder};
/// The wire types' crate, for the bodies and constants not re-exported one by one.
pub use tollgate_api as api;
/// The wire types, re-exported: what the calls take and answer.
pub use tollgate_api::{
    AcquireEntry, Acquisition, AdaptiveSpec, Barrier, CompleteRequest, ConcurrencyUse, Depth,
    ErrorBody, ErrorCode, EventRun, Explanation, FailPause, FailRequest, FeedbackOutcome, Health,
    IdempotencyUse, KeyDecision, KeyExplanation, KeyScope, Lease, LeaseRenewal, LeaseRequest,
    LeasedRun, Limit, LimitParams, LimitSpec, Namespace, NumberOrExpr, OnLimit, Pause,
    PauseRequest, RateLimitUse, Resumed, RetrySpec, RunFeedback, RunState, RunView, TaskSpec,
    Throttle, ThrottleSpec,
};
pub use worker::{
    DEFAULT_GRACE, DEFAULT_POLL_WAIT, DEFAULT_SLOTS, HandlerError, HandlerResult, RunContext,
    Worker, WorkerBuilder, WorkerError, WorkerSummary,
};
