//! Shared test helpers: finite-difference gradient checks.
#![allow(dead_code)]

use headroom::autograd::{backward, no_grad};
use headroom::rng::Rng;
use headroom::{Arena, DType, Result, Tag, Tensor};

/// Tolerances per dtype: |analytic − numeric| ≤ atol + rtol·|numeric|.
pub fn tolerance(dtype: DType) -> (f32, f32) {
    match dtype {
        DType::F32 => (2e-3, 2e-2),
        DType::F16 => (2e-2, 5e-2),
        _ => (6e-2, 1e-1),
    }
}

/// Round values to what `dtype` can hold, so both paths see the same points.
pub fn quantize(v: &[f32], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F16 => v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
        DType::BF16 => v.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect(),
        _ => v.to_vec(),
    }
}

/// Random values in [-1, 1) kept at least `gap` away from 0 (kinks of relu, abs).
pub fn values(rng: &mut Rng, n: usize, gap: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let v = rng.uniform() * 2.0 - 1.0;
            if v.abs() < gap {
                v.signum() * gap + v
            } else {
                v
            }
        })
        .collect()
}

/// Check the gradients of `f` with respect to the inputs marked in `grad`.
/// The loss is Σ f(x) ∘ w for a fixed random `w`, so every output element
/// matters. The analytic gradient runs in `dtype`; the numeric one by
/// central differences in f32 at the same (rounded) points.
pub fn gradcheck(
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[(Vec<usize>, Vec<f32>)],
    grad: &[bool],
    dtype: DType,
) -> std::result::Result<(), String> {
    let arena = Arena::host();
    let mut rng = Rng::new(1234);
    let inputs: Vec<(Vec<usize>, Vec<f32>)> = inputs.iter().map(|(s, v)| (s.clone(), quantize(v, dtype))).collect();
    let make = |dt: DType, vals: &[(Vec<usize>, Vec<f32>)], track: bool| -> Vec<Tensor> {
        vals.iter()
            .zip(grad)
            .map(|((s, v), &g)| {
                let t = Tensor::from_f32(&arena, s, v, dt, Tag::Data).unwrap();
                if g && track {
                    t.requires_grad()
                } else {
                    t
                }
            })
            .collect()
    };
    let out_shape = {
        let _g = no_grad();
        f(&make(DType::F32, &inputs, false)).map_err(|e| e.to_string())?.shape().to_vec()
    };
    let n_out: usize = out_shape.iter().product();
    let w: Vec<f32> = quantize(&(0..n_out).map(|_| rng.uniform() * 2.0 - 1.0).collect::<Vec<_>>(), dtype);
    // Numeric loss in f32 (inputs already rounded to `dtype`).
    let loss_at = |vals: &[(Vec<usize>, Vec<f32>)]| -> f64 {
        let _g = no_grad();
        let out = f(&make(DType::F32, vals, false)).unwrap().to_vec_f32().unwrap();
        out.iter().zip(&w).map(|(&o, &w)| o as f64 * w as f64).sum()
    };
    // Analytic gradients in `dtype`.
    let xs = make(dtype, &inputs, true);
    let out = f(&xs).map_err(|e| e.to_string())?;
    let wt = Tensor::from_f32(&arena, &out_shape, &w, dtype, Tag::Data).unwrap();
    let loss = out.mul(&wt).map_err(|e| e.to_string())?.sum_all().map_err(|e| e.to_string())?;
    backward(&loss).map_err(|e| e.to_string())?;
    let (atol, rtol) = tolerance(dtype);
    let eps = 1e-2f32;
    for (i, x) in xs.iter().enumerate() {
        if !grad[i] {
            continue;
        }
        let g = x.grad().ok_or(format!("input {i} got no gradient"))?.to_vec_f32().unwrap();
        for j in 0..inputs[i].1.len() {
            let mut plus = inputs.clone();
            plus[i].1[j] += eps;
            let mut minus = inputs.clone();
            minus[i].1[j] -= eps;
            let num = ((loss_at(&plus) - loss_at(&minus)) / (2.0 * eps as f64)) as f32;
            if !approx::abs_diff_eq!(g[j], num, epsilon = atol + rtol * num.abs()) {
                return Err(format!("{dtype}: d loss / d input{i}[{j}]: analytic {} vs numeric {num}", g[j]));
            }
        }
    }
    Ok(())
}

/// Run `gradcheck` for f32, f16 and bf16.
pub fn gradcheck_all(f: impl Fn(&[Tensor]) -> Result<Tensor>, inputs: &[(Vec<usize>, Vec<f32>)], grad: &[bool]) {
    for dt in [DType::F32, DType::F16, DType::BF16] {
        if let Err(e) = gradcheck(&f, inputs, grad, dt) {
            panic!("{e}");
        }
    }
}

/// Shape and random values.
pub fn input(rng: &mut Rng, shape: &[usize]) -> (Vec<usize>, Vec<f32>) {
    let n = shape.iter().product();
    (shape.to_vec(), values(rng, n, 0.05))
}
