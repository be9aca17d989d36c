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
