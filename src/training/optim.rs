//! Optimizers with checkpointable state. Update rules, for gradient g (plus weight decay λ·θ),
//! learning rate η, momentum μ:
//!
//! - **SGD with Nesterov momentum** (Sutskever et al. 2013, PyTorch's form):
//!   v ← μ·v + g;  θ ← θ − η·(g + μ·v)
//! - **"Rescaling" RMSprop with Nesterov momentum** (the optimiser of the 2015 project):
//!   r ← ρ·r + (1−ρ)·g²;  ĝ = g / (√r + ε);  v ← μ·v + ĝ;  θ ← θ − η·(ĝ + μ·v)
//!   i.e. the gradient is first rescaled by its running RMS, then takes a Nesterov step.
//! - **Adam** (Kingma & Ba 2015): m ← β₁m + (1−β₁)g;  s ← β₂s + (1−β₂)g²;
//!   θ ← θ − η·m̂/(√ŝ + ε) with bias-corrected m̂, ŝ.
//!   Written here rather than taken from tch because tch's optimizer state cannot be saved,
//!   and resuming from a checkpoint must continue exactly where training stopped.
//!
//! Optional global gradient-norm clipping is applied before any rule.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    /// SGD with Nesterov momentum.
    Sgd,
    /// "Rescaling" RMSprop with Nesterov momentum, the 2015 project's (the conv model trains best with it at learning rate 2.5e-4).
    Rmsprop,
    /// Adam.
    Adam,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    pub learning_rate: f64,
    /// μ for SGD and RMSprop.
    pub momentum: f64,
    /// ρ, the RMS averaging factor of RMSprop.
    pub rms_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value.
    pub grad_clip: Option<f64>,
    /// Keep an exponential moving average of the weights with this decay (Polyak averaging);
    /// the final model uses the averaged weights.
    pub ema_decay: Option<f64>,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::Adam,
            learning_rate: 1e-3,
            momentum: 0.9,
            rms_decay: 0.9,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.0,
            grad_clip: None,
            ema_decay: None,
        }
    }
}

impl OptimizerConfig {
    pub fn validate(&self) -> Result<(), String> {
        let unit =
            |name: &str, v: f64| if (0.0..1.0).contains(&v) { Ok(()) } else { Err(format!("optimizer.{name} = {v} must be in [0, 1)")) };
        if !(self.learning_rate > 0.0 && self.learning_rate <= 10.0) {
            return Err(format!("optimizer.learning_rate = {} must be in (0, 10]", self.learning_rate));
        }
        unit("momentum", self.momentum)?;
        unit("rms_decay", self.rms_decay)?;
        unit("beta1", self.beta1)?;
        unit("beta2", self.beta2)?;
        if let Some(decay) = self.ema_decay {
            unit("ema_decay", decay)?;
        }
        // Written so that NaN fails each check too.
        let positive = |x: f64| x > 0.0;
        if !positive(self.epsilon) || self.weight_decay < 0.0 || self.grad_clip.is_some_and(|c| !positive(c)) {
            return Err("optimizer.epsilon must be > 0, weight_decay ≥ 0 and grad_clip > 0".into());
        }
        Ok(())
    }

    fn buffers_per_param(&self) -> usize {
        match self.kind {
            OptimizerKind::Sgd => 1,
            OptimizerKind::Rmsprop | OptimizerKind::Adam => 2,
        }
    }
}

/// The trainable parameters of a var store, re-homed into one flat buffer (and their gradients
/// into another), so each update is a handful of large kernels instead of a dozen per tensor.
pub struct Optimizer {
    config: OptimizerConfig,
    params: Vec<Tensor>,
    /// Each parameter's data is a view of this buffer (ordered by parameter name).
    flat_params: Tensor,
    /// Gradients are re-pointed into this buffer after their first backward pass; autograd then
    /// accumulates into it in place, and zeroing is one kernel.
    flat_grads: Tensor,
    grads_bound: Vec<bool>,
    offsets: Vec<(i64, i64)>,
    buffers: Vec<Tensor>,
    /// Reused for intermediate results of the update.
    scratch: Tensor,
    /// The moving average of `flat_params`, when weight averaging is on.
    average: Option<Tensor>,
    steps: i64,
}

impl Optimizer {
    pub fn new(vars: &VarStore, config: OptimizerConfig) -> Self {
        let named: BTreeMap<String, Tensor> = vars.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        let mut params: Vec<Tensor> = named.into_values().collect();
        let mut offsets = Vec::with_capacity(params.len());
        let mut total = 0;
        for p in &params {
            offsets.push((total, p.numel() as i64));
            total += p.numel() as i64;
        }
        let options = (Kind::Float, vars.device());
        let flat_params = Tensor::zeros([total], options);
        tch::no_grad(|| {
            for (p, &(offset, len)) in params.iter_mut().zip(&offsets) {
                let mut view = flat_params.narrow(0, offset, len);
                view.copy_(&p.reshape([-1]));
                p.set_data(&view.view(p.size().as_slice()));
            }
        });
        let buffers = (0..config.buffers_per_param()).map(|_| Tensor::zeros([total], options)).collect();
        let grads_bound = vec![false; params.len()];
        let average = config.ema_decay.map(|_| flat_params.copy());
        let (flat_grads, scratch) = (Tensor::zeros([total], options), Tensor::zeros([total], options));
        Self { config, params, flat_params, flat_grads, grads_bound, offsets, buffers, scratch, average, steps: 0 }
    }

    pub fn zero_grad(&mut self) {
        let _ = self.flat_grads.zero_();
        for (p, bound) in self.params.iter_mut().zip(&self.grads_bound) {
            if !bound {
                p.zero_grad();
            }
        }
    }

    /// Re-points freshly created gradients into the flat gradient buffer.
    fn bind_grads(&mut self) {
        for ((p, bound), &(offset, len)) in self.params.iter().zip(self.grads_bound.iter_mut()).zip(&self.offsets) {
            let mut grad = p.grad();
            if *bound || !grad.defined() {
                continue;
            }
            let mut view = self.flat_grads.narrow(0, offset, len);
            view.copy_(&grad.reshape([-1]));
            grad.set_data(&view.view(p.size().as_slice()));
            *bound = true;
        }
    }

    /// Applies one update with learning rate `lr` from the gradients in the parameters.
    pub fn step(&mut self, lr: f64) {
        self.bind_grads();
        let c = self.config.clone();
        self.steps += 1;
        let t = self.steps as f64;
        tch::no_grad(|| {
            let g = &mut self.flat_grads;
            if let Some(max) = c.grad_clip {
                let scale = (g.norm() + 1e-6).reciprocal().multiply_scalar(max).clamp_max(1.0);
                let _ = g.g_mul_(&scale);
            }
            if c.weight_decay > 0.0 {
                let _ = g.g_add_(&(&self.flat_params * c.weight_decay));
            }
            let g = &*g;
            // In-place kernels into a reused scratch buffer: no allocation per step, and as few
            // passes over the parameters as the rule allows.
            let scratch = &mut self.scratch;
            let params = &mut self.flat_params;
            match c.kind {
                OptimizerKind::Sgd => {
                    let v = &mut self.buffers[0];
                    let _ = v.g_mul_scalar_(c.momentum).g_add_(g);
                    let _ = params.g_add_(&(g * -lr));
                    let _ = params.g_add_(&(&*v * (-lr * c.momentum)));
                }
                OptimizerKind::Rmsprop => {
                    let (rms, v) = self.buffers.split_at_mut(1);
                    let (rms, v) = (&mut rms[0], &mut v[0]);
                    let _ = g.mul_out(scratch, g);
                    let _ = rms.lerp_(scratch, 1.0 - c.rms_decay);
                    let _ = rms.sqrt_out(scratch);
                    let _ = scratch.g_add_scalar_(c.epsilon);
                    let _ = v.g_mul_scalar_(c.momentum).addcdiv_(g, scratch);
                    // θ −= η·ĝ as θ += g / (−(√r + ε)/η), then θ −= η·μ·v.
                    let _ = scratch.g_mul_scalar_(-1.0 / lr);
                    let _ = params.addcdiv_(g, scratch);
                    let _ = params.g_add_(&(&*v * (-lr * c.momentum)));
                }
                OptimizerKind::Adam => {
                    let (m, s) = self.buffers.split_at_mut(1);
                    let (m, s) = (&mut m[0], &mut s[0]);
                    let (correction1, correction2) = (1.0 - c.beta1.powf(t), 1.0 - c.beta2.powf(t));
                    let _ = m.lerp_(g, 1.0 - c.beta1);
                    let _ = g.mul_out(scratch, g);
                    let _ = s.lerp_(scratch, 1.0 - c.beta2);
                    // scratch = k·(√ŝ + ε) with k = −(1 − β₁ᵗ)/η, so θ += m / scratch = −η·m̂/(√ŝ + ε).
                    let k = -correction1 / lr;
                    let _ = s.sqrt_out(scratch);
                    let _ = scratch.g_mul_scalar_(k / correction2.sqrt()).g_add_scalar_(c.epsilon * k);
                    let _ = params.addcdiv_(m, scratch);
                }
            }
            if let (Some(average), Some(decay)) = (&mut self.average, c.ema_decay) {
                // Short memory at first, so the average is not dominated by the initial weights.
                let decay = decay.min((1.0 + t) / (10.0 + t));
                let _ = average.lerp_(&self.flat_params, 1.0 - decay);
            }
        });
    }

    /// Replaces the weights with their moving average (no-op without weight averaging).
    pub fn use_averaged_weights(&mut self) {
        if let Some(average) = &self.average {
            tch::no_grad(|| self.flat_params.copy_(average));
        }
    }

    /// The state as named tensors, for checkpoints.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("steps".to_string(), Tensor::from(self.steps))];
        out.extend(self.buffers.iter().chain(&self.average).enumerate().map(|(j, b)| (format!("buffer{j}"), b.shallow_clone())));
        out
    }

    /// Restores what [`Optimizer::state`] saved; fails when the parameters differ.
    pub fn load_state(&mut self, saved: &BTreeMap<String, Tensor>) -> Result<(), String> {
        self.steps = saved.get("steps").map(|t| t.int64_value(&[])).ok_or("optimizer state lacks `steps`")?;
        tch::no_grad(|| {
            for (j, b) in self.buffers.iter_mut().chain(self.average.as_mut()).enumerate() {
                let key = format!("buffer{j}");
                let src = saved.get(&key).ok_or_else(|| format!("optimizer state lacks `{key}`"))?;
                if src.size() != b.size() {
                    return Err(format!("optimizer state `{key}` has shape {:?}, expected {:?}", src.size(), b.size()));
                }
                b.copy_(src);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Two steps on θ = 1 with the constant gradient 0.5 (loss 0.5·θ), for every element of
    /// two parameters of different shapes (which share the flat buffers).
    fn two_steps(kind: OptimizerKind) -> (f64, f64) {
        let vars = VarStore::new(Device::Cpu);
        let theta = vars.root().var("theta", &[1], tch::nn::Init::Const(1.0));
        let matrix = vars.root().var("matrix", &[2, 3], tch::nn::Init::Const(1.0));
        let config = OptimizerConfig { kind, learning_rate: 0.1, momentum: 0.9, rms_decay: 0.9, ..Default::default() };
        let mut opt = Optimizer::new(&vars, config);
        let mut values = [0.0; 2];
        for value in &mut values {
            opt.zero_grad();
            ((&theta * 0.5).sum(Kind::Float) + (&matrix * 0.5).sum(Kind::Float)).backward();
            opt.step(0.1);
            *value = theta.double_value(&[0]);
            let all_equal = matrix.eq(*value).all().int64_value(&[]) == 1;
            assert!(all_equal, "{kind:?}: matrix {matrix} differs from theta {value}");
        }
        // The var store sees the updated values (parameters are views of the flat buffer).
        assert_eq!(vars.variables()["theta"].double_value(&[0]), values[1]);
        (values[0], values[1])
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-5, "{a} != {b}");
    }

    #[test]
    fn sgd_nesterov_matches_hand_computation() {
        // v = 0.5, θ = 1 − 0.1·(0.5 + 0.45) = 0.905; v = 0.95, θ = 0.905 − 0.1·(0.5 + 0.855) = 0.7695
        let (a, b) = two_steps(OptimizerKind::Sgd);
        close(a, 0.905);
        close(b, 0.7695);
    }

    #[test]
    fn rmsprop_nesterov_matches_hand_computation() {
        // r = 0.025, ĝ = 0.5/√0.025 = 3.1622777, v = ĝ, θ = 1 − 0.1·1.9·ĝ = 0.3991672
        // r = 0.0475, ĝ = 0.5/√0.0475 = 2.2941573, v = 0.9·3.1622777 + ĝ = 5.1402072,
        // θ = 0.3991672 − 0.1·(2.2941573 + 0.9·5.1402072) = −0.2928671
        let (a, b) = two_steps(OptimizerKind::Rmsprop);
        close(a, 0.3991672);
        close(b, -0.2928671);
    }

    #[test]
    fn adam_matches_hand_computation() {
        // Bias correction makes the first steps exactly η·sign(g) for a constant gradient.
        let (a, b) = two_steps(OptimizerKind::Adam);
        close(a, 0.9);
        close(b, 0.8);
    }

    #[test]
    fn weight_averaging_tracks_the_weights_with_a_short_initial_memory() {
        let vars = VarStore::new(Device::Cpu);
        let theta = vars.root().var("theta", &[1], tch::nn::Init::Const(1.0));
        let config = OptimizerConfig { kind: OptimizerKind::Sgd, momentum: 0.0, ema_decay: Some(0.99), ..Default::default() };
        let mut opt = Optimizer::new(&vars, config);
        for _ in 0..2 {
            opt.zero_grad();
            (&theta * 0.5).sum(Kind::Float).backward();
            opt.step(0.1);
        }
        // θ: 1 → 0.95 → 0.90. Decay min(0.99, (1+t)/(10+t)): 2/11, then 3/12.
        // avg₁ = 2/11·1 + 9/11·0.95; avg₂ = 3/12·avg₁ + 9/12·0.90.
        let avg1 = 2.0 / 11.0 + 9.0 / 11.0 * 0.95;
        let expected = 0.25 * avg1 + 0.75 * 0.90;
        close(theta.double_value(&[0]), 0.90);
        opt.use_averaged_weights();
        close(theta.double_value(&[0]), expected);
    }

    #[test]
    fn state_round_trips() {
        let vars = VarStore::new(Device::Cpu);
        let theta = vars.root().var("theta", &[3], tch::nn::Init::Const(1.0));
        let mut opt = Optimizer::new(&vars, OptimizerConfig { kind: OptimizerKind::Rmsprop, ..Default::default() });
        opt.zero_grad();
        theta.square().sum(Kind::Float).backward();
        opt.step(0.01);
        let saved: BTreeMap<String, Tensor> = opt.state().into_iter().map(|(n, t)| (n, t.copy())).collect();
        let mut fresh = Optimizer::new(&vars, OptimizerConfig { kind: OptimizerKind::Rmsprop, ..Default::default() });
        fresh.load_state(&saved).unwrap();
        assert_eq!(fresh.steps, 1);
        assert!(fresh.buffers[0].equal(&opt.buffers[0]));
        let mut wrong = Optimizer::new(&vars, OptimizerConfig { kind: OptimizerKind::Adam, ..Default::default() });
        assert!(wrong.load_state(&BTreeMap::new()).is_err());
    }
}
