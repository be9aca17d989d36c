//! Batch normalisation over channel dim 1 of `[B, C, ..]` (PyTorch's
//! `batch_norm` / `BatchNorm{1,2,3}d`).

use super::{float_only, output, same_arena, same_dtype};
use crate::alloc::Tag;
use crate::autograd::record;
use crate::cpu::batch_norm::{self as k, Dims};
use crate::error::{Error, Result};
use crate::tensor::{DType, Float, Tensor};
use crate::with_float;

/// Running statistics must be dense `[C]` floats (any float dtype).
fn check_running(op: &'static str, name: &str, t: &Tensor, x: &Tensor) -> Result<()> {
    let c = x.dim(1);
    if t.shape() != [c] || !t.is_contiguous() {
        return Err(Error::shape(
            op,
            format!("{name} {:?} for input {:?}: need a dense [{c}], one value per channel", t.shape(), x.shape()),
        ));
    }
    float_only(op, t)?;
    same_arena(op, &[x, t])
}

impl Tensor {
    /// Normalise each channel (dim 1) of `[B, C, ..]`:
    /// `(x − mean)/√(var + eps)·weight + bias`, with optional `weight` and
    /// `bias` `[C]` in the input's dtype.
    ///
    /// In training the mean and (biased) variance come from the batch, and
    /// when `running_mean`/`running_var` are given they are updated in
    /// place (no autograd) as `r ← (1 − momentum)·r + momentum·stat`, with
    /// the unbiased variance `var·n/(n − 1)`, n = B·spatial, as PyTorch.
    /// In evaluation the running statistics are used and must be given.
    /// Running statistics are dense `[C]` tensors of any float dtype.
    ///
    /// Saves the input, the per-channel mean and rstd (f32: `8·C` bytes)
    /// and the weight. The backward needs a `[2, C]` f32 Workspace for the
    /// per-channel sums (when the weight or bias needs a gradient, or in
    /// training).
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        running_mean: Option<&Tensor>,
        running_var: Option<&Tensor>,
        training: bool,
        momentum: f32,
        eps: f32,
    ) -> Result<Tensor> {
        const OP: &str = "batch_norm";
        if self.rank() < 2 {
            return Err(Error::shape(OP, format!("input {:?} needs [B, C, ..]: channels are dim 1", self.shape())));
        }
        float_only(OP, self)?;
        super::cpu_only(OP, self)?;
        let (batch, ch) = (self.dim(0), self.dim(1));
        let sp = self.shape()[2..].iter().product::<usize>();
        for (name, p) in [("weight", weight), ("bias", bias)] {
            let Some(p) = p else { continue };
            if p.shape() != [ch] {
                return Err(Error::shape(
                    OP,
                    format!("{name} {:?} for input {:?}: need [{ch}], one value per channel", p.shape(), self.shape()),
                ));
            }
            same_arena(OP, &[self, p])?;
            same_dtype(OP, self, p)?;
        }
        let running = match (running_mean, running_var) {
            (Some(m), Some(v)) => {
                check_running(OP, "running_mean", m, self)?;
                check_running(OP, "running_var", v, self)?;
                Some((m, v))
            }
            (None, None) => None,
            _ => return Err(Error::invalid(OP, "give both running_mean and running_var, or neither")),
        };
        if !training && running.is_none() {
            return Err(Error::invalid(OP, "evaluation (training = false) needs running_mean and running_var"));
        }
        let n = batch * sp;
        if training && n <= 1 {
            return Err(Error::shape(
                OP,
                format!("input {:?} has {n} value per channel; training needs more than 1 (use a larger batch or evaluation mode)", self.shape()),
            ));
        }
        if !(0.0..=1.0).contains(&momentum) || eps.is_nan() || eps < 0.0 {
            return Err(Error::invalid(OP, format!("momentum {momentum} must be in [0, 1] and eps {eps} ≥ 0")));
        }
        let d = Dims { batch, ch, sp };
        let x = self.contiguous()?;
        let w = weight.map(Tensor::contiguous).transpose()?;
        let b = bias.map(Tensor::contiguous).transpose()?;
        let out = output(OP, &x, x.shape(), x.dtype())?;
        let mean = output(OP, &x, &[ch], DType::F32)?;
        let rstd = output(OP, &x, &[ch], DType::F32)?;
        if !out.is_meta() {
            let (mv, rv) = (mean.data_mut::<f32>()?, rstd.data_mut::<f32>()?);
            if training {
                with_float!(OP, x.dtype(), |T| k::channel_stats::<T>(x.data::<T>()?, &d, mv, rv));
                if let Some((rm, rvar)) = running {
                    let unbias = n as f32 / (n - 1) as f32;
                    with_float!(OP, rm.dtype(), |R| {
                        for (r, &m) in rm.data_mut::<R>()?.iter_mut().zip(mv.iter()) {
                            *r = R::from_f32((1.0 - momentum) * r.to_f32() + momentum * m);
                        }
                    });
                    with_float!(OP, rvar.dtype(), |R| {
                        for (r, &v) in rvar.data_mut::<R>()?.iter_mut().zip(rv.iter()) {
                            *r = R::from_f32((1.0 - momentum) * r.to_f32() + momentum * v * unbias);
                        }
                    });
                }
            } else if let Some((rm, rvar)) = running {
                with_float!(OP, rm.dtype(), |R| {
                    for (m, r) in mv.iter_mut().zip(rm.data::<R>()?) {
                        *m = r.to_f32();
                    }
                });
                with_float!(OP, rvar.dtype(), |R| {
                    for (v, r) in rv.iter_mut().zip(rvar.data::<R>()?) {
                        *v = r.to_f32();
                    }
                });
            }
            for v in rv.iter_mut() {
                *v = 1.0 / (*v + eps).sqrt();
            }
            with_float!(OP, x.dtype(), |T| k::normalize::<T>(
                x.data::<T>()?,
                &d,
                mv,
                rv,
                w.as_ref().map(|w| w.data::<T>()).transpose()?,
                b.as_ref().map(|b| b.data::<T>()).transpose()?,
                out.data_mut::<T>()?
            ));
        }
        let mut inputs = vec![&x];
        inputs.extend(w.iter().chain(b.iter()));
        let wants: Vec<bool> = inputs.iter().map(|t| t.requires_grad_flag()).collect();
        let (has_w, has_b) = (w.is_some(), b.is_some());
        let mut saved = vec![x.clone(), mean, rstd];
        saved.extend(w.clone());
        Ok(record(OP, &inputs, out, saved, move |s, g| {
            let dy = g[0].as_ref().expect("gradient").contiguous_untracked(OP)?;
            let (x, mean, rstd, w) = (&s[0], &s[1], &s[2], s.get(3));
            let want_x = wants[0];
            let want_w = has_w && wants[1];
            let want_b = has_b && wants[wants.len() - 1];
            let grad = |want: bool, shape: &[usize]| want.then(|| output(OP, x, shape, x.dtype())).transpose();
            let dx = grad(want_x, x.shape())?;
            let dw = grad(want_w, &[ch])?;
            let db = grad(want_b, &[ch])?;
            let sums = (want_w || want_b || (want_x && training))
                .then(|| Tensor::empty(x.arena(), &[2, ch], DType::F32, Tag::Workspace, OP))
                .transpose()?;
            if !dy.is_meta() {
                let (mean, rstd) = (mean.data::<f32>()?, rstd.data::<f32>()?);
                with_float!(OP, x.dtype(), |T| {
                    let (xv, gv) = (x.data::<T>()?, dy.data::<T>()?);
                    let mut centre = None;
                    if let Some(ws) = &sums {
                        let (sdy, sdyx) = ws.data_mut::<f32>()?.split_at_mut(ch);
                        k::backward_sums::<T>(xv, gv, &d, mean, rstd, sdy, sdyx);
                        for (out, src) in [(&dw, &*sdyx), (&db, &*sdy)] {
                            if let Some(o) = out {
                                for (o, v) in o.data_mut::<T>()?.iter_mut().zip(src) {
                                    *o = T::from_f32(*v);
                                }
                            }
                        }
                        if training {
                            // The sums become the per-channel means dx subtracts.
                            sdy.iter_mut().chain(sdyx.iter_mut()).for_each(|v| *v /= n as f32);
                            centre = Some((&*sdy, &*sdyx));
                        }
                    }
                    if let Some(dx) = &dx {
                        let wv = w.map(|w| w.data::<T>()).transpose()?;
                        k::backward_dx::<T>(xv, gv, &d, mean, rstd, wv, centre, dx.data_mut::<T>()?);
                    }
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
