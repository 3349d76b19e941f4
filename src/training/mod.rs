//! The training engine: epoch loop, schedules, KL warm-up, validation, checkpoints and resume,
//! cancellation and progress reporting. Used by the CLI and by the job queue.

pub mod augment;
pub mod cli;
pub mod codes;
pub mod eval;
pub mod judge;
pub mod optim;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::data::{balanced_subset, shuffled_indices, Dataset, Splits};
use crate::models::{self, artifact, Architecture, LoadedModel, ModelConfig, ModelError, SmoothedImages};
use optim::{Optimizer, OptimizerConfig};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid training options: {0}")]
    Invalid(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error("training diverged at epoch {epoch}, step {step}: the loss became {value} (try a lower learning rate, gradient clipping or KL warm-up)")]
    Diverged { epoch: usize, step: usize, value: f64 },
    #[error("checkpoint {path}: {why}")]
    Checkpoint { path: PathBuf, why: String },
    #[error("training cancelled after {completed_epochs} completed epoch(s)")]
    Cancelled { completed_epochs: usize },
    #[error("another worker took this job over (this worker's lease expired); this one writes nothing more")]
    Fenced,
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Learning-rate schedule over the whole run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Schedule {
    Constant,
    /// Multiply by `gamma` every `every_epochs` epochs.
    Step {
        every_epochs: usize,
        gamma: f64,
    },
    /// Cosine decay from the base rate to `min_factor`·base at the end.
    Cosine {
        min_factor: f64,
    },
}

impl Schedule {
    /// The factor on the base rate at fractional epoch `t` of `epochs`.
    pub fn factor(&self, t: f64, epochs: usize) -> f64 {
        match *self {
            Self::Constant => 1.0,
            Self::Step { every_epochs, gamma } => gamma.powi((t as usize / every_epochs.max(1)) as i32),
            Self::Cosine { min_factor } => {
                let progress = (t / epochs.max(1) as f64).clamp(0.0, 1.0);
                min_factor + (1.0 - min_factor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

/// Everything a training run needs besides the data itself. Every door (`POST /train`, config
/// files, `vae-serve train`, the console) names only what it changes; the rest comes from
/// [`TrainOptions::recommended`] for the chosen architecture, whatever the door.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct TrainOptions {
    pub model: ModelConfig,
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: OptimizerConfig,
    pub schedule: Schedule,
    /// KL weight rises linearly from 0 to `kl_beta` over this many epochs (0: no warm-up).
    pub kl_warmup_epochs: f64,
    /// β: the weight of the KL term in the loss once warmed up (1: the ELBO; > 1 squeezes what z
    /// carries, so the label has more to say). The bound reported keeps weight 1.
    pub kl_beta: f64,
    /// Semi-supervised: labelled examples in total, balanced over classes.
    pub labeled: usize,
    /// Semi-supervised: labelled examples appended to every unlabelled batch.
    pub labeled_batch_size: usize,
    /// Semi-supervised: the classifier sees each training image moved by a random whole-pixel
    /// offset up to this many pixels per axis (0: off); encoder and decoder see the originals.
    /// Translation invariance is what a classifier trained on few labels lacks most.
    pub augment_shift: i64,
    /// Recompute exact BN population statistics over the training set after training.
    pub bn_recompute: bool,
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self::recommended(Architecture::Mlp)
    }
}

/// Option groups whose fields are given one by one over the recipe's; any other value (a
/// schedule, a likelihood, a list) replaces the recipe's whole.
const MERGED_GROUPS: [&str; 2] = ["model", "optimizer"];

impl TrainOptions {
    /// The best recipe measured for `architecture` (BENCHMARKS.md: "Quality" and
    /// "Semi-supervised VAE"), the one set of defaults every door uses.
    pub fn recommended(architecture: Architecture) -> Self {
        let common = Self {
            model: ModelConfig { architecture, ..ModelConfig::default() },
            epochs: 60,
            batch_size: 100,
            optimizer: OptimizerConfig::default(),
            schedule: Schedule::Cosine { min_factor: 0.01 },
            kl_warmup_epochs: 0.0,
            kl_beta: 1.0,
            labeled: 100,
            labeled_batch_size: 100,
            augment_shift: 0,
            bn_recompute: true,
            seed: 0,
        };
        match architecture {
            // 101.6 nats against 102.7 for 512,256.
            Architecture::Mlp => Self { model: ModelConfig { hidden: vec![1024, 512], ..common.model }, ..common },
            // Rescaling RMSprop at 2.5e-4: 99.3 nats against Adam's 100.1.
            Architecture::Conv => Self {
                optimizer: OptimizerConfig { kind: optim::OptimizerKind::Rmsprop, learning_rate: 2.5e-4, ..common.optimizer },
                ..common
            },
            // α = 10 and the classifier's shifted view: 95.0% with 100 labels against 81.8% without.
            // The label in the encoder: label fidelity 84.3% against 70.0%, −ELBO 110.7 against 114.2.
            // Virtual adversarial training: see BENCHMARKS.md, "Virtual adversarial training".
            Architecture::SemiSupervised => Self::semi_supervised(common),
            // The same on conv stages, each unlabelled image marginalised over its two likeliest
            // labels (8.0 s per epoch against 15.7 s over all ten), label consistency γ = 3, and
            // virtual adversarial training on the unlabelled images only (10% faster, no accuracy
            // lost): 98.2% and 97.6% with 100 labels (seeds 0 and 1), label fidelity 96.9% and
            // 96.3% (BENCHMARKS.md, "Two labels per image" and "Smoothing only the unlabelled images").
            Architecture::SemiSupervisedConv => {
                let recipe = Self::semi_supervised(common);
                let model = ModelConfig {
                    marginal_labels: 2,
                    label_consistency_weight: 3.0,
                    virtual_adversarial_images: SmoothedImages::Unlabelled,
                    ..recipe.model
                };
                Self { model, ..recipe }
            }
        }
    }

    /// The semi-supervised recipe over `common`, either backbone.
    fn semi_supervised(common: Self) -> Self {
        Self {
            model: ModelConfig { classifier_weight: 10.0, label_in_encoder: true, virtual_adversarial_weight: 1.0, ..common.model },
            augment_shift: 2,
            ..common
        }
    }

    /// `given` (an `options` object: JSON, or TOML read as JSON) over the recipe of the
    /// architecture it names, then read strictly: unknown keys are errors.
    pub fn resolve(given: serde_json::Value) -> Result<Self, String> {
        let serde_json::Value::Object(given) = given else { return Err("training options must be an object".into()) };
        let architecture = match given.get("model").and_then(|m| m.get("architecture")) {
            Some(name) => Architecture::deserialize(name).map_err(|e| format!("model.architecture: {e}"))?,
            None => Architecture::Mlp,
        };
        let recipe = Self::recommended(architecture);
        let mut resolved = match Self::serialize(&recipe, serde_json::value::Serializer).map_err(|e| e.to_string())? {
            serde_json::Value::Object(fields) => fields,
            _ => unreachable!("options serialise as an object"),
        };
        for (key, value) in given {
            match (resolved.get_mut(&key), value) {
                (Some(serde_json::Value::Object(group)), serde_json::Value::Object(fields)) if MERGED_GROUPS.contains(&key.as_str()) => {
                    group.extend(fields)
                }
                (_, value) => {
                    resolved.insert(key, value);
                }
            }
        }
        Self::deserialize(serde_json::Value::Object(resolved)).map_err(|e| e.to_string())
    }
}

impl Serialize for TrainOptions {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Self::serialize(self, serializer)
    }
}

impl<'de> Deserialize<'de> for TrainOptions {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let given = serde_json::Value::deserialize(deserializer)?;
        Self::resolve(given).map_err(serde::de::Error::custom)
    }
}

impl TrainOptions {
    pub fn validate(&self) -> Result<(), TrainError> {
        let invalid = |why: String| Err(TrainError::Invalid(why));
        self.model.validate()?;
        self.optimizer.validate().map_err(TrainError::Invalid)?;
        if !(1..=10_000).contains(&self.epochs) {
            return invalid(format!("epochs = {} must be in 1..=10000", self.epochs));
        }
        if !(2..=8192).contains(&self.batch_size) {
            return invalid(format!("batch_size = {} must be in 2..=8192 (batch norm needs at least 2)", self.batch_size));
        }
        if !(0..=8).contains(&self.augment_shift) {
            return invalid(format!("augment_shift = {} must be in 0..=8 pixels", self.augment_shift));
        }
        if self.augment_shift > 0 && !self.model.architecture.is_semi_supervised() {
            return invalid("augment_shift shifts what the classifier sees: only semi-supervised models have one".into());
        }
        if self.kl_warmup_epochs.is_nan() || self.kl_warmup_epochs < 0.0 {
            return invalid("kl_warmup_epochs must be ≥ 0".into());
        }
        if !(self.kl_beta > 0.0 && self.kl_beta <= 100.0) {
            return invalid(format!("kl_beta = {} must be in (0, 100]", self.kl_beta));
        }
        if let Schedule::Cosine { min_factor } = self.schedule {
            if !(0.0..=1.0).contains(&min_factor) {
                return invalid(format!("schedule.min_factor = {min_factor} must be in [0, 1]"));
            }
        }
        if self.optimizer.ema_decay.is_some() && !self.bn_recompute {
            return invalid(
                "weight averaging (optimizer.ema_decay) needs bn_recompute: averaged weights need their own BN statistics".into(),
            );
        }
        if self.model.architecture.is_semi_supervised() {
            let k = self.model.num_classes() as usize;
            if self.labeled == 0 || !self.labeled.is_multiple_of(k) {
                return invalid(format!("labeled = {} must be a positive multiple of the {k} classes", self.labeled));
            }
            if self.labeled_batch_size == 0 {
                return invalid("labeled_batch_size must be ≥ 1".into());
            }
        }
        Ok(())
    }
}

/// Metrics of one finished epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub loss: f64,
    pub reconstruction: f64,
    pub kl: f64,
    /// Validation −ELBO in nats per image (population BN statistics).
    pub validation_negative_elbo: Option<f64>,
    pub validation_accuracy: Option<f64>,
    pub learning_rate: f64,
    pub kl_weight: f64,
    pub seconds: f64,
    pub images_per_second: f64,
}

/// What the engine reports while it works.
#[derive(Debug, Clone)]
pub enum Progress {
    /// Training resumed from a checkpoint holding these finished epochs.
    Resumed {
        history: Vec<EpochMetrics>,
    },
    Step {
        epoch: usize,
        step: usize,
        steps: usize,
    },
    Epoch(EpochMetrics),
}

/// Stops a run from outside (checked between batches), and fences its durable writes: a run
/// whose token has a fence asks it before every checkpoint and before publishing, so that a
/// worker whose job another worker took over writes nothing more.
#[derive(Clone, Default)]
pub struct CancelToken {
    cancelled: Arc<AtomicBool>,
    fence: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
}

impl CancelToken {
    /// A token whose run may write only while `may_write` says so.
    pub fn fenced(may_write: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Self { cancelled: Arc::default(), fence: Some(Arc::new(may_write)) }
    }

    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    fn check_fence(&self) -> Result<(), TrainError> {
        match &self.fence {
            Some(may_write) if !may_write() => Err(TrainError::Fenced),
            _ => Ok(()),
        }
    }
}

impl std::fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelToken").field("cancelled", &self.is_cancelled()).field("fenced", &self.fence.is_some()).finish()
    }
}

/// A finished run: the model and its history.
pub struct Trained {
    pub model: LoadedModel,
    pub history: Vec<EpochMetrics>,
}

/// State saved beside the weights at the end of each epoch.
#[derive(Debug, Serialize, Deserialize)]
struct CheckpointState {
    completed_epochs: usize,
    options: TrainOptions,
    history: Vec<EpochMetrics>,
}

const CHECKPOINT_STATE: &str = "state.json";
const CHECKPOINT_OPTIMIZER: &str = "optimizer.safetensors";

/// Where a training run reads and writes.
pub struct Places<'a> {
    pub data_dir: &'a Path,
    pub models_dir: &'a Path,
    /// Checkpoint after every epoch here, and resume from what is found.
    pub checkpoint_dir: Option<&'a Path>,
}

/// How to read the dataset of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DataRequest {
    /// Fraction of the training images held out for validation.
    pub validation_fraction: f64,
    /// Use at most this many training images.
    pub max_train: Option<usize>,
    /// Image folders: side length images are resized to.
    pub image_size: i64,
    /// Image folders: 1 (grey) or 3 (RGB).
    pub channels: i64,
}

impl Default for DataRequest {
    fn default() -> Self {
        Self { validation_fraction: 0.1, max_train: None, image_size: 32, channels: 3 }
    }
}

/// A complete training request: what `POST /train` takes and `vae-serve train` builds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "my-ssvae",
    "dataset": "mnist",
    "options": {
        "epochs": 20,
        "batch_size": 100,
        "model": {"architecture": "semi-supervised", "latent_dim": 32, "hidden": [512, 256], "likelihood": {"kind": "bernoulli"}},
        "optimizer": {"kind": "rmsprop", "learning_rate": 0.001, "momentum": 0.9, "grad_clip": 100.0},
        "schedule": {"kind": "cosine", "min_factor": 0.01},
        "kl_warmup_epochs": 0.0,
        "labeled": 100,
        "seed": 1
    },
    "data": {"validation_fraction": 0.1}
}))]
pub struct TrainRequest {
    /// Model name; the result is published as its next version.
    #[schema(example = "my-vae")]
    pub name: String,
    /// Dataset name (under the data directory or /usr/share/datasets) or path.
    #[schema(example = "mnist")]
    pub dataset: String,
    /// Model, optimisation and schedule (every field optional).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub options: TrainOptions,
    #[serde(default)]
    pub data: DataRequest,
}

/// A published model: what a training run produced.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    pub name: String,
    pub version: u32,
    pub path: PathBuf,
    pub metrics: BTreeMap<String, f64>,
    /// Every epoch's metrics, for learning curves and time-to-quality.
    pub history: Vec<EpochMetrics>,
}

/// Loads the data, trains, evaluates on the test split and publishes the model atomically.
pub fn train_and_publish(
    request: &TrainRequest,
    places: &Places<'_>,
    device: Device,
    iwae_samples: i64,
    cancel: &CancelToken,
    progress: &mut dyn FnMut(Progress),
) -> Result<Published, TrainError> {
    artifact::validate_name(&request.name)?;
    let source = crate::data::resolve_or_download(&request.dataset, places.data_dir)?;
    let data_options = crate::data::DataOptions {
        validation_fraction: request.data.validation_fraction,
        seed: request.options.seed,
        image_shape: Some(models::ImageShape {
            channels: request.data.channels,
            height: request.data.image_size,
            width: request.data.image_size,
        }),
        max_train: request.data.max_train,
    };
    let splits = crate::data::load(&source, &data_options)?;
    let mut options = request.options.clone();
    options.model.image = splits.shape.clone();
    options.model.label_names = splits.label_names.clone();
    tracing::info!(dataset = %source.path().display(), train = splits.train.len(), validation = splits.validation.len(), test = splits.test.len(), "dataset loaded");

    let trained = train(&options, &splits, device, places.checkpoint_dir, cancel, progress)?;
    let test = eval::evaluate(&*trained.model.model, &splits.test.to_device(device), 500, iwae_samples);
    let mut metrics = BTreeMap::new();
    metrics.insert("test_negative_elbo".to_string(), test.negative_elbo);
    if let Some(v) = test.iwae_negative_log_likelihood {
        metrics.insert("test_iwae_negative_log_likelihood".to_string(), v);
    }
    if let Some(accuracy) = test.accuracy {
        metrics.insert("test_accuracy".to_string(), accuracy);
    }
    metrics.extend(judge_samples(places.models_dir, &judge::dataset_key(&source), &trained.model, options.seed, device));
    if let Some(last) = trained.history.last() {
        metrics.insert("epochs".to_string(), last.epoch as f64);
        let mean_seconds = trained.history.iter().map(|m| m.seconds).sum::<f64>() / trained.history.len() as f64;
        metrics.insert("mean_epoch_seconds".to_string(), mean_seconds);
    }
    let manifest = artifact::Manifest {
        format_version: artifact::FORMAT_VERSION,
        name: request.name.clone(),
        config: options.model.clone(),
        dataset: request.dataset.clone(),
        training: serde_json::to_value(&options).map_err(|e| TrainError::Invalid(e.to_string()))?,
        metrics: metrics.clone(),
        torch_version: crate::runtime::torch_version().to_string(),
        created_at: chrono::Utc::now(),
    };
    cancel.check_fence()?;
    let (version, path) = artifact::publish(places.models_dir, &trained.model, &manifest)?;
    Ok(Published { name: request.name.clone(), version, path, metrics, history: trained.history })
}

/// Rows that a pass over a whole image set (the judge's features, classifying, encoding, drawing
/// samples) takes at a time, so that its memory stays bounded whatever the set's size.
const PASS_ROWS: i64 = 500;

/// `(start, rows)` of each pass over `n` rows, `PASS_ROWS` at a time, in order.
pub(crate) fn passes(n: i64) -> impl Iterator<Item = (i64, i64)> {
    (0..n).step_by(PASS_ROWS as usize).map(move |start| (start, PASS_ROWS.min(n - start)))
}

/// `pass` over `images` `[N, ...]`, `PASS_ROWS` rows at a time, in order.
pub(crate) fn by_rows<T>(images: &Tensor, mut pass: impl FnMut(&Tensor) -> T) -> Vec<T> {
    passes(images.size()[0]).map(|(start, rows)| pass(&images.narrow(0, start, rows))).collect()
}

/// Samples a published model is scored on: as many as the MNIST test set, as the Fréchet
/// distance is usually measured.
pub const SCORED_SAMPLES: i64 = 10_000;

/// The judge's metrics for a freshly trained model (label fidelity and Fréchet distance at
/// temperature 1), when the dataset has a judge; none, logged, when it has not or cannot judge it.
fn judge_samples(models_dir: &Path, dataset: &str, model: &LoadedModel, seed: u64, device: Device) -> BTreeMap<String, f64> {
    let scored = judge::Judge::load(models_dir, dataset, device).and_then(|found| {
        found.map(|judge| judge::score_samples(&judge, model, SCORED_SAMPLES, 1.0, seed, &codes::Codes::Prior)).transpose()
    });
    match scored {
        Ok(Some(scores)) => scores.metrics(),
        Ok(None) => {
            tracing::info!(dataset, "no judge for this dataset, so no label fidelity or Fréchet distance (`vae-serve judge` makes one)");
            BTreeMap::new()
        }
        Err(error) => {
            tracing::warn!(dataset, %error, "the dataset's judge could not score this model");
            BTreeMap::new()
        }
    }
}

/// Trains per `options` on `splits`. With `checkpoint_dir`, saves a checkpoint after every
/// epoch and resumes from the one it finds there (which must come from the same options).
pub fn train(
    options: &TrainOptions,
    splits: &Splits,
    device: Device,
    checkpoint_dir: Option<&Path>,
    cancel: &CancelToken,
    progress: &mut dyn FnMut(Progress),
) -> Result<Trained, TrainError> {
    options.validate()?;
    if splits.shape != options.model.image {
        return Err(TrainError::Invalid(format!("the model expects images {:?}, the dataset has {:?}", options.model.image, splits.shape)));
    }
    tch::manual_seed(options.seed as i64);
    let model = models::build(&options.model, device)?;
    let mut optimizer = Optimizer::new(&model.vars, options.optimizer.clone());
    let mut history = Vec::new();
    if let Some(dir) = checkpoint_dir {
        if let Some(state) = restore_checkpoint(dir, options, &model, &mut optimizer)? {
            tracing::info!(completed_epochs = state.completed_epochs, "resuming from checkpoint");
            history = state.history;
            progress(Progress::Resumed { history: history.clone() });
        }
    }

    let semi_supervised = options.model.architecture.is_semi_supervised();
    let labeled = if semi_supervised {
        let per_class = options.labeled / options.model.num_classes() as usize;
        let indices = balanced_subset(&splits.train.labels, options.model.num_classes() as usize, per_class, options.seed)?;
        Some(splits.train.select(&indices).to_device(device))
    } else {
        None
    };
    let train_set = splits.train.to_device(device);
    let validation = splits.validation.to_device(device);
    let n = train_set.len();
    let steps = n / options.batch_size;
    if steps == 0 {
        return Err(TrainError::Invalid(format!("batch_size {} exceeds the {n} training images", options.batch_size)));
    }

    for epoch in history.len()..options.epochs {
        let started = Instant::now();
        // Seeded per epoch, so a resumed run draws the same noise and order as an uninterrupted one.
        tch::manual_seed(options.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64) as i64);
        let order = Tensor::from_slice(&shuffled_indices(n, options.seed ^ (epoch as u64 + 1) << 20)).to_device(device);
        let mut sums = Tensor::zeros([3], (Kind::Float, device));
        let (mut learning_rate, mut kl_weight) = (0.0, 1.0);
        for step in 0..steps {
            if cancel.is_cancelled() {
                return Err(TrainError::Cancelled { completed_epochs: epoch });
            }
            let t = epoch as f64 + step as f64 / steps as f64;
            learning_rate = options.optimizer.learning_rate * options.schedule.factor(t, options.epochs);
            let warmed = if options.kl_warmup_epochs > 0.0 { (t / options.kl_warmup_epochs).min(1.0) } else { 1.0 };
            kl_weight = warmed * options.kl_beta;
            let index = order.narrow(0, (step * options.batch_size) as i64, options.batch_size as i64);
            let mut images = train_set.images.index_select(0, &index);
            let mut labels = Tensor::full([options.batch_size as i64], -1, (Kind::Int64, device));
            if let Some(labeled) = &labeled {
                let pick = Tensor::randint(labeled.len() as i64, [options.labeled_batch_size as i64], (Kind::Int64, device));
                images = Tensor::cat(&[images, labeled.images.index_select(0, &pick)], 0);
                labels = Tensor::cat(&[labels, labeled.labels.index_select(0, &pick)], 0);
            }
            // With augment_shift 0 the view is the batch itself.
            let classifier_view = augment::random_shift(&images, options.augment_shift);
            let objective = model.model.objective(&images, Some(&classifier_view), &labels, kl_weight, true);
            optimizer.zero_grad();
            objective.loss.backward();
            optimizer.step(learning_rate);
            sums += Tensor::stack(&[objective.loss.detach(), objective.reconstruction.detach(), objective.kl.detach()], 0);
            // One host sync every 50 steps: progress and divergence checks without stalling the device each step.
            if step % 50 == 49 || step + 1 == steps {
                let loss = objective.loss.double_value(&[]);
                if !loss.is_finite() {
                    return Err(TrainError::Diverged { epoch: epoch + 1, step: step + 1, value: loss });
                }
                progress(Progress::Step { epoch: epoch + 1, step: step + 1, steps });
            }
        }
        let means: Vec<f64> = Vec::<f64>::try_from(sums.to_kind(Kind::Double) / steps as f64)?;
        if means.iter().any(|v| !v.is_finite()) {
            return Err(TrainError::Diverged { epoch: epoch + 1, step: steps, value: means[0] });
        }
        let seconds = started.elapsed().as_secs_f64();
        let evaluation = (!validation.is_empty()).then(|| eval::evaluate(&*model.model, &validation, 500, 0));
        let metrics = EpochMetrics {
            epoch: epoch + 1,
            loss: means[0],
            reconstruction: means[1],
            kl: means[2],
            validation_negative_elbo: evaluation.as_ref().map(|e| e.negative_elbo),
            validation_accuracy: evaluation.and_then(|e| e.accuracy),
            learning_rate,
            kl_weight,
            seconds,
            images_per_second: (steps * options.batch_size) as f64 / seconds,
        };
        history.push(metrics.clone());
        if let Some(dir) = checkpoint_dir {
            cancel.check_fence()?;
            save_checkpoint(dir, options, &model, &optimizer, &history)?;
        }
        progress(Progress::Epoch(metrics));
    }

    optimizer.use_averaged_weights();
    if options.bn_recompute {
        recompute_batch_norm(&model, &train_set, options.batch_size);
    }
    Ok(Trained { model, history })
}

/// Fixed-point BN statistics: one pass over the training set in training mode (no gradients).
pub fn recompute_batch_norm(model: &LoadedModel, train_set: &Dataset, batch_size: usize) {
    let batches = train_set.len() / batch_size;
    model.bn.recompute(batches, |k| {
        let images = train_set.images.narrow(0, (k * batch_size) as i64, batch_size as i64);
        let unlabelled = Tensor::full([batch_size as i64], -1, (Kind::Int64, images.device()));
        let _ = model.model.objective(&images, None, &unlabelled, 1.0, true);
    });
}

fn checkpoint_error(path: &Path, why: impl ToString) -> TrainError {
    TrainError::Checkpoint { path: path.to_path_buf(), why: why.to_string() }
}

/// Writes the checkpoint to a fresh directory and renames it over the old one.
fn save_checkpoint(
    dir: &Path,
    options: &TrainOptions,
    model: &LoadedModel,
    optimizer: &Optimizer,
    history: &[EpochMetrics],
) -> Result<(), TrainError> {
    let staging = dir.with_extension("staging");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| checkpoint_error(&staging, e))?;
    let weights: Vec<(String, Tensor)> = model.vars.variables().into_iter().collect();
    Tensor::write_safetensors(&weights, staging.join(artifact::WEIGHTS_FILE))?;
    Tensor::write_safetensors(&optimizer.state(), staging.join(CHECKPOINT_OPTIMIZER))?;
    let state = CheckpointState { completed_epochs: history.len(), options: options.clone(), history: history.to_vec() };
    let json = serde_json::to_vec_pretty(&state).map_err(|e| checkpoint_error(&staging, e))?;
    std::fs::write(staging.join(CHECKPOINT_STATE), json).map_err(|e| checkpoint_error(&staging, e))?;
    for file in [artifact::WEIGHTS_FILE, CHECKPOINT_OPTIMIZER, CHECKPOINT_STATE] {
        std::fs::File::open(staging.join(file)).and_then(|f| f.sync_all()).map_err(|e| checkpoint_error(&staging, e))?;
    }
    let old = dir.with_extension("old");
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| checkpoint_error(dir, e))?;
    }
    std::fs::rename(&staging, dir).map_err(|e| checkpoint_error(dir, e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

fn restore_checkpoint(
    dir: &Path,
    options: &TrainOptions,
    model: &LoadedModel,
    optimizer: &mut Optimizer,
) -> Result<Option<CheckpointState>, TrainError> {
    // A crash between the two renames of `save_checkpoint` leaves only `.old`: use it.
    let old = dir.with_extension("old");
    let dir = if !dir.join(CHECKPOINT_STATE).is_file() && old.join(CHECKPOINT_STATE).is_file() { old.as_path() } else { dir };
    let state_path = dir.join(CHECKPOINT_STATE);
    if !state_path.is_file() {
        return Ok(None);
    }
    let bytes = std::fs::read(&state_path).map_err(|e| checkpoint_error(&state_path, e))?;
    let state: CheckpointState = serde_json::from_slice(&bytes).map_err(|e| checkpoint_error(&state_path, e))?;
    if state.options != *options {
        return Err(checkpoint_error(dir, "it was written by a run with different options; remove it to start over"));
    }
    let weights: BTreeMap<String, Tensor> = Tensor::read_safetensors(dir.join(artifact::WEIGHTS_FILE))?.into_iter().collect();
    tch::no_grad(|| -> Result<(), TrainError> {
        for (name, mut var) in model.vars.variables() {
            let saved = weights.get(&name).ok_or_else(|| checkpoint_error(dir, format!("missing tensor `{name}`")))?;
            var.f_copy_(saved)?;
        }
        Ok(())
    })?;
    let saved_optimizer: BTreeMap<String, Tensor> = Tensor::read_safetensors(dir.join(CHECKPOINT_OPTIMIZER))?.into_iter().collect();
    optimizer.load_state(&saved_optimizer).map_err(|e| checkpoint_error(dir, e))?;
    Ok(Some(state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_cover_every_row_once_in_order() {
        assert_eq!(passes(1201).collect::<Vec<_>>(), [(0, 500), (500, 500), (1000, 201)]);
        assert_eq!(passes(500).collect::<Vec<_>>(), [(0, 500)]);
        assert_eq!(passes(0).count(), 0);
    }

    #[test]
    fn options_name_only_what_they_change_over_the_architectures_recipe() {
        assert_eq!(TrainOptions::resolve(serde_json::json!({})).unwrap(), TrainOptions::recommended(Architecture::Mlp));
        let semi: TrainOptions = serde_json::from_value(serde_json::json!({"model": {"architecture": "semi-supervised"}})).unwrap();
        assert_eq!(
            (
                semi.model.classifier_weight,
                semi.model.label_in_encoder,
                semi.model.virtual_adversarial_weight,
                semi.augment_shift,
                semi.epochs
            ),
            (10.0, true, 1.0, 2, 60)
        );
        let semi_conv: TrainOptions =
            serde_json::from_value(serde_json::json!({"model": {"architecture": "semi-supervised-conv"}})).unwrap();
        assert_eq!(
            (semi_conv.model.marginal_labels, semi_conv.model.label_consistency_weight, semi_conv.model.virtual_adversarial_images),
            (2, 3.0, SmoothedImages::Unlabelled)
        );
        let on_the_mlp = ModelConfig {
            architecture: Architecture::SemiSupervised,
            marginal_labels: 0,
            label_consistency_weight: 0.0,
            virtual_adversarial_images: SmoothedImages::All,
            ..semi_conv.model.clone()
        };
        assert_eq!(TrainOptions { model: on_the_mlp, ..semi_conv.clone() }, semi, "the conv backbone takes the semi-supervised recipe");
        assert_eq!(semi_conv.model.conv_channels, [16, 16]);
        let conv: TrainOptions = serde_json::from_value(serde_json::json!({
            "model": {"architecture": "conv", "latent_dim": 8},
            "optimizer": {"learning_rate": 1e-3},
            "schedule": {"kind": "step", "every_epochs": 5, "gamma": 0.5},
        }))
        .unwrap();
        let recipe = TrainOptions::recommended(Architecture::Conv);
        assert_eq!((conv.model.latent_dim, &conv.model.conv_channels), (8, &recipe.model.conv_channels), "fields merge");
        assert_eq!((conv.optimizer.kind, conv.optimizer.learning_rate), (recipe.optimizer.kind, 1e-3));
        assert_eq!(conv.schedule, Schedule::Step { every_epochs: 5, gamma: 0.5 }, "a schedule is replaced whole");
        // A resolved set of options reads back as itself (manifests and stored jobs hold these).
        assert_eq!(serde_json::from_value::<TrainOptions>(serde_json::to_value(&conv).unwrap()).unwrap(), conv);
        for bad in [serde_json::json!({"epoch": 3}), serde_json::json!({"model": {"architecture": "gan"}}), serde_json::json!([1])] {
            assert!(serde_json::from_value::<TrainOptions>(bad.clone()).is_err(), "{bad}");
        }
        assert!(serde_json::from_value::<TrainOptions>(serde_json::json!({"model": {"hiden": [3]}}))
            .unwrap_err()
            .to_string()
            .contains("hiden"));
    }

    fn semi_supervised() -> TrainOptions {
        let mut options = TrainOptions::default();
        options.model.architecture = Architecture::SemiSupervised;
        options.model.hidden = vec![32];
        options.model.latent_dim = 4;
        options
    }

    #[test]
    fn classifier_augmentation_is_checked_and_only_for_classifiers() {
        let mut options = semi_supervised();
        options.augment_shift = 2;
        assert!(options.validate().is_ok());
        options.augment_shift = 9;
        assert!(options.validate().unwrap_err().to_string().contains("augment_shift"));
        let mut mlp = TrainOptions { augment_shift: 2, ..TrainOptions::default() };
        assert!(mlp.validate().unwrap_err().to_string().contains("only semi-supervised"));
        mlp.augment_shift = 0;
        assert!(mlp.validate().is_ok());
    }

    #[test]
    fn kl_beta_is_a_positive_bounded_weight() {
        for ok in [0.5, 1.0, 4.0, 100.0] {
            assert!(TrainOptions { kl_beta: ok, ..TrainOptions::default() }.validate().is_ok(), "{ok}");
        }
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 101.0] {
            let why = TrainOptions { kl_beta: bad, ..TrainOptions::default() }.validate().unwrap_err().to_string();
            assert!(why.contains("kl_beta"), "{bad}: {why}");
        }
    }

    #[test]
    fn the_classifier_reads_its_own_view_and_the_generative_terms_do_not() {
        let loaded = models::build(&semi_supervised().model, tch::Device::Cpu).unwrap();
        let images = Tensor::rand([8, 1, 28, 28], (Kind::Float, tch::Device::Cpu));
        let labels = Tensor::from_slice(&[0i64, 1, 2, 3, -1, -1, -1, -1]);
        let other_view = crate::training::augment::random_shift(&images, 3);
        let run = |view: Option<&Tensor>| {
            tch::manual_seed(7);
            let o = tch::no_grad(|| loaded.model.objective(&images, view, &labels, 1.0, false));
            (o.kl.double_value(&[]), o.classification.unwrap().double_value(&[]))
        };
        let (plain, same, shifted) = (run(None), run(Some(&images)), run(Some(&other_view)));
        // To rounding: tests running beside this one can change how libtorch splits a reduction.
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * a.abs().max(b.abs());
        assert!(close(plain.0, same.0) && close(plain.1, same.1), "a view equal to the images changes nothing");
        assert!(close(plain.0, shifted.0), "the encoder (KL) does not see the classifier's view");
        assert!(!close(plain.1, shifted.1), "the classifier does");
    }
}
