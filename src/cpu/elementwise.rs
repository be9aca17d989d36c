//! Elementwise kernels: unary maps and broadcast binary ops.

use super::{row_offset, PAR_MIN};
use crate::tensor::Float;
use rayon::prelude::*;

/// A strided operand of a binary op, already broadcast to the output shape
/// (broadcast dimensions have stride 0).
pub struct View<'a, T> {
    pub data: &'a [T],
    pub strides: &'a [usize],
    pub offset: usize,
}

/// `out[i] = f(a[i], b[i])` over `shape`, `out` dense.
pub fn binary<A: Float, B: Float, O: Float>(
    shape: &[usize],
    a: View<A>,
    b: View<B>,
    out: &mut [O],
    f: impl Fn(f32, f32) -> f32 + Sync,
) {
    let cols = shape.last().copied().unwrap_or(1).max(1);
    let (sa, sb) = (a.strides.last().copied().unwrap_or(0), b.strides.last().copied().unwrap_or(0));
    let row = |r: usize, o: &mut [O]| {
        let oa = row_offset(shape, a.strides, a.offset, r);
        let ob = row_offset(shape, b.strides, b.offset, r);
        if sa == 1 && sb == 1 {
            let (ra, rb) = (&a.data[oa..oa + cols], &b.data[ob..ob + cols]);
            for ((o, &x), &y) in o.iter_mut().zip(ra).zip(rb) {
                *o = O::from_f32(f(x.to_f32(), y.to_f32()));
            }
        } else {
            for (j, o) in o.iter_mut().enumerate() {
                *o = O::from_f32(f(a.data[oa + j * sa].to_f32(), b.data[ob + j * sb].to_f32()));
            }
        }
    };
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(cols).enumerate().for_each(|(r, o)| row(r, o));
    } else {
        out.chunks_mut(cols).enumerate().for_each(|(r, o)| row(r, o));
    }
}

/// `out[i] = f(x[i])`, both dense.
pub fn unary<I: Float, O: Float>(x: &[I], out: &mut [O], f: impl Fn(f32) -> f32 + Sync) {
    let chunk = |(o, i): (&mut [O], &[I])| {
        for (o, &v) in o.iter_mut().zip(i) {
            *o = O::from_f32(f(v.to_f32()));
        }
    };
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(PAR_MIN).zip(x.par_chunks(PAR_MIN)).for_each(chunk);
    } else {
        chunk((out, x));
    }
}

/// `out[i] = f(x[i], y[i])`, all dense and the same length (gradients of unary ops).
pub fn zip2<X: Float, Y: Float, O: Float>(x: &[X], y: &[Y], out: &mut [O], f: impl Fn(f32, f32) -> f32 + Sync) {
    let chunk = |((o, a), b): ((&mut [O], &[X]), &[Y])| {
        for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
            *o = O::from_f32(f(a.to_f32(), b.to_f32()));
        }
    };
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(PAR_MIN).zip(x.par_chunks(PAR_MIN)).zip(y.par_chunks(PAR_MIN)).for_each(chunk);
    } else {
        chunk(((out, x), y));
    }
}

/// `acc[i] += x[i]` in place.
pub fn add_assign<T: Float, X: Float>(acc: &mut [T], x: &[X]) {
    let chunk = |(a, x): (&mut [T], &[X])| {
        for (a, &x) in a.iter_mut().zip(x) {
            *a = T::from_f32(a.to_f32() + x.to_f32());
        }
    };
    if acc.len() >= PAR_MIN {
        acc.par_chunks_mut(PAR_MIN).zip(x.par_chunks(PAR_MIN)).for_each(chunk);
    } else {
        chunk((acc, x));
    }
}
