//! Webhook definitions: CRUD, pause and resume, and a dry run. Definitions are validated
//! and compiled (condition, templates, scripts) before they are saved; secrets are shown
//! as `***` and kept when a client PUTs back what it read.

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::{HttpResponse, web};
use hookline_engine::catalog::{self, CompiledWebhook};
use hookline_engine::render::build_request;
use hookline_engine::scheduler;
use hookline_model::schedule::Schedule;
use hookline_model::{DataObject, FieldError, Fields, StoredWebhook, WebhookDef};
use hookline_proto::Job;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{ApiError, ApiState, parse_json};

fn view(stored: &StoredWebhook) -> Value {
    let mut v = serde_json::to_value(stored.definition.redacted()).unwrap_or_default();
    v["version"] = json!(stored.version);
    v["paused"] = json!(stored.paused);
    v
}

/// Validates and compiles a definition; its scripts' syntax is checked on the script pool.
async fn compile(state: &ApiState, stored: &StoredWebhook) -> Result<Arc<CompiledWebhook>, ApiError> {
    let objects: HashMap<String, DataObject> =
        state.store.list_objects().await?.into_iter().map(|o| (o.name.clone(), o)).collect();
    // The checks of a save first (stricter than those a stored definition loads under).
    stored.definition.validate(|name| objects.get(name))?;
    let compiled = catalog::compile(stored, |name| objects.get(name))?;
    catalog::check_scripts(&state.scripts, &stored.definition).await?;
    let compiled = Arc::new(compiled);
    hookline_engine::render::check_limits(&state.scripts, &compiled).await?;
    Ok(compiled)
}

/// [`compile`] for a save: also refuses a schedule whose ticks are all past (a stored one
/// that ran its last tick still loads, so its queued jobs are delivered).
async fn compile_to_save(state: &ApiState, stored: &StoredWebhook) -> Result<Arc<CompiledWebhook>, ApiError> {
    let compiled = compile(state, stored).await?;
    if let Some(schedule) = &compiled.plan.schedule
        && schedule.next_after(hookline_store::now_ms()).is_none()
    {
        let expr = stored.definition.trigger.schedule.as_deref().unwrap_or_default();
        return Err(FieldError::new("trigger.schedule", format!("`{expr}` has no tick in the future")).into());
    }
    Ok(compiled)
}

/// A stored webhook with its secrets opened.
async fn load(state: &ApiState, id: &str) -> Result<StoredWebhook, ApiError> {
    match state.store.get_webhook(id).await? {
        Some(mut stored) => {
            catalog::open_secrets(&mut stored, &state.secrets).map_err(|_| {
                ApiError::Internal(format!(
                    "cannot decrypt the secrets of `{id}`: is --secret-key the same on every node?"
                ))
            })?;
            Ok(stored)
        }
        None => Err(ApiError::NotFound(format!("no webhook `{id}`"))),
    }
}

/// Saves with every secret sealed; false on a version conflict.
async fn save(state: &ApiState, stored: &StoredWebhook) -> Result<bool, ApiError> {
    let mut sealed = stored.clone();
    catalog::seal_secrets(&mut sealed, &state.secrets);
    Ok(state.store.put_webhook(&sealed).await?)
}

/// Refuses a definition that still says `***` where no stored secret could be kept.
fn no_redacted_left(def: &WebhookDef) -> Result<(), ApiError> {
    match def.redacted_left() {
        Some(field) => Err(FieldError::new(
            field,
            "is `***`, but there is no stored value to keep for it (it is new, or where it is sent changed): \
             give the value",
        )
        .into()),
        None => Ok(()),
    }
}

pub async fn create(state: web::Data<ApiState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let definition: WebhookDef = parse_json(&body)?;
    no_redacted_left(&definition)?;
    let stored = StoredWebhook { definition, version: 1, paused: false };
    compile_to_save(&state, &stored).await?;
    if !save(&state, &stored).await? {
        return Err(ApiError::Conflict(format!("webhook `{}` exists; PUT to change it", stored.definition.id)));
    }
    tracing::info!(webhook_id = %stored.definition.id, "webhook created");
    Ok(HttpResponse::Created().json(view(&stored)))
}

pub async fn list(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let all: Vec<Value> = state.store.list_webhooks().await?.iter().map(view).collect();
    Ok(HttpResponse::Ok().json(all))
}

#[derive(Debug, Deserialize)]
pub struct GetQuery {
    /// `scripts`: show the header scripts' sources (sealed and shown as `***` otherwise).
    reveal: Option<String>,
}

pub async fn get(
    state: web::Data<ApiState>,
    path: web::Path<String>,
    query: web::Query<GetQuery>,
) -> Result<HttpResponse, ApiError> {
    let stored = load(&state, &path).await?;
    let mut out = view(&stored);
    match query.reveal.as_deref() {
        None => {}
        // Only a reader holding the API token (checked before this handler) may.
        Some("scripts") if state.api_token.is_some() => {
            let def = &stored.definition;
            if let hookline_model::AuthDef::Script { script } = &def.auth {
                out["auth"]["script"] = json!(script);
            }
            if let Some(script) = &def.request.headers_script {
                out["request"]["headers_script"] = json!(script);
            }
        }
        Some("scripts") => {
            return Err(FieldError::new(
                "reveal",
                "script sources are shown only to holders of the API token: start the node with --api-token",
            )
            .into());
        }
        Some(other) => return Err(FieldError::new("reveal", format!("`{other}` is not `scripts`")).into()),
    }
    let (def, t) = (&stored.definition, &stored.definition.trigger);
    if let Some(expr) = &t.schedule
        && let Ok(schedule) = Schedule::parse(expr, t.time_zone.as_deref(), t.select.unwrap_or_default())
        && let Some(status) = scheduler::status(state.store.as_ref(), &def.id, &def.object, &schedule).await?
    {
        out["schedule_status"] = status;
    }
    Ok(HttpResponse::Ok().json(out))
}

pub async fn replace(
    state: web::Data<ApiState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let mut definition: WebhookDef = parse_json(&body)?;
    if definition.id != *path {
        return Err(FieldError::new("id", format!("must equal the id in the path, `{path}`")).into());
    }
    let previous = match load(&state, &path).await {
        Ok(p) => Some(p),
        Err(ApiError::NotFound(_)) => None,
        Err(e) => return Err(e),
    };
    let stored = match &previous {
        Some(p) => {
            definition.keep_secrets_from(&p.definition);
            StoredWebhook { definition, version: p.version + 1, paused: p.paused }
        }
        None => StoredWebhook { definition, version: 1, paused: false },
    };
    no_redacted_left(&stored.definition)?;
    // The same definition again (an `apply` run twice) changes nothing: no new version, no
    // reload on every node.
    if let Some(p) = previous.as_ref().filter(|p| p.definition == stored.definition) {
        return Ok(HttpResponse::Ok().json(view(p)));
    }
    compile_to_save(&state, &stored).await?;
    if !save(&state, &stored).await? {
        return Err(ApiError::Conflict(format!("webhook `{path}` was changed concurrently; try again")));
    }
    let mut out = if previous.is_some() { HttpResponse::Ok() } else { HttpResponse::Created() };
    Ok(out.json(view(&stored)))
}

pub async fn delete(state: web::Data<ApiState>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let stored = load(&state, &path).await?;
    if !state.store.delete_webhook(&path, stored.version).await? {
        return Err(ApiError::Conflict(format!("webhook `{path}` was changed concurrently; try again")));
    }
    Ok(HttpResponse::NoContent().finish())
}

pub(crate) async fn set_paused(state: &ApiState, id: &str, paused: bool) -> Result<HttpResponse, ApiError> {
    for _ in 0..8 {
        let stored = load(state, id).await?;
        if stored.paused == paused {
            return Ok(HttpResponse::Ok().json(view(&stored)));
        }
        let next = StoredWebhook { version: stored.version + 1, paused, ..stored };
        if save(state, &next).await? {
            return Ok(HttpResponse::Ok().json(view(&next)));
        }
    }
    Err(ApiError::Conflict(format!("webhook `{id}` is changing too often; try again")))
}

pub async fn pause(state: web::Data<ApiState>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    set_paused(&state, &path, true).await
}

pub async fn resume(state: web::Data<ApiState>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    set_paused(&state, &path, false).await
}

/// A dry run: `{record_id}` (a stored record) or `{fields}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestInput {
    #[serde(default)]
    record_id: Option<String>,
    #[serde(default)]
    fields: Option<Fields>,
    /// Also send it for real: a job of the stored record, delivered and recorded like any.
    #[serde(default)]
    send: bool,
}

/// Shows whether the condition holds for a record and the request that would be sent,
/// with secrets redacted. Nothing is sent.
pub async fn test(
    state: web::Data<ApiState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let input: TestInput = parse_json(&body)?;
    let mut out = dry_run(&state, &path, input.record_id.clone(), input.fields).await?;
    if input.send {
        let Some(record_id) = input.record_id else {
            return Err(FieldError::new("send", "only a stored record (record_id) can be sent").into());
        };
        out["sent"] = json!({"job_id": send_now(&state, &path, &record_id).await?});
    }
    Ok(HttpResponse::Ok().json(out))
}

/// Queues a job of the stored record `record_id` for `webhook` now, whatever its trigger
/// says: it is delivered, retried and recorded like any (a fresh job id, so it is not taken
/// for a duplicate of the trigger's). Returns the job id.
pub(crate) async fn send_now(state: &ApiState, webhook: &str, record_id: &str) -> Result<String, ApiError> {
    let stored = load(state, webhook).await?;
    let compiled = compile(state, &stored).await?;
    let object = &compiled.def.object;
    let record = state
        .store
        .get_record(object, record_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("record `{record_id}` of `{object}` does not exist")))?;
    let job_id = uuid::Uuid::new_v4().to_string();
    let job = hookline_engine::trigger::record_job(
        &compiled,
        job_id.clone(),
        object,
        record_id,
        record.version,
        &record.fields,
        String::new(),
    );
    state.store.enqueue(&[job]).await?;
    tracing::info!(webhook_id = webhook, record_id, job_id, "sent by hand");
    Ok(job_id)
}

/// The dry run of webhook `webhook` on a stored record or on `fields`.
pub(crate) async fn dry_run(
    state: &ApiState,
    webhook: &str,
    record_id: Option<String>,
    fields: Option<Fields>,
) -> Result<Value, ApiError> {
    let stored = load(state, webhook).await?;
    let compiled = compile(state, &stored).await?;
    let (id, fields) = match (record_id, fields) {
        (Some(id), None) => {
            let r = state.store.get_record(&compiled.def.object, &id).await?.ok_or_else(|| {
                ApiError::NotFound(format!("record `{id}` of `{}` does not exist", compiled.def.object))
            })?;
            (id, r.fields)
        }
        (None, Some(fields)) => ("test".to_string(), fields),
        _ => return Err(FieldError::new("record_id", "give either record_id or fields").into()),
    };
    let explained = compiled.plan.condition.as_ref().map(|c| c.explain(&fields, None));
    let condition = explained.as_ref().is_none_or(|e| e.value);
    let parts: Vec<Value> = explained
        .iter()
        .flat_map(|e| &e.parts)
        .map(|p| {
            let values: serde_json::Map<String, Value> = p.values.iter().cloned().collect();
            json!({"part": p.text, "value": p.value, "fields": values})
        })
        .collect();
    let mut entity = fields;
    entity.entry("id".to_string()).or_insert_with(|| id.clone().into());
    let entities = Value::Array(vec![Value::Object(entity)]);
    let job = Job {
        job_id: "dry-run".into(),
        webhook_id: compiled.def.id.clone(),
        record_ids: vec![id],
        entities_json: serde_json::to_vec(&entities).unwrap_or_default(),
        ..Default::default()
    };
    let request = match build_request(&state.scripts, None, &compiled, &job, &entities).await {
        Ok(r) => {
            let values: Vec<&str> = r.secret_values.iter().map(String::as_str).collect();
            let names: Vec<&str> = r.secret_headers.iter().map(String::as_str).collect();
            let headers: serde_json::Map<String, Value> =
                hookline_outbound::redact_headers(&r.headers, &names, &values)
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect();
            let body = hookline_engine::attempt::scrub(r.body.to_vec(), &r.secret_values);
            json!({"method": r.method, "url": r.display_url(), "headers": headers,
                   "body": String::from_utf8_lossy(&body)})
        }
        Err(e) => json!({"error": e.to_string()}),
    };
    Ok(json!({"condition": condition, "condition_parts": parts, "request": request}))
}
