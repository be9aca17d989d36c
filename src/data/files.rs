//! A preset's data read from `.npy` files on disk (`train --data DIR`),
//! streamed batch by batch through [`stream::NpyDataset`]: only the
//! current batch is resident, whatever the size of the data set.
//!
//! `DIR` holds `x.npy` (axis 0 = sample) or a directory `x/` of one `.npy`
//! per sample, and, for models with targets, `y.npy` or `y/` alike.
//! Per-sample shapes, time axis first where there is one:
//!
//! | model | x | y |
//! |---|---|---|
//! | lipread | `[3, T, H, W]` float | characters `[S]` (1.., 0 = blank) |
//! | asr | `[T, mels]` float | tokens `[S]` (2.., 0 = pad, 1 = BOS) |
//! | eeg | `[channels, T]` float | words `[S]` |
//! | tts | text `[L]` int | mel frames `[T, mels]` float |
//! | vqae | `[patches, 1, P, P]` float | — |
//!
//! Every batch is padded to the model's longest input and target, so every
//! step asks for the same bytes and the plan holds for the whole run. The
//! last tenth of the samples (at least one) is held out for evaluation.

use super::stream::{NpyDataset, Source, StreamOptions};
use crate::alloc::{Arena, Backing, Tag};
use crate::error::{Error, Result};
use crate::model::{Batch, ModelConfig, BOS, IGNORE};
use crate::tensor::{DType, Tensor};
use std::path::Path;
use std::sync::Arc;

/// Samples `[start, start + n)` of a data set on disk.
#[derive(Clone)]
pub struct Files {
    x: Arc<NpyDataset>,
    y: Option<Arc<NpyDataset>>,
    model: ModelConfig,
    start: usize,
    pub n: usize,
}

fn source(dir: &Path, name: &str) -> Option<Source> {
    let (file, sub) = (dir.join(format!("{name}.npy")), dir.join(name));
    if file.is_file() {
        Some(Source::File(file))
    } else if sub.is_dir() {
        Some(Source::Dir(sub))
    } else {
        None
    }
}

impl Files {
    /// The training and held-out splits of `dir` for `model`; `downsample`
    /// low-pass filters and strides the input's time axis (eeg, asr).
    pub fn open(dir: &Path, model: &ModelConfig, downsample: usize) -> Result<(Files, Files)> {
        const OP: &str = "data";
        // (time axis of x, longest x, time axis of y, longest y) per model.
        let (tx, max_x, ty, max_y) = match model {
            ModelConfig::Digits(_) => {
                return Err(Error::invalid(
                    OP,
                    "the digits preset trains on its embedded data; --data is for the other presets",
                ))
            }
            ModelConfig::Lipread(c) => (1, Some(c.frames), 0, Some((c.frames / 4).max(1))),
            ModelConfig::Asr(c) => (0, Some(c.frames), 0, Some(c.target_len)),
            ModelConfig::Eeg(c) => (1, Some(c.steps), 0, Some(c.target_len)),
            ModelConfig::Tts(c) => (0, Some(c.text_len), 0, Some(c.frames)),
            ModelConfig::Vqae(_) => (0, None, 0, None),
        };
        let missing = |name: &str| {
            Error::io(
                dir.display(),
                format!("no {name}.npy or {name}/ here; see `headroom train --help` for the layout"),
            )
        };
        // Inputs pad to the model's longest, as downsampled.
        let max_x = max_x.map(|t| super::stream::resample::downsampled_len(t, downsample.max(1)));
        let x_opts = StreamOptions { time_axis: tx, downsample, crop: None, max_frames: max_x };
        let x = NpyDataset::open(&source(dir, "x").ok_or_else(|| missing("x"))?, x_opts)?;
        let y = match model {
            ModelConfig::Vqae(_) => None,
            _ => {
                let opts = StreamOptions { time_axis: ty, downsample: 1, crop: None, max_frames: max_y };
                Some(NpyDataset::open(&source(dir, "y").ok_or_else(|| missing("y"))?, opts)?)
            }
        };
        if let Some(y) = &y {
            if y.len() != x.len() {
                return Err(Error::io(
                    dir.display(),
                    format!("{} inputs but {} targets; they pair by index", x.len(), y.len()),
                ));
            }
        }
        let n = x.len();
        if n < 2 {
            return Err(Error::io(dir.display(), format!("{n} sample(s): need at least 2 (one is held out)")));
        }
        let held = (n / 10).max(1);
        let (x, y) = (Arc::new(x), y.map(Arc::new));
        let split = |start, n| Files { x: x.clone(), y: y.clone(), model: model.clone(), start, n };
        Ok((split(0, n - held), split(n - held, held)))
    }

    pub fn batch(&self, arena: &Arena, idx: &[usize], dtype: DType) -> Result<Batch> {
        let idx: Vec<usize> = idx.iter().map(|&i| self.start + i).collect();
        let y = || self.y.as_deref().ok_or_else(|| Error::invalid("data", "this data set has no targets (y)"));
        match &self.model {
            ModelConfig::Tts(_) => {
                let text = self.x.targets(arena, &idx, 0)?;
                let frames = y()?.batch(arena, &idx, dtype, None)?;
                let y_in = shift_frames(&frames.x)?;
                let b = text.y.dim(0);
                Ok(Batch {
                    x_mask: Some(length_mask(arena, b, text.y.dim(1), &text.lengths)?),
                    x: text.y,
                    x_lengths: text.lengths,
                    y: frames.x,
                    y_in: Some(y_in),
                    y_lengths: frames.lengths,
                })
            }
            ModelConfig::Vqae(_) => {
                let x = self.x.batch(arena, &idx, dtype, None)?.x;
                Ok(Batch { y: x.clone(), x, x_lengths: vec![], x_mask: None, y_in: None, y_lengths: vec![] })
            }
            m => {
                let xs = self.x.batch(arena, &idx, dtype, None)?;
                let ctc = matches!(m, ModelConfig::Lipread(_));
                let ys = y()?.targets(arena, &idx, if ctc { 0 } else { IGNORE })?;
                let y_in = if ctc { None } else { Some(shift_tokens(&ys.y)?) };
                Ok(Batch {
                    x: xs.x,
                    x_lengths: xs.lengths,
                    x_mask: Some(xs.mask),
                    y: ys.y,
                    y_in,
                    y_lengths: ys.lengths,
                })
            }
        }
    }
}

fn length_mask(arena: &Arena, b: usize, t: usize, lengths: &[usize]) -> Result<Tensor> {
    let mut m = vec![0u8; b * t];
    for (i, &len) in lengths.iter().enumerate() {
        m[i * t + len.min(t)..(i + 1) * t].fill(1);
    }
    Tensor::from_slice(arena, &[b, t], &m, Tag::Data)
}

/// Teacher-forcing inputs `[B, S]`: BOS, then the targets but the last; padding 0.
fn shift_tokens(y: &Tensor) -> Result<Tensor> {
    let (b, s) = (y.dim(0), y.dim(1));
    if y.arena().backing() == Backing::Meta {
        return Tensor::empty(y.arena(), &[b, s], DType::I32, Tag::Data, "from_slice");
    }
    let v = y.to_vec::<i32>()?;
    let mut out = vec![0; b * s];
    for i in 0..b {
        for j in 0..s {
            let prev = if j == 0 { BOS } else { v[i * s + j - 1] };
            out[i * s + j] = if v[i * s + j] == IGNORE { 0 } else { prev };
        }
    }
    Tensor::from_slice(y.arena(), &[b, s], &out, Tag::Data)
}

/// Frames `[B, T, M]` shifted right by one, a zero frame first.
fn shift_frames(y: &Tensor) -> Result<Tensor> {
    let (b, t, m) = (y.dim(0), y.dim(1), y.dim(2));
    if y.arena().backing() == Backing::Meta {
        return Tensor::empty(y.arena(), &[b, t, m], y.dtype(), Tag::Data, "from_f32");
    }
    let v = y.to_vec_f32()?;
    let mut out = vec![0.0; b * t * m];
    for i in 0..b {
        for f in 1..t {
            out[(i * t + f) * m..(i * t + f + 1) * m].copy_from_slice(&v[(i * t + f - 1) * m..(i * t + f) * m]);
        }
    }
    Tensor::from_f32(y.arena(), &[b, t, m], &out, y.dtype(), Tag::Data)
}
