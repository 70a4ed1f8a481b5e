//! [`KeyUses`]: what the runs not yet ended name, per key (docs/design.md §3.8, §3.9) — how
//! many of them name each key (a declared limit a run names cannot be deleted), and for a
//! dynamic key the newest definition, which applies to every run on the key.
//!
//! Counted at every enqueue and at every run's end, so lookups go by borrowed key (`&str`, one
//! map per namespace): a key already in use costs no allocation.

use crate::fast_map::FastHashMap;
use crate::spec::LimitSpec;
use crate::task::Rendered;

use super::run::WaitKey;

/// One key's users and newest definition.
#[derive(Debug, Default)]
struct KeyUse {
    /// Rate and concurrency entries of runs not yet ended that name the key.
    users: u32,
    /// A dynamic rate key's newest definition.
    rate: Option<LimitSpec>,
    /// A concurrency key's newest limit.
    limit: u32,
}

/// A key a run names, borrowed from its rendered limits.
#[derive(Clone, Copy)]
enum KeyRef<'a> {
    /// A declared limit.
    Declared(&'a str),
    /// A dynamic rate key, with this run's definition of it.
    Dynamic(&'a str, &'a LimitSpec),
    /// A concurrency key, with this run's limit for it.
    Concurrency(&'a str, u32),
}

impl KeyRef<'_> {
    fn to_wait_key(self) -> WaitKey {
        match self {
            KeyRef::Declared(key) => WaitKey::declared(key),
            KeyRef::Dynamic(key, _) => WaitKey::Rate {
                dynamic: true,
                key: key.to_owned(),
            },
            KeyRef::Concurrency(key, _) => WaitKey::Concurrency(key.to_owned()),
        }
    }
}

/// Every key `rendered` names.
fn named(rendered: &Rendered) -> impl Iterator<Item = KeyRef<'_>> {
    let rate = rendered.rate.iter().map(|r| match &r.dynamic {
        None => KeyRef::Declared(&r.key),
        Some(spec) => KeyRef::Dynamic(&r.key, spec),
    });
    let conc = rendered
        .concurrency
        .iter()
        .map(|c| KeyRef::Concurrency(&c.key, c.limit));
    rate.chain(conc)
}

/// What the runs not yet ended name, per key.
#[derive(Debug, Default)]
pub(crate) struct KeyUses {
    declared: FastHashMap<String, KeyUse>,
    dynamic: FastHashMap<String, KeyUse>,
    concurrency: FastHashMap<String, KeyUse>,
}

impl KeyUses {
    fn map_mut<'k>(&mut self, key: KeyRef<'k>) -> (&mut FastHashMap<String, KeyUse>, &'k str) {
        match key {
            KeyRef::Declared(k) => (&mut self.declared, k),
            KeyRef::Dynamic(k, _) => (&mut self.dynamic, k),
            KeyRef::Concurrency(k, _) => (&mut self.concurrency, k),
        }
    }

    /// A run that may still start names the keys of `rendered` from now on; its definitions
    /// of dynamic keys become the newest. Returns the keys whose definition this changed while
    /// other runs used them, to re-plan (the same rule as `register` in queue_lib.lua).
    pub(crate) fn register(&mut self, rendered: &Rendered) -> Vec<WaitKey> {
        let mut changed: Vec<WaitKey> = Vec::new();
        for key in named(rendered) {
            let (map, k) = self.map_mut(key);
            let u = match map.get_mut(k) {
                Some(u) => u,
                None => map.entry(k.to_owned()).or_default(),
            };
            let had = u.users > 0;
            u.users += 1;
            let differs = match key {
                KeyRef::Declared(_) => false,
                KeyRef::Dynamic(_, spec) => {
                    if u.rate.as_ref() == Some(spec) {
                        false
                    } else {
                        u.rate = Some(spec.clone());
                        true
                    }
                }
                KeyRef::Concurrency(_, limit) => std::mem::replace(&mut u.limit, limit) != limit,
            };
            if had && differs {
                let wk = key.to_wait_key();
                if !changed.contains(&wk) {
                    changed.push(wk);
                }
            }
        }
        changed
    }

    /// A run that named the keys of `rendered` ended: each loses a user, and a key with none
    /// left is forgotten.
    pub(crate) fn unregister(&mut self, rendered: &Rendered) {
        for key in named(rendered) {
            let (map, k) = self.map_mut(key);
            if let Some(u) = map.get_mut(k) {
                u.users = u.users.saturating_sub(1);
                if u.users == 0 {
                    map.remove(k);
                }
            }
        }
    }

    /// How many entries of runs not yet ended name declared limit `key`.
    pub(crate) fn declared_users(&self, key: &str) -> u32 {
        self.declared.get(key).map_or(0, |u| u.users)
    }

    /// Dynamic key `key`'s newest definition, while a run not yet ended names it.
    pub(crate) fn newest_rate(&self, key: &str) -> Option<&LimitSpec> {
        self.dynamic.get(key).and_then(|u| u.rate.as_ref())
    }

    /// Concurrency key `key`'s newest limit, while a run not yet ended names it.
    pub(crate) fn newest_limit(&self, key: &str) -> Option<u32> {
        self.concurrency.get(key).map(|u| u.limit)
    }
}
