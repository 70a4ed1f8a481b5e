//! [`Expr`]: a CEL expression compiled once, keeping its source text, and the conversions
//! between JSON, CEL values, keys and counts (docs/design.md §3 "CEL values").

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use cel::common::ast::{EntryExpr, Expr as Node, IdedExpr};
use cel::objects::{Key, Map};
use cel::{Env, Program, Value};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::spec::SpecError;

/// The variables an expression may name, as the CEL context of a run binds them.
pub(crate) const VARIABLES: [&str; 3] = ["input", "additional_metadata", "event"];

/// The standard CEL environment, built once: building it registers every standard function.
fn env() -> &'static Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| Arc::new(Env::stdlib()))
}

/// Which of [`VARIABLES`] an expression uses, so a run converts only the JSON it needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Uses {
    pub input: bool,
    pub additional_metadata: bool,
    pub event: bool,
}

impl Uses {
    pub(crate) fn union(self, other: Uses) -> Uses {
        Uses {
            input: self.input || other.input,
            additional_metadata: self.additional_metadata || other.additional_metadata,
            event: self.event || other.event,
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Compilations on this thread, so tests can show that rendering never compiles.
    pub(crate) static COMPILATIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A CEL expression, parsed once when a task is defined, with its source text kept for
/// messages and for showing the definition back. It serializes as its source string.
///
/// Expressions can name `input`, `additional_metadata` and `event` (and the variables their
/// own macros bind, as in `input.items.exists(i, i.paid)`); any other name is rejected when
/// compiling, not when a run is enqueued.
///
/// ```
/// use tollgate::task::Expr;
/// let e = Expr::compile("'tier:' + additional_metadata.tier")?;
/// assert_eq!(e.source(), "'tier:' + additional_metadata.tier");
/// let bad = Expr::compile("input.user_id +").unwrap_err();
/// assert_eq!(bad.code, "invalid_expression");
/// let unknown = Expr::compile("user_id").unwrap_err();
/// assert!(unknown.message.contains("user_id"), "{unknown}");
/// # Ok::<(), tollgate::SpecError>(())
/// ```
#[derive(Clone)]
pub struct Expr {
    // Shared: a `Task` is cloned into every place that renders runs, the program is not.
    program: Arc<Program>,
    source: Arc<str>,
    uses: Uses,
}

impl Expr {
    /// Parses `source`.
    ///
    /// # Errors
    /// [`SpecError`] with code `invalid_expression` and an empty `field` (nest it with
    /// [`SpecError::within`]), quoting the source and the CEL parser's message, or naming an
    /// unknown variable.
    pub fn compile(source: &str) -> Result<Expr, SpecError> {
        #[cfg(test)]
        COMPILATIONS.with(|c| c.set(c.get() + 1));
        let invalid = |message: String| SpecError {
            code: "invalid_expression",
            field: String::new(),
            message,
        };
        let program = env()
            .compile(source)
            .map_err(|e| invalid(format!("invalid CEL expression {source:?}: {e}")))?;
        let mut uses = Uses::default();
        check_names(program.expression(), &mut Vec::new(), &mut uses).map_err(|name| {
            invalid(format!(
                "CEL expression {source:?} names `{name}`, which is not defined; expressions can use {}",
                VARIABLES.join(", ")
            ))
        })?;
        Ok(Expr {
            program: Arc::new(program),
            source: source.into(),
            uses,
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub(crate) fn uses(&self) -> Uses {
        self.uses
    }

    /// Evaluates against a context built by [`Scope::new`]; the error is CEL's message.
    pub(crate) fn eval(&self, scope: &Scope) -> Result<Value, String> {
        self.program.execute(&scope.0).map_err(|e| e.to_string())
    }
}

/// Finds the free names of `node`: each must be one of [`VARIABLES`] (recorded in `uses`) or a
/// type name (`int`, `string`, …); `bound` holds the names of the enclosing comprehensions.
/// Returns the first unknown name.
fn check_names(node: &IdedExpr, bound: &mut Vec<String>, uses: &mut Uses) -> Result<(), String> {
    match &node.expr {
        Node::Ident(name) => {
            // A leading dot names the root scope: `.input.x` is `input.x`.
            let name = name.strip_prefix('.').unwrap_or(name);
            match name {
                "input" => uses.input = true,
                "additional_metadata" => uses.additional_metadata = true,
                "event" => uses.event = true,
                // `@`-names are accumulators the parser's macros introduce.
                _ if name.starts_with('@') || bound.iter().any(|b| b == name) => {}
                _ if env().types().find_type(name).is_some() => {}
                _ => return Err(name.to_owned()),
            }
        }
        Node::Call(call) => {
            if let Some(target) = &call.target {
                check_names(target, bound, uses)?;
            }
            for arg in &call.args {
                check_names(arg, bound, uses)?;
            }
        }
        Node::Comprehension(c) => {
            check_names(&c.iter_range, bound, uses)?;
            check_names(&c.accu_init, bound, uses)?;
            let depth = bound.len();
            bound.push(c.iter_var.clone());
            bound.extend(c.iter_var2.iter().cloned());
            bound.push(c.accu_var.clone());
            for part in [&c.loop_cond, &c.loop_step, &c.result] {
                check_names(part, bound, uses)?;
            }
            bound.truncate(depth);
        }
        Node::List(list) => {
            for e in &list.elements {
                check_names(e, bound, uses)?;
            }
        }
        Node::Map(map) => {
            for entry in &map.entries {
                check_entry(&entry.expr, bound, uses)?;
            }
        }
        Node::Struct(s) => {
            for entry in &s.entries {
                check_entry(&entry.expr, bound, uses)?;
            }
        }
        Node::Select(select) => check_names(&select.operand, bound, uses)?,
        Node::Literal(_) | Node::Unspecified => {}
    }
    Ok(())
}

fn check_entry(entry: &EntryExpr, bound: &mut Vec<String>, uses: &mut Uses) -> Result<(), String> {
    match entry {
        EntryExpr::StructField(f) => check_names(&f.value, bound, uses),
        EntryExpr::MapEntry(m) => {
            check_names(&m.key, bound, uses)?;
            check_names(&m.value, bound, uses)
        }
    }
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Two expressions are equal when they were written the same way.
impl PartialEq for Expr {
    fn eq(&self, other: &Expr) -> bool {
        self.source == other.source
    }
}

impl Eq for Expr {}

impl Serialize for Expr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Expr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Expr, D::Error> {
        let source = String::deserialize(d)?;
        Expr::compile(&source).map_err(|e| serde::de::Error::custom(e.message))
    }
}

/// The CEL variables of one run, converted from JSON once and shared by every expression of
/// the task.
pub(crate) struct Scope(cel::Context<'static, 'static>);

impl Scope {
    /// Binds the variables `uses` names. `null` metadata and an absent event are empty maps,
    /// so `has(additional_metadata.tier)` is false rather than an error.
    pub(crate) fn new(
        uses: Uses,
        input: &serde_json::Value,
        additional_metadata: &serde_json::Value,
        event: Option<&serde_json::Value>,
    ) -> Scope {
        let mut ctx = cel::Context::with_env(Arc::clone(env()));
        let empty = || Value::Map(Map::from(HashMap::<Key, Value>::new()));
        if uses.input {
            ctx.add_variable_from_value("input", to_cel(input));
        }
        if uses.additional_metadata {
            let value = match additional_metadata {
                serde_json::Value::Null => empty(),
                v => to_cel(v),
            };
            ctx.add_variable_from_value("additional_metadata", value);
        }
        if uses.event {
            ctx.add_variable_from_value("event", event.map_or_else(empty, to_cel));
        }
        Scope(ctx)
    }
}

/// JSON to CEL. Integers become CEL `int` (`uint` only above `i64::MAX`): the `cel` crate's own
/// serde conversion makes every non-negative JSON integer a `uint`, and CEL does not mix `int`
/// and `uint` in arithmetic, so `input.weight * 2` would fail. Other numbers become `double`.
pub(crate) fn to_cel(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::UInt(u)
            } else {
                Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(a) => Value::List(Arc::new(a.iter().map(to_cel).collect())),
        serde_json::Value::Object(o) => Value::Map(Map {
            map: Arc::new(
                o.iter()
                    .map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v)))
                    .collect(),
            ),
        }),
    }
}

/// An integer value: `int`, `uint`, or a `double` with an integral value.
fn integer(v: &Value) -> Option<i128> {
    match v {
        Value::Int(i) => Some(i128::from(*i)),
        Value::UInt(u) => Some(i128::from(*u)),
        // The bounds are exact powers of two, so the comparisons are exact.
        Value::Float(f) if f.is_finite() && f.fract() == 0.0 && *f >= -(2f64.powi(63)) => {
            (*f < 2f64.powi(64)).then_some(*f as i128)
        }
        _ => None,
    }
}

/// How a value is described in messages: its type, and the value itself when short.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("the bool {b}"),
        Value::Float(f) => format!("the double {f}"),
        Value::String(s) => format!("the string {:?}", s.chars().take(64).collect::<String>()),
        Value::Int(i) => format!("the int {i}"),
        Value::UInt(u) => format!("the uint {u}"),
        other => format!("a {}", other.type_of()),
    }
}

/// A key: strings as themselves, integers (and integral doubles) in decimal.
pub(crate) fn to_key(v: &Value) -> Result<String, String> {
    if let Value::String(s) = v {
        return Ok(s.to_string());
    }
    integer(v)
        .map(|i| i.to_string())
        .ok_or_else(|| format!("gave {}; a key must be a string or an integer", describe(v)))
}

/// A count (`units`, `limit`): an integer from 1 to `max`.
pub(crate) fn to_count(v: &Value, max: u64) -> Result<u64, String> {
    let n = integer(v).ok_or_else(|| format!("gave {}; it must be an integer", describe(v)))?;
    if n < 1 {
        return Err(format!("gave {n}; it must be at least 1"));
    }
    u64::try_from(n)
        .ok()
        .filter(|n| *n <= max)
        .ok_or_else(|| format!("gave {n}; it must be at most {max}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(source: &str, input: serde_json::Value) -> Result<Value, String> {
        let e = Expr::compile(source).unwrap();
        e.eval(&Scope::new(e.uses(), &input, &json!({"tier": "pro"}), None))
    }

    #[test]
    fn json_integers_are_cel_ints_so_they_mix_with_literals() {
        assert_eq!(eval("input.w * 2", json!({"w": 3})), Ok(Value::Int(6)));
        assert_eq!(eval("input.w - 5", json!({"w": 3})), Ok(Value::Int(-2)));
        assert_eq!(
            eval("input.big", json!({"big": u64::MAX})),
            Ok(Value::UInt(u64::MAX))
        );
        assert_eq!(eval("input.f", json!({"f": 2.5})), Ok(Value::Float(2.5)));
    }

    #[test]
    fn records_which_variables_an_expression_uses() {
        let e = Expr::compile("'tier:' + additional_metadata.tier").unwrap();
        assert_eq!(
            e.uses(),
            Uses {
                additional_metadata: true,
                ..Uses::default()
            }
        );
        let e = Expr::compile("has(event.data) ? event.data.id : input.id").unwrap();
        assert!(e.uses().event && e.uses().input && !e.uses().additional_metadata);
    }

    #[test]
    fn macro_variables_and_type_names_are_not_unknown() {
        for ok in [
            "input.items.exists(i, i.paid)",
            "input.items.map(x, x * 2).size()",
            "[1, 2].all(x, x > 0) ? 'a' : 'b'",
            "type(input.id) == int ? string(input.id) : input.id",
            ".input.id",
            "{'a': input.id}.a",
        ] {
            Expr::compile(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, name) in [
            ("user_id", "user_id"),
            ("input.items.exists(i, i.paid) && i", "i"),
            ("[inputs.x]", "inputs"),
            ("metadata.tier", "metadata"),
        ] {
            let e = Expr::compile(bad).unwrap_err();
            assert_eq!(e.code, "invalid_expression");
            assert!(e.message.contains(&format!("`{name}`")), "{bad}: {e}");
        }
    }

    #[test]
    fn null_metadata_and_absent_event_are_empty_maps() {
        let e = Expr::compile("has(additional_metadata.tier) || has(event.name)").unwrap();
        let v = e.eval(&Scope::new(
            e.uses(),
            &json!({}),
            &serde_json::Value::Null,
            None,
        ));
        assert_eq!(v, Ok(Value::Bool(false)));
    }

    #[test]
    fn keys_render_strings_and_integers_only() {
        let s = |v: &str| Value::String(Arc::new(v.to_owned()));
        assert_eq!(to_key(&s("u1")), Ok("u1".to_owned()));
        assert_eq!(to_key(&Value::Int(-42)), Ok("-42".to_owned()));
        assert_eq!(to_key(&Value::UInt(u64::MAX)), Ok(u64::MAX.to_string()));
        assert_eq!(to_key(&Value::Float(42.0)), Ok("42".to_owned()));
        assert_eq!(to_key(&Value::Float(-0.0)), Ok("0".to_owned()));
        assert_eq!(
            to_key(&Value::Float(1e19)),
            Ok("10000000000000000000".to_owned())
        );
        for bad in [
            Value::Float(1.5),
            Value::Float(f64::NAN),
            Value::Float(f64::INFINITY),
            Value::Float(1e20),
            Value::Null,
            Value::Bool(true),
            Value::List(Arc::new(vec![Value::Int(1)])),
            to_cel(&json!({"a": 1})),
        ] {
            assert!(to_key(&bad).is_err(), "{bad:?}");
        }
        assert!(to_key(&Value::Null).unwrap_err().contains("null"));
        assert!(to_key(&to_cel(&json!([]))).unwrap_err().contains("list"));
        assert!(to_key(&to_cel(&json!({}))).unwrap_err().contains("map"));
    }

    #[test]
    fn counts_are_integers_from_one_to_max() {
        assert_eq!(to_count(&Value::Int(5), 10), Ok(5));
        assert_eq!(to_count(&Value::UInt(10), 10), Ok(10));
        assert_eq!(to_count(&Value::Float(3.0), 10), Ok(3));
        for bad in [
            Value::Int(0),
            Value::Int(-1),
            Value::Int(11),
            Value::Float(2.5),
            Value::String(Arc::new("5".to_owned())),
            Value::Bool(true),
            Value::Null,
        ] {
            assert!(to_count(&bad, 10).is_err(), "{bad:?}");
        }
        assert!(
            to_count(&Value::Int(0), 10)
                .unwrap_err()
                .contains("at least 1")
        );
        assert!(
            to_count(&Value::Int(11), 10)
                .unwrap_err()
                .contains("at most 10")
        );
    }

    #[test]
    fn serializes_as_its_source_and_deserializes_by_compiling() {
        let e = Expr::compile("input.user_id").unwrap();
        assert_eq!(serde_json::to_string(&e).unwrap(), r#""input.user_id""#);
        let back: Expr = serde_json::from_str(r#""input.user_id""#).unwrap();
        assert_eq!(back, e);
        assert!(serde_json::from_str::<Expr>(r#""input.""#).is_err());
    }
}
