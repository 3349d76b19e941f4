//! Where the codes of the samples the judge scores come from (`vae-serve eval --codes`): the
//! model's prior, which is what `GET /sample` draws, or one of two stand-ins for a prior that
//! fitted where the encoder puts real images. The training images' posteriors themselves give
//! the decoder's ceiling; a mixture of Gaussians fitted to them after training gives what a
//! smooth prior of that shape would draw. Comparing their label fidelity with the prior's splits a
//! model's misses between its prior and its decoder.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::by_rows;
use crate::data::Dataset;
use crate::models::{self, Gaussian, LoadedModel, ModelError};

/// EM iterations of a fitted mixture: enough for the log-likelihood to settle on MNIST's codes.
const MIXTURE_ITERATIONS: usize = 100;
/// Added to every component's covariance while fitting, so that a component left with a few
/// points stays invertible.
const MIXTURE_RIDGE: f64 = 1e-3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CodeSource {
    /// The model's prior.
    #[default]
    Prior,
    /// The training images' posteriors (see `TrainingPosteriors`).
    TrainingPosteriors,
    /// A mixture of Gaussians per label fitted to them (see `FittedMixtures`).
    FittedMixture,
}

pub enum Codes {
    Prior,
    TrainingPosteriors(TrainingPosteriors),
    FittedMixture(FittedMixtures),
}

impl Codes {
    /// The codes `source` names for `loaded`, from its `training` images where they are needed;
    /// `components` per label for a fitted mixture.
    pub fn of(source: CodeSource, loaded: &LoadedModel, training: &Dataset, components: i64) -> Result<Self, ModelError> {
        Ok(match source {
            CodeSource::Prior => Codes::Prior,
            CodeSource::TrainingPosteriors => Codes::TrainingPosteriors(TrainingPosteriors::of(loaded, training)),
            CodeSource::FittedMixture => Codes::FittedMixture(FittedMixtures::fit(&TrainingPosteriors::of(loaded, training), components)?),
        })
    }

    pub fn source(&self) -> CodeSource {
        match self {
            Codes::Prior => CodeSource::Prior,
            Codes::TrainingPosteriors(_) => CodeSource::TrainingPosteriors,
            Codes::FittedMixture(_) => CodeSource::FittedMixture,
        }
    }

    /// `n` images as intensities `[n, C, H, W]`, decoded from codes drawn at `temperature` (with
    /// `label` clamped for a model with labels).
    pub fn draw(&self, loaded: &LoadedModel, n: i64, label: Option<i64>, temperature: f64) -> Result<Tensor, ModelError> {
        let z = match self {
            Codes::Prior => return models::sample(loaded, n, label, temperature).map(|(_, images)| images),
            Codes::TrainingPosteriors(posteriors) => posteriors.draw(n, label, temperature)?,
            Codes::FittedMixture(mixtures) => mixtures.draw(n, label, temperature),
        };
        Ok(models::decode_images(&*loaded.model, &z, label))
    }
}

/// The posteriors q(z|x, y) of a model's training images, y the label its own classifier gives
/// x: the codes its decoder was trained on. Samples drawn from them (an image of the label picked
/// at random, its code drawn at the temperature) measure the decoder's ceiling: how often the
/// samples would keep their label if the prior matched where the encoder puts real images.
pub struct TrainingPosteriors {
    posteriors: Gaussian,
    /// `[N]`; None for a model without labels.
    labels: Option<Tensor>,
    classes: i64,
}

impl TrainingPosteriors {
    /// Encodes `data`'s images (on any device) on the model's device, a pass of rows at a time.
    pub fn of(loaded: &LoadedModel, data: &Dataset) -> Self {
        tch::no_grad(|| {
            let model = &*loaded.model;
            let k = model.config().num_classes();
            let (mut means, mut log_vars, mut labels) = (Vec::new(), Vec::new(), Vec::new());
            by_rows(&data.images, |rows| {
                let images = rows.to_device(loaded.vars.device());
                let label = model.classify(&images, false).map(|logits| logits.argmax(1, false));
                let posterior = model.encode_given(&images, label.as_ref().map(|l| l.one_hot(k).to_kind(Kind::Float)).as_ref(), false);
                means.push(posterior.mean);
                log_vars.push(posterior.log_var);
                labels.extend(label);
            });
            Self {
                posteriors: Gaussian { mean: Tensor::cat(&means, 0), log_var: Tensor::cat(&log_vars, 0) },
                labels: (!labels.is_empty()).then(|| Tensor::cat(&labels, 0)),
                classes: k,
            }
        })
    }

    /// The posteriors of the images with `label` (all of them, for a model without labels).
    fn of_label(&self, label: Option<i64>) -> Result<Gaussian, ModelError> {
        let rows = match (&self.labels, label) {
            (Some(labels), Some(label)) => labels.eq(label).nonzero().squeeze_dim(1),
            _ => Tensor::arange(self.posteriors.mean.size()[0], (Kind::Int64, self.posteriors.mean.device())),
        };
        if rows.size()[0] == 0 {
            return Err(ModelError::Config(format!("no training image is classified as label {}", label.unwrap_or_default())));
        }
        Ok(self.posteriors.rows(&rows))
    }

    /// `n` codes `[n, latent]`, each from the posterior of a training image with `label`, drawn at
    /// `temperature`.
    fn draw(&self, n: i64, label: Option<i64>, temperature: f64) -> Result<Tensor, ModelError> {
        let pool = self.of_label(label)?;
        let picked = Tensor::randint(pool.mean.size()[0], [n], (Kind::Int64, pool.mean.device()));
        let chosen = pool.rows(&picked);
        Ok(chosen.at(&(chosen.mean.randn_like() * temperature)))
    }
}

/// Per label, a mixture of full-covariance Gaussians fitted by EM to the posterior means of its
/// training images, each component's covariance widened by their mean posterior variance so that
/// the mixture covers the aggregate posterior, not only its means: what a smooth prior fitted
/// after training would draw.
pub struct FittedMixtures {
    /// One per label (a single one for a model without labels).
    per_label: Vec<Mixture>,
}

struct Mixture {
    means: Tensor,
    /// Lower Cholesky factors `[m, D, D]` of the covariances.
    scales: Tensor,
    log_weights: Tensor,
}

impl FittedMixtures {
    pub fn fit(posteriors: &TrainingPosteriors, components: i64) -> Result<Self, ModelError> {
        let labels: Vec<Option<i64>> = match &posteriors.labels {
            Some(_) => (0..posteriors.classes).map(Some).collect(),
            None => vec![None],
        };
        let per_label = labels
            .into_iter()
            .map(|label| {
                let pool = posteriors.of_label(label)?;
                let points = pool.mean.to_kind(Kind::Double);
                let spread = pool.log_var.exp().to_kind(Kind::Double).mean_dim(0, false, Kind::Double).diag(0);
                let (means, covariances, log_weights) = fit_mixture(&points, components);
                Ok(Mixture {
                    means: means.to_kind(Kind::Float),
                    scales: (covariances + spread).linalg_cholesky(false).to_kind(Kind::Float),
                    log_weights: log_weights.to_kind(Kind::Float),
                })
            })
            .collect::<Result<_, ModelError>>()?;
        Ok(Self { per_label })
    }

    /// `n` codes from the mixture of `label`, the components' deviations scaled by `temperature`.
    fn draw(&self, n: i64, label: Option<i64>, temperature: f64) -> Tensor {
        let mixture = &self.per_label[label.unwrap_or(0) as usize];
        let component = mixture.log_weights.exp().multinomial(n, true);
        let noise = Tensor::randn([n, mixture.means.size()[1], 1], (Kind::Float, mixture.means.device())) * temperature;
        mixture.means.index_select(0, &component) + mixture.scales.index_select(0, &component).matmul(&noise).squeeze_dim(-1)
    }
}

/// EM for a mixture of at most `components` full-covariance Gaussians over rows `[N, D]`
/// (float64), started from distinct rows picked at random with the rows' own variances: the
/// means `[m, D]`, covariances `[m, D, D]` and log-weights `[m]`.
fn fit_mixture(points: &Tensor, components: i64) -> (Tensor, Tensor, Tensor) {
    let (n, d) = (points.size()[0], points.size()[1]);
    let m = components.clamp(1, n);
    let options = (Kind::Double, points.device());
    let ridge = Tensor::eye(d, options) * MIXTURE_RIDGE;
    let mut means = points.index_select(0, &Tensor::randperm(n, (Kind::Int64, points.device())).narrow(0, 0, m));
    let start = points.var_dim([0].as_slice(), n > 1, false).diag(0) + &ridge;
    let mut covariances = start.unsqueeze(0).repeat([m, 1, 1]);
    let mut log_weights = Tensor::full([m], -(m as f64).ln(), options);
    for _ in 0..MIXTURE_ITERATIONS {
        // E step: each row's responsibilities [m, N] from the log densities (constants cancel).
        let scales = covariances.linalg_cholesky(false);
        let offsets = points.unsqueeze(0) - means.unsqueeze(1);
        let whitened = scales.linalg_solve_triangular(&offsets.transpose(1, 2), false, true, false);
        let distances = whitened.square().sum_dim_intlist([1].as_slice(), false, Kind::Double);
        let log_determinants = scales.diagonal(0, 1, 2).log().sum_dim_intlist([1].as_slice(), false, Kind::Double) * 2.0;
        let log_joint = (distances + log_determinants.unsqueeze(1)) * -0.5 + log_weights.unsqueeze(1);
        let responsibilities = (&log_joint - log_joint.logsumexp([0].as_slice(), true)).exp();
        // M step.
        let counts = responsibilities.sum_dim_intlist([1].as_slice(), false, Kind::Double) + 1e-12;
        means = responsibilities.matmul(points) / counts.unsqueeze(1);
        let offsets = points.unsqueeze(0) - means.unsqueeze(1);
        covariances = (offsets.transpose(1, 2) * responsibilities.unsqueeze(1)).matmul(&offsets) / counts.view([m, 1, 1]) + &ridge;
        log_weights = (counts / n as f64).log();
    }
    (means, covariances, log_weights)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tch::Device;

    use super::*;

    #[test]
    fn em_finds_two_separated_clusters_their_spread_and_their_shares() {
        tch::manual_seed(3);
        let options = (Kind::Double, Device::Cpu);
        let left = Tensor::randn([300, 2], options) * 0.5 + Tensor::from_slice(&[-5.0, 0.0]);
        let right = Tensor::randn([100, 2], options) * 0.5 + Tensor::from_slice(&[5.0, 1.0]);
        let (means, covariances, log_weights) = fit_mixture(&Tensor::cat(&[left, right], 0), 2);
        let order = means.select(1, 0).argsort(0, false);
        let (means, covariances, weights) =
            (means.index_select(0, &order), covariances.index_select(0, &order), log_weights.index_select(0, &order).exp());
        let expected = Tensor::from_slice(&[-5.0, 0.0, 5.0, 1.0]).view([2, 2]);
        assert!(means.allclose(&expected, 0.0, 0.15, false), "{means}");
        assert!(weights.allclose(&Tensor::from_slice(&[0.75, 0.25]), 0.0, 1e-6, false), "{weights}");
        let variances = covariances.diagonal(0, 1, 2);
        assert!(variances.allclose(&variances.full_like(0.25), 0.0, 0.08, false), "{covariances}");
    }

    /// The first shipped semi-supervised model (an MLP, quick) and the posteriors of 1,000 MNIST test
    /// images standing in for its training images.
    fn shipped_posteriors() -> (LoadedModel, Dataset, TrainingPosteriors) {
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let (_, shipped) = models::artifact::load(&models.join("mnist-ssvae/v1"), Device::Cpu).unwrap();
        let source = crate::data::resolve("mnist", &crate::data::shared_data_dir()).unwrap();
        let options = crate::data::DataOptions { validation_fraction: 0.0, max_train: Some(10), ..Default::default() };
        let images = crate::data::load(&source, &options).unwrap().test.first(1000);
        let posteriors = TrainingPosteriors::of(&shipped, &images);
        (shipped, images, posteriors)
    }

    #[test]
    fn a_draw_from_training_posteriors_at_temperature_zero_is_a_decoded_posterior_mean_of_its_label() {
        let (shipped, images, posteriors) = shipped_posteriors();
        let labels = posteriors.labels.as_ref().expect("a model with labels");
        let believed = tch::no_grad(|| shipped.model.classify(&images.images, false).unwrap().argmax(1, false));
        assert!(labels.equal(&believed), "each image's code is drawn under the label the model's classifier gives it");

        tch::manual_seed(0);
        let codes = Codes::TrainingPosteriors(posteriors);
        let drawn = tch::no_grad(|| codes.draw(&shipped, 20, Some(3), 0.0)).unwrap().flatten(1, -1);
        let Codes::TrainingPosteriors(posteriors) = &codes else { unreachable!() };
        let threes = posteriors.of_label(Some(3)).unwrap().mean;
        let candidates = tch::no_grad(|| models::decode_images(&*shipped.model, &threes, Some(3))).flatten(1, -1);
        let distances = (drawn.unsqueeze(1) - candidates.unsqueeze(0)).square().sum_dim_intlist([-1].as_slice(), false, Kind::Float);
        let (nearest, _) = distances.min_dim(1, false);
        assert!(nearest.max().double_value(&[]) < 1e-4, "{nearest}");
    }

    #[test]
    fn a_fitted_mixture_keeps_each_labels_mean_and_draws_around_it() {
        let (shipped, _, posteriors) = shipped_posteriors();
        tch::manual_seed(0);
        let mixtures = FittedMixtures::fit(&posteriors, 4).unwrap();
        assert_eq!(mixtures.per_label.len(), 10);
        for (label, mixture) in mixtures.per_label.iter().enumerate() {
            let weights = mixture.log_weights.exp();
            assert!((weights.sum(Kind::Double).double_value(&[]) - 1.0).abs() < 1e-5, "label {label}: {weights}");
            // EM keeps the weighted mean of its components at the mean of the points it fits.
            let mixed = weights.unsqueeze(0).matmul(&mixture.means).squeeze_dim(0);
            let fitted = posteriors.of_label(Some(label as i64)).unwrap().mean.mean_dim(0, false, Kind::Float);
            assert!(mixed.allclose(&fitted, 0.0, 1e-3, false), "label {label}: {mixed} against {fitted}");
        }
        let codes = Codes::FittedMixture(mixtures);
        assert_eq!(codes.source(), CodeSource::FittedMixture);
        let drawn = tch::no_grad(|| codes.draw(&shipped, 50, Some(7), 1.0)).unwrap();
        assert_eq!(drawn.size(), [50, 1, 28, 28]);
        let Codes::FittedMixture(mixtures) = &codes else { unreachable!() };
        // At temperature 0 every code is one of the label's component means.
        let z = mixtures.draw(30, Some(7), 0.0);
        let distances =
            (z.unsqueeze(1) - mixtures.per_label[7].means.unsqueeze(0)).square().sum_dim_intlist([-1].as_slice(), false, Kind::Float);
        assert!(distances.min_dim(1, false).0.max().double_value(&[]) < 1e-8);
    }
}
