//! The semi-supervised VAE: a classifier q(y|x), an MLP VAE whose decoder sees [z, y].
//!
//! Cost per labelled example: −ELBO(x, y) + α·CE(q(y|x), y).
//! Per unlabelled example, by `UnlabeledObjective`:
//! - `marginalize` (M2, Kingma et al. 2014): Σ_y q(y|x)·(−ELBO(x, y)) − H(q(y|x));
//! - `predicted-label` (the course project): −ELBO(x, y') with y' = q(y|x) fed to the decoder.
//!
//! −ELBO(x, y) includes −log p(y) = log K for the uniform label prior, so it bounds −log p(x, y).
//!
//! With γ > 0 (`label_consistency_weight`), training adds γ·CE(q(y|x̂), y) for x̂ decoded from a
//! prior code and a random label y clamped, the classifier held fixed: the decoder learns to
//! draw the class it is given, so z cannot override y when sampling.

use tch::{nn, Kind, Tensor};

use super::batch_norm::BnControl;
use super::layers;
use super::mlp::{BnMlp, MlpVae};
use super::objective::{every_label, kl_to_standard_normal, negative_log_likelihood, BatchObjective};
use super::quantized::Dense;
use super::{ModelConfig, ModelError, Posterior, UnlabeledObjective, Vae};

pub struct SemiSupervisedVae {
    vae: MlpVae,
    classifier: BnMlp,
    classifier_out: Dense,
}

impl SemiSupervisedVae {
    pub fn new(path: &nn::Path, config: ModelConfig, bn: &BnControl) -> Self {
        let k = config.num_classes();
        let classifier = BnMlp::new(&(path / "classifier"), config.image.pixels(), &config.hidden, bn);
        let top = *config.hidden.last().expect("validated");
        let classifier_out = Dense::new(layers::linear(path / "classifier" / "logits", top, k));
        Self { vae: MlpVae::new(path, config, k, bn), classifier, classifier_out }
    }
}

impl Vae for SemiSupervisedVae {
    fn config(&self) -> &ModelConfig {
        self.vae.config()
    }

    fn encode(&self, images: &Tensor, train: bool) -> Posterior {
        self.vae.encode(images, train)
    }

    fn decode(&self, z: &Tensor, labels: Option<&Tensor>, train: bool) -> Tensor {
        match labels {
            Some(y) => self.vae.decode(z, Some(y), train),
            // No label given: decode under a uniform mixture input, the prior's mean of one-hots.
            None => {
                let k = self.config().num_classes();
                let uniform = Tensor::full([z.size()[0], k], 1.0 / k as f64, (Kind::Float, z.device()));
                self.vae.decode(z, Some(&uniform), train)
            }
        }
    }

    fn classify(&self, images: &Tensor, train: bool) -> Option<Tensor> {
        Some(self.classifier_out.forward(&self.classifier.forward(&images.flatten(1, -1), train), train))
    }

    fn likelihood_log_var(&self) -> Option<&Tensor> {
        self.vae.likelihood_log_var()
    }

    fn quantize(&mut self) -> Result<bool, ModelError> {
        self.vae.quantize()?;
        self.classifier.quantize()?;
        self.classifier_out.quantize()?;
        Ok(true)
    }

    fn objective(&self, images: &Tensor, classifier_view: Option<&Tensor>, labels: &Tensor, kl_weight: f64, train: bool) -> BatchObjective {
        let mut batch = objective(self, images, classifier_view, labels, kl_weight, train);
        let weight = self.config().label_consistency_weight;
        if train && weight > 0.0 {
            batch.loss += self.label_consistency(images.size()[0], images.device()) * weight;
        }
        batch
    }
}

impl SemiSupervisedVae {
    /// Mean CE(q(y|x̂), y) over `n` prior codes with random labels y, x̂ their decoded images as
    /// served (population batch norm), q the classifier held fixed, so only the decoder learns
    /// from it and the classifier cannot learn to read whatever the decoder draws.
    fn label_consistency(&self, n: i64, device: tch::Device) -> Tensor {
        let config = self.config();
        let labels = Tensor::randint(config.num_classes(), [n], (Kind::Int64, device));
        let z = Tensor::randn([n, config.latent_dim], (Kind::Float, device));
        let onehot = labels.one_hot(config.num_classes()).to_kind(Kind::Float);
        let drawn = super::intensities(config, &self.vae.decode(&z, Some(&onehot), false));
        let logits = self.classifier_out.forward_frozen(&self.classifier.forward_frozen(&drawn.flatten(1, -1)));
        logits.cross_entropy_for_logits(&labels)
    }
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
    let posterior = model.encode(images, train);
    let z = posterior.sample();
    let kl = kl_to_standard_normal(&posterior);
    let labelled = labels.ge(0);
    let safe_labels = labels.clamp_min(0);
    let nll_of = |z: &Tensor, y: &Tensor, x: &Tensor| {
        negative_log_likelihood(config.likelihood, &model.decode(z, Some(y), train), x, model.likelihood_log_var())
    };

    // Reconstruction with the true label (labelled) or per the unlabelled objective.
    let true_onehot = safe_labels.one_hot(k).to_kind(Kind::Float);
    let (reconstruction, label_terms) = match config.unlabeled_objective {
        UnlabeledObjective::Marginalize => {
            let (z_all, y_all) = every_label(&z, k);
            let nll_all = nll_of(&z_all, &y_all, &images.repeat([k, 1, 1, 1])).view([k, batch]).transpose(0, 1);
            let probs = log_probs.exp();
            let expected = (&probs * &nll_all).sum_dim_intlist(1, false, Kind::Float);
            let observed = nll_all.gather(1, &safe_labels.unsqueeze(1), false).squeeze_dim(1);
            // −H(q) = Σ q log q, only for unlabelled examples.
            let neg_entropy = (&probs * &log_probs).sum_dim_intlist(1, false, Kind::Float);
            (observed.where_self(&labelled, &expected), neg_entropy.where_self(&labelled.logical_not(), &neg_entropy.zeros_like()))
        }
        UnlabeledObjective::PredictedLabel => {
            let y = true_onehot.where_self(&labelled.unsqueeze(1), &log_probs.exp());
            (nll_of(&z, &y, images), Tensor::zeros([batch], (Kind::Float, images.device())))
        }
    };
    let cross_entropy = -log_probs.gather(1, &safe_labels.unsqueeze(1), false).squeeze_dim(1);
    let n_labelled = labelled.sum(Kind::Float).clamp_min(1.0);
    let classification = (cross_entropy * labelled.to_kind(Kind::Float)).sum(Kind::Float) / &n_labelled;

    let reconstruction_mean = (&reconstruction + &label_terms).mean(Kind::Float);
    let kl_mean = kl.mean(Kind::Float);
    let negative_elbo = &reconstruction_mean + &kl_mean + log_k;
    let loss = &reconstruction_mean + &kl_mean * kl_weight + &classification * config.classifier_weight * (n_labelled / batch as f64);
    BatchObjective { loss, negative_elbo, reconstruction: reconstruction_mean, kl: kl_mean, classification: Some(classification) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Architecture, BnControl};

    #[test]
    fn label_consistency_trains_the_decoder_through_a_fixed_classifier() {
        let config = ModelConfig {
            architecture: Architecture::SemiSupervised,
            hidden: vec![32],
            latent_dim: 4,
            label_consistency_weight: 3.0,
            ..Default::default()
        };
        let vars = nn::VarStore::new(tch::Device::Cpu);
        let model = SemiSupervisedVae::new(&vars.root(), config, &BnControl::default());
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

        // Held fixed means: the served (inference-mode) classifier's function, weights detached.
        let x = Tensor::rand([8, 784], (Kind::Float, tch::Device::Cpu));
        let served = model.classifier_out.forward(&model.classifier.forward(&x, false), false);
        let frozen = model.classifier_out.forward_frozen(&model.classifier.forward_frozen(&x));
        assert!(served.allclose(&frozen, 1e-5, 1e-5, false));
    }
}
