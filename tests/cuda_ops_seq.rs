//! The sequence and vision ops on the emulated GPU (conv, pools, the fused
//! LSTM, CTC): values and gradients match the CPU backend, and a meta arena
//! planning for CUDA predicts the emulated run's bytes exactly.

use headroom::alloc::{Arena, ArenaConfig, Backing, Stats, Tag, Target};
use headroom::autograd::backward;
use headroom::cuda::Gpu;
use headroom::ops::set_conv_workspace_limit;
use headroom::rng::Rng;
use headroom::{DType, Tensor};
use std::sync::OnceLock;

fn gpu() -> Gpu {
    static G: OnceLock<Gpu> = OnceLock::new();
    G.get_or_init(|| Gpu::emulator().expect("the CPU harness builds (g++)")).clone()
}

/// The smallest conv workspace, so convolutions run in several tiles; every
/// test sets the same value (the limit is process-wide).
fn small_tiles() {
    set_conv_workspace_limit(0);
}

const DTYPES: [DType; 2] = [DType::F32, DType::F16];

fn tol(dtype: DType) -> f32 {
    if dtype == DType::F32 {
        1e-4
    } else {
        3e-2
    }
}

fn close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: {g} vs {w}");
    }
}

/// `f` on the CPU and on the emulated GPU: its output and the gradients of
/// its inputs (randn of `shapes`) under `loss = Σ out·r` with a fixed random
/// `r`, so every output element gets its own gradient.
fn both(shapes: &[&[usize]], dtype: DType, f: impl Fn(&[Tensor]) -> headroom::Result<Tensor>) -> Vec<[Vec<f32>; 2]> {
    let run = |arena: &Arena| {
        let mut rng = Rng::new(7);
        let xs: Vec<Tensor> = shapes
            .iter()
            .map(|s| Tensor::randn(arena, s, 1.0, dtype, Tag::Parameter, &mut rng).unwrap().requires_grad())
            .collect();
        let y = f(&xs).unwrap();
        let r = Tensor::randn(arena, y.shape(), 1.0, dtype, Tag::Data, &mut rng).unwrap();
        let mut out = vec![y.to_vec_f32().unwrap()];
        backward(&y.mul(&r).unwrap().sum_all().unwrap().to_dtype(DType::F32).unwrap()).unwrap();
        out.extend(xs.iter().map(|x| x.grad().expect("a gradient").to_vec_f32().unwrap()));
        out
    };
    let host = run(&Arena::host());
    let dev = run(&Arena::cuda(&gpu(), ArenaConfig::default()).unwrap());
    host.into_iter().zip(dev).map(|(h, d)| [h, d]).collect()
}

fn check(what: &str, dtype: DType, pairs: &[[Vec<f32>; 2]]) {
    for (i, [h, d]) in pairs.iter().enumerate() {
        assert!(h.iter().any(|v| *v != 0.0), "{what} {dtype} #{i} is all zeros: the check would be vacuous");
        close(d, h, tol(dtype), &format!("{what} {dtype} #{i}"));
    }
}

/// `f` on a meta arena planning for CUDA and on the emulated GPU.
fn plan_and_run(f: impl Fn(&Arena) -> Stats) -> (Stats, Stats) {
    let meta =
        Arena::new(ArenaConfig { backing: Backing::Meta, plan_for: Target::Cuda, ..Default::default() }).unwrap();
    (f(&meta), f(&Arena::cuda(&gpu(), ArenaConfig::default()).unwrap()))
}

fn same_plan(what: &str, planned: &Stats, measured: &Stats) {
    assert_eq!(planned.allocated.peak, measured.allocated.peak, "{what}: allocated peak");
    assert_eq!(planned.reserved.peak, measured.reserved.peak, "{what}: reserved peak");
    assert_eq!(planned.by_tag_at_peak, measured.by_tag_at_peak, "{what}: tags at the peak");
}

#[test]
fn pools_match_the_cpu() {
    for dtype in DTYPES {
        let r = both(&[&[2, 3, 9, 11]], dtype, |x| x[0].max_pool(&[3, 2], &[2, 2], &[1, 1]));
        check("max_pool 2d", dtype, &r);
        let r = both(&[&[2, 3, 13]], dtype, |x| x[0].avg_pool(&[3], &[2], &[1]));
        check("avg_pool 1d", dtype, &r);
        let r = both(&[&[1, 2, 5, 6, 7]], dtype, |x| x[0].avg_pool(&[2, 3, 3], &[1, 2, 2], &[0, 1, 0]));
        check("avg_pool 3d", dtype, &r);
        // A strided input (made dense by the op).
        let r = both(&[&[3, 2, 7, 9]], dtype, |x| x[0].transpose(2, 3)?.max_pool(&[2, 2], &[1, 2], &[0, 1]));
        check("max_pool strided", dtype, &r);
    }
}

#[test]
fn convolutions_match_the_cpu() {
    small_tiles();
    for dtype in DTYPES {
        // 5 × 11 = 55 and 12 × 13 = 156 positions: one short tile, and two full tiles and a short one.
        let r = both(&[&[2, 3, 9, 11], &[4, 3, 3, 3], &[4]], dtype, |x| {
            x[0].conv2d(&x[1], Some(&x[2]), [2, 1], [1, 1], [1, 1])
        });
        check("conv2d stride 2", dtype, &r);
        let r = both(&[&[2, 3, 12, 13], &[5, 3, 3, 2]], dtype, |x| x[0].conv2d(&x[1], None, [1, 1], [1, 1], [1, 2]));
        check("conv2d dilated", dtype, &r);
        let r = both(&[&[3, 4, 150], &[6, 4, 5], &[6]], dtype, |x| x[0].conv1d(&x[1], Some(&x[2]), 1, 2, 1));
        check("conv1d", dtype, &r);
        let r = both(&[&[2, 3, 5, 6], &[3, 4, 3, 3], &[4]], dtype, |x| {
            x[0].conv_transpose2d(&x[1], Some(&x[2]), [2, 2], [1, 1], [1, 0], [1, 1])
        });
        check("conv_transpose2d", dtype, &r);
    }
}

#[test]
fn a_cuda_plan_predicts_conv2d_backward_to_the_byte() {
    small_tiles();
    for dtype in DTYPES {
        let (planned, measured) = plan_and_run(|arena| {
            let mut rng = Rng::new(2);
            let x = Tensor::randn(arena, &[2, 3, 12, 13], 1.0, dtype, Tag::Data, &mut rng).unwrap();
            let w = Tensor::randn(arena, &[4, 3, 3, 3], 0.3, dtype, Tag::Parameter, &mut rng).unwrap().requires_grad();
            let b = Tensor::randn(arena, &[4], 0.3, dtype, Tag::Parameter, &mut rng).unwrap().requires_grad();
            let y = x.conv2d(&w, Some(&b), [1, 1], [1, 1], [1, 1]).unwrap().relu().unwrap();
            let y = y.max_pool(&[2, 2], &[2, 2], &[0, 0]).unwrap();
            backward(&y.sum_all().unwrap().to_dtype(DType::F32).unwrap()).unwrap();
            arena.stats()
        });
        same_plan(&format!("conv2d {dtype}"), &planned, &measured);
        assert!(planned.tag(Tag::Workspace).allocated.peak >= headroom::cuda::blas::WORKSPACE);
    }
}
