//! Convolutions with PyTorch's semantics and weight layouts: `conv1d`,
//! `conv2d`, `conv3d` (weight `[O, C, k..]`, groups = 1 only) and
//! `conv_transpose2d` (weight `[C_in, C_out, kh, kw]`).
//!
//! All run on one 3-d core (see `cpu::conv`): tiled im2col and the f32
//! GEMM, with the column buffer bounded by [`conv_workspace_limit`]
//! (default [`DEFAULT_CONV_WORKSPACE_LIMIT`]). Each pass asks the arena for
//! exactly one Workspace block of `4 · elems` bytes, where
//! `(tile, elems) = cpu::conv::workspace(geom, pass, dtype, limit)`:
//! with K = C·kvol, P = output positions of the regular conv, h = 1 for
//! f16/bf16 storage and 0 for f32,
//! `tile = min(P, max(64, ⌊(⌊limit/4⌋ − fixed)/(64·(K + h·O))⌋·64))` and
//! `elems = fixed + tile·(K + h·O)`, with fixed = h·O·K (forward, weight
//! gradient) or h·(O·K + C·spatial(big)) (input gradient). A transposed
//! conv uses the same formulas on the regular conv it is the adjoint of
//! (C = C_out, O = C_in, P = H_in·W_in). The block lives only while its
//! pass runs; a backward runs the dX pass, then the dW pass.
//!
//! Saved for backward: the (contiguous) input and the weight — nothing
//! else. The input is usually held already (a Data batch, or an output the
//! previous op saved); the weight is a Parameter or, in mixed precision,
//! its cast.

use super::{float_only, output, same_arena, same_dtype};
use crate::alloc::Tag;
use crate::alloc::Target;
use crate::autograd::record;
use crate::cpu::conv::{self as k, Geom, Pass};
use crate::cuda::ops as cuda;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use crate::with_float;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The default bound on a convolution's column workspace: 64 MiB.
pub const DEFAULT_CONV_WORKSPACE_LIMIT: usize = 64 << 20;

static LIMIT: AtomicUsize = AtomicUsize::new(DEFAULT_CONV_WORKSPACE_LIMIT);

/// Bound the Workspace block each convolution pass asks for (process-wide,
/// read once at the start of each pass). Results do not depend on it.
pub fn set_conv_workspace_limit(bytes: usize) {
    LIMIT.store(bytes, Ordering::Relaxed);
}

/// The current bound (see [`set_conv_workspace_limit`]).
pub fn conv_workspace_limit() -> usize {
    LIMIT.load(Ordering::Relaxed)
}

/// A pass's Workspace block, allocated on every device, and when the pass
/// runs on a GPU the cuBLAS scratch after it (so a CUDA plan has both).
fn workspace(op: &'static str, like: &Tensor, g: &Geom, pass: Pass) -> Result<(usize, Tensor, Option<Tensor>)> {
    let (tile, elems) = k::workspace(g, pass, like.dtype(), conv_workspace_limit());
    let ws = Tensor::empty(like.arena(), &[elems], DType::F32, Tag::Workspace, op)?;
    let gemm = (like.arena().target() == Target::Cuda).then(|| cuda::gemm_workspace(like)).transpose()?;
    Ok((tile, ws, gemm))
}

/// `small = W·col(big) (+ bias)`, shaped `shape`.
fn pass_forward(
    op: &'static str,
    g: &Geom,
    big: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    shape: &[usize],
) -> Result<Tensor> {
    let out = output(op, big, shape, big.dtype())?;
    let (tile, ws, gemm) = workspace(op, big, g, Pass::Forward)?;
    if let (Some(gemm), true) = (&gemm, out.is_cuda()) {
        cuda::conv_forward(g, big, w, bias, &out, &cuda::ConvWs { tile, ws: &ws, gemm })?;
    } else if !out.is_meta() && gemm.is_none() {
        with_float!(op, big.dtype(), |T| k::forward::<T>(
            g,
            shape[0],
            big.data::<T>()?,
            w.data::<T>()?,
            bias.map(|b| b.data::<T>()).transpose()?,
            out.data_mut::<T>()?,
            tile,
            ws.data_mut::<f32>()?
        ));
    }
    Ok(out)
}

/// `big = col2im(Wᵀ·small) (+ bias)`, shaped `shape`.
fn pass_adjoint(
    op: &'static str,
    g: &Geom,
    small: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    shape: &[usize],
) -> Result<Tensor> {
    let out = output(op, small, shape, small.dtype())?;
    let (tile, ws, gemm) = workspace(op, small, g, Pass::Adjoint)?;
    if let (Some(gemm), true) = (&gemm, out.is_cuda()) {
        cuda::conv_adjoint(g, small, w, bias, &out, &cuda::ConvWs { tile, ws: &ws, gemm })?;
    } else if !out.is_meta() && gemm.is_none() {
        with_float!(op, small.dtype(), |T| k::adjoint::<T>(
            g,
            shape[0],
            small.data::<T>()?,
            w.data::<T>()?,
            bias.map(|b| b.data::<T>()).transpose()?,
            out.data_mut::<T>()?,
            tile,
            ws.data_mut::<f32>()?
        ));
    }
    Ok(out)
}

/// `dW = Σ small·col(big)ᵀ`, shaped `shape`.
fn pass_weight(op: &'static str, g: &Geom, big: &Tensor, small: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let out = output(op, big, shape, big.dtype())?;
    let (tile, ws, gemm) = workspace(op, big, g, Pass::WeightGrad)?;
    if let (Some(gemm), true) = (&gemm, out.is_cuda()) {
        cuda::conv_weight_grad(g, big, small, &out, &cuda::ConvWs { tile, ws: &ws, gemm })?;
    } else if !out.is_meta() && gemm.is_none() {
        with_float!(op, big.dtype(), |T| k::weight_grad::<T>(
            g,
            big.shape()[0],
            big.data::<T>()?,
            small.data::<T>()?,
            out.data_mut::<T>()?,
            tile,
            ws.data_mut::<f32>()?
        ));
    }
    Ok(out)
}

/// Bias gradient: `dy` `[B, ch, ..]` summed over batch and space.
fn bias_grad(op: &'static str, dy: &Tensor, ch: usize) -> Result<Tensor> {
    let out = output(op, dy, &[ch], dy.dtype())?;
    if out.is_cuda() {
        cuda::conv_bias_grad(dy, &out, ch)?;
    } else if !out.is_meta() {
        let (b, s) = (dy.shape()[0], dy.numel() / (dy.shape()[0] * ch).max(1));
        with_float!(op, dy.dtype(), |T| k::channel_sum::<T>(dy.data::<T>()?, b, ch, s, out.data_mut::<T>()?));
    }
    Ok(out)
}

/// Checks shared by every convolution: dtypes, arenas, bias shape, and
/// positive stride, dilation and kernel.
fn check_common(
    op: &'static str,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    bias_len: usize,
    stride: &[usize],
    dilation: &[usize],
) -> Result<()> {
    float_only(op, x)?;
    same_dtype(op, x, w)?;
    same_arena(op, &[x, w])?;
    if let Some(b) = bias {
        same_dtype(op, x, b)?;
        same_arena(op, &[x, b])?;
        if b.shape() != [bias_len] {
            return Err(Error::shape(
                op,
                format!(
                    "bias {:?} for weight {:?}: need [{bias_len}], one value per output channel",
                    b.shape(),
                    w.shape()
                ),
            ));
        }
    }
    if stride.contains(&0) || dilation.contains(&0) {
        return Err(Error::invalid(
            op,
            format!("stride {stride:?} and dilation {dilation:?} must be ≥ 1 in every dimension"),
        ));
    }
    if w.shape().contains(&0) {
        return Err(Error::shape(op, format!("weight {:?} has an empty dimension", w.shape())));
    }
    Ok(())
}

/// Lift per-dimension settings of `n` spatial dims to 3-d.
fn lift(v: &[usize], fill: usize) -> [usize; 3] {
    let mut out = [fill; 3];
    out[3 - v.len()..].copy_from_slice(v);
    out
}

fn conv_nd(
    op: &'static str,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: &[usize],
    padding: &[usize],
    dilation: &[usize],
) -> Result<Tensor> {
    let n = stride.len();
    if x.rank() != n + 2 || w.rank() != n + 2 {
        return Err(Error::shape(
            op,
            format!(
                "input {:?} and weight {:?}: need input [B, C, {n} spatial dims] and weight [O, C, {n} kernel dims]",
                x.shape(),
                w.shape()
            ),
        ));
    }
    if w.dim(1) != x.dim(1) {
        return Err(Error::shape(
            op,
            format!(
                "weight {:?} takes {} input channels but input {:?} has {}; only groups = 1 is supported",
                w.shape(),
                w.dim(1),
                x.shape(),
                x.dim(1)
            ),
        ));
    }
    check_common(op, x, w, bias, w.dim(0), stride, dilation)?;
    let mut out_sp = vec![];
    for d in 0..n {
        let (len, kk) = (x.shape()[2 + d], w.shape()[2 + d]);
        let extent = dilation[d] * (kk - 1) + 1;
        if len + 2 * padding[d] < extent {
            return Err(Error::shape(
                op,
                format!(
                    "input {:?} with padding {padding:?}: spatial dim {d} is {} padded, smaller than the dilated kernel extent {extent} of weight {:?}; pad more or use a smaller kernel",
                    x.shape(),
                    len + 2 * padding[d],
                    w.shape()
                ),
            ));
        }
        out_sp.push((len + 2 * padding[d] - extent) / stride[d] + 1);
    }
    let (batch, c, o) = (x.dim(0), x.dim(1), w.dim(0));
    let g = Geom {
        c,
        big: lift(&x.shape()[2..], 1),
        o,
        small: lift(&out_sp, 1),
        k: lift(&w.shape()[2..], 1),
        stride: lift(stride, 1),
        pad: lift(padding, 0),
        dil: lift(dilation, 1),
    };
    let x = x.contiguous()?;
    let wc = w.contiguous()?;
    let bc = bias.map(Tensor::contiguous).transpose()?;
    let mut shape = vec![batch, o];
    shape.extend(&out_sp);
    let out = pass_forward(op, &g, &x, &wc, bc.as_ref(), &shape)?;
    let mut inputs = vec![&x, &wc];
    inputs.extend(bc.iter());
    let wants: Vec<bool> = inputs.iter().map(|t| t.requires_grad_flag()).collect();
    let (xshape, wshape) = (x.shape().to_vec(), wc.shape().to_vec());
    Ok(record(op, &inputs, out, vec![x.clone(), wc.clone()], move |s, gr| {
        let dy = gr[0].as_ref().expect("gradient").contiguous_untracked(op)?;
        let (x, w) = (&s[0], &s[1]);
        let dx = wants[0].then(|| pass_adjoint(op, &g, &dy, w, None, &xshape)).transpose()?;
        let dw = wants[1].then(|| pass_weight(op, &g, x, &dy, &wshape)).transpose()?;
        let mut grads = vec![dx, dw];
        if wants.len() == 3 {
            grads.push(wants[2].then(|| bias_grad(op, &dy, o)).transpose()?);
        }
        Ok(grads)
    }))
}

impl Tensor {
    /// 1-d convolution of `[B, C, L]` with weight `[O, C, k]` and optional
    /// bias `[O]` (PyTorch's `conv1d`, groups = 1): output
    /// `[B, O, ⌊(L + 2p − d(k−1) − 1)/s⌋ + 1]`.
    pub fn conv1d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        padding: usize,
        dilation: usize,
    ) -> Result<Tensor> {
        conv_nd("conv1d", self, weight, bias, &[stride], &[padding], &[dilation])
    }

    /// 2-d convolution of `[B, C, H, W]` with weight `[O, C, kh, kw]` and
    /// optional bias `[O]` (PyTorch's `conv2d`, groups = 1); settings per
    /// dimension (h, w).
    pub fn conv2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
    ) -> Result<Tensor> {
        conv_nd("conv2d", self, weight, bias, &stride, &padding, &dilation)
    }

    /// 3-d convolution of `[B, C, D, H, W]` with weight `[O, C, kd, kh, kw]`
    /// and optional bias `[O]` (PyTorch's `conv3d`, groups = 1); settings per
    /// dimension (d, h, w).
    pub fn conv3d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: [usize; 3],
        padding: [usize; 3],
        dilation: [usize; 3],
    ) -> Result<Tensor> {
        conv_nd("conv3d", self, weight, bias, &stride, &padding, &dilation)
    }

    /// Transposed 2-d convolution of `[B, C_in, H, W]` with weight
    /// `[C_in, C_out, kh, kw]` and optional bias `[C_out]` (PyTorch's
    /// `conv_transpose2d`, groups = 1): output `[B, C_out, H', W']` with
    /// `H' = (H − 1)s − 2p + d(kh − 1) + output_padding + 1`.
    /// `output_padding` must be smaller than the stride or the dilation.
    pub fn conv_transpose2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: [usize; 2],
        padding: [usize; 2],
        output_padding: [usize; 2],
        dilation: [usize; 2],
    ) -> Result<Tensor> {
        const OP: &str = "conv_transpose2d";
        let (x, w) = (self, weight);
        if x.rank() != 4 || w.rank() != 4 {
            return Err(Error::shape(
                OP,
                format!(
                    "input {:?} and weight {:?}: need input [B, C_in, H, W] and weight [C_in, C_out, kh, kw]",
                    x.shape(),
                    w.shape()
                ),
            ));
        }
        if w.dim(0) != x.dim(1) {
            return Err(Error::shape(
                OP,
                format!(
                    "weight {:?} takes {} input channels (dim 0 of [C_in, C_out, kh, kw]) but input {:?} has {}; only groups = 1 is supported",
                    w.shape(),
                    w.dim(0),
                    x.shape(),
                    x.dim(1)
                ),
            ));
        }
        check_common(OP, x, w, bias, w.dim(1), &stride, &dilation)?;
        let mut out_sp = [0usize; 2];
        for d in 0..2 {
            let (op_, s, dl) = (output_padding[d], stride[d], dilation[d]);
            if op_ >= s && op_ >= dl {
                return Err(Error::invalid(
                    OP,
                    format!("output_padding {output_padding:?} must be smaller than the stride {stride:?} or the dilation {dilation:?} in each dimension"),
                ));
            }
            let len = x.shape()[2 + d];
            let full = if len == 0 { 0 } else { (len - 1) * s + dl * (w.shape()[2 + d] - 1) + op_ + 1 };
            if full <= 2 * padding[d] {
                return Err(Error::shape(
                    OP,
                    format!(
                        "input {:?} with weight {:?}, stride {stride:?}, padding {padding:?}: output dim {d} would be empty; pad less",
                        x.shape(),
                        w.shape()
                    ),
                ));
            }
            out_sp[d] = full - 2 * padding[d];
        }
        let (batch, cin, cout) = (x.dim(0), x.dim(1), w.dim(1));
        let g = Geom {
            c: cout,
            big: [1, out_sp[0], out_sp[1]],
            o: cin,
            small: [1, x.dim(2), x.dim(3)],
            k: [1, w.dim(2), w.dim(3)],
            stride: [1, stride[0], stride[1]],
            pad: [0, padding[0], padding[1]],
            dil: [1, dilation[0], dilation[1]],
        };
        let x = x.contiguous()?;
        let wc = w.contiguous()?;
        let bc = bias.map(Tensor::contiguous).transpose()?;
        let shape = [batch, cout, out_sp[0], out_sp[1]];
        let out = pass_adjoint(OP, &g, &x, &wc, bc.as_ref(), &shape)?;
        let mut inputs = vec![&x, &wc];
        inputs.extend(bc.iter());
        let wants: Vec<bool> = inputs.iter().map(|t| t.requires_grad_flag()).collect();
        let (xshape, wshape) = (x.shape().to_vec(), wc.shape().to_vec());
        Ok(record(OP, &inputs, out, vec![x.clone(), wc.clone()], move |s, gr| {
            let dy = gr[0].as_ref().expect("gradient").contiguous_untracked(OP)?;
            let (x, w) = (&s[0], &s[1]);
            let dx = wants[0].then(|| pass_forward(OP, &g, &dy, w, None, &xshape)).transpose()?;
            let dw = wants[1].then(|| pass_weight(OP, &g, &dy, x, &wshape)).transpose()?;
            let mut grads = vec![dx, dw];
            if wants.len() == 3 {
                grads.push(wants[2].then(|| bias_grad(OP, &dy, cout)).transpose()?);
            }
            Ok(grads)
        }))
    }
}
