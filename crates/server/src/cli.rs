//! The command line: `tollgate serve`, and the client commands (`limits`, `tasks`, `runs`,
//! `acquire`, `events`; see [`crate::commands`]).
//!
//! Arguments go through two stages: parsing and validation ([`ServeArgs::validate`], no IO
//! beyond looking at `--data-dir`), then resolution ([`ServeConfig::serve`]: logging, the
//! runtime, binding, serving).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use tollgate::SystemClock;

use crate::commands::{
    AcquireArgs, ClientCommand, ClientOptions, EventsCommand, LimitsCommand, RunsCommand,
    TasksCommand,
};
use crate::config::{Config, ConfigError};
use crate::state::{AppState, MAX_WAIT, Settings, StoreErrorPolicy};

/// Tollgate: decides when background jobs may start.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// For the client commands: `--server URL` and `--json`, accepted anywhere on the line.
    #[command(flatten)]
    pub client: ClientOptions,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API.
    Serve(ServeArgs),
    /// Declare, list and remove limits.
    #[command(subcommand)]
    Limits(LimitsCommand),
    /// List tasks.
    #[command(subcommand)]
    Tasks(TasksCommand),
    /// Enqueue runs and see why a run waits.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Take units from a limit now: prints `allowed` (exit 0) or `denied, retry after N ms`
    /// (exit 1).
    Acquire(AcquireArgs),
    /// Send events.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Make a running server hold the limits and tasks of a config file (`--dry-run` shows
    /// what would change; `--prune` also removes the limits it does not name).
    Apply(crate::commands::ApplyArgs),
    /// Print the HTTP API's OpenAPI 3.1 document (as served at `/openapi.json`).
    Openapi,
    /// Make access tokens for `serve --tokens-file`.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `tollgate token …`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Draw a new random secret; print it once, and the `[[token]]` table (its SHA-256, not
    /// the secret) to paste into the tokens file.
    New(TokenArgs),
    /// The `[[token]]` table of a secret of your own, read from stdin.
    Hash(TokenArgs),
}

/// A token's name and role.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The token's name, shown in logs and in 403 answers (never the secret).
    #[arg(long)]
    pub name: String,
    /// What it may do.
    #[arg(long, value_enum)]
    pub role: crate::auth::Role,
}

impl TokenCommand {
    /// Prints the table (and, for `new`, the secret); `json` prints one object instead.
    fn run(self, json: bool) -> anyhow::Result<std::process::ExitCode> {
        use base64::Engine as _;
        let (args, secret, drawn) = match self {
            TokenCommand::New(args) => {
                let mut bytes = [0_u8; 32];
                getrandom::fill(&mut bytes)
                    .map_err(|e| anyhow::anyhow!("cannot draw a random secret: {e}"))?;
                let secret = format!(
                    "tg_{}",
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
                );
                (args, secret, true)
            }
            TokenCommand::Hash(args) => {
                let mut secret = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut secret)
                    .context("reading the secret from stdin")?;
                let secret = secret.trim().to_owned();
                if secret.is_empty() {
                    bail!(
                        "no secret on stdin: `printf %s \"$SECRET\" | tollgate token hash --name NAME --role ROLE`"
                    );
                }
                (args, secret, false)
            }
        };
        let name = args.name.trim();
        if name.is_empty() || name.chars().any(char::is_control) {
            bail!("--name must be a non-empty name without control characters");
        }
        let hash = crate::auth::sha256_hex(&secret);
        let table = format!(
            "[[token]]\nname = {}\nrole = \"{}\"\nsha256 = \"{hash}\"\n",
            toml_string(name),
            args.role
        );
        if json {
            let mut out = serde_json::json!({"name": name, "role": args.role.as_str(), "sha256": hash, "table": table});
            if drawn {
                out["secret"] = serde_json::Value::String(secret);
            }
            println!("{out}");
        } else if drawn {
            println!(
                "# The secret, shown only now (the server keeps its SHA-256): clients send it as\n\
                 # `Authorization: Bearer <secret>` (the CLI: --token or TOLLGATE_TOKEN).\n\
                 {secret}\n\n\
                 # Paste into the tokens file (serve --tokens-file), then send the server SIGHUP:\n\
                 {table}"
            );
        } else {
            print!("{table}");
        }
        Ok(std::process::ExitCode::SUCCESS)
    }
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// `tollgate serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on, HOST:PORT (port 0: any free port; the address bound is printed
    /// on stdout as `listening on http://ADDR`).
    #[arg(
        long,
        value_name = "ADDR",
        env = "TOLLGATE_LISTEN",
        default_value = "127.0.0.1:7070"
    )]
    pub listen: String,
    /// Directory for durable data: limits, tasks and runs in SQLite (created if missing;
    /// default ./tollgate-data).
    #[arg(long, value_name = "DIR", env = "TOLLGATE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Keep everything in memory; nothing survives a restart.
    #[arg(long, env = "TOLLGATE_MEMORY", conflicts_with = "redis")]
    pub memory: bool,
    /// Keep limits, tasks, runs and leases in Redis (or Valkey) at URL
    /// (`redis://[user:password@]host[:port][/db]`), shared by every node started with the
    /// same URL and prefix. Opens no data directory.
    #[arg(long, value_name = "URL", env = "TOLLGATE_REDIS_URL")]
    pub redis: Option<String>,
    /// With `--redis`: the prefix of every Redis key; nodes with different prefixes share
    /// nothing.
    #[arg(
        long,
        value_name = "PREFIX",
        env = "TOLLGATE_REDIS_PREFIX",
        default_value = "tollgate"
    )]
    pub redis_prefix: String,
    /// With `--redis`: URL is a node of a Redis Cluster. Every key of the deployment then
    /// shares the slot of `{PREFIX}` (all operations stay atomic); the node talks to that
    /// slot's owner and follows it after a failover.
    #[arg(long, env = "TOLLGATE_REDIS_CLUSTER", requires = "redis")]
    pub redis_cluster: bool,
    /// Largest request body: bytes, or with a suffix (512KiB, 1MiB, 2MB).
    #[arg(
        long,
        value_name = "BYTES",
        env = "TOLLGATE_MAX_BODY",
        default_value = "1MiB",
        value_parser = parse_size
    )]
    pub max_body: usize,
    /// When the store is unreachable: `closed` answers 503 store_unavailable, `open` admits.
    #[arg(
        long,
        value_name = "POLICY",
        env = "TOLLGATE_ON_STORE_ERROR",
        value_enum,
        default_value_t = StoreErrorPolicy::Closed
    )]
    pub on_store_error: StoreErrorPolicy,
    /// How long ended runs (succeeded, failed, skipped, cancelled) are kept before they are
    /// forgotten, as a period (`7d`, `12h`, `YEAR`). Runs whose units still count against a
    /// limit are kept until they no longer do.
    #[arg(
        long,
        value_name = "PERIOD",
        env = "TOLLGATE_RETENTION",
        default_value = "7d",
        value_parser = parse_period
    )]
    pub retention: tollgate::core::Period,
    /// The longest a request may wait on purpose (an acquire's `wait_ms`, a barrier's
    /// `timeout_ms`, a worker's lease `wait_ms`): longer asks are cut to it. A period, at most
    /// `60s` (the default); shorter suits a proxy with a short timeout.
    #[arg(
        long,
        value_name = "PERIOD",
        env = "TOLLGATE_MAX_WAIT",
        default_value = "60s",
        value_parser = parse_max_wait
    )]
    pub max_wait: std::time::Duration,
    /// Require a token on every request but `/healthz`: FILE lists them as `[[token]]` tables
    /// (`name`, `role`: read, worker or admin, `sha256` of the secret; make one with `tollgate
    /// token new`). Read again on SIGHUP; a file that no longer parses keeps the tokens in force.
    #[arg(long, value_name = "FILE", env = "TOLLGATE_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Serve a non-loopback address without a tokens file: anyone who reaches the port may do
    /// anything. Only for a network where something in front of Tollgate controls access.
    #[arg(
        long,
        env = "TOLLGATE_INSECURE_NO_AUTH",
        conflicts_with = "tokens_file"
    )]
    pub insecure_no_auth: bool,
    /// Serve HTTPS with this PEM certificate chain (with `--tls-key`). Read again on SIGHUP.
    #[arg(
        long,
        value_name = "PEM",
        env = "TOLLGATE_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `--tls-cert`.
    #[arg(
        long,
        value_name = "PEM",
        env = "TOLLGATE_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// A config file (TOML): `[server]` with these flags' settings (flags and environment win),
    /// `[limits.NAME]` and `[tasks.NAME]` with the fields of their `PUT` bodies, applied at start
    /// as upserts and again on SIGHUP (docs/http-api.md, "Config file").
    #[arg(long, value_name = "FILE", env = "TOLLGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// How the log (on stderr) is written: `text` (colours only on a terminal) or `json` (one
    /// object per line). `RUST_LOG` picks what is logged (default `info`).
    #[arg(
        long,
        value_name = "FORMAT",
        env = "TOLLGATE_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
}

impl ServeArgs {
    /// Takes the `[server]` settings of `config` for every flag not given on the command line
    /// or in the environment (`given` says which were).
    ///
    /// # Errors
    /// A setting that does not parse, naming where the file has it.
    pub fn merge_config(
        &mut self,
        config: &Config,
        given: &dyn Fn(&str) -> bool,
    ) -> Result<(), ConfigError> {
        let server = &config.server;
        if let Some(v) = &server.listen
            && !given("listen")
        {
            self.listen = v.get_ref().clone();
        }
        if let Some(v) = &server.data_dir
            && !given("data_dir")
        {
            self.data_dir = Some(config.resolve(v));
        }
        if let Some(v) = server.memory
            && !given("memory")
        {
            self.memory = v;
        }
        if let Some(v) = &server.redis
            && !given("redis")
        {
            self.redis = Some(v.clone());
        }
        if let Some(v) = &server.redis_prefix
            && !given("redis_prefix")
        {
            self.redis_prefix = v.clone();
        }
        if let Some(v) = server.redis_cluster
            && !given("redis_cluster")
        {
            self.redis_cluster = v;
        }
        if let Some(v) = &server.max_body
            && !given("max_body")
        {
            self.max_body = parse_size(&v.get_ref().as_arg())
                .map_err(|e| config.server_error("max_body", v, &e))?;
        }
        if let Some(v) = &server.on_store_error
            && !given("on_store_error")
        {
            self.on_store_error = clap::ValueEnum::from_str(v.get_ref(), true).map_err(|_| {
                config.server_error("on_store_error", v, "expected \"closed\" or \"open\"")
            })?;
        }
        if let Some(v) = &server.retention
            && !given("retention")
        {
            self.retention =
                parse_period(v.get_ref()).map_err(|e| config.server_error("retention", v, &e))?;
        }
        if let Some(v) = &server.tokens_file
            && !given("tokens_file")
            && !given("insecure_no_auth")
        {
            self.tokens_file = Some(config.resolve(v));
        }
        if let Some(v) = server.insecure_no_auth
            && !given("insecure_no_auth")
            && !given("tokens_file")
        {
            self.insecure_no_auth = v;
        }
        if self.insecure_no_auth && self.tokens_file.is_some() {
            return Err(ConfigError(format!(
                "{}: server.insecure_no_auth and a tokens file cannot go together",
                config.path.display()
            )));
        }
        if let (Some(cert), Some(key)) = (&server.tls_cert, &server.tls_key)
            && !given("tls_cert")
            && !given("tls_key")
        {
            self.tls_cert = Some(config.resolve(cert));
            self.tls_key = Some(config.resolve(key));
        } else if server.tls_cert.is_some() != server.tls_key.is_some() {
            return Err(ConfigError(format!(
                "{}: server.tls_cert and server.tls_key go together",
                config.path.display()
            )));
        }
        if let Some(v) = &server.max_wait
            && !given("max_wait")
        {
            self.max_wait =
                parse_max_wait(v.get_ref()).map_err(|e| config.server_error("max_wait", v, &e))?;
        }
        if let Some(v) = &server.log_format
            && !given("log_format")
        {
            self.log_format = clap::ValueEnum::from_str(v.get_ref(), true).map_err(|_| {
                config.server_error("log_format", v, "expected \"text\" or \"json\"")
            })?;
        }
        Ok(())
    }
}

/// Whether `listen` (`HOST:PORT`) binds only the loopback interface: a loopback IP, or
/// `localhost`.
fn is_loopback(listen: &str) -> bool {
    if let Ok(addr) = listen.parse::<SocketAddr>() {
        return addr.ip().is_loopback();
    }
    listen
        .rsplit_once(':')
        .is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost"))
}

/// Parses `--max-wait`: a period from 1 ms to [`MAX_WAIT`].
fn parse_max_wait(input: &str) -> Result<std::time::Duration, String> {
    let period = parse_period(input)?;
    let d = std::time::Duration::from_nanos(period.as_nanos().as_nanos());
    if d > MAX_WAIT {
        return Err(format!(
            "invalid --max-wait {input:?}: at most {}s",
            MAX_WAIT.as_secs()
        ));
    }
    Ok(d)
}

/// Parses a period argument, quoting the input in the error.
fn parse_period(input: &str) -> Result<tollgate::core::Period, String> {
    tollgate::core::Period::parse(input).map_err(|e| e.to_string())
}

/// The largest `--max-body` accepted: 1 GiB.
const MAX_BODY_LIMIT: u64 = 1 << 30;

/// Parses a byte size: `1048576`, `512KiB`, `1MiB`, `2MB`, `1 gib` (binary suffixes are
/// powers of 1024, decimal ones of 1000).
///
/// # Errors
/// A message quoting the input, for clap to show.
pub fn parse_size(input: &str) -> Result<usize, String> {
    let s = input.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    let expected =
        "expected a number of bytes with an optional suffix: B, KB, KiB, MB, MiB, GB, GiB";
    let number: u64 = number
        .parse()
        .map_err(|_| format!("invalid size {input:?}: {expected}"))?;
    let multiplier: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return Err(format!("invalid size {input:?}: {expected}")),
    };
    match number.checked_mul(multiplier) {
        Some(n) if (1..=MAX_BODY_LIMIT).contains(&n) => {
            usize::try_from(n).map_err(|_| format!("invalid size {input:?}: too large"))
        }
        _ => Err(format!(
            "invalid size {input:?}: must be between 1 byte and 1GiB"
        )),
    }
}

/// Where a server keeps its state.
#[derive(Debug)]
enum StoreChoice {
    Memory,
    Sqlite(PathBuf),
    Redis(tollgate_redis::RedisStore),
}

/// The default `--data-dir`.
pub const DEFAULT_DATA_DIR: &str = "./tollgate-data";

/// Validated `serve` arguments.
#[derive(Debug)]
pub struct ServeConfig {
    listen: String,
    store: StoreChoice,
    retention: tollgate::core::Period,
    settings: Settings,
    /// `--config`: applied at start and on SIGHUP.
    config: Option<Config>,
    /// `--tls-cert` and `--tls-key`.
    tls: Option<(PathBuf, PathBuf)>,
}

impl ServeArgs {
    /// Checks the arguments without binding or creating anything; reads `--config` and
    /// `--tokens-file` (but takes nothing from the config's `[server]`: see
    /// [`ServeArgs::merge_config`]).
    ///
    /// # Errors
    /// `--listen` not `HOST:PORT`; `--data-dir` naming something that is not a directory; a
    /// config or tokens file that cannot be used.
    pub fn validate(self) -> anyhow::Result<ServeConfig> {
        let config = match &self.config {
            Some(path) => Some(Config::load(path)?),
            None => None,
        };
        self.validate_with(config)
    }

    /// [`ServeArgs::validate`] with `--config` already read.
    ///
    /// # Errors
    /// As [`ServeArgs::validate`].
    pub fn validate_with(self, config: Option<Config>) -> anyhow::Result<ServeConfig> {
        let listen = self.listen.trim().to_owned();
        if listen.parse::<SocketAddr>().is_err() {
            let port_ok = listen
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                bail!("invalid --listen {listen:?}: expected HOST:PORT, e.g. 127.0.0.1:7070");
            }
        }
        let store = if let Some(url) = self.redis {
            if let Some(dir) = &self.data_dir {
                bail!(
                    "--data-dir {} cannot be used with --redis: Redis holds everything and no data directory is opened",
                    dir.display()
                );
            }
            let store = tollgate_redis::RedisStore::builder(url.trim())
                .prefix(self.redis_prefix.clone())
                .cluster(self.redis_cluster)
                .build()
                .map_err(|e| anyhow::anyhow!("invalid --redis or --redis-prefix: {e}"))?;
            StoreChoice::Redis(store)
        } else if self.memory {
            StoreChoice::Memory
        } else {
            let dir = self
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
            if dir.as_os_str().is_empty() {
                bail!("--data-dir must not be empty");
            }
            if dir.exists() && !dir.is_dir() {
                bail!("--data-dir {} exists and is not a directory", dir.display());
            }
            StoreChoice::Sqlite(dir)
        };
        let access = match &self.tokens_file {
            Some(path) => Some(std::sync::Arc::new(
                // Over HTTPS the dashboard's cookie is marked Secure: never sent in the clear.
                crate::auth::Access::load(path, self.tls_cert.is_some())
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            )),
            None if self.insecure_no_auth || is_loopback(&listen) => None,
            None => bail!(
                "refusing to listen on {listen} without access control: anyone who can reach it could \
                 delete every limit and cancel every run. Give --tokens-file FILE (make a token with \
                 `tollgate token new --name NAME --role admin` and paste the table it prints into \
                 FILE), listen on 127.0.0.1, or pass --insecure-no-auth if something in front of \
                 Tollgate controls who reaches it"
            ),
        };
        Ok(ServeConfig {
            config,
            tls: self.tls_cert.zip(self.tls_key),
            listen,
            store,
            retention: self.retention,
            settings: Settings {
                max_body: self.max_body,
                on_store_error: self.on_store_error,
                max_wait: self.max_wait,
                access,
            },
        })
    }
}

impl ServeConfig {
    /// Binds, prints `listening on http://ADDR` on stdout, and serves until Ctrl-C or SIGTERM.
    ///
    /// # Errors
    /// Binding or serving failed.
    pub async fn serve(self) -> anyhow::Result<()> {
        // SIGHUP is caught from the first moment: its default action ends the process, and a
        // deployment script may send it as soon as the server says it is listening.
        let hangups = hangup_signal();
        // The certificate first: a bad one stops the start before anything is bound.
        let tls = match &self.tls {
            Some((cert, key)) => Some(crate::tls::load(cert, key).await?),
            None => None,
        };
        let listener = TcpListener::bind(&self.listen)
            .await
            .with_context(|| format!("binding {}", self.listen))?;
        let addr = listener
            .local_addr()
            .context("reading the listening address")?;
        // On stdout, one line, so scripts (and tests) can find a port chosen with `:0`.
        let scheme = if tls.is_some() { "https" } else { "http" };
        println!("listening on {scheme}://{addr}");
        let state = match self.store {
            StoreChoice::Sqlite(dir) => AppState::open(&dir, self.settings)?,
            StoreChoice::Memory => {
                tracing::info!(
                    "keeping everything in memory (--memory): nothing survives a restart"
                );
                AppState::new(SystemClock::new(), self.settings)
            }
            StoreChoice::Redis(store) => {
                // Checks the server's version and loads Tollgate's functions.
                match store.ping().await {
                    Ok(()) => {
                        tracing::info!(url = store.url(), prefix = store.prefix(), "using redis")
                    }
                    // Starting anyway: calls answer 503 store_unavailable until it is back.
                    Err(e) if e.is_transient() => {
                        tracing::warn!(error = %e, "redis is not reachable yet; starting anyway")
                    }
                    // A server too old for Redis Functions, or one that refuses to load them.
                    Err(e) => return Err(anyhow::anyhow!("cannot use --redis: {e}")),
                }
                AppState::redis(store, self.settings)
            }
        };
        state.queue().set_retention(self.retention);
        let access = state.settings().access.clone();
        match &access {
            Some(access) => tracing::info!(
                file = %access.path().display(),
                tokens = access.tokens().len(),
                "access control on: every request but /healthz needs a token"
            ),
            None => tracing::warn!(
                "no --tokens-file: every request is let through (anyone who reaches the port may do anything)"
            ),
        }
        if let Some(config) = &self.config {
            let plan = crate::config::apply_in_process(&state, config).await?;
            tracing::info!(
                file = %config.path.display(),
                changes = plan.changes.len(),
                unchanged = plan.unchanged,
                "config applied"
            );
        }
        let config_path = self.config.as_ref().map(|c| c.path.clone());
        tokio::spawn(reload_on_hangup(
            hangups,
            access,
            config_path,
            tls.clone(),
            state.clone(),
        ));
        match tls {
            Some(tls) => crate::run_tls(listener, tls.config(), state, shutdown_signal()).await,
            None => crate::run(listener, state, shutdown_signal()).await,
        }
    }
}

/// Reads the tokens file again at every SIGHUP; one that no longer reads or parses keeps the
/// tokens in force, and the log says why.
#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = ();

/// The SIGHUP listener (unix), installed now; `None` (logged) when it cannot be.
fn hangup_signal() -> Hangups {
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: nothing will be reloaded");
                None
            }
        }
    }
}

async fn reload_on_hangup(
    hangups: Hangups,
    access: Option<std::sync::Arc<crate::auth::Access>>,
    config: Option<PathBuf>,
    tls: Option<crate::tls::Tls>,
    state: AppState,
) {
    #[cfg(unix)]
    {
        let Some(mut hangups) = hangups else {
            return;
        };
        while hangups.recv().await.is_some() {
            if let Some(path) = &config {
                reapply(path, &state).await;
            }
            if let Some(tls) = &tls {
                match tls.reload().await {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificate and key read again"),
                    Err(e) => tracing::error!(
                        error = %e,
                        "SIGHUP: the TLS files cannot be used; the certificate in force stays"
                    ),
                }
            }
            let Some(access) = &access else {
                if config.is_none() && tls.is_none() {
                    tracing::info!("SIGHUP: no --tokens-file, --config or TLS files to read again");
                }
                continue;
            };
            match access.reload() {
                Ok(n) => tracing::info!(
                    file = %access.path().display(),
                    tokens = n,
                    "SIGHUP: tokens file read again"
                ),
                Err(e) => tracing::error!(
                    error = %e,
                    "SIGHUP: the tokens file cannot be used; the previous tokens stay in force"
                ),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (hangups, access, config, tls, state);
}

/// Reads the config file again and applies its limits and tasks (`[server]` settings take
/// effect at the next start); a file that no longer parses changes nothing.
async fn reapply(path: &std::path::Path, state: &AppState) {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: the config file cannot be used; nothing was changed");
            return;
        }
    };
    match crate::config::apply_in_process(state, &config).await {
        Ok(plan) => tracing::info!(
            file = %path.display(),
            changes = plan.changes.len(),
            unchanged = plan.unchanged,
            "SIGHUP: config applied again"
        ),
        Err(e) => tracing::error!(error = %e, "SIGHUP: the config file could not be applied"),
    }
}

/// Completes at Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event for people; colours only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`), for log shippers.
    Json,
}

fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (tests calling `run` twice) is harmless to skip.
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}

impl Cli {
    /// Runs the command; client commands print their own errors and choose their exit code
    /// (`acquire` exits 1 when denied).
    ///
    /// # Errors
    /// Invalid arguments, or the server failing to start or serve.
    pub fn run(self) -> anyhow::Result<std::process::ExitCode> {
        self.run_with(None)
    }

    /// [`Cli::run`], knowing from `matches` (what clap parsed `self` from) which `serve` flags
    /// were given on the command line or in the environment: a config file's `[server]` table
    /// sets only the others. Without matches, the file sets every flag it names.
    ///
    /// # Errors
    /// As [`Cli::run`]; a [`ConfigError`] for a config file that cannot be used.
    pub fn run_with(
        self,
        matches: Option<&clap::ArgMatches>,
    ) -> anyhow::Result<std::process::ExitCode> {
        let client = match self.command {
            Command::Serve(mut args) => {
                let mut loaded = None;
                if let Some(path) = &args.config {
                    let config = Config::load(path)?;
                    let serve = matches.and_then(|m| m.subcommand_matches("serve"));
                    let given = |id: &str| {
                        serve
                            .and_then(|m| m.value_source(id))
                            .is_some_and(|source| source != clap::parser::ValueSource::DefaultValue)
                    };
                    args.merge_config(&config, &given)?;
                    loaded = Some(config);
                }
                let log_format = args.log_format;
                let config = args.validate_with(loaded)?;
                init_tracing(log_format);
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                    .context("starting the async runtime")?;
                runtime.block_on(config.serve())?;
                return Ok(std::process::ExitCode::SUCCESS);
            }
            Command::Limits(c) => ClientCommand::Limits(c),
            Command::Tasks(c) => ClientCommand::Tasks(c),
            Command::Runs(c) => ClientCommand::Runs(c),
            Command::Acquire(c) => ClientCommand::Acquire(c),
            Command::Events(c) => ClientCommand::Events(c),
            Command::Token(c) => return c.run(self.client.json),
            Command::Apply(c) => ClientCommand::Apply(c),
            Command::Openapi => {
                print!("{}", crate::openapi::document_text());
                return Ok(std::process::ExitCode::SUCCESS);
            }
        };
        Ok(client.run(&self.client))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_plain_bytes_and_suffixes() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1 mib"), Ok(1 << 20));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        for bad in ["", "0", "MiB", "1.5MiB", "-1", "1TiB", "2GiB", "12 apples"] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }

    #[test]
    fn serve_defaults_match_the_design() {
        let cli = Cli::try_parse_from(["tollgate", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            unreachable!()
        };
        assert_eq!(args.listen, "127.0.0.1:7070");
        assert_eq!(args.max_body, 1 << 20);
        assert_eq!(args.on_store_error, StoreErrorPolicy::Closed);
        assert_eq!(args.retention, tollgate::DEFAULT_RETENTION);
        assert_eq!(args.redis_prefix, "tollgate");
        let config = args.validate().unwrap();
        assert!(
            matches!(&config.store, StoreChoice::Sqlite(dir) if dir.as_path() == std::path::Path::new(DEFAULT_DATA_DIR)),
            "{:?}",
            config.store
        );
    }

    #[test]
    fn redis_mode_opens_no_data_dir_and_says_which_flags_clash() {
        let serve = |args: &[&str]| -> anyhow::Result<ServeConfig> {
            let cli = Cli::try_parse_from(args.iter().copied())?;
            let Command::Serve(args) = cli.command else {
                unreachable!()
            };
            args.validate()
        };
        let config = serve(&[
            "tollgate",
            "serve",
            "--redis",
            "redis://127.0.0.1:1/",
            "--redis-prefix",
            "app",
        ])
        .unwrap();
        let StoreChoice::Redis(store) = &config.store else {
            panic!("{:?}", config.store)
        };
        assert_eq!(store.prefix(), "app");
        let config = serve(&[
            "tollgate",
            "serve",
            "--redis",
            "redis://h:7000/",
            "--redis-cluster",
        ])
        .unwrap();
        let StoreChoice::Redis(store) = &config.store else {
            panic!("{:?}", config.store)
        };
        assert_eq!(
            store.prefix(),
            "{tollgate}",
            "the prefix is the hash tag of every key"
        );
        let alone = serve(&["tollgate", "serve", "--redis-cluster"]).unwrap_err();
        assert!(alone.to_string().contains("--redis"), "{alone}");
        let clash = serve(&[
            "tollgate",
            "serve",
            "--redis",
            "redis://h/",
            "--data-dir",
            "d",
        ])
        .unwrap_err();
        assert!(
            clash
                .to_string()
                .contains("--data-dir d cannot be used with --redis"),
            "{clash}"
        );
        let clash = serve(&["tollgate", "serve", "--redis", "redis://h/", "--memory"]).unwrap_err();
        assert!(clash.to_string().contains("--memory"), "{clash}");
        let bad = serve(&["tollgate", "serve", "--redis", "http://u:secret@h/"]).unwrap_err();
        let shown = format!("{bad:#}");
        assert!(shown.contains("invalid --redis"), "{shown}");
        assert!(
            !shown.contains("secret"),
            "the password is never shown: {shown}"
        );
        let bad = serve(&[
            "tollgate",
            "serve",
            "--redis",
            "redis://h/",
            "--redis-prefix",
            "a{b}",
        ])
        .unwrap_err();
        assert!(format!("{bad:#}").contains("prefix"), "{bad:#}");
    }

    #[test]
    fn serve_takes_every_flag() {
        let cli = Cli::try_parse_from([
            "tollgate",
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--insecure-no-auth",
            "--memory",
            "--max-body",
            "512KiB",
            "--on-store-error",
            "open",
            "--retention",
            "12h",
            "--max-wait",
            "250ms",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            unreachable!()
        };
        assert!(args.memory);
        assert_eq!(
            args.retention,
            tollgate::core::Period::parse("12h").unwrap()
        );
        assert_eq!(args.max_body, 512 << 10);
        assert_eq!(args.on_store_error, StoreErrorPolicy::Open);
        assert_eq!(args.max_wait, std::time::Duration::from_millis(250));
        let config = args.validate().unwrap();
        assert_eq!(
            config.settings.max_wait,
            std::time::Duration::from_millis(250)
        );
        let e = Cli::try_parse_from(["tollgate", "serve", "--max-wait", "2m"]).unwrap_err();
        assert!(e.to_string().contains("at most 60s"), "{e}");
    }

    #[test]
    fn a_config_file_sets_the_flags_not_given_and_reads_paths_from_its_folder() {
        let config = Config::parse(
            std::path::Path::new("/etc/tollgate/tollgate.toml"),
            "[server]\nlisten = \"0.0.0.0:7070\"\ntokens_file = \"tokens.toml\"\n\
             data_dir = \"/var/lib/tollgate\"\nmax_body = 2048\nretention = \"12h\"\n\
             on_store_error = \"open\"\nlog_format = \"json\"\nmax_wait = \"5s\"\n",
        )
        .unwrap();
        let args = |extra: &[&str]| {
            let mut all = vec!["tollgate", "serve"];
            all.extend_from_slice(extra);
            let Command::Serve(a) = Cli::try_parse_from(all).unwrap().command else {
                unreachable!()
            };
            a
        };
        let mut a = args(&[]);
        a.merge_config(&config, &|_| false).unwrap();
        assert_eq!(a.listen, "0.0.0.0:7070");
        assert_eq!(
            a.tokens_file.as_deref(),
            Some(std::path::Path::new("/etc/tollgate/tokens.toml"))
        );
        assert_eq!(
            a.data_dir.as_deref(),
            Some(std::path::Path::new("/var/lib/tollgate"))
        );
        assert_eq!(a.max_body, 2048);
        assert_eq!(a.retention, tollgate::core::Period::parse("12h").unwrap());
        assert_eq!(a.on_store_error, StoreErrorPolicy::Open);
        assert_eq!(a.log_format, LogFormat::Json);
        assert_eq!(a.max_wait, std::time::Duration::from_secs(5));
        // What was given wins; what was not still comes from the file.
        let mut a = args(&["--listen", "127.0.0.1:9", "--max-body", "1MiB"]);
        a.merge_config(&config, &|id| id == "listen" || id == "max_body")
            .unwrap();
        assert_eq!((a.listen.as_str(), a.max_body), ("127.0.0.1:9", 1 << 20));
        assert_eq!(a.log_format, LogFormat::Json);
        // --insecure-no-auth given: the file's tokens are not taken.
        let mut a = args(&["--insecure-no-auth"]);
        a.merge_config(&config, &|id| id == "insecure_no_auth")
            .unwrap();
        assert!(a.tokens_file.is_none());
        // A value that does not parse names where it is.
        let bad = Config::parse(
            std::path::Path::new("t.toml"),
            "[server]\nlog_format = \"xml\"\n",
        )
        .unwrap();
        let e = args(&[]).merge_config(&bad, &|_| false).unwrap_err();
        assert!(e.0.starts_with("t.toml:2:14: server.log_format"), "{e}");
    }

    #[test]
    fn only_loopback_addresses_serve_without_tokens_unless_told() {
        for (listen, loopback) in [
            ("127.0.0.1:7070", true),
            ("127.9.9.9:1", true),
            ("[::1]:7070", true),
            ("localhost:7070", true),
            ("LOCALHOST:1", true),
            ("0.0.0.0:7070", false),
            ("[::]:7070", false),
            ("10.0.0.5:7070", false),
            ("tollgate.internal:7070", false),
        ] {
            assert_eq!(is_loopback(listen), loopback, "{listen}");
            let validate = |extra: &[&str]| {
                let mut args = vec!["tollgate", "serve", "--memory", "--listen", listen];
                args.extend_from_slice(extra);
                let Command::Serve(a) = Cli::try_parse_from(args).unwrap().command else {
                    unreachable!()
                };
                a.validate()
            };
            match validate(&[]) {
                Ok(_) => assert!(loopback, "{listen} served without tokens"),
                Err(e) => {
                    assert!(!loopback, "{listen}: {e}");
                    assert!(e.to_string().contains("--tokens-file"), "{e}");
                }
            }
            assert!(validate(&["--insecure-no-auth"]).is_ok(), "{listen}");
        }
        let both = Cli::try_parse_from([
            "tollgate",
            "serve",
            "--tokens-file",
            "t.toml",
            "--insecure-no-auth",
        ]);
        assert!(both.is_err(), "a tokens file and no auth at once");
    }

    #[test]
    fn invalid_arguments_are_refused_before_anything_starts() {
        assert!(Cli::try_parse_from(["tollgate", "serve", "--on-store-error", "maybe"]).is_err());
        assert!(Cli::try_parse_from(["tollgate", "serve", "--max-body", "lots"]).is_err());
        let e = Cli::try_parse_from(["tollgate", "serve", "--retention", "3x"]).unwrap_err();
        assert!(e.to_string().contains("\"3x\""), "{e}");
        let parse = |args: &[&str]| {
            let mut all = vec!["tollgate", "serve"];
            all.extend_from_slice(args);
            let Command::Serve(a) = Cli::try_parse_from(all).unwrap().command else {
                unreachable!()
            };
            a.validate()
        };
        assert!(parse(&["--listen", "7070"]).is_err());
        assert!(parse(&["--listen", "localhost:7070"]).is_ok());
        // A file is not a data directory.
        let e = parse(&["--data-dir", "Cargo.toml"]).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        assert!(parse(&["--data-dir", "Cargo.toml", "--memory"]).is_ok());
    }
}
