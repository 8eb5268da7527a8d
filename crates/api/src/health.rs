//! Liveness, readiness and Prometheus metrics.

use std::fmt::Write;

use actix_web::{HttpResponse, web};

use crate::{ApiError, ApiState};

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// Ready when the store answers.
pub async fn readyz(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    state.store.ping().await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ready"})))
}

/// This node's counters, plus the queue depth of every webhook (cluster-wide, from the store).
pub async fn metrics(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let mut out = String::new();
    state.metrics.render(&mut out);
    let _ = writeln!(out, "# HELP hookline_queue_depth Jobs waiting per webhook (ready and delayed).");
    let _ = writeln!(out, "# TYPE hookline_queue_depth gauge");
    for wh in state.store.list_webhooks().await? {
        let depth = state.store.queue_depth(&wh.definition.id).await?;
        let _ = writeln!(out, "hookline_queue_depth{{webhook=\"{}\"}} {depth}", wh.definition.id);
    }
    Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(out))
}
