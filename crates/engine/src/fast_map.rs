//! [`FastHashMap`]: the engine's maps keyed by run ids, task names and limit keys hash with
//! foldhash (seeded per process, as `MemoryStore`'s tables) instead of SipHash, which cost a
//! sixth of a run's instructions in the queue (BENCHMARKS.md, "Queue A/B for 0.2").

/// A `HashMap` with foldhash's per-process random seed.
pub type FastHashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
