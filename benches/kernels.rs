//! The kernels and shapes of `headroom bench`, under criterion. Compute-bound
//! kernels report throughput as elements = FLOPs (so "Gelem/s" reads as
//! GFLOP/s); memory-bound ones as bytes moved (inputs read once, output
//! written once). Samples are few so `cargo bench` stays in minutes.
//! `HEADROOM_BENCH_DEVICE=cuda cargo bench --bench kernels` times them on
//! the GPU, with a stream sync after every call.

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use headroom::bench::{specs, Bound, KERNELS};
use headroom::cuda::Gpu;
use headroom::Arena;
use std::time::Duration;

fn device() -> (Arena, Option<Gpu>) {
    if std::env::var("HEADROOM_BENCH_DEVICE").as_deref() != Ok("cuda") {
        return (Arena::host(), None);
    }
    let gpu = Gpu::driver().expect("HEADROOM_BENCH_DEVICE=cuda needs an NVIDIA GPU and driver");
    let arena = Arena::cuda(&gpu, Default::default()).expect("a device arena");
    (arena, Some(gpu))
}

fn kernels(c: &mut Criterion) {
    let (arena, gpu) = device();
    for (name, _) in KERNELS {
        let mut group = c.benchmark_group(name);
        // Flat sampling: every sample makes the same number of calls, so a
        // 100 ms kernel costs 10 calls rather than the 55 of linear sampling.
        group.sample_size(10).sampling_mode(SamplingMode::Flat);
        group.warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
        for spec in specs().into_iter().filter(|s| s.kernel() == name) {
            let mut case = spec.build(&arena).expect("benchmark inputs fit in memory");
            group.throughput(match spec.bound() {
                Bound::Compute => Throughput::Elements(spec.flops() as u64),
                Bound::Memory => Throughput::Bytes(spec.bytes() as u64),
            });
            group.bench_function(format!("{} {}", spec.shape(), spec.dtype), |b| {
                b.iter(|| {
                    case.run().expect("kernel runs");
                    if let Some(g) = &gpu {
                        g.sync().expect("the stream drains");
                    }
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, kernels);
criterion_main!(benches);
