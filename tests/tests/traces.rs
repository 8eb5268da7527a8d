//! One trace per record change, across nodes: the API's write, the trigger decision, the
//! enqueue, each attempt (a retry made by a second node after the first one stopped), the
//! outbound HTTP client spans, the scripts and the write-back — exported over OTLP/HTTP to
//! a local receiver that decodes the protobuf, as Jaeger would.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value as AnyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;

use crate::procs::Proc;
use crate::support::{Api, namespace, redis_url, seed_webhook, wait_until};
use hookline::demo::survey_object;

type Received = Arc<Mutex<Vec<(Vec<KeyValue>, Span)>>>;

fn serve(stream: TcpStream, spans: &Received) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        if let Ok(request) = ExportTraceServiceRequest::decode(body.as_slice()) {
            let mut all = spans.lock().unwrap();
            for rs in request.resource_spans {
                let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
                for ss in rs.scope_spans {
                    all.extend(ss.spans.into_iter().map(|s| (resource.clone(), s)));
                }
            }
        }
        write!(out, "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")?;
        out.flush()?;
    }
}

/// An OTLP/HTTP receiver on 127.0.0.1:0 keeping every span it is sent.
fn receiver() -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let spans: Received = Arc::default();
    let keep = spans.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let keep = keep.clone();
            std::thread::spawn(move || serve(stream, &keep));
        }
    });
    (url, spans)
}

fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()
}

fn text(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attr(attributes, key)? {
        AnyValue::StringValue(s) => Some(s.clone()),
        AnyValue::IntValue(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// A tracker that answers 503 to its first call and a ticket afterwards.
fn flaky_tracker() -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let state = web::Data::new(calls.clone());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = HttpServer::new(move || {
        App::new().app_data(state.clone()).default_service(web::to(|calls: web::Data<Arc<AtomicUsize>>| async move {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                HttpResponse::ServiceUnavailable().json(json!({"errorMessage": "busy"}))
            } else {
                HttpResponse::Ok().json(json!({"ticketId": "IT-9"}))
            }
        }))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    actix_rt::spawn(server);
    (url, calls)
}

#[actix_rt::test]
async fn a_record_change_is_one_trace_across_nodes_and_retries() {
    let (otlp, spans) = receiver();
    let (tracker_url, calls) = flaky_tracker();
    let ns = namespace();
    let redis = redis_url();
    let common = ["--redis", &redis, "--namespace", &ns, "--otlp-endpoint", &otlp];
    let with = |roles: &'static str| -> Vec<&str> {
        let mut a = common.to_vec();
        a.extend(["--roles", roles]);
        a
    };
    let mut api_node = Proc::start("trace-api", &with("api,coordinator,trigger,writeback"));
    let mut dispatchers: HashMap<String, Proc> = ["trace-d1", "trace-d2"]
        .into_iter()
        .map(|name| (name.to_string(), Proc::start(name, &with("dispatcher"))))
        .collect();
    let api = Api::at(&api_node.url);
    api.ok("POST", "/v1/objects", Some(survey_object())).await;
    let tracker = crate::support::Tracker { url: tracker_url, seen: Arc::default() };
    let mut wh = seed_webhook("traced", &tracker, false);
    wh["settings"]["retry_wait"] = json!("2s");
    api.ok("POST", "/v1/webhooks", Some(wh)).await;

    api.ok(
        "POST",
        "/v1/objects/survey/records",
        Some(json!({"fields": {
        "a_surveyid": "T1", "e_email": "t@example.com", "status": "Open", "transactional_satisfaction": 0}})),
    )
    .await;
    api.ok("PATCH", "/v1/objects/survey/records/T1", Some(json!({"fields": {"status": "Completed"}}))).await;

    // The first attempt fails; stop the node that made it, so another node retries.
    wait_until(Duration::from_secs(20), || async { !api.attempts("traced", "").await.is_empty() }).await;
    let first = api.attempts("traced", "").await[0].clone();
    assert_eq!(first["outcome"], "retry_scheduled");
    let first_node = first["node_id"].as_str().unwrap().to_string();
    assert!(dispatchers.get_mut(&first_node).expect("a dispatcher made it").terminate().success());
    wait_until(Duration::from_secs(30), || async {
        api.record("survey", "T1").await["fields"]["ticketSystemSynced"] == json!(1)
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let attempts = api.attempts("traced", "").await;
    assert_ne!(attempts[0]["node_id"], first["node_id"], "the retry was made by the other node");

    // Stopping flushes every node's pending spans.
    for (_, mut d) in dispatchers {
        let _ = d.terminate();
    }
    assert!(api_node.terminate().success());
    let spans = spans.lock().unwrap().clone();

    let named = |name: &str| -> Vec<&(Vec<KeyValue>, Span)> { spans.iter().filter(|(_, s)| s.name == name).collect() };
    let attempt_spans = named("attempt");
    assert_eq!(attempt_spans.len(), 2, "one span per attempt");
    let trace = attempt_spans[0].1.trace_id.clone();
    let in_trace = |name: &str| -> Vec<&(Vec<KeyValue>, Span)> {
        spans.iter().filter(|(_, s)| s.name == name && s.trace_id == trace).collect()
    };
    assert!(attempt_spans.iter().all(|(_, s)| s.trace_id == trace), "both attempts in one trace");
    let nodes: Vec<String> = attempt_spans.iter().map(|(r, _)| text(r, "service.instance.id").unwrap()).collect();
    assert_ne!(nodes[0], nodes[1], "the attempts came from two nodes");
    let statuses: Vec<String> = attempt_spans
        .iter()
        .map(|(_, s)| text(&s.attributes, "http.response.status_code").unwrap_or_default())
        .collect();
    assert!(statuses.contains(&"503".to_string()) && statuses.contains(&"200".to_string()), "{statuses:?}");
    // Typed as OpenTelemetry's conventions say: the status code and the attempt are ints.
    for (_, s) in &attempt_spans {
        let status = attr(&s.attributes, "http.response.status_code");
        assert!(matches!(status, Some(AnyValue::IntValue(503 | 200))), "{status:?}");
        assert!(matches!(attr(&s.attributes, "attempt"), Some(AnyValue::IntValue(1 | 2))));
    }
    for (_, s) in named("http.client.request") {
        let status = attr(&s.attributes, "http.response.status_code");
        assert!(matches!(status, Some(AnyValue::IntValue(_))), "{status:?}");
        assert!(matches!(attr(&s.attributes, "server.port"), Some(AnyValue::IntValue(_))));
    }
    for (_, s) in &attempt_spans {
        assert_eq!(text(&s.attributes, "http.request.method").as_deref(), Some("POST"));
        assert!(text(&s.attributes, "url.full").unwrap().ends_with("/rest/api/2/issue"));
    }

    // The tree: record.write → trigger → enqueue → attempts (and the write-back).
    let enqueue = in_trace("enqueue");
    assert_eq!(enqueue.len(), 1);
    let enqueue = &enqueue[0].1;
    assert!(attempt_spans.iter().all(|(_, s)| s.parent_span_id == enqueue.span_id), "attempts hang off the enqueue");
    let triggers = in_trace("trigger");
    assert!(triggers.iter().all(|(_, s)| matches!(attr(&s.attributes, "version"), Some(AnyValue::IntValue(_)))));
    let trigger = triggers.iter().find(|(_, s)| s.span_id == enqueue.parent_span_id).expect("the enqueue's trigger");
    let write = spans.iter().find(|(_, s)| s.name == "record.write" && s.span_id == trigger.1.parent_span_id);
    let (write_resource, _) = write.expect("the trigger hangs off the API's record.write span");
    assert_eq!(text(write_resource, "service.instance.id").as_deref(), Some("trace-api"));
    let writeback = in_trace("writeback");
    assert_eq!(writeback.len(), 1);
    assert_eq!(writeback[0].1.parent_span_id, enqueue.span_id);
    // The write-back's own change is decided in the same trace (and does not fire again).
    let after = triggers.iter().find(|(_, s)| s.parent_span_id != write.unwrap().1.span_id).expect("a second trigger");
    assert!(spans.iter().any(|(_, s)| s.span_id == after.1.parent_span_id && s.trace_id == trace));
    // Each attempt made an outbound HTTP client span; the scripts ran inside the trace.
    for (_, a) in &attempt_spans {
        assert!(
            spans.iter().any(|(_, s)| s.name == "http.client.request" && s.parent_span_id == a.span_id),
            "no HTTP client span under an attempt"
        );
    }
    let kinds: Vec<String> = in_trace("script").iter().filter_map(|(_, s)| text(&s.attributes, "kind")).collect();
    for kind in ["body", "header", "response"] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} script span: {kinds:?}");
    }
}

/// A node exporting to a fresh OTLP receiver, with an `item` object and a bulk target.
async fn item_node(name: &str) -> (Received, crate::bulk::BulkTarget, Proc, Api) {
    let (otlp, spans) = receiver();
    let target = crate::bulk::BulkTarget::start();
    let node = Proc::start(name, &["--redis", &redis_url(), "--namespace", &namespace(), "--otlp-endpoint", &otlp]);
    let api = Api::at(&node.url);
    api.ok("POST", "/v1/objects", Some(json!({"name": "item", "fields": [{"key": "n", "type": "number"}]}))).await;
    (spans, target, node, api)
}

/// A scheduled tick is a trace of its own: the `schedule` span, with the calls it made as
/// its children.
#[actix_rt::test]
async fn a_scheduled_tick_is_the_root_of_the_calls_it_makes() {
    let (spans, target, mut node, api) = item_node("trace-tick").await;
    let records: Vec<_> = (0..3).map(|i| json!({"id": format!("r{i}"), "fields": {"n": i}})).collect();
    api.ok("POST", "/v1/objects/item/records", Some(json!(records))).await;
    api.ok(
        "POST",
        "/v1/webhooks",
        Some(json!({
            "id": "ticking", "object": "item", "trigger": {"schedule": "* * * * * *"},
            "request": {"url": format!("{}/sync", target.url)},
            "settings": {"max_batch_size": 10, "batch_linger_ms": 100}
        })),
    )
    .await;
    wait_until(Duration::from_secs(20), || async { target.records_seen() >= 3 }).await;
    assert!(node.terminate().success());
    let spans = spans.lock().unwrap().clone();

    let ticks: Vec<&Span> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.name == "schedule" && text(&s.attributes, "records").as_deref() == Some("3"))
        .collect();
    assert_eq!(ticks.len(), 1, "one tick sent the three records");
    let tick = ticks[0];
    assert!(tick.parent_span_id.is_empty(), "a tick starts its trace");
    assert_eq!(text(&tick.attributes, "webhook_id").as_deref(), Some("ticking"));
    assert_eq!(text(&tick.attributes, "select").as_deref(), Some("changed"));
    let calls: Vec<&Span> =
        spans.iter().map(|(_, s)| s).filter(|s| s.name == "attempt" && s.parent_span_id == tick.span_id).collect();
    assert!(!calls.is_empty(), "the tick's attempts hang off it");
    assert!(calls.iter().all(|s| s.trace_id == tick.trace_id));
    let carried: usize =
        calls.iter().map(|s| text(&s.attributes, "record_ids").map_or(0, |ids| ids.matches('r').count())).sum();
    assert_eq!(carried, 3, "{calls:?}");
}

/// A bulk call carries several records, each with a trace of its own: the attempt lives in
/// the first record's trace, and every other record's trace gets a `bulk call` span, a child
/// of that record's enqueue, linked to the attempt and carrying its outcome.
#[actix_rt::test]
async fn every_record_of_a_bulk_call_sees_the_call_in_its_trace() {
    let (spans, target, mut node, api) = item_node("trace-bulk").await;
    api.ok(
        "POST",
        "/v1/webhooks",
        Some(json!({
            "id": "bulky", "object": "item", "trigger": {"on_create": true},
            "request": {"url": format!("{}/bulk", target.url)},
            "settings": {"max_batch_size": 3, "batch_linger_ms": 2000}
        })),
    )
    .await;
    let records: Vec<_> = (0..3).map(|i| json!({"id": format!("m{i}"), "fields": {"n": i}})).collect();
    api.ok("POST", "/v1/objects/item/records", Some(json!(records))).await;
    wait_until(Duration::from_secs(20), || async { target.records_seen() >= 3 }).await;
    assert_eq!(target.calls().len(), 1, "one call carried the three records: {:?}", target.calls());
    assert!(node.terminate().success());
    let spans = spans.lock().unwrap().clone();
    let spans: Vec<&Span> = spans.iter().map(|(_, s)| s).collect();

    let attempts: Vec<&&Span> = spans.iter().filter(|s| s.name == "attempt").collect();
    assert_eq!(attempts.len(), 1, "one call");
    let attempt = attempts[0];
    // Each record's trace starts at its own record.write span.
    let trace_of = |id: &str| -> Vec<u8> {
        let write =
            spans.iter().find(|s| s.name == "record.write" && text(&s.attributes, "record_id").as_deref() == Some(id));
        write.unwrap_or_else(|| panic!("no record.write span for {id}")).trace_id.clone()
    };
    let traces: Vec<Vec<u8>> = ["m0", "m1", "m2"].iter().map(|id| trace_of(id)).collect();
    assert!(traces[0] != traces[1] && traces[1] != traces[2], "a trace per record");
    assert_eq!(attempt.trace_id, traces[0], "the attempt lives in the first record's trace");
    for (id, trace) in ["m1", "m2"].iter().zip(&traces[1..]) {
        let bulk: Vec<&&Span> = spans.iter().filter(|s| s.name == "bulk call" && &s.trace_id == trace).collect();
        assert_eq!(bulk.len(), 1, "{id}'s trace shows the call that carried it");
        let bulk = bulk[0];
        assert_eq!(text(&bulk.attributes, "record_id").as_deref(), Some(*id));
        assert_eq!(text(&bulk.attributes, "outcome").as_deref(), Some("success"));
        assert_eq!(text(&bulk.attributes, "records").as_deref(), Some("3"));
        assert!(matches!(attr(&bulk.attributes, "http.response.status_code"), Some(AnyValue::IntValue(200))));
        let enqueue = spans.iter().find(|s| s.name == "enqueue" && &s.trace_id == trace).expect("its enqueue");
        assert_eq!(bulk.parent_span_id, enqueue.span_id, "it hangs off the record's enqueue");
        assert!(
            bulk.links.iter().any(|l| l.trace_id == attempt.trace_id && l.span_id == attempt.span_id),
            "linked to the attempt: {:?}",
            bulk.links
        );
    }
    assert!(!spans.iter().any(|s| s.name == "bulk call" && s.trace_id == traces[0]), "none where the attempt is");
}
