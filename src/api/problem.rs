//! The one place errors become HTTP: `application/problem+json` bodies (RFC 9457).

use axum::body::to_bytes;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// An error answer, as every failing endpoint returns it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"type": "urn:vae-serve:problem:not-found", "title": "Not Found", "status": 404, "detail": "no route for GET /nope"}))]
pub struct Problem {
    /// A URN naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP status phrase.
    pub title: String,
    pub status: u16,
    /// What went wrong, for a person.
    pub detail: String,
}

/// Errors the HTTP layer answers with; lower layers' errors convert into these.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{detail}")]
    TooManyRequests { detail: String, retry_after_secs: u64 },
    #[error("{detail}")]
    Unavailable { detail: String, retry_after_secs: u64 },
    #[error("{0}")]
    Internal(String),
}

impl From<crate::storage::StorageError> for ApiError {
    fn from(error: crate::storage::StorageError) -> Self {
        if error.is_unreachable() {
            Self::Unavailable { detail: error.to_string(), retry_after_secs: 5 }
        } else {
            Self::Internal(error.to_string())
        }
    }
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let mut response = problem_response(self.status(), self.to_string());
        if let Self::Unavailable { retry_after_secs, .. } | Self::TooManyRequests { retry_after_secs, .. } = self {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        response
    }
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        let title = status.canonical_reason().unwrap_or("Error").to_string();
        let slug = title.to_ascii_lowercase().replace(' ', "-");
        Problem { kind: format!("urn:vae-serve:problem:{slug}"), title, status: status.as_u16(), detail: detail.into() }
    }
}

/// A problem response for `status` with `detail`.
pub fn problem_response(status: StatusCode, detail: impl Into<String>) -> Response {
    let body = serde_json::to_vec(&Problem::new(status, detail)).expect("problem serialises");
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE))], body).into_response()
}

/// Error answers made outside our handlers (body limit, timeout, extractor rejections) arrive as
/// plain text or empty bodies; this turns them into problem bodies, keeping their text as detail.
pub async fn problem_for_bare_errors(response: Response) -> Response {
    let status = response.status();
    // Our own error answers (problems, and JSON bodies such as /readyz's) pass through.
    let is_json = response.headers().get(header::CONTENT_TYPE).and_then(|ct| ct.to_str().ok()).is_some_and(|ct| {
        let essence = ct.split(';').next().unwrap_or("").trim();
        essence == PROBLEM_CONTENT_TYPE || essence == "application/json"
    });
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = to_bytes(body, 16 * 1024).await.map(|b| String::from_utf8_lossy(&b).trim().to_string()).unwrap_or_default();
    let detail = match (status, text.is_empty()) {
        (StatusCode::PAYLOAD_TOO_LARGE, _) => "request body is larger than the configured limit (VAE_MAX_BODY_BYTES)".to_string(),
        (StatusCode::REQUEST_TIMEOUT, true) => "request took longer than the configured limit (VAE_REQUEST_TIMEOUT_SECS)".to_string(),
        (_, true) => status.canonical_reason().unwrap_or("error").to_string(),
        (_, false) => text,
    };
    let mut rebuilt = problem_response(status, detail);
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rebuilt.headers_mut().append(name.clone(), value.clone());
        }
    }
    rebuilt
}
