//! Dropout masks regenerated from a seed instead of stored.

use super::PAR_MIN;
use crate::rng::Rng;
use crate::tensor::Float;
use rayon::prelude::*;

/// Elements per mask chunk. Chunk c draws from `Rng::new(seed).fork(c)`, so
/// the mask depends on the seed only, not on how chunks meet threads.
pub const CHUNK: usize = 4096;

/// `out = x·scale` where the mask keeps an element (its draw is ≥ p), else
/// 0, with scale = 1/(1 − p). Forward and backward call it with one seed.
pub fn dropout<T: Float>(x: &[T], seed: u64, p: f32, out: &mut [T]) {
    let scale = 1.0 / (1.0 - p);
    let base = Rng::new(seed);
    let chunk = |(c, (o, x)): (usize, (&mut [T], &[T]))| {
        let mut r = base.fork(c as u64);
        for (o, v) in o.iter_mut().zip(x) {
            *o = T::from_f32(if r.uniform() >= p { v.to_f32() * scale } else { 0.0 });
        }
    };
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).enumerate().for_each(chunk);
    } else {
        out.chunks_mut(CHUNK).zip(x.chunks(CHUNK)).enumerate().for_each(chunk);
    }
}
