//! Log set-up (text or JSON lines) and the Prometheus registry shared by the HTTP layer and workers.

use std::io::IsTerminal;

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

/// Installs the global subscriber; `RUST_LOG` overrides the default `info` level.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for people at a terminal; files, pipes and tests get plain text.
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    // A second call (tests, embedded use) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

const LATENCY_BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Request metrics by route and status, per-model inference metrics, and process metrics.
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub inference_queue_seconds: HistogramVec,
    pub inference_seconds: HistogramVec,
    pub inference_batch_size: HistogramVec,
    pub inference_requests: IntCounterVec,
    pub connections_open: IntGauge,
    /// Connections answered 503 and closed because VAE_MAX_CONNECTIONS were open.
    pub connections_refused: IntCounter,
    /// Connections closed by a header-read or idle deadline, by which.
    pub connections_timed_out: IntCounterVec,
    /// Lease events of this replica's training workers, by event.
    pub job_leases: IntCounterVec,
    /// Jobs in the shared database by state, set at each scrape.
    pub jobs: IntGaugeVec,
    /// glibc's heap, read at each scrape: resident memory alone cannot tell a leak (bytes in use
    /// grow) from fragmentation (free bytes malloc keeps grow).
    malloc_bytes: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new("vae_http_requests_total", "HTTP requests answered, by route and status"),
            &["method", "route", "status"],
        )
        .expect("static metric definition");
        let http_duration = HistogramVec::new(
            HistogramOpts::new("vae_http_request_duration_seconds", "HTTP request latency, by route").buckets(LATENCY_BUCKETS.to_vec()),
            &["method", "route"],
        )
        .expect("static metric definition");
        let latency = |name: &str, help: &str| {
            HistogramVec::new(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()), &["model"])
                .expect("static metric definition")
        };
        let inference_queue_seconds = latency("vae_inference_queue_seconds", "Time requests wait in a model's queue");
        let inference_seconds = latency("vae_inference_batch_seconds", "Time a model takes to run one batch");
        let inference_batch_size = HistogramVec::new(
            HistogramOpts::new("vae_inference_batch_size", "Requests run together in one batch")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            &["model"],
        )
        .expect("static metric definition");
        let inference_requests = IntCounterVec::new(
            Opts::new(
                "vae_inference_requests_total",
                "Inference requests by model and outcome (ok, error, rejected; abandoned: the caller left before its batch ran)",
            ),
            &["model", "outcome"],
        )
        .expect("static metric definition");
        let connections_open = IntGauge::new("vae_http_connections_open", "HTTP connections open now").expect("static metric definition");
        let connections_refused = IntCounter::new(
            "vae_http_connections_refused_total",
            "Connections refused with a 503 because the connection cap (VAE_MAX_CONNECTIONS) was reached",
        )
        .expect("static metric definition");
        let connections_timed_out = IntCounterVec::new(
            Opts::new(
                "vae_http_connections_timed_out_total",
                "Connections closed by a deadline: header (a request head arrived too slowly) or idle (no request came)",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        let job_leases = IntCounterVec::new(
            Opts::new(
                "vae_job_leases_total",
                "Job leases of this replica's workers: claimed (a queued job), taken_over (a job whose worker's lease had expired), renewed, lost (to another worker, or unconfirmed by the database for a whole lease)",
            ),
            &["event"],
        )
        .expect("static metric definition");
        let jobs = IntGaugeVec::new(
            Opts::new(
                "vae_jobs",
                "Jobs in the database that every replica shares, by state (queued is the queue depth); read at each scrape",
            ),
            &["state"],
        )
        .expect("static metric definition");
        let malloc_bytes = IntGaugeVec::new(
            Opts::new(
                "vae_malloc_bytes",
                "C heap (glibc malloc, all arenas; libtorch and the C libraries, not Rust's own allocations, which use mimalloc): bytes in live allocations (in_use) and free bytes it keeps (free)",
            ),
            &["state"],
        )
        .expect("static metric definition");
        for collector in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_duration.clone()),
            Box::new(inference_queue_seconds.clone()),
            Box::new(inference_seconds.clone()),
            Box::new(inference_batch_size.clone()),
            Box::new(inference_requests.clone()),
            Box::new(connections_open.clone()),
            Box::new(connections_refused.clone()),
            Box::new(connections_timed_out.clone()),
            Box::new(job_leases.clone()),
            Box::new(jobs.clone()),
            Box::new(malloc_bytes.clone()),
        ] {
            registry.register(collector).expect("registered once");
        }
        // Conventional process_* metrics: CPU seconds, resident memory, open fds, start time.
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self())).expect("registered once");
        Self {
            registry,
            http_requests,
            http_duration,
            inference_queue_seconds,
            inference_seconds,
            inference_batch_size,
            inference_requests,
            connections_open,
            connections_refused,
            connections_timed_out,
            job_leases,
            jobs,
            malloc_bytes,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        if let Some(heap) = malloc_usage() {
            self.malloc_bytes.with_label_values(&["in_use"]).set(heap.in_use as i64);
            self.malloc_bytes.with_label_values(&["free"]).set(heap.free as i64);
        }
        TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap_or_default()
    }
}

struct MallocUsage {
    in_use: usize,
    free: usize,
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn malloc_usage() -> Option<MallocUsage> {
    // SAFETY: mallinfo2 only reads allocator statistics (it takes each arena's lock briefly).
    let info = unsafe { libc::mallinfo2() };
    // Chunks handed out from the arenas plus large allocations served by mmap.
    Some(MallocUsage { in_use: info.uordblks + info.hblkhd, free: info.fordblks })
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn malloc_usage() -> Option<MallocUsage> {
    None
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
