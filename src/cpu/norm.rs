//! Layer norm over rows, forward and fused backward.

use super::PAR_MIN;
use crate::tensor::Float;
use rayon::prelude::*;

/// Most blocks the backward splits rows into for the weight and bias sums.
/// Capping it bounds the partial-sum workspace at `2·MAX_BLOCKS·cols` f32s.
pub const MAX_BLOCKS: usize = 32;

/// Rows per block and block count of the backward. Depends on the shape
/// only, so the sums are added in the same order for any thread count.
pub fn blocks(rows: usize, cols: usize) -> (usize, usize) {
    let per = rows.div_ceil(MAX_BLOCKS).max(PAR_MIN / cols.max(1)).max(1);
    (per, rows.div_ceil(per))
}

/// Per-row optional weight and bias (`cols` each).
#[derive(Clone, Copy)]
pub struct Affine<'a, T> {
    pub weight: Option<&'a [T]>,
    pub bias: Option<&'a [T]>,
}

/// `y = (x − mean)·rstd·w + b` per row of `cols`; writes each row's mean and
/// rstd = 1/√(var + eps) (biased variance, two passes).
pub fn layer_norm<T: Float>(
    x: &[T],
    cols: usize,
    a: Affine<T>,
    eps: f32,
    y: &mut [T],
    mean: &mut [f32],
    rstd: &mut [f32],
) {
    let row = |(((y, x), mu), rs): (((&mut [T], &[T]), &mut f32), &mut f32)| {
        let m = x.iter().map(|v| v.to_f32()).sum::<f32>() / cols as f32;
        let var = x.iter().map(|v| (v.to_f32() - m).powi(2)).sum::<f32>() / cols as f32;
        let r = 1.0 / (var + eps).sqrt();
        (*mu, *rs) = (m, r);
        for (j, (y, v)) in y.iter_mut().zip(x).enumerate() {
            let w = a.weight.map_or(1.0, |w| w[j].to_f32());
            let b = a.bias.map_or(0.0, |b| b[j].to_f32());
            *y = T::from_f32((v.to_f32() - m) * r * w + b);
        }
    };
    if y.len() >= PAR_MIN {
        y.par_chunks_mut(cols).zip(x.par_chunks(cols)).zip(mean.par_iter_mut()).zip(rstd.par_iter_mut()).for_each(row);
    } else {
        y.chunks_mut(cols).zip(x.chunks(cols)).zip(mean.iter_mut()).zip(rstd.iter_mut()).for_each(row);
    }
}

/// Where the backward writes: any output may be absent (its input needs no
/// gradient). `part` holds `[blocks, 2, cols]` partial sums when `dw` or `db`
/// is asked for.
pub struct Grads<'a, T> {
    pub dx: Option<&'a mut [T]>,
    pub dw: Option<&'a mut [T]>,
    pub db: Option<&'a mut [T]>,
    pub part: &'a mut [f32],
}

/// Gradients of layer norm, with x̂ = (x − mean)·rstd and g = dy·w:
/// `dx = rstd·(g − mean(g) − x̂·mean(g·x̂))`, `dw = Σ dy·x̂`, `db = Σ dy`.
/// Each block of rows writes its dx rows and its partial dw, db sums; the
/// partials are then added in block order.
pub fn layer_norm_backward<T: Float>(
    x: &[T],
    dy: &[T],
    cols: usize,
    weight: Option<&[T]>,
    mean: &[f32],
    rstd: &[f32],
    g: Grads<T>,
) {
    let rows = mean.len();
    let (per, nb) = blocks(rows, cols);
    let sums = g.dw.is_some() || g.db.is_some();
    // One slot per block, so a block owns its dx rows and its partials.
    let dx: Vec<Option<&mut [T]>> = match g.dx {
        Some(dx) => dx.chunks_mut(per * cols).map(Some).collect(),
        None => (0..nb).map(|_| None).collect(),
    };
    let part: Vec<Option<&mut [f32]>> =
        if sums { g.part.chunks_mut(2 * cols).map(Some).collect() } else { (0..nb).map(|_| None).collect() };
    let block = |(b, (dx, part)): (usize, (Option<&mut [T]>, Option<&mut [f32]>))| {
        let mut dx = dx;
        let mut part = part;
        if let Some(p) = part.as_deref_mut() {
            p.fill(0.0);
        }
        for r in b * per..((b + 1) * per).min(rows) {
            let (x, dy) = (&x[r * cols..(r + 1) * cols], &dy[r * cols..(r + 1) * cols]);
            let (m, rs) = (mean[r], rstd[r]);
            let xhat = |j: usize| (x[j].to_f32() - m) * rs;
            let gw = |j: usize| dy[j].to_f32() * weight.map_or(1.0, |w| w[j].to_f32());
            if let Some(dx) = dx.as_deref_mut() {
                let (mut sg, mut sgx) = (0f32, 0f32);
                for j in 0..cols {
                    sg += gw(j);
                    sgx += gw(j) * xhat(j);
                }
                let (sg, sgx) = (sg / cols as f32, sgx / cols as f32);
                let o = &mut dx[(r - b * per) * cols..(r - b * per + 1) * cols];
                for (j, o) in o.iter_mut().enumerate() {
                    *o = T::from_f32(rs * (gw(j) - sg - xhat(j) * sgx));
                }
            }
            if let Some(p) = part.as_deref_mut() {
                let (pw, pb) = p.split_at_mut(cols);
                for j in 0..cols {
                    pw[j] += dy[j].to_f32() * xhat(j);
                    pb[j] += dy[j].to_f32();
                }
            }
        }
    };
    if x.len() >= PAR_MIN {
        dx.into_par_iter().zip(part.into_par_iter()).enumerate().for_each(block);
    } else {
        dx.into_iter().zip(part).enumerate().for_each(block);
    }
    // Partials in block order: the same sums for any thread count.
    for (k, out) in [g.dw, g.db].into_iter().enumerate() {
        let Some(out) = out else { continue };
        for (j, o) in out.iter_mut().enumerate() {
            let s: f32 = (0..nb).map(|b| g.part[(2 * b + k) * cols + j]).sum();
            *o = T::from_f32(s);
        }
    }
}
