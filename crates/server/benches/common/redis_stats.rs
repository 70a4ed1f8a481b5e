//! Redis's own account of a phase: its CPU (`INFO cpu`, `used_cpu_sys` + `used_cpu_user`) and
//! its commands (`INFO commandstats`), read before and after the measured window. Redis counts
//! a command that a script runs (`redis.call`) both on its own and within the script's time.

use std::collections::BTreeMap;

use anyhow::Context;

/// Commands that run a script: their time includes the commands the script runs.
const SCRIPTS: &[&str] = &[
    "eval",
    "evalsha",
    "eval_ro",
    "evalsha_ro",
    "fcall",
    "fcall_ro",
];

/// Calls and microseconds of one command.
#[derive(Clone, Copy, Default, Debug)]
pub struct Cmd {
    pub calls: u64,
    pub usec: u64,
}

/// Redis's counters at one moment.
#[derive(Clone, Default, Debug)]
pub struct Snapshot {
    cpu: f64,
    commands: BTreeMap<String, Cmd>,
}

/// What Redis did between two snapshots (or over several phases, added up).
#[derive(Clone, Default, Debug)]
pub struct RedisUse {
    /// Whether this was measured at all.
    pub measured: bool,
    /// CPU seconds of the redis-server process.
    pub cpu: f64,
    pub commands: BTreeMap<String, Cmd>,
}

/// A connection of its own that reads the counters.
pub struct Probe {
    conn: redis::Connection,
}

impl Probe {
    pub fn connect(url: &str) -> anyhow::Result<Probe> {
        let conn = redis::Client::open(url)?
            .get_connection()
            .with_context(|| format!("connecting to {url} for INFO"))?;
        Ok(Probe { conn })
    }

    pub fn snapshot(&mut self) -> anyhow::Result<Snapshot> {
        let info: String = redis::cmd("INFO")
            .arg("cpu")
            .arg("commandstats")
            .query(&mut self.conn)?;
        let mut s = Snapshot::default();
        for line in info.lines() {
            let Some((name, value)) = line.trim().split_once(':') else {
                continue;
            };
            match name {
                "used_cpu_sys" | "used_cpu_user" => s.cpu += value.parse::<f64>().unwrap_or(0.0),
                _ => {
                    let Some(cmd) = name.strip_prefix("cmdstat_") else {
                        continue;
                    };
                    let mut c = Cmd::default();
                    for field in value.split(',') {
                        match field.split_once('=') {
                            Some(("calls", v)) => c.calls = v.parse().unwrap_or(0),
                            Some(("usec", v)) => c.usec = v.parse().unwrap_or(0),
                            _ => {}
                        }
                    }
                    s.commands.insert(cmd.to_owned(), c);
                }
            }
        }
        Ok(s)
    }
}

impl Snapshot {
    /// From this snapshot to `later`, less the probe's own `INFO` in between.
    pub fn until(&self, later: &Snapshot) -> RedisUse {
        let mut commands = BTreeMap::new();
        for (name, after) in &later.commands {
            let before = self.commands.get(name).copied().unwrap_or_default();
            let mut calls = after.calls.saturating_sub(before.calls);
            let usec = after.usec.saturating_sub(before.usec);
            if name == "info" {
                calls = calls.saturating_sub(1);
            }
            if calls > 0 {
                commands.insert(name.clone(), Cmd { calls, usec });
            }
        }
        RedisUse {
            measured: true,
            cpu: (later.cpu - self.cpu).max(0.0),
            commands,
        }
    }
}

impl RedisUse {
    pub fn add(&mut self, o: &RedisUse) {
        self.measured |= o.measured;
        self.cpu += o.cpu;
        for (name, c) in &o.commands {
            let e = self.commands.entry(name.clone()).or_default();
            e.calls += c.calls;
            e.usec += c.usec;
        }
    }

    /// Every command Redis ran, those that scripts ran included.
    pub fn calls(&self) -> u64 {
        self.commands.values().map(|c| c.calls).sum()
    }

    /// Script calls (`EVALSHA`, `FCALL`, …) and their time, which includes their commands'.
    pub fn scripts(&self) -> Cmd {
        let mut total = Cmd::default();
        for (name, c) in &self.commands {
            if SCRIPTS.contains(&name.as_str()) {
                total.calls += c.calls;
                total.usec += c.usec;
            }
        }
        total
    }

    /// The `n` commands that took the most time, most first.
    pub fn top(&self, n: usize) -> Vec<(&str, Cmd)> {
        let mut all: Vec<(&str, Cmd)> = self
            .commands
            .iter()
            .map(|(name, c)| (name.as_str(), *c))
            .collect();
        all.sort_by(|a, b| b.1.usec.cmp(&a.1.usec).then(b.1.calls.cmp(&a.1.calls)));
        all.truncate(n);
        all
    }
}
