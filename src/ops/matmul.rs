//! Matrix products: `[.., M, K] @ [.., K, N]` with broadcast batch dims.
//! Transposed operands are strided views read in place. f16/bf16 operands
//! are widened to f32 one batch at a time in a Workspace block, so the
//! extra memory is bounded by one batch's matrices, never the whole tensor.

use super::{output, same_arena, same_dtype};
use crate::alloc::Tag;
use crate::autograd::record;
use crate::cpu::matmul::{gemm_f32, Layout};
use crate::cpu::row_offset;
use crate::cuda::ops as cuda;
use crate::error::{Error, Result};
use crate::tensor::{DType, Float, Tensor};
use crate::with_float;

impl Tensor {
    /// Matrix product over the last two dims, broadcasting batch dims.
    /// With a 2-D right operand (a weight), the batch is folded into M.
    pub fn matmul(&self, other: &Tensor) -> Result<Tensor> {
        let (a, b) = (self, other);
        if a.rank() < 2 || b.rank() < 2 || a.dim(-1) != b.dim(-2) {
            return Err(Error::shape(
                "matmul",
                format!(
                    "{:?} @ {:?}: need [.., M, K] @ [.., K, N] with equal K; reshape vectors to matrices",
                    a.shape(),
                    b.shape()
                ),
            ));
        }
        same_arena("matmul", &[a, b])?;
        same_dtype("matmul", a, b)?;
        super::float_only("matmul", a)?;
        if b.rank() == 2 && a.rank() > 2 {
            let k = a.dim(-1);
            let rows = a.numel() / k.max(1);
            let mut shape = a.shape().to_vec();
            *shape.last_mut().unwrap() = b.dim(-1);
            return bmm(&a.reshape(&[rows, k])?, b)?.reshape(&shape);
        }
        let batch = super::broadcast_shapes("matmul", &a.shape()[..a.rank() - 2], &b.shape()[..b.rank() - 2])?;
        let full = |t: &Tensor| {
            let mut s = batch.clone();
            s.extend_from_slice(&t.shape()[t.rank() - 2..]);
            s
        };
        let (ea, eb) = (a.expand(&full(a))?, b.expand(&full(b))?);
        bmm(&ea, &eb)
    }
}

/// Product of two operands with identical batch dims (possibly stride 0).
fn bmm(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let r = a.rank();
    let (m, k, n) = (a.shape()[r - 2], a.shape()[r - 1], b.shape()[r - 1]);
    let mut shape = a.shape()[..r - 2].to_vec();
    shape.extend([m, n]);
    let out = output("matmul", a, &shape, a.dtype())?;
    if a.arena().target() == crate::alloc::Target::Cuda {
        // cuBLAS reads a transposed view in place; anything else is made
        // dense first — decided from strides, so the meta device copies too.
        let dense = |t: &Tensor| if cuda::is_operand(t) { Ok(t.clone()) } else { t.contiguous_untracked("matmul") };
        let (ca, cb) = (dense(a)?, dense(b)?);
        let ws = cuda::gemm_workspace(&ca)?;
        if out.is_cuda() {
            cuda::matmul(&ca, &cb, &out, &ws)?;
        }
    } else if a.dtype() != DType::F32 {
        // Declared up front so the planner sees the same bytes (meta included).
        let ws = Tensor::empty(a.arena(), &[m * k + k * n + m * n], DType::F32, Tag::Workspace, "matmul")?;
        if !out.is_meta() {
            with_float!("matmul", a.dtype(), |T| run::<T>(a, b, &out, m, k, n, Some(ws.data_mut::<f32>()?))?);
        }
    } else if !out.is_meta() {
        run::<f32>(a, b, &out, m, k, n, None)?;
    }
    Ok(record("matmul", &[a, b], out, vec![a.clone(), b.clone()], |s, g| {
        let g = g[0].as_ref().expect("gradient");
        let (a, b) = (&s[0], &s[1]);
        let ga = g.matmul(&b.transpose(-1, -2)?)?;
        let gb = a.transpose(-1, -2)?.matmul(g)?;
        Ok(vec![Some(ga.sum_to(a.shape())?), Some(gb.sum_to(b.shape())?)])
    }))
}

fn run<T: Float>(
    a: &Tensor,
    b: &Tensor,
    out: &Tensor,
    m: usize,
    k: usize,
    n: usize,
    ws: Option<&mut [f32]>,
) -> Result<()> {
    let r = a.rank();
    let batch: usize = a.shape()[..r - 2].iter().product();
    let lay = |t: &Tensor, i: usize| Layout {
        offset: row_offset(&t.shape()[..r - 1], &t.strides()[..r - 1], t.offset(), i),
        rs: t.strides()[r - 2],
        cs: t.strides()[r - 1],
    };
    let (ad, bd) = (a.storage_data::<T>()?, b.storage_data::<T>()?);
    let od = out.data_mut::<T>()?;
    match ws {
        None => {
            // T is f32 here.
            let (ad, bd) = (bytemuck::cast_slice::<T, f32>(ad), bytemuck::cast_slice::<T, f32>(bd));
            let od = bytemuck::cast_slice_mut::<T, f32>(od);
            for i in 0..batch {
                let lc = Layout { offset: i * m * n, rs: n, cs: 1 };
                gemm_f32(m, k, n, ad, lay(a, i), bd, lay(b, i), od, lc, false);
            }
        }
        Some(ws) => {
            let (wa, rest) = ws.split_at_mut(m * k);
            let (wb, wc) = rest.split_at_mut(k * n);
            for i in 0..batch {
                widen(ad, lay(a, i), m, k, wa);
                widen(bd, lay(b, i), k, n, wb);
                let (la, lb) = (Layout { offset: 0, rs: k, cs: 1 }, Layout { offset: 0, rs: n, cs: 1 });
                gemm_f32(m, k, n, wa, la, wb, lb, wc, Layout { offset: 0, rs: n, cs: 1 }, false);
                for (o, &v) in od[i * m * n..(i + 1) * m * n].iter_mut().zip(wc.iter()) {
                    *o = T::from_f32(v);
                }
            }
        }
    }
    Ok(())
}

fn widen<T: Float>(src: &[T], l: Layout, rows: usize, cols: usize, dst: &mut [f32]) {
    for i in 0..rows {
        for j in 0..cols {
            dst[i * cols + j] = src[l.offset + i * l.rs + j * l.cs].to_f32();
        }
    }
}
