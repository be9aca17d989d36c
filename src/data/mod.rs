//! Data sets. The default one, spoken digits (data/spoken_digits/README.md),
//! is embedded in the binary so `headroom train` needs no download; every
//! preset also has a synthetic task of its shapes (`synthetic`). Batches are
//! copied into the arena under tag Data; only the current batch is.

pub mod files;
pub mod npy;
pub mod stream;
pub mod synthetic;

use crate::model::Batch;
use synthetic::Synthetic;

use crate::alloc::{Arena, Tag};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};
use half::f16;
use npy::{parse_header, NpyDtype};

/// Sequences of feature frames with one class label each.
pub struct Sequences {
    /// `[n, frames, features]` values, f16 as stored.
    x: &'static [u8],
    y: &'static [u8],
    pub n: usize,
    pub frames: usize,
    pub features: usize,
    pub classes: usize,
}

impl Sequences {
    fn from_npy(name: &str, x: &'static [u8], y: &'static [u8], classes: usize) -> Result<Sequences> {
        let bad = |e: npy::NpyError| Error::io(name, e);
        let (hx, hy) = (parse_header(x).map_err(bad)?, parse_header(y).map_err(bad)?);
        if hx.dtype != NpyDtype::F16 || hx.shape.len() != 3 || hy.dtype != NpyDtype::U8 || hy.shape != [hx.shape[0]] {
            return Err(Error::io(
                name,
                format!("expected f16 [n, t, m] and u8 [n], found {:?} {:?}", hx.shape, hy.shape),
            ));
        }
        Ok(Sequences {
            x: &x[hx.data_offset..],
            y: &y[hy.data_offset..],
            n: hx.shape[0],
            frames: hx.shape[1],
            features: hx.shape[2],
            classes,
        })
    }

    /// Inputs `[b, frames, features]` (as `dtype`) and labels i32 `[b]` for
    /// the given sample indices, both tagged Data.
    pub fn batch(&self, arena: &Arena, idx: &[usize], dtype: DType) -> Result<(Tensor, Tensor)> {
        if let Some(&bad) = idx.iter().find(|&&i| i >= self.n) {
            return Err(Error::index("batch", format!("sample {bad} of a set of {} clips", self.n)));
        }
        let per = self.frames * self.features;
        let mut xs = Vec::with_capacity(idx.len() * per);
        let mut ys = Vec::with_capacity(idx.len());
        for &i in idx {
            let raw: &[f16] = bytemuck::cast_slice(&self.x[i * per * 2..(i + 1) * per * 2]);
            xs.extend(raw.iter().map(|v| v.to_f32()));
            ys.push(self.y[i] as i32);
        }
        let x = Tensor::from_f32(arena, &[idx.len(), self.frames, self.features], &xs, dtype, Tag::Data)?;
        let y = Tensor::from_slice(arena, &[idx.len()], &ys, Tag::Data)?;
        Ok((x, y))
    }
}

/// Where a run's samples come from.
pub enum Dataset {
    /// The embedded spoken digits.
    Digits(Sequences),
    /// A preset's synthetic task.
    Synthetic(Synthetic),
    /// `.npy` files on disk, streamed.
    Files(files::Files),
}

impl Dataset {
    pub fn len(&self) -> usize {
        match self {
            Dataset::Digits(s) => s.n,
            Dataset::Synthetic(s) => s.n,
            Dataset::Files(f) => f.n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Samples `idx` as one batch on `arena`, inputs in `dtype`, tagged Data.
    pub fn batch(&self, arena: &Arena, idx: &[usize], dtype: DType) -> Result<Batch> {
        match self {
            Dataset::Digits(s) => {
                let (x, y) = s.batch(arena, idx, dtype)?;
                Ok(Batch { x, x_lengths: vec![s.frames; idx.len()], x_mask: None, y, y_in: None, y_lengths: vec![] })
            }
            Dataset::Synthetic(s) => s.batch(arena, idx, dtype),
            Dataset::Files(f) => f.batch(arena, idx, dtype),
        }
    }

    /// Sample order for one epoch.
    pub fn order(&self, rng: &mut Rng) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.len()).collect();
        rng.shuffle(&mut v);
        v
    }
}

// The .npy bytes must be 2-byte aligned to be read as f16 in place.
#[repr(C, align(64))]
struct Aligned<T: ?Sized>(T);
static TRAIN_X: &Aligned<[u8]> = &Aligned(*include_bytes!("../../data/spoken_digits/train_x.npy"));
static TRAIN_Y: &[u8] = include_bytes!("../../data/spoken_digits/train_y.npy");
static TEST_X: &Aligned<[u8]> = &Aligned(*include_bytes!("../../data/spoken_digits/test_x.npy"));
static TEST_Y: &[u8] = include_bytes!("../../data/spoken_digits/test_y.npy");

/// The embedded spoken-digits set: (train, test), test speakers unseen in training.
pub fn spoken_digits() -> Result<(Sequences, Sequences)> {
    Ok((
        Sequences::from_npy("spoken_digits/train", &TRAIN_X.0, TRAIN_Y, 10)?,
        Sequences::from_npy("spoken_digits/test", &TEST_X.0, TEST_Y, 10)?,
    ))
}
