//! Tasks (docs/design.md §3): compiling a task definition with its CEL expressions, and rendering a
//! run's keys, units and limits — every error named by its field, no run ever unlimited.

use serde_json::{Value, json};
use tollgate::task::{
    DEFAULT_LEASE_TIMEOUT, NumberOrExpr, OnLimit, RenderError, Rendered, RunContext, Task, TaskSpec,
};
use tollgate::{AcquireEntry, LimitSpec, LimitSpecExt, Limiter, SpecError, Target};
use tollgate_core::{Limit, Period, RateLimit};

/// The task of docs/design.md §3, verbatim.
fn design_example() -> Value {
    json!({
      "rate_limits": [
        {"static_key": "test-limit", "units": 1},
        {"dynamic_key": "input.user_id", "units": 1, "limit": 10, "period": "MINUTE"},
        {"dynamic_key": "'tier:' + additional_metadata.tier", "units": "input.weight",
         "limit": "additional_metadata.tier == 'pro' ? 100 : 10", "period": "1h", "algorithm": "gcra", "burst": 5}
      ],
      "concurrency": [{"key": "input.account_id", "limit": 2}],
      "on_limit": "requeue",
      "idempotency": {"key": "event.data.id", "period": "24h"},
      "triggers": ["intercom/company.updated"],
      "max_attempts": 3,
      "lease_timeout": "30s"
    })
}

fn limit(json: Value) -> Limit {
    serde_json::from_value::<LimitSpec>(json)
        .expect("a limit definition")
        .to_limit()
        .expect("a valid limit")
}

/// Declared limits: `test-limit` (100/m, capacity 100), `small` (capacity 2) and `slots`
/// (a concurrency limit).
fn declared(key: &str) -> Option<Limit> {
    match key {
        "test-limit" => Some(limit(json!({"rate": "100/m"}))),
        "small" => Some(limit(
            json!({"algorithm": "gcra", "rate": "10/s", "burst": 2}),
        )),
        "slots" => Some(limit(json!({"algorithm": "concurrency", "limit": 5}))),
        _ => None,
    }
}

fn compile(spec: Value) -> Result<Task, SpecError> {
    let spec: TaskSpec = serde_json::from_value(spec).expect("a task spec");
    Task::compile("sync-company", spec, &declared)
}

fn task(spec: Value) -> Task {
    compile(spec).unwrap_or_else(|e| panic!("{e}"))
}

fn render(task: &Task, input: Value) -> Result<Rendered, RenderError> {
    task.render(&RunContext::new(&input))
}

/// A dynamic key's task: `{"dynamic_key": key, …rest}` with limit 10 per minute by default.
fn dynamic(key: &str, rest: Value) -> Task {
    let mut entry = json!({"dynamic_key": key, "limit": 10, "period": "1m"});
    for (k, v) in rest.as_object().expect("an object") {
        entry[k] = v.clone();
    }
    task(json!({"rate_limits": [entry]}))
}

#[track_caller]
fn expression_error(e: RenderError, field: &str, source: &str, says: &str) {
    match &e {
        RenderError::Expression {
            field: f,
            source_text,
            message,
        } => {
            assert_eq!((f.as_str(), source_text.as_str()), (field, source), "{e}");
            assert!(message.contains(says), "{e}: should say {says:?}");
            assert_eq!(e.code(), "invalid_expression");
        }
        other => panic!("expected an expression error, got {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The docs/design.md §3 example

#[test]
fn design_example_compiles_with_its_settings() {
    let t = task(design_example());
    assert_eq!(t.name, "sync-company");
    assert_eq!(t.on_limit, OnLimit::Requeue);
    assert_eq!(t.max_attempts, 3);
    assert_eq!(t.lease_timeout, Period::from_secs(30).unwrap());
    assert_eq!(t.triggers, ["intercom/company.updated"]);
    assert_eq!(t.idempotency_period(), Some(Period::DAY));
}

#[test]
fn design_example_renders_keys_units_and_limits_for_pro_and_free() {
    let t = task(design_example());
    let input = json!({"user_id": "u1", "weight": 3, "account_id": "acct-7"});
    let event = json!({"name": "intercom/company.updated", "data": {"id": "c_42"}});

    let pro = json!({"tier": "pro"});
    let ctx = RunContext::new(&input)
        .with_metadata(&pro)
        .with_event(&event);
    let run = t.render(&ctx).unwrap();

    assert_eq!(run.rate.len(), 3);
    assert_eq!(
        (
            run.rate[0].key.as_str(),
            run.rate[0].dynamic.as_ref(),
            run.rate[0].units
        ),
        ("test-limit", None, 1)
    );
    assert_eq!(run.rate[1].key, "u1");
    assert_eq!(
        run.rate[1].dynamic,
        Some(LimitSpec::from_limit(&limit(
            json!({"limit": 10, "period": "MINUTE"})
        )))
    );
    assert_eq!(run.rate[2].key, "tier:pro");
    assert_eq!(run.rate[2].units, 3);
    let gcra = run.rate[2].dynamic.clone().unwrap();
    assert_eq!(
        (
            gcra.params.algorithm.as_deref(),
            gcra.limit,
            gcra.params.period.as_deref(),
            gcra.params.burst
        ),
        (Some("gcra"), Some(100), Some("1h"), Some(5))
    );
    assert_eq!(
        run.rate.iter().map(|r| r.spec_index).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert_eq!(run.concurrency.len(), 1);
    assert_eq!(
        (run.concurrency[0].key.as_str(), run.concurrency[0].limit),
        ("acct-7", 2)
    );
    assert_eq!(run.idempotency_key.as_deref(), Some("c_42"));

    let free = json!({"tier": "free"});
    let run = t
        .render(
            &RunContext::new(&input)
                .with_metadata(&free)
                .with_event(&event),
        )
        .unwrap();
    assert_eq!(run.rate[2].key, "tier:free");
    assert_eq!(run.rate[2].dynamic.as_ref().unwrap().limit, Some(10));
}

#[test]
fn design_example_entries_name_static_and_dynamic_namespaces() {
    let t = task(design_example());
    let input = json!({"user_id": 42, "weight": 1, "account_id": 1});
    let meta = json!({"tier": "pro"});
    let event = json!({"name": "intercom/company.updated", "data": {"id": 9}});
    let run = t
        .render(
            &RunContext::new(&input)
                .with_metadata(&meta)
                .with_event(&event),
        )
        .unwrap();
    let entries = run.entries().unwrap();
    assert_eq!(entries[0], AcquireEntry::new("test-limit", 1));
    assert_eq!(
        entries[1].target,
        Target::Dynamic(
            "42",
            serde_json::from_value::<LimitSpec>(json!({"limit": 10, "period": "1m"}))
                .unwrap()
                .to_rate_limit()
                .unwrap()
        )
    );
    assert!(matches!(
        entries[2].target,
        Target::Dynamic("tier:pro", RateLimit::Gcra(_))
    ));
    // Integers render in decimal: keys, concurrency keys and idempotency keys alike.
    assert_eq!(run.concurrency[0].key, "1");
    assert_eq!(run.idempotency_key.as_deref(), Some("9"));
}

#[test]
fn event_is_an_empty_map_for_a_run_enqueued_directly() {
    // The example's idempotency key reads event.data.id: a run without an event cannot render
    // it, and is rejected rather than run without deduplication.
    let t = task(design_example());
    let input = json!({"user_id": "u1", "weight": 1, "account_id": 1});
    let meta = json!({"tier": "pro"});
    let e = t
        .render(&RunContext::new(&input).with_metadata(&meta))
        .unwrap_err();
    expression_error(e, "idempotency.key", "event.data.id", "data");

    let t = dynamic("has(event.name) ? event.name : 'direct'", json!({}));
    assert_eq!(render(&t, json!({})).unwrap().rate[0].key, "direct");
}

#[test]
fn a_dynamic_key_never_touches_the_static_limit_of_that_name() {
    let limiter = Limiter::new();
    limiter
        .upsert("stripe-api", limit(json!({"rate": "1/m"})))
        .unwrap();
    let declared = |key: &str| limiter.get(key).unwrap().map(|info| info.limit);
    let spec: TaskSpec = serde_json::from_value(json!({"rate_limits": [
        {"dynamic_key": "'stripe-api'", "limit": 5, "period": "1m"}
    ]}))
    .unwrap();
    let t = Task::compile("charge", spec, &declared).unwrap();

    // The static limit is used up…
    assert!(
        limiter
            .try_acquire(&[AcquireEntry::new("stripe-api", 1)])
            .unwrap()
            .allowed
    );
    assert!(
        !limiter
            .try_acquire(&[AcquireEntry::new("stripe-api", 1)])
            .unwrap()
            .allowed
    );
    // …and the dynamic key of the same name still has all 5 of its own.
    let run = render(&t, json!({})).unwrap();
    assert_eq!(run.rate[0].key, "stripe-api");
    for _ in 0..5 {
        assert!(
            limiter
                .try_acquire(&run.entries().unwrap())
                .unwrap()
                .allowed
        );
    }
    assert!(
        !limiter
            .try_acquire(&run.entries().unwrap())
            .unwrap()
            .allowed
    );
}

// ---------------------------------------------------------------------------------------------
// The JSON form

#[test]
fn spec_round_trips_to_the_same_json() {
    let spec: TaskSpec = serde_json::from_value(design_example()).unwrap();
    assert_eq!(serde_json::to_value(&spec).unwrap(), design_example());
    assert_eq!(
        spec.rate_limits[2].units,
        Some(NumberOrExpr::Expr("input.weight".into()))
    );
    assert_eq!(spec.rate_limits[1].limit, Some(NumberOrExpr::Number(10)));
    // The compiled task keeps the spec as given, for GET /v1/tasks/{name}.
    let t = Task::compile("t", spec.clone(), &declared).unwrap();
    assert_eq!(t.spec, spec);
}

#[test]
fn empty_spec_means_defaults_and_serializes_back_empty() {
    let t = task(json!({}));
    assert_eq!(t.on_limit, OnLimit::Requeue);
    assert_eq!(t.max_attempts, 3);
    assert_eq!(t.lease_timeout, DEFAULT_LEASE_TIMEOUT);
    assert_eq!(t.idempotency_period(), None);
    assert!(t.triggers.is_empty());
    assert_eq!(serde_json::to_value(&t.spec).unwrap(), json!({}));
    assert_eq!(render(&t, json!(null)).unwrap(), Rendered::default());

    let t = task(json!({"on_limit": "skip", "max_attempts": 100, "lease_timeout": "2m"}));
    assert_eq!(
        (t.on_limit, t.max_attempts, t.lease_timeout),
        (OnLimit::Skip, 100, Period::from_secs(120).unwrap())
    );
}

#[test]
fn unknown_fields_are_rejected_everywhere() {
    for (json, field) in [
        (json!({"rate_limitz": []}), "rate_limitz"),
        // Inngest's `rate_limit` is one rate; a list is taken for `rate_limits` mistyped.
        (
            json!({"rate_limit": []}),
            "a task's list of limits is `rate_limits`",
        ),
        (
            json!({"rate_limits": [{"dynamic_key": "input.a", "limit": 1, "period": "1s", "brust": 2}]}),
            "brust",
        ),
        (
            json!({"concurrency": [{"key": "input.a", "limit": 1, "ttl": "1s"}]}),
            "ttl",
        ),
        (
            json!({"idempotency": {"key": "input.a", "period": "1h", "scope": "task"}}),
            "scope",
        ),
    ] {
        let e = serde_json::from_value::<TaskSpec>(json.clone()).unwrap_err();
        assert!(e.to_string().contains(field), "{json}: {e}");
    }
    for bad in [
        json!({"on_limit": "drop"}),
        json!({"rate_limits": [{"static_key": "test-limit", "units": -1}]}),
        json!({"rate_limits": [{"static_key": "test-limit", "units": 1.5}]}),
        json!({"concurrency": [{"key": "input.a"}]}),
        json!({"max_attempts": -1}),
    ] {
        assert!(
            serde_json::from_value::<TaskSpec>(bad.clone()).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn rendered_runs_serialize_for_storage() {
    let t = task(design_example());
    let input = json!({"user_id": "u1", "weight": 2, "account_id": 1});
    let meta = json!({"tier": "free"});
    let event = json!({"name": "x", "data": {"id": "e1"}});
    let run = t
        .render(
            &RunContext::new(&input)
                .with_metadata(&meta)
                .with_event(&event),
        )
        .unwrap();
    let back: Rendered = serde_json::from_str(&serde_json::to_string(&run).unwrap()).unwrap();
    assert_eq!(back, run);
    assert_eq!(back.entries().unwrap(), run.entries().unwrap());
}

// ---------------------------------------------------------------------------------------------
// Compile errors: each names its field and a stable code

#[test]
fn compile_errors_name_the_field_and_code() {
    let ok_dynamic = json!({"dynamic_key": "input.user_id", "limit": 10, "period": "1m"});
    for (spec, code, field) in [
        // CEL that does not parse.
        (
            json!({"rate_limits": [ok_dynamic, {"dynamic_key": "input.user_id +", "limit": 1, "period": "1s"}]}),
            "invalid_expression",
            "rate_limits[1].dynamic_key",
        ),
        (
            json!({"rate_limits": [{"dynamic_key": "input.a", "units": "input.(", "limit": 1, "period": "1s"}]}),
            "invalid_expression",
            "rate_limits[0].units",
        ),
        (
            json!({"rate_limits": [{"dynamic_key": "input.a", "limit": "1 +", "period": "1s"}]}),
            "invalid_expression",
            "rate_limits[0].limit",
        ),
        (
            json!({"rate_limits": [{"static_key": "test-limit", "units": "'"}]}),
            "invalid_expression",
            "rate_limits[0].units",
        ),
        (
            json!({"concurrency": [{"key": "input.", "limit": 1}]}),
            "invalid_expression",
            "concurrency[0].key",
        ),
        (
            json!({"concurrency": [{"key": "input.a", "limit": "input.n >"}]}),
            "invalid_expression",
            "concurrency[0].limit",
        ),
        (
            json!({"idempotency": {"key": "", "period": "1h"}}),
            "invalid_expression",
            "idempotency.key",
        ),
        // A name that is not a context variable, caught when defining, not per run.
        (
            json!({"rate_limits": [{"dynamic_key": "user_id", "limit": 1, "period": "1s"}]}),
            "invalid_expression",
            "rate_limits[0].dynamic_key",
        ),
        // Static keys.
        (
            json!({"rate_limits": [{"static_key": "nope", "units": 1}]}),
            "unknown_limit",
            "rate_limits[0].static_key",
        ),
        (
            json!({"rate_limits": [{"static_key": "slots"}]}),
            "wrong_algorithm",
            "rate_limits[0].static_key",
        ),
        (
            json!({"rate_limits": [{"static_key": "test-limit", "period": "1m"}]}),
            "invalid_field",
            "rate_limits[0].period",
        ),
        (
            json!({"rate_limits": [{"static_key": "test-limit", "limit": 5}]}),
            "invalid_field",
            "rate_limits[0].limit",
        ),
        // Exactly one of static_key / dynamic_key.
        (
            json!({"rate_limits": [{"static_key": "test-limit", "dynamic_key": "input.a"}]}),
            "invalid_field",
            "rate_limits[0]",
        ),
        (
            json!({"rate_limits": [ok_dynamic, {"units": 1}]}),
            "missing_field",
            "rate_limits[1]",
        ),
        // Constants out of range.
        (
            json!({"rate_limits": [{"static_key": "test-limit", "units": 0}]}),
            "invalid_field",
            "rate_limits[0].units",
        ),
        (
            json!({"rate_limits": [{"static_key": "test-limit", "units": 5_000_000_000u64}]}),
            "invalid_field",
            "rate_limits[0].units",
        ),
        (
            json!({"rate_limits": [{"dynamic_key": "input.a", "limit": 0, "period": "1s"}]}),
            "invalid_field",
            "rate_limits[0].limit",
        ),
        (
            json!({"concurrency": [{"key": "input.a", "limit": 0}]}),
            "invalid_field",
            "concurrency[0].limit",
        ),
        (json!({"max_attempts": 0}), "invalid_field", "max_attempts"),
        (
            json!({"max_attempts": 101}),
            "invalid_field",
            "max_attempts",
        ),
        // Periods and the rest of a dynamic key's definition.
        (
            json!({"rate_limits": [{"dynamic_key": "input.a", "limit": 1, "period": "10 apples"}]}),
            "invalid_period",
            "rate_limits[0].period",
        ),
        (
            json!({"rate_limits": [{"dynamic_key": "input.a", "limit": "input.l", "period": "soon"}]}),
            "invalid_period",
            "rate_limits[0].period",
        ),
        (
            json!({"rate_limits": [{"dynamic_key": "input.a", "limit": 1}]}),
            "missing_field",
            "rate_limits[0].period",
        ),
        (
            json!({"rate_limits": [{"dynamic_key": "input.a"}]}),
            "missing_field",
            "rate_limits[0].limit",
        ),
        (
            json!({"rate_limits": [{"dynamic_key": "input.a", "limit": 1, "period": "1s", "algorithm": "concurrency"}]}),
            "invalid_field",
            "rate_limits[0].period",
        ),
        (
            json!({"rate_limits": [{"dynamic_key": "input.a", "limit": 1, "period": "1s", "burst": 3}]}),
            "invalid_field",
            "rate_limits[0].burst",
        ),
        (
            json!({"idempotency": {"key": "input.id", "period": "a day"}}),
            "invalid_period",
            "idempotency.period",
        ),
        (
            json!({"lease_timeout": "half a minute"}),
            "invalid_period",
            "lease_timeout",
        ),
        (
            json!({"triggers": ["ok", ""]}),
            "invalid_field",
            "triggers[1]",
        ),
        // Constant units beyond a constant capacity: an error now, not a run that never starts.
        (
            json!({"rate_limits": [{"dynamic_key": "input.a", "units": 11, "limit": 10, "period": "1m"}]}),
            "insufficient_capacity",
            "rate_limits[0].units",
        ),
        (
            json!({"rate_limits": [{"dynamic_key": "input.a", "units": 6, "limit": 100, "period": "1m", "algorithm": "gcra", "burst": 5}]}),
            "insufficient_capacity",
            "rate_limits[0].units",
        ),
        (
            json!({"rate_limits": [{"static_key": "small", "units": 3}]}),
            "insufficient_capacity",
            "rate_limits[0].units",
        ),
    ] {
        let e = compile(spec.clone()).expect_err(&spec.to_string());
        assert_eq!((e.code, e.field.as_str()), (code, field), "{spec}: {e}");
    }
}

#[test]
fn a_bad_expression_error_quotes_the_source_and_the_cel_error() {
    let e = compile(json!({"rate_limits": [
        {"dynamic_key": "input.user_id", "limit": 10, "period": "1m"},
        {"dynamic_key": "input.user_id +", "limit": 10, "period": "1m"},
    ]}))
    .unwrap_err();
    assert!(e.message.contains("\"input.user_id +\""), "{e}");
    assert!(e.message.contains("Syntax error"), "{e}");
    assert!(
        e.to_string().starts_with("rate_limits[1].dynamic_key: "),
        "{e}"
    );

    let e = compile(json!({"concurrency": [{"key": "metadata.account", "limit": 1}]})).unwrap_err();
    assert!(e.message.contains("`metadata`"), "{e}");
    assert!(
        e.message.contains("input, additional_metadata, event"),
        "{e}"
    );
}

#[test]
fn units_equal_to_capacity_and_cel_units_compile() {
    task(json!({"rate_limits": [{"static_key": "small", "units": 2}]}));
    task(json!({"rate_limits": [{"static_key": "small", "units": "input.n"}]}));
    task(
        json!({"rate_limits": [{"dynamic_key": "input.a", "units": 10, "limit": 10, "period": "1m"}]}),
    );
    // With a CEL limit on a window algorithm the capacity is only known per run.
    task(
        json!({"rate_limits": [{"dynamic_key": "input.a", "units": 50, "limit": "input.l", "period": "1m"}]}),
    );
    // Other rate algorithms and their fields.
    task(json!({"rate_limits": [
        {"dynamic_key": "input.a", "algorithm": "token_bucket", "capacity": 20, "refill": "5/s"},
        {"dynamic_key": "input.a", "algorithm": "fixed_window", "rate": "5/s", "align": "clock"},
        {"dynamic_key": "input.a", "limit": "input.l", "period": "1m", "precision": 10},
    ]}));
}

// ---------------------------------------------------------------------------------------------
// Render errors: the run is rejected, naming the field and the expression

#[test]
fn a_missing_field_rejects_the_run_never_runs_it_unlimited() {
    let t = task(design_example());
    let meta = json!({"tier": "pro"});
    let event = json!({"data": {"id": 1}});
    let input = json!({"weight": 1, "account_id": 1});
    let e = t
        .render(
            &RunContext::new(&input)
                .with_metadata(&meta)
                .with_event(&event),
        )
        .unwrap_err();
    expression_error(e, "rate_limits[1].dynamic_key", "input.user_id", "user_id");

    let input = json!({"user_id": "u1", "weight": 1, "account_id": 1});
    let e = t
        .render(&RunContext::new(&input).with_event(&event))
        .unwrap_err();
    expression_error(
        e,
        "rate_limits[2].dynamic_key",
        "'tier:' + additional_metadata.tier",
        "tier",
    );

    let e = t
        .render(
            &RunContext::new(&json!("not an object"))
                .with_metadata(&meta)
                .with_event(&event),
        )
        .unwrap_err();
    assert_eq!(e.field(), "rate_limits[1].dynamic_key");
}

#[test]
fn keys_must_render_to_a_string_or_an_integer() {
    let t = dynamic("input.k", json!({}));
    for (value, says) in [
        (json!([1, 2]), "list"),
        (json!({"a": 1}), "map"),
        (json!(null), "null"),
        (json!(true), "bool"),
        (json!(1.5), "double 1.5"),
    ] {
        let e = render(&t, json!({"k": value})).unwrap_err();
        expression_error(e, "rate_limits[0].dynamic_key", "input.k", says);
    }
    for (value, key) in [
        (json!("u1"), "u1"),
        (json!(42), "42"),
        (json!(-5), "-5"),
        (json!(42.0), "42"),
        (json!(u64::MAX), "18446744073709551615"),
    ] {
        assert_eq!(render(&t, json!({"k": value})).unwrap().rate[0].key, key);
    }
    // Concurrency and idempotency keys follow the same rules.
    let t = task(json!({
        "concurrency": [{"key": "input.c", "limit": 1}],
        "idempotency": {"key": "input.i", "period": "1h"},
    }));
    let e = render(&t, json!({"c": [1], "i": "x"})).unwrap_err();
    expression_error(e, "concurrency[0].key", "input.c", "list");
    let e = render(&t, json!({"c": 1, "i": {"id": 1}})).unwrap_err();
    expression_error(e, "idempotency.key", "input.i", "map");
    let run = render(&t, json!({"c": 3.0, "i": "x"})).unwrap();
    assert_eq!(
        (
            run.concurrency[0].key.as_str(),
            run.idempotency_key.as_deref()
        ),
        ("3", Some("x"))
    );
}

#[test]
fn rendered_keys_must_pass_the_key_check() {
    let t = dynamic("input.k", json!({}));
    for (key, says) in [
        ("x".repeat(513), "at most 512 bytes"),
        (String::new(), "must not be empty"),
        ("a\nb".to_owned(), "control characters"),
    ] {
        let e = render(&t, json!({"k": key})).unwrap_err();
        expression_error(e, "rate_limits[0].dynamic_key", "input.k", says);
    }
    assert_eq!(
        render(&t, json!({"k": "x".repeat(512)})).unwrap().rate[0]
            .key
            .len(),
        512
    );
}

#[test]
fn units_and_limits_must_render_to_an_integer_of_at_least_one() {
    let t = dynamic("'k'", json!({"units": "input.u"}));
    for (value, says) in [
        (json!(0), "at least 1"),
        (json!(-3), "at least 1"),
        (json!(1.5), "integer"),
        (json!("3"), "integer"),
        (json!(null), "integer"),
        (json!(true), "integer"),
        (json!([1]), "integer"),
        (json!(5_000_000_000u64), "at most"),
    ] {
        let e = render(&t, json!({"u": value})).unwrap_err();
        expression_error(e, "rate_limits[0].units", "input.u", says);
    }
    assert_eq!(render(&t, json!({"u": 2.0})).unwrap().rate[0].units, 2);

    let t = dynamic("'k'", json!({"limit": "input.l"}));
    for (value, says) in [
        (json!(0), "at least 1"),
        (json!(2_000_000_000u64), "at most 1000000000"),
        (json!("10"), "integer"),
    ] {
        let e = render(&t, json!({"l": value})).unwrap_err();
        expression_error(e, "rate_limits[0].limit", "input.l", says);
    }
    let run = render(&t, json!({"l": 7})).unwrap();
    assert_eq!(run.rate[0].dynamic.as_ref().unwrap().limit, Some(7));

    let t = task(json!({"concurrency": [{"key": "'k'", "limit": "input.n"}]}));
    let e = render(&t, json!({"n": 0})).unwrap_err();
    expression_error(e, "concurrency[0].limit", "input.n", "at least 1");
    let e = render(&t, json!({"n": 2_000_000})).unwrap_err();
    expression_error(e, "concurrency[0].limit", "input.n", "at most 1000000");
    assert_eq!(render(&t, json!({"n": 4})).unwrap().concurrency[0].limit, 4);

    // A static key's units too.
    let t = task(json!({"rate_limits": [{"static_key": "test-limit", "units": "input.n - 1"}]}));
    let e = render(&t, json!({"n": 1})).unwrap_err();
    expression_error(e, "rate_limits[0].units", "input.n - 1", "at least 1");
    assert_eq!(render(&t, json!({"n": 3})).unwrap().rate[0].units, 2);
}

#[test]
fn cel_errors_while_evaluating_reject_the_run() {
    let t = dynamic("string(10 / input.d)", json!({}));
    let e = render(&t, json!({"d": 0})).unwrap_err();
    expression_error(
        e,
        "rate_limits[0].dynamic_key",
        "string(10 / input.d)",
        "failed",
    );
    assert_eq!(render(&t, json!({"d": 5})).unwrap().rate[0].key, "2");
}

#[test]
fn units_beyond_a_rendered_capacity_fail_the_run() {
    let t = task(design_example());
    let meta = json!({"tier": "pro"});
    let event = json!({"data": {"id": 1}});
    // gcra burst 5: 6 units can never be admitted.
    let input = json!({"user_id": "u1", "weight": 6, "account_id": 1});
    let e = t
        .render(
            &RunContext::new(&input)
                .with_metadata(&meta)
                .with_event(&event),
        )
        .unwrap_err();
    assert_eq!(
        e,
        RenderError::InsufficientCapacity {
            field: "rate_limits[2].units".into(),
            key: "tier:pro".into(),
            units: 6,
            capacity: 5
        }
    );
    assert_eq!(e.code(), "insufficient_capacity");

    // A rendered window limit below constant units.
    let t = dynamic("input.k", json!({"units": 4, "limit": "input.l"}));
    let e = render(&t, json!({"k": "a", "l": 3})).unwrap_err();
    assert!(
        matches!(&e, RenderError::InsufficientCapacity { units: 4, capacity: 3, key, .. } if key == "a"),
        "{e}"
    );
    assert!(
        e.to_string().contains("4 units can never be admitted"),
        "{e}"
    );
    render(&t, json!({"k": "a", "l": 4})).unwrap();
}

#[test]
fn an_expression_error_wins_over_a_capacity_problem() {
    // Rejecting the enqueue (the request is wrong) beats failing the run.
    let t = task(json!({
        "rate_limits": [{"dynamic_key": "'k'", "units": "input.u", "limit": 1, "period": "1s"}],
        "concurrency": [{"key": "input.missing", "limit": 1}],
    }));
    let e = render(&t, json!({"u": 2})).unwrap_err();
    assert_eq!(e.code(), "invalid_expression");
    assert_eq!(e.field(), "concurrency[0].key");
}

#[test]
fn render_error_messages_name_field_and_expression() {
    let t = dynamic("input.user_id", json!({}));
    let e = render(&t, json!({})).unwrap_err();
    let text = e.to_string();
    assert!(text.starts_with("rate_limits[0].dynamic_key: "), "{text}");
    assert!(text.contains("\"input.user_id\""), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Compile once, render many

#[test]
fn one_compiled_task_renders_many_runs_from_many_threads() {
    // Not a timing test (docs/design.md §6: budgets are benchmarks): it pins that a compiled task is
    // shared across threads and renders each run from its own input. The lib's unit tests show
    // that no rendering compiles CEL again.
    let t = task(design_example());
    let meta = json!({"tier": "pro"});
    std::thread::scope(|s| {
        for thread in 0..4 {
            let t = &t;
            let meta = &meta;
            s.spawn(move || {
                for n in 0..5_000 {
                    let user = format!("u{thread}-{n}");
                    let input = json!({"user_id": user, "weight": 1 + n % 5, "account_id": n});
                    let event = json!({"data": {"id": n}});
                    let run = t
                        .render(
                            &RunContext::new(&input)
                                .with_metadata(meta)
                                .with_event(&event),
                        )
                        .unwrap();
                    assert_eq!(run.rate[1].key, user);
                    assert_eq!(u64::from(run.rate[2].units), 1 + n % 5);
                    assert_eq!(run.concurrency[0].key, n.to_string());
                }
            });
        }
    });
}

#[test]
fn a_task_with_no_expressions_ignores_its_input() {
    // Only the variables a task names are converted: a huge or odd input costs nothing and is
    // never an error when unused.
    let t = task(
        json!({"rate_limits": [{"static_key": "test-limit", "units": 2}],
                        "concurrency": [{"key": "'global'", "limit": 3}]}),
    );
    let big = json!({"rows": vec![json!({"a": [1, 2, 3]}); 10_000]});
    let run = render(&t, big).unwrap();
    assert_eq!(run.rate[0].units, 2);
    assert_eq!(run.concurrency[0].key, "global");
}

#[test]
fn limits_of_other_kinds_are_not_rate_limits() {
    // A declared concurrency limit cannot be acquired as a rate limit.
    let e = compile(json!({"rate_limits": [{"static_key": "slots", "units": 1}]})).unwrap_err();
    assert!(e.message.contains("concurrency"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Keys of the task's own: `"scope": "task"` and `throttle` (docs/design.md §3.1)

#[test]
fn a_task_scoped_key_is_the_tasks_own() {
    let entry = json!({"rate_limits": [
        {"dynamic_key": "input.user", "limit": 1, "period": "1s", "scope": "task"},
        {"dynamic_key": "input.user", "limit": 1, "period": "1s", "scope": "global"},
        {"dynamic_key": "input.user", "limit": 1, "period": "1s"}]});
    let spec: TaskSpec = serde_json::from_value(entry).unwrap();
    let keys = |name: &str| -> Vec<String> {
        let t = Task::compile(name, spec.clone(), &declared).unwrap();
        render(&t, json!({"user": "u1"}))
            .unwrap()
            .rate
            .into_iter()
            .map(|r| r.key)
            .collect()
    };
    assert_eq!(keys("a"), ["task:a:u1", "u1", "u1"]);
    assert_eq!(keys("b"), ["task:b:u1", "u1", "u1"]);
}

#[test]
fn a_throttle_is_a_gcra_limit_of_the_task_with_a_burst_of_one() {
    let one = |throttle: Value, input: Value| {
        let t = task(json!({"rate_limits": [{"static_key": "test-limit"}], "throttle": throttle}));
        let run = render(&t, input).unwrap();
        assert_eq!(run.rate.len(), 2, "rate_limits, then the throttle");
        assert_eq!(run.rate[1].spec_index, 1);
        assert_eq!(run.rate[1].units, 1);
        (
            run.rate[1].key.clone(),
            run.rate[1].dynamic.clone().unwrap(),
        )
    };
    // Celery's form: one limit for the task, evenly spaced.
    let (key, spec) = one(json!("10/m"), json!({}));
    assert_eq!(key, "task:sync-company:throttle");
    assert_eq!(
        spec,
        LimitSpec::from_limit(&limit(
            json!({"algorithm": "gcra", "rate": "10/m", "burst": 1})
        ))
    );
    // Inngest's: limit 10 per hour is one run every 6 minutes; per key when given.
    let (key, spec) = one(
        json!({"limit": 10, "period": "1h", "key": "input.user"}),
        json!({"user": "u1"}),
    );
    assert_eq!(key, "task:sync-company:throttle:u1");
    let Limit::Rate(RateLimit::Gcra(g)) = spec.to_limit().unwrap() else {
        panic!("{spec:?}")
    };
    assert_eq!(
        (g.burst(), g.emission_interval()),
        (1, tollgate_core::Nanos::from_secs(360))
    );
    let (_, spec) = one(json!({"limit": 10, "period": "1h", "burst": 3}), json!({}));
    assert_eq!(
        spec,
        LimitSpec::from_limit(&limit(
            json!({"algorithm": "gcra", "limit": 10, "period": "1h", "burst": 3})
        ))
    );
}

#[test]
fn throttle_and_scope_errors_name_their_field() {
    let err = |spec: Value| compile(spec).map(drop).unwrap_err();
    let e = err(json!({"throttle": "10/m", "on_limit": "skip"}));
    assert_eq!(
        (e.code, e.field.as_str()),
        ("invalid_field", "throttle"),
        "{e}"
    );
    assert!(e.message.contains("on_limit \"skip\" drops them"), "{e}");
    let e = err(json!({"throttle": "ten a minute"}));
    assert_eq!(
        (e.code, e.field.as_str()),
        ("invalid_rate", "throttle.rate"),
        "{e}"
    );
    let e = err(json!({"throttle": {"limit": 10, "period": "soon"}}));
    assert_eq!(
        (e.code, e.field.as_str()),
        ("invalid_period", "throttle.period"),
        "{e}"
    );
    let e = err(json!({"throttle": {"limit": 10, "period": "1m", "key": "input."}}));
    assert_eq!(
        (e.code, e.field.as_str()),
        ("invalid_expression", "throttle.key"),
        "{e}"
    );
    let e = err(json!({"rate_limits": [{"static_key": "test-limit", "scope": "task"}]}));
    assert_eq!(
        (e.code, e.field.as_str()),
        ("invalid_field", "rate_limits[0].scope"),
        "{e}"
    );
    // A key expression that fails names the throttle's field.
    let t = task(json!({"throttle": {"limit": 1, "period": "1s", "key": "input.user"}}));
    expression_error(
        render(&t, json!({})).unwrap_err(),
        "throttle.key",
        "input.user",
        "No such key",
    );
}

#[test]
fn a_rate_limit_renders_a_gate_of_the_tasks_own_decided_apart_from_rate_limits() {
    let t = task(json!({"rate_limits": [{"static_key": "test-limit"}],
                        "rate_limit": {"limit": 10, "period": "1h", "key": "input.company"}}));
    let run = render(&t, json!({"company": "c1"})).unwrap();
    assert_eq!(
        run.rate.len(),
        1,
        "the gate is not among the limits a lease takes"
    );
    assert_eq!(run.gate.len(), 1);
    assert_eq!(run.gate[0].key, "task:sync-company:rate_limit:c1");
    assert_eq!(
        run.gate[0].dynamic,
        Some(LimitSpec::from_limit(&limit(
            json!({"algorithm": "gcra", "limit": 10, "period": "1h", "burst": 1})
        )))
    );
    let plain = task(json!({"rate_limit": "5/m", "on_limit": "skip"}));
    assert_eq!(
        render(&plain, json!({})).unwrap().gate[0].key,
        "task:sync-company:rate_limit"
    );
    let e = compile(json!({"rate_limit": {"limit": 1, "period": "1m", "key": "input."}}))
        .map(drop)
        .unwrap_err();
    assert_eq!(
        (e.code, e.field.as_str()),
        ("invalid_expression", "rate_limit.key"),
        "{e}"
    );
    let t = task(json!({"rate_limit": {"limit": 1, "period": "1s", "key": "input.company"}}));
    expression_error(
        render(&t, json!({})).unwrap_err(),
        "rate_limit.key",
        "input.company",
        "No such key",
    );
}

#[test]
fn a_retry_backoff_grows_by_its_factor_up_to_its_max() {
    let t = task(json!({"retry": {"backoff": "1s", "factor": 3, "max": "20s"}}));
    let r = t.retry.unwrap();
    let delays: Vec<u64> = (1..=5).map(|a| r.delay_micros(a) / 1_000_000).collect();
    assert_eq!(delays, [1, 3, 9, 20, 20]);
    let constant = task(json!({"retry": {"backoff": "500ms", "factor": 1}}))
        .retry
        .unwrap();
    assert_eq!(constant.delay_micros(7), 500_000);
    // Without a max, a year at most.
    let unbounded = task(json!({"retry": {"backoff": "1h", "factor": 1000}}))
        .retry
        .unwrap();
    assert_eq!(
        unbounded.delay_micros(50),
        tollgate::task::MAX_RETRY_DELAY_MICROS
    );
    assert!(task(json!({})).retry.is_none());
    for (spec, field) in [
        (json!({"retry": {"backoff": "soon"}}), "retry.backoff"),
        (
            json!({"retry": {"backoff": "1s", "factor": 0}}),
            "retry.factor",
        ),
        (
            json!({"retry": {"backoff": "1s", "max": "1ms"}}),
            "retry.max",
        ),
    ] {
        let e = compile(spec.clone()).map(drop).unwrap_err();
        assert_eq!(e.field, field, "{spec}: {e}");
    }
}
