//! The writeback role runs a webhook's response script on the final attempt's result,
//! passes its output through the webhook's import mapping, and updates the triggering
//! records through the same path as an API update — marked with the webhook's id so the
//! update cannot fire that webhook again. Whatever goes wrong is noted on the attempt.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use hookline_model::{Fields, WebhookDef};
use hookline_proto::WritebackJob;
use hookline_script::{ResponseView, ScriptCall, ScriptKind, ScriptOutput};
use serde_json::Value;
use tokio::sync::watch;
use tracing::Instrument;

use crate::EngineContext;
use crate::catalog::{Catalog, CompiledWebhook};
use crate::messages::CatalogChanged;
use crate::records::{self, WriteMode};
use crate::trace;

struct Worker {
    version: u64,
    stop: watch::Sender<bool>,
}

pub struct Writeback {
    ctx: EngineContext,
    catalog: Arc<Catalog>,
    workers: HashMap<String, Worker>,
}

impl Writeback {
    pub fn new(ctx: EngineContext) -> Self {
        Writeback { ctx, catalog: Arc::default(), workers: HashMap::new() }
    }
}

impl Actor for Writeback {
    type Context = Context<Self>;

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        for w in self.workers.values() {
            let _ = w.stop.send(true);
        }
    }
}

impl Handler<CatalogChanged> for Writeback {
    type Result = ();

    fn handle(&mut self, msg: CatalogChanged, _ctx: &mut Self::Context) {
        self.catalog = msg.catalog;
        let catalog = self.catalog.clone();
        self.workers.retain(|id, w| {
            let keep = catalog.webhooks.get(id).is_some_and(|wh| wh.version == w.version);
            if !keep {
                let _ = w.stop.send(true);
            }
            keep
        });
        // Write-backs go on while a webhook is paused: they finish work already delivered.
        for (id, wh) in &catalog.webhooks {
            if wh.response_script.is_none() || self.workers.contains_key(id) {
                continue;
            }
            let (stop, stopped) = watch::channel(false);
            actix::spawn(run_worker(self.ctx.clone(), wh.clone(), catalog.clone(), stopped));
            self.workers.insert(id.clone(), Worker { version: wh.version, stop });
        }
    }
}

async fn run_worker(
    ctx: EngineContext,
    wh: Arc<CompiledWebhook>,
    catalog: Arc<Catalog>,
    mut stop: watch::Receiver<bool>,
) {
    let _running = ctx.drain.guard();
    let id = wh.def.id.clone();
    let mut claimed_at = None::<tokio::time::Instant>;
    while !*stop.borrow() && !*ctx.shutdown.borrow() {
        let entries = if claimed_at.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            claimed_at = Some(tokio::time::Instant::now());
            ctx.store.claim_writebacks(&id, &ctx.node_id, Duration::from_secs(60)).await
        } else {
            Ok(Vec::new())
        };
        let entries = match entries {
            Ok(e) if !e.is_empty() => Ok(e),
            Ok(_) => ctx.store.read_writebacks(&id, &ctx.node_id, 16, Duration::from_secs(1)).await,
            Err(e) => Err(e),
        };
        match entries {
            Ok(entries) => {
                for entry in entries {
                    let error = write_back(&ctx, &wh, &catalog, &entry.value).await.err();
                    if let Err(e) =
                        ctx.store.finish_writeback(&id, &entry.id, &entry.value.attempt_id, error.as_deref()).await
                    {
                        tracing::warn!(webhook_id = %id, error = %e, "cannot record the write-back; it will run again");
                    }
                }
            }
            Err(error) => {
                tracing::warn!(webhook_id = %id, %error, "cannot read write-backs");
                let _ = tokio::time::timeout(Duration::from_secs(1), stop.changed()).await;
            }
        }
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

async fn write_back(
    ctx: &EngineContext,
    wh: &CompiledWebhook,
    catalog: &Catalog,
    job: &WritebackJob,
) -> Result<(), String> {
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
            Err(e) => {
                ctx.metrics.script_error(&wh.def.id);
                return Err(format!("response script: {e}"));
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
                    _ => Err("response script output array must hold objects".to_string()),
                })
                .collect::<Result<_, _>>()?,
            Ok(_) => return Err("response script output must be a JSON object or an array of objects".into()),
            Err(e) => return Err(format!("response script output is not JSON: {e}")),
        };
        let object_name = mapping.object.as_deref().unwrap_or(&wh.def.object);
        let Some(object) = catalog.objects.get(object_name) else {
            return Err(format!("no data object named `{object_name}`"));
        };
        let mut errors = Vec::new();
        for out in &outputs {
            let result = match map_output(&wh.def, out) {
                Ok((id, fields)) => {
                    records::write(ctx.store.as_ref(), object, &id, &fields, WriteMode::Update, Some(&wh.def.id), &traceparent)
                        .await
                        .map(|w| tracing::info!(record_id = %id, version = w.record.version, changed = w.changed, "written back"))
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                errors.push(e);
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
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
