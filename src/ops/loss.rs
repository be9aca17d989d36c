//! Losses reduced to a scalar of shape []: cross-entropy (log-softmax fused
//! in), mean squared error and mean absolute error.

use super::{output, same_arena, same_dtype};
use crate::autograd::record;
use crate::cpu::loss::{self as k, Labels};
use crate::error::{Error, Result};
use crate::tensor::{DType, Float, Tensor};
use crate::with_float;

fn float_only(op: &'static str, t: &Tensor) -> Result<()> {
    if !t.dtype().is_float() {
        return Err(Error::dtype(
            op,
            format!("{:?} is {}, expected f32, f16 or bf16; convert with .to_dtype()", t.shape(), t.dtype()),
        ));
    }
    Ok(())
}

impl Tensor {
    /// Mean cross-entropy of logits `[N, C]` against class targets `[N]`
    /// (i32), over the rows whose target is not `ignore_index`; shape [].
    /// With `label_smoothing` ε the target distribution is
    /// (1 − ε)·onehot + ε/C, as in PyTorch. If every row is ignored the
    /// loss is 0 and so is the gradient.
    ///
    /// Saves the logits, the targets and each row's log-sum-exp (f32, `[N]`):
    /// the backward rebuilds softmax from them, so no N×C probabilities are
    /// kept alongside the logits.
    pub fn cross_entropy(&self, targets: &Tensor, ignore_index: Option<i32>, label_smoothing: f32) -> Result<Tensor> {
        const OP: &str = "cross_entropy";
        if self.rank() != 2 || targets.rank() != 1 || targets.dim(0) != self.dim(0) || self.dim(1) == 0 {
            return Err(Error::shape(
                OP,
                format!(
                    "logits {:?} and targets {:?}: need logits [N, C] with C > 0 and targets [N]; flatten batch and time into N",
                    self.shape(),
                    targets.shape()
                ),
            ));
        }
        float_only(OP, self)?;
        if targets.dtype() != DType::I32 {
            return Err(Error::dtype(
                OP,
                format!("targets {:?} are {}, expected i32 class indices", targets.shape(), targets.dtype()),
            ));
        }
        if !(0.0..=1.0).contains(&label_smoothing) {
            return Err(Error::invalid(OP, format!("label_smoothing {label_smoothing} is outside [0, 1]")));
        }
        same_arena(OP, &[self, targets])?;
        let x = self.contiguous()?;
        let tg = targets.contiguous_untracked(OP)?;
        let (n, c) = (x.dim(0), x.dim(1));
        let out = output(OP, &x, &[], x.dtype())?;
        let lse = output(OP, &x, &[n], DType::F32)?;
        let bad_target = |r: usize, t: i32| {
            let ign = ignore_index.map_or(String::new(), |i| format!(" and is not ignore_index {i}"));
            Error::index(OP, format!("target {t} of row {r} is outside [0, {c}) for logits {:?}{ign}", self.shape()))
        };
        if x.arena().target() == crate::alloc::Target::Cuda {
            return cuda_cross_entropy(&x, targets, tg, out, lse, ignore_index, label_smoothing, bad_target);
        }
        let mut count = 0;
        if !out.is_meta() {
            let labels = Labels { targets: tg.data::<i32>()?, ignore: ignore_index, smoothing: label_smoothing };
            let bad = labels
                .targets
                .iter()
                .enumerate()
                .find(|&(_, &t)| Some(t) != ignore_index && (t < 0 || t as usize >= c));
            if let Some((r, &t)) = bad {
                return Err(bad_target(r, t));
            }
            count = labels.targets.iter().filter(|&&t| Some(t) != ignore_index).count();
            with_float!(OP, x.dtype(), |T| {
                let sum = k::cross_entropy::<T>(x.data::<T>()?, c, &labels, lse.data_mut::<f32>()?);
                out.data_mut::<T>()?[0] = T::from_f32(if count == 0 { 0.0 } else { (sum / count as f64) as f32 });
            });
        }
        Ok(record(OP, &[&x, targets], out, vec![x.clone(), tg, lse], move |s, g| {
            let g = g[0].as_ref().expect("gradient");
            let (x, tg, lse) = (&s[0], &s[1], &s[2]);
            let dx = output(OP, x, x.shape(), x.dtype())?;
            if !dx.is_meta() {
                let labels = Labels { targets: tg.data::<i32>()?, ignore: ignore_index, smoothing: label_smoothing };
                with_float!(OP, x.dtype(), |T| {
                    let scale = if count == 0 { 0.0 } else { g.data::<T>()?[0].to_f32() / count as f32 };
                    k::cross_entropy_backward::<T>(
                        x.data::<T>()?,
                        c,
                        &labels,
                        lse.data::<f32>()?,
                        scale,
                        dx.data_mut::<T>()?,
                    );
                });
            }
            Ok(vec![Some(dx), None])
        }))
    }

    /// Mean of `(self − target)²` over all elements, shape []; NaN for
    /// empty operands, as in PyTorch. Saves both operands; the gradient
    /// flows to both.
    pub fn mse_loss(&self, target: &Tensor) -> Result<Tensor> {
        pointwise_loss("mse_loss", self, target, |d| d * d, |d| 2.0 * d)
    }

    /// Mean of `|self − target|` over all elements, shape [] (NaN for empty
    /// operands). The gradient at a tie is 0, as in PyTorch.
    pub fn l1_loss(&self, target: &Tensor) -> Result<Tensor> {
        pointwise_loss("l1_loss", self, target, f32::abs, |d| if d == 0.0 { 0.0 } else { d.signum() })
    }
}

/// Cross-entropy on a GPU (or planned for one): the count of rows not
/// ignored stays on the device (one i32, saved), beside a row-loss
/// workspace and the bad-target flag the forward reads back.
#[allow(clippy::too_many_arguments)]
fn cuda_cross_entropy(
    x: &Tensor,
    targets: &Tensor,
    tg: Tensor,
    out: Tensor,
    lse: Tensor,
    ignore_index: Option<i32>,
    label_smoothing: f32,
    bad_target: impl Fn(usize, i32) -> Error,
) -> Result<Tensor> {
    const OP: &str = "cross_entropy";
    use crate::cuda::{kernels::Labels, ops as cu};
    let n = x.dim(0);
    let count = output(OP, x, &[1], DType::I32)?;
    let labels = Labels { ignore_index, label_smoothing };
    {
        let ws = cu::workspace(OP, x, crate::cuda::kernels::cross_entropy_workspace(n))?;
        let bad = Tensor::empty(x.arena(), &[1], DType::I32, crate::alloc::Tag::Workspace, OP)?;
        if out.is_cuda() && n == 0 {
            cu::gpu(OP, &out)?.zero(out.device_ptr(), out.nbytes())?; // every row ignored: loss 0
        } else if out.is_cuda() {
            let o = cu::CrossEntropyOut { loss: &out, lse: &lse, count: &count, ws: &ws, bad: &bad };
            if let Some(r) = cu::cross_entropy(x, &tg, labels, &o)? {
                return Err(bad_target(r, tg.to_vec::<i32>()?[r]));
            }
        }
    }
    Ok(record(OP, &[x, targets], out, vec![x.clone(), tg, lse, count], move |s, g| {
        let g = g[0].as_ref().expect("gradient");
        let (x, tg, lse, count) = (&s[0], &s[1], &s[2], &s[3]);
        let dx = output(OP, x, x.shape(), x.dtype())?;
        if dx.is_cuda() && x.dim(0) > 0 {
            let dloss = g.contiguous_untracked(OP)?;
            cu::cross_entropy_backward(x, tg, lse, count, &dloss, labels, &dx)?;
        }
        Ok(vec![Some(dx), None])
    }))
}

fn pointwise_loss(
    op: &'static str,
    pred: &Tensor,
    target: &Tensor,
    f: fn(f32) -> f32,
    df: fn(f32) -> f32,
) -> Result<Tensor> {
    if pred.shape() != target.shape() {
        return Err(Error::shape(
            op,
            format!(
                "prediction {:?} and target {:?} differ; losses do not broadcast, reshape one to match",
                pred.shape(),
                target.shape()
            ),
        ));
    }
    same_arena(op, &[pred, target])?;
    same_dtype(op, pred, target)?;
    float_only(op, pred)?;
    if pred.arena().target() == crate::alloc::Target::Cuda {
        // No loss kernel: composed of the GPU's elementwise ops and mean
        // (|d| as relu(d) + relu(−d), whose gradient at a tie is 0 too).
        let d = pred.sub(target)?;
        let f = if op == "mse_loss" { d.mul(&d)? } else { d.relu()?.add(&d.neg()?.relu()?)? };
        return f.mean_all();
    }
    let (p, t) = (pred.contiguous_untracked(op)?, target.contiguous_untracked(op)?);
    let n = p.numel() as f32; // 0 for empty operands: the mean is 0/0 = NaN
    let out = output(op, &p, &[], p.dtype())?;
    if !out.is_meta() {
        with_float!(op, p.dtype(), |T| {
            let sum = k::pointwise_sum::<T>(p.data::<T>()?, t.data::<T>()?, f);
            out.data_mut::<T>()?[0] = T::from_f32((sum / n as f64) as f32);
        });
    }
    let wants = [pred.requires_grad_flag(), target.requires_grad_flag()];
    Ok(record(op, &[pred, target], out, vec![p, t], move |s, g| {
        let g = g[0].as_ref().expect("gradient");
        let (p, t) = (&s[0], &s[1]);
        // The target's gradient is the prediction's with the sign flipped.
        let grad = |sign: f32| -> Result<Tensor> {
            let d = output(op, p, p.shape(), p.dtype())?;
            if !d.is_meta() {
                with_float!(op, p.dtype(), |T| {
                    let scale = sign * g.data::<T>()?[0].to_f32() / n;
                    k::pointwise_backward::<T>(p.data::<T>()?, t.data::<T>()?, scale, df, d.data_mut::<T>()?);
                });
            }
            Ok(d)
        };
        Ok(vec![wants[0].then(|| grad(1.0)).transpose()?, wants[1].then(|| grad(-1.0)).transpose()?])
    }))
}
