//! `GET /`: the dashboard. One self-contained page (CSS and JS inline, nothing fetched from
//! elsewhere): its tables are rendered here for the first paint, then its script refreshes
//! them every 2 s from the JSON API (`/v1/limits?dynamic=50`, `/v1/tasks`,
//! `/v1/runs?state=waiting&limit=50`, `/v1/runs?state=skipped&limit=20`) — plain polling, no
//! SSE or WebSocket, so it works through any proxy and against any store the API runs on.
//!
//! The rows rendered here and by the script (`dashboard.html`) are the same markup built from
//! the same JSON: every value is escaped here, and set with `textContent` there.

use std::fmt::Write;

use axum::Form;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde_json::Value;
use tollgate::RunState;

use crate::api::{limits, tasks};
use crate::error::ApiError;
use crate::state::AppState;

/// The most dynamic keys the page shows: the busiest.
pub(crate) const DYNAMIC_SHOWN: usize = 50;

const PAGE: &str = include_str!("dashboard.html");

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(page))
        .route("/login", post(sign_in))
        .route("/logout", post(sign_out))
}

/// The page's content security policy: nothing comes from elsewhere; forms post here only.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; \
                   connect-src 'self'; img-src data:; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

/// The sign-in form (`GET /` with access control on and no valid token): 401, with `error`
/// said above the form when there is one.
pub(crate) fn sign_in_page(error: Option<&str>) -> Response {
    let error = error.map_or(String::new(), |e| {
        format!("<p class=\"error\">{}</p>", esc(e))
    });
    let html = SIGN_IN.replace("{{error}}", &error);
    (
        StatusCode::UNAUTHORIZED,
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        Html(html),
    )
        .into_response()
}

const SIGN_IN: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Tollgate: sign in</title>
<link rel="icon" href="data:,">
<style>
body { margin: 0; min-height: 100vh; display: grid; place-items: center; background: #f6f7f9;
  color: #1c2230; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
form { background: #fff; border: 1px solid #e4e7ec; border-radius: 10px; padding: 1.25rem 1.5rem;
  width: min(24rem, 90vw); display: grid; gap: .6rem; }
h1 { font-size: 1.15rem; margin: 0; }
input { font: inherit; padding: .4rem .5rem; border: 1px solid #c9ced6; border-radius: 6px; }
button { font: inherit; padding: .4rem; border: 0; border-radius: 6px; background: #3856c9;
  color: #fff; cursor: pointer; }
.error { color: #d0453a; margin: 0; }
small { color: #667085; }
</style>
</head>
<body>
<form method="post" action="/login">
  <h1>Tollgate</h1>
  {{error}}
  <label for="token">Token</label>
  <input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
  <button type="submit">Sign in</button>
  <small>Any token of this server's tokens file; the dashboard only reads.</small>
</form>
</body>
</html>
"#;

#[derive(serde::Deserialize)]
struct SignIn {
    token: String,
}

/// `POST /login` (the sign-in form): a known token sets the sign-in cookie and goes to the
/// dashboard; any other answers the form again, 401.
async fn sign_in(
    State(state): State<AppState>,
    form: Result<Form<SignIn>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return ApiError::bad_request(
            tollgate_api::ErrorCode::InvalidBody,
            "the sign-in form is sent as application/x-www-form-urlencoded with a `token` field",
        )
        .with_field("token")
        .into_response();
    };
    let Some(access) = state.settings().access.clone() else {
        return Redirect::to("/").into_response();
    };
    let secret = form.token.trim();
    if access.tokens().find(secret).is_none() {
        return sign_in_page(Some("That token is not known to this server."));
    }
    (
        [(header::SET_COOKIE, access.sign_in_cookie(secret))],
        Redirect::to("/"),
    )
        .into_response()
}

/// `POST /logout`: forgets the sign-in cookie.
async fn sign_out(State(state): State<AppState>) -> Response {
    let Some(access) = state.settings().access.clone() else {
        return Redirect::to("/").into_response();
    };
    (
        [(header::SET_COOKIE, access.sign_out_cookie())],
        Redirect::to("/"),
    )
        .into_response()
}

/// `GET /`.
async fn page(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let json = |v: Result<Value, serde_json::Error>| {
        v.map_err(|e| ApiError::internal("rendering the dashboard", &e))
    };
    let limits = json(serde_json::to_value(
        limits::listing(&state, Some(DYNAMIC_SHOWN)).await?,
    ))?;
    let tasks = json(serde_json::to_value(tasks::views(&state).await?))?;
    let queue = state.queue();
    let parked = queue.runs(None, Some(RunState::Waiting), 50).await?;
    let parked = json(serde_json::to_value(parked))?;
    let skipped = queue.runs(None, Some(RunState::Skipped), 20).await?;
    let skipped = json(serde_json::to_value(skipped))?;
    let now_ms = state.now().as_millis_floor();
    let signed_in = state.settings().access.is_some();
    let html = render(&limits, &tasks, &parked, &skipped, now_ms).replace(
        "{{sign_out}}",
        if signed_in {
            "<form method=\"post\" action=\"/logout\"><button type=\"submit\">Sign out</button></form>"
        } else {
            ""
        },
    );
    Ok((
        [
            (header::CACHE_CONTROL, "no-store"),
            // Nothing on the page comes from elsewhere; say so to the browser too.
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        Html(html),
    ))
}

fn render(limits: &Value, tasks: &Value, parked: &Value, skipped: &Value, now_ms: u64) -> String {
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let limit_list = list(&limits["limits"]);
    let shown = limit_list
        .iter()
        .filter(|l| l["namespace"] == "dynamic")
        .count();
    let total = limits["dynamic_total"].as_u64().unwrap_or(0);
    let note = if total > shown as u64 {
        format!("busiest {shown} of {total} dynamic keys")
    } else {
        format!("{total} dynamic keys")
    };
    let rows = |items: Vec<Value>, f: &dyn Fn(&Value) -> String, cols: usize, none: &str| {
        if items.is_empty() {
            format!(
                "<tr><td colspan=\"{cols}\" class=\"empty\">{}</td></tr>",
                esc(none)
            )
        } else {
            items.iter().map(f).collect()
        }
    };
    let mut parked_runs = list(parked);
    // The API lists newest first; the oldest parked runs are the next to go.
    parked_runs.reverse();
    PAGE.replace("{{rendered_at}}", &esc(&iso_time(now_ms)))
        .replace("{{limits_note}}", &esc(&note))
        .replace("{{dynamic_shown}}", &DYNAMIC_SHOWN.to_string())
        .replace(
            "{{limits}}",
            &rows(
                limit_list,
                &limit_row,
                6,
                "No limits yet: PUT /v1/limits/{key}",
            ),
        )
        .replace(
            "{{tasks}}",
            &rows(
                list(tasks),
                &task_row,
                9,
                "No tasks yet: PUT /v1/tasks/{name}",
            ),
        )
        .replace(
            "{{parked}}",
            &rows(parked_runs, &|r| parked_row(r, now_ms), 4, "No parked runs"),
        )
        .replace(
            "{{skipped}}",
            &rows(
                list(skipped),
                &|r| skipped_row(r, now_ms),
                5,
                "No skipped runs",
            ),
        )
}

/// Escapes text for HTML content and quoted attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON value as the script shows it (`String(v)`), escaped; `null` as `dash`.
fn text(v: &Value, dash: &str) -> String {
    esc(&match v {
        Value::Null => dash.to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

fn u64_of(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// As the script's `duration`.
fn duration(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms} ms");
    }
    let s = ms as f64 / 1000.0;
    let whole = ms / 1000;
    if s < 60.0 {
        format!("{s:.1} s")
    } else if whole < 3600 {
        format!("{} min {} s", whole / 60, whole % 60)
    } else if whole < 86_400 {
        format!("{} h {} min", whole / 3600, (whole % 3600) / 60)
    } else {
        format!("{} d {} h", whole / 86_400, (whole % 86_400) / 3600)
    }
}

/// As the script's `relative`.
fn relative(at_ms: Option<u64>, now_ms: u64) -> String {
    match at_ms {
        None => "—".to_owned(),
        Some(at) if at > now_ms => format!("in {}", duration(at - now_ms)),
        Some(at) if now_ms - at < 1000 => "now".to_owned(),
        Some(at) => format!("{} ago", duration(now_ms - at)),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` from Unix-epoch milliseconds (civil-from-days, proleptic Gregorian).
fn iso_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// As the script's `params`.
fn params(l: &Value) -> String {
    let has = |k: &str| !l[k].is_null();
    if has("rate") {
        text(&l["rate"], "")
    } else if has("limit") && has("period") {
        format!("{} / {}", text(&l["limit"], ""), text(&l["period"], ""))
    } else if has("capacity") {
        format!(
            "{}, refill {}",
            text(&l["capacity"], ""),
            text(&l["refill"], "")
        )
    } else if has("limit") {
        format!("{} at once", text(&l["limit"], ""))
    } else if has("parties") {
        format!("{} parties", text(&l["parties"], ""))
    } else {
        String::new()
    }
}

/// As the script's `adaptive`: an adaptive limit's limit in force and its bounds.
fn adaptive(l: &Value) -> String {
    match l["limit_in_force"].as_u64() {
        Some(n) => format!(
            " <span class=\"adaptive\" title=\"adaptive (AIMD) between min and max\">in force {n} \
             ({}–{})</span>",
            u64_of(&l["adaptive"]["min"]),
            u64_of(&l["adaptive"]["max"])
        ),
        None => String::new(),
    }
}

fn limit_row(l: &Value) -> String {
    let (used, remaining) = (u64_of(&l["used"]), u64_of(&l["remaining"]));
    let capacity = used.saturating_add(remaining);
    let share = if capacity > 0 {
        used as f64 / capacity as f64
    } else {
        0.0
    };
    let pct = (share * 100.0).round().min(100.0) as u64;
    let level = if share >= 0.9 {
        "full"
    } else if share >= 0.7 {
        "warn"
    } else {
        ""
    };
    let namespace = text(&l["namespace"], "");
    let reset = match l["reset_after_ms"].as_u64() {
        Some(ms) => duration(ms),
        None => "—".to_owned(),
    };
    let mut out = String::new();
    let _ = write!(
        out,
        "<tr data-key=\"{key}\" data-namespace=\"{namespace}\" data-used=\"{used}\" \
         data-remaining=\"{remaining}\"><td class=\"key\">{key}</td>\
         <td><span class=\"tag {namespace}\">{namespace}</span></td>\
         <td class=\"opt\">{algorithm} <span class=\"muted\">{params}</span>{adaptive}</td>\
         <td class=\"usage\"><span>{used} / {capacity} used</span>\
         <div class=\"bar\" title=\"{pct}%\"><span class=\"{level}\" style=\"width:{pct}%\"></span></div></td>\
         <td class=\"num opt\">{remaining}</td><td class=\"num\">{reset}</td></tr>",
        key = text(&l["key"], ""),
        algorithm = text(&l["algorithm"], ""),
        params = params(l),
        adaptive = adaptive(l),
        reset = esc(&reset),
    );
    out
}

fn count(n: u64, opt: bool) -> String {
    let mut class = String::from("num");
    if n == 0 {
        class.push_str(" zero");
    }
    if opt {
        class.push_str(" opt");
    }
    format!("<td class=\"{class}\">{n}</td>")
}

fn task_row(t: &Value) -> String {
    let d = &t["depth"];
    let c = |k: &str, opt: bool| count(u64_of(&d[k]), opt);
    format!(
        "<tr data-task=\"{name}\"><td class=\"key\">{name}</td><td class=\"opt\">{policy}</td>\
         {}{}{}{}{}{}{}</tr>",
        c("queued", false),
        c("waiting", false),
        c("running", false),
        c("succeeded", true),
        c("failed", false),
        c("skipped", true),
        c("cancelled", true),
        name = text(&t["name"], ""),
        policy = text(&t["spec"]["on_limit"], ""),
    )
}

fn parked_row(r: &Value, now_ms: u64) -> String {
    let at = r["eligible_at_ms"].as_u64();
    let (title, when) = match at {
        None => ("when a slot frees".to_owned(), "slot frees".to_owned()),
        Some(ms) => (iso_time(ms), relative(Some(ms), now_ms)),
    };
    format!(
        "<tr data-run=\"{id}\"><td class=\"key\">{id}</td><td>{task}</td>\
         <td class=\"key\">{key}</td><td class=\"num\" title=\"{title}\">{when}</td></tr>",
        id = text(&r["id"], ""),
        task = text(&r["task"], ""),
        key = text(&r["waiting_on"], "—"),
        title = esc(&title),
        when = esc(&when),
    )
}

fn skipped_row(r: &Value, now_ms: u64) -> String {
    let at = r["updated_at_ms"].as_u64();
    format!(
        "<tr data-run=\"{id}\"><td class=\"key\">{id}</td><td>{task}</td><td>{reason}</td>\
         <td class=\"key\">{key}</td><td class=\"num opt\" title=\"{title}\">{when}</td></tr>",
        id = text(&r["id"], ""),
        task = text(&r["task"], ""),
        reason = text(&r["skip_reason"], "—"),
        key = text(&r["waiting_on"], "—"),
        title = esc(&at.map(iso_time).unwrap_or_default()),
        when = esc(&relative(at, now_ms)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_value_is_escaped() {
        let evil = "<script>alert('x')</script>\"&";
        let html = render(
            &json!({"limits": [{"key": evil, "namespace": "dynamic", "algorithm": evil,
                                "limit": 5, "period": "1m", "used": 2, "remaining": 3,
                                "reset_after_ms": 1500}],
                    "dynamic_total": 1}),
            &json!([{"name": evil, "spec": {"on_limit": evil}, "depth": {"queued": 1}}]),
            &json!([{"id": evil, "task": evil, "waiting_on": evil, "eligible_at_ms": 5000}]),
            &json!([{"id": evil, "task": evil, "waiting_on": evil, "skip_reason": evil,
                     "updated_at_ms": 1000}]),
            2000,
        );
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&amp;"));
        assert!(html.contains("data-used=\"2\" data-remaining=\"3\""));
        assert!(html.contains("2 / 5 used"));
        assert!(html.contains("1.5 s"));
        assert!(html.contains("in 3.0 s"));
    }

    #[test]
    fn times_read_as_people_say_them() {
        assert_eq!(duration(999), "999 ms");
        assert_eq!(duration(61_000), "1 min 1 s");
        assert_eq!(duration(3_660_000), "1 h 1 min");
        assert_eq!(relative(Some(500), 1000), "now");
        assert_eq!(relative(Some(1000), 3000), "2.0 s ago");
        assert_eq!(iso_time(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(iso_time(0), "1970-01-01T00:00:00Z");
    }
}
