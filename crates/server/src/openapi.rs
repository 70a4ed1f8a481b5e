//! The published contract: an OpenAPI 3.1 document of every route, its schemas derived from the
//! wire types of `tollgate-api` (feature `schema`), served at `GET /openapi.json` (no token)
//! and committed as `docs/openapi.json` (a test fails when the two differ; `tollgate openapi`
//! prints it). The prose contract is docs/http-api.md; a test checks that every route it names
//! is here.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value, json};
use tollgate_api as api;

use crate::state::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/openapi.json", get(serve))
}

async fn serve() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document_text(),
    )
}

/// The document as committed in docs/openapi.json: pretty JSON and a final newline.
pub fn document_text() -> String {
    let mut text = serde_json::to_string_pretty(&document()).unwrap_or_default();
    text.push('\n');
    text
}

/// One operation of the table below.
struct Op {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    /// The role a token needs (docs/http-api.md, "Access control"); `None`: no token.
    role: Option<&'static str>,
    /// The JSON body, if any.
    body: Option<Value>,
    /// The success status and its JSON answer (`None`: no body, or not JSON: see `media`).
    ok: (u16, Option<Value>),
    /// A non-JSON success answer's media type.
    media: Option<&'static str>,
    /// Query parameters: name, JSON Schema type, description.
    query: &'static [(&'static str, &'static str, &'static str)],
    /// The body is the dashboard's sign-in form (`token`), not JSON.
    form: bool,
    /// Answers besides the success and the JSON errors: status, media type, description.
    also: &'static [(u16, &'static str, &'static str)],
}

fn s<T: JsonSchema>(g: &mut SchemaGenerator) -> Option<Value> {
    Some(g.subschema_for::<T>().to_value())
}

/// Every route, in the order of docs/http-api.md.
fn operations(g: &mut SchemaGenerator) -> Vec<Op> {
    let op = |method, path, summary, role| Op {
        method,
        path,
        summary,
        role,
        body: None,
        ok: (200, None),
        media: None,
        query: &[],
        form: false,
        also: &[],
    };
    vec![
        Op {
            ok: (200, s::<api::Health>(g)),
            ..op("get", "/healthz", "Liveness", None)
        },
        Op {
            ok: (200, s::<api::LimitListing>(g)),
            query: &[("dynamic", "integer", "keep only the N busiest dynamic keys")],
            ..op(
                "get",
                "/v1/limits",
                "Every limit with its live state",
                Some("read"),
            )
        },
        Op {
            body: s::<api::LimitSpec>(g),
            ok: (200, s::<api::Limit>(g)),
            ..op(
                "put",
                "/v1/limits/{key}",
                "Declare or redefine a limit",
                Some("admin"),
            )
        },
        Op {
            ok: (200, s::<api::Limit>(g)),
            ..op(
                "get",
                "/v1/limits/{key}",
                "One limit with its live state",
                Some("read"),
            )
        },
        Op {
            ok: (204, None),
            ..op(
                "delete",
                "/v1/limits/{key}",
                "Remove a limit",
                Some("admin"),
            )
        },
        Op {
            body: s::<api::PauseRequest>(g),
            ok: (200, s::<api::Pause>(g)),
            ..op(
                "post",
                "/v1/limits/{key}/pause",
                "Pause a key: every acquire and run on it waits until the pause ends",
                Some("worker"),
            )
        },
        Op {
            ok: (200, s::<api::Resumed>(g)),
            query: &[("dynamic", "boolean", "the key is a dynamic key")],
            ..op(
                "delete",
                "/v1/limits/{key}/pause",
                "End a key's pause now",
                Some("worker"),
            )
        },
        Op {
            ok: (200, s::<api::PauseListing>(g)),
            ..op("get", "/v1/pauses", "Every pause in force", Some("read"))
        },
        Op {
            body: s::<api::FeedbackRequest>(g),
            ok: (200, s::<api::Limit>(g)),
            ..op(
                "post",
                "/v1/limits/{key}/feedback",
                "Report what a call to an adaptive limit's upstream met: ok raises its limit in force by one, throttled halves it",
                Some("worker"),
            )
        },
        Op {
            body: s::<api::AcquireRequest>(g),
            ok: (200, s::<api::Acquisition>(g)),
            ..op(
                "post",
                "/v1/acquire",
                "Take units from every key at once, or none",
                Some("worker"),
            )
        },
        Op {
            body: s::<api::BatchRequest>(g),
            ok: (200, s::<api::BatchAnswer>(g)),
            ..op(
                "post",
                "/v1/acquire/batch",
                "Many independent acquires in one call",
                Some("worker"),
            )
        },
        Op {
            body: s::<api::LeaseRequest>(g),
            ok: (200, s::<api::Lease>(g)),
            ..op(
                "post",
                "/v1/leases",
                "Take a concurrency slot",
                Some("worker"),
            )
        },
        Op {
            body: s::<api::RenewRequest>(g),
            ok: (200, s::<api::LeaseRenewal>(g)),
            ..op(
                "post",
                "/v1/leases/{id}/renew",
                "Renew a lease",
                Some("worker"),
            )
        },
        Op {
            ok: (204, None),
            ..op(
                "delete",
                "/v1/leases/{id}",
                "Release a lease",
                Some("worker"),
            )
        },
        Op {
            body: s::<api::BarrierCreate>(g),
            ok: (200, s::<api::Barrier>(g)),
            ..op(
                "post",
                "/v1/barriers/{key}",
                "Create a barrier (or find it)",
                Some("worker"),
            )
        },
        Op {
            ok: (200, s::<api::Barrier>(g)),
            ..op(
                "get",
                "/v1/barriers/{key}",
                "A barrier's status",
                Some("read"),
            )
        },
        Op {
            body: s::<api::BarrierWait>(g),
            ok: (200, s::<api::BarrierReleased>(g)),
            ..op(
                "post",
                "/v1/barriers/{key}/wait",
                "Arrive and wait for the others",
                Some("worker"),
            )
        },
        Op {
            body: s::<api::TaskSpec>(g),
            ok: (200, s::<api::Task>(g)),
            ..op("put", "/v1/tasks/{name}", "Define a task", Some("admin"))
        },
        Op {
            ok: (200, s::<api::Task>(g)),
            ..op(
                "get",
                "/v1/tasks/{name}",
                "One task with its runs per state",
                Some("read"),
            )
        },
        Op {
            ok: (200, s::<api::TaskListing>(g)),
            ..op("get", "/v1/tasks", "Every task", Some("read"))
        },
        Op {
            body: s::<api::EnqueueRequest>(g),
            ok: (201, s::<api::RunView>(g)),
            ..op(
                "post",
                "/v1/tasks/{name}/runs",
                "Enqueue a run",
                Some("worker"),
            )
        },
        Op {
            ok: (200, s::<api::RunView>(g)),
            ..op("get", "/v1/runs/{id}", "One run", Some("read"))
        },
        Op {
            ok: (200, s::<api::Explanation>(g)),
            ..op(
                "get",
                "/v1/runs/{id}/explain",
                "Why a run waits: each key it needs, its limit in force, usage, pause and queue",
                Some("read"),
            )
        },
        Op {
            ok: (200, s::<api::RunListing>(g)),
            query: &[
                ("task", "string", "only this task's runs"),
                ("state", "string", "only runs in this state"),
                ("limit", "integer", "at most this many (default 100)"),
            ],
            ..op("get", "/v1/runs", "Runs, newest first", Some("read"))
        },
        Op {
            body: s::<api::AttemptRequest>(g),
            ok: (200, s::<api::RunView>(g)),
            ..op(
                "post",
                "/v1/runs/{id}/heartbeat",
                "Extend a leased run's lease",
                Some("worker"),
            )
        },
        Op {
            body: s::<api::CompleteRequest>(g),
            ok: (200, s::<api::RunView>(g)),
            ..op(
                "post",
                "/v1/runs/{id}/complete",
                "A leased run succeeded",
                Some("worker"),
            )
        },
        Op {
            body: s::<api::FailRequest>(g),
            ok: (200, s::<api::RunView>(g)),
            ..op(
                "post",
                "/v1/runs/{id}/fail",
                "A leased run failed",
                Some("worker"),
            )
        },
        Op {
            body: s::<api::AttemptRequest>(g),
            ok: (200, s::<api::RunView>(g)),
            ..op(
                "post",
                "/v1/runs/{id}/release",
                "Hand a leased run back",
                Some("worker"),
            )
        },
        Op {
            body: s::<api::CancelRequest>(g),
            ok: (200, s::<api::RunView>(g)),
            ..op(
                "post",
                "/v1/runs/{id}/cancel",
                "Cancel a run",
                Some("worker"),
            )
        },
        Op {
            body: s::<api::EventRequest>(g),
            ok: (202, s::<api::EventAnswer>(g)),
            ..op(
                "post",
                "/v1/events",
                "Send an event: one run per task it triggers",
                Some("worker"),
            )
        },
        Op {
            body: s::<api::WorkerLeaseRequest>(g),
            ok: (200, s::<api::LeasedRuns>(g)),
            ..op(
                "post",
                "/v1/workers/lease",
                "A worker's long-poll for runs",
                Some("worker"),
            )
        },
        Op {
            media: Some("application/openmetrics-text"),
            ..op("get", "/metrics", "Prometheus metrics", Some("read"))
        },
        Op {
            media: Some("text/html"),
            also: &[(
                401,
                "text/html",
                "with access control and no valid token: the sign-in form",
            )],
            ..op("get", "/", "The dashboard", Some("read"))
        },
        Op {
            form: true,
            ok: (303, None),
            also: &[(
                401,
                "text/html",
                "a token the server does not know: the form again",
            )],
            ..op(
                "post",
                "/login",
                "Sign the dashboard in: a cookie that authorizes GET requests",
                None,
            )
        },
        Op {
            ok: (303, None),
            ..op("post", "/logout", "Sign the dashboard out", None)
        },
        Op {
            media: Some("application/json"),
            ..op("get", "/openapi.json", "This document", None)
        },
    ]
}

/// The OpenAPI 3.1 document.
pub fn document() -> Value {
    let mut g = SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "#/components/schemas/".into())
        .into_generator();
    let error = g.subschema_for::<api::ErrorEnvelope>().to_value();
    let mut paths: Map<String, Value> = Map::new();
    for op in operations(&mut g) {
        let mut parameters: Vec<Value> = op
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        parameters.extend(op.query.iter().map(|(name, ty, description)| {
            json!({"name": name, "in": "query", "required": false,
                   "description": description, "schema": {"type": ty}})
        }));
        let mut responses = Map::new();
        let ok = match (&op.ok.1, op.media) {
            (Some(schema), _) => json!({"description": "done",
                "content": {"application/json": {"schema": schema}}}),
            (None, Some(media)) => json!({"description": "done",
                "content": {media: {"schema": {"type": "string"}}}}),
            (None, None) if op.ok.0 == 303 => json!({"description": "to the dashboard",
                "headers": {"location": {"schema": {"type": "string"}}}}),
            (None, None) => json!({"description": "done, no body"}),
        };
        responses.insert(op.ok.0.to_string(), ok);
        for (status, media, description) in op.also {
            responses.insert(
                status.to_string(),
                json!({"description": description,
                       "content": {*media: {"schema": {"type": "string"}}}}),
            );
        }
        responses.insert(
            "default".into(),
            json!({"description": "an error (docs/http-api.md, \"Errors\")",
                   "content": {"application/json": {"schema": error}}}),
        );
        let mut operation = json!({
            "operationId": operation_id(op.method, op.path),
            "summary": op.summary,
            "responses": responses,
        });
        if !parameters.is_empty() {
            operation["parameters"] = Value::Array(parameters);
        }
        if op.form {
            operation["requestBody"] = json!({"required": true, "content": {
                "application/x-www-form-urlencoded": {"schema": {
                    "type": "object", "required": ["token"],
                    "properties": {"token": {"type": "string"}}}}}});
        }
        if let Some(body) = op.body {
            operation["requestBody"] =
                json!({"required": true, "content": {"application/json": {"schema": body}}});
        }
        operation["security"] = match op.role {
            // Open routes, or with access control a token of at least this role.
            None => json!([]),
            Some(role) => json!([{}, {"bearer": [role]}]),
        };
        if let Some(role) = op.role {
            operation["x-tollgate-role"] = Value::String(role.to_owned());
        }
        let entry = paths
            .entry(op.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        entry[op.method] = operation;
    }
    let schemas = g.take_definitions(true);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Tollgate",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Decides when a task run may start. The prose contract, with every rule: docs/http-api.md.",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token of the server's --tokens-file (roles read < worker < admin); without one the server is open.",
                },
            },
        },
    })
}

/// `put_v1_limits_key` for `PUT /v1/limits/{key}`.
fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_owned();
    for part in path
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|p| !p.is_empty())
    {
        id.push('_');
        id.push_str(part);
    }
    if path == "/" {
        id.push_str("_dashboard");
    }
    id
}
