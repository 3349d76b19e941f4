//! Training jobs in SQLite. `JobStore` is the seam for another backend (PostgreSQL, claiming
//! with `FOR UPDATE SKIP LOCKED` so several replicas can share one queue).
//!
//! A running job is held by one worker under a lease that the worker renews. Every write a
//! worker makes for its job (progress, the end) names the lease's owner and is refused once the
//! lease has gone to another worker, so a worker that lost its job cannot overwrite the new
//! owner's record. Several processes on one SQLite file claim safely: a claim is one write
//! transaction, which SQLite runs one at a time.

use std::time::Duration;

use rusqlite::{params, OptionalExtension, Row};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Database, StorageError};

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

const COLUMNS: &str = "id, state, request, created_at, started_at, finished_at, progress, history, error, model_version, attempts";
const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";
/// The database's clock in Unix milliseconds: every replica's leases are measured by one clock.
const NOW_MS: &str = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";
/// A running job whose lease is gone; one left running by a version without leases has none.
const LEASE_EXPIRED: &str = "coalesce(lease_expires_at, 0) < CAST(unixepoch('subsec') * 1000 AS INTEGER)";

fn record(row: &Row<'_>) -> rusqlite::Result<JobRecord> {
    let json = |i: usize| -> rusqlite::Result<Option<serde_json::Value>> {
        let text: Option<String> = row.get(i)?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    };
    let state: String = row.get(1)?;
    Ok(JobRecord {
        id: row.get(0)?,
        state: JobState::parse(&state).unwrap_or(JobState::Interrupted),
        request: json(2)?.unwrap_or_default(),
        created_at: row.get(3)?,
        started_at: row.get(4)?,
        finished_at: row.get(5)?,
        progress: json(6)?,
        history: json(7)?.unwrap_or_else(|| serde_json::json!([])),
        error: row.get(8)?,
        model_version: row.get(9)?,
        attempts: row.get(10)?,
    })
}

impl JobStore for Database {
    fn enqueue(&self, request: &serde_json::Value, max_queued: usize) -> Result<Option<(i64, usize)>, StorageError> {
        let text = request.to_string();
        self.with_sync(|c| {
            let tx = c.transaction()?;
            let queued: usize = tx.query_row("SELECT count(*) FROM jobs WHERE state = 'queued'", [], |r| r.get(0))?;
            if queued >= max_queued {
                return Ok(None);
            }
            tx.execute("INSERT INTO jobs (state, request) VALUES ('queued', ?1)", [text])?;
            let id = tx.last_insert_rowid();
            tx.commit()?;
            Ok(Some((id, queued + 1)))
        })
    }

    fn claim_next(&self, lease: &Lease) -> Result<Option<Claimed>, StorageError> {
        self.with_sync(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let next: Option<(i64, String)> = tx
                .query_row(
                    &format!(
                        "SELECT id, state FROM jobs WHERE state = 'queued' OR (state = 'running' AND {LEASE_EXPIRED}) ORDER BY id LIMIT 1"
                    ),
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((id, state)) = next else { return Ok(None) };
            tx.execute(
                &format!(
                    "UPDATE jobs SET state = 'running', started_at = coalesce(started_at, {NOW}), attempts = attempts + 1,
                         lease_owner = ?2, lease_expires_at = {NOW_MS} + ?3 WHERE id = ?1"
                ),
                params![id, lease.owner, lease.duration.as_millis() as i64],
            )?;
            let job = tx.query_row(&format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"), [id], record)?;
            tx.commit()?;
            Ok(Some(Claimed { job, taken_over: state == "running" }))
        })
    }

    fn check_lease(&self, id: i64, lease: &Lease, renew: bool) -> Result<LeaseStatus, StorageError> {
        self.with_sync(|c| {
            let cancel_requested: Option<bool> = c
                .query_row(
                    &format!(
                        "UPDATE jobs SET lease_expires_at = CASE WHEN ?3 THEN {NOW_MS} + ?4 ELSE lease_expires_at END
                         WHERE id = ?1 AND state = 'running' AND lease_owner = ?2 RETURNING cancel_requested"
                    ),
                    params![id, lease.owner, renew, lease.duration.as_millis() as i64],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(match cancel_requested {
                None => LeaseStatus::Lost,
                Some(true) => LeaseStatus::CancelRequested,
                Some(false) => LeaseStatus::Held,
            })
        })
    }

    fn get(&self, id: i64) -> Result<Option<JobRecord>, StorageError> {
        self.with_sync(|c| c.query_row(&format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"), [id], record).optional())
    }

    fn list(&self, state: Option<JobState>, limit: usize, offset: usize) -> Result<Vec<JobRecord>, StorageError> {
        self.with_sync(|c| {
            let mut statement =
                c.prepare(&format!("SELECT {COLUMNS} FROM jobs WHERE (?1 IS NULL OR state = ?1) ORDER BY id DESC LIMIT ?2 OFFSET ?3"))?;
            let rows = statement.query_map(params![state.map(JobState::as_str), limit as i64, offset as i64], record)?;
            rows.collect()
        })
    }

    fn queue_position(&self, id: i64) -> Result<Option<usize>, StorageError> {
        self.with_sync(|c| {
            let queued: bool =
                c.query_row("SELECT state = 'queued' FROM jobs WHERE id = ?1", [id], |r| r.get(0)).optional()?.unwrap_or(false);
            if !queued {
                return Ok(None);
            }
            c.query_row("SELECT count(*) FROM jobs WHERE state = 'queued' AND id <= ?1", [id], |r| r.get(0)).map(Some)
        })
    }

    fn record_progress(
        &self,
        id: i64,
        owner: &str,
        progress: &serde_json::Value,
        history: &serde_json::Value,
    ) -> Result<bool, StorageError> {
        self.with_sync(|c| {
            c.execute(
                "UPDATE jobs SET progress = ?3, history = ?4 WHERE id = ?1 AND state = 'running' AND lease_owner = ?2",
                params![id, owner, progress.to_string(), history.to_string()],
            )
            .map(|changed| changed == 1)
        })
    }

    fn finish(&self, id: i64, owner: &str, state: JobState, error: Option<&str>, model_version: Option<u32>) -> Result<bool, StorageError> {
        self.with_sync(|c| {
            c.execute(
                &format!(
                    "UPDATE jobs SET state = ?3, error = ?4, model_version = ?5, finished_at = {NOW}, lease_expires_at = NULL
                     WHERE id = ?1 AND state = 'running' AND lease_owner = ?2"
                ),
                params![id, owner, state.as_str(), error, model_version],
            )
            .map(|changed| changed == 1)
        })
    }

    fn cancel(&self, id: i64) -> Result<CancelOutcome, StorageError> {
        self.with_sync(|c| {
            let tx = c.transaction()?;
            let found: Option<(String, bool)> = tx
                .query_row(&format!("SELECT state, {LEASE_EXPIRED} FROM jobs WHERE id = ?1"), [id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let cancel_now = || {
                tx.execute(
                    &format!("UPDATE jobs SET state = 'cancelled', finished_at = {NOW}, lease_expires_at = NULL WHERE id = ?1"),
                    [id],
                )
            };
            let outcome = match found.as_ref().map(|(state, expired)| (JobState::parse(state), *expired)) {
                None => CancelOutcome::NotFound,
                // No live worker holds it: nobody else would stop it.
                Some((Some(JobState::Queued), _)) | Some((Some(JobState::Running), true)) => {
                    cancel_now()?;
                    CancelOutcome::Cancelled
                }
                Some((Some(JobState::Running), false)) => {
                    tx.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?1", [id])?;
                    CancelOutcome::Stopping
                }
                Some((Some(done), _)) => CancelOutcome::AlreadyFinished(done),
                Some((None, _)) => CancelOutcome::AlreadyFinished(JobState::Interrupted),
            };
            tx.commit()?;
            Ok(outcome)
        })
    }

    fn release_leases(&self, owner_prefix: &str) -> Result<usize, StorageError> {
        self.with_sync(|c| {
            c.execute(
                "UPDATE jobs SET lease_owner = NULL, lease_expires_at = NULL
                 WHERE state = 'running' AND substr(lease_owner, 1, length(?1)) = ?1",
                [owner_prefix],
            )
        })
    }

    fn count_by_state(&self) -> Result<Vec<(JobState, u64)>, StorageError> {
        self.with_sync(|c| {
            let mut statement = c.prepare("SELECT state, count(*) FROM jobs GROUP BY state")?;
            let rows = statement.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))?;
            Ok(rows.filter_map(|row| row.ok().and_then(|(state, n)| Some((JobState::parse(&state)?, n)))).collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(owner: &str, millis: u64) -> Lease {
        Lease { owner: owner.into(), duration: Duration::from_millis(millis) }
    }

    #[test]
    fn a_job_goes_through_its_states_in_fifo_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(&dir.path().join("jobs.db")).unwrap();
        let worker = lease("a", 60_000);
        let request = serde_json::json!({"name": "a"});
        assert_eq!(db.enqueue(&request, 2).unwrap(), Some((1, 1)));
        assert_eq!(db.enqueue(&request, 2).unwrap(), Some((2, 2)));
        assert_eq!(db.enqueue(&request, 2).unwrap(), None, "queue full");
        assert_eq!(db.queue_position(2).unwrap(), Some(2));

        let first = db.claim_next(&worker).unwrap().unwrap();
        assert_eq!((first.job.id, first.job.state, first.job.attempts, first.taken_over), (1, JobState::Running, 1, false));
        assert_eq!(db.queue_position(2).unwrap(), Some(1));
        assert_eq!(db.check_lease(1, &worker, true).unwrap(), LeaseStatus::Held);
        assert_eq!(db.cancel(1).unwrap(), CancelOutcome::Stopping);
        assert_eq!(db.check_lease(1, &worker, false).unwrap(), LeaseStatus::CancelRequested, "a cancel reaches the worker");
        assert_eq!(db.cancel(2).unwrap(), CancelOutcome::Cancelled);
        assert_eq!(db.claim_next(&worker).unwrap().map(|c| c.job.id), None, "a held job is not claimed again");

        assert!(db.record_progress(1, "a", &serde_json::json!({"epoch": 1}), &serde_json::json!([{"epoch": 1}])).unwrap());
        assert!(db.finish(1, "a", JobState::Succeeded, None, Some(3)).unwrap());
        let done = db.get(1).unwrap().unwrap();
        assert_eq!((done.state, done.model_version, done.history), (JobState::Succeeded, Some(3), serde_json::json!([{"epoch": 1}])));
        assert!(done.finished_at.is_some());
        assert_eq!(db.check_lease(1, &worker, true).unwrap(), LeaseStatus::Lost, "a finished job has no lease");
        assert_eq!(db.cancel(1).unwrap(), CancelOutcome::AlreadyFinished(JobState::Succeeded));
        assert_eq!(db.cancel(99).unwrap(), CancelOutcome::NotFound);
        assert_eq!(db.list(Some(JobState::Cancelled), 10, 0).unwrap().len(), 1);
        assert_eq!(db.list(None, 1, 1).unwrap()[0].id, 1, "newest first, paginated");
        let mut counts = db.count_by_state().unwrap();
        counts.sort_by_key(|(state, _)| state.as_str());
        assert_eq!(counts, [(JobState::Cancelled, 1), (JobState::Succeeded, 1)]);
    }

    #[test]
    fn an_expired_lease_passes_the_job_to_another_worker_and_fences_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(&dir.path().join("jobs.db")).unwrap();
        db.enqueue(&serde_json::json!({"name": "a"}), 4).unwrap();
        let (dying, survivor) = (lease("dying", 30), lease("survivor", 60_000));
        db.claim_next(&dying).unwrap().unwrap();
        assert!(db.record_progress(1, "dying", &serde_json::json!({"epoch": 1}), &serde_json::json!([{"epoch": 1}])).unwrap());
        assert!(db.claim_next(&survivor).unwrap().is_none(), "the lease still holds");
        std::thread::sleep(Duration::from_millis(60));

        let taken = db.claim_next(&survivor).unwrap().unwrap();
        assert!(taken.taken_over);
        assert_eq!((taken.job.id, taken.job.attempts, taken.job.history), (1, 2, serde_json::json!([{"epoch": 1}])));
        // The first worker, back from a pause, finds its lease gone and can write nothing.
        assert_eq!(db.check_lease(1, &dying, true).unwrap(), LeaseStatus::Lost);
        assert!(!db.record_progress(1, "dying", &serde_json::json!({"epoch": 2}), &serde_json::json!([])).unwrap());
        assert!(!db.finish(1, "dying", JobState::Failed, Some("late"), None).unwrap());
        assert!(db.finish(1, "survivor", JobState::Succeeded, None, Some(1)).unwrap());
        assert_eq!(db.get(1).unwrap().unwrap().state, JobState::Succeeded);
    }

    #[test]
    fn a_stopping_process_hands_its_jobs_over_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(&dir.path().join("jobs.db")).unwrap();
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
    }

    #[test]
    fn cancelling_a_job_whose_worker_died_ends_it_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(&dir.path().join("jobs.db")).unwrap();
        db.enqueue(&serde_json::json!({"name": "a"}), 4).unwrap();
        db.claim_next(&lease("dead", 0)).unwrap().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(db.cancel(1).unwrap(), CancelOutcome::Cancelled);
        assert!(db.claim_next(&lease("b", 1000)).unwrap().is_none());
    }

    #[test]
    fn many_workers_on_one_file_each_claim_a_job_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        let db = Database::open(&path).unwrap();
        for _ in 0..40 {
            db.enqueue(&serde_json::json!({}), 100).unwrap();
        }
        // Separate connections, as separate processes would have.
        let claimed: Vec<i64> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|n| {
                    let db = Database::open(&path).unwrap();
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
        assert_eq!(sorted, (1..=40).collect::<Vec<_>>(), "every job claimed exactly once");
    }
}
