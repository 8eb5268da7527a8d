//! The operator's dashboard, served by the api role at `/`: server-rendered HTML with inline
//! SVG charts and one stylesheet, no script and nothing fetched from elsewhere.
//!
//! - `/` every webhook at a glance (sortable, refreshing itself);
//! - `/ui/webhooks/{id}` one webhook: charts, status codes, attempts (filtered, paged by
//!   cursor), dead letters and their redrive, pause and resume, the definition, a dry run;
//! - `/ui/webhooks/{id}/attempts/{attempt}` one attempt, redacted, linked to its trace;
//! - `/ui/records?object=&id=` a record's journey: why each webhook fired or did not.
//!
//! With `--api-token`, every page needs a session: `/login` takes the token and keeps it in
//! a cookie marked `HttpOnly`, `SameSite=Strict` and, over HTTPS, `Secure` (never in a URL). The forms that change
//! something are POSTs, which that cookie policy keeps other sites from making.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use actix_web::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, COOKIE as COOKIE_HEADER, LOCATION, SET_COOKIE};
use actix_web::{HttpRequest, HttpResponse, web};
use hookline_model::{FieldError, Fields};
use hookline_proto::{Attempt, Outcome};
use hookline_store::{AttemptFilter, QueueStats, now_ms};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::attempts::{cursor, rfc3339};
use crate::{ApiError, ApiState};

const COOKIE: &str = "hookline_session";
/// Attempts read per webhook for its statistics (the newest of the last day).
const STATS_READ: usize = 5_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
const PAGE: usize = 50;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(overview))
        .route("/login", web::get().to(login_form))
        .route("/login", web::post().to(login))
        .route("/logout", web::post().to(logout))
        .route("/ui/style.css", web::get().to(style))
        .route("/ui/records", web::get().to(record_journey))
        .route("/ui/webhooks/{id}", web::get().to(webhook_page))
        .route("/ui/webhooks/{id}/pause", web::post().to(pause))
        .route("/ui/webhooks/{id}/resume", web::post().to(resume))
        .route("/ui/webhooks/{id}/redrive", web::post().to(redrive))
        .route("/ui/webhooks/{id}/try", web::post().to(try_it))
        .route("/ui/webhooks/{id}/attempts/{attempt}", web::get().to(attempt_page));
}

// --- sessions ---

/// Whether the request may see the dashboard: no token configured, or the session cookie
/// holds it.
fn signed_in(state: &ApiState, req: &HttpRequest) -> bool {
    match &state.api_token {
        None => true,
        Some(token) => session(req).is_some_and(|v| crate::same(v.as_bytes(), token.as_bytes())),
    }
}

/// The session cookie's value, from the `Cookie` headers.
fn session(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get_all(COOKIE_HEADER)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| hookline_model::url::percent_decoded(value))
}

/// The session cookie: the token, percent-encoded so any token fits a cookie. `Secure` when
/// the page was asked for over HTTPS (directly, or through a proxy that says so in
/// `Forwarded` or `X-Forwarded-Proto`), so the browser never sends it back in the clear; not
/// over plain HTTP, where a browser would drop a `Secure` cookie and signing in would fail.
fn session_cookie(req: &HttpRequest, value: &str, max_age_s: u64) -> String {
    let secure = if req.connection_info().scheme() == "https" { "; Secure" } else { "" };
    format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}", url_seg(value))
}

fn to_login() -> HttpResponse {
    HttpResponse::SeeOther().insert_header((LOCATION, "/login")).finish()
}

fn back_to(path: &str) -> HttpResponse {
    HttpResponse::SeeOther().insert_header((LOCATION, path.to_string())).finish()
}

async fn login_form(state: web::Data<ApiState>) -> HttpResponse {
    if state.api_token.is_none() {
        return back_to("/");
    }
    page("Sign in", "", &login_body(None), false)
}

fn login_body(error: Option<&str>) -> String {
    let error = error.map(|e| format!(r#"<p class="error">{}</p>"#, esc(e))).unwrap_or_default();
    format!(
        r#"<section class="card narrow"><h1>Sign in</h1>{error}
<form method="post" action="/login"><label>API token <input type="password" name="token" autocomplete="current-password" autofocus required></label>
<button type="submit">Sign in</button></form><p class="muted">The token this node was started with (<code>--api-token</code>).</p></section>"#
    )
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(req: HttpRequest, state: web::Data<ApiState>, form: web::Form<LoginForm>) -> HttpResponse {
    let Some(token) = &state.api_token else { return back_to("/") };
    if !crate::same(form.token.as_bytes(), token.as_bytes()) {
        let mut r = page("Sign in", "", &login_body(Some("That is not this node's token.")), false);
        *r.status_mut() = actix_web::http::StatusCode::UNAUTHORIZED;
        return r;
    }
    HttpResponse::SeeOther()
        .insert_header((LOCATION, "/"))
        .insert_header((SET_COOKIE, session_cookie(&req, &form.token, 12 * 3600)))
        .finish()
}

async fn logout(req: HttpRequest) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((LOCATION, "/login"))
        .insert_header((SET_COOKIE, session_cookie(&req, "", 0)))
        .finish()
}

// --- the statistics of a webhook, from its attempt log ---

#[derive(Default)]
pub struct Stats {
    hour_calls: usize,
    hour_ok: usize,
    day_calls: usize,
    day_ok: usize,
    /// Durations of the last hour's attempts, sorted.
    hour_ms: Vec<u64>,
    /// Per hour of the last day, oldest first: (successes, failures, p95 ms).
    hourly: Vec<(usize, usize, u64)>,
    by_status: BTreeMap<String, usize>,
    last_error: Option<(i64, String)>,
    /// The day held more attempts than were read.
    capped: bool,
}

impl Stats {
    fn of(attempts: &[Attempt], now: i64) -> Stats {
        let mut s = Stats { hourly: vec![(0, 0, 0); 24], ..Default::default() };
        let mut hourly_ms: Vec<Vec<u64>> = vec![Vec::new(); 24];
        s.capped = attempts.len() >= STATS_READ;
        for a in attempts {
            let ok = a.outcome() == Outcome::Success;
            let age = now - a.started_at_ms;
            if age > DAY_MS {
                continue;
            }
            s.day_calls += 1;
            s.day_ok += ok as usize;
            if age <= HOUR_MS {
                s.hour_calls += 1;
                s.hour_ok += ok as usize;
                s.hour_ms.push(a.duration_ms);
            }
            let slot = 23 - ((age.max(0) / HOUR_MS) as usize).min(23);
            if ok {
                s.hourly[slot].0 += 1;
            } else {
                s.hourly[slot].1 += 1;
            }
            hourly_ms[slot].push(a.duration_ms);
            let status = a.response.as_ref().map_or_else(|| "no response".to_string(), |r| r.status.to_string());
            *s.by_status.entry(status).or_default() += 1;
            if !ok && !a.error.is_empty() && s.last_error.as_ref().is_none_or(|(at, _)| a.started_at_ms > *at) {
                s.last_error = Some((a.started_at_ms, a.error.clone()));
            }
        }
        s.hour_ms.sort_unstable();
        for (slot, mut ms) in hourly_ms.into_iter().enumerate() {
            ms.sort_unstable();
            s.hourly[slot].2 = percentile(&ms, 0.95).unwrap_or(0);
        }
        s
    }

    fn hour_rate(&self) -> Option<f64> {
        (self.hour_calls > 0).then(|| self.hour_ok as f64 / self.hour_calls as f64)
    }

    fn day_rate(&self) -> Option<f64> {
        (self.day_calls > 0).then(|| self.day_ok as f64 / self.day_calls as f64)
    }
}

fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[i])
}

/// How old a webhook's statistics may be when shown: pages refreshing themselves, and many
/// people looking, then read each webhook's attempt log at most this often.
const STATS_FRESH: Duration = Duration::from_secs(5);

/// Each webhook's newest statistics, shared by every page and viewer of this node.
#[derive(Default)]
pub struct StatsCache {
    latest: std::sync::Mutex<BTreeMap<String, (std::time::Instant, std::sync::Arc<Stats>)>>,
}

async fn stats_of(state: &ApiState, webhook: &str, now: i64) -> Result<std::sync::Arc<Stats>, ApiError> {
    let cache = &state.dashboard_stats;
    {
        let latest = cache.latest.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, stats)) = latest.get(webhook)
            && at.elapsed() < STATS_FRESH
        {
            return Ok(stats.clone());
        }
    }
    let filter = AttemptFilter { since_ms: Some(now - DAY_MS), limit: STATS_READ, ..Default::default() };
    let stats = std::sync::Arc::new(Stats::of(&state.store.list_attempts(webhook, &filter).await?, now));
    let mut latest = cache.latest.lock().unwrap_or_else(|p| p.into_inner());
    // Webhooks deleted since are dropped as the cache is written.
    latest.retain(|_, (at, _)| at.elapsed() < 10 * STATS_FRESH);
    latest.insert(webhook.to_string(), (std::time::Instant::now(), stats.clone()));
    Ok(stats)
}

// --- pages ---

#[derive(Deserialize)]
struct OverviewQuery {
    sort: Option<String>,
}

async fn overview(
    state: web::Data<ApiState>,
    req: HttpRequest,
    query: web::Query<OverviewQuery>,
) -> Result<HttpResponse, ApiError> {
    if !signed_in(&state, &req) {
        return Ok(to_login());
    }
    let now = now_ms();
    let webhooks = state.store.list_webhooks().await?;
    let queues: BTreeMap<String, QueueStats> = state.queue_stats.get(&state).await?.iter().cloned().collect();
    let mut rows = Vec::new();
    for wh in &webhooks {
        let id = &wh.definition.id;
        let stats = stats_of(&state, id, now).await?;
        rows.push((wh, queues.get(id).copied().unwrap_or_default(), stats));
    }
    let sort = query.sort.as_deref().unwrap_or("id");
    match sort {
        "queue" => rows.sort_by_key(|r| std::cmp::Reverse(r.1.depth)),
        "dead" => rows.sort_by_key(|r| std::cmp::Reverse(r.1.dead_letters)),
        "success" => rows.sort_by(|a, b| a.2.hour_rate().unwrap_or(2.0).total_cmp(&b.2.hour_rate().unwrap_or(2.0))),
        "p95" => rows.sort_by_key(|r| std::cmp::Reverse(percentile(&r.2.hour_ms, 0.95))),
        "calls" => rows.sort_by_key(|r| std::cmp::Reverse(r.2.day_calls)),
        _ => {}
    }
    let head = |key: &str, label: &str| {
        let class = if key == sort { r#" class="sorted""# } else { "" };
        format!(r#"<th{class}><a href="/?sort={key}">{label}</a></th>"#)
    };
    let mut body = String::new();
    let total_dead: u64 = rows.iter().map(|r| r.1.dead_letters).sum();
    let total_queue: u64 = rows.iter().map(|r| r.1.depth).sum();
    let calls_hour: usize = rows.iter().map(|r| r.2.hour_calls).sum();
    let ok_hour: usize = rows.iter().map(|r| r.2.hour_ok).sum();
    let _ = write!(
        body,
        r#"<section class="tiles">{}{}{}{}</section>"#,
        tile("Webhooks", &webhooks.len().to_string(), ""),
        tile(
            "Calls, last hour",
            &calls_hour.to_string(),
            &rate_text((calls_hour > 0).then(|| ok_hour as f64 / calls_hour as f64))
        ),
        tile("Queued", &total_queue.to_string(), "jobs waiting"),
        tile("Dead letters", &total_dead.to_string(), if total_dead > 0 { "need a look" } else { "" }),
    );
    let _ = write!(
        body,
        r#"<form class="search card" method="get" action="/ui/records"><strong>A record's journey</strong>
<label>Object <input name="object" required></label><label>Record id <input name="id" required></label><button type="submit">Show</button></form>"#
    );
    if webhooks.is_empty() {
        body.push_str(r#"<section class="card"><p class="muted">No webhooks yet. Define one with <code>POST /v1/webhooks</code> or <code>hookline webhook apply -f FILE</code>.</p></section>"#);
    } else {
        let _ = write!(
            body,
            r#"<section class="card"><table class="grid" id="webhooks"><thead><tr>{}<th>State</th>{}{}<th>Latency p50 / p95</th>{}<th>Oldest job</th><th>In flight</th><th>Rate limit</th>{}<th>Last error</th></tr></thead><tbody>"#,
            head("id", "Webhook"),
            head("calls", "Calls (24 h)"),
            head("success", "Success 1 h / 24 h"),
            head("queue", "Queue"),
            head("dead", "Dead letters"),
        );
        for (wh, q, s) in &rows {
            let id = &wh.definition.id;
            let settings = &wh.definition.settings;
            let latency = match (percentile(&s.hour_ms, 0.5), percentile(&s.hour_ms, 0.95)) {
                (Some(a), Some(b)) => format!("{a} / {b} ms"),
                _ => "–".into(),
            };
            let oldest = q.oldest_ms.map(|ms| age_text(now - ms)).unwrap_or_else(|| "–".into());
            let flight = q.in_flight;
            let _ = write!(
                body,
                r#"<tr data-webhook="{eid}"><td><a href="/ui/webhooks/{uid}"><strong>{eid}</strong></a><div class="muted">{object}</div></td><td>{state}</td><td>{spark}<div class="muted">{calls}</div></td><td>{rate1} / {rate24}</td><td>{latency}</td><td>{depth}</td><td>{oldest}</td><td>{flight} / {limit}</td><td>{rate_limit}</td><td>{dead}</td><td class="error-cell">{error}</td></tr>"#,
                eid = esc(id),
                uid = url_seg(id),
                object = esc(&wh.definition.object),
                state = state_badge(wh.paused),
                spark = sparkline(&s.hourly),
                calls = s.day_calls,
                rate1 = rate_text(s.hour_rate()),
                rate24 = rate_text(s.day_rate()),
                depth = q.depth,
                limit = settings.max_concurrency,
                rate_limit = settings.rate_limit.as_deref().map(esc).unwrap_or_else(|| "–".into()),
                dead = if q.dead_letters > 0 {
                    format!(r#"<span class="badge bad">{}</span>"#, q.dead_letters)
                } else {
                    "0".into()
                },
                error = s.last_error.as_ref().map(|(_, e)| esc(&cut(e, 80))).unwrap_or_default(),
            );
        }
        body.push_str(
            "</tbody></table><p class=\"muted small\">In flight: across the cluster, as the dispatcher nodes reported in the last seconds. Refreshes every 10 s.</p></section>",
        );
    }
    let mut r = page("Webhooks", "", &body, state.api_token.is_some());
    r.headers_mut().insert(
        actix_web::http::header::HeaderName::from_static("refresh"),
        actix_web::http::header::HeaderValue::from_static("10"),
    );
    Ok(r)
}

#[derive(Deserialize)]
struct AttemptsQuery {
    outcome: Option<String>,
    status: Option<String>,
    record: Option<String>,
    since: Option<String>,
    before: Option<String>,
    dl_record: Option<String>,
    dl_reason: Option<String>,
}

async fn webhook_page(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<AttemptsQuery>,
) -> Result<HttpResponse, ApiError> {
    if !signed_in(&state, &req) {
        return Ok(to_login());
    }
    webhook_view(&state, &path, &query, None).await
}

async fn webhook_view(
    state: &ApiState,
    id: &str,
    query: &AttemptsQuery,
    tried: Option<(String, Value)>,
) -> Result<HttpResponse, ApiError> {
    let stored = state.store.get_webhook(id).await?.ok_or_else(|| ApiError::NotFound(format!("no webhook `{id}`")))?;
    let now = now_ms();
    let stats = stats_of(state, id, now).await?;
    let queue = state.store.queue_stats(&[id.to_string()]).await?.pop().unwrap_or_default();
    let def = &stored.definition;
    let uid = url_seg(id);

    // The attempts table's filters.
    let outcome = match query.outcome.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(o) => Some(Outcome::parse(o).ok_or_else(|| FieldError::new("outcome", "is not an outcome"))?),
    };
    let status = match query.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(s.parse::<u32>().map_err(|_| FieldError::new("status", "must be a status code"))?),
    };
    let since_ms = match query.since.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(
            now - humantime::parse_duration(s)
                .map_err(|_| FieldError::new("since", "must be a duration such as 1h"))?
                .as_millis() as i64,
        ),
    };
    let before = query
        .before
        .as_deref()
        .and_then(|c| c.split_once(':'))
        .and_then(|(ms, aid)| Some((ms.parse::<i64>().ok()?, aid.to_string())));
    let record_id = query.record.clone().filter(|r| !r.is_empty());
    let filter = AttemptFilter { record_id, outcome, since_ms, status, before, limit: PAGE };
    let attempts = state.store.list_attempts(id, &filter).await?;
    let dead = state.store.dead_letters(id, 1000).await?;

    let mut body = String::new();
    let action = if stored.paused { "resume" } else { "pause" };
    let _ = write!(
        body,
        r#"<section class="title"><h1>{eid} {badge}</h1><span class="muted">on {object} · version {version}</span>
<form method="post" action="/ui/webhooks/{uid}/{action}"><button type="submit" id="toggle">{label}</button></form></section>"#,
        eid = esc(id),
        badge = state_badge(stored.paused),
        object = esc(&def.object),
        version = stored.version,
        label = if stored.paused { "Resume" } else { "Pause" },
    );
    let _ = write!(
        body,
        r#"<section class="tiles">{}{}{}{}{}</section>"#,
        tile("Calls, last hour", &stats.hour_calls.to_string(), &rate_text(stats.hour_rate())),
        tile("Calls, last day", &stats.day_calls.to_string(), &rate_text(stats.day_rate())),
        tile(
            "Latency p50 / p95",
            &match (percentile(&stats.hour_ms, 0.5), percentile(&stats.hour_ms, 0.95)) {
                (Some(a), Some(b)) => format!("{a} / {b} ms"),
                _ => "–".into(),
            },
            "last hour"
        ),
        tile(
            "Queue",
            &queue.depth.to_string(),
            &queue.oldest_ms.map(|ms| format!("oldest {}", age_text(now - ms))).unwrap_or_default()
        ),
        tile("Dead letters", &queue.dead_letters.to_string(), ""),
    );
    let by_status: String = stats
        .by_status
        .iter()
        .map(|(s, n)| format!(r#"<tr><td>{}</td><td class="num">{n}</td></tr>"#, status_badge(s)))
        .collect();
    let _ = write!(
        body,
        r#"<section class="cols"><div class="card grow"><h2>Outcomes per hour, last day</h2>{}<p class="legend"><span class="sw ok"></span>success <span class="sw bad"></span>not delivered <span class="sw line"></span>p95 latency (top: {} ms)</p>{}</div>
<div class="card"><h2>Status codes, last day</h2><table class="grid small"><tbody>{}</tbody></table></div></section>"#,
        bar_chart(&stats.hourly),
        stats.hourly.iter().map(|h| h.2).max().unwrap_or(0),
        if stats.capped {
            format!(r#"<p class="muted small">From the newest {STATS_READ} attempts.</p>"#)
        } else {
            String::new()
        },
        if by_status.is_empty() { r#"<tr><td class="muted">no attempts</td></tr>"#.to_string() } else { by_status },
    );

    // Attempts, filtered and paged.
    let selected = |value: &str, current: Option<&str>| if current == Some(value) { " selected" } else { "" };
    let outcome_options: String = ["", "success", "retry_scheduled", "failed", "exhausted"]
        .iter()
        .map(|o| {
            let label = if o.is_empty() { "any outcome" } else { o };
            format!(r#"<option value="{o}"{}>{label}</option>"#, selected(o, query.outcome.as_deref().or(Some(""))))
        })
        .collect();
    let since_options: String = [("", "any time"), ("1h", "last hour"), ("24h", "last day"), ("7d", "last week")]
        .iter()
        .map(|(v, label)| {
            format!(r#"<option value="{v}"{}>{label}</option>"#, selected(v, query.since.as_deref().or(Some(""))))
        })
        .collect();
    let _ = write!(
        body,
        r#"<section class="card"><h2>Attempts</h2><form class="filters" method="get" action="/ui/webhooks/{uid}" id="filters">
<select name="outcome">{outcome_options}</select><input name="status" placeholder="status" value="{status}" size="6"><input name="record" placeholder="record id" value="{record}"><select name="since">{since_options}</select><button type="submit">Filter</button></form>"#,
        status = esc(query.status.as_deref().unwrap_or_default()),
        record = esc(query.record.as_deref().unwrap_or_default()),
    );
    if attempts.is_empty() {
        body.push_str(r#"<p class="muted" id="no-attempts">No attempts match.</p>"#);
    } else {
        body.push_str(r#"<table class="grid" id="attempts"><thead><tr><th>Started</th><th>Outcome</th><th>Status</th><th>Try</th><th>Took</th><th>Records</th><th>Write-back</th><th>Error</th></tr></thead><tbody>"#);
        for a in &attempts {
            let records: Vec<String> = a
                .record_ids
                .iter()
                .take(5)
                .map(|r| {
                    format!(r#"<a href="/ui/records?object={}&id={}">{}</a>"#, url_seg(&def.object), url_seg(r), esc(r))
                })
                .collect();
            let more = if a.record_ids.len() > 5 { format!(" +{}", a.record_ids.len() - 5) } else { String::new() };
            let _ = write!(
                body,
                r#"<tr><td><a href="/ui/webhooks/{uid}/attempts/{aid}">{started}</a></td><td>{outcome}</td><td>{status}</td><td class="num">{n}</td><td class="num">{took} ms</td><td>{records}{more}</td><td>{wb}</td><td class="error-cell">{error}</td></tr>"#,
                aid = url_seg(&a.attempt_id),
                started = esc(&rfc3339(a.started_at_ms)),
                outcome = outcome_badge(a.outcome()),
                status = a.response.as_ref().map(|r| status_badge(&r.status.to_string())).unwrap_or_else(|| "–".into()),
                n = a.number,
                took = a.duration_ms,
                records = records.join(", "),
                wb = esc(&a.writeback_status),
                error = esc(&cut(&a.error, 80)),
            );
        }
        body.push_str("</tbody></table>");
        if attempts.len() == PAGE
            && let Some(last) = attempts.last()
        {
            let mut q = form_query(query);
            q.push(("before", cursor(last)));
            let _ = write!(
                body,
                r#"<p><a class="button" id="older" href="/ui/webhooks/{uid}?{}">Older attempts →</a></p>"#,
                encode_query(&q)
            );
        }
    }
    body.push_str("</section>");

    // Dead letters: filtered by record and reason; redrive the chosen, or all that match.
    let dl_record = query.dl_record.clone().filter(|r| !r.is_empty());
    let dl_reason = query.dl_reason.clone().filter(|r| !r.is_empty());
    let filtered = dl_record.is_some() || dl_reason.is_some();
    let shown: Vec<_> = dead
        .iter()
        .filter(|d| dl_record.as_ref().is_none_or(|r| d.job.record_ids.contains(r)))
        .filter(|d| dl_reason.as_ref().is_none_or(|r| d.reason.contains(r.as_str())))
        .collect();
    let _ = write!(
        body,
        r#"<section class="card" id="dead-letters"><h2>Dead letters</h2>
<form class="filters" method="get" action="/ui/webhooks/{uid}" id="dl-filter"><input name="dl_record" placeholder="record id" value="{}"><input name="dl_reason" placeholder="reason contains" value="{}"><button type="submit">Filter</button></form>"#,
        esc(dl_record.as_deref().unwrap_or_default()),
        esc(dl_reason.as_deref().unwrap_or_default()),
    );
    if shown.is_empty() {
        body.push_str(if filtered { r#"<p class="muted">None match.</p>"# } else { r#"<p class="muted">None.</p>"# });
    } else {
        let _ = write!(
            body,
            r#"<form method="post" action="/ui/webhooks/{uid}/redrive" id="dl-form"><table class="grid"><thead><tr><th></th><th>Job</th><th>Records</th><th>Attempts</th><th>Reason</th></tr></thead><tbody>"#
        );
        for d in &shown {
            let _ = write!(
                body,
                r#"<tr><td><input type="checkbox" name="id" value="{}"></td><td><code>{}</code></td><td>{}</td><td class="num">{}</td><td class="error-cell">{}</td></tr>"#,
                esc(&d.id),
                esc(&cut(&d.job.job_id, 13)),
                esc(&d.job.record_ids.join(", ")),
                d.job.attempts,
                esc(&cut(&d.reason, 100)),
            );
        }
        let all_label = if filtered {
            format!("Redrive all {} matching", shown.len())
        } else {
            format!("Redrive all {} dead letters", shown.len())
        };
        let _ = write!(
            body,
            r#"</tbody></table><input type="hidden" name="record" value="{}"><input type="hidden" name="reason" value="{}">
<p><button type="submit" name="what" value="selected" id="redrive-selected">Redrive selected</button> <button type="submit" name="what" value="matching" id="redrive">{all_label}</button> <span class="muted">each is sent again with a fresh attempt budget</span></p></form>"#,
            esc(dl_record.as_deref().unwrap_or_default()),
            esc(dl_reason.as_deref().unwrap_or_default()),
        );
    }
    body.push_str("</section>");

    // Try it.
    let (tried_input, tried_output) = match &tried {
        Some((input, output)) => (input.clone(), dry_run_html(output)),
        None => (String::new(), String::new()),
    };
    let _ = write!(
        body,
        r#"<section class="card" id="try"><h2>Try it</h2><p class="muted">A dry run: the condition's value and the request this webhook would send, secrets as <code>***</code>. Nothing is sent unless you ask.</p>
<form method="post" action="/ui/webhooks/{uid}/try"><label>Record id or fields (JSON) <textarea name="input" rows="3" placeholder='S1  or  {{"status": "Completed"}}'>{}</textarea></label><button type="submit" id="dry-run">Dry run</button> <button type="submit" name="send" value="1" id="send">Send it</button> <span class="muted">(a stored record only: delivered and recorded like any attempt)</span></form>{tried_output}</section>"#,
        esc(&tried_input),
    );

    let definition = serde_json::to_string_pretty(&def.redacted()).unwrap_or_default();
    let _ = write!(
        body,
        r#"<section class="card"><details><summary><h2>Definition</h2></summary><pre id="definition">{}</pre></details></section>"#,
        esc(&definition)
    );
    Ok(page(id, &format!(r#"<a href="/">Webhooks</a> › {}"#, esc(id)), &body, state.api_token.is_some()))
}

fn dry_run_html(out: &Value) -> String {
    if let Some(error) = out["error"]["message"].as_str() {
        return format!(r#"<p class="error" id="try-result">{}</p>"#, esc(error));
    }
    let mut s = String::from(r#"<div id="try-result">"#);
    match (out["sent"]["job_id"].as_str(), out["sent"]["error"].as_str()) {
        (Some(job), _) => {
            let _ = write!(
                s,
                r#"<p id="sent"><span class="badge ok">sent</span> as job <code>{}</code>: its attempt appears below when made.</p>"#,
                esc(job)
            );
        }
        (None, Some(e)) => {
            let _ = write!(s, r#"<p class="error" id="sent">Not sent: {}</p>"#, esc(e));
        }
        _ => {}
    }
    let holds = out["condition"] == json!(true);
    let _ = write!(
        s,
        "<p>Condition: {}</p>",
        if holds { r#"<span class="badge ok">true</span>"# } else { r#"<span class="badge bad">false</span>"# }
    );
    let parts = out["condition_parts"].as_array().cloned().unwrap_or_default();
    if !parts.is_empty() {
        s.push_str(r#"<table class="grid small"><tbody>"#);
        for p in &parts {
            let _ = write!(
                s,
                "<tr><td><code>{}</code></td><td>{}</td><td class=\"muted\">{}</td></tr>",
                esc(p["part"].as_str().unwrap_or_default()),
                bool_badge(p["value"] == json!(true)),
                esc(&p["fields"].to_string())
            );
        }
        s.push_str("</tbody></table>");
    }
    let r = &out["request"];
    if let Some(e) = r["error"].as_str() {
        let _ = write!(s, r#"<p class="error">The request could not be built: {}</p>"#, esc(e));
    } else {
        let headers: String = r["headers"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}: {}\n", v.as_str().unwrap_or_default()))
            .collect();
        let _ = write!(
            s,
            "<pre>{} {}\n{}\n{}</pre>",
            esc(r["method"].as_str().unwrap_or_default()),
            esc(r["url"].as_str().unwrap_or_default()),
            esc(&headers),
            esc(r["body"].as_str().unwrap_or_default())
        );
    }
    s.push_str("</div>");
    s
}

#[derive(Deserialize)]
struct TryForm {
    input: String,
    /// Present when "Send it" was pressed.
    send: Option<String>,
}

async fn try_it(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    form: web::Form<TryForm>,
) -> Result<HttpResponse, ApiError> {
    if !signed_in(&state, &req) {
        return Ok(to_login());
    }
    let input = form.input.trim().to_string();
    let (record_id, fields) = if input.starts_with('{') {
        match serde_json::from_str::<Fields>(&input) {
            Ok(f) => (None, Some(f)),
            Err(e) => {
                let out = json!({"error": {"message": format!("the fields are not a JSON object: {e}")}});
                return webhook_view(&state, &path, &empty_query(), Some((input, out))).await;
            }
        }
    } else {
        (Some(input.clone()), None)
    };
    let send = form.send.is_some();
    let mut out = match crate::webhooks::dry_run(&state, &path, record_id.clone(), fields).await {
        Ok(v) => v,
        Err(e) => json!({"error": {"message": e.to_string()}}),
    };
    if send && out.get("error").is_none() {
        out["sent"] = match &record_id {
            Some(id) => match crate::webhooks::send_now(&state, &path, id).await {
                Ok(job) => json!({"job_id": job}),
                Err(e) => json!({"error": e.to_string()}),
            },
            None => json!({"error": "only a stored record (give its id) can be sent"}),
        };
    }
    webhook_view(&state, &path, &empty_query(), Some((input, out))).await
}

fn empty_query() -> AttemptsQuery {
    AttemptsQuery {
        outcome: None,
        status: None,
        record: None,
        since: None,
        before: None,
        dl_record: None,
        dl_reason: None,
    }
}

async fn pause(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    set_paused(&state, &req, &path, true).await
}

async fn resume(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    set_paused(&state, &req, &path, false).await
}

async fn set_paused(state: &ApiState, req: &HttpRequest, id: &str, paused: bool) -> Result<HttpResponse, ApiError> {
    if !signed_in(state, req) {
        return Ok(to_login());
    }
    crate::webhooks::set_paused(state, id, paused).await?;
    Ok(back_to(&format!("/ui/webhooks/{}", url_seg(id))))
}

/// The dead-letter form: `what=selected` with the checked `id`s, or `what=matching` with
/// the filter (`record`, `reason`; empty: all).
async fn redrive(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    if !signed_in(&state, &req) {
        return Ok(to_login());
    }
    state.store.get_webhook(&path).await?.ok_or_else(|| ApiError::NotFound(format!("no webhook `{path}`")))?;
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_bytes(&body).map_err(|e| ApiError::BadJson(format!("the form: {e}")))?;
    let get = |name: &str| pairs.iter().find(|(k, v)| k == name && !v.is_empty()).map(|(_, v)| v.clone());
    let input = match get("what").as_deref() {
        Some("selected") => crate::attempts::RedriveInput {
            ids: Some(pairs.iter().filter(|(k, _)| k == "id").map(|(_, v)| v.clone()).collect()),
            ..Default::default()
        },
        _ => crate::attempts::RedriveInput { record_id: get("record"), reason: get("reason"), ..Default::default() },
    };
    crate::attempts::redrive_matching(&state, &path, &input).await?;
    Ok(back_to(&format!("/ui/webhooks/{}#dead-letters", url_seg(&path))))
}

async fn attempt_page(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    if !signed_in(&state, &req) {
        return Ok(to_login());
    }
    let (webhook, id) = path.into_inner();
    let a = state
        .store
        .get_attempt(&webhook, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no attempt `{id}`")))?;
    let j = crate::attempts::attempt_json(&a);
    let mut body = String::new();
    let trace = hookline_engine::trace::trace_id(&a.traceparent);
    let trace_link = match (trace, &state.jaeger_url) {
        (Some(t), Some(jaeger)) => format!(r#"<a id="trace" href="{}/trace/{t}">trace {t} in Jaeger</a>"#, esc(jaeger)),
        (Some(t), None) => format!(r#"trace <code>{t}</code>"#),
        _ => String::new(),
    };
    let _ = write!(
        body,
        r#"<section class="title"><h1>Attempt {n} {outcome}</h1><span class="muted">{started} · {took} ms · node {node} · {trace_link}</span></section>"#,
        n = a.number,
        outcome = outcome_badge(a.outcome()),
        started = esc(&rfc3339(a.started_at_ms)),
        took = a.duration_ms,
        node = esc(&a.node_id),
    );
    if !a.error.is_empty() {
        let _ = write!(body, r#"<section class="card"><p class="error">{}</p></section>"#, esc(&a.error));
    }
    let object = url_seg(&object_of(&state, &webhook));
    let records: Vec<String> = a
        .record_ids
        .iter()
        .map(|r| format!(r#"<a href="/ui/records?object={object}&id={}">{}</a>"#, url_seg(r), esc(r)))
        .collect();
    let _ = write!(
        body,
        r#"<section class="card"><p>Records: {}</p><p>Job <code>{}</code></p></section>"#,
        records.join(", "),
        esc(&a.job_id)
    );
    let message = |m: &Value, first: String| {
        let headers: String = m["headers"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}: {}\n", v.as_str().unwrap_or_default()))
            .collect();
        let cut_note = if m["body_truncated"] == json!(true) { "\n… (cut)" } else { "" };
        format!(
            "<pre>{}\n{}\n{}{cut_note}</pre>",
            esc(&first),
            esc(&headers),
            esc(m["body"].as_str().unwrap_or_default())
        )
    };
    let request = if j["request"].is_null() {
        "<p class=\"muted\">Not built.</p>".to_string()
    } else {
        message(&j["request"], format!("{} {}", text(&j["request"]["method"]), text(&j["request"]["url"])))
    };
    let response = if j["response"].is_null() {
        "<p class=\"muted\">No response.</p>".to_string()
    } else {
        message(&j["response"], format!("HTTP {}", text(&j["response"]["status"])))
    };
    let _ = write!(
        body,
        r#"<section class="cols"><div class="card grow"><h2>Request</h2>{request}</div><div class="card grow"><h2>Response</h2>{response}</div></section>"#
    );
    if !a.writeback_status.is_empty() {
        let _ = write!(
            body,
            r#"<section class="card"><h2>Write-back</h2><p>{} {}</p></section>"#,
            esc(&a.writeback_status),
            esc(&a.writeback_error)
        );
    }
    let crumbs = format!(
        r#"<a href="/">Webhooks</a> › <a href="/ui/webhooks/{}">{}</a> › attempt"#,
        url_seg(&webhook),
        esc(&webhook)
    );
    Ok(page(&format!("Attempt {}", a.attempt_id), &crumbs, &body, state.api_token.is_some()))
}

/// The object a webhook is on, from this node's definitions ("" when it is gone).
fn object_of(state: &ApiState, webhook: &str) -> String {
    state
        .catalog
        .as_ref()
        .and_then(|c| c.current().webhooks.get(webhook).map(|w| w.def.object.clone()))
        .unwrap_or_default()
}

#[derive(Deserialize)]
struct RecordQuery {
    object: String,
    id: String,
}

async fn record_journey(
    state: web::Data<ApiState>,
    req: HttpRequest,
    query: web::Query<RecordQuery>,
) -> Result<HttpResponse, ApiError> {
    if !signed_in(&state, &req) {
        return Ok(to_login());
    }
    let j = crate::journey::journey(&state, &query.object, &query.id, hookline_store::JOURNEY_KEPT).await?;
    let mut body = String::new();
    let _ = write!(
        body,
        r#"<section class="title"><h1>{} <span class="muted">of {}</span></h1></section>"#,
        esc(&query.id),
        esc(&query.object)
    );
    match j["record"].as_object() {
        Some(r) => {
            let fields = serde_json::to_string_pretty(&r["fields"]).unwrap_or_default();
            let _ = write!(
                body,
                r#"<section class="card"><details><summary><h2>Now: version {}</h2></summary><pre>{}</pre></details></section>"#,
                text(&r["version"]),
                esc(&fields)
            );
        }
        None => body.push_str(r#"<section class="card"><p class="muted">No such record now.</p></section>"#),
    }
    let changes = j["changes"].as_array().cloned().unwrap_or_default();
    if changes.is_empty() {
        body.push_str(
            r#"<section class="card"><p class="muted">No changes of this record are on record.</p></section>"#,
        );
    }
    body.push_str(r#"<ol class="journey">"#);
    for c in &changes {
        let at = c["at_ms"].as_i64().map(rfc3339).unwrap_or_default();
        let how = if c["created"] == json!(true) { "created" } else { "updated" };
        let by = c["origin_webhook"]
            .as_str()
            .map(|w| format!(" by the write-back of <strong>{}</strong>", esc(w)))
            .unwrap_or_default();
        let _ = write!(
            body,
            r#"<li class="card change" data-version="{v}"><h3>Version {v} <span class="muted">{how}{by} · {at}</span></h3>"#,
            v = text(&c["version"])
        );
        let changed: String = c["changed"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| match v.get("old") {
                Some(old) => format!(
                    "<tr><td><code>{}</code></td><td>{}</td><td>→</td><td>{}</td></tr>",
                    esc(k),
                    esc(&cut(&old.to_string(), 60)),
                    esc(&cut(&v["new"].to_string(), 60))
                ),
                None => format!(
                    "<tr><td><code>{}</code></td><td></td><td></td><td>{}</td></tr>",
                    esc(k),
                    esc(&cut(&v["new"].to_string(), 60))
                ),
            })
            .collect();
        if !changed.is_empty() {
            let _ = write!(body, r#"<table class="grid small changed"><tbody>{changed}</tbody></table>"#);
        }
        if let Some(why) = c["stopped"].as_str() {
            let _ = write!(body, r#"<p class="error">Fired nothing: {}</p>"#, esc(why));
        }
        body.push_str(r#"<ul class="decisions">"#);
        for d in c["decisions"].as_array().into_iter().flatten() {
            let webhook = text(&d["webhook"]);
            let link = format!(r#"<a href="/ui/webhooks/{}">{}</a>"#, url_seg(&webhook), esc(&webhook));
            if d["fired"] == json!(true) {
                let _ = write!(
                    body,
                    r#"<li class="fired" data-webhook="{}">{} <span class="badge ok">fired</span> {}"#,
                    esc(&webhook),
                    link,
                    delivery_badge(d["delivery"].as_str().unwrap_or("queued"))
                );
                let attempts = d["attempts"].as_array().cloned().unwrap_or_default();
                if !attempts.is_empty() {
                    body.push_str(r#"<ul class="attempts">"#);
                    for a in &attempts {
                        let status = a["status"].as_u64().map(|s| status_badge(&s.to_string())).unwrap_or_default();
                        let error = a["error"]
                            .as_str()
                            .map(|e| format!(r#" <span class="error">{}</span>"#, esc(&cut(e, 80))))
                            .unwrap_or_default();
                        let wb = a["writeback"]["status"]
                            .as_str()
                            .map(|s| format!(" · write-back {}", esc(s)))
                            .unwrap_or_default();
                        let _ = write!(
                            body,
                            r#"<li><a href="/ui/webhooks/{}/attempts/{}">attempt {}</a> {} {} {status}{error}{wb}</li>"#,
                            url_seg(&webhook),
                            url_seg(&text(&a["id"])),
                            text(&a["attempt"]),
                            esc(&text(&a["started_at"])),
                            outcome_name_badge(a["outcome"].as_str().unwrap_or_default()),
                        );
                    }
                    body.push_str("</ul>");
                }
                body.push_str("</li>");
            } else {
                let _ = write!(
                    body,
                    r#"<li class="not-fired" data-webhook="{}">{} <span class="badge muted-badge">not fired</span> <span class="reason">{}</span>"#,
                    esc(&webhook),
                    link,
                    esc(&text(&d["reason"]))
                );
                let parts = d["parts"].as_array().cloned().unwrap_or_default();
                if !parts.is_empty() {
                    let _ = write!(
                        body,
                        r#"<div class="muted small">condition <code>{}</code></div><table class="grid small parts"><tbody>"#,
                        esc(&text(&d["condition"]))
                    );
                    for p in &parts {
                        let values: Vec<String> = p["fields"]
                            .as_object()
                            .into_iter()
                            .flatten()
                            .map(|(k, v)| format!("{} is {}", esc(k), esc(&cut(&v.to_string(), 40))))
                            .collect();
                        let _ = write!(
                            body,
                            "<tr><td><code>{}</code></td><td>{}</td><td class=\"muted\">{}</td></tr>",
                            esc(&text(&p["part"])),
                            bool_badge(p["value"] == json!(true)),
                            values.join(", ")
                        );
                    }
                    body.push_str("</tbody></table>");
                }
                body.push_str("</li>");
            }
        }
        body.push_str("</ul></li>");
    }
    body.push_str("</ol>");
    let crumbs = format!(r#"<a href="/">Webhooks</a> › {} › {}"#, esc(&query.object), esc(&query.id));
    Ok(page(&format!("{} · journey", query.id), &crumbs, &body, state.api_token.is_some()))
}

// --- pieces ---

/// A whole page; `sign_out` shows the sign-out button (a node with a token, signed in).
fn page(title: &str, crumbs: &str, body: &str, sign_out: bool) -> HttpResponse {
    let crumbs = format!(r#"<nav class="crumbs">{crumbs}</nav>"#);
    let sign_out = if sign_out {
        r#"<form method="post" action="/logout" class="logout"><button class="link" type="submit">Sign out</button></form>"#
    } else {
        ""
    };
    let html = format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>{} · Hookline</title><link rel="stylesheet" href="/ui/style.css"></head>
<body><header><a class="brand" href="/">⚓ Hookline</a>{crumbs}{sign_out}</header><main>{body}</main></body></html>"#,
        esc(title)
    );
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((CACHE_CONTROL, "no-store"))
        .insert_header((
            CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'",
        ))
        .body(html)
}

async fn style() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((CACHE_CONTROL, "max-age=300"))
        .body(include_str!("dashboard.css"))
}

fn tile(label: &str, value: &str, note: &str) -> String {
    format!(
        r#"<div class="tile card"><div class="label">{}</div><div class="value">{}</div><div class="muted small">{}</div></div>"#,
        esc(label),
        esc(value),
        esc(note)
    )
}

fn state_badge(paused: bool) -> &'static str {
    if paused { r#"<span class="badge warn">paused</span>"# } else { r#"<span class="badge ok">active</span>"# }
}

fn bool_badge(v: bool) -> &'static str {
    if v { r#"<span class="badge ok">true</span>"# } else { r#"<span class="badge bad">false</span>"# }
}

fn outcome_badge(o: Outcome) -> String {
    outcome_name_badge(o.as_str())
}

fn outcome_name_badge(o: &str) -> String {
    let class = match o {
        "success" => "ok",
        "retry_scheduled" => "warn",
        _ => "bad",
    };
    format!(r#"<span class="badge {class}">{}</span>"#, esc(&o.replace('_', " ")))
}

fn delivery_badge(d: &str) -> String {
    let class = match d {
        "delivered" => "ok",
        "queued" | "retrying" => "warn",
        _ => "bad",
    };
    format!(r#"<span class="badge {class} delivery">{}</span>"#, esc(&d.replace('_', " ")))
}

fn status_badge(s: &str) -> String {
    let class = match s.as_bytes().first() {
        Some(b'2') => "ok",
        Some(b'4') if s != "429" && s != "408" => "bad",
        Some(b'3') => "muted-badge",
        _ => "warn",
    };
    format!(r#"<span class="badge {class}">{}</span>"#, esc(s))
}

fn rate_text(rate: Option<f64>) -> String {
    rate.map(|r| format!("{:.1}%", r * 100.0)).unwrap_or_else(|| "–".into())
}

fn age_text(ms: i64) -> String {
    let d = Duration::from_millis(ms.max(0) as u64);
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86400 => format!("{:.1} h", s as f64 / 3600.0),
        _ => format!("{:.1} d", s as f64 / 86400.0),
    }
}

/// 24 hourly bars (success over failure), small.
fn sparkline(hourly: &[(usize, usize, u64)]) -> String {
    let max = hourly.iter().map(|(ok, bad, _)| ok + bad).max().unwrap_or(0).max(1) as f64;
    let mut s = String::from(
        r#"<svg class="spark" viewBox="0 0 96 24" width="96" height="24" role="img" aria-label="calls per hour, last day">"#,
    );
    for (i, (ok, bad, _)) in hourly.iter().enumerate() {
        let x = i as f64 * 4.0;
        let (hok, hbad) = (*ok as f64 / max * 24.0, *bad as f64 / max * 24.0);
        if hbad > 0.0 {
            let _ = write!(s, r#"<rect class="bad" x="{x}" y="{:.1}" width="3" height="{hbad:.1}"/>"#, 24.0 - hbad);
        }
        if hok > 0.0 {
            let _ = write!(s, r#"<rect class="ok" x="{x}" y="{:.1}" width="3" height="{hok:.1}"/>"#, 24.0 - hbad - hok);
        }
    }
    s.push_str("</svg>");
    s
}

/// Outcomes per hour as stacked bars, with the hour's p95 latency as a line.
fn bar_chart(hourly: &[(usize, usize, u64)]) -> String {
    let (w, h, left, bottom) = (720.0, 180.0, 40.0, 20.0);
    let plot_h = h - bottom - 10.0;
    let max = hourly.iter().map(|(ok, bad, _)| ok + bad).max().unwrap_or(0).max(1) as f64;
    let max_ms = hourly.iter().map(|(_, _, ms)| *ms).max().unwrap_or(0).max(1) as f64;
    let step = (w - left) / hourly.len().max(1) as f64;
    let mut s = format!(r#"<svg class="chart" viewBox="0 0 {w} {h}" role="img" aria-label="outcomes per hour">"#);
    let _ = write!(
        s,
        r#"<text class="axis" x="{}" y="14">{}</text><text class="axis" x="{}" y="{}">0</text>"#,
        left - 6.0,
        max as usize,
        left - 6.0,
        h - bottom
    );
    let _ = write!(s, r#"<line class="axis-line" x1="{left}" y1="{}" x2="{w}" y2="{}"/>"#, h - bottom, h - bottom);
    let mut points = Vec::new();
    for (i, (ok, bad, ms)) in hourly.iter().enumerate() {
        let x = left + i as f64 * step + 2.0;
        let (hok, hbad) = (*ok as f64 / max * plot_h, *bad as f64 / max * plot_h);
        let base = h - bottom;
        if hbad > 0.0 {
            let _ = write!(
                s,
                r#"<rect class="bad" x="{x:.1}" y="{:.1}" width="{:.1}" height="{hbad:.1}"><title>{bad} not delivered</title></rect>"#,
                base - hbad,
                step - 4.0
            );
        }
        if hok > 0.0 {
            let _ = write!(
                s,
                r#"<rect class="ok" x="{x:.1}" y="{:.1}" width="{:.1}" height="{hok:.1}"><title>{ok} delivered</title></rect>"#,
                base - hbad - hok,
                step - 4.0
            );
        }
        if ok + bad > 0 {
            points.push(format!("{:.1},{:.1}", x + (step - 4.0) / 2.0, base - *ms as f64 / max_ms * plot_h));
        }
        if i % 6 == 0 {
            let _ = write!(s, r#"<text class="axis" x="{x:.1}" y="{}">-{}h</text>"#, h - 4.0, 24 - i);
        }
    }
    if points.len() > 1 {
        let _ = write!(s, r#"<polyline class="latency" points="{}"/>"#, points.join(" "));
    }
    s.push_str("</svg>");
    s
}

fn form_query(q: &AttemptsQuery) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for (k, v) in [("outcome", &q.outcome), ("status", &q.status), ("record", &q.record), ("since", &q.since)] {
        if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
            out.push((k, v.clone()));
        }
    }
    out
}

fn encode_query(q: &[(&str, String)]) -> String {
    q.iter().map(|(k, v)| format!("{k}={}", url_seg(v))).collect::<Vec<_>>().join("&")
}

fn url_seg(s: &str) -> String {
    hookline_model::url::encoded(s)
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn cut(s: &str, n: usize) -> String {
    if s.chars().count() > n { format!("{}…", s.chars().take(n).collect::<String>()) } else { s.to_string() }
}

/// HTML-escapes text for element content and quoted attributes.
pub fn esc(s: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc(r#"<script>"x" & 'y'</script>"#),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn stats_bucket_the_last_day() {
        let now = 100 * DAY_MS;
        let mk = |age: i64, ok: bool, ms: u64, status: u32| Attempt {
            started_at_ms: now - age,
            duration_ms: ms,
            outcome: if ok { Outcome::Success as i32 } else { Outcome::Failed as i32 },
            response: Some(hookline_proto::HttpResponse { status, ..Default::default() }),
            error: if ok { String::new() } else { format!("target answered {status}") },
            ..Default::default()
        };
        let s = Stats::of(
            &[
                mk(1_000, true, 10, 200),
                mk(2_000, false, 30, 500),
                mk(2 * HOUR_MS, true, 20, 200),
                mk(2 * DAY_MS, true, 1, 200),
            ],
            now,
        );
        assert_eq!((s.hour_calls, s.hour_ok, s.day_calls, s.day_ok), (2, 1, 3, 2));
        assert_eq!(s.hour_ms, [10, 30]);
        assert_eq!(s.hourly[23], (1, 1, 30));
        assert_eq!(s.hourly[21], (1, 0, 20));
        assert_eq!(s.by_status.get("500"), Some(&1));
        assert_eq!(s.last_error.map(|(_, e)| e).as_deref(), Some("target answered 500"));
        assert_eq!(percentile(&[1, 2, 3, 4], 0.5), Some(2));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
