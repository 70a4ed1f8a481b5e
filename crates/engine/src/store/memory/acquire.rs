//! Rate-limit acquires and refunds: the single-key fast path (a gcra or token_bucket state
//! decided in place), the general single-key path, and multi-key requests decided under all
//! their shards' locks and written all or none.

use std::borrow::Cow;
use std::num::NonZeroU32;

use hashbrown::hash_table::OccupiedEntry;
use smallvec::SmallVec;
use tollgate_core::{Decision, GcraState, Limit, LimitState, Nanos, Outcome, RateLimit};

use super::MemoryStore;
use super::bindings::Bindings;
use super::key::is_slot_of;
use super::shard::{Shard, guard_for};
use super::slot::{Body, Slot, SlotState, State};
use crate::error::Error;
use crate::store::{AcquireEntry, Acquired, Namespace, Target};

/// The limit an acquire entry resolves to, with the key's prior state.
fn resolve_rate<'s>(
    slot: Option<&'s Slot>,
    bindings: &Bindings,
    target: &Target<'_, RateLimit>,
    now: Nanos,
) -> Result<(RateLimit, Option<Cow<'s, LimitState>>), Error> {
    let key = target.key();
    let prior = |slot: Option<&'s Slot>| -> Result<Option<Cow<'s, LimitState>>, Error> {
        // A fresh state is no state: a dynamic key whose leases all lapsed is free for reuse.
        match slot
            .filter(|s| s.fresh_at() > now)
            .map(|s| s.state(bindings))
        {
            Some(State::Rate(s)) => Ok(Some(s)),
            Some(State::Leases(..)) => Err(Error::WrongAlgorithm {
                key: key.to_owned(),
                expected: "a rate limit",
                found: tollgate_core::Algorithm::Concurrency,
            }),
            _ => Ok(None),
        }
    };
    match target {
        Target::Dynamic(_, limit) => Ok((*limit, prior(slot)?)),
        Target::Static(_) => match slot.and_then(|s| s.def(bindings)) {
            Some(Limit::Rate(r)) => Ok((r, prior(slot)?)),
            Some(other) => Err(Error::WrongAlgorithm {
                key: key.to_owned(),
                expected: "a rate limit",
                found: other.algorithm(),
            }),
            None => Err(Error::UnknownLimit {
                key: key.to_owned(),
            }),
        },
    }
}

fn decide(
    limit: &RateLimit,
    prior: Option<&LimitState>,
    now: Nanos,
    key: &str,
    units: u64,
) -> Result<Outcome, Error> {
    let capacity_error = || Error::InsufficientCapacity {
        key: key.to_owned(),
        units,
        capacity: limit.capacity(),
    };
    let n = u32::try_from(units)
        .ok()
        .and_then(NonZeroU32::new)
        .ok_or_else(capacity_error)?;
    limit.decide(prior, now, n).map_err(|_| capacity_error())
}

/// The `gcra`/`token_bucket` fast path of a single-key acquire: a key whose state was written
/// under the very limit the request resolves to is decided where its state lies
/// ([`tollgate_core::Gcra::decide_in_place`], the same answer and next state as
/// [`RateLimit::decide`]), without moving an [`Outcome`]. `None`: not that case, so the general
/// path decides (other algorithms, changed parameters, a missing definition, no rate state).
#[inline]
fn gcra_in_place(
    slot: &mut Slot,
    bindings: &Bindings,
    target: &Target<'_, RateLimit>,
    now: Nanos,
    units: u32,
) -> Option<Result<Decision, Error>> {
    let (Body::Dynamic { binding, tat } | Body::Static { binding, tat }) = &mut slot.body else {
        return None;
    };
    let binding = bindings.get(*binding);
    let limit = match target {
        Target::Dynamic(_, limit) => limit,
        Target::Static(_) => binding.def.as_ref()?,
    };
    if binding.written != *limit {
        return None;
    }
    let gcra = match limit {
        RateLimit::Gcra(g) => g,
        RateLimit::TokenBucket(t) => t.as_gcra(),
        _ => return None,
    };
    let mut state = GcraState { tat: *tat };
    let decision = match gcra.decide_in_place(&mut state, now, NonZeroU32::new(units)?) {
        Ok(decision) => decision,
        Err(e) => {
            return Some(Err(Error::InsufficientCapacity {
                key: target.key().to_owned(),
                units: e.units,
                capacity: e.capacity,
            }));
        }
    };
    if decision.allowed {
        *tat = state.tat;
    }
    Some(Ok(decision))
}

/// One distinct key of a multi-key request.
struct Prepared<'a> {
    target: Target<'a, RateLimit>,
    hash: u64,
    units: u64,
}

impl MemoryStore {
    fn prepare<'a>(
        &self,
        entries: &[AcquireEntry<'a>],
    ) -> (SmallVec<[Prepared<'a>; 4]>, SmallVec<[usize; 4]>) {
        let mut keys: SmallVec<[Prepared<'a>; 4]> = SmallVec::new();
        let mut index_of: SmallVec<[usize; 4]> = SmallVec::with_capacity(entries.len());
        for e in entries {
            let ns = e.target.namespace();
            let key = e.target.key();
            match keys
                .iter()
                .position(|p| p.target.namespace() == ns && p.target.key() == key)
            {
                Some(i) => {
                    keys[i].units += u64::from(e.units);
                    // Last writer wins for a dynamic key's parameters.
                    keys[i].target = e.target;
                    index_of.push(i);
                }
                None => {
                    index_of.push(keys.len());
                    keys.push(Prepared {
                        target: e.target,
                        hash: self.hash(ns, key),
                        units: u64::from(e.units),
                    });
                }
            }
        }
        (keys, index_of)
    }

    /// Writes the state an admitted decision produced.
    fn apply_rate(
        &self,
        shard: &mut Shard,
        hash: u64,
        ns: Namespace,
        key: &str,
        next: Option<LimitState>,
        now: Nanos,
    ) {
        let found = shard.table.find_entry(hash, |s| is_slot_of(s, ns, key));
        match (found, next) {
            (Ok(mut slot), Some(state)) => slot
                .get_mut()
                .set_state(SlotState::Rate(state), &mut shard.bindings),
            (Ok(mut slot), None) if ns == Namespace::Static => slot
                .get_mut()
                .set_state(SlotState::Empty, &mut shard.bindings),
            (Ok(slot), None) => {
                slot.remove();
            }
            (Err(_), Some(state)) => {
                let slot = Slot::new(ns, key, None, SlotState::Rate(state), &mut shard.bindings);
                self.insert(shard, hash, slot, now);
            }
            (Err(_), None) => {}
        }
    }

    /// A multi-key acquire: every key decided under the locks of all the shards involved, then
    /// all written or none. Kept out of line, so the single-key path does not carry its frame.
    #[inline(never)]
    pub(super) fn acquire_many(
        &self,
        entries: &[AcquireEntry<'_>],
        now: Nanos,
    ) -> Result<Acquired, Error> {
        let (keys, index_of) = self.prepare(entries);
        let mut shard_ids: SmallVec<[usize; 4]> =
            keys.iter().map(|p| Self::shard_of(p.hash)).collect();
        let (mut guards, now) = self.lock_many(&mut shard_ids, now);
        let mut outcomes: SmallVec<[Outcome; 4]> = SmallVec::with_capacity(keys.len());
        for p in &keys {
            let shard = guard_for(&mut guards, Self::shard_of(p.hash));
            let (ns, key) = (p.target.namespace(), p.target.key());
            let slot = shard.find(p.hash, ns, key);
            let (limit, prior) = resolve_rate(slot, &shard.bindings, &p.target, now)?;
            let mut outcome = decide(&limit, prior.as_deref(), now, key, p.units)?;
            if let Some(left) = self.pauses.left(ns, key, now) {
                outcome.decision = outcome.decision.paused(left);
            }
            outcomes.push(outcome);
        }
        let allowed = outcomes.iter().all(|o| o.decision.allowed);
        let decisions = index_of.iter().map(|&i| outcomes[i].decision).collect();
        if allowed {
            for (p, o) in keys.iter().zip(outcomes) {
                let shard = guard_for(&mut guards, Self::shard_of(p.hash));
                self.apply_rate(
                    shard,
                    p.hash,
                    p.target.namespace(),
                    p.target.key(),
                    o.state,
                    now,
                );
            }
        }
        Ok(Acquired { allowed, decisions })
    }

    /// The single-key fast path: one lock, one hash-table probe, the state replaced in place.
    pub(super) fn acquire_one(
        &self,
        entry: &AcquireEntry<'_>,
        now: Nanos,
    ) -> Result<Acquired, Error> {
        let (ns, key) = (entry.target.namespace(), entry.target.key());
        let hash = self.hash(ns, key);
        let mut guard = self.lock(hash);
        let now = guard.observe(now);
        let shard = &mut *guard;
        let found = shard.table.find_entry(hash, |s| is_slot_of(s, ns, key));
        let decision = match found {
            Ok(mut slot) => {
                match gcra_in_place(
                    slot.get_mut(),
                    &shard.bindings,
                    &entry.target,
                    now,
                    entry.units,
                ) {
                    Some(answer) => answer?,
                    None => Self::decide_found(slot, &mut shard.bindings, entry, now)?,
                }
            }
            Err(_) => self.decide_new(shard, hash, entry, now)?,
        };
        let mut decisions = SmallVec::new();
        decisions.push(decision);
        Ok(Acquired {
            allowed: decision.allowed,
            decisions,
        })
    }

    /// A single-key acquire of a resident key off the gcra fast path: the core decides, and an
    /// admission replaces the state in place (or forgets a dynamic key that is fresh again).
    /// Out of line: inlined, its moves of the `Outcome` slowed the fast path's caller down.
    #[inline(never)]
    fn decide_found(
        mut slot: OccupiedEntry<'_, Slot>,
        bindings: &mut Bindings,
        entry: &AcquireEntry<'_>,
        now: Nanos,
    ) -> Result<Decision, Error> {
        let (ns, key) = (entry.target.namespace(), entry.target.key());
        let outcome = {
            let (limit, prior) = resolve_rate(Some(slot.get()), bindings, &entry.target, now)?;
            decide(&limit, prior.as_deref(), now, key, u64::from(entry.units))?
        };
        if outcome.decision.allowed {
            match outcome.state {
                Some(state) => slot.get_mut().set_state(SlotState::Rate(state), bindings),
                None if ns == Namespace::Static => {
                    slot.get_mut().set_state(SlotState::Empty, bindings);
                }
                None => {
                    slot.remove();
                }
            }
        }
        Ok(outcome.decision)
    }

    /// A single-key acquire of a key that is not resident: the core decides from fresh, and an
    /// admission inserts the key.
    #[inline(never)]
    fn decide_new(
        &self,
        shard: &mut Shard,
        hash: u64,
        entry: &AcquireEntry<'_>,
        now: Nanos,
    ) -> Result<Decision, Error> {
        let (ns, key) = (entry.target.namespace(), entry.target.key());
        let (limit, _) = resolve_rate(None, &shard.bindings, &entry.target, now)?;
        let outcome = decide(&limit, None, now, key, u64::from(entry.units))?;
        if let (true, Some(state)) = (outcome.decision.allowed, outcome.state) {
            let slot = Slot::new(ns, key, None, SlotState::Rate(state), &mut shard.bindings);
            self.insert(shard, hash, slot, now);
        }
        Ok(outcome.decision)
    }

    /// Gives units back to every key of a request, under the locks of all the shards involved.
    pub(super) fn refund_all(&self, entries: &[AcquireEntry<'_>], now: Nanos) -> Result<(), Error> {
        let (keys, _) = self.prepare(entries);
        let mut shard_ids: SmallVec<[usize; 4]> =
            keys.iter().map(|p| Self::shard_of(p.hash)).collect();
        let (mut guards, now) = self.lock_many(&mut shard_ids, now);
        let mut next: SmallVec<[Option<LimitState>; 4]> = SmallVec::new();
        for p in &keys {
            let shard = guard_for(&mut guards, Self::shard_of(p.hash));
            let slot = shard.find(p.hash, p.target.namespace(), p.target.key());
            let (limit, prior) = resolve_rate(slot, &shard.bindings, &p.target, now)?;
            let units = NonZeroU32::new(u32::try_from(p.units).unwrap_or(u32::MAX))
                .unwrap_or(NonZeroU32::MIN);
            next.push(limit.refund(prior.as_deref(), now, units));
        }
        for (p, n) in keys.iter().zip(next) {
            let shard = guard_for(&mut guards, Self::shard_of(p.hash));
            self.apply_rate(shard, p.hash, p.target.namespace(), p.target.key(), n, now);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::memory::gcra;
    use crate::store::memory::shard::SHARDS;

    #[test]
    fn a_dynamic_key_never_touches_the_static_limit_of_that_name() {
        let store = MemoryStore::new();
        let now = Nanos::from_secs(10);
        store
            .put_limit("stripe-api", Limit::Rate(gcra("1/m", 1)), now)
            .unwrap();
        let dynamic = AcquireEntry::dynamic("stripe-api", gcra("100/m", 100), 50);
        assert!(store.acquire(&[dynamic], now).unwrap().allowed);
        assert!(
            store
                .acquire(&[AcquireEntry::new("stripe-api", 1)], now)
                .unwrap()
                .allowed
        );
        assert!(
            !store
                .acquire(&[AcquireEntry::new("stripe-api", 1)], now)
                .unwrap()
                .allowed
        );
    }

    /// Why: single-key acquires of gcra and token-bucket keys take a fast path
    /// (`gcra_in_place`) that decides on the slot's state in place. Whatever the sequence
    /// (parameters changing, algorithms changing, static and dynamic keys, units beyond
    /// capacity, the clock stepping back), every answer and every error must be the core's
    /// `RateLimit::decide` on the state the store is meant to hold.
    mod fast_path {
        use super::*;
        use proptest::prelude::*;
        use tollgate_core::{Align, FixedWindow, Period, TokenBucket};

        fn limits() -> Vec<RateLimit> {
            vec![
                gcra("10/s", 5),
                gcra("10/s", 3),
                gcra("3/s", 5),
                RateLimit::TokenBucket(TokenBucket::new(5, "10/s".parse().unwrap()).unwrap()),
                RateLimit::FixedWindow(
                    FixedWindow::new(4, Period::SECOND, Align::FirstUse).unwrap(),
                ),
            ]
        }

        /// `(static?, limit index, redefine first?, units, time step in ms, step back?)`
        type Op = (bool, usize, bool, u32, u64, bool);

        fn ops() -> impl Strategy<Value = Vec<Op>> {
            prop::collection::vec(
                (
                    any::<bool>(),
                    0..5usize,
                    prop::bool::weighted(0.1),
                    1..=7u32,
                    prop_oneof![3 => 0..200u64, 1 => 0..3_000u64],
                    prop::bool::weighted(0.1),
                ),
                1..120,
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn single_key_acquires_answer_what_the_core_decides(ops in ops()) {
                let limits = limits();
                let store = MemoryStore::new();
                let mut now = Nanos::from_secs(1_000);
                // Each shard keeps its own high-water mark; the two keys may share one.
                let shard = |ns| MemoryStore::shard_of(store.hash(ns, "k"));
                let shards = [shard(Namespace::Static), shard(Namespace::Dynamic)];
                let mut high_water = [Nanos::ZERO; SHARDS];
                // The model: per namespace, the state written, and the static definition.
                let mut states: [Option<LimitState>; 2] = [None, None];
                let mut def = limits[0];
                store.put_limit("k", Limit::Rate(def), now).unwrap();
                high_water[shards[0]] = now;
                for (is_static, l, redefine, units, step, back) in ops {
                    now = if back {
                        now.saturating_sub(Nanos::from_millis(step))
                    } else {
                        now + Nanos::from_millis(step)
                    };
                    let limit = limits[l];
                    if is_static && redefine {
                        store.put_limit("k", Limit::Rate(limit), now).unwrap();
                        high_water[shards[0]] = high_water[shards[0]].max(now);
                        def = limit;
                    }
                    let hw = &mut high_water[shards[usize::from(!is_static)]];
                    let at = (*hw).max(now);
                    *hw = at;
                    let (slot, entry, limit) = if is_static {
                        (0, AcquireEntry::new("k", units), def)
                    } else {
                        (1, AcquireEntry::dynamic("k", limit, units), limit)
                    };
                    let prior = states[slot].as_ref().filter(|s| s.fresh_at() > at);
                    let expected = limit.decide(prior, at, NonZeroU32::new(units).unwrap());
                    let got = store.acquire(&[entry], now);
                    match expected {
                        Err(e) => match got {
                            Err(Error::InsufficientCapacity { units: u, capacity: c, .. }) => {
                                prop_assert_eq!((u, c), (e.units, e.capacity));
                            }
                            other => prop_assert!(false, "expected a capacity error: {:?}", other),
                        },
                        Ok(out) => {
                            let got = got.unwrap();
                            prop_assert_eq!(got.allowed, out.decision.allowed);
                            prop_assert_eq!(&got.decisions[..], &[out.decision][..]);
                            if out.decision.allowed {
                                states[slot] = out.state;
                            }
                        }
                    }
                }
            }
        }
    }
}
