//! Redis key names.
//!
//! Every Redis key is `<prefix>:<kind>:{<tag>}:<key>`. The `{tag}` is the Redis Cluster hash
//! tag: all Redis keys of one Tollgate key share a slot, and so do Tollgate keys that carry
//! the same `{...}` part themselves (`"{acct-42}:api"` and `"{acct-42}:user-7"`), as Redis
//! users expect. The kind keeps the namespaces apart: a dynamic key `"x"` and the static limit
//! `"x"` share a slot but no Redis key.

use std::borrow::Cow;

/// What a Redis key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A static limit's definition (a string; never expires).
    Def,
    /// A static limit's rate state.
    StaticRate,
    /// A static concurrency limit's lease set (ZSET of id → expiry).
    StaticLeases,
    /// A static concurrency limit's lease holders (HASH).
    StaticHolders,
    /// A dynamic key's rate state.
    DynamicRate,
    /// A dynamic key's lease set.
    DynamicLeases,
    /// A dynamic key's lease holders and its last concurrency spec.
    DynamicHolders,
    /// A barrier.
    Barrier,
    /// A static key's pause: when it ends, in µs (a string that expires then).
    StaticPause,
    /// A dynamic key's pause.
    DynamicPause,
}

impl Kind {
    const fn code(self) -> &'static str {
        match self {
            Kind::Def => "def",
            Kind::StaticRate => "sr",
            Kind::StaticLeases => "sl",
            Kind::StaticHolders => "sh",
            Kind::DynamicRate => "dr",
            Kind::DynamicLeases => "dl",
            Kind::DynamicHolders => "dh",
            Kind::Barrier => "b",
            Kind::StaticPause => "sp",
            Kind::DynamicPause => "dp",
        }
    }
}

/// The slot tag of `key`: its own non-empty `{...}` part if it has one (Redis's rule), else the
/// whole key with braces replaced, so that the tag is never empty and never ends early.
fn tag(key: &str) -> Cow<'_, str> {
    if let Some(open) = key.find('{') {
        let rest = &key[open + 1..];
        if let Some(len) = rest.find('}')
            && len > 0
        {
            return Cow::Borrowed(&rest[..len]);
        }
    }
    if key.contains(['{', '}']) {
        Cow::Owned(key.replace('{', "(").replace('}', ")"))
    } else {
        Cow::Borrowed(key)
    }
}

/// The Redis key holding `kind` for Tollgate key `key`.
pub(crate) fn name(prefix: &str, kind: Kind, key: &str) -> String {
    format!("{prefix}:{}:{{{}}}:{key}", kind.code(), tag(key))
}

/// The Tollgate key of a Redis key of `kind`, if `name` is one of ours.
pub(crate) fn parse(prefix: &str, kind: Kind, name: &str) -> Option<String> {
    let rest = name
        .strip_prefix(prefix)?
        .strip_prefix(':')?
        .strip_prefix(kind.code())?
        .strip_prefix(":{")?;
    let close = rest.find('}')?;
    let key = rest[close + 1..].strip_prefix(':')?;
    (self::name(prefix, kind, key) == name).then(|| key.to_owned())
}

/// A `SCAN MATCH` pattern for every Redis key of `kind` under `prefix`.
pub(crate) fn pattern(prefix: &str, kind: Kind) -> String {
    let mut p = String::with_capacity(prefix.len() + 8);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push(':');
    p.push_str(kind.code());
    p.push_str(":{*");
    p
}

/// Checks a key prefix: non-empty, at most 128 bytes, no braces (they would move the hash
/// tag) and no control characters.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > 128 {
        return Err(format!(
            "key prefix {prefix:?} must be between 1 and 128 bytes"
        ));
    }
    if prefix.contains(['{', '}']) || prefix.chars().any(char::is_control) {
        return Err(format!(
            "key prefix {prefix:?} must not contain braces or control characters"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_redis_key_of_one_tollgate_key_shares_its_hash_tag() {
        for key in ["a", "a}b", "}x", "{}", "{", "user:{42}:x", "{{a}"] {
            let names: Vec<String> = [Kind::Def, Kind::StaticRate, Kind::DynamicLeases]
                .into_iter()
                .map(|k| name("tg", k, key))
                .collect();
            let tags: Vec<&str> = names.iter().map(|n| redis_tag(n)).collect();
            assert!(!tags[0].is_empty(), "{key}: {names:?}");
            assert!(tags.iter().all(|t| *t == tags[0]), "{key}: {names:?}");
        }
    }

    #[test]
    fn keys_with_the_same_braced_part_share_a_slot() {
        assert_eq!(
            redis_tag(&name("tg", Kind::Def, "{acct}:api")),
            redis_tag(&name("tg", Kind::DynamicRate, "{acct}:user-7"))
        );
    }

    #[test]
    fn names_parse_back_and_namespaces_never_collide() {
        for key in ["a", "a}b", "}x", "user:{42}:x", "x:def:{y}:z"] {
            let n = name("tg", Kind::Def, key);
            assert_eq!(parse("tg", Kind::Def, &n).as_deref(), Some(key));
            assert_eq!(parse("tg", Kind::DynamicRate, &n), None);
            assert_ne!(n, name("tg", Kind::DynamicRate, key));
        }
        // Another prefix's names are not ours, even when that prefix starts with ours.
        assert_eq!(
            parse("tg", Kind::Def, &name("tg:def", Kind::Def, "a")),
            None
        );
    }

    #[test]
    fn the_scan_pattern_escapes_glob_characters() {
        assert_eq!(pattern("t*g", Kind::Def), "t\\*g:def:{*");
    }

    /// The hash tag as Redis computes it.
    fn redis_tag(name: &str) -> &str {
        if let Some(open) = name.find('{')
            && let Some(len) = name[open + 1..].find('}')
            && len > 0
        {
            return &name[open + 1..open + 1 + len];
        }
        name
    }
}
