//! CTC kernels: the alpha/beta recursions in log space (f32), over
//! `log_probs` `[T, B, C]` and padded targets `[B, S]`. Samples are
//! independent: one sample per worker, and each gradient row is written
//! by one worker in a fixed order, so nothing depends on the thread count.
//!
//! With the extended label l' = (blank, l1, blank, l2, …, blank) of length
//! L = 2S + 1, alpha and beta both include the frame's own log-probability,
//! so `γ_t(c) = Σ_{s: l'_s = c} exp(α_t(s) + β_t(s) − lp[t, c] + nll)` is
//! the posterior of class c at frame t, and `∂nll/∂lp[t, c] = −γ_t(c)`.

use super::PAR_MIN;
use crate::tensor::Float;
use rayon::prelude::*;

/// A batch of CTC problems (lengths and targets already checked).
#[derive(Clone, Copy)]
pub struct Problem<'a> {
    pub frames: usize,
    pub batch: usize,
    pub classes: usize,
    /// `[B, S]`, padded; only the first `target_lengths[b]` of row b count.
    pub targets: &'a [i32],
    pub s_max: usize,
    pub input_lengths: &'a [usize],
    pub target_lengths: &'a [usize],
    pub blank: usize,
}

impl Problem<'_> {
    /// Extended-label slots per sample: 2·S + 1.
    pub fn ext(&self) -> usize {
        2 * self.s_max + 1
    }
    #[inline]
    fn label(&self, b: usize, s: usize) -> usize {
        if s.is_multiple_of(2) {
            self.blank
        } else {
            self.targets[b * self.s_max + s / 2] as usize
        }
    }
    #[inline]
    fn lp<T: Float>(&self, lp: &[T], t: usize, b: usize, c: usize) -> f32 {
        lp[(t * self.batch + b) * self.classes + c].to_f32()
    }
    /// May the path skip from slot s − 2 to s (distinct non-blank labels)?
    #[inline]
    fn skip(&self, b: usize, s: usize) -> bool {
        s >= 2 && s % 2 == 1 && self.label(b, s) != self.label(b, s - 2)
    }
}

#[inline]
fn lse(a: f32, b: f32) -> f32 {
    if a == f32::NEG_INFINITY {
        return b;
    }
    if b == f32::NEG_INFINITY {
        return a;
    }
    a.max(b) + (-(a - b).abs()).exp().ln_1p()
}

/// One step of the alpha recursion: `cur` from `prev` at frame t.
fn alpha_step<T: Float>(p: &Problem, lp: &[T], b: usize, t: usize, l: usize, prev: &[f32], cur: &mut [f32]) {
    for s in 0..l {
        let mut a = prev[s];
        if s >= 1 {
            a = lse(a, prev[s - 1]);
        }
        if p.skip(b, s) {
            a = lse(a, prev[s - 2]);
        }
        cur[s] = a + p.lp(lp, t, b, p.label(b, s));
    }
}

fn alpha_init<T: Float>(p: &Problem, lp: &[T], b: usize, l: usize, row: &mut [f32]) {
    row[..l].fill(f32::NEG_INFINITY);
    row[0] = p.lp(lp, 0, b, p.blank);
    if l > 1 {
        row[1] = p.lp(lp, 0, b, p.label(b, 1));
    }
}

/// Log-likelihood from the last alpha row.
fn total(row: &[f32], l: usize) -> f32 {
    if l > 1 {
        lse(row[l - 1], row[l - 2])
    } else {
        row[0]
    }
}

/// Each sample's negative log-likelihood (+∞ when no alignment exists).
/// `ws` holds `B·2·L` f32 (two alpha rows per sample).
pub fn forward<T: Float>(lp: &[T], p: &Problem, nll: &mut [f32], ws: &mut [f32]) {
    let ext = p.ext();
    let one = |(b, (n, w)): (usize, (&mut f32, &mut [f32]))| {
        let (tl, l) = (p.input_lengths[b], 2 * p.target_lengths[b] + 1);
        if tl == 0 {
            *n = if l == 1 { 0.0 } else { f32::INFINITY };
            return;
        }
        let (mut prev, mut cur) = w.split_at_mut(ext);
        alpha_init(p, lp, b, l, prev);
        for t in 1..tl {
            alpha_step(p, lp, b, t, l, prev, cur);
            std::mem::swap(&mut prev, &mut cur);
        }
        *n = -total(prev, l);
    };
    let it = nll.iter_mut().zip(ws.chunks_mut(2 * ext)).enumerate();
    if p.frames * p.batch * ext >= PAR_MIN {
        it.collect::<Vec<_>>().into_par_iter().for_each(one);
    } else {
        it.for_each(one);
    }
}

/// `grad[t, b, c] = −scale_b·γ_t(c)` for t < `input_lengths[b]`, else 0,
/// with `scale_b = g / (B·max(S_b, 1))` (the 'mean' reduction) and 0 for a
/// sample whose nll is not finite. `ws` holds `B·2·T·L` f32 (alpha and
/// beta of every frame), `chain` `B·2·S` i32 (repeated labels).
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Float>(
    lp: &[T],
    p: &Problem,
    nll: &[f32],
    g: f32,
    grad: &mut [T],
    ws: &mut [f32],
    chain: &mut [i32],
) {
    let (ext, frames, s_max) = (p.ext(), p.frames, p.s_max);
    // Phase 1, per sample: alpha and beta of every frame, and for each
    // target position the next one with the same label (−1 at the end of a
    // chain) and whether it is the first of its label.
    let one = |(b, (w, ch)): (usize, (&mut [f32], &mut [i32]))| {
        let (tl, sl) = (p.input_lengths[b], p.target_lengths[b]);
        let l = 2 * sl + 1;
        let (next, first) = ch.split_at_mut(s_max);
        for j in 0..sl {
            let lab = p.targets[b * s_max + j];
            next[j] = (j + 1..sl).find(|&k| p.targets[b * s_max + k] == lab).map_or(-1, |k| k as i32);
            first[j] = (0..j).all(|k| p.targets[b * s_max + k] != lab) as i32;
        }
        if tl == 0 || !nll[b].is_finite() {
            return;
        }
        let (alpha, beta) = w.split_at_mut(frames * ext);
        alpha_init(p, lp, b, l, &mut alpha[..ext]);
        for t in 1..tl {
            let (prev, cur) = alpha[(t - 1) * ext..(t + 1) * ext].split_at_mut(ext);
            alpha_step(p, lp, b, t, l, prev, cur);
        }
        let last = &mut beta[(tl - 1) * ext..tl * ext];
        last[..l].fill(f32::NEG_INFINITY);
        last[l - 1] = p.lp(lp, tl - 1, b, p.label(b, l - 1));
        if l > 1 {
            last[l - 2] = p.lp(lp, tl - 1, b, p.label(b, l - 2));
        }
        for t in (0..tl - 1).rev() {
            let (cur, next) = beta[t * ext..(t + 2) * ext].split_at_mut(ext);
            for s in 0..l {
                let mut v = next[s];
                if s + 1 < l {
                    v = lse(v, next[s + 1]);
                }
                if s + 2 < l && p.skip(b, s + 2) {
                    v = lse(v, next[s + 2]);
                }
                cur[s] = v + p.lp(lp, t, b, p.label(b, s));
            }
        }
    };
    let it = ws.chunks_mut(2 * frames * ext).zip(chain.chunks_mut(2 * s_max.max(1))).enumerate();
    if frames * p.batch * ext >= PAR_MIN {
        it.collect::<Vec<_>>().into_par_iter().for_each(one);
    } else {
        it.for_each(one);
    }
    // Phase 2, per gradient row (t, b).
    let (ws, chain) = (&*ws, &*chain);
    let row = |(r, out): (usize, &mut [T])| {
        let (t, b) = (r / p.batch, r % p.batch);
        let (tl, sl) = (p.input_lengths[b], p.target_lengths[b]);
        out.fill(T::from_f32(0.0));
        if t >= tl || !nll[b].is_finite() {
            return;
        }
        let scale = -g / (p.batch as f32 * sl.max(1) as f32);
        let w = &ws[b * 2 * frames * ext..];
        let (a, be) = (&w[t * ext..(t + 1) * ext], &w[(frames + t) * ext..(frames + t + 1) * ext]);
        let post = |s: usize, c: usize| (a[s] + be[s] - p.lp(lp, t, b, c) + nll[b]).exp();
        let blank: f32 = (0..=sl).map(|j| post(2 * j, p.blank)).sum();
        out[p.blank] = T::from_f32(scale * blank);
        let ch = &chain[b * 2 * s_max.max(1)..];
        for j in 0..sl {
            if ch[s_max + j] == 0 {
                continue; // counted with the first of its label
            }
            let c = p.targets[b * s_max + j] as usize;
            let (mut k, mut acc) = (j as i32, 0f32);
            while k >= 0 {
                acc += post(2 * k as usize + 1, c);
                k = ch[k as usize];
            }
            out[c] = T::from_f32(scale * acc);
        }
    };
    let cols = p.classes.max(1);
    if grad.len() >= PAR_MIN {
        grad.par_chunks_mut(cols).enumerate().for_each(row);
    } else {
        grad.chunks_mut(cols).enumerate().for_each(row);
    }
}
