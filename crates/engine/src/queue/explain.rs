//! "Why is this run waiting" (docs/design.md §3.14): what each key a run needs says now, built
//! the same way by both engines from what they read (the key's definition and state, its pause,
//! its wait queue).

use tollgate_api::{KeyExplanation, Namespace as ShownNamespace};
use tollgate_core::{Limit, Nanos};

use crate::spec::{LimitSpec, LimitSpecExt};
use crate::store::{LimitInfo, Namespace, Pause, StateView};

/// How many of the runs ahead of a run in a wait queue an explanation names.
pub const AHEAD_SHOWN: usize = 10;

/// A rate limit's `limit` in force (a token bucket's capacity).
fn limit_of(limit: &Limit) -> u64 {
    let spec = LimitSpec::from_limit(limit);
    spec.limit.or(spec.params.capacity).unwrap_or(0)
}

/// Where a run stands in one key's wait queue.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct QueuePlace {
    /// Runs waiting on the key.
    pub waiting: u64,
    /// The run's place, while it waits on the key.
    pub position: Option<u64>,
    /// Up to [`AHEAD_SHOWN`] runs ahead of it, nearest the head first.
    pub ahead: Vec<String>,
}

/// One rate key of a run, explained: its definition (`spec`, the one in force for a dynamic
/// key; a declared key's comes from `info`), its state (`info`: the store's view of it, `None`
/// for a key with no state), its pause and its wait queue. `eligible_at` is the run's own when
/// it waits on this key.
#[allow(clippy::too_many_arguments)]
pub fn rate_key(
    key: &str,
    dynamic: bool,
    spec: Option<&LimitSpec>,
    info: Option<&LimitInfo>,
    pauses: &[Pause],
    place: QueuePlace,
    eligible_at: Option<Nanos>,
    now: Nanos,
) -> KeyExplanation {
    let namespace = if dynamic {
        Namespace::Dynamic
    } else {
        Namespace::Static
    };
    let in_force = spec
        .and_then(|s| s.to_limit().ok())
        .or_else(|| info.map(|i| i.limit));
    let (used, remaining) = match info.map(|i| &i.state) {
        Some(StateView::Rate(u)) => (u.used, u.remaining),
        Some(StateView::Concurrency { live, limit }) => (*live, limit.saturating_sub(*live)),
        _ => (0, in_force.as_ref().map_or(0, capacity_of)),
    };
    let paused_until = pauses
        .iter()
        .find(|p| p.namespace == namespace && p.key == key && p.until > now)
        .map(|p| p.until);
    KeyExplanation {
        key: key.to_owned(),
        namespace: if dynamic {
            ShownNamespace::Dynamic
        } else {
            ShownNamespace::Static
        },
        algorithm: in_force
            .as_ref()
            .map_or_else(String::new, |l| l.algorithm().as_str().to_owned()),
        limit_in_force: in_force.as_ref().map_or(0, limit_of),
        used,
        remaining: if paused_until.is_some() { 0 } else { remaining },
        waiting: place.waiting,
        eligible_at_ms: if place.position.is_some() {
            eligible_at.map(Nanos::as_millis_ceil)
        } else {
            paused_until.map(Nanos::as_millis_ceil)
        },
        position: place.position,
        ahead: place.ahead,
        paused_until_ms: paused_until.map(Nanos::as_millis_ceil),
    }
}

fn capacity_of(limit: &Limit) -> u64 {
    match limit {
        Limit::Rate(r) => r.capacity(),
        Limit::Concurrency(c) => u64::from(c.limit()),
        Limit::Barrier(_) => 0,
    }
}

/// One concurrency key of a run, explained: `limit` slots in force, `held` of them held.
pub fn concurrency_key(key: &str, limit: u32, held: u64, place: QueuePlace) -> KeyExplanation {
    KeyExplanation {
        key: key.to_owned(),
        namespace: ShownNamespace::Dynamic,
        algorithm: "concurrency".to_owned(),
        limit_in_force: u64::from(limit),
        used: held,
        remaining: u64::from(limit).saturating_sub(held),
        waiting: place.waiting,
        position: place.position,
        ahead: place.ahead,
        paused_until_ms: None,
        eligible_at_ms: None,
    }
}
