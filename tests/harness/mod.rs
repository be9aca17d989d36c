//! What the kernel-on-the-harness tests share: the emulator (built once per
//! test binary), both thread orders, device pointers of host tensors, and
//! the pointwise tolerance with its comparison.
#![allow(dead_code)]

use headroom::cuda::emulator::{Emulator, Order};
use headroom::{DType, Tensor};
use std::sync::OnceLock;
use std::time::Instant;

pub const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

pub fn emulator() -> &'static Emulator {
    static E: OnceLock<Emulator> = OnceLock::new();
    E.get_or_init(|| {
        let t = Instant::now();
        let e = Emulator::new().expect("build the kernel harness");
        println!("harness library ready in {:.1} s", t.elapsed().as_secs_f64());
        e
    })
}

/// The harness in both thread orders.
pub fn both() -> [Emulator; 2] {
    [emulator().with_order(Order::Forward), emulator().with_order(Order::Reverse)]
}

/// (atol, rtol) for a pointwise result stored as `dtype`: both sides compute
/// in f32 and round once, so they differ by a few f32 ulp or one rounding
/// step of the storage type.
pub fn tol(dtype: DType) -> (f32, f32) {
    match dtype {
        DType::F32 => (1e-6, 1e-5),
        DType::F16 => (1e-4, 2e-3),
        _ => (1e-3, 1.6e-2),
    }
}

/// Address of a tensor's first element: the harness's "device pointer".
pub fn ptr(t: &Tensor) -> u64 {
    t.storage().block().as_ptr() as u64 + (t.offset() * t.dtype().size()) as u64
}

/// |got − want| ≤ atol + rtol·|want| everywhere (NaN matches NaN).
pub fn close(what: &str, got: &[f32], want: &[f32], (atol, rtol): (f32, f32)) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let bad: Vec<usize> = (0..got.len())
        .filter(|&i| {
            let (g, w) = (got[i], want[i]);
            !((g - w).abs() <= atol + rtol * w.abs() || (g.is_nan() && w.is_nan()) || g == w)
        })
        .collect();
    if let Some(&i) = bad.first() {
        panic!("{what}: {} of {} differ; first at {i}: got {} want {}", bad.len(), got.len(), got[i], want[i]);
    }
}
