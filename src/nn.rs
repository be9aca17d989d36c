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
        // The weight is a public field: check it as well as the input.
        let &[outputs, inputs] = self.weight.shape() else {
            return Err(Error::shape("linear", format!("weight {:?} must be [out, in]", self.weight.shape())));
        };
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

/// Layer normalisation over the last dimension, with a learned scale
/// (initially 1) and shift (initially 0).
///
/// ```
/// use headroom::{nn::LayerNorm, Arena, DType, Tag, Tensor};
/// let arena = Arena::host();
/// let ln = LayerNorm::new(&arena, 4).unwrap();
/// let x = Tensor::from_f32(&arena, &[1, 4], &[1., 2., 3., 4.], DType::F32, Tag::Data).unwrap();
/// let y = ln.forward(&x).unwrap().to_vec_f32().unwrap();
/// // Zero mean, unit variance: (4 − 2.5) / √(1.25 + 1e-5) ≈ 1.3416.
/// assert!(y.iter().sum::<f32>().abs() < 1e-6);
/// assert!((y[3] - 1.3416).abs() < 1e-3);
/// let mut names = Vec::new();
/// ln.params("ln.", &mut names);
/// assert_eq!(names.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["ln.weight", "ln.bias"]);
/// ```
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
///
/// ```
/// use headroom::{nn::SelfAttention, ops::AttentionKind, rng::Rng, Arena, DType, Tag, Tensor};
/// let arena = Arena::host();
/// let mut rng = Rng::new(0);
/// let mut attn = SelfAttention::new(&arena, 32, 4, &mut rng).unwrap(); // 4 heads of 8
/// let x = Tensor::randn(&arena, &[2, 10, 32], 1.0, DType::F32, Tag::Data, &mut rng).unwrap();
/// // Sequence 1 has 3 padded frames at its end: no query sees them.
/// let pad: Vec<u8> = (0..20).map(|i| (i >= 17) as u8).collect();
/// let pad = Tensor::from_slice(&arena, &[2, 10], &pad, Tag::Data).unwrap();
/// let fused = attn.forward(&x, Some(&pad)).unwrap().to_vec_f32().unwrap();
/// attn.kind = AttentionKind::Naive;
/// let naive = attn.forward(&x, Some(&pad)).unwrap().to_vec_f32().unwrap();
/// assert_eq!(fused.len(), 2 * 10 * 32);
/// assert!(fused.iter().zip(&naive).all(|(a, b)| (a - b).abs() < 1e-5));
/// assert!(SelfAttention::new(&arena, 30, 4, &mut rng).is_err()); // 30 does not split into 4 heads
/// ```
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
///
/// ```
/// use headroom::{nn::Mlp, rng::Rng, Arena, DType, Tag, Tensor};
/// let arena = Arena::host();
/// let mlp = Mlp::new(&arena, 16, 64, &mut Rng::new(0)).unwrap();
/// let x = Tensor::zeros(&arena, &[3, 5, 16], DType::F32, Tag::Data).unwrap();
/// assert_eq!(mlp.forward(&x).unwrap().shape(), &[3, 5, 16]);
/// let mut params = Vec::new();
/// mlp.params("mlp.", &mut params);
/// let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
/// assert_eq!(names, ["mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]);
/// assert_eq!(params[0].1.shape(), &[64, 16]); // PyTorch's [out, in]
/// ```
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

/// A pre-norm transformer encoder block:
/// `x + drop(attn(ln1(x)))`, then `x + drop(mlp(ln2(x)))`.
///
/// ```
/// use headroom::{autograd::backward, nn::Block, rng::Rng, Arena, DType, Tag, Tensor};
/// let arena = Arena::host();
/// let mut rng = Rng::new(0);
/// let block = Block::new(&arena, 32, 4, 64, 0.1, &mut rng).unwrap();
/// let x = Tensor::randn(&arena, &[2, 8, 32], 1.0, DType::F32, Tag::Data, &mut rng).unwrap();
/// // With an rng: training, dropout on. The same rng state gives the same masks.
/// let y = block.forward(&x, None, Some(&mut rng.clone())).unwrap();
/// let again = block.forward(&x, None, Some(&mut rng.clone())).unwrap();
/// assert_eq!(y.to_vec_f32().unwrap(), again.to_vec_f32().unwrap());
/// backward(&y.sum_all().unwrap()).unwrap();
/// assert!(block.mlp.fc1.weight.grad().is_some());
/// let mut params = Vec::new();
/// block.params("", &mut params);
/// assert_eq!(params.len(), 12); // 2 norms × 2, qkv and out × 2, fc1 and fc2 × 2
/// ```
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
