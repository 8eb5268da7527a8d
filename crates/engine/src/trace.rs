//! W3C trace context carried by every change and job, so one record's journey can be
//! followed across nodes and retries (`traceparent: 00-<trace id>-<span id>-01`).

use rand::Rng;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A traceparent starting a new trace.
pub fn new_traceparent() -> String {
    let mut rng = rand::rng();
    let trace: [u8; 16] = rng.random();
    let span: [u8; 8] = rng.random();
    format!("00-{}-{}-01", hex(&trace), hex(&span))
}

/// A traceparent for a child span of `parent` (same trace, new span id); a new trace when
/// `parent` is not a valid traceparent.
pub fn child_of(parent: &str) -> String {
    match trace_id(parent) {
        Some(trace) => {
            let span: [u8; 8] = rand::rng().random();
            format!("00-{trace}-{}-01", hex(&span))
        }
        None => new_traceparent(),
    }
}

/// The traceparent of `span`, which starts a trace: its OpenTelemetry context when spans
/// are exported, else a fresh random one (so ids still flow through jobs and logs).
pub fn start(span: &tracing::Span) -> String {
    hookline_telemetry::traceparent_of(span).unwrap_or_else(new_traceparent)
}

/// Makes `span` a child of `parent` (work resumed from a queue, on any node, at any later
/// time) and returns the traceparent to hand on from it.
pub fn resume(span: &tracing::Span, parent: &str) -> String {
    hookline_telemetry::set_parent(span, parent);
    hookline_telemetry::traceparent_of(span).unwrap_or_else(|| child_of(parent))
}

/// The trace id of a traceparent, for span fields and logs.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (_version, trace) = (parts.next()?, parts.next()?);
    (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit())).then_some(trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_keep_the_trace() {
        let root = new_traceparent();
        assert_eq!(root.len(), 55);
        let child = child_of(&root);
        assert_eq!(trace_id(&child), trace_id(&root));
        assert_ne!(child, root);
        assert!(trace_id("garbage").is_none());
        assert!(trace_id(&child_of("garbage")).is_some());
    }
}
