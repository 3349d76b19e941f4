//! Turning image tensors into PNG files: single images and grids.

use std::io::Cursor;

use image::{DynamicImage, GrayImage, ImageFormat, RgbImage};
use tch::{Kind, Tensor};

/// One image `[C, H, W]` with intensities in [0, 1] as an 8-bit image.
pub fn to_image(image: &Tensor) -> DynamicImage {
    let size = image.size();
    let (c, h, w) = (size[0], size[1] as u32, size[2] as u32);
    let bytes: Vec<u8> = Vec::<u8>::try_from((image.to_device(tch::Device::Cpu).clamp(0.0, 1.0) * 255.0).round().to_kind(Kind::Uint8).permute([1, 2, 0]).contiguous().flatten(0, -1))
        .expect("u8 tensor converts");
    if c == 1 {
        DynamicImage::ImageLuma8(GrayImage::from_raw(w, h, bytes).expect("sizes match"))
    } else {
        DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, bytes).expect("sizes match"))
    }
}

/// Images `[N, C, H, W]` tiled `columns` wide with a 2-pixel gutter.
pub fn grid(images: &Tensor, columns: i64) -> DynamicImage {
    let size = images.size();
    let (n, c, h, w) = (size[0], size[1], size[2], size[3]);
    let columns = columns.clamp(1, n.max(1));
    let rows = (n + columns - 1) / columns;
    let gap = 2;
    let canvas = Tensor::zeros([c, rows * (h + gap) + gap, columns * (w + gap) + gap], (Kind::Float, tch::Device::Cpu));
    let images = images.to_device(tch::Device::Cpu);
    for i in 0..n {
        let (row, col) = (i / columns, i % columns);
        canvas.narrow(1, gap + row * (h + gap), h).narrow(2, gap + col * (w + gap), w).copy_(&images.get(i));
    }
    to_image(&canvas)
}

pub fn png_bytes(image: &DynamicImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, ImageFormat::Png).expect("PNG encoding into memory cannot fail");
    out.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_places_each_image_in_its_cell() {
        let images = Tensor::zeros([3, 1, 4, 4], (Kind::Float, tch::Device::Cpu));
        let _ = images.get(2).fill_(1.0);
        let grid = grid(&images, 2).to_luma8();
        assert_eq!((grid.width(), grid.height()), (2 * 6 + 2, 2 * 6 + 2));
        assert_eq!(grid.get_pixel(2, 8).0[0], 255, "third image starts the second row");
        assert_eq!(grid.get_pixel(2, 2).0[0], 0);
        let png = png_bytes(&DynamicImage::ImageLuma8(grid));
        assert_eq!(&png[1..4], b"PNG");
    }
}
