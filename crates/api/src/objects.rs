//! Data objects and records.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use actix_web::{HttpResponse, web};
use futures_util::StreamExt;
use hookline_engine::records::{self, WriteMode};
use hookline_engine::trace;
use hookline_model::{DataObject, FieldError, Fields};
use hookline_store::StoreError;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::{ApiError, ApiState, parse_json};

pub async fn put_object(state: web::Data<ApiState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let object: DataObject = parse_json(&body)?;
    save_object(&state, object).await
}

/// `PUT /v1/objects/{name}`: the same as a POST, with the name in the path.
pub async fn replace_object(
    state: web::Data<ApiState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let object: DataObject = parse_json(&body)?;
    if object.name != *path {
        return Err(FieldError::new("name", format!("must equal the name in the path, `{path}`")).into());
    }
    save_object(&state, object).await
}

/// Validates and saves an object, refusing a change that would leave a webhook using a
/// field the object no longer has (the webhook and what it uses are named).
async fn save_object(state: &ApiState, object: DataObject) -> Result<HttpResponse, ApiError> {
    object.validate()?;
    let existed = state.store.get_object(&object.name).await?;
    if existed.is_some() {
        let defs = state.store.definitions().await?;
        let others: std::collections::HashMap<&str, &DataObject> =
            defs.objects.iter().filter(|o| o.name != object.name).map(|o| (o.name.as_str(), o)).collect();
        let object_of = |name: &str| if name == object.name { Some(&object) } else { others.get(name).copied() };
        for stored in &defs.webhooks {
            let def = &stored.definition;
            let touches = def.object == object.name
                || def.writeback.as_ref().and_then(|w| w.object.as_deref()) == Some(object.name.as_str());
            if !touches {
                continue;
            }
            if let Err(e) = hookline_engine::catalog::compile(stored, object_of) {
                let message = format!(
                    "this change would break webhook `{}`, which uses what it removes or changes ({}: {}); change the webhook first",
                    def.id, e.field, e.message
                );
                return Err(ApiError::InUse(FieldError::new("fields", message)));
            }
        }
    }
    if let Some(old) = &existed {
        records_still_fit(state, old, &object).await?;
    }
    state.store.put_object(&object).await?;
    let status = if existed.is_some() { HttpResponse::Ok() } else { HttpResponse::Created() };
    Ok({ status }.json(&object))
}

/// Refuses a new schema that stored records of the object do not fit: a field removed
/// while a record holds a value in it, or a field's type changed while a record holds a
/// value of the old type. Adding fields, relabelling and widening to `json` are fine. The
/// records are read page by page in write order, stopping at the first that does not fit.
async fn records_still_fit(state: &ApiState, old: &DataObject, new: &DataObject) -> Result<(), ApiError> {
    // (key, where the new schema says it, its new type or None when removed)
    let changed: Vec<(&str, String, Option<hookline_model::FieldType>)> = old
        .fields
        .iter()
        .filter_map(|f| match new.fields.iter().position(|n| n.key == f.key) {
            None => Some((f.key.as_str(), "fields".to_string(), None)),
            Some(i) if new.fields[i].ty != f.ty && new.fields[i].ty != hookline_model::FieldType::Json => {
                Some((f.key.as_str(), format!("fields[{i}].type"), Some(new.fields[i].ty)))
            }
            Some(_) => None,
        })
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    let mut after = 0;
    loop {
        let page = state.store.records_written(&old.name, after, 500).await?;
        let Some(last) = page.last() else { return Ok(()) };
        after = last.position;
        for indexed in &page {
            for (key, field, ty) in &changed {
                let Some(value) = indexed.record.fields.get(*key).filter(|v| !v.is_null()) else { continue };
                let message = match ty {
                    None => format!(
                        "field `{key}` cannot be removed: record `{}` holds a value in it; clear it first",
                        indexed.record.id
                    ),
                    Some(ty) if !ty.accepts(value) => format!(
                        "field `{key}` cannot become {}: record `{}` holds {} {value}; change or clear such values first",
                        ty.name(),
                        indexed.record.id,
                        hookline_model::object::json_kind(value),
                    ),
                    Some(_) => continue,
                };
                return Err(ApiError::InUse(FieldError::new(field.clone(), message)));
            }
        }
    }
}

pub async fn list_objects(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.store.list_objects().await?))
}

pub(crate) async fn object(state: &ApiState, name: &str) -> Result<DataObject, ApiError> {
    state.store.get_object(name).await?.ok_or_else(|| ApiError::NotFound(format!("no data object named `{name}`")))
}

/// The object and the definitions' version. The version is read once the request is here:
/// every webhook saved before it is then at or below it, so the trigger decides on the
/// write's change with every one of them. The object comes from the store only when the
/// version moved since it was last read: saving an object moves it.
async fn object_for_write(state: &ApiState, name: &str) -> Result<(Arc<DataObject>, u64), ApiError> {
    let store = state.store.clone();
    let read = move || {
        let store = store.clone();
        async move { store.definitions_version().await }
    };
    let version = state.objects.versions.read(read).await?;
    if let Some(object) = state.objects.get(name, version) {
        return Ok((object, version));
    }
    let object = Arc::new(object(state, name).await?);
    state.objects.put(name, version, object.clone());
    Ok((object, version))
}

/// Object definitions as last read, each with the definitions' version read before it: an
/// entry serves a write that reads that same version, so it is never older than what the
/// store held when that write arrived.
#[derive(Default)]
pub struct ObjectCache {
    objects: Mutex<HashMap<String, (u64, Arc<DataObject>)>>,
    /// The definitions' version, read for the writes that arrive together.
    versions: Arc<VersionReads>,
}

impl ObjectCache {
    fn get(&self, name: &str, version: u64) -> Option<Arc<DataObject>> {
        let cached = self.objects.lock().unwrap_or_else(PoisonError::into_inner);
        cached.get(name).filter(|(at, _)| *at == version).map(|(_, object)| object.clone())
    }

    fn put(&self, name: &str, version: u64, object: Arc<DataObject>) {
        let mut cached = self.objects.lock().unwrap_or_else(PoisonError::into_inner);
        if cached.get(name).is_none_or(|(at, _)| *at <= version) {
            cached.insert(name.to_string(), (version, object));
        }
    }
}

type VersionRead = Result<u64, StoreError>;

/// Reads of the definitions' version, each shared by the writes waiting for one. A write
/// needs a version read after it arrived, so it never joins a read already sent: it waits
/// for the next one, which goes out as soon as the one in flight is back and answers every
/// write that arrived meanwhile. One read is in flight at most; an idle API reads at once.
/// Under load this is one read per round trip instead of one per write.
#[derive(Default)]
pub struct VersionReads(Mutex<Waiting>);

#[derive(Default)]
struct Waiting {
    /// Whether a reader task runs.
    reading: bool,
    /// The writes waiting for the next read.
    callers: Vec<oneshot::Sender<VersionRead>>,
}

impl VersionReads {
    /// The definitions' version as `source` reads it, read after this call began (by the
    /// `source` of whichever caller started the reader task; all read the same store).
    pub async fn read<F, R>(self: &Arc<Self>, source: F) -> VersionRead
    where
        F: Fn() -> R + Send + 'static,
        R: Future<Output = VersionRead> + Send,
    {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut waiting = self.lock();
            waiting.callers.push(tx);
            !std::mem::replace(&mut waiting.reading, true)
        };
        if start {
            let reads = self.clone();
            tokio::spawn(async move { reads.run(source).await });
        }
        rx.await.unwrap_or_else(|_| Err(StoreError::Unavailable("reading the definitions' version failed".into())))
    }

    /// Reads with `source` for the waiting writes until none waits.
    async fn run<F, R>(&self, source: F)
    where
        F: Fn() -> R,
        R: Future<Output = VersionRead>,
    {
        // Should a read panic, the writes waiting hear of it and the next write starts over.
        let mut stop = Stop { reads: self, armed: true };
        loop {
            let callers = {
                let mut waiting = self.lock();
                if waiting.callers.is_empty() {
                    waiting.reading = false;
                    stop.armed = false;
                    return;
                }
                std::mem::take(&mut waiting.callers)
            };
            let read = source().await;
            for caller in callers {
                let _ = caller.send(read.clone());
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Ends a reader task that did not end normally.
struct Stop<'a> {
    reads: &'a VersionReads,
    armed: bool,
}

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut waiting = self.reads.lock();
            waiting.reading = false;
            waiting.callers.clear();
        }
    }
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

/// Creates or updates one record through the engine's one write path, in its own trace.
/// `definitions` is the definitions' version read after the request began.
/// One record's write, batched with the other single writes in flight.
async fn write_record(
    state: &ApiState,
    object: &Arc<DataObject>,
    id: String,
    fields: Fields,
    mode: WriteMode,
    definitions_version: u64,
) -> Result<records::Written, records::RecordError> {
    let span = tracing::info_span!("record.write", object = %object.name, record_id = %id);
    let traceparent = trace::start(&span);
    let write = records::SingleWrite {
        object: object.clone(),
        id,
        fields,
        mode,
        traceparent: traceparent.clone(),
        definitions_version,
    };
    let w = state.records.write(write).instrument(span).await?;
    tracing::debug!(object = %object.name, record_id = %w.record.id, version = w.record.version, status = w.status(),
        trace_id = trace::trace_id(&traceparent).unwrap_or_default(), "record written");
    Ok(w)
}

/// Records written in one store step at most.
const BULK: usize = 500;

/// Creates or updates many records (each in its own trace, as a single write is), a few
/// hundred per store step; results in order.
async fn upsert_many(
    state: &ApiState,
    object: &DataObject,
    items: &[(String, Fields)],
    definitions: u64,
) -> Result<Vec<Result<records::Written, records::RecordError>>, ApiError> {
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(BULK) {
        let patches: Vec<records::Patch<'_>> = chunk
            .iter()
            .map(|(id, fields)| {
                let span = tracing::info_span!("record.write", object = %object.name, record_id = %id);
                records::Patch { id, fields, traceparent: trace::start(&span), hops: 0 }
            })
            .collect();
        let written =
            records::write_many(state.store.as_ref(), object, &patches, WriteMode::Upsert, None, definitions).await?;
        out.extend(written);
    }
    Ok(out)
}

/// Longest accepted NDJSON line.
const MAX_LINE: usize = 1024 * 1024;

/// Creates or updates one record, or many (a JSON array: every record is checked before
/// any is written, so a bad one refuses the whole request). With
/// `Content-Type: application/x-ndjson` the body is a stream of records, one per line, read
/// as it arrives (never held whole), each applied or rejected on its own; the answer is
/// NDJSON, one result per line and a summary last.
pub async fn post_records(
    state: web::Data<ApiState>,
    path: web::Path<String>,
    req: actix_web::HttpRequest,
    mut payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (object, definitions) = object_for_write(&state, &path).await?;
    let ndjson = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-ndjson"));
    if ndjson {
        return ingest_ndjson(&state, &object, payload).await;
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadJson(format!("reading the request body: {e}")))?;
        if body.len() + chunk.len() > crate::MAX_BODY {
            return Err(ApiError::BadJson(format!(
                "request body above {} bytes: send large imports as NDJSON (application/x-ndjson)",
                crate::MAX_BODY
            )));
        }
        body.extend_from_slice(&chunk);
    }
    // One record, the common case, is read straight into its shape. Any other body, or one
    // that does not read that way, is read as JSON first, which also words every error.
    let direct = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => serde_json::from_slice::<RecordInput>(&body).ok(),
        _ => None,
    };
    let (inputs, bulk) = match direct {
        Some(input) => (vec![input], false),
        None => read_inputs(parse_json(&body)?)?,
    };
    let mut checked = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.into_iter().enumerate() {
        let prefix = if bulk { format!("[{i}].") } else { String::new() };
        let id = record_id(&object, &input, &prefix)?;
        records::check(&object, &id, &input.fields)
            .map_err(|e| FieldError::new(format!("{prefix}{}", e.field), e.message))?;
        checked.push((id, input.fields));
    }
    let mut results = Vec::with_capacity(checked.len());
    if bulk {
        for w in upsert_many(&state, &object, &checked, definitions).await? {
            let w = w?;
            let status = w.status();
            results.push((w, status));
        }
    } else if let Some((id, fields)) = checked.pop() {
        let w = write_record(&state, &object, id, fields, WriteMode::Upsert, definitions).await?;
        let status = w.status();
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

/// The records of a POST body read as JSON: an array of them (bulk) or one.
fn read_inputs(value: Value) -> Result<(Vec<RecordInput>, bool), ApiError> {
    let (items, bulk) = match value {
        Value::Array(items) => (items, true),
        other => (vec![other], false),
    };
    let mut inputs = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let prefix = if bulk { format!("[{i}].") } else { String::new() };
        let input: RecordInput = serde_path_to_error::deserialize(item).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { prefix.trim_end_matches('.').to_string() } else { format!("{prefix}{path}") };
            let message = format!("invalid record: {}", e.into_inner());
            if field.is_empty() {
                ApiError::BadJson(message)
            } else {
                ApiError::BadShape(FieldError::new(field, message))
            }
        })?;
        inputs.push(input);
    }
    Ok((inputs, bulk))
}

/// One NDJSON line read: a record to write, or why it is refused (the result line).
enum Line {
    Record { line: usize, id: String, fields: Fields },
    Rejected(Value),
    Blank,
}

fn rejected(line_no: usize, id: Option<&str>, field: Option<&str>, message: String) -> Value {
    json!({"line": line_no, "id": id, "status": "rejected", "error": {"field": field, "message": message}})
}

/// Reads one NDJSON line.
fn read_line(object: &DataObject, line_no: usize, line: &[u8]) -> Line {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Line::Blank;
    }
    if line.len() > MAX_LINE {
        return Line::Rejected(rejected(line_no, None, None, format!("line longer than {MAX_LINE} bytes")));
    }
    let input: RecordInput = match crate::from_json(line) {
        Ok(i) => i,
        Err((field, e)) => {
            return Line::Rejected(rejected(line_no, None, field.as_deref(), format!("invalid record: {e}")));
        }
    };
    match record_id(object, &input, "") {
        Ok(id) => Line::Record { line: line_no, id, fields: input.fields },
        Err(e) => Line::Rejected(rejected(line_no, None, Some(&e.field), e.message)),
    }
}

/// Writes the records of a run of NDJSON lines in bulk; one result line each, in order.
async fn apply_lines(
    state: &ApiState,
    object: &DataObject,
    lines: Vec<Line>,
    definitions: u64,
) -> Result<Vec<Value>, ApiError> {
    let items: Vec<(String, Fields)> = lines
        .iter()
        .filter_map(|l| match l {
            Line::Record { id, fields, .. } => Some((id.clone(), fields.clone())),
            _ => None,
        })
        .collect();
    let mut written = upsert_many(state, object, &items, definitions).await?.into_iter();
    let mut out = Vec::with_capacity(lines.len());
    for l in lines {
        match l {
            Line::Blank => {}
            Line::Rejected(v) => out.push(v),
            Line::Record { line, id, .. } => out.push(match written.next() {
                Some(Ok(w)) => json!({"line": line, "id": id, "status": w.status(), "version": w.record.version}),
                Some(Err(records::RecordError::Invalid(f))) => rejected(line, Some(&id), Some(&f.field), f.message),
                Some(Err(e)) => rejected(line, Some(&id), None, e.to_string()),
                None => rejected(line, Some(&id), None, "not written".into()),
            }),
        }
    }
    Ok(out)
}

async fn ingest_ndjson(
    state: &ApiState,
    object: &DataObject,
    mut payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let mut out = String::new();
    let mut counts = [0u64; 4]; // created, updated, unchanged, rejected
    let mut pending: Vec<u8> = Vec::new();
    let mut line_no = 0;
    let mut record = |results: Vec<Value>, out: &mut String| {
        for r in results {
            let i = match r["status"].as_str() {
                Some("created") => 0,
                Some("updated") => 1,
                Some("unchanged") => 2,
                _ => 3,
            };
            counts[i] += 1;
            out.push_str(&r.to_string());
            out.push('\n');
        }
    };
    let mut definitions = 0;
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadJson(format!("reading the request body: {e}")))?;
        // Read again as the stream goes on: a webhook saved while a long import runs is seen
        // by the records that arrive after it.
        definitions = state.store.definitions_version().await?;
        pending.extend_from_slice(&chunk);
        // Every whole line of what arrived, written in bulk.
        let mut lines = Vec::new();
        while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            line_no += 1;
            lines.push(read_line(object, line_no, &line));
        }
        record(apply_lines(state, object, lines, definitions).await?, &mut out);
        if pending.len() > MAX_LINE {
            // A line this long is refused without buffering the rest of it.
            line_no += 1;
            record(vec![rejected(line_no, None, None, format!("line longer than {MAX_LINE} bytes"))], &mut out);
            return Err(ApiError::BadJson(format!("line {line_no} is longer than {MAX_LINE} bytes")));
        }
    }
    if !pending.is_empty() {
        line_no += 1;
        let last = read_line(object, line_no, &std::mem::take(&mut pending));
        record(apply_lines(state, object, vec![last], definitions).await?, &mut out);
    }
    let summary = json!({"summary": {"lines": line_no, "created": counts[0], "updated": counts[1],
                                     "unchanged": counts[2], "rejected": counts[3]}});
    out.push_str(&summary.to_string());
    out.push('\n');
    tracing::info!(object = %object.name, lines = line_no, rejected = counts[3], "NDJSON import");
    Ok(HttpResponse::Ok().content_type("application/x-ndjson").body(out))
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
    let input: PatchInput = parse_json(&body)?;
    let (object, definitions) = object_for_write(&state, &name).await?;
    let w = write_record(&state, &object, id, input.fields, WriteMode::Update, definitions).await?;
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

/// For the fuzzer (`fuzz/`), not an API: reads an NDJSON body as `ingest_ndjson` does (a
/// line ends after each `\n`, whatever follows the last one is a last line) and returns how
/// many lines would go on to be written: read as a record and passing [`records::check`].
#[doc(hidden)]
pub fn fuzz_ndjson(object: &DataObject, body: &[u8]) -> usize {
    let mut accepted = 0;
    for (i, line) in body.split_inclusive(|b| *b == b'\n').enumerate() {
        if let Line::Record { id, fields, .. } = read_line(object, i + 1, line)
            && records::check(object, &id, &fields).is_ok()
        {
            accepted += 1;
        }
    }
    accepted
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::sync::Semaphore;

    /// A version source counting its reads; each read answers its own number, once the gate
    /// lets it through.
    fn source(reads: &Arc<AtomicU64>, gate: &Arc<Semaphore>) -> impl Fn() -> BoxedRead + Send + 'static {
        let (reads, gate) = (reads.clone(), gate.clone());
        move || {
            let (reads, gate) = (reads.clone(), gate.clone());
            Box::pin(async move {
                let n = reads.fetch_add(1, Ordering::SeqCst) + 1;
                gate.acquire().await.expect("open").forget();
                Ok(n)
            })
        }
    }
    type BoxedRead = std::pin::Pin<Box<dyn Future<Output = VersionRead> + Send>>;

    /// Callers that arrive while a read is out share the next one, never the one already
    /// sent; an idle caller reads at once.
    #[tokio::test]
    async fn writes_waiting_together_share_one_read_sent_after_they_came() {
        let (reads, gate) = (Arc::new(AtomicU64::new(0)), Arc::new(Semaphore::new(0)));
        let versions = Arc::new(VersionReads::default());
        let first = tokio::spawn({
            let (versions, read) = (versions.clone(), source(&reads, &gate));
            async move { versions.read(read).await }
        });
        while reads.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let later: Vec<_> = (0..20)
            .map(|_| {
                let (versions, read) = (versions.clone(), source(&reads, &gate));
                tokio::spawn(async move { versions.read(read).await })
            })
            .collect();
        // Every later caller queues up behind the read in flight before it comes back.
        while versions.lock().callers.len() < 20 {
            tokio::task::yield_now().await;
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1, "one read out while it is in flight");
        gate.add_permits(2);
        assert_eq!(first.await.expect("task").expect("read"), 1);
        for caller in later {
            assert_eq!(caller.await.expect("task").expect("read"), 2, "answered by a read sent after it came");
        }
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        gate.add_permits(1);
        assert_eq!(versions.read(source(&reads, &gate)).await.expect("read"), 3, "idle: a read of its own");
    }

    /// A read that fails answers its callers with the error; one that panics fails them, and
    /// the next caller reads again.
    #[tokio::test]
    async fn a_failed_read_fails_its_callers_only() {
        let versions = Arc::new(VersionReads::default());
        let failed = versions.read(|| async { Err(StoreError::Unavailable("down".into())) }).await;
        assert!(matches!(failed, Err(StoreError::Unavailable(m)) if m == "down"));
        let panicked = versions
            .read(|| async {
                if true {
                    panic!("a read panicked");
                }
                Ok(0)
            })
            .await;
        assert!(matches!(panicked, Err(StoreError::Unavailable(_))), "{panicked:?}");
        assert_eq!(versions.read(|| async { Ok(7) }).await.expect("read"), 7);
    }
}
