//! Fused against naive attention, forward and forward+backward: B = 1,
//! H = 4, head dim 64, no mask, N = 256 … 4096 (queries and keys).
//!
//! `cargo bench --bench attention`; the peak-memory table that goes with it
//! is `cargo run --release --example attention_memory`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use headroom::autograd::{backward_with, no_grad};
use headroom::ops::{attention, AttentionKind, AttentionOptions};
use headroom::rng::Rng;
use headroom::{Arena, DType, Tag, Tensor};
use std::time::Duration;

const LENGTHS: [usize; 5] = [256, 512, 1024, 2048, 4096];
const KINDS: [AttentionKind; 2] = [AttentionKind::Naive, AttentionKind::Fused];

fn inputs(arena: &Arena, n: usize) -> [Tensor; 4] {
    let mut rng = Rng::new(n as u64);
    [0; 4].map(|_| Tensor::randn(arena, &[1, 4, n, 64], 1.0, DType::F32, Tag::Data, &mut rng).unwrap())
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("attention_forward");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    for n in LENGTHS {
        for kind in KINDS {
            let arena = Arena::host();
            let [q, k, v, _] = inputs(&arena, n);
            let opts = AttentionOptions { kind, ..Default::default() };
            g.bench_with_input(BenchmarkId::new(kind.name(), n), &n, |b, _| {
                let _g = no_grad();
                b.iter(|| attention(&q, &k, &v, &opts).unwrap())
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("attention_forward_backward");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    for n in LENGTHS {
        for kind in KINDS {
            let arena = Arena::host();
            let [q, k, v, dout] = inputs(&arena, n);
            let (q, k, v) = (q.requires_grad(), k.requires_grad(), v.requires_grad());
            let opts = AttentionOptions { kind, ..Default::default() };
            g.bench_with_input(BenchmarkId::new(kind.name(), n), &n, |b, _| {
                b.iter(|| {
                    let out = attention(&q, &k, &v, &opts).unwrap();
                    backward_with(&out, dout.clone()).unwrap();
                    for t in [&q, &k, &v] {
                        t.zero_grad();
                    }
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
