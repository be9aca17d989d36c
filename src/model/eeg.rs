//! EEG to text (the `eeg` presets), sequence to sequence with recurrent
//! layers: EEG `[B, channels, steps]` → a stack of (bidirectional) LSTM
//! layers over time → an LSTM decoder that, at every target step, attends
//! to the encoder's outputs with additive (Bahdanau) attention, takes the
//! previous word's embedding and the context, and predicts the next word.
//!
//! Batch: `x` `[B, channels, steps]`, `y` i32 `[B, S]` (padding
//! [`IGNORE`]), `y_in` i32 `[B, S]` (BOS first, padding 0).

use super::{block, token_accuracy, Batch, Score, IGNORE};
use crate::alloc::{Arena, Tag};
use crate::error::{Error, Result};
use crate::nn::{Additive, Embedding, Linear, LstmLayer, Params};
use crate::ops::LstmParams;
use crate::rng::Rng;
use crate::tensor::Tensor;

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct EegConfig {
    pub channels: usize,
    pub steps: usize,
    pub encoder_layers: usize,
    pub encoder_hidden: usize,
    pub bidirectional: bool,
    pub decoder_hidden: usize,
    pub embedding: usize,
    pub attention: usize,
    pub vocab: usize,
    pub target_len: usize,
}

pub struct Eeg {
    pub config: EegConfig,
    pub encoder: Vec<LstmLayer>,
    pub embed: Embedding,
    pub attention: Additive,
    /// The decoder cell, input = [embedding, context].
    pub decoder: LstmLayer,
    /// [h, context] → words.
    pub head: Linear,
}

impl Eeg {
    pub fn new(arena: &Arena, config: EegConfig, rng: &mut Rng) -> Result<Eeg> {
        let c = &config;
        let mut encoder = Vec::new();
        let mut inputs = c.channels;
        for _ in 0..c.encoder_layers {
            let l = LstmLayer::new(arena, inputs, c.encoder_hidden, c.bidirectional, rng)?;
            inputs = l.outputs();
            encoder.push(l);
        }
        let enc = inputs;
        Ok(Eeg {
            embed: Embedding::new(arena, c.vocab, c.embedding, rng)?,
            attention: Additive::new(arena, c.decoder_hidden, enc, c.attention, rng)?,
            decoder: LstmLayer::new(arena, c.embedding + enc, c.decoder_hidden, false, rng)?,
            head: Linear::new(arena, c.decoder_hidden + enc, c.vocab, true, rng)?,
            encoder,
            config,
        })
    }

    /// Logits `[B·S, vocab]` for the teacher-forced targets.
    fn logits(&self, batch: &Batch, mut rng: Option<&mut Rng>, recompute: &[bool]) -> Result<Tensor> {
        let c = &self.config;
        let x = &batch.x;
        if x.rank() != 3 || x.dim(1) != c.channels {
            return Err(Error::shape("eeg", format!("input {:?}: need [B, {}, steps]", x.shape(), c.channels)));
        }
        let y_in =
            batch.y_in.as_ref().ok_or_else(|| Error::invalid("eeg", "the batch has no decoder inputs (y_in)"))?;
        let (b, dtype) = (x.dim(0), x.dtype());
        let mut h = x.transpose(1, 2)?; // [B, T, channels]
        for (i, layer) in self.encoder.iter().enumerate() {
            let mut params = Vec::new();
            layer.params("", &mut params);
            let layer = layer.clone();
            let again = recompute.get(i).copied().unwrap_or(false);
            h = block(&[&h], params, rng.as_deref_mut(), again, move |xs, _| layer.run(&xs[0]))?;
        }
        let enc = h; // [B, T, E]
        let w = self.attention.cast(dtype)?;
        let keys = Tensor::bahdanau_keys(&enc, &w)?;
        let cell: LstmParams = self.decoder.forward.to_dtype(dtype)?;
        let emb = self.embed.forward(y_in, dtype)?; // [B, S, emb]
        let hd = c.decoder_hidden;
        let mut state = Tensor::zeros(x.arena(), &[b, hd], dtype, Tag::Temporary)?;
        let mut mem = state.clone();
        let mut steps = Vec::with_capacity(y_in.dim(1));
        for e in emb.unbind(1)? {
            let (context, _) = Tensor::bahdanau_attention(&state, &keys, &enc, &w, None)?;
            let input = Tensor::concat(&[&e, &context], 1)?;
            (state, mem) = Tensor::lstm_cell(
                &input,
                &state,
                &mem,
                &cell.w_ih,
                &cell.w_hh,
                cell.b_ih.as_ref(),
                cell.b_hh.as_ref(),
            )?;
            steps.push(self.head.forward(&Tensor::concat(&[&state, &context], 1)?)?.unsqueeze(1)?);
        }
        let logits = Tensor::concat(&steps.iter().collect::<Vec<_>>(), 1)?; // [B, S, vocab]
        logits.reshape(&[b * y_in.dim(1), c.vocab])
    }

    pub fn loss(&self, batch: &Batch, rng: Option<&mut Rng>, recompute: &[bool]) -> Result<Tensor> {
        let logits = self.logits(batch, rng, recompute)?;
        logits.cross_entropy(&batch.y.reshape(&[logits.dim(0)])?, Some(IGNORE), 0.0)
    }

    pub fn score(&self, batch: &Batch) -> Result<Score> {
        let logits = self.logits(batch, None, &[])?;
        token_accuracy(&logits, &batch.y.reshape(&[logits.dim(0)])?)
    }

    pub fn params(&self) -> Params {
        let mut out = Vec::new();
        for (i, l) in self.encoder.iter().enumerate() {
            l.params(&format!("encoder.{i}."), &mut out);
        }
        self.embed.params("embed.", &mut out);
        self.attention.params("attention.", &mut out);
        self.decoder.params("decoder.", &mut out);
        self.head.params("head.", &mut out);
        out
    }
}
