//! The client commands of the `tollgate` binary: `limits`, `tasks`, `runs`, `acquire`,
//! `events`. They speak to a server through `tollgate-client` only (no HTTP code here), print
//! tables for people or JSON with `--json`, and exit non-zero with one line when something
//! fails.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tollgate::{LimitSpec, LimitSpecExt as _};
use tollgate_client::{AcquireEntry, Client, RunFilter, RunView};

/// Where the server is, for every client command (`--server URL`, `TOLLGATE_SERVER`).
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

/// Options every client command takes, anywhere on the line.
#[derive(Debug, Args)]
pub struct ClientOptions {
    /// The server's base URL.
    #[arg(long, global = true, value_name = "URL", env = "TOLLGATE_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// Print JSON instead of a table (for scripts).
    #[arg(long, global = true)]
    pub json: bool,
    /// The token to send (`Authorization: Bearer`), for a server with `--tokens-file`.
    #[arg(
        long,
        global = true,
        value_name = "SECRET",
        env = "TOLLGATE_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// For an `https://` server: also trust the CA certificate(s) in this PEM file (the system's
    /// roots are always trusted).
    #[arg(long, global = true, value_name = "PEM", env = "TOLLGATE_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,
}

/// `tollgate limits …`.
#[derive(Debug, Subcommand)]
pub enum LimitsCommand {
    /// Declare or redefine a limit: `limits put stripe-api 100/m --algorithm gcra --burst 10`.
    Put(PutLimit),
    /// List every limit with its live usage.
    Ls,
    /// Show one limit.
    Get {
        /// The limit's key.
        key: String,
    },
    /// Remove a limit.
    Rm {
        /// The limit's key.
        key: String,
    },
    /// Pause a key for everyone (an upstream answered 429): every acquire and run on it waits
    /// until the pause ends. `limits pause stripe-api --for 30s`.
    Pause(PauseArgs),
    /// End a key's pause now; the runs waiting on it are tried at once.
    Resume {
        /// The key.
        key: String,
        /// A dynamic key (a task's dynamic_key, an inline acquire's key).
        #[arg(long)]
        dynamic: bool,
    },
    /// List the pauses in force.
    Pauses,
    /// Report what a call to an adaptive limit's upstream met: `ok` raises its limit in force
    /// by one (up to its max), `throttled` halves it (down to its min).
    Feedback {
        /// The adaptive limit's key.
        key: String,
        /// `ok` or `throttled`.
        #[arg(value_parser = ["ok", "throttled"])]
        outcome: String,
    },
}

/// `tollgate limits pause KEY (--for PERIOD | --until MS)`.
#[derive(Debug, Args)]
pub struct PauseArgs {
    /// The key.
    pub key: String,
    /// How long: a period (`30s`, `5m`, `1h30m`).
    #[arg(
        long = "for",
        value_name = "PERIOD",
        conflicts_with = "until",
        required_unless_present = "until"
    )]
    pub for_: Option<String>,
    /// Until this instant, in Unix-epoch milliseconds.
    #[arg(long, value_name = "MS")]
    pub until: Option<u64>,
    /// A dynamic key (a task's dynamic_key, an inline acquire's key).
    #[arg(long)]
    pub dynamic: bool,
}

impl PauseArgs {
    fn request(&self) -> Result<tollgate_client::PauseRequest, Failure> {
        let for_ms = match &self.for_ {
            Some(p) => {
                let period: tollgate::core::Period =
                    p.parse().map_err(|e| format!("invalid --for {p:?}: {e}"))?;
                Some(period.as_nanos().as_millis_ceil())
            }
            None => None,
        };
        Ok(tollgate_client::PauseRequest {
            for_ms,
            until_ms: self.until,
            dynamic: self.dynamic,
        })
    }
}

/// `tollgate limits put KEY RATE`.
#[derive(Debug, Args)]
pub struct PutLimit {
    /// The limit's key.
    pub key: String,
    /// `N/period` (`100/m`, `5/24h`); for `concurrency` the number of slots, for `barrier`
    /// the number of parties.
    pub rate: String,
    /// sliding_window (default), fixed_window, gcra, token_bucket, concurrency, barrier.
    #[arg(long)]
    pub algorithm: Option<String>,
    /// gcra: units admissible at once.
    #[arg(long)]
    pub burst: Option<u64>,
    /// token_bucket: the bucket's size (RATE is its refill).
    #[arg(long)]
    pub capacity: Option<u64>,
    /// sliding_window: sub-buckets per period.
    #[arg(long)]
    pub precision: Option<u32>,
    /// fixed_window: first_use (default) or clock.
    #[arg(long)]
    pub align: Option<String>,
    /// concurrency: lease time to live (`30s`); barrier: its time to live.
    #[arg(long)]
    pub ttl: Option<String>,
    /// Adapt the limit between MIN and MAX (`2..50`, AIMD: workers' feedback moves it); RATE's
    /// number (or the slots) is where a new limit in force starts.
    #[arg(long, value_name = "MIN..MAX")]
    pub adaptive: Option<String>,
}

/// `tollgate tasks …`.
#[derive(Debug, Subcommand)]
pub enum TasksCommand {
    /// List tasks with their runs per state.
    Ls,
    /// Show a task: its definition, defaults filled in, and its runs per state.
    Get {
        /// The task's name.
        name: String,
    },
    /// Define or redefine a task: `tasks put send-email --spec '{"rate_limits": [...]}'`,
    /// `--file task.json`, or flags alone (`tasks put digest --throttle 10/m`).
    Put(PutTask),
}

/// `tollgate tasks put NAME`: the body of `PUT /v1/tasks/{name}` from `--spec` or `--file`,
/// with the flags given set on it.
#[derive(Debug, Args)]
pub struct PutTask {
    /// The task's name.
    pub name: String,
    /// The definition, as JSON (docs/http-api.md, `PUT /v1/tasks/{name}`).
    #[arg(long, conflicts_with = "file")]
    pub spec: Option<String>,
    /// A file holding the definition as JSON (`-` for standard input).
    #[arg(long, value_name = "FILE")]
    pub file: Option<String>,
    /// Runs start at most at this rate across every worker, evenly spaced (`10/m`): Celery's
    /// task `rate_limit`, made global. Replaces the definition's `throttle`.
    #[arg(long, value_name = "RATE")]
    pub throttle: Option<String>,
    /// Runs enqueued over this rate are skipped, whatever --on-limit says (`100/h`): Inngest's
    /// `rateLimit`. Replaces the definition's `rate_limit`.
    #[arg(long, value_name = "RATE")]
    pub rate_limit: Option<String>,
    /// What happens to a run over its limits: requeue (wait, the default) or skip.
    #[arg(long, value_name = "POLICY")]
    pub on_limit: Option<String>,
    /// Attempts before a run fails for good (1 to 100).
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// How long a lease lasts without a heartbeat (`30s`).
    #[arg(long, value_name = "PERIOD")]
    pub lease_timeout: Option<String>,
}

impl PutTask {
    /// The body to send: the JSON given (or `{}`), with the flags set on it.
    fn body(&self) -> Result<tollgate_client::TaskSpec, Failure> {
        let mut body = match (&self.spec, &self.file) {
            (Some(text), _) => parse_json("spec", text)?,
            (None, Some(path)) => {
                let text = if path == "-" {
                    std::io::read_to_string(std::io::stdin()).map_err(|e| {
                        format!("cannot read the definition from standard input: {e}")
                    })?
                } else {
                    std::fs::read_to_string(path)
                        .map_err(|e| format!("cannot read --file {path}: {e}"))?
                };
                serde_json::from_str(&text)
                    .map_err(|e| format!("--file {path} is not valid JSON ({e})"))?
            }
            (None, None) => json!({}),
        };
        let Some(fields) = body.as_object_mut() else {
            return Err("the definition must be a JSON object".to_owned());
        };
        let mut set = |name: &str, v: Option<Value>| {
            if let Some(v) = v {
                fields.insert(name.to_owned(), v);
            }
        };
        set("throttle", self.throttle.clone().map(Value::from));
        set("rate_limit", self.rate_limit.clone().map(Value::from));
        set("on_limit", self.on_limit.clone().map(Value::from));
        set("max_attempts", self.max_attempts.map(Value::from));
        set("lease_timeout", self.lease_timeout.clone().map(Value::from));
        serde_json::from_value(body).map_err(|e| format!("invalid task definition: {e}"))
    }
}

/// `tollgate runs …`.
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Enqueue a run of TASK.
    Enqueue {
        /// The task's name.
        task: String,
        /// The run's input, as JSON.
        #[arg(long, default_value = "{}")]
        input: String,
        /// Additional metadata, as JSON.
        #[arg(long)]
        metadata: Option<String>,
        /// Start no sooner than this from now (`5s`, `1h30m`): the run is scheduled until then.
        #[arg(long, value_name = "PERIOD")]
        delay: Option<String>,
    },
    /// Show a run: its state, and why it waits and until when.
    Get {
        /// The run's id.
        id: String,
    },
    /// Why a run waits, key by key: each limit it needs with its limit in force, usage and
    /// pause, and the run's place in the key's wait queue.
    Explain {
        /// The run's id.
        id: String,
    },
    /// List runs, newest first.
    Ls {
        /// Only runs of this task.
        #[arg(long)]
        task: Option<String>,
        /// Only runs in this state (queued, waiting, running, succeeded, failed, skipped, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Cancel a run that has not ended.
    Cancel {
        /// The run's id.
        id: String,
    },
}

/// `tollgate events …`.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Send an event: one run of every task it triggers.
    Send {
        /// The event's name.
        name: String,
        /// The event's data, as JSON (the runs' input).
        #[arg(long, default_value = "{}")]
        data: String,
        /// Its runs start no sooner than this from now (`5s`): scheduled until then.
        #[arg(long, value_name = "PERIOD")]
        delay: Option<String>,
    },
}

/// `tollgate acquire KEY`.
#[derive(Debug, Args)]
pub struct AcquireArgs {
    /// The limit's key.
    pub key: String,
    /// Units to take.
    #[arg(long, default_value_t = 1)]
    pub units: u32,
    /// Wait up to this many milliseconds to be admitted.
    #[arg(long)]
    pub wait_ms: Option<u64>,
}

/// A client command, ready to run.
#[derive(Debug)]
pub enum ClientCommand {
    /// `limits …`
    Limits(LimitsCommand),
    /// `tasks …`
    Tasks(TasksCommand),
    /// `runs …`
    Runs(RunsCommand),
    /// `acquire …`
    Acquire(AcquireArgs),
    /// `events …`
    Events(EventsCommand),
    /// `apply -f FILE`
    Apply(ApplyArgs),
}

/// `tollgate apply -f FILE`: makes a running server hold the limits and tasks of a config file.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The config file (TOML; its `[server]` table is ignored here).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: std::path::PathBuf,
    /// Print what would change on stdout, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also remove the declared limits the file does not name (tasks cannot be removed).
    #[arg(long)]
    pub prune: bool,
}

/// What went wrong, as the one line the user sees.
type Failure = String;

fn parse_json(what: &str, text: &str) -> Result<Value, Failure> {
    serde_json::from_str(text).map_err(|e| format!("--{what} is not valid JSON ({e}): {text}"))
}

/// A `--delay` period (`5s`, `1h30m`).
fn parse_delay(text: &str) -> Result<Duration, Failure> {
    let period =
        tollgate::core::Period::parse(text).map_err(|e| format!("--delay {text:?}: {e}"))?;
    Ok(Duration::from_nanos(period.as_nanos().as_nanos()))
}

fn client_error(server: &str, e: tollgate_client::Error) -> Failure {
    // The server's errors already say their status, code and field.
    if e.code().is_none() && e.is_transient() {
        format!("{e} (is the server running at {server}? see --server)")
    } else {
        e.to_string()
    }
}

impl ClientCommand {
    /// Runs the command against the server; prints its answer on stdout or one line on stderr.
    /// Exit codes: 0 done (for `acquire`: allowed), 1 denied (`acquire`), 2 failed.
    pub fn run(self, options: &ClientOptions) -> ExitCode {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("tollgate: cannot start the async runtime: {e}");
                return ExitCode::from(2);
            }
        };
        match runtime.block_on(self.execute(options)) {
            Ok((text, code)) => {
                print!("{text}");
                code
            }
            Err(line) => {
                eprintln!("tollgate: {line}");
                ExitCode::from(2)
            }
        }
    }

    async fn execute(self, o: &ClientOptions) -> Result<(String, ExitCode), Failure> {
        let mut builder = Client::builder()
            .base_url(&o.server)
            .connect_timeout(Duration::from_secs(2));
        if let Some(token) = &o.token {
            builder = builder.token(token);
        }
        if let Some(path) = &o.ca_cert {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read --ca-cert {}: {e}", path.display()))?;
            builder = builder.ca_certificate(pem);
        }
        let client = builder.build().map_err(|e| match e {
            tollgate_client::Error::InvalidToken => {
                format!("invalid --token / TOLLGATE_TOKEN: {e}")
            }
            tollgate_client::Error::InvalidCertificate => format!("invalid --ca-cert: {e}"),
            e => format!("invalid --server {:?}: {e}", o.server),
        })?;
        let fail = |e| client_error(&o.server, e);
        let ok = |text: String| Ok((text, ExitCode::SUCCESS));
        match self {
            ClientCommand::Limits(LimitsCommand::Put(p)) => {
                let spec = p.spec()?;
                let limit = client.put_limit(&p.key, &spec).await.map_err(fail)?;
                ok(render_limits(&[limit], o.json))
            }
            ClientCommand::Limits(LimitsCommand::Ls) => ok(render_limits(
                &client.list_limits().await.map_err(fail)?,
                o.json,
            )),
            ClientCommand::Limits(LimitsCommand::Get { key }) => ok(render_limits(
                &[client.get_limit(&key).await.map_err(fail)?],
                o.json,
            )),
            ClientCommand::Limits(LimitsCommand::Rm { key }) => {
                client.delete_limit(&key).await.map_err(fail)?;
                ok(if o.json {
                    format!("{}\n", json!({"removed": key}))
                } else {
                    format!("removed {key}\n")
                })
            }
            ClientCommand::Limits(LimitsCommand::Pause(p)) => {
                let pause = client.pause(&p.key, &p.request()?).await.map_err(fail)?;
                ok(render_pauses(&[pause], o.json))
            }
            ClientCommand::Limits(LimitsCommand::Resume { key, dynamic }) => {
                let r = client.resume(&key, dynamic).await.map_err(fail)?;
                ok(if o.json {
                    format!("{}\n", serde_json::to_value(&r).unwrap_or_default())
                } else if r.was_paused {
                    format!("resumed {key}\n")
                } else {
                    format!("{key} was not paused\n")
                })
            }
            ClientCommand::Limits(LimitsCommand::Feedback { key, outcome }) => {
                let outcome = if outcome == "ok" {
                    tollgate_client::FeedbackOutcome::Ok
                } else {
                    tollgate_client::FeedbackOutcome::Throttled
                };
                let limit = client.feedback(&key, outcome).await.map_err(fail)?;
                ok(render_limits(&[limit], o.json))
            }
            ClientCommand::Limits(LimitsCommand::Pauses) => {
                ok(render_pauses(&client.pauses().await.map_err(fail)?, o.json))
            }
            ClientCommand::Tasks(TasksCommand::Put(p)) => {
                let spec = p.body()?;
                ok(render_task(
                    &client.put_task(&p.name, &spec).await.map_err(fail)?,
                    o.json,
                ))
            }
            ClientCommand::Tasks(TasksCommand::Get { name }) => ok(render_task(
                &client.get_task(&name).await.map_err(fail)?,
                o.json,
            )),
            ClientCommand::Tasks(TasksCommand::Ls) => {
                let tasks = client.list_tasks().await.map_err(fail)?;
                if o.json {
                    let v: Vec<Value> = tasks
                        .iter()
                        .map(|t| json!({"name": t.name, "spec": t.spec}))
                        .collect();
                    return ok(format!("{}\n", Value::Array(v)));
                }
                let mut rows = vec![
                    vec![
                        "NAME",
                        "ON_LIMIT",
                        "LIMITS",
                        "QUEUED",
                        "WAITING",
                        "RUNNING",
                        "SUCCEEDED",
                        "FAILED",
                        "SKIPPED",
                    ]
                    .into_iter()
                    .map(String::from)
                    .collect::<Vec<_>>(),
                ];
                for t in &tasks {
                    let d = t.depth;
                    rows.push(vec![
                        t.name.clone(),
                        t.spec
                            .on_limit
                            .map_or("requeue", |p| match p {
                                tollgate::OnLimit::Requeue => "requeue",
                                tollgate::OnLimit::Skip => "skip",
                            })
                            .to_owned(),
                        (t.spec.rate_limits.len()
                            + t.spec.concurrency.len()
                            + usize::from(t.spec.throttle.is_some())
                            + usize::from(t.spec.rate_limit.is_some()))
                        .to_string(),
                        d.queued.to_string(),
                        d.waiting.to_string(),
                        d.running.to_string(),
                        d.succeeded.to_string(),
                        d.failed.to_string(),
                        d.skipped.to_string(),
                    ]);
                }
                ok(table(&rows))
            }
            ClientCommand::Runs(RunsCommand::Enqueue {
                task,
                input,
                metadata,
                delay,
            }) => {
                let input = parse_json("input", &input)?;
                let metadata = metadata.map(|m| parse_json("metadata", &m)).transpose()?;
                let run = match delay.as_deref().map(parse_delay).transpose()? {
                    None => client.enqueue(&task, &input, metadata.as_ref()).await,
                    Some(delay) => {
                        client
                            .enqueue_after(&task, &input, metadata.as_ref(), delay)
                            .await
                    }
                }
                .map_err(fail)?;
                ok(render_run(&run, o.json))
            }
            ClientCommand::Runs(RunsCommand::Get { id }) => ok(render_run(
                &client.get_run(&id).await.map_err(fail)?,
                o.json,
            )),
            ClientCommand::Runs(RunsCommand::Explain { id }) => ok(render_explanation(
                &client.explain(&id).await.map_err(fail)?,
                o.json,
            )),
            ClientCommand::Runs(RunsCommand::Cancel { id }) => {
                ok(render_run(&client.cancel(&id).await.map_err(fail)?, o.json))
            }
            ClientCommand::Runs(RunsCommand::Ls { task, state, limit }) => {
                let mut filter = RunFilter::all().limit(limit);
                if let Some(t) = task {
                    filter = filter.task(t);
                }
                if let Some(s) = state {
                    filter = filter.state(s.parse().map_err(|e: String| format!("--state: {e}"))?);
                }
                let runs = client.list_runs(&filter).await.map_err(fail)?;
                if o.json {
                    return ok(format!(
                        "{}\n",
                        serde_json::to_string(&runs).unwrap_or_default()
                    ));
                }
                let mut rows = vec![
                    ["ID", "TASK", "STATE", "ATTEMPT", "WAITING_ON", "ELIGIBLE"]
                        .map(String::from)
                        .to_vec(),
                ];
                for r in &runs {
                    rows.push(vec![
                        r.id.clone(),
                        r.task.clone(),
                        r.state.as_str().to_owned(),
                        format!("{}/{}", r.attempt, r.max_attempts),
                        r.waiting_on.clone().unwrap_or_default(),
                        r.eligible_at_ms.map(in_ms).unwrap_or_default(),
                    ]);
                }
                ok(table(&rows))
            }
            ClientCommand::Events(EventsCommand::Send { name, data, delay }) => {
                let data = parse_json("data", &data)?;
                let delay = delay.as_deref().map(parse_delay).transpose()?;
                let runs = client
                    .send_event_after(&name, &data, None, delay)
                    .await
                    .map_err(fail)?;
                if o.json {
                    let v: Vec<Value> = runs
                        .iter()
                        .map(|r| json!({"id": r.id, "task": r.task, "state": r.state}))
                        .collect();
                    return ok(format!("{}\n", Value::Array(v)));
                }
                if runs.is_empty() {
                    return ok(format!("no task is triggered by {name:?}\n"));
                }
                let mut rows = vec![["ID", "TASK", "STATE"].map(String::from).to_vec()];
                for r in &runs {
                    rows.push(vec![
                        r.id.clone(),
                        r.task.clone(),
                        r.state.as_str().to_owned(),
                    ]);
                }
                ok(table(&rows))
            }
            ClientCommand::Apply(a) => apply(&client, &a, o.json, &fail).await,
            ClientCommand::Acquire(a) => {
                let entry = AcquireEntry::new(a.key.clone()).units(a.units);
                let answer = client
                    .acquire(
                        std::slice::from_ref(&entry),
                        a.wait_ms.map(Duration::from_millis),
                    )
                    .await
                    .map_err(fail)?;
                let code = if answer.allowed {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                };
                let d = answer.decisions.first();
                let text = if o.json {
                    format!(
                        "{}\n",
                        json!({"allowed": answer.allowed, "retry_after_ms": answer.retry_after_ms,
                               "remaining": d.map(|d| d.remaining), "limit": d.map(|d| d.limit)})
                    )
                } else if answer.allowed {
                    format!(
                        "allowed ({} of {} left)\n",
                        d.map_or(0, |d| d.remaining),
                        d.map_or(0, |d| d.limit)
                    )
                } else {
                    format!("denied, retry after {} ms\n", answer.retry_after_ms)
                };
                Ok((text, code))
            }
        }
    }
}

impl PutLimit {
    fn spec(&self) -> Result<LimitSpec, Failure> {
        let algorithm = self
            .algorithm
            .clone()
            .unwrap_or_else(|| "sliding_window".to_owned());
        let count = || {
            self.rate
                .parse::<u64>()
                .map_err(|_| format!("{algorithm} takes a number (e.g. 5), not {:?}", self.rate))
        };
        let mut spec = LimitSpec::default().with(|p| p.algorithm = Some(algorithm.clone()));
        match algorithm.as_str() {
            "concurrency" => {
                spec.limit = Some(count()?);
                spec.lease_ttl = self.ttl.clone();
            }
            "barrier" => {
                spec.parties =
                    Some(u32::try_from(count()?).map_err(|_| "too many parties".to_owned())?);
                spec.ttl = Some(self.ttl.clone().unwrap_or_else(|| "1m".to_owned()));
            }
            "token_bucket" => {
                spec.params.refill = Some(self.rate.clone());
                spec.params.capacity = self.capacity.or(self.burst);
            }
            _ => {
                spec.params.rate = Some(self.rate.clone());
                spec.params.burst = self.burst;
                spec.params.precision = self.precision;
                spec.params.align = self.align.clone();
                if self.ttl.is_some() {
                    return Err(format!("--ttl does not apply to {algorithm}"));
                }
            }
        }
        if self.capacity.is_some() && algorithm != "token_bucket" {
            return Err(format!("--capacity does not apply to {algorithm}"));
        }
        if let Some(a) = &self.adaptive {
            let bounds = a
                .split_once("..")
                .and_then(|(min, max)| Some((min.trim().parse().ok()?, max.trim().parse().ok()?)));
            let Some((min, max)) = bounds else {
                return Err(format!(
                    "invalid --adaptive {a:?}: give MIN..MAX, two whole numbers (e.g. 2..50)"
                ));
            };
            spec.adaptive = Some(tollgate_client::AdaptiveSpec { min, max });
        }
        // The server checks the rest and names the field.
        Ok(spec)
    }
}

/// A run for people: its state, and why it waits and until when.
/// A task: its definition as the server shows it (defaults filled in), then its runs per state.
fn render_task(task: &tollgate_client::Task, json_out: bool) -> String {
    // The wire form, which writes every field of the definition with its default.
    let shown = tollgate_client::api::Task {
        name: task.name.clone(),
        spec: task.spec.clone(),
        depth: task.depth,
    };
    let whole = serde_json::to_value(&shown).unwrap_or_default();
    if json_out {
        return format!("{whole}\n");
    }
    let d = task.depth;
    format!(
        "{}\n{}\nruns: {} queued, {} waiting, {} running, {} succeeded, {} failed, {} skipped, {} cancelled\n",
        task.name,
        serde_json::to_string_pretty(&whole["spec"]).unwrap_or_default(),
        d.queued,
        d.waiting,
        d.running,
        d.succeeded,
        d.failed,
        d.skipped,
        d.cancelled,
    )
}

fn render_run(run: &RunView, json_out: bool) -> String {
    if json_out {
        return format!("{}\n", serde_json::to_string(run).unwrap_or_default());
    }
    let mut out = String::new();
    let _ = writeln!(out, "run {}  task {}", run.id, run.task);
    let _ = writeln!(out, "state      {}", run.state.as_str());
    let _ = writeln!(out, "attempt    {} of {}", run.attempt, run.max_attempts);
    if let Some(key) = &run.waiting_on {
        let why = if run.skip_reason.is_some() {
            "limited by"
        } else {
            "waiting on"
        };
        let _ = writeln!(out, "{why} {key}");
    }
    if let Some(at) = run.eligible_at_ms {
        let label = if run.state == tollgate_client::RunState::Scheduled {
            "due       "
        } else {
            "eligible  "
        };
        let _ = writeln!(out, "{label} {}", in_ms(at));
    }
    if let Some(reason) = &run.skip_reason {
        let _ = writeln!(out, "skipped    {reason}");
    }
    if let Some(error) = &run.error {
        let _ = writeln!(out, "error      {error}");
    }
    if let Some(at) = run.lease_expires_at_ms {
        let _ = writeln!(
            out,
            "lease      until {} ({})",
            in_ms(at),
            run.worker_id.as_deref().unwrap_or("?")
        );
    }
    out
}

/// An epoch-millisecond instant as "in N ms" (or "now").
fn in_ms(at_ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    if at_ms <= now {
        format!("now (at {at_ms})")
    } else {
        format!("in {} ms (at {at_ms})", at_ms - now)
    }
}

fn render_limits(limits: &[tollgate_client::Limit], json_out: bool) -> String {
    if json_out {
        let v: Vec<Value> = limits
            .iter()
            .map(|l| {
                let mut v = serde_json::to_value(&l.definition).unwrap_or_default();
                if let Value::Object(m) = &mut v {
                    m.insert("key".into(), json!(l.key));
                    m.insert("used".into(), json!(l.used));
                    m.insert("remaining".into(), json!(l.remaining));
                    m.insert("reset_after_ms".into(), json!(l.reset_after_ms));
                    m.insert("paused_until_ms".into(), json!(l.paused_until_ms));
                    m.insert("limit_in_force".into(), json!(l.limit_in_force));
                }
                v
            })
            .collect();
        return format!("{}\n", Value::Array(v));
    }
    let mut rows = vec![
        [
            "KEY",
            "NAMESPACE",
            "ALGORITHM",
            "DEFINITION",
            "USED",
            "REMAINING",
            "RESET",
            "PAUSED_UNTIL_MS",
            "LIMIT_IN_FORCE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for l in limits {
        let d = &l.definition;
        let definition = match d.params.algorithm.as_deref() {
            Some("token_bucket") => format!(
                "{} refill {}",
                d.params.capacity.unwrap_or(0),
                d.params.refill.clone().unwrap_or_default()
            ),
            Some("concurrency") => format!(
                "{} slots, lease {}",
                d.limit.unwrap_or(0),
                d.lease_ttl.clone().unwrap_or_default()
            ),
            _ => {
                let mut s = format!(
                    "{}/{}",
                    d.limit.unwrap_or(0),
                    d.params.period.clone().unwrap_or_default()
                );
                if let Some(b) = d.params.burst {
                    let _ = write!(s, " burst {b}");
                }
                if let Some(a) = &d.params.align {
                    let _ = write!(s, " {a}");
                }
                s
            }
        };
        rows.push(vec![
            l.key.clone(),
            format!("{:?}", l.namespace).to_lowercase(),
            d.params.algorithm.clone().unwrap_or_default(),
            definition,
            l.used.to_string(),
            l.remaining.to_string(),
            l.reset_after_ms
                .map(|ms| format!("{ms} ms"))
                .unwrap_or_else(|| "-".into()),
            l.paused_until_ms
                .map_or_else(|| "-".into(), |ms| ms.to_string()),
            match (l.limit_in_force, d.adaptive) {
                (Some(n), Some(a)) => format!("{n} ({}..{})", a.min, a.max),
                (Some(n), None) => n.to_string(),
                _ => "-".into(),
            },
        ]);
    }
    table(&rows)
}

/// An explanation: the run's line, then a table of its keys, or JSON.
fn render_explanation(e: &tollgate_client::Explanation, json_out: bool) -> String {
    if json_out {
        return format!("{}\n", serde_json::to_value(e).unwrap_or_default());
    }
    let mut out = render_run(&e.run, false);
    if let Some(n) = e.ready_ahead {
        let _ = writeln!(out, "ready: {n} runs of {} ahead of it", e.run.task);
    }
    if e.limits.is_empty() {
        out.push_str("no limits: it waits only for a worker\n");
        return out;
    }
    let mut rows = vec![
        [
            "KEY",
            "ALGORITHM",
            "LIMIT",
            "USED",
            "REMAINING",
            "WAITING",
            "POSITION",
            "PAUSED_UNTIL_MS",
            "ELIGIBLE_AT_MS",
            "AHEAD",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let dash = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    for l in &e.limits {
        rows.push(vec![
            if l.namespace == tollgate_client::Namespace::Dynamic && l.algorithm != "concurrency" {
                format!("{} (dynamic)", l.key)
            } else {
                l.key.clone()
            },
            l.algorithm.clone(),
            l.limit_in_force.to_string(),
            l.used.to_string(),
            l.remaining.to_string(),
            l.waiting.to_string(),
            dash(l.position),
            dash(l.paused_until_ms),
            dash(l.eligible_at_ms),
            if l.ahead.is_empty() {
                "-".to_owned()
            } else {
                l.ahead.join(",")
            },
        ]);
    }
    out.push_str(&table(&rows));
    out
}

/// Pauses as a table (KEY, NAMESPACE, UNTIL as Unix-epoch ms, LEFT), or as JSON.
fn render_pauses(pauses: &[tollgate_client::Pause], json_out: bool) -> String {
    if json_out {
        return format!("{}\n", serde_json::to_value(pauses).unwrap_or_default());
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut rows = vec![
        ["KEY", "NAMESPACE", "UNTIL_MS", "LEFT"]
            .map(String::from)
            .to_vec(),
    ];
    for p in pauses {
        let (until, left) = match p.paused_until_ms {
            Some(ms) => (
                ms.to_string(),
                // To the nearest second: the server rounds the end up to the millisecond and
                // this clock reads it a moment later, so rounding up would show 121 s of 120.
                format!("{} s", (ms.saturating_sub(now_ms) + 500) / 1_000),
            ),
            None => ("-".into(), "not paused".into()),
        };
        rows.push(vec![
            p.key.clone(),
            format!("{:?}", p.namespace).to_lowercase(),
            until,
            left,
        ]);
    }
    table(&rows)
}

/// Left-aligned columns separated by two spaces.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<w$}", w = widths[i]))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

/// `tollgate apply`: reads the file, plans against what the server holds, and (unless a dry run)
/// makes the changes in the plan's order; prints the plan.
async fn apply(
    client: &Client,
    a: &ApplyArgs,
    json_out: bool,
    fail: &dyn Fn(tollgate_client::Error) -> Failure,
) -> Result<(String, ExitCode), Failure> {
    use crate::config::{Body, Config, Current, plan};
    let config = Config::load(&a.file).map_err(|e| e.0)?;
    let mut current = Current::default();
    for limit in client.list_limits().await.map_err(fail)? {
        if limit.namespace == tollgate_client::api::Namespace::Static
            && let Ok(l) = limit.definition.to_declared()
        {
            current.limits.insert(limit.key, l);
        }
    }
    for task in client.list_tasks().await.map_err(fail)? {
        current.tasks.insert(task.name, task.spec);
    }
    let plan = plan(&config, &current, a.prune).map_err(|e| e.0)?;
    if !a.dry_run {
        for change in &plan.changes {
            let done = match &change.body {
                Some(Body::Limit(spec)) => client.put_limit(&change.name, spec).await.map(drop),
                Some(Body::Task(spec)) => client.put_task(&change.name, spec).await.map(drop),
                None => client.delete_limit(&change.name).await,
            };
            done.map_err(|e| {
                let field = match &e {
                    tollgate_client::Error::Api { field, .. } => field.clone(),
                    _ => None,
                };
                change.refused(field.as_deref(), &fail(e))
            })?;
        }
    }
    let text = if json_out {
        let mut v = serde_json::to_value(&plan).unwrap_or(Value::Null);
        v["dry_run"] = Value::Bool(a.dry_run);
        format!("{v}\n")
    } else {
        plan.render(a.dry_run)
    };
    Ok((text, ExitCode::SUCCESS))
}
