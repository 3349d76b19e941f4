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

/// `x` with the condition `c` appended to its features when the part was built to read one
/// (`width` > 0): how the semi-supervised model gives its encoder and decoder the label.
pub fn conditioned(x: Tensor, condition: Option<&Tensor>, width: i64) -> Tensor {
    match condition {
        Some(c) if width > 0 => Tensor::cat(&[&x, c], 1),
        _ => x,
    }
}

/// Kernel side of a stride-2, padding-1 stage over a side of `length`: 4 halves an even side
/// exactly (28 → 14), 3 halves an odd one rounding up (7 → 4). The transposed convolution with
/// the same kernel restores the side exactly, so any side can take a stage.
fn stage_kernel(length: i64) -> i64 {
    if length % 2 == 0 {
        4
    } else {
        3
    }
}

/// A side after one halving stage.
fn halved(length: i64) -> i64 {
    (length + 1) / 2
}

/// The `[height, width]` going into each of `stages` halving stages, then the smallest map's.
pub fn stage_sides(height: i64, width: i64, stages: usize) -> Vec<[i64; 2]> {
    std::iter::successors(Some([height, width]), |&[h, w]| Some([halved(h), halved(w)])).take(stages + 1).collect()
}

/// Stride and padding of every halving stage.
const HALVING_STRIDE: [i64; 2] = [2, 2];
const HALVING_PADDING: [i64; 2] = [1, 1];

/// Stride-2 convolution that halves an `[height, width]` input (see [`stage_sides`]).
pub fn halving_conv(path: nn::Path, inputs: i64, outputs: i64, [height, width]: [i64; 2]) -> nn::Conv2D {
    let kernel = [stage_kernel(height), stage_kernel(width)];
    let init = uniform(inputs * kernel[0] * kernel[1]);
    let config = nn::ConvConfigND {
        stride: HALVING_STRIDE,
        padding: HALVING_PADDING,
        dilation: [1, 1],
        groups: 1,
        bias: true,
        ws_init: init,
        bs_init: init,
        padding_mode: nn::PaddingMode::Zeros,
    };
    nn::conv(path, inputs, outputs, kernel, config)
}

/// A [`halving_conv`]'s operation with the given weight and bias (e.g. batch norm folded in).
pub fn halve_with(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Tensor {
    x.conv2d(weight, Some(bias), HALVING_STRIDE, HALVING_PADDING, [1, 1], 1)
}

/// Stride-2 transposed convolution that restores the `[height, width]` a [`halving_conv`] halved.
#[derive(Debug)]
pub struct DoublingConv {
    weight: Tensor,
    bias: Tensor,
    kernel: [i64; 2],
}

pub fn doubling_conv(path: nn::Path, inputs: i64, outputs: i64, [height, width]: [i64; 2]) -> DoublingConv {
    let kernel = [stage_kernel(height), stage_kernel(width)];
    // PyTorch takes fan-in from the weight's second dimension, the output channels here.
    let init = uniform(outputs * kernel[0] * kernel[1]);
    DoublingConv {
        weight: path.var("weight", &[inputs, outputs, kernel[0], kernel[1]], init),
        bias: path.var("bias", &[outputs], init),
        kernel,
    }
}

/// Output channels at or below which the CPU forward pass uses ATen's own kernel.
const FEW_OUTPUT_CHANNELS: i64 = 3;

impl DoublingConv {
    /// The general kernel: oneDNN on CPU, cuDNN on CUDA.
    fn general(&self, x: &Tensor) -> Tensor {
        x.conv_transpose2d(&self.weight, Some(&self.bias), [2, 2], [1, 1], [0, 0], 1, [1, 1])
    }
}

impl Module for DoublingConv {
    fn forward(&self, x: &Tensor) -> Tensor {
        // oneDNN's transposed convolution is slow when it writes only an image's 1 or 3 channels
        // (too few to fill its vector blocks): for 16→1 channels at 14×14, batch 100, 2 threads,
        // 1.6 ms against 0.6 ms for ATen's im2col kernel. The gradient is the same operator's
        // either way (convolution_backward, which oneDNN serves well), so only the forward kernel changes.
        if x.device() == Device::Cpu && self.weight.size()[1] <= FEW_OUTPUT_CHANNELS {
            x.slow_conv_transpose2d(&self.weight, self.kernel, Some(&self.bias), [2, 2], [1, 1], [0, 0], [1, 1])
        } else {
            self.general(x)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn stage_sides_halve_rounding_up() {
        assert_eq!(stage_sides(28, 28, 3), [[28, 28], [14, 14], [7, 7], [4, 4]]);
        assert_eq!(stage_sides(9, 32, 2), [[9, 32], [5, 16], [3, 8]]);
    }

    #[test]
    fn a_doubling_stage_restores_the_side_a_halving_stage_halved() {
        let vars = nn::VarStore::new(Device::Cpu);
        for side in [4, 7, 14, 28, 9] {
            let (down, up) = (
                halving_conv(vars.root() / format!("down{side}"), 2, 3, [side, 28]),
                doubling_conv(vars.root() / format!("up{side}"), 3, 2, [side, 28]),
            );
            let half = down.forward(&Tensor::zeros([1, 2, side, 28], (Kind::Float, Device::Cpu)));
            assert_eq!(half.size(), [1, 3, halved(side), 14], "side {side}");
            assert_eq!(up.forward(&half).size(), [1, 2, side, 28], "side {side}");
        }
    }

    #[test]
    fn the_few_channel_kernel_gives_the_general_kernels_values_and_gradients() {
        let vars = nn::VarStore::new(Device::Cpu);
        // Kernel 4 (7 → 14) and kernel 3 (4 → 7), to the channels of a grey and a colour image.
        for (outputs, side) in [(1, 14), (3, 14), (1, 7), (3, 7)] {
            let conv = doubling_conv(vars.root() / format!("up{outputs}_{side}"), 16, outputs, [side, side]);
            let x = Tensor::randn([5, 16, halved(side), halved(side)], (Kind::Float, Device::Cpu)).set_requires_grad(true);
            let upstream = Tensor::randn([5, outputs, side, side], (Kind::Float, Device::Cpu));
            let gradients = |y: Tensor| Tensor::run_backward(&[(y * &upstream).sum(Kind::Float)], &[&x, &conv.weight], false, false);
            let (ours, general) = (conv.forward(&x), conv.general(&x));
            assert_eq!(ours.size(), [5, outputs, side, side]);
            assert!(ours.allclose(&general, 1e-5, 1e-5, false), "{outputs} channels, side {side}: outputs differ");
            for (a, b) in gradients(ours).iter().zip(gradients(general)) {
                assert!(a.allclose(&b, 1e-4, 1e-5, false), "{outputs} channels, side {side}: gradients differ");
            }
        }
    }
}
