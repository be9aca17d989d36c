//! Models: the default spoken-digits classifier and the five reference
//! workloads that ran out of memory elsewhere (lip reading, speech
//! recognition, EEG-to-text, text-to-mel, a VQ autoencoder). Each is a plain
//! struct of layers; [`Model`] is the one enum the trainer and the planner
//! hold, and every model answers the same four questions: its loss on a
//! batch, its held-out score, its parameters, and how many repeated blocks
//! it can recompute.

mod asr;
mod digits;
mod eeg;
mod lipread;
mod tts;
mod vqae;

pub use asr::{Asr, AsrConfig};
pub use digits::{Classifier, ClassifierConfig};
pub use eeg::{Eeg, EegConfig};
pub use lipread::{Lipread, LipreadConfig};
pub use tts::{Tts, TtsConfig};
pub use vqae::{Vqae, VqaeConfig};

use crate::alloc::{Arena, Backing};
use crate::autograd::checkpoint;
use crate::error::Result;
use crate::nn::Params;
use crate::ops::AttentionKind;
use crate::rng::Rng;
use crate::tensor::Tensor;
use serde::Serialize;

/// One micro-batch, as every data set hands it to every model. Which fields
/// a model reads depends on its task (see each model's docs).
pub struct Batch {
    /// Inputs: features (float) or token ids (i32), batch first.
    pub x: Tensor,
    /// Valid frames of each sample along the input's time axis.
    pub x_lengths: Vec<usize>,
    /// u8 `[B, T]`, 1 = a padded input frame.
    pub x_mask: Option<Tensor>,
    /// Targets: class ids i32 `[B]`, token ids i32 `[B, S]` (padding is
    /// [`IGNORE`], or blank 0 for CTC), or float frames.
    pub y: Tensor,
    /// Teacher forcing: the targets shifted right by one step (a start
    /// token [`BOS`] or a zero frame first; padding 0).
    pub y_in: Option<Tensor>,
    /// Valid steps of each target.
    pub y_lengths: Vec<usize>,
}

/// Target value that token losses skip.
pub const IGNORE: i32 = -100;
/// Start-of-sequence token of every decoder.
pub const BOS: i32 = 1;

/// A model's architecture and sizes.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "model", rename_all = "snake_case")]
pub enum ModelConfig {
    Digits(ClassifierConfig),
    Lipread(LipreadConfig),
    Asr(AsrConfig),
    Eeg(EegConfig),
    Tts(TtsConfig),
    Vqae(VqaeConfig),
}

impl ModelConfig {
    /// Whether the model has dot-product attention (so the attention
    /// kernel is a choice worth planning).
    pub fn has_attention(&self) -> bool {
        matches!(self, ModelConfig::Digits(_) | ModelConfig::Asr(_) | ModelConfig::Tts(_))
    }
}

/// What evaluation adds up over held-out batches: the metric is `sum / count`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Score {
    pub sum: f64,
    pub count: f64,
}

impl Score {
    pub fn add(&mut self, other: Score) {
        self.sum += other.sum;
        self.count += other.count;
    }
    pub fn value(&self) -> f32 {
        if self.count > 0.0 {
            (self.sum / self.count) as f32
        } else {
            0.0
        }
    }
}

/// Every model the trainer can run.
pub enum Model {
    Digits(Classifier),
    Lipread(Lipread),
    Asr(Asr),
    Eeg(Eeg),
    Tts(Tts),
    Vqae(Vqae),
}

impl Model {
    /// Build `config` with fresh parameters on `arena`.
    pub fn new(arena: &Arena, config: &ModelConfig, rng: &mut Rng) -> Result<Model> {
        Ok(match config {
            ModelConfig::Digits(c) => Model::Digits(Classifier::new(arena, c.clone(), rng)?),
            ModelConfig::Lipread(c) => Model::Lipread(Lipread::new(arena, c.clone(), rng)?),
            ModelConfig::Asr(c) => Model::Asr(Asr::new(arena, c.clone(), rng)?),
            ModelConfig::Eeg(c) => Model::Eeg(Eeg::new(arena, c.clone(), rng)?),
            ModelConfig::Tts(c) => Model::Tts(Tts::new(arena, c.clone(), rng)?),
            ModelConfig::Vqae(c) => Model::Vqae(Vqae::new(arena, c.clone(), rng)?),
        })
    }

    /// The mean training loss of `batch`, shape []. Pass an rng to train
    /// (dropout on); blocks whose `recompute` entry is true keep only their
    /// input for backward and re-run in it.
    pub fn loss(&self, batch: &Batch, rng: Option<&mut Rng>, recompute: &[bool]) -> Result<Tensor> {
        match self {
            Model::Digits(m) => m.forward(&batch.x, rng, recompute)?.cross_entropy(&batch.y, None, 0.0),
            Model::Lipread(m) => m.loss(batch, rng, recompute),
            Model::Asr(m) => m.loss(batch, rng, recompute),
            Model::Eeg(m) => m.loss(batch, rng, recompute),
            Model::Tts(m) => m.loss(batch, rng, recompute),
            Model::Vqae(m) => m.loss(batch, rng, recompute),
        }
    }

    /// The held-out metric's sums over `batch` (call under `no_grad`). On
    /// the meta device the forward allocates as for real and scores zero.
    pub fn score(&self, batch: &Batch) -> Result<Score> {
        match self {
            Model::Digits(m) => m.score(batch),
            Model::Lipread(m) => m.score(batch),
            Model::Asr(m) => m.score(batch),
            Model::Eeg(m) => m.score(batch),
            Model::Tts(m) => m.score(batch),
            Model::Vqae(m) => m.score(batch),
        }
    }

    /// What [`Model::score`] measures, and whether higher is better.
    pub fn metric(&self) -> (&'static str, bool) {
        match self {
            Model::Digits(_) => ("accuracy", true),
            Model::Lipread(_) => ("character_error_rate", false),
            Model::Asr(_) | Model::Eeg(_) => ("token_accuracy", true),
            Model::Tts(_) => ("l1", false),
            Model::Vqae(_) => ("reconstruction_mse", false),
        }
    }

    /// Repeated blocks that a recompute policy can choose from, in forward order.
    pub fn blocks(&self) -> usize {
        match self {
            Model::Digits(m) => m.blocks.len(),
            Model::Lipread(m) => m.blocks(),
            Model::Asr(m) => m.encoder.len() + m.decoder.len(),
            Model::Eeg(m) => m.encoder.len(),
            Model::Tts(m) => m.encoder.len() + m.decoder.len(),
            Model::Vqae(m) => m.encoder.len() + m.decoder.len(),
        }
    }

    pub fn params(&self) -> Params {
        match self {
            Model::Digits(m) => m.params(),
            Model::Lipread(m) => m.params(),
            Model::Asr(m) => m.params(),
            Model::Eeg(m) => m.params(),
            Model::Tts(m) => m.params(),
            Model::Vqae(m) => m.params(),
        }
    }

    pub fn parameter_count(&self) -> usize {
        self.params().iter().map(|(_, t)| t.numel()).sum()
    }

    /// Compute every dot-product attention with `kind`.
    pub fn set_attention(&mut self, kind: AttentionKind) {
        match self {
            Model::Digits(m) => m.set_attention(kind),
            Model::Asr(m) => m.set_attention(kind),
            Model::Tts(m) => m.set_attention(kind),
            Model::Lipread(_) | Model::Eeg(_) | Model::Vqae(_) => {}
        }
    }
}

/// Run one repeated block: directly, or — when `recompute` and training —
/// under [`checkpoint`], so the tape keeps only `inputs` and the block's
/// forward re-runs in backward. `params` are the block's parameters. The
/// block receives its inputs (detached copies under recompute) and the rng.
pub(crate) fn block(
    inputs: &[&Tensor],
    params: Params,
    rng: Option<&mut Rng>,
    recompute: bool,
    f: impl Fn(&[Tensor], Option<&mut Rng>) -> Result<Tensor> + 'static,
) -> Result<Tensor> {
    match rng {
        Some(r) if recompute => {
            let params: Vec<&Tensor> = params.iter().map(|(_, t)| t).collect();
            checkpoint(inputs, &params, r, move |xs, r| f(xs, Some(r)))
        }
        r => {
            let xs: Vec<Tensor> = inputs.iter().map(|t| (*t).clone()).collect();
            f(&xs, r)
        }
    }
}

/// Transformer encoder blocks over `h`; block `i` is recompute unit
/// `first + i`. `mask` (key padding) goes into every block.
pub(crate) fn encoder_stack(
    blocks: &[crate::nn::Block],
    mut h: Tensor,
    mask: Option<&Tensor>,
    mut rng: Option<&mut Rng>,
    recompute: &[bool],
    first: usize,
) -> Result<Tensor> {
    for (i, blk) in blocks.iter().enumerate() {
        let mut params = Vec::new();
        blk.params("", &mut params);
        let blk = blk.clone();
        let again = recompute.get(first + i).copied().unwrap_or(false);
        let mut inputs = vec![&h];
        inputs.extend(mask);
        h = block(&inputs, params, rng.as_deref_mut(), again, move |xs, r| blk.forward(&xs[0], xs.get(1), r))?;
    }
    Ok(h)
}

/// Transformer decoder blocks over `d`, attending to `memory` (whose key
/// padding is `mask`); block `i` is recompute unit `first + i`.
pub(crate) fn decoder_stack(
    blocks: &[crate::nn::DecoderBlock],
    mut d: Tensor,
    memory: &Tensor,
    mask: Option<&Tensor>,
    mut rng: Option<&mut Rng>,
    recompute: &[bool],
    first: usize,
) -> Result<Tensor> {
    for (i, blk) in blocks.iter().enumerate() {
        let mut params = Vec::new();
        blk.params("", &mut params);
        let blk = blk.clone();
        let again = recompute.get(first + i).copied().unwrap_or(false);
        let mut inputs = vec![&d, memory];
        inputs.extend(mask);
        d = block(&inputs, params, rng.as_deref_mut(), again, move |xs, r| blk.forward(&xs[0], &xs[1], xs.get(2), r))?;
    }
    Ok(d)
}

/// Dropout when training (an rng is given and `p > 0`), the identity otherwise.
pub(crate) fn dropout(x: Tensor, p: f32, rng: Option<&mut Rng>) -> Result<Tensor> {
    match rng {
        Some(r) if p > 0.0 => x.dropout(p, r),
        _ => Ok(x),
    }
}

/// Whether `t` lives on the meta device (no values to score).
pub(crate) fn is_meta(t: &Tensor) -> bool {
    t.arena().backing() == Backing::Meta
}

/// Token accuracy of logits `[N, V]` against targets i32 `[N]`, skipping [`IGNORE`].
pub(crate) fn token_accuracy(logits: &Tensor, targets: &Tensor) -> Result<Score> {
    if is_meta(logits) {
        return Ok(Score::default());
    }
    let (v, l, y) = (logits.dim(1), logits.to_vec_f32()?, targets.to_vec::<i32>()?);
    let mut s = Score::default();
    for (i, &t) in y.iter().enumerate() {
        if t == IGNORE {
            continue;
        }
        s.count += 1.0;
        s.sum += (argmax(&l[i * v..(i + 1) * v]) as i32 == t) as u8 as f64;
    }
    Ok(s)
}

pub(crate) fn argmax(row: &[f32]) -> usize {
    (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a))).unwrap_or(0)
}

/// Learned positions `[T, D]` added to `x` `[B, T', D]` for T' ≤ T.
pub(crate) fn add_positions(x: &Tensor, positions: &Tensor, op: &'static str) -> Result<Tensor> {
    let t = x.dim(1);
    if t > positions.dim(0) {
        return Err(crate::error::Error::shape(
            op,
            format!("input {:?} is longer than the {} positions the model has", x.shape(), positions.dim(0)),
        ));
    }
    x.add(&positions.slice(0, 0, t)?.to_dtype(x.dtype())?)
}
