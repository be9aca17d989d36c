//! Pooling kernels over one 3-d geometry (1-d and 2-d pools are 3-d with
//! size-1 dimensions), over planes `[B·C, D, H, W]`. Backwards gather: each
//! input element sums the outputs whose window covers it, in order of
//! output position, so they need no scratch and do not depend on the
//! thread count.

use super::PAR_MIN;
use crate::tensor::Float;
use rayon::prelude::*;

/// Shapes of one pool: `big` is the input's spatial size, `small` the output's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeom {
    pub big: [usize; 3],
    pub small: [usize; 3],
    pub k: [usize; 3],
    pub stride: [usize; 3],
    pub pad: [usize; 3],
}

impl PoolGeom {
    pub fn big_len(&self) -> usize {
        self.big.iter().product()
    }
    pub fn small_len(&self) -> usize {
        self.small.iter().product()
    }
    pub fn kvol(&self) -> usize {
        self.k.iter().product()
    }

    /// Input index along dim `d` of output `o`, kernel offset `a`, or None in the padding.
    #[inline(always)]
    fn src(&self, d: usize, o: usize, a: usize) -> Option<usize> {
        let i = o * self.stride[d] + a;
        (i >= self.pad[d] && i - self.pad[d] < self.big[d]).then(|| i - self.pad[d])
    }

    /// Outputs along dim `d` whose window covers input `i`: `lo..hi`.
    #[inline(always)]
    fn covering(&self, d: usize, i: usize) -> std::ops::Range<usize> {
        let (k, s, p) = (self.k[d], self.stride[d], self.pad[d]);
        let lo = if i + p + 1 > k { (i + p + 1 - k).div_ceil(s) } else { 0 };
        let hi = ((i + p) / s + 1).min(self.small[d]);
        lo..hi.max(lo)
    }
}

fn planes<T: Send, U: Sync>(out: &mut [T], olen: usize, x: &[U], xlen: usize, f: impl Fn(&mut [T], &[U]) + Sync) {
    if olen == 0 || xlen == 0 {
        return;
    }
    if out.len() + x.len() >= PAR_MIN {
        out.par_chunks_mut(olen).zip(x.par_chunks(xlen)).for_each(|(o, x)| f(o, x));
    } else {
        out.chunks_mut(olen).zip(x.chunks(xlen)).for_each(|(o, x)| f(o, x));
    }
}

/// Visit every output position of one plane with its flat index.
#[inline(always)]
fn each_output(g: &PoolGeom, mut f: impl FnMut(usize, [usize; 3])) {
    let mut at = 0;
    for od in 0..g.small[0] {
        for oh in 0..g.small[1] {
            for ow in 0..g.small[2] {
                f(at, [od, oh, ow]);
                at += 1;
            }
        }
    }
}

/// Visit the in-bounds inputs of the window of output `o` as flat plane indices.
#[inline(always)]
fn each_in_window(g: &PoolGeom, o: [usize; 3], mut f: impl FnMut(usize)) {
    for a in 0..g.k[0] {
        let Some(id) = g.src(0, o[0], a) else {
            continue;
        };
        for b in 0..g.k[1] {
            let Some(ih) = g.src(1, o[1], b) else {
                continue;
            };
            for c in 0..g.k[2] {
                let Some(iw) = g.src(2, o[2], c) else {
                    continue;
                };
                f((id * g.big[1] + ih) * g.big[2] + iw);
            }
        }
    }
}

/// Visit the outputs whose window covers input `i` (3-d coordinates), as flat indices.
#[inline(always)]
fn each_covering(g: &PoolGeom, i: [usize; 3], mut f: impl FnMut(usize)) {
    for od in g.covering(0, i[0]) {
        for oh in g.covering(1, i[1]) {
            for ow in g.covering(2, i[2]) {
                f((od * g.small[1] + oh) * g.small[2] + ow);
            }
        }
    }
}

/// Visit every input position of one plane with its flat index.
#[inline(always)]
fn each_input(g: &PoolGeom, mut f: impl FnMut(usize, [usize; 3])) {
    let mut at = 0;
    for d in 0..g.big[0] {
        for h in 0..g.big[1] {
            for w in 0..g.big[2] {
                f(at, [d, h, w]);
                at += 1;
            }
        }
    }
}

/// Max over each window (padding never wins); `arg` gets the flat index
/// within the plane of the first maximum (a NaN counts as the maximum).
pub fn max_pool<T: Float>(x: &[T], g: &PoolGeom, out: &mut [T], arg: &mut [i32]) {
    let (blen, slen) = (g.big_len(), g.small_len());
    if slen == 0 {
        return;
    }
    let one = |(o, a): (&mut [T], &mut [i32]), x: &[T]| {
        each_output(g, |j, pos| {
            let (mut best, mut at) = (f32::NAN, usize::MAX);
            each_in_window(g, pos, |i| {
                let v = x[i].to_f32();
                if at == usize::MAX || (!best.is_nan() && (v > best || v.is_nan())) {
                    (best, at) = (v, i);
                }
            });
            o[j] = T::from_f32(best);
            a[j] = at as i32;
        });
    };
    let big = out.len() + x.len() >= PAR_MIN;
    let pairs: Vec<(&mut [T], &mut [i32])> = out.chunks_mut(slen).zip(arg.chunks_mut(slen)).collect();
    if big {
        pairs.into_par_iter().zip(x.par_chunks(blen)).for_each(|(p, x)| one(p, x));
    } else {
        pairs.into_iter().zip(x.chunks(blen)).for_each(|(p, x)| one(p, x));
    }
}

/// `dx[i] = Σ dy[o]` over the outputs whose window covers i and whose
/// maximum was i.
pub fn max_pool_backward<T: Float>(dy: &[T], arg: &[i32], g: &PoolGeom, dx: &mut [T]) {
    let (blen, slen) = (g.big_len(), g.small_len());
    let both: Vec<(&[T], &[i32])> = dy.chunks(slen.max(1)).zip(arg.chunks(slen.max(1))).collect();
    planes(dx, blen, &both, 1, |d, pair| {
        let (dy, arg) = pair[0];
        each_input(g, |i, pos| {
            let mut acc = 0f32;
            each_covering(g, pos, |o| {
                if arg[o] as usize == i {
                    acc += dy[o].to_f32();
                }
            });
            d[i] = T::from_f32(acc);
        });
    });
}

/// Mean over each window, padding counted as zeros (PyTorch's default
/// `count_include_pad = True`): the divisor is always kd·kh·kw.
pub fn avg_pool<T: Float>(x: &[T], g: &PoolGeom, out: &mut [T]) {
    let inv = 1.0 / g.kvol() as f32;
    planes(out, g.small_len(), x, g.big_len(), |o, x| {
        each_output(g, |j, pos| {
            let mut acc = 0f32;
            each_in_window(g, pos, |i| acc += x[i].to_f32());
            o[j] = T::from_f32(acc * inv);
        });
    });
}

/// `dx[i] = Σ dy[o] / kvol` over the outputs whose window covers i.
pub fn avg_pool_backward<T: Float>(dy: &[T], g: &PoolGeom, dx: &mut [T]) {
    let inv = 1.0 / g.kvol() as f32;
    planes(dx, g.big_len(), dy, g.small_len(), |d, dy| {
        each_input(g, |i, pos| {
            let mut acc = 0f32;
            each_covering(g, pos, |o| acc += dy[o].to_f32());
            d[i] = T::from_f32(acc * inv);
        });
    });
}
