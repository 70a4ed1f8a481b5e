//! BullMQ 5 as the queue bench's peer: `npm install bullmq@5` into a scratch folder under the
//! cargo target directory (once; later runs reuse it), our driver `bullmq_peer.mjs` copied next
//! to it, and one Node process per phase that reports over stdout. Nothing is written into the
//! source tree.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::redis_stats::{Probe, RedisUse};

/// The driver, copied into the scratch folder at run time.
const DRIVER: &str = include_str!("../bullmq_peer.mjs");
const DRIVER_FILE: &str = "bullmq_peer.mjs";
/// How long `npm install` may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);

/// A working BullMQ 5 install.
pub struct Peer {
    dir: PathBuf,
    /// e.g. `bullmq 5.x.y on node v20.x.y, in …/target/bench-bullmq`
    pub description: String,
}

/// What one BullMQ phase measured.
pub struct Outcome {
    pub completed: u64,
    pub added: u64,
    pub secs: f64,
    /// CPU seconds of the Node process (BullMQ's `Queue` and `Worker`s and the load generator).
    pub node_cpu: f64,
    pub redis: RedisUse,
}

/// One BullMQ phase.
pub struct Run<'a> {
    pub redis_url: &'a str,
    pub queue: String,
    pub warmup: Duration,
    pub measure: Duration,
    pub in_flight: usize,
    pub workers: usize,
    pub concurrency: usize,
    pub backlog: u64,
    pub remove_on_complete: bool,
}

fn version_of(cmd: &str) -> Result<String, String> {
    let out = Command::new(cmd)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("`{cmd}` is not on PATH ({e})"))?;
    if !out.status.success() {
        return Err(format!("`{cmd} --version` failed ({})", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The version of the installed `bullmq`, if any.
fn installed(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("node_modules/bullmq/package.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["version"].as_str().map(str::to_owned)
}

/// Waits for `child` until `timeout`, killing it then.
fn wait_for(child: &mut Child, timeout: Duration) -> Result<std::process::ExitStatus, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("did not finish within {} s", timeout.as_secs()));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

/// Makes `target/bench-bullmq` ready, or says why BullMQ cannot be measured.
pub fn setup(target_dir: &Path) -> Result<Peer, String> {
    let node = version_of("node")?;
    version_of("npm")?;
    let dir = target_dir.join("bench-bullmq");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let version = match installed(&dir) {
        Some(v) if v.starts_with("5.") => v,
        _ => {
            // A package.json of its own, so that npm installs here and nowhere above.
            let manifest = dir.join("package.json");
            if !manifest.exists() {
                std::fs::write(
                    &manifest,
                    "{\"name\": \"tollgate-bench-bullmq\", \"private\": true}\n",
                )
                .map_err(|e| format!("cannot write {}: {e}", manifest.display()))?;
            }
            let log_path = dir.join("npm-install.log");
            let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
            let mut child = Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "bullmq@5"])
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log)
                .spawn()
                .map_err(|e| format!("cannot run npm: {e}"))?;
            let status = wait_for(&mut child, INSTALL_TIMEOUT)
                .map_err(|e| format!("`npm install bullmq@5` {e}"))?;
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if !status.success() {
                let first: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains("error"))
                    .take(2)
                    .collect();
                return Err(format!(
                    "`npm install bullmq@5` failed ({status}): {} (log: {})",
                    first.join(" | "),
                    log_path.display()
                ));
            }
            match installed(&dir) {
                Some(v) if v.starts_with("5.") => v,
                other => return Err(format!("`npm install bullmq@5` installed {other:?}")),
            }
        }
    };
    std::fs::write(dir.join(DRIVER_FILE), DRIVER)
        .map_err(|e| format!("cannot write the driver into {}: {e}", dir.display()))?;
    // That Node loads it.
    let check = Command::new("node")
        .args([
            "--input-type=module",
            "-e",
            "import { Queue, Worker } from 'bullmq'; if (!Queue || !Worker) process.exit(1);",
        ])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run node: {e}"))?;
    if !check.status.success() {
        return Err(format!(
            "node cannot load bullmq: {}",
            tail(&String::from_utf8_lossy(&check.stderr), 3)
        ));
    }
    Ok(Peer {
        description: format!("bullmq {version} on node {node}, in {}", dir.display()),
        dir,
    })
}

#[derive(Deserialize)]
struct Line {
    event: String,
    #[serde(default)]
    completed: u64,
    #[serde(default)]
    added: u64,
    #[serde(default)]
    secs: f64,
    #[serde(default)]
    cpu_secs: f64,
}

impl Peer {
    /// Runs one phase: starts the driver, reads Redis's counters when it says the window
    /// starts and when it says it ended, and waits for it to exit.
    pub fn run(&self, run: &Run<'_>) -> anyhow::Result<Outcome> {
        let mut probe = Probe::connect(run.redis_url)?;
        let mut cmd = Command::new("node");
        cmd.arg(DRIVER_FILE)
            .args(["--redis", run.redis_url])
            .args(["--queue", &run.queue])
            .args(["--prefix", "tgbench-bull"])
            .args(["--warmup", &run.warmup.as_secs_f64().to_string()])
            .args(["--measure", &run.measure.as_secs_f64().to_string()])
            .args(["--in-flight", &run.in_flight.to_string()])
            .args(["--workers", &run.workers.to_string()])
            .args(["--concurrency", &run.concurrency.to_string()])
            .args(["--backlog", &run.backlog.to_string()]);
        if run.remove_on_complete {
            cmd.arg("--remove-on-complete");
        }
        let mut child = cmd
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting node")?;
        let stdout = child.stdout.take().context("node's stdout")?;
        let mut stderr = child.stderr.take().context("node's stderr")?;
        let errors = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + run.warmup + run.measure + Duration::from_secs(60);
        let mut before = None;
        let mut outcome = None;
        let read = (|| -> anyhow::Result<()> {
            while outcome.is_none() {
                let left = deadline.saturating_duration_since(Instant::now());
                let line = match rx.recv_timeout(left) {
                    Ok(line) => line,
                    Err(mpsc::RecvTimeoutError::Timeout) => bail!("node gave no result in time"),
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        bail!("node exited without a result")
                    }
                };
                let Ok(line) = serde_json::from_str::<Line>(&line) else {
                    continue;
                };
                match line.event.as_str() {
                    "measuring" => before = Some(probe.snapshot()?),
                    "done" => {
                        let after = probe.snapshot()?;
                        let before = before.as_ref().context("`done` before `measuring`")?;
                        outcome = Some(Outcome {
                            completed: line.completed,
                            added: line.added,
                            secs: line.secs,
                            node_cpu: line.cpu_secs,
                            redis: before.until(&after),
                        });
                    }
                    _ => {}
                }
            }
            Ok(())
        })();
        if read.is_err() {
            let _ = child.kill();
        }
        let status = wait_for(&mut child, Duration::from_secs(30));
        let errors = errors.join().unwrap_or_default();
        if let Err(e) = read {
            bail!("BullMQ driver: {e}; stderr: {}", tail(&errors, 5));
        }
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => bail!("the BullMQ driver exited with {s}: {}", tail(&errors, 5)),
            Err(e) => bail!("the BullMQ driver {e}"),
        }
        outcome.context("no result")
    }
}
