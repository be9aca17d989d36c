//! Ops of the reference models (issue 7): convolutions, pooling, batch
//! norm, LSTM, CTC, vector quantisation and additive attention. Values
//! against hand-computed or brute-force results, gradient checks in every
//! float dtype, the conv workspace bound, meta-vs-host allocation, errors.

mod common;
use common::{gradcheck_all, input};
use headroom::alloc::{ArenaConfig, Backing};
use headroom::autograd::backward;
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
                                        if iz < 0
                                            || iy < 0
                                            || ix < 0
                                            || iz >= di as isize
                                            || iy >= hi as isize
                                            || ix >= wi as isize
                                        {
                                            continue;
                                        }
                                        let xi =
                                            (((bb * c + cc) * di + iz as usize) * hi + iy as usize) * wi + ix as usize;
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
fn conv_t_ref(
    x: &[f32],
    xs: [usize; 4],
    w: &[f32],
    ws: [usize; 4],
    s: [usize; 2],
    p: [usize; 2],
    op: [usize; 2],
    d: [usize; 2],
) -> (Vec<f32>, [usize; 4]) {
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
    gradcheck_all(
        |v| v[0].conv2d(&v[1], Some(&v[2]), [2, 1], [1, 1], [1, 2]),
        &[x.clone(), w.clone(), b],
        &[true, true, true],
    );
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
    vec![
        yv,
        z.to_vec_f32().unwrap(),
        x.grad().unwrap().to_vec_f32().unwrap(),
        w.grad().unwrap().to_vec_f32().unwrap(),
        b.grad().unwrap().to_vec_f32().unwrap(),
        wt.grad().unwrap().to_vec_f32().unwrap(),
    ]
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
    let g = Geom {
        c: 5,
        big: [1, 30, 20],
        o: 6,
        small: [1, 30, 20],
        k: [1, 3, 3],
        stride: [1; 3],
        pad: [0, 1, 1],
        dil: [1; 3],
    };
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
    gradcheck_all(|v| v[0].max_pool(&[3], &[2], &[1]), std::slice::from_ref(&x1), &[true]);
    gradcheck_all(|v| v[0].avg_pool(&[4], &[3], &[2]), &[x1], &[true]);
    let x2 = distinct(&mut rng, &[2, 2, 5, 6]);
    gradcheck_all(|v| v[0].max_pool(&[3, 2], &[1, 2], &[1, 1]), std::slice::from_ref(&x2), &[true]);
    gradcheck_all(|v| v[0].avg_pool(&[3, 3], &[2, 1], &[1, 0]), std::slice::from_ref(&x2), &[true]);
    // A strided input.
    gradcheck_all(|v| v[0].transpose(2, 3)?.max_pool(&[2, 2], &[2, 2], &[0, 1]), &[x2], &[true]);
    let x3 = distinct(&mut rng, &[1, 2, 4, 5, 3]);
    gradcheck_all(|v| v[0].max_pool(&[2, 3, 2], &[2, 1, 1], &[1, 1, 0]), std::slice::from_ref(&x3), &[true]);
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
    let want =
        [(1. - 0.3) * r0 * 2. + 0.5, (2. - 0.3) * r0 * 2. + 0.5, -((0. - 0.2) * r1) + 1., -((0. - 0.2) * r1) + 1.];
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
    gradcheck_all(|v| v[0].batch_norm(None, None, None, None, true, 0.1, 1e-5), std::slice::from_ref(&x4), &[true]);
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

// ---- LSTM ----

fn sig(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// A reference LSTM layer in f64 from the definition: returns out [B, T, H] and (h, c).
#[allow(clippy::too_many_arguments)]
fn lstm_ref(
    x: &[f32],
    b: usize,
    t: usize,
    inp: usize,
    hd: usize,
    w: &[Vec<f32>; 4],
    reverse: bool,
    h0: &[f32],
    c0: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (wih, whh, bih, bhh) = (&w[0], &w[1], &w[2], &w[3]);
    let mut out = vec![0f32; b * t * hd];
    let (mut h, mut c): (Vec<f64>, Vec<f64>) =
        (h0.iter().map(|&v| v as f64).collect(), c0.iter().map(|&v| v as f64).collect());
    let steps: Vec<usize> = if reverse { (0..t).rev().collect() } else { (0..t).collect() };
    for s in steps {
        let (mut h2, mut c2) = (vec![0f64; b * hd], vec![0f64; b * hd]);
        for bb in 0..b {
            let pre = |row: usize| -> f64 {
                let mut acc = (bih[row] + bhh[row]) as f64;
                for k in 0..inp {
                    acc += (wih[row * inp + k] * x[(bb * t + s) * inp + k]) as f64;
                }
                for k in 0..hd {
                    acc += whh[row * hd + k] as f64 * h[bb * hd + k];
                }
                acc
            };
            for j in 0..hd {
                let (i, f, g, o) = (sig(pre(j)), sig(pre(hd + j)), pre(2 * hd + j).tanh(), sig(pre(3 * hd + j)));
                c2[bb * hd + j] = f * c[bb * hd + j] + i * g;
                h2[bb * hd + j] = o * c2[bb * hd + j].tanh();
                out[(bb * t + s) * hd + j] = h2[bb * hd + j] as f32;
            }
        }
        (h, c) = (h2, c2);
    }
    (out, h.iter().map(|&v| v as f32).collect(), c.iter().map(|&v| v as f32).collect())
}

fn lstm_params(v: &[Tensor]) -> headroom::ops::LstmParams {
    headroom::ops::LstmParams {
        w_ih: v[0].clone(),
        w_hh: v[1].clone(),
        b_ih: Some(v[2].clone()),
        b_hh: Some(v[3].clone()),
    }
}

#[test]
fn lstm_matches_reference_in_both_directions() {
    let a = Arena::host();
    let mut rng = Rng::new(41);
    let (b, tt, inp, hd) = (2, 4, 3, 5);
    let mut r = |n: usize| common::values(&mut rng, n, 0.0);
    let x = r(b * tt * inp);
    let wf = [r(4 * hd * inp), r(4 * hd * hd), r(4 * hd), r(4 * hd)];
    let wb = [r(4 * hd * inp), r(4 * hd * hd), r(4 * hd), r(4 * hd)];
    let (h0, c0) = (r(2 * b * hd), r(2 * b * hd));
    let tens = |w: &[Vec<f32>; 4]| {
        [t(&a, &[4 * hd, inp], &w[0]), t(&a, &[4 * hd, hd], &w[1]), t(&a, &[4 * hd], &w[2]), t(&a, &[4 * hd], &w[3])]
    };
    let (pf, pb) = (lstm_params(&tens(&wf)), lstm_params(&tens(&wb)));
    let xt = t(&a, &[b, tt, inp], &x);
    // One direction, from zeros.
    let zeros = vec![0f32; b * hd];
    let (want, wh, wc) = lstm_ref(&x, b, tt, inp, hd, &wf, false, &zeros, &zeros);
    let (out, (h, c)) = xt.lstm(&pf, false, None).unwrap();
    assert_eq!(out.shape(), &[b, tt, hd]);
    close(&out.to_vec_f32().unwrap(), &want, 1e-5);
    close(&h.to_vec_f32().unwrap(), &wh, 1e-5);
    close(&c.to_vec_f32().unwrap(), &wc, 1e-5);
    // Bidirectional with an initial state [2, B, H]: forward half then backward half.
    let (hs, cs) = (t(&a, &[2, b, hd], &h0), t(&a, &[2, b, hd], &c0));
    let (out, (hn, cn)) = xt.lstm_bidirectional(&pf, &pb, Some((&hs, &cs))).unwrap();
    assert_eq!(out.shape(), &[b, tt, 2 * hd]);
    let (of, hf, cf) = lstm_ref(&x, b, tt, inp, hd, &wf, false, &h0[..b * hd], &c0[..b * hd]);
    let (ob, hb, cb) = lstm_ref(&x, b, tt, inp, hd, &wb, true, &h0[b * hd..], &c0[b * hd..]);
    let got = out.to_vec_f32().unwrap();
    for row in 0..b * tt {
        close(&got[row * 2 * hd..row * 2 * hd + hd], &of[row * hd..(row + 1) * hd], 1e-5);
        close(&got[row * 2 * hd + hd..(row + 1) * 2 * hd], &ob[row * hd..(row + 1) * hd], 1e-5);
    }
    close(&hn.to_vec_f32().unwrap(), &[hf, hb].concat(), 1e-5);
    close(&cn.to_vec_f32().unwrap(), &[cf, cb].concat(), 1e-5);
}

#[test]
fn lstm_cell_gradcheck() {
    let mut rng = Rng::new(42);
    let (b, inp, hd) = (2, 3, 2);
    let ins = [
        input(&mut rng, &[b, inp]),
        input(&mut rng, &[b, hd]),
        input(&mut rng, &[b, hd]),
        input(&mut rng, &[4 * hd, inp]),
        input(&mut rng, &[4 * hd, hd]),
        input(&mut rng, &[4 * hd]),
        input(&mut rng, &[4 * hd]),
    ];
    // Both outputs matter: h' and c' side by side.
    let cell = |v: &[Tensor]| {
        let (h, c) = Tensor::lstm_cell(&v[0], &v[1], &v[2], &v[3], &v[4], Some(&v[5]), Some(&v[6]))?;
        Tensor::concat(&[&h, &c], 1)
    };
    gradcheck_all(cell, &ins, &[true; 7]);
    // Only h' used (c' gets no gradient), no biases, input strided.
    let only_h =
        |v: &[Tensor]| Ok(Tensor::lstm_cell(&v[0].transpose(0, 1)?, &v[1], &v[2], &v[3], &v[4], None, None)?.0);
    let xt = input(&mut rng, &[inp, b]);
    gradcheck_all(
        only_h,
        &[xt, ins[1].clone(), ins[2].clone(), ins[3].clone(), ins[4].clone()],
        &[true, false, true, true, true],
    );
}

#[test]
fn lstm_layer_gradcheck() {
    let mut rng = Rng::new(43);
    let (b, tt, inp, hd) = (2, 3, 2, 2);
    let w = || [[4 * hd, inp], [4 * hd, hd], [4 * hd, 1], [4 * hd, 1]];
    let mut ins = vec![input(&mut rng, &[b, tt, inp])];
    for s in w().iter().chain(w().iter()) {
        let shape: Vec<usize> = s.iter().copied().filter(|&d| d != 1).collect();
        ins.push(input(&mut rng, &shape));
    }
    ins.push(input(&mut rng, &[2, b, hd]));
    ins.push(input(&mut rng, &[2, b, hd]));
    let flat = |out: Tensor, h: Tensor, c: Tensor| {
        let n = out.numel() / b;
        Tensor::concat(&[&out.reshape(&[b, n])?, &h.reshape(&[b, h.numel() / b])?, &c.reshape(&[b, c.numel() / b])?], 1)
    };
    let uni = |reverse: bool| {
        move |v: &[Tensor]| {
            let h0 = v[9].unbind(0)?;
            let c0 = v[10].unbind(0)?;
            let (out, (h, c)) = v[0].lstm(&lstm_params(&v[1..5]), reverse, Some((&h0[0], &c0[1])))?;
            flat(out, h, c)
        }
    };
    gradcheck_all(uni(false), &ins, &(0..11).map(|i| !(5..9).contains(&i)).collect::<Vec<_>>());
    gradcheck_all(uni(true), &ins, &(0..11).map(|i| !(5..9).contains(&i)).collect::<Vec<_>>());
    let bi = |v: &[Tensor]| {
        let (out, (h, c)) =
            v[0].lstm_bidirectional(&lstm_params(&v[1..5]), &lstm_params(&v[5..9]), Some((&v[9], &v[10])))?;
        flat(out, h.transpose(0, 1)?, c.transpose(0, 1)?)
    };
    gradcheck_all(bi, &ins, &[true; 11]);
}

#[test]
fn lstm_saves_gates_and_states_of_every_step() {
    let a = Arena::host();
    let (b, tt, inp, hd) = (4, 6, 10, 8);
    let p = Tensor::full(&a, &[b, tt, inp], 0.1, DType::F32, Tag::Parameter).unwrap().requires_grad();
    let mut rng = Rng::new(44);
    let mk = |s: &[usize], rng: &mut Rng| {
        Tensor::randn(&a, s, 0.3, DType::F32, Tag::Parameter, rng).unwrap().requires_grad()
    };
    let params = headroom::ops::LstmParams {
        w_ih: mk(&[4 * hd, inp], &mut rng),
        w_hh: mk(&[4 * hd, hd], &mut rng),
        b_ih: None,
        b_hh: Some(mk(&[4 * hd], &mut rng)),
    };
    let x = p.mul_scalar(2.0).unwrap(); // an op output the cells keep alive through their step views
    let (out, _) = x.lstm(&params, false, None).unwrap();
    drop(x);
    // x, and for every step the gates [B, 4H] and h and c [B, H] (the hs are the output): 6·T·B·H.
    let want = b * tt * inp * 4 + 4 * (tt * b * 4 * hd + 2 * tt * b * hd);
    assert_eq!(activation(&a), want);
    // One tape node for the whole sequence, not one per step.
    assert_eq!(headroom::autograd::tape_len(), 2);
    backward(&out.sum_all().unwrap()).unwrap();
    assert_eq!(activation(&a), 0);
    assert!(p.grad().is_some() && params.w_hh.grad().is_some() && params.b_hh.as_ref().unwrap().grad().is_some());
}

// ---- CTC ----

/// −log p(target | lp) by enumerating every path of length `tl` over C classes.
fn ctc_brute(lp: &[f32], tl: usize, batch: usize, b: usize, c: usize, target: &[i32]) -> f64 {
    let mut total = 0f64;
    let paths = c.pow(tl as u32);
    for mut code in 0..paths {
        let mut path = vec![0usize; tl];
        for p in path.iter_mut() {
            *p = code % c;
            code /= c;
        }
        let mut collapsed = vec![];
        for (i, &p) in path.iter().enumerate() {
            if p != 0 && (i == 0 || path[i - 1] != p) {
                collapsed.push(p as i32);
            }
        }
        if collapsed == target {
            total += path.iter().enumerate().map(|(t, &p)| lp[(t * batch + b) * c + p] as f64).sum::<f64>().exp();
        }
    }
    -total.ln()
}

#[test]
fn ctc_matches_brute_force_enumeration() {
    let a = Arena::host();
    let mut rng = Rng::new(51);
    // Two classes (blank + one label): targets [1] and [1, 1] (the repeat needs a blank between).
    let (tt, c) = (5, 2);
    let logits = t(&a, &[tt, 2, c], &common::values(&mut rng, tt * 2 * c, 0.0));
    let lp = logits.log_softmax(-1).unwrap();
    let lpv = lp.to_vec_f32().unwrap();
    let targets = ids(&a, &[2, 2], &[1, 0, 1, 1]);
    let loss = lp.ctc_loss(&targets, &[5, 4], &[1, 2], 0, false).unwrap();
    let want = (ctc_brute(&lpv, 5, 2, 0, c, &[1]) / 1.0 + ctc_brute(&lpv, 4, 2, 1, c, &[1, 1]) / 2.0) / 2.0;
    close(&[loss.item().unwrap()], &[want as f32], 1e-5);
    // Three classes, distinct and repeated labels, an empty target.
    let (tt, c) = (6, 3);
    let logits =
        t(&a, &[tt, 3, c], &common::values(&mut rng, tt * 3 * c, 0.0).iter().map(|v| 2.0 * v).collect::<Vec<_>>());
    let lp = logits.log_softmax(-1).unwrap();
    let lpv = lp.to_vec_f32().unwrap();
    let targets = ids(&a, &[3, 3], &[1, 2, 1, 2, 2, 0, 0, 0, 0]);
    let loss = lp.ctc_loss(&targets, &[6, 5, 3], &[3, 2, 0], 0, false).unwrap();
    let want = (ctc_brute(&lpv, 6, 3, 0, c, &[1, 2, 1]) / 3.0
        + ctc_brute(&lpv, 5, 3, 1, c, &[2, 2]) / 2.0
        + ctc_brute(&lpv, 3, 3, 2, c, &[]))
        / 3.0;
    close(&[loss.item().unwrap()], &[want as f32], 1e-5);
    // A blank other than 0: relabel classes so class 2 is blank.
    let perm = |v: &[f32]| v.chunks(3).flat_map(|r| [r[1], r[2], r[0]]).collect::<Vec<f32>>();
    let lp2 = t(&a, &[tt, 3, c], &perm(&lpv));
    let targets2 = ids(&a, &[3, 3], &[0, 1, 0, 1, 1, 2, 2, 2, 2]);
    let loss2 = lp2.ctc_loss(&targets2, &[6, 5, 3], &[3, 2, 0], 2, false).unwrap();
    close(&[loss2.item().unwrap()], &[want as f32], 1e-5);
}

#[test]
fn ctc_gradcheck_from_logits_and_log_probs() {
    let mut rng = Rng::new(52);
    let (tt, b, c) = (6, 3, 4);
    let x = input(&mut rng, &[tt, b, c]);
    let tg: &[i32] = &[1, 3, 3, 2, 2, 0, 3, 1, 2];
    let ctc = |v: &[Tensor], lp: Tensor| lp.ctc_loss(&ids(v[0].arena(), &[b, 3], tg), &[6, 5, 4], &[3, 2, 3], 0, false);
    // The chain that matters: logits → our log_softmax → ctc, in every dtype.
    gradcheck_all(|v| ctc(v, v[0].log_softmax(-1)?), std::slice::from_ref(&x), &[true]);
    // With respect to log_probs directly, even unnormalised ones: our
    // gradient is the true one, −posterior (PyTorch's exp(lp) − posterior
    // would fail this check).
    gradcheck_all(|v| ctc(v, v[0].clone()), std::slice::from_ref(&x), &[true]);
    // Time-major log_probs made from a batch-first [B, T, C] tensor (a strided view).
    let xb = input(&mut rng, &[b, tt, c]);
    gradcheck_all(|v| ctc(v, v[0].log_softmax(-1)?.transpose(0, 1)?), &[xb], &[true]);
}

#[test]
fn ctc_impossible_alignment_is_infinite_or_zeroed() {
    let a = Arena::host();
    let mut rng = Rng::new(53);
    let x = t(&a, &[3, 2, 3], &common::values(&mut rng, 18, 0.0)).requires_grad();
    // Sample 0 needs 3 frames for [1, 1] (a blank between) but has 2.
    let targets = ids(&a, &[2, 2], &[1, 1, 2, 0]);
    let lp = x.log_softmax(-1).unwrap();
    let inf = lp.ctc_loss(&targets, &[2, 3], &[2, 1], 0, false).unwrap();
    assert_eq!(inf.item().unwrap(), f32::INFINITY);
    let lpv = lp.to_vec_f32().unwrap();
    let zeroed = lp.ctc_loss(&targets, &[2, 3], &[2, 1], 0, true).unwrap();
    let only1 = ctc_brute(&lpv, 3, 2, 1, 3, &[2]) / 2.0;
    close(&[zeroed.item().unwrap()], &[only1 as f32], 1e-5);
    backward(&zeroed).unwrap();
    let g = x.grad().unwrap().to_vec_f32().unwrap();
    assert!(g.iter().all(|v| v.is_finite()));
    // The impossible sample contributes nothing: its rows (b = 0) are 0.
    for t_ in 0..3 {
        assert_eq!(&g[t_ * 6..t_ * 6 + 3], &[0., 0., 0.]);
    }
    // Exactly enough frames is possible.
    let ok = x.log_softmax(-1).unwrap().ctc_loss(&targets, &[3, 3], &[2, 1], 0, false).unwrap();
    assert!(ok.item().unwrap().is_finite());
}

#[test]
fn ctc_in_half_precision_tracks_f32() {
    // CTC in f16/bf16 (log-probs and gradient stored in half, recursions in
    // f32) against the f32 run: loss within 1e-2 relative, gradients within
    // 2e-3 absolute (the gradient rows are posteriors scaled by 1/(B·S)).
    let mut rng = Rng::new(54);
    let (tt, b, c) = (20, 4, 6);
    let v = common::values(&mut rng, tt * b * c, 0.0).iter().map(|x| 3.0 * x).collect::<Vec<f32>>();
    let tg: Vec<i32> = (0..b * 5).map(|i| 1 + (i * 7 % 5) as i32).collect();
    let run = |dt: DType| {
        let a = Arena::host();
        let x = Tensor::from_f32(&a, &[tt, b, c], &v, dt, Tag::Data).unwrap().requires_grad();
        let loss = x
            .log_softmax(-1)
            .unwrap()
            .ctc_loss(&ids(&a, &[b, 5], &tg), &[20, 18, 15, 9], &[5, 4, 5, 3], 0, false)
            .unwrap();
        backward(&loss).unwrap();
        (loss.item().unwrap(), x.grad().unwrap().to_vec_f32().unwrap())
    };
    let (l32, g32) = run(DType::F32);
    for dt in [DType::F16, DType::BF16] {
        let (l, g) = run(dt);
        assert!((l - l32).abs() <= 1e-2 * l32.abs(), "{dt}: loss {l} vs {l32}");
        let worst = g.iter().zip(&g32).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst <= 2e-3, "{dt}: gradient differs by {worst}");
    }
}

// ---- vector quantisation ----

#[test]
fn vq_values_straight_through_and_losses() {
    let a = Arena::host();
    let cb = t(&a, &[3, 2], &[0., 0., 1., 1., -1., 2.]).requires_grad();
    let z = t(&a, &[4, 2], &[0.9, 1.2, -0.2, 0.1, -0.8, 1.5, 0.45, 0.6]).requires_grad();
    let q = z.vector_quantize(&cb).unwrap();
    assert_eq!(q.indices.to_vec::<i32>().unwrap(), [1, 0, 2, 1]);
    assert_eq!(q.z_q.to_vec_f32().unwrap(), [1., 1., 0., 0., -1., 2., 1., 1.]);
    // Squared distances 0.05, 0.05, 0.29, 0.4625 over N·D = 8.
    let mse = (0.05 + 0.05 + 0.29 + 0.4625) / 8.0;
    close(&[q.commitment_loss.item().unwrap(), q.codebook_loss.item().unwrap()], &[mse, mse], 1e-6);
    // Straight-through: d(Σ z_q·w)/dz = w; the codebook gets nothing from z_q.
    let w = t(&a, &[4, 2], &[1., 2., 3., 4., 5., 6., 7., 8.]);
    backward(&q.z_q.mul(&w).unwrap().sum_all().unwrap()).unwrap();
    assert_eq!(z.grad().unwrap().to_vec_f32().unwrap(), w.to_vec_f32().unwrap());
    assert!(cb.grad().is_none());
    // Codebook loss: code j gets 2/(N·D)·Σ (e_j − z_i) over its rows; code 1 has rows 0 and 3.
    // The usual VQ-VAE sum: z gets β·(commitment gradient), the codebook its own.
    z.zero_grad();
    let q = z.vector_quantize(&cb).unwrap();
    backward(&q.codebook_loss.add(&q.commitment_loss.mul_scalar(0.25).unwrap()).unwrap()).unwrap();
    let s = 2.0 / 8.0;
    close(
        &z.grad().unwrap().to_vec_f32().unwrap(),
        &[-0.1, 0.2, -0.2, 0.1, 0.2, -0.5, -0.55, -0.4].map(|v| 0.25 * s * v),
        1e-6,
    );
    close(
        &cb.grad().unwrap().to_vec_f32().unwrap(),
        &[s * 0.2, s * -0.1, s * (0.1 + 0.55), s * (-0.2 + 0.4), s * -0.2, s * 0.5],
        1e-6,
    );
}

#[test]
fn vq_loss_gradcheck() {
    let mut rng = Rng::new(61);
    let (n, k, d) = (7, 4, 3);
    let codes: Vec<f32> = (0..k * d).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.4).collect();
    // Rows near their codes: a ±0.01 step never changes the nearest code.
    let z: Vec<f32> = (0..n * d).map(|i| codes[(i / d % k) * d + i % d] + 0.2 * (rng.uniform() - 0.5)).collect();
    let ins = [(vec![n, d], z), (vec![k, d], codes)];
    gradcheck_all(|v| Ok(v[0].vector_quantize(&v[1])?.commitment_loss), &ins, &[true, false]);
    gradcheck_all(|v| Ok(v[0].vector_quantize(&v[1])?.codebook_loss), &ins, &[false, true]);
    // A finite-difference check of a sum of both losses would be wrong by
    // design: numerically each loss depends on both inputs, analytically
    // the stop-gradients cut one path each.
}

#[test]
fn vq_scores_in_tiles_and_matches_brute_force() {
    let a = Arena::host();
    let mut rng = Rng::new(62);
    let (n, k, d) = (700, 512, 16);
    let z = common::values(&mut rng, n * d, 0.0);
    let cb = common::values(&mut rng, k * d, 0.0);
    let q = t(&a, &[n, d], &z).vector_quantize(&t(&a, &[k, d], &cb)).unwrap();
    let idx = q.indices.to_vec::<i32>().unwrap();
    for i in 0..n {
        let dist = |j: usize| (0..d).map(|c| ((z[i * d + c] - cb[j * d + c]) as f64).powi(2)).sum::<f64>();
        let best = (0..k).map(dist).fold(f64::INFINITY, f64::min);
        // Our pick is the nearest, up to f32 rounding of near-ties.
        assert!(dist(idx[i] as usize) <= best + 1e-5, "row {i}");
    }
    // The workspace held one tile of distances (256 × 512), never N × K.
    let (tile, elems) = headroom::cpu::vq::workspace(n, k, d, DType::F32);
    assert_eq!((tile, elems), (256, 512 + 256 * 512));
    assert_eq!(a.stats().tag(Tag::Workspace).requested.peak, 4 * elems);
    assert!(4 * elems < n * k * 4);
}

#[test]
fn vq_saves_input_and_indices_only() {
    let a = Arena::host();
    let (n, k, d) = (300, 64, 8);
    let mut rng = Rng::new(63);
    let p = Tensor::randn(&a, &[n, d], 1.0, DType::F32, Tag::Parameter, &mut rng).unwrap().requires_grad();
    let cb = Tensor::randn(&a, &[k, d], 1.0, DType::F32, Tag::Parameter, &mut rng).unwrap().requires_grad();
    let z = p.mul_scalar(1.0).unwrap();
    let q = z.vector_quantize(&cb).unwrap();
    drop(z);
    assert_eq!(activation(&a), n * d * 4 + n * 4);
    let loss = q
        .z_q
        .mean_all()
        .unwrap()
        .add(&q.codebook_loss)
        .unwrap()
        .add(&q.commitment_loss.mul_scalar(0.25).unwrap())
        .unwrap();
    drop(q);
    backward(&loss).unwrap();
    assert_eq!(activation(&a), 0);
    assert!(p.grad().is_some() && cb.grad().is_some());
}

// ---- additive (Bahdanau) attention ----

fn bahdanau_weights(v: &[Tensor]) -> headroom::ops::BahdanauWeights {
    headroom::ops::BahdanauWeights { w_q: v[3].clone(), w_k: v[4].clone(), b: Some(v[5].clone()), v: v[6].clone() }
}

#[test]
fn bahdanau_values_and_gradcheck_with_mask() {
    let a = Arena::host();
    let (b, tt, dq, dk, dv, at) = (2, 4, 3, 5, 2, 6);
    // v = 0: every unmasked key scores 0, so the weights are uniform over them.
    let zeros = |s: &[usize]| Tensor::zeros(&a, s, DType::F32, Tag::Data).unwrap();
    let mut rng = Rng::new(71);
    let vals = common::values(&mut rng, b * tt * dv, 0.0);
    let w =
        headroom::ops::BahdanauWeights { w_q: zeros(&[at, dq]), w_k: zeros(&[at, dk]), b: None, v: zeros(&[1, at]) };
    let mask = Tensor::from_slice(&a, &[b, tt], &[0u8, 0, 1, 1, 0, 0, 0, 1], Tag::Data).unwrap();
    let (ctx, alpha) = Tensor::additive_attention(
        &zeros(&[b, dq]),
        &zeros(&[b, tt, dk]),
        &t(&a, &[b, tt, dv], &vals),
        &w,
        Some(&mask),
    )
    .unwrap();
    close(&alpha.to_vec_f32().unwrap(), &[0.5, 0.5, 0., 0., 1. / 3., 1. / 3., 1. / 3., 0.], 1e-6);
    let mean = |r: std::ops::Range<usize>, c: usize| r.clone().map(|i| vals[i * dv + c]).sum::<f32>() / r.len() as f32;
    close(&ctx.to_vec_f32().unwrap(), &[mean(0..2, 0), mean(0..2, 1), mean(4..7, 0), mean(4..7, 1)], 1e-6);

    let ins = [
        input(&mut rng, &[b, dq]),
        input(&mut rng, &[b, tt, dk]),
        input(&mut rng, &[b, tt, dv]),
        input(&mut rng, &[at, dq]),
        input(&mut rng, &[at, dk]),
        input(&mut rng, &[at]),
        input(&mut rng, &[1, at]),
    ];
    let f = |v: &[Tensor]| {
        let m = Tensor::from_slice(v[0].arena(), &[b, tt], &[0u8, 0, 1, 0, 0, 1, 1, 1], Tag::Data)?;
        let (ctx, alpha) = Tensor::additive_attention(&v[0], &v[1], &v[2], &bahdanau_weights(v), Some(&m))?;
        Tensor::concat(&[&ctx, &alpha], 1)
    };
    gradcheck_all(f, &ins, &[true; 7]);
}

// ---- across ops: unbind, meta device, thread count, errors ----

#[test]
fn unbind_views_and_one_gradient() {
    let a = Arena::host();
    let x = t(&a, &[2, 3], &[1., 2., 3., 4., 5., 6.]).requires_grad();
    let cols = x.unbind(1).unwrap();
    assert_eq!(cols.len(), 3);
    assert_eq!(cols[1].to_vec_f32().unwrap(), [2., 5.]);
    assert!(std::sync::Arc::ptr_eq(cols[2].storage(), x.storage()), "unbind makes views");
    let loss = cols[0].mul_scalar(2.0).unwrap().add(&cols[2]).unwrap().sum_all().unwrap();
    backward(&loss).unwrap();
    // The middle column is unused: its gradient is 0.
    assert_eq!(x.grad().unwrap().to_vec_f32().unwrap(), [2., 0., 1., 2., 0., 1.]);
    let mut rng = Rng::new(81);
    gradcheck_all(
        |v| Tensor::concat(&[&v[0].unbind(1)?[2], &v[0].unbind(1)?[0]], 1),
        &[input(&mut rng, &[2, 3, 4])],
        &[true],
    );
}

/// Every op of this file on one arena, forward and backward; returns the
/// arena's counts.
fn pipeline(a: &Arena) -> (u64, u64, usize, usize, usize, usize) {
    let dt = DType::BF16;
    let p = |s: &[usize]| Tensor::zeros(a, s, dt, Tag::Parameter).unwrap().requires_grad();
    let x = Tensor::zeros(a, &[2, 3, 4, 8, 8], dt, Tag::Data).unwrap();
    let (rm, rv) = (
        Tensor::zeros(a, &[4], DType::F32, Tag::Data).unwrap(),
        Tensor::zeros(a, &[4], DType::F32, Tag::Data).unwrap(),
    );
    let h = x.conv3d(&p(&[4, 3, 3, 3, 3]), Some(&p(&[4])), [1, 2, 2], [1, 1, 1], [1, 1, 1]).unwrap();
    let h =
        h.batch_norm(Some(&p(&[4])), Some(&p(&[4])), Some(&rm), Some(&rv), true, 0.1, 1e-5).unwrap().relu().unwrap();
    let h = h.max_pool(&[1, 2, 2], &[1, 2, 2], &[0, 0, 0]).unwrap(); // [2, 4, 4, 2, 2]
    let seq = h.reshape(&[2, 4, 16]).unwrap();
    let lp = |i: usize, hd: usize| headroom::ops::LstmParams {
        w_ih: p(&[4 * hd, i]),
        w_hh: p(&[4 * hd, hd]),
        b_ih: Some(p(&[4 * hd])),
        b_hh: Some(p(&[4 * hd])),
    };
    let (out, (hn, _)) = seq.lstm_bidirectional(&lp(16, 5), &lp(16, 5), None).unwrap(); // [2, 4, 10]
    let logp = out
        .matmul(&p(&[10, 6]))
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .log_softmax(-1)
        .unwrap()
        .transpose(0, 1)
        .unwrap();
    let ctc = logp.ctc_loss(&ids(a, &[2, 2], &[1, 2, 3, 0]), &[4, 3], &[2, 1], 0, false).unwrap();
    let w = headroom::ops::BahdanauWeights { w_q: p(&[7, 5]), w_k: p(&[7, 10]), b: None, v: p(&[1, 7]) };
    let (ctx, _) = Tensor::additive_attention(&hn.unbind(0).unwrap()[1], &out, &out, &w, None).unwrap();
    let img = Tensor::zeros(a, &[2, 4, 5, 5], dt, Tag::Data).unwrap();
    let up = img.conv2d(&p(&[4, 4, 3, 3]), None, [1, 1], [1, 1], [1, 1]).unwrap();
    let up = up.conv_transpose2d(&p(&[4, 3, 3, 3]), Some(&p(&[3])), [2, 2], [1, 1], [1, 1], [1, 1]).unwrap(); // [2, 3, 10, 10]
    let pooled = up.avg_pool(&[2, 2], &[2, 2], &[0, 0]).unwrap().reshape(&[2, 3, 25]).unwrap();
    let feats = pooled.conv1d(&p(&[5, 3, 3]), None, 1, 1, 1).unwrap().transpose(1, 2).unwrap(); // [2, 25, 5]
    let q = feats.reshape(&[50, 5]).unwrap().vector_quantize(&p(&[16, 5])).unwrap();
    let loss = ctc
        .to_dtype(dt)
        .unwrap()
        .add(&ctx.mean_all().unwrap())
        .unwrap()
        .add(&q.z_q.mean_all().unwrap())
        .unwrap()
        .add(&q.codebook_loss)
        .unwrap()
        .add(&q.commitment_loss)
        .unwrap();
    backward(&loss).unwrap();
    let s = a.stats();
    (
        s.allocs,
        s.frees,
        s.allocated.peak,
        s.requested.peak,
        s.tag(Tag::Activation).allocated.peak,
        s.tag(Tag::Workspace).requested.peak,
    )
}

#[test]
fn meta_device_allocates_like_host() {
    let _lock = LIMIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let go = |backing| pipeline(&Arena::new(ArenaConfig { backing, ..Default::default() }).unwrap());
    set_conv_workspace_limit(4096); // small enough to tile every conv
    let tiled = (go(Backing::Host), go(Backing::Meta));
    set_conv_workspace_limit(headroom::ops::DEFAULT_CONV_WORKSPACE_LIMIT);
    assert_eq!(tiled.0, tiled.1);
    assert_eq!(go(Backing::Host), go(Backing::Meta));
}

#[test]
fn results_do_not_depend_on_thread_count() {
    // Sizes above the parallel threshold, on pools of 1 and 3 threads.
    let run = || {
        let a = Arena::host();
        let mut rng = Rng::new(91);
        let mut p =
            |s: &[usize], dt: DType| Tensor::randn(&a, s, 0.3, dt, Tag::Parameter, &mut rng).unwrap().requires_grad();
        let x = p(&[4, 8, 32, 32], DType::BF16);
        let w = p(&[8, 8, 3, 3], DType::BF16);
        let h = x.conv2d(&w, None, [1, 1], [1, 1], [1, 1]).unwrap();
        let h =
            h.batch_norm(None, None, None, None, true, 0.1, 1e-5).unwrap().max_pool(&[2, 2], &[1, 1], &[1, 1]).unwrap();
        let h = h
            .conv_transpose2d(&p(&[8, 2, 2, 2], DType::BF16), None, [2, 2], [0, 0], [0, 0], [1, 1])
            .unwrap()
            .avg_pool(&[3, 3], &[2, 2], &[1, 1])
            .unwrap();
        let seq = p(&[64, 3, 16], DType::F32);
        let lstm = headroom::ops::LstmParams {
            w_ih: p(&[512, 16], DType::F32),
            w_hh: p(&[512, 128], DType::F32),
            b_ih: None,
            b_hh: None,
        };
        let (out, _) = seq.lstm(&lstm, true, None).unwrap();
        let logits = p(&[50, 8, 100], DType::F32);
        let tg: Vec<i32> = (0..8 * 50).map(|i| 1 + i * 13 % 99).collect();
        let ctc = logits
            .log_softmax(-1)
            .unwrap()
            .ctc_loss(&ids(&a, &[8, 50], &tg), &[50; 8], &[20, 25, 10, 5, 22, 18, 24, 1], 0, false)
            .unwrap();
        let z = p(&[300, 128], DType::F32);
        let cb = p(&[512, 128], DType::F32);
        let q = z.vector_quantize(&cb).unwrap();
        let loss = h
            .to_dtype(DType::F32)
            .unwrap()
            .mean_all()
            .unwrap()
            .add(&out.mean_all().unwrap())
            .unwrap()
            .add(&ctc)
            .unwrap()
            .add(&q.codebook_loss)
            .unwrap()
            .add(&q.commitment_loss)
            .unwrap();
        backward(&loss).unwrap();
        [
            loss,
            x.grad().unwrap(),
            w.grad().unwrap(),
            seq.grad().unwrap(),
            logits.grad().unwrap(),
            z.grad().unwrap(),
            cb.grad().unwrap(),
        ]
        .map(|t| t.to_vec_f32().unwrap())
    };
    let on = |n| rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap().install(run);
    assert!(on(1) == on(3), "results differ between 1 and 3 threads");
}

#[test]
fn bad_input_is_an_error_naming_op_and_shapes() {
    for backing in [Backing::Host, Backing::Meta] {
        let a = Arena::new(ArenaConfig { backing, ..Default::default() }).unwrap();
        let z = |s: &[usize]| Tensor::zeros(&a, s, DType::F32, Tag::Data).unwrap();
        let x = z(&[2, 3, 8, 8]);
        let e = err(x.conv2d(&z(&[4, 2, 3, 3]), None, [1, 1], [0, 0], [1, 1]));
        assert!(
            e.contains("conv2d")
                && e.contains("[4, 2, 3, 3]")
                && e.contains("[2, 3, 8, 8]")
                && e.contains("groups = 1"),
            "{e}"
        );
        let e = err(x.conv2d(&z(&[4, 3, 9, 3]), None, [1, 1], [0, 0], [1, 1]));
        assert!(e.contains("conv2d") && e.contains("kernel extent 9"), "{e}");
        let e = err(x.conv2d(&z(&[4, 3, 3, 3]), None, [1, 1], [0, 0], [4, 1]));
        assert!(e.contains("conv2d") && e.contains("extent 9"), "{e}");
        let e = err(x.conv2d(&z(&[4, 3, 3, 3]), Some(&z(&[3])), [1, 1], [0, 0], [1, 1]));
        assert!(e.contains("conv2d") && e.contains("bias [3]") && e.contains("[4]"), "{e}");
        assert!(err(x.conv2d(&z(&[4, 3, 3, 3]), None, [0, 1], [0, 0], [1, 1])).contains("stride"));
        let e = err(x.conv1d(&z(&[4, 3, 3]), None, 1, 0, 1));
        assert!(e.contains("conv1d") && e.contains("[2, 3, 8, 8]"), "{e}");
        let e = err(x.conv3d(
            &Tensor::zeros(&a, &[4, 3, 1, 3, 3], DType::F16, Tag::Data).unwrap(),
            None,
            [1; 3],
            [0; 3],
            [1; 3],
        ));
        assert!(e.contains("conv3d"), "{e}");
        let e = err(x.conv2d(
            &Tensor::zeros(&a, &[4, 3, 3, 3], DType::F16, Tag::Data).unwrap(),
            None,
            [1, 1],
            [0, 0],
            [1, 1],
        ));
        assert!(e.contains("conv2d") && e.contains("f16"), "{e}");
        let e = err(x.conv_transpose2d(&z(&[3, 5, 3, 3]), None, [2, 2], [0, 0], [2, 0], [1, 1]));
        assert!(e.contains("conv_transpose2d") && e.contains("output_padding"), "{e}");
        let e = err(x.conv_transpose2d(&z(&[4, 5, 3, 3]), None, [1, 1], [0, 0], [0, 0], [1, 1]));
        assert!(e.contains("conv_transpose2d") && e.contains("[4, 5, 3, 3]") && e.contains("groups = 1"), "{e}");
        let e = err(x.conv_transpose2d(&z(&[3, 5, 1, 1]), None, [1, 1], [4, 4], [0, 0], [1, 1]));
        assert!(e.contains("conv_transpose2d") && e.contains("empty"), "{e}");

        let e = err(x.max_pool(&[3, 3], &[1, 1], &[2, 1]));
        assert!(e.contains("max_pool") && e.contains("half"), "{e}");
        let e = err(x.avg_pool(&[3], &[1], &[0]));
        assert!(e.contains("avg_pool") && e.contains("[2, 3, 8, 8]"), "{e}");
        assert!(err(x.max_pool(&[3, 3], &[1], &[0, 0])).contains("max_pool"));
        assert!(err(x.max_pool(&[9, 1], &[1, 1], &[0, 0])).contains("smaller than kernel"));

        let e = err(x.batch_norm(None, None, None, None, false, 0.1, 1e-5));
        assert!(e.contains("batch_norm") && e.contains("running"), "{e}");
        let e = err(x.batch_norm(Some(&z(&[2])), None, None, None, true, 0.1, 1e-5));
        assert!(e.contains("batch_norm") && e.contains("[2]") && e.contains("[3]"), "{e}");
        let e = err(z(&[1, 3]).batch_norm(None, None, None, None, true, 0.1, 1e-5));
        assert!(e.contains("batch_norm") && e.contains("more than 1"), "{e}");
        assert!(err(x.batch_norm(None, None, Some(&z(&[3])), None, true, 0.1, 1e-5)).contains("both"));

        let e = err(Tensor::lstm_cell(&z(&[2, 3]), &z(&[2, 4]), &z(&[2, 4]), &z(&[16, 3]), &z(&[12, 4]), None, None));
        assert!(e.contains("lstm_cell") && e.contains("[12, 4]") && e.contains("[4H, H]"), "{e}");
        let e = err(Tensor::lstm_cell(
            &z(&[2, 3]),
            &z(&[2, 4]),
            &z(&[2, 4]),
            &z(&[16, 3]),
            &z(&[16, 4]),
            Some(&z(&[4])),
            None,
        ));
        assert!(e.contains("lstm_cell") && e.contains("b_ih [4]"), "{e}");
        let lp = headroom::ops::LstmParams { w_ih: z(&[16, 3]), w_hh: z(&[16, 4]), b_ih: None, b_hh: None };
        assert!(err(z(&[2, 3]).lstm(&lp, false, None)).contains("[B, T, in]"));
        assert!(err(z(&[2, 5, 3]).lstm_bidirectional(&lp, &lp, Some((&z(&[2, 4]), &z(&[2, 4]))))).contains("[2, B, H]"));

        let lp3 = z(&[5, 2, 4]);
        let tg = ids(&a, &[2, 3], &[1, 2, 3, 1, 1, 1]);
        let e = err(lp3.ctc_loss(&tg, &[5], &[3, 3], 0, false));
        assert!(e.contains("ctc_loss") && e.contains("1 input lengths"), "{e}");
        let e = err(lp3.ctc_loss(&tg, &[6, 5], &[3, 3], 0, false));
        assert!(e.contains("ctc_loss") && e.contains("input length 6") && e.contains("[5, 2, 4]"), "{e}");
        let e = err(lp3.ctc_loss(&tg, &[5, 5], &[3, 4], 0, false));
        assert!(e.contains("ctc_loss") && e.contains("target length 4") && e.contains("[2, 3]"), "{e}");
        assert!(err(lp3.ctc_loss(&tg, &[5, 5], &[3, 3], 4, false)).contains("blank 4"));
        assert!(err(lp3.ctc_loss(&z(&[2, 3]), &[5, 5], &[3, 3], 0, false)).contains("i32"));
        assert!(err(lp3.ctc_loss(&ids(&a, &[3, 3], &[1; 9]), &[5, 5], &[3, 3], 0, false)).contains("[T, B, C]"));
        if backing == Backing::Host {
            // Label values are only known where there is data.
            let e = err(lp3.ctc_loss(&ids(&a, &[2, 3], &[1, 0, 3, 1, 1, 1]), &[5, 5], &[3, 3], 0, false));
            assert!(e.contains("ctc_loss") && e.contains("target 0 at [0, 1]") && e.contains("blank 0"), "{e}");
            let e = err(lp3.ctc_loss(&ids(&a, &[2, 3], &[1, 2, 3, 1, 4, 1]), &[5, 5], &[3, 3], 0, false));
            assert!(e.contains("target 4 at [1, 1]"), "{e}");
            // A label past the target length is padding and not checked.
            assert!(lp3.ctc_loss(&ids(&a, &[2, 3], &[1, 2, 9, 1, 1, -1]), &[5, 5], &[2, 2], 0, false).is_ok());
        }

        let e = err(z(&[10, 4]).vector_quantize(&z(&[8, 3])));
        assert!(e.contains("vector_quantize") && e.contains("[10, 4]") && e.contains("[8, 3]"), "{e}");
        assert!(err(z(&[10, 4]).vector_quantize(&z(&[0, 4]))).contains("non-empty"));

        let w = headroom::ops::BahdanauWeights { w_q: z(&[6, 3]), w_k: z(&[6, 4]), b: None, v: z(&[1, 6]) };
        let e = err(Tensor::additive_attention(
            &z(&[2, 3]),
            &z(&[2, 5, 4]),
            &z(&[2, 5, 2]),
            &w,
            Some(&Tensor::zeros(&a, &[2, 4], DType::U8, Tag::Data).unwrap()),
        ));
        assert!(e.contains("bahdanau_attention") && e.contains("key_padding [2, 4]"), "{e}");
        let e = err(Tensor::additive_attention(&z(&[2, 4]), &z(&[2, 5, 4]), &z(&[2, 5, 2]), &w, None));
        assert!(e.contains("bahdanau_attention") && e.contains("query [2, 4]"), "{e}");
    }
}
