//! The CUDA backend's side of the ops: what `src/ops/*.rs` calls when its
//! tensors live on a GPU. Each function takes the op's tensors (outputs
//! already allocated by the op, from the arena, exactly as on the CPU),
//! builds the launches of `cuda::kernels` and queues them on the tensors'
//! GPU. Workspaces come from the same arena, tagged Workspace, so the
//! planner counts them: every such rule has a `*_workspace` function the
//! op calls on every device (meta included).

use super::blas::{Gemm, Operand, WORKSPACE};
use super::kernels::{self as k, BinaryOp, Strided, UnaryOp};
use super::Gpu;
use crate::alloc::Tag;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// The GPU of an op's tensors (all on one arena, which the ops check).
pub fn gpu(op: &'static str, t: &Tensor) -> Result<Gpu> {
    t.gpu().ok_or_else(|| Error::device(op, "not a CUDA tensor"))
}

fn strided<'a>(t: &Tensor, strides: &'a [usize]) -> Strided<'a> {
    Strided { ptr: t.device_ptr(), strides }
}

/// A Workspace block of `bytes` on `like`'s arena.
pub fn workspace(op: &'static str, like: &Tensor, bytes: usize) -> Result<Tensor> {
    Tensor::empty(like.arena(), &[bytes.div_ceil(4)], DType::F32, Tag::Workspace, op)
}

/// `out` (dense) = `src` read through its strides.
pub fn copy_strided(src: &Tensor, out: &Tensor) -> Result<()> {
    let g = gpu("copy", src)?;
    let l = k::copy_strided(src.dtype().size(), src.shape(), src.strides(), src.device_ptr(), out.device_ptr())?;
    g.launch(&l)
}

/// `dst` (a view, any strides) = `src` (any strides), same shape and dtype.
pub fn copy_into(src: &Tensor, dst: &Tensor) -> Result<()> {
    let g = gpu("copy", src)?;
    let w = src.dtype().size();
    g.launch(&k::copy_strided_to(w, src.shape(), src.strides(), src.device_ptr(), dst.strides(), dst.device_ptr())?)
}

/// `out = a op b` over `out`'s shape, `a` and `b` broadcast (strides given).
pub fn binary(op: BinaryOp, a: &Tensor, sa: &[usize], b: &Tensor, sb: &[usize], out: &Tensor) -> Result<()> {
    let l = k::binary(op, out.dtype(), out.shape(), strided(a, sa), strided(b, sb), out.device_ptr())?;
    gpu("binary", out)?.launch(&l)
}

pub fn unary(op: UnaryOp, x: &Tensor, out: &Tensor) -> Result<()> {
    let l = k::unary(op, x.dtype(), x.device_ptr(), out.device_ptr(), x.numel())?;
    gpu("unary", x)?.launch(&l)
}

/// `dx = op'(v)·g`, `v` the input or output the op saved.
pub fn unary_grad(op: UnaryOp, v: &Tensor, g: &Tensor, dx: &Tensor) -> Result<()> {
    let l = k::unary_grad(op, v.dtype(), v.device_ptr(), g.device_ptr(), dx.device_ptr(), v.numel())?;
    gpu("unary", v)?.launch(&l)
}

/// `out = a·x + b`.
pub fn affine(x: &Tensor, out: &Tensor, a: f32, b: f32) -> Result<()> {
    let l = k::affine(x.dtype(), x.device_ptr(), out.device_ptr(), x.numel(), a, b)?;
    gpu("affine", x)?.launch(&l)
}

/// `out = x` in another float dtype (both dense).
pub fn cast(x: &Tensor, out: &Tensor) -> Result<()> {
    let g = gpu("to_dtype", x)?;
    if x.dtype() == out.dtype() {
        return g.copy(out.device_ptr(), x.device_ptr(), x.nbytes());
    }
    g.launch(&k::cast(x.dtype(), out.dtype(), x.device_ptr(), out.device_ptr(), x.numel())?)
}

/// `x *= s` in place (dense).
pub fn scale(x: &Tensor, s: f32) -> Result<()> {
    gpu("scale", x)?.launch(&k::scale(x.dtype(), x.device_ptr(), x.numel(), s)?)
}

/// `acc += x` in place, both dense and of one dtype.
pub fn add_into(acc: &Tensor, x: &Tensor) -> Result<()> {
    let s = crate::tensor::contiguous_strides(acc.shape());
    binary(BinaryOp::Add, acc, &s, x, &s, acc)
}

/// `out[r] = scale · Σ_c x[r, c]` over a dense `[rows, cols]` view of `x`.
pub fn sum_last(x: &Tensor, out: &Tensor, rows: usize, cols: usize, scale: f32) -> Result<()> {
    let l = k::sum_last(x.dtype(), x.device_ptr(), out.device_ptr(), rows, cols, scale)?;
    gpu("sum", x)?.launch(&l)
}

/// Softmax or log-softmax of the rows of dense `[rows, cols]`.
pub fn softmax(log: bool, x: &Tensor, out: &Tensor, rows: usize, cols: usize) -> Result<()> {
    let l = k::softmax(log, x.dtype(), x.device_ptr(), out.device_ptr(), rows, cols)?;
    gpu("softmax", x)?.launch(&l)
}

pub fn softmax_grad(log: bool, y: &Tensor, dy: &Tensor, dx: &Tensor, rows: usize, cols: usize) -> Result<()> {
    let l = k::softmax_grad(log, y.dtype(), y.device_ptr(), dy.device_ptr(), dx.device_ptr(), rows, cols)?;
    gpu("softmax", y)?.launch(&l)
}

/// One matrix operand for cuBLAS: the last two dims' strides, and the batch
/// stride of a rank-3 view whose batch is one stride apart (or broadcast).
fn operand(t: &Tensor) -> Option<Operand> {
    let r = t.rank();
    let (rs, cs) = (t.strides()[r - 2], t.strides()[r - 1]);
    let (rows, cols) = (t.shape()[r - 2], t.shape()[r - 1]);
    let dense_rows = (cs == 1 || cols <= 1) && (rs >= cols || rows <= 1);
    let dense_cols = (rs == 1 || rows <= 1) && (cs >= rows || cols <= 1);
    if !(dense_rows || dense_cols) {
        return None;
    }
    // Every batch dim must step by one stride: collapse them to one.
    let mut batch_stride = 0usize;
    let mut expect: Option<usize> = None;
    for d in (0..r - 2).rev() {
        let (n, s) = (t.shape()[d], t.strides()[d]);
        if n == 1 {
            continue;
        }
        match expect {
            None => {
                batch_stride = s;
                expect = Some(s * n);
            }
            // One stride apart, or broadcast throughout (all strides 0).
            Some(e) if s == e && (s != 0 || batch_stride == 0) => expect = Some(s * n),
            _ => return None,
        }
    }
    Some(Operand { ptr: t.device_ptr(), rs, cs, batch_stride })
}

/// Whether cuBLAS can read `t` (rank ≥ 2) in place as a batched operand.
pub fn is_operand(t: &Tensor) -> bool {
    operand(t).is_some()
}

/// cuBLAS scratch for one product, from the arena (every device asks for it
/// when the product runs on a GPU, so the plan sees it).
pub fn gemm_workspace(like: &Tensor) -> Result<Tensor> {
    workspace("matmul", like, WORKSPACE)
}

/// `out[b] = a[b]·b[b]` for operands with identical (possibly broadcast,
/// stride 0) batch dims that cuBLAS reads in place ([`is_operand`]); `out`
/// dense `[.., m, n]`.
pub fn matmul(a: &Tensor, b: &Tensor, out: &Tensor, ws: &Tensor) -> Result<()> {
    let r = a.rank();
    let (m, kk, n) = (a.shape()[r - 2], a.shape()[r - 1], b.shape()[r - 1]);
    let batch: usize = out.shape()[..r - 2].iter().product();
    let not_operand = |t: &Tensor| {
        Error::cuda(
            "matmul",
            format!("{:?} with strides {:?}: make it dense first (see is_operand)", t.shape(), t.strides()),
        )
    };
    let oa = operand(a).ok_or_else(|| not_operand(a))?;
    let ob = operand(b).ok_or_else(|| not_operand(b))?;
    let g = Gemm {
        dtype: a.dtype(),
        m,
        n,
        k: kk,
        batch,
        a: oa,
        b: ob,
        c: out.device_ptr(),
        c_rs: n,
        c_batch_stride: m * n,
        accumulate: false,
    };
    gpu("matmul", a)?.gemm(&g, (ws.device_ptr(), ws.nbytes()))
}

// ---- pooling ----------------------------------------------------------------------

use crate::cpu::conv::{Geom, QUANTUM};
use crate::cpu::pool::PoolGeom;

/// Max pool of dense `x` `[planes, big]` into `out` and the i32 argmax `arg`.
pub fn max_pool(g: &PoolGeom, x: &Tensor, out: &Tensor, arg: &Tensor) -> Result<()> {
    let planes = x.numel() / g.big_len().max(1);
    let l = k::max_pool(x.dtype(), g, planes, x.device_ptr(), out.device_ptr(), arg.device_ptr())?;
    gpu("max_pool", x)?.launch(&l)
}

pub fn max_pool_grad(g: &PoolGeom, dy: &Tensor, arg: &Tensor, dx: &Tensor) -> Result<()> {
    let planes = dx.numel() / g.big_len().max(1);
    let l = k::max_pool_grad(dy.dtype(), g, planes, dy.device_ptr(), arg.device_ptr(), dx.device_ptr())?;
    gpu("max_pool", dy)?.launch(&l)
}

pub fn avg_pool(g: &PoolGeom, x: &Tensor, out: &Tensor) -> Result<()> {
    let planes = x.numel() / g.big_len().max(1);
    let l = k::avg_pool(x.dtype(), g, planes, x.device_ptr(), out.device_ptr())?;
    gpu("avg_pool", x)?.launch(&l)
}

pub fn avg_pool_grad(g: &PoolGeom, dy: &Tensor, dx: &Tensor) -> Result<()> {
    let planes = dx.numel() / g.big_len().max(1);
    let l = k::avg_pool_grad(dy.dtype(), g, planes, dy.device_ptr(), dx.device_ptr())?;
    gpu("avg_pool", dy)?.launch(&l)
}

// ---- convolution ------------------------------------------------------------------
//
// The three passes of src/cpu/conv.rs with the same workspace layout (so the
// same bytes), the tiles built by the tile kernels and the products by
// cuBLAS in f32, as tests/cuda_kernels_seq.rs chains them.

/// A conv pass's tensors: the f32 conv workspace and the cuBLAS scratch.
pub struct ConvWs<'a> {
    pub tile: usize,
    pub ws: &'a Tensor,
    pub gemm: &'a Tensor,
}

/// f32 matrix operand at `ptr`: (row stride, column stride) in elements.
fn f32_op(ptr: u64, rs: usize, cs: usize) -> Operand {
    Operand { ptr, rs, cs, batch_stride: 0 }
}

/// One f32 product `C (+)= A·B` with dense-row `C` (`c_rs` apart).
#[allow(clippy::too_many_arguments)]
fn gemm_f32(
    g: &Gpu,
    m: usize,
    kk: usize,
    n: usize,
    a: Operand,
    b: Operand,
    c: u64,
    c_rs: usize,
    accumulate: bool,
    ws: &Tensor,
) -> Result<()> {
    let p = Gemm { dtype: DType::F32, m, n, k: kk, batch: 1, a, b, c, c_rs, c_batch_stride: m * c_rs, accumulate };
    g.gemm(&p, (ws.device_ptr(), ws.nbytes()))
}

/// Byte address `elems` f32 past `p`.
fn f32_at(p: u64, elems: usize) -> u64 {
    p + 4 * elems as u64
}

/// The weight `[O, K]` as an f32 operand: in place for f32, else widened
/// into `wbuf`.
fn conv_weight(g: &Gpu, gm: &Geom, w: &Tensor, wbuf: u64) -> Result<u64> {
    let kd = gm.kdim();
    if w.dtype() == DType::F32 {
        return Ok(w.device_ptr());
    }
    g.launch(&k::conv_tile_in(
        w.dtype(),
        gm.o,
        kd,
        k::Mat { ptr: w.device_ptr(), ld: kd },
        k::Mat { ptr: wbuf, ld: kd },
    )?)?;
    Ok(wbuf)
}

/// `small = W·col(big) (+ bias)` for every sample (cpu::conv::forward).
pub fn conv_forward(
    gm: &Geom,
    big: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    small: &Tensor,
    c: &ConvWs,
) -> Result<()> {
    let g = gpu("conv", big)?;
    let dt = big.dtype();
    let (h, kd, o, p, blen) = (usize::from(dt != DType::F32), gm.kdim(), gm.o, gm.small_len(), gm.big_len());
    let (ts, tile) = (dt.size() as u64, c.tile);
    let wf = c.ws.device_ptr();
    let col = f32_at(wf, h * o * kd);
    let obuf = f32_at(col, kd * tile);
    let wmat = conv_weight(&g, gm, w, wf)?;
    let batch = small.shape()[0];
    for b in 0..batch {
        let x = big.device_ptr() + ts * (b * gm.c * blen) as u64;
        for p0 in (0..p).step_by(tile) {
            let n = tile.min(p - p0);
            g.launch(&k::im2col(dt, gm, x, p0, n, col)?)?;
            let yt = small.device_ptr() + ts * (b * o * p + p0) as u64;
            // f32: the product lands in the output and the bias is added there.
            let (dst, ld) = if h == 1 { (obuf, n) } else { (yt, p) };
            gemm_f32(&g, o, kd, n, f32_op(wmat, kd, 1), f32_op(col, n, 1), dst, ld, false, c.gemm)?;
            if h == 1 || bias.is_some() {
                let src = k::Mat { ptr: dst, ld };
                g.launch(&k::conv_tile_out(dt, o, n, src, k::Mat { ptr: yt, ld: p }, bias.map(|b| b.device_ptr()))?)?;
            }
        }
    }
    Ok(())
}

/// `big = col2im(Wᵀ·small) (+ bias)` for every sample (cpu::conv::adjoint).
pub fn conv_adjoint(
    gm: &Geom,
    small: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    big: &Tensor,
    c: &ConvWs,
) -> Result<()> {
    let g = gpu("conv", small)?;
    let dt = small.dtype();
    let (h, kd, o, p, blen) = (usize::from(dt != DType::F32), gm.kdim(), gm.o, gm.small_len(), gm.big_len());
    let (ts, tile) = (dt.size() as u64, c.tile);
    let wf = c.ws.device_ptr();
    let abuf = f32_at(wf, h * o * kd);
    let dcol = f32_at(abuf, h * gm.c * blen);
    let sbuf = f32_at(dcol, kd * tile);
    let wmat = conv_weight(&g, gm, w, wf)?;
    let batch = big.shape()[0];
    for b in 0..batch {
        let dxs = big.device_ptr() + ts * (b * gm.c * blen) as u64;
        let acc = if h == 1 { abuf } else { dxs };
        g.zero(acc, 4 * gm.c * blen)?;
        for p0 in (0..p).step_by(tile) {
            let n = tile.min(p - p0);
            let st = small.device_ptr() + ts * (b * o * p + p0) as u64;
            let s = if h == 1 {
                g.launch(&k::conv_tile_in(dt, o, n, k::Mat { ptr: st, ld: p }, k::Mat { ptr: sbuf, ld: n })?)?;
                f32_op(sbuf, n, 1)
            } else {
                f32_op(st, p, 1)
            };
            gemm_f32(&g, kd, o, n, f32_op(wmat, 1, kd), s, dcol, n, false, c.gemm)?;
            g.launch(&k::col2im(gm, dcol, p0, n, acc)?)?;
        }
        if h == 1 || bias.is_some() {
            let m = |p| k::Mat { ptr: p, ld: blen };
            g.launch(&k::conv_tile_out(dt, gm.c, blen, m(acc), m(dxs), bias.map(|b| b.device_ptr()))?)?;
        }
    }
    Ok(())
}

/// `dw = Σ small·col(big)ᵀ`, one product per QUANTUM chunk added in order
/// (cpu::conv::weight_grad's reduction grid).
pub fn conv_weight_grad(gm: &Geom, big: &Tensor, small: &Tensor, dw: &Tensor, c: &ConvWs) -> Result<()> {
    let g = gpu("conv", big)?;
    let dt = big.dtype();
    let (h, kd, o, p, blen) = (usize::from(dt != DType::F32), gm.kdim(), gm.o, gm.small_len(), gm.big_len());
    let (ts, tile) = (dt.size() as u64, c.tile);
    let wacc = c.ws.device_ptr();
    let col = f32_at(wacc, h * o * kd);
    let sbuf = f32_at(col, kd * tile);
    let acc = if h == 1 { wacc } else { dw.device_ptr() };
    g.zero(acc, 4 * o * kd)?;
    for b in 0..big.shape()[0] {
        let x = big.device_ptr() + ts * (b * gm.c * blen) as u64;
        for p0 in (0..p).step_by(tile) {
            let n = tile.min(p - p0);
            g.launch(&k::im2col(dt, gm, x, p0, n, col)?)?;
            let st = small.device_ptr() + ts * (b * o * p + p0) as u64;
            let (s, ls) = if h == 1 {
                g.launch(&k::conv_tile_in(dt, o, n, k::Mat { ptr: st, ld: p }, k::Mat { ptr: sbuf, ld: n })?)?;
                (sbuf, n)
            } else {
                (st, p)
            };
            for j0 in (0..n).step_by(QUANTUM) {
                let q = QUANTUM.min(n - j0);
                gemm_f32(
                    &g,
                    o,
                    q,
                    kd,
                    f32_op(f32_at(s, j0), ls, 1),
                    f32_op(f32_at(col, j0), 1, n),
                    acc,
                    kd,
                    true,
                    c.gemm,
                )?;
            }
        }
    }
    if h == 1 {
        let m = |p| k::Mat { ptr: p, ld: kd };
        g.launch(&k::conv_tile_out(dt, o, kd, m(wacc), m(dw.device_ptr()), None)?)?;
    }
    Ok(())
}

/// `out[c] = Σ_b Σ_s dy[b, c, s]` of dense `dy`.
pub fn conv_bias_grad(dy: &Tensor, out: &Tensor, ch: usize) -> Result<()> {
    let b = dy.shape()[0];
    let s = dy.numel() / (b * ch).max(1);
    gpu("conv", dy)?.launch(&k::conv_bias_grad(dy.dtype(), dy.device_ptr(), out.device_ptr(), b, ch, s)?)
}

// ---- CTC loss ---------------------------------------------------------------------

/// A CTC loss's device buffers: the op's tensors (dense; lengths i32 `[B]`).
pub struct Ctc<'a> {
    pub shape: k::CtcShape,
    pub log_probs: &'a Tensor,
    pub targets: &'a Tensor,
    pub input_lengths: &'a Tensor,
    pub target_lengths: &'a Tensor,
    pub nll: &'a Tensor,
}

impl Ctc<'_> {
    fn buffers(&self) -> k::CtcBuffers {
        k::CtcBuffers {
            log_probs: self.log_probs.device_ptr(),
            targets: self.targets.device_ptr(),
            input_lengths: self.input_lengths.device_ptr(),
            target_lengths: self.target_lengths.device_ptr(),
            nll: self.nll.device_ptr(),
        }
    }
}

/// Each sample's nll, then the mean loss into `loss` `[]`; `ws` holds
/// `ctc_workspace(..).forward_f32` f32.
pub fn ctc_forward(c: &Ctc, zero_infinity: bool, ws: &Tensor, loss: &Tensor) -> Result<()> {
    let g = gpu("ctc_loss", c.log_probs)?;
    let dt = c.log_probs.dtype();
    if c.shape.batch == 0 {
        return g.zero(loss.device_ptr(), loss.nbytes()); // the CPU's mean of nothing
    }
    g.launch(&k::ctc_forward(dt, &c.shape, &c.buffers(), zero_infinity, ws.device_ptr())?)?;
    g.launch(&k::ctc_mean(dt, c.shape.batch, c.nll.device_ptr(), c.target_lengths.device_ptr(), loss.device_ptr())?)
}

/// The gradient of the loss with respect to log_probs, scaled by the
/// device scalar `grad_loss`.
pub fn ctc_backward(c: &Ctc, grad_loss: &Tensor, grad: &Tensor, ws: &Tensor, chain: &Tensor) -> Result<()> {
    let g = gpu("ctc_loss", c.log_probs)?;
    if c.shape.batch == 0 {
        return Ok(());
    }
    let l = k::ctc_backward(
        c.log_probs.dtype(),
        &c.shape,
        &c.buffers(),
        grad_loss.device_ptr(),
        grad.device_ptr(),
        ws.device_ptr(),
        chain.device_ptr(),
    )?;
    g.launch(&l)
}

// ---- the fused LSTM layer -----------------------------------------------------------
//
// src/cpu/lstm.rs's seq_forward / seq_backward with the gate products on
// cuBLAS in the storage dtype (f32 accumulation) and the cell on
// lstm_cell / lstm_cell_grad. The weight and bias gradients accumulate over
// the steps in f32, as on the CPU.

use crate::cpu::lstm::Dims;

/// One layer's dense tensors: x `[B, T, I]`, weights, biases, initial state.
pub struct LstmSeq<'a> {
    pub d: Dims,
    pub reverse: bool,
    pub x: &'a Tensor,
    pub w_ih: &'a Tensor,
    pub w_hh: &'a Tensor,
    pub b_ih: Option<&'a Tensor>,
    pub b_hh: Option<&'a Tensor>,
    pub state: Option<(&'a Tensor, &'a Tensor)>,
}

/// Where the backward writes (None = not wanted); `bias` serves both biases.
pub struct LstmGrads<'a> {
    pub dx: Option<&'a Tensor>,
    pub w_ih: Option<&'a Tensor>,
    pub w_hh: Option<&'a Tensor>,
    pub bias: Option<&'a Tensor>,
    pub h0: Option<&'a Tensor>,
    pub c0: Option<&'a Tensor>,
}

/// Workspace of the CUDA forward in elements of the storage dtype: a zero
/// state `[B, H]` when there is no initial one (the cell reads a c).
pub fn lstm_forward_workspace(d: &Dims, has_state: bool) -> usize {
    if has_state {
        0
    } else {
        d.batch * d.hidden
    }
}

/// Workspace of the CUDA backward: (f32 elements, storage-dtype elements).
/// f32: dW_ih, dW_hh, db accumulators, a ones row `[B]` (db as a product),
/// and for f16/bf16 one step's gate gradients, input and previous h
/// widened. Storage dtype: the gate gradients, dh, dc and a zero state.
pub fn lstm_backward_workspace(d: &Dims, dtype: DType) -> (usize, usize) {
    let (b, i, h) = (d.batch, d.input, d.hidden);
    let half = usize::from(dtype != DType::F32);
    (4 * h * (i + h) + 4 * h + b + half * (4 * b * h + b * i + b * h), 4 * b * h + 3 * b * h)
}

/// A product of storage-dtype operands into storage-dtype `C`.
#[allow(clippy::too_many_arguments)]
fn gemm_dt(
    g: &Gpu,
    dtype: DType,
    (m, kk, n): (usize, usize, usize),
    a: Operand,
    b: Operand,
    c: u64,
    c_rs: usize,
    accumulate: bool,
    ws: &Tensor,
) -> Result<()> {
    let p = Gemm { dtype, m, n, k: kk, batch: 1, a, b, c, c_rs, c_batch_stride: m * c_rs, accumulate };
    g.gemm(&p, (ws.device_ptr(), ws.nbytes()))
}

/// Steps in processing order.
fn lstm_order(steps: usize, reverse: bool) -> Vec<usize> {
    (0..steps).map(|k| if reverse { steps - 1 - k } else { k }).collect()
}

/// Forward over all steps into gates `[T, B, 4H]`, hs and cs `[T, B, H]`;
/// `zeros` holds [`lstm_forward_workspace`] elements.
pub fn lstm_forward(
    l: &LstmSeq,
    gates: &Tensor,
    hs: &Tensor,
    cs: &Tensor,
    zeros: &Tensor,
    gemm: &Tensor,
) -> Result<()> {
    let g = gpu("lstm", l.x)?;
    let dt = l.x.dtype();
    let Dims { batch: bt, steps, input: i, hidden: h } = l.d;
    let (ts, g4) = (dt.size() as u64, 4 * h);
    if l.state.is_none() {
        g.zero(zeros.device_ptr(), zeros.nbytes())?;
    }
    let at = |t: &Tensor, elems: usize| t.device_ptr() + ts * elems as u64;
    let order = lstm_order(steps, l.reverse);
    for (kk, &t) in order.iter().enumerate() {
        let prev = kk.checked_sub(1).map(|k| order[k]);
        let h_prev = match (prev, l.state) {
            (Some(p), _) => Some(at(hs, p * bt * h)),
            (None, Some((h0, _))) => Some(h0.device_ptr()),
            (None, None) => None,
        };
        let c_prev = match (prev, l.state) {
            (Some(p), _) => at(cs, p * bt * h),
            (None, Some((_, c0))) => c0.device_ptr(),
            (None, None) => zeros.device_ptr(),
        };
        let gt = at(gates, t * bt * g4);
        let xt = Operand { ptr: at(l.x, t * i), rs: steps * i, cs: 1, batch_stride: 0 };
        let wi = Operand { ptr: l.w_ih.device_ptr(), rs: 1, cs: i, batch_stride: 0 };
        gemm_dt(&g, dt, (bt, i, g4), xt, wi, gt, g4, false, gemm)?;
        if let Some(hp) = h_prev {
            let hp = Operand { ptr: hp, rs: h, cs: 1, batch_stride: 0 };
            let wh = Operand { ptr: l.w_hh.device_ptr(), rs: 1, cs: h, batch_stride: 0 };
            gemm_dt(&g, dt, (bt, h, g4), hp, wh, gt, g4, true, gemm)?;
        }
        let cell = k::LstmCell {
            gates: gt,
            gh: None,
            b_ih: l.b_ih.map(Tensor::device_ptr),
            b_hh: l.b_hh.map(Tensor::device_ptr),
            c: c_prev,
            h_out: at(hs, t * bt * h),
            c_out: at(cs, t * bt * h),
        };
        g.launch(&k::lstm_cell(dt, bt, h, &cell)?)?;
    }
    Ok(())
}

/// Saved forward results and incoming gradients of the backward (dense).
pub struct LstmSaved<'a> {
    pub gates: &'a Tensor,
    pub hs: &'a Tensor,
    pub cs: &'a Tensor,
    pub dy: Option<&'a Tensor>,
    pub dh_n: Option<&'a Tensor>,
    pub dc_n: Option<&'a Tensor>,
}

/// Backward through the steps; `ws32` and `wsdt` hold
/// [`lstm_backward_workspace`] elements.
pub fn lstm_backward(
    l: &LstmSeq,
    s: &LstmSaved,
    out: &LstmGrads,
    ws32: &Tensor,
    wsdt: &Tensor,
    gemm: &Tensor,
) -> Result<()> {
    let g = gpu("lstm", l.x)?;
    let dt = l.x.dtype();
    let half = dt != DType::F32;
    let Dims { batch: bt, steps, input: i, hidden: h } = l.d;
    let (ts, g4) = (dt.size() as u64, 4 * h);
    let at = |t: &Tensor, elems: usize| t.device_ptr() + ts * elems as u64;
    let dta = |p: u64, elems: usize| p + ts * elems as u64;
    // f32 block.
    let dwi = ws32.device_ptr();
    let dwh = f32_at(dwi, g4 * i);
    let db = f32_at(dwh, g4 * h);
    let ones = f32_at(db, g4);
    let dg32 = f32_at(ones, bt);
    let x32 = f32_at(dg32, bt * g4);
    let hp32 = f32_at(x32, bt * i);
    g.zero(dwi, 4 * (g4 * (i + h) + g4 + bt))?;
    g.launch(&k::affine(DType::F32, ones, ones, bt, 0.0, 1.0)?)?;
    // Storage-dtype block.
    let dg = wsdt.device_ptr();
    let dh = dta(dg, bt * g4);
    let dc = dta(dh, bt * h);
    let zeros = dta(dc, bt * h);
    let state_bytes = bt * h * dt.size();
    for (grad, to) in [(s.dh_n, dh), (s.dc_n, dc), (None, zeros)] {
        match grad {
            Some(v) => g.copy(to, v.device_ptr(), state_bytes)?,
            None => g.zero(to, state_bytes)?,
        }
    }
    let order = lstm_order(steps, l.reverse);
    let dense = |ptr: u64, rs: usize| Operand { ptr, rs, cs: 1, batch_stride: 0 };
    for (kk, &t) in order.iter().enumerate().rev() {
        let prev = kk.checked_sub(1).map(|k| order[k]);
        let h_prev = match (prev, l.state) {
            (Some(p), _) => Some(at(s.hs, p * bt * h)),
            (None, Some((h0, _))) => Some(h0.device_ptr()),
            (None, None) => None,
        };
        let c_prev = match (prev, l.state) {
            (Some(p), _) => at(s.cs, p * bt * h),
            (None, Some((_, c0))) => c0.device_ptr(),
            (None, None) => zeros,
        };
        if let Some(dy) = s.dy {
            let (sd, sy) = ([h, 1], [steps * h, 1]);
            let l = k::binary(
                BinaryOp::Add,
                dt,
                &[bt, h],
                Strided { ptr: dh, strides: &sd },
                Strided { ptr: at(dy, t * h), strides: &sy },
                dh,
            )?;
            g.launch(&l)?;
        }
        // dc is read before it is rewritten, element by element: in place.
        let cell = k::LstmCellGrad {
            gates: at(s.gates, t * bt * g4),
            c: c_prev,
            dh: Some(dh),
            dc: Some(dc),
            dgates: dg,
            dc_prev: Some(dc),
        };
        g.launch(&k::lstm_cell_grad(dt, bt, h, &cell)?)?;
        // f32 operands of the weight-gradient products.
        let widen = |src: u64, ld: usize, cols: usize, dst: u64| -> Result<(u64, usize)> {
            if !half {
                return Ok((src, ld));
            }
            g.launch(&k::conv_tile_in(dt, bt, cols, k::Mat { ptr: src, ld }, k::Mat { ptr: dst, ld: cols })?)?;
            Ok((dst, cols))
        };
        let (dgw, _) = widen(dg, g4, g4, dg32)?;
        let (xw, ldx) = widen(at(l.x, t * i), steps * i, i, x32)?;
        // dW_ih += dGᵀ·x_t, dW_hh += dGᵀ·h_prev, db += 1ᵀ·dG.
        let dgt = Operand { ptr: dgw, rs: 1, cs: g4, batch_stride: 0 };
        gemm_f32(&g, g4, bt, i, dgt, f32_op(xw, ldx, 1), dwi, i, true, gemm)?;
        if let Some(hp) = h_prev {
            let (hw, ldh) = widen(hp, h, h, hp32)?;
            gemm_f32(&g, g4, bt, h, dgt, f32_op(hw, ldh, 1), dwh, h, true, gemm)?;
        }
        gemm_f32(&g, 1, bt, g4, f32_op(ones, bt, 1), f32_op(dgw, g4, 1), db, g4, true, gemm)?;
        // dh_prev = dG·W_hh, dx_t = dG·W_ih.
        gemm_dt(&g, dt, (bt, g4, h), dense(dg, g4), dense(l.w_hh.device_ptr(), h), dh, h, false, gemm)?;
        if let Some(dx) = out.dx {
            gemm_dt(
                &g,
                dt,
                (bt, g4, i),
                dense(dg, g4),
                dense(l.w_ih.device_ptr(), i),
                at(dx, t * i),
                steps * i,
                false,
                gemm,
            )?;
        }
    }
    let store = |dst: Option<&Tensor>, src: u64, rows: usize, cols: usize| -> Result<()> {
        if let Some(dst) = dst {
            let m = |ptr| k::Mat { ptr, ld: cols };
            g.launch(&k::conv_tile_out(dt, rows, cols, m(src), m(dst.device_ptr()), None)?)?;
        }
        Ok(())
    };
    store(out.w_ih, dwi, g4, i)?;
    store(out.w_hh, dwh, g4, h)?;
    store(out.bias, db, 1, g4)?;
    for (dst, src) in [(out.h0, dh), (out.c0, dc)] {
        if let Some(dst) = dst {
            g.copy(dst.device_ptr(), src, state_bytes)?;
        }
    }
    Ok(())
}

// ---- training ops ------------------------------------------------------------

fn ptr_of(t: Option<&Tensor>) -> Option<u64> {
    t.map(Tensor::device_ptr)
}

/// Set a one-i32 flag to i32::MAX (the kernels lower it to the first bad index).
fn arm_flag(flag: &Tensor) -> Result<()> {
    gpu("flag", flag)?.upload(flag.device_ptr(), &i32::MAX.to_ne_bytes())
}

/// The flag's index, if a kernel lowered it (reading it waits for the GPU).
fn read_flag(flag: &Tensor) -> Result<Option<usize>> {
    let v = flag.to_vec::<i32>()?[0];
    Ok((v != i32::MAX).then_some(v as usize))
}

/// Layer norm over dense `[rows, cols]`; `mean`, `rstd` f32 `[rows]`.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm(
    x: &Tensor,
    w: Option<&Tensor>,
    b: Option<&Tensor>,
    eps: f32,
    out: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let io = k::LayerNormIo {
        x: x.device_ptr(),
        weight: ptr_of(w),
        bias: ptr_of(b),
        y: out.device_ptr(),
        mean: mean.device_ptr(),
        rstd: rstd.device_ptr(),
    };
    gpu("layer_norm", x)?.launch(&k::layer_norm(x.dtype(), rows, cols, eps, &io)?)
}

/// The gradients a layer norm backward writes (each absent when not wanted).
pub struct LayerNormGrads<'a> {
    pub dx: Option<&'a Tensor>,
    pub dw: Option<&'a Tensor>,
    pub db: Option<&'a Tensor>,
}

/// Layer norm backward; `ws` has `k::layer_norm_backward_workspace` bytes
/// when dweight or dbias is wanted.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward(
    x: &Tensor,
    dy: &Tensor,
    w: Option<&Tensor>,
    mean: &Tensor,
    rstd: &Tensor,
    grads: LayerNormGrads,
    ws: Option<&Tensor>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let io = k::LayerNormBackward {
        x: x.device_ptr(),
        dy: dy.device_ptr(),
        weight: ptr_of(w),
        mean: mean.device_ptr(),
        rstd: rstd.device_ptr(),
        dx: ptr_of(grads.dx),
        dweight: ptr_of(grads.dw),
        dbias: ptr_of(grads.db),
        workspace: ptr_of(ws).unwrap_or(0),
    };
    gpu("layer_norm", x)?.launch_all(&k::layer_norm_backward(x.dtype(), rows, cols, &io)?)
}

/// What a cross-entropy forward writes beside the loss: the row LSEs, the
/// count of rows not ignored (one i32, read by the backward), its row-loss
/// workspace and the bad-target flag (one i32).
pub struct CrossEntropyOut<'a> {
    pub loss: &'a Tensor,
    pub lse: &'a Tensor,
    pub count: &'a Tensor,
    pub ws: &'a Tensor,
    pub bad: &'a Tensor,
}

/// Mean cross-entropy of dense `[rows, cols]` logits; returns the first row
/// whose target is out of range and not ignored, if any.
pub fn cross_entropy(x: &Tensor, targets: &Tensor, labels: k::Labels, o: &CrossEntropyOut) -> Result<Option<usize>> {
    let (rows, cols) = (x.shape()[0], x.shape()[1]);
    arm_flag(o.bad)?;
    let io = k::CrossEntropyIo {
        logits: x.device_ptr(),
        targets: targets.device_ptr(),
        lse: o.lse.device_ptr(),
        loss: o.loss.device_ptr(),
        count: o.count.device_ptr(),
        workspace: o.ws.device_ptr(),
        bad: Some(o.bad.device_ptr()),
    };
    gpu("cross_entropy", x)?.launch_all(&k::cross_entropy(x.dtype(), rows, cols, labels, &io)?)?;
    read_flag(o.bad)
}

#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_backward(
    x: &Tensor,
    targets: &Tensor,
    lse: &Tensor,
    count: &Tensor,
    dloss: &Tensor,
    labels: k::Labels,
    dx: &Tensor,
) -> Result<()> {
    let (rows, cols) = (x.shape()[0], x.shape()[1]);
    let io = k::CrossEntropyBackward {
        logits: x.device_ptr(),
        targets: targets.device_ptr(),
        lse: lse.device_ptr(),
        count: count.device_ptr(),
        dloss: dloss.device_ptr(),
        dx: dx.device_ptr(),
    };
    gpu("cross_entropy", x)?.launch(&k::cross_entropy_backward(x.dtype(), rows, cols, labels, &io)?)
}

/// Rows of dense `[vocab, dim]` `w` for dense i32 `ids`; returns the first
/// position whose id is outside the table, if any (`bad`: one i32).
pub fn embedding(w: &Tensor, ids: &Tensor, out: &Tensor, bad: &Tensor) -> Result<Option<usize>> {
    let (v, d) = (w.shape()[0], w.shape()[1]);
    arm_flag(bad)?;
    let l = k::embedding(
        w.dtype(),
        w.device_ptr(),
        ids.device_ptr(),
        out.device_ptr(),
        Some(bad.device_ptr()),
        ids.numel(),
        v,
        d,
    )?;
    gpu("embedding", w)?.launch(&l)?;
    read_flag(bad)
}

/// `dw` (dense `[vocab, dim]`) from `dy` `[n, dim]`; `ws` has
/// `k::embedding_backward_workspace(n)` bytes.
pub fn embedding_backward(dy: &Tensor, ids: &Tensor, dw: &Tensor, ws: &Tensor) -> Result<()> {
    let (v, d) = (dw.shape()[0], dw.shape()[1]);
    let g = gpu("embedding", dy)?;
    if ids.numel() == 0 {
        return g.zero(dw.device_ptr(), dw.nbytes());
    }
    let ls = k::embedding_backward(
        dy.dtype(),
        dy.device_ptr(),
        ids.device_ptr(),
        dw.device_ptr(),
        ws.device_ptr(),
        ids.numel(),
        v,
        d,
    )?;
    g.launch_all(&ls)
}

/// Dropout of dense `x` into `out` with the CPU's mask for `seed`.
pub fn dropout(x: &Tensor, out: &Tensor, seed: u64, p: f32) -> Result<()> {
    let l = k::dropout(x.dtype(), x.device_ptr(), out.device_ptr(), x.numel(), seed, p)?;
    gpu("dropout", x)?.launch(&l)
}

/// Fused attention's operands: q `[B, H, Tq, D]`, k and v `[B, H, Tk, D]`
/// (dense rows, any other strides), the dense u8 key mask `[B, Tk]`.
pub struct AttentionIn<'a> {
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    pub key_padding: Option<&'a Tensor>,
    pub scale: f32,
    pub causal: bool,
}

impl AttentionIn<'_> {
    fn desc(&self) -> k::Attention<'_> {
        let (q, kk) = (self.q, self.k);
        k::Attention {
            batch: q.shape()[0],
            heads: q.shape()[1],
            tq: q.shape()[2],
            tk: kk.shape()[2],
            d: q.shape()[3],
            scale: self.scale,
            causal: self.causal,
            q: strided(q, q.strides()),
            k: strided(kk, kk.strides()),
            v: strided(self.v, self.v.strides()),
            key_padding: ptr_of(self.key_padding),
        }
    }
}

/// Forward: `out` `[B, H, Tq, D]` (dense rows), `lse` f32 `[B, H, Tq]`.
pub fn attention_forward(a: &AttentionIn, out: &Tensor, lse: &Tensor) -> Result<()> {
    let l = k::attention_forward(a.q.dtype(), &a.desc(), strided(out, out.strides()), lse.device_ptr())?;
    gpu("attention", a.q)?.launch(&l)
}

/// Backward from the forward's `o` and `lse` and the output gradient `go`
/// (dense rows); `dvec` is the f32 `[B, H, Tq]` workspace; gradients dense.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    a: &AttentionIn,
    o: &Tensor,
    go: &Tensor,
    lse: &Tensor,
    dvec: &Tensor,
    dq: Option<&Tensor>,
    dk: Option<&Tensor>,
    dv: Option<&Tensor>,
) -> Result<()> {
    let grads = k::AttentionGrads { dq: ptr_of(dq), dk: ptr_of(dk), dv: ptr_of(dv) };
    let ls = k::attention_backward(
        a.q.dtype(),
        &a.desc(),
        strided(o, o.strides()),
        strided(go, go.strides()),
        lse.device_ptr(),
        dvec.device_ptr(),
        grads,
    )?;
    gpu("attention", a.q)?.launch_all(&ls)
}
