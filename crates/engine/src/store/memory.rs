//! The in-memory store: sharded hash tables behind short mutexes. The fast path.
//!
//! Why mutexes and not lock-free cells: a multi-key acquire must see and replace several keys'
//! states at once. Each shard is a `parking_lot` mutex held only for the decision itself (no IO,
//! no allocation on the hot path for existing keys); a request locks the shards it touches in
//! ascending shard order, so overlapping key sets in any order cannot deadlock.
//!
//! Idle dynamic keys are forgotten: a key whose state becomes fresh after a decision is removed
//! at once, and each shard sweeps out keys that went fresh on their own whenever it has doubled
//! in size since its last sweep (amortised O(1) per insert), so one-shot keys never accumulate.

use std::hash::{BuildHasher, Hasher};
use std::num::NonZeroU32;

use hashbrown::HashTable;
use hashbrown::hash_table::OccupiedEntry;
use parking_lot::{Mutex, MutexGuard};
use smallvec::SmallVec;
use tollgate_core::{
    Barrier, BarrierState, BarrierStatus, Concurrency, ConcurrencyState, Decision, LeaseDecision,
    Limit, LimitState, Nanos, Outcome, RateLimit, RateState,
};

use super::{
    AcquireEntry, Acquired, ExportedState, LimitInfo, Namespace, StateView, Store, Target,
    validate_entries,
};
use crate::error::{Error, check_key};

/// Shards: a power of two, enough that 2 to 64 threads rarely meet on one lock.
const SHARDS: usize = 64;
/// A shard sweeps when it holds this many keys more than after its last sweep (at least).
const MIN_SWEEP: usize = 256;

/// The in-memory store. Cheap to share behind an `Arc`; `Limiter` does that for you.
///
/// ```
/// use tollgate::{MemoryStore, Store, AcquireEntry};
/// use tollgate_core::{Gcra, Limit, Nanos, RateLimit};
/// let store = MemoryStore::new();
/// let now = Nanos::from_secs(1_000);
/// store.put_limit("api", Limit::Rate(RateLimit::Gcra(Gcra::new("1/s".parse()?, 1)?)), now)?;
/// assert!(store.acquire(&[AcquireEntry::new("api", 1)], now)?.allowed);
/// assert!(!store.acquire(&[AcquireEntry::new("api", 1)], now)?.allowed);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct MemoryStore {
    shards: Box<[Padded<Mutex<Shard>>]>,
    hasher: foldhash::fast::RandomState,
}

/// Keeps each shard's lock on its own cache line, so threads on neighbouring shards don't
/// contend through false sharing.
#[repr(align(128))]
struct Padded<T>(T);

/// The shards one request holds, by shard index, ascending.
type Guards<'a> = SmallVec<[(usize, MutexGuard<'a, Shard>); 4]>;

struct Shard {
    table: HashTable<Slot>,
    /// The latest `now` this shard has decided at: a clock that steps back is treated as
    /// standing still, so a key forgotten as fresh can never be re-opened by earlier times.
    high_water: Nanos,
    sweep_at: usize,
}

struct Slot {
    ns: Namespace,
    key: Box<str>,
    /// Static keys only: the declared definition. Boxed: most slots are dynamic.
    def: Option<Box<Limit>>,
    state: SlotState,
    /// When `state` becomes fresh (forgettable).
    fresh_at: Nanos,
}

enum SlotState {
    Empty,
    Rate(LimitState),
    Leases(Concurrency, ConcurrencyState),
    Barrier(BarrierState),
}

impl SlotState {
    fn fresh_at(&self) -> Nanos {
        match self {
            SlotState::Empty => Nanos::ZERO,
            SlotState::Rate(s) => s.fresh_at(),
            SlotState::Leases(_, s) => s.fresh_at(),
            SlotState::Barrier(b) => b.expires_at,
        }
    }
}

impl Slot {
    fn new(ns: Namespace, key: &str) -> Slot {
        Slot {
            ns,
            key: key.into(),
            def: None,
            state: SlotState::Empty,
            fresh_at: Nanos::ZERO,
        }
    }

    fn set_state(&mut self, state: SlotState) {
        self.fresh_at = state.fresh_at();
        self.state = state;
    }
}

/// Whether two keys are equal. Short keys (nearly all) are compared with a few loads in
/// registers: hashbrown calls the comparison for every tag match, and `==` on `str` calls
/// `bcmp` in libc, which costs more than the rest of the probe.
#[inline]
fn same_key(a: &str, b: &str) -> bool {
    fn word<const N: usize>(s: &[u8], at: usize) -> [u8; N] {
        let mut w = [0; N];
        w.copy_from_slice(&s[at..at + N]);
        w
    }
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        // Two overlapping words cover every byte.
        8..=16 => word::<8>(a, 0) == word::<8>(b, 0) && word::<8>(a, n - 8) == word::<8>(b, n - 8),
        4..=7 => word::<4>(a, 0) == word::<4>(b, 0) && word::<4>(a, n - 4) == word::<4>(b, n - 4),
        0..=3 => a.iter().zip(b).all(|(x, y)| x == y),
        _ => a == b,
    }
}

impl Shard {
    fn find(&self, hash: u64, ns: Namespace, key: &str) -> Option<&Slot> {
        self.table
            .find(hash, |s| s.ns == ns && same_key(&s.key, key))
    }

    fn find_mut(&mut self, hash: u64, ns: Namespace, key: &str) -> Option<&mut Slot> {
        self.table
            .find_mut(hash, |s| s.ns == ns && same_key(&s.key, key))
    }

    fn remove(&mut self, hash: u64, ns: Namespace, key: &str) -> Option<Slot> {
        self.table
            .find_entry(hash, |s| s.ns == ns && same_key(&s.key, key))
            .ok()
            .map(|e| e.remove().0)
    }

    /// Moves the shard's time forward; returns the time to decide at.
    fn observe(&mut self, now: Nanos) -> Nanos {
        self.high_water = self.high_water.max(now);
        self.high_water
    }

    /// Forgets dynamic keys and barriers that are fresh at `now`; empties static keys' state.
    fn sweep(&mut self, now: Nanos) -> usize {
        let before = self.table.len();
        self.table.retain(|s| match s.ns {
            Namespace::Static => {
                if s.fresh_at <= now {
                    s.state = SlotState::Empty;
                }
                true
            }
            _ => s.fresh_at > now,
        });
        self.sweep_at = (self.table.len() * 2).max(MIN_SWEEP);
        before - self.table.len()
    }
}

impl Default for MemoryStore {
    fn default() -> MemoryStore {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore {
            shards: (0..SHARDS)
                .map(|_| {
                    Padded(Mutex::new(Shard {
                        table: HashTable::new(),
                        high_water: Nanos::ZERO,
                        sweep_at: MIN_SWEEP,
                    }))
                })
                .collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// Keys currently held in memory (static, dynamic and barriers), including ones that are
    /// fresh but not yet swept.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().table.len()).sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn hash(&self, ns: Namespace, key: &str) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write_u8(ns as u8);
        h.write(key.as_bytes());
        h.finish()
    }

    fn shard_of(hash: u64) -> usize {
        // High-middle bits: hashbrown uses the low bits for the bucket and the top 7 for tags.
        ((hash >> 32) as usize) & (SHARDS - 1)
    }

    fn lock(&self, hash: u64) -> MutexGuard<'_, Shard> {
        self.shards[Self::shard_of(hash)].0.lock()
    }

    fn insert(&self, shard: &mut Shard, hash: u64, slot: Slot, now: Nanos) {
        if shard.table.len() >= shard.sweep_at {
            shard.sweep(now);
        }
        let hasher = &self.hasher;
        shard.table.insert_unique(hash, slot, |s| {
            let mut h = hasher.build_hasher();
            h.write_u8(s.ns as u8);
            h.write(s.key.as_bytes());
            h.finish()
        });
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
        match (shard.find_mut(hash, ns, key), next) {
            (Some(slot), Some(state)) => slot.set_state(SlotState::Rate(state)),
            (Some(slot), None) if ns == Namespace::Static => slot.set_state(SlotState::Empty),
            (Some(_), None) => {
                shard.remove(hash, ns, key);
            }
            (None, Some(state)) => {
                let mut slot = Slot::new(ns, key);
                slot.set_state(SlotState::Rate(state));
                self.insert(shard, hash, slot, now);
            }
            (None, None) => {}
        }
    }

    /// Shards locked for one request, in ascending order, with the request's decision time.
    fn lock_many(&self, shard_ids: &mut SmallVec<[usize; 4]>, now: Nanos) -> (Guards<'_>, Nanos) {
        shard_ids.sort_unstable();
        shard_ids.dedup();
        let mut guards: Guards<'_> = shard_ids
            .iter()
            .map(|&i| (i, self.shards[i].0.lock()))
            .collect();
        let at = guards
            .iter()
            .map(|(_, g)| g.high_water)
            .max()
            .unwrap_or(now)
            .max(now);
        for (_, g) in &mut guards {
            g.observe(at);
        }
        (guards, at)
    }
}

fn guard_for<'g, 'a>(
    guards: &'g mut [(usize, MutexGuard<'a, Shard>)],
    shard: usize,
) -> &'g mut Shard {
    // Invariant: `lock_many` locked every shard a prepared key maps to.
    let i = guards
        .iter()
        .position(|(i, _)| *i == shard)
        .unwrap_or_else(|| unreachable!("shard not locked"));
    &mut guards[i].1
}

/// The limit an acquire entry resolves to, with the key's prior state.
fn resolve_rate<'s>(
    slot: Option<&'s Slot>,
    target: &Target<'_, RateLimit>,
    now: Nanos,
) -> Result<(RateLimit, Option<&'s LimitState>), Error> {
    let key = target.key();
    let prior = |slot: Option<&'s Slot>| -> Result<Option<&'s LimitState>, Error> {
        // A fresh state is no state: a dynamic key whose leases all lapsed is free for reuse.
        match slot.filter(|s| s.fresh_at > now).map(|s| &s.state) {
            Some(SlotState::Rate(s)) => Ok(Some(s)),
            Some(SlotState::Leases(..)) => Err(Error::WrongAlgorithm {
                key: key.to_owned(),
                expected: "a rate limit",
                found: tollgate_core::Algorithm::Concurrency,
            }),
            _ => Ok(None),
        }
    };
    match target {
        Target::Dynamic(_, limit) => Ok((*limit, prior(slot)?)),
        Target::Static(_) => match slot.and_then(|s| s.def.as_deref()) {
            Some(Limit::Rate(r)) => Ok((*r, prior(slot)?)),
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
    target: &Target<'_, RateLimit>,
    now: Nanos,
    units: u32,
) -> Option<Result<Decision, Error>> {
    let limit = match target {
        Target::Dynamic(_, limit) => limit,
        Target::Static(_) => match slot.def.as_deref() {
            Some(Limit::Rate(limit)) => limit,
            _ => return None,
        },
    };
    let gcra = match limit {
        RateLimit::Gcra(g) => g,
        RateLimit::TokenBucket(t) => t.as_gcra(),
        _ => return None,
    };
    let SlotState::Rate(LimitState {
        limit: written,
        state: RateState::Gcra(state),
    }) = &mut slot.state
    else {
        return None;
    };
    if written != limit {
        return None;
    }
    let decision = match gcra.decide_in_place(state, now, NonZeroU32::new(units)?) {
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
        // `LimitState::fresh_at` of a gcra state.
        slot.fresh_at = state.tat;
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

    fn resolve_concurrency(
        slot: Option<&Slot>,
        target: &Target<'_, Concurrency>,
        now: Nanos,
    ) -> Result<Concurrency, Error> {
        let key = target.key();
        if let Some(SlotState::Rate(s)) = slot.filter(|s| s.fresh_at > now).map(|s| &s.state)
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
            Target::Static(_) => match slot.and_then(|s| s.def.as_deref()) {
                Some(Limit::Concurrency(c)) => Ok(*c),
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
    fn with_leases<T>(
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
        let mut shard = self.lock(hash);
        let now = shard.observe(now);
        let slot = shard.find(hash, ns, key);
        let limit = Self::resolve_concurrency(slot, &target, now)?;
        let prior = match slot.map(|s| &s.state) {
            Some(SlotState::Leases(_, s)) => Some(s),
            _ => None,
        };
        let (out, next) = f(&limit, prior, now)?;
        match (shard.find_mut(hash, ns, key), next) {
            (Some(slot), Some(s)) => slot.set_state(SlotState::Leases(limit, s)),
            (Some(slot), None) if ns == Namespace::Static => slot.set_state(SlotState::Empty),
            (Some(_), None) => {
                shard.remove(hash, ns, key);
            }
            (None, Some(s)) => {
                let mut slot = Slot::new(ns, key);
                slot.set_state(SlotState::Leases(limit, s));
                self.insert(&mut shard, hash, slot, now);
            }
            (None, None) => {}
        }
        Ok(out)
    }

    fn with_barrier<T>(
        &self,
        key: &str,
        now: Nanos,
        f: impl FnOnce(Option<&BarrierState>, Nanos) -> Result<(T, Option<BarrierState>), Error>,
    ) -> Result<T, Error> {
        check_key(key)?;
        let ns = Namespace::Barrier;
        let hash = self.hash(ns, key);
        let mut shard = self.lock(hash);
        let now = shard.observe(now);
        let prior = match shard.find(hash, ns, key).map(|s| &s.state) {
            Some(SlotState::Barrier(b)) => Some(*b),
            _ => None,
        };
        let (out, next) = f(prior.as_ref(), now)?;
        if let Some(b) = next {
            match shard.find_mut(hash, ns, key) {
                Some(slot) => slot.set_state(SlotState::Barrier(b)),
                None => {
                    let mut slot = Slot::new(ns, key);
                    slot.set_state(SlotState::Barrier(b));
                    self.insert(&mut shard, hash, slot, now);
                }
            }
        }
        Ok(out)
    }

    fn info(slot: &Slot, now: Nanos) -> Option<LimitInfo> {
        let (limit, state) = match (&slot.def, &slot.state) {
            (Some(def), state) => {
                let view = match (def.as_ref(), state) {
                    (Limit::Rate(r), SlotState::Rate(s)) => StateView::Rate(r.usage(Some(s), now)),
                    (Limit::Rate(r), _) => StateView::Rate(r.usage(None, now)),
                    (Limit::Concurrency(c), s) => StateView::Concurrency {
                        live: match s {
                            SlotState::Leases(_, s) => c.live_leases(Some(s), now).len() as u64,
                            _ => 0,
                        },
                        limit: u64::from(c.limit()),
                    },
                    (Limit::Barrier(_), _) => return None,
                };
                (**def, view)
            }
            (None, SlotState::Rate(s)) => (
                Limit::Rate(s.limit),
                StateView::Rate(s.limit.usage(Some(s), now)),
            ),
            (None, SlotState::Leases(c, s)) => (
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
            namespace: slot.ns,
            limit,
            state,
        })
    }

    /// A multi-key acquire: every key decided under the locks of all the shards involved, then
    /// all written or none. Kept out of line, so the single-key path does not carry its frame.
    #[inline(never)]
    fn acquire_many(&self, entries: &[AcquireEntry<'_>], now: Nanos) -> Result<Acquired, Error> {
        let (keys, index_of) = self.prepare(entries);
        let mut shard_ids: SmallVec<[usize; 4]> =
            keys.iter().map(|p| Self::shard_of(p.hash)).collect();
        let (mut guards, now) = self.lock_many(&mut shard_ids, now);
        let mut outcomes: SmallVec<[Outcome; 4]> = SmallVec::with_capacity(keys.len());
        for p in &keys {
            let shard = guard_for(&mut guards, Self::shard_of(p.hash));
            let (ns, key) = (p.target.namespace(), p.target.key());
            let (limit, prior) = resolve_rate(shard.find(p.hash, ns, key), &p.target, now)?;
            outcomes.push(decide(&limit, prior, now, key, p.units)?);
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
    fn acquire_one(&self, entry: &AcquireEntry<'_>, now: Nanos) -> Result<Acquired, Error> {
        let (ns, key) = (entry.target.namespace(), entry.target.key());
        let hash = self.hash(ns, key);
        let mut shard = self.lock(hash);
        let now = shard.observe(now);
        let found = shard
            .table
            .find_entry(hash, |s| s.ns == ns && same_key(&s.key, key))
            .ok();
        let decision = match found {
            Some(mut slot) => {
                match gcra_in_place(slot.get_mut(), &entry.target, now, entry.units) {
                    Some(answer) => answer?,
                    None => Self::decide_found(slot, entry, now)?,
                }
            }
            None => self.decide_new(&mut shard, hash, entry, now)?,
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
        entry: &AcquireEntry<'_>,
        now: Nanos,
    ) -> Result<Decision, Error> {
        let (ns, key) = (entry.target.namespace(), entry.target.key());
        let (limit, prior) = resolve_rate(Some(slot.get()), &entry.target, now)?;
        let outcome = decide(&limit, prior, now, key, u64::from(entry.units))?;
        if outcome.decision.allowed {
            match outcome.state {
                Some(state) => slot.get_mut().set_state(SlotState::Rate(state)),
                None if ns == Namespace::Static => {
                    slot.get_mut().set_state(SlotState::Empty);
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
        let (limit, _) = resolve_rate(None, &entry.target, now)?;
        let outcome = decide(&limit, None, now, key, u64::from(entry.units))?;
        if let (true, Some(state)) = (outcome.decision.allowed, outcome.state) {
            let mut slot = Slot::new(ns, key);
            slot.set_state(SlotState::Rate(state));
            self.insert(shard, hash, slot, now);
        }
        Ok(outcome.decision)
    }
}

impl Store for MemoryStore {
    fn put_limit(&self, key: &str, limit: Limit, now: Nanos) -> Result<(), Error> {
        check_key(key)?;
        let ns = Namespace::Static;
        let hash = self.hash(ns, key);
        let mut shard = self.lock(hash);
        let now = shard.observe(now);
        match shard.find_mut(hash, ns, key) {
            Some(slot) => {
                let same_kind = matches!(
                    (slot.def.as_deref(), &limit),
                    (Some(Limit::Rate(_)), Limit::Rate(_))
                        | (Some(Limit::Concurrency(_)), Limit::Concurrency(_))
                );
                if !same_kind {
                    slot.set_state(SlotState::Empty);
                } else if let (SlotState::Leases(_, s), Limit::Concurrency(c)) =
                    (&slot.state, &limit)
                {
                    // Leases keep their expiries; the new limit applies to new leases.
                    slot.state = SlotState::Leases(*c, s.clone());
                }
                // Rate state keeps the limit it was written under: the core converts it
                // (usage kept) at the next decision.
                slot.def = Some(Box::new(limit));
            }
            None => {
                let mut slot = Slot::new(ns, key);
                slot.def = Some(Box::new(limit));
                self.insert(&mut shard, hash, slot, now);
            }
        }
        Ok(())
    }

    fn remove_limit(&self, key: &str) -> Result<bool, Error> {
        check_key(key)?;
        let hash = self.hash(Namespace::Static, key);
        Ok(self
            .lock(hash)
            .remove(hash, Namespace::Static, key)
            .is_some())
    }

    fn get_limit(&self, key: &str, now: Nanos) -> Result<Option<LimitInfo>, Error> {
        check_key(key)?;
        let hash = self.hash(Namespace::Static, key);
        let mut shard = self.lock(hash);
        let now = shard.observe(now);
        Ok(shard
            .find(hash, Namespace::Static, key)
            .and_then(|s| Self::info(s, now)))
    }

    fn list_limits(&self, now: Nanos) -> Result<Vec<LimitInfo>, Error> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.0.lock();
            let now = shard.observe(now);
            out.extend(
                shard
                    .table
                    .iter()
                    .filter(|s| {
                        s.ns == Namespace::Static
                            || (s.ns == Namespace::Dynamic && s.fresh_at > now)
                    })
                    .filter_map(|s| Self::info(s, now)),
            );
        }
        out.sort_by(|a, b| (a.namespace, &a.key).cmp(&(b.namespace, &b.key)));
        Ok(out)
    }

    fn acquire(&self, entries: &[AcquireEntry<'_>], now: Nanos) -> Result<Acquired, Error> {
        validate_entries(entries)?;
        if let [entry] = entries {
            return self.acquire_one(entry, now);
        }
        self.acquire_many(entries, now)
    }

    fn refund(&self, entries: &[AcquireEntry<'_>], now: Nanos) -> Result<(), Error> {
        validate_entries(entries)?;
        let (keys, _) = self.prepare(entries);
        let mut shard_ids: SmallVec<[usize; 4]> =
            keys.iter().map(|p| Self::shard_of(p.hash)).collect();
        let (mut guards, now) = self.lock_many(&mut shard_ids, now);
        let mut next: SmallVec<[Option<LimitState>; 4]> = SmallVec::new();
        for p in &keys {
            let shard = guard_for(&mut guards, Self::shard_of(p.hash));
            let (limit, prior) = resolve_rate(
                shard.find(p.hash, p.target.namespace(), p.target.key()),
                &p.target,
                now,
            )?;
            let units = NonZeroU32::new(u32::try_from(p.units).unwrap_or(u32::MAX))
                .unwrap_or(NonZeroU32::MIN);
            next.push(limit.refund(prior, now, units));
        }
        for (p, n) in keys.iter().zip(next) {
            let shard = guard_for(&mut guards, Self::shard_of(p.hash));
            self.apply_rate(shard, p.hash, p.target.namespace(), p.target.key(), n, now);
        }
        Ok(())
    }

    fn lease_acquire(
        &self,
        target: Target<'_, Concurrency>,
        lease_id: &str,
        holder: &str,
        ttl: Option<Nanos>,
        now: Nanos,
    ) -> Result<LeaseDecision, Error> {
        self.with_leases(target, now, |c, prior, now| {
            Ok(c.acquire(prior, now, lease_id, holder, ttl))
        })
    }

    fn lease_renew(
        &self,
        target: Target<'_, Concurrency>,
        lease_id: &str,
        ttl: Option<Nanos>,
        now: Nanos,
    ) -> Result<Nanos, Error> {
        self.with_leases(target, now, |c, prior, now| {
            Ok(c.renew(prior, now, lease_id, ttl)?)
        })
    }

    fn lease_release(
        &self,
        target: Target<'_, Concurrency>,
        lease_id: &str,
        now: Nanos,
    ) -> Result<bool, Error> {
        self.with_leases(target, now, |c, prior, now| {
            Ok(c.release(prior, now, lease_id))
        })
    }

    fn barrier_create(
        &self,
        key: &str,
        barrier: Barrier,
        now: Nanos,
    ) -> Result<BarrierStatus, Error> {
        self.with_barrier(key, now, |prior, now| match Barrier::status(prior, now) {
            Ok(status) => Ok((status, None)),
            Err(_) => {
                let s = barrier.create(now);
                Ok((Barrier::status(Some(&s), now)?, Some(s)))
            }
        })
    }

    fn barrier_arrive(&self, key: &str, now: Nanos) -> Result<BarrierStatus, Error> {
        self.with_barrier(key, now, |prior, now| {
            let (status, next) = Barrier::arrive(prior, now)?;
            Ok((status, Some(next)))
        })
    }

    fn barrier_status(&self, key: &str, now: Nanos) -> Result<BarrierStatus, Error> {
        self.with_barrier(key, now, |prior, now| {
            Ok((Barrier::status(prior, now)?, None))
        })
    }

    fn export_rate_states(&self, now: Nanos) -> Result<Vec<ExportedState>, Error> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.0.lock();
            let now = shard.observe(now);
            out.extend(shard.table.iter().filter(|s| s.fresh_at > now).filter_map(
                |s| match &s.state {
                    SlotState::Rate(state) => Some(ExportedState {
                        namespace: s.ns,
                        key: s.key.to_string(),
                        state: state.clone(),
                    }),
                    _ => None,
                },
            ));
        }
        Ok(out)
    }

    fn import_rate_state(
        &self,
        namespace: Namespace,
        key: &str,
        state: LimitState,
        now: Nanos,
    ) -> Result<(), Error> {
        check_key(key)?;
        let hash = self.hash(namespace, key);
        let mut shard = self.lock(hash);
        let now = shard.observe(now);
        match shard.find_mut(hash, namespace, key) {
            Some(slot) => slot.set_state(SlotState::Rate(state)),
            None if namespace == Namespace::Static => {
                return Err(Error::UnknownLimit {
                    key: key.to_owned(),
                });
            }
            None => {
                let mut slot = Slot::new(namespace, key);
                slot.set_state(SlotState::Rate(state));
                self.insert(&mut shard, hash, slot, now);
            }
        }
        Ok(())
    }

    fn sweep(&self, now: Nanos) -> Result<usize, Error> {
        Ok(self
            .shards
            .iter()
            .map(|s| {
                let mut s = s.0.lock();
                let now = s.observe(now);
                s.sweep(now)
            })
            .sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::Gcra;

    fn gcra(rate: &str, burst: u64) -> RateLimit {
        RateLimit::Gcra(Gcra::new(rate.parse().unwrap(), burst).unwrap())
    }

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

    #[test]
    fn a_clock_stepping_back_is_treated_as_standing_still() {
        // Why: a key forgotten as fresh must not be re-opened by an earlier time, so each shard
        // decides at the latest time it has seen.
        let store = MemoryStore::new();
        let e = [AcquireEntry::dynamic("k", gcra("1/s", 1), 1)];
        assert!(store.acquire(&e, Nanos::from_secs(100)).unwrap().allowed);
        let back = store.acquire(&e, Nanos::from_secs(99)).unwrap();
        assert!(!back.allowed);
        assert_eq!(
            back.decisions[0].retry_after,
            Nanos::from_secs(1),
            "decided at 100 s, not 99 s"
        );
    }

    /// Why: keys are compared word-wise when short; a difference at any byte, of any length,
    /// must still tell them apart.
    #[test]
    fn keys_compare_equal_exactly_when_equal() {
        for n in 0..40 {
            let a: String = (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
            assert!(same_key(&a, &a.clone()));
            assert!(!same_key(&a, &format!("{a}x")));
            for i in 0..n {
                let mut b = a.clone().into_bytes();
                b[i] = b'#';
                let b = String::from_utf8(b).unwrap();
                assert!(!same_key(&a, &b), "{a:?} {b:?}");
            }
        }
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
