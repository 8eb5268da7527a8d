//! The dispatcher delivers jobs. For every active webhook it runs one worker, which loops:
//!
//! 1. one store step ([`Store::take`]) gives back permits it should not keep, takes more
//!    within the webhook's cluster-wide limit and its fair share, takes rate tokens, and
//!    reads exactly the entries those permits and tokens can carry (taking over a dead
//!    node's entries first, now and then);
//! 2. the entries are grouped into calls — solo jobs alone, fresh ones up to
//!    `max_batch_size` (waiting up to `batch_linger_ms` for a partly filled call) — and
//!    each call is delivered on its own task under one permit ([`deliver`]);
//! 3. with nothing to read it waits for a job to arrive, a retry to fall due, a rate token
//!    or a permit, without holding entries.
//!
//! One heartbeat per worker ([`hookline_store::queue::Consumer`], [`Store::renew`]) keeps
//! its entries and its permits alive however long calls take or wait; completions go to the
//! store in bulk ([`completer`]). Webhooks are served by independent workers, one queue
//! each, so a slow or failing webhook holds only its own permits and never starves others.
//!
//! [`Store::take`]: hookline_store::Store::take
//! [`Store::renew`]: hookline_store::Store::renew

pub mod batch;
pub mod completer;
pub mod deliver;
pub mod permits;

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::BoxFuture;
use hookline_proto::Job;
use hookline_store::queue::{Beat, Consumer, Lease};
use hookline_store::{ClaimScan, QueueName, Renew, Take, Taken, now_ms};
use rand::Rng;
use tokio::time::Instant;

use self::completer::Completer;
use self::deliver::{Call, deliver};
use self::permits::PermitPool;
use crate::EngineContext;
use crate::catalog::{Catalog, CompiledWebhook};
use crate::messages::CatalogChanged;
use crate::workers::{Start, WorkerCtx, WorkerSet};

/// Entries read in one step, at most.
const MAX_READ: u32 = 512;
/// The longest a worker waits for a job before looking again (catalog changes, a stop).
const MAX_WAIT: Duration = Duration::from_secs(5);

pub struct Dispatcher {
    ctx: EngineContext,
    workers: WorkerSet,
    start: Start,
}

impl Dispatcher {
    pub fn new(ctx: EngineContext) -> Self {
        let start: Start = Arc::new(|w| Box::pin(run_worker(w)));
        Dispatcher { ctx, workers: WorkerSet::new("dispatcher"), start }
    }
}

/// The webhooks whose jobs are delivered now: every one not paused.
fn active(catalog: &Catalog) -> impl Iterator<Item = String> + '_ {
    catalog.webhooks.values().filter(|wh| !wh.paused).map(|wh| wh.def.id.clone())
}

/// How often a dispatcher node reports its calls in flight (for `/metrics` and the
/// dashboard, cluster-wide); a report lasts three times as long.
const IN_FLIGHT_REPORT: Duration = Duration::from_secs(2);

impl Actor for Dispatcher {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        // A task of its own, not an interval of this actor (which would keep the actor, and
        // the store it holds, alive after the node stops); it ends with the node.
        let engine = self.ctx.clone();
        actix::spawn(async move {
            let mut shutdown = engine.shutdown.clone();
            let mut tick = tokio::time::interval(IN_FLIGHT_REPORT);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() { return },
                }
                let counts: Vec<(String, u64)> =
                    engine.metrics.in_flight_now().into_iter().map(|(w, n)| (w, n.max(0) as u64)).collect();
                if counts.is_empty() {
                    continue;
                }
                if let Err(e) = engine.store.report_in_flight(&engine.node_id, &counts, 3 * IN_FLIGHT_REPORT).await {
                    tracing::debug!(error = %e, "cannot report the calls in flight");
                }
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.workers.stop_all();
    }
}

impl Handler<CatalogChanged> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: CatalogChanged, _ctx: &mut Self::Context) {
        self.workers.sync(&self.ctx, active(&msg.catalog), &self.start);
    }
}

/// The webhook's current definition, if it is still to be delivered.
fn current(ctx: &EngineContext, id: &str) -> Option<Arc<CompiledWebhook>> {
    ctx.catalog.current().webhooks.get(id).filter(|wh| !wh.paused).cloned()
}

/// The heartbeat of a worker: renews its permits and its entries in one store call.
fn heartbeat(ctx: &EngineContext, id: &str, pool: &Arc<PermitPool>) -> Beat {
    let (ctx, id, pool) = (ctx.clone(), id.to_string(), pool.clone());
    Arc::new(move |entries: Vec<String>| -> BoxFuture<'static, hookline_store::Result<Vec<String>>> {
        let (ctx, id, pool) = (ctx.clone(), id.clone(), pool.clone());
        Box::pin(async move {
            let limit = current(&ctx, &id).map(|wh| wh.def.settings.max_concurrency).unwrap_or(1);
            let permits = pool.names();
            let sent = Instant::now();
            let renew = Renew {
                webhook: &id,
                consumer: &ctx.consumer,
                lease: ctx.lease,
                limit,
                permits: &permits,
                entries: &entries,
                contending: true,
            };
            match ctx.store.renew(&renew).await {
                Ok(r) => {
                    pool.renewed(&permits, &r.lost_permits, r.fair_share, sent);
                    Ok(r.lost_entries)
                }
                Err(e) => {
                    pool.renewal_failed();
                    Err(e)
                }
            }
        })
    })
}

/// One webhook's delivery loop.
async fn run_worker(w: WorkerCtx) {
    let ctx = w.engine.clone();
    let id = w.key.clone();
    let Some(first) = current(&ctx, &id) else { return };
    let pool = PermitPool::new(&id, ctx.lease, first.def.settings.max_concurrency, ctx.metrics.clone());
    let consumer = Arc::new(Consumer::<Job>::new(
        ctx.store.clone(),
        QueueName::jobs(&id),
        &ctx.consumer,
        ctx.lease,
        Some(heartbeat(&ctx, &id, &pool)),
    ));
    let completer = Completer::start(ctx.store.clone(), &id, consumer.clone());
    let mut scan = ClaimScan { min_idle: ctx.lease, cursor: String::new() };
    let mut last_scan = Instant::now() - ctx.lease;
    tracing::info!(webhook_id = %id, version = first.version, "dispatcher worker started");

    while !w.stopping() {
        let Some(wh) = current(&ctx, &id) else { break };
        let s = &wh.def.settings;
        let (limit, batch) = (s.max_concurrency, s.max_batch_size.max(1));
        // What goes back first, so it is not counted as free for this step's calls.
        let release = pool.to_release(limit);
        let ((known_free, free), want) = (pool.free_for_take(), pool.wanted(limit));
        if known_free == 0 && free.is_empty() && want == 0 && release.is_empty() {
            // Every permit this worker may hold carries a call: wait for one to end.
            tokio::select! {
                _ = pool.freed() => {}
                _ = tokio::time::sleep(ctx.lease / 3) => {}
                _ = w.stopped() => {}
            }
            continue;
        }
        let claim = (last_scan.elapsed() >= ctx.lease / 2).then(|| scan.clone());
        let sent = Instant::now();
        let take = Take {
            webhook: &id,
            consumer: &ctx.consumer,
            lease: ctx.lease,
            limit,
            free: &free,
            known_free,
            want,
            release: &release,
            batch,
            max_entries: MAX_READ.max(batch),
            rate: wh.store_rate(),
            claim,
        };
        let taken = match ctx.store.take(&take).await {
            Ok(t) => t,
            Err(error) => {
                tracing::warn!(webhook_id = %id, %error, "cannot take jobs; trying again");
                w.pause(Duration::from_secs(1)).await;
                continue;
            }
        };
        pool.granted(taken.granted.clone(), taken.fair_share, sent);
        if let Some(next) = &taken.cursor {
            scan.cursor = next.clone();
            last_scan = Instant::now();
        }
        let Taken { entries, next_due_ms, rate_wait, mark, granted, .. } = taken;
        let taken_over = entries.iter().filter(|e| e.deliveries > 1).count();
        let lease = match consumer.adopt(entries).await {
            Ok(l) => l,
            Err(error) => {
                tracing::warn!(webhook_id = %id, %error, "cannot read jobs; trying again");
                w.pause(Duration::from_secs(1)).await;
                continue;
            }
        };
        if taken_over > 0 {
            tracing::info!(webhook_id = %id, count = taken_over, "took over jobs of a stopped consumer");
            ctx.metrics.taken_over(&id, taken_over as u64);
        }
        if lease.is_empty() {
            // Every permit this step could use counts, the fresh ones it passed uncounted too:
            // leaving them out read "no permits" and slept as if the limit were held elsewhere.
            let permits = known_free as usize + free.len() + granted.len();
            idle(&w, &ctx, &id, &pool, permits as u32, next_due_ms, rate_wait, &mark).await;
            continue;
        }
        // Paused (or deleted) while this step ran: what it read goes back, unsent.
        let Some(wh) = current(&ctx, &id) else {
            if let Err(error) = consumer.release(lease).await {
                tracing::warn!(webhook_id = %id, %error, "cannot give jobs back; they are taken over after their lease");
            }
            break;
        };
        let linger = Duration::from_millis(wh.def.settings.batch_linger_ms);
        let call = Arc::new(Call { ctx: ctx.clone(), wh, consumer: consumer.clone(), completer: completer.clone() });
        if dispatch(&w, &call, &pool, lease, batch as usize, linger).await {
            // Jobs went back: this worker's next step scans for them.
            last_scan = Instant::now() - ctx.lease;
        }
    }
    // Calls in flight keep their permits (renewed by the heartbeat, which lives as long as
    // `consumer`) until they end; only then does this worker give them back.
    if !pool.idle(DRAIN_CALLS).await {
        tracing::warn!(webhook_id = %id, calls = pool.busy(), "calls still running; their permits expire with their lease");
    }
    let held = pool.take_free();
    if let Err(error) = ctx.store.release_permits(&id, &ctx.consumer, &held, true).await {
        tracing::warn!(webhook_id = %id, %error, "cannot give permits back; they expire with their lease");
    }
    drop(consumer);
    tracing::info!(webhook_id = %id, "dispatcher worker stopped");
}

/// How long a stopping worker waits for its calls before leaving their permits to expire.
const DRAIN_CALLS: Duration = Duration::from_secs(30);

/// Waits after a step that read nothing: for a rate token, a permit, or a job.
#[allow(clippy::too_many_arguments)]
async fn idle(
    w: &WorkerCtx,
    ctx: &EngineContext,
    id: &str,
    pool: &Arc<PermitPool>,
    permits: u32,
    next_due_ms: Option<i64>,
    rate_wait: Option<Duration>,
    mark: &str,
) {
    if let Some(wait) = rate_wait {
        w.pause(wait).await;
        return;
    }
    if permits == 0 {
        // The limit is held elsewhere in the cluster: look again shortly (a renewal of the
        // holders gives back what is over their share).
        let wait = Duration::from_millis(rand::rng().random_range(50..150));
        tokio::select! {
            _ = pool.freed() => {}
            _ = w.pause(wait) => {}
        }
        return;
    }
    if mark.is_empty() {
        // The step read entries, none of which could be kept (they did not decode): no
        // position to wait past, so look again.
        return;
    }
    let until_due = next_due_ms.map(|due| Duration::from_millis((due - now_ms()).max(1) as u64));
    let timeout = until_due.map_or(MAX_WAIT, |d| d.min(MAX_WAIT));
    tokio::select! {
        r = ctx.store.wait_for_jobs(id, mark, timeout) => {
            if let Err(error) = r {
                tracing::warn!(webhook_id = %id, %error, "cannot wait for jobs; looking again");
                w.pause(Duration::from_millis(500)).await;
            }
        }
        // Permits above the fair share go back at once, not after the wait.
        _ = pool.freed() => {}
        _ = w.stopped() => {}
    }
}

/// Groups a lease into calls and starts each under a permit; true if jobs went back unsent.
async fn dispatch(
    w: &WorkerCtx,
    call: &Arc<Call>,
    pool: &Arc<PermitPool>,
    lease: Lease<Job>,
    batch: usize,
    linger: Duration,
) -> bool {
    // Jobs handed out too often (their nodes kept dying on them) are given up one by one,
    // not with the batch they would join.
    let (spent, lease) = lease.partition(|e| e.deliveries > deliver::MAX_DELIVERIES);
    let lease = batch::solo_first(lease);
    let mut sizes = vec![1; spent.len()];
    let mut parts = spent.split(&sizes);
    sizes = batch::call_sizes(lease.entries(), batch);
    parts.extend(lease.split(&sizes));
    // A partly filled bulk call (always the last) may wait a little for more jobs; the
    // others go at once.
    let lingering = (batch > 1
        && !linger.is_zero()
        && parts.last().is_some_and(|l| {
            l.entries().first().is_some_and(|e| !e.solo && e.deliveries <= deliver::MAX_DELIVERIES) && l.len() < batch
        }))
    .then(|| parts.pop())
    .flatten();
    let mut gave_back = false;
    for part in parts {
        gave_back |= start(call, pool, part).await;
    }
    if let Some(mut last) = lingering {
        let deadline = Instant::now() + linger;
        while last.len() < batch && !w.stopping() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match call.consumer.read(batch - last.len(), left).await {
                Ok(more) if more.is_empty() => break,
                Ok(more) => last.join(more),
                Err(error) => {
                    tracing::warn!(webhook_id = %call.wh.def.id, %error, "cannot read more jobs for the call");
                    break;
                }
            }
        }
        gave_back |= start(call, pool, last).await;
    }
    gave_back
}

/// Starts one call under a free permit; without one, gives its jobs back (true).
async fn start(call: &Arc<Call>, pool: &Arc<PermitPool>, part: Lease<Job>) -> bool {
    let Some(permit) = pool.checkout() else {
        // The take read no more than the free and granted permits carry; one lost its lease
        // meanwhile. The jobs go back for the next step (or another node).
        tracing::warn!(webhook_id = %call.wh.def.id, "a permit ran out before its call started; giving the jobs back");
        if let Err(error) = call.consumer.release(part).await {
            tracing::warn!(%error, "cannot give jobs back; they are taken over after their lease");
        }
        return true;
    };
    // Held from here, so a drain waits for the call even before its task first runs.
    let running = call.ctx.drain.guard();
    // Boxed: the call's future is large, and tokio moves an unboxed one several times
    // on its way into (and out of) the task.
    tokio::spawn(Box::pin(deliver(call.clone(), part, permit, running)));
    false
}
