//! The training ops on the emulated GPU (tensors on a CUDA arena, the
//! kernels run by the CPU harness) against the CPU backend: values and
//! gradients through autograd, f32 and f16, shapes that are no multiple of
//! any tile; the optimizers' steps; and meta arenas planning for CUDA that
//! predict the emulated run's bytes exactly.
//!
//! Tolerance: |got − want| ≤ tol · max(max|want|, 1) over each tensor; both
//! sides compute in f32, so they differ by summation order (f32 1e-5) and,
//! stored in f16, by one rounding step of an output (3e-3).

mod cuda_common;
mod device;
use device::gpu;
use headroom::alloc::{Arena, ArenaConfig, Backing, Tag, Target};
use headroom::autograd::backward;
use headroom::ops::{attention, AttentionOptions};
use headroom::optim::{clip_grad_norm, AdamW, AdamWConfig, Optimizer, Sgd, SgdConfig};
use headroom::rng::Rng;
use headroom::{DType, Tensor};

fn cuda_arena() -> Arena {
    Arena::cuda(&gpu(), ArenaConfig::default()).unwrap()
}

fn meta_for_cuda() -> Arena {
    Arena::new(ArenaConfig { backing: Backing::Meta, plan_for: Target::Cuda, ..Default::default() }).unwrap()
}

fn tol(dtype: DType) -> f32 {
    if dtype == DType::F32 {
        1e-5
    } else {
        3e-3
    }
}

fn close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(1f32, |m, w| m.max(w.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * scale, "{what}[{i}]: {g} vs {w} (tol {})", tol * scale);
    }
}

fn randn(arena: &Arena, shape: &[usize], dtype: DType, rng: &mut Rng) -> Tensor {
    Tensor::randn(arena, shape, 1.0, dtype, Tag::Parameter, rng).unwrap().requires_grad()
}

/// `f` on the CPU and on the emulated GPU: its output, then the gradients
/// of `n` float inputs of `shapes` (made by `f`'s caller from one seed), with
/// the output's gradient a fixed random tensor (so no gradient is uniform).
fn compare(what: &str, dtype: DType, shapes: &[&[usize]], f: impl Fn(&Arena, &[Tensor]) -> headroom::Result<Tensor>) {
    let run = |arena: &Arena| {
        let mut rng = Rng::new(7);
        let xs: Vec<Tensor> = shapes.iter().map(|s| randn(arena, s, dtype, &mut rng)).collect();
        let y = f(arena, &xs).unwrap();
        let w = Tensor::randn(arena, y.shape(), 1.0, y.dtype(), Tag::Data, &mut rng).unwrap();
        let mut out = vec![y.to_vec_f32().unwrap()];
        backward(&y.mul(&w).unwrap().sum_all().unwrap().to_dtype(DType::F32).unwrap()).unwrap();
        out.extend(xs.iter().map(|x| x.grad().map(|g| g.to_vec_f32().unwrap()).unwrap_or_default()));
        out
    };
    let host = run(&Arena::host());
    let dev = run(&cuda_arena());
    for (i, (h, d)) in host.iter().zip(&dev).enumerate() {
        close(d, h, tol(dtype), &format!("{what} {dtype} #{i}"));
    }
}

fn ids(arena: &Arena, shape: &[usize], v: &[i32]) -> Tensor {
    Tensor::from_slice(arena, shape, v, Tag::Data).unwrap()
}

#[test]
fn layer_norm_matches_the_cpu() {
    for dtype in [DType::F32, DType::F16] {
        // 37 rows of 70: neither a warp nor a block multiple; affine and not.
        compare("layer_norm affine", dtype, &[&[37, 70], &[70], &[70]], |_, x| {
            x[0].layer_norm(Some(&x[1]), Some(&x[2]), 1e-5)
        });
        compare("layer_norm weight only", dtype, &[&[3, 5, 9], &[9]], |_, x| x[0].layer_norm(Some(&x[1]), None, 1e-5));
        compare("layer_norm plain", dtype, &[&[5, 33]], |_, x| x[0].layer_norm(None, None, 1e-3));
    }
}

#[test]
fn cross_entropy_matches_the_cpu() {
    let t: Vec<i32> = (0..29).map(|i| i * 7 % 11).collect();
    for dtype in [DType::F32, DType::F16] {
        compare("cross_entropy", dtype, &[&[29, 11]], |a, x| x[0].cross_entropy(&ids(a, &[29], &t), None, 0.0));
        // Ignored rows and label smoothing.
        let mut ti = t.clone();
        ti[3] = -100;
        ti[10] = -100;
        compare("cross_entropy ignore+smoothing", dtype, &[&[29, 11]], |a, x| {
            x[0].cross_entropy(&ids(a, &[29], &ti), Some(-100), 0.1)
        });
        // Every row ignored: loss 0, zero gradient.
        compare("cross_entropy all ignored", dtype, &[&[2, 3]], |a, x| {
            x[0].cross_entropy(&ids(a, &[2], &[-1, -1]), Some(-1), 0.0)
        });
    }
    // A target outside the classes is a clear error, as on the CPU.
    let a = cuda_arena();
    let x = Tensor::zeros(&a, &[3, 4], DType::F32, Tag::Data).unwrap();
    let e = x.cross_entropy(&ids(&a, &[3], &[0, 9, 1]), None, 0.0).unwrap_err().to_string();
    assert!(e.contains("target 9 of row 1 is outside [0, 4)"), "{e}");
}

#[test]
fn mse_and_l1_match_the_cpu() {
    for dtype in [DType::F32, DType::F16] {
        compare("mse", dtype, &[&[7, 13], &[7, 13]], |_, x| x[0].mse_loss(&x[1]));
        compare("l1", dtype, &[&[7, 13], &[7, 13]], |_, x| x[0].l1_loss(&x[1]));
    }
}

#[test]
fn embedding_matches_the_cpu() {
    // Repeated ids, an unused row, ids not a multiple of anything.
    let v: Vec<i32> = (0..23).map(|i| i * 5 % 9).collect();
    for dtype in [DType::F32, DType::F16] {
        compare("embedding", dtype, &[&[10, 19]], |a, x| x[0].embedding(&ids(a, &[23], &v)));
        compare("embedding 2-d ids", dtype, &[&[10, 3]], |a, x| x[0].embedding(&ids(a, &[2, 3], &[9, 0, 0, 4, 9, 9])));
    }
    let a = cuda_arena();
    let w = Tensor::zeros(&a, &[4, 2], DType::F32, Tag::Data).unwrap();
    let e = w.embedding(&ids(&a, &[3], &[0, 1, 4])).unwrap_err().to_string();
    assert!(e.contains("id 4 at position 2") && e.contains("[0, 4)"), "{e}");
}

#[test]
fn dropout_matches_the_cpu_mask() {
    for dtype in [DType::F32, DType::F16] {
        compare("dropout", dtype, &[&[5, 1031]], |_, x| x[0].dropout(0.3, &mut Rng::new(11)));
    }
}

#[test]
fn fused_attention_matches_the_cpu() {
    for dtype in [DType::F32, DType::F16] {
        for causal in [false, true] {
            // Tq 70, Tk 45: not tile multiples; D 20 and 40 (two buckets).
            for (tq, tk, d) in [(70, 45, 20), (33, 33, 40)] {
                compare(
                    &format!("attention causal={causal} {tq}x{tk}x{d}"),
                    dtype,
                    &[&[2, 3, tq, d], &[2, 3, tk, d], &[2, 3, tk, d]],
                    |_, x| attention(&x[0], &x[1], &x[2], &AttentionOptions { causal, ..Default::default() }),
                );
            }
        }
        // Key padding, with batch 1's keys all padded (its rows see nothing).
        let pad: Vec<u8> = (0..2 * 37).map(|i| if i >= 37 || i % 5 == 0 { 1 } else { 0 }).collect();
        compare("attention padded", dtype, &[&[2, 2, 21, 16], &[2, 2, 37, 16], &[2, 2, 37, 16]], |a, x| {
            let m = Tensor::from_slice(a, &[2, 37], &pad, Tag::Data).unwrap();
            attention(
                &x[0],
                &x[1],
                &x[2],
                &AttentionOptions { key_padding: Some(m), causal: true, ..Default::default() },
            )
        });
    }
}

/// A small model's loss: embedding, layer norm, attention, cross-entropy.
fn chain(arena: &Arena, dtype: DType) -> headroom::Result<()> {
    let mut rng = Rng::new(5);
    let (b, t, h, d, v) = (2, 19, 2, 12, 17);
    let emb = Tensor::randn(arena, &[v, h * d], 0.5, DType::F32, Tag::Parameter, &mut rng)?.requires_grad();
    let lnw = Tensor::randn(arena, &[h * d], 1.0, DType::F32, Tag::Parameter, &mut rng)?.requires_grad();
    let head = Tensor::randn(arena, &[h * d, v], 0.2, DType::F32, Tag::Parameter, &mut rng)?.requires_grad();
    let toks: Vec<i32> = (0..b * t).map(|i| (i * 3 % v) as i32).collect();
    let x = emb.to_dtype(dtype)?.embedding(&ids(arena, &[b, t], &toks))?;
    let x = x.layer_norm(Some(&lnw.to_dtype(dtype)?), None, 1e-5)?;
    let qkv = x.reshape(&[b, t, h, d])?.permute(&[0, 2, 1, 3])?;
    let y = attention(&qkv, &qkv, &qkv, &AttentionOptions { causal: true, ..Default::default() })?;
    let y = y.permute(&[0, 2, 1, 3])?.reshape(&[b * t, h * d])?.dropout(0.1, &mut rng)?;
    let logits = y.matmul(&head.to_dtype(dtype)?)?;
    let loss = logits.cross_entropy(&ids(arena, &[b * t], &toks), None, 0.0)?;
    backward(&loss.to_dtype(DType::F32)?)?;
    let mut opt = AdamW::new(vec![emb, lnw, head], AdamWConfig::default())?;
    clip_grad_norm(opt.params(), 0.5)?;
    opt.step()?;
    opt.zero_grad();
    Ok(())
}

#[test]
fn a_cuda_plan_predicts_the_training_ops_to_the_byte() {
    for dtype in [DType::F32, DType::F16] {
        let meta = meta_for_cuda();
        chain(&meta, dtype).unwrap();
        let dev = cuda_arena();
        chain(&dev, dtype).unwrap();
        let (p, m) = (meta.stats(), dev.stats());
        assert_eq!(p.allocated.peak, m.allocated.peak, "{dtype}");
        assert_eq!(p.reserved.peak, m.reserved.peak, "{dtype}");
        assert_eq!(p.by_tag_at_peak, m.by_tag_at_peak, "{dtype}");
        assert!(p.tag(Tag::OptimizerState).allocated.peak > 0);
    }
}

/// Parameters (f32) with gradients in `gdtype`, on `arena`, from one seed.
fn params(arena: &Arena, gdtype: DType) -> Vec<Tensor> {
    let mut rng = Rng::new(9);
    [&[37usize, 5][..], &[1], &[1029], &[3, 3, 3]]
        .iter()
        .map(|s| {
            let p = Tensor::randn(arena, s, 1.0, DType::F32, Tag::Parameter, &mut rng).unwrap().requires_grad();
            p.set_grad(Some(Tensor::randn(arena, s, 2.0, gdtype, Tag::Gradient, &mut rng).unwrap()));
            p
        })
        .collect()
}

fn values(ps: &[Tensor]) -> Vec<Vec<f32>> {
    ps.iter().map(|p| p.to_vec_f32().unwrap()).collect()
}

fn compare_steps(what: &str, gdtype: DType, step: impl Fn(&[Tensor]) -> Vec<f32>) {
    let run = |arena: &Arena| {
        let ps = params(arena, gdtype);
        let extra = step(&ps);
        (values(&ps), extra)
    };
    let (hp, he) = run(&Arena::host());
    let (dp, de) = run(&cuda_arena());
    for (i, (h, d)) in hp.iter().zip(&dp).enumerate() {
        close(d, h, 1e-5, &format!("{what} {gdtype} param {i}"));
    }
    close(&de, &he, 1e-5, &format!("{what} {gdtype} extra"));
}

#[test]
fn adamw_sgd_and_clipping_match_the_cpu() {
    for g in [DType::F32, DType::F16] {
        compare_steps("adamw", g, |ps| {
            let mut opt = AdamW::new(ps.to_vec(), AdamWConfig { lr: 0.01, ..Default::default() }).unwrap();
            for _ in 0..3 {
                opt.step().unwrap();
            }
            opt.state_tensors().iter().flat_map(|s| s.tensor.to_vec_f32().unwrap()).collect()
        });
        for momentum in [0.0, 0.9] {
            compare_steps(&format!("sgd momentum {momentum}"), g, |ps| {
                let c = SgdConfig { lr: 0.05, momentum, weight_decay: 0.01 };
                let mut opt = Sgd::new(ps.to_vec(), c).unwrap();
                for _ in 0..3 {
                    opt.step().unwrap();
                }
                opt.state_tensors().iter().flat_map(|s| s.tensor.to_vec_f32().unwrap()).collect()
            });
        }
        compare_steps("clip_grad_norm", g, |ps| {
            let norm = clip_grad_norm(ps, 1.0).unwrap();
            let mut out = vec![norm];
            out.extend(ps.iter().flat_map(|p| p.grad().unwrap().to_vec_f32().unwrap()));
            out
        });
    }
    // An overflowed gradient: the norm is infinite and nothing is scaled.
    let a = cuda_arena();
    let p = Tensor::zeros(&a, &[3], DType::F32, Tag::Parameter).unwrap().requires_grad();
    p.set_grad(Some(Tensor::from_f32(&a, &[3], &[1.0, f32::INFINITY, 2.0], DType::F16, Tag::Gradient).unwrap()));
    assert!(!clip_grad_norm(std::slice::from_ref(&p), 1.0).unwrap().is_finite());
    assert_eq!(p.grad().unwrap().to_vec_f32().unwrap()[0], 1.0);
}
