//! The container files kept correct by construction: every setting, port and path they use must
//! exist in the code. `scripts/container-test.sh` (run by CI) builds and runs the image for real.

use std::collections::BTreeSet;
use std::process::Command;

const DOCKERFILE: &str = include_str!("../Dockerfile");
const COMPOSE: &str = include_str!("../docker-compose.yml");

fn env_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("VAE_") {
        let start = i + pos;
        let end = start + bytes[start..].iter().take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || **b == b'_').count();
        names.insert(text[start..end].to_string());
        i = end;
    }
    names
}

fn serve_help() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vae-serve")).args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn every_setting_the_container_files_use_is_a_real_setting() {
    let help = serve_help();
    let used: BTreeSet<String> = env_names(DOCKERFILE).union(&env_names(COMPOSE)).cloned().collect();
    assert!(used.len() >= 6, "{used:?}");
    for name in used {
        assert!(help.contains(&format!("[env: {name}")), "{name} is used by the container files but `vae-serve serve` has no such setting");
    }
}

#[test]
fn ports_paths_and_health_check_agree_with_the_code() {
    // The container listens where it exposes and where compose publishes.
    assert!(DOCKERFILE.contains("VAE_ADDR=0.0.0.0:8080") && DOCKERFILE.contains("EXPOSE 8080"));
    assert!(COMPOSE.contains("VAE_ADDR: 0.0.0.0:8080") && COMPOSE.contains(":8080:8080\""));
    // The health check calls a real route, on the port VAE_ADDR gives.
    let openapi: serde_json::Value = serde_json::from_str(include_str!("../openapi/openapi.json")).unwrap();
    assert!(DOCKERFILE.contains("http://127.0.0.1:${VAE_ADDR##*:}/healthz") && openapi["paths"]["/healthz"].is_object());
    // Named volumes are mounted where the settings point.
    for dir in ["/var/lib/vae-serve/models", "/var/lib/vae-serve/data"] {
        assert!(COMPOSE.contains(&format!(":{dir}")), "compose does not mount {dir}");
        assert!(DOCKERFILE.contains(dir));
    }
    assert!(DOCKERFILE.contains("VAE_DATABASE=/var/lib/vae-serve/data/"), "the database lives on the data volume");
    // The build uses the same torch version the crate is built against, and the subcommand exists.
    assert!(DOCKERFILE.contains(&format!("ARG TORCH_VERSION={}", vae_serve::runtime::torch_version())));
    assert!(DOCKERFILE.contains("CMD [\"serve\"]"));
    // The shipped default model (its latest version) exists in the repository.
    assert!(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/models/mnist-ssvae/v5/manifest.json")).is_file());
}
