//! Layer normalisation over the last dimension, with a fused backward.

use super::{output, same_arena, same_dtype};
use crate::alloc::Tag;
use crate::autograd::record;
use crate::cpu::norm::{self as k, Affine, Grads};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use crate::with_float;

impl Tensor {
    /// `(x − mean)/√(var + eps)·weight + bias` over the last dimension (size
    /// D; biased variance, as PyTorch), with optional `weight` and `bias`
    /// of shape `[D]`.
    ///
    /// Saves the input, each row's mean and rstd (f32, `[rows]` each) and
    /// the weight: beyond the input (often saved by its producer anyway)
    /// that is 8 bytes a row. The backward gives dx, dweight and dbias in
    /// one pass; dweight and dbias sum rows in a fixed order.
    pub fn layer_norm(&self, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f32) -> Result<Tensor> {
        const OP: &str = "layer_norm";
        if self.rank() == 0 || self.dim(-1) == 0 {
            return Err(Error::shape(OP, format!("input {:?} has no last dimension to normalise", self.shape())));
        }
        if !self.dtype().is_float() {
            return Err(Error::dtype(
                OP,
                format!("input {:?} is {}, expected f32, f16 or bf16", self.shape(), self.dtype()),
            ));
        }
        let d = self.dim(-1);
        for (name, p) in [("weight", weight), ("bias", bias)] {
            let Some(p) = p else { continue };
            if p.shape() != [d] {
                return Err(Error::shape(
                    OP,
                    format!(
                        "{name} {:?} for input {:?}: need [{d}], the size of the last dimension",
                        p.shape(),
                        self.shape()
                    ),
                ));
            }
            same_arena(OP, &[self, p])?;
            same_dtype(OP, self, p)?;
        }
        if eps.is_nan() || eps < 0.0 {
            return Err(Error::invalid(OP, format!("eps {eps} must be ≥ 0")));
        }
        let x = self.contiguous()?;
        let w = weight.map(Tensor::contiguous).transpose()?;
        let b = bias.map(Tensor::contiguous).transpose()?;
        let rows = x.numel() / d;
        let out = output(OP, &x, x.shape(), x.dtype())?;
        let mean = output(OP, &x, &[rows], DType::F32)?;
        let rstd = output(OP, &x, &[rows], DType::F32)?;
        if out.is_cuda() {
            if rows > 0 {
                crate::cuda::ops::layer_norm(&x, w.as_ref(), b.as_ref(), eps, &out, &mean, &rstd, rows, d)?;
            }
        } else if !out.is_meta() {
            with_float!(OP, x.dtype(), |T| {
                let a = Affine {
                    weight: w.as_ref().map(|w| w.data::<T>()).transpose()?,
                    bias: b.as_ref().map(|b| b.data::<T>()).transpose()?,
                };
                k::layer_norm::<T>(
                    x.data::<T>()?,
                    d,
                    a,
                    eps,
                    out.data_mut::<T>()?,
                    mean.data_mut::<f32>()?,
                    rstd.data_mut::<f32>()?,
                );
            });
        }
        let mut inputs = vec![&x];
        inputs.extend(w.iter().chain(b.iter()));
        let wants: Vec<bool> = inputs.iter().map(|t| t.requires_grad_flag()).collect();
        let (has_w, has_b) = (w.is_some(), b.is_some());
        let mut saved = vec![x.clone(), mean, rstd];
        saved.extend(w.clone());
        Ok(record(OP, &inputs, out, saved, move |s, g| {
            let g = g[0].as_ref().expect("gradient").contiguous_untracked(OP)?;
            let (x, mean, rstd, w) = (&s[0], &s[1], &s[2], s.get(3));
            let want_w = has_w && wants[1];
            let want_b = has_b && wants[wants.len() - 1];
            let grad = |want: bool, shape: &[usize]| want.then(|| output(OP, x, shape, x.dtype())).transpose();
            let dx = grad(wants[0], x.shape())?;
            let dw = grad(want_w, &[d])?;
            let db = grad(want_b, &[d])?;
            let cuda = x.arena().target() == crate::alloc::Target::Cuda;
            // Each device's partial sums (the CUDA rule on a meta arena planning for it).
            let part = if !(want_w || want_b) {
                None
            } else if cuda {
                let bytes = crate::cuda::kernels::layer_norm_backward_workspace(rows, d, true);
                Some(crate::cuda::ops::workspace(OP, x, bytes)?)
            } else {
                let (_, nb) = k::blocks(rows, d);
                Some(Tensor::empty(x.arena(), &[nb, 2, d], DType::F32, Tag::Workspace, OP)?)
            };
            if g.is_cuda() {
                if rows > 0 {
                    let grads = crate::cuda::ops::LayerNormGrads { dx: dx.as_ref(), dw: dw.as_ref(), db: db.as_ref() };
                    crate::cuda::ops::layer_norm_backward(x, &g, w, mean, rstd, grads, part.as_ref(), rows, d)?;
                } else {
                    // No rows: dweight and dbias are sums of nothing.
                    for t in dw.iter().chain(db.iter()) {
                        crate::cuda::ops::gpu(OP, t)?.zero(t.device_ptr(), t.nbytes())?;
                    }
                }
            } else if !g.is_meta() {
                with_float!(OP, x.dtype(), |T| {
                    let gr = Grads {
                        dx: dx.as_ref().map(|t| t.data_mut::<T>()).transpose()?,
                        dw: dw.as_ref().map(|t| t.data_mut::<T>()).transpose()?,
                        db: db.as_ref().map(|t| t.data_mut::<T>()).transpose()?,
                        part: part.as_ref().map(|t| t.data_mut::<f32>()).transpose()?.unwrap_or_default(),
                    };
                    let wv = w.map(|w| w.data::<T>()).transpose()?;
                    k::layer_norm_backward::<T>(
                        x.data::<T>()?,
                        g.data::<T>()?,
                        d,
                        wv,
                        mean.data::<f32>()?,
                        rstd.data::<f32>()?,
                        gr,
                    );
                });
            }
            let mut out = vec![dx];
            if has_w {
                out.push(dw);
            }
            if has_b {
                out.push(db);
            }
            Ok(out)
        }))
    }
}
