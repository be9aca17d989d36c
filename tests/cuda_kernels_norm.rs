//! The training ops' CUDA kernels (kernels/norm.cu, loss.cu, embedding.cu,
//! dropout.cu, optim.cu) run on the CPU harness and compared with the CPU
//! backend on the host arena: all three storage dtypes, sizes that are not
//! multiples of the block, rows longer than a block and than the shared
//! row cache, both thread orders; and the reductions give the same bits in
//! both orders (they are deterministic by construction).
//!
//! Tolerances (|got − want| ≤ atol + rtol·|want|):
//! - Exact (bit for bit): embedding forward and backward (a copy; f32 sums
//!   in position order on both sides), dropout (the same counter-based
//!   draws), AdamW (the same operations, unfused; f32 state).
//! - Results stored as f16 / bf16: 2 ulp of the storage type (both sides
//!   compute in f32 and round once; near a rounding boundary an f32
//!   difference in the last bits flips one ulp).
//! - f32 results: 1e-5 relative, plus 1e-7 per summed term where a row
//!   (cols) or column (rows) sum comes first: a tree order on the GPU, a
//!   sequential order on the CPU.

mod harness;
use harness::{both, close, emulator, ptr, tol, DTYPES};
use headroom::autograd::backward_with;
use headroom::cuda::emulator::Emulator;
use headroom::cuda::kernels::{self as k, AdamTensor, Launch, NormTensor};
use headroom::optim::{clip_grad_norm, AdamW, AdamWConfig, Optimizer};
use headroom::rng::Rng;
use headroom::{Arena, DType, Tag, Tensor};
use std::time::Instant;

fn run(emu: &Emulator, launches: &[Launch]) {
    for l in launches {
        emu.run(l).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// `tol` widened for a result that sums `terms` values first.
fn tol_sum(dtype: DType, terms: usize) -> (f32, f32) {
    let (atol, rtol) = tol(dtype);
    (atol + 1e-7 * terms as f32, rtol)
}

fn vptr<T>(v: &mut [T]) -> u64 {
    v.as_mut_ptr() as u64
}

/// Bit-for-bit equality (NaN only equals NaN).
fn same_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        let n = (0..got.len()).filter(|&i| got[i].to_bits() != want[i].to_bits()).count();
        panic!("{what}: {n} of {} differ in bits; first at {i}: got {:e} want {:e}", got.len(), got[i], want[i]);
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

fn vec_of(t: &Tensor) -> Vec<f32> {
    t.to_vec_f32().unwrap()
}

fn timed(name: &str, f: impl FnOnce()) {
    let _ = emulator();
    let t = Instant::now();
    f();
    println!("{name}: {:.2} s", t.elapsed().as_secs_f64());
}

// ---- layer norm ------------------------------------------------------------------

/// One element; short rows; one block; one more than a block; several
/// blocks' worth; longer than the shared-memory row cache (8192).
const LN_SHAPES: &[(usize, usize)] = &[(1, 1), (3, 5), (2, 256), (3, 257), (2, 1000), (1, 9000)];

struct LnCase {
    rows: usize,
    cols: usize,
    dtype: DType,
    affine: bool,
}

fn layer_norm_case(arena: &Arena, rng: &mut Rng, c: &LnCase, orders: &[Emulator]) {
    let (rows, cols, dtype) = (c.rows, c.cols, c.dtype);
    let eps = 1e-5;
    let xv = values(rng, rows * cols, -2.0, 3.0);
    let x = tensor(arena, &[rows, cols], &xv, dtype).requires_grad();
    let w = tensor(arena, &[cols], &values(rng, cols, 0.5, 1.5), dtype).requires_grad();
    let b = tensor(arena, &[cols], &values(rng, cols, -0.5, 0.5), dtype).requires_grad();
    let (wo, bo) = if c.affine { (Some(&w), Some(&b)) } else { (None, None) };
    let y = x.layer_norm(wo, bo, eps).unwrap();
    let dy = tensor(arena, &[rows, cols], &values(rng, rows * cols, -1.0, 1.0), dtype);
    backward_with(&y, dy.clone()).unwrap();
    // The saved statistics, from the CPU kernel on the same f32 values.
    let xf = vec_of(&x);
    let (mut mean_want, mut rstd_want, mut y32) = (vec![0f32; rows], vec![0f32; rows], vec![0f32; rows * cols]);
    let none = headroom::cpu::norm::Affine::<f32> { weight: None, bias: None };
    headroom::cpu::norm::layer_norm::<f32>(&xf, cols, none, eps, &mut y32, &mut mean_want, &mut rstd_want);

    let what = format!("layer_norm {dtype} [{rows}, {cols}] affine={}", c.affine);
    let mut sums_by_order: Vec<(Vec<f32>, Vec<f32>)> = vec![];
    for emu in orders {
        let what = format!("{what} ({:?})", emu.order());
        let out = zeros(arena, &[rows, cols], dtype);
        let (mut mean, mut rstd) = (vec![0f32; rows], vec![0f32; rows]);
        let io = k::LayerNormIo {
            x: ptr(&x),
            weight: wo.map(ptr),
            bias: bo.map(ptr),
            y: ptr(&out),
            mean: vptr(&mut mean),
            rstd: vptr(&mut rstd),
        };
        let l = k::layer_norm(dtype, rows, cols, eps, &io).unwrap();
        assert_eq!(l.smem, if cols <= 8192 { 4 * cols as u32 } else { 0 }, "{what}: row cache");
        run(emu, &[l]);
        close(&format!("{what}: y"), &vec_of(&out), &vec_of(&y), tol_sum(dtype, cols));
        close(&format!("{what}: mean"), &mean, &mean_want, tol_sum(DType::F32, cols));
        close(&format!("{what}: rstd"), &rstd, &rstd_want, tol_sum(DType::F32, cols));

        let dx = zeros(arena, &[rows, cols], dtype);
        let (dw, db) = (zeros(arena, &[cols], dtype), zeros(arena, &[cols], dtype));
        let mut ws = vec![0f32; k::layer_norm_backward_workspace(rows, cols, c.affine) / 4];
        let io = k::LayerNormBackward {
            x: ptr(&x),
            dy: ptr(&dy),
            weight: wo.map(ptr),
            mean: vptr(&mut mean),
            rstd: vptr(&mut rstd),
            dx: Some(ptr(&dx)),
            dweight: c.affine.then(|| ptr(&dw)),
            dbias: c.affine.then(|| ptr(&db)),
            workspace: if c.affine { vptr(&mut ws) } else { 0 },
        };
        let ls = k::layer_norm_backward(dtype, rows, cols, &io).unwrap();
        assert_eq!(ls.len(), if c.affine { 2 } else { 1 }, "{what}: launches");
        assert_eq!(ls[0].grid[0] as usize, k::layer_norm_backward_blocks(rows).1, "{what}: blocks");
        run(emu, &ls);
        // dx = rstd·(g − mean(g) − x̂·mean(g·x̂)) cancels: its absolute error scales with rstd.
        let (atol, rtol) = tol_sum(dtype, cols);
        let amp = rstd_want.iter().fold(1f32, |a, &r| a.max(r));
        close(&format!("{what}: dx"), &vec_of(&dx), &vec_of(&x.grad().unwrap()), (atol * amp, rtol));
        if c.affine {
            let t = tol_sum(dtype, 4 * rows);
            close(&format!("{what}: dweight"), &vec_of(&dw), &vec_of(&w.grad().unwrap()), t);
            close(&format!("{what}: dbias"), &vec_of(&db), &vec_of(&b.grad().unwrap()), t);
            sums_by_order.push((vec_of(&dw), vec_of(&db)));
        }
    }
    if let [(w0, b0), (w1, b1)] = &sums_by_order[..] {
        same_bits(&format!("{what}: dweight, forward vs reverse order"), w0, w1);
        same_bits(&format!("{what}: dbias, forward vs reverse order"), b0, b1);
    }
}

#[test]
fn layer_norm_forward_and_backward_match_the_cpu() {
    timed("layer_norm", || {
        let arena = Arena::host();
        let mut rng = Rng::new(11);
        for &(rows, cols) in LN_SHAPES {
            for dtype in DTYPES {
                for affine in [true, false] {
                    layer_norm_case(&arena, &mut rng, &LnCase { rows, cols, dtype, affine }, &both());
                }
            }
        }
    });
}

#[test]
fn layer_norm_backward_with_more_rows_than_blocks() {
    // 259 rows: 2 rows per block, 130 blocks, the last with one row.
    timed("layer_norm 259 rows", || {
        assert_eq!(k::layer_norm_backward_blocks(259), (2, 130));
        assert_eq!(k::layer_norm_backward_workspace(259, 3, true), 130 * 2 * 3 * 4);
        assert_eq!(k::layer_norm_backward_workspace(259, 3, false), 0);
        let arena = Arena::host();
        let mut rng = Rng::new(12);
        let c = LnCase { rows: 259, cols: 3, dtype: DType::F32, affine: true };
        layer_norm_case(&arena, &mut rng, &c, &both()[..1]);
    });
}

// ---- cross-entropy ---------------------------------------------------------------

struct CeCase {
    rows: usize,
    cols: usize,
    ignore: Option<i32>,
    smoothing: f32,
    /// Rows whose target is set to the ignore index.
    ignored: Vec<usize>,
}

fn cross_entropy_case(arena: &Arena, rng: &mut Rng, c: &CeCase, dtype: DType) {
    let (rows, cols) = (c.rows, c.cols);
    let x = tensor(arena, &[rows, cols], &values(rng, rows * cols, -4.0, 4.0), dtype).requires_grad();
    let mut targets: Vec<i32> = (0..rows).map(|_| rng.below(cols) as i32).collect();
    for &r in &c.ignored {
        targets[r] = c.ignore.unwrap();
    }
    let tg = Tensor::from_slice(arena, &[rows], &targets, Tag::Data).unwrap();
    let loss = x.cross_entropy(&tg, c.ignore, c.smoothing).unwrap();
    let g = tensor(arena, &[], &[1.7], dtype);
    backward_with(&loss, g.clone()).unwrap();
    let mut lse_want = vec![0f32; rows];
    let labels = headroom::cpu::loss::Labels { targets: &targets, ignore: c.ignore, smoothing: c.smoothing };
    headroom::cpu::loss::cross_entropy::<f32>(&vec_of(&x), cols, &labels, &mut lse_want);
    let count_want = targets.iter().filter(|&&t| Some(t) != c.ignore).count() as i32;

    let labels = k::Labels { ignore_index: c.ignore, label_smoothing: c.smoothing };
    let what = format!("cross_entropy {dtype} [{rows}, {cols}] ignore {:?} smoothing {}", c.ignore, c.smoothing);
    let mut losses = vec![];
    for emu in both() {
        let what = format!("{what} ({:?})", emu.order());
        let (mut lse, mut ws, mut count, mut bad) = (vec![0f32; rows], vec![0f32; rows], [-1i32], [i32::MAX]);
        let out = zeros(arena, &[], dtype);
        let io = k::CrossEntropyIo {
            logits: ptr(&x),
            targets: ptr(&tg),
            lse: vptr(&mut lse),
            loss: ptr(&out),
            count: vptr(&mut count),
            workspace: vptr(&mut ws),
            bad: Some(vptr(&mut bad)),
        };
        assert_eq!(k::cross_entropy_workspace(rows), 4 * ws.len());
        run(&emu, &k::cross_entropy(dtype, rows, cols, labels, &io).unwrap());
        assert_eq!((count[0], bad[0]), (count_want, i32::MAX), "{what}: count, bad row");
        close(&format!("{what}: lse"), &lse, &lse_want, tol_sum(DType::F32, cols));
        close(&format!("{what}: loss"), &vec_of(&out), &vec_of(&loss), tol_sum(dtype, cols));
        losses.push(vec_of(&out));

        let dx = zeros(arena, &[rows, cols], dtype);
        let io = k::CrossEntropyBackward {
            logits: ptr(&x),
            targets: ptr(&tg),
            lse: vptr(&mut lse),
            count: vptr(&mut count),
            dloss: ptr(&g),
            dx: ptr(&dx),
        };
        run(&emu, &[k::cross_entropy_backward(dtype, rows, cols, labels, &io).unwrap()]);
        close(&format!("{what}: dx"), &vec_of(&dx), &vec_of(&x.grad().unwrap()), tol_sum(dtype, cols));
    }
    same_bits(&format!("{what}: loss, forward vs reverse order"), &losses[0], &losses[1]);
}

#[test]
fn cross_entropy_forward_and_backward_match_the_cpu() {
    timed("cross_entropy", || {
        let arena = Arena::host();
        let mut rng = Rng::new(21);
        let plain = |rows, cols| CeCase { rows, cols, ignore: None, smoothing: 0.0, ignored: vec![] };
        let cases = [
            plain(1, 1),
            plain(5, 7),
            // ignore_index -100 on two rows, label smoothing.
            CeCase { rows: 4, cols: 257, ignore: Some(-100), smoothing: 0.1, ignored: vec![0, 2] },
            // A class index as ignore_index.
            CeCase { rows: 3, cols: 1000, ignore: Some(3), smoothing: 0.0, ignored: vec![1] },
            // Longer than the row cache, smoothing.
            CeCase { rows: 2, cols: 9000, ignore: None, smoothing: 0.2, ignored: vec![] },
            // Every row ignored: loss 0, gradient 0.
            CeCase { rows: 3, cols: 5, ignore: Some(-1), smoothing: 0.1, ignored: vec![0, 1, 2] },
        ];
        for c in &cases {
            for dtype in DTYPES {
                cross_entropy_case(&arena, &mut rng, c, dtype);
            }
        }
    });
}

#[test]
fn cross_entropy_reports_a_bad_target() {
    let arena = Arena::host();
    let (rows, cols) = (4, 6);
    let x = tensor(&arena, &[rows, cols], &[0.5; 24], DType::F32);
    let tg = Tensor::from_slice(&arena, &[rows], &[1i32, 6, -100, -2], Tag::Data).unwrap();
    let (mut lse, mut ws, mut count, mut bad) = (vec![0f32; rows], vec![0f32; rows], [0i32], [i32::MAX]);
    let out = zeros(&arena, &[], DType::F32);
    let io = k::CrossEntropyIo {
        logits: ptr(&x),
        targets: ptr(&tg),
        lse: vptr(&mut lse),
        loss: ptr(&out),
        count: vptr(&mut count),
        workspace: vptr(&mut ws),
        bad: Some(vptr(&mut bad)),
    };
    let labels = k::Labels { ignore_index: Some(-100), label_smoothing: 0.0 };
    for emu in both() {
        bad[0] = i32::MAX;
        run(&emu, &k::cross_entropy(DType::F32, rows, cols, labels, &io).unwrap());
        // Rows 1 (6 ≥ C) and 3 (−2) are bad, row 2 is ignored: the first bad row is 1.
        assert_eq!((bad[0], count[0]), (1, 3), "{:?}", emu.order());
        assert!(out.item().unwrap().is_nan(), "a bad target makes the loss NaN");
        assert!(ws[0].is_finite() && ws[2] == 0.0, "row losses {ws:?}");
    }
}

// ---- embedding -------------------------------------------------------------------

#[test]
fn embedding_forward_and_backward_match_the_cpu_bit_for_bit() {
    timed("embedding", || {
        let arena = Arena::host();
        let mut rng = Rng::new(31);
        let vocab = 37;
        // n: one id; a few; more than a sort block (256) with many repeats.
        for (n, dim) in [(1usize, 5usize), (7, 1), (200, 300), (600, 5)] {
            for dtype in DTYPES {
                let mut ids: Vec<i32> = (0..n).map(|_| rng.below(vocab) as i32).collect();
                if n >= 7 {
                    ids[n - 1] = ids[0]; // a repeat at both ends
                    ids[n / 2] = 36; // the last row
                }
                let w = tensor(&arena, &[vocab, dim], &values(&mut rng, vocab * dim, -1.0, 1.0), dtype).requires_grad();
                let idt = Tensor::from_slice(&arena, &[n], &ids, Tag::Data).unwrap();
                let y = w.embedding(&idt).unwrap();
                let dy = tensor(&arena, &[n, dim], &values(&mut rng, n * dim, -1.0, 1.0), dtype);
                backward_with(&y, dy.clone()).unwrap();
                let dw_want = vec_of(&w.grad().unwrap());
                for emu in both() {
                    let what = format!("embedding {dtype} {n} ids into [{vocab}, {dim}] ({:?})", emu.order());
                    let out = zeros(&arena, &[n, dim], dtype);
                    let mut bad = [i32::MAX];
                    let l = k::embedding(dtype, ptr(&w), ptr(&idt), ptr(&out), Some(vptr(&mut bad)), n, vocab, dim);
                    run(&emu, &[l.unwrap()]);
                    assert_eq!(bad[0], i32::MAX, "{what}: no bad id");
                    same_bits(&format!("{what}: forward"), &vec_of(&out), &vec_of(&y));
                    // Poisoned, so a row the kernel skips shows up.
                    let dw = tensor(&arena, &[vocab, dim], &vec![f32::NAN; vocab * dim], dtype);
                    let mut ws = vec![-7i32; k::embedding_backward_workspace(n) / 4];
                    let ls = k::embedding_backward(dtype, ptr(&dy), ptr(&idt), ptr(&dw), vptr(&mut ws), n, vocab, dim)
                        .unwrap();
                    assert_eq!(ls.len(), 1 + (n as f64).log2().ceil().max(1.0) as usize, "{what}: launches");
                    run(&emu, &ls);
                    // The sorted order: by id, then by position.
                    let order = &ws[(ls.len() - 2) % 2 * n..][..n];
                    let mut want: Vec<i32> = (0..n as i32).collect();
                    want.sort_by_key(|&p| (ids[p as usize], p));
                    assert_eq!(order, &want[..], "{what}: sorted positions");
                    same_bits(&format!("{what}: backward"), &vec_of(&dw), &dw_want);
                }
            }
        }
    });
}

#[test]
fn embedding_reports_an_id_outside_the_table() {
    let arena = Arena::host();
    let (vocab, dim) = (4, 3);
    let w = tensor(&arena, &[vocab, dim], &[1.0; 12], DType::F16);
    let idt = Tensor::from_slice(&arena, &[5], &[0i32, 4, 1, -1, 3], Tag::Data).unwrap();
    for emu in both() {
        let out = tensor(&arena, &[5, dim], &[9.0; 15], DType::F16);
        let mut bad = [i32::MAX];
        run(
            &emu,
            &[k::embedding(DType::F16, ptr(&w), ptr(&idt), ptr(&out), Some(vptr(&mut bad)), 5, vocab, dim).unwrap()],
        );
        assert_eq!(bad[0], 1, "the first bad position ({:?})", emu.order());
        let o = vec_of(&out);
        assert_eq!(&o[3..6], &[0.0; 3], "a bad id's row is zeros");
        assert_eq!(&o[9..12], &[0.0; 3]);
        assert_eq!(&o[6..9], &[1.0; 3]);
    }
}

// ---- dropout ---------------------------------------------------------------------

#[test]
fn dropout_masks_equal_the_cpu_masks_bit_for_bit() {
    timed("dropout", || {
        let arena = Arena::host();
        let mut rng = Rng::new(41);
        // One element; under a chunk (4096); just over; over two chunks, odd.
        for n in [1usize, 1000, 4097, 9001] {
            for dtype in DTYPES {
                for p in [0.1f32, 0.5, 0.9] {
                    let x = tensor(&arena, &[n], &values(&mut rng, n, -2.0, 2.0), dtype).requires_grad();
                    // The op draws its seed from the stream: the same draw here.
                    let mut op_rng = Rng::new(n as u64 * 7 + (p * 10.0) as u64);
                    let seed = op_rng.clone().next_u64();
                    let y = x.dropout(p, &mut op_rng).unwrap();
                    let g = tensor(&arena, &[n], &values(&mut rng, n, -1.0, 1.0), dtype);
                    backward_with(&y, g.clone()).unwrap();
                    for emu in both() {
                        let what = format!("dropout {dtype} n={n} p={p} ({:?})", emu.order());
                        let out = zeros(&arena, &[n], dtype);
                        run(&emu, &[k::dropout(dtype, ptr(&x), ptr(&out), n, seed, p).unwrap()]);
                        let got = vec_of(&out);
                        same_bits(&format!("{what}: forward"), &got, &vec_of(&y));
                        let dx = zeros(&arena, &[n], dtype);
                        run(&emu, &[k::dropout(dtype, ptr(&g), ptr(&dx), n, seed, p).unwrap()]);
                        same_bits(&format!("{what}: backward"), &vec_of(&dx), &vec_of(&x.grad().unwrap()));
                        if n > 1000 {
                            // The mask is not degenerate: about p of it drops.
                            let dropped = got.iter().filter(|v| **v == 0.0).count() as f32 / n as f32;
                            assert!((dropped - p).abs() < 0.05, "{what}: dropped {dropped}");
                        }
                    }
                }
            }
        }
    });
}

// ---- AdamW -----------------------------------------------------------------------

#[test]
fn fused_adamw_over_many_tensors_equals_the_cpu_step_bit_for_bit() {
    timed("adamw", || {
        let arena = Arena::host();
        let mut rng = Rng::new(51);
        // One element; odd; a chunk (1024) ± 1; several chunks.
        let sizes = [1usize, 3, 1023, 1025, 2500];
        let config = AdamWConfig { lr: 1e-2, weight_decay: 0.1, ..Default::default() };
        for gdtype in DTYPES {
            let params: Vec<Tensor> = sizes
                .iter()
                .map(|&n| tensor(&arena, &[n], &values(&mut rng, n, -1.0, 1.0), DType::F32).requires_grad())
                .collect();
            // The GPU's copies of the weights and moments.
            let mut dev: Vec<[Vec<f32>; 3]> =
                params.iter().map(|p| [vec_of(p), vec![0.0; p.numel()], vec![0.0; p.numel()]]).collect();
            let mut steps = vec![0u64; sizes.len()];
            let mut opt = AdamW::new(params.clone(), config).unwrap();
            for step in 0..3 {
                // Parameter 1 has no gradient in the first step: its own step count lags.
                let with_grad: Vec<usize> = (0..sizes.len()).filter(|&i| !(step == 0 && i == 1)).collect();
                opt.zero_grad();
                let mut grads = vec![];
                for &i in &with_grad {
                    let g = tensor(&arena, &[sizes[i]], &values(&mut rng, sizes[i], -0.5, 0.5), gdtype);
                    params[i].set_grad(Some(g.clone()));
                    grads.push(g);
                    steps[i] += 1;
                }
                let mut table: Vec<AdamTensor> = with_grad
                    .iter()
                    .zip(&grads)
                    .map(|(&i, g)| {
                        let [p, m, v] = &mut dev[i];
                        let s = config.step_scalars(steps[i]);
                        AdamTensor::new(vptr(p), ptr(g), vptr(m), vptr(v), sizes[i], &s)
                    })
                    .collect();
                // An empty tensor in the middle of the table is skipped.
                let empty = AdamTensor::new(0, 0, 0, 0, 0, &config.step_scalars(1));
                table.insert(1, empty);
                let blocks = k::adamw_table(gdtype, &mut table).unwrap();
                let l = k::adamw(gdtype, vptr(&mut table), &table, &config.step_scalars(1)).unwrap();
                assert_eq!(l.grid[0] as usize, blocks);
                // Forward order on even steps, reverse on odd ones.
                let emu = &both()[step % 2];
                run(emu, &[l]);
                opt.step().unwrap();
                let state = opt.state_tensors();
                for (i, p) in params.iter().enumerate() {
                    let what = format!("adamw grads {gdtype} step {step} param {i} [{}]", sizes[i]);
                    same_bits(&format!("{what}: param"), &dev[i][0], &vec_of(p));
                    let st: Vec<&Tensor> = state.iter().filter(|s| s.param == i).map(|s| &s.tensor).collect();
                    if st.is_empty() {
                        assert!(dev[i][1].iter().all(|&v| v == 0.0), "{what}: no state yet");
                        continue;
                    }
                    same_bits(&format!("{what}: exp_avg"), &dev[i][1], &vec_of(st[0]));
                    same_bits(&format!("{what}: exp_avg_sq"), &dev[i][2], &vec_of(st[1]));
                }
            }
            assert_eq!(opt.param_step(1), 2, "parameter 1 took one step fewer");
        }
    });
}

// ---- global gradient norm and clipping ---------------------------------------------

#[test]
fn global_grad_norm_and_clipping_match_clip_grad_norm() {
    timed("grad_norm", || {
        let arena = Arena::host();
        let mut rng = Rng::new(61);
        // Gradients of all three dtypes, sizes around the 1024-element chunk.
        let shapes =
            [(DType::F32, 1000usize), (DType::F16, 700), (DType::F32, 3), (DType::BF16, 2049), (DType::F32, 1025)];
        let grads: Vec<Tensor> =
            shapes.iter().map(|&(d, n)| tensor(&arena, &[n], &values(&mut rng, n, -0.2, 0.2), d)).collect();
        // The CPU: clip_grad_norm on copies (it scales them in place).
        let max_norm = 1.0f32;
        let params: Vec<Tensor> = shapes
            .iter()
            .map(|&(_, n)| Tensor::zeros(&arena, &[n], DType::F32, Tag::Parameter).unwrap().requires_grad())
            .collect();
        for (p, g) in params.iter().zip(&grads) {
            p.set_grad(Some(g.copy().unwrap()));
        }
        let want = clip_grad_norm(&params, max_norm).unwrap();
        assert!(want > max_norm, "the test must clip");
        let mut norms = vec![];
        for emu in both() {
            let what = format!("grad norm ({:?})", emu.order());
            let gpu: Vec<Tensor> = grads.iter().map(|g| g.copy().unwrap()).collect();
            // Pass 1 per dtype, each into its own range of the workspace.
            let mut partial = vec![f32::NAN; k::grad_norm_workspace(&shapes).unwrap() / 4];
            let mut at = 0;
            for dtype in DTYPES {
                let mut table: Vec<NormTensor> = gpu
                    .iter()
                    .filter(|g| g.dtype() == dtype)
                    .map(|g| NormTensor { data: ptr(g), numel: g.numel() as i64, first_block: 0 })
                    .collect();
                let blocks = k::sum_squares_table(dtype, &mut table).unwrap();
                run(&emu, &[k::sum_squares(dtype, vptr(&mut table), &table, vptr(&mut partial[at..])).unwrap()]);
                at += blocks;
            }
            assert_eq!(at, partial.len(), "{what}: the workspace holds every partial");
            let mut norm = [0f64];
            run(&emu, &[k::grad_norm(vptr(&mut partial), at, vptr(&mut norm)).unwrap()]);
            // f32 sums within each 1024-element chunk, f64 across them (the CPU: f64 throughout).
            close(&what, &[norm[0] as f32], &[want], (0.0, 1e-6));
            norms.push(norm[0]);
            // Clip as clip_grad_norm does, with the in-place scale kernel.
            let coef = (max_norm as f64 / (norm[0] + 1e-6)) as f32;
            for (g, p) in gpu.iter().zip(&params) {
                run(&emu, &[k::scale(g.dtype(), ptr(g), g.numel(), coef).unwrap()]);
                let what = format!("{what}: clipped {} [{}]", g.dtype(), g.numel());
                close(&what, &vec_of(g), &vec_of(&p.grad().unwrap()), tol(g.dtype()));
            }
        }
        assert_eq!(norms[0].to_bits(), norms[1].to_bits(), "grad norm: forward vs reverse order");
    });
}

// ---- builder errors --------------------------------------------------------------

#[test]
fn builders_name_the_kernel_the_shapes_and_the_fix() {
    let err = |r: headroom::Result<Vec<Launch>>| r.unwrap_err().to_string();
    let io = k::LayerNormBackward {
        x: 8,
        dy: 8,
        weight: None,
        mean: 8,
        rstd: 8,
        dx: None,
        dweight: Some(8),
        dbias: None,
        workspace: 0,
    };
    let e = err(k::layer_norm_backward(DType::F16, 10, 7, &io));
    assert!(e.contains("layer_norm_backward_f16") && e.contains("[10, 7]") && e.contains("= 560 bytes"), "{e}");
    let e = err(k::embedding_backward(DType::F32, 8, 8, 8, 0, 5, 10, 3));
    assert!(
        e.contains("embedding_backward_f32") && e.contains("5 ids into [10, 3]") && e.contains("= 40 bytes"),
        "{e}"
    );
    let e = k::dropout(DType::BF16, 8, 8, 4, 1, 1.0).unwrap_err().to_string();
    assert!(e.contains("dropout_bf16") && e.contains("[0, 1)"), "{e}");
    let labels = k::Labels { ignore_index: None, label_smoothing: 1.5 };
    let io = k::CrossEntropyIo { logits: 8, targets: 8, lse: 8, loss: 8, count: 8, workspace: 8, bad: None };
    let e = err(k::cross_entropy(DType::F32, 2, 3, labels, &io));
    assert!(e.contains("cross_entropy_f32") && e.contains("[2, 3]") && e.contains("1.5"), "{e}");
    // A table that was not numbered for its dtype.
    let s = AdamWConfig::default().step_scalars(1);
    let mut table = vec![AdamTensor::new(8, 8, 8, 8, 5000, &s), AdamTensor::new(8, 8, 8, 8, 10, &s)];
    let e = k::adamw(DType::F32, 8, &table, &s).unwrap_err().to_string();
    assert!(e.contains("adamw_f32") && e.contains("entry 1") && e.contains("adamw_table"), "{e}");
    assert_eq!(k::adamw_table(DType::F32, &mut table).unwrap(), 5 + 1);
    assert_eq!(table[1].first_block, 5);
    assert!(k::adamw(DType::F32, 8, &table, &s).is_ok());
    let e = k::layer_norm(
        DType::I32,
        1,
        1,
        1e-5,
        &k::LayerNormIo { x: 8, weight: None, bias: None, y: 8, mean: 8, rstd: 8 },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("f32, f16 or bf16"), "{e}");
}
