//! The trigger consumes each data object's change stream (consumer group `trigger`),
//! decides for every webhook on that object whether the change fires it, enqueues the jobs
//! and only then acknowledges the changes: a crash in between re-reads them, so no accepted
//! change is lost.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use hookline_model::{ChangeView, Decision, Fields, decide};
use hookline_proto::{Change, Job};
use hookline_store::{Entry, StoreError, now_ms};
use tracing::Instrument;

use crate::EngineContext;
use crate::catalog::{Catalog, CompiledWebhook};
use crate::messages::CatalogChanged;
use crate::trace;

/// Changes read from one object's stream, to decide on and acknowledge.
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct ChangeBatch {
    pub object: String,
    pub entries: Vec<Entry<Change>>,
}

pub struct Trigger {
    ctx: EngineContext,
    catalog: Arc<Catalog>,
    /// Objects whose change stream is being read.
    following: HashSet<String>,
}

impl Trigger {
    pub fn new(ctx: EngineContext) -> Self {
        Trigger { ctx, catalog: Arc::default(), following: HashSet::new() }
    }
}

/// How long a change may stay unacknowledged by a consumer before another takes it over.
const CLAIM_IDLE: Duration = Duration::from_secs(30);

async fn follow_object(ctx: EngineContext, object: String, addr: Addr<Trigger>) {
    let _running = ctx.drain.guard();
    let mut shutdown = ctx.shutdown.clone();
    let mut last_claim: Option<tokio::time::Instant> = None;
    while !*shutdown.borrow() {
        // Changes a dead consumer read but never acknowledged (processing takes
        // milliseconds, so an entry idle this long has no live owner).
        let claimed = if last_claim.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            last_claim = Some(tokio::time::Instant::now());
            ctx.store.claim_changes(&object, &ctx.node_id, CLAIM_IDLE).await
        } else {
            Ok(Vec::new())
        };
        let read = match claimed {
            Ok(c) if !c.is_empty() => Ok(c),
            Ok(_) => ctx.store.read_changes(&object, &ctx.node_id, 100, Duration::from_secs(1)).await,
            Err(e) => Err(e),
        };
        let outcome = match read {
            Ok(entries) if entries.is_empty() => Ok(()),
            Ok(entries) => match addr.send(ChangeBatch { object: object.clone(), entries }).await {
                Ok(r) => r,
                Err(_) => return, // the actor is gone
            },
            Err(e) => Err(e),
        };
        if let Err(error) = outcome {
            tracing::warn!(object, %error, "reading changes failed; retrying");
            let _ = tokio::time::timeout(Duration::from_secs(1), shutdown.changed()).await;
        }
    }
}

/// The idempotency id of the job a record version makes for a webhook: derived, not
/// random, so a change processed twice (a crash between enqueue and acknowledgement)
/// yields the same `webhook-id` and the target can drop the duplicate.
pub fn job_id(webhook: &str, object: &str, record_id: &str, version: u64) -> String {
    let name = format!("{webhook}\n{object}\n{record_id}\n{version}");
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes()).to_string()
}

/// The job delivering one record version to webhook `wh`. The record's fields are the
/// entity scripts and templates see, with `id` added when the object has no field of that name.
pub(crate) fn record_job(
    wh: &CompiledWebhook,
    job_id: String,
    object: &str,
    record_id: &str,
    version: u64,
    fields: &Fields,
    traceparent: String,
) -> Job {
    let mut entity = fields.clone();
    entity.entry("id".to_string()).or_insert_with(|| record_id.into());
    let entities = serde_json::Value::Array(vec![serde_json::Value::Object(entity)]);
    Job {
        job_id,
        webhook_id: wh.def.id.clone(),
        webhook_version: wh.version,
        object: object.to_string(),
        record_ids: vec![record_id.to_string()],
        record_versions: vec![version],
        entities_json: serde_json::to_vec(&entities).unwrap_or_default(),
        attempts: 0,
        created_at_ms: now_ms(),
        traceparent,
    }
}

fn parse_fields(bytes: &[u8]) -> Option<Fields> {
    if bytes.is_empty() { None } else { serde_json::from_slice(bytes).ok() }
}

impl Actor for Trigger {
    type Context = Context<Self>;
}

impl Handler<CatalogChanged> for Trigger {
    type Result = ();

    fn handle(&mut self, msg: CatalogChanged, ctx: &mut Self::Context) {
        self.catalog = msg.catalog;
        for object in self.catalog.objects.keys() {
            if self.following.insert(object.clone()) {
                ctx.spawn(follow_object(self.ctx.clone(), object.clone(), ctx.address()).into_actor(self));
            }
        }
    }
}

impl Handler<ChangeBatch> for Trigger {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, msg: ChangeBatch, _ctx: &mut Self::Context) -> Self::Result {
        let catalog = self.catalog.clone();
        let store = self.ctx.store.clone();
        Box::pin(async move {
            let mut jobs = Vec::new();
            let mut ids = Vec::with_capacity(msg.entries.len());
            for entry in &msg.entries {
                let change = &entry.value;
                ids.push(entry.id.clone());
                let Some(new) = parse_fields(&change.new_json) else {
                    tracing::error!(object = %msg.object, record_id = %change.record_id, "undecodable change; skipped");
                    continue;
                };
                let old = parse_fields(&change.old_json);
                let span = tracing::info_span!(
                    "trigger",
                    object = %msg.object,
                    record_id = %change.record_id,
                    version = change.version,
                    trace_id = trace::trace_id(&change.traceparent).unwrap_or_default(),
                );
                trace::resume(&span, &change.traceparent);
                let _guard = span.enter();
                let view = ChangeView {
                    old: old.as_ref(),
                    new: &new,
                    origin_webhook: (!change.origin_webhook.is_empty()).then_some(change.origin_webhook.as_str()),
                };
                for wh in catalog.webhooks_on(&msg.object) {
                    let decision = decide(&wh.def.id, &wh.plan, view);
                    tracing::debug!(webhook_id = %wh.def.id, decision = decision.as_str(), "trigger decision");
                    if decision != Decision::Fire {
                        continue;
                    }
                    let enqueue = tracing::info_span!("enqueue", webhook_id = %wh.def.id);
                    let traceparent = trace::start(&enqueue);
                    let job_id = job_id(&wh.def.id, &msg.object, &change.record_id, change.version);
                    jobs.push(record_job(wh, job_id, &msg.object, &change.record_id, change.version, &new, traceparent));
                }
            }
            let enqueued = jobs.len();
            // Jobs first, acknowledgement second: a crash between the two re-reads the
            // changes and enqueues again (at-least-once), never zero times.
            store.enqueue(&jobs).await?;
            store.ack_changes(&msg.object, &ids).await?;
            tracing::debug!(object = %msg.object, changes = ids.len(), enqueued, "changes processed");
            Ok(())
        }.instrument(tracing::Span::current()))
    }
}

#[cfg(test)]
mod tests {
    use super::job_id;

    #[test]
    fn job_ids_are_stable_per_webhook_and_record_version() {
        assert_eq!(job_id("wh", "survey", "S1", 2), job_id("wh", "survey", "S1", 2));
        assert_ne!(job_id("wh", "survey", "S1", 2), job_id("wh", "survey", "S1", 3));
        assert_ne!(job_id("wh", "survey", "S1", 2), job_id("other", "survey", "S1", 2));
    }
}
