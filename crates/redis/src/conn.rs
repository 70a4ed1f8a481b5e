//! The connection: one multiplexed asynchronous connection (every call in flight pipelines on
//! it, none blocks a runtime thread) with bounded timeouts, fail-fast while Redis is down, the
//! slot owner's lookup in a Redis Cluster, and the mapping of Redis failures onto
//! [`StoreError`] (transient or not), with passwords redacted.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ErrorKind, RedisError, RedisResult, ServerErrorKind};
use tollgate::{Error, StoreError};

/// The connection every call shares, made on first use and made again after it breaks.
///
/// Why one multiplexed connection and not a pool: Redis runs one command at a time anyway, and
/// pipelining the calls in flight over one socket costs the node one `write` and one `read` per
/// batch instead of per call, with no hand-off between threads.
pub(crate) struct Conn {
    client: Client,
    /// The URL with any password replaced by `***`: the only form that appears in messages.
    url: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    /// The connection, once made, with its generation (so that a failure seen by several calls
    /// at once drops it once, not a newer one).
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    /// Held while connecting: one connection attempt at a time, the others wait for it.
    connecting: tokio::sync::Mutex<u64>,
    /// Set while Redis seems unreachable: calls fail at once until `retry_at`, so that an
    /// outage answers every request quickly instead of each one waiting out a timeout.
    down: Mutex<Option<Down>>,
    /// In a Redis Cluster: a key in the one slot every key of this store lives in. `client`
    /// is then a seed node, and the connection goes to the slot's owner, found with
    /// `CLUSTER KEYSLOT` and `CLUSTER SLOTS` and found again after a `MOVED`.
    cluster_key: Option<String>,
    /// In a Redis Cluster: the client of the slot's owner, once known.
    owner: Mutex<Option<Client>>,
    /// In a Redis Cluster: every node the last lookup named (asked when the seed is gone).
    known: Mutex<Vec<Client>>,
}

/// An outage as the connection sees it.
struct Down {
    /// When the next call may try Redis again.
    retry_at: Instant,
    /// The wait after the next failure: doubles from 50 ms up to [`MAX_BACKOFF`].
    backoff: Duration,
    /// The last failure, for the messages of the calls failed at once.
    error: String,
}

/// The longest wait between two attempts to reach an unreachable Redis.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(1);

const FIRST_BACKOFF: Duration = Duration::from_millis(50);

impl Conn {
    pub(crate) fn new(
        client: Client,
        url: String,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Conn {
        Conn {
            client,
            url,
            connect_timeout,
            response_timeout,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(0),
            down: Mutex::new(None),
            cluster_key: None,
            owner: Mutex::new(None),
            known: Mutex::new(Vec::new()),
        }
    }

    /// Makes this the connection to a Redis Cluster whose slot holding `key` has every key of
    /// the store; `client` is a seed node.
    pub(crate) fn in_cluster(mut self, key: String) -> Conn {
        self.cluster_key = Some(key);
        self
    }

    fn config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.response_timeout))
    }

    /// The client to connect with: the server, or in a cluster the owner of the store's slot.
    /// The owner is looked up the first time and again after a `MOVED` or a lost connection:
    /// on the seed node, else on the other nodes the last lookup named (so that a failover of
    /// the seed itself is survived), for at most the connect plus the response timeout in all.
    async fn target(&self) -> RedisResult<Client> {
        let Some(key) = &self.cluster_key else {
            return Ok(self.client.clone());
        };
        if let Some(owner) = &*self.owner.lock() {
            return Ok(owner.clone());
        }
        let deadline = Instant::now() + self.connect_timeout + self.response_timeout;
        let mut nodes = vec![self.client.clone()];
        nodes.extend(self.known.lock().iter().cloned());
        let mut last = None;
        for node in nodes {
            if Instant::now() >= deadline {
                break;
            }
            match self.ask_owner(&node, key).await {
                Ok(owner) => {
                    *self.owner.lock() = Some(owner.clone());
                    return Ok(owner);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            RedisError::from((
                ErrorKind::Server(ServerErrorKind::ClusterDown),
                "no node of the cluster answered",
            ))
        }))
    }

    /// Asks `node` which node owns the slot of `key`; remembers every node it names.
    async fn ask_owner(&self, node: &Client, key: &str) -> RedisResult<Client> {
        let mut con = node
            .get_multiplexed_async_connection_with_config(&self.config())
            .await?;
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut con)
            .await?;
        let slots: Vec<redis::Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut con)
            .await?;
        let info = node.get_connection_info().clone();
        let client_at = |entry: &redis::Value| -> Option<Client> {
            let redis::Value::Array(entry) = entry else {
                return None;
            };
            let host = match entry.first() {
                Some(redis::Value::BulkString(h)) if !h.is_empty() => {
                    String::from_utf8_lossy(h).into_owned()
                }
                // An empty host means "the node you asked".
                _ => match info.addr() {
                    redis::ConnectionAddr::Tcp(h, _) => h.clone(),
                    _ => return None,
                },
            };
            let Some(redis::Value::Int(port)) = entry.get(1) else {
                return None;
            };
            let port = u16::try_from(*port).ok()?;
            Client::open(
                info.clone()
                    .set_addr(redis::ConnectionAddr::Tcp(host, port)),
            )
            .ok()
        };
        let mut owner = None;
        let mut known = Vec::new();
        for range in &slots {
            let redis::Value::Array(range) = range else {
                continue;
            };
            let bound = |i: usize| match range.get(i) {
                Some(redis::Value::Int(n)) => Some(*n),
                _ => None,
            };
            let (Some(start), Some(end)) = (bound(0), bound(1)) else {
                continue;
            };
            // The primary, then its replicas.
            for (i, entry) in range.iter().enumerate().skip(2) {
                if let Some(c) = client_at(entry) {
                    if i == 2 && (start..=end).contains(&slot) {
                        owner = Some(c.clone());
                    }
                    known.push(c);
                }
            }
        }
        *self.known.lock() = known;
        owner.ok_or_else(|| {
            RedisError::from((
                ErrorKind::Server(ServerErrorKind::ClusterDown),
                "no node of the cluster serves the store's slot",
            ))
        })
    }

    /// The redacted URL.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The shared connection, made if there is none (one attempt at a time).
    async fn connection(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        if let Some(c) = &*self.current.lock() {
            return Ok(c.clone());
        }
        let mut generation = self.connecting.lock().await;
        if let Some(c) = &*self.current.lock() {
            return Ok(c.clone());
        }
        let con = self
            .target()
            .await?
            .get_multiplexed_async_connection_with_config(&self.config())
            .await?;
        *generation += 1;
        *self.current.lock() = Some((*generation, con.clone()));
        Ok((*generation, con))
    }

    /// Drops the shared connection if it is still generation `generation`.
    fn drop_connection(&self, generation: u64) {
        let mut current = self.current.lock();
        if current.as_ref().is_some_and(|(g, _)| *g == generation) {
            *current = None;
        }
    }

    /// Fails at once while Redis is known to be down.
    fn check_down(&self, what: &str) -> Result<(), Error> {
        if let Some(d) = &*self.down.lock()
            && Instant::now() < d.retry_at
        {
            return Err(Error::Store(StoreError::transient(
                format!(
                    "redis at {} is unreachable: {what} not tried (last failure: {})",
                    self.url, d.error
                ),
                None,
            )));
        }
        Ok(())
    }

    /// Runs `f` on the shared connection. `what` names the operation in error messages.
    ///
    /// A connection that failed without a reply from the server (lost, refused) is dropped
    /// and the next call connects afresh. A reply that timed out is discarded when it comes,
    /// so the connection stays usable; the call fails with a transient error and Redis counts
    /// as down for a short backoff.
    ///
    /// A failed request is not retried here: an acquire whose reply was lost may or may not
    /// have been applied, and only the caller can decide whether to try again.
    pub(crate) async fn run<T, F, Fut>(&self, what: &str, f: F) -> Result<T, Error>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.check_down(what)?;
        let (generation, con) = match self.connection().await {
            Ok(c) => c,
            Err(e) => {
                // In a cluster the slot may have a new owner by the time it answers again.
                *self.owner.lock() = None;
                self.went_down(&e);
                return Err(self.error("connect", e));
            }
        };
        match f(con).await {
            Ok(v) => {
                if self.down.lock().take().is_some() {
                    tracing::info!(url = %self.url, "redis is reachable again");
                }
                Ok(v)
            }
            Err(e) => {
                if matches!(
                    e.kind(),
                    ErrorKind::Server(ServerErrorKind::Moved | ServerErrorKind::Ask)
                ) {
                    // The slot moved (resharding, failover): find its owner again next time.
                    // Nothing was applied; the caller sees a transient error and may retry.
                    *self.owner.lock() = None;
                    self.drop_connection(generation);
                } else if !replied(&e) {
                    if !e.is_timeout() {
                        self.drop_connection(generation);
                        *self.owner.lock() = None;
                    }
                    if e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
                        self.went_down(&e);
                    }
                }
                Err(self.error(what, e))
            }
        }
    }

    /// Records a failure to reach Redis: calls fail at once for a backoff that doubles up to
    /// [`MAX_BACKOFF`].
    fn went_down(&self, e: &RedisError) {
        let mut down = self.down.lock();
        let backoff = match &*down {
            Some(d) => d.backoff,
            None => {
                tracing::warn!(url = %self.url, error = %e, "redis is unreachable");
                FIRST_BACKOFF
            }
        };
        *down = Some(Down {
            retry_at: Instant::now() + backoff,
            backoff: (backoff * 2).min(MAX_BACKOFF),
            error: e.to_string(),
        });
    }

    /// Listens on `channel` until the connection fails or `closed` resolves, calling
    /// `on_message` for every message (and once on subscribing, for anything missed while
    /// away). Returns `Ok` only when `closed` resolved.
    pub(crate) async fn subscribe(
        &self,
        channel: &str,
        closed: impl Future<Output = ()>,
        on_message: &(dyn Fn() + Sync),
    ) -> Result<(), Error> {
        let connect = async {
            let mut sub = self.target().await?.get_async_pubsub().await?;
            sub.subscribe(channel).await?;
            RedisResult::Ok(sub)
        };
        let mut sub =
            match tokio::time::timeout(self.connect_timeout + self.response_timeout, connect).await
            {
                Ok(r) => r.map_err(|e| self.error("subscribe", e))?,
                Err(_) => {
                    return Err(Error::Store(StoreError::transient(
                        format!("redis at {}: subscribe timed out", self.url),
                        None,
                    )));
                }
            };
        on_message();
        let mut messages = sub.on_message();
        tokio::pin!(closed);
        loop {
            tokio::select! {
                () = &mut closed => return Ok(()),
                m = messages.next() => match m {
                    Some(_) => on_message(),
                    None => {
                        return Err(Error::Store(StoreError::transient(
                            format!("redis at {}: the subscription's connection closed", self.url),
                            None,
                        )));
                    }
                },
            }
        }
    }

    /// A store error for a failed Redis call, transient when retrying later may help.
    pub(crate) fn error(&self, what: &str, e: RedisError) -> Error {
        let message = format!("redis at {}: {what} failed: {e}", self.url);
        let store = if is_transient(&e) {
            StoreError::transient(message, Some(Box::new(e)))
        } else {
            StoreError::permanent(message, Some(Box::new(e)))
        };
        Error::Store(store)
    }

    /// A permanent store error: data in Redis that Tollgate did not write, or a reply it
    /// cannot read.
    pub(crate) fn corrupt(&self, what: impl std::fmt::Display) -> Error {
        Error::Store(StoreError::permanent(
            format!("redis at {}: {what}", self.url),
            None,
        ))
    }
}

/// Whether the server answered (with an error): the connection is still in step.
fn replied(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Server(_) | ErrorKind::Extension | ErrorKind::UnexpectedReturnType
    )
}

/// Failures that may clear by themselves: the server unreachable, slow, restarting, loading,
/// failing over, busy with a long script, or out of memory.
pub(crate) fn is_transient(e: &RedisError) -> bool {
    match e.kind() {
        ErrorKind::Io | ErrorKind::Parse | ErrorKind::ClusterConnectionNotFound => true,
        ErrorKind::Server(kind) => matches!(
            kind,
            ServerErrorKind::BusyLoading
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
        ),
        ErrorKind::Extension => matches!(e.code(), Some("BUSY" | "OOM" | "NOREPLICAS")),
        _ => e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal(),
    }
}

/// `url` with its password (and any `password=`/`pass=` query value) replaced by `***`.
///
/// ```text
/// redis://user:secret@host:6379/0  ->  redis://user:***@host:6379/0
/// redis://:secret@host             ->  redis://:***@host
/// ```
pub(crate) fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***{host}"),
                // A lone userinfo may be a password (some clients read it so).
                None => format!("***{host}"),
            }
        }
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _))
                        if k.eq_ignore_ascii_case("pass") || k.eq_ignore_ascii_case("password") =>
                    {
                        format!("{k}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_survive_redaction() {
        for (url, want) in [
            ("redis://user:s3cret@h:6379/0", "redis://user:***@h:6379/0"),
            ("redis://:s3cret@h", "redis://:***@h"),
            ("rediss://s3cret@h:1", "rediss://***@h:1"),
            ("redis://h:6379", "redis://h:6379"),
            (
                "redis+unix:///tmp/r.sock?db=1&pass=s3cret",
                "redis+unix:///tmp/r.sock?db=1&pass=***",
            ),
            ("redis://u:p@ss:w@h/", "redis://u:***@h/"),
        ] {
            assert_eq!(redact(url), want);
            assert!(!redact(url).contains("s3cret"));
        }
    }
}
