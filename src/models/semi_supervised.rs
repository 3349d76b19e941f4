//! The semi-supervised VAE: a classifier q(y|x), a VAE whose decoder sees [z, y] and, with
//! `label_in_encoder` (the recipe's choice), whose encoder sees [x, y]: q(z|x, y) as in M2, so
//! the code need not carry the class and the clamped label decides what a sample shows. The
//! backbone is the MLP VAE (`semi-supervised`) or the conv VAE (`semi-supervised-conv`, whose
//! classifier reads the conv stages' features too); the label joins after the conv features.
//!
//! Cost per labelled example: −ELBO(x, y) + α·CE(q(y|x), y).
//! Per unlabelled example, by `UnlabeledObjective`:
//! - `marginalize` (M2, Kingma et al. 2014): Σ_y q(y|x)·(−ELBO(x, y)) − H(q(y|x));
//! - `predicted-label` (the course project): −ELBO(x, y') with y' = q(y|x) fed to the decoder.
//!
//! The encoder and decoder run once per (image, label) pair: each image with every label, or in
//! training with `marginal_labels` its likeliest few (`LabelPairs`).
//!
//! −ELBO(x, y) includes −log p(y) = log K for the uniform label prior, so it bounds −log p(x, y).
//!
//! With γ > 0 (`label_consistency_weight`), training adds γ·CE(q(y|x̂), y) for x̂ decoded from a
//! prior code and a random label y clamped, the classifier held fixed: the decoder learns to
//! draw the class it is given, so z cannot override y when sampling. It decodes
//! `label_consistency_draws` prior codes per step (by default as many as the batch has images).
//!
//! With λ > 0 (`code_match_weight`), training adds λ·MMD² between each label's training codes
//! and that label's prior draws (`LabelledCodes`), so the codes fill the prior label by label.
//!
//! With a virtual adversarial weight > 0, training adds KL(q(y|x) ‖ q(y|x + r_adv)) for every
//! image (`virtual_adversarial`), or only every unlabelled one (`SmoothedImages`): the
//! classifier, trained on 100 labels, is what decides which class the decoder learns from each
//! unlabelled image.

use tch::{nn, Kind, Tensor};

use super::batch_norm::BnControl;
use super::conv::{ConvStack, ConvVae};
use super::layers;
use super::mlp::{BnMlp, MlpVae};
use super::objective::{kl_to_prior, negative_log_likelihood, BatchObjective};
use super::packed::{Dense, Precision};
use super::{ConsistencyView, Gaussian, ModelConfig, ModelError, Prior, SmoothedImages, UnlabeledObjective, Vae};

pub struct SemiSupervisedVae {
    vae: Box<dyn Vae>,
    classifier: Classifier,
    prior: Option<LabelPrior>,
}

/// p(z|y) = N(μ_y, diag σ_y²): a mean and a log-variance per class, learned through the KL term.
struct LabelPrior {
    means: Tensor,
    log_vars: Tensor,
}

impl LabelPrior {
    /// Starts at N(0, I) for every class, the standard prior's model.
    fn new(path: &nn::Path, classes: i64, latent_dim: i64) -> Self {
        Self { means: path.zeros("means", &[classes, latent_dim]), log_vars: path.zeros("log_vars", &[classes, latent_dim]) }
    }

    /// Per row of one-hot (or soft) labels `[B, K]`: a soft label blends the classes' parameters.
    fn given(&self, labels: &Tensor) -> Gaussian {
        Gaussian { mean: labels.matmul(&self.means), log_var: labels.matmul(&self.log_vars) }
    }
}

/// q(y|x): convolutional features (conv backbone) or the pixels, BN MLP, class logits.
struct Classifier {
    features: Option<ConvStack>,
    hidden: BnMlp,
    logits: Dense,
}

impl Classifier {
    fn new(path: &nn::Path, config: &ModelConfig, bn: &BnControl) -> Self {
        let (features, inputs) = if config.architecture.is_convolutional() {
            (
                Some(ConvStack::new(path, &config.image, &config.conv_channels, bn)),
                ConvStack::features(&config.image, &config.conv_channels),
            )
        } else {
            (None, config.image.pixels())
        };
        let top = *config.hidden.last().expect("validated");
        let logits = Dense::new(layers::linear(path / "logits", top, config.num_classes()));
        Self { features, hidden: BnMlp::new(path, inputs, &config.hidden, bn), logits }
    }

    fn forward(&self, images: &Tensor, train: bool) -> Tensor {
        let features = match &self.features {
            Some(stack) => stack.forward(images, train),
            None => images.flatten(1, -1),
        };
        self.logits.forward(&self.hidden.forward(&features, train), train)
    }

    /// The served function with its weights held fixed: gradients reach the images only.
    fn forward_frozen(&self, images: &Tensor) -> Tensor {
        let features = match &self.features {
            Some(stack) => stack.forward_frozen(images),
            None => images.flatten(1, -1),
        };
        self.logits.forward_frozen(&self.hidden.forward_frozen(&features))
    }

    fn pack(&mut self, precision: Precision) -> Result<(), ModelError> {
        self.hidden.pack(precision)?;
        self.logits.pack(precision)
    }
}

impl SemiSupervisedVae {
    pub fn new(path: &nn::Path, config: ModelConfig, bn: &BnControl) -> Self {
        let classifier = Classifier::new(&(path / "classifier"), &config, bn);
        let k = config.num_classes();
        let prior = (config.prior == Prior::LabelConditional).then(|| LabelPrior::new(&(path / "prior"), k, config.latent_dim));
        let condition_dims = [if config.label_in_encoder { k } else { 0 }, k];
        let vae: Box<dyn Vae> = if config.architecture.is_convolutional() {
            Box::new(ConvVae::new(path, config, condition_dims, bn))
        } else {
            Box::new(MlpVae::new(path, config, condition_dims, bn))
        };
        Self { vae, classifier, prior }
    }
}

impl Vae for SemiSupervisedVae {
    fn config(&self) -> &ModelConfig {
        self.vae.config()
    }

    fn encode(&self, images: &Tensor, train: bool) -> Gaussian {
        // Without a label, an encoder that reads one reads the classifier's belief.
        let belief =
            self.config().label_in_encoder.then(|| self.classify(images, train).expect("has a classifier").softmax(1, Kind::Float));
        self.vae.encode_given(images, belief.as_ref(), train)
    }

    fn encode_given(&self, images: &Tensor, labels: Option<&Tensor>, train: bool) -> Gaussian {
        match labels {
            Some(y) => self.vae.encode_given(images, Some(y), train),
            None => self.encode(images, train),
        }
    }

    fn encode_pairs(&self, images: &Tensor, rows: &Tensor, labels: &Tensor, train: bool) -> Gaussian {
        self.vae.encode_pairs(images, rows, labels, train)
    }

    fn decode(&self, z: &Tensor, labels: Option<&Tensor>, train: bool) -> Tensor {
        match labels {
            Some(y) => self.vae.decode(z, Some(y), train),
            None => self.vae.decode(z, Some(&super::label_rows(self.config(), z.size()[0], None, z.device())), train),
        }
    }

    fn prior(&self, labels: &Tensor) -> Option<Gaussian> {
        self.prior.as_ref().map(|prior| prior.given(labels))
    }

    fn classify(&self, images: &Tensor, train: bool) -> Option<Tensor> {
        Some(self.classifier.forward(images, train))
    }

    fn likelihood_log_var(&self) -> Option<&Tensor> {
        self.vae.likelihood_log_var()
    }

    fn pack(&mut self, precision: Precision) -> Result<bool, ModelError> {
        // The conv backbone's VAE serves unpacked; the classifier's fully connected part packs.
        self.vae.pack(precision)?;
        self.classifier.pack(precision)?;
        Ok(true)
    }

    fn objective(&self, images: &Tensor, classifier_view: Option<&Tensor>, labels: &Tensor, kl_weight: f64, train: bool) -> BatchObjective {
        let mut batch = objective(self, images, classifier_view, labels, kl_weight, train);
        let (weight, draws) = (self.config().label_consistency_weight, self.config().label_consistency_draws);
        if learns(train, &batch.loss) && weight > 0.0 {
            let draws = if draws > 0 { draws } else { images.size()[0] };
            batch.loss += self.label_consistency(draws, images.device()) * weight;
        }
        batch
    }
}

impl SemiSupervisedVae {
    /// Mean CE(q(y|x̂), y) over `n` prior codes with random labels y, x̂ their decoded images as
    /// served (population batch norm), q the classifier held fixed, so only the decoder learns
    /// from it and the classifier cannot learn to read whatever the decoder draws (nor the prior
    /// move to where it reads best: the codes are drawn from it as it stands).
    fn label_consistency(&self, n: i64, device: tch::Device) -> Tensor {
        let config = self.config();
        let labels = Tensor::randint(config.num_classes(), [n], (Kind::Int64, device));
        let onehot = labels.one_hot(config.num_classes()).to_kind(Kind::Float);
        let noise = Tensor::randn([n, config.latent_dim], (Kind::Float, device));
        let z = super::codes_from_noise(self, &noise, Some(&onehot)).detach();
        let params = self.vae.decode(&z, Some(&onehot), false);
        let drawn = match config.label_consistency_view {
            ConsistencyView::Mean => super::intensities(config, &params),
            ConsistencyView::Draw => super::relaxed_draw(config, &params, self.likelihood_log_var()),
        };
        self.classifier.forward_frozen(&drawn).cross_entropy_for_logits(&labels)
    }
}

/// Whether the loss is for learning, so its regularisers belong in it: training mode with
/// gradients recorded. The fixed-point BN pass runs training mode without gradients, and each
/// batch must go through each BN layer exactly once there.
fn learns(train: bool, loss_part: &Tensor) -> bool {
    train && loss_part.requires_grad()
}

/// One training or evaluation step's objective. `labels[i] < 0` marks example i as unlabelled.
/// Labelled and unlabelled examples go through the network together so batch norm sees one batch.
/// The classifier reads `classifier_view` when given: q(y|x̃) of an augmented x̃ is still a
/// distribution over y, so the bound stays valid while the classifier learns invariance and the
/// generative model keeps modelling the data as it is (so clamped labels keep their meaning).
pub fn objective(
    model: &dyn Vae,
    images: &Tensor,
    classifier_view: Option<&Tensor>,
    labels: &Tensor,
    kl_weight: f64,
    train: bool,
) -> BatchObjective {
    let config = model.config();
    let k = config.num_classes();
    let batch = images.size()[0];
    let log_k = (k as f64).ln();
    let logits = model.classify(classifier_view.unwrap_or(images), train).expect("semi-supervised models classify");
    let log_probs = logits.log_softmax(1, Kind::Float);
    let labelled = labels.ge(0);
    let safe_labels = labels.clamp_min(0);
    let true_onehot = safe_labels.one_hot(k).to_kind(Kind::Float);
    let nll_of = |z: &Tensor, y: &Tensor, x: &Tensor| {
        negative_log_likelihood(config.likelihood, &model.decode(z, Some(y), train), x, model.likelihood_log_var())
    };
    // Encoded with the label the decoder is given (an encoder that does not read labels ignores it).
    let encoded_with = |x: &Tensor, y: &Tensor| {
        let posterior = model.encode_given(x, Some(y), train);
        (posterior.sample(), kl_to_prior(&posterior, model.prior(y).as_ref()))
    };

    // Reconstruction and KL with the true label (labelled) or per the unlabelled objective.
    let (reconstruction, kl, label_terms, codes) = match config.unlabeled_objective {
        UnlabeledObjective::Marginalize => {
            let pairs = LabelPairs::new(&log_probs, labels, labels_per_image(config, train));
            let (z, posterior) = if config.label_in_encoder {
                let posterior = model.encode_pairs(images, &pairs.rows, &pairs.onehots, train);
                (posterior.sample(), posterior)
            } else {
                // An encoder that does not read the label encodes (and draws) each image once.
                let once = model.encode_given(images, Some(&true_onehot), train);
                (once.sample().index_select(0, &pairs.rows), once.rows(&pairs.rows))
            };
            let kl = kl_to_prior(&posterior, model.prior(&pairs.onehots).as_ref());
            let nll = nll_of(&z, &pairs.onehots, &images.index_select(0, &pairs.rows));
            let codes = LabelledCodes { weights: pairs.weights.flatten(0, -1), labels: pairs.onehots.shallow_clone(), codes: z };
            (pairs.per_image(&nll), pairs.per_image(&kl), pairs.neg_entropy, codes)
        }
        UnlabeledObjective::PredictedLabel => {
            let y = true_onehot.where_self(&labelled.unsqueeze(1), &log_probs.exp());
            let (z, kl) = encoded_with(images, &y);
            let nll = nll_of(&z, &y, images);
            let codes = LabelledCodes { weights: Tensor::ones([batch], (Kind::Float, images.device())), labels: y, codes: z };
            (nll, kl, Tensor::zeros([batch], (Kind::Float, images.device())), codes)
        }
    };
    let zero = || Tensor::zeros([], (Kind::Float, images.device()));
    let smoothing = if learns(train, &logits) && config.virtual_adversarial_weight > 0.0 {
        let view = classifier_view.unwrap_or(images);
        let divergence = match config.virtual_adversarial_images {
            SmoothedImages::All => virtual_adversarial(model, view, &log_probs, config.virtual_adversarial_radius),
            // The row count sets the passes' shapes: one host sync per step.
            SmoothedImages::Unlabelled => match labels.lt(0).nonzero().squeeze_dim(1) {
                rows if rows.size()[0] == 0 => zero(),
                rows => virtual_adversarial(
                    model,
                    &view.index_select(0, &rows),
                    &log_probs.index_select(0, &rows),
                    config.virtual_adversarial_radius,
                ),
            },
        };
        divergence * config.virtual_adversarial_weight
    } else {
        zero()
    };
    let cross_entropy = -log_probs.gather(1, &safe_labels.unsqueeze(1), false).squeeze_dim(1);
    let n_labelled = labelled.sum(Kind::Float).clamp_min(1.0);
    let classification = (cross_entropy * labelled.to_kind(Kind::Float)).sum(Kind::Float) / &n_labelled;

    let reconstruction_mean = (&reconstruction + &label_terms).mean(Kind::Float);
    let kl_mean = kl.mean(Kind::Float);
    let negative_elbo = &reconstruction_mean + &kl_mean + log_k;
    let code_match = if learns(train, &codes.codes) && config.code_match_weight > 0.0 {
        codes.mismatch_with_prior(model) * config.code_match_weight
    } else {
        zero()
    };
    let loss = &reconstruction_mean
        + &kl_mean * kl_weight
        + &classification * config.classifier_weight * (n_labelled / batch as f64)
        + smoothing
        + code_match;
    BatchObjective { loss, negative_elbo, reconstruction: reconstruction_mean, kl: kl_mean, classification: Some(classification) }
}

/// How many labels each image is paired with: every label, except in training with
/// `marginal_labels` set (evaluation always reports the full bound).
fn labels_per_image(config: &ModelConfig, train: bool) -> i64 {
    match config.marginal_labels {
        m if train && m > 0 => m.min(config.num_classes()),
        _ => config.num_classes(),
    }
}

/// The (image, label) pairs the bound is made of, `per_image` for each image, image-major.
/// An unlabelled image is paired with its most probable labels under q(y|x), weighted by q(y|x)
/// renormalised over them: with every label the weights are q itself, the M2 expectation; with
/// fewer, the bound is M2's for that renormalised distribution, its entropy included (so one
/// label, a point mass, has none to push towards uniform). A labelled image is paired with its
/// own label, weight 1, and with the classifier's likeliest others at weight 0: they cost
/// passes, but keep batch norm's batches what they were, each image `per_image` times (decoding a
/// labelled image once instead cost 4.4 points of accuracy with 100 labels; BENCHMARKS.md).
struct LabelPairs {
    /// Which image of the batch each pair reads, `[B·m]`.
    rows: Tensor,
    /// Its label, one-hot `[B·m, K]`.
    onehots: Tensor,
    /// Its weight in its image's sum, `[B, m]`.
    weights: Tensor,
    /// −H of each unlabelled image's weights (Σ w log w), 0 for a labelled one, `[B]`.
    neg_entropy: Tensor,
}

impl LabelPairs {
    /// `log_probs`: log q(y|x), `[B, K]`; `labels[i] < 0` for an unlabelled image.
    fn new(log_probs: &Tensor, labels: &Tensor, per_image: i64) -> Self {
        let [batch, k] = log_probs.size()[..] else { unreachable!("log q(y|x) is [B, K]") };
        let (labelled, unlabelled) = (labels.ge(0).unsqueeze(1), labels.lt(0));
        // The ranking is not learned; a labelled image's own label ranks first.
        let ranked = log_probs.detach();
        let own_first = ranked.scatter_value(1, &labels.clamp_min(0).unsqueeze(1), f64::INFINITY);
        let (_, candidates) = ranked.where_self(&unlabelled.unsqueeze(1), &own_first).topk(per_image, 1, true, true);
        let candidate_log_probs = log_probs.gather(1, &candidates, false);
        let log_weights = &candidate_log_probs - candidate_log_probs.logsumexp([1], true);
        let believed = log_weights.exp();
        let own = Tensor::arange(per_image, (Kind::Int64, log_probs.device())).eq(0).to_kind(Kind::Float).unsqueeze(0);
        let neg_entropy = (&believed * &log_weights)
            .sum_dim_intlist(1, false, Kind::Float)
            .where_self(&unlabelled, &Tensor::zeros([batch], (Kind::Float, log_probs.device())));
        Self {
            rows: Tensor::arange(batch, (Kind::Int64, log_probs.device())).repeat_interleave_self_int(per_image, 0, None),
            onehots: candidates.flatten(0, -1).one_hot(k).to_kind(Kind::Float),
            weights: own.where_self(&labelled, &believed),
            neg_entropy,
        }
    }

    /// Σ over each image's pairs of weight · `per_pair` (`[B·m]`), `[B]`.
    fn per_image(&self, per_pair: &Tensor) -> Tensor {
        (per_pair.view_as(&self.weights) * &self.weights).sum_dim_intlist(1, false, Kind::Float)
    }
}

/// A training batch's codes, each drawn from q(z|x, y) for one (image, label) pair, with the
/// pair's label (one-hot, or q(y|x) for the predicted-label objective) and its weight in the bound.
struct LabelledCodes {
    codes: Tensor,
    labels: Tensor,
    weights: Tensor,
}

impl LabelledCodes {
    /// Squared maximum mean discrepancy between the codes with their labels, q(z, y), and the
    /// prior's draws for the same labels, p(z|y)·q(y), under the kernel k_z(z, z')·⟨y, y'⟩: for
    /// one-hot labels, each label's codes against that label's prior draws. k_z is the inverse
    /// multiquadric summed over scales, as the Wasserstein autoencoder uses it (Tolstikhin et al.
    /// 2018): heavy-tailed, so codes far out still feel the pull. The weights and labels are held
    /// fixed: this shapes where codes lie, not what the classifier believes. The kernels grow with
    /// the square of the pairs: with the conv recipe's 400 pairs a step, epochs took 22–35% longer.
    fn mismatch_with_prior(&self, model: &dyn Vae) -> Tensor {
        const SCALES: [f64; 7] = [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0];
        let (labels, weights) = (self.labels.detach(), self.weights.detach());
        let weights = &weights / weights.sum(Kind::Float).clamp_min(f64::MIN_POSITIVE);
        let drawn = super::codes_from_noise(model, &self.codes.randn_like(), Some(&labels));
        let same_label = labels.matmul(&labels.tr());
        let base = 2.0 * self.codes.size()[1] as f64;
        let mean_kernel = |a: &Tensor, b: &Tensor| {
            let squared_distances = (a.square().sum_dim_intlist(1, true, Kind::Float)
                + b.square().sum_dim_intlist(1, true, Kind::Float).tr()
                - a.matmul(&b.tr()) * 2.0)
                .clamp_min(0.0);
            let kernel = SCALES.iter().map(|scale| (&squared_distances + base * scale).reciprocal() * (base * scale)).sum::<Tensor>();
            (kernel * &same_label).matmul(&weights).dot(&weights)
        };
        mean_kernel(&self.codes, &self.codes) + mean_kernel(&drawn, &drawn) - mean_kernel(&self.codes, &drawn) * 2.0
    }
}

/// Virtual adversarial training (Miyato et al. 2018): the mean KL(q(y|x) ‖ q(y|x + r)) over the
/// batch, r of L2 norm `radius` along the direction that changes q(y|x) most, found by one power
/// iteration from a random probe. `log_probs` are log q(y|x), held fixed as the target.
fn virtual_adversarial(model: &dyn Vae, images: &Tensor, log_probs: &Tensor, radius: f64) -> Tensor {
    // Small enough for the quadratic regime of the KL, large enough for float32 near intensity 1.
    const PROBE_NORM: f64 = 1e-2;
    let (target, images) = (log_probs.detach(), images.detach());
    let divergence = |perturbation: &Tensor| classifier_divergence(model, &target, &(&images + perturbation));
    let probe = (unit_per_image(&images.randn_like()) * PROBE_NORM).set_requires_grad(true);
    let gradient = Tensor::run_backward(&[divergence(&probe)], &[&probe], false, false).remove(0);
    divergence(&(unit_per_image(&gradient) * radius))
}

/// Mean KL(q ‖ q(y|x̃)) over the batch, for `target` = log q and x̃ `perturbed`.
fn classifier_divergence(model: &dyn Vae, target: &Tensor, perturbed: &Tensor) -> Tensor {
    let log_probs = model.classify(perturbed, true).expect("semi-supervised models classify").log_softmax(1, Kind::Float);
    (target.exp() * (target - log_probs)).sum_dim_intlist(1, false, Kind::Float).mean(Kind::Float)
}

/// Each image of `[N, C, H, W]` scaled to L2 norm 1.
fn unit_per_image(t: &Tensor) -> Tensor {
    let norms = t.flatten(1, -1).norm_scalaropt_dim(2, [1], false).clamp_min(1e-12);
    t / norms.view([-1, 1, 1, 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Architecture, BnControl};

    /// Both backbones.
    const ARCHITECTURES: [Architecture; 2] = [Architecture::SemiSupervised, Architecture::SemiSupervisedConv];

    /// A small semi-supervised model on MNIST-shaped images, with `adjust` applied to its config.
    fn small_model(architecture: Architecture, adjust: impl FnOnce(&mut ModelConfig)) -> (nn::VarStore, SemiSupervisedVae) {
        let mut config = ModelConfig { architecture, hidden: vec![32], latent_dim: 4, conv_channels: vec![4, 4], ..Default::default() };
        adjust(&mut config);
        let vars = nn::VarStore::new(tch::Device::Cpu);
        let model = SemiSupervisedVae::new(&vars.root(), config, &BnControl::default());
        (vars, model)
    }

    #[test]
    fn label_consistency_trains_the_decoder_through_a_fixed_classifier() {
        for architecture in ARCHITECTURES {
            for view in [ConsistencyView::Mean, ConsistencyView::Draw] {
                label_consistency_trains_the_decoder_through_a_fixed_classifier_of(architecture, view);
            }
        }
    }

    fn label_consistency_trains_the_decoder_through_a_fixed_classifier_of(architecture: Architecture, view: ConsistencyView) {
        let (vars, model) = small_model(architecture, |c| {
            (c.label_consistency_weight, c.prior, c.label_consistency_view) = (3.0, Prior::LabelConditional, view)
        });
        model.label_consistency(16, tch::Device::Cpu).backward();
        let gradient_under = |prefix: &str| -> f64 {
            vars.variables()
                .iter()
                .filter(|(name, v)| name.starts_with(prefix) && v.requires_grad() && v.grad().defined())
                .map(|(_, v)| v.grad().abs().sum(Kind::Float).double_value(&[]))
                .sum()
        };
        assert!(gradient_under("decoder") > 0.0, "the decoder learns from it");
        assert_eq!(gradient_under("classifier"), 0.0, "the classifier is held fixed");
        assert_eq!(gradient_under("encoder"), 0.0, "the encoder plays no part");
        assert_eq!(gradient_under("prior"), 0.0, "the prior is drawn from, not moved");

        // Held fixed means: the served (inference-mode) classifier's function, weights detached.
        // Population statistics of their own first, so that folding them in is tested.
        let x = Tensor::rand([8, 1, 28, 28], (Kind::Float, tch::Device::Cpu));
        let _ = tch::no_grad(|| model.classifier.forward(&(&x * 3.0 + 1.0), true));
        let served = model.classifier.forward(&x, false);
        assert!(served.allclose(&model.classifier.forward_frozen(&x), 1e-4, 1e-5, false), "{architecture:?}");
    }

    #[test]
    fn the_virtual_adversarial_direction_moves_the_classifier_more_than_a_random_one() {
        for architecture in ARCHITECTURES {
            the_virtual_adversarial_direction_moves_the_classifier_more_than_a_random_one_of(architecture);
        }
    }

    fn the_virtual_adversarial_direction_moves_the_classifier_more_than_a_random_one_of(architecture: Architecture) {
        tch::manual_seed(0);
        let (vars, model) = small_model(architecture, |c| c.virtual_adversarial_weight = 1.0);
        let x = Tensor::rand([32, 1, 28, 28], (Kind::Float, tch::Device::Cpu));
        let log_probs = model.classify(&x, true).unwrap().log_softmax(1, Kind::Float);
        let adversarial = virtual_adversarial(&model, &x, &log_probs, 2.0);
        let random = tch::no_grad(|| {
            let perturbed = &x + unit_per_image(&x.randn_like()) * 2.0;
            classifier_divergence(&model, &log_probs, &perturbed).double_value(&[])
        });
        let adversarial_value = adversarial.double_value(&[]);
        assert!(adversarial_value > 2.0 * random, "{architecture:?}: adversarial KL {adversarial_value} against random {random}");

        adversarial.backward();
        let touched = |prefix: &str| {
            vars.variables()
                .iter()
                .any(|(name, v)| name.starts_with(prefix) && v.grad().defined() && v.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0)
        };
        assert!(touched("classifier"), "the classifier learns from it");
        assert!(!touched("encoder") && !touched("decoder"), "the generative model plays no part");
    }

    #[test]
    fn regularisers_stay_out_of_the_batch_norm_statistics_pass() {
        let x = Tensor::rand([8, 1, 28, 28], (Kind::Float, tch::Device::Cpu));
        let none = Tensor::full([8], -1, (Kind::Int64, tch::Device::Cpu));
        let (_vars, model) = small_model(Architecture::SemiSupervised, |c| {
            (c.virtual_adversarial_weight, c.label_consistency_weight, c.code_match_weight) = (1.0, 1.0, 1.0)
        });
        // What the loss holds beyond the bound's terms (no labels here, so no cross-entropy);
        // computed within one pass, so other tests drawing random numbers cannot change it.
        let regularisers = || {
            let batch = model.objective(&x, None, &none, 1.0, true);
            (batch.loss - batch.reconstruction - batch.kl).double_value(&[])
        };
        // The fixed-point pass: training mode, no gradients; the regularisers would add passes.
        assert!(tch::no_grad(regularisers).abs() < 1e-3);
        assert!(regularisers() > 1e-2, "learning adds them");
    }

    #[test]
    fn code_matching_sees_each_labels_codes_against_that_labels_prior() {
        tch::manual_seed(0);
        let (_vars, model) = small_model(Architecture::SemiSupervised, |c| c.code_match_weight = 1.0);
        let n = 512;
        let labels = Tensor::arange(n, (Kind::Int64, tch::Device::Cpu)).remainder(2);
        let mismatch = |codes: Tensor| {
            let labelled = LabelledCodes {
                codes,
                labels: labels.one_hot(model.config().num_classes()).to_kind(Kind::Float),
                weights: Tensor::ones([n], (Kind::Float, tch::Device::Cpu)),
            };
            labelled.mismatch_with_prior(&model).double_value(&[])
        };
        let from_the_prior = mismatch(Tensor::randn([n, 4], (Kind::Float, tch::Device::Cpu)));
        // Label 0's codes on one side of the first axis, label 1's on the other: together they are
        // N(0, I), each label alone is not.
        let halves = Tensor::randn([n, 4], (Kind::Float, tch::Device::Cpu));
        let sign = (labels.to_kind(Kind::Float) * -2.0 + 1.0).unsqueeze(1);
        let first_axis = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 0.0]).unsqueeze(0);
        let split = &halves - &halves * &first_axis + halves.abs() * &first_axis * &sign;
        let shifted = Tensor::randn([n, 4], (Kind::Float, tch::Device::Cpu)) + 2.0;
        let (split, shifted) = (mismatch(split), mismatch(shifted));
        // The same computation in PyTorch, over five seeds, gave 0.011–0.016 (the estimate's own bias),
        // 0.10–0.14 and 1.31–1.34.
        assert!(from_the_prior.abs() < 0.03, "codes drawn from the prior: {from_the_prior}");
        assert!(split > 0.07 && split > 3.0 * from_the_prior.abs(), "labels split across the prior: {split} against {from_the_prior}");
        assert!(shifted > 5.0 * split, "codes off the prior altogether: {shifted} against {split}");
    }

    #[test]
    fn smoothing_only_unlabelled_images_skips_the_labelled_ones() {
        let x = Tensor::rand([8, 1, 28, 28], (Kind::Float, tch::Device::Cpu));
        let all_labelled = Tensor::arange(8, (Kind::Int64, tch::Device::Cpu));
        let half_labelled = all_labelled.where_scalarother(&all_labelled.lt(4), -1);
        for (images, labels, smoothed) in [
            (SmoothedImages::All, &all_labelled, true),
            (SmoothedImages::Unlabelled, &all_labelled, false),
            (SmoothedImages::Unlabelled, &half_labelled, true),
        ] {
            let (_vars, model) =
                small_model(Architecture::SemiSupervised, |c| (c.virtual_adversarial_weight, c.virtual_adversarial_images) = (1.0, images));
            let batch = model.objective(&x, None, labels, 1.0, true);
            let labelled_share = labels.ge(0).sum(Kind::Float).double_value(&[]) / 8.0;
            let cross_entropy = batch.classification.unwrap() * model.config().classifier_weight * labelled_share;
            // What the loss holds beyond the bound's terms and the cross-entropy: the smoothing.
            let smoothing = (batch.loss - batch.reconstruction - batch.kl - cross_entropy).double_value(&[]);
            assert_eq!(smoothing > 1e-3, smoothed, "{images:?} over {labels:?}: {smoothing}");
            assert!(smoothing > -1e-3);
        }
    }

    #[test]
    fn an_encoder_that_reads_the_label_encodes_per_label_and_reads_the_classifier_without_one() {
        for architecture in ARCHITECTURES {
            an_encoder_that_reads_the_label_encodes_per_label_and_reads_the_classifier_without_one_of(architecture);
        }
    }

    fn an_encoder_that_reads_the_label_encodes_per_label_and_reads_the_classifier_without_one_of(architecture: Architecture) {
        let (_vars, model) = small_model(architecture, |c| c.label_in_encoder = true);
        let x = Tensor::rand([6, 1, 28, 28], (Kind::Float, tch::Device::Cpu));
        let label = |l: i64| Tensor::full([6], l, (Kind::Int64, tch::Device::Cpu)).one_hot(10).to_kind(Kind::Float);
        let (as_three, as_eight) = (model.encode_given(&x, Some(&label(3)), false), model.encode_given(&x, Some(&label(8)), false));
        assert!(!as_three.mean.allclose(&as_eight.mean, 1e-4, 1e-4, false), "the label changes the code");
        let belief = model.classify(&x, false).unwrap().softmax(1, Kind::Float);
        let unlabelled = model.encode(&x, false).mean;
        assert!(unlabelled.allclose(&model.encode_given(&x, Some(&belief), false).mean, 1e-6, 1e-6, false));

        // Pairs are the selected images given their labels; with every image paired with every
        // label, batch statistics included (each image counted as often either way).
        let every_pair = (
            Tensor::arange(6, (Kind::Int64, tch::Device::Cpu)).repeat([10]),
            Tensor::arange(10, (Kind::Int64, tch::Device::Cpu)).repeat_interleave_self_int(6, 0, None).one_hot(10).to_kind(Kind::Float),
        );
        let uneven_pair = (Tensor::from_slice(&[0i64, 0, 5, 2]), label(1).narrow(0, 0, 4));
        for ((rows, labels), train) in [(&every_pair, false), (&every_pair, true), (&uneven_pair, false)] {
            let (once, selected) = tch::no_grad(|| {
                (model.encode_pairs(&x, rows, labels, train), model.encode_given(&x.index_select(0, rows), Some(labels), train))
            });
            assert!(once.mean.allclose(&selected.mean, 1e-4, 1e-5, false), "{architecture:?}, train {train}");
            assert!(once.log_var.allclose(&selected.log_var, 1e-4, 1e-5, false), "{architecture:?}, train {train}");
        }

        // An unlabelled example's KL is the expectation of the per-label KLs under q(y|x).
        tch::manual_seed(0);
        let none = Tensor::full([6], -1, (Kind::Int64, tch::Device::Cpu));
        let batch = model.objective(&x, None, &none, 1.0, false);
        let expected_kl = (0..10)
            .map(|l| belief.select(1, l) * kl_to_prior(&model.encode_given(&x, Some(&label(l)), false), None))
            .fold(Tensor::zeros([6], (Kind::Float, tch::Device::Cpu)), |sum, t| sum + t)
            .mean(Kind::Float);
        assert!(batch.kl.allclose(&expected_kl, 1e-4, 1e-4, false), "{} vs {}", batch.kl, expected_kl);
    }

    #[test]
    fn a_label_conditional_prior_starts_standard_and_draws_each_class_where_it_has_learned_to() {
        for architecture in ARCHITECTURES {
            a_label_conditional_prior_starts_standard_and_draws_each_class_where_it_has_learned_to_of(architecture);
        }
    }

    fn a_label_conditional_prior_starts_standard_and_draws_each_class_where_it_has_learned_to_of(architecture: Architecture) {
        let cpu = tch::Device::Cpu;
        // Built apart from the global generator's state: tests running beside this one draw from it.
        let (_standard_vars, standard) = small_model(architecture, |c| c.label_in_encoder = true);
        let (vars, conditional) = small_model(architecture, |c| (c.label_in_encoder, c.prior) = (true, Prior::LabelConditional));
        let x = Tensor::rand([8, 1, 28, 28], (Kind::Float, cpu));
        let labels = Tensor::from_slice(&[-1i64, -1, -1, -1, 3, 7, 1, 0]);
        // It starts at N(0, I) for every class: the KL, and so the bound, are the standard prior's.
        let classes = Tensor::eye(10, (Kind::Float, cpu)).narrow(0, 0, 8);
        let start = conditional.prior(&classes).expect("a learned prior");
        assert_eq!(
            (start.mean.abs().sum(Kind::Float).double_value(&[]), start.log_var.abs().sum(Kind::Float).double_value(&[])),
            (0.0, 0.0)
        );
        assert!(standard.prior(&classes).is_none());
        let posterior = tch::no_grad(|| conditional.encode_given(&x, Some(&classes), false));
        assert!(kl_to_prior(&posterior, Some(&start)).allclose(&kl_to_prior(&posterior, None), 1e-6, 1e-6, false));

        // Training moves the prior through the KL term.
        conditional.objective(&x, None, &labels, 1.0, true).loss.backward();
        let means = &vars.variables()["prior.means"];
        assert!(means.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0, "{architecture:?}: the prior learns");

        // Class 3 learned N(5, 0.5²): its codes are drawn there, temperature scaling the spread;
        // class 7 kept N(0, I). A soft label blends the two.
        tch::no_grad(|| {
            let _ = means.get(3).fill_(5.0);
            let _ = vars.variables()["prior.log_vars"].get(3).fill_(0.25f64.ln());
        });
        let noise = Tensor::randn([4000, 4], (Kind::Float, cpu)) * 0.5;
        let onehot = |l: i64| Tensor::full([4000], l, (Kind::Int64, cpu)).one_hot(10).to_kind(Kind::Float);
        let moments = |labels: &Tensor| {
            let z = tch::no_grad(|| super::super::codes_from_noise(&conditional, &noise, Some(labels)));
            (z.mean(Kind::Float).double_value(&[]), z.std(true).double_value(&[]))
        };
        let near = |(mean, std): (f64, f64), expected: (f64, f64)| (mean - expected.0).abs() < 0.05 && (std - expected.1).abs() < 0.02;
        assert!(near(moments(&onehot(3)), (5.0, 0.25)), "{:?}", moments(&onehot(3)));
        assert!(near(moments(&onehot(7)), (0.0, 0.5)), "{:?}", moments(&onehot(7)));
        let halfway = (onehot(3) + onehot(7)) * 0.5;
        assert!(near(moments(&halfway), (2.5, 0.5 * 0.5f64.sqrt())), "{:?}", moments(&halfway));
        let standard_codes = tch::no_grad(|| super::super::codes_from_noise(&standard, &noise, Some(&onehot(3))));
        assert!(standard_codes.equal(&noise), "N(0, I) codes are the noise itself");
    }

    #[test]
    fn a_labelled_image_pairs_with_its_label_and_an_unlabelled_one_with_its_likeliest_labels() {
        let probs = Tensor::from_slice(&[0.1f32, 0.6, 0.3, 0.5, 0.2, 0.3, 0.3, 0.1, 0.6]).view([3, 3]);
        let labels = Tensor::from_slice(&[-1i64, 2, -1]);
        let pairs = LabelPairs::new(&probs.log(), &labels, 2);
        assert_eq!(Vec::<i64>::try_from(&pairs.rows).unwrap(), [0, 0, 1, 1, 2, 2]);
        assert_eq!(Vec::<i64>::try_from(&pairs.onehots.argmax(1, false)).unwrap(), [1, 2, 2, 0, 2, 0]);
        let weights = Vec::<f32>::try_from(&pairs.weights.flatten(0, -1)).unwrap();
        let expected = [2.0 / 3.0, 1.0 / 3.0, 1.0, 0.0, 2.0 / 3.0, 1.0 / 3.0];
        assert!(weights.iter().zip(expected).all(|(w, e)| (w - e).abs() < 1e-6), "{weights:?}");
        let h = (2.0f32 / 3.0) * (2.0f32 / 3.0).ln() + (1.0 / 3.0) * (1.0f32 / 3.0).ln();
        assert!(pairs.neg_entropy.allclose(&Tensor::from_slice(&[h, 0.0, h]), 1e-6, 1e-6, false), "{}", pairs.neg_entropy);
        // One label is a point mass: weight 1, no entropy.
        let best = LabelPairs::new(&probs.log(), &labels, 1);
        assert_eq!(Vec::<i64>::try_from(&best.onehots.argmax(1, false)).unwrap(), [1, 2, 2]);
        assert_eq!(Vec::<f32>::try_from(&best.neg_entropy).unwrap(), [0.0; 3]);
        // With every label, the weights are q(y|x) itself: the expectation of M2.
        let all = LabelPairs::new(&probs.log(), &labels, 3);
        let sums = all.per_image(&all.onehots.argmax(1, false).to_kind(Kind::Float));
        assert!(sums.allclose(&Tensor::from_slice(&[0.6f32 + 0.6, 2.0, 0.1 + 1.2]), 1e-6, 1e-6, false), "{sums}");
    }

    #[test]
    fn fewer_marginal_labels_change_training_but_not_the_reported_bound() {
        let x = Tensor::rand([8, 1, 28, 28], (Kind::Float, tch::Device::Cpu));
        let labels = Tensor::from_slice(&[-1i64, -1, -1, -1, -1, 3, 7, 1]);
        let (every_vars, every) = small_model(Architecture::SemiSupervised, |c| c.label_in_encoder = true);
        let (mut two_vars, two) = small_model(Architecture::SemiSupervised, |c| (c.label_in_encoder, c.marginal_labels) = (true, 2));
        two_vars.copy(&every_vars).unwrap();
        // The KL term: no sampling in it, so the comparison is exact.
        let kl =
            |model: &SemiSupervisedVae, train: bool| tch::no_grad(|| model.objective(&x, None, &labels, 1.0, train).kl.double_value(&[]));
        assert_eq!(kl(&two, false), kl(&every, false), "evaluation marginalises over every label");
        assert_ne!(kl(&two, true), kl(&every, true), "training over the two likeliest");
    }

    #[test]
    fn the_label_in_every_decoder_stage_starts_silent_and_then_shapes_every_stage() {
        let z = Tensor::randn([6, 4], (Kind::Float, tch::Device::Cpu));
        let labels = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5]).one_hot(10).to_kind(Kind::Float);
        let (mut plain_vars, plain) = small_model(Architecture::SemiSupervisedConv, |_| {});
        let (vars, staged) = small_model(Architecture::SemiSupervisedConv, |c| c.label_in_decoder_stages = true);
        // The same weights wherever the two share a layer (a common seed would not do: other tests
        // draw from the same generator in between).
        plain_vars.copy(&vars).unwrap();
        let decode = |model: &SemiSupervisedVae| tch::no_grad(|| model.decode(&z, Some(&labels), false));
        assert!(decode(&plain).allclose(&decode(&staged), 1e-6, 1e-6, false), "zero shifts at first: the plain decoder");
        let stage_weights: Vec<_> = vars.variables().into_iter().filter(|(name, _)| name.contains("tconv_label")).collect();
        let shapes: Vec<_> = stage_weights.iter().map(|(_, w)| w.size()).collect();
        assert!(shapes.contains(&vec![4, 10]) && shapes.contains(&vec![784, 10]), "per channel, then per pixel: {shapes:?}");
        for (name, weight) in &stage_weights {
            let before = decode(&staged);
            tch::no_grad(|| weight.shallow_clone().copy_(&Tensor::randn(weight.size(), (Kind::Float, tch::Device::Cpu))));
            assert!((decode(&staged) - before).abs().max().double_value(&[]) > 1e-3, "{name} moves the output");
        }
        for architecture in [Architecture::SemiSupervised, Architecture::Conv] {
            let config = ModelConfig { architecture, label_in_decoder_stages: true, ..Default::default() };
            assert!(config.validate().is_err(), "{architecture:?} has no labelled decoder stages");
        }
    }
}
