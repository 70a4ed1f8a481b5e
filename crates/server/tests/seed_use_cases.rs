//! The use cases Tollgate unifies (docs/design.md §1), end to end over HTTP, as a worker sees
//! them: each test defines the limits and tasks the way a user of Hatchet, Inngest, Celery,
//! Sidekiq or Dramatiq would, then enqueues and leases and checks *when* runs are handed out.
//!
//! On tokio's paused clock (`TokioClock`): each lease is a long-poll whose wait passes in
//! virtual time, so dispatch instants are exact and nothing sleeps for real.

mod common;

use std::time::Duration;

use common::{START, Server, id, ids};
use serde_json::json;
use tokio::time::Instant;
use tollgate::TokioClock;

const START_MS: u64 = START.as_millis_floor();

async fn paused() -> Server {
    Server::start(TokioClock::new(START)).await
}

/// Leases `n` runs of `task` through long-polls (up to `max` each); each lease's run ids with
/// the virtual milliseconds since `start` at which it was answered.
async fn lease_all(
    server: &Server,
    task: &str,
    n: usize,
    max: u64,
    start: Instant,
) -> Vec<(u64, Vec<String>)> {
    let mut out = Vec::new();
    let mut got = 0;
    while got < n {
        let leased = server.lease(&[task], max, 60_000).await;
        assert!(!leased.is_empty(), "a long-poll of 60 s found nothing");
        got += leased.len();
        let at = u64::try_from(start.elapsed().as_millis()).expect("a short test");
        out.push((at, ids(&leased)));
    }
    out
}

/// Hatchet's static key: `test-limit`, 2 per second, consumed by a task with units 1.
#[tokio::test(start_paused = true)]
async fn a_static_limit_of_two_per_second_admits_two_runs_per_second() {
    let server = paused().await;
    let limit = server
        .define_limit("test-limit", json!({"rate": "2/s"}))
        .await;
    assert_eq!(limit["algorithm"], "sliding_window");
    server
        .define_task(
            "send-email",
            json!({"rate_limits": [{"static_key": "test-limit", "units": 1}]}),
        )
        .await;
    let runs = server.enqueue_n("send-email", 6, json!({})).await;
    let start = Instant::now();
    let leases = lease_all(&server, "send-email", 6, 10, start).await;

    let mut at: Vec<u64> = Vec::new();
    let mut order: Vec<String> = Vec::new();
    for (t, batch) in &leases {
        at.extend(std::iter::repeat_n(*t, batch.len()));
        order.extend(batch.iter().cloned());
    }
    assert_eq!(order, runs, "in enqueue order");
    assert_eq!(&at[..2], [0, 0], "two at once");
    for i in 2..at.len() {
        assert!(
            at[i] - at[i - 2] >= 1_000,
            "never more than two in a second: {at:?}"
        );
    }
    // And no slower than the limit allows: each wait is exact to within the window's
    // precision (1/60 s; docs/design.md §2).
    assert!(at[5] <= 2 * (1_000 + 17), "{at:?}");
    server.stop().await;
}

/// Hatchet's dynamic key: `input.user_id`, 10 per minute. One user's backlog never delays
/// another user's runs.
#[tokio::test(start_paused = true)]
async fn a_per_user_limit_never_lets_one_users_backlog_delay_another() {
    let server = paused().await;
    server
        .define_task(
            "sync-user",
            json!({"lease_timeout": "10m",
                   "rate_limits": [{"dynamic_key": "input.user_id", "units": 1, "limit": 10, "period": "MINUTE"}]}),
        )
        .await;
    let busy = server
        .enqueue_n("sync-user", 30, json!({"user_id": "u1"}))
        .await;
    let other = server
        .enqueue_n("sync-user", 5, json!({"user_id": "u2"}))
        .await;

    let leased = ids(&server.lease(&["sync-user"], 100, 0).await);
    assert_eq!(leased.len(), 15);
    for run in &other {
        assert!(leased.contains(run), "u2's runs are leased at once");
    }
    assert_eq!(leased[..10], busy[..10]);

    let waiting = server
        .get("/v1/runs?task=sync-user&state=waiting&limit=1000")
        .await;
    let waiting = waiting.body["runs"].as_array().unwrap();
    assert_eq!(waiting.len(), 20);
    for run in waiting {
        assert_eq!(run["waiting_on"], "u1");
        assert_eq!(run["attempt"], 0);
    }
    // The next ten of u1 leave when the minute has passed (exact to the window's precision,
    // 1 s), all at once.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let next = server.lease(&["sync-user"], 100, 60_000).await;
    assert_eq!(ids(&next), busy[10..20]);
    let at = server.now_ms();
    assert!(
        (START_MS + 60_000..=START_MS + 61_000).contains(&at),
        "{}",
        at - START_MS
    );
    server.stop().await;
}

/// Inngest's rateLimit: one run per company per 4 hours from `event.data.company_id`; later
/// events for that company are skipped (and stored), other companies are not.
#[tokio::test(start_paused = true)]
async fn a_per_company_event_limit_skips_later_events_for_that_company_only() {
    let server = paused().await;
    server
        .define_task(
            "sync-company",
            json!({"triggers": ["intercom/company.updated"], "on_limit": "skip",
                   "rate_limits": [{"dynamic_key": "event.data.company_id", "limit": 1, "period": "4h"}]}),
        )
        .await;
    let event = |company: &str| json!({"name": "intercom/company.updated", "data": {"company_id": company}});
    let state_of = |r: &common::Answer| {
        assert_eq!(r.status, 202, "{:?}", r.body);
        r.body["runs"][0]["state"].as_str().unwrap().to_owned()
    };
    let first = server.post("/v1/events", event("c1")).await;
    assert_eq!(state_of(&first), "queued");
    let again = server.post("/v1/events", event("c1")).await;
    assert_eq!(state_of(&again), "skipped");
    let other = server.post("/v1/events", event("c2")).await;
    assert_eq!(state_of(&other), "queued");

    let skipped = server.run(&id(&again.body["runs"][0])).await;
    assert_eq!(skipped["skip_reason"], "rate_limited");
    assert_eq!(skipped["waiting_on"], "c1");
    assert_eq!(skipped["input"], json!({"company_id": "c1"}));
    assert_eq!(
        server
            .get("/v1/runs?task=sync-company&state=skipped")
            .await
            .body["runs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Only the two queued runs are ever leased.
    let leased = ids(&server.lease(&["sync-company"], 10, 0).await);
    assert_eq!(
        leased,
        [id(&first.body["runs"][0]), id(&other.body["runs"][0])]
    );

    tokio::time::sleep(Duration::from_secs(3 * 3600 + 59 * 60)).await;
    let r = server.post("/v1/events", event("c1")).await;
    assert_eq!(state_of(&r), "skipped", "still within the 4 hours");
    tokio::time::sleep(Duration::from_secs(5 * 60)).await;
    let r = server.post("/v1/events", event("c1")).await;
    assert_eq!(state_of(&r), "queued", "4 hours later, c1 runs again");
    server.stop().await;
}

/// Celery's `rate_limit='10/s'`: a gcra limit with burst 1 spaces runs 100 ms apart.
#[tokio::test(start_paused = true)]
async fn a_celery_style_ten_per_second_spaces_runs_100_ms_apart() {
    let server = paused().await;
    server
        .define_limit(
            "celery-10s",
            json!({"algorithm": "gcra", "rate": "10/s", "burst": 1}),
        )
        .await;
    server
        .define_task(
            "resize",
            json!({"rate_limits": [{"static_key": "celery-10s"}]}),
        )
        .await;
    let runs = server.enqueue_n("resize", 5, json!({})).await;
    let start = Instant::now();
    let leases = lease_all(&server, "resize", 5, 10, start).await;
    let expected: Vec<(u64, Vec<String>)> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| (100 * i as u64, vec![r.clone()]))
        .collect();
    assert_eq!(leases, expected, "one run per lease, 100 ms apart");
    server.stop().await;
}

/// Hatchet's slots / Sidekiq's concurrent limiter: at most 5 runs at once; a finished run's
/// slot goes to the next run at that instant.
#[tokio::test(start_paused = true)]
async fn a_concurrency_of_five_runs_five_at_a_time() {
    let server = paused().await;
    server
        .define_task(
            "transcode",
            json!({"concurrency": [{"key": "'global'", "limit": 5}], "lease_timeout": "10m"}),
        )
        .await;
    let runs = server.enqueue_n("transcode", 8, json!({})).await;
    let first = ids(&server.lease(&["transcode"], 10, 0).await);
    assert_eq!(first, runs[..5]);
    for waiting in &runs[5..] {
        let r = server.run(waiting).await;
        assert_eq!(r["state"], "waiting");
        assert_eq!(r["waiting_on"], "global");
        assert_eq!(
            r["eligible_at_ms"],
            serde_json::Value::Null,
            "until a slot frees"
        );
    }
    assert!(server.lease(&["transcode"], 10, 0).await.is_empty());

    // A worker waiting for work gets the slot the moment a run completes.
    let poll = {
        let client = server.client.clone();
        let url = server.url("/v1/workers/lease");
        tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&json!({"worker_id": "w2", "tasks": ["transcode"], "max": 10, "wait_ms": 60_000}))
                .send()
                .await
                .unwrap();
            (Instant::now(), r.json::<serde_json::Value>().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let completed_at = Instant::now();
    let r = server.act(&first[0], "complete", json!({})).await;
    assert_eq!(r.status, 200);
    let (answered_at, body) = poll.await.unwrap();
    assert_eq!(ids(body["runs"].as_array().unwrap()), [runs[5].clone()]);
    assert_eq!(answered_at, completed_at);

    let running = server.get("/v1/runs?task=transcode&state=running").await;
    assert_eq!(running.body["runs"].as_array().unwrap().len(), 5);
    server.stop().await;
}

/// Sidekiq's bucket / Dramatiq's Bucket: a fixed window aligned on the clock. Three per
/// minute; the rest wait for the next minute boundary, exactly.
#[tokio::test(start_paused = true)]
async fn a_clock_aligned_bucket_releases_runs_at_the_next_window() {
    let server = paused().await;
    server
        .define_limit(
            "bucket",
            json!({"algorithm": "fixed_window", "limit": 3, "period": "1m", "align": "clock"}),
        )
        .await;
    server
        .define_task(
            "report",
            json!({"lease_timeout": "10m", "rate_limits": [{"static_key": "bucket"}]}),
        )
        .await;
    let runs = server.enqueue_n("report", 5, json!({})).await;
    assert_eq!(ids(&server.lease(&["report"], 10, 0).await), runs[..3]);
    // START is 40 s before a minute boundary of the Unix clock.
    let boundary_ms = START_MS.div_ceil(60_000) * 60_000;
    assert_eq!(boundary_ms, START_MS + 40_000);
    assert_eq!(server.run(&runs[3]).await["eligible_at_ms"], boundary_ms);
    let start = Instant::now();
    let next = server.lease(&["report"], 10, 60_000).await;
    assert_eq!(ids(&next), runs[3..]);
    assert_eq!(start.elapsed(), Duration::from_secs(40));
    server.stop().await;
}

/// Dramatiq's Window / Sidekiq's window: a sliding window of three per minute; the fourth run
/// waits until the first three have left the window.
#[tokio::test(start_paused = true)]
async fn a_sliding_window_releases_a_run_when_the_window_has_room() {
    let server = paused().await;
    server
        .define_limit(
            "window",
            json!({"algorithm": "sliding_window", "limit": 3, "period": "1m"}),
        )
        .await;
    server
        .define_task(
            "digest",
            json!({"lease_timeout": "10m", "rate_limits": [{"static_key": "window"}]}),
        )
        .await;
    let runs = server.enqueue_n("digest", 3, json!({})).await;
    assert_eq!(ids(&server.lease(&["digest"], 10, 0).await), runs);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let late = id(&server.enqueue("digest", json!({})).await);
    assert!(server.lease(&["digest"], 10, 0).await.is_empty());
    let parked = server.run(&late).await;
    // Exact within the window's precision (1 s for 60 buckets per minute).
    let eligible = parked["eligible_at_ms"].as_u64().unwrap();
    assert!(
        (START_MS + 60_000..=START_MS + 61_000).contains(&eligible),
        "{parked}"
    );
    let next = server.lease(&["digest"], 10, 60_000).await;
    assert_eq!(ids(&next), [late]);
    assert_eq!(server.now_ms(), eligible);
    server.stop().await;
}
