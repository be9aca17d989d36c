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
    g.launch(&k::conv_tile_in(w.dtype(), gm.o, kd, k::Mat { ptr: w.device_ptr(), ld: kd }, k::Mat { ptr: wbuf, ld: kd })?)?;
    Ok(wbuf)
}

/// `small = W·col(big) (+ bias)` for every sample (cpu::conv::forward).
pub fn conv_forward(gm: &Geom, big: &Tensor, w: &Tensor, bias: Option<&Tensor>, small: &Tensor, c: &ConvWs) -> Result<()> {
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
pub fn conv_adjoint(gm: &Geom, small: &Tensor, w: &Tensor, bias: Option<&Tensor>, big: &Tensor, c: &ConvWs) -> Result<()> {
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
                gemm_f32(&g, o, q, kd, f32_op(f32_at(s, j0), ls, 1), f32_op(f32_at(col, j0), 1, n), acc, kd, true, c.gemm)?;
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
