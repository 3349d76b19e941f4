//! Image-folder datasets (one subfolder per class, PNG/JPEG/…), converted to the model's shape.
//! `root/train/<class>/` and `root/test/<class>/` when present, otherwise `root/<class>/` with a
//! seeded 10% test split.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::DynamicImage;
use tch::{Kind, Tensor};

use super::{shuffled_indices, DataError, Dataset};
use crate::models::ImageShape;

const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "gif", "webp"];
const TEST_FRACTION: f64 = 0.1;

pub struct ImageFolder {
    pub train: Dataset,
    pub test: Dataset,
    pub label_names: Vec<String>,
}

/// True when `dir` has class subfolders (directly or under `train/`).
pub fn looks_like_image_folder(dir: &Path) -> bool {
    let root = if dir.join("train").is_dir() { dir.join("train") } else { dir.to_path_buf() };
    class_dirs(&root).map(|c| !c.is_empty()).unwrap_or(false)
}

fn class_dirs(root: &Path) -> Result<Vec<PathBuf>, DataError> {
    let io = |source| DataError::Io { path: root.to_path_buf(), source };
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    dirs.sort();
    Ok(dirs)
}

fn image_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let io = |source| DataError::Io { path: dir.to_path_buf(), source };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| IMAGE_EXTENSIONS.contains(&x.to_string_lossy().to_ascii_lowercase().as_str())))
        .collect();
    files.sort();
    Ok(files)
}

/// Resizes (exactly, ignoring aspect) and converts colour to fit `shape`; intensities in [0, 1], CHW order.
pub fn to_model_pixels(image: &DynamicImage, shape: &ImageShape) -> Vec<f32> {
    let resized = image.resize_exact(shape.width as u32, shape.height as u32, FilterType::Triangle);
    let plane = (shape.height * shape.width) as usize;
    if shape.channels == 1 {
        resized.to_luma8().into_raw().into_iter().map(|v| v as f32 / 255.0).collect()
    } else {
        let rgb = resized.to_rgb8().into_raw();
        let mut chw = vec![0.0f32; 3 * plane];
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                chw[c * plane + i] = px[c] as f32 / 255.0;
            }
        }
        chw
    }
}

fn read_classes(root: &Path, class_names: &[String], shape: &ImageShape) -> Result<Dataset, DataError> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for (label, name) in class_names.iter().enumerate() {
        let dir = root.join(name);
        if !dir.is_dir() {
            continue;
        }
        for file in image_files(&dir)? {
            let image = image::open(&file).map_err(|e| DataError::Format { path: file.clone(), why: e.to_string() })?;
            pixels.extend(to_model_pixels(&image, shape));
            labels.push(label as i64);
        }
    }
    let n = labels.len() as i64;
    let images = Tensor::from_slice(&pixels).view([n, shape.channels, shape.height, shape.width]).to_kind(Kind::Float);
    Ok(Dataset { images, labels: Tensor::from_slice(&labels) })
}

pub fn read(dir: &Path, shape: &ImageShape, seed: u64) -> Result<ImageFolder, DataError> {
    let has_splits = dir.join("train").is_dir() && dir.join("test").is_dir();
    let train_root = if has_splits { dir.join("train") } else { dir.to_path_buf() };
    let label_names: Vec<String> =
        class_dirs(&train_root)?.iter().filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).collect();
    if label_names.len() < 2 {
        return Err(DataError::Format { path: train_root, why: "an image folder needs at least two class subfolders".into() });
    }
    let (train, test) = if has_splits {
        (read_classes(&train_root, &label_names, shape)?, read_classes(&dir.join("test"), &label_names, shape)?)
    } else {
        let all = read_classes(&train_root, &label_names, shape)?;
        let order = shuffled_indices(all.len(), seed ^ 0x7e57);
        let n_test = ((all.len() as f64) * TEST_FRACTION).ceil() as usize;
        let (mut test_idx, mut train_idx) = (order[..n_test].to_vec(), order[n_test..].to_vec());
        test_idx.sort_unstable();
        train_idx.sort_unstable();
        (all.select(&train_idx), all.select(&test_idx))
    };
    if train.is_empty() {
        return Err(DataError::Format { path: dir.to_path_buf(), why: "no images found (png, jpg, bmp, gif, webp)".into() });
    }
    Ok(ImageFolder { train, test, label_names })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_folder_of_coloured_images_into_the_requested_shape() {
        let dir = tempfile::tempdir().unwrap();
        for (class, colour) in [("cats", [200u8, 20, 20]), ("dogs", [20u8, 20, 200])] {
            std::fs::create_dir(dir.path().join(class)).unwrap();
            for i in 0..10 {
                let img = image::RgbImage::from_pixel(40 + i, 30, image::Rgb(colour));
                img.save(dir.path().join(class).join(format!("{i}.png"))).unwrap();
            }
        }
        assert!(looks_like_image_folder(dir.path()));
        let shape = ImageShape { channels: 3, height: 16, width: 16 };
        let folder = read(dir.path(), &shape, 1).unwrap();
        assert_eq!(folder.label_names, vec!["cats", "dogs"]);
        assert_eq!(folder.train.len() + folder.test.len(), 20);
        assert_eq!(folder.test.len(), 2);
        assert_eq!(folder.train.images.size(), vec![18, 3, 16, 16]);
        // A cat image is red: channel 0 high, channel 2 low.
        let first_cat = folder.train.images.get(0);
        assert!(first_cat.get(0).mean(Kind::Float).double_value(&[]) > 0.7);
        assert!(first_cat.get(2).mean(Kind::Float).double_value(&[]) < 0.2);
    }
}
