//! Concurrency leases and barriers: a key's leases or barrier read, changed by the core, and
//! written back under the key's shard lock.

use tollgate_core::{BarrierState, Concurrency, ConcurrencyState, Limit, Nanos};

use super::MemoryStore;
use super::bindings::Bindings;
use super::key::is_slot_of;
use super::slot::{Slot, SlotState, State};
use crate::error::{Error, check_key};
use crate::store::{Namespace, Target};

impl MemoryStore {
    fn resolve_concurrency(
        slot: Option<&Slot>,
        bindings: &Bindings,
        target: &Target<'_, Concurrency>,
        now: Nanos,
    ) -> Result<Concurrency, Error> {
        let key = target.key();
        if let Some(State::Rate(s)) = slot
            .filter(|s| s.fresh_at() > now)
            .map(|s| s.state(bindings))
            && matches!(target, Target::Dynamic(..))
        {
            return Err(Error::WrongAlgorithm {
                key: key.to_owned(),
                expected: "a concurrency limit",
                found: s.limit.algorithm(),
            });
        }
        match target {
            Target::Dynamic(_, c) => Ok(*c),
            Target::Static(_) => match slot.and_then(|s| s.def(bindings)) {
                Some(Limit::Concurrency(c)) => Ok(c),
                Some(other) => Err(Error::WrongAlgorithm {
                    key: key.to_owned(),
                    expected: "a concurrency limit",
                    found: other.algorithm(),
                }),
                None => Err(Error::UnknownLimit {
                    key: key.to_owned(),
                }),
            },
        }
    }

    /// Runs `f` on a concurrency key's leases and stores what it returns.
    pub(super) fn with_leases<T>(
        &self,
        target: Target<'_, Concurrency>,
        now: Nanos,
        f: impl FnOnce(
            &Concurrency,
            Option<&ConcurrencyState>,
            Nanos,
        ) -> Result<(T, Option<ConcurrencyState>), Error>,
    ) -> Result<T, Error> {
        let key = target.key();
        check_key(key)?;
        let ns = target.namespace();
        let hash = self.hash(ns, key);
        let mut guard = self.lock(hash);
        let now = guard.observe(now);
        let shard = &mut *guard;
        let (out, next, limit) = {
            let slot = shard.find(hash, ns, key);
            let limit = Self::resolve_concurrency(slot, &shard.bindings, &target, now)?;
            let state = slot.map(|s| s.state(&shard.bindings));
            let prior = match &state {
                Some(State::Leases(_, s)) => Some(*s),
                _ => None,
            };
            let (out, next) = f(&limit, prior, now)?;
            (out, next, limit)
        };
        let found = shard.table.find_entry(hash, |s| is_slot_of(s, ns, key));
        match (found, next) {
            (Ok(mut slot), Some(s)) => slot
                .get_mut()
                .set_state(SlotState::Leases(limit, s), &mut shard.bindings),
            (Ok(mut slot), None) if ns == Namespace::Static => slot
                .get_mut()
                .set_state(SlotState::Empty, &mut shard.bindings),
            (Ok(slot), None) => {
                slot.remove();
            }
            (Err(_), Some(s)) => {
                let state = SlotState::Leases(limit, s);
                let slot = Slot::new(ns, key, None, state, &mut shard.bindings);
                self.insert(shard, hash, slot, now);
            }
            (Err(_), None) => {}
        }
        Ok(out)
    }

    pub(super) fn with_barrier<T>(
        &self,
        key: &str,
        now: Nanos,
        f: impl FnOnce(Option<&BarrierState>, Nanos) -> Result<(T, Option<BarrierState>), Error>,
    ) -> Result<T, Error> {
        check_key(key)?;
        let ns = Namespace::Barrier;
        let hash = self.hash(ns, key);
        let mut guard = self.lock(hash);
        let now = guard.observe(now);
        let shard = &mut *guard;
        let prior = match shard.find(hash, ns, key).map(|s| s.state(&shard.bindings)) {
            Some(State::Barrier(b)) => Some(*b),
            _ => None,
        };
        let (out, next) = f(prior.as_ref(), now)?;
        if let Some(b) = next {
            match shard.table.find_mut(hash, |s| is_slot_of(s, ns, key)) {
                Some(slot) => slot.set_state(SlotState::Barrier(b), &mut shard.bindings),
                None => {
                    let state = SlotState::Barrier(b);
                    let slot = Slot::new(ns, key, None, state, &mut shard.bindings);
                    self.insert(shard, hash, slot, now);
                }
            }
        }
        Ok(out)
    }
}
