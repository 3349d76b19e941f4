//! HTTP layer: routes, middleware and the OpenAPI document. Handlers stay thin: they parse, call
//! a lower layer and map its answer; torch code lives elsewhere.

pub mod auth;
pub mod body_limit;
pub mod console;
pub mod health;
pub mod inference;
pub mod jobs;
pub mod problem;
pub mod uploads;
pub mod v2;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::DefaultBodyLimit;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::compression::predicate::{DefaultPredicate, Predicate, SizeAbove};
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::config::ServeArgs;
use crate::inference::ModelHost;
use crate::jobs::JobQueue;
use crate::runtime::TorchRuntime;
use crate::storage::Database;
use crate::telemetry::Metrics;
use auth::AccessPolicy;
use problem::problem_response;

/// Everything handlers reach. One shared allocation: axum clones the state for every request
/// (extractors, middleware), and a clone is then one reference count, not one per service.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The services themselves, reached through `AppState`.
pub struct Services {
    pub storage: Database,
    pub models: ModelHost,
    pub jobs: JobQueue,
    pub models_dir: Arc<std::path::Path>,
    pub data_dir: Arc<std::path::Path>,
    pub metrics: Arc<Metrics>,
    pub runtime: Arc<TorchRuntime>,
    pub role: crate::config::Role,
}

impl AppState {
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }

    /// Storage answers and, on a replica that serves inference, the default model is loaded:
    /// what /readyz and the protocol's server readiness (REST and gRPC) report.
    pub async fn is_ready(&self) -> bool {
        self.ready_with(self.storage.ping().await.is_ok(), self.models.default_model_status().loaded)
    }

    /// Readiness from its two checks.
    pub fn ready_with(&self, storage_answers: bool, default_model_loaded: bool) -> bool {
        storage_answers && (!self.role.serves() || default_model_loaded)
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "vae-serve", description = "Train variational autoencoders in a background job queue and serve them: sampling, reconstruction, classification."),
    paths(
        health::healthz, health::readyz, health::metrics,
        inference::sample, inference::interpolate_labels, inference::interpolate_images,
        inference::reconstruct, inference::classify, inference::encode,
        jobs::submit, jobs::list, jobs::get, jobs::cancel, jobs::events, jobs::datasets, jobs::train_defaults,
        jobs::list_models, jobs::get_model, jobs::get_version, jobs::set_default, jobs::delete_version,
        v2::server_metadata, v2::live, v2::ready, v2::model_metadata, v2::version_metadata, v2::model_ready, v2::version_ready,
        v2::infer, v2::version_infer, v2::repository_index, v2::load, v2::unload,
    ),
    components(schemas(problem::Problem, v2::V2Error, health::Health, health::Readiness, crate::training::TrainRequest, crate::training::DataRequest, crate::data::CatalogEntry)),
    tags(
        (name = "operations", description = "Liveness, readiness and metrics"),
        (name = "training", description = "The background training queue (POST /train is an alias of POST /v1/train)"),
        (name = "models", description = "The model registry"),
        (name = "inference", description = "Sampling, reconstruction, classification and encoding; each also under /v1/models/{name} and /v1/models/{name}/versions/{version}"),
        (name = "open-inference-protocol", description = "The Open Inference Protocol (KServe V2) with Triton's binary tensor and model repository extensions; errors are `{\"error\": \"...\"}`"),
    ),
)]
pub struct ApiDoc;

/// Prefixes under which the inference routes also answer, for a named model (and version).
const MODEL_PREFIXES: [&str; 2] = ["/v1/models/{name}", "/v1/models/{name}/versions/{version}"];
const INFERENCE_PATHS: [&str; 5] = ["/sample", "/interpolate", "/reconstruct", "/classify", "/encode"];

/// The OpenAPI document as served at /openapi.json and committed in openapi/openapi.json.
pub fn openapi_json() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let mut doc = serde_json::to_value(&doc).expect("OpenAPI document serialises");
    // The model-specific forms share the handlers: document them from the top-level ones.
    let paths = doc["paths"].as_object_mut().expect("paths object");
    for prefix in MODEL_PREFIXES {
        for path in INFERENCE_PATHS {
            let mut item = paths[path].clone();
            for (method, operation) in item.as_object_mut().expect("path item").iter_mut() {
                let id = operation["operationId"].as_str().unwrap_or(method).to_string();
                let suffix = if prefix.contains("{version}") { "_model_version" } else { "_model" };
                operation["operationId"] = serde_json::Value::String(format!("{id}{suffix}"));
                let parameters = operation.as_object_mut().expect("operation").entry("parameters").or_insert_with(|| serde_json::json!([]));
                let parameters = parameters.as_array_mut().expect("parameters array");
                parameters.push(serde_json::json!({"name": "name", "in": "path", "required": true, "description": "Model name", "schema": {"type": "string"}}));
                if prefix.contains("{version}") {
                    parameters.push(serde_json::json!({"name": "version", "in": "path", "required": true, "description": "Model version (N or vN)", "schema": {"type": "string"}}));
                }
            }
            paths.insert(format!("{prefix}{path}"), item);
        }
    }
    for (path, item) in paths.iter_mut() {
        for (method, operation) in item.as_object_mut().expect("path item").iter_mut() {
            document_shared_answers(path, method, operation);
        }
    }
    let mut alias = paths["/v1/train"].clone();
    alias["post"]["operationId"] = serde_json::Value::String("submit_alias".into());
    paths.insert("/train".into(), alias);
    serde_json::to_string_pretty(&doc).expect("OpenAPI document serialises") + "\n"
}

/// Adds to an operation the answers that come from the shared layers rather than its handler:
/// extractor rejections, the API key, the body limit, the timeout, model lookups. Also marks
/// the labels a label interpolation needs as required, and gives model path parameters the
/// shipped model as their example, so generated calls reach a real model.
fn document_shared_answers(path: &str, method: &str, operation: &mut serde_json::Value) {
    let has_parameters = operation["parameters"].as_array().is_some_and(|p| !p.is_empty());
    let has_body = operation.get("requestBody").is_some();
    let has_path_parameters = path.contains('{');
    let is_inference = INFERENCE_PATHS.iter().any(|p| path.ends_with(p));
    let is_probe = matches!(path, "/healthz" | "/readyz");
    let mut shared: Vec<(&str, &str)> = vec![("408", "the request took longer than VAE_REQUEST_TIMEOUT_SECS")];
    if has_parameters || has_body {
        shared.push(("400", "a parameter or body that cannot be read: wrong type, out of range, unknown field"));
    }
    if !is_probe {
        shared.push(("401", "an API key is configured and was not given (for reads only with VAE_AUTH_ALL)"));
    }
    if has_path_parameters || is_inference {
        shared.push(("404", "no such model, version or job"));
    }
    if has_body {
        shared.push(("413", "the body is larger than VAE_MAX_BODY_BYTES"));
        // The protocol's bodies are read whatever their content type says (Triton's clients send none).
        if !path.starts_with("/v2") {
            shared.push(("415", "a content type this operation does not take"));
        }
    }
    if is_inference {
        shared.push(("503", "the model cannot be loaded, or its queue is full (Retry-After)"));
    }
    // The protocol routes answer errors in the protocol's own form (`v2::v2_error_bodies`).
    let (content_type, schema) = if path.starts_with("/v2") {
        ("application/json", "#/components/schemas/V2Error")
    } else {
        (problem::PROBLEM_CONTENT_TYPE, "#/components/schemas/Problem")
    };
    let responses = operation["responses"].as_object_mut().expect("responses object");
    for (status, description) in shared {
        responses.entry(status).or_insert_with(|| {
            serde_json::json!({
                "description": description,
                "content": {content_type: {"schema": {"$ref": schema}}},
            })
        });
    }
    let label_interpolation = method == "get" && path.ends_with("/interpolate");
    for parameter in operation.get_mut("parameters").and_then(|p| p.as_array_mut()).into_iter().flatten() {
        match (parameter["in"].as_str(), parameter["name"].as_str()) {
            (Some("query"), Some("from" | "to")) if label_interpolation => parameter["required"] = serde_json::Value::Bool(true),
            (Some("path"), Some("name")) if path.starts_with("/v1/models/") => parameter["example"] = "mnist-ssvae".into(),
            (Some("path"), Some("version")) => parameter["example"] = 1.into(),
            _ => {}
        }
    }
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Smaller answers go out as they are: gzip would save less than a packet, and setting up a
/// deflate stream cost more CPU than the rest of a one-image `/classify` (BENCHMARKS.md, profile).
const COMPRESS_ABOVE_BYTES: u16 = 1024;

/// Everything but the probes: the console, training, models, inference and the docs.
fn service_routes() -> Router<AppState> {
    Router::new()
        .route("/", get(console::index))
        .route("/console/{name}", get(console::asset))
        .route("/train", post(jobs::submit))
        .route("/v1/train", post(jobs::submit))
        .route("/v1/jobs", get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::get).delete(jobs::cancel))
        .route("/v1/jobs/{id}/events", get(jobs::events))
        .route("/v1/train/defaults", get(jobs::train_defaults))
        .route("/v1/datasets", get(jobs::datasets))
        .route("/v1/models", get(jobs::list_models))
        .route("/v1/models/{name}", get(jobs::get_model))
        .route("/v1/models/{name}/default", put(jobs::set_default))
        .route("/v1/models/{name}/versions/{version}", get(jobs::get_version).delete(jobs::delete_version))
        .route("/v2", get(v2::server_metadata))
        .route("/v2/health/live", get(v2::live))
        .route("/v2/health/ready", get(v2::ready))
        .route("/v2/models/{name}", get(v2::model_metadata))
        .route("/v2/models/{name}/ready", get(v2::model_ready))
        .route("/v2/models/{name}/infer", post(v2::infer))
        .route("/v2/models/{name}/versions/{version}", get(v2::version_metadata))
        .route("/v2/models/{name}/versions/{version}/ready", get(v2::version_ready))
        .route("/v2/models/{name}/versions/{version}/infer", post(v2::version_infer))
        .route("/v2/repository/index", post(v2::repository_index))
        .route("/v2/repository/models/{name}/load", post(v2::load))
        .route("/v2/repository/models/{name}/unload", post(v2::unload))
        .merge(inference_routes())
        .nest(MODEL_PREFIXES[0], inference_routes())
        .nest(MODEL_PREFIXES[1], inference_routes())
        .route("/openapi.json", get(serve_openapi))
        // The UI reads our document as generated (a round trip through utoipa's types would alter it).
        .merge(SwaggerUi::new("/docs").config(utoipa_swagger_ui::Config::from("/openapi.json")))
}

/// The full application: routes with their own middleware, inside the shared middleware
/// (outermost first).
pub fn router(state: AppState, config: &ServeArgs) -> Router {
    let operations =
        Router::new().route("/healthz", get(health::healthz)).route("/readyz", get(health::readyz)).route("/metrics", get(health::metrics));
    // A worker replica only trains: its HTTP is for probes and scraping.
    let routes = if config.role.serves() { operations.merge(service_routes()) } else { operations };
    // Only what must see the matched route runs inside routing (metrics by route, and the key
    // check inside them so that refusals are counted): a router layer boxes each route once more,
    // and a request clones every box below a `from_fn` layer (54 allocations a request with all
    // eight layers here).
    let routes = routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(AccessPolicy::new(config.api_key.clone(), config.auth_all), auth::require_api_key))
        .layer(middleware::from_fn_with_state(state.clone(), record_metrics))
        .with_state(state);

    // Around the whole router once, not around each route: a request then clones one boxed
    // service, not a boxed stack per layer.
    let shared = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let request_id = request.extensions().get::<RequestId>().and_then(|id| id.header_value().to_str().ok()).unwrap_or("-");
                    tracing::info_span!("request", method = %request.method(), uri = %request.uri(), request_id = %request_id)
                })
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(cors_layer(&config.cors_origins))
        .layer(CompressionLayer::new().compress_when(DefaultPredicate::new().and(SizeAbove::new(COMPRESS_ABOVE_BYTES))))
        // Under /v2, the problems below in the protocol's error bodies.
        .layer(middleware::from_fn(v2::v2_error_bodies))
        // Outside the limit and timeout layers so their plain-text errors become problems too.
        .layer(middleware::map_response(problem::problem_for_bare_errors))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, config.request_timeout()))
        .layer(middleware::from_fn_with_state(body_limit::OversizedBodies::new(config), body_limit::refuse_oversized_body))
        .layer(RequestBodyLimitLayer::new(config.max_body_bytes))
        // One body limit for every extractor: the tower layer's, not axum's separate 2 MB default.
        .layer(DefaultBodyLimit::disable());
    Router::new().fallback_service(shared.service(routes))
}

/// Runs short blocking work (database, image coding) on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, problem::ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| problem::ApiError::Internal(format!("background work failed: {e}")))
}

fn inference_routes() -> Router<AppState> {
    Router::new()
        .route("/sample", get(inference::sample))
        .route("/interpolate", get(inference::interpolate_labels).post(inference::interpolate_images))
        .route("/reconstruct", post(inference::reconstruct))
        .route("/classify", post(inference::classify))
        .route("/encode", post(inference::encode))
}

fn cors_layer(origins: &[String]) -> CorsLayer {
    let origins: Vec<_> = origins.iter().map(|o| o.trim()).filter(|o| !o.is_empty()).collect();
    if origins.is_empty() {
        return CorsLayer::new();
    }
    let allow =
        if origins.contains(&"*") { AllowOrigin::from(Any) } else { AllowOrigin::list(origins.iter().filter_map(|o| o.parse().ok())) };
    CorsLayer::new().allow_origin(allow).allow_methods(Any).allow_headers(Any).expose_headers([REQUEST_ID])
}

async fn serve_openapi() -> impl IntoResponse {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ([(axum::http::header::CONTENT_TYPE, "application/json")], DOCUMENT.get_or_init(openapi_json).as_str())
}

async fn not_found(method: Method, uri: axum::http::Uri) -> Response {
    problem_response(StatusCode::NOT_FOUND, format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Response {
    problem_response(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {}", uri.path()))
}

/// Counts and times every request under its route template (not the raw path, to bound cardinality).
async fn record_metrics(State(state): State<AppState>, request: Request, next: Next) -> impl IntoResponse {
    let started = Instant::now();
    // Cheap clones (a standard method holds no string, a matched path is shared), not new strings.
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let response = next.run(request).await;
    let status = response.status();
    state.metrics.http_requests.with_label_values(&[method.as_str(), route, status.as_str()]).inc();
    state.metrics.http_duration.with_label_values(&[method.as_str(), route]).observe(started.elapsed().as_secs_f64());
    response
}
