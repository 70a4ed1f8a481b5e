//! Binding interning: the distinct limits a shard's compact slots were written under, shared by
//! index, and the collection of those no slot refers to any more.

use hashbrown::HashMap;
use tollgate_core::RateLimit;

use super::shard::Shard;
use super::slot::Slot;

/// A shard collects unused bindings when it holds this many more than after its last
/// collection (at least).
const MIN_COLLECT: usize = 64;

/// The limits a compact slot refers to: the one its state was written under and, for a
/// declared key, its definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Binding {
    pub(super) written: RateLimit,
    pub(super) def: Option<RateLimit>,
}

/// A shard's interned [`Binding`]s, by index. Indices stay valid while a slot refers to them:
/// unused ones are collected only by [`Shard::collect_bindings`], which marks every slot's.
#[derive(Default)]
pub(super) struct Bindings {
    list: Vec<Binding>,
    ids: HashMap<Binding, u32, foldhash::fast::RandomState>,
    /// Indices in `list` that no binding uses.
    free: Vec<u32>,
    /// The last index interned: most keys of a shard share one limit.
    last: Option<u32>,
    collect_at: usize,
    /// More bindings than `collect_at`: collect at the start of the shard's next operation,
    /// when no index is held outside the table.
    pub(super) due: bool,
}

impl Bindings {
    pub(super) fn get(&self, id: u32) -> &Binding {
        &self.list[id as usize]
    }

    pub(super) fn intern(&mut self, binding: Binding) -> u32 {
        if let Some(id) = self.last.filter(|&id| self.list[id as usize] == binding) {
            return id;
        }
        let id = match self.ids.get(&binding) {
            Some(&id) => id,
            None => {
                let id = match self.free.pop() {
                    Some(id) => {
                        self.list[id as usize] = binding;
                        id
                    }
                    None => {
                        // Invariant: the list holds at most a few bindings per resident key,
                        // far fewer than 2³² in any memory.
                        let id = u32::try_from(self.list.len()).expect("fewer than 2^32 bindings");
                        self.list.push(binding);
                        id
                    }
                };
                self.ids.insert(binding, id);
                self.due |= self.ids.len() >= self.collect_at.max(MIN_COLLECT);
                id
            }
        };
        self.last = Some(id);
        id
    }
}

impl Shard {
    /// Frees the bindings no slot refers to. It runs when the shard holds at least twice the
    /// bindings it kept last time and at least a quarter as many as it has keys (and at least
    /// [`MIN_COLLECT`]): a pass over the table is paid for by as many new bindings as a quarter
    /// of its keys (amortised O(1) each), and bindings no key uses stay below about a quarter of
    /// the key count, at about 200 bytes each (80 in the list, the rest in the index), in the
    /// worst case of a new limit at every request.
    #[cold]
    pub(super) fn collect_bindings(&mut self) {
        let b = &mut self.bindings;
        let mut used = vec![false; b.list.len()];
        for id in self.table.iter().filter_map(Slot::binding) {
            used[id as usize] = true;
        }
        b.ids.retain(|_, id| used[*id as usize]);
        b.free = (0..b.list.len())
            .filter(|&i| !used[i])
            .filter_map(|i| u32::try_from(i).ok())
            .collect();
        b.last = None;
        b.collect_at = (b.ids.len() * 2).max(self.table.len() / 4);
        b.due = false;
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use tollgate_core::{LimitState, Nanos};

    use super::*;
    use crate::error::Error;
    use crate::store::memory::shard::SHARDS;
    use crate::store::memory::{MemoryStore, gcra};
    use crate::store::{AcquireEntry, Store};

    fn bindings_held(store: &MemoryStore) -> usize {
        store
            .shards
            .iter()
            .map(|s| s.0.lock().bindings.list.len())
            .sum()
    }

    /// Why: a dynamic key's parameters are the last request's, and may differ at every
    /// request (a per-run CEL `limit`). Bindings no key refers to any more must be freed, or
    /// memory grows with every distinct definition ever seen.
    #[test]
    fn bindings_no_key_uses_are_collected() {
        let store = MemoryStore::new();
        let mut now = Nanos::from_secs(1_000);
        for burst in 1..=10_000u64 {
            let e = [AcquireEntry::dynamic("k", gcra("1/s", burst), 1)];
            store.acquire(&e, now).unwrap();
            now = now + Nanos::from_millis(1);
        }
        assert_eq!(store.len(), 1);
        let held = bindings_held(&store);
        assert!(held <= 2 * MIN_COLLECT, "{held} bindings held for one key");
    }

    /// Why: collecting bindings reuses their indices; a key whose binding were collected while
    /// it still referred to it would be decided under another key's limit. Many keys with
    /// distinct limits, churning, are checked decision by decision against the core.
    #[test]
    fn collecting_bindings_keeps_every_keys_limit() {
        let store = MemoryStore::new();
        // Distinct rates as well as bursts: a state taken over under the wrong old rate would
        // come out with another usage.
        let limits: Vec<RateLimit> = (0..400u64)
            .map(|i| gcra(&format!("{}/s", 1 + i % 20), 1 + i / 20))
            .collect();
        let keys: Vec<String> = (0..300).map(|i| format!("u{i}")).collect();
        let mut model: Vec<Option<LimitState>> = vec![None; keys.len()];
        let mut now = Nanos::from_secs(1_000);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = |n: u64| {
            // SplitMix64: deterministic, no dependency.
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) % n
        };
        for _ in 0..100_000 {
            let k = next(keys.len() as u64) as usize;
            let limit = limits[next(limits.len() as u64) as usize];
            let units = 1 + next(3) as u32;
            now = now + Nanos::from_micros(next(200));
            let prior = model[k].as_ref().filter(|s| s.fresh_at() > now);
            let expected = limit
                .decide(prior, now, NonZeroU32::new(units).unwrap())
                .map(|o| (o.decision, o.state));
            let got = store.acquire(&[AcquireEntry::dynamic(&keys[k], limit, units)], now);
            match (expected, got) {
                (Ok((decision, state)), Ok(got)) => {
                    assert_eq!(got.decisions[0], decision, "key {k} at {now:?}");
                    if decision.allowed {
                        model[k] = state;
                    }
                }
                (Err(_), Err(Error::InsufficientCapacity { .. })) => {}
                (e, g) => panic!("expected {e:?}, got {g:?}"),
            }
        }
        let held = bindings_held(&store);
        // Without collection each shard would keep nearly every one of the 400 limits.
        assert!(held <= SHARDS * (MIN_COLLECT + 4), "{held} bindings held");
    }
}
