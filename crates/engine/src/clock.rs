//! [`Clock`]: the one source of time. Only the engine and stores read it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tollgate_core::Nanos;

/// Where time comes from: nanoseconds since the Unix epoch.
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> Nanos;
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Nanos {
        (**self).now()
    }
}

/// The production clock: reads `SystemTime` once, then adds monotonic `Instant` elapsed time,
/// so it never steps back within a process, whatever NTP does to the wall clock.
///
/// ```
/// use tollgate::{Clock, SystemClock};
/// let clock = SystemClock::new();
/// let a = clock.now();
/// assert!(clock.now() >= a);
/// ```
#[derive(Debug, Clone)]
pub struct SystemClock {
    anchor: Nanos,
    start: Instant,
}

impl SystemClock {
    /// Anchored to the wall clock now.
    pub fn new() -> SystemClock {
        SystemClock::with_floor(Nanos::ZERO)
    }

    /// Anchored to the wall clock, but never below `floor` (the last time persisted by a
    /// previous process), so a wall clock set back across a restart cannot re-open windows.
    pub fn with_floor(floor: Nanos) -> SystemClock {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(Nanos::from)
            .unwrap_or(Nanos::ZERO);
        SystemClock {
            anchor: wall.max(floor),
            start: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> SystemClock {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Nanos {
        self.anchor + Nanos::from(self.start.elapsed())
    }
}

/// A clock for tests: it moves only when told to. Clones share the same time.
///
/// ```
/// use tollgate::{Clock, FakeClock};
/// use tollgate_core::Nanos;
/// let clock = FakeClock::new(Nanos::from_secs(100));
/// let shared = clock.clone();
/// clock.advance(Nanos::from_millis(250));
/// assert_eq!(shared.now(), Nanos::from_millis(100_250));
/// ```
#[derive(Debug, Clone, Default)]
pub struct FakeClock(Arc<AtomicU64>);

impl FakeClock {
    /// A clock showing `start`.
    pub fn new(start: Nanos) -> FakeClock {
        FakeClock(Arc::new(AtomicU64::new(start.as_nanos())))
    }

    /// Moves time forward (saturating).
    pub fn advance(&self, by: impl Into<Nanos>) {
        let by = by.into().as_nanos();
        // fetch_update cannot fail with a closure that always returns Some.
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_add(by))
            });
    }

    /// Sets the time, also backwards (to test a clock that steps back).
    pub fn set(&self, to: Nanos) {
        self.0.store(to.as_nanos(), Ordering::Release);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Nanos {
        Nanos::from_nanos(self.0.load(Ordering::Acquire))
    }
}

/// A clock that follows tokio's time: under `tokio::time::pause()` it moves exactly as far as
/// tokio's virtual time does, so async waits can be tested without real sleeping.
#[derive(Debug, Clone)]
pub struct TokioClock {
    anchor: Nanos,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// Showing `anchor` now; must be created inside a tokio runtime.
    pub fn new(anchor: Nanos) -> TokioClock {
        TokioClock {
            anchor,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Nanos {
        self.anchor + Nanos::from(self.start.elapsed())
    }
}
