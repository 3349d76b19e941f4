//! What the service stores (jobs, settings such as the default model, service starts), behind one
//! handle whichever database holds it: an embedded SQLite file for one machine, or PostgreSQL,
//! which several replicas on several machines share. The location picks the backend; nothing
//! outside this module knows which one it got.

pub mod cluster;
pub mod jobs;
mod postgres;
mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;

use jobs::JobStore;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot create the database directory {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("database {path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error("database {path}: migration failed: {source}")]
    Migration { path: PathBuf, source: rusqlite_migration::Error },
    /// `target` names the server and database, never the password.
    #[error("database {target}: {message}")]
    Postgres { target: String, message: String },
    /// The server cannot be reached (down, restarting, network lost); worth retrying later.
    #[error("database {target} is unreachable: {message}")]
    Unreachable { target: String, message: String },
    #[error("database URL {url:?} is not valid: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("database task failed: {0}")]
    Task(String),
}

impl StorageError {
    /// Whether the database is away for now rather than the request being at fault.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }
}

/// Settings key of the default model chosen over the API.
pub const DEFAULT_MODEL_SETTING: &str = "default_model";

/// Where the data lives: a `postgres://` (or `postgresql://`) URL, otherwise a SQLite file path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Location {
    pub fn parse(text: &str) -> Self {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Self::Postgres(text.to_string())
        } else {
            Self::Sqlite(PathBuf::from(text))
        }
    }
}

/// What each backend provides besides jobs. Synchronous: `Database` runs these calls on the
/// blocking pool for async callers, and worker threads call the job store directly.
trait Backend: JobStore {
    /// The database as logs may show it (a path, or user@host:port/db without the password).
    fn describe(&self) -> String;
    /// The directory that holds the database file, if it is one.
    fn local_dir(&self) -> Option<PathBuf>;
    fn ping(&self) -> Result<(), StorageError>;
    fn setting(&self, key: &str) -> Result<Option<String>, StorageError>;
    fn set_setting(&self, key: &str, value: &str) -> Result<(), StorageError>;
    fn record_start(&self, version: &str, device: &str) -> Result<(), StorageError>;
}

/// A shared handle to the service's database; cheap to clone.
#[derive(Clone)]
pub struct Database {
    backend: Arc<dyn Backend>,
}

impl Database {
    /// Opens (creating if needed) the database at `location` and brings its schema up to date.
    pub async fn open(location: &str) -> Result<Self, StorageError> {
        let location = location.to_string();
        tokio::task::spawn_blocking(move || Self::open_blocking(&location)).await.map_err(|e| StorageError::Task(e.to_string()))?
    }

    /// `open` for a caller outside the async runtime.
    pub fn open_blocking(location: &str) -> Result<Self, StorageError> {
        let backend: Arc<dyn Backend> = match Location::parse(location) {
            Location::Sqlite(path) => Arc::new(sqlite::Sqlite::open(&path)?),
            Location::Postgres(url) => Arc::new(postgres::Postgres::open(&url)?),
        };
        Ok(Self { backend })
    }

    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// The directory that holds a SQLite file; none for a database server.
    pub fn local_dir(&self) -> Option<PathBuf> {
        self.backend.local_dir()
    }

    /// The job queue's view of this database.
    pub fn jobs(&self) -> Arc<dyn JobStore> {
        self.backend.clone()
    }

    /// Runs `work` on the blocking pool, so that a query never stalls the async runtime.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&dyn Backend) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let backend = self.backend.clone();
        tokio::task::spawn_blocking(move || work(&*backend)).await.map_err(|e| StorageError::Task(e.to_string()))?
    }

    /// Succeeds when the database answers a query.
    pub async fn ping(&self) -> Result<(), StorageError> {
        self.blocking(|b| b.ping()).await
    }

    pub async fn setting(&self, key: &'static str) -> Result<Option<String>, StorageError> {
        self.blocking(move |b| b.setting(key)).await
    }

    pub async fn set_setting(&self, key: &'static str, value: String) -> Result<(), StorageError> {
        self.blocking(move |b| b.set_setting(key, &value)).await
    }

    /// Records a service start (kept as an audit trail of versions and devices that ran on this data).
    pub async fn record_start(&self, device: String) -> Result<(), StorageError> {
        self.blocking(move |b| b.record_start(env!("CARGO_PKG_VERSION"), &device)).await
    }
}

/// Where each backend keeps a fresh database, for tests whose bodies must hold for both: a
/// SQLite file in `dir` and a database on a throw-away PostgreSQL cluster (alive while the
/// returned guard is).
#[cfg(test)]
pub(crate) fn test_locations(dir: &std::path::Path) -> (cluster::PostgresCluster, [String; 2]) {
    let cluster = cluster::PostgresCluster::start().expect("a throw-away PostgreSQL cluster");
    let postgres = cluster.create_database("vae").unwrap();
    (cluster, [dir.join("vae.db").to_string_lossy().into_owned(), postgres])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_picks_postgres_and_anything_else_is_a_file() {
        assert_eq!(Location::parse("postgres://u@h:5/db"), Location::Postgres("postgres://u@h:5/db".into()));
        assert_eq!(Location::parse("postgresql://h/db"), Location::Postgres("postgresql://h/db".into()));
        assert_eq!(Location::parse("./data/vae.db"), Location::Sqlite("./data/vae.db".into()));
    }

    #[tokio::test]
    async fn both_backends_keep_settings_and_record_starts() {
        let dir = tempfile::tempdir().unwrap();
        let (_cluster, locations) = test_locations(dir.path());
        for name in locations {
            let db = Database::open(&name).await.unwrap();
            db.ping().await.unwrap();
            db.record_start("Cpu".into()).await.unwrap();
            assert_eq!(db.setting(DEFAULT_MODEL_SETTING).await.unwrap(), None, "{name}");
            db.set_setting(DEFAULT_MODEL_SETTING, "a".into()).await.unwrap();
            db.set_setting(DEFAULT_MODEL_SETTING, "b".into()).await.unwrap();
            assert_eq!(db.setting(DEFAULT_MODEL_SETTING).await.unwrap().as_deref(), Some("b"), "{name}: the last choice wins");
        }
    }
}
