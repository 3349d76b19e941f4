//! The web console: its files over HTTP, and an end-to-end run in headless Chromium (Debian's
//! `chromium`, driven by `playwright-core` from tests/e2e) against real servers: sample, draw,
//! upload, train and watch, phone width, and a server with an API key.

mod common;

use std::path::Path;
use std::process::Command;

use common::{client, models_with_default, test_digits, Server, ServerOptions};

const API_KEY: &str = "console-test-key";

fn keyed_env() -> Vec<(String, String)> {
    vec![("VAE_API_KEY".into(), API_KEY.into()), ("VAE_AUTH_ALL".into(), "true".into())]
}

#[test]
fn console_files_are_served_cached_and_public() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(ServerOptions {
        models_dir: Some(models_with_default(dir.path())),
        default_model: "mnist-ssvae".into(),
        env: keyed_env(),
        ..Default::default()
    });
    let http = client();
    let page = http.get(server.url("/")).send().unwrap();
    assert_eq!(page.status(), 200, "the page needs no key even when reads do");
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let etag = page.headers()["etag"].to_str().unwrap().to_string();
    assert!(page.text().unwrap().contains("<canvas id=\"pad\""));
    let again = http.get(server.url("/")).header("if-none-match", &etag).send().unwrap();
    assert_eq!(again.status(), 304);
    for (file, kind) in [("console.js", "text/javascript; charset=utf-8"), ("console.css", "text/css; charset=utf-8")] {
        let asset = http.get(server.url(&format!("/console/{file}"))).send().unwrap();
        assert_eq!((asset.status().as_u16(), asset.headers()["content-type"].to_str().unwrap()), (200, kind));
    }
    assert_eq!(http.get(server.url("/console/secrets.txt")).send().unwrap().status(), 401, "only the console's own files are public");
    let missing = http.get(server.url("/console/secrets.txt")).bearer_auth(API_KEY).send().unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["content-type"], "application/problem+json");
    assert_eq!(http.get(server.url("/v1/datasets")).send().unwrap().status(), 401, "the API behind the console still needs the key");
    let datasets: serde_json::Value = http.get(server.url("/v1/datasets")).bearer_auth(API_KEY).send().unwrap().json().unwrap();
    assert!(datasets.as_array().unwrap().iter().any(|d| d["name"] == "mnist" && d["format"] == "idx"), "{datasets}");
}

#[test]
fn console_works_end_to_end_in_headless_chromium() {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e");
    assert!(
        e2e.join("node_modules/playwright-core").is_dir() && Path::new(&chromium()).exists(),
        "the browser test needs Debian's chromium and playwright-core: run scripts/setup-browser-tests.sh (make test does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let open = Server::start(ServerOptions {
        models_dir: Some(models_with_default(dir.path())),
        default_model: "mnist-ssvae".into(),
        ..Default::default()
    });
    let keyed_dir = tempfile::tempdir().unwrap();
    let keyed = Server::start(ServerOptions {
        models_dir: Some(models_with_default(keyed_dir.path())),
        default_model: "mnist-ssvae".into(),
        env: keyed_env(),
        ..Default::default()
    });
    open.wait_ready();
    let (digit, label) = test_digits(1).remove(0);
    let digit_path = dir.path().join("digit.png");
    std::fs::write(&digit_path, digit).unwrap();
    // Screenshots are the test's artifacts, kept after it ends.
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let output = Command::new("node")
        .arg(e2e.join("console.mjs"))
        .args([&open.base, &keyed.base, API_KEY])
        .arg(&digit_path)
        .arg(label.to_string())
        .arg(&shots)
        .env("CHROMIUM_PATH", chromium())
        .output()
        .expect("running node");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{report}\nscreenshots: {}\nserver log:\n{}", shots.display(), open.log.lock().unwrap());
    assert!(report.contains("all steps passed"), "{report}");
    for shot in ["1-sample-label-3", "2-drawn-stroke", "3-uploaded-digit", "4-trained", "5-phone"] {
        assert!(shots.join(format!("{shot}.png")).is_file(), "missing screenshot {shot}");
    }
}

fn chromium() -> String {
    std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into())
}
