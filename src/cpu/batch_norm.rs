//! Batch normalisation kernels over `[B, C, S]` (channel dim 1, S the
//! product of the spatial dims). Per-channel sums run one channel per
//! worker in f64, batch then space in order; elementwise passes run by
//! rows of S. Nothing depends on the thread count.

use super::PAR_MIN;
use crate::tensor::Float;
use rayon::prelude::*;

/// Shape of the input: batch, channels, spatial size.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub batch: usize,
    pub ch: usize,
    pub sp: usize,
}

impl Dims {
    /// The element ranges of channel `c`, batch by batch.
    fn rows(&self, c: usize) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        (0..self.batch).map(move |b| {
            let s = (b * self.ch + c) * self.sp;
            s..s + self.sp
        })
    }
}

fn per_channel<T: Send>(d: &Dims, out: &mut [T], work: usize, f: impl Fn(usize, &mut T) + Sync + Send) {
    if work >= PAR_MIN && d.ch > 1 {
        out.par_iter_mut().enumerate().for_each(|(c, o)| f(c, o));
    } else {
        out.iter_mut().enumerate().for_each(|(c, o)| f(c, o));
    }
}

/// Per-channel mean and biased variance (two passes).
pub fn channel_stats<T: Float>(x: &[T], d: &Dims, mean: &mut [f32], var: &mut [f32]) {
    let n = (d.batch * d.sp).max(1) as f64;
    let mut both: Vec<(f32, f32)> = vec![(0.0, 0.0); d.ch];
    per_channel(d, &mut both, x.len(), |c, o| {
        let mut s = 0f64;
        for r in d.rows(c) {
            s += x[r].iter().map(|v| v.to_f32() as f64).sum::<f64>();
        }
        let m = s / n;
        let mut q = 0f64;
        for r in d.rows(c) {
            q += x[r].iter().map(|v| (v.to_f32() as f64 - m).powi(2)).sum::<f64>();
        }
        *o = (m as f32, (q / n) as f32);
    });
    for (c, (m, v)) in both.into_iter().enumerate() {
        mean[c] = m;
        var[c] = v;
    }
}

fn rows_mut<T: Float>(out: &mut [T], d: &Dims, f: impl Fn(usize, usize, &mut [T]) + Sync) {
    let sp = d.sp.max(1);
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(sp).enumerate().for_each(|(r, o)| f(r, r % d.ch, o));
    } else {
        out.chunks_mut(sp).enumerate().for_each(|(r, o)| f(r, r % d.ch, o));
    }
}

/// `y = (x − mean[c])·rstd[c]·w[c] + b[c]`.
pub fn normalize<T: Float>(
    x: &[T],
    d: &Dims,
    mean: &[f32],
    rstd: &[f32],
    w: Option<&[T]>,
    b: Option<&[T]>,
    y: &mut [T],
) {
    rows_mut(y, d, |r, c, y| {
        let scale = rstd[c] * w.map_or(1.0, |w| w[c].to_f32());
        let shift = b.map_or(0.0, |b| b[c].to_f32());
        for (o, v) in y.iter_mut().zip(&x[r * d.sp..(r + 1) * d.sp]) {
            *o = T::from_f32((v.to_f32() - mean[c]) * scale + shift);
        }
    });
}

/// Per-channel `Σ dy` and `Σ dy·x̂` with x̂ = (x − mean)·rstd (these are
/// the bias and weight gradients).
pub fn backward_sums<T: Float>(
    x: &[T],
    dy: &[T],
    d: &Dims,
    mean: &[f32],
    rstd: &[f32],
    sdy: &mut [f32],
    sdyx: &mut [f32],
) {
    let mut both: Vec<(f32, f32)> = vec![(0.0, 0.0); d.ch];
    per_channel(d, &mut both, x.len(), |c, o| {
        let (mut a, mut b) = (0f64, 0f64);
        for r in d.rows(c) {
            for (v, g) in x[r.clone()].iter().zip(&dy[r]) {
                let g = g.to_f32() as f64;
                a += g;
                b += g * ((v.to_f32() - mean[c]) * rstd[c]) as f64;
            }
        }
        *o = (a as f32, b as f32);
    });
    for (c, (a, b)) in both.into_iter().enumerate() {
        sdy[c] = a;
        sdyx[c] = b;
    }
}

/// `dx = rstd·w·(dy − mdy[c] − x̂·mdyx[c])`: in training `centre` holds
/// (mdy, mdyx), the per-channel means of dy and dy·x̂; in evaluation it is
/// None (the statistics are constants) and `dx = rstd·w·dy`.
#[allow(clippy::too_many_arguments)]
pub fn backward_dx<T: Float>(
    x: &[T],
    dy: &[T],
    d: &Dims,
    mean: &[f32],
    rstd: &[f32],
    w: Option<&[T]>,
    centre: Option<(&[f32], &[f32])>,
    dx: &mut [T],
) {
    rows_mut(dx, d, |r, c, o| {
        let k = rstd[c] * w.map_or(1.0, |w| w[c].to_f32());
        let (mdy, mdyx) = centre.map_or((0.0, 0.0), |(a, b)| (a[c], b[c]));
        let span = r * d.sp..(r + 1) * d.sp;
        for ((o, v), g) in o.iter_mut().zip(&x[span.clone()]).zip(&dy[span]) {
            let xhat = (v.to_f32() - mean[c]) * rstd[c];
            *o = T::from_f32(k * (g.to_f32() - mdy - xhat * mdyx));
        }
    });
}
