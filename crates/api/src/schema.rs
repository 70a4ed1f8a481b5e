//! JSON Schemas of the bodies whose serde is written by hand (feature `schema`): the rest derive
//! theirs. The server's OpenAPI document is built from these (docs/http-api.md).

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::{Map, Value, json};

use crate::{
    AcquireEntry, AdaptiveSpec, ErrorCode, KeyScope, LimitSpec, NumberOrExpr, RateLimitUse,
    Throttle, ThrottleSpec,
};

/// The rate parameters of [`crate::LimitParams`], as properties.
fn params() -> Map<String, Value> {
    let text = |d: &str| json!({"type": "string", "description": d});
    let count = |d: &str| json!({"type": "integer", "minimum": 0, "description": d});
    let mut p = Map::new();
    p.insert(
        "algorithm".into(),
        json!({"type": "string", "enum": ["sliding_window", "fixed_window", "gcra", "token_bucket", "concurrency", "barrier"],
               "description": "default sliding_window"}),
    );
    p.insert(
        "rate".into(),
        text("limit and period in one string: \"100/m\""),
    );
    p.insert(
        "period".into(),
        text("a period string: \"1s\", \"1h30m\", \"MINUTE\""),
    );
    p.insert(
        "burst".into(),
        count("gcra: units that may be taken at once (default 1)"),
    );
    p.insert(
        "precision".into(),
        count("sliding_window: sub-windows per window (default 60)"),
    );
    p.insert(
        "align".into(),
        json!({"type": "string", "enum": ["first_use", "clock"], "description": "fixed_window"}),
    );
    p.insert("capacity".into(), count("token_bucket: the bucket's size"));
    p.insert(
        "refill".into(),
        text("token_bucket: the refill rate, \"10/s\""),
    );
    p
}

/// [`LimitSpec`]'s own properties.
fn limit_spec() -> Map<String, Value> {
    let mut p = params();
    p.insert(
        "limit".into(),
        json!({"type": "integer", "minimum": 0, "description": "units per period, or leases at once (concurrency)"}),
    );
    p.insert(
        "lease_ttl".into(),
        json!({"type": "string", "description": "concurrency: a lease's life (default 30s)"}),
    );
    p.insert(
        "parties".into(),
        json!({"type": "integer", "minimum": 0, "description": "barrier"}),
    );
    p.insert(
        "ttl".into(),
        json!({"type": "string", "description": "barrier: its life"}),
    );
    p
}

impl JsonSchema for LimitSpec {
    fn schema_name() -> Cow<'static, str> {
        "LimitSpec".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let mut p = limit_spec();
        // Declared limits only: the limit adapts within these bounds (AIMD), starting at max;
        // `limit` is then the limit in force.
        p.insert(
            "adaptive".into(),
            generator.subschema_for::<AdaptiveSpec>().into(),
        );
        json_schema!({
            "type": "object",
            "description": "A limit's definition: the fields that apply to its algorithm (docs/http-api.md, \"The definition\").",
            "properties": p,
        })
    }
}

impl JsonSchema for AcquireEntry {
    fn schema_name() -> Cow<'static, str> {
        "AcquireEntry".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let mut p = limit_spec();
        p.insert("key".into(), json!({"type": "string"}));
        p.insert(
            "units".into(),
            json!({"type": "integer", "minimum": 0, "maximum": u32::MAX}),
        );
        json_schema!({
            "type": "object",
            "description": "One key of an acquire; definition fields make it a dynamic key.",
            "properties": p,
            "required": ["key"],
        })
    }
}

impl JsonSchema for NumberOrExpr {
    fn schema_name() -> Cow<'static, str> {
        "NumberOrExpr".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A constant, or a CEL expression (a string).",
            "oneOf": [{"type": "integer", "minimum": 0}, {"type": "string"}],
        })
    }
}

impl JsonSchema for RateLimitUse {
    fn schema_name() -> Cow<'static, str> {
        "RateLimitUse".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let mut p = params();
        let expr = generator.subschema_for::<NumberOrExpr>();
        p.insert("static_key".into(), json!({"type": "string"}));
        p.insert(
            "dynamic_key".into(),
            json!({"type": "string", "description": "CEL"}),
        );
        p.insert("units".into(), expr.clone().into());
        p.insert("limit".into(), expr.into());
        p.insert("scope".into(), generator.subschema_for::<KeyScope>().into());
        json_schema!({
            "type": "object",
            "description": "A rate limit a task uses: static_key, or dynamic_key with its definition.",
            "properties": p,
        })
    }
}

impl JsonSchema for Throttle {
    fn schema_name() -> Cow<'static, str> {
        "Throttle".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let object = generator.subschema_for::<ThrottleSpec>();
        json_schema!({
            "description": "A rate string (\"10/m\") or an object.",
            "oneOf": [{"type": "string"}, object],
        })
    }
}

impl JsonSchema for ErrorCode {
    fn schema_name() -> Cow<'static, str> {
        "ErrorCode".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let known: Vec<&str> = ErrorCode::KNOWN.iter().map(ErrorCode::as_str).collect();
        json_schema!({
            "type": "string",
            "description": "A stable snake_case code (docs/http-api.md, \"Errors\").",
            "enum": known,
        })
    }
}
