//! The training engine on real MNIST data: loss goes down, BN inference is batch-independent,
//! checkpoints round-trip exactly and a resumed run equals an uninterrupted one.

use std::sync::Mutex;

use tch::{Device, Kind, Tensor};
use vae_serve::data::{self, DataOptions, Splits};
use vae_serve::models::{artifact, Architecture, ModelConfig};
use vae_serve::training::optim::{OptimizerConfig, OptimizerKind};
use vae_serve::training::{eval, train, CancelToken, Progress, Schedule, TrainError, TrainOptions};

/// torch's random generator is process-wide: tests that check exact values run one at a time.
static TORCH_RNG: Mutex<()> = Mutex::new(());

fn mnist(max_train: usize) -> Splits {
    let source = data::resolve("mnist", &data::shared_data_dir()).unwrap();
    data::load(&source, &DataOptions { validation_fraction: 0.05, max_train: Some(max_train), ..Default::default() }).unwrap()
}

fn small(architecture: Architecture, epochs: usize) -> TrainOptions {
    TrainOptions {
        // The recipe's classifier weight: with α = 1, 3 epochs teach the conv classifier too little.
        model: ModelConfig {
            architecture,
            hidden: vec![128, 64],
            latent_dim: 16,
            conv_channels: vec![16, 32],
            classifier_weight: 10.0,
            // The recipe's pairs per image, so the conv model trains over its two likeliest labels.
            marginal_labels: TrainOptions::recommended(architecture).model.marginal_labels,
            ..Default::default()
        },
        epochs,
        batch_size: 64,
        optimizer: OptimizerConfig { learning_rate: 3e-3, ..Default::default() },
        labeled: 100,
        labeled_batch_size: 32,
        // A constant rate: these runs are too short for the recipe's cosine decay.
        schedule: Schedule::Constant,
        ..Default::default()
    }
}

fn quiet(_: Progress) {}

#[test]
fn short_runs_lower_the_loss_for_every_architecture() {
    let _lock = TORCH_RNG.lock().unwrap_or_else(|p| p.into_inner());
    let splits = mnist(2000);
    for architecture in [Architecture::Mlp, Architecture::Conv, Architecture::SemiSupervised, Architecture::SemiSupervisedConv] {
        let trained = train(&small(architecture, 3), &splits, Device::Cpu, None, &CancelToken::default(), &mut quiet).unwrap();
        let (first, last) = (&trained.history[0], &trained.history[2]);
        assert!(last.loss < first.loss - 5.0, "{architecture:?}: loss {} -> {}", first.loss, last.loss);
        let (v0, v2) = (first.validation_negative_elbo.unwrap(), last.validation_negative_elbo.unwrap());
        assert!(v2 < v0, "{architecture:?}: validation -ELBO {v0} -> {v2}");
        assert!(v2 < 250.0, "{architecture:?}: validation -ELBO {v2} nats is not learning");
        if architecture.is_semi_supervised() {
            let accuracy = last.validation_accuracy.unwrap();
            assert!(accuracy > 0.5, "{architecture:?}: accuracy {accuracy} after 3 short epochs with 100 labels");
        }
    }
}

#[test]
fn inference_does_not_depend_on_batch_composition() {
    let _lock = TORCH_RNG.lock().unwrap_or_else(|p| p.into_inner());
    let splits = mnist(1000);
    for architecture in [Architecture::Mlp, Architecture::Conv, Architecture::SemiSupervised, Architecture::SemiSupervisedConv] {
        let trained = train(&small(architecture, 1), &splits, Device::Cpu, None, &CancelToken::default(), &mut quiet).unwrap();
        let model = &*trained.model.model;
        let batch = splits.test.images.narrow(0, 0, 64);
        tch::no_grad(|| {
            let together = model.encode(&batch, false);
            let alone = model.encode(&batch.narrow(0, 5, 1), false);
            assert!(alone.mean.allclose(&together.mean.narrow(0, 5, 1), 1e-5, 1e-6, false), "{architecture:?}");
            assert!(alone.log_var.allclose(&together.log_var.narrow(0, 5, 1), 1e-5, 1e-6, false), "{architecture:?}");
            if let (Some(a), Some(b)) = (model.classify(&batch.narrow(0, 5, 1), false), model.classify(&batch, false)) {
                assert!(a.allclose(&b.narrow(0, 5, 1), 1e-5, 1e-6, false));
            }
        });
    }
}

#[test]
fn a_published_model_loads_with_bit_identical_outputs_and_rejects_mismatched_weights() {
    let _lock = TORCH_RNG.lock().unwrap_or_else(|p| p.into_inner());
    let splits = mnist(1000);
    let options = small(Architecture::SemiSupervised, 1);
    let trained = train(&options, &splits, Device::Cpu, None, &CancelToken::default(), &mut quiet).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let manifest = artifact::Manifest {
        format_version: artifact::FORMAT_VERSION,
        name: "roundtrip".into(),
        config: options.model.clone(),
        dataset: "mnist".into(),
        training: serde_json::to_value(&options).unwrap(),
        metrics: Default::default(),
        torch_version: "2.11.0".into(),
        created_at: chrono::Utc::now(),
    };
    let (version, path) = artifact::publish(dir.path(), &trained.model, &manifest).unwrap();
    assert_eq!(version, 1);
    assert_eq!(artifact::publish(dir.path(), &trained.model, &manifest).unwrap().0, 2);
    // What a crash in the middle of publishing leaves: a staging directory, never a version.
    let half = dir.path().join("roundtrip/.staging-v3-1");
    std::fs::create_dir_all(&half).unwrap();
    std::fs::write(half.join(artifact::MANIFEST_FILE), b"{\"trunc").unwrap();
    assert_eq!(artifact::versions(dir.path(), "roundtrip").len(), 2);
    assert_eq!(artifact::list(dir.path())[0].1.len(), 2);
    assert_eq!(artifact::publish(dir.path(), &trained.model, &manifest).unwrap().0, 3);
    let (loaded_manifest, loaded) = artifact::load(&path, Device::Cpu).unwrap();
    assert_eq!(loaded_manifest, manifest);
    let images = splits.test.images.narrow(0, 0, 16);
    tch::no_grad(|| {
        let (a, b) = (trained.model.model.encode(&images, false), loaded.model.encode(&images, false));
        assert!(a.mean.equal(&b.mean) && a.log_var.equal(&b.log_var));
        let y = Tensor::arange(16, (Kind::Int64, Device::Cpu)).remainder(10).one_hot(10).to_kind(Kind::Float);
        assert!(trained.model.model.decode(&a.mean, Some(&y), false).equal(&loaded.model.decode(&b.mean, Some(&y), false)));
        assert!(trained.model.model.classify(&images, false).unwrap().equal(&loaded.model.classify(&images, false).unwrap()));
    });

    // A manifest that promises other layers than the weights hold is refused with the reason.
    let mut wrong = manifest.clone();
    wrong.config.latent_dim = 17;
    std::fs::write(path.join(artifact::MANIFEST_FILE), serde_json::to_vec(&wrong).unwrap()).unwrap();
    let err = artifact::load(&path, Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("do not match the manifest") && err.contains("encoder.mean.weight"), "{err}");
}

#[test]
fn resuming_from_a_checkpoint_equals_an_uninterrupted_run() {
    let _lock = TORCH_RNG.lock().unwrap_or_else(|p| p.into_inner());
    let splits = mnist(1000);
    let options = TrainOptions {
        optimizer: OptimizerConfig { kind: OptimizerKind::Rmsprop, learning_rate: 1e-3, ..Default::default() },
        ..small(Architecture::SemiSupervised, 3)
    };

    let straight = train(&options, &splits, Device::Cpu, None, &CancelToken::default(), &mut quiet).unwrap();

    let checkpoints = tempfile::tempdir().unwrap();
    let checkpoint = checkpoints.path().join("ckpt");
    let cancel = CancelToken::default();
    let interrupted = train(&options, &splits, Device::Cpu, Some(&checkpoint), &cancel, &mut |p| {
        if matches!(p, Progress::Epoch(ref m) if m.epoch == 2) {
            cancel.cancel();
        }
    });
    assert!(matches!(interrupted, Err(TrainError::Cancelled { completed_epochs: 2 })));
    let resumed = train(&options, &splits, Device::Cpu, Some(&checkpoint), &CancelToken::default(), &mut quiet).unwrap();
    assert_eq!(resumed.history.len(), 3);
    assert_eq!(
        resumed.history[..2].iter().map(|m| m.loss).collect::<Vec<_>>(),
        straight.history[..2].iter().map(|m| m.loss).collect::<Vec<_>>()
    );
    assert_eq!(resumed.history[2].loss, straight.history[2].loss);
    let (a, b) = (straight.model.vars.variables(), resumed.model.vars.variables());
    for (name, tensor) in &a {
        assert!(tensor.equal(&b[name]), "{name} differs after resume");
    }

    // A checkpoint from other options is refused rather than silently mixed in.
    let other = TrainOptions { seed: 1, ..options };
    let err = train(&other, &splits, Device::Cpu, Some(&checkpoint), &CancelToken::default(), &mut quiet).err().unwrap().to_string();
    assert!(err.contains("different options"), "{err}");
}

#[test]
fn divergence_stops_with_a_clear_error() {
    let _lock = TORCH_RNG.lock().unwrap_or_else(|p| p.into_inner());
    let splits = mnist(1000);
    let mut options = small(Architecture::Mlp, 1);
    options.optimizer = OptimizerConfig { kind: OptimizerKind::Sgd, learning_rate: 10.0, ..Default::default() };
    let err = train(&options, &splits, Device::Cpu, None, &CancelToken::default(), &mut quiet).err().expect("lr 10 with SGD diverges");
    assert!(err.to_string().contains("diverged"), "{err}");
}

#[test]
fn evaluation_reports_iwae_at_least_as_tight_as_the_elbo() {
    let _lock = TORCH_RNG.lock().unwrap_or_else(|p| p.into_inner());
    let splits = mnist(2000);
    let trained = train(&small(Architecture::Mlp, 2), &splits, Device::Cpu, None, &CancelToken::default(), &mut quiet).unwrap();
    let test = splits.test.first(500);
    let evaluation = eval::evaluate(&*trained.model.model, &test, 250, 20);
    let iwae = evaluation.iwae_negative_log_likelihood.unwrap();
    assert!(iwae < evaluation.negative_elbo, "IWAE {iwae} vs -ELBO {}", evaluation.negative_elbo);
    assert!(evaluation.negative_elbo - iwae < 30.0);
    assert_eq!(evaluation.accuracy, None);
}
