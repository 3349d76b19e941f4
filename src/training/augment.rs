//! Data augmentation for training batches.

use tch::{Kind, Tensor};

/// Moves every image by its own random whole-pixel offset in [-max_shift, max_shift] on each
/// axis, filling with zeros. One affine grid and one nearest-neighbour sample for the whole
/// batch, so it costs two kernels on any device; the offsets come from torch's seeded generator,
/// so resumed runs draw the same ones.
pub fn random_shift(images: &Tensor, max_shift: i64) -> Tensor {
    if max_shift == 0 {
        return images.shallow_clone();
    }
    let n = images.size()[0];
    shift(images, &Tensor::randint_low(-max_shift, max_shift + 1, [n, 2], (Kind::Int64, images.device())))
}

/// Moves image i by `offsets[i] = (dx, dy)` whole pixels (`[N, 2]`), filling with zeros.
pub fn shift(images: &Tensor, offsets: &Tensor) -> Tensor {
    let size = images.size();
    let (n, height, width) = (size[0], size[2], size[3]);
    let options = (Kind::Float, images.device());
    let offsets = offsets.to_kind(Kind::Float);
    // affine_grid works in normalised coordinates, where one pixel spans 2/W across and 2/H down.
    let dx = offsets.select(1, 0) * (2.0 / width as f64);
    let dy = offsets.select(1, 1) * (2.0 / height as f64);
    let (ones, zeros) = (Tensor::ones([n], options), Tensor::zeros([n], options));
    let theta = Tensor::stack(&[&ones, &zeros, &dx, &zeros, &ones, &dy], 1).view([n, 2, 3]);
    let grid = Tensor::affine_grid_generator(&theta, size.as_slice(), false);
    const NEAREST: i64 = 1;
    const ZEROS: i64 = 0;
    images.grid_sampler(&grid, NEAREST, ZEROS, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_are_whole_pixels_within_the_limit() {
        tch::manual_seed(3);
        // One lit pixel in the middle of each 9×9 image: after the shift it is still one pixel.
        let images = Tensor::zeros([64, 1, 9, 9], (Kind::Float, tch::Device::Cpu));
        let _ = images.narrow(2, 4, 1).narrow(3, 4, 1).fill_(1.0);
        let shifted = random_shift(&images, 2);
        assert_eq!(shifted.sum(Kind::Float).double_value(&[]), 64.0, "every image keeps exactly its one pixel");
        let positions = shifted.view([64, 81]).argmax(1, false);
        let (rows, cols) = (positions.divide_scalar_mode(9, "floor"), positions.remainder(9));
        for axis in [rows, cols] {
            let (lo, hi) = (axis.min().int64_value(&[]), axis.max().int64_value(&[]));
            assert!((2..=6).contains(&lo) && (2..=6).contains(&hi), "offsets beyond ±2: {lo}..{hi}");
        }
        let distinct = Vec::<i64>::try_from(&positions).unwrap().into_iter().collect::<std::collections::HashSet<_>>().len();
        assert!(distinct > 10, "offsets should vary between images, got {distinct} positions");
        assert!(random_shift(&images, 0).equal(&images));
    }
}
