//! Connectionist temporal classification loss (PyTorch's `ctc_loss` with
//! `reduction = 'mean'`), computed in log space.

use super::{float_only, output, same_arena};
use crate::alloc::Tag;
use crate::autograd::record;
use crate::cpu::ctc::{self as k, Problem};
use crate::error::{Error, Result};
use crate::tensor::{DType, Float, Tensor};
use crate::with_float;

impl Tensor {
    /// CTC loss of `log_probs` `[T, B, C]` (already log-softmaxed over C)
    /// against padded i32 `targets` `[B, S]`, of which row b uses the first
    /// `target_lengths[b]` labels, each in `[0, C)` and not `blank`; frames
    /// past `input_lengths[b]` are ignored. Shape [], PyTorch's 'mean':
    /// each sample's −log p divided by max(target length, 1), averaged over
    /// the batch. A sample with no possible alignment (too short an input)
    /// has loss +∞, as in PyTorch; with `zero_infinity` it counts 0.
    ///
    /// Gradient: the true derivative of the loss with respect to
    /// `log_probs`, `−γ_t(c)/(B·max(S_b, 1))` with γ the posterior of class
    /// c at frame t (0 past a sample's input length). PyTorch's own backward
    /// returns `exp(lp) − γ` (scaled alike), which is the gradient with
    /// respect to the logits under a following log_softmax; the two differ
    /// by `exp(lp)·scale`, which log_softmax's backward cancels exactly
    /// (each row of exp(lp) sums to 1), so the gradient reaching the logits
    /// is the same. A sample whose loss is infinite gets a zero gradient
    /// (PyTorch gives NaN there unless `zero_infinity`).
    ///
    /// Saves `log_probs` (usually log_softmax's own saved output: no new
    /// bytes), the targets (a dense copy only if given strided) and each
    /// sample's nll: f32 `[B]`, `4·B` bytes. Workspace: forward `B·2·L`
    /// f32, backward `B·2·T·L` f32 plus `B·2·max(S, 1)` i32, with
    /// L = 2S + 1.
    pub fn ctc_loss(
        &self,
        targets: &Tensor,
        input_lengths: &[usize],
        target_lengths: &[usize],
        blank: usize,
        zero_infinity: bool,
    ) -> Result<Tensor> {
        const OP: &str = "ctc_loss";
        if self.rank() != 3 || targets.rank() != 2 || targets.dim(0) != self.dim(1) {
            return Err(Error::shape(
                OP,
                format!(
                    "log_probs {:?} and targets {:?}: need log_probs [T, B, C] (time first) and padded targets [B, S]",
                    self.shape(),
                    targets.shape()
                ),
            ));
        }
        float_only(OP, self)?;
        if targets.dtype() != DType::I32 {
            return Err(Error::dtype(
                OP,
                format!("targets {:?} are {}, expected i32 labels", targets.shape(), targets.dtype()),
            ));
        }
        same_arena(OP, &[self, targets])?;
        let (frames, batch, classes) = (self.dim(0), self.dim(1), self.dim(2));
        let s_max = targets.dim(1);
        if input_lengths.len() != batch || target_lengths.len() != batch {
            return Err(Error::shape(
                OP,
                format!(
                    "{} input lengths and {} target lengths for a batch of {batch} (log_probs {:?}); give one of each per sample",
                    input_lengths.len(),
                    target_lengths.len(),
                    self.shape()
                ),
            ));
        }
        if let Some((b, &l)) = input_lengths.iter().enumerate().find(|(_, &l)| l > frames) {
            return Err(Error::index(
                OP,
                format!("input length {l} of sample {b} exceeds the {frames} frames of log_probs {:?}", self.shape()),
            ));
        }
        if let Some((b, &l)) = target_lengths.iter().enumerate().find(|(_, &l)| l > s_max) {
            return Err(Error::index(
                OP,
                format!("target length {l} of sample {b} exceeds the {s_max} columns of targets {:?}", targets.shape()),
            ));
        }
        if blank >= classes {
            return Err(Error::index(OP, format!("blank {blank} is not a class of log_probs {:?}", self.shape())));
        }
        let lp = self.contiguous()?;
        let tg = targets.contiguous_untracked(OP)?;
        let out = output(OP, &lp, &[], lp.dtype())?;
        let nll = output(OP, &lp, &[batch], DType::F32)?;
        let ext = 2 * s_max + 1;
        let (il, tl) = (input_lengths.to_vec(), target_lengths.to_vec());
        // A GPU run reads the lengths from device memory; the plan holds them too.
        let on_cuda = lp.arena().target() == crate::alloc::Target::Cuda;
        let lens = on_cuda
            .then(|| {
                let i32s = |v: &[usize]| v.iter().map(|&l| l as i32).collect::<Vec<i32>>();
                let t = |v: &[usize]| Tensor::from_slice(lp.arena(), &[batch], &i32s(v), Tag::Temporary);
                Ok::<_, Error>((t(&il)?, t(&tl)?))
            })
            .transpose()?;
        let ws = Tensor::empty(lp.arena(), &[batch, 2, ext], DType::F32, Tag::Workspace, OP)?;
        let cuda_shape = crate::cuda::kernels::CtcShape { frames, batch, classes, s_max, blank };
        if !out.is_meta() {
            let tv_host = if tg.is_cuda() { tg.to_vec::<i32>()? } else { vec![] };
            let tv = if tg.is_cuda() { &tv_host[..] } else { tg.data::<i32>()? };
            for b in 0..batch {
                for (j, &c) in tv[b * s_max..b * s_max + tl[b]].iter().enumerate() {
                    if c < 0 || c as usize >= classes || c as usize == blank {
                        return Err(Error::index(
                            OP,
                            format!("target {c} at [{b}, {j}] of targets {:?} must be a class in [0, {classes}) other than blank {blank}", targets.shape()),
                        ));
                    }
                }
            }
        }
        if let (Some((ilt, tlt)), true) = (&lens, out.is_cuda()) {
            let c = crate::cuda::ops::Ctc {
                shape: cuda_shape,
                log_probs: &lp,
                targets: &tg,
                input_lengths: ilt,
                target_lengths: tlt,
                nll: &nll,
            };
            crate::cuda::ops::ctc_forward(&c, zero_infinity, &ws, &out)?;
        } else if !out.is_meta() {
            let tv = tg.data::<i32>()?;
            let p =
                Problem { frames, batch, classes, targets: tv, s_max, input_lengths: &il, target_lengths: &tl, blank };
            let nv = nll.data_mut::<f32>()?;
            with_float!(OP, lp.dtype(), |T| k::forward::<T>(lp.data::<T>()?, &p, nv, ws.data_mut::<f32>()?));
            if zero_infinity {
                nv.iter_mut().filter(|v| v.is_infinite()).for_each(|v| *v = 0.0);
            }
            let sum: f64 = nv.iter().zip(&tl).map(|(&n, &s)| n as f64 / s.max(1) as f64).sum();
            with_float!(OP, lp.dtype(), |T| out.data_mut::<T>()?[0] = T::from_f32((sum / batch.max(1) as f64) as f32));
        }
        drop(ws);
        let mut saved = vec![lp.clone(), tg, nll];
        saved.extend(lens.into_iter().flat_map(|(a, b)| [a, b]));
        Ok(record(OP, &[&lp, targets], out, saved, move |s, g| {
            let (lp, tg, nll) = (&s[0], &s[1], &s[2]);
            let grad = output(OP, lp, lp.shape(), lp.dtype())?;
            let ws = Tensor::empty(lp.arena(), &[batch, 2, frames, ext], DType::F32, Tag::Workspace, OP)?;
            let chain = Tensor::empty(lp.arena(), &[batch, 2, s_max.max(1)], DType::I32, Tag::Workspace, OP)?;
            if grad.is_cuda() {
                let c = crate::cuda::ops::Ctc {
                    shape: cuda_shape,
                    log_probs: lp,
                    targets: tg,
                    input_lengths: &s[3],
                    target_lengths: &s[4],
                    nll,
                };
                let gl = g[0].as_ref().expect("gradient").contiguous_untracked(OP)?;
                crate::cuda::ops::ctc_backward(&c, &gl, &grad, &ws, &chain)?;
            } else if !grad.is_meta() {
                let p = Problem {
                    frames,
                    batch,
                    classes,
                    targets: tg.data::<i32>()?,
                    s_max,
                    input_lengths: &il,
                    target_lengths: &tl,
                    blank,
                };
                with_float!(OP, lp.dtype(), |T| k::backward::<T>(
                    lp.data::<T>()?,
                    &p,
                    nll.data::<f32>()?,
                    g[0].as_ref().expect("gradient").item()?,
                    grad.data_mut::<T>()?,
                    ws.data_mut::<f32>()?,
                    chain.data_mut::<i32>()?
                ));
            }
            Ok(vec![Some(grad), None])
        }))
    }
}
