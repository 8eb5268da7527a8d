//! This node's metrics, rendered as Prometheus text at `/metrics`: a handful of counters,
//! gauges and one histogram keyed by webhook, with no global registry (the node owns one
//! [`Metrics`] and hands it to whoever records).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the attempt latency histogram.
const BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Inner {
    /// webhook → outcome → attempts
    attempts: BTreeMap<String, BTreeMap<String, u64>>,
    latency: BTreeMap<String, Histogram>,
    retries: BTreeMap<String, u64>,
    dead_letters: BTreeMap<String, u64>,
    script_errors: BTreeMap<String, u64>,
    token_refreshes: BTreeMap<String, u64>,
    schedule_runs: BTreeMap<String, u64>,
    scheduled_records: BTreeMap<String, u64>,
    /// Records whose change fired the webhook, enqueued by this node's trigger.
    records_fired: BTreeMap<String, u64>,
    /// webhook → (in flight on this node, limit)
    in_flight: BTreeMap<String, (i64, u64)>,
    permit_losses: BTreeMap<String, u64>,
    taken_over: BTreeMap<String, u64>,
    writeback_retries: BTreeMap<String, u64>,
    writeback_hop_limits: BTreeMap<String, u64>,
    writebacks_done: BTreeMap<String, u64>,
    writeback_failures: BTreeMap<String, u64>,
    /// Webhooks this node cannot load.
    broken: Vec<String>,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// The value under `key`, inserted (default) if absent; the key is copied only then (this
/// runs several times per delivery).
fn slot<'a, V: Default>(map: &'a mut BTreeMap<String, V>, key: &str) -> &'a mut V {
    if !map.contains_key(key) {
        map.insert(key.to_string(), V::default());
    }
    map.get_mut(key).expect("inserted above")
}

fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    *slot(map, key) += 1;
}

/// Label values are webhook ids and outcomes (`[A-Za-z0-9_.-]`), but escape anyway.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        // A panic while holding the lock leaves counters usable.
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn attempt(&self, webhook: &str, outcome: &str, latency: Duration) {
        self.with(|m| {
            *slot(slot(&mut m.attempts, webhook), outcome) += 1;
            let h = slot(&mut m.latency, webhook);
            let secs = latency.as_secs_f64();
            for (i, bound) in BUCKETS.iter().enumerate() {
                if secs <= *bound {
                    h.counts[i] += 1;
                }
            }
            h.sum += secs;
            h.count += 1;
        });
    }

    /// `records` records whose changes fired `webhook` are queued.
    pub fn records_fired(&self, webhook: &str, records: u64) {
        self.with(|m| *slot(&mut m.records_fired, webhook) += records);
    }

    pub fn retry_scheduled(&self, webhook: &str) {
        self.with(|m| bump(&mut m.retries, webhook));
    }

    pub fn dead_lettered(&self, webhook: &str) {
        self.with(|m| bump(&mut m.dead_letters, webhook));
    }

    pub fn script_error(&self, webhook: &str) {
        self.with(|m| bump(&mut m.script_errors, webhook));
    }

    pub fn token_refreshed(&self, webhook: &str) {
        self.with(|m| bump(&mut m.token_refreshes, webhook));
    }

    /// This node ran a scheduled webhook's tick to its end, enqueueing `records` jobs.
    pub fn schedule_run(&self, webhook: &str, records: u64) {
        self.with(|m| {
            bump(&mut m.schedule_runs, webhook);
            *slot(&mut m.scheduled_records, webhook) += records;
        });
    }

    /// A delivery started (+1) or ended (-1) on this node.
    pub fn in_flight(&self, webhook: &str, delta: i64, limit: u64) {
        self.with(|m| {
            let e = slot(&mut m.in_flight, webhook);
            e.0 += delta;
            e.1 = limit;
        });
    }

    /// This node lost `n` concurrency permits of `webhook` (a renewal failed or came too
    /// late): it stopped sending under them.
    /// Requests in flight on this node, per webhook.
    pub fn in_flight_now(&self) -> BTreeMap<String, i64> {
        self.with(|m| m.in_flight.iter().map(|(w, (n, _))| (w.clone(), *n)).collect())
    }

    pub fn permits_lost(&self, webhook: &str, n: u64) {
        self.with(|m| *slot(&mut m.permit_losses, webhook) += n);
    }

    /// This node took over `n` jobs of `webhook` that a stopped node had been handed.
    pub fn taken_over(&self, webhook: &str, n: u64) {
        self.with(|m| *slot(&mut m.taken_over, webhook) += n);
    }

    /// A write-back of `webhook` failed for a passing reason and will be tried again.
    pub fn writeback_retried(&self, webhook: &str) {
        self.with(|m| bump(&mut m.writeback_retries, webhook));
    }

    /// A change written back by `webhook` reached the write-back hop limit and fired nothing.
    pub fn writeback_hop_limit(&self, webhook: &str) {
        self.with(|m| bump(&mut m.writeback_hop_limits, webhook));
    }

    /// A write-back of `webhook` finished: every record it named was written.
    pub fn writeback_done(&self, webhook: &str) {
        self.with(|m| bump(&mut m.writebacks_done, webhook));
    }

    /// A write-back of `webhook` failed for good (kept among its failed write-backs).
    pub fn writeback_failed(&self, webhook: &str) {
        self.with(|m| bump(&mut m.writeback_failures, webhook));
    }

    /// The webhooks this node cannot load now (replaces the previous list).
    pub fn set_broken(&self, webhooks: Vec<String>) {
        self.with(|m| m.broken = webhooks);
    }

    /// The webhooks this node cannot load now.
    pub fn broken(&self) -> Vec<String> {
        self.with(|m| m.broken.clone())
    }

    /// Appends this node's metrics in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        self.with(|m| {
            let counter = |out: &mut String, name: &str, help: &str, map: &BTreeMap<String, u64>| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
                for (wh, n) in map {
                    let _ = writeln!(out, "{name}{{webhook=\"{}\"}} {n}", label(wh));
                }
            };
            let _ = writeln!(out, "# HELP hookline_attempts_total Delivery attempts by outcome.");
            let _ = writeln!(out, "# TYPE hookline_attempts_total counter");
            for (wh, outcome, n) in m.attempts.iter().flat_map(|(wh, o)| o.iter().map(move |(o, n)| (wh, o, n))) {
                let _ = writeln!(
                    out,
                    "hookline_attempts_total{{webhook=\"{}\",outcome=\"{}\"}} {n}",
                    label(wh),
                    label(outcome)
                );
            }
            let _ = writeln!(out, "# HELP hookline_attempt_duration_seconds Attempt latency, request to response.");
            let _ = writeln!(out, "# TYPE hookline_attempt_duration_seconds histogram");
            for (wh, h) in &m.latency {
                let wh = label(wh);
                for (i, bound) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "hookline_attempt_duration_seconds_bucket{{webhook=\"{wh}\",le=\"{bound}\"}} {}",
                        h.counts[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "hookline_attempt_duration_seconds_bucket{{webhook=\"{wh}\",le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(out, "hookline_attempt_duration_seconds_sum{{webhook=\"{wh}\"}} {}", h.sum);
                let _ = writeln!(out, "hookline_attempt_duration_seconds_count{{webhook=\"{wh}\"}} {}", h.count);
            }
            counter(
                out,
                "hookline_records_fired_total",
                "Records whose change fired the webhook, queued by this node's trigger.",
                &m.records_fired,
            );
            counter(out, "hookline_retries_scheduled_total", "Retries scheduled.", &m.retries);
            counter(out, "hookline_dead_letters_total", "Jobs dead-lettered.", &m.dead_letters);
            counter(out, "hookline_script_errors_total", "Script failures (body, header, response).", &m.script_errors);
            counter(out, "hookline_token_refreshes_total", "OAuth tokens fetched.", &m.token_refreshes);
            counter(out, "hookline_schedule_runs_total", "Scheduled ticks run by this node.", &m.schedule_runs);
            counter(
                out,
                "hookline_scheduled_records_total",
                "Records enqueued by scheduled ticks on this node.",
                &m.scheduled_records,
            );
            counter(
                out,
                "hookline_permit_losses_total",
                "Concurrency permits this node lost (renewal failed or late) and stopped sending under.",
                &m.permit_losses,
            );
            counter(out, "hookline_jobs_taken_over_total", "Jobs taken over from stopped nodes.", &m.taken_over);
            counter(out, "hookline_writebacks_total", "Write-backs finished on this node.", &m.writebacks_done);
            counter(out, "hookline_writeback_retries_total", "Write-backs tried again after a passing failure.", &m.writeback_retries);
            counter(out, "hookline_writeback_hop_limit_total", "Changes written back at the hop limit, which fired no webhook (by the webhook that wrote them).", &m.writeback_hop_limits);
            counter(out, "hookline_writeback_failures_total", "Write-backs that failed for good.", &m.writeback_failures);
            let _ = writeln!(out, "# HELP hookline_webhook_load_errors Webhooks this node cannot load (1 each): their objects' changes wait.");
            let _ = writeln!(out, "# TYPE hookline_webhook_load_errors gauge");
            for wh in &m.broken {
                let _ = writeln!(out, "hookline_webhook_load_errors{{webhook=\"{}\"}} 1", label(wh));
            }
            let _ = writeln!(out, "# HELP hookline_in_flight Requests in flight on this node.");
            let _ = writeln!(out, "# TYPE hookline_in_flight gauge");
            for (wh, (n, _)) in &m.in_flight {
                let _ = writeln!(out, "hookline_in_flight{{webhook=\"{}\"}} {n}", label(wh));
            }
            let _ = writeln!(out, "# HELP hookline_concurrency_limit The webhook's max_concurrency (cluster-wide).");
            let _ = writeln!(out, "# TYPE hookline_concurrency_limit gauge");
            for (wh, (_, limit)) in &m.in_flight {
                let _ = writeln!(out, "hookline_concurrency_limit{{webhook=\"{}\"}} {limit}", label(wh));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let m = Metrics::default();
        m.attempt("it", "success", Duration::from_millis(30));
        m.attempt("it", "success", Duration::from_millis(3));
        m.attempt("it", "retry_scheduled", Duration::from_secs(1));
        m.retry_scheduled("it");
        m.in_flight("it", 1, 4);
        m.schedule_run("it", 40);
        m.schedule_run("it", 2);
        m.records_fired("it", 100);
        m.records_fired("it", 3);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("hookline_attempts_total{webhook=\"it\",outcome=\"success\"} 2"), "{out}");
        assert!(out.contains("hookline_attempt_duration_seconds_bucket{webhook=\"it\",le=\"0.005\"} 1"), "{out}");
        assert!(out.contains("hookline_attempt_duration_seconds_bucket{webhook=\"it\",le=\"0.05\"} 2"), "{out}");
        assert!(out.contains("hookline_attempt_duration_seconds_bucket{webhook=\"it\",le=\"+Inf\"} 3"), "{out}");
        assert!(out.contains("hookline_retries_scheduled_total{webhook=\"it\"} 1"));
        assert!(out.contains("hookline_in_flight{webhook=\"it\"} 1"));
        assert!(out.contains("hookline_schedule_runs_total{webhook=\"it\"} 2"), "{out}");
        assert!(out.contains("hookline_scheduled_records_total{webhook=\"it\"} 42"), "{out}");
        assert!(out.contains("hookline_concurrency_limit{webhook=\"it\"} 4"));
        assert!(out.contains("hookline_records_fired_total{webhook=\"it\"} 103"), "{out}");
    }
}
