//! [`Db`]: SQLite durability for the embedded server — limit definitions, tasks and runs.
//!
//! One writer thread owns the connection and commits whatever has queued up in one transaction
//! (group commit), then acknowledges every caller in it. WAL with `synchronous=NORMAL`: a
//! committed transaction survives the process being killed (`kill -9`); only an operating
//! system crash can lose the last moments, which the README states.
//!
//! # Checkpoints
//! A commit only appends to the WAL; copying the WAL back into the database file (a
//! checkpoint) syncs both files to disk, which took 4–21 ms here. SQLite's automatic
//! checkpoint runs it inside the commit that crosses 1,000 WAL pages, so every caller queued
//! behind that commit waited for it (`cargo bench -p tollgate-server --bench dispatch`,
//! BENCHMARKS.md). Instead, the writer turns the automatic checkpoint off and, past
//! [`WalPolicy::checkpoint_frames`], nudges a second connection on a thread of its own that
//! checkpoints in `PASSIVE` mode, which never blocks the writer. Durability is unchanged: a
//! commit is as durable as before whether or not its frames have been copied yet.
//!
//! The WAL can only start over from its beginning when a checkpoint has copied all of it and
//! the writer then begins a transaction; under sustained writes the background checkpoint may
//! never catch up with the writer. So past [`WalPolicy::limit_frames`] the writer checkpoints
//! itself, in `RESTART` mode, after acknowledging its commit: WAL growth stays bounded, and only
//! that rare commit's successors wait.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;
use tollgate_core::Nanos;

use tollgate_core::{LimitState, RateState};

use crate::error::StoreError;
use crate::queue::run::Run;
use crate::spec::{LimitSpec, LimitSpecExt};
use crate::store::Namespace;
use crate::task::TaskSpec;

/// The database file inside the data directory.
pub const DB_FILE: &str = "tollgate.db";

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 4_096;

/// When the WAL is checkpointed, in WAL frames (one frame: one page of 4 KiB and its 24-byte
/// header). See [the module docs](self#checkpoints).
#[derive(Debug, Clone, Copy)]
pub(crate) struct WalPolicy {
    /// Past this many frames the background connection is asked to checkpoint. Every
    /// checkpoint lets the WAL start over, and the first commit after that syncs the WAL's
    /// header (about 4 ms here) on the writer's path; larger means rarer.
    pub(crate) checkpoint_frames: u32,
    /// Past this many frames the writer checkpoints itself (`RESTART`): the bound on WAL growth.
    pub(crate) limit_frames: u32,
    /// Whether the background checkpointer runs (tests turn it off to reach the limit).
    pub(crate) background: bool,
}

impl WalPolicy {
    /// 8,192 frames are 32 MiB of WAL, a few seconds of the dispatch bench's writes; the limit
    /// is four times that.
    pub(crate) const DEFAULT: WalPolicy = WalPolicy {
        checkpoint_frames: 8_192,
        limit_frames: 4 * 8_192,
        background: true,
    };
}

/// One durable change.
#[derive(Debug, Clone)]
pub enum Write {
    /// Declare or redefine a static limit.
    PutLimit {
        /// Its key.
        key: String,
        /// Its definition.
        spec: LimitSpec,
    },
    /// Remove a static limit.
    DeleteLimit {
        /// Its key.
        key: String,
    },
    /// Define or redefine a task.
    PutTask {
        /// Its name.
        name: String,
        /// Its definition.
        spec: TaskSpec,
    },
    /// Insert or replace a run.
    PutRun(Box<Run>),
    /// Forget an ended run (retention).
    DeleteRun {
        /// Its id.
        id: String,
    },
    /// Record that a key had direct (`/v1/acquire`) use, last at `last_used`.
    DirectUse(DirectUse),
    /// Forget a key's direct use (its usage has long expired).
    ForgetDirectUse {
        /// Static or dynamic.
        namespace: Namespace,
        /// The key.
        key: String,
    },
    /// Pause a key until `until` (docs/design.md §3.13); replaces its earlier pause.
    PutPause {
        /// Static or dynamic.
        namespace: Namespace,
        /// The key.
        key: String,
        /// When the pause ends.
        until: Nanos,
    },
    /// End a key's pause.
    DeletePause {
        /// Static or dynamic.
        namespace: Namespace,
        /// The key.
        key: String,
    },
    /// Replace the whole rate-state snapshot (taken at a clean shutdown).
    ReplaceStates(Vec<StoredState>),
    /// A direct concurrency lease was granted (`/v1/leases`).
    PutLease(StoredLease),
    /// A direct lease was renewed until `expires_at` (no effect once it is forgotten).
    RenewLease {
        /// Static or dynamic.
        namespace: Namespace,
        /// The key.
        key: String,
        /// The lease.
        id: String,
        /// Its new expiry.
        expires_at: Nanos,
    },
    /// A direct lease was released.
    ForgetLease {
        /// Static or dynamic.
        namespace: Namespace,
        /// The key.
        key: String,
        /// The lease.
        id: String,
    },
    /// A barrier was created or a party arrived: its status now. A status of an older barrier
    /// of the key (an earlier expiry) never overwrites a newer one, and arrivals only grow.
    PutBarrier(StoredBarrier),
    /// Forget leases and barriers that expired by this instant.
    ForgetExpired(Nanos),
}

/// A direct concurrency lease, kept so that it still counts after a restart.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredLease {
    /// Static (a declared limit) or dynamic.
    pub namespace: Namespace,
    /// The key.
    pub key: String,
    /// The lease's id in the store.
    pub id: String,
    /// Who holds it.
    pub holder: String,
    /// For a dynamic key, its concurrency definition.
    pub spec: Option<LimitSpec>,
    /// When it lapses unless renewed.
    pub expires_at: Nanos,
}

/// A barrier and its arrivals, kept so that a restart keeps them.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredBarrier {
    /// The key.
    pub key: String,
    /// Arrivals needed.
    pub parties: u32,
    /// Arrivals so far.
    pub arrived: u32,
    /// When it expires.
    pub expires_at: Nanos,
}

/// A key with direct use: after a crash it is treated as fully used for one period.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectUse {
    /// Static or dynamic.
    pub namespace: Namespace,
    /// The key.
    pub key: String,
    /// For dynamic keys, the parameters of the last use.
    pub spec: Option<LimitSpec>,
    /// The last use known to the journal.
    pub last_used: Nanos,
}

/// One key's rate state in the clean-shutdown snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredState {
    /// Static or dynamic.
    pub namespace: Namespace,
    /// The key.
    pub key: String,
    /// The limit that wrote the state.
    pub spec: LimitSpec,
    /// The state.
    pub state: RateState,
}

impl StoredState {
    /// The snapshot form of `state`.
    pub fn new(namespace: Namespace, key: String, state: &LimitState) -> StoredState {
        StoredState {
            namespace,
            key,
            spec: LimitSpec::from_limit(&tollgate_core::Limit::Rate(state.limit)),
            state: state.state.clone(),
        }
    }

    /// Back to a core state; `None` if the stored limit no longer parses.
    pub fn to_limit_state(&self) -> Option<LimitState> {
        Some(LimitState {
            limit: self.spec.to_rate_limit().ok()?,
            state: self.state.clone(),
        })
    }
}

fn ns_name(ns: Namespace) -> &'static str {
    match ns {
        Namespace::Static => "static",
        Namespace::Dynamic => "dynamic",
        Namespace::Barrier => "barrier",
    }
}

fn ns_parse(s: &str) -> Namespace {
    match s {
        "dynamic" => Namespace::Dynamic,
        "barrier" => Namespace::Barrier,
        _ => Namespace::Static,
    }
}

/// What a data directory held when opened.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Static limits.
    pub limits: Vec<(String, LimitSpec)>,
    /// Tasks.
    pub tasks: Vec<(String, TaskSpec)>,
    /// Every run, in enqueue order.
    pub runs: Vec<Run>,
    /// The latest time the previous process committed (the clock never goes below it).
    pub last_time: Option<Nanos>,
    /// Whether the previous process shut down cleanly.
    pub clean_shutdown: bool,
    /// Keys with direct use still within their period.
    pub direct_use: Vec<DirectUse>,
    /// The rate-state snapshot of the last clean shutdown (only meaningful when
    /// `clean_shutdown`).
    pub states: Vec<StoredState>,
    /// Direct concurrency leases, expired ones included.
    pub leases: Vec<StoredLease>,
    /// Barriers, expired ones included.
    pub barriers: Vec<StoredBarrier>,
    /// Paused keys with when each pause ends, ended ones included.
    pub pauses: Vec<(Namespace, String, Nanos)>,
}

/// Tells a submitter its batch is committed (or why not).
type Ack = oneshot::Sender<Result<(), String>>;

enum Msg {
    Batch(Vec<Write>, Nanos, Ack),
    Close(Nanos, oneshot::Sender<()>),
}

/// The durable store of the embedded server. Cheap to share behind an `Arc`.
pub struct Db {
    tx: mpsc::Sender<Msg>,
    path: PathBuf,
    writer: parking_lot::Mutex<Option<JoinHandle<()>>>,
    /// Ends when the writer does (the writer holds its only nudge sender).
    checkpointer: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

fn err(context: &str, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::permanent(format!("{context}: {e}"), Some(Box::new(e)))
}

impl Db {
    /// Opens (creating if needed) the database in `dir` and loads everything it holds.
    ///
    /// # Errors
    /// A [`StoreError`] naming the path when the directory or database cannot be opened, or
    /// when stored data cannot be read.
    pub fn open(dir: &Path) -> Result<(Db, Loaded), StoreError> {
        Db::open_with(dir, WalPolicy::DEFAULT)
    }

    pub(crate) fn open_with(dir: &Path, policy: WalPolicy) -> Result<(Db, Loaded), StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            err(
                &format!("cannot create data directory {}", dir.display()),
                e,
            )
        })?;
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path)
            .map_err(|e| err(&format!("cannot open {}", path.display()), e))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS limits (key TEXT PRIMARY KEY, spec TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS tasks (name TEXT PRIMARY KEY, spec TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS runs (
                 id TEXT PRIMARY KEY, seq INTEGER NOT NULL, task TEXT NOT NULL,
                 state TEXT NOT NULL, data TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS runs_seq ON runs(seq);
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS direct_use (
                 ns TEXT NOT NULL, key TEXT NOT NULL, spec TEXT, last_used INTEGER NOT NULL,
                 PRIMARY KEY (ns, key));
             CREATE TABLE IF NOT EXISTS states (
                 ns TEXT NOT NULL, key TEXT NOT NULL, spec TEXT NOT NULL, state TEXT NOT NULL,
                 PRIMARY KEY (ns, key));
             CREATE TABLE IF NOT EXISTS leases (
                 ns TEXT NOT NULL, key TEXT NOT NULL, id TEXT NOT NULL, holder TEXT NOT NULL,
                 spec TEXT, expires_at INTEGER NOT NULL, PRIMARY KEY (ns, key, id));
             CREATE TABLE IF NOT EXISTS pauses (
                 ns TEXT NOT NULL, key TEXT NOT NULL, until INTEGER NOT NULL,
                 PRIMARY KEY (ns, key));
             CREATE TABLE IF NOT EXISTS barriers (
                 key TEXT PRIMARY KEY, parties INTEGER NOT NULL, arrived INTEGER NOT NULL,
                 expires_at INTEGER NOT NULL);",
        )
        .map_err(|e| err(&format!("cannot prepare {}", path.display()), e))?;
        let loaded = load(&conn).map_err(|e| err(&format!("cannot read {}", path.display()), e))?;
        // From now until a clean close, a crash is detectable.
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('clean_shutdown', 'false')",
            [],
        )
        .map_err(|e| err("cannot write meta", e))?;
        // One pending nudge is enough: a checkpoint copies everything committed before it.
        let (nudge, nudged) = mpsc::sync_channel(1);
        let checkpointer = if policy.background {
            let conn = Connection::open(&path)
                .and_then(|c| {
                    c.busy_timeout(std::time::Duration::from_secs(5))
                        .map(|()| c)
                })
                .map_err(|e| err(&format!("cannot open {}", path.display()), e))?;
            Some(
                std::thread::Builder::new()
                    .name("tollgate-db-checkpoint".into())
                    .spawn(move || checkpointer_loop(conn, nudged))
                    .map_err(|e| err("cannot start the database checkpointer", e))?,
            )
        } else {
            drop(nudged);
            None
        };
        let (tx, rx) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("tollgate-db".into())
            .spawn(move || writer_loop(conn, rx, policy, nudge))
            .map_err(|e| err("cannot start the database writer", e))?;
        Ok((
            Db {
                tx,
                path,
                writer: parking_lot::Mutex::new(Some(writer)),
                checkpointer: parking_lot::Mutex::new(checkpointer),
            },
            loaded,
        ))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues `writes` (in call order) and returns a future that resolves once they are
    /// committed. Submitting is synchronous so callers can keep their own order under a lock.
    pub fn submit(
        &self,
        writes: Vec<Write>,
        now: Nanos,
    ) -> impl Future<Output = Result<(), StoreError>> + use<> {
        let (ack, done) = oneshot::channel();
        let sent = self.tx.send(Msg::Batch(writes, now, ack)).is_ok();
        async move {
            if !sent {
                return Err(StoreError::permanent(
                    "the database writer has stopped",
                    None,
                ));
            }
            match done.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(message)) => Err(StoreError::permanent(message, None)),
                Err(_) => Err(StoreError::permanent(
                    "the database writer has stopped",
                    None,
                )),
            }
        }
    }

    /// Flushes, records a clean shutdown at `now`, and stops the writer.
    pub async fn close(&self, now: Nanos) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Close(now, ack)).is_ok() {
            let _ = done.await;
        }
        if let Some(h) = self.writer.lock().take() {
            let _ = h.join();
        }
        // The last connection to close copies what is left of the WAL and removes it: done
        // before this returns, so the directory can be reopened at once.
        if let Some(h) = self.checkpointer.lock().take() {
            let _ = h.join();
        }
    }
}

fn load(conn: &Connection) -> rusqlite::Result<Loaded> {
    let json_err = |e: serde_json::Error| rusqlite::Error::ToSqlConversionFailure(Box::new(e));
    let mut loaded = Loaded::default();
    let mut stmt = conn.prepare("SELECT key, spec FROM limits ORDER BY key")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
        let (key, spec) = row?;
        loaded
            .limits
            .push((key, serde_json::from_str(&spec).map_err(json_err)?));
    }
    let mut stmt = conn.prepare("SELECT name, spec FROM tasks ORDER BY name")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
        let (name, spec) = row?;
        loaded
            .tasks
            .push((name, serde_json::from_str(&spec).map_err(json_err)?));
    }
    let mut stmt = conn.prepare("SELECT data FROM runs ORDER BY seq")?;
    for row in stmt.query_map([], |r| r.get::<_, String>(0))? {
        loaded
            .runs
            .push(serde_json::from_str(&row?).map_err(json_err)?);
    }
    let meta = |key: &str| -> rusqlite::Result<Option<String>> {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
    };
    let mut stmt = conn.prepare("SELECT ns, key, spec, last_used FROM direct_use")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    for row in rows {
        let (ns, key, spec, last_used) = row?;
        let spec = match spec {
            Some(s) => Some(serde_json::from_str(&s).map_err(json_err)?),
            None => None,
        };
        loaded.direct_use.push(DirectUse {
            namespace: ns_parse(&ns),
            key,
            spec,
            last_used: Nanos::from_nanos(u64::try_from(last_used).unwrap_or(0)),
        });
    }
    let mut stmt = conn.prepare("SELECT ns, key, spec, state FROM states")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    for row in rows {
        let (ns, key, spec, state) = row?;
        loaded.states.push(StoredState {
            namespace: ns_parse(&ns),
            key,
            spec: serde_json::from_str(&spec).map_err(json_err)?,
            state: serde_json::from_str(&state).map_err(json_err)?,
        });
    }
    let mut stmt = conn.prepare("SELECT ns, key, id, holder, spec, expires_at FROM leases")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Option<String>>(4)?,
            r.get::<_, i64>(5)?,
        ))
    })?;
    for row in rows {
        let (ns, key, id, holder, spec, expires_at) = row?;
        loaded.leases.push(StoredLease {
            namespace: ns_parse(&ns),
            key,
            id,
            holder,
            spec: spec
                .map(|s| serde_json::from_str(&s))
                .transpose()
                .map_err(json_err)?,
            expires_at: instant(expires_at),
        });
    }
    let mut stmt = conn.prepare("SELECT key, parties, arrived, expires_at FROM barriers")?;
    let rows = stmt.query_map([], |r| {
        Ok(StoredBarrier {
            key: r.get(0)?,
            parties: r.get(1)?,
            arrived: r.get(2)?,
            expires_at: instant(r.get(3)?),
        })
    })?;
    for row in rows {
        loaded.barriers.push(row?);
    }
    let mut stmt = conn.prepare("SELECT ns, key, until FROM pauses ORDER BY ns, key")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            ns_parse(&r.get::<_, String>(0)?),
            r.get::<_, String>(1)?,
            instant(r.get(2)?),
        ))
    })?;
    for row in rows {
        loaded.pauses.push(row?);
    }
    loaded.last_time = meta("last_time")?
        .and_then(|v| v.parse().ok())
        .map(Nanos::from_nanos);
    loaded.clean_shutdown = meta("clean_shutdown")?.as_deref() != Some("false");
    Ok(loaded)
}

/// An instant as stored (nanoseconds since the Unix epoch in an INTEGER).
fn instant(n: i64) -> Nanos {
    Nanos::from_nanos(u64::try_from(n).unwrap_or(0))
}

/// An instant to store.
#[allow(clippy::cast_possible_wrap)] // nanoseconds since 1970 fit an i64 until 2262
fn stored(t: Nanos) -> i64 {
    t.as_nanos() as i64
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, String> {
    serde_json::to_string(v).map_err(|e| format!("cannot encode a record: {e}"))
}

/// Runs `sql` through the connection's statement cache: the writer runs the same few
/// statements tens of thousands of times a second, and compiling each one anew took about a
/// fifth of the single writer thread's time (`cargo bench -p tollgate-server --bench queue`).
fn exec(
    tx: &rusqlite::Transaction<'_>,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql)?.execute(params)
}

fn apply(tx: &rusqlite::Transaction<'_>, w: &Write) -> Result<(), String> {
    match w {
        Write::PutLimit { key, spec } => exec(
            tx,
            "INSERT OR REPLACE INTO limits (key, spec) VALUES (?1, ?2)",
            params![key, json(spec)?],
        ),
        Write::DeleteLimit { key } => exec(tx, "DELETE FROM limits WHERE key = ?1", params![key]),
        Write::PutTask { name, spec } => exec(
            tx,
            "INSERT OR REPLACE INTO tasks (name, spec) VALUES (?1, ?2)",
            params![name, json(spec)?],
        ),
        Write::DeleteRun { id } => exec(tx, "DELETE FROM runs WHERE id = ?1", params![id]),
        Write::DirectUse(d) => {
            let spec = d.spec.as_ref().map(json).transpose()?;
            exec(
                tx,
                "INSERT OR REPLACE INTO direct_use (ns, key, spec, last_used) VALUES (?1, ?2, ?3, ?4)",
                params![ns_name(d.namespace), d.key, spec, d.last_used.as_nanos() as i64],
            )
        }
        Write::ForgetDirectUse { namespace, key } => exec(
            tx,
            "DELETE FROM direct_use WHERE ns = ?1 AND key = ?2",
            params![ns_name(*namespace), key],
        ),
        Write::PutPause {
            namespace,
            key,
            until,
        } => exec(
            tx,
            "INSERT OR REPLACE INTO pauses (ns, key, until) VALUES (?1, ?2, ?3)",
            params![ns_name(*namespace), key, stored(*until)],
        ),
        Write::DeletePause { namespace, key } => exec(
            tx,
            "DELETE FROM pauses WHERE ns = ?1 AND key = ?2",
            params![ns_name(*namespace), key],
        ),
        Write::PutLease(l) => {
            let spec = l.spec.as_ref().map(json).transpose()?;
            exec(
                tx,
                "INSERT OR REPLACE INTO leases (ns, key, id, holder, spec, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![ns_name(l.namespace), l.key, l.id, l.holder, spec, stored(l.expires_at)],
            )
        }
        Write::RenewLease {
            namespace,
            key,
            id,
            expires_at,
        } => exec(
            tx,
            "UPDATE leases SET expires_at = MAX(expires_at, ?4)
             WHERE ns = ?1 AND key = ?2 AND id = ?3",
            params![ns_name(*namespace), key, id, stored(*expires_at)],
        ),
        Write::ForgetLease { namespace, key, id } => exec(
            tx,
            "DELETE FROM leases WHERE ns = ?1 AND key = ?2 AND id = ?3",
            params![ns_name(*namespace), key, id],
        ),
        Write::PutBarrier(b) => exec(
            tx,
            "INSERT INTO barriers (key, parties, arrived, expires_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (key) DO UPDATE SET
                 arrived = CASE WHEN excluded.expires_at = barriers.expires_at
                                THEN MAX(barriers.arrived, excluded.arrived)
                                ELSE excluded.arrived END,
                 parties = excluded.parties,
                 expires_at = excluded.expires_at
             WHERE excluded.expires_at >= barriers.expires_at",
            params![b.key, b.parties, b.arrived, stored(b.expires_at)],
        ),
        Write::ForgetExpired(now) => {
            exec(
                tx,
                "DELETE FROM leases WHERE expires_at <= ?1",
                params![stored(*now)],
            )
            .map_err(|e| format!("cannot write to the database: {e}"))?;
            exec(
                tx,
                "DELETE FROM barriers WHERE expires_at <= ?1",
                params![stored(*now)],
            )
        }
        Write::ReplaceStates(states) => {
            exec(tx, "DELETE FROM states", [])
                .map_err(|e| format!("cannot write to the database: {e}"))?;
            for st in states {
                exec(
                    tx,
                    "INSERT OR REPLACE INTO states (ns, key, spec, state) VALUES (?1, ?2, ?3, ?4)",
                    params![ns_name(st.namespace), st.key, json(&st.spec)?, json(&st.state)?],
                )
                .map_err(|e| format!("cannot write to the database: {e}"))?;
            }
            Ok(0)
        }
        Write::PutRun(run) => exec(
            tx,
            "INSERT OR REPLACE INTO runs (id, seq, task, state, data) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                run.id,
                run.seq as i64,
                run.task,
                run.state().as_str(),
                json(run.as_ref())?
            ],
        ),
    }
    .map(|_| ())
    .map_err(|e| format!("cannot write to the database: {e}"))
}

fn set_meta(tx: &rusqlite::Transaction<'_>, key: &str, value: &str) -> rusqlite::Result<usize> {
    exec(
        tx,
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
        params![key, value],
    )
}

thread_local! {
    /// The WAL's length in frames after the writer's last commit. SQLite reports it to a WAL
    /// hook, which is a plain function; the hook runs inside the commit, on the writer's own
    /// thread, so a thread-local hands the number back to that thread's loop.
    static WAL_FRAMES: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Replaces SQLite's automatic checkpoint on the writer's connection (a WAL hook and the
/// automatic checkpoint are the same slot): records the WAL's length, copies nothing.
fn note_wal_frames(_: &rusqlite::hooks::Wal, frames: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.with(|f| f.set(u32::try_from(frames).unwrap_or(0)));
    Ok(())
}

/// Checkpoints whenever the writer asks, until the writer stops. `PASSIVE`: copies what no
/// reader still needs without waiting for, or blocking, the writer.
fn checkpointer_loop(conn: Connection, nudged: mpsc::Receiver<()>) {
    while nudged.recv().is_ok() {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            // The writer's limit still bounds the WAL; the next nudge tries again.
            tracing::warn!(error = %e, "background WAL checkpoint failed");
        }
    }
}

fn writer_loop(
    mut conn: Connection,
    rx: mpsc::Receiver<Msg>,
    policy: WalPolicy,
    nudge: mpsc::SyncSender<()>,
) {
    conn.wal_hook(Some(note_wal_frames));
    let mut pending: Vec<(Vec<Write>, Ack)> = Vec::new();
    loop {
        let Ok(first) = rx.recv() else { return };
        let mut close = None;
        let mut latest = Nanos::ZERO;
        let mut count = 0;
        let take = |m: Msg, pending: &mut Vec<_>, close: &mut Option<_>, latest: &mut Nanos| match m
        {
            Msg::Batch(w, now, ack) => {
                *latest = (*latest).max(now);
                let n = w.len();
                pending.push((w, ack));
                n
            }
            Msg::Close(now, ack) => {
                *latest = (*latest).max(now);
                *close = Some(ack);
                0
            }
        };
        count += take(first, &mut pending, &mut close, &mut latest);
        while count < MAX_BATCH && close.is_none() {
            match rx.try_recv() {
                Ok(m) => count += take(m, &mut pending, &mut close, &mut latest),
                Err(_) => break,
            }
        }
        let result = (|| -> Result<(), String> {
            let tx = conn
                .transaction()
                .map_err(|e| format!("cannot begin a transaction: {e}"))?;
            for (writes, _) in &pending {
                for w in writes {
                    apply(&tx, w)?;
                }
            }
            set_meta(&tx, "last_time", &latest.as_nanos().to_string())
                .map_err(|e| e.to_string())?;
            if close.is_some() {
                set_meta(&tx, "clean_shutdown", "true").map_err(|e| e.to_string())?;
            }
            tx.commit().map_err(|e| format!("cannot commit: {e}"))
        })();
        for (_, ack) in pending.drain(..) {
            let _ = ack.send(result.clone());
        }
        if let Some(ack) = close {
            let _ = ack.send(());
            return;
        }
        // After the acknowledgements: only later commits can wait for this.
        let frames = WAL_FRAMES.with(std::cell::Cell::get);
        if frames >= policy.limit_frames {
            // Copies everything and makes the next commit start the WAL over; waits (busy
            // timeout) for a background checkpoint in progress.
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(())) {
                tracing::warn!(error = %e, frames, "WAL checkpoint at the limit failed");
            }
        } else if frames >= policy.checkpoint_frames {
            // Full: a checkpoint is already asked for.
            let _ = nudge.try_send(());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

    use super::*;

    /// One WAL frame: a 4 KiB page and its 24-byte header.
    const FRAME: u64 = 4_096 + 24;

    /// A write that adds a row of about 200 bytes.
    fn direct_use(i: u64) -> Write {
        Write::DirectUse(DirectUse {
            namespace: Namespace::Dynamic,
            key: format!("{i:0>200}"),
            spec: None,
            last_used: Nanos::from_secs(i),
        })
    }

    fn file_len(path: &Path) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }

    fn wal_path(dir: &Path) -> PathBuf {
        dir.join(format!("{DB_FILE}-wal"))
    }

    // Without a background checkpoint (or with one that never catches up with the writer), the
    // WAL grows with every commit; the writer's own limit is what bounds it.
    #[tokio::test]
    async fn the_wal_stays_within_its_limit_without_a_background_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let policy = WalPolicy {
            checkpoint_frames: 16,
            limit_frames: 64,
            background: false,
        };
        let (db, _) = Db::open_with(dir.path(), policy).unwrap();
        let wal = wal_path(dir.path());
        let mut largest = 0;
        for i in 0..3_000 {
            db.submit(vec![direct_use(i)], Nanos::from_secs(i))
                .await
                .unwrap();
            largest = largest.max(file_len(&wal));
        }
        // The limit, plus the frames of the one commit that crossed it (a few pages each), plus
        // the WAL's header. Unbounded, 3,000 commits of two or more frames each would be
        // about 25 MB.
        let bound = 32 + (64 + 16) * FRAME;
        assert!(
            largest <= bound,
            "the WAL reached {largest} bytes, over {bound}"
        );
        // Nothing committed was lost to the checkpoints (reopened without a clean close).
        drop(db);
        let (_db, loaded) = Db::open(dir.path()).unwrap();
        assert_eq!(loaded.direct_use.len(), 3_000);
        assert!(!loaded.clean_shutdown);
    }

    fn barrier(arrived: u32, expires_at: u64) -> Write {
        Write::PutBarrier(StoredBarrier {
            key: "b".into(),
            parties: 3,
            arrived,
            expires_at: Nanos::from_secs(expires_at),
        })
    }

    fn lease(id: &str, expires_at: u64) -> Write {
        Write::PutLease(StoredLease {
            namespace: Namespace::Static,
            key: "db".into(),
            id: id.into(),
            holder: "w1".into(),
            spec: None,
            expires_at: Nanos::from_secs(expires_at),
        })
    }

    // Journal writes of concurrent calls can commit in either order: a barrier's arrivals only
    // grow, an older barrier of the key never overwrites a newer one, a renewal never brings a
    // released lease back, and lapsed leases and barriers are forgotten.
    #[tokio::test]
    async fn leases_and_barriers_keep_the_latest_of_writes_in_any_order() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = Db::open(dir.path()).unwrap();
        let now = Nanos::from_secs(1);
        let renew = |id: &str, at: u64| Write::RenewLease {
            namespace: Namespace::Static,
            key: "db".into(),
            id: id.into(),
            expires_at: Nanos::from_secs(at),
        };
        let forget = |id: &str| Write::ForgetLease {
            namespace: Namespace::Static,
            key: "db".into(),
            id: id.into(),
        };
        let writes = vec![
            barrier(2, 100),
            barrier(1, 100), // an arrival committed late
            barrier(0, 50),  // an older barrier of the key
            lease("kept", 100),
            renew("kept", 300),
            renew("kept", 200), // a renewal committed late
            lease("gone", 100),
            forget("gone"),
            renew("gone", 300), // a renewal racing the release
            lease("lapsed", 10),
        ];
        db.submit(writes, now).await.unwrap();
        db.submit(vec![Write::ForgetExpired(Nanos::from_secs(20))], now)
            .await
            .unwrap();
        drop(db);
        let (db, loaded) = Db::open(dir.path()).unwrap();
        assert_eq!(
            loaded.barriers,
            [StoredBarrier {
                key: "b".into(),
                parties: 3,
                arrived: 2,
                expires_at: Nanos::from_secs(100)
            }]
        );
        let leases: Vec<(&str, Nanos)> = loaded
            .leases
            .iter()
            .map(|l| (l.id.as_str(), l.expires_at))
            .collect();
        assert_eq!(leases, [("kept", Nanos::from_secs(300))]);
        // A new barrier of the key (a later expiry) starts from its own arrivals.
        db.submit(vec![barrier(1, 400)], now).await.unwrap();
        drop(db);
        let (_db, loaded) = Db::open(dir.path()).unwrap();
        assert_eq!(loaded.barriers[0].arrived, 1);
    }

    // The writer never checkpoints below its limit (SQLite's automatic checkpoint is off), so
    // the database file only grows through the background connection's checkpoints.
    #[tokio::test]
    async fn the_background_checkpoint_copies_the_wal_into_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let policy = WalPolicy {
            checkpoint_frames: 16,
            limit_frames: u32::MAX,
            background: true,
        };
        let (db, _) = Db::open_with(dir.path(), policy).unwrap();
        let file = dir.path().join(DB_FILE);
        let before = file_len(&file);
        for i in 0..1_000 {
            db.submit(vec![direct_use(i)], Nanos::from_secs(i))
                .await
                .unwrap();
        }
        // 1,000 rows of 200 bytes and more: at least 200 kB must reach the database file.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while file_len(&file) < before + 200_000 {
            assert!(
                std::time::Instant::now() < deadline,
                "the database file stayed at {} bytes (from {before})",
                file_len(&file)
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        db.close(Nanos::from_secs(1_000)).await;
        let (_db, loaded) = Db::open(dir.path()).unwrap();
        assert_eq!(loaded.direct_use.len(), 1_000);
        assert!(loaded.clean_shutdown);
    }
}
