//! `GET /v1/objects/{object}/records/{id}/journey`: one record's changes, oldest first, each
//! with what changed and, for every webhook of the object, whether it fired and why not (as
//! the trigger decided at the time), then each call's attempts and write-backs, in order.

use std::collections::{BTreeMap, BTreeSet};

use actix_web::{HttpResponse, web};
use hookline_model::FieldError;
use hookline_proto::{Attempt, Outcome};
use hookline_store::{AttemptFilter, JOURNEY_KEPT};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::attempts::rfc3339;
use crate::{ApiError, ApiState};

/// Attempts read per fired webhook (the newest).
const ATTEMPTS_READ: usize = 500;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JourneyQuery {
    /// How many of the newest changes to show (1 to 50).
    limit: Option<usize>,
}

pub async fn get(
    state: web::Data<ApiState>,
    path: web::Path<(String, String)>,
    query: web::Query<JourneyQuery>,
) -> Result<HttpResponse, ApiError> {
    let (name, id) = path.into_inner();
    let limit = query.limit.unwrap_or(JOURNEY_KEPT);
    if !(1..=JOURNEY_KEPT).contains(&limit) {
        return Err(FieldError::new("limit", format!("must be 1 to {JOURNEY_KEPT}")).into());
    }
    Ok(HttpResponse::Ok().json(journey(&state, &name, &id, limit).await?))
}

/// The journey of record `id` of object `name`: its newest `limit` changes, oldest first.
pub async fn journey(state: &ApiState, name: &str, id: &str, limit: usize) -> Result<Value, ApiError> {
    let object = crate::objects::object(state, name).await?;
    let (record, notes) = futures_util::try_join!(
        state.store.get_record(&object.name, id),
        state.store.journey(&object.name, id, limit)
    )?;
    // Oldest first: a journey reads from the top.
    let mut changes: Vec<Value> =
        notes.iter().rev().filter_map(|n| serde_json::from_slice::<Value>(&n.note).ok()).collect();

    // The attempts of every webhook that fired, for this record.
    let fired: BTreeSet<String> = changes
        .iter()
        .flat_map(|c| c["decisions"].as_array().cloned().unwrap_or_default())
        .filter(|d| d["fired"] == json!(true))
        .filter_map(|d| d["webhook"].as_str().map(str::to_string))
        .collect();
    let mut attempts: BTreeMap<String, Vec<Attempt>> = BTreeMap::new();
    for webhook in fired {
        let filter = AttemptFilter { record_id: Some(id.to_string()), limit: ATTEMPTS_READ, ..Default::default() };
        let mut list = state.store.list_attempts(&webhook, &filter).await?;
        list.sort_by_key(|a| (a.started_at_ms, a.number));
        attempts.insert(webhook, list);
    }
    place_attempts(&mut changes, &attempts);

    Ok(json!({
        "object": object.name,
        "record_id": id,
        "record": record.map(|r| json!({"version": r.version, "fields": r.fields})),
        "changes": changes,
    }))
}

/// Puts each attempt under the fired decision it belongs to: its own job's (same job id), or
/// for a call that carried several records (a batch, whose job id is new), the newest change
/// that fired the webhook before the attempt started.
fn place_attempts(changes: &mut [Value], attempts: &BTreeMap<String, Vec<Attempt>>) {
    for (webhook, list) in attempts {
        // (change index, decision index, at ms, job id) of each fired decision of `webhook`.
        let mut fired = Vec::new();
        for (ci, change) in changes.iter().enumerate() {
            let at = change["at_ms"].as_i64().unwrap_or(0);
            for (di, d) in change["decisions"].as_array().into_iter().flatten().enumerate() {
                if d["fired"] == json!(true) && d["webhook"] == json!(webhook) {
                    fired.push((ci, di, at, d["job_id"].as_str().unwrap_or_default().to_string()));
                }
            }
        }
        let mut placed: BTreeMap<(usize, usize), Vec<Value>> = BTreeMap::new();
        for a in list {
            let own = fired.iter().find(|f| f.3 == a.job_id);
            let before = || fired.iter().rev().find(|f| f.2 <= a.started_at_ms);
            if let Some(&(ci, di, _, _)) = own.or_else(before) {
                placed.entry((ci, di)).or_default().push(attempt_summary(a));
            }
        }
        for &(ci, di, _, _) in &fired {
            let list = placed.remove(&(ci, di)).unwrap_or_default();
            let delivery = delivery_state(&list);
            let d = &mut changes[ci]["decisions"][di];
            d["delivery"] = json!(delivery);
            d["attempts"] = Value::Array(list);
        }
    }
}

/// Where a fired call stands, from its attempts (in order).
fn delivery_state(attempts: &[Value]) -> &'static str {
    match attempts.last().and_then(|a| a["outcome"].as_str()) {
        None => "queued",
        Some("success") => "delivered",
        Some("retry_scheduled") => "retrying",
        Some("exhausted") => "dead_lettered",
        Some(_) => "failed",
    }
}

fn attempt_summary(a: &Attempt) -> Value {
    let outcome = a.outcome();
    json!({
        "id": a.attempt_id,
        "job_id": a.job_id,
        "attempt": a.number,
        "started_at": rfc3339(a.started_at_ms),
        "duration_ms": a.duration_ms,
        "outcome": outcome.as_str(),
        "status": a.response.as_ref().map(|r| r.status),
        "error": (!a.error.is_empty()).then_some(&a.error),
        "next_attempt_at": (outcome == Outcome::RetryScheduled && a.next_attempt_at_ms > 0)
            .then(|| rfc3339(a.next_attempt_at_ms)),
        "writeback": (!a.writeback_status.is_empty()).then(|| json!({
            "status": a.writeback_status,
            "error": (!a.writeback_error.is_empty()).then_some(&a.writeback_error),
        })),
        "trace_id": hookline_engine::trace::trace_id(&a.traceparent),
        "webhook_id": a.webhook_id,
    })
}
