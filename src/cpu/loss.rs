//! Loss kernels: cross-entropy with log-softmax fused in, and pointwise
//! losses reduced to a sum. Sums are taken per fixed chunk and the chunk
//! sums added in order, so they do not depend on the thread count.

use super::PAR_MIN;
use crate::tensor::Float;
use rayon::prelude::*;

/// Class targets of a cross-entropy, already checked against the class count.
#[derive(Clone, Copy)]
pub struct Labels<'a> {
    pub targets: &'a [i32],
    pub ignore: Option<i32>,
    pub smoothing: f32,
}

impl Labels<'_> {
    fn ignored(&self, r: usize) -> bool {
        Some(self.targets[r]) == self.ignore
    }
}

/// Rows per chunk of a row-wise pass over `cols` columns.
fn rows_per_chunk(cols: usize) -> usize {
    (PAR_MIN / cols.max(1)).max(1)
}

/// Σ over non-ignored rows of `lse − Σ q·x` (= −Σ q·log softmax(x)) with
/// q = (1−ε)·onehot + ε/C; writes each row's log-sum-exp to `lse`.
pub fn cross_entropy<T: Float>(x: &[T], cols: usize, l: &Labels, lse: &mut [f32]) -> f64 {
    let per = rows_per_chunk(cols);
    let eps = l.smoothing;
    let chunk = |(c, lse): (usize, &mut [f32])| -> f64 {
        let mut acc = 0f64;
        for (i, lse) in lse.iter_mut().enumerate() {
            let r = c * per + i;
            let row = &x[r * cols..(r + 1) * cols];
            let m = row.iter().fold(f32::NEG_INFINITY, |m, v| m.max(v.to_f32()));
            let z: f32 = row.iter().map(|v| (v.to_f32() - m).exp()).sum();
            *lse = m + z.ln();
            if l.ignored(r) {
                continue;
            }
            let xt = row[l.targets[r] as usize].to_f32();
            // Skip the row sum when it has no weight (the common case).
            let smooth = if eps == 0.0 { 0.0 } else { row.iter().map(|v| v.to_f32()).sum::<f32>() / cols as f32 };
            acc += (*lse - (1.0 - eps) * xt - eps * smooth) as f64;
        }
        acc
    };
    if x.len() >= PAR_MIN {
        let parts: Vec<f64> = lse.par_chunks_mut(per).enumerate().map(chunk).collect();
        parts.iter().sum()
    } else {
        lse.chunks_mut(per).enumerate().map(chunk).sum()
    }
}

/// `dx = scale·(softmax(x) − q)` on non-ignored rows, 0 on ignored ones;
/// softmax comes back from the saved log-sum-exp.
pub fn cross_entropy_backward<T: Float>(x: &[T], cols: usize, l: &Labels, lse: &[f32], scale: f32, dx: &mut [T]) {
    let eps = l.smoothing;
    let row = |(r, o): (usize, &mut [T])| {
        if l.ignored(r) {
            o.fill(T::from_f32(0.0));
            return;
        }
        let t = l.targets[r] as usize;
        for (j, (o, v)) in o.iter_mut().zip(&x[r * cols..(r + 1) * cols]).enumerate() {
            let q = eps / cols as f32 + if j == t { 1.0 - eps } else { 0.0 };
            *o = T::from_f32(scale * ((v.to_f32() - lse[r]).exp() - q));
        }
    };
    if dx.len() >= PAR_MIN {
        dx.par_chunks_mut(cols).enumerate().for_each(row);
    } else {
        dx.chunks_mut(cols).enumerate().for_each(row);
    }
}

/// `Σ f(p − t)` over dense operands of one length.
pub fn pointwise_sum<T: Float>(p: &[T], t: &[T], f: impl Fn(f32) -> f32 + Sync) -> f64 {
    let chunk = |(p, t): (&[T], &[T])| -> f64 { p.iter().zip(t).map(|(p, t)| f(p.to_f32() - t.to_f32()) as f64).sum() };
    if p.len() >= PAR_MIN {
        let parts: Vec<f64> = p.par_chunks(PAR_MIN).zip(t.par_chunks(PAR_MIN)).map(chunk).collect();
        parts.iter().sum()
    } else {
        p.chunks(PAR_MIN).zip(t.chunks(PAR_MIN)).map(chunk).sum()
    }
}

/// `out = scale·df(p − t)` (the target's gradient is the same with −scale).
pub fn pointwise_backward<T: Float>(p: &[T], t: &[T], scale: f32, df: impl Fn(f32) -> f32 + Sync, out: &mut [T]) {
    super::elementwise::zip2::<T, T, T>(p, t, out, |p, t| scale * df(p - t));
}
