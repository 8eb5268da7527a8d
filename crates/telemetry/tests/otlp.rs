//! Spans reach an OTLP/HTTP receiver with the trace context a job carried: a tiny HTTP/1.1
//! server stands in for Jaeger's OTLP endpoint and decodes what the exporter posts.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hookline_telemetry::{LogFormat, init, set_parent, subscriber, traceparent_of};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use prost::Message;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Serves one connection: HTTP/1.1 requests (keep-alive) until the client closes it.
fn serve(stream: TcpStream, requests: &mpsc::Sender<ExportTraceServiceRequest>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let (mut length, mut content_type) = (0, String::new());
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "content-type" => content_type = value.trim().to_string(),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let status = if !request_line.starts_with("POST /v1/traces ") {
            "404 Not Found"
        } else if content_type != "application/x-protobuf" {
            "415 Unsupported Media Type"
        } else {
            match ExportTraceServiceRequest::decode(body.as_slice()) {
                Ok(request) => {
                    let _ = requests.send(request);
                    "200 OK"
                }
                Err(_) => "400 Bad Request",
            }
        };
        write!(out, "HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")?;
        out.flush()?;
    }
}

/// An OTLP/HTTP receiver on 127.0.0.1:0, handing over every decoded export request.
fn receiver() -> (SocketAddr, mpsc::Receiver<ExportTraceServiceRequest>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || serve(stream, &tx));
        }
    });
    (addr, rx)
}

/// Spans received until `want` of them came (or 10 s passed), with their resource attributes.
fn received(rx: &mpsc::Receiver<ExportTraceServiceRequest>, want: usize) -> Vec<(Vec<KeyValue>, Span)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut spans = Vec::new();
    while spans.len() < want {
        let Ok(request) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else { break };
        for resource_spans in request.resource_spans {
            let resource = resource_spans.resource.map(|r| r.attributes).unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                spans.extend(scope_spans.spans.into_iter().map(|s| (resource.clone(), s)));
            }
        }
    }
    spans
}

fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()
}

fn string(s: &str) -> Value {
    Value::StringValue(s.into())
}

#[test]
fn spans_join_the_jobs_trace_and_reach_the_collector() {
    let (addr, rx) = receiver();
    let (dispatch, guard) = subscriber(LogFormat::Text, "off", Some(&format!("http://{addr}/")), "node-7");
    assert!(guard.exports());

    let (attempt_tp, request_tp) = tracing::dispatcher::with_default(&dispatch, || {
        let attempt = tracing::info_span!("attempt", webhook_id = "it-negative-feedback", attempt = 2);
        set_parent(&attempt, &format!("00-{TRACE_ID}-{PARENT_ID}-01"));
        let attempt_tp = traceparent_of(&attempt).expect("the attempt has a trace context");
        let request_tp = attempt.in_scope(|| {
            let request = tracing::info_span!(
                "POST",
                otel.kind = "client",
                http.request.method = "POST",
                url.full = "https://tickets.example.com/rest/api/2/issue",
                http.response.status_code = tracing::field::Empty,
            );
            let tp = traceparent_of(&request);
            request.record("http.response.status_code", 201);
            request.in_scope(|| tracing::info!("target answered"));
            tp
        });
        (attempt_tp, request_tp.expect("the request has a trace context"))
    });
    guard.flush().expect("spans exported");

    // traceparent_of: same trace, a span id of its own, sampled.
    let parts: Vec<&str> = attempt_tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{attempt_tp}");
    assert_eq!((parts[0], parts[1], parts[3]), ("00", TRACE_ID, "01"));
    assert_ne!(parts[2], PARENT_ID);
    let attempt_id = parts[2];
    assert!(request_tp.starts_with(&format!("00-{TRACE_ID}-")), "{request_tp}");

    let spans = received(&rx, 2);
    assert_eq!(spans.len(), 2, "{spans:#?}");
    for (resource, span) in &spans {
        assert_eq!(attr(resource, "service.name"), Some(&string("hookline")));
        assert_eq!(attr(resource, "service.instance.id"), Some(&string("node-7")));
        assert_eq!(hex(&span.trace_id), TRACE_ID);
    }
    let find = |name: &str| &spans.iter().find(|(_, s)| s.name == name).unwrap_or_else(|| panic!("no {name}")).1;
    let (attempt, request) = (find("attempt"), find("POST"));

    assert_eq!(hex(&attempt.span_id), attempt_id);
    assert_eq!(hex(&attempt.parent_span_id), PARENT_ID);
    assert_eq!(attr(&attempt.attributes, "webhook_id"), Some(&string("it-negative-feedback")));
    assert_eq!(attr(&attempt.attributes, "attempt"), Some(&Value::IntValue(2)));

    assert_eq!(hex(&request.parent_span_id), attempt_id);
    assert_eq!(request_tp, format!("00-{TRACE_ID}-{}-01", hex(&request.span_id)));
    assert_eq!(request.kind, SpanKind::Client as i32);
    assert_eq!(attr(&request.attributes, "http.request.method"), Some(&string("POST")));
    assert_eq!(attr(&request.attributes, "url.full"), Some(&string("https://tickets.example.com/rest/api/2/issue")));
    assert_eq!(attr(&request.attributes, "http.response.status_code"), Some(&Value::IntValue(201)));
    assert!(request.events.iter().any(|e| e.name == "target answered"), "{:?}", request.events);
    guard.shutdown();
}

#[test]
fn invalid_or_absent_context_is_ignored() {
    let (addr, _rx) = receiver();
    let (dispatch, _guard) = subscriber(LogFormat::Json, "off", Some(&format!("http://{addr}")), "node-1");
    tracing::dispatcher::with_default(&dispatch, || {
        for garbage in ["", "garbage", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", "00-xyz-abc-01"] {
            let span = tracing::info_span!("attempt");
            set_parent(&span, garbage);
            let tp = traceparent_of(&span).expect("a trace of its own");
            assert_eq!(tp.len(), 55, "{tp}");
            assert!(!tp.contains(PARENT_ID), "{tp}");
        }
        // The parent is fixed once the span started.
        let span = tracing::info_span!("attempt");
        let before = traceparent_of(&span).unwrap();
        set_parent(&span, &format!("00-{TRACE_ID}-{PARENT_ID}-01"));
        assert_eq!(traceparent_of(&span).unwrap(), before);
        // Spans below the exported level have no trace context.
        assert_eq!(traceparent_of(&tracing::debug_span!("detail")), None);
        assert_eq!(traceparent_of(&tracing::Span::none()), None);
    });

    // Logs only: no OpenTelemetry layer, no trace context, nothing to flush.
    let (dispatch, guard) = subscriber(LogFormat::Text, "off", None, "node-1");
    assert!(!guard.exports());
    tracing::dispatcher::with_default(&dispatch, || {
        let span = tracing::info_span!("attempt");
        set_parent(&span, &format!("00-{TRACE_ID}-{PARENT_ID}-01"));
        assert_eq!(traceparent_of(&span), None);
    });
    guard.flush().unwrap();
}

#[test]
fn init_installs_once() {
    let (addr, rx) = receiver();
    let endpoint = format!("http://{addr}");
    let guard = init(LogFormat::Text, "off", Some(&endpoint), "node-9");
    assert!(guard.exports());
    let again = init(LogFormat::Text, "off", Some(&endpoint), "node-9");
    assert!(!again.exports());
    drop(again);

    // The global subscriber exports (from a thread without a scoped one).
    std::thread::spawn(|| {
        let span = tracing::info_span!("global");
        set_parent(&span, &format!("00-{TRACE_ID}-{PARENT_ID}-01"));
        drop(span);
    })
    .join()
    .unwrap();
    guard.shutdown(); // exports what is pending
    let spans = received(&rx, 1);
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(spans[0].1.name, "global");
    assert_eq!(hex(&spans[0].1.parent_span_id), PARENT_ID);
}
