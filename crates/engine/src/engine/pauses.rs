//! Pausing keys (docs/design.md §3.13): a pause is kept by the store, which denies every acquire
//! on the key until it ends, journalled like a limit definition, and re-plans the runs parked on
//! the key within the call (a pause moves their `eligible_at` to its end; a resume tries the
//! head at once).

use tollgate_core::Nanos;

use super::Engine;
use crate::db::Write;
use crate::error::{Error, check_key};
use crate::queue::run_queue::PauseEnd;
use crate::queue::state::WaitKey;
use crate::store::{Namespace, Pause, Store};

fn wait_key(namespace: Namespace, key: &str) -> WaitKey {
    WaitKey::Rate {
        dynamic: namespace == Namespace::Dynamic,
        key: key.to_owned(),
    }
}

impl<S: Store + 'static> Engine<S> {
    /// Pauses `key` until `end` (a pause in force that ends later is kept); returns the end
    /// of the pause in force. The runs parked on the key wait for it.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; [`Error::UnknownLimit`] for a static key that is not declared;
    /// store failures.
    pub async fn pause(
        &self,
        namespace: Namespace,
        key: &str,
        end: PauseEnd,
    ) -> Result<Nanos, Error> {
        check_key(key)?;
        if namespace == Namespace::Static && self.inner.limiter.get(key)?.is_none() {
            return Err(Error::UnknownLimit {
                key: key.to_owned(),
            });
        }
        self.mutate(Vec::new(), |st, now, store| {
            let end = store.pause(namespace, key, end.at(now), now)?;
            st.journal_later(Write::PutPause {
                namespace,
                key: key.to_owned(),
                until: end,
            });
            st.replan(&wait_key(namespace, key), now, store);
            Ok(end)
        })
        .await
    }

    /// Ends `key`'s pause now; returns whether one was in force. The head of the runs parked
    /// on it is tried at once.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; store failures.
    pub async fn resume(&self, namespace: Namespace, key: &str) -> Result<bool, Error> {
        check_key(key)?;
        let write = Write::DeletePause {
            namespace,
            key: key.to_owned(),
        };
        self.mutate(vec![write], |st, now, store| {
            let was = store.resume(namespace, key, now)?;
            st.replan(&wait_key(namespace, key), now, store);
            Ok(was)
        })
        .await
    }

    /// Every pause in force.
    ///
    /// # Errors
    /// Store failures.
    pub fn pauses(&self) -> Result<Vec<Pause>, Error> {
        let limiter = &self.inner.limiter;
        limiter.store().pauses(limiter.now())
    }
}
