//! The conformance suite: random operation sequences run against a store and against
//! [`Reference`] — the simplest possible store, calling the core directly — with every answer
//! compared. Every store (memory, SQLite, Redis) must pass it unchanged.
//!
//! ```
//! use tollgate::MemoryStore;
//! use tollgate::testkit::{Config, check_conformance};
//! check_conformance(MemoryStore::new, Config { cases: 8, ..Config::default() });
//! ```
//!
//! Time only moves forward here (by random steps, including zero); a clock stepping back is a
//! per-store property tested separately.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use parking_lot::Mutex;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use tollgate_core::{
    Align, Barrier, BarrierState, BarrierStatus, Concurrency, ConcurrencyState, FixedWindow, Gcra,
    LeaseDecision, Limit, LimitState, Nanos, Period, Rate, RateLimit, SlidingWindow, TokenBucket,
};

use crate::error::{Error, check_key};
use crate::store::{
    AcquireEntry, Acquired, AsyncStore, LimitInfo, Namespace, Pause, StateView, Store, Target,
    validate_entries,
};

/// How the suite runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Random sequences to run.
    pub cases: u32,
    /// Most operations per sequence.
    pub max_ops: usize,
    /// Every time step and period is a multiple of this (Redis keeps microseconds).
    pub resolution: Nanos,
    /// Where time starts.
    pub start: Nanos,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            cases: 512,
            max_ops: 80,
            resolution: Nanos::from_nanos(1),
            start: Nanos::from_secs(1_700_000_000),
        }
    }
}

const KEYS: [&str; 3] = ["a", "b", "c"];

/// One entry of an acquire or refund operation.
#[derive(Debug, Clone)]
pub struct OpEntry {
    /// Index into the key pool.
    pub key: usize,
    /// `Some`: a dynamic key with these parameters; `None`: the declared limit.
    pub inline: Option<RateLimit>,
    /// Units.
    pub units: u32,
}

/// One step of a sequence: plain data, so any store can run it.
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub enum Op {
    Advance(Nanos),
    PutLimit {
        key: usize,
        limit: Limit,
    },
    RemoveLimit {
        key: usize,
    },
    GetLimit {
        key: usize,
    },
    GetDynamic {
        key: usize,
    },
    List,
    Acquire(Vec<OpEntry>),
    Refund(Vec<OpEntry>),
    LeaseAcquire {
        key: usize,
        inline: Option<Concurrency>,
        lease: usize,
        ttl: Option<Nanos>,
    },
    LeaseRenew {
        key: usize,
        inline: Option<Concurrency>,
        lease: usize,
        ttl: Option<Nanos>,
    },
    LeaseRelease {
        key: usize,
        inline: Option<Concurrency>,
        lease: usize,
    },
    BarrierCreate {
        key: usize,
        barrier: Barrier,
    },
    BarrierArrive {
        key: usize,
    },
    BarrierStatus {
        key: usize,
    },
    Sweep,
    /// Pause a key for a while (static when `dynamic` is false).
    Pause {
        key: usize,
        dynamic: bool,
        for_: Nanos,
    },
    Resume {
        key: usize,
        dynamic: bool,
    },
    Pauses,
}

/// Periods. At a coarser resolution (Redis keeps microseconds) every period is a multiple of
/// `27720 × resolution` (27720 = lcm(1..=12)), so GCRA's `⌈period/limit⌉` and every
/// sub-bucket boundary fall on whole resolution units, and a store computing in those units
/// must agree with the core exactly.
fn period(res: Nanos) -> impl Strategy<Value = Period> {
    let r = res.as_nanos().max(1);
    let fine = prop_oneof![
        (1u64..=20).prop_map(|ms| ms * 1_000_000),
        Just(100_000_000u64),
        Just(1_000_000_000u64),
        Just(60_000_000_000u64),
        (1u64..=5_000).prop_map(|ms| ms * 1_000_000 + 7_000),
    ];
    let coarse = prop_oneof![
        (1u64..=40).prop_map(|m| m * 27_720),
        Just(2_165 * 27_720u64)
    ]
    .prop_map(move |n| n * r);
    let n = if r == 1 { fine.boxed() } else { coarse.boxed() };
    n.prop_map(|n| Period::from_nanos(Nanos::from_nanos(n)).unwrap_or(Period::SECOND))
}

fn rate_limit(res: Nanos) -> impl Strategy<Value = RateLimit> {
    let p = move || period(res);
    prop_oneof![
        (1u64..=12, p(), prop_oneof![Just(60u32), 1u32..=7]).prop_map(|(l, p, n)| {
            RateLimit::SlidingWindow(
                SlidingWindow::with_precision(l, p, n).unwrap_or_else(|_| unreachable!()),
            )
        }),
        (1u64..=12, p(), any::<bool>()).prop_map(|(l, p, c)| {
            let align = if c { Align::Clock } else { Align::FirstUse };
            RateLimit::FixedWindow(FixedWindow::new(l, p, align).unwrap_or_else(|_| unreachable!()))
        }),
        (1u64..=12, p(), 1u64..=6).prop_map(|(l, p, b)| {
            let rate = Rate::new(l, p).unwrap_or_else(|_| unreachable!());
            RateLimit::Gcra(Gcra::new(rate, b).unwrap_or_else(|_| unreachable!()))
        }),
        (1u64..=6, 1u64..=12, p()).prop_map(|(c, l, p)| {
            let rate = Rate::new(l, p).unwrap_or_else(|_| unreachable!());
            RateLimit::TokenBucket(TokenBucket::new(c, rate).unwrap_or_else(|_| unreachable!()))
        }),
    ]
}

fn concurrency(res: Nanos) -> impl Strategy<Value = Concurrency> {
    (1u32..=3, period(res))
        .prop_map(|(l, p)| Concurrency::new(l, p).unwrap_or_else(|_| unreachable!()))
}

fn entry(res: Nanos) -> impl Strategy<Value = OpEntry> {
    (
        0..KEYS.len(),
        proptest::option::of(rate_limit(res)),
        prop_oneof![4 => 1u32..=3, 1 => 1u32..=14],
    )
        .prop_map(|(key, inline, units)| OpEntry { key, inline, units })
}

/// The operation generator, with time steps and periods in multiples of `res`.
pub fn op(res: Nanos) -> impl Strategy<Value = Op> {
    let r = res.as_nanos().max(1);
    let step = prop_oneof![
        Just(0u64),
        1u64..=1_000,
        1_000u64..=20_000_000,
        Just(1_000_000_000u64),
        Just(61_000_000_000u64),
    ]
    .prop_map(move |n| Nanos::from_nanos(n / r * r));
    let key = 0..KEYS.len();
    let ttl = proptest::option::of(prop_oneof![
        Just(1_000_000u64),
        Just(50_000_000u64),
        Just(2_000_000_000u64)
    ])
    .prop_map(move |t| t.map(|t| Nanos::from_nanos(t / r * r)));
    let any_limit = prop_oneof![
        4 => rate_limit(res).prop_map(Limit::Rate),
        1 => concurrency(res).prop_map(Limit::Concurrency),
    ];
    prop_oneof![
        6 => step.prop_map(Op::Advance),
        3 => (key.clone(), any_limit).prop_map(|(key, limit)| Op::PutLimit { key, limit }),
        1 => key.clone().prop_map(|key| Op::RemoveLimit { key }),
        2 => key.clone().prop_map(|key| Op::GetLimit { key }),
        1 => key.clone().prop_map(|key| Op::GetDynamic { key }),
        1 => Just(Op::List),
        12 => proptest::collection::vec(entry(res), 1..=4).prop_map(Op::Acquire),
        2 => proptest::collection::vec(entry(res), 1..=2).prop_map(Op::Refund),
        3 => (key.clone(), proptest::option::of(concurrency(res)), 0usize..5, ttl.clone())
            .prop_map(|(key, inline, lease, ttl)| Op::LeaseAcquire { key, inline, lease, ttl }),
        1 => (key.clone(), proptest::option::of(concurrency(res)), 0usize..5, ttl)
            .prop_map(|(key, inline, lease, ttl)| Op::LeaseRenew { key, inline, lease, ttl }),
        1 => (key.clone(), proptest::option::of(concurrency(res)), 0usize..5)
            .prop_map(|(key, inline, lease)| Op::LeaseRelease { key, inline, lease }),
        1 => (key.clone(), 1u32..=3, period(res)).prop_map(|(key, parties, ttl)| Op::BarrierCreate {
            key,
            barrier: Barrier::new(parties, ttl).unwrap_or_else(|_| unreachable!()),
        }),
        2 => key.clone().prop_map(|key| Op::BarrierArrive { key }),
        1 => key.clone().prop_map(|key| Op::BarrierStatus { key }),
        1 => Just(Op::Sweep),
        1 => (key.clone(), any::<bool>(), 1u64..=3_000_000_000)
            .prop_map(move |(key, dynamic, n)| Op::Pause {
                key,
                dynamic,
                for_: Nanos::from_nanos((n / r).max(1) * r),
            }),
        1 => (key.clone(), any::<bool>()).prop_map(|(key, dynamic)| Op::Resume { key, dynamic }),
        1 => Just(Op::Pauses),
    ]
}

/// What an operation answered, in a comparable form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// No value.
    Unit,
    /// A flag.
    Bool(bool),
    /// An acquire.
    Acquired(Acquired),
    /// A limit.
    Limit(Option<LimitInfo>),
    /// A listing.
    List(Vec<LimitInfo>),
    /// A lease decision.
    Lease(LeaseDecision),
    /// A lease expiry.
    Expiry(Nanos),
    /// A barrier.
    Barrier(BarrierStatus),
    /// Pauses in force.
    Pauses(Vec<Pause>),
    /// An error, by its message. Missing and expired barriers compare equal: a store may
    /// forget an expired barrier (both are refusals, never a pass).
    Error(String),
}

fn answer<T>(r: Result<T, Error>, f: impl FnOnce(T) -> Answer) -> Answer {
    match r {
        Ok(v) => f(v),
        Err(Error::Core(
            tollgate_core::Error::BarrierExpired { .. } | tollgate_core::Error::BarrierMissing,
        )) => Answer::Error("barrier missing or expired".into()),
        Err(e) => Answer::Error(e.to_string()),
    }
}

fn ns(dynamic: bool) -> Namespace {
    if dynamic {
        Namespace::Dynamic
    } else {
        Namespace::Static
    }
}

/// Runs one operation against `store` at `now`. `Advance` and `Sweep` answer `Unit`.
pub async fn apply(store: &dyn AsyncStore, op: &Op, now: Nanos) -> Answer {
    let lease_id = |i: usize| format!("lease-{i}");
    let ctarget = |key: usize, inline: &Option<Concurrency>| match inline {
        None => Target::Static(KEYS[key]),
        Some(c) => Target::Dynamic(KEYS[key], *c),
    };
    let entries = |es: &[OpEntry]| -> Vec<AcquireEntry<'static>> {
        es.iter()
            .map(|e| AcquireEntry {
                target: match e.inline {
                    None => Target::Static(KEYS[e.key]),
                    Some(l) => Target::Dynamic(KEYS[e.key], l),
                },
                units: e.units,
            })
            .collect()
    };
    match op {
        Op::Advance(_) => Answer::Unit,
        Op::Sweep => answer(store.sweep(now).await, |_| Answer::Unit),
        Op::PutLimit { key, limit } => {
            answer(store.put_limit(KEYS[*key], *limit, now).await, |()| {
                Answer::Unit
            })
        }
        Op::RemoveLimit { key } => answer(store.remove_limit(KEYS[*key]).await, Answer::Bool),
        Op::GetLimit { key } => answer(store.get_limit(KEYS[*key], now).await, Answer::Limit),
        Op::GetDynamic { key } => answer(store.get_dynamic(KEYS[*key], now).await, Answer::Limit),
        Op::List => answer(store.list_limits(now).await, Answer::List),
        Op::Acquire(es) => answer(store.acquire(&entries(es), now).await, Answer::Acquired),
        Op::Refund(es) => answer(store.refund(&entries(es), now).await, |()| Answer::Unit),
        Op::LeaseAcquire {
            key,
            inline,
            lease,
            ttl,
        } => answer(
            store
                .lease_acquire(
                    ctarget(*key, inline),
                    &lease_id(*lease),
                    "holder",
                    *ttl,
                    now,
                )
                .await,
            Answer::Lease,
        ),
        Op::LeaseRenew {
            key,
            inline,
            lease,
            ttl,
        } => answer(
            store
                .lease_renew(ctarget(*key, inline), &lease_id(*lease), *ttl, now)
                .await,
            Answer::Expiry,
        ),
        Op::LeaseRelease { key, inline, lease } => answer(
            store
                .lease_release(ctarget(*key, inline), &lease_id(*lease), now)
                .await,
            Answer::Bool,
        ),
        Op::BarrierCreate { key, barrier } => answer(
            store.barrier_create(KEYS[*key], *barrier, now).await,
            Answer::Barrier,
        ),
        Op::BarrierArrive { key } => {
            answer(store.barrier_arrive(KEYS[*key], now).await, Answer::Barrier)
        }
        Op::BarrierStatus { key } => {
            answer(store.barrier_status(KEYS[*key], now).await, Answer::Barrier)
        }
        Op::Pause { key, dynamic, for_ } => answer(
            store
                .pause(ns(*dynamic), KEYS[*key], now + *for_, now)
                .await,
            Answer::Expiry,
        ),
        Op::Resume { key, dynamic } => answer(
            store.resume(ns(*dynamic), KEYS[*key], now).await,
            Answer::Bool,
        ),
        Op::Pauses => answer(store.pauses(now).await, Answer::Pauses),
    }
}

/// Runs `config.cases` random sequences against a fresh store from `make_store` each and
/// against [`Reference`], and panics with the (shrunk) sequence at the first differing answer.
///
/// Any [`Store`] is an [`AsyncStore`]. The suite drives the store on a tokio runtime of its own
/// (made here, kept for the whole run): call it from a plain `#[test]`, not from async code.
pub fn check_conformance<S: AsyncStore>(make_store: impl Fn() -> S, config: Config) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for the conformance suite");
    let mut runner = TestRunner::new(RunnerConfig {
        cases: config.cases,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let ops = proptest::collection::vec(op(config.resolution), 1..=config.max_ops);
    let result = runner.run(&ops, |ops| {
        let store = make_store();
        let reference = Reference::default();
        let mut now = config.start;
        for (i, op) in ops.iter().enumerate() {
            if let Op::Advance(by) = op {
                now = now + *by;
            }
            let expected = rt.block_on(apply(&reference, op, now));
            let got = rt.block_on(apply(&store, op, now));
            if expected != got {
                return Err(TestCaseError::fail(format!(
                    "operation {i} ({op:?}) at {now:?}:\n  reference: {expected:?}\n  store:     {got:?}"
                )));
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("store does not conform: {e}");
    }
}

/// The reference store: one lock over ordered maps, the core called directly, nothing ever
/// forgotten, no shortcuts. Slow and obviously right.
#[derive(Default)]
pub struct Reference {
    keys: Mutex<BTreeMap<(Namespace, String), RefSlot>>,
    pauses: Mutex<BTreeMap<(Namespace, String), Nanos>>,
}

#[derive(Default, Clone)]
struct RefSlot {
    def: Option<Limit>,
    rate: Option<LimitState>,
    leases: Option<(Concurrency, ConcurrencyState)>,
    barrier: Option<BarrierState>,
}

impl Reference {
    fn rate_limit(
        map: &BTreeMap<(Namespace, String), RefSlot>,
        t: &Target<'_, RateLimit>,
    ) -> Result<RateLimit, Error> {
        let slot = map.get(&(t.namespace(), t.key().to_owned()));
        match t {
            Target::Dynamic(_, l) => Ok(*l),
            Target::Static(k) => match slot.and_then(|s| s.def) {
                Some(Limit::Rate(r)) => Ok(r),
                Some(other) => Err(Error::WrongAlgorithm {
                    key: (*k).to_owned(),
                    expected: "a rate limit",
                    found: other.algorithm(),
                }),
                None => Err(Error::UnknownLimit {
                    key: (*k).to_owned(),
                }),
            },
        }
    }
}

fn rate_live(slot: &RefSlot, now: Nanos) -> Option<&LimitState> {
    slot.rate.as_ref().filter(|s| s.fresh_at() > now)
}

fn leases_live(slot: &RefSlot, now: Nanos) -> Option<&(Concurrency, ConcurrencyState)> {
    slot.leases.as_ref().filter(|(_, s)| s.fresh_at() > now)
}

/// Distinct keys in first-appearance order with summed units and the last entry's target, and
/// each entry's index into them.
fn group<'a>(entries: &[AcquireEntry<'a>]) -> (Vec<(Target<'a, RateLimit>, u64)>, Vec<usize>) {
    let mut keys: Vec<(Target<'a, RateLimit>, u64)> = Vec::new();
    let mut index = Vec::new();
    for e in entries {
        let found = keys
            .iter()
            .position(|(t, _)| t.namespace() == e.target.namespace() && t.key() == e.target.key());
        match found {
            Some(i) => {
                keys[i].0 = e.target;
                keys[i].1 += u64::from(e.units);
                index.push(i);
            }
            None => {
                index.push(keys.len());
                keys.push((e.target, u64::from(e.units)));
            }
        }
    }
    (keys, index)
}

impl Reference {
    fn info(key: &(Namespace, String), slot: &RefSlot, now: Nanos) -> Option<LimitInfo> {
        let (limit, state) = match (key.0, slot.def) {
            (Namespace::Barrier, _) => return None,
            (_, Some(Limit::Rate(r))) => (
                Limit::Rate(r),
                StateView::Rate(r.usage(rate_live(slot, now), now)),
            ),
            (_, Some(Limit::Concurrency(c))) => {
                let live = leases_live(slot, now)
                    .map_or(0, |(_, s)| c.live_leases(Some(s), now).len() as u64);
                (
                    Limit::Concurrency(c),
                    StateView::Concurrency {
                        live,
                        limit: u64::from(c.limit()),
                    },
                )
            }
            (_, Some(Limit::Barrier(_))) => return None,
            (_, None) => {
                if let Some(s) = rate_live(slot, now) {
                    (
                        Limit::Rate(s.limit),
                        StateView::Rate(s.limit.usage(Some(s), now)),
                    )
                } else if let Some((c, s)) = leases_live(slot, now) {
                    let live = c.live_leases(Some(s), now).len() as u64;
                    (
                        Limit::Concurrency(*c),
                        StateView::Concurrency {
                            live,
                            limit: u64::from(c.limit()),
                        },
                    )
                } else {
                    return None;
                }
            }
        };
        Some(LimitInfo {
            key: key.1.clone(),
            namespace: key.0,
            limit,
            state,
        })
    }

    fn concurrency(
        map: &BTreeMap<(Namespace, String), RefSlot>,
        t: &Target<'_, Concurrency>,
        now: Nanos,
    ) -> Result<Concurrency, Error> {
        let slot = map.get(&(t.namespace(), t.key().to_owned()));
        match t {
            Target::Dynamic(k, c) => {
                if let Some(s) = slot.and_then(|s| rate_live(s, now)) {
                    return Err(Error::WrongAlgorithm {
                        key: (*k).to_owned(),
                        expected: "a concurrency limit",
                        found: s.limit.algorithm(),
                    });
                }
                Ok(*c)
            }
            Target::Static(k) => match slot.and_then(|s| s.def) {
                Some(Limit::Concurrency(c)) => Ok(c),
                Some(other) => Err(Error::WrongAlgorithm {
                    key: (*k).to_owned(),
                    expected: "a concurrency limit",
                    found: other.algorithm(),
                }),
                None => Err(Error::UnknownLimit {
                    key: (*k).to_owned(),
                }),
            },
        }
    }

    fn leases<T>(
        &self,
        t: Target<'_, Concurrency>,
        now: Nanos,
        f: impl FnOnce(
            &Concurrency,
            Option<&ConcurrencyState>,
        ) -> Result<(T, Option<ConcurrencyState>), Error>,
    ) -> Result<T, Error> {
        check_key(t.key())?;
        let mut map = self.keys.lock();
        let c = Self::concurrency(&map, &t, now)?;
        let slot = map.entry((t.namespace(), t.key().to_owned())).or_default();
        let prior = leases_live(slot, now).map(|(_, s)| s.clone());
        let (out, next) = f(&c, prior.as_ref())?;
        slot.leases = next.map(|s| (c, s));
        if t.namespace() == Namespace::Dynamic && slot.leases.is_some() {
            slot.rate = None;
        }
        Ok(out)
    }

    fn rate_prior<'m>(
        map: &'m BTreeMap<(Namespace, String), RefSlot>,
        t: &Target<'_, RateLimit>,
        now: Nanos,
    ) -> Result<Option<&'m LimitState>, Error> {
        let slot = map.get(&(t.namespace(), t.key().to_owned()));
        if t.namespace() == Namespace::Dynamic && slot.and_then(|s| leases_live(s, now)).is_some() {
            return Err(Error::WrongAlgorithm {
                key: t.key().to_owned(),
                expected: "a rate limit",
                found: tollgate_core::Algorithm::Concurrency,
            });
        }
        Ok(slot.and_then(|s| rate_live(s, now)))
    }
}

impl Store for Reference {
    fn put_limit(&self, key: &str, limit: Limit, _now: Nanos) -> Result<(), Error> {
        check_key(key)?;
        let mut map = self.keys.lock();
        let slot = map.entry((Namespace::Static, key.to_owned())).or_default();
        match (slot.def, limit) {
            (Some(Limit::Rate(_)), Limit::Rate(_)) => {}
            (Some(Limit::Concurrency(_)), Limit::Concurrency(c)) => {
                if let Some((_, s)) = slot.leases.take() {
                    slot.leases = Some((c, s));
                }
            }
            _ => {
                slot.rate = None;
                slot.leases = None;
            }
        }
        slot.def = Some(limit);
        Ok(())
    }

    fn remove_limit(&self, key: &str) -> Result<bool, Error> {
        check_key(key)?;
        Ok(self
            .keys
            .lock()
            .remove(&(Namespace::Static, key.to_owned()))
            .is_some())
    }

    fn get_limit(&self, key: &str, now: Nanos) -> Result<Option<LimitInfo>, Error> {
        check_key(key)?;
        let map = self.keys.lock();
        let k = (Namespace::Static, key.to_owned());
        Ok(map.get(&k).and_then(|s| Self::info(&k, s, now)))
    }

    fn list_limits(&self, now: Nanos) -> Result<Vec<LimitInfo>, Error> {
        let map = self.keys.lock();
        Ok(map
            .iter()
            .filter_map(|(k, s)| Self::info(k, s, now))
            .collect())
    }

    fn acquire(&self, entries: &[AcquireEntry<'_>], now: Nanos) -> Result<Acquired, Error> {
        validate_entries(entries)?;
        let (keys, index) = group(entries);
        let mut map = self.keys.lock();
        let mut outcomes = Vec::new();
        for (t, units) in &keys {
            let limit = Self::rate_limit(&map, t)?;
            let prior = Self::rate_prior(&map, t, now)?;
            let capacity = || Error::InsufficientCapacity {
                key: t.key().to_owned(),
                units: *units,
                capacity: limit.capacity(),
            };
            let n = u32::try_from(*units)
                .ok()
                .and_then(NonZeroU32::new)
                .ok_or_else(capacity)?;
            let mut outcome = limit.decide(prior, now, n).map_err(|_| capacity())?;
            let paused = self
                .pauses
                .lock()
                .get(&(t.namespace(), t.key().to_owned()))
                .copied();
            if let Some(until) = paused.filter(|u| *u > now) {
                outcome.decision = outcome.decision.paused(until - now);
            }
            outcomes.push(outcome);
        }
        let allowed = outcomes.iter().all(|o| o.decision.allowed);
        if allowed {
            for ((t, _), o) in keys.iter().zip(&outcomes) {
                let slot = map.entry((t.namespace(), t.key().to_owned())).or_default();
                slot.rate = o.state.clone();
            }
        }
        Ok(Acquired {
            allowed,
            decisions: index.iter().map(|&i| outcomes[i].decision).collect(),
        })
    }

    fn refund(&self, entries: &[AcquireEntry<'_>], now: Nanos) -> Result<(), Error> {
        validate_entries(entries)?;
        let (keys, _) = group(entries);
        let mut map = self.keys.lock();
        let mut next = Vec::new();
        for (t, units) in &keys {
            let limit = Self::rate_limit(&map, t)?;
            let prior = Self::rate_prior(&map, t, now)?;
            let n = NonZeroU32::new(u32::try_from(*units).unwrap_or(u32::MAX))
                .unwrap_or(NonZeroU32::MIN);
            next.push(limit.refund(prior, now, n));
        }
        for ((t, _), n) in keys.iter().zip(next) {
            map.entry((t.namespace(), t.key().to_owned()))
                .or_default()
                .rate = n;
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
        self.leases(target, now, |c, prior| {
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
        self.leases(target, now, |c, prior| {
            Ok(c.renew(prior, now, lease_id, ttl)?)
        })
    }

    fn lease_release(
        &self,
        target: Target<'_, Concurrency>,
        lease_id: &str,
        now: Nanos,
    ) -> Result<bool, Error> {
        self.leases(target, now, |c, prior| Ok(c.release(prior, now, lease_id)))
    }

    fn barrier_create(
        &self,
        key: &str,
        barrier: Barrier,
        now: Nanos,
    ) -> Result<BarrierStatus, Error> {
        check_key(key)?;
        let mut map = self.keys.lock();
        let slot = map.entry((Namespace::Barrier, key.to_owned())).or_default();
        if let Ok(status) = Barrier::status(slot.barrier.as_ref(), now) {
            return Ok(status);
        }
        let s = barrier.create(now);
        slot.barrier = Some(s);
        Ok(Barrier::status(Some(&s), now)?)
    }

    fn barrier_arrive(&self, key: &str, now: Nanos) -> Result<BarrierStatus, Error> {
        check_key(key)?;
        let mut map = self.keys.lock();
        let slot = map.entry((Namespace::Barrier, key.to_owned())).or_default();
        let (status, next) = Barrier::arrive(slot.barrier.as_ref(), now)?;
        slot.barrier = Some(next);
        Ok(status)
    }

    fn barrier_status(&self, key: &str, now: Nanos) -> Result<BarrierStatus, Error> {
        check_key(key)?;
        let map = self.keys.lock();
        let state = map
            .get(&(Namespace::Barrier, key.to_owned()))
            .and_then(|s| s.barrier);
        Ok(Barrier::status(state.as_ref(), now)?)
    }

    fn pause(
        &self,
        namespace: Namespace,
        key: &str,
        until: Nanos,
        now: Nanos,
    ) -> Result<Nanos, Error> {
        check_key(key)?;
        let mut pauses = self.pauses.lock();
        let end = pauses.entry((namespace, key.to_owned())).or_insert(until);
        if *end <= now {
            *end = until;
        }
        *end = (*end).max(until);
        Ok(*end)
    }

    fn resume(&self, namespace: Namespace, key: &str, now: Nanos) -> Result<bool, Error> {
        check_key(key)?;
        Ok(self
            .pauses
            .lock()
            .remove(&(namespace, key.to_owned()))
            .is_some_and(|t| t > now))
    }

    fn pauses(&self, now: Nanos) -> Result<Vec<Pause>, Error> {
        Ok(self
            .pauses
            .lock()
            .iter()
            .filter(|(_, t)| **t > now)
            .map(|((namespace, key), until)| Pause {
                namespace: *namespace,
                key: key.clone(),
                until: *until,
            })
            .collect())
    }

    fn sweep(&self, _now: Nanos) -> Result<usize, Error> {
        // The reference never forgets: it is what forgetting must be equivalent to.
        Ok(0)
    }
}
