//! Ops: each op's forward and backward side by side, one family a file.
//! An op checks its inputs (errors name the op and the shapes), allocates
//! its output from the inputs' arena (tag Temporary, labelled with the op),
//! runs the device's kernel (none on the meta device) and records its
//! backward on the tape with the tensors it saves.

mod attention;
mod bahdanau;
mod batch_norm;
mod conv;
mod ctc;
mod dropout;
mod elementwise;
mod embedding;
mod index;
mod loss;
mod lstm;
mod matmul;
mod norm;
mod pool;
mod reduce;
mod shape;
mod vq;

pub use attention::{attention, AttentionKind, AttentionOptions};
pub use bahdanau::BahdanauWeights;
pub use conv::{conv_workspace_limit, set_conv_workspace_limit, DEFAULT_CONV_WORKSPACE_LIMIT};
pub(crate) use elementwise::{add_into, copy};
pub use lstm::LstmParams;
pub use shape::broadcast_shapes;
pub(crate) use shape::copy_strided;
pub use vq::Quantized;

use crate::alloc::Tag;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// A fresh output on `like`'s arena, tagged Temporary and labelled `op`.
pub(crate) fn output(op: &'static str, like: &Tensor, shape: &[usize], dtype: DType) -> Result<Tensor> {
    Tensor::empty(like.arena(), shape, dtype, Tag::Temporary, op)
}

/// Every input must live on the same arena.
pub(crate) fn same_arena(op: &'static str, ts: &[&Tensor]) -> Result<()> {
    if ts.windows(2).any(|w| !w[0].arena().same(w[1].arena())) {
        return Err(Error::device(op, "inputs live on different arenas; move them to one first"));
    }
    Ok(())
}

/// A float dtype, checked before anything is allocated so the meta device
/// rejects exactly what the CPU rejects.
pub(crate) fn float_only(op: &'static str, t: &Tensor) -> Result<()> {
    if !t.dtype().is_float() {
        return Err(Error::dtype(op, format!("{:?} is {}; this op takes f32, f16 or bf16", t.shape(), t.dtype())));
    }
    Ok(())
}

/// Ops with no CUDA path refuse a GPU tensor (and a plan for the GPU) up
/// front, naming the op, instead of failing later in a CPU accessor.
pub(crate) fn cpu_only(op: &'static str, t: &Tensor) -> Result<()> {
    if t.arena().target() == crate::alloc::Target::Cuda {
        return Err(Error::device(
            op,
            format!("{:?} {} is on the GPU (or planned for it) and {op} has no CUDA kernel yet; run this model with --device cpu", t.shape(), t.dtype()),
        ));
    }
    Ok(())
}

/// Inputs must share a dtype (mixed precision casts explicitly).
pub(crate) fn same_dtype(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dtype() != b.dtype() {
        return Err(Error::dtype(
            op,
            format!("{:?} is {} but {:?} is {}; cast one with .to_dtype()", a.shape(), a.dtype(), b.shape(), b.dtype()),
        ));
    }
    Ok(())
}
