//! Turning pixel buffers into PNG images: single images, grids and strips. Plain Rust, no torch,
//! so it can run on any thread (the HTTP layer encodes on the blocking pool).

use std::io::Cursor;

use image::{DynamicImage, GrayImage, ImageFormat, RgbImage};
use serde::Serialize;

use crate::models::ImageShape;

/// `count` images of one shape, intensities in [0, 1], each stored channel-major (C×H×W).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageBatch {
    pub shape: ImageShape,
    pub pixels: Vec<f32>,
}

impl ImageBatch {
    /// Pixel positions in all images (height × width × count), as `input::Header::pixels` counts
    /// an upload's, so both measure image work alike.
    pub fn area(&self) -> u64 {
        (self.count() as i64 * self.shape.height * self.shape.width) as u64
    }

    pub fn count(&self) -> usize {
        self.pixels.len() / self.shape.pixels().max(1) as usize
    }

    /// The pixels of image `i`.
    pub fn image(&self, i: usize) -> &[f32] {
        let size = self.shape.pixels() as usize;
        &self.pixels[i * size..(i + 1) * size]
    }

    /// Image `i` as an 8-bit picture.
    pub fn to_picture(&self, i: usize) -> DynamicImage {
        picture(&self.shape, self.image(i))
    }

    /// All images tiled `columns` wide with a 2-pixel black gutter.
    pub fn grid(&self, columns: usize) -> DynamicImage {
        let n = self.count();
        let ImageShape { channels, height, width } = self.shape.clone();
        let (c, h, w) = (channels as usize, height as usize, width as usize);
        let columns = columns.clamp(1, n.max(1));
        let rows = n.div_ceil(columns);
        let gap = 2;
        let (canvas_h, canvas_w) = (rows * (h + gap) + gap, columns * (w + gap) + gap);
        let mut canvas = vec![0.0f32; c * canvas_h * canvas_w];
        for i in 0..n {
            let (top, left) = (gap + (i / columns) * (h + gap), gap + (i % columns) * (w + gap));
            let src = self.image(i);
            for ch in 0..c {
                for y in 0..h {
                    let from = ch * h * w + y * w;
                    let to = ch * canvas_h * canvas_w + (top + y) * canvas_w + left;
                    canvas[to..to + w].copy_from_slice(&src[from..from + w]);
                }
            }
        }
        picture(&ImageShape { channels, height: canvas_h as i64, width: canvas_w as i64 }, &canvas)
    }
}

/// One C×H×W image with intensities in [0, 1] as an 8-bit grey or RGB picture.
fn picture(shape: &ImageShape, pixels: &[f32]) -> DynamicImage {
    let (h, w) = (shape.height as u32, shape.width as u32);
    let to_byte = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    if shape.channels == 1 {
        DynamicImage::ImageLuma8(GrayImage::from_raw(w, h, pixels.iter().map(|&v| to_byte(v)).collect()).expect("sizes match"))
    } else {
        let plane = (h * w) as usize;
        let rgb = (0..plane).flat_map(|i| (0..3).map(move |c| to_byte(pixels[c * plane + i]))).collect();
        DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, rgb).expect("sizes match"))
    }
}

pub fn png_bytes(image: &DynamicImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, ImageFormat::Png).expect("PNG encoding into memory cannot fail");
    out.into_inner()
}

/// Columns of a near-square grid for `n` images.
pub fn square_columns(n: usize) -> usize {
    (n as f64).sqrt().ceil() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_places_each_image_in_its_cell() {
        let shape = ImageShape { channels: 1, height: 4, width: 4 };
        let mut pixels = vec![0.0f32; 3 * 16];
        pixels[32..48].fill(1.0);
        let batch = ImageBatch { shape, pixels };
        assert_eq!(batch.count(), 3);
        let grid = batch.grid(2).to_luma8();
        assert_eq!((grid.width(), grid.height()), (2 * 6 + 2, 2 * 6 + 2));
        assert_eq!(grid.get_pixel(2, 8).0[0], 255, "third image starts the second row");
        assert_eq!(grid.get_pixel(2, 2).0[0], 0);
        let png = png_bytes(&DynamicImage::ImageLuma8(grid));
        assert_eq!(&png[1..4], b"PNG");
    }

    #[test]
    fn colour_images_keep_their_channels() {
        let shape = ImageShape { channels: 3, height: 1, width: 2 };
        // Red plane, green plane, blue plane.
        let batch = ImageBatch { shape, pixels: vec![1.0, 0.0, 0.0, 1.0, 0.0, 0.0] };
        let rgb = batch.to_picture(0).to_rgb8();
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 0, 0]);
        assert_eq!(rgb.get_pixel(1, 0).0, [0, 255, 0]);
    }
}
