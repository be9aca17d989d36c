//! Vector-quantiser kernels: nearest code by squared distance in row tiles
//! through the f32 GEMM (never an N×K matrix for all rows), and the loss
//! gradients. Ties go to the lowest code index; every row and code is
//! produced by one worker in a fixed order.

use super::matmul::{gemm_f32, Layout};
use super::PAR_MIN;
use crate::tensor::{DType, Float};
use rayon::prelude::*;

/// Rows of z per distance tile.
pub const ROWS: usize = 256;

/// Tile rows and workspace f32 elements of [`nearest`] for N rows, K codes
/// of width D: `tile = min(N, 256)` (at least 1) and
/// `elems = K + tile·K + h·(K·D + tile·D)` with h = 1 for f16/bf16 storage
/// (code norms, the distance tile, and the widened codebook and z tile).
pub fn workspace(n: usize, k: usize, d: usize, dtype: DType) -> (usize, usize) {
    let h = usize::from(dtype != DType::F32);
    let tile = n.clamp(1, ROWS);
    (tile, k + tile * k + h * (k * d + tile * d))
}

fn widen<T: Float>(src: &[T], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

/// `idx[i] = argmin_j |z_i − e_j|²`, scored as `|e_j|² − 2 z_i·e_j`.
pub fn nearest<T: Float>(z: &[T], cb: &[T], k: usize, d: usize, tile: usize, idx: &mut [i32], ws: &mut [f32]) {
    let n = idx.len();
    let half = T::DTYPE != DType::F32;
    let (norms, rest) = ws.split_at_mut(k);
    let (cbw, rest) = rest.split_at_mut(if half { k * d } else { 0 });
    let (zt, dist) = rest.split_at_mut(if half { tile * d } else { 0 });
    let cbf: &[f32] = if half {
        widen(cb, cbw);
        cbw
    } else {
        bytemuck::cast_slice(cb)
    };
    for (j, nv) in norms.iter_mut().enumerate() {
        *nv = cbf[j * d..(j + 1) * d].iter().map(|v| v * v).sum();
    }
    for n0 in (0..n).step_by(tile) {
        let m = tile.min(n - n0);
        let (zf, lz): (&[f32], Layout) = if half {
            widen(&z[n0 * d..(n0 + m) * d], zt);
            (&*zt, Layout { offset: 0, rs: d, cs: 1 })
        } else {
            (bytemuck::cast_slice(z), Layout { offset: n0 * d, rs: d, cs: 1 })
        };
        let dist = &mut dist[..m * k];
        gemm_f32(
            m,
            d,
            k,
            zf,
            lz,
            cbf,
            Layout { offset: 0, rs: 1, cs: d },
            dist,
            Layout { offset: 0, rs: k, cs: 1 },
            false,
        );
        let norms = &*norms;
        let row = |(out, dr): (&mut i32, &[f32])| {
            let (mut best, mut at) = (f32::INFINITY, 0);
            for (j, (&nv, &dv)) in norms.iter().zip(dr).enumerate() {
                let s = nv - 2.0 * dv;
                if s < best {
                    (best, at) = (s, j);
                }
            }
            *out = at as i32;
        };
        let out = &mut idx[n0..n0 + m];
        if m * k >= PAR_MIN {
            out.par_iter_mut().zip(dist.par_chunks(k)).for_each(row);
        } else {
            out.iter_mut().zip(dist.chunks(k)).for_each(row);
        }
    }
}

/// `dz[i] = scale·(z_i − e_idx[i])` (the commitment loss's gradient).
pub fn commitment_grad<T: Float>(z: &[T], cb: &[T], idx: &[i32], d: usize, scale: f32, dz: &mut [T]) {
    if d == 0 {
        return;
    }
    let row = |(i, o): (usize, &mut [T])| {
        let e = &cb[idx[i] as usize * d..][..d];
        for ((o, zv), ev) in o.iter_mut().zip(&z[i * d..(i + 1) * d]).zip(e) {
            *o = T::from_f32(scale * (zv.to_f32() - ev.to_f32()));
        }
    };
    if dz.len() >= PAR_MIN {
        dz.par_chunks_mut(d).enumerate().for_each(row);
    } else {
        dz.chunks_mut(d).enumerate().for_each(row);
    }
}

/// `de_j = scale·Σ_{i: idx[i] = j} (e_j − z_i)`, the rows of each code added
/// in increasing i (the codebook loss's gradient). `csr` (`K + 1 + N` i32)
/// receives the rows bucketed by code (a stable counting sort).
pub fn codebook_grad<T: Float>(z: &[T], cb: &[T], idx: &[i32], d: usize, scale: f32, csr: &mut [i32], dcb: &mut [T]) {
    let k = cb.len() / d.max(1);
    if d == 0 || k == 0 {
        return;
    }
    let (end, order) = csr.split_at_mut(k + 1);
    end.fill(0);
    for &j in idx {
        end[j as usize + 1] += 1;
    }
    for j in 0..k {
        end[j + 1] += end[j];
    }
    for (i, &j) in idx.iter().enumerate() {
        order[end[j as usize] as usize] = i as i32;
        end[j as usize] += 1;
    }
    let (end, order) = (&*end, &*order);
    let code = |(j, o): (usize, &mut [T])| {
        let rows = &order[if j == 0 { 0 } else { end[j - 1] as usize }..end[j] as usize];
        let e = &cb[j * d..(j + 1) * d];
        for (c, o) in o.iter_mut().enumerate() {
            let ev = e[c].to_f32();
            let acc: f32 = rows.iter().map(|&i| ev - z[i as usize * d + c].to_f32()).sum();
            *o = T::from_f32(scale * acc);
        }
    };
    if dcb.len() + z.len() >= PAR_MIN {
        dcb.par_chunks_mut(d).enumerate().for_each(code);
    } else {
        dcb.chunks_mut(d).enumerate().for_each(code);
    }
}
