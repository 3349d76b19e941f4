//! Batch normalisation with population statistics that can be recomputed exactly after training.
//!
//! Training normalises with batch statistics and keeps exponential running averages. The
//! "fixed-point" recomputation (Ioffe & Szegedy 2015, §3.1) resets them and feeds the training
//! set through once in training mode with momentum 1/k at the k-th batch, so the stored values
//! become the plain averages of the batch means and (unbiased) batch variances over the whole set.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tch::{nn, Tensor};

/// Default running-average momentum (PyTorch's convention: weight of the new batch).
const DEFAULT_MOMENTUM: f64 = 0.1;
const EPSILON: f64 = 1e-5;

/// Shared by every BN layer of one model: the momentum they use when updating running stats.
#[derive(Clone, Debug)]
pub struct BnControl {
    momentum_bits: Arc<AtomicU64>,
    layers: Arc<std::sync::Mutex<Vec<(Tensor, Tensor)>>>,
}

impl Default for BnControl {
    fn default() -> Self {
        Self { momentum_bits: Arc::new(AtomicU64::new(DEFAULT_MOMENTUM.to_bits())), layers: Arc::new(std::sync::Mutex::new(Vec::new())) }
    }
}

impl BnControl {
    fn momentum(&self) -> f64 {
        f64::from_bits(self.momentum_bits.load(Ordering::Relaxed))
    }

    fn set_momentum(&self, momentum: f64) {
        self.momentum_bits.store(momentum.to_bits(), Ordering::Relaxed);
    }

    /// Recomputes population statistics: `forward_batch(k)` must run the k-th batch through
    /// the model in training mode; it is called `batches` times.
    pub fn recompute(&self, batches: usize, mut forward_batch: impl FnMut(usize)) {
        tch::no_grad(|| {
            for (mean, var) in self.layers.lock().expect("bn registry").iter_mut() {
                let _ = mean.zero_();
                let _ = var.fill_(1.0);
            }
            for k in 0..batches {
                self.set_momentum(1.0 / (k as f64 + 1.0));
                forward_batch(k);
            }
        });
        self.set_momentum(DEFAULT_MOMENTUM);
    }
}

/// BN over dimension 1 for `[B, F]` and `[B, C, H, W]` inputs.
#[derive(Debug)]
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    control: BnControl,
}

impl BatchNorm {
    pub fn new(path: nn::Path, features: i64, control: &BnControl) -> Self {
        let weight = path.ones("weight", &[features]);
        let bias = path.zeros("bias", &[features]);
        let running_mean = path.zeros_no_train("running_mean", &[features]);
        let running_var = path.ones_no_train("running_var", &[features]);
        control.layers.lock().expect("bn registry").push((running_mean.shallow_clone(), running_var.shallow_clone()));
        Self { weight, bias, running_mean, running_var, control: control.clone() }
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        Tensor::batch_norm(
            x,
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            self.control.momentum(),
            EPSILON,
            false,
        )
    }

    /// Weight and bias of a linear or convolutional layer (`weight` with output units first)
    /// followed by this layer in inference, as one layer of the same kind.
    pub fn fold_into(&self, weight: &Tensor, bias: Option<&Tensor>) -> (Tensor, Tensor) {
        tch::no_grad(|| {
            let scale = &self.weight / (&self.running_var + EPSILON).sqrt();
            let mut per_output = vec![1i64; weight.dim()];
            per_output[0] = -1;
            let folded = weight * scale.view(per_output.as_slice());
            let bias = bias.map_or_else(|| self.running_mean.zeros_like(), Tensor::shallow_clone);
            (folded, (bias - &self.running_mean) * scale + &self.bias)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn recompute_gives_the_average_of_batch_statistics() {
        let vars = nn::VarStore::new(Device::Cpu);
        let control = BnControl::default();
        let bn = BatchNorm::new(vars.root() / "bn", 2, &control);
        let batches: Vec<Tensor> = (0..4).map(|k| Tensor::randn([16, 2], (Kind::Float, Device::Cpu)) * (k + 1) as f64 + k as f64).collect();
        control.recompute(batches.len(), |k| {
            let _ = bn.forward(&batches[k], true);
        });
        let expected_mean = Tensor::stack(&batches.iter().map(|b| b.mean_dim(0, false, Kind::Float)).collect::<Vec<_>>(), 0).mean_dim(
            0,
            false,
            Kind::Float,
        );
        let expected_var =
            Tensor::stack(&batches.iter().map(|b| b.var_dim(0, true, false)).collect::<Vec<_>>(), 0).mean_dim(0, false, Kind::Float);
        assert!(bn.running_mean.allclose(&expected_mean, 1e-5, 1e-6, false));
        assert!(bn.running_var.allclose(&expected_var, 1e-5, 1e-6, false));
        assert!((control.momentum() - DEFAULT_MOMENTUM).abs() < 1e-12);
    }
}
