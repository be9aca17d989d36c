//! Fused attention kernels: FlashAttention's tiling on the CPU.
//!
//! Forward: one task per (batch, head, query tile). It streams the key and
//! value tiles, keeps a running row maximum `m` and sum `l`, rescales its
//! output accumulator by exp(m_old − m_new) whenever the maximum grows, and
//! writes the output rows and one log-sum-exp `m + ln l` per query row.
//!
//! Backward: the probabilities are recomputed tile by tile from Q, K and the
//! log-sum-exp, and every gradient row has exactly one writer, so no atomics
//! are needed. Two passes in general: one task per (batch, head, key tile)
//! accumulates dK and dV over the query tiles in order, then one task per
//! (batch, head, query tile) accumulates dQ over the key tiles in order.
//! When there are at least two (batch, head) pairs per worker, one pass
//! instead: a task per (batch, head) walks the key tiles in order and also
//! adds dS·K into an f32 dQ buffer of its own — five tile products per tile
//! pair instead of seven, the same additions in the same order (see
//! [`Plan`]).
//! With D = rowsum(dO ∘ O): P = exp(S − L), dV = Pᵀ dO, dP = dO Vᵀ,
//! dS = P ∘ (dP − D), dK = dSᵀ (scale·Q), dQ = scale · dS K.
//!
//! No N×N buffer exists at any point. Each worker's scratch (tiles of Q, K,
//! V, dO, accumulators and one or two score tiles, all f32) is one slot of a
//! workspace the op allocates from the arena: O(tile² · threads), whatever
//! the sequence lengths, plus Tq·D per worker for the one-pass dQ. Tasks
//! are handed out from a shared counter, so a slow core does not hold the
//! others back; which slot runs a task does not change its result, so
//! results do not depend on the thread count.
//!
//! Everything is computed in f32 whatever the stored type. The row loops
//! (masking, max, exp, sums) are compiled three times — baseline x86-64,
//! AVX2 and AVX-512 — and picked at run time; they use the same IEEE
//! operations in the same order in every variant (Rust never fuses a
//! multiply and an add on its own), so the choice changes speed only.

use super::matmul::{gemm_f32, Layout};
use crate::tensor::Float;
use rayon::prelude::*;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};

/// matrixmultiply splits one product over its own threads once
/// `m·k + k·n` reaches 2¹⁵ elements. Inside a rayon task that would put
/// more threads than cores to work, so every tile product stays below it.
pub const GEMM_SERIAL: usize = 1 << 15;
const MAX_TILE: usize = 128;
const MIN_TILE: usize = 16;

/// Query rows and key rows per tile for head dimension `d`.
///
/// 128 × 128 for D ≤ 64, halved for larger heads. Why, on this machine
/// (`lscpu`: Intel Xeon, Sapphire Rapids class, 48 KiB L1d and 2 MiB L2 per
/// core, 105 MiB L3 shared, AVX-512): at D = 64 a forward worker's slot (Q,
/// K, V and accumulator tiles of 32 KiB each, a 64 KiB score tile, three
/// per-row vectors) is 193.5 KiB and a backward worker's 416 KiB (plus
/// Tq·D·4 bytes of dQ in one-pass mode) — a tenth and a fifth of its L2,
/// with room for matrixmultiply's packing buffers — while a score row is 128
/// wide (8 AVX-512 registers), so the row loops run at vector speed. Every
/// tile product (`bq·D + D·bk`, `bk·(bq + D)`, `bq·(bk + D)` elements)
/// stays below [`GEMM_SERIAL`], so matrixmultiply never starts threads of
/// its own inside a rayon task; larger tiles, or PyTorch's CPU key blocks
/// of 512, would cross it. Measured at N = 2048, D = 64, one thread
/// (`examples/attention_tiles.rs`, two runs on a loaded machine): 64×64,
/// 32×128, 64×128, 128×64 and 128×256 were 13–47 % slower forward +
/// backward than 128×128, and none was more than 2 % faster forward
/// (ARCHITECTURE.md, "Fused attention", has the table).
pub fn tiles(d: usize) -> (usize, usize) {
    let mut t = MAX_TILE;
    while t > MIN_TILE && (t * (t + d) >= GEMM_SERIAL || 2 * t * d >= GEMM_SERIAL) {
        t /= 2;
    }
    (t, t)
}

/// Shapes and settings of one attention call. Build with [`Config::new`],
/// which clamps the tiles to the lengths.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    pub batch: usize,
    pub heads: usize,
    /// Query length.
    pub tq: usize,
    /// Key (and value) length.
    pub tk: usize,
    /// Head dimension.
    pub d: usize,
    /// Query rows per tile.
    pub bq: usize,
    /// Key rows per tile.
    pub bk: usize,
    pub scale: f32,
    /// Query i sees keys j ≤ i (top-left aligned, as PyTorch's `is_causal`).
    pub causal: bool,
}

impl Config {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        batch: usize,
        heads: usize,
        tq: usize,
        tk: usize,
        d: usize,
        tiles: (usize, usize),
        scale: f32,
        causal: bool,
    ) -> Config {
        Config { batch, heads, tq, tk, d, bq: tiles.0.min(tq).max(1), bk: tiles.1.min(tk).max(1), scale, causal }
    }
    fn q_tiles(&self) -> usize {
        self.tq.div_ceil(self.bq)
    }
    fn k_tiles(&self) -> usize {
        self.tk.div_ceil(self.bk)
    }
    /// Keys `[0, end)` that queries before `i_end` can see.
    fn key_end(&self, i_end: usize) -> usize {
        if self.causal {
            self.tk.min(i_end)
        } else {
            self.tk
        }
    }
    /// f32s of one forward worker: Q, K, V and accumulator tiles, one
    /// score tile, and m, l, α per query row.
    fn forward_slot(&self) -> usize {
        let (bq, bk, d) = (self.bq, self.bk, self.d);
        2 * bq * d + 2 * bk * d + bq * bk + 3 * bq
    }
    /// f32s of one backward worker: Q and dO tiles in both orientations,
    /// K in both, V transposed, two accumulators (dK and dV, or dQ), and the
    /// score and dP tiles.
    fn backward_slot(&self) -> usize {
        let (bq, bk, d) = (self.bq, self.bk, self.d);
        4 * bq * d + 3 * bk * d + (bq.max(bk) + bk) * d + 2 * bq * bk
    }
    /// Workspace (f32 elements) of [`forward`] with `threads` workers.
    pub fn forward_workspace(&self, threads: usize) -> usize {
        slots(threads, self.batch * self.heads * self.q_tiles()) * self.forward_slot()
    }
    /// How [`backward`] splits its work over `threads` workers, given which
    /// gradients are wanted.
    pub fn backward_plan(&self, threads: usize, dq: bool, dkv: bool) -> Plan {
        let bh = self.batch * self.heads;
        if dq && dkv && bh >= 2 * threads {
            // Enough (batch, head) pairs to keep every worker busy: one pass.
            let per_slot = self.backward_slot() + self.tq * self.d;
            return Plan { one_pass: true, slots: slots(threads, bh), per_slot };
        }
        let tasks = bh * self.q_tiles().max(self.k_tiles());
        Plan { one_pass: false, slots: slots(threads, tasks), per_slot: self.backward_slot() }
    }
}

/// The backward's scheme and workspace. Both schemes add every gradient
/// element's terms in the same order with the same products, so they give
/// bit-identical results; the plan changes speed and scratch only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// One task per (batch, head), key tiles in order, dQ accumulated in
    /// the worker's f32 buffer of Tq × D: 5 tile products per tile pair.
    /// Otherwise two passes (dK and dV per key tile, then dQ per query
    /// tile): 7 products per tile pair, but B·H·tiles tasks to share out.
    pub one_pass: bool,
    slots: usize,
    per_slot: usize,
}

impl Plan {
    /// Workspace (f32 elements), not counting the `batch·heads·tq` row sums
    /// D the backward is also given.
    pub fn workspace(&self) -> usize {
        self.slots * self.per_slot
    }
}

fn slots(threads: usize, tasks: usize) -> usize {
    threads.min(tasks).max(1)
}

/// A `[B, H, T, D]` operand read row by row: row (b, h, i) is the `D`
/// elements at `offset + b·s0 + h·s1 + i·s2` (the last stride is 1).
#[derive(Clone, Copy)]
pub struct Rows<'a, T> {
    pub data: &'a [T],
    pub offset: usize,
    pub strides: [usize; 3],
}

impl<'a, T> Rows<'a, T> {
    #[inline]
    fn row(&self, b: usize, h: usize, i: usize, len: usize) -> &'a [T] {
        let o = self.offset + b * self.strides[0] + h * self.strides[1] + i * self.strides[2];
        &self.data[o..o + len]
    }
}

/// An output written row by row from many tasks at once, each task owning
/// its own rows.
pub struct RowsMut<'a, T> {
    ptr: *mut T,
    len: usize,
    strides: [usize; 3],
    _life: PhantomData<&'a mut [T]>,
}

unsafe impl<T: Send> Send for RowsMut<'_, T> {}
unsafe impl<T: Send> Sync for RowsMut<'_, T> {}

impl<'a, T> RowsMut<'a, T> {
    /// # Safety
    /// The runs of elements the kernel writes — `len` elements from
    /// `b·s0 + h·s1 + i·s2`, for each distinct (b, h, i) — must not overlap
    /// (true of any dense layout with the row length as its innermost size).
    pub unsafe fn new(data: &'a mut [T], strides: [usize; 3]) -> RowsMut<'a, T> {
        RowsMut { ptr: data.as_mut_ptr(), len: data.len(), strides, _life: PhantomData }
    }

    /// # Safety
    /// No other live reference may cover these elements: the kernels hand
    /// each (b, h, i) to one task only.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, b: usize, h: usize, i: usize, len: usize) -> &mut [T] {
        let o = b * self.strides[0] + h * self.strides[1] + i * self.strides[2];
        assert!(o + len <= self.len, "attention: row out of range");
        std::slice::from_raw_parts_mut(self.ptr.add(o), len)
    }
}

/// Where the backward writes: dense `[B, H, T, D]` gradients, each absent
/// when its input needs none.
pub struct Grads<'a, T> {
    pub dq: Option<&'a mut [T]>,
    pub dk: Option<&'a mut [T]>,
    pub dv: Option<&'a mut [T]>,
}

/// Run `task(t, scratch)` for t in 0..tasks, on one workspace slot per
/// worker; tasks go to whichever worker asks next.
fn run_tasks(ws: &mut [f32], per_slot: usize, tasks: usize, task: impl Fn(usize, &mut [f32]) + Sync) {
    if tasks == 0 {
        return;
    }
    let next = AtomicUsize::new(0);
    let work = |slot: &mut [f32]| loop {
        let t = next.fetch_add(1, Ordering::Relaxed);
        if t >= tasks {
            break;
        }
        task(t, slot);
    };
    if ws.len() <= per_slot {
        work(ws);
    } else {
        ws.par_chunks_mut(per_slot).for_each(work);
    }
}

/// Rows `i0..i0 + n` of (b, h) as f32, times `scale`: into `rows` as an
/// n × d row-major tile and/or into `cols` transposed (d × n).
///
/// matrixmultiply copies an operand into its panels with plain copies only
/// when the left operand is column-major or the right one row-major, and
/// gathers it element by element otherwise; the tiles are stored in the
/// orientation each product wants.
#[inline]
#[allow(clippy::too_many_arguments)]
fn load<T: Float>(
    src: &Rows<T>,
    (b, h, i0, n, d): (usize, usize, usize, usize, usize),
    scale: f32,
    rows: Option<&mut [f32]>,
    cols: Option<&mut [f32]>,
) {
    if let Some(dst) = rows {
        for r in 0..n {
            let s = src.row(b, h, i0 + r, d);
            for (o, x) in dst[r * d..(r + 1) * d].iter_mut().zip(s) {
                *o = x.to_f32() * scale;
            }
        }
    }
    if let Some(dst) = cols {
        for r in 0..n {
            for (kk, x) in src.row(b, h, i0 + r, d).iter().enumerate() {
                dst[kk * n + r] = x.to_f32() * scale;
            }
        }
    }
}

/// An m × n tile stored row-major, or its transpose read as one.
fn row_major(n: usize) -> Layout {
    lay(n, 1)
}
/// An m × n matrix stored column-major (its transpose row-major).
fn col_major(m: usize) -> Layout {
    lay(1, m)
}

fn lay(rs: usize, cs: usize) -> Layout {
    Layout { offset: 0, rs, cs }
}

/// Which columns of a score tile a row may see: the first `count` (causal),
/// minus the padded keys.
#[derive(Clone, Copy)]
struct Visible {
    causal: bool,
    i0: usize,
    j0: usize,
}

impl Visible {
    #[inline(always)]
    fn count(&self, r: usize, nk: usize) -> usize {
        if self.causal {
            (self.i0 + r + 1).saturating_sub(self.j0).min(nk)
        } else {
            nk
        }
    }
}

/// The forward pass. `out` rows are `d` long; `lse` rows are written `nq` at
/// a time along i (its i-stride must be 1). `pad` is `[B, Tk]`, nonzero =
/// padded key. A query row that sees no key gets output 0 and lse = +∞ (so
/// the probabilities the backward recomputes are 0).
#[allow(clippy::too_many_arguments)]
pub fn forward<T: Float>(
    c: &Config,
    q: Rows<T>,
    k: Rows<T>,
    v: Rows<T>,
    pad: Option<&[u8]>,
    out: &RowsMut<T>,
    lse: &RowsMut<f32>,
    ws: &mut [f32],
) {
    let (d, bq, bk) = (c.d, c.bq, c.bk);
    let nqt = c.q_tiles();
    run_tasks(ws, c.forward_slot(), c.batch * c.heads * nqt, |t, w| {
        // Last query tiles first: under a causal mask they have the most keys.
        let (bh, qi) = (t / nqt, nqt - 1 - t % nqt);
        let (b, h) = (bh / c.heads, bh % c.heads);
        let (i0, nq) = (qi * bq, bq.min(c.tq - qi * bq));
        // Q and K transposed, V as it is: every product packs by plain copies
        // except P (the left operand of P·V), which the row loops need row-major.
        let (qt, w) = w.split_at_mut(bq * d);
        let (kt, w) = w.split_at_mut(bk * d);
        let (vt, w) = w.split_at_mut(bk * d);
        let (acc, w) = w.split_at_mut(bq * d);
        let (s, w) = w.split_at_mut(bq * bk);
        let (m, w) = w.split_at_mut(bq);
        let (l, alpha) = w.split_at_mut(bq);
        let (acc, m, l, alpha) = (&mut acc[..nq * d], &mut m[..nq], &mut l[..nq], &mut alpha[..nq]);
        load(&q, (b, h, i0, nq, d), c.scale, None, Some(qt));
        acc.fill(0.0);
        m.fill(f32::NEG_INFINITY);
        l.fill(0.0);
        let padb = pad.map(|p| &p[b * c.tk..(b + 1) * c.tk]);
        for j0 in (0..c.key_end(i0 + nq)).step_by(bk) {
            let nk = bk.min(c.tk - j0);
            let pt = padb.map(|p| &p[j0..j0 + nk]);
            if pt.is_some_and(|p| p.iter().all(|&x| x != 0)) {
                continue;
            }
            load(&k, (b, h, j0, nk, d), 1.0, None, Some(kt));
            load(&v, (b, h, j0, nk, d), 1.0, Some(vt), None);
            let s = &mut s[..nq * nk];
            // S = (scale·Q) Kᵀ
            gemm_f32(nq, d, nk, qt, col_major(nq), kt, row_major(nk), s, row_major(nk), false);
            online_softmax(s, nk, Visible { causal: c.causal, i0, j0 }, pt, m, l, alpha);
            rescale(acc, d, alpha);
            // O += P V
            gemm_f32(nq, nk, d, s, row_major(nk), vt, row_major(d), acc, row_major(d), true);
        }
        // SAFETY: this task is the only one given (b, h, i0..i0 + nq).
        let lrow = unsafe { lse.row(b, h, i0, nq) };
        for r in 0..nq {
            let o = unsafe { out.row(b, h, i0 + r, d) };
            if l[r] > 0.0 {
                let inv = 1.0 / l[r];
                for (o, a) in o.iter_mut().zip(&acc[r * d..(r + 1) * d]) {
                    *o = T::from_f32(a * inv);
                }
                lrow[r] = m[r] + l[r].ln();
            } else {
                o.fill(T::from_f32(0.0));
                lrow[r] = f32::INFINITY;
            }
        }
    });
}

/// `dvec[bh·tq + i] = Σ_d dO ∘ O` over row (b, h, i), in f32, in order.
pub fn row_dots<T: Float>(c: &Config, o: Rows<T>, go: Rows<T>, dvec: &mut [f32]) {
    if c.tq == 0 {
        return;
    }
    let d = c.d;
    let one = |(bh, dst): (usize, &mut [f32])| {
        let (b, h) = (bh / c.heads, bh % c.heads);
        for (i, x) in dst.iter_mut().enumerate() {
            let (or, gr) = (o.row(b, h, i, d), go.row(b, h, i, d));
            *x = or.iter().zip(gr).map(|(a, g)| a.to_f32() * g.to_f32()).fold(0.0, |s, p| s + p);
        }
    };
    if dvec.len() * d >= super::PAR_MIN {
        dvec.par_chunks_mut(c.tq).enumerate().for_each(one);
    } else {
        dvec.chunks_mut(c.tq).enumerate().for_each(one);
    }
}

/// What the backward reads: the forward's inputs, the output gradient `go`,
/// the key mask, the log-sum-exp (`[B, H, Tq]`, dense) and the row sums
/// `dvec = rowsum(dO ∘ O)` from [`row_dots`].
#[derive(Clone, Copy)]
pub struct Saved<'a, T> {
    pub q: Rows<'a, T>,
    pub k: Rows<'a, T>,
    pub v: Rows<'a, T>,
    pub go: Rows<'a, T>,
    pub pad: Option<&'a [u8]>,
    pub lse: &'a [f32],
    pub dvec: &'a [f32],
}

/// The backward pass, split as `plan` says (from [`Config::backward_plan`]
/// with the gradients `g` asks for); `ws` is `plan.workspace()` long.
pub fn backward<T: Float>(c: &Config, x: &Saved<T>, g: Grads<T>, plan: &Plan, ws: &mut [f32]) {
    let (d, tq, tk) = (c.d, c.tq, c.tk);
    let (nqt, nkt) = (c.q_tiles(), c.k_tiles());
    let bh_n = c.batch * c.heads;
    fn dense<T>(x: Option<&mut [T]>, heads: usize, t: usize, d: usize) -> Option<RowsMut<'_, T>> {
        // SAFETY: dense [B, H, T, D] gradients: distinct rows never overlap.
        x.map(|x| unsafe { RowsMut::new(x, [heads * t * d, t * d, d]) })
    }
    let (dq, dk, dv) = (dense(g.dq, c.heads, tq, d), dense(g.dk, c.heads, tk, d), dense(g.dv, c.heads, tk, d));
    let write_dq = |dq: &RowsMut<T>, b: usize, h: usize, i0: usize, acc: &[f32]| {
        for (r, a) in acc.chunks_exact(d).enumerate() {
            // SAFETY: the caller's task is the only one given these rows.
            let o = unsafe { dq.row(b, h, i0 + r, d) };
            for (o, a) in o.iter_mut().zip(a) {
                *o = T::from_f32(a * c.scale);
            }
        }
    };
    let slot = c.backward_slot();
    if plan.one_pass {
        let dq = dq.as_ref().expect("one pass computes dQ");
        run_tasks(ws, plan.per_slot, bh_n, |bh, w| {
            let (w, acc) = w.split_at_mut(slot);
            let acc = &mut acc[..tq * d];
            acc.fill(0.0);
            for kj in 0..nkt {
                key_tile(c, x, bh, kj, w, dk.as_ref(), dv.as_ref(), Some(acc));
            }
            write_dq(dq, bh / c.heads, bh % c.heads, 0, acc);
        });
        return;
    }
    // Pass 1: dK and dV, one task per (batch, head, key tile).
    if dk.is_some() || dv.is_some() {
        run_tasks(ws, plan.per_slot, bh_n * nkt, |t, w| {
            key_tile(c, x, t / nkt, t % nkt, w, dk.as_ref(), dv.as_ref(), None)
        });
    }
    // Pass 2: dQ, one task per (batch, head, query tile).
    if let Some(dq) = &dq {
        run_tasks(ws, plan.per_slot, bh_n * nqt, |t, w| {
            // Last query tiles first: under a causal mask they have the most keys.
            let (bh, qi) = (t / nqt, nqt - 1 - t % nqt);
            let (i0, acc) = query_tile(c, x, bh, qi, w);
            write_dq(dq, bh / c.heads, bh % c.heads, i0, acc);
        });
    }
}

/// Key tile `kj` of (b, h) = `bh`: dK and dV over the query tiles in order,
/// written to `dk` and `dv`; when `dq` (the f32 Tq × D accumulator of this
/// (b, h)) is given, each tile pair's dS·K is added into it as well.
#[allow(clippy::too_many_arguments)]
fn key_tile<T: Float>(
    c: &Config,
    x: &Saved<T>,
    bh: usize,
    kj: usize,
    w: &mut [f32],
    dk: Option<&RowsMut<T>>,
    dv: Option<&RowsMut<T>>,
    mut dq: Option<&mut [f32]>,
) {
    let (d, bq, bk, tq, tk) = (c.d, c.bq, c.bk, c.tq, c.tk);
    let (b, h) = (bh / c.heads, bh % c.heads);
    let (j0, nk) = (kj * bk, bk.min(tk - kj * bk));
    let [qr, qt, dor, dot, kr, kt, vt, a1, a2, s, dp] = backward_parts(c, w);
    let (dka, dva) = (&mut a1[..nk * d], &mut a2[..nk * d]);
    dka.fill(0.0);
    dva.fill(0.0);
    let pt = x.pad.map(|p| &p[b * tk + j0..b * tk + j0 + nk]);
    if !pt.is_some_and(|p| p.iter().all(|&x| x != 0)) {
        // K row-major only when dS·K goes into dQ here.
        let krows = if dq.is_some() { Some(&mut *kr) } else { None };
        load(&x.k, (b, h, j0, nk, d), 1.0, krows, Some(kt));
        load(&x.v, (b, h, j0, nk, d), 1.0, None, Some(vt));
        // Under a causal mask, query i sees key j0 only when i ≥ j0.
        let first = if c.causal { j0 / bq } else { 0 };
        for qi in first..c.q_tiles() {
            let (i0, nq) = (qi * bq, bq.min(tq - qi * bq));
            if c.causal && j0 >= i0 + nq {
                continue;
            }
            load(&x.q, (b, h, i0, nq, d), c.scale, Some(qr), Some(qt));
            load(&x.go, (b, h, i0, nq, d), 1.0, Some(dor), Some(dot));
            let (s, dp) = (&mut s[..nq * nk], &mut dp[..nq * nk]);
            // S = (scale·Q) Kᵀ, dP = dO Vᵀ
            gemm_f32(nq, d, nk, qt, col_major(nq), kt, row_major(nk), s, row_major(nk), false);
            gemm_f32(nq, d, nk, dot, col_major(nq), vt, row_major(nk), dp, row_major(nk), false);
            let rows = bh * tq + i0..bh * tq + i0 + nq;
            let vis = Visible { causal: c.causal, i0, j0 };
            probs_and_grads(s, dp, nk, vis, pt, &x.lse[rows.clone()], &x.dvec[rows]);
            // dV += Pᵀ dO, dK += dSᵀ (scale·Q)
            gemm_f32(nk, nq, d, s, col_major(nk), dor, row_major(d), dva, row_major(d), true);
            gemm_f32(nk, nq, d, dp, col_major(nk), qr, row_major(d), dka, row_major(d), true);
            if let Some(acc) = dq.as_deref_mut() {
                let acc = &mut acc[i0 * d..(i0 + nq) * d];
                gemm_f32(nq, nk, d, dp, row_major(nk), kr, row_major(d), acc, row_major(d), true);
            }
        }
    }
    for (dst, acc) in [(dk, &*dka), (dv, &*dva)] {
        let Some(dst) = dst else { continue };
        for r in 0..nk {
            // SAFETY: this task is the only one given (b, h, j0..j0 + nk).
            let o = unsafe { dst.row(b, h, j0 + r, d) };
            for (o, a) in o.iter_mut().zip(&acc[r * d..(r + 1) * d]) {
                *o = T::from_f32(*a);
            }
        }
    }
}

/// Query tile `qi` of (b, h) = `bh`: dQ/scale over the key tiles in order.
/// Returns the tile's first row and its f32 accumulator (nq × d).
fn query_tile<'w, T: Float>(c: &Config, x: &Saved<T>, bh: usize, qi: usize, w: &'w mut [f32]) -> (usize, &'w [f32]) {
    let (d, bq, bk, tq, tk) = (c.d, c.bq, c.bk, c.tq, c.tk);
    let (b, h) = (bh / c.heads, bh % c.heads);
    let (i0, nq) = (qi * bq, bq.min(tq - qi * bq));
    let [_, qt, _, dot, kr, kt, vt, a1, _, s, dp] = backward_parts(c, w);
    let dqa = &mut a1[..nq * d];
    dqa.fill(0.0);
    load(&x.q, (b, h, i0, nq, d), c.scale, None, Some(qt));
    load(&x.go, (b, h, i0, nq, d), 1.0, None, Some(dot));
    let rows = bh * tq + i0..bh * tq + i0 + nq;
    let padb = x.pad.map(|p| &p[b * tk..(b + 1) * tk]);
    for j0 in (0..c.key_end(i0 + nq)).step_by(bk) {
        let nk = bk.min(tk - j0);
        let pt = padb.map(|p| &p[j0..j0 + nk]);
        if pt.is_some_and(|p| p.iter().all(|&x| x != 0)) {
            continue;
        }
        load(&x.k, (b, h, j0, nk, d), 1.0, Some(&mut *kr), Some(&mut *kt));
        load(&x.v, (b, h, j0, nk, d), 1.0, None, Some(&mut *vt));
        let (s, dp) = (&mut s[..nq * nk], &mut dp[..nq * nk]);
        gemm_f32(nq, d, nk, qt, col_major(nq), kt, row_major(nk), s, row_major(nk), false);
        gemm_f32(nq, d, nk, dot, col_major(nq), vt, row_major(nk), dp, row_major(nk), false);
        let vis = Visible { causal: c.causal, i0, j0 };
        probs_and_grads(s, dp, nk, vis, pt, &x.lse[rows.clone()], &x.dvec[rows.clone()]);
        // dQ += dS K (times scale when written)
        gemm_f32(nq, nk, d, dp, row_major(nk), kr, row_major(d), dqa, row_major(d), true);
    }
    (i0, dqa)
}

/// A backward worker's slot: Q and dO tiles row-major and transposed, K
/// row-major and transposed, V transposed, two accumulators, and the score
/// and dP tiles.
fn backward_parts<'w>(c: &Config, w: &'w mut [f32]) -> [&'w mut [f32]; 11] {
    let (bq, bk, d) = (c.bq, c.bk, c.d);
    let (qr, w) = w.split_at_mut(bq * d);
    let (qt, w) = w.split_at_mut(bq * d);
    let (dor, w) = w.split_at_mut(bq * d);
    let (dot, w) = w.split_at_mut(bq * d);
    let (kr, w) = w.split_at_mut(bk * d);
    let (kt, w) = w.split_at_mut(bk * d);
    let (vt, w) = w.split_at_mut(bk * d);
    let (a1, w) = w.split_at_mut(bq.max(bk) * d);
    let (a2, w) = w.split_at_mut(bk * d);
    let (s, dp) = w.split_at_mut(bq * bk);
    [qr, qt, dor, dot, kr, kt, vt, a1, a2, s, dp]
}

// ---- row loops, compiled per instruction set ----

/// Compile `$imp` for AVX-512F and for AVX2 as well as the baseline, and
/// call the best one the CPU has.
macro_rules! multiversion {
    ($(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $imp:ident) => {
        $(#[$m])*
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn v512($($arg: $ty),*) {
                    $imp($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v256($($arg: $ty),*) {
                    $imp($($arg),*)
                }
                match simd_level() {
                    // SAFETY: the CPU has the features (checked at run time).
                    2 => return unsafe { v512($($arg),*) },
                    1 => return unsafe { v256($($arg),*) },
                    _ => {}
                }
            }
            $imp($($arg),*)
        }
    };
}

#[cfg(target_arch = "x86_64")]
fn simd_level() -> u8 {
    static LEVEL: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        if is_x86_feature_detected!("avx512f") {
            2
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            1
        } else {
            0
        }
    })
}

multiversion! {
    /// One step of the online softmax over a score tile (`nk` columns): mask
    /// the invisible columns, raise each row's max `m`, turn the scores into
    /// exp(s − m), fold their sum into `l` and leave in `alpha` the factor
    /// the row's accumulator must be scaled by.
    fn online_softmax(s: &mut [f32], nk: usize, vis: Visible, pad: Option<&[u8]>, m: &mut [f32], l: &mut [f32], alpha: &mut [f32]) => online_softmax_impl
}

multiversion! {
    /// Turn a score tile into probabilities P = exp(S − L) (0 where masked)
    /// and the dP tile into dS = P ∘ (dP − D), row by row.
    fn probs_and_grads(s: &mut [f32], dp: &mut [f32], nk: usize, vis: Visible, pad: Option<&[u8]>, lse: &[f32], dvec: &[f32]) => probs_and_grads_impl
}

multiversion! {
    /// Scale row r of the `d`-wide accumulator by `alpha[r]`.
    fn rescale(acc: &mut [f32], d: usize, alpha: &[f32]) => rescale_impl
}

const LANES: usize = 16;

#[inline(always)]
fn online_softmax_impl(
    s: &mut [f32],
    nk: usize,
    vis: Visible,
    pad: Option<&[u8]>,
    m: &mut [f32],
    l: &mut [f32],
    alpha: &mut [f32],
) {
    for (r, row) in s.chunks_exact_mut(nk).enumerate() {
        mask_row(row, vis.count(r, nk), pad);
        let mx = row_max(row);
        let mnew = if mx > m[r] { mx } else { m[r] };
        if mnew == f32::NEG_INFINITY {
            // Nothing visible yet: the row's accumulator stays 0.
            row.fill(0.0);
            alpha[r] = 1.0;
            continue;
        }
        alpha[r] = exp(m[r] - mnew);
        let sum = exp_row(row, mnew);
        l[r] = l[r] * alpha[r] + sum;
        m[r] = mnew;
    }
}

#[inline(always)]
fn probs_and_grads_impl(
    s: &mut [f32],
    dp: &mut [f32],
    nk: usize,
    vis: Visible,
    pad: Option<&[u8]>,
    lse: &[f32],
    dvec: &[f32],
) {
    for (r, (row, drow)) in s.chunks_exact_mut(nk).zip(dp.chunks_exact_mut(nk)).enumerate() {
        mask_row(row, vis.count(r, nk), pad);
        let (lr, dr) = (lse[r], dvec[r]);
        for (x, g) in row.iter_mut().zip(drow.iter_mut()) {
            let p = exp(*x - lr);
            *x = p;
            *g = p * (*g - dr);
        }
    }
}

#[inline(always)]
fn rescale_impl(acc: &mut [f32], d: usize, alpha: &[f32]) {
    for (row, &a) in acc.chunks_exact_mut(d).zip(alpha) {
        if a != 1.0 {
            for x in row {
                *x *= a;
            }
        }
    }
}

/// −∞ in the columns a row may not see: from `visible` on, and padded keys.
#[inline(always)]
fn mask_row(row: &mut [f32], visible: usize, pad: Option<&[u8]>) {
    row[visible..].fill(f32::NEG_INFINITY);
    if let Some(p) = pad {
        for (x, &p) in row[..visible].iter_mut().zip(p) {
            *x = if p != 0 { f32::NEG_INFINITY } else { *x };
        }
    }
}

#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut it = row.chunks_exact(LANES);
    for c in &mut it {
        for l in 0..LANES {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    for (l, &x) in it.remainder().iter().enumerate() {
        acc[l] = if x > acc[l] { x } else { acc[l] };
    }
    acc.iter().fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

/// `row = exp(row − m)`; returns the sum, added in a fixed order (16 lanes,
/// then the lanes in turn).
#[inline(always)]
fn exp_row(row: &mut [f32], m: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut it = row.chunks_exact_mut(LANES);
    for c in &mut it {
        for l in 0..LANES {
            let e = exp(c[l] - m);
            c[l] = e;
            acc[l] += e;
        }
    }
    for (l, x) in it.into_remainder().iter_mut().enumerate() {
        let e = exp(*x - m);
        *x = e;
        acc[l] += e;
    }
    acc.iter().fold(0.0, |s, &x| s + x)
}

/// eˣ in f32 without branches, so loops over it vectorise: Cephes' expf
/// (x = n·ln 2 + r, |r| ≤ ln2/2, degree-6 polynomial, relative error about
/// 2e-7). Exactly 0 for x below −87.3 (so −∞, a masked score, gives 0) and 1
/// at 0; the arguments here are ≤ 0 up to rounding.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LO: f32 = -87.336_55;
    const HI: f32 = 88.0;
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 1.5·2²³: adding it rounds to an integer held in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let xc = x.clamp(LO, HI);
    let z = xc * LOG2E + MAGIC;
    let n = z - MAGIC;
    let ni = (z.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let r = xc - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 5e-1;
    let y = p * (r * r) + r + 1.0;
    let pow2 = f32::from_bits(((ni + 127) << 23) as u32);
    if x < LO {
        0.0
    } else {
        y * pow2
    }
}
