//! Convolution kernels over one 3-d geometry (1-d and 2-d convolutions are
//! 3-d with size-1 dimensions): im2col, col2im, and three tiled drivers that
//! run them through the f32 GEMM.
//!
//! Every convolution — and every transposed convolution, which is the
//! adjoint of one — is one of three passes over a [`Geom`], where `big`
//! `[C, D, H, W]` is the regular convolution's input and `small`
//! `[O, Do, Ho, Wo]` its output, K = C·kd·kh·kw and P = Do·Ho·Wo:
//!
//! * [`forward`]: `small = W·col(big)` (+ bias over O) — conv forward,
//!   transposed-conv dX.
//! * [`adjoint`]: `big = col2im(Wᵀ·small)` (+ bias over C) — conv dX,
//!   transposed-conv forward.
//! * [`weight_grad`]: `dW = Σ small·col(big)ᵀ` — both dW.
//!
//! The column matrix is never built for a whole sample, let alone a batch:
//! each pass walks one sample at a time in tiles of `tile` output positions
//! and needs only a `[K, tile]` column buffer. [`workspace`] gives the tile
//! and the exact size of the f32 workspace for a byte limit.
//!
//! Results do not depend on the tile (so not on the limit) or the thread
//! count: tiles are whole multiples of [`QUANTUM`] positions; `forward` and
//! `adjoint` reduce over O or K, which tiling does not split; `weight_grad`
//! adds one GEMM per QUANTUM-aligned chunk of positions, in order; col2im
//! adds into each input element in order of output position, then kernel
//! offset.

use super::matmul::{gemm_f32, Layout};
use super::PAR_MIN;
use crate::tensor::{DType, Float};
use rayon::prelude::*;

/// Output positions per chunk of the weight-gradient reduction; tiles are
/// whole multiples of it (or a whole sample), so any tile gives the same sums.
pub const QUANTUM: usize = 64;

/// Shapes of one convolution as the regular (not transposed) conv sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geom {
    /// Channels of `big`.
    pub c: usize,
    /// Spatial size of `big` (the regular conv's input): [D, H, W].
    pub big: [usize; 3],
    /// Channels of `small`.
    pub o: usize,
    /// Spatial size of `small` (the regular conv's output): [Do, Ho, Wo].
    pub small: [usize; 3],
    pub k: [usize; 3],
    pub stride: [usize; 3],
    pub pad: [usize; 3],
    pub dil: [usize; 3],
}

impl Geom {
    /// Kernel offsets per channel: kd·kh·kw.
    pub fn kvol(&self) -> usize {
        self.k.iter().product()
    }
    /// Rows of the column matrix: K = C·kd·kh·kw.
    pub fn kdim(&self) -> usize {
        self.c * self.kvol()
    }
    /// Spatial positions of `big`.
    pub fn big_len(&self) -> usize {
        self.big.iter().product()
    }
    /// Output positions of `small`: P.
    pub fn small_len(&self) -> usize {
        self.small.iter().product()
    }
}

/// The three passes (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Forward,
    Adjoint,
    WeightGrad,
}

/// Tile (output positions per GEMM) and workspace size in f32 elements of
/// a pass under `limit` bytes. With h = 1 for f16/bf16 storage (0 for f32):
///
/// * per-position elements `per = K + h·O` (a column of the column buffer,
///   plus a widened column of `small` for half storage);
/// * fixed elements: Forward `h·O·K` (the weight widened to f32); Adjoint
///   `h·(O·K + C·Db·Hb·Wb)` (widened weight and one sample's f32
///   accumulator); WeightGrad `h·O·K` (the f32 dW accumulator);
/// * `tile = min(P, max(QUANTUM, ⌊(⌊limit/4⌋ − fixed)/(per·QUANTUM)⌋·QUANTUM))`
///   (the subtraction saturating at 0);
/// * elements = `fixed + tile·per`; the op asks the arena for 4× that, one
///   Workspace block, held only while the pass runs.
///
/// So the block never exceeds `limit` unless even one QUANTUM of positions
/// (or, for half storage, the fixed part) does not fit, and never exceeds
/// what one whole sample needs.
pub fn workspace(g: &Geom, pass: Pass, dtype: DType, limit: usize) -> (usize, usize) {
    let h = usize::from(dtype != DType::F32);
    let (k, o, p) = (g.kdim(), g.o, g.small_len());
    let per = k + h * o;
    let fixed = h * match pass {
        Pass::Forward | Pass::WeightGrad => o * k,
        Pass::Adjoint => o * k + g.c * g.big_len(),
    };
    let avail = (limit / 4).saturating_sub(fixed);
    let tile = (avail / (per * QUANTUM).max(1) * QUANTUM).max(QUANTUM).min(p).max(1);
    (tile, fixed + tile * per)
}

/// Kernel offset `r` (row-major over kd, kh, kw) as (a, b, e).
#[inline(always)]
fn offset3(g: &Geom, r: usize) -> [usize; 3] {
    [r / (g.k[1] * g.k[2]), (r / g.k[2]) % g.k[1], r % g.k[2]]
}

/// Input coordinate along dim `d` of output coordinate `o` and kernel
/// offset `a`, or None in the padding.
#[inline(always)]
fn coord(g: &Geom, d: usize, o: usize, a: usize) -> Option<usize> {
    let i = o * g.stride[d] + a * g.dil[d];
    (i >= g.pad[d] && i - g.pad[d] < g.big[d]).then(|| i - g.pad[d])
}

/// Output position p as (od, oh, ow).
#[inline(always)]
fn decode(g: &Geom, p: usize) -> [usize; 3] {
    let (hw, w) = (g.small[1] * g.small[2], g.small[2]);
    [p / hw, (p / w) % g.small[1], p % w]
}

/// Advance (od, oh, ow) by `run` positions along ow (not past the row end).
#[inline(always)]
fn advance(g: &Geom, pos: &mut [usize; 3], run: usize) {
    pos[2] += run;
    if pos[2] == g.small[2] {
        pos[2] = 0;
        pos[1] += 1;
        if pos[1] == g.small[1] {
            pos[1] = 0;
            pos[0] += 1;
        }
    }
}

/// `col[k, j] = big[c, in(p0 + j, k)]` (0 in the padding) for one sample,
/// `col` `[K, n]`. Each row walks the tile in runs along the output's last
/// dim, with the in-bounds part of a run read in one strided pass.
pub fn im2col<T: Float>(g: &Geom, x: &[T], p0: usize, n: usize, col: &mut [f32]) {
    let (kvol, blen) = (g.kvol(), g.big_len());
    let (s2, wd) = (g.stride[2], g.big[2]);
    let row = |(k, out): (usize, &mut [f32])| {
        let (c, kk) = (k / kvol, offset3(g, k % kvol));
        let xc = &x[c * blen..(c + 1) * blen];
        // Input column of output column ow is ow·s2 + shift − pad.
        let shift = kk[2] * g.dil[2];
        let mut pos = decode(g, p0);
        let mut j = 0;
        while j < n {
            let run = (g.small[2] - pos[2]).min(n - j);
            let dst = &mut out[j..j + run];
            match (coord(g, 0, pos[0], kk[0]), coord(g, 1, pos[1], kk[1])) {
                (Some(id), Some(ih)) => {
                    let base = (id * g.big[1] + ih) * wd;
                    // Columns q of the run with pad ≤ (w0 + q)·s2 + shift < pad + W.
                    let first = |lim: usize| (lim.saturating_sub(shift)).div_ceil(s2).saturating_sub(pos[2]);
                    let lo = first(g.pad[2]).min(run);
                    let hi = first(g.pad[2] + wd).clamp(lo, run);
                    dst[..lo].fill(0.0);
                    dst[hi..].fill(0.0);
                    if lo < hi {
                        let mut iw = (pos[2] + lo) * s2 + shift - g.pad[2];
                        for o in &mut dst[lo..hi] {
                            *o = xc[base + iw].to_f32();
                            iw += s2;
                        }
                    }
                }
                _ => dst.fill(0.0),
            }
            advance(g, &mut pos, run);
            j += run;
        }
    };
    let col = &mut col[..g.kdim() * n];
    if col.len() >= PAR_MIN {
        col.par_chunks_mut(n).enumerate().for_each(row);
    } else {
        col.chunks_mut(n).enumerate().for_each(row);
    }
}

/// The adjoint of [`im2col`]: `acc[c, in(p0 + j, k)] += col[k, j]`, one
/// channel per worker, adding in order of position, then kernel offset
/// (the order that makes the sums independent of the tiling).
pub fn col2im(g: &Geom, col: &[f32], p0: usize, n: usize, acc: &mut [f32]) {
    let (kvol, blen) = (g.kvol(), g.big_len());
    let chan = |(c, a): (usize, &mut [f32])| {
        let rows = &col[c * kvol * n..(c + 1) * kvol * n];
        let mut pos = decode(g, p0);
        for j in 0..n {
            let mut r = 0;
            for ka in 0..g.k[0] {
                let Some(id) = coord(g, 0, pos[0], ka) else {
                    r += g.k[1] * g.k[2];
                    continue;
                };
                for kb in 0..g.k[1] {
                    let Some(ih) = coord(g, 1, pos[1], kb) else {
                        r += g.k[2];
                        continue;
                    };
                    let base = (id * g.big[1] + ih) * g.big[2];
                    for ke in 0..g.k[2] {
                        if let Some(iw) = coord(g, 2, pos[2], ke) {
                            a[base + iw] += rows[r * n + j];
                        }
                        r += 1;
                    }
                }
            }
            advance(g, &mut pos, 1);
        }
    };
    let acc = &mut acc[..g.c * blen];
    if g.c > 1 && g.kdim() * n >= PAR_MIN {
        acc.par_chunks_mut(blen).enumerate().for_each(chan);
    } else {
        acc.chunks_mut(blen).enumerate().for_each(chan);
    }
}

fn is_f32<T: Float>() -> bool {
    T::DTYPE == DType::F32
}

fn widen<T: Float>(src: &[T], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

/// A `[O, n]` tile of sample `b` of `small` (`[B, O, P]`) as an f32 operand:
/// read in place when T is f32, else widened into `buf`.
fn small_tile<'a, T: Float>(
    g: &Geom,
    small: &'a [T],
    b: usize,
    p0: usize,
    n: usize,
    buf: &'a mut [f32],
) -> (&'a [f32], Layout) {
    let (o, p) = (g.o, g.small_len());
    if is_f32::<T>() {
        let s: &[f32] = bytemuck::cast_slice(small);
        (s, Layout { offset: b * o * p + p0, rs: p, cs: 1 })
    } else {
        for r in 0..o {
            let src = &small[b * o * p + r * p + p0..][..n];
            widen(src, &mut buf[r * n..(r + 1) * n]);
        }
        (&*buf, Layout { offset: 0, rs: n, cs: 1 })
    }
}

/// `small[b] = W·col(big[b]) (+ bias[o])` for every sample. `big`
/// `[B, C, ·]`, `w` `[O, K]`, `small` `[B, O, P]`; `ws` holds the elements
/// [`workspace`] gives for [`Pass::Forward`] and `tile`.
#[allow(clippy::too_many_arguments)]
pub fn forward<T: Float>(
    g: &Geom,
    batch: usize,
    big: &[T],
    w: &[T],
    bias: Option<&[T]>,
    small: &mut [T],
    tile: usize,
    ws: &mut [f32],
) {
    let (k, o, p, blen) = (g.kdim(), g.o, g.small_len(), g.big_len());
    let half = !is_f32::<T>();
    let (wbuf, rest) = ws.split_at_mut(if half { o * k } else { 0 });
    let (col, obuf) = rest.split_at_mut(k * tile);
    let wf: &[f32] = if half {
        widen(w, wbuf);
        wbuf
    } else {
        bytemuck::cast_slice(w)
    };
    let lw = Layout { offset: 0, rs: k, cs: 1 };
    for b in 0..batch {
        let x = &big[b * g.c * blen..(b + 1) * g.c * blen];
        for p0 in (0..p).step_by(tile) {
            let n = tile.min(p - p0);
            im2col(g, x, p0, n, col);
            let lcol = Layout { offset: 0, rs: n, cs: 1 };
            if half {
                let out = &mut obuf[..o * n];
                if let Some(bias) = bias {
                    for (r, row) in out.chunks_mut(n).enumerate() {
                        row.fill(bias[r].to_f32());
                    }
                }
                let lo = Layout { offset: 0, rs: n, cs: 1 };
                gemm_f32(o, k, n, wf, lw, col, lcol, out, lo, bias.is_some());
                for r in 0..o {
                    let dst = &mut small[b * o * p + r * p + p0..][..n];
                    for (d, v) in dst.iter_mut().zip(&out[r * n..(r + 1) * n]) {
                        *d = T::from_f32(*v);
                    }
                }
            } else {
                let s: &mut [f32] = bytemuck::cast_slice_mut(small);
                if let Some(bias) = bias {
                    for r in 0..o {
                        s[b * o * p + r * p + p0..][..n].fill(bias[r].to_f32());
                    }
                }
                let lo = Layout { offset: b * o * p + p0, rs: p, cs: 1 };
                gemm_f32(o, k, n, wf, lw, col, lcol, s, lo, bias.is_some());
            }
        }
    }
}

/// `big[b] = col2im(Wᵀ·small[b]) (+ bias[c])` for every sample; `ws` holds
/// the elements [`workspace`] gives for [`Pass::Adjoint`] and `tile`.
#[allow(clippy::too_many_arguments)]
pub fn adjoint<T: Float>(
    g: &Geom,
    batch: usize,
    small: &[T],
    w: &[T],
    bias: Option<&[T]>,
    big: &mut [T],
    tile: usize,
    ws: &mut [f32],
) {
    let (k, o, p, blen) = (g.kdim(), g.o, g.small_len(), g.big_len());
    let half = !is_f32::<T>();
    let (wbuf, rest) = ws.split_at_mut(if half { o * k } else { 0 });
    let (abuf, rest) = rest.split_at_mut(if half { g.c * blen } else { 0 });
    let (dcol, sbuf) = rest.split_at_mut(k * tile);
    let wf: &[f32] = if half {
        widen(w, wbuf);
        wbuf
    } else {
        bytemuck::cast_slice(w)
    };
    // Wᵀ read in place: element (kk, r) of Wᵀ is w[r, kk].
    let lwt = Layout { offset: 0, rs: 1, cs: k };
    for b in 0..batch {
        let sample = b * g.c * blen..(b + 1) * g.c * blen;
        let acc: &mut [f32] =
            if half { &mut *abuf } else { &mut bytemuck::cast_slice_mut::<T, f32>(big)[sample.clone()] };
        acc.fill(0.0);
        for p0 in (0..p).step_by(tile) {
            let n = tile.min(p - p0);
            let (s, ls) = small_tile(g, small, b, p0, n, sbuf);
            let lcol = Layout { offset: 0, rs: n, cs: 1 };
            gemm_f32(k, o, n, wf, lwt, s, ls, dcol, lcol, false);
            col2im(g, dcol, p0, n, acc);
        }
        if let Some(bias) = bias {
            for (c, a) in acc.chunks_mut(blen).enumerate() {
                let v = bias[c].to_f32();
                a.iter_mut().for_each(|x| *x += v);
            }
        }
        if half {
            for (d, v) in big[sample].iter_mut().zip(abuf.iter()) {
                *d = T::from_f32(*v);
            }
        }
    }
}

/// `dw = Σ_b Σ_chunks small[b][:, chunk]·col(big[b])[:, chunk]ᵀ`, `dw`
/// `[O, K]`, chunks of [`QUANTUM`] positions added in order; `ws` holds the
/// elements [`workspace`] gives for [`Pass::WeightGrad`] and `tile`.
pub fn weight_grad<T: Float>(
    g: &Geom,
    batch: usize,
    big: &[T],
    small: &[T],
    dw: &mut [T],
    tile: usize,
    ws: &mut [f32],
) {
    let (k, o, p, blen) = (g.kdim(), g.o, g.small_len(), g.big_len());
    let half = !is_f32::<T>();
    let (wacc, rest) = ws.split_at_mut(if half { o * k } else { 0 });
    let (col, sbuf) = rest.split_at_mut(k * tile);
    let acc: &mut [f32] = if half { &mut *wacc } else { bytemuck::cast_slice_mut(dw) };
    acc.fill(0.0);
    let lacc = Layout { offset: 0, rs: k, cs: 1 };
    for b in 0..batch {
        let x = &big[b * g.c * blen..(b + 1) * g.c * blen];
        for p0 in (0..p).step_by(tile) {
            let n = tile.min(p - p0);
            im2col(g, x, p0, n, col);
            let (s, ls) = small_tile(g, small, b, p0, n, sbuf);
            for j0 in (0..n).step_by(QUANTUM) {
                let q = QUANTUM.min(n - j0);
                let lsq = Layout { offset: ls.offset + j0, ..ls };
                // colᵀ chunk read in place: element (j, kk) is col[kk, j0 + j].
                let lct = Layout { offset: j0, rs: 1, cs: n };
                gemm_f32(o, q, k, s, lsq, col, lct, acc, lacc, true);
            }
        }
    }
    if half {
        for (d, v) in dw.iter_mut().zip(wacc.iter()) {
            *d = T::from_f32(*v);
        }
    }
}

/// `out[c] = Σ_b Σ_s y[b, c, s]` (a bias gradient), in f64, b then s in order.
pub fn channel_sum<T: Float>(y: &[T], batch: usize, channels: usize, spatial: usize, out: &mut [T]) {
    for (c, o) in out.iter_mut().enumerate() {
        let mut acc = 0f64;
        for b in 0..batch {
            let row = &y[(b * channels + c) * spatial..][..spatial];
            acc += row.iter().map(|v| v.to_f32() as f64).sum::<f64>();
        }
        *o = T::from_f32(acc as f32);
    }
}
