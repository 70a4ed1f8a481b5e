//! Idle-key sweeping: each shard forgets dynamic keys and barriers that went fresh on their own
//! once it has doubled in size since its last sweep (amortised O(1) per insert).

use tollgate_core::Nanos;

use super::MemoryStore;
use super::shard::Shard;
use super::slot::Slot;
use crate::store::Namespace;

/// A shard sweeps when it holds this many keys more than after its last sweep (at least).
pub(super) const MIN_SWEEP: usize = 256;

impl Shard {
    /// Forgets dynamic keys and barriers that are fresh at `now`; empties static keys' state.
    pub(super) fn sweep(&mut self, now: Nanos) -> usize {
        let before = self.table.len();
        self.table.retain(|s| match s.ns() {
            Namespace::Static => {
                if s.fresh_at() <= now {
                    s.forget_state();
                }
                true
            }
            _ => s.fresh_at() > now,
        });
        self.sweep_at = (self.table.len() * 2).max(MIN_SWEEP);
        before - self.table.len()
    }
}

impl MemoryStore {
    /// Inserts a new slot, sweeping the shard first if it has grown enough since its last sweep.
    pub(super) fn insert(&self, shard: &mut Shard, hash: u64, slot: Slot, now: Nanos) {
        if shard.table.len() >= shard.sweep_at {
            shard.sweep(now);
        }
        shard
            .table
            .insert_unique(hash, slot, |s| self.hash(s.ns(), &s.key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::gcra;
    use crate::store::{AcquireEntry, Store};

    #[test]
    fn one_shot_dynamic_keys_do_not_stay_resident() {
        let store = MemoryStore::new();
        let limit = gcra("1/s", 1);
        let mut now = Nanos::from_secs(1_000);
        for i in 0..200_000u32 {
            let key = format!("user:{i}");
            assert!(
                store
                    .acquire(&[AcquireEntry::dynamic(&key, limit, 1)], now)
                    .unwrap()
                    .allowed
            );
            // 1 ms apart: each key is fresh again 1 s after its use.
            now = now + Nanos::from_millis(1);
        }
        // At most ~1000 keys are live at any instant; sweeps keep each shard within 2x + slack.
        let resident = store.len();
        assert!(resident < 64 * MIN_SWEEP * 2, "{resident} keys resident");
        assert!(store.sweep(now + Nanos::from_secs(2)).unwrap() > 0 || store.is_empty());
        assert_eq!(store.len(), 0);
    }
}
