//! Synthetic data with the shapes of every preset, so each can be planned
//! and trained with no download. A sample is a pure function of (seed,
//! index): nothing is stored, any sample is made when its batch is, and
//! train and held-out samples are different indices of one task.
//!
//! The tasks are learnable, not noise: each token (character, word, text
//! symbol) has a fixed random template, and an input is its target's
//! templates laid out over time plus noise; so a model that learns the
//! templates generalises to held-out samples.

use crate::alloc::{Arena, Backing, Tag};
use crate::error::Result;
use crate::model::{AsrConfig, Batch, EegConfig, LipreadConfig, ModelConfig, TtsConfig, VqaeConfig, BOS, IGNORE};
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};

/// Samples `[offset, offset + n)` of the synthetic task of a model.
#[derive(Clone, Debug)]
pub struct Synthetic {
    pub model: ModelConfig,
    pub n: usize,
    pub offset: usize,
    pub seed: u64,
}

/// Seed of the templates: fixed, so every split of a task shares them.
const TASK_SEED: u64 = 0x5EED_7A5C;

impl Synthetic {
    pub fn batch(&self, arena: &Arena, idx: &[usize], dtype: DType) -> Result<Batch> {
        let meta = arena.backing() == Backing::Meta;
        let rng = |i: usize| Rng::new(self.seed).fork((self.offset + i) as u64 + 1);
        match &self.model {
            ModelConfig::Digits(_) => unreachable!("the digits preset reads the embedded data set"),
            ModelConfig::Lipread(c) => lipread(c, arena, idx, dtype, meta, rng),
            ModelConfig::Asr(c) => asr(c, arena, idx, dtype, meta, rng),
            ModelConfig::Eeg(c) => eeg(c, arena, idx, dtype, meta, rng),
            ModelConfig::Tts(c) => tts(c, arena, idx, dtype, meta, rng),
            ModelConfig::Vqae(c) => vqae(c, arena, idx, dtype, meta, rng),
        }
    }
}

/// A float Data tensor; `fill` runs only when there is memory to fill.
fn floats(arena: &Arena, shape: &[usize], dtype: DType, meta: bool, fill: impl FnOnce() -> Vec<f32>) -> Result<Tensor> {
    if meta {
        return Tensor::empty(arena, shape, dtype, Tag::Data, "from_f32");
    }
    Tensor::from_f32(arena, shape, &fill(), dtype, Tag::Data)
}

fn ints(arena: &Arena, shape: &[usize], values: &[i32], meta: bool) -> Result<Tensor> {
    if meta {
        return Tensor::empty(arena, shape, DType::I32, Tag::Data, "from_slice");
    }
    Tensor::from_slice(arena, shape, values, Tag::Data)
}

fn mask(arena: &Arena, b: usize, t: usize, lengths: &[usize]) -> Result<Tensor> {
    let mut m = vec![0u8; b * t];
    for (i, &len) in lengths.iter().enumerate() {
        m[i * t + len.min(t)..(i + 1) * t].fill(1);
    }
    Tensor::from_slice(arena, &[b, t], &m, Tag::Data)
}

/// `n` uniform values in [-1, 1) from the task's template stream `stream`.
fn template(stream: u64, n: usize) -> Vec<f32> {
    let mut r = Rng::new(TASK_SEED).fork(stream);
    (0..n).map(|_| r.uniform() * 2.0 - 1.0).collect()
}

/// A random token sequence: length in [lo, hi], tokens in [first, vocab).
fn tokens(r: &mut Rng, lo: usize, hi: usize, first: usize, vocab: usize) -> Vec<i32> {
    let len = lo + r.below(hi - lo + 1);
    (0..len).map(|_| (first + r.below(vocab - first)) as i32).collect()
}

/// Padded targets and teacher-forcing inputs `[B, S]` for token sequences.
fn token_targets(arena: &Arena, seqs: &[Vec<i32>], s: usize, meta: bool) -> Result<(Tensor, Tensor, Vec<usize>)> {
    let b = seqs.len();
    let (mut y, mut y_in) = (vec![IGNORE; b * s], vec![0; b * s]);
    for (i, q) in seqs.iter().enumerate() {
        for (j, &t) in q.iter().enumerate().take(s) {
            y[i * s + j] = t;
            y_in[i * s + j] = if j == 0 { BOS } else { q[j - 1] };
        }
    }
    let lengths = seqs.iter().map(|q| q.len().min(s)).collect();
    Ok((ints(arena, &[b, s], &y, meta)?, ints(arena, &[b, s], &y_in, meta)?, lengths))
}

fn lipread(
    c: &LipreadConfig,
    arena: &Arena,
    idx: &[usize],
    dtype: DType,
    meta: bool,
    rng: impl Fn(usize) -> Rng,
) -> Result<Batch> {
    let (b, t, side) = (idx.len(), c.frames, c.size);
    // Each character is a 4×4 pattern per colour, blown up to the frame.
    const GRID: usize = 4;
    let templates = template(1, c.chars * 3 * GRID * GRID);
    let max_s = (t / 4).max(1);
    let seqs: Vec<Vec<i32>> = idx.iter().map(|&i| tokens(&mut rng(i), (t / 6).max(1), max_s, 1, c.chars)).collect();
    let x = floats(arena, &[b, 3, t, side, side], dtype, meta, || {
        let mut v = vec![0.0; b * 3 * t * side * side];
        for (bi, (&i, seq)) in idx.iter().zip(&seqs).enumerate() {
            let mut r = rng(i).fork(7);
            for f in 0..t {
                let ch = seq[f * seq.len() / t] as usize;
                for col in 0..3 {
                    let base = ((bi * 3 + col) * t + f) * side * side;
                    for y in 0..side {
                        for x in 0..side {
                            let cell = (y * GRID / side) * GRID + x * GRID / side;
                            v[base + y * side + x] = templates[(ch * 3 + col) * GRID * GRID + cell] + 0.2 * r.normal();
                        }
                    }
                }
            }
        }
        v
    })?;
    let mut y = vec![0; b * max_s];
    for (i, q) in seqs.iter().enumerate() {
        y[i * max_s..i * max_s + q.len()].copy_from_slice(q);
    }
    Ok(Batch {
        x,
        x_lengths: vec![t; b],
        x_mask: None,
        y: ints(arena, &[b, max_s], &y, meta)?,
        y_in: None,
        y_lengths: seqs.iter().map(Vec::len).collect(),
    })
}

fn asr(
    c: &AsrConfig,
    arena: &Arena,
    idx: &[usize],
    dtype: DType,
    meta: bool,
    rng: impl Fn(usize) -> Rng,
) -> Result<Batch> {
    let (b, t, m, s) = (idx.len(), c.frames, c.mels, c.target_len);
    let templates = template(2, c.vocab * m);
    let mut lengths = Vec::with_capacity(b);
    let mut seqs = Vec::with_capacity(b);
    for &i in idx {
        let mut r = rng(i);
        lengths.push(t * 3 / 4 + r.below(t / 4 + 1));
        seqs.push(tokens(&mut r, (s / 2).max(1), s, 2, c.vocab));
    }
    let x = floats(arena, &[b, t, m], dtype, meta, || {
        let mut v = vec![0.0; b * t * m];
        for (bi, (&i, seq)) in idx.iter().zip(&seqs).enumerate() {
            let mut r = rng(i).fork(7);
            let len = lengths[bi];
            for f in 0..len {
                let tok = seq[f * seq.len() / len] as usize;
                for k in 0..m {
                    v[(bi * t + f) * m + k] = templates[tok * m + k] + 0.3 * r.normal();
                }
            }
        }
        v
    })?;
    let (y, y_in, y_lengths) = token_targets(arena, &seqs, s, meta)?;
    Ok(Batch { x, x_mask: Some(mask(arena, b, t, &lengths)?), x_lengths: lengths, y, y_in: Some(y_in), y_lengths })
}

fn eeg(
    c: &EegConfig,
    arena: &Arena,
    idx: &[usize],
    dtype: DType,
    meta: bool,
    rng: impl Fn(usize) -> Rng,
) -> Result<Batch> {
    let (b, ch, t, s) = (idx.len(), c.channels, c.steps, c.target_len);
    // Each word drives every channel at its own amplitude and frequency.
    let amp = template(3, c.vocab * ch);
    let freq = template(4, c.vocab * ch);
    let seqs: Vec<Vec<i32>> = idx.iter().map(|&i| tokens(&mut rng(i), s, s, 2, c.vocab)).collect();
    let x = floats(arena, &[b, ch, t], dtype, meta, || {
        let mut v = vec![0.0; b * ch * t];
        for (bi, (&i, seq)) in idx.iter().zip(&seqs).enumerate() {
            let mut r = rng(i).fork(7);
            for k in 0..ch {
                for step in 0..t {
                    let w = seq[step * s / t] as usize;
                    let f = 0.05 + 0.2 * (freq[w * ch + k] + 1.0);
                    v[(bi * ch + k) * t + step] = amp[w * ch + k] * (f * step as f32).sin() + 0.3 * r.normal();
                }
            }
        }
        v
    })?;
    let (y, y_in, y_lengths) = token_targets(arena, &seqs, s, meta)?;
    Ok(Batch { x, x_lengths: vec![t; b], x_mask: None, y, y_in: Some(y_in), y_lengths })
}

fn tts(
    c: &TtsConfig,
    arena: &Arena,
    idx: &[usize],
    dtype: DType,
    meta: bool,
    rng: impl Fn(usize) -> Rng,
) -> Result<Batch> {
    let (b, tl, m, fr) = (idx.len(), c.text_len, c.mels, c.frames);
    let per = (fr / tl).max(1);
    let templates = template(5, c.vocab * m);
    let seqs: Vec<Vec<i32>> = idx.iter().map(|&i| tokens(&mut rng(i), (tl * 3 / 5).max(1), tl, 2, c.vocab)).collect();
    let mut text = vec![0; b * tl];
    for (i, q) in seqs.iter().enumerate() {
        text[i * tl..i * tl + q.len()].copy_from_slice(q);
    }
    let frames = |bi: usize, f: usize, k: usize| -> f32 {
        let q = &seqs[bi];
        match q.get(f / per) {
            Some(&tok) if f / per < q.len() => {
                templates[tok as usize * m + k] * (1.0 - 0.5 * (f % per) as f32 / per as f32)
            }
            _ => 0.0,
        }
    };
    let y = floats(arena, &[b, fr, m], dtype, meta, || {
        (0..b * fr * m).map(|e| frames(e / (fr * m), e / m % fr, e % m)).collect()
    })?;
    let y_in = floats(arena, &[b, fr, m], dtype, meta, || {
        (0..b * fr * m)
            .map(|e| match e / m % fr {
                0 => 0.0,
                f => frames(e / (fr * m), f - 1, e % m),
            })
            .collect()
    })?;
    let lengths: Vec<usize> = seqs.iter().map(Vec::len).collect();
    Ok(Batch {
        x: ints(arena, &[b, tl], &text, meta)?,
        x_mask: Some(mask(arena, b, tl, &lengths)?),
        x_lengths: lengths.clone(),
        y,
        y_in: Some(y_in),
        y_lengths: lengths.iter().map(|l| (l * per).min(fr)).collect(),
    })
}

fn vqae(
    c: &VqaeConfig,
    arena: &Arena,
    idx: &[usize],
    dtype: DType,
    meta: bool,
    rng: impl Fn(usize) -> Rng,
) -> Result<Batch> {
    let (b, p, s) = (idx.len(), c.patches, c.patch);
    // Spectrogram-like patches: a few harmonic stripes that drift, and blobs.
    let x = floats(arena, &[b, p, 1, s, s], dtype, meta, || {
        let mut v = Vec::with_capacity(b * p * s * s);
        for &i in idx {
            let mut r = rng(i);
            for _ in 0..p {
                let f0 = 2.0 + 6.0 * r.uniform();
                let slope = r.uniform() - 0.5;
                let (cy, cx, w) = (r.uniform() * s as f32, r.uniform() * s as f32, 2.0 + 6.0 * r.uniform());
                for y in 0..s {
                    for x in 0..s {
                        let (yf, xf) = (y as f32, x as f32);
                        let stripe = (yf / f0 + slope * xf / s as f32 * 4.0).fract();
                        let harmonic = if stripe < 0.3 { 0.6 } else { 0.0 };
                        let blob = (-((yf - cy).powi(2) + (xf - cx).powi(2)) / (2.0 * w * w)).exp();
                        v.push(harmonic + 0.5 * blob + 0.05 * r.normal());
                    }
                }
            }
        }
        v
    })?;
    Ok(Batch { y: x.clone(), x, x_lengths: vec![], x_mask: None, y_in: None, y_lengths: vec![] })
}
