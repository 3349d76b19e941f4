//! The inference side: each loaded model lives on a dedicated thread (tensors are not Sync and
//! grad mode is thread-local) and is driven through a channel, as in text-embeddings-inference.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tch::Device;
use tokio::sync::{mpsc, oneshot};

use crate::models::{self, artifact, LoadedModel, ModelError};
use crate::render;

#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error("the default model is not loaded: {0}")]
    NotLoaded(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("the model worker stopped")]
    WorkerGone,
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Whether the default model is ready, for /readyz.
#[derive(Debug, Clone, Default)]
pub struct DefaultModelStatus {
    pub loaded: bool,
    pub id: Option<String>,
    pub error: Option<String>,
}

/// Parameters of a sampling request.
#[derive(Debug, Clone)]
pub struct SampleRequest {
    pub n: i64,
    /// Class index or name.
    pub label: Option<String>,
    pub temperature: f64,
    pub seed: u64,
}

/// A PNG grid of samples.
#[derive(Debug, Clone)]
pub struct SampleGrid {
    pub png: Vec<u8>,
    pub model_id: String,
    pub label: Option<i64>,
}

enum Command {
    Sample(SampleRequest, oneshot::Sender<Result<SampleGrid, InferenceError>>),
}

/// Handle to the model threads; cheap to clone.
#[derive(Clone)]
pub struct ModelHost {
    status: Arc<RwLock<DefaultModelStatus>>,
    commands: mpsc::Sender<Command>,
}

/// Finds `name` (latest version) or `name@N` under `models_dir`.
pub fn resolve_model(models_dir: &Path, spec: &str) -> Result<(String, PathBuf), String> {
    let (name, wanted) = match spec.split_once('@') {
        Some((name, v)) => (name, Some(v.trim_start_matches('v').parse::<u32>().map_err(|_| format!("`{spec}`: version must be a number"))?)),
        None => (spec, None),
    };
    let versions = artifact::versions(models_dir, name);
    let found = match wanted {
        Some(v) => versions.into_iter().find(|(n, _)| *n == v),
        None => versions.into_iter().last(),
    };
    found
        .map(|(v, path)| (format!("{name}@{v}"), path))
        .ok_or_else(|| format!("model `{spec}` not found under {}", models_dir.display()))
}

impl ModelHost {
    /// Starts the default model's thread, which loads it in the background.
    pub fn start(models_dir: PathBuf, default_model: String, device: Device) -> Self {
        let status = Arc::new(RwLock::new(DefaultModelStatus::default()));
        let (commands, receiver) = mpsc::channel(256);
        let thread_status = status.clone();
        std::thread::Builder::new()
            .name("model-default".into())
            .spawn(move || run_model_thread(&models_dir, &default_model, device, &thread_status, receiver))
            .expect("spawning the model thread");
        Self { status, commands }
    }

    pub fn default_model_status(&self) -> DefaultModelStatus {
        self.status.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub async fn sample(&self, request: SampleRequest) -> Result<SampleGrid, InferenceError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Sample(request, reply)).await.map_err(|_| InferenceError::WorkerGone)?;
        answer.await.map_err(|_| InferenceError::WorkerGone)?
    }
}

fn run_model_thread(models_dir: &Path, spec: &str, device: Device, status: &RwLock<DefaultModelStatus>, mut receiver: mpsc::Receiver<Command>) {
    let _no_grad = tch::no_grad_guard();
    let loaded = resolve_model(models_dir, spec)
        .and_then(|(id, dir)| artifact::load(&dir, device).map(|(_, model)| (id, model)).map_err(|e| e.to_string()));
    let (id, model) = match loaded {
        Ok((id, model)) => {
            tracing::info!(model = %id, "default model loaded");
            *status.write().unwrap_or_else(|p| p.into_inner()) = DefaultModelStatus { loaded: true, id: Some(id.clone()), error: None };
            (id, model)
        }
        Err(error) => {
            tracing::warn!(%error, "default model not loaded");
            *status.write().unwrap_or_else(|p| p.into_inner()) = DefaultModelStatus { loaded: false, id: None, error: Some(error.clone()) };
            // Keep answering so requests get a clear error rather than a closed channel.
            while let Some(command) = receiver.blocking_recv() {
                match command {
                    Command::Sample(_, reply) => {
                        let _ = reply.send(Err(InferenceError::NotLoaded(error.clone())));
                    }
                }
            }
            return;
        }
    };
    while let Some(command) = receiver.blocking_recv() {
        match command {
            Command::Sample(request, reply) => {
                let _ = reply.send(sample_grid(&model, &id, &request));
            }
        }
    }
}

fn sample_grid(model: &LoadedModel, id: &str, request: &SampleRequest) -> Result<SampleGrid, InferenceError> {
    let config = model.model.config();
    let label = request.label.as_deref().map(|l| models::resolve_label(config, l)).transpose().map_err(|e| InferenceError::BadRequest(e.to_string()))?;
    tch::manual_seed(request.seed as i64);
    let (_, images) = models::sample(model, request.n, label, request.temperature).map_err(|e| InferenceError::BadRequest(e.to_string()))?;
    let columns = (request.n as f64).sqrt().ceil() as i64;
    Ok(SampleGrid { png: render::png_bytes(&render::grid(&images, columns)), model_id: id.to_string(), label })
}
