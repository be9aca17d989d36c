//! LSTM cell kernels: gate nonlinearities and the cell update, forward and
//! backward, row by row (one batch row per worker, so nothing depends on
//! the thread count). Gates are in PyTorch's order i, f, g, o.

use super::PAR_MIN;
use crate::tensor::Float;
use rayon::prelude::*;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Optional bias rows of 4H.
#[derive(Clone, Copy)]
pub struct Biases<'a, T> {
    pub ih: Option<&'a [T]>,
    pub hh: Option<&'a [T]>,
}

/// On entry `gates` `[B, 4H]` holds x·W_ihᵀ; with `gh` = h·W_hhᵀ and the
/// biases that makes the pre-activations. On exit it holds the activated
/// gates (i, f, g, o), and `h_out`, `c_out` `[B, H]` the new state:
/// `c' = f·c + i·g`, `h' = o·tanh(c')`.
pub fn forward<T: Float>(
    gates: &mut [T],
    gh: &[T],
    b: Biases<T>,
    c: &[T],
    hidden: usize,
    h_out: &mut [T],
    c_out: &mut [T],
) {
    let h4 = 4 * hidden;
    if h4 == 0 {
        return;
    }
    type Rows<'a, T> = (usize, ((&'a mut [T], &'a mut [T]), &'a mut [T]));
    let row = |(r, ((gr, ho), co)): Rows<T>| {
        let ghr = &gh[r * h4..(r + 1) * h4];
        let cr = &c[r * hidden..(r + 1) * hidden];
        let pre = |q: usize, j: usize, gr: &[T]| {
            let k = q * hidden + j;
            gr[k].to_f32() + ghr[k].to_f32() + b.ih.map_or(0.0, |v| v[k].to_f32()) + b.hh.map_or(0.0, |v| v[k].to_f32())
        };
        for j in 0..hidden {
            let i = sigmoid(pre(0, j, gr));
            let f = sigmoid(pre(1, j, gr));
            let g = pre(2, j, gr).tanh();
            let o = sigmoid(pre(3, j, gr));
            let cn = f * cr[j].to_f32() + i * g;
            co[j] = T::from_f32(cn);
            ho[j] = T::from_f32(o * cn.tanh());
            for (q, v) in [i, f, g, o].into_iter().enumerate() {
                gr[q * hidden + j] = T::from_f32(v);
            }
        }
    };
    let it = gates.chunks_mut(h4).zip(h_out.chunks_mut(hidden)).zip(c_out.chunks_mut(hidden));
    if gh.len() >= PAR_MIN {
        it.enumerate().collect::<Vec<_>>().into_par_iter().for_each(row);
    } else {
        it.enumerate().for_each(row);
    }
}

/// Gradients of the cell from the activated `gates`, the previous cell
/// state `c` and the output gradients (absent ones are 0): `dgates` gets
/// the pre-activation gradients `[B, 4H]`, `dc_prev` (when asked) `[B, H]`.
/// tanh(c') is recomputed from the gates and c.
pub fn backward<T: Float>(
    gates: &[T],
    c: &[T],
    dh: Option<&[T]>,
    dc: Option<&[T]>,
    hidden: usize,
    dgates: &mut [T],
    dc_prev: Option<&mut [T]>,
) {
    let h4 = 4 * hidden;
    if h4 == 0 {
        return;
    }
    let rows = dgates.len() / h4;
    let dcp: Vec<Option<&mut [T]>> = match dc_prev {
        Some(d) => d.chunks_mut(hidden).map(Some).collect(),
        None => (0..rows).map(|_| None).collect(),
    };
    let row = |(r, (dg, dcp)): (usize, (&mut [T], Option<&mut [T]>))| {
        let gr = &gates[r * h4..(r + 1) * h4];
        let mut dcp = dcp;
        for j in 0..hidden {
            let [i, f, g, o] = [0, 1, 2, 3].map(|q| gr[q * hidden + j].to_f32());
            let k = r * hidden + j;
            let cp = c[k].to_f32();
            let tc = (f * cp + i * g).tanh();
            let dhv = dh.map_or(0.0, |d| d[k].to_f32());
            let dct = dhv * o * (1.0 - tc * tc) + dc.map_or(0.0, |d| d[k].to_f32());
            let d =
                [dct * g * i * (1.0 - i), dct * cp * f * (1.0 - f), dct * i * (1.0 - g * g), dhv * tc * o * (1.0 - o)];
            for (q, v) in d.into_iter().enumerate() {
                dg[q * hidden + j] = T::from_f32(v);
            }
            if let Some(p) = dcp.as_deref_mut() {
                p[j] = T::from_f32(dct * f);
            }
        }
    };
    let it = dgates.chunks_mut(h4).zip(dcp).enumerate();
    if gates.len() >= PAR_MIN {
        it.collect::<Vec<_>>().into_par_iter().for_each(row);
    } else {
        it.for_each(row);
    }
}

// ---- A whole layer over a sequence (one tape node) ----

use super::matmul::{gemm_f32, Layout};

/// Sizes of a sequence layer: batch, steps, input width, hidden width.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub batch: usize,
    pub steps: usize,
    pub input: usize,
    pub hidden: usize,
}

impl Dims {
    /// f32 Workspace elements of [`seq_forward`]: both weights widened, one
    /// step's input, previous state and pre-activations.
    pub fn forward_workspace(&self) -> usize {
        let (b, i, h) = (self.batch, self.input, self.hidden);
        4 * h * (i + h) + b * i + 2 * b * h + 4 * b * h
    }
    /// f32 Workspace elements of [`seq_backward`]: the weights, their
    /// gradients and the bias gradient, and one step's buffers.
    pub fn backward_workspace(&self) -> usize {
        let (b, i, h) = (self.batch, self.input, self.hidden);
        2 * 4 * h * (i + h) + 4 * h + b * i + b * h + 4 * b * h + 3 * b * h
    }
}

/// Processing order of the steps.
fn order(steps: usize, reverse: bool) -> impl Iterator<Item = usize> {
    (0..steps).map(move |k| if reverse { steps - 1 - k } else { k })
}

fn widen<T: Float>(src: &[T], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

/// Rows `r` of a `[B, T, I]` tensor at step `t`, widened into `dst` `[B, I]`.
fn widen_step<T: Float>(x: &[T], d: Dims, t: usize, dst: &mut [f32]) {
    for r in 0..d.batch {
        let at = (r * d.steps + t) * d.input;
        widen(&x[at..at + d.input], &mut dst[r * d.input..(r + 1) * d.input]);
    }
}

/// The layer's forward over all steps, in time order or reversed. Inputs:
/// `x` `[B, T, I]`, weights `[4H, I]` and `[4H, H]`, optional biases and
/// initial state `[B, H]`. Outputs, time-major: the activated gates
/// `[T, B, 4H]`, every step's `h` and `c` `[T, B, H]`. Products run in f32
/// (the operands widened into `ws`, [`Dims::forward_workspace`] elements),
/// one step at a time, so nothing depends on the thread count.
#[allow(clippy::too_many_arguments)]
pub fn seq_forward<T: Float>(
    d: Dims,
    reverse: bool,
    x: &[T],
    w_ih: &[T],
    w_hh: &[T],
    b: Biases<T>,
    state: Option<(&[T], &[T])>,
    gates: &mut [T],
    hs: &mut [T],
    cs: &mut [T],
    ws: &mut [f32],
) {
    let (bt, i, h) = (d.batch, d.input, d.hidden);
    let g4 = 4 * h;
    let (wi, rest) = ws.split_at_mut(g4 * i);
    let (wh, rest) = rest.split_at_mut(g4 * h);
    let (xf, rest) = rest.split_at_mut(bt * i);
    let (hf, rest) = rest.split_at_mut(bt * h);
    let (cf, rest) = rest.split_at_mut(bt * h);
    let pre = &mut rest[..bt * g4];
    widen(w_ih, wi);
    widen(w_hh, wh);
    let bias: Vec<f32> =
        (0..g4).map(|k| b.ih.map_or(0.0, |v| v[k].to_f32()) + b.hh.map_or(0.0, |v| v[k].to_f32())).collect();
    match state {
        Some((h0, c0)) => {
            widen(h0, hf);
            widen(c0, cf);
        }
        None => {
            hf.fill(0.0);
            cf.fill(0.0);
        }
    }
    // Wᵀ read in place: element (k, n) of an [n, k] weight.
    let wt = |k: usize| Layout { offset: 0, rs: 1, cs: k };
    let dense = |cols: usize| Layout { offset: 0, rs: cols, cs: 1 };
    for t in order(d.steps, reverse) {
        widen_step(x, d, t, xf);
        gemm_f32(bt, i, g4, xf, dense(i), wi, wt(i), pre, dense(g4), false);
        gemm_f32(bt, h, g4, hf, dense(h), wh, wt(h), pre, dense(g4), true);
        let (gt, ht, ct) = (&mut gates[t * bt * g4..(t + 1) * bt * g4], &mut hs[t * bt * h..], &mut cs[t * bt * h..]);
        for r in 0..bt {
            for j in 0..h {
                let p = |q: usize| pre[r * g4 + q * h + j] + bias[q * h + j];
                let (ig, fg, gg, og) = (sigmoid(p(0)), sigmoid(p(1)), p(2).tanh(), sigmoid(p(3)));
                let c = fg * cf[r * h + j] + ig * gg;
                let hv = og * c.tanh();
                for (q, v) in [ig, fg, gg, og].into_iter().enumerate() {
                    gt[r * g4 + q * h + j] = T::from_f32(v);
                }
                ht[r * h + j] = T::from_f32(hv);
                ct[r * h + j] = T::from_f32(c);
                // The next step reads the state as stored, as a step-by-step run would.
                hf[r * h + j] = ht[r * h + j].to_f32();
                cf[r * h + j] = ct[r * h + j].to_f32();
            }
        }
    }
}

/// Gradients of [`seq_forward`]. `dy` `[B, T, H]` is the gradient of every
/// step's output (absent = 0), `dh_n`/`dc_n` `[B, H]` of the final state.
/// Writes `dx` `[B, T, I]` and the weight and bias gradients (f32 sums over
/// all steps, stored as T), and the initial state's gradients when asked.
/// Steps run backwards through the processing order; each step's gate
/// gradients are used at once and never stored for the whole sequence.
#[allow(clippy::too_many_arguments)]
pub fn seq_backward<T: Float>(
    d: Dims,
    reverse: bool,
    x: &[T],
    w_ih: &[T],
    w_hh: &[T],
    state: Option<(&[T], &[T])>,
    gates: &[T],
    hs: &[T],
    cs: &[T],
    dy: Option<&[T]>,
    dh_n: Option<&[T]>,
    dc_n: Option<&[T]>,
    grads: SeqGrads<T>,
    ws: &mut [f32],
) {
    let (bt, i, h) = (d.batch, d.input, d.hidden);
    let g4 = 4 * h;
    let (wi, rest) = ws.split_at_mut(g4 * i);
    let (wh, rest) = rest.split_at_mut(g4 * h);
    let (dwi, rest) = rest.split_at_mut(g4 * i);
    let (dwh, rest) = rest.split_at_mut(g4 * h);
    let (db, rest) = rest.split_at_mut(g4);
    let (xf, rest) = rest.split_at_mut(bt * i);
    let (hp, rest) = rest.split_at_mut(bt * h);
    let (dg, rest) = rest.split_at_mut(bt * g4);
    let (dh, rest) = rest.split_at_mut(bt * h);
    let (dc, rest) = rest.split_at_mut(bt * h);
    let dhp = &mut rest[..bt * h];
    widen(w_ih, wi);
    widen(w_hh, wh);
    dwi.fill(0.0);
    dwh.fill(0.0);
    db.fill(0.0);
    match dh_n {
        Some(v) => widen(v, dh),
        None => dh.fill(0.0),
    }
    match dc_n {
        Some(v) => widen(v, dc),
        None => dc.fill(0.0),
    }
    let dense = |cols: usize| Layout { offset: 0, rs: cols, cs: 1 };
    let tr = |cols: usize| Layout { offset: 0, rs: 1, cs: cols };
    let steps: Vec<usize> = order(d.steps, reverse).collect();
    let mut dx = grads.dx;
    for (k, &t) in steps.iter().enumerate().rev() {
        // The state this step started from.
        let prev = if k == 0 { None } else { Some(steps[k - 1]) };
        let c_prev = |r: usize, j: usize| match (prev, state) {
            (Some(p), _) => cs[(p * bt + r) * h + j].to_f32(),
            (None, Some((_, c0))) => c0[r * h + j].to_f32(),
            (None, None) => 0.0,
        };
        for r in 0..bt {
            for j in 0..h {
                hp[r * h + j] = match (prev, state) {
                    (Some(p), _) => hs[(p * bt + r) * h + j].to_f32(),
                    (None, Some((h0, _))) => h0[r * h + j].to_f32(),
                    (None, None) => 0.0,
                };
            }
        }
        let gt = &gates[t * bt * g4..(t + 1) * bt * g4];
        for r in 0..bt {
            for j in 0..h {
                let [ig, fg, gg, og] = [0, 1, 2, 3].map(|q| gt[r * g4 + q * h + j].to_f32());
                let cp = c_prev(r, j);
                let tc = (fg * cp + ig * gg).tanh();
                let dhv = dh[r * h + j] + dy.map_or(0.0, |v| v[(r * d.steps + t) * h + j].to_f32());
                let dct = dhv * og * (1.0 - tc * tc) + dc[r * h + j];
                let row = &mut dg[r * g4..(r + 1) * g4];
                row[j] = dct * gg * ig * (1.0 - ig);
                row[h + j] = dct * cp * fg * (1.0 - fg);
                row[2 * h + j] = dct * ig * (1.0 - gg * gg);
                row[3 * h + j] = dhv * tc * og * (1.0 - og);
                dc[r * h + j] = dct * fg;
            }
        }
        for r in 0..bt {
            for (acc, v) in db.iter_mut().zip(&dg[r * g4..(r + 1) * g4]) {
                *acc += v;
            }
        }
        widen_step(x, d, t, xf);
        // dW_ih += dGᵀ·x_t, dW_hh += dGᵀ·h_prev, dh_prev = dG·W_hh, dx_t = dG·W_ih.
        gemm_f32(g4, bt, i, dg, tr(g4), xf, dense(i), dwi, dense(i), true);
        gemm_f32(g4, bt, h, dg, tr(g4), hp, dense(h), dwh, dense(h), true);
        gemm_f32(bt, g4, h, dg, dense(g4), wh, dense(h), dhp, dense(h), false);
        dh.copy_from_slice(dhp);
        if let Some(dx) = dx.as_deref_mut() {
            gemm_f32(bt, g4, i, dg, dense(g4), wi, dense(i), xf, dense(i), false);
            for r in 0..bt {
                let at = (r * d.steps + t) * i;
                for (o, v) in dx[at..at + i].iter_mut().zip(&xf[r * i..(r + 1) * i]) {
                    *o = T::from_f32(*v);
                }
            }
        }
    }
    let store = |dst: Option<&mut [T]>, src: &[f32]| {
        if let Some(dst) = dst {
            for (o, v) in dst.iter_mut().zip(src) {
                *o = T::from_f32(*v);
            }
        }
    };
    store(grads.w_ih, dwi);
    store(grads.w_hh, dwh);
    store(grads.bias, db);
    store(grads.h0, dh);
    store(grads.c0, dc);
}

/// Where [`seq_backward`] writes; `None` = not wanted.
pub struct SeqGrads<'a, T> {
    pub dx: Option<&'a mut [T]>,
    pub w_ih: Option<&'a mut [T]>,
    pub w_hh: Option<&'a mut [T]>,
    /// One gradient for both biases (they are added, so it is the same).
    pub bias: Option<&'a mut [T]>,
    pub h0: Option<&'a mut [T]>,
    pub c0: Option<&'a mut [T]>,
}
