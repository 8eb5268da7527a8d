//! The trigger consumes each data object's change stream (consumer group `trigger`),
//! decides for every webhook on that object whether the change fires it, enqueues the jobs
//! and only then acknowledges the changes: a crash in between reads them again, so no
//! accepted change is lost.
//!
//! A change is decided on against every webhook of its object *as of that change*: it
//! carries the definitions' version read before it was written, and a worker whose catalog
//! is older waits for a newer one first. While a webhook of the object does not load on
//! this node (its secrets do not open here, it no longer compiles), the object's changes
//! are not read here at all, so they wait — for this node to be fixed, or for a node that
//! can load it — instead of being decided on without it.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use hookline_model::{ChangeView, Decision, Fields, decide};
use hookline_proto::{Change, Job};
use hookline_store::queue::{Consumer, Lease};
use hookline_store::{ClaimScan, JourneyNote, QueueName, StoreError, now_ms};

use crate::EngineContext;
use crate::catalog::{Catalog, CompiledWebhook};
use crate::dispatcher::batch::pack;
use crate::messages::CatalogChanged;
use crate::workers::{Start, WorkerCtx, WorkerSet};
use crate::{journey, trace};

/// Changes read at a time, at least: more when a webhook of the object sends bulk calls
/// larger than this, so a read can fill one.
const READ: usize = 100;
/// How long a worker waits for definitions as new as a change says before giving it back.
const CATCH_UP: Duration = Duration::from_secs(10);
/// Write-backs a chain may run from one user's change: a change this many write-backs
/// away fires no webhook, so two webhooks that write back fields triggering each other
/// stop instead of looping.
pub const MAX_WRITEBACK_HOPS: u32 = 8;

pub struct Trigger {
    ctx: EngineContext,
    workers: WorkerSet,
    start: Start,
}

impl Trigger {
    pub fn new(ctx: EngineContext) -> Self {
        let start: Start = Arc::new(|w| Box::pin(follow_object(w)));
        Trigger { ctx, workers: WorkerSet::new("trigger"), start }
    }
}

impl Actor for Trigger {
    type Context = Context<Self>;

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.workers.stop_all();
    }
}

impl Handler<CatalogChanged> for Trigger {
    type Result = ();

    fn handle(&mut self, msg: CatalogChanged, _ctx: &mut Self::Context) {
        let objects = msg.catalog.objects.keys().cloned();
        self.workers.sync(&self.ctx, objects, &self.start);
    }
}

/// One object's change stream, until the worker is told to stop.
async fn follow_object(w: WorkerCtx) {
    let ctx = &w.engine;
    let object = w.key.clone();
    let consumer: Consumer<Change> =
        Consumer::new(ctx.store.clone(), QueueName::changes(&object), &ctx.consumer, ctx.lease, None);
    let mut view = ctx.catalog.clone();
    let mut scan = ClaimScan { min_idle: ctx.lease, cursor: String::new() };
    let mut last_scan = tokio::time::Instant::now() - ctx.lease;
    while !w.stopping() {
        let catalog = view.current();
        let read_count =
            catalog.webhooks_on(&object).map(|wh| wh.def.settings.max_batch_size as usize).fold(READ, usize::max);
        if let Some((id, broken)) = catalog.broken_on(&object).next() {
            tracing::warn!(%object, webhook_id = %id, reason = %broken.reason, "holding this object's changes until its webhook loads");
            tokio::select! {
                _ = view.changed() => {}
                _ = w.stopped() => {}
            }
            continue;
        }
        // Changes a dead consumer read but never acknowledged (every live one heartbeats).
        let read = if last_scan.elapsed() >= ctx.lease / 2 {
            last_scan = tokio::time::Instant::now();
            match consumer.claim(&scan, read_count).await {
                Ok((lease, next)) => {
                    scan.cursor = next;
                    if !lease.is_empty() {
                        tracing::info!(%object, count = lease.len(), "took over changes of a stopped consumer");
                    }
                    Ok(lease)
                }
                Err(e) => Err(e),
            }
        } else {
            tokio::select! {
                r = consumer.read(read_count, Duration::from_secs(2)) => r,
                _ = w.stopped() => break,
            }
        };
        let outcome = match read {
            Ok(lease) if lease.is_empty() => Ok(()),
            Ok(lease) => process(&w, &object, &consumer, lease).await,
            Err(e) => Err(e),
        };
        if let Err(error) = outcome {
            tracing::warn!(%object, %error, "processing changes failed; retrying");
            w.pause(Duration::from_secs(1)).await;
        }
    }
}

/// Decides on a lease of changes, enqueues the jobs they fire and acknowledges them. Waits
/// (holding them) for definitions as new as the changes; gives them back if a webhook of the
/// object no longer loads on this node, for a node that can load it.
async fn process(
    w: &WorkerCtx,
    object: &str,
    consumer: &Consumer<Change>,
    lease: Lease<Change>,
) -> Result<(), StoreError> {
    let ctx = &w.engine;
    let newest = lease.entries().iter().map(|e| e.value.definitions_version).max().unwrap_or(0);
    let catalog = loop {
        match ctx.catalog.at_least(newest, CATCH_UP).await {
            Some(c) if c.broken_on(object).next().is_none() => break c,
            // A webhook of the object stopped loading: leave the changes to whoever can.
            Some(_) => return consumer.release(lease).await,
            None if w.stopping() => return consumer.release(lease).await,
            // Still ours (the heartbeat keeps them): keep them, in order, and wait on.
            None => tracing::warn!(
                object,
                version = newest,
                "definitions as new as these changes have not arrived yet; waiting"
            ),
        }
    };
    let (jobs, notes) = decide_all(&catalog, &ctx.metrics, object, &lease);
    let enqueued = jobs.len();
    // Jobs first, acknowledgement second: a crash between the two reads the changes again
    // and enqueues again (at-least-once, with the same job ids), never zero times. The
    // journey's notes go alongside; they explain, and their loss never holds a delivery.
    let enqueue = async {
        let mut wait = Duration::from_millis(50);
        loop {
            match ctx.store.enqueue(&jobs).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() && wait < Duration::from_secs(5) => {
                    tracing::warn!(object, error = %e, "cannot enqueue jobs yet; trying again");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(e) => return Err(e),
            }
        }
    };
    let (enqueued_ok, noted) = tokio::join!(enqueue, ctx.store.note_changes(&notes));
    enqueued_ok?;
    for job in &jobs {
        ctx.metrics.records_fired(&job.webhook_id, job.record_ids.len() as u64);
    }
    if let Err(error) = noted {
        tracing::warn!(object, %error, "the journey of these changes could not be kept");
    }
    let changes = lease.len();
    let acked = consumer.ack(lease).await?;
    if acked < changes {
        tracing::warn!(
            object,
            changes,
            acked,
            "some changes were taken over meanwhile; their jobs may be queued twice (same job ids)"
        );
    }
    tracing::debug!(object, changes, enqueued, "changes processed");
    Ok(())
}

/// The jobs a lease of changes fires, each change in its own `trigger` span.
fn decide_all(
    catalog: &Catalog,
    metrics: &hookline_telemetry::Metrics,
    object: &str,
    lease: &Lease<Change>,
) -> (Vec<Job>, Vec<JourneyNote>) {
    let mut jobs = Vec::new();
    // Each change's note is written once its jobs are packed (a note names its job).
    let mut decided_changes = Vec::with_capacity(lease.len());
    for entry in lease.entries() {
        let change = &entry.value;
        let Some(new) = parse_fields(&change.new_json) else {
            tracing::error!(object, record_id = %change.record_id, "undecodable change; skipped");
            continue;
        };
        let old = parse_fields(&change.old_json);
        let span = tracing::info_span!(
            "trigger",
            object = %object,
            record_id = %change.record_id,
            version = i64::try_from(change.version).unwrap_or(i64::MAX),
            trace_id = trace::trace_id(&change.traceparent).unwrap_or_default(),
        );
        trace::join(&span, &change.traceparent);
        let _guard = span.enter();
        if change.hops >= MAX_WRITEBACK_HOPS {
            // A chain of write-backs re-triggering webhooks stops here: the record is
            // written, and fires nothing more.
            tracing::warn!(
                object,
                record_id = %change.record_id,
                hops = change.hops,
                origin_webhook = %change.origin_webhook,
                "write-back hop limit reached: this change fires no webhook"
            );
            metrics.writeback_hop_limit(&change.origin_webhook);
            decided_changes.push((change, old, new, Vec::new(), Some("write-back hop limit reached")));
            continue;
        }
        let view = ChangeView {
            old: old.as_ref(),
            new: &new,
            origin_webhook: (!change.origin_webhook.is_empty()).then_some(change.origin_webhook.as_str()),
        };
        let mut decided = Vec::new();
        for wh in catalog.webhooks_on(object) {
            let decision = decide(&wh.def.id, &wh.plan, view);
            tracing::debug!(webhook_id = %wh.def.id, decision = decision.as_str(), "trigger decision");
            let mut fired = None;
            if decision == Decision::Fire {
                let enqueue = tracing::info_span!("enqueue", webhook_id = %wh.def.id);
                let traceparent = trace::start(&enqueue);
                let job_id = job_id(&wh.def.id, object, &change.record_id, change.version);
                fired = Some(job_id.clone());
                let mut job = record_job(wh, job_id, object, &change.record_id, change.version, &new, traceparent);
                job.hops = change.hops;
                jobs.push(job);
            }
            decided.push(journey::Decided {
                webhook: &wh.def.id,
                webhook_version: wh.version,
                plan: &wh.plan,
                decision,
                job_id: fired,
            });
        }
        // An object no webhook listens on has nothing to explain: bulk loads into it pay
        // no journey.
        if !decided.is_empty() {
            decided_changes.push((change, old, new, decided, None));
        }
    }
    let batch_size = |id: &str| catalog.webhooks.get(id).map_or(1, |wh| wh.def.settings.max_batch_size as usize);
    let (jobs, packed_into) = pack(jobs, batch_size);
    let notes = decided_changes
        .into_iter()
        .map(|(change, old, new, mut decided, stopped)| {
            for d in &mut decided {
                if let Some(pack) = d.job_id.as_ref().and_then(|id| packed_into.get(id)) {
                    d.job_id = Some(pack.clone());
                }
            }
            journey::note(change, old.as_ref(), &new, &decided, stopped)
        })
        .collect();
    (jobs, notes)
}

/// The idempotency id of the job a record version makes for a webhook: derived, not
/// random, so a change processed twice (a crash between enqueue and acknowledgement)
/// yields the same `webhook-id` and the target can drop the duplicate.
/// Built by hand, not with `format!`: it runs for every record a webhook fires on.
pub fn job_id(webhook: &str, object: &str, record_id: &str, version: u64) -> String {
    let mut name = Vec::with_capacity(webhook.len() + object.len() + record_id.len() + 24);
    for part in [webhook, object, record_id] {
        name.extend_from_slice(part.as_bytes());
        name.push(b'\n');
    }
    push_decimal(&mut name, version);
    let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &name);
    id.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()).to_owned()
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// The job delivering one record version to webhook `wh`. The record's fields are the
/// entity scripts and templates see, with `id` added when the object has no field of that name.
pub fn record_job(
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
        hops: 0,
        member_traceparents: Vec::new(),
    }
}

fn parse_fields(bytes: &[u8]) -> Option<Fields> {
    if bytes.is_empty() { None } else { serde_json::from_slice(bytes).ok() }
}

#[cfg(test)]
mod tests {
    use super::job_id;

    #[test]
    fn job_ids_are_the_uuid_v5_of_webhook_object_record_and_version() {
        for version in [0, 7, 10, 1234567890, u64::MAX] {
            let name = format!("wh\nsurvey\nS1\n{version}");
            let expected = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes()).to_string();
            assert_eq!(job_id("wh", "survey", "S1", version), expected, "{version}");
        }
    }

    #[test]
    fn job_ids_are_stable_per_webhook_and_record_version() {
        assert_eq!(job_id("wh", "survey", "S1", 2), job_id("wh", "survey", "S1", 2));
        assert_ne!(job_id("wh", "survey", "S1", 2), job_id("wh", "survey", "S1", 3));
        assert_ne!(job_id("wh", "survey", "S1", 2), job_id("other", "survey", "S1", 2));
    }
}
