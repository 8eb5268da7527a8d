//! Tracing set-up for a Hookline process: structured logs to stderr, as text or JSON, with
//! the level taken from `RUST_LOG` (default `info`), and, given an OTLP endpoint, the spans
//! exported to it as OpenTelemetry traces (Jaeger, Tempo, an OpenTelemetry Collector…).
//! Spans carry ids (webhook, job, attempt, record, trace) so one record's journey can be
//! followed in the logs; [`set_parent`] and [`traceparent_of`] carry the W3C trace context
//! through queued jobs and outbound requests, so the journey is one trace across nodes and
//! retries.

pub mod metrics;
mod otel;

use std::sync::atomic::{AtomicBool, Ordering};

pub use metrics::Metrics;
use opentelemetry_sdk::trace::SdkTracerProvider;
pub use otel::{add_link, exporting, set_parent, traceparent_of};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format `{other}` (text or json)")),
        }
    }
}

/// Spans at this level and above are exported, whatever the log level: an operator who
/// quiets the logs (`warn`, as the demo does) still sees every record's journey.
const TRACE_LEVEL: LevelFilter = LevelFilter::INFO;

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Keeps the span exporter alive: dropping it (or [`TelemetryGuard::shutdown`]) exports the
/// spans still pending and stops exporting. Does nothing when there is no exporter.
#[derive(Debug, Default)]
#[must_use = "dropping the guard stops exporting spans"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are exported (an OTLP endpoint was given and this call installed it).
    pub fn exports(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans ended so far now, rather than at the batch processor's next tick.
    pub fn flush(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        match &self.provider {
            Some(provider) => Ok(provider.force_flush()?),
            None => Ok(()),
        }
    }

    /// Exports the pending spans (waiting at most 5 s) and stops exporting.
    pub fn shutdown(mut self) {
        self.close();
    }

    fn close(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "could not export the last spans");
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.close();
    }
}

/// The subscriber [`init`] installs, without installing it (for tests, or a scoped
/// `tracing::dispatcher::with_default`): fmt logs to stderr at `default_level` unless
/// `RUST_LOG` says otherwise, plus, when `otlp_endpoint` is given, the OpenTelemetry layer
/// exporting spans at INFO and above to `<otlp_endpoint>/v1/traces` (OTLP/HTTP protobuf,
/// batched) as `service.name = hookline`, `service.instance.id = node_id`. An exporter that
/// cannot be set up is reported as a warning through the returned subscriber, which then
/// only logs.
pub fn subscriber(
    format: LogFormat,
    default_level: &str,
    otlp_endpoint: Option<&str>,
    node_id: &str,
) -> (tracing::Dispatch, TelemetryGuard) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let mut layers: Vec<BoxedLayer> = vec![match format {
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).with_current_span(true).with_filter(filter).boxed(),
    }];
    let mut guard = TelemetryGuard::default();
    let mut failure = None;
    if let Some(endpoint) = otlp_endpoint {
        match otel::provider(endpoint, node_id) {
            Ok(provider) => {
                layers.push(otel::layer(&provider).with_filter(TRACE_LEVEL).boxed());
                guard.provider = Some(provider);
            }
            Err(error) => failure = Some(error),
        }
    }
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layers));
    if let Some(error) = failure {
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::warn!(%error, "cannot export traces; logging only");
        });
    }
    (dispatch, guard)
}

/// Installs the global subscriber (see [`subscriber`]): logs at `default_level` unless
/// `RUST_LOG` says otherwise and, when `otlp_endpoint` is given, spans exported over
/// OTLP/HTTP to `<otlp_endpoint>/v1/traces`. Keep the guard for the life of the process;
/// dropping it exports the pending spans and stops exporting. A second call (tests starting
/// several nodes) is a no-op and returns a guard that does nothing.
pub fn init(format: LogFormat, default_level: &str, otlp_endpoint: Option<&str>, node_id: &str) -> TelemetryGuard {
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return TelemetryGuard::default();
    }
    let (dispatch, guard) = subscriber(format, default_level, otlp_endpoint, node_id);
    match dispatch.try_init() {
        Ok(()) => guard,
        // Someone else installed one: theirs stays, and our exporter has nothing to export.
        Err(_) => TelemetryGuard::default(),
    }
}
