//! Neural-network ops: values against hand-computed cases, gradient checks
//! in every float dtype, what each op keeps for backward, and errors.

mod common;
use common::{gradcheck_all, input};
use headroom::alloc::{ArenaConfig, Backing};
use headroom::autograd::{backward, no_grad};
use headroom::rng::Rng;
use headroom::{Arena, DType, Tag, Tensor};

fn t(arena: &Arena, shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::from_f32(arena, shape, v, DType::F32, Tag::Data).unwrap()
}

fn ids(arena: &Arena, shape: &[usize], v: &[i32]) -> Tensor {
    Tensor::from_slice(arena, shape, v, Tag::Data).unwrap()
}

fn mask(arena: &Arena, shape: &[usize], v: &[u8]) -> Tensor {
    Tensor::from_slice(arena, shape, v, Tag::Data).unwrap()
}

fn close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= tol, "{got:?} vs {want:?}");
    }
}

/// Bytes the tape holds as activations now (exact, before granule rounding).
fn activation(a: &Arena) -> usize {
    a.stats().tag(Tag::Activation).requested.current
}

// ---- cross-entropy ----

#[test]
fn cross_entropy_values_match_hand_computed() {
    let a = Arena::host();
    let x = t(&a, &[1, 3], &[1., 2., 3.]).requires_grad();
    let y = ids(&a, &[1], &[2]);
    // log(e + e² + e³) − 3
    let loss = x.cross_entropy(&y, None, 0.0).unwrap();
    assert_eq!(loss.shape(), &[] as &[usize]);
    close(&[loss.item().unwrap()], &[0.407_606], 1e-6);
    backward(&loss).unwrap();
    close(&x.grad().unwrap().to_vec_f32().unwrap(), &[0.090_030_57, 0.244_728_47, -0.334_759_04], 1e-6);
    // Smoothing 0.1: lse − (0.9·3 + 0.1/3·(1+2+3)) = lse − 2.9.
    x.zero_grad();
    let loss = x.cross_entropy(&y, None, 0.1).unwrap();
    close(&[loss.item().unwrap()], &[0.507_606], 1e-6);
    backward(&loss).unwrap();
    close(&x.grad().unwrap().to_vec_f32().unwrap(), &[0.056_697_24, 0.211_395_14, -0.268_092_4], 1e-6);
    // The ignored middle row counts neither in the sum nor in the mean.
    let x3 = t(&a, &[3, 3], &[1., 2., 3., 0.5, -1., 2., 3., 0., 0.]);
    let y3 = ids(&a, &[3], &[2, -100, 0]);
    close(&[x3.cross_entropy(&y3, Some(-100), 0.0).unwrap().item().unwrap()], &[0.251_264_46], 1e-6);
    close(&[x3.cross_entropy(&y3, Some(-100), 0.1).unwrap().item().unwrap()], &[0.401_264_46], 1e-6);
}

#[test]
fn cross_entropy_with_every_row_ignored_is_zero_not_nan() {
    let a = Arena::host();
    let x = t(&a, &[2, 3], &[1., 2., 3., 4., 5., 6.]).requires_grad();
    let y = ids(&a, &[2], &[-1, -1]);
    let loss = x.cross_entropy(&y, Some(-1), 0.1).unwrap();
    assert_eq!(loss.item().unwrap(), 0.0);
    backward(&loss).unwrap();
    assert_eq!(x.grad().unwrap().to_vec_f32().unwrap(), vec![0.0; 6]);
}

#[test]
fn cross_entropy_gradcheck_with_ignore_and_smoothing() {
    let mut rng = Rng::new(11);
    let x = input(&mut rng, &[5, 7]);
    let ce = |targets: &'static [i32], ignore: Option<i32>, ls: f32| {
        move |v: &[Tensor]| v[0].cross_entropy(&ids(v[0].arena(), &[5], targets), ignore, ls)
    };
    gradcheck_all(ce(&[3, 1, 0, 6, 2], None, 0.0), std::slice::from_ref(&x), &[true]);
    gradcheck_all(ce(&[3, -100, 0, 6, -100], Some(-100), 0.0), std::slice::from_ref(&x), &[true]);
    gradcheck_all(ce(&[3, 1, 0, 6, 2], None, 0.1), std::slice::from_ref(&x), &[true]);
    gradcheck_all(ce(&[3, -100, 0, 6, -100], Some(-100), 0.25), std::slice::from_ref(&x), &[true]);
    // A valid class used as ignore_index is skipped like any other.
    gradcheck_all(ce(&[3, 1, 0, 6, 2], Some(6), 0.0), std::slice::from_ref(&x), &[true]);
    // Logits that are a strided view.
    gradcheck_all(
        |v| v[0].transpose(0, 1)?.cross_entropy(&ids(v[0].arena(), &[7], &[0, 4, 4, 1, 3, 2, 0]), None, 0.1),
        &[x],
        &[true],
    );
}

#[test]
fn cross_entropy_keeps_no_probabilities() {
    let a = Arena::host();
    let (n, c) = (64, 1000);
    let w = Tensor::full(&a, &[n, c], 0.5, DType::F32, Tag::Parameter).unwrap().requires_grad();
    let targets: Vec<i32> = (0..n as i32).map(|i| i * 7 % c as i32).collect();
    let y = ids(&a, &[n], &targets);
    let logits = w.mul_scalar(2.0).unwrap(); // an op output, saved by nothing yet
    assert_eq!(activation(&a), 0);
    let loss = logits.cross_entropy(&y, None, 0.1).unwrap();
    drop(logits);
    // The logits plus one f32 log-sum-exp per row; targets are Data.
    assert_eq!(activation(&a), n * c * 4 + n * 4);
    backward(&loss).unwrap();
    assert_eq!(activation(&a), 0);
    close(&[loss.item().unwrap()], &[(c as f32).ln()], 1e-4);
}

// ---- mse, l1 ----

#[test]
fn mse_and_l1_values_and_gradcheck() {
    let a = Arena::host();
    let p = t(&a, &[2, 2], &[1., 2., 3., -1.]).requires_grad();
    let q = t(&a, &[2, 2], &[0.5, 2., 5., 1.]).requires_grad();
    let mse = p.mse_loss(&q).unwrap();
    assert_eq!(mse.shape(), &[] as &[usize]);
    assert_eq!(mse.item().unwrap(), 2.0625);
    backward(&mse).unwrap();
    assert_eq!(p.grad().unwrap().to_vec_f32().unwrap(), [0.25, 0., -1., -1.]);
    assert_eq!(q.grad().unwrap().to_vec_f32().unwrap(), [-0.25, 0., 1., 1.]);
    let (p, q) = (p.detach().requires_grad(), q.detach().requires_grad());
    let l1 = p.l1_loss(&q).unwrap();
    assert_eq!(l1.item().unwrap(), 1.125);
    backward(&l1).unwrap();
    // A tie (2 vs 2) gets gradient 0.
    assert_eq!(p.grad().unwrap().to_vec_f32().unwrap(), [0.25, 0., -0.25, -0.25]);
    assert_eq!(q.grad().unwrap().to_vec_f32().unwrap(), [-0.25, 0., 0.25, 0.25]);

    let mut rng = Rng::new(12);
    let (x, y) = (input(&mut rng, &[3, 5]), input(&mut rng, &[3, 5]));
    gradcheck_all(|v| v[0].mse_loss(&v[1]), &[x.clone(), y.clone()], &[true, true]);
    // |x − y| ≥ 0.05 everywhere: the kink at 0 stays outside the difference step.
    let gap = input(&mut rng, &[3, 5]).1;
    let y1 = (x.0.clone(), x.1.iter().zip(&gap).map(|(a, g)| a - g).collect());
    gradcheck_all(|v| v[0].l1_loss(&v[1]), &[x.clone(), y1], &[true, true]);
    gradcheck_all(|v| v[0].transpose(0, 1)?.mse_loss(&v[1]), &[x, input(&mut rng, &[5, 3])], &[true, false]);
}

// ---- layer norm ----

#[test]
fn layer_norm_values_match_hand_computed() {
    let a = Arena::host();
    let x = t(&a, &[2, 4], &[1., 2., 3., 4., 2., 4., 6., 9.]);
    let w = t(&a, &[4], &[1., 2., 0.5, -1.]);
    let b = t(&a, &[4], &[0., 0.1, 0.2, 0.3]);
    let y = x.layer_norm(Some(&w), Some(&b), 1e-5).unwrap().to_vec_f32().unwrap();
    let want =
        [-1.341_635_4, -0.794_423_6, 0.423_605_9, -1.041_635_4, -1.256_756_5, -0.866_735_8, 0.345_010_4, -1.150_103_6];
    close(&y, &want, 1e-5);
    // Without affine parameters each row has mean 0 and variance ≈ 1.
    let y = x.layer_norm(None, None, 0.0).unwrap().to_vec_f32().unwrap();
    for row in y.chunks(4) {
        close(&[row.iter().sum::<f32>() / 4.0, row.iter().map(|v| v * v).sum::<f32>() / 4.0], &[0., 1.], 1e-5);
    }
}

#[test]
fn layer_norm_gradcheck() {
    let mut rng = Rng::new(13);
    let (x, w, b) = (input(&mut rng, &[2, 3, 5]), input(&mut rng, &[5]), input(&mut rng, &[5]));
    gradcheck_all(
        |v| v[0].layer_norm(Some(&v[1]), Some(&v[2]), 1e-5),
        &[x.clone(), w.clone(), b.clone()],
        &[true, true, true],
    );
    gradcheck_all(|v| v[0].layer_norm(None, None, 1e-5), std::slice::from_ref(&x), &[true]);
    gradcheck_all(|v| v[0].layer_norm(Some(&v[1]), None, 1e-5), &[x.clone(), w.clone()], &[true, true]);
    gradcheck_all(|v| v[0].layer_norm(None, Some(&v[1]), 1e-5), &[x.clone(), b.clone()], &[true, true]);
    // Parameters only (the input needs no gradient), and a strided input.
    gradcheck_all(
        |v| v[0].layer_norm(Some(&v[1]), Some(&v[2]), 1e-5),
        &[x.clone(), w.clone(), b.clone()],
        &[false, true, true],
    );
    let xt = input(&mut rng, &[5, 3]);
    gradcheck_all(|v| v[0].transpose(0, 1)?.layer_norm(Some(&v[1]), None, 1e-5), &[xt, w], &[true, true]);
}

#[test]
fn layer_norm_saves_input_and_row_stats() {
    let a = Arena::host();
    let (rows, d) = (96, 300);
    let p = Tensor::full(&a, &[rows, d], 0.5, DType::F32, Tag::Parameter).unwrap().requires_grad();
    let w = Tensor::full(&a, &[d], 1.0, DType::F32, Tag::Parameter).unwrap().requires_grad();
    let b = Tensor::full(&a, &[d], 0.0, DType::F32, Tag::Parameter).unwrap().requires_grad();
    let x = p.mul_scalar(2.0).unwrap(); // an op output
    let y = x.layer_norm(Some(&w), Some(&b), 1e-5).unwrap();
    drop(x);
    // The input plus mean and rstd (f32 per row); the weight is a Parameter.
    assert_eq!(activation(&a), rows * d * 4 + 2 * rows * 4);
    backward(&y.sum_all().unwrap()).unwrap();
    assert_eq!(activation(&a), 0);
    assert_eq!(a.stats().tag(Tag::Workspace).allocated.current, 0);
    assert_eq!(b.grad().unwrap().to_vec_f32().unwrap(), vec![rows as f32; d]);
}

// ---- embedding ----

#[test]
fn embedding_values_gradcheck_and_memory() {
    let a = Arena::host();
    let w = t(&a, &[4, 2], &[0., 1., 10., 11., 20., 21., 30., 31.]).requires_grad();
    let i = ids(&a, &[2, 3], &[3, 0, 3, 1, 1, 3]);
    let e = w.embedding(&i).unwrap();
    assert_eq!(e.shape(), &[2, 3, 2]);
    assert_eq!(e.to_vec_f32().unwrap(), [30., 31., 0., 1., 30., 31., 10., 11., 10., 11., 30., 31.]);
    // Only the ids are saved, and they are Data.
    assert_eq!(activation(&a), 0);
    let g = t(&a, &[2, 3, 2], &[1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12.]);
    backward(&e.mul(&g).unwrap().sum_all().unwrap()).unwrap();
    // Row 3 collects positions 0, 2 and 5; row 2 is never used.
    assert_eq!(w.grad().unwrap().to_vec_f32().unwrap(), [3., 4., 16., 18., 0., 0., 17., 20.]);

    let mut rng = Rng::new(14);
    let table = input(&mut rng, &[7, 5]);
    let look: &[i32] = &[6, 0, 3, 3, 6, 1, 6, 2, 0];
    gradcheck_all(|v| v[0].embedding(&ids(v[0].arena(), &[3, 3], look)), std::slice::from_ref(&table), &[true]);
    gradcheck_all(|v| v[0].embedding(&ids(v[0].arena(), &[1], &[4])), &[table], &[true]);
}

// ---- dropout ----

#[test]
fn dropout_scales_kept_values_and_p0_is_identity() {
    let a = Arena::host();
    let n = 100_003;
    let x = Tensor::full(&a, &[n], 2.0, DType::F32, Tag::Data).unwrap();
    let same = x.dropout(0.0, &mut Rng::new(1)).unwrap();
    assert!(std::sync::Arc::ptr_eq(same.storage(), x.storage()));
    let y = x.dropout(0.3, &mut Rng::new(1)).unwrap().to_vec_f32().unwrap();
    assert!(y.iter().all(|&v| v == 0.0 || (v - 2.0 / 0.7).abs() < 1e-6));
    let dropped = y.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
    assert!((dropped - 0.3).abs() < 0.01, "dropped {dropped}");
}

#[test]
fn dropout_keeps_no_mask_and_replays_from_rng_state() {
    let a = Arena::host();
    let n = 50_000;
    let p = Tensor::full(&a, &[n], 1.0, DType::F32, Tag::Parameter).unwrap().requires_grad();
    let x = p.mul_scalar(3.0).unwrap(); // an op output
    let mut rng = Rng::new(42);
    let before = rng.clone();
    let y = x.dropout(0.5, &mut rng).unwrap();
    // Exactly one draw, and no mask (nor the input) held for backward.
    let mut one = before.clone();
    one.next_u64();
    assert_eq!(rng, one);
    assert_eq!(activation(&a), 0);
    // The same rng state replays the same mask (what recompute relies on).
    let again = {
        let _g = no_grad();
        x.dropout(0.5, &mut before.clone()).unwrap().to_vec_f32().unwrap()
    };
    let yv = y.to_vec_f32().unwrap();
    assert_eq!(yv, again);
    assert_ne!(yv, x.dropout(0.5, &mut rng).unwrap().to_vec_f32().unwrap());
    backward(&y.sum_all().unwrap()).unwrap();
    assert_eq!(activation(&a), 0);
    // The backward rebuilt the forward's mask: d y/d p = 3·2 where kept.
    let g = p.grad().unwrap().to_vec_f32().unwrap();
    assert!(g.iter().zip(&yv).all(|(&g, &y)| (y == 0.0 && g == 0.0) || (y == 6.0 && g == 6.0)));
}

#[test]
fn dropout_gradcheck() {
    let mut rng = Rng::new(15);
    let x = input(&mut rng, &[3, 7]);
    gradcheck_all(|v| v[0].dropout(0.4, &mut Rng::new(9)), std::slice::from_ref(&x), &[true]);
    gradcheck_all(|v| v[0].transpose(0, 1)?.dropout(0.2, &mut Rng::new(3)), &[x], &[true]);
}

// ---- concat, split, index_select ----

#[test]
fn concat_and_split_values_and_gradcheck() {
    let a = Arena::host();
    let x = t(&a, &[2, 2], &[1., 2., 3., 4.]);
    let y = t(&a, &[2, 1], &[5., 6.]);
    let c = Tensor::concat(&[&x, &y], 1).unwrap();
    assert_eq!(c.shape(), &[2, 3]);
    assert_eq!(c.to_vec_f32().unwrap(), [1., 2., 5., 3., 4., 6.]);
    assert_eq!(
        Tensor::concat(&[&x, &x.transpose(0, 1).unwrap()], 0).unwrap().to_vec_f32().unwrap(),
        [1., 2., 3., 4., 1., 3., 2., 4.]
    );
    // Data movement takes any dtype.
    let i = Tensor::concat(&[&ids(&a, &[2], &[7, 8]), &ids(&a, &[1], &[9])], -1).unwrap();
    assert_eq!(i.to_vec::<i32>().unwrap(), [7, 8, 9]);
    let parts = c.split(&[1, 2], -1).unwrap();
    assert_eq!(parts[0].to_vec_f32().unwrap(), [1., 3.]);
    assert_eq!(parts[1].to_vec_f32().unwrap(), [2., 5., 4., 6.]);
    assert!(std::sync::Arc::ptr_eq(parts[1].storage(), c.storage()), "split makes views");

    let mut rng = Rng::new(16);
    let (p, q, r) = (input(&mut rng, &[2, 3, 5]), input(&mut rng, &[2, 1, 5]), input(&mut rng, &[2, 2, 5]));
    gradcheck_all(|v| Tensor::concat(&[&v[0], &v[1], &v[2]], 1), &[p.clone(), q, r.clone()], &[true, true, true]);
    gradcheck_all(
        |v| Tensor::concat(&[&v[0].transpose(1, 2)?, &v[1].transpose(1, 2)?], -1),
        &[p.clone(), r],
        &[true, false],
    );
    // A piece left unused gets a zero gradient.
    gradcheck_all(
        |v| {
            let s = v[0].split(&[2, 0, 3], 2)?;
            Tensor::concat(&[&s[2], &s[1], &s[0].mul(&s[0])?], 2)
        },
        std::slice::from_ref(&p),
        &[true],
    );
    gradcheck_all(|v| Ok(v[0].split(&[1, 2], 1)?[1].clone()), &[p], &[true]);
}

#[test]
fn index_select_values_and_gradcheck() {
    let a = Arena::host();
    let x = t(&a, &[2, 3], &[1., 2., 3., 4., 5., 6.]).requires_grad();
    let s = x.index_select(1, &ids(&a, &[4], &[2, 0, 2, 2])).unwrap();
    assert_eq!(s.shape(), &[2, 4]);
    assert_eq!(s.to_vec_f32().unwrap(), [3., 1., 3., 3., 6., 4., 6., 6.]);
    backward(&s.sum_all().unwrap()).unwrap();
    assert_eq!(x.grad().unwrap().to_vec_f32().unwrap(), [1., 0., 3., 1., 0., 3.]);
    let m = mask(&a, &[3], &[1, 2, 3]);
    assert_eq!(m.index_select(0, &ids(&a, &[2], &[2, 1])).unwrap().to_vec::<u8>().unwrap(), [3, 2]);

    let mut rng = Rng::new(17);
    let y = input(&mut rng, &[3, 5, 2]);
    let pick: &[i32] = &[4, 0, 4, 2, 4];
    gradcheck_all(|v| v[0].index_select(1, &ids(v[0].arena(), &[5], pick)), std::slice::from_ref(&y), &[true]);
    gradcheck_all(|v| v[0].index_select(0, &ids(v[0].arena(), &[3], &[2, 2, 1])), std::slice::from_ref(&y), &[true]);
    gradcheck_all(|v| v[0].index_select(-1, &ids(v[0].arena(), &[3], &[1, 1, 0])), std::slice::from_ref(&y), &[true]);
    gradcheck_all(|v| v[0].transpose(0, 2)?.index_select(2, &ids(v[0].arena(), &[2], &[0, 2])), &[y], &[true]);
}

// ---- masked_fill, where_cond ----

#[test]
fn masked_fill_and_where_values() {
    let a = Arena::host();
    let x = t(&a, &[2, 3], &[1., 2., 3., 4., 5., 6.]).requires_grad();
    let row = mask(&a, &[3], &[0, 1, 1]);
    let y = x.masked_fill(&row, -1e9).unwrap();
    assert_eq!(y.to_vec_f32().unwrap(), [1., -1e9, -1e9, 4., -1e9, -1e9]);
    backward(&y.sum_all().unwrap()).unwrap();
    assert_eq!(x.grad().unwrap().to_vec_f32().unwrap(), [1., 0., 0., 1., 0., 0.]);

    let c = mask(&a, &[2, 1], &[1, 0]);
    let p = t(&a, &[3], &[10., 20., 30.]).requires_grad();
    let q = t(&a, &[2, 3], &[-1., -2., -3., -4., -5., -6.]).requires_grad();
    let w = Tensor::where_cond(&c, &p, &q).unwrap();
    assert_eq!(w.to_vec_f32().unwrap(), [10., 20., 30., -4., -5., -6.]);
    backward(&w.sum_all().unwrap()).unwrap();
    assert_eq!(p.grad().unwrap().to_vec_f32().unwrap(), [1., 1., 1.]);
    assert_eq!(q.grad().unwrap().to_vec_f32().unwrap(), [0., 0., 0., 1., 1., 1.]);
}

#[test]
fn masked_fill_and_where_gradcheck_with_broadcast_masks() {
    let mut rng = Rng::new(18);
    let x = input(&mut rng, &[2, 3, 5]);
    let bits: Vec<u8> = (0..15).map(|i| (i * 7 % 3 == 0) as u8).collect();
    let bits = &bits[..];
    gradcheck_all(|v| v[0].masked_fill(&mask(v[0].arena(), &[3, 5], bits), 0.5), std::slice::from_ref(&x), &[true]);
    gradcheck_all(
        |v| v[0].masked_fill(&mask(v[0].arena(), &[2, 1, 1], &[1, 0]), -2.0),
        std::slice::from_ref(&x),
        &[true],
    );
    gradcheck_all(
        |v| v[0].transpose(1, 2)?.masked_fill(&mask(v[0].arena(), &[3], &[0, 1, 0]), 9.0),
        std::slice::from_ref(&x),
        &[true],
    );
    let (b, s) = (input(&mut rng, &[3, 1]), input(&mut rng, &[5]));
    gradcheck_all(
        |v| Tensor::where_cond(&mask(v[0].arena(), &[3, 5], bits), &v[0], &v[1]),
        &[x.clone(), b.clone()],
        &[true, true],
    );
    gradcheck_all(
        |v| Tensor::where_cond(&mask(v[0].arena(), &[2, 1, 1], &[0, 1]), &v[0], &v[1]),
        &[b, s],
        &[true, true],
    );
    gradcheck_all(
        |v| Tensor::where_cond(&mask(v[0].arena(), &[5], &[1, 0, 0, 1, 1]), &v[0], &v[0].neg()?),
        &[x],
        &[true],
    );
}

// ---- properties across ops ----

#[test]
fn results_do_not_depend_on_thread_count() {
    // Sizes above the parallel threshold, run on pools of 1 and 3 threads.
    let run = || {
        let a = Arena::host();
        let mut rng = Rng::new(19);
        let x = Tensor::randn(&a, &[300, 257], 1.0, DType::BF16, Tag::Parameter, &mut rng).unwrap().requires_grad();
        let w = Tensor::randn(&a, &[257], 1.0, DType::BF16, Tag::Parameter, &mut rng).unwrap().requires_grad();
        let table = Tensor::randn(&a, &[50, 700], 1.0, DType::BF16, Tag::Parameter, &mut rng).unwrap().requires_grad();
        let look: Vec<i32> = (0..300).map(|i| i * i % 50).collect();
        let targets: Vec<i32> = (0..300).map(|i| i * 31 % 257).collect();
        let h = x.layer_norm(Some(&w), None, 1e-5).unwrap().dropout(0.1, &mut rng).unwrap();
        let e = table.embedding(&ids(&a, &[300], &look)).unwrap().sum(&[1], true).unwrap();
        let loss = h.add(&e).unwrap().cross_entropy(&ids(&a, &[300], &targets), None, 0.1).unwrap();
        backward(&loss).unwrap();
        [loss, x.grad().unwrap(), w.grad().unwrap(), table.grad().unwrap()].map(|t| t.to_vec_f32().unwrap())
    };
    let on = |n| rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap().install(run);
    assert!(on(1) == on(3), "results differ between 1 and 3 threads");
}

#[test]
fn meta_device_allocates_like_host() {
    let go = |backing: Backing| {
        let a = Arena::new(ArenaConfig { backing, ..Default::default() }).unwrap();
        let x = Tensor::zeros(&a, &[37, 300], DType::BF16, Tag::Parameter).unwrap().requires_grad();
        let w = Tensor::zeros(&a, &[300], DType::BF16, Tag::Parameter).unwrap().requires_grad();
        let table = Tensor::zeros(&a, &[11, 300], DType::BF16, Tag::Parameter).unwrap().requires_grad();
        let i = Tensor::zeros(&a, &[37], DType::I32, Tag::Data).unwrap();
        let m = Tensor::zeros(&a, &[300], DType::U8, Tag::Data).unwrap();
        let h = x.layer_norm(Some(&w), Some(&w), 1e-5).unwrap().dropout(0.1, &mut Rng::new(1)).unwrap();
        let h = Tensor::concat(&[&h, &table.embedding(&i).unwrap()], 1).unwrap().split(&[300, 300], 1).unwrap();
        let h = h[0].masked_fill(&m, 0.0).unwrap().index_select(1, &i).unwrap();
        let h = Tensor::where_cond(&m.slice(0, 0, 37).unwrap(), &h, &h).unwrap();
        let loss = h
            .cross_entropy(&i, Some(-100), 0.1)
            .unwrap()
            .add(&h.mse_loss(&h).unwrap())
            .unwrap()
            .add(&h.l1_loss(&h).unwrap())
            .unwrap();
        backward(&loss).unwrap();
        let s = a.stats();
        (
            s.allocs,
            s.frees,
            s.allocated.peak,
            s.tag(Tag::Activation).allocated.peak,
            s.tag(Tag::Workspace).allocated.peak,
        )
    };
    assert_eq!(go(Backing::Host), go(Backing::Meta));
}

#[test]
fn bad_input_is_an_error_naming_op_and_shapes() {
    let a = Arena::host();
    let err = |r: headroom::Result<Tensor>| r.unwrap_err().to_string();
    let x = Tensor::zeros(&a, &[4, 3], DType::F32, Tag::Data).unwrap();
    let h = Tensor::zeros(&a, &[4, 3], DType::F16, Tag::Data).unwrap();

    let e = err(x.cross_entropy(&ids(&a, &[4], &[0, 1, 3, 0]), None, 0.0));
    assert!(
        e.contains("cross_entropy") && e.contains("target 3") && e.contains("[4, 3]") && e.contains("index"),
        "{e}"
    );
    let e = err(x.cross_entropy(&ids(&a, &[4], &[0, -1, 2, 0]), Some(-100), 0.0));
    assert!(e.contains("cross_entropy") && e.contains("target -1") && e.contains("ignore_index -100"), "{e}");
    let e = err(x.cross_entropy(&ids(&a, &[5], &[0; 5]), None, 0.0));
    assert!(e.contains("cross_entropy") && e.contains("[4, 3]") && e.contains("[5]"), "{e}");
    let e = err(x.cross_entropy(&x.sum(&[1], false).unwrap(), None, 0.0));
    assert!(e.contains("cross_entropy") && e.contains("i32"), "{e}");
    assert!(err(x.cross_entropy(&ids(&a, &[4], &[0; 4]), None, 1.5)).contains("label_smoothing"));

    let e = err(x.mse_loss(&Tensor::zeros(&a, &[3, 4], DType::F32, Tag::Data).unwrap()));
    assert!(e.contains("mse_loss") && e.contains("[4, 3]") && e.contains("[3, 4]"), "{e}");
    let e = err(x.l1_loss(&h));
    assert!(e.contains("l1_loss") && e.contains("f16"), "{e}");

    let e = err(x.layer_norm(Some(&Tensor::zeros(&a, &[4], DType::F32, Tag::Data).unwrap()), None, 1e-5));
    assert!(e.contains("layer_norm") && e.contains("[4]") && e.contains("[4, 3]") && e.contains("[3]"), "{e}");
    let e = err(x.layer_norm(None, Some(&Tensor::zeros(&a, &[3], DType::F16, Tag::Data).unwrap()), 1e-5));
    assert!(e.contains("layer_norm") && e.contains("f16"), "{e}");

    let e = err(x.embedding(&ids(&a, &[2], &[1, 4])));
    assert!(e.contains("embedding") && e.contains("id 4") && e.contains("[0, 4)") && e.contains("[4, 3]"), "{e}");
    let e = err(x.embedding(&ids(&a, &[1], &[-2])));
    assert!(e.contains("embedding") && e.contains("id -2"), "{e}");
    assert!(err(x.embedding(&mask(&a, &[1], &[0]))).contains("i32"));
    assert!(err(x.reshape(&[12]).unwrap().embedding(&ids(&a, &[1], &[0]))).contains("[12]"));

    let e = err(x.dropout(1.0, &mut Rng::new(0)));
    assert!(e.contains("dropout") && e.contains("[0, 1)") && e.contains("[4, 3]"), "{e}");
    assert!(err(x.dropout(-0.1, &mut Rng::new(0))).contains("dropout"));

    let e = err(Tensor::concat(&[&x, &Tensor::zeros(&a, &[4, 2, 1], DType::F32, Tag::Data).unwrap()], 1));
    assert!(e.contains("concat") && e.contains("[4, 3]") && e.contains("[4, 2, 1]"), "{e}");
    let e = err(Tensor::concat(&[&x, &x.transpose(0, 1).unwrap()], 1));
    assert!(e.contains("concat") && e.contains("[3, 4]"), "{e}");
    assert!(err(Tensor::concat(&[&x, &h], 0)).contains("f16"));
    assert!(err(Tensor::concat(&[], 0)).contains("concat"));
    let e = x.split(&[1, 1], 1).unwrap_err().to_string();
    assert!(e.contains("split") && e.contains("[1, 1]") && e.contains("[4, 3]"), "{e}");
    let e = err(x.index_select(1, &ids(&a, &[2], &[0, 3])));
    assert!(e.contains("index_select") && e.contains("index 3") && e.contains("[4, 3]"), "{e}");
    assert!(err(x.index_select(0, &ids(&a, &[1, 1], &[0]))).contains("1-D"));
    assert!(err(x.index_select(2, &ids(&a, &[1], &[0]))).contains("index_select"));

    let e = err(x.masked_fill(&mask(&a, &[2], &[0, 1]), 0.0));
    assert!(e.contains("masked_fill") && e.contains("[4, 3]") && e.contains("[2]"), "{e}");
    let e = err(x.masked_fill(&mask(&a, &[2, 4, 3], &[0; 24]), 0.0));
    assert!(e.contains("masked_fill") && e.contains("[2, 4, 3]"), "{e}");
    assert!(err(x.masked_fill(&ids(&a, &[3], &[0; 3]), 0.0)).contains("u8"));
    let e = err(Tensor::where_cond(&mask(&a, &[3], &[0; 3]), &x, &h));
    assert!(e.contains("where_cond") && e.contains("f16"), "{e}");
    let e = err(Tensor::where_cond(&mask(&a, &[5], &[0; 5]), &x, &x));
    assert!(e.contains("where_cond") && e.contains("[5]"), "{e}");
}
