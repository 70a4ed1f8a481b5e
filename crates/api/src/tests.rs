//! Round trips of representative bodies: what is written is what the server has always
//! written and read, byte for byte.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::*;

/// `text` reads as a `T` that writes `text` back, byte for byte.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(text: &str) -> T {
    let value: T = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    assert_eq!(serde_json::to_string(&value).unwrap(), text);
    value
}

#[test]
fn request_bodies_round_trip() {
    let acquire: AcquireRequest = round_trip(
        r#"{"limits":[{"key":"stripe-api"},{"key":"user:42","units":2,"algorithm":"gcra","rate":"10/m","burst":3}],"wait_ms":500}"#,
    );
    assert_eq!(acquire.limits[0].definition, None);
    assert_eq!(
        acquire.limits[1]
            .definition
            .as_ref()
            .and_then(|d| d.params.burst),
        Some(3)
    );
    round_trip::<BatchRequest>(r#"{"requests":[{"limits":[{"key":"a"}]},{"limits":[]}]}"#);
    round_trip::<PauseRequest>(r#"{"for_ms":30000}"#);
    round_trip::<EnqueueRequest>(r#"{"input":{},"priority":4}"#);
    round_trip::<TaskSpec>(
        r#"{"priority":"input.vip ? 4 : 2","fairness_key":"input.tenant","fairness_weight":3}"#,
    );
    round_trip::<PauseRequest>(r#"{"until_ms":1700000030000,"dynamic":true}"#);
    let fail: FailRequest = round_trip(
        r#"{"error":"429","retry":true,"pause":{"key":"stripe-api","for_ms":30000,"dynamic":true}}"#,
    );
    assert_eq!(fail.pause.map(|p| p.key), Some("stripe-api".to_owned()));
    assert!(serde_json::from_str::<PauseRequest>(r#"{"for":1}"#).is_err());
    round_trip::<LimitSpec>(r#"{"algorithm":"concurrency","limit":5,"lease_ttl":"30s"}"#);
    round_trip::<LeaseRequest>(r#"{"key":"db","limit":3,"ttl_ms":1500,"holder":"w-1"}"#);
    round_trip::<RenewRequest>(r#"{}"#);
    round_trip::<BarrierCreate>(r#"{"parties":3,"ttl_ms":60000}"#);
    round_trip::<BarrierWait>(r#"{"timeout_ms":1000}"#);
    round_trip::<TaskSpec>(
        r#"{"rate_limits":[{"static_key":"api"},{"dynamic_key":"input.user_id","units":"input.n","limit":10,"period":"MINUTE"}],"concurrency":[{"key":"'global'","limit":2}],"on_limit":"skip","idempotency":{"key":"event.data.id","period":"24h"},"triggers":["user.created"],"max_attempts":5,"lease_timeout":"1m"}"#,
    );
    round_trip::<EnqueueRequest>(r#"{"input":{"user_id":"u1"},"additional_metadata":{"a":1}}"#);
    round_trip::<EventRequest>(r#"{"name":"company.updated","data":{"company_id":"c1"}}"#);
    round_trip::<WorkerLeaseRequest>(
        r#"{"worker_id":"w-1","tasks":["send-email","sync"],"max":10,"wait_ms":20000}"#,
    );
    round_trip::<AttemptRequest>(r#"{"attempt":2}"#);
    round_trip::<CompleteRequest>(r#"{"output":{"ok":true},"attempt":1}"#);
    round_trip::<FailRequest>(r#"{"error":"boom","retry":true,"attempt":1}"#);
    // Adaptive limits (docs/design.md §3.16): declared with bounds, fed by workers.
    let spec: LimitSpec = round_trip(
        r#"{"algorithm":"gcra","limit":7,"adaptive":{"min":2,"max":50},"period":"1s","burst":3}"#,
    );
    assert_eq!(spec.adaptive, Some(AdaptiveSpec { min: 2, max: 50 }));
    round_trip::<LimitSpec>(r#"{"algorithm":"concurrency","adaptive":{"min":1,"max":8}}"#);
    assert!(serde_json::from_str::<LimitSpec>(r#"{"adaptive":{"min":1}}"#).is_err());
    assert!(serde_json::from_str::<LimitSpec>(r#"{"adaptive":{"min":1,"max":2,"x":3}}"#).is_err());
    // An inline acquire entry is a dynamic key: it has no bounds to adapt within.
    assert!(
        serde_json::from_str::<AcquireEntry>(
            r#"{"key":"u1","rate":"1/s","adaptive":{"min":1,"max":2}}"#
        )
        .unwrap_err()
        .to_string()
        .contains("unknown field `adaptive`")
    );
    let f: FeedbackRequest = round_trip(r#"{"outcome":"ok"}"#);
    assert_eq!(f.outcome, FeedbackOutcome::Ok);
    let f: FeedbackRequest = round_trip(r#"{"outcome":"throttled"}"#);
    assert_eq!(f.outcome.as_str(), "throttled");
    assert!(serde_json::from_str::<FeedbackRequest>(r#"{"outcome":"slow"}"#).is_err());
    assert!(serde_json::from_str::<FeedbackRequest>(r#"{}"#).is_err());
    assert!(serde_json::from_str::<FeedbackRequest>(r#"{"outcome":"ok","key":"a"}"#).is_err());
    let done: CompleteRequest = round_trip(
        r#"{"output":{"ok":true},"attempt":1,"feedback":{"key":"stripe-api","outcome":"ok"}}"#,
    );
    assert_eq!(
        done.feedback,
        Some(RunFeedback::new("stripe-api", FeedbackOutcome::Ok))
    );
    let failed: FailRequest = round_trip(
        r#"{"error":"429","retry":true,"feedback":{"key":"stripe-api","outcome":"throttled"}}"#,
    );
    assert_eq!(
        failed.feedback.map(|f| f.outcome),
        Some(FeedbackOutcome::Throttled)
    );
    assert!(serde_json::from_str::<CompleteRequest>(r#"{"feedback":{"key":"a"}}"#).is_err());
    round_trip::<CancelRequest>(r#"{}"#);
}

#[test]
fn answers_round_trip() {
    round_trip::<Health>(r#"{"status":"ok"}"#);
    let listing: LimitListing = round_trip(
        r#"{"limits":[{"key":"g","namespace":"static","algorithm":"gcra","limit":10,"period":"1s","burst":4,"used":1,"remaining":3,"reset_after_ms":100,"paused_until_ms":1700000030000,"limit_in_force":null},{"key":"c","namespace":"dynamic","algorithm":"concurrency","limit":2,"lease_ttl":"30s","used":0,"remaining":2,"reset_after_ms":null,"paused_until_ms":null,"limit_in_force":null}],"dynamic_total":1}"#,
    );
    assert_eq!(listing.limits[0].definition.params.burst, Some(4));
    // An adaptive limit: its bounds in the definition, its limit in force as `limit` and
    // `limit_in_force` (docs/design.md §3.16).
    let adaptive: Limit = round_trip(
        r#"{"key":"stripe-api","namespace":"static","algorithm":"gcra","limit":7,"adaptive":{"min":2,"max":50},"period":"1s","burst":1,"used":0,"remaining":1,"reset_after_ms":0,"paused_until_ms":null,"limit_in_force":7}"#,
    );
    assert_eq!(
        adaptive.definition.adaptive,
        Some(AdaptiveSpec { min: 2, max: 50 })
    );
    assert_eq!(adaptive.limit_in_force, Some(7));
    // An older server's answer, without the field, still reads.
    let older: Limit = serde_json::from_str(
        r#"{"key":"g","namespace":"static","algorithm":"gcra","limit":10,"period":"1s","burst":4,"used":1,"remaining":3,"reset_after_ms":100}"#,
    )
    .unwrap();
    assert_eq!(older.limit_in_force, None);
    assert_eq!(listing.limits[1].namespace, Namespace::Dynamic);
    round_trip::<PauseListing>(
        r#"{"pauses":[{"key":"stripe-api","namespace":"static","paused_until_ms":1700000030000}]}"#,
    );
    round_trip::<Pause>(r#"{"key":"u1","namespace":"dynamic","paused_until_ms":null}"#);
    round_trip::<Resumed>(r#"{"key":"u1","namespace":"dynamic","was_paused":true}"#);
    let batch: BatchAnswer = round_trip(
        r#"{"results":[{"allowed":false,"retry_after_ms":1200,"decisions":[{"key":"a","allowed":false,"limit":10,"remaining":0,"retry_after_ms":1200,"reset_after_ms":1200}]},{"error":{"code":"unknown_limit","message":"no limit is declared under key \"b\"","field":"requests[1].limits[0].key"}}]}"#,
    );
    assert!(matches!(&batch.results[0], BatchOutcome::Decided(a) if !a.allowed));
    assert!(
        matches!(&batch.results[1], BatchOutcome::Failed { error } if error.code == ErrorCode::UnknownLimit)
    );
    round_trip::<Lease>(
        r#"{"acquired":true,"lease_id":"ZDox.ab-1","expires_at_ms":1700000030000,"limit":3,"remaining":2}"#,
    );
    round_trip::<Lease>(r#"{"acquired":false,"retry_after_ms":500,"limit":3,"remaining":0}"#);
    round_trip::<LeaseRenewal>(r#"{"lease_id":"ZDox.ab-1","expires_at_ms":1700000030000}"#);
    round_trip::<Barrier>(
        r#"{"key":"b","released":false,"arrived":1,"parties":3,"expires_at_ms":1700000060000}"#,
    );
    round_trip::<BarrierReleased>(r#"{"released":true}"#);
    let run: RunView = round_trip(
        r#"{"id":"18c2-1","task":"sync","state":"waiting","input":{"user_id":"u1"},"additional_metadata":{},"attempt":0,"max_attempts":3,"waiting_on":"u1","eligible_at_ms":1700000060000,"skip_reason":null,"error":null,"output":null,"created_at_ms":1700000000000,"updated_at_ms":1700000000000,"lease_expires_at_ms":null,"worker_id":null,"priority":2}"#,
    );
    assert_eq!(run.state, RunState::Waiting);
    round_trip::<LeasedRuns>(
        r#"{"runs":[{"id":"18c2-1","task":"send-email","input":{},"additional_metadata":{},"attempt":1,"lease_expires_at_ms":1700000030000}]}"#,
    );
    round_trip::<EventAnswer>(r#"{"runs":[{"id":"18c2-1","task":"sync","state":"skipped"}]}"#);
}

// A task is answered with every field of its definition written out, defaults filled in.
#[test]
fn tasks_show_their_whole_definition() {
    let shown = r#"{"name":"sync","spec":{"rate_limits":[],"concurrency":[],"on_limit":"requeue","idempotency":null,"triggers":[],"max_attempts":3,"lease_timeout":"30s","throttle":null,"rate_limit":null,"retry":null},"depth":{"scheduled":0,"queued":2,"waiting":0,"running":1,"succeeded":7,"failed":0,"skipped":0,"cancelled":0}}"#;
    let task: Task = round_trip(shown);
    assert_eq!(task.depth.get(RunState::Succeeded), 7);
    // Read back, the definition defines the same task again.
    assert_eq!(task.spec.max_attempts, Some(DEFAULT_MAX_ATTEMPTS));
    let bare = Task {
        name: "sync".into(),
        spec: TaskSpec::default(),
        depth: task.depth,
    };
    assert_eq!(serde_json::to_string(&bare).unwrap(), shown);
}

#[test]
fn request_bodies_refuse_unknown_fields_naming_them() {
    for (body, name) in [
        (json!({"limits": [{"key": "a", "brust": 2}]}), "brust"),
        (json!({"limits": [], "wait": 1}), "wait"),
        (
            json!({"worker_id": "w", "tasks": [], "max": 1, "x": 1}),
            "x",
        ),
    ] {
        let e = match name {
            "x" => serde_json::from_value::<WorkerLeaseRequest>(body).unwrap_err(),
            _ => serde_json::from_value::<AcquireRequest>(body).unwrap_err(),
        };
        assert!(
            e.to_string()
                .starts_with(&format!("unknown field `{name}`")),
            "{e}"
        );
    }
    // The expected list names every field of an entry, as before the types moved here.
    let e = serde_json::from_value::<AcquireEntry>(json!({"key": "a", "unit": 1})).unwrap_err();
    assert_eq!(
        e.to_string(),
        "unknown field `unit`, expected one of `key`, `units`, `algorithm`, `rate`, `limit`, \
         `period`, `burst`, `precision`, `align`, `capacity`, `refill`, `lease_ttl`, \
         `parties`, `ttl`"
    );
}

#[test]
fn run_states_read_their_names() {
    for state in RunState::ALL {
        assert_eq!(state.as_str().parse::<RunState>(), Ok(state));
        assert_eq!(
            serde_json::to_value(state).unwrap(),
            Value::from(state.as_str())
        );
    }
    assert!("paused".parse::<RunState>().is_err());
}

// The bodies that carry a limit's parameters read them by hand (serde's deny_unknown_fields
// does not work through flatten): their errors must be those the derived readers gave.
#[test]
fn limit_parameters_are_read_as_the_derived_readers_did() {
    let err = |r: Result<(), serde_json::Error>| r.unwrap_err().to_string();
    let spec = |v: Value| serde_json::from_value::<LimitSpec>(v).map(drop);
    let task = |v: Value| serde_json::from_value::<RateLimitUse>(v).map(drop);
    let entry = |v: Value| serde_json::from_value::<AcquireEntry>(v).map(drop);
    assert_eq!(
        err(spec(json!({"limit": 1, "brust": 2}))),
        "unknown field `brust`, expected one of `algorithm`, `rate`, `limit`, `adaptive`, \
         `period`, `burst`, `precision`, `align`, `capacity`, `refill`, `lease_ttl`, `parties`, \
         `ttl`"
    );
    assert_eq!(
        err(task(json!({"dynamic_key": "input.a", "ttl": "1s"}))),
        "unknown field `ttl`, expected one of `static_key`, `dynamic_key`, `units`, `limit`, \
         `algorithm`, `rate`, `period`, `burst`, `precision`, `align`, `capacity`, `refill`, \
         `scope`, `duration`"
    );
    assert_eq!(err(entry(json!({"units": 1}))), "missing field `key`");
    assert_eq!(
        err(entry(json!("api"))),
        "invalid type: string \"api\", expected struct EntryBody"
    );
    assert_eq!(
        err(spec(json!({"burst": "many"}))),
        "invalid type: string \"many\", expected u64"
    );
    assert_eq!(
        err(task(json!({"limit": 1.5}))),
        "invalid value: floating point `1.5`, expected a whole number or a CEL expression string"
    );
    let twice = serde_json::from_str::<LimitSpec>(r#"{"rate": "1/s", "rate": "2/s"}"#);
    assert_eq!(
        err(twice.map(drop)),
        "duplicate field `rate` at line 1 column 22"
    );
    // null is absent, as for an Option field of a derived reader.
    assert_eq!(
        serde_json::from_value::<LimitSpec>(json!({"rate": "1/s", "burst": null})).unwrap(),
        LimitSpec::rate("1/s")
    );
    // An entry whose definition fields are all absent names a declared limit.
    let bare: AcquireEntry = serde_json::from_value(json!({"key": "a", "rate": null})).unwrap();
    assert_eq!(bare.definition, None);
}

/// Hatchet's SDKs name a rate limit's period `duration`: read as `period`, written back as it;
/// both at once is an error, whichever comes first.
#[test]
fn a_task_rate_limit_takes_hatchets_duration_for_period() {
    let r: RateLimitUse = serde_json::from_value(
        json!({"dynamic_key": "input.user", "limit": 10, "duration": "MINUTE"}),
    )
    .unwrap();
    assert_eq!(r.params.period.as_deref(), Some("MINUTE"));
    assert_eq!(
        serde_json::to_value(&r).unwrap(),
        json!({"dynamic_key": "input.user", "limit": 10, "period": "MINUTE"})
    );
    for both in [
        r#"{"dynamic_key": "k", "limit": 1, "duration": "1s", "period": "1s"}"#,
        r#"{"dynamic_key": "k", "limit": 1, "period": "1s", "duration": "1s"}"#,
    ] {
        let e = serde_json::from_str::<RateLimitUse>(both)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("give `period` or `duration` (Hatchet's name for it), not both"),
            "{e}"
        );
    }
    let twice = serde_json::from_str::<RateLimitUse>(r#"{"duration": "1s", "duration": "2s"}"#);
    assert!(
        twice
            .unwrap_err()
            .to_string()
            .starts_with("duplicate field `duration`")
    );
}

#[test]
fn a_dynamic_keys_limit_is_written_before_its_parameters() {
    let r: RateLimitUse = round_trip(
        r#"{"dynamic_key":"input.user_id","units":2,"limit":"input.cap","algorithm":"gcra","rate":"10/m","burst":3}"#,
    );
    assert_eq!(r.limit, Some(NumberOrExpr::Expr("input.cap".into())));
    assert_eq!(
        r.definition_fields().collect::<Vec<_>>(),
        ["limit", "algorithm", "rate", "burst"]
    );
    round_trip::<LimitSpec>(
        r#"{"algorithm":"fixed_window","limit":3,"period":"1m","align":"clock"}"#,
    );
    round_trip::<LimitSpec>(r#"{"algorithm":"barrier","parties":3,"ttl":"1m"}"#);
}
