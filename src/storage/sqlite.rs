//! The embedded backend: one SQLite file in WAL mode, for a single machine (several processes
//! on it may share the file; SQLite's locks do not hold over a network filesystem).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, Row};
use rusqlite_migration::{Migrations, M};

use super::jobs::{cancel_outcome, CancelOutcome, Claimed, JobRecord, JobState, JobStore, Lease, LeaseStatus};
use super::{Backend, StorageError};

/// Schema history; append only, never edit a released step.
fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(
            "CREATE TABLE service_starts (
                 id INTEGER PRIMARY KEY,
                 started_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
                 version TEXT NOT NULL,
                 device TEXT NOT NULL
             );",
        ),
        M::up(
            "CREATE TABLE jobs (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted')),
                 request TEXT NOT NULL,
                 created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
                 started_at TEXT,
                 finished_at TEXT,
                 progress TEXT,
                 history TEXT NOT NULL DEFAULT '[]',
                 error TEXT,
                 model_version INTEGER,
                 attempts INTEGER NOT NULL DEFAULT 0
             );
             CREATE INDEX jobs_by_state ON jobs (state, id);",
        ),
        M::up("CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);"),
        // Leases: the worker that runs a job holds it until `lease_expires_at` (Unix ms, the
        // database's clock) and renews it; an expired lease lets any worker take the job over.
        M::up(
            "ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
             ALTER TABLE jobs ADD COLUMN lease_expires_at INTEGER;
             ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;",
        ),
    ])
}

pub(super) struct Sqlite {
    path: PathBuf,
    connection: Mutex<Connection>,
}

impl Sqlite {
    pub(super) fn open(path: &Path) -> Result<Self, StorageError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StorageError::CreateDir { path: dir.to_path_buf(), source })?;
        }
        let sqlite = |source| StorageError::Sqlite { path: path.to_path_buf(), source };
        let mut connection = Connection::open(path).map_err(sqlite)?;
        connection.pragma_update(None, "journal_mode", "WAL").map_err(sqlite)?;
        connection.pragma_update(None, "synchronous", "NORMAL").map_err(sqlite)?;
        connection.pragma_update(None, "foreign_keys", "ON").map_err(sqlite)?;
        connection.busy_timeout(std::time::Duration::from_secs(5)).map_err(sqlite)?;
        migrations().to_latest(&mut connection).map_err(|source| StorageError::Migration { path: path.to_path_buf(), source })?;
        Ok(Self { path: path.to_path_buf(), connection: Mutex::new(connection) })
    }

    /// Runs `work` with the connection on this thread; callers are worker threads and the blocking pool.
    fn with_sync<T>(&self, work: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, StorageError> {
        let mut guard = self.connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        work(&mut guard).map_err(|source| StorageError::Sqlite { path: self.path.clone(), source })
    }
}

impl Backend for Sqlite {
    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }

    fn local_dir(&self) -> Option<PathBuf> {
        Some(self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf())
    }

    fn ping(&self) -> Result<(), StorageError> {
        self.with_sync(|c| c.query_row("SELECT 1", [], |_| Ok(())))
    }

    fn setting(&self, key: &str) -> Result<Option<String>, StorageError> {
        self.with_sync(|c| c.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| r.get(0)).optional())
    }

    fn set_setting(&self, key: &str, value: &str) -> Result<(), StorageError> {
        self.with_sync(|c| {
            c.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
            .map(|_| ())
        })
    }

    fn record_start(&self, version: &str, device: &str) -> Result<(), StorageError> {
        self.with_sync(|c| c.execute("INSERT INTO service_starts (version, device) VALUES (?1, ?2)", (version, device)).map(|_| ()))
    }
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

impl JobStore for Sqlite {
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
            let outcome = cancel_outcome(found.as_ref().map(|(state, expired)| (state.as_str(), *expired)));
            match outcome {
                CancelOutcome::Cancelled => tx.execute(
                    &format!("UPDATE jobs SET state = 'cancelled', finished_at = {NOW}, lease_expires_at = NULL WHERE id = ?1"),
                    [id],
                )?,
                CancelOutcome::Stopping => tx.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?1", [id])?,
                _ => 0,
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

    #[test]
    fn migrations_are_valid() {
        migrations().validate().unwrap();
    }

    #[test]
    fn opens_in_wal_mode_creating_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let db = Sqlite::open(&dir.path().join("nested/vae.db")).unwrap();
        let mode: String = db.with_sync(|c| c.query_row("PRAGMA journal_mode", [], |r| r.get(0))).unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(db.local_dir(), Some(dir.path().join("nested")));
    }
}
