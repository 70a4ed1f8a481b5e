//! The Lua code as one Redis Functions library: `lib.lua` (the algorithms and the one
//! all-or-nothing acquire), `queue_lib.lua` (the run queue) and one function per operation
//! (`acquire.lua`, ..., `queue_define.lua`, each the body of `function(KEYS, ARGV)`), loaded with
//! `FUNCTION LOAD REPLACE` and called with `FCALL`. The library's locals are made once per load,
//! not on every call as when each script was a whole program.
//!
//! **Versioning.** The library is named `tollgate_<hash>`, the hash being FNV-1a over every Lua
//! source and the code that assembles them, computed at compile time; its functions are named
//! `tollgate_<hash>_<operation>` (function names are global in Redis). Two builds with
//! different Lua therefore never call each other's code, as during a rolling upgrade, with
//! nothing to remember to bump; the same Lua keeps its name across releases, so nodes of two
//! versions whose scripts did not change share one library. Libraries of older versions stay in
//! Redis (a few hundred kilobytes each) until `FUNCTION DELETE` removes them.
//!
//! **Loading.** [`load`] checks the server's version (`INFO server`, [`check_version`]) and
//! loads the library; the store does it at start ([`crate::RedisStore::ping`]) and again
//! whenever a call finds its function missing ([`is_missing_function`]: a restart without
//! persistence, `FUNCTION FLUSH`, a failover to a node that never had it), then retries that
//! call once ([`call`]).
//!
//! Needs Redis 7.0 or later (Functions), or Valkey 7.2 or later (every Valkey release).

use std::sync::LazyLock;

use redis::aio::MultiplexedConnection;
use redis::{Cmd, ErrorKind, RedisError, RedisResult, Value};

const LIB: &str = include_str!("scripts/lib.lua");
const QUEUE_LIB: &str = include_str!("scripts/queue_lib.lua");

/// Every function: its name after the library's, its body, its flags (a Lua table's items).
///
/// - `no-writes` on the views: they may run on a replica and while Redis is out of memory.
/// - `allow-oom` on `queue_read`: reads, and a prune that only deletes, go on while Redis is
///   out of memory (without it a function that may write is refused before it starts).
/// - `allow-cross-slot-keys` on the queue's functions, which build their keys themselves: as
///   `EVAL` scripts did, they may touch keys of several slots on one node. With
///   [`crate::Builder::cluster`] every key shares one slot anyway.
const FUNCTIONS: [(&str, &str, &str); 15] = [
    ("acquire", include_str!("scripts/acquire.lua"), ""),
    ("refund", include_str!("scripts/refund.lua"), ""),
    ("lease", include_str!("scripts/lease.lua"), ""),
    ("barrier", include_str!("scripts/barrier.lua"), ""),
    ("put_limit", include_str!("scripts/put_limit.lua"), ""),
    ("remove_limit", include_str!("scripts/remove_limit.lua"), ""),
    ("pause", include_str!("scripts/pause.lua"), ""),
    (
        "view_static",
        include_str!("scripts/view_static.lua"),
        "'no-writes'",
    ),
    (
        "view_dynamic",
        include_str!("scripts/view_dynamic.lua"),
        "'no-writes'",
    ),
    (
        "queue_enqueue",
        include_str!("scripts/queue_enqueue.lua"),
        CROSS_SLOT,
    ),
    (
        "queue_lease",
        include_str!("scripts/queue_lease.lua"),
        CROSS_SLOT,
    ),
    (
        "queue_run",
        include_str!("scripts/queue_run.lua"),
        CROSS_SLOT,
    ),
    (
        "queue_sweep",
        include_str!("scripts/queue_sweep.lua"),
        CROSS_SLOT,
    ),
    (
        "queue_read",
        include_str!("scripts/queue_read.lua"),
        "'allow-cross-slot-keys', 'allow-oom'",
    ),
    (
        "queue_define",
        include_str!("scripts/queue_define.lua"),
        CROSS_SLOT,
    ),
];

const CROSS_SLOT: &str = "'allow-cross-slot-keys'";

/// How each function is registered, around its body (`{name}` and `{flags}` filled in): it first
/// calls lib.lua's `prepare`, which makes what Redis 7.0 cannot make while loading a library.
const REGISTER_HEAD: &str = concat!(
    "redis.register_function{ function_name = '{name}', flags = { {flags} },\n",
    "callback = function(KEYS, ARGV)\nprepare()\n"
);
const REGISTER_TAIL: &str = "\nend }\n";
/// The library's first line after its shebang.
const HEADER: &str = "-- Tollgate's Redis Functions: crates/redis/src/scripts.rs assembles this from scripts/*.lua\n";

/// The oldest servers with Redis Functions (and the `FUNCTION`/`FCALL` commands and flags the
/// library uses): Redis 7.0; Valkey 7.2, its first release (forked from Redis 7.2.4).
pub(crate) const MIN_REDIS: (u32, u32) = (7, 0);
pub(crate) const MIN_VALKEY: (u32, u32) = (7, 2);

/// FNV-1a (64 bits) over `parts`, each followed by a zero byte; at compile time.
const fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut p = 0;
    while p < parts.len() {
        let bytes = parts[p].as_bytes();
        let mut i = 0;
        while i <= bytes.len() {
            let b = if i < bytes.len() { bytes[i] } else { 0 };
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
            i += 1;
        }
        p += 1;
    }
    h
}

/// The hash naming the library: every source and flag, and how they are put together.
const HASH: u64 = {
    const N: usize = 5 + 3 * FUNCTIONS.len();
    let mut parts: [&str; N] = [""; N];
    parts[0] = HEADER;
    parts[1] = LIB;
    parts[2] = QUEUE_LIB;
    parts[3] = REGISTER_HEAD;
    parts[4] = REGISTER_TAIL;
    let mut i = 0;
    while i < FUNCTIONS.len() {
        parts[5 + 3 * i] = FUNCTIONS[i].0;
        parts[6 + 3 * i] = FUNCTIONS[i].1;
        parts[7 + 3 * i] = FUNCTIONS[i].2;
        i += 1;
    }
    fnv1a(&parts)
};

/// The library: its name, its source, the full name of each function (in [`FUNCTIONS`] order).
struct Library {
    name: String,
    source: String,
    functions: Vec<String>,
}

static LIBRARY: LazyLock<Library> = LazyLock::new(|| {
    // 48 bits of the hash: short names, and a collision between two builds that both run
    // against one Redis is out of reach.
    let name = format!("tollgate_{:012x}", HASH >> 16);
    let mut source = format!("#!lua name={name}\n{HEADER}{LIB}\n{QUEUE_LIB}\n");
    let mut functions = Vec::with_capacity(FUNCTIONS.len());
    for (op, body, flags) in FUNCTIONS {
        let full = format!("{name}_{op}");
        source.push_str(
            &REGISTER_HEAD
                .replace("{name}", &full)
                .replace("{flags}", flags),
        );
        source.push_str(body);
        source.push_str(REGISTER_TAIL);
        functions.push(full);
    }
    Library {
        name,
        source,
        functions,
    }
});

/// One function of the library, by its full name (`tollgate_<hash>_<operation>`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Function(&'static str);

impl Function {
    /// The function's name in Redis.
    pub(crate) fn name(self) -> &'static str {
        self.0
    }
}

/// The library's functions, one per operation.
pub(crate) struct Scripts {
    pub(crate) acquire: Function,
    pub(crate) refund: Function,
    pub(crate) lease: Function,
    pub(crate) barrier: Function,
    pub(crate) put_limit: Function,
    pub(crate) pause: Function,
    pub(crate) remove_limit: Function,
    pub(crate) view_static: Function,
    pub(crate) view_dynamic: Function,
    pub(crate) queue_enqueue: Function,
    pub(crate) queue_lease: Function,
    pub(crate) queue_run: Function,
    pub(crate) queue_sweep: Function,
    pub(crate) queue_read: Function,
    pub(crate) queue_define: Function,
}

impl Scripts {
    pub(crate) fn new() -> Scripts {
        let library: &'static Library = &LIBRARY;
        let f = |op: &str| {
            let i = FUNCTIONS
                .iter()
                .position(|(name, _, _)| *name == op)
                .unwrap_or_else(|| unreachable!("no function {op} in FUNCTIONS"));
            Function(library.functions[i].as_str())
        };
        Scripts {
            acquire: f("acquire"),
            refund: f("refund"),
            lease: f("lease"),
            barrier: f("barrier"),
            put_limit: f("put_limit"),
            pause: f("pause"),
            remove_limit: f("remove_limit"),
            view_static: f("view_static"),
            view_dynamic: f("view_dynamic"),
            queue_enqueue: f("queue_enqueue"),
            queue_lease: f("queue_lease"),
            queue_run: f("queue_run"),
            queue_sweep: f("queue_sweep"),
            queue_read: f("queue_read"),
            queue_define: f("queue_define"),
        }
    }

    /// `FCALL f numkeys keys... args...`
    pub(crate) fn fcall_cmd(&self, f: &Function, keys: &[String], args: &[String]) -> Cmd {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(f.name()).arg(keys.len()).arg(keys).arg(args);
        cmd
    }

    /// `FUNCTION LOAD REPLACE <library>`: loads the library, or replaces one of the same name
    /// (the same Lua: the name is its hash). Answers the library's name.
    pub(crate) fn load_cmd() -> Cmd {
        let mut cmd = redis::cmd("FUNCTION");
        cmd.arg("LOAD").arg("REPLACE").arg(LIBRARY.source.as_str());
        cmd
    }

    /// The library's name, `tollgate_<hash>`.
    pub(crate) fn library_name() -> &'static str {
        &LIBRARY.name
    }
}

/// Whether Redis answered that a function is missing (`ERR Function not found`: a restart
/// without persistence, `FUNCTION FLUSH`, a node that never had it), or that it does not know
/// `FCALL` at all (older than 7.0: loading then names the version). Looks into a pipeline's
/// errors too. Either way: [`load`], then call again.
pub(crate) fn is_missing_function(e: &RedisError) -> bool {
    let Some(errors) = e.clone().into_server_errors() else {
        return false;
    };
    errors.iter().any(|(_, e)| {
        e.code() == "ERR"
            && e.details().is_some_and(|d| {
                d.starts_with("Function not found")
                    || (d.starts_with("unknown command")
                        && d.to_ascii_lowercase().contains("fcall"))
            })
    })
}

/// Checks the `INFO server` answer of a server against the minimum versions: Redis 7.0, or
/// Valkey 7.2 (whose `redis_version` is the Redis it is compatible with, 7.2.4; its own is
/// `valkey_version`). A server whose version cannot be read passes: `FUNCTION LOAD` then says
/// whether it can.
///
/// # Errors
/// A message naming the server, its version and the minimum, when it is older.
pub(crate) fn check_version(info: &str) -> Result<(), String> {
    let field = |name: &str| {
        info.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k == name).then(|| v.trim())
        })
    };
    let valkey = field("valkey_version").or_else(|| {
        field("server_name")
            .filter(|n| n.eq_ignore_ascii_case("valkey"))
            .and(field("redis_version"))
    });
    let (server, found, min) = match valkey {
        Some(v) => ("Valkey", v, MIN_VALKEY),
        None => match field("redis_version") {
            Some(v) => ("Redis", v, MIN_REDIS),
            None => return Ok(()),
        },
    };
    let mut parts = found.split('.').map(|p| p.parse::<u32>().ok());
    let (Some(Some(major)), Some(Some(minor))) = (parts.next(), parts.next()) else {
        return Ok(());
    };
    if (major, minor) >= min {
        return Ok(());
    }
    Err(format!(
        "Tollgate needs Redis {}.{} or later, or Valkey {}.{} or later (it runs as Redis \
         Functions); this server is {server} {found}",
        MIN_REDIS.0, MIN_REDIS.1, MIN_VALKEY.0, MIN_VALKEY.1
    ))
}

/// Checks the server's version and loads the library (see [`Scripts::load_cmd`]).
///
/// # Errors
/// The server's, or a client error whose detail is [`check_version`]'s message.
pub(crate) async fn load(con: &mut MultiplexedConnection) -> RedisResult<()> {
    let info: String = redis::cmd("INFO").arg("server").query_async(con).await?;
    check_version(&info)
        .map_err(|m| RedisError::from((ErrorKind::Client, "unsupported server", m)))?;
    let _: Value = Scripts::load_cmd().query_async(con).await?;
    tracing::debug!(library = Scripts::library_name(), "loaded the functions");
    Ok(())
}

/// `cmd` (an `FCALL`, or a pipeline of them with `pipe`) on `con`, loading the library and
/// trying once more when a function is missing.
///
/// # Errors
/// The command's, or [`load`]'s.
pub(crate) async fn call(con: &mut MultiplexedConnection, cmd: &Cmd) -> RedisResult<Value> {
    match cmd.query_async(con).await {
        Err(e) if is_missing_function(&e) => {
            load(con).await?;
            cmd.query_async(con).await
        }
        r => r,
    }
}

/// As [`call`], for a pipeline.
///
/// # Errors
/// As [`call`].
pub(crate) async fn call_pipeline(
    con: &mut MultiplexedConnection,
    pipe: &redis::Pipeline,
) -> RedisResult<Vec<Value>> {
    match pipe.query_async(con).await {
        Err(e) if is_missing_function(&e) => {
            load(con).await?;
            pipe.query_async(con).await
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

    use super::*;

    #[test]
    fn the_minimum_versions_pass_and_older_ones_are_named() {
        let redis = |v: &str| format!("# Server\r\nredis_version:{v}\r\nredis_mode:standalone\r\n");
        assert!(check_version(&redis("7.0.0")).is_ok());
        assert!(check_version(&redis("7.0.15")).is_ok());
        assert!(check_version(&redis("8.2.1")).is_ok());
        assert!(check_version(&redis("10.0.0")).is_ok());
        let e = check_version(&redis("6.2.14")).unwrap_err();
        assert!(
            e.contains("Redis 6.2.14") && e.contains("Redis 7.0 or later"),
            "{e}"
        );
        assert!(check_version(&redis("6.9.99")).is_err());

        let valkey = |v: &str| {
            format!(
                "# Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:{v}\r\n"
            )
        };
        assert!(check_version(&valkey("7.2.5")).is_ok());
        assert!(check_version(&valkey("8.0.1")).is_ok());
        assert!(check_version(&valkey("9.0.0")).is_ok());
        // A (hypothetical) Valkey older than its first release is named as Valkey.
        let e = check_version(&valkey("7.1.0")).unwrap_err();
        assert!(
            e.contains("Valkey 7.1.0") && e.contains("Valkey 7.2 or later"),
            "{e}"
        );
        // Unreadable: FUNCTION LOAD decides.
        assert!(check_version("# Server\r\n").is_ok());
        assert!(check_version("redis_version:x.y\r\n").is_ok());
    }

    #[test]
    fn missing_functions_and_servers_without_fcall_are_recognised() {
        let server = |line: &str| -> RedisError {
            redis::parse_redis_value(format!("-{line}\r\n").as_bytes())
                .unwrap()
                .extract_error()
                .unwrap_err()
        };
        assert!(is_missing_function(&server("ERR Function not found")));
        assert!(is_missing_function(&server(
            "ERR unknown command 'FCALL', with args beginning with: 'tollgate_x_acquire' '2' "
        )));
        assert!(!is_missing_function(&server(
            "ERR unknown command 'FOO', with args beginning with: "
        )));
        assert!(!is_missing_function(&server(
            "NOSCRIPT No matching script."
        )));
        assert!(!is_missing_function(&server(
            "ERR user_function:12: Script attempted to access nonexistent global variable 'x'"
        )));
        assert!(!is_missing_function(&RedisError::from((
            ErrorKind::Io,
            "connection refused"
        ))));
    }

    #[test]
    fn the_library_is_named_by_its_hash_and_prefixes_every_function() {
        let name = Scripts::library_name();
        assert!(name.starts_with("tollgate_") && name.len() == "tollgate_".len() + 12);
        assert!(LIBRARY.source.starts_with(&format!("#!lua name={name}\n")));
        let s = Scripts::new();
        for f in [s.acquire, s.queue_define, s.view_static] {
            assert!(f.name().starts_with(&format!("{name}_")), "{}", f.name());
            assert!(
                LIBRARY
                    .source
                    .contains(&format!("function_name = '{}'", f.name()))
            );
        }
    }
}
