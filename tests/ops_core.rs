//! Core ops: values against hand-computed cases, gradient checks in every
//! float dtype, and errors for bad input.

mod common;
use common::{gradcheck, gradcheck_all, input};
use headroom::autograd::{backward, no_grad, record};
use headroom::rng::Rng;
use headroom::{Arena, DType, Tag, Tensor};

fn t(arena: &Arena, shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::from_f32(arena, shape, v, DType::F32, Tag::Data).unwrap()
}

#[test]
fn broadcast_arithmetic_values() {
    let a = Arena::host();
    let x = t(&a, &[2, 3], &[1., 2., 3., 4., 5., 6.]);
    let b = t(&a, &[3], &[10., 20., 30.]);
    assert_eq!(x.add(&b).unwrap().to_vec_f32().unwrap(), [11., 22., 33., 14., 25., 36.]);
    let c = t(&a, &[2, 1], &[2., 4.]);
    assert_eq!(x.div(&c).unwrap().to_vec_f32().unwrap(), [0.5, 1., 1.5, 1., 1.25, 1.5]);
    assert_eq!(x.sub(&c).unwrap().mul_scalar(2.).unwrap().to_vec_f32().unwrap(), [-2., 0., 2., 0., 2., 4.]);
}

#[test]
fn binary_ops_gradcheck_with_broadcasting() {
    let mut rng = Rng::new(1);
    let (x, y, z) = (input(&mut rng, &[2, 3, 4]), input(&mut rng, &[3, 1]), input(&mut rng, &[4]));
    gradcheck_all(|v| v[0].add(&v[1]), &[x.clone(), y.clone()], &[true, true]);
    gradcheck_all(|v| v[0].sub(&v[1]), &[x.clone(), z.clone()], &[true, true]);
    gradcheck_all(|v| v[0].mul(&v[1]), &[x.clone(), y.clone()], &[true, true]);
    let pos = (vec![4], vec![0.7, 1.3, -0.9, 2.0]);
    gradcheck_all(|v| v[0].div(&v[1]), &[x.clone(), pos], &[true, true]);
    gradcheck_all(|v| v[0].mul_scalar(3.0)?.add_scalar(1.0), &[x], &[true]);
}

#[test]
fn unary_ops_gradcheck() {
    let mut rng = Rng::new(2);
    let x = input(&mut rng, &[3, 5]);
    let pos = (vec![4], vec![0.5, 1.5, 2.5, 0.8]);
    gradcheck_all(|v| v[0].relu(), std::slice::from_ref(&x), &[true]);
    gradcheck_all(|v| v[0].gelu(), std::slice::from_ref(&x), &[true]);
    gradcheck_all(|v| v[0].silu(), std::slice::from_ref(&x), &[true]);
    gradcheck_all(|v| v[0].tanh(), std::slice::from_ref(&x), &[true]);
    gradcheck_all(|v| v[0].sigmoid(), std::slice::from_ref(&x), &[true]);
    gradcheck_all(|v| v[0].exp(), std::slice::from_ref(&x), &[true]);
    gradcheck_all(|v| v[0].neg(), &[x], &[true]);
    gradcheck_all(|v| v[0].log(), std::slice::from_ref(&pos), &[true]);
    gradcheck_all(|v| v[0].sqrt(), &[pos], &[true]);
}

#[test]
fn activation_values_match_hand_computed() {
    let a = Arena::host();
    let x = t(&a, &[4], &[-1., 0., 1., 2.]);
    let close = |got: Vec<f32>, want: [f32; 4]| {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
    };
    close(x.relu().unwrap().to_vec_f32().unwrap(), [0., 0., 1., 2.]);
    // PyTorch: gelu([-1,0,1,2]) = [-0.158655, 0, 0.841345, 1.954500]
    close(x.gelu().unwrap().to_vec_f32().unwrap(), [-0.158_655_3, 0., 0.841_344_7, 1.954_5]);
    close(x.sigmoid().unwrap().to_vec_f32().unwrap(), [0.268_941_4, 0.5, 0.731_058_6, 0.880_797]);
    close(x.silu().unwrap().to_vec_f32().unwrap(), [-0.268_941_4, 0., 0.731_058_6, 1.761_594]);
}

#[test]
fn reductions_values_and_gradcheck() {
    let a = Arena::host();
    let x = t(&a, &[2, 3], &[1., 5., 3., 4., 2., 6.]);
    assert_eq!(x.sum(&[0], false).unwrap().to_vec_f32().unwrap(), [5., 7., 9.]);
    assert_eq!(x.sum(&[-1], true).unwrap().shape(), &[2, 1]);
    assert_eq!(x.mean(&[1], false).unwrap().to_vec_f32().unwrap(), [3., 4.]);
    assert_eq!(x.max(1, false).unwrap().to_vec_f32().unwrap(), [5., 6.]);
    assert_eq!(x.sum_all().unwrap().item().unwrap(), 21.);
    let mut rng = Rng::new(3);
    let y = input(&mut rng, &[2, 3, 4]);
    gradcheck_all(|v| v[0].sum(&[1], false), std::slice::from_ref(&y), &[true]);
    gradcheck_all(|v| v[0].sum(&[0, 2], true), std::slice::from_ref(&y), &[true]);
    gradcheck_all(|v| v[0].mean(&[-1], false), std::slice::from_ref(&y), &[true]);
    gradcheck_all(|v| v[0].max(1, false), std::slice::from_ref(&y), &[true]);
    gradcheck_all(|v| v[0].max(-1, true), std::slice::from_ref(&y), &[true]);
    gradcheck_all(|v| v[0].transpose(0, 2)?.sum(&[0], false), &[y], &[true]);
}

#[test]
fn softmax_values_and_gradcheck() {
    let a = Arena::host();
    let x = t(&a, &[1, 3], &[1., 2., 3.]);
    let s = x.softmax(-1).unwrap().to_vec_f32().unwrap();
    let want = [0.090_030_57, 0.244_728_48, 0.665_240_9];
    for (g, w) in s.iter().zip(want) {
        assert!((g - w).abs() < 1e-6);
    }
    let l = x.log_softmax(-1).unwrap().to_vec_f32().unwrap();
    for (g, w) in l.iter().zip(want) {
        assert!((g - w.ln()).abs() < 1e-6);
    }
    let mut rng = Rng::new(4);
    let y = input(&mut rng, &[2, 3, 5]);
    gradcheck_all(|v| v[0].softmax(-1), std::slice::from_ref(&y), &[true]);
    gradcheck_all(|v| v[0].log_softmax(-1), std::slice::from_ref(&y), &[true]);
    gradcheck_all(|v| v[0].softmax(1), std::slice::from_ref(&y), &[true]);
    gradcheck_all(|v| v[0].log_softmax(0), &[y], &[true]);
}

#[test]
fn matmul_values_and_gradcheck() {
    let a = Arena::host();
    let x = t(&a, &[2, 3], &[1., 2., 3., 4., 5., 6.]);
    let w = t(&a, &[3, 2], &[1., 0., 0., 1., 1., 1.]);
    assert_eq!(x.matmul(&w).unwrap().to_vec_f32().unwrap(), [4., 5., 10., 11.]);
    // Transposed operand read in place: x @ x^T.
    assert_eq!(x.matmul(&x.transpose(0, 1).unwrap()).unwrap().to_vec_f32().unwrap(), [14., 32., 32., 77.]);
    let mut rng = Rng::new(5);
    let (p, q) = (input(&mut rng, &[3, 4]), input(&mut rng, &[4, 5]));
    gradcheck_all(|v| v[0].matmul(&v[1]), &[p.clone(), q.clone()], &[true, true]);
    let (b3, w2) = (input(&mut rng, &[2, 3, 4]), input(&mut rng, &[4, 5]));
    gradcheck_all(|v| v[0].matmul(&v[1]), &[b3.clone(), w2], &[true, true]);
    let b4 = input(&mut rng, &[2, 4, 5]);
    gradcheck_all(|v| v[0].matmul(&v[1]), &[b3.clone(), b4], &[true, true]);
    let (l, r) = (input(&mut rng, &[2, 2, 3, 4]), input(&mut rng, &[2, 1, 4, 3]));
    gradcheck_all(|v| v[0].matmul(&v[1]), &[l, r], &[true, true]);
    let k = input(&mut rng, &[2, 5, 4]);
    gradcheck_all(|v| v[0].matmul(&v[1].transpose(-1, -2)?), &[b3, k], &[true, true]);
}

#[test]
fn view_ops_gradcheck() {
    let mut rng = Rng::new(6);
    let x = input(&mut rng, &[2, 3, 4]);
    gradcheck_all(|v| v[0].reshape(&[6, 4]), std::slice::from_ref(&x), &[true]);
    gradcheck_all(|v| v[0].permute(&[2, 0, 1])?.contiguous(), std::slice::from_ref(&x), &[true]);
    gradcheck_all(|v| v[0].transpose(0, 1)?.reshape(&[3, 8]), std::slice::from_ref(&x), &[true]);
    gradcheck_all(|v| v[0].slice(1, 1, 3), std::slice::from_ref(&x), &[true]);
    gradcheck_all(|v| v[0].slice(-1, 0, 2)?.unsqueeze(0)?.squeeze(0), std::slice::from_ref(&x), &[true]);
    let y = input(&mut rng, &[3, 1]);
    gradcheck_all(|v| v[0].expand(&[2, 3, 4]), &[y], &[true]);
    gradcheck_all(|v| v[0].copy(), std::slice::from_ref(&x), &[true]);
    gradcheck_all(|v| v[0].to_dtype(DType::F32)?.to_dtype(v[0].dtype()), &[x], &[true]);
}

#[test]
fn views_share_storage_and_copy_nothing() {
    let a = Arena::host();
    let x = Tensor::zeros(&a, &[64, 64], DType::F32, Tag::Data).unwrap();
    let before = a.stats().allocated.current;
    let w = x.reshape(&[32, 128]).unwrap().permute(&[1, 0]).unwrap().expand(&[2, 128, 32]).unwrap();
    assert_eq!(a.stats().allocated.current, before, "views allocate nothing");
    assert_eq!(w.shape(), &[2, 128, 32]);
}

#[test]
fn half_storage_halves_memory_and_keeps_values() {
    let a = Arena::host();
    let v: Vec<f32> = (0..1024).map(|i| (i as f32 * 0.37).sin()).collect();
    let x32 = Tensor::from_f32(&a, &[1024], &v, DType::F32, Tag::Data).unwrap();
    let x16 = Tensor::from_f32(&a, &[1024], &v, DType::F16, Tag::Data).unwrap();
    assert_eq!(x32.storage().block().size(), 2 * x16.storage().block().size());
    let (y32, y16) = (x32.gelu().unwrap().to_vec_f32().unwrap(), x16.gelu().unwrap().to_vec_f32().unwrap());
    let worst = y32.iter().zip(&y16).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 2e-3, "f16 gelu differs by {worst}");
}

#[test]
fn gradcheck_catches_a_wrong_backward() {
    // A doubling op whose backward forgets the factor 2: the check must fail.
    let wrong = |v: &[Tensor]| -> headroom::Result<Tensor> {
        let out = headroom::autograd::no_grad();
        let y = v[0].mul_scalar(2.0)?;
        drop(out);
        Ok(record("double", &[&v[0]], y, vec![], |_, g| Ok(vec![g[0].clone()])))
    };
    let mut rng = Rng::new(7);
    assert!(gradcheck(wrong, &[input(&mut rng, &[5])], &[true], DType::F32).is_err());
}

#[test]
fn bad_input_is_an_error_naming_op_and_shapes() {
    let a = Arena::host();
    let x = Tensor::zeros(&a, &[2, 3], DType::F32, Tag::Data).unwrap();
    let y = Tensor::zeros(&a, &[4, 5], DType::F32, Tag::Data).unwrap();
    let e = x.matmul(&y).unwrap_err().to_string();
    assert!(e.contains("matmul") && e.contains("[2, 3]") && e.contains("[4, 5]"), "{e}");
    let e = x.add(&y).unwrap_err().to_string();
    assert!(e.contains("add") && e.contains("broadcast"), "{e}");
    let h = Tensor::zeros(&a, &[2, 3], DType::F16, Tag::Data).unwrap();
    let e = x.mul(&h).unwrap_err().to_string();
    assert!(e.contains("mul") && e.contains("f16"), "{e}");
    assert!(x.reshape(&[7]).unwrap_err().to_string().contains("reshape"));
    assert!(x.slice(1, 2, 9).unwrap_err().to_string().contains("slice"));
    assert!(x.sum(&[5], false).unwrap_err().to_string().contains("sum"));
    let i = Tensor::zeros(&a, &[2], DType::I32, Tag::Data).unwrap();
    assert!(i.relu().unwrap_err().to_string().contains("relu"));
}

#[test]
fn backward_frees_saved_tensors_and_no_grad_records_nothing() {
    let a = Arena::host();
    let w = Tensor::full(&a, &[256, 256], 0.01, DType::F32, Tag::Parameter).unwrap().requires_grad();
    let x = Tensor::full(&a, &[64, 256], 1.0, DType::F32, Tag::Data).unwrap();
    {
        let _g = no_grad();
        let y = x.matmul(&w).unwrap().gelu().unwrap().matmul(&w).unwrap();
        drop(y);
        assert_eq!(headroom::autograd::tape_len(), 0);
        assert_eq!(a.stats().tag(Tag::Activation).allocated.current, 0);
    }
    let h = x.matmul(&w).unwrap().gelu().unwrap();
    let loss = h.matmul(&w).unwrap().mean_all().unwrap();
    drop(h);
    // The gelu input and output-of-gelu are saved; they are activations now.
    let act = a.stats().tag(Tag::Activation).allocated.current;
    assert_eq!(act, 2 * 64 * 256 * 4);
    backward(&loss).unwrap();
    assert_eq!(headroom::autograd::tape_len(), 0);
    drop(loss);
    let s = a.stats();
    assert_eq!(s.tag(Tag::Activation).allocated.current, 0);
    assert_eq!(s.tag(Tag::Temporary).allocated.current, 0);
    assert_eq!(s.tag(Tag::Gradient).allocated.current, 256 * 256 * 4);
    // A second backward accumulates into .grad in place.
    let g1 = w.grad().unwrap().to_vec_f32().unwrap();
    let loss = x.matmul(&w).unwrap().gelu().unwrap().matmul(&w).unwrap().mean_all().unwrap();
    backward(&loss).unwrap();
    let g2 = w.grad().unwrap().to_vec_f32().unwrap();
    assert!(g1.iter().zip(&g2).all(|(a, b)| (2.0 * a - b).abs() <= 1e-6 * a.abs().max(1e-3)));
    assert_eq!(a.stats().tag(Tag::Gradient).allocated.current, 256 * 256 * 4);
}
