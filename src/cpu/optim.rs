//! Optimizer updates: elementwise over a parameter, its gradient and its
//! state, in place. f32 master weights and state; the gradient may be any
//! float type. Each element is updated by one worker, so results do not
//! depend on the thread count.

use super::PAR_MIN;
use crate::tensor::Float;
use rayon::prelude::*;

/// SGD with optional momentum (PyTorch semantics, no dampening, no Nesterov):
/// `g += wd·p; buf = μ·buf + g; p -= lr·buf` (or `p -= lr·g` with no buffer).
/// A fresh buffer must be zeros: then the first step sets it to `g`.
pub fn sgd<G: Float>(p: &mut [f32], g: &[G], buf: Option<&mut [f32]>, lr: f32, momentum: f32, weight_decay: f32) {
    match buf {
        None => {
            let chunk = |(p, g): (&mut [f32], &[G])| {
                for (p, g) in p.iter_mut().zip(g) {
                    *p -= lr * (g.to_f32() + weight_decay * *p);
                }
            };
            if p.len() >= PAR_MIN {
                p.par_chunks_mut(PAR_MIN).zip(g.par_chunks(PAR_MIN)).for_each(chunk);
            } else {
                chunk((p, g));
            }
        }
        Some(buf) => {
            let chunk = |((p, g), b): ((&mut [f32], &[G]), &mut [f32])| {
                for ((p, g), b) in p.iter_mut().zip(g).zip(b.iter_mut()) {
                    *b = momentum * *b + g.to_f32() + weight_decay * *p;
                    *p -= lr * *b;
                }
            };
            if p.len() >= PAR_MIN {
                p.par_chunks_mut(PAR_MIN).zip(g.par_chunks(PAR_MIN)).zip(buf.par_chunks_mut(PAR_MIN)).for_each(chunk);
            } else {
                chunk(((p, g), buf));
            }
        }
    }
}

/// Scalars of one AdamW step, derived once per parameter by the caller.
#[derive(Clone, Copy, Debug)]
pub struct AdamStep {
    pub beta1: f32,
    /// `1 - beta1`, rounded from f64 (not computed from the rounded beta1).
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    pub eps: f32,
    /// `1 - lr·weight_decay`: decoupled decay multiplies the weight first.
    pub decay: f32,
    /// `lr / (1 - beta1^t)`.
    pub step_size: f32,
    /// `sqrt(1 - beta2^t)`.
    pub bias2_sqrt: f32,
}

/// AdamW (PyTorch semantics): `p *= decay; m = β1·m + (1-β1)·g;
/// v = β2·v + (1-β2)·g²; p -= step_size · m / (sqrt(v)/bias2_sqrt + eps)`.
pub fn adamw<G: Float>(p: &mut [f32], g: &[G], m: &mut [f32], v: &mut [f32], s: AdamStep) {
    let chunk = |(((p, g), m), v): (((&mut [f32], &[G]), &mut [f32]), &mut [f32])| {
        for (((p, g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let g = g.to_f32();
            *m = s.beta1 * *m + s.one_minus_beta1 * g;
            *v = s.beta2 * *v + s.one_minus_beta2 * g * g;
            *p = *p * s.decay - s.step_size * *m / (v.sqrt() / s.bias2_sqrt + s.eps);
        }
    };
    if p.len() >= PAR_MIN {
        p.par_chunks_mut(PAR_MIN)
            .zip(g.par_chunks(PAR_MIN))
            .zip(m.par_chunks_mut(PAR_MIN))
            .zip(v.par_chunks_mut(PAR_MIN))
            .for_each(chunk);
    } else {
        chunk((((p, g), m), v));
    }
}

/// Σ x² in f64. Partial sums over fixed chunks are added in chunk order, so
/// the result is the same for any thread count.
pub fn sum_squares<T: Float>(x: &[T]) -> f64 {
    let part = |c: &[T]| c.iter().map(|v| (v.to_f32() as f64).powi(2)).sum::<f64>();
    if x.len() >= PAR_MIN {
        let parts: Vec<f64> = x.par_chunks(PAR_MIN).map(part).collect();
        parts.iter().sum()
    } else {
        part(x)
    }
}

/// `x *= s` in place.
pub fn scale<T: Float>(x: &mut [T], s: f32) {
    let chunk = |c: &mut [T]| {
        for v in c {
            *v = T::from_f32(v.to_f32() * s);
        }
    };
    if x.len() >= PAR_MIN {
        x.par_chunks_mut(PAR_MIN).for_each(chunk);
    } else {
        chunk(x);
    }
}
