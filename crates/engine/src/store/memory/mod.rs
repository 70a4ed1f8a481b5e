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
//!
//! # Layout
//! A slot is 32 bytes, aligned to 32, so it never straddles two cache lines: the key (inline up
//! to 15 bytes) and a 16-byte body. The common case, a `gcra` or `token_bucket` key, keeps its
//! state (one instant) in the body, with a 4-byte index into the shard's [`Bindings`]: the
//! distinct limits that the shard's keys were written under, of which there are usually a
//! handful however many keys there are. Every other kind of state (windows, leases, barriers,
//! declared keys of other kinds) is boxed beside the slot.

use std::borrow::Cow;
use std::hash::{BuildHasher, Hasher};
use std::num::NonZeroU32;

use ecow::EcoString;
use hashbrown::hash_table::OccupiedEntry;
use hashbrown::{HashMap, HashTable};
use parking_lot::{Mutex, MutexGuard};
use smallvec::SmallVec;
use tollgate_core::{
    Barrier, BarrierState, BarrierStatus, Concurrency, ConcurrencyState, Decision, GcraState,
    LeaseDecision, Limit, LimitState, Nanos, Outcome, RateLimit, RateState,
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
/// A shard collects unused bindings when it holds this many more than after its last
/// collection (at least).
const MIN_COLLECT: usize = 64;

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
    /// The limits the table's compact slots refer to.
    bindings: Bindings,
    /// The latest `now` this shard has decided at: a clock that steps back is treated as
    /// standing still, so a key forgotten as fresh can never be re-opened by earlier times.
    high_water: Nanos,
    sweep_at: usize,
}

/// One key. 32 bytes, aligned so that a slot never spans two cache lines: a lookup of a gcra
/// key touches one line of the table (and the shard's bindings, which all its keys share).
#[repr(align(32))]
struct Slot {
    key: EcoString,
    body: Body,
}

/// What a slot holds. 16 bytes: the compact variants are the dynamic and declared gcra keys.
enum Body {
    /// A dynamic key's gcra (or token_bucket) state: `tat`, written under `bindings[binding]`.
    Dynamic { binding: u32, tat: Nanos },
    /// A declared gcra (or token_bucket) limit and its state; `tat` 0 is no state.
    Static { binding: u32, tat: Nanos },
    /// Anything else.
    Other(Box<Other>),
}

/// A slot that does not fit [`Body`]'s compact variants: a rate state of another algorithm,
/// leases, a barrier, a declared limit of another kind.
struct Other {
    ns: Namespace,
    /// Static keys only: the declared definition.
    def: Option<Limit>,
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

/// A slot's state where it lies, or rebuilt from a compact body.
enum State<'s> {
    Empty,
    Rate(Cow<'s, LimitState>),
    Leases(&'s Concurrency, &'s ConcurrencyState),
    Barrier(&'s BarrierState),
}

impl State<'_> {
    fn into_owned(self) -> SlotState {
        match self {
            State::Empty => SlotState::Empty,
            State::Rate(s) => SlotState::Rate(s.into_owned()),
            State::Leases(c, s) => SlotState::Leases(*c, s.clone()),
            State::Barrier(b) => SlotState::Barrier(*b),
        }
    }
}

/// The limits a compact slot refers to: the one its state was written under and, for a
/// declared key, its definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Binding {
    written: RateLimit,
    def: Option<RateLimit>,
}

/// A shard's interned [`Binding`]s, by index. Indices stay valid while a slot refers to them:
/// unused ones are collected only by [`Shard::collect_bindings`], which marks every slot's.
#[derive(Default)]
struct Bindings {
    list: Vec<Binding>,
    ids: HashMap<Binding, u32, foldhash::fast::RandomState>,
    /// Indices in `list` that no binding uses.
    free: Vec<u32>,
    /// The last index interned: most keys of a shard share one limit.
    last: Option<u32>,
    collect_at: usize,
    /// More bindings than `collect_at`: collect at the start of the shard's next operation,
    /// when no index is held outside the table.
    due: bool,
}

impl Bindings {
    fn get(&self, id: u32) -> &Binding {
        &self.list[id as usize]
    }

    fn intern(&mut self, binding: Binding) -> u32 {
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

impl Slot {
    fn new(
        ns: Namespace,
        key: &str,
        def: Option<Limit>,
        state: SlotState,
        bindings: &mut Bindings,
    ) -> Slot {
        Slot {
            key: key.into(),
            body: Body::new(ns, def, state, bindings),
        }
    }

    fn ns(&self) -> Namespace {
        match &self.body {
            Body::Dynamic { .. } => Namespace::Dynamic,
            Body::Static { .. } => Namespace::Static,
            Body::Other(o) => o.ns,
        }
    }

    /// When the slot's state becomes fresh (forgettable).
    fn fresh_at(&self) -> Nanos {
        match &self.body {
            Body::Dynamic { tat, .. } | Body::Static { tat, .. } => *tat,
            Body::Other(o) => o.fresh_at,
        }
    }

    /// A declared key's definition.
    fn def(&self, bindings: &Bindings) -> Option<Limit> {
        match &self.body {
            Body::Dynamic { .. } => None,
            Body::Static { binding, .. } => bindings.get(*binding).def.map(Limit::Rate),
            Body::Other(o) => o.def,
        }
    }

    fn state<'s>(&'s self, bindings: &Bindings) -> State<'s> {
        match &self.body {
            Body::Dynamic { binding, tat } | Body::Static { binding, tat } => {
                if *tat == Nanos::ZERO {
                    State::Empty
                } else {
                    State::Rate(Cow::Owned(LimitState {
                        limit: bindings.get(*binding).written,
                        state: RateState::Gcra(GcraState { tat: *tat }),
                    }))
                }
            }
            Body::Other(o) => match &o.state {
                SlotState::Empty => State::Empty,
                SlotState::Rate(s) => State::Rate(Cow::Borrowed(s)),
                SlotState::Leases(c, s) => State::Leases(c, s),
                SlotState::Barrier(b) => State::Barrier(b),
            },
        }
    }

    fn set_state(&mut self, state: SlotState, bindings: &mut Bindings) {
        let def = self.def(bindings);
        self.set(def, state, bindings);
    }

    /// Replaces the definition and the state; keeps the namespace.
    fn set(&mut self, def: Option<Limit>, state: SlotState, bindings: &mut Bindings) {
        let ns = self.ns();
        if let Some(body) = Body::compact(ns, def.as_ref(), &state, bindings) {
            self.body = body;
            return;
        }
        let fresh_at = state.fresh_at();
        match &mut self.body {
            // Reuses the box: off the compact forms, a key keeps its kind from one decision to
            // the next.
            Body::Other(o) => {
                o.def = def;
                o.state = state;
                o.fresh_at = fresh_at;
            }
            body => {
                *body = Body::Other(Box::new(Other {
                    ns,
                    def,
                    state,
                    fresh_at,
                }));
            }
        }
    }

    /// A declared key's state becomes empty (the sweep, for a fresh state).
    fn forget_state(&mut self) {
        match &mut self.body {
            Body::Static { tat, .. } | Body::Dynamic { tat, .. } => *tat = Nanos::ZERO,
            Body::Other(o) => {
                o.state = SlotState::Empty;
                o.fresh_at = Nanos::ZERO;
            }
        }
    }

    fn binding(&self) -> Option<u32> {
        match self.body {
            Body::Dynamic { binding, .. } | Body::Static { binding, .. } => Some(binding),
            Body::Other(_) => None,
        }
    }
}

impl Body {
    fn new(ns: Namespace, def: Option<Limit>, state: SlotState, bindings: &mut Bindings) -> Body {
        match Body::compact(ns, def.as_ref(), &state, bindings) {
            Some(body) => body,
            None => Body::Other(Box::new(Other {
                ns,
                def,
                fresh_at: state.fresh_at(),
                state,
            })),
        }
    }

    /// The compact form of a slot, if it has one: a gcra or token_bucket state (or none, for a
    /// declared rate limit), in the dynamic or the static namespace.
    fn compact(
        ns: Namespace,
        def: Option<&Limit>,
        state: &SlotState,
        bindings: &mut Bindings,
    ) -> Option<Body> {
        let (written, tat) = match (state, def) {
            (
                SlotState::Rate(LimitState {
                    limit: written @ (RateLimit::Gcra(_) | RateLimit::TokenBucket(_)),
                    state: RateState::Gcra(s),
                }),
                _,
            ) if s.tat > Nanos::ZERO => (*written, s.tat),
            // No state: the written limit does not matter; the definition is as good as any.
            (SlotState::Empty, Some(Limit::Rate(d))) => (*d, Nanos::ZERO),
            _ => return None,
        };
        match (ns, def) {
            (Namespace::Dynamic, None) if tat > Nanos::ZERO => Some(Body::Dynamic {
                binding: bindings.intern(Binding { written, def: None }),
                tat,
            }),
            (Namespace::Static, Some(Limit::Rate(d))) => Some(Body::Static {
                binding: bindings.intern(Binding {
                    written,
                    def: Some(*d),
                }),
                tat,
            }),
            _ => None,
        }
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

/// Whether `slot` is the one of `key` in `ns`. The key first: the namespace of a boxed slot is
/// behind its pointer, and keys of the same name in two namespaces are rare.
#[inline]
fn is_slot_of(slot: &Slot, ns: Namespace, key: &str) -> bool {
    same_key(&slot.key, key) && slot.ns() == ns
}

impl Shard {
    fn find(&self, hash: u64, ns: Namespace, key: &str) -> Option<&Slot> {
        self.table.find(hash, |s| is_slot_of(s, ns, key))
    }

    fn remove(&mut self, hash: u64, ns: Namespace, key: &str) -> Option<Slot> {
        self.table
            .find_entry(hash, |s| is_slot_of(s, ns, key))
            .ok()
            .map(|e| e.remove().0)
    }

    /// Moves the shard's time forward; returns the time to decide at. Every operation starts
    /// with it, so it is also where unused bindings are collected when due.
    #[inline]
    fn observe(&mut self, now: Nanos) -> Nanos {
        if self.bindings.due {
            self.collect_bindings();
        }
        self.high_water = self.high_water.max(now);
        self.high_water
    }

    /// Frees the bindings no slot refers to. It runs when the shard holds at least twice the
    /// bindings it kept last time and at least a quarter as many as it has keys (and at least
    /// [`MIN_COLLECT`]): a pass over the table is paid for by as many new bindings as a quarter
    /// of its keys (amortised O(1) each), and bindings no key uses stay below about a quarter of
    /// the key count, at about 200 bytes each (80 in the list, the rest in the index), in the
    /// worst case of a new limit at every request.
    #[cold]
    fn collect_bindings(&mut self) {
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

    /// Forgets dynamic keys and barriers that are fresh at `now`; empties static keys' state.
    fn sweep(&mut self, now: Nanos) -> usize {
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
                        bindings: Bindings::default(),
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
        shard
            .table
            .insert_unique(hash, slot, |s| self.hash(s.ns(), &s.key));
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

    fn with_barrier<T>(
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

    fn info(slot: &Slot, bindings: &Bindings, now: Nanos) -> Option<LimitInfo> {
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
            let slot = shard.find(p.hash, ns, key);
            let (limit, prior) = resolve_rate(slot, &shard.bindings, &p.target, now)?;
            outcomes.push(decide(&limit, prior.as_deref(), now, key, p.units)?);
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
}

impl Store for MemoryStore {
    fn put_limit(&self, key: &str, limit: Limit, now: Nanos) -> Result<(), Error> {
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
            .and_then(|s| Self::info(s, &shard.bindings, now)))
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
                    .filter(|s| match s.ns() {
                        Namespace::Static => true,
                        Namespace::Dynamic => s.fresh_at() > now,
                        Namespace::Barrier => false,
                    })
                    .filter_map(|s| Self::info(s, &shard.bindings, now)),
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

    fn import_rate_state(
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

    /// Why: the slot's size is what 1 M resident keys cost (BENCHMARKS.md, bytes per key), and
    /// its alignment keeps every slot within one cache line: one miss per lookup.
    #[test]
    fn a_slot_is_half_a_cache_line() {
        assert_eq!(std::mem::size_of::<Body>(), 16);
        assert_eq!(std::mem::size_of::<Slot>(), 32);
        assert_eq!(std::mem::align_of::<Slot>(), 32);
    }

    /// Why: a short key lives inside its slot, with no allocation of its own.
    #[test]
    fn short_keys_are_stored_inline() {
        let mut bindings = Bindings::default();
        let short = Slot::new(
            Namespace::Barrier,
            "user:123456789",
            None,
            SlotState::Empty,
            &mut bindings,
        );
        assert!(short.key.is_inline(), "15 bytes or fewer fit in the slot");
        let long = Slot::new(
            Namespace::Barrier,
            "tenant:42:user:123456789",
            None,
            SlotState::Empty,
            &mut bindings,
        );
        assert!(!long.key.is_inline());
        assert_eq!(&*long.key, "tenant:42:user:123456789");
    }

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
