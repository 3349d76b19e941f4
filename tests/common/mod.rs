//! Test harness: the real `vae-serve` binary on an ephemeral port, and small real models.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const BINARY: &str = env!("CARGO_BIN_EXE_vae-serve");

/// A running server; killed when dropped.
pub struct Server {
    child: Child,
    pub base: String,
    pub log: Arc<Mutex<String>>,
    _dir: Option<tempfile::TempDir>,
}

/// What a test server runs with.
pub struct ServerOptions {
    pub models_dir: Option<PathBuf>,
    /// A SQLite file or a PostgreSQL URL (kept across restarts when given).
    pub database: Option<String>,
    pub default_model: String,
    pub env: Vec<(String, String)>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self { models_dir: None, database: None, default_model: "tiny".into(), env: Vec::new() }
    }
}

impl Server {
    pub fn start(options: ServerOptions) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let models_dir = options.models_dir.clone().unwrap_or_else(|| dir.path().join("models"));
        let mut command = Command::new(BINARY);
        command
            .args(["serve", "--addr", "127.0.0.1:0", "--device", "cpu", "--threads", "1"])
            .arg("--models-dir")
            .arg(&models_dir)
            .arg("--database")
            .arg(options.database.clone().unwrap_or_else(|| dir.path().join("db/vae.db").to_string_lossy().into_owned()))
            .arg("--data-dir")
            .arg(shared_data())
            .args(["--default-model", &options.default_model])
            .env("RUST_LOG", "info")
            .env_remove("VAE_API_KEY")
            .env_remove("VAE_AUTH_ALL")
            // Off unless a test turns it on: tests run in parallel and would share its port.
            .env("VAE_GRPC_ADDR", "")
            // Short leases, so that a job whose server a test killed is taken over in seconds.
            .env("VAE_JOB_LEASE_SECS", "3")
            .env("VAE_JOB_HEARTBEAT_SECS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &options.env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("starting vae-serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let log_writer = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.contains("listening addr=").then(|| line.split("listening addr=").nth(1)).flatten() {
                    let _ = addr_tx.send(addr.trim().to_string());
                }
                log_writer.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let addr =
            addr_rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("server did not start; log:\n{}", log.lock().unwrap()));
        Server { child, base: format!("http://{addr}"), log, _dir: Some(dir) }
    }

    /// The gRPC address the server logged, when it serves gRPC.
    pub fn grpc_addr(&self) -> Option<String> {
        let log = self.log.lock().unwrap();
        log.lines().find_map(|line| line.split("gRPC listening addr=").nth(1).map(|a| a.trim().to_string()))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Polls /readyz until it answers 200.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if reqwest::blocking::get(self.url("/readyz")).is_ok_and(|r| r.status() == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("server never became ready; log:\n{}", self.log.lock().unwrap());
    }

    /// Waits up to two seconds for `needle` to appear in the server's log.
    pub fn log_contains(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if self.log.lock().unwrap().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Kills the process outright (SIGKILL), as a crash would.
    pub fn kill_hard(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) on our own child process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

pub fn shared_data() -> PathBuf {
    vae_serve::data::shared_data_dir()
}

/// Trains a small semi-supervised model on 1,000 MNIST images with the project's own CLI and
/// publishes it as `name` under `models_dir`.
pub fn train_tiny_model(models_dir: &Path, name: &str) {
    train_tiny(models_dir, name, "semi-supervised")
}

/// As `train_tiny_model`, with any architecture.
pub fn train_tiny(models_dir: &Path, name: &str, architecture: &str) {
    run_cli(
        &[
            "train",
            "--dataset",
            "mnist",
            "--architecture",
            architecture,
            "--name",
            name,
            "--epochs",
            "1",
            "--max-train",
            "1000",
            "--hidden",
            "64",
            "--latent-dim",
            "8",
            "--labeled",
            "100",
        ],
        models_dir,
    );
}

/// Runs `vae-serve <args>` on the CPU with `models_dir` and the shared data, and requires it to
/// succeed; returns what it printed.
pub fn run_cli(args: &[&str], models_dir: &Path) -> std::process::Output {
    let output = Command::new(BINARY)
        .args(args)
        .args(["--device", "cpu", "--models-dir"])
        .arg(models_dir)
        .arg("--data-dir")
        .arg(shared_data())
        .output()
        .expect("running vae-serve");
    assert!(output.status.success(), "vae-serve {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    output
}

/// A models directory holding a copy of the shipped default model's first version, `v1` (jobs
/// publish next to it).
pub fn models_with_default(dir: &Path) -> std::path::PathBuf {
    let models = dir.join("models");
    let target = models.join("mnist-ssvae/v1");
    std::fs::create_dir_all(&target).unwrap();
    for file in ["manifest.json", "model.safetensors"] {
        std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/mnist-ssvae/v1").join(file), target.join(file)).unwrap();
    }
    models
}

/// Puts a copy of the shipped MNIST judge into `models_dir/.judges`, so jobs there are scored.
pub fn with_mnist_judge(models_dir: &Path) {
    let judges = models_dir.join(".judges");
    std::fs::create_dir_all(&judges).unwrap();
    for file in ["mnist.json", "mnist.safetensors"] {
        std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/.judges").join(file), judges.join(file)).unwrap();
    }
}

/// The first `n` MNIST test digits as PNG files, with their labels.
pub fn test_digits(n: usize) -> Vec<(Vec<u8>, i64)> {
    let source = vae_serve::data::resolve("mnist", &shared_data()).unwrap();
    let splits = vae_serve::data::load(
        &source,
        &vae_serve::data::DataOptions { validation_fraction: 0.0, max_train: Some(10), ..Default::default() },
    )
    .unwrap();
    let test = splits.test.first(n);
    let pixels = Vec::<u8>::try_from((test.images * 255.0).round().to_kind(tch::Kind::Uint8).view([-1])).unwrap();
    let labels = Vec::<i64>::try_from(&test.labels).unwrap();
    pixels
        .chunks(784)
        .zip(labels)
        .map(|(p, l)| {
            let image = image::GrayImage::from_raw(28, 28, p.to_vec()).unwrap();
            let mut png = std::io::Cursor::new(Vec::new());
            image.write_to(&mut png, image::ImageFormat::Png).unwrap();
            (png.into_inner(), l)
        })
        .collect()
}

/// A small MLP training request on MNIST.
pub fn tiny_job(name: &str, epochs: usize, max_train: usize) -> Value {
    json!({
        "name": name,
        "dataset": "mnist",
        "options": { "epochs": epochs, "batch_size": 50, "model": { "architecture": "mlp", "hidden": [64], "latent_dim": 8 } },
        "data": { "max_train": max_train, "validation_fraction": 0.1 }
    })
}

/// Polls job `id` until its state is one of `wanted`.
pub fn wait_for_state(server: &Server, id: i64, wanted: &[&str], limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let job: Value = client().get(server.url(&format!("/v1/jobs/{id}"))).send().unwrap().json().unwrap();
        if wanted.contains(&job["state"].as_str().unwrap()) {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} stuck: {job}\nlog:\n{}", server.log.lock().unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// POST /train.
pub fn submit(server: &Server, body: &Value) -> reqwest::blocking::Response {
    client().post(server.url("/train")).json(body).send().unwrap()
}
