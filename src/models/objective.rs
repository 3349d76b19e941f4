//! The negative ELBO and its parts, shared by every model. All quantities are nats per example.

use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};

use super::{Gaussian, Vae};

const LOG_2PI: f64 = 1.837_877_066_409_345_5;

/// p(x|z): how pixels are scored.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Likelihood {
    /// Independent Bernoulli on intensities in [0, 1]; the decoder outputs logits.
    Bernoulli,
    /// Independent Gaussian; the decoder outputs means. `log_var` fixed, or learned per pixel.
    Gaussian { log_var: f64, learned: bool },
}

/// Semi-supervised: how an unlabelled example enters the cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum UnlabeledObjective {
    /// Kingma et al. 2014 (M2): Σ_y q(y|x)·(−ELBO(x, y)) − H(q(y|x)).
    Marginalize,
    /// The 2015 course project: the decoder gets the predicted distribution y', no label term.
    PredictedLabel,
}

/// −log p(x | params) per example, summed over pixels.
pub fn negative_log_likelihood(likelihood: Likelihood, params: &Tensor, images: &Tensor, learned_log_var: Option<&Tensor>) -> Tensor {
    let per_pixel = match likelihood {
        Likelihood::Bernoulli => params.binary_cross_entropy_with_logits::<Tensor>(images, None, None, Reduction::None),
        Likelihood::Gaussian { log_var, .. } => {
            let log_var = pixel_log_var(log_var, params, learned_log_var);
            ((params - images).square() * (-&log_var).exp() + &log_var + LOG_2PI) * 0.5
        }
    };
    per_pixel.flatten(1, -1).sum_dim_intlist(1, false, Kind::Float)
}

/// A Gaussian likelihood's log-variance: the learned one (per pixel), else the `fixed` constant.
pub fn pixel_log_var(fixed: f64, params: &Tensor, learned_log_var: Option<&Tensor>) -> Tensor {
    learned_log_var.map(|v| v.shallow_clone()).unwrap_or_else(|| Tensor::from(fixed as f32).to_device(params.device()))
}

/// KL(q(z|x) ‖ p(z)) per example, p the row's `prior` or N(0, I).
pub fn kl_to_prior(posterior: &Gaussian, prior: Option<&Gaussian>) -> Tensor {
    let per_dim = match prior {
        None => posterior.mean.square() + posterior.log_var.exp() - 1.0 - &posterior.log_var,
        Some(p) => {
            ((&posterior.mean - &p.mean).square() + posterior.log_var.exp()) * (-&p.log_var).exp() - 1.0 + &p.log_var - &posterior.log_var
        }
    };
    (per_dim * 0.5).sum_dim_intlist(1, false, Kind::Float)
}

/// log p(z) per row, p the row's `prior` or N(0, I).
fn log_prior(z: &Tensor, prior: Option<&Gaussian>) -> Tensor {
    let per_dim = match prior {
        None => z.square(),
        Some(p) => (z - &p.mean).square() * (-&p.log_var).exp() + &p.log_var,
    };
    (per_dim + LOG_2PI).sum_dim_intlist(1, false, Kind::Float) * -0.5
}

/// Mean terms of one batch; `loss` is what gets minimised (with KL scaled by `kl_weight`).
pub struct BatchObjective {
    pub loss: Tensor,
    /// Mean −ELBO (with KL weight 1) over all examples of the batch.
    pub negative_elbo: Tensor,
    pub reconstruction: Tensor,
    pub kl: Tensor,
    /// Mean cross-entropy of the labelled examples (semi-supervised only).
    pub classification: Option<Tensor>,
}

/// The objective of an unconditional VAE on `images`.
pub fn unsupervised<V: Vae + ?Sized>(model: &V, images: &Tensor, kl_weight: f64, train: bool) -> BatchObjective {
    let posterior = model.encode(images, train);
    let params = model.decode(&posterior.sample(), None, train);
    let config = model.config();
    let nll = negative_log_likelihood(config.likelihood, &params, images, model.likelihood_log_var());
    let kl = kl_to_prior(&posterior, None);
    let reconstruction = nll.mean(Kind::Float);
    let kl = kl.mean(Kind::Float);
    BatchObjective {
        loss: &reconstruction + &kl * kl_weight,
        negative_elbo: &reconstruction + &kl,
        reconstruction,
        kl,
        classification: None,
    }
}

/// Importance-weighted bound log p(x) ≥ log 1/k Σ p(x, z_i)/q(z_i|x) (Burda et al. 2015), per
/// example, for unconditional models; labels are marginalised out with a uniform prior when the
/// decoder needs them.
pub fn importance_weighted_log_likelihood(model: &dyn Vae, images: &Tensor, samples: i64) -> Tensor {
    let posterior = model.encode(images, false);
    let batch = images.size()[0];
    let config = model.config();
    let mut log_weights = Vec::with_capacity(samples as usize);
    for _ in 0..samples {
        let eps = posterior.mean.randn_like();
        let z = posterior.at(&eps);
        let log_q = (eps.square() + &posterior.log_var + LOG_2PI).sum_dim_intlist(1, false, Kind::Float) * -0.5;
        // log p(x, z), the label marginalised out under its uniform prior where there is one.
        let log_joint = if config.architecture.is_semi_supervised() {
            let k = config.num_classes();
            let y_all = every_label(k, batch, z.device());
            let z_all = z.repeat([k, 1]);
            let nll = negative_log_likelihood(
                config.likelihood,
                &model.decode(&z_all, Some(&y_all), false),
                &images.repeat([k, 1, 1, 1]),
                model.likelihood_log_var(),
            );
            (log_prior(&z_all, model.prior(&y_all).as_ref()) - nll).view([k, batch]).logsumexp(0, false) - (k as f64).ln()
        } else {
            log_prior(&z, None)
                - negative_log_likelihood(config.likelihood, &model.decode(&z, None, false), images, model.likelihood_log_var())
        };
        log_weights.push(log_joint - log_q);
    }
    Tensor::stack(&log_weights, 0).logsumexp(0, false) - (samples as f64).ln()
}

/// One-hot labels `[K·B, K]` for a batch of B repeated once per class (`x.repeat([K, …])`):
/// the first B rows are class 0, the next B class 1, and so on.
pub fn every_label(num_classes: i64, batch: i64, device: tch::Device) -> Tensor {
    let labels = Tensor::arange(num_classes, (Kind::Int64, device)).repeat_interleave_self_int(batch, 0, None);
    labels.one_hot(num_classes).to_kind(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaussian(mean: &[f32], log_var: &[f32]) -> Gaussian {
        Gaussian { mean: Tensor::from_slice(mean).view([1, -1]), log_var: Tensor::from_slice(log_var).view([1, -1]) }
    }

    #[test]
    fn kl_and_log_density_match_their_closed_forms() {
        let q = gaussian(&[1.0, 0.0], &[0.0, 0.5]);
        let value = |t: Tensor| t.double_value(&[0]);
        // KL(N(1, 1) ‖ N(0, 4)) = ½(2/4 − 1 + ln 4); KL(N(0, e^½) ‖ N(0, e^½)) = 0.
        let prior = gaussian(&[0.0, 0.0], &[4f32.ln(), 0.5]);
        assert!((value(kl_to_prior(&q, Some(&prior))) - 0.5 * (0.5 - 1.0 + 4f64.ln())).abs() < 1e-5);
        assert!(value(kl_to_prior(&q, Some(&q))).abs() < 1e-6);
        let standard = gaussian(&[0.0, 0.0], &[0.0, 0.0]);
        assert!((value(kl_to_prior(&q, None)) - value(kl_to_prior(&q, Some(&standard)))).abs() < 1e-6);
        // log N(z; μ, σ²) at z = μ + σ: −½(1 + ln σ² + ln 2π) per dimension.
        let z = Tensor::from_slice(&[3.0f32, -1.0]).view([1, 2]);
        let at = gaussian(&[1.0, -1.0], &[4f32.ln(), 0.0]);
        let expected = -0.5 * (1.0 + 4f64.ln() + LOG_2PI) - 0.5 * LOG_2PI;
        assert!((value(log_prior(&z, Some(&at))) - expected).abs() < 1e-5);
        assert!((value(log_prior(&z, None)) + 0.5 * (10.0 + 2.0 * LOG_2PI)).abs() < 1e-5);
    }
}
