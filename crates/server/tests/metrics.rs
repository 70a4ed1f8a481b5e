//! `GET /metrics`, scraped over HTTP after some traffic and parsed as a Prometheus scraper
//! would.

mod common;
#[path = "../../redis/tests/common/mod.rs"]
mod redis_common;

use std::collections::BTreeMap;

use common::{Server, fake_clock, id};
use serde_json::json;
use tollgate::core::Nanos;

/// One sample line: `name{label="value",...} value`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A small parser for the text exposition format: comments skipped, label values unescaped.
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => panic!("a sample without a value: {line:?}"),
        };
        let mut labels = BTreeMap::new();
        let mut rest = rest;
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices();
            let mut key = String::new();
            let end;
            loop {
                let (i, c) = chars.next().expect("labels end with '}'");
                match c {
                    '}' => {
                        end = i;
                        break;
                    }
                    ',' => {}
                    '=' => {
                        assert_eq!(chars.next().map(|x| x.1), Some('"'), "{line:?}");
                        let mut value = String::new();
                        loop {
                            match chars.next().expect("a closed label value").1 {
                                '\\' => match chars.next().expect("an escape").1 {
                                    'n' => value.push('\n'),
                                    c => value.push(c),
                                },
                                '"' => break,
                                c => value.push(c),
                            }
                        }
                        labels.insert(std::mem::take(&mut key), value);
                    }
                    c => key.push(c),
                }
            }
            rest = &body[end + 1..];
        }
        let value = rest.split_whitespace().next().expect("a value");
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("a number in {line:?}")),
        };
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    out
}

/// The value of the sample `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

async fn scrape(server: &Server) -> (String, Vec<Sample>) {
    let r = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("the server answers");
    assert_eq!(r.status(), 200);
    let content_type = r.headers()["content-type"]
        .to_str()
        .expect("a text header")
        .to_owned();
    assert!(content_type.contains("openmetrics-text"), "{content_type}");
    let text = r.text().await.expect("a text body");
    let samples = parse(&text);
    (text, samples)
}

#[tokio::test]
async fn metrics_move_with_traffic_and_never_name_a_dynamic_key() {
    let clock = fake_clock();
    let server = Server::start(clock.clone()).await;
    traffic_moves_metrics(&server, &clock).await;
    server.stop().await;
}

/// The same scrape from a node of a Redis deployment: the queue's counters are the node's own,
/// the depths are read from Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic_in_redis_mode() {
    let Some(redis) = redis_common::redis("metrics_move_with_traffic_in_redis_mode") else {
        return;
    };
    let clock = fake_clock();
    let store = tollgate_redis::RedisStore::builder(&redis.url)
        .prefix(redis_common::fresh_prefix())
        .use_server_time(false)
        .build()
        .expect("a valid URL");
    let state = tollgate_server::AppState::redis_with_clock(
        store,
        clock.clone(),
        tollgate_server::Settings::default(),
    );
    let server = Server::with_state(state).await;
    traffic_moves_metrics(&server, &clock).await;
    server.stop().await;
}

async fn traffic_moves_metrics(server: &Server, clock: &tollgate::FakeClock) {
    // Before any traffic: a valid exposition, every name prefixed.
    let (text, samples) = scrape(server).await;
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(samples.iter().all(|s| s.name.starts_with("tollgate_")));

    // Direct decisions: a declared key, and an inline key holding a user id.
    server
        .define_limit("api", json!({"limit": 2, "period": "1m"}))
        .await;
    for _ in 0..3 {
        server
            .post("/v1/acquire", json!({"limits": [{"key": "api"}]}))
            .await;
    }
    let inline = json!({"limits": [{"key": "user:secret-42", "limit": 1, "period": "1m"}]});
    server.post("/v1/acquire", inline.clone()).await;
    server.post("/v1/acquire", inline).await;

    // Task runs on a per-user dynamic key: one leased, one parked, then woken and leased.
    server
        .define_task(
            "sync",
            json!({"rate_limits": [{"dynamic_key": "input.user", "limit": 1, "period": "1m"}]}),
        )
        .await;
    let first = id(&server.enqueue("sync", json!({"user": "u-secret-7"})).await);
    let second = id(&server.enqueue("sync", json!({"user": "u-secret-7"})).await);
    let leased = server.lease(&["sync"], 10, 0).await;
    assert_eq!(leased.len(), 1);
    assert_eq!(server.run(&second).await["state"], "waiting");
    server.act(&first, "complete", json!({})).await;
    clock.advance(Nanos::from_secs(61));
    let leased = server.lease(&["sync"], 10, 0).await;
    assert_eq!(id(&leased[0]), second);

    let (_, samples) = scrape(server).await;
    let decisions = "tollgate_decisions_total";
    assert_eq!(
        value(
            &samples,
            decisions,
            &[("limit", "api"), ("outcome", "allowed")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &samples,
            decisions,
            &[("limit", "api"), ("outcome", "denied")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            decisions,
            &[("limit", "dynamic"), ("outcome", "allowed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            decisions,
            &[("limit", "dynamic"), ("outcome", "denied")]
        ),
        Some(1.0)
    );
    let spec = "task:sync/rate_limits[0]";
    assert_eq!(
        value(
            &samples,
            decisions,
            &[("limit", spec), ("outcome", "allowed")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &samples,
            decisions,
            &[("limit", spec), ("outcome", "denied")]
        ),
        Some(1.0)
    );

    let transitions = "tollgate_run_transitions_total";
    for (transition, n) in [
        ("enqueued", 2.0),
        ("parked", 1.0),
        ("leased", 2.0),
        ("succeeded", 1.0),
        ("failed", 0.0),
        ("skipped", 0.0),
        ("expired", 0.0),
    ] {
        assert_eq!(
            value(
                &samples,
                transitions,
                &[("task", "sync"), ("transition", transition)]
            ),
            Some(n),
            "{transition}"
        );
    }

    let depth = "tollgate_queue_depth";
    assert_eq!(
        value(&samples, depth, &[("task", "sync"), ("state", "running")]),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, depth, &[("task", "sync"), ("state", "waiting")]),
        Some(0.0)
    );

    // The parked run was leased once it was eligible: one lag observed.
    assert_eq!(
        value(&samples, "tollgate_dispatch_lag_seconds_count", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "tollgate_dispatch_lag_seconds_bucket",
            &[("le", "+Inf")]
        ),
        Some(1.0)
    );
    // Every direct acquire (none waited) was timed.
    assert_eq!(
        value(&samples, "tollgate_decision_duration_seconds_count", &[]),
        Some(5.0)
    );

    // Bounded labels: no rendered dynamic key anywhere, every name prefixed.
    for s in &samples {
        assert!(s.name.starts_with("tollgate_"), "{}", s.name);
        for v in s.labels.values() {
            assert!(
                !v.contains("secret"),
                "a rendered key leaked into {}: {:?}",
                s.name,
                s.labels
            );
        }
    }
}

#[tokio::test]
async fn skipped_and_cancelled_runs_are_counted_by_task() {
    let server = Server::start(fake_clock()).await;
    server
        .define_task(
            "notify",
            json!({"on_limit": "skip",
                   "rate_limits": [{"dynamic_key": "input.company", "limit": 1, "period": "1h"}]}),
        )
        .await;
    for _ in 0..3 {
        server.enqueue("notify", json!({"company": "c1"})).await;
    }
    server.define_task("plain", json!({})).await;
    let run = id(&server.enqueue("plain", json!({})).await);
    assert_eq!(server.act(&run, "cancel", json!({})).await.status, 200);

    let (_, samples) = scrape(&server).await;
    let transitions = "tollgate_run_transitions_total";
    let at = |task, t| value(&samples, transitions, &[("task", task), ("transition", t)]);
    assert_eq!(at("notify", "enqueued"), Some(3.0));
    assert_eq!(at("notify", "skipped"), Some(2.0));
    assert_eq!(at("plain", "cancelled"), Some(1.0));
    let decisions = "tollgate_decisions_total";
    let spec = "task:notify/rate_limits[0]";
    assert_eq!(
        value(
            &samples,
            decisions,
            &[("limit", spec), ("outcome", "denied")]
        ),
        Some(2.0)
    );
    assert!(
        samples.iter().all(|s| s.labels.values().all(|v| v != "c1")),
        "the rendered key must not be a label"
    );
    server.stop().await;
}
