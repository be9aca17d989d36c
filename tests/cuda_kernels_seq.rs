//! The sequence and vision kernels (kernels/lstm.cu, ctc.cu, pool.cu,
//! conv.cu) run on the CPU harness and compared with the CPU backend: the
//! kernels of src/cpu/ directly (the LSTM cell, CTC's per-sample nll, the
//! pools, im2col/col2im tiles) and the ops (CTC loss and gradient, a whole
//! conv2d forward and backward chained from the tile kernels with the GEMMs
//! done on the host, as the backend will do them with cuBLAS). All three
//! storage dtypes, both thread orders, sizes that are not multiples of the
//! block, workspaces poisoned with NaN.
//!
//! Tolerances (|got − want| ≤ atol + rtol·|want|), sized for a real GPU
//! (CUDA's expf/tanhf/log1pf, FMA contraction); on the harness, which uses
//! glibc's libm and no FMA, every pointwise, pool and CTC result here comes
//! out bit-identical to the CPU's:
//! - exact: max pool values and argmax, im2col (copies), col2im (the same
//!   f32 additions in the same order as the CPU);
//! - pointwise (LSTM cell, average pool, pool gradients): both sides compute
//!   in f32 from the same stored inputs and round once: f32 (1e-6, 1e-5),
//!   f16 (1e-4, 2e-3), bf16 (1e-3, 1.6e-2), i.e. about one rounding step;
//! - CTC: nll (1e-5, 1e-5) (the same log-space recursions in f32); the
//!   loss as pointwise but rtol ≥ 1e-5 (an f32 tree mean against the CPU's
//!   f64); the gradient as pointwise but atol ≥ 1e-6, rtol ≥ 1e-4;
//! - conv chains and the bias gradient: the GEMM (a plain f32 loop here,
//!   matrixmultiply on the CPU) and the sums run in other orders: f32
//!   (1e-5, 1e-5) with atol 1e-4 for dW (a sum of B·P = 312 products),
//!   half types as pointwise. Measured on the harness: at most 4.8e-7
//!   (forward), 3.6e-7 (dX), 1.9e-6 (dW, bias) absolute.

mod harness;
use harness::{both, close, emulator, ptr, tol, DTYPES};
use headroom::alloc::TraceKind;
use headroom::autograd::backward_with;
use headroom::cpu::conv::{self as cc, Geom, Pass, QUANTUM};
use headroom::cpu::ctc::{self as cctc, Problem};
use headroom::cpu::lstm::{self as clstm, Biases};
use headroom::cpu::pool::{self as cpool, PoolGeom};
use headroom::cuda::kernels::{self as k, CtcBuffers, CtcShape, LstmCell, LstmCellGrad, Mat};
use headroom::rng::Rng;
use headroom::with_float;
use headroom::{Arena, DType, Result, Tag, Tensor};
use std::time::Instant;

/// Bit-for-bit equality (NaN equal to NaN).
fn same(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    if let Some(i) =
        (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits() && !(got[i].is_nan() && want[i].is_nan()))
    {
        panic!("{what}: first difference at {i}: got {} want {}", got[i], want[i]);
    }
}

fn values(rng: &mut Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| lo + (hi - lo) * rng.uniform()).collect()
}

fn tensor(arena: &Arena, shape: &[usize], v: &[f32], dtype: DType) -> Tensor {
    Tensor::from_f32(arena, shape, v, dtype, Tag::Data).unwrap()
}

fn zeros(arena: &Arena, shape: &[usize], dtype: DType) -> Tensor {
    Tensor::zeros(arena, shape, dtype, Tag::Data).unwrap()
}

/// A workspace of `n` f32 full of NaN: a kernel reading what it did not write shows.
fn poisoned(arena: &Arena, n: usize) -> Tensor {
    tensor(arena, &[n], &vec![f32::NAN; n], DType::F32)
}

fn ints(arena: &Arena, v: &[i32]) -> Tensor {
    Tensor::from_slice(arena, &[v.len()], v, Tag::Data).unwrap()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_vec_f32().unwrap()
}

// ---- LSTM cell ---------------------------------------------------------------------

#[test]
fn lstm_cell_forward_and_backward_match_the_cpu() -> Result<()> {
    let arena = Arena::host();
    let mut rng = Rng::new(11);
    // [B, H] not a multiple of the block (111, 350 > 256, 1), and every
    // optional input present or absent somewhere.
    let cases = [(3, 37, true, true, true), (5, 70, false, true, false), (1, 1, true, false, true)];
    for (batch, hidden, with_gh, with_bias, with_dc) in cases {
        let (n4, n) = (batch * 4 * hidden, batch * hidden);
        for dtype in DTYPES {
            let xw = tensor(&arena, &[batch, 4 * hidden], &values(&mut rng, n4, -3.0, 3.0), dtype);
            let ghv = if with_gh { values(&mut rng, n4, -2.0, 2.0) } else { vec![0.0; n4] };
            let gh = tensor(&arena, &[batch, 4 * hidden], &ghv, dtype);
            let b_ih = tensor(&arena, &[4 * hidden], &values(&mut rng, 4 * hidden, -1.0, 1.0), dtype);
            let b_hh = tensor(&arena, &[4 * hidden], &values(&mut rng, 4 * hidden, -1.0, 1.0), dtype);
            let c = tensor(&arena, &[batch, hidden], &values(&mut rng, n, -2.0, 2.0), dtype);
            let dh = tensor(&arena, &[batch, hidden], &values(&mut rng, n, -1.0, 1.0), dtype);
            let dc = tensor(&arena, &[batch, hidden], &values(&mut rng, n, -1.0, 1.0), dtype);
            // The CPU kernels: forward, then backward from its gates.
            let (gates, h_out, c_out) =
                (xw.copy()?, zeros(&arena, &[batch, hidden], dtype), zeros(&arena, &[batch, hidden], dtype));
            let (dgates, dc_prev) =
                (zeros(&arena, &[batch, 4 * hidden], dtype), zeros(&arena, &[batch, hidden], dtype));
            with_float!("lstm", dtype, |T| {
                let (ih, hh) = (b_ih.data::<T>()?, b_hh.data::<T>()?);
                clstm::forward::<T>(
                    gates.data_mut::<T>()?,
                    gh.data::<T>()?,
                    Biases { ih: with_bias.then_some(ih), hh: with_bias.then_some(hh) },
                    c.data::<T>()?,
                    hidden,
                    h_out.data_mut::<T>()?,
                    c_out.data_mut::<T>()?,
                );
                clstm::backward::<T>(
                    gates.data::<T>()?,
                    c.data::<T>()?,
                    Some(dh.data::<T>()?),
                    if with_dc { Some(dc.data::<T>()?) } else { None },
                    hidden,
                    dgates.data_mut::<T>()?,
                    Some(dc_prev.data_mut::<T>()?),
                )
            });
            let bias = |t: &Tensor| with_bias.then(|| ptr(t));
            for emu in both() {
                let what =
                    format!("lstm_cell {dtype} [{batch}, {hidden}] gh {with_gh} bias {with_bias} ({:?})", emu.order());
                let g = xw.copy()?;
                let (h2, c2) = (zeros(&arena, &[batch, hidden], dtype), zeros(&arena, &[batch, hidden], dtype));
                let bufs = LstmCell {
                    gates: ptr(&g),
                    gh: with_gh.then(|| ptr(&gh)), // absent: the CPU side adds zeros
                    b_ih: bias(&b_ih),
                    b_hh: bias(&b_hh),
                    c: ptr(&c),
                    h_out: ptr(&h2),
                    c_out: ptr(&c2),
                };
                emu.run(&k::lstm_cell(dtype, batch, hidden, &bufs)?)?;
                close(&format!("{what}: gates"), &f32s(&g), &f32s(&gates), tol(dtype));
                close(&format!("{what}: h'"), &f32s(&h2), &f32s(&h_out), tol(dtype));
                close(&format!("{what}: c'"), &f32s(&c2), &f32s(&c_out), tol(dtype));
                let (dg, dcp) = (zeros(&arena, &[batch, 4 * hidden], dtype), zeros(&arena, &[batch, hidden], dtype));
                let bufs = LstmCellGrad {
                    gates: ptr(&gates),
                    c: ptr(&c),
                    dh: Some(ptr(&dh)),
                    dc: with_dc.then(|| ptr(&dc)),
                    dgates: ptr(&dg),
                    dc_prev: Some(ptr(&dcp)),
                };
                emu.run(&k::lstm_cell_grad(dtype, batch, hidden, &bufs)?)?;
                close(&format!("{what}: dgates"), &f32s(&dg), &f32s(&dgates), tol(dtype));
                close(&format!("{what}: dc_prev"), &f32s(&dcp), &f32s(&dc_prev), tol(dtype));
            }
        }
    }
    Ok(())
}

#[test]
fn lstm_cell_matches_the_op_and_its_gradient_needs_no_dc_prev() -> Result<()> {
    // The op end to end (x·W_ihᵀ and h·W_hhᵀ by the CPU matmul, as cuBLAS
    // would give them), and the backward without dh or dc_prev.
    let arena = Arena::host();
    let mut rng = Rng::new(12);
    let (batch, input, hidden) = (4, 6, 9);
    for dtype in DTYPES {
        let t = |shape: &[usize], rng: &mut Rng| {
            tensor(&arena, shape, &values(rng, shape.iter().product(), -1.0, 1.0), dtype)
        };
        let (x, h, c) = (t(&[batch, input], &mut rng), t(&[batch, hidden], &mut rng), t(&[batch, hidden], &mut rng));
        let (w_ih, w_hh) = (t(&[4 * hidden, input], &mut rng), t(&[4 * hidden, hidden], &mut rng));
        let (b_ih, b_hh) = (t(&[4 * hidden], &mut rng), t(&[4 * hidden], &mut rng));
        let (h_want, c_want) = Tensor::lstm_cell(&x, &h, &c, &w_ih, &w_hh, Some(&b_ih), Some(&b_hh))?;
        let gates = x.matmul(&w_ih.transpose(0, 1)?)?.contiguous()?;
        let gh = h.matmul(&w_hh.transpose(0, 1)?)?.contiguous()?;
        let dc = t(&[batch, hidden], &mut rng);
        let (h2, c2) = (zeros(&arena, &[batch, hidden], dtype), zeros(&arena, &[batch, hidden], dtype));
        let bufs = LstmCell {
            gates: ptr(&gates),
            gh: Some(ptr(&gh)),
            b_ih: Some(ptr(&b_ih)),
            b_hh: Some(ptr(&b_hh)),
            c: ptr(&c),
            h_out: ptr(&h2),
            c_out: ptr(&c2),
        };
        emulator().run(&k::lstm_cell(dtype, batch, hidden, &bufs)?)?;
        close(&format!("lstm op {dtype}: h'"), &f32s(&h2), &f32s(&h_want), tol(dtype));
        close(&format!("lstm op {dtype}: c'"), &f32s(&c2), &f32s(&c_want), tol(dtype));
        // Only dc given, no dc_prev wanted.
        let want = zeros(&arena, &[batch, 4 * hidden], dtype);
        with_float!("lstm", dtype, |T| clstm::backward::<T>(
            gates.data::<T>()?,
            c.data::<T>()?,
            None,
            Some(dc.data::<T>()?),
            hidden,
            want.data_mut::<T>()?,
            None
        ));
        let dg = zeros(&arena, &[batch, 4 * hidden], dtype);
        let bufs = LstmCellGrad {
            gates: ptr(&gates),
            c: ptr(&c),
            dh: None,
            dc: Some(ptr(&dc)),
            dgates: ptr(&dg),
            dc_prev: None,
        };
        emulator().run(&k::lstm_cell_grad(dtype, batch, hidden, &bufs)?)?;
        close(&format!("lstm op {dtype}: dgates without dh"), &f32s(&dg), &f32s(&want), tol(dtype));
    }
    Ok(())
}

// ---- CTC -------------------------------------------------------------------------

/// A CTC batch: log_probs `[T, B, C]` (log-softmaxed), padded targets.
struct CtcCase {
    frames: usize,
    classes: usize,
    s_max: usize,
    targets: Vec<Vec<i32>>,
    input_lengths: Vec<usize>,
}

impl CtcCase {
    fn batch(&self) -> usize {
        self.targets.len()
    }
    fn target_lengths(&self) -> Vec<usize> {
        self.targets.iter().map(|t| t.len()).collect()
    }
    fn padded(&self) -> Vec<i32> {
        let mut v = vec![0; self.batch() * self.s_max];
        for (b, t) in self.targets.iter().enumerate() {
            v[b * self.s_max..b * self.s_max + t.len()].copy_from_slice(t);
        }
        v
    }
    fn shape(&self) -> CtcShape {
        CtcShape { frames: self.frames, batch: self.batch(), classes: self.classes, s_max: self.s_max, blank: 0 }
    }
}

/// Small batch: repeated labels (need a blank between), an empty target, an
/// impossible alignment (5 frames for 4 equal labels), an empty input, one frame.
fn small_ctc() -> CtcCase {
    CtcCase {
        frames: 13,
        classes: 7,
        s_max: 5,
        targets: vec![vec![1, 2, 2, 3, 1], vec![4, 5, 6], vec![], vec![3, 3, 3, 3], vec![], vec![2]],
        input_lengths: vec![13, 9, 6, 5, 0, 1],
    }
}

/// Long targets: 2S + 1 = 261 and 201 states, more than a block of 256 threads.
fn long_ctc() -> CtcCase {
    let lab = |n: usize| (0..n).map(|j| 1 + (j % 4) as i32).collect::<Vec<_>>();
    CtcCase { frames: 140, classes: 5, s_max: 130, targets: vec![lab(130), lab(100)], input_lengths: vec![140, 117] }
}

fn run_ctc(case: &CtcCase, dtypes: &[DType], seed: u64) -> Result<()> {
    let arena = Arena::host();
    let mut rng = Rng::new(seed);
    let (frames, batch, classes, s_max) = (case.frames, case.batch(), case.classes, case.s_max);
    let (il, tl) = (case.input_lengths.clone(), case.target_lengths());
    let padded = case.padded();
    let targets = Tensor::from_slice(&arena, &[batch, s_max], &padded, Tag::Data)?;
    let il32: Vec<i32> = il.iter().map(|&v| v as i32).collect();
    let tl32: Vec<i32> = tl.iter().map(|&v| v as i32).collect();
    let (il_d, tl_d) = (ints(&arena, &il32), ints(&arena, &tl32));
    let shape = case.shape();
    let wsz = k::ctc_workspace(&shape);
    for &dtype in dtypes {
        let logits =
            tensor(&arena, &[frames, batch, classes], &values(&mut rng, frames * batch * classes, -2.0, 2.0), dtype);
        let lp = logits.log_softmax(-1)?;
        // Each sample's nll from the CPU kernel.
        let p = Problem {
            frames,
            batch,
            classes,
            targets: &padded,
            s_max,
            input_lengths: &il,
            target_lengths: &tl,
            blank: 0,
        };
        let mut nll_want = vec![0f32; batch];
        let mut ws = vec![0f32; wsz.forward_f32];
        with_float!("ctc", dtype, |T| cctc::forward::<T>(lp.data::<T>()?, &p, &mut nll_want, &mut ws));
        let g = 0.7f32;
        for zero_infinity in [false, true] {
            // Loss and gradient from the op.
            let leaf = lp.copy()?.requires_grad();
            let loss = leaf.ctc_loss(&targets, &il, &tl, 0, zero_infinity)?;
            backward_with(&loss, tensor(&arena, &[], &[g], dtype))?;
            let grad_want = f32s(&leaf.grad().expect("gradient"));
            let nll_z: Vec<f32> =
                nll_want.iter().map(|&v| if zero_infinity && v.is_infinite() { 0.0 } else { v }).collect();
            for emu in both() {
                let what = format!(
                    "ctc {dtype} [{frames}, {batch}, {classes}] S {s_max} zi {zero_infinity} ({:?})",
                    emu.order()
                );
                let nll = poisoned(&arena, batch);
                let bufs = CtcBuffers {
                    log_probs: ptr(&lp),
                    targets: ptr(&targets),
                    input_lengths: ptr(&il_d),
                    target_lengths: ptr(&tl_d),
                    nll: ptr(&nll),
                };
                let ws = poisoned(&arena, wsz.forward_f32);
                emu.run(&k::ctc_forward(dtype, &shape, &bufs, zero_infinity, ptr(&ws))?)?;
                close(&format!("{what}: nll"), &f32s(&nll), &nll_z, (1e-5, 1e-5));
                let out = zeros(&arena, &[], dtype);
                emu.run(&k::ctc_mean(dtype, batch, ptr(&nll), ptr(&tl_d), ptr(&out))?)?;
                let (atol, rtol) = tol(dtype);
                close(&format!("{what}: loss"), &f32s(&out), &f32s(&loss), (atol, rtol.max(1e-5)));
                // Backward from the kernel's own nll, as the backend chains them.
                let gl = tensor(&arena, &[], &[g], dtype);
                let grad = tensor(&arena, &[frames, batch, classes], &vec![f32::NAN; frames * batch * classes], dtype);
                let (ws, chain) = (poisoned(&arena, wsz.backward_f32), ints(&arena, &vec![-7; wsz.backward_i32]));
                emu.run(&k::ctc_backward(dtype, &shape, &bufs, ptr(&gl), ptr(&grad), ptr(&ws), ptr(&chain))?)?;
                close(&format!("{what}: grad"), &f32s(&grad), &grad_want, (atol.max(1e-6), rtol.max(1e-4)));
            }
        }
    }
    Ok(())
}

#[test]
fn ctc_loss_and_gradient_match_the_cpu() -> Result<()> {
    run_ctc(&small_ctc(), &DTYPES, 21)
}

#[test]
fn ctc_with_more_states_than_threads_matches_the_cpu() -> Result<()> {
    run_ctc(&long_ctc(), &[DType::F32, DType::BF16], 22)
}

#[test]
fn ctc_workspace_is_what_the_cpu_op_declares() -> Result<()> {
    // The CPU op's Workspace requests (forward, then backward's two), from
    // the arena's trace, against ctc_workspace.
    for case in [small_ctc(), long_ctc()] {
        let arena = Arena::host();
        let (frames, batch, classes) = (case.frames, case.batch(), case.classes);
        let lp = tensor(
            &arena,
            &[frames, batch, classes],
            &vec![-(classes as f32).ln(); frames * batch * classes],
            DType::F32,
        )
        .requires_grad();
        let targets = Tensor::from_slice(&arena, &[batch, case.s_max], &case.padded(), Tag::Data)?;
        arena.set_tracing(true);
        let loss = lp.ctc_loss(&targets, &case.input_lengths, &case.target_lengths(), 0, true)?;
        backward_with(&loss, tensor(&arena, &[], &[1.0], DType::F32))?;
        let got: Vec<usize> = arena
            .take_trace()
            .iter()
            .filter(|e| e.tag == Some(Tag::Workspace) && e.kind == TraceKind::Alloc)
            .map(|e| e.requested)
            .collect();
        let w = k::ctc_workspace(&case.shape());
        assert_eq!(got, vec![4 * w.forward_f32, 4 * w.backward_f32, 4 * w.backward_i32], "S {}", case.s_max);
    }
    Ok(())
}

// ---- pooling -----------------------------------------------------------------------

/// (input shape [B, C, spatial..], kernel, stride, padding).
type PoolCase = (Vec<usize>, Vec<usize>, Vec<usize>, Vec<usize>);

/// 1-, 2- and 3-d pools.
fn pool_cases() -> Vec<PoolCase> {
    vec![
        (vec![2, 3, 29], vec![4], vec![3], vec![2]),
        (vec![2, 3, 11, 9], vec![3, 2], vec![2, 1], vec![1, 1]),
        (vec![1, 2, 5, 6, 7], vec![2, 3, 3], vec![1, 2, 2], vec![1, 1, 0]),
    ]
}

fn pool_geom(shape: &[usize], kernel: &[usize], stride: &[usize], pad: &[usize]) -> PoolGeom {
    let lift = |v: &[usize], fill: usize| {
        let mut out = [fill; 3];
        out[3 - v.len()..].copy_from_slice(v);
        out
    };
    let sp = &shape[2..];
    let small: Vec<usize> = (0..sp.len()).map(|d| (sp[d] + 2 * pad[d] - kernel[d]) / stride[d] + 1).collect();
    PoolGeom {
        big: lift(sp, 1),
        small: lift(&small, 1),
        k: lift(kernel, 1),
        stride: lift(stride, 1),
        pad: lift(pad, 0),
    }
}

#[test]
fn pools_forward_and_backward_match_the_cpu() -> Result<()> {
    let arena = Arena::host();
    let mut rng = Rng::new(31);
    for (shape, kernel, stride, pad) in pool_cases() {
        let g = pool_geom(&shape, &kernel, &stride, &pad);
        let planes = shape[0] * shape[1];
        let (nx, ny) = (planes * g.big_len(), planes * g.small_len());
        for dtype in DTYPES {
            // Quarter steps in [-2, 2]: ties, so the first-maximum rule counts; one NaN.
            let mut xv: Vec<f32> = values(&mut rng, nx, -2.0, 2.0).iter().map(|v| (v * 4.0).round() / 4.0).collect();
            xv[nx / 3] = f32::NAN;
            let x = tensor(&arena, &[nx], &xv, dtype);
            let dy = tensor(&arena, &[ny], &values(&mut rng, ny, -1.0, 1.0), dtype);
            let (out_w, arg_w, avg_w) =
                (zeros(&arena, &[ny], dtype), zeros(&arena, &[ny], DType::I32), zeros(&arena, &[ny], dtype));
            let (dmax_w, davg_w) = (zeros(&arena, &[nx], dtype), zeros(&arena, &[nx], dtype));
            with_float!("pool", dtype, |T| {
                cpool::max_pool::<T>(x.data::<T>()?, &g, out_w.data_mut::<T>()?, arg_w.data_mut::<i32>()?);
                cpool::max_pool_backward::<T>(dy.data::<T>()?, arg_w.data::<i32>()?, &g, dmax_w.data_mut::<T>()?);
                cpool::avg_pool::<T>(x.data::<T>()?, &g, avg_w.data_mut::<T>()?);
                cpool::avg_pool_backward::<T>(dy.data::<T>()?, &g, davg_w.data_mut::<T>()?)
            });
            for emu in both() {
                let what = format!("pool {dtype} {shape:?} k {kernel:?} s {stride:?} p {pad:?} ({:?})", emu.order());
                let (out, arg) = (zeros(&arena, &[ny], dtype), zeros(&arena, &[ny], DType::I32));
                emu.run(&k::max_pool(dtype, &g, planes, ptr(&x), ptr(&out), ptr(&arg))?)?;
                same(&format!("{what}: max"), &f32s(&out), &f32s(&out_w));
                assert_eq!(arg.to_vec::<i32>()?, arg_w.to_vec::<i32>()?, "{what}: argmax");
                let dx = zeros(&arena, &[nx], dtype);
                emu.run(&k::max_pool_grad(dtype, &g, planes, ptr(&dy), ptr(&arg), ptr(&dx))?)?;
                close(&format!("{what}: max backward"), &f32s(&dx), &f32s(&dmax_w), tol(dtype));
                let avg = zeros(&arena, &[ny], dtype);
                emu.run(&k::avg_pool(dtype, &g, planes, ptr(&x), ptr(&avg))?)?;
                close(&format!("{what}: avg"), &f32s(&avg), &f32s(&avg_w), tol(dtype));
                let dx = zeros(&arena, &[nx], dtype);
                emu.run(&k::avg_pool_grad(dtype, &g, planes, ptr(&dy), ptr(&dx))?)?;
                close(&format!("{what}: avg backward"), &f32s(&dx), &f32s(&davg_w), tol(dtype));
            }
        }
    }
    Ok(())
}

// ---- convolution tiles -------------------------------------------------------------

/// 1-, 2- and 3-d geometries with stride, padding and dilation.
fn conv_geoms() -> Vec<Geom> {
    let geom = |c, big: [usize; 3], o, k: [usize; 3], stride: [usize; 3], pad: [usize; 3], dil: [usize; 3]| {
        let small = [0, 1, 2].map(|d| (big[d] + 2 * pad[d] - dil[d] * (k[d] - 1) - 1) / stride[d] + 1);
        Geom { c, big, o, small, k, stride, pad, dil }
    };
    vec![
        geom(2, [1, 1, 23], 3, [1, 1, 3], [1, 1, 2], [0, 0, 1], [1, 1, 2]),
        geom(3, [1, 7, 9], 4, [1, 3, 2], [1, 2, 1], [0, 1, 1], [1, 1, 2]),
        geom(2, [4, 5, 6], 3, [2, 3, 2], [1, 2, 1], [1, 1, 0], [2, 1, 1]),
    ]
}

/// Tiles of 7 positions (crossing output rows, a short last one) and the whole sample.
fn tiles(p: usize) -> Vec<(usize, usize)> {
    let mut t: Vec<(usize, usize)> = (0..p).step_by(7).map(|p0| (p0, 7.min(p - p0))).collect();
    t.push((0, p));
    t
}

#[test]
fn im2col_and_col2im_tiles_match_the_cpu_core_bit_for_bit() -> Result<()> {
    let arena = Arena::host();
    let mut rng = Rng::new(41);
    for g in conv_geoms() {
        let (kd, p, blen) = (g.kdim(), g.small_len(), g.big_len());
        for dtype in DTYPES {
            let x = tensor(&arena, &[g.c * blen], &values(&mut rng, g.c * blen, -2.0, 2.0), dtype);
            for (p0, n) in tiles(p) {
                let mut want = vec![0f32; kd * n];
                with_float!("im2col", dtype, |T| cc::im2col::<T>(&g, x.data::<T>()?, p0, n, &mut want));
                // col2im (f32 only): into a random accumulator.
                let col = values(&mut rng, kd * n, -1.0, 1.0);
                let acc0 = values(&mut rng, g.c * blen, -1.0, 1.0);
                let mut acc_want = acc0.clone();
                cc::col2im(&g, &col, p0, n, &mut acc_want);
                for emu in both() {
                    let what = format!("conv {:?} k {:?} {dtype} tile {p0}+{n} ({:?})", g.big, g.k, emu.order());
                    let got = poisoned(&arena, kd * n);
                    emu.run(&k::im2col(dtype, &g, ptr(&x), p0, n, ptr(&got))?)?;
                    same(&format!("{what}: im2col"), &f32s(&got), &want);
                    if dtype == DType::F32 {
                        let colt = tensor(&arena, &[kd * n], &col, DType::F32);
                        let acc = tensor(&arena, &[g.c * blen], &acc0, DType::F32);
                        emu.run(&k::col2im(&g, ptr(&colt), p0, n, ptr(&acc))?)?;
                        same(&format!("{what}: col2im"), &f32s(&acc), &acc_want);
                    }
                }
            }
        }
    }
    Ok(())
}

/// `C (+)= A·B` on the host over "device" f32 memory (the emulator's device
/// pointers are host addresses): what cuBLAS does between the launches.
/// Operands: (address, row stride, column stride) in elements.
fn host_gemm(
    m: usize,
    kk: usize,
    n: usize,
    a: (u64, usize, usize),
    b: (u64, usize, usize),
    c: (u64, usize),
    add: bool,
) {
    let at = |p: (u64, usize, usize), i: usize, j: usize| {
        // SAFETY: the test allocated these buffers; indices stay within the operand.
        unsafe { *(p.0 as *const f32).add(i * p.1 + j * p.2) }
    };
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f32;
            for q in 0..kk {
                s += at(a, i, q) * at(b, q, j);
            }
            // SAFETY: as above; nothing else touches the buffer meanwhile.
            let dst = unsafe { &mut *(c.0 as *mut f32).add(i * c.1 + j) };
            *dst = if add { *dst + s } else { s };
        }
    }
}

/// Zero `elems` f32 at a "device" address (cuMemsetD32 on the GPU).
fn memset0(at: u64, elems: usize) {
    // SAFETY: the test allocated the buffer; nothing else touches it meanwhile.
    unsafe { std::slice::from_raw_parts_mut(at as *mut f32, elems) }.fill(0.0);
}

#[test]
fn conv2d_forward_and_backward_chained_from_the_tile_kernels_match_the_cpu() -> Result<()> {
    let arena = Arena::host();
    let mut rng = Rng::new(42);
    // 12 × 13 outputs = 156 positions: with the smallest workspace, tiles of
    // 64, 64 and 28 (so three tiles per sample and a short one).
    let (batch, c, o, hw, kk) = (2, 3, 4, [12, 13], [3, 3]);
    let g =
        Geom { c, big: [1, 12, 13], o, small: [1, 12, 13], k: [1, 3, 3], stride: [1; 3], pad: [0, 1, 1], dil: [1; 3] };
    let (kd, p, blen) = (g.kdim(), g.small_len(), g.big_len());
    for dtype in DTYPES {
        let h = usize::from(dtype != DType::F32);
        let x = tensor(&arena, &[batch, c, hw[0], hw[1]], &values(&mut rng, batch * c * blen, -1.0, 1.0), dtype)
            .requires_grad();
        let w = tensor(&arena, &[o, c, kk[0], kk[1]], &values(&mut rng, o * kd, -0.5, 0.5), dtype).requires_grad();
        let bias = tensor(&arena, &[o], &values(&mut rng, o, -0.5, 0.5), dtype).requires_grad();
        let y_want = x.conv2d(&w, Some(&bias), [1, 1], [1, 1], [1, 1])?;
        let dy = tensor(&arena, &[batch, o, hw[0], hw[1]], &values(&mut rng, batch * o * p, -1.0, 1.0), dtype);
        backward_with(&y_want, dy.clone())?;
        let (dx_want, dw_want, db_want) = (x.grad().unwrap(), w.grad().unwrap(), bias.grad().unwrap());
        let (atol, rtol) = if dtype == DType::F32 { (1e-5, 1e-5) } else { tol(dtype) };
        let f = |off: u64, elems: usize| off + 4 * elems as u64; // f32 offsets into a workspace
        let tsz = dtype.size() as u64;
        for emu in both() {
            let what = format!("conv2d {dtype} ({:?})", emu.order());
            // Forward: ws = [W widened (h·O·K) | col (K·tile) | out tile (h·O·tile)].
            let (tile, elems) = cc::workspace(&g, Pass::Forward, dtype, 0);
            assert_eq!(tile, QUANTUM);
            let ws = poisoned(&arena, elems);
            let (wf, col) = (ptr(&ws), f(ptr(&ws), h * o * kd));
            let obuf = f(col, kd * tile);
            let wmat = if h == 1 {
                emu.run(&k::conv_tile_in(dtype, o, kd, Mat { ptr: ptr(&w), ld: kd }, Mat { ptr: wf, ld: kd })?)?;
                wf
            } else {
                ptr(&w)
            };
            let y = zeros(&arena, &[batch, o, hw[0], hw[1]], dtype);
            for b in 0..batch {
                for p0 in (0..p).step_by(tile) {
                    let n = tile.min(p - p0);
                    emu.run(&k::im2col(dtype, &g, ptr(&x) + tsz * (b * c * blen) as u64, p0, n, col)?)?;
                    let ytile = ptr(&y) + tsz * (b * o * p + p0) as u64;
                    // f32: the GEMM writes y in place and the bias is added there.
                    let (dst, ld) = if h == 1 { (obuf, n) } else { (ytile, p) };
                    host_gemm(o, kd, n, (wmat, kd, 1), (col, n, 1), (dst, ld), false);
                    let src = Mat { ptr: dst, ld };
                    emu.run(&k::conv_tile_out(dtype, o, n, src, Mat { ptr: ytile, ld: p }, Some(ptr(&bias)))?)?;
                }
            }
            close(&format!("{what}: forward"), &f32s(&y), &f32s(&y_want), (atol, rtol));

            // dX: ws = [W widened | acc (h·C·big) | dcol (K·tile) | dy tile (h·O·tile)].
            let (tile, elems) = cc::workspace(&g, Pass::Adjoint, dtype, 0);
            let ws = poisoned(&arena, elems);
            let wf = ptr(&ws);
            let abuf = f(wf, h * o * kd);
            let dcol = f(abuf, h * c * blen);
            let sbuf = f(dcol, kd * tile);
            let wmat = if h == 1 {
                emu.run(&k::conv_tile_in(dtype, o, kd, Mat { ptr: ptr(&w), ld: kd }, Mat { ptr: wf, ld: kd })?)?;
                wf
            } else {
                ptr(&w)
            };
            let dx = zeros(&arena, x.shape(), dtype);
            for b in 0..batch {
                let dxs = ptr(&dx) + tsz * (b * c * blen) as u64;
                let acc = if h == 1 { abuf } else { dxs };
                memset0(acc, c * blen);
                for p0 in (0..p).step_by(tile) {
                    let n = tile.min(p - p0);
                    let dyt = ptr(&dy) + tsz * (b * o * p + p0) as u64;
                    let s = if h == 1 {
                        emu.run(&k::conv_tile_in(dtype, o, n, Mat { ptr: dyt, ld: p }, Mat { ptr: sbuf, ld: n })?)?;
                        (sbuf, n, 1)
                    } else {
                        (dyt, p, 1)
                    };
                    host_gemm(kd, o, n, (wmat, 1, kd), s, (dcol, n), false);
                    emu.run(&k::col2im(&g, dcol, p0, n, acc)?)?;
                }
                if h == 1 {
                    let m = |p| Mat { ptr: p, ld: blen };
                    emu.run(&k::conv_tile_out(dtype, c, blen, m(abuf), m(dxs), None)?)?;
                }
            }
            close(&format!("{what}: dx"), &f32s(&dx), &f32s(&dx_want), (atol, rtol));

            // dW: ws = [dW accumulator (h·O·K) | col (K·tile) | dy tile (h·O·tile)].
            let (tile, elems) = cc::workspace(&g, Pass::WeightGrad, dtype, 0);
            let ws = poisoned(&arena, elems);
            let wacc = ptr(&ws);
            let col = f(wacc, h * o * kd);
            let sbuf = f(col, kd * tile);
            let dw = zeros(&arena, w.shape(), dtype);
            let acc = if h == 1 { wacc } else { ptr(&dw) };
            memset0(acc, o * kd);
            for b in 0..batch {
                for p0 in (0..p).step_by(tile) {
                    let n = tile.min(p - p0);
                    emu.run(&k::im2col(dtype, &g, ptr(&x) + tsz * (b * c * blen) as u64, p0, n, col)?)?;
                    let dyt = ptr(&dy) + tsz * (b * o * p + p0) as u64;
                    let (s, ls) = if h == 1 {
                        emu.run(&k::conv_tile_in(dtype, o, n, Mat { ptr: dyt, ld: p }, Mat { ptr: sbuf, ld: n })?)?;
                        (sbuf, n)
                    } else {
                        (dyt, p)
                    };
                    // One GEMM per QUANTUM chunk, added in order (the CPU's reduction grid).
                    for j0 in (0..n).step_by(QUANTUM) {
                        let q = QUANTUM.min(n - j0);
                        host_gemm(o, q, kd, (s + 4 * j0 as u64, ls, 1), (col + 4 * j0 as u64, 1, n), (acc, kd), true);
                    }
                }
            }
            if h == 1 {
                emu.run(&k::conv_tile_out(
                    dtype,
                    o,
                    kd,
                    Mat { ptr: wacc, ld: kd },
                    Mat { ptr: ptr(&dw), ld: kd },
                    None,
                )?)?;
            }
            close(&format!("{what}: dw"), &f32s(&dw), &f32s(&dw_want), (atol.max(1e-4), rtol));

            let db = tensor(&arena, &[o], &[f32::NAN; 4], dtype);
            emu.run(&k::conv_bias_grad(dtype, ptr(&dy), ptr(&db), batch, o, p)?)?;
            close(&format!("{what}: db"), &f32s(&db), &f32s(&db_want), (atol.max(1e-5), rtol));
        }
    }
    Ok(())
}

#[test]
fn bad_launches_are_errors_naming_the_kernel() {
    let g = conv_geoms()[1];
    let e = k::im2col(DType::F32, &g, 0, 30, 7, 0).unwrap_err().to_string();
    assert!(e.contains("im2col_f32") && e.contains("30..37") && e.contains("36 output positions"), "{e}");
    let shape = CtcShape { frames: 3, batch: 2, classes: 4, s_max: 2, blank: 4 };
    let bufs = CtcBuffers { log_probs: 0, targets: 0, input_lengths: 0, target_lengths: 0, nll: 0 };
    let e = k::ctc_forward(DType::F16, &shape, &bufs, false, 0).unwrap_err().to_string();
    assert!(e.contains("ctc_forward_f16") && e.contains("blank 4") && e.contains("[3, 2, 4]"), "{e}");
    let e = k::ctc_mean(DType::F32, 0, 0, 0, 0).unwrap_err().to_string();
    assert!(e.contains("ctc_mean_f32") && e.contains("0 samples"), "{e}");
    let e = k::lstm_cell(
        DType::I32,
        1,
        1,
        &LstmCell { gates: 0, gh: None, b_ih: None, b_hh: None, c: 0, h_out: 0, c_out: 0 },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("lstm_cell") && e.contains("i32"), "{e}");
    let e = k::lstm_cell(
        DType::F32,
        1,
        1 << 29,
        &LstmCell { gates: 0, gh: None, b_ih: None, b_hh: None, c: 0, h_out: 0, c_out: 0 },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("lstm_cell_f32") && e.contains("4·hidden"), "{e}");
}

#[test]
fn emulator_timings() {
    // Figures for the report: the harness's cost for one launch of each family.
    let arena = Arena::host();
    let mut rng = Rng::new(51);
    let (b, hd) = (16, 256);
    let gates = tensor(&arena, &[b, 4 * hd], &values(&mut rng, b * 4 * hd, -1.0, 1.0), DType::F16);
    let st = zeros(&arena, &[b, hd], DType::F16);
    let bufs = LstmCell {
        gates: ptr(&gates),
        gh: None,
        b_ih: None,
        b_hh: None,
        c: ptr(&st),
        h_out: ptr(&st),
        c_out: ptr(&st),
    };
    let lstm = k::lstm_cell(DType::F16, b, hd, &bufs).unwrap();
    let case = small_ctc();
    let (frames, batch, classes, s_max) = (case.frames, case.batch(), case.classes, case.s_max);
    let lp = tensor(&arena, &[frames, batch, classes], &vec![-2.0; frames * batch * classes], DType::F16);
    let targets = Tensor::from_slice(&arena, &[batch, s_max], &case.padded(), Tag::Data).unwrap();
    let il: Vec<i32> = case.input_lengths.iter().map(|&v| v as i32).collect();
    let tl: Vec<i32> = case.target_lengths().iter().map(|&v| v as i32).collect();
    let (il, tl) = (ints(&arena, &il), ints(&arena, &tl));
    let nll = zeros(&arena, &[batch], DType::F32);
    let cbufs = CtcBuffers {
        log_probs: ptr(&lp),
        targets: ptr(&targets),
        input_lengths: ptr(&il),
        target_lengths: ptr(&tl),
        nll: ptr(&nll),
    };
    let wsz = k::ctc_workspace(&case.shape());
    let (ws, chain, gl, grad) = (
        zeros(&arena, &[wsz.backward_f32], DType::F32),
        zeros(&arena, &[wsz.backward_i32], DType::I32),
        tensor(&arena, &[], &[1.0], DType::F16),
        zeros(&arena, lp.shape(), DType::F16),
    );
    let ctc_f = k::ctc_forward(DType::F16, &case.shape(), &cbufs, false, ptr(&ws)).unwrap();
    let ctc_b =
        k::ctc_backward(DType::F16, &case.shape(), &cbufs, ptr(&gl), ptr(&grad), ptr(&ws), ptr(&chain)).unwrap();
    let g = pool_geom(&[4, 8, 32, 32], &[3, 3], &[2, 2], &[1, 1]);
    let x = tensor(&arena, &[32 * 32 * 32], &values(&mut rng, 32 * 32 * 32, -1.0, 1.0), DType::F16);
    let (out, arg) =
        (zeros(&arena, &[32 * g.small_len()], DType::F16), zeros(&arena, &[32 * g.small_len()], DType::I32));
    let pool = k::max_pool(DType::F16, &g, 32, ptr(&x), ptr(&out), ptr(&arg)).unwrap();
    let cg = conv_geoms()[1];
    let col = zeros(&arena, &[cg.kdim() * cg.small_len()], DType::F32);
    let im = k::im2col(DType::F16, &cg, ptr(&x), 0, cg.small_len(), ptr(&col)).unwrap();
    let acc = zeros(&arena, &[cg.c * cg.big_len()], DType::F32);
    let c2i = k::col2im(&cg, ptr(&col), 0, cg.small_len(), ptr(&acc)).unwrap();
    for (name, l) in [
        ("lstm_cell f16 [16, 256]", &lstm),
        ("ctc_forward f16 small batch", &ctc_f),
        ("ctc_backward f16 small batch", &ctc_b),
        ("max_pool f16 [4, 8, 32, 32] k3 s2", &pool),
        ("im2col f16 2-d, 36 positions", &im),
        ("col2im 2-d, 36 positions", &c2i),
    ] {
        let t = Instant::now();
        emulator().run(l).unwrap();
        let s = t.elapsed().as_secs_f64();
        println!("emulator: {name}: {} blocks × {} threads in {:.1} ms", l.grid[0], l.block[0], s * 1e3);
    }
}
