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
