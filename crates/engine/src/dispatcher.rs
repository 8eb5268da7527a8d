//! The dispatcher delivers jobs. For every active webhook it runs one worker that holds
//! permits of the webhook's cluster-wide concurrency limit *before* it takes jobs from the
//! webhook's queue, so a job is never read only to wait (and be reclaimed as if its node
//! had died). Each delivery builds and authenticates the request, sends it, records the
//! attempt and enqueues its follow-up — retry, dead letter, write-back — in one atomic
//! step with the acknowledgement.
//!
//! Webhooks are served by independent workers, one queue each, so a slow or failing webhook
//! holds only its own permits and never starves the others.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use hookline_outbound::{OutboundRequest, OutboundResponse, Verdict, classify, redact_headers};
use hookline_proto::{Attempt, Header, HttpRequest, HttpResponse, Job, Outcome, WritebackJob};
use hookline_store::{Entry, FollowUp, now_ms};
use rand::Rng;
use tokio::sync::{Semaphore, watch};
use tracing::Instrument;

use crate::EngineContext;
use crate::catalog::{Catalog, CompiledWebhook};
use crate::messages::CatalogChanged;
use crate::render::{build_request, display_url};
use crate::trace;

/// Bodies kept in attempt records are cut at this size.
const MAX_RECORDED_BODY: usize = 64 * 1024;
/// Jobs taken from a queue in one read, at most.
const MAX_READ: usize = 64;
/// A job handed out this many times without finishing (its nodes kept dying mid-delivery)
/// is dead-lettered instead of delivered again.
const MAX_DELIVERIES: u32 = 5;
/// A permit's lease. A delivery renews it every third of the lease while it runs, so a
/// dead node's permits come back within one lease.
const PERMIT_LEASE: Duration = Duration::from_secs(10);

/// A running worker: its webhook version, and the switch that stops it.
struct Worker {
    version: u64,
    stop: watch::Sender<bool>,
}

pub struct Dispatcher {
    ctx: EngineContext,
    workers: HashMap<String, Worker>,
}

impl Dispatcher {
    pub fn new(ctx: EngineContext) -> Self {
        Dispatcher { ctx, workers: HashMap::new() }
    }

    fn sync_workers(&mut self, catalog: &Catalog) {
        // Stop workers of deleted, paused or changed webhooks; a changed one restarts below.
        self.workers.retain(|id, w| {
            let keep = catalog.webhooks.get(id).is_some_and(|wh| !wh.paused && wh.version == w.version);
            if !keep {
                let _ = w.stop.send(true);
            }
            keep
        });
        for (id, wh) in &catalog.webhooks {
            if wh.paused || self.workers.contains_key(id) {
                continue;
            }
            let (stop, stopped) = watch::channel(false);
            actix::spawn(run_worker(self.ctx.clone(), wh.clone(), stopped));
            self.workers.insert(id.clone(), Worker { version: wh.version, stop });
        }
    }
}

impl Actor for Dispatcher {
    type Context = Context<Self>;

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        for w in self.workers.values() {
            let _ = w.stop.send(true);
        }
    }
}

impl Handler<CatalogChanged> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: CatalogChanged, _ctx: &mut Self::Context) {
        self.sync_workers(&msg.catalog);
    }
}

fn stopping(ctx: &EngineContext, stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow() || *ctx.shutdown.borrow()
}

/// Waits `d`, or less if the worker is told to stop.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) {
    let _ = tokio::time::timeout(d, stop.changed()).await;
}

/// One webhook's delivery loop.
async fn run_worker(ctx: EngineContext, wh: Arc<CompiledWebhook>, mut stop: watch::Receiver<bool>) {
    let _running = ctx.drain.guard();
    let id = wh.def.id.clone();
    let limit = wh.def.settings.max_concurrency as usize;
    let timeout = wh.def.settings.timeout.0;
    let lease = PERMIT_LEASE;
    // A job idle this long was taken by a node that died: a live node finishes a delivery
    // within the request timeout plus its scripts' time limits.
    let reclaim_after = timeout + Duration::from_secs(15);
    let slots = Arc::new(Semaphore::new(limit));
    // Each permit is one call; a call carries up to `batch_size` jobs.
    let batch_size = wh.def.settings.max_batch_size.max(1) as usize;
    let linger = Duration::from_millis(wh.def.settings.batch_linger_ms);
    let mut last_claim: Option<Instant> = None;
    tracing::info!(webhook_id = %id, version = wh.version, "dispatcher worker started");

    while !stopping(&ctx, &stop) {
        // Local slots first (never more in flight here than the limit), then cluster permits.
        let Ok(first) = slots.clone().acquire_owned().await else { break };
        let mut local = vec![first];
        while local.len() < MAX_READ {
            match slots.clone().try_acquire_owned() {
                Ok(p) => local.push(p),
                Err(_) => break,
            }
        }
        let mut permits = Vec::with_capacity(local.len());
        for slot in local {
            let holder = format!("{}:{}", ctx.node_id, uuid::Uuid::new_v4());
            match ctx.store.acquire_permit(&id, &holder, limit as u32, lease).await {
                Ok(true) => permits.push((slot, holder)),
                Ok(false) => break,
                Err(error) => {
                    tracing::warn!(webhook_id = %id, %error, "cannot take a permit");
                    break;
                }
            }
        }
        if permits.is_empty() {
            // Every permit is held elsewhere in the cluster: look again shortly.
            let wait = rand::rng().random_range(20..60);
            pause(&mut stop, Duration::from_millis(wait)).await;
            continue;
        }

        let now = now_ms();
        let next_due = match ctx.store.promote_due(&id, now).await {
            Ok(n) => n,
            Err(error) => {
                tracing::warn!(webhook_id = %id, %error, "cannot move due retries");
                release_all(&ctx, &id, permits).await;
                pause(&mut stop, Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut entries = Vec::new();
        if last_claim.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
            last_claim = Some(Instant::now());
            match ctx.store.claim_jobs(&id, &ctx.node_id, reclaim_after, permits.len() * batch_size).await {
                Ok(claimed) => {
                    if !claimed.is_empty() {
                        tracing::info!(webhook_id = %id, count = claimed.len(), "took over jobs of a stopped consumer");
                    }
                    entries = claimed;
                }
                Err(error) => tracing::warn!(webhook_id = %id, %error, "cannot claim stale jobs"),
            }
        }
        if entries.is_empty() {
            let block = next_due
                .map(|due| Duration::from_millis((due - now).clamp(1, 1000) as u64))
                .unwrap_or(Duration::from_secs(1));
            match ctx.store.read_jobs(&id, &ctx.node_id, permits.len() * batch_size, block).await {
                Ok(read) => entries = read,
                Err(error) => {
                    tracing::warn!(webhook_id = %id, %error, "cannot read jobs");
                    release_all(&ctx, &id, permits).await;
                    pause(&mut stop, Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        // Bulk calls: wait up to the linger time for the batches to fill.
        let want = permits.len() * batch_size;
        if batch_size > 1 && !entries.is_empty() && entries.len() < want {
            let until = Instant::now() + linger;
            while entries.len() < want && !stopping(&ctx, &stop) {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match ctx.store.read_jobs(&id, &ctx.node_id, want - entries.len(), left).await {
                    Ok(more) if more.is_empty() => break,
                    Ok(more) => entries.extend(more),
                    Err(error) => {
                        tracing::warn!(webhook_id = %id, %error, "cannot read jobs");
                        break;
                    }
                }
            }
        }
        if stopping(&ctx, &stop) && !entries.is_empty() {
            // Told to stop while reading (paused, changed, shutting down): hand the jobs back.
            if let Err(error) = ctx.store.requeue_jobs(&id, &entries).await {
                tracing::warn!(webhook_id = %id, %error, "cannot requeue jobs; they are reclaimed after their idle time");
            }
            release_all(&ctx, &id, permits).await;
            break;
        }
        let mut permits = permits.into_iter();
        for batch in batches(entries, batch_size) {
            // Reads never return more entries than the permits' batches hold.
            let Some((slot, holder)) = permits.next() else { break };
            let (ctx, wh) = (ctx.clone(), wh.clone());
            actix::spawn(async move {
                let renew = async {
                    loop {
                        tokio::time::sleep(lease / 3).await;
                        let _ = ctx.store.acquire_permit(&wh.def.id, &holder, limit as u32, lease).await;
                    }
                };
                let limit = wh.def.settings.max_concurrency as u64;
                ctx.metrics.in_flight(&wh.def.id, 1, limit);
                tokio::select! {
                    _ = deliver(&ctx, &wh, batch) => {}
                    _ = renew => {}
                }
                ctx.metrics.in_flight(&wh.def.id, -1, limit);
                if let Err(error) = ctx.store.release_permit(&wh.def.id, &holder).await {
                    tracing::warn!(webhook_id = %wh.def.id, %error, "cannot release a permit; it expires with its lease");
                }
                drop(slot);
            });
        }
        release_all(&ctx, &id, permits.collect()).await;
    }
    // Let in-flight deliveries finish before reporting the worker stopped.
    let _ = slots.acquire_many(limit as u32).await;
    tracing::info!(webhook_id = %id, "dispatcher worker stopped");
}

async fn release_all(ctx: &EngineContext, webhook: &str, permits: Vec<(tokio::sync::OwnedSemaphorePermit, String)>) {
    for (_slot, holder) in permits {
        let _ = ctx.store.release_permit(webhook, &holder).await;
    }
}

fn headers(list: &[(String, String)]) -> Vec<Header> {
    list.iter().map(|(name, value)| Header { name: name.clone(), value: value.clone() }).collect()
}

fn cut(body: &[u8]) -> (Vec<u8>, bool) {
    if body.len() > MAX_RECORDED_BODY { (body[..MAX_RECORDED_BODY].to_vec(), true) } else { (body.to_vec(), false) }
}

/// Groups entries into calls of up to `size` jobs. A job that already holds several
/// records (a retried or redriven batch) or has been attempted before travels alone, so
/// its attempt count and membership stay as they were.
pub fn batches(entries: Vec<Entry<Job>>, size: usize) -> Vec<Vec<Entry<Job>>> {
    let mut out: Vec<Vec<Entry<Job>>> = Vec::new();
    let mut open: Vec<Entry<Job>> = Vec::new();
    for e in entries {
        if size <= 1 || e.value.record_ids.len() > 1 || e.value.attempts > 0 {
            out.push(vec![e]);
            continue;
        }
        open.push(e);
        if open.len() == size {
            out.push(std::mem::take(&mut open));
        }
    }
    if !open.is_empty() {
        out.push(open);
    }
    out
}

/// One job standing for a whole batch: every record, one idempotency id derived from the
/// members' ids (so the same batch has the same id on every attempt).
pub fn combine(members: &[Entry<Job>]) -> Job {
    if let [one] = members {
        return one.value.clone();
    }
    let first = &members[0].value;
    let mut ids: Vec<&str> = members.iter().map(|e| e.value.job_id.as_str()).collect();
    ids.sort_unstable();
    let mut entities = Vec::new();
    for m in members {
        if let Ok(serde_json::Value::Array(items)) = serde_json::from_slice(&m.value.entities_json) {
            entities.extend(items);
        }
    }
    Job {
        job_id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, ids.join("\n").as_bytes()).to_string(),
        webhook_id: first.webhook_id.clone(),
        webhook_version: first.webhook_version,
        object: first.object.clone(),
        record_ids: members.iter().flat_map(|e| e.value.record_ids.clone()).collect(),
        record_versions: members.iter().flat_map(|e| e.value.record_versions.clone()).collect(),
        entities_json: serde_json::to_vec(&entities).unwrap_or_default(),
        attempts: 0,
        created_at_ms: members.iter().map(|e| e.value.created_at_ms).min().unwrap_or_default(),
        traceparent: first.traceparent.clone(),
    }
}

/// Dead-letters a job that keeps being taken over, with an attempt saying why.
async fn give_up(ctx: &EngineContext, wh: &CompiledWebhook, entries: Vec<Entry<Job>>) {
    let job = combine(&entries);
    let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
    let deliveries = entries.iter().map(|e| e.deliveries).max().unwrap_or(0);
    let error =
        format!("handed out {deliveries} times without finishing (the nodes delivering it stopped); dead-lettered");
    tracing::warn!(webhook_id = %wh.def.id, job_id = %job.job_id, deliveries, "{error}");
    let attempt = Attempt {
        attempt_id: uuid::Uuid::now_v7().to_string(),
        webhook_id: wh.def.id.clone(),
        webhook_version: wh.version,
        job_id: job.job_id.clone(),
        record_ids: job.record_ids.clone(),
        number: job.attempts + 1,
        node_id: ctx.node_id.clone(),
        started_at_ms: now_ms(),
        error: error.clone(),
        outcome: Outcome::Failed as i32,
        traceparent: job.traceparent.clone(),
        ..Default::default()
    };
    let follow = FollowUp { dead_letter: Some((job, error)), ..Default::default() };
    if let Err(e) = ctx.store.complete_batch(&wh.def.id, &ids, &attempt, follow).await {
        tracing::warn!(error = %e, "cannot dead-letter the job; it stays pending");
    }
    ctx.metrics.dead_lettered(&wh.def.id);
}

/// Waits for the webhook's rate limit (shared by every node) to allow one more call.
async fn rate_gate(ctx: &EngineContext, wh: &CompiledWebhook) {
    let Some(limit) = wh.rate else { return };
    loop {
        match ctx.store.rate_wait(&wh.def.id, limit.interval(), 0).await {
            Ok(wait) if wait.is_zero() => return,
            Ok(wait) => tokio::time::sleep(wait).await,
            Err(error) => {
                // Better late than over the limit: wait and ask again.
                tracing::warn!(%error, "cannot check the rate limit; waiting");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn send(
    ctx: &EngineContext,
    wh: &CompiledWebhook,
    req: &crate::render::BuiltRequest,
) -> Result<OutboundResponse, hookline_outbound::SendError> {
    rate_gate(ctx, wh).await;
    ctx.outbound
        .send(OutboundRequest {
            method: req.method.clone(),
            url: req.url.clone(),
            headers: req.headers.clone(),
            body: req.body.clone(),
            timeout: wh.def.settings.timeout.0,
        })
        .await
}

/// Delivers one job once and records what happened. Never panics on the job's content.
async fn deliver(ctx: &EngineContext, wh: &CompiledWebhook, entries: Vec<Entry<Job>>) {
    if entries.iter().any(|e| e.deliveries > MAX_DELIVERIES) {
        return give_up(ctx, wh, entries).await;
    }
    let job = combine(&entries);
    let entry_ids: Vec<String> = entries.into_iter().map(|e| e.id).collect();
    let number = job.attempts + 1;
    let span = tracing::info_span!(
        "attempt",
        webhook_id = %wh.def.id,
        job_id = %job.job_id,
        record_ids = ?job.record_ids,
        attempt = number,
        trace_id = trace::trace_id(&job.traceparent).unwrap_or_default(),
        outcome = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        http.request.method = %wh.def.request.method.to_ascii_uppercase(),
        url.full = tracing::field::Empty,
        error.type = tracing::field::Empty,
        node_id = %ctx.node_id,
    );
    trace::resume(&span, &job.traceparent);
    async move {
        let started = Instant::now();
        let started_ms = now_ms();
        let entities: serde_json::Value =
            serde_json::from_slice(&job.entities_json).unwrap_or_else(|_| serde_json::Value::Array(vec![]));

        let mut attempt = Attempt {
            attempt_id: uuid::Uuid::now_v7().to_string(),
            webhook_id: wh.def.id.clone(),
            webhook_version: wh.version,
            job_id: job.job_id.clone(),
            record_ids: job.record_ids.clone(),
            number,
            node_id: ctx.node_id.clone(),
            started_at_ms: started_ms,
            traceparent: job.traceparent.clone(),
            ..Default::default()
        };

        let mut request_body = Vec::new();
        let (verdict, response) = match build_request(&ctx.scripts, Some(ctx), wh, &job, &entities).await {
            Err(e) => {
                attempt.error = e.to_string();
                if e.step.ends_with("script") {
                    ctx.metrics.script_error(&wh.def.id);
                }
                tracing::Span::current().record("error.type", e.step);
                (if e.retryable { Verdict::Retry { after: None } } else { Verdict::Fail }, None)
            }
            Ok(mut req) => {
                tracing::Span::current().record("url.full", display_url(&req.url));
                let mut result = send(ctx, wh, &req).await;
                // A refused OAuth token: fetch another once (unless another node already
                // did) and send again, within this same attempt.
                if let (Ok(resp), Some(used)) = (&result, req.oauth_token.clone())
                    && resp.status == 401
                {
                    match crate::oauth::bearer(ctx, wh, Some(&used)).await {
                        Ok(fresh) => {
                            tracing::info!("target refused the OAuth token; sending again with a fresh one");
                            req.set_bearer(&fresh);
                            result = send(ctx, wh, &req).await;
                        }
                        Err(e) => tracing::warn!(error = %e, "refreshing the OAuth token after a 401 failed"),
                    }
                }
                let secret_values: Vec<&str> = req.secret_values.iter().map(String::as_str).collect();
                let secret_names: Vec<&str> = req.secret_headers.iter().map(String::as_str).collect();
                let (body, truncated) = cut(&req.body);
                attempt.request = Some(HttpRequest {
                    method: req.method.clone(),
                    url: display_url(&req.url),
                    headers: headers(&redact_headers(&req.headers, &secret_names, &secret_values)),
                    body,
                    body_truncated: truncated,
                });
                request_body = req.body;
                let verdict = classify(&result);
                let response = match result {
                    Ok(resp) => {
                        tracing::Span::current().record("http.response.status_code", resp.status);
                        let (body, truncated) = cut(&resp.body);
                        attempt.response = Some(HttpResponse {
                            status: resp.status as u32,
                            headers: headers(&redact_headers(&resp.headers, &secret_names, &secret_values)),
                            body,
                            body_truncated: truncated || resp.body_truncated,
                        });
                        if verdict != Verdict::Success {
                            attempt.error = format!("target answered {}", resp.status);
                        }
                        Some(resp)
                    }
                    Err(e) => {
                        tracing::Span::current().record("error.type", e.kind());
                        attempt.error = e.to_string();
                        None::<OutboundResponse>
                    }
                };
                (verdict, response)
            }
        };
        attempt.duration_ms = started.elapsed().as_millis() as u64;

        let mut follow = FollowUp::default();
        let outcome = match verdict {
            Verdict::Success => Outcome::Success,
            Verdict::Retry { after } if !wh.retry.exhausted(number) => {
                let due =
                    started_ms + attempt.duration_ms as i64 + wh.retry.delay(number + 1, after).as_millis() as i64;
                attempt.next_attempt_at_ms = due;
                follow.retry = Some((Job { attempts: number, ..job.clone() }, due));
                Outcome::RetryScheduled
            }
            Verdict::Retry { .. } => Outcome::Exhausted,
            Verdict::Fail => Outcome::Failed,
        };
        attempt.outcome = outcome as i32;
        if matches!(outcome, Outcome::Exhausted | Outcome::Failed) {
            follow.dead_letter = Some((Job { attempts: number, ..job.clone() }, attempt.error.clone()));
        }
        if outcome.is_final() && wh.response_script.is_some() {
            attempt.writeback_status = "pending".into();
            follow.writeback = Some(WritebackJob {
                job_id: job.job_id.clone(),
                webhook_id: wh.def.id.clone(),
                webhook_version: wh.version,
                attempt_id: attempt.attempt_id.clone(),
                record_ids: job.record_ids.clone(),
                entities_json: job.entities_json.clone(),
                request_body,
                status: response.as_ref().map(|r| r.status as u32).unwrap_or(0),
                response_headers: response.as_ref().map(|r| headers(&r.headers)).unwrap_or_default(),
                response_body: response.map(|r| r.body).unwrap_or_default(),
                traceparent: job.traceparent.clone(),
            });
        }
        tracing::Span::current().record("outcome", outcome.as_str());
        ctx.metrics.attempt(&wh.def.id, outcome.as_str(), started.elapsed());
        if follow.retry.is_some() {
            ctx.metrics.retry_scheduled(&wh.def.id);
        }
        if follow.dead_letter.is_some() {
            ctx.metrics.dead_lettered(&wh.def.id);
        }
        tracing::info!(
            attempt_id = %attempt.attempt_id,
            duration_ms = attempt.duration_ms,
            error = %attempt.error,
            "attempt {}",
            outcome.as_str()
        );

        // The attempt, its follow-up and the ack are one step; if the store is briefly
        // unreachable, try again before leaving the job pending for a later reclaim.
        let mut wait = Duration::from_millis(100);
        for _ in 0..6 {
            match ctx.store.complete_batch(&wh.def.id, &entry_ids, &attempt, follow.clone()).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(%error, "cannot record the attempt; retrying");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        }
        tracing::error!("attempt not recorded; the job stays pending and will be delivered again");
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::{batches, combine, cut};
    use hookline_proto::Job;
    use hookline_store::Entry;

    fn entry(n: usize, records: usize, attempts: u32) -> Entry<Job> {
        let ids: Vec<String> = (0..records).map(|r| format!("r{n}-{r}")).collect();
        let entities: Vec<serde_json::Value> = ids.iter().map(|id| serde_json::json!({"id": id})).collect();
        Entry {
            id: format!("{n}-0"),
            value: Job {
                job_id: format!("job{n}"),
                record_ids: ids,
                entities_json: serde_json::to_vec(&entities).unwrap(),
                attempts,
                ..Default::default()
            },
            redriven: false,
            deliveries: 1,
        }
    }

    #[test]
    fn fresh_jobs_are_grouped_and_batches_travel_alone() {
        let entries =
            vec![entry(1, 1, 0), entry(2, 1, 0), entry(3, 3, 1), entry(4, 1, 0), entry(5, 1, 2), entry(6, 1, 0)];
        let sizes: Vec<Vec<String>> =
            batches(entries, 2).iter().map(|b| b.iter().map(|e| e.value.job_id.clone()).collect()).collect();
        assert_eq!(sizes, [vec!["job1", "job2"], vec!["job3"], vec!["job5"], vec!["job4", "job6"]]);
        assert_eq!(batches(vec![entry(1, 1, 0), entry(2, 1, 0)], 1).len(), 2);
    }

    #[test]
    fn a_combined_job_holds_every_record_under_a_stable_id() {
        let a = combine(&[entry(1, 1, 0), entry(2, 1, 0)]);
        let b = combine(&[entry(2, 1, 0), entry(1, 1, 0)]);
        assert_eq!(a.job_id, b.job_id, "the same members give the same idempotency id");
        assert_eq!(a.record_ids, ["r1-0", "r2-0"]);
        let entities: serde_json::Value = serde_json::from_slice(&a.entities_json).unwrap();
        assert_eq!(entities, serde_json::json!([{"id": "r1-0"}, {"id": "r2-0"}]));
        assert_eq!(combine(&[entry(7, 1, 0)]).job_id, "job7");
    }

    #[test]
    fn recorded_bodies_are_cut() {
        let (b, t) = cut(&vec![b'x'; super::MAX_RECORDED_BODY + 1]);
        assert_eq!(b.len(), super::MAX_RECORDED_BODY);
        assert!(t);
        assert_eq!(cut(b"ok"), (b"ok".to_vec(), false));
    }
}
