//! Tensors as the protocol carries them: a name, a datatype, a shape and row-major contents.
//! Contents arrive as JSON arrays, as raw little-endian bytes (the binary extension, gRPC's
//! `raw_input_contents`) or as gRPC's typed lists; all become one `Contents`.

use base64::Engine;

use super::OipError;

/// Most elements one tensor may hold: far above any real request (64 colour 256×256 images are
/// 12.6 M), low enough that a claimed shape can never make us allocate without bound.
pub const MAX_ELEMENTS: usize = 1 << 26;

/// The protocol's datatypes. Only some are accepted for each input; every name is recognised
/// so that a wrong one gets "expected X" rather than "unknown datatype".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datatype {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    Bytes,
}

impl Datatype {
    pub fn parse(name: &str) -> Result<Self, OipError> {
        Ok(match name {
            "BOOL" => Self::Bool,
            "UINT8" => Self::Uint8,
            "UINT16" => Self::Uint16,
            "UINT32" => Self::Uint32,
            "UINT64" => Self::Uint64,
            "INT8" => Self::Int8,
            "INT16" => Self::Int16,
            "INT32" => Self::Int32,
            "INT64" => Self::Int64,
            "FP16" => Self::Fp16,
            "FP32" => Self::Fp32,
            "FP64" => Self::Fp64,
            "BYTES" => Self::Bytes,
            other => return Err(OipError::BadRequest(format!("unknown datatype `{other}`"))),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Bool => "BOOL",
            Self::Uint8 => "UINT8",
            Self::Uint16 => "UINT16",
            Self::Uint32 => "UINT32",
            Self::Uint64 => "UINT64",
            Self::Int8 => "INT8",
            Self::Int16 => "INT16",
            Self::Int32 => "INT32",
            Self::Int64 => "INT64",
            Self::Fp16 => "FP16",
            Self::Fp32 => "FP32",
            Self::Fp64 => "FP64",
            Self::Bytes => "BYTES",
        }
    }

    /// Bytes per element in raw form; BYTES elements carry their own length.
    fn width(self) -> Option<usize> {
        match self {
            Self::Bool | Self::Uint8 | Self::Int8 => Some(1),
            Self::Uint16 | Self::Int16 | Self::Fp16 => Some(2),
            Self::Uint32 | Self::Int32 | Self::Fp32 => Some(4),
            Self::Uint64 | Self::Int64 | Self::Fp64 => Some(8),
            Self::Bytes => None,
        }
    }
}

/// A tensor's elements, row-major, in the kinds our inputs and outputs use.
#[derive(Debug, Clone, PartialEq)]
pub enum Contents {
    Fp32(Vec<f32>),
    Fp64(Vec<f64>),
    Uint8(Vec<u8>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Bytes(Vec<Vec<u8>>),
}

impl Contents {
    pub fn len(&self) -> usize {
        match self {
            Self::Fp32(v) => v.len(),
            Self::Fp64(v) => v.len(),
            Self::Uint8(v) => v.len(),
            Self::Int32(v) => v.len(),
            Self::Int64(v) => v.len(),
            Self::Bytes(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Raw little-endian form; BYTES elements each with a 4-byte length prefix.
    pub fn to_raw(&self) -> Vec<u8> {
        match self {
            Self::Fp32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Self::Fp64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Self::Uint8(v) => v.clone(),
            Self::Int32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Self::Int64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Self::Bytes(v) => v.iter().flat_map(|b| (b.len() as u32).to_le_bytes().into_iter().chain(b.iter().copied())).collect(),
        }
    }
}

/// A tensor with its contents checked against its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub datatype: Datatype,
    pub shape: Vec<i64>,
    pub contents: Contents,
}

/// The element count `shape` claims: every dimension at least 0, the product bounded.
pub fn element_count(name: &str, shape: &[i64]) -> Result<usize, OipError> {
    let bad = |why: String| OipError::BadRequest(format!("input `{name}`: shape {shape:?} {why}"));
    shape.iter().try_fold(1usize, |count, &dim| {
        let dim = usize::try_from(dim).map_err(|_| bad("has a negative dimension".into()))?;
        count.checked_mul(dim).filter(|&c| c <= MAX_ELEMENTS).ok_or_else(|| bad(format!("has more than {MAX_ELEMENTS} elements")))
    })
}

impl Tensor {
    /// From contents already typed (gRPC's typed lists), checked against the shape.
    pub fn from_contents(name: String, datatype: Datatype, shape: Vec<i64>, contents: Contents) -> Result<Self, OipError> {
        let count = element_count(&name, &shape)?;
        if contents.len() != count {
            return Err(OipError::BadRequest(format!(
                "input `{name}`: {} elements of {} contents for shape {shape:?}, which takes {count}",
                contents.len(),
                datatype.name()
            )));
        }
        Ok(Self { name, datatype, shape, contents })
    }

    /// From raw bytes in the datatype's little-endian layout.
    pub fn from_raw(name: String, datatype: Datatype, shape: Vec<i64>, raw: &[u8]) -> Result<Self, OipError> {
        let count = element_count(&name, &shape)?;
        let bad = |why: String| OipError::BadRequest(format!("input `{name}`: {why}"));
        let contents = match datatype.width() {
            Some(width) if raw.len() != count * width => {
                return Err(bad(format!(
                    "{} bytes of data for shape {shape:?} of {}, which takes {}",
                    raw.len(),
                    datatype.name(),
                    count * width
                )))
            }
            Some(_) => match datatype {
                Datatype::Fp32 => Contents::Fp32(raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()),
                Datatype::Fp64 => Contents::Fp64(raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()),
                Datatype::Uint8 => Contents::Uint8(raw.to_vec()),
                Datatype::Int32 => {
                    Contents::Int32(raw.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes"))).collect())
                }
                Datatype::Int64 => {
                    Contents::Int64(raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
                }
                other => return Err(bad(format!("datatype {} is not taken by any input of this server", other.name()))),
            },
            None => Contents::Bytes(split_bytes_elements(&name, raw, count)?),
        };
        Ok(Self { name, datatype, shape, contents })
    }

    /// From a JSON `data` array, flat or nested row-major.
    pub fn from_json(name: String, datatype: Datatype, shape: Vec<i64>, data: &serde_json::Value) -> Result<Self, OipError> {
        let count = element_count(&name, &shape)?;
        let mut flat = Vec::with_capacity(count.min(1 << 16));
        flatten(data, &mut flat, 0).map_err(|why| OipError::BadRequest(format!("input `{name}`: {why}")))?;
        if flat.len() != count {
            return Err(OipError::BadRequest(format!(
                "input `{name}`: {} elements of data for shape {shape:?}, which takes {count}",
                flat.len()
            )));
        }
        let bad = |what: &str| OipError::BadRequest(format!("input `{name}`: every element of {} data must be {what}", datatype.name()));
        let contents = match datatype {
            Datatype::Fp32 => {
                Contents::Fp32(flat.iter().map(|v| v.as_f64().map(|x| x as f32)).collect::<Option<_>>().ok_or_else(|| bad("a number"))?)
            }
            Datatype::Fp64 => Contents::Fp64(flat.iter().map(|v| v.as_f64()).collect::<Option<_>>().ok_or_else(|| bad("a number"))?),
            Datatype::Uint8 => Contents::Uint8(
                flat.iter()
                    .map(|v| v.as_u64().and_then(|x| u8::try_from(x).ok()))
                    .collect::<Option<_>>()
                    .ok_or_else(|| bad("an integer 0..=255"))?,
            ),
            Datatype::Int32 => Contents::Int32(
                flat.iter()
                    .map(|v| v.as_i64().and_then(|x| i32::try_from(x).ok()))
                    .collect::<Option<_>>()
                    .ok_or_else(|| bad("a 32-bit integer"))?,
            ),
            Datatype::Int64 => Contents::Int64(flat.iter().map(|v| v.as_i64()).collect::<Option<_>>().ok_or_else(|| bad("an integer"))?),
            // Encoded images are not text: in JSON, BYTES elements are base64.
            Datatype::Bytes => Contents::Bytes(
                flat.iter()
                    .map(|v| v.as_str().and_then(|s| base64::engine::general_purpose::STANDARD.decode(s.trim()).ok()))
                    .collect::<Option<_>>()
                    .ok_or_else(|| bad("a base64 string"))?,
            ),
            other => {
                return Err(OipError::BadRequest(format!(
                    "input `{name}`: datatype {} is not taken by any input of this server",
                    other.name()
                )))
            }
        };
        Ok(Self { name, datatype, shape, contents })
    }
}

/// Nesting deeper than any shape we take is refused before it can exhaust the stack.
const MAX_NESTING: usize = 8;

fn flatten<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>, depth: usize) -> Result<(), String> {
    match value {
        serde_json::Value::Array(items) if depth < MAX_NESTING => items.iter().try_for_each(|item| flatten(item, out, depth + 1)),
        serde_json::Value::Array(_) => Err(format!("data nested deeper than {MAX_NESTING} levels")),
        element if depth == 0 => Err(format!("data must be an array, not {element}")),
        element => {
            if out.len() >= MAX_ELEMENTS {
                return Err(format!("more than {MAX_ELEMENTS} elements"));
            }
            out.push(element);
            Ok(())
        }
    }
}

/// BYTES elements in raw form: each a little-endian u32 length, then that many bytes.
fn split_bytes_elements(name: &str, mut raw: &[u8], count: usize) -> Result<Vec<Vec<u8>>, OipError> {
    let bad = |why: String| OipError::BadRequest(format!("input `{name}`: BYTES data {why}"));
    let mut elements = Vec::with_capacity(count.min(1024));
    while !raw.is_empty() {
        let Some((prefix, rest)) = raw.split_first_chunk::<4>() else {
            return Err(bad(format!("ends inside the length prefix of element {}", elements.len())));
        };
        let length = u32::from_le_bytes(*prefix) as usize;
        if length > rest.len() {
            return Err(bad(format!("element {} claims {length} bytes, {} remain", elements.len(), rest.len())));
        }
        elements.push(rest[..length].to_vec());
        raw = &rest[length..];
    }
    if elements.len() != count {
        return Err(bad(format!("holds {} elements, the shape takes {count}", elements.len())));
    }
    Ok(elements)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(error: OipError) -> String {
        error.to_string()
    }

    #[test]
    fn raw_contents_round_trip_and_must_match_the_shape() {
        let values = Contents::Fp32(vec![0.0, 0.5, 1.0, -2.0]);
        let tensor = Tensor::from_raw("image".into(), Datatype::Fp32, vec![2, 2], &values.to_raw()).unwrap();
        assert_eq!(tensor.contents, values);
        let short = message(Tensor::from_raw("image".into(), Datatype::Fp32, vec![2, 3], &values.to_raw()).unwrap_err());
        assert!(short.contains("16 bytes of data for shape [2, 3] of FP32, which takes 24"), "{short}");
        let labels = Contents::Int64(vec![3, 7]);
        assert_eq!(Tensor::from_raw("label".into(), Datatype::Int64, vec![2], &labels.to_raw()).unwrap().contents, labels);
    }

    #[test]
    fn shapes_are_checked_before_anything_is_allocated() {
        assert!(message(element_count("z", &[-1, 4]).unwrap_err()).contains("negative dimension"));
        assert!(message(element_count("z", &[i64::MAX, i64::MAX]).unwrap_err()).contains("more than"));
        assert!(message(element_count("z", &[1 << 20, 1 << 20]).unwrap_err()).contains("more than"));
        assert_eq!(element_count("z", &[0, 5]).unwrap(), 0);
        assert_eq!(element_count("z", &[]).unwrap(), 1);
    }

    #[test]
    fn bytes_elements_with_bad_length_prefixes_are_refused() {
        let two = Contents::Bytes(vec![b"ab".to_vec(), b"".to_vec()]);
        assert_eq!(Tensor::from_raw("image_bytes".into(), Datatype::Bytes, vec![2], &two.to_raw()).unwrap().contents, two);
        let mut claims_too_much = 100u32.to_le_bytes().to_vec();
        claims_too_much.extend_from_slice(b"abc");
        let error = message(Tensor::from_raw("image_bytes".into(), Datatype::Bytes, vec![1], &claims_too_much).unwrap_err());
        assert!(error.contains("element 0 claims 100 bytes, 3 remain"), "{error}");
        let error = message(Tensor::from_raw("image_bytes".into(), Datatype::Bytes, vec![1], &[1, 0]).unwrap_err());
        assert!(error.contains("inside the length prefix"), "{error}");
        let error = message(Tensor::from_raw("image_bytes".into(), Datatype::Bytes, vec![3], &two.to_raw()).unwrap_err());
        assert!(error.contains("holds 2 elements, the shape takes 3"), "{error}");
    }

    #[test]
    fn json_data_may_be_flat_or_nested_and_is_type_checked() {
        let nested = serde_json::json!([[1, 2], [3, 4]]);
        let flat = serde_json::json!([1, 2, 3, 4]);
        for data in [&nested, &flat] {
            let tensor = Tensor::from_json("label".into(), Datatype::Int64, vec![2, 2], data).unwrap();
            assert_eq!(tensor.contents, Contents::Int64(vec![1, 2, 3, 4]));
        }
        assert!(message(Tensor::from_json("label".into(), Datatype::Int64, vec![3], &flat).unwrap_err()).contains("4 elements of data"));
        assert!(message(Tensor::from_json("image".into(), Datatype::Uint8, vec![1], &serde_json::json!([256])).unwrap_err())
            .contains("0..=255"));
        assert!(message(Tensor::from_json("image".into(), Datatype::Fp32, vec![1], &serde_json::json!(["x"])).unwrap_err())
            .contains("a number"));
        assert!(message(Tensor::from_json("image".into(), Datatype::Fp32, vec![1], &serde_json::json!(1.0)).unwrap_err())
            .contains("must be an array"));
        let deep = (0..20).fold(serde_json::json!(1), |inner, _| serde_json::json!([inner]));
        assert!(message(Tensor::from_json("image".into(), Datatype::Fp32, vec![1], &deep).unwrap_err()).contains("nested deeper"));
    }
}
