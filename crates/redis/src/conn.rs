//! Connections: a small pool of synchronous connections with bounded timeouts, and the
//! mapping of Redis failures onto [`StoreError`] (transient or not), with passwords redacted.

use std::time::Duration;

use parking_lot::Mutex;
use redis::{Client, Connection, ErrorKind, RedisError, RedisResult, ServerErrorKind};
use tollgate::{Error, StoreError};

/// Idle connections kept for reuse; a request takes one (or opens one) and puts it back.
///
/// Why a mutex-guarded `Vec` and not a pool crate: a request holds a connection for exactly
/// one round trip, so the lock is held only to push or pop, and nothing else is needed.
pub(crate) struct Pool {
    client: Client,
    /// The URL with any password replaced by `***`: the only form that appears in messages.
    url: String,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl Pool {
    pub(crate) fn new(
        client: Client,
        url: String,
        max_idle: usize,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Pool {
        Pool {
            client,
            url,
            idle: Mutex::new(Vec::new()),
            max_idle,
            connect_timeout,
            response_timeout,
        }
    }

    /// The redacted URL.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    fn connect(&self) -> RedisResult<Connection> {
        let con = self
            .client
            .get_connection_with_timeout(self.connect_timeout)?;
        con.set_read_timeout(Some(self.response_timeout))?;
        con.set_write_timeout(Some(self.response_timeout))?;
        Ok(con)
    }

    /// Runs `f` on a connection. `what` names the operation in error messages.
    ///
    /// A connection whose request failed without a reply from the server (IO error, timeout)
    /// is dropped, never reused: its next read could return this request's late reply. When
    /// the server seems gone, every idle connection goes too (they all point at the old
    /// process), so the next request after a restart connects afresh.
    ///
    /// A failed request is not retried here: an acquire whose reply was lost may or may not
    /// have been applied, and only the caller can decide whether to try again.
    pub(crate) fn run<T>(
        &self,
        what: &str,
        f: impl FnOnce(&mut Connection) -> RedisResult<T>,
    ) -> Result<T, Error> {
        let pooled = self.idle.lock().pop();
        let mut con = match pooled {
            Some(con) => con,
            None => self.connect().map_err(|e| self.error("connect", e))?,
        };
        match f(&mut con) {
            Ok(v) => {
                self.put_back(con);
                Ok(v)
            }
            Err(e) => {
                if replied(&e) {
                    self.put_back(con);
                } else if e.is_connection_dropped() || e.is_connection_refusal() {
                    self.idle.lock().clear();
                }
                Err(self.error(what, e))
            }
        }
    }

    fn put_back(&self, con: Connection) {
        let mut idle = self.idle.lock();
        if idle.len() < self.max_idle {
            idle.push(con);
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
