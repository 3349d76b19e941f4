//! `vae-serve serve`: start-up order, listening and graceful shutdown.

pub mod connections;

use std::sync::Arc;

use futures_util::FutureExt;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::api::auth::AccessPolicy;
use crate::api::{self, AppState, Services};
use crate::config::{GlobalArgs, ServeArgs};
use crate::inference::ModelHost;
use crate::jobs::{JobQueue, QueueConfig};
use crate::runtime::TorchRuntime;
use crate::storage::{Database, DEFAULT_MODEL_SETTING};
use crate::telemetry::Metrics;

pub async fn serve(global: GlobalArgs, args: ServeArgs) -> anyhow::Result<()> {
    let runtime = tokio::task::spawn_blocking({
        let (device, threads) = (global.device, global.threads);
        move || TorchRuntime::init(device, threads)
    })
    .await??;
    runtime.log();
    if args.api_key.as_deref().is_none_or(str::is_empty) {
        tracing::warn!("VAE_API_KEY is not set: state-changing requests are open to anyone who can reach this address");
    }
    tracing::info!(role = ?args.role, trains = args.role.trains(), serves = args.role.serves(), "replica role");
    let storage = Database::open(&args.database).await?;
    storage.record_start(format!("{:?}", runtime.device)).await?;
    tracing::info!(database = %storage.describe(), "storage open");
    let metrics = Arc::new(Metrics::new());
    // A default chosen over the API (PUT /v1/models/{name}/default) outlives restarts.
    let default_model = storage.setting(DEFAULT_MODEL_SETTING).await?.unwrap_or_else(|| args.default_model.clone());
    tracing::info!(default_model = %default_model, "default model");
    let models = ModelHost::new(args.models_dir.clone(), default_model, runtime.device, args.batching(), metrics.clone());
    if args.role.serves() {
        // Loading right away makes readiness follow start-up closely.
        models.preload_default();
    }
    let jobs_dir = args.jobs_dir.clone().unwrap_or_else(|| {
        let beside = storage.local_dir().or_else(|| args.models_dir.parent().map(std::path::Path::to_path_buf));
        beside.unwrap_or_default().join("jobs")
    });
    let (lease, heartbeat) = args.job_lease()?;
    let jobs = JobQueue::start(
        storage.jobs(),
        QueueConfig {
            workers: if args.role.trains() { args.train_workers.max(1) } else { 0 },
            max_queued: args.max_queued_jobs,
            max_epochs: args.max_epochs,
            max_train_images: args.max_train_images,
            data_dir: global.data_dir.clone(),
            models_dir: args.models_dir.clone(),
            jobs_dir,
            device: runtime.device,
            threads: runtime.cpu_threads,
            lease,
            heartbeat,
        },
        metrics.clone(),
    )?;
    let state = AppState::new(Services {
        storage,
        models,
        jobs,
        models_dir: Arc::from(args.models_dir.as_path()),
        data_dir: Arc::from(global.data_dir.as_path()),
        metrics: metrics.clone(),
        runtime: Arc::new(runtime),
        role: args.role,
    });
    if args.role.serves() {
        tokio::spawn(follow_default_model(state.storage.clone(), state.models.clone()));
    }
    let jobs = state.jobs.clone();
    let grpc = if args.role.serves() { args.grpc_addr()? } else { None }.map(|addr| (addr, state.clone()));
    let app = api::router(state, &args);

    // Handlers are installed before the address is announced, so an early SIGTERM is still graceful.
    let shutdown_requested = shutdown_signal()?.shared();
    let listener = TcpListener::bind(args.addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.addr))?;
    tracing::info!(addr = %listener.local_addr()?, "listening");
    let grpc = match grpc {
        None => None,
        Some((addr, state)) => {
            let listener = TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen for gRPC on {addr}: {e}"))?;
            tracing::info!(addr = %listener.local_addr()?, "gRPC listening");
            let service = crate::grpc::service(state, AccessPolicy::new(args.api_key.clone(), args.auth_all), args.max_body_bytes);
            let server = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), shutdown_requested.clone());
            Some(tokio::spawn(server))
        }
    };

    let shutdown_started = Arc::new(Notify::new());
    let server = connections::serve(listener, app, args.connection_limits(), metrics, {
        let shutdown_started = shutdown_started.clone();
        async move {
            shutdown_requested.await;
            tracing::info!("shutdown requested: no new connections, finishing in-flight requests");
            shutdown_started.notify_one();
        }
    });
    let grace = args.shutdown_grace();
    let servers = async {
        server.await?;
        if let Some(grpc) = grpc {
            grpc.await?.map_err(|e| anyhow::anyhow!("gRPC server: {e}"))?;
        }
        anyhow::Ok(())
    };
    tokio::select! {
        result = servers => result?,
        _ = async { shutdown_started.notified().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests did not finish in time; exiting anyway");
        }
    }
    if let Err(error) = tokio::task::spawn_blocking(move || jobs.release_leases()).await {
        tracing::warn!(%error, "handing running jobs over failed");
    }
    tracing::info!("stopped");
    Ok(())
}

/// How often a replica looks for a default model chosen on another replica.
const DEFAULT_MODEL_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Follows the default model chosen over the API on any replica sharing the database: each
/// replica serves what the stored setting says within a couple of seconds.
async fn follow_default_model(storage: Database, models: ModelHost) {
    let mut poll = tokio::time::interval(DEFAULT_MODEL_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A choice this replica cannot serve is reported once, not at every poll.
    let mut refused = None;
    loop {
        poll.tick().await;
        let Ok(Some(chosen)) = storage.setting(DEFAULT_MODEL_SETTING).await else { continue };
        if chosen == models.default_spec() || refused.as_ref() == Some(&chosen) {
            continue;
        }
        let host = models.clone();
        let spec = chosen.clone();
        match tokio::task::spawn_blocking(move || host.set_default(&spec)).await {
            Ok(Ok(serving)) => tracing::info!(default_model = %chosen, serving = %serving, "default model changed on another replica"),
            Ok(Err(error)) => {
                tracing::warn!(default_model = %chosen, %error, "the default model chosen on another replica cannot be served here");
                refused = Some(chosen);
            }
            Err(error) => tracing::error!(%error, "following the default model failed"),
        }
    }
}

/// Resolves on SIGINT or SIGTERM; the handlers are registered when this is called.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
    })
}
