//! The scheduler runs scheduled webhooks (`trigger.schedule`). Every coordinator node keeps
//! one loop per active scheduled webhook, and they agree through the store alone:
//!
//! - a tick is run by whichever node takes the webhook's `schedule` lock, and the run's
//!   progress is stored under the same webhook, so exactly one node runs each tick: the
//!   others find the lock taken, then the tick done;
//! - ticks missed while no node ran (or while the webhook was paused) collapse into one run,
//!   for the latest missed tick, as soon as a node comes back;
//! - a node that dies mid-run leaves its progress behind; once its lock expires the next
//!   node resumes from the last page it stored (that page may be sent twice, with the same
//!   job ids, so targets see the same `webhook-id`).
//!
//! A run pages through the object's write index ([`Store::records_written`]), not through
//! every record: `select: changed` starts where the previous tick stopped, `select: all` at
//! the start. Records whose latest write is this webhook's own write-back are not "changed"
//! for it. Every matching record becomes one job on the webhook's queue, and the dispatcher
//! delivers them in calls of up to `max_batch_size` under the webhook's limits, like jobs of
//! real-time triggers.
//!
//! [`Store::records_written`]: hookline_store::Store::records_written

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use hookline_model::schedule::{Schedule, Select};
use hookline_proto::Job;
use hookline_store::{IndexedRecord, Store, StoreError, now_ms};
use serde::{Deserialize, Serialize};

use crate::EngineContext;
use crate::catalog::CompiledWebhook;
use crate::messages::CatalogChanged;
use crate::trace;
use crate::trigger::record_job;
use crate::workers::{Start, WorkerCtx, WorkerSet};

/// Store value and lock name, under the webhook's keys.
const STATE: &str = "schedule";
/// A run renews its lock after every page; a node that died lets go after this long.
const LOCK_TTL: Duration = Duration::from_secs(30);
/// The stored progress does not expire in practice (deleting the webhook drops it).
const STATE_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Records read from the write index at a time.
const PAGE: usize = 500;
/// The longest a loop sleeps before looking again (clock changes, a peer's progress).
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// A scheduled webhook's progress, shared by every node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Progress {
    /// The data object the positions below belong to: a webhook moved to another object
    /// starts afresh there.
    object: String,
    /// The latest tick run to its end (Unix ms); the next tick comes after it.
    done_tick: i64,
    /// `select: changed`: records are sent up to this write position.
    sent_to: u64,
    /// A run that has not finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    running: Option<Run>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Run {
    tick: i64,
    /// The write position the run started after.
    from: u64,
    /// The write position the run has enqueued up to.
    at: u64,
    /// Where the run stops even if writes keep coming: past the object's write position
    /// when it started by as much again (at least a page), so records rewritten while the
    /// run pages are still met at their new position, yet a busy object cannot keep one run
    /// going for ever.
    stop_at: u64,
    /// Jobs enqueued so far.
    records: u64,
}

pub struct Scheduler {
    ctx: EngineContext,
    workers: WorkerSet,
    start: Start,
}

impl Scheduler {
    pub fn new(ctx: EngineContext) -> Self {
        let start: Start = Arc::new(|w| Box::pin(run_loop(w)));
        Scheduler { ctx, workers: WorkerSet::new("scheduler"), start }
    }
}

/// Whether `wh` runs on a schedule now.
fn scheduled(wh: &CompiledWebhook) -> bool {
    !wh.paused && wh.plan.schedule.is_some()
}

impl Actor for Scheduler {
    type Context = Context<Self>;

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.workers.stop_all();
    }
}

impl Handler<CatalogChanged> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: CatalogChanged, _ctx: &mut Self::Context) {
        let wanted = msg.catalog.webhooks.values().filter(|wh| scheduled(wh)).map(|wh| wh.def.id.clone());
        self.workers.sync(&self.ctx, wanted, &self.start);
    }
}

/// One scheduled webhook's loop: sleeps until its next tick, then tries to run it. It runs
/// the webhook's current definition, so a changed schedule takes effect at the next look.
async fn run_loop(w: WorkerCtx) {
    let ctx = w.engine.clone();
    // Unique per loop: a lock left by an earlier loop of this node is not this one's.
    let holder = format!("{}:{}", ctx.node_id, uuid::Uuid::new_v4());
    let mut view = ctx.catalog.clone();
    tracing::info!(webhook_id = %w.key, "schedule started");
    while !w.stopping() {
        let Some(wh) = ctx.catalog.current().webhooks.get(&w.key).filter(|wh| scheduled(wh)).cloned() else { break };
        let Some(schedule) = wh.plan.schedule.clone() else { break };
        let wait = match step(&ctx, &wh, &schedule, &holder, &w).await {
            Ok(Some(next)) => Duration::from_millis(next.saturating_sub(now_ms()).max(0) as u64),
            Ok(None) => MAX_SLEEP,
            Err(error) => {
                tracing::warn!(webhook_id = %wh.def.id, %error, "scheduled run failed; trying again");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait.min(MAX_SLEEP)) => {}
            _ = view.changed() => {}
            _ = w.stopped() => {}
        }
    }
    // Whatever this loop held is free for a peer at once, not only after the lock expires.
    let _ = ctx.store.unlock(&w.key, STATE, &holder).await;
}

async fn load(store: &dyn Store, webhook: &str) -> Result<Option<Progress>, StoreError> {
    let Some(bytes) = store.get_value(webhook, STATE).await? else { return Ok(None) };
    match serde_json::from_slice(&bytes) {
        Ok(p) => Ok(Some(p)),
        Err(e) => {
            tracing::error!(webhook_id = webhook, error = %e, "unreadable schedule progress; starting afresh");
            Ok(None)
        }
    }
}

/// Saves `progress` if this loop still holds the webhook's schedule lock; false when it lost
/// it (a peer took over after this node stalled, or the webhook was deleted).
async fn save(ctx: &EngineContext, webhook: &str, holder: &str, progress: &Progress) -> Result<bool, StoreError> {
    let bytes = serde_json::to_vec(progress).map_err(|e| StoreError::Backend(e.to_string()))?;
    ctx.store.set_value_locked(webhook, STATE, &bytes, STATE_TTL, STATE, holder).await
}

/// Whether a record listed for webhook `id` in a `changed` run from position `from` is the
/// webhook's own write-back and nothing else: its latest write is that write-back, and no
/// other writer touched it after the previous run looked.
fn only_own_writeback(indexed: &IndexedRecord, id: &str, from: u64) -> bool {
    indexed.origin_webhook == id && indexed.other_position <= from
}

/// Runs the due tick if there is one and this node gets it. Returns when to look again
/// (Unix ms), None when the schedule has no tick left.
async fn step(
    ctx: &EngineContext,
    wh: &CompiledWebhook,
    schedule: &Schedule,
    holder: &str,
    w: &WorkerCtx,
) -> Result<Option<i64>, StoreError> {
    let id = wh.def.id.as_str();
    let now = now_ms();
    // Lock-free look first: most wake-ups find nothing to do.
    if let Some(p) = load(ctx.store.as_ref(), id).await?
        && p.running.is_none()
        && schedule.due(p.done_tick, now).is_none()
    {
        return Ok(schedule.next_after(p.done_tick));
    }
    if !ctx.store.try_lock(id, STATE, holder, LOCK_TTL).await? {
        // A peer runs it (or has just started the schedule); look again shortly.
        return Ok(Some(now + 1_000));
    }
    let result = run_locked(ctx, wh, schedule, holder, w).await;
    let _ = ctx.store.unlock(id, STATE, holder).await;
    result
}

/// [`step`] with the lock held: starts, resumes or skips the run, as the stored progress says.
async fn run_locked(
    ctx: &EngineContext,
    wh: &CompiledWebhook,
    schedule: &Schedule,
    holder: &str,
    w: &WorkerCtx,
) -> Result<Option<i64>, StoreError> {
    let id = wh.def.id.as_str();
    let now = now_ms();
    let progress = load(ctx.store.as_ref(), id).await?.filter(|p| p.object == wh.def.object);
    let Some(mut progress) = progress else {
        // First sight of this schedule (on this object) anywhere: ticks count from now. The
        // first `changed` run sends every matching record (nothing was sent before it).
        let progress = Progress { object: wh.def.object.clone(), done_tick: now, sent_to: 0, running: None };
        save(ctx, id, holder, &progress).await?;
        tracing::info!(webhook_id = id, object = %wh.def.object, "schedule begins");
        return Ok(schedule.next_after(now));
    };
    let mut run = match progress.running {
        Some(run) => {
            tracing::info!(webhook_id = id, tick = run.tick, at = run.at, "resuming an unfinished scheduled run");
            run
        }
        None => match schedule.due(progress.done_tick, now) {
            None => return Ok(schedule.next_after(progress.done_tick)),
            Some(tick) => {
                let from = match schedule.select {
                    Select::Changed => progress.sent_to,
                    Select::All => 0,
                };
                let written = ctx.store.write_position(&wh.def.object).await?;
                let stop_at = written.saturating_add(written.saturating_sub(from).max(PAGE as u64));
                Run { tick, from, at: from, stop_at, records: 0 }
            }
        },
    };

    let span = tracing::info_span!(
        "schedule",
        webhook_id = id,
        object = %wh.def.object,
        tick_ms = run.tick,
        select = schedule.select.as_str(),
        records = tracing::field::Empty,
    );
    let traceparent = trace::start(&span);
    let started = std::time::Instant::now();
    loop {
        if w.stopping() {
            // Leave the progress for whichever node runs next.
            progress.running = Some(run);
            save(ctx, id, holder, &progress).await?;
            return Ok(None);
        }
        let page = ctx.store.records_written(&wh.def.object, run.at, PAGE).await?;
        let more = page.len() == PAGE;
        let mut jobs: Vec<Job> = Vec::new();
        for indexed in &page {
            run.at = run.at.max(indexed.position);
            if schedule.select == Select::Changed && only_own_writeback(indexed, id, run.from) {
                continue;
            }
            let record = &indexed.record;
            if wh.plan.condition.as_ref().is_some_and(|c| !c.eval(&record.fields, None)) {
                continue;
            }
            let job_id = tick_job_id(id, &wh.def.object, &record.id, record.version, run.tick);
            jobs.push(record_job(
                wh,
                job_id,
                &wh.def.object,
                &record.id,
                record.version,
                &record.fields,
                traceparent.clone(),
            ));
        }
        ctx.store.enqueue(&jobs).await?;
        run.records += jobs.len() as u64;
        if !more || run.at >= run.stop_at {
            break;
        }
        progress.running = Some(run);
        // Taking the lock again renews it (it is this loop's); the save is fenced by it.
        let renewed = ctx.store.try_lock(id, STATE, holder, LOCK_TTL).await?;
        if !renewed || !save(ctx, id, holder, &progress).await? {
            tracing::warn!(webhook_id = id, "lost the schedule lock mid-run; a peer carries on");
            return Ok(Some(now_ms() + 1_000));
        }
    }
    progress = Progress {
        object: wh.def.object.clone(),
        done_tick: run.tick,
        sent_to: if schedule.select == Select::Changed { run.at } else { progress.sent_to },
        running: None,
    };
    if !save(ctx, id, holder, &progress).await? {
        tracing::warn!(webhook_id = id, tick_ms = run.tick, "lost the schedule lock before the run was stored");
        return Ok(Some(now_ms() + 1_000));
    }
    span.record("records", i64::try_from(run.records).unwrap_or(i64::MAX));
    ctx.metrics.schedule_run(id, run.records);
    tracing::info!(
        parent: &span,
        webhook_id = id,
        tick_ms = run.tick,
        records = run.records,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "scheduled run done"
    );
    Ok(schedule.next_after(run.tick))
}

/// A schedule as an operator sees it (`schedule_status` of `GET /v1/webhooks/{id}`), times in
/// the schedule's time zone: the last tick run to its end, the next one, and a run in
/// progress with the jobs it enqueued so far. None before any node picked the schedule up.
pub async fn status(
    store: &dyn Store,
    webhook: &str,
    object: &str,
    schedule: &Schedule,
) -> Result<Option<serde_json::Value>, StoreError> {
    // Moved to another object: the schedule begins afresh there at its next look.
    let Some(progress) = load(store, webhook).await?.filter(|p| p.object == object) else { return Ok(None) };
    let mut status = serde_json::json!({
        "time_zone": schedule.time_zone(),
        "select": schedule.select.as_str(),
        "last_tick": schedule.local_time(progress.done_tick),
        "next_tick": schedule.next_after(progress.done_tick).map(|t| schedule.local_time(t)),
    });
    if let Some(run) = progress.running {
        status["running"] = serde_json::json!({"tick": schedule.local_time(run.tick), "records": run.records});
    }
    Ok(Some(status))
}

/// The idempotency id of the job a tick makes for a record version: the same when a run is
/// resumed after its node died, different on the next tick (`select: all` sends a record
/// again, and the target should not take it for a duplicate).
pub fn tick_job_id(webhook: &str, object: &str, record_id: &str, version: u64, tick_ms: i64) -> String {
    let name = format!("{webhook}\n{object}\n{record_id}\n{version}\n@{tick_ms}");
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_job_ids_are_stable_per_tick() {
        assert_eq!(tick_job_id("wh", "o", "r", 1, 1000), tick_job_id("wh", "o", "r", 1, 1000));
        assert_ne!(tick_job_id("wh", "o", "r", 1, 1000), tick_job_id("wh", "o", "r", 1, 2000));
        assert_ne!(tick_job_id("wh", "o", "r", 1, 1000), crate::trigger::job_id("wh", "o", "r", 1));
    }

    #[test]
    fn own_writebacks_hide_only_changes_already_looked_at() {
        let indexed = |origin: &str, other: u64| IndexedRecord {
            position: 20,
            record: hookline_model::Record { id: "r".into(), version: 3, fields: Default::default() },
            origin_webhook: origin.into(),
            other_position: other,
        };
        // The previous run went up to 10: a write-back on top of a change it saw is nothing new.
        assert!(only_own_writeback(&indexed("wh", 8), "wh", 10));
        // A user's change at 15, made while the call was in flight, is not hidden by the
        // write-back that followed it.
        assert!(!only_own_writeback(&indexed("wh", 15), "wh", 10));
        // Another webhook's write-back is a change like any other.
        assert!(!only_own_writeback(&indexed("other", 8), "wh", 10));
        assert!(!only_own_writeback(&indexed("", 8), "wh", 10));
    }

    #[test]
    fn progress_round_trips() {
        let run = Run { tick: 9, from: 1, at: 3, stop_at: 600, records: 2 };
        let p = Progress { object: "item".into(), done_tick: 5, sent_to: 7, running: Some(run) };
        let back: Progress = serde_json::from_slice(&serde_json::to_vec(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }
}
