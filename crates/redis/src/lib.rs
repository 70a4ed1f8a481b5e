//! Tollgate's Redis store: limit definitions and limit state in Redis (or Valkey), so that
//! many Tollgate nodes share every budget.
//!
//! [`RedisStore`] implements the engine's [`AsyncStore`](tollgate::AsyncStore): plug it into an
//! [`AsyncLimiter`](tollgate::AsyncLimiter) and every node using the same Redis and prefix
//! decides against the same state. Every call is awaited on one multiplexed connection: no
//! runtime thread ever blocks on Redis.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use tollgate::{AcquireEntry, AsyncLimiter, SystemClock};
//! use tollgate_core::{Gcra, RateLimit};
//! use tollgate_redis::RedisStore;
//!
//! let store = RedisStore::builder("redis://127.0.0.1:6380/").prefix("myapp").build()?;
//! let limiter = AsyncLimiter::new(Arc::new(store), SystemClock::new());
//! limiter.upsert("search-api", RateLimit::Gcra(Gcra::new("10/s".parse()?, 10)?)).await?;
//! let decision = limiter.try_acquire(&[AcquireEntry::new("search-api", 3)]).await?;
//! assert!(decision.allowed);
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//! - **One round trip per decision.** Each operation is one `FCALL` of a function of Tollgate's
//!   Lua library (see *Redis Functions*). An acquire naming several keys reads every key's
//!   definition and state, decides each with the algorithm, and writes only if all are
//!   admitted: all or nothing, however many keys. The run queue's leases use the same
//!   all-or-nothing acquire.
//! - **The core's arithmetic, in microseconds.** The Lua is a port of `tollgate-core`'s
//!   algorithms (including how a state written under other parameters is converted, and that a
//!   fresh state is no state), computing in integer microseconds because Lua numbers are
//!   doubles. With times and periods in whole microseconds (and GCRA intervals and sliding
//!   sub-bucket boundaries falling on whole microseconds) decisions equal the core's exactly;
//!   the engine's conformance suite checks this. Otherwise durations are rounded up, so a
//!   limit is never looser than declared; instants are truncated to the microsecond.
//! - **One clock.** By default the functions read Redis `TIME`, so nodes whose clocks disagree
//!   still share one timeline; [`Builder::use_server_time`]`(false)` uses the `now` the
//!   caller passes instead (tests).
//! - **Bounded memory.** Every state key expires once its state is fresh again (plus
//!   [`Builder::expiry_slack`]): millions of one-shot dynamic keys do not accumulate. Static
//!   definitions never expire.
//! - **Failures are errors, never panics.** An unreachable, slow or restarting server gives a
//!   transient [`StoreError`](tollgate::StoreError) (`Error::is_transient()`), within the
//!   connect and response timeouts (500 ms and 1 s by default); while it stays unreachable,
//!   calls fail at once for a backoff (50 ms doubling to 1 s) instead of each waiting out a
//!   timeout; the next request after that reconnects. Messages never contain the URL's
//!   password.
//! - **One connection, never blocking.** Every call in flight is pipelined on one multiplexed
//!   connection (the redis crate's tokio support): many callers cost the node one `write` and
//!   one `read` per batch, and no runtime thread waits on Redis.
//!
//! # Redis Functions
//! Needs **Redis 7.0** or later, or **Valkey 7.2** or later (every Valkey release). All the Lua
//! is one library, loaded with `FUNCTION LOAD REPLACE`, whose functions are called with
//! `FCALL`: the library's helpers are made once per load, not on every call.
//! - **Versioned names.** The library is `tollgate_<hash>` and its functions
//!   `tollgate_<hash>_<operation>`, the hash (48 bits of FNV-1a) taken at compile time over every
//!   Lua source and how they are put together. Nodes of two builds whose Lua differs never call
//!   each other's code, during a rolling upgrade or ever; builds with the same Lua share one
//!   library. An earlier version's library stays in Redis until `FUNCTION DELETE` removes it.
//! - **Loading.** [`RedisStore::ping`] (which `tollgate serve` runs at start) reads
//!   `INFO server` and fails with a permanent error naming the version found and the minimum
//!   when the server is older (Valkey's own version is `valkey_version`; its `redis_version` is
//!   the Redis it is compatible with), then loads the library. A call that finds its function
//!   missing (`ERR Function not found`: a restart without persistence, `FUNCTION FLUSH`, a
//!   node that never had it) loads the library and is retried once; so is a call to a server
//!   without `FCALL`, whose load then names its version. The connection's user needs the
//!   `FUNCTION` and `FCALL` commands.
//! - **Flags.** The views are `no-writes` (they may run on a replica and while Redis is out of
//!   memory); the queue's reads are `allow-oom`; any other function is refused up front, with a
//!   transient error, while Redis is over `maxmemory`.
//!
//! # Redis Cluster
//! Every Redis key carries a hash tag (see *Layout*), so one Tollgate key's definition, state
//! and leases always share a slot. With [`Builder::cluster`]`(true)` the prefix itself becomes
//! the tag (`{tollgate}:def:{api}:api`): every key of the store shares one slot, so every
//! operation — acquires over several keys, and the run queue's functions — stays atomic as on
//! one server; the store talks to that slot's owner (found with `CLUSTER KEYSLOT` and
//! `CLUSTER SLOTS` on the node it was given, and again after a `MOVED`). One store's data is
//! then on one shard. Without it, a request naming several keys is atomic in a cluster
//! **only when all its keys share a slot** (the same `{...}` part, `"{acct-42}:api"` and
//! `"{acct-42}:user-7"`), through a proxy that routes by key; otherwise Redis refuses it
//! (`CROSSSLOT`) rather than deciding it non-atomically.
//!
//! # Layout
//! Every Redis key is `<prefix>:<kind>:{<tag>}:<key>`, where `<tag>` is the key's own non-empty
//! `{...}` part if it has one, else the whole key (braces replaced):
//!
//! | kind | type | holds | expires |
//! | --- | --- | --- | --- |
//! | `def` | string | a static limit's definition | never |
//! | `sr` / `dr` | string | static / dynamic rate state: `<spec>\|<state>` | once fresh |
//! | `sl` / `dl` | ZSET | static / dynamic leases: lease id → expiry (µs) | with the last lease |
//! | `sh` / `dh` | HASH | lease holders (`h:<id>`); for dynamic keys the last `spec` | with the last lease |
//! | `b` | string | a barrier: `<parties> <arrived> <expires_at>` | at its expiry |
//!
//! Static and dynamic namespaces never meet: a dynamic key `"x"` never touches the static
//! limit `"x"`. Specs and states are space-separated integers; `src/scripts/lib.lua` documents
//! them.
//!
//! # The run queue
//! [`RedisEngine`] keeps task definitions and runs in Redis too, with the embedded engine's
//! scheduling rules ported to Lua (`scripts/queue_lib.lua` and one `queue_*.lua` per
//! operation): what `tollgate serve --redis` runs. Its keys live under
//! `<prefix>:q:{<prefix>}:`, and its functions touch the limit keys a run names, so in a Redis
//! Cluster it needs [`Builder::cluster`]`(true)`, which puts every key of the store in one
//! slot.
//!
//! Source files: `store.rs` ([`RedisStore`], [`Builder`], the `AsyncStore` impl), `engine.rs`
//! ([`RedisEngine`]: tasks, runs, the sweeper and the subscriber; `engine/run_queue.rs`, its
//! `tollgate::RunQueue` impl, whose long-poll is the engine crate's shared one), `keys.rs` (key
//! names), `spec.rs` (limits as specs), `conn.rs` (the multiplexed connection, fail-fast while
//! Redis is down, error mapping, password redaction), `scripts.rs` (the library: its name, its
//! functions, the version check, loading) and `scripts/*.lua` (`lib.lua`, the algorithms and the
//! one all-or-nothing acquire; `queue_lib.lua`; then one file per function, each opening with its
//! `KEYS` and `ARGV`).

mod conn;
mod engine;
mod keys;
mod scripts;
mod spec;
mod store;

pub use engine::RedisEngine;
pub use store::{Builder, RedisStore};
