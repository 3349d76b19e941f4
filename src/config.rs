//! Command line and environment configuration: every setting is a flag and an env var.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::runtime::DeviceRequest;

#[derive(Debug, Parser)]
#[command(name = "vae-serve", version, about = "Train variational autoencoders and serve them over HTTP")]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Settings shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Compute device: auto, cpu, cuda or cuda:N.
    #[arg(long, env = "VAE_DEVICE", default_value = "auto", global = true)]
    pub device: DeviceRequest,
    /// Torch intra-op CPU threads (0: one per core).
    #[arg(long, env = "VAE_THREADS", default_value_t = 0, global = true)]
    pub threads: usize,
    /// Log line format.
    #[arg(long, env = "VAE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Where datasets are looked up by name (`$VAE_DATA_DIR/<name>`).
    #[arg(long, env = "VAE_DATA_DIR", default_value = "./data", global = true)]
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
// Parsed once at start-up: the variants' sizes cost nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the HTTP service.
    Serve(ServeArgs),
    /// Print the OpenAPI document generated from the code.
    Openapi,
    /// Train a model and save it as a model directory.
    Train(crate::training::cli::TrainArgs),
    /// Evaluate a saved model on a dataset's test split, and its samples with the dataset's judge.
    Eval(crate::training::cli::EvalArgs),
    /// Train a dataset's judge: the independent classifier that scores samples (label fidelity,
    /// Fréchet distance) in `eval` and at the end of every training job.
    Judge(crate::training::cli::JudgeArgs),
    /// Draw samples from a saved model into a PNG grid.
    Sample(crate::training::cli::SampleArgs),
}

/// What one replica of the service does; several share a database and a model folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Serves the API and inference, and trains: one process does everything.
    All,
    /// Serves the API and inference and never trains: jobs wait in the queue for workers.
    Api,
    /// Only trains; HTTP answers /healthz, /readyz and /metrics.
    Worker,
}

impl Role {
    pub fn trains(self) -> bool {
        self != Self::Api
    }

    pub fn serves(self) -> bool {
        self != Self::Worker
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// What this replica does: all (serve and train), api (serve only) or worker (train only).
    #[arg(long, env = "VAE_ROLE", value_enum, default_value_t = Role::All)]
    pub role: Role,
    /// Address to listen on (port 0 picks a free port; the log says which).
    #[arg(long, env = "VAE_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Address of the Open Inference Protocol's gRPC service (port 0 picks one); empty turns it off.
    #[arg(long, env = "VAE_GRPC_ADDR", default_value = "127.0.0.1:8081")]
    pub grpc_addr: String,
    /// Directory holding model directories (`<name>/v<N>/`).
    #[arg(long, env = "VAE_MODELS_DIR", default_value = "./models")]
    pub models_dir: PathBuf,
    /// Where jobs and settings live: a SQLite file (created if missing) for one machine, or a
    /// `postgres://user[:password]@host:port/db` URL that several replicas share (no TLS; the
    /// password may also come from PGPASSWORD).
    #[arg(long, env = "VAE_DATABASE", default_value = "./data/vae-serve.db")]
    pub database: String,
    /// Where running jobs keep their epoch checkpoints; replicas that take jobs over from each
    /// other must all see it. Default: `jobs/` beside a SQLite file, or beside the models directory.
    #[arg(long, env = "VAE_JOBS_DIR")]
    pub jobs_dir: Option<PathBuf>,
    /// Model served by the top-level endpoints: `name` (latest version) or `name@N`.
    #[arg(long, env = "VAE_DEFAULT_MODEL", default_value = "mnist-ssvae")]
    pub default_model: String,
    /// Bearer token required for state-changing requests (unset: mutations are open).
    #[arg(long, env = "VAE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// With an API key: require it for reads too (health probes stay open).
    #[arg(long, env = "VAE_AUTH_ALL", default_value_t = false, action = clap::ArgAction::Set)]
    pub auth_all: bool,
    /// Largest accepted request body in bytes.
    #[arg(long, env = "VAE_MAX_BODY_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Of a body declared larger than VAE_MAX_BODY_BYTES, how many bytes are read and discarded
    /// before the 413 goes out, so that clients which send the whole body before reading (Python's
    /// requests, http.client) read the answer instead of a reset connection.
    #[arg(long, env = "VAE_DRAIN_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub drain_body_bytes: usize,
    /// The most time spent draining such a body, in milliseconds.
    #[arg(long, env = "VAE_DRAIN_BODY_MS", default_value_t = 1000)]
    pub drain_body_ms: u64,
    /// Connections open at once; one more is answered 503 and closed.
    #[arg(long, env = "VAE_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Seconds from a request's first byte to the end of its head; a slower client is disconnected.
    #[arg(long, env = "VAE_HEADER_READ_TIMEOUT_SECS", default_value_t = 10)]
    pub header_read_timeout_secs: u64,
    /// Seconds a connection may stay open without a request (after accepting it or between requests).
    #[arg(long, env = "VAE_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub idle_timeout_secs: u64,
    /// Comma-separated allowed CORS origins (`*` for any; empty: no CORS headers).
    #[arg(long, env = "VAE_CORS_ORIGINS", value_delimiter = ',', default_value = "")]
    pub cors_origins: Vec<String>,
    /// Per-request time limit in seconds (408 past it).
    #[arg(long, env = "VAE_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Rows (images or samples) that close an inference batch; 1 turns batching off.
    #[arg(long, env = "VAE_MAX_BATCH_SIZE", default_value_t = 64)]
    pub max_batch_size: usize,
    /// Under load, how long a batch waits for more requests, in milliseconds (a lone request never
    /// waits). 0: a batch is what queued while the model was busy, which serves best on CPU.
    #[arg(long, env = "VAE_MAX_BATCH_DELAY_MS", default_value_t = 0)]
    pub max_batch_delay_ms: u64,
    /// Requests that may wait per model; beyond it requests get 503 with Retry-After.
    #[arg(long, env = "VAE_QUEUE_CAPACITY", default_value_t = 1024)]
    pub queue_capacity: usize,
    /// Models kept loaded at once; the least recently used is unloaded beyond this.
    #[arg(long, env = "VAE_LOADED_MODELS", default_value_t = 4)]
    pub loaded_models: usize,
    /// Torch intra-op CPU threads of each model thread (training jobs use --threads). Inference
    /// batches are small, so one thread leaves the other cores to HTTP and image decoding.
    #[arg(long, env = "VAE_INFERENCE_THREADS", default_value_t = 1)]
    pub inference_threads: usize,
    /// Serve with int8 weights in the fully connected layers (activations quantized per batch;
    /// fbgemm) instead of float32: a few times less model time per batch on CPU, outputs within
    /// about 1%. Either way, on CPU, batch norm is folded into those layers' weights at load.
    /// Convolutional layers and training stay float32; ignored on a GPU.
    #[arg(long, env = "VAE_INFERENCE_INT8", default_value_t = false, action = clap::ArgAction::Set)]
    pub inference_int8: bool,
    /// Training jobs run at once (each on its own thread).
    #[arg(long, env = "VAE_TRAIN_WORKERS", default_value_t = 1)]
    pub train_workers: usize,
    /// Seconds a training job stays with its worker without a renewal; a job whose worker died
    /// (or lost the database) this long is taken over by another worker and resumes from its
    /// checkpoint.
    #[arg(long, env = "VAE_JOB_LEASE_SECS", default_value_t = 30)]
    pub job_lease_secs: u64,
    /// Seconds between a worker's renewals of the lease of the job it runs (less than the lease).
    #[arg(long, env = "VAE_JOB_HEARTBEAT_SECS", default_value_t = 10)]
    pub job_heartbeat_secs: u64,
    /// Queued training jobs beyond which POST /train answers 429.
    #[arg(long, env = "VAE_MAX_QUEUED_JOBS", default_value_t = 16)]
    pub max_queued_jobs: usize,
    /// Most epochs one job may ask for.
    #[arg(long, env = "VAE_MAX_EPOCHS", default_value_t = 1000)]
    pub max_epochs: usize,
    /// Most training images one job may use (`data.max_train` must be set to at most this).
    #[arg(long, env = "VAE_MAX_TRAIN_IMAGES", default_value_t = 1_000_000)]
    pub max_train_images: usize,
    /// How long shutdown waits for in-flight requests, in seconds.
    #[arg(long, env = "VAE_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
}

impl ServeArgs {
    /// Where gRPC listens, or `None` when it is turned off.
    pub fn grpc_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        let addr = self.grpc_addr.trim();
        if addr.is_empty() {
            return Ok(None);
        }
        addr.parse().map(Some).map_err(|e| anyhow::anyhow!("VAE_GRPC_ADDR `{addr}` is not an address like 127.0.0.1:8081: {e}"))
    }

    /// The job lease and its heartbeat; a heartbeat as long as the lease would let leases lapse.
    pub fn job_lease(&self) -> anyhow::Result<(Duration, Duration)> {
        if self.job_heartbeat_secs == 0 || self.job_heartbeat_secs >= self.job_lease_secs {
            anyhow::bail!(
                "VAE_JOB_HEARTBEAT_SECS ({}) must be at least 1 and less than VAE_JOB_LEASE_SECS ({})",
                self.job_heartbeat_secs,
                self.job_lease_secs
            );
        }
        Ok((Duration::from_secs(self.job_lease_secs), Duration::from_secs(self.job_heartbeat_secs)))
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    pub fn connection_limits(&self) -> crate::server::connections::ConnectionLimits {
        crate::server::connections::ConnectionLimits {
            max_connections: self.max_connections.max(1),
            header_read_timeout: Duration::from_secs(self.header_read_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs.max(1)),
        }
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    pub fn batching(&self) -> crate::inference::BatchingConfig {
        crate::inference::BatchingConfig {
            max_batch_size: self.max_batch_size.max(1),
            max_batch_delay: Duration::from_millis(self.max_batch_delay_ms),
            queue_capacity: self.queue_capacity.max(1),
            loaded_models: self.loaded_models.max(1),
            threads: self.inference_threads.max(1),
            int8: self.inference_int8,
        }
    }
}
