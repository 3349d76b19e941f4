//! Inference endpoints. Top-level forms use the default model; the same handlers answer under
//! `/v1/models/{name}` and `/v1/models/{name}/versions/{version}`. Handlers validate, decode
//! uploads, hand the work to the model host and format its answer; image work
//! beyond a few thousand pixels runs on the blocking pool.

use std::collections::BTreeMap;

use axum::extract::{FromRequestParts, Query, RawPathParams, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::problem::{ApiError, Problem};
use super::uploads::{ImagesJson, Uploads};
use super::AppState;
use crate::inference::input::{self, Conversion};
use crate::inference::{
    Analysis, Conditioning, Endpoint, Generated, InferenceError, ModelInfo, ModelRef, Outcome, ServingModel, Task, Want,
};
use crate::render::{self, ImageBatch};

use crate::inference::MAX_SAMPLES;

async fn image_work<T: Send + 'static>(pixels: u64, work: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    input::image_work(pixels, work).await.map_err(input_error)
}

const MODEL_HEADER: HeaderName = HeaderName::from_static("x-model");

/// The model named by the route, or the default one.
pub struct Model(pub ModelRef);

impl<S: Send + Sync> FromRequestParts<S> for Model {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Ok(params) = RawPathParams::from_request_parts(parts, state).await else { return Ok(Model(ModelRef::Default)) };
        let mut name = None;
        let mut version = None;
        for (key, value) in &params {
            match key {
                "name" => name = Some(value.to_string()),
                "version" => version = Some(parse_version(value)?),
                _ => {}
            }
        }
        Ok(Model(name.map_or(ModelRef::Default, |name| ModelRef::Named { name, version })))
    }
}

/// A version path segment: `3` or `v3`.
pub fn parse_version(text: &str) -> Result<u32, ApiError> {
    text.trim_start_matches('v').parse().map_err(|_| ApiError::BadRequest(format!("version `{text}` is not a number")))
}

#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One PNG image (a grid or strip).
    #[default]
    Png,
    /// JSON with base64 PNGs and numbers.
    Json,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SampleQuery {
    /// Number of samples (1–256).
    #[param(minimum = 1, maximum = 256, default = 16)]
    pub n: Option<usize>,
    /// Class to condition on, by index or name (semi-supervised models only).
    #[param(example = "3")]
    pub label: Option<String>,
    /// Scale of the prior's standard deviation (0 < T ≤ 10).
    #[param(default = 1.0, exclusive_minimum = 0.0, maximum = 10.0)]
    pub temperature: Option<f64>,
    /// Random seed (0 to 2⁶³−1): the same seed gives the same images.
    #[param(default = 0, minimum = 0, maximum = 9223372036854775807_i64)]
    pub seed: Option<u64>,
    #[param(inline)]
    pub format: Option<Format>,
}

/// Generated images as JSON.
#[derive(Debug, Serialize, ToSchema)]
pub struct GeneratedJson {
    pub model: String,
    /// The class the samples were conditioned on.
    pub label: Option<i64>,
    pub label_name: Option<String>,
    /// Base64 PNG per image.
    pub images: Vec<String>,
    /// The latent code of each image.
    pub latents: Vec<Vec<f32>>,
}

/// Seeds go to torch as signed 64-bit integers.
fn seed(seed: Option<u64>) -> Result<u64, ApiError> {
    let seed = seed.unwrap_or(0);
    if seed > i64::MAX as u64 {
        return Err(ApiError::BadRequest(format!("seed = {seed} is above the largest seed, 2^63-1")));
    }
    Ok(seed)
}

fn count(n: Option<usize>, default: usize, what: &str) -> Result<usize, ApiError> {
    let n = n.unwrap_or(default);
    if !(1..=MAX_SAMPLES).contains(&n) {
        return Err(ApiError::BadRequest(format!("{what} = {n} is outside 1..={MAX_SAMPLES}")));
    }
    Ok(n)
}

/// Draws samples from the prior (with the label clamped for semi-supervised models).
#[utoipa::path(get, path = "/sample", tag = "inference", params(SampleQuery), responses(
    (status = 200, description = "a PNG grid (format=png) or JSON with base64 PNGs and latent codes (format=json)", content((Vec<u8> = "image/png"), (GeneratedJson = "application/json"))),
    (status = 400, description = "invalid parameters: limits, unknown label, label on a model without labels", body = Problem, content_type = "application/problem+json"),
    (status = 404, description = "no such model", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "model not loadable, or its queue is full (Retry-After)", body = Problem, content_type = "application/problem+json"),
))]
pub async fn sample(State(state): State<AppState>, Model(model): Model, Query(query): Query<SampleQuery>) -> Result<Response, ApiError> {
    let n = count(query.n, 16, "n")?;
    let temperature = query.temperature.unwrap_or(1.0);
    if !(temperature > 0.0 && temperature <= 10.0) {
        return Err(ApiError::BadRequest(format!("temperature = {temperature} must be in (0, 10]")));
    }
    let conditioning = query.label.map_or(Conditioning::None, Conditioning::Label);
    let task = Task::Sample { n, conditioning, codes: None, temperature, seed: seed(query.seed)? };
    let model = state.models.get(&model).await?;
    let outcome = model.run(task).await?;
    generated_response(model.info(), outcome, query.format.unwrap_or_default(), render::square_columns(n)).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct InterpolateQuery {
    /// Start label (index or name); omit when posting two images.
    pub from: Option<String>,
    /// End label (index or name); omit when posting two images.
    pub to: Option<String>,
    /// Images along the way, ends included (2–256).
    #[param(default = 10, minimum = 2, maximum = 256)]
    pub steps: Option<usize>,
    /// Seed of the shared code for label interpolation (0 to 2⁶³−1).
    #[param(default = 0, minimum = 0, maximum = 9223372036854775807_i64)]
    pub seed: Option<u64>,
    #[param(inline)]
    pub format: Option<Format>,
}

fn steps(query: &InterpolateQuery) -> Result<usize, ApiError> {
    let steps = count(query.steps, 10, "steps")?;
    if steps < 2 {
        return Err(ApiError::BadRequest("steps must be at least 2".into()));
    }
    Ok(steps)
}

/// A strip decoded along the line between two labels (semi-supervised models): one code, the
/// label moving from `from` to `to`.
#[utoipa::path(get, path = "/interpolate", tag = "inference", params(InterpolateQuery), responses(
    (status = 200, description = "a PNG strip or JSON", content((Vec<u8> = "image/png"), (GeneratedJson = "application/json"))),
    (status = 400, description = "missing or unknown labels, or a model without labels", body = Problem, content_type = "application/problem+json"),
))]
pub async fn interpolate_labels(
    State(state): State<AppState>,
    Model(model): Model,
    Query(query): Query<InterpolateQuery>,
) -> Result<Response, ApiError> {
    let steps = steps(&query)?;
    let (Some(from), Some(to)) = (query.from.clone(), query.to.clone()) else {
        return Err(ApiError::BadRequest("give both `from` and `to` labels (or POST two images)".into()));
    };
    let task = Task::Interpolate { from: Endpoint::Label(from), to: Endpoint::Label(to), steps, seed: seed(query.seed)? };
    let model = state.models.get(&model).await?;
    let outcome = model.run(task).await?;
    generated_response(model.info(), outcome, query.format.unwrap_or_default(), steps).await
}

/// A strip decoded along the straight line between the codes of two uploaded images.
#[utoipa::path(post, path = "/interpolate", tag = "inference", params(InterpolateQuery), request_body(content((String = "multipart/form-data"), (ImagesJson = "application/json")), description = "exactly two images"), responses(
    (status = 200, description = "a PNG strip or JSON", content((Vec<u8> = "image/png"), (GeneratedJson = "application/json"))),
    (status = 400, description = "not exactly two images, or an image that cannot be decoded", body = Problem, content_type = "application/problem+json"),
    (status = 415, description = "unsupported content or image type", body = Problem, content_type = "application/problem+json"),
))]
pub async fn interpolate_images(
    State(state): State<AppState>,
    Model(model): Model,
    Query(query): Query<InterpolateQuery>,
    uploads: Uploads,
) -> Result<Response, ApiError> {
    let steps = steps(&query)?;
    if uploads.0.len() != 2 {
        return Err(ApiError::BadRequest(format!("interpolation needs exactly two images, got {}", uploads.0.len())));
    }
    let model = state.models.get(&model).await?;
    let (mut images, _) = decode_uploads(model.info(), uploads).await?;
    let (to, from) = (images.pop().expect("two images"), images.pop().expect("two images"));
    let task = Task::Interpolate { from: Endpoint::Image(from), to: Endpoint::Image(to), steps, seed: 0 };
    let outcome = model.run(task).await?;
    generated_response(model.info(), outcome, query.format.unwrap_or_default(), steps).await
}

async fn generated_response(info: &ModelInfo, outcome: Outcome, format: Format, columns: usize) -> Result<Response, ApiError> {
    let Outcome::Generated(Generated { images, latents, label }) = outcome else { return Err(missing("generated images")) };
    let model = model_header(info);
    match format {
        Format::Png => {
            let png = image_work(images.area(), move || render::png_bytes(&images.grid(columns))).await?;
            Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("image/png")), (MODEL_HEADER, model)], png).into_response())
        }
        Format::Json => {
            let encoded =
                image_work(images.area(), move || (0..images.count()).map(|i| base64_png(&images, i)).collect::<Vec<_>>()).await?;
            let label_name = label.and_then(|l| info.config.label_names.get(l as usize).cloned());
            let body = GeneratedJson { model: info.id.clone(), label, label_name, images: encoded, latents };
            Ok(([(MODEL_HEADER, model)], Json(body)).into_response())
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReconstructQuery {
    /// `json` (default): per-image results with base64 PNGs; `png`: one grid of reconstructions.
    #[param(inline)]
    pub format: Option<Format>,
}

/// One reconstructed image.
#[derive(Debug, Serialize, ToSchema)]
pub struct Reconstruction {
    /// Base64 PNG in the model's shape.
    pub reconstruction: String,
    /// −log p(x | z = posterior mean), nats.
    pub reconstruction_error: f64,
    pub kl: f64,
    /// −(reconstruction_error + kl), nats: the ELBO at the posterior mean.
    pub elbo: f64,
    pub conversion: Conversion,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReconstructResponse {
    pub model: String,
    pub results: Vec<Reconstruction>,
}

/// Reconstructs uploaded images through the model (encode to the posterior mean, decode).
#[utoipa::path(post, path = "/reconstruct", tag = "inference", params(ReconstructQuery), request_body(content((String = "multipart/form-data"), (ImagesJson = "application/json"), (Vec<u8> = "image/png")), description = "images as multipart fields named `image`, JSON base64, or one raw image"), responses(
    (status = 200, description = "reconstructions", content((ReconstructResponse = "application/json"), (Vec<u8> = "image/png"))),
    (status = 400, description = "no image, too many, or one that cannot be decoded", body = Problem, content_type = "application/problem+json"),
    (status = 413, description = "body too large", body = Problem, content_type = "application/problem+json"),
    (status = 415, description = "unsupported content or image type", body = Problem, content_type = "application/problem+json"),
))]
pub async fn reconstruct(
    State(state): State<AppState>,
    Model(model): Model,
    Query(query): Query<ReconstructQuery>,
    uploads: Uploads,
) -> Result<Response, ApiError> {
    let model = state.models.get(&model).await?;
    let (analysis, conversions) = analyse(&model, uploads, Want::RECONSTRUCTION).await?;
    let info = model.info();
    let reconstructions = analysis.reconstructions.ok_or_else(|| missing("reconstructions"))?;
    let shape = info.config.image.clone();
    let header = [(MODEL_HEADER, model_header(info))];
    let batch = ImageBatch { shape, pixels: reconstructions.iter().flat_map(|r| r.pixels.iter().copied()).collect() };
    if query.format == Some(Format::Png) {
        let columns = render::square_columns(batch.count());
        let png = image_work(batch.area(), move || render::png_bytes(&batch.grid(columns))).await?;
        return Ok((header, [(header::CONTENT_TYPE, HeaderValue::from_static("image/png"))], png).into_response());
    }
    let pictures = image_work(batch.area(), move || (0..batch.count()).map(|i| base64_png(&batch, i)).collect::<Vec<_>>()).await?;
    let results = reconstructions
        .into_iter()
        .zip(conversions)
        .zip(pictures)
        .map(|((r, conversion), reconstruction)| Reconstruction {
            reconstruction,
            reconstruction_error: r.reconstruction_error,
            kl: r.kl,
            elbo: r.elbo,
            conversion,
        })
        .collect();
    Ok((header, Json(ReconstructResponse { model: info.id.clone(), results })).into_response())
}

/// One classified image.
#[derive(Debug, Serialize, ToSchema)]
pub struct Classification {
    /// Index of the most probable class.
    pub label: i64,
    pub name: String,
    pub probability: f32,
    /// Probability of every class, by name.
    pub probabilities: BTreeMap<String, f32>,
    pub conversion: Conversion,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClassifyResponse {
    pub model: String,
    pub results: Vec<Classification>,
}

/// Classifies uploaded images with the model's q(y|x).
#[utoipa::path(post, path = "/classify", tag = "inference", request_body(content((String = "multipart/form-data"), (ImagesJson = "application/json"), (Vec<u8> = "image/png")), description = "images as multipart fields named `image`, JSON base64, or one raw image"), responses(
    (status = 200, description = "predicted labels and class probabilities", body = ClassifyResponse),
    (status = 400, description = "the model has no classifier, or bad images", body = Problem, content_type = "application/problem+json"),
    (status = 415, description = "unsupported content or image type", body = Problem, content_type = "application/problem+json"),
))]
pub async fn classify(State(state): State<AppState>, Model(model): Model, uploads: Uploads) -> Result<Response, ApiError> {
    let model = state.models.get(&model).await?;
    let info = model.info();
    if !info.config.architecture.is_semi_supervised() {
        return Err(ApiError::BadRequest(format!(
            "model {} ({:?}) has no classifier: use a semi-supervised model, e.g. the default one at POST /classify or /v1/models/{{name}}/classify",
            info.id, info.config.architecture
        )));
    }
    let (analysis, conversions) = analyse(&model, uploads, Want::CLASSES).await?;
    let classified = analysis.probabilities.ok_or_else(|| missing("class probabilities"))?;
    let names = &info.config.label_names;
    let results = classified
        .into_iter()
        .zip(conversions)
        .map(|(probabilities, conversion)| {
            let (label, &probability) = probabilities.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).unwrap_or((0, &0.0));
            Classification {
                label: label as i64,
                name: names.get(label).cloned().unwrap_or_default(),
                probability,
                probabilities: names.iter().cloned().zip(probabilities.iter().copied()).collect(),
                conversion,
            }
        })
        .collect();
    Ok(([(MODEL_HEADER, model_header(info))], Json(ClassifyResponse { model: info.id.clone(), results })).into_response())
}

/// One encoded image.
#[derive(Debug, Serialize, ToSchema)]
pub struct Encoding {
    pub mean: Vec<f32>,
    pub log_var: Vec<f32>,
    pub conversion: Conversion,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EncodeResponse {
    pub model: String,
    pub results: Vec<Encoding>,
}

/// The posterior q(z|x) of uploaded images: mean and log-variance of the code (embeddings).
#[utoipa::path(post, path = "/encode", tag = "inference", request_body(content((String = "multipart/form-data"), (ImagesJson = "application/json"), (Vec<u8> = "image/png")), description = "images as multipart fields named `image`, JSON base64, or one raw image"), responses(
    (status = 200, description = "latent means and log-variances", body = EncodeResponse),
    (status = 400, description = "no image, too many, or one that cannot be decoded", body = Problem, content_type = "application/problem+json"),
    (status = 415, description = "unsupported content or image type", body = Problem, content_type = "application/problem+json"),
))]
pub async fn encode(State(state): State<AppState>, Model(model): Model, uploads: Uploads) -> Result<Response, ApiError> {
    let model = state.models.get(&model).await?;
    let (analysis, conversions) = analyse(&model, uploads, Want::CODE).await?;
    let info = model.info();
    let codes = analysis.codes.ok_or_else(|| missing("codes"))?;
    let results = codes
        .into_iter()
        .zip(conversions)
        .map(|(code, conversion)| Encoding { mean: code.mean, log_var: code.log_var, conversion })
        .collect();
    Ok(([(MODEL_HEADER, model_header(info))], Json(EncodeResponse { model: info.id.clone(), results })).into_response())
}

/// Decodes uploads to the shape of `model` and runs them on it.
async fn analyse(model: &ServingModel, uploads: Uploads, want: Want) -> Result<(Analysis, Vec<Conversion>), ApiError> {
    let (images, conversions) = decode_uploads(model.info(), uploads).await?;
    let analysis = model.analyse(images, want).await?;
    Ok((analysis, conversions))
}

/// The model host answered without a part the task asked for: a bug.
fn missing(part: &str) -> ApiError {
    ApiError::Internal(format!("the model answered without the {part} the request asked for"))
}

/// Decodes and converts uploads to the model's shape.
async fn decode_uploads(info: &ModelInfo, uploads: Uploads) -> Result<(Vec<Vec<f32>>, Vec<Conversion>), ApiError> {
    input::decode_all(uploads.0, &info.config.image).await.map_err(input_error)
}

fn input_error(error: input::InputError) -> ApiError {
    match error {
        input::InputError::UnsupportedFormat { .. } => ApiError::UnsupportedMediaType(error.to_string()),
        input::InputError::Aborted(_) => ApiError::Internal(error.to_string()),
        _ => ApiError::BadRequest(error.to_string()),
    }
}

fn base64_png(images: &ImageBatch, i: usize) -> String {
    base64::engine::general_purpose::STANDARD.encode(render::png_bytes(&images.to_picture(i)))
}

fn model_header(info: &ModelInfo) -> HeaderValue {
    HeaderValue::from_str(&info.id).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

impl From<InferenceError> for ApiError {
    fn from(error: InferenceError) -> Self {
        match error {
            InferenceError::BadRequest(detail) => ApiError::BadRequest(detail),
            InferenceError::NotFound(detail) => ApiError::NotFound(detail),
            InferenceError::Overloaded(_) => ApiError::Unavailable { detail: error.to_string(), retry_after_secs: 1 },
            InferenceError::LoadFailed { .. } | InferenceError::WorkerGone => {
                ApiError::Unavailable { detail: error.to_string(), retry_after_secs: 5 }
            }
            InferenceError::Model(e) => ApiError::Internal(e.to_string()),
        }
    }
}
