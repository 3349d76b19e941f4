//! The convolutional VAE with batch normalisation: strided convolutions halve the image at each
//! stage (4×4 kernels on even sides, 3×3 on odd ones), transposed convolutions restore it. All
//! work is in a few large libtorch kernels per layer, so an epoch costs a small multiple of the
//! MLP's, not 100×. The semi-supervised model's convolutional backbone is built of the same parts.

use tch::{nn, nn::Module, Tensor};

use super::batch_norm::{BatchNorm, BnControl};
use super::layers;
use super::mlp::{learned_log_var, BnMlp};
use super::{Gaussian, ImageShape, ModelConfig, Vae};

/// Halving convolutions, each followed by BN and ReLU: the features of the encoder and of the
/// semi-supervised model's classifier.
pub struct ConvStack {
    stages: Vec<(nn::Conv2D, BatchNorm)>,
}

impl ConvStack {
    /// Stages `conv{i}` and `conv_bn{i}` under `path`, one per entry of `channels`.
    pub fn new(path: &nn::Path, image: &ImageShape, channels: &[i64], bn: &BnControl) -> Self {
        let sides = layers::stage_sides(image.height, image.width, channels.len());
        let inputs = std::iter::once(image.channels).chain(channels.iter().copied());
        let stages = inputs
            .zip(channels)
            .enumerate()
            .map(|(i, (input, &output))| {
                (
                    layers::halving_conv(path / format!("conv{i}"), input, output, sides[i]),
                    BatchNorm::new(path / format!("conv_bn{i}"), output, bn),
                )
            })
            .collect();
        Self { stages }
    }

    /// The feature maps, flattened to `[B, features]`.
    pub fn forward(&self, images: &Tensor, train: bool) -> Tensor {
        self.stages.iter().fold(images.shallow_clone(), |h, (conv, bn)| bn.forward(&conv.forward(&h), train).relu()).flatten(1, -1)
    }

    /// The inference-mode function with its weights held fixed (see `BnMlp::forward_frozen`).
    pub fn forward_frozen(&self, images: &Tensor) -> Tensor {
        self.stages
            .iter()
            .fold(images.shallow_clone(), |h, (conv, bn)| {
                let (weight, bias) = bn.fold_into(&conv.ws, conv.bs.as_ref());
                layers::halve_with(&h, &weight, &bias).relu()
            })
            .flatten(1, -1)
    }

    /// Features per image for an image of `shape` after the stages with `channels`.
    pub fn features(shape: &ImageShape, channels: &[i64]) -> i64 {
        let [h, w] = *layers::stage_sides(shape.height, shape.width, channels.len()).last().expect("one side at least");
        channels.last().expect("validated: at least one stage") * h * w
    }
}

/// One doubling stage of the decoder: a transposed convolution, then BN and ReLU except on the
/// last (the logits). With `label_in_decoder_stages`, the label shifts its output before the
/// ReLU: one shift per channel after a batch-normalised stage, one per pixel (a class template)
/// on the logits.
struct UpStage {
    tconv: layers::DoublingConv,
    norm: Option<BatchNorm>,
    label_shift: Option<nn::Linear>,
}

impl UpStage {
    fn forward(&self, x: &Tensor, labels: Option<&Tensor>, train: bool) -> Tensor {
        let y = self.tconv.forward(x);
        let y = match &self.norm {
            Some(bn) => bn.forward(&y, train),
            None => y,
        };
        let y = match (&self.label_shift, labels) {
            (Some(shift), Some(labels)) => {
                let shift = shift.forward(labels);
                &y + if self.norm.is_some() { shift.view([-1, shift.size()[1], 1, 1]) } else { shift.view_as(&y) }
            }
            _ => y,
        };
        if self.norm.is_some() {
            y.relu()
        } else {
            y
        }
    }
}

/// Convolutional encoder q(z|x[, c]) and decoder p(x|z[, c]); as in `MlpVae`, a positive
/// condition width lets the semi-supervised model concatenate a label after the code layer
/// (decoder) and, optionally, after the convolutional features (encoder).
pub struct ConvVae {
    config: ModelConfig,
    condition_dims: [i64; 2],
    down: ConvStack,
    encoder_fc: BnMlp,
    mean: nn::Linear,
    log_var: nn::Linear,
    decoder_fc: BnMlp,
    up: Vec<UpStage>,
    likelihood_log_var: Option<Tensor>,
    /// `[C, H, W]` of the smallest feature map.
    bottleneck: [i64; 3],
}

impl ConvVae {
    pub fn new(path: &nn::Path, config: ModelConfig, condition_dims: [i64; 2], bn: &BnControl) -> Self {
        let [encoder_condition_dim, condition_dim] = condition_dims;
        let sides = layers::stage_sides(config.image.height, config.image.width, config.conv_channels.len());
        let deepest = *config.conv_channels.last().expect("validated: at least one stage");
        let [h, w] = sides[sides.len() - 1];
        let bottleneck = [deepest, h, w];
        let flat = deepest * h * w;
        let enc = path / "encoder";
        let down = ConvStack::new(&enc, &config.image, &config.conv_channels, bn);
        let encoder_fc = BnMlp::new(&enc, flat + encoder_condition_dim, &config.hidden, bn);
        let top = *config.hidden.last().expect("validated");
        let mean = layers::linear(&enc / "mean", top, config.latent_dim);
        let log_var = layers::linear(&enc / "log_var", top, config.latent_dim);

        let dec = path / "decoder";
        let mut widths: Vec<i64> = config.hidden.iter().rev().copied().collect();
        widths.push(flat);
        let decoder_fc = BnMlp::new(&dec, config.latent_dim + condition_dim, &widths, bn);
        let mut up = Vec::new();
        let reversed: Vec<i64> = config.conv_channels.iter().rev().copied().collect();
        for (i, &input) in reversed.iter().enumerate() {
            let last = i + 1 == reversed.len();
            let out = if last { config.image.channels } else { reversed[i + 1] };
            let tconv = layers::doubling_conv(&dec / format!("tconv{i}"), input, out, sides[reversed.len() - 1 - i]);
            let norm = (!last).then(|| BatchNorm::new(&dec / format!("tconv_bn{i}"), out, bn));
            let label_shift = (condition_dim > 0 && config.label_in_decoder_stages).then(|| {
                let shifts = if last { config.image.pixels() } else { out };
                // Zero at first: training starts from the model without them.
                let zero = nn::LinearConfig { ws_init: nn::Init::Const(0.0), bs_init: None, bias: false };
                nn::linear(&dec / format!("tconv_label{i}"), condition_dim, shifts, zero)
            });
            up.push(UpStage { tconv, norm, label_shift });
        }
        let likelihood_log_var = learned_log_var(path, &config);
        Self { config, condition_dims, down, encoder_fc, mean, log_var, decoder_fc, up, likelihood_log_var, bottleneck }
    }

    /// q(z|x[, c]) from the convolutional features of x.
    fn encode_features(&self, features: Tensor, labels: Option<&Tensor>, train: bool) -> Gaussian {
        let h = self.encoder_fc.forward(&layers::conditioned(features, labels, self.condition_dims[0]), train);
        Gaussian { mean: self.mean.forward(&h), log_var: self.log_var.forward(&h) }
    }
}

impl Vae for ConvVae {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn encode(&self, images: &Tensor, train: bool) -> Gaussian {
        self.encode_given(images, None, train)
    }

    fn encode_given(&self, images: &Tensor, labels: Option<&Tensor>, train: bool) -> Gaussian {
        self.encode_features(self.down.forward(images, train), labels, train)
    }

    /// The label joins after the convolutional features, so these run once per image, not once
    /// per label: on 2 cores the semi-supervised epoch takes a quarter less time.
    fn encode_pairs(&self, images: &Tensor, rows: &Tensor, labels: &Tensor, train: bool) -> Gaussian {
        self.encode_features(self.down.forward(images, train).index_select(0, rows), Some(labels), train)
    }

    fn decode(&self, z: &Tensor, labels: Option<&Tensor>, train: bool) -> Tensor {
        let [c, h, w] = self.bottleneck;
        let input = layers::conditioned(z.shallow_clone(), labels, self.condition_dims[1]);
        let start = self.decoder_fc.forward(&input, train).view([-1, c, h, w]);
        self.up.iter().fold(start, |x, stage| stage.forward(&x, labels, train))
    }

    fn likelihood_log_var(&self) -> Option<&Tensor> {
        self.likelihood_log_var.as_ref()
    }
}
