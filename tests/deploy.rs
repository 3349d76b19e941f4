//! The Kubernetes manifests in deploy/kubernetes/ kept correct by construction: each validates
//! against the Kubernetes schemas (kubernetes-validate, strict), and every setting, port, probe
//! path and directory they use exists in the code.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

fn venv_tool(name: &str) -> PathBuf {
    let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin").join(name);
    assert!(tool.is_file(), "{} is missing: run `make test` (scripts/setup-test-tools.sh installs it)", tool.display());
    tool
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "yaml")).collect();
    files.sort();
    files
}

/// Every document of every manifest (the KServe example's too), as JSON, through PyYAML (which kubernetes-validate brings).
fn documents() -> Vec<Value> {
    let mut files = yaml_files(&manifests_dir());
    files.extend(yaml_files(&manifests_dir().join("kserve")));
    let output = Command::new(venv_tool("python"))
        .args(["-c", "import json, sys, yaml; print(json.dumps([d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]))"])
        .args(&files)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

fn kinds(documents: &[Value]) -> BTreeSet<String> {
    documents.iter().map(|d| d["kind"].as_str().unwrap().to_string()).collect()
}

/// The containers (init containers included) of every workload.
fn containers(documents: &[Value]) -> Vec<(&str, &Value)> {
    let mut found = Vec::new();
    for document in documents {
        let name = document["metadata"]["name"].as_str().unwrap();
        let specs = [&document["spec"]["template"]["spec"], &document["spec"]];
        for spec in specs {
            for list in ["initContainers", "containers"] {
                for container in spec[list].as_array().into_iter().flatten() {
                    found.push((name, container));
                }
            }
        }
    }
    found
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"].as_array()?.iter().find(|e| e["name"] == name)?["value"].as_str()
}

#[test]
fn every_manifest_validates_against_the_kubernetes_schemas() {
    let files = yaml_files(&manifests_dir());
    let output = Command::new(venv_tool("kubernetes-validate")).arg("--strict").args(&files).output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{report}");
    assert_eq!(report.matches(" passed for resource ").count(), files.len(), "one resource per file, each checked: {report}");
    let expected = ["Deployment", "HorizontalPodAutoscaler", "PersistentVolumeClaim", "Secret", "Service"];
    let core: Vec<Value> = documents().into_iter().filter(|d| !d["apiVersion"].as_str().unwrap().contains("kserve")).collect();
    assert_eq!(kinds(&core), expected.iter().map(|k| k.to_string()).collect());
}

#[test]
fn every_setting_port_probe_and_directory_exists_in_the_code() {
    let help = String::from_utf8(Command::new(env!("CARGO_BIN_EXE_vae-serve")).args(["serve", "--help"]).output().unwrap().stdout).unwrap();
    let openapi: Value = serde_json::from_str(include_str!("../openapi/openapi.json")).unwrap();
    let documents = documents();
    let mut checked = 0;
    for (workload, container) in containers(&documents) {
        let is_server = container["args"].as_array().is_some_and(|a| a.first().is_some_and(|c| c == "serve"));
        for env in container["env"].as_array().into_iter().flatten() {
            let name = env["name"].as_str().unwrap();
            if name.starts_with("VAE_") {
                assert!(help.contains(&format!("[env: {name}")), "{workload} sets {name}, which `vae-serve serve` does not read");
            }
        }
        if !is_server {
            continue;
        }
        checked += 1;
        // It listens where it declares ports, and its probes call real routes there.
        let http_port = env_value(container, "VAE_ADDR").and_then(|a| a.rsplit(':').next()).unwrap_or("8080");
        let ports: Vec<String> = container["ports"].as_array().unwrap().iter().map(|p| p["containerPort"].to_string()).collect();
        assert!(ports.contains(&http_port.to_string()), "{workload}: VAE_ADDR's port {http_port} is not among {ports:?}");
        if let Some(grpc) = env_value(container, "VAE_GRPC_ADDR").filter(|a| !a.is_empty()) {
            assert!(ports.contains(&grpc.rsplit(':').next().unwrap().to_string()), "{workload}: gRPC port not declared");
        }
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            let Some(get) = container[probe]["httpGet"].as_object() else { continue };
            let path = get["path"].as_str().unwrap();
            assert!(openapi["paths"][path]["get"].is_object(), "{workload}'s {probe} calls {path}, which is no route");
            let port = &get["port"];
            let by_name = container["ports"].as_array().unwrap().iter().find(|p| &p["name"] == port);
            let number = by_name.map(|p| p["containerPort"].clone()).unwrap_or_else(|| port.clone());
            assert_eq!(number.to_string(), http_port, "{workload}'s {probe} calls a port the server does not listen on");
        }
        assert!(container["livenessProbe"].is_object() && container["readinessProbe"].is_object(), "{workload} needs both probes");
        // Every directory setting lies on a mounted volume (KServe mounts /mnt/models itself).
        let mounts: Vec<&str> =
            container["volumeMounts"].as_array().into_iter().flatten().map(|m| m["mountPath"].as_str().unwrap()).collect();
        for setting in ["VAE_MODELS_DIR", "VAE_JOBS_DIR", "VAE_DATA_DIR"] {
            if let Some(dir) = env_value(container, setting).filter(|d| *d != "/mnt/models") {
                assert!(mounts.iter().any(|m| dir.starts_with(m)), "{workload}: {setting}={dir} is on no volume ({mounts:?})");
            }
        }
        // The role is explicit, and a worker asks for the GPU it is told to use.
        let role = env_value(container, "VAE_ROLE").unwrap_or_else(|| panic!("{workload} sets no VAE_ROLE"));
        if role == "worker" {
            assert_eq!(env_value(container, "VAE_DEVICE"), Some("cuda"));
            assert_eq!(container["resources"]["limits"]["nvidia.com/gpu"], 1);
        }
    }
    assert_eq!(checked, 3, "the api and worker Deployments and the KServe runtime");
}

#[test]
fn replicas_share_what_they_must_and_keep_secrets_out_of_their_manifests() {
    let documents = documents();
    let deployments: Vec<&Value> = documents.iter().filter(|d| d["kind"] == "Deployment").collect();
    let claim = documents.iter().find(|d| d["kind"] == "PersistentVolumeClaim").unwrap();
    assert_eq!(claim["spec"]["accessModes"], serde_json::json!(["ReadWriteMany"]), "every replica mounts the model volume");
    let secret = documents.iter().find(|d| d["kind"] == "Secret").unwrap();
    assert!(secret["stringData"]["VAE_DATABASE"].as_str().unwrap().starts_with("postgres://"));
    for deployment in deployments {
        let spec = &deployment["spec"]["template"]["spec"];
        let name = deployment["metadata"]["name"].as_str().unwrap();
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(spec["volumes"][0]["persistentVolumeClaim"]["claimName"], claim["metadata"]["name"], "{name}");
        let container = &spec["containers"][0];
        assert!(env_value(container, "VAE_DATABASE").is_none() && env_value(container, "VAE_API_KEY").is_none(), "{name}: in plain text");
        assert_eq!(container["envFrom"][0]["secretRef"]["name"], secret["metadata"]["name"], "{name}");
        assert!(spec["terminationGracePeriodSeconds"].as_u64().unwrap() >= 30, "{name}: time to hand its work over");
    }
    let hpa = documents.iter().find(|d| d["kind"] == "HorizontalPodAutoscaler").unwrap();
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "vae-serve-api");
    let service = documents.iter().find(|d| d["kind"] == "Service").unwrap();
    assert_eq!(service["spec"]["selector"]["app.kubernetes.io/component"], "api", "traffic goes to api replicas only");
}
