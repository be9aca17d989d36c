//! Lip reading (the `lipread` presets, LipNet-like): video clips
//! `[B, 3, T, H, W]` → stages of Conv3d (kernel 3, padding 1) + ReLU +
//! spatial max-pool 2 → per-frame features → (bidirectional) LSTM layers →
//! optionally additive attention of every frame over all frames, joined
//! to the frame → characters, CTC loss (blank 0).
//!
//! Batch: `x` `[B, 3, T, H, W]`, `x_lengths` (frames), `y` i32 `[B, S]`
//! (characters 1.., padding 0), `y_lengths`.

use super::{block, is_meta, Batch, Score};
use crate::alloc::Arena;
use crate::error::{Error, Result};
use crate::nn::{Additive, Conv, ConvKind, Linear, LstmLayer, Params};
use crate::rng::Rng;
use crate::tensor::Tensor;

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LipreadConfig {
    pub frames: usize,
    /// Height and width of a frame.
    pub size: usize,
    /// Output channels of each Conv3d stage.
    pub channels: Vec<usize>,
    pub lstm_layers: usize,
    pub hidden: usize,
    pub bidirectional: bool,
    /// Width of the additive attention over time; `None` = no attention.
    pub attention: Option<usize>,
    /// Characters including the CTC blank (0).
    pub chars: usize,
}

pub struct Lipread {
    pub config: LipreadConfig,
    pub convs: Vec<Conv>,
    pub lstm: Vec<LstmLayer>,
    pub attention: Option<Additive>,
    pub head: Linear,
}

impl Lipread {
    pub fn new(arena: &Arena, config: LipreadConfig, rng: &mut Rng) -> Result<Lipread> {
        let c = &config;
        let side = c.size >> c.channels.len();
        if side == 0 || !c.size.is_multiple_of(1 << c.channels.len()) {
            return Err(Error::invalid(
                "lipread",
                format!("frames of {0}×{0} do not halve {1} times", c.size, c.channels.len()),
            ));
        }
        let mut convs = Vec::new();
        let mut ch = 3;
        for &o in &c.channels {
            convs.push(Conv::new(arena, ConvKind::Conv3d, ch, o, 3, 1, 1, rng)?);
            ch = o;
        }
        let mut lstm = Vec::new();
        let mut width = ch * side * side;
        for _ in 0..c.lstm_layers {
            let l = LstmLayer::new(arena, width, c.hidden, c.bidirectional, rng)?;
            width = l.outputs();
            lstm.push(l);
        }
        let attention = c.attention.map(|a| Additive::new(arena, width, width, a, rng)).transpose()?;
        let head_in = if attention.is_some() { 2 * width } else { width };
        Ok(Lipread { head: Linear::new(arena, head_in, c.chars, true, rng)?, convs, lstm, attention, config })
    }

    /// Conv stages then LSTM layers.
    pub fn blocks(&self) -> usize {
        self.convs.len() + self.lstm.len()
    }

    /// Log-probabilities `[T, B, chars]`, time first as CTC takes them.
    fn log_probs(&self, batch: &Batch, mut rng: Option<&mut Rng>, recompute: &[bool]) -> Result<Tensor> {
        let c = &self.config;
        let x = &batch.x;
        if x.rank() != 5 || x.dim(1) != 3 || x.dim(3) != c.size || x.dim(4) != c.size {
            return Err(Error::shape(
                "lipread",
                format!("input {:?}: need clips [B, 3, T, {1}, {1}]", x.shape(), c.size),
            ));
        }
        let (b, t) = (x.dim(0), x.dim(2));
        let mut h = x.clone();
        for (i, conv) in self.convs.iter().enumerate() {
            let mut params = Vec::new();
            conv.params("", &mut params);
            let conv = conv.clone();
            let again = recompute.get(i).copied().unwrap_or(false);
            h = block(&[&h], params, rng.as_deref_mut(), again, move |xs, _| {
                conv.forward(&xs[0])?.relu()?.max_pool(&[1, 2, 2], &[1, 2, 2], &[0, 0, 0])
            })?;
        }
        // [B, C, T, h, w] → [B, T, C·h·w]
        let f = h.dim(1) * h.dim(3) * h.dim(4);
        let mut h = h.permute(&[0, 2, 1, 3, 4])?.reshape(&[b, t, f])?;
        for (i, layer) in self.lstm.iter().enumerate() {
            let mut params = Vec::new();
            layer.params("", &mut params);
            let layer = layer.clone();
            let again = recompute.get(self.convs.len() + i).copied().unwrap_or(false);
            h = block(&[&h], params, rng.as_deref_mut(), again, move |xs, _| layer.run(&xs[0]))?;
        }
        if let Some(att) = &self.attention {
            let w = att.cast(h.dtype())?;
            let keys = Tensor::bahdanau_keys(&h, &w)?;
            let mut contexts = Vec::with_capacity(t);
            for q in h.unbind(1)? {
                contexts.push(Tensor::bahdanau_attention(&q, &keys, &h, &w, None)?.0.unsqueeze(1)?);
            }
            let context = Tensor::concat(&contexts.iter().collect::<Vec<_>>(), 1)?;
            h = Tensor::concat(&[&h, &context], 2)?;
        }
        self.head.forward(&h)?.log_softmax(-1)?.permute(&[1, 0, 2])
    }

    pub fn loss(&self, batch: &Batch, rng: Option<&mut Rng>, recompute: &[bool]) -> Result<Tensor> {
        let lp = self.log_probs(batch, rng, recompute)?;
        lp.ctc_loss(&batch.y, &batch.x_lengths, &batch.y_lengths, 0, true)
    }

    /// Greedy CTC decoding (best class per frame, repeats merged, blanks
    /// dropped): edit distance to the target, summed, over target characters.
    pub fn score(&self, batch: &Batch) -> Result<Score> {
        let lp = self.log_probs(batch, None, &[])?;
        if is_meta(&lp) {
            return Ok(Score::default());
        }
        let (t, b, v) = (lp.dim(0), lp.dim(1), lp.dim(2));
        let (lp, y) = (lp.to_vec_f32()?, batch.y.to_vec::<i32>()?);
        let s = batch.y.dim(1);
        let mut score = Score::default();
        for i in 0..b {
            let frames = batch.x_lengths.get(i).copied().unwrap_or(t).min(t);
            let mut decoded = Vec::new();
            let mut prev = 0;
            for f in 0..frames {
                let at = (f * b + i) * v;
                let k = super::argmax(&lp[at..at + v]);
                if k != 0 && k != prev {
                    decoded.push(k as i32);
                }
                prev = k;
            }
            let len = batch.y_lengths.get(i).copied().unwrap_or(s).min(s);
            let target = &y[i * s..i * s + len];
            score.sum += edit_distance(&decoded, target) as f64;
            score.count += len as f64;
        }
        Ok(score)
    }

    pub fn params(&self) -> Params {
        let mut out = Vec::new();
        for (i, c) in self.convs.iter().enumerate() {
            c.params(&format!("conv.{i}."), &mut out);
        }
        for (i, l) in self.lstm.iter().enumerate() {
            l.params(&format!("lstm.{i}."), &mut out);
        }
        if let Some(a) = &self.attention {
            a.params("attention.", &mut out);
        }
        self.head.params("head.", &mut out);
        out
    }
}

/// Levenshtein distance.
pub(crate) fn edit_distance(a: &[i32], b: &[i32]) -> usize {
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, &x) in a.iter().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, &y) in b.iter().enumerate() {
            let next = (diag + (x != y) as usize).min(row[j] + 1).min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(super::edit_distance(&[1, 2, 3], &[1, 2, 3]), 0);
        assert_eq!(super::edit_distance(&[1, 3], &[1, 2, 3]), 1);
        assert_eq!(super::edit_distance(&[], &[4, 5]), 2);
        assert_eq!(super::edit_distance(&[7, 8, 9], &[9, 8, 7]), 2);
    }
}
