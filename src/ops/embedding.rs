//! Embedding lookup: rows of a `[V, D]` table picked by integer ids.

use super::{output, same_arena};
use crate::alloc::Tag;
use crate::autograd::record;
use crate::cpu::index as k;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use crate::with_float;

impl Tensor {
    /// Rows of this `[V, D]` table for `ids` (i32, any shape): `[..ids, D]`.
    ///
    /// Saves only the ids. The backward adds each looked-up row's gradient
    /// into a dense `[V, D]` gradient, one vocabulary row per worker and
    /// repeated ids in position order, so it is deterministic; it needs a
    /// Workspace of `(V + 1 + ids)` i32s while it runs.
    pub fn embedding(&self, ids: &Tensor) -> Result<Tensor> {
        const OP: &str = "embedding";
        if self.rank() != 2 {
            return Err(Error::shape(OP, format!("weight {:?} must be a [V, D] table", self.shape())));
        }
        if !self.dtype().is_float() {
            return Err(Error::dtype(
                OP,
                format!("weight {:?} is {}, expected f32, f16 or bf16", self.shape(), self.dtype()),
            ));
        }
        if ids.dtype() != DType::I32 {
            return Err(Error::dtype(OP, format!("ids {:?} are {}, expected i32", ids.shape(), ids.dtype())));
        }
        same_arena(OP, &[self, ids])?;
        let w = self.contiguous()?;
        let idc = ids.contiguous_untracked(OP)?;
        let (v, d) = (w.dim(0), w.dim(1));
        let mut shape = ids.shape().to_vec();
        shape.push(d);
        let out = output(OP, &w, &shape, w.dtype())?;
        let out_of_range = |at: usize, id: i32| {
            Error::index(
                OP,
                format!(
                    "id {id} at position {at} of ids {:?} is outside the vocabulary [0, {v}) of weight {:?}",
                    ids.shape(),
                    self.shape()
                ),
            )
        };
        let cuda = w.arena().target() == crate::alloc::Target::Cuda;
        // The GPU reports the first bad position in one i32.
        let bad = cuda.then(|| Tensor::empty(w.arena(), &[1], DType::I32, Tag::Workspace, OP)).transpose()?;
        if out.is_cuda() {
            if idc.numel() > 0 {
                if let Some(at) = crate::cuda::ops::embedding(&w, &idc, &out, bad.as_ref().expect("flag"))? {
                    return Err(out_of_range(at, idc.to_vec::<i32>()?[at]));
                }
            }
        } else if !out.is_meta() {
            let iv = idc.data::<i32>()?;
            if let Some((at, id)) = k::first_out_of_range(iv, v) {
                return Err(out_of_range(at, id));
            }
            with_float!(OP, w.dtype(), |T| k::gather::<T>(w.data::<T>()?, v, d, iv, out.data_mut::<T>()?));
        }
        Ok(record(OP, &[&w, ids], out, vec![idc], move |s, g| {
            let g = g[0].as_ref().expect("gradient").contiguous_untracked(OP)?;
            let ids = &s[0];
            let dw = output(OP, &g, &[v, d], g.dtype())?;
            let csr = if g.arena().target() == crate::alloc::Target::Cuda {
                let bytes = crate::cuda::kernels::embedding_backward_workspace(ids.numel());
                crate::cuda::ops::workspace(OP, &g, bytes)?
            } else {
                Tensor::empty(g.arena(), &[v + 1 + ids.numel()], DType::I32, Tag::Workspace, OP)?
            };
            if dw.is_cuda() {
                crate::cuda::ops::embedding_backward(&g, ids, &dw, &csr)?;
            } else if !dw.is_meta() {
                with_float!(OP, g.dtype(), |T| k::scatter_add::<T>(
                    g.data::<T>()?,
                    v,
                    d,
                    ids.data::<i32>()?,
                    csr.data_mut::<i32>()?,
                    dw.data_mut::<T>()?
                ));
            }
            Ok(vec![Some(dw), None])
        }))
    }
}
