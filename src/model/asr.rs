//! Speech recognition as sequence to sequence (the `asr` presets): log-mel
//! frames → two stride-2 convolutions (×4 subsampling in time and
//! frequency, as ESPnet's Conv2dSubsampling) → a transformer encoder; a
//! causal transformer decoder with cross-attention reads the target tokens
//! shifted right and predicts the next one (cross-entropy, padding ignored).
//!
//! Batch: `x` `[B, T, mels]`, `x_lengths`, `y` i32 `[B, S]` (padding
//! [`IGNORE`]), `y_in` i32 `[B, S]` (BOS first, padding 0).

use super::{add_positions, decoder_stack, dropout, encoder_stack, token_accuracy, Batch, Score, IGNORE};
use crate::alloc::{Arena, Tag};
use crate::error::{Error, Result};
use crate::nn::{Block, Conv, ConvKind, DecoderBlock, Embedding, LayerNorm, Linear, Params};
use crate::ops::AttentionKind;
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AsrConfig {
    pub mels: usize,
    /// Longest input, in frames.
    pub frames: usize,
    pub dim: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub heads: usize,
    pub ffn: usize,
    pub vocab: usize,
    /// Longest target, in tokens.
    pub target_len: usize,
    pub dropout: f32,
}

impl AsrConfig {
    /// Frames after the ×4 subsampling: two convolutions of kernel 3, stride 2.
    pub fn subsampled(n: usize) -> usize {
        let once = |n: usize| if n < 3 { 0 } else { (n - 3) / 2 + 1 };
        once(once(n))
    }
}

pub struct Asr {
    pub config: AsrConfig,
    pub conv1: Conv,
    pub conv2: Conv,
    pub input: Linear,
    pub enc_positions: Tensor,
    pub encoder: Vec<Block>,
    pub enc_norm: LayerNorm,
    pub embed: Embedding,
    pub dec_positions: Tensor,
    pub decoder: Vec<DecoderBlock>,
    pub dec_norm: LayerNorm,
    pub head: Linear,
}

impl Asr {
    pub fn new(arena: &Arena, config: AsrConfig, rng: &mut Rng) -> Result<Asr> {
        let c = &config;
        let (t, f) = (AsrConfig::subsampled(c.frames), AsrConfig::subsampled(c.mels));
        if t == 0 || f == 0 {
            return Err(Error::invalid(
                "asr",
                format!(
                    "{} frames of {} mels are too few for ×4 subsampling (need at least 7 of each)",
                    c.frames, c.mels
                ),
            ));
        }
        let pos = |n: usize, rng: &mut Rng| -> Result<Tensor> {
            Ok(Tensor::randn(arena, &[n, c.dim], 0.02, DType::F32, Tag::Parameter, rng)?.requires_grad())
        };
        Ok(Asr {
            conv1: Conv::new(arena, ConvKind::Conv2d, 1, c.dim, 3, 2, 0, rng)?,
            conv2: Conv::new(arena, ConvKind::Conv2d, c.dim, c.dim, 3, 2, 0, rng)?,
            input: Linear::new(arena, c.dim * f, c.dim, true, rng)?,
            enc_positions: pos(t, rng)?,
            encoder: (0..c.encoder_layers)
                .map(|_| Block::new(arena, c.dim, c.heads, c.ffn, c.dropout, rng))
                .collect::<Result<_>>()?,
            enc_norm: LayerNorm::new(arena, c.dim)?,
            embed: Embedding::new(arena, c.vocab, c.dim, rng)?,
            dec_positions: pos(c.target_len, rng)?,
            decoder: (0..c.decoder_layers)
                .map(|_| DecoderBlock::new(arena, c.dim, c.heads, c.ffn, c.dropout, rng))
                .collect::<Result<_>>()?,
            dec_norm: LayerNorm::new(arena, c.dim)?,
            head: Linear::new(arena, c.dim, c.vocab, true, rng)?,
            config,
        })
    }

    /// Logits `[B·S, vocab]` for the batch's teacher-forced targets.
    fn logits(&self, batch: &Batch, mut rng: Option<&mut Rng>, recompute: &[bool]) -> Result<Tensor> {
        let c = &self.config;
        let x = &batch.x;
        if x.rank() != 3 || x.dim(2) != c.mels || x.dim(1) > c.frames {
            return Err(Error::shape("asr", format!("input {:?}: need [B, ≤{}, {}]", x.shape(), c.frames, c.mels)));
        }
        let y_in =
            batch.y_in.as_ref().ok_or_else(|| Error::invalid("asr", "the batch has no decoder inputs (y_in)"))?;
        let (b, t) = (x.dim(0), x.dim(1));
        // [B, 1, T, F] → [B, C, T', F'] → [B, T', C·F'] → [B, T', D]
        let h = self.conv2.forward(&self.conv1.forward(&x.unsqueeze(1)?)?.relu()?)?.relu()?;
        let (tt, ff) = (h.dim(2), h.dim(3));
        let h = h.permute(&[0, 2, 1, 3])?.reshape(&[b, tt, c.dim * ff])?;
        let h = dropout(
            add_positions(&self.input.forward(&h)?, &self.enc_positions, "asr")?,
            c.dropout,
            rng.as_deref_mut(),
        )?;
        let mask = subsampled_mask(x, &batch.x_lengths, t, tt)?;
        let h = encoder_stack(&self.encoder, h, Some(&mask), rng.as_deref_mut(), recompute, 0)?;
        let memory = self.enc_norm.forward(&h)?;
        let s = y_in.dim(1);
        let mut d = add_positions(&self.embed.forward(y_in, x.dtype())?, &self.dec_positions, "asr")?;
        d = dropout(d, c.dropout, rng.as_deref_mut())?;
        let d = decoder_stack(&self.decoder, d, &memory, Some(&mask), rng, recompute, self.encoder.len())?;
        self.head.forward(&self.dec_norm.forward(&d)?)?.reshape(&[b * s, c.vocab])
    }

    pub fn loss(&self, batch: &Batch, rng: Option<&mut Rng>, recompute: &[bool]) -> Result<Tensor> {
        let logits = self.logits(batch, rng, recompute)?;
        logits.cross_entropy(&batch.y.reshape(&[logits.dim(0)])?, Some(IGNORE), 0.0)
    }

    pub fn score(&self, batch: &Batch) -> Result<Score> {
        let logits = self.logits(batch, None, &[])?;
        token_accuracy(&logits, &batch.y.reshape(&[logits.dim(0)])?)
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
        self.conv1.params("conv1.", &mut out);
        self.conv2.params("conv2.", &mut out);
        self.input.params("input.", &mut out);
        out.push(("enc_positions".into(), self.enc_positions.clone()));
        for (i, b) in self.encoder.iter().enumerate() {
            b.params(&format!("encoder.{i}."), &mut out);
        }
        self.enc_norm.params("enc_norm.", &mut out);
        self.embed.params("embed.", &mut out);
        out.push(("dec_positions".into(), self.dec_positions.clone()));
        for (i, b) in self.decoder.iter().enumerate() {
            b.params(&format!("decoder.{i}."), &mut out);
        }
        self.dec_norm.params("dec_norm.", &mut out);
        self.head.params("head.", &mut out);
        out
    }
}

/// The key-padding mask u8 `[B, T']` of subsampled frames: frame j of a
/// sample with `len` input frames is padded when j ≥ subsampled(len).
pub(crate) fn subsampled_mask(like: &Tensor, lengths: &[usize], t: usize, tt: usize) -> Result<Tensor> {
    let b = like.dim(0);
    let lengths: Vec<usize> = if lengths.len() == b { lengths.to_vec() } else { vec![t; b] };
    let mut m = vec![0u8; b * tt];
    for (i, &len) in lengths.iter().enumerate() {
        // At least one visible frame per row, so attention never sees an empty row.
        let valid = AsrConfig::subsampled(len.min(t)).clamp(1, tt);
        m[i * tt + valid..(i + 1) * tt].fill(1);
    }
    Tensor::from_slice(like.arena(), &[b, tt], &m, Tag::Data)
}
