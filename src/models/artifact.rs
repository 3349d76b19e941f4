//! A model on disk: a directory with `model.safetensors` and `manifest.json`. Model directories
//! live at `<models_dir>/<name>/v<N>/` and are published atomically (temporary directory,
//! fsync, rename), so a crash never leaves a half-written model visible.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::{build, LoadedModel, ModelConfig, ModelError};

pub const FORMAT_VERSION: u32 = 1;
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const MANIFEST_FILE: &str = "manifest.json";

/// Everything known about a saved model besides its weights.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format_version: u32,
    pub name: String,
    pub config: ModelConfig,
    /// Dataset the model was trained on (name or path as given).
    pub dataset: String,
    /// The training options used, as given to the trainer.
    pub training: serde_json::Value,
    /// Final metrics (test ELBO, accuracy, …).
    pub metrics: BTreeMap<String, f64>,
    pub torch_version: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

fn artifact_error(path: &Path, why: impl ToString) -> ModelError {
    ModelError::Artifact { path: path.display().to_string(), why: why.to_string() }
}

/// Writes the weights and manifest into `dir` (created if needed), fsyncing both.
pub fn write(dir: &Path, loaded: &LoadedModel, manifest: &Manifest) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| artifact_error(dir, e))?;
    let named: Vec<(String, Tensor)> = loaded.vars.variables().into_iter().collect();
    let weights = dir.join(WEIGHTS_FILE);
    Tensor::write_safetensors(&named, &weights)?;
    let manifest_path = dir.join(MANIFEST_FILE);
    let json = serde_json::to_vec_pretty(manifest).map_err(|e| artifact_error(dir, e))?;
    std::fs::write(&manifest_path, json).map_err(|e| artifact_error(&manifest_path, e))?;
    for file in [&weights, &manifest_path] {
        File::open(file).and_then(|f| f.sync_all()).map_err(|e| artifact_error(file, e))?;
    }
    Ok(())
}

pub fn read_manifest(dir: &Path) -> Result<Manifest, ModelError> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&path).map_err(|e| artifact_error(&path, e))?;
    parse_manifest(&bytes).map_err(|why| match why {
        ModelError::Config(why) => artifact_error(&path, why),
        other => other,
    })
}

/// A manifest from the bytes of `manifest.json`: well-formed, of this format version, with a
/// configuration that can be built.
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, ModelError> {
    let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| ModelError::Config(format!("invalid manifest: {e}")))?;
    if manifest.format_version != FORMAT_VERSION {
        return Err(ModelError::Config(format!("format version {} is not supported (expected {FORMAT_VERSION})", manifest.format_version)));
    }
    manifest.config.validate()?;
    Ok(manifest)
}

/// Loads a model directory onto `device`, checking every tensor's name and shape against the
/// layers the manifest describes.
pub fn load(dir: &Path, device: Device) -> Result<(Manifest, LoadedModel), ModelError> {
    let manifest = read_manifest(dir)?;
    let mut loaded = build(&manifest.config, device)?;
    let weights = dir.join(WEIGHTS_FILE);
    let stored: BTreeMap<String, Tensor> =
        Tensor::read_safetensors(&weights).map_err(|e| artifact_error(&weights, e))?.into_iter().collect();
    let expected = loaded.vars.variables();
    let expected_shapes = expected.iter().map(|(n, t)| (n.clone(), t.size())).collect();
    check_shapes(&weights, &expected_shapes, &stored.iter().map(|(n, t)| (n.clone(), t.size())).collect())?;
    tch::no_grad(|| {
        for (name, mut var) in expected {
            var.copy_(&stored[&name]);
        }
    });
    loaded.vars.freeze();
    Ok((manifest, loaded))
}

/// Whether a model directory could be loaded, without reading its weights: the manifest, and
/// the weights file's header (its tensors' names and shapes, and that the file holds their data)
/// against the layers the manifest describes. A listing uses it to mark broken versions.
pub fn check(dir: &Path) -> Result<Manifest, ModelError> {
    let manifest = read_manifest(dir)?;
    let weights = dir.join(WEIGHTS_FILE);
    let stored = safetensors_shapes(&weights).map_err(|why| artifact_error(&weights, why))?;
    // The layers' shapes, from a model built on the CPU and dropped.
    let expected = build(&manifest.config, Device::Cpu)?.vars.variables().into_iter().map(|(n, t)| (n, t.size())).collect();
    check_shapes(&weights, &expected, &stored)?;
    Ok(manifest)
}

/// Tensor names and their shapes.
pub type Shapes = BTreeMap<String, Vec<i64>>;

fn check_shapes(weights: &Path, expected: &Shapes, stored: &Shapes) -> Result<(), ModelError> {
    let mut problems = Vec::new();
    for (name, shape) in expected {
        match stored.get(name) {
            None => problems.push(format!("missing tensor `{name}`")),
            Some(found) if found != shape => problems.push(format!("`{name}` has shape {found:?}, the manifest's layers need {shape:?}")),
            Some(_) => {}
        }
    }
    problems.extend(stored.keys().filter(|n| !expected.contains_key(*n)).map(|n| format!("unexpected tensor `{n}`")));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(artifact_error(weights, format!("weights do not match the manifest: {}", problems.join("; "))))
    }
}

/// Tensor names and shapes from a safetensors file's header, reading only the header.
fn safetensors_shapes(path: &Path) -> Result<Shapes, String> {
    use std::io::Read;
    let mut file = File::open(path).map_err(|e| e.to_string())?;
    let file_len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut start = [0u8; 8];
    file.read_exact(&mut start).map_err(|_| "not a safetensors file: shorter than its header".to_string())?;
    let header_len = u64::from_le_bytes(start);
    if header_len > file_len.saturating_sub(8) {
        return Err(format!("not a safetensors file: a header of {header_len} bytes in a file of {file_len}"));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| e.to_string())?;
    parse_safetensors_header(&header, file_len - 8 - header_len)
}

/// The tensors a safetensors header (the JSON after the 8-byte length) describes, checked
/// against the `data_len` bytes of data that follow it.
pub fn parse_safetensors_header(header: &[u8], data_len: u64) -> Result<Shapes, String> {
    #[derive(Deserialize)]
    struct Entry {
        shape: Vec<i64>,
        data_offsets: [u64; 2],
    }
    let mut entries: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| format!("not a safetensors file: its header is not JSON ({e})"))?;
    entries.remove("__metadata__");
    let mut shapes = Shapes::new();
    let mut data_end = 0;
    for (name, entry) in entries {
        let entry: Entry = serde_json::from_value(entry).map_err(|e| format!("tensor `{name}` in the header: {e}"))?;
        let [begin, end] = entry.data_offsets;
        if begin > end || entry.shape.iter().any(|&d| d < 0) {
            return Err(format!("tensor `{name}` in the header: offsets {begin}..{end}, shape {:?}", entry.shape));
        }
        data_end = data_end.max(end);
        shapes.insert(name, entry.shape);
    }
    if data_end != data_len {
        return Err(format!("truncated or padded: the header describes {data_end} bytes of data, the file holds {data_len}"));
    }
    Ok(shapes)
}

/// `<models_dir>/<name>/v<N>` for each published version N, ascending.
pub fn versions(models_dir: &Path, name: &str) -> Vec<(u32, PathBuf)> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(models_dir.join(name))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_str()?.strip_prefix('v')?.parse().ok()?;
            e.path().join(MANIFEST_FILE).is_file().then(|| (n, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// A published version as a listing sees it: its manifest, or why it cannot be served.
pub type ListedVersion = (u32, Result<Manifest, ModelError>);

/// Every published model: names (sorted) with their versions, ascending, each checked.
pub fn list(models_dir: &Path) -> Vec<(String, Vec<ListedVersion>)> {
    let mut names: Vec<String> = std::fs::read_dir(models_dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .filter(|name| validate_name(name).is_ok())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| (name.clone(), versions(models_dir, &name).into_iter().map(|(v, dir)| (v, check(&dir))).collect::<Vec<_>>()))
        .filter(|(_, versions)| !versions.is_empty())
        .collect()
}

/// Publishes a model as the next version of `name`; returns the version and its directory.
pub fn publish(models_dir: &Path, loaded: &LoadedModel, manifest: &Manifest) -> Result<(u32, PathBuf), ModelError> {
    validate_name(&manifest.name)?;
    let family = models_dir.join(&manifest.name);
    std::fs::create_dir_all(&family).map_err(|e| artifact_error(&family, e))?;
    let version = versions(models_dir, &manifest.name).last().map_or(1, |(v, _)| v + 1);
    let staging = family.join(format!(".staging-v{version}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    write(&staging, loaded, manifest)?;
    let target = family.join(format!("v{version}"));
    std::fs::rename(&staging, &target).map_err(|e| artifact_error(&target, e))?;
    File::open(&family).and_then(|d| d.sync_all()).map_err(|e| artifact_error(&family, e))?;
    Ok((version, target))
}

/// Version `version` of `name` (its latest when `None`) and its directory, if published.
pub fn find_version(models_dir: &Path, name: &str, version: Option<u32>) -> Result<Option<(u32, PathBuf)>, ModelError> {
    // Names become paths: nothing outside the models directory can be named.
    validate_name(name)?;
    let published = versions(models_dir, name);
    Ok(match version {
        Some(wanted) => published.into_iter().find(|(v, _)| *v == wanted),
        None => published.into_iter().last(),
    })
}

/// Removes version `version` of `name`: renamed out of sight first, so no reader sees half of it.
pub fn remove(models_dir: &Path, name: &str, version: u32) -> Result<(), ModelError> {
    let (_, dir) =
        find_version(models_dir, name, Some(version))?.ok_or_else(|| ModelError::Config(format!("no version {version} of `{name}`")))?;
    let doomed = dir.with_file_name(format!(".deleting-v{version}-{}", std::process::id()));
    std::fs::rename(&dir, &doomed).map_err(|e| artifact_error(&dir, e))?;
    std::fs::remove_dir_all(&doomed).map_err(|e| artifact_error(&doomed, e))
}

/// Model names become directory names: keep them to a safe alphabet.
pub fn validate_name(name: &str) -> Result<(), ModelError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ModelError::Config(format!("model name `{name}`: use 1-64 letters, digits, '-' or '_', starting with a letter or digit")))
    }
}
