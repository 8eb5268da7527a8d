//! The writeback role runs a webhook's response script on the final attempt's result,
//! passes its output through the webhook's import mapping, and updates the triggering
//! records through the same path as an API update — marked with the webhook's id so the
//! update cannot fire that webhook again.
//!
//! A write that fails for a passing reason (the store unreachable, a record changed by
//! others too often) is tried again with backoff, the write-back's entry kept alive by its
//! lease meanwhile. One that fails for good (no such record, a field the object does not
//! have, a script error) is noted on the attempt and kept among the webhook's failed
//! write-backs, to be redriven once the cause is fixed. Workers read the data objects from
//! the node's current catalog, so an object's new fields are seen without a restart.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::StreamExt;
use hookline_model::{Fields, WebhookDef};
use hookline_proto::WritebackJob;
use hookline_script::{ResponseView, ScriptCall, ScriptKind, ScriptOutput};
use hookline_store::queue::{Consumer, Lease};
use hookline_store::{ClaimScan, Entry, QueueName, WritebackDone};
use serde_json::Value;
use tracing::Instrument;

use crate::EngineContext;
use crate::catalog::CompiledWebhook;
use crate::messages::CatalogChanged;
use crate::records::{self, RecordError, WriteMode};
use crate::trace;
use crate::workers::{Start, WorkerCtx, WorkerSet};

/// Write-backs read at a time.
const READ: usize = 64;
/// How long a write-back keeps trying after passing failures before it counts as failed.
const GIVE_UP_AFTER: Duration = Duration::from_secs(120);

pub struct Writeback {
    ctx: EngineContext,
    workers: WorkerSet,
    start: Start,
}

impl Writeback {
    pub fn new(ctx: EngineContext) -> Self {
        let start: Start = Arc::new(|w| Box::pin(run_worker(w)));
        Writeback { ctx, workers: WorkerSet::new("writeback"), start }
    }
}

impl Actor for Writeback {
    type Context = Context<Self>;

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.workers.stop_all();
    }
}

impl Handler<CatalogChanged> for Writeback {
    type Result = ();

    fn handle(&mut self, msg: CatalogChanged, _ctx: &mut Self::Context) {
        // Write-backs go on while a webhook is paused: they finish work already delivered.
        let wanted =
            msg.catalog.webhooks.values().filter(|wh| wh.response_script.is_some()).map(|wh| wh.def.id.clone());
        self.workers.sync(&self.ctx, wanted, &self.start);
    }
}

async fn run_worker(w: WorkerCtx) {
    let ctx = w.engine.clone();
    let id = w.key.clone();
    let consumer: Consumer<WritebackJob> =
        Consumer::new(ctx.store.clone(), QueueName::writebacks(&id), &ctx.consumer, ctx.lease, None);
    let mut scan = ClaimScan { min_idle: ctx.lease, cursor: String::new() };
    let mut last_scan = tokio::time::Instant::now() - ctx.lease;
    while !w.stopping() {
        if !ctx.catalog.current().webhooks.contains_key(&id) {
            break;
        }
        let read = if last_scan.elapsed() >= ctx.lease / 2 {
            last_scan = tokio::time::Instant::now();
            consumer.claim(&scan, READ).await.map(|(lease, next)| {
                scan.cursor = next;
                lease
            })
        } else {
            tokio::select! {
                r = consumer.read(READ, Duration::from_secs(2)) => r,
                _ = w.stopped() => break,
            }
        };
        let lease = match read {
            Ok(l) => l,
            Err(error) => {
                tracing::warn!(webhook_id = %id, %error, "cannot read write-backs; retrying");
                w.pause(Duration::from_secs(1)).await;
                continue;
            }
        };
        if lease.is_empty() {
            continue;
        }
        // Side by side, each finished as soon as it is done (a node that dies mid-lease
        // repeats only the unfinished ones).
        let sizes = vec![1; lease.len()];
        let one_by_one = lease.split(&sizes).into_iter().map(|one| finish_one(&ctx, &id, &consumer, one));
        futures_util::stream::iter(one_by_one).buffer_unordered(CONCURRENT).collect::<Vec<()>>().await;
    }
}

/// Write-backs of one webhook run at once on a node, at most.
const CONCURRENT: usize = 32;

/// Runs the write-back of a one-entry lease and records its result.
async fn finish_one(ctx: &EngineContext, id: &str, consumer: &Consumer<WritebackJob>, one: Lease<WritebackJob>) {
    let Some(entry) = one.entries().first() else { return };
    let done = write_back_entry(ctx, id, entry).await;
    match ctx.store.finish_writebacks(id, &ctx.consumer, std::slice::from_ref(&done)).await {
        Ok(finished) => {
            if finished.iter().any(|f| !f) {
                tracing::warn!(webhook_id = %id, "a write-back was taken over meanwhile; its result was not recorded here");
            }
            drop(one.into_entries());
        }
        Err(error) => {
            tracing::warn!(webhook_id = %id, %error, "cannot record a write-back; it runs again");
            let _ = consumer.release(one).await;
        }
    }
}

/// Runs one write-back to its end (trying again after passing failures) and says how it went.
async fn write_back_entry(ctx: &EngineContext, id: &str, entry: &Entry<WritebackJob>) -> WritebackDone {
    let job = &entry.value;
    let started = tokio::time::Instant::now();
    let mut wait = Duration::from_millis(100);
    let mut pending: Option<Vec<usize>> = None;
    let result = loop {
        // The webhook as it is now (a write-back of a deleted webhook has nothing to write).
        let Some(wh) = ctx.catalog.current().webhooks.get(id).cloned() else {
            break Err(Failure::permanent("the webhook was deleted".into()));
        };
        match write_back(ctx, &wh, job, pending.as_deref()).await {
            Ok(()) => break Ok(()),
            Err(WriteBackError { failure, retry_outputs })
                if failure.transient && started.elapsed() < GIVE_UP_AFTER =>
            {
                tracing::warn!(webhook_id = id, job_id = %job.job_id, error = %failure.message, "write-back failed for now; trying again");
                ctx.metrics.writeback_retried(id);
                pending = retry_outputs;
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
            Err(WriteBackError { failure, .. }) => break Err(failure),
        }
    };
    let mut attempt = None;
    for wait in [50u64, 200, 1000, 3000] {
        match ctx.store.get_attempt(id, &job.attempt_id).await {
            Ok(a) => {
                attempt = a;
                break;
            }
            Err(error) => {
                tracing::warn!(webhook_id = id, %error, "cannot read the attempt to note the write-back on; trying again");
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
        }
    }
    let failed = match result {
        Ok(()) => {
            ctx.metrics.writeback_done(id);
            if let Some(a) = attempt.as_mut() {
                a.writeback_status = "done".into();
                a.writeback_error.clear();
            }
            None
        }
        Err(failure) => {
            ctx.metrics.writeback_failed(id);
            tracing::warn!(webhook_id = id, job_id = %job.job_id, error = %failure.message, "write-back failed; kept among the failed write-backs");
            if let Some(a) = attempt.as_mut() {
                a.writeback_status = "error".into();
                a.writeback_error = failure.message.clone();
            }
            Some((job.clone(), failure.message))
        }
    };
    WritebackDone { entry: entry.id.clone(), attempt, failed }
}

/// Why a write-back failed, and whether trying again may help.
#[derive(Debug)]
struct Failure {
    message: String,
    transient: bool,
}

impl Failure {
    fn permanent(message: String) -> Self {
        Failure { message, transient: false }
    }
}

#[derive(Debug)]
struct WriteBackError {
    failure: Failure,
    /// The outputs (by index) still to write, when some were written already.
    retry_outputs: Option<Vec<usize>>,
}

impl From<Failure> for WriteBackError {
    fn from(failure: Failure) -> Self {
        WriteBackError { failure, retry_outputs: None }
    }
}

/// Turns one output object of the response script into (record id, fields to set).
pub fn map_output(def: &WebhookDef, out: &serde_json::Map<String, Value>) -> Result<(String, Fields), String> {
    let Some(mapping) = &def.writeback else { return Err("no writeback mapping".into()) };
    let id = match out.get(&mapping.key.from) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(format!("output has no record id in `{}`", mapping.key.from)),
    };
    let mut fields = Fields::new();
    for (name, value) in out {
        if *name == mapping.key.from {
            continue;
        }
        let target = mapping.fields.get(name).unwrap_or(name);
        fields.insert(target.clone(), value.clone());
    }
    Ok((id, fields))
}

/// Whether a failed record write may succeed later.
fn transient(e: &RecordError) -> bool {
    match e {
        RecordError::Contended { .. } => true,
        RecordError::Store(s) => s.is_transient(),
        RecordError::Invalid(_) | RecordError::NotFound { .. } => false,
    }
}

/// Runs the response script and writes its outputs (only those in `only`, when given).
async fn write_back(
    ctx: &EngineContext,
    wh: &CompiledWebhook,
    job: &WritebackJob,
    only: Option<&[usize]>,
) -> Result<(), WriteBackError> {
    let span = tracing::info_span!(
        "writeback",
        webhook_id = %wh.def.id,
        job_id = %job.job_id,
        attempt_id = %job.attempt_id,
        trace_id = trace::trace_id(&job.traceparent).unwrap_or_default(),
    );
    let traceparent = trace::resume(&span, &job.traceparent);
    async move {
        let Some(script) = wh.response_script.clone() else { return Ok(()) };
        let entities: Value = serde_json::from_slice(&job.entities_json).unwrap_or(Value::Array(vec![]));
        let response = (job.status != 0).then(|| ResponseView {
            status: job.status as u16,
            headers: job.response_headers.iter().map(|h| (h.name.clone(), h.value.clone())).collect(),
            body: String::from_utf8_lossy(&job.response_body).into_owned(),
        });
        let mut call = ScriptCall::new(ScriptKind::Response, script, entities)
            .with_request_body(String::from_utf8_lossy(&job.request_body).into_owned());
        if let Some(r) = response {
            call = call.with_response(r);
        }
        let written = match ctx.scripts.run(call).instrument(tracing::info_span!("script", kind = "response")).await {
            Ok(ScriptOutput::Written(text)) => text,
            Ok(ScriptOutput::Headers(_)) => String::new(),
            Err(hookline_script::ScriptError::PoolClosed) => {
                return Err(Failure { message: "the script pool is stopping".into(), transient: true }.into());
            }
            Err(e) => {
                ctx.metrics.script_error(&wh.def.id);
                return Err(Failure::permanent(format!("response script: {e}")).into());
            }
        };
        let Some(mapping) = &wh.def.writeback else { return Ok(()) };
        if written.trim().is_empty() {
            return Ok(());
        }
        let outputs = match serde_json::from_str::<Value>(&written) {
            Ok(Value::Object(o)) => vec![o],
            Ok(Value::Array(items)) => items
                .into_iter()
                .map(|v| match v {
                    Value::Object(o) => Ok(o),
                    _ => Err(Failure::permanent("response script output array must hold objects".to_string())),
                })
                .collect::<Result<_, _>>()?,
            Ok(_) => {
                return Err(Failure::permanent(
                    "response script output must be a JSON object or an array of objects".into(),
                )
                .into());
            }
            Err(e) => return Err(Failure::permanent(format!("response script output is not JSON: {e}")).into()),
        };
        let catalog = ctx.catalog.current();
        let object_name = mapping.object.as_deref().unwrap_or(&wh.def.object);
        let Some(object) = catalog.objects.get(object_name) else {
            return Err(Failure::permanent(format!("no data object named `{object_name}`")).into());
        };
        let version = ctx
            .store
            .definitions_version()
            .await
            .map_err(|e| Failure { message: e.to_string(), transient: e.is_transient() })?;
        let mut errors = Vec::new();
        let mut retry = Vec::new();
        let mut any_transient = false;
        let mut mapped = Vec::new();
        for (i, out) in outputs.iter().enumerate() {
            if only.is_some_and(|o| !o.contains(&i)) {
                continue;
            }
            match map_output(&wh.def, out) {
                Ok((id, fields)) => mapped.push((i, id, fields)),
                Err(e) => errors.push(e),
            }
        }
        // Every record of the output in one store step (a bulk call's write-back too).
        let patches: Vec<records::Patch<'_>> = mapped
            .iter()
            .map(|(_, id, fields)| records::Patch { id, fields, traceparent: traceparent.clone() })
            .collect();
        let written =
            records::write_many(ctx.store.as_ref(), object, &patches, WriteMode::Update, Some(&wh.def.id), version)
                .await
                .map_err(|e| Failure { message: e.to_string(), transient: e.is_transient() })?;
        for ((i, id, _), result) in mapped.iter().zip(written) {
            match result {
                Ok(w) => {
                    tracing::info!(record_id = %id, version = w.record.version, changed = w.changed, "written back")
                }
                Err(e) => {
                    if transient(&e) {
                        any_transient = true;
                        retry.push(*i);
                    }
                    errors.push(e.to_string());
                }
            }
        }
        if errors.is_empty() {
            return Ok(());
        }
        // Try again only while every failure may pass; one that cannot fails the write-back.
        let transient = any_transient && retry.len() == errors.len();
        Err(WriteBackError { failure: Failure { message: errors.join("; "), transient }, retry_outputs: Some(retry) })
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::map_output;
    use serde_json::json;

    #[test]
    fn output_is_mapped_by_key_and_renames() {
        let def: hookline_model::WebhookDef = serde_json::from_value(json!({
            "id": "w", "object": "survey", "trigger": {"on_update": true},
            "request": {"url": "https://x"},
            "response_script": "write('{}')",
            "writeback": {"key": {"from": "medalliaRecordId", "to": "a_surveyid"},
                          "fields": {"ticketSystemRecordId": "t_ticket_id"}}
        }))
        .unwrap();
        let out = json!({"medalliaRecordId": "S1", "ticketSystemSynced": 1, "ticketSystemRecordId": "IT-1"});
        let (id, fields) = map_output(&def, out.as_object().unwrap()).unwrap();
        assert_eq!(id, "S1");
        assert_eq!(json!(fields), json!({"ticketSystemSynced": 1, "t_ticket_id": "IT-1"}));
        let missing = json!({"ticketSystemSynced": 1});
        assert!(map_output(&def, missing.as_object().unwrap()).unwrap_err().contains("medalliaRecordId"));
    }
}
