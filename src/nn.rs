//! Layers built from ops. Each layer is a plain struct of parameter tensors
//! (f32 leaves tagged Parameter, PyTorch's layouts) with a `forward` and a
//! `params` that lists them by name for optimizers and checkpoints.
//!
//! A layer computes in the dtype of its input: weights are cast to it on the
//! way in (`to_dtype` is free when they already match), so an f16 input runs
//! the layer in f16 against f32 master weights.

use crate::alloc::{Arena, Tag};
use crate::error::{Error, Result};
use crate::ops::{attention, AttentionKind, AttentionOptions, BahdanauWeights, LstmParams};
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
    /// Query i sees keys j ≤ i (a decoder).
    pub causal: bool,
}

impl SelfAttention {
    pub fn new(arena: &Arena, dim: usize, heads: usize, rng: &mut Rng) -> Result<SelfAttention> {
        if heads == 0 || !dim.is_multiple_of(heads) {
            return Err(Error::invalid("attention", format!("model width {dim} does not split into {heads} heads")));
        }
        Ok(SelfAttention {
            qkv: Linear::new(arena, dim, 3 * dim, true, rng)?,
            out: Linear::new(arena, dim, dim, true, rng)?,
            heads,
            kind: AttentionKind::default(),
            causal: false,
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
        let opts = AttentionOptions {
            key_padding: key_padding.cloned(),
            kind: self.kind,
            causal: self.causal,
            ..Default::default()
        };
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

/// Rows of a `[V, D]` table picked by i32 ids.
#[derive(Clone)]
pub struct Embedding {
    pub weight: Tensor,
}

impl Embedding {
    /// PyTorch's default initialisation: N(0, 1).
    pub fn new(arena: &Arena, vocab: usize, dim: usize, rng: &mut Rng) -> Result<Embedding> {
        Ok(Embedding {
            weight: Tensor::randn(arena, &[vocab, dim], 1.0, DType::F32, Tag::Parameter, rng)?.requires_grad(),
        })
    }
    /// `ids` (i32, any shape) → `[..ids, D]` in `dtype`.
    pub fn forward(&self, ids: &Tensor, dtype: DType) -> Result<Tensor> {
        self.weight.to_dtype(dtype)?.embedding(ids)
    }
    pub fn params(&self, prefix: &str, out: &mut Params) {
        out.push((format!("{prefix}weight"), self.weight.clone()));
    }
}

/// Multi-head attention of queries `[B, Tq, D]` over a memory `[B, Tk, D]`
/// (an encoder's output): the decoder's cross-attention.
#[derive(Clone)]
pub struct CrossAttention {
    pub q: Linear,
    pub kv: Linear,
    pub out: Linear,
    pub heads: usize,
    pub kind: AttentionKind,
}

impl CrossAttention {
    pub fn new(arena: &Arena, dim: usize, heads: usize, rng: &mut Rng) -> Result<CrossAttention> {
        if heads == 0 || !dim.is_multiple_of(heads) {
            return Err(Error::invalid("attention", format!("model width {dim} does not split into {heads} heads")));
        }
        Ok(CrossAttention {
            q: Linear::new(arena, dim, dim, true, rng)?,
            kv: Linear::new(arena, dim, 2 * dim, true, rng)?,
            out: Linear::new(arena, dim, dim, true, rng)?,
            heads,
            kind: AttentionKind::default(),
        })
    }

    /// `memory_padding` (u8 `[B, Tk]`, 1 = padded) hides padded memory rows.
    pub fn forward(&self, x: &Tensor, memory: &Tensor, memory_padding: Option<&Tensor>) -> Result<Tensor> {
        if x.rank() != 3 || memory.rank() != 3 || x.dim(0) != memory.dim(0) || x.dim(2) != memory.dim(2) {
            return Err(Error::shape(
                "cross_attention",
                format!("queries {:?} and memory {:?}: need [B, Tq, D] and [B, Tk, D]", x.shape(), memory.shape()),
            ));
        }
        let (b, tq, d, tk) = (x.dim(0), x.dim(1), x.dim(2), memory.dim(1));
        let (h, hd) = (self.heads, d / self.heads);
        let q = self.q.forward(x)?.reshape(&[b, tq, h, hd])?.permute(&[0, 2, 1, 3])?;
        let kv = self.kv.forward(memory)?.reshape(&[b, tk, 2, h, hd])?.permute(&[2, 0, 3, 1, 4])?;
        let (k, v) = (kv.slice(0, 0, 1)?.squeeze(0)?, kv.slice(0, 1, 2)?.squeeze(0)?);
        let opts = AttentionOptions { key_padding: memory_padding.cloned(), kind: self.kind, ..Default::default() };
        let y = attention(&q, &k, &v, &opts)?.permute(&[0, 2, 1, 3])?.reshape(&[b, tq, d])?;
        self.out.forward(&y)
    }

    pub fn params(&self, prefix: &str, out: &mut Params) {
        self.q.params(&format!("{prefix}q."), out);
        self.kv.params(&format!("{prefix}kv."), out);
        self.out.params(&format!("{prefix}out."), out);
    }
}

/// A pre-norm transformer decoder block: causal self-attention,
/// cross-attention over the encoder's memory, MLP.
#[derive(Clone)]
pub struct DecoderBlock {
    pub ln1: LayerNorm,
    pub attn: SelfAttention,
    pub ln2: LayerNorm,
    pub cross: CrossAttention,
    pub ln3: LayerNorm,
    pub mlp: Mlp,
    pub dropout: f32,
}

impl DecoderBlock {
    pub fn new(
        arena: &Arena,
        dim: usize,
        heads: usize,
        hidden: usize,
        dropout: f32,
        rng: &mut Rng,
    ) -> Result<DecoderBlock> {
        let mut attn = SelfAttention::new(arena, dim, heads, rng)?;
        attn.causal = true;
        Ok(DecoderBlock {
            ln1: LayerNorm::new(arena, dim)?,
            attn,
            ln2: LayerNorm::new(arena, dim)?,
            cross: CrossAttention::new(arena, dim, heads, rng)?,
            ln3: LayerNorm::new(arena, dim)?,
            mlp: Mlp::new(arena, dim, hidden, rng)?,
            dropout,
        })
    }

    pub fn forward(
        &self,
        x: &Tensor,
        memory: &Tensor,
        memory_padding: Option<&Tensor>,
        rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        let mut rng = rng;
        let mut drop = |t: Tensor| -> Result<Tensor> {
            match rng.as_deref_mut() {
                Some(r) if self.dropout > 0.0 => t.dropout(self.dropout, r),
                _ => Ok(t),
            }
        };
        let x = x.add(&drop(self.attn.forward(&self.ln1.forward(x)?, None)?)?)?;
        let x = x.add(&drop(self.cross.forward(&self.ln2.forward(&x)?, memory, memory_padding)?)?)?;
        x.add(&drop(self.mlp.forward(&self.ln3.forward(&x)?)?)?)
    }

    pub fn params(&self, prefix: &str, out: &mut Params) {
        self.ln1.params(&format!("{prefix}ln1."), out);
        self.attn.params(&format!("{prefix}attn."), out);
        self.ln2.params(&format!("{prefix}ln2."), out);
        self.cross.params(&format!("{prefix}cross."), out);
        self.ln3.params(&format!("{prefix}ln3."), out);
        self.mlp.params(&format!("{prefix}mlp."), out);
    }
}

/// Which convolution a [`Conv`] layer runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvKind {
    Conv2d,
    Conv3d,
    /// Weight `[in, out, kh, kw]`, as PyTorch's `ConvTranspose2d`.
    Transpose2d,
}

/// A convolution with PyTorch's layouts and default initialisation
/// (U(−1/√fan_in, 1/√fan_in) for weight and bias); one kernel size,
/// stride and padding for every spatial dimension.
#[derive(Clone)]
pub struct Conv {
    pub weight: Tensor,
    pub bias: Tensor,
    pub kind: ConvKind,
    pub stride: usize,
    pub padding: usize,
}

impl Conv {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        arena: &Arena,
        kind: ConvKind,
        inputs: usize,
        outputs: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        rng: &mut Rng,
    ) -> Result<Conv> {
        let (shape, fan_in) = match kind {
            ConvKind::Conv2d => (vec![outputs, inputs, kernel, kernel], inputs * kernel * kernel),
            ConvKind::Conv3d => (vec![outputs, inputs, kernel, kernel, kernel], inputs * kernel.pow(3)),
            // PyTorch computes fan_in from weight dim 1 for transposed convs.
            ConvKind::Transpose2d => (vec![inputs, outputs, kernel, kernel], outputs * kernel * kernel),
        };
        let bound = 1.0 / (fan_in as f32).sqrt();
        Ok(Conv {
            weight: param(arena, &shape, bound, rng)?,
            bias: param(arena, &[outputs], bound, rng)?,
            kind,
            stride,
            padding,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (w, b) = (self.weight.to_dtype(x.dtype())?, self.bias.to_dtype(x.dtype())?);
        let (s, p) = (self.stride, self.padding);
        match self.kind {
            ConvKind::Conv2d => x.conv2d(&w, Some(&b), [s, s], [p, p], [1, 1]),
            ConvKind::Conv3d => x.conv3d(&w, Some(&b), [s, s, s], [p, p, p], [1, 1, 1]),
            ConvKind::Transpose2d => x.conv_transpose2d(&w, Some(&b), [s, s], [p, p], [0, 0], [1, 1]),
        }
    }

    pub fn params(&self, prefix: &str, out: &mut Params) {
        out.push((format!("{prefix}weight"), self.weight.clone()));
        out.push((format!("{prefix}bias"), self.bias.clone()));
    }
}

/// One LSTM layer (PyTorch's layouts and initialisation U(−1/√H, 1/√H)),
/// bidirectional when `reverse` is present: `[B, T, in]` → `[B, T, H]` or
/// `[B, T, 2H]`.
#[derive(Clone)]
pub struct LstmLayer {
    pub forward: LstmParams,
    pub reverse: Option<LstmParams>,
}

impl LstmLayer {
    pub fn new(arena: &Arena, inputs: usize, hidden: usize, bidirectional: bool, rng: &mut Rng) -> Result<LstmLayer> {
        let bound = 1.0 / (hidden as f32).sqrt();
        let mut one = || -> Result<LstmParams> {
            Ok(LstmParams {
                w_ih: param(arena, &[4 * hidden, inputs], bound, rng)?,
                w_hh: param(arena, &[4 * hidden, hidden], bound, rng)?,
                b_ih: Some(param(arena, &[4 * hidden], bound, rng)?),
                b_hh: Some(param(arena, &[4 * hidden], bound, rng)?),
            })
        };
        let forward = one()?;
        let reverse = if bidirectional { Some(one()?) } else { None };
        Ok(LstmLayer { forward, reverse })
    }

    /// Hidden size times directions.
    pub fn outputs(&self) -> usize {
        self.forward.w_hh.dim(1) * if self.reverse.is_some() { 2 } else { 1 }
    }

    pub fn run(&self, x: &Tensor) -> Result<Tensor> {
        let f = self.forward.to_dtype(x.dtype())?;
        match &self.reverse {
            Some(r) => Ok(x.lstm_bidirectional(&f, &r.to_dtype(x.dtype())?, None)?.0),
            None => Ok(x.lstm(&f, false, None)?.0),
        }
    }

    pub fn params(&self, prefix: &str, out: &mut Params) {
        let mut push = |p: &LstmParams, suffix: &str| {
            out.push((format!("{prefix}weight_ih{suffix}"), p.w_ih.clone()));
            out.push((format!("{prefix}weight_hh{suffix}"), p.w_hh.clone()));
            for (name, b) in [("bias_ih", &p.b_ih), ("bias_hh", &p.b_hh)] {
                if let Some(b) = b {
                    out.push((format!("{prefix}{name}{suffix}"), b.clone()));
                }
            }
        };
        push(&self.forward, "");
        if let Some(r) = &self.reverse {
            push(r, "_reverse");
        }
    }
}

/// Additive (Bahdanau) attention weights: `w_q` `[A, dq]`, `w_k` `[A, dk]`,
/// bias `[A]`, `v` `[1, A]`.
#[derive(Clone)]
pub struct Additive {
    pub w: BahdanauWeights,
}

impl Additive {
    pub fn new(arena: &Arena, query: usize, key: usize, dim: usize, rng: &mut Rng) -> Result<Additive> {
        let (bq, bk, bv) = (1.0 / (query as f32).sqrt(), 1.0 / (key as f32).sqrt(), 1.0 / (dim as f32).sqrt());
        Ok(Additive {
            w: BahdanauWeights {
                w_q: param(arena, &[dim, query], bq, rng)?,
                w_k: param(arena, &[dim, key], bk, rng)?,
                b: Some(Tensor::full(arena, &[dim], 0.0, DType::F32, Tag::Parameter)?.requires_grad()),
                v: param(arena, &[1, dim], bv, rng)?,
            },
        })
    }

    /// The weights in `dtype` (free when they already are).
    pub fn cast(&self, dtype: DType) -> Result<BahdanauWeights> {
        let w = &self.w;
        Ok(BahdanauWeights {
            w_q: w.w_q.to_dtype(dtype)?,
            w_k: w.w_k.to_dtype(dtype)?,
            b: w.b.as_ref().map(|b| b.to_dtype(dtype)).transpose()?,
            v: w.v.to_dtype(dtype)?,
        })
    }

    pub fn params(&self, prefix: &str, out: &mut Params) {
        out.push((format!("{prefix}w_q"), self.w.w_q.clone()));
        out.push((format!("{prefix}w_k"), self.w.w_k.clone()));
        if let Some(b) = &self.w.b {
            out.push((format!("{prefix}b"), b.clone()));
        }
        out.push((format!("{prefix}v"), self.w.v.clone()));
    }
}
