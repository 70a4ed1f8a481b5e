//! [`Batcher`]: calls made while others are in flight are coalesced into one script call, as
//! a database's group commit does (docs/design.md §9.1, "Batched calls").
//!
//! Every queue script call pays a fixed part in Redis besides its runs' own work (the function
//! call, the due timers and leases it looks at first, its reply and effects) and one round trip
//! on the node. Under load many requests wait on Redis at once: a batcher sends them as one
//! call, so the fixed part is paid once per batch. It never waits to fill a batch: a call made
//! while fewer than `in_flight` batches are out goes at once, alone; only calls made while
//! Redis is busy with earlier batches are gathered, up to `max` per batch.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tollgate::{Error, StoreError};

type Pending<T, R> = (T, oneshot::Sender<Result<R, Error>>);

/// Coalesces items into calls of a batch function; each item gets its own answer.
pub(crate) struct Batcher<T, R> {
    tx: mpsc::UnboundedSender<Pending<T, R>>,
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Starts the batcher's task. `call` gets at most `max` items and answers one result per
    /// item, in order (or one error for the whole batch); at most `in_flight` calls run at once.
    /// The task ends when the batcher is dropped. Must be called inside a tokio runtime.
    pub(crate) fn spawn<F, Fut>(max: usize, in_flight: usize, call: F) -> Batcher<T, R>
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<R>, Error>> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<Pending<T, R>>();
        let slots = Arc::new(Semaphore::new(in_flight.max(1)));
        let max = max.max(1);
        tokio::spawn(async move {
            loop {
                // A free slot first: while every slot is busy, new items gather in the channel.
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    return;
                };
                let Some(first) = rx.recv().await else {
                    return;
                };
                let mut batch = vec![first];
                while batch.len() < max {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let (items, answers): (Vec<T>, Vec<_>) = batch.into_iter().unzip();
                let n = items.len();
                let calling = call(items);
                tokio::spawn(async move {
                    let result = calling.await;
                    drop(slot);
                    match result {
                        Ok(results) if results.len() == n => {
                            for (answer, r) in answers.into_iter().zip(results) {
                                let _ = answer.send(Ok(r));
                            }
                        }
                        Ok(results) => {
                            let e = StoreError::permanent(
                                format!(
                                    "a batch of {n} answered {} results; nothing can be told of each",
                                    results.len()
                                ),
                                None,
                            );
                            for answer in answers {
                                let _ = answer.send(Err(Error::Store(e.clone_message())));
                            }
                        }
                        Err(e) => {
                            let mut answers = answers.into_iter();
                            let first = answers.next();
                            for answer in answers {
                                let _ = answer.send(Err(copy(&e)));
                            }
                            if let Some(first) = first {
                                let _ = first.send(Err(e));
                            }
                        }
                    }
                });
            }
        });
        Batcher { tx }
    }

    /// Sends `item` with the next batch and waits for its answer.
    ///
    /// # Errors
    /// What the batch call answered for this item or for the whole batch; a transient store
    /// error when the batcher is gone (the engine is closing).
    pub(crate) async fn call(&self, item: T) -> Result<R, Error> {
        let (answer, answered) = oneshot::channel();
        let closing = || {
            Error::Store(StoreError::transient(
                "the Redis engine is closing; try again on another node",
                None,
            ))
        };
        self.tx.send((item, answer)).map_err(|_| closing())?;
        answered.await.map_err(|_| closing())?
    }
}

/// An error for one more waiter of a failed batch: the same message and transience (errors hold
/// sources that cannot be cloned).
fn copy(e: &Error) -> Error {
    match e {
        Error::Store(s) => Error::Store(s.clone_message()),
        other => Error::Store(StoreError::permanent(other.to_string(), None)),
    }
}
