//! Liveness, readiness and Prometheus metrics.

use std::fmt::Write;

use actix_web::{HttpResponse, web};

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

/// This node's counters, plus the queue depth of every webhook (cluster-wide, from the store).
pub async fn metrics(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let mut out = String::new();
    state.metrics.render(&mut out);
    let now = hookline_store::now_ms();
    let mut depth = String::from(
        "# HELP hookline_queue_depth Jobs waiting per webhook (ready and delayed).\n# TYPE hookline_queue_depth gauge\n",
    );
    let mut age = String::from(
        "# HELP hookline_oldest_job_age_seconds Age of the oldest job on the queue.\n\
         # TYPE hookline_oldest_job_age_seconds gauge\n",
    );
    for wh in state.store.list_webhooks().await? {
        let id = &wh.definition.id;
        let _ = writeln!(depth, "hookline_queue_depth{{webhook=\"{id}\"}} {}", state.store.queue_depth(id).await?);
        let oldest = state.store.oldest_job_ms(id).await?.map(|ms| (now - ms).max(0) as f64 / 1000.0).unwrap_or(0.0);
        let _ = writeln!(age, "hookline_oldest_job_age_seconds{{webhook=\"{id}\"}} {oldest}");
    }
    out.push_str(&depth);
    out.push_str(&age);
    Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(out))
}
