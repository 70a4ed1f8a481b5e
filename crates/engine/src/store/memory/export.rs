//! Export and import of rate state: every live rate state out (to move a store's state
//! elsewhere), and one key's state in.

use tollgate_core::{LimitState, Nanos};

use super::MemoryStore;
use super::key::is_slot_of;
use super::slot::{Slot, SlotState, State};
use crate::error::{Error, check_key};
use crate::store::{ExportedState, Namespace};

impl MemoryStore {
    /// The live rate states of every shard.
    pub(super) fn export_rates(&self, now: Nanos) -> Result<Vec<ExportedState>, Error> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.0.lock();
            let now = shard.observe(now);
            out.extend(
                shard
                    .table
                    .iter()
                    .filter(|s| s.fresh_at() > now)
                    .filter_map(|s| match s.state(&shard.bindings) {
                        State::Rate(state) => Some(ExportedState {
                            namespace: s.ns(),
                            key: s.key.to_string(),
                            state: state.into_owned(),
                        }),
                        _ => None,
                    }),
            );
        }
        Ok(out)
    }

    /// Writes one key's rate state; a static key must be declared already.
    pub(super) fn import_rate(
        &self,
        namespace: Namespace,
        key: &str,
        state: LimitState,
        now: Nanos,
    ) -> Result<(), Error> {
        check_key(key)?;
        let hash = self.hash(namespace, key);
        let mut guard = self.lock(hash);
        let now = guard.observe(now);
        let shard = &mut *guard;
        match shard
            .table
            .find_mut(hash, |s| is_slot_of(s, namespace, key))
        {
            Some(slot) => slot.set_state(SlotState::Rate(state), &mut shard.bindings),
            None if namespace == Namespace::Static => {
                return Err(Error::UnknownLimit {
                    key: key.to_owned(),
                });
            }
            None => {
                let state = SlotState::Rate(state);
                let slot = Slot::new(namespace, key, None, state, &mut shard.bindings);
                self.insert(shard, hash, slot, now);
            }
        }
        Ok(())
    }
}
