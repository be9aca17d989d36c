//! Views and layout ops: reshape, transpose, permute, slice, expand,
//! squeeze/unsqueeze, contiguous. Views copy nothing; their backward maps
//! the gradient back to the input's layout.

use super::output;
use crate::autograd::{record, record_many};
use crate::error::{Error, Result};
use crate::tensor::{contiguous_strides, sized, StridedIter, Tensor};

/// The shape two operands broadcast to (numpy rules), or an error naming `op`.
pub fn broadcast_shapes(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let x = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let y = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = match (x, y) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(Error::shape(
                    op,
                    format!(
                    "{a:?} and {b:?} do not broadcast (dimension {i}: {x} vs {y}); reshape or unsqueeze one of them"
                ),
                ))
            }
        };
    }
    Ok(out)
}

/// Copy a strided view's elements into a dense or strided destination.
/// # Safety
/// Both layouts must address elements inside their storages.
pub(crate) unsafe fn copy_strided(src: &Tensor, dst: *mut u8, dst_strides: &[usize], dst_offset: usize) {
    let size = src.dtype().size();
    let sp = src.storage().block().as_ptr();
    let srcs = StridedIter::new(src.shape(), src.strides(), src.offset());
    let dsts = StridedIter::new(src.shape(), dst_strides, dst_offset);
    for (s, d) in srcs.zip(dsts) {
        std::ptr::copy_nonoverlapping(sp.add(s * size), dst.add(d * size), size);
    }
}

impl Tensor {
    /// Strides that read this tensor broadcast to `shape` (0 on broadcast dims);
    /// what the strided CUDA kernels take (`cuda::kernels::Strided`).
    pub fn broadcast_strides(&self, shape: &[usize]) -> Vec<usize> {
        let k = shape.len() - self.rank();
        (0..shape.len()).map(|i| if i < k || self.shape()[i - k] == 1 { 0 } else { self.strides()[i - k] }).collect()
    }

    /// A dense tensor with the same values (the same tensor when already dense).
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        let out = self.contiguous_untracked("contiguous")?;
        Ok(record("contiguous", &[self], out, vec![], |_, g| Ok(vec![g[0].clone()])))
    }

    /// The same elements in a new shape; a view when the data is dense.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let (n, _) = sized("reshape", shape, self.dtype())?;
        if n != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!("cannot reshape {:?} ({} elements) to {shape:?} ({n} elements)", self.shape(), self.numel()),
            ));
        }
        let x = self.contiguous()?;
        let out = x.restride(shape.to_vec(), contiguous_strides(shape), x.offset());
        let orig = self.shape().to_vec();
        Ok(record("reshape", &[&x], out, vec![], move |_, g| {
            Ok(vec![Some(g[0].as_ref().expect("gradient").reshape(&orig)?)])
        }))
    }

    /// Swap two dimensions (a view).
    pub fn transpose(&self, d0: isize, d1: isize) -> Result<Tensor> {
        let (a, b) = (self.check_axis("transpose", d0)?, self.check_axis("transpose", d1)?);
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// Reorder dimensions (a view): output dim i is input dim `perm[i]`.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let mut seen = vec![false; self.rank()];
        if perm.len() != self.rank() || perm.iter().any(|&p| p >= self.rank() || std::mem::replace(&mut seen[p], true))
        {
            return Err(Error::shape(
                "permute",
                format!("{perm:?} is not a permutation of the dimensions of {:?}", self.shape()),
            ));
        }
        let shape = perm.iter().map(|&p| self.shape()[p]).collect();
        let strides = perm.iter().map(|&p| self.strides()[p]).collect();
        let out = self.restride(shape, strides, self.offset());
        let mut inv = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inv[p] = i;
        }
        Ok(record("permute", &[self], out, vec![], move |_, g| {
            Ok(vec![Some(g[0].as_ref().expect("gradient").permute(&inv)?)])
        }))
    }

    /// Elements `start..end` of dimension `dim` (a view).
    pub fn slice(&self, dim: isize, start: usize, end: usize) -> Result<Tensor> {
        let d = self.check_axis("slice", dim)?;
        if start > end || end > self.shape()[d] {
            return Err(Error::index("slice", format!("{start}..{end} of dimension {d} of {:?}", self.shape())));
        }
        let mut shape = self.shape().to_vec();
        shape[d] = end - start;
        let out = self.restride(shape, self.strides().to_vec(), self.offset() + start * self.strides()[d]);
        let orig = self.shape().to_vec();
        Ok(record("slice", &[self], out, vec![], move |_, g| {
            let g = g[0].as_ref().expect("gradient");
            let dx = Tensor::zeros(g.arena(), &orig, g.dtype(), crate::alloc::Tag::Temporary)?;
            let strides = dx.strides().to_vec();
            let off = start * strides[d];
            if dx.is_cuda() {
                crate::cuda::ops::copy_into(g, &dx.restride(g.shape().to_vec(), strides, off))?;
            } else if !dx.is_meta() {
                unsafe { copy_strided(g, dx.storage().block().as_ptr(), &strides, off) };
            }
            Ok(vec![Some(dx)])
        }))
    }

    /// Broadcast to `shape` without copying (stride 0 on new or size-1 dims).
    pub fn expand(&self, shape: &[usize]) -> Result<Tensor> {
        let target = broadcast_shapes("expand", self.shape(), shape)?;
        if target != shape {
            return Err(Error::shape("expand", format!("cannot expand {:?} to {shape:?}", self.shape())));
        }
        // A view holds no bytes, but every op that reads it counts its elements.
        sized("expand", shape, self.dtype())?;
        let out = self.restride(shape.to_vec(), self.broadcast_strides(shape), self.offset());
        let orig = self.shape().to_vec();
        Ok(record("expand", &[self], out, vec![], move |_, g| {
            Ok(vec![Some(g[0].as_ref().expect("gradient").sum_to(&orig)?)])
        }))
    }

    /// Insert a dimension of size 1 at `dim` (0..=rank).
    pub fn unsqueeze(&self, dim: usize) -> Result<Tensor> {
        if dim > self.rank() {
            return Err(Error::index("unsqueeze", format!("dimension {dim} for shape {:?}", self.shape())));
        }
        let mut shape = self.shape().to_vec();
        shape.insert(dim, 1);
        self.reshape(&shape)
    }

    /// Remove dimension `dim`, which must have size 1.
    pub fn squeeze(&self, dim: isize) -> Result<Tensor> {
        let d = self.check_axis("squeeze", dim)?;
        if self.shape()[d] != 1 {
            return Err(Error::shape("squeeze", format!("dimension {d} of {:?} is not 1", self.shape())));
        }
        let mut shape = self.shape().to_vec();
        shape.remove(d);
        self.reshape(&shape)
    }

    /// Views of each index of `dim`, with that dimension removed (no copy).
    /// One tape node covers all of them, so the backward builds the input's
    /// gradient once: stepping through a `[B, T, ..]` sequence this way
    /// costs one `[B, T, ..]` gradient, where T `slice`s would cost T.
    pub fn unbind(&self, dim: isize) -> Result<Vec<Tensor>> {
        let d = self.check_axis("unbind", dim)?;
        let (mut shape, mut strides) = (self.shape().to_vec(), self.strides().to_vec());
        let (n, step) = (shape.remove(d), strides.remove(d));
        let outs = (0..n).map(|i| self.restride(shape.clone(), strides.clone(), self.offset() + i * step)).collect();
        let orig = self.shape().to_vec();
        Ok(record_many("unbind", &[self], outs, vec![], move |_, g| {
            let Some(first) = g.iter().flatten().next() else { return Ok(vec![None]) };
            let dx = Tensor::zeros(first.arena(), &orig, first.dtype(), crate::alloc::Tag::Temporary)?;
            if !dx.is_meta() {
                let mut sub = dx.strides().to_vec();
                let step = sub.remove(d);
                for (i, gi) in g.iter().enumerate() {
                    if let Some(gi) = gi {
                        if dx.is_cuda() {
                            crate::cuda::ops::copy_into(gi, &dx.restride(gi.shape().to_vec(), sub.clone(), i * step))?;
                        } else {
                            unsafe { copy_strided(gi, dx.storage().block().as_ptr(), &sub, i * step) };
                        }
                    }
                }
            }
            Ok(vec![Some(dx)])
        }))
    }

    /// Dense copy with its own storage (tracked).
    pub fn copy(&self) -> Result<Tensor> {
        let out = output("copy", self, self.shape(), self.dtype())?;
        if out.is_cuda() {
            crate::cuda::ops::copy_strided(self, &out)?;
        } else if !out.is_meta() {
            unsafe { copy_strided(self, out.storage().block().as_ptr(), out.strides(), 0) };
        }
        Ok(record("copy", &[self], out, vec![], |_, g| Ok(vec![g[0].clone()])))
    }
}
