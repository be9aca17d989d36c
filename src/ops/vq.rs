//! Vector quantisation (VQ-VAE): nearest codebook entry, straight-through
//! output, commitment and codebook losses.

use super::{float_only, output, same_arena, same_dtype};
use crate::alloc::Tag;
use crate::autograd::{record, record_many};
use crate::cpu::{index, loss, vq as k};
use crate::error::{Error, Result};
use crate::tensor::{DType, Float, Tensor};
use crate::with_float;

/// What [`Tensor::vector_quantize`] returns.
#[derive(Debug)]
pub struct Quantized {
    /// The nearest code of each row, `[N, D]`; its gradient goes to z
    /// unchanged (straight-through), none to the codebook.
    pub z_q: Tensor,
    /// The code of each row, i32 `[N]`.
    pub indices: Tensor,
    /// `mean((z − sg(q))²)`, shape []: gradient to z only.
    pub commitment_loss: Tensor,
    /// `mean((sg(z) − q)²)`, shape []: gradient to the codebook only.
    pub codebook_loss: Tensor,
}

impl Tensor {
    /// Quantise the rows of `z` `[N, D]` to their nearest entries (squared
    /// distance, ties to the lowest index) of `codebook` `[K, D]`, with
    /// `z_q = z + sg(q − z)` semantics: the value of z_q is the code q
    /// exactly, and its gradient flows to z as if z_q were z. A VQ-VAE adds
    /// `codebook_loss + β·commitment_loss` to its reconstruction loss.
    ///
    /// Distances are scored in tiles of at most 256 rows against all K
    /// codes, in a Workspace of `K + tile·K (+ K·D + tile·D for f16/bf16)`
    /// f32 (see `cpu::vq::workspace`), never N×K.
    ///
    /// Saves `z`, the codebook and the indices (i32 `[N]`: `4·N` bytes; the
    /// user holds them too); no N×D copy of the codes. The codebook
    /// gradient adds each code's rows in row order, with a Workspace of
    /// `K + 1 + N` i32.
    pub fn vector_quantize(&self, codebook: &Tensor) -> Result<Quantized> {
        const OP: &str = "vector_quantize";
        if self.rank() != 2 || codebook.rank() != 2 || codebook.dim(1) != self.dim(1) || codebook.dim(0) == 0 {
            return Err(Error::shape(
                OP,
                format!(
                    "z {:?} and codebook {:?}: need z [N, D] and a non-empty codebook [K, D] of the same width; flatten spatial dims into N",
                    self.shape(),
                    codebook.shape()
                ),
            ));
        }
        float_only(OP, self)?;
        super::cpu_only(OP, self)?;
        same_dtype(OP, self, codebook)?;
        same_arena(OP, &[self, codebook])?;
        let z = self.contiguous()?;
        let cb = codebook.contiguous()?;
        let (n, d, kk) = (z.dim(0), z.dim(1), cb.dim(0));
        let idx = output(OP, &z, &[n], DType::I32)?;
        let (tile, elems) = k::workspace(n, kk, d, z.dtype());
        let ws = Tensor::empty(z.arena(), &[elems], DType::F32, Tag::Workspace, OP)?;
        if !idx.is_meta() {
            with_float!(OP, z.dtype(), |T| k::nearest::<T>(
                z.data::<T>()?,
                cb.data::<T>()?,
                kk,
                d,
                tile,
                idx.data_mut::<i32>()?,
                ws.data_mut::<f32>()?
            ));
        }
        drop(ws);
        let q = output(OP, &z, &[n, d], z.dtype())?;
        let commit = output(OP, &z, &[], z.dtype())?;
        let cbl = output(OP, &z, &[], z.dtype())?;
        let count = (n * d).max(1) as f32;
        if !q.is_meta() {
            with_float!(OP, z.dtype(), |T| {
                index::gather::<T>(cb.data::<T>()?, kk, d, idx.data::<i32>()?, q.data_mut::<T>()?);
                let mse = (loss::pointwise_sum::<T>(z.data::<T>()?, q.data::<T>()?, |v| v * v) / count as f64) as f32;
                commit.data_mut::<T>()?[0] = T::from_f32(mse);
                cbl.data_mut::<T>()?[0] = T::from_f32(mse);
            });
        }
        let z_q = record("vq_straight_through", &[&z], q, vec![], |_, g| Ok(vec![g[0].clone()]));
        let wants = [z.requires_grad_flag(), cb.requires_grad_flag()];
        let mut losses =
            record_many(OP, &[&z, &cb], vec![commit, cbl], vec![z.clone(), cb.clone(), idx.clone()], move |s, g| {
                let (z, cb, idx) = (&s[0], &s[1], &s[2]);
                let dz = match (&g[0], wants[0]) {
                    (Some(gc), true) => {
                        let dz = output(OP, z, z.shape(), z.dtype())?;
                        if !dz.is_meta() {
                            with_float!(OP, z.dtype(), |T| k::commitment_grad::<T>(
                                z.data::<T>()?,
                                cb.data::<T>()?,
                                idx.data::<i32>()?,
                                d,
                                2.0 * gc.item()? / count,
                                dz.data_mut::<T>()?
                            ));
                        }
                        Some(dz)
                    }
                    _ => None,
                };
                let dcb = match (&g[1], wants[1]) {
                    (Some(gb), true) => {
                        let dcb = output(OP, cb, cb.shape(), cb.dtype())?;
                        let csr = Tensor::empty(cb.arena(), &[kk + 1 + n], DType::I32, Tag::Workspace, OP)?;
                        if !dcb.is_meta() {
                            with_float!(OP, z.dtype(), |T| k::codebook_grad::<T>(
                                z.data::<T>()?,
                                cb.data::<T>()?,
                                idx.data::<i32>()?,
                                d,
                                2.0 * gb.item()? / count,
                                csr.data_mut::<i32>()?,
                                dcb.data_mut::<T>()?
                            ));
                        }
                        Some(dcb)
                    }
                    _ => None,
                };
                Ok(vec![dz, dcb])
            });
        let codebook_loss = losses.pop().expect("two losses");
        let commitment_loss = losses.pop().expect("two losses");
        Ok(Quantized { z_q, indices: idx, commitment_loss, codebook_loss })
    }
}
