//! Optimizers: SGD (momentum, weight decay) and AdamW, updating f32 master
//! weights in place from their `.grad`, and global gradient-norm clipping.
//!
//! State (momentum buffers, Adam moments) is f32, allocated from the
//! parameter's arena with tag OptimizerState on the first step that finds a
//! gradient for it, as PyTorch does: before training starts the state costs
//! nothing. A step first checks every gradient and allocates every missing
//! state, and only then updates weights, so a step that runs out of memory
//! changes no weight and can be retried. On a meta arena the state is
//! allocated and no kernel runs, so a plan sees the same bytes.

use crate::alloc::Tag;
use crate::cpu::optim::{self as k, AdamStep};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use crate::with_float;
use std::sync::Arc;

/// One state tensor of one parameter, for checkpoints.
#[derive(Clone, Debug)]
pub struct StateTensor {
    /// Index of the parameter in the optimizer's list.
    pub param: usize,
    /// PyTorch's name for it: `momentum_buffer`, `exp_avg`, `exp_avg_sq`.
    pub name: &'static str,
    pub tensor: Tensor,
}

/// What a training loop needs from any optimizer.
pub trait Optimizer {
    /// Update every parameter that has a gradient.
    fn step(&mut self) -> Result<()>;
    /// Drop every parameter's gradient (its bytes go back to the arena).
    fn zero_grad(&self);
    fn params(&self) -> &[Tensor];
    /// Allocated state, in parameter order.
    fn state_tensors(&self) -> Vec<StateTensor>;
    /// Completed calls to `step`.
    fn steps(&self) -> u64;
    fn lr(&self) -> f64;
    /// For schedules.
    fn set_lr(&mut self, lr: f64);
}

/// Hyperparameters are f64 like PyTorch's Python floats: kernels get them
/// (and `1 - beta`) rounded once to f32, as PyTorch's CPU kernels do.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    pub lr: f64,
    /// 0 keeps no buffer (and allocates no state).
    pub momentum: f64,
    /// L2 penalty added to the gradient (coupled, as PyTorch's SGD).
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig { lr: 1e-3, momentum: 0.0, weight_decay: 0.0 }
    }
}

/// Stochastic gradient descent.
///
/// ```
/// use headroom::optim::{Optimizer, Sgd, SgdConfig};
/// use headroom::{Arena, DType, Tag, Tensor};
/// let arena = Arena::host();
/// let w = Tensor::from_f32(&arena, &[2], &[1., 2.], DType::F32, Tag::Parameter).unwrap().requires_grad();
/// w.set_grad(Some(Tensor::from_f32(&arena, &[2], &[10., -10.], DType::F32, Tag::Gradient).unwrap()));
/// let mut opt = Sgd::new(vec![w.clone()], SgdConfig { lr: 0.1, ..Default::default() }).unwrap();
/// opt.step().unwrap();
/// assert_eq!(w.to_vec_f32().unwrap(), vec![0., 3.]);
/// ```
pub struct Sgd {
    pub config: SgdConfig,
    params: Vec<Tensor>,
    momentum: Vec<Option<Tensor>>,
    steps: u64,
}

impl Sgd {
    pub fn new(params: Vec<Tensor>, config: SgdConfig) -> Result<Sgd> {
        let c = config;
        check_hyper("sgd", "lr", c.lr, c.lr >= 0.0)?;
        check_hyper("sgd", "momentum", c.momentum, (0.0..1.0).contains(&c.momentum))?;
        check_hyper("sgd", "weight_decay", c.weight_decay, c.weight_decay >= 0.0)?;
        check_params("sgd", &params)?;
        let momentum = vec![None; params.len()];
        Ok(Sgd { config, params, momentum, steps: 0 })
    }
}

impl Optimizer for Sgd {
    fn step(&mut self) -> Result<()> {
        let c = self.config;
        let grads = grads_of("sgd", &self.params)?;
        if c.momentum != 0.0 {
            for (i, g) in grads.iter().enumerate() {
                if g.is_some() && self.momentum[i].is_none() {
                    self.momentum[i] = Some(zero_state(&self.params[i], "sgd")?);
                }
            }
        }
        for ((p, g), buf) in self.params.iter().zip(&grads).zip(&self.momentum) {
            let Some(g) = g else { continue };
            if p.arena().target() == crate::alloc::Target::Cuda {
                sgd_cuda(p, g, buf.as_ref().filter(|_| c.momentum != 0.0), c)?;
                continue;
            }
            if p.is_meta() {
                continue;
            }
            let buf = match buf {
                Some(b) if c.momentum != 0.0 => Some(b.data_mut::<f32>()?),
                _ => None,
            };
            let w = p.data_mut::<f32>()?;
            let (lr, mu, wd) = (c.lr as f32, c.momentum as f32, c.weight_decay as f32);
            with_float!("sgd", g.dtype(), |G| k::sgd::<G>(w, g.data::<G>()?, buf, lr, mu, wd));
        }
        self.steps += 1;
        Ok(())
    }
    fn zero_grad(&self) {
        self.params.iter().for_each(Tensor::zero_grad);
    }
    fn params(&self) -> &[Tensor] {
        &self.params
    }
    fn state_tensors(&self) -> Vec<StateTensor> {
        let bufs = self.momentum.iter().enumerate();
        bufs.filter_map(|(i, b)| Some(StateTensor { param: i, name: "momentum_buffer", tensor: b.clone()? })).collect()
    }
    fn steps(&self) -> u64 {
        self.steps
    }
    fn lr(&self) -> f64 {
        self.config.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled: the weight shrinks by `lr·weight_decay` of itself each step.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// PyTorch's defaults.
    fn default() -> Self {
        AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2 }
    }
}

impl AdamWConfig {
    /// The f32 scalars of a parameter's `step`-th update (1 for the first),
    /// worked out in f64 as PyTorch does, so large step counts stay exact.
    /// The CPU kernel and the CUDA one (`cuda::kernels::adamw`) take these.
    pub fn step_scalars(&self, step: u64) -> AdamStep {
        let (c, t) = (self, step as f64);
        AdamStep {
            beta1: c.beta1 as f32,
            one_minus_beta1: (1.0 - c.beta1) as f32,
            beta2: c.beta2 as f32,
            one_minus_beta2: (1.0 - c.beta2) as f32,
            eps: c.eps as f32,
            decay: (1.0 - c.lr * c.weight_decay) as f32,
            step_size: (c.lr / (1.0 - c.beta1.powf(t))) as f32,
            bias2_sqrt: (1.0 - c.beta2.powf(t)).sqrt() as f32,
        }
    }
}

struct AdamState {
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Steps this parameter has taken (its bias correction), as PyTorch keeps per parameter.
    step: u64,
}

/// Adam with decoupled weight decay and bias correction.
///
/// ```
/// use headroom::optim::{AdamW, AdamWConfig, Optimizer};
/// use headroom::{autograd::backward, Arena, DType, Tag, Tensor};
/// let arena = Arena::host();
/// let w = Tensor::from_f32(&arena, &[1], &[1.0], DType::F32, Tag::Parameter).unwrap().requires_grad();
/// let mut opt = AdamW::new(vec![w.clone()], AdamWConfig { lr: 0.1, weight_decay: 0.0, ..Default::default() }).unwrap();
/// backward(&w.mul(&w).unwrap().sum_all().unwrap()).unwrap();
/// opt.step().unwrap(); // the first Adam step moves by ≈ lr
/// assert!((w.item().unwrap() - 0.9).abs() < 1e-6);
/// assert_eq!(arena.stats().tag(Tag::OptimizerState).requested.current, 8); // two f32 moments
/// ```
pub struct AdamW {
    pub config: AdamWConfig,
    params: Vec<Tensor>,
    state: Vec<Option<AdamState>>,
    steps: u64,
}

impl AdamW {
    pub fn new(params: Vec<Tensor>, config: AdamWConfig) -> Result<AdamW> {
        let c = config;
        check_hyper("adamw", "lr", c.lr, c.lr >= 0.0)?;
        check_hyper("adamw", "beta1", c.beta1, (0.0..1.0).contains(&c.beta1))?;
        check_hyper("adamw", "beta2", c.beta2, (0.0..1.0).contains(&c.beta2))?;
        check_hyper("adamw", "eps", c.eps, c.eps > 0.0)?;
        check_hyper("adamw", "weight_decay", c.weight_decay, c.weight_decay >= 0.0)?;
        check_params("adamw", &params)?;
        let state = params.iter().map(|_| None).collect();
        Ok(AdamW { config, params, state, steps: 0 })
    }

    /// Steps parameter `i` has taken (0 until it first had a gradient).
    pub fn param_step(&self, i: usize) -> u64 {
        self.state.get(i).and_then(|s| s.as_ref()).map_or(0, |s| s.step)
    }

    /// Put back the state of parameter `i` from a checkpoint: the moments
    /// (f32, the parameter's shape) are copied into fresh OptimizerState
    /// blocks, exactly as a run that had taken `step` steps would hold them.
    pub fn restore(&mut self, i: usize, exp_avg: &[f32], exp_avg_sq: &[f32], step: u64) -> Result<()> {
        let p = self.params.get(i).ok_or_else(|| Error::index("adamw", format!("no parameter {i}")))?;
        if exp_avg.len() != p.numel() || exp_avg_sq.len() != p.numel() {
            return Err(Error::shape(
                "adamw",
                format!(
                    "state for parameter {i} {:?} has {} and {} values",
                    p.shape(),
                    exp_avg.len(),
                    exp_avg_sq.len()
                ),
            ));
        }
        let (m, v) = (zero_state(p, "adamw")?, zero_state(p, "adamw")?);
        if let Some(g) = m.gpu() {
            g.upload(m.device_ptr(), bytemuck::cast_slice(exp_avg))?;
            g.upload(v.device_ptr(), bytemuck::cast_slice(exp_avg_sq))?;
        } else if !p.is_meta() {
            m.data_mut::<f32>()?.copy_from_slice(exp_avg);
            v.data_mut::<f32>()?.copy_from_slice(exp_avg_sq);
        }
        self.state[i] = Some(AdamState { exp_avg: m, exp_avg_sq: v, step });
        Ok(())
    }

    /// Set the count of completed steps (when resuming).
    pub fn set_steps(&mut self, steps: u64) {
        self.steps = steps;
    }
}

impl Optimizer for AdamW {
    fn step(&mut self) -> Result<()> {
        let c = self.config;
        let grads = grads_of("adamw", &self.params)?;
        for (i, g) in grads.iter().enumerate() {
            if g.is_some() && self.state[i].is_none() {
                let p = &self.params[i];
                let (exp_avg, exp_avg_sq) = (zero_state(p, "adamw")?, zero_state(p, "adamw")?);
                self.state[i] = Some(AdamState { exp_avg, exp_avg_sq, step: 0 });
            }
        }
        if self.params.first().is_some_and(|p| p.arena().target() == crate::alloc::Target::Cuda) {
            adamw_cuda(&c, &self.params, &grads, &mut self.state)?;
            self.steps += 1;
            return Ok(());
        }
        for ((p, g), st) in self.params.iter().zip(&grads).zip(self.state.iter_mut()) {
            let (Some(g), Some(st)) = (g, st) else { continue };
            st.step += 1;
            if p.is_meta() {
                continue;
            }
            let s = c.step_scalars(st.step);
            let (m, v) = (st.exp_avg.data_mut::<f32>()?, st.exp_avg_sq.data_mut::<f32>()?);
            let w = p.data_mut::<f32>()?;
            with_float!("adamw", g.dtype(), |G| k::adamw::<G>(w, g.data::<G>()?, m, v, s));
        }
        self.steps += 1;
        Ok(())
    }
    fn zero_grad(&self) {
        self.params.iter().for_each(Tensor::zero_grad);
    }
    fn params(&self) -> &[Tensor] {
        &self.params
    }
    fn state_tensors(&self) -> Vec<StateTensor> {
        let mut out = vec![];
        for (i, s) in self.state.iter().enumerate() {
            if let Some(s) = s {
                out.push(StateTensor { param: i, name: "exp_avg", tensor: s.exp_avg.clone() });
                out.push(StateTensor { param: i, name: "exp_avg_sq", tensor: s.exp_avg_sq.clone() });
            }
        }
        out
    }
    fn steps(&self) -> u64 {
        self.steps
    }
    fn lr(&self) -> f64 {
        self.config.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }
}

/// Scale every gradient so their global L2 norm is at most `max_norm`, as
/// PyTorch's `clip_grad_norm_` (factor `max_norm / (norm + 1e-6)`). Returns
/// the norm before clipping, summed in f64 in parameter order, so it is the
/// same for any thread count. A non-finite norm is returned with the
/// gradients left as they are: the caller decides (e.g. skips the step).
/// Parameters without a gradient, and meta tensors (no values), add nothing.
pub fn clip_grad_norm(params: &[Tensor], max_norm: f32) -> Result<f32> {
    check_hyper("clip_grad_norm", "max_norm", max_norm as f64, max_norm >= 0.0)?;
    let all: Vec<Tensor> = params.iter().filter_map(|p| p.grad()).collect();
    // Checked before any gradient is scaled, so an error leaves all of them as they were.
    if let Some(g) = all.iter().find(|g| !g.is_contiguous()) {
        return Err(Error::invalid("clip_grad_norm", format!("a gradient {:?} is a strided view", g.shape())));
    }
    if all.first().is_some_and(|g| g.arena().target() == crate::alloc::Target::Cuda) {
        return clip_cuda(&all, max_norm);
    }
    let grads: Vec<Tensor> = all.into_iter().filter(|g| !g.is_meta()).collect();
    let mut sq = 0f64;
    for g in &grads {
        sq += with_float!("clip_grad_norm", g.dtype(), |T| k::sum_squares::<T>(g.data::<T>()?));
    }
    let norm = sq.sqrt();
    if norm.is_finite() && norm > max_norm as f64 {
        let coef = (max_norm as f64 / (norm + 1e-6)) as f32;
        for g in &grads {
            with_float!("clip_grad_norm", g.dtype(), |T| k::scale::<T>(g.data_mut::<T>()?, coef));
        }
    }
    Ok(norm as f32)
}

fn check_hyper(op: &'static str, name: &str, v: f64, ok: bool) -> Result<()> {
    if !v.is_finite() || !ok {
        return Err(Error::invalid(op, format!("{name} = {v} is out of range")));
    }
    Ok(())
}

// Parameters are dense f32 leaves that collect gradients, each with its own
// storage: two handles on one storage would be updated twice per step.
fn check_params(op: &'static str, params: &[Tensor]) -> Result<()> {
    for (i, p) in params.iter().enumerate() {
        if !p.requires_grad_flag() || !p.is_leaf() {
            return Err(Error::invalid(
                op,
                format!("parameter {i} {:?} is not a leaf made with .requires_grad()", p.shape()),
            ));
        }
        if p.dtype() != DType::F32 {
            return Err(Error::dtype(
                op,
                format!("parameter {i} {:?} is {}; optimizers update f32 master weights", p.shape(), p.dtype()),
            ));
        }
        if !p.is_contiguous() {
            return Err(Error::invalid(op, format!("parameter {i} {:?} is a strided view", p.shape())));
        }
        if let Some(j) = params[..i].iter().position(|q| Arc::ptr_eq(q.storage(), p.storage())) {
            return Err(Error::invalid(op, format!("parameters {j} and {i} share storage; pass each weight once")));
        }
    }
    Ok(())
}

/// Each parameter's gradient, checked, as a dense tensor; `None` where there is none.
fn grads_of(op: &'static str, params: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
    let mut out = Vec::with_capacity(params.len());
    for (i, p) in params.iter().enumerate() {
        let Some(g) = p.grad() else {
            out.push(None);
            continue;
        };
        if g.shape() != p.shape() {
            return Err(Error::shape(
                op,
                format!("parameter {i} is {:?} but its gradient is {:?}", p.shape(), g.shape()),
            ));
        }
        if !g.dtype().is_float() {
            return Err(Error::dtype(op, format!("the gradient of parameter {i} is {}", g.dtype())));
        }
        if Arc::ptr_eq(g.storage(), p.storage()) {
            return Err(Error::invalid(op, format!("the gradient of parameter {i} shares its storage")));
        }
        out.push(Some(g.contiguous_untracked(op)?));
    }
    Ok(out)
}

/// A zeroed f32 state tensor shaped like `p`, on its arena.
fn zero_state(p: &Tensor, label: &'static str) -> Result<Tensor> {
    let t = Tensor::empty(p.arena(), p.shape(), DType::F32, Tag::OptimizerState, label)?;
    if let Some(g) = t.gpu() {
        g.zero(t.device_ptr(), t.nbytes())?;
    } else if !t.is_meta() {
        t.data_mut::<f32>()?.fill(0.0);
    }
    Ok(t)
}

// ---- CUDA (and meta arenas planning for it) ----

/// Float dtypes in a fixed order: one multi-tensor launch each.
const FLOATS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// A Workspace holding `rows` (a kernel's table) on the device: the bytes
/// are counted on a meta arena too, and uploaded on a GPU.
fn device_table<R: bytemuck::Pod>(op: &'static str, like: &Tensor, rows: &[R]) -> Result<Tensor> {
    let bytes: &[u8] = bytemuck::cast_slice(rows);
    let t = crate::cuda::ops::workspace(op, like, bytes.len())?;
    if let Some(g) = t.gpu() {
        g.upload(t.device_ptr(), bytes)?;
    }
    Ok(t)
}

/// SGD from elementwise kernels, in the CPU's order of operations (so the
/// same roundings): `t = wd·p`; with momentum `b = μ·b + g + t`, `t = −lr·b`,
/// else `t = −lr·(t + g)`; then `p += t`. One f32 temporary, and one more for
/// a half gradient (cast first).
fn sgd_cuda(p: &Tensor, g: &Tensor, buf: Option<&Tensor>, c: SgdConfig) -> Result<()> {
    use crate::cuda::ops as cu;
    const OP: &str = "sgd";
    let g32 = if g.dtype() == DType::F32 {
        g.clone()
    } else {
        let t = Tensor::empty(p.arena(), p.shape(), DType::F32, Tag::Workspace, OP)?;
        if t.is_cuda() && t.numel() > 0 {
            cu::cast(g, &t)?;
        }
        t
    };
    let t = Tensor::empty(p.arena(), p.shape(), DType::F32, Tag::Workspace, OP)?;
    if !p.is_cuda() || p.numel() == 0 {
        return Ok(());
    }
    let (lr, mu, wd) = (c.lr as f32, c.momentum as f32, c.weight_decay as f32);
    cu::affine(p, &t, wd, 0.0)?;
    match buf {
        Some(b) => {
            cu::affine(b, b, mu, 0.0)?;
            cu::add_into(b, &g32)?;
            cu::add_into(b, &t)?;
            cu::affine(b, &t, -lr, 0.0)?;
        }
        None => {
            cu::add_into(&t, &g32)?;
            cu::affine(&t, &t, -lr, 0.0)?;
        }
    }
    cu::add_into(p, &t)
}

/// One fused AdamW launch per gradient dtype over the table of every
/// parameter with a gradient (each with its own step count).
fn adamw_cuda(
    c: &AdamWConfig,
    params: &[Tensor],
    grads: &[Option<Tensor>],
    state: &mut [Option<AdamState>],
) -> Result<()> {
    use crate::cuda::kernels as ck;
    const OP: &str = "adamw";
    // Betas, eps and decay do not depend on the step.
    let common = c.step_scalars(1);
    for dtype in FLOATS {
        let mut table = vec![];
        for ((p, g), st) in params.iter().zip(grads).zip(state.iter_mut()) {
            let (Some(g), Some(st)) = (g, st) else { continue };
            if g.dtype() != dtype {
                continue;
            }
            st.step += 1;
            let s = c.step_scalars(st.step);
            let (m, v) = (&st.exp_avg, &st.exp_avg_sq);
            table.push(ck::AdamTensor::new(
                p.device_ptr(),
                g.device_ptr(),
                m.device_ptr(),
                v.device_ptr(),
                p.numel(),
                &s,
            ));
        }
        if table.is_empty() {
            continue;
        }
        ck::adamw_table(dtype, &mut table)?;
        let dev = device_table(OP, &params[0], &table)?;
        if let Some(gpu) = dev.gpu() {
            gpu.launch(&ck::adamw(dtype, dev.device_ptr(), &table, &common)?)?;
        }
    }
    Ok(())
}

/// The global norm on the GPU: per dtype a sum-of-squares launch into its
/// range of f32 partials, then one f64 sum of them all (in a fixed order),
/// read back; then the clip factor scales each gradient in place. Empty
/// gradients add nothing. A meta arena allocates the same and returns 0.
fn clip_cuda(grads: &[Tensor], max_norm: f32) -> Result<f32> {
    use crate::cuda::{kernels as ck, ops as cu};
    const OP: &str = "clip_grad_norm";
    let grads: Vec<&Tensor> = grads.iter().filter(|g| g.numel() > 0).collect();
    let Some(&like) = grads.first() else { return Ok(0.0) };
    let sizes: Vec<(DType, usize)> = grads.iter().map(|g| (g.dtype(), g.numel())).collect();
    let partial = cu::workspace(OP, like, ck::grad_norm_workspace(&sizes)?)?;
    let norm_dev = cu::workspace(OP, like, 8)?;
    let mut blocks = 0;
    for dtype in FLOATS {
        let mut table: Vec<ck::NormTensor> = grads
            .iter()
            .filter(|g| g.dtype() == dtype)
            .map(|g| ck::NormTensor { data: g.device_ptr(), numel: g.numel() as i64, first_block: 0 })
            .collect();
        if table.is_empty() {
            continue;
        }
        let n = ck::sum_squares_table(dtype, &mut table)?;
        let dev = device_table(OP, like, &table)?;
        if let Some(gpu) = dev.gpu() {
            gpu.launch(&ck::sum_squares(dtype, dev.device_ptr(), &table, partial.device_ptr() + 4 * blocks as u64)?)?;
        }
        blocks += n;
    }
    let Some(gpu) = like.gpu() else { return Ok(0.0) };
    gpu.launch(&ck::grad_norm(partial.device_ptr(), blocks, norm_dev.device_ptr())?)?;
    let mut bytes = [0u8; 8];
    gpu.download(&mut bytes, norm_dev.device_ptr())?;
    let norm = f64::from_ne_bytes(bytes);
    if norm.is_finite() && norm > max_norm as f64 {
        let coef = (max_norm as f64 / (norm + 1e-6)) as f32;
        for g in &grads {
            cu::scale(g, coef)?;
        }
    }
    Ok(norm as f32)
}
