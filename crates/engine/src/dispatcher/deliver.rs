//! One call, step by step: give up on a job its nodes kept dying on; build and authenticate
//! the request; send it under its permit (a permit lost mid-call cuts the call); refresh a
//! refused OAuth token once; turn the result into an attempt and its follow-up (retry, dead
//! letter, write-back); complete it — which records all of it only if the call's entries
//! are still this node's.

use std::sync::Arc;
use std::time::Instant;

use hookline_outbound::{OutboundCall, OutboundResponse, SendError, Verdict, classify};
use hookline_proto::{Attempt, Job, Outcome, WritebackJob};
use hookline_store::queue::{Consumer, Lease};
use hookline_store::{Completion, FollowUp, now_ms};
use tracing::Instrument;

use super::batch::combine;
use super::completer::{Completer, Finished};
use super::permits::Permit;
use crate::EngineContext;
use crate::attempt::{headers, request_record, response_record};
use crate::catalog::CompiledWebhook;
use crate::drain::DrainGuard;
use crate::render::{BuiltRequest, build_request};
use crate::trace;

/// A job handed out this many times without finishing (its nodes kept dying mid-delivery)
/// is dead-lettered instead of delivered again.
pub const MAX_DELIVERIES: u32 = 5;

/// What a call needs besides its entries.
pub struct Call {
    pub ctx: EngineContext,
    pub wh: Arc<CompiledWebhook>,
    pub consumer: Arc<Consumer<Job>>,
    pub completer: Completer,
}

/// The attempt record of `job` started now on this node.
fn new_attempt(ctx: &EngineContext, wh: &CompiledWebhook, job: &Job) -> Attempt {
    Attempt {
        attempt_id: uuid::Uuid::now_v7().to_string(),
        webhook_id: wh.def.id.clone(),
        webhook_version: wh.version,
        job_id: job.job_id.clone(),
        record_ids: job.record_ids.clone(),
        number: job.attempts + 1,
        node_id: ctx.node_id.clone(),
        started_at_ms: now_ms(),
        traceparent: job.traceparent.clone(),
        ..Default::default()
    }
}

/// Hands the finished call to the completer, which records `completion` in bulk with
/// others and gives the jobs back if it does not take effect.
async fn finish(call: &Call, lease: Lease<Job>, completion: Completion, running: DrainGuard) {
    call.completer.finish(Finished { completion, lease, running }).await;
}

/// Dead-letters a job that keeps being taken over, with an attempt saying why.
async fn give_up(call: &Call, lease: Lease<Job>, permit: Permit, running: DrainGuard) {
    drop(permit);
    let job = combine(lease.entries());
    let deliveries = lease.entries().iter().map(|e| e.deliveries).max().unwrap_or(0);
    let error =
        format!("handed out {deliveries} times without finishing (the nodes delivering it stopped); dead-lettered");
    tracing::warn!(webhook_id = %call.wh.def.id, job_id = %job.job_id, deliveries, "{error}");
    let mut attempt = new_attempt(&call.ctx, &call.wh, &job);
    attempt.error = error.clone();
    attempt.outcome = Outcome::Failed as i32;
    let follow_up = FollowUp { dead_letter: Some((job, error)), ..Default::default() };
    call.ctx.metrics.dead_lettered(&call.wh.def.id);
    let completion = Completion { entries: lease.ids(), attempt, follow_up };
    finish(call, lease, completion, running).await;
}

/// Why a send did not produce a response.
enum Sent {
    Answered(Result<OutboundResponse, SendError>),
    /// The permit was lost before the response: the call was cut.
    PermitLost,
}

/// Sends `req` unless the permit goes first; a resend after a 401 first waits for a rate
/// token like any call.
async fn send(ctx: &EngineContext, wh: &CompiledWebhook, req: &BuiltRequest, permit: &Permit, resend: bool) -> Sent {
    let out = async {
        if resend && let Some(rate) = wh.store_rate() {
            loop {
                match ctx.store.rate_wait(&wh.def.id, rate).await {
                    Ok(None) => break,
                    Ok(Some(wait)) => tokio::time::sleep(wait).await,
                    Err(error) => {
                        tracing::warn!(%error, "cannot check the rate limit; waiting");
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                }
            }
        }
        if !permit.valid() {
            return Sent::PermitLost;
        }
        Sent::Answered(
            ctx.outbound
                .send_call(OutboundCall {
                    method: &req.method,
                    url: &req.url,
                    headers: &req.headers,
                    body: &req.body,
                    timeout: wh.def.settings.timeout.0,
                })
                .await,
        )
    };
    tokio::select! {
        sent = out => sent,
        _ = permit.lost() => Sent::PermitLost,
    }
}

/// In a call of several records, a `bulk call` span in each other record's trace, linked to
/// the call's attempt span (which lives in the first record's trace): every record's trace
/// shows the call that carried it, and its outcome. Records already in the attempt's trace
/// (a scheduled tick's) need none. Made only when spans are exported.
fn member_spans(attempt: &tracing::Span, job: &Job, webhook: &str, number: u32) -> Vec<tracing::Span> {
    if job.member_traceparents.is_empty() || !hookline_telemetry::exporting() {
        return Vec::new();
    }
    let Some(attempt_tp) = hookline_telemetry::traceparent_of(attempt) else { return Vec::new() };
    let own = trace::trace_id(&job.traceparent);
    // One record per member (as the trigger queues them): the i-th member is record i + 1.
    let one_each = job.record_ids.len() == job.member_traceparents.len() + 1;
    let mut seen = std::collections::HashSet::new();
    job.member_traceparents
        .iter()
        .enumerate()
        .filter_map(|(i, tp)| {
            let trace = trace::trace_id(tp)?;
            (Some(trace) != own && seen.insert(trace)).then_some((i, tp))
        })
        .map(|(i, tp)| {
            let record_id = one_each.then(|| job.record_ids[i + 1].as_str());
            let span = tracing::info_span!(
                parent: None,
                "bulk call",
                webhook_id = %webhook,
                job_id = %job.job_id,
                record_id,
                records = job.record_ids.len() as i64,
                attempt = i64::from(number),
                outcome = tracing::field::Empty,
                http.response.status_code = tracing::field::Empty,
            );
            trace::join(&span, tp);
            hookline_telemetry::add_link(&span, &attempt_tp);
            span
        })
        .collect()
}

/// Delivers one call once and records what happened. Never panics on the job's content.
pub async fn deliver(call: Arc<Call>, lease: Lease<Job>, permit: Permit, running: DrainGuard) {
    if lease.entries().iter().any(|e| e.deliveries > MAX_DELIVERIES) {
        return give_up(&call, lease, permit, running).await;
    }
    // Borrowed from the call, never cloned: a context is a kilobyte of handles, strings
    // and keys, and a clone of it per delivery cost more than the rest of this setup.
    let (ctx, wh) = (&call.ctx, &call.wh);
    let job = combine(lease.entries());
    let number = job.attempts + 1;
    let span = tracing::info_span!(
        "attempt",
        webhook_id = %wh.def.id,
        job_id = %job.job_id,
        record_ids = ?job.record_ids,
        attempt = i64::from(number),
        trace_id = trace::trace_id(&job.traceparent).unwrap_or_default(),
        outcome = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        http.request.method = %wh.def.request.method.to_ascii_uppercase(),
        url.full = tracing::field::Empty,
        error.type = tracing::field::Empty,
        node_id = %ctx.node_id,
    );
    trace::join(&span, &job.traceparent);
    let members = member_spans(&span, &job, &wh.def.id, number);
    async move {
        let (ctx, wh) = (&call.ctx, &call.wh);
        let limit = wh.def.settings.max_concurrency as u64;
        ctx.metrics.in_flight(&wh.def.id, 1, limit);
        let started = Instant::now();
        let entities: serde_json::Value =
            serde_json::from_slice(&job.entities_json).unwrap_or_else(|_| serde_json::Value::Array(vec![]));
        let mut attempt = new_attempt(ctx, wh, &job);
        let started_ms = attempt.started_at_ms;

        let mut request_body = bytes::Bytes::new();
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
                tracing::Span::current().record("url.full", req.display_url());
                let mut sent = send(ctx, wh, &req, &permit, false).await;
                // A refused OAuth token: fetch another once (unless another node already
                // did) and send again, within this same attempt.
                if let (Sent::Answered(Ok(resp)), Some(used)) = (&sent, req.oauth_token.clone())
                    && resp.status == 401
                {
                    match crate::oauth::bearer(ctx, wh, Some(&used)).await {
                        Ok(fresh) => {
                            tracing::info!("target refused the OAuth token; sending again with a fresh one");
                            req.set_bearer(&fresh);
                            sent = send(ctx, wh, &req, &permit, true).await;
                        }
                        Err(e) => tracing::warn!(error = %e, "refreshing the OAuth token after a 401 failed"),
                    }
                }
                let result = match sent {
                    Sent::Answered(result) => result,
                    Sent::PermitLost => {
                        // Another node may hold the permit now: this call must not go on, and
                        // its outcome is not this node's to record.
                        tracing::warn!("the call was cut: its concurrency permit was lost");
                        ctx.metrics.in_flight(&wh.def.id, -1, limit);
                        drop(permit);
                        if let Err(error) = call.consumer.release(lease).await {
                            tracing::warn!(%error, "cannot give the call's jobs back; they are taken over after their lease");
                        }
                        return;
                    }
                };
                attempt.request = Some(request_record(&req));
                let verdict = classify(&result);
                let response = match result {
                    Ok(resp) => {
                        tracing::Span::current().record("http.response.status_code", i64::from(resp.status));
                        for m in &members {
                            m.record("http.response.status_code", i64::from(resp.status));
                        }
                        attempt.response = Some(response_record(&resp, &req));
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
                request_body = req.body;
                (verdict, response)
            }
        };
        // The call is over: its permit carries the next one while this one is recorded.
        drop(permit);
        ctx.metrics.in_flight(&wh.def.id, -1, limit);
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
                request_body: Vec::from(request_body),
                status: response.as_ref().map(|r| r.status as u32).unwrap_or(0),
                response_headers: response.as_ref().map(|r| headers(&r.headers)).unwrap_or_default(),
                response_body: response.map(|r| r.body).unwrap_or_default(),
                traceparent: job.traceparent.clone(),
                hops: job.hops,
            });
        }
        tracing::Span::current().record("outcome", outcome.as_str());
        for m in &members {
            m.record("outcome", outcome.as_str());
        }
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
        let completion = Completion { entries: lease.ids(), attempt, follow_up: follow };
        finish(&call, lease, completion, running).await;
    }
    .instrument(span)
    .await
}
