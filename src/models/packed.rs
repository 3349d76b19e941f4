//! Fully connected layers prepared once for inference, with the batch norm that follows each
//! folded into its weights:
//! - float32, through libtorch's matrix product (MKL): the batch-norm kernel is gone from every
//!   block, and the answers are the float model's to rounding. The weights are kept transposed
//!   (in × out, contiguous): MKL then multiplies without re-copying the weight matrix on every
//!   call, which for 784→512→256 took 1.2–1.3× less time at 1 to 64 rows on one core;
//! - int8, libtorch's dynamically quantized linear layer (`quantized::linear_dynamic`: int8
//!   weights with one scale per output unit, activations quantized per batch as they come;
//!   fbgemm on x86). tch does not bind it, so `quantized_linear.cpp` beside this file is a small
//!   shim that `build.rs` compiles against the same libtorch. At a few rows a float32 matrix
//!   product is bound by reading the weights; int8 weights are a quarter of the bytes.
//!
//! oneDNN's reordered float32 weights (`mkldnn::_linear_pointwise`, what torch.compile's CPU
//! freezing uses) were tried and left out: 1.6× MKL's time for a one-row batch, no faster at 12
//! rows (the batch size under load), faster only from 32.
//! Training keeps the float weights and batch norm.

use std::ffi::{c_char, c_void, CStr};
use std::ptr::NonNull;

use tch::{nn, nn::Module, Tensor};

use super::ModelError;

extern "C" {
    fn vae_quantized_linear_new(weight: *const c_void, bias: *const c_void, out: *mut *mut c_void) -> *mut c_char;
    fn vae_quantized_linear_forward(layer: *const c_void, x: *const c_void, relu: bool, out: *mut *mut c_void) -> *mut c_char;
    fn vae_quantized_linear_free(layer: *mut c_void);
    fn vae_free_error(message: *mut c_char);
}

/// The arithmetic of the layers a model serves with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Float32,
    /// CPU only.
    Int8,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Float32 => "float32",
            Self::Int8 => "int8",
        })
    }
}

/// A linear layer as served: y = x·Wᵀ + b, optionally followed by ReLU.
pub enum PackedLinear {
    /// `weight_t` is Wᵀ, in × out.
    Float32 {
        weight_t: Tensor,
        bias: Option<Tensor>,
    },
    Int8(QuantizedLinear),
}

impl PackedLinear {
    /// `weight` (out × in, float) and `bias` in `precision`; int8 takes one symmetric scale per
    /// output unit and keeps the bias float.
    pub fn new(weight: &Tensor, bias: Option<&Tensor>, precision: Precision) -> Result<Self, ModelError> {
        Ok(match precision {
            Precision::Float32 => Self::Float32 { weight_t: weight.detach().tr().contiguous(), bias: bias.map(Tensor::detach) },
            Precision::Int8 => Self::Int8(QuantizedLinear::new(weight, bias)?),
        })
    }

    /// x·Wᵀ + b for `x` (batch × in, float), then ReLU when `relu`.
    pub fn forward(&self, x: &Tensor, relu: bool) -> Result<Tensor, ModelError> {
        match self {
            Self::Float32 { weight_t, bias } => {
                let mut y = match bias {
                    Some(bias) => bias.f_addmm(x, weight_t)?,
                    None => x.f_mm(weight_t)?,
                };
                // In place: the product is a fresh tensor that nothing else holds.
                Ok(if relu { y.f_relu_()? } else { y })
            }
            Self::Int8(layer) => layer.forward(x, relu),
        }
    }
}

impl std::fmt::Debug for PackedLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Float32 { .. } => "PackedLinear::Float32",
            Self::Int8(_) => "PackedLinear::Int8",
        })
    }
}

/// Turns the shim's error message, if any, into an error (and frees it).
fn check(message: *mut c_char) -> Result<(), ModelError> {
    if message.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null result is a NUL-terminated string that the shim malloc'ed for us.
    let text = unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned();
    unsafe { vae_free_error(message) };
    Err(ModelError::Packing(text))
}

/// A linear layer's weights, prepacked as int8.
pub struct QuantizedLinear {
    packed: NonNull<c_void>,
}

// SAFETY: the packed weights are written once, when made, and only read afterwards; the handle is
// owned by one value, as a tch Tensor owns its tensor (and Tensor is Send).
unsafe impl Send for QuantizedLinear {}

impl QuantizedLinear {
    fn new(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self, ModelError> {
        let mut packed = std::ptr::null_mut();
        let bias = bias.map_or(std::ptr::null(), |b| b.as_ptr() as *const c_void);
        // SAFETY: the tensors are live for the call; the shim copies what it keeps.
        check(unsafe { vae_quantized_linear_new(weight.as_ptr() as *const c_void, bias, &mut packed) })?;
        Ok(Self { packed: NonNull::new(packed).expect("the shim returns a layer when it reports no error") })
    }

    fn forward(&self, x: &Tensor, relu: bool) -> Result<Tensor, ModelError> {
        let mut out = std::ptr::null_mut();
        // SAFETY: `self.packed` is live while self is; `x` is live for the call.
        check(unsafe { vae_quantized_linear_forward(self.packed.as_ptr(), x.as_ptr() as *const c_void, relu, &mut out) })?;
        // SAFETY: on success the shim hands over a new tensor handle, which the Tensor now owns.
        Ok(unsafe { Tensor::from_ptr(out as *mut _) })
    }
}

impl std::fmt::Debug for QuantizedLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QuantizedLinear")
    }
}

impl Drop for QuantizedLinear {
    fn drop(&mut self) {
        // SAFETY: made by vae_quantized_linear_new and freed once, here.
        unsafe { vae_quantized_linear_free(self.packed.as_ptr()) }
    }
}

/// A linear layer that no batch norm follows (code heads, outputs, logits), prepacked for
/// inference once `pack` has run, in either precision.
#[derive(Debug)]
pub struct Dense {
    linear: nn::Linear,
    packed: Option<PackedLinear>,
}

impl Dense {
    pub fn new(linear: nn::Linear) -> Self {
        Self { linear, packed: None }
    }

    /// The float weights in training, the prepacked ones in inference once packed.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        match (&self.packed, train) {
            (Some(packed), false) => packed.forward(x, false).expect("a packed layer runs on the input its float twin takes"),
            _ => self.linear.forward(x),
        }
    }

    /// The float function with its weights held fixed (see `BnMlp::forward_frozen`).
    pub fn forward_frozen(&self, x: &Tensor) -> Tensor {
        x.linear(&self.linear.ws.detach(), self.linear.bs.as_ref().map(Tensor::detach).as_ref())
    }

    pub fn pack(&mut self, precision: Precision) -> Result<(), ModelError> {
        self.packed = Some(PackedLinear::new(&self.linear.ws, self.linear.bs.as_ref(), precision)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn agrees_with_the_float_layer_within_each_precision_rounding() {
        tch::manual_seed(0);
        let vars = nn::VarStore::new(Device::Cpu);
        let linear = super::super::layers::linear(vars.root() / "fc", 300, 40);
        let x = Tensor::rand([12, 300], (Kind::Float, Device::Cpu));
        let exact = linear.forward(&x);
        let scale = exact.abs().max().double_value(&[]);
        for (precision, tolerance) in [(Precision::Float32, 1e-5), (Precision::Int8, 0.02)] {
            let packed = PackedLinear::new(&linear.ws, linear.bs.as_ref(), precision).unwrap();
            let error = (packed.forward(&x, false).unwrap() - &exact).abs().max().double_value(&[]);
            assert!(error < tolerance * scale, "{precision:?} error {error} against values up to {scale}");
            let rectified = packed.forward(&x, true).unwrap();
            assert!(rectified.min().double_value(&[]) >= 0.0);
            assert!((rectified - exact.relu()).abs().max().double_value(&[]) < tolerance * scale);
        }
    }

    #[test]
    fn the_shipped_model_packed_classifies_encodes_and_decodes_as_in_float() {
        use crate::data::{self, DataOptions, DatasetSource};
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/mnist-ssvae/v1");
        let (_, float) = super::super::artifact::load(&dir, Device::Cpu).unwrap();
        let mnist = DatasetSource::Idx(data::shared_data_dir().join("mnist"));
        let test = data::load(&mnist, &DataOptions::default()).unwrap().test.first(2000);
        let _no_grad = tch::no_grad_guard();
        let share = |t: Tensor| t.to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
        let predict = |model: &super::super::LoadedModel| model.model.classify(&test.images, false).unwrap().argmax(1, false);
        let float_labels = predict(&float);
        let float_accuracy = share(float_labels.eq_tensor(&test.labels));
        let float_code = float.model.encode(&test.images, false).mean;
        let labels = test.labels.one_hot(10).to_kind(Kind::Float);
        let pixels = |model: &super::super::LoadedModel| model.model.decode(&float_code, Some(&labels), false).sigmoid();
        let float_pixels = pixels(&float);
        // Float32 packing reorders the same arithmetic (batch norm folded in): rounding only.
        for (precision, min_agreement, max_code_error, max_pixel_error) in
            [(Precision::Float32, 0.9995, 1e-5, 1e-6), (Precision::Int8, 0.995, 0.05, 0.01)]
        {
            let (_, mut packed) = super::super::artifact::load(&dir, Device::Cpu).unwrap();
            assert!(packed.model.pack(precision).unwrap());
            let packed_labels = predict(&packed);
            let agreement = share(float_labels.eq_tensor(&packed_labels));
            let accuracy = share(packed_labels.eq_tensor(&test.labels));
            assert!(agreement >= min_agreement, "{precision:?} and float agree on {agreement} of the labels");
            assert!((float_accuracy - accuracy).abs() <= 0.005, "accuracy {float_accuracy} in float, {accuracy} in {precision:?}");
            let code = packed.model.encode(&test.images, false).mean;
            let code_error = share((&float_code - &code).abs()) / share(float_code.abs());
            assert!(code_error < max_code_error, "{precision:?}: codes move by {code_error} of their size");
            let pixel_error = share((&float_pixels - pixels(&packed)).abs());
            assert!(pixel_error < max_pixel_error, "{precision:?}: decoded pixels move by {pixel_error} on average");
            // Training mode is untouched: it still runs the float layers with batch statistics.
            let train_logits = |model: &super::super::LoadedModel| model.model.classify(&test.images.narrow(0, 0, 64), true).unwrap();
            assert!(train_logits(&float).allclose(&train_logits(&packed), 1e-5, 1e-5, false));
        }
    }

    #[test]
    fn a_bad_input_is_an_error_not_a_crash() {
        let vars = nn::VarStore::new(Device::Cpu);
        let linear = super::super::layers::linear(vars.root() / "fc", 8, 4);
        let wrong_width = Tensor::rand([2, 5], (Kind::Float, Device::Cpu));
        for precision in [Precision::Float32, Precision::Int8] {
            let packed = PackedLinear::new(&linear.ws, None, precision).unwrap();
            assert!(packed.forward(&wrong_width, false).is_err(), "{precision:?}");
        }
    }
}
