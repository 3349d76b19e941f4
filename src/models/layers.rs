//! Layer constructors with PyTorch's default initialisation, U(±1/√fan_in) for weights and
//! biases. tch's defaults are √6 times wider (Kaiming with ReLU gain); on the layers that no batch
//! norm follows (code heads, output) that cost about 2 nats of test ELBO on MNIST.

use tch::nn;

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
pub fn doubling_conv(path: nn::Path, inputs: i64, outputs: i64) -> nn::ConvTranspose2D {
    // PyTorch takes fan-in from the weight's second dimension, the output channels here.
    let init = uniform(outputs * 16);
    nn::conv_transpose2d(path, inputs, outputs, 4, nn::ConvTransposeConfig { stride: 2, padding: 1, ws_init: init, bs_init: init, ..Default::default() })
}
