//! An uploaded image, as the inference endpoints read it: header check, then decode and convert
//! to the model's shape (PNG, JPEG, GIF, WebP, BMP; anything else is refused).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vae_serve::inference::input;
use vae_serve::models::ImageShape;

/// Smaller than the server's 4096 so that each run stays fast; the check is the same.
const MAX_SIDE: u32 = 512;

fuzz_target!(|data: &[u8]| {
    let shape =
        if data.first().is_some_and(|b| b & 1 == 1) { ImageShape { channels: 3, height: 32, width: 32 } } else { ImageShape::MNIST };
    if let Ok(upload) = input::open(0, data, MAX_SIDE) {
        if let Ok((pixels, _)) = upload.decode(&shape) {
            assert_eq!(pixels.len() as i64, shape.channels * shape.height * shape.width);
            assert!(pixels.iter().all(|p| (0.0..=1.0).contains(p)));
        }
    }
});
