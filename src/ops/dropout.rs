//! Inverted dropout that keeps no mask: the backward regenerates it from a
//! seed drawn in the forward.

use super::output;
use crate::autograd::record;
use crate::cpu::dropout as k;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::with_float;

impl Tensor {
    /// Zero each element with probability `p` and scale the rest by
    /// 1/(1 − p); `p` in [0, 1). `p == 0` returns `self` and draws nothing.
    ///
    /// Draws one u64 seed from `rng` (on every device, so the stream stays in
    /// step) and saves nothing: the backward rebuilds the mask from the seed,
    /// and the same `rng` state gives the same mask (what recompute needs).
    pub fn dropout(&self, p: f32, rng: &mut Rng) -> Result<Tensor> {
        const OP: &str = "dropout";
        if !(0.0..1.0).contains(&p) {
            return Err(Error::invalid(OP, format!("p = {p} for input {:?} must be in [0, 1)", self.shape())));
        }
        if !self.dtype().is_float() {
            return Err(Error::dtype(
                OP,
                format!("input {:?} is {}, expected f32, f16 or bf16", self.shape(), self.dtype()),
            ));
        }
        if p == 0.0 {
            return Ok(self.clone());
        }
        let seed = rng.next_u64();
        let x = self.contiguous_untracked(OP)?;
        let out = output(OP, &x, x.shape(), x.dtype())?;
        if out.is_cuda() {
            if x.numel() > 0 {
                crate::cuda::ops::dropout(&x, &out, seed, p)?;
            }
        } else if !out.is_meta() {
            with_float!(OP, x.dtype(), |T| k::dropout::<T>(x.data::<T>()?, seed, p, out.data_mut::<T>()?));
        }
        Ok(record(OP, &[self], out, vec![], move |_, g| {
            let g = g[0].as_ref().expect("gradient").contiguous_untracked(OP)?;
            let dx = output(OP, &g, g.shape(), g.dtype())?;
            if dx.is_cuda() {
                if g.numel() > 0 {
                    crate::cuda::ops::dropout(&g, &dx, seed, p)?;
                }
            } else if !dx.is_meta() {
                with_float!(OP, g.dtype(), |T| k::dropout::<T>(g.data::<T>()?, seed, p, dx.data_mut::<T>()?));
            }
            Ok(vec![Some(dx)])
        }))
    }
}
