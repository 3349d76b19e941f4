//! The Open Inference Protocol's REST routes (`/v2/...`), beside the service's own API: the
//! same models, batching queues and metrics. Handlers translate between HTTP and `oip`; errors
//! are the shared `ApiError`s, which `v2_error_bodies` rewrites as the protocol's
//! `{"error": "..."}`.

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::inference::Model;
use super::problem::{ApiError, Problem, PROBLEM_CONTENT_TYPE};
use super::{blocking, AppState};
use crate::inference::{InferenceError, LoadState, ModelRef};
use crate::models::artifact;
use crate::oip::{self, rest, ModelMetadata, OipError};

pub const HEADER_LENGTH: HeaderName = HeaderName::from_static("inference-header-content-length");

impl From<OipError> for ApiError {
    fn from(error: OipError) -> Self {
        match error {
            OipError::BadRequest(detail) => ApiError::BadRequest(detail),
            OipError::Inference(error) => error.into(),
            OipError::Internal(detail) => ApiError::Internal(detail),
        }
    }
}

/// A V2 error answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct V2Error {
    pub error: String,
}

/// Under `/v2`, error answers of every layer (handlers, API key, body limit, timeout, routing)
/// take the protocol's form, `{"error": "<detail>"}`, with their status and headers kept.
pub async fn v2_error_bodies(request: Request, next: Next) -> Response {
    let is_v2 = request.uri().path() == "/v2" || request.uri().path().starts_with("/v2/");
    let response = next.run(request).await;
    let is_problem =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|ct| ct.as_bytes().starts_with(PROBLEM_CONTENT_TYPE.as_bytes()));
    if !is_v2 || !is_problem {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let detail = match to_bytes(body, 64 * 1024).await.ok().and_then(|b| serde_json::from_slice::<Problem>(&b).ok()) {
        Some(problem) => problem.detail,
        None => parts.status.canonical_reason().unwrap_or("error").to_string(),
    };
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = serde_json::to_vec(&V2Error { error: detail }).expect("an error serialises");
    Response::from_parts(parts, Body::from(body))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ServerMetadata {
    #[schema(example = "vae-serve")]
    pub name: &'static str,
    pub version: &'static str,
    /// Protocol extensions implemented: `binary_tensor_data`, `model_repository`.
    pub extensions: Vec<&'static str>,
}

/// Server metadata: name, version and protocol extensions.
#[utoipa::path(get, path = "/v2", tag = "open-inference-protocol", responses((status = 200, body = ServerMetadata)))]
pub async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata { name: "vae-serve", version: env!("CARGO_PKG_VERSION"), extensions: oip::EXTENSIONS.to_vec() })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Live {
    pub live: bool,
}

/// Server liveness: the process answers HTTP.
#[utoipa::path(get, path = "/v2/health/live", tag = "open-inference-protocol", responses((status = 200, body = Live)))]
pub async fn live() -> Json<Live> {
    Json(Live { live: true })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    pub ready: bool,
}

/// Server readiness, as /readyz: storage answers and the default model is loaded.
#[utoipa::path(get, path = "/v2/health/ready", tag = "open-inference-protocol", responses(
    (status = 200, description = "ready", body = Ready),
    (status = 503, description = "not ready", body = Ready),
))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Ready>) {
    let ready = state.is_ready().await;
    (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(Ready { ready }))
}

/// Whether any version of `name` is published.
async fn is_published(state: &AppState, name: &str) -> Result<bool, ApiError> {
    artifact::validate_name(name).map_err(|e| ApiError::NotFound(e.to_string()))?;
    let (models_dir, name) = (state.models_dir.clone(), name.to_string());
    blocking(move || !artifact::versions(&models_dir, &name).is_empty()).await
}

/// Model metadata: versions, and every input and output with datatype and shape (`-1`: batch).
#[utoipa::path(get, path = "/v2/models/{name}", tag = "open-inference-protocol", params(("name" = String, Path, description = "Model name", example = "mnist-ssvae")), responses(
    (status = 200, body = ModelMetadata),
    (status = 404, description = "no such model", body = V2Error),
    (status = 503, description = "the model cannot be loaded", body = V2Error),
))]
pub async fn model_metadata(State(state): State<AppState>, Model(model): Model) -> Result<Json<ModelMetadata>, ApiError> {
    Ok(Json(oip::describe(&state.models, &state.models_dir, &model).await?))
}

/// Model metadata of one version.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}", tag = "open-inference-protocol", params(("name" = String, Path, description = "Model name", example = "mnist-ssvae"), ("version" = String, Path, description = "Model version", example = "1")), responses(
    (status = 200, body = ModelMetadata),
    (status = 404, description = "no such model or version", body = V2Error),
    (status = 503, description = "the model cannot be loaded", body = V2Error),
))]
pub async fn version_metadata(state: State<AppState>, model: Model) -> Result<Json<ModelMetadata>, ApiError> {
    model_metadata(state, model).await
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelReady {
    pub name: String,
    pub ready: bool,
}

/// Model readiness. Models load on first use, so asking loads the model (and answers once it
/// is loaded, or has failed to).
#[utoipa::path(get, path = "/v2/models/{name}/ready", tag = "open-inference-protocol", params(("name" = String, Path, description = "Model name", example = "mnist-ssvae")), responses(
    (status = 200, description = "loaded", body = ModelReady),
    (status = 404, description = "no such model", body = V2Error),
    (status = 503, description = "the model cannot be loaded", body = ModelReady),
))]
pub async fn model_ready(State(state): State<AppState>, Model(model): Model) -> Result<Response, ApiError> {
    let name = match &model {
        ModelRef::Named { name, .. } => name.clone(),
        ModelRef::Default => state.models.default_spec(),
    };
    match state.models.get(&model).await {
        Ok(_) => Ok(Json(ModelReady { name, ready: true }).into_response()),
        Err(InferenceError::LoadFailed { .. }) => {
            Ok((StatusCode::SERVICE_UNAVAILABLE, Json(ModelReady { name, ready: false })).into_response())
        }
        Err(other) => Err(other.into()),
    }
}

/// Readiness of one version.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/ready", tag = "open-inference-protocol", params(("name" = String, Path, description = "Model name", example = "mnist-ssvae"), ("version" = String, Path, description = "Model version", example = "1")), responses(
    (status = 200, description = "loaded", body = ModelReady),
    (status = 404, description = "no such model or version", body = V2Error),
    (status = 503, description = "the model cannot be loaded", body = ModelReady),
))]
pub async fn version_ready(state: State<AppState>, model: Model) -> Result<Response, ApiError> {
    model_ready(state, model).await
}

/// Inference. The body is the protocol's JSON request, or with `Inference-Header-Content-Length`
/// a JSON header followed by binary tensors; any content type (or none) is accepted.
#[utoipa::path(post, path = "/v2/models/{name}/infer", tag = "open-inference-protocol", params(("name" = String, Path, description = "Model name", example = "mnist-ssvae"), ("Inference-Header-Content-Length" = Option<usize>, Header, description = "length of the JSON header when binary tensors follow it")),
    request_body(content = Object, description = "inference request: `inputs` (`name`, `shape`, `datatype`, `data` or `parameters.binary_data_size`), optional `id`, `parameters` and `outputs`", content_type = "application/json"),
    responses(
        (status = 200, description = "outputs as JSON, or a JSON header followed by binary tensors (Inference-Header-Content-Length)", body = Object),
        (status = 400, description = "a malformed request: unknown input or output, wrong shape or datatype, bad binary data", body = V2Error),
        (status = 404, description = "no such model", body = V2Error),
        (status = 503, description = "the model cannot be loaded, or its queue is full", body = V2Error),
    ))]
pub async fn infer(State(state): State<AppState>, Model(model): Model, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let header_length = headers
        .get(&HEADER_LENGTH)
        .map(|v| v.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()))
        .map(|v| v.ok_or_else(|| ApiError::BadRequest("Inference-Header-Content-Length must be a byte count".into())))
        .transpose()?;
    let (request, encoding) = rest::parse_request(&body, header_length)?;
    drop(body);
    let serving = state.models.get(&model).await?;
    let response = oip::infer(&serving, request).await?;
    let encoded = rest::encode_response(&response, &encoding);
    let mut answer = Response::new(Body::from(encoded.body));
    let content_type = match encoded.header_length {
        Some(length) => {
            answer.headers_mut().insert(HEADER_LENGTH, HeaderValue::from(length));
            "application/octet-stream"
        }
        None => "application/json",
    };
    answer.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(answer)
}

/// Inference on one version.
#[utoipa::path(post, path = "/v2/models/{name}/versions/{version}/infer", tag = "open-inference-protocol", params(("name" = String, Path, description = "Model name", example = "mnist-ssvae"), ("version" = String, Path, description = "Model version", example = "1"), ("Inference-Header-Content-Length" = Option<usize>, Header, description = "length of the JSON header when binary tensors follow it")),
    request_body(content = Object, description = "inference request, as for the unversioned route", content_type = "application/json"),
    responses(
        (status = 200, description = "outputs", body = Object),
        (status = 400, description = "a malformed request", body = V2Error),
        (status = 404, description = "no such model or version", body = V2Error),
        (status = 503, description = "the model cannot be loaded, or its queue is full", body = V2Error),
    ))]
pub async fn version_infer(state: State<AppState>, model: Model, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    infer(state, model, headers, body).await
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct IndexRequest {
    /// Only models that are loaded.
    #[serde(default)]
    pub ready: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IndexEntry {
    pub name: String,
    pub version: String,
    /// `READY` (loaded), `LOADING`, `UNAVAILABLE` (not loaded, or its load failed).
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The model repository: every published version and whether it is loaded.
#[utoipa::path(post, path = "/v2/repository/index", tag = "open-inference-protocol", request_body(content = Option<IndexRequest>, description = "optional; `{\"ready\": true}` lists loaded models only", content_type = "application/json"), responses(
    (status = 200, body = Vec<IndexEntry>),
    (status = 400, description = "a body that is not an index request", body = V2Error),
))]
pub async fn repository_index(State(state): State<AppState>, body: Bytes) -> Result<Json<Vec<IndexEntry>>, ApiError> {
    let unreadable = |why: String| ApiError::BadRequest(format!("the index request cannot be read: {why}"));
    let request = match body.iter().all(u8::is_ascii_whitespace) {
        true => IndexRequest::default(),
        false => match serde_json::from_slice(&body).map_err(|e| unreadable(e.to_string()))? {
            serde_json::Value::Null => IndexRequest::default(),
            object @ serde_json::Value::Object(_) => serde_json::from_value(object).map_err(|e| unreadable(e.to_string()))?,
            other => return Err(unreadable(format!("expected an object, not {other}"))),
        },
    };
    let models_dir = state.models_dir.clone();
    let listed = blocking(move || artifact::list(&models_dir)).await?;
    let loaded = state.models.loaded();
    let entries = listed
        .into_iter()
        .flat_map(|(name, versions)| versions.into_iter().map(move |(version, checked)| (name.clone(), version, checked)))
        .map(|(name, version, checked)| {
            let id = format!("{name}@{version}");
            let (state, reason) = match (loaded.iter().find(|(loaded_id, _)| *loaded_id == id), checked) {
                (_, Err(broken)) => ("UNAVAILABLE", Some(broken.to_string())),
                (Some((_, load)), Ok(_)) => match load {
                    LoadState::Ready => ("READY", None),
                    LoadState::Loading => ("LOADING", None),
                    LoadState::Failed(why) => ("UNAVAILABLE", Some(why.clone())),
                },
                (None, Ok(_)) => ("UNAVAILABLE", Some("not loaded".to_string())),
            };
            IndexEntry { name, version: version.to_string(), state, reason }
        })
        .filter(|entry| !request.ready || entry.state == "READY")
        .collect();
    Ok(Json(entries))
}

/// Loads a model's latest version (and answers once it is loaded).
#[utoipa::path(post, path = "/v2/repository/models/{name}/load", tag = "open-inference-protocol", params(("name" = String, Path, description = "Model name", example = "mnist-ssvae")), responses(
    (status = 200, description = "loaded"),
    (status = 404, description = "no such model", body = V2Error),
    (status = 503, description = "the model cannot be loaded", body = V2Error),
))]
pub async fn load(State(state): State<AppState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    state.models.get(&ModelRef::Named { name, version: None }).await?;
    Ok(StatusCode::OK)
}

/// Unloads every loaded version of a model; the next request for it loads it again.
#[utoipa::path(post, path = "/v2/repository/models/{name}/unload", tag = "open-inference-protocol", params(("name" = String, Path, description = "Model name", example = "mnist-ssvae")), responses(
    (status = 200, description = "unloaded (or was not loaded)"),
    (status = 404, description = "no such model", body = V2Error),
))]
pub async fn unload(State(state): State<AppState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    if !is_published(&state, &name).await? {
        return Err(ApiError::NotFound(format!("no model named `{name}`")));
    }
    state.models.unload_model(&name);
    Ok(StatusCode::OK)
}
