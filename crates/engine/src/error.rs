//! The engine's errors. A denial is not an error: it is a decision with `allowed == false`.

use tollgate_core::Algorithm;

/// Why an engine call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key that names no declared limit (static namespace).
    #[error("no limit is declared under key {key:?}")]
    UnknownLimit {
        /// The key asked for.
        key: String,
    },
    /// A key used with an operation its algorithm does not support, e.g. acquiring units from
    /// a concurrency limit.
    #[error("key {key:?} is a {found} limit; this operation needs {expected}")]
    WrongAlgorithm {
        /// The key.
        key: String,
        /// What the operation works on.
        expected: &'static str,
        /// What the key is.
        found: Algorithm,
    },
    /// Feedback for a declared limit that does not adapt (declared without `adaptive`,
    /// docs/design.md §3.16).
    #[error(
        "the limit {key:?} does not adapt: declare it with \"adaptive\": {{\"min\", \"max\"}} to send it feedback"
    )]
    NotAdaptive {
        /// The key.
        key: String,
    },
    /// Units that the key's limit can never admit at once: retrying cannot help.
    #[error(
        "key {key:?}: {units} units can never be admitted, the limit holds at most {capacity} at once"
    )]
    InsufficientCapacity {
        /// The key.
        key: String,
        /// Units asked for (summed over entries naming the key).
        units: u64,
        /// The most the limit admits at once.
        capacity: u64,
    },
    /// A key that is empty, too long or not valid text.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The key (truncated when very long).
        key: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// `units` of zero.
    #[error("key {key:?}: units must be at least 1")]
    ZeroUnits {
        /// The key.
        key: String,
    },
    /// A request naming no key at all.
    #[error("a request must name at least one key")]
    EmptyRequest,
    /// A task name that is not defined.
    #[error("no task is defined under name {name:?}")]
    UnknownTask {
        /// The name asked for.
        name: String,
    },
    /// A run id that does not exist (or is malformed).
    #[error("no run has id {id:?}")]
    UnknownRun {
        /// The id asked for.
        id: String,
    },
    /// An operation the run's state does not allow (completing a run that is not running, …).
    #[error("run {id:?} is {state}: cannot {action} it")]
    InvalidState {
        /// The run.
        id: String,
        /// Its state.
        state: &'static str,
        /// What was attempted.
        action: &'static str,
    },
    /// A CEL expression that could not be evaluated for a run's input: the run is rejected,
    /// never run unlimited.
    // `message` reads on from the expression (`failed: no such key`, `gave a list; …`), as in
    // `RenderError`: adding "failed:" here would say it twice.
    #[error("{field}: expression {source_text:?} {message}")]
    Expression {
        /// Where the expression is in the task (`rate_limits[1].dynamic_key`).
        field: String,
        /// The expression.
        source_text: String,
        /// What went wrong, reading on from the expression: `failed: …` or `gave …`.
        message: String,
    },
    /// A limit or task definition that is not valid.
    #[error(transparent)]
    Spec(crate::spec::SpecError),
    /// A static limit that tasks or runs not yet ended still name.
    #[error("{}", limit_in_use_message(key, tasks, *runs))]
    LimitInUse {
        /// The limit.
        key: String,
        /// The tasks naming it.
        tasks: Vec<String>,
        /// How many runs not yet ended name it.
        runs: u32,
    },
    /// A task name that is empty, too long or has control characters.
    #[error("invalid name {name:?}: a name must be 1 to 512 bytes without control characters")]
    InvalidName {
        /// The name (truncated).
        name: String,
    },
    /// Lease, barrier and parameter errors from the core.
    #[error(transparent)]
    Core(#[from] tollgate_core::Error),
    /// The store failed; see [`StoreError::is_transient`].
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Error {
    /// Whether retrying the same call later may succeed (an unreachable store).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Store(e) if e.is_transient())
    }
}

/// A store failure, with its cause kept.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    message: String,
    transient: bool,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    /// A failure that may clear by itself (connection lost, timeout).
    pub fn transient(
        message: impl Into<String>,
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    ) -> StoreError {
        StoreError {
            message: message.into(),
            transient: true,
            source,
        }
    }

    /// A failure that will not clear by retrying (corrupt data, bad configuration).
    pub fn permanent(
        message: impl Into<String>,
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    ) -> StoreError {
        StoreError {
            message: message.into(),
            transient: false,
            source,
        }
    }

    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        self.transient
    }

    /// The same failure for one more caller: its message with the causes' appended, and its
    /// transience (a cause cannot be cloned). For a store that answers many callers with the
    /// outcome of one call (a batch).
    #[must_use]
    pub fn clone_message(&self) -> StoreError {
        let mut message = self.message.clone();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            message.push_str(": ");
            message.push_str(&c.to_string());
            cause = c.source();
        }
        StoreError {
            message,
            transient: self.transient,
            source: None,
        }
    }
}

/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 512;

/// Whether `s` holds a control character (`char::is_control`). Every acquire checks its keys,
/// so ASCII keys (nearly all) are checked byte-wise instead of decoding UTF-8.
fn has_control(s: &str) -> bool {
    if s.is_ascii() {
        s.bytes().any(|b| b.is_ascii_control())
    } else {
        s.chars().any(char::is_control)
    }
}

/// What is wrong with `key` as a key (empty, over [`MAX_KEY_LEN`] bytes, control characters),
/// or `None` when it is fine. Every store and the server apply this one rule.
pub fn key_problem(key: &str) -> Option<&'static str> {
    if key.is_empty() {
        Some("a key must not be empty")
    } else if key.len() > MAX_KEY_LEN {
        Some("a key must be at most 512 bytes")
    } else if has_control(key) {
        Some("a key must not contain control characters")
    } else {
        None
    }
}

/// [`key_problem`] as an [`Error::InvalidKey`] (showing at most 64 characters of the key).
///
/// # Errors
/// [`Error::InvalidKey`].
#[inline]
pub fn check_key(key: &str) -> Result<(), Error> {
    // Nearly every key is 1 to 512 bytes of printable ASCII (no control character: not below
    // 0x20, not 0x7f): one pass over the bytes, inlined into every acquire. Anything else
    // takes the full rule.
    if !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| (0x20..0x7f).contains(&b))
    {
        return Ok(());
    }
    key_error(key)
}

#[cold]
#[inline(never)]
fn key_error(key: &str) -> Result<(), Error> {
    let Some(reason) = key_problem(key) else {
        return Ok(());
    };
    let mut shown: String = key.chars().take(64).collect();
    if shown.len() < key.len() {
        shown.push('…');
    }
    Err(Error::InvalidKey { key: shown, reason })
}

fn limit_in_use_message(key: &str, tasks: &[String], runs: u32) -> String {
    let mut users = Vec::new();
    let mut then = Vec::new();
    if !tasks.is_empty() {
        users.push(format!("tasks {tasks:?}"));
        then.push("change those tasks");
    }
    if runs > 0 {
        users.push(format!(
            "{runs} run{} not yet ended",
            if runs == 1 { "" } else { "s" }
        ));
        then.push("let those runs end (or cancel them)");
    }
    format!(
        "limit {key:?} is used by {}; {} first",
        users.join(" and "),
        then.join(" and ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_in_use_says_who_uses_the_limit_and_what_to_do() {
        let only_tasks = limit_in_use_message("api", &["sync".into()], 0);
        assert_eq!(
            only_tasks,
            r#"limit "api" is used by tasks ["sync"]; change those tasks first"#
        );
        let only_runs = limit_in_use_message("api", &[], 1);
        assert_eq!(
            only_runs,
            r#"limit "api" is used by 1 run not yet ended; let those runs end (or cancel them) first"#
        );
        let both = limit_in_use_message("api", &["sync".into()], 3);
        assert!(
            both.contains(r#"tasks ["sync"] and 3 runs not yet ended"#),
            "{both}"
        );
        assert!(
            both.contains("change those tasks and let those runs end"),
            "{both}"
        );
    }

    #[test]
    fn control_characters_are_found_in_ascii_and_non_ascii_keys_alike() {
        // Why: ASCII keys take a byte-wise shortcut; it must agree with `char::is_control`.
        for key in [
            "user:42",
            "a\tb",
            "del\u{7f}",
            "caf\u{e9}",
            "nel\u{85}",
            "\u{9f}x",
            "\u{a0}",
        ] {
            assert_eq!(
                has_control(key),
                key.chars().any(char::is_control),
                "{key:?}"
            );
        }
        assert!(check_key("a\u{85}").is_err());
        // The printable-ASCII shortcut of `check_key` agrees with `key_problem` on every byte.
        for b in 0..=0x7fu8 {
            let key = format!("k{}", b as char);
            assert_eq!(
                check_key(&key).is_ok(),
                key_problem(&key).is_none(),
                "{b:#x}"
            );
        }
        assert!(check_key("").is_err());
        assert!(check_key(&"k".repeat(MAX_KEY_LEN)).is_ok());
        assert!(check_key(&"k".repeat(MAX_KEY_LEN + 1)).is_err());
        assert!(check_key("caf\u{e9}").is_ok());
    }
}
