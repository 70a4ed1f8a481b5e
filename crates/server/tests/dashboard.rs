//! The dashboard (`GET /`) in a real headless browser against a live server.
//!
//! Debian's `chromium` is driven from the command line, without a WebDriver: `--dump-dom` gives
//! the DOM once the page's script has run for a few seconds of virtual time (so its 2 s polling
//! has refreshed the tables), and `--screenshot` keeps images of the page as test artifacts
//! (`target/tmp/dashboard.png`, and `dashboard-phone.png` at a phone's width). The page writes every script error and failed request into
//! `<pre id="errors">`, which must stay empty.
//!
//! Without a `chromium` on PATH the test is skipped, loudly, except in CI (`CI=true`), where
//! it fails: `.ci/run` installs it.

mod common;
#[path = "../../redis/tests/common/mod.rs"]
mod redis_common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::Server;
use serde_json::json;
use tollgate::SystemClock;

const BROWSER_DEADLINE: Duration = Duration::from_secs(90);

fn find_chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// The browser, or `None` (and a loud SKIPPED) where it may be missing.
fn chromium_or_skip(test: &str) -> Option<PathBuf> {
    let found = find_chromium();
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "chromium is not on PATH, and CI=true: .ci/run should have installed it"
        );
        eprintln!("SKIPPED {test}: no chromium (or chromium-browser) on PATH");
    }
    found
}

/// A fresh profile directory per browser run, under the target's tmp dir.
fn profile_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "dashboard-profile-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a profile directory");
    dir
}

/// Runs headless chromium on `url` with `args`; its stdout.
async fn chromium(browser: &Path, args: &[&str], url: &str) -> String {
    let profile = profile_dir();
    let mut cmd = tokio::process::Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let out = tokio::time::timeout(BROWSER_DEADLINE, cmd.output())
        .await
        .expect("chromium finished in time")
        .expect("chromium runs");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the DOM is UTF-8")
}

/// The DOM after the page's script ran for 5 s of virtual time (two polls).
async fn dump_dom(browser: &Path, url: &str) -> String {
    chromium(browser, &["--virtual-time-budget=5000", "--dump-dom"], url).await
}

/// The opening tag of the first element carrying `marker` (e.g. `data-key="x"`).
fn tag_with<'a>(dom: &'a str, marker: &str) -> Option<&'a str> {
    let at = dom.find(marker)?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    Some(&dom[start..=end])
}

/// The value of attribute `name` in an opening tag.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let at = tag.find(&key)? + key.len();
    let len = tag[at..].find('"')?;
    Some(&tag[at..at + len])
}

/// What the page shows of one limit: (used, remaining).
fn usage(dom: &str, key: &str) -> (u64, u64) {
    let row = tag_with(dom, &format!("data-key=\"{key}\""))
        .unwrap_or_else(|| panic!("no row for limit {key:?} in:\n{dom}"));
    let n = |a: &str| {
        attr(row, a)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {a} in {row}"))
    };
    (n("data-used"), n("data-remaining"))
}

/// The page's script ran, refreshed at least once, and reported no error.
fn assert_live_without_errors(dom: &str) {
    let body = tag_with(dom, "<body").expect("a body");
    let refreshes: u64 = attr(body, "data-refreshes")
        .and_then(|v| v.parse().ok())
        .expect("a refresh count on <body>");
    assert!(refreshes >= 1, "the page never refreshed itself: {body}");
    let errors = dom
        .split("<pre id=\"errors\">")
        .nth(1)
        .and_then(|rest| rest.split("</pre>").next())
        .expect("the errors element");
    assert_eq!(errors, "", "the page reported errors");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_limits_and_their_usage_moves_in_a_real_browser() {
    let Some(browser) = chromium_or_skip("the_dashboard_shows_limits_and_their_usage_moves") else {
        return;
    };
    let server = Server::start(SystemClock::new()).await;
    let url = server.url("/");
    exercise(&server, &browser).await;

    // The artifacts: how the page looks on a laptop and on a phone.
    for (name, size) in [
        ("dashboard.png", "1280,900"),
        ("dashboard-phone.png", "390,844"),
    ] {
        let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        let _ = std::fs::remove_file(&shot);
        chromium(
            &browser,
            &[
                "--virtual-time-budget=3000",
                &format!("--screenshot={}", shot.display()),
                &format!("--window-size={size}"),
            ],
            &url,
        )
        .await;
        let png = std::fs::read(&shot).expect("the screenshot was written");
        assert!(png.starts_with(b"\x89PNG"), "a PNG at {}", shot.display());
        eprintln!("dashboard screenshot: {}", shot.display());
    }
    server.stop().await;
}

/// Fills every table of the page over the API and checks, in the browser, what it shows and
/// that usage moves after acquisitions.
async fn exercise(server: &Server, browser: &Path) {
    let url = server.url("/");

    // The page itself: self-contained, nothing loaded from elsewhere.
    let page = server
        .client
        .get(&url)
        .send()
        .await
        .expect("GET /")
        .text()
        .await
        .expect("a page");
    for external in [
        "src=\"http",
        "href=\"http",
        "src=\"//",
        "href=\"//",
        "@import",
    ] {
        assert!(!page.contains(external), "the page loads {external}…");
    }

    // Something in every table: a declared limit, a dynamic key, a parked run, a skipped run.
    server
        .define_limit("test-limit", json!({"limit": 10, "period": "1h"}))
        .await;
    server
        .post(
            "/v1/acquire",
            json!({"limits": [{"key": "user:<b>42</b>", "limit": 5, "period": "1m"}]}),
        )
        .await;
    server
        .define_task(
            "sync",
            json!({"rate_limits": [{"dynamic_key": "input.user", "limit": 1, "period": "1h"}]}),
        )
        .await;
    server.enqueue("sync", json!({"user": "u1"})).await;
    let parked = common::id(&server.enqueue("sync", json!({"user": "u1"})).await);
    assert_eq!(server.lease(&["sync"], 10, 0).await.len(), 1);
    server
        .define_task(
            "notify",
            json!({"on_limit": "skip",
                   "rate_limits": [{"dynamic_key": "input.company", "limit": 1, "period": "1h"}]}),
        )
        .await;
    server.enqueue("notify", json!({"company": "acme"})).await;
    server.enqueue("notify", json!({"company": "acme"})).await;

    let before = dump_dom(browser, &url).await;
    assert_live_without_errors(&before);
    assert_eq!(usage(&before, "test-limit"), (0, 10));
    // A key is text, never markup.
    assert!(before.contains("user:&lt;b&gt;42&lt;/b&gt;"), "{before}");
    assert_eq!(usage(&before, "user:&lt;b&gt;42&lt;/b&gt;"), (1, 4));
    let sync = tag_with(&before, "data-task=\"sync\"").expect("the sync task's row");
    assert!(sync.starts_with("<tr"), "{sync}");
    assert!(
        tag_with(&before, "data-key=\"u1\"").is_some(),
        "the parked run's key"
    );
    assert!(before.contains("rate_limited"), "the skipped run's reason");
    // The parked run's row links to why it waits.
    assert!(
        before.contains(&format!("href=\"/v1/runs/{parked}/explain\"")),
        "no link to the parked run's explanation: {before}"
    );

    for _ in 0..3 {
        let a = server
            .post("/v1/acquire", json!({"limits": [{"key": "test-limit"}]}))
            .await;
        assert_eq!(a.body["allowed"], true);
    }
    let after = dump_dom(browser, &url).await;
    assert_live_without_errors(&after);
    assert_eq!(usage(&after, "test-limit"), (3, 7));
}

/// The page reads only the API, so it works the same when the server is a node of a Redis
/// deployment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_redis_mode_in_a_real_browser() {
    let Some(browser) = chromium_or_skip("the_dashboard_works_in_redis_mode_in_a_real_browser")
    else {
        return;
    };
    let Some(redis) = redis_common::redis("the_dashboard_works_in_redis_mode_in_a_real_browser")
    else {
        return;
    };
    let store = tollgate_redis::RedisStore::builder(&redis.url)
        .prefix(redis_common::fresh_prefix())
        .build()
        .expect("a valid URL");
    let server = Server::with_state(tollgate_server::AppState::redis(
        store,
        tollgate_server::Settings::default(),
    ))
    .await;
    exercise(&server, &browser).await;
    server.stop().await;
}

/// The page reads only the API, so it renders the same over the embedded (SQLite) store, the
/// default of `tollgate serve`; no browser needed to see the first paint.
#[tokio::test]
async fn the_page_renders_over_the_embedded_store() {
    let dir = profile_dir();
    let state = tollgate_server::AppState::open(&dir, tollgate_server::Settings::default())
        .expect("a data directory");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let base = format!("http://{}", listener.local_addr().expect("an address"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(tollgate_server::run(listener, state, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let put = client
        .put(format!("{base}/v1/limits/stripe-api"))
        .json(&json!({"rate": "10/m"}))
        .send()
        .await
        .expect("PUT a limit");
    assert_eq!(put.status(), 200);
    let page = client.get(format!("{base}/")).send().await.expect("GET /");
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .is_ok_and(|t| t.starts_with("text/html")),
        "{:?}",
        page.headers()
    );
    let page = page.text().await.expect("a page");
    assert_eq!(usage(&page, "stripe-api"), (0, 10));
    let _ = stop.send(());
    served
        .await
        .expect("the server task")
        .expect("a clean stop");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Serves one HTML page, to every request, on a free port of 127.0.0.1 (the same site as the
/// server under test: ports do not make sites); its URL.
async fn serve_page(html: String) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let url = format!("http://{}/", listener.local_addr().expect("its address"));
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let html = html.clone();
            tokio::spawn(async move {
                let mut buf = [0_u8; 4096];
                let _ = socket.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{html}",
                    html.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_asks_for_a_token_and_works_once_signed_in_in_a_real_browser() {
    let Some(browser) = chromium_or_skip("the_dashboard_asks_for_a_token_and_works_once_signed_in")
    else {
        return;
    };
    let admin = "admin-secret-for-the-browser";
    let reader = "read-secret-for-the-browser";
    let tokens = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("dashboard-tokens-{}.toml", std::process::id()));
    let tables =
        common::token_table("ops", "admin", admin) + &common::token_table("wall", "read", reader);
    std::fs::write(&tokens, tables).unwrap();
    let (_child, base) =
        common::spawn_serve(["--memory", "--tokens-file", &tokens.display().to_string()]).await;
    let client = reqwest::Client::new();
    let put = client
        .put(format!("{base}/v1/limits/stripe-api"))
        .bearer_auth(admin)
        .json(&json!({"limit": 10, "period": "1m"}))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{put:?}");

    // Signed out, the browser gets the sign-in form and none of the data.
    let dom = dump_dom(&browser, &format!("{base}/")).await;
    assert!(dom.contains("action=\"/login\""), "no sign-in form:\n{dom}");
    assert!(
        !dom.contains("stripe-api"),
        "data shown before signing in:\n{dom}"
    );

    // A person types the read token into the form and submits it (here a page on the same
    // site fills and submits the same form), and lands on the live dashboard.
    let submit = format!(
        "<!doctype html><html><body><form method=\"post\" action=\"{base}/login\">\
         <input name=\"token\" value=\"{reader}\"></form>\
         <script>document.forms[0].submit()</script></body></html>"
    );
    let page = serve_page(submit).await;
    let dom = chromium(
        &browser,
        &["--virtual-time-budget=8000", "--dump-dom"],
        &page,
    )
    .await;
    assert!(
        dom.contains("data-key=\"stripe-api\""),
        "the signed-in dashboard does not show the limit:\n{dom}"
    );
    assert!(
        dom.contains("action=\"/logout\""),
        "no sign-out button:\n{dom}"
    );
    assert_live_without_errors(&dom);
}
