//! Inference endpoints: thin wrappers over the model host.

use axum::extract::{Query, State};
use axum::http::{header, HeaderName};
use axum::response::IntoResponse;
use serde::Deserialize;
use utoipa::IntoParams;

use super::problem::ApiError;
use super::AppState;
use crate::inference::{InferenceError, SampleRequest};

/// Most samples one request may ask for.
pub const MAX_SAMPLES: i64 = 256;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SampleQuery {
    /// Number of samples (1–256).
    #[param(minimum = 1, maximum = 256, default = 16)]
    pub n: Option<i64>,
    /// Class to condition on, by index or name (semi-supervised models only).
    #[param(example = "3")]
    pub label: Option<String>,
    /// Scale of the prior's standard deviation (0 < T ≤ 10).
    #[param(default = 1.0)]
    pub temperature: Option<f64>,
    /// Random seed: the same seed gives the same images.
    #[param(default = 0)]
    pub seed: Option<u64>,
}

const MODEL_HEADER: HeaderName = HeaderName::from_static("x-model");

/// Draws samples from the default model's prior as one PNG grid.
#[utoipa::path(get, path = "/sample", tag = "inference", params(SampleQuery), responses(
    (status = 200, description = "a PNG grid of samples", content_type = "image/png", body = Vec<u8>),
    (status = 400, description = "invalid parameters (limits, unknown label, label on an unlabelled model)", body = super::problem::Problem, content_type = "application/problem+json"),
    (status = 503, description = "the default model is not loaded", body = super::problem::Problem, content_type = "application/problem+json"),
))]
pub async fn sample(State(state): State<AppState>, Query(query): Query<SampleQuery>) -> Result<impl IntoResponse, ApiError> {
    let n = query.n.unwrap_or(16);
    if !(1..=MAX_SAMPLES).contains(&n) {
        return Err(ApiError::BadRequest(format!("n = {n} is outside 1..={MAX_SAMPLES}")));
    }
    let temperature = query.temperature.unwrap_or(1.0);
    if !(temperature > 0.0 && temperature <= 10.0) {
        return Err(ApiError::BadRequest(format!("temperature = {temperature} must be in (0, 10]")));
    }
    let request = SampleRequest { n, label: query.label, temperature, seed: query.seed.unwrap_or(0) };
    let grid = state.models.sample(request).await?;
    Ok(([(header::CONTENT_TYPE, "image/png".to_string()), (MODEL_HEADER, grid.model_id)], grid.png))
}

impl From<InferenceError> for ApiError {
    fn from(error: InferenceError) -> Self {
        match error {
            InferenceError::BadRequest(detail) => ApiError::BadRequest(detail),
            InferenceError::NotLoaded(_) | InferenceError::WorkerGone => ApiError::Unavailable { detail: error.to_string(), retry_after_secs: 5 },
            InferenceError::Model(e) => ApiError::Internal(e.to_string()),
        }
    }
}
