//! The inference side. Each loaded model lives on a dedicated thread (tensors are not Sync and
//! grad mode is thread-local), fed by a bounded queue, as in text-embeddings-inference. The
//! thread batches queued requests dynamically (up to `max_batch_size` rows, waiting at most
//! `max_batch_delay` and only under load) and runs a batch as one pass through each model part
//! that some request in it needs.

pub mod input;
mod resolve;
mod worker;

pub use resolve::resolve_model;
use resolve::Resolver;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use tch::Device;
use tokio::sync::{oneshot, watch};

use crate::models::{ModelConfig, ModelError};
use crate::render::ImageBatch;
use crate::telemetry::Metrics;

/// Most rows (samples, interpolation steps, tensor rows) one request may ask for.
pub const MAX_SAMPLES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error("{0}")]
    NotFound(String),
    #[error("model {id} could not be loaded: {why}")]
    LoadFailed { id: String, why: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("the inference queue of {0} is full; retry shortly")]
    Overloaded(String),
    #[error("the model worker stopped")]
    WorkerGone,
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// How requests are batched.
#[derive(Debug, Clone)]
pub struct BatchingConfig {
    /// Rows (images or samples) that close a batch; 1 turns batching off.
    pub max_batch_size: usize,
    /// Under load, how long a batch waits for more requests; a lone request never waits.
    pub max_batch_delay: Duration,
    /// Requests that may wait per model before new ones get 503.
    pub queue_capacity: usize,
    /// Loaded models kept; the least recently used beyond this is unloaded.
    pub loaded_models: usize,
    /// Torch intra-op CPU threads on each model thread.
    pub threads: usize,
    /// Fully connected layers in int8 on CPU, else float32 (`Vae::pack`).
    pub int8: bool,
}

/// Which model a request is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ModelRef {
    Default,
    Named { name: String, version: Option<u32> },
}

/// A loaded model's identity and configuration.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// `name@version`, as `resolve_model` builds it.
    pub id: String,
    pub config: ModelConfig,
}

/// One end of an interpolation.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// A class (index or name); the code stays fixed and the label moves.
    Label(String),
    /// An image in the model's shape; its posterior mean is the end point.
    Image(Vec<f32>),
}

/// What generated images are conditioned on (semi-supervised models).
#[derive(Debug, Clone)]
pub enum Conditioning {
    /// No label: the decoder sees the uniform class distribution.
    None,
    /// One class (index or name) for every row.
    Label(String),
    /// One class index per row.
    PerRow(Vec<i64>),
}

/// Work for a model thread.
#[derive(Debug, Clone)]
pub enum Task {
    /// `n` images decoded from codes: the given ones (`n × latent`, row-major), or codes drawn
    /// from the prior with `seed`, its standard deviation scaled by T (N(0, T²I) unless the model
    /// learned p(z|y)).
    Sample {
        n: usize,
        conditioning: Conditioning,
        codes: Option<Vec<f32>>,
        temperature: f64,
        seed: u64,
    },
    Interpolate {
        from: Endpoint,
        to: Endpoint,
        steps: usize,
        seed: u64,
    },
    /// Images in the model's shape, C×H×W each, and what the caller wants to know about them.
    Analyse {
        images: Vec<Vec<f32>>,
        want: Want,
    },
}

/// The parts of an analysis of uploaded images a request needs. The worker runs only the model
/// parts that some request in the batch needs: classifying never runs the decoder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Want {
    /// Class probabilities q(y|x): the classifier alone.
    pub classes: bool,
    /// The posterior q(z|x): the encoder alone.
    pub code: bool,
    /// Reconstruction at the posterior mean and its ELBO terms: the whole model.
    pub reconstruction: bool,
}

impl Want {
    pub const CLASSES: Want = Want { classes: true, code: false, reconstruction: false };
    pub const CODE: Want = Want { classes: false, code: true, reconstruction: false };
    pub const RECONSTRUCTION: Want = Want { classes: false, code: false, reconstruction: true };

    pub fn union(self, other: Want) -> Want {
        Want {
            classes: self.classes || other.classes,
            code: self.code || other.code,
            reconstruction: self.reconstruction || other.reconstruction,
        }
    }
}

impl Task {
    /// Rows this task adds to a batch.
    fn rows(&self) -> usize {
        match self {
            Task::Sample { n, .. } => *n,
            Task::Interpolate { steps, .. } => *steps,
            Task::Analyse { images, .. } => images.len(),
        }
    }
}

/// Decoded images with the codes and labels they came from.
#[derive(Debug, Clone)]
pub struct Generated {
    pub images: ImageBatch,
    pub latents: Vec<Vec<f32>>,
    pub label: Option<i64>,
}

/// The posterior q(z|x) of one image.
#[derive(Debug, Clone)]
pub struct Code {
    pub mean: Vec<f32>,
    pub log_var: Vec<f32>,
}

/// One image sent through encoder and decoder.
#[derive(Debug, Clone)]
pub struct Reconstructed {
    /// Decoded from the posterior mean, C×H×W intensities.
    pub pixels: Vec<f32>,
    /// −log p(x | z = mean), nats.
    pub reconstruction_error: f64,
    /// KL(q(z|x) ‖ p(z)), nats.
    pub kl: f64,
    /// −(reconstruction_error + kl): the ELBO evaluated at the posterior mean, deterministic.
    pub elbo: f64,
}

/// The parts of an analysis that its `Want` named, one row per image.
#[derive(Debug, Clone, Default)]
pub struct Analysis {
    /// Class probabilities q(y|x).
    pub probabilities: Option<Vec<Vec<f32>>>,
    pub codes: Option<Vec<Code>>,
    pub reconstructions: Option<Vec<Reconstructed>>,
}

/// A task's answer: `Generated` for samples and interpolations, `Analysed` for analyses.
#[derive(Debug, Clone)]
pub enum Outcome {
    Generated(Generated),
    Analysed(Analysis),
}

struct Job {
    task: Task,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Outcome, InferenceError>>,
}

/// Where a model worker stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadState {
    Loading,
    Ready,
    Failed(String),
}

#[derive(Debug, Clone)]
enum WorkerState {
    Loading,
    Ready(Arc<ModelInfo>),
    Failed(String),
}

#[derive(Clone)]
struct Worker {
    id: String,
    state: watch::Receiver<WorkerState>,
    jobs: mpsc::SyncSender<Job>,
    last_used: Instant,
}

/// A loaded model, ready to take tasks.
pub struct ServingModel {
    info: Arc<ModelInfo>,
    jobs: mpsc::SyncSender<Job>,
    metrics: Arc<Metrics>,
}

impl ServingModel {
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Queues `task` and waits for its batch to run.
    pub async fn run(&self, task: Task) -> Result<Outcome, InferenceError> {
        let (reply, answer) = oneshot::channel();
        self.jobs.try_send(Job { task, enqueued: Instant::now(), reply }).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => {
                self.metrics.inference_requests.with_label_values(&[&self.info.id, "rejected"]).inc();
                InferenceError::Overloaded(self.info.id.clone())
            }
            mpsc::TrySendError::Disconnected(_) => InferenceError::WorkerGone,
        })?;
        answer.await.map_err(|_| InferenceError::WorkerGone)?
    }

    /// Runs an analysis of `images` (C×H×W each) for the parts `want` names.
    pub async fn analyse(&self, images: Vec<Vec<f32>>, want: Want) -> Result<Analysis, InferenceError> {
        match self.run(Task::Analyse { images, want }).await? {
            Outcome::Analysed(analysis) => Ok(analysis),
            Outcome::Generated(_) => unreachable!("an analysis answers with an analysis"),
        }
    }
}

/// Whether the default model is ready, for /readyz.
#[derive(Debug, Clone, Default)]
pub struct DefaultModelStatus {
    pub loaded: bool,
    pub id: Option<String>,
    pub error: Option<String>,
}

/// Handle to the model threads; cheap to clone.
#[derive(Clone)]
pub struct ModelHost {
    inner: Arc<HostInner>,
}

struct HostInner {
    models: Resolver,
    /// `name` or `name@N`; changed at run time by `PUT /v1/models/{name}/default`.
    default_model: std::sync::RwLock<String>,
    device: Device,
    batching: BatchingConfig,
    metrics: Arc<Metrics>,
    workers: Mutex<HashMap<String, Worker>>,
}

impl ModelHost {
    /// A host with no model loaded yet; each loads at its first request (or `preload_default`).
    pub fn new(models_dir: PathBuf, default_model: String, device: Device, batching: BatchingConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Arc::new(HostInner {
                models: Resolver::new(models_dir),
                default_model: std::sync::RwLock::new(default_model),
                device,
                batching,
                metrics,
                workers: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Starts loading the default model now rather than at its first request.
    pub fn preload_default(&self) {
        if let Err(error) = self.worker(&ModelRef::Default, false) {
            tracing::warn!(%error, "default model not available");
        }
    }

    fn spec(&self, model: &ModelRef) -> String {
        match model {
            ModelRef::Default => self.default_spec(),
            ModelRef::Named { name, version: Some(v) } => format!("{name}@{v}"),
            ModelRef::Named { name, version: None } => name.clone(),
        }
    }

    /// The worker serving `model`, started (and the least recently used one stopped) if needed.
    /// With `retry_failed`, a worker whose load failed is replaced (the files may have been fixed).
    fn worker(&self, model: &ModelRef, retry_failed: bool) -> Result<Worker, InferenceError> {
        let spec = self.spec(model);
        // A missing default model means the service is not ready (503); a missing named one is a 404.
        let (id, dir) = self.inner.models.resolve(&spec).map_err(|why| match model {
            ModelRef::Default => InferenceError::LoadFailed { id: spec.clone(), why },
            ModelRef::Named { .. } => InferenceError::NotFound(why),
        })?;
        let mut workers = self.inner.workers.lock().unwrap_or_else(|p| p.into_inner());
        if retry_failed && workers.get(&id).is_some_and(|w| matches!(*w.state.borrow(), WorkerState::Failed(_))) {
            workers.remove(&id);
        }
        if let Some(worker) = workers.get_mut(&id) {
            worker.last_used = Instant::now();
            return Ok(worker.clone());
        }
        while workers.len() >= self.inner.batching.loaded_models.max(1) {
            let Some(oldest) = workers.iter().min_by_key(|(_, w)| w.last_used).map(|(k, _)| k.clone()) else { break };
            tracing::info!(model = %oldest, "unloading the least recently used model");
            workers.remove(&oldest);
        }
        let (state_tx, state) = watch::channel(WorkerState::Loading);
        let (jobs, queue) = mpsc::sync_channel(self.inner.batching.queue_capacity);
        let context = worker::Context {
            id: id.clone(),
            dir,
            device: self.inner.device,
            batching: self.inner.batching.clone(),
            metrics: self.inner.metrics.clone(),
        };
        std::thread::Builder::new()
            .name(format!("model-{id}"))
            .spawn(move || worker::run(context, state_tx, queue))
            .map_err(|e| InferenceError::LoadFailed { id: id.clone(), why: e.to_string() })?;
        let worker = Worker { id: id.clone(), state, jobs, last_used: Instant::now() };
        workers.insert(id, worker.clone());
        Ok(worker)
    }

    /// `model` once it is loaded: its description, and the queue of the very version that was
    /// looked up, so a request that read the model's shape (to decode uploads) runs on it even if
    /// a newer version is published meanwhile.
    pub async fn get(&self, model: &ModelRef) -> Result<ServingModel, InferenceError> {
        let worker = self.worker(model, true)?;
        let mut state = worker.state.clone();
        let state = state.wait_for(|s| !matches!(s, WorkerState::Loading)).await.map_err(|_| InferenceError::WorkerGone)?.clone();
        match state {
            WorkerState::Ready(info) => Ok(ServingModel { info, jobs: worker.jobs, metrics: self.inner.metrics.clone() }),
            WorkerState::Failed(why) => Err(InferenceError::LoadFailed { id: worker.id, why }),
            WorkerState::Loading => unreachable!("waited for a settled state"),
        }
    }

    /// The default model as configured: `name` or `name@N`.
    pub fn default_spec(&self) -> String {
        self.inner.default_model.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Makes `spec` the default model (it must exist) and starts loading it.
    pub fn set_default(&self, spec: &str) -> Result<String, InferenceError> {
        let (id, _) = self.inner.models.resolve(spec).map_err(InferenceError::NotFound)?;
        *self.inner.default_model.write().unwrap_or_else(|p| p.into_inner()) = spec.to_string();
        self.worker(&ModelRef::Default, true)?;
        Ok(id)
    }

    /// Stops the worker of model `id` (`name@N`) if one is running.
    pub fn unload(&self, id: &str) {
        self.inner.workers.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// Stops the workers of every version of model `name`.
    pub fn unload_model(&self, name: &str) {
        let prefix = format!("{name}@");
        self.inner.workers.lock().unwrap_or_else(|p| p.into_inner()).retain(|id, _| !id.starts_with(&prefix));
    }

    /// The models with a worker (`name@N`) and the state of each.
    pub fn loaded(&self) -> Vec<(String, LoadState)> {
        let workers = self.inner.workers.lock().unwrap_or_else(|p| p.into_inner());
        let mut loaded: Vec<(String, LoadState)> = workers
            .iter()
            .map(|(id, worker)| {
                let state = match &*worker.state.borrow() {
                    WorkerState::Loading => LoadState::Loading,
                    WorkerState::Ready(_) => LoadState::Ready,
                    WorkerState::Failed(why) => LoadState::Failed(why.clone()),
                };
                (id.clone(), state)
            })
            .collect();
        loaded.sort_by(|a, b| a.0.cmp(&b.0));
        loaded
    }

    pub fn default_model_status(&self) -> DefaultModelStatus {
        match self.worker(&ModelRef::Default, false) {
            Err(e) => DefaultModelStatus { loaded: false, id: None, error: Some(e.to_string()) },
            Ok(worker) => match &*worker.state.borrow() {
                WorkerState::Ready(info) => DefaultModelStatus { loaded: true, id: Some(info.id.clone()), error: None },
                WorkerState::Loading => DefaultModelStatus { loaded: false, id: Some(worker.id.clone()), error: Some("loading".into()) },
                WorkerState::Failed(why) => DefaultModelStatus { loaded: false, id: Some(worker.id.clone()), error: Some(why.clone()) },
            },
        }
    }
}
