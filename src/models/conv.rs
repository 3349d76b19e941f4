//! The convolutional VAE with batch normalisation: strided convolutions halve the image at each
//! stage (4×4 kernels on even sides, 3×3 on odd ones), transposed convolutions restore it. All
//! work is in a few large libtorch kernels per layer, so an epoch costs a small multiple of the
//! MLP's, not 100×.

use tch::{nn, nn::Module, Tensor};

use super::batch_norm::{BatchNorm, BnControl};
use super::layers;
use super::mlp::{learned_log_var, BnMlp};
use super::{ModelConfig, Posterior, Vae};

pub struct ConvVae {
    config: ModelConfig,
    down: Vec<(nn::Conv2D, BatchNorm)>,
    encoder_fc: BnMlp,
    mean: nn::Linear,
    log_var: nn::Linear,
    decoder_fc: BnMlp,
    up: Vec<(layers::DoublingConv, Option<BatchNorm>)>,
    likelihood_log_var: Option<Tensor>,
    /// `[C, H, W]` of the smallest feature map.
    bottleneck: [i64; 3],
}

impl ConvVae {
    pub fn new(path: &nn::Path, config: ModelConfig, bn: &BnControl) -> Self {
        let sides = layers::stage_sides(config.image.height, config.image.width, config.conv_channels.len());
        let deepest = *config.conv_channels.last().expect("validated: at least one stage");
        let [h, w] = sides[sides.len() - 1];
        let bottleneck = [deepest, h, w];
        let flat = deepest * h * w;
        let enc = path / "encoder";
        let mut down = Vec::new();
        let mut channels = config.image.channels;
        for (i, &out) in config.conv_channels.iter().enumerate() {
            down.push((
                layers::halving_conv(&enc / format!("conv{i}"), channels, out, sides[i]),
                BatchNorm::new(&enc / format!("conv_bn{i}"), out, bn),
            ));
            channels = out;
        }
        let encoder_fc = BnMlp::new(&enc, flat, &config.hidden, bn);
        let top = *config.hidden.last().expect("validated");
        let mean = layers::linear(&enc / "mean", top, config.latent_dim);
        let log_var = layers::linear(&enc / "log_var", top, config.latent_dim);

        let dec = path / "decoder";
        let mut widths: Vec<i64> = config.hidden.iter().rev().copied().collect();
        widths.push(flat);
        let decoder_fc = BnMlp::new(&dec, config.latent_dim, &widths, bn);
        let mut up = Vec::new();
        let reversed: Vec<i64> = config.conv_channels.iter().rev().copied().collect();
        for (i, &input) in reversed.iter().enumerate() {
            let last = i + 1 == reversed.len();
            let out = if last { config.image.channels } else { reversed[i + 1] };
            let tconv = layers::doubling_conv(&dec / format!("tconv{i}"), input, out, sides[reversed.len() - 1 - i]);
            let norm = (!last).then(|| BatchNorm::new(&dec / format!("tconv_bn{i}"), out, bn));
            up.push((tconv, norm));
        }
        let likelihood_log_var = learned_log_var(path, &config);
        Self { config, down, encoder_fc, mean, log_var, decoder_fc, up, likelihood_log_var, bottleneck }
    }
}

impl Vae for ConvVae {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn encode(&self, images: &Tensor, train: bool) -> Posterior {
        let features = self.down.iter().fold(images.shallow_clone(), |h, (conv, bn)| bn.forward(&conv.forward(&h), train).relu());
        let h = self.encoder_fc.forward(&features.flatten(1, -1), train);
        Posterior { mean: self.mean.forward(&h), log_var: self.log_var.forward(&h) }
    }

    fn decode(&self, z: &Tensor, _labels: Option<&Tensor>, train: bool) -> Tensor {
        let [c, h, w] = self.bottleneck;
        let start = self.decoder_fc.forward(z, train).view([-1, c, h, w]);
        self.up.iter().fold(start, |x, (tconv, norm)| match norm {
            Some(bn) => bn.forward(&tconv.forward(&x), train).relu(),
            None => tconv.forward(&x),
        })
    }

    fn likelihood_log_var(&self) -> Option<&Tensor> {
        self.likelihood_log_var.as_ref()
    }
}
