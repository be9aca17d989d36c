//! Reductions along axes, and softmax / log-softmax.

use super::output;
use crate::autograd::record;
use crate::cpu::reduce::{self as k, Split};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use crate::with_float;

/// Split a tensor's dims into kept and reduced ones; `axes` must be resolved.
fn split(x: &Tensor, reduce: &[bool]) -> (Vec<usize>, Vec<usize>, Vec<usize>, Vec<usize>) {
    let (mut ks, mut kst, mut rs, mut rst) = (vec![], vec![], vec![], vec![]);
    for d in 0..x.rank() {
        if reduce[d] {
            rs.push(x.shape()[d]);
            rst.push(x.strides()[d]);
        } else {
            ks.push(x.shape()[d]);
            kst.push(x.strides()[d]);
        }
    }
    (ks, kst, rs, rst)
}

fn resolve(op: &'static str, x: &Tensor, axes: &[isize]) -> Result<Vec<bool>> {
    let mut reduce = vec![false; x.rank()];
    for &a in axes {
        let d = x.check_axis(op, a)?;
        if std::mem::replace(&mut reduce[d], true) {
            return Err(Error::invalid(
                op,
                format!("axes {axes:?} name dimension {d} of {:?} twice; list each axis once", x.shape()),
            ));
        }
    }
    Ok(reduce)
}

fn out_shape(x: &Tensor, reduce: &[bool], keepdim: bool) -> Vec<usize> {
    (0..x.rank()).filter_map(|d| if reduce[d] { keepdim.then_some(1) } else { Some(x.shape()[d]) }).collect()
}

fn sum_raw(op: &'static str, x: &Tensor, reduce: &[bool], keepdim: bool, scale: f64) -> Result<Tensor> {
    let out = output(op, x, &out_shape(x, reduce, keepdim), x.dtype())?;
    if x.arena().target() == crate::alloc::Target::Cuda {
        // The GPU sums rows: reduced dims last, in one dense copy (on the
        // meta device too), then one block per kept element.
        let perm: Vec<usize> =
            (0..x.rank()).filter(|&d| !reduce[d]).chain((0..x.rank()).filter(|&d| reduce[d])).collect();
        let rows = out.numel();
        let view = x.restride(
            perm.iter().map(|&d| x.shape()[d]).collect(),
            perm.iter().map(|&d| x.strides()[d]).collect(),
            x.offset(),
        );
        let dense = view.contiguous_untracked(op)?;
        if out.is_cuda() {
            let cols = x.numel().checked_div(rows).unwrap_or(0);
            if rows > 0 {
                crate::cuda::ops::sum_last(&dense, &out, rows, cols, scale as f32)?;
            }
        }
        return Ok(out);
    }
    if !out.is_meta() {
        let (ks, kst, rs, rst) = split(x, reduce);
        let s = Split { kept_shape: &ks, kept_strides: &kst, red_shape: &rs, red_strides: &rst, offset: x.offset() };
        with_float!(op, x.dtype(), |T| k::sum::<T, T>(x.storage_data::<T>()?, &s, scale, out.data_mut::<T>()?));
    }
    Ok(out)
}

fn sum_op(op: &'static str, x: &Tensor, axes: &[isize], keepdim: bool, mean: bool) -> Result<Tensor> {
    super::float_only(op, x)?;
    let reduce = resolve(op, x, axes)?;
    let count: usize = (0..x.rank()).filter(|&d| reduce[d]).map(|d| x.shape()[d]).product();
    // The mean of nothing is NaN (0/0), as in PyTorch; the sum of nothing is 0.
    let scale = if mean { 1.0 / count as f64 } else { 1.0 };
    let out = sum_raw(op, x, &reduce, keepdim, scale)?;
    let (shape, kept) = (x.shape().to_vec(), out_shape(x, &reduce, true));
    Ok(record(op, &[x], out, vec![], move |_, g| {
        let g = g[0].as_ref().expect("gradient").reshape(&kept)?;
        let g = if scale == 1.0 { g } else { g.mul_scalar(scale as f32)? };
        Ok(vec![Some(g.expand(&shape)?.contiguous()?)])
    }))
}

impl Tensor {
    /// Sum over `axes` (negative counts from the end; each axis at most
    /// once). A sum over no elements is 0.
    pub fn sum(&self, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        sum_op("sum", self, axes, keepdim, false)
    }
    /// Mean over `axes`. A mean over no elements is NaN, as in PyTorch.
    pub fn mean(&self, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        sum_op("mean", self, axes, keepdim, true)
    }
    /// Sum of every element, as a one-element tensor of shape [].
    pub fn sum_all(&self) -> Result<Tensor> {
        let axes: Vec<isize> = (0..self.rank() as isize).collect();
        self.sum(&axes, false)
    }
    /// Mean of every element, shape []; NaN for an empty tensor.
    pub fn mean_all(&self) -> Result<Tensor> {
        let axes: Vec<isize> = (0..self.rank() as isize).collect();
        self.mean(&axes, false)
    }

    /// Sum a broadcast gradient back down to `shape` (the inverse of broadcasting).
    pub fn sum_to(&self, shape: &[usize]) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let lead = self.rank().checked_sub(shape.len()).ok_or_else(|| {
            Error::shape("sum_to", format!("cannot sum {:?} down to the larger rank of {shape:?}", self.shape()))
        })?;
        let mut axes = vec![];
        for d in 0..self.rank() {
            if d < lead || (shape[d - lead] == 1 && self.shape()[d] != 1) {
                axes.push(d as isize);
            } else if shape[d - lead] != self.shape()[d] {
                return Err(Error::shape("sum_to", format!("{:?} does not broadcast from {shape:?}", self.shape())));
            }
        }
        self.sum(&axes, true)?.reshape(shape)
    }

    /// Maximum along `axis`; the gradient flows to the first maximum. An
    /// axis of length 0 has no maximum: an error.
    pub fn max(&self, axis: isize, keepdim: bool) -> Result<Tensor> {
        super::float_only("max", self)?;
        super::cpu_only("max", self)?;
        let d = self.check_axis("max", axis)?;
        if self.shape()[d] == 0 {
            return Err(Error::invalid(
                "max",
                format!("axis {axis} of {:?} has length 0, so there is no maximum to take", self.shape()),
            ));
        }
        let mut reduce = vec![false; self.rank()];
        reduce[d] = true;
        let kept = out_shape(self, &reduce, true);
        let out = output("max", self, &kept, self.dtype())?;
        let arg = output("max", self, &kept, DType::I32)?;
        if !out.is_meta() {
            let (ks, kst, rs, rst) = split(self, &reduce);
            let s =
                Split { kept_shape: &ks, kept_strides: &kst, red_shape: &rs, red_strides: &rst, offset: self.offset() };
            with_float!("max", self.dtype(), |T| k::max::<T>(
                self.storage_data::<T>()?,
                &s,
                out.data_mut::<T>()?,
                arg.data_mut::<i32>()?
            ));
        }
        let out = if keepdim { out } else { out.reshape(&out_shape(self, &reduce, false))? };
        let shape = self.shape().to_vec();
        Ok(record("max", &[self], out.detach(), vec![arg], move |s, g| {
            let g = g[0].as_ref().expect("gradient").reshape(&kept)?.contiguous()?;
            let dx = crate::tensor::Tensor::zeros(g.arena(), &shape, g.dtype(), crate::alloc::Tag::Temporary)?;
            if !dx.is_meta() {
                let arg = s[0].data::<i32>()?;
                let inner: usize = shape[d + 1..].iter().product();
                with_float!("max", g.dtype(), |T| {
                    let (gv, dv) = (g.data::<T>()?, dx.data_mut::<T>()?);
                    for (o, (&a, &gi)) in arg.iter().zip(gv).enumerate() {
                        let (outer, inn) = (o / inner, o % inner);
                        dv[(outer * shape[d] + a as usize) * inner + inn] = gi;
                    }
                });
            }
            Ok(vec![Some(dx)])
        }))
    }

    /// Softmax along `axis`.
    pub fn softmax(&self, axis: isize) -> Result<Tensor> {
        softmax_op(self, axis, false)
    }
    /// Log-softmax along `axis` (stable: subtracts the row maximum).
    pub fn log_softmax(&self, axis: isize) -> Result<Tensor> {
        softmax_op(self, axis, true)
    }
}

fn softmax_op(x: &Tensor, axis: isize, log: bool) -> Result<Tensor> {
    let op = if log { "log_softmax" } else { "softmax" };
    super::float_only(op, x)?;
    let d = x.check_axis(op, axis)?;
    let last = x.rank().saturating_sub(1);
    if d != last {
        // Move the axis last, work on rows, move it back: views plus one copy.
        return softmax_op(&x.transpose(d as isize, last as isize)?, -1, log)?.transpose(d as isize, last as isize);
    }
    let xc = x.contiguous()?;
    let cols = x.shape().last().copied().unwrap_or(1);
    let out = output(op, &xc, xc.shape(), xc.dtype())?;
    let rows = xc.numel().checked_div(cols).unwrap_or(0);
    if out.is_cuda() {
        if rows > 0 {
            crate::cuda::ops::softmax(log, &xc, &out, rows, cols)?;
        }
    } else if !out.is_meta() {
        with_float!(op, xc.dtype(), |T| k::softmax::<T>(xc.data::<T>()?, cols, log, out.data_mut::<T>()?));
    }
    Ok(record(op, &[&xc], out.clone(), vec![out], move |s, g| {
        let g = g[0].as_ref().expect("gradient").contiguous()?;
        let y = &s[0];
        let dx = output(op, y, y.shape(), y.dtype())?;
        if dx.is_cuda() {
            if rows > 0 {
                crate::cuda::ops::softmax_grad(log, y, &g, &dx, rows, cols)?;
            }
        } else if !dx.is_meta() {
            with_float!(op, y.dtype(), |T| k::softmax_backward::<T>(
                y.data::<T>()?,
                g.data::<T>()?,
                cols,
                log,
                dx.data_mut::<T>()?
            ));
        }
        Ok(vec![Some(dx)])
    }))
}
