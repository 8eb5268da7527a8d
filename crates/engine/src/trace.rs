//! W3C trace context carried by every change and job, so one record's journey can be
//! followed across nodes and retries (`traceparent: 00-<trace id>-<span id>-01`).

use rand::Rng;

/// Appends `bytes` to `out` as lowercase hex.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
}

/// `00-<trace>-<random span id>-01`, built in one allocation (this runs once per call).
fn traceparent(trace: &str) -> String {
    let span: [u8; 8] = rand::rng().random();
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    out.push_str(trace);
    out.push('-');
    push_hex(&mut out, &span);
    out.push_str("-01");
    out
}

/// A traceparent starting a new trace.
pub fn new_traceparent() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    let mut trace = String::with_capacity(32);
    push_hex(&mut trace, &bytes);
    traceparent(&trace)
}

/// A traceparent for a child span of `parent` (same trace, new span id); a new trace when
/// `parent` is not a valid traceparent.
pub fn child_of(parent: &str) -> String {
    match trace_id(parent) {
        Some(trace) => traceparent(trace),
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

/// Makes `span` a child of `parent`, handing nothing on (the span's own calls take their
/// traceparent when they need one).
pub fn join(span: &tracing::Span, parent: &str) {
    hookline_telemetry::set_parent(span, parent);
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
