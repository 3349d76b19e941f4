//! The feedforward VAE with batch normalisation at every hidden layer of encoder and decoder.

use tch::{nn, nn::Module, Tensor};

use super::batch_norm::{BatchNorm, BnControl};
use super::layers;
use super::packed::{Dense, PackedLinear, Precision};
use super::{Gaussian, ModelConfig, ModelError, Vae};

/// Linear → BN → ReLU blocks: the hidden stack of every MLP part.
#[derive(Debug)]
pub struct BnMlp {
    layers: Vec<(nn::Linear, BatchNorm)>,
    /// Each block's linear layer and inference-time batch norm folded into one, prepacked.
    packed: Option<Vec<PackedLinear>>,
}

impl BnMlp {
    pub fn new(path: &nn::Path, input: i64, widths: &[i64], bn: &BnControl) -> Self {
        let mut layers = Vec::with_capacity(widths.len());
        let mut fan_in = input;
        for (i, &width) in widths.iter().enumerate() {
            let linear = layers::linear(path / format!("fc{i}"), fan_in, width);
            layers.push((linear, BatchNorm::new(path / format!("bn{i}"), width, bn)));
            fan_in = width;
        }
        Self { layers, packed: None }
    }

    /// The float weights in training, the prepacked ones in inference once packed.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        match (&self.packed, train) {
            (Some(packed), false) => packed.iter().fold(x.shallow_clone(), |h, block| {
                block.forward(&h, true).expect("a packed block runs on the input its float twin takes")
            }),
            _ => self.layers.iter().fold(x.shallow_clone(), |h, (linear, bn)| bn.forward(&linear.forward(&h), train).relu()),
        }
    }

    /// The inference-mode function with its weights held fixed: the gradient reaches the input
    /// only, for a term that trains what feeds this stack and not the stack.
    pub fn forward_frozen(&self, x: &Tensor) -> Tensor {
        self.layers.iter().fold(x.shallow_clone(), |h, (linear, bn)| {
            let (weight, bias) = bn.fold_into(&linear.ws, linear.bs.as_ref());
            h.linear(&weight, Some(&bias)).relu()
        })
    }

    pub fn pack(&mut self, precision: Precision) -> Result<(), ModelError> {
        let blocks = self.layers.iter().map(|(linear, bn)| {
            let (weight, bias) = bn.fold_into(&linear.ws, linear.bs.as_ref());
            PackedLinear::new(&weight, Some(&bias), precision)
        });
        self.packed = Some(blocks.collect::<Result<_, _>>()?);
        Ok(())
    }
}

/// MLP encoder q(z|x[, c]) and decoder p(x|z[, c]); a condition width > 0 lets the
/// semi-supervised model concatenate a label after the code layer (decoder) and, optionally,
/// after the pixels (encoder).
pub struct MlpVae {
    config: ModelConfig,
    /// Widths of the label read by the encoder and by the decoder (0: none).
    condition_dims: [i64; 2],
    encoder: BnMlp,
    mean: Dense,
    log_var: Dense,
    decoder: BnMlp,
    output: Dense,
    likelihood_log_var: Option<Tensor>,
}

impl MlpVae {
    pub fn new(path: &nn::Path, config: ModelConfig, condition_dims: [i64; 2], bn: &BnControl) -> Self {
        let [encoder_condition_dim, condition_dim] = condition_dims;
        let pixels = config.image.pixels();
        let top = *config.hidden.last().expect("validated: at least one hidden layer");
        let encoder = BnMlp::new(&(path / "encoder"), pixels + encoder_condition_dim, &config.hidden, bn);
        let mean = Dense::new(layers::linear(path / "encoder" / "mean", top, config.latent_dim));
        let log_var = Dense::new(layers::linear(path / "encoder" / "log_var", top, config.latent_dim));
        let reversed: Vec<i64> = config.hidden.iter().rev().copied().collect();
        let decoder = BnMlp::new(&(path / "decoder"), config.latent_dim + condition_dim, &reversed, bn);
        let output = Dense::new(layers::linear(path / "decoder" / "output", config.hidden[0], pixels));
        let likelihood_log_var = learned_log_var(path, &config);
        Self { config, condition_dims, encoder, mean, log_var, decoder, output, likelihood_log_var }
    }
}

/// The per-pixel log-variance parameter of a learned-variance Gaussian likelihood.
pub fn learned_log_var(path: &nn::Path, config: &ModelConfig) -> Option<Tensor> {
    match config.likelihood {
        super::Likelihood::Gaussian { log_var, learned: true } => {
            Some(path.var("likelihood_log_var", &config.image.dims(), nn::Init::Const(log_var)))
        }
        _ => None,
    }
}

impl Vae for MlpVae {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn encode(&self, images: &Tensor, train: bool) -> Gaussian {
        self.encode_given(images, None, train)
    }

    /// q(z|x, c): the encoder reads the condition `[B, width]` after the pixels when it was built
    /// with one.
    fn encode_given(&self, images: &Tensor, condition: Option<&Tensor>, train: bool) -> Gaussian {
        let input = layers::conditioned(images.flatten(1, -1), condition, self.condition_dims[0]);
        let h = self.encoder.forward(&input, train);
        Gaussian { mean: self.mean.forward(&h, train), log_var: self.log_var.forward(&h, train) }
    }

    fn decode(&self, z: &Tensor, labels: Option<&Tensor>, train: bool) -> Tensor {
        let input = layers::conditioned(z.shallow_clone(), labels, self.condition_dims[1]);
        let out = self.output.forward(&self.decoder.forward(&input, train), train);
        let [c, h, w] = self.config.image.dims();
        out.view([-1, c, h, w])
    }

    fn likelihood_log_var(&self) -> Option<&Tensor> {
        self.likelihood_log_var.as_ref()
    }

    fn pack(&mut self, precision: Precision) -> Result<bool, ModelError> {
        self.encoder.pack(precision)?;
        self.mean.pack(precision)?;
        self.log_var.pack(precision)?;
        self.decoder.pack(precision)?;
        self.output.pack(precision)?;
        Ok(true)
    }
}
