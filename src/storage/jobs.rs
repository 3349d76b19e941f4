//! Training jobs: what the job queue asks of a database (`JobStore`), implemented by the SQLite
//! and PostgreSQL backends, whose tests below run the same bodies against each.
//!
//! A running job is held by one worker under a lease that the worker renews. Every write a
//! worker makes for its job (progress, the end) names the lease's owner and is refused once the
//! lease has gone to another worker, so a worker that lost its job cannot overwrite the new
//! owner's record. Several workers claim safely: PostgreSQL skips rows another claim has
//! locked (`FOR UPDATE SKIP LOCKED`), SQLite runs one write transaction at a time.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::StorageError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// Stopped by a crash and not resumable.
    Interrupted,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Interrupted => "interrupted",
        }
    }

    pub const ALL: [Self; 6] = [Self::Queued, Self::Running, Self::Succeeded, Self::Failed, Self::Cancelled, Self::Interrupted];

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_final(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }
}

/// A job as stored; JSON columns stay JSON.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobRecord {
    pub id: i64,
    pub state: JobState,
    /// The training request as submitted.
    #[schema(value_type = Object)]
    pub request: serde_json::Value,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Where training is: epoch, step, steps per epoch, epochs, ETA.
    #[schema(value_type = Option<Object>)]
    pub progress: Option<serde_json::Value>,
    /// Metrics of every finished epoch.
    #[schema(value_type = Vec<Object>)]
    pub history: serde_json::Value,
    pub error: Option<String>,
    /// The model version the job published.
    pub model_version: Option<u32>,
    /// How many times a worker started it (more than one after a crash and resume).
    pub attempts: u32,
}

/// What cancelling did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was queued (or its worker's lease had expired) and is now cancelled.
    Cancelled,
    /// It is running; its worker stops it within one batch.
    Stopping,
    /// It had already finished in this state.
    AlreadyFinished(JobState),
    NotFound,
}

/// A worker's hold on the jobs it runs: who it is, and how far each renewal extends the hold.
#[derive(Debug, Clone)]
pub struct Lease {
    /// Unique per worker process and thread, so that no two workers ever share one.
    pub owner: String,
    pub duration: Duration,
}

/// What a worker learns when it checks or renews its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStatus {
    Held,
    /// Held, and somebody asked (on any replica) for the job to stop.
    CancelRequested,
    /// Another worker took the job over (this one's lease had expired), or it is no longer running.
    Lost,
}

/// A job a worker just claimed.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub job: JobRecord,
    /// It was running under a lease that expired: its worker died or lost the database.
    pub taken_over: bool,
}

pub trait JobStore: Send + Sync {
    /// Adds a queued job unless `max_queued` are already waiting; returns its id and 1-based queue position.
    fn enqueue(&self, request: &serde_json::Value, max_queued: usize) -> Result<Option<(i64, usize)>, StorageError>;
    /// Takes the oldest job that is queued, or running under an expired lease, marks it running
    /// and gives it `lease`.
    fn claim_next(&self, lease: &Lease) -> Result<Option<Claimed>, StorageError>;
    /// Whether `lease` still holds job `id`; with `renew`, extends it by the lease's duration.
    fn check_lease(&self, id: i64, lease: &Lease, renew: bool) -> Result<LeaseStatus, StorageError>;
    fn get(&self, id: i64) -> Result<Option<JobRecord>, StorageError>;
    /// Newest first.
    fn list(&self, state: Option<JobState>, limit: usize, offset: usize) -> Result<Vec<JobRecord>, StorageError>;
    fn queue_position(&self, id: i64) -> Result<Option<usize>, StorageError>;
    /// Records progress if `owner` still holds the job; false when it does not.
    fn record_progress(
        &self,
        id: i64,
        owner: &str,
        progress: &serde_json::Value,
        history: &serde_json::Value,
    ) -> Result<bool, StorageError>;
    /// Records the end of a job if `owner` still holds it; false when it does not.
    fn finish(&self, id: i64, owner: &str, state: JobState, error: Option<&str>, model_version: Option<u32>) -> Result<bool, StorageError>;
    fn cancel(&self, id: i64) -> Result<CancelOutcome, StorageError>;
    /// How many jobs are in each state.
    fn count_by_state(&self) -> Result<Vec<(JobState, u64)>, StorageError>;
    /// Gives up the leases of every worker whose owner id starts with `owner_prefix` (a process
    /// that stops), so that other workers take their jobs over at once; returns how many.
    fn release_leases(&self, owner_prefix: &str) -> Result<usize, StorageError>;
}

/// The outcome of cancelling a job found in `state` (None: no such job), where `lease_expired`
/// says that no live worker holds it; the backend then carries it out.
pub(super) fn cancel_outcome(found: Option<(&str, bool)>) -> CancelOutcome {
    match found.map(|(state, expired)| (JobState::parse(state), expired)) {
        None => CancelOutcome::NotFound,
        // No live worker holds it: nobody else would stop it.
        Some((Some(JobState::Queued), _)) | Some((Some(JobState::Running), true)) => CancelOutcome::Cancelled,
        Some((Some(JobState::Running), false)) => CancelOutcome::Stopping,
        Some((Some(done), _)) => CancelOutcome::AlreadyFinished(done),
        Some((None, _)) => CancelOutcome::AlreadyFinished(JobState::Interrupted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{test_locations, Database};

    fn lease(owner: &str, millis: u64) -> Lease {
        Lease { owner: owner.into(), duration: Duration::from_millis(millis) }
    }

    /// Runs `body` on a fresh job store of each backend.
    fn on_each_backend(body: impl Fn(&dyn JobStore)) {
        let dir = tempfile::tempdir().unwrap();
        let (_cluster, locations) = test_locations(dir.path());
        for location in locations {
            eprintln!("on {location}");
            body(&*Database::open_blocking(&location).unwrap().jobs());
        }
    }

    #[test]
    fn a_job_goes_through_its_states_in_fifo_order() {
        on_each_backend(|db| {
            let worker = lease("a", 60_000);
            let request = serde_json::json!({"name": "a"});
            assert_eq!(db.enqueue(&request, 2).unwrap(), Some((1, 1)));
            assert_eq!(db.enqueue(&request, 2).unwrap(), Some((2, 2)));
            assert_eq!(db.enqueue(&request, 2).unwrap(), None, "queue full");
            assert_eq!(db.queue_position(2).unwrap(), Some(2));

            let first = db.claim_next(&worker).unwrap().unwrap();
            assert_eq!((first.job.id, first.job.state, first.job.attempts, first.taken_over), (1, JobState::Running, 1, false));
            assert_eq!(first.job.request, request);
            assert!(first.job.started_at.as_deref().is_some_and(|t| t.len() == 24 && t.ends_with('Z')), "{:?}", first.job.started_at);
            assert_eq!(db.queue_position(2).unwrap(), Some(1));
            assert_eq!(db.queue_position(1).unwrap(), None, "running is not in the queue");
            assert_eq!(db.check_lease(1, &worker, true).unwrap(), LeaseStatus::Held);
            assert_eq!(db.cancel(1).unwrap(), CancelOutcome::Stopping);
            assert_eq!(db.check_lease(1, &worker, false).unwrap(), LeaseStatus::CancelRequested, "a cancel reaches the worker");
            assert_eq!(db.cancel(2).unwrap(), CancelOutcome::Cancelled);
            assert_eq!(db.claim_next(&worker).unwrap().map(|c| c.job.id), None, "a held job is not claimed again");

            assert!(db.record_progress(1, "a", &serde_json::json!({"epoch": 1}), &serde_json::json!([{"epoch": 1}])).unwrap());
            assert!(db.finish(1, "a", JobState::Succeeded, None, Some(3)).unwrap());
            let done = db.get(1).unwrap().unwrap();
            assert_eq!((done.state, done.model_version, done.history), (JobState::Succeeded, Some(3), serde_json::json!([{"epoch": 1}])));
            assert_eq!(done.progress, Some(serde_json::json!({"epoch": 1})));
            assert!(done.finished_at.is_some());
            assert_eq!(db.check_lease(1, &worker, true).unwrap(), LeaseStatus::Lost, "a finished job has no lease");
            assert_eq!(db.cancel(1).unwrap(), CancelOutcome::AlreadyFinished(JobState::Succeeded));
            assert_eq!(db.cancel(99).unwrap(), CancelOutcome::NotFound);
            assert!(db.get(99).unwrap().is_none());
            assert_eq!(db.list(Some(JobState::Cancelled), 10, 0).unwrap().len(), 1);
            assert_eq!(db.list(None, 1, 1).unwrap()[0].id, 1, "newest first, paginated");
            let mut counts = db.count_by_state().unwrap();
            counts.sort_by_key(|(state, _)| state.as_str());
            assert_eq!(counts, [(JobState::Cancelled, 1), (JobState::Succeeded, 1)]);
        });
    }

    #[test]
    fn an_expired_lease_passes_the_job_to_another_worker_and_fences_the_first() {
        on_each_backend(|db| {
            db.enqueue(&serde_json::json!({"name": "a"}), 4).unwrap();
            let (dying, survivor) = (lease("dying", 300), lease("survivor", 60_000));
            db.claim_next(&dying).unwrap().unwrap();
            assert!(db.record_progress(1, "dying", &serde_json::json!({"epoch": 1}), &serde_json::json!([{"epoch": 1}])).unwrap());
            assert!(db.claim_next(&survivor).unwrap().is_none(), "the lease still holds");
            std::thread::sleep(Duration::from_millis(400));

            let taken = db.claim_next(&survivor).unwrap().unwrap();
            assert!(taken.taken_over);
            assert_eq!((taken.job.id, taken.job.attempts, taken.job.history), (1, 2, serde_json::json!([{"epoch": 1}])));
            // The first worker, back from a pause, finds its lease gone and can write nothing.
            assert_eq!(db.check_lease(1, &dying, true).unwrap(), LeaseStatus::Lost);
            assert!(!db.record_progress(1, "dying", &serde_json::json!({"epoch": 2}), &serde_json::json!([])).unwrap());
            assert!(!db.finish(1, "dying", JobState::Failed, Some("late"), None).unwrap());
            assert!(db.finish(1, "survivor", JobState::Succeeded, None, Some(1)).unwrap());
            assert_eq!(db.get(1).unwrap().unwrap().state, JobState::Succeeded);
        });
    }

    #[test]
    fn a_stopping_process_hands_its_jobs_over_at_once() {
        on_each_backend(|db| {
            for _ in 0..3 {
                db.enqueue(&serde_json::json!({}), 4).unwrap();
            }
            let (mine, other) = (lease("host:1:ab/train-0", 60_000), lease("host:1:abc/train-0", 60_000));
            db.claim_next(&mine).unwrap().unwrap();
            db.claim_next(&other).unwrap().unwrap();
            assert_eq!(db.release_leases("host:1:ab/").unwrap(), 1, "only this process's leases");
            assert_eq!(db.check_lease(1, &mine, true).unwrap(), LeaseStatus::Lost, "and its worker may not renew it");
            let next = db.claim_next(&lease("b", 60_000)).unwrap().unwrap();
            assert_eq!((next.job.id, next.taken_over), (1, true), "handed over before the queued job 3");
        });
    }

    #[test]
    fn cancelling_a_job_whose_worker_died_ends_it_at_once() {
        on_each_backend(|db| {
            db.enqueue(&serde_json::json!({"name": "a"}), 4).unwrap();
            db.claim_next(&lease("dead", 0)).unwrap().unwrap();
            std::thread::sleep(Duration::from_millis(5));
            assert_eq!(db.cancel(1).unwrap(), CancelOutcome::Cancelled);
            assert!(db.claim_next(&lease("b", 1000)).unwrap().is_none());
        });
    }

    #[test]
    fn many_workers_each_claim_every_job_once() {
        let dir = tempfile::tempdir().unwrap();
        let (_cluster, locations) = test_locations(dir.path());
        for location in locations {
            let db = Database::open_blocking(&location).unwrap().jobs();
            for _ in 0..40 {
                db.enqueue(&serde_json::json!({}), 100).unwrap();
            }
            // Separate connections, as separate processes would have.
            let claimed: Vec<i64> = std::thread::scope(|scope| {
                let workers: Vec<_> = (0..4)
                    .map(|n| {
                        let db = Database::open_blocking(&location).unwrap().jobs();
                        scope.spawn(move || {
                            let lease = lease(&format!("w{n}"), 60_000);
                            std::iter::from_fn(|| db.claim_next(&lease).unwrap().map(|c| c.job.id)).collect::<Vec<_>>()
                        })
                    })
                    .collect();
                workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
            });
            let mut sorted = claimed.clone();
            sorted.sort();
            assert_eq!(sorted, (1..=40).collect::<Vec<_>>(), "{location}: every job claimed exactly once");
        }
    }
}
