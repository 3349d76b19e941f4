//! The model zoo: BN MLP-VAE, BN conv-VAE and the semi-supervised VAE (MLP or conv), behind one
//! trait.
//! No HTTP here; the training engine and the inference host both use these.

pub mod artifact;
pub mod batch_norm;
pub mod conv;
pub mod layers;
pub mod mlp;
pub mod objective;
pub mod packed;
pub mod semi_supervised;

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

pub use batch_norm::BnControl;
pub use objective::{BatchObjective, Likelihood, UnlabeledObjective};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid model configuration: {0}")]
    Config(String),
    #[error("model directory {path}: {why}")]
    Artifact { path: String, why: String },
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    #[error("packing weights for inference failed: {0}")]
    Packing(String),
}

/// Channels × height × width of the images a model reads and writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageShape {
    pub channels: i64,
    pub height: i64,
    pub width: i64,
}

impl ImageShape {
    pub const MNIST: ImageShape = ImageShape { channels: 1, height: 28, width: 28 };

    pub fn pixels(&self) -> i64 {
        self.channels * self.height * self.width
    }

    pub fn dims(&self) -> [i64; 3] {
        [self.channels, self.height, self.width]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    /// Fully connected encoder and decoder, BN at every hidden layer.
    Mlp,
    /// Strided convolutions down, transposed convolutions up, BN after each.
    Conv,
    /// M2-style: MLP VAE whose decoder sees [z, y], plus a classifier q(y|x).
    SemiSupervised,
    /// The semi-supervised model with a convolutional encoder, decoder and classifier (the
    /// conv model's stages, BN after each), the label concatenated after the code layer.
    SemiSupervisedConv,
}

impl Architecture {
    /// Models with a classifier q(y|x) and a label-conditioned decoder.
    pub fn is_semi_supervised(self) -> bool {
        matches!(self, Self::SemiSupervised | Self::SemiSupervisedConv)
    }

    /// Models built of halving convolutions (`conv_channels`).
    pub fn is_convolutional(self) -> bool {
        matches!(self, Self::Conv | Self::SemiSupervisedConv)
    }
}

/// Semi-supervised: the images of a training batch that virtual adversarial training smooths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SmoothedImages {
    /// Every image, labelled or not.
    All,
    /// Only the unlabelled part of the batch.
    Unlabelled,
}

/// Semi-supervised: the image that label consistency's classifier reads for a decoded code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ConsistencyView {
    /// The decoder's mean image, as `/sample` serves it.
    Mean,
    /// An image drawn from p(x|z, y), relaxed so that gradients pass (`relaxed_draw`): the
    /// classifier must find the class in what the model generates, the expectation of the
    /// InfoGAN bound on I(y; x), so a faint, uncertain stroke that reads as the class only on
    /// average counts against it.
    Draw,
}

/// Semi-supervised: the prior over codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Prior {
    /// p(z) = N(0, I) whatever the label (M2).
    Standard,
    /// p(z|y) = N(μ_y, diag σ_y²), learned per class (starting at N(0, I)): a clamped label's
    /// samples come from where that class's codes are, not from the whole code space.
    LabelConditional,
}

/// Everything needed to rebuild a model's layers (saved in its manifest). In a training request
/// every field is optional; `image` and `label_names` come from the dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub image: ImageShape,
    pub latent_dim: i64,
    /// Hidden widths of the MLP parts (encoder order; the decoder mirrors them).
    pub hidden: Vec<i64>,
    /// Channels of the conv stages (each halves height and width, rounding up).
    pub conv_channels: Vec<i64>,
    pub likelihood: Likelihood,
    /// Class names; their count is the label dimension of semi-supervised models.
    pub label_names: Vec<String>,
    /// Semi-supervised only: how unlabelled examples are scored.
    pub unlabeled_objective: UnlabeledObjective,
    /// Semi-supervised, `marginalize` only: in training, an unlabelled image's expectation over
    /// labels runs over its this many most probable labels under q(y|x), renormalised, instead
    /// of all of them (0: every label). The encoder and decoder run once per (image, label) pair,
    /// so this divides their work; evaluation always reports the full bound. With 1, an
    /// unlabelled image counts as labelled by q(y|x)'s best guess, and the classifier no longer
    /// learns from the reconstruction (only from the labels and its smoothing).
    pub marginal_labels: i64,
    /// Semi-supervised only: weight α of the labelled cross-entropy term.
    pub classifier_weight: f64,
    /// Semi-supervised only: weight γ of the label-consistency term, the cross-entropy between a
    /// random label y and what the model's own classifier (held fixed) reads in the decoder's
    /// output for a prior code and y clamped; it makes the label, not z, decide the class.
    pub label_consistency_weight: f64,
    /// Semi-supervised only: how many prior draws that term decodes per training step (0: one
    /// per image of the batch). Fewer draws cost less and estimate the same expectation.
    pub label_consistency_draws: i64,
    /// Semi-supervised only: what the classifier reads in that term, the decoder's mean image or
    /// a draw from its likelihood.
    pub label_consistency_view: ConsistencyView,
    /// Semi-supervised only: weight of virtual adversarial training (Miyato et al. 2018), the KL
    /// between q(y|x) and q(y|x + r) for the perturbation r that changes q(y|x) most; it smooths
    /// the classifier around every image, labelled or not.
    pub virtual_adversarial_weight: f64,
    /// Semi-supervised only: the L2 norm of that perturbation, in pixel intensities (0..1).
    pub virtual_adversarial_radius: f64,
    /// Semi-supervised only: which images of a training batch that smoothing runs on. It costs
    /// two more classifier passes per image; the labelled ones already have their cross-entropy.
    pub virtual_adversarial_images: SmoothedImages,
    /// Semi-supervised only: the encoder reads the label too, q(z|x, y) as in M2, so z need not
    /// carry the class and the clamped label decides it when sampling. Unlabelled examples are
    /// encoded once per label; without a label the encoder reads q(y|x).
    pub label_in_encoder: bool,
    /// Semi-supervised convolutional only: the label also shifts every stage of the decoder's
    /// transposed convolutions (per channel; per pixel on the logits), not only its first layer.
    pub label_in_decoder_stages: bool,
    /// Semi-supervised only: p(z) shared by every label, or p(z|y) learned per label.
    pub prior: Prior,
    /// Semi-supervised only: weight λ of the maximum mean discrepancy between the training codes
    /// with their labels, q(z, y), and the prior's draws for the same labels (InfoVAE, Zhao et al.
    /// 2019). The per-image KL pulls each code towards the prior but leaves holes where no
    /// image of a label lies; this pulls each label's codes as a whole to fill its prior, so a
    /// clamped label's prior draw lands where the decoder learned to draw that label.
    pub code_match_weight: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            architecture: Architecture::Mlp,
            image: ImageShape::MNIST,
            latent_dim: 32,
            hidden: vec![512, 256],
            conv_channels: vec![16, 16],
            likelihood: Likelihood::Bernoulli,
            label_names: (0..10).map(|d| d.to_string()).collect(),
            unlabeled_objective: UnlabeledObjective::Marginalize,
            marginal_labels: 0,
            classifier_weight: 1.0,
            label_consistency_weight: 0.0,
            label_consistency_draws: 0,
            label_consistency_view: ConsistencyView::Mean,
            virtual_adversarial_weight: 0.0,
            virtual_adversarial_radius: 2.0,
            virtual_adversarial_images: SmoothedImages::All,
            label_in_encoder: false,
            label_in_decoder_stages: false,
            prior: Prior::Standard,
            code_match_weight: 0.0,
        }
    }
}

impl ModelConfig {
    pub fn validate(&self) -> Result<(), ModelError> {
        let fail = |why: String| Err(ModelError::Config(why));
        if !(1..=1024).contains(&self.latent_dim) {
            return fail(format!("latent_dim {} must be in 1..=1024", self.latent_dim));
        }
        if self.hidden.is_empty() || self.hidden.iter().any(|&h| !(1..=8192).contains(&h)) {
            return fail(format!("hidden sizes {:?} must be 1..=8192 and at least one", self.hidden));
        }
        let ImageShape { channels, height, width } = self.image;
        if ![1, 3].contains(&channels) || !(4..=256).contains(&height) || !(4..=256).contains(&width) {
            return fail(format!("image shape {channels}x{height}x{width}: channels must be 1 or 3, sides 4..=256"));
        }
        if self.architecture.is_convolutional() {
            if self.conv_channels.is_empty() || self.conv_channels.iter().any(|&c| !(1..=1024).contains(&c)) {
                return fail(format!("conv channels {:?} must be 1..=1024 and at least one stage", self.conv_channels));
            }
            // Every stage must have something to halve: sides of at least 2 going in.
            let stages = self.conv_channels.len();
            if layers::stage_sides(height, width, stages)[..stages].iter().any(|&[h, w]| h < 2 || w < 2) {
                return fail(format!("conv: {stages} stages halve the image {stages} times; {height}x{width} is too small for that"));
            }
        }
        for (name, weight) in [
            ("label_consistency_weight", self.label_consistency_weight),
            ("virtual_adversarial_weight", self.virtual_adversarial_weight),
            ("code_match_weight", self.code_match_weight),
        ] {
            if !(weight.is_finite() && weight >= 0.0) {
                return fail(format!("{name} {weight} must be finite and ≥ 0"));
            }
            if weight > 0.0 && !self.architecture.is_semi_supervised() {
                return fail(format!("{name}: only semi-supervised models have a classifier for it"));
            }
        }
        if !(self.virtual_adversarial_radius.is_finite() && self.virtual_adversarial_radius > 0.0) {
            return fail(format!("virtual_adversarial_radius {} must be finite and > 0", self.virtual_adversarial_radius));
        }
        if self.marginal_labels != 0
            && !(self.architecture.is_semi_supervised() && (1..=self.num_classes()).contains(&self.marginal_labels))
        {
            return fail(format!(
                "marginal_labels {}: 0 (every label) or, for a semi-supervised model, 1..={} labels",
                self.marginal_labels,
                self.num_classes()
            ));
        }
        if !(0..=100_000).contains(&self.label_consistency_draws) {
            return fail(format!(
                "label_consistency_draws {}: 0 (one per image of the batch) or up to 100000",
                self.label_consistency_draws
            ));
        }
        if self.label_in_encoder && !self.architecture.is_semi_supervised() {
            return fail("label_in_encoder: only semi-supervised models have labels to encode".into());
        }
        if self.label_in_decoder_stages && self.architecture != Architecture::SemiSupervisedConv {
            return fail("label_in_decoder_stages: only the semi-supervised-conv model has decoder stages that read a label".into());
        }
        if self.prior == Prior::LabelConditional && !self.architecture.is_semi_supervised() {
            return fail("prior label-conditional: only semi-supervised models have labels to condition it on".into());
        }
        if self.architecture.is_semi_supervised() && self.label_names.len() < 2 {
            return fail("a semi-supervised model needs at least two label names".into());
        }
        Ok(())
    }

    pub fn num_classes(&self) -> i64 {
        self.label_names.len() as i64
    }
}

/// Diagonal Gaussian over codes, row-wise: the posterior q(z|x) or a label-conditional prior p(z|y).
pub struct Gaussian {
    pub mean: Tensor,
    pub log_var: Tensor,
}

impl Gaussian {
    /// z = μ + σ·ε, the reparameterised sample.
    pub fn sample(&self) -> Tensor {
        self.at(&self.mean.randn_like())
    }

    /// μ + σ·ε for given standard normal `noise` ε.
    pub fn at(&self, noise: &Tensor) -> Tensor {
        &self.mean + (&self.log_var * 0.5).exp() * noise
    }

    /// The distributions of the given rows, in that order.
    pub fn rows(&self, rows: &Tensor) -> Gaussian {
        Gaussian { mean: self.mean.index_select(0, rows), log_var: self.log_var.index_select(0, rows) }
    }
}

/// What every model offers. `train` selects batch statistics (training) or population
/// statistics (inference) in batch norm.
pub trait Vae: Send {
    fn config(&self) -> &ModelConfig;
    /// q(z|x) for images `[B, C, H, W]`.
    fn encode(&self, images: &Tensor, train: bool) -> Gaussian;
    /// q(z|x, y) for one-hot (or soft) labels `[B, K]`, for models whose encoder reads the label;
    /// the others ignore them.
    fn encode_given(&self, images: &Tensor, _labels: Option<&Tensor>, train: bool) -> Gaussian {
        self.encode(images, train)
    }
    /// q(z|x, y) for (image, label) pairs: image `rows[p]` of `images` given the one-hot
    /// `labels[p]`. A model whose encoder reads the label after features of the image alone
    /// computes those features once per image, however many labels it is paired with.
    fn encode_pairs(&self, images: &Tensor, rows: &Tensor, labels: &Tensor, train: bool) -> Gaussian {
        self.encode_given(&images.index_select(0, rows), Some(labels), train)
    }
    /// Likelihood parameters `[B, C, H, W]` (logits or means) for codes `[B, latent]`, with
    /// one-hot labels `[B, K]` for models whose decoder is conditioned on them.
    fn decode(&self, z: &Tensor, labels: Option<&Tensor>, train: bool) -> Tensor;
    /// p(z|y) for one-hot (or soft) labels `[B, K]` under a label-conditional prior (a soft label
    /// blends the classes' parameters); None: the prior is N(0, I).
    fn prior(&self, _labels: &Tensor) -> Option<Gaussian> {
        None
    }
    /// Class logits q(y|x) `[B, K]`, for models with a classifier.
    fn classify(&self, _images: &Tensor, _train: bool) -> Option<Tensor> {
        None
    }
    /// Model-level extra parameters of the likelihood (the learned Gaussian log-variance).
    fn likelihood_log_var(&self) -> Option<&Tensor>;
    /// Switches inference (`train = false`) to prepacked fully connected layers in `precision`,
    /// batch norm folded in (`packed`); training keeps the float weights. CPU only. False: the
    /// model has no part that does (the convolutional model).
    fn pack(&mut self, _precision: packed::Precision) -> Result<bool, ModelError> {
        Ok(false)
    }
    /// The cost of a batch; `labels[i] < 0` marks an unlabelled example (models without a
    /// classifier ignore labels and `classifier_view`). `kl_weight` scales the KL term of the loss
    /// (warm-up). `classifier_view`, when given, is what q(y|x) sees instead of `images` (an
    /// augmented copy), while encoder and decoder keep the originals.
    fn objective(
        &self,
        images: &Tensor,
        _classifier_view: Option<&Tensor>,
        _labels: &Tensor,
        kl_weight: f64,
        train: bool,
    ) -> BatchObjective {
        objective::unsupervised(self, images, kl_weight, train)
    }
}

/// A model together with the variables it lives in.
pub struct LoadedModel {
    pub vars: nn::VarStore,
    pub model: Box<dyn Vae>,
    pub bn: BnControl,
}

/// Builds the layers described by `config` in a fresh var store on `device`.
pub fn build(config: &ModelConfig, device: tch::Device) -> Result<LoadedModel, ModelError> {
    config.validate()?;
    let vars = nn::VarStore::new(device);
    let bn = BnControl::default();
    let root = vars.root();
    let model: Box<dyn Vae> = match config.architecture {
        Architecture::Mlp => Box::new(mlp::MlpVae::new(&root, config.clone(), [0, 0], &bn)),
        Architecture::Conv => Box::new(conv::ConvVae::new(&root, config.clone(), [0, 0], &bn)),
        Architecture::SemiSupervised | Architecture::SemiSupervisedConv => {
            Box::new(semi_supervised::SemiSupervisedVae::new(&root, config.clone(), &bn))
        }
    };
    Ok(LoadedModel { vars, model, bn })
}

/// Pixel intensities in [0, 1] from likelihood parameters: the Bernoulli mean, or the clamped
/// Gaussian mean.
pub fn intensities(config: &ModelConfig, params: &Tensor) -> Tensor {
    match config.likelihood {
        Likelihood::Bernoulli => params.sigmoid(),
        Likelihood::Gaussian { .. } => params.clamp(0.0, 1.0),
    }
}

/// Temperature of the binary Concrete relaxation: 2/3, the value Maddison et al. (2017) found to
/// work for binary variables.
const RELAXED_BERNOULLI_TEMPERATURE: f64 = 2.0 / 3.0;

/// An image drawn from the likelihood with parameters `params`, relaxed so that gradients reach
/// them: binary Concrete pixels, σ((ℓ + logistic noise)/τ), above ½ with exactly the Bernoulli
/// probability σ(ℓ); or the reparameterised Gaussian draw μ + σ·ε, clamped to [0, 1].
pub fn relaxed_draw(config: &ModelConfig, params: &Tensor, learned_log_var: Option<&Tensor>) -> Tensor {
    match config.likelihood {
        Likelihood::Bernoulli => {
            let uniform = params.rand_like().clamp(1e-6, 1.0 - 1e-6);
            let logistic = uniform.log() - uniform.neg().log1p();
            ((params + logistic) / RELAXED_BERNOULLI_TEMPERATURE).sigmoid()
        }
        Likelihood::Gaussian { log_var, .. } => {
            let log_var = objective::pixel_log_var(log_var, params, learned_log_var);
            Gaussian { mean: params.shallow_clone(), log_var }.sample().clamp(0.0, 1.0)
        }
    }
}

/// Codes from prior noise `[B, latent]` (standard normal draws times the temperature): the noise
/// itself under N(0, I); under a label-conditional prior, μ_y + σ_y·noise for each row's labels
/// `[B, K]`, a uniform blend of the classes where none are given (as the decoder then gets).
pub fn codes_from_noise(model: &dyn Vae, noise: &Tensor, labels: Option<&Tensor>) -> Tensor {
    let given = labels.map(Tensor::shallow_clone);
    match model.prior(&given.unwrap_or_else(|| label_rows(model.config(), noise.size()[0], None, noise.device()))) {
        Some(prior) => prior.at(noise),
        None => noise.shallow_clone(),
    }
}

/// Label inputs `[rows, K]`: each row the one-hot of `label`, or with none the uniform blend of
/// the K classes (the mean of the one-hots), which is what a decoder is given when no label is.
pub fn label_rows(config: &ModelConfig, rows: i64, label: Option<i64>, device: tch::Device) -> Tensor {
    let k = config.num_classes();
    match label {
        Some(label) => Tensor::full([rows], label, (tch::Kind::Int64, device)).one_hot(k).to_kind(tch::Kind::Float),
        None => Tensor::full([rows, k], 1.0 / k as f64, (tch::Kind::Float, device)),
    }
}

/// Draws `n` codes from the prior at temperature T (noise ~ N(0, T²·I), see `codes_from_noise`)
/// and decodes them (with `label` clamped for models that take labels); returns the codes and the
/// images as intensities `[n, C, H, W]`.
pub fn sample(loaded: &LoadedModel, n: i64, label: Option<i64>, temperature: f64) -> Result<(Tensor, Tensor), ModelError> {
    let model = &*loaded.model;
    let config = model.config();
    let device = loaded.vars.device();
    if let Some(label) = label {
        check_label(config, label)?;
    }
    let noise = Tensor::randn([n, config.latent_dim], (tch::Kind::Float, device)) * temperature;
    let onehot = label.map(|l| label_rows(config, n, Some(l), device));
    let z = codes_from_noise(model, &noise, onehot.as_ref());
    let images = decode_images(model, &z, label);
    Ok((z, images))
}

/// Decodes codes `[n, latent]` (with `label` clamped for models that take labels) to images as
/// intensities `[n, C, H, W]`, in inference mode.
pub fn decode_images(model: &dyn Vae, z: &Tensor, label: Option<i64>) -> Tensor {
    let onehot = label.map(|l| label_rows(model.config(), z.size()[0], Some(l), z.device()));
    intensities(model.config(), &model.decode(z, onehot.as_ref(), false))
}

/// Refuses labels for a model that has none.
fn require_labels(config: &ModelConfig) -> Result<(), ModelError> {
    if !config.architecture.is_semi_supervised() {
        return Err(ModelError::Config(format!("this {:?} model has no labels to condition on", config.architecture)));
    }
    Ok(())
}

/// Refuses a class index the model does not have (or any, for a model without labels).
pub fn check_label(config: &ModelConfig, label: i64) -> Result<(), ModelError> {
    require_labels(config)?;
    if !(0..config.num_classes()).contains(&label) {
        return Err(ModelError::Config(format!("label {label} is outside 0..{}", config.num_classes())));
    }
    Ok(())
}

/// A label given as its index or its name (case-insensitive), checked against the model.
pub fn resolve_label(config: &ModelConfig, given: &str) -> Result<i64, ModelError> {
    require_labels(config)?;
    let names = &config.label_names;
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(given.trim())) {
        return Ok(i as i64);
    }
    match given.trim().parse::<i64>() {
        Ok(i) if (0..names.len() as i64).contains(&i) => Ok(i),
        _ => Err(ModelError::Config(format!("unknown label `{given}`; this model's labels are {}", names.join(", ")))),
    }
}

/// Image tensors `[N, C, H, W]` (intensities) as a plain pixel batch, for rendering anywhere.
pub fn to_image_batch(shape: &ImageShape, images: &Tensor) -> crate::render::ImageBatch {
    let pixels = Vec::<f32>::try_from(images.to_device(tch::Device::Cpu).contiguous().view([-1])).expect("float pixels");
    crate::render::ImageBatch { shape: shape.clone(), pixels }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_stages_fit_any_side_of_at_least_two() {
        let conv = |channels: &[i64], side: i64| ModelConfig {
            architecture: Architecture::Conv,
            conv_channels: channels.to_vec(),
            image: ImageShape { channels: 1, height: side, width: side },
            ..Default::default()
        };
        // 28 → 14 → 7 → 4 → 2 → 1: five stages fit, a sixth has nothing left to halve.
        assert!(conv(&[16, 16, 16], 28).validate().is_ok());
        assert!(conv(&[8; 5], 28).validate().is_ok());
        let too_many = conv(&[8; 6], 28).validate().unwrap_err().to_string();
        assert!(too_many.contains("28x28 is too small"), "{too_many}");
        assert!(conv(&[], 28).validate().is_err());
        assert!(conv(&[16, 0], 28).validate().is_err());
    }

    #[test]
    fn marginal_labels_are_every_label_or_up_to_the_label_count_of_a_semi_supervised_model() {
        let config = |architecture: Architecture, marginal_labels: i64| ModelConfig { architecture, marginal_labels, ..Default::default() };
        for ok in [0, 1, 2, 10] {
            assert!(config(Architecture::SemiSupervisedConv, ok).validate().is_ok(), "{ok}");
        }
        for bad in [-1, 11] {
            let why = config(Architecture::SemiSupervised, bad).validate().unwrap_err().to_string();
            assert!(why.contains("1..=10"), "{why}");
        }
        assert!(config(Architecture::Mlp, 2).validate().is_err(), "no labels to pair with");
    }

    #[test]
    fn a_relaxed_bernoulli_pixel_is_on_with_its_probability_and_passes_gradients() {
        let config = ModelConfig::default();
        let logits = Tensor::from_slice(&[-2.0f32, 0.0, 1.5]).repeat([20_000, 1]).set_requires_grad(true);
        let drawn = relaxed_draw(&config, &logits, None);
        let on = Vec::<f64>::try_from(drawn.gt(0.5).to_kind(tch::Kind::Double).mean_dim(0, false, tch::Kind::Double)).unwrap();
        for (on, logit) in on.iter().zip([-2.0f64, 0.0, 1.5]) {
            let probability = 1.0 / (1.0 + (-logit).exp());
            assert!((on - probability).abs() < 0.015, "{on} against {probability}");
        }
        drawn.sum(tch::Kind::Float).backward();
        assert!(logits.grad().abs().sum(tch::Kind::Float).double_value(&[]) > 0.0);
    }

    #[test]
    fn a_relaxed_gaussian_pixel_spreads_by_its_deviation_within_intensities() {
        let config =
            ModelConfig { likelihood: Likelihood::Gaussian { log_var: (0.1f64 * 0.1).ln(), learned: false }, ..Default::default() };
        let means = Tensor::full([50_000], 0.5, (tch::Kind::Float, tch::Device::Cpu));
        let drawn = relaxed_draw(&config, &means, None);
        assert!((drawn.std(true).double_value(&[]) - 0.1).abs() < 0.005);
        let edge = relaxed_draw(&config, &means.ones_like(), None);
        assert!(edge.max().double_value(&[]) <= 1.0 && edge.min().double_value(&[]) < 1.0);
    }

    #[test]
    fn label_consistency_draws_are_the_batch_or_a_bounded_count() {
        let draws = |label_consistency_draws: i64| ModelConfig { label_consistency_draws, ..Default::default() }.validate();
        for ok in [0, 1, 50, 100_000] {
            assert!(draws(ok).is_ok(), "{ok}");
        }
        for bad in [-1, 100_001] {
            assert!(draws(bad).unwrap_err().to_string().contains("label_consistency_draws"), "{bad}");
        }
    }
}
