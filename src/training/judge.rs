//! The judge: a small CNN classifier that shares nothing with the models it scores, trained once
//! per dataset, deterministically. It answers two questions about a model's samples: does a
//! sample drawn for label k look like a k (label fidelity), and how far are the samples from the
//! test images in the judge's feature space (Fréchet distance, with the training images' own
//! distance to the test images as the floor).
//!
//! A judge lives at `<models_dir>/.judges/<dataset>.safetensors` (weights, plus the test set's
//! feature mean and covariance) with a card `<dataset>.json` saying how it was made and how good
//! it is. The leading dot keeps it out of the model listing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::augment::shift;
use super::codes::{CodeSource, Codes};
use super::{by_rows, passes};
use crate::data::{shuffled_indices, Dataset, Splits};
use crate::models::{ImageShape, LoadedModel, ModelError};

/// Channels of the judge's two conv stages (each followed by 2×2 max pooling), the grid the
/// second's output is pooled to, and the width of the fully connected feature layer.
const CHANNELS: [i64; 2] = [32, 64];
const GRID: i64 = 7;
const FEATURES: i64 = 128;
const BATCH: i64 = 100;
const LEARNING_RATE: f64 = 1e-3;
/// Random whole-pixel shifts while training: a judge that only knows centred digits would call
/// a slightly off-centre sample wrong.
const AUGMENT_SHIFT: i64 = 2;
pub const DEFAULT_EPOCHS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    #[error("judge {path}: {why}")]
    Io { path: PathBuf, why: String },
    #[error("the judge of `{dataset}` reads {judge} images with {judge_labels} labels; this model has {model} images with {model_labels} labels")]
    Mismatch { dataset: String, judge: String, judge_labels: usize, model: String, model_labels: usize },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// How a judge was made and how good it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeCard {
    /// The dataset's key (its directory name).
    pub dataset: String,
    pub image: ImageShape,
    pub label_names: Vec<String>,
    pub train_images: usize,
    pub test_images: usize,
    pub epochs: usize,
    pub seed: u64,
    pub test_accuracy: f64,
    /// Fréchet distance between the training and the test images' features: the score real data
    /// gets, below which no model can be expected to go.
    pub frechet_floor: f64,
    pub seconds: f64,
}

pub struct Judge {
    vars: nn::VarStore,
    net: JudgeNet,
    /// Feature mean `[F]` and covariance `[F, F]` of the test images (float64).
    reference_mean: Tensor,
    reference_cov: Tensor,
    pub card: JudgeCard,
}

struct JudgeNet {
    stages: Vec<(nn::Conv2D, nn::BatchNorm)>,
    features: nn::Linear,
    features_bn: nn::BatchNorm,
    logits: nn::Linear,
}

impl JudgeNet {
    fn new(path: &nn::Path, channels: i64, classes: i64) -> Self {
        let conv = nn::ConvConfig { padding: 1, ..Default::default() };
        // Scale 1 as in torch (tch's default draws it at random, from torch's shared generator).
        let bn = nn::BatchNormConfig { ws_init: nn::Init::Const(1.0), ..Default::default() };
        let mut stages = Vec::new();
        let mut input = channels;
        for (i, &width) in CHANNELS.iter().enumerate() {
            let stage = path / format!("stage{i}");
            stages.push((nn::conv2d(&stage / "conv", input, width, 3, conv), nn::batch_norm2d(&stage / "bn", width, bn)));
            input = width;
        }
        Self {
            stages,
            features: nn::linear(path / "features", input * GRID * GRID, FEATURES, Default::default()),
            features_bn: nn::batch_norm1d(path / "features_bn", FEATURES, bn),
            logits: nn::linear(path / "logits", FEATURES, classes, Default::default()),
        }
    }

    /// The fully connected layer's activations `[B, F]`: the space Fréchet distances are measured in.
    fn features(&self, images: &Tensor, train: bool) -> Tensor {
        let mut h = images.shallow_clone();
        for (conv, bn) in &self.stages {
            h = h.apply(conv).apply_t(bn, train).relu().max_pool2d_default(2);
        }
        // Any image size ends on the same grid (28×28 already does: 28 → 14 → 7).
        h.adaptive_avg_pool2d([GRID, GRID]).flatten(1, -1).apply(&self.features).apply_t(&self.features_bn, train).relu()
    }
}

/// Where the judge of `dataset` (its key) is kept: weights and card.
pub fn paths(models_dir: &Path, dataset: &str) -> (PathBuf, PathBuf) {
    let dir = models_dir.join(".judges");
    (dir.join(format!("{dataset}.safetensors")), dir.join(format!("{dataset}.json")))
}

/// The key a dataset's judge is filed under: the name of the directory it was found in.
pub fn dataset_key(source: &crate::data::DatasetSource) -> String {
    source.path().file_name().map_or_else(|| "dataset".to_string(), |n| n.to_string_lossy().into_owned())
}

fn io_error(path: &Path, why: impl ToString) -> JudgeError {
    JudgeError::Io { path: path.to_path_buf(), why: why.to_string() }
}

impl Judge {
    fn build(card: JudgeCard, device: Device) -> Self {
        let vars = nn::VarStore::new(device);
        let net = JudgeNet::new(&(vars.root() / "judge"), card.image.channels, card.label_names.len() as i64);
        let options = (Kind::Double, device);
        Self {
            vars,
            net,
            reference_mean: Tensor::zeros([FEATURES], options),
            reference_cov: Tensor::zeros([FEATURES, FEATURES], options),
            card,
        }
    }

    /// Trains a judge on the training split (every image, shifted by up to ±2 px) and measures
    /// it on the test split. Deterministic for a given seed, data and thread count: its random
    /// numbers come from its own generator, not torch's process-wide one, which anything else
    /// running at the same time (a training job, another test) draws from.
    pub fn train(dataset: &str, splits: &Splits, epochs: usize, seed: u64, device: Device) -> Result<Self, JudgeError> {
        let started = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let card = JudgeCard {
            dataset: dataset.to_string(),
            image: splits.shape.clone(),
            label_names: splits.label_names.clone(),
            train_images: splits.train.len(),
            test_images: splits.test.len(),
            epochs,
            seed,
            test_accuracy: 0.0,
            frechet_floor: 0.0,
            seconds: 0.0,
        };
        let mut judge = Self::build(card, device);
        judge.initialise(&mut rng);
        let mut optimizer = nn::Adam::default().build(&judge.vars, LEARNING_RATE)?;
        let train = splits.train.to_device(device);
        let n = train.len() as i64;
        let steps_per_epoch = (n + BATCH - 1) / BATCH;
        let total_steps = (steps_per_epoch * epochs as i64).max(1);
        let mut step = 0;
        for epoch in 0..epochs {
            let order = Tensor::from_slice(&shuffled_indices(n as usize, seed.wrapping_add(epoch as u64))).to_device(device);
            for start in (0..n).step_by(BATCH as usize) {
                let index = order.narrow(0, start, BATCH.min(n - start));
                let offsets: Vec<i64> = (0..2 * index.size()[0]).map(|_| rng.random_range(-AUGMENT_SHIFT..=AUGMENT_SHIFT)).collect();
                let images = shift(&train.images.index_select(0, &index), &Tensor::from_slice(&offsets).view([-1, 2]).to_device(device));
                let labels = train.labels.index_select(0, &index);
                let logits = judge.net.logits.forward(&judge.net.features(&images, true));
                let loss = logits.cross_entropy_for_logits(&labels);
                // Cosine decay to zero over the run.
                optimizer.set_lr(LEARNING_RATE * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total_steps as f64).cos()));
                optimizer.backward_step(&loss);
                step += 1;
            }
        }
        judge.vars.freeze();
        let test = splits.test.to_device(device);
        let (test_features, accuracy) = judge.features_and_accuracy(&test);
        let (train_features, _) = judge.features_and_accuracy(&train);
        let (mean, cov) = moments(&test_features);
        judge.card.frechet_floor = frechet_distance(&moments(&train_features), &(mean.shallow_clone(), cov.shallow_clone()));
        judge.card.test_accuracy = accuracy;
        judge.reference_mean = mean;
        judge.reference_cov = cov;
        judge.card.seconds = started.elapsed().as_secs_f64();
        Ok(judge)
    }

    /// Every conv and linear layer's weights and biases uniform in ±1/√fan-in (torch's default
    /// scale), drawn from `rng`; batch norm keeps its fixed start.
    fn initialise(&mut self, rng: &mut ChaCha8Rng) {
        let variables: BTreeMap<String, Tensor> = self.vars.variables().into_iter().collect();
        tch::no_grad(|| {
            for (name, weight) in variables.iter().filter(|(name, w)| name.ends_with(".weight") && w.dim() >= 2) {
                let size = weight.size();
                let fan_in: i64 = size[1..].iter().product();
                let bound = 1.0 / (fan_in as f64).sqrt();
                let bias = variables.get(&name.replace(".weight", ".bias"));
                for mut tensor in std::iter::once(weight).chain(bias).map(Tensor::shallow_clone) {
                    let values: Vec<f32> = (0..tensor.numel()).map(|_| rng.random_range(-bound..bound) as f32).collect();
                    tensor.copy_(&Tensor::from_slice(&values).view(tensor.size().as_slice()));
                }
            }
        });
    }

    /// Features of every image `[N, F]` (float64) and the fraction classified as labelled.
    fn features_and_accuracy(&self, data: &Dataset) -> (Tensor, f64) {
        let features = self.features(&data.images);
        let correct = self.predict(&features).eq_tensor(&data.labels).sum(Kind::Int64).int64_value(&[]);
        (features, correct as f64 / data.len().max(1) as f64)
    }

    /// Features `[N, F]` (float64) of images `[N, C, H, W]`, in inference mode.
    fn features(&self, images: &Tensor) -> Tensor {
        tch::no_grad(|| Tensor::cat(&by_rows(images, |rows| self.net.features(rows, false).to_kind(Kind::Double)), 0))
    }

    /// The judge's label `[N]` for each row of features `[N, F]`.
    fn predict(&self, features: &Tensor) -> Tensor {
        tch::no_grad(|| self.net.logits.forward(&features.to_kind(Kind::Float)).argmax(1, false))
    }

    pub fn save(&self, models_dir: &Path) -> Result<(), JudgeError> {
        let (weights, card) = paths(models_dir, &self.card.dataset);
        let dir = weights.parent().expect("inside .judges");
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let mut named: Vec<(String, Tensor)> = self.vars.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named.push(("reference.mean".into(), self.reference_mean.shallow_clone()));
        named.push(("reference.cov".into(), self.reference_cov.shallow_clone()));
        Tensor::write_safetensors(&named, &weights).map_err(|e| io_error(&weights, e))?;
        let json = serde_json::to_vec_pretty(&self.card).map_err(|e| io_error(&card, e))?;
        std::fs::write(&card, json).map_err(|e| io_error(&card, e))
    }

    /// The judge of `dataset`, if one was made.
    pub fn load(models_dir: &Path, dataset: &str, device: Device) -> Result<Option<Self>, JudgeError> {
        let (weights, card_path) = paths(models_dir, dataset);
        if !weights.is_file() {
            return Ok(None);
        }
        let card_bytes = std::fs::read(&card_path).map_err(|e| io_error(&card_path, e))?;
        let card: JudgeCard = serde_json::from_slice(&card_bytes).map_err(|e| io_error(&card_path, e))?;
        let mut judge = Self::build(card, device);
        let mut stored: BTreeMap<String, Tensor> =
            Tensor::read_safetensors(&weights).map_err(|e| io_error(&weights, e))?.into_iter().collect();
        let mut take = |name: &str, expected: &[i64]| -> Result<Tensor, JudgeError> {
            match stored.remove(name) {
                Some(t) if t.size() == expected => Ok(t.to_device(device)),
                Some(t) => Err(io_error(&weights, format!("{name} has shape {:?}, expected {expected:?}", t.size()))),
                None => Err(io_error(&weights, format!("{name} is missing"))),
            }
        };
        tch::no_grad(|| -> Result<(), JudgeError> {
            for (name, mut var) in judge.vars.variables() {
                var.copy_(&take(&name, &var.size())?);
            }
            Ok(())
        })?;
        judge.reference_mean = take("reference.mean", &judge.reference_mean.size())?;
        judge.reference_cov = take("reference.cov", &judge.reference_cov.size())?;
        judge.vars.freeze();
        Ok(Some(judge))
    }
}

/// Label fidelity: of the samples drawn with label k clamped, the fraction the judge calls k.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelFidelity {
    pub overall: f64,
    /// Per label name.
    pub per_label: BTreeMap<String, f64>,
    /// Per label name, where its misses went and what they look like (`vae-serve eval`).
    #[serde(default)]
    pub profiles: BTreeMap<String, LabelProfile>,
}

/// One label's images (samples drawn with it clamped, or the test images of that class) as the
/// judge and the model's own classifier see them: whether the judge's misses are another class, or
/// drawings of the right one that the judge reads differently (thin, faint), which the ink tells.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelProfile {
    pub images: i64,
    /// How many the judge calls the label.
    pub kept: i64,
    /// What the judge called the others, and how many.
    pub misjudged_as: BTreeMap<String, i64>,
    /// Of the judge's misses, how many the model's own classifier q(y|x) calls the label (for a
    /// model with a classifier): misses that a term scored by that classifier cannot see.
    pub misses_the_model_keeps: Option<i64>,
    /// Mean ink (intensities summed over an image) of the kept images and of the misses.
    pub ink_kept: Option<f64>,
    pub ink_missed: Option<f64>,
}

impl LabelFidelity {
    /// The label its samples keep least often.
    pub fn worst(&self) -> Option<(&String, f64)> {
        self.per_label.iter().map(|(label, &value)| (label, value)).min_by(|a, b| a.1.total_cmp(&b.1))
    }
}

/// What the judge says about a model's samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleScores {
    pub samples: i64,
    pub temperature: f64,
    #[serde(default)]
    pub codes: CodeSource,
    /// For models with labels.
    pub label_fidelity: Option<LabelFidelity>,
    /// Between the samples and the test images, in the judge's feature space.
    pub frechet_distance: f64,
    /// The training images' distance to the test images.
    pub frechet_floor: f64,
    pub judge_test_accuracy: f64,
}

impl SampleScores {
    /// As manifest metrics: `label_fidelity`, `label_fidelity_worst`, `label_fidelity.<label>`,
    /// `frechet_distance`, `frechet_floor`, `judge_test_accuracy`.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let mut metrics = BTreeMap::from([
            ("frechet_distance".to_string(), self.frechet_distance),
            ("frechet_floor".to_string(), self.frechet_floor),
            ("judge_test_accuracy".to_string(), self.judge_test_accuracy),
        ]);
        if let Some(fidelity) = &self.label_fidelity {
            metrics.insert("label_fidelity".into(), fidelity.overall);
            if let Some((_, worst)) = fidelity.worst() {
                metrics.insert("label_fidelity_worst".into(), worst);
            }
            for (label, value) in &fidelity.per_label {
                metrics.insert(format!("label_fidelity.{label}"), *value);
            }
        }
        metrics
    }
}

/// Scores `samples` draws from `loaded` at `temperature` (spread evenly over the labels for a
/// model with labels, which the judge must share), seeded so a model's scores are reproducible;
/// their codes come from `codes`.
pub fn score_samples(
    judge: &Judge,
    loaded: &LoadedModel,
    samples: i64,
    temperature: f64,
    seed: u64,
    codes: &Codes,
) -> Result<SampleScores, JudgeError> {
    let config = loaded.model.config();
    let labelled = config.architecture.is_semi_supervised();
    if config.image != judge.card.image || (labelled && config.label_names.len() != judge.card.label_names.len()) {
        let shape = |s: &ImageShape| format!("{}x{}x{}", s.channels, s.height, s.width);
        return Err(JudgeError::Mismatch {
            dataset: judge.card.dataset.clone(),
            judge: shape(&judge.card.image),
            judge_labels: judge.card.label_names.len(),
            model: shape(&config.image),
            model_labels: config.label_names.len(),
        });
    }
    tch::manual_seed(seed as i64);
    let draw = |n: i64, label: Option<i64>| -> Result<Tensor, JudgeError> {
        let chunks =
            passes(n).map(|(_, rows)| tch::no_grad(|| codes.draw(loaded, rows, label, temperature))).collect::<Result<Vec<_>, _>>()?;
        Ok(Tensor::cat(&chunks, 0))
    };
    // Features of every sample, computed once: the labels and the Fréchet distance both read them.
    let (features, label_fidelity) = if labelled {
        let k = config.num_classes();
        let per_label = (samples / k).max(1);
        let (mut drawn, mut features) = (Vec::new(), Vec::new());
        for label in 0..k {
            let images = draw(per_label, Some(label))?;
            features.push(judge.features(&images));
            drawn.push(images);
        }
        let (images, features) = (Tensor::cat(&drawn, 0), Tensor::cat(&features, 0));
        let clamped = Tensor::arange(k, (Kind::Int64, images.device())).repeat_interleave_self_int(per_label, 0, None);
        let chunks: Option<Vec<Tensor>> =
            by_rows(&images, |rows| tch::no_grad(|| loaded.model.classify(rows, false)).map(|logits| logits.argmax(1, false)))
                .into_iter()
                .collect();
        let model_says = chunks.map(|chunks| as_vec(&Tensor::cat(&chunks, 0)));
        let profiles = profile(judge, &config.label_names, &features, &images, &clamped, model_says.as_deref());
        let per_label: BTreeMap<String, f64> = profiles.iter().map(|(name, p)| (name.clone(), p.kept as f64 / p.images as f64)).collect();
        let overall = per_label.values().sum::<f64>() / k as f64;
        (features, Some(LabelFidelity { overall, per_label, profiles }))
    } else {
        (judge.features(&draw(samples, None)?), None)
    };
    let reference = (judge.reference_mean.shallow_clone(), judge.reference_cov.shallow_clone());
    Ok(SampleScores {
        samples: features.size()[0],
        temperature,
        codes: codes.source(),
        label_fidelity,
        frechet_distance: frechet_distance(&moments(&features), &reference),
        frechet_floor: judge.card.frechet_floor,
        judge_test_accuracy: judge.card.test_accuracy,
    })
}

/// The judge's profile of the test images, class by class (with the verdicts of the model's own
/// classifier on them, from its evaluation, when the model has one): what a real image of each
/// class looks like to both, beside the profiles of the model's samples.
pub fn profile_test_images(judge: &Judge, test: &Dataset, model_says: Option<&[i64]>) -> BTreeMap<String, LabelProfile> {
    profile(judge, &judge.card.label_names, &judge.features(&test.images), &test.images, &test.labels, model_says)
}

/// Profiles per label (named `names`) of `images` `[N, C, H, W]` labelled `labels` `[N]`, from
/// their judge features `[N, F]` and the model's verdicts on them, if it has a classifier.
fn profile(
    judge: &Judge,
    names: &[String],
    features: &Tensor,
    images: &Tensor,
    labels: &Tensor,
    model_says: Option<&[i64]>,
) -> BTreeMap<String, LabelProfile> {
    let ink =
        Vec::<f64>::try_from(images.sum_dim_intlist([1, 2, 3].as_slice(), false, Kind::Double).to_device(Device::Cpu)).expect("float ink");
    tally(names, &as_vec(labels), &as_vec(&judge.predict(features)), model_says, &ink)
}

fn as_vec(labels: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(labels.to_device(Device::Cpu)).expect("integer labels")
}

/// Counts behind `profile`, per label, over parallel columns: the label, the judge's verdict, the
/// model's verdict (if any) and the ink of each image.
fn tally(names: &[String], labels: &[i64], judged: &[i64], model_says: Option<&[i64]>, ink: &[f64]) -> BTreeMap<String, LabelProfile> {
    let mean = |sum: f64, n: i64| (n > 0).then(|| sum / n as f64);
    (0..names.len() as i64)
        .map(|label| {
            let rows: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == label).collect();
            let (kept, missed): (Vec<usize>, Vec<usize>) = rows.iter().partition(|&&i| judged[i] == label);
            let mut misjudged_as = BTreeMap::new();
            for &i in &missed {
                *misjudged_as.entry(names[judged[i] as usize].clone()).or_insert(0) += 1;
            }
            let ink_of = |rows: &[usize]| mean(rows.iter().map(|&i| ink[i]).sum(), rows.len() as i64);
            let profile = LabelProfile {
                images: rows.len() as i64,
                kept: kept.len() as i64,
                misjudged_as,
                misses_the_model_keeps: model_says.map(|says| missed.iter().filter(|&&i| says[i] == label).count() as i64),
                ink_kept: ink_of(&kept),
                ink_missed: ink_of(&missed),
            };
            (names[label as usize].clone(), profile)
        })
        .collect()
}

/// Mean `[F]` and covariance `[F, F]` (unbiased) of rows `[N, F]`, float64.
fn moments(features: &Tensor) -> (Tensor, Tensor) {
    let features = features.to_kind(Kind::Double);
    let mean = features.mean_dim(0, false, Kind::Double);
    let centred = &features - &mean;
    let n = features.size()[0];
    let cov = centred.transpose(0, 1).matmul(&centred) / (n - 1).max(1) as f64;
    (mean, cov)
}

/// Fréchet distance between Gaussians N(μ₁, Σ₁) and N(μ₂, Σ₂):
/// |μ₁ − μ₂|² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^½ Σ₂ Σ₁^½)^½, square roots through symmetric
/// eigendecompositions (negative round-off eigenvalues clamped to zero).
pub fn frechet_distance((mean1, cov1): &(Tensor, Tensor), (mean2, cov2): &(Tensor, Tensor)) -> f64 {
    let psd_sqrt = |m: &Tensor| {
        let (values, vectors) = ((m + m.transpose(0, 1)) * 0.5).linalg_eigh("L");
        vectors.matmul(&values.clamp_min(0.0).sqrt().diag_embed(0, -2, -1)).matmul(&vectors.transpose(0, 1))
    };
    let root1 = psd_sqrt(cov1);
    let inner = root1.matmul(cov2).matmul(&root1);
    let (values, _) = ((&inner + inner.transpose(0, 1)) * 0.5).linalg_eigh("L");
    let cross = values.clamp_min(0.0).sqrt().sum(Kind::Double);
    let squared = (mean1 - mean2).square().sum(Kind::Double);
    (squared + cov1.trace() + cov2.trace() - cross * 2.0).double_value(&[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models;
    use crate::training::eval;

    #[test]
    fn frechet_distance_of_diagonal_gaussians_has_its_closed_form() {
        let options = (Kind::Double, Device::Cpu);
        let mean1 = Tensor::from_slice(&[0.0, 1.0, 2.0]).to_kind(Kind::Double);
        let mean2 = Tensor::from_slice(&[1.0, 1.0, 0.0]).to_kind(Kind::Double);
        let var1 = [1.0, 4.0, 9.0];
        let var2 = [4.0, 4.0, 1.0];
        let cov = |v: &[f64; 3]| Tensor::from_slice(v).to_kind(Kind::Double).diag_embed(0, -2, -1);
        // Σ (μ₁ − μ₂)² + Σ (σ₁ − σ₂)² = (1 + 0 + 4) + (1 + 0 + 4).
        let distance = frechet_distance(&(mean1.shallow_clone(), cov(&var1)), &(mean2, cov(&var2)));
        assert!((distance - 10.0).abs() < 1e-9, "{distance}");
        let same = frechet_distance(&(mean1.shallow_clone(), cov(&var1)), &(mean1, cov(&var1)));
        assert!(same.abs() < 1e-9, "{same}");
        // A full covariance against itself, rotated samples included, is zero too.
        tch::manual_seed(1);
        let a = Tensor::randn([4, 4], options);
        let full = a.matmul(&a.transpose(0, 1));
        let zero = Tensor::zeros([4], options);
        assert!(frechet_distance(&(zero.shallow_clone(), full.shallow_clone()), &(zero, full)).abs() < 1e-6);
    }

    fn mnist_slice(train: usize, test: usize) -> Splits {
        let source = crate::data::resolve("mnist", &crate::data::shared_data_dir()).unwrap();
        let options = crate::data::DataOptions { validation_fraction: 0.0, max_train: Some(train), ..Default::default() };
        let splits = crate::data::load(&source, &options).unwrap();
        Splits { test: splits.test.first(test), ..splits }
    }

    /// The shipped MNIST judge and the first shipped semi-supervised model (an MLP, quick to run).
    fn shipped_judge_and_model() -> (Judge, LoadedModel) {
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let judge = Judge::load(&models, "mnist", Device::Cpu).unwrap().expect("the shipped MNIST judge");
        let (_, shipped) = models::artifact::load(&models.join("mnist-ssvae/v1"), Device::Cpu).unwrap();
        (judge, shipped)
    }

    #[test]
    fn a_judge_is_retrained_bit_for_bit_and_reloads_as_it_was_saved() {
        let splits = mnist_slice(2000, 500);
        let first = Judge::train("mnist", &splits, 2, 7, Device::Cpu).unwrap();
        let second = Judge::train("mnist", &splits, 2, 7, Device::Cpu).unwrap();
        let weights = |judge: &Judge| -> BTreeMap<String, Tensor> { judge.vars.variables().into_iter().collect() };
        let (a, b) = (weights(&first), weights(&second));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (name, tensor) in &a {
            assert!(tensor.equal(&b[name]), "{name} differs between two trainings with the same seed");
        }
        assert_eq!((first.card.test_accuracy, first.card.frechet_floor), (second.card.test_accuracy, second.card.frechet_floor));
        assert!(first.card.test_accuracy > 0.3, "two epochs on 2000 digits: {}", first.card.test_accuracy);
        assert!(first.card.frechet_floor > 0.0);

        let dir = tempfile::tempdir().unwrap();
        first.save(dir.path()).unwrap();
        let loaded = Judge::load(dir.path(), "mnist", Device::Cpu).unwrap().expect("saved judge");
        assert_eq!(loaded.card, first.card);
        let predicted = |judge: &Judge| judge.predict(&judge.features(&splits.test.images));
        assert!(predicted(&loaded).equal(&predicted(&first)));
        assert!(loaded.reference_cov.equal(&first.reference_cov));
        assert!(Judge::load(dir.path(), "fashion-mnist", Device::Cpu).unwrap().is_none());
        let other = Judge::train("other", &splits, 1, 8, Device::Cpu).unwrap();
        assert!(!other.vars.variables()["judge.logits.weight"].equal(&a["judge.logits.weight"]), "the seed matters");
    }

    #[test]
    fn the_shipped_model_keeps_its_labels_far_more_often_than_an_untrained_one() {
        let (judge, shipped) = shipped_judge_and_model();
        assert!(judge.card.test_accuracy > 0.985, "{:?}", judge.card);
        let trained = score_samples(&judge, &shipped, 2000, 1.0, 0, &Codes::Prior).unwrap();
        let untrained =
            score_samples(&judge, &models::build(shipped.model.config(), Device::Cpu).unwrap(), 2000, 1.0, 0, &Codes::Prior).unwrap();
        let (kept, chance) = (trained.label_fidelity.clone().unwrap(), untrained.label_fidelity.clone().unwrap());
        assert_eq!(kept.per_label.len(), 10);
        for (label, fidelity) in &kept.per_label {
            let profile = &kept.profiles[label];
            let misses: i64 = profile.misjudged_as.values().sum();
            assert_eq!((profile.images, profile.kept + misses), (200, 200), "label {label}: {profile:?}");
            assert_eq!(profile.kept as f64 / 200.0, *fidelity);
            assert!(!profile.misjudged_as.contains_key(label));
            assert!(profile.misses_the_model_keeps.unwrap() <= misses);
            assert!(profile.ink_kept.unwrap() > 20.0, "a kept digit has ink: {profile:?}");
        }
        assert!(kept.overall > 0.5 && chance.overall < 0.2, "shipped {kept:?}, untrained {chance:?}");
        assert!(trained.frechet_distance < untrained.frechet_distance / 10.0, "{trained:?} {untrained:?}");
        assert!(trained.frechet_distance > judge.card.frechet_floor);

        let mlp = models::build(&models::ModelConfig::default(), Device::Cpu).unwrap();
        let unlabelled = score_samples(&judge, &mlp, 600, 1.0, 0, &Codes::Prior).unwrap();
        assert!(unlabelled.label_fidelity.is_none() && unlabelled.samples == 600);
        let rgb = models::ModelConfig { image: ImageShape { channels: 3, height: 32, width: 32 }, ..Default::default() };
        let mismatch =
            score_samples(&judge, &models::build(&rgb, Device::Cpu).unwrap(), 100, 1.0, 0, &Codes::Prior).err().unwrap().to_string();
        assert!(mismatch.contains("1x28x28") && mismatch.contains("3x32x32"), "{mismatch}");
    }

    #[test]
    fn a_profile_counts_kept_images_misses_by_verdict_and_ink_per_label() {
        let names: Vec<String> = ["zero", "one", "two"].map(String::from).into();
        let labels = [0, 0, 0, 1, 1, 2];
        let judged = [0, 1, 1, 1, 0, 2];
        let ink = [10.0, 4.0, 6.0, 3.0, 9.0, 7.0];
        let profiles = tally(&names, &labels, &judged, Some(&[0, 0, 2, 1, 0, 2]), &ink);
        let zero = &profiles["zero"];
        assert_eq!((zero.images, zero.kept, zero.misses_the_model_keeps), (3, 1, Some(1)));
        assert_eq!(zero.misjudged_as, BTreeMap::from([("one".to_string(), 2)]));
        assert_eq!((zero.ink_kept, zero.ink_missed), (Some(10.0), Some(5.0)));
        assert_eq!(profiles["one"].misjudged_as, BTreeMap::from([("zero".to_string(), 1)]));
        assert_eq!((profiles["two"].kept, profiles["two"].ink_missed), (1, None));
        let unclassified = tally(&names, &labels, &judged, None, &ink);
        assert_eq!(unclassified["zero"].misses_the_model_keeps, None);
    }

    #[test]
    fn the_judge_keeps_real_test_digits_of_every_class() {
        let (judge, shipped) = shipped_judge_and_model();
        let test = mnist_slice(10, 1000).test;
        let verdicts = eval::evaluate(&*shipped.model, &test, 500, 0).predictions;
        let profiles = profile_test_images(&judge, &test, verdicts.as_deref());
        assert_eq!(profiles.values().map(|p| p.images).sum::<i64>(), 1000);
        for (label, profile) in &profiles {
            assert!(profile.kept as f64 >= 0.9 * profile.images as f64, "label {label}: {profile:?}");
            assert!(profile.misses_the_model_keeps.unwrap() <= profile.images - profile.kept);
        }
        // A 1 has less ink than an 8.
        assert!(profiles["1"].ink_kept.unwrap() < profiles["8"].ink_kept.unwrap(), "{profiles:?}");
    }

    #[test]
    fn the_shipped_mlps_misses_are_its_priors_drawn_where_its_encoder_puts_real_images_it_keeps_its_labels() {
        let (judge, shipped) = shipped_judge_and_model();
        let images = mnist_slice(10, 1000).test;
        let score = |source| {
            let codes = Codes::of(source, &shipped, &images, 4).unwrap();
            let scores = score_samples(&judge, &shipped, 1000, 1.0, 0, &codes).unwrap();
            assert_eq!(scores.codes, source);
            scores.label_fidelity.unwrap().overall
        };
        let (prior, ceiling) = (score(CodeSource::Prior), score(CodeSource::TrainingPosteriors));
        assert!(ceiling > prior + 0.1, "{ceiling} against {prior}");
        let mixture = score(CodeSource::FittedMixture);
        assert!((0.0..=1.0).contains(&mixture));
    }

    #[test]
    fn moments_are_the_sample_mean_and_unbiased_covariance() {
        let rows = Tensor::from_slice(&[1.0, 2.0, 3.0, 6.0]).to_kind(Kind::Double).view([2, 2]);
        let (mean, cov) = moments(&rows);
        assert_eq!(Vec::<f64>::try_from(&mean).unwrap(), vec![2.0, 4.0]);
        assert_eq!(Vec::<f64>::try_from(cov.view([-1])).unwrap(), vec![2.0, 4.0, 4.0, 8.0]);
    }
}
