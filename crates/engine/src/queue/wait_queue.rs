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
        let next = self.next_tag.get(flow).copied().unwrap_or(0);
        let start = next.max(self.virtual_time);
        self.next_tag
            .insert(flow.to_owned(), start + turn_cost(weight));
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
