//! A VQ autoencoder of spectrogram patches (the `vqae` presets):
//! `1×P×P` patches → stride-2 convolutions (kernel 4, padding 1) with ReLU
//! → a kernel-3 convolution to the latent width → vector quantisation
//! against a codebook (straight-through, commitment loss) → the mirror
//! image: a kernel-3 convolution, then stride-2 transposed convolutions back
//! to `1×P×P`. Loss: reconstruction MSE + codebook loss + β·commitment.
//!
//! Batch: `x` `[B, patches, 1, P, P]`; the target is the input itself.

use super::{block, is_meta, Batch, Score};
use crate::alloc::{Arena, Tag};
use crate::error::{Error, Result};
use crate::nn::{Conv, ConvKind, Params};
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct VqaeConfig {
    /// Side of a square patch.
    pub patch: usize,
    /// Patches per sample: a batch of B samples codes B·patches patches.
    pub patches: usize,
    /// Channels after each stride-2 stage.
    pub channels: Vec<usize>,
    /// Width of the latent vectors (and of the codes).
    pub latent: usize,
    pub codes: usize,
    pub beta: f32,
}

pub struct Vqae {
    pub config: VqaeConfig,
    /// Stride-2 stages then the kernel-3 projection to the latent width.
    pub encoder: Vec<Conv>,
    pub codebook: Tensor,
    /// The kernel-3 projection back, then stride-2 transposed stages.
    pub decoder: Vec<Conv>,
}

impl Vqae {
    pub fn new(arena: &Arena, config: VqaeConfig, rng: &mut Rng) -> Result<Vqae> {
        let c = &config;
        if c.channels.is_empty() || !c.patch.is_multiple_of(1 << c.channels.len()) {
            return Err(Error::invalid(
                "vqae",
                format!("patches of {0}×{0} do not halve {1} times", c.patch, c.channels.len()),
            ));
        }
        let mut encoder = Vec::new();
        let mut ch = 1;
        for &o in &c.channels {
            encoder.push(Conv::new(arena, ConvKind::Conv2d, ch, o, 4, 2, 1, rng)?);
            ch = o;
        }
        encoder.push(Conv::new(arena, ConvKind::Conv2d, ch, c.latent, 3, 1, 1, rng)?);
        let mut decoder = vec![Conv::new(arena, ConvKind::Conv2d, c.latent, ch, 3, 1, 1, rng)?];
        let mut outs: Vec<usize> = c.channels.iter().rev().skip(1).copied().collect();
        outs.push(1);
        for o in outs {
            decoder.push(Conv::new(arena, ConvKind::Transpose2d, ch, o, 4, 2, 1, rng)?);
            ch = o;
        }
        let bound = 1.0 / c.codes as f32;
        let codebook =
            Tensor::uniform(arena, &[c.codes, c.latent], bound, DType::F32, Tag::Parameter, rng)?.requires_grad();
        Ok(Vqae { config, encoder, codebook, decoder })
    }

    /// (reconstruction, codebook loss, commitment loss) for the batch's patches.
    fn run(
        &self,
        batch: &Batch,
        mut rng: Option<&mut Rng>,
        recompute: &[bool],
    ) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
        let c = &self.config;
        let x = &batch.x;
        if x.rank() != 5 || x.dim(2) != 1 || x.dim(3) != c.patch || x.dim(4) != c.patch {
            return Err(Error::shape(
                "vqae",
                format!("input {:?}: need [B, patches, 1, {1}, {1}]", x.shape(), c.patch),
            ));
        }
        let n = x.dim(0) * x.dim(1);
        let x = x.reshape(&[n, 1, c.patch, c.patch])?;
        let mut h = x.clone();
        let last = self.encoder.len() - 1;
        for (i, conv) in self.encoder.iter().enumerate() {
            let mut params = Vec::new();
            conv.params("", &mut params);
            let conv = conv.clone();
            let again = recompute.get(i).copied().unwrap_or(false);
            h = block(&[&h], params, rng.as_deref_mut(), again, move |xs, _| {
                let y = conv.forward(&xs[0])?;
                if i < last {
                    y.relu()
                } else {
                    Ok(y)
                }
            })?;
        }
        // [N, L, s, s] → rows [N·s·s, L] → quantise → back.
        let (l, s) = (h.dim(1), h.dim(2));
        let z = h.permute(&[0, 2, 3, 1])?.reshape(&[n * s * s, l])?;
        let q = z.vector_quantize(&self.codebook.to_dtype(z.dtype())?)?;
        let mut h = q.z_q.reshape(&[n, s, s, l])?.permute(&[0, 3, 1, 2])?;
        let last = self.decoder.len() - 1;
        let skip = self.encoder.len();
        for (i, conv) in self.decoder.iter().enumerate() {
            let mut params = Vec::new();
            conv.params("", &mut params);
            let conv = conv.clone();
            let again = recompute.get(skip + i).copied().unwrap_or(false);
            h = block(&[&h], params, rng.as_deref_mut(), again, move |xs, _| {
                let y = conv.forward(&xs[0])?;
                if i < last {
                    y.relu()
                } else {
                    Ok(y)
                }
            })?;
        }
        Ok((h, x, q.codebook_loss, q.commitment_loss))
    }

    pub fn loss(&self, batch: &Batch, rng: Option<&mut Rng>, recompute: &[bool]) -> Result<Tensor> {
        let (recon, x, codebook, commitment) = self.run(batch, rng, recompute)?;
        recon.mse_loss(&x)?.add(&codebook)?.add(&commitment.mul_scalar(self.config.beta)?)
    }

    /// Summed squared reconstruction error over every pixel.
    pub fn score(&self, batch: &Batch) -> Result<Score> {
        let (recon, x, _, _) = self.run(batch, None, &[])?;
        let mse = recon.mse_loss(&x)?;
        if is_meta(&mse) {
            return Ok(Score::default());
        }
        let n = x.numel() as f64;
        Ok(Score { sum: mse.item()? as f64 * n, count: n })
    }

    pub fn params(&self) -> Params {
        let mut out = Vec::new();
        for (i, c) in self.encoder.iter().enumerate() {
            c.params(&format!("encoder.{i}."), &mut out);
        }
        out.push(("codebook".into(), self.codebook.clone()));
        for (i, c) in self.decoder.iter().enumerate() {
            c.params(&format!("decoder.{i}."), &mut out);
        }
        out
    }
}
