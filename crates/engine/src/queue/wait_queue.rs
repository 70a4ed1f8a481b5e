//! One key's wait queue (docs/design.md §3.15): the order in which the runs parked on a key are
//! tried. Priority orders first; within a priority, fairness keys take turns (start-time fair
//! queueing, weighted); within a fairness key, arrival order. While runs of more than one
//! priority wait, every tenth run taken is the oldest of the priorities' next runs, so no
//! priority starves. The Redis engine keeps the same order in a sorted set
//! (`queue_lib.lua`, `wq_*`), and the differential model test holds the two to it.

use std::collections::BTreeMap;

use crate::fast_map::FastHashMap;
use crate::task::{MAX_FAIRNESS_WEIGHT, MAX_PRIORITY};

/// While runs of more than one priority wait (or are ready), every `FORCED_EVERY`-th run taken
/// is the oldest of the priorities' next runs.
pub const FORCED_EVERY: u64 = 10;

/// How far one turn moves a fairness key's virtual time: 1000 at weight 1, 1 at weight 1000.
pub fn turn_cost(weight: u32) -> u64 {
    u64::from(MAX_FAIRNESS_WEIGHT).div_ceil(u64::from(weight.clamp(1, MAX_FAIRNESS_WEIGHT)))
}

/// A priority's band: 0 for the most urgent.
pub fn band(priority: u8) -> u8 {
    MAX_PRIORITY - priority.clamp(1, MAX_PRIORITY)
}

/// A run's place: (band, start tag, enqueue sequence).
type Place = (u8, u64, u64);

/// The runs parked on one key, in the order they are tried.
#[derive(Debug, Default)]
pub(crate) struct WaitQueue {
    order: BTreeMap<Place, String>,
    places: FastHashMap<String, Place>,
    /// Virtual time: the largest start tag taken so far.
    virtual_time: u64,
    /// Each fairness key's next start tag ("" for runs without one).
    next_tag: FastHashMap<String, u64>,
    /// Runs taken while more than one priority waited.
    taken_mixed: u64,
}

impl WaitQueue {
    /// Parks run `id` (enqueue sequence `seq`) in its place.
    pub(crate) fn push(
        &mut self,
        id: &str,
        seq: u64,
        priority: u8,
        fairness: Option<&str>,
        weight: u32,
    ) {
        let flow = fairness.unwrap_or("");
        let cost = turn_cost(weight);
        let start = match self.next_tag.get_mut(flow) {
            Some(next) => {
                let start = (*next).max(self.virtual_time);
                *next = start + cost;
                start
            }
            None => {
                let start = self.virtual_time;
                self.next_tag.insert(flow.to_owned(), start + cost);
                start
            }
        };
        let place = (band(priority), start, seq);
        self.order.insert(place, id.to_owned());
        self.places.insert(id.to_owned(), place);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The first run of each band that has one.
    fn band_heads(&self) -> impl Iterator<Item = (&Place, &String)> {
        let mut last_band = None;
        self.order.iter().filter(move |((b, _, _), _)| {
            let new = last_band != Some(*b);
            last_band = Some(*b);
            new
        })
    }

    fn mixed(&self) -> bool {
        match (self.order.first_key_value(), self.order.last_key_value()) {
            (Some(((first, ..), _)), Some(((last, ..), _))) => first != last,
            _ => false,
        }
    }

    /// The run tried next: the first in order, or, on every tenth turn while more than one
    /// priority waits, the oldest of the bands' first runs.
    pub(crate) fn head(&self) -> Option<&str> {
        if self.mixed() && self.taken_mixed % FORCED_EVERY == FORCED_EVERY - 1 {
            return self
                .band_heads()
                .min_by_key(|((_, _, seq), _)| *seq)
                .map(|(_, id)| id.as_str());
        }
        self.order.first_key_value().map(|(_, id)| id.as_str())
    }

    /// Takes run `id` out because its turn came (admitted, or moved to another key).
    pub(crate) fn take(&mut self, id: &str) {
        let mixed = self.mixed();
        if let Some(place) = self.places.remove(id) {
            self.order.remove(&place);
            self.virtual_time = self.virtual_time.max(place.1);
            if mixed {
                self.taken_mixed += 1;
            }
        }
    }

    /// Takes run `id` out without a turn (cancelled).
    pub(crate) fn remove(&mut self, id: &str) {
        if let Some(place) = self.places.remove(id) {
            self.order.remove(&place);
        }
    }

    /// The runs in order (the order of the bands, then of tags; the every-tenth turn aside).
    pub(crate) fn iter(&self) -> impl Iterator<Item = &str> {
        self.order.values().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &mut WaitQueue) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(id) = q.head().map(str::to_owned) {
            q.take(&id);
            out.push(id);
        }
        out
    }

    #[test]
    fn without_priorities_or_fairness_it_is_first_in_first_out() {
        let mut q = WaitQueue::default();
        for i in 0..5u64 {
            q.push(&format!("r{i}"), i, 2, None, 1);
        }
        assert_eq!(drain(&mut q), ["r0", "r1", "r2", "r3", "r4"]);
    }

    #[test]
    fn fairness_keys_take_turns_and_a_newcomer_goes_next() {
        let mut q = WaitQueue::default();
        for i in 0..6u64 {
            q.push(&format!("a{i}"), i, 2, Some("a"), 1);
        }
        q.take("a0");
        for i in 0..2u64 {
            q.push(&format!("b{i}"), 10 + i, 2, Some("b"), 1);
        }
        // b0 starts at the virtual time of the run just taken: it goes next, then turns alternate.
        assert_eq!(drain(&mut q), ["b0", "a1", "b1", "a2", "a3", "a4", "a5"]);
    }

    #[test]
    fn a_weight_of_three_gets_three_turns_to_one() {
        let mut q = WaitQueue::default();
        for i in 0..8u64 {
            q.push(&format!("h{i}"), 2 * i, 2, Some("heavy"), 3);
            q.push(&format!("l{i}"), 2 * i + 1, 2, Some("light"), 1);
        }
        let first: Vec<String> = drain(&mut q).into_iter().take(8).collect();
        assert_eq!(
            first.iter().filter(|id| id.starts_with('h')).count(),
            6,
            "{first:?}"
        );
    }

    /// Why: fairness is a promise about every arrival order. Runs of a few fairness keys with
    /// different weights arrive and are taken in any interleaving; then (1) each key's runs
    /// are taken in the order they arrived, and (2) no key starves: while a run is the next of
    /// its key, every other key gets at most ⌊its cost ÷ the other's⌋ + 1 turns before it (the
    /// start-time fair queueing bound: the other's turns fall within one of its own).
    mod fairness {
        use super::*;
        use proptest::prelude::*;

        /// `Some((key, weight))` pushes a run of that key; `None` takes the head.
        fn ops() -> impl Strategy<Value = Vec<Option<(usize, u32)>>> {
            prop::collection::vec(
                prop_oneof![
                    3 => (0..4usize, prop_oneof![Just(1u32), Just(2), Just(3), Just(7)]).prop_map(Some),
                    2 => Just(None),
                ],
                1..300,
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn keys_take_turns_in_arrival_order_and_none_starves(ops in ops()) {
                let mut q = WaitQueue::default();
                // Per key: weight of each run (a key's weight is fixed per key here).
                let weights = [1u32, 2, 3, 7];
                let mut pushed: Vec<Vec<String>> = vec![Vec::new(); 4];
                let mut taken: Vec<Vec<String>> = vec![Vec::new(); 4];
                let mut key_of = FastHashMap::default();
                // Turns each key got since key k's current head became its head.
                let mut since_head: [[u64; 4]; 4] = [[0; 4]; 4];
                let mut waiting = [0usize; 4];
                let mut seq = 0u64;
                let mut drain = ops.clone();
                drain.extend(std::iter::repeat_n(None, 300));
                for op in drain {
                    match op {
                        Some((k, _)) => {
                            seq += 1;
                            let id = format!("k{k}-{seq}");
                            q.push(&id, seq, 2, Some(&format!("key{k}")), weights[k]);
                            if waiting[k] == 0 {
                                since_head[k] = [0; 4];
                            }
                            waiting[k] += 1;
                            pushed[k].push(id.clone());
                            key_of.insert(id, k);
                        }
                        None => {
                            let Some(id) = q.head().map(str::to_owned) else { continue };
                            q.take(&id);
                            let k = key_of[&id];
                            for g in 0..4 {
                                if g != k && waiting[g] > 0 {
                                    since_head[g][k] += 1;
                                }
                            }
                            let cost = turn_cost(weights[k]);
                            for g in 0..4 {
                                let bound = cost / turn_cost(weights[g]) + 1;
                                prop_assert!(
                                    since_head[k][g] <= bound,
                                    "key {} waited through {} turns of key {} (bound {})",
                                    k, since_head[k][g], g, bound
                                );
                            }
                            waiting[k] -= 1;
                            since_head[k] = [0; 4];
                            taken[k].push(id);
                        }
                    }
                }
                for k in 0..4 {
                    prop_assert_eq!(&taken[k], &pushed[k], "key {} out of arrival order", k);
                }
            }
        }
    }

    #[test]
    fn higher_priority_goes_first_but_every_tenth_turn_takes_the_oldest() {
        let mut q = WaitQueue::default();
        q.push("low", 0, 1, None, 1);
        for i in 1..=20u64 {
            q.push(&format!("hi{i}"), i, 4, None, 1);
        }
        let order = drain(&mut q);
        assert_eq!(
            order.iter().position(|id| id == "low"),
            Some(9),
            "{order:?}"
        );
        assert_eq!(order[0], "hi1");
    }
}
