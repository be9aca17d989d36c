//! Layers built from ops. Each layer is a plain struct of parameter tensors
//! (f32 leaves tagged Parameter, PyTorch's layouts) with a `forward` and a
//! `params` that lists them by name for optimizers and checkpoints.
//!
//! A layer computes in the dtype of its input: weights are cast to it on the
//! way in (`to_dtype` is free when they already match), so an f16 input runs
//! the layer in f16 against f32 master weights.

use crate::alloc::{Arena, Tag};
use crate::error::{Error, Result};
use crate::ops::{attention, AttentionKind, AttentionOptions};
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};

/// Named parameters, in a fixed order.
pub type Params = Vec<(String, Tensor)>;

fn param(arena: &Arena, shape: &[usize], bound: f32, rng: &mut Rng) -> Result<Tensor> {
    Ok(Tensor::uniform(arena, shape, bound, DType::F32, Tag::Parameter, rng)?.requires_grad())
}

fn constant(arena: &Arena, shape: &[usize], value: f32) -> Result<Tensor> {
    Ok(Tensor::full(arena, shape, value, DType::F32, Tag::Parameter)?.requires_grad())
}

/// `y = x Wᵀ + b`, weight `[out, in]`.
///
/// ```
/// use headroom::{nn::Linear, rng::Rng, Arena, DType, Tag, Tensor};
/// let arena = Arena::host();
/// let layer = Linear::new(&arena, 16, 4, true, &mut Rng::new(0)).unwrap();
/// let x = Tensor::zeros(&arena, &[2, 3, 16], DType::F32, Tag::Data).unwrap();
/// assert_eq!(layer.forward(&x).unwrap().shape(), &[2, 3, 4]);
/// assert_eq!(arena.stats().tag(Tag::Parameter).requested.current, (16 * 4 + 4) * 4);
/// ```
#[derive(Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// PyTorch's default initialisation: U(−1/√in, 1/√in).
    pub fn new(arena: &Arena, inputs: usize, outputs: usize, bias: bool, rng: &mut Rng) -> Result<Linear> {
        let bound = 1.0 / (inputs as f32).sqrt();
        let weight = param(arena, &[outputs, inputs], bound, rng)?;
        let bias = if bias { Some(param(arena, &[outputs], bound, rng)?) } else { None };
        Ok(Linear { weight, bias })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (inputs, outputs) = (self.weight.dim(1), self.weight.dim(0));
        if x.rank() == 0 || x.dim(-1) != inputs {
            return Err(Error::shape(
                "linear",
                format!("input {:?} for a {inputs}→{outputs} layer: the last dimension must be {inputs}", x.shape()),
            ));
        }
        let w = self.weight.to_dtype(x.dtype())?;
        let y = x.matmul(&w.transpose(0, 1)?)?;
        match &self.bias {
            Some(b) => y.add(&b.to_dtype(x.dtype())?),
            None => Ok(y),
        }
    }

    pub fn params(&self, prefix: &str, out: &mut Params) {
        out.push((format!("{prefix}weight"), self.weight.clone()));
        if let Some(b) = &self.bias {
            out.push((format!("{prefix}bias"), b.clone()));
        }
    }
}

/// Layer normalisation over the last dimension.
#[derive(Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f32,
}

impl LayerNorm {
    pub fn new(arena: &Arena, dim: usize) -> Result<LayerNorm> {
        Ok(LayerNorm { weight: constant(arena, &[dim], 1.0)?, bias: constant(arena, &[dim], 0.0)?, eps: 1e-5 })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (w, b) = (self.weight.to_dtype(x.dtype())?, self.bias.to_dtype(x.dtype())?);
        x.layer_norm(Some(&w), Some(&b), self.eps)
    }
    pub fn params(&self, prefix: &str, out: &mut Params) {
        out.push((format!("{prefix}weight"), self.weight.clone()));
        out.push((format!("{prefix}bias"), self.bias.clone()));
    }
}

/// Multi-head self-attention. With `kind` Fused (the default) it keeps
/// activations linear in T; Naive keeps the B×H×T×T probabilities for
/// backward, as attention written with matmul and softmax does.
#[derive(Clone)]
pub struct SelfAttention {
    pub qkv: Linear,
    pub out: Linear,
    pub heads: usize,
    pub kind: AttentionKind,
}

impl SelfAttention {
    pub fn new(arena: &Arena, dim: usize, heads: usize, rng: &mut Rng) -> Result<SelfAttention> {
        if heads == 0 || dim % heads != 0 {
            return Err(Error::invalid("attention", format!("model width {dim} does not split into {heads} heads")));
        }
        Ok(SelfAttention {
            qkv: Linear::new(arena, dim, 3 * dim, true, rng)?,
            out: Linear::new(arena, dim, dim, true, rng)?,
            heads,
            kind: AttentionKind::default(),
        })
    }

    /// `x` is [B, T, D]; `key_padding` (u8 [B, T], 1 = padded frame) hides
    /// padded keys from every query.
    pub fn forward(&self, x: &Tensor, key_padding: Option<&Tensor>) -> Result<Tensor> {
        if x.rank() != 3 {
            return Err(Error::shape("attention", format!("input {:?}: need [B, T, D]", x.shape())));
        }
        let (b, t, d) = (x.dim(0), x.dim(1), x.dim(2));
        let (h, hd) = (self.heads, d / self.heads);
        // [B, T, 3, H, hd] → three [B, H, T, hd] views of the projection.
        let qkv = self.qkv.forward(x)?.reshape(&[b, t, 3, h, hd])?.permute(&[2, 0, 3, 1, 4])?;
        let (q, k, v) =
            (qkv.slice(0, 0, 1)?.squeeze(0)?, qkv.slice(0, 1, 2)?.squeeze(0)?, qkv.slice(0, 2, 3)?.squeeze(0)?);
        let opts = AttentionOptions { key_padding: key_padding.cloned(), kind: self.kind, ..Default::default() };
        let y = attention(&q, &k, &v, &opts)?; // [B, H, T, hd]
        let y = y.permute(&[0, 2, 1, 3])?.reshape(&[b, t, d])?;
        self.out.forward(&y)
    }

    pub fn params(&self, prefix: &str, out: &mut Params) {
        self.qkv.params(&format!("{prefix}qkv."), out);
        self.out.params(&format!("{prefix}out."), out);
    }
}

/// Two linear layers with GELU between.
#[derive(Clone)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Mlp {
    pub fn new(arena: &Arena, dim: usize, hidden: usize, rng: &mut Rng) -> Result<Mlp> {
        Ok(Mlp { fc1: Linear::new(arena, dim, hidden, true, rng)?, fc2: Linear::new(arena, hidden, dim, true, rng)? })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(x)?.gelu()?)
    }
    pub fn params(&self, prefix: &str, out: &mut Params) {
        self.fc1.params(&format!("{prefix}fc1."), out);
        self.fc2.params(&format!("{prefix}fc2."), out);
    }
}

/// A pre-norm transformer encoder block.
#[derive(Clone)]
pub struct Block {
    pub ln1: LayerNorm,
    pub attn: SelfAttention,
    pub ln2: LayerNorm,
    pub mlp: Mlp,
    pub dropout: f32,
}

impl Block {
    pub fn new(arena: &Arena, dim: usize, heads: usize, hidden: usize, dropout: f32, rng: &mut Rng) -> Result<Block> {
        Ok(Block {
            ln1: LayerNorm::new(arena, dim)?,
            attn: SelfAttention::new(arena, dim, heads, rng)?,
            ln2: LayerNorm::new(arena, dim)?,
            mlp: Mlp::new(arena, dim, hidden, rng)?,
            dropout,
        })
    }

    /// `rng` drives dropout; `None` evaluates (no dropout).
    pub fn forward(&self, x: &Tensor, key_padding: Option<&Tensor>, rng: Option<&mut Rng>) -> Result<Tensor> {
        let mut rng = rng;
        let mut drop = |t: Tensor| -> Result<Tensor> {
            match rng.as_deref_mut() {
                Some(r) if self.dropout > 0.0 => t.dropout(self.dropout, r),
                _ => Ok(t),
            }
        };
        let x = x.add(&drop(self.attn.forward(&self.ln1.forward(x)?, key_padding)?)?)?;
        x.add(&drop(self.mlp.forward(&self.ln2.forward(&x)?)?)?)
    }

    pub fn params(&self, prefix: &str, out: &mut Params) {
        self.ln1.params(&format!("{prefix}ln1."), out);
        self.attn.params(&format!("{prefix}attn."), out);
        self.ln2.params(&format!("{prefix}ln2."), out);
        self.mlp.params(&format!("{prefix}mlp."), out);
    }
}
