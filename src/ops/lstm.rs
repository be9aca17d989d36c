//! LSTM with PyTorch's layouts: a fused cell (`lstm_cell`), a layer that
//! loops it over time (`lstm`), and a bidirectional layer
//! (`lstm_bidirectional`). Weights `w_ih` `[4H, in]`, `w_hh` `[4H, H]`,
//! biases `b_ih`, `b_hh` `[4H]` (both added), gates in order i, f, g, o.
//!
//! Memory: each cell saves its activated gates `[B, 4H]` (new bytes), and
//! keeps alive the previous `h` and `c` `[B, H]` and its input `x_t` (a view
//! of the layer's input, so no new bytes). Over a sequence of T steps the
//! tape therefore holds `T·B·6H` elements of the compute dtype (gates,
//! plus every step's h and c), beyond the input; that, not the weights, is
//! what makes long LSTMs expensive.

use super::{float_only, output, same_arena, same_dtype};
use crate::alloc::Tag;
use crate::autograd::{no_grad, record_many};
use crate::cpu::lstm::{self as k, Biases};
use crate::cuda::ops as cuda;
use crate::error::{Error, Result};
use crate::tensor::DType;
use crate::tensor::Tensor;
use crate::with_float;

/// One direction's weights (PyTorch's `weight_ih_l0`, `weight_hh_l0`,
/// `bias_ih_l0`, `bias_hh_l0`, or the `_reverse` set).
#[derive(Clone, Debug)]
pub struct LstmParams {
    pub w_ih: Tensor,
    pub w_hh: Tensor,
    pub b_ih: Option<Tensor>,
    pub b_hh: Option<Tensor>,
}

impl LstmParams {
    /// The same weights stored as `dtype` (free when they already are).
    pub fn to_dtype(&self, dtype: crate::tensor::DType) -> Result<LstmParams> {
        let cast = |t: &Option<Tensor>| t.as_ref().map(|t| t.to_dtype(dtype)).transpose();
        Ok(LstmParams {
            w_ih: self.w_ih.to_dtype(dtype)?,
            w_hh: self.w_hh.to_dtype(dtype)?,
            b_ih: cast(&self.b_ih)?,
            b_hh: cast(&self.b_hh)?,
        })
    }
}

fn mut_of<T: crate::tensor::Element>(t: &Option<Tensor>) -> Result<Option<&mut [T]>> {
    t.as_ref().map(|t| t.data_mut::<T>()).transpose()
}

impl Tensor {
    /// One LSTM step: `x` `[B, in]`, state `h`, `c` `[B, H]` → `(h', c')`.
    /// Any of the inputs may be strided views (a time step of a sequence is).
    ///
    /// Recorded as one node with two outputs. It saves `x`, `h`, `c`, the
    /// two weights, and the activated gates `[B, 4H]` — the only bytes it
    /// adds to the tape (`4·B·H·size`); tanh(c') is recomputed in backward.
    #[allow(clippy::too_many_arguments)]
    pub fn lstm_cell(
        x: &Tensor,
        h: &Tensor,
        c: &Tensor,
        w_ih: &Tensor,
        w_hh: &Tensor,
        b_ih: Option<&Tensor>,
        b_hh: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        const OP: &str = "lstm_cell";
        let hd = w_hh.shape().last().copied().unwrap_or(0);
        let fine = x.rank() == 2
            && w_ih.rank() == 2
            && w_hh.rank() == 2
            && w_ih.dim(0) == 4 * hd
            && w_hh.dim(0) == 4 * hd
            && w_ih.dim(1) == x.dim(1)
            && h.shape() == [x.dim(0), hd]
            && c.shape() == [x.dim(0), hd];
        if !fine {
            return Err(Error::shape(
                OP,
                format!(
                    "x {:?}, h {:?}, c {:?}, w_ih {:?}, w_hh {:?}: need x [B, in], h and c [B, H], w_ih [4H, in], w_hh [4H, H]",
                    x.shape(),
                    h.shape(),
                    c.shape(),
                    w_ih.shape(),
                    w_hh.shape()
                ),
            ));
        }
        float_only(OP, x)?;
        for t in [h, c, w_ih, w_hh].into_iter().chain(b_ih).chain(b_hh) {
            same_dtype(OP, x, t)?;
            same_arena(OP, &[x, t])?;
        }
        for (name, b) in [("b_ih", b_ih), ("b_hh", b_hh)] {
            if let Some(b) = b {
                if b.shape() != [4 * hd] {
                    return Err(Error::shape(
                        OP,
                        format!("{name} {:?} for hidden size {hd}: need [{}]", b.shape(), 4 * hd),
                    ));
                }
            }
        }
        let batch = x.dim(0);
        let (gates, gh) = {
            let _g = no_grad();
            (x.matmul(&w_ih.transpose(0, 1)?)?, h.matmul(&w_hh.transpose(0, 1)?)?)
        };
        let cc = c.contiguous_untracked(OP)?;
        let bi = b_ih.map(|b| b.contiguous_untracked(OP)).transpose()?;
        let bh = b_hh.map(|b| b.contiguous_untracked(OP)).transpose()?;
        let h_out = output(OP, x, &[batch, hd], x.dtype())?;
        let c_out = output(OP, x, &[batch, hd], x.dtype())?;
        if h_out.is_cuda() {
            let cell = crate::cuda::kernels::LstmCell {
                gates: gates.device_ptr(),
                gh: Some(gh.device_ptr()),
                b_ih: bi.as_ref().map(Tensor::device_ptr),
                b_hh: bh.as_ref().map(Tensor::device_ptr),
                c: cc.device_ptr(),
                h_out: h_out.device_ptr(),
                c_out: c_out.device_ptr(),
            };
            cuda::gpu(OP, x)?.launch(&crate::cuda::kernels::lstm_cell(x.dtype(), batch, hd, &cell)?)?;
        } else if !h_out.is_meta() {
            with_float!(OP, x.dtype(), |T| k::forward::<T>(
                gates.data_mut::<T>()?,
                gh.data::<T>()?,
                Biases {
                    ih: bi.as_ref().map(|b| b.data::<T>()).transpose()?,
                    hh: bh.as_ref().map(|b| b.data::<T>()).transpose()?,
                },
                cc.data::<T>()?,
                hd,
                h_out.data_mut::<T>()?,
                c_out.data_mut::<T>()?
            ));
        }
        drop(gh);
        let mut inputs = vec![x, h, c, w_ih, w_hh];
        inputs.extend(b_ih.into_iter().chain(b_hh));
        let wants: Vec<bool> = inputs.iter().map(|t| t.requires_grad_flag()).collect();
        let nb = [b_ih.is_some(), b_hh.is_some()];
        let saved = vec![x.clone(), h.clone(), cc, w_ih.clone(), w_hh.clone(), gates];
        let mut outs = record_many(OP, &inputs, vec![h_out, c_out], saved, move |s, g| {
            let (x, h, c, w_ih, w_hh, gates) = (&s[0], &s[1], &s[2], &s[3], &s[4], &s[5]);
            let dh = g[0].as_ref().map(|t| t.contiguous_untracked(OP)).transpose()?;
            let dc = g[1].as_ref().map(|t| t.contiguous_untracked(OP)).transpose()?;
            let dgates = output(OP, gates, gates.shape(), gates.dtype())?;
            let dc_prev = wants[2].then(|| output(OP, gates, &[batch, hd], gates.dtype())).transpose()?;
            if dgates.is_cuda() {
                let cell = crate::cuda::kernels::LstmCellGrad {
                    gates: gates.device_ptr(),
                    c: c.device_ptr(),
                    dh: dh.as_ref().map(Tensor::device_ptr),
                    dc: dc.as_ref().map(Tensor::device_ptr),
                    dgates: dgates.device_ptr(),
                    dc_prev: dc_prev.as_ref().map(Tensor::device_ptr),
                };
                let l = crate::cuda::kernels::lstm_cell_grad(gates.dtype(), batch, hd, &cell)?;
                cuda::gpu(OP, gates)?.launch(&l)?;
            } else if !dgates.is_meta() {
                with_float!(OP, gates.dtype(), |T| k::backward::<T>(
                    gates.data::<T>()?,
                    c.data::<T>()?,
                    dh.as_ref().map(|t| t.data::<T>()).transpose()?,
                    dc.as_ref().map(|t| t.data::<T>()).transpose()?,
                    hd,
                    dgates.data_mut::<T>()?,
                    dc_prev.as_ref().map(|t| t.data_mut::<T>()).transpose()?
                ));
            }
            drop((dh, dc));
            let dgt = dgates.transpose(0, 1)?;
            let mut grads = vec![
                wants[0].then(|| dgates.matmul(w_ih)).transpose()?,
                wants[1].then(|| dgates.matmul(w_hh)).transpose()?,
                dc_prev,
                wants[3].then(|| dgt.matmul(x)).transpose()?,
                wants[4].then(|| dgt.matmul(h)).transpose()?,
            ];
            let bias_wanted = wants[5..].iter().any(|&w| w);
            let db = bias_wanted.then(|| dgates.sum(&[0], false)).transpose()?;
            let mut at = 5;
            for present in nb {
                if present {
                    grads.push(if wants[at] { db.clone() } else { None });
                    at += 1;
                }
            }
            Ok(grads)
        });
        let c_new = outs.pop().expect("two outputs");
        Ok((outs.pop().expect("two outputs"), c_new))
    }

    /// One LSTM layer over `[B, T, in]` (batch first): the cell run over
    /// time, backwards when `reverse`, from `state` = (h0, c0) `[B, H]` or
    /// zeros. Returns the hidden state of every step `[B, T, H]` (in input
    /// order, also when reversed) and the final (h, c).
    ///
    /// Recorded as one tape node for the whole sequence (as cuDNN runs a
    /// layer), so a 5 500-step layer costs one node, not 5 500. It saves the
    /// input, the activated gates `[T, B, 4H]` and every step's h and c
    /// `[T, B, H]` — `6·T·B·H` elements of the compute dtype beyond the
    /// input (the h of every step is also the output) — and the weights.
    /// Products run one step at a time in f32: Workspace of
    /// `cpu::lstm::Dims::forward_workspace` f32 in the forward and
    /// `backward_workspace` in the backward; the gate gradients of a step
    /// are used at once, never kept for the sequence.
    pub fn lstm(
        &self,
        p: &LstmParams,
        reverse: bool,
        state: Option<(&Tensor, &Tensor)>,
    ) -> Result<(Tensor, (Tensor, Tensor))> {
        const OP: &str = "lstm";
        let hd = p.w_hh.shape().last().copied().unwrap_or(0);
        let fine = self.rank() == 3
            && self.dim(1) > 0
            && p.w_ih.rank() == 2
            && p.w_hh.rank() == 2
            && p.w_ih.dim(0) == 4 * hd
            && p.w_hh.dim(0) == 4 * hd
            && p.w_ih.dim(1) == self.dim(2);
        if !fine {
            return Err(Error::shape(
                OP,
                format!(
                    "input {:?}, w_ih {:?}, w_hh {:?}: need a non-empty [B, T, in] (batch first), w_ih [4H, in], w_hh [4H, H]",
                    self.shape(),
                    p.w_ih.shape(),
                    p.w_hh.shape()
                ),
            ));
        }
        float_only(OP, self)?;
        let biases: Vec<&Tensor> = p.b_ih.iter().chain(&p.b_hh).collect();
        for t in [&p.w_ih, &p.w_hh].into_iter().chain(biases.iter().copied()) {
            same_dtype(OP, self, t)?;
            same_arena(OP, &[self, t])?;
        }
        for b in &biases {
            if b.shape() != [4 * hd] {
                return Err(Error::shape(OP, format!("bias {:?} for hidden size {hd}: need [{}]", b.shape(), 4 * hd)));
            }
        }
        let (batch, steps, input) = (self.dim(0), self.dim(1), self.dim(2));
        if let Some((h, c)) = state {
            if h.shape() != [batch, hd] || c.shape() != [batch, hd] {
                return Err(Error::shape(
                    OP,
                    format!("initial state h {:?}, c {:?}: need [B, H] = [{batch}, {hd}]", h.shape(), c.shape()),
                ));
            }
            same_dtype(OP, self, h)?;
            same_dtype(OP, self, c)?;
        }
        let d = k::Dims { batch, steps, input, hidden: hd };
        let dense = |t: &Tensor| t.contiguous_untracked(OP);
        let x = dense(self)?;
        let (w_ih, w_hh) = (dense(&p.w_ih)?, dense(&p.w_hh)?);
        let (b_ih, b_hh) = (p.b_ih.as_ref().map(dense).transpose()?, p.b_hh.as_ref().map(dense).transpose()?);
        let st = state.map(|(h, c)| Ok::<_, Error>((dense(h)?, dense(c)?))).transpose()?;
        let gates = output(OP, &x, &[steps, batch, 4 * hd], x.dtype())?;
        let hs = output(OP, &x, &[steps, batch, hd], x.dtype())?;
        let cs = output(OP, &x, &[steps, batch, hd], x.dtype())?;
        let on_cuda = x.arena().target() == crate::alloc::Target::Cuda;
        if on_cuda {
            let zeros = cuda::lstm_forward_workspace(&d, st.is_some());
            let zeros = Tensor::empty(x.arena(), &[zeros], x.dtype(), Tag::Workspace, OP)?;
            let gemm = cuda::gemm_workspace(&x)?;
            if hs.is_cuda() {
                let l = cuda::LstmSeq {
                    d,
                    reverse,
                    x: &x,
                    w_ih: &w_ih,
                    w_hh: &w_hh,
                    b_ih: b_ih.as_ref(),
                    b_hh: b_hh.as_ref(),
                    state: st.as_ref().map(|(h, c)| (h, c)),
                };
                cuda::lstm_forward(&l, &gates, &hs, &cs, &zeros, &gemm)?;
            }
        } else {
            let ws = Tensor::empty(x.arena(), &[d.forward_workspace()], DType::F32, Tag::Workspace, OP)?;
            if !hs.is_meta() {
                with_float!(OP, x.dtype(), |T| {
                    let state = match &st {
                        Some((h, c)) => Some((h.data::<T>()?, c.data::<T>()?)),
                        None => None,
                    };
                    k::seq_forward::<T>(
                        d,
                        reverse,
                        x.data::<T>()?,
                        w_ih.data::<T>()?,
                        w_hh.data::<T>()?,
                        Biases {
                            ih: b_ih.as_ref().map(|b| b.data::<T>()).transpose()?,
                            hh: b_hh.as_ref().map(|b| b.data::<T>()).transpose()?,
                        },
                        state,
                        gates.data_mut::<T>()?,
                        hs.data_mut::<T>()?,
                        cs.data_mut::<T>()?,
                        ws.data_mut::<f32>()?,
                    )
                });
            }
        }
        let last = if reverse { 0 } else { steps - 1 };
        let out = hs.permute(&[1, 0, 2])?;
        let (h_n, c_n) = (hs.slice(0, last, last + 1)?.squeeze(0)?, cs.slice(0, last, last + 1)?.squeeze(0)?);
        let mut inputs: Vec<&Tensor> = vec![self, &p.w_ih, &p.w_hh];
        inputs.extend(biases.iter().copied());
        if let Some((h, c)) = state {
            inputs.extend([h, c]);
        }
        let wants: Vec<bool> = inputs.iter().map(|t| t.requires_grad_flag()).collect();
        let nb = biases.len();
        let mut saved = vec![x, w_ih, w_hh, gates, hs, cs];
        if let Some((h, c)) = st {
            saved.extend([h, c]);
        }
        let mut outs = record_many(OP, &inputs, vec![out, h_n, c_n], saved, move |s, g| {
            let (x, w_ih, w_hh, gates, hs, cs) = (&s[0], &s[1], &s[2], &s[3], &s[4], &s[5]);
            let st = s.get(6).zip(s.get(7));
            let grad = |i: usize| g[i].as_ref().map(|t| t.contiguous_untracked(OP)).transpose();
            let (dy, dh_n, dc_n) = (grad(0)?, grad(1)?, grad(2)?);
            let want_state = st.is_some() && wants[3 + nb..].iter().any(|&w| w);
            let like = |t: &Tensor, on: bool| on.then(|| output(OP, t, t.shape(), t.dtype())).transpose();
            let dx = like(x, wants[0])?;
            let dw_ih = like(w_ih, wants[1])?;
            let dw_hh = like(w_hh, wants[2])?;
            let dbias =
                (wants[3..3 + nb].iter().any(|&w| w)).then(|| output(OP, x, &[w_hh.dim(0)], x.dtype())).transpose()?;
            let (dh0, dc0) = match st {
                Some((h, c)) if want_state => (like(h, true)?, like(c, true)?),
                _ => (None, None),
            };
            if x.arena().target() == crate::alloc::Target::Cuda {
                let (n32, ndt) = cuda::lstm_backward_workspace(&d, x.dtype());
                let ws32 = Tensor::empty(x.arena(), &[n32], DType::F32, Tag::Workspace, OP)?;
                let wsdt = Tensor::empty(x.arena(), &[ndt], x.dtype(), Tag::Workspace, OP)?;
                let gemm = cuda::gemm_workspace(x)?;
                if ws32.is_cuda() {
                    let l = cuda::LstmSeq { d, reverse, x, w_ih, w_hh, b_ih: None, b_hh: None, state: st };
                    let saved =
                        cuda::LstmSaved { gates, hs, cs, dy: dy.as_ref(), dh_n: dh_n.as_ref(), dc_n: dc_n.as_ref() };
                    let out = cuda::LstmGrads {
                        dx: dx.as_ref(),
                        w_ih: dw_ih.as_ref(),
                        w_hh: dw_hh.as_ref(),
                        bias: dbias.as_ref(),
                        h0: dh0.as_ref(),
                        c0: dc0.as_ref(),
                    };
                    cuda::lstm_backward(&l, &saved, &out, &ws32, &wsdt, &gemm)?;
                }
                drop((ws32, wsdt, gemm));
            }
            let ws = (x.arena().target() != crate::alloc::Target::Cuda)
                .then(|| Tensor::empty(x.arena(), &[d.backward_workspace()], DType::F32, Tag::Workspace, OP))
                .transpose()?;
            if let Some(ws) = ws.as_ref().filter(|w| !w.is_meta()) {
                with_float!(OP, x.dtype(), |T| {
                    let state = match st {
                        Some((h, c)) => Some((h.data::<T>()?, c.data::<T>()?)),
                        None => None,
                    };
                    k::seq_backward::<T>(
                        d,
                        reverse,
                        x.data::<T>()?,
                        w_ih.data::<T>()?,
                        w_hh.data::<T>()?,
                        state,
                        gates.data::<T>()?,
                        hs.data::<T>()?,
                        cs.data::<T>()?,
                        dy.as_ref().map(|t| t.data::<T>()).transpose()?,
                        dh_n.as_ref().map(|t| t.data::<T>()).transpose()?,
                        dc_n.as_ref().map(|t| t.data::<T>()).transpose()?,
                        k::SeqGrads {
                            dx: mut_of::<T>(&dx)?,
                            w_ih: mut_of::<T>(&dw_ih)?,
                            w_hh: mut_of::<T>(&dw_hh)?,
                            bias: mut_of::<T>(&dbias)?,
                            h0: mut_of::<T>(&dh0)?,
                            c0: mut_of::<T>(&dc0)?,
                        },
                        ws.data_mut::<f32>()?,
                    )
                });
            }
            drop((ws, dy, dh_n, dc_n));
            let mut grads = vec![dx, dw_ih, dw_hh];
            for i in 0..nb {
                grads.push(if wants[3 + i] { dbias.clone() } else { None });
            }
            if st.is_some() {
                grads.extend([dh0, dc0]);
            }
            Ok(grads)
        });
        let c_n = outs.pop().expect("three outputs");
        let h_n = outs.pop().expect("three outputs");
        Ok((outs.pop().expect("three outputs"), (h_n, c_n)))
    }

    /// A bidirectional LSTM layer over `[B, T, in]`: `fwd` runs forward in
    /// time, `bwd` backward, and their outputs are joined on the feature
    /// dim: `[B, T, 2H]` (forward first, as PyTorch). `state` = (h0, c0)
    /// `[2, B, H]` (direction first) or zeros; returns the final
    /// (h_n, c_n) `[2, B, H]`.
    pub fn lstm_bidirectional(
        &self,
        fwd: &LstmParams,
        bwd: &LstmParams,
        state: Option<(&Tensor, &Tensor)>,
    ) -> Result<(Tensor, (Tensor, Tensor))> {
        let split = |t: &Tensor| -> Result<Vec<Tensor>> {
            if t.rank() != 3 || t.dim(0) != 2 {
                return Err(Error::shape(
                    "lstm_bidirectional",
                    format!(
                        "initial state {:?} for input {:?}: need [2, B, H], direction first",
                        t.shape(),
                        self.shape()
                    ),
                ));
            }
            t.unbind(0)
        };
        let (sf, sb) = match state {
            Some((h, c)) => {
                let (hs, cs) = (split(h)?, split(c)?);
                (Some((hs[0].clone(), cs[0].clone())), Some((hs[1].clone(), cs[1].clone())))
            }
            None => (None, None),
        };
        let (of, (hf, cf)) = self.lstm(fwd, false, sf.as_ref().map(|(h, c)| (h, c)))?;
        let (ob, (hb, cb)) = self.lstm(bwd, true, sb.as_ref().map(|(h, c)| (h, c)))?;
        let out = Tensor::concat(&[&of, &ob], 2)?;
        let h_n = Tensor::concat(&[&hf.unsqueeze(0)?, &hb.unsqueeze(0)?], 0)?;
        let c_n = Tensor::concat(&[&cf.unsqueeze(0)?, &cb.unsqueeze(0)?], 0)?;
        Ok((out, (h_n, c_n)))
    }
}
