//! Tracing set-up for a Hookline process: structured logs to stderr, as text or JSON, with
//! the level taken from `RUST_LOG` (default `info`). Spans carry ids (webhook, job,
//! attempt, record, trace) so one record's journey can be followed in the logs; exporting
//! spans over OTLP plugs in here.

pub mod metrics;

pub use metrics::Metrics;
use tracing_subscriber::EnvFilter;

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

/// Installs the global subscriber, logging at `default_level` unless `RUST_LOG` says
/// otherwise; a second call (tests starting several nodes) is a no-op.
pub fn init(format: LogFormat, default_level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
}
