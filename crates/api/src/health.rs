//! Liveness, readiness and Prometheus metrics.

use std::fmt::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{HttpResponse, web};

use hookline_store::QueueStats;

use crate::{ApiError, ApiState};

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// Ready when the store answers and every webhook loads on this node (one whose secrets do
/// not open with this node's key, or that no longer compiles, holds its object's changes).
pub async fn readyz(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    state.store.ping().await?;
    if let Some(catalog) = &state.catalog {
        let catalog = catalog.current();
        if !catalog.broken.is_empty() {
            let broken: Vec<serde_json::Value> = catalog
                .broken
                .iter()
                .map(|(id, b)| serde_json::json!({"webhook": id, "object": b.object, "reason": b.reason}))
                .collect();
            return Ok(HttpResponse::ServiceUnavailable()
                .json(serde_json::json!({"status": "not ready", "webhooks_not_loaded": broken})));
        }
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ready"})))
}

/// How old the queue stats `/metrics` shows may be.
const STATS_FRESH: Duration = Duration::from_secs(1);

/// The newest queue stats of every webhook, shared by scrapes (and the dashboard): however
/// many webhooks exist and however often they are asked for, the store is asked at most once
/// per [`STATS_FRESH`], in one step ([`hookline_store::Store::queue_stats`]).
#[derive(Default)]
pub struct StatsCache {
    latest: tokio::sync::Mutex<Option<(Instant, Arc<AllStats>)>>,
}

/// Each webhook's id with its queue stats, by id.
pub type AllStats = Vec<(String, QueueStats)>;

impl StatsCache {
    pub async fn get(&self, state: &ApiState) -> Result<Arc<AllStats>, ApiError> {
        // Held across the refresh, so concurrent askers wait for one read instead of each
        // making their own.
        let mut latest = self.latest.lock().await;
        if let Some((at, stats)) = latest.as_ref()
            && at.elapsed() < STATS_FRESH
        {
            return Ok(stats.clone());
        }
        let mut ids: Vec<String> = match &state.catalog {
            Some(catalog) => {
                let catalog = catalog.current();
                catalog.webhooks.keys().chain(catalog.broken.keys()).cloned().collect()
            }
            None => state.store.list_webhooks().await?.into_iter().map(|w| w.definition.id).collect(),
        };
        ids.sort_unstable();
        ids.dedup();
        let stats = state.store.queue_stats(&ids).await?;
        let stats: Arc<AllStats> = Arc::new(ids.into_iter().zip(stats).collect());
        *latest = Some((Instant::now(), stats.clone()));
        Ok(stats)
    }
}

/// This node's counters, plus every webhook's queue depth, oldest job age and dead letters
/// (cluster-wide, from the store, at most a second old).
pub async fn metrics(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let mut out = String::new();
    state.metrics.render(&mut out);
    let now = hookline_store::now_ms();
    let stats = state.queue_stats.get(&state).await?;
    let mut depth = String::from(
        "# HELP hookline_queue_depth Jobs waiting per webhook (ready and delayed).\n# TYPE hookline_queue_depth gauge\n",
    );
    let mut age = String::from(
        "# HELP hookline_oldest_job_age_seconds Age of the oldest job on the queue.\n\
         # TYPE hookline_oldest_job_age_seconds gauge\n",
    );
    let mut flight = String::from(
        "# HELP hookline_cluster_in_flight Calls in flight per webhook across the cluster, as the dispatcher nodes report them.\n\
         # TYPE hookline_cluster_in_flight gauge\n",
    );
    let mut dead = String::from(
        "# HELP hookline_dead_letters Jobs in the dead letters per webhook.\n# TYPE hookline_dead_letters gauge\n",
    );
    for (id, s) in stats.iter() {
        let id = hookline_telemetry::metrics::label(id);
        let _ = writeln!(depth, "hookline_queue_depth{{webhook=\"{id}\"}} {}", s.depth);
        let oldest = s.oldest_ms.map(|ms| (now - ms).max(0) as f64 / 1000.0).unwrap_or(0.0);
        let _ = writeln!(age, "hookline_oldest_job_age_seconds{{webhook=\"{id}\"}} {oldest}");
        let _ = writeln!(dead, "hookline_dead_letters{{webhook=\"{id}\"}} {}", s.dead_letters);
        let _ = writeln!(flight, "hookline_cluster_in_flight{{webhook=\"{id}\"}} {}", s.in_flight);
    }
    out.push_str(&depth);
    out.push_str(&age);
    out.push_str(&dead);
    out.push_str(&flight);
    Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(out))
}
