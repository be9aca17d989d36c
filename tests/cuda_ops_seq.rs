//! The sequence and vision ops on the emulated GPU (conv, pools, the fused
//! LSTM, CTC): values and gradients match the CPU backend, and a meta arena
//! planning for CUDA predicts the emulated run's bytes exactly.

mod cuda_common;
mod device;
use device::gpu;
use headroom::alloc::{Arena, ArenaConfig, Backing, Stats, Tag, Target};
use headroom::autograd::backward;
use headroom::ops::set_conv_workspace_limit;
use headroom::rng::Rng;
use headroom::{DType, Tensor};

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

/// log_softmax'd `[T, B, C]` and padded targets, on `arena`.
fn ctc_inputs(arena: &Arena, dtype: DType, rng: &mut Rng) -> (Tensor, Tensor) {
    let (t, b, c, s) = (23, 3, 7, 5);
    let logits = Tensor::randn(arena, &[t, b, c], 1.0, dtype, Tag::Parameter, rng).unwrap().requires_grad();
    let labels: Vec<i32> = (0..b * s).map(|i| 1 + (i * 5 % (c - 1)) as i32).collect();
    (logits, Tensor::from_slice(arena, &[b, s], &labels, Tag::Data).unwrap())
}

#[test]
fn ctc_loss_matches_the_cpu() {
    for dtype in DTYPES {
        for zero_infinity in [false, true] {
            let run = |arena: &Arena| {
                let mut rng = Rng::new(5);
                let (logits, targets) = ctc_inputs(arena, dtype, &mut rng);
                // Sample 2 cannot be aligned (3 frames for 5 labels): +∞, or 0 with zero_infinity.
                let lp = logits.log_softmax(-1).unwrap();
                let loss = lp.ctc_loss(&targets, &[23, 17, 3], &[5, 3, 5], 0, zero_infinity).unwrap();
                let v = loss.to_vec_f32().unwrap();
                backward(&loss.to_dtype(DType::F32).unwrap()).unwrap();
                (v, logits.grad().unwrap().to_vec_f32().unwrap())
            };
            let (h, d) = (run(&Arena::host()), run(&Arena::cuda(&gpu(), ArenaConfig::default()).unwrap()));
            assert_eq!(h.0[0].is_finite(), zero_infinity, "{dtype}: the impossible sample decides the loss");
            if zero_infinity {
                close(&d.0, &h.0, tol(dtype), &format!("ctc loss {dtype}"));
            } else {
                assert_eq!(d.0[0], f32::INFINITY);
            }
            assert!(h.1.iter().any(|v| *v != 0.0));
            close(&d.1, &h.1, tol(dtype), &format!("ctc grad {dtype} zero_infinity={zero_infinity}"));
        }
    }
    // A bad label is a clear error on the GPU too.
    let a = Arena::cuda(&gpu(), ArenaConfig::default()).unwrap();
    let lp = Tensor::zeros(&a, &[4, 1, 3], DType::F32, Tag::Data).unwrap();
    let tg = Tensor::from_slice(&a, &[1, 2], &[1i32, 3], Tag::Data).unwrap();
    let e = lp.ctc_loss(&tg, &[4], &[2], 0, false).unwrap_err().to_string();
    assert!(e.contains("target 3"), "{e}");
}

fn lstm_params(xs: &[Tensor]) -> headroom::ops::LstmParams {
    headroom::ops::LstmParams {
        w_ih: xs[1].mul_scalar(0.3).unwrap(),
        w_hh: xs[2].mul_scalar(0.3).unwrap(),
        b_ih: Some(xs[3].clone()),
        b_hh: None,
    }
}

#[test]
fn lstm_layers_match_the_cpu() {
    // B = 3, T = 7, I = 5, H = 6 (4H = 24): no tile multiple anywhere.
    let shapes: [&[usize]; 6] = [&[3, 7, 5], &[24, 5], &[24, 6], &[24], &[3, 6], &[3, 6]];
    for dtype in DTYPES {
        for reverse in [false, true] {
            // Every output feeds the loss: the sequence and the final state.
            let r = both(&shapes, dtype, |x| {
                let (y, (h, c)) = x[0].lstm(&lstm_params(x), reverse, Some((&x[4], &x[5])))?;
                y.sum(&[1], false)?.add(&h.mul(&c)?)
            });
            check(&format!("lstm reverse={reverse}"), dtype, &r);
        }
        // No initial state: the first step starts from zeros.
        let r = both(&shapes[..4], dtype, |x| Ok(x[0].lstm(&lstm_params(x), false, None)?.0));
        check("lstm without state", dtype, &r);
        // The single cell.
        let r = both(&[&[3, 5], &[3, 6], &[3, 6], &[24, 5], &[24, 6], &[24]], dtype, |x| {
            let (h, c) = Tensor::lstm_cell(&x[0], &x[1], &x[2], &x[3], &x[4], Some(&x[5]), None)?;
            h.add(&c)
        });
        check("lstm_cell", dtype, &r);
    }
}

#[test]
fn a_cuda_plan_predicts_lstm_backward_to_the_byte() {
    for dtype in DTYPES {
        let (planned, measured) = plan_and_run(|arena| {
            let mut rng = Rng::new(4);
            let mut p =
                |s: &[usize]| Tensor::randn(arena, s, 0.3, dtype, Tag::Parameter, &mut rng).unwrap().requires_grad();
            let x = p(&[3, 9, 5]);
            let params = headroom::ops::LstmParams {
                w_ih: p(&[28, 5]),
                w_hh: p(&[28, 7]),
                b_ih: Some(p(&[28])),
                b_hh: Some(p(&[28])),
            };
            // A second layer on the first's output, reversed, from a given state.
            let params2 = |p: &mut dyn FnMut(&[usize]) -> Tensor| headroom::ops::LstmParams {
                w_ih: p(&[28, 7]),
                w_hh: p(&[28, 7]),
                b_ih: None,
                b_hh: Some(p(&[28])),
            };
            let h0 = p(&[3, 7]);
            let (y, _) = x.lstm(&params, false, None).unwrap();
            let (z, (h, _)) = y.lstm(&params2(&mut p), true, Some((&h0, &h0))).unwrap();
            let loss = z.sum_all().unwrap().add(&h.sum_all().unwrap()).unwrap();
            backward(&loss.to_dtype(DType::F32).unwrap()).unwrap();
            arena.stats()
        });
        same_plan(&format!("lstm {dtype}"), &planned, &measured);
    }
}

#[test]
fn concat_split_slices_and_a_bidirectional_lstm_match_the_cpu() {
    for dtype in DTYPES {
        // A transposed part is read through its strides; slice and unbind gradients land in place.
        let r = both(&[&[2, 3, 5], &[2, 5, 4], &[2, 2, 5]], dtype, |x| {
            let y = Tensor::concat(&[&x[0], &x[1].transpose(1, 2)?, &x[2]], 1)?;
            let parts = y.split(&[4, 5], 1)?;
            let rows = parts[1].unbind(1)?;
            parts[0].slice(2, 1, 4)?.sum(&[1], false)?.add(&rows[3].slice(1, 0, 3)?.mul(&rows[0].slice(1, 2, 5)?)?)
        });
        check("concat/split/slice/unbind", dtype, &r);
        let shapes: [&[usize]; 5] = [&[3, 6, 4], &[20, 4], &[20, 5], &[20], &[20]];
        let r = both(&shapes, dtype, |x| {
            let p = |s: f32| headroom::ops::LstmParams {
                w_ih: x[1].mul_scalar(s).unwrap(),
                w_hh: x[2].mul_scalar(s).unwrap(),
                b_ih: Some(x[3].clone()),
                b_hh: Some(x[4].clone()),
            };
            let (y, (h, c)) = x[0].lstm_bidirectional(&p(0.3), &p(-0.2), None)?;
            let state = h.mul(&c)?.permute(&[1, 0, 2])?.reshape(&[3, 10])?;
            Tensor::concat(&[&y.sum(&[1], false)?, &state], 1)
        });
        check("lstm_bidirectional", dtype, &r);
    }
    // Integer parts move as bits.
    let a = Arena::cuda(&gpu(), ArenaConfig::default()).unwrap();
    let i = Tensor::from_slice(&a, &[2, 2], &[1i32, 2, 3, 4], Tag::Data).unwrap();
    let j = Tensor::from_slice(&a, &[2, 1], &[5i32, 6], Tag::Data).unwrap();
    assert_eq!(Tensor::concat(&[&i, &j], 1).unwrap().to_vec::<i32>().unwrap(), vec![1, 2, 5, 3, 4, 6]);
}

/// The lip-reading model end to end (conv3d, relu, max_pool, a
/// bidirectional LSTM, additive attention, the head, log_softmax, CTC): its
/// loss and every parameter's gradient on the emulated GPU are the CPU's.
#[test]
fn the_lipread_model_trains_a_step_on_the_gpu_as_on_the_cpu() {
    use headroom::model::{Batch, Lipread, LipreadConfig};
    small_tiles();
    let config = LipreadConfig {
        frames: 5,
        size: 8,
        channels: vec![3, 4],
        lstm_layers: 1,
        hidden: 6,
        bidirectional: true,
        attention: Some(5),
        chars: 6,
    };
    let run = |arena: &Arena| {
        let mut rng = Rng::new(11);
        let m = Lipread::new(arena, config.clone(), &mut rng).unwrap();
        let x = Tensor::randn(arena, &[2, 3, 5, 8, 8], 1.0, DType::F32, Tag::Data, &mut rng).unwrap();
        let y = Tensor::from_slice(arena, &[2, 3], &[1i32, 2, 3, 4, 5, 0], Tag::Data).unwrap();
        let batch = Batch { x, x_lengths: vec![5, 4], x_mask: None, y, y_in: None, y_lengths: vec![3, 2] };
        let loss = m.loss(&batch, None, &[]).unwrap();
        backward(&loss).unwrap();
        let mut out = vec![("loss".to_string(), loss.to_vec_f32().unwrap())];
        out.extend(m.params().into_iter().map(|(n, p)| (n, p.grad().expect("a gradient").to_vec_f32().unwrap())));
        out
    };
    let (h, d) = (run(&Arena::host()), run(&Arena::cuda(&gpu(), ArenaConfig::default()).unwrap()));
    assert_eq!(h.len(), d.len());
    for ((name, hv), (_, dv)) in h.iter().zip(&d) {
        assert!(hv.iter().any(|v| *v != 0.0), "{name} is all zeros");
        close(dv, hv, 1e-3, name);
    }
}

#[test]
fn masked_fill_and_where_match_the_cpu() {
    let mask = |like: &Tensor, shape: &[usize]| {
        let n: usize = shape.iter().product();
        let v: Vec<u8> = (0..n).map(|i| u8::from(i % 3 == 1)).collect();
        Tensor::from_slice(like.arena(), shape, &v, Tag::Data)
    };
    for dtype in DTYPES {
        // A broadcast mask over a transposed input.
        let r = both(&[&[3, 5, 4]], dtype, |x| x[0].transpose(1, 2)?.masked_fill(&mask(&x[0], &[4, 1])?, -3.0));
        check("masked_fill", dtype, &r);
        let r = both(&[&[2, 3, 4], &[4]], dtype, |x| {
            Tensor::where_cond(&mask(&x[0], &[3, 1])?, &x[0], &x[1].mul_scalar(2.0)?)
        });
        check("where_cond", dtype, &r);
    }
    // −∞ fills (attention masks) come through as −∞.
    let a = Arena::cuda(&gpu(), ArenaConfig::default()).unwrap();
    let x = Tensor::from_f32(&a, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], DType::F16, Tag::Data).unwrap();
    let m = Tensor::from_slice(&a, &[3], &[0u8, 1, 0], Tag::Data).unwrap();
    let y = x.masked_fill(&m, f32::NEG_INFINITY).unwrap().to_vec_f32().unwrap();
    assert_eq!(y, vec![1.0, f32::NEG_INFINITY, 3.0, 4.0, f32::NEG_INFINITY, 6.0]);
}
