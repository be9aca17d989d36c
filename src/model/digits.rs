//! The default model: a small transformer encoder that classifies sequences
//! of feature frames (log-mel spectrograms of spoken words).

use super::{encoder_stack, is_meta, Batch, Score};
use crate::alloc::Arena;
use crate::error::{Error, Result};
use crate::nn::{Block, LayerNorm, Linear, Params};
use crate::ops::AttentionKind;
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ClassifierConfig {
    pub frames: usize,
    pub features: usize,
    pub classes: usize,
    pub dim: usize,
    pub layers: usize,
    pub heads: usize,
    pub hidden: usize,
    pub dropout: f32,
}

/// Frames → linear projection + learned positions → pre-norm transformer
/// blocks → final norm → mean over time → class logits.
pub struct Classifier {
    pub config: ClassifierConfig,
    pub input: Linear,
    pub positions: Tensor,
    pub blocks: Vec<Block>,
    pub norm: LayerNorm,
    pub head: Linear,
}

impl Classifier {
    pub fn new(arena: &Arena, config: ClassifierConfig, rng: &mut Rng) -> Result<Classifier> {
        let c = &config;
        let input = Linear::new(arena, c.features, c.dim, true, rng)?;
        let positions = Tensor::randn(arena, &[c.frames, c.dim], 0.02, DType::F32, crate::alloc::Tag::Parameter, rng)?
            .requires_grad();
        let blocks = (0..c.layers)
            .map(|_| Block::new(arena, c.dim, c.heads, c.hidden, c.dropout, rng))
            .collect::<Result<_>>()?;
        let norm = LayerNorm::new(arena, c.dim)?;
        let head = Linear::new(arena, c.dim, c.classes, true, rng)?;
        Ok(Classifier { config, input, positions, blocks, norm, head })
    }

    /// Logits `[B, classes]` for inputs `[B, frames, features]`. Pass an rng
    /// to train (dropout on), `None` to evaluate. Blocks whose entry in
    /// `recompute` is true keep only their input for backward and re-run
    /// in it (`autograd::checkpoint`).
    pub fn forward(&self, x: &Tensor, rng: Option<&mut Rng>, recompute: &[bool]) -> Result<Tensor> {
        let c = &self.config;
        if x.rank() != 3 || x.dim(1) != c.frames || x.dim(2) != c.features {
            return Err(Error::shape(
                "classifier",
                format!("input {:?}, expected [batch, {}, {}]", x.shape(), c.frames, c.features),
            ));
        }
        let h = self.input.forward(x)?.add(&self.positions.to_dtype(x.dtype())?)?;
        let h = encoder_stack(&self.blocks, h, None, rng, recompute, 0)?;
        let pooled = self.norm.forward(&h)?.mean(&[1], false)?;
        self.head.forward(&pooled)
    }

    /// Correct predictions of a batch's labels.
    pub fn score(&self, batch: &Batch) -> Result<Score> {
        let logits = self.forward(&batch.x, None, &[])?;
        if is_meta(&logits) {
            return Ok(Score::default());
        }
        let (c, l, y) = (logits.dim(1), logits.to_vec_f32()?, batch.y.to_vec::<i32>()?);
        let correct = y.iter().enumerate().filter(|&(i, &t)| super::argmax(&l[i * c..(i + 1) * c]) as i32 == t).count();
        Ok(Score { sum: correct as f64, count: y.len() as f64 })
    }

    /// Compute every block's attention with `kind` (Fused by default).
    pub fn set_attention(&mut self, kind: AttentionKind) {
        for b in &mut self.blocks {
            b.attn.kind = kind;
        }
    }

    /// The attention kind of the blocks (Fused when there are none).
    pub fn attention(&self) -> AttentionKind {
        self.blocks.first().map_or(AttentionKind::default(), |b| b.attn.kind)
    }

    pub fn params(&self) -> Params {
        let mut out = Vec::new();
        self.input.params("input.", &mut out);
        out.push(("positions".to_string(), self.positions.clone()));
        for (i, b) in self.blocks.iter().enumerate() {
            b.params(&format!("blocks.{i}."), &mut out);
        }
        self.norm.params("norm.", &mut out);
        self.head.params("head.", &mut out);
        out
    }

    pub fn parameter_count(&self) -> usize {
        self.params().iter().map(|(_, t)| t.numel()).sum()
    }
}
