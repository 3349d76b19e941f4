//! The background training queue: jobs persisted in the database, run FIFO by dedicated worker
//! threads (so the async runtime and the inference threads stay responsive), with progress
//! events for Server-Sent Events, cancellation, and resume from the last epoch checkpoint after
//! a crash.
//!
//! Each worker holds the job it runs under a lease in the database and renews it while training.
//! A job whose worker died (or lost the database) for longer than the lease is claimed by any
//! live worker, of this process or another one on the same database, and resumes from its
//! checkpoint; the worker that lost it stops and writes nothing more.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tch::Device;
use tokio::sync::broadcast;

use crate::storage::jobs::{CancelOutcome, Claimed, JobRecord, JobState, JobStore, Lease, LeaseStatus};
use crate::storage::StorageError;
use crate::telemetry::Metrics;
use crate::training::{self, CancelToken, EpochMetrics, Places, Progress, TrainError, TrainRequest};

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{field}: {why}")]
    Invalid { field: &'static str, why: String },
    #[error("the training queue is full ({0} jobs waiting); retry later")]
    QueueFull(usize),
    #[error("job {0} not found")]
    NotFound(i64),
    #[error("job {id} already finished ({state})")]
    AlreadyFinished { id: i64, state: &'static str },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Limits and places of the queue.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Training threads; 0 makes a replica that only queues jobs for other replicas to train.
    pub workers: usize,
    pub max_queued: usize,
    pub max_epochs: usize,
    pub max_train_images: usize,
    pub data_dir: PathBuf,
    pub models_dir: PathBuf,
    /// Checkpoints live in `<jobs_dir>/<id>/checkpoint`.
    pub jobs_dir: PathBuf,
    pub device: Device,
    /// Torch intra-op CPU threads of each training thread.
    pub threads: usize,
    /// How long a claimed job stays with its worker without a renewal.
    pub lease: Duration,
    /// How often a worker renews the lease of the job it runs.
    pub heartbeat: Duration,
}

/// How often a running job's worker looks for a cancel made on another replica, and how often
/// the progress of a job that runs on another replica is read for this one's listeners.
const REPLICA_POLL: Duration = Duration::from_secs(1);

/// A progress event of one job, as streamed to clients.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum JobEvent {
    Step { epoch: usize, step: usize, steps: usize },
    Epoch { metrics: EpochMetrics },
    Finished { state: JobState, error: Option<String>, model_version: Option<u32> },
}

/// Handle to the queue; cheap to clone.
#[derive(Clone)]
pub struct JobQueue {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn JobStore>,
    /// This process among the replicas; its workers' lease owners start with it.
    process: String,
    config: QueueConfig,
    wake: (Mutex<bool>, Condvar),
    running: Mutex<HashMap<i64, CancelToken>>,
    events: EventChannels,
    metrics: Arc<Metrics>,
}

impl JobQueue {
    /// Starts the workers. Jobs a crash left running are taken over once their leases expire.
    pub fn start(store: Arc<dyn JobStore>, config: QueueConfig, metrics: Arc<Metrics>) -> Result<Self, JobError> {
        let queue = Self {
            inner: Arc::new(Inner {
                store,
                process: format!("{}/", worker_process_id()),
                config,
                wake: (Mutex::new(false), Condvar::new()),
                running: Mutex::default(),
                events: EventChannels::default(),
                metrics,
            }),
        };
        for n in 0..queue.inner.config.workers {
            let worker = queue.clone();
            let lease = Lease { owner: format!("{}train-{n}", queue.inner.process), duration: queue.inner.config.lease };
            std::thread::Builder::new()
                .name(format!("train-{n}"))
                .spawn(move || worker.work(lease))
                .map_err(|e| StorageError::Task(e.to_string()))?;
        }
        let follower = queue.clone();
        std::thread::Builder::new()
            .name("job-events".into())
            .spawn(move || follower.follow_jobs_running_elsewhere())
            .map_err(|e| StorageError::Task(e.to_string()))?;
        Ok(queue)
    }

    /// Validates and queues a request; returns the job and its queue position.
    pub fn submit(&self, mut request: TrainRequest) -> Result<(JobRecord, usize), JobError> {
        let config = &self.inner.config;
        let invalid = |field, why: String| Err(JobError::Invalid { field, why });
        if let Err(e) = crate::models::artifact::validate_name(&request.name) {
            return invalid("name", e.to_string());
        }
        // A missing dataset with a canonical mirror is fetched by the job itself, not in this request.
        if let Err(e) = crate::data::check_obtainable(&request.dataset, &config.data_dir) {
            return invalid("dataset", e.to_string());
        }
        if let Err(e) = request.options.validate() {
            return invalid("options", e.to_string());
        }
        if request.options.epochs > config.max_epochs {
            return invalid(
                "options.epochs",
                format!("{} is more than this server allows ({}; VAE_MAX_EPOCHS)", request.options.epochs, config.max_epochs),
            );
        }
        if request.data.max_train.is_some_and(|n| n > config.max_train_images) {
            return invalid("data.max_train", format!("must be at most {} (VAE_MAX_TRAIN_IMAGES)", config.max_train_images));
        }
        if let Err(why) = crate::data::check_validation_fraction(request.data.validation_fraction) {
            return invalid("data.validation_fraction", why);
        }
        // Without a limit of its own, a job uses at most the server's.
        request.data.max_train = Some(request.data.max_train.unwrap_or(config.max_train_images));
        let json = serde_json::to_value(&request).expect("requests serialise");
        let (id, position) = self.inner.store.enqueue(&json, config.max_queued)?.ok_or(JobError::QueueFull(config.max_queued))?;
        self.wake_workers();
        let job = self.inner.store.get(id)?.ok_or(JobError::NotFound(id))?;
        Ok((job, position))
    }

    pub fn get(&self, id: i64) -> Result<JobRecord, JobError> {
        self.inner.store.get(id)?.ok_or(JobError::NotFound(id))
    }

    pub fn list(&self, state: Option<JobState>, limit: usize, offset: usize) -> Result<Vec<JobRecord>, JobError> {
        Ok(self.inner.store.list(state, limit, offset)?)
    }

    /// At shutdown: hands the jobs this process trains to other workers now rather than when
    /// their leases expire. Their training here stops at its next lease check, writing nothing.
    pub fn release_leases(&self) {
        match self.inner.store.release_leases(&self.inner.process) {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "handed running jobs over to other workers; they resume from their checkpoints"),
            Err(error) => tracing::warn!(%error, "cannot hand running jobs over; other workers take them when their leases expire"),
        }
    }

    /// Sets the jobs-by-state gauges from the database, for a scrape.
    pub fn refresh_metrics(&self) -> Result<(), JobError> {
        let counts = self.inner.store.count_by_state()?;
        for state in JobState::ALL {
            let n = counts.iter().find(|(s, _)| *s == state).map_or(0, |(_, n)| *n);
            self.inner.metrics.jobs.with_label_values(&[state.as_str()]).set(n as i64);
        }
        Ok(())
    }

    fn count_lease(&self, event: &str) {
        self.inner.metrics.job_leases.with_label_values(&[event]).inc();
    }

    pub fn queue_position(&self, id: i64) -> Result<Option<usize>, JobError> {
        Ok(self.inner.store.queue_position(id)?)
    }

    /// Cancels a queued job at once, or asks a running one to stop after its current batch.
    pub fn cancel(&self, id: i64) -> Result<JobRecord, JobError> {
        match self.inner.store.cancel(id)? {
            CancelOutcome::NotFound => return Err(JobError::NotFound(id)),
            CancelOutcome::AlreadyFinished(state) => return Err(JobError::AlreadyFinished { id, state: state.as_str() }),
            CancelOutcome::Cancelled => {
                self.publish(id, JobEvent::Finished { state: JobState::Cancelled, error: None, model_version: None })
            }
            CancelOutcome::Stopping => {
                if let Some(token) = self.inner.running.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
                    token.cancel();
                }
            }
        }
        self.get(id)
    }

    /// Events of job `id` from now on.
    pub fn subscribe(&self, id: i64) -> broadcast::Receiver<JobEvent> {
        self.inner.events.subscribe(id)
    }

    fn publish(&self, id: i64, event: JobEvent) {
        self.inner.events.publish(id, event);
    }

    /// Gives listeners of a job that runs on another replica (or whose worker died) its progress
    /// from the database: finished epochs and the end, read every second. Step events exist only
    /// on the replica that trains.
    fn follow_jobs_running_elsewhere(&self) {
        loop {
            std::thread::sleep(REPLICA_POLL);
            let local: Vec<i64> = self.inner.running.lock().unwrap_or_else(|p| p.into_inner()).keys().copied().collect();
            for id in self.inner.events.listened_to().into_iter().filter(|id| !local.contains(id)) {
                let job = match self.inner.store.get(id) {
                    Ok(Some(job)) => job,
                    Ok(None) => continue,
                    Err(error) => {
                        tracing::warn!(job = id, %error, "cannot read the progress of a job");
                        continue;
                    }
                };
                let history: Vec<EpochMetrics> = serde_json::from_value(job.history).unwrap_or_default();
                for metrics in history {
                    self.publish(id, JobEvent::Epoch { metrics });
                }
                if job.state.is_final() {
                    self.publish(id, JobEvent::Finished { state: job.state, error: job.error, model_version: job.model_version });
                }
            }
        }
    }

    fn wake_workers(&self) {
        let (flag, condvar) = &self.inner.wake;
        *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
        condvar.notify_all();
    }

    /// A worker thread: claim the oldest queued job (or one whose lease expired), run it, repeat;
    /// sleep when there is none. The sleep is short, for jobs queued or abandoned by other replicas.
    fn work(&self, lease: Lease) {
        crate::runtime::set_torch_threads_of_this_thread(self.inner.config.threads);
        loop {
            match self.inner.store.claim_next(&lease) {
                Ok(Some(claimed)) => self.run(claimed, &lease),
                Ok(None) => {
                    let (flag, condvar) = &self.inner.wake;
                    let guard = flag.lock().unwrap_or_else(|p| p.into_inner());
                    let (mut guard, _) =
                        condvar.wait_timeout_while(guard, Duration::from_secs(1), |woken| !*woken).unwrap_or_else(|p| p.into_inner());
                    *guard = false;
                }
                Err(error) => {
                    tracing::error!(%error, "cannot claim a job; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }

    fn run(&self, Claimed { job, taken_over }: Claimed, lease: &Lease) {
        let id = job.id;
        let request: TrainRequest = match serde_json::from_value(job.request.clone()) {
            Ok(request) => request,
            Err(e) => {
                self.finish(id, lease, JobState::Failed, Some(format!("stored request is unreadable: {e}")), None);
                return;
            }
        };
        self.count_lease(if taken_over { "taken_over" } else { "claimed" });
        if taken_over {
            tracing::warn!(job = id, attempt = job.attempts, "took over a job whose worker's lease expired; resuming from its checkpoint");
        }
        tracing::info!(job = id, name = %request.name, attempt = job.attempts, worker = %lease.owner, "training job started");
        let token = {
            let (store, lease) = (self.inner.store.clone(), lease.clone());
            CancelToken::fenced(move || matches!(store.check_lease(id, &lease, true), Ok(LeaseStatus::Held | LeaseStatus::CancelRequested)))
        };
        self.inner.running.lock().unwrap_or_else(|p| p.into_inner()).insert(id, token.clone());
        let job_dir = self.inner.config.jobs_dir.join(id.to_string());
        let checkpoint = job_dir.join("checkpoint");
        let places =
            Places { data_dir: &self.inner.config.data_dir, models_dir: &self.inner.config.models_dir, checkpoint_dir: Some(&checkpoint) };
        let epochs = request.options.epochs;
        // The checkpoint's history is authoritative: the database may lag it by an epoch after a crash.
        let mut history: Vec<EpochMetrics> = Vec::new();
        let started = Instant::now();
        let mut first_epoch = 0;
        let lease_lost = AtomicBool::new(false);
        let mut on_progress = |progress: Progress| match progress {
            Progress::Resumed { history: resumed } => {
                first_epoch = resumed.len();
                history = resumed;
            }
            Progress::Step { epoch, step, steps } => self.publish(id, JobEvent::Step { epoch, step, steps }),
            Progress::Epoch(metrics) => {
                history.push(metrics.clone());
                let done_here = (metrics.epoch - first_epoch) as f64;
                let eta = started.elapsed().as_secs_f64() / done_here.max(1.0) * (epochs - metrics.epoch) as f64;
                let progress = serde_json::json!({ "epoch": metrics.epoch, "epochs": epochs, "eta_seconds": eta });
                let history = serde_json::to_value(&history).unwrap_or_default();
                match self.inner.store.record_progress(id, &lease.owner, &progress, &history) {
                    Ok(true) => self.publish(id, JobEvent::Epoch { metrics }),
                    Ok(false) => {
                        lease_lost.store(true, Ordering::Relaxed);
                        token.cancel();
                    }
                    Err(error) => tracing::error!(job = id, %error, "cannot record progress"),
                }
            }
        };
        let training_done = (Mutex::new(false), Condvar::new());
        let result = std::thread::scope(|scope| {
            scope.spawn(|| self.keep_lease(id, lease, &token, &training_done, &lease_lost));
            // The job thread runs training; a panic in it must fail the job, not kill the worker.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                training::train_and_publish(&request, &places, self.inner.config.device, 0, &token, &mut on_progress)
            }))
            .unwrap_or_else(|_| Err(TrainError::Invalid("training panicked".into())));
            *training_done.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
            training_done.1.notify_all();
            result
        });
        self.inner.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        if lease_lost.load(Ordering::Relaxed) || matches!(result, Err(TrainError::Fenced)) {
            // Its checkpoint now belongs to the worker that took the job over.
            return tracing::warn!(job = id, worker = %lease.owner, "lost this job's lease to another worker; stopped without recording anything");
        }
        match result {
            Ok(published) => {
                tracing::info!(job = id, model = %published.name, version = published.version, "training job succeeded");
                if self.finish(id, lease, JobState::Succeeded, None, Some(published.version)) {
                    let _ = std::fs::remove_dir_all(&job_dir);
                }
            }
            Err(TrainError::Cancelled { completed_epochs }) => {
                tracing::info!(job = id, completed_epochs, "training job cancelled; its last checkpoint is kept");
                self.finish(id, lease, JobState::Cancelled, None, None);
            }
            // A job resumed after a crash whose checkpoint cannot be used: it cannot go on.
            Err(error @ TrainError::Checkpoint { .. }) if job.attempts > 1 => {
                tracing::warn!(job = id, %error, "training job interrupted: its checkpoint cannot be resumed");
                self.finish(id, lease, JobState::Interrupted, Some(error.to_string()), None);
            }
            Err(error) => {
                tracing::warn!(job = id, %error, "training job failed");
                self.finish(id, lease, JobState::Failed, Some(error.to_string()), None);
            }
        }
    }

    /// Beside a running job: renews its lease every heartbeat and looks every second for a cancel
    /// made on another replica. Stops the run when the lease is lost, or when the database has not
    /// confirmed it for a whole lease (by then another worker may have taken the job).
    fn keep_lease(&self, id: i64, lease: &Lease, token: &CancelToken, training_done: &(Mutex<bool>, Condvar), lease_lost: &AtomicBool) {
        let (heartbeat, tick) = (self.inner.config.heartbeat, self.inner.config.heartbeat.min(REPLICA_POLL));
        let (mut renewed, mut confirmed) = (Instant::now(), Instant::now());
        let mut done = training_done.0.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            done = training_done.1.wait_timeout_while(done, tick, |done| !*done).unwrap_or_else(|p| p.into_inner()).0;
            if *done {
                return;
            }
            let renew = renewed.elapsed() >= heartbeat;
            match self.inner.store.check_lease(id, lease, renew) {
                Ok(status) => {
                    confirmed = Instant::now();
                    if renew && status != LeaseStatus::Lost {
                        renewed = confirmed;
                        self.count_lease("renewed");
                    }
                    match status {
                        LeaseStatus::Held => {}
                        LeaseStatus::CancelRequested => token.cancel(),
                        LeaseStatus::Lost => {
                            self.count_lease("lost");
                            lease_lost.store(true, Ordering::Relaxed);
                            return token.cancel();
                        }
                    }
                }
                Err(error) if confirmed.elapsed() >= lease.duration => {
                    tracing::error!(job = id, %error, "the database has not confirmed this job's lease for a whole lease; stopping it");
                    self.count_lease("lost");
                    lease_lost.store(true, Ordering::Relaxed);
                    return token.cancel();
                }
                Err(error) => tracing::warn!(job = id, %error, "cannot renew the job's lease; retrying"),
            }
        }
    }

    /// Records the end of a job this worker still holds, and tells its listeners; false if the
    /// job had gone to another worker.
    fn finish(&self, id: i64, lease: &Lease, state: JobState, error: Option<String>, model_version: Option<u32>) -> bool {
        match self.inner.store.finish(id, &lease.owner, state, error.as_deref(), model_version) {
            Ok(true) => {
                self.publish(id, JobEvent::Finished { state, error, model_version });
                true
            }
            Ok(false) => {
                tracing::warn!(job = id, "the job went to another worker before its end was recorded here");
                false
            }
            Err(e) => {
                tracing::error!(job = id, error = %e, "cannot record the end of a job");
                false
            }
        }
    }
}

/// Names this process among every replica on the database: host, process id and a random part
/// (process ids repeat across containers and restarts).
fn worker_process_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "host".into());
    format!("{host}:{}:{:08x}", std::process::id(), rand::random::<u32>())
}

/// Progress channels of the jobs someone listens to. A channel lasts while it has subscribers
/// (an SSE client that hung up drops its receiver) and until its job finishes, so clients that
/// come and go, or ask for jobs that do not exist, leave nothing behind. Each epoch goes out
/// once, whether its worker runs here or its record was read from the database.
#[derive(Default)]
struct EventChannels(Mutex<HashMap<i64, Channel>>);

struct Channel {
    sender: broadcast::Sender<JobEvent>,
    /// The last epoch sent.
    epochs_sent: usize,
}

impl EventChannels {
    fn subscribe(&self, id: i64) -> broadcast::Receiver<JobEvent> {
        let mut channels = self.0.lock().unwrap_or_else(|p| p.into_inner());
        channels.retain(|_, channel| channel.sender.receiver_count() > 0);
        channels.entry(id).or_insert_with(|| Channel { sender: broadcast::channel(256).0, epochs_sent: 0 }).sender.subscribe()
    }

    fn listened_to(&self) -> Vec<i64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).keys().copied().collect()
    }

    fn publish(&self, id: i64, event: JobEvent) {
        let finished = matches!(event, JobEvent::Finished { .. });
        let mut channels = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get_mut(&id) {
            if let JobEvent::Epoch { metrics } = &event {
                if metrics.epoch <= channel.epochs_sent {
                    return;
                }
                channel.epochs_sent = metrics.epoch;
            }
            let _ = channel.sender.send(event);
            if finished || channel.sender.receiver_count() == 0 {
                channels.remove(&id);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_channels_last_only_while_someone_listens_and_the_job_runs() {
        let channels = EventChannels::default();
        // Subscribers that left (or asked for jobs that never existed) are forgotten.
        for id in 0..100 {
            drop(channels.subscribe(id));
        }
        let mut listening = channels.subscribe(7);
        assert_eq!(channels.len(), 1);
        channels.publish(7, JobEvent::Step { epoch: 1, step: 1, steps: 2 });
        assert!(matches!(listening.try_recv(), Ok(JobEvent::Step { step: 1, .. })));
        channels.publish(7, JobEvent::Finished { state: JobState::Succeeded, error: None, model_version: Some(1) });
        assert!(matches!(listening.try_recv(), Ok(JobEvent::Finished { .. })));
        assert_eq!(channels.len(), 0, "a finished job's channel is closed");
        // Publishing to a channel whose listeners left closes it too.
        drop(channels.subscribe(8));
        channels.publish(8, JobEvent::Step { epoch: 1, step: 1, steps: 2 });
        assert_eq!(channels.len(), 0);
    }

    #[test]
    fn each_epoch_goes_out_once_from_the_local_worker_or_the_database() {
        let channels = EventChannels::default();
        let mut listening = channels.subscribe(3);
        let epoch = |epoch| JobEvent::Epoch {
            metrics: EpochMetrics {
                epoch,
                loss: 1.0,
                reconstruction: 1.0,
                kl: 0.0,
                validation_negative_elbo: None,
                validation_accuracy: None,
                learning_rate: 0.1,
                kl_weight: 1.0,
                seconds: 1.0,
                images_per_second: 1.0,
            },
        };
        // The history read from the database each second repeats the epochs already sent.
        for event in [epoch(1), epoch(1), epoch(2), epoch(1), epoch(2), epoch(3)] {
            channels.publish(3, event);
        }
        let sent: Vec<usize> = std::iter::from_fn(|| match listening.try_recv() {
            Ok(JobEvent::Epoch { metrics }) => Some(metrics.epoch),
            _ => None,
        })
        .collect();
        assert_eq!(sent, [1, 2, 3]);
    }
}
