//! Retention: how long ended runs are kept, and pruning them from memory and the database.
//! Separate because it is the only job that forgets runs, and must never forget one whose
//! consumption a restart would still replay.

use tollgate_core::{Nanos, Period};

use super::Engine;
use super::recovery::consumption_counts;
use crate::db::Write;
use crate::error::Error;
use crate::store::Store;

/// Ended runs are kept this long by default.
pub const DEFAULT_RETENTION: Period = match Period::from_secs_const(7 * 86_400) {
    Some(p) => p,
    None => Period::DAY,
};

impl<S: Store + 'static> Engine<S> {
    /// Keeps ended runs (succeeded, failed, skipped, cancelled) for `retention` after their last
    /// change, then forgets them (memory and database). A run whose consumed units still count
    /// against a limit is kept until they no longer do, so forgetting never loosens a limit
    /// after a restart. The default is [`DEFAULT_RETENTION`].
    pub fn set_retention(&self, retention: Period) {
        self.inner.retention.store(
            retention.as_nanos().as_nanos(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Forgets ended runs older than the retention now; returns how many.
    ///
    /// # Errors
    /// Store failures (the database).
    pub async fn prune(&self) -> Result<usize, Error> {
        let retention = Nanos::from_nanos(
            self.inner
                .retention
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        let store = self.inner.limiter.store();
        let removed = self
            .mutate(Vec::new(), |st, now, _| {
                let cutoff = now - retention;
                let old: Vec<String> = st
                    .runs
                    .values()
                    .filter(|r| r.state().is_final() && r.updated_at <= cutoff)
                    .filter(|r| !consumption_counts(store, r, now))
                    .map(|r| r.id.clone())
                    .collect();
                for id in &old {
                    st.runs.remove(id);
                }
                Ok(old)
            })
            .await?;
        if let Some(db) = &self.inner.db {
            // Direct leases and barriers that lapsed need not be taken back at a restart.
            db.submit(
                vec![Write::ForgetExpired(self.inner.limiter.now())],
                self.inner.limiter.now(),
            )
            .await?;
        }
        if let (Some(db), false) = (&self.inner.db, removed.is_empty()) {
            let n = removed.len();
            let writes = removed
                .into_iter()
                .map(|id| Write::DeleteRun { id })
                .collect();
            db.submit(writes, self.inner.limiter.now()).await?;
            return Ok(n);
        }
        Ok(removed.len())
    }
}
