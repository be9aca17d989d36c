//! Indexing ops: concat, split, index_select, masked_fill, where_cond.
//! Data movement (concat, index_select forward) works on any dtype; the
//! ops that blend values are float only.

use super::{broadcast_shapes, output, same_arena, same_dtype};
use crate::alloc::Tag;
use crate::autograd::record;
use crate::cpu::elementwise::View;
use crate::cpu::index as k;
use crate::error::{Error, Result};
use crate::tensor::{DType, Float, Tensor};
use crate::with_float;
use half::{bf16, f16};

/// A dense tensor's elements as bytes, whatever its dtype.
fn bytes(t: &Tensor) -> Result<&[u8]> {
    Ok(match t.dtype() {
        DType::F32 => bytemuck::cast_slice(t.data::<f32>()?),
        DType::F16 => bytemuck::cast_slice(t.data::<f16>()?),
        DType::BF16 => bytemuck::cast_slice(t.data::<bf16>()?),
        DType::I32 => bytemuck::cast_slice(t.data::<i32>()?),
        DType::U8 => t.data::<u8>()?,
    })
}

/// Mutable bytes of a dense tensor an op has just created.
fn bytes_mut(t: &Tensor) -> Result<&mut [u8]> {
    Ok(match t.dtype() {
        DType::F32 => bytemuck::cast_slice_mut(t.data_mut::<f32>()?),
        DType::F16 => bytemuck::cast_slice_mut(t.data_mut::<f16>()?),
        DType::BF16 => bytemuck::cast_slice_mut(t.data_mut::<bf16>()?),
        DType::I32 => bytemuck::cast_slice_mut(t.data_mut::<i32>()?),
        DType::U8 => t.data_mut::<u8>()?,
    })
}

fn axis_of(op: &'static str, x: &Tensor, dim: isize) -> Result<usize> {
    if x.rank() == 0 {
        return Err(Error::shape(op, "a tensor of shape [] has no dimension; reshape it to [1] first"));
    }
    x.check_axis(op, dim)
}

/// One side of a select: a tensor broadcast to the output, or a scalar.
enum Pick<'a> {
    Tensor(&'a Tensor),
    Scalar(f32),
}

/// The operand's view; `one` backs a scalar.
fn pick_view<'a, T: Float>(p: &Pick<'a>, one: &'a [T; 1], strides: &'a [usize]) -> Result<View<'a, T>> {
    Ok(match p {
        Pick::Tensor(t) => View { data: t.storage_data::<T>()?, strides, offset: t.offset() },
        Pick::Scalar(_) => View { data: one, strides, offset: 0 },
    })
}

/// `cond ? a : b` elementwise over `shape` (operands broadcast), no autograd.
fn select_raw(op: &'static str, shape: &[usize], like: &Tensor, cond: &Tensor, a: Pick, b: Pick) -> Result<Tensor> {
    let out = output(op, like, shape, like.dtype())?;
    if out.is_cuda() {
        use crate::cuda::kernels::{self as ck, Side, Strided};
        let strides = |p: &Pick| match p {
            Pick::Tensor(t) => t.broadcast_strides(shape),
            Pick::Scalar(_) => vec![0; shape.len()],
        };
        let (sc, sa, sb) = (cond.broadcast_strides(shape), strides(&a), strides(&b));
        fn side<'s>(p: &Pick, s: &'s [usize]) -> Side<'s> {
            match p {
                Pick::Tensor(t) => Side::Tensor(Strided { ptr: t.device_ptr(), strides: s }),
                Pick::Scalar(v) => Side::Scalar(*v),
            }
        }
        let c = Strided { ptr: cond.device_ptr(), strides: &sc };
        let l = ck::select(like.dtype(), shape, c, side(&a, &sa), side(&b, &sb), out.device_ptr())?;
        crate::cuda::ops::gpu(op, like)?.launch(&l)?;
    } else if !out.is_meta() {
        let strides = |p: &Pick| match p {
            Pick::Tensor(t) => t.broadcast_strides(shape),
            Pick::Scalar(_) => vec![0; shape.len()],
        };
        let (sc, sa, sb) = (cond.broadcast_strides(shape), strides(&a), strides(&b));
        with_float!(op, like.dtype(), |T| {
            // A scalar is a one-element view with every stride 0.
            let one = |p: &Pick| [T::from_f32(if let Pick::Scalar(v) = p { *v } else { 0.0 })];
            let (ca, cb) = (one(&a), one(&b));
            let vc = View { data: cond.storage_data::<u8>()?, strides: &sc, offset: cond.offset() };
            k::select::<T>(shape, vc, pick_view(&a, &ca, &sa)?, pick_view(&b, &cb, &sb)?, out.data_mut::<T>()?);
        });
    }
    Ok(out)
}

fn mask_dtype(op: &'static str, m: &Tensor) -> Result<()> {
    if m.dtype() != DType::U8 {
        return Err(Error::dtype(op, format!("mask {:?} is {}, expected u8 (0 or 1)", m.shape(), m.dtype())));
    }
    Ok(())
}

impl Tensor {
    /// Join tensors along `dim`; every other dimension must match. Any
    /// dtype. Saves nothing: each input's gradient is a slice of the
    /// output's.
    pub fn concat(ts: &[&Tensor], dim: isize) -> Result<Tensor> {
        const OP: &str = "concat";
        let first = *ts.first().ok_or_else(|| Error::invalid(OP, "no tensors to concatenate"))?;
        let d = axis_of(OP, first, dim)?;
        same_arena(OP, ts)?;
        for t in ts {
            same_dtype(OP, first, t)?;
            let same = |a: &Tensor, b: &Tensor| (0..a.rank()).all(|i| i == d || a.shape()[i] == b.shape()[i]);
            if t.rank() != first.rank() || !same(first, t) {
                return Err(Error::shape(
                    OP,
                    format!(
                        "{:?} and {:?} differ outside dimension {d}; only the joined dimension may differ",
                        first.shape(),
                        t.shape()
                    ),
                ));
            }
        }
        let sizes: Vec<usize> = ts.iter().map(|t| t.shape()[d]).collect();
        let mut shape = first.shape().to_vec();
        shape[d] = sizes.iter().sum();
        let parts = ts.iter().map(|t| t.contiguous_untracked(OP)).collect::<Result<Vec<_>>>()?;
        let out = output(OP, first, &shape, first.dtype())?;
        if out.is_cuda() {
            // Each part into its slab of the output, read through its strides.
            let mut start = 0;
            for (p, &n) in parts.iter().zip(&sizes) {
                let off = start * out.strides()[d];
                crate::cuda::ops::copy_into(p, &out.restride(p.shape().to_vec(), out.strides().to_vec(), off))?;
                start += n;
            }
        } else if !out.is_meta() {
            let row = shape[d + 1..].iter().product::<usize>() * first.dtype().size();
            let srcs = parts.iter().map(bytes).collect::<Result<Vec<_>>>()?;
            let widths: Vec<usize> = sizes.iter().map(|&s| s * row).collect();
            k::concat::<u8>(&srcs, &widths, bytes_mut(&out)?);
        }
        Ok(record(OP, ts, out, vec![], move |_, g| {
            let g = g[0].as_ref().expect("gradient");
            let mut start = 0;
            let mut grads = vec![];
            for &n in &sizes {
                grads.push(Some(g.slice(d as isize, start, start + n)?));
                start += n;
            }
            Ok(grads)
        }))
    }

    /// Views of consecutive pieces of `dim` with the given sizes (which must
    /// add up to that dimension). Copies nothing.
    pub fn split(&self, sizes: &[usize], dim: isize) -> Result<Vec<Tensor>> {
        let d = axis_of("split", self, dim)?;
        let total: usize = sizes.iter().sum();
        if total != self.shape()[d] {
            return Err(Error::shape(
                "split",
                format!(
                    "sizes {sizes:?} add up to {total} but dimension {d} of {:?} is {}",
                    self.shape(),
                    self.shape()[d]
                ),
            ));
        }
        let mut start = 0;
        let mut out = vec![];
        for &n in sizes {
            out.push(self.slice(d as isize, start, start + n)?);
            start += n;
        }
        Ok(out)
    }

    /// The entries of `dim` listed by `idx` (i32, 1-D; repeats allowed), in
    /// that order. Any dtype forward. Saves `idx`; the backward adds the
    /// gradient of repeated entries in position order (deterministic), with
    /// a Workspace of `(dim size + 1 + len(idx))` i32s.
    pub fn index_select(&self, dim: isize, idx: &Tensor) -> Result<Tensor> {
        const OP: &str = "index_select";
        super::cpu_only(OP, self)?;
        let d = axis_of(OP, self, dim)?;
        if idx.dtype() != DType::I32 {
            return Err(Error::dtype(OP, format!("idx {:?} is {}, expected i32 indices", idx.shape(), idx.dtype())));
        }
        if idx.rank() != 1 {
            return Err(Error::shape(
                OP,
                format!("idx {:?} for input {:?} must be 1-D; flatten it first", idx.shape(), self.shape()),
            ));
        }
        same_arena(OP, &[self, idx])?;
        let x = self.contiguous()?;
        let ic = idx.contiguous_untracked(OP)?;
        let (n, len) = (x.shape()[d], ic.numel());
        let inner: usize = x.shape()[d + 1..].iter().product();
        let xshape = x.shape().to_vec();
        let mut shape = xshape.clone();
        shape[d] = len;
        let out = output(OP, &x, &shape, x.dtype())?;
        if !out.is_meta() {
            let iv = ic.data::<i32>()?;
            if let Some((at, i)) = k::first_out_of_range(iv, n) {
                return Err(Error::index(
                    OP,
                    format!("index {i} at position {at} is outside [0, {n}) for dimension {d} of {:?}", self.shape()),
                ));
            }
            let size = x.dtype().size();
            k::gather::<u8>(bytes(&x)?, n, inner * size, iv, bytes_mut(&out)?);
        }
        Ok(record(OP, &[&x, idx], out, vec![ic], move |s, g| {
            let g = g[0].as_ref().expect("gradient").contiguous_untracked(OP)?;
            let dx = output(OP, &g, &xshape, g.dtype())?;
            let csr = Tensor::empty(g.arena(), &[n + 1 + len], DType::I32, Tag::Workspace, OP)?;
            if !dx.is_meta() {
                with_float!(OP, g.dtype(), |T| k::scatter_add::<T>(
                    g.data::<T>()?,
                    n,
                    inner,
                    s[0].data::<i32>()?,
                    csr.data_mut::<i32>()?,
                    dx.data_mut::<T>()?
                ));
            }
            Ok(vec![Some(dx), None])
        }))
    }

    /// `value` where `mask` (u8, broadcastable to this shape) is nonzero,
    /// else this tensor. Saves the mask; the gradient is 0 where filled.
    pub fn masked_fill(&self, mask: &Tensor, value: f32) -> Result<Tensor> {
        const OP: &str = "masked_fill";
        mask_dtype(OP, mask)?;
        if !self.dtype().is_float() {
            return Err(Error::dtype(
                OP,
                format!("input {:?} is {}, expected f32, f16 or bf16", self.shape(), self.dtype()),
            ));
        }
        same_arena(OP, &[self, mask])?;
        if broadcast_shapes(OP, self.shape(), mask.shape())? != self.shape() {
            return Err(Error::shape(
                OP,
                format!(
                    "mask {:?} is larger than input {:?}; it must broadcast to the input",
                    mask.shape(),
                    self.shape()
                ),
            ));
        }
        let out = select_raw(OP, self.shape(), self, mask, Pick::Scalar(value), Pick::Tensor(self))?;
        Ok(record(OP, &[self, mask], out, vec![mask.clone()], move |s, g| {
            let g = g[0].as_ref().expect("gradient");
            Ok(vec![Some(select_raw(OP, g.shape(), g, &s[0], Pick::Scalar(0.0), Pick::Tensor(g))?), None])
        }))
    }

    /// `a` where `cond` (u8) is nonzero, else `b`; all three broadcast
    /// together. Saves `cond`; each of `a` and `b` gets the gradient where
    /// it was picked (summed over its broadcast dims).
    pub fn where_cond(cond: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        const OP: &str = "where_cond";
        mask_dtype(OP, cond)?;
        same_dtype(OP, a, b)?;
        if !a.dtype().is_float() {
            return Err(Error::dtype(OP, format!("a {:?} is {}, expected f32, f16 or bf16", a.shape(), a.dtype())));
        }
        same_arena(OP, &[cond, a, b])?;
        let shape = broadcast_shapes(OP, &broadcast_shapes(OP, cond.shape(), a.shape())?, b.shape())?;
        let out = select_raw(OP, &shape, a, cond, Pick::Tensor(a), Pick::Tensor(b))?;
        let (sa, sb) = (a.shape().to_vec(), b.shape().to_vec());
        let wants = [a.requires_grad_flag(), b.requires_grad_flag()];
        Ok(record(OP, &[cond, a, b], out, vec![cond.clone()], move |s, g| {
            let g = g[0].as_ref().expect("gradient");
            let ga = match wants[0] {
                true => Some(select_raw(OP, g.shape(), g, &s[0], Pick::Tensor(g), Pick::Scalar(0.0))?.sum_to(&sa)?),
                false => None,
            };
            let gb = match wants[1] {
                true => Some(select_raw(OP, g.shape(), g, &s[0], Pick::Scalar(0.0), Pick::Tensor(g))?.sum_to(&sb)?),
                false => None,
            };
            Ok(vec![None, ga, gb])
        }))
    }
}
