//! The one place where errors become HTTP statuses: `{"error": {"code", "message", "field"?}}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use hookline_engine::records::RecordError;
use hookline_model::FieldError;
use hookline_store::StoreError;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not valid JSON or not of the expected shape (serde names the position).
    #[error("{0}")]
    BadJson(String),
    /// The body is JSON, but a value in it is not of the expected type; `field` names it.
    #[error("{}", .0.message)]
    BadShape(FieldError),
    /// A value, definition or parameter is refused; `field` names it.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The request would break something that depends on what it changes (a data object's
    /// field a webhook uses); `field` names the part of the request at fault.
    #[error("{}", .0.message)]
    InUse(FieldError),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => ApiError::Unavailable(m),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<RecordError> for ApiError {
    fn from(e: RecordError) -> Self {
        match e {
            RecordError::Invalid(f) => ApiError::Invalid(f),
            e @ RecordError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            e @ RecordError::Contended { .. } => ApiError::Conflict(e.to_string()),
            RecordError::Store(s) => s.into(),
        }
    }
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            ApiError::BadJson(_) | ApiError::BadShape(_) => "bad_json",
            ApiError::Invalid(_) => "invalid",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::InUse(_) => "in_use",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadJson(_) | ApiError::BadShape(_) => StatusCode::BAD_REQUEST,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) | ApiError::InUse(_) => StatusCode::CONFLICT,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut error = json!({"code": self.code(), "message": self.to_string()});
        if let ApiError::Invalid(f) | ApiError::InUse(f) | ApiError::BadShape(f) = self {
            error["field"] = json!(f.field);
            error["message"] = json!(f.message);
        }
        if self.status_code().is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        HttpResponse::build(self.status_code()).json(json!({ "error": error }))
    }
}
