//! Data objects and records.

use actix_web::{HttpResponse, web};
use hookline_engine::records::{self, WriteMode};
use hookline_engine::trace;
use hookline_model::{DataObject, FieldError, Fields};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{ApiError, ApiState, parse_json};

pub async fn put_object(state: web::Data<ApiState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let object: DataObject = parse_json(&body)?;
    object.validate()?;
    let existed = state.store.get_object(&object.name).await?.is_some();
    state.store.put_object(&object).await?;
    let status = if existed { HttpResponse::Ok() } else { HttpResponse::Created() };
    Ok({ status }.json(&object))
}

pub async fn list_objects(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.store.list_objects().await?))
}

async fn object(state: &ApiState, name: &str) -> Result<DataObject, ApiError> {
    state.store.get_object(name).await?.ok_or_else(|| ApiError::NotFound(format!("no data object named `{name}`")))
}

pub async fn get_object(state: web::Data<ApiState>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(object(&state, &path).await?))
}

/// One record of a POST: `{id?, fields}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordInput {
    #[serde(default)]
    id: Option<Value>,
    fields: Fields,
}

/// The record id: the object's id field when it has one, else `id`.
fn record_id(object: &DataObject, input: &RecordInput, prefix: &str) -> Result<String, FieldError> {
    let given = match &input.id {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => return Err(FieldError::new(format!("{prefix}id"), "must be a string or a number")),
    };
    match (object.id_from_fields(&input.fields), given) {
        (Some(from_field), Some(given)) if from_field != given => Err(FieldError::new(
            format!("{prefix}id"),
            format!("differs from the id field `{}`", object.id_field.as_deref().unwrap_or_default()),
        )),
        (Some(id), _) | (None, Some(id)) => Ok(id),
        (None, None) => match &object.id_field {
            Some(f) => Err(FieldError::new(format!("{prefix}fields.{f}"), "is the record id and is required")),
            None => Err(FieldError::new(format!("{prefix}id"), "is required")),
        },
    }
}

fn record_json(r: &hookline_model::Record) -> Value {
    json!({"id": r.id, "version": r.version, "fields": r.fields})
}

/// Creates or updates one record, or many (a JSON array). Every record of an array is
/// checked before any is written, so a bad one refuses the whole request.
pub async fn post_records(
    state: web::Data<ApiState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let object = object(&state, &path).await?;
    let value: Value = parse_json(&body)?;
    let (inputs, bulk) = match value {
        Value::Array(items) => (items, true),
        other => (vec![other], false),
    };
    let mut checked = Vec::with_capacity(inputs.len());
    for (i, item) in inputs.into_iter().enumerate() {
        let prefix = if bulk { format!("[{i}].") } else { String::new() };
        let input: RecordInput = serde_json::from_value(item).map_err(|e| {
            ApiError::BadJson(format!("invalid record{}: {e}", if bulk { format!(" [{i}]") } else { String::new() }))
        })?;
        let id = record_id(&object, &input, &prefix)?;
        records::check(&object, &id, &input.fields)
            .map_err(|e| FieldError::new(format!("{prefix}{}", e.field), e.message))?;
        checked.push((id, input.fields));
    }
    let mut results = Vec::with_capacity(checked.len());
    for (id, fields) in checked {
        let traceparent = trace::new_traceparent();
        let w =
            records::write(state.store.as_ref(), &object, &id, &fields, WriteMode::Upsert, None, &traceparent).await?;
        let status = if w.created {
            "created"
        } else if w.changed {
            "updated"
        } else {
            "unchanged"
        };
        tracing::info!(object = %object.name, record_id = %id, version = w.record.version, status, trace_id = trace::trace_id(&traceparent).unwrap_or_default(), "record written");
        results.push((w, status));
    }
    if bulk {
        let items: Vec<Value> = results
            .iter()
            .map(|(w, status)| json!({"id": w.record.id, "version": w.record.version, "status": status}))
            .collect();
        Ok(HttpResponse::Ok().json(json!({ "results": items })))
    } else {
        let (w, _) = &results[0];
        let mut out = if w.created { HttpResponse::Created() } else { HttpResponse::Ok() };
        Ok(out.json(record_json(&w.record)))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchInput {
    fields: Fields,
}

pub async fn patch_record(
    state: web::Data<ApiState>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let (name, id) = path.into_inner();
    let object = object(&state, &name).await?;
    let input: PatchInput = parse_json(&body)?;
    let traceparent = trace::new_traceparent();
    let w = records::write(state.store.as_ref(), &object, &id, &input.fields, WriteMode::Update, None, &traceparent)
        .await?;
    Ok(HttpResponse::Ok().json(record_json(&w.record)))
}

pub async fn get_record(
    state: web::Data<ApiState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (name, id) = path.into_inner();
    let object = object(&state, &name).await?;
    let record = state
        .store
        .get_record(&object.name, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("record `{id}` of `{name}` does not exist")))?;
    Ok(HttpResponse::Ok().json(record_json(&record)))
}
