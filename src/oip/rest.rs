//! The REST wire format: the JSON request and response documents, and Triton's binary tensor
//! extension, where the JSON header (`Inference-Header-Content-Length` bytes) is followed by
//! raw little-endian tensors: inputs that say `binary_data_size` in their parameters, and
//! outputs asked for with `binary_data` (or all of them with the request's `binary_data_output`).

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::tensor::{Contents, Datatype, Tensor};
use super::{InferRequest, InferResponse, OipError, Parameters};

#[derive(Debug, Deserialize)]
struct RequestDocument {
    id: Option<String>,
    #[serde(default)]
    parameters: Parameters,
    inputs: Vec<InputDocument>,
    outputs: Option<Vec<OutputRequest>>,
}

#[derive(Debug, Deserialize)]
struct InputDocument {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Parameters,
    data: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct OutputRequest {
    name: String,
    #[serde(default)]
    parameters: Parameters,
}

/// Which outputs go back as raw bytes after the JSON header.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutputEncoding {
    /// `binary_data_output`: every output not asked for otherwise.
    all_binary: bool,
    /// Outputs that said `binary_data` themselves: true or false.
    chosen: Vec<(String, bool)>,
}

impl OutputEncoding {
    fn is_binary(&self, name: &str) -> bool {
        self.chosen.iter().find(|(n, _)| n == name).map_or(self.all_binary, |(_, binary)| *binary)
    }
}

fn flag(parameters: &Parameters, name: &str, context: &str) -> Result<Option<bool>, OipError> {
    parameters
        .get(name)
        .map(|v| v.as_bool().ok_or_else(|| OipError::BadRequest(format!("{context}: parameter `{name}` must be true or false, not {v}"))))
        .transpose()
}

/// Splits a request body into its JSON header and binary tensors and decodes both.
/// `header_length` is `Inference-Header-Content-Length`, absent for a JSON-only body.
pub fn parse_request(body: &[u8], header_length: Option<usize>) -> Result<(InferRequest, OutputEncoding), OipError> {
    let header_length = header_length.unwrap_or(body.len());
    if header_length > body.len() {
        return Err(OipError::BadRequest(format!(
            "Inference-Header-Content-Length is {header_length}, larger than the {}-byte body",
            body.len()
        )));
    }
    let (header, mut binary) = body.split_at(header_length);
    let document: RequestDocument =
        serde_json::from_slice(header).map_err(|e| OipError::BadRequest(format!("the request's JSON cannot be read: {e}")))?;
    super::refuse_repeated_inputs(document.inputs.iter().map(|i| i.name.as_str()))?;
    let mut inputs = Vec::with_capacity(document.inputs.len());
    for input in document.inputs {
        let datatype = Datatype::parse(&input.datatype).map_err(|e| OipError::BadRequest(format!("input `{}`: {e}", input.name)))?;
        let binary_size = input.parameters.get("binary_data_size").map(|v| {
            v.as_u64().ok_or_else(|| {
                OipError::BadRequest(format!("input `{}`: parameter `binary_data_size` must be a byte count, not {v}", input.name))
            })
        });
        let tensor = match (binary_size.transpose()?, &input.data) {
            (Some(_), Some(_)) => {
                return Err(OipError::BadRequest(format!("input `{}` has both `data` and `binary_data_size`", input.name)));
            }
            (Some(size), None) => {
                let size = usize::try_from(size).ok().filter(|&s| s <= binary.len()).ok_or_else(|| {
                    OipError::BadRequest(format!(
                        "input `{}`: binary_data_size {size} is more than the {} bytes left in the body",
                        input.name,
                        binary.len()
                    ))
                })?;
                let (raw, rest) = binary.split_at(size);
                binary = rest;
                Tensor::from_raw(input.name, datatype, input.shape, raw)?
            }
            (None, Some(data)) => Tensor::from_json(input.name, datatype, input.shape, data)?,
            (None, None) => return Err(OipError::BadRequest(format!("input `{}` has no `data` and no `binary_data_size`", input.name))),
        };
        inputs.push(tensor);
    }
    if !binary.is_empty() {
        return Err(OipError::BadRequest(format!("{} bytes of binary data follow the last input that declared any", binary.len())));
    }
    let all_binary = flag(&document.parameters, "binary_data_output", "request")?.unwrap_or(false);
    let mut encoding = OutputEncoding { all_binary, chosen: Vec::new() };
    let outputs = document
        .outputs
        .map(|outputs| {
            outputs
                .into_iter()
                .map(|output| {
                    if let Some(binary) = flag(&output.parameters, "binary_data", &format!("output `{}`", output.name))? {
                        encoding.chosen.push((output.name.clone(), binary));
                    }
                    Ok(output.name)
                })
                .collect::<Result<Vec<_>, OipError>>()
        })
        .transpose()?;
    let request = InferRequest { id: document.id, parameters: document.parameters, inputs, outputs };
    Ok((request, encoding))
}

#[derive(Serialize)]
#[serde(untagged)]
enum Data<'a> {
    Fp32(&'a [f32]),
    Fp64(&'a [f64]),
    Uint8(&'a [u8]),
    Int32(&'a [i32]),
    Int64(&'a [i64]),
    Base64(Vec<String>),
}

impl<'a> From<&'a Contents> for Data<'a> {
    fn from(contents: &'a Contents) -> Self {
        match contents {
            Contents::Fp32(v) => Data::Fp32(v),
            Contents::Fp64(v) => Data::Fp64(v),
            Contents::Uint8(v) => Data::Uint8(v),
            Contents::Int32(v) => Data::Int32(v),
            Contents::Int64(v) => Data::Int64(v),
            // As in requests: BYTES elements in JSON are base64.
            Contents::Bytes(v) => Data::Base64(v.iter().map(|b| base64::engine::general_purpose::STANDARD.encode(b)).collect()),
        }
    }
}

#[derive(Serialize)]
struct BinarySize {
    binary_data_size: usize,
}

#[derive(Serialize)]
struct OutputDocument<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [i64],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinarySize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Data<'a>>,
}

#[derive(Serialize)]
struct ResponseDocument<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutputDocument<'a>>,
}

/// An encoded answer: the body, and the length of its JSON header when binary tensors follow.
pub struct EncodedResponse {
    pub body: Vec<u8>,
    pub header_length: Option<usize>,
}

pub fn encode_response(response: &InferResponse, encoding: &OutputEncoding) -> EncodedResponse {
    let mut raw = Vec::new();
    let outputs = response
        .outputs
        .iter()
        .map(|tensor| {
            let binary = encoding.is_binary(&tensor.name).then(|| {
                let bytes = tensor.contents.to_raw();
                let size = bytes.len();
                raw.push(bytes);
                BinarySize { binary_data_size: size }
            });
            OutputDocument {
                name: &tensor.name,
                datatype: tensor.datatype.name(),
                shape: &tensor.shape,
                data: binary.is_none().then(|| Data::from(&tensor.contents)),
                parameters: binary,
            }
        })
        .collect();
    let document =
        ResponseDocument { model_name: &response.model_name, model_version: &response.model_version, id: response.id.as_deref(), outputs };
    let mut body = serde_json::to_vec(&document).expect("a response document serialises");
    if raw.is_empty() {
        return EncodedResponse { body, header_length: None };
    }
    let header_length = body.len();
    body.extend(raw.into_iter().flatten());
    EncodedResponse { body, header_length: Some(header_length) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary_request(header: serde_json::Value, raw: &[u8]) -> Vec<u8> {
        let mut body = serde_json::to_vec(&header).unwrap();
        body.extend_from_slice(raw);
        body
    }

    fn error_of(body: &[u8], header_length: Option<usize>) -> String {
        parse_request(body, header_length).unwrap_err().to_string()
    }

    #[test]
    fn binary_inputs_follow_the_json_header_in_order() {
        let z = Contents::Fp32(vec![0.5, -0.5]).to_raw();
        let label = Contents::Int64(vec![7]).to_raw();
        let header = serde_json::json!({
            "id": "r1",
            "inputs": [
                {"name": "z", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": z.len()}},
                {"name": "label", "shape": [1], "datatype": "INT64", "parameters": {"binary_data_size": label.len()}},
            ],
            "outputs": [{"name": "samples", "parameters": {"binary_data": true}}],
        });
        let json_length = serde_json::to_vec(&header).unwrap().len();
        let body = binary_request(header, &[z, label].concat());
        let (request, encoding) = parse_request(&body, Some(json_length)).unwrap();
        assert_eq!(request.id.as_deref(), Some("r1"));
        assert_eq!(request.inputs[0].contents, Contents::Fp32(vec![0.5, -0.5]));
        assert_eq!(request.inputs[1].contents, Contents::Int64(vec![7]));
        assert_eq!(request.outputs, Some(vec!["samples".to_string()]));
        assert!(encoding.is_binary("samples"));
    }

    #[test]
    fn malformed_binary_requests_are_refused_with_a_reason() {
        let header = |size: serde_json::Value, shape: serde_json::Value| serde_json::json!({"inputs": [{"name": "image", "shape": shape, "datatype": "FP32", "parameters": {"binary_data_size": size}}]});
        let body = binary_request(header(8.into(), serde_json::json!([1, 2])), &[0; 8]);
        let json_length = body.len() - 8;
        assert!(error_of(&body, Some(body.len() + 1)).contains("larger than the"));
        let short = binary_request(header(16.into(), serde_json::json!([1, 4])), &[0; 8]);
        assert!(error_of(&short, Some(short.len() - 8)).contains("binary_data_size 16 is more than the 8 bytes left"));
        let mismatch = binary_request(header(8.into(), serde_json::json!([1, 3])), &[0; 8]);
        assert!(error_of(&mismatch, Some(mismatch.len() - 8)).contains("8 bytes of data for shape [1, 3] of FP32, which takes 12"));
        let negative = binary_request(header(8.into(), serde_json::json!([-1, 2])), &[0; 8]);
        assert!(error_of(&negative, Some(negative.len() - 8)).contains("negative dimension"));
        let huge = binary_request(header(8.into(), serde_json::json!([9_000_000_000_000_000_i64, 9_000_000_000_000_000_i64])), &[0; 8]);
        assert!(error_of(&huge, Some(huge.len() - 8)).contains("more than"));
        let trailing = [body.clone(), vec![1, 2, 3]].concat();
        assert!(error_of(&trailing, Some(json_length)).contains("3 bytes of binary data follow"));
        assert!(error_of(&body, None).contains("cannot be read"), "binary bytes read as JSON");
        let size = binary_request(header("eight".into(), serde_json::json!([1, 2])), &[0; 8]);
        assert!(error_of(&size, Some(size.len() - 8)).contains("must be a byte count"));
    }

    #[test]
    fn json_requests_name_what_is_wrong() {
        let body = |inputs: serde_json::Value| serde_json::to_vec(&serde_json::json!({"inputs": inputs})).unwrap();
        let twice = body(
            serde_json::json!([{"name": "z", "shape": [1], "datatype": "FP32", "data": [1]}, {"name": "z", "shape": [1], "datatype": "FP32", "data": [1]}]),
        );
        assert!(error_of(&twice, None).contains("given twice"));
        let no_data = body(serde_json::json!([{"name": "z", "shape": [1], "datatype": "FP32"}]));
        assert!(error_of(&no_data, None).contains("no `data`"));
        let datatype = body(serde_json::json!([{"name": "z", "shape": [1], "datatype": "FLOAT", "data": [1]}]));
        assert!(error_of(&datatype, None).contains("unknown datatype `FLOAT`"));
        let flag = serde_json::to_vec(&serde_json::json!({"inputs": [], "parameters": {"binary_data_output": "yes"}})).unwrap();
        assert!(error_of(&flag, None).contains("must be true or false"));
    }

    #[test]
    fn outputs_go_binary_as_asked() {
        let response = InferResponse {
            model_name: "m".into(),
            model_version: "2".into(),
            id: None,
            outputs: vec![
                Tensor { name: "label".into(), datatype: Datatype::Int64, shape: vec![2], contents: Contents::Int64(vec![3, 4]) },
                Tensor { name: "elbo".into(), datatype: Datatype::Fp32, shape: vec![2], contents: Contents::Fp32(vec![-1.5, -2.0]) },
            ],
        };
        let json = encode_response(&response, &OutputEncoding::default());
        assert_eq!(json.header_length, None);
        let document: serde_json::Value = serde_json::from_slice(&json.body).unwrap();
        assert_eq!(document["outputs"][0]["data"], serde_json::json!([3, 4]));
        assert_eq!(document["outputs"][1]["data"], serde_json::json!([-1.5, -2.0]));
        assert!(document.get("id").is_none());

        let encoding = OutputEncoding { all_binary: true, chosen: vec![("label".into(), false)] };
        let mixed = encode_response(&response, &encoding);
        let header_length = mixed.header_length.unwrap();
        let document: serde_json::Value = serde_json::from_slice(&mixed.body[..header_length]).unwrap();
        assert_eq!(document["outputs"][0]["data"], serde_json::json!([3, 4]));
        assert_eq!(document["outputs"][1]["parameters"]["binary_data_size"], 8);
        assert_eq!(&mixed.body[header_length..], Contents::Fp32(vec![-1.5, -2.0]).to_raw().as_slice());
    }
}
