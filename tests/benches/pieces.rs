//! Criterion benchmarks of the pure pieces every delivery runs through, so that a
//! regression in one of them shows on its own: condition evaluation and the trigger's
//! decision, a templated request, body and response script calls (and a realm's setup),
//! job encode/decode and the attempt record.
//!
//! `cargo bench -p hookline-tests --bench pieces` (add `-- <filter>` for one group).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use hookline_engine::attempt::{request_record, response_record};
use hookline_engine::catalog::{CompiledWebhook, compile};
use hookline_engine::render::build_request;
use hookline_model::object::{DataObject, Fields};
use hookline_model::trigger::{ChangeView, decide};
use hookline_model::webhook::{StoredWebhook, WebhookDef};
use hookline_outbound::OutboundResponse;
use hookline_proto::{Attempt, Job};
use hookline_script::{PoolConfig, ResponseView, ScriptCall, ScriptKind, ScriptPool};
use prost::Message;
use serde_json::{Value, json};

const CONDITION: &str = "Rating < 3 and Department = 'IT' and not (Comment = '')";
const BODY_SCRIPT: &str = "var r = data.changedEntities[0];\n\
write(JSON.stringify({summary: 'Feedback ' + r.id, rating: r.Rating, text: r.Comment}));";
const RESPONSE_SCRIPT: &str = "var body = JSON.parse(http.getResponseBodyUtf8() || '{}');\n\
if (http.getResponseStatusCode() == 201) write(JSON.stringify({id: data.changedEntities[0].id, Ticket: body.ticketId}));";

fn survey() -> DataObject {
    serde_json::from_value(json!({"name": "survey", "fields": [
        {"key": "Rating", "type": "number"}, {"key": "Department", "type": "string"},
        {"key": "Comment", "type": "string"}, {"key": "Ticket", "type": "string"}]}))
    .expect("the survey object")
}

fn record(rating: u32) -> Fields {
    let value = json!({"id": "r1", "Rating": rating, "Department": "IT", "Comment": "The VPN drops every hour"});
    value.as_object().cloned().expect("an object")
}

fn webhook(object: &DataObject) -> Arc<CompiledWebhook> {
    let definition: WebhookDef = serde_json::from_value(json!({
        "id": "tickets", "object": "survey",
        "trigger": {"on_create": true, "on_update": true, "fields": ["Rating"], "condition": CONDITION},
        "request": {"url": "http://127.0.0.1:9/tickets/{{ record.Department }}", "method": "POST",
                    "headers": {"X-Source": "hookline"},
                    "body_template": "{\"summary\": \"Feedback {{ record.id }}\", \"rating\": {{ record.Rating }}, \"text\": {{ record.Comment | tojson }}}"},
        "auth": {"type": "token", "header": "X-Api-Key", "value": "s3cret-token"},
        "settings": {"max_concurrency": 8}
    }))
    .expect("the webhook definition");
    let stored = StoredWebhook { definition, version: 3, paused: false };
    Arc::new(compile(&stored, |name| (name == "survey").then_some(object)).expect("the webhook compiles"))
}

fn job(entities: &Value) -> Job {
    Job {
        job_id: "tickets:survey:r1:7".into(),
        webhook_id: "tickets".into(),
        webhook_version: 3,
        object: "survey".into(),
        record_ids: vec!["r1".into()],
        record_versions: vec![7],
        entities_json: serde_json::to_vec(entities).expect("entities"),
        attempts: 0,
        created_at_ms: 1_764_633_600_000,
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        hops: 0,
        member_traceparents: Vec::new(),
    }
}

fn conditions(c: &mut Criterion) {
    let object = survey();
    let condition = hookline_model::condition::parse(CONDITION, &object).expect("the condition parses");
    let (old, new) = (record(4), record(2));
    c.bench_function("condition/parse", |b| {
        b.iter(|| hookline_model::condition::parse(black_box(CONDITION), &object).expect("parses"))
    });
    c.bench_function("condition/eval", |b| b.iter(|| condition.eval(black_box(&new), Some(&old))));
    let wh = webhook(&object);
    c.bench_function("trigger/decide", |b| {
        b.iter(|| {
            decide("tickets", &wh.plan, ChangeView { old: Some(&old), new: black_box(&new), origin_webhook: None })
        })
    });
}

fn requests(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let scripts = ScriptPool::new(PoolConfig { threads: 1, ..PoolConfig::default() });
    let object = survey();
    let wh = webhook(&object);
    let entities = json!([record(2)]);
    let job = job(&entities);
    c.bench_function("request/template", |b| {
        b.iter(|| runtime.block_on(build_request(&scripts, None, &wh, &job, black_box(&entities))).expect("built"))
    });

    let req = runtime.block_on(build_request(&scripts, None, &wh, &job, &entities)).expect("built");
    let response = OutboundResponse {
        status: 201,
        headers: vec![("content-type".into(), "application/json".into()), ("x-request-id".into(), "abc".into())],
        body: br#"{"ticketId": "IT-1042", "status": "open"}"#.to_vec(),
        body_truncated: false,
        duration: Duration::from_millis(3),
    };
    c.bench_function("attempt/record", |b| {
        b.iter(|| {
            let attempt = Attempt {
                attempt_id: "0193f1d2-7a5e-7c3b-9d7e-3f1f1a2b3c4d".into(),
                webhook_id: wh.def.id.clone(),
                job_id: job.job_id.clone(),
                record_ids: job.record_ids.clone(),
                request: Some(request_record(black_box(&req))),
                response: Some(response_record(black_box(&response), &req)),
                ..Default::default()
            };
            attempt.encode_to_vec()
        })
    });
}

/// Script calls go through the pool as the dispatcher sends them: many in flight at once,
/// so the figure is the cost per call (engine, channel and thread hand-over), not a wake-up.
const IN_FLIGHT: usize = 64;

fn scripts(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let pool = ScriptPool::new(PoolConfig { threads: 1, ..PoolConfig::default() });
    let run_all = |calls: Vec<ScriptCall>| {
        runtime.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for call in calls {
                let pool = pool.clone();
                tasks.spawn(async move { pool.run(call).await });
            }
            while let Some(done) = tasks.join_next().await {
                done.expect("a call task").expect("the script runs");
            }
        })
    };
    let entities = json!([record(2)]);
    let body = ScriptCall::new(ScriptKind::Body, BODY_SCRIPT, entities.clone());
    let response = ScriptCall::new(ScriptKind::Response, RESPONSE_SCRIPT, entities.clone())
        .with_request_body(r#"{"summary": "Feedback r1"}"#)
        .with_response(ResponseView {
            status: 201,
            headers: vec![("content-type".into(), "application/json".into())],
            body: r#"{"ticketId": "IT-1042"}"#.into(),
        });
    let mut group = c.benchmark_group("script");
    group.throughput(Throughput::Elements(IN_FLIGHT as u64));
    for (name, call) in [("body", &body), ("response", &response)] {
        group.bench_function(name, |b| {
            b.iter_batched(|| vec![call.clone(); IN_FLIGHT], &run_all, BatchSize::SmallInput)
        });
    }
    group.finish();
    // A source not seen before: compiled in the thread's realm, then called.
    let mut n = 0u64;
    c.bench_function("script/first_call", |b| {
        b.iter_batched(
            || {
                n += 1;
                vec![ScriptCall::new(ScriptKind::Body, format!("{BODY_SCRIPT}\n// {n}"), entities.clone())]
            },
            &run_all,
            BatchSize::SmallInput,
        )
    });
}

fn jobs(c: &mut Criterion) {
    let entities = json!([record(2)]);
    let job = job(&entities);
    let bytes = job.encode_to_vec();
    c.bench_function("job/encode", |b| b.iter(|| black_box(&job).encode_to_vec()));
    c.bench_function("job/decode", |b| b.iter(|| Job::decode(black_box(bytes.as_slice())).expect("decodes")));
}

criterion_group!(pieces, conditions, requests, scripts, jobs);
criterion_main!(pieces);
