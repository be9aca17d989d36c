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

use headroom::alloc::TraceKind;
use headroom::autograd::backward_with;
use headroom::cpu::ctc::{self as cctc, Problem};
use headroom::cpu::lstm::{self as clstm, Biases};
use headroom::cpu::pool::{self as cpool, PoolGeom};
use headroom::cuda::emulator::{Emulator, Order};
use headroom::cuda::kernels::{self as k, CtcBuffers, CtcShape, LstmCell, LstmCellGrad};
use headroom::rng::Rng;
use headroom::with_float;
use headroom::{Arena, DType, Result, Tag, Tensor};
use std::sync::OnceLock;

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

fn emulator() -> &'static Emulator {
    static E: OnceLock<Emulator> = OnceLock::new();
    E.get_or_init(|| Emulator::new().expect("build the kernel harness"))
}

/// The harness in both thread orders.
fn both() -> [Emulator; 2] {
    [emulator().with_order(Order::Forward), emulator().with_order(Order::Reverse)]
}

/// (atol, rtol) for pointwise results stored as `dtype`.
fn tol(dtype: DType) -> (f32, f32) {
    match dtype {
        DType::F32 => (1e-6, 1e-5),
        DType::F16 => (1e-4, 2e-3),
        _ => (1e-3, 1.6e-2),
    }
}

/// Address of a tensor's first element: the harness's "device pointer".
fn ptr(t: &Tensor) -> u64 {
    t.storage().block().as_ptr() as u64 + (t.offset() * t.dtype().size()) as u64
}

fn close(what: &str, got: &[f32], want: &[f32], (atol, rtol): (f32, f32)) {
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
