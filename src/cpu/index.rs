//! Indexing kernels: concatenation, row gathers and their deterministic
//! scatter-add adjoint, and elementwise select.

use super::elementwise::View;
use super::{row_offset, PAR_MIN};
use crate::tensor::Float;
use rayon::prelude::*;

/// The first index outside `[0, n)`, as (position, index).
pub fn first_out_of_range(idx: &[i32], n: usize) -> Option<(usize, i32)> {
    idx.iter().position(|&i| i < 0 || i as usize >= n).map(|k| (k, idx[k]))
}

/// Sources of widths `widths[i]` per outer row, side by side in `out`.
pub fn concat<T: Copy + Send + Sync>(srcs: &[&[T]], widths: &[usize], out: &mut [T]) {
    let total: usize = widths.iter().sum();
    if total == 0 {
        return;
    }
    let row = |(o, dst): (usize, &mut [T])| {
        let mut at = 0;
        for (s, &w) in srcs.iter().zip(widths) {
            dst[at..at + w].copy_from_slice(&s[o * w..(o + 1) * w]);
            at += w;
        }
    };
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(total).enumerate().for_each(row);
    } else {
        out.chunks_mut(total).enumerate().for_each(row);
    }
}

/// `out[o, k, :] = src[o, idx[k], :]` for `src` `[outer, n, inner]` and `out`
/// `[outer, len(idx), inner]`; indices already checked.
pub fn gather<T: Copy + Send + Sync>(src: &[T], n: usize, inner: usize, idx: &[i32], out: &mut [T]) {
    if inner == 0 || idx.is_empty() {
        return;
    }
    let row = |(r, o): (usize, &mut [T])| {
        let (outer, k) = (r / idx.len(), r % idx.len());
        let s = (outer * n + idx[k] as usize) * inner;
        o.copy_from_slice(&src[s..s + inner]);
    };
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(inner).enumerate().for_each(row);
    } else {
        out.chunks_mut(inner).enumerate().for_each(row);
    }
}

/// Columns summed at once on the stack (f32 accumulators for any storage).
const COLS: usize = 64;

/// The adjoint of [`gather`]: `dst[o, j, :] = Σ src[o, k, :]` over the k with
/// `idx[k] == j`, in increasing k. Each dst row belongs to one worker and
/// adds in a fixed order, so the result does not depend on the thread
/// count. `csr` (`n + 1 + len(idx)` i32s) receives the positions bucketed
/// by index (a stable counting sort).
pub fn scatter_add<T: Float>(src: &[T], n: usize, inner: usize, idx: &[i32], csr: &mut [i32], dst: &mut [T]) {
    if inner == 0 || n == 0 {
        return;
    }
    let (end, order) = csr.split_at_mut(n + 1);
    end.fill(0);
    for &i in idx {
        end[i as usize + 1] += 1;
    }
    for j in 0..n {
        end[j + 1] += end[j];
    }
    // end[j] starts as bucket j's first slot and ends as its last + 1.
    for (k, &i) in idx.iter().enumerate() {
        order[end[i as usize] as usize] = k as i32;
        end[i as usize] += 1;
    }
    let (end, order) = (&*end, &*order);
    let len = idx.len();
    let row = |(r, d): (usize, &mut [T])| {
        let (o, j) = (r / n, r % n);
        let bucket = &order[if j == 0 { 0 } else { end[j - 1] as usize }..end[j] as usize];
        for c0 in (0..inner).step_by(COLS) {
            let w = COLS.min(inner - c0);
            let mut acc = [0f32; COLS];
            for &k in bucket {
                let s = (o * len + k as usize) * inner + c0;
                for (a, v) in acc[..w].iter_mut().zip(&src[s..s + w]) {
                    *a += v.to_f32();
                }
            }
            for (d, a) in d[c0..c0 + w].iter_mut().zip(&acc) {
                *d = T::from_f32(*a);
            }
        }
    };
    if dst.len() + src.len() >= PAR_MIN {
        dst.par_chunks_mut(inner).enumerate().for_each(row);
    } else {
        dst.chunks_mut(inner).enumerate().for_each(row);
    }
}

/// `out = cond ? a : b` over `shape`, operands already broadcast (stride 0
/// on broadcast dims), `out` dense.
pub fn select<T: Copy + Send + Sync>(shape: &[usize], cond: View<u8>, a: View<T>, b: View<T>, out: &mut [T]) {
    let cols = shape.last().copied().unwrap_or(1).max(1);
    let last = |s: &[usize]| s.last().copied().unwrap_or(0);
    let (sc, sa, sb) = (last(cond.strides), last(a.strides), last(b.strides));
    let row = |(r, o): (usize, &mut [T])| {
        let oc = row_offset(shape, cond.strides, cond.offset, r);
        let oa = row_offset(shape, a.strides, a.offset, r);
        let ob = row_offset(shape, b.strides, b.offset, r);
        for (j, o) in o.iter_mut().enumerate() {
            *o = if cond.data[oc + j * sc] != 0 { a.data[oa + j * sa] } else { b.data[ob + j * sb] };
        }
    };
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(cols).enumerate().for_each(row);
    } else {
        out.chunks_mut(cols).enumerate().for_each(row);
    }
}
