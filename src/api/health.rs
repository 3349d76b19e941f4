//! Liveness, readiness and metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// What readiness depends on, and its state.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` when every check passes, otherwise `not-ready`.
    #[schema(example = "ready")]
    pub status: &'static str,
    /// What this replica does (`all`, `api` or `worker`); a worker needs no model to be ready.
    pub role: crate::config::Role,
    /// The database answers queries.
    pub storage: bool,
    /// The default model is loaded and can answer inference requests.
    pub default_model: bool,
    /// Which model is the default (`name@version`), once resolved.
    pub default_model_id: Option<String>,
    /// Why the default model is not loaded, when it is not.
    pub default_model_error: Option<String>,
    /// The torch device used for inference.
    #[schema(example = "Cpu")]
    pub device: String,
    #[schema(example = "2.11.0")]
    pub torch_version: &'static str,
}

/// Liveness: the process answers HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: storage is open and, unless this replica only trains, the default model is loaded.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "ready", body = Readiness),
    (status = 503, description = "not ready yet, or broken", body = Readiness),
))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let storage = state.storage.ping().await.is_ok();
    let model = state.models.default_model_status();
    let ready = state.ready_with(storage, model.loaded);
    let body = Readiness {
        status: if ready { "ready" } else { "not-ready" },
        role: state.role,
        storage,
        default_model: model.loaded,
        default_model_id: model.id,
        default_model_error: model.error,
        device: format!("{:?}", state.runtime.device),
        torch_version: crate::runtime::torch_version(),
    };
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body))
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "Prometheus text format", content_type = "text/plain; version=0.0.4", body = String),
))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let jobs = state.jobs.clone();
    if let Err(error) = super::blocking(move || jobs.refresh_metrics()).await.and_then(|r| r.map_err(Into::into)) {
        tracing::warn!(%error, "cannot count jobs for the metrics");
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
}
