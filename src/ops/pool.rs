//! Max and average pooling over 1, 2 or 3 spatial dims of `[B, C, ..]`
//! (PyTorch's `max_pool{1,2,3}d` and `avg_pool{1,2,3}d` with dilation 1,
//! `ceil_mode = False`; average pooling counts padding as zeros).

use super::{float_only, output};
use crate::autograd::record;
use crate::cpu::pool::{self as k, PoolGeom};
use crate::cuda::ops as cuda;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use crate::with_float;

/// Check the settings against `x` and give the geometry and output shape.
fn geometry(
    op: &'static str,
    x: &Tensor,
    kernel: &[usize],
    stride: &[usize],
    padding: &[usize],
) -> Result<(PoolGeom, Vec<usize>)> {
    let n = kernel.len();
    if !(1..=3).contains(&n) || stride.len() != n || padding.len() != n {
        return Err(Error::invalid(
            op,
            format!("kernel {kernel:?}, stride {stride:?} and padding {padding:?} must all have 1, 2 or 3 entries, one per spatial dim"),
        ));
    }
    if x.rank() != n + 2 {
        return Err(Error::shape(
            op,
            format!(
                "input {:?} for a {n}-d pool with kernel {kernel:?}: need [B, C] followed by {n} spatial dims",
                x.shape()
            ),
        ));
    }
    float_only(op, x)?;
    if kernel.contains(&0) || stride.contains(&0) {
        return Err(Error::invalid(op, format!("kernel {kernel:?} and stride {stride:?} must be ≥ 1")));
    }
    if padding.iter().zip(kernel).any(|(&p, &k)| 2 * p > k) {
        return Err(Error::invalid(
            op,
            format!("padding {padding:?} must be at most half of kernel {kernel:?} in every dim (as in PyTorch)"),
        ));
    }
    let mut shape = x.shape()[..2].to_vec();
    for d in 0..n {
        let len = x.shape()[2 + d] + 2 * padding[d];
        if len < kernel[d] {
            return Err(Error::shape(
                op,
                format!(
                    "input {:?} with padding {padding:?} is smaller than kernel {kernel:?} in spatial dim {d}",
                    x.shape()
                ),
            ));
        }
        shape.push((len - kernel[d]) / stride[d] + 1);
    }
    let lift = |v: &[usize], fill: usize| {
        let mut out = [fill; 3];
        out[3 - n..].copy_from_slice(v);
        out
    };
    let g = PoolGeom {
        big: lift(&x.shape()[2..], 1),
        small: lift(&shape[2..], 1),
        k: lift(kernel, 1),
        stride: lift(stride, 1),
        pad: lift(padding, 0),
    };
    Ok((g, shape))
}

impl Tensor {
    /// Max over windows of `kernel` (one entry per spatial dim, 1 to 3)
    /// moved by `stride`, with implicit −∞ `padding` (at most half the
    /// kernel). The gradient goes to the first maximum of each window.
    ///
    /// Saves only the argmax: i32, one per output element, so
    /// `4 · numel(output)` bytes (the input is not kept).
    pub fn max_pool(&self, kernel: &[usize], stride: &[usize], padding: &[usize]) -> Result<Tensor> {
        const OP: &str = "max_pool";
        let (g, shape) = geometry(OP, self, kernel, stride, padding)?;
        let x = self.contiguous_untracked(OP)?;
        let out = output(OP, &x, &shape, x.dtype())?;
        let arg = output(OP, &x, &shape, DType::I32)?;
        if out.is_cuda() {
            cuda::max_pool(&g, &x, &out, &arg)?;
        } else if !out.is_meta() {
            with_float!(OP, x.dtype(), |T| k::max_pool::<T>(
                x.data::<T>()?,
                &g,
                out.data_mut::<T>()?,
                arg.data_mut::<i32>()?
            ));
        }
        let xshape = self.shape().to_vec();
        Ok(record(OP, &[self], out, vec![arg], move |s, gr| {
            let dy = gr[0].as_ref().expect("gradient").contiguous_untracked(OP)?;
            let dx = output(OP, &dy, &xshape, dy.dtype())?;
            if dx.is_cuda() {
                cuda::max_pool_grad(&g, &dy, &s[0], &dx)?;
            } else if !dx.is_meta() {
                with_float!(OP, dy.dtype(), |T| k::max_pool_backward::<T>(
                    dy.data::<T>()?,
                    s[0].data::<i32>()?,
                    &g,
                    dx.data_mut::<T>()?
                ));
            }
            Ok(vec![Some(dx)])
        }))
    }

    /// Mean over windows of `kernel` moved by `stride`, with zero `padding`
    /// (at most half the kernel) counted in the divisor: every window
    /// divides by the kernel volume (PyTorch's `count_include_pad = True`).
    /// Saves nothing.
    pub fn avg_pool(&self, kernel: &[usize], stride: &[usize], padding: &[usize]) -> Result<Tensor> {
        const OP: &str = "avg_pool";
        let (g, shape) = geometry(OP, self, kernel, stride, padding)?;
        let x = self.contiguous_untracked(OP)?;
        let out = output(OP, &x, &shape, x.dtype())?;
        if out.is_cuda() {
            cuda::avg_pool(&g, &x, &out)?;
        } else if !out.is_meta() {
            with_float!(OP, x.dtype(), |T| k::avg_pool::<T>(x.data::<T>()?, &g, out.data_mut::<T>()?));
        }
        let xshape = self.shape().to_vec();
        Ok(record(OP, &[self], out, vec![], move |_, gr| {
            let dy = gr[0].as_ref().expect("gradient").contiguous_untracked(OP)?;
            let dx = output(OP, &dy, &xshape, dy.dtype())?;
            if dx.is_cuda() {
                cuda::avg_pool_grad(&g, &dy, &dx)?;
            } else if !dx.is_meta() {
                with_float!(OP, dy.dtype(), |T| k::avg_pool_backward::<T>(dy.data::<T>()?, &g, dx.data_mut::<T>()?));
            }
            Ok(vec![Some(dx)])
        }))
    }
}
