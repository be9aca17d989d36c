//! Fused attention's time for several tile sizes: the measurement behind
//! `cpu::attention::tiles`. B = 1, H = 4, N = 2048, D = 64, causal off,
//! f32, on one thread (rayon and matrixmultiply), median of interleaved
//! rounds, each tiling relative to the default 128 × 128.
//!
//! `MATMUL_NUM_THREADS=1 cargo run --release --example attention_tiles`

use headroom::autograd::backward_with;
use headroom::ops::{attention, AttentionOptions};
use headroom::rng::Rng;
use headroom::{Arena, DType, Tag, Tensor};
use std::time::Instant;

const TILES: [(usize, usize); 6] = [(128, 128), (64, 64), (32, 128), (64, 128), (128, 64), (128, 256)];

/// Seconds of one forward, and of one forward + backward.
fn time(x: &[Tensor; 4], tiles: (usize, usize)) -> headroom::Result<(f64, f64)> {
    let opts = AttentionOptions { tiles: Some(tiles), ..Default::default() };
    let t = Instant::now();
    drop(attention(&x[0].detach(), &x[1].detach(), &x[2].detach(), &opts)?);
    let fwd = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let out = attention(&x[0], &x[1], &x[2], &opts)?;
    backward_with(&out, x[3].clone())?;
    let both = t.elapsed().as_secs_f64();
    for p in &x[..3] {
        p.zero_grad();
    }
    Ok((fwd, both))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> headroom::Result<()> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("a one-thread pool");
    pool.install(|| {
        let arena = Arena::host();
        let mut rng = Rng::new(0);
        let shape = [1, 4, 2048, 64];
        let mut x = || Tensor::randn(&arena, &shape, 1.0, DType::F32, Tag::Data, &mut rng);
        let x = [x()?.requires_grad(), x()?.requires_grad(), x()?.requires_grad(), x()?];
        let rounds = 7;
        let mut times: Vec<(Vec<f64>, Vec<f64>)> = TILES.iter().map(|_| (vec![], vec![])).collect();
        time(&x, TILES[0])?; // warm up: pages, pools
        for _ in 0..rounds {
            for (i, &t) in TILES.iter().enumerate() {
                let (f, b) = time(&x, t)?;
                times[i].0.push(f);
                times[i].1.push(b);
            }
        }
        let (f0, b0) = (median(times[0].0.clone()), median(times[0].1.clone()));
        println!("B=1 H=4 N=2048 D=64 f32, one thread, median of {rounds} rounds");
        println!("| tiles (q × k) | forward ms | vs 128×128 | forward+backward ms | vs 128×128 |");
        println!("| --- | --- | --- | --- | --- |");
        for (i, &(bq, bk)) in TILES.iter().enumerate() {
            let (f, b) = (median(times[i].0.clone()), median(times[i].1.clone()));
            println!(
                "| {bq}×{bk} | {:.1} | {:+.0} % | {:.1} | {:+.0} % |",
                f * 1e3,
                100.0 * (f / f0 - 1.0),
                b * 1e3,
                100.0 * (b / b0 - 1.0)
            );
        }
        Ok(())
    })
}
