//! Hookline's HTTP API (actix-web, JSON under `/v1`): data objects and records
//! ([`objects`]), webhook definitions ([`webhooks`]), the attempt log and dead letters
//! ([`attempts`]), and health and metrics ([`health`]). Errors become HTTP statuses in one
//! place, [`error`]. Request bodies are parsed by hand so a bad one gets a 4xx naming the
//! line and column or the field at fault.

// The OpenAPI document is one `json!` literal, deeper than the default limit.
#![recursion_limit = "512"]

pub mod attempts;
pub mod dashboard;
pub mod error;
pub mod health;
pub mod journey;
pub mod objects;
pub mod openapi;
pub mod webhooks;

use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{Next, from_fn};
use actix_web::web;
use hookline_model::FieldError;
use hookline_script::ScriptPool;
use hookline_store::Store;

pub use error::ApiError;

/// Largest accepted request body.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub scripts: ScriptPool,
    /// When set, `/v1` requires `Authorization: Bearer <token>`.
    pub api_token: Option<Arc<str>>,
    /// Seals webhook secrets at rest.
    pub secrets: hookline_secrets::SecretBox,
    /// This node's metrics, shown at `/metrics`.
    pub metrics: Arc<hookline_telemetry::Metrics>,
    /// The node's definitions, for `/readyz` (None: a node without an engine).
    pub catalog: Option<hookline_engine::catalog::CatalogView>,
    /// Every webhook's queue stats, read at most once a second whoever asks.
    pub queue_stats: Arc<health::StatsCache>,
    /// Jaeger's UI, for the dashboard's trace links.
    pub jaeger_url: Option<String>,
    /// The dashboard's per-webhook statistics, read at most every few seconds.
    pub dashboard_stats: Arc<dashboard::StatsCache>,
    /// Object definitions for record writes, read again when the definitions' version moves.
    pub objects: Arc<objects::ObjectCache>,
    /// Writes the single-record POSTs and PATCHes in flight together.
    pub records: Arc<hookline_engine::records::Batcher>,
}

/// Parses a JSON body; the error names the field at fault (`trigger.fields[0]`) and
/// serde's message the line and column.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    from_json(body).map_err(|(field, message)| match field {
        Some(field) => ApiError::BadShape(FieldError::new(field, format!("invalid request body: {message}"))),
        None => ApiError::BadJson(format!("invalid request body: {message}")),
    })
}

/// Parses JSON, telling the path of the value at fault (None: the document as a whole).
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, (Option<String>, String)> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = (path != "." && !path.is_empty()).then_some(path);
        (field, e.into_inner().to_string())
    })?;
    de.end().map_err(|e| (None, e.to_string()))?;
    Ok(value)
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let expected = req.app_data::<web::Data<ApiState>>().and_then(|s| s.api_token.clone());
    if let Some(expected) = expected {
        let given = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same(given.as_bytes(), expected.as_bytes()) {
            return Err(ApiError::Unauthorized.into());
        }
    }
    next.call(req).await
}

/// Mounts the routes; `state` is shared by all workers. Every node serves `/healthz`,
/// `/readyz` and `/metrics`; the `/v1` API only with `api`.
pub fn configure(state: ApiState, api: bool) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(web::Data::new(state))
            .app_data(web::PayloadConfig::new(MAX_BODY))
            // A bad query parameter answers like every other refusal, naming it.
            .app_data(web::QueryConfig::default().error_handler(|e, _| {
                let message = e.to_string();
                let field = message
                    .split('`')
                    .nth(1)
                    .filter(|_| message.contains("unknown field"))
                    .map_or_else(|| "query".to_string(), str::to_string);
                ApiError::Invalid(FieldError::new(field, message)).into()
            }))
            .route("/healthz", web::get().to(health::healthz))
            .route("/readyz", web::get().to(health::readyz))
            .route("/metrics", web::get().to(health::metrics));
        if api {
            // The API first: a request is matched against routes in order, and records are
            // what arrives most.
            cfg.service(
                web::scope("/v1")
                    .wrap(from_fn(require_token))
                    .route("/objects/{object}/records", web::post().to(objects::post_records))
                    .route("/objects", web::post().to(objects::put_object))
                    .route("/objects", web::get().to(objects::list_objects))
                    .route("/objects/{object}", web::get().to(objects::get_object))
                    .route("/objects/{object}", web::put().to(objects::replace_object))
                    .route("/objects/{object}/records/{id}", web::get().to(objects::get_record))
                    .route("/objects/{object}/records/{id}", web::patch().to(objects::patch_record))
                    .route("/objects/{object}/records/{id}/journey", web::get().to(journey::get))
                    .route("/webhooks", web::post().to(webhooks::create))
                    .route("/webhooks", web::get().to(webhooks::list))
                    .route("/webhooks/{id}", web::get().to(webhooks::get))
                    .route("/webhooks/{id}", web::put().to(webhooks::replace))
                    .route("/webhooks/{id}", web::delete().to(webhooks::delete))
                    .route("/webhooks/{id}/pause", web::post().to(webhooks::pause))
                    .route("/webhooks/{id}/resume", web::post().to(webhooks::resume))
                    .route("/webhooks/{id}/test", web::post().to(webhooks::test))
                    .route("/webhooks/{id}/attempts", web::get().to(attempts::list))
                    .route("/webhooks/{id}/dead-letters", web::get().to(attempts::dead_letters))
                    .route("/webhooks/{id}/dead-letters/redrive", web::post().to(attempts::redrive))
                    .route("/webhooks/{id}/writeback-failures", web::get().to(attempts::failed_writebacks))
                    .route("/webhooks/{id}/writeback-failures/redrive", web::post().to(attempts::redrive_writebacks))
                    .route("/attempts/{id}", web::get().to(attempts::get)),
            );
            cfg.configure(dashboard::routes).route("/openapi.json", web::get().to(openapi::serve));
        }
        cfg.default_service(web::to(|| async {
            Err::<actix_web::HttpResponse, _>(ApiError::NotFound("no such route".into()))
        }));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_comparison() {
        assert!(super::same(b"abc", b"abc"));
        assert!(!super::same(b"abc", b"abd"));
        assert!(!super::same(b"abc", b"ab"));
    }
}
