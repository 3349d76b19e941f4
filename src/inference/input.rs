//! Uploaded images → the model's input: format sniffing, size limits checked before decoding
//! (decompression bombs), decoding and conversion to the model's shape. No torch here.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};
use serde::Serialize;
use utoipa::ToSchema;

use crate::data::image_folder::to_model_pixels;
use crate::models::ImageShape;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InputError {
    #[error("image {index}: the body is empty")]
    Empty { index: usize },
    #[error("image {index}: unsupported or unrecognised image format (send PNG, JPEG, GIF, BMP or WebP)")]
    UnsupportedFormat { index: usize },
    #[error("image {index}: {width}x{height} pixels exceeds the limit of {limit}x{limit}")]
    TooLarge { index: usize, width: u32, height: u32, limit: u32 },
    #[error("image {index}: cannot decode: {why}")]
    Corrupt { index: usize, why: String },
    #[error("image decoding did not finish: {0}")]
    Aborted(String),
}

/// Largest width or height of an uploaded image, checked before decoding.
pub const MAX_IMAGE_SIDE: u32 = 4096;
/// Image work (decoding uploads, encoding PNGs) on up to this many pixel positions in all (a 64×64
/// image, grey or colour; an MNIST digit is 784) runs on the caller's own thread: it takes
/// microseconds, less than a hand-off to the blocking pool. Larger work goes to the pool, off the
/// async runtime.
const INLINE_IMAGE_PIXELS: u64 = 64 * 64;

fn runs_inline(pixels: u64) -> bool {
    pixels <= INLINE_IMAGE_PIXELS
}

/// Runs image `work` on `pixels` pixel positions inline or on the blocking pool, by its size.
pub async fn image_work<T: Send + 'static>(pixels: u64, work: impl FnOnce() -> T + Send + 'static) -> Result<T, InputError> {
    if runs_inline(pixels) {
        Ok(work())
    } else {
        on_blocking_pool(work).await
    }
}

async fn on_blocking_pool<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, InputError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| InputError::Aborted(e.to_string()))
}

type Decoded = (Vec<Vec<f32>>, Vec<Conversion>);

/// Checks every upload's header, then decodes and converts them all to `shape`, inline when they
/// are small in all, else on the blocking pool.
pub async fn decode_all<B>(uploads: Vec<B>, shape: &ImageShape) -> Result<Decoded, InputError>
where
    B: AsRef<[u8]> + Send + 'static,
{
    if let Some(decoded) = decode_if_small(&uploads, shape)? {
        return Ok(decoded);
    }
    // Decoders cannot cross threads, so each upload is opened again on the pool: beside decoding
    // a large image, a second header read is nothing.
    let shape = shape.clone();
    let decode = move || {
        uploads.iter().enumerate().map(|(i, bytes)| open(i, bytes.as_ref(), MAX_IMAGE_SIDE)?.decode(&shape)).collect::<Result<Vec<_>, _>>()
    };
    Ok(on_blocking_pool(decode).await??.into_iter().unzip())
}

/// Checks every upload's header and, when they are small in all (the usual case), decodes them
/// here with the decoders that read the headers: opening a decoder is a good part of the cost of a
/// small PNG, whose inflater builds its tables per decoder. `None`: too large to decode inline.
fn decode_if_small<B: AsRef<[u8]>>(uploads: &[B], shape: &ImageShape) -> Result<Option<Decoded>, InputError> {
    let opened = uploads.iter().enumerate().map(|(i, bytes)| open(i, bytes.as_ref(), MAX_IMAGE_SIDE)).collect::<Result<Vec<_>, _>>()?;
    if !runs_inline(opened.iter().map(|upload| upload.header.pixels()).sum()) {
        return Ok(None);
    }
    let decoded = opened.into_iter().map(|upload| upload.decode(shape)).collect::<Result<Vec<_>, _>>()?;
    Ok(Some(decoded.into_iter().unzip()))
}

/// What was done to an upload to fit the model, reported back to the caller.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Conversion {
    /// Format detected from the bytes, e.g. `png`.
    pub format: String,
    pub original_width: u32,
    pub original_height: u32,
    /// Resized to the model's width×height.
    pub resized: bool,
    /// Colour reduced to grey, or grey expanded to RGB.
    pub colour_converted: bool,
}

/// An upload's format and size, read from its header alone.
#[derive(Debug, Clone, Copy)]
struct Header {
    format: ImageFormat,
    width: u32,
    height: u32,
}

impl Header {
    fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }
}

/// Upload `index`, its header read and checked, with the decoder that read it.
pub struct Opened<D> {
    index: usize,
    header: Header,
    decoder: D,
}

/// Reads upload `index`'s header and refuses it if it is not a supported image or is larger than
/// `max_side`, so that no pixel of an oversized image is ever decoded.
pub fn open(index: usize, bytes: &[u8], max_side: u32) -> Result<Opened<impl ImageDecoder + '_>, InputError> {
    if bytes.is_empty() {
        return Err(InputError::Empty { index });
    }
    let format = image::guess_format(bytes).map_err(|_| InputError::UnsupportedFormat { index })?;
    if !matches!(format, ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::Bmp | ImageFormat::WebP) {
        return Err(InputError::UnsupportedFormat { index });
    }
    let decoder = ImageReader::with_format(Cursor::new(bytes), format)
        .into_decoder()
        .map_err(|e| InputError::Corrupt { index, why: e.to_string() })?;
    let (width, height) = decoder.dimensions();
    if width > max_side || height > max_side {
        return Err(InputError::TooLarge { index, width, height, limit: max_side });
    }
    Ok(Opened { index, header: Header { format, width, height }, decoder })
}

impl<D: ImageDecoder> Opened<D> {
    /// Decodes the upload and converts it to `shape`: pixels C×H×W in [0, 1].
    pub fn decode(self, shape: &ImageShape) -> Result<(Vec<f32>, Conversion), InputError> {
        let Opened { index, header: Header { format, width, height }, decoder } = self;
        let image = DynamicImage::from_decoder(decoder).map_err(|e| InputError::Corrupt { index, why: e.to_string() })?;
        let grey = !image.color().has_color();
        let conversion = Conversion {
            format: format.extensions_str().first().copied().unwrap_or("image").to_string(),
            original_width: width,
            original_height: height,
            resized: (width as i64, height as i64) != (shape.width, shape.height),
            colour_converted: grey != (shape.channels == 1),
        };
        Ok((to_model_pixels(&image, shape), conversion))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::png_bytes;

    const MNIST: ImageShape = ImageShape::MNIST;

    fn read(index: usize, bytes: &[u8], shape: &ImageShape, max_side: u32) -> Result<(Vec<f32>, Conversion), InputError> {
        open(index, bytes, max_side)?.decode(shape)
    }

    #[test]
    fn converts_colour_and_size_and_says_so() {
        let rgb = image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(56, 40, image::Rgb([255, 255, 255])));
        let (pixels, conversion) = read(0, &png_bytes(&rgb), &MNIST, 4096).unwrap();
        assert_eq!(pixels.len(), 784);
        assert!(pixels.iter().all(|&p| (p - 1.0).abs() < 1e-6));
        assert_eq!(
            conversion,
            Conversion { format: "png".into(), original_width: 56, original_height: 40, resized: true, colour_converted: true }
        );
        let grey = image::DynamicImage::ImageLuma8(image::GrayImage::new(28, 28));
        let (_, conversion) = read(0, &png_bytes(&grey), &MNIST, 4096).unwrap();
        assert!(!conversion.resized && !conversion.colour_converted);
    }

    #[test]
    fn refuses_bad_uploads_with_their_index() {
        assert_eq!(read(2, b"", &MNIST, 4096).unwrap_err(), InputError::Empty { index: 2 });
        assert_eq!(read(1, b"hello, not an image", &MNIST, 4096).unwrap_err(), InputError::UnsupportedFormat { index: 1 });
        let big = image::DynamicImage::ImageLuma8(image::GrayImage::new(300, 20));
        assert!(matches!(read(0, &png_bytes(&big), &MNIST, 256).unwrap_err(), InputError::TooLarge { width: 300, .. }));
        let mut truncated = png_bytes(&image::DynamicImage::ImageLuma8(image::GrayImage::new(28, 28)));
        truncated.truncate(truncated.len() / 2);
        assert!(matches!(read(0, &truncated, &MNIST, 4096).unwrap_err(), InputError::Corrupt { .. }));
    }

    #[tokio::test]
    async fn decodes_small_uploads_inline_and_large_ones_on_the_pool_alike() {
        let grey = |side| png_bytes(&image::DynamicImage::ImageLuma8(image::GrayImage::from_pixel(side, side, image::Luma([255]))));
        for sides in [vec![28, 28], vec![28, 200]] {
            assert_eq!(runs_inline(sides.iter().map(|&s| u64::from(s * s)).sum()), sides == [28, 28]);
            let (pixels, conversions) = decode_all(sides.iter().map(|&s| grey(s)).collect(), &MNIST).await.unwrap();
            assert!(pixels.iter().all(|p| p.len() == 784 && p.iter().all(|&v| (v - 1.0).abs() < 1e-6)));
            assert_eq!(
                conversions.iter().map(|c| (c.original_width, c.resized)).collect::<Vec<_>>(),
                sides.iter().map(|&s| (s, s != 28)).collect::<Vec<_>>()
            );
        }
        // Every header is checked before anything is decoded, on either path.
        let err = decode_all(vec![grey(28), b"not an image".to_vec()], &MNIST).await.unwrap_err();
        assert_eq!(err, InputError::UnsupportedFormat { index: 1 });
    }

    #[test]
    fn a_decompression_bomb_is_refused_from_its_header() {
        // A PNG header claiming 100000×100000 pixels; nothing behind it is ever decoded.
        let small = png_bytes(&image::DynamicImage::ImageLuma8(image::GrayImage::new(1, 1)));
        let mut bomb = small.clone();
        bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let err = read(0, &bomb, &MNIST, 4096).unwrap_err();
        assert!(matches!(err, InputError::TooLarge { width: 100_000, height: 100_000, .. } | InputError::Corrupt { .. }), "{err:?}");
    }
}
