//! The attempt log and dead letters.

use actix_web::http::header::ACCEPT;
use actix_web::{HttpRequest, HttpResponse, web};
use hookline_model::FieldError;
use hookline_proto::{Attempt, Header, Outcome};
use hookline_store::AttemptFilter;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{ApiError, ApiState};

pub(crate) fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

fn headers_json(headers: &[Header]) -> Value {
    let mut map = serde_json::Map::new();
    for h in headers {
        map.insert(h.name.clone(), Value::String(h.value.clone()));
    }
    Value::Object(map)
}

/// The API's view of an attempt.
pub fn attempt_json(a: &Attempt) -> Value {
    json!({
        "id": a.attempt_id,
        "webhook_id": a.webhook_id,
        "webhook_version": a.webhook_version,
        "job_id": a.job_id,
        "record_ids": a.record_ids,
        "attempt": a.number,
        "node_id": a.node_id,
        "started_at": rfc3339(a.started_at_ms),
        "duration_ms": a.duration_ms,
        "outcome": a.outcome().as_str(),
        "error": (!a.error.is_empty()).then_some(&a.error),
        "next_attempt_at": (a.next_attempt_at_ms > 0).then(|| rfc3339(a.next_attempt_at_ms)),
        "request": a.request.as_ref().map(|r| json!({
            "method": r.method, "url": r.url, "headers": headers_json(&r.headers),
            "body": String::from_utf8_lossy(&r.body), "body_truncated": r.body_truncated,
        })),
        "response": a.response.as_ref().map(|r| json!({
            "status": r.status, "headers": headers_json(&r.headers),
            "body": String::from_utf8_lossy(&r.body), "body_truncated": r.body_truncated,
        })),
        "writeback": (!a.writeback_status.is_empty()).then(|| json!({
            "status": a.writeback_status,
            "error": (!a.writeback_error.is_empty()).then_some(&a.writeback_error),
        })),
        "traceparent": a.traceparent,
        "cursor": cursor(a),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptQuery {
    record_id: Option<String>,
    outcome: Option<String>,
    /// RFC 3339 time or Unix milliseconds.
    since: Option<String>,
    /// Only attempts whose response had this status.
    status: Option<u32>,
    /// The `cursor` of the previous page's last attempt: the attempts after it.
    before: Option<String>,
    limit: Option<usize>,
}

/// An attempt's place in the log, for `before`: its start ms and id.
pub fn cursor(a: &Attempt) -> String {
    format!("{}:{}", a.started_at_ms, a.attempt_id)
}

fn parse_cursor(s: &str) -> Option<(i64, String)> {
    let (ms, id) = s.split_once(':')?;
    Some((ms.parse().ok()?, id.to_string()))
}

async fn ensure_webhook(state: &ApiState, id: &str) -> Result<(), ApiError> {
    match state.store.get_webhook(id).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::NotFound(format!("no webhook `{id}`"))),
    }
}

pub async fn list(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<AttemptQuery>,
) -> Result<HttpResponse, ApiError> {
    ensure_webhook(&state, &path).await?;
    let outcome =
        match query.outcome.as_deref() {
            None => None,
            Some(s) => Some(Outcome::parse(s).ok_or_else(|| {
                FieldError::new("outcome", "must be one of success, retry_scheduled, failed, exhausted")
            })?),
        };
    let since_ms = match query.since.as_deref() {
        None => None,
        Some(s) => Some(match s.parse::<i64>() {
            Ok(ms) => ms,
            Err(_) => humantime::parse_rfc3339_weak(s)
                .map_err(|_| FieldError::new("since", "must be an RFC 3339 time or Unix milliseconds"))?
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
        }),
    };
    let limit = query.limit.unwrap_or(100);
    if !(1..=10_000).contains(&limit) {
        return Err(FieldError::new("limit", "must be 1 to 10000").into());
    }
    let before =
        match query.before.as_deref() {
            None => None,
            Some(c) => Some(parse_cursor(c).ok_or_else(|| {
                FieldError::new("before", "must be an attempt's `cursor` (`<start ms>:<attempt id>`)")
            })?),
        };
    let filter =
        AttemptFilter { record_id: query.record_id.clone(), outcome, since_ms, status: query.status, before, limit };
    let attempts = state.store.list_attempts(&path, &filter).await?;
    let ndjson =
        req.headers().get(ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("application/x-ndjson"));
    if ndjson {
        let mut body = String::new();
        for a in &attempts {
            body.push_str(&attempt_json(a).to_string());
            body.push('\n');
        }
        Ok(HttpResponse::Ok().content_type("application/x-ndjson").body(body))
    } else {
        Ok(HttpResponse::Ok().json(attempts.iter().map(attempt_json).collect::<Vec<_>>()))
    }
}

pub async fn get(state: web::Data<ApiState>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    for wh in state.store.list_webhooks().await? {
        if let Some(a) = state.store.get_attempt(&wh.definition.id, &path).await? {
            return Ok(HttpResponse::Ok().json(attempt_json(&a)));
        }
    }
    Err(ApiError::NotFound(format!("no attempt `{path}`")))
}

pub async fn dead_letters(state: web::Data<ApiState>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    ensure_webhook(&state, &path).await?;
    let items: Vec<Value> = state
        .store
        .dead_letters(&path, 1000)
        .await?
        .iter()
        .map(|d| {
            json!({"id": d.id, "job_id": d.job.job_id, "record_ids": d.job.record_ids,
                   "attempts": d.job.attempts, "reason": d.reason})
        })
        .collect();
    Ok(HttpResponse::Ok().json(items))
}

/// Which dead letters a redrive sends: all (no body), the listed `ids`, or those matching
/// `record_id` and `reason` (a substring); `dry_run` only counts them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedriveInput {
    pub ids: Option<Vec<String>>,
    pub record_id: Option<String>,
    pub reason: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
}

pub async fn redrive(
    state: web::Data<ApiState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    ensure_webhook(&state, &path).await?;
    let input: RedriveInput =
        if body.iter().all(u8::is_ascii_whitespace) { RedriveInput::default() } else { crate::parse_json(&body)? };
    let (matching, redriven) = redrive_matching(&state, &path, &input).await?;
    Ok(HttpResponse::Ok().json(json!({"matching": matching, "redriven": redriven})))
}

/// Sends the dead letters `input` chooses again: (how many matched, how many moved).
pub async fn redrive_matching(state: &ApiState, webhook: &str, input: &RedriveInput) -> Result<(u64, u64), ApiError> {
    let filtered = input.ids.is_some() || input.record_id.is_some() || input.reason.is_some();
    if !filtered {
        if input.dry_run {
            let n = state.store.queue_stats(&[webhook.to_string()]).await?.pop().unwrap_or_default().dead_letters;
            return Ok((n, 0));
        }
        let moved = state.store.redrive(webhook).await?;
        return Ok((moved, moved));
    }
    if input.ids.as_ref().is_some_and(|ids| ids.len() > 10_000) {
        return Err(FieldError::new("ids", "at most 10000 at a time").into());
    }
    let chosen: Vec<String> = state
        .store
        .dead_letters(webhook, 10_000)
        .await?
        .into_iter()
        .filter(|d| input.ids.as_ref().is_none_or(|ids| ids.contains(&d.id)))
        .filter(|d| input.record_id.as_ref().is_none_or(|r| d.job.record_ids.contains(r)))
        .filter(|d| input.reason.as_ref().is_none_or(|r| d.reason.contains(r.as_str())))
        .map(|d| d.id)
        .collect();
    if input.dry_run {
        return Ok((chosen.len() as u64, 0));
    }
    let moved = state.store.redrive_some(webhook, &chosen).await?;
    Ok((chosen.len() as u64, moved))
}

/// Write-backs that failed for good (no such record, an unknown field, a script error),
/// oldest first.
pub async fn failed_writebacks(state: web::Data<ApiState>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    ensure_webhook(&state, &path).await?;
    let items: Vec<Value> = state
        .store
        .failed_writebacks(&path, 1000)
        .await?
        .iter()
        .map(|f| {
            json!({"id": f.id, "job_id": f.job.job_id, "attempt_id": f.job.attempt_id,
                   "record_ids": f.job.record_ids, "reason": f.reason})
        })
        .collect();
    Ok(HttpResponse::Ok().json(items))
}

/// Runs every failed write-back again (its response script and its record writes).
pub async fn redrive_writebacks(state: web::Data<ApiState>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    ensure_webhook(&state, &path).await?;
    let moved = state.store.redrive_writebacks(&path).await?;
    Ok(HttpResponse::Ok().json(json!({"redriven": moved})))
}
