//! The shared backend: a PostgreSQL database that replicas on several machines use at once.
//! Claims skip rows that another claim holds (`FOR UPDATE SKIP LOCKED`); leases are measured by
//! the server's clock, so replicas' clocks need not agree.
//!
//! The job queue calls storage from plain threads, so this backend is synchronous on the
//! outside: a small runtime of its own drives the pool's connections, and every call blocks its
//! caller until the answer comes (the async API runs it on the blocking pool).

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::Host;
use tokio_postgres::{NoTls, Row};

use super::jobs::{cancel_outcome, CancelOutcome, Claimed, JobRecord, JobState, JobStore, Lease, LeaseStatus};
use super::{Backend, StorageError};

/// Schema history; append only, never edit a released step. Applied in order under an advisory
/// lock, so that replicas starting together migrate once.
const MIGRATIONS: &[&str] = &["CREATE TABLE service_starts (
         id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
         started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
         version TEXT NOT NULL,
         device TEXT NOT NULL
     );
     CREATE TABLE jobs (
         id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
         state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted')),
         request JSONB NOT NULL,
         created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
         started_at TIMESTAMPTZ,
         finished_at TIMESTAMPTZ,
         progress JSONB,
         history JSONB NOT NULL DEFAULT '[]',
         error TEXT,
         model_version INTEGER,
         attempts INTEGER NOT NULL DEFAULT 0,
         lease_owner TEXT,
         lease_expires_at TIMESTAMPTZ,
         cancel_requested BOOLEAN NOT NULL DEFAULT false
     );
     CREATE INDEX jobs_by_state ON jobs (state, id);
     CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);"];

/// Advisory lock keys (any constants unique to this service): schema changes, and enqueueing
/// (whose queue-length check must not race another replica's).
const MIGRATION_LOCK: i64 = 0x7661_6573_0001;
const ENQUEUE_LOCK: i64 = 0x7661_6573_0002;

/// The longest any one call may take before it counts as the database being gone.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Timestamps as SQLite stores them, so that both backends answer alike.
macro_rules! iso {
    ($column:literal) => {
        concat!("to_char(", $column, " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
    };
}
const COLUMNS: &str = concat!(
    "jobs.id, jobs.state, jobs.request, ",
    iso!("jobs.created_at"),
    ", ",
    iso!("jobs.started_at"),
    ", ",
    iso!("jobs.finished_at"),
    ", jobs.progress, jobs.history, jobs.error, jobs.model_version, jobs.attempts"
);
/// A running job whose lease is gone, by the server's clock; one left by a crash mid-claim has none.
const LEASE_EXPIRED: &str = "coalesce(lease_expires_at, '-infinity') < now()";

fn record(row: &Row) -> JobRecord {
    let state: String = row.get(1);
    JobRecord {
        id: row.get(0),
        state: JobState::parse(&state).unwrap_or(JobState::Interrupted),
        request: row.get(2),
        created_at: row.get(3),
        started_at: row.get(4),
        finished_at: row.get(5),
        progress: row.get(6),
        history: row.get(7),
        error: row.get(8),
        model_version: row.get::<_, Option<i32>>(9).map(|v| v as u32),
        attempts: row.get::<_, i32>(10) as u32,
    }
}

fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// A runtime that can be dropped anywhere, an async context included.
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

pub(super) struct Postgres {
    pool: Pool,
    /// `postgres://user@host:port/db`: what logs and errors show (never the password).
    target: String,
    // Declared last: dropped after the pool, whose connections it drives.
    runtime: OwnRuntime,
}

/// `user@host:port/db` of a connection config, for messages.
fn describe_config(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(host, port)| match host {
            Host::Tcp(name) => format!("{name}:{port}"),
            Host::Unix(path) => format!("{}:{port}", path.display()),
        })
        .collect();
    format!(
        "postgres://{}@{}/{}",
        config.get_user().unwrap_or(""),
        if hosts.is_empty() { "localhost:5432".to_string() } else { hosts.join(",") },
        config.get_dbname().unwrap_or("")
    )
}

/// The URL with any password replaced, for the message that rejects it.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((credentials, host)) if credentials.contains(':') => {
            let user = credentials.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{}", &rest[authority_end..])
        }
        _ => url.to_string(),
    }
}

impl Postgres {
    pub(super) fn open(url: &str) -> Result<Self, StorageError> {
        let invalid = |reason: String| StorageError::InvalidUrl { url: redact(url), reason };
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| invalid(e.to_string()))?;
        if config.get_password().is_some() && url.contains("password=") {
            // Key-value passwords are as secret as URL ones; the redaction above does not see them.
            return Err(invalid("give the password in the URL's user:password@ part or in PGPASSWORD".into()));
        }
        if config.get_password().is_none() {
            if let Ok(password) = std::env::var("PGPASSWORD") {
                config.password(password);
            }
        }
        config.connect_timeout(Duration::from_secs(5));
        config.application_name("vae-serve");
        let target = describe_config(&config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("postgres")
            .enable_all()
            .build()
            .map_err(|e| StorageError::Postgres { target: target.clone(), message: format!("cannot start its runtime: {e}") })?;
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let timeout = Some(Duration::from_secs(5));
        let pool = {
            let _context = runtime.enter();
            Pool::builder(manager)
                .max_size(8)
                .runtime(Runtime::Tokio1)
                .wait_timeout(timeout)
                .create_timeout(timeout)
                .recycle_timeout(timeout)
                .build()
                .map_err(|e| StorageError::Postgres { target: target.clone(), message: e.to_string() })?
        };
        let postgres = Self { pool, target, runtime: OwnRuntime(Some(runtime)) };
        postgres.migrate()?;
        Ok(postgres)
    }

    /// Runs `work` with a pooled connection on this backend's runtime and waits for it.
    fn call<T, F>(&self, work: impl FnOnce(deadpool_postgres::Object) -> F) -> Result<T, StorageError>
    where
        F: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let unreachable = |message: String| StorageError::Unreachable { target: self.target.clone(), message };
        let runtime = self.runtime.0.as_ref().expect("the runtime lives as long as the backend");
        runtime.block_on(async {
            let answer = tokio::time::timeout(CALL_TIMEOUT, async {
                let client = self.pool.get().await.map_err(|e| unreachable(e.to_string()))?;
                work(client).await.map_err(|e| match e.as_db_error() {
                    // The server answered with an error: the query or the data is at fault.
                    Some(_) => StorageError::Postgres { target: self.target.clone(), message: e.to_string() },
                    None => unreachable(e.to_string()),
                })
            })
            .await;
            answer.unwrap_or_else(|_| Err(unreachable(format!("no answer within {} s", CALL_TIMEOUT.as_secs()))))
        })
    }

    fn migrate(&self) -> Result<(), StorageError> {
        self.call(|mut client| async move {
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            )
            .await?;
            let applied: i32 = tx.query_one("SELECT coalesce(max(version), 0) FROM schema_migrations", &[]).await?.get(0);
            for (version, step) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
                tx.batch_execute(step).await?;
                tx.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[&(version as i32 + 1)]).await?;
            }
            tx.commit().await
        })
    }
}

impl Backend for Postgres {
    fn describe(&self) -> String {
        self.target.clone()
    }

    fn local_dir(&self) -> Option<std::path::PathBuf> {
        None
    }

    fn ping(&self) -> Result<(), StorageError> {
        self.call(|client| async move { client.simple_query("SELECT 1").await.map(|_| ()) })
    }

    fn setting(&self, key: &str) -> Result<Option<String>, StorageError> {
        self.call(|client| async move {
            let statement = client.prepare_cached("SELECT value FROM settings WHERE key = $1").await?;
            Ok(client.query_opt(&statement, &[&key]).await?.map(|row| row.get(0)))
        })
    }

    fn set_setting(&self, key: &str, value: &str) -> Result<(), StorageError> {
        self.call(|client| async move {
            let statement = client
                .prepare_cached("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
                .await?;
            client.execute(&statement, &[&key, &value]).await.map(|_| ())
        })
    }

    fn record_start(&self, version: &str, device: &str) -> Result<(), StorageError> {
        self.call(|client| async move {
            client.execute("INSERT INTO service_starts (version, device) VALUES ($1, $2)", &[&version, &device]).await.map(|_| ())
        })
    }
}

impl JobStore for Postgres {
    fn enqueue(&self, request: &serde_json::Value, max_queued: usize) -> Result<Option<(i64, usize)>, StorageError> {
        self.call(|mut client| async move {
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ENQUEUE_LOCK]).await?;
            let queued: i64 = tx.query_one("SELECT count(*) FROM jobs WHERE state = 'queued'", &[]).await?.get(0);
            if queued as usize >= max_queued {
                return Ok(None);
            }
            let id: i64 = tx.query_one("INSERT INTO jobs (state, request) VALUES ('queued', $1) RETURNING id", &[request]).await?.get(0);
            tx.commit().await?;
            Ok(Some((id, queued as usize + 1)))
        })
    }

    fn claim_next(&self, lease: &Lease) -> Result<Option<Claimed>, StorageError> {
        let query = format!(
            "WITH next AS (
                 SELECT id, state FROM jobs WHERE state = 'queued' OR (state = 'running' AND {LEASE_EXPIRED})
                 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED
             )
             UPDATE jobs SET state = 'running', started_at = coalesce(started_at, now()), attempts = attempts + 1,
                 lease_owner = $1, lease_expires_at = now() + $2 * interval '1 second'
             FROM next WHERE jobs.id = next.id
             RETURNING {COLUMNS}, next.state = 'running'"
        );
        self.call(|client| async move {
            let statement = client.prepare_cached(&query).await?;
            let row = client.query_opt(&statement, &[&lease.owner, &seconds(lease.duration)]).await?;
            Ok(row.map(|row| Claimed { job: record(&row), taken_over: row.get(11) }))
        })
    }

    fn check_lease(&self, id: i64, lease: &Lease, renew: bool) -> Result<LeaseStatus, StorageError> {
        self.call(|client| async move {
            let statement = client
                .prepare_cached(
                    "UPDATE jobs SET lease_expires_at = CASE WHEN $3 THEN now() + $4 * interval '1 second' ELSE lease_expires_at END
                     WHERE id = $1 AND state = 'running' AND lease_owner = $2 RETURNING cancel_requested",
                )
                .await?;
            let row = client.query_opt(&statement, &[&id, &lease.owner, &renew, &seconds(lease.duration)]).await?;
            Ok(match row.map(|row| row.get::<_, bool>(0)) {
                None => LeaseStatus::Lost,
                Some(true) => LeaseStatus::CancelRequested,
                Some(false) => LeaseStatus::Held,
            })
        })
    }

    fn get(&self, id: i64) -> Result<Option<JobRecord>, StorageError> {
        let query = format!("SELECT {COLUMNS} FROM jobs WHERE id = $1");
        self.call(|client| async move {
            let statement = client.prepare_cached(&query).await?;
            Ok(client.query_opt(&statement, &[&id]).await?.as_ref().map(record))
        })
    }

    fn list(&self, state: Option<JobState>, limit: usize, offset: usize) -> Result<Vec<JobRecord>, StorageError> {
        let query = format!("SELECT {COLUMNS} FROM jobs WHERE ($1::text IS NULL OR state = $1) ORDER BY id DESC LIMIT $2 OFFSET $3");
        self.call(|client| async move {
            let statement = client.prepare_cached(&query).await?;
            let rows = client.query(&statement, &[&state.map(JobState::as_str), &(limit as i64), &(offset as i64)]).await?;
            Ok(rows.iter().map(record).collect())
        })
    }

    fn queue_position(&self, id: i64) -> Result<Option<usize>, StorageError> {
        self.call(|client| async move {
            let statement = client
                .prepare_cached(
                    "SELECT CASE WHEN state = 'queued' THEN (SELECT count(*) FROM jobs q WHERE q.state = 'queued' AND q.id <= j.id) END
                     FROM jobs j WHERE id = $1",
                )
                .await?;
            let position: Option<Option<i64>> = client.query_opt(&statement, &[&id]).await?.map(|row| row.get(0));
            Ok(position.flatten().map(|n| n as usize))
        })
    }

    fn record_progress(
        &self,
        id: i64,
        owner: &str,
        progress: &serde_json::Value,
        history: &serde_json::Value,
    ) -> Result<bool, StorageError> {
        self.call(|client| async move {
            let statement = client
                .prepare_cached("UPDATE jobs SET progress = $3, history = $4 WHERE id = $1 AND state = 'running' AND lease_owner = $2")
                .await?;
            Ok(client.execute(&statement, &[&id, &owner, progress, history]).await? == 1)
        })
    }

    fn finish(&self, id: i64, owner: &str, state: JobState, error: Option<&str>, model_version: Option<u32>) -> Result<bool, StorageError> {
        let version = model_version.map(|v| v as i32);
        self.call(|client| async move {
            let statement = client
                .prepare_cached(
                    "UPDATE jobs SET state = $3, error = $4, model_version = $5, finished_at = now(), lease_expires_at = NULL
                     WHERE id = $1 AND state = 'running' AND lease_owner = $2",
                )
                .await?;
            Ok(client.execute(&statement, &[&id, &owner, &state.as_str(), &error, &version]).await? == 1)
        })
    }

    fn cancel(&self, id: i64) -> Result<CancelOutcome, StorageError> {
        let query = format!("SELECT state, {LEASE_EXPIRED} FROM jobs WHERE id = $1 FOR UPDATE");
        self.call(|mut client| async move {
            let tx = client.transaction().await?;
            let found: Option<(String, bool)> = tx.query_opt(&query, &[&id]).await?.map(|row| (row.get(0), row.get(1)));
            let outcome = cancel_outcome(found.as_ref().map(|(state, expired)| (state.as_str(), *expired)));
            match outcome {
                CancelOutcome::Cancelled => {
                    tx.execute("UPDATE jobs SET state = 'cancelled', finished_at = now(), lease_expires_at = NULL WHERE id = $1", &[&id])
                        .await?
                }
                CancelOutcome::Stopping => tx.execute("UPDATE jobs SET cancel_requested = true WHERE id = $1", &[&id]).await?,
                _ => 0,
            };
            tx.commit().await?;
            Ok(outcome)
        })
    }

    fn count_by_state(&self) -> Result<Vec<(JobState, u64)>, StorageError> {
        self.call(|client| async move {
            let statement = client.prepare_cached("SELECT state, count(*) FROM jobs GROUP BY state").await?;
            let rows = client.query(&statement, &[]).await?;
            Ok(rows.iter().filter_map(|row| Some((JobState::parse(row.get(0))?, row.get::<_, i64>(1) as u64))).collect())
        })
    }

    fn release_leases(&self, owner_prefix: &str) -> Result<usize, StorageError> {
        self.call(|client| async move {
            let released = client
                .execute(
                    "UPDATE jobs SET lease_owner = NULL, lease_expires_at = NULL WHERE state = 'running' AND starts_with(lease_owner, $1)",
                    &[&owner_prefix],
                )
                .await?;
            Ok(released as usize)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_server_and_never_the_password() {
        assert_eq!(redact("postgres://vae:s3cret@db.example:5433/jobs"), "postgres://vae:***@db.example:5433/jobs");
        assert_eq!(redact("postgres://vae@db/jobs?sslmode=disable"), "postgres://vae@db/jobs?sslmode=disable");
        let config = tokio_postgres::Config::from_str("postgres://vae:s3cret@db.example:5433/jobs").unwrap();
        assert_eq!(describe_config(&config), "postgres://vae@db.example:5433/jobs");
    }

    #[test]
    fn an_unreachable_server_fails_opening_with_its_host_and_not_the_password() {
        // Port 9 on localhost: nothing listens there.
        let error = Postgres::open("postgres://vae:s3cret@127.0.0.1:9/jobs").err().unwrap().to_string();
        assert!(error.contains("127.0.0.1:9"), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
        let error = Postgres::open("postgres://vae:s3cret@127.0.0.1:notaport/jobs").err().unwrap().to_string();
        assert!(error.contains("not valid") && !error.contains("s3cret"), "{error}");
    }

    #[test]
    fn replicas_starting_together_migrate_once() {
        let cluster = super::super::cluster::PostgresCluster::start().unwrap();
        let url = cluster.create_database("migrate").unwrap();
        let opened: Vec<_> = std::thread::scope(|scope| {
            let starts: Vec<_> = (0..4).map(|_| scope.spawn(|| Postgres::open(&url).map(|_| ()))).collect();
            starts.into_iter().map(|s| s.join().unwrap()).collect()
        });
        assert!(opened.iter().all(Result::is_ok), "{opened:?}");
        let db = Postgres::open(&url).unwrap();
        let versions: i64 =
            db.call(|c| async move { Ok(c.query_one("SELECT count(*) FROM schema_migrations", &[]).await?.get(0)) }).unwrap();
        assert_eq!(versions, MIGRATIONS.len() as i64);
    }
}
