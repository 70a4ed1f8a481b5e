//! The Lua scripts, each prepended with `lib.lua` (the algorithms), loaded once per server and
//! called with `EVALSHA` (reloaded on `NOSCRIPT`, e.g. after a restart, by [`redis::Script`]).

use redis::Script;

const LIB: &str = include_str!("scripts/lib.lua");

pub(crate) struct Scripts {
    pub(crate) acquire: Script,
    pub(crate) refund: Script,
    pub(crate) lease: Script,
    pub(crate) barrier: Script,
    pub(crate) put_limit: Script,
    pub(crate) remove_limit: Script,
    pub(crate) view_static: Script,
    pub(crate) view_dynamic: Script,
    pub(crate) queue_enqueue: Script,
    pub(crate) queue_lease: Script,
    pub(crate) queue_run: Script,
    pub(crate) queue_sweep: Script,
    pub(crate) queue_read: Script,
    pub(crate) queue_define: Script,
}

const QUEUE_LIB: &str = include_str!("scripts/queue_lib.lua");

/// A queue script: the algorithms, then the queue's state machine, then the script.
fn with_queue(body: &str) -> Script {
    Script::new(&format!("{LIB}\n{QUEUE_LIB}\n{body}"))
}

fn with_lib(body: &str) -> Script {
    Script::new(&format!("{LIB}\n{body}"))
}

impl Scripts {
    pub(crate) fn new() -> Scripts {
        Scripts {
            // The fast path runs before the library is made, and falls through to it.
            acquire: Script::new(&format!(
                "{}\n{LIB}\n{}",
                include_str!("scripts/acquire_fast.lua"),
                include_str!("scripts/acquire.lua")
            )),
            refund: with_lib(include_str!("scripts/refund.lua")),
            lease: with_lib(include_str!("scripts/lease.lua")),
            barrier: with_lib(include_str!("scripts/barrier.lua")),
            put_limit: with_lib(include_str!("scripts/put_limit.lua")),
            remove_limit: with_lib(include_str!("scripts/remove_limit.lua")),
            view_static: with_lib(include_str!("scripts/view_static.lua")),
            view_dynamic: with_lib(include_str!("scripts/view_dynamic.lua")),
            queue_enqueue: with_queue(include_str!("scripts/queue_enqueue.lua")),
            queue_lease: with_queue(include_str!("scripts/queue_lease.lua")),
            queue_run: with_queue(include_str!("scripts/queue_run.lua")),
            queue_sweep: with_queue(include_str!("scripts/queue_sweep.lua")),
            queue_read: with_queue(include_str!("scripts/queue_read.lua")),
            queue_define: with_queue(include_str!("scripts/queue_define.lua")),
        }
    }
}
