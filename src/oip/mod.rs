//! The Open Inference Protocol (KServe V2), independent of its transports: what a model exposes
//! as named tensors, and an inference request turned into tasks on the same per-model batching
//! queue as the REST API's. The REST routes (`api::v2`, with the JSON and binary wire format of
//! `rest`) and the gRPC service (`grpc`) only translate to and from these types.
//!
//! Inputs: `image` (FP32 in [0, 1] or UINT8, `[N, C, H, W]`) or `image_bytes` (BYTES `[N]`,
//! encoded images) for analysis; `z` (FP32 `[N, latent]`) and/or `label` (INT64 `[N]`) — or
//! neither, with the request parameters `n`, `seed`, `temperature` and `label` — for generation.

pub mod rest;
pub mod tensor;

use std::path::Path;

use serde::Serialize;

use crate::inference::input::{self, InputError};
use crate::inference::{
    Analysis, Conditioning, Generated, InferenceError, ModelHost, ModelInfo, ModelRef, Outcome, ServingModel, Task, Want, MAX_SAMPLES,
};
use crate::models::artifact;
use crate::models::ModelConfig;
pub use tensor::{Contents, Datatype, Tensor};

/// Extensions this server implements, as server metadata lists them.
pub const EXTENSIONS: [&str; 2] = ["binary_tensor_data", "model_repository"];
/// The platform name in model metadata.
pub const PLATFORM: &str = "vae-serve_libtorch";

#[derive(Debug, thiserror::Error)]
pub enum OipError {
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Inference(#[from] InferenceError),
    #[error("{0}")]
    Internal(String),
}

impl From<InputError> for OipError {
    fn from(error: InputError) -> Self {
        match error {
            InputError::Aborted(_) => OipError::Internal(error.to_string()),
            other => OipError::BadRequest(format!("input `image_bytes`: {other}")),
        }
    }
}

/// Refuses a request that names an input twice (which one would it mean?), before any data is read.
pub fn refuse_repeated_inputs<'a>(names: impl Iterator<Item = &'a str>) -> Result<(), OipError> {
    let mut seen = std::collections::HashSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err(OipError::BadRequest(format!("input `{name}` is given twice")));
        }
    }
    Ok(())
}

/// Request parameters: names to JSON scalars (gRPC's typed parameters convert to these).
pub type Parameters = serde_json::Map<String, serde_json::Value>;

/// An inference request with its tensors decoded.
#[derive(Debug, Clone, Default)]
pub struct InferRequest {
    pub id: Option<String>,
    pub parameters: Parameters,
    pub inputs: Vec<Tensor>,
    /// Outputs asked for by name; `None` asks for every output the inputs lead to.
    pub outputs: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    pub id: Option<String>,
    pub outputs: Vec<Tensor>,
}

/// A tensor's name, datatype and shape, `-1` marking the batch dimension.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// A tensor a model may expose; some only models with a classifier have.
struct TensorSpec {
    name: &'static str,
    datatype: Datatype,
    classifier_only: bool,
}

const fn spec(name: &'static str, datatype: Datatype, classifier_only: bool) -> TensorSpec {
    TensorSpec { name, datatype, classifier_only }
}

const INPUTS: [TensorSpec; 4] = [
    spec("image", Datatype::Fp32, false),
    spec("image_bytes", Datatype::Bytes, false),
    spec("z", Datatype::Fp32, false),
    spec("label", Datatype::Int64, true),
];

const OUTPUTS: [TensorSpec; 7] = [
    spec("probabilities", Datatype::Fp32, true),
    spec("label", Datatype::Int64, true),
    spec("mean", Datatype::Fp32, false),
    spec("log_var", Datatype::Fp32, false),
    spec("reconstruction", Datatype::Fp32, false),
    spec("elbo", Datatype::Fp32, false),
    spec("samples", Datatype::Fp32, false),
];

/// The names among `specs` that a model with this `config` exposes, in table order.
fn exposed<'a>(specs: &'a [TensorSpec], config: &ModelConfig) -> impl Iterator<Item = &'a TensorSpec> {
    let classifier = config.architecture.is_semi_supervised();
    specs.iter().filter(move |s| classifier || !s.classifier_only)
}

fn exposes(specs: &[TensorSpec], config: &ModelConfig, name: &str) -> bool {
    exposed(specs, config).any(|s| s.name == name)
}

fn exposed_names(specs: &[TensorSpec], config: &ModelConfig) -> String {
    exposed(specs, config).map(|s| s.name).collect::<Vec<_>>().join(", ")
}

/// A tensor's shape for this model, `-1` marking the batch dimension.
fn shape_of(name: &str, config: &ModelConfig) -> Vec<i64> {
    let [c, h, w] = config.image.dims();
    match name {
        "image" | "reconstruction" | "samples" => vec![-1, c, h, w],
        "z" | "mean" | "log_var" => vec![-1, config.latent_dim],
        "probabilities" => vec![-1, config.num_classes()],
        _ => vec![-1],
    }
}

/// What a model takes and gives. Models without a classifier have no `label` input and no
/// `probabilities` or `label` output.
pub fn model_metadata(name: &str, versions: Vec<String>, config: &ModelConfig) -> ModelMetadata {
    let described = |specs: &[TensorSpec]| {
        exposed(specs, config)
            .map(|s| TensorMetadata { name: s.name.into(), datatype: s.datatype.name().into(), shape: shape_of(s.name, config) })
            .collect()
    };
    ModelMetadata { name: name.into(), versions, platform: PLATFORM.into(), inputs: described(&INPUTS), outputs: described(&OUTPUTS) }
}

/// Outputs of an analysis, and the model part each needs.
const ANALYSIS_OUTPUTS: [(&str, Want); 6] = [
    ("probabilities", Want::CLASSES),
    ("label", Want::CLASSES),
    ("mean", Want::CODE),
    ("log_var", Want::CODE),
    ("reconstruction", Want::RECONSTRUCTION),
    ("elbo", Want::RECONSTRUCTION),
];

/// Runs `request` on `model`: one task, one place in the model's batching queue.
pub async fn infer(model: &ServingModel, mut request: InferRequest) -> Result<InferResponse, OipError> {
    let info = model.info();
    let config = &info.config;
    if let Some(tensor) = request.inputs.iter().find(|t| !exposes(&INPUTS, config, &t.name)) {
        let takes = exposed_names(&INPUTS, config);
        return Err(OipError::BadRequest(format!("unknown input `{}`; model {} takes {takes}", tensor.name, info.id)));
    }
    if let Some(name) = request.outputs.iter().flatten().find(|name| !exposes(&OUTPUTS, config, name)) {
        return Err(OipError::BadRequest(format!("unknown output `{name}`; model {} gives {}", info.id, exposed_names(&OUTPUTS, config))));
    }
    // The tensors move into the task: image data is not copied on the way.
    let mut inputs = std::mem::take(&mut request.inputs);
    let mut take = |name: &str| inputs.iter().position(|t| t.name == name).map(|i| inputs.swap_remove(i));
    let (image, image_bytes, z, label) = (take("image"), take("image_bytes"), take("z"), take("label"));
    let outputs = match (image, image_bytes) {
        (Some(_), Some(_)) => return Err(OipError::BadRequest("send `image` or `image_bytes`, not both".into())),
        (None, None) => generate(model, &request, z, label).await?,
        (image, image_bytes) => {
            if let Some(other) = [("z", &z), ("label", &label)].into_iter().find_map(|(name, given)| given.as_ref().map(|_| name)) {
                return Err(OipError::BadRequest(format!("input `{other}` is for generation; it cannot come with an image to analyse")));
            }
            let images = match (image, image_bytes) {
                (Some(image), _) => image_rows(image, config)?,
                (_, Some(encoded)) => encoded_images(encoded, config).await?,
                (None, None) => unreachable!("matched above"),
            };
            analyse(model, images, &request).await?
        }
    };
    let (name, version) = model_identity(info);
    Ok(InferResponse { model_name: name.into(), model_version: version.into(), id: request.id, outputs })
}

/// The requested outputs among `available`, in the order the request named them; all of
/// `available` when it named none.
fn selected<'a>(request: &'a InferRequest, available: &[&'a str], purpose: &str) -> Result<Vec<&'a str>, OipError> {
    match &request.outputs {
        None => Ok(available.to_vec()),
        Some(names) if names.is_empty() => Ok(available.to_vec()),
        Some(names) => names
            .iter()
            .map(|name| {
                available.iter().find(|a| *a == name).copied().ok_or_else(|| {
                    OipError::BadRequest(format!("output `{name}` is not produced by {purpose}; it gives {}", available.join(", ")))
                })
            })
            .collect(),
    }
}

fn rows_of(tensor: &Tensor) -> Result<usize, OipError> {
    let rows = tensor.shape.first().copied().unwrap_or(0) as usize;
    if !(1..=MAX_SAMPLES).contains(&rows) {
        return Err(OipError::BadRequest(format!("input `{}`: {rows} rows; a request takes 1 to {MAX_SAMPLES}", tensor.name)));
    }
    Ok(rows)
}

fn expect_shape(tensor: &Tensor, tail: &[i64]) -> Result<usize, OipError> {
    let rows = rows_of(tensor)?;
    if &tensor.shape[1..] != tail {
        let mut expected = vec![-1];
        expected.extend_from_slice(tail);
        return Err(OipError::BadRequest(format!("input `{}`: shape {:?} does not match {expected:?}", tensor.name, tensor.shape)));
    }
    Ok(rows)
}

fn wrong_datatype(name: &str, datatype: Datatype, expected: &str) -> OipError {
    OipError::BadRequest(format!("input `{name}`: datatype {} is not accepted; send {expected}", datatype.name()))
}

/// `image` as rows of C×H×W intensities in [0, 1].
fn image_rows(image: Tensor, config: &ModelConfig) -> Result<Vec<Vec<f32>>, OipError> {
    let rows = expect_shape(&image, &config.image.dims())?;
    let pixels: Vec<f32> = match image.contents {
        Contents::Fp32(values) => values,
        Contents::Fp64(values) => values.iter().map(|&v| v as f32).collect(),
        Contents::Uint8(values) => values.iter().map(|&v| f32::from(v) / 255.0).collect(),
        _ => return Err(wrong_datatype(&image.name, image.datatype, "FP32 (intensities in [0, 1]) or UINT8")),
    };
    if let Some(bad) = pixels.iter().find(|p| !(0.0..=1.0).contains(*p)) {
        return Err(OipError::BadRequest(format!("input `image`: intensity {bad} is outside [0, 1]")));
    }
    let per_row = config.image.pixels() as usize;
    debug_assert_eq!(pixels.len(), rows * per_row);
    Ok(pixels.chunks_exact(per_row).map(<[f32]>::to_vec).collect())
}

/// `image_bytes`: encoded images, decoded and converted as uploads to `/classify` are.
async fn encoded_images(encoded: Tensor, config: &ModelConfig) -> Result<Vec<Vec<f32>>, OipError> {
    expect_shape(&encoded, &[])?;
    let Contents::Bytes(files) = encoded.contents else {
        return Err(wrong_datatype(&encoded.name, encoded.datatype, "BYTES (encoded PNG, JPEG, …)"));
    };
    let (images, _) = input::decode_all(files, &config.image).await?;
    Ok(images)
}

async fn analyse(model: &ServingModel, images: Vec<Vec<f32>>, request: &InferRequest) -> Result<Vec<Tensor>, OipError> {
    let config = &model.info().config;
    let available: Vec<&str> = ANALYSIS_OUTPUTS.iter().map(|(name, _)| *name).filter(|name| exposes(&OUTPUTS, config, name)).collect();
    let names = selected(request, &available, "an analysis of images")?;
    let want = ANALYSIS_OUTPUTS.iter().filter(|(name, _)| names.contains(name)).fold(Want::default(), |all, (_, want)| all.union(*want));
    let rows = images.len() as i64;
    let Analysis { probabilities, codes, reconstructions } = model.analyse(images, want).await?;
    let [c, h, w] = config.image.dims();
    let latent = config.latent_dim;
    let fp32 = |name: &str, shape: Vec<i64>, values: Vec<f32>| Tensor {
        name: name.into(),
        datatype: Datatype::Fp32,
        shape,
        contents: Contents::Fp32(values),
    };
    let missing = || OipError::Internal("the model answered without an output the request asked for".into());
    names
        .into_iter()
        .map(|name| {
            Ok(match name {
                "probabilities" => {
                    let p = probabilities.as_ref().ok_or_else(missing)?;
                    fp32(name, vec![rows, config.num_classes()], p.iter().flatten().copied().collect())
                }
                "label" => {
                    let p = probabilities.as_ref().ok_or_else(missing)?;
                    let labels =
                        p.iter().map(|row| row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as i64)).collect();
                    Tensor { name: name.into(), datatype: Datatype::Int64, shape: vec![rows], contents: Contents::Int64(labels) }
                }
                "mean" => fp32(
                    name,
                    vec![rows, latent],
                    codes.as_ref().ok_or_else(missing)?.iter().flat_map(|c| c.mean.iter().copied()).collect(),
                ),
                "log_var" => fp32(
                    name,
                    vec![rows, latent],
                    codes.as_ref().ok_or_else(missing)?.iter().flat_map(|c| c.log_var.iter().copied()).collect(),
                ),
                "reconstruction" => fp32(
                    name,
                    vec![rows, c, h, w],
                    reconstructions.as_ref().ok_or_else(missing)?.iter().flat_map(|r| r.pixels.iter().copied()).collect(),
                ),
                "elbo" => fp32(name, vec![rows], reconstructions.as_ref().ok_or_else(missing)?.iter().map(|r| r.elbo as f32).collect()),
                other => unreachable!("`{other}` is not an analysis output"),
            })
        })
        .collect()
}

fn parameter_u64(request: &InferRequest, name: &str) -> Result<Option<u64>, OipError> {
    request
        .parameters
        .get(name)
        .map(|v| v.as_u64().ok_or_else(|| OipError::BadRequest(format!("parameter `{name}` must be a non-negative integer, not {v}"))))
        .transpose()
}

/// Generation: codes from `z` or drawn with the `seed` and `temperature` parameters, labels from
/// `label` (input, one per row, or parameter, one for all).
async fn generate(model: &ServingModel, request: &InferRequest, z: Option<Tensor>, label: Option<Tensor>) -> Result<Vec<Tensor>, OipError> {
    let names = selected(request, &["samples"], "generation (inputs `z`, `label` or none)")?;
    let config = &model.info().config;
    let codes = z
        .map(|z| {
            let rows = expect_shape(&z, &[config.latent_dim])?;
            match z.contents {
                Contents::Fp32(values) => Ok((rows, values)),
                Contents::Fp64(values) => Ok((rows, values.iter().map(|&v| v as f32).collect())),
                _ => Err(wrong_datatype(&z.name, z.datatype, "FP32")),
            }
        })
        .transpose()?;
    let labels = label
        .map(|label| {
            let rows = expect_shape(&label, &[])?;
            match label.contents {
                Contents::Int64(values) => Ok((rows, values)),
                Contents::Int32(values) => Ok((rows, values.iter().map(|&v| i64::from(v)).collect())),
                _ => Err(wrong_datatype(&label.name, label.datatype, "INT64")),
            }
        })
        .transpose()?;
    let label_parameter = request.parameters.get("label").map(|v| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    let n = match (&codes, &labels) {
        (Some((a, _)), Some((b, _))) if a != b => {
            return Err(OipError::BadRequest(format!("inputs `z` ({a} rows) and `label` ({b} rows) must have the same number of rows")))
        }
        (Some((rows, _)), _) | (None, Some((rows, _))) => *rows,
        (None, None) => {
            let n = parameter_u64(request, "n")?.unwrap_or(1) as usize;
            if !(1..=MAX_SAMPLES).contains(&n) {
                return Err(OipError::BadRequest(format!("parameter `n` = {n} is outside 1..={MAX_SAMPLES}")));
            }
            n
        }
    };
    let conditioning = match (labels, label_parameter) {
        (Some(_), Some(_)) => {
            return Err(OipError::BadRequest("give labels as the input `label` or the parameter `label`, not both".into()))
        }
        (Some((_, labels)), None) => Conditioning::PerRow(labels),
        (None, Some(label)) => Conditioning::Label(label),
        (None, None) => Conditioning::None,
    };
    let seed = parameter_u64(request, "seed")?.unwrap_or(0);
    if seed > i64::MAX as u64 {
        return Err(OipError::BadRequest(format!("parameter `seed` = {seed} is above the largest seed, 2^63-1")));
    }
    let temperature = match request.parameters.get("temperature") {
        None => 1.0,
        Some(v) => v.as_f64().ok_or_else(|| OipError::BadRequest(format!("parameter `temperature` must be a number, not {v}")))?,
    };
    if !(temperature > 0.0 && temperature <= 10.0) {
        return Err(OipError::BadRequest(format!("parameter `temperature` = {temperature} must be in (0, 10]")));
    }
    let task = Task::Sample { n, conditioning, codes: codes.map(|(_, values)| values), temperature, seed };
    let Outcome::Generated(Generated { images, .. }) = model.run(task).await? else {
        return Err(OipError::Internal("the model answered a generation with an analysis".into()));
    };
    let [c, h, w] = config.image.dims();
    Ok(names
        .into_iter()
        .map(|name| Tensor {
            name: name.into(),
            datatype: Datatype::Fp32,
            shape: vec![n as i64, c, h, w],
            contents: Contents::Fp32(images.pixels.clone()),
        })
        .collect())
}

/// A model's metadata, with every published version of it. Models load on first use, so
/// describing one loads it.
pub async fn describe(host: &ModelHost, models_dir: &Path, model: &ModelRef) -> Result<ModelMetadata, OipError> {
    let serving = host.get(model).await?;
    let (name, _) = model_identity(serving.info());
    let (dir, family) = (models_dir.to_path_buf(), name.to_string());
    let versions = tokio::task::spawn_blocking(move || artifact::versions(&dir, &family))
        .await
        .map_err(|e| OipError::Internal(format!("listing versions failed: {e}")))?;
    let versions = versions.into_iter().map(|(v, _)| v.to_string()).collect();
    Ok(model_metadata(name, versions, &serving.info().config))
}

/// The model's name and version as the protocol reports them.
pub fn model_identity(info: &ModelInfo) -> (&str, &str) {
    info.id.split_once('@').unwrap_or((&info.id, ""))
}
