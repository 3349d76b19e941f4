//! Evaluation: test −ELBO and importance-weighted log-likelihood in nats per image, accuracy.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::data::Dataset;
use crate::models::objective::importance_weighted_log_likelihood;
use crate::models::Vae;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub images: usize,
    /// Mean −ELBO, nats per image (one posterior sample per image).
    pub negative_elbo: f64,
    /// Mean −log p(x) estimated with the IWAE bound, when asked for.
    pub iwae_negative_log_likelihood: Option<f64>,
    pub iwae_samples: i64,
    /// Fraction of correctly classified images, for models with a classifier.
    pub accuracy: Option<f64>,
    /// The classifier's verdict on each image, in order (not stored): the judge's profile of the
    /// same images reads it instead of classifying them again.
    #[serde(skip)]
    pub predictions: Option<Vec<i64>>,
}

/// Evaluates with population BN statistics (inference mode), without gradients.
pub fn evaluate(model: &dyn Vae, data: &Dataset, batch_size: usize, iwae_samples: i64) -> Evaluation {
    tch::no_grad(|| {
        let n = data.len();
        let (mut elbo_sum, mut iwae_sum) = (0.0, 0.0);
        let mut verdicts = Vec::new();
        for start in (0..n).step_by(batch_size) {
            let len = batch_size.min(n - start) as i64;
            let images = data.images.narrow(0, start as i64, len);
            let unlabelled = Tensor::full([len], -1, (Kind::Int64, images.device()));
            elbo_sum += model.objective(&images, None, &unlabelled, 1.0, false).negative_elbo.double_value(&[]) * len as f64;
            if iwae_samples > 0 {
                iwae_sum -= importance_weighted_log_likelihood(model, &images, iwae_samples).sum(Kind::Double).double_value(&[]);
            }
            if let Some(logits) = model.classify(&images, false) {
                verdicts.push(logits.argmax(1, false));
            }
        }
        let n_f = n.max(1) as f64;
        let predictions = (!verdicts.is_empty())
            .then(|| Vec::<i64>::try_from(Tensor::cat(&verdicts, 0).to_device(Device::Cpu)).expect("integer verdicts"));
        let accuracy = predictions.as_ref().map(|predicted| {
            let labels = Vec::<i64>::try_from(data.labels.to_device(Device::Cpu)).expect("integer labels");
            predicted.iter().zip(&labels).filter(|(p, l)| p == l).count() as f64 / n_f
        });
        Evaluation {
            images: n,
            negative_elbo: elbo_sum / n_f,
            iwae_negative_log_likelihood: (iwae_samples > 0).then_some(iwae_sum / n_f),
            iwae_samples,
            accuracy,
            predictions,
        }
    })
}
