//! Edge values and impossible sizes: overflowing shapes are errors naming the
//! op and the shape, empty axes never panic, empty means are NaN (as in
//! PyTorch), and reductions refuse what has no answer.

use headroom::autograd::backward;
use headroom::{Arena, DType, Error, Tag, Tensor};

fn t(arena: &Arena, shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::from_f32(arena, shape, v, DType::F32, Tag::Data).unwrap()
}

fn err_text(e: Error) -> String {
    e.to_string()
}

#[test]
fn shapes_whose_bytes_overflow_are_errors_not_tiny_blocks() {
    let a = Arena::host();
    let huge = [1usize << 40, 1 << 40];
    // numel overflows usize; numel fits but bytes overflow; bytes past isize::MAX.
    for (shape, dtype) in [(&huge[..], DType::U8), (&[usize::MAX / 2, 1][..], DType::F32), (&[1 << 63][..], DType::U8)]
    {
        let e = err_text(Tensor::empty(&a, shape, dtype, Tag::Temporary, "my_op").unwrap_err());
        assert!(
            e.contains("my_op") && e.contains(&format!("{shape:?}")) && e.contains("larger than any memory"),
            "{e}"
        );
        let e = err_text(Tensor::zeros(&a, shape, dtype, Tag::Temporary).unwrap_err());
        assert!(e.contains("zeros") && e.contains(&format!("{shape:?}")), "{e}");
    }
    let e = err_text(Tensor::from_f32(&a, &huge, &[1.0], DType::F32, Tag::Data).unwrap_err());
    assert!(e.contains("from_f32") && e.contains("[1099511627776, 1099511627776]"), "{e}");
    let mut rng = headroom::rng::Rng::new(0);
    assert!(Tensor::randn(&a, &huge, 1.0, DType::F32, Tag::Data, &mut rng).is_err());
    // A size that fits in usize but in no memory is the arena's OutOfMemory.
    let e = Tensor::empty(&a, &[1 << 40, 1 << 10], DType::F32, Tag::Temporary, "big").unwrap_err();
    assert!(e.is_oom() && e.to_string().contains("big") && e.to_string().contains("can never fit"), "{e}");
    assert_eq!(a.stats().allocated.current, 0, "nothing was allocated");
}

#[test]
fn reshape_and_expand_refuse_overflowing_element_counts() {
    let a = Arena::host();
    let x = t(&a, &[4], &[1., 2., 3., 4.]);
    // (2^62 + 1)·4 wraps to 4 in usize: without the check this would be a
    // view of 2^62 + 1 rows over 4 elements.
    let e = err_text(x.reshape(&[(1 << 62) + 1, 4]).unwrap_err());
    assert!(e.contains("reshape") && e.contains("[4611686018427387905, 4]"), "{e}");
    let one = t(&a, &[1], &[1.]);
    let e = err_text(one.expand(&[1 << 40, 1 << 40]).unwrap_err());
    assert!(e.contains("expand") && e.contains("[1099511627776, 1099511627776]"), "{e}");
    // Large but representable broadcasts are still views.
    let v = one.expand(&[1 << 20, 1 << 20]).unwrap();
    assert_eq!(v.numel(), 1 << 40);
    assert_eq!(x.reshape(&[2, 2]).unwrap().shape(), &[2, 2]);
}

#[test]
fn softmax_over_an_empty_axis_is_an_empty_result() {
    let a = Arena::host();
    for shape in [vec![3, 0], vec![0, 4], vec![2, 0, 3]] {
        let x = Tensor::zeros(&a, &shape, DType::F32, Tag::Data).unwrap().requires_grad();
        for log in [false, true] {
            let axis = if shape[1] == 0 { 1 } else { -1 };
            let y = if log { x.log_softmax(axis) } else { x.softmax(axis) }.unwrap();
            assert_eq!(y.shape(), &shape[..]);
            assert!(y.to_vec_f32().unwrap().is_empty());
            backward(&y.sum_all().unwrap()).unwrap();
            assert_eq!(x.grad().unwrap().shape(), &shape[..]);
            x.zero_grad();
        }
    }
}

#[test]
fn size_is_checked_and_never_panics() {
    let a = Arena::host();
    let x = Tensor::zeros(&a, &[2, 3, 5], DType::F32, Tag::Data).unwrap();
    assert_eq!((x.size(0).unwrap(), x.size(-1).unwrap(), x.size(-3).unwrap()), (2, 5, 2));
    for d in [3, -4, isize::MAX, isize::MIN] {
        let e = err_text(x.size(d).unwrap_err());
        assert!(e.contains("size") && e.contains(&format!("axis {d}")) && e.contains("[2, 3, 5]"), "{e}");
    }
    let scalar = Tensor::zeros(&a, &[], DType::F32, Tag::Data).unwrap();
    assert!(scalar.size(0).is_err() && scalar.size(-1).is_err());
}

#[test]
fn empty_means_are_nan_and_empty_sums_are_zero() {
    let a = Arena::host();
    let e = Tensor::zeros(&a, &[0], DType::F32, Tag::Data).unwrap();
    let nan = |t: Tensor| t.item().unwrap().is_nan();
    assert!(nan(e.mean_all().unwrap()));
    assert!(nan(e.mean(&[0], false).unwrap()));
    assert!(nan(e.mse_loss(&e).unwrap()));
    assert!(nan(e.l1_loss(&e).unwrap()));
    // Positive zero, as in PyTorch, not −0.
    assert_eq!(e.sum_all().unwrap().item().unwrap().to_bits(), 0f32.to_bits());
    // Over a zero-length axis of a non-empty output: one NaN (or 0) per row.
    let m = Tensor::zeros(&a, &[3, 0], DType::BF16, Tag::Data).unwrap();
    let mean = m.mean(&[1], false).unwrap().to_vec_f32().unwrap();
    assert!(mean.len() == 3 && mean.iter().all(|v| v.is_nan()), "{mean:?}");
    assert_eq!(m.sum(&[1], false).unwrap().to_vec_f32().unwrap(), [0.0; 3]);
    // Non-empty inputs are untouched.
    let x = t(&a, &[2, 2], &[1., 2., 3., 6.]);
    assert_eq!(x.mean_all().unwrap().item().unwrap(), 3.0);
    assert_eq!(x.mean(&[0], false).unwrap().to_vec_f32().unwrap(), [2.0, 4.0]);
}

#[test]
fn max_over_an_empty_axis_is_an_error() {
    let a = Arena::host();
    let x = Tensor::zeros(&a, &[3, 0], DType::F32, Tag::Data).unwrap();
    let e = err_text(x.max(1, false).unwrap_err());
    assert!(e.contains("max") && e.contains("[3, 0]") && e.contains("length 0"), "{e}");
    assert!(x.max(-1, true).is_err());
    // The other axis has elements; its max is an empty [0] result.
    assert_eq!(x.max(0, false).unwrap().shape(), &[0]);
}

#[test]
fn reducing_one_axis_twice_is_an_error() {
    let a = Arena::host();
    let x = t(&a, &[2, 3], &[1., 2., 3., 4., 5., 6.]);
    for axes in [vec![0, 0], vec![1, -1], vec![0, 1, 0]] {
        for mean in [false, true] {
            let r = if mean { x.mean(&axes, false) } else { x.sum(&axes, false) };
            let e = err_text(r.unwrap_err());
            assert!(
                e.contains(if mean { "mean" } else { "sum" }) && e.contains("twice") && e.contains("[2, 3]"),
                "{e}"
            );
        }
    }
    assert_eq!(x.sum(&[0, 1], false).unwrap().item().unwrap(), 21.0);
}
