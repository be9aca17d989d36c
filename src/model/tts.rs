//! Text to mel spectrogram (the `tts` presets, an XTTS-like transformer):
//! text tokens → embedding + positions → transformer encoder; mel frames
//! shifted right by one → linear + positions → causal transformer decoder
//! with cross-attention to the text → linear to mels, L1 loss against the
//! target frames.
//!
//! Batch: `x` i32 `[B, text_len]` (padding 0, `x_mask` marks it), `y`
//! `[B, frames, mels]`, `y_in` the same frames shifted right (a zero frame
//! first), in the compute dtype.

use super::{add_positions, decoder_stack, dropout, encoder_stack, is_meta, Batch, Score};
use crate::alloc::{Arena, Tag};
use crate::error::{Error, Result};
use crate::nn::{Block, DecoderBlock, Embedding, LayerNorm, Linear, Params};
use crate::ops::AttentionKind;
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TtsConfig {
    pub vocab: usize,
    pub text_len: usize,
    pub mels: usize,
    pub frames: usize,
    pub dim: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub heads: usize,
    pub ffn: usize,
    pub dropout: f32,
}

pub struct Tts {
    pub config: TtsConfig,
    pub embed: Embedding,
    pub text_positions: Tensor,
    pub encoder: Vec<Block>,
    pub enc_norm: LayerNorm,
    pub prenet: Linear,
    pub mel_positions: Tensor,
    pub decoder: Vec<DecoderBlock>,
    pub dec_norm: LayerNorm,
    pub head: Linear,
}

impl Tts {
    pub fn new(arena: &Arena, config: TtsConfig, rng: &mut Rng) -> Result<Tts> {
        let c = &config;
        let pos = |n: usize, rng: &mut Rng| -> Result<Tensor> {
            Ok(Tensor::randn(arena, &[n, c.dim], 0.02, DType::F32, Tag::Parameter, rng)?.requires_grad())
        };
        Ok(Tts {
            embed: Embedding::new(arena, c.vocab, c.dim, rng)?,
            text_positions: pos(c.text_len, rng)?,
            encoder: (0..c.encoder_layers)
                .map(|_| Block::new(arena, c.dim, c.heads, c.ffn, c.dropout, rng))
                .collect::<Result<_>>()?,
            enc_norm: LayerNorm::new(arena, c.dim)?,
            prenet: Linear::new(arena, c.mels, c.dim, true, rng)?,
            mel_positions: pos(c.frames, rng)?,
            decoder: (0..c.decoder_layers)
                .map(|_| DecoderBlock::new(arena, c.dim, c.heads, c.ffn, c.dropout, rng))
                .collect::<Result<_>>()?,
            dec_norm: LayerNorm::new(arena, c.dim)?,
            head: Linear::new(arena, c.dim, c.mels, true, rng)?,
            config,
        })
    }

    /// Predicted frames `[B, frames, mels]`.
    fn predict(&self, batch: &Batch, mut rng: Option<&mut Rng>, recompute: &[bool]) -> Result<Tensor> {
        let c = &self.config;
        let y_in =
            batch.y_in.as_ref().ok_or_else(|| Error::invalid("tts", "the batch has no decoder inputs (y_in)"))?;
        if batch.x.rank() != 2 || y_in.rank() != 3 || y_in.dim(2) != c.mels || y_in.dim(0) != batch.x.dim(0) {
            return Err(Error::shape(
                "tts",
                format!(
                    "text {:?} and frames {:?}: need [B, ≤{}] and [B, ≤{}, {}]",
                    batch.x.shape(),
                    y_in.shape(),
                    c.text_len,
                    c.frames,
                    c.mels
                ),
            ));
        }
        let dtype = y_in.dtype();
        let mask = batch.x_mask.clone();
        let mut h = add_positions(&self.embed.forward(&batch.x, dtype)?, &self.text_positions, "tts")?;
        h = dropout(h, c.dropout, rng.as_deref_mut())?;
        let h = encoder_stack(&self.encoder, h, mask.as_ref(), rng.as_deref_mut(), recompute, 0)?;
        let memory = self.enc_norm.forward(&h)?;
        let mut d = add_positions(&self.prenet.forward(y_in)?, &self.mel_positions, "tts")?;
        d = dropout(d, c.dropout, rng.as_deref_mut())?;
        let d = decoder_stack(&self.decoder, d, &memory, mask.as_ref(), rng, recompute, self.encoder.len())?;
        self.head.forward(&self.dec_norm.forward(&d)?)
    }

    pub fn loss(&self, batch: &Batch, rng: Option<&mut Rng>, recompute: &[bool]) -> Result<Tensor> {
        self.predict(batch, rng, recompute)?.l1_loss(&batch.y)
    }

    /// Summed L1 error over every predicted value.
    pub fn score(&self, batch: &Batch) -> Result<Score> {
        let loss = self.predict(batch, None, &[])?.l1_loss(&batch.y)?;
        if is_meta(&loss) {
            return Ok(Score::default());
        }
        let n = batch.y.numel() as f64;
        Ok(Score { sum: loss.item()? as f64 * n, count: n })
    }

    pub fn set_attention(&mut self, kind: AttentionKind) {
        for b in &mut self.encoder {
            b.attn.kind = kind;
        }
        for b in &mut self.decoder {
            b.attn.kind = kind;
            b.cross.kind = kind;
        }
    }

    pub fn params(&self) -> Params {
        let mut out = Vec::new();
        self.embed.params("embed.", &mut out);
        out.push(("text_positions".into(), self.text_positions.clone()));
        for (i, b) in self.encoder.iter().enumerate() {
            b.params(&format!("encoder.{i}."), &mut out);
        }
        self.enc_norm.params("enc_norm.", &mut out);
        self.prenet.params("prenet.", &mut out);
        out.push(("mel_positions".into(), self.mel_positions.clone()));
        for (i, b) in self.decoder.iter().enumerate() {
            b.params(&format!("decoder.{i}."), &mut out);
        }
        self.dec_norm.params("dec_norm.", &mut out);
        self.head.params("head.", &mut out);
        out
    }
}
