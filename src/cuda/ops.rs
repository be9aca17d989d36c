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
