//! Several replicas of the real binary on one database and one model folder: every job runs
//! once however many workers compete for it, a job whose replica was killed (SIGKILL) is taken
//! over when its lease expires and resumes from its checkpoint, and cancel, progress and the
//! default model cross replicas. Replicas on several machines share a PostgreSQL server (here a
//! throw-away cluster); several on one machine may also share a SQLite file.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{client, submit, tiny_job, train_tiny, wait_for_state, Server, ServerOptions, BINARY};
use serde_json::{json, Value};
use vae_serve::storage::cluster::PostgresCluster;

/// A replica on `database` and the model folder under `dir` (the harness sets a 3 s lease).
fn replica(dir: &Path, database: &str, env: &[(&str, &str)]) -> Server {
    Server::start(ServerOptions {
        models_dir: Some(dir.join("models")),
        database: Some(database.to_string()),
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    })
}

fn job(server: &Server, id: i64) -> Value {
    client().get(server.url(&format!("/v1/jobs/{id}"))).send().unwrap().json().unwrap()
}

fn id_of(response: reqwest::blocking::Response) -> i64 {
    assert_eq!(response.status(), 202);
    response.json::<Value>().unwrap()["job"]["id"].as_i64().unwrap()
}

fn sqlite_in(dir: &Path) -> String {
    dir.join("state/vae.db").to_string_lossy().into_owned()
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_killed_replicas_job_is_taken_over_and_resumed_while_cancel_progress_and_the_default_cross_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    train_tiny(&models, "tiny", "mlp");
    train_tiny(&models, "other", "mlp");
    let postgres = PostgresCluster::start().unwrap();
    let database = postgres.create_database("vae").unwrap();

    // Replica A runs both jobs before replica B exists.
    let a = replica(dir.path(), &database, &[("VAE_TRAIN_WORKERS", "2")]);
    let to_cancel = id_of(submit(&a, &tiny_job("cancelled", 500, 6000)));
    let mut long = tiny_job("taken-over", 24, 6000);
    long["options"]["model"]["hidden"] = json!([256, 128]);
    let taken = id_of(submit(&a, &long));
    wait_until("both jobs to finish an epoch on A", Duration::from_secs(120), || {
        [to_cancel, taken].iter().all(|&id| job(&a, id)["history"].as_array().is_some_and(|h| !h.is_empty()))
    });
    let b = replica(dir.path(), &database, &[]);
    b.wait_ready();

    // B streams the progress of a job that runs on A.
    let events = client().get(b.url(&format!("/v1/jobs/{taken}/events"))).send().unwrap();
    let mut lines = BufReader::new(events).lines().map_while(Result::ok).filter(|l| l.starts_with("event:"));
    assert_eq!(lines.next().as_deref(), Some("event: snapshot"));
    assert_eq!(lines.next().as_deref(), Some("event: epoch"), "an epoch finished on A reaches B's listener");

    // A cancel sent to B stops the job on A.
    let cancel = client().delete(b.url(&format!("/v1/jobs/{to_cancel}"))).send().unwrap();
    assert!(cancel.status().is_success(), "{}", cancel.status());
    let cancelled = wait_for_state(&b, to_cancel, &["cancelled", "succeeded", "failed"], Duration::from_secs(30));
    assert_eq!(cancelled["state"], "cancelled");
    assert!(a.log_contains("training job cancelled"), "A stopped it");

    // A default chosen on A is served by B within a few seconds.
    assert_eq!(client().put(a.url("/v1/models/other/default")).send().unwrap().status(), 200);
    wait_until("B to serve A's default", Duration::from_secs(10), || {
        client().get(b.url("/readyz")).send().unwrap().json::<Value>().unwrap()["default_model_id"] == "other@1"
    });

    // A dies mid-run; B takes the job over once A's lease expires and resumes from the checkpoint.
    let before = job(&b, taken);
    assert_eq!(before["state"], "running", "the job finished before the kill; make it longer: {before}");
    a.kill_hard();
    let done = wait_for_state(&b, taken, &["succeeded", "failed", "interrupted"], Duration::from_secs(240));
    assert_eq!(done["state"], "succeeded", "{done}\nB's log:\n{}", b.log.lock().unwrap());
    assert_eq!(done["attempts"], 2, "run on A, resumed on B");
    let epochs: Vec<u64> = done["history"].as_array().unwrap().iter().map(|m| m["epoch"].as_u64().unwrap()).collect();
    assert_eq!(epochs, (1..=24).collect::<Vec<_>>(), "every epoch ran once");
    assert!(b.log_contains("took over a job whose worker's lease expired"));
    assert!(b.log_contains("resuming from checkpoint"));
    let resumed_at = before["history"].as_array().unwrap().len();
    assert!((1..24).contains(&resumed_at), "killed mid-run, after an epoch");

    // The model is listed and servable on B and on a new replica in A's place.
    let a = replica(dir.path(), &database, &[]);
    a.wait_ready();
    for server in [&a, &b] {
        let versions: Value = client().get(server.url("/v1/models/taken-over")).send().unwrap().json().unwrap();
        assert_eq!(versions["versions"].as_array().unwrap().len(), 1, "published once");
        assert_eq!(client().get(server.url("/v1/models/taken-over/sample?n=2")).send().unwrap().status(), 200);
    }
    let metrics = client().get(b.url("/metrics")).send().unwrap().text().unwrap();
    assert!(metrics.contains("vae_job_leases_total{event=\"taken_over\"} 1"), "{metrics}");
    assert!(metrics.contains("vae_jobs{state=\"succeeded\"} 1"));
}

#[test]
fn four_workers_on_two_replicas_run_each_of_twenty_jobs_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    train_tiny(&dir.path().join("models"), "tiny", "mlp");
    let postgres = PostgresCluster::start().unwrap();
    let database = postgres.create_database("vae").unwrap();
    let env = [("VAE_TRAIN_WORKERS", "2"), ("VAE_MAX_QUEUED_JOBS", "32")];
    let replicas = [replica(dir.path(), &database, &env), replica(dir.path(), &database, &env)];
    let ids: Vec<i64> = (0..20).map(|n| id_of(submit(&replicas[n % 2], &tiny_job(&format!("job-{n}"), 1, 1000)))).collect();
    for &id in &ids {
        let done = wait_for_state(&replicas[0], id, &["succeeded", "failed"], Duration::from_secs(300));
        assert_eq!((done["state"].as_str(), done["attempts"].as_u64()), (Some("succeeded"), Some(1)), "{done}");
    }
    // Whichever replica published a model, both serve it without a restart.
    for n in 0..20 {
        let versions: Value = client().get(replicas[1].url(&format!("/v1/models/job-{n}"))).send().unwrap().json().unwrap();
        assert_eq!(versions["versions"].as_array().unwrap().len(), 1, "job-{n} published once");
        for replica in &replicas {
            assert_eq!(client().get(replica.url(&format!("/v1/models/job-{n}/sample?n=1"))).send().unwrap().status(), 200);
        }
    }
    let started: Vec<usize> = replicas.iter().map(|r| r.log.lock().unwrap().matches("training job started").count()).collect();
    assert_eq!(started.iter().sum::<usize>(), 20, "each job started once: {started:?}");
    assert!(started.iter().all(|&n| n > 0), "both replicas trained: {started:?}");
}

#[test]
fn an_api_replica_queues_and_a_worker_replica_trains() {
    let dir = tempfile::tempdir().unwrap();
    train_tiny(&dir.path().join("models"), "tiny", "mlp");
    let api = replica(dir.path(), &sqlite_in(dir.path()), &[("VAE_ROLE", "api")]);
    api.wait_ready();
    let id = id_of(submit(&api, &tiny_job("by-worker", 1, 500)));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(job(&api, id)["state"], "queued", "an api replica never trains");

    let worker = replica(dir.path(), &sqlite_in(dir.path()), &[("VAE_ROLE", "worker")]);
    worker.wait_ready();
    let ready: Value = client().get(worker.url("/readyz")).send().unwrap().json().unwrap();
    assert_eq!((ready["role"].as_str(), ready["status"].as_str()), (Some("worker"), Some("ready")));
    assert_eq!(client().get(worker.url("/train")).send().unwrap().status(), 404, "a worker serves no API");
    assert_eq!(client().get(worker.url("/metrics")).send().unwrap().status(), 200);
    let done = wait_for_state(&api, id, &["succeeded", "failed"], Duration::from_secs(120));
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(worker.log_contains("training job succeeded"));
    assert_eq!(client().get(api.url("/v1/models/by-worker/sample?n=1")).send().unwrap().status(), 200, "the api replica serves it");
}

#[test]
fn a_replica_stopped_gracefully_hands_its_job_over_without_waiting_for_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    train_tiny(&dir.path().join("models"), "tiny", "mlp");
    // A lease far longer than the test waits: only the hand-over can explain a quick takeover.
    let long_lease = [("VAE_JOB_LEASE_SECS", "300"), ("VAE_JOB_HEARTBEAT_SECS", "10")];
    let first = replica(dir.path(), &sqlite_in(dir.path()), &long_lease);
    let mut body = tiny_job("handed-over", 30, 6000);
    body["options"]["model"]["hidden"] = json!([256, 128]);
    let id = id_of(submit(&first, &body));
    wait_until("an epoch on the first replica", Duration::from_secs(120), || {
        job(&first, id)["history"].as_array().is_some_and(|h| !h.is_empty())
    });
    let log = first.log.clone();
    let status = first.terminate();
    assert!(status.success(), "{status:?}; log:\n{}", log.lock().unwrap());

    let second = replica(dir.path(), &sqlite_in(dir.path()), &long_lease);
    let deadline = Instant::now() + Duration::from_secs(20);
    let resumed = loop {
        let current = job(&second, id);
        if current["attempts"] == 2 {
            break current;
        }
        assert!(Instant::now() < deadline, "not taken over: {current}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(resumed["state"], "running");
    let done = wait_for_state(&second, id, &["succeeded", "failed"], Duration::from_secs(240));
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["history"].as_array().unwrap().len(), 30);
}

#[test]
fn a_replica_reports_not_ready_while_its_database_is_gone_and_recovers_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    train_tiny(&dir.path().join("models"), "tiny", "mlp");
    let postgres = PostgresCluster::start().unwrap();
    let server = replica(dir.path(), &postgres.create_database("vae").unwrap(), &[]);
    server.wait_ready();
    let readiness = || {
        let response = client().get(server.url("/readyz")).send().unwrap();
        (response.status().as_u16(), response.json::<Value>().unwrap()["storage"].as_bool())
    };
    postgres.stop_server().unwrap();
    assert_eq!(readiness(), (503, Some(false)));
    assert_eq!(client().get(server.url("/healthz")).send().unwrap().status(), 200, "alive all the same");
    let refused = submit(&server, &tiny_job("while-down", 1, 100));
    assert_eq!(refused.status(), 503, "a job cannot be queued: {}", refused.text().unwrap());
    postgres.start_server().unwrap();
    wait_until("readiness after the database returns", Duration::from_secs(15), || readiness() == (200, Some(true)));
    let id = id_of(submit(&server, &tiny_job("after", 1, 100)));
    assert_eq!(wait_for_state(&server, id, &["succeeded", "failed"], Duration::from_secs(120))["state"], "succeeded");
}

#[test]
fn an_unreachable_database_fails_start_up_naming_the_host_and_not_the_password() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 9 of this machine.
    let output = std::process::Command::new(BINARY)
        .args(["serve", "--addr", "127.0.0.1:0", "--device", "cpu", "--database", "postgres://vae:s3cret@127.0.0.1:9/jobs"])
        .arg("--models-dir")
        .arg(dir.path().join("models"))
        .env("VAE_GRPC_ADDR", "")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("postgres://vae@127.0.0.1:9/jobs"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
}
