//! The HTTP skeleton, driven over real HTTP against the real binary.

mod common;

use common::{client, train_tiny_model, Server, ServerOptions};
use serde_json::Value;

fn assert_problem(response: reqwest::blocking::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().unwrap();
    assert_eq!(body["status"], status);
    assert!(body["type"].as_str().unwrap().starts_with("urn:vae-serve:problem:"));
    assert!(!body["title"].as_str().unwrap().is_empty());
    assert!(!body["detail"].as_str().unwrap().is_empty());
    body
}

#[test]
fn health_metrics_errors_and_request_ids_without_a_model() {
    let server = Server::start(ServerOptions {
        env: vec![("VAE_MAX_BODY_BYTES".into(), "1000".into()), ("VAE_CORS_ORIGINS".into(), "http://console.test".into())],
        ..Default::default()
    });
    let http = client();

    assert!(server.log_contains("requests are open"), "an open server warns at start-up");
    let health: Value = http.get(server.url("/healthz")).send().unwrap().json().unwrap();
    assert_eq!(health["status"], "ok");

    // Storage is open but no default model exists: not ready, and says why.
    let ready = http.get(server.url("/readyz")).send().unwrap();
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().unwrap();
    assert_eq!(ready["storage"], true);
    assert_eq!(ready["default_model"], false);
    assert!(ready["default_model_error"].as_str().unwrap().contains("`tiny` not found"), "{ready}");

    let body = assert_problem(http.get(server.url("/no/such/route")).send().unwrap(), 404);
    assert!(body["detail"].as_str().unwrap().contains("/no/such/route"));
    assert_problem(http.post(server.url("/healthz")).send().unwrap(), 405);
    let too_large = assert_problem(http.post(server.url("/sample")).body(vec![0u8; 5000]).send().unwrap(), 413);
    assert!(too_large["detail"].as_str().unwrap().contains("VAE_MAX_BODY_BYTES"));
    // Extractor rejections become problems too, and a missing model is a 503 with Retry-After.
    assert_problem(http.get(server.url("/sample?n=abc")).send().unwrap(), 400);
    let unavailable = http.get(server.url("/sample")).send().unwrap();
    assert_eq!(unavailable.headers()["retry-after"], "5");
    assert_problem(unavailable, 503);

    // Request ids: generated when absent (a fresh one each time), echoed when given.
    let generated_id = || http.get(server.url("/healthz")).send().unwrap().headers()["x-request-id"].to_str().unwrap().to_string();
    let (first, second) = (generated_id(), generated_id());
    assert_eq!(first.len(), 36);
    assert_ne!(first, second);
    let echoed = http.get(server.url("/healthz")).header("x-request-id", "test-id-42").send().unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "test-id-42");
    assert!(server.log_contains("request_id=test-id-42"), "request id is in the logs");

    // CORS for the configured origin only; large answers are compressed on request.
    let preflight = http
        .request(reqwest::Method::OPTIONS, server.url("/sample"))
        .header("origin", "http://console.test")
        .header("access-control-request-method", "GET")
        .send()
        .unwrap();
    assert_eq!(preflight.headers()["access-control-allow-origin"], "http://console.test");
    let other = http.get(server.url("/healthz")).header("origin", "http://elsewhere.test").send().unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    let compressed = http.get(server.url("/openapi.json")).header("accept-encoding", "gzip").send().unwrap();
    assert_eq!(compressed.headers()["content-encoding"], "gzip");
    let small = http.get(server.url("/readyz")).header("accept-encoding", "gzip").send().unwrap();
    assert!(small.content_length().is_some_and(|n| (32..1024).contains(&n)), "between gzip's default floor and ours");
    assert!(small.headers().get("content-encoding").is_none(), "a short answer is not worth compressing");

    let metrics = http.get(server.url("/metrics")).send().unwrap();
    assert!(metrics.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let metrics = metrics.text().unwrap();
    assert!(metrics.contains("vae_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 5"), "{metrics}");
    assert!(metrics.contains("vae_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"} 1"), "{metrics}");
    assert!(metrics.contains("# TYPE vae_http_request_duration_seconds histogram"));
    assert!(metrics.contains("process_resident_memory_bytes"));
    let heap_in_use: f64 =
        metrics.lines().find_map(|l| l.strip_prefix("vae_malloc_bytes{state=\"in_use\"} ")).expect("C heap gauge").parse().unwrap();
    assert!(heap_in_use > 1e6, "a loaded libtorch holds more than a megabyte of C heap, got {heap_in_use}");
    for line in metrics.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "not a sample line: {line}");
    }
}

#[test]
fn openapi_is_served_documented_and_in_sync_with_the_committed_file() {
    let committed: Value =
        serde_json::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json")).unwrap()).unwrap();
    let generated = std::process::Command::new(common::BINARY).arg("openapi").output().unwrap();
    assert!(generated.status.success());
    let generated: Value = serde_json::from_slice(&generated.stdout).unwrap();
    assert_eq!(generated, committed, "openapi/openapi.json is stale: run `make openapi`");

    let server = Server::start(ServerOptions::default());
    let http = client();
    let served: Value = http.get(server.url("/openapi.json")).send().unwrap().json().unwrap();
    assert_eq!(served, committed);
    // The docs page and its assets are embedded: no CDN.
    let docs = http.get(server.url("/docs/")).send().unwrap();
    assert_eq!(docs.status(), 200);
    let html = docs.text().unwrap();
    assert!(html.contains("swagger-ui") && !html.contains("https://"), "{html}");
    assert_eq!(http.get(server.url("/docs/swagger-ui-bundle.js")).send().unwrap().status(), 200);
}

#[test]
fn ready_with_a_trained_default_model_and_sampling_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    train_tiny_model(dir.path(), "tiny");
    let server = Server::start(ServerOptions { models_dir: Some(dir.path().to_path_buf()), ..Default::default() });
    server.wait_ready();
    let http = client();
    let ready: Value = http.get(server.url("/readyz")).send().unwrap().json().unwrap();
    assert_eq!(ready["default_model_id"], "tiny@1");

    let fetch = |query: &str| {
        let response = http.get(server.url(&format!("/sample?{query}"))).send().unwrap();
        assert_eq!(response.status(), 200, "{query}");
        assert_eq!(response.headers()["content-type"], "image/png");
        assert_eq!(response.headers()["x-model"], "tiny@1");
        response.bytes().unwrap().to_vec()
    };
    let a = fetch("n=9&seed=7&label=3");
    assert_eq!(a, fetch("n=9&seed=7&label=3"), "same seed, same image");
    assert_ne!(a, fetch("n=9&seed=8&label=3"), "another seed, other samples");
    let grid = image::load_from_memory(&a).unwrap();
    assert_eq!((grid.width(), grid.height()), (3 * 30 + 2, 3 * 30 + 2));

    let unknown = assert_problem(http.get(server.url("/sample?label=eleven")).send().unwrap(), 400);
    assert!(unknown["detail"].as_str().unwrap().contains("labels are 0, 1"), "{unknown}");
    assert_problem(http.get(server.url("/sample?n=1000")).send().unwrap(), 400);
    assert_problem(http.get(server.url("/sample?bogus=1")).send().unwrap(), 400);
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let server = Server::start(ServerOptions::default());
    assert_eq!(client().get(server.url("/healthz")).send().unwrap().status(), 200);
    let status = server.terminate();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn an_api_key_guards_mutations_and_optionally_reads() {
    let key_env = |all: &str| ServerOptions {
        env: vec![("VAE_API_KEY".into(), "s3cret-key".into()), ("VAE_AUTH_ALL".into(), all.into())],
        ..Default::default()
    };
    let http = client();
    let server = Server::start(key_env("false"));
    let denied = http.post(server.url("/sample")).send().unwrap();
    assert_eq!(denied.headers()["www-authenticate"], "Bearer realm=\"vae-serve\"");
    assert_problem(denied, 401);
    assert_problem(http.post(server.url("/sample")).bearer_auth("wrong").send().unwrap(), 401);
    // The right key passes access control; the route itself only allows GET.
    assert_problem(http.post(server.url("/sample")).bearer_auth("s3cret-key").send().unwrap(), 405);
    let metrics = http.get(server.url("/metrics")).send().unwrap();
    assert_eq!(metrics.status(), 200, "reads stay open");
    let metrics = metrics.text().unwrap();
    let refusals = "vae_http_requests_total{method=\"POST\",route=\"/sample\",status=\"401\"} 2";
    assert!(metrics.contains(refusals), "refusals are counted by route: {metrics}");
    assert!(!server.log.lock().unwrap().contains("s3cret-key"), "the key never reaches the logs");
    assert!(!server.log.lock().unwrap().contains("requests are open"));
    drop(server);

    let strict = Server::start(key_env("true"));
    assert_problem(http.get(strict.url("/metrics")).send().unwrap(), 401);
    assert_eq!(http.get(strict.url("/metrics")).bearer_auth("s3cret-key").send().unwrap().status(), 200);
    assert_eq!(http.get(strict.url("/healthz")).send().unwrap().status(), 200, "probes stay open");
}

#[test]
fn the_shipped_default_model_loads_and_serves_every_digit() {
    let server = Server::start(ServerOptions {
        models_dir: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/models").into()),
        default_model: "mnist-ssvae".into(),
        ..Default::default()
    });
    server.wait_ready();
    let http = client();
    let ready: Value = http.get(server.url("/readyz")).send().unwrap().json().unwrap();
    assert_eq!(ready["default_model_id"], "mnist-ssvae@5");
    for digit in 0..10 {
        let response = http.get(server.url(&format!("/sample?label={digit}&n=4&seed=1"))).send().unwrap();
        assert_eq!(response.status(), 200);
        assert!(image::load_from_memory(&response.bytes().unwrap()).is_ok());
    }

    // Beside it, the Fashion-MNIST model answers to its class names.
    let fashion = "/v1/models/fashion-ssvae";
    let manifest: Value = http.get(server.url(&format!("{fashion}/versions/1"))).send().unwrap().json().unwrap();
    assert_eq!(manifest["config"]["label_names"][9], "ankle-boot", "{manifest}");
    for name in ["sneaker", "Ankle-Boot", "trouser"] {
        let samples: Value =
            http.get(server.url(&format!("{fashion}/sample?label={name}&n=2&format=json"))).send().unwrap().json().unwrap();
        assert_eq!(samples["label_name"].as_str().unwrap(), name.to_ascii_lowercase(), "{samples}");
        assert_eq!(samples["images"].as_array().unwrap().len(), 2);
    }
}
