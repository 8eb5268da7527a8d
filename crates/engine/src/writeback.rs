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
use hookline_store::{ClaimScan, QueueName, WritebackDone};
use serde_json::Value;
use tracing::Instrument;

use crate::EngineContext;
use crate::catalog::CompiledWebhook;
use crate::messages::CatalogChanged;
use crate::records::{self, RecordError, WriteMode};
use crate::trace;
use crate::workers::{Start, WorkerCtx, WorkerSet};

/// Write-backs read at a time.
const READ: usize = 256;
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
        finish_lease(&ctx, &id, &consumer, lease).await;
    }
}

/// Write-backs of one webhook that retry at once on a node, at most.
const CONCURRENT: usize = 32;

/// One write-back on its way: its span, its response script's outputs and what is left.
struct Work {
    span: tracing::Span,
    /// The trace context the written records' changes carry.
    traceparent: String,
    /// The job's write-back hops; the records written carry one more.
    hops: u32,
    /// The records the output may update (`None`: any, by `writeback.any_record` or a
    /// write-back to another object).
    scope: Option<Vec<String>>,
    state: State,
}

enum State {
    /// The outputs to write, and which of them are still to be written (all: `None`).
    Write {
        outputs: Vec<serde_json::Map<String, Value>>,
        pending: Option<Vec<usize>>,
        failure: Option<Failure>,
    },
    Finished(Result<(), Failure>),
    /// The node cannot run it now (it is stopping): the entry goes back, to run again.
    GiveBack,
}

/// Runs the write-backs of a lease side by side, with their store steps together: the
/// response scripts at once, then one read and one write of every record they update, then
/// one step recording them all. Those that failed for a passing reason go on alone, retried
/// with backoff while their entries' lease is kept alive, each recorded as it ends.
async fn finish_lease(ctx: &EngineContext, id: &str, consumer: &Consumer<WritebackJob>, lease: Lease<WritebackJob>) {
    let wh = ctx.catalog.current().webhooks.get(id).cloned();
    let mut work: Vec<Work> =
        futures_util::future::join_all(lease.entries().iter().map(|entry| prepare(ctx, wh.as_deref(), &entry.value)))
            .await;
    if let Some(wh) = &wh {
        write_outputs(ctx, wh, &mut work).await;
    }
    let sizes = vec![1; lease.len()];
    let mut finished = Vec::new();
    let mut again = Vec::new();
    for (one, work) in lease.split(&sizes).into_iter().zip(work) {
        match &work.state {
            State::GiveBack => {
                let _ = consumer.release(one).await;
            }
            State::Finished(_) => finished.push((one, work)),
            State::Write { failure: Some(f), .. } if f.transient => again.push((one, work)),
            State::Write { .. } => finished.push((one, settle(work))),
        }
    }
    record(ctx, id, consumer, finished).await;
    let retries = again.into_iter().map(|(one, work)| async move {
        let work = retry(ctx, id, work).await;
        record(ctx, id, consumer, vec![(one, work)]).await;
    });
    futures_util::stream::iter(retries).buffer_unordered(CONCURRENT).collect::<Vec<()>>().await;
}

/// A write that needs no retry is over: its outcome is its failure, if any.
fn settle(work: Work) -> Work {
    let state = match work.state {
        State::Write { failure: Some(failure), .. } => State::Finished(Err(failure)),
        State::Write { failure: None, .. } => State::Finished(Ok(())),
        finished => finished,
    };
    Work { state, ..work }
}

/// Runs the response script of `job` and turns its output into the objects to write.
async fn prepare(ctx: &EngineContext, wh: Option<&CompiledWebhook>, job: &WritebackJob) -> Work {
    let span = tracing::info_span!(
        "writeback",
        webhook_id = %job.webhook_id,
        job_id = %job.job_id,
        attempt_id = %job.attempt_id,
        trace_id = trace::trace_id(&job.traceparent).unwrap_or_default(),
    );
    let traceparent = trace::resume(&span, &job.traceparent);
    let state = match wh {
        // A write-back of a deleted webhook has nothing to write.
        None => State::Finished(Err(Failure::permanent("the webhook was deleted".into()))),
        Some(wh) => match run_script(ctx, wh, job).instrument(span.clone()).await {
            Ok(outputs) if outputs.is_empty() || wh.def.writeback.is_none() => State::Finished(Ok(())),
            Ok(outputs) => State::Write { outputs, pending: None, failure: None },
            Err(failure) if failure.transient => State::GiveBack,
            Err(failure) => State::Finished(Err(failure)),
        },
    };
    let scope = wh.and_then(|wh| {
        let mapping = wh.def.writeback.as_ref()?;
        let same_object = mapping.object.as_deref().is_none_or(|o| o == wh.def.object);
        (same_object && !mapping.any_record).then(|| job.record_ids.clone())
    });
    Work { span, traceparent, hops: job.hops, scope, state }
}

/// Writes what every write-back of `work` still has to write, in one store step for all.
async fn write_outputs(ctx: &EngineContext, wh: &CompiledWebhook, work: &mut [Work]) {
    let Some(mapping) = &wh.def.writeback else { return };
    let catalog = ctx.catalog.current();
    let object_name = mapping.object.as_deref().unwrap_or(&wh.def.object);
    let Some(object) = catalog.objects.get(object_name) else {
        let failure = || Failure::permanent(format!("no data object named `{object_name}`"));
        for w in work.iter_mut().filter(|w| matches!(w.state, State::Write { .. })) {
            w.state = State::Finished(Err(failure()));
        }
        return;
    };
    // (work index, output index, record id, fields) of every output to write.
    let mut mapped = Vec::new();
    let mut errors: Vec<Vec<String>> = vec![Vec::new(); work.len()];
    for (w, item) in work.iter().enumerate() {
        let State::Write { outputs, pending, .. } = &item.state else { continue };
        for (i, out) in outputs.iter().enumerate() {
            if pending.as_ref().is_some_and(|p| !p.contains(&i)) {
                continue;
            }
            match map_output(&wh.def, out) {
                Ok((id, _)) if item.scope.as_ref().is_some_and(|ids| !ids.contains(&id)) => errors[w].push(format!(
                    "the output names record `{id}`, which is not a record of this job: a response script \
                     updates its own job's records unless `writeback.any_record` is true"
                )),
                Ok((id, fields)) => mapped.push((w, i, id, fields)),
                Err(e) => errors[w].push(e),
            }
        }
    }
    let written = match ctx.store.definitions_version().await {
        Ok(version) => {
            let patches: Vec<records::Patch<'_>> = mapped
                .iter()
                .map(|(w, _, id, fields)| records::Patch {
                    id,
                    fields,
                    traceparent: work[*w].traceparent.clone(),
                    hops: work[*w].hops + 1,
                })
                .collect();
            records::write_many(ctx.store.as_ref(), object, &patches, WriteMode::Update, Some(&wh.def.id), version)
                .await
        }
        Err(e) => Err(e),
    };
    let mut retry: Vec<Vec<usize>> = vec![Vec::new(); work.len()];
    match written {
        Ok(results) => {
            for ((w, i, id, _), result) in mapped.iter().zip(results) {
                match result {
                    Ok(written) => work[*w].span.in_scope(|| {
                        tracing::debug!(record_id = %id, version = written.record.version, changed = written.changed, "written back")
                    }),
                    Err(e) => {
                        if transient(&e) {
                            retry[*w].push(*i);
                        }
                        errors[*w].push(e.to_string());
                    }
                }
            }
        }
        // Nothing was written: every write of every write-back is still to do.
        Err(e) => {
            for (w, i, _, _) in &mapped {
                if e.is_transient() {
                    retry[*w].push(*i);
                }
                errors[*w].push(e.to_string());
            }
        }
    }
    for ((item, errors), retry) in work.iter_mut().zip(errors).zip(retry) {
        let State::Write { pending, failure, .. } = &mut item.state else { continue };
        *failure = (!errors.is_empty()).then(|| {
            // Try again only while every failure may pass; one that cannot fails the write-back.
            let transient = !retry.is_empty() && retry.len() == errors.len();
            Failure { message: errors.join("; "), transient }
        });
        *pending = Some(retry);
    }
}

/// Writes a write-back's remaining outputs again, with backoff, until they are written, a
/// failure will not pass, or [`GIVE_UP_AFTER`].
async fn retry(ctx: &EngineContext, id: &str, mut work: Work) -> Work {
    let started = tokio::time::Instant::now();
    let mut wait = Duration::from_millis(100);
    loop {
        let (message, transient) = match &work.state {
            State::Write { failure: Some(f), .. } => (f.message.clone(), f.transient),
            _ => return settle(work),
        };
        if !transient || started.elapsed() >= GIVE_UP_AFTER {
            return settle(work);
        }
        work.span.in_scope(|| {
            tracing::warn!(webhook_id = id, error = %message, "write-back failed for now; trying again");
        });
        ctx.metrics.writeback_retried(id);
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(10));
        // The webhook as it is now: it may have been changed or deleted meanwhile.
        let Some(wh) = ctx.catalog.current().webhooks.get(id).cloned() else {
            work.state = State::Finished(Err(Failure::permanent("the webhook was deleted".into())));
            return work;
        };
        write_outputs(ctx, &wh, std::slice::from_mut(&mut work)).await;
    }
}

/// Records finished write-backs in one store step and lets their entries go.
async fn record(
    ctx: &EngineContext,
    id: &str,
    consumer: &Consumer<WritebackJob>,
    finished: Vec<(Lease<WritebackJob>, Work)>,
) {
    if finished.is_empty() {
        return;
    }
    let mut dones = Vec::with_capacity(finished.len());
    for (one, work) in &finished {
        let Some(entry) = one.entries().first() else { continue };
        let job = &entry.value;
        let State::Finished(result) = &work.state else { continue };
        let (status, error, failed) = match result {
            Ok(()) if work.hops + 1 >= crate::trigger::MAX_WRITEBACK_HOPS => {
                ctx.metrics.writeback_done(id);
                let note = format!(
                    "hop limit: this write-back is {} write-backs from the user's change (the limit is {}), \
                     so the records it wrote fire no webhook",
                    work.hops + 1,
                    crate::trigger::MAX_WRITEBACK_HOPS
                );
                ("done", note, None)
            }
            Ok(()) => {
                ctx.metrics.writeback_done(id);
                ("done", String::new(), None)
            }
            Err(failure) => {
                ctx.metrics.writeback_failed(id);
                work.span.in_scope(|| {
                    tracing::warn!(webhook_id = id, job_id = %job.job_id, error = %failure.message, "write-back failed; kept among the failed write-backs");
                });
                ("error", failure.message.clone(), Some((job.clone(), failure.message.clone())))
            }
        };
        dones.push(WritebackDone {
            entry: entry.id.clone(),
            attempt_id: job.attempt_id.clone(),
            status: status.into(),
            error,
            failed,
        });
    }
    let mut wait = Duration::from_millis(50);
    for _ in 0..4 {
        match ctx.store.finish_writebacks(id, &ctx.consumer, &dones).await {
            Ok(results) => {
                if results.iter().any(|done| !done) {
                    tracing::warn!(webhook_id = %id, "a write-back was taken over meanwhile; its result was not recorded here");
                }
                for (one, _) in finished {
                    drop(one.into_entries());
                }
                return;
            }
            Err(error) if error.is_transient() => {
                tracing::warn!(webhook_id = %id, %error, "cannot record write-backs yet; trying again");
                tokio::time::sleep(wait).await;
                wait *= 4;
            }
            Err(error) => {
                tracing::warn!(webhook_id = %id, %error, "cannot record write-backs; they run again");
                break;
            }
        }
    }
    for (one, _) in finished {
        let _ = consumer.release(one).await;
    }
}

/// Why a write-back failed, and whether trying again may help.
#[derive(Debug, Clone)]
struct Failure {
    message: String,
    transient: bool,
}

impl Failure {
    fn permanent(message: String) -> Self {
        Failure { message, transient: false }
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

/// Runs the response script of `job`: the objects its output holds (none when it wrote
/// nothing).
async fn run_script(
    ctx: &EngineContext,
    wh: &CompiledWebhook,
    job: &WritebackJob,
) -> Result<Vec<serde_json::Map<String, Value>>, Failure> {
    let Some(script) = wh.response_script.clone() else { return Ok(Vec::new()) };
    let entities: Value = serde_json::from_slice(&job.entities_json).unwrap_or(Value::Array(vec![]));
    let mut call = ScriptCall::new(ScriptKind::Response, script, entities)
        .with_secrets(wh.script_secrets.clone())
        .with_request_body(String::from_utf8_lossy(&job.request_body).into_owned());
    if job.status != 0 {
        call = call.with_response(ResponseView {
            status: job.status as u16,
            headers: job.response_headers.iter().map(|h| (h.name.clone(), h.value.clone())).collect(),
            body: String::from_utf8_lossy(&job.response_body).into_owned(),
        });
    }
    let written = match ctx.scripts.run(call).instrument(tracing::info_span!("script", kind = "response")).await {
        Ok(ScriptOutput::Written(text)) => text,
        Ok(ScriptOutput::Headers(_) | ScriptOutput::Url(_)) => String::new(),
        Err(hookline_script::ScriptError::PoolClosed) => {
            return Err(Failure { message: "the script pool is stopping".into(), transient: true });
        }
        Err(e) => {
            ctx.metrics.script_error(&wh.def.id);
            return Err(Failure::permanent(format!("response script: {e}")));
        }
    };
    if written.trim().is_empty() {
        return Ok(Vec::new());
    }
    match serde_json::from_str::<Value>(&written) {
        Ok(Value::Object(o)) => Ok(vec![o]),
        Ok(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::Object(o) => Ok(o),
                _ => Err(Failure::permanent("response script output array must hold objects".to_string())),
            })
            .collect(),
        Ok(_) => Err(Failure::permanent("response script output must be a JSON object or an array of objects".into())),
        Err(e) => Err(Failure::permanent(format!("response script output is not JSON: {e}"))),
    }
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
