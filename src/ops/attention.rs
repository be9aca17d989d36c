//! Scaled dot-product attention, two ways: `Naive` composes the existing
//! ops (and so keeps the B×H×Tq×Tk probabilities for backward, as plain
//! user code does); `Fused` runs FlashAttention's tiled forward and backward
//! (`cpu::attention`), whose memory grows linearly with the lengths.

use super::{output, same_arena, same_dtype};
use crate::alloc::Tag;
use crate::autograd::record;
use crate::cpu::attention::{self as kern, Config, Grads, Rows, RowsMut, Saved};
use crate::error::{Error, Result};
use crate::tensor::{DType, Element, Tensor};
use crate::with_float;
use half::{bf16, f16};
use serde::Serialize;

/// How [`attention`] computes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionKind {
    /// matmul, masked_fill, softmax, matmul: saves the probabilities.
    Naive,
    /// Tiled, online softmax; saves the output and one log-sum-exp per row.
    #[default]
    Fused,
}

impl AttentionKind {
    pub fn name(self) -> &'static str {
        match self {
            AttentionKind::Naive => "naive",
            AttentionKind::Fused => "fused",
        }
    }
    /// `"naive"` or `"fused"`.
    pub fn parse(s: &str) -> Option<AttentionKind> {
        [AttentionKind::Naive, AttentionKind::Fused].into_iter().find(|k| k.name() == s)
    }
}

impl std::fmt::Display for AttentionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Settings of [`attention`]; `Default` is full (unmasked) fused attention
/// scaled by 1/√D.
///
/// ```
/// use headroom::ops::{attention, AttentionOptions};
/// use headroom::{Arena, DType, Tag, Tensor};
/// let arena = Arena::host();
/// // Equal queries and keys: every visible key gets the same weight.
/// let q = Tensor::full(&arena, &[1, 1, 3, 4], 0.5, DType::F32, Tag::Data).unwrap();
/// let v: Vec<f32> = (0..12).map(|i| i as f32).collect();
/// let v = Tensor::from_f32(&arena, &[1, 1, 3, 4], &v, DType::F32, Tag::Data).unwrap();
/// // Key 2 is padding, so each query averages value rows 0 and 1.
/// let pad = Tensor::from_slice(&arena, &[1, 3], &[0u8, 0, 1], Tag::Data).unwrap();
/// let opts = AttentionOptions { key_padding: Some(pad), ..Default::default() };
/// let y = attention(&q, &q, &v, &opts).unwrap().to_vec_f32().unwrap();
/// assert_eq!(y[..4], [2., 3., 4., 5.]);
/// // Causal: query 0 sees key 0 only.
/// let causal = AttentionOptions { causal: true, ..Default::default() };
/// assert_eq!(attention(&q, &q, &v, &causal).unwrap().to_vec_f32().unwrap()[..4], [0., 1., 2., 3.]);
/// ```
#[derive(Clone, Debug, Default)]
pub struct AttentionOptions {
    /// Query i sees keys j ≤ i. Aligned at the top left as PyTorch's
    /// `is_causal`: with Tq > Tk the queries from Tk on see every key; with
    /// Tq < Tk the keys past Tq − 1 are seen by no query.
    pub causal: bool,
    /// u8 `[B, Tk]`, 1 = padded key: hidden from every query.
    pub key_padding: Option<Tensor>,
    /// Score scale; default 1/√D.
    pub scale: Option<f32>,
    pub kind: AttentionKind,
    /// Fused only: (query rows, key rows) per tile. `None` takes
    /// `cpu::attention::tiles(D)`, the sizes chosen for this machine; tests
    /// set small tiles to cross tile edges with short sequences.
    pub tiles: Option<(usize, usize)>,
}

const OP: &str = "attention";

/// `softmax(q kᵀ · scale + mask) v` per batch and head: q `[B, H, Tq, D]`,
/// k and v `[B, H, Tk, D]`, all of one float dtype; output `[B, H, Tq, D]`.
///
/// A query row that sees no key (every visible key padded, or Tk = 0) gets
/// output 0 and zero gradients, not NaN, on both paths.
///
/// `Fused` computes in f32 whatever the stored type. Its output is a
/// `[B, H, Tq, D]` view of a dense `[B, Tq, H, D]` buffer, so moving the
/// heads back next to D (`permute(0, 2, 1, 3)` then reshape to
/// `[B, Tq, H·D]`) copies nothing. It saves q, k, v (as given — views of a
/// projection's output are kept as that one storage), the output, one f32
/// log-sum-exp per query row and the key mask:
/// `size·(2·B·H·Tq·D + 2·B·H·Tk·D) + 4·B·H·Tq` bytes when q, k and v are
/// separate tensors (plus `B·Tk` if the mask had to be made dense).
///
/// Workspace, with w = rayon's thread count (fewer when there are fewer
/// tasks) and (bq, bk) the tiles: the forward holds
/// `w·(2·bq·D + 2·bk·D + bq·bk + 3·bq)` f32s while it runs; the backward
/// `w·(4·bq·D + 3·bk·D + (max(bq, bk) + bk)·D + 2·bq·bk)` f32s, plus
/// `w·Tq·D` when B·H ≥ 2·w (it then runs in one pass, accumulating dQ per
/// (batch, head) in f32), plus `B·H·Tq` f32 row sums. Nothing grows with
/// Tq·Tk.
///
/// `Naive` saves what its ops save: q and k for the scores, the B×H×Tq×Tk
/// softmax output, v, and the masks (a `[Tq, Tk]` causal mask).
///
/// ```
/// use headroom::autograd::{backward, no_grad};
/// use headroom::ops::{attention, AttentionKind, AttentionOptions};
/// use headroom::{rng::Rng, Arena, DType, Tag, Tensor};
/// let arena = Arena::host();
/// let mut rng = Rng::new(0);
/// let (b, h, t, d) = (2, 4, 64, 16);
/// let mut x = || Tensor::randn(&arena, &[b, h, t, d], 1.0, DType::F32, Tag::Data, &mut rng).unwrap().requires_grad();
/// let (q, k, v) = (x(), x(), x());
/// let y = attention(&q, &k, &v, &AttentionOptions { causal: true, ..Default::default() }).unwrap();
/// let reference = {
///     let _g = no_grad();
///     let naive = AttentionOptions { causal: true, kind: AttentionKind::Naive, ..Default::default() };
///     attention(&q, &k, &v, &naive).unwrap().to_vec_f32().unwrap()
/// };
/// assert!(y.to_vec_f32().unwrap().iter().zip(&reference).all(|(a, b)| (a - b).abs() < 1e-5));
/// backward(&y.sum_all().unwrap()).unwrap();
/// assert_eq!(k.grad().unwrap().shape(), &[b, h, t, d]);
/// ```
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOptions) -> Result<Tensor> {
    let scale = check(q, k, v, opts)?;
    match opts.kind {
        AttentionKind::Naive => naive(q, k, v, opts, scale),
        AttentionKind::Fused => fused(q, k, v, opts, scale),
    }
}

/// Validate everything before allocating anything; returns the scale.
fn check(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOptions) -> Result<f32> {
    let shapes = || format!("q {:?}, k {:?}, v {:?}", q.shape(), k.shape(), v.shape());
    if q.rank() != 4 || k.rank() != 4 || v.rank() != 4 {
        return Err(Error::shape(
            OP,
            format!(
                "{}: need q [B, H, Tq, D] and k, v [B, H, Tk, D]; split the model width into heads first",
                shapes()
            ),
        ));
    }
    if k.shape() != v.shape() || q.shape()[..2] != k.shape()[..2] || q.dim(3) != k.dim(3) {
        return Err(Error::shape(
            OP,
            format!("{}: k and v must have one shape, and B, H and D must match q's", shapes()),
        ));
    }
    if q.dim(3) == 0 {
        return Err(Error::shape(OP, format!("{}: head dimension D is 0", shapes())));
    }
    same_arena(OP, &[q, k, v])?;
    same_dtype(OP, q, k)?;
    same_dtype(OP, q, v)?;
    super::float_only(OP, q)?;
    if let Some(m) = &opts.key_padding {
        same_arena(OP, &[q, m])?;
        if m.dtype() != DType::U8 {
            return Err(Error::dtype(
                OP,
                format!("key_padding {:?} is {}, expected u8 (1 = padded key)", m.shape(), m.dtype()),
            ));
        }
        let want = [k.dim(0), k.dim(2)];
        if m.shape() != want {
            return Err(Error::shape(
                OP,
                format!("key_padding {:?} for k {:?}: need [B, Tk] = {want:?}, one flag per key", m.shape(), k.shape()),
            ));
        }
    }
    if let Some((bq, bk)) = opts.tiles {
        if bq == 0 || bk == 0 {
            return Err(Error::invalid(OP, format!("tiles ({bq}, {bk}) for {}: both must be at least 1", shapes())));
        }
    }
    let scale = opts.scale.unwrap_or(1.0 / (q.dim(3) as f32).sqrt());
    if !scale.is_finite() {
        return Err(Error::invalid(OP, format!("scale {scale} for {} is not finite", shapes())));
    }
    Ok(scale)
}

// ---- naive ----

/// The most negative finite value of a float dtype: masked scores get it
/// instead of −∞, so a row with every key masked gives a finite softmax
/// (then zeroed) rather than NaN.
fn lowest(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => f16::MIN.to_f32(),
        DType::BF16 => bf16::MIN.to_f32(),
        _ => f32::MIN,
    }
}

fn naive(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOptions, scale: f32) -> Result<Tensor> {
    let (b, tq, tk) = (q.dim(0), q.dim(2), k.dim(2));
    let low = lowest(q.dtype());
    let mut s = q.matmul(&k.transpose(-1, -2)?)?.mul_scalar(scale)?;
    if opts.causal {
        let mask = Tensor::empty(q.arena(), &[tq, tk], DType::U8, Tag::Temporary, OP)?;
        if !mask.is_meta() {
            for (i, row) in mask.data_mut::<u8>()?.chunks_mut(tk.max(1)).enumerate() {
                for (j, m) in row.iter_mut().enumerate() {
                    *m = (j > i) as u8;
                }
            }
        }
        s = s.masked_fill(&mask, low)?;
    }
    let Some(pad) = &opts.key_padding else {
        return s.softmax(-1)?.matmul(v);
    };
    let pad = pad.contiguous_untracked(OP)?;
    s = s.masked_fill(&pad.reshape(&[b, 1, 1, tk])?, low)?;
    let y = s.softmax(-1)?.matmul(v)?;
    // Rows that see no key: zero output, and so zero gradient.
    let dead = Tensor::empty(q.arena(), &[b, 1, tq, 1], DType::U8, Tag::Temporary, OP)?;
    if !dead.is_meta() {
        let p = pad.data::<u8>()?;
        for (bi, rows) in dead.data_mut::<u8>()?.chunks_mut(tq.max(1)).enumerate() {
            let keys = &p[bi * tk..(bi + 1) * tk];
            for (i, r) in rows.iter_mut().enumerate() {
                let seen = if opts.causal { &keys[..(i + 1).min(tk)] } else { keys };
                *r = seen.iter().all(|&x| x != 0) as u8;
            }
        }
    }
    y.masked_fill(&dead, 0.0)
}

// ---- fused ----

/// The tensor itself when its rows are dense (last stride 1), else a copy.
fn dense_rows(t: &Tensor) -> Result<Tensor> {
    if t.strides()[3] == 1 || t.dim(3) == 1 {
        Ok(t.clone())
    } else {
        t.contiguous_untracked(OP)
    }
}

fn rows<T: Element>(t: &Tensor) -> Result<Rows<'_, T>> {
    let s = t.strides();
    Ok(Rows { data: t.storage_data::<T>()?, offset: t.offset(), strides: [s[0], s[1], s[2]] })
}

/// The elements of a gradient the backward has just allocated, if any.
fn data_of<T: Element>(t: &Option<Tensor>) -> Result<Option<&mut [T]>> {
    t.as_ref().map(|t| t.data_mut::<T>()).transpose()
}

fn fused(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOptions, scale: f32) -> Result<Tensor> {
    let (b, h, tq, d) = (q.dim(0), q.dim(1), q.dim(2), q.dim(3));
    let tk = k.dim(2);
    let cfg = Config::new(b, h, tq, tk, d, opts.tiles.unwrap_or_else(|| kern::tiles(d)), scale, opts.causal);
    let (qd, kd, vd) = (dense_rows(q)?, dense_rows(k)?, dense_rows(v)?);
    let mask = opts.key_padding.as_ref().map(|m| m.contiguous_untracked(OP)).transpose()?;
    // [B, Tq, H, D] underneath, seen as [B, H, Tq, D].
    let buf = output(OP, q, &[b, tq, h, d], q.dtype())?;
    let out = buf.restride(vec![b, h, tq, d], vec![tq * h * d, d, h * d, 1], 0);
    let lse = output(OP, q, &[b, h, tq], DType::F32)?;
    if q.arena().target() == crate::alloc::Target::Cuda {
        return cuda_fused(q, k, v, (qd, kd, vd), mask, buf, out, lse, opts.causal, scale);
    }
    let ws = Tensor::empty(
        q.arena(),
        &[cfg.forward_workspace(rayon::current_num_threads())],
        DType::F32,
        Tag::Workspace,
        OP,
    )?;
    if !out.is_meta() {
        let pad = mask.as_ref().map(|m| m.data::<u8>()).transpose()?;
        with_float!(OP, q.dtype(), |T| {
            // SAFETY: dense buffers; rows of (b, h, i) never overlap.
            let o = unsafe { RowsMut::new(buf.data_mut::<T>()?, [tq * h * d, d, h * d]) };
            let l = unsafe { RowsMut::new(lse.data_mut::<f32>()?, [h * tq, tq, 1]) };
            kern::forward::<T>(&cfg, rows(&qd)?, rows(&kd)?, rows(&vd)?, pad, &o, &l, ws.data_mut::<f32>()?);
        });
    }
    drop(ws);
    let mut saved = vec![qd, kd, vd, out.clone(), lse];
    saved.extend(mask);
    let wants = [q.requires_grad_flag(), k.requires_grad_flag(), v.requires_grad_flag()];
    Ok(record(OP, &[q, k, v], out, saved, move |s, g| {
        let (q, k, v, o, lse) = (&s[0], &s[1], &s[2], &s[3], &s[4]);
        let go = dense_rows(g[0].as_ref().expect("gradient"))?;
        let grad = |want: bool, x: &Tensor| want.then(|| output(OP, x, x.shape(), x.dtype())).transpose();
        let (dq, dk, dv) = (grad(wants[0], q)?, grad(wants[1], k)?, grad(wants[2], v)?);
        let dvec = Tensor::empty(q.arena(), &[b * h * tq], DType::F32, Tag::Workspace, OP)?;
        let threads = rayon::current_num_threads();
        let plan = cfg.backward_plan(threads, dq.is_some(), dk.is_some() || dv.is_some());
        let ws = Tensor::empty(q.arena(), &[plan.workspace()], DType::F32, Tag::Workspace, OP)?;
        if !q.is_meta() {
            let pad = s.get(5).map(|m| m.data::<u8>()).transpose()?;
            with_float!(OP, q.dtype(), |T| {
                kern::row_dots::<T>(&cfg, rows(o)?, rows(&go)?, dvec.data_mut::<f32>()?);
                let saved = Saved {
                    q: rows(q)?,
                    k: rows(k)?,
                    v: rows(v)?,
                    go: rows(&go)?,
                    pad,
                    lse: lse.data::<f32>()?,
                    dvec: dvec.data::<f32>()?,
                };
                let grads = Grads { dq: data_of::<T>(&dq)?, dk: data_of::<T>(&dk)?, dv: data_of::<T>(&dv)? };
                kern::backward::<T>(&cfg, &saved, grads, &plan, ws.data_mut::<f32>()?);
            });
        }
        Ok(vec![dq, dk, dv])
    }))
}

/// Fused attention on a GPU (or planned for one): the kernels' own tiles
/// (`opts.tiles` is the CPU's), no forward workspace, and the backward's
/// only workspace is the f32 row sums `[B, H, Tq]`.
#[allow(clippy::too_many_arguments)]
fn cuda_fused(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (qd, kd, vd): (Tensor, Tensor, Tensor),
    mask: Option<Tensor>,
    buf: Tensor,
    out: Tensor,
    lse: Tensor,
    causal: bool,
    scale: f32,
) -> Result<Tensor> {
    use crate::cuda::ops as cu;
    let (b, h, tq) = (q.dim(0), q.dim(1), q.dim(2));
    let tk = k.dim(2);
    // Nothing to launch when a dimension is 0; no key at all gives output 0.
    let empty = b * h * tq * tk == 0;
    if out.is_cuda() {
        let a = cu::AttentionIn { q: &qd, k: &kd, v: &vd, key_padding: mask.as_ref(), scale, causal };
        if empty {
            cu::gpu(OP, &buf)?.zero(buf.device_ptr(), buf.nbytes())?;
        } else {
            cu::attention_forward(&a, &out, &lse)?;
        }
    }
    let mut saved = vec![qd, kd, vd, out.clone(), lse];
    saved.extend(mask);
    let wants = [q.requires_grad_flag(), k.requires_grad_flag(), v.requires_grad_flag()];
    Ok(record(OP, &[q, k, v], out, saved, move |s, g| {
        let (q, k, v, o, lse) = (&s[0], &s[1], &s[2], &s[3], &s[4]);
        let go = dense_rows(g[0].as_ref().expect("gradient"))?;
        let grad = |want: bool, x: &Tensor| want.then(|| output(OP, x, x.shape(), x.dtype())).transpose();
        let (dq, dk, dv) = (grad(wants[0], q)?, grad(wants[1], k)?, grad(wants[2], v)?);
        let dvec = Tensor::empty(q.arena(), &[b * h * tq], DType::F32, Tag::Workspace, OP)?;
        if q.is_cuda() {
            if empty {
                for t in dq.iter().chain(dk.iter()).chain(dv.iter()) {
                    cu::gpu(OP, t)?.zero(t.device_ptr(), t.nbytes())?;
                }
            } else {
                let a = cu::AttentionIn { q, k, v, key_padding: s.get(5), scale, causal };
                cu::attention_backward(&a, o, &go, lse, &dvec, dq.as_ref(), dk.as_ref(), dv.as_ref())?;
            }
        }
        Ok(vec![dq, dk, dv])
    }))
}
