//! Tollgate, embedded: decide in-process when work may start.
//!
//! A [`Limiter`] holds declared limits and dynamic keys in a [`Store`] (in memory by default),
//! decides atomically across several keys, waits without polling, hands out concurrency leases
//! that release on drop, and runs barriers. The algorithms are those of [`tollgate_core`].
//!
//! An API limit of 10 per second where one call costs several units:
//! ```
//! use tollgate::{AcquireEntry, Limiter};
//! use tollgate_core::{Gcra, RateLimit};
//! let limiter = Limiter::new();
//! limiter.upsert("search-api", RateLimit::Gcra(Gcra::new("10/s".parse()?, 10)?))?;
//! assert!(limiter.try_acquire(&[AcquireEntry::new("search-api", 3)])?.allowed);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A per-user dynamic key, 10 per minute each, checked atomically with a shared limit:
//! ```
//! use tollgate::{AcquireEntry, Limiter};
//! use tollgate_core::{Period, RateLimit, SlidingWindow};
//! let limiter = Limiter::new();
//! limiter.upsert("global", RateLimit::SlidingWindow(SlidingWindow::new(1_000, Period::MINUTE)?))?;
//! let per_user = RateLimit::SlidingWindow(SlidingWindow::new(10, Period::MINUTE)?);
//! for _ in 0..10 {
//!     let ok = limiter.try_acquire(&[AcquireEntry::new("global", 1), AcquireEntry::dynamic("user:42", per_user, 1)])?;
//!     assert!(ok.allowed);
//! }
//! let denied = limiter.try_acquire(&[AcquireEntry::new("global", 1), AcquireEntry::dynamic("user:42", per_user, 1)])?;
//! assert!(!denied.allowed);
//! assert_eq!(denied.first_denied(), Some(1)); // user:42 is what it waits on
//! // All or nothing: the denied request took nothing from "global".
//! assert_eq!(limiter.try_acquire(&[AcquireEntry::dynamic("user:7", per_user, 1)])?.decisions[0].remaining, 9);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Concurrency of 5 ([`Limiter::try_lease`]) and a barrier of 5 parties
//! ([`Limiter::wait_barrier`]) have examples on their methods.
//!
//! # Layout
//! - [`clock`](Clock): `Clock`, [`SystemClock`] (epoch-anchored, monotonic), [`FakeClock`],
//!   [`TokioClock`].
//! - [`Store`] and its plain-data requests; [`MemoryStore`], sharded, sweeping idle keys.
//! - [`Limiter`] and [`LeaseGuard`]: the embeddable API.
//! - [`LimitSpec`]: limit definitions in their JSON form (a `tollgate-api` wire type), and
//!   [`LimitSpecExt`], which checks one and converts it to and from the core's limits.
//! - The HTTP wire types the engine takes and answers ([`TaskSpec`], [`RunView`],
//!   [`LeasedRun`], [`RunState`]) are defined in `tollgate-api` and re-exported here.
//! - `task`: task definitions with CEL expressions; `queue`: runs and the admission queue;
//!   [`Engine`]: limiter + queue + durability ([`Db`], SQLite), what the server runs;
//!   [`RunQueue`]: the interface every engine's run queue implements (the server holds an
//!   `Arc<dyn RunQueue>`), with the front both engines share (`queue::run_queue::lease_until`);
//!   `metrics`: the queue's counters ([`QueueMetrics`]) for the server's `GET /metrics`.
//! - `testkit` (feature): the conformance suite every store must pass.

mod clock;
mod db;
mod engine;
mod error;
mod fast_map;
mod limiter;
pub mod metrics;
pub mod queue;
mod spec;
mod store;
pub mod task;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use clock::{Clock, FakeClock, SystemClock, TokioClock};
pub use db::{DB_FILE, Db, DirectUse, Loaded, StoredState, Write};
pub use engine::{DEFAULT_RETENTION, Engine, MAX_LEASE_BATCH};
pub use error::{Error, MAX_KEY_LEN, StoreError, check_key, key_problem};
pub use fast_map::FastHashMap;
pub use limiter::{AsyncLimiter, LeaseGuard, Limiter};
pub use metrics::{QueueMetrics, Transition};
pub use queue::run::{LeasedRun, Run, RunPhase, RunPolicy, RunState, RunView, WaitKey};
pub use queue::run_queue::{LeaseAttempt, LeaseQueue, PauseEnd, QueueFuture, RunQueue, StartAt};
pub use spec::{DEFAULT_LEASE_TTL, LimitSpec, LimitSpecExt, SpecError};
pub use store::memory::MemoryStore;
pub use store::{
    AcquireEntry, Acquired, AsyncStore, DynStore, ExportedState, LimitInfo, Namespace, Pause,
    StateView, Store, StoreFuture, Target, validate_entries,
};
pub use task::{Expr, OnLimit, RenderError, Rendered, RunContext, Task, TaskSpec};
pub use tollgate_api as api;
pub use tollgate_core as core;
pub use tollgate_core::{Adaptive, Declared, Feedback};

/// The README's Rust examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
