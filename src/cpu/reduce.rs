//! Reductions and row-wise softmax.

use super::PAR_MIN;
use crate::tensor::{Float, StridedIter};
use rayon::prelude::*;

/// Offset of flat index `i` of `shape` laid out with `strides`.
#[inline]
fn index_offset(shape: &[usize], strides: &[usize], mut i: usize) -> usize {
    let mut off = 0;
    for d in (0..shape.len()).rev() {
        off += (i % shape[d]) * strides[d];
        i /= shape[d];
    }
    off
}

/// A strided input split into kept and reduced dimensions.
pub struct Split<'a> {
    pub kept_shape: &'a [usize],
    pub kept_strides: &'a [usize],
    pub red_shape: &'a [usize],
    pub red_strides: &'a [usize],
    pub offset: usize,
}

/// `out[o] = scale * Σ x` over the reduced dimensions, summed in f64 in a
/// fixed order.
pub fn sum<T: Float, O: Float>(x: &[T], s: &Split, scale: f64, out: &mut [O]) {
    let red: usize = s.red_shape.iter().product();
    let one = |(o, v): (usize, &mut O)| {
        let base = s.offset + index_offset(s.kept_shape, s.kept_strides, o);
        // Fold from +0.0: f64's `sum` starts at −0.0, so a sum of nothing would be −0.
        let acc = StridedIter::new(s.red_shape, s.red_strides, base).fold(0f64, |a, i| a + x[i].to_f32() as f64);
        *v = O::from_f32((acc * scale) as f32);
    };
    if out.len() * red >= PAR_MIN && out.len() > 1 {
        out.par_iter_mut().enumerate().for_each(one);
    } else {
        out.iter_mut().enumerate().for_each(one);
    }
}

/// Max over one reduced dimension, with the index of the first maximum.
pub fn max<T: Float>(x: &[T], s: &Split, out: &mut [T], arg: &mut [i32]) {
    let (n, stride) = (s.red_shape[0], s.red_strides[0]);
    let one = |(o, (v, a)): (usize, (&mut T, &mut i32))| {
        let base = s.offset + index_offset(s.kept_shape, s.kept_strides, o);
        let (mut best, mut at) = (f32::NEG_INFINITY, 0);
        for j in 0..n {
            let y = x[base + j * stride].to_f32();
            if y > best || (j == 0) {
                best = y;
                at = j;
            }
        }
        *v = T::from_f32(best);
        *a = at as i32;
    };
    if out.len() * n >= PAR_MIN {
        out.par_iter_mut().zip(arg.par_iter_mut()).enumerate().for_each(one);
    } else {
        out.iter_mut().zip(arg.iter_mut()).enumerate().for_each(one);
    }
}

fn rows<T: Send, U: Sync>(out: &mut [T], x: &[U], cols: usize, f: impl Fn(&mut [T], &[U]) + Sync) {
    if cols == 0 {
        return; // rows of no elements: nothing to write (and chunks of 0 would panic)
    }
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(cols).zip(x.par_chunks(cols)).for_each(|(o, r)| f(o, r));
    } else {
        out.chunks_mut(cols).zip(x.chunks(cols)).for_each(|(o, r)| f(o, r));
    }
}

/// Softmax (or log-softmax) of each row of `cols` elements.
pub fn softmax<T: Float>(x: &[T], cols: usize, log: bool, out: &mut [T]) {
    rows(out, x, cols, |o, r| {
        let m = r.iter().fold(f32::NEG_INFINITY, |m, v| m.max(v.to_f32()));
        let m = if m == f32::NEG_INFINITY { 0.0 } else { m };
        let z: f32 = r.iter().map(|v| (v.to_f32() - m).exp()).sum();
        if log {
            let lz = z.ln() + m;
            for (o, v) in o.iter_mut().zip(r) {
                *o = T::from_f32(v.to_f32() - lz);
            }
        } else {
            for (o, v) in o.iter_mut().zip(r) {
                *o = T::from_f32((v.to_f32() - m).exp() / z);
            }
        }
    });
}

/// Gradient of softmax rows: `dx = y ∘ (dy − Σ dy∘y)`; of log-softmax:
/// `dx = dy − exp(y) Σ dy`. `y` is the forward output.
pub fn softmax_backward<T: Float>(y: &[T], dy: &[T], cols: usize, log: bool, dx: &mut [T]) {
    if cols == 0 {
        return;
    }
    let both: Vec<(&[T], &[T])> = y.chunks(cols).zip(dy.chunks(cols)).collect();
    let one = |(o, (y, dy)): (&mut [T], &(&[T], &[T]))| {
        if log {
            let s: f32 = dy.iter().map(|g| g.to_f32()).sum();
            for ((o, y), g) in o.iter_mut().zip(y.iter()).zip(dy.iter()) {
                *o = T::from_f32(g.to_f32() - y.to_f32().exp() * s);
            }
        } else {
            let s: f32 = dy.iter().zip(y.iter()).map(|(g, y)| g.to_f32() * y.to_f32()).sum();
            for ((o, y), g) in o.iter_mut().zip(y.iter()).zip(dy.iter()) {
                *o = T::from_f32(y.to_f32() * (g.to_f32() - s));
            }
        }
    };
    if dx.len() >= PAR_MIN {
        dx.par_chunks_mut(cols).zip(both.par_iter()).for_each(one);
    } else {
        dx.chunks_mut(cols).zip(both.iter()).for_each(one);
    }
}
