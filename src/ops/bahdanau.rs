//! Additive (Bahdanau) attention, `score = vᵀ tanh(W_q q + W_k k + b)`,
//! written with existing ops (matmul, add, tanh, masked_fill, softmax), so
//! its gradient is theirs.
//!
//! Memory per decoder step: tanh saves its `[B, T, A]` output and softmax
//! its `[B, T]` weights; the matmuls save their operands (the projected
//! keys are computed once per sequence with [`Tensor::bahdanau_keys`] and
//! shared by every step).

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Weights of additive attention, PyTorch `nn.Linear` layouts: `w_q`
/// `[A, dq]`, `w_k` `[A, dk]`, optional bias `b` `[A]` (added once), and
/// `v` `[1, A]` (or `[A]`).
#[derive(Clone, Debug)]
pub struct BahdanauWeights {
    pub w_q: Tensor,
    pub w_k: Tensor,
    pub b: Option<Tensor>,
    pub v: Tensor,
}

impl Tensor {
    /// `W_k k` for keys `[B, T, dk]`: `[B, T, A]`, computed once per
    /// sequence and passed to every step's [`Tensor::bahdanau_attention`].
    pub fn bahdanau_keys(keys: &Tensor, w: &BahdanauWeights) -> Result<Tensor> {
        if keys.rank() != 3 || w.w_k.rank() != 2 || keys.dim(2) != w.w_k.dim(1) {
            return Err(Error::shape(
                "bahdanau_attention",
                format!("keys {:?} with w_k {:?}: need keys [B, T, dk] and w_k [A, dk]", keys.shape(), w.w_k.shape()),
            ));
        }
        keys.matmul(&w.w_k.transpose(0, 1)?)
    }

    /// One step of additive attention: `query` `[B, dq]` against projected
    /// keys `[B, T, A]` (from [`Tensor::bahdanau_keys`]); the softmax over T
    /// skips keys where `key_padding` (u8 `[B, T]`, 1 = padded) is set, and
    /// every row needs at least one unpadded key. Returns the context
    /// `Σ_t α_t·values_t` `[B, dv]` for `values` `[B, T, dv]`, and the
    /// weights α `[B, T]`.
    pub fn bahdanau_attention(
        query: &Tensor,
        keys_proj: &Tensor,
        values: &Tensor,
        w: &BahdanauWeights,
        key_padding: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        const OP: &str = "bahdanau_attention";
        let a = w.w_q.shape().first().copied().unwrap_or(0);
        let fine = query.rank() == 2
            && keys_proj.rank() == 3
            && values.rank() == 3
            && w.w_q.rank() == 2
            && w.w_q.dim(1) == query.dim(1)
            && keys_proj.dim(0) == query.dim(0)
            && keys_proj.dim(2) == a
            && values.shape()[..2] == keys_proj.shape()[..2]
            && w.v.numel() == a
            && w.b.as_ref().is_none_or(|b| b.shape() == [a]);
        if !fine {
            return Err(Error::shape(
                OP,
                format!(
                    "query {:?}, projected keys {:?}, values {:?}, w_q {:?}, v {:?}: need query [B, dq], keys [B, T, A], values [B, T, dv], w_q [A, dq], v [1, A], bias [A]",
                    query.shape(),
                    keys_proj.shape(),
                    values.shape(),
                    w.w_q.shape(),
                    w.v.shape()
                ),
            ));
        }
        let (b, t) = (keys_proj.dim(0), keys_proj.dim(1));
        let mut qp = query.matmul(&w.w_q.transpose(0, 1)?)?;
        if let Some(bias) = &w.b {
            qp = qp.add(bias)?;
        }
        let e = keys_proj.add(&qp.unsqueeze(1)?)?.tanh()?;
        let mut scores = e.matmul(&w.v.reshape(&[a, 1])?)?.reshape(&[b, t])?;
        if let Some(m) = key_padding {
            if m.shape() != [b, t] {
                return Err(Error::shape(
                    OP,
                    format!("key_padding {:?} for keys {:?}: need [B, T] = [{b}, {t}]", m.shape(), keys_proj.shape()),
                ));
            }
            scores = scores.masked_fill(m, f32::NEG_INFINITY)?;
        }
        let alpha = scores.softmax(-1)?;
        let context = alpha.unsqueeze(1)?.matmul(values)?.reshape(&[b, values.dim(2)])?;
        Ok((context, alpha))
    }

    /// [`Tensor::bahdanau_keys`] then [`Tensor::bahdanau_attention`].
    pub fn additive_attention(
        query: &Tensor,
        keys: &Tensor,
        values: &Tensor,
        w: &BahdanauWeights,
        key_padding: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        Tensor::bahdanau_attention(query, &Tensor::bahdanau_keys(keys, w)?, values, w, key_padding)
    }
}
