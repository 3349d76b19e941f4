//! The service's embedded database: SQLite in WAL mode, schema migrations applied at open.
//! Training jobs live here (see `jobs.rs`), behind the `JobStore` trait.

pub mod jobs;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension};
use rusqlite_migration::{Migrations, M};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot create the database directory {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("database {path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error("database {path}: migration failed: {source}")]
    Migration { path: PathBuf, source: rusqlite_migration::Error },
    #[error("database task failed: {0}")]
    Task(String),
}

/// Settings key of the default model chosen over the API.
pub const DEFAULT_MODEL_SETTING: &str = "default_model";

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

/// A shared handle; queries run on the blocking pool so they never stall the async runtime.
#[derive(Clone)]
pub struct Database {
    path: PathBuf,
    connection: Arc<Mutex<Connection>>,
}

impl Database {
    pub fn open(path: &Path) -> Result<Self, StorageError> {
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
        Ok(Self { path: path.to_path_buf(), connection: Arc::new(Mutex::new(connection)) })
    }

    /// Runs `work` with the connection on this thread (for worker threads and the blocking pool).
    pub fn with_sync<T>(&self, work: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, StorageError> {
        let mut guard = self.connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        work(&mut guard).map_err(|source| StorageError::Sqlite { path: self.path.clone(), source })
    }

    /// Runs `work` with the connection on the blocking pool.
    pub async fn with<T, F>(&self, work: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let connection = self.connection.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let guard = connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&guard).map_err(|source| StorageError::Sqlite { path, source })
        })
        .await
        .map_err(|e| StorageError::Task(e.to_string()))?
    }

    /// Succeeds when the database answers a query.
    pub async fn ping(&self) -> Result<(), StorageError> {
        self.with(|c| c.query_row("SELECT 1", [], |_| Ok(()))).await
    }

    pub async fn setting(&self, key: &'static str) -> Result<Option<String>, StorageError> {
        self.with(move |c| c.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| r.get(0)).optional()).await
    }

    pub async fn set_setting(&self, key: &'static str, value: String) -> Result<(), StorageError> {
        self.with(move |c| {
            c.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
            .map(|_| ())
        })
        .await
    }

    /// Records a service start (kept as an audit trail of versions and devices that ran on this data).
    pub async fn record_start(&self, device: String) -> Result<(), StorageError> {
        self.with(move |c| {
            c.execute("INSERT INTO service_starts (version, device) VALUES (?1, ?2)", (env!("CARGO_PKG_VERSION"), device)).map(|_| ())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid() {
        migrations().validate().unwrap();
    }

    #[tokio::test]
    async fn opens_in_wal_mode_and_records_starts() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(&dir.path().join("nested/vae.db")).unwrap();
        db.ping().await.unwrap();
        db.record_start("Cpu".into()).await.unwrap();
        let (mode, starts): (String, i64) = db
            .with(|c| {
                let mode = c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
                let starts = c.query_row("SELECT count(*) FROM service_starts", [], |r| r.get(0))?;
                Ok((mode, starts))
            })
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(starts, 1);
    }
}
