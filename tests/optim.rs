//! Optimizers: values after a few steps against numbers worked out by hand,
//! the bytes their state costs, clipping, and convergence on least squares.

use headroom::alloc::{Arena, ArenaConfig, Backing, GRANULE};
use headroom::autograd::backward;
use headroom::optim::{clip_grad_norm, AdamW, AdamWConfig, Optimizer, Sgd, SgdConfig};
use headroom::rng::Rng;
use headroom::{DType, Tag, Tensor};

fn param(a: &Arena, shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::from_f32(a, shape, v, DType::F32, Tag::Parameter).unwrap().requires_grad()
}

fn set_grad(p: &Tensor, v: &[f32]) {
    let g = Tensor::from_f32(p.arena(), p.shape(), v, DType::F32, Tag::Gradient).unwrap();
    p.set_grad(Some(g));
}

fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= tol, "got {got:?}, want {want:?}");
    }
}

const P0: [f32; 3] = [1., 2., -3.];
const G1: [f32; 3] = [0.5, -1., 2.];

#[test]
fn sgd_step_subtracts_lr_times_grad() {
    let a = Arena::host();
    let p = param(&a, &[3], &P0);
    set_grad(&p, &G1);
    let mut opt = Sgd::new(vec![p.clone()], SgdConfig { lr: 0.1, ..Default::default() }).unwrap();
    opt.step().unwrap();
    // p − 0.1·g
    assert_close(&p.to_vec_f32().unwrap(), &[0.95, 2.1, -3.2], 1e-6);
    assert_eq!(opt.steps(), 1);
    assert!(opt.state_tensors().is_empty());
}

#[test]
fn sgd_weight_decay_adds_to_the_gradient() {
    let a = Arena::host();
    let p = param(&a, &[3], &P0);
    set_grad(&p, &G1);
    let mut opt = Sgd::new(vec![p.clone()], SgdConfig { lr: 0.1, momentum: 0.0, weight_decay: 0.1 }).unwrap();
    opt.step().unwrap();
    // g + 0.1·p = [0.6, −0.8, 1.7]; p − 0.1·that
    assert_close(&p.to_vec_f32().unwrap(), &[0.94, 2.08, -3.17], 1e-6);
}

#[test]
fn sgd_momentum_accumulates_over_three_backward_steps() {
    let a = Arena::host();
    let p = param(&a, &[3], &P0);
    let c = Tensor::from_f32(&a, &[3], &G1, DType::F32, Tag::Data).unwrap();
    let mut opt = Sgd::new(vec![p.clone()], SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 0.0 }).unwrap();
    for _ in 0..3 {
        opt.zero_grad();
        // d/dp Σ p∘c = c every step.
        backward(&p.mul(&c).unwrap().sum_all().unwrap()).unwrap();
        opt.step().unwrap();
    }
    // buf = g, 1.9g, 2.71g: p − 0.1·(1 + 1.9 + 2.71)·g = p − 0.561·g
    assert_close(&p.to_vec_f32().unwrap(), &[0.7195, 2.561, -4.122], 1e-5);
    let st = opt.state_tensors();
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].name, "momentum_buffer");
    assert_close(&st[0].tensor.to_vec_f32().unwrap(), &[1.355, -2.71, 5.42], 1e-5);
}

#[test]
fn adamw_first_step_moves_each_weight_by_lr_then_bias_corrected_moments() {
    let a = Arena::host();
    let p = param(&a, &[3], &P0);
    let cfg = AdamWConfig { lr: 0.1, weight_decay: 0.0, ..Default::default() };
    let mut opt = AdamW::new(vec![p.clone()], cfg).unwrap();
    set_grad(&p, &G1);
    opt.step().unwrap();
    // m̂ = g, v̂ = g²: each weight moves by lr·sign(g).
    assert_close(&p.to_vec_f32().unwrap(), &[0.9, 2.1, -3.1], 1e-6);
    set_grad(&p, &[1., 1., -1.]);
    opt.step().unwrap();
    // m = 0.09·g1 + 0.1·g2, v = 0.000999·g1² + 0.001·g2²; m̂ = m/0.19, v̂ = v/0.001999.
    // [0]: m̂ = 29/38, v̂ = 0.00124975/0.001999 → 0.1·m̂/√v̂ = 0.0965182
    // [1]: m̂ = 1/19, v̂ = 1                    → 0.1/19     = 0.0052632
    // [2]: m̂ = 8/19, v̂ = 0.004996/0.001999    → 0.0266337
    assert_close(&p.to_vec_f32().unwrap(), &[0.803_481_8, 2.094_736_8, -3.126_633_7], 2e-6);
    let st = opt.state_tensors();
    assert_eq!(st.iter().map(|s| s.name).collect::<Vec<_>>(), ["exp_avg", "exp_avg_sq"]);
    assert_close(&st[0].tensor.to_vec_f32().unwrap(), &[0.145, 0.01, 0.08], 1e-7);
    assert_close(&st[1].tensor.to_vec_f32().unwrap(), &[0.001_249_75, 0.001_999, 0.004_996], 1e-9);
    assert_eq!((opt.steps(), opt.param_step(0)), (2, 2));
}

#[test]
fn adamw_weight_decay_is_decoupled() {
    let a = Arena::host();
    let p = param(&a, &[3], &P0);
    let cfg = AdamWConfig { lr: 0.1, weight_decay: 0.5, ..Default::default() };
    let mut opt = AdamW::new(vec![p.clone()], cfg).unwrap();
    set_grad(&p, &G1);
    opt.step().unwrap();
    // p·(1 − 0.1·0.5) = [0.95, 1.9, −2.85], then − 0.1·sign(g)
    assert_close(&p.to_vec_f32().unwrap(), &[0.85, 2.0, -2.95], 1e-6);
    // A zero gradient moves nothing through the moments; the decay still applies.
    let q = param(&a, &[3], &P0);
    set_grad(&q, &[0., 0., 0.]);
    let mut opt = AdamW::new(vec![q.clone()], cfg).unwrap();
    opt.step().unwrap();
    assert_close(&q.to_vec_f32().unwrap(), &[0.95, 1.9, -2.85], 1e-6);
}

#[test]
fn params_without_a_grad_are_skipped_and_get_state_later() {
    let a = Arena::host();
    let (p, q) = (param(&a, &[3], &P0), param(&a, &[2], &[5., 6.]));
    let cfg = AdamWConfig { lr: 0.1, weight_decay: 0.5, ..Default::default() };
    let mut opt = AdamW::new(vec![p.clone(), q.clone()], cfg).unwrap();
    set_grad(&p, &G1);
    opt.step().unwrap();
    assert_eq!(q.to_vec_f32().unwrap(), [5., 6.], "no grad: not even weight decay");
    assert!(opt.state_tensors().iter().all(|s| s.param == 0));
    set_grad(&q, &[1., -1.]);
    opt.step().unwrap();
    assert_close(&q.to_vec_f32().unwrap(), &[4.65, 5.8], 1e-6); // its own first step
    assert_eq!((opt.param_step(0), opt.param_step(1), opt.steps()), (2, 1, 2));
    opt.zero_grad();
    assert!(p.grad().is_none() && q.grad().is_none());
    let before = (p.to_vec_f32().unwrap(), q.to_vec_f32().unwrap());
    opt.step().unwrap();
    assert_eq!((p.to_vec_f32().unwrap(), q.to_vec_f32().unwrap()), before, "no gradients: nothing moves");
    assert_eq!(opt.param_step(1), 1);
}

fn granules(p: &Tensor) -> usize {
    p.nbytes().div_ceil(GRANULE) * GRANULE
}

fn state_bytes(a: &Arena) -> usize {
    a.stats().tag(Tag::OptimizerState).allocated.current
}

fn model(a: &Arena) -> Vec<Tensor> {
    let mut rng = Rng::new(9);
    let shapes: [&[usize]; 4] = [&[3], &[1000], &[300, 7], &[1024, 600]];
    let ps: Vec<Tensor> = shapes
        .iter()
        .map(|s| Tensor::randn(a, s, 0.1, DType::F32, Tag::Parameter, &mut rng).unwrap().requires_grad())
        .collect();
    for p in &ps {
        p.set_grad(Some(Tensor::full(a, p.shape(), 0.01, DType::F32, Tag::Gradient).unwrap()));
    }
    ps
}

#[test]
fn optimizer_state_bytes_are_two_one_or_zero_times_the_params() {
    let a = Arena::host();
    let ps = model(&a);
    let param_bytes: usize = ps.iter().map(granules).sum();
    assert_eq!(param_bytes, 512 + 4096 + 8704 + 1024 * 600 * 4);
    let mut adam = AdamW::new(ps.clone(), AdamWConfig::default()).unwrap();
    assert_eq!(state_bytes(&a), 0, "state is allocated on the first step");
    adam.step().unwrap();
    assert_eq!(state_bytes(&a), 2 * param_bytes);
    let allocs = a.stats().tag(Tag::OptimizerState).allocs;
    adam.step().unwrap();
    assert_eq!(a.stats().tag(Tag::OptimizerState).allocs, allocs, "later steps reuse the state");
    drop(adam);
    assert_eq!(state_bytes(&a), 0);

    let mut sgd = Sgd::new(ps.clone(), SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 0.0 }).unwrap();
    sgd.step().unwrap();
    assert_eq!(state_bytes(&a), param_bytes);
    drop(sgd);
    let mut plain = Sgd::new(ps, SgdConfig { lr: 0.1, ..Default::default() }).unwrap();
    plain.step().unwrap();
    plain.step().unwrap();
    assert_eq!(state_bytes(&a), 0);
}

#[test]
fn meta_params_get_state_bytes_and_no_kernel() {
    let a = Arena::new(ArenaConfig { backing: Backing::Meta, ..Default::default() }).unwrap();
    let ps: Vec<Tensor> = [[4096, 1024], [1024, 1]]
        .iter()
        .map(|s| Tensor::zeros(&a, s, DType::F32, Tag::Parameter).unwrap().requires_grad())
        .collect();
    for p in &ps {
        p.set_grad(Some(Tensor::zeros(&a, p.shape(), DType::F32, Tag::Gradient).unwrap()));
    }
    let param_bytes: usize = ps.iter().map(granules).sum();
    let mut opt = AdamW::new(ps.clone(), AdamWConfig::default()).unwrap();
    opt.step().unwrap();
    assert_eq!(state_bytes(&a), 2 * param_bytes);
    assert_eq!(clip_grad_norm(&ps, 1.0).unwrap(), 0.0);
}

#[test]
fn bad_settings_and_non_f32_params_are_errors() {
    let a = Arena::host();
    let p = param(&a, &[3], &P0);
    let h = Tensor::zeros(&a, &[3], DType::F16, Tag::Parameter).unwrap().requires_grad();
    let e = AdamW::new(vec![h], AdamWConfig::default()).err().unwrap().to_string();
    assert!(e.contains("adamw") && e.contains("f16") && e.contains("f32"), "{e}");
    let frozen = Tensor::zeros(&a, &[3], DType::F32, Tag::Parameter).unwrap();
    assert!(Sgd::new(vec![frozen], SgdConfig::default()).err().unwrap().to_string().contains("requires_grad"));
    let e = Sgd::new(vec![p.clone(), p.clone()], SgdConfig::default()).err().unwrap().to_string();
    assert!(e.contains("share storage"), "{e}");
    let bad = |c: AdamWConfig| AdamW::new(vec![p.clone()], c).err().unwrap().to_string();
    assert!(bad(AdamWConfig { beta1: 1.0, ..Default::default() }).contains("beta1"));
    assert!(bad(AdamWConfig { lr: f64::NAN, ..Default::default() }).contains("lr"));
    assert!(bad(AdamWConfig { eps: 0.0, ..Default::default() }).contains("eps"));
    assert!(Sgd::new(vec![p.clone()], SgdConfig { momentum: -0.5, ..Default::default() }).is_err());
    // A gradient of the wrong shape fails the step before any weight moves.
    let q = param(&a, &[2], &[1., 1.]);
    set_grad(&q, &[1., 1.]);
    p.set_grad(Some(Tensor::zeros(&a, &[4], DType::F32, Tag::Gradient).unwrap()));
    let mut opt = Sgd::new(vec![q.clone(), p.clone()], SgdConfig { lr: 1.0, ..Default::default() }).unwrap();
    let e = opt.step().unwrap_err().to_string();
    assert!(e.contains("[3]") && e.contains("[4]"), "{e}");
    assert_eq!(q.to_vec_f32().unwrap(), [1., 1.]);
    assert_eq!(opt.steps(), 0);
    assert!(clip_grad_norm(&[p], -1.0).is_err());
}

#[test]
fn clip_grad_norm_returns_the_norm_and_scales_in_place() {
    let a = Arena::host();
    let (p, q, r) = (param(&a, &[2], &[0., 0.]), param(&a, &[1], &[0.]), param(&a, &[1], &[0.]));
    set_grad(&p, &[3., 4.]);
    set_grad(&q, &[12.]);
    let ps = [p.clone(), q.clone(), r]; // r has no gradient: it adds nothing
    assert_eq!(clip_grad_norm(&ps, 100.0).unwrap(), 13.0);
    assert_eq!(p.grad().unwrap().to_vec_f32().unwrap(), [3., 4.], "under the limit: untouched");
    assert_eq!(clip_grad_norm(&ps, 6.5).unwrap(), 13.0);
    // factor 6.5 / (13 + 1e-6)
    assert_close(&p.grad().unwrap().to_vec_f32().unwrap(), &[1.5, 2.0], 1e-6);
    assert_close(&q.grad().unwrap().to_vec_f32().unwrap(), &[6.0], 1e-6);
    assert!((clip_grad_norm(&ps, 6.5).unwrap() - 6.5).abs() < 1e-5);
}

#[test]
fn clip_grad_norm_is_the_same_for_any_thread_count() {
    let a = Arena::host();
    let mut rng = Rng::new(3);
    let p = Tensor::randn(&a, &[300_001], 1.0, DType::F32, Tag::Parameter, &mut rng).unwrap().requires_grad();
    let g = Tensor::randn(&a, &[300_001], 1.0, DType::F32, Tag::Gradient, &mut rng).unwrap();
    let gv = g.to_vec_f32().unwrap();
    let norm_with = |threads: usize| {
        p.set_grad(Some(Tensor::from_f32(&a, &[300_001], &gv, DType::F32, Tag::Gradient).unwrap()));
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| clip_grad_norm(std::slice::from_ref(&p), 1e9).unwrap())
    };
    let (one, two, three) = (norm_with(1), norm_with(2), norm_with(3));
    assert_eq!(one.to_bits(), two.to_bits());
    assert_eq!(one.to_bits(), three.to_bits());
    assert!((one - (300_001f32).sqrt()).abs() < 0.01 * one);
}

/// Loss of a linear model `pred = x·w` against `y` (mean squared error).
fn mse(x: &Tensor, w: &Tensor, y: &Tensor) -> Tensor {
    let d = x.matmul(w).unwrap().sub(y).unwrap();
    d.mul(&d).unwrap().mean_all().unwrap()
}

fn fit(make: impl Fn(Tensor) -> Box<dyn Optimizer>, steps: usize) -> (f32, f32) {
    let a = Arena::host();
    let mut rng = Rng::new(11);
    let x = Tensor::randn(&a, &[64, 8], 1.0, DType::F32, Tag::Data, &mut rng).unwrap();
    let w_true = Tensor::randn(&a, &[8, 1], 1.0, DType::F32, Tag::Data, &mut rng).unwrap();
    let y = {
        let _g = headroom::autograd::no_grad();
        x.matmul(&w_true).unwrap()
    };
    let w = Tensor::zeros(&a, &[8, 1], DType::F32, Tag::Parameter).unwrap().requires_grad();
    let mut opt = make(w.clone());
    let first = mse(&x, &w, &y).item().unwrap();
    headroom::autograd::clear_tape();
    for _ in 0..steps {
        opt.zero_grad();
        backward(&mse(&x, &w, &y)).unwrap();
        opt.step().unwrap();
    }
    let last = {
        let _g = headroom::autograd::no_grad();
        mse(&x, &w, &y).item().unwrap()
    };
    (first, last)
}

#[test]
fn least_squares_loss_drops_a_hundredfold_with_adamw_and_sgd() {
    let adam = |w| {
        Box::new(AdamW::new(vec![w], AdamWConfig { lr: 0.05, weight_decay: 0.0, ..Default::default() }).unwrap())
            as Box<dyn Optimizer>
    };
    let sgd = |w| {
        Box::new(Sgd::new(vec![w], SgdConfig { lr: 0.05, momentum: 0.9, weight_decay: 0.0 }).unwrap())
            as Box<dyn Optimizer>
    };
    for (name, make) in [("adamw", &adam as &dyn Fn(Tensor) -> Box<dyn Optimizer>), ("sgd", &sgd)] {
        let (first, last) = fit(make, 300);
        assert!(first > 1.0, "{name}: starting loss {first}");
        assert!(last * 100.0 < first, "{name}: loss {first} → {last}");
    }
}
