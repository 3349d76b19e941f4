//! Datasets: where they are found, how they are read, and how they are split and shuffled.
//! Images are float tensors `[N, C, H, W]` with intensities in [0, 1]; labels are `i64 [N]`.

pub mod download;
pub mod idx;
pub mod image_folder;

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::models::ImageShape;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {why}")]
    Format { path: PathBuf, why: String },
    #[error("dataset `{name}` not found; looked in: {tried}. Put the files in one of these places or pass a path (mnist and fashion-mnist are downloaded when missing)")]
    NotFound { name: String, tried: String },
    #[error("dataset `{name}` not found; looked in: {tried}. Downloading it from its canonical mirror failed (offline?): {source}")]
    Download { name: String, tried: String, source: download::DownloadError },
    #[error("{0}")]
    Invalid(String),
}

/// Where Debian's dataset packages (e.g. `dataset-fashion-mnist`) install their files.
const SYSTEM_DATASETS: &str = "/usr/share/datasets";

/// How a dataset is stored on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatasetSource {
    /// MNIST-style `train-images-idx3-ubyte[.gz]` and friends.
    Idx(PathBuf),
    /// One subfolder per class (optionally under `train/` and `test/`).
    ImageFolder(PathBuf),
}

impl DatasetSource {
    pub fn path(&self) -> &Path {
        match self {
            Self::Idx(p) | Self::ImageFolder(p) => p,
        }
    }
}

/// Finds a dataset: an explicit path, then `$VAE_DATA_DIR/<name>`, then `/usr/share/datasets/<name>`.
pub fn resolve(spec: &str, data_dir: &Path) -> Result<DatasetSource, DataError> {
    let candidates = [PathBuf::from(spec), data_dir.join(spec), Path::new(SYSTEM_DATASETS).join(spec)];
    if let Some(source) = candidates.iter().find_map(|dir| detect(dir)) {
        return Ok(source);
    }
    let tried = candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
    Err(DataError::NotFound { name: spec.to_string(), tried })
}

/// What a directory holds, if it is a dataset.
fn detect(dir: &Path) -> Option<DatasetSource> {
    if !dir.is_dir() {
        None
    } else if idx::locate(dir, "train-images-idx3-ubyte").is_some() {
        Some(DatasetSource::Idx(dir.to_path_buf()))
    } else if image_folder::looks_like_image_folder(dir) {
        Some(DatasetSource::ImageFolder(dir.to_path_buf()))
    } else {
        None
    }
}

/// Checks that `resolve_or_download` has something to work with: the dataset is found, or it is
/// missing but has a canonical mirror (the download then happens where training runs).
pub fn check_obtainable(spec: &str, data_dir: &Path) -> Result<(), DataError> {
    match resolve(spec, data_dir) {
        Err(DataError::NotFound { .. }) if download::canonical(spec).is_some() => Ok(()),
        found => found.map(|_| ()),
    }
}

/// `resolve`, and when that finds nothing for a dataset with a canonical mirror (mnist,
/// fashion-mnist), a verified download into `data_dir/<name>`.
pub fn resolve_or_download(spec: &str, data_dir: &Path) -> Result<DatasetSource, DataError> {
    match (resolve(spec, data_dir), download::canonical(spec)) {
        (Err(DataError::NotFound { name, tried }), Some(mirror)) => {
            tracing::info!(dataset = %name, mirror = %mirror.base_url, "dataset not found locally: downloading it");
            download::download(&mirror, &data_dir.join(spec)).map_err(|source| DataError::Download { name, tried, source })?;
            resolve(spec, data_dir)
        }
        (found, _) => found,
    }
}

/// A dataset that `resolve` would find by name alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CatalogEntry {
    pub name: String,
    /// `idx` or `image-folder`.
    pub format: String,
    pub path: String,
}

/// Every dataset findable by name: the folders of `data_dir`, then those of the system dataset
/// directory, each name once (the first place wins, as in `resolve`).
pub fn catalog(data_dir: &Path) -> Vec<CatalogEntry> {
    let mut entries: Vec<CatalogEntry> = Vec::new();
    for root in [data_dir, Path::new(SYSTEM_DATASETS)] {
        let Ok(children) = std::fs::read_dir(root) else { continue };
        let mut names: Vec<String> = children.filter_map(Result::ok).filter_map(|e| e.file_name().into_string().ok()).collect();
        names.sort();
        for name in names {
            if entries.iter().any(|e| e.name == name) {
                continue;
            }
            let dir = root.join(&name);
            let format = match detect(&dir) {
                Some(DatasetSource::Idx(_)) => "idx",
                Some(DatasetSource::ImageFolder(_)) => "image-folder",
                None => continue,
            };
            entries.push(CatalogEntry { path: dir.display().to_string(), format: format.into(), name });
        }
    }
    entries
}

/// A labelled image set held in memory.
#[derive(Debug)]
pub struct Dataset {
    pub images: Tensor,
    pub labels: Tensor,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The examples at `indices`, in that order.
    pub fn select(&self, indices: &[i64]) -> Dataset {
        let index = Tensor::from_slice(indices);
        Dataset { images: self.images.index_select(0, &index), labels: self.labels.index_select(0, &index) }
    }

    pub fn to_device(&self, device: tch::Device) -> Dataset {
        Dataset { images: self.images.to_device(device), labels: self.labels.to_device(device) }
    }

    pub fn first(&self, n: usize) -> Dataset {
        let n = n.min(self.len()) as i64;
        Dataset { images: self.images.narrow(0, 0, n), labels: self.labels.narrow(0, 0, n) }
    }
}

/// Train / validation / test, plus what the labels mean.
#[derive(Debug)]
pub struct Splits {
    pub train: Dataset,
    pub validation: Dataset,
    pub test: Dataset,
    pub shape: ImageShape,
    pub label_names: Vec<String>,
}

/// How to load and split a dataset.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DataOptions {
    /// Fraction of the training set held out for validation.
    pub validation_fraction: f64,
    /// Seed for the validation split (and the test split of image folders without one).
    pub seed: u64,
    /// Target shape for image folders (IDX sets keep their own 1×28×28).
    pub image_shape: Option<ImageShape>,
    /// Use at most this many training images (after the split), for quick runs.
    pub max_train: Option<usize>,
}

impl Default for DataOptions {
    fn default() -> Self {
        Self { validation_fraction: 0.1, seed: 0, image_shape: None, max_train: None }
    }
}

/// The held-out fraction must leave most of the training set for training.
pub fn check_validation_fraction(fraction: f64) -> Result<(), String> {
    if (0.0..0.9).contains(&fraction) {
        Ok(())
    } else {
        Err(format!("{fraction} must be in [0, 0.9)"))
    }
}

pub fn load(source: &DatasetSource, options: &DataOptions) -> Result<Splits, DataError> {
    check_validation_fraction(options.validation_fraction).map_err(|why| DataError::Invalid(format!("validation fraction {why}")))?;
    let (full_train, test, shape, label_names) = match source {
        DatasetSource::Idx(dir) => {
            let train = read_idx_pair(dir, "train")?;
            let test = read_idx_pair(dir, "t10k")?;
            (train, test, ImageShape::MNIST, idx_label_names(dir))
        }
        DatasetSource::ImageFolder(dir) => {
            let shape = options.image_shape.clone().unwrap_or(ImageShape { channels: 3, height: 32, width: 32 });
            let folder = image_folder::read(dir, &shape, options.seed)?;
            (folder.train, folder.test, shape, folder.label_names)
        }
    };
    let order = shuffled_indices(full_train.len(), options.seed);
    let n_validation = (full_train.len() as f64 * options.validation_fraction).round() as usize;
    let validation = full_train.select(&order[..n_validation]);
    let mut train_indices = order[n_validation..].to_vec();
    // Keep the original order inside the training part: shuffling per epoch happens in the trainer.
    train_indices.sort_unstable();
    if let Some(max) = options.max_train {
        train_indices.truncate(max);
    }
    let train = full_train.select(&train_indices);
    if train.is_empty() {
        return Err(DataError::Invalid("no training images left after the validation split".into()));
    }
    Ok(Splits { train, validation, test, shape, label_names })
}

/// A permutation of `0..n` fixed by `seed`.
pub fn shuffled_indices(n: usize, seed: u64) -> Vec<i64> {
    let mut order: Vec<i64> = (0..n as i64).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    order
}

/// `per_class` training indices of each class, drawn with `seed`: the labelled subset of
/// semi-supervised training.
pub fn balanced_subset(labels: &Tensor, num_classes: usize, per_class: usize, seed: u64) -> Result<Vec<i64>, DataError> {
    let labels: Vec<i64> = Vec::<i64>::try_from(labels).map_err(|e| DataError::Invalid(e.to_string()))?;
    let mut chosen = Vec::with_capacity(num_classes * per_class);
    for class in 0..num_classes as i64 {
        let mut members: Vec<i64> = labels.iter().enumerate().filter(|(_, &l)| l == class).map(|(i, _)| i as i64).collect();
        if members.len() < per_class {
            return Err(DataError::Invalid(format!("class {class} has {} examples, {per_class} labelled ones asked for", members.len())));
        }
        members.shuffle(&mut ChaCha8Rng::seed_from_u64(seed.wrapping_add(class as u64)));
        chosen.extend_from_slice(&members[..per_class]);
    }
    chosen.sort_unstable();
    Ok(chosen)
}

fn read_idx_pair(dir: &Path, prefix: &str) -> Result<Dataset, DataError> {
    let missing = |stem: &str| DataError::Format { path: dir.to_path_buf(), why: format!("missing {stem}[.gz]") };
    let images_stem = format!("{prefix}-images-idx3-ubyte");
    let labels_stem = format!("{prefix}-labels-idx1-ubyte");
    let images_path = idx::locate(dir, &images_stem).ok_or_else(|| missing(&images_stem))?;
    let labels_path = idx::locate(dir, &labels_stem).ok_or_else(|| missing(&labels_stem))?;
    let images = idx::read(&images_path)?;
    let labels = idx::read(&labels_path)?;
    if images.dims.len() != 3 || labels.dims.len() != 1 || images.dims[0] != labels.dims[0] {
        return Err(DataError::Format {
            path: images_path,
            why: format!("image dims {:?} do not match label dims {:?}", images.dims, labels.dims),
        });
    }
    let (n, h, w) = (images.dims[0] as i64, images.dims[1] as i64, images.dims[2] as i64);
    let images = Tensor::from_slice(&images.data).view([n, 1, h, w]).to_kind(Kind::Float) / 255.0;
    let labels = Tensor::from_slice(&labels.data).to_kind(Kind::Int64);
    Ok(Dataset { images, labels })
}

/// Fashion-MNIST's class names; digits otherwise.
fn idx_label_names(dir: &Path) -> Vec<String> {
    let fashion = dir.to_string_lossy().to_ascii_lowercase().contains("fashion");
    if fashion {
        ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"].map(String::from).to_vec()
    } else {
        (0..10).map(|d| d.to_string()).collect()
    }
}

/// `../shared/data` seen from the crate root: where tests find real data.
pub fn shared_data_dir() -> PathBuf {
    std::env::var_os("VAE_TEST_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_and_loads_shared_mnist() {
        let source = resolve("mnist", &shared_data_dir()).unwrap();
        assert!(matches!(source, DatasetSource::Idx(_)));
        let splits = load(&source, &DataOptions { validation_fraction: 0.1, ..Default::default() }).unwrap();
        assert_eq!(splits.train.len(), 9000);
        assert_eq!(splits.validation.len(), 1000);
        assert_eq!(splits.test.len(), 10000);
        assert_eq!(splits.train.images.size(), vec![9000, 1, 28, 28]);
        let (lo, hi) = (splits.test.images.min().double_value(&[]), splits.test.images.max().double_value(&[]));
        assert!(lo >= 0.0 && hi <= 1.0 && hi > 0.99);
        assert_eq!(splits.label_names[3], "3");
    }

    #[test]
    fn catalog_lists_findable_datasets_once() {
        let entries = catalog(&shared_data_dir());
        let find = |name: &str| entries.iter().find(|e| e.name == name).map(|e| e.format.as_str());
        assert_eq!(find("mnist"), Some("idx"));
        assert_eq!(find("fashion-mnist"), Some("idx"));
        assert_eq!(entries.iter().filter(|e| e.name == "fashion-mnist").count(), 1, "{entries:?}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("not-a-dataset")).unwrap();
        assert!(catalog(dir.path()).iter().all(|e| e.name != "not-a-dataset"));
    }

    #[test]
    fn unknown_dataset_names_every_place_tried() {
        let err = resolve("no-such-set", Path::new("/tmp/nowhere")).unwrap_err().to_string();
        assert!(
            err.contains("/tmp/nowhere/no-such-set") && err.contains("/usr/share/datasets/no-such-set") && err.contains("pass a path"),
            "{err}"
        );
        // No mirror for unknown names: resolve_or_download gives the same answer without a download.
        assert_eq!(resolve_or_download("no-such-set", Path::new("/tmp/nowhere")).unwrap_err().to_string(), err);
        assert_eq!(check_obtainable("no-such-set", Path::new("/tmp/nowhere")).unwrap_err().to_string(), err);
        // A missing dataset with a mirror is obtainable (checked without downloading).
        assert!(check_obtainable("fashion-mnist", Path::new("/tmp/nowhere")).is_ok());
    }

    #[test]
    fn balanced_subset_is_balanced_and_seeded() {
        let labels = Tensor::from_slice(&(0..200).map(|i| i % 4).collect::<Vec<i64>>());
        let a = balanced_subset(&labels, 4, 5, 7).unwrap();
        assert_eq!(a, balanced_subset(&labels, 4, 5, 7).unwrap());
        assert_ne!(a, balanced_subset(&labels, 4, 5, 8).unwrap());
        assert_eq!(a.len(), 20);
        for class in 0..4 {
            assert_eq!(a.iter().filter(|&&i| i % 4 == class).count(), 5);
        }
        assert!(balanced_subset(&labels, 4, 51, 0).is_err());
    }
}
