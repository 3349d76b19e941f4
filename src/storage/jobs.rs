//! Training jobs in SQLite. `JobStore` is the seam for another backend (PostgreSQL, claiming
//! with `FOR UPDATE SKIP LOCKED` so several replicas can share one queue).

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

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Queued, Self::Running, Self::Succeeded, Self::Failed, Self::Cancelled, Self::Interrupted]
            .into_iter()
            .find(|s| s.as_str() == text)
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
    /// It was queued and is now cancelled.
    Cancelled,
    /// It is running; the worker stops it within one batch.
    Stopping,
    /// It had already finished in this state.
    AlreadyFinished(JobState),
    NotFound,
}

pub trait JobStore: Send + Sync {
    /// Adds a queued job unless `max_queued` are already waiting; returns its id and 1-based queue position.
    fn enqueue(&self, request: &serde_json::Value, max_queued: usize) -> Result<Option<(i64, usize)>, StorageError>;
    /// Takes the oldest queued job and marks it running.
    fn claim_next(&self) -> Result<Option<JobRecord>, StorageError>;
    fn get(&self, id: i64) -> Result<Option<JobRecord>, StorageError>;
    /// Newest first.
    fn list(&self, state: Option<JobState>, limit: usize, offset: usize) -> Result<Vec<JobRecord>, StorageError>;
    fn queue_position(&self, id: i64) -> Result<Option<usize>, StorageError>;
    fn record_progress(&self, id: i64, progress: &serde_json::Value, history: &serde_json::Value) -> Result<(), StorageError>;
    fn finish(&self, id: i64, state: JobState, error: Option<&str>, model_version: Option<u32>) -> Result<(), StorageError>;
    fn cancel(&self, id: i64) -> Result<CancelOutcome, StorageError>;
    /// After a crash: running jobs go back to the front of the queue to resume from their checkpoints.
    fn requeue_running(&self) -> Result<usize, StorageError>;
}

const COLUMNS: &str = "id, state, request, created_at, started_at, finished_at, progress, history, error, model_version, attempts";
const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

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

    fn claim_next(&self) -> Result<Option<JobRecord>, StorageError> {
        self.with_sync(|c| {
            let tx = c.transaction()?;
            let id: Option<i64> =
                tx.query_row("SELECT id FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1", [], |r| r.get(0)).optional()?;
            let Some(id) = id else { return Ok(None) };
            tx.execute(
                &format!(
                    "UPDATE jobs SET state = 'running', started_at = coalesce(started_at, {NOW}), attempts = attempts + 1 WHERE id = ?1"
                ),
                [id],
            )?;
            let job = tx.query_row(&format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"), [id], record)?;
            tx.commit()?;
            Ok(Some(job))
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

    fn record_progress(&self, id: i64, progress: &serde_json::Value, history: &serde_json::Value) -> Result<(), StorageError> {
        self.with_sync(|c| {
            c.execute("UPDATE jobs SET progress = ?2, history = ?3 WHERE id = ?1", params![id, progress.to_string(), history.to_string()])
                .map(|_| ())
        })
    }

    fn finish(&self, id: i64, state: JobState, error: Option<&str>, model_version: Option<u32>) -> Result<(), StorageError> {
        self.with_sync(|c| {
            c.execute(
                &format!("UPDATE jobs SET state = ?2, error = ?3, model_version = ?4, finished_at = {NOW} WHERE id = ?1"),
                params![id, state.as_str(), error, model_version],
            )
            .map(|_| ())
        })
    }

    fn cancel(&self, id: i64) -> Result<CancelOutcome, StorageError> {
        self.with_sync(|c| {
            let tx = c.transaction()?;
            let state: Option<String> = tx.query_row("SELECT state FROM jobs WHERE id = ?1", [id], |r| r.get(0)).optional()?;
            let outcome = match state.as_deref().and_then(JobState::parse) {
                None => CancelOutcome::NotFound,
                Some(JobState::Queued) => {
                    tx.execute(&format!("UPDATE jobs SET state = 'cancelled', finished_at = {NOW} WHERE id = ?1"), [id])?;
                    CancelOutcome::Cancelled
                }
                Some(JobState::Running) => CancelOutcome::Stopping,
                Some(done) => CancelOutcome::AlreadyFinished(done),
            };
            tx.commit()?;
            Ok(outcome)
        })
    }

    fn requeue_running(&self) -> Result<usize, StorageError> {
        self.with_sync(|c| c.execute("UPDATE jobs SET state = 'queued' WHERE state = 'running'", []))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_goes_through_its_states_in_fifo_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(&dir.path().join("jobs.db")).unwrap();
        let request = serde_json::json!({"name": "a"});
        assert_eq!(db.enqueue(&request, 2).unwrap(), Some((1, 1)));
        assert_eq!(db.enqueue(&request, 2).unwrap(), Some((2, 2)));
        assert_eq!(db.enqueue(&request, 2).unwrap(), None, "queue full");
        assert_eq!(db.queue_position(2).unwrap(), Some(2));

        let first = db.claim_next().unwrap().unwrap();
        assert_eq!((first.id, first.state, first.attempts), (1, JobState::Running, 1));
        assert_eq!(db.queue_position(2).unwrap(), Some(1));
        assert_eq!(db.cancel(1).unwrap(), CancelOutcome::Stopping);
        assert_eq!(db.cancel(2).unwrap(), CancelOutcome::Cancelled);
        assert_eq!(db.claim_next().unwrap().map(|j| j.id), None);

        db.record_progress(1, &serde_json::json!({"epoch": 1}), &serde_json::json!([{"epoch": 1}])).unwrap();
        // A crash: the running job is queued again and claimed with a second attempt.
        assert_eq!(db.requeue_running().unwrap(), 1);
        let again = db.claim_next().unwrap().unwrap();
        assert_eq!((again.id, again.attempts, again.history.clone()), (1, 2, serde_json::json!([{"epoch": 1}])));
        db.finish(1, JobState::Succeeded, None, Some(3)).unwrap();
        let done = db.get(1).unwrap().unwrap();
        assert_eq!((done.state, done.model_version), (JobState::Succeeded, Some(3)));
        assert!(done.finished_at.is_some());
        assert_eq!(db.cancel(1).unwrap(), CancelOutcome::AlreadyFinished(JobState::Succeeded));
        assert_eq!(db.cancel(99).unwrap(), CancelOutcome::NotFound);
        assert_eq!(db.list(Some(JobState::Cancelled), 10, 0).unwrap().len(), 1);
        assert_eq!(db.list(None, 1, 1).unwrap()[0].id, 1, "newest first, paginated");
    }
}
