//! [`RedisStore`]: the [`AsyncStore`] trait over Redis, one script call per operation.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{Client, RedisResult, Value};
use smallvec::SmallVec;
use tollgate::{
    AcquireEntry, Acquired, AsyncStore, Error, LimitInfo, Namespace, Pause, StateView, StoreError,
    StoreFuture, Target, check_key, validate_entries,
};
use tollgate_core::{
    Barrier, BarrierStatus, Concurrency, Decision, LeaseDecision, Limit, Nanos, RateLimit, Usage,
};

use crate::conn::{Conn, redact};
use crate::keys::{self, Kind};
use crate::scripts::{self, Function, Scripts};
use crate::spec;

/// How a [`RedisStore`] connects and names its keys. From [`RedisStore::builder`].
#[derive(Clone)]
#[must_use]
pub struct Builder {
    url: String,
    prefix: String,
    use_server_time: bool,
    connect_timeout: Duration,
    response_timeout: Duration,
    expiry_slack: Duration,
    cluster: bool,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("url", &redact(&self.url))
            .field("prefix", &self.prefix)
            .field("use_server_time", &self.use_server_time)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("expiry_slack", &self.expiry_slack)
            .field("cluster", &self.cluster)
            .finish()
    }
}

impl Builder {
    /// The prefix of every Redis key this store writes (default `tollgate`). Stores with
    /// different prefixes share nothing. No braces, no control characters, 1 to 128 bytes.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Builder {
        self.prefix = prefix.into();
        self
    }

    /// Decide at Redis's own clock (`TIME`, read inside each script) instead of the `now` the
    /// caller passes (default `true`). Many nodes then share one clock, whatever their own
    /// clocks say; instants in answers (lease and barrier expiries) are on Redis's clock. Tests
    /// turn this off to drive time themselves.
    pub fn use_server_time(mut self, yes: bool) -> Builder {
        self.use_server_time = yes;
        self
    }

    /// The longest wait for a new connection, handshake included (default 500 ms). With the
    /// response timeout, this bounds how long a call can take while Redis is unreachable: 1.5 s
    /// by default, inside the server's 2 s budget for answering `store_unavailable`.
    pub fn connect_timeout(mut self, timeout: Duration) -> Builder {
        self.connect_timeout = timeout;
        self
    }

    /// The longest wait for one reply (default 1 s). A request that times out fails with a
    /// transient error; it may or may not have been applied.
    pub fn response_timeout(mut self, timeout: Duration) -> Builder {
        self.response_timeout = timeout;
        self
    }

    /// Added to every key's expiry (default 1 s). State expires once it is fresh, which is
    /// judged on the clock the decisions use; the slack covers the distance between that clock
    /// and Redis's (caller time, or a test's fake time that runs slower than the real one). A
    /// state is never forgotten while it still counts, as long as that distance stays below
    /// the slack.
    pub fn expiry_slack(mut self, slack: Duration) -> Builder {
        self.expiry_slack = slack;
        self
    }

    /// Use a Redis Cluster, `url` being one of its nodes (default `false`). Every key of the
    /// store then lives in one slot, the one of `{<prefix>}` (the prefix becomes the hash tag),
    /// so that every operation, the run queue's included, stays one atomic script as on a
    /// single server; the store talks to that slot's owner and finds it again after a
    /// failover or resharding (`MOVED`). One store's data is on one shard: deployments with
    /// different prefixes spread over the cluster.
    pub fn cluster(mut self, yes: bool) -> Builder {
        self.cluster = yes;
        self
    }

    /// The store. Does not connect: a node can start while Redis is down, and its requests
    /// fail with transient errors until Redis is back.
    ///
    /// # Errors
    /// A permanent [`StoreError`] for a URL that does not parse, a bad prefix, or a zero
    /// timeout. Messages never show the URL's password.
    pub fn build(self) -> Result<RedisStore, Error> {
        let url = redact(&self.url);
        let config = |msg: String| Error::Store(StoreError::permanent(msg, None));
        keys::check_prefix(&self.prefix).map_err(config)?;
        if self.connect_timeout.is_zero() || self.response_timeout.is_zero() {
            return Err(config(format!(
                "redis at {url}: timeouts must be longer than zero"
            )));
        }
        let client = Client::open(self.url.as_str()).map_err(|e| {
            // The client's own message may quote the URL: never pass it on.
            config(format!(
                "redis URL {url} is not valid ({:?}); expected redis://[user:password@]host[:port][/db]",
                e.kind()
            ))
        })?;
        let mut conn = Conn::new(client, url, self.connect_timeout, self.response_timeout);
        let prefix = if self.cluster {
            let tagged = format!("{{{}}}", self.prefix);
            conn = conn.in_cluster(tagged.clone());
            tagged
        } else {
            self.prefix
        };
        Ok(RedisStore {
            shared: Arc::new(Shared {
                conn,
                scripts: Scripts::new(),
                use_server_time: self.use_server_time,
                slack_ms: u64::try_from(self.expiry_slack.as_millis()).unwrap_or(u64::MAX),
                cluster: self.cluster,
            }),
            prefix: prefix.into(),
        })
    }
}

/// Limit definitions and state in Redis (or Valkey), shared by every node that uses the same
/// server and prefix. See the [crate docs](crate) for the layout and guarantees.
///
/// Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
    prefix: Arc<str>,
}

struct Shared {
    conn: Conn,
    scripts: Scripts,
    use_server_time: bool,
    slack_ms: u64,
    cluster: bool,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.shared.conn.url())
            .field("prefix", &self.prefix)
            .field("use_server_time", &self.shared.use_server_time)
            .finish_non_exhaustive()
    }
}

/// One distinct key of a multi-key request: the last entry's target, the summed units.
struct Group<'a> {
    target: Target<'a, RateLimit>,
    units: u64,
}

impl RedisStore {
    /// A store at `url` (`redis://[user:password@]host[:port][/db]`) with the defaults of
    /// [`Builder`].
    ///
    /// # Errors
    /// As [`Builder::build`].
    pub fn open(url: &str) -> Result<RedisStore, Error> {
        RedisStore::builder(url).build()
    }

    /// A builder for a store at `url`.
    pub fn builder(url: impl Into<String>) -> Builder {
        Builder {
            url: url.into(),
            prefix: "tollgate".into(),
            use_server_time: true,
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_secs(1),
            expiry_slack: Duration::from_secs(1),
            cluster: false,
        }
    }

    /// The same server and connections under another key prefix.
    ///
    /// # Errors
    /// A permanent [`StoreError`] for a bad prefix.
    pub fn with_prefix(&self, prefix: &str) -> Result<RedisStore, Error> {
        keys::check_prefix(prefix).map_err(|m| Error::Store(StoreError::permanent(m, None)))?;
        if self.shared.cluster {
            // The connections go to the owner of the old prefix's slot.
            return Err(Error::Store(StoreError::permanent(
                "a cluster store's prefix names its slot and cannot change: build another store",
                None,
            )));
        }
        Ok(RedisStore {
            shared: Arc::clone(&self.shared),
            prefix: prefix.into(),
        })
    }

    /// The key prefix (in a cluster, wrapped in braces: the hash tag of every key).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The server's URL, password redacted.
    pub fn url(&self) -> &str {
        self.shared.conn.url()
    }

    /// Checks that Redis answers and is recent enough (Redis 7.0 or Valkey 7.2, for Redis
    /// Functions), and loads Tollgate's library of functions into it. Calls load the library
    /// themselves when Redis does not have it, so this is optional; a node runs it at start.
    ///
    /// # Errors
    /// A transient [`StoreError`] when Redis does not answer (in time); a permanent one naming
    /// the version found and the minimum when the server is older.
    pub async fn ping(&self) -> Result<(), Error> {
        self.shared
            .conn
            .run("loading the functions", |mut con| async move {
                redis::cmd("PING").query_async::<String>(&mut con).await?;
                scripts::load(&mut con).await
            })
            .await
    }

    /// The Redis key holding `kind` for Tollgate key `key` (the queue stores these in runs).
    pub(crate) fn key(&self, kind: Kind, key: &str) -> String {
        keys::name(&self.prefix, kind, key)
    }

    /// The expiry slack in milliseconds.
    pub(crate) fn slack_ms(&self) -> u64 {
        self.shared.slack_ms
    }

    /// The library's functions (loaded at start and whenever Redis lacks them).
    pub(crate) fn scripts(&self) -> &Scripts {
        &self.shared.scripts
    }

    /// Runs `f` on the shared connection (see [`Conn::run`]).
    pub(crate) async fn run<T, F, Fut>(&self, what: &str, f: F) -> Result<T, Error>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.shared.conn.run(what, f).await
    }

    /// A permanent error for data Tollgate cannot read.
    pub(crate) fn corrupt(&self, what: impl std::fmt::Display) -> Error {
        self.shared.conn.corrupt(what)
    }

    /// Listens on `channel` until the connection fails or `closed` resolves, calling
    /// `on_message` for every message. Returns `Ok` only when `closed` resolved.
    pub(crate) async fn subscribe(
        &self,
        channel: &str,
        closed: impl Future<Output = ()>,
        on_message: &(dyn Fn() + Sync),
    ) -> Result<(), Error> {
        self.shared
            .conn
            .subscribe(channel, closed, on_message)
            .await
    }

    /// `now` for the scripts: whole microseconds, or empty for Redis `TIME`.
    pub(crate) fn now_arg(&self, now: Nanos) -> String {
        if self.shared.use_server_time {
            String::new()
        } else {
            (now.as_nanos() / 1_000).to_string()
        }
    }

    /// Calls one function of the library (`FCALL`); when Redis lacks it, loads the library
    /// and calls again, once.
    pub(crate) async fn call(
        &self,
        what: &str,
        script: &Function,
        keys: &[String],
        args: &[String],
    ) -> Result<Value, Error> {
        let cmd = &self.shared.scripts.fcall_cmd(script, keys, args);
        self.shared
            .conn
            .run(
                what,
                |mut con| async move { scripts::call(&mut con, cmd).await },
            )
            .await
    }

    pub(crate) fn bad_reply(&self, what: &str, reply: &Value) -> Error {
        self.shared
            .conn
            .corrupt(format_args!("unexpected reply to {what}: {reply:?}"))
    }

    /// Calls acquire.lua or refund.lua on grouped keys; returns the reply's items.
    async fn rate_call(
        &self,
        what: &str,
        script: &Function,
        groups: &[Group<'_>],
        now: Nanos,
    ) -> Result<Vec<Value>, Error> {
        let mut keys = Vec::with_capacity(groups.len() * 3);
        let mut args = Vec::with_capacity(3 + groups.len() * 3);
        args.push(self.now_arg(now));
        args.push(self.shared.slack_ms.to_string());
        args.push(groups.len().to_string());
        for g in groups {
            match g.target {
                Target::Static(k) => {
                    keys.push(self.key(Kind::Def, k));
                    keys.push(self.key(Kind::StaticRate, k));
                    keys.push(self.key(Kind::StaticPause, k));
                    args.extend(["s".to_owned(), g.units.to_string(), String::new()]);
                }
                Target::Dynamic(k, limit) => {
                    keys.push(self.key(Kind::DynamicLeases, k));
                    keys.push(self.key(Kind::DynamicRate, k));
                    keys.push(self.key(Kind::DynamicPause, k));
                    args.extend(["d".to_owned(), g.units.to_string(), spec::rate(&limit)]);
                }
            }
        }
        let reply = self.call(what, script, &keys, &args).await?;
        let Value::Array(items) = reply else {
            return Err(self.bad_reply(what, &reply));
        };
        if items.first().and_then(int) == Some(-1) {
            return Err(self.rate_error(what, &items, groups));
        }
        Ok(items)
    }

    fn rate_error(&self, what: &str, items: &[Value], groups: &[Group<'_>]) -> Error {
        let group = items
            .get(1)
            .and_then(int)
            .and_then(|i| usize::try_from(i - 1).ok())
            .and_then(|i| groups.get(i));
        let code = items.get(2).and_then(text);
        let detail = items.get(3);
        let (Some(g), Some(code), Some(detail)) = (group, code, detail) else {
            return self.bad_reply(what, &Value::Array(items.to_vec()));
        };
        let key = g.target.key().to_owned();
        match code.as_str() {
            "unknown" => Error::UnknownLimit { key },
            "wrong" => match text(detail).as_deref().and_then(spec::algorithm) {
                Some(found) => Error::WrongAlgorithm {
                    key,
                    expected: "a rate limit",
                    found,
                },
                None => self.shared.conn.corrupt(format_args!(
                    "key {key:?} holds a definition Tollgate cannot read"
                )),
            },
            "capacity" => Error::InsufficientCapacity {
                key,
                units: g.units,
                capacity: count(detail).unwrap_or(0),
            },
            _ => self.shared.conn.corrupt(format_args!(
                "key {key:?} holds a {} Tollgate cannot read",
                text(detail).unwrap_or_default()
            )),
        }
    }

    /// Calls lease.lua; returns the reply's items after the status.
    async fn lease_call(
        &self,
        op: &str,
        target: Target<'_, Concurrency>,
        lease_id: &str,
        holder: &str,
        ttl: Option<Nanos>,
        now: Nanos,
    ) -> Result<Vec<Value>, Error> {
        let key = target.key();
        check_key(key)?;
        let (kinds, ns, spec) = match target {
            Target::Static(_) => (
                [Kind::Def, Kind::StaticLeases, Kind::StaticHolders],
                "s",
                String::new(),
            ),
            Target::Dynamic(_, c) => (
                [Kind::DynamicRate, Kind::DynamicLeases, Kind::DynamicHolders],
                "d",
                spec::concurrency(&c),
            ),
        };
        let keys = kinds.map(|k| self.key(k, key));
        let args = [
            self.now_arg(now),
            op.to_owned(),
            ns.to_owned(),
            lease_id.to_owned(),
            holder.to_owned(),
            ttl.map_or_else(String::new, |t| spec::micros_ceil(t).to_string()),
            spec,
            self.shared.slack_ms.to_string(),
        ];
        let what = format!("lease {op}");
        let reply = self
            .call(&what, &self.shared.scripts.lease, &keys, &args)
            .await?;
        let Value::Array(mut items) = reply else {
            return Err(self.bad_reply(&what, &reply));
        };
        match items.first().and_then(int) {
            Some(1) => Ok(items.split_off(1)),
            Some(-1) => {
                let code = items.get(1).and_then(text).unwrap_or_default();
                let detail = items.get(2).and_then(text).unwrap_or_default();
                Err(match code.as_str() {
                    "unknown" => Error::UnknownLimit {
                        key: key.to_owned(),
                    },
                    "wrong" => match spec::algorithm(&detail) {
                        Some(found) => Error::WrongAlgorithm {
                            key: key.to_owned(),
                            expected: "a concurrency limit",
                            found,
                        },
                        None => self.bad_reply(&what, &Value::Array(items)),
                    },
                    "not_held" => Error::Core(tollgate_core::Error::LeaseNotHeld {
                        lease_id: lease_id.to_owned(),
                    }),
                    _ => self.shared.conn.corrupt(format_args!(
                        "key {key:?} holds a {detail} Tollgate cannot read"
                    )),
                })
            }
            _ => Err(self.bad_reply(&what, &Value::Array(items))),
        }
    }

    async fn barrier_call(
        &self,
        op: &str,
        key: &str,
        barrier: Option<Barrier>,
        now: Nanos,
    ) -> Result<BarrierStatus, Error> {
        check_key(key)?;
        let (parties, ttl) = barrier.map_or((String::new(), String::new()), |b| {
            (
                b.parties().to_string(),
                spec::micros_ceil(b.ttl().as_nanos()).to_string(),
            )
        });
        let args = [
            self.now_arg(now),
            op.to_owned(),
            parties,
            ttl,
            self.shared.slack_ms.to_string(),
        ];
        let what = format!("barrier {op}");
        let reply = self
            .call(
                &what,
                &self.shared.scripts.barrier,
                &[self.key(Kind::Barrier, key)],
                &args,
            )
            .await?;
        let items = match &reply {
            Value::Array(items) => items.as_slice(),
            _ => &[],
        };
        match items.first().and_then(int) {
            Some(1) => {
                let parse = || -> Option<BarrierStatus> {
                    let parties = u32::try_from(int(items.get(1)?)?).ok()?;
                    let arrived = u32::try_from(int(items.get(2)?)?).ok()?;
                    Some(BarrierStatus {
                        released: arrived >= parties,
                        arrived,
                        parties,
                        expires_at: micros(items.get(3)?)?,
                    })
                };
                parse().ok_or_else(|| self.bad_reply(&what, &reply))
            }
            Some(-1) => Err(Error::Core(match items.get(2).and_then(micros) {
                Some(expired_at) => tollgate_core::Error::BarrierExpired { expired_at },
                None => tollgate_core::Error::BarrierMissing,
            })),
            _ => Err(self.bad_reply(&what, &reply)),
        }
    }

    /// A static limit's info from view_static.lua's reply.
    fn static_info(&self, key: &str, reply: &Value) -> Result<Option<LimitInfo>, Error> {
        let items = match reply {
            Value::Array(items) => items,
            Value::Nil => return Ok(None),
            _ => return Err(self.bad_reply("view", reply)),
        };
        let corrupt = || {
            self.shared.conn.corrupt(format_args!(
                "the static limit {key:?} holds data Tollgate cannot read"
            ))
        };
        let limit = items
            .first()
            .and_then(text)
            .and_then(|s| spec::parse(&s))
            .ok_or_else(corrupt)?;
        let state = match (items.get(1).and_then(text).as_deref(), &limit) {
            (Some("rate"), Limit::Rate(_)) => {
                StateView::Rate(usage(&items[2..]).ok_or_else(corrupt)?)
            }
            (Some("conc"), Limit::Concurrency(c)) => StateView::Concurrency {
                live: items.get(2).and_then(count).ok_or_else(corrupt)?,
                limit: u64::from(c.limit()),
            },
            (Some("bar"), Limit::Barrier(_)) => return Ok(None),
            _ => return Err(corrupt()),
        };
        Ok(Some(LimitInfo {
            key: key.to_owned(),
            namespace: Namespace::Static,
            limit,
            state,
        }))
    }

    /// A dynamic key's info from view_dynamic.lua's reply.
    fn dynamic_info(&self, key: &str, reply: &Value) -> Result<Option<LimitInfo>, Error> {
        let items = match reply {
            Value::Array(items) => items,
            Value::Nil => return Ok(None),
            _ => return Err(self.bad_reply("view", reply)),
        };
        let corrupt = || {
            self.shared.conn.corrupt(format_args!(
                "the dynamic key {key:?} holds data Tollgate cannot read"
            ))
        };
        let limit = items
            .get(1)
            .and_then(text)
            .and_then(|s| spec::parse(&s))
            .ok_or_else(corrupt)?;
        let state = match (items.first().and_then(text).as_deref(), &limit) {
            (Some("rate"), Limit::Rate(_)) => {
                StateView::Rate(usage(&items[2..]).ok_or_else(corrupt)?)
            }
            (Some("conc"), Limit::Concurrency(c)) => StateView::Concurrency {
                live: items.get(2).and_then(count).ok_or_else(corrupt)?,
                limit: u64::from(c.limit()),
            },
            _ => return Err(corrupt()),
        };
        Ok(Some(LimitInfo {
            key: key.to_owned(),
            namespace: Namespace::Dynamic,
            limit,
            state,
        }))
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn count(v: &Value) -> Option<u64> {
    int(v).and_then(|i| u64::try_from(i).ok())
}

/// An instant or duration the scripts give in microseconds.
fn micros(v: &Value) -> Option<Nanos> {
    count(v).map(Nanos::from_micros)
}

/// A duration the scripts give in nanoseconds (as a decimal string: exact beyond 2^53).
fn nanos(v: &Value) -> Option<Nanos> {
    count(v).map(Nanos::from_nanos)
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// `[limit, used, remaining, reset_after_ns]`
fn usage(items: &[Value]) -> Option<Usage> {
    Some(Usage {
        limit: count(items.first()?)?,
        used: count(items.get(1)?)?,
        remaining: count(items.get(2)?)?,
        reset_after: nanos(items.get(3)?)?,
    })
}

/// `"allowed limit remaining retry_after_ns reset_after_ns"`, one string per key (decimal
/// integers: nanoseconds stay exact beyond 2^53).
fn decision(item: &Value) -> Option<Decision> {
    let Value::BulkString(b) = item else {
        return None;
    };
    let mut n = std::str::from_utf8(b)
        .ok()?
        .split(' ')
        .map(|v| v.parse::<u64>().ok());
    let d = Decision {
        allowed: n.next()?? == 1,
        limit: n.next()??,
        remaining: n.next()??,
        retry_after: Nanos::from_nanos(n.next()??),
        reset_after: Nanos::from_nanos(n.next()??),
    };
    n.next().is_none().then_some(d)
}

/// Distinct keys in first-appearance order with summed units and the last entry's target
/// (last writer wins for a dynamic key's parameters), and each entry's index into them.
fn group<'a>(entries: &[AcquireEntry<'a>]) -> (SmallVec<[Group<'a>; 4]>, SmallVec<[usize; 4]>) {
    let mut groups: SmallVec<[Group<'a>; 4]> = SmallVec::new();
    let mut index = SmallVec::with_capacity(entries.len());
    for e in entries {
        let found = groups.iter().position(|g| {
            g.target.namespace() == e.target.namespace() && g.target.key() == e.target.key()
        });
        match found {
            Some(i) => {
                groups[i].target = e.target;
                groups[i].units += u64::from(e.units);
                index.push(i);
            }
            None => {
                index.push(groups.len());
                groups.push(Group {
                    target: e.target,
                    units: u64::from(e.units),
                });
            }
        }
    }
    (groups, index)
}

/// Every Redis key matching `pattern`, by `SCAN` (never `KEYS`: it would block the server).
async fn scan(con: &mut MultiplexedConnection, pattern: &str) -> RedisResult<Vec<String>> {
    let mut cursor: u64 = 0;
    let mut out = Vec::new();
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1_000)
            .query_async(con)
            .await?;
        out.extend(batch.into_iter().filter_map(|b| String::from_utf8(b).ok()));
        if next == 0 {
            return Ok(out);
        }
        cursor = next;
    }
}

/// Calls a function once per key in pipelines of `CHUNK` (loading the library when Redis lacks
/// it).
async fn views(
    con: &mut MultiplexedConnection,
    scripts: &Scripts,
    f: &Function,
    keys: &[[String; 3]],
    now: &str,
) -> RedisResult<Vec<Value>> {
    const CHUNK: usize = 256;
    let now = [now.to_owned()];
    let mut out = Vec::with_capacity(keys.len());
    if keys.is_empty() {
        return Ok(out);
    }
    for chunk in keys.chunks(CHUNK) {
        let mut pipe = redis::pipe();
        for k in chunk {
            pipe.add_command(scripts.fcall_cmd(f, k, &now));
        }
        out.extend(scripts::call_pipeline(con, &pipe).await?);
    }
    Ok(out)
}

/// A pause's Redis keys and index member (docs/design.md §3.13, §9.2).
pub(crate) struct PauseKeys {
    /// The pause index (a ZSET of members by when each pause ends).
    pub(crate) index: String,
    /// The key's pause.
    pub(crate) key: String,
    /// The key's member in the index: `"<s|d>\t<key>"`.
    pub(crate) member: String,
}

impl RedisStore {
    /// The pause index: every pause in force, by when it ends.
    fn pause_index(&self) -> String {
        format!("{}:pauses", self.prefix)
    }

    /// The Redis keys of `key`'s pause.
    pub(crate) fn pause_keys(&self, namespace: Namespace, key: &str) -> PauseKeys {
        let (kind, code) = match namespace {
            Namespace::Dynamic => (Kind::DynamicPause, "d"),
            _ => (Kind::StaticPause, "s"),
        };
        PauseKeys {
            index: self.pause_index(),
            key: self.key(kind, key),
            member: format!("{code}\t{key}"),
        }
    }

    /// The pauses in a `pause list` reply.
    fn parse_pauses(&self, reply: &Value) -> Result<Vec<Pause>, Error> {
        let Value::Array(items) = reply else {
            return Err(self.bad_reply("list pauses", reply));
        };
        let mut out = Vec::with_capacity(items.len() / 2);
        for pair in items.chunks(2) {
            let parsed = (|| {
                let member = text(pair.first()?)?;
                let until = text(pair.get(1)?)?.parse::<f64>().ok()?;
                let (code, key) = member.split_once('\t')?;
                let namespace = match code {
                    "d" => Namespace::Dynamic,
                    _ => Namespace::Static,
                };
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let until = Nanos::from_micros(until as u64);
                Some(Pause {
                    namespace,
                    key: key.to_owned(),
                    until,
                })
            })();
            out.push(parsed.ok_or_else(|| self.bad_reply("list pauses", reply))?);
        }
        out.sort_by(|a, b| (a.namespace, &a.key).cmp(&(b.namespace, &b.key)));
        Ok(out)
    }
}

/// The bodies of the [`AsyncStore`] operations (named apart so that they never shadow the
/// trait's methods for callers).
impl RedisStore {
    async fn pause_op(
        &self,
        namespace: Namespace,
        key: &str,
        until: Nanos,
        now: Nanos,
    ) -> Result<Nanos, Error> {
        check_key(key)?;
        let k = self.pause_keys(namespace, key);
        let reply = self
            .call(
                "pause a key",
                &self.shared.scripts.pause,
                &[k.index, k.key],
                &[
                    self.now_arg(now),
                    "set".to_owned(),
                    k.member,
                    spec::micros_ceil(until).to_string(),
                    self.shared.slack_ms.to_string(),
                ],
            )
            .await?;
        micros(&reply).ok_or_else(|| self.bad_reply("pause a key", &reply))
    }

    async fn resume_op(&self, namespace: Namespace, key: &str, now: Nanos) -> Result<bool, Error> {
        check_key(key)?;
        let k = self.pause_keys(namespace, key);
        let reply = self
            .call(
                "end a pause",
                &self.shared.scripts.pause,
                &[k.index, k.key],
                &[self.now_arg(now), "clear".to_owned(), k.member],
            )
            .await?;
        int(&reply)
            .map(|n| n == 1)
            .ok_or_else(|| self.bad_reply("end a pause", &reply))
    }

    async fn pauses_op(&self, now: Nanos) -> Result<Vec<Pause>, Error> {
        let index = self.pause_index();
        let reply = self
            .call(
                "list pauses",
                &self.shared.scripts.pause,
                &[index],
                &[self.now_arg(now), "list".to_owned()],
            )
            .await?;
        self.parse_pauses(&reply)
    }

    async fn put_limit_op(&self, key: &str, limit: Limit) -> Result<(), Error> {
        check_key(key)?;
        let keys = [
            Kind::Def,
            Kind::StaticRate,
            Kind::StaticLeases,
            Kind::StaticHolders,
        ]
        .map(|k| self.key(k, key));
        self.call(
            "put_limit",
            &self.shared.scripts.put_limit,
            &keys,
            &[spec::limit(&limit)],
        )
        .await
        .map(drop)
    }

    async fn remove_limit_op(&self, key: &str) -> Result<bool, Error> {
        check_key(key)?;
        let keys = [
            Kind::Def,
            Kind::StaticRate,
            Kind::StaticLeases,
            Kind::StaticHolders,
        ]
        .map(|k| self.key(k, key));
        let reply = self
            .call(
                "remove_limit",
                &self.shared.scripts.remove_limit,
                &keys,
                &[],
            )
            .await?;
        match int(&reply) {
            Some(n) => Ok(n == 1),
            None => Err(self.bad_reply("remove_limit", &reply)),
        }
    }

    async fn get_limit_op(&self, key: &str, now: Nanos) -> Result<Option<LimitInfo>, Error> {
        check_key(key)?;
        let keys = [Kind::Def, Kind::StaticRate, Kind::StaticLeases].map(|k| self.key(k, key));
        let reply = self
            .call(
                "get_limit",
                &self.shared.scripts.view_static,
                &keys,
                &[self.now_arg(now)],
            )
            .await?;
        self.static_info(key, &reply)
    }

    async fn get_dynamic_op(&self, key: &str, now: Nanos) -> Result<Option<LimitInfo>, Error> {
        check_key(key)?;
        let keys = [Kind::DynamicRate, Kind::DynamicLeases, Kind::DynamicHolders]
            .map(|k| self.key(k, key));
        let reply = self
            .call(
                "get a dynamic key",
                &self.shared.scripts.view_dynamic,
                &keys,
                &[self.now_arg(now)],
            )
            .await?;
        self.dynamic_info(key, &reply)
    }

    async fn list_limits_op(&self, now: Nanos) -> Result<Vec<LimitInfo>, Error> {
        let prefix = &*self.prefix;
        let now = &self.now_arg(now);
        let scripts = &self.shared.scripts;
        let (statics, static_views, dynamics, dynamic_views) = self
            .shared
            .conn
            .run("list_limits", |mut con| async move {
                let con = &mut con;
                let statics: Vec<String> = scan(con, &keys::pattern(prefix, Kind::Def))
                    .await?
                    .iter()
                    .filter_map(|n| keys::parse(prefix, Kind::Def, n))
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let mut dynamics = BTreeSet::new();
                for kind in [Kind::DynamicRate, Kind::DynamicLeases] {
                    for n in scan(con, &keys::pattern(prefix, kind)).await? {
                        dynamics.extend(keys::parse(prefix, kind, &n));
                    }
                }
                let dynamics: Vec<String> = dynamics.into_iter().collect();
                let static_keys: Vec<[String; 3]> = statics
                    .iter()
                    .map(|k| {
                        [Kind::Def, Kind::StaticRate, Kind::StaticLeases]
                            .map(|kind| keys::name(prefix, kind, k))
                    })
                    .collect();
                let dynamic_keys: Vec<[String; 3]> = dynamics
                    .iter()
                    .map(|k| {
                        [Kind::DynamicRate, Kind::DynamicLeases, Kind::DynamicHolders]
                            .map(|kind| keys::name(prefix, kind, k))
                    })
                    .collect();
                let static_views =
                    views(con, scripts, &scripts.view_static, &static_keys, now).await?;
                let dynamic_views =
                    views(con, scripts, &scripts.view_dynamic, &dynamic_keys, now).await?;
                Ok((statics, static_views, dynamics, dynamic_views))
            })
            .await?;
        let mut out = Vec::new();
        for (k, v) in statics.iter().zip(&static_views) {
            out.extend(self.static_info(k, v)?);
        }
        for (k, v) in dynamics.iter().zip(&dynamic_views) {
            out.extend(self.dynamic_info(k, v)?);
        }
        out.sort_by(|a, b| (a.namespace, &a.key).cmp(&(b.namespace, &b.key)));
        Ok(out)
    }

    async fn acquire_op(
        &self,
        entries: &[AcquireEntry<'_>],
        now: Nanos,
    ) -> Result<Acquired, Error> {
        validate_entries(entries)?;
        let (groups, index) = group(entries);
        let items = self
            .rate_call("acquire", &self.shared.scripts.acquire, &groups, now)
            .await?;
        let per_key: Option<SmallVec<[Decision; 4]>> = (0..groups.len())
            .map(|i| decision(items.get(1 + i)?))
            .collect();
        let (Some(per_key), Some(allowed)) = (per_key, items.first().and_then(int)) else {
            return Err(self.bad_reply("acquire", &Value::Array(items)));
        };
        Ok(Acquired {
            allowed: allowed == 1,
            decisions: index.iter().map(|&i| per_key[i]).collect(),
        })
    }

    async fn refund_op(&self, entries: &[AcquireEntry<'_>], now: Nanos) -> Result<(), Error> {
        validate_entries(entries)?;
        let (mut groups, _) = group(entries);
        for g in &mut groups {
            // The core refunds at most u32::MAX units at once.
            g.units = g.units.min(u64::from(u32::MAX));
        }
        self.rate_call("refund", &self.shared.scripts.refund, &groups, now)
            .await
            .map(drop)
    }

    async fn lease_acquire_op(
        &self,
        target: Target<'_, Concurrency>,
        lease_id: &str,
        holder: &str,
        ttl: Option<Nanos>,
        now: Nanos,
    ) -> Result<LeaseDecision, Error> {
        let items = self
            .lease_call("acquire", target, lease_id, holder, ttl, now)
            .await?;
        let parse = || -> Option<LeaseDecision> {
            Some(LeaseDecision {
                acquired: int(items.first()?)? == 1,
                limit: count(items.get(1)?)?,
                remaining: count(items.get(2)?)?,
                expires_at: micros(items.get(3)?)?,
                retry_after: micros(items.get(4)?)?,
            })
        };
        parse().ok_or_else(|| self.bad_reply("lease acquire", &Value::Array(items.clone())))
    }

    async fn lease_renew_op(
        &self,
        target: Target<'_, Concurrency>,
        lease_id: &str,
        ttl: Option<Nanos>,
        now: Nanos,
    ) -> Result<Nanos, Error> {
        let items = self
            .lease_call("renew", target, lease_id, "", ttl, now)
            .await?;
        items
            .first()
            .and_then(micros)
            .ok_or_else(|| self.bad_reply("lease renew", &Value::Array(items.clone())))
    }

    async fn lease_release_op(
        &self,
        target: Target<'_, Concurrency>,
        lease_id: &str,
        now: Nanos,
    ) -> Result<bool, Error> {
        let items = self
            .lease_call("release", target, lease_id, "", None, now)
            .await?;
        items
            .first()
            .and_then(int)
            .map(|w| w == 1)
            .ok_or_else(|| self.bad_reply("lease release", &Value::Array(items.clone())))
    }
}

impl AsyncStore for RedisStore {
    fn put_limit<'a>(&'a self, key: &'a str, limit: Limit, _now: Nanos) -> StoreFuture<'a, ()> {
        Box::pin(RedisStore::put_limit_op(self, key, limit))
    }

    fn remove_limit<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(RedisStore::remove_limit_op(self, key))
    }

    fn get_limit<'a>(&'a self, key: &'a str, now: Nanos) -> StoreFuture<'a, Option<LimitInfo>> {
        Box::pin(RedisStore::get_limit_op(self, key, now))
    }

    fn list_limits(&self, now: Nanos) -> StoreFuture<'_, Vec<LimitInfo>> {
        Box::pin(RedisStore::list_limits_op(self, now))
    }

    fn get_dynamic<'a>(&'a self, key: &'a str, now: Nanos) -> StoreFuture<'a, Option<LimitInfo>> {
        Box::pin(RedisStore::get_dynamic_op(self, key, now))
    }

    fn acquire<'a>(
        &'a self,
        entries: &'a [AcquireEntry<'a>],
        now: Nanos,
    ) -> StoreFuture<'a, Acquired> {
        Box::pin(RedisStore::acquire_op(self, entries, now))
    }

    fn refund<'a>(&'a self, entries: &'a [AcquireEntry<'a>], now: Nanos) -> StoreFuture<'a, ()> {
        Box::pin(RedisStore::refund_op(self, entries, now))
    }

    fn lease_acquire<'a>(
        &'a self,
        target: Target<'a, Concurrency>,
        lease_id: &'a str,
        holder: &'a str,
        ttl: Option<Nanos>,
        now: Nanos,
    ) -> StoreFuture<'a, LeaseDecision> {
        Box::pin(RedisStore::lease_acquire_op(
            self, target, lease_id, holder, ttl, now,
        ))
    }

    fn lease_renew<'a>(
        &'a self,
        target: Target<'a, Concurrency>,
        lease_id: &'a str,
        ttl: Option<Nanos>,
        now: Nanos,
    ) -> StoreFuture<'a, Nanos> {
        Box::pin(RedisStore::lease_renew_op(self, target, lease_id, ttl, now))
    }

    fn lease_release<'a>(
        &'a self,
        target: Target<'a, Concurrency>,
        lease_id: &'a str,
        now: Nanos,
    ) -> StoreFuture<'a, bool> {
        Box::pin(RedisStore::lease_release_op(self, target, lease_id, now))
    }

    fn barrier_create<'a>(
        &'a self,
        key: &'a str,
        barrier: Barrier,
        now: Nanos,
    ) -> StoreFuture<'a, BarrierStatus> {
        Box::pin(self.barrier_call("create", key, Some(barrier), now))
    }

    fn barrier_arrive<'a>(&'a self, key: &'a str, now: Nanos) -> StoreFuture<'a, BarrierStatus> {
        Box::pin(self.barrier_call("arrive", key, None, now))
    }

    fn barrier_status<'a>(&'a self, key: &'a str, now: Nanos) -> StoreFuture<'a, BarrierStatus> {
        Box::pin(self.barrier_call("status", key, None, now))
    }

    /// Redis forgets idle keys by itself: every state key expires once it is fresh (plus the
    /// expiry slack), so there is nothing to sweep. Returns 0.
    fn sweep(&self, _now: Nanos) -> StoreFuture<'_, usize> {
        Box::pin(std::future::ready(Ok(0)))
    }

    fn pause<'a>(
        &'a self,
        namespace: Namespace,
        key: &'a str,
        until: Nanos,
        now: Nanos,
    ) -> StoreFuture<'a, Nanos> {
        Box::pin(RedisStore::pause_op(self, namespace, key, until, now))
    }

    fn resume<'a>(
        &'a self,
        namespace: Namespace,
        key: &'a str,
        now: Nanos,
    ) -> StoreFuture<'a, bool> {
        Box::pin(RedisStore::resume_op(self, namespace, key, now))
    }

    fn pauses(&self, now: Nanos) -> StoreFuture<'_, Vec<Pause>> {
        Box::pin(RedisStore::pauses_op(self, now))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_decision_is_read_from_its_one_string_exactly() {
        let d = decision(&bulk("0 5 2 18446744073709551615 9007199254740993")).unwrap();
        assert!(!d.allowed);
        assert_eq!((d.limit, d.remaining), (5, 2));
        assert_eq!(d.retry_after, Nanos::from_nanos(u64::MAX));
        assert_eq!(d.reset_after, Nanos::from_nanos(9_007_199_254_740_993));
        assert!(decision(&bulk("1 5 4 0 0000")).unwrap().allowed);
    }

    #[test]
    fn a_decision_of_the_wrong_shape_is_refused() {
        for bad in [
            "",
            "1 5 4 0",
            "1 5 4 0 0 0",
            "1 5 -4 0 0",
            "1 5 x 0 0",
            "1  5 4 0 0",
        ] {
            assert!(decision(&bulk(bad)).is_none(), "{bad:?}");
        }
        assert!(decision(&Value::Int(1)).is_none());
    }
}
