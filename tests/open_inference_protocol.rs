//! The Open Inference Protocol (KServe V2) over REST and gRPC, checked by the official Triton
//! clients from PyPI (`tritonclient[http,grpc]`, installed into the project virtualenv by
//! `make test`) against the real server: tests/oip/tritonclient_conformance.py.

mod common;

use std::path::Path;
use std::process::Command;

use common::{models_with_default, test_digits, train_tiny, Server, ServerOptions};

#[test]
fn the_official_triton_clients_get_what_the_protocol_promises() {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(python.is_file(), "{} is missing: run `make test` (scripts/setup-test-tools.sh installs tritonclient)", python.display());
    let dir = tempfile::tempdir().unwrap();
    let models = models_with_default(dir.path());
    train_tiny(&models, "plain", "mlp");
    let digits = dir.path().join("digits");
    std::fs::create_dir_all(&digits).unwrap();
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for (i, (png, label)) in test_digits(64).into_iter().enumerate() {
        pixels.extend(image::load_from_memory(&png).unwrap().to_luma8().into_raw());
        std::fs::write(digits.join(format!("digit-{i:03}.png")), png).unwrap();
        labels.push(label);
    }
    std::fs::write(digits.join("digits.u8"), pixels).unwrap();
    std::fs::write(digits.join("labels.json"), serde_json::to_string(&labels).unwrap()).unwrap();

    let conformance = |server: &Server, extra: &[&str]| {
        let http = server.base.trim_start_matches("http://").to_string();
        let grpc = server.grpc_addr().expect("the server logs its gRPC address");
        let output = Command::new(&python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oip/tritonclient_conformance.py"))
            .args(["--http", &http, "--grpc", &grpc])
            .arg("--digits")
            .arg(&digits)
            .args(extra)
            .output()
            .expect("running the conformance script");
        let report = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(
            output.status.success(),
            "tritonclient conformance failed:\n{report}\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            server.log.lock().unwrap()
        );
        report
    };
    let grpc_on = ("VAE_GRPC_ADDR".to_string(), "127.0.0.1:0".to_string());
    let server = Server::start(ServerOptions {
        models_dir: Some(models.clone()),
        default_model: "mnist-ssvae".into(),
        env: vec![grpc_on.clone()],
        ..Default::default()
    });
    server.wait_ready();
    let report = conformance(&server, &[]);
    for part in ["http", "grpc", "repository"] {
        assert!(report.contains(&format!("{part}: every check passed")), "{part} checks did not run:\n{report}");
    }
    drop(server);

    let keyed = Server::start(ServerOptions {
        models_dir: Some(models),
        default_model: "mnist-ssvae".into(),
        env: vec![grpc_on, ("VAE_API_KEY".into(), "sesame".into())],
        ..Default::default()
    });
    keyed.wait_ready();
    let report = conformance(&keyed, &["--api-key", "sesame"]);
    assert!(report.contains("authentication: every check passed"), "authentication checks did not run:\n{report}");
}
