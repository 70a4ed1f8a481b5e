//! [`Decision`] and [`Usage`]: what a limit answers.

use serde::{Deserialize, Serialize};

use crate::time::Nanos;

/// The answer of one limit to one request. A denial is a normal value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Whether the units were admitted (and consumed).
    pub allowed: bool,
    /// The most units this limit admits at once (its `limit`, `burst` or `capacity`).
    pub limit: u64,
    /// Units still admissible right now, after this decision.
    pub remaining: u64,
    /// For a denial: how long until the same request would be admitted, if nothing else
    /// happens in between. Zero when allowed.
    pub retry_after: Nanos,
    /// How long until the limit is back to its fresh state (all usage gone).
    pub reset_after: Nanos,
}

impl Decision {
    /// This decision on a key paused for `left` more (docs/design.md §3.13): nothing is
    /// admitted while a pause lasts, so the answer is a denial with nothing remaining, to be
    /// retried no sooner than the pause ends (or later, if the limit itself says so). The
    /// limit and its reset are the limit's own.
    #[must_use]
    pub fn paused(self, left: Nanos) -> Decision {
        let retry_after = if self.allowed {
            left
        } else {
            self.retry_after.max(left)
        };
        Decision {
            allowed: false,
            remaining: 0,
            retry_after,
            ..self
        }
    }
}

/// A read-only view of a limit's state: what `GET /v1/limits` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// The most units admissible at once.
    pub limit: u64,
    /// Units counted against the limit now.
    pub used: u64,
    /// Units admissible now.
    pub remaining: u64,
    /// How long until all usage is gone.
    pub reset_after: Nanos,
}
