//! Layer constructors with PyTorch's default initialisation, U(±1/√fan_in) for weights and
//! biases. tch's defaults are √6 times wider (Kaiming with ReLU gain); on the layers that no batch
//! norm follows (code heads, output) that cost about 2 nats of test ELBO on MNIST.

use tch::nn::{self, Module};
use tch::{Device, Tensor};

fn uniform(fan_in: i64) -> nn::Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    nn::Init::Uniform { lo: -bound, up: bound }
}

pub fn linear(path: nn::Path, inputs: i64, outputs: i64) -> nn::Linear {
    let init = uniform(inputs);
    nn::linear(path, inputs, outputs, nn::LinearConfig { ws_init: init, bs_init: Some(init), bias: true })
}

/// 4×4 convolution with stride 2 and padding 1: halves height and width.
pub fn halving_conv(path: nn::Path, inputs: i64, outputs: i64) -> nn::Conv2D {
    let init = uniform(inputs * 16);
    nn::conv2d(path, inputs, outputs, 4, nn::ConvConfig { stride: 2, padding: 1, ws_init: init, bs_init: init, ..Default::default() })
}

/// 4×4 transposed convolution with stride 2 and padding 1: doubles height and width.
#[derive(Debug)]
pub struct DoublingConv {
    layer: nn::ConvTranspose2D,
}

pub fn doubling_conv(path: nn::Path, inputs: i64, outputs: i64) -> DoublingConv {
    // PyTorch takes fan-in from the weight's second dimension, the output channels here.
    let init = uniform(outputs * 16);
    DoublingConv { layer: nn::conv_transpose2d(path, inputs, outputs, 4, nn::ConvTransposeConfig { stride: 2, padding: 1, ws_init: init, bs_init: init, ..Default::default() }) }
}

/// Output channels at or below which the CPU forward pass uses ATen's own kernel.
const FEW_OUTPUT_CHANNELS: i64 = 3;

impl Module for DoublingConv {
    fn forward(&self, x: &Tensor) -> Tensor {
        let (weight, bias) = (&self.layer.ws, self.layer.bs.as_ref());
        // oneDNN's transposed convolution is slow when it writes only an image's 1 or 3 channels
        // (too few to fill its vector blocks): for 16→1 channels at 14×14, batch 100, 2 threads,
        // 1.6 ms against 0.6 ms for ATen's im2col kernel. The gradient is the same operator's
        // either way (convolution_backward, which oneDNN serves well), so only the forward kernel changes.
        if x.device() == Device::Cpu && weight.size()[1] <= FEW_OUTPUT_CHANNELS {
            x.slow_conv_transpose2d(weight, [4, 4], bias, [2, 2], [1, 1], [0, 0], [1, 1])
        } else {
            self.layer.forward(x)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn the_few_channel_kernel_gives_the_general_kernels_values_and_gradients() {
        let vars = nn::VarStore::new(Device::Cpu);
        for outputs in [1, 3] {
            let conv = doubling_conv(vars.root() / format!("up{outputs}"), 16, outputs);
            let x = Tensor::randn([5, 16, 7, 7], (Kind::Float, Device::Cpu)).set_requires_grad(true);
            let weight = &conv.layer.ws;
            let upstream = Tensor::randn([5, outputs, 14, 14], (Kind::Float, Device::Cpu));
            let gradients = |y: Tensor| Tensor::run_backward(&[(y * &upstream).sum(Kind::Float)], &[&x, weight], false, false);
            let (ours, general) = (conv.forward(&x), conv.layer.forward(&x));
            assert_eq!(ours.size(), [5, outputs, 14, 14]);
            assert!(ours.allclose(&general, 1e-5, 1e-5, false), "{outputs} channels: outputs differ");
            for (a, b) in gradients(ours).iter().zip(gradients(general)) {
                assert!(a.allclose(&b, 1e-4, 1e-5, false), "{outputs} channels: gradients differ");
            }
        }
    }
}
