//! Loading and replaying after a restart: limits, tasks and runs restored from the database,
//! and the limiter state rebuilt, exactly after a clean stop or by replaying what runs consumed
//! after a crash. Separate because it runs once, at start, and reasons about time differently
//! from everything else (what still counts now of what was consumed then).

use std::num::NonZeroU32;
use std::sync::Arc;

use tollgate_core::{Limit, Nanos};

use super::Engine;
use super::direct_use::{DirectEntry, SNAPSHOT_EVERY, direct_limit, exhausted};
use crate::db::{Db, Loaded, Write};
use crate::error::Error;
use crate::limiter::Limiter;
use crate::queue::run::Run;
use crate::spec::LimitSpecExt;
use crate::store::{AcquireEntry, Store};

impl<S: Store + 'static> Engine<S> {
    /// An engine persisting to `db`, restored from what it held: limits, tasks, and runs —
    /// queued and parked runs re-queue in their original order, leased runs keep their lease,
    /// and the units that runs consumed are replayed into the limiter at the times they were
    /// consumed, so limiter state after a restart is exactly what those runs left.
    ///
    /// # Errors
    /// A stored limit or task that no longer compiles.
    pub fn with_db(limiter: Limiter<S>, db: Db, loaded: Loaded) -> Result<Engine<S>, Error> {
        let mut adaptive = std::collections::BTreeMap::new();
        for (key, spec) in &loaded.limits {
            // An adaptive limit's stored `limit` is its limit in force: it survives the restart.
            let declared = spec
                .to_declared()
                .map_err(|e| Error::Spec(e.within(&format!("limits[{key}]"))))?;
            limiter.upsert(key, *declared.limit())?;
            if let Some(bounds) = declared.bounds() {
                adaptive.insert(key.clone(), bounds);
            }
        }
        let engine = Engine::build(limiter, Some(db));
        *engine.inner.adaptive.lock() = adaptive;
        {
            let mut st = engine.inner.state.lock();
            for (name, spec) in loaded.tasks {
                let task = engine.compile(&name, spec)?;
                st.tasks.insert(name, Arc::new(task));
            }
            let now = engine.inner.limiter.now();
            let store = engine.inner.limiter.store();
            for (namespace, key, until) in &loaded.pauses {
                if *until > now {
                    store.pause(*namespace, key, *until, now)?;
                } else {
                    // Ended while the server was down (or before): forgotten with the next
                    // change's commit.
                    st.journal_later(Write::DeletePause {
                        namespace: *namespace,
                        key: key.clone(),
                    });
                }
            }
            if loaded.clean_shutdown {
                // A clean stop left the exact limiter state (runs' consumption included).
                for saved in &loaded.states {
                    if let Some(state) = saved.to_limit_state() {
                        // A static limit removed since has nothing to restore into.
                        let _ = store.import_rate_state(saved.namespace, &saved.key, state, now);
                    }
                }
            } else {
                // What runs consumed, in time order: their rate limits when admitted, and their
                // task's `rate_limit` when it took their unit.
                let mut consumed: Vec<(Nanos, u64, bool, &Run)> = Vec::new();
                for r in &loaded.runs {
                    if let Some(at) = r.gate_at {
                        consumed.push((at, r.seq, true, r));
                    }
                    if let Some(at) = r.consumed_at {
                        consumed.push((at, r.seq, false, r));
                    }
                }
                consumed.sort_by_key(|&(at, seq, gate, _)| (at, seq, !gate));
                for (at, _, gate, run) in consumed {
                    if gate {
                        replay_entries(store, run.rendered.gate_entries(), at, now);
                    } else {
                        replay(store, run, now);
                    }
                }
                // Direct use since the last snapshot is unknown: every key with direct use is
                // treated as fully used from the latest instant the crash can have happened.
                let crash_by = loaded
                    .last_time
                    .map_or(now, |t| (t + SNAPSHOT_EVERY.saturating_mul(2)).min(now));
                for d in &loaded.direct_use {
                    if let Some(limit) =
                        direct_limit(store, d.namespace, &d.key, d.spec.as_ref(), now)
                        && let Some(full) = exhausted(&limit, crash_by)
                        && full.fresh_at() > now
                    {
                        let _ = store.import_rate_state(d.namespace, &d.key, full, now);
                    }
                }
            }
            let mut direct = engine.inner.direct.lock();
            for d in loaded.direct_use {
                let limit = d.spec.as_ref().and_then(|s| s.to_rate_limit().ok());
                direct.entry(d.namespace).or_default().insert(
                    d.key,
                    DirectEntry {
                        limit,
                        last_used: d.last_used,
                        dirty: false,
                    },
                );
            }
            drop(direct);
            for run in loaded.runs {
                st.restore(run);
            }
            st.finish_restore(now);
            super::durable_leases::restore(store, &loaded.leases, &loaded.barriers, now);
        }
        engine.inner.timer.notify_one();
        Ok(engine)
    }
}

/// Whether units `run` consumed still count against any of its limits at `now`: its rate
/// limits since `consumed_at`, or its task's `rate_limit` since `gate_at`.
pub(super) fn consumption_counts(store: &dyn Store, run: &Run, now: Nanos) -> bool {
    let gate = run.gate_at.is_some_and(|at| {
        run.rendered
            .gate
            .iter()
            .filter_map(|r| r.entry().ok())
            .any(|e| still_counts(store, &e, at, now))
    });
    let Some(at) = run.consumed_at else {
        return gate;
    };
    gate || run
        .rendered
        .rate
        .iter()
        .filter_map(|r| r.entry().ok())
        .any(|e| still_counts(store, &e, at, now))
}

/// Re-applies `entries`, consumed at `at`, where they still count.
fn replay_entries(
    store: &dyn Store,
    entries: Result<Vec<AcquireEntry<'_>>, crate::SpecError>,
    at: Nanos,
    now: Nanos,
) {
    let entries: Vec<AcquireEntry<'_>> = entries
        .unwrap_or_default()
        .into_iter()
        .filter(|e| still_counts(store, e, at, now))
        .collect();
    if !entries.is_empty() {
        let _ = store.acquire(&entries, at);
    }
}

/// Re-applies the units `run` consumed, at the time it consumed them, where they still count.
fn replay(store: &dyn Store, run: &Run, now: Nanos) {
    let Some(at) = run.consumed_at else { return };
    let entries: Vec<AcquireEntry<'_>> = run
        .rendered
        .rate
        .iter()
        .filter_map(|r| r.entry().ok())
        .filter(|e| still_counts(store, e, at, now))
        .collect();
    if !entries.is_empty() {
        // A denial here means the limit was lowered since: usage is then already at or over the
        // new limit through earlier replays, which is what counts.
        let _ = store.acquire(&entries, at);
    }
}

/// Whether `units` consumed at `at` would still be counted at `now` by the entry's limit.
fn still_counts(store: &dyn Store, e: &AcquireEntry<'_>, at: Nanos, now: Nanos) -> bool {
    let limit = match e.target {
        crate::store::Target::Dynamic(_, l) => Some(l),
        crate::store::Target::Static(k) => match store.get_limit(k, at) {
            Ok(Some(info)) => match info.limit {
                Limit::Rate(r) => Some(r),
                _ => None,
            },
            _ => None,
        },
    };
    let Some(limit) = limit else { return false };
    let units = NonZeroU32::new(e.units).unwrap_or(NonZeroU32::MIN);
    limit
        .decide(None, at, units)
        .ok()
        .and_then(|o| o.state)
        .is_some_and(|s| s.fresh_at() > now)
}
