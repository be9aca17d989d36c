//! Peak bytes of one attention layer's forward and backward, fused against
//! naive: B = 1, H = 4, head dim 64, no mask (the shapes of
//! `benches/attention.rs`). q, k, v are op outputs, as a projection's are,
//! so what the layer saves counts as Activation.
//!
//! `cargo run --release --example attention_memory`

use headroom::autograd::backward_with;
use headroom::ops::{attention, AttentionKind, AttentionOptions};
use headroom::{Arena, DType, Tag, Tensor};
use std::time::Instant;

/// (Workspace + Activation + Temporary, each at its peak; the arena's
/// allocated peak; seconds).
fn measure(kind: AttentionKind, n: usize) -> headroom::Result<(usize, usize, f64)> {
    let arena = Arena::host();
    let shape = [1, 4, n, 64];
    let leaf =
        || Ok::<_, headroom::Error>(Tensor::full(&arena, &shape, 0.01, DType::F32, Tag::Parameter)?.requires_grad());
    let (qp, kp, vp) = (leaf()?, leaf()?, leaf()?);
    let dout = Tensor::full(&arena, &shape, 1.0, DType::F32, Tag::Data)?;
    arena.reset_peaks();
    let start = Instant::now();
    let (q, k, v) = (qp.mul_scalar(1.0)?, kp.mul_scalar(1.0)?, vp.mul_scalar(1.0)?);
    let out = attention(&q, &k, &v, &AttentionOptions { kind, ..Default::default() })?;
    drop((q, k, v));
    backward_with(&out, dout)?;
    let secs = start.elapsed().as_secs_f64();
    let s = arena.stats();
    let wat = [Tag::Workspace, Tag::Activation, Tag::Temporary].iter().map(|&t| s.tag(t).allocated.peak).sum();
    Ok((wat, s.allocated.peak, secs))
}

fn main() -> headroom::Result<()> {
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    println!("peak Workspace+Activation+Temporary (sum of per-tag peaks) and whole-arena peak, MiB; B=1 H=4 D=64");
    println!(
        "{:>6} {:>12} {:>12} {:>8} {:>12} {:>12} {:>8}",
        "N", "naive W+A+T", "fused W+A+T", "ratio", "naive arena", "fused arena", "ratio"
    );
    let mut first = None;
    for n in [256, 512, 1024, 2048, 4096] {
        let (nw, na, _) = measure(AttentionKind::Naive, n)?;
        let (fw, fa, _) = measure(AttentionKind::Fused, n)?;
        println!(
            "{n:>6} {:>12.2} {:>12.2} {:>8.2} {:>12.2} {:>12.2} {:>8.2}",
            mib(nw),
            mib(fw),
            nw as f64 / fw as f64,
            mib(na),
            mib(fa),
            na as f64 / fa as f64
        );
        first.get_or_insert((n, nw, fw));
        let (n0, nw0, fw0) = first.unwrap();
        if n != n0 {
            println!(
                "{:>6} growth from N={n0}: naive {:.1}×, fused {:.1}×",
                "",
                nw as f64 / nw0 as f64,
                fw as f64 / fw0 as f64
            );
        }
    }
    Ok(())
}
