//! Ops of the reference models (issue 7): convolutions, pooling, batch
//! norm, LSTM, CTC, vector quantisation and additive attention. Values
//! against hand-computed or brute-force results, gradient checks in every
//! float dtype, the conv workspace bound, meta-vs-host allocation, errors.

mod common;
use common::{gradcheck, gradcheck_all, input};
use headroom::alloc::{ArenaConfig, Backing};
use headroom::autograd::{backward, no_grad};
use headroom::ops::set_conv_workspace_limit;
use headroom::rng::Rng;
use headroom::{Arena, DType, Tag, Tensor};
use std::sync::Mutex;

/// Tests that change the conv workspace limit, or compare allocations that
/// depend on it, hold this lock (the limit is process-wide).
static LIMIT_LOCK: Mutex<()> = Mutex::new(());

fn t(arena: &Arena, shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::from_f32(arena, shape, v, DType::F32, Tag::Data).unwrap()
}

fn ids(arena: &Arena, shape: &[usize], v: &[i32]) -> Tensor {
    Tensor::from_slice(arena, shape, v, Tag::Data).unwrap()
}

fn close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "element {i}: {g} vs {w}\n{got:?}\nvs\n{want:?}");
    }
}

fn err<T: std::fmt::Debug>(r: headroom::Result<T>) -> String {
    r.unwrap_err().to_string()
}

// ---- convolution ----

/// Direct convolution from the definition (3-d, size-1 dims for 1-d/2-d).
#[allow(clippy::too_many_arguments)]
fn conv_ref(
    x: &[f32],
    xs: [usize; 5],
    w: &[f32],
    ws: [usize; 5],
    bias: Option<&[f32]>,
    s: [usize; 3],
    p: [usize; 3],
    d: [usize; 3],
) -> (Vec<f32>, [usize; 5]) {
    let [b, c, di, hi, wi] = xs;
    let [o, _, kd, kh, kw] = ws;
    let out = |l: usize, k: usize, i: usize| (l + 2 * p[i] - d[i] * (k - 1) - 1) / s[i] + 1;
    let (od, oh, ow) = (out(di, kd, 0), out(hi, kh, 1), out(wi, kw, 2));
    let mut y = vec![0f32; b * o * od * oh * ow];
    for bb in 0..b {
        for oo in 0..o {
            for z in 0..od {
                for yy in 0..oh {
                    for xx in 0..ow {
                        let mut acc = bias.map_or(0.0, |b| b[oo]) as f64;
                        for cc in 0..c {
                            for a in 0..kd {
                                for e in 0..kh {
                                    for f in 0..kw {
                                        let iz = (z * s[0] + a * d[0]) as isize - p[0] as isize;
                                        let iy = (yy * s[1] + e * d[1]) as isize - p[1] as isize;
                                        let ix = (xx * s[2] + f * d[2]) as isize - p[2] as isize;
                                        if iz < 0 || iy < 0 || ix < 0 || iz >= di as isize || iy >= hi as isize || ix >= wi as isize {
                                            continue;
                                        }
                                        let xi = (((bb * c + cc) * di + iz as usize) * hi + iy as usize) * wi + ix as usize;
                                        let wi_ = (((oo * c + cc) * kd + a) * kh + e) * kw + f;
                                        acc += (x[xi] * w[wi_]) as f64;
                                    }
                                }
                            }
                        }
                        y[(((bb * o + oo) * od + z) * oh + yy) * ow + xx] = acc as f32;
                    }
                }
            }
        }
    }
    (y, [b, o, od, oh, ow])
}

#[test]
fn conv2d_values_match_hand_computed() {
    let a = Arena::host();
    let x = t(&a, &[1, 1, 3, 3], &[1., 2., 3., 4., 5., 6., 7., 8., 9.]);
    let w = t(&a, &[1, 1, 2, 2], &[1., 2., 3., 4.]);
    let b = t(&a, &[1], &[1.]);
    let y = x.conv2d(&w, Some(&b), [1, 1], [0, 0], [1, 1]).unwrap();
    assert_eq!(y.shape(), &[1, 1, 2, 2]);
    assert_eq!(y.to_vec_f32().unwrap(), [38., 48., 68., 78.]);
    // Padding 1, stride 2: the windows start at (−1, −1), (−1, 1), (1, −1), (1, 1).
    let y = x.conv2d(&w, None, [2, 2], [1, 1], [1, 1]).unwrap();
    assert_eq!(y.to_vec_f32().unwrap(), [4., 18., 36., 77.]);
    // Dilation 2 in 1-d: y[i] = x[i] + 10·x[i + 2].
    let x1 = t(&a, &[1, 1, 5], &[1., 2., 3., 4., 5.]);
    let w1 = t(&a, &[1, 1, 2], &[1., 10.]);
    assert_eq!(x1.conv1d(&w1, None, 1, 0, 2).unwrap().to_vec_f32().unwrap(), [31., 42., 53.]);
    // Transposed, stride 2 with a 2×2 kernel of ones: each input fills a 2×2 block.
    let xt = t(&a, &[1, 1, 2, 2], &[1., 2., 3., 4.]);
    let ones = t(&a, &[1, 1, 2, 2], &[1.; 4]);
    let y = xt.conv_transpose2d(&ones, None, [2, 2], [0, 0], [0, 0], [1, 1]).unwrap();
    assert_eq!(y.shape(), &[1, 1, 4, 4]);
    assert_eq!(y.to_vec_f32().unwrap(), [1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.]);
    // Stride 1: overlapping blocks add.
    let y = xt.conv_transpose2d(&ones, Some(&b), [1, 1], [0, 0], [0, 0], [1, 1]).unwrap();
    assert_eq!(y.to_vec_f32().unwrap(), [2., 4., 3., 5., 11., 7., 4., 8., 5.]);
}

#[test]
fn conv_matches_direct_definition_in_every_rank() {
    let a = Arena::host();
    let mut rng = Rng::new(21);
    let mut r = |n: usize| common::values(&mut rng, n, 0.0);
    // conv3d: [2, 3, 5, 6, 7] with a 2×3×2 kernel, stride (1, 2, 3), padding (1, 0, 2), dilation (2, 1, 2).
    let (xs, ws) = ([2, 3, 5, 6, 7], [4, 3, 2, 3, 2]);
    let (xv, wv, bv) = (r(2 * 3 * 5 * 6 * 7), r(4 * 3 * 2 * 3 * 2), r(4));
    let (want, shape) = conv_ref(&xv, xs, &wv, ws, Some(&bv), [1, 2, 3], [1, 0, 2], [2, 1, 2]);
    let x = t(&a, &xs, &xv);
    let w = t(&a, &ws, &wv);
    let b = t(&a, &[4], &bv);
    let y = x.conv3d(&w, Some(&b), [1, 2, 3], [1, 0, 2], [2, 1, 2]).unwrap();
    assert_eq!(y.shape(), &shape);
    close(&y.to_vec_f32().unwrap(), &want, 1e-5);
    // conv1d on a strided (transposed) input.
    let (xv, wv) = (r(2 * 9 * 3), r(5 * 3 * 3));
    let x = t(&a, &[2, 9, 3], &xv).transpose(1, 2).unwrap();
    let xd = x.contiguous().unwrap().to_vec_f32().unwrap();
    let (want, shape) = conv_ref(&xd, [2, 3, 1, 1, 9], &wv, [5, 3, 1, 1, 3], None, [1, 1, 2], [0, 0, 1], [1, 1, 3]);
    let y = x.conv1d(&t(&a, &[5, 3, 3], &wv), None, 2, 1, 3).unwrap();
    assert_eq!(y.shape(), &[shape[0], shape[1], shape[4]]);
    close(&y.to_vec_f32().unwrap(), &want, 1e-5);
}

/// Transposed conv from its definition: each input scatters a weighted kernel.
#[allow(clippy::too_many_arguments)]
fn conv_t_ref(x: &[f32], xs: [usize; 4], w: &[f32], ws: [usize; 4], s: [usize; 2], p: [usize; 2], op: [usize; 2], d: [usize; 2]) -> (Vec<f32>, [usize; 4]) {
    let [b, ci, h, wd] = xs;
    let [_, co, kh, kw] = ws;
    let ho = (h - 1) * s[0] + d[0] * (kh - 1) + op[0] + 1 - 2 * p[0];
    let wo = (wd - 1) * s[1] + d[1] * (kw - 1) + op[1] + 1 - 2 * p[1];
    let mut y = vec![0f64; b * co * ho * wo];
    for bb in 0..b {
        for c in 0..ci {
            for i in 0..h {
                for j in 0..wd {
                    for oc in 0..co {
                        for e in 0..kh {
                            for f in 0..kw {
                                let yi = (i * s[0] + e * d[0]) as isize - p[0] as isize;
                                let yj = (j * s[1] + f * d[1]) as isize - p[1] as isize;
                                if yi < 0 || yj < 0 || yi >= ho as isize || yj >= wo as isize {
                                    continue;
                                }
                                let xv = x[((bb * ci + c) * h + i) * wd + j];
                                let wv = w[((c * co + oc) * kh + e) * kw + f];
                                y[((bb * co + oc) * ho + yi as usize) * wo + yj as usize] += (xv * wv) as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    (y.into_iter().map(|v| v as f32).collect(), [b, co, ho, wo])
}

#[test]
fn conv_transpose2d_matches_direct_definition() {
    let a = Arena::host();
    let mut rng = Rng::new(22);
    let (xs, ws) = ([2, 3, 4, 5], [3, 2, 3, 2]);
    let xv = common::values(&mut rng, 2 * 3 * 4 * 5, 0.0);
    let wv = common::values(&mut rng, 3 * 2 * 3 * 2, 0.0);
    let (s, p, op, d) = ([2, 3], [1, 0], [1, 2], [1, 2]);
    let (want, shape) = conv_t_ref(&xv, xs, &wv, ws, s, p, op, d);
    let y = t(&a, &xs, &xv).conv_transpose2d(&t(&a, &ws, &wv), None, s, p, op, d).unwrap();
    assert_eq!(y.shape(), &shape);
    close(&y.to_vec_f32().unwrap(), &want, 1e-5);
}

#[test]
fn conv_gradcheck() {
    let mut rng = Rng::new(23);
    let (x, w, b) = (input(&mut rng, &[2, 3, 9]), input(&mut rng, &[4, 3, 3]), input(&mut rng, &[4]));
    gradcheck_all(|v| v[0].conv1d(&v[1], Some(&v[2]), 2, 2, 2), &[x, w, b], &[true, true, true]);
    let (x, w, b) = (input(&mut rng, &[2, 2, 6, 5]), input(&mut rng, &[3, 2, 3, 2]), input(&mut rng, &[3]));
    gradcheck_all(|v| v[0].conv2d(&v[1], Some(&v[2]), [2, 1], [1, 1], [1, 2]), &[x.clone(), w.clone(), b], &[true, true, true]);
    // Only the weight needs a gradient (a first layer on data).
    gradcheck_all(|v| v[0].conv2d(&v[1], None, [1, 2], [0, 1], [2, 1]), &[x, w], &[false, true]);
    let (x, w) = (input(&mut rng, &[1, 2, 4, 5, 4]), input(&mut rng, &[2, 2, 2, 3, 2]));
    gradcheck_all(|v| v[0].conv3d(&v[1], None, [1, 2, 1], [1, 1, 0], [2, 1, 1]), &[x, w], &[true, true]);
}

#[test]
fn conv_transpose2d_gradcheck() {
    let mut rng = Rng::new(24);
    let (x, w, b) = (input(&mut rng, &[2, 3, 3, 4]), input(&mut rng, &[3, 2, 3, 2]), input(&mut rng, &[2]));
    gradcheck_all(
        |v| v[0].conv_transpose2d(&v[1], Some(&v[2]), [2, 3], [1, 0], [1, 2], [1, 2]),
        &[x.clone(), w.clone(), b],
        &[true, true, true],
    );
    gradcheck_all(|v| v[0].conv_transpose2d(&v[1], None, [1, 1], [1, 1], [0, 0], [1, 1]), &[x, w], &[true, true]);
}

/// Forward and every gradient of conv2d then conv_transpose2d, in `dtype`.
fn conv_run(a: &Arena, dtype: DType, xs: &[usize], seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng::new(seed);
    let c = xs[1];
    let x = Tensor::randn(a, xs, 1.0, dtype, Tag::Data, &mut rng).unwrap().requires_grad();
    let w = Tensor::randn(a, &[8, c, 3, 3], 0.2, dtype, Tag::Parameter, &mut rng).unwrap().requires_grad();
    let b = Tensor::randn(a, &[8], 0.2, dtype, Tag::Parameter, &mut rng).unwrap().requires_grad();
    let wt = Tensor::randn(a, &[8, 2, 2, 2], 0.2, dtype, Tag::Parameter, &mut rng).unwrap().requires_grad();
    let y = x.conv2d(&w, Some(&b), [1, 1], [1, 1], [1, 1]).unwrap();
    let z = y.conv_transpose2d(&wt, None, [2, 2], [0, 0], [0, 0], [1, 1]).unwrap();
    let yv = y.to_vec_f32().unwrap();
    let loss = z.mul(&z).unwrap().mean_all().unwrap();
    backward(&loss).unwrap();
    vec![yv, z.to_vec_f32().unwrap(), x.grad().unwrap().to_vec_f32().unwrap(), w.grad().unwrap().to_vec_f32().unwrap(), b.grad().unwrap().to_vec_f32().unwrap(), wt.grad().unwrap().to_vec_f32().unwrap()]
}

#[test]
fn conv_workspace_stays_under_the_limit_with_identical_results() {
    let _lock = LIMIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // Whole-batch im2col of this conv2d would be 40·(16·9)·(48·48)·4 B ≈ 53 MB.
    let xs = [40, 16, 48, 48];
    let full = 40 * 16 * 9 * 48 * 48 * 4;
    assert!(full > 50 << 20);
    let limit = 1 << 20;
    set_conv_workspace_limit(limit);
    let a = Arena::host();
    let small = conv_run(&a, DType::F32, &xs, 25);
    let peak = a.stats().tag(Tag::Workspace).allocated.peak;
    set_conv_workspace_limit(usize::MAX);
    let b = Arena::host();
    let big = conv_run(&b, DType::F32, &xs, 25);
    let unlimited = b.stats().tag(Tag::Workspace).allocated.peak;
    headroom::ops::set_conv_workspace_limit(headroom::ops::DEFAULT_CONV_WORKSPACE_LIMIT);
    assert!(peak <= limit, "workspace peak {peak} over the {limit} limit");
    // Unlimited means one whole sample's columns, never the batch's.
    assert!(unlimited > limit && unlimited < full / 20, "unlimited workspace {unlimited}");
    assert!(small == big, "results differ between the 1 MiB and the unlimited workspace");
}

#[test]
fn conv_tiles_do_not_change_results_in_any_dtype() {
    let _lock = LIMIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        // A 1-byte limit forces the smallest tile (64 positions) everywhere.
        set_conv_workspace_limit(1);
        let tiny = conv_run(&Arena::host(), dtype, &[3, 4, 13, 11], 26);
        set_conv_workspace_limit(usize::MAX);
        let whole = conv_run(&Arena::host(), dtype, &[3, 4, 13, 11], 26);
        set_conv_workspace_limit(headroom::ops::DEFAULT_CONV_WORKSPACE_LIMIT);
        assert!(tiny == whole, "{dtype}: results depend on the tile size");
    }
}

#[test]
fn conv_workspace_is_what_the_formula_says() {
    let _lock = LIMIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    use headroom::cpu::conv::{workspace, Geom, Pass};
    set_conv_workspace_limit(100_000);
    let a = Arena::new(ArenaConfig { backing: Backing::Meta, ..Default::default() }).unwrap();
    let x = Tensor::zeros(&a, &[2, 5, 30, 20], DType::BF16, Tag::Data).unwrap();
    let w = Tensor::zeros(&a, &[6, 5, 3, 3], DType::BF16, Tag::Parameter).unwrap();
    let _y = x.conv2d(&w, None, [1, 1], [1, 1], [1, 1]).unwrap();
    set_conv_workspace_limit(headroom::ops::DEFAULT_CONV_WORKSPACE_LIMIT);
    let g = Geom { c: 5, big: [1, 30, 20], o: 6, small: [1, 30, 20], k: [1, 3, 3], stride: [1; 3], pad: [0, 1, 1], dil: [1; 3] };
    let (tile, elems) = workspace(&g, Pass::Forward, DType::BF16, 100_000);
    // (25 000 − 6·45) / (64·(45 + 6)) → 7 quanta of 64 positions.
    assert_eq!((tile, elems), (448, 6 * 45 + 448 * 51));
    assert_eq!(a.stats().tag(Tag::Workspace).requested.peak, 4 * elems);
}

// ---- pooling ----

/// Distinct values at least 0.05 apart (so a ±0.01 step never moves a maximum).
fn distinct(rng: &mut Rng, shape: &[usize]) -> (Vec<usize>, Vec<f32>) {
    let n: usize = shape.iter().product();
    let mut v: Vec<f32> = (0..n).map(|i| (i as f32 - n as f32 / 2.0) * 0.05).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    (shape.to_vec(), v)
}

/// Bytes the tape holds as activations now.
fn activation(a: &Arena) -> usize {
    a.stats().tag(Tag::Activation).requested.current
}

#[test]
fn pool_values_match_hand_computed() {
    let a = Arena::host();
    let v: Vec<f32> = (0..16).map(|i| i as f32).collect();
    let x = t(&a, &[1, 1, 4, 4], &v);
    assert_eq!(x.max_pool(&[2, 2], &[2, 2], &[0, 0]).unwrap().to_vec_f32().unwrap(), [5., 7., 13., 15.]);
    assert_eq!(x.max_pool(&[3, 3], &[2, 2], &[1, 1]).unwrap().to_vec_f32().unwrap(), [5., 7., 13., 15.]);
    // Padding counts as zeros in the mean: every window divides by 9.
    let y = x.avg_pool(&[3, 3], &[2, 2], &[1, 1]).unwrap();
    close(&y.to_vec_f32().unwrap(), &[10. / 9., 24. / 9., 51. / 9., 10.], 1e-6);
    // Overlapping 1-d windows: the gradient adds up at a repeated maximum.
    let x1 = t(&a, &[1, 1, 5], &[1., 3., 2., 0., 5.]).requires_grad();
    let y = x1.max_pool(&[3], &[1], &[0]).unwrap();
    assert_eq!(y.to_vec_f32().unwrap(), [3., 3., 5.]);
    backward(&y.sum_all().unwrap()).unwrap();
    assert_eq!(x1.grad().unwrap().to_vec_f32().unwrap(), [0., 2., 0., 0., 1.]);
    let x3 = t(&a, &[1, 1, 2, 2, 2], &[1., 2., 3., 4., 5., 6., 7., 8.]);
    assert_eq!(x3.avg_pool(&[2, 2, 2], &[1, 1, 1], &[0, 0, 0]).unwrap().to_vec_f32().unwrap(), [4.5]);
    assert_eq!(x3.max_pool(&[1, 2, 2], &[1, 1, 1], &[0, 0, 0]).unwrap().to_vec_f32().unwrap(), [4., 8.]);
}

#[test]
fn pool_gradcheck() {
    let mut rng = Rng::new(31);
    let x1 = distinct(&mut rng, &[2, 3, 9]);
    gradcheck_all(|v| v[0].max_pool(&[3], &[2], &[1]), &[x1.clone()], &[true]);
    gradcheck_all(|v| v[0].avg_pool(&[4], &[3], &[2]), &[x1], &[true]);
    let x2 = distinct(&mut rng, &[2, 2, 5, 6]);
    gradcheck_all(|v| v[0].max_pool(&[3, 2], &[1, 2], &[1, 1]), &[x2.clone()], &[true]);
    gradcheck_all(|v| v[0].avg_pool(&[3, 3], &[2, 1], &[1, 0]), &[x2.clone()], &[true]);
    // A strided input.
    gradcheck_all(|v| v[0].transpose(2, 3)?.max_pool(&[2, 2], &[2, 2], &[0, 1]), &[x2], &[true]);
    let x3 = distinct(&mut rng, &[1, 2, 4, 5, 3]);
    gradcheck_all(|v| v[0].max_pool(&[2, 3, 2], &[2, 1, 1], &[1, 1, 0]), &[x3.clone()], &[true]);
    gradcheck_all(|v| v[0].avg_pool(&[2, 2, 3], &[1, 2, 1], &[0, 1, 1]), &[x3], &[true]);
}

#[test]
fn max_pool_saves_only_i32_indices() {
    let a = Arena::host();
    let p = Tensor::full(&a, &[4, 3, 20, 20], 1.0, DType::F32, Tag::Parameter).unwrap().requires_grad();
    let x = p.mul_scalar(2.0).unwrap();
    let y = x.max_pool(&[2, 2], &[2, 2], &[0, 0]).unwrap();
    drop(x);
    assert_eq!(activation(&a), 4 * 3 * 10 * 10 * 4);
    let z = y.avg_pool(&[2, 2], &[1, 1], &[1, 1]).unwrap();
    assert_eq!(activation(&a), 4 * 3 * 10 * 10 * 4, "avg_pool saves nothing");
    backward(&z.sum_all().unwrap()).unwrap();
    assert_eq!(activation(&a), 0);
}

// ---- batch norm ----

#[test]
fn batch_norm_values_and_running_stats() {
    let a = Arena::host();
    let x = t(&a, &[2, 2, 2], &[1., 2., 0., 0., 3., 6., 4., 4.]);
    let rm = t(&a, &[2], &[0., 0.]);
    let rv = t(&a, &[2], &[1., 1.]);
    let y = x.batch_norm(None, None, Some(&rm), Some(&rv), true, 0.1, 0.0).unwrap();
    // Channel 0: mean 3, biased var 3.5 (unbiased 14/3); channel 1: mean 2, var 4 (16/3).
    let s = 3.5f32.sqrt();
    close(&y.to_vec_f32().unwrap(), &[-2. / s, -1. / s, -1., -1., 0., 3. / s, 1., 1.], 1e-6);
    close(&rm.to_vec_f32().unwrap(), &[0.3, 0.2], 1e-6);
    close(&rv.to_vec_f32().unwrap(), &[0.9 + 0.1 * 14. / 3., 0.9 + 0.1 * 16. / 3.], 1e-6);
    // Evaluation uses the running statistics, with weight and bias.
    let w = t(&a, &[2], &[2., -1.]);
    let b = t(&a, &[2], &[0.5, 1.]);
    let y = x.batch_norm(Some(&w), Some(&b), Some(&rm), Some(&rv), false, 0.1, 1e-5).unwrap();
    let (r0, r1) = (1. / (rv.to_vec_f32().unwrap()[0] + 1e-5).sqrt(), 1. / (rv.to_vec_f32().unwrap()[1] + 1e-5).sqrt());
    let want = [(1. - 0.3) * r0 * 2. + 0.5, (2. - 0.3) * r0 * 2. + 0.5, (0. - 0.2) * r1 * -1. + 1., (0. - 0.2) * r1 * -1. + 1.];
    close(&y.to_vec_f32().unwrap()[..4], &want, 1e-6);
    // Running stats stored in bf16 are updated in place too.
    let rmh = Tensor::from_f32(&a, &[2], &[0., 0.], DType::BF16, Tag::Data).unwrap();
    let rvh = Tensor::from_f32(&a, &[2], &[1., 1.], DType::BF16, Tag::Data).unwrap();
    x.batch_norm(None, None, Some(&rmh), Some(&rvh), true, 0.1, 0.0).unwrap();
    close(&rmh.to_vec_f32().unwrap(), &[0.3, 0.2], 4e-3);
}

#[test]
fn batch_norm_gradcheck() {
    let mut rng = Rng::new(32);
    let (x, w, b) = (input(&mut rng, &[3, 2, 4]), input(&mut rng, &[2]), input(&mut rng, &[2]));
    gradcheck_all(
        |v| v[0].batch_norm(Some(&v[1]), Some(&v[2]), None, None, true, 0.1, 1e-5),
        &[x.clone(), w.clone(), b.clone()],
        &[true, true, true],
    );
    let x4 = input(&mut rng, &[2, 3, 2, 3]);
    gradcheck_all(|v| v[0].batch_norm(None, None, None, None, true, 0.1, 1e-5), &[x4.clone()], &[true]);
    // Evaluation, with running stats made fresh for each call.
    let bn_eval = |v: &[Tensor]| {
        let rm = t(v[0].arena(), &[3], &[0.1, -0.2, 0.3]).to_dtype(v[0].dtype())?;
        let rv = t(v[0].arena(), &[3], &[0.5, 1.5, 2.0]);
        v[0].batch_norm(Some(&v[1]), None, Some(&rm), Some(&rv), false, 0.1, 1e-5)
    };
    gradcheck_all(bn_eval, &[x4.clone(), input(&mut rng, &[3])], &[true, true]);
    // Training with running stats (updated on every call; the output does not depend on them).
    let bn_train = |v: &[Tensor]| {
        let rm = Tensor::zeros(v[0].arena(), &[3], DType::F32, Tag::Data)?;
        let rv = Tensor::full(v[0].arena(), &[3], 1.0, DType::F32, Tag::Data)?;
        v[0].transpose(0, 1)?.transpose(0, 1)?.batch_norm(None, Some(&v[1]), Some(&rm), Some(&rv), true, 0.3, 1e-5)
    };
    gradcheck_all(bn_train, &[x4, input(&mut rng, &[3])], &[true, true]);
}

#[test]
fn batch_norm_saves_input_and_channel_stats() {
    let a = Arena::host();
    let p = Tensor::full(&a, &[8, 16, 10, 10], 0.5, DType::F32, Tag::Parameter).unwrap().requires_grad();
    let w = Tensor::full(&a, &[16], 1.0, DType::F32, Tag::Parameter).unwrap().requires_grad();
    let x = p.mul_scalar(2.0).unwrap();
    let y = x.batch_norm(Some(&w), None, None, None, true, 0.1, 1e-5).unwrap();
    drop(x);
    assert_eq!(activation(&a), 8 * 16 * 100 * 4 + 8 * 16);
    backward(&y.sum_all().unwrap()).unwrap();
    assert_eq!(activation(&a), 0);
    assert_eq!(a.stats().tag(Tag::Workspace).allocated.current, 0);
}
