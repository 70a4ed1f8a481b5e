//! A Redis for tests: `REDIS_URL` when set (never one on port 6379), else a `redis-server`
//! of the test's own on a free port, in a temporary directory, without persistence, killed on
//! drop. Without either the test is skipped loudly, except under `CI=true`, where a missing
//! Redis fails it.

#![allow(dead_code)]

use std::io::Write as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tollgate_redis::RedisStore;

/// A Redis server the test may use; the test's own process when `child` is set.
pub struct TestRedis {
    pub url: String,
    port: u16,
    child: Option<Child>,
    dir: Option<PathBuf>,
    /// Writes every change to an append-only file, fsynced before it answers, so that a
    /// restart keeps every acknowledged write.
    persistent: bool,
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips (returns `None`, after an `eprintln`) or, under CI, fails.
fn unavailable(test: &str, why: &str) -> Option<TestRedis> {
    assert!(
        !in_ci(),
        "{test}: no Redis under CI=true ({why}); install redis-server or set REDIS_URL"
    );
    // Straight to stderr, not `eprintln!`: the test harness hides what a passing test prints.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: no Redis available ({why}); install redis-server or set REDIS_URL"
    );
    None
}

/// Whether a URL names port 6379 (explicitly or by default): a Redis tests must never touch.
fn is_default_port(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    match client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(_, port) | redis::ConnectionAddr::TcpTls { port, .. } => {
            *port == 6379
        }
        _ => false,
    }
}

/// `REDIS_URL`, or a server of the test's own.
pub fn redis(test: &str) -> Option<TestRedis> {
    if let Ok(url) = std::env::var("REDIS_URL")
        && !url.is_empty()
    {
        if is_default_port(&url) {
            let _ = writeln!(
                std::io::stderr(),
                "{test}: REDIS_URL points at port 6379, which tests never use; starting a redis-server instead"
            );
        } else {
            return Some(TestRedis {
                url,
                port: 0,
                child: None,
                dir: None,
                persistent: false,
            });
        }
    }
    own_redis(test)
}

/// A server of the test's own (tests that stop and restart it).
pub fn own_redis(test: &str) -> Option<TestRedis> {
    own_redis_with(test, false)
}

/// A server of the test's own with an fsynced append-only file: a restart keeps everything.
pub fn own_persistent_redis(test: &str) -> Option<TestRedis> {
    own_redis_with(test, true)
}

fn own_redis_with(test: &str, persistent: bool) -> Option<TestRedis> {
    let port = match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(e) => return unavailable(test, &format!("no free port: {e}")),
    };
    let dir =
        std::env::temp_dir().join(format!("tollgate-redis-test-{}-{port}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return unavailable(test, &format!("cannot create {}: {e}", dir.display()));
    }
    let mut r = TestRedis {
        url: format!("redis://127.0.0.1:{port}/"),
        port,
        child: None,
        dir: Some(dir),
        persistent,
    };
    match r.start() {
        Ok(()) => Some(r),
        Err(why) => unavailable(test, &why),
    }
}

impl TestRedis {
    /// Starts (or restarts) the server of the test's own and waits until it answers.
    pub fn start(&mut self) -> Result<(), String> {
        let dir = self.dir.as_ref().ok_or("not a server of the test's own")?;
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", if self.persistent { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
        self.child = Some(child);
        let client = redis::Client::open(self.url.as_str()).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pong = client
                .get_connection_with_timeout(Duration::from_millis(200))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("redis-server on port {} did not answer", self.port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Freezes the server of the test's own (`SIGSTOP`): it accepts connections but never
    /// answers, as a hung or partitioned Redis would.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (`SIGCONT`).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("a server of the test's own");
        let status = Command::new("kill")
            .arg(sig)
            .arg(child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {sig} failed");
    }

    /// Kills the server of the test's own (as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A store on this server with a fresh prefix, deciding at the `now` passed in.
    pub fn store(&self) -> RedisStore {
        RedisStore::builder(&self.url)
            .prefix(fresh_prefix())
            .use_server_time(false)
            .build()
            .expect("a valid URL")
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A prefix no other store (in this or any other test process) uses.
pub fn fresh_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "tgtest:{}:{nanos}:{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A Redis Cluster of the test's own: three primaries on free ports, no replicas, no
/// persistence, killed on drop. Skipped (or failed under `CI=true`) without `redis-server`
/// and `redis-cli`.
pub struct TestCluster {
    pub ports: Vec<u16>,
    nodes: Vec<TestRedis>,
}

impl TestCluster {
    /// The URL of node `i`, a seed for a cluster store.
    pub fn url(&self, i: usize) -> String {
        format!("redis://127.0.0.1:{}/", self.ports[i])
    }

    /// Kills node `i` (as a crash would).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }
}

pub fn own_cluster(test: &str) -> Option<TestCluster> {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let port = match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
            Ok(addr) => addr.port(),
            Err(e) => {
                unavailable(test, &format!("no free port: {e}"));
                return None;
            }
        };
        let dir = std::env::temp_dir().join(format!(
            "tollgate-redis-cluster-{}-{port}",
            std::process::id()
        ));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            unavailable(test, &format!("cannot create {}: {e}", dir.display()));
            return None;
        }
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            // The others keep serving their slots when one node is gone (tests kill one).
            .args(["--cluster-require-full-coverage", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                unavailable(test, &format!("cannot start redis-server: {e}"));
                return None;
            }
        };
        nodes.push(TestRedis {
            url: format!("redis://127.0.0.1:{port}/"),
            port,
            child: Some(child),
            dir: Some(dir),
            persistent: false,
        });
    }
    let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
    // Every node answers before the cluster is formed.
    for n in &nodes {
        let client = redis::Client::open(n.url.as_str()).ok()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while client
            .get_connection_with_timeout(Duration::from_millis(200))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_err()
        {
            if Instant::now() > deadline {
                unavailable(test, "a cluster node did not answer");
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let mut create = Command::new("redis-cli");
    create.args(["--cluster", "create"]);
    for p in &ports {
        create.arg(format!("127.0.0.1:{p}"));
    }
    let created = create
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match created {
        Ok(s) if s.success() => {}
        Ok(s) => {
            unavailable(test, &format!("redis-cli --cluster create failed: {s}"));
            return None;
        }
        Err(e) => {
            unavailable(test, &format!("cannot run redis-cli: {e}"));
            return None;
        }
    }
    // Until every node agrees the cluster is up.
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in &nodes {
        let client = redis::Client::open(n.url.as_str()).ok()?;
        loop {
            let info = client
                .get_connection_with_timeout(Duration::from_millis(200))
                .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c));
            if info.is_ok_and(|i| i.contains("cluster_state:ok")) {
                break;
            }
            if Instant::now() > deadline {
                unavailable(test, "the cluster never reached cluster_state:ok");
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Some(TestCluster { ports, nodes })
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.nodes.clear();
    }
}
