//! [`LeaseGuard`]: a concurrency lease taken over HTTP that renews itself in the background and
//! is released when dropped, the HTTP counterpart of the embedded engine's `LeaseGuard`.
//!
//! One tokio task per guard renews the lease every third of its time to live and, when the
//! guard is dropped, releases it. A renewal the server refuses (the lease is not held any
//! more) or one that could not get through before the time to live lapsed marks the guard
//! lost ([`LeaseGuard::is_lost`], [`LeaseGuard::lost`]) instead of pretending it still holds
//! the slot.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tollgate_api::{ErrorCode, Lease, LeaseRequest};

use crate::client::{Client, millis_ceil};
use crate::error::Error;

/// The time to live a guard asks for when its request names none and the key is dynamic:
/// the server's default for dynamic keys.
pub const DEFAULT_GUARD_TTL: Duration = Duration::from_secs(30);

/// The first wait after a transient renewal error; it doubles, capped at a sixth of the time
/// to live so that retries keep pace with it.
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// Why a [`LeaseGuard`] no longer holds its slot.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseLost {
    /// The server refused a renewal with an error that is not transient: 409 `lease_expired`
    /// (it lapsed, or a call with its id released it), 404 `unknown_lease` (its limit was
    /// removed or changed kind), or anything else that trying again will not fix. The slot
    /// may already be someone else's.
    #[error("the server refused to renew the lease: {0}")]
    Refused(Arc<Error>),
    /// Renewals failed with transient errors (the server unreachable, too slow, 503) until
    /// the time to live lapsed, counted from the last renewal sent that succeeded. The last
    /// error, if there was an answer at all.
    #[error("the lease lapsed while it could not be renewed{}", .0.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default())]
    Lapsed(Option<Arc<Error>>),
    /// The task renewing it is gone: the tokio runtime it ran on shut down.
    #[error("the task renewing the lease ended with its runtime")]
    Stopped,
}

impl LeaseLost {
    /// The server's error, for [`LeaseLost::Refused`] (and the last one of
    /// [`LeaseLost::Lapsed`]).
    pub fn error(&self) -> Option<&Error> {
        match self {
            LeaseLost::Refused(e) | LeaseLost::Lapsed(Some(e)) => Some(e),
            LeaseLost::Lapsed(None) | LeaseLost::Stopped => None,
        }
    }
}

/// What the renewing task tells the guard.
#[derive(Debug, Clone)]
struct Status {
    /// The server's latest expiry, Unix-epoch milliseconds.
    expires_at_ms: u64,
    /// When the lease lapses at the latest as this process sees it: the time to live after
    /// the last successful call was sent.
    deadline: Instant,
    lost: Option<LeaseLost>,
}

/// A concurrency slot held over HTTP, from [`Client::lease_guard`].
///
/// - **Renewed in the background**: a tokio task renews it every third of its time to live.
///   Transient errors are retried (100 ms, doubling, at most a sixth of the time to live)
///   until the time to live would lapse.
/// - **Lost, not pretended**: when the server refuses a renewal (the lease expired, or was
///   released by another call with its id) or renewals fail until the time to live lapses,
///   [`LeaseGuard::is_lost`] turns true and [`LeaseGuard::lost`] resolves with the reason. The
///   guard never takes a slot again by itself: a lost guard stays lost.
/// - **Released when dropped**: dropping the guard only closes a channel (it never blocks and
///   never panics, from any thread); the renewing task, on the runtime the guard was made on,
///   then sends the `DELETE`, retrying transient errors until the lease would lapse anyway. If
///   that runtime is gone, the lease lapses at its expiry. [`LeaseGuard::release`] releases and
///   waits for the answer.
///
/// `Send` and `Sync`: hand it to the task doing the work.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use tollgate_client::{Client, LeaseRequest};
///
/// let client = Client::new("http://127.0.0.1:7070")?;
/// let request = LeaseRequest::new("account:7").limit(2).ttl(Duration::from_secs(30)).holder("w1");
/// match client.lease_guard(&request).await? {
///     Ok(guard) => {
///         tokio::select! {
///             () = async { /* the work, for as long as it takes */ } => {}
///             lost = guard.lost() => return Err(lost.into()), // stop: the slot is not ours
///         }
///         guard.release().await?; // or just drop it
///     }
///     Err(denied) => println!("full; retry in {:?} ms", denied.retry_after_ms),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct LeaseGuard {
    client: Client,
    lease: Lease,
    lease_id: String,
    ttl: Duration,
    status: watch::Receiver<Status>,
    /// Dropped with the guard: the renewing task then releases the lease and ends.
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Client {
    /// `POST /v1/leases`, and when granted a [`LeaseGuard`] that renews the lease in the
    /// background and releases it when dropped. A full key is an answer, `Ok(Err(lease))`
    /// with `acquired: false` and `retry_after_ms`, as with [`Client::lease_acquire`].
    ///
    /// The guard always asks for an explicit time to live, since it schedules its renewals
    /// from it: the request's `ttl_ms`; without one, [`DEFAULT_GUARD_TTL`] for a dynamic key
    /// (`limit` given, the server's default too), and for a declared limit its `lease_ttl`,
    /// read first with `GET /v1/limits/{key}` (30 s if it has none).
    ///
    /// Call it within a tokio runtime (as every call of this client): the renewing task is
    /// spawned on it.
    ///
    /// # Errors
    /// As [`Client::lease_acquire`]; [`Client::get_limit`]'s for a declared limit without a
    /// `ttl_ms` in the request; [`Error::Decode`] for a grant without a lease id or expiry.
    pub async fn lease_guard(
        &self,
        request: &LeaseRequest,
    ) -> Result<Result<LeaseGuard, Lease>, Error> {
        let ttl = match request.ttl_ms {
            Some(ms) => Duration::from_millis(ms),
            None if request.limit.is_some() => DEFAULT_GUARD_TTL,
            None => {
                let limit = self.get_limit(&request.key).await?;
                limit
                    .definition
                    .lease_ttl
                    .as_deref()
                    .and_then(parse_period)
                    .unwrap_or(DEFAULT_GUARD_TTL)
            }
        };
        let mut request = request.clone();
        request.ttl_ms = Some(millis_ceil(ttl));
        let sent = Instant::now();
        let lease = self.lease_acquire(&request).await?;
        if !lease.acquired {
            return Ok(Err(lease));
        }
        let (Some(lease_id), Some(expires_at_ms)) = (lease.lease_id.clone(), lease.expires_at_ms)
        else {
            return Err(Error::Decode {
                method: "POST".to_owned(),
                url: self.url(&["v1", "leases"]).to_string(),
                status: 200,
                reason: "a granted lease without `lease_id` or `expires_at_ms`".to_owned(),
            });
        };
        let (status_tx, status) = watch::channel(Status {
            expires_at_ms,
            deadline: sent + ttl,
            lost: None,
        });
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(renew(
            self.clone(),
            lease_id.clone(),
            ttl,
            status_tx,
            stopped,
        ));
        Ok(Ok(LeaseGuard {
            client: self.clone(),
            lease,
            lease_id,
            ttl,
            status,
            stop: Some(stop),
            task: Some(task),
        }))
    }
}

impl LeaseGuard {
    /// The lease id (what [`Client::lease_renew`] and [`Client::lease_release`] take).
    pub fn lease_id(&self) -> &str {
        &self.lease_id
    }

    /// The server's answer that granted it (`limit`, `remaining` at that moment).
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The time to live it is renewed with.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// When the lease lapses unless renewed, Unix-epoch milliseconds on the server's clock,
    /// as of the last renewal.
    pub fn expires_at_ms(&self) -> u64 {
        self.status.borrow().expires_at_ms
    }

    /// Whether the guard no longer holds its slot (see [`LeaseGuard::lost_reason`]).
    pub fn is_lost(&self) -> bool {
        self.lost_reason().is_some()
    }

    /// Why the guard no longer holds its slot, or `None` while it does.
    pub fn lost_reason(&self) -> Option<LeaseLost> {
        let lost = self.status.borrow().lost.clone();
        match lost {
            Some(lost) => Some(lost),
            // The task ended without a word: its runtime shut down, nothing renews.
            None if self.status.has_changed().is_err() => Some(LeaseLost::Stopped),
            None => None,
        }
    }

    /// Resolves when the guard loses its slot, with the reason; pending while it holds it.
    /// Race the work against it (`tokio::select!`) to stop when the slot is no longer yours.
    pub async fn lost(&self) -> LeaseLost {
        let mut status = self.status.clone();
        // An error: the task ended; it says why first unless its runtime stopped it.
        let _ = status.wait_for(|s| s.lost.is_some()).await;
        self.lost_reason().unwrap_or(LeaseLost::Stopped)
    }

    /// Stops renewing and releases the slot (`DELETE /v1/leases/{id}`), waiting for the
    /// answer. `Ok(true)` when it was released, `Ok(false)` when the server no longer held it
    /// (lost: expired, or released by another call). Transient errors are retried until the
    /// lease would lapse anyway.
    ///
    /// # Errors
    /// The last error when it could not be released; the lease then lapses at its expiry.
    pub async fn release(mut self) -> Result<bool, Error> {
        if let Some(task) = self.task.take() {
            // No renewal in flight once this returns, and none after.
            task.abort();
            let _ = task.await;
        }
        let deadline = self.status.borrow().deadline;
        match delete(&self.client, &self.lease_id, deadline).await {
            Ok(()) => Ok(true),
            Err(e) if e.code() == Some(&ErrorCode::UnknownLease) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        // Closing the channel is all: the renewing task releases the lease. Nothing here
        // blocks, and nothing panics (no runtime needed on this thread).
        drop(self.stop.take());
    }
}

/// The renewing task: every third of `ttl`, until the guard is dropped (then it releases) or
/// the lease is lost.
async fn renew(
    client: Client,
    lease_id: String,
    ttl: Duration,
    status: watch::Sender<Status>,
    mut stopped: oneshot::Receiver<()>,
) {
    let every = (ttl / 3).max(Duration::from_millis(1));
    let retry_cap = (ttl / 6).max(Duration::from_millis(1));
    let mut deadline = status.borrow().deadline;
    let mut next = deadline - ttl + every;
    let mut retry = FIRST_RETRY.min(retry_cap);
    let mut last_error: Option<Arc<Error>> = None;
    let lost = loop {
        tokio::select! {
            biased;
            _ = &mut stopped => return release_dropped(&client, &lease_id, deadline).await,
            () = tokio::time::sleep_until(next) => {}
        }
        let sent = Instant::now();
        let answer = tokio::select! {
            biased;
            _ = &mut stopped => return release_dropped(&client, &lease_id, deadline).await,
            answer = tokio::time::timeout_at(deadline, client.lease_renew(&lease_id, Some(ttl))) => answer,
        };
        match answer {
            Ok(Ok(renewal)) => {
                deadline = sent + ttl;
                next = sent + every;
                retry = FIRST_RETRY.min(retry_cap);
                last_error = None;
                status.send_modify(|s| {
                    s.expires_at_ms = renewal.expires_at_ms;
                    s.deadline = deadline;
                });
            }
            Ok(Err(e)) if e.is_transient() => {
                let now = Instant::now();
                if now >= deadline {
                    break LeaseLost::Lapsed(Some(Arc::new(e)));
                }
                tracing::warn!(lease = %lease_id, error = %e, retry_in = ?retry, "renewing the lease failed; trying again");
                last_error = Some(Arc::new(e));
                next = (now + retry).min(deadline);
                retry = (retry * 2).min(retry_cap);
            }
            Ok(Err(e)) => break LeaseLost::Refused(Arc::new(e)),
            Err(_elapsed) => break LeaseLost::Lapsed(last_error.take()),
        }
    };
    tracing::warn!(lease = %lease_id, reason = %lost, "lease lost");
    let lapsed = matches!(lost, LeaseLost::Lapsed(_));
    status.send_modify(|s| s.lost = Some(lost));
    if lapsed {
        // The server may still hold it (its clock, or a renewal whose answer never came):
        // release it when the guard goes, on the chance it is reachable again.
        let _ = stopped.await;
        let _ = client.lease_release(&lease_id).await;
    }
}

/// The guard was dropped: releases, retrying transient errors until the lease lapses anyway.
async fn release_dropped(client: &Client, lease_id: &str, deadline: Instant) {
    match delete(client, lease_id, deadline).await {
        Ok(()) => tracing::debug!(lease = %lease_id, "released"),
        Err(e) if e.code() == Some(&ErrorCode::UnknownLease) => {
            tracing::debug!(lease = %lease_id, "already not held");
        }
        Err(e) => {
            tracing::warn!(lease = %lease_id, error = %e, "releasing the lease failed; it lapses at its expiry");
        }
    }
}

/// `DELETE /v1/leases/{id}`, retrying transient errors with backoff until `deadline`.
async fn delete(client: &Client, lease_id: &str, deadline: Instant) -> Result<(), Error> {
    let mut wait = FIRST_RETRY;
    loop {
        match client.lease_release(lease_id).await {
            Err(e) if e.is_transient() && Instant::now() + wait < deadline => {
                tracing::warn!(lease = %lease_id, error = %e, retry_in = ?wait, "releasing the lease failed; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

/// A period as the server writes it (`30s`, `1m30s`, `500ms`, `1w2d`), or `None`.
fn parse_period(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let (number, tail) = rest.split_at(digits);
        let letters = tail
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(letters);
        let number: u64 = number.parse().ok()?;
        let unit = match unit {
            "w" => Duration::from_secs(7 * 86_400),
            "d" => Duration::from_secs(86_400),
            "h" => Duration::from_secs(3_600),
            "m" => Duration::from_secs(60),
            "s" => Duration::from_secs(1),
            "ms" => Duration::from_millis(1),
            "us" => Duration::from_micros(1),
            "ns" => Duration::from_nanos(1),
            _ => return None,
        };
        total = total.checked_add(unit.checked_mul(u32::try_from(number).ok()?)?)?;
        rest = tail;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<LeaseGuard>();
        send_sync::<LeaseLost>();
    }

    /// The futures a guard hands out can be spawned.
    #[allow(dead_code)]
    fn futures_are_send(guard: &LeaseGuard, owned: LeaseGuard) {
        fn send<T: Send>(_: &T) {}
        send(&guard.lost());
        send(&owned.release());
    }

    #[test]
    fn periods_parse_as_the_server_writes_them() {
        assert_eq!(parse_period("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_period("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_period("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_period("1w2d"), Some(Duration::from_secs(9 * 86_400)));
        assert_eq!(
            parse_period("1s5ns"),
            Some(Duration::from_nanos(1_000_000_005))
        );
        for bad in ["", "s", "30", "30x", "1.5s", "-1s"] {
            assert_eq!(parse_period(bad), None, "{bad}");
        }
    }
}
