//! `vae-serve train | eval | sample`: the engine from the command line, with progress bars.

use std::path::{Path, PathBuf};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::{
    codes::{CodeSource, Codes},
    eval, judge,
    optim::OptimizerKind,
    train_and_publish, CancelToken, DataRequest, Places, Progress, Schedule, TrainOptions, TrainRequest,
};
use crate::config::GlobalArgs;
use crate::data::{self, DataOptions};
use crate::models::{self, artifact, Architecture, ConsistencyView, Likelihood, Prior, SmoothedImages, UnlabeledObjective};
use crate::render;
use crate::runtime::TorchRuntime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LikelihoodArg {
    Bernoulli,
    Gaussian,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScheduleArg {
    Constant,
    Step,
    Cosine,
}

#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Model name; the result is published as the next version under --models-dir.
    #[arg(long)]
    pub name: String,
    /// Dataset: a path, or a name under $VAE_DATA_DIR or /usr/share/datasets.
    #[arg(long)]
    pub dataset: String,
    /// Directory holding model directories.
    #[arg(long, env = "VAE_MODELS_DIR", default_value = "./models")]
    pub models_dir: PathBuf,
    /// A file with the training options, TOML (`.toml`) or JSON (the `options` object POST
    /// /train takes); the model and optimisation flags below are then ignored.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Keep a checkpoint here after every epoch and resume from it if present.
    #[arg(long)]
    pub checkpoint_dir: Option<PathBuf>,
    // The model and optimisation flags change the architecture's recipe (`TrainOptions::recommended`,
    // served by `GET /v1/train/defaults`); left out, the recipe's value stands, as it does for
    // `POST /train`, config files and the console.
    /// Default: mlp.
    #[arg(long, value_enum)]
    pub architecture: Option<Architecture>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerKind>,
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// Nesterov momentum μ (SGD and RMSprop).
    #[arg(long)]
    pub momentum: Option<f64>,
    #[arg(long)]
    pub grad_clip: Option<f64>,
    /// Polyak-average the weights with this decay (e.g. 0.999); the model keeps the average.
    #[arg(long)]
    pub ema_decay: Option<f64>,
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleArg>,
    /// Step schedule: epochs between decays (gamma 0.5).
    #[arg(long, default_value_t = 10)]
    pub step_epochs: usize,
    #[arg(long)]
    pub kl_warmup_epochs: Option<f64>,
    /// β, the KL term's weight once warmed up (1: the ELBO).
    #[arg(long)]
    pub kl_beta: Option<f64>,
    #[arg(long)]
    pub latent_dim: Option<i64>,
    #[arg(long, value_delimiter = ',')]
    pub hidden: Option<Vec<i64>>,
    #[arg(long, value_delimiter = ',')]
    pub conv_channels: Option<Vec<i64>>,
    #[arg(long, value_enum)]
    pub likelihood: Option<LikelihoodArg>,
    /// Gaussian likelihood: the fixed (or initial, with --learn-variance) log-variance.
    #[arg(long, default_value_t = -4.0, allow_hyphen_values = true)]
    pub gaussian_log_var: f64,
    #[arg(long)]
    pub learn_variance: bool,
    /// Semi-supervised: labelled examples in total (balanced over classes).
    #[arg(long)]
    pub labeled: Option<usize>,
    #[arg(long)]
    pub labeled_batch_size: Option<usize>,
    #[arg(long, value_enum)]
    pub unlabeled_objective: Option<UnlabeledObjective>,
    /// Semi-supervised: in training, marginalise an unlabelled image over its this many most
    /// probable labels (0: every label).
    #[arg(long)]
    pub marginal_labels: Option<i64>,
    /// Semi-supervised: weight α of the labelled cross-entropy.
    #[arg(long)]
    pub classifier_weight: Option<f64>,
    /// Semi-supervised: weight γ of the label-consistency term (0: off).
    #[arg(long)]
    pub label_consistency_weight: Option<f64>,
    /// Semi-supervised: prior draws per step for label consistency (0: one per image of the batch).
    #[arg(long)]
    pub label_consistency_draws: Option<i64>,
    /// Semi-supervised: what label consistency's classifier reads, the decoder's mean image or a
    /// relaxed draw from its likelihood.
    #[arg(long, value_enum)]
    pub label_consistency_view: Option<ConsistencyView>,
    /// Semi-supervised: weight of virtual adversarial training of the classifier (0: off).
    #[arg(long)]
    pub virtual_adversarial_weight: Option<f64>,
    /// Semi-supervised: L2 norm of the virtual adversarial perturbation, in intensities 0..1.
    #[arg(long)]
    pub virtual_adversarial_radius: Option<f64>,
    /// Semi-supervised: the images virtual adversarial training smooths (all, or unlabelled only).
    #[arg(long, value_enum)]
    pub virtual_adversarial_images: Option<SmoothedImages>,
    /// Semi-supervised: the encoder reads the label too, q(z|x, y) (true or false).
    #[arg(long)]
    pub label_in_encoder: Option<bool>,
    /// Semi-supervised conv: the label shifts every decoder stage too (true or false).
    #[arg(long)]
    pub label_in_decoder_stages: Option<bool>,
    /// Semi-supervised: the prior over codes, N(0, I) for every label or learned per label.
    #[arg(long, value_enum)]
    pub prior: Option<Prior>,
    /// Semi-supervised: weight λ of the discrepancy between each label's training codes and its
    /// prior draws (0: off).
    #[arg(long)]
    pub code_match_weight: Option<f64>,
    /// Semi-supervised: random whole-pixel shifts, up to this many pixels per axis, of what the
    /// classifier sees while training (0: off).
    #[arg(long)]
    pub augment_shift: Option<i64>,
    /// Skip the fixed-point recomputation of BN statistics after training.
    #[arg(long)]
    pub no_bn_recompute: bool,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long, default_value_t = 0.1)]
    pub validation_fraction: f64,
    /// Use at most this many training images.
    #[arg(long)]
    pub max_train: Option<usize>,
    /// Image folders: side length images are resized to.
    #[arg(long, default_value_t = 32)]
    pub image_size: i64,
    /// Image folders: 1 (grayscale) or 3 (RGB).
    #[arg(long, default_value_t = 3)]
    pub channels: i64,
    /// IWAE samples for the final test evaluation (0: skip).
    #[arg(long, default_value_t = 0)]
    pub iwae_samples: i64,
}

impl TrainArgs {
    /// The options the flags give, as the `options` object of `POST /train` would: only what was set.
    fn given(&self) -> serde_json::Value {
        use serde_json::{json, Map, Value};
        fn json_of<T: serde::Serialize>(value: &T) -> Value {
            serde_json::to_value(value).expect("flags serialise")
        }
        let mut options = Map::new();
        let mut model = Map::new();
        let mut optimizer = Map::new();
        let set = |group: &mut Map<String, Value>, key: &str, value: Option<Value>| {
            if let Some(value) = value {
                group.insert(key.to_string(), value);
            }
        };
        set(&mut model, "architecture", self.architecture.as_ref().map(json_of));
        set(&mut model, "latent_dim", self.latent_dim.as_ref().map(json_of));
        set(&mut model, "hidden", self.hidden.as_ref().map(json_of));
        set(&mut model, "conv_channels", self.conv_channels.as_ref().map(json_of));
        set(&mut model, "unlabeled_objective", self.unlabeled_objective.as_ref().map(json_of));
        set(&mut model, "marginal_labels", self.marginal_labels.as_ref().map(json_of));
        set(&mut model, "classifier_weight", self.classifier_weight.as_ref().map(json_of));
        set(&mut model, "label_consistency_weight", self.label_consistency_weight.as_ref().map(json_of));
        set(&mut model, "label_consistency_draws", self.label_consistency_draws.as_ref().map(json_of));
        set(&mut model, "label_consistency_view", self.label_consistency_view.as_ref().map(json_of));
        set(&mut model, "virtual_adversarial_weight", self.virtual_adversarial_weight.as_ref().map(json_of));
        set(&mut model, "virtual_adversarial_radius", self.virtual_adversarial_radius.as_ref().map(json_of));
        set(&mut model, "virtual_adversarial_images", self.virtual_adversarial_images.as_ref().map(json_of));
        set(&mut model, "label_in_encoder", self.label_in_encoder.as_ref().map(json_of));
        set(&mut model, "label_in_decoder_stages", self.label_in_decoder_stages.as_ref().map(json_of));
        set(&mut model, "prior", self.prior.as_ref().map(json_of));
        set(&mut model, "code_match_weight", self.code_match_weight.as_ref().map(json_of));
        let likelihood = self.likelihood.map(|kind| match kind {
            LikelihoodArg::Bernoulli => Likelihood::Bernoulli,
            LikelihoodArg::Gaussian => Likelihood::Gaussian { log_var: self.gaussian_log_var, learned: self.learn_variance },
        });
        set(&mut model, "likelihood", likelihood.as_ref().map(json_of));
        set(&mut optimizer, "kind", self.optimizer.as_ref().map(json_of));
        set(&mut optimizer, "learning_rate", self.learning_rate.as_ref().map(json_of));
        set(&mut optimizer, "momentum", self.momentum.as_ref().map(json_of));
        set(&mut optimizer, "grad_clip", self.grad_clip.as_ref().map(json_of));
        set(&mut optimizer, "ema_decay", self.ema_decay.as_ref().map(json_of));
        let schedule = self.schedule.map(|kind| match kind {
            ScheduleArg::Constant => Schedule::Constant,
            ScheduleArg::Step => Schedule::Step { every_epochs: self.step_epochs, gamma: 0.5 },
            ScheduleArg::Cosine => Schedule::Cosine { min_factor: 0.01 },
        });
        set(&mut options, "schedule", schedule.as_ref().map(json_of));
        set(&mut options, "epochs", self.epochs.as_ref().map(json_of));
        set(&mut options, "batch_size", self.batch_size.as_ref().map(json_of));
        set(&mut options, "kl_warmup_epochs", self.kl_warmup_epochs.as_ref().map(json_of));
        set(&mut options, "kl_beta", self.kl_beta.as_ref().map(json_of));
        set(&mut options, "labeled", self.labeled.as_ref().map(json_of));
        set(&mut options, "labeled_batch_size", self.labeled_batch_size.as_ref().map(json_of));
        set(&mut options, "augment_shift", self.augment_shift.as_ref().map(json_of));
        set(&mut options, "bn_recompute", self.no_bn_recompute.then_some(json!(false)));
        set(&mut options, "seed", self.seed.as_ref().map(json_of));
        for (key, group) in [("model", model), ("optimizer", optimizer)] {
            if !group.is_empty() {
                options.insert(key.to_string(), Value::Object(group));
            }
        }
        Value::Object(options)
    }

    fn options(&self) -> anyhow::Result<TrainOptions> {
        if let Some(path) = &self.config {
            return read_options(path);
        }
        let options = TrainOptions::resolve(self.given()).map_err(anyhow::Error::msg)?;
        options.validate()?;
        Ok(options)
    }
}

/// Training options from a TOML file (by its extension) or a JSON one; unknown keys are errors.
fn read_options(path: &Path) -> anyhow::Result<TrainOptions> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let format = if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("toml")) { ConfigFormat::Toml } else { ConfigFormat::Json };
    parse_options(&text, format).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigFormat {
    Toml,
    Json,
}

/// Training options from the text of a config file, validated.
pub fn parse_options(text: &str, format: ConfigFormat) -> anyhow::Result<TrainOptions> {
    let options: TrainOptions = match format {
        ConfigFormat::Toml => toml::from_str(text)?,
        ConfigFormat::Json => serde_json::from_str(text)?,
    };
    options.validate()?;
    Ok(options)
}

pub fn run_train(global: &GlobalArgs, runtime: &TorchRuntime, args: &TrainArgs) -> anyhow::Result<()> {
    let request = TrainRequest {
        name: args.name.clone(),
        dataset: args.dataset.clone(),
        options: args.options()?,
        data: DataRequest {
            validation_fraction: args.validation_fraction,
            max_train: args.max_train,
            image_size: args.image_size,
            channels: args.channels,
        },
    };
    let bar = ProgressBar::new(request.options.epochs as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} epoch {pos}/{len} [{bar:30}] {elapsed_precise} {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    let places = Places { data_dir: &global.data_dir, models_dir: &args.models_dir, checkpoint_dir: args.checkpoint_dir.as_deref() };
    let published = train_and_publish(&request, &places, runtime.device, args.iwae_samples, &CancelToken::default(), &mut |p| match p {
        Progress::Resumed { history } => bar.set_position(history.len() as u64),
        Progress::Step { step, steps, .. } => bar.set_message(format!("step {step}/{steps}")),
        Progress::Epoch(m) => {
            bar.set_position(m.epoch as u64);
            bar.suspend(|| {
                tracing::info!(
                    epoch = m.epoch,
                    loss = format_args!("{:.3}", m.loss),
                    reconstruction = format_args!("{:.3}", m.reconstruction),
                    kl = format_args!("{:.3}", m.kl),
                    validation_negative_elbo = m.validation_negative_elbo.map(|v| format!("{v:.2}")),
                    validation_accuracy = m.validation_accuracy.map(|v| format!("{:.4}", v)),
                    seconds = format_args!("{:.2}", m.seconds),
                    images_per_second = format_args!("{:.0}", m.images_per_second),
                    "epoch finished"
                )
            });
        }
    })?;
    bar.finish_and_clear();
    println!("{}", serde_json::to_string_pretty(&published)?);
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// A model directory (`models/<name>/v<N>`).
    #[arg(long)]
    pub model: PathBuf,
    /// Dataset whose test split is evaluated (default: the one the model was trained on).
    #[arg(long)]
    pub dataset: Option<String>,
    /// Where the dataset's judge is kept (`.judges/` inside it).
    #[arg(long, env = "VAE_MODELS_DIR", default_value = "./models")]
    pub models_dir: PathBuf,
    /// Importance samples for the IWAE log-likelihood bound (0: skip).
    #[arg(long, default_value_t = 100)]
    pub iwae_samples: i64,
    /// Evaluate at most this many test images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Samples the judge scores (spread evenly over the labels of a model with labels).
    #[arg(long, default_value_t = super::SCORED_SAMPLES)]
    pub samples: i64,
    /// Temperature of those samples: the prior's standard deviation times T (z ~ N(0, T²·I) under N(0, I)).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Where those samples' codes come from: the prior (what `GET /sample` draws), the posteriors
    /// of the training images (the decoder's ceiling), or a mixture of Gaussians per label fitted
    /// to them (a smooth prior of their shape).
    #[arg(long, value_enum, default_value_t = CodeSource::Prior)]
    pub codes: CodeSource,
    /// Components per label of `--codes fitted-mixture`.
    #[arg(long, default_value_t = 10)]
    pub mixture_components: i64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run_eval(global: &GlobalArgs, runtime: &TorchRuntime, args: &EvalArgs) -> anyhow::Result<()> {
    let (manifest, loaded) = artifact::load(&args.model, runtime.device)?;
    let dataset = args.dataset.clone().unwrap_or_else(|| manifest.dataset.clone());
    let source = data::resolve_or_download(&dataset, &global.data_dir)?;
    let options = DataOptions { image_shape: Some(manifest.config.image.clone()), validation_fraction: 0.0, ..Default::default() };
    let splits = data::load(&source, &options)?;
    let test = splits.test.first(args.limit.unwrap_or(usize::MAX)).to_device(runtime.device);
    tch::manual_seed(args.seed as i64);
    let evaluation = eval::evaluate(&*loaded.model, &test, 500, args.iwae_samples);
    let key = judge::dataset_key(&source);
    // The judge's view of the real test images sits beside its view of the samples, so that a
    // label's misses can be told apart from what real images of that class look like.
    let (samples, test_images) = match judge::Judge::load(&args.models_dir, &key, runtime.device)? {
        Some(judge) => {
            let codes = Codes::of(args.codes, &loaded, &splits.train, args.mixture_components)?;
            let scores = judge::score_samples(&judge, &loaded, args.samples, args.temperature, args.seed, &codes)?;
            (Some(scores), Some(judge::profile_test_images(&judge, &test, evaluation.predictions.as_deref())))
        }
        None => {
            let (weights, _) = judge::paths(&args.models_dir, &key);
            eprintln!("no judge at {}: samples not scored (make one with `vae-serve judge --dataset {dataset}`)", weights.display());
            (None, None)
        }
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "model": manifest.name, "dataset": dataset, "evaluation": evaluation, "samples": samples, "test_images": test_images
        }))?
    );
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct JudgeArgs {
    /// Dataset: a path, or a name under $VAE_DATA_DIR or /usr/share/datasets. Its judge is filed
    /// under the name of the directory it is found in.
    #[arg(long)]
    pub dataset: String,
    /// The judge is written to `.judges/` inside this directory.
    #[arg(long, env = "VAE_MODELS_DIR", default_value = "./models")]
    pub models_dir: PathBuf,
    #[arg(long, default_value_t = judge::DEFAULT_EPOCHS)]
    pub epochs: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image folders: side length images are resized to.
    #[arg(long, default_value_t = 32)]
    pub image_size: i64,
    /// Image folders: 1 (grayscale) or 3 (RGB).
    #[arg(long, default_value_t = 3)]
    pub channels: i64,
}

pub fn run_judge(global: &GlobalArgs, runtime: &TorchRuntime, args: &JudgeArgs) -> anyhow::Result<()> {
    let source = data::resolve_or_download(&args.dataset, &global.data_dir)?;
    let image_shape = models::ImageShape { channels: args.channels, height: args.image_size, width: args.image_size };
    let options = DataOptions { image_shape: Some(image_shape), validation_fraction: 0.0, seed: args.seed, ..Default::default() };
    let splits = data::load(&source, &options)?;
    let judge = judge::Judge::train(&judge::dataset_key(&source), &splits, args.epochs, args.seed, runtime.device)?;
    judge.save(&args.models_dir)?;
    println!("{}", serde_json::to_string_pretty(&judge.card)?);
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct SampleArgs {
    /// A model directory (`models/<name>/v<N>`).
    #[arg(long)]
    pub model: PathBuf,
    /// Class to condition on (index or name), for semi-supervised models.
    #[arg(long)]
    pub label: Option<String>,
    #[arg(short, long, default_value_t = 64)]
    pub n: i64,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(short, long, default_value = "samples.png")]
    pub output: PathBuf,
}

pub fn run_sample(runtime: &TorchRuntime, args: &SampleArgs) -> anyhow::Result<()> {
    let (manifest, loaded) = artifact::load(&args.model, runtime.device)?;
    let label = args.label.as_deref().map(|l| models::resolve_label(&manifest.config, l)).transpose()?;
    tch::manual_seed(args.seed as i64);
    let (_, images) = tch::no_grad(|| models::sample(&loaded, args.n, label, args.temperature))?;
    let batch = models::to_image_batch(&manifest.config.image, &images);
    write_png(&args.output, &batch.grid(render::square_columns(batch.count())))?;
    println!("wrote {} samples to {}", args.n, args.output.display());
    Ok(())
}

fn write_png(path: &Path, image: &image::DynamicImage) -> anyhow::Result<()> {
    std::fs::write(path, render::png_bytes(image)).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_json_configs_give_the_same_options() {
        let dir = tempfile::tempdir().unwrap();
        let toml_path = dir.path().join("train.toml");
        std::fs::write(
            &toml_path,
            r#"
epochs = 30
labeled = 1000
[model]
architecture = "semi-supervised"
hidden = [512, 256]
classifier_weight = 10.0
[optimizer]
kind = "rmsprop"
learning_rate = 0.001
[schedule]
kind = "cosine"
min_factor = 0.01
"#,
        )
        .unwrap();
        let json_path = dir.path().join("train.json");
        std::fs::write(
            &json_path,
            r#"{"epochs": 30, "labeled": 1000,
            "model": {"architecture": "semi-supervised", "hidden": [512, 256], "classifier_weight": 10.0},
            "optimizer": {"kind": "rmsprop", "learning_rate": 0.001},
            "schedule": {"kind": "cosine", "min_factor": 0.01}}"#,
        )
        .unwrap();
        let from_toml = read_options(&toml_path).unwrap();
        assert_eq!(from_toml, read_options(&json_path).unwrap());
        assert_eq!(
            (from_toml.epochs, from_toml.model.architecture, from_toml.optimizer.kind),
            (30, Architecture::SemiSupervised, OptimizerKind::Rmsprop)
        );

        std::fs::write(&toml_path, "epochs = 3\nlearning_rate = 0.1\n").unwrap();
        let error = read_options(&toml_path).unwrap_err().to_string();
        assert!(error.contains("train.toml") && error.contains("learning_rate"), "{error}");
        std::fs::write(&toml_path, "epochs = 0\n").unwrap();
        assert!(read_options(&toml_path).unwrap_err().to_string().contains("epochs"));
    }

    /// `vae-serve train` with `flags` (besides the required name and dataset).
    fn train_args(flags: &[&str]) -> TrainArgs {
        #[derive(clap::Parser)]
        struct Command {
            #[command(flatten)]
            train: TrainArgs,
        }
        let fixed = ["vae-serve", "--name", "n", "--dataset", "mnist"];
        <Command as clap::Parser>::parse_from(fixed.iter().chain(flags)).train
    }

    #[test]
    fn the_command_line_without_flags_trains_what_a_request_without_options_trains() {
        assert_eq!(train_args(&[]).options().unwrap(), serde_json::from_value::<TrainOptions>(serde_json::json!({})).unwrap());
        for (flag, name) in [("mlp", "mlp"), ("conv", "conv"), ("semi-supervised", "semi-supervised")] {
            let request: TrainOptions = serde_json::from_value(serde_json::json!({"model": {"architecture": name}})).unwrap();
            assert_eq!(train_args(&["--architecture", flag]).options().unwrap(), request, "{flag}");
        }
    }

    #[test]
    fn flags_change_only_what_they_name() {
        let options =
            train_args(&["--architecture", "conv", "--epochs", "3", "--learning-rate", "1e-3", "--schedule", "step"]).options().unwrap();
        let recipe = TrainOptions::recommended(Architecture::Conv);
        assert_eq!((options.epochs, options.optimizer.learning_rate), (3, 1e-3));
        assert_eq!(options.optimizer.kind, recipe.optimizer.kind, "the recipe's optimizer stays");
        assert_eq!(options.schedule, Schedule::Step { every_epochs: 10, gamma: 0.5 });
        assert_eq!(
            TrainOptions { epochs: recipe.epochs, optimizer: recipe.optimizer.clone(), schedule: recipe.schedule, ..options },
            recipe
        );
        let gaussian = train_args(&["--likelihood", "gaussian", "--gaussian-log-var", "-2", "--no-bn-recompute"]).options().unwrap();
        assert_eq!(gaussian.model.likelihood, Likelihood::Gaussian { log_var: -2.0, learned: false });
        assert!(!gaussian.bn_recompute);
    }
}
