//! Declared limits: (re)defining a static key, keeping or resetting its state, and the
//! [`LimitInfo`] view of a key that `get_limit` and `list_limits` return.

use tollgate_core::{Limit, Nanos};

use super::MemoryStore;
use super::bindings::Bindings;
use super::key::is_slot_of;
use super::slot::{Slot, SlotState, State};
use crate::error::{Error, check_key};
use crate::store::{LimitInfo, Namespace, StateView};

impl MemoryStore {
    /// Declares `key`'s limit, or redefines it.
    pub(super) fn define(&self, key: &str, limit: Limit, now: Nanos) -> Result<(), Error> {
        check_key(key)?;
        let ns = Namespace::Static;
        let hash = self.hash(ns, key);
        let mut guard = self.lock(hash);
        let now = guard.observe(now);
        let shard = &mut *guard;
        match shard.table.find_mut(hash, |s| is_slot_of(s, ns, key)) {
            Some(slot) => {
                let same_kind = matches!(
                    (slot.def(&shard.bindings), &limit),
                    (Some(Limit::Rate(_)), Limit::Rate(_))
                        | (Some(Limit::Concurrency(_)), Limit::Concurrency(_))
                );
                let state = match (same_kind, slot.state(&shard.bindings), &limit) {
                    (false, ..) => SlotState::Empty,
                    // Leases keep their expiries; the new limit applies to new leases.
                    (true, State::Leases(_, s), Limit::Concurrency(c)) => {
                        SlotState::Leases(*c, s.clone())
                    }
                    // Rate state keeps the limit it was written under: the core converts it
                    // (usage kept) at the next decision.
                    (true, state, _) => state.into_owned(),
                };
                slot.set(Some(limit), state, &mut shard.bindings);
            }
            None => {
                let slot = Slot::new(ns, key, Some(limit), SlotState::Empty, &mut shard.bindings);
                self.insert(shard, hash, slot, now);
            }
        }
        Ok(())
    }

    pub(super) fn info(slot: &Slot, bindings: &Bindings, now: Nanos) -> Option<LimitInfo> {
        let (limit, state) = match (slot.def(bindings), slot.state(bindings)) {
            (Some(def), state) => {
                let view = match (def, state) {
                    (Limit::Rate(r), State::Rate(s)) => StateView::Rate(r.usage(Some(&*s), now)),
                    (Limit::Rate(r), _) => StateView::Rate(r.usage(None, now)),
                    (Limit::Concurrency(c), s) => StateView::Concurrency {
                        live: match s {
                            State::Leases(_, s) => c.live_leases(Some(s), now).len() as u64,
                            _ => 0,
                        },
                        limit: u64::from(c.limit()),
                    },
                    (Limit::Barrier(_), _) => return None,
                };
                (def, view)
            }
            (None, State::Rate(s)) => (
                Limit::Rate(s.limit),
                StateView::Rate(s.limit.usage(Some(&*s), now)),
            ),
            (None, State::Leases(c, s)) => (
                Limit::Concurrency(*c),
                StateView::Concurrency {
                    live: c.live_leases(Some(s), now).len() as u64,
                    limit: u64::from(c.limit()),
                },
            ),
            (None, _) => return None,
        };
        Some(LimitInfo {
            key: slot.key.to_string(),
            namespace: slot.ns(),
            limit,
            state,
        })
    }
}
