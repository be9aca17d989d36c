//! The CUDA kernels run on the CPU harness (kernels/harness/) and compared
//! with the CPU backend's ops on the host arena: every kernel family, all
//! three storage dtypes, sizes that are not multiples of the block, rows
//! longer than a block, strided and broadcast inputs, and both thread orders.
//! Plus the harness's own guarantees: a missing __syncthreads gives wrong
//! results, a deadlock is reported, bad launches are errors.
//!
//! Tolerances (|got − want| ≤ atol + rtol·|want|): both sides compute in f32
//! and round once to the storage type, so elementwise results differ only by
//! libm vs CUDA-math last bits (f32) or one rounding step of the storage type
//! (2 ulp of f16 / bf16). Sums differ by summation order: a tree in f32 on
//! the kernel, f64 in order on the CPU.

mod harness;
use harness::{both, close, emulator, ptr, tol, DTYPES};
use headroom::autograd::backward_with;
use headroom::cuda::emulator::{Emulator, Order};
use headroom::cuda::kernels::{self as k, BinaryOp, Strided, UnaryOp};
use headroom::rng::Rng;
use headroom::{Arena, DType, Tag, Tensor};
use std::time::Instant;

fn values(rng: &mut Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| lo + (hi - lo) * rng.uniform()).collect()
}

fn tensor(arena: &Arena, shape: &[usize], v: &[f32], dtype: DType) -> Tensor {
    Tensor::from_f32(arena, shape, v, dtype, Tag::Data).unwrap()
}

fn zeros(arena: &Arena, shape: &[usize], dtype: DType) -> Tensor {
    Tensor::zeros(arena, shape, dtype, Tag::Data).unwrap()
}

#[test]
fn harness_registers_every_kernel_in_the_launch_table() {
    let mut names: Vec<&str> = emulator().kernels().iter().map(|s| s.as_str()).collect();
    let mut table: Vec<&str> = k::LAUNCH.iter().map(|s| s.kernel).collect();
    names.sort();
    table.sort();
    assert_eq!(names, table);
}

#[test]
fn binary_ops_dense_strided_broadcast_match_the_cpu() {
    let arena = Arena::host();
    let mut rng = Rng::new(1);
    let ops = [(BinaryOp::Add, "add"), (BinaryOp::Sub, "sub"), (BinaryOp::Mul, "mul"), (BinaryOp::Div, "div")];
    for dtype in DTYPES {
        // Dense, odd count (tail) and more than one block of pairs.
        let a = tensor(&arena, &[7, 191], &values(&mut rng, 7 * 191, -2.0, 2.0), dtype);
        let b = tensor(&arena, &[7, 191], &values(&mut rng, 7 * 191, 0.5, 2.0), dtype);
        // Strided: a transposed view against a broadcast row.
        let at = tensor(&arena, &[33, 9], &values(&mut rng, 33 * 9, -2.0, 2.0), dtype).transpose(0, 1).unwrap();
        let row = tensor(&arena, &[1, 33], &values(&mut rng, 33, 0.5, 2.0), dtype);
        // Broadcast on both sides, rank 3: [5,1,7] op [3,1] -> [5,3,7].
        let c = tensor(&arena, &[5, 1, 7], &values(&mut rng, 35, -2.0, 2.0), dtype);
        let d = tensor(&arena, &[3, 1], &values(&mut rng, 3, 0.5, 2.0), dtype);
        // Dense but at an odd element offset: the kernel's unpaired path.
        let long = tensor(&arena, &[1001], &values(&mut rng, 1001, -2.0, 2.0), dtype);
        let (e, f) = (long.slice(0, 1, 1001).unwrap(), long.slice(0, 0, 1000).unwrap().add_scalar(3.0).unwrap());
        for (op, name) in ops {
            for (x, y) in [(&a, &b), (&at, &row), (&c, &d), (&e, &f)] {
                let want = match op {
                    BinaryOp::Add => x.add(y),
                    BinaryOp::Sub => x.sub(y),
                    BinaryOp::Mul => x.mul(y),
                    BinaryOp::Div => x.div(y),
                }
                .unwrap();
                let shape = want.shape().to_vec();
                let (sx, sy) = (x.broadcast_strides(&shape), y.broadcast_strides(&shape));
                for emu in both() {
                    let out = zeros(&arena, &shape, dtype);
                    let l = k::binary(
                        op,
                        dtype,
                        &shape,
                        Strided { ptr: ptr(x), strides: &sx },
                        Strided { ptr: ptr(y), strides: &sy },
                        ptr(&out),
                    )
                    .unwrap();
                    emu.run(&l).unwrap();
                    let what = format!(
                        "{name} {dtype} {:?} op {:?} via {} ({:?})",
                        x.shape(),
                        y.shape(),
                        l.kernel,
                        emu.order()
                    );
                    close(&what, &out.to_vec_f32().unwrap(), &want.to_vec_f32().unwrap(), tol(dtype));
                }
            }
        }
    }
}

fn cpu_unary(op: UnaryOp, x: &Tensor) -> Tensor {
    match op {
        UnaryOp::Neg => x.neg(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.log(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Relu => x.relu(),
        UnaryOp::Gelu => x.gelu(),
        UnaryOp::Silu => x.silu(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sigmoid => x.sigmoid(),
    }
    .unwrap()
}

fn unary_inputs(op: UnaryOp, rng: &mut Rng, n: usize) -> Vec<f32> {
    match op {
        UnaryOp::Log | UnaryOp::Sqrt => values(rng, n, 0.05, 4.0),
        // Away from relu's kink, where the derivative jumps.
        _ => values(rng, n, -3.0, 3.0).into_iter().map(|v| if v.abs() < 0.01 { 0.5 } else { v }).collect(),
    }
}

#[test]
fn unary_ops_forward_and_backward_match_the_cpu() {
    let arena = Arena::host();
    let mut rng = Rng::new(2);
    // 1237: odd and > 2 blocks of 256 pairs; 1 and 3: tails only.
    for n in [1237usize, 3, 1] {
        for dtype in DTYPES {
            for op in UnaryOp::ALL {
                let xv = unary_inputs(op, &mut rng, n);
                let x = tensor(&arena, &[n], &xv, dtype).requires_grad();
                let y = cpu_unary(op, &x);
                let g = tensor(&arena, &[n], &values(&mut rng, n, -1.0, 1.0), dtype);
                backward_with(&y, g.clone()).unwrap();
                let dx_want = x.grad().unwrap().to_vec_f32().unwrap();
                let v = if op.grad_takes_output() { &y } else { &x };
                for emu in both() {
                    let what = format!("{op:?} {dtype} n={n} ({:?})", emu.order());
                    let out = zeros(&arena, &[n], dtype);
                    emu.run(&k::unary(op, dtype, ptr(&x), ptr(&out), n).unwrap()).unwrap();
                    close(&what, &out.to_vec_f32().unwrap(), &y.to_vec_f32().unwrap(), tol(dtype));
                    let dx = zeros(&arena, &[n], dtype);
                    emu.run(&k::unary_grad(op, dtype, ptr(v), ptr(&g), ptr(&dx), n).unwrap()).unwrap();
                    close(&format!("{what} backward"), &dx.to_vec_f32().unwrap(), &dx_want, tol(dtype));
                }
            }
        }
    }
}

#[test]
fn casts_and_scale_match_the_cpu() {
    let arena = Arena::host();
    let mut rng = Rng::new(3);
    let n = 777;
    for from in DTYPES {
        let x = tensor(&arena, &[n], &values(&mut rng, n, -70000.0, 70000.0), from);
        for to in DTYPES.into_iter().filter(|&t| t != from) {
            let want = x.to_dtype(to).unwrap().to_vec_f32().unwrap();
            for emu in both() {
                let y = zeros(&arena, &[n], to);
                emu.run(&k::cast(from, to, ptr(&x), ptr(&y), n).unwrap()).unwrap();
                // Conversions are exact roundings: no tolerance (inf where f16 overflows).
                assert_eq!(y.to_vec_f32().unwrap(), want, "cast {from} -> {to} ({:?})", emu.order());
            }
        }
        let small = tensor(&arena, &[n], &values(&mut rng, n, -2.0, 2.0), from);
        let want = small.mul_scalar(0.37).unwrap().to_vec_f32().unwrap();
        for emu in both() {
            let x = small.copy().unwrap();
            emu.run(&k::scale(from, ptr(&x), n, 0.37).unwrap()).unwrap();
            assert_eq!(x.to_vec_f32().unwrap(), want, "scale {from} ({:?})", emu.order());
        }
    }
}

/// Row shapes: one element, short rows, exactly one block, one more than a
/// block, several blocks' worth, and (softmax) longer than the shared-memory
/// row cache (8192).
const ROWS: &[(usize, usize)] = &[(1, 1), (3, 5), (2, 256), (2, 257), (3, 1000), (1, 3001)];

#[test]
fn row_sums_match_the_cpu() {
    let arena = Arena::host();
    let mut rng = Rng::new(4);
    for &(rows, cols) in ROWS {
        for dtype in DTYPES {
            let x = tensor(&arena, &[rows, cols], &values(&mut rng, rows * cols, -1.0, 1.0), dtype);
            let sum = x.sum(&[-1], false).unwrap().to_vec_f32().unwrap();
            let mean = x.mean(&[-1], false).unwrap().to_vec_f32().unwrap();
            // f32: summation order, ~1e-7 · cols; half types: one rounding of the result.
            let t = match dtype {
                DType::F32 => (1e-5 + 1e-7 * cols as f32, 1e-5),
                _ => tol(dtype),
            };
            for emu in both() {
                for (scale, want, what) in [(1.0, &sum, "sum"), (1.0 / cols as f32, &mean, "mean")] {
                    let out = zeros(&arena, &[rows], dtype);
                    emu.run(&k::sum_last(dtype, ptr(&x), ptr(&out), rows, cols, scale).unwrap()).unwrap();
                    close(
                        &format!("{what} {dtype} [{rows}, {cols}] ({:?})", emu.order()),
                        &out.to_vec_f32().unwrap(),
                        want,
                        t,
                    );
                }
            }
        }
    }
}

#[test]
fn softmax_and_log_softmax_forward_and_backward_match_the_cpu() {
    let arena = Arena::host();
    let mut rng = Rng::new(5);
    let shapes: Vec<(usize, usize)> = ROWS.iter().copied().chain([(1, 9000)]).collect();
    for &(rows, cols) in &shapes {
        for dtype in DTYPES {
            for log in [false, true] {
                let x = tensor(&arena, &[rows, cols], &values(&mut rng, rows * cols, -4.0, 4.0), dtype).requires_grad();
                let y = if log { x.log_softmax(-1) } else { x.softmax(-1) }.unwrap();
                let dy = tensor(&arena, &[rows, cols], &values(&mut rng, rows * cols, -1.0, 1.0), dtype);
                backward_with(&y, dy.clone()).unwrap();
                let dx_want = x.grad().unwrap().to_vec_f32().unwrap();
                let name = if log { "log_softmax" } else { "softmax" };
                // The backward sums a row first: its error grows with the row.
                let (atol, rtol) = tol(dtype);
                let tb = (atol + 1e-7 * cols as f32, rtol);
                for emu in both() {
                    let what = format!("{name} {dtype} [{rows}, {cols}] ({:?})", emu.order());
                    let out = zeros(&arena, &[rows, cols], dtype);
                    let l = k::softmax(log, dtype, ptr(&x), ptr(&out), rows, cols).unwrap();
                    assert_eq!(l.smem, if cols <= 8192 { 4 * cols as u32 } else { 0 }, "{what}: row cache");
                    emu.run(&l).unwrap();
                    close(&what, &out.to_vec_f32().unwrap(), &y.to_vec_f32().unwrap(), tol(dtype));
                    let dx = zeros(&arena, &[rows, cols], dtype);
                    emu.run(&k::softmax_grad(log, dtype, ptr(&y), ptr(&dy), ptr(&dx), rows, cols).unwrap()).unwrap();
                    close(&format!("{what} backward"), &dx.to_vec_f32().unwrap(), &dx_want, tb);
                }
            }
        }
    }
}

/// The sources with `from` replaced by `to` in `file` (exactly once).
fn edited(file: &str, from: &str, to: &str) -> Vec<(&'static str, String)> {
    headroom::kernels::SOURCES
        .iter()
        .map(|&(n, t)| {
            if n == file {
                assert_eq!(t.matches(from).count(), 1, "{from:?} must occur once in {file}");
                (n, t.replacen(from, to, 1))
            } else {
                (n, t.to_string())
            }
        })
        .collect()
}

fn borrow<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(n, t)| (*n, t.as_str())).collect()
}

#[test]
fn a_missing_syncthreads_makes_the_results_wrong() {
    // The block reduction's first barrier: warp partials are written to shared
    // memory, then read by every warp. Without it, warps read stale partials.
    let src = edited("common.cuh", "__syncthreads();  // partials written", "/* barrier removed */");
    let broken = Emulator::from_sources(&borrow(&src)).unwrap();
    assert_ne!(broken.path(), emulator().path(), "the broken variant is a separate library");
    let arena = Arena::host();
    let mut rng = Rng::new(6);
    let (rows, cols) = (4, 1000);
    let x = tensor(&arena, &[rows, cols], &values(&mut rng, rows * cols, 0.0, 1.0), DType::F32);
    let want = x.sum(&[-1], false).unwrap().to_vec_f32().unwrap();
    for order in [Order::Forward, Order::Reverse] {
        let emu = broken.with_order(order);
        let out = zeros(&arena, &[rows], DType::F32);
        emu.run(&k::sum_last(DType::F32, ptr(&x), ptr(&out), rows, cols, 1.0).unwrap()).unwrap();
        let got = out.to_vec_f32().unwrap();
        let wrong = got.iter().zip(&want).filter(|(g, w)| (*g - *w).abs() > 1e-3 * w.abs()).count();
        println!("without the barrier, {order:?}: {wrong} of {rows} row sums wrong (got {got:?}, want {want:?})");
        // Forward order runs warp 0 before the other warps have written their
        // partials: every row sum misses them.
        if order == Order::Forward {
            assert_eq!(wrong, rows, "the harness did not catch the missing __syncthreads");
        }
    }
    // And the same launch on the intact harness is right.
    let out = zeros(&arena, &[rows], DType::F32);
    emulator().run(&k::sum_last(DType::F32, ptr(&x), ptr(&out), rows, cols, 1.0).unwrap()).unwrap();
    close("intact sum", &out.to_vec_f32().unwrap(), &want, (1e-4, 1e-5));
}

const HARNESS_TESTS: &str = r#"#include "common.cuh"
// Lanes 0-15 wait at a barrier while lanes 16-31 wait for them in a shuffle.
extern "C" __global__ void hr_test_deadlock(float* x) {
    float v = x[threadIdx.x];
    if ((threadIdx.x & 31) < 16) __syncthreads();
    else v = __shfl_xor_sync(0xffffffffu, v, 1);
    x[threadIdx.x] = v;
}
// Lane 0 shuffles with a mask naming lanes that already left.
extern "C" __global__ void hr_test_exited_lane(float* x) {
    if (threadIdx.x == 0) x[0] = __shfl_sync(0x3u, x[0], 1);
}
// Every warp primitive once; eight results per thread.
extern "C" __global__ void hr_test_warp(int* out, float* count, int* top) {
    int t = threadIdx.x + blockIdx.x * blockDim.x, lane = threadIdx.x & 31;
    int* o = out + t * 8;
    o[0] = __shfl_sync(0xffffffffu, t, 5);
    o[1] = __shfl_up_sync(0xffffffffu, t, 2);
    o[2] = __shfl_down_sync(0xffffffffu, t, 3, 8);
    o[3] = __shfl_xor_sync(0xffffffffu, t, 1);
    o[4] = (int)__ballot_sync(0xffffffffu, lane % 3 == 0);
    o[5] = __any_sync(0xffffffffu, threadIdx.x == 40);
    o[6] = __all_sync(0xffffffffu, lane < 31);
    __syncwarp();
    o[7] = lane < 16 ? __shfl_sync(0x0000ffffu, t, 0, 16) : -1;
    atomicAdd(count, 1.0f);
    atomicMax(top, t);
}
"#;

#[test]
fn warp_primitives_and_atomics_follow_cuda_semantics() {
    let mut src: Vec<(&str, &str)> = headroom::kernels::SOURCES.to_vec();
    src.push(("harness_tests.cu", HARNESS_TESTS));
    let emu = Emulator::from_sources(&src).unwrap();
    let (blocks, threads) = (2usize, 64usize);
    let mut want = vec![];
    for t in 0..blocks * threads {
        let (lane, warp_base) = ((t % 32) as i32, (t - t % 32) as i32);
        let t = t as i32;
        let ballot = (0..32).filter(|l| l % 3 == 0).fold(0u32, |b, l| b | 1 << l) as i32;
        want.extend([
            warp_base + 5,
            if lane < 2 { t } else { t - 2 },
            if lane % 8 + 3 >= 8 { t } else { t + 3 },
            t ^ 1,
            ballot,
            ((t as usize % threads) / 32 == 1) as i32,
            0,
            if lane < 16 { warp_base } else { -1 },
        ]);
    }
    for order in [Order::Forward, Order::Reverse] {
        let mut out = vec![0i32; blocks * threads * 8];
        let (mut count, mut top) = (0.0f32, -1i32);
        let args = [
            k::KernelArg::Ptr(out.as_mut_ptr() as u64),
            k::KernelArg::Ptr(&mut count as *mut f32 as u64),
            k::KernelArg::Ptr(&mut top as *mut i32 as u64),
        ];
        emu.with_order(order).launch("hr_test_warp", [blocks as u32, 1, 1], [threads as u32, 1, 1], 0, &args).unwrap();
        for t in 0..blocks * threads {
            assert_eq!(out[t * 8..t * 8 + 8], want[t * 8..t * 8 + 8], "thread {t} ({order:?})");
        }
        assert_eq!((count, top), ((blocks * threads) as f32, (blocks * threads - 1) as i32), "{order:?}");
    }
}

#[test]
fn deadlocks_and_bad_launches_are_reported_not_hung() {
    let mut src: Vec<(&str, &str)> = headroom::kernels::SOURCES.to_vec();
    src.push(("harness_tests.cu", HARNESS_TESTS));
    let emu = Emulator::from_sources(&src).unwrap();
    let mut x = vec![1.0f32; 64];
    let p = k::KernelArg::Ptr(x.as_mut_ptr() as u64);
    let e = emu.launch("hr_test_deadlock", [2, 1, 1], [64, 1, 1], 0, &[p]).unwrap_err().to_string();
    println!("{e}");
    assert!(e.contains("hr_test_deadlock") && e.contains("block (0,0,0)") && e.contains("deadlock"), "{e}");
    assert!(e.contains("threads 0-15 wait at __syncthreads (harness_tests.cu:5)"), "{e}");
    assert!(e.contains("threads 16-31 wait at __shfl_xor_sync mask 0xffffffff (harness_tests.cu:6)"), "{e}");
    let e = emu.launch("hr_test_exited_lane", [1, 1, 1], [32, 1, 1], 0, &[p]).unwrap_err().to_string();
    assert!(e.contains("lane 1") && e.contains("exited"), "{e}");
    // Wrong arguments, unknown kernels and impossible shapes are errors too.
    let e = emulator().launch("sum_last_f32", [1, 1, 1], [256, 1, 1], 0, &[p]).unwrap_err().to_string();
    assert!(e.contains("sum_last_f32") && e.contains("takes 4 arguments"), "{e}");
    let e = emulator().launch("no_such_kernel", [1, 1, 1], [32, 1, 1], 0, &[]).unwrap_err().to_string();
    assert!(e.contains("no_such_kernel"), "{e}");
    let args = [p, p, k::KernelArg::I64(1), k::KernelArg::F32(1.0)];
    let e = emulator().launch("sum_last_f32", [1, 1, 1], [2048, 1, 1], 0, &args).unwrap_err().to_string();
    assert!(e.contains("2048 threads"), "{e}");
}

#[test]
fn emulator_timings() {
    // Figures for the report: the harness's cost per launch.
    let arena = Arena::host();
    let mut rng = Rng::new(7);
    for (kernel, rows, cols) in [("sum_last", 64, 1000), ("softmax", 64, 1000), ("unary gelu", 1, 65536)] {
        let x = tensor(&arena, &[rows, cols], &values(&mut rng, rows * cols, -1.0, 1.0), DType::F16);
        let out = zeros(&arena, &[rows, cols], DType::F16);
        let l = match kernel {
            "sum_last" => k::sum_last(DType::F16, ptr(&x), ptr(&out), rows, cols, 1.0),
            "softmax" => k::softmax(false, DType::F16, ptr(&x), ptr(&out), rows, cols),
            _ => k::unary(UnaryOp::Gelu, DType::F16, ptr(&x), ptr(&out), rows * cols),
        }
        .unwrap();
        let t = Instant::now();
        emulator().run(&l).unwrap();
        let threads = l.grid[0] * l.block[0];
        let s = t.elapsed().as_secs_f64();
        println!(
            "emulator: {kernel} f16 [{rows}, {cols}]: {} blocks × {} threads in {:.1} ms ({:.2} µs per thread)",
            l.grid[0],
            l.block[0],
            s * 1e3,
            s * 1e6 / threads as f64
        );
    }
}
