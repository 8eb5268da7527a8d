//! Tracing set-up: structured logs (and, later, OTLP export and metrics).
