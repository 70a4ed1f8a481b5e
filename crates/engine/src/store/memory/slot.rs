//! One key's slot: its layout (32 bytes, the key inline, a compact body or a boxed one) and the
//! state it holds, read and written through the shard's bindings.
//!
//! # Layout
//! A slot is 32 bytes, aligned to 32, so it never straddles two cache lines: the key (inline up
//! to 15 bytes) and a 16-byte body. The common case, a `gcra` or `token_bucket` key, keeps its
//! state (one instant) in the body, with a 4-byte index into the shard's [`Bindings`]: the
//! distinct limits that the shard's keys were written under, of which there are usually a
//! handful however many keys there are. Every other kind of state (windows, leases, barriers,
//! declared keys of other kinds) is boxed beside the slot.

use std::borrow::Cow;

use ecow::EcoString;
use tollgate_core::{
    BarrierState, Concurrency, ConcurrencyState, GcraState, Limit, LimitState, Nanos, RateLimit,
    RateState,
};

use super::bindings::{Binding, Bindings};
use crate::store::Namespace;

/// One key. 32 bytes, aligned so that a slot never spans two cache lines: a lookup of a gcra
/// key touches one line of the table (and the shard's bindings, which all its keys share).
#[repr(align(32))]
pub(super) struct Slot {
    pub(super) key: EcoString,
    pub(super) body: Body,
}

/// What a slot holds. 16 bytes: the compact variants are the dynamic and declared gcra keys.
pub(super) enum Body {
    /// A dynamic key's gcra (or token_bucket) state: `tat`, written under `bindings[binding]`.
    Dynamic { binding: u32, tat: Nanos },
    /// A declared gcra (or token_bucket) limit and its state; `tat` 0 is no state.
    Static { binding: u32, tat: Nanos },
    /// Anything else.
    Other(Box<Other>),
}

/// A slot that does not fit [`Body`]'s compact variants: a rate state of another algorithm,
/// leases, a barrier, a declared limit of another kind.
pub(super) struct Other {
    ns: Namespace,
    /// Static keys only: the declared definition.
    def: Option<Limit>,
    state: SlotState,
    /// When `state` becomes fresh (forgettable).
    fresh_at: Nanos,
}

pub(super) enum SlotState {
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
pub(super) enum State<'s> {
    Empty,
    Rate(Cow<'s, LimitState>),
    Leases(&'s Concurrency, &'s ConcurrencyState),
    Barrier(&'s BarrierState),
}

impl State<'_> {
    pub(super) fn into_owned(self) -> SlotState {
        match self {
            State::Empty => SlotState::Empty,
            State::Rate(s) => SlotState::Rate(s.into_owned()),
            State::Leases(c, s) => SlotState::Leases(*c, s.clone()),
            State::Barrier(b) => SlotState::Barrier(*b),
        }
    }
}

impl Slot {
    pub(super) fn new(
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

    pub(super) fn ns(&self) -> Namespace {
        match &self.body {
            Body::Dynamic { .. } => Namespace::Dynamic,
            Body::Static { .. } => Namespace::Static,
            Body::Other(o) => o.ns,
        }
    }

    /// When the slot's state becomes fresh (forgettable).
    pub(super) fn fresh_at(&self) -> Nanos {
        match &self.body {
            Body::Dynamic { tat, .. } | Body::Static { tat, .. } => *tat,
            Body::Other(o) => o.fresh_at,
        }
    }

    /// A declared key's definition.
    pub(super) fn def(&self, bindings: &Bindings) -> Option<Limit> {
        match &self.body {
            Body::Dynamic { .. } => None,
            Body::Static { binding, .. } => bindings.get(*binding).def.map(Limit::Rate),
            Body::Other(o) => o.def,
        }
    }

    pub(super) fn state<'s>(&'s self, bindings: &Bindings) -> State<'s> {
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

    pub(super) fn set_state(&mut self, state: SlotState, bindings: &mut Bindings) {
        let def = self.def(bindings);
        self.set(def, state, bindings);
    }

    /// Replaces the definition and the state; keeps the namespace.
    pub(super) fn set(&mut self, def: Option<Limit>, state: SlotState, bindings: &mut Bindings) {
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
    pub(super) fn forget_state(&mut self) {
        match &mut self.body {
            Body::Static { tat, .. } | Body::Dynamic { tat, .. } => *tat = Nanos::ZERO,
            Body::Other(o) => {
                o.state = SlotState::Empty;
                o.fresh_at = Nanos::ZERO;
            }
        }
    }

    pub(super) fn binding(&self) -> Option<u32> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
