//! The CUDA backend end to end, on the emulated GPU (the CPU harness runs
//! the kernels, host memory stands in for device memory, products follow
//! cuBLAS's contract): tensor ops on a CUDA arena give the CPU backend's
//! values, allocate what the meta device plans for CUDA, and `--device`
//! falls back or refuses clearly when there is no driver.

mod cuda_common;
mod device;
use device::gpu;
use headroom::alloc::{Arena, ArenaConfig, Backing, Tag, Target};
use headroom::autograd::backward;
use headroom::cuda::{self, DeviceChoice};
use headroom::rng::Rng;
use headroom::{DType, Tensor};

fn close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: {g} vs {w}");
    }
}

/// The same computation on the CPU and on the emulated GPU, with the
/// gradients of its inputs.
fn both(
    shapes: &[&[usize]],
    dtype: DType,
    f: impl Fn(&[Tensor]) -> headroom::Result<Tensor>,
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let run = |arena: &Arena| {
        let mut rng = Rng::new(3);
        let xs: Vec<Tensor> = shapes
            .iter()
            .map(|s| Tensor::randn(arena, s, 1.0, dtype, Tag::Parameter, &mut rng).unwrap().requires_grad())
            .collect();
        let y = f(&xs).unwrap();
        let mut out = vec![y.to_vec_f32().unwrap()];
        backward(&y.sum_all().unwrap().to_dtype(DType::F32).unwrap()).unwrap();
        out.extend(xs.iter().map(|x| x.grad().map(|g| g.to_vec_f32().unwrap()).unwrap_or_default()));
        out
    };
    let host = run(&Arena::host());
    let dev = run(&Arena::cuda(&gpu(), ArenaConfig::default()).unwrap());
    (host, dev)
}

#[test]
fn tensors_round_trip_through_gpu_memory() {
    let a = Arena::cuda(&gpu(), ArenaConfig::default()).unwrap();
    let v: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5).collect();
    let t = Tensor::from_f32(&a, &[10, 100], &v, DType::F32, Tag::Data).unwrap();
    assert!(t.is_cuda());
    assert_eq!(t.to_vec_f32().unwrap(), v);
    // A strided view read back goes through the strided-copy kernel.
    let tt = t.transpose(0, 1).unwrap();
    let want: Vec<f32> = (0..1000).map(|i| v[(i % 10) * 100 + i / 10]).collect();
    assert_eq!(tt.to_vec_f32().unwrap(), want);
    // Data asked of GPU memory by a CPU path is a clear error, not a read.
    let e = t.data::<f32>().unwrap_err().to_string();
    assert!(e.contains("GPU memory"), "{e}");
    let z = Tensor::zeros(&a, &[7], DType::F16, Tag::Data).unwrap();
    assert_eq!(z.to_vec_f32().unwrap(), vec![0.0; 7]);
    assert_eq!(a.stats().tag(Tag::Data).allocated.current, 4096 + 512);
}

#[test]
fn elementwise_reductions_and_matmul_match_the_cpu() {
    for dtype in [DType::F32, DType::F16] {
        let tol = if dtype == DType::F32 { 1e-5 } else { 2e-2 };
        let (h, d) = both(&[&[3, 5, 7], &[7]], dtype, |x| x[0].add(&x[1])?.gelu()?.mul(&x[0])?.mean(&[1], false));
        for (i, (a, b)) in h.iter().zip(&d).enumerate() {
            close(b, a, tol, &format!("elementwise {dtype} #{i}"));
        }
        // Batched products with a transposed operand and a broadcast weight.
        let (h, d) = both(&[&[2, 4, 6], &[6, 5], &[2, 5, 4]], dtype, |x| {
            x[0].matmul(&x[1])?.add(&x[2].transpose(1, 2)?)?.softmax(-1)?.log()?.mul_scalar(0.5)?.add_scalar(1.0)
        });
        for (i, (a, b)) in h.iter().zip(&d).enumerate() {
            close(b, a, tol, &format!("matmul {dtype} #{i}"));
        }
    }
}

#[test]
fn a_cuda_plan_predicts_the_emulated_gpu_to_the_byte() {
    let ops = |arena: &Arena| {
        let mut rng = Rng::new(1);
        let x = Tensor::randn(arena, &[4, 16, 32], 1.0, DType::F16, Tag::Data, &mut rng).unwrap();
        let w = Tensor::randn(arena, &[32, 64], 0.1, DType::F32, Tag::Parameter, &mut rng).unwrap().requires_grad();
        let y = x.matmul(&w.to_dtype(DType::F16).unwrap().transpose(0, 1).unwrap().transpose(0, 1).unwrap()).unwrap();
        let loss = y.gelu().unwrap().sum(&[0, 2], false).unwrap().log_softmax(-1).unwrap().mean_all().unwrap();
        backward(&loss.to_dtype(DType::F32).unwrap()).unwrap();
        arena.stats()
    };
    let meta =
        Arena::new(ArenaConfig { backing: Backing::Meta, plan_for: Target::Cuda, ..Default::default() }).unwrap();
    let planned = ops(&meta);
    let measured = ops(&Arena::cuda(&gpu(), ArenaConfig::default()).unwrap());
    assert_eq!(planned.allocated.peak, measured.allocated.peak);
    assert_eq!(planned.reserved.peak, measured.reserved.peak);
    assert_eq!(planned.by_tag_at_peak, measured.by_tag_at_peak);
    // cuBLAS's workspace is in the plan.
    assert!(planned.tag(Tag::Workspace).allocated.peak >= cuda::blas::WORKSPACE);
}

#[test]
fn without_a_driver_auto_falls_back_and_cuda_refuses() {
    if cuda::driver_available() {
        return; // a machine with a GPU: the cuda-device tests cover it
    }
    assert!(cuda::select(DeviceChoice::Auto, true).unwrap().is_none());
    let e = cuda::select(DeviceChoice::Cuda, true).unwrap_err().to_string();
    assert!(e.contains("no CUDA driver") && e.contains("--device cpu"), "{e}");
    // The command line: one line on stderr, then training on the CPU.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_headroom"))
        .args(["train", "--preset", "digits", "--steps", "1", "--layers", "1", "--dim", "16", "--device", "auto"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("no usable GPU, running on the CPU").count(), 1, "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_headroom"))
        .args(["train", "--steps", "1", "--device", "cuda"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no CUDA driver"));
}

#[test]
fn bench_smoke_runs_every_kernel_on_the_emulated_gpu() {
    use headroom::bench;
    let opts = bench::Options {
        kernels: vec![],
        min_time: 0.0,
        json: true,
        threads: None,
        clock_mhz: None,
        device: DeviceChoice::Cuda,
        smoke: true,
    };
    let specs = bench::smoke(&bench::specs());
    let mut out = vec![];
    bench::run_on_gpu(&opts, &specs, &gpu(), &mut out).unwrap();
    let rows: Vec<serde_json::Value> =
        String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows[0]["record"], "gpu");
    let results: Vec<_> = rows.iter().filter(|r| r["record"] == "result").collect();
    assert_eq!(results.len(), specs.len(), "one row per benchmark");
    for r in &results {
        assert!(r["median_s"].as_f64().unwrap() > 0.0, "{r}");
    }
    for (name, _) in bench::KERNELS {
        assert!(results.iter().any(|r| r["kernel"] == name), "{name} ran");
    }
}

#[test]
fn an_op_without_a_cuda_kernel_is_refused_by_name_on_the_gpu_and_in_its_plan() {
    use headroom::train::{resolve_recompute, simulate, Run, TrainConfig};
    let cfg = TrainConfig { device: DeviceChoice::Cuda, progress: false, ..TrainConfig::preset("vqae-tiny").unwrap() };
    let arena = Arena::cuda(&gpu(), ArenaConfig::default()).unwrap();
    let e = Run::new(&cfg, arena).and_then(|mut r| r.train_step().map(|_| ())).unwrap_err().to_string();
    assert!(e.contains("vector_quantize") && e.contains("no CUDA kernel") && e.contains("--device cpu"), "{e}");
    let planned =
        simulate(&cfg, resolve_recompute(&cfg).unwrap(), false).err().expect("the plan refuses it too").to_string();
    assert_eq!(planned, e);
    // The same preset plans and runs on the CPU.
    let cpu = TrainConfig { device: DeviceChoice::Cpu, ..cfg };
    assert!(simulate(&cpu, resolve_recompute(&cpu).unwrap(), false).is_ok());
}
