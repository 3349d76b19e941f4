//! The IDX format of MNIST-style datasets (big-endian header, then raw u8 data), gzip or raw.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::DataError;

/// Reads a whole IDX file, transparently gunzipping `.gz` files.
fn read_bytes(path: &Path) -> Result<Vec<u8>, DataError> {
    let io = |source| DataError::Io { path: path.to_path_buf(), source };
    let raw = std::fs::read(path).map_err(io)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::GzDecoder::new(raw.as_slice()).read_to_end(&mut out).map_err(io)?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// An unsigned-byte IDX array: its dimensions and data.
#[derive(Debug)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

pub fn parse(bytes: &[u8], path: &Path) -> Result<IdxArray, DataError> {
    let bad = |why: String| DataError::Format { path: path.to_path_buf(), why };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("not an IDX file (bad magic number)".into()));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!("element type 0x{:02x} is not unsigned bytes (0x08)", bytes[2])));
    }
    let rank = bytes[3] as usize;
    let header = 4 + 4 * rank;
    if rank == 0 || bytes.len() < header {
        return Err(bad("truncated header".into()));
    }
    let dims: Vec<usize> = bytes[4..header].chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    // A hostile header can name dimensions whose product overflows.
    let expected = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or_else(|| bad(format!("dims {dims:?} are too large")))?;
    let data = &bytes[header..];
    if data.len() != expected {
        return Err(bad(format!("header promises {expected} bytes for dims {dims:?}, file holds {}", data.len())));
    }
    Ok(IdxArray { dims, data: data.to_vec() })
}

pub fn read(path: &Path) -> Result<IdxArray, DataError> {
    parse(&read_bytes(path)?, path)
}

/// Finds `<dir>/<stem>` or `<dir>/<stem>.gz`.
pub fn locate(dir: &Path, stem: &str) -> Option<PathBuf> {
    [dir.join(format!("{stem}.gz")), dir.join(stem)].into_iter().find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn parses_images_and_rejects_bad_files() {
        let p = Path::new("t");
        let a = parse(&idx(&[2, 2, 2], &[1, 2, 3, 4, 5, 6, 7, 8]), p).unwrap();
        assert_eq!(a.dims, vec![2, 2, 2]);
        assert_eq!(a.data[7], 8);
        assert!(parse(&idx(&[2, 2], &[1, 2, 3]), p).unwrap_err().to_string().contains("promises 4 bytes"));
        assert!(parse(&[1, 2, 3, 4], p).is_err());
        let mut wrong_type = idx(&[1], &[0, 0, 0, 0]);
        wrong_type[2] = 0x0d;
        assert!(parse(&wrong_type, p).unwrap_err().to_string().contains("0x0d"));
        // 2^32 · 2^32 · 2 overflows: refused, not wrapped around to the data's length.
        let huge = idx(&[u32::MAX, u32::MAX, u32::MAX], &[0; 8]);
        assert!(parse(&huge, p).unwrap_err().to_string().contains("too large"));
    }

    #[test]
    fn reads_gzip_and_raw() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let bytes = idx(&[3], &[7, 8, 9]);
        std::fs::write(dir.path().join("raw-idx1-ubyte"), &bytes).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&bytes).unwrap();
        std::fs::write(dir.path().join("zip-idx1-ubyte.gz"), gz.finish().unwrap()).unwrap();
        for stem in ["raw-idx1-ubyte", "zip-idx1-ubyte"] {
            let a = read(&locate(dir.path(), stem).unwrap()).unwrap();
            assert_eq!(a.data, vec![7, 8, 9]);
        }
    }
}
