//! The declarative config file (docs/http-api.md, "Config file"): `serve --config FILE` applies
//! it at start and again on SIGHUP, `tollgate apply -f FILE` applies it to a running server.
//!
//! One TOML file: a `[server]` table with the flags' settings (flags and environment win:
//! `cli.rs` merges it), `[limits.NAME]` tables with the fields of `PUT /v1/limits/{key}`, and
//! `[tasks.NAME]` tables with the fields of `PUT /v1/tasks/{name}`. Applying is a set of upserts
//! computed against what the server holds ([`plan`]): a definition already in force is not
//! written again, so every node of a Redis deployment can apply the same file at start. What the
//! file does not name is left alone, unless `prune` removes the limits it does not name.
//!
//! Every error names file, line, column and field, and `tollgate` exits with status 2 for it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use tollgate::core::Limit;
use tollgate::{Declared, LimitSpec, LimitSpecExt, Task, TaskSpec};

use crate::auth::position;

/// A config file that cannot be read, parsed or applied: one line naming file, line, column and
/// field. `tollgate` exits with status 2 for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The `[server]` table: the settings of `tollgate serve`'s flags, by the flags' names with `_`
/// for `-`. Relative paths are read from the config file's folder.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)] // each field is the `serve` flag of the same name
pub struct ServerSection {
    pub listen: Option<toml::Spanned<String>>,
    pub data_dir: Option<PathBuf>,
    pub memory: Option<bool>,
    pub redis: Option<String>,
    pub redis_prefix: Option<String>,
    pub redis_cluster: Option<bool>,
    /// Bytes, or a string with a suffix (`"1MiB"`).
    pub max_body: Option<toml::Spanned<Size>>,
    pub on_store_error: Option<toml::Spanned<String>>,
    pub retention: Option<toml::Spanned<String>>,
    pub tokens_file: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub insecure_no_auth: Option<bool>,
    pub log_format: Option<toml::Spanned<String>>,
    pub max_wait: Option<toml::Spanned<String>>,
}

/// `max_body`: a number of bytes or a size string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
#[allow(missing_docs)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    /// As `--max-body` would read it.
    pub fn as_arg(&self) -> String {
        match self {
            Size::Bytes(n) => n.to_string(),
            Size::Text(s) => s.clone(),
        }
    }
}

/// One `[limits.NAME]` or `[tasks.NAME]` table, read.
#[derive(Debug, Clone)]
pub struct Named<T> {
    /// The key or task name.
    pub name: String,
    /// Its definition, as the HTTP body would carry it.
    pub spec: T,
    /// `file:line:column` of the table.
    at: String,
    /// `file:line:column` of each field's value.
    fields: BTreeMap<String, String>,
}

impl<T> Named<T> {
    /// Where `field` (a path such as `rate_limits[0].units`; its first part is looked up) is
    /// written, else where the table is.
    fn locate(&self, field: Option<&str>) -> &str {
        field
            .and_then(|f| {
                let first = f.split(['.', '[']).next().unwrap_or(f);
                self.fields.get(first)
            })
            .unwrap_or(&self.at)
    }

    /// An error about this table: `file:line:col: limits.NAME.field: message`.
    fn error(&self, section: &str, field: Option<&str>, message: &str) -> ConfigError {
        let path = match field {
            Some(f) if !f.is_empty() => format!("{section}.{}.{f}", toml_key(&self.name)),
            _ => format!("{section}.{}", toml_key(&self.name)),
        };
        ConfigError(format!("{}: {path}: {message}", self.locate(field)))
    }
}

/// A key as TOML writes it in a path: bare when it can be, else quoted.
fn toml_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        key.to_owned()
    } else {
        toml::Value::String(key.to_owned()).to_string()
    }
}

/// A config file, read and checked (each limit's definition is valid; tasks are checked against
/// the limits when planned, since they may name limits the server already has).
#[derive(Debug, Clone)]
pub struct Config {
    /// The file.
    pub path: PathBuf,
    /// `[server]`, empty when absent.
    pub server: ServerSection,
    /// `[limits.NAME]`, in the file's order of names.
    pub limits: Vec<Named<LimitSpec>>,
    /// `[tasks.NAME]`.
    pub tasks: Vec<Named<TaskSpec>>,
    text: String,
}

type Tables = BTreeMap<String, toml::Spanned<BTreeMap<String, toml::Spanned<toml::Value>>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Shape {
    #[serde(default)]
    server: Option<ServerSection>,
    #[serde(default)]
    limits: Tables,
    #[serde(default)]
    tasks: Tables,
}

impl Config {
    /// Reads and checks the file at `path`.
    ///
    /// # Errors
    /// The file cannot be read, is not TOML, has a table or field this version does not know,
    /// or a limit whose definition `PUT /v1/limits` would refuse.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!(
                "cannot read the config file {}: {e}",
                path.display()
            ))
        })?;
        Config::parse(path, &text)
    }

    /// Checks `text`, read from `path`.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let shape: Shape = toml::from_str(text).map_err(|e| {
            let at = e.span().map_or_else(
                || path.display().to_string(),
                |s| position(path, text, s.start),
            );
            ConfigError(format!("{at}: {}", e.message().trim_end()))
        })?;
        let read = |tables: Tables| -> Vec<Named<Value>> {
            tables
                .into_iter()
                .map(|(name, table)| {
                    let at = position(path, text, table.span().start);
                    let mut fields = BTreeMap::new();
                    let mut body = serde_json::Map::new();
                    for (field, value) in table.into_inner() {
                        fields.insert(field.clone(), position(path, text, value.span().start));
                        body.insert(field, toml_to_json(value.into_inner()));
                    }
                    Named {
                        name,
                        spec: Value::Object(body),
                        at,
                        fields,
                    }
                })
                .collect()
        };
        let mut limits = Vec::new();
        for entry in read(shape.limits) {
            if let Some(problem) = tollgate::key_problem(&entry.name) {
                return Err(entry.error("limits", None, &format!("invalid key: {problem}")));
            }
            let spec: LimitSpec = from_body(&entry, "limits")?;
            match spec.to_limit() {
                Ok(Limit::Barrier(_)) => {
                    return Err(entry.error(
                        "limits",
                        Some("algorithm"),
                        "a barrier is not a standing limit (POST /v1/barriers/{key} creates one)",
                    ));
                }
                Ok(_) => {}
                Err(e) => return Err(entry.error("limits", Some(&e.field), &e.message)),
            }
            limits.push(Named {
                name: entry.name,
                spec,
                at: entry.at,
                fields: entry.fields,
            });
        }
        let mut tasks = Vec::new();
        for entry in read(shape.tasks) {
            let spec: TaskSpec = from_body(&entry, "tasks")?;
            tasks.push(Named {
                name: entry.name,
                spec,
                at: entry.at,
                fields: entry.fields,
            });
        }
        Ok(Config {
            path: path.to_owned(),
            server: shape.server.unwrap_or_default(),
            limits,
            tasks,
            text: text.to_owned(),
        })
    }

    /// An error about a `[server]` value: `file:line:col: server.FIELD: message`.
    pub fn server_error<T>(
        &self,
        field: &str,
        value: &toml::Spanned<T>,
        message: &str,
    ) -> ConfigError {
        ConfigError(format!(
            "{}: server.{field}: {message}",
            position(&self.path, &self.text, value.span().start)
        ))
    }

    /// `p` as given in the file: relative paths are read from the file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }
}

/// A table's body read as the HTTP route reads it (the same field paths in errors).
fn from_body<T: serde::de::DeserializeOwned>(
    entry: &Named<Value>,
    section: &str,
) -> Result<T, ConfigError> {
    let bytes = serde_json::to_vec(&entry.spec).map_err(|e| ConfigError(e.to_string()))?;
    crate::extract::parse::<T>(&bytes).map_err(|e| entry.error(section, e.field(), e.message()))
}

fn toml_to_json(v: toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        toml::Value::Boolean(b) => Value::Bool(b),
        // No field takes a date: the route's reader refuses the string with the field's name.
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

/// What the server holds now: its declared limits and its tasks.
#[derive(Debug, Default)]
pub struct Current {
    /// Declared (static) limits by key, adaptive bounds included.
    pub limits: BTreeMap<String, Declared>,
    /// Task definitions by name.
    pub tasks: BTreeMap<String, TaskSpec>,
}

/// What applying does to one limit or task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Not there yet: declared.
    Add,
    /// There with another definition: redefined.
    Change,
    /// There, not in the file, and `prune` asked: removed.
    Remove,
}

/// One change of a plan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Change {
    /// What is done.
    pub op: Op,
    /// `"limit"` or `"task"`.
    pub kind: &'static str,
    /// The limit's key or the task's name.
    pub name: String,
    /// The definition in force, as the server shows it (none for an addition).
    pub before: Option<Value>,
    /// The definition the file gives, as the server will show it (none for a removal).
    pub after: Option<Value>,
    /// What to send: the file's definition (none for a removal).
    #[serde(skip)]
    pub body: Option<Body>,
    /// Where the file defines it, and each of its fields (empty for a removal).
    #[serde(skip)]
    place: Option<Named<()>>,
}

/// The body of the `PUT` a change makes.
#[derive(Debug, Clone)]
pub enum Body {
    /// `PUT /v1/limits/{key}`.
    Limit(Box<LimitSpec>),
    /// `PUT /v1/tasks/{name}`.
    Task(Box<TaskSpec>),
}

impl Change {
    /// The server's refusal of this change as one line: where the file defines what it refused
    /// (its field when the server names one), then why.
    pub fn refused(&self, field: Option<&str>, message: &str) -> String {
        let section = format!("{}s", self.kind);
        match &self.place {
            Some(place) => place.error(&section, field, message).0,
            None => format!("{section}.{}: {message}", toml_key(&self.name)),
        }
    }
}

/// What applying a file does.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Plan {
    /// Limits first (tasks may name them), then tasks, then removals.
    pub changes: Vec<Change>,
    /// Definitions already in force.
    pub unchanged: usize,
    /// Tasks the server has that the file does not name (tasks cannot be removed).
    pub tasks_not_in_file: Vec<String>,
}

/// A limit's definition as the server shows it.
pub fn shown_limit(declared: &Declared) -> Value {
    serde_json::to_value(LimitSpec::from_declared(declared)).unwrap_or(Value::Null)
}

/// A task's definition as the server shows it (defaults filled in).
pub fn shown_task(name: &str, spec: &TaskSpec) -> Value {
    let task = tollgate_api::Task {
        name: name.to_owned(),
        spec: spec.clone(),
        depth: tollgate_api::Depth::default(),
    };
    serde_json::to_value(task)
        .map(|mut v| v["spec"].take())
        .unwrap_or(Value::Null)
}

/// The changes that make the server hold what `config` says. Each task is compiled against the
/// file's limits and the server's (as `PUT /v1/tasks` would), so a dry run finds its errors too.
///
/// # Errors
/// A task the server would refuse, naming where the file defines it.
pub fn plan(config: &Config, current: &Current, prune: bool) -> Result<Plan, ConfigError> {
    let mut plan = Plan::default();
    let mut file_limits: BTreeMap<&str, Limit> = BTreeMap::new();
    for entry in &config.limits {
        let given = entry
            .spec
            .to_declared()
            .map_err(|e| entry.error("limits", Some(&e.field), &e.message))?;
        let now = current.limits.get(&entry.name);
        // What the server will hold after the PUT: an adaptive limit whose bounds the file does
        // not change keeps its limit in force (docs/design.md §3.16), so it is unchanged.
        let after = shown_limit(&given.redefine(now));
        let before = now.map(shown_limit);
        file_limits.insert(&entry.name, *given.limit());
        push(
            &mut plan,
            "limit",
            entry,
            Body::Limit(Box::new(entry.spec.clone())),
            before,
            after,
        );
    }
    let lookup = |key: &str| {
        file_limits
            .get(key)
            .copied()
            .or_else(|| current.limits.get(key).map(|d| *d.limit()))
    };
    for entry in &config.tasks {
        Task::compile(&entry.name, entry.spec.clone(), &lookup)
            .map_err(|e| entry.error("tasks", Some(&e.field), &e.message))?;
        let after = shown_task(&entry.name, &entry.spec);
        let before = current
            .tasks
            .get(&entry.name)
            .map(|s| shown_task(&entry.name, s));
        push(
            &mut plan,
            "task",
            entry,
            Body::Task(Box::new(entry.spec.clone())),
            before,
            after,
        );
    }
    if prune {
        for (key, limit) in &current.limits {
            if !file_limits.contains_key(key.as_str()) {
                plan.changes.push(Change {
                    op: Op::Remove,
                    kind: "limit",
                    name: key.clone(),
                    before: Some(shown_limit(limit)),
                    after: None,
                    body: None,
                    place: None,
                });
            }
        }
    }
    plan.tasks_not_in_file = current
        .tasks
        .keys()
        .filter(|name| !config.tasks.iter().any(|t| &t.name == *name))
        .cloned()
        .collect();
    Ok(plan)
}

fn push<T>(
    plan: &mut Plan,
    kind: &'static str,
    entry: &Named<T>,
    body: Body,
    before: Option<Value>,
    after: Value,
) {
    let op = match &before {
        None => Op::Add,
        Some(b) if *b == after => {
            plan.unchanged += 1;
            return;
        }
        Some(_) => Op::Change,
    };
    plan.changes.push(Change {
        op,
        kind,
        name: entry.name.clone(),
        before,
        after: Some(after),
        body: Some(body),
        place: Some(Named {
            name: entry.name.clone(),
            spec: (),
            at: entry.at.clone(),
            fields: entry.fields.clone(),
        }),
    });
}

impl Plan {
    /// The plan for people: one line per change (`+` add, `~` change with before and after,
    /// `-` remove), then what stays.
    pub fn render(&self, dry_run: bool) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let compact = |v: &Option<Value>| v.as_ref().map_or(String::new(), Value::to_string);
        for c in &self.changes {
            let what = format!("{}s.{}", c.kind, toml_key(&c.name));
            let _ = match c.op {
                Op::Add => writeln!(out, "+ {what} {}", compact(&c.after)),
                Op::Change => writeln!(
                    out,
                    "~ {what} {} -> {}",
                    compact(&c.before),
                    compact(&c.after)
                ),
                Op::Remove => writeln!(out, "- {what} {}", compact(&c.before)),
            };
        }
        for name in &self.tasks_not_in_file {
            let _ = writeln!(
                out,
                "  tasks.{} is not in the file: left alone (tasks cannot be removed)",
                toml_key(name)
            );
        }
        let n = self.changes.len();
        let _ = writeln!(
            out,
            "{} {} change{}, {} unchanged",
            if dry_run { "would make" } else { "made" },
            n,
            if n == 1 { "" } else { "s" },
            self.unchanged
        );
        if dry_run {
            out.push_str("dry run: nothing was changed\n");
        }
        out
    }
}

/// Applies `config` to the server whose state this is, in-process (`serve --config`, SIGHUP).
///
/// # Errors
/// A definition the server refuses, or its store failing: the changes before it are made.
pub async fn apply_in_process(
    state: &crate::AppState,
    config: &Config,
) -> Result<Plan, ConfigError> {
    let queue = state.queue();
    let store =
        |e: &dyn fmt::Display| ConfigError(format!("applying {}: {e}", config.path.display()));
    let mut current = Current::default();
    let adaptive = queue.adaptive_limits().await.map_err(|e| store(&e))?;
    for info in state.limits().list().await.map_err(|e| store(&e))? {
        if info.namespace == tollgate::Namespace::Static {
            let declared = crate::api::limits::declared(&info, &adaptive);
            current.limits.insert(info.key, declared);
        }
    }
    for task in queue.tasks().await.map_err(|e| store(&e))? {
        current.tasks.insert(task.name.clone(), task.spec.clone());
    }
    let plan = plan(config, &current, false)?;
    for change in &plan.changes {
        let done = match &change.body {
            Some(Body::Limit(spec)) => queue
                .put_limit(&change.name, (**spec).clone())
                .await
                .map(drop),
            Some(Body::Task(spec)) => queue
                .put_task(&change.name, (**spec).clone())
                .await
                .map(drop),
            // `serve` never prunes.
            None => Ok(()),
        };
        done.map_err(|e| {
            let e = crate::ApiError::from(e);
            ConfigError(change.refused(e.field(), e.message()))
        })?;
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("tollgate.toml"), text)
    }

    const FILE: &str = r#"
[server]
listen = "127.0.0.1:7171"
max_body = "512KiB"

[limits.stripe-api]
algorithm = "gcra"
limit = 10
period = "1s"
burst = 5

[limits."tenant:acme"]
rate = "100/m"

[tasks.charge]
rate_limits = [{ static_key = "stripe-api" }]
max_attempts = 5
"#;

    #[test]
    fn a_file_reads_into_the_bodies_of_the_routes() {
        let c = parse(FILE).unwrap();
        assert_eq!(
            c.server.listen.as_ref().unwrap().get_ref(),
            "127.0.0.1:7171"
        );
        assert_eq!(
            c.server.max_body.as_ref().unwrap().get_ref().as_arg(),
            "512KiB"
        );
        let names: Vec<&str> = c.limits.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["stripe-api", "tenant:acme"]);
        assert_eq!(c.tasks[0].name, "charge");
        assert_eq!(c.tasks[0].spec.max_attempts, Some(5));
    }

    #[test]
    fn errors_name_file_line_column_and_field() {
        let cases: &[(&str, &str)] = &[
            (
                "[limits.a]\nlimit = 10\nperiod = \"1 fortnight\"\n",
                "tollgate.toml:3:10: limits.a.period:",
            ),
            (
                "[limits.a]\nlimit = 10\nperiod = \"1s\"\nbrust = 2\n",
                "tollgate.toml:4:",
            ),
            ("[limit.a]\nlimit = 1\n", "tollgate.toml:1:"),
            ("[server]\nlisten = 7070\n", "tollgate.toml:2:10"),
            ("[server]\nport = 7070\n", "tollgate.toml:2:1"),
            (
                "[tasks.t]\nmax_attempts = \"many\"\n",
                "tollgate.toml:2:16: tasks.t.max_attempts:",
            ),
            ("[limits.a\n", "tollgate.toml:1:"),
            (
                "[limits.a]\nalgorithm = \"barrier\"\nparties = 2\nttl = \"1m\"\n",
                "tollgate.toml:2:13: limits.a.algorithm:",
            ),
        ];
        for (text, start) in cases {
            let e = parse(text).unwrap_err().0;
            assert!(e.starts_with(start), "{text:?}\n{e}");
        }
        let e = parse("[limits.a]\nlimit = 10\nperiod = \"1s\"\nbrust = 2\n")
            .unwrap_err()
            .0;
        assert!(e.contains("brust"), "{e}");
    }

    #[test]
    fn a_plan_adds_changes_and_keeps_what_is_in_force() {
        let c = parse(FILE).unwrap();
        let empty = plan(&c, &Current::default(), false).unwrap();
        assert_eq!(empty.changes.len(), 3);
        assert!(empty.changes.iter().all(|ch| ch.op == Op::Add));
        // What the file says, already in force: nothing to do.
        let mut current = Current::default();
        for l in &c.limits {
            current
                .limits
                .insert(l.name.clone(), l.spec.to_declared().unwrap());
        }
        for t in &c.tasks {
            current.tasks.insert(t.name.clone(), t.spec.clone());
        }
        let same = plan(&c, &current, true).unwrap();
        assert!(same.changes.is_empty(), "{:?}", same.changes);
        assert_eq!(same.unchanged, 3);
        // A limit redefined on the server, a task with a default written out, a limit the
        // file does not name.
        let other: LimitSpec =
            serde_json::from_value(serde_json::json!({"limit": 3, "period": "1s"})).unwrap();
        current
            .limits
            .insert("tenant:acme".into(), other.to_declared().unwrap());
        current
            .limits
            .insert("old".into(), other.to_declared().unwrap());
        let kept = plan(&c, &current, false).unwrap();
        assert_eq!(kept.changes.len(), 1);
        assert_eq!(
            (kept.changes[0].op, kept.changes[0].name.as_str()),
            (Op::Change, "tenant:acme")
        );
        let pruned = plan(&c, &current, true).unwrap();
        assert!(
            pruned
                .changes
                .iter()
                .any(|ch| ch.op == Op::Remove && ch.name == "old")
        );
        assert!(pruned.render(true).contains("- limits.old"));
        assert!(pruned.render(true).contains("~ limits.\"tenant:acme\""));
    }

    #[test]
    fn an_adaptive_limit_with_the_same_bounds_keeps_its_limit_in_force() {
        let c = parse(
            "[limits.api]\nalgorithm = \"gcra\"\nperiod = \"1s\"\nadaptive = { min = 2, max = 50 }\n",
        )
        .unwrap();
        let learnt = |spec: serde_json::Value| {
            let spec: LimitSpec = serde_json::from_value(spec).unwrap();
            let mut current = Current::default();
            current
                .limits
                .insert("api".into(), spec.to_declared().unwrap());
            plan(&c, &current, false).unwrap()
        };
        // The server learnt 7 within the same bounds: applying the file again changes nothing.
        let same = learnt(
            serde_json::json!({"algorithm": "gcra", "limit": 7, "period": "1s",
            "burst": 1, "adaptive": {"min": 2, "max": 50}}),
        );
        assert!(same.changes.is_empty(), "{:?}", same.changes);
        // Other bounds on the server: the file's start again at its max.
        let moved = learnt(
            serde_json::json!({"algorithm": "gcra", "limit": 7, "period": "1s",
            "burst": 1, "adaptive": {"min": 2, "max": 40}}),
        );
        assert_eq!(moved.changes.len(), 1);
        assert_eq!(moved.changes[0].after.as_ref().unwrap()["limit"], 50);
        // Another period, the same bounds: changed, and the limit in force is kept.
        let period = learnt(
            serde_json::json!({"algorithm": "gcra", "limit": 7, "period": "2s",
            "burst": 1, "adaptive": {"min": 2, "max": 50}}),
        );
        assert_eq!(period.changes[0].after.as_ref().unwrap()["limit"], 7);
        assert_eq!(period.changes[0].after.as_ref().unwrap()["period"], "1s");
    }

    #[test]
    fn a_task_naming_a_limit_nobody_declares_is_refused_where_it_is_written() {
        let e = plan(
            &parse("[tasks.t]\nrate_limits = [{ static_key = \"nope\" }]\n").unwrap(),
            &Current::default(),
            false,
        )
        .unwrap_err()
        .0;
        assert!(
            e.starts_with("tollgate.toml:2:15: tasks.t.rate_limits"),
            "{e}"
        );
    }
}
