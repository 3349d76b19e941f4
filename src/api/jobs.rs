//! The training queue and the model registry over HTTP.

use std::convert::Infallible;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::inference::parse_version;
use super::problem::{ApiError, Problem};
use super::{blocking, AppState};
use crate::jobs::{JobError, JobEvent};
use crate::models::artifact::{self, Manifest};
use crate::storage::jobs::{JobRecord, JobState};
use crate::training::TrainRequest;

impl From<JobError> for ApiError {
    fn from(error: JobError) -> Self {
        match error {
            JobError::Invalid { .. } => ApiError::Unprocessable(error.to_string()),
            JobError::QueueFull(_) => ApiError::TooManyRequests { detail: error.to_string(), retry_after_secs: 30 },
            JobError::NotFound(_) => ApiError::NotFound(error.to_string()),
            JobError::AlreadyFinished { .. } => ApiError::Conflict(error.to_string()),
            JobError::Storage(e) => e.into(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Submitted {
    pub job: JobRecord,
    /// 1-based position in the queue when submitted.
    pub position: usize,
}

/// Queues a training job. Answers 202 with the job and `Location: /v1/jobs/{id}`.
#[utoipa::path(post, path = "/v1/train", tag = "training", request_body = TrainRequest, responses(
    (status = 202, description = "queued", body = Submitted, headers(("location" = String, description = "the job's URL"))),
    (status = 401, description = "an API key is configured and was not given", body = Problem, content_type = "application/problem+json"),
    (status = 422, description = "invalid request: the detail names the field", body = Problem, content_type = "application/problem+json"),
    (status = 429, description = "the queue is full (Retry-After)", body = Problem, content_type = "application/problem+json"),
))]
pub async fn submit(State(state): State<AppState>, Json(request): Json<TrainRequest>) -> Result<Response, ApiError> {
    let jobs = state.jobs.clone();
    let (job, position) = blocking(move || jobs.submit(request)).await??;
    let location = format!("/v1/jobs/{}", job.id);
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(Submitted { job, position })).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only jobs in this state.
    #[param(inline)]
    pub state: Option<JobState>,
    /// Page size (1–200).
    #[param(default = 50, minimum = 1, maximum = 200)]
    pub limit: Option<usize>,
    #[param(default = 0, minimum = 0)]
    pub offset: Option<usize>,
}

/// Jobs, newest first.
#[utoipa::path(get, path = "/v1/jobs", tag = "training", params(ListQuery), responses((status = 200, body = Vec<JobRecord>)))]
pub async fn list(State(state): State<AppState>, Query(query): Query<ListQuery>) -> Result<Json<Vec<JobRecord>>, ApiError> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::BadRequest(format!("limit = {limit} is outside 1..=200")));
    }
    let jobs = state.jobs.clone();
    Ok(Json(blocking(move || jobs.list(query.state, limit, query.offset.unwrap_or(0))).await??))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: JobRecord,
    /// Position in the queue while queued.
    pub position: Option<usize>,
}

/// A job: state, timestamps, request, progress with ETA, per-epoch metrics, error.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "training", params(("id" = i64, Path)), responses(
    (status = 200, body = JobDetail),
    (status = 404, body = Problem, content_type = "application/problem+json"),
))]
pub async fn get(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Json<JobDetail>, ApiError> {
    let jobs = state.jobs.clone();
    let (job, position) = blocking(move || Ok::<_, JobError>((jobs.get(id)?, jobs.queue_position(id)?))).await??;
    Ok(Json(JobDetail { job, position }))
}

/// Cancels a queued job, or stops a running one within one batch (its last checkpoint is kept).
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "training", params(("id" = i64, Path)), responses(
    (status = 200, description = "cancelled, or stopping", body = JobRecord),
    (status = 404, body = Problem, content_type = "application/problem+json"),
    (status = 409, description = "the job already finished", body = Problem, content_type = "application/problem+json"),
))]
pub async fn cancel(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Json<JobRecord>, ApiError> {
    let jobs = state.jobs.clone();
    Ok(Json(blocking(move || jobs.cancel(id)).await??))
}

/// Progress as Server-Sent Events: a `snapshot` of the job, then `step`, `epoch` and a final
/// `finished` event, after which the stream ends.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "training", params(("id" = i64, Path)), responses(
    (status = 200, description = "text/event-stream: each event has a name (`snapshot`, `step`, `epoch`, `finished`) and JSON data", content_type = "text/event-stream", body = Object),
    (status = 404, body = Problem, content_type = "application/problem+json"),
))]
pub async fn events(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // Subscribe before reading the snapshot, so no event falls between the two.
    let receiver = state.jobs.subscribe(id);
    let jobs = state.jobs.clone();
    let job = blocking(move || jobs.get(id)).await??;
    let finished = job.state.is_final();
    // Epochs in the snapshot may come again as events (read back from the database when the job
    // runs on another replica); each is sent once.
    let epochs_in_snapshot = job.history.as_array().map_or(0, Vec::len);
    let snapshot = stream::once(async move { Ok(Event::default().event("snapshot").json_data(&job).expect("jobs serialise")) });
    let updates = stream::unfold((receiver, finished), move |(mut receiver, finished)| async move {
        if finished {
            return None;
        }
        loop {
            match receiver.recv().await {
                Ok(JobEvent::Epoch { metrics }) if metrics.epoch <= epochs_in_snapshot => continue,
                Ok(event) => {
                    let done = matches!(event, JobEvent::Finished { .. });
                    let name = match &event {
                        JobEvent::Step { .. } => "step",
                        JobEvent::Epoch { .. } => "epoch",
                        JobEvent::Finished { .. } => "finished",
                    };
                    let sse = Event::default().event(name).json_data(&event).expect("events serialise");
                    return Some((Ok(sse), (receiver, done)));
                }
                // A slow reader missed some step events; later ones still come.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(snapshot.chain(updates)).keep_alive(KeepAlive::default()))
}

/// Which recipe `GET /v1/train/defaults` shows.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DefaultsQuery {
    /// `mlp` (when left out), `conv` or `semi-supervised`.
    #[param(value_type = Option<String>, example = "conv")]
    pub architecture: Option<crate::models::Architecture>,
}

/// The training options a request that names only `architecture` trains with: the
/// architecture's best measured recipe, the defaults of `POST /train`, config files,
/// `vae-serve train` and the console alike. A request's own fields replace these one by one.
#[utoipa::path(get, path = "/v1/train/defaults", tag = "training", params(DefaultsQuery), responses(
    (status = 200, description = "the resolved options object", body = Object),
))]
pub async fn train_defaults(Query(query): Query<DefaultsQuery>) -> Json<crate::training::TrainOptions> {
    Json(crate::training::TrainOptions::recommended(query.architecture.unwrap_or(crate::models::Architecture::Mlp)))
}

/// Datasets a training request can name: the folders of the data directory and of
/// /usr/share/datasets that hold IDX files or one image folder per class.
#[utoipa::path(get, path = "/v1/datasets", tag = "training", responses((status = 200, body = Vec<crate::data::CatalogEntry>)))]
pub async fn datasets(State(state): State<AppState>) -> Result<Json<Vec<crate::data::CatalogEntry>>, ApiError> {
    Ok(Json(blocking(move || crate::data::catalog(&state.data_dir)).await?))
}

/// One model name and its versions.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelEntry {
    pub name: String,
    /// Whether the top-level endpoints serve this model.
    pub default: bool,
    pub versions: Vec<VersionSummary>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VersionSummary {
    pub version: u32,
    /// Why this version cannot be served (an unreadable manifest, weights that do not match it);
    /// absent when it can. A broken version has none of the fields below.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broken: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub architecture: Option<crate::models::Architecture>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<std::collections::BTreeMap<String, f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

impl VersionSummary {
    fn new(version: u32, checked: Result<Manifest, crate::models::ModelError>) -> Self {
        match checked {
            Ok(m) => Self {
                version,
                broken: None,
                architecture: Some(m.config.architecture),
                dataset: Some(m.dataset),
                metrics: Some(m.metrics),
                created_at: Some(m.created_at.to_rfc3339()),
            },
            Err(why) => Self { version, broken: Some(why.to_string()), architecture: None, dataset: None, metrics: None, created_at: None },
        }
    }
}

fn entries(state: &AppState, filter: Option<&str>) -> Vec<ModelEntry> {
    let default_spec = state.models.default_spec();
    let default_name = default_spec.split('@').next().unwrap_or_default().to_string();
    artifact::list(&state.models_dir)
        .into_iter()
        .filter(|(name, _)| filter.is_none_or(|f| f == name))
        .map(|(name, versions)| ModelEntry {
            default: name == default_name,
            versions: versions.into_iter().map(|(version, checked)| VersionSummary::new(version, checked)).collect(),
            name,
        })
        .collect()
}

/// Every published model with its versions; the default one is marked, and versions that cannot
/// be served are listed as broken, with the reason.
#[utoipa::path(get, path = "/v1/models", tag = "models", responses((status = 200, body = Vec<ModelEntry>)))]
pub async fn list_models(State(state): State<AppState>) -> Result<Json<Vec<ModelEntry>>, ApiError> {
    Ok(Json(blocking(move || entries(&state, None)).await?))
}

/// One model's versions.
#[utoipa::path(get, path = "/v1/models/{name}", tag = "models", params(("name" = String, Path)), responses(
    (status = 200, body = ModelEntry),
    (status = 404, body = Problem, content_type = "application/problem+json"),
))]
pub async fn get_model(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<ModelEntry>, ApiError> {
    let found = blocking(move || entries(&state, Some(&name)).pop().ok_or_else(|| ApiError::NotFound(format!("no model named `{name}`"))))
        .await??;
    Ok(Json(found))
}

/// One version's manifest.
#[utoipa::path(get, path = "/v1/models/{name}/versions/{version}", tag = "models", params(("name" = String, Path), ("version" = u32, Path)), responses(
    (status = 200, description = "the manifest", body = Object),
    (status = 404, body = Problem, content_type = "application/problem+json"),
))]
pub async fn get_version(State(state): State<AppState>, Path((name, version)): Path<(String, String)>) -> Result<Json<Manifest>, ApiError> {
    let version = parse_version(&version)?;
    let manifest = blocking(move || {
        let (_, dir) = artifact::find_version(&state.models_dir, &name, Some(version))
            .map_err(|e| ApiError::NotFound(e.to_string()))?
            .ok_or_else(|| ApiError::NotFound(format!("no version {version} of `{name}`")))?;
        artifact::read_manifest(&dir).map_err(|e| ApiError::Internal(e.to_string()))
    })
    .await??;
    Ok(Json(manifest))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DefaultModel {
    /// The default as set: the model name (its latest version is served).
    pub default: String,
    /// The version served now, `name@N`.
    pub serving: String,
}

/// Makes this model (its latest version) the one the top-level endpoints serve; kept across restarts.
#[utoipa::path(put, path = "/v1/models/{name}/default", tag = "models", params(("name" = String, Path)), responses(
    (status = 200, body = DefaultModel),
    (status = 401, description = "an API key is configured and was not given", body = Problem, content_type = "application/problem+json"),
    (status = 404, body = Problem, content_type = "application/problem+json"),
))]
pub async fn set_default(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<DefaultModel>, ApiError> {
    let models = state.models.clone();
    let spec = name.clone();
    let serving = blocking(move || models.set_default(&spec)).await??;
    state.storage.set_setting(crate::storage::DEFAULT_MODEL_SETTING, name.clone()).await?;
    tracing::info!(default_model = %name, serving = %serving, "default model changed");
    Ok(Json(DefaultModel { default: name, serving }))
}

/// Deletes one version. The version the default model serves cannot be deleted (409).
#[utoipa::path(delete, path = "/v1/models/{name}/versions/{version}", tag = "models", params(("name" = String, Path), ("version" = u32, Path)), responses(
    (status = 204, description = "deleted"),
    (status = 401, description = "an API key is configured and was not given", body = Problem, content_type = "application/problem+json"),
    (status = 404, body = Problem, content_type = "application/problem+json"),
    (status = 409, description = "it is the default model", body = Problem, content_type = "application/problem+json"),
))]
pub async fn delete_version(State(state): State<AppState>, Path((name, version)): Path<(String, String)>) -> Result<StatusCode, ApiError> {
    let version = parse_version(&version)?;
    let id = format!("{name}@{version}");
    let default_spec = state.models.default_spec();
    let serving = crate::inference::resolve_model(&state.models_dir, &default_spec).map(|(id, _)| id).ok();
    if serving.as_deref() == Some(id.as_str()) {
        return Err(ApiError::Conflict(format!(
            "{id} is the default model; choose another default first (PUT /v1/models/{{name}}/default)"
        )));
    }
    let models_dir = state.models_dir.clone();
    blocking(move || artifact::remove(&models_dir, &name, version).map_err(|e| ApiError::NotFound(e.to_string()))).await??;
    state.models.unload(&id);
    Ok(StatusCode::NO_CONTENT)
}
