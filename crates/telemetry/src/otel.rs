//! OpenTelemetry: spans exported over OTLP/HTTP (protobuf) by a batch processor, and the W3C
//! trace context that ties a queued job's spans to the trace that produced the job.
//!
//! The exporter talks through the workspace's reqwest 0.12 (its blocking client): the batch
//! processor exports from its own thread, polling the export with a plain executor rather than
//! a tokio runtime, so a blocking client is the one that fits there — and it spares the process
//! the second reqwest/hyper stack that opentelemetry-otlp's own client features would bring.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use opentelemetry::KeyValue;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};
use tracing_subscriber::registry::LookupSpan;

/// How long one export request may take (connect, send, read the answer).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// A collector's answer is a small protobuf message; more than this is refused.
const MAX_RESPONSE_BODY: u64 = 4 << 20;
const TRACEPARENT: &str = "traceparent";

/// The exporter's HTTP client: our reqwest 0.12, blocking flavour (it runs its own small
/// runtime on its own thread, so it works from the batch processor's thread).
#[derive(Debug)]
struct BlockingClient(reqwest::blocking::Client);

impl BlockingClient {
    /// Built on a thread of its own: building (like sending) blocks on reqwest's runtime
    /// thread, which panics when called from within an async runtime, as `init` may be.
    fn new() -> Result<Self, String> {
        std::thread::Builder::new()
            .name("otlp-client-init".into())
            .spawn(|| reqwest::blocking::Client::builder().timeout(EXPORT_TIMEOUT).build())
            .map_err(|e| format!("cannot start a thread: {e}"))?
            .join()
            .map_err(|_| "building the HTTP client panicked".to_string())?
            .map(BlockingClient)
            .map_err(|e| format!("cannot build the HTTP client: {e}"))
    }
}

#[async_trait]
impl HttpClient for BlockingClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let mut response = self.0.execute(request.try_into()?)?;
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        let mut body = Vec::new();
        (&mut response).take(MAX_RESPONSE_BODY + 1).read_to_end(&mut body)?;
        if body.len() as u64 > MAX_RESPONSE_BODY {
            return Err(format!("collector answered with more than {MAX_RESPONSE_BODY} bytes").into());
        }
        let mut answer = Response::new(Bytes::from(body));
        *answer.status_mut() = status;
        *answer.headers_mut() = headers;
        Ok(answer)
    }
}

/// A tracer provider exporting to `<endpoint>/v1/traces` (OTLP/HTTP, protobuf) through a
/// batch processor, as `service.name = hookline`, `service.instance.id = node_id`.
pub(crate) fn provider(endpoint: &str, node_id: &str) -> Result<SdkTracerProvider, String> {
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(BlockingClient::new()?)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| format!("OTLP exporter to {url}: {e}"))?;
    let resource = Resource::builder()
        .with_service_name("hookline")
        .with_attributes([
            KeyValue::new("service.instance.id", node_id.to_string()),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ])
        .build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

/// Set once a subscriber with the OpenTelemetry layer has been built in this process:
/// until then no span has an OpenTelemetry context, and the calls below skip the work of
/// looking for one (on every delivery).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (an OTLP endpoint is configured) in this process: spans that
/// only serve the trace view can be left unmade when not.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The tracing layer turning spans (and the events in them) into OpenTelemetry spans.
pub(crate) fn layer<S>(provider: &SdkTracerProvider) -> OpenTelemetryLayer<S, SdkTracer>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    EXPORTING.store(true, Ordering::Relaxed);
    tracing_opentelemetry::layer().with_tracer(provider.tracer("hookline"))
}

/// Makes `span` a child of the W3C `traceparent` (`00-<trace id>-<span id>-<flags>`), so the
/// work it covers joins the trace that produced it, on any node and at any later time.
///
/// Call it before the span is first entered (or asked for its [`traceparent_of`]): the
/// OpenTelemetry span is started then, and its parent cannot change afterwards. Invalid
/// input, a span without the OpenTelemetry layer (no OTLP endpoint) or a disabled span: nothing
/// happens, and the span starts a trace of its own.
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if !exporting() || span.is_disabled() {
        // Nothing records it (no exporter, or filtered out): no context to attach.
        return;
    }
    let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.trim().to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_remote() && cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Links `span` to the span a W3C `traceparent` names (another trace, say, that the work
/// `span` covers also belongs to). Like [`set_parent`], before the span is first entered;
/// invalid input, no OpenTelemetry layer or a disabled span: nothing happens.
pub fn add_link(span: &tracing::Span, traceparent: &str) {
    if !exporting() || span.is_disabled() {
        return;
    }
    let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.trim().to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let linked = cx.span().span_context().clone();
    if linked.is_valid() {
        span.add_link(linked);
    }
}

/// The W3C traceparent of `span` (its OpenTelemetry span context), for jobs and outbound
/// requests; `None` when no OpenTelemetry layer is installed or the span is disabled.
/// Starts the OpenTelemetry span if it was not yet (see [`set_parent`]).
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    if !exporting() || span.is_disabled() {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}
